#!/usr/bin/env bash
# What tenancy costs on the publish path (issue 6: at most 5 % of fan-in
# throughput): the fan-in scenarios against the same release binary
# without --tenants (the single default tenant) and with a tenants file
# whose one tenant has every per-message quota set high enough never to
# refuse (so each publish takes its GCRA rates, each subscription and
# queued byte its reservations). Interleaved, ROUNDS rounds of SECONDS
# each; medians and ratios are printed. Throughput on a shared 2-core
# machine swings by 2x between runs, so the cost is also given as broker
# CPU per message received (less sensitive to what else runs).
#
#   scripts/bench-tenancy.sh [ROUNDS] [SECONDS]
set -euo pipefail
rounds=${1:-5}
secs=${2:-5}
cd "$(dirname "$0")/.."
cargo build --release -q -p porchlight-broker -p porchlight-loadtest
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
pid=
cat > "$work/tenants.toml" <<'TOML'
[tenancy.listeners]
tcp = "acme"
[[tenant]]
id = "acme"
[tenant.limits]
max_connections = 100000
max_messages_in_per_second = 100000000
max_bytes_in_per_second = 100000000000
max_messages_per_connection_per_second = 10000000
max_subscriptions = 100000
max_queued_bytes = 100000000000
max_retained_messages = 100000
TOML
# QoS 0 at a fixed 150k/s offered (no drops, so CPU per message compares
# like with like); QoS 1 as fast as flow control lets it go.
for q in 0 1; do
  rate=$([ $q = 0 ] && echo 1500 || echo 0)
  cat > "$work/fan-in-qos$q.toml" <<TOML
name = "fan-in-qos$q"
duration = $secs
[[sub]]
count = 1
topic = "bench/#"
qos = $q
[[pub]]
count = 100
topic = "bench/%i"
qos = $q
rate = $rate
TOML
done
port=21000
for r in $(seq "$rounds"); do
  for s in fan-in-qos0 fan-in-qos1; do
    for mode in none tenants; do
      port=$((port + 1))
      extra=()
      [ "$mode" = tenants ] && extra=(--tenants "$work/tenants.toml" --allow-anonymous)
      rm -rf "$work/data"
      target/release/porchlight --listen 127.0.0.1:$port --data-dir "$work/data" \
        --log-level warn --no-sys-topics --max-inflight 100 "${extra[@]}" &
      pid=$!
      for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
        sleep 0.05
      done
      target/release/porchlight-loadtest scenario "$work/$s.toml" -H 127.0.0.1:$port -q \
        --broker-pid $pid --client-prefix "t$r" --json "$work/$s.$mode.$r.json" > /dev/null 2>&1 || true
      kill $pid; wait $pid 2>/dev/null || true
      echo "round $r $s $mode: $(python3 -c "import json,sys; x=json.load(open(sys.argv[1])); print(round(x['received_per_second']), 'lost', x['lost'], 'broker CPU %', x['broker']['cpu_percent'])" "$work/$s.$mode.$r.json")"
    done
  done
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
for s in ("fan-in-qos0", "fan-in-qos1"):
    rate, cpu = {}, {}
    for mode in ("none", "tenants"):
        runs = [json.load(open(f"{work}/{s}.{mode}.{r}.json")) for r in range(1, rounds + 1)]
        rate[mode] = statistics.median(x["received_per_second"] for x in runs)
        # Broker CPU microseconds per message received.
        cpu[mode] = statistics.median(
            x["broker"]["cpu_percent"] / 100 / x["received_per_second"] * 1e6 for x in runs
        )
    print(f"{s}: received/s median without tenants {rate['none']:,.0f}, with {rate['tenants']:,.0f} "
          f"(ratio {rate['tenants'] / rate['none']:.3f}); broker CPU per message {cpu['none']:.2f} us "
          f"vs {cpu['tenants']:.2f} us (ratio {cpu['tenants'] / cpu['none']:.3f})")
PY

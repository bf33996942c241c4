#!/usr/bin/env bash
# QoS 1 to a persistent subscriber (group commit) against the same to a
# clean one: porchlight-loadtest fan-in scenarios (PUBS publishers
# unthrottled, 64 in flight each, -> 1 subscriber on bench/#), the same
# broker build with a fresh store each run, interleaved, ROUNDS times,
# medians printed. "persistent" runs every client with clean session 0
# (--persistent); QoS 1 publishes cost the broker's store nothing, so it
# is the subscriber's queue and in-flight records that reach the disk.
# Every run is bounded by SECONDS plus the connect and drain deadlines.
# BIN=/path/to/porchlight measures another build (an A/B: run it and this
# tree's build alternately and compare medians).
#   usage: scripts/bench-durable.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
cargo build --release -p porchlight-broker -p porchlight-loadtest --bin porchlight --bin porchlight-loadtest >/dev/null
lt=target/release/porchlight-loadtest
bin=${BIN:-target/release/porchlight}
work=$(mktemp -d)
pid=
stop() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; pid=; }
trap 'stop; rm -rf "$work"' EXIT
port=18840
fresh() { # a new broker on a new port (the last run's ports sit in TIME_WAIT)
  stop
  port=$((port + 1))
  rm -rf "$work/data"
  "$bin" --listen 127.0.0.1:$port --data-dir "$work/data" \
    --log-level warn --no-sys-topics &
  pid=$!
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return 0
    sleep 0.05
  done
  echo "porchlight did not listen on $port" >&2; exit 1
}
for pubs in 4 1; do
  cat > "$work/fanin-$pubs.toml" <<TOML
name = "fanin-$pubs"
duration = $secs
[[sub]]
count = 1
topic = "bench/#"
qos = 1
[[pub]]
count = $pubs
topic = "bench/%i"
qos = 1
rate = 0
inflight = 64
TOML
done
echo "porchlight $(git rev-parse --short HEAD); --fsync group (1 ms window); store on $(df -h "$work" | awk 'NR==2{print $1}')"
for r in $(seq "$rounds"); do
  for pubs in 4 1; do
    for mode in clean persistent; do
      fresh
      flag=; [ $mode = persistent ] && flag=--persistent
      # shellcheck disable=SC2086
      $lt scenario "$work/fanin-$pubs.toml" -H 127.0.0.1:$port --broker-pid "$pid" -q $flag \
        --json "$work/$pubs.$mode.$r.json" >/dev/null
      echo "round $r, $pubs publishers, $mode: $(python3 -c "import json,sys; x=json.load(open(sys.argv[1])); print(round(x['received_per_second']), '/s delivered, sent', round(x['sent_per_second']), '/s, lost', x['lost'], ', p99', x['latency_us']['p99'] / 1000, 'ms')" "$work/$pubs.$mode.$r.json")"
    done
  done
done
stop
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
print("\n| publishers | clean: delivered/s | persistent: delivered/s | persistent ÷ clean | clean: sent/s | persistent: p99 ms |")
print("|---|---|---|---|---|---|")
for pubs in (4, 1):
    runs = {m: [json.load(open(f"{work}/{pubs}.{m}.{r}.json")) for r in range(1, rounds + 1)]
            for m in ("clean", "persistent")}
    med = lambda m, f: statistics.median(f(x) for x in runs[m])
    clean = med("clean", lambda x: x["received_per_second"])
    pers = med("persistent", lambda x: x["received_per_second"])
    print(f"| {pubs} | {clean:,.0f} | {pers:,.0f} | {pers / clean:.0%} "
          f"| {med('clean', lambda x: x['sent_per_second']):,.0f} "
          f"| {med('persistent', lambda x: x['latency_us']['p99']) / 1000:.2f} |")
PY

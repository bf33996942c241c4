#!/usr/bin/env bash
# The comparative benchmark suite: the same porchlight-loadtest scenarios
# against Porchlight, Mosquitto (Debian package) and rumqttd (cargo install),
# interleaved (round 1: every scenario on every broker, then round 2, ...),
# medians quoted. Writes the results between the bench-compare markers of
# docs/benchmarks.md, the raw JSON under target/bench-compare/, and prints
# the table.
#   usage: scripts/bench-compare.sh [ROUNDS] [SECONDS] [SCENARIOS...]
#   SCENARIOS default to all: idle-10k idle-19k conn-rate conn-tls-full
#   conn-tls-resumed fan-in-qos0 fan-in-qos0-flood fan-in-qos1 fan-out-200
#   fan-out-1000 p2p shared latency. Also available (not in the default
#   set, for A/Bs of the control state): conn-rate-persistent (the connect
#   storm with persistent sessions) and retained-stream (every PUBLISH
#   retained, 1,000 topics).
#   BROKERS="porchlight mosquitto rumqttd" selects brokers; "baseline" is
#   the porchlight binary named by BASELINE=PATH, run with the same flags,
#   for an A/B of two builds; "scraped" is this porchlight with
#   /metrics scraped every second through the run (curl), for the cost
#   of scraping (BROKERS="porchlight scraped"). NO_DOC=1 leaves
#   docs/benchmarks.md alone.
# Traffic stays on 127.0.0.1; every run is bounded by SECONDS plus the
# connect and drain deadlines.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
shift $(( $# > 2 ? 2 : $# )) || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(idle-10k idle-19k conn-rate conn-tls-full conn-tls-resumed
  fan-in-qos0 fan-in-qos0-flood fan-in-qos1 fan-out-200 fan-out-1000 p2p shared latency)
brokers=(${BROKERS:-porchlight mosquitto rumqttd})
# Every run gets fresh ports (20000, 20002, ...): the 28k ephemeral ports
# toward one address stay in TIME_WAIT for a minute after a run.
run_no=0
port=20000
tls_port=20001

# Open files: capped at 20,000 per process on the reference machine.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [[ " ${brokers[*]} " == *" mosquitto "* ]] && [ ! -x "$mosquitto" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
rumqttd=$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")
if [[ " ${brokers[*]} " == *" rumqttd "* ]] && [ ! -x "$rumqttd" ]; then
  # Not --locked: its lock file pins metrics 0.22.1, which current rustc
  # refuses (E0521); the newest 0.22.x builds.
  cargo install rumqttd --version 0.20.0
fi
cargo build --release -p porchlight-broker -p porchlight-loadtest --bin porchlight --bin porchlight-loadtest >/dev/null
cargo build --release -p porchlight-loadtest --example tls_bench >/dev/null
lt=target/release/porchlight-loadtest
out=target/bench-compare/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
work=$(mktemp -d)
pid=
scraper=
stop() {
  [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }; scraper=
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; pid=
}
trap 'stop; rm -rf "$work"' EXIT
# One ECDSA P-256 server certificate for every broker's TLS listener.
target/release/examples/tls_bench certs "$work/pki" ecdsa >/dev/null

configs() {
cat > "$work/mosquitto.conf" <<CONF
user root
per_listener_settings false
listener $port 127.0.0.1
max_connections -1
allow_anonymous true
persistence false
max_inflight_messages 100
max_queued_messages 1000
set_tcp_nodelay true
sys_interval 0
connection_messages false
listener $tls_port 127.0.0.1
certfile $work/pki/server.crt
keyfile $work/pki/server.key
log_dest stderr
log_type error
CONF
# rumqttd 0.20: its outgoing in-flight window is fixed at 100 in its
# source (MAX_INFLIGHT), the same as Mosquitto's max_inflight_messages and
# Porchlight's --max-inflight here; max_inflight_count only bounds how many
# incoming packets one read takes.
cat > "$work/rumqttd.toml" <<CONF
id = 0
[router]
max_connections = 30000
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
[v4.2]
name = "v4-2"
listen = "127.0.0.1:$tls_port"
next_connection_delay_ms = 0
    [v4.2.tls]
    certpath = "$work/pki/server.crt"
    keypath = "$work/pki/server.key"
    [v4.2.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
CONF
}

start() {
  port=$((20000 + 2 * run_no)); tls_port=$((port + 1)); run_no=$((run_no + 1))
  configs
  case $1 in
    porchlight|baseline|scraped)
      rm -rf "$work/data"
      bin=target/release/porchlight; [ "$1" = baseline ] && bin=${BASELINE:?BASELINE=path of the other porchlight binary}
      "$bin" --listen 127.0.0.1:$port --data-dir "$work/data" \
        --tls-listen 127.0.0.1:$tls_port --tls-cert "$work/pki/server.crt" --tls-key "$work/pki/server.key" \
        --log-level warn --no-sys-topics --max-inflight 100 --max-connections 1000000 &
      ;;
    mosquitto) "$mosquitto" -c "$work/mosquitto.conf" 2>/dev/null & ;;
    rumqttd) "$rumqttd" -q -c "$work/rumqttd.toml" >/dev/null 2>&1 & ;;
  esac
  pid=$!
  for _ in $(seq 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
      # Scraped once a second, as Prometheus would (a bounded loop: it
      # ends with the broker, or after an hour).
      if [ "$1" = scraped ]; then
        ( for _ in $(seq 3600); do
            kill -0 "$pid" 2>/dev/null || exit 0
            curl -s -o /dev/null http://127.0.0.1:9883/metrics || true
            sleep 1
          done ) &
        scraper=$!
      fi
      return 0
    fi
    sleep 0.05
  done
  echo "$1 did not listen on $port" >&2; exit 1
}

# Scenario files for the message scenarios, generated with SECONDS.
scen() { # name sub_count sub_topic sub_qos shared pub_count pub_topic pub_qos rate [retain]
  cat > "$work/$1.toml" <<TOML
name = "$1"
duration = $secs
[[sub]]
count = $2
topic = "$3"
qos = $4
$( [ -n "$5" ] && echo "shared = \"$5\"" )
[[pub]]
count = $6
topic = "$7"
qos = $8
rate = $9
retain = ${10:-false}
TOML
}
# Fan-in QoS 0 at a fixed offered load (250k/s, what the best peer is
# known to sustain here), and as a flood (publishers unthrottled): the
# flood shows what a broker does when offered more than it can deliver.
scen fan-in-qos0 1 'bench/#' 0 '' 100 'bench/%i' 0 2500
scen fan-in-qos0-flood 1 'bench/#' 0 '' 100 'bench/%i' 0 0
scen fan-in-qos1 1 'bench/#' 1 '' 100 'bench/%i' 1 0
scen fan-out-200 200 'bench/fan' 0 '' 1 'bench/fan' 0 5000
scen fan-out-1000 1000 'bench/fan' 0 '' 1 'bench/fan' 0 1000
scen p2p 1000 'p2p/%i' 1 '' 1000 'p2p/%i' 1 100
scen shared 10 'test/#' 1 benchmark 1000 'test/%i' 1 100
scen latency 1 'lat/#' 1 '' 50 'lat/%i' 1 100
# Every PUBLISH retained, on 1,000 topics: the path a single writer of the
# control state could serialise.
scen retained-stream 1 'ret/#' 1 '' 1000 'ret/%i' 1 100 true

args() { # the loadtest command for a scenario
  case $1 in
    # Idle connections at 1,000/s (rumqttd accepts ~660/s here; a 30 s
    # connect timeout lets it finish).
    idle-10k) echo "conn -c 10000 -R 1000 -d $secs --connect-timeout 30" ;;
    idle-19k) echo "conn -c 19000 -R 1000 -d $secs --connect-timeout 30 --src-ips 127.0.0.2-127.0.0.3" ;;
    conn-rate) echo "conn -c 10000 -R 0 -d 1" ;;
    conn-rate-persistent) echo "conn -c 10000 -R 0 -d 1 --persistent" ;;
    # Reconnect storms over TLS: 1,000 clients connect once (warm-up: the
    # session ticket), then all reconnect 5 times as fast as they can.
    conn-tls-full) echo "conn -c 1000 -R 0 -d 1 --cycles 6 --tls --ca $work/pki/ca.crt --no-tls-resume" ;;
    conn-tls-resumed) echo "conn -c 1000 -R 0 -d 1 --cycles 6 --tls --ca $work/pki/ca.crt" ;;
    *) echo "scenario $work/$1.toml" ;;
  esac
}

echo "porchlight $(git rev-parse --short HEAD); $("$mosquitto" -h 2>/dev/null | head -1 || true); rumqttd $("$rumqttd" -V 2>/dev/null || echo '?')"
echo "$(nproc) cores, $(awk '/MemTotal/ {print int($2/1024/1024)}' /proc/meminfo) GiB; $secs s per run, $rounds rounds; results in $out"
for r in $(seq "$rounds"); do
  for s in "${scenarios[@]}"; do
    for b in "${brokers[@]}"; do
      start "$b"
      # shellcheck disable=SC2046
      p=$port; [[ $s == conn-tls-* ]] && p=$tls_port
      # Round 1 also writes the run's plots (throughput, latency,
      # connections, CPU over time) for docs/bench/.
      report=(); [ "$r" = 1 ] && report=(--report "$out/report/$s.$b")
      $lt $(args "$s") -H 127.0.0.1:$p --broker-pid "$pid" -q "${report[@]}" \
        --client-prefix "bc$r" --json "$out/$s.$b.$r.json" > "$out/$s.$b.$r.txt" 2>&1 || true
      stop
      echo "round $r $s $b: $(grep -E 'received|connects ' "$out/$s.$b.$r.txt" | tr -s ' ' | head -2 | tr '\n' ';')"
    done
  done
done

python3 - "$out" "$rounds" "$secs" "${scenarios[*]}" "${brokers[*]}" <<'PY'
import json, os, shutil, statistics, subprocess, sys
out, rounds, secs, scenarios, brokers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5].split()
def load(s, b):
    runs = []
    for r in range(1, rounds + 1):
        p = f"{out}/{s}.{b}.{r}.json"
        if os.path.exists(p):
            runs.append(json.load(open(p)))
    return runs
def med(runs, f):
    vals = [f(x) for x in runs if f(x) is not None]
    return statistics.median(vals) if vals else None
def fmt(v, unit=""):
    if v is None: return "—"
    if abs(v) >= 100: return f"{v:,.0f}{unit}"
    return f"{v:.2f}{unit}"
metrics = {
    "idle": [("broker bytes / connection", lambda x: x.get("broker_bytes_per_connection")),
             ("connected", lambda x: x["connects"]),
             ("broker RSS MiB", lambda x: (x.get("broker") or {}).get("rss_kib_connected", 0) / 1024)],
    "conn-rate": [("connects / s", lambda x: x["connect_rate"]),
                  ("connect p50 ms", lambda x: x["connect_latency_us"]["p50"] / 1000),
                  ("connect p99 ms", lambda x: x["connect_latency_us"]["p99"] / 1000),
                  ("TLS resumed %", lambda x: 100 * x["tls_resumed"] / x["tls_handshakes"] if x.get("tls_handshakes") else None),
                  ("broker CPU s / 1k connects", lambda x: 1000 * x["broker"]["cpu_seconds_connecting"] / x["connects"] if x.get("broker") and x["connects"] else None),
                  ("failed", lambda x: x["connect_failures"])],
    "msg": [("received / s", lambda x: x["received_per_second"]),
            ("sent / s", lambda x: x["sent_per_second"]),
            ("lost %", lambda x: 100 * x["lost"] / x["expected"] if x.get("expected") else None),
            ("p50 ms", lambda x: x["latency_us"]["p50"] / 1000),
            ("p99 ms", lambda x: x["latency_us"]["p99"] / 1000),
            ("broker CPU %", lambda x: (x.get("broker") or {}).get("cpu_percent")),
            ("generator CPU %", lambda x: x["generator"]["cpu_percent"])],
}
lines = []
for s in scenarios:
    kind = "idle" if s.startswith("idle") else ("conn-rate" if s.startswith("conn") else "msg")
    lines.append(f"\n#### {s}\n")
    lines.append("| | " + " | ".join(brokers) + " |")
    lines.append("|---|" + "---|" * len(brokers))
    for name, f in metrics[kind]:
        row = [fmt(med(load(s, b), f)) for b in brokers]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    cmd = next((x["command"] for b in brokers for x in load(s, b)), "")
    lines.append(f"\n`{cmd}`")
    # Round 1's plots, copied beside the document and linked.
    charts = ["throughput", "latency"] if kind == "msg" else ["connections", "cpu"]
    links = []
    for b in brokers:
        for c in charts:
            src = f"{out}/report/{s}.{b}/{c}.svg"
            if os.path.exists(src) and not os.environ.get("NO_DOC"):
                os.makedirs("docs/bench", exist_ok=True)
                dst = f"docs/bench/{s}.{b}.{c}.svg"
                shutil.copyfile(src, dst)
                links.append(f"[{b} {c}](bench/{s}.{b}.{c}.svg)")
    if links:
        lines.append("\nPlots (round 1): " + " · ".join(links))
table = "\n".join(lines)
print(table)
doc = "docs/benchmarks.md"
text = open(doc).read()
begin, end = "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->"
if begin in text and end in text and not os.environ.get("NO_DOC"):
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    body = (f"\nGenerated by `scripts/bench-compare.sh {rounds} {secs}` at commit `{rev}`: "
            f"medians of {rounds} interleaved rounds, {secs} s each; raw JSON in `{out}`.\n" + table + "\n")
    open(doc, "w").write(head + begin + body + end + tail)
PY

#!/usr/bin/env bash
# First figures for docs/benchmarks.md, until porchlight-loadtest and
# scripts/bench-compare.sh exist: Porchlight and Mosquitto on 127.0.0.1,
# interleaved, ROUNDS times. Every run is bounded in time.
#   usage: scripts/bench-first.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
command -v mosquitto >/dev/null || { echo "apt-get install mosquitto" >&2; exit 1; }
cargo build --release --bin porchlight --example bench >/dev/null
bench=target/release/examples/bench
work=$(mktemp -d)
printf 'listener 18831 127.0.0.1\nallow_anonymous true\n' > "$work/mosq.conf"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_brokers() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  target/release/porchlight --listen 127.0.0.1:18830 --data-dir "$work/data" --log-level warn &
  porch=$!
  mosquitto -c "$work/mosq.conf" >/dev/null 2>&1 &
  mosq=$!
  pids=("$porch" "$mosq")
  sleep 1
}

echo "--- trie (in-process)"
$bench trie
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB; $(uname -r)"
echo "porchlight $(git rev-parse --short HEAD); $(mosquitto -h 2>&1 | head -1)"
for r in $(seq "$rounds"); do
  echo "--- round $r"
  start_brokers
  echo -n "porchlight "; $bench idle 127.0.0.1:18830 "$porch" 10000
  echo -n "mosquitto  "; $bench idle 127.0.0.1:18831 "$mosq" 10000
  start_brokers
  for qos in 0 1; do
    echo -n "porchlight "; $bench fanin 127.0.0.1:18830 4 5 "$qos"
    echo -n "mosquitto  "; $bench fanin 127.0.0.1:18831 4 5 "$qos"
  done
  echo -n "porchlight "; $bench latency 127.0.0.1:18830 5000 5 1
  echo -n "mosquitto  "; $bench latency 127.0.0.1:18831 5000 5 1
done

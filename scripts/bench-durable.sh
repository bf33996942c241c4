#!/usr/bin/env bash
# QoS 1 to a persistent subscriber (group commit) vs. to a clean one, same
# broker build, fresh store each run, interleaved, ROUNDS times. Bounded.
#   usage: scripts/bench-durable.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release --bin porchlight --example bench >/dev/null
bench=target/release/examples/bench
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fresh() {
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work/data"
  target/release/porchlight --listen 127.0.0.1:18832 --data-dir "$work/data" --log-level warn "$@" &
  pid=$!
  sleep 0.5
}
echo "porchlight $(git rev-parse --short HEAD); fsync group, window 1 ms; $(df -h "$work" | awk 'NR==2{print $1}')"
for r in $(seq "$rounds"); do
  echo "--- round $r"
  for pubs in 4 1; do
    fresh; $bench fanin 127.0.0.1:18832 "$pubs" 5 1
    fresh; $bench fanin 127.0.0.1:18832 "$pubs" 5 1 persistent
  done
done

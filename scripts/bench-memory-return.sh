#!/usr/bin/env bash
# Memory given back after load (issue 16 item 5): the broker's RSS at
# rest, right after a burst (40 clients each publishing 5 packets of 4 MB,
# then 10,000 connections opened and closed), and 20 s later. A broker
# that returns what it freed falls back towards its resting RSS.
# Builds: BINS="target/release/porchlight /path/to/other" (interleaved),
# ROUNDS times. Traffic stays on 127.0.0.1; every step is bounded.
#   usage: scripts/bench-memory-return.sh [ROUNDS]
source "$(dirname "$0")/bench-lib.sh"
rounds=${1:-3}
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status"; }
port=23000
for r in $(seq "$rounds"); do
  for bin in "${bins[@]}"; do
    port=$((port + 1))
    start_broker "$bin" $port
    rest=$(rss)
    $lt pub -H 127.0.0.1:$port -c 40 -L 5 -r 0 -s 4000000 -t 'burst/%i' --qos 1 -F 5 -d 5 --drain 0 -q >/dev/null 2>&1
    after_big=$(rss)
    $lt conn -H 127.0.0.1:$port -c 10000 -R 0 -d 1 -q >/dev/null 2>&1
    after=$(rss)
    sleep 20
    echo "round $r $bin: RSS at rest $rest MiB; after the 4 MB burst $after_big; after 10k connections $after; 20 s later $(rss)"
    stop
  done
done

#!/usr/bin/env bash
# Offline queues (issue 16 item 2): SESSIONS offline persistent sessions
# (half MQTT 3.1.1 clean session 0, half v5 with expiry 3600) subscribed to
# fan/#, then one publisher sends MESSAGES QoS 1 messages of 64 bytes to
# fan/x: SESSIONS x MESSAGES queue entries. Meanwhile a canary (one clean
# QoS 1 publisher at 50/s and its subscriber, on canary/#) measures what
# the fan-out does to unrelated clients. Prints, per build and round: the
# broker's RSS before and after (and per entry), its store's size, the
# publisher's PUBACKs, and the canary's p50/p99/max.
# Builds: BINS="target/release/porchlight /path/to/other/porchlight"; BROKER_FLAGS
# adds flags to every broker (e.g. "--fsync never").
# (default: this tree's release build), run interleaved, ROUNDS times.
# Traffic stays on 127.0.0.1; every run is bounded (60 s of publishing).
#   usage: scripts/bench-offline-queues.sh [ROUNDS] [SESSIONS] [MESSAGES]
source "$(dirname "$0")/bench-lib.sh"
rounds=${1:-3}
sessions=${2:-15000}
messages=${3:-150}
cat > "$work/canary.toml" <<TOML
name = "canary"
duration = 60
drain = 2
[[sub]]
count = 1
topic = "canary/#"
qos = 1
[[pub]]
count = 1
topic = "canary/%i"
qos = 1
rate = 50
TOML
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
port=21000
half=$((sessions / 2))
for r in $(seq "$rounds"); do
  for bin in "${bins[@]}"; do
    port=$((port + 1))
    # shellcheck disable=SC2086
    start_broker "$bin" $port ${BROKER_FLAGS:-}
    $lt sub -H 127.0.0.1:$port -c $half -R 0 -d 1 --drain 0 --persistent -t 'fan/#' --qos 1 \
      --client-prefix v3 -q >/dev/null 2>&1
    $lt sub -H 127.0.0.1:$port -c $half -R 0 -d 1 --drain 0 --persistent -x 3600 -V 5 -t 'fan/#' \
      --qos 1 --client-prefix v5 -q >/dev/null 2>&1
    before=$(rss $pid)
    $lt scenario "$work/canary.toml" -H 127.0.0.1:$port -q --json "$work/canary.json" >/dev/null 2>&1 &
    canary=$!
    $lt pub -H 127.0.0.1:$port -c 1 -L "$messages" -r 0 -s 64 -t fan/x --qos 1 -d 60 --drain 0 -q \
      --client-prefix fan --json "$work/pub.json" >/dev/null 2>&1
    after=$(rss $pid)
    wait $canary || true
    entries=$((2 * half * messages))
    python3 - "$work" "$bin" "$r" "$before" "$after" "$entries" "$(du -sm "$work/data" | cut -f1)" <<'PY'
import json, sys
work, b, r, before, after, entries, disk = sys.argv[1:]
before, after, entries = int(before), int(after), int(entries)
pub = json.load(open(f"{work}/pub.json"))
c = json.load(open(f"{work}/canary.json"))["latency_us"]
print(f"round {r} {b}: {entries} entries, RSS {before // 1024} -> {after // 1024} MiB "
      f"({(after - before) * 1024 // entries} B/entry), store {disk} MiB, "
      f"{pub['acked']} of {pub['sent']} PUBACKed; canary p50 {c['p50'] / 1000:.2f} "
      f"p99 {c['p99'] / 1000:.2f} max {c['max'] / 1000:.2f} ms")
PY
    stop
  done
done

#!/usr/bin/env bash
# Reconnect soak (issue 16 item 3): CLIENTS persistent clients (MQTT 3.1.1
# clean session 0, or v5 with expiry 3600 with V5=1) each reconnect on its
# own client id CYCLES times as fast as they can, with no subscriptions and
# no messages; the broker's RSS is printed every 5 s of the run. A leak
# shows as RSS growing with the reconnects; fixed, it is flat after warm-up.
# Builds: BINS="target/release/porchlight /path/to/other" (interleaved).
# Traffic stays on 127.0.0.1; bounded by CLIENTS x CYCLES connects.
#   usage: scripts/soak-reconnects.sh [CLIENTS] [CYCLES]
source "$(dirname "$0")/bench-lib.sh"
clients=${1:-20}
cycles=${2:-50000}
version=(); [ "${V5:-0}" = 1 ] && version=(-V 5 -x 3600)
port=22000
for bin in "${bins[@]}"; do
  port=$((port + 1))
  start_broker "$bin" $port
  $lt conn -H 127.0.0.1:$port -c "$clients" -R 0 -d 1 --cycles "$cycles" --persistent "${version[@]}" \
    --broker-pid $pid -q --json "$work/soak.json" >/dev/null 2>&1
  python3 - "$work/soak.json" "$bin" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
series = [(round(x["t"]), x.get("broker_rss_kib")) for x in s["series"] if x.get("broker_rss_kib")]
pts = [f"{t}s {kib / 1024:.1f}" for t, kib in series[::5]] + [f"end {series[-1][1] / 1024:.1f}"]
print(f"{sys.argv[2]}: {s['connects']} connects at {s['connect_rate']:.0f}/s, failed {s['connect_failures']}; "
      f"broker RSS MiB: " + ", ".join(pts))
PY
  stop
done

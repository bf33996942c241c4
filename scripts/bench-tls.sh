#!/usr/bin/env bash
# TLS connects per second per core: full and resumed TLS handshakes
# (each followed by MQTT CONNECT/CONNACK and a close), Porchlight vs.
# Mosquitto's TLS listener (OpenSSL), same certificate: ECDSA P-256, then
# RSA-2048 (cert-manager's default), TLS 1.3, and ECDSA with TLS 1.2. The
# broker under test is pinned to core 1, the client to core 0. Rounds are
# interleaved; every run is bounded by SECONDS.
# Then the handshake alone: `tls_bench handshakes` runs handshakes in
# memory against Porchlight's own server configuration (no TCP, no MQTT,
# no kernel), pinned to core 1, and reports handshakes per second of
# server time, full and resumed, for each certificate and version.
#   usage: scripts/bench-tls.sh [ROUNDS] [SECONDS] [CONCURRENCY]
#   needs: mosquitto (apt-get install mosquitto), taskset
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
conc=${3:-32}
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$mosquitto" ] || { echo "mosquitto not found: apt-get install mosquitto" >&2; exit 1; }
cargo build --release --bin porchlight -p porchlight-broker >/dev/null
cargo build --release -p porchlight-loadtest --example tls_bench >/dev/null
tb=target/release/examples/tls_bench
work=$(mktemp -d)
pid=
# utime + stime of the broker, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
stop() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; pid=; }
trap 'stop; rm -rf "$work"' EXIT
port=18883
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return 0
    sleep 0.05
  done
  echo "broker did not listen on $port" >&2; exit 1
}
for key in ecdsa rsa; do
  $tb certs "$work/pki-$key" $key
done
conf() {
cat > "$work/mosquitto.conf" <<CONF
user root
log_type error
per_listener_settings false
allow_anonymous true
max_connections -1
set_tcp_nodelay true
listener $port 127.0.0.1
certfile $work/pki-$1/server.crt
keyfile $work/pki-$1/server.key
CONF
}
start() {
  case $1 in
    porchlight)
      rm -rf "$work/data"
      taskset -c 1 target/release/porchlight --listen 127.0.0.1:0 \
        --tls-listen 127.0.0.1:$port --tls-cert "$work/pki-$2/server.crt" \
        --tls-key "$work/pki-$2/server.key" --data-dir "$work/data" \
        --log-level warn --no-sys-topics &
      ;;
    mosquitto) conf "$2"; taskset -c 1 "$mosquitto" -c "$work/mosquitto.conf" & ;;
  esac
  pid=$!
  wait_port
}
echo "porchlight $(git rev-parse --short HEAD); $("$mosquitto" -h | head -1); $(openssl version 2>/dev/null || true)"
echo "X25519; $secs s per run, $conc concurrent connects; broker on core 1, client on core 0"
for r in $(seq "$rounds"); do
  echo "--- round $r"
  for combo in "ecdsa 1.3" "rsa 1.3" "ecdsa 1.2" "rsa 1.2"; do
  read -r key ver <<<"$combo"
  for mode in full resumed; do
    for broker in porchlight mosquitto; do
      start $broker $key
      before=$(cpu_ticks)
      out=$(taskset -c 0 $tb run 127.0.0.1:$port "$work/pki-$key/ca.crt" $mode "$secs" "$conc" "$ver")
      used=$(( $(cpu_ticks) - before ))
      rate=$(sed 's/.*"connects_per_sec":\([0-9]*\).*/\1/' <<<"$out")
      n=$(sed 's/.*"connects":\([0-9]*\).*/\1/' <<<"$out")
      # Connects per second of broker CPU: the per-core rate even when
      # the client, not the broker, limits the wall-clock rate.
      per_cpu=$(( used > 0 ? n * $(getconf CLK_TCK) / used : 0 ))
      printf '%-5s %s %-10s %-8s %6s/s wall, broker CPU %3s%%, %6s per CPU-second  %s\n' \
        $key $ver $broker $mode "$rate" $(( used * 100 / $(getconf CLK_TCK) / secs )) "$per_cpu" "$out"
      stop
    done
  done
  done
done
echo "--- handshakes alone (in memory, Porchlight's server configuration, $secs s each)"
for r in $(seq "$rounds"); do
  for combo in "ecdsa 1.3" "rsa 1.3" "ecdsa 1.2" "rsa 1.2"; do
    read -r key ver <<<"$combo"
    for mode in full resumed; do
      printf '%-5s %s %-8s %s\n' $key $ver $mode \
        "$(taskset -c 1 $tb handshakes "$work/pki-$key" $mode "$secs" "$ver")"
    done
  done
done

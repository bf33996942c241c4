# Sourced by the benchmark scripts: builds the release binaries, makes a
# work directory removed on exit, and starts brokers on 127.0.0.1.
#   lt: the load generator; bins: the builds to compare (BINS, default this
#   tree's); start_broker BIN PORT [FLAGS...]: starts one, sets pid, waits
#   until it listens; stop: ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -p porchlight-broker -p porchlight-loadtest --bin porchlight --bin porchlight-loadtest >/dev/null
lt=target/release/porchlight-loadtest
read -r -a bins <<< "${BINS:-target/release/porchlight}"
work=$(mktemp -d)
pid=
stop() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; pid=; }
trap 'stop; rm -rf "$work"' EXIT
start_broker() { # BIN PORT [FLAGS...]: a fresh store each time
  local bin=$1 port=$2
  shift 2
  rm -rf "$work/data"
  "$bin" --listen 127.0.0.1:"$port" --data-dir "$work/data" --log-level warn --no-sys-topics "$@" &
  pid=$!
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$bin did not listen on $port" >&2
  exit 1
}

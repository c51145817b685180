#!/usr/bin/env bash
# Hit throughput with the Redis tier and the watcher on, against the same
# binary local-only: ../shared/bench/run.sh twice, back to back, same knobs.
# Starts its own redis-server on a free loopback port and stops it at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
: "${CARGO_TARGET_DIR:=target}"
cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/oddscache"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

export RUNS="${RUNS:-3}" TARGETS="${TARGETS:-ours}"
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-/tmp/oddscache-bench-target}"
run() {
  OURS_NAME="$1" OURS_CMD="$bin --config bench/oddscache.toml --listen \$BENCH_LISTEN --admin-listen 127.0.0.1:0 --upstream http://\$BENCH_UPSTREAM $2" \
    ../shared/bench/run.sh | grep -E "^(target|$1) "
}
run local-only ""
run with-redis "--redis-url redis://127.0.0.1:$port"

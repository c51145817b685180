#!/usr/bin/env bash
# Fleet simulation (issue 8, item 6): a real 3-primary Redis Cluster on
# loopback, 8 oddscache processes in cluster mode (each with a different
# first seed), the demo upstream with 1,000 games, a warmer and game-day
# changes; prints one table. See bench/README.md, "## Fleet simulation".
#
#   bench/fleet.sh
#   FLEET_CHANGE_SECS=120 FLEET_STATUS_RATE=5 bench/fleet.sh
#
# Knobs (read by the driver), with their defaults: FLEET_SIDECARS=8,
# FLEET_GAMES=1000, FLEET_WARM_RATE=2000 (GET/s over all sidecars),
# FLEET_QUIET_SECS=20, FLEET_CHANGE_SECS=60, FLEET_STATUS_RATE=20 and
# FLEET_ODDS_RATE=50 (changes/s), FLEET_BURST_SECS=10,
# FLEET_BURST_WRITERS=16, FLEET_RUST_LOG=warn (the sidecars' RUST_LOG).
#
# ODDSCACHE_BIN picks the sidecar binary (default: the release build in
# $CARGO_TARGET_DIR, built first). The driver is examples/fleet_sim.rs,
# built in release (FLEET_DRIVER names a prebuilt one instead). Every
# redis-server and sidecar started here is stopped on exit, Ctrl-C
# included; the Redis and sidecar logs go too (FLEET_KEEP_LOGS=1 keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "fleet: needs $tool (apt-get install redis-server python3)" >&2; exit 2; }
done

: "${CARGO_TARGET_DIR:=target}"
export CARGO_TARGET_DIR
if [ -z "${ODDSCACHE_BIN:-}" ]; then
    cargo build --release --quiet --bin oddscache
    ODDSCACHE_BIN="$CARGO_TARGET_DIR/release/oddscache"
fi
export ODDSCACHE_BIN
[ -x "$ODDSCACHE_BIN" ] || { echo "fleet: $ODDSCACHE_BIN is not an executable" >&2; exit 2; }
driver="${FLEET_DRIVER:-}"
if [ -z "$driver" ]; then
    cargo build --release --quiet --example fleet_sim
    driver="$CARGO_TARGET_DIR/release/examples/fleet_sim"
fi

dir=$(mktemp -d -t oddscache-fleet.XXXXXX)
pids=()
run=""
cleanup() {
    if [ -n "$run" ]; then kill -TERM -- "-$run" 2>/dev/null || true; wait "$run" 2>/dev/null || true; fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${FLEET_KEEP_LOGS:-}" ]; then echo "fleet: logs kept in $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports whose cluster-bus port (+10000) is free too.
ports=$(python3 - <<'EOF'
import socket
found = []
while len(found) < 3:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p < 55000:
        b = socket.socket()
        try:
            b.bind(("127.0.0.1", p + 10000)); found.append(p)
        except OSError:
            pass
        b.close()
    s.close()
print(" ".join(map(str, found)))
EOF
)
addrs=()
urls=()
for port in $ports; do
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$dir/nodes-$port.conf" --dir "$dir" \
        --save '' --appendonly no --logfile "$dir/redis-$port.log" &
    pids+=("$!")
    addrs+=("127.0.0.1:$port")
    urls+=("redis://127.0.0.1:$port/")
done
for port in $ports; do
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log"
for port in $ports; do
    for _ in $(seq 100); do
        redis-cli -p "$port" cluster info | grep -q cluster_state:ok && break
        sleep 0.1
    done
done
echo "fleet: cluster on ${addrs[*]} ($(redis-server --version | awk '{print $3}')); logs in $dir"

export FLEET_NODES
FLEET_NODES=$(IFS=,; echo "${urls[*]}")
export FLEET_LOGS="$dir"
machine() {
    local psi=""
    [ -r /proc/pressure/cpu ] && psi=", CPU pressure $(awk '/^some/ {print $3}' /proc/pressure/cpu)"
    echo "fleet: $1: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)$psi"
}
machine before
set -m # the driver and its sidecars get their own process group
"$driver" &
run=$!
set +e
wait "$run"
rc=$?
set -e
machine after
if [ "$rc" -ne 0 ]; then
    echo "fleet: the driver failed (exit $rc); sidecar logs:" >&2
    tail -n 5 "$dir"/fleet-sidecar-*.log >&2 || true
fi
exit "$rc"

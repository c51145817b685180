#!/usr/bin/env bash
# Soak (issue 7, part 4): two replicas, Redis and the demo upstream under a
# steady mixed load; prints RSS, entries, served, errors and stale every
# SOAK_EVERY seconds, then the final table. See bench/README.md, "## Soak".
#
#   SOAK_SECS=1800 SOAK_RATE=500 bench/soak.sh
#
# Everything (sidecars, upstream) runs inside the test process; Redis is its
# child and is killed when the test ends. Ctrl-C stops the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."

export SOAK_SECS="${SOAK_SECS:-1800}"
export SOAK_RATE="${SOAK_RATE:-500}"
log="${SOAK_LOG:-$(mktemp -t oddscache-soak.XXXXXX.log)}"

command -v redis-server >/dev/null || { echo "soak: redis-server is not on PATH" >&2; exit 2; }

# Build first, so the run's clock measures the soak, not the compiler.
cargo test --release --test soak --no-run

set -m # the run gets its own process group, so a stop reaches all of it
cargo test --release --test soak -- --ignored --nocapture --test-threads=1 >"$log" 2>&1 &
run=$!
stop() { kill -TERM -- "-$run" 2>/dev/null || true; wait "$run" 2>/dev/null || true; }
trap 'stop; exit 130' INT TERM
tail -n +1 -f "$log" --pid="$run" | grep --line-buffered '^SOAK' || true
set +e
wait "$run"
rc=$?
set -e
trap - INT TERM

echo
echo "== soak: final table (${SOAK_SECS}s at ${SOAK_RATE} req/s; full log: $log) =="
grep '^SOAK' "$log" || true
if [ "$rc" -ne 0 ]; then
    echo "== soak FAILED (exit $rc) ==" >&2
    grep -E 'panicked|assertion|FAILED' "$log" >&2 || true
fi
exit "$rc"

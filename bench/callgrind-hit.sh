#!/usr/bin/env bash
# User-space instructions per cache hit, counted by callgrind: repeatable
# on a noisy machine where timings are not. Runs the harness's limit server
# and oddscache (each under valgrind, pinned to one CPU so oddscache picks
# its current-thread runtime) behind the harness's upstream, warms 1,000
# game URLs, then counts the instructions of a 10 s wrk run and divides by
# its requests. Prints one table; leaves nothing running.
#
#   bench/callgrind-hit.sh                      # limit and target/release/oddscache
#   ODDSCACHE=path/to/oddscache TARGETS="ours" bench/callgrind-hit.sh
#   KEEP=dir bench/callgrind-hit.sh             # keep the callgrind files there
#   EXTRA="--redis-url redis://127.0.0.1:6399" bench/callgrind-hit.sh
#                                               # more flags for oddscache (a fleet)
#
# Needs valgrind and wrk, and the harness's helpers (built on first use
# into $CARGO_TARGET_DIR, default ../shared/bench/target, as run.sh does).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HARNESS/target}
ODDSCACHE=${ODDSCACHE:-$ROOT/target/release/oddscache}
TARGETS=${TARGETS:-limit ours}
UP_PORT=${UP_PORT:-18180}
PORT=${PORT:-18190}
CPU=${CPU:-1}
WORK=$(mktemp -d)
KEEP=${KEEP:-}
declare -a PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[[ -x $ODDSCACHE ]] || { echo "no $ODDSCACHE; run cargo build --release" >&2; exit 1; }
BIN=$CARGO_TARGET_DIR/release
if [[ ! -x $BIN/bench-limit || ! -x $BIN/bench-upstream ]]; then
  echo "building the harness helpers into $CARGO_TARGET_DIR ..." >&2
  (cd "$HARNESS" && cargo build --release -q)
fi

"$BIN/bench-upstream" "127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$UP_PORT/__count" && break; sleep 0.1; done

wrk_run() {  # wrk_run SECONDS OUT
  BENCH_NPATHS=1000 wrk -t1 -c8 -d"$1"s -s "$HARNESS/lua/games.lua" "http://127.0.0.1:$PORT/" >"$2" 2>&1
}

printf '| target | requests | instructions | instructions per hit |\n| --- | --- | --- | --- |\n'
for t in $TARGETS; do
  out=$WORK/cg.$t
  case $t in
    limit) cmd=("$BIN/bench-limit" "127.0.0.1:$PORT") ;;
    ours) cmd=("$ODDSCACHE" --config "$ROOT/bench/oddscache.toml" --listen "127.0.0.1:$PORT"
               --admin-listen 127.0.0.1:0 --upstream "http://127.0.0.1:$UP_PORT" --log-format text
               ${EXTRA:-}) ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  LIMIT_THREADS=1 taskset -c "$CPU" valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
    --compress-strings=no --compress-pos=no "${cmd[@]}" >"$WORK/$t.log" 2>&1 &
  vpid=$!
  PIDS+=($vpid)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/v1/games/g1/odds" && break; sleep 0.2; done
  wrk_run 8 "$WORK/warm.txt"                    # fills the cache, warms the code
  callgrind_control -d "$vpid" >/dev/null 2>&1        # part 1: start-up and warm-up
  wrk_run 10 "$WORK/run.txt"
  callgrind_control -d "$vpid" >/dev/null 2>&1        # part 2: the measured run
  kill "$vpid"; wait "$vpid" 2>/dev/null || true
  n=$(grep -o 'requests=[0-9]*' "$WORK/run.txt" | cut -d= -f2)
  part=$(ls "$out".*.2 | head -1)
  ir=$(awk '/^summary:/ {print $2}' "$part")
  printf '| %s | %s | %s | %s |\n' "${t/ours/oddscache}" "$n" "$ir" "$(( ir / n ))"
  if [[ -n $KEEP ]]; then mkdir -p "$KEEP"; cp "$part" "$KEEP/callgrind.$t"; fi
done

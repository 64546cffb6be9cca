#!/usr/bin/env bash
# Cold start and Lambda INIT of an older commit beside this tree, on this machine, interleaved:
# the 2026-11-28 baseline in bench/run.py was measured on another machine, so its ratio mixes
# machines. This builds the baseline commit (a git worktree, its own target dir) and runs both.
#
#   bash bench/baseline-cold.sh               # 0396567 (measured for 2026-11-28), 20 runs each
#   BASE_REV=<rev> RUNS=30 bash bench/baseline-cold.sh
#
# Needs this tree's release build (`cargo build --release --examples --bins`). Each run: a fresh
# SQLite file, spawn -> first 200 on a signed webhook (examples/coldstart, as bench/run.py), and
# spawn -> first runtime-API call under a stand-in for INIT.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_REV=${BASE_REV:-0396567}
RUNS=${RUNS:-20}
KEY="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH" # the public local-emulator key
WT=${BASE_SRC:-target/baseline-src-$BASE_REV}       # a worktree of BASE_REV
BASE_TARGET=${BASE_TARGET:-$PWD/target/baseline-$BASE_REV}
RUN=bench/.run/baseline-cold
CS=target/release/examples/coldstart
for exe in target/release/hubhook target/release/hubhook-lambda "$CS" target/release/examples/rest_standin; do
  [ -x "$exe" ] || { echo "baseline-cold.sh: missing $exe: run cargo build --release --examples --bins" >&2; exit 1; }
done
[ -d "$WT" ] || git worktree add -f --detach "$WT" "$BASE_REV" >&2
(cd "$WT" && CARGO_TARGET_DIR="$BASE_TARGET" cargo build --release --bin hubhook >&2)
BASE="$BASE_TARGET/release/hubhook"

rm -rf "$RUN" && mkdir -p "$RUN"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sport=$(port)
PORT=$sport HUBHOOK_BIND=127.0.0.1 target/release/examples/rest_standin >"$RUN/standin.log" 2>&1 &
spid=$!
trap 'kill $spid 2>/dev/null || true' EXIT
sleep 0.3
export WEBPUBSUB_CONNECTION_STRING="Endpoint=http://127.0.0.1:$sport;AccessKey=$KEY;Version=1.0;"
export RUST_LOG=warn HUBHOOK_BIND=127.0.0.1

one() { # MODE ARGV...: one sample in ms
  local mode=$1; shift
  local extra=()
  [ "$mode" = http ] && extra=(--port "$(port)")
  "$CS" --runs 1 --mode "$mode" --key "$KEY" --db-dir "$RUN" --timeout-ms 20000 "${extra[@]}" -- "$@" 2>>"$RUN/coldstart.log" |
    tail -1 | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["median_ms"])'
}
declare -A samples
names=("baseline hubhook serve" "hubhook serve" "baseline hubhook, Lambda INIT" "hubhook-lambda, Lambda INIT")
for _ in $(seq "$RUNS"); do
  samples[${names[0]}]+="$(one http "$BASE" serve) "
  samples[${names[1]}]+="$(one http target/release/hubhook serve) "
  samples[${names[2]}]+="$(one lambda "$BASE") "
  samples[${names[3]}]+="$(one lambda target/release/hubhook-lambda) "
done
echo "baseline $BASE_REV ($(stat -c %s "$BASE") B) vs $(git rev-parse --short HEAD) (hubhook $(stat -c %s target/release/hubhook) B, hubhook-lambda $(stat -c %s target/release/hubhook-lambda) B), $RUNS runs each, interleaved:"
python3 -c '
import statistics, sys
names, rows = sys.argv[1:5], [list(map(float, s.split())) for s in sys.argv[5:9]]
med = [statistics.median(r) for r in rows]
for n, r, m in zip(names, rows, med):
    print(f"  {n:32} median {m:6.2f} ms  (min {min(r):.2f}, max {max(r):.2f})")
print(f"  cold start ratio {med[1] / med[0]:.2f}x, Lambda INIT ratio {med[3] / med[2]:.2f}x (this tree / baseline)")
' "${names[@]}" "${samples[${names[0]}]}" "${samples[${names[1]}]}" "${samples[${names[2]}]}" "${samples[${names[3]}]}"

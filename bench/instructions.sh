#!/usr/bin/env bash
# Instructions per request (issue 15): a figure that stays put on a noisy, shared machine, where
# wrk's requests/s do not.
#
#   bash bench/instructions.sh              # 2000 measured requests per target, 8 connections
#   N=5000 C=16 bash bench/instructions.sh  # more requests / connections
#   NO_BUILD=1 bash bench/instructions.sh   # use the release binaries already in target/
#   BIN_DIR=/tmp/before bash bench/instructions.sh   # measure other binaries (hubhook, echo, ceiling, rest_standin)
#   TARGETS="echo ceiling" bash bench/instructions.sh
#
# Targets: W1 `examples/echo` (signed user event echoed), `examples/ceiling` (bare axum) and
# `bench/node-echo.mjs` (official express handler); W2 `hubhook serve` (verify, SQLite write with
# its outbox row, broadcast to examples/rest_standin, reply).
#
# How: each server runs alone under a counter; a fixed-count client (Python stdlib, keep-alive,
# C connections; not counted) sends W warm-up requests, the counter is zeroed, N requests are
# sent, the counter is read. Instructions / N is the figure: everything the server process
# executed for those requests (all its threads), whatever the cause.
#
# Counter: `perf stat -e instructions:u` when the CPU's counters are available; otherwise (as in
# VMs without a virtual PMU: `perf stat true` shows `<not supported>`) valgrind's callgrind,
# zeroed and dumped with `callgrind_control`. Either way user-space instructions only: the
# kernel's share (socket I/O, fsync) is not in the figure. Under callgrind the server is ~50x
# slower and its threads run one at a time, so batching (group commit, several requests per
# wake-up) differs from a real run; compare figures taken with the same counter, N and C.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-2000}
W=${W:-200}
C=${C:-8}
TARGETS=${TARGETS:-"echo ceiling node-echo serve"}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN_DIR=${BIN_DIR:-}
KEY="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH" # the public local-emulator key
RUN=bench/.run/instructions
rm -rf "$RUN"
mkdir -p "$RUN"

if [ -z "${NO_BUILD:-}" ] && [ -z "$BIN_DIR" ]; then
  echo "instructions.sh: cargo build --release --examples --bin hubhook" >&2
  cargo build --release --examples --bin hubhook >&2
fi
if [ -z "$BIN_DIR" ]; then
  bin() { case "$1" in hubhook) echo "$TARGET_DIR/release/hubhook" ;; *) echo "$TARGET_DIR/release/examples/$1" ;; esac; }
else
  bin() { echo "$BIN_DIR/$1"; }
fi

if perf stat -x, -e instructions:u true 2>&1 >/dev/null | grep -q '^[0-9]'; then
  COUNTER=perf
else
  command -v valgrind >/dev/null || { echo "instructions.sh: no CPU counters (perf) and no valgrind" >&2; exit 1; }
  COUNTER=callgrind
fi
echo "instructions.sh: counter: $COUNTER; N=$N measured requests after W=$W, C=$C connections" >&2

pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  local port=$1 pid=$2
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { echo "instructions.sh: server exited; see $RUN" >&2; exit 1; }
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),timeout=0.5)" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "instructions.sh: nothing listening on $port" >&2
  exit 1
}

# client WORKLOAD PORT COUNT: sends COUNT requests over C keep-alive connections; fails on any
# non-200 answer (W1 must echo the text; W2 must answer "stored").
client() {
  python3 - "$1" "$2" "$3" "$C" "$KEY" <<'PY'
import base64, hashlib, hmac, http.client, sys, threading, uuid
workload, port, count, conns, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cid = "bench-conn-0"
text = "hello from the bench"
base = {
    "Content-Type": "text/plain", "ce-specversion": "1.0", "ce-awpsversion": "1.0",
    "ce-type": "azure.webpubsub.user.message", "ce-source": f"/hubs/chat/client/{cid}",
    "ce-signature": "sha256=" + hmac.new(key.encode(), cid.encode(), hashlib.sha256).hexdigest(),
    "ce-userId": "bench-user", "ce-connectionId": cid, "ce-hub": "chat", "ce-eventName": "message",
    "ce-connectionState": base64.b64encode(b'{"room":"lobby"}').decode(),
    "WebHook-Request-Origin": "127.0.0.1", "ce-time": "2024-05-01T10:00:00Z",
}
tag = uuid.uuid4().hex[:8]
errors = []
def run(t, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(n):
        h = dict(base, **{"ce-id": f"{tag}-{t}-{i}" if workload == "w2" else "w1-fixed-event"})
        c.request("POST", "/eventhandler", body=text.encode(), headers=h)
        r = c.getresponse()
        body = r.read()
        ok = r.status == 200 and (body == text.encode() or workload != "w1") and (b'"stored"' in body or workload != "w2")
        if not ok:
            errors.append(f"{r.status} {body[:200]!r}")
            return
    c.close()
per = [count // conns + (1 if t < count % conns else 0) for t in range(conns)]
ts = [threading.Thread(target=run, args=(t, n)) for t, n in enumerate(per)]
for t in ts: t.start()
for t in ts: t.join()
if errors:
    sys.exit(f"client: {errors[0]}")
PY
}

# measure NAME WORKLOAD ENV... -- ARGV...: prints "NAME instructions/request".
measure() {
  local name=$1 workload=$2; shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local port pid total
  port=$(free_port)
  case $COUNTER in
    perf)
      env "${envs[@]}" PORT="$port" HUBHOOK_BIND=127.0.0.1 RUST_LOG=warn "$@" >"$RUN/$name.log" 2>&1 &
      pid=$!; pids+=("$pid")
      wait_port "$port" "$pid"
      client "$workload" "$port" "$W"
      perf stat -x, -e instructions:u -p "$pid" -o "$RUN/$name.perf" &
      local perf_pid=$!
      sleep 0.2
      client "$workload" "$port" "$N"
      kill -INT "$perf_pid"; wait "$perf_pid" || true
      total=$(grep 'instructions' "$RUN/$name.perf" | cut -d, -f1)
      ;;
    callgrind)
      env "${envs[@]}" PORT="$port" HUBHOOK_BIND=127.0.0.1 RUST_LOG=warn \
        valgrind --tool=callgrind --vgdb=yes --callgrind-out-file="$RUN/$name.cg.%p" "$@" >"$RUN/$name.log" 2>&1 &
      pid=$!; pids+=("$pid")
      wait_port "$port" "$pid"
      client "$workload" "$port" "$W"
      callgrind_control -z "$pid" >/dev/null 2>&1
      client "$workload" "$port" "$N"
      callgrind_control -d "$pid" >/dev/null 2>&1
      # The dump written by -d: events since the zeroing, all threads.
      local dump
      dump=$(ls -t "$RUN/$name".cg."$pid".* 2>/dev/null | head -1)
      total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
      ;;
  esac
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  python3 -c "print(f'{\"$name\":<14} {$total / $N:>12,.0f} instructions/request  ({$total:,} over $N requests)')"
}

for t in $TARGETS; do
  case $t in
    echo) measure echo w1 WEBPUBSUB_CONNECTION_STRING="Endpoint=http://127.0.0.1:1;AccessKey=$KEY;Version=1.0;" -- "$(bin echo)" ;;
    ceiling) measure ceiling w0 -- "$(bin ceiling)" ;;
    node-echo)
      [ -d bench/node_modules ] || (cd bench && npm ci --no-audit --no-fund >&2)
      measure node-echo w1 NODE_ENV=production -- node bench/node-echo.mjs ;;
    serve)
      sport=$(free_port)
      PORT=$sport HUBHOOK_BIND=127.0.0.1 "$(bin rest_standin)" >"$RUN/standin.log" 2>&1 &
      spid=$!; pids+=("$spid")
      wait_port "$sport" "$spid"
      measure serve w2 WEBPUBSUB_CONNECTION_STRING="Endpoint=http://127.0.0.1:$sport;AccessKey=$KEY;Version=1.0;" \
        HUBHOOK_STORE="sqlite://$PWD/$RUN/w2.db" -- "$(bin hubhook)" serve
      kill -KILL "$spid" 2>/dev/null || true
      wait "$spid" 2>/dev/null || true ;;
    *) echo "instructions.sh: unknown target $t" >&2; exit 1 ;;
  esac
done

#!/usr/bin/env bash
# Real clients, real numbers:
#
#   1. redis-benchmark against tgate + examples/miniredis.js AND against a real
#      redis-server, in the same run, with a table of both and their ratio;
#   2. wrk against tgate + examples/http.py: requests/s and latency.
#
# Usage: bash bench/real_clients.sh    (from anywhere; needs tgate, node,
# python3, redis-server, redis-cli, redis-benchmark and wrk)
#
# Everything is started here and stopped on exit, whatever happens. tgate runs
# with --port 0 and we read its port from the `tgate listening on HOST:PORT`
# line on its stderr. Knobs (environment): REQUESTS (200000), CLIENTS (50),
# PIPELINE (16), WRK_DURATION (10s), WRK_CONNECTIONS (50), WRK_THREADS (2),
# TGATE (the command that runs tgate; default `tgate`, else `python3 -m tgate`).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
PIPELINE=${PIPELINE:-16}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-2}
if [ -z "${TGATE:-}" ]; then
  if command -v tgate >/dev/null; then TGATE=tgate; else TGATE="python3 -m tgate"; export PYTHONPATH=src; fi
fi

for tool in node python3 redis-server redis-cli redis-benchmark wrk; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

WORK=$(mktemp -d)
PIDS=()
stop_started() {  # stop what we started, by pid: SIGTERM, then SIGKILL after 10 s
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${PIDS[@]}"; do
    # tgate stops its handler itself (SIGTERM: drain, close, stop the handler).
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() {
  stop_started
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run() {  # print a command line, then run it
  echo "+ $*" >&2
  "$@"
}

# start_tgate NAME HANDLER: starts tgate on a free port; sets PORT.
start_tgate() {
  local name=$1 handler=$2 log="$WORK/$1.log"
  echo "+ $TGATE --handler \"$handler\" --port 0" >&2
  # shellcheck disable=SC2086  # TGATE may be "python3 -m tgate"
  $TGATE --handler "$handler" --port 0 2>"$log" &
  PIDS+=($!)
  PORT=
  for _ in $(seq 100); do
    PORT=$(sed -n 's/^tgate listening on .*:\([0-9][0-9]*\)$/\1/p' "$log" | head -n1)
    [ -n "$PORT" ] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$PORT" ]; then
    echo "bench: tgate ($name) did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# redis_bench PORT OUTFILE: redis-benchmark's "-q" results, one "TEST rps" per line.
redis_bench() {
  run redis-benchmark -h 127.0.0.1 -p "$1" -t ping,set,get -P "$PIPELINE" -c "$CLIENTS" \
    -n "$REQUESTS" -q </dev/null | tr '\r' '\n' |
    sed -n 's/^ *\([A-Z_]*\): \([0-9.]*\) requests per second.*/\1 \2/p' >"$2"
  if [ ! -s "$2" ]; then
    echo "bench: redis-benchmark on port $1 reported nothing" >&2
    exit 1
  fi
}

echo "== machine"
echo "nproc:  $(nproc)"
echo "cpu:    $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "kernel: $(uname -sr)"
echo "tools:  node $(node --version), $(python3 --version), $(redis-server --version | cut -d' ' -f1-3)," \
  "$(redis-benchmark --version 2>/dev/null || true), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
echo "tgate:  $($TGATE --version 2>&1)"
echo

echo "== redis-benchmark: tgate + examples/miniredis.js vs redis-server"
start_tgate miniredis "node examples/miniredis.js"
TGATE_PORT=$PORT
REDIS_PORT=$(free_port)
echo "+ redis-server --port $REDIS_PORT --save '' --appendonly no" >&2
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --logfile "$WORK/redis.log" &
PIDS+=($!)
for _ in $(seq 100); do
  [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
redis_bench "$TGATE_PORT" "$WORK/tgate.txt"
redis_bench "$REDIS_PORT" "$WORK/redis.txt"
echo
printf '%-12s %18s %18s %8s\n' test "tgate+miniredis" "redis-server" ratio
printf '%-12s %18s %18s %8s\n' "" "(requests/s)" "(requests/s)" ""
awk 'NR == FNR { redis[$1] = $2; next }
     { printf "%-12s %18.0f %18.0f %7.1f%%\n", $1, $2, redis[$1], 100 * $2 / redis[$1] }' \
  "$WORK/redis.txt" "$WORK/tgate.txt"
echo "(ratio = tgate+miniredis / redis-server; $REQUESTS requests, $CLIENTS clients, pipeline $PIPELINE)"
echo

stop_started

echo "== wrk: tgate + examples/http.py"
start_tgate http "python3 examples/http.py"
run wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" --latency \
  "http://127.0.0.1:$PORT/" | tee "$WORK/wrk.txt"
echo
echo "requests/s: $(sed -n 's/^Requests\/sec: *//p' "$WORK/wrk.txt")"
echo "latency:    $(awk '$1 == "Latency" { print "avg " $2 ", stdev " $3 ", max " $4; exit }' "$WORK/wrk.txt")" \
  "(p50 $(awk '$1 == "50%" { print $2 }' "$WORK/wrk.txt")," \
  "p99 $(awk '$1 == "99%" { print $2 }' "$WORK/wrk.txt"))"
if grep -q -E 'Socket errors|Non-2xx' "$WORK/wrk.txt"; then
  echo "bench: wrk saw errors (above)" >&2
  exit 1
fi

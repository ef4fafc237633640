#!/usr/bin/env bash
# Starts N server processes on consecutive loopback ports: the shape bench/run.py measures.
#
#   export DATABASE_URL=postgresql://... REDIS_URL=redis://...   # required when N > 1
#   bench/serve.sh [N=4] [FIRST_PORT=8001]   # migrate once, start, print the exports, wait
#   bench/serve.sh stop                      # (from another shell) stop them; Ctrl-C does too
#
# Environment:
#   STELLO_BENCH_SERVER=daphne|uvicorn   the ASGI server (default daphne), started through
#       python -m stello_project.serve (the production command: the server's limits come from
#       the settings); uvicorn also gets --no-access-log --lifespan auto
#   STELLO_BENCH_SLOW_LLM=SECONDS        also start bench/slow_llm.py (answers after SECONDS) on
#       127.0.0.1:${STELLO_BENCH_SLOW_LLM_PORT:-8400} and point the servers at it
#       (STELLO_LLM_PROVIDER=openai, STELLO_LLM_BASE_URL, STELLO_LLM_API_KEY=x,
#       STELLO_LLM_MAX_RETRIES=0, STELLO_LLM_TIMEOUT_SECONDS=30,
#       STELLO_CONSOLIDATE_EVERY_N_TURNS=0); for bench/run.py --phases inflight
#
# N=1 without DATABASE_URL / REDIS_URL runs the embedded default (SQLite, in-memory channel
# layer); several processes need both. Processes bind 127.0.0.1 only. Their pids go to
# .stello/bench-serve.pids and their logs to .stello/bench-serve-<port>.log (slow LLM:
# .stello/bench-slow-llm.log). Starting again after a crash or kill -9 is fine: pids that are
# no longer ours are dropped; live ones make it refuse until '$0 stop'.
set -euo pipefail
cd "$(dirname "$0")/.."

PIDFILE=.stello/bench-serve.pids
PY=.venv/bin/python
SERVER=${STELLO_BENCH_SERVER:-daphne}
SLOW_LLM=${STELLO_BENCH_SLOW_LLM:-}
SLOW_LLM_PORT=${STELLO_BENCH_SLOW_LLM_PORT:-8400}

is_ours() {  # a live process of this script (guards against reused pids)
  [ -r "/proc/$1/cmdline" ] &&
    tr '\0' ' ' <"/proc/$1/cmdline" |
    grep -Eq '(daphne|uvicorn).*stello_project\.asgi:application|stello_project\.serve|bench/slow_llm\.py'
}

terminate() {  # SIGTERM the given pids (if still ours), up to 10 s to exit, then SIGKILL
  local pids=() pid
  for pid in "$@"; do
    if [ -n "$pid" ] && is_ours "$pid"; then
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for _ in $(seq 50); do
    local alive=0
    for pid in ${pids[@]+"${pids[@]}"}; do is_ours "$pid" && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    if is_ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
  done
}

stop() {  # '$0 stop': every process in the pid file
  [ -f "$PIDFILE" ] || return 0
  local pids=()
  mapfile -t pids <"$PIDFILE"
  terminate ${pids[@]+"${pids[@]}"}
  rm -f "$PIDFILE"
  echo "stopped" >&2
}

started=()
stop_own() {  # on exit of this script: only the processes it started (a later run's survive)
  [ ${#started[@]} -gt 0 ] || return 0
  terminate "${started[@]}"
  if [ -f "$PIDFILE" ] && [ "$(head -n1 "$PIDFILE")" = "${started[0]}" ]; then
    rm -f "$PIDFILE"
  fi
  echo "stopped" >&2
}

if [ "${1:-}" = "stop" ]; then
  stop
  exit 0
fi

N=${1:-4}
FIRST_PORT=${2:-8001}
case "$N$FIRST_PORT$SLOW_LLM_PORT" in *[!0-9]*) echo "usage: $0 [N] [FIRST_PORT] | stop" >&2; exit 2 ;; esac
[ "$N" -ge 1 ] || { echo "N must be at least 1" >&2; exit 2; }
case "$SERVER" in
  daphne) ;;
  uvicorn) [ -x .venv/bin/uvicorn ] || { echo "uvicorn is not installed in .venv (pip install 'uvicorn[standard]')" >&2; exit 1; } ;;
  *) echo "STELLO_BENCH_SERVER must be daphne or uvicorn, not '$SERVER'" >&2; exit 2 ;;
esac
if [ -n "$SLOW_LLM" ] && ! [[ $SLOW_LLM =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "STELLO_BENCH_SLOW_LLM must be the delay in seconds, not '$SLOW_LLM'" >&2
  exit 2
fi
if [ "$N" -gt 1 ]; then
  : "${DATABASE_URL:?set DATABASE_URL (PostgreSQL) for several processes}"
  : "${REDIS_URL:?set REDIS_URL (Redis) for several processes}"
elif [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  echo "# one process; DATABASE_URL=${DATABASE_URL:-(unset: SQLite)} REDIS_URL=${REDIS_URL:-(unset: in-memory)}" >&2
fi

if [ -f "$PIDFILE" ]; then  # idempotent: a stale file (crash, kill -9) is dropped
  while read -r pid; do
    if [ -n "$pid" ] && is_ours "$pid"; then
      echo "bench servers are running (pid $pid in $PIDFILE): run '$0 stop' first" >&2
      exit 1
    fi
  done <"$PIDFILE"
  rm -f "$PIDFILE"
fi
ports=()
for ((i = 0; i < N; i++)); do ports+=($((FIRST_PORT + i))); done
[ -n "$SLOW_LLM" ] && ports+=("$SLOW_LLM_PORT")
for port in "${ports[@]}"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    echo "something already answers on 127.0.0.1:$port; choose other ports" >&2
    exit 1
  fi
done

mkdir -p .stello
# Without DEBUG the server refuses the embedded development key: a throwaway one for the bench.
export SECRET_KEY="${SECRET_KEY:-stello-bench-$(date +%s%N)}"
"$PY" manage.py migrate --noinput >/dev/null

trap stop_own EXIT
trap 'exit 130' INT TERM
: >"$PIDFILE"

if [ -n "$SLOW_LLM" ]; then
  "$PY" bench/slow_llm.py --port "$SLOW_LLM_PORT" --delay "$SLOW_LLM" \
    >.stello/bench-slow-llm.log 2>&1 &
  started+=("$!")
  echo "$!" >>"$PIDFILE"
  for _ in $(seq 40); do
    curl -fsS "http://127.0.0.1:$SLOW_LLM_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.25
  done
  curl -fsS "http://127.0.0.1:$SLOW_LLM_PORT/healthz" >/dev/null ||
    { echo "the slow LLM did not start (see .stello/bench-slow-llm.log)" >&2; exit 1; }
  export STELLO_LLM_PROVIDER=openai STELLO_LLM_BASE_URL="http://127.0.0.1:$SLOW_LLM_PORT/v1"
  export STELLO_LLM_API_KEY=x STELLO_LLM_MAX_RETRIES=0 STELLO_LLM_TIMEOUT_SECONDS=30
  export STELLO_CONSOLIDATE_EVERY_N_TURNS=0
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # thousands of sockets for the inflight phase
urls=()
pids=()
for ((i = 0; i < N; i++)); do
  port=$((FIRST_PORT + i))
  if [ "$SERVER" = uvicorn ]; then
    "$PY" -m stello_project.serve uvicorn --host 127.0.0.1 --port "$port" \
      --no-access-log --lifespan auto >".stello/bench-serve-$port.log" 2>&1 &
  else
    "$PY" -m stello_project.serve daphne -b 127.0.0.1 -p "$port" \
      >".stello/bench-serve-$port.log" 2>&1 &
  fi
  pids+=("$!")
  started+=("$!")
  urls+=("http://127.0.0.1:$port")
  echo "$!" >>"$PIDFILE"
done

for url in "${urls[@]}"; do  # wait until every process answers (at most ~30 s each)
  for _ in $(seq 60); do
    curl -fsS "$url/healthz" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -fsS "$url/healthz" >/dev/null || { echo "$url did not start (see .stello/)" >&2; exit 1; }
done

join() { local IFS=,; echo "$*"; }
echo "# $N $SERVER process(es) up${SLOW_LLM:+, slow LLM (${SLOW_LLM} s) on 127.0.0.1:$SLOW_LLM_PORT}; in another shell:"
echo "export STELLO_BASE_URLS=$(join "${urls[@]}")"
echo "export STELLO_SERVER_PIDS=$(join "${pids[@]}")"
[ -n "$SLOW_LLM" ] && echo "export STELLO_SLOW_LLM_URL=http://127.0.0.1:$SLOW_LLM_PORT/v1"
echo "# Ctrl-C or '$0 stop' stops them."
wait

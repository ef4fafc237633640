#!/usr/bin/env bash
# Starts N daphne processes on consecutive loopback ports: the production shape for bench/run.py.
#
#   export DATABASE_URL=postgresql://... REDIS_URL=redis://...
#   bench/serve.sh [N=4] [FIRST_PORT=8001]   # migrate once, start, print the exports, wait
#   bench/serve.sh stop                      # (from another shell) stop them; Ctrl-C does too
#
# Processes bind 127.0.0.1 only. Their pids go to .stello/bench-serve.pids and their logs to
# .stello/bench-serve-<port>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

PIDFILE=.stello/bench-serve.pids
PY=.venv/bin/python
DAPHNE=.venv/bin/daphne

is_ours() {  # a live daphne process of this script (guards against reused pids)
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'daphne.*stello_project'
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  while read -r pid; do
    if is_ours "$pid"; then kill "$pid" 2>/dev/null || true; fi
  done <"$PIDFILE"
  rm -f "$PIDFILE"
  echo "stopped" >&2
}

if [ "${1:-}" = "stop" ]; then
  stop
  exit 0
fi

N=${1:-4}
FIRST_PORT=${2:-8001}
: "${DATABASE_URL:?set DATABASE_URL (PostgreSQL) for the production shape}"
: "${REDIS_URL:?set REDIS_URL (Redis) for the production shape}"
case "$N$FIRST_PORT" in *[!0-9]*) echo "usage: $0 [N] [FIRST_PORT] | stop" >&2; exit 2 ;; esac
if [ -f "$PIDFILE" ]; then
  echo "$PIDFILE exists: run '$0 stop' first" >&2
  exit 1
fi

mkdir -p .stello
"$PY" manage.py migrate --noinput >/dev/null

trap stop EXIT
trap 'exit 130' INT TERM
urls=()
pids=()
for ((i = 0; i < N; i++)); do
  port=$((FIRST_PORT + i))
  "$DAPHNE" -b 127.0.0.1 -p "$port" stello_project.asgi:application \
    >".stello/bench-serve-$port.log" 2>&1 &
  pids+=("$!")
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
echo "# $N daphne processes up; in another shell:"
echo "export STELLO_BASE_URLS=$(join "${urls[@]}")"
echo "export STELLO_SERVER_PIDS=$(join "${pids[@]}")"
echo "# Ctrl-C or '$0 stop' stops them."
wait

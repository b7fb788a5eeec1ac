#!/usr/bin/env bash
# `make serve`: a local Prefect server (SQLite) on 127.0.0.1:4200, a process worker for the
# heteroscale-process pool, and one scheduled scale_cluster deployment per cluster config.
# Runs in the foreground; Ctrl-C stops the worker and the server it started (only those).
#
# Environment (all optional):
#   PREFECT_HOME          where the server keeps its SQLite database (default .heteroscale/prefect)
#   HETEROSCALE_PORT      UI/API port (default 4200)
#   PREFECT_API_DATABASE_CONNECTION_URL  postgresql+asyncpg://... to run the server on PostgreSQL
#   HETEROSCALE_DATABASE_URL             the store's URL (default SQLite in HETEROSCALE_DATA_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
PREFECT="$ROOT/.venv/bin/prefect"
PORT="${HETEROSCALE_PORT:-4200}"
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.heteroscale/prefect}"
export HETEROSCALE_DATA_DIR="${HETEROSCALE_DATA_DIR:-$ROOT/.heteroscale}"
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_UI_API_URL="$PREFECT_API_URL"
# The worker picks up scheduled runs quickly (the default poll is 15 s for a 60 s schedule).
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-5}"
mkdir -p "$PREFECT_HOME" "$HETEROSCALE_DATA_DIR"
LOG="$HETEROSCALE_DATA_DIR/serve"
mkdir -p "$LOG"

# curl may be absent on a fresh machine; the venv's Python is not.
healthy() { "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
  "http://127.0.0.1:${PORT}/api/health" >/dev/null 2>&1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if healthy; then
  echo "a Prefect server already answers on 127.0.0.1:${PORT}; using it"
else
  echo "starting Prefect server on 127.0.0.1:${PORT} (log: $LOG/server.log)"
  "$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$LOG/server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 180); do
    healthy && break
    kill -0 "${pids[0]}" 2>/dev/null || { echo "server exited; see $LOG/server.log" >&2; tail -20 "$LOG/server.log" >&2; exit 1; }
    sleep 0.5
  done
fi

echo "registering deployments (one scale_cluster per deployments/clusters/*.yaml)"
"$PY" deployments/deploy.py

echo "starting worker for pool heteroscale-process (log: $LOG/worker.log)"
"$PREFECT" worker start --pool heteroscale-process --type process >"$LOG/worker.log" 2>&1 &
pids+=($!)

echo
echo "Prefect UI: http://127.0.0.1:${PORT}"
echo "  deployments: http://127.0.0.1:${PORT}/deployments   runs: http://127.0.0.1:${PORT}/runs"
echo "Ctrl-C to stop."
wait -n "${pids[@]}"

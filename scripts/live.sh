#!/usr/bin/env bash
# `task live`: the development loop.
#   - bacon rebuilds and restarts the server on Rust, template and migration changes;
#   - Tailwind and esbuild rebuild static/app.css and static/app.js on change;
#   - DEV_RELOAD=true makes open pages reload when the server restarts or an asset changes.
# The feed is the simulator (works offline); LIVE_FEED=coinbase uses Coinbase instead.
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_PORT=${SIM_PORT:-8765}
SIM_PRODUCTS=${SIM_PRODUCTS:-20}
pids=()
bacon_pid=""
cleanup() {
  # Nothing interrupts the cleanup (a second Ctrl-C would orphan what is left).
  trap '' INT TERM HUP
  # The server first, gracefully (bacon would SIGKILL it and orphan its children).
  [ -n "$bacon_pid" ] && scripts/live-stop.sh "$bacon_pid"
  # Each helper leads its own process group (setsid): the group goes, npm's children too.
  for pid in "${pids[@]}"; do
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 129' HUP

cargo build --locked
setsid npm run --silent watch:css &
pids+=($!)
setsid npm run --silent watch:js &
pids+=($!)

if [ "${LIVE_FEED:-sim}" != "coinbase" ]; then
  # A Coinbase key has no business with the simulator: set empty (unset, `.env` would fill
  # them in; empty counts as unset).
  export COINBASE_API_KEY="" COINBASE_PRIVATE_KEY=""
  setsid target/debug/spot-canvas sim --listen "127.0.0.1:${SIM_PORT}" --products "$SIM_PRODUCTS" \
    --history-minutes 120 &
  pids+=($!)
  ready=false
  for _ in $(seq 1 600); do
    if curl -fsS "http://127.0.0.1:${SIM_PORT}/api/v3/brokerage/time" >/dev/null 2>&1; then
      ready=true
      break
    fi
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.2
  done
  if [ "$ready" != true ]; then
    echo "live: the simulator did not start on port ${SIM_PORT}" >&2
    exit 1
  fi
  export COINBASE_WS_URL="ws://127.0.0.1:${SIM_PORT}"
  export COINBASE_REST_URL="http://127.0.0.1:${SIM_PORT}/api/v3/brokerage"
fi

export DEV_RELOAD=true
setsid bacon --headless serve &
bacon_pid=$!
pids+=("$bacon_pid")
wait "$bacon_pid"

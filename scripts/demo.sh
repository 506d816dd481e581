#!/usr/bin/env bash
# `task demo`: the exchange simulator with 50 products, and the service pointed at it.
# Works without internet. Stops both on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/spot-canvas}
SIM_PORT=${SIM_PORT:-8765}
SIM_PRODUCTS=${SIM_PRODUCTS:-50}

"$BIN" sim --listen "127.0.0.1:${SIM_PORT}" --products "$SIM_PRODUCTS" --history-minutes 120 &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true' EXIT INT TERM

# The simulator generates its trade history before it listens: wait for it (up to 2 min).
for _ in $(seq 1 600); do
  if curl -fsS "http://127.0.0.1:${SIM_PORT}/api/v3/brokerage/time" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$sim_pid" 2>/dev/null; then
    echo "demo: the simulator exited" >&2
    exit 1
  fi
  sleep 0.2
done

export COINBASE_WS_URL="ws://127.0.0.1:${SIM_PORT}"
export COINBASE_REST_URL="http://127.0.0.1:${SIM_PORT}/api/v3/brokerage"
"$BIN" serve

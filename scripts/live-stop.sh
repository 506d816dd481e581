#!/usr/bin/env bash
# Stops the server that a process of `task live` runs (bacon's job: `cargo run -- serve`), the
# way the service expects to be stopped: SIGTERM to the `spot-canvas` processes below <pid>,
# then a wait (up to 30 s) while they drain and stop their embedded PostgreSQL and
# nats-server. Only if they overrun is it SIGKILL. bacon runs it as its kill command with the
# job's pid; `scripts/live.sh` runs it with bacon's pid when it stops.
set -uo pipefail
root=${1:?usage: live-stop.sh <pid>}

below() {
  local child
  for child in $(pgrep -P "$1"); do
    echo "$child"
    below "$child"
  done
}

all=("$root" $(below "$root"))
servers=()
for pid in "${all[@]}"; do
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "spot-canvas" ]; then
    servers+=("$pid")
  fi
done
if [ "${#servers[@]}" -gt 0 ]; then
  kill -TERM "${servers[@]}" 2>/dev/null
  for _ in $(seq 1 300); do
    alive=0
    for pid in "${servers[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
fi
# The job itself (cargo run) ends with its child. Anything left, a server that overran its
# stop included, is killed (with what it started: they were listed before the stop).
kill -KILL "${all[@]}" 2>/dev/null
exit 0

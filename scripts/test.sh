#!/usr/bin/env bash
# The whole test suite, as `task test` runs it: every target of the workspace built once, then
# the slow scenarios (the `slow` test binary, tests/slow/: they mostly wait for the clock: a
# real 5-minute boundary, backfill windows due after their minute, the feed's silence timeout)
# run beside all the others, so that the suite takes the longer of the two groups rather than
# their sum. Either group failing fails the run. The slow group's output goes to a temporary
# file (not under target/, which is not there when CARGO_TARGET_DIR points elsewhere) and is
# printed when it ends; the file is removed on the way out.
set -euo pipefail
cd "$(dirname "$0")/.."

# The test binary of the slow scenarios (tests/slow/main.rs; its modules are crosscheck,
# reconcile and faults).
SLOW=slow

cargo test --locked --workspace --all-targets --no-run

# Every other test binary: tests/<name>.rs and tests/<name>/main.rs (tests/suite, most of them).
rest=(--workspace --lib --bins --benches)
for file in tests/*.rs tests/*/main.rs; do
  name=$(basename "$file" .rs)
  if [[ $name == main ]]; then
    name=$(basename "$(dirname "$file")")
  fi
  if [[ $name != "$SLOW" ]]; then
    rest+=(--test "$name")
  fi
done
if [[ ! -f "tests/$SLOW/main.rs" ]]; then
  echo "scripts/test.sh: tests/$SLOW/main.rs is gone; update SLOW" >&2
  exit 2
fi
slow=(--test "$SLOW")

# Each group runs in a session of its own, so that it can be stopped whole: cargo, the test
# binaries and the servers they started (which sit in process groups of their own, but stay in
# the session). Stopped on any way out of this script; on a normal end nothing is left.
sessions=()
stop_all() {
  local left=0
  for sid in "${sessions[@]}"; do
    if pkill -TERM -s "$sid" 2>/dev/null; then left=1; fi
  done
  if [[ $left -eq 1 ]]; then
    echo "scripts/test.sh: stopping what the tests left running" >&2
    sleep 2
    for sid in "${sessions[@]}"; do
      pkill -KILL -s "$sid" 2>/dev/null || true
    done
  fi
}

slow_log=$(mktemp "${TMPDIR:-/tmp}/spot-canvas-slow-tests.XXXXXX.log")
trap 'trap - EXIT; stop_all; rm -f "$slow_log"; exit 130' INT TERM HUP
trap 'stop_all; rm -f "$slow_log"' EXIT

setsid cargo test --locked --no-fail-fast "${slow[@]}" >"$slow_log" 2>&1 &
slow_pid=$!
sessions+=("$slow_pid")
setsid cargo test --locked --no-fail-fast "${rest[@]}" &
rest_pid=$!
sessions+=("$rest_pid")

# `wait` returns early when a trapped signal arrives, so an interrupt is handled at once.
rest_status=0
wait "$rest_pid" || rest_status=$?
slow_status=0
wait "$slow_pid" || slow_status=$?
echo "──── slow scenarios (tests/$SLOW), from $slow_log ────"
cat "$slow_log"
if [[ $rest_status -ne 0 || $slow_status -ne 0 ]]; then
  echo "scripts/test.sh: failed (the others: exit $rest_status, the slow scenarios: exit $slow_status)" >&2
  exit 1
fi

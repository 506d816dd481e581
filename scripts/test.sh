#!/usr/bin/env bash
# The whole test suite, as `task test` runs it: every target built once, then the slow
# scenario files (they mostly wait for the clock: a real 5-minute boundary, backfill windows
# due after their minute, the feed's silence timeout) run beside all the others, so that the
# suite takes the longer of the two groups rather than their sum. Each group's output is
# kept; the slow group's is printed when it ends. Either group failing fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

SLOW=(crosscheck reconcile faults)

cargo test --locked --all-targets --no-run

rest=()
for file in tests/*.rs; do
  name=$(basename "$file" .rs)
  if [[ " ${SLOW[*]} " != *" $name "* ]]; then
    rest+=(--test "$name")
  fi
done
slow=()
for name in "${SLOW[@]}"; do
  [[ -f "tests/$name.rs" ]] || { echo "scripts/test.sh: tests/$name.rs is gone; update SLOW" >&2; exit 2; }
  slow+=(--test "$name")
done

slow_log=$(mktemp -t spot-canvas-slow-tests.XXXXXX)
# Its own process group, so that it can be stopped whole (cargo, the test binaries and what
# they started) whatever way this script ends.
setsid cargo test --locked "${slow[@]}" >"$slow_log" 2>&1 &
slow_pid=$!
trap 'kill -- "-$slow_pid" 2>/dev/null || true; rm -f "$slow_log"' EXIT

status=0
cargo test --locked --lib --bins --benches "${rest[@]}" || status=$?

slow_status=0
wait "$slow_pid" || slow_status=$?
echo "──── slow scenarios (${SLOW[*]}) ────"
cat "$slow_log"
if [[ $status -ne 0 || $slow_status -ne 0 ]]; then
  echo "scripts/test.sh: failed (others: $status, slow scenarios: $slow_status)" >&2
  exit 1
fi

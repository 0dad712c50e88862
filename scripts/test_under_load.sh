#!/usr/bin/env bash
# `make test` N times in a row (default 3) beside a CPU hog on every core: the suite must hold on
# a busy machine (issue 18). Prints each run's time and result; exits non-zero on any failure.
# Usage: scripts/test_under_load.sh [runs]
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
hogs=()
for _ in $(seq "$(nproc)"); do
  python3 -c 'while True: pass' &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
echo "CPU hog: ${#hogs[@]} busy loops (pids ${hogs[*]})"
failed=0
for run in $(seq "$runs"); do
  start=$(date +%s)
  if make test > "/tmp/cddae-test-under-load-$run.log" 2>&1; then result=passed; else result=FAILED; failed=1; fi
  echo "run $run: $result in $(( $(date +%s) - start )) s ($(tail -1 "/tmp/cddae-test-under-load-$run.log"))"
done
exit $failed

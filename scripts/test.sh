#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Build hearth and run the whole test suite: every suite in a normal build, the
# unit, parity, fuzz-replay and integration suites again under AddressSanitizer+UBSan
# (the daemon itself sanitized), and the
# ring tests under ThreadSanitizer; then a clang build with -Werror and the
# libFuzzer targets, every suite. Ends with one line of totals:
#   N passed, N failed, N skipped
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh clang libclang-rt-dev || exit 1 # clang: the fourth build
jobs=$(nproc)
passed=0 failed=0 skipped=0 status=0

# run_suite DIR SETUP_ARGS TEST_ARGS...
run_suite() {
	local dir=$1 setup=$2
	shift 2
	echo "== $dir: meson test $*"
	if [ ! -f "$dir/build.ninja" ]; then
		# shellcheck disable=SC2086
		meson setup "$dir" $setup >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; status=1; failed=$((failed + 1)); return; }
	fi
	if ! ninja -C "$dir" -j "$jobs" >"$dir.build.log" 2>&1; then
		tail -50 "$dir.build.log"; status=1; failed=$((failed + 1)); return
	fi
	meson test -C "$dir" --print-errorlogs --num-processes "$jobs" "$@" 2>&1 | tee "$dir.test.log"
	local ok fail skip
	ok=$(sed -n 's/^Ok: *\([0-9]*\)/\1/p' "$dir.test.log" | tail -1)
	fail=$(awk '/^(Fail|Unexpected Pass|Timeout):/ {s += $2} END {print s + 0}' "$dir.test.log")
	skip=$(sed -n 's/^Skipped: *\([0-9]*\)/\1/p' "$dir.test.log" | tail -1)
	passed=$((passed + ${ok:-0})); failed=$((failed + fail)); skipped=$((skipped + ${skip:-0}))
	[ "$fail" -eq 0 ] && [ -n "$ok" ] || status=1
}

run_suite build-test ""
run_suite build-asan "-Db_sanitize=address,undefined -Dcuda=disabled" --suite unit --suite parity --suite fuzz --suite integration
run_suite build-tsan "-Db_sanitize=thread -Dcuda=disabled" --suite stress --suite shm
CC=clang run_suite build-clang "-Dcuda=disabled -Dfuzzing=true -Dwerror=true"

echo "$passed passed, $failed failed, $skipped skipped"
exit $status

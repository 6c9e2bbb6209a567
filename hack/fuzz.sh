#!/usr/bin/env bash
# Fuzzes each target (./pkg:FuzzName) for FUZZTIME, FUZZJOBS at a time, each
# on one core (-parallel 1), and prints one block per target:
#   == FuzzName (./pkg, 5m)
#   <the fuzzer's last progress line and its verdict>
# Exits non-zero if any target fails (a crasher, or a build error).
set -uo pipefail
fuzztime=${FUZZTIME:-30s}
jobs=${FUZZJOBS:-2}

one() {
	local target=$1 pkg fn out rc
	pkg=${target%%:*}
	fn=${target##*:}
	out=$(go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$fuzztime" -parallel 1 "$pkg" 2>&1)
	rc=$?
	if ((rc == 0)); then
		out=$(grep -E 'elapsed: [0-9hms]+, execs|^ok' <<<"$out" | tail -2)
	else
		out=$(tail -30 <<<"$out")
	fi
	# One write per block, so that blocks of parallel targets do not mix:
	# bash's printf writes line by line, cat the whole block at once.
	cat <<<"$(printf '== %s (%s, %s)\n%s' "$fn" "$pkg" "$fuzztime" "$out")"
	return "$rc"
}
export -f one
export fuzztime

printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'one "$1"' _ {}

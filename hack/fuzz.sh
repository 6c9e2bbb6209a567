#!/usr/bin/env bash
# Fuzzes each target (./pkg:FuzzName) for FUZZTIME, FUZZJOBS at a time, each
# on one core (-parallel 1), and prints one block per target:
#   == FuzzName (./pkg, 5m)
#   <the fuzzer's last progress line and its verdict>
# Exits non-zero if any target fails (a crasher, or a build error).
set -uo pipefail
fuzztime=${FUZZTIME:-30s}
jobs=${FUZZJOBS:-2}

# deadline_race tells whether a failed run's only failure is Go's own
# -fuzztime deadline (go.dev/issue/75804, fixed in Go 1.27): when the time
# runs out, the coordinator can report its deadline as the target's failure.
# Such a run names no input and writes none; a crasher always writes one.
deadline_race() {
	local out=$1 messages
	grep -q 'Failing input written to' <<<"$out" && return 1
	messages=$(sed -n '/^--- FAIL: /,/^FAIL$/p' <<<"$out" | sed '1d;$d' | sed 's/^[[:space:]]*//')
	[[ $messages == "context deadline exceeded" ]]
}

one() {
	local target=$1 pkg fn out rc note=""
	pkg=${target%%:*}
	fn=${target##*:}
	out=$(go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$fuzztime" -parallel 1 "$pkg" 2>&1)
	rc=$?
	if ((rc != 0)) && deadline_race "$out"; then
		rc=0
		note=$'\n'"ran its full time; ended by Go's fuzztime deadline race (go.dev/issue/75804), no input written"
	fi
	if ((rc == 0)); then
		out=$(grep -E 'elapsed: [0-9hms]+, execs|^ok' <<<"$out" | tail -2)$note
	else
		out=$(tail -30 <<<"$out")
	fi
	# One write per block, so that blocks of parallel targets do not mix:
	# bash's printf writes line by line, cat the whole block at once.
	cat <<<"$(printf '== %s (%s, %s)\n%s' "$fn" "$pkg" "$fuzztime" "$out")"
	return "$rc"
}
export -f one deadline_race
export fuzztime

printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'one "$1"' _ {}

#!/bin/sh
# SPDX-License-Identifier: MIT
# The manual pages must not drift from the programs: every key that
# `hearthd --help` lists appears as a flag in hearthd.8, and every command and
# long option that `hearthctl --help` lists appears in hearthctl.1.
#   check-man.sh HEARTHD HEARTHCTL HEARTHD_8 HEARTHCTL_1
set -u
[ $# -eq 4 ] || { echo "usage: $0 HEARTHD HEARTHCTL HEARTHD_8 HEARTHCTL_1" >&2; exit 2; }
hearthd=$1 hearthctl=$2 man8=$3 man1=$4
fail=0
# roff writes '-' as '\-': compare against the page with those unescaped.
page8=$(sed 's/\\-/-/g' "$man8") || exit 1
page1=$(sed 's/\\-/-/g' "$man1") || exit 1

keys=$("$hearthd" --help 2>&1 | sed -n 's/^  \(--[a-z0-9-]*\) .*/\1/p')
[ -n "$keys" ] || { echo "no keys in 'hearthd --help'" >&2; exit 1; }
n=0
for k in $keys; do
	n=$((n + 1))
	printf '%s\n' "$page8" | grep -q -e "^\.BI\? $k\b" -e "^\.B $k\b" ||
		{ echo "hearthd.8 does not document $k"; fail=1; }
done
echo "hearthd.8: $n flags checked"

usage=$("$hearthctl" --help 2>&1)
cmds=$(printf '%s\n' "$usage" | sed -n '/^Commands:/,/^$/p' | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p')
[ -n "$cmds" ] || { echo "no commands in 'hearthctl --help'" >&2; exit 1; }
n=0
for c in $cmds; do
	n=$((n + 1))
	printf '%s\n' "$page1" | grep -q -e "^\.BI\? $c\b" ||
		{ echo "hearthctl.1 does not document the command $c"; fail=1; }
done
opts=$(printf '%s\n' "$usage" | sed -n '/^Options:/,$p' | grep -o -e '--[a-z][a-z-]*' | sort -u)
for o in $opts; do
	n=$((n + 1))
	printf '%s\n' "$page1" | grep -q -e "$o" ||
		{ echo "hearthctl.1 does not document the option $o"; fail=1; }
done
echo "hearthctl.1: $n commands and options checked"
exit $fail

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: build hearth, start hearthd on the embedded tiny model (CPU
# backend when there is no GPU), run the demo client that streams synthetic
# events into a few named sessions and prints scores and a latency summary,
# then stop the daemon (SIGTERM: it drains and exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null

dir=$(mktemp -d /tmp/hearth-demo.XXXXXX)
sock=$dir/hearthd.sock
build/daemon/hearthd --socket-path "$sock" "$@" 2>"$dir/hearthd.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
	[ -S "$sock" ] && break
	kill -0 $pid 2>/dev/null || { cat "$dir/hearthd.log"; exit 1; }
	sleep 0.1
done
sed 's/^/  [hearthd] /' "$dir/hearthd.log"
build/tools/hearth-demo --socket "$sock"
echo
build/clients/hearthctl --socket "$sock" sessions
kill -TERM $pid
wait $pid
status=$?
trap 'rm -rf "$dir"' EXIT
echo "hearthd stopped (exit status $status)"
exit $status

#!/bin/sh
# SPDX-License-Identifier: MIT
# systemd-analyze verify on the installed units, with ExecStart pointing at the
# hearthd built here. Exits 77 when systemd-analyze is missing.
# usage: verify-units.sh BUILT_SERVICE SOCKET_UNIT HEARTHD
set -eu
command -v systemd-analyze >/dev/null 2>&1 || { echo "skip: systemd-analyze not installed"; exit 77; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
sed "s|^ExecStart=[^ ]*|ExecStart=$3|" "$1" >"$d/hearthd.service"
cp "$2" "$d/hearthd.socket"
grep -q '^Type=notify$' "$d/hearthd.service"
grep -q '^WatchdogSec=' "$d/hearthd.service"
grep -q '^ListenSequentialPacket=/run/hearth/hearthd.sock$' "$d/hearthd.socket"
systemd-analyze verify --man=no "$d/hearthd.service" "$d/hearthd.socket"
echo "units verified"

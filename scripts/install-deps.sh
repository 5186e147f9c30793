#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install the Debian packages hearth builds and tests with (run as root).
# Idempotent: packages already installed are not fetched again.
set -euo pipefail

pkgs=(gcc g++ pkg-config meson ninja-build
      libopenblas-dev libcjson-dev libxxhash-dev liburing-dev
      libprotobuf-c-dev protobuf-c-compiler libinih-dev libmicrohttpd-dev systemd)
[ "$#" -gt 0 ] && pkgs+=("$@")

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: need root to install: ${missing[*]}" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

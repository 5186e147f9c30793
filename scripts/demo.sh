#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: build hearth and run the embedded tiny model on the CPU (or the
# GPU when the CUDA backend is built and a device is present).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
build/tools/hearth-run --tokens "1 15 29 42 77 3 250 18 9 64 120 33" --generate 24 "$@"

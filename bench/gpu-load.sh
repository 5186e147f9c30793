#!/bin/sh
# SPDX-License-Identifier: MIT
# Issue 6's figures on a GPU machine, from binaries packed by
# `bench/gpu-e2e.sh --pack build` (build-e2e/, carried):
#   OUT=/dir bench/gpu-load.sh [1b] [8b]
# For each shape: a random-weight model made with transformers, then
# hearth-bench-load (open loop, 1024-token contexts, 16-token events + SCORE)
# at the rate (1B: 100 events/s per session, 8B: 10), and
# hearth-bench-engine's batch-64 against batch-1 decode step at context 512.
# The model is written to /var/tmp/hearth-model-SHAPE (reused when there,
# kept with KEEP_MODEL=1). BATCH_WAIT_US=N gives the daemon --batch-wait-us=N.
set -u
R=${R:-build-e2e}
OUT=${OUT:-/tmp/hearth-load}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$R/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ $# -eq 0 ] && set -- 1b
for SHAPE in "$@"; do
	case $SHAPE in
	1b) RATE=100; LOADS=1,8,64,256 ;;
	8b) RATE=10; LOADS=1,8,64 ;;
	*) echo "unknown shape $SHAPE"; exit 2 ;;
	esac
	M=/var/tmp/hearth-model-$SHAPE
	t0=$(date +%s)
	# A model left by an earlier step of the same run (KEEP_MODEL=1) is reused.
	if [ ! -f "$M/config.json" ]; then
		python3 bench/make_random_model.py --shape "$SHAPE" --out "$M" >"$OUT/make-$SHAPE.log" 2>&1 ||
			{ tail -5 "$OUT/make-$SHAPE.log"; exit 1; }
		echo "== model $SHAPE written in $(($(date +%s) - t0)) s"
	fi
	"$R/hearth-bench-load" --hearthd "$R/hearthd" --model "$M" --backend cuda \
		--rate $RATE --loads $LOADS --duration 5 --context 1024 --window 256 --procs 8 \
		--daemon-arg=--max-step-tokens=2048 --daemon-arg=--max-batch=256 \
		--daemon-arg=--batch-wait-us="${BATCH_WAIT_US:-0}" >"$OUT/load-$SHAPE.log" 2>&1
	echo "== hearth-bench-load $SHAPE rc=$?"; cat "$OUT/load-$SHAPE.log"
	"$R/hearth-bench-engine" --backend cuda --shape "$SHAPE" --ctx 512 --batches 1,64 --iters 50 \
		>"$OUT/engine512-$SHAPE.log" 2>&1
	echo "== hearth-bench-engine ctx 512 $SHAPE rc=$?"; tail -12 "$OUT/engine512-$SHAPE.log"
	[ -n "${KEEP_MODEL:-}" ] || rm -rf "$M"
done

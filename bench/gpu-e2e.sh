#!/bin/sh
# SPDX-License-Identifier: MIT
# End-to-end figures on a GPU machine, from binaries packed here:
#   bench/gpu-e2e.sh --pack build          # here: fills build-e2e/ (carry it), with the
#                                          # gpu tests, and build-pack/e2e.tar.xz (carry that
#                                          # instead when build-e2e passes the carry limit,
#                                          # and run `tar xJf build-pack/e2e.tar.xz` first there)
#   OUT=/dir bench/gpu-e2e.sh [1b]         # there: logs and BENCH lines under $OUT
# Makes a random-weight model of a real shape with transformers, then runs
# hearth-bench-engine (the forward pass against its roofline, random weights
# built in memory), hearth-run (prefill and decode at context 2048 on the cuda
# backend), hearthd + hearth-bench-ipc (APPEND 32 + SCORE through the daemon),
# and hearth-bench-kv (L2 paging on this machine's disk).
set -u
R=${R:-build-e2e}
if [ "${1:-}" = "--pack" ]; then
	B=${2:-build}
	rm -rf "$R" && mkdir -p "$R/lib" || exit 1
	cp "$B/daemon/hearthd" "$B/tools/hearth-run" "$B/bench/hearth-bench-ipc" \
		"$B/bench/hearth-bench-kv" "$B/bench/hearth-bench-engine" "$B/bench/hearth-bench-load" \
		"$B/bench/hearth-bench-load-model" "$B/clients/hearthctl" "$R/" || exit 1
	# The gpu tests where the build has them (a cuda build).
	for t in test_cuda_ops test_cuda_engine test_cuda_attention test_cuda_skinny time_cuda_gemv; do
		[ -x "$B/tests/gpu/$t" ] && cp "$B/tests/gpu/$t" "$R/"
	done
	strip "$R"/hearth* "$R"/test_* "$R"/time_* 2>/dev/null
	cp -L "$B"/clients/libhearth.so.0 "$R/lib/"
	# Every shared library but the C runtime and CUDA's (the GPU machine has
	# those): openblas, protobuf-c, liburing, libmicrohttpd and its TLS chain...
	for b in "$R"/hearthd "$R"/hearth-bench-* "$R"/hearthctl; do
		ldd "$b"
	done |
		awk '/=> \// {print $3}' | sort -u |
		grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas[^/]*)\.so' |
		grep -v '/usr/local/cuda' |
		while read -r f; do cp -L "$f" "$R/lib/"; done
	du -sh "$R"
	# The run tool's carry limit (64 MiB with the tracked tree) is below an
	# uncompressed pack with the tests; the archive is about 10 MB.
	mkdir -p build-pack && tar -cf - "$R" | xz -T0 -6 >build-pack/e2e.tar.xz || exit 1
	du -sh build-pack/e2e.tar.xz
	exit 0
fi
SHAPE=${1:-1b}
OUT=${OUT:-/tmp/hearth-e2e}
M=/tmp/hearth-model-$SHAPE
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$R/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv >"$OUT/smi.txt" 2>&1
[ -n "${SKIP_ENGINE:-}" ] || "$R/hearth-bench-engine" --shape "$SHAPE" >"$OUT/engine-$SHAPE.log" 2>&1
echo "== hearth-bench-engine rc=$?"; sed -n '/figure (median)/,$p' "$OUT/engine-$SHAPE.log"
t0=$(date +%s)
python3 bench/make_random_model.py --shape "$SHAPE" --out "$M" >"$OUT/make-$SHAPE.log" 2>&1 ||
	{ tail -5 "$OUT/make-$SHAPE.log"; exit 1; }
echo "== model $SHAPE written in $(($(date +%s) - t0)) s"
prompt=$(python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(1000, 100000)) for _ in range(2048)))")
[ -n "${SKIP_RUN:-}" ] || "$R/hearth-run" --backend cuda --model "$M" --tokens "$prompt" --generate 64 >"$OUT/run-$SHAPE.log" 2>&1
echo "== hearth-run rc=$?"; cat "$OUT/run-$SHAPE.log"
S=/tmp/hearth-e2e.sock
"$R/hearthd" --backend cuda --model-path "$M" --kv-pages 4096 --socket-path "$S" \
	--l2-path /var/tmp/hearth-e2e-l2.kv --l2-mib 4096 2>"$OUT/hearthd-$SHAPE.log" &
pid=$!
for _ in $(seq 600); do [ -S "$S" ] && break; sleep 0.1; done
"$R/hearth-bench-ipc" --socket "$S" --context 2048 --iters 20000 --score-iters 300 --resume 10 >"$OUT/ipc-$SHAPE.log" 2>&1
echo "== hearth-bench-ipc rc=$?"; cat "$OUT/ipc-$SHAPE.log"
kill -TERM $pid; wait $pid; echo "== hearthd exit $?"; tail -3 "$OUT/hearthd-$SHAPE.log"
[ -n "${SKIP_KV:-}" ] || "$R/hearth-bench-kv" --dir /var/tmp --shape both >"$OUT/kv.log" 2>&1
echo "== hearth-bench-kv rc=$?"; tail -12 "$OUT/kv.log"

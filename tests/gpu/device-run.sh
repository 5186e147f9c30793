#!/bin/sh
# SPDX-License-Identifier: MIT
# Run the gpu suite on a GPU machine from prebuilt binaries (for a machine
# without the build's libraries: pack them with `device-run.sh --pack BUILD`).
#   tests/gpu/device-run.sh --pack build-cuda   # here: fills build-gpu-run/
#   OUT=/some/dir tests/gpu/device-run.sh       # there: logs under $OUT
# Run from the repository root (the fixtures are found relative to it).
set -u
R=${R:-build-gpu-run}
if [ "${1:-}" = "--pack" ]; then
	B=${2:-build-cuda}
	rm -rf "$R" && mkdir -p "$R/lib" || exit 1
	for t in test_cuda_ops test_cuda_attention test_cuda_engine test_cuda_skinny; do
		cp "$B/tests/gpu/$t" "$R/" || exit 1
	done
	# Libraries a bare CUDA image may lack (not libc, libstdc++ or CUDA's own).
	ldd "$R"/test_cuda_* | awk '/=>/ {print $3}' | sort -u |
		grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas[^/]*)\.so' |
		grep -v '/usr/local/cuda' |
		while read -r f; do cp -L "$f" "$R/lib/"; done
	du -sh "$R"
	exit 0
fi
OUT=${OUT:-/tmp/hearth-gpu}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$R/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
M=tests/fixtures/models
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv \
	>"$OUT/smi.txt" 2>&1
run() {
	name=$1
	shift
	start=$(date +%s)
	"$@" >"$OUT/$name.log" 2>&1
	rc=$?
	echo "== $name: rc=$rc ($(($(date +%s) - start)) s)"
	grep -E 'FAIL|fail|out of tolerance|ERROR|error|ok$|worst rel|agreement|follows|ms' \
		"$OUT/$name.log" | grep -v '^  .*worst=0\.[0-9]* of tol' | tail -n 25
}
# The wgmma SwiGLU kernel's checks first and bounded: a barrier mistake in a
# new kernel hangs rather than fails (stdbuf: a killed run keeps its lines).
run ops_swiglu_wg timeout 120 stdbuf -oL "$R/test_cuda_ops" swiglu_wg
run ops timeout 400 stdbuf -oL "$R/test_cuda_ops"
run attention timeout 400 stdbuf -oL "$R/test_cuda_attention"
run engine "$R/test_cuda_engine" $M/llama-tiny $M/qwen2-tiny $M/llama3-scaled $M/mistral-tiny
run skinny "$R/test_cuda_skinny"
run memcheck_ops timeout 300 compute-sanitizer --tool memcheck --leak-check no "$R/test_cuda_ops"
run memcheck_attn timeout 150 compute-sanitizer --tool memcheck "$R/test_cuda_attention" quick
run racecheck_attn timeout 120 compute-sanitizer --tool racecheck "$R/test_cuda_attention" quick

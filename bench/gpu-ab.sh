#!/bin/sh
# SPDX-License-Identifier: MIT
# The A/B runs of the changes of 2026-12-07 (the fused decode norm and rope, on by
# default since their first GPU run; batch_wait_us; the 8B cold start), in one
# call on a GPU machine, from binaries packed by `bench/gpu-e2e.sh --pack build`
# (carry build-pack; this unpacks it):
#   OUT=/dir [AB_STAGES="tests engine load model profile"] bench/gpu-ab.sh
# By priority (a call that runs out of time keeps what it printed):
# 1. test_cuda_ops (its fused-norm/rope tests call the ops directly), then
#    test_cuda_engine on the four fixtures with HEARTH_CUDA_NORM_FUSE=1 and
#    HEARTH_CUDA_ROPE_FUSE=1 (the fused decode path against the cpu);
# 2. (profile, asked for by name) hearth-bench-engine --profile, 1B and 8B at ctx 2048;
#    hearth-bench-engine decode at ctx 2048, 1B and 8B, fusion off and on;
# 3. hearth-bench-load on the 8B at 64 sessions with batch_wait_us 0, 300 and 1000
#    (the model made in the background meanwhile), then
# 4. hearth-bench-load-model on the 8B, page cache and disk (issue 7), then the
#    three loads again.
set -u
AB_STAGES=${AB_STAGES:-tests engine load model}
on() { case " $AB_STAGES " in *" $1 "*) return 0 ;; esac; return 1; }
T0=$(date +%s)
el() { echo "[$(($(date +%s) - T0)) s]"; }
OUT=${OUT:-/tmp/hearth-ab}
mkdir -p "$OUT"
rm -rf build-e2e && tar xJf build-pack/e2e.tar.xz || exit 1
export LD_LIBRARY_PATH="$PWD/build-e2e/lib:/usr/local/cuda/lib64"
R=build-e2e
F=tests/fixtures/models
M=/var/tmp/hearth-model-8b
nvidia-smi --query-gpu=name --format=csv,noheader
rm -f "$OUT/make.rc"
! on load && ! on model && echo 0 >"$OUT/make.rc"
[ -f "$OUT/make.rc" ] || [ -f "$M/config.json" ] && echo 0 >"$OUT/make.rc" ||
	(python3 bench/make_random_model.py --shape 8b --out "$M" >"$OUT/make-8b.log" 2>&1; echo $? >"$OUT/make.rc") &
t() {
	name=$1; shift
	timeout 150 "$@" >"$OUT/$name.log" 2>&1
	echo "== $name rc=$? $(el)"; grep -iE "out of tolerance|fail|mismatch" "$OUT/$name.log" | head -5
}
on tests && t ops $R/test_cuda_ops
on tests && for m in llama-tiny qwen2-tiny llama3-scaled mistral-tiny; do
	t "engine-$m" env HEARTH_CUDA_NORM_FUSE=1 HEARTH_CUDA_ROPE_FUSE=1 $R/test_cuda_engine "$F/$m"
done
on profile && for s in 1b 8b; do
	timeout 120 $R/hearth-bench-engine --backend cuda --shape $s --ctx 2048 --batches 64 --iters 5 \
		--profile >"$OUT/profile-$s.log" 2>&1
	echo "-- profile $s rc=$? $(el)"; sed -n '/^profile/,$p' "$OUT/profile-$s.log" | grep -v ^BENCH | cut -c1-120
done
on engine && for s in 1b 8b; do
	for f in 0 1; do
		timeout 120 env HEARTH_CUDA_NORM_FUSE=$f HEARTH_CUDA_ROPE_FUSE=$f $R/hearth-bench-engine \
			--backend cuda --shape $s --ctx 2048 --batches 1 --iters 100 >"$OUT/engine-$s-$f.log" 2>&1
		echo "-- engine $s fused=$f rc=$? $(el)"; grep ^BENCH "$OUT/engine-$s-$f.log" | cut -c1-400
	done
done
while [ ! -f "$OUT/make.rc" ]; do sleep 2; done
echo "== model 8b rc=$(cat "$OUT/make.rc") $(el)"
load8b() {
	for w in "$@"; do
		timeout 150 $R/hearth-bench-load --hearthd $R/hearthd --model "$M" --backend cuda --rate 10 \
			--loads 64 --duration 5 --context 1024 --window 256 --procs 8 \
			--daemon-arg=--max-step-tokens=2048 --daemon-arg=--max-batch=256 \
			--daemon-arg=--batch-wait-us=$w >"$OUT/load.tmp" 2>&1
		echo "-- load 8b batch_wait_us=$w rc=$? $(el)"; grep -E "^ +[0-9]+ " "$OUT/load.tmp" | cut -c1-200
		grep -o "\"burst_holds\":[0-9]*" "$OUT/load.tmp"
		grep ^BENCH "$OUT/load.tmp" >>"$OUT/load-bench.log"
	done
}
on load && load8b 0 300 1000
if on model; then
	timeout 200 $R/hearth-bench-load-model --backend cuda --reps 2 --drop-caches "$M" >"$OUT/load-model.log" 2>&1
	echo "-- load-model rc=$? $(el)"; grep -iE "median|raw|disk|cache|BENCH" "$OUT/load-model.log" | tail -12 | cut -c1-400
fi
on load && load8b 0 300 1000

#!/bin/sh
# SPDX-License-Identifier: MIT
# A/B runs on a GPU machine in one call, from binaries packed by
# `bench/gpu-e2e.sh --pack build` (carry build-pack; this unpacks it):
#   OUT=/dir [AB_STAGES="tests attn wg profile full engine ratio load model"] bench/gpu-ab.sh
# Stages, in this order (a call that runs out of time keeps what it printed):
#   tests   the gpu tests of AB_TESTS (default "ops attention skinny":
#           test_cuda_ops, ...), then test_cuda_engine on the four fixtures;
#   attn    test_cuda_attention time: every attention kernel and split on
#           the 1B and 8B decode, APPEND 32, mixed and prefill-2048 shapes;
#   wg      time_cuda_gemv all wg: gate/up + SwiGLU in the wgmma kernel
#           (HEARTH_CUDA_SWIGLU_WG) against cuBLASLt's pair and the pass, at
#           256-2048 rows, each output checked first;
#   profile hearth-bench-engine --profile (every op timed alone), 1B and 8B at
#           ctx 2048 (decode, APPEND 32, batch 64, the 2048-token prefill);
#   full    hearth-bench-engine with its defaults (every figure), 1B and 8B;
#   engine  hearth-bench-engine at ctx 2048, batch 1 (decode, APPEND 32 +
#           SCORE, prefill), 1B and 8B, once for each word of AB_ENVS: an
#           environment assignment (a cuda backend knob, docs/gpu.md; several
#           joined by commas) or "-" for none; default "- HEARTH_CUDA_PDL=0 -";
#   ratio   issue 6's batch-64 / batch-1 decode step at ctx 512, 1B and 8B;
#   load    hearth-bench-load at 64 sessions, 8B at 10 events/s and 1B at
#           100 events/s each (AB_LOAD_SHAPES, default "8b 1b"),
#           batch_wait_us 0 and 300 (AB_WAITS), twice (AB_REPS),
#           AB_DURATION seconds each (a few split bursts set a short load's p99);
#   model   hearth-bench-load-model on the 8B, page cache and disk (issue 7).
# The random-weight models are made in the background meanwhile (under
# /var/tmp, kept between calls on a machine that stays warm).
set -u
AB_STAGES=${AB_STAGES:-tests engine load model}
AB_WAITS=${AB_WAITS:-0 300}
AB_TESTS=${AB_TESTS:-ops attention skinny}
AB_LOAD_SHAPES=${AB_LOAD_SHAPES:-8b 1b}
AB_ENVS=${AB_ENVS:-- HEARTH_CUDA_PDL=0 -}
AB_REPS=${AB_REPS:-2}
AB_TEST_TIMEOUT=${AB_TEST_TIMEOUT:-240} # seconds a gpu test
AB_TEST_ENV=${AB_TEST_ENV:-} # environment of the tests stage, e.g. HEARTH_CUDA_GEMM_ACC=16
AB_DURATION=${AB_DURATION:-5} # seconds a load: a 5 s 8B load has ~2900 samples, so its p99 is ~29 of them
on() { case " $AB_STAGES " in *" $1 "*) return 0 ;; esac; return 1; }
T0=$(date +%s)
el() { echo "[$(($(date +%s) - T0)) s]"; }
OUT=${OUT:-/tmp/hearth-ab}
mkdir -p "$OUT"
rm -rf build-e2e && tar xJf build-pack/e2e.tar.xz || exit 1
export LD_LIBRARY_PATH="$PWD/build-e2e/lib:/usr/local/cuda/lib64"
R=build-e2e
F=tests/fixtures/models
nvidia-smi --query-gpu=name --format=csv,noheader
# Models, in the background: shape -> $OUT/make-<shape>.rc when done.
need() {
	m=/var/tmp/hearth-model-$1
	if [ -f "$m/config.json" ]; then echo 0 >"$OUT/make-$1.rc"; return; fi
	python3 bench/make_random_model.py --shape "$1" --out "$m" >"$OUT/make-$1.log" 2>&1
	echo $? >"$OUT/make-$1.rc"
}
rm -f "$OUT"/make-*.rc
if on model; then (need 8b; need 1b) &
elif on load; then (for s in $AB_LOAD_SHAPES; do need "$s"; done) & fi
wait_model() {
	while [ ! -f "$OUT/make-$1.rc" ]; do sleep 2; done
	echo "== model $1 rc=$(cat "$OUT/make-$1.rc") $(el)"
}
t() {
	name=$1; shift
	# shellcheck disable=SC2086
	timeout "$AB_TEST_TIMEOUT" env $AB_TEST_ENV stdbuf -oL "$@" >"$OUT/$name.log" 2>&1
	echo "== $name rc=$? $(el)"; grep -iE "out of tolerance|fail|mismatch" "$OUT/$name.log" | head -5
}
# shellcheck disable=SC2086
on tests && for n in $AB_TESTS; do t "$n" $R/test_cuda_$n; done
on tests && for m in llama-tiny qwen2-tiny llama3-scaled mistral-tiny; do
	t "engine-$m" $R/test_cuda_engine "$F/$m"
done
if on attn; then
	timeout 200 $R/test_cuda_attention time >"$OUT/attn-time.log" 2>&1
	echo "-- attn rc=$? $(el)"; grep -iE "prefill|APPEND" "$OUT/attn-time.log" | grep -v large | cut -c1-160
fi
if on wg; then
	timeout 120 $R/time_cuda_gemv all wg >"$OUT/wg-time.log" 2>&1
	echo "-- wg rc=$? $(el)"; grep -E "n=|refused|tolerance|differ" "$OUT/wg-time.log" | cut -c1-240
fi
on profile && for s in 1b 8b; do
	timeout 120 $R/hearth-bench-engine --backend cuda --shape $s --ctx 2048 --batches 64 \
		--mixed 9 --iters 5 --profile >"$OUT/profile-$s.log" 2>&1
	echo "-- profile $s rc=$? $(el)"
	sed -n '/^profile/,$p' "$OUT/profile-$s.log" | grep -v ^BENCH | cut -c1-100
done
on full && for s in 1b 8b; do
	timeout 150 $R/hearth-bench-engine --backend cuda --shape $s >"$OUT/full-$s.log" 2>&1
	echo "-- full $s rc=$? $(el)"; sed -n '/figure (median)/,$p' "$OUT/full-$s.log" | grep -v ^BENCH
done
on engine && for s in 1b 8b; do
	i=0
	for v in $AB_ENVS; do
		i=$((i + 1))
		[ "$v" = - ] && v=HEARTH_AB=none
		# shellcheck disable=SC2046
		timeout 120 env $(echo "$v" | tr , ' ') $R/hearth-bench-engine --backend cuda \
			--shape $s --ctx 2048 --batches 1 --iters 100 >"$OUT/engine-$s-$i.log" 2>&1
		echo "-- engine $s $v rc=$? $(el) $(grep -o 'warm-up:.*' "$OUT/engine-$s-$i.log")"
		grep ^BENCH "$OUT/engine-$s-$i.log" |
			grep -oE '"(copy_gbs|roofline_ms|decode_ms|append32_score_ms|prefill_ms|mixed[0-9]+_ms|valid)":[a-z0-9.]+' |
			tr '\n' ' '
		echo
	done
done
on ratio && for s in 1b 8b; do
	timeout 100 $R/hearth-bench-engine --backend cuda --shape $s --ctx 512 --batches 64 \
		--iters 50 >"$OUT/ratio-$s.log" 2>&1
	echo "-- ratio $s rc=$? $(el)"
	grep ^BENCH "$OUT/ratio-$s.log" | grep -oE '"(copy_gbs|decode_ms|batch64_step_ms)":[0-9.]+' | tr '\n' ' '
	echo
done
# load SHAPE RATE WAIT...: 64 sessions, 8 processes, the open-loop load of issue 6.
load() {
	s=$1 rate=$2; shift 2
	wait_model $s
	for w in "$@"; do
		timeout $((AB_DURATION * 3 + 45)) $R/hearth-bench-load --hearthd $R/hearthd --model /var/tmp/hearth-model-$s \
			--backend cuda --rate $rate --loads 64 --duration "$AB_DURATION" --context 1024 --window 256 \
			--procs 8 --daemon-arg=--max-step-tokens=2048 --daemon-arg=--max-batch=256 \
			--daemon-arg=--batch-wait-us=$w >"$OUT/load.tmp" 2>&1
		echo "-- load $s batch_wait_us=$w rc=$? $(el)"; grep -E "^ +[0-9]+ " "$OUT/load.tmp" | cut -c1-200
		grep -o "\"burst_holds\":[0-9]*" "$OUT/load.tmp"
		grep ^BENCH "$OUT/load.tmp" >>"$OUT/load-$s.log"
	done
}
# shellcheck disable=SC2086
on load && for rep in $(seq "$AB_REPS"); do
	for s in $AB_LOAD_SHAPES; do
		case $s in 8b) load 8b 10 $AB_WAITS ;; 1b) load 1b 100 $AB_WAITS ;; esac
	done
done
if on model; then
	wait_model 8b
	timeout 200 $R/hearth-bench-load-model --backend cuda --reps 2 --drop-caches \
		/var/tmp/hearth-model-8b >"$OUT/load-model.log" 2>&1
	echo "-- load-model rc=$? $(el)"
	grep -iE "median|raw|disk|cache|BENCH" "$OUT/load-model.log" | tail -12 | cut -c1-400
fi
exit 0

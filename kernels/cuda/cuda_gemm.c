/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, matmul through cuBLASLt: out[n, m] = in[n, k] @ W[m, k]^T
 * (+ bias[m]) with bf16 operands, fp32 compute and bf16 or fp32 output.
 * Column-major view: out^T (m x n, ld m) = op_T(W: k x m, ld k) x in^T (k x n,
 * ld k), the bias a BIAS epilogue over D's rows. Descriptors, layouts and the
 * heuristic's algorithm are cached per shape and pointer alignment (asking
 * the heuristic costs tens of microseconds; a step asks for the same few
 * shapes every time). Shapes cuBLASLt declines go to a plain kernel; up to
 * KC_GEMV_MAX_N rows go to the GEMV kernel (cuda_gemv.cu), up to
 * KC_SKINNY_MAX_N to the skinny tensor-core kernel (cuda_skinny.cu) where
 * kc_skinny_suits() finds it faster; this file owns the latter's workspace.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>

#include "cuda_internal.h"

/* Plans: a hash table probed over KC_GEMM_PROBE slots, the least recently
 * used of them replaced when all are taken. Eager steps bring arbitrary row
 * counts (prefill chunks, mixed steps past the graph buckets); the table is
 * large enough that the graph buckets' tuned plans are not pushed out by
 * them, which would cost a re-tune (a stream synchronisation) while serving. */
#define KC_GEMM_CACHE 1024
#define KC_GEMM_PROBE 8
#define KC_GEMM_WS ((size_t)32 << 20)
#define KC_GEMM_ALGOS 8
#define KC_GEMM_PAIR (1u << 24) /* key flag: a strided batch of two (kc_gemm_pair) */
#define KC_GEMM_ACC (1u << 25)  /* key flag: out += (kc_gemm_acc), a plan of its own */

struct kc_gemm_key {
	uint32_t n, k, m;
	uint32_t flags; /* out_f32 | has_bias << 1 | log2 alignments << 4.. */
};

struct kc_gemm_plan {
	struct kc_gemm_key key;
	int used;
	int simple; /* cuBLASLt found no algorithm: kc_gemm_simple() */
	cublasLtMatmulDesc_t desc;
	cublasLtMatrixLayout_t la, lb, lc;
	cublasLtMatmulAlgo_t algo;
	/* The heuristic's first KC_GEMM_ALGOS choices, timed at the plan's
	 * first use while tuning (plan_tune). */
	cublasLtMatmulAlgo_t cand[KC_GEMM_ALGOS];
	int n_cand;
	int tuned;
	uint64_t last_use;
};

struct kc_gemm_cache {
	struct kc_gemm_plan e[KC_GEMM_CACHE];
	uint64_t clock;
};

/* log2 of the largest power of two (<= 256) dividing the address. */
static uint32_t align_log2(const void *p)
{
	uintptr_t a = (uintptr_t)p;
	uint32_t l = 0;

	if (!a)
		return 8;
	while (l < 8 && !(a & ((uintptr_t)1 << l)))
		l++;
	return l;
}

static void plan_clear(struct kc_gemm_plan *p)
{
	if (p->la)
		cublasLtMatrixLayoutDestroy(p->la);
	if (p->lb)
		cublasLtMatrixLayoutDestroy(p->lb);
	if (p->lc)
		cublasLtMatrixLayoutDestroy(p->lc);
	if (p->desc)
		cublasLtMatmulDescDestroy(p->desc);
	memset(p, 0, sizeof(*p));
}

#define LT_OK(x) ((x) == CUBLAS_STATUS_SUCCESS)

/* Build descriptors and ask the heuristic. Returns 0 (possibly with
 * p->simple set) or -ENOMEM / -EIO. */
static int plan_make(struct kern_cuda *c, struct kc_gemm_plan *p, const struct kc_gemm_key *key,
		     const void *bias, uint32_t al_in, uint32_t al_w, uint32_t al_out)
{
	cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
	cudaDataType_t ot = key->flags & 1 ? CUDA_R_32F : CUDA_R_16BF;
	cublasLtMatmulPreference_t pref = NULL;
	cublasLtMatmulHeuristicResult_t res[KC_GEMM_ALGOS];
	uint64_t ws = c->lt_ws_bytes;
	int count = 0, r = -EIO;

	memset(p, 0, sizeof(*p));
	p->key = *key;
	if (!LT_OK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) ||
	    !LT_OK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
						  sizeof(ta))) ||
	    !LT_OK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
						  sizeof(tb))))
		goto out;
	if (bias) {
		cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
		cudaDataType_t bt = CUDA_R_16BF;

		if (!LT_OK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
							  &epi, sizeof(epi))) ||
		    !LT_OK(cublasLtMatmulDescSetAttribute(p->desc,
							  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
							  sizeof(bt))) ||
		    !LT_OK(cublasLtMatmulDescSetAttribute(p->desc,
							  CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
							  sizeof(bias))))
			goto out;
	}
	if (!LT_OK(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, key->k, key->m, key->k)) ||
	    !LT_OK(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, key->k, key->n, key->k)) ||
	    !LT_OK(cublasLtMatrixLayoutCreate(&p->lc, ot, key->m, key->n, key->m)))
		goto out;
	if (key->flags & KC_GEMM_PAIR) {
		/* A strided batch of two: W and out strided (set per call, dense
		 * here for the heuristic), the input shared (stride 0). */
		const int32_t two = 2;
		const int64_t sa = (int64_t)key->k * key->m, sb = 0, sc = (int64_t)key->m * key->n;

		if (!LT_OK(cublasLtMatrixLayoutSetAttribute(p->la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
							    &two, sizeof(two))) ||
		    !LT_OK(cublasLtMatrixLayoutSetAttribute(p->lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
							    &two, sizeof(two))) ||
		    !LT_OK(cublasLtMatrixLayoutSetAttribute(p->lc, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
							    &two, sizeof(two))) ||
		    !LT_OK(cublasLtMatrixLayoutSetAttribute(
			    p->la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sa, sizeof(sa))) ||
		    !LT_OK(cublasLtMatrixLayoutSetAttribute(
			    p->lb, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof(sb))) ||
		    !LT_OK(cublasLtMatrixLayoutSetAttribute(
			    p->lc, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sc, sizeof(sc))))
			goto out;
	}
	if (!LT_OK(cublasLtMatmulPreferenceCreate(&pref)) ||
	    !LT_OK(cublasLtMatmulPreferenceSetAttribute(
		    pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws))))
		goto out;
	{
		uint32_t a_in = 1u << al_in, a_w = 1u << al_w, a_out = 1u << al_out;

		if (!LT_OK(cublasLtMatmulPreferenceSetAttribute(
			    pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_w, sizeof(a_w))) ||
		    !LT_OK(cublasLtMatmulPreferenceSetAttribute(
			    pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &a_in, sizeof(a_in))) ||
		    !LT_OK(cublasLtMatmulPreferenceSetAttribute(
			    pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &a_out,
			    sizeof(a_out))) ||
		    !LT_OK(cublasLtMatmulPreferenceSetAttribute(
			    pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &a_out,
			    sizeof(a_out))))
			goto out;
	}
	if (!LT_OK(cublasLtMatmulAlgoGetHeuristic(c->lt, p->desc, p->la, p->lb, p->lc, p->lc,
						  pref, c->lt_tune ? KC_GEMM_ALGOS : 1, res, &count)) ||
	    count < 1 || !LT_OK(res[0].state)) {
		p->simple = 1;
	} else {
		p->algo = res[0].algo;
		for (int i = 0; i < count; i++)
			if (LT_OK(res[i].state))
				p->cand[p->n_cand++] = res[i].algo;
	}
	p->used = 1;
	r = 0;
out:
	if (pref)
		cublasLtMatmulPreferenceDestroy(pref);
	if (r < 0)
		plan_clear(p);
	return r;
}

/* One candidate's time in ms, or a negative value when it failed: a run to
 * warm up, then three back to back between two events. */
static float cand_time(struct kern_cuda *c, struct kc_gemm_plan *p, const cublasLtMatmulAlgo_t *a,
		       void *out, const void *in, const void *w, cudaEvent_t e0, cudaEvent_t e1)
{
	const float alpha = 1.0f, beta = 0.0f;
	float ms = 0.0f;

	for (int r = 0; r < 4; r++) {
		if (r == 1 && cudaEventRecord(e0, c->stream) != cudaSuccess)
			return -1.0f;
		if (!LT_OK(cublasLtMatmul(c->lt, p->desc, &alpha, w, p->la, in, p->lb, &beta, out,
					  p->lc, out, p->lc, a, c->lt_ws, c->lt_ws_bytes,
					  c->stream)))
			return -1.0f;
	}
	if (cudaEventRecord(e1, c->stream) != cudaSuccess || cudaEventSynchronize(e1) != cudaSuccess ||
	    cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess)
		return -1.0f;
	return ms;
}

/*
 * The heuristic's first choice is often not the fastest for few rows (its
 * model favours large tiles). So the first time a plan of a graph bucket's
 * shape runs while the model prepares (ops->tune on, from
 * model_scratch_warm), each candidate is timed (cand_time) and the fastest
 * stays. This synchronises the stream once per candidate and shape
 * (milliseconds); HEARTH_CUDA_LT_TUNE=0 keeps the heuristic's choice, and
 * HEARTH_CUDA_LT_LOG=1 prints each shape's outcome. Measured: a batch-64
 * step at context 512, 8B 6.92 -> 6.76 ms, 1B 1.750 -> 1.743 ms. Tried and
 * dropped (tenth session, H100): split-k variants of the first candidates
 * with each run timed after evicting L2; chosen only for the 1B down
 * projection at 32-64 rows, 0.2 us faster, and the batch-64 steps moved by
 * 1% (noise).
 */
static void plan_tune(struct kern_cuda *c, struct kc_gemm_plan *p, void *out, const void *in,
		      const void *w)
{
	cudaEvent_t e0 = NULL, e1 = NULL;
	float best = 0.0f, first = 0.0f;
	int pick = 0;

	p->tuned = 1;
	if (p->n_cand < 2 || cudaEventCreate(&e0) != cudaSuccess ||
	    cudaEventCreate(&e1) != cudaSuccess)
		goto out;
	for (int i = 0; i < p->n_cand; i++) {
		const float ms = cand_time(c, p, &p->cand[i], out, in, w, e0, e1);

		if (ms < 0.0f) {
			(void)cudaStreamSynchronize(c->stream);
			(void)cudaGetLastError();
			continue;
		}
		if (!i)
			first = ms;
		if (best == 0.0f || ms < best) {
			best = ms;
			pick = i;
		}
	}
	p->algo = p->cand[pick];
	if (c->lt_log)
		fprintf(stderr,
			"hearth cuda: tuned n=%u k=%u m=%u%s: %d candidates, first %.1f us, "
			"best #%d %.1f us\n",
			p->key.n, p->key.k, p->key.m, p->key.flags & KC_GEMM_PAIR ? " x2" : "",
			p->n_cand, first * 1e3f / 3, pick, best * 1e3f / 3);
out:
	if (e0)
		cudaEventDestroy(e0);
	if (e1)
		cudaEventDestroy(e1);
	(void)cudaGetLastError();
}

static struct kc_gemm_plan *plan_get(struct kern_cuda *c, const struct kc_gemm_key *key,
				     const void *bias, uint32_t al_in, uint32_t al_w,
				     uint32_t al_out, int *ret)
{
	struct kc_gemm_cache *g = c->gemm;
	struct kc_gemm_plan *p = NULL, *victim = NULL;
	uint64_t h = ((uint64_t)key->n * 0x9e3779b97f4a7c15ull) ^
		     ((uint64_t)key->k << 32 | key->m) * 0xc2b2ae3d27d4eb4full ^ key->flags;

	h ^= h >> 29;
	for (unsigned i = 0; i < KC_GEMM_PROBE; i++) {
		struct kc_gemm_plan *e = &g->e[(h + i) % KC_GEMM_CACHE];

		if (e->used && !memcmp(&e->key, key, sizeof(*key))) {
			e->last_use = ++g->clock;
			return e;
		}
		if (!e->used && !p)
			p = e;
		if (!victim || e->last_use < victim->last_use)
			victim = e;
	}
	if (!p) { /* its slots are all taken: replace the least recently used */
		p = victim;
		plan_clear(p);
	}
	*ret = plan_make(c, p, key, bias, al_in, al_w, al_out);
	if (*ret < 0)
		return NULL;
	p->last_use = ++g->clock;
	return p;
}

int kc_gemm_init(struct kern_cuda *c)
{
	cublasLtHandle_t lt;
	cudaError_t e;

	c->gemm = calloc(1, sizeof(*c->gemm));
	if (!c->gemm)
		return -ENOMEM;
	if (!LT_OK(cublasLtCreate(&lt)))
		return -EIO;
	c->lt = lt;
	e = cudaMalloc(&c->lt_ws, KC_GEMM_WS);
	if (e != cudaSuccess)
		return kc_err(e);
	c->lt_ws_bytes = KC_GEMM_WS;
	if (!kc_swiglu_wg_init(c->smem_optin))
		c->swiglu_wg = 0; /* not sm_90a, no TMA: cuBLASLt */
	/* The skinny GEMM's split-k counters must start at zero; its kernels
	 * leave them so. */
	c->skinny_ws_bytes = kc_skinny_ws_bytes(c->n_sms);
	e = cudaMalloc(&c->skinny_ws, c->skinny_ws_bytes);
	if (e == cudaSuccess)
		e = cudaMemset(c->skinny_ws, 0, c->skinny_ws_bytes);
	if (e != cudaSuccess) {
		c->skinny_ws_bytes = 0;
		return kc_err(e);
	}
	return 0;
}

void kc_gemm_destroy(struct kern_cuda *c)
{
	if (c->gemm)
		for (unsigned i = 0; i < KC_GEMM_CACHE; i++)
			plan_clear(&c->gemm->e[i]);
	free(c->gemm);
	c->gemm = NULL;
	if (c->lt)
		cublasLtDestroy(c->lt);
	c->lt = NULL;
	cudaFree(c->lt_ws);
	c->lt_ws = NULL;
	cudaFree(c->skinny_ws);
	c->skinny_ws = NULL;
	c->skinny_ws_bytes = 0;
}

/* The skinny GEMM with the backend's workspace and choice of grid. */
int kc_skinny_run(struct kern_cuda *c, const struct kc_gemv_seg seg[3], const void *in,
		  uint32_t n, uint32_t k, int out_f32)
{
	const struct kc_skinny_cfg cfg = { 0, 1 };

	return kc_skinny_multi(seg, in, n, k, out_f32, c->skinny_ws, c->skinny_ws_bytes, c->n_sms,
			       &cfg, c->stream);
}

/* Element strides of the second matrix of a pair (kc_gemm_pair). */
struct lt_pair {
	int64_t w, out, bias;
};

static int disjoint(const void *a, size_t a_bytes, const void *b, size_t b_bytes)
{
	return (const char *)a >= (const char *)b + b_bytes ||
	       (const char *)b >= (const char *)a + a_bytes;
}

static uint32_t min_u32(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

/*
 * out = in @ W^T (+ bias) through cuBLASLt, or the plain kernel for shapes
 * it declines. With pr, a pair in one call: also out + pr->out = in @ (W +
 * pr->w)^T (+ bias + pr->bias), as a strided batch of two. acc: out += in @
 * W^T instead (beta = 1, out as C and D; never tuned: the candidates would
 * add into out).
 */
static int lt_matmul(struct kern_cuda *c, void *out, int out_f32, const void *in, const void *w,
		     const void *bias, uint32_t n, uint32_t k, uint32_t m, const struct lt_pair *pr,
		     int acc)
{
	const size_t es = out_f32 ? 4 : 2, out_bytes = (size_t)n * m * es;
	void *out1 = pr ? (char *)out + pr->out * (int64_t)es : NULL;
	const void *w1 = pr ? (const char *)w + pr->w * 2 : NULL;
	const void *b1 = pr && bias ? (const char *)bias + pr->bias * 2 : NULL;
	uint32_t al_in = align_log2(in), al_w = align_log2(w), al_out = align_log2(out);
	uint32_t al_b = bias ? align_log2(bias) : 8;
	const float alpha = 1.0f, beta = acc ? 1.0f : 0.0f;
	struct kc_gemm_key key;
	struct kc_gemm_plan *p;
	cublasStatus_t st;
	int r = 0;

	if (pr) {
		al_w = min_u32(al_w, align_log2(w1));
		al_out = min_u32(al_out, align_log2(out1));
		if (bias)
			al_b = min_u32(al_b, align_log2(b1));
	}
	key = (struct kc_gemm_key){
		.n = n, .k = k, .m = m,
		.flags = (uint32_t)!!out_f32 | (uint32_t)!!bias << 1 | al_in << 4 | al_w << 8 |
			 al_out << 12 | al_b << 16 | (pr ? KC_GEMM_PAIR : 0) | (acc ? KC_GEMM_ACC : 0),
	};
	p = plan_get(c, &key, bias, al_in, al_w, al_out, &r);
	if (!p)
		return r;
	if (p->simple) {
		r = kc_gemm_simple(out, out_f32, in, w, bias, n, k, m, acc, c->stream);
		if (!r && pr)
			r = kc_gemm_simple(out1, out_f32, in, w1, b1, n, k, m, acc, c->stream);
		return r;
	}
	if (bias && !LT_OK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
							   &bias, sizeof(bias))))
		return -EIO;
	if (pr && (!LT_OK(cublasLtMatrixLayoutSetAttribute(
			   p->la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &pr->w, sizeof(pr->w))) ||
		   !LT_OK(cublasLtMatrixLayoutSetAttribute(
			   p->lc, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &pr->out,
			   sizeof(pr->out))) ||
		   (bias && !LT_OK(cublasLtMatmulDescSetAttribute(
				    p->desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &pr->bias,
				    sizeof(pr->bias))))))
		return -EIO;
	/* Only the shapes of graph buckets (kern_step_bucket() row counts: a
	 * few dozen shapes), and only while the model prepares (ops->tune,
	 * from model_scratch_warm before serving): a tuning under load stalls
	 * every request in flight (seen: p99 from 11 to 97 ms, and 37-52 ms
	 * when a bucket's first step tuned its shapes). Not the 2048-row
	 * prefill: tuned, the 8B's took 48.7-50.5 ms against 48.2-48.4
	 * untuned (H100, tenth session; the fastest candidate alone is not
	 * the fastest inside the step). Not in place: the candidates' runs
	 * would feed on their own output. */
	if (!p->tuned && !acc && c->tuning && !c->capturing && n <= KERN_GRAPH_MAX_TOKENS &&
	    kern_step_bucket(n) == n &&
	    disjoint(out, out_bytes, in, (size_t)n * k * 2) &&
	    (!pr || disjoint(out1, out_bytes, in, (size_t)n * k * 2)))
		plan_tune(c, p, out, in, w);
	st = cublasLtMatmul(c->lt, p->desc, &alpha, w, p->la, in, p->lb, &beta, out, p->lc, out,
			    p->lc, &p->algo, c->lt_ws, c->lt_ws_bytes, c->stream);
	if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
		/* The heuristic's choice refused at run time: use the plain kernel
		 * for this shape from now on. */
		p->simple = 1;
		r = kc_gemm_simple(out, out_f32, in, w, bias, n, k, m, acc, c->stream);
		if (!r && pr)
			r = kc_gemm_simple(out1, out_f32, in, w1, b1, n, k, m, acc, c->stream);
		return r;
	}
	return LT_OK(st) ? 0 : -EIO;
}

int kc_gemm(struct kern_backend *be, void *out, int out_f32, const void *in, const void *w,
	    const void *bias, uint32_t n, uint32_t k, uint32_t m)
{
	struct kern_cuda *c = kc_priv(be);
	uint32_t al_in = align_log2(in), al_w = align_log2(w), al_out = align_log2(out);
	uint32_t al_b = bias ? align_log2(bias) : 8;
	int r = 0;

	if (!out || !in || !w || !n || !k || !m)
		return -EINVAL;
	r = kc_enter(be);
	if (r < 0)
		return r;
	/* Element alignment is the least any kernel needs; less is a caller bug. */
	if (al_in < 1 || al_w < 1 || al_out < (out_f32 ? 2u : 1u) || al_b < 1)
		return -EINVAL;
	/* Few rows (decode): bound by reading W once, which the GEMV kernel does
	 * near copy bandwidth, where kc_gemv_suits() finds it the faster one. */
	if (!c->gemv_off && k % 8 == 0 && al_in >= 4 && al_w >= 4 &&
	    kc_gemv_suits(n, k, m, KC_GEMV_PLAIN)) {
		r = kc_gemv(out, out_f32, in, w, bias, n, k, m, c->n_sms * c->gemv_occ, c->stream);
		goto out;
	}
	/* 5..64 rows: one pass over W on tensor cores, split over every SM. */
	if (!c->gemv_off && !c->skinny_off && kc_skinny_suits(n, k, m, KC_GEMV_PLAIN)) {
		const struct kc_gemv_seg seg[3] = { { out, w, bias, m }, { NULL, NULL, NULL, 0 },
						    { NULL, NULL, NULL, 0 } };

		r = kc_skinny_run(c, seg, in, n, k, out_f32);
		if (r != -EINVAL)
			goto out;
		r = 0; /* a shape it does not take: cuBLASLt */
	}
	r = lt_matmul(c, out, out_f32, in, w, bias, n, k, m, NULL, 0);
out:
	/* transformers returns bf16 logits (see kern_cuda.hf_round) */
	if (!r && out_f32 && c->hf_round)
		r = kc_round_bf16_f32(out, (size_t)n * m, c->stream);
	return r;
}

int kc_gemm_acc(struct kern_backend *be, void *out, const void *in, const void *w, uint32_t n,
		uint32_t k, uint32_t m)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!out || !in || !w || !n || !k || !m || align_log2(in) < 1 || align_log2(w) < 1 ||
	    align_log2(out) < 1 || !disjoint(out, (size_t)n * m * 2, in, (size_t)n * k * 2))
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	return lt_matmul(c, out, 0, in, w, NULL, n, k, m, NULL, 1);
}

/*
 * Two matrices of one shape over one input in one cuBLASLt launch (k and v;
 * gate and up): a strided batch of two, the strides being the distances
 * between the two weights, outputs and biases. On a few dozen rows each
 * matrix alone is a short, latency-bound launch (1B k or v: 2 MB in about
 * 10 us), and two of them cost nearly twice that. -ENOTSUP where the
 * buffers' placement does not allow it (the second weight before the first
 * while the second output is after the first, overlapping outputs, one
 * bias of two): the caller then makes two calls.
 */
int kc_gemm_pair(struct kern_backend *be, void *out0, void *out1, const void *in, const void *w0,
		 const void *w1, const void *b0, const void *b1, uint32_t n, uint32_t k,
		 uint32_t m)
{
	struct kern_cuda *c = kc_priv(be);
	const size_t out_bytes = (size_t)n * m * 2;
	struct lt_pair pr;
	int r;

	if (!out0 || !out1 || !in || !w0 || !w1 || !n || !k || !m)
		return -EINVAL;
	if (!b0 != !b1 || !c->lt_pair)
		return -ENOTSUP;
	if ((r = kc_enter(be)) < 0)
		return r;
	if ((const char *)w1 < (const char *)w0) { /* the lower weight first */
		const void *t = w0;
		void *o = out0;

		w0 = w1, w1 = t;
		out0 = out1, out1 = o;
		t = b0, b0 = b1, b1 = t;
	}
	pr.w = ((const char *)w1 - (const char *)w0);
	pr.out = ((const char *)out1 - (const char *)out0);
	pr.bias = b0 ? ((const char *)b1 - (const char *)b0) : 0;
	/* Distances past 2^31 elements are refused: cuBLASLt's batch offsets
	 * are documented as int64, but nothing here needs that much. */
	if (pr.w <= 0 || pr.w >= (int64_t)1 << 32 || pr.out >= (int64_t)1 << 32 ||
	    pr.bias >= (int64_t)1 << 32 || pr.out < (int64_t)out_bytes || pr.bias < 0 || ((pr.w | pr.out | pr.bias) & 1) ||
	    (b0 && !pr.bias) || !disjoint(out0, out_bytes, in, (size_t)n * k * 2) ||
	    !disjoint(out1, out_bytes, in, (size_t)n * k * 2))
		return -ENOTSUP;
	pr.w /= 2, pr.out /= 2, pr.bias /= 2;
	r = lt_matmul(c, out0, 0, in, w0, b0, n, k, m, &pr, 0);
	if (!r)
		c->n_pairs++;
	return r;
}

/* SPDX-License-Identifier: MIT */
/*
 * cpu backend, attention family, fp32: rotary embedding with the KV write
 * into pages (rope_kv_write) and paged causal attention with GQA. Batches
 * and block tables come from the caller and are checked against the KV pool
 * before any access: a bad slot, page or position is -EINVAL, never an
 * out-of-bounds read or write.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "hr_common.h"
#include "cpu_internal.h"

static inline int cpu_thread_id(void)
{
#ifdef _OPENMP
	return omp_get_thread_num();
#else
	return 0;
#endif
}

/* KV geometry, layer and head counts shared by both operations. */
static int cpu_kv_check(const struct kern_kv *kv, uint32_t layer, uint32_t n_heads)
{
	if (!kv->base || !kv->n_pages || !kv->page_tokens || !kv->n_layers || !kv->n_kv_heads ||
	    !kv->head_dim)
		return -EINVAL;
	if (layer >= kv->n_layers || !n_heads || n_heads % kv->n_kv_heads)
		return -EINVAL;
	return 0;
}

int kern_cpu_rope_kv_write(struct kern_backend *be, void *q, void *k, const void *v,
			   const struct kern_batch *batch, const struct kern_kv *kv,
			   uint32_t layer, uint32_t n_heads, const float *inv_freq)
{
	uint64_t n_slots;
	uint32_t hd, half, nkv;
	int nt, r;

	if (!be || !q || !k || !v || !batch || !kv || !inv_freq)
		return -EINVAL;
	r = cpu_kv_check(kv, layer, n_heads);
	if (r)
		return r;
	if (!batch->n_tokens || !batch->pos || !batch->slot || kv->head_dim % 2)
		return -EINVAL;

	n_slots = (uint64_t)kv->n_pages * kv->page_tokens;
	for (uint32_t i = 0; i < batch->n_tokens; i++)
		if (batch->slot[i] != KERN_SLOT_PAD &&
		    (batch->pos[i] < 0 || batch->slot[i] < 0 || (uint64_t)batch->slot[i] >= n_slots))
			return -EINVAL;

	nt = kern_cpu_priv(be)->n_threads;
	hd = kv->head_dim;
	half = hd / 2;
	nkv = kv->n_kv_heads;
	(void)nt;

	KERN_PRAGMA(omp parallel for num_threads(nt) schedule(static)
		    if ((size_t)batch->n_tokens * (n_heads + 2 * nkv) * hd >= KERN_CPU_PAR_MIN_ELEMS))
	for (uint32_t i = 0; i < batch->n_tokens; i++) {
		float *qi = (float *)q + (size_t)i * n_heads * hd;
		float *ki = (float *)k + (size_t)i * nkv * hd;
		const float *vi = (const float *)v + (size_t)i * nkv * hd;
		uint32_t page = (uint32_t)batch->slot[i] / kv->page_tokens;
		uint32_t tok = (uint32_t)batch->slot[i] % kv->page_tokens;
		float fpos = (float)batch->pos[i];
		float *base = kv->base;

		if (batch->slot[i] == KERN_SLOT_PAD)
			continue; /* padding: nothing rotated, nothing written */
		/* As transformers computes it: angle = float(pos) * inv_freq[d] in
		 * fp32, then cos/sin; dimension d pairs with d + hd/2. */
		for (uint32_t d = 0; d < half; d++) {
			float ang = fpos * inv_freq[d];
			float c = cosf(ang), s = sinf(ang);

			for (uint32_t h = 0; h < n_heads; h++) {
				float *x = qi + (size_t)h * hd;
				float x1 = x[d], x2 = x[d + half];

				x[d] = x1 * c - x2 * s;
				x[d + half] = x2 * c + x1 * s;
			}
			for (uint32_t h = 0; h < nkv; h++) {
				float *x = ki + (size_t)h * hd;
				float x1 = x[d], x2 = x[d + half];

				x[d] = x1 * c - x2 * s;
				x[d + half] = x2 * c + x1 * s;
			}
		}
		for (uint32_t h = 0; h < nkv; h++) {
			memcpy(base + kern_kv_offset(kv, page, layer, 0, h, tok), ki + (size_t)h * hd,
			       (size_t)hd * sizeof(float));
			memcpy(base + kern_kv_offset(kv, page, layer, 1, h, tok), vi + (size_t)h * hd,
			       (size_t)hd * sizeof(float));
		}
	}
	return 0;
}

/*
 * Check a batch for attention: sequence bounds partition the tokens, every
 * context fits its block table, every page a context uses is in the pool and
 * every position is inside its context. O(n_tokens + total blocks).
 * Returns the largest context in *ret_max_ctx.
 */
static int cpu_attention_check(const struct kern_batch *b, const struct kern_kv *kv,
			       uint32_t *ret_max_ctx)
{
	uint64_t cap = (uint64_t)b->max_blocks * kv->page_tokens;
	uint32_t max_ctx = 0;

	if (!b->n_tokens || !b->n_seqs || !b->max_blocks || !b->pos || !b->seq_start ||
	    !b->ctx_len || !b->block_table)
		return -EINVAL;
	if (b->seq_start[0] != 0 || (uint32_t)b->seq_start[b->n_seqs] != b->n_tokens)
		return -EINVAL;
	for (uint32_t s = 0; s < b->n_seqs; s++) {
		int32_t t0 = b->seq_start[s], t1 = b->seq_start[s + 1];
		int32_t ctx = b->ctx_len[s];
		const int32_t *bt = b->block_table + (size_t)s * b->max_blocks;
		uint32_t n_blocks;

		if (t1 < t0 || ctx < 0 || (uint64_t)ctx > cap)
			return -EINVAL;
		n_blocks = (uint32_t)(((uint64_t)ctx + kv->page_tokens - 1) / kv->page_tokens);
		for (uint32_t j = 0; j < n_blocks; j++)
			if (bt[j] < 0 || (uint32_t)bt[j] >= kv->n_pages)
				return -EINVAL;
		for (int32_t i = t0; i < t1; i++)
			if (b->pos[i] < 0 || b->pos[i] >= ctx)
				return -EINVAL;
		max_ctx = HR_MAX(max_ctx, (uint32_t)ctx);
	}
	*ret_max_ctx = max_ctx;
	return 0;
}

/* The sequence owning token i: the last s with seq_start[s] <= i. */
static uint32_t cpu_seq_of(const struct kern_batch *b, uint32_t i)
{
	uint32_t lo = 0, hi = b->n_seqs; /* answer in [lo, hi) */

	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if ((uint32_t)b->seq_start[mid] <= i)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* One (token, head) pair: two passes over the context, scores kept in
 * `scores` (pos + 1 floats). */
KERN_CPU_HOT static void cpu_attend_one(float *restrict o, const float *restrict qh,
					float *restrict scores, const struct kern_batch *b,
					const struct kern_kv *kv, uint32_t s, uint32_t layer,
					uint32_t kvh, uint32_t n_pos, float scale)
{
	const int32_t *bt = b->block_table + (size_t)s * b->max_blocks;
	const float *base = kv->base;
	const uint32_t hd = kv->head_dim, pt = kv->page_tokens;
	float mx = -INFINITY;
	double sum = 0.0;
	float inv;

	for (uint32_t p0 = 0; p0 < n_pos; p0 += pt) {
		const float *kp = base + kern_kv_offset(kv, (uint32_t)bt[p0 / pt], layer, 0, kvh, 0);
		uint32_t cnt = HR_MIN(pt, n_pos - p0);

		for (uint32_t t = 0; t < cnt; t++) {
			float sc = kern_cpu_dot(qh, kp + (size_t)t * hd, hd) * scale;

			scores[p0 + t] = sc;
			/* fmaxf's choice (a NaN never wins), without its call. */
			mx = sc > mx ? sc : mx;
		}
	}
	/* Stable softmax: subtract the max, so exp() <= 1 and the sum >= 1. */
	for (uint32_t p = 0; p < n_pos; p++) {
		scores[p] = expf(scores[p] - mx);
		sum += scores[p];
	}
	inv = (float)(1.0 / sum);

	memset(o, 0, (size_t)hd * sizeof(float));
	for (uint32_t p0 = 0; p0 < n_pos; p0 += pt) {
		const float *vp = base + kern_kv_offset(kv, (uint32_t)bt[p0 / pt], layer, 1, kvh, 0);
		uint32_t cnt = HR_MIN(pt, n_pos - p0);

		for (uint32_t t = 0; t < cnt; t++) {
			const float *vt = vp + (size_t)t * hd;
			float wgt = scores[p0 + t] * inv;

			KERN_PRAGMA(omp simd)
			for (uint32_t d = 0; d < hd; d++)
				o[d] += wgt * vt[d];
		}
	}
}

#if defined(__x86_64__) && defined(__GNUC__)
/*
 * The same (token, head) pair on AVX2 + FMA, for head sizes that are a
 * multiple of 8: scores of 8 positions at a time (8 dot products summed
 * across lanes together), exp over 8 scores at a time, and the weighted sum
 * of V in 8-float slices. The same passes and order of operations as
 * cpu_attend_one, in float: within the kernel tests' 2e-5 of a double
 * reference. Chosen at run time (cpu_avx2()).
 */
#define CPU_AVX2 __attribute__((target("avx2,fma")))

/* Lane j: the sum of aj's lanes. */
CPU_AVX2 static inline __m256 hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4,
				    __m256 a5, __m256 a6, __m256 a7)
{
	__m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
	__m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));

	return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
			     _mm256_permute2f128_ps(u0, u1, 0x31));
}

CPU_AVX2 static inline float hsum1(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_hadd_ps(s, s);
	s = _mm_hadd_ps(s, s);
	return _mm_cvtss_f32(s);
}

CPU_AVX2 static inline float hmax1(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/*
 * e^x for x <= 0 (scores minus their max), 8 at a time: 2^(x log2 e) as
 * 2^floor times a degree-6 fit of 2^f on [0, 1) (relative error 9e-8 in
 * float). Below -87.3 it gives about 1.2e-38 where expf gives less still:
 * nothing beside a sum of at least 1. A NaN stays NaN.
 */
CPU_AVX2 static inline __m256 exp8(__m256 x)
{
	__m256 t, fi, f, p;
	__m256i e;

	x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x); /* the second operand on NaN */
	t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
	fi = _mm256_floor_ps(t);
	f = _mm256_sub_ps(t, fi);
	p = _mm256_set1_ps(0.000216138082f);
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.00124673764f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.00967553263f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.0554852202f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.240229325f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.693147042f));
	p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
	e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fi), _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

CPU_AVX2 static void cpu_attend_one_avx2(float *restrict o, const float *restrict qh,
					 float *restrict scores, const struct kern_batch *b,
					 const struct kern_kv *kv, uint32_t s, uint32_t layer,
					 uint32_t kvh, uint32_t n_pos, float scale)
{
	const int32_t *bt = b->block_table + (size_t)s * b->max_blocks;
	const float *base = kv->base;
	const uint32_t hd = kv->head_dim, pt = kv->page_tokens;
	const __m256 vscale = _mm256_set1_ps(scale);
	__m256 vmx = _mm256_set1_ps(-INFINITY), vsum = _mm256_setzero_ps(), vm;
	float mx = -INFINITY, sum, inv;
	uint32_t p;

	for (uint32_t p0 = 0; p0 < n_pos; p0 += pt) {
		const float *kp = base + kern_kv_offset(kv, (uint32_t)bt[p0 / pt], layer, 0, kvh, 0);
		uint32_t cnt = HR_MIN(pt, n_pos - p0), t = 0;

		for (; t + 8 <= cnt; t += 8) {
			/* Eight accumulators, named so that they stay in registers. */
			__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0,
			       a6 = a0, a7 = a0, sc;
			const float *k0 = kp + (size_t)t * hd;

			for (uint32_t d = 0; d < hd; d += 8) {
				__m256 qv = _mm256_loadu_ps(qh + d);

				a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
				a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + hd + d), a1);
				a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * hd + d), a2);
				a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * hd + d), a3);
				a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 4 * hd + d), a4);
				a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 5 * hd + d), a5);
				a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 6 * hd + d), a6);
				a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 7 * hd + d), a7);
			}
			sc = _mm256_mul_ps(hsum8(a0, a1, a2, a3, a4, a5, a6, a7), vscale);
			_mm256_storeu_ps(scores + p0 + t, sc);
			vmx = _mm256_max_ps(sc, vmx); /* a NaN score never wins */
		}
		for (; t < cnt; t++) {
			__m256 acc = _mm256_setzero_ps();
			float sc;

			for (uint32_t d = 0; d < hd; d += 8)
				acc = _mm256_fmadd_ps(_mm256_loadu_ps(qh + d),
						      _mm256_loadu_ps(kp + (size_t)t * hd + d), acc);
			sc = hsum1(acc) * scale;
			scores[p0 + t] = sc;
			mx = sc > mx ? sc : mx;
		}
	}
	mx = HR_MAX(mx, hmax1(vmx));
	/* Stable softmax: subtract the max, so exp() <= 1 and the sum >= 1. */
	vm = _mm256_set1_ps(mx);
	for (p = 0; p + 8 <= n_pos; p += 8) {
		__m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + p), vm));

		_mm256_storeu_ps(scores + p, e);
		vsum = _mm256_add_ps(vsum, e);
	}
	sum = hsum1(vsum);
	for (; p < n_pos; p++) {
		scores[p] = expf(scores[p] - mx);
		sum += scores[p];
	}
	inv = 1.0f / sum;

	/* o in slices of up to 32 floats, each summed over every position in
	 * registers. */
	for (uint32_t d0 = 0; d0 < hd; d0 += 32) {
		const uint32_t w = HR_MIN(32u, hd - d0);
		__m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0;

		for (uint32_t p0 = 0; p0 < n_pos; p0 += pt) {
			const float *vp = base + kern_kv_offset(kv, (uint32_t)bt[p0 / pt], layer, 1, kvh,
								 0) + d0;
			uint32_t cnt = HR_MIN(pt, n_pos - p0);

			for (uint32_t t = 0; t < cnt; t++) {
				const float *vt = vp + (size_t)t * hd;
				__m256 wt = _mm256_set1_ps(scores[p0 + t] * inv);

				o0 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt), o0);
				if (w > 8)
					o1 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 8), o1);
				if (w > 16)
					o2 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 16), o2);
				if (w > 24)
					o3 = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt + 24), o3);
			}
		}
		_mm256_storeu_ps(o + d0, o0);
		if (w > 8)
			_mm256_storeu_ps(o + d0 + 8, o1);
		if (w > 16)
			_mm256_storeu_ps(o + d0 + 16, o2);
		if (w > 24)
			_mm256_storeu_ps(o + d0 + 24, o3);
	}
}

/* Whether cpu_attend_one_avx2 may run here (once; HEARTH_CPU_AVX2=0: never,
 * for comparisons and the generic path's tests). */
static bool cpu_avx2(void)
{
	static int have = -1;
	int h = __atomic_load_n(&have, __ATOMIC_RELAXED);

	if (h < 0) {
		const char *e = getenv("HEARTH_CPU_AVX2");

		__builtin_cpu_init();
		h = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
		    !(e && !strcmp(e, "0"));
		__atomic_store_n(&have, h, __ATOMIC_RELAXED);
	}
	return h;
}
#else
static bool cpu_avx2(void)
{
	return false;
}
#endif

int kern_cpu_attention(struct kern_backend *be, void *out, const void *q,
		       const struct kern_batch *batch, const struct kern_kv *kv, uint32_t layer,
		       uint32_t n_heads, float scale)
{
	struct kern_cpu *cpu;
	uint32_t max_ctx, hd, group;
	size_t n_pairs;
	float *scratch;
	size_t row;
	bool avx2;
	int nt, r;

	if (!be || !out || !q || !batch || !kv)
		return -EINVAL;
	r = cpu_kv_check(kv, layer, n_heads);
	if (r)
		return r;
	r = cpu_attention_check(batch, kv, &max_ctx);
	if (r)
		return r;
	r = kern_cpu_scratch_reserve(be, max_ctx);
	if (r)
		return r;

	cpu = kern_cpu_priv(be);
	nt = cpu->n_threads;
	scratch = cpu->scratch;
	row = cpu->scratch_row;
	hd = kv->head_dim;
	group = n_heads / kv->n_kv_heads;
	n_pairs = (size_t)batch->n_tokens * n_heads;
	avx2 = hd % 8 == 0 && cpu_avx2();
	(void)nt;
	(void)avx2;

	/* One (token, head) pair per iteration; pairs differ in context length
	 * (causal prefill, mixed sequences), hence dynamic scheduling. */
	KERN_PRAGMA(omp parallel for num_threads(nt) schedule(dynamic, 4)
		    if (n_pairs > 1 && n_pairs * max_ctx * hd >= KERN_CPU_ATTN_PAR_MIN))
	for (size_t pi = 0; pi < n_pairs; pi++) {
		uint32_t i = (uint32_t)(pi / n_heads), h = (uint32_t)(pi % n_heads);
		uint32_t s = cpu_seq_of(batch, i);
		const float *qh = (const float *)q + pi * hd;
		float *o = (float *)out + pi * hd;

#if defined(__x86_64__) && defined(__GNUC__)
		if (avx2) {
			cpu_attend_one_avx2(o, qh, scratch + (size_t)cpu_thread_id() * row, batch, kv,
					    s, layer, h / group, (uint32_t)batch->pos[i] + 1, scale);
			continue;
		}
#endif
		cpu_attend_one(o, qh, scratch + (size_t)cpu_thread_id() * row, batch, kv, s, layer,
			       h / group, (uint32_t)batch->pos[i] + 1, scale);
	}
	return 0;
}

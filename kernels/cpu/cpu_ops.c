/* SPDX-License-Identifier: MIT */
/*
 * cpu backend, row-wise operations and matmul, all fp32: embedding lookup,
 * fused residual add + RMSNorm, matmul through OpenBLAS, SwiGLU, row gather,
 * argmax and softmax over a set of ids. Every operation checks its arguments
 * first and writes nothing when it returns -EINVAL.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include <cblas.h>

#include "hr_common.h"
#include "cpu_internal.h"

/* Whether a loop over n rows of dim elements is worth an OpenMP region. */
static inline int cpu_par(uint32_t n, uint32_t dim)
{
	return n > 1 && (size_t)n * dim >= KERN_CPU_PAR_MIN_ELEMS;
}

int kern_cpu_embed(struct kern_backend *be, void *out, const void *table, const int32_t *ids,
		   uint32_t n, uint32_t dim, uint32_t vocab)
{
	const float *t = table;
	float *o = out;

	(void)be;
	if (!out || !table || !ids || !n || !dim || !vocab)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		if (ids[i] < 0 || (uint32_t)ids[i] >= vocab)
			return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		memcpy(o + (size_t)i * dim, t + (size_t)ids[i] * dim, (size_t)dim * sizeof(float));
	return 0;
}

int kern_cpu_add_rmsnorm(struct kern_backend *be, void *out, void *resid, const void *add,
			 const void *weight, uint32_t n, uint32_t dim, float eps)
{
	const int nt = kern_cpu_priv(be)->n_threads;
	const float *a = add, *w = weight;
	float *o = out, *r = resid;

	if (!out || !resid || !weight || !n || !dim || out == resid)
		return -EINVAL;
	(void)nt;

	KERN_PRAGMA(omp parallel for num_threads(nt) if (cpu_par(n, dim)) schedule(static))
	for (uint32_t i = 0; i < n; i++) {
		float *ri = r + (size_t)i * dim;
		float *oi = o + (size_t)i * dim;
		double ss = 0.0;
		float inv;

		if (a) {
			const float *ai = a + (size_t)i * dim;

			for (uint32_t j = 0; j < dim; j++)
				ri[j] += ai[j];
		}
		KERN_PRAGMA(omp simd reduction(+ : ss))
		for (uint32_t j = 0; j < dim; j++)
			ss += (double)ri[j] * ri[j];
		/* Same order as the Hugging Face RMSNorm: x * rsqrt(var + eps), then
		 * times the weight; the sum is in double, which costs nothing here. */
		inv = (float)(1.0 / sqrt(ss / dim + (double)eps));
		for (uint32_t j = 0; j < dim; j++)
			oi[j] = (ri[j] * inv) * w[j];
	}
	return 0;
}

/* out = in @ W^T (+ bias), or out += in @ W^T with beta = 1. */
static int cpu_gemm(struct kern_backend *be, float *out, const float *in, const float *w,
		    const float *bias, uint32_t n, uint32_t k, uint32_t m, float beta)
{
	struct kern_cpu *cpu = kern_cpu_priv(be);
	int want;

	if (!out || !in || !w || !n || !k || !m)
		return -EINVAL;
	want = (uint64_t)n * k * m >= KERN_CPU_GEMM_PAR_MIN ? cpu->n_threads : 1;
	if (want != cpu->blas_threads) {
		openblas_set_num_threads(want);
		cpu->blas_threads = want;
	}
	/* cblas takes int dimensions (this OpenBLAS has 32-bit blasint). */
	if (n > INT_MAX || k > INT_MAX || m > INT_MAX)
		return -EINVAL;
	if (n == 1)
		/* One row: out[m] = W[m, k] x, a matrix-vector product. */
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)m, (int)k, 1.0f, w, (int)k, in, 1,
			    beta, out, 1);
	else
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)m, (int)k, 1.0f,
			    in, (int)k, w, (int)k, beta, out, (int)m);
	if (bias)
		for (uint32_t i = 0; i < n; i++) {
			float *oi = out + (size_t)i * m;

			for (uint32_t j = 0; j < m; j++)
				oi[j] += bias[j];
		}
	return 0;
}

int kern_cpu_matmul(struct kern_backend *be, void *out, const void *in, const void *w,
		    const void *bias, uint32_t n, uint32_t k, uint32_t m)
{
	return cpu_gemm(be, out, in, w, bias, n, k, m, 0.0f);
}

int kern_cpu_matmul_acc(struct kern_backend *be, void *out, const void *in, const void *w,
			uint32_t n, uint32_t k, uint32_t m)
{
	return cpu_gemm(be, out, in, w, NULL, n, k, m, 1.0f);
}

int kern_cpu_matmul_f32out(struct kern_backend *be, float *out, const void *in, const void *w,
			   uint32_t n, uint32_t k, uint32_t m)
{
	return cpu_gemm(be, out, in, w, NULL, n, k, m, 0.0f);
}

int kern_cpu_swiglu(struct kern_backend *be, void *out, const void *gate, const void *up,
		    uint32_t n, uint32_t dim)
{
	const int nt = kern_cpu_priv(be)->n_threads;
	const float *g = gate, *u = up;
	float *o = out;

	if (!out || !gate || !up || !n || !dim)
		return -EINVAL;
	(void)nt;

	KERN_PRAGMA(omp parallel for num_threads(nt) if (cpu_par(n, dim)) schedule(static))
	for (uint32_t i = 0; i < n; i++) {
		size_t base = (size_t)i * dim;

		/* silu(x) = x / (1 + exp(-x)), as PyTorch computes it; for very
		 * negative x exp overflows to inf and the quotient is -0. */
		for (uint32_t j = 0; j < dim; j++) {
			float x = g[base + j];

			o[base + j] = x / (1.0f + expf(-x)) * u[base + j];
		}
	}
	return 0;
}

int kern_cpu_gather_rows(struct kern_backend *be, void *out, const void *in, const int32_t *rows,
			 uint32_t n, uint32_t dim)
{
	const float *src = in;
	float *o = out;

	(void)be;
	if (!out || !in || !rows || !n || !dim)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		if (rows[i] < 0)
			return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		memcpy(o + (size_t)i * dim, src + (size_t)rows[i] * dim, (size_t)dim * sizeof(float));
	return 0;
}

int kern_cpu_argmax(struct kern_backend *be, int32_t *out, const float *logits, uint32_t n,
		    uint32_t vocab)
{
	(void)be;
	if (!out || !logits || !n || !vocab || vocab > INT32_MAX)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		const float *l = logits + (size_t)i * vocab;
		uint32_t best = 0;
		float bv = l[0];

		/* Strict '>' keeps the lowest index on ties; a NaN wins at its
		 * first occurrence, as torch.argmax does. */
		if (bv == bv)
			for (uint32_t j = 1; j < vocab; j++) {
				float v = l[j];

				if (v != v) {
					best = j;
					break;
				}
				if (v > bv) {
					bv = v;
					best = j;
				}
			}
		out[i] = (int32_t)best;
	}
	return 0;
}

int kern_cpu_softmax_ids(struct kern_backend *be, float *out, const float *logits,
			 const int32_t *ids, uint32_t n, uint32_t n_ids, uint32_t vocab)
{
	(void)be;
	if (!out || !logits || !ids || !n || !n_ids || !vocab)
		return -EINVAL;
	for (uint32_t j = 0; j < n_ids; j++)
		if (ids[j] < 0 || (uint32_t)ids[j] >= vocab)
			return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		const float *l = logits + (size_t)i * vocab;
		float *o = out + (size_t)i * n_ids;
		float mx = -INFINITY;
		double sum = 0.0;
		float inv;

		/* Subtract the max so that exp never overflows (stable softmax). */
		for (uint32_t j = 0; j < n_ids; j++)
			mx = fmaxf(mx, l[ids[j]]);
		if (mx == -INFINITY)
			mx = 0.0f; /* all -inf: 0/0 below gives NaN, as torch does */
		for (uint32_t j = 0; j < n_ids; j++) {
			o[j] = expf(l[ids[j]] - mx);
			sum += o[j];
		}
		inv = (float)(1.0 / sum);
		for (uint32_t j = 0; j < n_ids; j++)
			o[j] *= inv;
	}
	return 0;
}

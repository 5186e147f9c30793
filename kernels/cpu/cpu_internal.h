/* SPDX-License-Identifier: MIT */
/*
 * Private state and operation entry points of the cpu backend (the fp32
 * reference). cpu_backend.c owns memory, copies and the ops table;
 * cpu_ops.c the row-wise operations and matmul; cpu_attention.c rope, the
 * KV write and paged attention. Nothing outside kernels/cpu includes this.
 */
#ifndef KERN_CPU_INTERNAL_H
#define KERN_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kern.h"

#define KERN_CPU_ALIGN 64

/* Elements of row-wise work below which an OpenMP region costs more than it
 * saves. Measured on a 2-core machine with the reactor and a client spinning
 * beside the engine: a parallel region whose workers must first be scheduled
 * costs tens of microseconds to milliseconds, so only large steps go wide. */
#define KERN_CPU_PAR_MIN_ELEMS (1u << 18)
/* Attention: multiply-adds (pairs x context x head_dim) before going wide. */
#define KERN_CPU_ATTN_PAR_MIN (1u << 21)
/* GEMM: multiply-adds (n x k x m) below which OpenBLAS runs on one thread
 * (its threads would cost more to wake than the product takes). */
#define KERN_CPU_GEMM_PAR_MIN (1ull << 22)

struct kern_cpu {
	int n_threads;
	int blas_threads; /* what OpenBLAS was last told */
	/* Attention score scratch: n_threads rows of scratch_row floats, grown
	 * on demand (one backend is used by one thread at a time). */
	float *scratch;
	size_t scratch_row;
};

static inline struct kern_cpu *kern_cpu_priv(struct kern_backend *be)
{
	return be->priv;
}

/* OpenMP helpers: a pragma that compiles away without -fopenmp. */
#ifdef _OPENMP
#define KERN_PRAGMA(x) _Pragma(#x)
#else
#define KERN_PRAGMA(x)
#endif

/*
 * The hottest loops, compiled twice: for x86-64-v3 (AVX2, FMA) and for the
 * baseline, one chosen when the program loads (an ifunc). The build targets
 * the baseline (SSE2), where these loops take longer (docs/BENCHMARKS.md).
 */
#if defined(__x86_64__) && defined(__clang__)
#define KERN_CPU_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__)
#define KERN_CPU_HOT __attribute__((target_clones("arch=x86-64-v3", "default"), noinline))
#else
#define KERN_CPU_HOT
#endif

/* Dot product in float with a vector-friendly reduction order. */
static inline float kern_cpu_dot(const float *restrict a, const float *restrict b, uint32_t n)
{
	float acc = 0.0f;

	KERN_PRAGMA(omp simd reduction(+ : acc))
	for (uint32_t i = 0; i < n; i++)
		acc += a[i] * b[i];
	return acc;
}

/* Memory for kernels: 64-byte aligned; NULL with errno set. */
void *kern_cpu_alloc_host(size_t bytes);
int kern_cpu_scratch_reserve(struct kern_backend *be, size_t row);

int kern_cpu_embed(struct kern_backend *be, void *out, const void *table, const int32_t *ids,
		   uint32_t n, uint32_t dim, uint32_t vocab);
int kern_cpu_add_rmsnorm(struct kern_backend *be, void *out, void *resid, const void *add,
			 const void *weight, uint32_t n, uint32_t dim, float eps);
int kern_cpu_matmul(struct kern_backend *be, void *out, const void *in, const void *w,
		    const void *bias, uint32_t n, uint32_t k, uint32_t m);
int kern_cpu_matmul_acc(struct kern_backend *be, void *out, const void *in, const void *w,
			uint32_t n, uint32_t k, uint32_t m);
int kern_cpu_matmul_f32out(struct kern_backend *be, float *out, const void *in, const void *w,
			   uint32_t n, uint32_t k, uint32_t m);
int kern_cpu_swiglu(struct kern_backend *be, void *out, const void *gate, const void *up,
		    uint32_t n, uint32_t dim);
int kern_cpu_gather_rows(struct kern_backend *be, void *out, const void *in, const int32_t *rows,
			 uint32_t n, uint32_t dim);
int kern_cpu_argmax(struct kern_backend *be, int32_t *out, const float *logits, uint32_t n,
		    uint32_t vocab);
int kern_cpu_softmax_ids(struct kern_backend *be, float *out, const float *logits,
			 const int32_t *ids, uint32_t n, uint32_t n_ids, uint32_t vocab);

int kern_cpu_rope_kv_write(struct kern_backend *be, void *q, void *k, const void *v,
			   const struct kern_batch *batch, const struct kern_kv *kv,
			   uint32_t layer, uint32_t n_heads, const float *inv_freq);
int kern_cpu_attention(struct kern_backend *be, void *out, const void *q,
		       const struct kern_batch *batch, const struct kern_kv *kv, uint32_t layer,
		       uint32_t n_heads, float scale);

#endif

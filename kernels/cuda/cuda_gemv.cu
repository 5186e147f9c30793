/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, matmul for few rows (decode): out[n, m] = in[n, k] @ W^T
 * (+ bias) for n <= KC_GEMV_MAX_N, bf16 operands, fp32 sums. At n = 1 this is
 * a matrix-vector product, bound by reading W once (2*m*k bytes): each warp
 * streams 16-byte pieces of one W row (four in flight per lane) and applies
 * them to all n input rows, whose values stay in L1. When m is small, up to
 * eight warps share a row (split k, summed through shared memory) so that
 * the grid still covers every multiprocessor. cuBLASLt takes larger n.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdint.h>

#include "cuda_internal.h"

typedef __nv_bfloat16 bf16;

#define GEMV_THREADS 256
#define GEMV_WARPS (GEMV_THREADS / 32)

static __device__ __forceinline__ void unpack8(uint4 v, float f[8])
{
	const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&v);

#pragma unroll
	for (int i = 0; i < 4; i++) {
		float2 t = __bfloat1622float2(h[i]);

		f[2 * i] = t.x;
		f[2 * i + 1] = t.y;
	}
}

template <int NR>
static __device__ __forceinline__ void gemv_step(float acc[NR], uint4 wv, const uint4 *in, size_t k8,
						 size_t i)
{
	float wf[8];

	unpack8(wv, wf);
#pragma unroll
	for (int r = 0; r < NR; r++) {
		float xf[8];

		unpack8(__ldg(in + r * k8 + i), xf);
#pragma unroll
		for (int e = 0; e < 8; e++)
			acc[r] = fmaf(wf[e], xf[e], acc[r]);
	}
}

/* Block: GEMV_WARPS / wpr rows, wpr warps per row. k % 8 == 0. */
template <int NR>
static __global__ void __launch_bounds__(GEMV_THREADS)
gemv_kernel(void *out, int out_f32, const bf16 *in, const bf16 *w, const bf16 *bias, uint32_t k,
	    uint32_t m, uint32_t wpr)
{
	__shared__ float part[GEMV_WARPS][NR];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const uint32_t rows_per_block = GEMV_WARPS / wpr;
	const uint32_t j = blockIdx.x * rows_per_block + warp / wpr, slice = warp % wpr;
	const size_t k8 = k / 8, stride = (size_t)32 * wpr;
	const uint4 *wr = (const uint4 *)(w + (size_t)(j < m ? j : 0) * k);
	const uint4 *x = (const uint4 *)in;
	float acc[NR];
	size_t i = (size_t)slice * 32 + lane;

#pragma unroll
	for (int r = 0; r < NR; r++)
		acc[r] = 0.0f;
	if (j < m) {
		/* Four independent 16-byte loads in flight before the first use. */
		for (; i + 3 * stride < k8; i += 4 * stride) {
			uint4 w0 = __ldcs(wr + i), w1 = __ldcs(wr + i + stride);
			uint4 w2 = __ldcs(wr + i + 2 * stride), w3 = __ldcs(wr + i + 3 * stride);

			gemv_step<NR>(acc, w0, x, k8, i);
			gemv_step<NR>(acc, w1, x, k8, i + stride);
			gemv_step<NR>(acc, w2, x, k8, i + 2 * stride);
			gemv_step<NR>(acc, w3, x, k8, i + 3 * stride);
		}
		for (; i < k8; i += stride)
			gemv_step<NR>(acc, __ldcs(wr + i), x, k8, i);
	}
#pragma unroll
	for (int r = 0; r < NR; r++)
#pragma unroll
		for (int o = 16; o; o >>= 1)
			acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
	if (wpr > 1) {
		if (!lane)
#pragma unroll
			for (int r = 0; r < NR; r++)
				part[warp][r] = acc[r];
		__syncthreads();
		if (slice || lane >= NR)
			return;
		/* Lane r of the row's first warp sums row r's slices. */
		{
			float s = 0.0f;

#pragma unroll
			for (int r = 0; r < NR; r++)
				if (r == lane)
					for (uint32_t q = 0; q < wpr; q++)
						s += part[warp + q][r];
#pragma unroll
			for (int r = 0; r < NR; r++)
				if (r == lane)
					acc[r] = s;
		}
	} else if (lane >= NR) {
		return;
	}
	if (j >= m)
		return;
	/* Lane r writes row r (its acc[r] holds the full sum). */
#pragma unroll
	for (int r = 0; r < NR; r++)
		if (r == lane) {
			float v = acc[r] + (bias ? __bfloat162float(bias[j]) : 0.0f);

			if (out_f32)
				((float *)out)[(size_t)r * m + j] = v;
			else
				((bf16 *)out)[(size_t)r * m + j] = __float2bfloat16_rn(v);
		}
}

template <int NR>
static void gemv_launch(void *out, int out_f32, const void *in, const void *w, const void *bias,
			uint32_t k, uint32_t m, uint32_t wpr, cudaStream_t st)
{
	uint32_t rows = GEMV_WARPS / wpr;

	gemv_kernel<NR><<<(m + rows - 1) / rows, GEMV_THREADS, 0, st>>>(
		out, out_f32, (const bf16 *)in, (const bf16 *)w, (const bf16 *)bias, k, m, wpr);
}

extern "C" int kc_gemv(void *out, int out_f32, const void *in, const void *w, const void *bias,
		       uint32_t n, uint32_t k, uint32_t m, int n_sms, cudaStream_t st)
{
	uint32_t wpr = 1;

	if (!n || n > KC_GEMV_MAX_N || k % 8 || ((uintptr_t)in | (uintptr_t)w) & 15)
		return -EINVAL;
	/* Enough warps for every multiprocessor (32 each), but no more slices
	 * than 32-lane passes over k. */
	while (wpr < GEMV_WARPS && (uint64_t)m * wpr < (uint64_t)n_sms * 32 &&
	       (uint64_t)wpr * 2 * 32 <= k / 8)
		wpr *= 2;
	static_assert(KC_GEMV_MAX_N == 4, "one instance per row count");
	switch (n) {
	case 1: gemv_launch<1>(out, out_f32, in, w, bias, k, m, wpr, st); break;
	case 2: gemv_launch<2>(out, out_f32, in, w, bias, k, m, wpr, st); break;
	case 3: gemv_launch<3>(out, out_f32, in, w, bias, k, m, wpr, st); break;
	default: gemv_launch<4>(out, out_f32, in, w, bias, k, m, wpr, st); break;
	}
	return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

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

#include "cuda_device.cuh"
#include "cuda_internal.h"

typedef __nv_bfloat16 bf16;

#define GEMV_THREADS 256
#define GEMV_WARPS (GEMV_THREADS / 32)

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

/* Output rows of one launch: up to three matrices stacked (segments), or the
 * gate and up matrices of a SwiGLU read together (one output row each). */
struct gemv_segs {
	void *out[3];
	const bf16 *w[3], *bias[3];
	uint32_t m[3];   /* rows of each segment; m[0] + m[1] + m[2] in total */
	int out_f32;
	int hf;          /* SWIGLU: silu(g) rounded to bf16 first */
};

/* Sum acc[] over the warp, then over the wpr warps sharing the row; true in
 * lane r of the row's first warp, which holds row r's full sum in acc[r]. */
template <int NR>
static __device__ __forceinline__ bool gemv_reduce(float acc[NR], float (*part)[NR],
						   uint32_t wpr, int lane, int warp)
{
	const uint32_t slice = warp % wpr;

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
			return false;
		{
			float sum = 0.0f;

#pragma unroll
			for (int r = 0; r < NR; r++)
				if (r == lane)
					for (uint32_t q = 0; q < wpr; q++)
						sum += part[warp + q][r];
#pragma unroll
			for (int r = 0; r < NR; r++)
				if (r == lane)
					acc[r] = sum;
		}
		return true;
	}
	return lane < NR;
}

/* Dot products of W row wr with the NR input rows, this warp's slice of k. */
template <int NR>
static __device__ __forceinline__ void gemv_row(float acc[NR], const uint4 *wr, const uint4 *x,
						size_t k8, size_t i, size_t stride)
{
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

/* Block: GEMV_WARPS / wpr rows, wpr warps per row. k % 8 == 0.
 * SWIGLU: segment 0 is gate, 1 is up, m[0] output rows. */
template <int NR, bool SWIGLU>
static __global__ void __launch_bounds__(GEMV_THREADS)
gemv_kernel(const struct gemv_segs sg, const bf16 *in, uint32_t k, uint32_t wpr)
{
	__shared__ float part[GEMV_WARPS][NR];
	__shared__ float part2[GEMV_WARPS][NR];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const uint32_t rows_per_block = GEMV_WARPS / wpr;
	const uint32_t m_all = SWIGLU ? sg.m[0] : sg.m[0] + sg.m[1] + sg.m[2];
	const uint32_t j = blockIdx.x * rows_per_block + warp / wpr, slice = warp % wpr;
	const size_t k8 = k / 8, stride = (size_t)32 * wpr;
	const uint4 *x = (const uint4 *)in;
	const size_t i = (size_t)slice * 32 + lane;
	uint32_t seg = 0, jr = j < m_all ? j : 0;
	float acc[NR], acc2[NR];
	bool writer;

	if (!SWIGLU) {
		if (jr >= sg.m[0]) {
			jr -= sg.m[0];
			seg = 1;
			if (jr >= sg.m[1]) {
				jr -= sg.m[1];
				seg = 2;
			}
		}
	}
#pragma unroll
	for (int r = 0; r < NR; r++)
		acc[r] = acc2[r] = 0.0f;
	if (j < m_all) {
		gemv_row<NR>(acc, (const uint4 *)(sg.w[seg] + (size_t)jr * k), x, k8, i, stride);
		if (SWIGLU)
			gemv_row<NR>(acc2, (const uint4 *)(sg.w[1] + (size_t)jr * k), x, k8, i,
				     stride);
	}
	writer = gemv_reduce<NR>(acc, part, wpr, lane, warp);
	if (SWIGLU)
		writer = gemv_reduce<NR>(acc2, part2, wpr, lane, warp);
	if (!writer || j >= m_all)
		return;
	/* Lane r writes row r (its acc[r] holds the full sum). */
#pragma unroll
	for (int r = 0; r < NR; r++)
		if (r == lane) {
			const uint32_t m = sg.m[seg];
			float v;

			if (SWIGLU) {
				float g = acc[r], u = acc2[r];

				/* as the swiglu kernel: g and u rounded to bf16 first */
				g = __bfloat162float(__float2bfloat16_rn(g));
				u = __bfloat162float(__float2bfloat16_rn(u));
				v = g / (1.0f + expf(-g));
				if (sg.hf)
					v = __bfloat162float(__float2bfloat16_rn(v));
				v *= u;
			} else {
				v = acc[r] + (sg.bias[seg] ? __bfloat162float(sg.bias[seg][jr]) : 0.0f);
			}
			if (sg.out_f32)
				((float *)sg.out[seg])[(size_t)r * m + jr] = v;
			else
				((bf16 *)sg.out[seg])[(size_t)r * m + jr] = __float2bfloat16_rn(v);
		}
}

template <bool SWIGLU>
static void gemv_launch(const struct gemv_segs *sg, const void *in, uint32_t n, uint32_t k,
			uint32_t wpr, cudaStream_t st)
{
	uint32_t rows = GEMV_WARPS / wpr;
	uint32_t m_all = SWIGLU ? sg->m[0] : sg->m[0] + sg->m[1] + sg->m[2];
	unsigned grid = (m_all + rows - 1) / rows;

	static_assert(KC_GEMV_MAX_N == 4, "one instance per row count");
	switch (n) {
	case 1: gemv_kernel<1, SWIGLU><<<grid, GEMV_THREADS, 0, st>>>(*sg, (const bf16 *)in, k, wpr); break;
	case 2: gemv_kernel<2, SWIGLU><<<grid, GEMV_THREADS, 0, st>>>(*sg, (const bf16 *)in, k, wpr); break;
	case 3: gemv_kernel<3, SWIGLU><<<grid, GEMV_THREADS, 0, st>>>(*sg, (const bf16 *)in, k, wpr); break;
	default: gemv_kernel<4, SWIGLU><<<grid, GEMV_THREADS, 0, st>>>(*sg, (const bf16 *)in, k, wpr); break;
	}
}

/* Enough warps for every multiprocessor (32 each), but no more slices than
 * 32-lane passes over k. */
static uint32_t gemv_wpr(uint64_t m, uint32_t k, int n_sms)
{
	uint32_t wpr = 1;

	while (wpr < GEMV_WARPS && m * wpr < (uint64_t)n_sms * 32 &&
	       (uint64_t)wpr * 2 * 32 <= k / 8)
		wpr *= 2;
	return wpr;
}

static int gemv_args_ok(uint32_t n, uint32_t k, const void *in)
{
	return n && n <= KC_GEMV_MAX_N && k % 8 == 0 && !((uintptr_t)in & 15);
}

extern "C" int kc_gemv_multi(const struct kc_gemv_seg seg[3], const void *in, uint32_t n,
			     uint32_t k, int n_sms, cudaStream_t st)
{
	struct gemv_segs sg = {};
	uint64_t m_all = 0;

	if (!gemv_args_ok(n, k, in))
		return -EINVAL;
	for (int i = 0; i < 3; i++) {
		if (seg[i].m && (!seg[i].w || !seg[i].out || ((uintptr_t)seg[i].w & 15)))
			return -EINVAL;
		sg.out[i] = seg[i].out;
		sg.w[i] = (const bf16 *)seg[i].w;
		sg.bias[i] = (const bf16 *)seg[i].bias;
		sg.m[i] = seg[i].m;
		m_all += seg[i].m;
	}
	if (!m_all || m_all > 0x7fffffffu)
		return -EINVAL;
	gemv_launch<false>(&sg, in, n, k, gemv_wpr(m_all, k, n_sms), st);
	return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

extern "C" int kc_gemv_swiglu(void *out, const void *in, const void *w_gate, const void *w_up,
			      uint32_t n, uint32_t k, uint32_t m, int n_sms, int hf, cudaStream_t st)
{
	struct gemv_segs sg = {};

	if (!gemv_args_ok(n, k, in) || !m || ((uintptr_t)w_gate | (uintptr_t)w_up) & 15)
		return -EINVAL;
	sg.out[0] = out;
	sg.w[0] = (const bf16 *)w_gate;
	sg.w[1] = (const bf16 *)w_up;
	sg.m[0] = m;
	sg.hf = hf;
	gemv_launch<true>(&sg, in, n, k, gemv_wpr(m, k, n_sms), st);
	return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

extern "C" int kc_gemv(void *out, int out_f32, const void *in, const void *w, const void *bias,
		       uint32_t n, uint32_t k, uint32_t m, int n_sms, cudaStream_t st)
{
	struct gemv_segs sg = {};

	if (!gemv_args_ok(n, k, in) || ((uintptr_t)w & 15))
		return -EINVAL;
	sg.out[0] = out;
	sg.w[0] = (const bf16 *)w;
	sg.bias[0] = (const bf16 *)bias;
	sg.m[0] = m;
	sg.out_f32 = out_f32;
	gemv_launch<false>(&sg, in, n, k, gemv_wpr(m, k, n_sms), st);
	return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

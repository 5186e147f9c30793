/* SPDX-License-Identifier: MIT */
/*
 * Device helpers shared by the CUDA kernel files: error flags written from
 * device code, warp reductions, bf16 unpacking/rounding and programmatic
 * dependent launch (the tensor-core ones are in cuda_mma.cuh). Included by
 * .cu files only.
 */
#ifndef KERN_CUDA_DEVICE_CUH
#define KERN_CUDA_DEVICE_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#define KC_LOG2E 1.4426950408889634f /* softmax in base 2: scores times log2 e */

/* Errors from device data: any non-zero value will do, so a plain store. */
static __device__ __forceinline__ void set_err(uint32_t *err, uint32_t bit)
{
	*(volatile uint32_t *)err = bit;
}

static __device__ __forceinline__ float warp_sum(float x)
{
#pragma unroll
	for (int o = 16; o; o >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, o);
	return x;
}

static __device__ __forceinline__ float warp_max(float x)
{
#pragma unroll
	for (int o = 16; o; o >>= 1)
		x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
	return x;
}

/* Eight bf16 (one 16-byte load) to fp32. */
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

/* Eight fp32 to bf16 (round to nearest even), one 16-byte store. */
static __device__ __forceinline__ uint4 pack8(const float f[8])
{
	uint4 v;
	__nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&v);

#pragma unroll
	for (int i = 0; i < 4; i++)
		h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
	return v;
}

/* Round to bf16 and back: the value an activation holds once stored. */
static __device__ __forceinline__ float bf_round(float x)
{
	return __bfloat162float(__float2bfloat16_rn(x));
}

/* silu(g) * u of a stored (bf16) gate and up, silu as PyTorch computes it:
 * g / (1 + exp(-g)); hf: silu(g) rounded to bf16 first, as the bf16 module
 * stores it. Shared by the SwiGLU pass and the GEMM epilogues. */
static __device__ __forceinline__ float swiglu_bf(float g, float u, int hf)
{
	float s = g / (1.0f + expf(-g));

	return (hf ? bf_round(s) : s) * u;
}

/*
 * The rotary embedding of one pair (x1, x2) = (x[d], x[d + hd/2]) at
 * position pos: angles as transformers computes them, float(pos) *
 * inv_freq[d] in fp32, then cos/sin (full-range accurate sincosf). hf:
 * transformers' bf16 cos/sin, each product and the sum rounded. Shared by
 * rope_kv_write and the q/k/v GEMV's epilogue, so both round alike.
 */
static __device__ __forceinline__ float2 rope_pair(float x1, float x2, int32_t pos, float inv_freq,
						   int hf)
{
	float sn, c;

	sincosf((float)pos * inv_freq, &sn, &c);
	if (hf) {
		c = bf_round(c);
		sn = bf_round(sn);
		return make_float2(bf_round(x1 * c) + bf_round(-x2 * sn),
				   bf_round(x2 * c) + bf_round(x1 * sn));
	}
	return make_float2(x1 * c - x2 * sn, x2 * c + x1 * sn);
}

/*
 * Programmatic dependent launch (sm_90): a kernel launched with
 * kc_launch_pdl() may start while the kernel before it in the stream is
 * still running, once every block of that one has called pdl_trigger() (or
 * exited). Before pdl_wait() it may read only what no earlier kernel writes
 * (weights); pdl_wait() returns once the previous kernel has completed and
 * its writes are visible, and every kernel before it too, since that one
 * waited as well. Every thread of a PDL kernel calls pdl_wait() before it
 * touches activations, and before it exits. Both are no-ops for a kernel
 * launched the ordinary way and below sm_90.
 */
static __device__ __forceinline__ void pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Launch with programmatic stream serialisation when pdl is set (the
 * caller has checked kc_pdl_enabled()); an ordinary launch otherwise. */
template <typename... KArgs, typename... Args>
static cudaError_t kc_launch_pdl(bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block,
				 size_t smem, cudaStream_t st, Args... args)
{
	cudaLaunchConfig_t cfg = {};
	cudaLaunchAttribute attr[1];
	cudaError_t e;

	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.dynamicSmemBytes = smem;
	cfg.stream = st;
	if (pdl) {
		attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
		attr[0].val.programmaticStreamSerializationAllowed = 1;
		cfg.attrs = attr;
		cfg.numAttrs = 1;
	}
	e = cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
	if (e != cudaSuccess)
		(void)cudaGetLastError(); /* not left for the next check to find */
	return e;
}

/* The sequence a tile belongs to: the last s < n_seqs with ts[s] <= tile
 * (ts: the tiles' start per sequence, non-decreasing, ts[0] = 0). */
static __device__ __forceinline__ uint32_t tile_seq(const int32_t *ts, uint32_t n_seqs,
						    uint32_t tile)
{
	uint32_t lo = 0, hi = n_seqs;

	while (hi - lo > 1) {
		uint32_t mid = (lo + hi) / 2;

		if ((uint32_t)ts[mid] <= tile)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

#endif

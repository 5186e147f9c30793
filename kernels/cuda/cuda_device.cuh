/* SPDX-License-Identifier: MIT */
/*
 * Device helpers shared by the CUDA kernel files: error flags written from
 * device code, warp reductions and bf16 unpacking/rounding. Included by .cu
 * files only.
 */
#ifndef KERN_CUDA_DEVICE_CUH
#define KERN_CUDA_DEVICE_CUH

#include <cuda_bf16.h>
#include <stdint.h>

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

/* Round to bf16 and back: the value an activation holds once stored. */
static __device__ __forceinline__ float bf_round(float x)
{
	return __bfloat162float(__float2bfloat16_rn(x));
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * Device helpers shared by the CUDA kernel files: error flags written from
 * device code and warp reductions. Included by .cu files only.
 */
#ifndef KERN_CUDA_DEVICE_CUH
#define KERN_CUDA_DEVICE_CUH

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

#endif

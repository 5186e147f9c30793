/* SPDX-License-Identifier: MIT */
/*
 * Backend-independent part of the kernels interface: dtype sizes and names,
 * host-side bf16/f16 <-> f32 conversions, and backend selection by name.
 * Without the CUDA backend (HEARTH_CUDA_BACKEND undefined), kern_cuda_new()
 * fails with ENODEV; a CUDA build provides the real one. Backend selection by
 * name falls back from "auto" to the CPU.
 */
#include <errno.h>
#include <string.h>

#include "kern.h"

size_t kern_dtype_size(enum kern_dtype dt)
{
	switch (dt) {
	case KERN_F32:
		return 4;
	case KERN_BF16:
	case KERN_F16:
		return 2;
	}
	return 0;
}

const char *kern_dtype_name(enum kern_dtype dt)
{
	switch (dt) {
	case KERN_F32:
		return "f32";
	case KERN_BF16:
		return "bf16";
	case KERN_F16:
		return "f16";
	}
	return "unknown";
}

static inline uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static inline float f32_from_bits(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

float kern_bf16_to_f32(uint16_t h)
{
	return f32_from_bits((uint32_t)h << 16);
}

uint16_t kern_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	/* NaN: keep the sign and top payload bits, force the quiet bit so that
	 * truncation can never turn it into an infinity. */
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x0040u);
	/* Round to nearest, ties to even: add 0x7fff plus the lowest kept bit.
	 * A carry into the exponent is the correct rounding (up to inf). */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

float kern_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;

	if (exp == 0x1f) /* inf / nan: keep the payload */
		return f32_from_bits(sign | 0x7f800000u | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return f32_from_bits(sign);
		/* Subnormal: man * 2^-24 is exact in fp32; apply the sign bitwise
		 * so that the result does not depend on float negation rules. */
		return f32_from_bits(sign | f32_bits((float)man * 0x1p-24f));
	}
	return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

void kern_to_f32(float *dst, const void *src, enum kern_dtype dt, size_t n)
{
	const uint16_t *s16 = src;

	switch (dt) {
	case KERN_F32:
		if (n)
			memcpy(dst, src, n * sizeof(float));
		return;
	case KERN_BF16:
		for (size_t i = 0; i < n; i++)
			dst[i] = kern_bf16_to_f32(s16[i]);
		return;
	case KERN_F16:
		for (size_t i = 0; i < n; i++)
			dst[i] = kern_f16_to_f32(s16[i]);
		return;
	}
}

#ifndef HEARTH_CUDA_BACKEND
struct kern_backend *kern_cuda_new(int device_index)
{
	(void)device_index;
	errno = ENODEV; /* not built: the caller logs "CUDA backend not built" */
	return NULL;
}
#endif

struct kern_backend *kern_backend_new(const char *name, int device_index, int n_threads)
{
	struct kern_backend *be;

	if (!name) {
		errno = EINVAL;
		return NULL;
	}
	if (!strcmp(name, "cpu"))
		return kern_cpu_new(n_threads);
	if (!strcmp(name, "cuda"))
		return kern_cuda_new(device_index);
	if (!strcmp(name, "auto")) {
		be = kern_cuda_new(device_index);
		if (be)
			return be;
		return kern_cpu_new(n_threads);
	}
	errno = EINVAL;
	return NULL;
}

void kern_backend_free(struct kern_backend *be)
{
	if (!be)
		return;
	if (be->ops && be->ops->destroy)
		be->ops->destroy(be);
}

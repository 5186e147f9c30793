/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of kern_common.c and the cpu backend's memory side: dtype table,
 * bf16/f16 conversions (exhaustive over 16-bit inputs, rounding to nearest
 * even, NaN, subnormals), backend selection by name, alloc / copies /
 * weight_upload.
 */
#include <errno.h>
#include <stdint.h>

#include "kt.h"

static uint32_t bits_of(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float float_of(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static void test_dtype(void)
{
	KT_CHECK_EQ_INT(kern_dtype_size(KERN_F32), 4);
	KT_CHECK_EQ_INT(kern_dtype_size(KERN_BF16), 2);
	KT_CHECK_EQ_INT(kern_dtype_size(KERN_F16), 2);
	KT_CHECK_EQ_INT(kern_dtype_size((enum kern_dtype)7), 0);
	KT_CHECK(!strcmp(kern_dtype_name(KERN_F32), "f32"));
	KT_CHECK(!strcmp(kern_dtype_name(KERN_BF16), "bf16"));
	KT_CHECK(!strcmp(kern_dtype_name(KERN_F16), "f16"));
	KT_CHECK(kern_dtype_name((enum kern_dtype)7) != NULL);
}

/* Reference bf16 rounding: pick the nearer of the two bf16 neighbours of a
 * finite x in double arithmetic, the even one on a tie. */
static uint16_t ref_bf16(float x)
{
	uint32_t u = bits_of(x);
	uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
	double dlo, dhi, dx = x;

	if ((u & 0xffffu) == 0)
		return lo;
	/* lo truncates toward zero; hi is the next magnitude (may be inf). */
	dlo = kern_bf16_to_f32(lo);
	dhi = (hi & 0x7fffu) == 0x7f80u ? (x < 0 ? -0x1p128 : 0x1p128) : kern_bf16_to_f32(hi);
	if (fabs(dx - dlo) < fabs(dhi - dx))
		return lo;
	if (fabs(dx - dlo) > fabs(dhi - dx))
		return hi;
	return (lo & 1) ? hi : lo;
}

static void test_bf16(void)
{
	struct kt_rng rng = { 11 };
	int bad = 0;

	/* Every non-NaN bf16 value survives the round trip exactly. */
	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = kern_bf16_to_f32((uint16_t)h);

		if (isnan(f))
			continue;
		if (kern_f32_to_bf16(f) != h)
			bad++;
	}
	KT_CHECK_EQ_INT(bad, 0);

	/* Random finite floats round to the nearest, ties to even. */
	bad = 0;
	for (int i = 0; i < 1000000; i++) {
		uint32_t u = (uint32_t)kt_next(&rng);
		float x = float_of(u);

		if (i % 4 == 0) /* force exact ties: low half 0x8000 */
			x = float_of((u & 0xffff0000u) | 0x8000u);
		if (!isfinite(x))
			continue;
		if (kern_f32_to_bf16(x) != ref_bf16(x))
			bad++;
	}
	KT_CHECK_EQ_INT(bad, 0);

	/* Hand-picked ties: 1 + 2^-8 sits between 1 and 1 + 2^-7 (odd):
	 * even wins, so 1.0; 1 + 3*2^-8 sits between 1 + 2^-7 (odd) and
	 * 1 + 2^-6 (even), so up. */
	KT_CHECK_EQ_INT(kern_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
	KT_CHECK_EQ_INT(kern_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
	KT_CHECK_EQ_INT(kern_f32_to_bf16(-(1.0f + 3 * 0x1p-8f)), 0xbf82);
	KT_CHECK_EQ_INT(kern_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
	KT_CHECK_EQ_INT(kern_f32_to_bf16(INFINITY), 0x7f80);
	KT_CHECK_EQ_INT(kern_f32_to_bf16(-INFINITY), 0xff80);
	KT_CHECK_EQ_INT(kern_f32_to_bf16(0x1.fffffep127f), 0x7f80); /* rounds to inf */
	KT_CHECK_EQ_INT(kern_f32_to_bf16(-0.0f), 0x8000);
	KT_CHECK_EQ_INT(kern_bf16_to_f32(0x3fc0), 1.5f);

	/* NaN stays NaN, including payloads only in the low bits that plain
	 * truncation or rounding would turn into inf or carry away. */
	KT_CHECK(isnan(kern_bf16_to_f32(kern_f32_to_bf16(NAN))));
	KT_CHECK(isnan(kern_bf16_to_f32(kern_f32_to_bf16(float_of(0x7f800001u)))));
	KT_CHECK(isnan(kern_bf16_to_f32(kern_f32_to_bf16(float_of(0xffffffffu)))));
	KT_CHECK(isnan(kern_bf16_to_f32(kern_f32_to_bf16(float_of(0x7fffffffu)))));
	KT_CHECK(kern_f32_to_bf16(float_of(0xff800001u)) & 0x8000u);
}

/* Reference f16 decoding from the definition. */
static double ref_f16(uint16_t h, int *ret_nan)
{
	int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
	double v;

	*ret_nan = 0;
	if (exp == 31) {
		if (man) {
			*ret_nan = 1;
			return 0;
		}
		v = INFINITY;
	} else if (exp == 0) {
		v = ldexp(man, -24);
	} else {
		v = ldexp(1024 + man, exp - 25);
	}
	return sign ? -v : v;
}

static void test_f16(void)
{
	int bad = 0;

	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = kern_f16_to_f32((uint16_t)h);
		int nan;
		double ref = ref_f16((uint16_t)h, &nan);

		if (nan) {
			if (!isnan(f) || (signbit(f) != 0) != ((h >> 15) != 0))
				bad++;
			continue;
		}
		if ((double)f != ref || (signbit(f) != 0) != ((h >> 15) != 0))
			bad++;
	}
	KT_CHECK_EQ_INT(bad, 0);
	/* A few named values. */
	KT_CHECK(kern_f16_to_f32(0x0001) == 0x1p-24f);  /* smallest subnormal */
	KT_CHECK(kern_f16_to_f32(0x03ff) == 0x3ffp-24f); /* largest subnormal */
	KT_CHECK(kern_f16_to_f32(0x8001) == -0x1p-24f);
	KT_CHECK(kern_f16_to_f32(0x0400) == 0x1p-14f);   /* smallest normal */
	KT_CHECK(kern_f16_to_f32(0x7bff) == 65504.0f);
	KT_CHECK(kern_f16_to_f32(0x3c00) == 1.0f);
	KT_CHECK(isinf(kern_f16_to_f32(0xfc00)) && kern_f16_to_f32(0xfc00) < 0);
	KT_CHECK(isnan(kern_f16_to_f32(0x7e00)));
}

static void test_to_f32(void)
{
	uint16_t bf[5] = { 0x3f80, 0xc000, 0x0001, 0x7f80, 0x4049 };
	uint16_t hf[4] = { 0x3c00, 0xc000, 0x0001, 0x7c00 };
	float f[3] = { 1.25f, -7.0f, 0x1p-140f };
	float out[5];

	kern_to_f32(out, bf, KERN_BF16, 5);
	for (int i = 0; i < 5; i++)
		KT_CHECK(bits_of(out[i]) == (uint32_t)bf[i] << 16);
	kern_to_f32(out, hf, KERN_F16, 4);
	KT_CHECK(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0x1p-24f && isinf(out[3]));
	kern_to_f32(out, f, KERN_F32, 3);
	KT_CHECK(!memcmp(out, f, sizeof(f)));
}

/* Graph buckets: powers of two to 128, then multiples of 32; every bucket is
 * its own bucket (the GEMM tuning and the warm-up rely on it), never below n,
 * and at most 31 tokens (or half) of padding. */
static void test_step_bucket(void)
{
	static const uint32_t want[][2] = { { 1, 1 },     { 2, 2 },     { 3, 4 },     { 5, 8 },
					    { 64, 64 },   { 65, 128 },  { 128, 128 }, { 129, 160 },
					    { 144, 160 }, { 160, 160 }, { 161, 192 }, { 500, 512 },
					    { 512, 512 } };

	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		KT_CHECK_EQ_INT((int)kern_step_bucket(want[i][0]), (int)want[i][1]);
	for (uint32_t n = 1; n <= KERN_GRAPH_MAX_TOKENS; n++) {
		uint32_t b = kern_step_bucket(n);

		KT_CHECK(b >= n && kern_step_bucket(b) == b && b <= KERN_GRAPH_MAX_TOKENS);
		KT_CHECK(n > 128 ? b - n < 32 : b < 2 * n);
	}
}

static void test_backend_new(void)
{
	struct kern_backend *be;

	/* No GPU (or no CUDA build): ENODEV. With one, a working cuda backend. */
	errno = 0;
	be = kern_cuda_new(0);
	KT_CHECK(be ? !strcmp(be->name, "cuda") : errno == ENODEV);
	kern_backend_free(be);
	errno = 0;
	be = kern_backend_new("cuda", 0, 1);
	KT_CHECK(be ? !strcmp(be->name, "cuda") : errno == ENODEV);
	kern_backend_free(be);
	errno = 0;
	KT_CHECK(kern_backend_new("tpu", 0, 1) == NULL && errno == EINVAL);
	errno = 0;
	KT_CHECK(kern_backend_new(NULL, 0, 1) == NULL && errno == EINVAL);
	errno = 0;
	KT_CHECK(kern_cpu_new(-1) == NULL && errno == EINVAL);
	kern_backend_free(NULL);

	be = kern_backend_new("auto", 0, 2);
	KT_CHECK(be != NULL);
	if (be) {
		KT_CHECK(!strcmp(be->name, "cpu") || !strcmp(be->name, "cuda"));
		kern_backend_free(be);
	}
	be = kern_cpu_new(0);
	KT_CHECK(be != NULL);
	if (be) {
		KT_CHECK(!strcmp(be->name, "cpu") && be->act_bytes == 4 &&
			 be->act_dtype == KERN_F32 && be->device_name[0]);
		kern_backend_free(be);
	}
}

static void test_memory(struct kern_backend *be)
{
	const struct kern_ops *ops = be->ops;
	struct kt_rng rng = { 5 };
	float host[333], back[333];
	uint16_t hb[333];
	float *a, *b, *w;

	kt_fill(&rng, host, 333, 3.0f);
	a = ops->alloc(be, sizeof(host));
	b = ops->alloc(be, sizeof(host));
	KT_CHECK(a && b && ((uintptr_t)a % 64) == 0 && ((uintptr_t)b % 64) == 0);
	if (!a || !b)
		goto out;
	KT_CHECK_EQ_INT(ops->upload(be, a, host, sizeof(host)), 0);
	KT_CHECK_EQ_INT(ops->copy(be, b, a, sizeof(host)), 0);
	KT_CHECK_EQ_INT(ops->sync(be), 0);
	KT_CHECK_EQ_INT(ops->download(be, back, b, sizeof(host)), 0);
	KT_CHECK(!memcmp(back, host, sizeof(host)));
	KT_CHECK_EQ_INT(ops->upload(be, NULL, host, 4), -EINVAL);

	errno = 0;
	KT_CHECK(ops->alloc(be, SIZE_MAX) == NULL && errno == ENOMEM);
	errno = 0;
	KT_CHECK(ops->alloc(be, SIZE_MAX - 32) == NULL && errno == ENOMEM);
	ops->free(be, NULL);

	/* weight_upload converts bf16 to fp32 exactly. */
	for (int i = 0; i < 333; i++)
		hb[i] = kern_f32_to_bf16(host[i]);
	w = ops->weight_upload(be, hb, KERN_BF16, 333);
	KT_CHECK(w != NULL);
	if (w) {
		int bad = 0;

		for (int i = 0; i < 333; i++)
			bad += w[i] != kern_bf16_to_f32(hb[i]);
		KT_CHECK_EQ_INT(bad, 0);
		ops->free(be, w);
	}
	errno = 0;
	KT_CHECK(ops->weight_upload(be, hb, (enum kern_dtype)9, 3) == NULL && errno == EINVAL);
	errno = 0;
	KT_CHECK(ops->weight_upload(be, hb, KERN_BF16, SIZE_MAX / 2) == NULL && errno == ENOMEM);
out:
	ops->free(be, a);
	ops->free(be, b);
}

int main(void)
{
	struct kern_backend *be;

	test_dtype();
	test_bf16();
	test_f16();
	test_to_f32();
	test_step_bucket();
	test_backend_new();
	be = kern_cpu_new(2);
	if (!be) {
		perror("kern_cpu_new");
		return 1;
	}
	test_memory(be);
	kern_backend_free(be);
	return kt_finish("test_kern_common");
}

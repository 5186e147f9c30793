/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the kernels unit tests: a seeded generator of inputs that are
 * never zero, a tolerance check of the form atol + rtol*|ref| that names the
 * worst element, and check macros that count failures instead of aborting.
 */
#ifndef KT_H
#define KT_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"

static int kt_failures;

#define KT_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define KT_CHECK(cond)                                                                  \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
				#cond);                                                 \
			kt_failures++;                                                  \
		}                                                                       \
	} while (0)

#define KT_CHECK_EQ_INT(a, b)                                                           \
	do {                                                                            \
		long long _a = (long long)(a), _b = (long long)(b);                     \
		if (_a != _b) {                                                         \
			fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n",     \
				__FILE__, __LINE__, #a, _a, #b, _b);                    \
			kt_failures++;                                                  \
		}                                                                       \
	} while (0)

/* splitmix64: small, seedable, good enough for test inputs. */
struct kt_rng {
	uint64_t s;
};

static inline uint64_t kt_next(struct kt_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double kt_unif(struct kt_rng *r)
{
	return (double)(kt_next(r) >> 11) * 0x1p-53;
}

static inline uint32_t kt_below(struct kt_rng *r, uint32_t n)
{
	return (uint32_t)(kt_next(r) % n);
}

/* Values in [-scale, -scale/64] U [scale/64, scale]: random sign and magnitude,
 * never zero, so that a kernel that drops a term cannot pass by accident. */
static inline void kt_fill(struct kt_rng *r, float *x, size_t n, float scale)
{
	for (size_t i = 0; i < n; i++) {
		double m = (1.0 / 64) + (63.0 / 64) * kt_unif(r);

		x[i] = (float)((kt_next(r) & 1 ? m : -m) * scale);
	}
}

/* Fisher-Yates. */
static inline void kt_shuffle(struct kt_rng *r, int32_t *a, uint32_t n)
{
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = kt_below(r, i);
		int32_t t = a[i - 1];

		a[i - 1] = a[j];
		a[j] = t;
	}
}

/* Compare got (fp32) against ref (double): every |got - ref| must be within
 * atol + rtol*|ref| (and NaN never is). Reports the worst element; with
 * KT_VERBOSE set in the environment, reports how close every check came. */
static inline int kt_close(const char *what, const float *got, const double *ref, size_t n,
			   double atol, double rtol)
{
	size_t worst = 0, bad = 0;
	double worst_ratio = -1.0;

	for (size_t i = 0; i < n; i++) {
		double err = fabs((double)got[i] - ref[i]);
		double tol = atol + rtol * fabs(ref[i]);
		double ratio = tol > 0 ? err / tol : (err == 0 ? 0 : INFINITY);

		if (!(err <= tol))
			bad++;
		if (isnan(ratio))
			ratio = INFINITY;
		if (ratio > worst_ratio) {
			worst_ratio = ratio;
			worst = i;
		}
	}
	if (getenv("KT_VERBOSE"))
		printf("%s: worst error %.3g of tolerance at [%zu]\n", what, worst_ratio, worst);
	if (bad) {
		fprintf(stderr, "%s: %zu/%zu out of tolerance; worst [%zu] got %.9g ref %.9g\n",
			what, bad, n, worst, (double)got[worst], ref[worst]);
		kt_failures++;
		return -1;
	}
	return 0;
}

/* Backend memory holding a copy of host data (the kernels take backend
 * pointers; on cpu that is host memory, but the tests keep to the contract). */
static inline void *kt_upload(struct kern_backend *be, const void *src, size_t bytes)
{
	void *p = be->ops->alloc(be, bytes);

	if (!p) {
		fprintf(stderr, "alloc of %zu bytes failed\n", bytes);
		exit(1);
	}
	if (be->ops->upload(be, p, src, bytes)) {
		fprintf(stderr, "upload failed\n");
		exit(1);
	}
	return p;
}

static inline void *kt_xmalloc(size_t bytes)
{
	void *p = malloc(bytes ? bytes : 1);

	if (!p) {
		fprintf(stderr, "malloc of %zu bytes failed\n", bytes);
		exit(1);
	}
	return p;
}

static inline int kt_finish(const char *name)
{
	if (kt_failures) {
		fprintf(stderr, "%s: %d failure(s)\n", name, kt_failures);
		return 1;
	}
	printf("%s: ok\n", name);
	return 0;
}

#endif

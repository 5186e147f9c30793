/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the gpu tests: the cuda backend against the cpu backend (the
 * reference) on the same inputs. Inputs are drawn with kt.h's generator and
 * rounded to bf16 first, so both backends start from identical values and
 * what differs is the bf16 storage of results and the order of fp32 sums.
 * A test exits 77 (skipped) with one line when no CUDA device is usable.
 */
#ifndef GT_H
#define GT_H

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kt.h"
#include "kern.h"

/*
 * Tolerances, |cuda - cpu| <= atol + rtol * |cpu|:
 *  - a result stored as bf16 (8 bits of mantissa) carries up to 2^-9 = 0.2%
 *    relative rounding, plus the rounding of bf16 intermediates (the residual,
 *    rotated q/k): single ops use atol 1e-2, rtol 2e-2, about 5x the worst
 *    seen, so that a wrong element (off by a term) still fails;
 *  - fp32 results from bf16 operands (matmul_f32out, softmax) differ only by
 *    summation order: 1e-3 (matmul over k up to 4096), 1e-5 (softmax);
 *  - copies (embed, gather, V into the pages, weight conversion) are exact.
 */
#define GT_ATOL 1e-2
#define GT_RTOL 2e-2

static struct kern_backend *gt_cpu, *gt_gpu;

/* Create both backends, or exit 77 when the cuda one reports ENODEV. */
static inline void gt_init(const char *name)
{
	struct kern_backend *be;

	gt_gpu = kern_cuda_new(0);
	if (!gt_gpu) {
		int e = errno;

		if (e != ENODEV) {
			fprintf(stderr, "%s: kern_cuda_new: %s\n", name, strerror(e));
			exit(1);
		}
		/* The fallback the daemon relies on must work here too. */
		be = kern_backend_new("auto", 0, 1);
		if (!be || strcmp(be->name, "cpu")) {
			fprintf(stderr, "%s: auto backend did not fall back to cpu\n", name);
			exit(1);
		}
		kern_backend_free(be);
		printf("SKIP %s: no usable CUDA device or driver (kern_cuda_new: ENODEV)\n", name);
		exit(77);
	}
	gt_cpu = kern_cpu_new(0);
	if (!gt_cpu) {
		fprintf(stderr, "%s: kern_cpu_new failed\n", name);
		exit(1);
	}
	printf("%s: cuda device: %s\n", name, gt_gpu->device_name);
}

static inline void gt_fini(void)
{
	kern_backend_free(gt_gpu);
	kern_backend_free(gt_cpu);
}

static inline float gt_bf16_round(float x)
{
	return kern_bf16_to_f32(kern_f32_to_bf16(x));
}

/* Random values (kt_fill: never zero), rounded to bf16. */
static inline float *gt_rand(struct kt_rng *r, size_t n, float scale)
{
	float *x = kt_xmalloc(n * sizeof(float));

	kt_fill(r, x, n, scale);
	for (size_t i = 0; i < n; i++)
		x[i] = gt_bf16_round(x[i]);
	return x;
}

/* Backend memory holding x: fp32 on cpu, bf16 on cuda (act_dtype). */
static inline void *gt_put(struct kern_backend *be, const float *x, size_t n)
{
	uint16_t *h;
	void *p;

	if (be->act_dtype == KERN_F32)
		return kt_upload(be, x, n * sizeof(float));
	h = kt_xmalloc(n * sizeof(uint16_t));
	for (size_t i = 0; i < n; i++)
		h[i] = kern_f32_to_bf16(x[i]);
	p = kt_upload(be, h, n * sizeof(uint16_t));
	free(h);
	return p;
}

/* A weight of n fp32 values (the reference's, already bf16-exact) in the
 * backend's weight format; exits on failure. */
static inline void *gt_put_weight(struct kern_backend *be, const float *w, size_t n)
{
	void *p = be->ops->weight_upload(be, w, KERN_F32, n);

	if (!p) {
		fprintf(stderr, "weight_upload failed\n");
		exit(1);
	}
	return p;
}

/* Host fp32 copy of n activations in backend memory. */
static inline float *gt_get(struct kern_backend *be, const void *d, size_t n)
{
	float *x = kt_xmalloc(n * sizeof(float));
	uint16_t *h;
	int r;

	if (be->act_dtype == KERN_F32) {
		r = be->ops->download(be, x, d, n * sizeof(float));
	} else {
		h = kt_xmalloc(n * sizeof(uint16_t));
		r = be->ops->download(be, h, d, n * sizeof(uint16_t));
		kern_to_f32(x, h, KERN_BF16, n);
		free(h);
	}
	if (r) {
		fprintf(stderr, "download failed: %d\n", r);
		exit(1);
	}
	return x;
}

static inline float *gt_get_f32(struct kern_backend *be, const void *d, size_t n)
{
	float *x = kt_xmalloc(n * sizeof(float));

	if (be->ops->download(be, x, d, n * sizeof(float))) {
		fprintf(stderr, "download failed\n");
		exit(1);
	}
	return x;
}

/*
 * got (cuda) against ref (cpu): every element within atol + rtol*|ref|, NaN
 * never. Prints one line with the largest absolute error and the worst
 * fraction of the tolerance used, always (the figures go into reports).
 */
static inline int gt_close(const char *what, const float *got, const float *ref, size_t n,
			   double atol, double rtol)
{
	double max_abs = 0, worst = 0;
	size_t bad = 0, wi = 0;

	for (size_t i = 0; i < n; i++) {
		double err = fabs((double)got[i] - ref[i]);
		double tol = atol + rtol * fabs((double)ref[i]);
		double ratio = tol > 0 ? err / tol : (err == 0 ? 0 : INFINITY);

		if (!(err <= tol)) {
			bad++;
			if (isnan(ratio))
				ratio = INFINITY;
		}
		if (err > max_abs)
			max_abs = err;
		if (ratio > worst) {
			worst = ratio;
			wi = i;
		}
	}
	printf("  %-44s n=%-8zu max|err|=%-10.3g worst=%.3f of tol\n", what, n, max_abs, worst);
	if (bad) {
		fprintf(stderr, "%s: %zu/%zu out of tolerance; worst [%zu] got %.9g ref %.9g\n",
			what, bad, n, wi, (double)got[wi], (double)ref[wi]);
		kt_failures++;
		return -1;
	}
	return 0;
}

#endif

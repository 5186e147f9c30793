/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the cpu backend's row-wise operations and matmul against naive
 * double-precision references on fresh random inputs: embed, add_rmsnorm,
 * matmul (gemv and gemm paths, bias, odd sizes), matmul_acc, matmul_f32out, swiglu,
 * gather_rows, argmax (ties), softmax_ids, and their argument checks.
 */
#include <errno.h>

#include "kt.h"

/* fp32 kernels against double references: errors are a few fp32 ulps. */
#define ATOL 2e-6
#define RTOL 2e-6

static struct kt_rng rng = { 0x6b65726eull };

static float *dev_rand(struct kern_backend *be, float *host, size_t n, float scale)
{
	kt_fill(&rng, host, n, scale);
	return kt_upload(be, host, n * sizeof(float));
}

static void test_embed(struct kern_backend *be)
{
	const uint32_t vocab = 37, dim = 19, n = 9;
	float *table = kt_xmalloc(vocab * dim * sizeof(float));
	float *got = kt_xmalloc(n * dim * sizeof(float));
	double *ref = kt_xmalloc(n * dim * sizeof(double));
	int32_t ids[9];
	float *d_table, *d_out;
	int32_t *d_ids;

	d_table = dev_rand(be, table, (size_t)vocab * dim, 1.0f);
	for (uint32_t i = 0; i < n; i++)
		ids[i] = (int32_t)kt_below(&rng, vocab);
	ids[0] = 0;
	ids[n - 1] = (int32_t)vocab - 1;
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < dim; j++)
			ref[i * dim + j] = table[(size_t)ids[i] * dim + j];
	d_ids = kt_upload(be, ids, sizeof(ids));
	d_out = be->ops->alloc(be, n * dim * sizeof(float));
	KT_CHECK_EQ_INT(be->ops->embed(be, d_out, d_table, d_ids, n, dim, vocab), 0);
	be->ops->download(be, got, d_out, n * dim * sizeof(float));
	kt_close("embed", got, ref, (size_t)n * dim, 0, 0);

	/* A bad id anywhere: -EINVAL and nothing written, not even rows before it. */
	for (int bad = 0; bad < 2; bad++) {
		int32_t bad_ids[9];
		float sentinel = -12345.0f;

		memcpy(bad_ids, ids, sizeof(ids));
		bad_ids[5] = bad ? (int32_t)vocab : -1;
		be->ops->upload(be, d_ids, bad_ids, sizeof(bad_ids));
		for (uint32_t i = 0; i < n * dim; i++)
			d_out[i] = sentinel;
		KT_CHECK_EQ_INT(be->ops->embed(be, d_out, d_table, d_ids, n, dim, vocab), -EINVAL);
		for (uint32_t i = 0; i < n * dim; i++)
			if (d_out[i] != sentinel) {
				KT_CHECK(!"embed wrote before rejecting a bad id");
				break;
			}
	}
	KT_CHECK_EQ_INT(be->ops->embed(be, d_out, d_table, d_ids, 0, dim, vocab), -EINVAL);
	KT_CHECK_EQ_INT(be->ops->embed(be, d_out, NULL, d_ids, n, dim, vocab), -EINVAL);

	be->ops->free(be, d_table);
	be->ops->free(be, d_ids);
	be->ops->free(be, d_out);
	free(table);
	free(got);
	free(ref);
}

static void one_rmsnorm(struct kern_backend *be, uint32_t n, uint32_t dim, int with_add,
			float scale, float eps)
{
	size_t ne = (size_t)n * dim;
	float *resid = kt_xmalloc(ne * sizeof(float)), *add = kt_xmalloc(ne * sizeof(float));
	float *w = kt_xmalloc(dim * sizeof(float)), *got = kt_xmalloc(ne * sizeof(float));
	double *ref_out = kt_xmalloc(ne * sizeof(double)), *ref_res = kt_xmalloc(ne * sizeof(double));
	float *d_resid = dev_rand(be, resid, ne, scale);
	float *d_add = dev_rand(be, add, ne, scale / 2);
	float *d_w = dev_rand(be, w, dim, 1.5f);
	float *d_out = be->ops->alloc(be, ne * sizeof(float));
	char what[64];

	for (uint32_t i = 0; i < n; i++) {
		double ss = 0;

		for (uint32_t j = 0; j < dim; j++) {
			double x = resid[(size_t)i * dim + j];

			/* resid is fp32 after the add: round the sum the same way. */
			if (with_add)
				x = (float)((float)x + add[(size_t)i * dim + j]);
			ref_res[(size_t)i * dim + j] = x;
			ss += x * x;
		}
		for (uint32_t j = 0; j < dim; j++)
			ref_out[(size_t)i * dim + j] =
				ref_res[(size_t)i * dim + j] / sqrt(ss / dim + eps) * w[j];
	}
	KT_CHECK_EQ_INT(be->ops->add_rmsnorm(be, d_out, d_resid, with_add ? d_add : NULL, d_w, n,
					     dim, eps),
			0);
	snprintf(what, sizeof(what), "add_rmsnorm n=%u dim=%u add=%d eps=%g out", n, dim, with_add,
		 (double)eps);
	be->ops->download(be, got, d_out, ne * sizeof(float));
	kt_close(what, got, ref_out, ne, ATOL, RTOL);
	snprintf(what, sizeof(what), "add_rmsnorm n=%u dim=%u add=%d resid", n, dim, with_add);
	be->ops->download(be, got, d_resid, ne * sizeof(float));
	kt_close(what, got, ref_res, ne, 0, 0);

	KT_CHECK_EQ_INT(be->ops->add_rmsnorm(be, d_resid, d_resid, NULL, d_w, n, dim, eps), -EINVAL);
	KT_CHECK_EQ_INT(be->ops->add_rmsnorm(be, d_out, d_resid, NULL, d_w, n, 0, eps), -EINVAL);
	KT_CHECK_EQ_INT(be->ops->add_rmsnorm(be, d_out, d_resid, NULL, NULL, n, dim, eps), -EINVAL);

	be->ops->free(be, d_resid);
	be->ops->free(be, d_add);
	be->ops->free(be, d_w);
	be->ops->free(be, d_out);
	free(resid);
	free(add);
	free(w);
	free(got);
	free(ref_out);
	free(ref_res);
}

/* mode: MM_PLAIN matmul, MM_F32OUT matmul_f32out, MM_ACC matmul_acc (onto
 * random values already in out). */
enum { MM_PLAIN, MM_F32OUT, MM_ACC };

static void one_matmul(struct kern_backend *be, uint32_t n, uint32_t k, uint32_t m, int with_bias,
		       int mode)
{
	static const char *const names[] = { "matmul", "matmul_f32out", "matmul_acc" };
	float *in = kt_xmalloc((size_t)n * k * sizeof(float));
	float *w = kt_xmalloc((size_t)m * k * sizeof(float));
	float *bias = kt_xmalloc(m * sizeof(float));
	float *got = kt_xmalloc((size_t)n * m * sizeof(float));
	double *ref = kt_xmalloc((size_t)n * m * sizeof(double));
	float *d_in = dev_rand(be, in, (size_t)n * k, 1.0f);
	float *prev = kt_xmalloc((size_t)n * m * sizeof(float));
	float *d_w, *d_bias = NULL, *d_out;
	char what[80];

	/* Weights go through weight_upload as the model does (fp32 source). */
	kt_fill(&rng, w, (size_t)m * k, 0.5f);
	d_w = be->ops->weight_upload(be, w, KERN_F32, (size_t)m * k);
	KT_CHECK(d_w != NULL);
	if (with_bias) {
		kt_fill(&rng, bias, m, 1.0f);
		d_bias = be->ops->weight_upload(be, bias, KERN_F32, m);
	}
	if (mode == MM_ACC)
		d_out = dev_rand(be, prev, (size_t)n * m, 1.0f);
	else
		d_out = be->ops->alloc(be, (size_t)n * m * sizeof(float));
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < m; j++) {
			double acc = (with_bias ? bias[j] : 0.0) +
				     (mode == MM_ACC ? prev[(size_t)i * m + j] : 0.0);

			for (uint32_t l = 0; l < k; l++)
				acc += (double)in[(size_t)i * k + l] * w[(size_t)j * k + l];
			ref[(size_t)i * m + j] = acc;
		}
	if (mode == MM_F32OUT)
		KT_CHECK_EQ_INT(be->ops->matmul_f32out(be, d_out, d_in, d_w, n, k, m), 0);
	else if (mode == MM_ACC)
		KT_CHECK_EQ_INT(be->ops->matmul_acc(be, d_out, d_in, d_w, n, k, m), 0);
	else
		KT_CHECK_EQ_INT(be->ops->matmul(be, d_out, d_in, d_w, d_bias, n, k, m), 0);
	be->ops->download(be, got, d_out, (size_t)n * m * sizeof(float));
	snprintf(what, sizeof(what), "%s n=%u k=%u m=%u bias=%d", names[mode], n, k, m, with_bias);
	/* fp32 sums of k products of magnitude <= 0.5: error grows like sqrt(k). */
	kt_close(what, got, ref, (size_t)n * m, ATOL * sqrt(k), RTOL);

	KT_CHECK_EQ_INT(be->ops->matmul(be, d_out, d_in, d_w, NULL, 0, k, m), -EINVAL);
	KT_CHECK_EQ_INT(be->ops->matmul(be, d_out, NULL, d_w, NULL, n, k, m), -EINVAL);
	KT_CHECK_EQ_INT(be->ops->matmul_f32out(be, d_out, d_in, d_w, n, k, 0), -EINVAL);

	be->ops->free(be, d_in);
	be->ops->free(be, d_w);
	be->ops->free(be, d_bias);
	be->ops->free(be, d_out);
	free(in);
	free(w);
	free(bias);
	free(got);
	free(ref);
	free(prev);
}

static void test_matmul(struct kern_backend *be)
{
	static const uint32_t shapes[][3] = {
		{ 1, 1, 1 }, { 1, 64, 96 }, { 1, 193, 77 }, { 2, 3, 5 },
		{ 7, 129, 33 }, { 33, 255, 301 }, { 64, 256, 512 },
	};

	for (size_t s = 0; s < KT_ARRAY_SIZE(shapes); s++) {
		for (int bias = 0; bias < 2; bias++)
			one_matmul(be, shapes[s][0], shapes[s][1], shapes[s][2], bias, MM_PLAIN);
		one_matmul(be, shapes[s][0], shapes[s][1], shapes[s][2], 0, MM_ACC);
	}
	one_matmul(be, 1, 200, 1001, 0, MM_F32OUT);
	one_matmul(be, 5, 96, 1003, 0, MM_F32OUT);
}

static void test_swiglu(struct kern_backend *be, uint32_t n, uint32_t dim)
{
	size_t ne = (size_t)n * dim;
	float *g = kt_xmalloc(ne * sizeof(float)), *u = kt_xmalloc(ne * sizeof(float));
	float *got = kt_xmalloc(ne * sizeof(float));
	double *ref = kt_xmalloc(ne * sizeof(double));
	float *d_g = dev_rand(be, g, ne, 8.0f), *d_u = dev_rand(be, u, ne, 2.0f);
	float *d_out = be->ops->alloc(be, ne * sizeof(float));

	for (size_t i = 0; i < ne; i++)
		ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
	KT_CHECK_EQ_INT(be->ops->swiglu(be, d_out, d_g, d_u, n, dim), 0);
	be->ops->download(be, got, d_out, ne * sizeof(float));
	kt_close("swiglu", got, ref, ne, ATOL, RTOL);
	KT_CHECK_EQ_INT(be->ops->swiglu(be, d_out, d_g, NULL, n, dim), -EINVAL);

	/* Extremes: silu(-100) is -0 (not NaN), silu(100) = 100. */
	g[0] = -100.0f;
	g[1] = 100.0f;
	be->ops->upload(be, d_g, g, 2 * sizeof(float));
	be->ops->swiglu(be, d_out, d_g, d_u, 1, 2);
	KT_CHECK(fabsf(d_out[0]) < 1e-30f && fabsf(d_out[1] - 100.0f * u[1]) < 1e-4f);

	be->ops->free(be, d_g);
	be->ops->free(be, d_u);
	be->ops->free(be, d_out);
	free(g);
	free(u);
	free(got);
	free(ref);
}

static void test_gather_rows(struct kern_backend *be)
{
	const uint32_t rows_in = 23, dim = 13, n = 8;
	float *in = kt_xmalloc(rows_in * dim * sizeof(float));
	float got[8 * 13];
	double ref[8 * 13];
	int32_t rows[8] = { 22, 0, 5, 5, 17, 1, 22, 9 };
	float *d_in = dev_rand(be, in, (size_t)rows_in * dim, 1.0f);
	int32_t *d_rows = kt_upload(be, rows, sizeof(rows));
	float *d_out = be->ops->alloc(be, sizeof(got));

	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < dim; j++)
			ref[i * dim + j] = in[(size_t)rows[i] * dim + j];
	KT_CHECK_EQ_INT(be->ops->gather_rows(be, d_out, d_in, d_rows, n, dim), 0);
	be->ops->download(be, got, d_out, sizeof(got));
	kt_close("gather_rows", got, ref, n * dim, 0, 0);
	rows[3] = -2;
	be->ops->upload(be, d_rows, rows, sizeof(rows));
	KT_CHECK_EQ_INT(be->ops->gather_rows(be, d_out, d_in, d_rows, n, dim), -EINVAL);

	be->ops->free(be, d_in);
	be->ops->free(be, d_rows);
	be->ops->free(be, d_out);
	free(in);
}

static void test_argmax(struct kern_backend *be)
{
	const uint32_t n = 6, vocab = 1000;
	float *l = kt_xmalloc(n * vocab * sizeof(float));
	int32_t want[6], got[6];
	float *d_l;
	int32_t *d_out;

	kt_fill(&rng, l, (size_t)n * vocab, 10.0f);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t a = kt_below(&rng, vocab), b = kt_below(&rng, vocab);

		/* Row i has its maximum twice (ties) except row 0 (single). */
		l[i * vocab + a] = 50.0f + (float)i;
		if (i)
			l[i * vocab + b] = 50.0f + (float)i;
		want[i] = (int32_t)((i && b < a) ? b : a);
	}
	/* Ties at both ends of a row. */
	l[5 * vocab + 0] = 1000.0f;
	l[5 * vocab + vocab - 1] = 1000.0f;
	want[5] = 0;
	l[4 * vocab + vocab - 1] = 1000.0f;
	want[4] = (int32_t)vocab - 1;
	d_l = kt_upload(be, l, (size_t)n * vocab * sizeof(float));
	d_out = be->ops->alloc(be, sizeof(got));
	KT_CHECK_EQ_INT(be->ops->argmax(be, d_out, d_l, n, vocab), 0);
	be->ops->download(be, got, d_out, sizeof(got));
	for (uint32_t i = 0; i < n; i++)
		KT_CHECK_EQ_INT(got[i], want[i]);
	KT_CHECK_EQ_INT(be->ops->argmax(be, d_out, d_l, n, 0), -EINVAL);
	be->ops->free(be, d_l);
	be->ops->free(be, d_out);
	free(l);
}

static void test_softmax_ids(struct kern_backend *be)
{
	const uint32_t n = 4, vocab = 500, n_ids = 7;
	int32_t ids[7] = { 3, 499, 0, 250, 17, 3, 88 }; /* a repeated id is allowed */
	float *l = kt_xmalloc(n * vocab * sizeof(float));
	float got[4 * 7];
	double ref[4 * 7];
	float *d_l, *d_out;
	int32_t *d_ids;

	kt_fill(&rng, l, (size_t)n * vocab, 8.0f);
	/* Row 3 has huge logits: a softmax without max subtraction overflows. */
	for (uint32_t j = 0; j < n_ids; j++)
		l[3 * vocab + ids[j]] += 5000.0f;
	for (uint32_t i = 0; i < n; i++) {
		double mx = -INFINITY, sum = 0;

		for (uint32_t j = 0; j < n_ids; j++)
			mx = fmax(mx, l[i * vocab + ids[j]]);
		for (uint32_t j = 0; j < n_ids; j++)
			sum += exp(l[i * vocab + ids[j]] - mx);
		for (uint32_t j = 0; j < n_ids; j++)
			ref[i * n_ids + j] = exp(l[i * vocab + ids[j]] - mx) / sum;
	}
	d_l = kt_upload(be, l, (size_t)n * vocab * sizeof(float));
	d_ids = kt_upload(be, ids, sizeof(ids));
	d_out = be->ops->alloc(be, sizeof(got));
	KT_CHECK_EQ_INT(be->ops->softmax_ids(be, d_out, d_l, d_ids, n, n_ids, vocab), 0);
	be->ops->download(be, got, d_out, sizeof(got));
	kt_close("softmax_ids", got, ref, n * n_ids, 1e-7, 1e-5);
	ids[2] = (int32_t)vocab;
	be->ops->upload(be, d_ids, ids, sizeof(ids));
	KT_CHECK_EQ_INT(be->ops->softmax_ids(be, d_out, d_l, d_ids, n, n_ids, vocab), -EINVAL);
	be->ops->free(be, d_l);
	be->ops->free(be, d_ids);
	be->ops->free(be, d_out);
	free(l);
}

int main(void)
{
	/* 1 thread: serial paths; 3 threads: more threads than this test's rows
	 * need on small shapes, OpenMP regions on the large ones. */
	static const int threads[] = { 1, 3 };

	for (size_t t = 0; t < KT_ARRAY_SIZE(threads); t++) {
		struct kern_backend *be = kern_cpu_new(threads[t]);

		if (!be) {
			perror("kern_cpu_new");
			return 1;
		}
		test_embed(be);
		one_rmsnorm(be, 1, 64, 0, 2.0f, 1e-5f);
		one_rmsnorm(be, 5, 97, 1, 2.0f, 1e-6f);
		/* Small activations: eps is a visible part of the denominator. */
		one_rmsnorm(be, 3, 33, 0, 0.01f, 1e-5f);
		one_rmsnorm(be, 4, 50, 1, 1.0f, 0.1f);
		one_rmsnorm(be, 96, 1024, 1, 2.0f, 1e-5f); /* large enough for OpenMP */
		test_matmul(be);
		test_swiglu(be, 3, 71);
		test_swiglu(be, 64, 1100);
		test_gather_rows(be);
		test_argmax(be);
		test_softmax_ids(be);
		kern_backend_free(be);
	}
	return kt_finish("test_kern_cpu_ops");
}

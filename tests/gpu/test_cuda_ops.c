/* SPDX-License-Identifier: MIT */
/*
 * The cuda backend's memory, copies, weight conversion and row-wise
 * operations against the cpu backend on fresh random inputs: embed,
 * add_rmsnorm, matmul (with and without bias, bf16 and fp32 out, shapes
 * cuBLASLt takes and odd ones it may not), the decode GEMV in each of its
 * shapes at 1..4 rows and the real matrices, swiglu, gather_rows, argmax (ties,
 * NaN), softmax_ids; and the deferred errors: a bad id or row in device
 * memory is reported as -EINVAL by the next sync, once.
 * Tolerances: gt.h. Exit 77 without a CUDA device.
 */
#include "gt.h"
#include "cuda_internal.h"

static struct kt_rng rng = { 0x6770755f6f7073ull };

static void test_memory(void)
{
	struct kern_backend *g = gt_gpu;
	static const size_t sizes[] = { 1, 3, 4096, 100003, (5u << 20) + 3 };
	char what[64];

	for (size_t t = 0; t < KT_ARRAY_SIZE(sizes); t++) {
		size_t n = sizes[t];
		uint8_t *src = kt_xmalloc(n), *dst = kt_xmalloc(n), *orig = kt_xmalloc(n);
		void *a = g->ops->alloc(g, n), *b = g->ops->alloc(g, n);

		for (size_t i = 0; i < n; i++)
			src[i] = (uint8_t)kt_next(&rng);
		memcpy(orig, src, n);
		memset(dst, 0, n);
		KT_CHECK(a && b);
		KT_CHECK_EQ_INT(g->ops->upload(g, a, src, n), 0);
		/* The source is free to change once upload returns. */
		memset(src, 0xa5, n);
		KT_CHECK_EQ_INT(g->ops->copy(g, b, a, n), 0);
		KT_CHECK_EQ_INT(g->ops->download(g, dst, b, n), 0);
		KT_CHECK(!memcmp(orig, dst, n));
		free(orig);
		snprintf(what, sizeof(what), "memory round trip %zu bytes", n);
		printf("  %-44s ok\n", what);
		g->ops->free(g, a);
		g->ops->free(g, b);
		free(src);
		free(dst);
	}
	{
		void *z = g->ops->alloc(g, 0);

		KT_CHECK(z != NULL);
		g->ops->free(g, z);
		g->ops->free(g, NULL);
	}
	KT_CHECK_EQ_INT(g->ops->sync(g), 0);
}

/* Conversion on the device equals the host helpers bit for bit. */
static void test_weight_upload(void)
{
	struct kern_backend *g = gt_gpu;
	const size_t n = (3u << 20) + 5; /* crosses staging chunks for every dtype */
	uint32_t *f32 = kt_xmalloc(n * 4);
	uint16_t *h16 = kt_xmalloc(n * 2), *want = kt_xmalloc(n * 2), *got = kt_xmalloc(n * 2);
	float *tmp = kt_xmalloc(n * 4);
	enum kern_dtype dts[] = { KERN_F32, KERN_F16, KERN_BF16 };

	for (size_t i = 0; i < n; i++) {
		/* Random bit patterns (every exponent, subnormals, infinities), no NaN. */
		uint32_t u = (uint32_t)kt_next(&rng);

		if ((u & 0x7f800000u) == 0x7f800000u)
			u &= ~0x007fffffu;
		f32[i] = u;
		h16[i] = (uint16_t)kt_next(&rng);
		if ((h16[i] & 0x7c00u) == 0x7c00u)
			h16[i] &= 0xfc00u;
	}
	for (size_t d = 0; d < KT_ARRAY_SIZE(dts); d++) {
		const void *src = dts[d] == KERN_F32 ? (const void *)f32 : (const void *)h16;
		size_t bad = 0;
		void *w;

		kern_to_f32(tmp, src, dts[d], n);
		for (size_t i = 0; i < n; i++)
			want[i] = dts[d] == KERN_BF16 ? h16[i] : kern_f32_to_bf16(tmp[i]);
		w = g->ops->weight_upload(g, src, dts[d], n);
		KT_CHECK(w != NULL);
		if (!w)
			continue;
		KT_CHECK_EQ_INT(g->ops->download(g, got, w, n * 2), 0);
		for (size_t i = 0; i < n; i++)
			bad += got[i] != want[i];
		printf("  weight_upload %-30s n=%-8zu mismatches=%zu\n", kern_dtype_name(dts[d]), n,
		       bad);
		KT_CHECK(bad == 0);
		g->ops->free(g, w);
	}
	errno = 0;
	KT_CHECK(g->ops->weight_upload(g, NULL, KERN_F32, 4) == NULL && errno == EINVAL);
	free(f32);
	free(h16);
	free(want);
	free(got);
	free(tmp);
}

static void test_embed(uint32_t dim)
{
	const uint32_t vocab = 1000, n = 37;
	float *table = gt_rand(&rng, (size_t)vocab * dim, 1.0f);
	int32_t ids[37];
	void *tc, *tg, *ic, *ig, *oc, *og;
	float *rc, *rg;
	char what[64];

	for (uint32_t i = 0; i < n; i++)
		ids[i] = (int32_t)kt_below(&rng, vocab);
	ids[0] = 0;
	ids[1] = (int32_t)vocab - 1;
	tc = gt_put_weight(gt_cpu, table, (size_t)vocab * dim);
	tg = gt_put_weight(gt_gpu, table, (size_t)vocab * dim);
	ic = kt_upload(gt_cpu, ids, sizeof(ids));
	ig = kt_upload(gt_gpu, ids, sizeof(ids));
	oc = gt_cpu->ops->alloc(gt_cpu, (size_t)n * dim * 4);
	og = gt_gpu->ops->alloc(gt_gpu, (size_t)n * dim * 2);
	KT_CHECK_EQ_INT(gt_cpu->ops->embed(gt_cpu, oc, tc, ic, n, dim, vocab), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->embed(gt_gpu, og, tg, ig, n, dim, vocab), 0);
	rc = gt_get(gt_cpu, oc, (size_t)n * dim);
	rg = gt_get(gt_gpu, og, (size_t)n * dim);
	snprintf(what, sizeof(what), "embed dim %u", dim);
	gt_close(what, rg, rc, (size_t)n * dim, 0, 0);

	/* An id outside the vocabulary: clamped on the device, reported once. */
	ids[5] = (int32_t)vocab;
	gt_gpu->ops->upload(gt_gpu, ig, ids, sizeof(ids));
	KT_CHECK_EQ_INT(gt_gpu->ops->embed(gt_gpu, og, tg, ig, n, dim, vocab), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), -EINVAL);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->embed(gt_gpu, og, tg, NULL, n, dim, vocab), -EINVAL);

	void *bufs_c[] = { tc, ic, oc }, *bufs_g[] = { tg, ig, og };
	for (int i = 0; i < 3; i++) {
		gt_cpu->ops->free(gt_cpu, bufs_c[i]);
		gt_gpu->ops->free(gt_gpu, bufs_g[i]);
	}
	free(table);
	free(rc);
	free(rg);
}

static void test_add_rmsnorm(uint32_t n, uint32_t dim, int with_add)
{
	size_t ne = (size_t)n * dim;
	float *x = gt_rand(&rng, ne, 2.0f), *a = gt_rand(&rng, ne, 1.0f);
	float *w = gt_rand(&rng, dim, 1.5f);
	void *xc = gt_put(gt_cpu, x, ne), *xg = gt_put(gt_gpu, x, ne);
	void *ac = gt_put(gt_cpu, a, ne), *ag = gt_put(gt_gpu, a, ne);
	void *wc = gt_put_weight(gt_cpu, w, dim), *wg = gt_put_weight(gt_gpu, w, dim);
	void *oc = gt_cpu->ops->alloc(gt_cpu, ne * 4), *og = gt_gpu->ops->alloc(gt_gpu, ne * 2);
	float *rc, *rg, *resc, *resg;
	char what[64];

	KT_CHECK_EQ_INT(gt_cpu->ops->add_rmsnorm(gt_cpu, oc, xc, with_add ? ac : NULL, wc, n, dim,
						 1e-5f), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->add_rmsnorm(gt_gpu, og, xg, with_add ? ag : NULL, wg, n, dim,
						 1e-5f), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->add_rmsnorm(gt_gpu, xg, xg, NULL, wg, n, dim, 1e-5f), -EINVAL);
	rc = gt_get(gt_cpu, oc, ne);
	rg = gt_get(gt_gpu, og, ne);
	resc = gt_get(gt_cpu, xc, ne);
	resg = gt_get(gt_gpu, xg, ne);
	snprintf(what, sizeof(what), "add_rmsnorm %ux%u%s: out", n, dim, with_add ? " +add" : "");
	gt_close(what, rg, rc, ne, GT_ATOL, GT_RTOL);
	snprintf(what, sizeof(what), "add_rmsnorm %ux%u%s: resid", n, dim, with_add ? " +add" : "");
	/* The residual is one bf16 rounding of an exact fp32 sum: 2^-8 relative
	 * at most (just above a power of two), plus a hair for the compare. */
	gt_close(what, resg, resc, ne, 0, 1.0 / 250);

	void *bc[] = { xc, ac, wc, oc }, *bg[] = { xg, ag, wg, og };
	for (int i = 0; i < 4; i++) {
		gt_cpu->ops->free(gt_cpu, bc[i]);
		gt_gpu->ops->free(gt_gpu, bg[i]);
	}
	free(x);
	free(a);
	free(w);
	free(rc);
	free(rg);
	free(resc);
	free(resg);
}

static const char *gemm_path = "";

static void test_matmul(uint32_t n, uint32_t k, uint32_t m, int with_bias)
{
	float *x = gt_rand(&rng, (size_t)n * k, 1.0f);
	float *w = gt_rand(&rng, (size_t)m * k, (float)(1.5 / sqrt(k)));
	float *b = gt_rand(&rng, m, 0.5f);
	void *xc = gt_put(gt_cpu, x, (size_t)n * k), *xg = gt_put(gt_gpu, x, (size_t)n * k);
	void *wc = gt_put_weight(gt_cpu, w, (size_t)m * k);
	void *wg = gt_put_weight(gt_gpu, w, (size_t)m * k);
	void *bc = gt_put_weight(gt_cpu, b, m), *bg = gt_put_weight(gt_gpu, b, m);
	void *oc = gt_cpu->ops->alloc(gt_cpu, (size_t)n * m * 4);
	void *og = gt_gpu->ops->alloc(gt_gpu, (size_t)n * m * 2);
	float *fg = gt_gpu->ops->alloc(gt_gpu, (size_t)n * m * 4);
	float *rc, *rg, *rf;
	char what[80];

	KT_CHECK_EQ_INT(gt_cpu->ops->matmul(gt_cpu, oc, xc, wc, with_bias ? bc : NULL, n, k, m), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->matmul(gt_gpu, og, xg, wg, with_bias ? bg : NULL, n, k, m), 0);
	rc = gt_get(gt_cpu, oc, (size_t)n * m);
	rg = gt_get(gt_gpu, og, (size_t)n * m);
	snprintf(what, sizeof(what), "matmul%s n=%u k=%u m=%u%s", gemm_path, n, k, m,
		 with_bias ? " +bias" : "");
	gt_close(what, rg, rc, (size_t)n * m, GT_ATOL, GT_RTOL);
	free(rc);
	if (!with_bias) {
		KT_CHECK_EQ_INT(gt_cpu->ops->matmul_f32out(gt_cpu, oc, xc, wc, n, k, m), 0);
		KT_CHECK_EQ_INT(gt_gpu->ops->matmul_f32out(gt_gpu, fg, xg, wg, n, k, m), 0);
		rc = gt_get_f32(gt_cpu, oc, (size_t)n * m);
		rf = gt_get_f32(gt_gpu, fg, (size_t)n * m);
		snprintf(what, sizeof(what), "matmul_f32out%s n=%u k=%u m=%u", gemm_path, n, k, m);
		gt_close(what, rf, rc, (size_t)n * m, 1e-3, 1e-3);
		free(rc);
		free(rf);
		/* matmul_acc onto what each holds now (x W^T): 2 x W^T, bf16
		 * rounded once on the gpu (cuBLASLt, beta = 1, at every n) */
		KT_CHECK_EQ_INT(gt_cpu->ops->matmul_acc(gt_cpu, oc, xc, wc, n, k, m), 0);
		KT_CHECK_EQ_INT(gt_gpu->ops->matmul_acc(gt_gpu, og, xg, wg, n, k, m), 0);
		rc = gt_get(gt_cpu, oc, (size_t)n * m);
		free(rg);
		rg = gt_get(gt_gpu, og, (size_t)n * m);
		snprintf(what, sizeof(what), "matmul_acc n=%u k=%u m=%u", n, k, m);
		gt_close(what, rg, rc, (size_t)n * m, 2 * GT_ATOL, GT_RTOL);
		free(rc);
		KT_CHECK_EQ_INT(gt_gpu->ops->matmul_acc(gt_gpu, og, og, wg, n, k, m), -EINVAL);
	}
	KT_CHECK_EQ_INT(gt_gpu->ops->matmul(gt_gpu, og, xg, wg, NULL, 0, k, m), -EINVAL);

	void *fc[] = { xc, wc, bc, oc }, *fgp[] = { xg, wg, bg, og, fg };
	for (int i = 0; i < 4; i++)
		gt_cpu->ops->free(gt_cpu, fc[i]);
	for (int i = 0; i < 5; i++)
		gt_gpu->ops->free(gt_gpu, fgp[i]);
	free(x);
	free(w);
	free(b);
	free(rg);
}

/*
 * Three matrices of one input x[n, k] (q, k, v; matrices 1 and 2 also serve
 * as gate and up), weights and biases on both backends, with the cpu
 * backend's products x W^T (+ b) in oc. og has room for fp32 results.
 */
struct mat3 {
	uint32_t m[3];
	float *w[3], *b[3];
	void *wc[3], *wg[3], *bc[3], *bg[3], *oc[3], *og[3];
};

static void mat3_new(struct mat3 *t, void *xc, uint32_t n, uint32_t k, uint32_t mq, uint32_t mkv,
		     int with_bias)
{
	t->m[0] = mq;
	t->m[1] = t->m[2] = mkv;
	for (int i = 0; i < 3; i++) {
		const uint32_t m = t->m[i];

		t->w[i] = gt_rand(&rng, (size_t)m * k, (float)(1.5 / sqrt(k)));
		t->b[i] = gt_rand(&rng, m, 0.5f);
		t->wc[i] = gt_put_weight(gt_cpu, t->w[i], (size_t)m * k);
		t->wg[i] = gt_put_weight(gt_gpu, t->w[i], (size_t)m * k);
		t->bc[i] = gt_put_weight(gt_cpu, t->b[i], m);
		t->bg[i] = gt_put_weight(gt_gpu, t->b[i], m);
		t->oc[i] = gt_cpu->ops->alloc(gt_cpu, (size_t)n * m * 4);
		t->og[i] = gt_gpu->ops->alloc(gt_gpu, (size_t)n * m * 4);
		KT_CHECK_EQ_INT(gt_cpu->ops->matmul(gt_cpu, t->oc[i], xc, t->wc[i],
						    with_bias ? t->bc[i] : NULL, n, k, m), 0);
	}
}

static void mat3_free(struct mat3 *t)
{
	for (int i = 0; i < 3; i++) {
		void *pc[] = { t->wc[i], t->bc[i], t->oc[i] }, *pg[] = { t->wg[i], t->bg[i], t->og[i] };

		for (int j = 0; j < 3; j++) {
			gt_cpu->ops->free(gt_cpu, pc[j]);
			gt_gpu->ops->free(gt_gpu, pg[j]);
		}
		free(t->w[i]);
		free(t->b[i]);
	}
}

/* silu(x W1^T) * (x W2^T) on the cpu backend (cpu memory, fp32 [n, m[1]]). */
static void *mat3_swiglu_ref(const struct mat3 *t, void *xc, uint32_t n, uint32_t k)
{
	const uint32_t m = t->m[1];
	void *sc = gt_cpu->ops->alloc(gt_cpu, (size_t)n * m * 4);
	void *t1 = gt_cpu->ops->alloc(gt_cpu, (size_t)n * m * 4);
	void *t2 = gt_cpu->ops->alloc(gt_cpu, (size_t)n * m * 4);

	KT_CHECK_EQ_INT(gt_cpu->ops->matmul(gt_cpu, t1, xc, t->wc[1], NULL, n, k, m), 0);
	KT_CHECK_EQ_INT(gt_cpu->ops->matmul(gt_cpu, t2, xc, t->wc[2], NULL, n, k, m), 0);
	KT_CHECK_EQ_INT(gt_cpu->ops->swiglu(gt_cpu, sc, t1, t2, n, m), 0);
	gt_cpu->ops->free(gt_cpu, t1);
	gt_cpu->ops->free(gt_cpu, t2);
	return sc;
}

/* Elements past an output that a kernel must leave alone (test_swiglu_wg). */
#define SG_GUARD 256

/* out's n x m elements and the SG_GUARD after them set to 0xffff (a bf16
 * NaN): an element the kernel does not write fails the comparison. */
static void sg_poison(void *out, size_t nm)
{
	KT_CHECK_EQ_INT(cudaMemset(out, 0xff, (nm + SG_GUARD) * 2), cudaSuccess);
	KT_CHECK_EQ_INT(cudaDeviceSynchronize(), cudaSuccess);
}

/* out against ref, and the guard after it still NaN (no write past n x m). */
static void sg_check(const char *what, const void *out, const float *ref, size_t nm)
{
	float *g = gt_get(gt_gpu, out, nm + SG_GUARD);
	size_t bad = 0;

	gt_close(what, g, ref, nm, GT_ATOL, GT_RTOL);
	for (size_t i = nm; i < nm + SG_GUARD; i++)
		bad += !isnan(g[i]);
	if (bad)
		fprintf(stderr, "%s: %zu of the %d elements past the output written\n", what, bad,
			SG_GUARD);
	KT_CHECK(bad == 0);
	free(g);
}

/* One shape's inputs, weights (mat3's matrices 1 and 2), the cpu backend's
 * answer (rc) and the cuda outputs: sg (with the guard), t1 and t2 (gate
 * and up scratch of the cuBLASLt path). */
struct sg_case {
	uint32_t n, k, m;
	size_t nm;
	float *x, *rc;
	void *xc, *xg, *sc, *sg, *t1, *t2;
	struct mat3 t;
};

static void sg_case_new(struct sg_case *e, uint32_t n, uint32_t k, uint32_t m)
{
	e->n = n, e->k = k, e->m = m, e->nm = (size_t)n * m;
	e->x = gt_rand(&rng, (size_t)n * k, 1.0f);
	e->xc = gt_put(gt_cpu, e->x, (size_t)n * k);
	e->xg = gt_put(gt_gpu, e->x, (size_t)n * k);
	e->sg = gt_gpu->ops->alloc(gt_gpu, (e->nm + SG_GUARD) * 2);
	e->t1 = gt_gpu->ops->alloc(gt_gpu, e->nm * 2);
	e->t2 = gt_gpu->ops->alloc(gt_gpu, e->nm * 2);
	KT_CHECK(e->sg && e->t1 && e->t2);
	mat3_new(&e->t, e->xc, n, k, 8, m, 0);
	e->sc = mat3_swiglu_ref(&e->t, e->xc, n, k);
	e->rc = gt_get(gt_cpu, e->sc, e->nm);
}

static void sg_case_free(struct sg_case *e)
{
	free(e->rc);
	free(e->x);
	gt_cpu->ops->free(gt_cpu, e->sc);
	gt_cpu->ops->free(gt_cpu, e->xc);
	gt_gpu->ops->free(gt_gpu, e->xg);
	gt_gpu->ops->free(gt_gpu, e->sg);
	gt_gpu->ops->free(gt_gpu, e->t1);
	gt_gpu->ops->free(gt_gpu, e->t2);
	mat3_free(&e->t);
}

/* The kernel on e's shape into e->sg, clusters of cl. */
static int sg_run(const struct sg_case *e, int hf, int blocks, int cl)
{
	struct kern_cuda *c = gt_gpu->priv;

	return kc_swiglu_wg(e->sg, e->xg, e->t.wg[1], e->t.wg[2], e->n, e->k, e->m, hf, blocks,
			    cl, c->stream);
}

/* matmul_swiglu with HEARTH_CUDA_SWIGLU_WG's threshold at 1 and clusters of
 * cl (the kernel where it takes the shape, else cuBLASLt), checked. */
static void sg_via_op(const struct sg_case *e, int cl, const char *tag)
{
	struct kern_cuda *c = gt_gpu->priv;
	const uint32_t was = c->swiglu_wg;
	const int was_cl = c->swiglu_wg_cl;
	char what[128];

	sg_poison(e->sg, e->nm);
	c->swiglu_wg = 1;
	c->swiglu_wg_cl = cl;
	KT_CHECK_EQ_INT(gt_gpu->ops->matmul_swiglu(gt_gpu, e->sg, e->t1, e->t2, e->xg, e->t.wg[1],
						   e->t.wg[2], e->n, e->k, e->m),
			0);
	c->swiglu_wg = was;
	c->swiglu_wg_cl = was_cl;
	snprintf(what, sizeof(what), "matmul_swiglu (%s) n=%u k=%u m=%u cluster=%d", tag, e->n,
		 e->k, e->m, cl);
	sg_check(what, e->sg, e->rc, e->nm);
}

/*
 * Clusters of two run the same wgmma a tile as one CTA a cluster: e->sg
 * (just written at cl = 2) must hold the bits of a cl = 1 run, and three
 * more cl = 2 runs the same again (a race between the two CTAs of a
 * cluster would show as a run that differs, which a tolerance might not).
 */
static void sg_same_bits(const struct sg_case *e, int blocks)
{
	struct kern_cuda *c = gt_gpu->priv;
	float *g2 = gt_get(gt_gpu, e->sg, e->nm), *g1, *g;
	const size_t bytes = e->nm * sizeof(float);

	KT_CHECK_EQ_INT(sg_run(e, c->hf_round, blocks, 1), 0);
	g1 = gt_get(gt_gpu, e->sg, e->nm);
	if (memcmp(g1, g2, bytes))
		fprintf(stderr, "swiglu_wg n=%u k=%u m=%u: clusters of 2 and 1 differ\n", e->n, e->k,
			e->m);
	KT_CHECK(memcmp(g1, g2, bytes) == 0);
	for (int rep = 0; rep < 3; rep++) {
		sg_poison(e->sg, e->nm);
		KT_CHECK_EQ_INT(sg_run(e, c->hf_round, blocks, 2), 0);
		g = gt_get(gt_gpu, e->sg, e->nm);
		if (memcmp(g1, g, bytes))
			fprintf(stderr, "swiglu_wg n=%u k=%u m=%u: cluster run %d differs\n", e->n,
				e->k, e->m, rep);
		KT_CHECK(memcmp(g1, g, bytes) == 0);
		free(g);
	}
	free(g1);
	free(g2);
}

/*
 * gate/up with the SwiGLU in a wgmma epilogue (cuda_gemm_wg.cu) against the
 * cpu backend's two matmuls and swiglu: directly, over n_sms blocks (0: the
 * device's; fewer than the tiles makes each block take several, so the
 * barriers' phases run on across tiles) in clusters of cl (2: the weights
 * multicast to a pair of row tiles, also checked bit for bit against 1),
 * with and without transformers' rounding, and through matmul_swiglu with
 * HEARTH_CUDA_SWIGLU_WG's threshold at 1. The outputs start as NaN with a
 * guard after them. Returns 0, or -1 where the kernel cannot run here (not
 * an sm_90a build on a 9.0 device); a refusal where it can is a failure.
 */
static int test_swiglu_wg(uint32_t n, uint32_t k, uint32_t m, int n_sms, int cl)
{
	struct kern_cuda *c = gt_gpu->priv;
	const int can = kc_wgmma_device() && kc_tma_encoder() != NULL;
	const int blocks = n_sms ? n_sms : c->n_sms;
	struct sg_case e;
	char what[128];
	int r;

	sg_case_new(&e, n, k, m);
	sg_poison(e.sg, e.nm);
	r = sg_run(&e, c->hf_round, blocks, cl);
	if (can || r != -EINVAL) {
		KT_CHECK_EQ_INT(r, 0);
		snprintf(what, sizeof(what), "swiglu_wg n=%u k=%u m=%u blocks=%d cluster=%d", n, k,
			 m, blocks, cl);
		sg_check(what, e.sg, e.rc, e.nm);
		if (cl == 2)
			sg_same_bits(&e, blocks);
		/* the other rounding (one more bf16 rounding of silu(gate) or not) */
		sg_poison(e.sg, e.nm);
		KT_CHECK_EQ_INT(sg_run(&e, !c->hf_round, blocks, cl), 0);
		snprintf(what, sizeof(what), "swiglu_wg hf=%d n=%u k=%u m=%u cluster=%d", !c->hf_round,
			 n, k, m, cl);
		sg_check(what, e.sg, e.rc, e.nm);
		/* through the op, the rows past the skinny kernel's */
		sg_via_op(&e, cl, "wg from 1 row");
	}
	sg_case_free(&e);
	return r == -EINVAL ? -1 : 0;
}

/* Shapes the kernel refuses (k not a multiple of 64, m not of 128; on the
 * first, a cluster of 3 and an input not 16-byte aligned): -EINVAL at once,
 * and matmul_swiglu with the knob at 1 then gives the cuBLASLt path's
 * right answer. */
static void test_swiglu_wg_refusals(void)
{
	static const uint32_t shp[][3] = { { 70, 96, 256 }, { 70, 128, 200 } };
	struct kern_cuda *c = gt_gpu->priv;

	for (size_t i = 0; i < KT_ARRAY_SIZE(shp); i++) {
		struct sg_case e;

		sg_case_new(&e, shp[i][0], shp[i][1], shp[i][2]);
		KT_CHECK_EQ_INT(sg_run(&e, 0, c->n_sms, 1), -EINVAL);
		sg_via_op(&e, 1, "wg refused");
		if (i == 0) {
			KT_CHECK_EQ_INT(kc_swiglu_wg(e.sg, e.xg, e.t.wg[1], e.t.wg[2], 64, 64, 128, 0,
						     c->n_sms, 3, c->stream),
					-EINVAL);
			KT_CHECK_EQ_INT(kc_swiglu_wg(e.sg, (char *)e.xg + 2, e.t.wg[1], e.t.wg[2], 64,
						     64, 128, 0, c->n_sms, 1, c->stream),
					-EINVAL);
		}
		sg_case_free(&e);
	}
}

/*
 * Matrices 1 and 2 of t (weights, biases, and room for outputs) copied into
 * one buffer each, matrix 1 first, so that their relative placement is
 * known whatever the allocator does: pk->w[i], pk->b[i], pk->o[i].
 */
struct packed12 {
	void *wbuf, *bbuf, *obuf;
	void *w[3], *b[3], *o[3];
};

static void packed12_new(struct packed12 *pk, const struct mat3 *t, uint32_t n, uint32_t k)
{
	const size_t wb = (size_t)t->m[1] * k * 2, bb = (size_t)t->m[1] * 2;
	const size_t ob = (size_t)n * t->m[1] * 4;

	pk->wbuf = gt_gpu->ops->alloc(gt_gpu, 2 * wb);
	pk->bbuf = gt_gpu->ops->alloc(gt_gpu, 2 * bb);
	pk->obuf = gt_gpu->ops->alloc(gt_gpu, 2 * ob);
	KT_CHECK(pk->wbuf && pk->bbuf && pk->obuf);
	for (int i = 1; i < 3; i++) {
		pk->w[i] = (char *)pk->wbuf + (i - 1) * wb;
		pk->b[i] = (char *)pk->bbuf + (i - 1) * bb;
		pk->o[i] = (char *)pk->obuf + (i - 1) * ob;
		KT_CHECK_EQ_INT(gt_gpu->ops->copy(gt_gpu, pk->w[i], t->wg[i], wb), 0);
		KT_CHECK_EQ_INT(gt_gpu->ops->copy(gt_gpu, pk->b[i], t->bg[i], bb), 0);
	}
}

static void packed12_free(struct packed12 *pk)
{
	gt_gpu->ops->free(gt_gpu, pk->wbuf);
	gt_gpu->ops->free(gt_gpu, pk->bbuf);
	gt_gpu->ops->free(gt_gpu, pk->obuf);
}

/*
 * The fused ops against the cpu backend's plain matmul (+ swiglu). k and v
 * (matrices 1 and 2, packed in that order) run three ways: as placed, both
 * exchanged (k from the later weight into the later output), and crossed
 * (k's weight first, its output second: no strided pair fits, so two
 * launches); matmul_swiglu runs with its scratch buffers in both orders.
 * Returns how many kc_gemm_pair launches ran: past the rows of the GEMV and
 * skinny kernels, 2 for k/v and 2 for gate/up.
 */
static uint64_t test_fused(uint32_t n, uint32_t k, uint32_t mq, uint32_t mkv, int with_bias)
{
	static const char *const how[] = { "", " (k, v exchanged)", " (k, v crossed)" };
	struct kern_cuda *c = gt_gpu->priv;
	const uint64_t pairs0 = c->n_pairs;
	float *x = gt_rand(&rng, (size_t)n * k, 1.0f), *rc, *rg;
	void *xc = gt_put(gt_cpu, x, (size_t)n * k), *xg = gt_put(gt_gpu, x, (size_t)n * k);
	struct packed12 pk;
	struct mat3 t;
	char what[96];

	mat3_new(&t, xc, n, k, mq, mkv, with_bias);
	packed12_new(&pk, &t, n, k);
	for (int sw = 0; sw < 3; sw++) {
		const int a = sw == 1 ? 2 : 1, b = sw == 1 ? 1 : 2; /* k's and v's matrix */
		void *out[3] = { t.og[0], pk.o[1], pk.o[2] };

		if (sw == 2) { /* k's output after v's */
			out[1] = pk.o[2];
			out[2] = pk.o[1];
		}
		KT_CHECK_EQ_INT(gt_gpu->ops->matmul_qkv(gt_gpu, out[0], out[a], out[b], xg, t.wg[0],
							pk.w[a], pk.w[b],
							with_bias ? t.bg[0] : NULL,
							with_bias ? pk.b[a] : NULL,
							with_bias ? pk.b[b] : NULL, n, k, mq, mkv),
				0);
		for (int i = 0; i < 3; i++) {
			rc = gt_get(gt_cpu, t.oc[i], (size_t)n * t.m[i]);
			rg = gt_get(gt_gpu, out[i], (size_t)n * t.m[i]);
			snprintf(what, sizeof(what), "matmul_qkv[%d] n=%u k=%u m=%u%s%s", i, n, k,
				 t.m[i], with_bias ? " +bias" : "", how[sw]);
			gt_close(what, rg, rc, (size_t)n * t.m[i], GT_ATOL, GT_RTOL);
			free(rc);
			free(rg);
		}
	}
	/* SwiGLU of matrices 1 and 2 (same m): silu(x W1^T) * (x W2^T). */
	for (int sw = 0; sw < 2; sw++) {
		void *sc = mat3_swiglu_ref(&t, xc, n, k);
		void *sg = gt_gpu->ops->alloc(gt_gpu, (size_t)n * mkv * 2);
		void *t1 = gt_gpu->ops->alloc(gt_gpu, (size_t)n * mkv * 2);
		void *t2 = gt_gpu->ops->alloc(gt_gpu, (size_t)n * mkv * 2);

		KT_CHECK_EQ_INT(gt_gpu->ops->matmul_swiglu(gt_gpu, sg, sw ? t2 : t1, sw ? t1 : t2, xg,
							   pk.w[1], pk.w[2], n, k, mkv),
				0);
		rc = gt_get(gt_cpu, sc, (size_t)n * mkv);
		rg = gt_get(gt_gpu, sg, (size_t)n * mkv);
		snprintf(what, sizeof(what), "matmul_swiglu n=%u k=%u m=%u%s", n, k, mkv,
			 sw ? " (scratch exchanged)" : "");
		gt_close(what, rg, rc, (size_t)n * mkv, GT_ATOL, GT_RTOL);
		free(rc);
		free(rg);
		gt_cpu->ops->free(gt_cpu, sc);
		gt_gpu->ops->free(gt_gpu, sg);
		gt_gpu->ops->free(gt_gpu, t1);
		gt_gpu->ops->free(gt_gpu, t2);
	}
	packed12_free(&pk);
	mat3_free(&t);
	gt_cpu->ops->free(gt_cpu, xc);
	gt_gpu->ops->free(gt_gpu, xg);
	free(x);
	return c->n_pairs - pairs0;
}

/*
 * The GEMV in each of its shapes (rows per warp 1, 2, 4; one block or as
 * many as fit; PDL on and off) against the cpu backend: a plain matmul
 * (+bias, bf16 or fp32 out), q/k/v stacked with biases, and SwiGLU.
 */
static void test_gemv_cfgs(uint32_t n, uint32_t k, uint32_t m, uint32_t mkv)
{
	struct kern_cuda *c = gt_gpu->priv;
	static const struct kc_gemv_cfg cfgs[] = {
		{ 1, 264, 1 }, { 1, 1, 0 }, { 2, 264, 1 }, { 4, 132, 0 }, { 4, 1000, 1 },
	};
	float *x = gt_rand(&rng, (size_t)n * k, 1.0f), *rc, *rg;
	void *xc = gt_put(gt_cpu, x, (size_t)n * k), *xg = gt_put(gt_gpu, x, (size_t)n * k);
	void *sc, *sg;
	struct mat3 t;
	char what[96];

	mat3_new(&t, xc, n, k, m, mkv, 1);
	sc = mat3_swiglu_ref(&t, xc, n, k);
	sg = gt_gpu->ops->alloc(gt_gpu, (size_t)n * mkv * 2);
	for (size_t ci = 0; ci < KT_ARRAY_SIZE(cfgs); ci++) {
		const struct kc_gemv_cfg *cf = &cfgs[ci];
		struct kc_gemv_seg seg[3];

		for (int i = 0; i < 3; i++)
			seg[i] = (struct kc_gemv_seg){ t.og[i], t.wg[i], t.bg[i], t.m[i] };
		KT_CHECK_EQ_INT(kc_gemv_multi_cfg(seg, xg, n, k, 0, cf, c->stream), 0);
		for (int i = 0; i < 3; i++) {
			rc = gt_get(gt_cpu, t.oc[i], (size_t)n * t.m[i]);
			rg = gt_get(gt_gpu, t.og[i], (size_t)n * t.m[i]);
			snprintf(what, sizeof(what), "gemv r%u b%u%s qkv[%d] n=%u k=%u m=%u +bias",
				 cf->rows, cf->blocks, cf->pdl ? " pdl" : "", i, n, k, t.m[i]);
			gt_close(what, rg, rc, (size_t)n * t.m[i], GT_ATOL, GT_RTOL);
			free(rc);
			free(rg);
		}
		/* one matrix, fp32 out (the LM head's form) */
		seg[0].bias = NULL;
		seg[1].m = seg[2].m = 0;
		KT_CHECK_EQ_INT(gt_cpu->ops->matmul_f32out(gt_cpu, t.oc[0], xc, t.wc[0], n, k, m), 0);
		KT_CHECK_EQ_INT(kc_gemv_multi_cfg(seg, xg, n, k, 1, cf, c->stream), 0);
		rc = gt_get_f32(gt_cpu, t.oc[0], (size_t)n * m);
		rg = gt_get_f32(gt_gpu, t.og[0], (size_t)n * m);
		snprintf(what, sizeof(what), "gemv r%u b%u%s f32 n=%u k=%u m=%u", cf->rows,
			 cf->blocks, cf->pdl ? " pdl" : "", n, k, m);
		gt_close(what, rg, rc, (size_t)n * m, 1e-3, 1e-3);
		free(rc);
		free(rg);
		KT_CHECK_EQ_INT(gt_cpu->ops->matmul(gt_cpu, t.oc[0], xc, t.wc[0], t.bc[0], n, k, m),
				0);
		KT_CHECK_EQ_INT(kc_gemv_swiglu_cfg(sg, xg, t.wg[1], t.wg[2], n, k, mkv, 0, cf,
						   c->stream), 0);
		rc = gt_get(gt_cpu, sc, (size_t)n * mkv);
		rg = gt_get(gt_gpu, sg, (size_t)n * mkv);
		snprintf(what, sizeof(what), "gemv r%u b%u%s swiglu n=%u k=%u m=%u", cf->rows,
			 cf->blocks, cf->pdl ? " pdl" : "", n, k, mkv);
		gt_close(what, rg, rc, (size_t)n * mkv, GT_ATOL, GT_RTOL);
		free(rc);
		free(rg);
	}
	mat3_free(&t);
	gt_cpu->ops->free(gt_cpu, xc);
	gt_cpu->ops->free(gt_cpu, sc);
	gt_gpu->ops->free(gt_gpu, xg);
	gt_gpu->ops->free(gt_gpu, sg);
	free(x);
}

/*
 * The inputs of the fused-norm tests: n rows of k (x, the residual, on both
 * backends; a, what is added to it; w, the norm's weight), scratch h, and
 * q/k/v matrices of mq and mkv rows (t).
 */
struct norm_in {
	size_t ne;
	float *x, *a, *w;
	void *xc, *xi, *ag, *wg, *h;
	struct mat3 t;
};

static void norm_in_new(struct norm_in *in, uint32_t n, uint32_t k, uint32_t mq, uint32_t mkv,
			int with_bias)
{
	in->ne = (size_t)n * k;
	in->x = gt_rand(&rng, in->ne, 2.0f);
	in->a = gt_rand(&rng, in->ne, 1.0f);
	in->w = gt_rand(&rng, k, 1.5f);
	in->xc = gt_put(gt_cpu, in->x, in->ne);
	in->xi = gt_put(gt_gpu, in->x, in->ne);
	in->ag = gt_put(gt_gpu, in->a, in->ne);
	in->wg = gt_put_weight(gt_gpu, in->w, k);
	in->h = gt_gpu->ops->alloc(gt_gpu, in->ne * 2);
	mat3_new(&in->t, in->xc, n, k, mq, mkv, with_bias);
}

/* Frees in and the n more backend buffers of p. */
static void norm_in_free(struct norm_in *in, void *const *p, size_t n)
{
	void *bg[] = { in->xi, in->ag, in->wg, in->h };

	for (size_t i = 0; i < KT_ARRAY_SIZE(bg); i++)
		gt_gpu->ops->free(gt_gpu, bg[i]);
	for (size_t i = 0; i < n; i++)
		gt_gpu->ops->free(gt_gpu, p[i]);
	mat3_free(&in->t);
	gt_cpu->ops->free(gt_cpu, in->xc);
	free(in->x);
	free(in->a);
	free(in->w);
}

/*
 * norm_matmul_qkv and norm_matmul_swiglu with the norm in the GEMV's
 * prologue (HEARTH_CUDA_NORM_FUSE=1; the ops are called directly, as the
 * backend offers them only with a fusion knob on) against the same ops with it
 * off (add_rmsnorm, then the GEMV on its output: the path test_add_rmsnorm
 * and test_fused check against the cpu). The residual must come out the
 * same bit for bit and resid_in untouched; the products within the GEMV's
 * tolerance (the sum of squares is reduced in another order). Past
 * KC_GEMV_MAX_N rows both runs take the unfused path.
 */
static void test_norm_fused(uint32_t n, uint32_t k, uint32_t mq, uint32_t mkv, int with_bias,
			    int with_add)
{
	struct kern_cuda *c = gt_gpu->priv;
	const int norm_fuse0 = c->norm_fuse;
	struct norm_in in;
	void *xo[2][2], *out[2][4], *t1 = gt_gpu->ops->alloc(gt_gpu, (size_t)n * mkv * 2),
			       *t2 = gt_gpu->ops->alloc(gt_gpu, (size_t)n * mkv * 2);
	char what[128];

	norm_in_new(&in, n, k, mq, mkv, with_bias);
	const size_t ne = in.ne;
	const struct mat3 t = in.t;
	float *x = in.x;
	void *xi = in.xi, *ag = in.ag, *wg = in.wg, *h = in.h;

	for (int f = 0; f < 2; f++) {
		const uint64_t fused0 = c->n_norm_fused;
		struct kern_norm nm = { .resid_in = xi, .add = with_add ? ag : NULL, .weight = wg,
					.h = h, .eps = 1e-5f };

		c->norm_fuse = f;
		for (int i = 0; i < 2; i++)
			xo[f][i] = gt_gpu->ops->alloc(gt_gpu, ne * 2);
		for (int i = 0; i < 3; i++)
			out[f][i] = gt_gpu->ops->alloc(gt_gpu, (size_t)n * t.m[i] * 2);
		out[f][3] = gt_gpu->ops->alloc(gt_gpu, (size_t)n * mkv * 2);
		nm.resid = xo[f][0];
		KT_CHECK_EQ_INT(kc_norm_matmul_qkv_op(gt_gpu, &nm, NULL, out[f][0], out[f][1],
							     out[f][2], t.wg[0], t.wg[1], t.wg[2],
							     with_bias ? t.bg[0] : NULL,
							     with_bias ? t.bg[1] : NULL,
							     with_bias ? t.bg[2] : NULL, n, k, mq, mkv),
				0);
		nm.resid = xo[f][1];
		KT_CHECK_EQ_INT(kc_norm_matmul_swiglu_op(gt_gpu, &nm, out[f][3], t1, t2,
								t.wg[1], t.wg[2], n, k, mkv),
				0);
		/* The GEMV's rows fuse the norm (two launches here); more rows do not. */
		KT_CHECK_EQ_INT((int)(c->n_norm_fused - fused0), f && n <= KC_GEMV_MAX_N ? 2 : 0);
		nm.resid = xi;
		KT_CHECK_EQ_INT(kc_norm_matmul_qkv_op(gt_gpu, &nm, NULL, out[f][0], out[f][1],
							     out[f][2], t.wg[0], t.wg[1], t.wg[2],
							     NULL, NULL, NULL, n, k, mq, mkv),
				-EINVAL);
	}
	c->norm_fuse = norm_fuse0;
	for (int i = 0; i < 4; i++) {
		const uint32_t m = i < 3 ? t.m[i] : mkv;
		float *r0 = gt_get(gt_gpu, out[0][i], (size_t)n * m);
		float *r1 = gt_get(gt_gpu, out[1][i], (size_t)n * m);

		snprintf(what, sizeof(what), "norm_matmul_%s n=%u k=%u m=%u%s%s: fused vs not",
			 i < 3 ? "qkv" : "swiglu", n, k, m, with_bias ? " +bias" : "",
			 with_add ? " +add" : "");
		gt_close(what, r1, r0, (size_t)n * m, GT_ATOL, GT_RTOL);
		free(r0);
		free(r1);
	}
	for (int i = 0; i < 3; i++) {
		float *r0 = gt_get(gt_gpu, i < 2 ? xo[0][i] : xi, ne);
		float *r1 = i < 2 ? gt_get(gt_gpu, xo[1][i], ne) : x;

		snprintf(what, sizeof(what), "norm_matmul n=%u k=%u%s: %s", n, k,
			 with_add ? " +add" : "", i < 2 ? "resid, fused vs not" : "resid_in kept");
		gt_close(what, r1, r0, ne, 0, 0);
		free(r0);
		if (i < 2)
			free(r1);
	}
	for (int f = 0; f < 2; f++)
		for (int i = 0; i < 4; i++) {
			if (i < 2)
				gt_gpu->ops->free(gt_gpu, xo[f][i]);
			gt_gpu->ops->free(gt_gpu, out[f][i]);
		}
	norm_in_free(&in, (void *[]){ t1, t2 }, 2);
}

/*
 * norm_matmul_qkv with rope: rope_kv_write in the q/k/v GEMV's epilogue.
 * (a) the rope alone fused (the backend's rope_fuse on, norm_fuse off) against add_rmsnorm,
 * the GEMV of the same shape (two matrix rows a warp: the same sums in the
 * same order) and rope_kv_write (checked against the cpu in
 * test_cuda_attention): q, k, v and the whole pool within one bf16 step
 * (rope_pair may contract differently in the two kernels); (b) norm, GEMV
 * and rope in one launch (both on)
 * against (a) within the GEMV's tolerance (the norm's sum of squares is
 * reduced in another order). The last of several tokens is a padding one
 * (it writes no page); a slot past the pool and a negative position are
 * reported by the next sync; heads that do not match q are refused.
 */
static void test_qkv_rope(uint32_t n, uint32_t k, uint32_t nh, uint32_t nkv, uint32_t hd,
			  int with_bias)
{
	struct kern_cuda *c = gt_gpu->priv;
	const int norm_fuse0 = c->norm_fuse, rope_fuse0 = c->rope_fuse;
	const uint32_t mq = nh * hd, mkv = nkv * hd, m3[3] = { mq, mkv, mkv };
	struct kern_kv kv = { .n_pages = 6, .page_tokens = 16, .n_layers = 2, .n_kv_heads = nkv,
			      .head_dim = hd };
	const size_t pe = kv.n_pages * kern_kv_page_elems(&kv);
	float *pool = gt_rand(&rng, pe, 1.0f), *inv = kt_xmalloc(hd / 2 * sizeof(float)), *got[3][4];
	int32_t pos[KC_GEMV_MAX_N], slot[KC_GEMV_MAX_N], bad;
	struct norm_in in;
	void *resid, *out[3], *posd, *slotd, *invd;
	struct kern_batch b = { .n_tokens = n, .n_seqs = n };
	struct kern_rope rope = { .batch = &b, .kv = &kv, .layer = 1, .n_heads = nh };
	char what[128];

	norm_in_new(&in, n, k, mq, mkv, with_bias);
	const size_t ne = in.ne;
	const struct mat3 t = in.t;
	void *xi = in.xi, *ag = in.ag, *wg = in.wg, *h = in.h;
	struct kern_norm nm = { .resid = NULL, .resid_in = xi, .add = ag, .weight = wg, .h = h,
				.eps = 1e-5f };

	resid = gt_gpu->ops->alloc(gt_gpu, ne * 2);
	nm.resid = resid;

	for (uint32_t d = 0; d < hd / 2; d++)
		inv[d] = powf(500000.0f, -2.0f * (float)d / (float)hd);
	for (uint32_t i = 0; i < n; i++) {
		pos[i] = (int32_t)(37 + 301 * i);
		slot[i] = (int32_t)((i * 37 + 5) % (kv.n_pages * kv.page_tokens));
	}
	if (n > 1)
		slot[n - 1] = KERN_SLOT_PAD;
	posd = kt_upload(gt_gpu, pos, n * sizeof(int32_t));
	slotd = kt_upload(gt_gpu, slot, n * sizeof(int32_t));
	invd = kt_upload(gt_gpu, inv, hd / 2 * sizeof(float));
	b.pos = posd;
	b.slot = slotd;
	rope.inv_freq = invd;
	for (int i = 0; i < 3; i++)
		out[i] = gt_gpu->ops->alloc(gt_gpu, (size_t)n * m3[i] * 2);
	/* f = 0: the ops apart; 1: the rope fused; 2: norm and rope fused */
	for (int f = 0; f < 3; f++) {
		const uint64_t rf0 = c->n_rope_fused, nf0 = c->n_norm_fused;

		kv.base = gt_put(gt_gpu, pool, pe);
		c->norm_fuse = f == 2;
		c->rope_fuse = f > 0;
		if (f == 0) {
			const struct kc_gemv_cfg cfg = { 2, (uint32_t)c->n_sms * 2, 1 };
			struct kc_gemv_seg seg[3];

			for (int i = 0; i < 3; i++)
				seg[i] = (struct kc_gemv_seg){ out[i], t.wg[i],
							       with_bias ? t.bg[i] : NULL, m3[i] };
			KT_CHECK_EQ_INT(gt_gpu->ops->copy(gt_gpu, resid, xi, ne * 2), 0);
			KT_CHECK_EQ_INT(gt_gpu->ops->add_rmsnorm(gt_gpu, h, resid, ag, wg, n, k, 1e-5f),
					0);
			KT_CHECK_EQ_INT(kc_gemv_multi_cfg(seg, h, n, k, 0, &cfg, c->stream), 0);
			KT_CHECK_EQ_INT(gt_gpu->ops->rope_kv_write(gt_gpu, out[0], out[1], out[2], &b,
								   &kv, 1, nh, invd), 0);
		} else {
			KT_CHECK_EQ_INT(kc_norm_matmul_qkv_op(
						gt_gpu, &nm, &rope, out[0], out[1], out[2], t.wg[0],
						t.wg[1], t.wg[2], with_bias ? t.bg[0] : NULL,
						with_bias ? t.bg[1] : NULL, with_bias ? t.bg[2] : NULL,
						n, k, mq, mkv),
					0);
			KT_CHECK_EQ_INT((int)(c->n_rope_fused - rf0), 1);
			KT_CHECK_EQ_INT((int)(c->n_norm_fused - nf0), f == 2);
		}
		KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
		for (int i = 0; i < 3; i++)
			got[f][i] = gt_get(gt_gpu, out[i], (size_t)n * m3[i]);
		got[f][3] = gt_get(gt_gpu, kv.base, pe);
		if (f < 2)
			gt_gpu->ops->free(gt_gpu, kv.base);
	}
	for (int f = 1; f < 3; f++)
		for (int i = 0; i < 4; i++) {
			static const char *const nmz[] = { "q", "k", "v", "pool" };
			const size_t cnt = i < 3 ? (size_t)n * m3[i] : pe;

			snprintf(what, sizeof(what), "qkv_rope%s n=%u k=%u heads %u/%u hd %u%s: %s",
				 f == 2 ? " +norm" : "", n, k, nh, nkv, hd, with_bias ? " +bias" : "",
				 nmz[i]);
			gt_close(what, got[f][i], got[f - 1][i], cnt, f == 1 ? 1e-3 : GT_ATOL,
				 f == 1 ? 1.0 / 128 : GT_RTOL);
		}
	/* Bad metadata in device memory: reported by the next sync, once. */
#define QKV_ROPE()                                                                             \
	kc_norm_matmul_qkv_op(gt_gpu, &nm, &rope, out[0], out[1], out[2], t.wg[0], t.wg[1],     \
			      t.wg[2], NULL, NULL, NULL, n, k, mq, mkv)
	bad = (int32_t)(kv.n_pages * kv.page_tokens);
	KT_CHECK_EQ_INT(gt_gpu->ops->upload(gt_gpu, slotd, &bad, sizeof(bad)), 0);
	KT_CHECK_EQ_INT(QKV_ROPE(), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), -EINVAL);
	KT_CHECK_EQ_INT(gt_gpu->ops->upload(gt_gpu, slotd, &slot[0], sizeof(bad)), 0);
	bad = -3;
	KT_CHECK_EQ_INT(gt_gpu->ops->upload(gt_gpu, posd, &bad, sizeof(bad)), 0);
	KT_CHECK_EQ_INT(QKV_ROPE(), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), -EINVAL);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
	rope.n_heads = nh + nkv;
	KT_CHECK_EQ_INT(QKV_ROPE(), -EINVAL);
#undef QKV_ROPE
	c->norm_fuse = norm_fuse0;
	c->rope_fuse = rope_fuse0;
	for (int f = 0; f < 3; f++)
		for (int i = 0; i < 4; i++)
			free(got[f][i]);
	norm_in_free(&in, (void *[]){ resid, out[0], out[1], out[2], posd, slotd, invd, kv.base }, 8);
	free(pool);
	free(inv);
}

static void test_swiglu(uint32_t n, uint32_t dim)
{
	size_t ne = (size_t)n * dim;
	float *gt = gt_rand(&rng, ne, 6.0f), *up = gt_rand(&rng, ne, 2.0f);
	void *gc = gt_put(gt_cpu, gt, ne), *gg = gt_put(gt_gpu, gt, ne);
	void *uc = gt_put(gt_cpu, up, ne), *ug = gt_put(gt_gpu, up, ne);
	void *oc = gt_cpu->ops->alloc(gt_cpu, ne * 4), *og = gt_gpu->ops->alloc(gt_gpu, ne * 2);
	float *rc, *rg;
	char what[64];

	KT_CHECK_EQ_INT(gt_cpu->ops->swiglu(gt_cpu, oc, gc, uc, n, dim), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->swiglu(gt_gpu, og, gg, ug, n, dim), 0);
	rc = gt_get(gt_cpu, oc, ne);
	rg = gt_get(gt_gpu, og, ne);
	snprintf(what, sizeof(what), "swiglu %ux%u", n, dim);
	gt_close(what, rg, rc, ne, GT_ATOL, GT_RTOL);

	void *bc[] = { gc, uc, oc }, *bg[] = { gg, ug, og };
	for (int i = 0; i < 3; i++) {
		gt_cpu->ops->free(gt_cpu, bc[i]);
		gt_gpu->ops->free(gt_gpu, bg[i]);
	}
	free(gt);
	free(up);
	free(rc);
	free(rg);
}

static void test_gather(uint32_t dim)
{
	const uint32_t n_in = 50, n = 9;
	float *x = gt_rand(&rng, (size_t)n_in * dim, 1.0f);
	int32_t rows[9];
	void *xc = gt_put(gt_cpu, x, (size_t)n_in * dim), *xg = gt_put(gt_gpu, x, (size_t)n_in * dim);
	void *rcd, *rgd;
	void *oc = gt_cpu->ops->alloc(gt_cpu, (size_t)n * dim * 4);
	void *og = gt_gpu->ops->alloc(gt_gpu, (size_t)n * dim * 2);
	float *rc, *rg;
	char what[64];

	for (uint32_t i = 0; i < n; i++)
		rows[i] = (int32_t)kt_below(&rng, n_in);
	rcd = kt_upload(gt_cpu, rows, sizeof(rows));
	rgd = kt_upload(gt_gpu, rows, sizeof(rows));
	KT_CHECK_EQ_INT(gt_cpu->ops->gather_rows(gt_cpu, oc, xc, rcd, n, dim), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->gather_rows(gt_gpu, og, xg, rgd, n, dim), 0);
	rc = gt_get(gt_cpu, oc, (size_t)n * dim);
	rg = gt_get(gt_gpu, og, (size_t)n * dim);
	snprintf(what, sizeof(what), "gather_rows dim %u", dim);
	gt_close(what, rg, rc, (size_t)n * dim, 0, 0);
	rows[3] = -1;
	gt_gpu->ops->upload(gt_gpu, rgd, rows, sizeof(rows));
	KT_CHECK_EQ_INT(gt_gpu->ops->gather_rows(gt_gpu, og, xg, rgd, n, dim), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), -EINVAL);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);

	void *bc[] = { xc, rcd, oc }, *bg[] = { xg, rgd, og };
	for (int i = 0; i < 3; i++) {
		gt_cpu->ops->free(gt_cpu, bc[i]);
		gt_gpu->ops->free(gt_gpu, bg[i]);
	}
	free(x);
	free(rc);
	free(rg);
}

/* fp32 logits: both backends must agree exactly, ties and NaN included. */
static void test_argmax(uint32_t vocab)
{
	const uint32_t n = 6;
	size_t ne = (size_t)n * vocab;
	float *l = kt_xmalloc(ne * 4);
	int32_t oc[6], og[6];
	void *lc, *lg, *dc, *dg;

	kt_fill(&rng, l, ne, 10.0f);
	/* Row 1: a tie between two maxima; row 2: two NaNs; row 3: max at the
	 * last index; row 4: all equal; row 5: NaN at index 0. */
	l[1 * vocab + 100] = l[1 * vocab + vocab - 3] = 50.0f;
	l[2 * vocab + vocab / 2] = NAN;
	l[2 * vocab + vocab / 3] = NAN;
	l[3 * vocab + vocab - 1] = 60.0f;
	for (uint32_t j = 0; j < vocab; j++)
		l[4 * vocab + j] = -1.0f;
	l[5 * vocab] = NAN;
	lc = kt_upload(gt_cpu, l, ne * 4);
	lg = kt_upload(gt_gpu, l, ne * 4);
	dc = gt_cpu->ops->alloc(gt_cpu, sizeof(oc));
	dg = gt_gpu->ops->alloc(gt_gpu, sizeof(og));
	KT_CHECK_EQ_INT(gt_cpu->ops->argmax(gt_cpu, dc, lc, n, vocab), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->argmax(gt_gpu, dg, lg, n, vocab), 0);
	gt_cpu->ops->download(gt_cpu, oc, dc, sizeof(oc));
	KT_CHECK_EQ_INT(gt_gpu->ops->download(gt_gpu, og, dg, sizeof(og)), 0);
	for (uint32_t i = 0; i < n; i++)
		KT_CHECK_EQ_INT(og[i], oc[i]);
	KT_CHECK_EQ_INT(oc[1], 100);
	KT_CHECK_EQ_INT(oc[2], vocab / 3);
	printf("  argmax vocab %-31u rows=%u mismatches=%d\n", vocab, n,
	       (int)(memcmp(oc, og, sizeof(oc)) != 0));
	gt_cpu->ops->free(gt_cpu, lc);
	gt_cpu->ops->free(gt_cpu, dc);
	gt_gpu->ops->free(gt_gpu, lg);
	gt_gpu->ops->free(gt_gpu, dg);
	free(l);
}

static void test_softmax_ids(void)
{
	const uint32_t n = 4, vocab = 5000, n_ids = 300;
	float *l = kt_xmalloc((size_t)n * vocab * 4);
	int32_t *ids = kt_xmalloc(n_ids * 4);
	void *lc, *lg, *ic, *ig, *oc, *og;
	float *rc, *rg;

	kt_fill(&rng, l, (size_t)n * vocab, 8.0f);
	for (uint32_t j = 0; j < n_ids; j++)
		ids[j] = (int32_t)kt_below(&rng, vocab);
	lc = kt_upload(gt_cpu, l, (size_t)n * vocab * 4);
	lg = kt_upload(gt_gpu, l, (size_t)n * vocab * 4);
	ic = kt_upload(gt_cpu, ids, n_ids * 4);
	ig = kt_upload(gt_gpu, ids, n_ids * 4);
	oc = gt_cpu->ops->alloc(gt_cpu, (size_t)n * n_ids * 4);
	og = gt_gpu->ops->alloc(gt_gpu, (size_t)n * n_ids * 4);
	KT_CHECK_EQ_INT(gt_cpu->ops->softmax_ids(gt_cpu, oc, lc, ic, n, n_ids, vocab), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->softmax_ids(gt_gpu, og, lg, ig, n, n_ids, vocab), 0);
	rc = gt_get_f32(gt_cpu, oc, (size_t)n * n_ids);
	rg = gt_get_f32(gt_gpu, og, (size_t)n * n_ids);
	gt_close("softmax_ids 4 rows x 300 ids", rg, rc, (size_t)n * n_ids, 1e-7, 1e-5);
	ids[7] = -2;
	gt_gpu->ops->upload(gt_gpu, ig, ids, n_ids * 4);
	KT_CHECK_EQ_INT(gt_gpu->ops->softmax_ids(gt_gpu, og, lg, ig, n, n_ids, vocab), 0);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), -EINVAL);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);

	void *bc[] = { lc, ic, oc }, *bg[] = { lg, ig, og };
	for (int i = 0; i < 3; i++) {
		gt_cpu->ops->free(gt_cpu, bc[i]);
		gt_gpu->ops->free(gt_gpu, bg[i]);
	}
	free(l);
	free(ids);
	free(rc);
	free(rg);
}

/* gate/up + SwiGLU on wgmma: one row tile and partial ones, a tile's worth
 * of columns and several, the 1B and 8B k, more tiles than SMs. */
static void test_swiglu_wg_all(void)
{
	if (test_swiglu_wg(128, 64, 128, 0, 1) < 0) {
		printf("swiglu_wg: not run (needs an sm_90a build on compute capability 9.0)\n");
		return;
	}
	for (int cl = 1; cl <= 2; cl++) {
		KT_CHECK_EQ_INT(test_swiglu_wg(1, 64, 128, 0, cl), 0);
		KT_CHECK_EQ_INT(test_swiglu_wg(65, 512, 256, 0, cl), 0);
		KT_CHECK_EQ_INT(test_swiglu_wg(128, 2048, 1024, 0, cl), 0);
		KT_CHECK_EQ_INT(test_swiglu_wg(200, 512, 384, 0, cl), 0);
		KT_CHECK_EQ_INT(test_swiglu_wg(300, 4096, 256, 0, cl), 0);
		KT_CHECK_EQ_INT(test_swiglu_wg(1024, 4096, 2048, 0, cl), 0);
		/* Several tiles a block: 9 tiles (3 row tiles x 3) on one block
		 * (clusters: 6 on one pair, the second of the last pair past the
		 * rows) with one k slice a tile (the stages' phases wrap), 64
		 * tiles (8 x 8) on 7 blocks (3 pairs), and 160 tiles (16 x 10:
		 * more than an H100's or H200's 132 multiprocessors) on the
		 * device's. Odd row-tile counts above: n = 1, 65, 128, 300. */
		KT_CHECK_EQ_INT(test_swiglu_wg(300, 64, 384, 1, cl), 0);
		KT_CHECK_EQ_INT(test_swiglu_wg(1000, 512, 1024, 7, cl), 0);
		KT_CHECK_EQ_INT(test_swiglu_wg(2048, 256, 1280, 0, cl), 0);
	}
	test_swiglu_wg_refusals();
}

/* Usage: test_cuda_ops [swiglu_wg]   (the one kernel's checks alone) */
int main(int argc, char **argv)
{
	static const uint32_t mm[][3] = {
		{ 1, 128, 256 }, { 5, 2048, 512 }, { 64, 1024, 3072 }, { 300, 512, 1000 },
		{ 1, 4096, 1024 }, { 3, 36, 18 }, { 2, 7, 5 }, { 17, 30, 9 },
		{ 8, 2048, 520 }, { 9, 256, 300 }, { 1, 8192, 33 }, { 4, 64, 4097 },
		{ 1, 2048, 50000 }, { 7, 128, 448 }, { 2, 2048, 8192 }, { 4, 8192, 2048 },
		{ 3, 4096, 14336 }, { 1, 14336, 4096 },
	};

	gt_init("test_cuda_ops");
	if (argc > 1 && !strcmp(argv[1], "swiglu_wg")) {
		test_swiglu_wg_all();
		gt_fini();
		return kt_finish("test_cuda_ops");
	}
	test_memory();
	test_weight_upload();
	test_embed(256);
	test_embed(100);
	test_add_rmsnorm(19, 4096, 1);
	test_add_rmsnorm(19, 4096, 0);
	test_add_rmsnorm(7, 1002, 1);
	test_add_rmsnorm(1, 64, 1);
	/* Rows <= KC_GEMV_MAX_N take the GEMV kernel unless turned off: both. */
	for (int lt = 0; lt < 2; lt++) {
		((struct kern_cuda *)gt_gpu->priv)->gemv_off = lt;
		gemm_path = lt ? " [lt]" : "";
		for (size_t i = 0; i < KT_ARRAY_SIZE(mm); i++) {
			if (lt && mm[i][0] > KC_GEMV_MAX_N)
				continue;
			test_matmul(mm[i][0], mm[i][1], mm[i][2], 0);
			test_matmul(mm[i][0], mm[i][1], mm[i][2], 1);
		}
	}
	((struct kern_cuda *)gt_gpu->priv)->gemv_off = 0;
	/* Fused GEMV (n <= 4) and its cuBLASLt fallback (n > 4). */
	test_fused(1, 2048, 2048, 512, 0);
	test_fused(1, 1536, 1536, 256, 1);
	test_fused(3, 512, 256, 1000, 1);
	test_fused(4, 4096, 4096, 1024, 0);
	test_fused(2, 64, 8, 24, 1);
	test_fused(9, 512, 512, 128, 1);
	/* Past the skinny kernel: k/v and gate/up as cuBLASLt pairs where the
	 * placement allows (4 a call), two launches where it does not. */
	KT_CHECK_EQ_INT((int)test_fused(64, 2048, 2048, 512, 0), 4);
	KT_CHECK_EQ_INT((int)test_fused(33, 1536, 1536, 256, 1), 4);
	KT_CHECK_EQ_INT((int)test_fused(200, 512, 256, 1000, 1), 4);
	KT_CHECK_EQ_INT((int)test_fused(48, 64, 8, 24, 0), 4);
	/* Off: the same results from separate launches. */
	((struct kern_cuda *)gt_gpu->priv)->lt_pair = 0;
	KT_CHECK_EQ_INT((int)test_fused(64, 2048, 2048, 512, 1), 0);
	((struct kern_cuda *)gt_gpu->priv)->lt_pair = 1;
	test_swiglu_wg_all();
	/* The decode shapes (k x m): 1B q/k/v, o, gate/up, down; 8B gate/up and down. */
	for (uint32_t n = 1; n <= KC_GEMV_MAX_N; n++) {
		test_gemv_cfgs(n, 2048, 2048, 512);
		test_gemv_cfgs(n, 64, 40, 24);
	}
	test_gemv_cfgs(1, 2048, 8192, 8192);
	test_gemv_cfgs(3, 8192, 2048, 256);
	test_gemv_cfgs(4, 4096, 14336, 14336);
	test_gemv_cfgs(1, 14336, 4096, 1024);
	test_gemv_cfgs(2, 14336, 4096, 1024);
	test_gemv_cfgs(4, 136, 1000, 33);
	/* The norm in the GEMV's prologue: 1B and 8B shapes, each row count,
	 * without the add (layer 0), an odd small shape, and past 4 rows. */
	for (uint32_t n = 1; n <= KC_GEMV_MAX_N; n++)
		test_norm_fused(n, 2048, 2048, 512, 0, 1);
	test_norm_fused(1, 2048, 2048, 512, 0, 0);
	test_norm_fused(4, 4096, 4096, 1024, 0, 1);
	test_norm_fused(2, 1536, 1536, 256, 1, 1);
	test_norm_fused(3, 64, 8, 24, 1, 1);
	test_norm_fused(9, 512, 512, 128, 1, 1);
	/* The rope in the q/k/v GEMV: the 1B's heads (64 wide, 32/8) and the
	 * 8B's (128, 32/8) at each row count, Qwen2's biases, a small odd shape. */
	for (uint32_t n = 1; n <= KC_GEMV_MAX_N; n++)
		test_qkv_rope(n, 2048, 32, 8, 64, 0);
	test_qkv_rope(1, 4096, 32, 8, 128, 0);
	test_qkv_rope(3, 4096, 32, 8, 128, 0);
	test_qkv_rope(2, 1536, 12, 2, 128, 1);
	test_qkv_rope(4, 64, 3, 1, 16, 1);
	test_swiglu(13, 1024);
	test_swiglu(3, 1003);
	test_gather(256);
	test_gather(98);
	test_argmax(50000);
	test_argmax(1001);
	test_softmax_ids();
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
	gt_fini();
	return kt_finish("test_cuda_ops");
}

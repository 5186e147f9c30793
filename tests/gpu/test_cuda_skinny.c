/* SPDX-License-Identifier: MIT */
/*
 * The skinny tensor-core GEMM (cuda_skinny.cu) against the cpu backend on
 * fresh random inputs: the real Llama-3.2-1B and Llama-3.1-8B matrices at 5..64
 * rows (bias, bf16 and fp32 out), q/k/v stacked with biases (Qwen2), gate/up
 * with the SwiGLU epilogue (with and without transformers' rounding), odd
 * shapes (m and k off the tile sizes), the shapes it refuses, and replay
 * under a CUDA graph, after which the split-k counters must read zero; then
 * the ops table's dispatch (matmul, matmul_qkv, matmul_swiglu at 5..64 rows).
 * Tolerances: gt.h. Exit 77 without a CUDA device.
 */
#include "gt.h"
#include "cuda_internal.h"

static struct kt_rng rng = { 0x736b696e6e79ull };
static const uint32_t ns[] = { 5, 8, 15, 16, 17, 32, 33, 64 };
#define NMAX 64u

/* One matrix of k columns and m rows on both backends, with a bias. */
struct mat {
	uint32_t k, m;
	void *wc, *wg, *bc, *bg;
};

static void mat_new(struct mat *t, uint32_t k, uint32_t m)
{
	float *w = gt_rand(&rng, (size_t)m * k, (float)(1.5 / sqrt(k)));
	float *b = gt_rand(&rng, m, 0.5f);

	t->k = k;
	t->m = m;
	t->wc = gt_put_weight(gt_cpu, w, (size_t)m * k);
	t->wg = gt_put_weight(gt_gpu, w, (size_t)m * k);
	t->bc = gt_put_weight(gt_cpu, b, m);
	t->bg = gt_put_weight(gt_gpu, b, m);
	free(w);
	free(b);
}

static void mat_free(struct mat *t)
{
	gt_cpu->ops->free(gt_cpu, t->wc);
	gt_cpu->ops->free(gt_cpu, t->bc);
	gt_gpu->ops->free(gt_gpu, t->wg);
	gt_gpu->ops->free(gt_gpu, t->bg);
}

/* The cpu backend's in[NMAX, k] @ W^T (+ bias) as host fp32 (rows 0..n-1
 * of it are the reference at n rows: rows are independent). */
static float *cpu_ref(const void *xc, const struct mat *t, int bias)
{
	void *oc = gt_cpu->ops->alloc(gt_cpu, (size_t)NMAX * t->m * 4);
	float *r;

	KT_CHECK_EQ_INT(gt_cpu->ops->matmul(gt_cpu, oc, xc, t->wc, bias ? t->bc : NULL, NMAX, t->k,
					    t->m), 0);
	r = gt_get_f32(gt_cpu, oc, (size_t)NMAX * t->m);
	gt_cpu->ops->free(gt_cpu, oc);
	return r;
}

static struct kern_cuda *cuda(void)
{
	return gt_gpu->priv;
}

static int skinny(const struct kc_gemv_seg seg[3], const void *in, uint32_t n, uint32_t k,
		  int out_f32)
{
	const struct kc_skinny_cfg cfg = { 0, 1 };
	struct kern_cuda *c = cuda();

	return kc_skinny_multi(seg, in, n, k, out_f32, c->skinny_ws, c->skinny_ws_bytes, c->n_sms,
			       &cfg, c->stream);
}

/* One matrix, NMAX input rows on both backends, room for NMAX fp32 rows
 * of output on the gpu, and the cpu products without and with the bias. */
struct plain {
	struct mat t;
	float *x, *ref, *refb;
	void *xc, *xg, *og;
};

static void plain_new(struct plain *p, uint32_t k, uint32_t m)
{
	p->x = gt_rand(&rng, (size_t)NMAX * k, 1.0f);
	p->xc = gt_put(gt_cpu, p->x, (size_t)NMAX * k);
	p->xg = gt_put(gt_gpu, p->x, (size_t)NMAX * k);
	p->og = gt_gpu->ops->alloc(gt_gpu, (size_t)NMAX * m * 4);
	mat_new(&p->t, k, m);
	p->ref = cpu_ref(p->xc, &p->t, 0);
	p->refb = cpu_ref(p->xc, &p->t, 1);
}

static void plain_free(struct plain *p)
{
	mat_free(&p->t);
	free(p->ref);
	free(p->refb);
	free(p->x);
	gt_cpu->ops->free(gt_cpu, p->xc);
	gt_gpu->ops->free(gt_gpu, p->xg);
	gt_gpu->ops->free(gt_gpu, p->og);
}

/* One matrix at every row count: bf16 out with and without bias, fp32 out
 * with bias (the kernel's own launcher). */
static void test_plain(uint32_t k, uint32_t m, const char *name)
{
	struct plain p;
	float *got;
	char what[96];

	plain_new(&p, k, m);
	for (size_t i = 0; i < KT_ARRAY_SIZE(ns); i++) {
		const uint32_t n = ns[i];
		struct kc_gemv_seg seg[3] = { { p.og, p.t.wg, p.t.bg, m }, { NULL, NULL, NULL, 0 },
					      { NULL, NULL, NULL, 0 } };

		KT_CHECK_EQ_INT(skinny(seg, p.xg, n, k, 0), 0);
		got = gt_get(gt_gpu, p.og, (size_t)n * m);
		snprintf(what, sizeof(what), "skinny %s n=%u k=%u m=%u +bias", name, n, k, m);
		gt_close(what, got, p.refb, (size_t)n * m, GT_ATOL, GT_RTOL);
		free(got);
		seg[0].bias = NULL;
		KT_CHECK_EQ_INT(skinny(seg, p.xg, n, k, 0), 0);
		got = gt_get(gt_gpu, p.og, (size_t)n * m);
		snprintf(what, sizeof(what), "skinny %s n=%u k=%u m=%u", name, n, k, m);
		gt_close(what, got, p.ref, (size_t)n * m, GT_ATOL, GT_RTOL);
		free(got);
		seg[0].bias = p.t.bg;
		KT_CHECK_EQ_INT(skinny(seg, p.xg, n, k, 1), 0);
		got = gt_get_f32(gt_gpu, p.og, (size_t)n * m);
		snprintf(what, sizeof(what), "skinny %s n=%u k=%u m=%u +bias f32", name, n, k, m);
		gt_close(what, got, p.refb, (size_t)n * m, 1e-3, 1e-3);
		free(got);
	}
	plain_free(&p);
}

/* q/k/v stacked with biases, and gate/up with SwiGLU (hf 0 and 1), through
 * the kernel's launchers; ops: the same through the ops table (dispatch). */
static void test_fused(uint32_t k, uint32_t mq, uint32_t mkv, uint32_t mf, int ops)
{
	const uint32_t ms[3] = { mq, mkv, mkv };
	struct kern_cuda *c = cuda();
	const struct kc_skinny_cfg cfg = { 0, 1 };
	float *x = gt_rand(&rng, (size_t)NMAX * k, 1.0f), *ref[3], *g, *u, *got;
	void *xc = gt_put(gt_cpu, x, (size_t)NMAX * k), *xg = gt_put(gt_gpu, x, (size_t)NMAX * k);
	void *og[3], *sg = gt_gpu->ops->alloc(gt_gpu, (size_t)NMAX * mf * 2);
	void *t1 = gt_gpu->ops->alloc(gt_gpu, (size_t)NMAX * mf * 2);
	void *t2 = gt_gpu->ops->alloc(gt_gpu, (size_t)NMAX * mf * 2);
	float *sref[2];
	struct mat qkv[3], gu[2];
	char what[112];

	for (int i = 0; i < 3; i++) {
		mat_new(&qkv[i], k, ms[i]);
		ref[i] = cpu_ref(xc, &qkv[i], 1);
		og[i] = gt_gpu->ops->alloc(gt_gpu, (size_t)NMAX * ms[i] * 2);
	}
	mat_new(&gu[0], k, mf);
	mat_new(&gu[1], k, mf);
	g = cpu_ref(xc, &gu[0], 0);
	u = cpu_ref(xc, &gu[1], 0);
	/* SwiGLU as the unfused path computes it: gate and up stored as bf16
	 * first; hf: silu(gate) rounded as well. */
	for (int hf = 0; hf < 2; hf++) {
		sref[hf] = kt_xmalloc((size_t)NMAX * mf * sizeof(float));
		for (size_t i = 0; i < (size_t)NMAX * mf; i++) {
			float gt = gt_bf16_round(g[i]), s = gt / (1.0f + expf(-gt));

			sref[hf][i] = (hf ? gt_bf16_round(s) : s) * gt_bf16_round(u[i]);
		}
	}
	for (size_t ni = 0; ni < KT_ARRAY_SIZE(ns); ni++) {
		const uint32_t n = ns[ni];
		const struct kc_gemv_seg seg[3] = { { og[0], qkv[0].wg, qkv[0].bg, mq },
						    { og[1], qkv[1].wg, qkv[1].bg, mkv },
						    { og[2], qkv[2].wg, qkv[2].bg, mkv } };

		if (ops)
			KT_CHECK_EQ_INT(gt_gpu->ops->matmul_qkv(gt_gpu, og[0], og[1], og[2], xg,
								qkv[0].wg, qkv[1].wg, qkv[2].wg,
								qkv[0].bg, qkv[1].bg, qkv[2].bg, n, k,
								mq, mkv), 0);
		else
			KT_CHECK_EQ_INT(skinny(seg, xg, n, k, 0), 0);
		for (int i = 0; i < 3; i++) {
			got = gt_get(gt_gpu, og[i], (size_t)n * ms[i]);
			snprintf(what, sizeof(what), "%s qkv[%d] n=%u k=%u m=%u +bias",
				 ops ? "ops matmul_qkv" : "skinny", i, n, k, ms[i]);
			gt_close(what, got, ref[i], (size_t)n * ms[i], GT_ATOL, GT_RTOL);
			free(got);
		}
		for (int hf = 0; hf < 2; hf++) {
			if (ops && hf)
				break; /* the backend's hf_round is fixed at creation */
			if (ops)
				KT_CHECK_EQ_INT(gt_gpu->ops->matmul_swiglu(gt_gpu, sg, t1, t2, xg,
									   gu[0].wg, gu[1].wg, n, k,
									   mf), 0);
			else
				KT_CHECK_EQ_INT(kc_skinny_swiglu(sg, xg, gu[0].wg, gu[1].wg, n, k, mf,
								 hf, c->skinny_ws,
								 c->skinny_ws_bytes, c->n_sms, &cfg,
								 c->stream), 0);
			got = gt_get(gt_gpu, sg, (size_t)n * mf);
			snprintf(what, sizeof(what), "%s swiglu%s n=%u k=%u m=%u",
				 ops ? "ops matmul" : "skinny", hf ? " hf" : "", n, k, mf);
			gt_close(what, got, sref[hf], (size_t)n * mf, GT_ATOL, GT_RTOL);
			free(got);
		}
	}
	for (int i = 0; i < 3; i++) {
		mat_free(&qkv[i]);
		free(ref[i]);
		gt_gpu->ops->free(gt_gpu, og[i]);
	}
	mat_free(&gu[0]);
	mat_free(&gu[1]);
	free(g);
	free(u);
	free(sref[0]);
	free(sref[1]);
	free(x);
	gt_cpu->ops->free(gt_cpu, xc);
	void *bufs[] = { xg, sg, t1, t2 };
	for (int i = 0; i < 4; i++)
		gt_gpu->ops->free(gt_gpu, bufs[i]);
}

/* The ops table's matmul and matmul_f32out at every row count (whatever
 * path kc_gemm picks for the shape). */
static void test_dispatch(uint32_t k, uint32_t m)
{
	struct plain p;
	float *got;
	char what[96];

	plain_new(&p, k, m);
	for (size_t i = 0; i < KT_ARRAY_SIZE(ns); i++) {
		const uint32_t n = ns[i];

		KT_CHECK_EQ_INT(gt_gpu->ops->matmul(gt_gpu, p.og, p.xg, p.t.wg, p.t.bg, n, k, m),
				0);
		got = gt_get(gt_gpu, p.og, (size_t)n * m);
		snprintf(what, sizeof(what), "ops matmul n=%u k=%u m=%u +bias", n, k, m);
		gt_close(what, got, p.refb, (size_t)n * m, GT_ATOL, GT_RTOL);
		free(got);
		KT_CHECK_EQ_INT(gt_gpu->ops->matmul_f32out(gt_gpu, p.og, p.xg, p.t.wg, n, k, m), 0);
		got = gt_get_f32(gt_gpu, p.og, (size_t)n * m);
		snprintf(what, sizeof(what), "ops matmul_f32out n=%u k=%u m=%u", n, k, m);
		gt_close(what, got, p.ref, (size_t)n * m, 1e-3, 1e-3);
		free(got);
	}
	plain_free(&p);
}

/*
 * Captured once, replayed three times with new inputs in between: each
 * replay's output is checked, and afterwards every split-k counter is zero
 * (the last block of each tile resets its own).
 */
static void test_graph(uint32_t k, uint32_t m, uint32_t n)
{
	struct kern_cuda *c = cuda();
	float *x = gt_rand(&rng, (size_t)NMAX * k, 1.0f), *ref, *got;
	void *xc = gt_put(gt_cpu, x, (size_t)NMAX * k), *xg = gt_put(gt_gpu, x, (size_t)NMAX * k);
	void *og = gt_gpu->ops->alloc(gt_gpu, (size_t)NMAX * m * 2);
	struct kc_gemv_seg s[3] = { { og, NULL, NULL, m }, { NULL, NULL, NULL, 0 },
				    { NULL, NULL, NULL, 0 } };
	cudaGraph_t gr = NULL;
	cudaGraphExec_t ge = NULL;
	uint32_t *cnt = kt_xmalloc(64 << 10);
	struct mat t;
	size_t nz = 0;
	char what[96];
	int r;

	mat_new(&t, k, m);
	s[0].w = t.wg;
	s[0].bias = t.bg;
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
	KT_CHECK_EQ_INT(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal), 0);
	r = skinny(s, xg, n, k, 0);
	KT_CHECK_EQ_INT(cudaStreamEndCapture(c->stream, &gr), 0);
	KT_CHECK_EQ_INT(r, 0);
	KT_CHECK_EQ_INT(cudaGraphInstantiate(&ge, gr, 0), 0);
	for (int rep = 0; rep < 3; rep++) {
		float *xn = gt_rand(&rng, (size_t)NMAX * k, 1.0f);
		void *xcn = gt_put(gt_cpu, xn, (size_t)NMAX * k);

		{
			uint16_t *h = kt_xmalloc((size_t)NMAX * k * 2);

			for (size_t i = 0; i < (size_t)NMAX * k; i++)
				h[i] = kern_f32_to_bf16(xn[i]);
			KT_CHECK_EQ_INT(gt_gpu->ops->upload(gt_gpu, xg, h, (size_t)NMAX * k * 2), 0);
			free(h);
		}
		KT_CHECK_EQ_INT(cudaGraphLaunch(ge, c->stream), 0);
		ref = cpu_ref(xcn, &t, 1);
		got = gt_get(gt_gpu, og, (size_t)n * m);
		snprintf(what, sizeof(what), "skinny graph replay %d n=%u k=%u m=%u", rep, n, k, m);
		gt_close(what, got, ref, (size_t)n * m, GT_ATOL, GT_RTOL);
		free(got);
		free(ref);
		free(xn);
		gt_cpu->ops->free(gt_cpu, xcn);
	}
	KT_CHECK_EQ_INT(gt_gpu->ops->download(gt_gpu, cnt, c->skinny_ws, 64 << 10), 0);
	for (size_t i = 0; i < (64 << 10) / 4; i++)
		nz += cnt[i] != 0;
	printf("  skinny counters after replays: %zu non-zero\n", nz);
	KT_CHECK(nz == 0);
	cudaGraphExecDestroy(ge);
	cudaGraphDestroy(gr);
	mat_free(&t);
	free(cnt);
	free(x);
	gt_cpu->ops->free(gt_cpu, xc);
	gt_gpu->ops->free(gt_gpu, xg);
	gt_gpu->ops->free(gt_gpu, og);
}

/* Shapes the kernel refuses, with -EINVAL (kc_gemm then takes cuBLASLt). */
static void test_refused(void)
{
	struct kern_cuda *c = cuda();
	const struct kc_skinny_cfg cfg = { 0, 1 };
	void *w = gt_gpu->ops->alloc(gt_gpu, 1 << 20), *x = gt_gpu->ops->alloc(gt_gpu, 1 << 20);
	void *o = gt_gpu->ops->alloc(gt_gpu, 1 << 20);
	struct kc_gemv_seg seg[3] = { { o, w, NULL, 64 }, { NULL, NULL, NULL, 0 },
				      { NULL, NULL, NULL, 0 } };

	KT_CHECK_EQ_INT(skinny(seg, x, 8, 60, 0), -EINVAL);          /* k % 8 */
	KT_CHECK_EQ_INT(skinny(seg, (char *)x + 8, 8, 64, 0), -EINVAL); /* in alignment */
	seg[0].w = (char *)w + 2;
	KT_CHECK_EQ_INT(skinny(seg, x, 8, 64, 0), -EINVAL);          /* w alignment */
	seg[0].w = w;
	KT_CHECK_EQ_INT(skinny(seg, x, 65, 64, 0), -EINVAL);         /* rows */
	KT_CHECK_EQ_INT(skinny(seg, x, 0, 64, 0), -EINVAL);
	KT_CHECK_EQ_INT(kc_skinny_swiglu(o, x, w, (char *)w + 8, 8, 64, 64, 0, c->skinny_ws,
					 c->skinny_ws_bytes, c->n_sms, &cfg, c->stream), -EINVAL);
	KT_CHECK_EQ_INT(skinny(seg, x, 8, 64, 0), 0);
	printf("  skinny refuses k %% 8, misaligned in / w, n 0 and > %u: ok\n", KC_SKINNY_MAX_N);
	gt_gpu->ops->free(gt_gpu, w);
	gt_gpu->ops->free(gt_gpu, x);
	gt_gpu->ops->free(gt_gpu, o);
}

int main(void)
{
	gt_init("test_cuda_skinny");
	/* 1B: q and o, k/v, gate/up, down; 8B: the same; odd shapes. */
	test_plain(2048, 2048, "1B q/o");
	test_plain(2048, 512, "1B k/v");
	test_plain(2048, 8192, "1B gate/up");
	test_plain(8192, 2048, "1B down");
	test_plain(4096, 4096, "8B q/o");
	test_plain(4096, 1024, "8B k/v");
	test_plain(4096, 14336, "8B gate/up");
	test_plain(14336, 4096, "8B down");
	test_plain(2048, 128256, "1B LM head");
	test_plain(136, 1000, "odd");
	test_plain(200, 40, "odd");
	test_plain(8, 3, "odd");
	test_fused(2048, 2048, 512, 8192, 0);
	test_fused(4096, 4096, 1024, 14336, 0);
	test_fused(896, 896, 128, 4864, 0); /* Qwen2-0.5B */
	test_fused(264, 72, 24, 100, 0);
	test_fused(2048, 2048, 512, 8192, 1);
	test_fused(4096, 4096, 1024, 14336, 1);
	test_dispatch(2048, 2048);
	test_dispatch(8192, 2048);
	test_graph(2048, 512, 33);
	test_graph(8192, 2048, 64);
	test_refused();
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
	gt_fini();
	return kt_finish("test_cuda_skinny");
}

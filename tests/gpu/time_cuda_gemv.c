/* SPDX-License-Identifier: MIT */
/*
 * time_cuda_gemv: the decode GEMV (cuda_gemv.cu) on the real matrices of the
 * 1B and 8B Llama shapes, against the device copy bandwidth measured in the
 * same run and cuBLASLt. First each kernel shape (rows per warp 1, 2, 4; one
 * or two blocks per SM; PDL on and off) one matrix at a time at 1..4 input
 * rows, 30 launches back to back over copies of the weights rotated past the
 * L2 (the figures behind kc_gemv_suits() and gemv_cfg()); then the GEMV and
 * norm launches of a whole decode step (every layer's own weights, the LM
 * head on the GEMV too; no rope or attention), eager and replayed as a CUDA
 * graph. Each shape's output is checked against cuBLASLt's before it is
 * timed. Not a test: timing by hand on a GPU machine.
 *
 * Mode skinny: the skinny tensor-core GEMM (cuda_skinny.cu) against cuBLASLt
 * at 8, 16, 32 and 64 rows on each real matrix (q/k/v stacked and gate/up
 * with SwiGLU against cuBLASLt's three and two launches plus SwiGLU), with
 * its default grid, one and two blocks per SM, and without PDL: the figures
 * behind kc_skinny_suits().
 *
 * Mode wg: gate/up with the SwiGLU in one warp-specialised wgmma kernel
 * (cuda_gemm_wg.cu, HEARTH_CUDA_SWIGLU_WG) against cuBLASLt's pair and the
 * SwiGLU pass, at 256 to 2048 rows (prefill chunks), the output checked
 * against cuBLASLt's first: us per launch and TFLOP/s, one CTA a cluster
 * and two (the weight slices multicast to a pair of row tiles: half the L2
 * reads; at 128 x 256 x 64 a stage and the tensor cores' peak, one CTA an SM
 * alone asks about 11 TB/s of the L2).
 *
 * Usage: time_cuda_gemv [1b|8b|all] [skinny|wg]     (last line: BENCH {json})
 */
#include <time.h>

#include <cuda_runtime_api.h>

#include "gt.h"
#include "cuda_internal.h"

static struct kt_rng rng = { 0x67656d76ull };

struct variant {
	const char *name;
	uint32_t rows, bps; /* rows 0: cuBLASLt through the ops table */
	int pdl;
	int skinny;         /* the skinny GEMM, bps blocks an SM (0: its default) */
};

static const struct variant vars[] = {
	{ "lt", 0, 0, 0, 0 },        { "r1", 1, 2, 0, 0 },     { "r1 pdl", 1, 2, 1, 0 },
	{ "r1 b1 pdl", 1, 1, 1, 0 }, { "r2 pdl", 2, 2, 1, 0 }, { "r4 pdl", 4, 2, 1, 0 },
};

static const struct variant sk_vars[] = {
	{ "lt", 0, 0, 0, 0 },         { "sk", 0, 0, 1, 1 },    { "sk b1", 0, 1, 1, 1 },
	{ "sk b2", 0, 2, 1, 1 },      { "sk nopdl", 0, 0, 0, 1 },
};

struct mat {
	const char *name;
	uint32_t k, m[3];
	int swiglu, f32;
};

#define N_SK_MATS 6
static const struct mat sk_mats[2][N_SK_MATS] = {
	{ { "1B q/k/v", 2048, { 2048, 512, 512 }, 0, 0 },
	  { "1B q, o", 2048, { 2048, 0, 0 }, 0, 0 },
	  { "1B k, v", 2048, { 512, 0, 0 }, 0, 0 },
	  { "1B gate/up", 2048, { 8192, 0, 0 }, 1, 0 },
	  { "1B down", 8192, { 2048, 0, 0 }, 0, 0 },
	  { "1B LM head", 2048, { 128256, 0, 0 }, 0, 1 } },
	{ { "8B q/k/v", 4096, { 4096, 1024, 1024 }, 0, 0 },
	  { "8B q, o", 4096, { 4096, 0, 0 }, 0, 0 },
	  { "8B k, v", 4096, { 1024, 0, 0 }, 0, 0 },
	  { "8B gate/up", 4096, { 14336, 0, 0 }, 1, 0 },
	  { "8B down", 14336, { 4096, 0, 0 }, 0, 0 },
	  { "8B LM head", 4096, { 128256, 0, 0 }, 0, 1 } },
};

#define N_MATS 5
static const struct mat mats[2][N_MATS] = {
	{ { "1B q/k/v", 2048, { 2048, 512, 512 }, 0, 0 },
	  { "1B o", 2048, { 2048, 0, 0 }, 0, 0 },
	  { "1B gate/up", 2048, { 8192, 0, 0 }, 1, 0 },
	  { "1B down", 8192, { 2048, 0, 0 }, 0, 0 },
	  { "1B LM head", 2048, { 128256, 0, 0 }, 0, 1 } },
	{ { "8B q/k/v", 4096, { 4096, 1024, 1024 }, 0, 0 },
	  { "8B o", 4096, { 4096, 0, 0 }, 0, 0 },
	  { "8B gate/up", 4096, { 14336, 0, 0 }, 1, 0 },
	  { "8B down", 14336, { 4096, 0, 0 }, 0, 0 },
	  { "8B LM head", 4096, { 128256, 0, 0 }, 0, 1 } },
};

static struct kern_backend *be;
static cudaStream_t st;
static int n_sms;
static void *pool; /* 64 MB of random bf16 on the device */
#define POOL_BYTES ((size_t)64 << 20)

static size_t mat_bytes(const struct mat *mt)
{
	return (size_t)(mt->m[0] + mt->m[1] + mt->m[2]) * mt->k * 2 * (mt->swiglu ? 2 : 1);
}

/* Device memory of `bytes` filled from the random pool. */
static void *rand_dev(size_t bytes)
{
	void *p = be->ops->alloc(be, bytes);

	if (!p) {
		fprintf(stderr, "alloc %zu bytes failed\n", bytes);
		exit(1);
	}
	for (size_t o = 0; o < bytes; o += POOL_BYTES) {
		size_t c = bytes - o < POOL_BYTES ? bytes - o : POOL_BYTES;

		KT_CHECK_EQ_INT(cudaMemcpyAsync((char *)p + o, pool, c, cudaMemcpyDeviceToDevice, st),
				0);
	}
	return p;
}

/* One matrix's weights (w[0..2]: q/k/v segments, or gate and up). */
struct wset {
	void *w[3];
};

static void wset_new(struct wset *s, const struct mat *mt)
{
	for (int i = 0; i < 3; i++)
		s->w[i] = NULL;
	if (mt->swiglu) {
		s->w[0] = rand_dev((size_t)mt->m[0] * mt->k * 2);
		s->w[1] = rand_dev((size_t)mt->m[0] * mt->k * 2);
		return;
	}
	for (int i = 0; i < 3; i++)
		if (mt->m[i])
			s->w[i] = rand_dev((size_t)mt->m[i] * mt->k * 2);
}

static void wset_free(struct wset *s)
{
	for (int i = 0; i < 3; i++)
		be->ops->free(be, s->w[i]);
}

static void *lt_tmp[2]; /* gate and up for cuBLASLt's SwiGLU */
#define MAX_ROWS 64

static int mat_run_lt(const struct mat *mt, const struct wset *w, void *const out[3],
		      const void *in, uint32_t n)
{
	struct kern_cuda *c = be->priv;
	int r;

	c->gemv_off = 1; /* cuBLASLt, neither GEMV nor skinny */
	if (mt->swiglu)
		r = be->ops->matmul_swiglu(be, out[0], lt_tmp[0], lt_tmp[1], in, w->w[0], w->w[1],
					   n, mt->k, mt->m[0]);
	else if (mt->m[1])
		r = be->ops->matmul_qkv(be, out[0], out[1], out[2], in, w->w[0], w->w[1], w->w[2],
					NULL, NULL, NULL, n, mt->k, mt->m[0], mt->m[1]);
	else if (mt->f32)
		r = be->ops->matmul_f32out(be, out[0], in, w->w[0], n, mt->k, mt->m[0]);
	else
		r = be->ops->matmul(be, out[0], in, w->w[0], NULL, n, mt->k, mt->m[0]);
	c->gemv_off = 0;
	return r;
}

static int mat_run(const struct mat *mt, const struct wset *w, void *const out[3], const void *in,
		   uint32_t n, const struct variant *v)
{
	struct kc_gemv_cfg cfg = { v->rows, v->bps * (uint32_t)n_sms, v->pdl };
	struct kc_skinny_cfg skc = { v->bps * (uint32_t)n_sms, v->pdl };
	struct kern_cuda *c = be->priv;
	struct kc_gemv_seg seg[3];

	if (v->skinny) {
		if (mt->swiglu)
			return kc_skinny_swiglu(out[0], in, w->w[0], w->w[1], n, mt->k, mt->m[0], 0,
						c->skinny_ws, c->skinny_ws_bytes, n_sms, &skc, st);
		for (int i = 0; i < 3; i++)
			seg[i] = (struct kc_gemv_seg){ out[i], w->w[i], NULL, mt->m[i] };
		return kc_skinny_multi(seg, in, n, mt->k, mt->f32, c->skinny_ws, c->skinny_ws_bytes,
				       n_sms, &skc, st);
	}
	if (!v->rows)
		return mat_run_lt(mt, w, out, in, n);
	if (mt->swiglu)
		return kc_gemv_swiglu_cfg(out[0], in, w->w[0], w->w[1], n, mt->k, mt->m[0], 0, &cfg,
					  st);
	for (int i = 0; i < 3; i++)
		seg[i] = (struct kc_gemv_seg){ out[i], w->w[i], NULL, mt->m[i] };
	return kc_gemv_multi_cfg(seg, in, n, mt->k, mt->f32, &cfg, st);
}

/* All outputs of one launch as fp32 on the host. */
static float *mat_get(const struct mat *mt, void *const out[3], uint32_t n, size_t *ret_n)
{
	size_t total = 0, at = 0;
	float *r;

	for (int i = 0; i < 3; i++)
		total += (size_t)n * mt->m[i];
	r = kt_xmalloc(total * sizeof(float));
	for (int i = 0; i < 3 && mt->m[i]; i++) {
		size_t c = (size_t)n * mt->m[i];
		float *t = mt->f32 ? gt_get_f32(be, out[i], c) : gt_get(be, out[i], c);

		memcpy(r + at, t, c * sizeof(float));
		at += c;
		free(t);
	}
	*ret_n = total;
	return r;
}

/* got against ref as gt_close() judges, atol taken relative to ref's RMS
 * (bf16 results; SwiGLU's gate and up are rounded before the product). */
static int close_rms(const float *got, const float *ref, size_t n)
{
	double ss = 0, rms, worst = 0;
	size_t bad = 0;

	for (size_t i = 0; i < n; i++)
		ss += (double)ref[i] * ref[i];
	rms = sqrt(ss / (double)n);
	for (size_t i = 0; i < n; i++) {
		double err = fabs((double)got[i] - ref[i]);
		double tol = GT_ATOL * rms + GT_RTOL * fabs((double)ref[i]);

		bad += !(err <= tol);
		worst = err / tol > worst ? err / tol : worst;
	}
	if (bad)
		fprintf(stderr, "  %zu of %zu out of tolerance, worst %.2f of tol (rms %.3g)\n", bad,
			n, worst, rms);
	return bad == 0;
}

/* Microseconds per launch of `reps` launches of run(arg, i), i = 0 .. reps - 1,
 * back to back on st: the best of three rounds after a first one. */
static double time_launches(int (*run)(const void *arg, int i), const void *arg, int reps)
{
	cudaEvent_t e0, e1;
	float ms, best = 1e30f;

	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	for (int r = 0; r < 4; r++) {
		cudaEventRecord(e0, st);
		for (int i = 0; i < reps; i++)
			KT_CHECK_EQ_INT(run(arg, i), 0);
		cudaEventRecord(e1, st);
		cudaEventSynchronize(e1);
		cudaEventElapsedTime(&ms, e0, e1);
		if (r && ms < best)
			best = ms;
	}
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	return best * 1e3 / reps;
}

struct copy_arg {
	void *a, *b;
	size_t bytes;
};

static int copy_run(const void *arg, int i)
{
	const struct copy_arg *c = arg;

	return cudaMemcpyAsync(i & 1 ? c->a : c->b, i & 1 ? c->b : c->a, c->bytes,
			       cudaMemcpyDeviceToDevice, st) == cudaSuccess ? 0 : -1;
}

static double copy_gbs(void)
{
	struct copy_arg c = { be->ops->alloc(be, (size_t)1 << 30), be->ops->alloc(be, (size_t)1 << 30),
			      (size_t)1 << 30 };
	double us;

	KT_CHECK(c.a && c.b);
	us = time_launches(copy_run, &c, 5);
	be->ops->free(be, c.a);
	be->ops->free(be, c.b);
	return 2.0 * c.bytes / (us * 1e3);
}

struct mat_arg {
	const struct mat *mt;
	const struct wset *w;
	uint32_t nw, n;
	void *const *out;
	const void *in;
	const struct variant *v;
};

static int mat_launch(const void *arg, int i)
{
	const struct mat_arg *m = arg;

	return mat_run(m->mt, &m->w[(uint32_t)i % m->nw], m->out, m->in, m->n, m->v);
}

/* Microseconds per launch of `reps` launches back to back (best of 3),
 * over the nw weight sets in turn. */
static double time_mat(const struct mat *mt, const struct wset *w, uint32_t nw, void *const out[3],
		       const void *in, uint32_t n, const struct variant *v, int reps)
{
	const struct mat_arg m = { mt, w, nw, n, out, in, v };

	return time_launches(mat_launch, &m, reps);
}

/* Row counts and variants of one table (the first variant is the reference). */
struct plan {
	const uint32_t *ns;
	size_t n_ns;
	const struct variant *vars;
	size_t n_vars;
	int skinny;
};

static void one_matrix(const struct mat *mt, const struct plan *pl, double gbs, char *json,
		       size_t jcap)
{
	size_t bytes = mat_bytes(mt), nref = 0, ngot;
	uint32_t nw = (uint32_t)((((size_t)768 << 20) + bytes - 1) / bytes);
	struct wset w[8];
	void *out[3] = { NULL, NULL, NULL }, *in;
	float *x = gt_rand(&rng, (size_t)MAX_ROWS * mt->k, 1.0f);

	nw = nw < 2 ? 2 : nw > 8 ? 8 : nw;
	for (uint32_t i = 0; i < nw; i++)
		wset_new(&w[i], mt);
	in = gt_put(be, x, (size_t)MAX_ROWS * mt->k);
	for (int i = 0; i < 3; i++)
		if (mt->m[i])
			out[i] = be->ops->alloc(be,
						(size_t)MAX_ROWS * mt->m[i] * (mt->f32 ? 4 : 2));
	for (size_t ni = 0; ni < pl->n_ns; ni++) {
		uint32_t n = pl->ns[ni];
		float *ref = NULL, *got;
		double t[8] = { 0 };

		printf("  %-11s n=%-2u %6.1f MB:", mt->name, n, bytes / 1e6);
		for (size_t vi = 0; vi < pl->n_vars; vi++) {
			const struct variant *v = &pl->vars[vi];
			double us;

			KT_CHECK_EQ_INT(mat_run(mt, &w[0], out, in, n, v), 0);
			KT_CHECK_EQ_INT(be->ops->sync(be), 0);
			got = mat_get(mt, out, n, &ngot);
			if (!ref) {
				ref = got;
				nref = ngot;
			} else {
				int ok = ngot == nref && close_rms(got, ref, ngot);

				free(got);
				if (!ok) {
					fprintf(stderr, "%s n=%u %s: differs from cuBLASLt's\n",
						mt->name, n, v->name);
					kt_failures++;
					printf(" %s MISMATCH", v->name);
					continue;
				}
			}
			us = time_mat(mt, w, nw, out, in, n, v, 30);
			if (vi < 8)
				t[vi] = us;
			if (pl->skinny)
				printf(" %s %.1f us %.0f GB/s%s", v->name, us, bytes / (us * 1e3),
				       vi ? "" : ";");
			else
				printf(" %s %.1f us (%.0f%%)", v->name, us,
				       100.0 * bytes / (us * 1e3) / gbs);
			if ((pl->skinny || n == 1) && jcap > strlen(json) + 64)
				snprintf(json + strlen(json), jcap - strlen(json),
					 pl->skinny ? "\"%s n%u %s\":%.2f," : "\"%s%.0u %s\":%.2f,",
					 mt->name, pl->skinny ? n : 0, v->name, us);
		}
		if (pl->skinny && t[0] > 0 && t[1] > 0)
			printf(" | sk/lt %.2f, sk %.0f%% of copy", t[1] / t[0],
			       100.0 * bytes / (t[1] * 1e3) / gbs);
		printf("\n");
		free(ref);
	}
	for (uint32_t i = 0; i < nw; i++)
		wset_free(&w[i]);
	for (int i = 0; i < 3; i++)
		be->ops->free(be, out[i]);
	be->ops->free(be, in);
	free(x);
}

/* ------------------------------------------------------------ a decode step */

struct step {
	const struct mat *mt; /* q/k/v, o, gate/up, down, LM head */
	uint32_t layers, D, F, qdim, kvdim;
	struct wset *lw;      /* [layers * 4] */
	struct wset lm;
	void *norm, *x, *h, *q, *k, *v, *o, *act, *logits;
};

static int step_run(struct step *s, const struct variant *v)
{
	void *qkv[3] = { s->q, s->k, s->v }, *o[3] = { s->o, NULL, NULL };
	void *act[3] = { s->act, NULL, NULL }, *lg[3] = { s->logits, NULL, NULL };
	int r = 0;

	for (uint32_t l = 0; l < s->layers && !r; l++) {
		struct wset *w = &s->lw[l * 4];

		if ((r = kc_add_rmsnorm(s->h, s->x, s->x, l ? s->o : NULL, s->norm, 1, s->D, 1e-5f, 0,
					st)) ||
		    (r = mat_run(&s->mt[0], &w[0], qkv, s->h, 1, v)) ||
		    (r = mat_run(&s->mt[1], &w[1], o, s->q, 1, v)) ||
		    (r = kc_add_rmsnorm(s->h, s->x, s->x, s->o, s->norm, 1, s->D, 1e-5f, 0, st)) ||
		    (r = mat_run(&s->mt[2], &w[2], act, s->h, 1, v)))
			break;
		r = mat_run(&s->mt[3], &w[3], o, s->act, 1, v);
	}
	if (!r)
		r = kc_add_rmsnorm(s->h, s->x, s->x, s->o, s->norm, 1, s->D, 1e-5f, 0, st);
	if (!r)
		r = mat_run(&s->mt[4], &s->lm, lg, s->h, 1, v);
	return r;
}

static double time_step(struct step *s, const struct variant *v, int graph)
{
	cudaGraph_t g = NULL;
	cudaGraphExec_t ge = NULL;
	cudaEvent_t e0, e1;
	float ms, t[12];
	int r;

	if (graph) {
		if (cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
			return -1;
		r = step_run(s, v);
		if (cudaStreamEndCapture(st, &g) != cudaSuccess || r ||
		    cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) {
			fprintf(stderr, "graph capture (%s): %s\n", v->name,
				cudaGetErrorString(cudaGetLastError()));
			if (g)
				cudaGraphDestroy(g);
			return -1;
		}
		cudaGraphDestroy(g);
	}
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	for (int i = 0; i < 12; i++) {
		cudaEventRecord(e0, st);
		if (graph)
			KT_CHECK_EQ_INT(cudaGraphLaunch(ge, st), 0);
		else
			KT_CHECK_EQ_INT(step_run(s, v), 0);
		cudaEventRecord(e1, st);
		cudaEventSynchronize(e1);
		cudaEventElapsedTime(&ms, e0, e1);
		t[i] = ms;
	}
	KT_CHECK_EQ_INT(be->ops->sync(be), 0);
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	if (ge)
		cudaGraphExecDestroy(ge);
	/* median of the last 10 */
	for (int i = 2; i < 12; i++)
		for (int j = i + 1; j < 12; j++)
			if (t[j] < t[i]) {
				float tmp = t[i];

				t[i] = t[j];
				t[j] = tmp;
			}
	return (t[6] + t[7]) / 2;
}

static void decode_step(int shape, double gbs, char *json, size_t jcap)
{
	struct step s = { .mt = mats[shape] };
	double bytes = 0;
	float *xh;

	s.layers = shape ? 32 : 16;
	s.D = shape ? 4096 : 2048;
	s.F = shape ? 14336 : 8192;
	s.qdim = s.D;
	s.kvdim = shape ? 1024 : 512;
	s.lw = kt_xmalloc((size_t)s.layers * 4 * sizeof(*s.lw));
	for (uint32_t l = 0; l < s.layers; l++)
		for (int i = 0; i < 4; i++) {
			wset_new(&s.lw[l * 4 + i], &s.mt[i]);
			bytes += mat_bytes(&s.mt[i]);
		}
	wset_new(&s.lm, &s.mt[4]);
	bytes += mat_bytes(&s.mt[4]);
	xh = gt_rand(&rng, s.D, 1.0f);
	s.norm = gt_put(be, xh, s.D);
	s.x = gt_put(be, xh, s.D);
	s.h = be->ops->alloc(be, (size_t)s.D * 2);
	s.o = be->ops->alloc(be, (size_t)s.D * 2);
	s.q = gt_put(be, xh, s.D);
	s.k = be->ops->alloc(be, (size_t)s.kvdim * 2);
	s.v = be->ops->alloc(be, (size_t)s.kvdim * 2);
	s.act = be->ops->alloc(be, (size_t)s.F * 2);
	s.logits = be->ops->alloc(be, (size_t)128256 * 4);
	KT_CHECK_EQ_INT(be->ops->sync(be), 0);
	printf("  %s decode step, GEMVs + norms (%.3f GB, copy-rate floor %.3f ms):\n",
	       shape ? "8B" : "1B", bytes / 1e9, bytes / gbs / 1e6);
	for (size_t vi = 1; vi < KT_ARRAY_SIZE(vars); vi++) {
		const struct variant *v = &vars[vi];
		double te, tg;

		if (!v->pdl)
			kc_pdl_override(0);
		te = time_step(&s, v, 0);
		tg = time_step(&s, v, 1);
		kc_pdl_override(1);
		printf("    %-10s eager %.3f ms, graph %.3f ms (%.0f%% of copy rate)\n", v->name, te,
		       tg, 100.0 * bytes / (tg * 1e6) / gbs);
		if (jcap > strlen(json) + 64)
			snprintf(json + strlen(json), jcap - strlen(json), "\"%s step %s\":%.4f,",
				 shape ? "8B" : "1B", v->name, tg);
	}
	for (uint32_t l = 0; l < s.layers * 4; l++)
		wset_free(&s.lw[l]);
	wset_free(&s.lm);
	free(s.lw);
	free(xh);
	void *bufs[] = { s.norm, s.x, s.h, s.o, s.q, s.k, s.v, s.act, s.logits };
	for (size_t i = 0; i < KT_ARRAY_SIZE(bufs); i++)
		be->ops->free(be, bufs[i]);
}

struct wg_arg {
	void *out;
	const void *in, *wg, *wu;
	uint32_t n, k, m;
	int hf, cl;
};

static int wg_launch(const void *arg, int i)
{
	const struct wg_arg *a = arg;

	(void)i;
	return kc_swiglu_wg(a->out, a->in, a->wg, a->wu, a->n, a->k, a->m, a->hf, n_sms, a->cl, st);
}

/* Mode wg: one shape's gate/up (k, m) at each row count of ns. */
static void wg_shape(const char *name, uint32_t k, uint32_t m, char *json, size_t jcap)
{
	static const uint32_t ns[] = { 256, 512, 1024, 2048 };
	const struct mat mt = { name, k, { m, 0, 0 }, 1, 0 };
	const struct variant lt = { "lt", 0, 0, 0, 0 };
	struct kern_cuda *c = be->priv;
	const uint32_t was = c->swiglu_wg;
	struct wset w;

	wset_new(&w, &mt);
	for (size_t i = 0; i < KT_ARRAY_SIZE(ns); i++) {
		const uint32_t n = ns[i];
		const size_t nm = (size_t)n * m;
		void *in = rand_dev((size_t)n * k * 2), *o_lt = rand_dev(nm * 2);
		void *o_wg = rand_dev(nm * 2), *out[3] = { o_lt, NULL, NULL };
		void *tmp_was[2] = { lt_tmp[0], lt_tmp[1] };
		double t_lt, flop = 4.0 * n * k * m;

		lt_tmp[0] = rand_dev(nm * 2);
		lt_tmp[1] = rand_dev(nm * 2);
		c->swiglu_wg = 0;
		KT_CHECK_EQ_INT(mat_run_lt(&mt, &w, out, in, n), 0);
		t_lt = time_mat(&mt, &w, 1, out, in, n, &lt, 10);
		printf("  %-12s n=%-5u cuBLASLt pair + SwiGLU %8.1f us (%4.0f TFLOP/s)", name, n, t_lt,
		       flop / t_lt * 1e-6);
		snprintf(json + strlen(json), jcap - strlen(json), "\"%s n%u\":{\"lt_us\":%.2f",
			 name, n, t_lt);
		for (int cl = 1; cl <= 2; cl++) {
			const struct wg_arg wa = { o_wg, in, w.w[0], w.w[1], n, k, m, c->hf_round, cl };
			float *ref, *got;
			double t_wg;
			int r;

			/* NaN first: an element the kernel leaves fails the check */
			KT_CHECK_EQ_INT(cudaMemsetAsync(o_wg, 0xff, nm * 2, st), cudaSuccess);
			r = wg_launch(&wa, 0);
			if (r < 0) {
				printf("\n  %s n=%u cluster %d: the wgmma kernel refused (%d): not an "
				       "sm_90a build on a 9.0 device?\n",
				       name, n, cl, r);
				KT_CHECK(0);
				continue;
			}
			KT_CHECK_EQ_INT(cudaStreamSynchronize(st), 0);
			ref = gt_get(be, o_lt, nm);
			got = gt_get(be, o_wg, nm);
			KT_CHECK(close_rms(got, ref, nm));
			free(ref);
			free(got);
			t_wg = time_launches(wg_launch, &wa, 10);
			printf("   wgmma cluster %d %8.1f us (%4.0f TFLOP/s, %.3fx)", cl, t_wg,
			       flop / t_wg * 1e-6, t_lt / t_wg);
			snprintf(json + strlen(json), jcap - strlen(json), ",\"wg%d_us\":%.2f", cl, t_wg);
		}
		printf("\n");
		snprintf(json + strlen(json), jcap - strlen(json), "},");
		be->ops->free(be, lt_tmp[0]);
		be->ops->free(be, lt_tmp[1]);
		lt_tmp[0] = tmp_was[0];
		lt_tmp[1] = tmp_was[1];
		be->ops->free(be, in);
		be->ops->free(be, o_lt);
		be->ops->free(be, o_wg);
	}
	c->swiglu_wg = was;
	wset_free(&w);
}

int main(int argc, char **argv)
{
	const char *which = argc > 1 ? argv[1] : "all";
	const int sk = argc > 2 && !strcmp(argv[2], "skinny");
	const int wg = argc > 2 && !strcmp(argv[2], "wg");
	static const uint32_t gemv_ns[] = { 1, 2, 3, 4 }, sk_ns[] = { 8, 16, 32, 64 };
	const struct plan pl = sk ? (struct plan){ sk_ns, 4, sk_vars, KT_ARRAY_SIZE(sk_vars), 1 }
				  : (struct plan){ gemv_ns, 4, vars, KT_ARRAY_SIZE(vars), 0 };
	static char json[16384] = "{\"bench\":\"gemv\",";
	uint16_t *h;
	double gbs;

	gt_init("time_cuda_gemv");
	be = gt_gpu;
	st = ((struct kern_cuda *)be->priv)->stream;
	n_sms = ((struct kern_cuda *)be->priv)->n_sms;
	h = kt_xmalloc(POOL_BYTES);
	/* Random bf16 of magnitude 2^-7..2^-6, both signs. */
	for (size_t j = 0; j < POOL_BYTES / 2; j++)
		h[j] = (uint16_t)(0x3c00u | (kt_next(&rng) & 0x807fu));
	pool = kt_upload(be, h, POOL_BYTES);
	free(h);
	lt_tmp[0] = be->ops->alloc(be, (size_t)MAX_ROWS * 14336 * 2);
	lt_tmp[1] = be->ops->alloc(be, (size_t)MAX_ROWS * 14336 * 2);
	gbs = copy_gbs();
	printf("copy bandwidth %.0f GB/s (read + write); PDL %s\n", gbs,
	       kc_pdl_enabled() ? "available" : "off");
	snprintf(json + strlen(json), sizeof(json) - strlen(json), "\"copy_gbs\":%.1f,", gbs);
	if (wg) {
		printf("gate/up + SwiGLU, us per launch of 10 back to back:\n");
		if (!strcmp(which, "all") || !strcmp(which, "1b"))
			wg_shape("1B gate/up", 2048, 8192, json, sizeof(json));
		if (!strcmp(which, "all") || !strcmp(which, "8b"))
			wg_shape("8B gate/up", 4096, 14336, json, sizeof(json));
		which = "none";
	} else {
		printf("one matrix, us per launch of 30 back to back (%s):\n",
		       sk ? "GB/s of weights" : "% of copy rate");
	}
	for (int sh = 0; sh < 2; sh++) {
		if (strcmp(which, "all") && strcmp(which, sh ? "8b" : "1b"))
			continue;
		for (int i = 0; i < (sk ? N_SK_MATS : N_MATS); i++)
			one_matrix(sk ? &sk_mats[sh][i] : &mats[sh][i], &pl, gbs, json,
				   sizeof(json));
	}
	for (int sh = 0; sh < 2 && !sk; sh++) {
		if (strcmp(which, "all") && strcmp(which, sh ? "8b" : "1b"))
			continue;
		decode_step(sh, gbs, json, sizeof(json));
	}
	snprintf(json + strlen(json) - 1, sizeof(json) - strlen(json) + 1, "}");
	be->ops->free(be, pool);
	be->ops->free(be, lt_tmp[0]);
	be->ops->free(be, lt_tmp[1]);
	gt_fini();
	printf("BENCH %s\n", json);
	return kt_finish("time_cuda_gemv");
}

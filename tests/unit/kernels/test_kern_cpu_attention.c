/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the cpu backend's rope_kv_write and paged attention, checked
 * together against dense causal attention computed in double from the unpaged
 * Q/K/V: multi-sequence batches, shuffled non-contiguous page tables, GQA,
 * sequences with context written by an earlier step plus new chunks, empty
 * sequences in a step; and the argument checks (bad slot, bad page, bad
 * position, bad sequence bounds: -EINVAL with nothing written).
 * The pool starts as NaN, so a read of a slot nobody wrote poisons the output.
 */
#include <errno.h>

#include "kt_attn.h"

#define MAX_SEQS 8

struct scen {
	struct geom g;
	uint32_t n_seqs;
	struct seq seq[MAX_SEQS];
	float *qraw[MAX_SEQS], *kraw[MAX_SEQS], *vraw[MAX_SEQS]; /* [ctx][heads*hd] */
	int32_t *bt;     /* host block table [n_seqs * max_blocks] */
	float *inv_freq; /* host [hd/2] */
	float *d_inv_freq;
	struct kern_kv kv;
	float scale;
};

/* A step's inputs in backend memory (cpu: host memory the test may poke). */
struct step {
	struct kern_batch b;
	int32_t *pos, *slot, *seq_start, *ctx_len, *bt;
	float *q, *k, *v, *out;
	uint32_t *tok_seq, *tok_pos; /* host: which (sequence, position) each token is */
};

static struct kt_rng rng = { 0x617474ull };

static void scen_init(struct kern_backend *be, struct scen *sc)
{
	const struct geom *g = &sc->g;
	uint32_t q_w = g->n_heads * g->head_dim, kv_w = g->n_kv_heads * g->head_dim;
	int32_t *perm = kt_xmalloc(g->n_pages * sizeof(int32_t));
	uint32_t used = 0;
	size_t pool_elems;

	for (uint32_t p = 0; p < g->n_pages; p++)
		perm[p] = (int32_t)p;
	kt_shuffle(&rng, perm, g->n_pages);
	sc->bt = kt_xmalloc((size_t)sc->n_seqs * g->max_blocks * sizeof(int32_t));
	for (uint32_t s = 0; s < sc->n_seqs; s++) {
		uint32_t ctx = ctx_of(&sc->seq[s], 2);
		uint32_t nb = (ctx + g->page_tokens - 1) / g->page_tokens;

		if (nb > g->max_blocks || used + nb > g->n_pages) {
			fprintf(stderr, "scenario does not fit its pool\n");
			exit(1);
		}
		for (uint32_t j = 0; j < g->max_blocks; j++)
			sc->bt[s * g->max_blocks + j] = j < nb ? perm[used + j] : -1;
		used += nb;
		sc->qraw[s] = kt_xmalloc((size_t)ctx * q_w * sizeof(float));
		sc->kraw[s] = kt_xmalloc((size_t)ctx * kv_w * sizeof(float));
		sc->vraw[s] = kt_xmalloc((size_t)ctx * kv_w * sizeof(float));
		kt_fill(&rng, sc->qraw[s], (size_t)ctx * q_w, 2.0f);
		kt_fill(&rng, sc->kraw[s], (size_t)ctx * kv_w, 2.0f);
		kt_fill(&rng, sc->vraw[s], (size_t)ctx * kv_w, 1.0f);
	}
	free(perm);

	sc->inv_freq = kt_xmalloc(g->head_dim / 2 * sizeof(float));
	for (uint32_t d = 0; d < g->head_dim / 2; d++)
		sc->inv_freq[d] = (float)(1.0 / pow(10000.0, 2.0 * d / g->head_dim));
	sc->d_inv_freq = kt_upload(be, sc->inv_freq, g->head_dim / 2 * sizeof(float));
	sc->scale = (float)(1.0 / sqrt(g->head_dim));

	sc->kv = (struct kern_kv){ .n_pages = g->n_pages, .page_tokens = g->page_tokens,
				   .n_layers = g->n_layers, .n_kv_heads = g->n_kv_heads,
				   .head_dim = g->head_dim };
	pool_elems = kern_kv_page_elems(&sc->kv) * g->n_pages;
	sc->kv.base = be->ops->alloc(be, pool_elems * sizeof(float));
	for (size_t i = 0; i < pool_elems; i++)
		((float *)sc->kv.base)[i] = NAN;
}

static void scen_free(struct kern_backend *be, struct scen *sc)
{
	for (uint32_t s = 0; s < sc->n_seqs; s++) {
		free(sc->qraw[s]);
		free(sc->kraw[s]);
		free(sc->vraw[s]);
	}
	free(sc->bt);
	free(sc->inv_freq);
	be->ops->free(be, sc->d_inv_freq);
	be->ops->free(be, sc->kv.base);
}

/* Tokens of step 1 (positions [0, n_past)) or step 2 ([n_past, n_past+n_new)). */
static void step_build(struct kern_backend *be, const struct scen *sc, int step, struct step *st)
{
	const struct geom *g = &sc->g;
	uint32_t q_w = g->n_heads * g->head_dim, kv_w = g->n_kv_heads * g->head_dim;
	int32_t seq_start[MAX_SEQS + 1], ctx_len[MAX_SEQS];
	uint32_t n = 0, max_ctx = 0;
	int32_t *pos, *slot;
	float *q, *k, *v;

	for (uint32_t s = 0; s < sc->n_seqs; s++)
		n += step == 1 ? sc->seq[s].n_past : sc->seq[s].n_new;
	pos = kt_xmalloc(n * sizeof(int32_t));
	slot = kt_xmalloc(n * sizeof(int32_t));
	q = kt_xmalloc((size_t)n * q_w * sizeof(float));
	k = kt_xmalloc((size_t)n * kv_w * sizeof(float));
	v = kt_xmalloc((size_t)n * kv_w * sizeof(float));
	st->tok_seq = kt_xmalloc(n * sizeof(uint32_t));
	st->tok_pos = kt_xmalloc(n * sizeof(uint32_t));

	n = 0;
	for (uint32_t s = 0; s < sc->n_seqs; s++) {
		uint32_t p0 = step == 1 ? 0 : sc->seq[s].n_past, p1 = ctx_of(&sc->seq[s], step);

		seq_start[s] = (int32_t)n;
		ctx_len[s] = (int32_t)p1;
		max_ctx = p1 > max_ctx ? p1 : max_ctx;
		for (uint32_t p = p0; p < p1; p++, n++) {
			int32_t page = sc->bt[s * g->max_blocks + p / g->page_tokens];

			pos[n] = (int32_t)p;
			slot[n] = page * (int32_t)g->page_tokens + (int32_t)(p % g->page_tokens);
			st->tok_seq[n] = s;
			st->tok_pos[n] = p;
			memcpy(q + (size_t)n * q_w, sc->qraw[s] + (size_t)p * q_w, q_w * sizeof(float));
			memcpy(k + (size_t)n * kv_w, sc->kraw[s] + (size_t)p * kv_w, kv_w * sizeof(float));
			memcpy(v + (size_t)n * kv_w, sc->vraw[s] + (size_t)p * kv_w, kv_w * sizeof(float));
		}
	}
	seq_start[sc->n_seqs] = (int32_t)n;

	st->pos = kt_upload(be, pos, n * sizeof(int32_t));
	st->slot = kt_upload(be, slot, n * sizeof(int32_t));
	st->seq_start = kt_upload(be, seq_start, (sc->n_seqs + 1) * sizeof(int32_t));
	st->ctx_len = kt_upload(be, ctx_len, sc->n_seqs * sizeof(int32_t));
	st->bt = kt_upload(be, sc->bt, (size_t)sc->n_seqs * g->max_blocks * sizeof(int32_t));
	st->q = kt_upload(be, q, (size_t)n * q_w * sizeof(float));
	st->k = kt_upload(be, k, (size_t)n * kv_w * sizeof(float));
	st->v = kt_upload(be, v, (size_t)n * kv_w * sizeof(float));
	st->out = be->ops->alloc(be, (size_t)n * q_w * sizeof(float));
	st->b = (struct kern_batch){ .n_tokens = n, .n_seqs = sc->n_seqs,
				     .max_blocks = g->max_blocks, .max_ctx = max_ctx,
				     .pos = st->pos, .slot = st->slot, .seq_start = st->seq_start,
				     .ctx_len = st->ctx_len, .block_table = st->bt };
	free(pos);
	free(slot);
	free(q);
	free(k);
	free(v);
}

static void step_free(struct kern_backend *be, struct step *st)
{
	void *dev[] = { st->pos, st->slot, st->seq_start, st->ctx_len, st->bt,
			st->q, st->k, st->v, st->out };

	for (size_t i = 0; i < KT_ARRAY_SIZE(dev); i++)
		be->ops->free(be, dev[i]);
	free(st->tok_seq);
	free(st->tok_pos);
}

/* Reference rotary embedding of one head vector, in double. */
static void ref_rope(double *out, const float *x, uint32_t hd, uint32_t pos, const float *inv_freq)
{
	uint32_t half = hd / 2;

	for (uint32_t d = 0; d < half; d++) {
		double a = (double)pos * inv_freq[d], c = cos(a), s = sin(a);

		out[d] = x[d] * c - x[d + half] * s;
		out[d + half] = x[d + half] * c + x[d] * s;
	}
}

/* Check the in-place rotated q and k, the pool slots, and the attention
 * output of every token of a step against the dense reference. */
static void step_check(const struct scen *sc, const struct step *st, const char *tag)
{
	const struct geom *g = &sc->g;
	const uint32_t hd = g->head_dim, group = g->n_heads / g->n_kv_heads;
	uint32_t n = st->b.n_tokens, q_w = g->n_heads * hd, kv_w = g->n_kv_heads * hd;
	double *ref_q = kt_xmalloc((size_t)n * q_w * sizeof(double));
	double *ref_k = kt_xmalloc((size_t)n * kv_w * sizeof(double));
	double *ref_v = kt_xmalloc((size_t)n * kv_w * sizeof(double));
	double *ref_o = kt_xmalloc((size_t)n * q_w * sizeof(double));
	float *pool_k = kt_xmalloc((size_t)n * kv_w * sizeof(float));
	float *pool_v = kt_xmalloc((size_t)n * kv_w * sizeof(float));
	double *krot = kt_xmalloc(hd * sizeof(double)), *sc_buf = NULL;
	char what[96];

	for (uint32_t i = 0; i < n; i++) {
		uint32_t s = st->tok_seq[i], p = st->tok_pos[i];
		uint32_t page = (uint32_t)st->slot[i] / g->page_tokens;
		uint32_t tok = (uint32_t)st->slot[i] % g->page_tokens;
		const float *base = sc->kv.base;

		for (uint32_t h = 0; h < g->n_heads; h++)
			ref_rope(ref_q + (size_t)i * q_w + h * hd, sc->qraw[s] + (size_t)p * q_w + h * hd,
				 hd, p, sc->inv_freq);
		for (uint32_t h = 0; h < g->n_kv_heads; h++) {
			ref_rope(ref_k + (size_t)i * kv_w + h * hd,
				 sc->kraw[s] + (size_t)p * kv_w + h * hd, hd, p, sc->inv_freq);
			for (uint32_t d = 0; d < hd; d++)
				ref_v[(size_t)i * kv_w + h * hd + d] =
					sc->vraw[s][(size_t)p * kv_w + h * hd + d];
			memcpy(pool_k + (size_t)i * kv_w + h * hd,
			       base + kern_kv_offset(&sc->kv, page, g->layer, 0, h, tok),
			       hd * sizeof(float));
			memcpy(pool_v + (size_t)i * kv_w + h * hd,
			       base + kern_kv_offset(&sc->kv, page, g->layer, 1, h, tok),
			       hd * sizeof(float));
		}

		/* Dense causal attention over positions 0..p of sequence s. */
		sc_buf = realloc(sc_buf, (p + 1) * sizeof(double));
		for (uint32_t h = 0; h < g->n_heads; h++) {
			const double *qh = ref_q + (size_t)i * q_w + h * hd;
			uint32_t kvh = h / group;
			double mx = -INFINITY, sum = 0;
			double *o = ref_o + (size_t)i * q_w + h * hd;

			for (uint32_t j = 0; j <= p; j++) {
				double dot = 0;

				ref_rope(krot, sc->kraw[s] + (size_t)j * kv_w + kvh * hd, hd, j,
					 sc->inv_freq);
				for (uint32_t d = 0; d < hd; d++)
					dot += qh[d] * krot[d];
				sc_buf[j] = dot * sc->scale;
				mx = fmax(mx, sc_buf[j]);
			}
			for (uint32_t j = 0; j <= p; j++)
				sum += (sc_buf[j] = exp(sc_buf[j] - mx));
			for (uint32_t d = 0; d < hd; d++)
				o[d] = 0;
			for (uint32_t j = 0; j <= p; j++)
				for (uint32_t d = 0; d < hd; d++)
					o[d] += sc_buf[j] / sum *
						sc->vraw[s][(size_t)j * kv_w + kvh * hd + d];
		}
	}
	/* The kernel rounds the angle pos * inv_freq to fp32 as transformers does;
	 * the reference does not: up to ~1e-5 apart at the positions used here. */
	snprintf(what, sizeof(what), "%s: rope q", tag);
	kt_close(what, st->q, ref_q, (size_t)n * q_w, 1e-5, 1e-5);
	snprintf(what, sizeof(what), "%s: rope k", tag);
	kt_close(what, st->k, ref_k, (size_t)n * kv_w, 1e-5, 1e-5);
	snprintf(what, sizeof(what), "%s: pool K", tag);
	kt_close(what, pool_k, ref_k, (size_t)n * kv_w, 1e-5, 1e-5);
	snprintf(what, sizeof(what), "%s: pool V", tag);
	kt_close(what, pool_v, ref_v, (size_t)n * kv_w, 0, 0);
	snprintf(what, sizeof(what), "%s: attention", tag);
	kt_close(what, st->out, ref_o, (size_t)n * q_w, 2e-6, 2e-5);

	free(ref_q);
	free(ref_k);
	free(ref_v);
	free(ref_o);
	free(pool_k);
	free(pool_v);
	free(krot);
	free(sc_buf);
}

/* No element outside the written slots of `layer` may have changed. */
static void check_pool_untouched(const struct scen *sc, const char *tag)
{
	kt_pool_check(sc->kv.base, &sc->kv, &sc->g, sc->bt, sc->n_seqs, sc->seq, tag);
}

static void run_scenario(struct kern_backend *be, struct scen *sc, const char *tag)
{
	struct step st;
	char what[64];

	scen_init(be, sc);
	for (int step = 1; step <= 2; step++) {
		step_build(be, sc, step, &st);
		snprintf(what, sizeof(what), "%s step %d", tag, step);
		if (st.b.n_tokens) {
			KT_CHECK_EQ_INT(be->ops->rope_kv_write(be, st.q, st.k, st.v, &st.b, &sc->kv,
							       sc->g.layer, sc->g.n_heads,
							       sc->d_inv_freq),
					0);
			KT_CHECK_EQ_INT(be->ops->attention(be, st.out, st.q, &st.b, &sc->kv,
							   sc->g.layer, sc->g.n_heads, sc->scale),
					0);
			be->ops->sync(be);
			step_check(sc, &st, what);
		}
		step_free(be, &st);
	}
	check_pool_untouched(sc, tag);
	scen_free(be, sc);
}

static void test_handmade(struct kern_backend *be)
{
	struct scen sc = {
		.g = { .n_layers = 2, .n_kv_heads = 2, .n_heads = 8, .head_dim = 16,
		       .page_tokens = 4, .n_pages = 40, .max_blocks = 6, .layer = 1 },
		.n_seqs = 5,
		/* prefill from nothing; decode; chunk from mid-page; chunk from a
		 * page boundary; a first single token. */
		.seq = { { 0, 7 }, { 9, 1 }, { 5, 6 }, { 12, 3 }, { 0, 1 } },
	};

	run_scenario(be, &sc, "handmade");
}

static void test_random(struct kern_backend *be, uint64_t seed)
{
	struct scen sc = {
		.g = { .n_layers = 3, .n_kv_heads = 2, .n_heads = 8, .head_dim = 64,
		       .page_tokens = 16, .n_pages = 64, .max_blocks = 5, .layer = 2 },
		.n_seqs = 6,
	};
	char tag[48];

	rng.s ^= seed;
	for (uint32_t s = 0; s < sc.n_seqs; s++) {
		sc.seq[s].n_past = kt_below(&rng, 50);
		sc.seq[s].n_new = 1 + kt_below(&rng, 24);
	}
	snprintf(tag, sizeof(tag), "random %llu", (unsigned long long)seed);
	run_scenario(be, &sc, tag);
}

/* Every rejected call returns -EINVAL and leaves q, k, the pool and out as
 * they were. */
static void test_validation(struct kern_backend *be)
{
	struct scen sc = {
		.g = { .n_layers = 2, .n_kv_heads = 2, .n_heads = 4, .head_dim = 8,
		       .page_tokens = 4, .n_pages = 12, .max_blocks = 4, .layer = 0 },
		.n_seqs = 3,
		.seq = { { 3, 2 }, { 0, 4 }, { 6, 1 } },
	};
	const struct geom *g = &sc.g;
	size_t pool_bytes, q_bytes, out_bytes;
	void *pool_snap, *q_snap;
	struct kern_kv kv2;
	struct step st;
	int32_t saved;
	float *out_snap;

	scen_init(be, &sc);
	/* Step 1 writes the earlier context; step 2 is the one tampered with. */
	step_build(be, &sc, 1, &st);
	KT_CHECK_EQ_INT(be->ops->rope_kv_write(be, st.q, st.k, st.v, &st.b, &sc.kv, g->layer,
					       g->n_heads, sc.d_inv_freq), 0);
	step_free(be, &st);
	step_build(be, &sc, 2, &st);
	pool_bytes = kern_kv_page_elems(&sc.kv) * g->n_pages * sizeof(float);
	q_bytes = (size_t)st.b.n_tokens * g->n_heads * g->head_dim * sizeof(float);
	out_bytes = q_bytes;
	pool_snap = kt_xmalloc(pool_bytes);
	q_snap = kt_xmalloc(q_bytes);
	out_snap = kt_xmalloc(out_bytes);
	memcpy(pool_snap, sc.kv.base, pool_bytes);
	memcpy(q_snap, st.q, q_bytes);
	for (size_t i = 0; i < out_bytes / sizeof(float); i++)
		st.out[i] = out_snap[i] = -777.0f;

#define ROPE() be->ops->rope_kv_write(be, st.q, st.k, st.v, &st.b, &kv2, g->layer, g->n_heads, \
				      sc.d_inv_freq)
#define ATTN() be->ops->attention(be, st.out, st.q, &st.b, &kv2, g->layer, g->n_heads, sc.scale)
	kv2 = sc.kv;
	/* Slots: one past the pool, negative. The bad token is the last one, so
	 * a kernel that checks while writing would already have written. */
	saved = st.slot[st.b.n_tokens - 1];
	st.slot[st.b.n_tokens - 1] = (int32_t)(g->n_pages * g->page_tokens);
	KT_CHECK_EQ_INT(ROPE(), -EINVAL);
	st.slot[st.b.n_tokens - 1] = -1;
	KT_CHECK_EQ_INT(ROPE(), -EINVAL);
	st.slot[st.b.n_tokens - 1] = saved;
	st.pos[st.b.n_tokens - 1] = -3;
	KT_CHECK_EQ_INT(ROPE(), -EINVAL);
	/* pos < 0 is also an attention error. */
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	st.pos[st.b.n_tokens - 1] = sc.seq[2].n_past;
	/* Geometry: layer, head counts, odd head_dim, NULLs. */
	KT_CHECK_EQ_INT(be->ops->rope_kv_write(be, st.q, st.k, st.v, &st.b, &kv2, g->n_layers,
					       g->n_heads, sc.d_inv_freq), -EINVAL);
	KT_CHECK_EQ_INT(be->ops->rope_kv_write(be, st.q, st.k, st.v, &st.b, &kv2, g->layer, 3,
					       sc.d_inv_freq), -EINVAL);
	KT_CHECK_EQ_INT(be->ops->rope_kv_write(be, st.q, st.k, st.v, &st.b, &kv2, g->layer,
					       g->n_heads, NULL), -EINVAL);
	kv2.head_dim = 7;
	KT_CHECK_EQ_INT(ROPE(), -EINVAL);
	kv2 = sc.kv;
	kv2.base = NULL;
	KT_CHECK_EQ_INT(ROPE(), -EINVAL);
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	kv2 = sc.kv;
	KT_CHECK(!memcmp(pool_snap, sc.kv.base, pool_bytes));
	KT_CHECK(!memcmp(q_snap, st.q, q_bytes));

	/* Now write the step for real so that attention has its K/V. */
	KT_CHECK_EQ_INT(ROPE(), 0);

	/* Page index of a used block outside the pool, or negative. */
	saved = st.bt[2 * g->max_blocks + 1];
	st.bt[2 * g->max_blocks + 1] = (int32_t)g->n_pages;
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	st.bt[2 * g->max_blocks + 1] = -1;
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	st.bt[2 * g->max_blocks + 1] = saved;
	/* Position at ctx_len (one past the context). */
	st.pos[st.b.n_tokens - 1] = st.ctx_len[2];
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	st.pos[st.b.n_tokens - 1] = st.ctx_len[2] - 1;
	/* Context longer than the block table. */
	saved = st.ctx_len[1];
	st.ctx_len[1] = (int32_t)(g->max_blocks * g->page_tokens + 1);
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	st.ctx_len[1] = saved;
	/* Sequence bounds that do not partition the tokens. */
	st.seq_start[sc.n_seqs] -= 1;
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	st.seq_start[sc.n_seqs] += 1;
	saved = st.seq_start[1];
	st.seq_start[1] = st.seq_start[2] + 1;
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	st.seq_start[1] = saved;
	/* GQA group that does not divide, bad layer. */
	KT_CHECK_EQ_INT(be->ops->attention(be, st.out, st.q, &st.b, &kv2, g->layer, 5, sc.scale),
			-EINVAL);
	KT_CHECK_EQ_INT(be->ops->attention(be, st.out, st.q, &st.b, &kv2, 2, g->n_heads, sc.scale),
			-EINVAL);
	KT_CHECK(!memcmp(out_snap, st.out, out_bytes));

	/* Everything restored: the call succeeds and matches the reference. */
	KT_CHECK_EQ_INT(ATTN(), 0);
	step_check(&sc, &st, "validation (restored)");
#undef ROPE
#undef ATTN

	free(pool_snap);
	free(q_snap);
	free(out_snap);
	step_free(be, &st);
	scen_free(be, &sc);
}

int main(void)
{
	static const int threads[] = { 1, 4 };

	for (size_t t = 0; t < KT_ARRAY_SIZE(threads); t++) {
		struct kern_backend *be = kern_cpu_new(threads[t]);

		if (!be) {
			perror("kern_cpu_new");
			return 1;
		}
		test_handmade(be);
		for (uint64_t seed = 1; seed <= 3; seed++)
			test_random(be, seed);
		test_validation(be);
		kern_backend_free(be);
	}
	return kt_finish("test_kern_cpu_attention");
}

/* SPDX-License-Identifier: MIT */
/*
 * The cuda backend's rope_kv_write and paged attention against the cpu
 * backend on the same batches: several sequences with shuffled,
 * non-contiguous page tables, GQA (groups of 1 to 32 q heads), context
 * written by an earlier step plus new chunks (prefill from nothing, decode,
 * chunks starting mid-page), empty sequences in a step, padding tokens (a
 * graph bucket's: KERN_SLOT_PAD, position 0 of a one-token context); every
 * attention kernel (small, large, decode, mma) with and without the KV
 * split, at the real shapes too (32 new tokens after 2000, a 2048-token
 * prefill, head_dim 64 and 128, groups 1, 4, 7 and 8). Two checks per
 * step: against the cpu backend (end to end, bf16 tolerance) and against a
 * double-precision reference computed from the cuda backend's own rotated q
 * and KV pages (isolates the attention kernel: tighter tolerance). The pool
 * starts as NaN: a read of a slot nobody wrote poisons the output, a write
 * outside the step's slots is found afterwards. Device-side checks of bad
 * slots, positions, pages and sequence bounds surface as -EINVAL at sync.
 */
#include <time.h>

#include "gt.h"
#include "kt_attn.h"
#include "cuda_internal.h"

#define MAX_SEQS 16

struct side {
	struct kern_backend *be;
	struct kern_kv kv;
	float *inv_freq;
};

struct scen {
	struct geom g;
	uint32_t n_seqs;
	struct seq seq[MAX_SEQS];
	/* Padding tokens of step 2, in a sequence of their own after the
	 * others: block table all sequence 0's first page, context 1. */
	uint32_t n_pad;
	float *qraw[MAX_SEQS], *kraw[MAX_SEQS], *vraw[MAX_SEQS]; /* [ctx][heads*hd], bf16-exact */
	int32_t *bt;
	float *inv_freq;
	float scale;
	struct side s[2]; /* 0: cpu, 1: cuda */
};

/* One step's inputs on one backend. */
struct dstep {
	struct kern_batch b;
	int32_t *pos, *slot, *seq_start, *ctx_len, *bt;
	void *q, *k, *v, *out;
};

struct step {
	uint32_t n, n_seqs; /* n_seqs: the scenario's plus the padding one */
	int32_t *pos, *slot, seq_start[MAX_SEQS + 2], ctx_len[MAX_SEQS + 1];
	uint32_t max_ctx;
	float *q, *k, *v;
	uint32_t *tok_seq;
	struct dstep d[2];
};

static struct kt_rng rng = { 0x6174746e67707575ull };

static size_t pool_elems(const struct scen *sc)
{
	return kern_kv_page_elems(&sc->s[0].kv) * sc->g.n_pages;
}

static void scen_init(struct scen *sc)
{
	const struct geom *g = &sc->g;
	uint32_t q_w = g->n_heads * g->head_dim, kv_w = g->n_kv_heads * g->head_dim, used = 0;
	int32_t *perm = kt_xmalloc(g->n_pages * sizeof(int32_t));
	size_t pe;

	for (uint32_t p = 0; p < g->n_pages; p++)
		perm[p] = (int32_t)p;
	kt_shuffle(&rng, perm, g->n_pages);
	sc->bt = kt_xmalloc(((size_t)sc->n_seqs + 1) * g->max_blocks * sizeof(int32_t));
	for (uint32_t s = 0; s < sc->n_seqs; s++) {
		uint32_t ctx = ctx_of(&sc->seq[s], 2), nb = (ctx + g->page_tokens - 1) / g->page_tokens;

		if (nb > g->max_blocks || used + nb > g->n_pages) {
			fprintf(stderr, "scenario does not fit its pool\n");
			exit(1);
		}
		for (uint32_t j = 0; j < g->max_blocks; j++)
			sc->bt[s * g->max_blocks + j] = j < nb ? perm[used + j] : -1;
		used += nb;
		sc->qraw[s] = gt_rand(&rng, (size_t)ctx * q_w + 1, 1.0f);
		sc->kraw[s] = gt_rand(&rng, (size_t)ctx * kv_w + 1, 1.0f);
		sc->vraw[s] = gt_rand(&rng, (size_t)ctx * kv_w + 1, 1.0f);
	}
	for (uint32_t j = 0; j < g->max_blocks; j++) /* the padding sequence */
		sc->bt[sc->n_seqs * g->max_blocks + j] = sc->bt[0];
	free(perm);
	sc->inv_freq = kt_xmalloc(g->head_dim / 2 * sizeof(float));
	for (uint32_t d = 0; d < g->head_dim / 2; d++)
		sc->inv_freq[d] = (float)(1.0 / pow(10000.0, 2.0 * d / g->head_dim));
	sc->scale = (float)(1.0 / sqrt(g->head_dim));
	sc->s[0].be = gt_cpu;
	sc->s[1].be = gt_gpu;
	for (int i = 0; i < 2; i++) {
		struct side *sd = &sc->s[i];

		sd->inv_freq = kt_upload(sd->be, sc->inv_freq, g->head_dim / 2 * sizeof(float));
		sd->kv = (struct kern_kv){ .n_pages = g->n_pages, .page_tokens = g->page_tokens,
					   .n_layers = g->n_layers, .n_kv_heads = g->n_kv_heads,
					   .head_dim = g->head_dim };
	}
	pe = pool_elems(sc);
	{
		float *nan_f = kt_xmalloc(pe * sizeof(float));
		uint16_t *nan_h = kt_xmalloc(pe * sizeof(uint16_t));

		for (size_t i = 0; i < pe; i++) {
			nan_f[i] = NAN;
			nan_h[i] = 0x7fc0;
		}
		sc->s[0].kv.base = kt_upload(gt_cpu, nan_f, pe * sizeof(float));
		sc->s[1].kv.base = kt_upload(gt_gpu, nan_h, pe * sizeof(uint16_t));
		free(nan_f);
		free(nan_h);
	}
}

static void scen_free(struct scen *sc)
{
	for (uint32_t s = 0; s < sc->n_seqs; s++) {
		free(sc->qraw[s]);
		free(sc->kraw[s]);
		free(sc->vraw[s]);
	}
	free(sc->bt);
	free(sc->inv_freq);
	for (int i = 0; i < 2; i++) {
		sc->s[i].be->ops->free(sc->s[i].be, sc->s[i].inv_freq);
		sc->s[i].be->ops->free(sc->s[i].be, sc->s[i].kv.base);
	}
}

static void dstep_upload(struct kern_backend *be, const struct scen *sc, struct step *st,
			 struct dstep *d)
{
	const struct geom *g = &sc->g;
	uint32_t n = st->n ? st->n : 1, q_w = g->n_heads * g->head_dim;
	uint32_t kv_w = g->n_kv_heads * g->head_dim;

	d->pos = kt_upload(be, st->pos, n * sizeof(int32_t));
	d->slot = kt_upload(be, st->slot, n * sizeof(int32_t));
	d->seq_start = kt_upload(be, st->seq_start, (st->n_seqs + 1) * sizeof(int32_t));
	d->ctx_len = kt_upload(be, st->ctx_len, st->n_seqs * sizeof(int32_t));
	d->bt = kt_upload(be, sc->bt, (size_t)st->n_seqs * g->max_blocks * sizeof(int32_t));
	d->q = gt_put(be, st->q, (size_t)n * q_w);
	d->k = gt_put(be, st->k, (size_t)n * kv_w);
	d->v = gt_put(be, st->v, (size_t)n * kv_w);
	d->out = be->ops->alloc(be, (size_t)n * q_w * be->act_bytes);
	d->b = (struct kern_batch){ .n_tokens = st->n, .n_seqs = st->n_seqs,
				    .max_blocks = g->max_blocks, .max_ctx = st->max_ctx,
				    .pos = d->pos, .slot = d->slot, .seq_start = d->seq_start,
				    .ctx_len = d->ctx_len, .block_table = d->bt };
}

static void step_build(struct scen *sc, int step, struct step *st)
{
	const struct geom *g = &sc->g;
	uint32_t q_w = g->n_heads * g->head_dim, kv_w = g->n_kv_heads * g->head_dim, n = 0;
	uint32_t n_pad = step == 2 ? sc->n_pad : 0;

	for (uint32_t s = 0; s < sc->n_seqs; s++)
		n += step == 1 ? sc->seq[s].n_past : sc->seq[s].n_new;
	n += n_pad;
	st->n = n;
	st->n_seqs = sc->n_seqs + (n_pad ? 1 : 0);
	st->max_ctx = 0;
	st->pos = kt_xmalloc((n + 1) * sizeof(int32_t));
	st->slot = kt_xmalloc((n + 1) * sizeof(int32_t));
	st->q = kt_xmalloc(((size_t)n * q_w + 1) * sizeof(float));
	st->k = kt_xmalloc(((size_t)n * kv_w + 1) * sizeof(float));
	st->v = kt_xmalloc(((size_t)n * kv_w + 1) * sizeof(float));
	st->tok_seq = kt_xmalloc((n + 1) * sizeof(uint32_t));
	n = 0;
	for (uint32_t s = 0; s < sc->n_seqs; s++) {
		uint32_t p0 = step == 1 ? 0 : sc->seq[s].n_past, p1 = ctx_of(&sc->seq[s], step);

		st->seq_start[s] = (int32_t)n;
		st->ctx_len[s] = (int32_t)p1;
		if (p1 > st->max_ctx)
			st->max_ctx = p1;
		for (uint32_t p = p0; p < p1; p++, n++) {
			int32_t page = sc->bt[s * g->max_blocks + p / g->page_tokens];

			st->pos[n] = (int32_t)p;
			st->slot[n] = page * (int32_t)g->page_tokens + (int32_t)(p % g->page_tokens);
			st->tok_seq[n] = s;
			memcpy(st->q + (size_t)n * q_w, sc->qraw[s] + (size_t)p * q_w, q_w * 4);
			memcpy(st->k + (size_t)n * kv_w, sc->kraw[s] + (size_t)p * kv_w, kv_w * 4);
			memcpy(st->v + (size_t)n * kv_w, sc->vraw[s] + (size_t)p * kv_w, kv_w * 4);
		}
	}
	if (n_pad) {
		float *x = gt_rand(&rng, (size_t)n_pad * (q_w + 2 * kv_w), 1.0f);

		st->seq_start[sc->n_seqs] = (int32_t)n;
		st->ctx_len[sc->n_seqs] = 1;
		memcpy(st->q + (size_t)n * q_w, x, (size_t)n_pad * q_w * 4);
		memcpy(st->k + (size_t)n * kv_w, x + (size_t)n_pad * q_w, (size_t)n_pad * kv_w * 4);
		memcpy(st->v + (size_t)n * kv_w, x + (size_t)n_pad * (q_w + kv_w),
		       (size_t)n_pad * kv_w * 4);
		for (uint32_t j = 0; j < n_pad; j++, n++) {
			st->pos[n] = 0;
			st->slot[n] = KERN_SLOT_PAD;
			st->tok_seq[n] = sc->n_seqs;
		}
		free(x);
	}
	st->seq_start[st->n_seqs] = (int32_t)n;
	for (int i = 0; i < 2; i++)
		dstep_upload(sc->s[i].be, sc, st, &st->d[i]);
}

static void step_free(struct scen *sc, struct step *st)
{
	for (int i = 0; i < 2; i++) {
		struct kern_backend *be = sc->s[i].be;
		struct dstep *d = &st->d[i];
		void *p[] = { d->pos, d->slot, d->seq_start, d->ctx_len, d->bt, d->q, d->k, d->v,
			      d->out };

		for (size_t j = 0; j < KT_ARRAY_SIZE(p); j++)
			be->ops->free(be, p[j]);
	}
	free(st->pos);
	free(st->slot);
	free(st->q);
	free(st->k);
	free(st->v);
	free(st->tok_seq);
}

/* Both pools as fp32 host copies. */
static void pools_get(const struct scen *sc, float **ret_c, float **ret_g)
{
	size_t pe = pool_elems(sc);

	*ret_c = gt_get(gt_cpu, sc->s[0].kv.base, pe);
	*ret_g = gt_get(gt_gpu, sc->s[1].kv.base, pe);
}

/* Double-precision attention of every token of the step from the cuda
 * backend's own rotated q and pages: what the kernel alone should give. */
static void check_kernel_only(const struct scen *sc, const struct step *st, const float *q_g,
			      const float *pool_g, const float *out_g, const char *tag)
{
	const struct geom *g = &sc->g;
	const uint32_t hd = g->head_dim, group = g->n_heads / g->n_kv_heads, q_w = g->n_heads * hd;
	float *ref = kt_xmalloc(((size_t)st->n * q_w + 1) * sizeof(float));
	double *sc_buf = NULL, *o = kt_xmalloc(hd * sizeof(double));
	char what[96];

	for (uint32_t i = 0; i < st->n; i++) {
		uint32_t s = st->tok_seq[i], p = (uint32_t)st->pos[i];

		if (st->n > 512 && i % 8 && i + 8 < st->n) {
			/* long steps: every 8th token and the last 8 (the cost is
			 * quadratic); the others compare with themselves */
			memcpy(ref + (size_t)i * q_w, out_g + (size_t)i * q_w, q_w * sizeof(float));
			continue;
		}
		sc_buf = realloc(sc_buf, (p + 1) * sizeof(double));
		for (uint32_t h = 0; h < g->n_heads; h++) {
			const float *qh = q_g + (size_t)i * q_w + h * hd;
			double mx = -INFINITY, sum = 0;

			for (uint32_t j = 0; j <= p; j++) {
				uint32_t page = (uint32_t)sc->bt[s * g->max_blocks + j / g->page_tokens];
				const float *kj = pool_g + kern_kv_offset(&sc->s[1].kv, page, g->layer, 0,
									  h / group, j % g->page_tokens);
				double dot = 0;

				for (uint32_t d = 0; d < hd; d++)
					dot += (double)qh[d] * kj[d];
				sc_buf[j] = dot * sc->scale;
				mx = fmax(mx, sc_buf[j]);
			}
			for (uint32_t j = 0; j <= p; j++)
				sum += (sc_buf[j] = exp(sc_buf[j] - mx));
			for (uint32_t d = 0; d < hd; d++)
				o[d] = 0;
			for (uint32_t j = 0; j <= p; j++) {
				uint32_t page = (uint32_t)sc->bt[s * g->max_blocks + j / g->page_tokens];
				const float *vj = pool_g + kern_kv_offset(&sc->s[1].kv, page, g->layer, 1,
									  h / group, j % g->page_tokens);

				for (uint32_t d = 0; d < hd; d++)
					o[d] += sc_buf[j] / sum * vj[d];
			}
			for (uint32_t d = 0; d < hd; d++)
				ref[(size_t)i * q_w + h * hd + d] = (float)o[d];
		}
	}
	/* Only the output's bf16 rounding (2^-9) and fp32 sums remain, and on
	 * tensor cores the probabilities' bf16 rounding before P V (half the
	 * tolerance at most: 0.3e-2 against 0.2e-2 + 1e-2 |ref|). */
	snprintf(what, sizeof(what), "%s: attention (kernel only)", tag);
	gt_close(what, out_g, ref, (size_t)st->n * q_w, 2e-3, 1e-2);
	free(ref);
	free(sc_buf);
	free(o);
}

static void step_check(const struct scen *sc, const struct step *st, const char *tag)
{
	const struct geom *g = &sc->g;
	uint32_t n = st->n, q_w = g->n_heads * g->head_dim, kv_w = g->n_kv_heads * g->head_dim;
	float *q[2], *k[2], *o[2], *pool_c, *pool_g;
	float *pk[2], *pv[2];
	char what[96];

	for (int i = 0; i < 2; i++) {
		q[i] = gt_get(sc->s[i].be, st->d[i].q, (size_t)n * q_w);
		k[i] = gt_get(sc->s[i].be, st->d[i].k, (size_t)n * kv_w);
		o[i] = gt_get(sc->s[i].be, st->d[i].out, (size_t)n * q_w);
		pk[i] = calloc((size_t)n * kv_w, sizeof(float));
		pv[i] = calloc((size_t)n * kv_w, sizeof(float));
	}
	pools_get(sc, &pool_c, &pool_g);
	for (uint32_t t = 0; t < n; t++) {
		uint32_t page = (uint32_t)st->slot[t] / g->page_tokens;
		uint32_t tok = (uint32_t)st->slot[t] % g->page_tokens;

		if (st->slot[t] == KERN_SLOT_PAD)
			continue; /* writes nothing: both rows stay zero */
		for (uint32_t h = 0; h < g->n_kv_heads; h++)
			for (int i = 0; i < 2; i++) {
				const float *pool = i ? pool_g : pool_c;
				size_t ko = kern_kv_offset(&sc->s[i].kv, page, g->layer, 0, h, tok);
				size_t vo = kern_kv_offset(&sc->s[i].kv, page, g->layer, 1, h, tok);

				memcpy(pk[i] + (size_t)t * kv_w + h * g->head_dim, pool + ko,
				       g->head_dim * 4);
				memcpy(pv[i] + (size_t)t * kv_w + h * g->head_dim, pool + vo,
				       g->head_dim * 4);
			}
	}
	snprintf(what, sizeof(what), "%s: rope q", tag);
	gt_close(what, q[1], q[0], (size_t)n * q_w, GT_ATOL, GT_RTOL);
	snprintf(what, sizeof(what), "%s: rope k", tag);
	gt_close(what, k[1], k[0], (size_t)n * kv_w, GT_ATOL, GT_RTOL);
	snprintf(what, sizeof(what), "%s: pool K", tag);
	gt_close(what, pk[1], pk[0], (size_t)n * kv_w, GT_ATOL, GT_RTOL);
	snprintf(what, sizeof(what), "%s: pool V", tag);
	gt_close(what, pv[1], pv[0], (size_t)n * kv_w, 0, 0);
	snprintf(what, sizeof(what), "%s: attention", tag);
	gt_close(what, o[1], o[0], (size_t)n * q_w, GT_ATOL, GT_RTOL);
	check_kernel_only(sc, st, q[1], pool_g, o[1], tag);
	for (int i = 0; i < 2; i++) {
		free(q[i]);
		free(k[i]);
		free(o[i]);
		free(pk[i]);
		free(pv[i]);
	}
	free(pool_c);
	free(pool_g);
}

/* After both steps: on the cuda pool, exactly the slots of `layer` up to
 * each sequence's context were written. */
static void check_pool_untouched(const struct scen *sc, const char *tag)
{
	float *pool = gt_get(gt_gpu, sc->s[1].kv.base, pool_elems(sc));

	kt_pool_check(pool, &sc->s[1].kv, &sc->g, sc->bt, sc->n_seqs, sc->seq, tag);
	free(pool);
}

static void set_path(enum kc_attn_path path, uint32_t splits)
{
	struct kern_cuda *c = gt_gpu->priv;

	c->attn_path = path;
	c->attn_splits = splits;
}

/* The multi-token tensor-core attention's kernel (1: mma.sync, 64-row
 * blocks; 2: mma.sync, 128; KC_MMA_WG: wgmma, 128; 0: by step). */
static void set_mt(uint32_t mt)
{
	((struct kern_cuda *)gt_gpu->priv)->mma_mt = mt;
}

static const char *mt_tag(void)
{
	uint32_t mt = ((struct kern_cuda *)gt_gpu->priv)->mma_mt;

	return mt == 2 ? "x2" : mt == KC_MMA_WG ? "wg" : mt == KC_MMA_WS ? "ws" : "";
}

/* The next kernel to force after mt (1, 2, then KC_MMA_WG and KC_MMA_WS
 * where this device and build run them at head_dim hd); 0 after the last. */
static uint32_t next_mt(uint32_t mt, uint32_t hd)
{
	const struct kern_cuda *c = gt_gpu->priv;

	if (mt < 2)
		return mt + 1;
	if (mt == 2 && kc_attn_mma_ok(hd, KC_MMA_WG, c->smem_optin))
		return KC_MMA_WG;
	return mt <= KC_MMA_WG && kc_attn_mma_ok(hd, KC_MMA_WS, c->smem_optin) ? KC_MMA_WS : 0;
}

static void run_both(struct scen *sc, struct step *st)
{
	for (int i = 0; i < 2; i++) {
		struct kern_backend *be = sc->s[i].be;
		struct dstep *d = &st->d[i];

		KT_CHECK_EQ_INT(be->ops->rope_kv_write(be, d->q, d->k, d->v, &d->b, &sc->s[i].kv,
						       sc->g.layer, sc->g.n_heads,
						       sc->s[i].inv_freq), 0);
		KT_CHECK_EQ_INT(be->ops->attention(be, d->out, d->q, &d->b, &sc->s[i].kv,
						   sc->g.layer, sc->g.n_heads, sc->scale), 0);
		KT_CHECK_EQ_INT(be->ops->sync(be), 0);
	}
}

static const char *path_name(enum kc_attn_path p)
{
	return p == KC_ATTN_SMALL    ? "small"
	       : p == KC_ATTN_LARGE  ? "large"
	       : p == KC_ATTN_DECODE ? "decode"
	       : p == KC_ATTN_MMA    ? "mma"
	       : p == KC_ATTN_DECODE_MMA ? "decmma"
				     : "auto";
}

static void run_scenario(const struct scen *tmpl, const char *name, enum kc_attn_path path,
			 uint32_t splits)
{
	struct scen sc = *tmpl;
	struct step st;
	char tag[96];

	set_path(path, splits);
	scen_init(&sc);
	for (int step = 1; step <= 2; step++) {
		step_build(&sc, step, &st);
		snprintf(tag, sizeof(tag), "%s [%s%s/%u] step %d", name, path_name(path), mt_tag(),
			 splits, step);
		if (st.n) {
			run_both(&sc, &st);
			step_check(&sc, &st, tag);
		}
		step_free(&sc, &st);
	}
	snprintf(tag, sizeof(tag), "%s [%s%s/%u]", name, path_name(path), mt_tag(), splits);
	check_pool_untouched(&sc, tag);
	scen_free(&sc);
	set_path(KC_ATTN_AUTO, 0);
}

struct path_cfg {
	enum kc_attn_path path;
	uint32_t splits;
};

/* The tensor-core kernels where they take the shape (head_dim 64, 128;
 * else they fall back); the multi-token one with each of its kernels
 * (mma.sync with 64- and 128-row blocks, wgmma where it runs). */
static void run_paths(const struct scen *tmpl, const char *name, const struct path_cfg *cfg,
		      size_t n)
{
	uint32_t hd = tmpl->g.head_dim;

	for (size_t i = 0; i < n; i++) {
		uint32_t mt = cfg[i].path == KC_ATTN_MMA;

		if ((cfg[i].path == KC_ATTN_MMA || cfg[i].path == KC_ATTN_DECODE_MMA) && hd != 64 &&
		    hd != 128)
			continue;
		do {
			set_mt(mt);
			run_scenario(tmpl, name, cfg[i].path, cfg[i].splits);
		} while (mt && (mt = next_mt(mt, hd)));
	}
	set_mt(0);
}

static void run_all_paths(const struct scen *tmpl, const char *name)
{
	static const struct path_cfg cfg[] = {
		{ KC_ATTN_AUTO, 0 }, { KC_ATTN_SMALL, 1 }, { KC_ATTN_LARGE, 1 },
		{ KC_ATTN_SMALL, 3 }, { KC_ATTN_LARGE, 2 },
		{ KC_ATTN_DECODE, 0 }, { KC_ATTN_DECODE, 1 }, { KC_ATTN_DECODE, 3 },
		{ KC_ATTN_DECODE, 16 }, { KC_ATTN_MMA, 1 }, { KC_ATTN_MMA, 3 },
		{ KC_ATTN_MMA, 0 }, { KC_ATTN_DECODE_MMA, 0 }, { KC_ATTN_DECODE_MMA, 1 },
		{ KC_ATTN_DECODE_MMA, 3 }, { KC_ATTN_DECODE_MMA, 16 },
	};

	run_paths(tmpl, name, cfg, KT_ARRAY_SIZE(cfg));
}

/* Long steps: the tensor-core path (by shape and forced, split and not)
 * and one tile kernel; the cpu reference costs the most here. */
static void run_long_paths(const struct scen *tmpl, const char *name)
{
	static const struct path_cfg cfg[] = {
		{ KC_ATTN_AUTO, 0 }, { KC_ATTN_MMA, 1 }, { KC_ATTN_MMA, 5 }, { KC_ATTN_LARGE, 0 },
	};

	run_paths(tmpl, name, cfg, KT_ARRAY_SIZE(cfg));
}

/* The cuda side's attention alone at `layer` on st's batch, into out. */
static void gpu_attention(const struct scen *sc, const struct step *st, uint32_t layer, void *out)
{
	KT_CHECK_EQ_INT(gt_gpu->ops->attention(gt_gpu, out, st->d[1].q, &st->d[1].b, &sc->s[1].kv,
					       layer, sc->g.n_heads, sc->scale), 0);
}

/*
 * HEARTH_CUDA_PLAN_ONCE: the multi-token attention of layer l + 1 reuses
 * the tiles of layer l's call when the batch is the same, and plans again
 * for any other batch. tmpl's layer must be past 0; layer - 1's pages are
 * NaN (its outputs are not checked, only that they do not disturb).
 */
static void test_plan_once(const struct scen *tmpl)
{
	struct kern_cuda *c = gt_gpu->priv;
	const int was = c->plan_once;
	const uint32_t l = tmpl->g.layer, q_w = tmpl->g.n_heads * tmpl->g.head_dim;
	struct scen sc = *tmpl;
	struct step st1, st2;
	uint64_t n0;
	void *scratch;

	KT_CHECK(l >= 1);
	c->plan_once = 1;
	set_path(KC_ATTN_MMA, 0);
	scen_init(&sc);
	step_build(&sc, 1, &st1);
	run_both(&sc, &st1);
	step_check(&sc, &st1, "plan once: step 1");
	step_build(&sc, 2, &st2);
	scratch = gt_gpu->ops->alloc(gt_gpu, (size_t)st2.n * q_w * 2);
	KT_CHECK(scratch != NULL);
	/* layer l - 1 on step 1's batch, then layer l on step 2's: planned */
	gpu_attention(&sc, &st1, l - 1, st1.d[1].out);
	n0 = c->n_plans_reused;
	run_both(&sc, &st2);
	KT_CHECK_EQ_INT((int)(c->n_plans_reused - n0), 0);
	step_check(&sc, &st2, "plan once: another batch");
	/* layer l - 1, then layer l, both on step 2's batch: l reuses */
	gpu_attention(&sc, &st2, l - 1, scratch);
	gpu_attention(&sc, &st2, l, st2.d[1].out);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
	KT_CHECK_EQ_INT((int)(c->n_plans_reused - n0), 1);
	step_check(&sc, &st2, "plan once: reused");
	/* layer l again: not the next layer, planned */
	gpu_attention(&sc, &st2, l, st2.d[1].out);
	KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
	KT_CHECK_EQ_INT((int)(c->n_plans_reused - n0), 1);
	step_check(&sc, &st2, "plan once: same layer");
	gt_gpu->ops->free(gt_gpu, scratch);
	step_free(&sc, &st1);
	step_free(&sc, &st2);
	scen_free(&sc);
	set_path(KC_ATTN_AUTO, 0);
	c->plan_once = was;
}

/* Bad indices in device memory are skipped and reported at the next sync;
 * bad shapes are -EINVAL at once. The restored step then matches. head_dim
 * 8 runs the tile kernels, 64 the tensor-core one. */
static void test_validation(uint32_t hd)
{
	struct scen sc = {
		.g = { .n_layers = 2, .n_kv_heads = 2, .n_heads = 4, .head_dim = hd,
		       .page_tokens = 4, .n_pages = 12, .max_blocks = 4, .layer = 0 },
		.n_seqs = 3,
		.seq = { { 3, 2 }, { 0, 4 }, { 6, 1 } },
	};
	struct kern_backend *g = gt_gpu;
	struct step st;
	struct dstep *d;
	struct kern_kv kv2;
	int32_t saved, last;

	scen_init(&sc);
	step_build(&sc, 1, &st);
	run_both(&sc, &st);
	step_free(&sc, &st);
	step_build(&sc, 2, &st);
	d = &st.d[1];
	kv2 = sc.s[1].kv;
	last = (int32_t)st.n - 1;

#define ROPE() g->ops->rope_kv_write(g, d->q, d->k, d->v, &d->b, &kv2, sc.g.layer, sc.g.n_heads, \
				     sc.s[1].inv_freq)
#define ATTN() g->ops->attention(g, d->out, d->q, &d->b, &kv2, sc.g.layer, sc.g.n_heads, sc.scale)
#define POKE(dev, idx, val)                                                                    \
	do {                                                                                   \
		int32_t _v = (val);                                                            \
		KT_CHECK_EQ_INT(g->ops->upload(g, (dev) + (idx), &_v, sizeof(_v)), 0);         \
	} while (0)
	/* Host-visible shapes: -EINVAL at once. */
	KT_CHECK_EQ_INT(g->ops->rope_kv_write(g, d->q, d->k, d->v, &d->b, &kv2, sc.g.n_layers,
					      sc.g.n_heads, sc.s[1].inv_freq), -EINVAL);
	KT_CHECK_EQ_INT(g->ops->rope_kv_write(g, d->q, d->k, d->v, &d->b, &kv2, sc.g.layer, 3,
					      sc.s[1].inv_freq), -EINVAL);
	KT_CHECK_EQ_INT(g->ops->attention(g, d->out, d->q, &d->b, &kv2, sc.g.layer, 5, sc.scale),
			-EINVAL);
	kv2.head_dim = 7;
	KT_CHECK_EQ_INT(ROPE(), -EINVAL);
	KT_CHECK_EQ_INT(ATTN(), -EINVAL);
	kv2 = sc.s[1].kv;
	kv2.base = NULL;
	KT_CHECK_EQ_INT(ROPE(), -EINVAL);
	kv2 = sc.s[1].kv;
	KT_CHECK_EQ_INT(g->ops->sync(g), 0);

	/* Device data: slot past the pool, negative position. */
	POKE(d->slot, last, (int32_t)(sc.g.n_pages * sc.g.page_tokens));
	KT_CHECK_EQ_INT(ROPE(), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), -EINVAL);
	POKE(d->slot, last, st.slot[last]);
	POKE(d->pos, last, -3);
	KT_CHECK_EQ_INT(ROPE(), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), -EINVAL);
	POKE(d->pos, last, st.pos[last]);
	KT_CHECK_EQ_INT(g->ops->sync(g), 0);

	/* Write the step for real (the failed calls rotated q/k of the good
	 * tokens in place: rebuild them). */
	step_free(&sc, &st);
	step_build(&sc, 2, &st);
	d = &st.d[1];
	KT_CHECK_EQ_INT(ROPE(), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), 0);

	/* Page outside the pool, position at ctx_len, context past the block
	 * table, sequence bounds that do not partition the tokens. */
	saved = sc.bt[2 * sc.g.max_blocks + 1];
	POKE(d->bt, 2 * sc.g.max_blocks + 1, (int32_t)sc.g.n_pages);
	KT_CHECK_EQ_INT(ATTN(), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), -EINVAL);
	POKE(d->bt, 2 * sc.g.max_blocks + 1, saved);
	POKE(d->pos, last, st.ctx_len[2]);
	KT_CHECK_EQ_INT(ATTN(), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), -EINVAL);
	POKE(d->pos, last, st.pos[last]);
	POKE(d->ctx_len, 1, (int32_t)(sc.g.max_blocks * sc.g.page_tokens + 1));
	KT_CHECK_EQ_INT(ATTN(), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), -EINVAL);
	POKE(d->ctx_len, 1, st.ctx_len[1]);
	POKE(d->seq_start, sc.n_seqs, (int32_t)st.n - 1);
	KT_CHECK_EQ_INT(ATTN(), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), -EINVAL);
	POKE(d->seq_start, sc.n_seqs, (int32_t)st.n);
	POKE(d->seq_start, 1, st.seq_start[2] + 1);
	KT_CHECK_EQ_INT(ATTN(), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), -EINVAL);
	POKE(d->seq_start, 1, st.seq_start[1]);
	KT_CHECK_EQ_INT(g->ops->sync(g), 0);
#undef ROPE
#undef ATTN
#undef POKE

	/* Restored: the cpu side runs the same step and both agree. */
	{
		struct kern_backend *c = gt_cpu;
		struct dstep *dc = &st.d[0];

		KT_CHECK_EQ_INT(c->ops->rope_kv_write(c, dc->q, dc->k, dc->v, &dc->b, &sc.s[0].kv,
						      sc.g.layer, sc.g.n_heads, sc.s[0].inv_freq), 0);
		KT_CHECK_EQ_INT(c->ops->attention(c, dc->out, dc->q, &dc->b, &sc.s[0].kv, sc.g.layer,
						  sc.g.n_heads, sc.scale), 0);
		KT_CHECK_EQ_INT(g->ops->attention(g, d->out, d->q, &d->b, &sc.s[1].kv, sc.g.layer,
						  sc.g.n_heads, sc.scale), 0);
		KT_CHECK_EQ_INT(g->ops->sync(g), 0);
		step_check(&sc, &st, "validation (restored)");
	}
	step_free(&sc, &st);
	scen_free(&sc);
}

/*
 * Timing (by hand, not part of the suite): the attention op alone at the
 * real shapes, one sequence of n_new tokens after n_past, random bf16 q and
 * pages, reps launches back to back then one sync (launch cost included, as
 * in hearth-bench-engine --profile). FLOP counts the causal products only.
 */
static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A KV pool of pe bf16 values on g: a random block of at most 32 MB repeated
 * (the times do not depend on the values, and a model's whole pool would
 * not fit the host as floats). */
static void *time_pool(struct kern_backend *g, size_t pe)
{
	const size_t blk = pe < ((size_t)16 << 20) ? pe : (size_t)16 << 20;
	float *x = gt_rand(&rng, blk, 1.0f);
	uint16_t *h = kt_xmalloc(blk * 2);
	char *p = g->ops->alloc(g, pe * 2);

	KT_CHECK(p != NULL);
	for (size_t i = 0; i < blk; i++)
		h[i] = kern_f32_to_bf16(x[i]);
	for (size_t at = 0; at < pe; at += blk)
		KT_CHECK_EQ_INT(g->ops->upload(g, p + at * 2, h, (pe - at < blk ? pe - at : blk) * 2),
				0);
	free(h);
	free(x);
	return p;
}

/* Attention of layer n_layers - 1 in a pool of pages of 16 positions that
 * hold every layer, as the engine's do (a page is 2 MB at the 8B's 32
 * layers: each 16-position chunk of a kv head lies in another 2 MB). */
static void time_attention(const char *name, uint32_t n_heads, uint32_t n_kv_heads, uint32_t hd,
			   uint32_t n_layers, uint32_t n_seqs, uint32_t n_past, uint32_t n_new,
			   enum kc_attn_path path, uint32_t splits)
{
	const uint32_t pt = 16, ctx = n_past + n_new, nb = (ctx + pt - 1) / pt, reps = 20;
	const uint32_t n_tok = n_seqs * n_new, layer = n_layers - 1;
	struct kern_kv kv = { .n_pages = nb * n_seqs, .page_tokens = pt, .n_layers = n_layers,
			      .n_kv_heads = n_kv_heads, .head_dim = hd };
	size_t pe = kern_kv_page_elems(&kv) * kv.n_pages, qe = (size_t)n_tok * n_heads * hd;
	float *x = gt_rand(&rng, qe, 1.0f);
	int32_t *pos = kt_xmalloc(n_tok * 4), *seq_start = kt_xmalloc((n_seqs + 1) * 4);
	int32_t *ctx_len = kt_xmalloc(n_seqs * 4), *bt = kt_xmalloc((size_t)n_seqs * nb * 4);
	struct kern_backend *g = gt_gpu;
	struct kern_batch b;
	void *q, *out;
	double t0, t, tg, flop = 0;

	for (uint32_t s = 0; s < n_seqs; s++) {
		seq_start[s] = (int32_t)(s * n_new);
		ctx_len[s] = (int32_t)ctx;
		for (uint32_t i = 0; i < n_new; i++) {
			pos[s * n_new + i] = (int32_t)(n_past + i);
			flop += 4.0 * (n_past + i + 1) * n_heads * hd;
		}
		for (uint32_t j = 0; j < nb; j++)
			bt[s * nb + j] = (int32_t)(s * nb + j);
	}
	seq_start[n_seqs] = (int32_t)n_tok;
	kv.base = time_pool(g, pe);
	q = gt_put(g, x, qe);
	out = g->ops->alloc(g, qe * 2);
	b = (struct kern_batch){ .n_tokens = n_tok, .n_seqs = n_seqs, .max_blocks = nb,
				 .max_ctx = ctx,
				 .pos = kt_upload(g, pos, n_tok * 4),
				 .seq_start = kt_upload(g, seq_start, (n_seqs + 1) * 4),
				 .ctx_len = kt_upload(g, ctx_len, n_seqs * 4),
				 .block_table = kt_upload(g, bt, (size_t)n_seqs * nb * 4) };
	set_path(path, splits);
	for (int i = 0; i < 3; i++)
		KT_CHECK_EQ_INT(g->ops->attention(g, out, q, &b, &kv, layer, n_heads, 0.1f), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), 0);
	t0 = now_s();
	for (uint32_t i = 0; i < reps; i++)
		KT_CHECK_EQ_INT(g->ops->attention(g, out, q, &b, &kv, layer, n_heads, 0.1f), 0);
	KT_CHECK_EQ_INT(g->ops->sync(g), 0);
	t = (now_s() - t0) / reps;
	/* The same launches captured as one graph: device time without the
	 * host's launch cost (which bounds the figure above for short kernels). */
	{
		void *graph = NULL;

		KT_CHECK_EQ_INT(g->ops->graph_begin(g), 0);
		for (uint32_t i = 0; i < reps; i++)
			KT_CHECK_EQ_INT(g->ops->attention(g, out, q, &b, &kv, layer, n_heads, 0.1f), 0);
		KT_CHECK_EQ_INT(g->ops->graph_end(g, &graph), 0);
		KT_CHECK_EQ_INT(g->ops->graph_launch(g, graph), 0);
		KT_CHECK_EQ_INT(g->ops->sync(g), 0);
		t0 = now_s();
		for (int i = 0; i < 5; i++)
			KT_CHECK_EQ_INT(g->ops->graph_launch(g, graph), 0);
		KT_CHECK_EQ_INT(g->ops->sync(g), 0);
		tg = (now_s() - t0) / (5.0 * reps);
		g->ops->graph_destroy(g, graph);
	}
	set_path(KC_ATTN_AUTO, 0);
	printf("  %-34s %-4s%-2s splits %-3u %9.1f us (graph %7.1f us) %7.1f TFLOP/s\n", name,
	       path_name(path), path == KC_ATTN_MMA ? mt_tag() : "", splits, t * 1e6, tg * 1e6,
	       flop / tg / 1e12);
	g->ops->free(g, kv.base);
	g->ops->free(g, q);
	g->ops->free(g, out);
	g->ops->free(g, (void *)b.pos);
	g->ops->free(g, (void *)b.seq_start);
	g->ops->free(g, (void *)b.ctx_len);
	g->ops->free(g, (void *)b.block_table);
	free(x);
	free(pos);
	free(seq_start);
	free(ctx_len);
	free(bt);
}

/* which: 0 every shape, 1 decode only, 2 multi-token only */
static void time_all(int which)
{
	static const struct {
		const char *name;
		uint32_t n_heads, n_kv_heads, hd, n_layers, n_seqs, n_past, n_new;
	} shp[] = {
		{ "1B prefill 2048", 32, 8, 64, 16, 1, 0, 2048 },
		{ "1B APPEND 32 at 2048", 32, 8, 64, 16, 1, 2048, 32 },
		{ "1B 64 x 16-token chunks at 512", 32, 8, 64, 16, 64, 512, 16 },
		{ "8B prefill 2048", 32, 8, 128, 32, 1, 0, 2048 },
		{ "8B APPEND 32 at 2048", 32, 8, 128, 32, 1, 2048, 32 },
		{ "8B 64 x 16-token chunks at 512", 32, 8, 128, 32, 64, 512, 16 },
	};
	static const struct path_cfg cfg[] = {
		{ KC_ATTN_LARGE, 0 }, { KC_ATTN_MMA, 0 }, { KC_ATTN_MMA, 1 }, { KC_ATTN_MMA, 4 },
		{ KC_ATTN_MMA, 8 }, { KC_ATTN_MMA, 16 }, { KC_ATTN_MMA, 32 },
	};

	/* Decode: the CUDA-core and tensor-core kernels, splits by shape
	 * (0) and forced. */
	static const struct {
		const char *name;
		uint32_t n_heads, n_kv_heads, hd, n_layers, n_seqs, n_past;
	} dec[] = {
		{ "1B decode at 2048", 32, 8, 64, 16, 1, 2047 },
		{ "8B decode at 2048", 32, 8, 128, 32, 1, 2047 },
		{ "1B 64 x decode at 512", 32, 8, 64, 16, 64, 511 },
		{ "8B 64 x decode at 512", 32, 8, 128, 32, 64, 511 },
	};
	static const struct path_cfg dcfg[] = {
		{ KC_ATTN_DECODE, 0 }, { KC_ATTN_DECODE_MMA, 0 }, { KC_ATTN_DECODE_MMA, 1 },
		{ KC_ATTN_DECODE_MMA, 2 }, { KC_ATTN_DECODE_MMA, 8 }, { KC_ATTN_DECODE_MMA, 16 },
		{ KC_ATTN_DECODE_MMA, 32 }, { KC_ATTN_DECODE_MMA, 64 },
	};

	for (size_t i = 0; i < KT_ARRAY_SIZE(dec) && which != 2; i++)
		for (size_t j = 0; j < KT_ARRAY_SIZE(dcfg); j++)
			time_attention(dec[i].name, dec[i].n_heads, dec[i].n_kv_heads, dec[i].hd,
				       dec[i].n_layers, dec[i].n_seqs, dec[i].n_past, 1, dcfg[j].path,
				       dcfg[j].splits);
	for (size_t i = 0; i < KT_ARRAY_SIZE(shp) && which != 1; i++)
		for (size_t j = 0; j < KT_ARRAY_SIZE(cfg); j++)
			for (uint32_t mt = 1; mt;
			     mt = cfg[j].path == KC_ATTN_MMA ? next_mt(mt, shp[i].hd) : 0)
				if (cfg[j].splits <= 1 || shp[i].n_new <= 32) {
					set_mt(mt);
					time_attention(shp[i].name, shp[i].n_heads,
						       shp[i].n_kv_heads, shp[i].hd,
						       shp[i].n_layers, shp[i].n_seqs,
						       shp[i].n_past, shp[i].n_new, cfg[j].path,
						       cfg[j].splits);
				}
	set_mt(0);
}

/* Usage: test_cuda_attention [quick | time [dec | multi]]; quick (for
 * compute-sanitizer) runs the small scenarios only, time the timings above
 * (dec: the decode shapes only, multi: the multi-token ones only). */
int main(int argc, char **argv)
{
	int quick = argc > 1 && !strcmp(argv[1], "quick");
	struct scen handmade = {
		.g = { .n_layers = 2, .n_kv_heads = 2, .n_heads = 8, .head_dim = 16,
		       .page_tokens = 4, .n_pages = 40, .max_blocks = 6, .layer = 1 },
		.n_seqs = 5,
		/* prefill from nothing; decode; chunk from mid-page; chunk from a
		 * page boundary; a first single token. */
		.seq = { { 0, 7 }, { 9, 1 }, { 5, 6 }, { 12, 3 }, { 0, 1 } },
	};
	struct scen random = {
		.g = { .n_layers = 3, .n_kv_heads = 2, .n_heads = 8, .head_dim = 64,
		       .page_tokens = 16, .n_pages = 64, .max_blocks = 5, .layer = 2 },
		.n_seqs = 6,
	};
	/* Decode of a few sequences with long contexts: the split path. */
	struct scen decode = {
		.g = { .n_layers = 2, .n_kv_heads = 4, .n_heads = 16, .head_dim = 128,
		       .page_tokens = 16, .n_pages = 300, .max_blocks = 40, .layer = 1 },
		.n_seqs = 8,
	};
	/* Decode at the 1B geometry (32 q, 8 kv heads of 64), long contexts. */
	struct scen decode1b = {
		.g = { .n_layers = 2, .n_kv_heads = 8, .n_heads = 32, .head_dim = 64,
		       .page_tokens = 16, .n_pages = 600, .max_blocks = 100, .layer = 1 },
		.n_seqs = 5,
	};
	/* Decode, head_dim 32 with a group of 8 (the decode kernel's widest). */
	struct scen decode32 = {
		.g = { .n_layers = 1, .n_kv_heads = 2, .n_heads = 16, .head_dim = 32,
		       .page_tokens = 8, .n_pages = 200, .max_blocks = 40, .layer = 0 },
		.n_seqs = 4,
	};
	/* Long prefill chunks, wide GQA group (8). */
	struct scen prefill = {
		.g = { .n_layers = 1, .n_kv_heads = 2, .n_heads = 16, .head_dim = 64,
		       .page_tokens = 16, .n_pages = 64, .max_blocks = 32, .layer = 0 },
		.n_seqs = 2,
		.seq = { { 0, 200 }, { 300, 77 } },
	};
	/* Tensor-core path, head_dim 64, group 4 (the 1B's): a chunk over
	 * several tiles from nothing, a chunk from mid-page, one token beside
	 * chunks, a chunk from a page boundary, a first token, padding. */
	struct scen mma64 = {
		.g = { .n_layers = 2, .n_kv_heads = 2, .n_heads = 8, .head_dim = 64,
		       .page_tokens = 16, .n_pages = 40, .max_blocks = 10, .layer = 1 },
		.n_seqs = 5,
		.seq = { { 0, 70 }, { 37, 5 }, { 100, 1 }, { 32, 16 }, { 0, 1 } },
		.n_pad = 3,
	};
	/* head_dim 128, group 8 (one kv head), pages of 8. */
	struct scen mma128 = {
		.g = { .n_layers = 1, .n_kv_heads = 1, .n_heads = 8, .head_dim = 128,
		       .page_tokens = 8, .n_pages = 40, .max_blocks = 16, .layer = 0 },
		.n_seqs = 3,
		.seq = { { 3, 40 }, { 65, 9 }, { 0, 2 } },
		.n_pad = 2,
	};
	/* APPEND of 32 tokens after 2000 (step 1: a 2000-token prefill), the
	 * 8B's head_dim and group; two sequences so the split path sees two
	 * lengths. */
	struct scen append8b = {
		.g = { .n_layers = 2, .n_kv_heads = 2, .n_heads = 8, .head_dim = 128,
		       .page_tokens = 16, .n_pages = 160, .max_blocks = 130, .layer = 1 },
		.n_seqs = 2,
		.seq = { { 2000, 32 }, { 300, 32 } },
	};
	/* A 2048-token prefill from nothing, head_dim 64, group 4. */
	struct scen prefill2k = {
		.g = { .n_layers = 1, .n_kv_heads = 2, .n_heads = 8, .head_dim = 64,
		       .page_tokens = 16, .n_pages = 130, .max_blocks = 128, .layer = 0 },
		.n_seqs = 1,
		.seq = { { 0, 2048 } },
	};
	/* A mixed step of the engine's kind: chunks of 16 and 32 of several
	 * lengths, a decode token, a longer chunk, padding (1B geometry). */
	struct scen mixed1b = {
		.g = { .n_layers = 1, .n_kv_heads = 8, .n_heads = 32, .head_dim = 64,
		       .page_tokens = 16, .n_pages = 400, .max_blocks = 100, .layer = 0 },
		.n_seqs = 7,
		.seq = { { 1500, 32 }, { 0, 300 }, { 700, 16 }, { 33, 1 }, { 0, 16 },
			 { 211, 16 }, { 16, 16 } },
		.n_pad = 5,
	};
	/* Groups 1 and 7 (Qwen2-0.5B's 14 q / 2 kv), head_dim 128 and 64; pages
	 * of 12 tokens (not a power of two) for the latter. */
	struct scen group1 = {
		.g = { .n_layers = 1, .n_kv_heads = 4, .n_heads = 4, .head_dim = 128,
		       .page_tokens = 16, .n_pages = 60, .max_blocks = 20, .layer = 0 },
		.n_seqs = 3,
		.seq = { { 0, 130 }, { 90, 20 }, { 250, 1 } },
	};
	struct scen group7 = {
		.g = { .n_layers = 1, .n_kv_heads = 2, .n_heads = 14, .head_dim = 64,
		       .page_tokens = 12, .n_pages = 60, .max_blocks = 20, .layer = 0 },
		.n_seqs = 3,
		.seq = { { 0, 77 }, { 140, 23 }, { 5, 1 } },
		.n_pad = 1,
	};
	/* One kv head for 32 q heads: the group spans several blocks. */
	struct scen mqa = {
		.g = { .n_layers = 2, .n_kv_heads = 1, .n_heads = 32, .head_dim = 32,
		       .page_tokens = 8, .n_pages = 48, .max_blocks = 12, .layer = 1 },
		.n_seqs = 3,
		.seq = { { 40, 5 }, { 0, 33 }, { 70, 1 } },
	};

	gt_init("test_cuda_attention");
	if (argc > 1 && !strcmp(argv[1], "time")) {
		time_all(argc < 3 ? 0 : !strcmp(argv[2], "dec") ? 1 : !strcmp(argv[2], "multi") ? 2 : 0);
		gt_fini();
		return kt_finish("test_cuda_attention");
	}
	for (uint32_t s = 0; s < random.n_seqs; s++) {
		random.seq[s].n_past = kt_below(&rng, 50);
		random.seq[s].n_new = 1 + kt_below(&rng, 24);
	}
	for (uint32_t s = 0; s < decode.n_seqs; s++) {
		decode.seq[s].n_past = 60 + kt_below(&rng, 500);
		decode.seq[s].n_new = 1;
	}
	for (uint32_t s = 0; s < decode1b.n_seqs; s++) {
		decode1b.seq[s].n_past = 10 + kt_below(&rng, 1500);
		decode1b.seq[s].n_new = 1;
	}
	for (uint32_t s = 0; s < decode32.n_seqs; s++) {
		decode32.seq[s].n_past = kt_below(&rng, 300);
		decode32.seq[s].n_new = 1;
	}
	run_all_paths(&handmade, "handmade");
	run_all_paths(&decode32, "decode32");
	run_all_paths(&mqa, "mqa");
	run_all_paths(&mma64, "mma64");
	run_all_paths(&mma128, "mma128");
	if (!quick) {
		run_all_paths(&group1, "group1");
		run_all_paths(&group7, "group7");
		run_long_paths(&mixed1b, "mixed1b");
		run_long_paths(&append8b, "append8b");
		run_long_paths(&prefill2k, "prefill2k");
		run_all_paths(&random, "random");
		run_all_paths(&decode, "decode");
		run_all_paths(&decode1b, "decode1b");
		run_all_paths(&prefill, "prefill");
	}
	test_plan_once(&mma64);
	test_validation(8);
	test_validation(64);
	gt_fini();
	return kt_finish("test_cuda_attention");
}

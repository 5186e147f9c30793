/* SPDX-License-Identifier: MIT */
/*
 * The decoder forward pass (Llama / Mistral / Qwen2), written once against the
 * kernels interface: a step is the new tokens of one or more sequences,
 * flattened, whose K/V go straight into their paged KV. Only the rows whose
 * logits are wanted go through the last layer past its K/V (attention's output,
 * the o projection and the MLP) and the LM head: a prefill chunk with no wanted
 * row stops at the last layer's K/V, a 2048-token prefill runs its last layer's
 * o projection and MLP over one row.
 *
 * Graphs: on a backend that captures them (cuda), a step of at most
 * KERN_GRAPH_MAX_TOKENS tokens is padded up to a bucket (tokens to
 * kern_step_bucket(), sequences to powers of two, the block table to a
 * power-of-two width) and replays the
 * graph captured for that bucket: the step's metadata goes to a buffer owned
 * by the graph (fixed address), and every launch parameter is a function of
 * the bucket alone. Padding tokens carry KERN_SLOT_PAD (they write no KV) and
 * sit in padding sequences of their own; the last layer's rows and the LM
 * head run over one row per sequence slot, the wanted rows first. A bucket
 * runs eagerly the first time (which also sizes the backend's workspaces), is
 * captured the second time and replayed from then on. Larger steps (long
 * prefill chunks) run eagerly.
 *
 * Scoring: when every wanted row only needs the probabilities of a few ids
 * (SCORE), the step stops at the final norm of those rows, and
 * model_step_score() multiplies them by the ids' rows of the LM head alone:
 * for a label set of a handful of ids that skips reading the vocabulary's
 * rows (the 1B shape's LM head is a fifth of its weights). Graphs are keyed
 * by what a step computes past the layers (enum step_out).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hr_common.h"
#include "model.h"

/* Per-step metadata, laid out in one int32 buffer so it is one upload. */
struct step_meta {
	int32_t *tokens, *pos, *slot, *seq_start, *ctx_len, *rows, *block_table;
	size_t n_ints;
};

#define GRAPH_CACHE 48
#define GRAPH_MIN_BLOCKS 16u

enum graph_state {
	GRAPH_NEW = 0,  /* not run yet */
	GRAPH_WARM,     /* ran eagerly once: capture next time */
	GRAPH_READY,    /* captured */
	GRAPH_NEVER,    /* capture failed: this bucket runs eagerly */
};

/* What a step computes past the layers for its wanted rows. */
enum step_out {
	OUT_NONE = 0, /* no wanted rows */
	OUT_HIDDEN,   /* final norm of the rows, into scratch->last */
	OUT_LOGITS,   /* and the LM head over them */
};

struct step_graph {
	bool used;
	uint32_t tb, sb, mb;    /* tokens, sequences, block-table width */
	enum step_out out;      /* over sb rows */
	bool ident;             /* row i is token i (tb == sb, one token a sequence) */
	enum graph_state state;
	void *graph;            /* backend graph when READY */
	int32_t *meta_dev;      /* tokens, pos, slot [tb]; seq_start [sb + 1]; ctx_len, rows [sb];
				 * block_table [sb * mb] */
	size_t meta_ints;
	uint64_t last_use;
};

struct model_scratch {
	struct kern_backend *be;
	uint32_t max_tokens, max_seqs, vocab;
	/* Activations, [max_tokens, *] in the backend's activation type. */
	void *x, *h, *q, *k, *v, *att, *o, *gate, *up, *act, *last;
	void *x_rows;            /* [max_seqs, hidden]: the wanted rows' residual in the last layer */
	/* With the backend's fused norms (norm_matmul_*), the residual moves
	 * between x and x2 (x_rows and x_rows2) at each norm instead of being
	 * updated in place; NULL without them. */
	void *x2, *x_rows2;
	float *logits;           /* [max_seqs, vocab] fp32 */
	void *w_ids;             /* [MODEL_SCORE_MAX_IDS, hidden]: LM head rows of a score */
	float *scores;           /* [max_seqs, MODEL_SCORE_MAX_IDS] fp32 */
	uint32_t n_ids;          /* rows in w_ids (model_score_ids) */
	uint32_t last_rows;      /* rows of `last` the last step wrote */
	enum step_out last_out;  /* and what it computed from them */
	int32_t *meta_dev;       /* backend copy of meta_host */
	int32_t *meta_host;
	size_t meta_cap;         /* ints in both */
	bool graphs_off;
	uint32_t graph_max;      /* tokens: larger steps run eagerly */
	uint64_t clock;
	struct step_graph graphs[GRAPH_CACHE];
	int32_t *ghost;          /* host metadata of a graph step */
	size_t ghost_cap;
	struct model_graph_counts counts;
};

static void *act_alloc(struct kern_backend *be, uint32_t rows, uint32_t cols)
{
	return be->ops->alloc(be, (size_t)rows * cols * be->act_bytes);
}

void model_scratch_free(struct model_scratch *s)
{
	struct kern_backend *be;

	if (!s)
		return;
	be = s->be;
	for (size_t i = 0; i < HR_ARRAY_SIZE(s->graphs); i++) {
		if (s->graphs[i].graph)
			be->ops->graph_destroy(be, s->graphs[i].graph);
		be->ops->free(be, s->graphs[i].meta_dev);
	}
	free(s->ghost);
	void *bufs[] = { s->x, s->h, s->q, s->k, s->v, s->att, s->o, s->gate, s->up, s->act,
			 s->last, s->x_rows, s->logits, s->w_ids, s->scores, s->meta_dev,
			 s->x2, s->x_rows2 };
	for (size_t i = 0; i < HR_ARRAY_SIZE(bufs); i++)
		be->ops->free(be, bufs[i]);
	free(s->meta_host);
	free(s);
}

struct model_scratch *model_scratch_new(const struct model *m, const struct kv_pool *pool,
					uint32_t max_tokens, uint32_t max_seqs)
{
	const struct model_config *c = &m->cfg;
	struct kern_backend *be = m->be;
	struct model_scratch *s;
	uint32_t qdim = c->n_heads * c->head_dim, kvdim = c->n_kv_heads * c->head_dim;
	const bool fused_norms = be->ops->norm_matmul_qkv && be->ops->norm_matmul_swiglu;

	(void)pool;
	if (!max_tokens || !max_seqs || max_seqs > max_tokens || max_tokens > (1u << 20)) {
		errno = EINVAL;
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->be = be;
	s->max_tokens = max_tokens;
	s->max_seqs = max_seqs;
	s->graph_max = KERN_GRAPH_MAX_TOKENS;
	s->vocab = c->vocab_size;
	s->x = act_alloc(be, max_tokens, c->hidden_size);
	s->h = act_alloc(be, max_tokens, c->hidden_size);
	s->o = act_alloc(be, max_tokens, c->hidden_size);
	s->q = act_alloc(be, max_tokens, qdim);
	s->att = act_alloc(be, max_tokens, qdim);
	s->k = act_alloc(be, max_tokens, kvdim);
	s->v = act_alloc(be, max_tokens, kvdim);
	s->gate = act_alloc(be, max_tokens, c->intermediate_size);
	s->up = act_alloc(be, max_tokens, c->intermediate_size);
	s->act = act_alloc(be, max_tokens, c->intermediate_size);
	s->last = act_alloc(be, max_seqs, c->hidden_size);
	s->x_rows = act_alloc(be, max_seqs, c->hidden_size);
	s->logits = be->ops->alloc(be, (size_t)max_seqs * c->vocab_size * sizeof(float));
	s->w_ids = act_alloc(be, MODEL_SCORE_MAX_IDS, c->hidden_size);
	s->scores = be->ops->alloc(be, (size_t)max_seqs * MODEL_SCORE_MAX_IDS * sizeof(float));
	if (fused_norms) {
		s->x2 = act_alloc(be, max_tokens, c->hidden_size);
		s->x_rows2 = act_alloc(be, max_seqs, c->hidden_size);
	}
	if (!s->x || !s->h || !s->o || !s->q || !s->att || !s->k || !s->v || !s->gate ||
	    !s->up || !s->act || !s->last || !s->x_rows || !s->logits || !s->w_ids || !s->scores ||
	    (fused_norms && (!s->x2 || !s->x_rows2))) {
		model_scratch_free(s);
		errno = ENOMEM;
		return NULL;
	}
	return s;
}

float *model_step_logits(struct model_scratch *s, uint32_t i)
{
	return s->logits + (size_t)i * s->vocab;
}

/*
 * The ids' rows are gathered before the step, not after it: the score is a
 * matmul with them as its weights, and the cuda matmuls load weights before
 * waiting for the kernel issued just before them (kern.h: matmul).
 */
int model_score_ids(struct model *m, struct model_scratch *s, const int32_t *ids, uint32_t n_ids)
{
	int r;

	if (!ids || !n_ids || n_ids > MODEL_SCORE_MAX_IDS)
		return -EINVAL;
	s->n_ids = 0;
	r = m->be->ops->gather_rows(m->be, s->w_ids, m->lm_head, ids, n_ids, m->cfg.hidden_size);
	if (r < 0)
		return r;
	s->n_ids = n_ids;
	return 0;
}

int model_step_score(struct model *m, struct model_scratch *s, float **ret)
{
	int r;

	if (!ret || !s->n_ids || s->last_out != OUT_HIDDEN || !s->last_rows)
		return -EINVAL;
	/* Every row against every id: a few rows by a few ids, the cross terms
	 * cost less than a launch per row. */
	r = m->be->ops->matmul_f32out(m->be, s->scores, s->last, s->w_ids, s->last_rows,
				      m->cfg.hidden_size, s->n_ids);
	if (r < 0)
		return r;
	*ret = s->scores;
	return 0;
}

/* Grow the metadata buffers to hold n ints (host and backend). */
static int meta_reserve(struct model_scratch *s, size_t n)
{
	struct kern_backend *be = s->be;
	int32_t *host, *dev;

	if (n <= s->meta_cap)
		return 0;
	n = HR_MAX(n, s->meta_cap * 2);
	host = malloc(n * sizeof(int32_t));
	dev = be->ops->alloc(be, n * sizeof(int32_t));
	if (!host || !dev) {
		free(host);
		be->ops->free(be, dev);
		return -ENOMEM;
	}
	free(s->meta_host);
	be->ops->free(be, s->meta_dev);
	s->meta_host = host;
	s->meta_dev = dev;
	s->meta_cap = n;
	return 0;
}

/* Shape of a step, from the host: tokens, widest block table, longest context. */
struct step_shape {
	uint32_t n_tokens, max_blocks, max_ctx, n_rows;
	enum step_out out;
	bool ident; /* every sequence brings one token and wants its output (decode) */
};

static int step_check(const struct model *m, const struct model_scratch *s, uint32_t pt,
		      const struct model_seq_step *steps, uint32_t n, struct step_shape *ret)
{
	struct step_shape sh = { .max_blocks = 1, .ident = true };

	if (!n || n > s->max_seqs)
		return -E2BIG;
	for (uint32_t i = 0; i < n; i++) {
		const struct model_seq_step *st = &steps[i];
		uint32_t ctx = st->n_past + st->n_new;

		if (!st->n_new || !st->bt || ctx < st->n_past ||
		    (uint64_t)st->bt->n_pages * pt < ctx)
			return -EINVAL;
		if (st->n_new > s->max_tokens - sh.n_tokens)
			return -E2BIG;
		sh.n_tokens += st->n_new;
		sh.max_blocks = HR_MAX(sh.max_blocks, (ctx + pt - 1) / pt);
		sh.max_ctx = HR_MAX(sh.max_ctx, ctx);
		sh.n_rows += st->want_logits;
		sh.ident &= st->n_new == 1 && st->want_logits;
		if (st->want_logits)
			sh.out = st->ids_only && sh.out != OUT_LOGITS ? OUT_HIDDEN : OUT_LOGITS;
		for (uint32_t j = 0; j < st->n_new; j++)
			if (st->tokens[j] < 0 || (uint32_t)st->tokens[j] >= m->cfg.vocab_size)
				return -EINVAL;
	}
	*ret = sh;
	return 0;
}

/*
 * Write the real sequences' metadata: tokens, pos, slot at o[0..2], seq_start
 * at o[3], ctx_len at o[4], wanted rows at o[5], block table (width mb) at
 * o[6]. Returns the number of tokens written.
 */
static uint32_t meta_fill(int32_t *h, const size_t o[7], uint32_t pt, uint32_t mb,
			  const struct model_seq_step *steps, uint32_t n)
{
	uint32_t T = 0, n_rows = 0;

	for (uint32_t i = 0; i < n; i++) {
		const struct model_seq_step *st = &steps[i];
		uint32_t ctx = st->n_past + st->n_new, nb = (ctx + pt - 1) / pt;

		h[o[3] + i] = (int32_t)T;
		for (uint32_t j = 0; j < st->n_new; j++, T++) {
			uint32_t p = st->n_past + j;
			h[o[0] + T] = st->tokens[j];
			h[o[1] + T] = (int32_t)p;
			h[o[2] + T] = (int32_t)(st->bt->pages[p / pt] * pt + p % pt);
		}
		h[o[4] + i] = (int32_t)ctx;
		if (st->want_logits)
			h[o[5] + n_rows++] = (int32_t)T - 1;
		memcpy(&h[o[6] + (size_t)i * mb], st->bt->pages, nb * sizeof(int32_t));
		memset(&h[o[6] + (size_t)i * mb + nb], 0, (mb - nb) * sizeof(int32_t));
	}
	return T;
}

/* Offsets of the metadata arrays for tb tokens, sb sequences, width mb. */
static size_t meta_layout(size_t o[7], uint32_t tb, uint32_t sb, uint32_t mb)
{
	o[0] = 0;
	o[1] = o[0] + tb;
	o[2] = o[1] + tb;
	o[3] = o[2] + tb;
	o[4] = o[3] + sb + 1;
	o[5] = o[4] + sb;
	o[6] = o[5] + sb;
	return o[6] + (size_t)sb * mb;
}

/*
 * Padding sequences first .. first + n_pad - 1 of a bucket of width mb:
 * pad_t tokens from token T spread over them, each token at position 0 of a
 * one-token context on page 0 (read, never written: KERN_SLOT_PAD). Writes
 * their seq_start, ctx_len and block-table rows; returns the token count
 * after them.
 */
static uint32_t meta_pad(int32_t *h, const size_t o[7], uint32_t mb, uint32_t first,
			 uint32_t n_pad, uint32_t T, uint32_t pad_t)
{
	for (uint32_t i = 0; i < n_pad; i++) {
		uint32_t cnt = pad_t / n_pad + (i < pad_t % n_pad);

		h[o[3] + first + i] = (int32_t)T;
		for (uint32_t j = 0; j < cnt; j++, T++) {
			h[o[0] + T] = 0;
			h[o[1] + T] = 0;
			h[o[2] + T] = KERN_SLOT_PAD;
		}
		h[o[4] + first + i] = 1;
		memset(&h[o[6] + (size_t)(first + i) * mb], 0, mb * sizeof(int32_t));
	}
	return T;
}

/* Eager step: metadata into the growable buffer, exact shapes. */
static int step_prepare(struct model_scratch *s, uint32_t pt, const struct model_seq_step *steps,
			uint32_t n, const struct step_shape *sh, struct kern_batch *b,
			const int32_t **ret_tokens, const int32_t **ret_rows)
{
	uint32_t T = sh->n_tokens, mb = sh->max_blocks;
	size_t off[7], need;
	int r;

	need = meta_layout(off, T, n, mb);
	r = meta_reserve(s, need);
	if (r < 0)
		return r;
	meta_fill(s->meta_host, off, pt, mb, steps, n);
	s->meta_host[off[3] + n] = (int32_t)T;
	r = s->be->ops->upload(s->be, s->meta_dev, s->meta_host, need * sizeof(int32_t));
	if (r < 0)
		return r;
	*b = (struct kern_batch){
		.n_tokens = T,
		.n_seqs = n,
		.max_blocks = mb,
		.max_ctx = sh->max_ctx,
		.pos = s->meta_dev + off[1],
		.slot = s->meta_dev + off[2],
		.seq_start = s->meta_dev + off[3],
		.ctx_len = s->meta_dev + off[4],
		.block_table = s->meta_dev + off[6],
	};
	*ret_tokens = s->meta_dev + off[0];
	*ret_rows = s->meta_dev + off[5];
	return 0;
}

/* The MLP half of a layer over n rows: x_out = x_in + o, h = norm(x_out),
 * then o = down(SwiGLU(h)). x_out is x_in but with the fused norms. acc:
 * the o projection has already added into x_out (== x_in), and the down
 * projection adds into it too (no o). */
static int mlp_forward(struct model *m, const struct model_layer *L, struct model_scratch *s,
		       const void *x_in, void *x_out, uint32_t n, bool acc)
{
	const struct model_config *c = &m->cfg;
	const struct kern_ops *op = m->be->ops;
	struct kern_backend *be = m->be;
	uint32_t D = c->hidden_size, F = c->intermediate_size;
	int r;

	if (s->x2 && !acc) {
		const struct kern_norm nm = { .resid = x_out, .resid_in = x_in, .add = s->o,
					      .weight = L->mlp_norm, .h = s->h,
					      .eps = c->rms_norm_eps };

		r = op->norm_matmul_swiglu(be, &nm, s->act, s->gate, s->up, L->w_gate, L->w_up, n,
					   D, F);
	} else if ((r = op->add_rmsnorm(be, s->h, x_out, acc ? NULL : s->o, L->mlp_norm, n, D,
					c->rms_norm_eps)) < 0) {
		return r;
	} else if (op->matmul_swiglu)
		r = op->matmul_swiglu(be, s->act, s->gate, s->up, s->h, L->w_gate, L->w_up, n, D, F);
	else if ((r = op->matmul(be, s->gate, s->h, L->w_gate, NULL, n, D, F)) >= 0 &&
		 (r = op->matmul(be, s->up, s->h, L->w_up, NULL, n, D, F)) >= 0)
		r = op->swiglu(be, s->act, s->gate, s->up, n, F);
	if (r < 0)
		return r;
	return acc ? op->matmul_acc(be, x_out, s->act, L->w_down, n, F, D)
		   : op->matmul(be, s->o, s->act, L->w_down, NULL, n, F, D);
}

/*
 * One layer. The last one (last) computes past its K/V only what the step's
 * n_rows wanted rows (rows: token indices) need: attention's output of those
 * rows goes on, with their residual in s->x_rows, through the o projection
 * and the MLP; with no wanted rows it stops once its K/V are written. ident:
 * row i is token i for every token (decode), so nothing is gathered.
 */
static int layer_forward(struct model *m, const struct model_layer *L, uint32_t l,
			 struct model_scratch *s, const struct kern_batch *b,
			 const struct kern_kv *kv, bool last, const int32_t *rows, uint32_t n_rows,
			 bool ident, bool acc)
{
	const struct model_config *c = &m->cfg;
	const struct kern_ops *op = m->be->ops;
	struct kern_backend *be = m->be;
	uint32_t T = b->n_tokens, D = c->hidden_size;
	uint32_t qdim = c->n_heads * c->head_dim, kvdim = c->n_kv_heads * c->head_dim;
	float scale = 1.0f / sqrtf((float)c->head_dim);
	/* The residual after this layer's attention half: in place in x, or in
	 * x2 with the fused norms (whose MLP half moves it back to x). acc
	 * (model_forward's choice for the step): in place in x, the o and down
	 * projections adding into it (ops->matmul_acc), so nothing to add at the
	 * norms. */
	const bool fused = s->x2 && !acc;
	void *x = fused ? s->x2 : s->x, *x_out = s->x, *att = s->att;
	int r;

	/* x = residual + previous layer's MLP output (none before layer 0);
	 * h = norm(x); q, k, v from h; q and k rotated, k and v into the pages
	 * (with the fused norms, all in one op). */
	if (fused) {
		const struct kern_norm nm = { .resid = s->x2, .resid_in = s->x,
					      .add = l ? s->o : NULL, .weight = L->attn_norm,
					      .h = s->h, .eps = c->rms_norm_eps };
		const struct kern_rope rope = { .batch = b, .kv = kv, .layer = l,
						.n_heads = c->n_heads, .inv_freq = m->inv_freq };

		r = op->norm_matmul_qkv(be, &nm, &rope, s->q, s->k, s->v, L->wq, L->wk, L->wv, L->bq,
					L->bk, L->bv, T, D, qdim, kvdim);
	} else if ((r = op->add_rmsnorm(be, s->h, s->x, l && !acc ? s->o : NULL, L->attn_norm, T,
					D, c->rms_norm_eps)) < 0) {
		return r;
	} else {
		if (op->matmul_qkv)
			r = op->matmul_qkv(be, s->q, s->k, s->v, s->h, L->wq, L->wk, L->wv, L->bq,
					   L->bk, L->bv, T, D, qdim, kvdim);
		else if ((r = op->matmul(be, s->q, s->h, L->wq, L->bq, T, D, qdim)) >= 0 &&
			 (r = op->matmul(be, s->k, s->h, L->wk, L->bk, T, D, kvdim)) >= 0)
			r = op->matmul(be, s->v, s->h, L->wv, L->bv, T, D, kvdim);
		if (r >= 0)
			r = op->rope_kv_write(be, s->q, s->k, s->v, b, kv, l, c->n_heads,
					      m->inv_freq);
	}
	if (r < 0)
		return r;
	if (last && !n_rows)
		return 0;
	if ((r = op->attention(be, s->att, s->q, b, kv, l, c->n_heads, scale)) < 0)
		return r;
	if (last && !ident) {
		/* q is spent: it takes the wanted rows of attention's output. */
		if ((r = op->gather_rows(be, s->q, s->att, rows, n_rows, qdim)) < 0 ||
		    (r = op->gather_rows(be, s->x_rows, x, rows, n_rows, D)) < 0)
			return r;
		x = s->x_rows;
		x_out = s->x_rows2 ? s->x_rows2 : s->x_rows;
		att = s->q;
		T = n_rows;
	}
	if (!fused)
		x_out = x;
	r = acc ? op->matmul_acc(be, x, att, L->wo, T, qdim, D)
		: op->matmul(be, s->o, att, L->wo, NULL, T, qdim, D);
	if (r < 0)
		return r;
	return mlp_forward(m, L, s, x, x_out, T, acc);
}

/* The step's launches, given its metadata in backend memory. */
static int forward_body(struct model *m, struct model_scratch *s, const struct kern_kv *kv,
			const struct kern_batch *b, const int32_t *tokens, const int32_t *rows,
			uint32_t n_rows, enum step_out out, bool ident)
{
	const struct model_config *c = &m->cfg;
	const struct kern_ops *op = m->be->ops;
	struct kern_backend *be = m->be;
	/* the residual adds the o and down projections itself (kern.h) */
	const bool acc = op->matmul_acc && be->acc_min_rows && b->n_tokens >= be->acc_min_rows;
	int r;

	if (out == OUT_NONE)
		n_rows = 0;
	ident &= n_rows == b->n_tokens;
	s->last_rows = 0;
	s->last_out = OUT_NONE;
	r = op->embed(be, s->x, m->embed, tokens, b->n_tokens, c->hidden_size, c->vocab_size);
	if (r < 0)
		return r;
	for (uint32_t l = 0; l < c->n_layers; l++) {
		r = layer_forward(m, &m->layers[l], l, s, b, kv, l + 1 == c->n_layers, rows, n_rows,
				  ident, acc);
		if (r < 0)
			return r;
	}
	if (!n_rows)
		return 0;
	/* Final residual add and norm of the wanted rows, then the LM head over
	 * them (none for a score: model_step_score). */
	if ((r = op->add_rmsnorm(be, s->last,
				 ident			 ? s->x
				 : s->x_rows2 && !acc ? s->x_rows2
							: s->x_rows,
				 acc ? NULL : s->o, m->final_norm, n_rows, c->hidden_size,
				 c->rms_norm_eps)) < 0 ||
	    (out == OUT_LOGITS &&
	     (r = op->matmul_f32out(be, s->logits, s->last, m->lm_head, n_rows, c->hidden_size,
				    c->vocab_size)) < 0))
		return r;
	s->last_rows = n_rows;
	s->last_out = out;
	return 0;
}

static uint32_t bucket(uint32_t x, uint32_t cap)
{
	uint32_t b = 1;

	while (b < x && b < (1u << 30))
		b <<= 1;
	return HR_MIN(b, cap);
}

/* The cached graph entry for a key, or a free (or least recently used,
 * released) one set up for it. NULL on allocation failure. */
static struct step_graph *graph_get(struct model_scratch *s, uint32_t tb, uint32_t sb,
				    uint32_t mb, enum step_out out, bool ident)
{
	struct kern_backend *be = s->be;
	struct step_graph *g = NULL, *victim = &s->graphs[0];
	size_t o[7], need = meta_layout(o, tb, sb, mb);

	for (size_t i = 0; i < HR_ARRAY_SIZE(s->graphs); i++) {
		struct step_graph *e = &s->graphs[i];

		if (e->used && e->tb == tb && e->sb == sb && e->mb == mb && e->out == out &&
		    e->ident == ident) {
			e->last_use = ++s->clock;
			return e;
		}
		if (!e->used && !g)
			g = e;
		if (e->last_use < victim->last_use)
			victim = e;
	}
	if (!g) {
		g = victim;
		if (g->graph)
			be->ops->graph_destroy(be, g->graph);
		be->ops->free(be, g->meta_dev);
		memset(g, 0, sizeof(*g));
	}
	g->meta_dev = be->ops->alloc(be, need * sizeof(int32_t));
	if (!g->meta_dev)
		return NULL;
	g->meta_ints = need;
	g->tb = tb;
	g->sb = sb;
	g->mb = mb;
	g->out = out;
	g->ident = ident;
	g->state = GRAPH_NEW;
	g->used = true;
	g->last_use = ++s->clock;
	return g;
}

static int graph_capture(struct model *m, struct model_scratch *s, const struct kern_kv *kv,
			 struct step_graph *g, const struct kern_batch *b, const int32_t *tokens,
			 const int32_t *rows)
{
	const struct kern_ops *op = m->be->ops;
	int r, r2;

	r = op->graph_begin(m->be);
	if (r < 0)
		return r;
	r = forward_body(m, s, kv, b, tokens, rows, g->sb, g->out, g->ident);
	r2 = op->graph_end(m->be, r < 0 ? NULL : &g->graph);
	return r < 0 ? r : r2;
}

/*
 * A step through its bucket's graph. Returns -ENOTSUP when the step does not
 * fit a bucket (the caller runs it eagerly), else the step's result.
 */
static int forward_graph(struct model *m, struct model_scratch *s, const struct kern_kv *kv,
			 const struct model_seq_step *steps, uint32_t n, const struct step_shape *sh)
{
	const struct kern_ops *op = m->be->ops;
	uint32_t pt = kv->page_tokens, T = sh->n_tokens, tb, sb, mb, pad_t;
	struct step_graph *g;
	struct kern_batch b;
	int32_t *h, *dev;
	size_t o[7];
	bool ident;
	int r;

	if (s->graphs_off || !op->graph_launch || T > s->graph_max)
		return -ENOTSUP;
	tb = HR_MIN(kern_step_bucket(T), s->max_tokens);
	pad_t = tb - T;
	sb = bucket(n + (pad_t > 0), s->max_seqs);
	if (sb < n + (pad_t > 0))
		return -ENOTSUP;
	mb = bucket(HR_MAX(sh->max_blocks, GRAPH_MIN_BLOCKS), 1u << 30);
	if ((uint64_t)mb * pt > INT32_MAX)
		return -ENOTSUP;
	/* Decode with as many sequence slots as tokens: each padding sequence
	 * gets one padding token, and row i is token i throughout. */
	ident = sh->ident && tb == sb;
	g = graph_get(s, tb, sb, mb, sh->out, ident);
	if (!g)
		return -ENOMEM;
	if (g->meta_ints > s->ghost_cap) {
		int32_t *p = realloc(s->ghost, g->meta_ints * sizeof(int32_t));

		if (!p)
			return -ENOMEM;
		s->ghost = p;
		s->ghost_cap = g->meta_ints;
	}
	h = s->ghost;
	meta_layout(o, tb, sb, mb);
	T = meta_fill(h, o, pt, mb, steps, n);
	/* Wanted rows first, then row 0 (ident: its own token) for the other
	 * sequence slots. */
	for (uint32_t i = sh->n_rows; i < sb; i++)
		h[o[5] + i] = ident ? (int32_t)i : 0;
	/* Padding sequences: pad_t tokens spread over them. */
	T = meta_pad(h, o, mb, n, sb - n, T, pad_t);
	h[o[3] + sb] = (int32_t)T;
	r = s->be->ops->upload(s->be, g->meta_dev, h, g->meta_ints * sizeof(int32_t));
	if (r < 0)
		return r;
	dev = g->meta_dev;
	b = (struct kern_batch){
		.n_tokens = tb,
		.n_seqs = sb,
		.max_blocks = mb,
		.max_ctx = mb * pt, /* the capacity: launch sizes depend on the bucket only */
		.pos = dev + o[1],
		.slot = dev + o[2],
		.seq_start = dev + o[3],
		.ctx_len = dev + o[4],
		.block_table = dev + o[6],
	};
	switch (g->state) {
	case GRAPH_NEW:
		r = forward_body(m, s, kv, &b, dev + o[0], dev + o[5], sb, g->out, g->ident);
		if (!r)
			g->state = GRAPH_WARM;
		return r;
	case GRAPH_NEVER:
		return forward_body(m, s, kv, &b, dev + o[0], dev + o[5], sb, g->out, g->ident);
	case GRAPH_WARM:
	case GRAPH_READY:
		break;
	}
	/* A second attempt captures again a graph that went stale. */
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!g->graph) {
			uint64_t t0 = hr_now_ns();

			r = graph_capture(m, s, kv, g, &b, dev + o[0], dev + o[5]);
			if (r < 0) {
				/* -EBUSY: a workspace had to grow; the eager run grows
				 * it and the next step captures. Else give up on it. */
				g->state = r == -EBUSY ? GRAPH_WARM : GRAPH_NEVER;
				return forward_body(m, s, kv, &b, dev + o[0], dev + o[5], sb,
						    g->out, g->ident);
			}
			s->counts.captures++;
			s->counts.recaptures += attempt;
			s->counts.capture_ns += hr_now_ns() - t0;
			g->state = GRAPH_READY;
		}
		r = op->graph_launch(m->be, g->graph);
		if (r != -ESTALE) {
			/* What the graph's body wrote, as forward_body records it. */
			s->last_rows = g->out == OUT_NONE ? 0 : sb;
			s->last_out = g->out;
			return r;
		}
		op->graph_destroy(m->be, g->graph);
		g->graph = NULL;
	}
	return r;
}

void model_scratch_graph_counts(const struct model_scratch *s, struct model_graph_counts *ret)
{
	*ret = s->counts;
}

int model_forward(struct model *m, struct kv_pool *pool, struct model_scratch *s,
		  const struct model_seq_step *steps, uint32_t n)
{
	const struct model_config *c = &m->cfg;
	const struct kern_kv *kv = kv_pool_kern(pool);
	const int32_t *tokens, *rows;
	struct step_shape sh;
	struct kern_batch b;
	int r;

	if (kv->n_layers != c->n_layers || kv->n_kv_heads != c->n_kv_heads ||
	    kv->head_dim != c->head_dim)
		return -EINVAL;
	r = step_check(m, s, kv->page_tokens, steps, n, &sh);
	if (r < 0)
		return r;
	r = forward_graph(m, s, kv, steps, n, &sh);
	if (r != -ENOTSUP)
		return r;
	r = step_prepare(s, kv->page_tokens, steps, n, &sh, &b, &tokens, &rows);
	if (r < 0)
		return r;
	return forward_body(m, s, kv, &b, tokens, rows, sh.n_rows, sh.out, sh.ident);
}

void model_scratch_set_graphs(struct model_scratch *s, bool on)
{
	s->graphs_off = !on;
}

void model_scratch_set_graph_tokens(struct model_scratch *s, uint32_t max)
{
	s->graph_max = HR_MIN(max, KERN_GRAPH_MAX_TOKENS);
}

/* The padding steps of model_scratch_warm: returns how many ran, or -errno. */
static int warm_buckets(struct model *m, struct model_scratch *s, const struct kern_kv *kv,
			uint32_t top)
{
	uint32_t n = 0;
	int r;

	for (uint32_t tb = 1;; tb = kern_step_bucket(tb + 1)) {
		/* t padding tokens in sequences of at least one token each, and
		 * the LM head over as many rows (sb) as a graph step of t tokens
		 * can have (rows all token 0). */
		uint32_t t = HR_MIN(tb, top), sb = bucket(t, s->max_seqs), ns = HR_MIN(sb, t);
		size_t o[7], need = meta_layout(o, t, sb, 1);
		int32_t *h, *dev;
		struct kern_batch b;

		if ((r = meta_reserve(s, need)) < 0)
			return r;
		h = s->meta_host;
		dev = s->meta_dev;
		memset(h, 0, need * sizeof(int32_t));
		h[o[3] + ns] = (int32_t)meta_pad(h, o, 1, 0, ns, 0, t);
		if ((r = s->be->ops->upload(s->be, dev, h, need * sizeof(int32_t))) < 0)
			return r;
		b = (struct kern_batch){
			.n_tokens = t, .n_seqs = ns, .max_blocks = 1, .max_ctx = 1,
			.pos = dev + o[1], .slot = dev + o[2], .seq_start = dev + o[3],
			.ctx_len = dev + o[4], .block_table = dev + o[6],
		};
		if ((r = forward_body(m, s, kv, &b, dev + o[0], dev + o[5], sb, OUT_LOGITS, false)) < 0)
			return r;
		n++;
		if (t == top)
			break;
	}
	return (int)n;
}

/*
 * One eager step of padding tokens per token bucket a graph step can have (at
 * most graph_max and the scratch's size), built as a graph step's padding
 * (meta_pad), with the LM head over as many rows as such a step can have,
 * with ops->tune on. The backend meets every GEMM shape of the graph steps
 * here: cuda tunes cuBLASLt for each (a stream synchronisation and a few
 * milliseconds per shape; the only time it tunes) and sizes its workspaces,
 * before serving instead of at a bucket's first step under load, where it
 * stalled every request in flight (seen: p99 of 37-52 ms against a 2.5 ms
 * mean step). Every token sits at position 0 of a one-token context on
 * page 0 with KERN_SLOT_PAD: no KV is written. Returns the number of buckets
 * run (0 without graphs) or -errno.
 */
int model_scratch_warm(struct model *m, struct kv_pool *pool, struct model_scratch *s)
{
	const struct kern_kv *kv = kv_pool_kern(pool);
	uint32_t top = HR_MIN(s->graph_max, s->max_tokens), n = 0;
	int r;

	if (s->graphs_off || !m->be->ops->graph_launch || !top)
		return 0;
	if (m->be->ops->tune)
		m->be->ops->tune(m->be, true);
	r = warm_buckets(m, s, kv, top);
	if (m->be->ops->tune)
		m->be->ops->tune(m->be, false);
	if (r < 0)
		return r;
	n = (uint32_t)r;
	r = s->be->ops->sync(s->be);
	return r < 0 ? r : (int)n;
}

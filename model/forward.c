/* SPDX-License-Identifier: MIT */
/*
 * The decoder forward pass (Llama / Mistral / Qwen2), written once against the
 * kernels interface: a step is the new tokens of one or more sequences,
 * flattened, whose K/V go straight into their paged KV. Only the rows whose
 * logits are wanted go through the LM head.
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

struct model_scratch {
	struct kern_backend *be;
	uint32_t max_tokens, max_seqs, vocab;
	/* Activations, [max_tokens, *] in the backend's activation type. */
	void *x, *h, *q, *k, *v, *att, *o, *gate, *up, *act, *last;
	float *logits;           /* [max_seqs, vocab] fp32 */
	int32_t *meta_dev;       /* backend copy of meta_host */
	int32_t *meta_host;
	size_t meta_cap;         /* ints in both */
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
	void *bufs[] = { s->x, s->h, s->q, s->k, s->v, s->att, s->o, s->gate, s->up, s->act,
			 s->last, s->logits, s->meta_dev };
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
	s->logits = be->ops->alloc(be, (size_t)max_seqs * c->vocab_size * sizeof(float));
	if (!s->x || !s->h || !s->o || !s->q || !s->att || !s->k || !s->v || !s->gate ||
	    !s->up || !s->act || !s->last || !s->logits) {
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

/*
 * Fill the host metadata of a step and upload it; describe it in `b` (backend
 * pointers) and return the number of logit rows in *ret_rows.
 */
static int step_prepare(struct model *m, struct kv_pool *pool, struct model_scratch *s,
			const struct model_seq_step *steps, uint32_t n, struct kern_batch *b,
			const int32_t **ret_tokens, const int32_t **ret_rows, uint32_t *ret_n_rows)
{
	const struct kern_kv *kv = kv_pool_kern(pool);
	uint32_t pt = kv->page_tokens, T = 0, max_blocks = 1, max_ctx = 0, n_rows = 0;
	size_t off[7], need;
	int32_t *h;
	int r;

	if (!n || n > s->max_seqs)
		return -E2BIG;
	for (uint32_t i = 0; i < n; i++) {
		const struct model_seq_step *st = &steps[i];
		uint32_t ctx = st->n_past + st->n_new;

		if (!st->n_new || !st->bt || ctx < st->n_past ||
		    (uint64_t)st->bt->n_pages * pt < ctx)
			return -EINVAL;
		if (st->n_new > s->max_tokens - T)
			return -E2BIG;
		T += st->n_new;
		max_blocks = HR_MAX(max_blocks, (ctx + pt - 1) / pt);
		max_ctx = HR_MAX(max_ctx, ctx);
		for (uint32_t j = 0; j < st->n_new; j++)
			if (st->tokens[j] < 0 || (uint32_t)st->tokens[j] >= m->cfg.vocab_size)
				return -EINVAL;
	}
	/* tokens, pos, slot [T]; seq_start [n+1]; ctx_len, rows [n]; block_table [n*max_blocks] */
	off[0] = 0;
	off[1] = off[0] + T;
	off[2] = off[1] + T;
	off[3] = off[2] + T;
	off[4] = off[3] + n + 1;
	off[5] = off[4] + n;
	off[6] = off[5] + n;
	need = off[6] + (size_t)n * max_blocks;
	r = meta_reserve(s, need);
	if (r < 0)
		return r;
	h = s->meta_host;
	T = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct model_seq_step *st = &steps[i];
		uint32_t ctx = st->n_past + st->n_new, nb = (ctx + pt - 1) / pt;

		h[off[3] + i] = (int32_t)T;
		for (uint32_t j = 0; j < st->n_new; j++, T++) {
			uint32_t p = st->n_past + j;
			h[off[0] + T] = st->tokens[j];
			h[off[1] + T] = (int32_t)p;
			h[off[2] + T] = (int32_t)(st->bt->pages[p / pt] * pt + p % pt);
		}
		h[off[4] + i] = (int32_t)ctx;
		if (st->want_logits)
			h[off[5] + n_rows++] = (int32_t)T - 1;
		memcpy(&h[off[6] + (size_t)i * max_blocks], st->bt->pages, nb * sizeof(int32_t));
		memset(&h[off[6] + (size_t)i * max_blocks + nb], 0,
		       (max_blocks - nb) * sizeof(int32_t));
	}
	h[off[3] + n] = (int32_t)T;
	r = s->be->ops->upload(s->be, s->meta_dev, h, need * sizeof(int32_t));
	if (r < 0)
		return r;
	*b = (struct kern_batch){
		.n_tokens = T,
		.n_seqs = n,
		.max_blocks = max_blocks,
		.max_ctx = max_ctx,
		.pos = s->meta_dev + off[1],
		.slot = s->meta_dev + off[2],
		.seq_start = s->meta_dev + off[3],
		.ctx_len = s->meta_dev + off[4],
		.block_table = s->meta_dev + off[6],
	};
	*ret_tokens = s->meta_dev + off[0];
	*ret_rows = s->meta_dev + off[5];
	*ret_n_rows = n_rows;
	return 0;
}

static int layer_forward(struct model *m, const struct model_layer *L, uint32_t l,
			 struct model_scratch *s, const struct kern_batch *b,
			 const struct kern_kv *kv)
{
	const struct model_config *c = &m->cfg;
	const struct kern_ops *op = m->be->ops;
	struct kern_backend *be = m->be;
	uint32_t T = b->n_tokens, D = c->hidden_size, F = c->intermediate_size;
	uint32_t qdim = c->n_heads * c->head_dim, kvdim = c->n_kv_heads * c->head_dim;
	float scale = 1.0f / sqrtf((float)c->head_dim);
	int r;

	/* x += previous layer's MLP output (none before layer 0); h = norm(x). */
	if ((r = op->add_rmsnorm(be, s->h, s->x, l ? s->o : NULL, L->attn_norm, T, D,
				 c->rms_norm_eps)) < 0 ||
	    (r = op->matmul(be, s->q, s->h, L->wq, L->bq, T, D, qdim)) < 0 ||
	    (r = op->matmul(be, s->k, s->h, L->wk, L->bk, T, D, kvdim)) < 0 ||
	    (r = op->matmul(be, s->v, s->h, L->wv, L->bv, T, D, kvdim)) < 0 ||
	    (r = op->rope_kv_write(be, s->q, s->k, s->v, b, kv, l, c->n_heads, m->inv_freq)) < 0 ||
	    (r = op->attention(be, s->att, s->q, b, kv, l, c->n_heads, scale)) < 0 ||
	    (r = op->matmul(be, s->o, s->att, L->wo, NULL, T, qdim, D)) < 0 ||
	    (r = op->add_rmsnorm(be, s->h, s->x, s->o, L->mlp_norm, T, D, c->rms_norm_eps)) < 0 ||
	    (r = op->matmul(be, s->gate, s->h, L->w_gate, NULL, T, D, F)) < 0 ||
	    (r = op->matmul(be, s->up, s->h, L->w_up, NULL, T, D, F)) < 0 ||
	    (r = op->swiglu(be, s->act, s->gate, s->up, T, F)) < 0 ||
	    (r = op->matmul(be, s->o, s->act, L->w_down, NULL, T, F, D)) < 0)
		return r;
	return 0;
}

int model_forward(struct model *m, struct kv_pool *pool, struct model_scratch *s,
		  const struct model_seq_step *steps, uint32_t n)
{
	const struct model_config *c = &m->cfg;
	const struct kern_ops *op = m->be->ops;
	struct kern_backend *be = m->be;
	const struct kern_kv *kv = kv_pool_kern(pool);
	const int32_t *tokens, *rows;
	struct kern_batch b;
	uint32_t n_rows;
	int r;

	if (kv->n_layers != c->n_layers || kv->n_kv_heads != c->n_kv_heads ||
	    kv->head_dim != c->head_dim)
		return -EINVAL;
	r = step_prepare(m, pool, s, steps, n, &b, &tokens, &rows, &n_rows);
	if (r < 0)
		return r;
	r = op->embed(be, s->x, m->embed, tokens, b.n_tokens, c->hidden_size, c->vocab_size);
	if (r < 0)
		return r;
	for (uint32_t l = 0; l < c->n_layers; l++) {
		r = layer_forward(m, &m->layers[l], l, s, &b, kv);
		if (r < 0)
			return r;
	}
	if (!n_rows)
		return 0;
	/* Final residual add and norm, then the LM head on the wanted rows only. */
	if ((r = op->add_rmsnorm(be, s->h, s->x, s->o, m->final_norm, b.n_tokens, c->hidden_size,
				 c->rms_norm_eps)) < 0 ||
	    (r = op->gather_rows(be, s->last, s->h, rows, n_rows, c->hidden_size)) < 0 ||
	    (r = op->matmul_f32out(be, s->logits, s->last, m->lm_head, n_rows, c->hidden_size,
				   c->vocab_size)) < 0)
		return r;
	return 0;
}

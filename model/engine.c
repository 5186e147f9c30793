/* SPDX-License-Identifier: MIT */
/*
 * The engine: a model, its L1 page pool, one scratch area and sequences.
 * Logits of only one sequence are held at a time (the last one that ran a
 * step); asking another sequence for its logits recomputes its last position
 * (one one-token step), which is also how truncation is served.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "hr_common.h"

#define ENGINE_MAX_IDS 1024u

struct engine {
	struct model *m;
	struct kv_pool *pool;
	struct model_scratch *scratch;
	uint32_t max_step_tokens;
	uint32_t max_context;
	const struct engine_seq *logits_owner; /* whose logits are in scratch row 0 */
	uint64_t n_steps;
	int32_t *ids_dev;   /* [ENGINE_MAX_IDS] */
	float *probs_dev;   /* [ENGINE_MAX_IDS] */
	int32_t *argmax_dev;
};

struct engine_seq {
	struct kv_block_table bt;
	int32_t *tokens;
	uint32_t len, cap;
};

struct engine *engine_new(struct model *m, const struct engine_params *p)
{
	static const struct engine_params defaults = { 0 };
	const struct model_config *c = &m->cfg;
	struct kern_backend *be = m->be;
	struct kv_geom g;
	struct engine *e;
	uint32_t pages;

	if (!p)
		p = &defaults;
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->m = m;
	e->max_step_tokens = p->max_step_tokens ? p->max_step_tokens : 512;
	e->max_context = p->max_context ? p->max_context : c->max_position_embeddings;
	e->max_context = HR_MIN(e->max_context, c->max_position_embeddings);
	if (c->sliding_window)
		e->max_context = HR_MIN(e->max_context, c->sliding_window);
	g = (struct kv_geom){
		.page_tokens = p->page_tokens ? p->page_tokens : KV_DEFAULT_PAGE_TOKENS,
		.n_layers = c->n_layers,
		.n_kv_heads = c->n_kv_heads,
		.head_dim = c->head_dim,
	};
	/* Default: room for four sequences of the full context, at least 64 pages. */
	pages = p->kv_pages ? p->kv_pages
			    : HR_MAX(64u, 4 * ((e->max_context + g.page_tokens - 1) / g.page_tokens));
	e->pool = kv_pool_new(be, &g, pages);
	if (!e->pool)
		goto fail;
	e->scratch = model_scratch_new(m, e->pool, e->max_step_tokens, 1);
	if (!e->scratch)
		goto fail;
	e->ids_dev = be->ops->alloc(be, ENGINE_MAX_IDS * sizeof(int32_t));
	e->probs_dev = be->ops->alloc(be, ENGINE_MAX_IDS * sizeof(float));
	e->argmax_dev = be->ops->alloc(be, sizeof(int32_t));
	if (!e->ids_dev || !e->probs_dev || !e->argmax_dev) {
		errno = ENOMEM;
		goto fail;
	}
	return e;
fail:;
	int saved = errno;
	engine_free(e);
	errno = saved;
	return NULL;
}

void engine_free(struct engine *e)
{
	struct kern_backend *be;

	if (!e)
		return;
	be = e->m->be;
	be->ops->free(be, e->ids_dev);
	be->ops->free(be, e->probs_dev);
	be->ops->free(be, e->argmax_dev);
	model_scratch_free(e->scratch);
	kv_pool_free(e->pool);
	free(e);
}

struct model *engine_model(const struct engine *e)
{
	return e->m;
}

struct kv_pool *engine_pool(const struct engine *e)
{
	return e->pool;
}

uint64_t engine_n_steps(const struct engine *e)
{
	return e->n_steps;
}

struct engine_seq *engine_seq_new(struct engine *e)
{
	(void)e;
	return calloc(1, sizeof(struct engine_seq));
}

void engine_seq_free(struct engine *e, struct engine_seq *s)
{
	if (!s)
		return;
	if (e->logits_owner == s)
		e->logits_owner = NULL;
	kv_bt_release(e->pool, &s->bt);
	free(s->tokens);
	free(s);
}

uint32_t engine_seq_len(const struct engine_seq *s)
{
	return s->len;
}

const int32_t *engine_seq_tokens(const struct engine_seq *s)
{
	return s->tokens;
}

static int history_reserve(struct engine_seq *s, uint32_t n)
{
	uint32_t cap;
	int32_t *t;

	if (n <= s->cap)
		return 0;
	cap = HR_MAX(n, s->cap ? s->cap * 2 : 64);
	t = realloc(s->tokens, (size_t)cap * sizeof(int32_t));
	if (!t)
		return -ENOMEM;
	s->tokens = t;
	s->cap = cap;
	return 0;
}

/* Run the forward pass over tokens already in s->tokens[from, to). */
static int run_steps(struct engine *e, struct engine_seq *s, uint32_t from, uint32_t to)
{
	int r;

	r = kv_bt_reserve(e->pool, &s->bt, to);
	if (r < 0)
		return r;
	e->logits_owner = NULL;
	for (uint32_t at = from; at < to;) {
		uint32_t n = HR_MIN(to - at, e->max_step_tokens);
		struct model_seq_step st = {
			.bt = &s->bt,
			.n_past = at,
			.n_new = n,
			.tokens = s->tokens + at,
			.want_logits = at + n == to,
		};
		r = model_forward(e->m, e->pool, e->scratch, &st, 1);
		e->n_steps++;
		if (r < 0) {
			kv_bt_truncate(e->pool, &s->bt, from);
			s->bt.n_tokens = from;
			return r;
		}
		at += n;
		s->bt.n_tokens = at;
	}
	e->logits_owner = s;
	return 0;
}

int engine_append(struct engine *e, struct engine_seq *s, const int32_t *tokens, uint32_t n)
{
	uint32_t vocab = e->m->cfg.vocab_size, old = s->len;
	int r;

	if (!tokens || !n)
		return -EINVAL;
	if (n > e->max_context || old > e->max_context - n)
		return -E2BIG;
	for (uint32_t i = 0; i < n; i++)
		if (tokens[i] < 0 || (uint32_t)tokens[i] >= vocab)
			return -EINVAL;
	r = history_reserve(s, old + n);
	if (r < 0)
		return r;
	memcpy(s->tokens + old, tokens, (size_t)n * sizeof(int32_t));
	/* A truncation may have left the KV behind the history: redo from there. */
	r = run_steps(e, s, HR_MIN(s->bt.n_tokens, old), old + n);
	if (r < 0)
		return r;
	s->len = old + n;
	return 0;
}

/* Make s's last-position logits the ones in scratch row 0. */
static int ensure_logits(struct engine *e, struct engine_seq *s)
{
	if (!s->len)
		return -ENODATA;
	if (e->logits_owner == s)
		return 0;
	/* Recompute the last position from the token history. */
	if (s->bt.n_tokens >= s->len) {
		kv_bt_truncate(e->pool, &s->bt, s->len - 1);
		s->bt.n_tokens = s->len - 1;
	}
	return run_steps(e, s, s->bt.n_tokens, s->len);
}

int engine_logits(struct engine *e, struct engine_seq *s, float *out, uint32_t vocab)
{
	struct kern_backend *be = e->m->be;
	int r;

	if (!out || vocab != e->m->cfg.vocab_size)
		return -EINVAL;
	r = ensure_logits(e, s);
	if (r < 0)
		return r;
	return be->ops->download(be, out, model_step_logits(e->scratch, 0),
				 (size_t)vocab * sizeof(float));
}

int engine_probs(struct engine *e, struct engine_seq *s, const int32_t *ids, uint32_t n,
		 float *out)
{
	struct kern_backend *be = e->m->be;
	uint32_t vocab = e->m->cfg.vocab_size;
	int r;

	if (!ids || !out || !n || n > ENGINE_MAX_IDS)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		if (ids[i] < 0 || (uint32_t)ids[i] >= vocab)
			return -EINVAL;
	r = ensure_logits(e, s);
	if (r < 0)
		return r;
	if ((r = be->ops->upload(be, e->ids_dev, ids, n * sizeof(int32_t))) < 0 ||
	    (r = be->ops->softmax_ids(be, e->probs_dev, model_step_logits(e->scratch, 0),
				      e->ids_dev, 1, n, vocab)) < 0)
		return r;
	return be->ops->download(be, out, e->probs_dev, n * sizeof(float));
}

int engine_generate(struct engine *e, struct engine_seq *s, uint32_t n, int32_t *out,
		    engine_token_cb cb, void *userdata, int want_logits)
{
	struct kern_backend *be = e->m->be;
	uint32_t vocab = e->m->cfg.vocab_size;
	_cleanup_free_ float *logits = NULL;
	int r;

	if (!out && n)
		return -EINVAL;
	if (want_logits && cb) {
		logits = malloc((size_t)vocab * sizeof(float));
		if (!logits)
			return -ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++) {
		int32_t tok;

		r = ensure_logits(e, s);
		if (r < 0)
			return r;
		if ((r = be->ops->argmax(be, e->argmax_dev, model_step_logits(e->scratch, 0), 1,
					 vocab)) < 0 ||
		    (r = be->ops->download(be, &tok, e->argmax_dev, sizeof(tok))) < 0)
			return r;
		if (logits && (r = be->ops->download(be, logits, model_step_logits(e->scratch, 0),
						     (size_t)vocab * sizeof(float))) < 0)
			return r;
		out[i] = tok;
		r = engine_append(e, s, &tok, 1);
		if (r < 0)
			return r;
		if (cb && (r = cb(userdata, i, tok, logits)) != 0)
			return r;
	}
	return 0;
}

int engine_truncate(struct engine *e, struct engine_seq *s, uint32_t n)
{
	if (n > s->len)
		return -EINVAL;
	if (n == s->len)
		return 0;
	kv_bt_truncate(e->pool, &s->bt, n);
	s->len = n;
	if (e->logits_owner == s)
		e->logits_owner = NULL;
	return 0;
}

const struct kv_block_table *engine_seq_kv(const struct engine_seq *s)
{
	return &s->bt;
}

void engine_seq_drop_kv(struct engine *e, struct engine_seq *s)
{
	if (e->logits_owner == s)
		e->logits_owner = NULL;
	kv_bt_release(e->pool, &s->bt);
}

int engine_seq_reserve_kv(struct engine *e, struct engine_seq *s)
{
	if (e->logits_owner == s)
		e->logits_owner = NULL;
	kv_bt_truncate(e->pool, &s->bt, 0);
	return kv_bt_reserve(e->pool, &s->bt, s->len);
}

void engine_seq_kv_restored(struct engine *e, struct engine_seq *s)
{
	(void)e;
	s->bt.n_tokens = s->len;
}

struct engine_seq *engine_seq_from_history(struct engine *e, const int32_t *tokens, uint32_t n)
{
	struct engine_seq *s = engine_seq_new(e);

	if (!s)
		return NULL;
	if (n && history_reserve(s, n) < 0) {
		free(s);
		errno = ENOMEM;
		return NULL;
	}
	if (n)
		memcpy(s->tokens, tokens, (size_t)n * sizeof(int32_t));
	s->len = n;
	return s;
}

void *engine_page_ptr(struct engine *e, uint32_t page)
{
	return (char *)kv_pool_kern(e->pool)->base + (size_t)page * engine_page_bytes(e);
}

size_t engine_page_bytes(const struct engine *e)
{
	const struct kern_kv *kv = kv_pool_kern(e->pool);
	return kern_kv_page_elems(kv) * e->m->be->act_bytes;
}

/* SPDX-License-Identifier: MIT */
/*
 * The engine: a model, its L1 page pool, one scratch area and sequences. A
 * sequence's history and its computed KV are apart: positions past the KV are
 * pending and are computed by engine_step(), many sequences per forward pass.
 * Logits are not kept between steps: asking for the last position's outputs
 * of a sequence with nothing pending recomputes that one position.
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
	uint32_t max_batch;
	uint32_t max_context;
	uint64_t n_steps;
	uint64_t n_score_steps;
	struct model_seq_step *steps; /* [max_batch] */
	uint32_t *item;               /* [max_batch]: work item of each step entry */
	int32_t *ids_host;            /* [max_batch * ENGINE_MAX_IDS + MODEL_SCORE_MAX_IDS] */
	int32_t *ids_dev;             /* the same, on the backend */
	uint32_t *id_slot;            /* [vocab]: 1 + an id's index among a step's
				       * distinct ids while it is planned, else 0 */
	int32_t *uniq;                /* [MODEL_SCORE_MAX_IDS]: those distinct ids */
	bool score_full_head;
	uint32_t score_max_ids;       /* distinct ids a step scores from their rows */
	float *probs_dev;             /* [max_batch * ENGINE_MAX_IDS] */
	float *probs_host;
	int32_t *argmax_dev;          /* [max_batch] */
	int32_t *argmax_host;
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
	size_t n_ids;

	if (!p)
		p = &defaults;
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->m = m;
	e->max_step_tokens = p->max_step_tokens ? p->max_step_tokens : 512;
	e->max_batch = p->max_batch ? p->max_batch : 64;
	e->max_batch = HR_MIN(e->max_batch, e->max_step_tokens);
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
	e->scratch = model_scratch_new(m, e->pool, e->max_step_tokens, e->max_batch);
	if (!e->scratch)
		goto fail;
	model_scratch_set_graphs(e->scratch, !p->graphs_off);
	if (p->graph_max_tokens)
		model_scratch_set_graph_tokens(e->scratch, p->graph_max_tokens);
	{
		int r = model_scratch_warm(m, e->pool, e->scratch);

		if (r < 0) {
			errno = -r;
			goto fail;
		}
	}
	n_ids = (size_t)e->max_batch * ENGINE_MAX_IDS;
	e->score_full_head = p->score_full_head;
	/* Past half the vocabulary, gathering the rows costs about as much as
	 * reading them all in the whole LM head. */
	e->score_max_ids = HR_MIN(MODEL_SCORE_MAX_IDS, c->vocab_size / 2);
	e->steps = calloc(e->max_batch, sizeof(*e->steps));
	e->item = calloc(e->max_batch, sizeof(*e->item));
	e->id_slot = calloc(c->vocab_size, sizeof(*e->id_slot));
	e->uniq = malloc(MODEL_SCORE_MAX_IDS * sizeof(*e->uniq));
	e->ids_host = malloc((n_ids + MODEL_SCORE_MAX_IDS) * sizeof(int32_t));
	e->probs_host = malloc(n_ids * sizeof(float));
	e->argmax_host = malloc(e->max_batch * sizeof(int32_t));
	e->ids_dev = be->ops->alloc(be, (n_ids + MODEL_SCORE_MAX_IDS) * sizeof(int32_t));
	e->probs_dev = be->ops->alloc(be, n_ids * sizeof(float));
	e->argmax_dev = be->ops->alloc(be, e->max_batch * sizeof(int32_t));
	if (!e->steps || !e->item || !e->id_slot || !e->uniq || !e->ids_host || !e->probs_host ||
	    !e->argmax_host || !e->ids_dev || !e->probs_dev || !e->argmax_dev) {
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
	free(e->steps);
	free(e->item);
	free(e->id_slot);
	free(e->uniq);
	free(e->ids_host);
	free(e->probs_host);
	free(e->argmax_host);
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

uint64_t engine_n_score_steps(const struct engine *e)
{
	return e->n_score_steps;
}

void engine_graph_counts(const struct engine *e, struct model_graph_counts *ret)
{
	model_scratch_graph_counts(e->scratch, ret);
}

uint32_t engine_max_batch(const struct engine *e)
{
	return e->max_batch;
}

uint32_t engine_max_step_tokens(const struct engine *e)
{
	return e->max_step_tokens;
}

uint32_t engine_max_context(const struct engine *e)
{
	return e->max_context;
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

uint32_t engine_seq_pending(const struct engine_seq *s)
{
	return s->len - HR_MIN(s->bt.n_tokens, s->len);
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

int engine_seq_push(struct engine *e, struct engine_seq *s, const int32_t *tokens, uint32_t n)
{
	uint32_t vocab = e->m->cfg.vocab_size;
	int r;

	if (!tokens || !n)
		return -EINVAL;
	if (n > e->max_context || s->len > e->max_context - n)
		return -E2BIG;
	for (uint32_t i = 0; i < n; i++)
		if (tokens[i] < 0 || (uint32_t)tokens[i] >= vocab)
			return -EINVAL;
	r = history_reserve(s, s->len + n);
	if (r < 0)
		return r;
	memcpy(s->tokens + s->len, tokens, (size_t)n * sizeof(int32_t));
	s->len += n;
	return 0;
}

static bool wants_output(const struct engine_work *w)
{
	return w->ids || w->next_token || w->logits;
}

/* Check one item and add its chunk to the step; returns the chunk (0: none). */
static uint32_t plan_item(struct engine *e, struct engine_work *w, uint32_t budget)
{
	struct engine_seq *s = w->seq;
	uint32_t vocab = e->m->cfg.vocab_size, chunk;

	if (!s || !w->max_tokens || (w->ids && (!w->probs || !w->n_ids || w->n_ids > ENGINE_MAX_IDS))) {
		w->res = -EINVAL;
		return 0;
	}
	for (uint32_t i = 0; w->ids && i < w->n_ids; i++)
		if (w->ids[i] < 0 || (uint32_t)w->ids[i] >= vocab) {
			w->res = -EINVAL;
			return 0;
		}
	if (s->bt.n_tokens > s->len)
		kv_bt_truncate(e->pool, &s->bt, s->len);
	if (s->bt.n_tokens == s->len && wants_output(w)) {
		if (!s->len) {
			w->res = -ENODATA;
			return 0;
		}
		/* Outputs are not kept between steps: recompute the last position. */
		kv_bt_truncate(e->pool, &s->bt, s->len - 1);
	}
	chunk = HR_MIN(HR_MIN(s->len - s->bt.n_tokens, w->max_tokens), budget);
	if (!chunk) {
		w->res = s->len == s->bt.n_tokens ? 0 : -EAGAIN;
		return 0;
	}
	w->res = kv_bt_reserve(e->pool, &s->bt, s->bt.n_tokens + chunk);
	return w->res < 0 ? 0 : chunk;
}

/*
 * A step whose every output is probabilities of ids (SCORE) skips the LM head
 * over the vocabulary: its rows are scored against the rows of the step's
 * distinct ids alone (model_score_ids, model_step_score). Writes each output
 * row's ids as indices into those distinct ids to ids_host[0..), the distinct
 * ids after them, uploads both, takes the ids' rows and marks the rows
 * ids_only. Returns how many distinct ids (0: the step takes the full LM head:
 * an output other than probabilities, more distinct ids than score_max_ids,
 * or score_full_head) or -errno.
 */
static int plan_scores(struct engine *e, const struct engine_work *w, uint32_t k)
{
	uint32_t n_uniq = 0, n_ids = 0, j;
	bool over = false;
	int r;

	if (e->score_full_head)
		return 0;
	for (j = 0; j < k; j++) {
		const struct engine_work *x = &w[e->item[j]];

		if (e->steps[j].want_logits && (!x->ids || x->next_token || x->logits))
			return 0;
	}
	for (j = 0; j < k && !over; j++) {
		const struct engine_work *x = &w[e->item[j]];

		for (uint32_t i = 0; e->steps[j].want_logits && i < x->n_ids; i++) {
			uint32_t *slot = &e->id_slot[x->ids[i]];

			if (!*slot && n_uniq == e->score_max_ids) {
				over = true;
				break;
			}
			if (!*slot) {
				e->uniq[n_uniq] = x->ids[i];
				*slot = ++n_uniq;
			}
			e->ids_host[n_ids++] = (int32_t)*slot - 1;
		}
	}
	for (uint32_t i = 0; i < n_uniq; i++)
		e->id_slot[e->uniq[i]] = 0;
	if (over || !n_uniq)
		return 0;
	memcpy(e->ids_host + n_ids, e->uniq, n_uniq * sizeof(int32_t));
	r = e->m->be->ops->upload(e->m->be, e->ids_dev, e->ids_host,
				  (n_ids + n_uniq) * sizeof(int32_t));
	if (r < 0 || (r = model_score_ids(e->m, e->scratch, e->ids_dev + n_ids, n_uniq)) < 0)
		return r;
	for (j = 0; j < k; j++)
		e->steps[j].ids_only = e->steps[j].want_logits;
	return (int)n_uniq;
}

/* Probabilities of the output rows that want ids: the softmax over their ids
 * (ids_host / ids_dev, in row order) of their row of logits (stride apart,
 * ids below stride), consecutive rows with the same ids in one launch. */
static int step_probs(struct engine *e, const struct engine_work *w, uint32_t k,
		      const float *logits, uint32_t stride)
{
	struct kern_backend *be = e->m->be;
	uint32_t row = 0, off = 0, j = 0;
	int r;

	while (j < k) {
		const struct engine_work *x = &w[e->item[j]];
		uint32_t n = 1, jj;

		if (!e->steps[j].want_logits || !x->ids) {
			row += e->steps[j++].want_logits;
			continue;
		}
		for (jj = j + 1; jj < k; jj++) {
			const struct engine_work *y = &w[e->item[jj]];

			if (!e->steps[jj].want_logits)
				continue;
			if (!y->ids || y->n_ids != x->n_ids ||
			    memcmp(e->ids_host + off + (size_t)n * x->n_ids, e->ids_host + off,
				   x->n_ids * sizeof(int32_t)))
				break;
			n++;
		}
		r = be->ops->softmax_ids(be, e->probs_dev + off, logits + (size_t)row * stride,
					 e->ids_dev + off, n, x->n_ids, stride);
		if (r < 0)
			return r;
		off += n * x->n_ids;
		row += n;
		j = jj;
	}
	return 0;
}

/* Outputs of the rows that reached the end of their history; n_uniq: the
 * step's distinct ids when it skipped the LM head (plan_scores: its ids are
 * uploaded), else 0. */
static int step_outputs(struct engine *e, struct engine_work *w, uint32_t k, uint32_t n_uniq)
{
	struct kern_backend *be = e->m->be;
	uint32_t vocab = e->m->cfg.vocab_size, row = 0, n_ids = 0, n_rows = 0;
	bool any_argmax = false;
	float *scores;
	int r;

	for (uint32_t j = 0; j < k; j++) {
		struct engine_work *x = &w[e->item[j]];

		if (!e->steps[j].want_logits)
			continue;
		if (x->ids && !n_uniq)
			memcpy(e->ids_host + n_ids, x->ids, x->n_ids * sizeof(int32_t));
		n_ids += x->ids ? x->n_ids : 0;
		any_argmax |= x->next_token != NULL;
		n_rows++;
	}
	if (n_uniq) {
		if ((r = model_step_score(e->m, e->scratch, &scores)) < 0 ||
		    (r = step_probs(e, w, k, scores, n_uniq)) < 0)
			return r;
	} else {
		if (n_ids && ((r = be->ops->upload(be, e->ids_dev, e->ids_host,
						   n_ids * sizeof(int32_t))) < 0 ||
			      (r = step_probs(e, w, k, model_step_logits(e->scratch, 0), vocab)) < 0))
			return r;
		for (uint32_t j = 0; j < k; j++) {
			struct engine_work *x = &w[e->item[j]];
			const float *logits;

			if (!e->steps[j].want_logits)
				continue;
			logits = model_step_logits(e->scratch, row);
			if (x->next_token &&
			    (r = be->ops->argmax(be, e->argmax_dev + row, logits, 1, vocab)) < 0)
				return r;
			if (x->logits && (r = be->ops->download(be, x->logits, logits,
								 (size_t)vocab * sizeof(float))) < 0)
				return r;
			row++;
		}
	}
	if ((n_ids && (r = be->ops->download(be, e->probs_host, e->probs_dev,
					     n_ids * sizeof(float))) < 0) ||
	    (any_argmax && (r = be->ops->download(be, e->argmax_host, e->argmax_dev,
						 n_rows * sizeof(int32_t))) < 0))
		return r;
	row = n_ids = 0;
	for (uint32_t j = 0; j < k; j++) {
		struct engine_work *x = &w[e->item[j]];

		if (!e->steps[j].want_logits)
			continue;
		if (x->ids) {
			memcpy(x->probs, e->probs_host + n_ids, x->n_ids * sizeof(float));
			n_ids += x->n_ids;
		}
		if (x->next_token)
			*x->next_token = e->argmax_host[row];
		x->out_ready = true;
		row++;
	}
	return 0;
}

int engine_step(struct engine *e, struct engine_work *w, uint32_t n)
{
	uint32_t k = 0, budget = e->max_step_tokens;
	int r, n_uniq;

	if (!w || !n || n > e->max_batch)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		struct engine_work *x = &w[i];
		struct engine_seq *s = x->seq;
		uint32_t chunk;

		x->done = 0;
		x->out_ready = false;
		chunk = plan_item(e, x, budget);
		if (!chunk)
			continue;
		budget -= chunk;
		e->item[k] = i;
		e->steps[k++] = (struct model_seq_step){
			.bt = &s->bt,
			.n_past = s->bt.n_tokens,
			.n_new = chunk,
			.tokens = s->tokens + s->bt.n_tokens,
			.want_logits = s->bt.n_tokens + chunk == s->len && wants_output(x),
		};
	}
	if (!k)
		return 0;
	n_uniq = plan_scores(e, w, k);
	if (n_uniq < 0) {
		r = n_uniq;
	} else {
		r = model_forward(e->m, e->pool, e->scratch, e->steps, k);
		e->n_steps++;
		e->n_score_steps += n_uniq > 0;
	}
	if (r == 0)
		r = step_outputs(e, w, k, (uint32_t)n_uniq);
	for (uint32_t j = 0; j < k; j++) {
		struct engine_work *x = &w[e->item[j]];
		struct model_seq_step *st = &e->steps[j];

		if (r < 0) {
			/* Nothing of a failed step is kept: its pages go back. */
			kv_bt_truncate(e->pool, st->bt, st->n_past);
			x->res = r;
			x->out_ready = false;
		} else {
			st->bt->n_tokens = st->n_past + st->n_new;
			x->done = st->n_new;
		}
	}
	return r;
}

/* Step one sequence alone until its outputs (if any) are ready and nothing is
 * pending; the single-sequence calls below are built on this. */
static int run_alone(struct engine *e, struct engine_work *w)
{
	int r;

	w->max_tokens = e->max_step_tokens;
	do {
		r = engine_step(e, w, 1);
		if (r == 0)
			r = w->res;
		if (r < 0)
			return r;
	} while (engine_seq_pending(w->seq) || (wants_output(w) && !w->out_ready));
	return 0;
}

int engine_append(struct engine *e, struct engine_seq *s, const int32_t *tokens, uint32_t n)
{
	uint32_t old = s->len;
	int r;

	r = engine_seq_push(e, s, tokens, n);
	if (r < 0)
		return r;
	r = run_alone(e, &(struct engine_work){ .seq = s });
	if (r < 0)
		engine_truncate(e, s, old);
	return r;
}

int engine_logits(struct engine *e, struct engine_seq *s, float *out, uint32_t vocab)
{
	if (!out || vocab != e->m->cfg.vocab_size)
		return -EINVAL;
	return run_alone(e, &(struct engine_work){ .seq = s, .logits = out });
}

int engine_probs(struct engine *e, struct engine_seq *s, const int32_t *ids, uint32_t n,
		 float *out)
{
	if (!ids || !out || !n || n > ENGINE_MAX_IDS)
		return -EINVAL;
	return run_alone(e, &(struct engine_work){ .seq = s, .ids = ids, .n_ids = n, .probs = out });
}

int engine_generate(struct engine *e, struct engine_seq *s, uint32_t n, int32_t *out,
		    engine_token_cb cb, void *userdata, int want_logits)
{
	_cleanup_free_ float *logits = NULL;
	int r;

	if (!out && n)
		return -EINVAL;
	if (want_logits && cb) {
		logits = malloc((size_t)e->m->cfg.vocab_size * sizeof(float));
		if (!logits)
			return -ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++) {
		int32_t tok;

		r = run_alone(e, &(struct engine_work){ .seq = s, .next_token = &tok, .logits = logits });
		if (r < 0)
			return r;
		out[i] = tok;
		r = engine_seq_push(e, s, &tok, 1);
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
	kv_bt_truncate(e->pool, &s->bt, n);
	s->len = n;
	return 0;
}

const struct kv_block_table *engine_seq_kv(const struct engine_seq *s)
{
	return &s->bt;
}

void engine_seq_drop_kv(struct engine *e, struct engine_seq *s)
{
	kv_bt_release(e->pool, &s->bt);
}

int engine_seq_reserve_kv(struct engine *e, struct engine_seq *s, uint32_t n)
{
	if (n > s->len)
		return -EINVAL;
	kv_bt_truncate(e->pool, &s->bt, 0);
	return kv_bt_reserve(e->pool, &s->bt, n);
}

void engine_seq_kv_restored(struct engine *e, struct engine_seq *s, uint32_t n)
{
	(void)e;
	s->bt.n_tokens = HR_MIN(n, s->len);
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

/* SPDX-License-Identifier: MIT */
/*
 * Execution of validated descriptors on the reactor thread: session ops,
 * APPEND, SCORE, TRUNCATE, and GENERATE streamed one token per reactor turn.
 * Token ids are read in place from the client's arena (the engine copies them
 * into the session's private history and validates that copy); label ids,
 * which index the logits directly, are copied to private memory first.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "hearthd.h"
#include "hr_common.h"
#include "hr_log.h"
#include "shm_wait.h"

#define HD_MAX_LABELS 1024u

uint32_t hd_cq_room(struct hd_client *c)
{
	struct shm_ring_prod *p = &c->cq.r;
	uint32_t room = p->mask + 1 - (p->tail - p->head);
	int r;

	if (room)
		return room;
	r = shm_ring_prod_refresh(p);
	if (r < 0) {
		c->dead = true;
		return 0;
	}
	return (uint32_t)r;
}

void hd_post_cqe(struct hd_client *c, uint64_t user_data, int32_t res, uint32_t flags,
		 uint32_t out_len, uint32_t pos)
{
	uint32_t idx;
	struct shm_cqe *cqe;

	if (shm_cq_reserve(&c->cq, 1, &idx) != 1) {
		c->dead = true;
		return;
	}
	cqe = shm_cq_slot(&c->cq, idx);
	*cqe = (struct shm_cqe){ .user_data = user_data, .res = res, .flags = flags,
				 .out_len = out_len, .pos = pos };
}

const uint64_t hd_lat_bounds_ns[HD_LAT_BUCKETS] = {
	10000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
	10000000, 50000000, 250000000, 1000000000,
};

static void count(struct hd_daemon *d, unsigned op, int res, uint64_t t0)
{
	struct hd_op_stats *st = &d->stats.ops[op < SHM_OP__MAX ? op : 0];
	uint64_t dt = hr_now_ns() - t0;
	unsigned b = 0;

	while (b < HD_LAT_BUCKETS && dt > hd_lat_bounds_ns[b])
		b++;
	st->buckets[b]++;
	st->count++;
	st->errors += res < 0;
	st->total_ns += dt;
	if (dt > st->max_ns)
		st->max_ns = dt;
}

/* The session of a data op, checked against the client's open set. */
static int use_session(struct hd_daemon *d, struct hd_client *c, uint32_t handle,
		       struct hd_session **ret)
{
	struct hd_session *s;

	if (!hd_client_may_use(c, handle))
		return -EBADF;
	s = hd_session_get(d, handle);
	if (!s)
		return -EBADF;
	if (s->busy)
		return -EBUSY;
	s->last_used_ns = hr_now_ns();
	*ret = s;
	return 0;
}

static int do_append(struct hd_daemon *d, struct hd_client *c, struct hd_session *s,
		     uint32_t off, uint32_t len)
{
	int r;

	if (!len)
		return 0;
	r = engine_append(d->engine, s->seq, (const int32_t *)(c->arena + off), len / 4);
	if (r == 0)
		atomic_fetch_add_explicit(&d->stats.tokens, len / 4, memory_order_relaxed);
	return r < 0 ? r : (int)(len / 4);
}

static int do_score(struct hd_daemon *d, struct hd_client *c, struct hd_session *s,
		    const struct shm_sqe *q, uint32_t *ret_out_len)
{
	int32_t labels[HD_MAX_LABELS];
	uint32_t n = q->aux_len / 4;
	float *out = (float *)(c->arena + q->out_off);
	int r;

	if (!n || n > HD_MAX_LABELS)
		return -EINVAL;
	if (q->out_cap < q->aux_len)
		return -ENOBUFS;
	/* Check the labels before the append, so that a bad SCORE changes nothing. */
	memcpy(labels, c->arena + q->aux_off, q->aux_len);
	for (uint32_t i = 0; i < n; i++)
		if (labels[i] < 0 || (uint32_t)labels[i] >= d->model->cfg.vocab_size)
			return -EINVAL;
	r = do_append(d, c, s, q->in_off, q->in_len);
	if (r < 0)
		return r;
	r = engine_probs(d->engine, s->seq, labels, n, out);
	if (r < 0)
		return r;
	if (q->arg[0] & SHM_SCORE_F_LOGPROB)
		for (uint32_t i = 0; i < n; i++)
			out[i] = logf(out[i]);
	*ret_out_len = n * 4;
	return (int)n;
}

static int start_generate(struct hd_daemon *d, struct hd_client *c, struct hd_session *s,
			  const struct shm_sqe *q)
{
	struct hd_gen *g;
	int r;

	if (q->arg[1] || q->arg[2])
		return -EOPNOTSUPP; /* sampling (temperature, top-k) is not implemented: greedy only */
	if (!q->arg[0])
		return -EINVAL;
	if ((uint64_t)q->arg[0] * 4 > q->out_cap)
		return -ENOBUFS;
	if (c->n_gens >= c->lay.sq_entries)
		return -EBUSY;
	r = do_append(d, c, s, q->in_off, q->in_len);
	if (r < 0)
		return r;
	if (!engine_seq_len(s->seq))
		return -ENODATA;
	g = &c->gens[c->n_gens++];
	*g = (struct hd_gen){ .user_data = q->user_data, .session = s->handle,
			      .out_off = q->out_off, .max_tokens = q->arg[0],
			      .t_start = hr_now_ns(), .active = true };
	s->busy = true;
	return 0;
}

static bool is_session_op(unsigned op)
{
	return op == SHM_OP_APPEND || op == SHM_OP_SCORE || op == SHM_OP_TRUNCATE ||
	       op == SHM_OP_GENERATE;
}

/* KV pages the op may need for s. */
static uint32_t pages_needed(struct hd_daemon *d, struct hd_session *s, const struct shm_sqe *q)
{
	uint64_t toks = (uint64_t)engine_seq_len(s->seq) + q->in_len / 4 +
			(q->op == SHM_OP_GENERATE ? q->arg[0] : 0);
	return (uint32_t)HR_MIN((toks + d->cfg.page_tokens - 1) / d->cfg.page_tokens, UINT32_MAX);
}

void hd_ops_execute(struct hd_daemon *d, struct hd_client *c, const struct shm_sqe *q)
{
	uint64_t t0 = hr_now_ns();
	struct hd_session *s = NULL;
	uint32_t out_len = 0, pos = 0;
	int r;

	r = shm_sqe_validate(q, c->lay.arena_size);
	if (r < 0) {
		/* Counted apart: the op of a malformed descriptor means nothing. */
		atomic_fetch_add_explicit(&d->stats.bad_descriptors, 1, memory_order_relaxed);
		hd_post_cqe(c, q->user_data, r, 0, 0, 0);
		return;
	}
	if (is_session_op(q->op)) {
		r = use_session(d, c, q->session, &s);
		if (r == 0 && d->tiering && (s->n_deferred || hd_tier_ready(d, s) == -EAGAIN)) {
			/* Paged out (or behind requests that are): wait for its own pages. */
			r = hd_session_defer(s, c->id, q);
			if (r == 0)
				return;
		}
		if (r < 0)
			goto done;
	}
	switch (q->op) {
	case SHM_OP_NOP:
		r = 0;
		break;
	case SHM_OP_SESSION_OPEN:
		r = hd_session_open(d, c, (const char *)c->arena + q->aux_off, q->aux_len,
				    q->arg[0] & SHM_OPEN_F_CREATE, q->arg[0] & SHM_OPEN_F_EXCL, &s);
		if (r >= 0)
			r = (int)s->handle;
		break;
	case SHM_OP_SESSION_CLOSE:
		r = hd_session_close(d, c, q->session, q->arg[0] & SHM_CLOSE_F_DROP);
		break;
	case SHM_OP_APPEND:
		r = q->in_len ? do_append(d, c, s, q->in_off, q->in_len) : -EINVAL;
		break;
	case SHM_OP_SCORE:
		r = do_score(d, c, s, q, &out_len);
		break;
	case SHM_OP_TRUNCATE:
		r = engine_truncate(d->engine, s->seq, q->arg[0]);
		if (r == 0)
			r = (int)q->arg[0];
		break;
	case SHM_OP_GENERATE:
		r = start_generate(d, c, s, q);
		if (r == 0)
			return; /* completions follow from hd_ops_generate_step(); counted when done */
		break;
	default:
		r = -EOPNOTSUPP;
		break;
	}
	/* KV exhausted: the engine kept nothing, so the op can wait for evictions. */
	if (r == -ENOMEM && s) {
		uint32_t need = pages_needed(d, s, q);

		if (hd_tier_make_room(d, need) && hd_session_defer(s, c->id, q) == 0)
			return;
		hr_warn("client %u: %s on session %#x: KV cache full (%u of %u pages free, %u needed) "
			"and nothing can be paged out", c->id, shm_op_name(q->op), s->handle,
			kv_pool_n_free(engine_pool(d->engine)), kv_pool_n_pages(engine_pool(d->engine)),
			need);
	}
done:
	if (s)
		pos = engine_seq_len(s->seq);
	count(d, q->op, r, t0);
	hd_post_cqe(c, q->user_data, r, 0, out_len, pos);
}

static void gen_finish(struct hd_daemon *d, struct hd_client *c, struct hd_gen *g, int res)
{
	struct hd_session *s = hd_session_get(d, g->session);
	uint32_t pos = 0;

	if (s) {
		s->busy = false;
		pos = engine_seq_len(s->seq);
	}
	count(d, SHM_OP_GENERATE, res, g->t_start);
	hd_post_cqe(c, g->user_data, res < 0 ? res : (int32_t)g->produced, 0, g->produced * 4, pos);
	g->active = false;
}

uint32_t hd_ops_generate_step(struct hd_daemon *d, struct hd_client *c)
{
	uint32_t progress = 0, j = 0;
	int32_t eos = d->model->cfg.eos_token_id;

	for (uint32_t i = 0; i < c->n_gens; i++) {
		struct hd_gen *g = &c->gens[i];
		struct hd_session *s = hd_session_get(d, g->session);
		int32_t tok;
		int r;

		/* One CQ slot per turn: a token, or the final completion. The client
		 * wakes us when it frees a slot of a full CQ (hearth_cqe_seen). */
		if (g->active && hd_cq_room(c) >= 1) {
			progress++;
			if (g->finishing) {
				gen_finish(d, c, g, 0);
			} else if (!s) {
				gen_finish(d, c, g, -EBADF);
			} else {
				r = engine_generate(d->engine, s->seq, 1, &tok, NULL, NULL, 0);
				if (r < 0) {
					gen_finish(d, c, g, r);
				} else {
					int32_t *out = (int32_t *)(c->arena + g->out_off);
					s->last_used_ns = hr_now_ns();
					out[g->produced++] = tok;
					atomic_fetch_add_explicit(&d->stats.tokens, 1,
								  memory_order_relaxed);
					hd_post_cqe(c, g->user_data, 1, SHM_CQE_F_MORE,
						    g->produced * 4, engine_seq_len(s->seq));
					if (g->produced == g->max_tokens || tok == eos) {
						g->finishing = true;
						if (hd_cq_room(c) >= 1)
							gen_finish(d, c, g, 0);
					}
				}
			}
		}
		if (g->active)
			c->gens[j++] = *g;
	}
	c->n_gens = j;
	return progress;
}

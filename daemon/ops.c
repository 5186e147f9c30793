/* SPDX-License-Identifier: MIT */
/*
 * Execution of descriptors on the reactor thread: validation, the session
 * ops that complete at once (NOP, SESSION_OPEN, CANCEL, and TRUNCATE /
 * SESSION_CLOSE on an idle session), deferral while a session is paged in,
 * and admission of the compute ops into the scheduler (sched.c). Every
 * descriptor taken from the SQ keeps one CQ slot until its last completion.
 */
#include <errno.h>
#include <string.h>

#include "hearthd.h"
#include "hr_common.h"
#include "hr_log.h"
#include "shm_wait.h"

uint32_t hd_cq_room(struct hd_client *c)
{
	struct shm_ring_prod *p = &c->cq.r;
	uint32_t room = p->mask + 1 - (p->tail - p->head);
	int r;

	/* The cached head is re-read only when the slots it shows are all kept. */
	if (room > c->n_outstanding)
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

	if (!(flags & SHM_CQE_F_MORE) && c->n_outstanding)
		c->n_outstanding--;
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

static void count_op(struct hd_model *hm, unsigned op, int res, uint64_t t0)
{
	struct hd_op_stats *st = &hm->stats.ops[op < SHM_OP__MAX ? op : 0];
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

void hd_complete(struct hd_model *hm, struct hd_client *c, const struct shm_sqe *q, int res,
		 uint64_t t0, uint32_t out_len, uint32_t pos)
{
	count_op(hm, q->op, res, t0);
	hd_post_cqe(c, q->user_data, res, 0, out_len, pos);
}

/* The session of a data op, checked against the client's open set. */
static int use_session(struct hd_model *hm, struct hd_client *c, uint32_t handle,
		       struct hd_session **ret)
{
	struct hd_session *s;

	if (!hd_client_may_use(c, handle))
		return -EBADF;
	s = hd_session_get(hm, handle);
	if (!s)
		return -EBADF;
	s->last_used_ns = hr_now_ns();
	*ret = s;
	return 0;
}

static bool is_session_op(unsigned op)
{
	return op == SHM_OP_APPEND || op == SHM_OP_SCORE || op == SHM_OP_TRUNCATE ||
	       op == SHM_OP_GENERATE;
}

int hd_ops_run_simple(struct hd_model *hm, struct hd_client *c, const struct shm_sqe *q)
{
	struct hd_session *s;
	int r;

	if (q->op == SHM_OP_SESSION_CLOSE)
		return hd_session_close(hm, c, q->session, q->arg[0] & SHM_CLOSE_F_DROP);
	r = use_session(hm, c, q->session, &s);
	if (r < 0)
		return r;
	r = engine_truncate(hm->engine, s->seq, q->arg[0]);
	return r < 0 ? r : (int)q->arg[0];
}

void hd_ops_execute(struct hd_model *hm, struct hd_client *c, const struct shm_sqe *q)
{
	uint64_t t0 = hr_now_ns();
	struct hd_session *s = NULL;
	int r;

	r = shm_sqe_validate(q, c->lay.arena_size);
	if (r < 0) {
		/* Counted apart: the op of a malformed descriptor means nothing. */
		atomic_fetch_add_explicit(&hm->stats.bad_descriptors, 1, memory_order_relaxed);
		hd_post_cqe(c, q->user_data, r, 0, 0, 0);
		return;
	}
	if (is_session_op(q->op)) {
		r = use_session(hm, c, q->session, &s);
		if (r == 0 && hm->tiering && (s->n_deferred || hd_tier_ready(hm, s) == -EAGAIN)) {
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
		r = hd_session_open(hm, c, (const char *)c->arena + q->aux_off, q->aux_len,
				    q->arg[0] & SHM_OPEN_F_CREATE, q->arg[0] & SHM_OPEN_F_EXCL, &s);
		if (r >= 0) {
			if (r == 1)
				s->bulk = q->arg[0] & SHM_OPEN_F_BULK;
			r = (int)s->handle;
		}
		break;
	case SHM_OP_CANCEL:
		r = hd_sched_cancel(hm, c, (uint64_t)q->arg[1] << 32 | q->arg[0]);
		break;
	case SHM_OP_SESSION_CLOSE:
	case SHM_OP_TRUNCATE:
		/* Behind queued requests of the session, in order; else now. */
		s = hd_client_may_use(c, q->session) ? hd_session_get(hm, q->session) : NULL;
		if (s && hd_session_busy(s) && hd_sched_submit(hm, c, s, q) == 0)
			return;
		r = hd_ops_run_simple(hm, c, q);
		if (q->op == SHM_OP_SESSION_CLOSE)
			s = NULL;
		break;
	case SHM_OP_APPEND:
	case SHM_OP_SCORE:
	case SHM_OP_GENERATE:
		r = hd_sched_submit(hm, c, s, q);
		if (r == 0)
			return; /* completed by the scheduler */
		break;
	default:
		r = -EOPNOTSUPP;
		break;
	}
done:
	hd_complete(hm, c, q, r, t0, 0, s ? engine_seq_len(s->seq) : 0);
}

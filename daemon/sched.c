/* SPDX-License-Identifier: MIT */
/*
 * The scheduler: continuous batching across sessions and clients. APPEND,
 * SCORE and GENERATE become jobs queued on their session in arrival order
 * (TRUNCATE and SESSION_CLOSE join the queue when it is not empty, so a
 * pipelined what-if stays ordered). Every reactor turn forms one forward step
 * from the head job of every session: interactive jobs first, shortest
 * remaining work first, each taking a chunk of its pending tokens under the
 * step's token budget; bulk jobs fill what is left and always get a share
 * (bulk_share_pct) when they wait, so neither class starves. A long prefill is
 * cut into chunks, so interactive work waits behind it for one step at most.
 *
 * A burst (a market tick fanned out to many sessions, several clients' events
 * due at one instant) reaches the rings over tens of microseconds. Without
 * batch_wait_us the first requests start a step and the stragglers wait that
 * whole step before their own; with it, a step made only of requests that
 * arrived in the last batch_wait_us waits while more keep coming: until none
 * has come for half of it, or the oldest has waited all of it; once held
 * steps have shown the bursts' size, until that many have come or the oldest
 * has waited all of it. Never while the engine is near saturation.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hearthd.h"
#include "hr_common.h"
#include "hr_log.h"

#define HOLD_SPIN_NS 500000ull /* the last of a burst hold is spun, not slept (hold_for_burst) */
#define HOLD_MAX_BUSY_PPM 900000u /* no burst hold while steps take more than 90% of the time */
#define HD_JOB_INLINE 40u /* token + label ids kept in the job itself */
#define HD_MAX_LABELS 1024u

struct hd_job {
	struct hd_job *next;      /* the session's queue, or the free list */
	struct hd_client *c;
	struct hd_session *s;
	struct shm_sqe q;         /* the validated private copy */
	uint64_t t_submit;
	uint32_t n_tokens, n_labels;
	int32_t *ids;             /* n_tokens token ids, then n_labels label ids */
	uint32_t old_len;         /* session length before the job (roll-back) */
	uint32_t step_idx;        /* its item in the step being formed, or UINT32_MAX */
	uint32_t produced;        /* GENERATE: tokens streamed */
	uint32_t skipped;         /* steps it could have joined and was left out of */
	int32_t next_tok;
	bool bulk, started, cancelled, wait_kv;
	int32_t inl[HD_JOB_INLINE];
};

int hd_sched_init(struct hd_model *hm)
{
	struct hd_sched *q = &hm->sched;
	uint32_t b = engine_max_batch(hm->engine);

	memset(q, 0, sizeof(*q));
	q->work = calloc(b, sizeof(*q->work));
	q->step_jobs = calloc(b, sizeof(*q->step_jobs));
	if (!q->work || !q->step_jobs)
		return -ENOMEM;
	return 0;
}

static void job_free(struct hd_sched *q, struct hd_job *j)
{
	if (j->ids != j->inl)
		free(j->ids);
	j->next = q->free_jobs;
	q->free_jobs = j;
}

void hd_sched_fini(struct hd_model *hm)
{
	struct hd_sched *q = &hm->sched;

	for (struct hd_job *j = q->free_jobs, *n; j; j = n) {
		n = j->next;
		free(j);
	}
	free(q->active);
	free(q->cand);
	free(q->work);
	free(q->step_jobs);
	memset(q, 0, sizeof(*q));
}

/* ---- session queues and the active list ---------------------------------------- */

static int active_add(struct hd_sched *q, struct hd_session *s)
{
	if (q->n_active == q->cap_active) {
		uint32_t cap = q->cap_active ? q->cap_active * 2 : 64;
		struct hd_session **a = realloc(q->active, cap * sizeof(*a));
		struct hd_job **c;

		if (!a)
			return -ENOMEM;
		q->active = a;
		c = realloc(q->cand, cap * sizeof(*c));
		if (!c)
			return -ENOMEM;
		q->cand = c;
		q->cap_active = cap;
	}
	s->active_idx = q->n_active;
	q->active[q->n_active++] = s;
	return 0;
}

static void active_remove(struct hd_sched *q, struct hd_session *s)
{
	uint32_t i = s->active_idx;

	q->active[i] = q->active[--q->n_active];
	q->active[i]->active_idx = i;
}

static void unlink_job(struct hd_sched *q, struct hd_job *j)
{
	struct hd_session *s = j->s;
	struct hd_job **pp = &s->jobs, *prev = NULL;

	while (*pp != j) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	*pp = j->next;
	if (s->jobs_tail == j)
		s->jobs_tail = prev;
	s->n_jobs--;
	q->st.queued--;
	q->n_deadlines -= j->q.deadline_ns != 0;
	if (!s->jobs)
		active_remove(q, s);
}

/* Post j's last completion, count it and free it. */
static void job_finish(struct hd_model *hm, struct hd_job *j, int res, uint32_t out_len)
{
	struct hd_client *c = j->c;

	unlink_job(&hm->sched, j);
	hd_complete(hm, c, &j->q, res, j->t_submit, out_len, engine_seq_len(j->s->seq));
	job_free(&hm->sched, j);
}

/* A started job that fails or is cancelled leaves the session as before it
 * (a GENERATE keeps the tokens it streamed). */
static void job_rollback(struct hd_model *hm, struct hd_job *j)
{
	if (!j->started || (j->q.op == SHM_OP_GENERATE && j->produced))
		return;
	if (engine_seq_len(j->s->seq) > j->old_len)
		engine_truncate(hm->engine, j->s->seq, j->old_len);
}

static void job_fail(struct hd_model *hm, struct hd_job *j, int err)
{
	job_rollback(hm, j);
	job_finish(hm, j, err, j->q.op == SHM_OP_GENERATE ? j->produced * 4 : 0);
}

/* ---- admission -------------------------------------------------------------------- */

int hd_sched_submit(struct hd_model *hm, struct hd_client *c, struct hd_session *s,
		    const struct shm_sqe *sq)
{
	struct hd_sched *q = &hm->sched;
	uint32_t n_tok = sq->in_len / 4, n_lab = 0, vocab = hm->model->cfg.vocab_size;
	uint64_t now = hr_now_ns();
	struct hd_job *j;
	int r;

	if (sq->deadline_ns && now >= sq->deadline_ns) {
		q->st.timeouts++;
		return -ETIMEDOUT;
	}
	switch (sq->op) {
	case SHM_OP_SCORE:
		n_lab = sq->aux_len / 4;
		if (!n_lab || n_lab > HD_MAX_LABELS)
			return -EINVAL;
		break;
	case SHM_OP_GENERATE:
		if (sq->arg[1] || sq->arg[2])
			return -EOPNOTSUPP; /* sampling (temperature, top-k): greedy only */
		break;
	case SHM_OP_APPEND:
		if (!n_tok)
			return -EINVAL;
		break;
	default:
		break;
	}
	/* Over-long input: refused before it costs anything (the queue ahead
	 * may still make it too long: then it fails with -E2BIG when it starts). */
	if (n_tok > engine_max_context(hm->engine) ||
	    engine_seq_len(s->seq) > engine_max_context(hm->engine) - n_tok)
		return -E2BIG;
	j = q->free_jobs;
	if (j)
		q->free_jobs = j->next;
	else if (!(j = malloc(sizeof(*j))))
		return -ENOMEM;
	*j = (struct hd_job){ .c = c, .s = s, .q = *sq, .t_submit = now, .n_tokens = n_tok,
			      .n_labels = n_lab };
	j->ids = n_tok + n_lab <= HD_JOB_INLINE ? j->inl : malloc((n_tok + n_lab) * sizeof(int32_t));
	if (!j->ids) {
		j->ids = j->inl;
		job_free(q, j);
		return -ENOMEM;
	}
	/* One copy of the client's ids: later writes to its arena change nothing. */
	memcpy(j->ids, c->arena + sq->in_off, (size_t)n_tok * 4);
	memcpy(j->ids + n_tok, c->arena + sq->aux_off, (size_t)n_lab * 4);
	for (uint32_t i = 0; i < n_tok + n_lab; i++)
		if (j->ids[i] < 0 || (uint32_t)j->ids[i] >= vocab) {
			job_free(q, j);
			return -EINVAL;
		}
	j->bulk = sq->flags & SHM_SQE_F_BULK ? true : sq->flags & SHM_SQE_F_LATENCY ? false : s->bulk;
	if (!s->jobs && (r = active_add(q, s)) < 0) {
		job_free(q, j);
		return r;
	}
	if (s->jobs_tail)
		s->jobs_tail->next = j;
	else
		s->jobs = j;
	s->jobs_tail = j;
	s->n_jobs++;
	q->st.queued++;
	q->n_deadlines += sq->deadline_ns != 0;
	return 0;
}

/* ---- forming a step ------------------------------------------------------------------ */

/* Positions j still has to compute (an estimate before it starts). */
static uint32_t job_remaining(const struct hd_job *j)
{
	uint32_t p = engine_seq_pending(j->s->seq) + (j->started ? 0 : j->n_tokens);

	/* An output with nothing pending recomputes the last position. */
	return p ? p : j->q.op != SHM_OP_APPEND;
}

/* Start j: its tokens join the session's history. 0, or -errno (finished). */
static int job_start(struct hd_model *hm, struct hd_job *j)
{
	struct engine_seq *seq = j->s->seq;
	int r = 0;

	if (!hd_client_may_use(j->c, j->s->handle))
		r = -EBADF; /* closed by an earlier request of the queue */
	else if (j->n_tokens)
		r = engine_seq_push(hm->engine, seq, j->ids, j->n_tokens);
	if (r == 0 && !engine_seq_len(seq))
		r = -ENODATA;
	if (r < 0) {
		job_finish(hm, j, r, 0);
		return r;
	}
	j->old_len = engine_seq_len(seq) - j->n_tokens;
	j->started = true;
	/* Tokens processed: the history's growth (appended and generated). */
	atomic_fetch_add_explicit(&hm->stats.tokens, j->n_tokens, memory_order_relaxed);
	return 0;
}

/* Head jobs that need no forward pass (TRUNCATE, CLOSE) and cancellations
 * are finished here (missed deadlines already were, by expire()); returns
 * the head left to schedule. */
static struct hd_job *settle_head(struct hd_model *hm, struct hd_session *s, uint32_t *progress)
{
	uint32_t handle = s->handle;
	struct hd_job *j;

	while (hd_session_get(hm, handle) == s && (j = s->jobs)) {
		if (j->cancelled) {
			hm->sched.st.cancels++;
			job_fail(hm, j, -ECANCELED);
		} else if (j->q.op == SHM_OP_TRUNCATE || j->q.op == SHM_OP_SESSION_CLOSE) {
			struct hd_client *c = j->c;
			struct shm_sqe sq = j->q;
			uint64_t t0 = j->t_submit;
			int r;

			/* Off the queue first: a CLOSE may destroy the session. */
			unlink_job(&hm->sched, j);
			job_free(&hm->sched, j);
			r = hd_ops_run_simple(hm, c, &sq);
			hd_complete(hm, c, &sq, r, t0, 0,
				    hd_session_get(hm, handle) ? engine_seq_len(s->seq) : 0);
		} else {
			return j;
		}
		(*progress)++;
	}
	return NULL;
}

/* Jobs anywhere in a queue whose deadline passed before they started. */
static uint32_t expire(struct hd_model *hm, uint64_t now)
{
	struct hd_sched *q = &hm->sched;
	uint32_t n = 0;

	for (uint32_t i = q->n_active; i-- > 0;) {
		struct hd_job *j, *next;

		if (i >= q->n_active)
			continue;
		for (j = q->active[i]->jobs; j; j = next) {
			next = j->next;
			if (!j->started && j->q.deadline_ns && now >= j->q.deadline_ns) {
				q->st.timeouts++;
				job_finish(hm, j, -ETIMEDOUT, 0);
				n++;
			}
		}
	}
	return n;
}

uint64_t hd_sched_next_deadline(const struct hd_model *hm)
{
	const struct hd_sched *q = &hm->sched;
	/* a long hold: wake when HOLD_SPIN_NS is left of it */
	uint64_t t = q->hold_since && q->hold_until > HOLD_SPIN_NS ? q->hold_until - HOLD_SPIN_NS : 0;

	if (!q->n_deadlines)
		return t;
	for (uint32_t i = 0; i < q->n_active; i++)
		for (const struct hd_job *j = q->active[i]->jobs; j; j = j->next)
			if (!j->started && j->q.deadline_ns && (!t || j->q.deadline_ns < t))
				t = j->q.deadline_ns;
	return t;
}

static int cmp_cand(const void *a, const void *b)
{
	const struct hd_job *x = *(struct hd_job *const *)a, *y = *(struct hd_job *const *)b;
	uint32_t rx, ry;

	if (x->bulk != y->bulk)
		return x->bulk ? 1 : -1;
	rx = job_remaining(x);
	ry = job_remaining(y);
	if (rx != ry)
		return rx < ry ? -1 : 1;
	return x->t_submit < y->t_submit ? -1 : x->t_submit > y->t_submit;
}

/* A burst hold is over: its time counted. */
static void hold_end(struct hd_sched *q, uint64_t now)
{
	if (q->hold_since) {
		q->st.burst_hold_ns += now - q->hold_since;
		q->gap_hold_ns += now - q->hold_since;
		q->step_held = true;
		q->hold_since = 0;
	}
}

/* batch_wait_us: whether the step of these candidates waits for more of a
 * burst. Only while every candidate is fresh, so a loaded engine (whose
 * queued requests have waited a step already) does not hold, and only while
 * steps take less than HOLD_MAX_BUSY_PPM of the time not held: near
 * saturation a hold's idle time is capacity lost, and arrivals that keep
 * finding the engine idle just long enough to start a hold would otherwise
 * eat it (on an H100, a 1B model 99% busy at 64 sessions went from 4 to 19 ms
 * p99 with 300 us holds). Once held steps have shown the bursts' size (the
 * largest of the last four held steps, 2 or more), a hold waits for that many
 * requests or the whole wait, not for a gap of half of it: on an H100, 9-14
 * of 400 bursts of 8 of an 8B load split at such a gap, and their stragglers
 * paid a second step. A hold with
 * more than HOLD_SPIN_NS to go lets the reactor sleep until that much is left
 * or a submission comes (hd_sched_ready, hd_sched_next_deadline), so it does
 * not spin on a core the clients may need; the rest it spins, since a wake-up
 * from a timed sleep can come hundreds of microseconds late. */
static bool hold_for_burst(struct hd_model *hm, uint32_t n_cand, uint64_t now)
{
	struct hd_sched *q = &hm->sched;
	const uint64_t wait = (uint64_t)hm->cfg.batch_wait_us * 1000;
	uint64_t oldest = UINT64_MAX, newest = 0;
	uint32_t expect = 0;
	bool known;

	for (uint32_t i = 0; i < n_cand; i++) {
		oldest = HR_MIN(oldest, q->cand[i]->t_submit);
		newest = HR_MAX(newest, q->cand[i]->t_submit);
	}
	for (unsigned i = 0; i < HR_ARRAY_SIZE(q->held_n); i++)
		expect = HR_MAX(expect, q->held_n[i]);
	known = expect >= 2;
	/* Bursts of a known size (the largest of the last held steps) are
	 * waited for whole, however far apart their requests come, up to the
	 * wait; otherwise the hold ends when none has come for half of it. */
	if (n_cand && now - oldest < wait &&
	    (known ? n_cand < expect : now - newest < wait / 2)) {
		if (!q->hold_since && q->st.busy_ppm >= HOLD_MAX_BUSY_PPM)
			return false;
		q->hold_until = known ? oldest + wait : HR_MIN(oldest + wait, newest + wait / 2);
		if (!q->hold_since) {
			q->hold_since = now;
			q->st.burst_holds++;
		}
		return true;
	}
	hold_end(q, now);
	return false;
}

/* Can j use a step now? A GENERATE posts a token: it needs a CQ slot beyond
 * the ones kept for every outstanding descriptor of its client. */
static bool job_can_run(struct hd_model *hm, struct hd_job *j)
{
	if (j->c->dead)
		return false; /* detached soon: its jobs go then */
	if (j->wait_kv && hd_tier_busy(hm))
		return false; /* pages are being written out for it */
	if (j->q.op == SHM_OP_GENERATE)
		return hd_cq_room(j->c) > j->c->n_outstanding;
	return true;
}

/* Add j to the step with a chunk of at most cap tokens; returns the chunk. */
static uint32_t take(struct hd_model *hm, struct hd_job *j, uint32_t cap, uint32_t *n)
{
	struct engine_work *w = &hm->sched.work[*n];
	uint32_t want = job_remaining(j), chunk = HR_MIN(want, cap);

	if (!chunk)
		return 0;
	if (!j->started && job_start(hm, j) < 0)
		return 0;
	*w = (struct engine_work){ .seq = j->s->seq, .max_tokens = chunk };
	if (j->q.op == SHM_OP_SCORE) {
		w->ids = j->ids + j->n_tokens;
		w->n_ids = j->n_labels;
		w->probs = (float *)(j->c->arena + j->q.out_off);
	} else if (j->q.op == SHM_OP_GENERATE) {
		w->next_token = &j->next_tok;
	}
	j->step_idx = *n;
	hm->sched.step_jobs[(*n)++] = j;
	return chunk;
}

static void record_step(struct hd_sched *q, uint32_t n, uint32_t tokens, uint64_t ns)
{
	uint64_t end = hr_now_ns();
	unsigned b = 0;

	/* The engine's busy share: this step's time over the time since the last
	 * step ended, less the time held for bursts (what the share would be
	 * without holds), averaged over about 32 steps (over 8, the 8B's share
	 * crossed the bound at every pair of back-to-back steps and half its
	 * useful holds were lost). */
	if (q->last_step_end && end > q->last_step_end + q->gap_hold_ns) {
		uint64_t span = end - q->last_step_end - q->gap_hold_ns;
		uint64_t share = HR_MIN(ns * 1000000ull / span, 1000000ull);

		q->st.busy_ppm = (uint32_t)(((uint64_t)q->st.busy_ppm * 31 + share) / 32);
	}
	q->last_step_end = end;
	q->gap_hold_ns = 0;
	if (q->step_held) {
		q->held_n[q->held_i++ % HR_ARRAY_SIZE(q->held_n)] = (uint8_t)HR_MIN(n, 255u);
		q->step_held = false;
	}

	while (b < HD_BATCH_BUCKETS - 1 && n > (1u << b))
		b++;
	q->st.batch[b]++;
	/* Durations: bucket b holds steps of at most 0.25 ms x 2^b. */
	for (b = 0; b < HD_STEP_BUCKETS - 1 && ns > (250000ull << b); b++)
		;
	q->st.step_time[b]++;
	q->st.steps++;
	q->st.step_tokens += tokens;
	q->st.step_ns += ns;
}

/* After the step: complete what finished, stream GENERATE tokens. */
static uint32_t step_results(struct hd_model *hm, uint32_t n)
{
	struct hd_sched *q = &hm->sched;
	uint32_t progress = 0;

	for (uint32_t i = 0; i < n; i++) {
		struct hd_job *j = q->step_jobs[i];
		struct engine_work *w = &q->work[i];
		struct engine_seq *seq = j->s->seq;

		if (w->res == -ENOMEM) {
			uint32_t need = (engine_seq_len(seq) + hm->cfg.page_tokens - 1) / hm->cfg.page_tokens;

			if (!j->wait_kv || !hd_tier_busy(hm)) {
				if (hd_tier_make_room(hm, need)) {
					q->st.kv_waits += !j->wait_kv;
					j->wait_kv = true;
					continue;
				}
				hr_warn("client %u: %s on session %#x: KV cache full (%u of %u pages free, "
					"%u needed) and nothing can be paged out", j->c->id,
					shm_op_name(j->q.op), j->s->handle,
					kv_pool_n_free(engine_pool(hm->engine)),
					kv_pool_n_pages(engine_pool(hm->engine)), need);
				job_fail(hm, j, -ENOMEM);
				progress++;
			}
			continue;
		}
		j->wait_kv = false;
		progress++;
		if (w->res < 0) {
			job_fail(hm, j, w->res);
			continue;
		}
		switch (j->q.op) {
		case SHM_OP_APPEND:
			if (!engine_seq_pending(seq))
				job_finish(hm, j, (int)j->n_tokens, 0);
			break;
		case SHM_OP_SCORE:
			if (w->out_ready) {
				float *out = (float *)(j->c->arena + j->q.out_off);
				if (j->q.arg[0] & SHM_SCORE_F_LOGPROB)
					for (uint32_t k = 0; k < j->n_labels; k++)
						out[k] = logf(out[k]);
				job_finish(hm, j, (int)j->n_labels, j->n_labels * 4);
			}
			break;
		case SHM_OP_GENERATE:
			if (w->out_ready) {
				int32_t tok = j->next_tok;
				int r = engine_seq_push(hm->engine, seq, &tok, 1);

				if (r < 0) {
					job_fail(hm, j, r);
					break;
				}
				((int32_t *)(j->c->arena + j->q.out_off))[j->produced++] = tok;
				atomic_fetch_add_explicit(&hm->stats.tokens, 1, memory_order_relaxed);
				hd_post_cqe(j->c, j->q.user_data, 1, SHM_CQE_F_MORE, j->produced * 4,
					    engine_seq_len(seq));
				if (j->produced == j->q.arg[0] || tok == hm->model->cfg.eos_token_id)
					job_finish(hm, j, (int)j->produced, j->produced * 4);
			}
			break;
		}
	}
	return progress;
}

uint32_t hd_sched_turn(struct hd_model *hm)
{
	struct hd_sched *q = &hm->sched;
	uint32_t budget = engine_max_step_tokens(hm->engine), seats = engine_max_batch(hm->engine);
	uint32_t n_cand = 0, n_bulk = 0, n = 0, used = 0, reserve = 0, progress = 0;
	uint64_t now, t0;
	int r;

	if (!q->n_active) {
		/* Every held request went (cancelled, its client gone): no hold. */
		if (q->hold_since)
			hold_end(q, hr_now_ns());
		q->step_held = false; /* no step of it */
		return 0;
	}
	now = hr_now_ns();
	if (q->n_deadlines)
		progress += expire(hm, now);
	/* Settling may remove sessions from the active list: walk it backwards. */
	for (uint32_t i = q->n_active; i-- > 0;) {
		struct hd_job *j;

		if (i >= q->n_active)
			continue;
		j = settle_head(hm, q->active[i], &progress);
		if (j && job_can_run(hm, j)) {
			q->cand[n_cand++] = j;
			n_bulk += j->bulk;
		}
	}
	/* (With no candidate left, a hold in progress ends here.) */
	if ((hm->cfg.batch_wait_us && hold_for_burst(hm, n_cand, now)) || !n_cand)
		return progress;
	qsort(q->cand, n_cand, sizeof(*q->cand), cmp_cand);
	/* Bulk work always gets a share of the tokens (and a seat) when it waits,
	 * never more than it can use. */
	if (n_bulk && n_bulk < n_cand) {
		uint32_t bulk_want = 0;

		for (uint32_t i = n_cand - n_bulk; i < n_cand && bulk_want < budget; i++)
			bulk_want += HR_MIN(job_remaining(q->cand[i]), budget);
		reserve = HR_MIN(HR_MAX(1u, budget * hm->cfg.bulk_share_pct / 100), bulk_want);
		if (budget > 1) /* interactive work keeps a token (bulk_share_pct = 100) */
			reserve = HR_MIN(reserve, budget - 1);
	}
	for (uint32_t i = 0; i < n_cand; i++)
		q->cand[i]->step_idx = UINT32_MAX;
	for (uint32_t i = 0; i < n_cand - n_bulk && n < seats - (n_bulk != 0 && n_bulk < n_cand); i++)
		used += take(hm, q->cand[i], budget - reserve - used, &n);
	for (uint32_t i = n_cand - n_bulk; i < n_cand && n < seats; i++)
		used += take(hm, q->cand[i], budget - used, &n);
	/* Interactive jobs cut short (or left out) by the reserve get what bulk left. */
	for (uint32_t i = 0; i < n_cand - n_bulk && used < budget; i++) {
		struct hd_job *j = q->cand[i];
		uint32_t more;

		if (j->step_idx == UINT32_MAX) {
			/* Not taken, or its start failed (then it is off its queue). */
			if (n < seats && j->s->jobs == j)
				used += take(hm, j, budget - used, &n);
			continue;
		}
		more = HR_MIN(job_remaining(j) - q->work[j->step_idx].max_tokens, budget - used);
		q->work[j->step_idx].max_tokens += more;
		used += more;
	}
	if (!n)
		return progress;
	/* Interactive jobs still out of the step (and still queued: a failed
	 * start finished its job) were passed over. */
	for (uint32_t i = 0; i < n_cand - n_bulk; i++) {
		struct hd_job *j = q->cand[i];

		if (j->step_idx != UINT32_MAX || j->s->jobs != j)
			continue;
		q->st.interactive_skips++;
		j->skipped++;
		q->st.interactive_skip_max = HR_MAX(q->st.interactive_skip_max, j->skipped);
	}
	t0 = hr_now_ns();
	r = engine_step(hm->engine, q->work, n);
	if (r < 0) {
		hr_err("forward step of %u sequences failed: %s", n, strerror(-r));
		for (uint32_t i = 0; i < n; i++)
			q->work[i].res = r;
	}
	record_step(q, n, used, hr_now_ns() - t0);
	return progress + step_results(hm, n);
}

bool hd_sched_ready(struct hd_model *hm)
{
	struct hd_sched *q = &hm->sched;

	/* A held step with more than HOLD_SPIN_NS to go waits for a new
	 * submission (which wakes the reactor anyway) or its wake-up time. */
	if (q->hold_since && hr_now_ns() + HOLD_SPIN_NS < q->hold_until)
		return false;
	for (uint32_t i = 0; i < q->n_active; i++)
		if (job_can_run(hm, q->active[i]->jobs))
			return true;
	return false;
}

int hd_sched_cancel(struct hd_model *hm, struct hd_client *c, uint64_t user_data)
{
	struct hd_sched *q = &hm->sched;

	for (uint32_t i = 0; i < q->n_active; i++)
		for (struct hd_job *j = q->active[i]->jobs; j; j = j->next)
			if (j->c == c && j->q.user_data == user_data && !j->cancelled) {
				/* A running one stops at the end of its step, at the head. */
				if (j->started) {
					j->cancelled = true;
				} else {
					q->st.cancels++;
					job_finish(hm, j, -ECANCELED, 0);
				}
				return 0;
			}
	return -ENOENT;
}

void hd_sched_drop_client(struct hd_model *hm, struct hd_client *c)
{
	struct hd_sched *q = &hm->sched;

	for (uint32_t i = q->n_active; i-- > 0;) {
		struct hd_session *s;
		struct hd_job *j, *next;

		if (i >= q->n_active)
			continue;
		s = q->active[i];
		for (j = s->jobs; j; j = next) {
			next = j->next;
			if (j->c != c)
				continue;
			job_rollback(hm, j);
			unlink_job(q, j);
			job_free(q, j);
		}
	}
	c->n_outstanding = 0;
}

void hd_sched_drop_session(struct hd_model *hm, struct hd_session *s, int err)
{
	while (s->jobs)
		job_finish(hm, s->jobs, err, 0);
}

/* SPDX-License-Identifier: MIT */
/*
 * libhearth, the data path: the arena's bump allocator, submission slots and
 * their prep calls, publishing, reaping and waiting on the completion ring
 * (with liveness checks of the daemon while asleep), and the synchronous
 * calls, which are one asynchronous request each on scratch arena memory.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>

#include "hearth_pvt.h"
#include "hr_common.h"
#include "shm_wait.h"

/* The public descriptors are the ring entries under another name. */
_Static_assert(sizeof(struct hearth_sqe) == sizeof(struct shm_sqe), "sqe size");
_Static_assert(offsetof(struct hearth_sqe, session) == offsetof(struct shm_sqe, session), "sqe.session");
_Static_assert(offsetof(struct hearth_sqe, user_data) == offsetof(struct shm_sqe, user_data), "sqe.user_data");
_Static_assert(offsetof(struct hearth_sqe, in_off) == offsetof(struct shm_sqe, in_off), "sqe.in_off");
_Static_assert(offsetof(struct hearth_sqe, out_off) == offsetof(struct shm_sqe, out_off), "sqe.out_off");
_Static_assert(offsetof(struct hearth_sqe, aux_off) == offsetof(struct shm_sqe, aux_off), "sqe.aux_off");
_Static_assert(offsetof(struct hearth_sqe, arg) == offsetof(struct shm_sqe, arg), "sqe.arg");
_Static_assert(offsetof(struct hearth_sqe, deadline_ns) == offsetof(struct shm_sqe, deadline_ns), "sqe.deadline_ns");
_Static_assert(sizeof(struct hearth_cqe) == sizeof(struct shm_cqe), "cqe size");
_Static_assert(offsetof(struct hearth_cqe, res) == offsetof(struct shm_cqe, res), "cqe.res");
_Static_assert(offsetof(struct hearth_cqe, flags) == offsetof(struct shm_cqe, flags), "cqe.flags");
_Static_assert(offsetof(struct hearth_cqe, out_len) == offsetof(struct shm_cqe, out_len), "cqe.out_len");
_Static_assert(offsetof(struct hearth_cqe, pos) == offsetof(struct shm_cqe, pos), "cqe.pos");
_Static_assert(HEARTH_CQE_F_MORE == SHM_CQE_F_MORE, "cqe flag");
_Static_assert(HEARTH_SQE_F_LATENCY == SHM_SQE_F_LATENCY, "sqe flag");
_Static_assert(HEARTH_SQE_F_BULK == SHM_SQE_F_BULK, "sqe flag");
_Static_assert(HEARTH_SCORE_F_LOGPROB == SHM_SCORE_F_LOGPROB, "score flag");

/* An offset no arena reaches (arenas are at most 1 GiB) and 4096-aligned, so
 * the daemon's shape checks pass and its placement check answers -ERANGE. */
#define OFF_OUTSIDE 0xfffff000u

/* ---- arena ------------------------------------------------------------------ */

static uint32_t arena_align(uint32_t x)
{
	return HR_ALIGN_UP(x, HEARTH__ARENA_ALIGN);
}

void *hearth_arena_alloc(struct hearth *h, size_t bytes)
{
	uint32_t start;

	if (!h || !bytes)
		return NULL;
	start = arena_align(h->arena_top);
	if (start > h->lay.arena_size || bytes > h->lay.arena_size - start)
		return NULL;
	h->arena_top = start + (uint32_t)bytes;
	return h->arena + start;
}

void hearth_arena_reset(struct hearth *h)
{
	if (h)
		h->arena_top = 0;
}

size_t hearth_arena_size(const struct hearth *h)
{
	return h ? h->lay.arena_size : 0;
}

/* A range of bytes at p: its arena offset, or OFF_OUTSIDE. Unused: (0, 0). */
static void set_range(const struct hearth *h, const void *p, uint64_t bytes, uint32_t *ret_off,
		      uint32_t *ret_len)
{
	uintptr_t base, x = (uintptr_t)p;

	if (!bytes) {
		*ret_off = *ret_len = 0;
		return;
	}
	*ret_len = (uint32_t)HR_MIN(bytes, (uint64_t)UINT32_MAX & ~3ull);
	if (!h) {
		*ret_off = OFF_OUTSIDE;
		return;
	}
	base = (uintptr_t)h->arena;
	if (!p || x < base || x - base > h->lay.arena_size ||
	    bytes > h->lay.arena_size - (x - base))
		*ret_off = OFF_OUTSIDE;
	else
		*ret_off = (uint32_t)(x - base);
}

/* ---- submission --------------------------------------------------------------- */

struct hearth_sqe *hearth_get_sqe(struct hearth *h)
{
	struct shm_sqe *sqe;

	if (!h)
		return NULL;
	sqe = shm_sq_get_sqe(&h->sq);
	if (sqe)
		memset(sqe, 0, sizeof(*sqe));
	return (struct hearth_sqe *)sqe;
}

/* Start a slot afresh; false for a NULL one (the caller ignored
 * hearth_get_sqe() returning NULL: nothing to fill). */
static bool prep(struct hearth_sqe *sqe, uint8_t op, uint32_t session)
{
	if (!sqe)
		return false;
	memset(sqe, 0, sizeof(*sqe));
	sqe->op = op;
	sqe->session = session;
	return true;
}

void hearth_prep_nop(struct hearth *h, struct hearth_sqe *sqe)
{
	prep(sqe, SHM_OP_NOP, 0);
}

void hearth_prep_append(struct hearth *h, struct hearth_sqe *sqe, uint32_t session,
			const int32_t *tokens, uint32_t n)
{
	if (!prep(sqe, SHM_OP_APPEND, session))
		return;
	set_range(h, tokens, 4ull * n, &sqe->in_off, &sqe->in_len);
}

void hearth_prep_score(struct hearth *h, struct hearth_sqe *sqe, uint32_t session,
		       const int32_t *tokens, uint32_t n_tokens, const int32_t *labels,
		       uint32_t n_labels, float *probs)
{
	if (!prep(sqe, SHM_OP_SCORE, session))
		return;
	set_range(h, tokens, 4ull * n_tokens, &sqe->in_off, &sqe->in_len);
	set_range(h, labels, 4ull * n_labels, &sqe->aux_off, &sqe->aux_len);
	set_range(h, probs, 4ull * n_labels, &sqe->out_off, &sqe->out_cap);
}

void hearth_prep_generate(struct hearth *h, struct hearth_sqe *sqe, uint32_t session,
			  const int32_t *prompt, uint32_t n_prompt, uint32_t max_tokens,
			  int32_t *out)
{
	if (!prep(sqe, SHM_OP_GENERATE, session))
		return;
	set_range(h, prompt, 4ull * n_prompt, &sqe->in_off, &sqe->in_len);
	set_range(h, out, 4ull * max_tokens, &sqe->out_off, &sqe->out_cap);
	sqe->arg[0] = max_tokens; /* greedy: temperature, top_k and seed stay 0 */
}

void hearth_prep_truncate(struct hearth *h, struct hearth_sqe *sqe, uint32_t session, uint32_t n)
{
	if (!prep(sqe, SHM_OP_TRUNCATE, session))
		return;
	sqe->arg[0] = n;
}

void hearth_prep_cancel(struct hearth *h, struct hearth_sqe *sqe, uint64_t target_user_data)
{
	(void)h;
	if (!prep(sqe, SHM_OP_CANCEL, 0))
		return;
	sqe->arg[0] = (uint32_t)target_user_data;
	sqe->arg[1] = (uint32_t)(target_user_data >> 32);
}

int hearth_submit(struct hearth *h)
{
	uint32_t n;

	if (!h)
		return -EINVAL;
	if (h->dead)
		return -ESHUTDOWN;
	n = shm_sq_publish(&h->sq);
	if (n) {
		h->inflight += n;
		/* The daemon's futex is entered only if its reactor sleeps. */
		shm_wake(&h->hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
	}
	return (int)n;
}

/* ---- completion ------------------------------------------------------------------ */

int hearth_peek_cqe(struct hearth *h, struct hearth_cqe **ret)
{
	uint32_t idx;
	int r;

	if (!h || !ret)
		return -EINVAL;
	r = shm_cq_peek(&h->cq, 1, &idx);
	if (r < 0)
		return r;
	if (r == 0)
		return -EAGAIN;
	*ret = (struct hearth_cqe *)shm_cq_entry(&h->cq, idx);
	return 0;
}

void hearth_cqe_seen(struct hearth *h, struct hearth_cqe *cqe)
{
	uint32_t head, tail;

	if (!h || !cqe)
		return;
	head = h->cq.r.head;
	if (!(cqe->flags & HEARTH_CQE_F_MORE) && h->inflight)
		h->inflight--;
	shm_cq_advance(&h->cq, 1);
	/*
	 * The daemon sleeps for CQ room only after it found the ring full and
	 * published everything, i.e. tail == its view of head + entries. Wake
	 * it only when this slot was the one holding the ring full: a
	 * FUTEX_WAKE per reaped completion whenever the reactor idles would
	 * cost a system call and a spurious reactor turn each. Dekker: our head
	 * store is ordered before the tail load; pairs with shm_smp_mb() in the
	 * daemon's shm_wait_prepare(), after which it re-reads our head. If it
	 * missed this head, we see its final tail and its need_wakeup below.
	 */
	shm_smp_mb();
	/* Acquire: pairs with R0 in the daemon's shm_ring_prod_publish(). */
	tail = shm_load_acquire(h->cq.r.tail_p);
	if ((uint32_t)(tail - head) >= h->lay.cq_entries)
		shm_wake(&h->hdr->daemon_wq, SHM_WAIT_F_CQ_SPACE);
}

/* Has the daemon hung up the control socket (killed, stopped, or it dropped
 * us)? One poll() without waiting; only called before going to sleep. */
static bool daemon_gone(struct hearth *h)
{
	struct pollfd p = { .fd = h->sock, .events = POLLRDHUP };

	if (poll(&p, 1, 0) == 1 && p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))
		h->dead = true;
	return h->dead;
}

int hearth_wait_cqe(struct hearth *h, struct hearth_cqe **ret, int64_t timeout_ns)
{
	uint64_t start, deadline = 0;
	int r;

	r = hearth_peek_cqe(h, ret);
	if (r != -EAGAIN)
		return r;
	start = hr_now_ns();
	if (timeout_ns >= 0)
		deadline = start + (uint64_t)timeout_ns;
	/* Spin (timeout 0: spin only); returns 0 when the tail moved. */
	r = shm_cq_wait_data(&h->cq, &h->hdr->client_wq,
			     timeout_ns >= 0 ? HR_MIN(h->spin_ns, (uint64_t)timeout_ns) : h->spin_ns, 0);
	for (;;) {
		uint64_t now, slice = HEARTH__LIVENESS_NS;

		if (r >= 0 || r == -ESHUTDOWN) {
			/* Completions posted before a shutdown are still delivered. */
			int p = hearth_peek_cqe(h, ret);

			if (p != -EAGAIN)
				return p;
			if (r == -ESHUTDOWN) {
				h->dead = true;
				return -ESHUTDOWN;
			}
		} else if (r != -ETIMEDOUT) {
			return r; /* -EINTR, or a futex error */
		}
		now = hr_now_ns();
		if (deadline && now >= deadline)
			return -ETIMEDOUT;
		if (daemon_gone(h)) {
			/* A last look: the daemon may have posted before dying. */
			r = hearth_peek_cqe(h, ret);
			return r == -EAGAIN ? -ESHUTDOWN : r;
		}
		if (deadline)
			slice = HR_MIN(slice, deadline - now);
		r = shm_cq_wait_data(&h->cq, &h->hdr->client_wq, 0, (int64_t)slice);
	}
}

/* ---- synchronous calls --------------------------------------------------------- */

/* Scratch space for one synchronous request: the free part of the arena. */
struct scratch {
	uint32_t top;
};

static int sync_begin(struct hearth *h, struct scratch *s)
{
	if (!h)
		return -EINVAL;
	if (h->dead)
		return -ESHUTDOWN;
	/* One request at a time: nothing else may be taken, queued or unreaped. */
	if (h->inflight || h->sq.r.tail != h->sq.r.published)
		return -EINPROGRESS;
	s->top = arena_align(h->arena_top);
	return 0;
}

/* Copy n 4-byte values into scratch (src NULL: leave them for the daemon to
 * write). Returns the arena address or NULL when they do not fit. */
static void *scratch_put(struct hearth *h, struct scratch *s, const void *src, uint32_t n)
{
	uint64_t bytes = 4ull * n;
	void *p;

	if (!n)
		return NULL;
	if (s->top > h->lay.arena_size || bytes > h->lay.arena_size - s->top)
		return NULL;
	p = h->arena + s->top;
	if (src)
		memcpy(p, src, bytes);
	s->top = arena_align(s->top + (uint32_t)bytes);
	return p;
}

typedef void (*more_fn)(struct hearth *h, const struct hearth_cqe *cqe, void *arg);

/*
 * Submit the one prepared slot and wait for its last completion, handing
 * the ones with MORE to on_more. *ret receives a copy of the last.
 */
static int sync_run(struct hearth *h, struct hearth_sqe *sqe, more_fn on_more, void *arg,
		    struct hearth_cqe *ret)
{
	uint64_t ud = HEARTH__SYNC_TAG | ++h->sync_seq;
	int r;

	sqe->user_data = ud;
	r = hearth_submit(h);
	if (r < 0)
		return r;
	for (;;) {
		struct hearth_cqe *cqe, c;

		r = hearth_wait_cqe(h, &cqe, -1);
		if (r == -EINTR)
			continue;
		if (r < 0)
			return r;
		c = *cqe;
		hearth_cqe_seen(h, cqe);
		/* With one request in flight every completion is ours; anything
		 * else would be a daemon bug, and is skipped. */
		if (c.user_data != ud)
			continue;
		if (c.flags & HEARTH_CQE_F_MORE) {
			if (on_more)
				on_more(h, &c, arg);
			continue;
		}
		*ret = c;
		return 0;
	}
}

/* The slot of a synchronous call: the ring is empty, so one is free unless
 * the daemon broke the protocol. */
static struct hearth_sqe *sync_sqe(struct hearth *h)
{
	return hearth_get_sqe(h);
}

int hearth_nop(struct hearth *h)
{
	struct hearth_cqe c;
	struct hearth_sqe *sqe;
	struct scratch s;
	int r;

	if ((r = sync_begin(h, &s)) < 0)
		return r;
	if (!(sqe = sync_sqe(h)))
		return -EPROTO;
	hearth_prep_nop(h, sqe);
	r = sync_run(h, sqe, NULL, NULL, &c);
	return r < 0 ? r : c.res;
}

int hearth_append(struct hearth *h, uint32_t session, const int32_t *tokens, uint32_t n)
{
	struct hearth_cqe c;
	struct hearth_sqe *sqe;
	struct scratch s;
	const int32_t *in;
	int r;

	if ((r = sync_begin(h, &s)) < 0)
		return r;
	if (!n || !tokens)
		return -EINVAL;
	if (!(in = scratch_put(h, &s, tokens, n)))
		return -EMSGSIZE;
	if (!(sqe = sync_sqe(h)))
		return -EPROTO;
	hearth_prep_append(h, sqe, session, in, n);
	r = sync_run(h, sqe, NULL, NULL, &c);
	if (r < 0)
		return r;
	return c.res < 0 ? c.res : (int)c.pos;
}

int hearth_score(struct hearth *h, uint32_t session, const int32_t *tokens, uint32_t n_tokens,
		 const int32_t *labels, uint32_t n_labels, float *probs)
{
	struct hearth_cqe c;
	struct hearth_sqe *sqe;
	struct scratch s;
	const int32_t *in = NULL, *lab;
	float *out;
	int r;

	if ((r = sync_begin(h, &s)) < 0)
		return r;
	if (!labels || !n_labels || !probs || (n_tokens && !tokens))
		return -EINVAL;
	if ((n_tokens && !(in = scratch_put(h, &s, tokens, n_tokens))) ||
	    !(lab = scratch_put(h, &s, labels, n_labels)) ||
	    !(out = scratch_put(h, &s, NULL, n_labels)))
		return -EMSGSIZE;
	if (!(sqe = sync_sqe(h)))
		return -EPROTO;
	hearth_prep_score(h, sqe, session, in, n_tokens, lab, n_labels, out);
	r = sync_run(h, sqe, NULL, NULL, &c);
	if (r < 0)
		return r;
	if (c.res < 0)
		return c.res;
	if ((uint32_t)c.res != n_labels || c.out_len != 4 * n_labels)
		return -EPROTO;
	memcpy(probs, out, 4ull * n_labels);
	return c.res;
}

struct gen_state {
	const int32_t *out;     /* the arena buffer the daemon writes */
	uint32_t max_tokens;
	hearth_token_cb cb;
	void *userdata;
	bool stopped;
};

static void gen_more(struct hearth *h, const struct hearth_cqe *c, void *arg)
{
	struct gen_state *g = arg;
	uint32_t n = c->out_len / 4;

	if (g->stopped || !g->cb || n == 0 || n > g->max_tokens)
		return;
	/* The token is in the arena before the completion that reports it
	 * (the daemon's release of the CQ tail, our acquire in peek). */
	if (g->cb(g->userdata, g->out[n - 1])) {
		struct hearth_sqe *sqe = hearth_get_sqe(h);

		/* Stop the daemon too; its CANCEL completion is skipped by
		 * sync_run (another user_data), the GENERATE's ends the call. */
		g->stopped = true;
		if (sqe) {
			hearth_prep_cancel(h, sqe, c->user_data);
			sqe->user_data = c->user_data ^ HEARTH__CANCEL_TAG;
			hearth_submit(h);
		}
	}
}

int hearth_generate(struct hearth *h, uint32_t session, const int32_t *prompt, uint32_t n_prompt,
		    uint32_t max_tokens, int32_t *out, hearth_token_cb cb, void *userdata)
{
	struct gen_state g = { .max_tokens = max_tokens, .cb = cb, .userdata = userdata };
	struct hearth_cqe c;
	struct hearth_sqe *sqe;
	struct scratch s;
	const int32_t *in = NULL;
	int32_t *dst;
	int r;

	if ((r = sync_begin(h, &s)) < 0)
		return r;
	if (!max_tokens || (n_prompt && !prompt))
		return -EINVAL;
	if ((n_prompt && !(in = scratch_put(h, &s, prompt, n_prompt))) ||
	    !(dst = scratch_put(h, &s, NULL, max_tokens)))
		return -EMSGSIZE;
	if (!(sqe = sync_sqe(h)))
		return -EPROTO;
	g.out = dst;
	hearth_prep_generate(h, sqe, session, in, n_prompt, max_tokens, dst);
	r = sync_run(h, sqe, gen_more, &g, &c);
	if (r < 0)
		return r;
	if (c.out_len / 4 > max_tokens)
		return -EPROTO;
	if (out)
		memcpy(out, dst, c.out_len & ~3u);
	/* Stopped by the callback: the tokens so far are the result. */
	return g.stopped && c.res == -ECANCELED ? (int)(c.out_len / 4) : c.res;
}

int hearth_truncate(struct hearth *h, uint32_t session, uint32_t n)
{
	struct hearth_cqe c;
	struct hearth_sqe *sqe;
	struct scratch s;
	int r;

	if ((r = sync_begin(h, &s)) < 0)
		return r;
	if (!(sqe = sync_sqe(h)))
		return -EPROTO;
	hearth_prep_truncate(h, sqe, session, n);
	r = sync_run(h, sqe, NULL, NULL, &c);
	return r < 0 ? r : c.res;
}

/* SPDX-License-Identifier: MIT */
/*
 * SPSC ring fast path, static inline (liburing style): a producer reserves
 * slots, fills them and publishes them with one release store; a consumer
 * peeks, reads (the daemon copies) and advances with one release store. Each
 * side keeps the mask, its own index and a cached copy of the peer's index in a
 * private struct, and re-reads the peer's index only when the cached one is
 * not enough. Every peer index read is checked: a peer that moves its index
 * backwards or beyond what the ring allows makes the call return -EPROTO (the
 * daemon disconnects that client; nothing was touched).
 *
 * Roles: the client produces the SQ (shm_sq_prod) and consumes the CQ
 * (shm_cq_cons); the daemon consumes the SQ (shm_sq_cons) and produces the CQ
 * (shm_cq_prod). A view is used by one thread at a time; views of the two ends
 * are used concurrently from different threads or processes.
 */
#ifndef SHM_RING_H
#define SHM_RING_H

#include <errno.h>
#include <stdint.h>

#include "shm_barrier.h"
#include "shm_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

#define shm_unlikely_(x) __builtin_expect(!!(x), 0)

/* ---- generic ends (element type supplied by the typed wrappers) ---------- */

struct shm_ring_prod {
	uint32_t *tail_p;        /* shared: we publish our tail here */
	const uint32_t *head_p;  /* shared: the consumer's head (untrusted) */
	void *entries;
	uint32_t tail;           /* next index to reserve: private, authoritative */
	uint32_t published;      /* last tail stored to *tail_p */
	uint32_t head;           /* last checked head of the consumer */
	uint32_t mask;           /* entries - 1, from the private layout */
};

struct shm_ring_cons {
	uint32_t *head_p;        /* shared: we release consumed slots here */
	const uint32_t *tail_p;  /* shared: the producer's tail (untrusted) */
	void *entries;
	uint32_t head;           /* next index to consume: private, authoritative */
	uint32_t tail;           /* last checked tail of the producer */
	uint32_t mask;
};

/*
 * Re-read the consumer's head. A valid head moved forward by at most what we
 * published: (head - old) <= (published - old), all mod 2^32 (a head moved
 * backwards wraps to a huge difference and fails the same test). Returns free
 * slots (reserved-but-unpublished slots count as used) or -EPROTO.
 */
static inline int shm_ring_prod_refresh(struct shm_ring_prod *p)
{
	/* A0: pairs with R1 in shm_ring_cons_advance(): the consumer's reads of
	 * the slots it released are done before we refill them. */
	uint32_t head = shm_load_acquire(p->head_p);

	if (shm_unlikely_((uint32_t)(head - p->head) > (uint32_t)(p->published - p->head)))
		return -EPROTO;
	p->head = head;
	return (int)(p->mask + 1 - (p->tail - head));
}

/*
 * Reserve up to n slots. Returns how many (0 when full), with the index of the
 * first in *ret_idx (written only when > 0; the others follow it), or -EPROTO.
 * Fill them with the typed *_slot() call, then publish. Reading the peer's
 * head only when the cached one shows too little room keeps the consumer's
 * cache line out of the fast path.
 */
static inline int shm_ring_prod_reserve(struct shm_ring_prod *p, uint32_t n, uint32_t *ret_idx)
{
	uint32_t room = p->mask + 1 - (p->tail - p->head);

	if (room < n) {
		int r = shm_ring_prod_refresh(p);

		if (r < 0)
			return r;
		room = (uint32_t)r;
	}
	if (n > room)
		n = room;
	if (n == 0)
		return 0;
	*ret_idx = p->tail;
	p->tail += n;
	return (int)n;
}

/* Make every reserved slot visible to the consumer with one store. Returns the
 * number newly published. Call the peer's wake (shm_wait.h) after it. */
static inline uint32_t shm_ring_prod_publish(struct shm_ring_prod *p)
{
	uint32_t n = p->tail - p->published;

	if (n) {
		/* R0: pairs with A1 in shm_ring_cons_refresh(): the slot contents
		 * are visible before the tail that covers them. */
		shm_store_release(p->tail_p, p->tail);
		p->published = p->tail;
	}
	return n;
}

/*
 * Re-read the producer's tail. A valid tail is at most a ring ahead of our
 * head and not behind the tail we saw last. Returns entries available or
 * -EPROTO.
 */
static inline int shm_ring_cons_refresh(struct shm_ring_cons *c)
{
	/* A1: pairs with R0 in shm_ring_prod_publish(): slot contents written
	 * before that tail are visible to our reads after this load. */
	uint32_t tail = shm_load_acquire(c->tail_p);
	uint32_t avail = tail - c->head;

	if (shm_unlikely_(avail > c->mask + 1 || avail < (uint32_t)(c->tail - c->head)))
		return -EPROTO;
	c->tail = tail;
	return (int)avail;
}

/* Up to max available entries starting at *ret_idx (written only when > 0),
 * 0 when empty, or -EPROTO. Entries stay owned by the consumer until advance. */
static inline int shm_ring_cons_peek(struct shm_ring_cons *c, uint32_t max, uint32_t *ret_idx)
{
	uint32_t avail = c->tail - c->head;

	if (avail < max) {
		int r = shm_ring_cons_refresh(c);

		if (r < 0)
			return r;
		avail = (uint32_t)r;
	}
	if (avail > max)
		avail = max;
	if (avail == 0)
		return 0;
	*ret_idx = c->head;
	return (int)avail;
}

/* Give n peeked slots back to the producer (n <= what peek returned). */
static inline void shm_ring_cons_advance(struct shm_ring_cons *c, uint32_t n)
{
	c->head += n;
	/* R1: pairs with A0 in shm_ring_prod_refresh(): our reads of these slots
	 * complete before the producer can see them free. */
	shm_store_release(c->head_p, c->head);
}

/* ---- typed ends ---------------------------------------------------------- */

struct shm_sq_prod { struct shm_ring_prod r; };  /* client */
struct shm_sq_cons { struct shm_ring_cons r; };  /* daemon */
struct shm_cq_prod { struct shm_ring_prod r; };  /* daemon */
struct shm_cq_cons { struct shm_ring_cons r; };  /* client */

/*
 * Build a private view of one ring end from a trusted layout (the daemon's own,
 * or one from shm_region_attach_check). Reads both shared indices once: the
 * daemon calls these right after shm_region_init, before the fd is passed.
 * Returns 0, -EINVAL (NULL arguments) or -EPROTO (tail - head > entries).
 * Defined in shm_region.c.
 */
int shm_sq_prod_init(struct shm_sq_prod *sq, void *mem, const struct shm_layout *lay);
int shm_sq_cons_init(struct shm_sq_cons *sq, void *mem, const struct shm_layout *lay);
int shm_cq_prod_init(struct shm_cq_prod *cq, void *mem, const struct shm_layout *lay);
int shm_cq_cons_init(struct shm_cq_cons *cq, void *mem, const struct shm_layout *lay);

/* Client, SQ producer: reserve / fill slots / publish once. */
static inline int shm_sq_reserve(struct shm_sq_prod *sq, uint32_t n, uint32_t *ret_idx)
{
	return shm_ring_prod_reserve(&sq->r, n, ret_idx);
}
static inline struct shm_sqe *shm_sq_slot(struct shm_sq_prod *sq, uint32_t idx)
{
	return (struct shm_sqe *)sq->r.entries + (idx & sq->r.mask);
}
/* One slot or NULL when full (or when the daemon broke the protocol). */
static inline struct shm_sqe *shm_sq_get_sqe(struct shm_sq_prod *sq)
{
	uint32_t idx;

	return shm_sq_reserve(sq, 1, &idx) == 1 ? shm_sq_slot(sq, idx) : NULL;
}
static inline uint32_t shm_sq_publish(struct shm_sq_prod *sq)
{
	return shm_ring_prod_publish(&sq->r);
}

/* Daemon, SQ consumer: peek / copy each descriptor once / advance. */
static inline int shm_sq_peek(struct shm_sq_cons *sq, uint32_t max, uint32_t *ret_idx)
{
	return shm_ring_cons_peek(&sq->r, max, ret_idx);
}

/*
 * Copy a descriptor out of shared memory with exactly one read of each word
 * (relaxed atomic loads: the compiler may not re-read the shared slot after
 * the copy, so what was validated is what is used, and a client racing its
 * own slot only corrupts its own request). Slot and copy are 8-aligned.
 */
typedef uint64_t __attribute__((may_alias)) shm_u64_alias_;
static inline void shm_sqe_copy(struct shm_sqe *dst, const struct shm_sqe *src)
{
	const shm_u64_alias_ *s = (const shm_u64_alias_ *)src;
	shm_u64_alias_ *d = (shm_u64_alias_ *)dst;

	for (unsigned int i = 0; i < sizeof(*src) / 8; i++)
		d[i] = shm_load_relaxed(&s[i]);
}
static inline void shm_sq_copy(const struct shm_sq_cons *sq, uint32_t idx, struct shm_sqe *ret)
{
	shm_sqe_copy(ret, (const struct shm_sqe *)sq->r.entries + (idx & sq->r.mask));
}
static inline void shm_sq_advance(struct shm_sq_cons *sq, uint32_t n)
{
	shm_ring_cons_advance(&sq->r, n);
}

/* Daemon, CQ producer: reserve / fill / publish once. */
static inline int shm_cq_reserve(struct shm_cq_prod *cq, uint32_t n, uint32_t *ret_idx)
{
	return shm_ring_prod_reserve(&cq->r, n, ret_idx);
}
static inline struct shm_cqe *shm_cq_slot(struct shm_cq_prod *cq, uint32_t idx)
{
	return (struct shm_cqe *)cq->r.entries + (idx & cq->r.mask);
}
static inline uint32_t shm_cq_publish(struct shm_cq_prod *cq)
{
	return shm_ring_prod_publish(&cq->r);
}

/* Client, CQ consumer: peek / read / advance. */
static inline int shm_cq_peek(struct shm_cq_cons *cq, uint32_t max, uint32_t *ret_idx)
{
	return shm_ring_cons_peek(&cq->r, max, ret_idx);
}
static inline const struct shm_cqe *shm_cq_entry(const struct shm_cq_cons *cq, uint32_t idx)
{
	return (const struct shm_cqe *)cq->r.entries + (idx & cq->r.mask);
}
static inline void shm_cq_advance(struct shm_cq_cons *cq, uint32_t n)
{
	shm_ring_cons_advance(&cq->r, n);
}

#ifdef __cplusplus
}
#endif

#endif

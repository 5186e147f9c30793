/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the shared-memory protocol, single-threaded: layout facts,
 * region init and attach checks (good and corrupted headers), ring empty/full,
 * u32 index wraparound, batched reserve/publish, peers lying about their
 * indices, descriptor copy and validation.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_common.h"
#include "shm_proto.h"
#include "shm_ring.h"
#include "shm_check.h"


struct region {
	void *mem;
	struct shm_layout lay;
};

static void region_new(struct region *r, uint32_t sq, uint32_t cq, uint32_t arena)
{
	CHECK_EQ(shm_layout_compute(sq, cq, arena, &r->lay), 0);
	r->mem = aligned_alloc(SHM_PAGE, r->lay.total_size);
	if (!r->mem)
		abort();
	memset(r->mem, 0xa5, r->lay.total_size); /* init must not rely on zeroes */
	CHECK_EQ(shm_region_init(r->mem, r->lay.total_size, &r->lay), 0);
}

static void region_free(struct region *r)
{
	free(r->mem);
	r->mem = NULL;
}

/* ---- layout ------------------------------------------------------------ */

static void test_layout(void)
{
	static const uint32_t sizes[][3] = {
		{ 2, 2, 4096 }, { 8, 16, 8192 }, { 64, 64, 1 << 20 },
		{ 1024, 4096, 1 << 24 }, { 32768, 32768, SHM_ARENA_MAX },
	};
	struct shm_layout l;

	/* The _Static_asserts again, at run time, so a test log shows them. */
	CHECK_EQ(sizeof(struct shm_sqe), 64);
	CHECK_EQ(sizeof(struct shm_cqe), 32);
	CHECK_EQ(sizeof(struct shm_region_hdr), 512);
	CHECK_EQ(sizeof(struct shm_ring_hdr), 256);
	CHECK_EQ(offsetof(struct shm_ring_hdr, head), 128);
	CHECK_EQ(offsetof(struct shm_region_hdr, daemon_wq), 128);
	CHECK_EQ(offsetof(struct shm_region_hdr, client_wq), 256);
	CHECK_EQ(offsetof(struct shm_waitq, futex), 0);
	CHECK_EQ(offsetof(struct shm_sqe, user_data), 8);
	CHECK_EQ(offsetof(struct shm_sqe, arg), 40);
	CHECK_EQ(offsetof(struct shm_cqe, res), 8);

	for (size_t i = 0; i < HR_ARRAY_SIZE(sizes); i++) {
		CHECK_EQ(shm_layout_compute(sizes[i][0], sizes[i][1], sizes[i][2], &l), 0);
		CHECK_EQ(l.sq_off, 512);
		CHECK_EQ(l.sq_off % SHM_BLOCK, 0);
		CHECK_EQ(l.cq_off % SHM_BLOCK, 0);
		CHECK_EQ(l.arena_off % SHM_PAGE, 0);
		CHECK_EQ(l.total_size % SHM_PAGE, 0);
		CHECK(l.cq_off >= l.sq_off + 256 + 64ull * sizes[i][0]);
		CHECK(l.arena_off >= l.cq_off + 256 + 32ull * sizes[i][1]);
		CHECK_EQ(l.total_size, l.arena_off + sizes[i][2]);
		CHECK_EQ(shm_region_memsize(sizes[i][0], sizes[i][1], sizes[i][2]),
			 (long long)l.total_size);
	}

	CHECK_EQ(shm_region_memsize(0, 8, 4096), -EINVAL);
	CHECK_EQ(shm_region_memsize(1, 8, 4096), -EINVAL);
	CHECK_EQ(shm_region_memsize(12, 8, 4096), -EINVAL);
	CHECK_EQ(shm_region_memsize(8, 65536, 4096), -EINVAL);
	CHECK_EQ(shm_region_memsize(8, 8, 0), -EINVAL);
	CHECK_EQ(shm_region_memsize(8, 8, 4095), -EINVAL);
	CHECK_EQ(shm_region_memsize(8, 8, SHM_ARENA_MAX + SHM_PAGE), -EINVAL);
	CHECK_EQ(shm_layout_compute(8, 8, 4096, NULL), -EINVAL);
}

/* ---- region init and attach --------------------------------------------- */

static void test_region_init_attach(void)
{
	struct region r;
	struct shm_layout got;
	const struct shm_region_hdr *hdr;

	region_new(&r, 16, 32, 64 << 10);
	hdr = r.mem;
	CHECK_EQ(hdr->info.magic, SHM_MAGIC);
	CHECK_EQ(hdr->info.version, SHM_VERSION);
	CHECK_EQ(hdr->daemon_wq.futex, 0);
	CHECK_EQ(hdr->client_wq.need_wakeup, 0);
	CHECK_EQ(shm_region_sq(r.mem, &r.lay)->tail.v, 0);
	CHECK_EQ(shm_region_cq(r.mem, &r.lay)->head.v, 0);

	memset(&got, 0, sizeof(got));
	CHECK_EQ(shm_region_attach_check(r.mem, r.lay.total_size, &got), 0);
	/* Field by field: the struct has tail padding that a copy need not keep. */
	CHECK(got.total_size == r.lay.total_size && got.sq_off == r.lay.sq_off &&
	      got.cq_off == r.lay.cq_off && got.arena_off == r.lay.arena_off &&
	      got.sq_entries == r.lay.sq_entries && got.cq_entries == r.lay.cq_entries &&
	      got.arena_size == r.lay.arena_size);
	/* A longer mapping is fine, a shorter one is not. */
	CHECK_EQ(shm_region_attach_check(r.mem, r.lay.total_size + 4096, &got), 0);
	CHECK_EQ(shm_region_attach_check(r.mem, r.lay.total_size - 1, &got), -EINVAL);
	CHECK_EQ(shm_region_attach_check(r.mem, 100, &got), -EINVAL);
	CHECK_EQ(shm_region_attach_check((char *)r.mem + 64, r.lay.total_size - 64, &got),
		 -EINVAL);

	/* init refuses a layout it did not compute, short or misaligned memory */
	struct shm_layout bad = r.lay;
	bad.cq_off += 128;
	CHECK_EQ(shm_region_init(r.mem, r.lay.total_size, &bad), -EINVAL);
	CHECK_EQ(shm_region_init(r.mem, r.lay.total_size - 1, &r.lay), -EINVAL);
	CHECK_EQ(shm_region_init((char *)r.mem + 8, r.lay.total_size, &r.lay), -EINVAL);
	CHECK_EQ(shm_region_init(NULL, r.lay.total_size, &r.lay), -EINVAL);
	region_free(&r);
}

/* Corrupt one thing in a good region; attach_check must say want. */
typedef void (*corrupt_fn)(struct shm_region_hdr *h, void *mem);

static void c_magic(struct shm_region_hdr *h, void *m) { h->info.magic ^= 1; }
static void c_major(struct shm_region_hdr *h, void *m) { h->info.version += 1u << 16; }
static void c_minor(struct shm_region_hdr *h, void *m) { h->info.version += 1; }
static void c_hdr_size(struct shm_region_hdr *h, void *m) { h->info.hdr_size = 256; }
static void c_flags(struct shm_region_hdr *h, void *m) { h->info.flags = 1; }
static void c_sqe_size(struct shm_region_hdr *h, void *m) { h->info.sqe_size = 128; }
static void c_cqe_size(struct shm_region_hdr *h, void *m) { h->info.cqe_size = 16; }
static void c_total_big(struct shm_region_hdr *h, void *m) { h->info.total_size += 4096; }
static void c_total_tiny(struct shm_region_hdr *h, void *m) { h->info.total_size = 8; }
static void c_sq_npow2(struct shm_region_hdr *h, void *m) { h->info.sq_entries = 12; }
static void c_cq_zero(struct shm_region_hdr *h, void *m) { h->info.cq_entries = 0; }
static void c_sq_huge(struct shm_region_hdr *h, void *m) { h->info.sq_entries = 1u << 20; }
static void c_arena_zero(struct shm_region_hdr *h, void *m) { h->info.arena_size = 0; }
static void c_arena_odd(struct shm_region_hdr *h, void *m) { h->info.arena_size -= 1; }
static void c_sq_past_end(struct shm_region_hdr *h, void *m) { h->info.sq_off = h->info.total_size; }
static void c_arena_past_end(struct shm_region_hdr *h, void *m) { h->info.arena_off += SHM_PAGE; }
static void c_sq_misaligned(struct shm_region_hdr *h, void *m) { h->info.sq_off += 64; }
static void c_arena_misaligned(struct shm_region_hdr *h, void *m) { h->info.arena_off -= 128; }
static void c_sq_in_hdr(struct shm_region_hdr *h, void *m) { h->info.sq_off = 256; }
static void c_cq_on_sq(struct shm_region_hdr *h, void *m) { h->info.cq_off = h->info.sq_off + 256; }
static void c_arena_on_cq(struct shm_region_hdr *h, void *m) { h->info.arena_off = 0; }
static void c_cq_after_arena_overlap(struct shm_region_hdr *h, void *m)
{
	h->info.cq_off = h->info.arena_off + 128;
}
static void c_off_wrap(struct shm_region_hdr *h, void *m) { h->info.cq_off = UINT64_MAX - 127; }
static void c_sq_size_wrap(struct shm_region_hdr *h, void *m)
{
	/* sq big enough that sq_off + bytes would run past the end */
	h->info.sq_entries = SHM_RING_MAX_ENTRIES;
}
static void c_sq_tail_ahead(struct shm_region_hdr *h, void *m)
{
	struct shm_ring_hdr *ring = (void *)((char *)m + h->info.sq_off);
	ring->tail.v = h->info.sq_entries + 1;
}
static void c_cq_head_ahead(struct shm_region_hdr *h, void *m)
{
	struct shm_ring_hdr *ring = (void *)((char *)m + h->info.cq_off);
	ring->head.v = 1; /* head past tail: tail - head wraps huge */
}

static void test_attach_rejects(void)
{
	static const struct {
		const char *what;
		corrupt_fn fn;
		int want;
	} cases[] = {
		{ "magic", c_magic, -EBADMSG },
		{ "major version", c_major, -EPROTONOSUPPORT },
		{ "minor version", c_minor, 0 },
		{ "hdr_size", c_hdr_size, -EINVAL },
		{ "flags", c_flags, -EINVAL },
		{ "sqe_size", c_sqe_size, -EINVAL },
		{ "cqe_size", c_cqe_size, -EINVAL },
		{ "total_size > len", c_total_big, -EINVAL },
		{ "total_size < hdr", c_total_tiny, -EINVAL },
		{ "sq_entries not pow2", c_sq_npow2, -EINVAL },
		{ "cq_entries 0", c_cq_zero, -EINVAL },
		{ "sq_entries over max", c_sq_huge, -EINVAL },
		{ "arena_size 0", c_arena_zero, -EINVAL },
		{ "arena_size not page multiple", c_arena_odd, -EINVAL },
		{ "sq_off past end", c_sq_past_end, -EINVAL },
		{ "arena past end", c_arena_past_end, -EINVAL },
		{ "sq_off misaligned", c_sq_misaligned, -EINVAL },
		{ "arena_off misaligned", c_arena_misaligned, -EINVAL },
		{ "sq overlaps header", c_sq_in_hdr, -EINVAL },
		{ "cq overlaps sq", c_cq_on_sq, -EINVAL },
		{ "arena overlaps header", c_arena_on_cq, -EINVAL },
		{ "cq inside arena", c_cq_after_arena_overlap, -EINVAL },
		{ "offset near 2^64", c_off_wrap, -EINVAL },
		{ "sq grows into cq", c_sq_size_wrap, -EINVAL },
		{ "sq tail - head > entries", c_sq_tail_ahead, -EINVAL },
		{ "cq head past tail", c_cq_head_ahead, -EINVAL },
	};
	struct region r;
	struct shm_layout got;

	region_new(&r, 8, 16, 16 << 10);
	void *copy = aligned_alloc(SHM_PAGE, r.lay.total_size);
	if (!copy)
		abort();
	for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
		memcpy(copy, r.mem, r.lay.total_size);
		cases[i].fn(copy, copy);
		memset(&got, 0x5a, sizeof(got));
		int rc = shm_region_attach_check(copy, r.lay.total_size, &got);
		if (rc != cases[i].want) {
			fprintf(stderr, "attach_check(%s) = %d, want %d\n", cases[i].what, rc,
				cases[i].want);
			failures++;
		}
		if (rc < 0) {
			/* no out-parameter written on failure */
			struct shm_layout untouched;
			memset(&untouched, 0x5a, sizeof(untouched));
			CHECK(memcmp(&got, &untouched, sizeof(got)) == 0);
		}
	}
	free(copy);
	region_free(&r);
}

/* ---- rings -------------------------------------------------------------- */

struct ends {
	struct shm_sq_prod sqp;
	struct shm_sq_cons sqc;
	struct shm_cq_prod cqp;
	struct shm_cq_cons cqc;
};

static void ends_init(struct ends *e, struct region *r)
{
	CHECK_EQ(shm_sq_prod_init(&e->sqp, r->mem, &r->lay), 0);
	CHECK_EQ(shm_sq_cons_init(&e->sqc, r->mem, &r->lay), 0);
	CHECK_EQ(shm_cq_prod_init(&e->cqp, r->mem, &r->lay), 0);
	CHECK_EQ(shm_cq_cons_init(&e->cqc, r->mem, &r->lay), 0);
}

/* Start both rings' indices at start (as if that many entries had passed). */
static void set_indices(struct region *r, uint32_t start)
{
	struct shm_ring_hdr *sq = shm_region_sq(r->mem, &r->lay);
	struct shm_ring_hdr *cq = shm_region_cq(r->mem, &r->lay);

	sq->tail.v = sq->head.v = start;
	cq->tail.v = cq->head.v = start;
}

static void test_empty_full(void)
{
	struct region r;
	struct ends e;
	uint32_t idx = 12345, first;

	region_new(&r, 8, 8, 4096);
	ends_init(&e, &r);

	/* empty: nothing to peek, index untouched */
	CHECK_EQ(shm_sq_peek(&e.sqc, 8, &idx), 0);
	CHECK_EQ(idx, 12345);
	CHECK_EQ(shm_sq_peek(&e.sqc, 0, &idx), 0);

	/* fill: 8 slots, then full */
	CHECK_EQ(shm_sq_reserve(&e.sqp, 8, &first), 8);
	CHECK_EQ(first, 0);
	for (uint32_t i = 0; i < 8; i++)
		shm_sq_slot(&e.sqp, first + i)->user_data = 100 + i;
	CHECK_EQ(shm_sq_reserve(&e.sqp, 1, &idx), 0);
	CHECK(shm_sq_get_sqe(&e.sqp) == NULL);
	/* reserved but not published: invisible */
	CHECK_EQ(shm_sq_peek(&e.sqc, 8, &idx), 0);
	CHECK_EQ(shm_sq_publish(&e.sqp), 8);
	CHECK_EQ(shm_sq_publish(&e.sqp), 0);
	CHECK_EQ(shm_region_sq(r.mem, &r.lay)->tail.v, 8);

	/* consumer: peek a part, then all */
	CHECK_EQ(shm_sq_peek(&e.sqc, 3, &idx), 3);
	CHECK_EQ(idx, 0);
	CHECK_EQ(shm_sq_peek(&e.sqc, 100, &idx), 8);
	struct shm_sqe copy;
	for (uint32_t i = 0; i < 3; i++) {
		shm_sq_copy(&e.sqc, idx + i, &copy);
		CHECK_EQ(copy.user_data, 100 + i);
	}
	shm_sq_advance(&e.sqc, 3);
	CHECK_EQ(shm_region_sq(r.mem, &r.lay)->head.v, 3);

	/* producer sees exactly 3 free after refreshing the head */
	CHECK_EQ(shm_sq_reserve(&e.sqp, 5, &first), 3);
	CHECK_EQ(first, 8);
	CHECK_EQ(shm_sq_reserve(&e.sqp, 5, &first), 0);
	for (uint32_t i = 0; i < 3; i++)
		shm_sq_slot(&e.sqp, 8 + i)->user_data = 108 + i;
	/* slot of index 8 is slot 0 again */
	CHECK(shm_sq_slot(&e.sqp, 8) == shm_sq_slot(&e.sqp, 0));
	shm_sq_publish(&e.sqp);

	/* drain in order */
	uint32_t want = 103;
	int n;
	while ((n = shm_sq_peek(&e.sqc, 2, &idx)) > 0) {
		for (int i = 0; i < n; i++) {
			shm_sq_copy(&e.sqc, idx + (uint32_t)i, &copy);
			CHECK_EQ(copy.user_data, want++);
		}
		shm_sq_advance(&e.sqc, (uint32_t)n);
	}
	CHECK_EQ(n, 0);
	CHECK_EQ(want, 111);

	/* CQ: same in the other direction, through the CQ types */
	CHECK_EQ(shm_cq_reserve(&e.cqp, 9, &first), 8);
	for (uint32_t i = 0; i < 8; i++)
		*shm_cq_slot(&e.cqp, first + i) = (struct shm_cqe){ .user_data = i, .res = -(int)i };
	CHECK_EQ(shm_cq_publish(&e.cqp), 8);
	CHECK_EQ(shm_cq_peek(&e.cqc, 16, &idx), 8);
	for (uint32_t i = 0; i < 8; i++) {
		CHECK_EQ(shm_cq_entry(&e.cqc, idx + i)->user_data, i);
		CHECK_EQ(shm_cq_entry(&e.cqc, idx + i)->res, -(int)i);
	}
	shm_cq_advance(&e.cqc, 8);
	CHECK_EQ(shm_cq_peek(&e.cqc, 16, &idx), 0);
	region_free(&r);
}

/* Push/pop many entries in uneven batches starting near UINT32_MAX so the
 * free-running indices wrap through zero several times over a small ring. */
static void test_wraparound(void)
{
	struct region r;
	struct ends e;
	uint64_t pushed = 0, popped = 0;
	const uint32_t start = UINT32_MAX - 5;
	uint32_t idx;
	unsigned int seed = 1;

	region_new(&r, 4, 8, 4096);
	set_indices(&r, start);
	ends_init(&e, &r);
	CHECK_EQ(e.sqp.r.tail, start);

	while (popped < 1000) {
		uint32_t want = 1 + (uint32_t)(rand_r(&seed) % 6);
		int n = shm_sq_reserve(&e.sqp, want, &idx);

		CHECK(n >= 0 && n <= 4);
		for (int i = 0; i < n; i++) {
			struct shm_sqe *s = shm_sq_slot(&e.sqp, idx + (uint32_t)i);
			CHECK((uint32_t)(idx + (uint32_t)i) == (uint32_t)(start + pushed));
			s->user_data = pushed++;
		}
		shm_sq_publish(&e.sqp);

		want = 1 + (uint32_t)(rand_r(&seed) % 6);
		n = shm_sq_peek(&e.sqc, want, &idx);
		CHECK(n >= 0);
		for (int i = 0; i < n; i++) {
			struct shm_sqe c;
			shm_sq_copy(&e.sqc, idx + (uint32_t)i, &c);
			CHECK_EQ(c.user_data, popped);
			popped++;
		}
		if (n > 0)
			shm_sq_advance(&e.sqc, (uint32_t)n);
		CHECK(pushed - popped <= 4);
	}
	/* the u32 indices wrapped: they are now small */
	CHECK_EQ(shm_region_sq(r.mem, &r.lay)->head.v, (uint32_t)(start + popped));
	CHECK(shm_region_sq(r.mem, &r.lay)->head.v < 2000);

	/* full and empty still right exactly at the wrap */
	region_free(&r);
	region_new(&r, 8, 8, 4096);
	set_indices(&r, UINT32_MAX - 3);
	ends_init(&e, &r);
	CHECK_EQ(shm_sq_reserve(&e.sqp, 8, &idx), 8);
	CHECK_EQ(idx, UINT32_MAX - 3);
	CHECK_EQ(shm_sq_reserve(&e.sqp, 1, &idx), 0);
	shm_sq_publish(&e.sqp);
	CHECK_EQ(shm_region_sq(r.mem, &r.lay)->tail.v, 4);
	CHECK_EQ(shm_sq_peek(&e.sqc, 100, &idx), 8);
	shm_sq_advance(&e.sqc, 8);
	CHECK_EQ(shm_sq_peek(&e.sqc, 100, &idx), 0);
	CHECK_EQ(shm_sq_reserve(&e.sqp, 100, &idx), 8);
	region_free(&r);
}

/* Reserve in several calls, publish once: one tail store covers them all. */
static void test_batch(void)
{
	struct region r;
	struct ends e;
	uint32_t a, b, c, idx;

	region_new(&r, 16, 16, 4096);
	ends_init(&e, &r);
	CHECK_EQ(shm_sq_reserve(&e.sqp, 3, &a), 3);
	CHECK_EQ(shm_sq_reserve(&e.sqp, 4, &b), 4);
	CHECK_EQ(shm_sq_reserve(&e.sqp, 20, &c), 9); /* the rest */
	CHECK_EQ(b, a + 3);
	CHECK_EQ(c, b + 4);
	CHECK_EQ(shm_region_sq(r.mem, &r.lay)->tail.v, 0);
	CHECK_EQ(shm_sq_peek(&e.sqc, 16, &idx), 0);
	CHECK_EQ(shm_sq_publish(&e.sqp), 16);
	CHECK_EQ(shm_sq_peek(&e.sqc, 16, &idx), 16);
	/* advance less than peeked: the rest stays */
	shm_sq_advance(&e.sqc, 10);
	CHECK_EQ(shm_sq_peek(&e.sqc, 16, &idx), 6);
	CHECK_EQ(idx, 10);
	region_free(&r);
}

/* A peer that writes a bad index makes the call fail with -EPROTO and leaves
 * the private state as it was. */
static void test_lying_peers(void)
{
	struct region r;
	struct ends e;
	struct shm_ring_hdr *sq, *cq;
	uint32_t idx = 777;

	region_new(&r, 8, 8, 4096);
	ends_init(&e, &r);
	sq = shm_region_sq(r.mem, &r.lay);
	cq = shm_region_cq(r.mem, &r.lay);

	/* producer (client) claims more than a ring of entries */
	sq->tail.v = 9;
	CHECK_EQ(shm_sq_peek(&e.sqc, 1, &idx), -EPROTO);
	CHECK_EQ(idx, 777);
	CHECK_EQ(e.sqc.r.tail, 0);
	sq->tail.v = UINT32_MAX; /* "behind" head: huge difference */
	CHECK_EQ(shm_sq_peek(&e.sqc, 1, &idx), -EPROTO);
	sq->tail.v = 8; /* exactly full is legal */
	CHECK_EQ(shm_sq_peek(&e.sqc, 8, &idx), 8);
	shm_sq_advance(&e.sqc, 2);
	sq->tail.v = 5; /* moved backwards past entries we saw */
	CHECK_EQ(shm_sq_peek(&e.sqc, 8, &idx), -EPROTO);
	sq->tail.v = 10; /* head 2 + 8: full again, legal */
	CHECK_EQ(shm_sq_peek(&e.sqc, 8, &idx), 8);
	sq->tail.v = 11;
	CHECK_EQ(shm_sq_peek(&e.sqc, 9, &idx), -EPROTO);

	/* consumer (client) of the CQ: head beyond what the daemon published */
	CHECK_EQ(shm_cq_reserve(&e.cqp, 8, &idx), 8);
	CHECK_EQ(shm_cq_publish(&e.cqp), 8);
	cq->head.v = 9;
	CHECK_EQ(shm_cq_reserve(&e.cqp, 1, &idx), -EPROTO);
	cq->head.v = UINT32_MAX; /* backwards */
	CHECK_EQ(shm_cq_reserve(&e.cqp, 1, &idx), -EPROTO);
	CHECK_EQ(e.cqp.r.head, 0);
	/* head past published but within reserved: still a lie */
	cq->head.v = 4;
	CHECK_EQ(shm_cq_reserve(&e.cqp, 4, &idx), 4);
	cq->head.v = 10; /* published is 8, reserved 12 */
	CHECK_EQ(shm_cq_reserve(&e.cqp, 4, &idx), -EPROTO);
	cq->head.v = 8;
	CHECK_EQ(shm_cq_reserve(&e.cqp, 4, &idx), 4);

	/* a view cannot be built on a ring that is already inconsistent */
	sq->head.v = 0;
	sq->tail.v = 100;
	CHECK_EQ(shm_sq_cons_init(&e.sqc, r.mem, &r.lay), -EPROTO);
	CHECK_EQ(shm_sq_prod_init(NULL, r.mem, &r.lay), -EINVAL);
	region_free(&r);
}

/* ---- descriptors ----------------------------------------------------------- */

static void test_sqe_copy(void)
{
	struct shm_sqe a, b;
	unsigned char *p = (unsigned char *)&a;

	for (size_t i = 0; i < sizeof(a); i++)
		p[i] = (unsigned char)(i * 7 + 1);
	memset(&b, 0, sizeof(b));
	shm_sqe_copy(&b, &a);
	CHECK(memcmp(&a, &b, sizeof(a)) == 0);
}

#define ARENA (64u << 10)

static struct shm_sqe sqe_of(uint8_t op)
{
	struct shm_sqe s = { .op = op, .session = 3, .user_data = 42 };

	switch (op) {
	case SHM_OP_NOP:
	case SHM_OP_CANCEL:
		s.session = 0;
		break;
	case SHM_OP_SESSION_OPEN:
		s.session = 0;
		s.aux_off = 1001; /* names need no alignment */
		s.aux_len = 11;
		s.arg[0] = SHM_OPEN_F_CREATE;
		break;
	case SHM_OP_SESSION_CLOSE:
		s.arg[0] = SHM_CLOSE_F_DROP;
		break;
	case SHM_OP_APPEND:
		s.in_off = 64;
		s.in_len = 4 * 10;
		break;
	case SHM_OP_SCORE:
		s.in_off = 0;
		s.in_len = 4 * 5;
		s.aux_off = 128;
		s.aux_len = 4 * 3;
		s.out_off = 256;
		s.out_cap = 4 * 3;
		s.arg[0] = SHM_SCORE_F_LOGPROB;
		break;
	case SHM_OP_GENERATE:
		s.out_off = 1024;
		s.out_cap = 4 * 16;
		s.arg[0] = 16;
		s.arg[1] = 700;
		s.arg[2] = 40;
		s.arg[3] = 1234;
		break;
	case SHM_OP_TRUNCATE:
		s.arg[0] = 17;
		break;
	}
	return s;
}

static void test_sqe_validate(void)
{
	struct shm_sqe s;

	for (uint8_t op = 0; op < SHM_OP__MAX; op++) {
		s = sqe_of(op);
		CHECK_EQ(shm_sqe_validate(&s, ARENA), op == SHM_OP_FORK ? -EOPNOTSUPP : 0);
	}

	/* generic fields */
	s = sqe_of(SHM_OP_APPEND); s.op = SHM_OP__MAX;  CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_APPEND); s.op = 255;          CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_APPEND); s.flags = 0x80;      CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_APPEND); s.flags = SHM_SQE_F_LATENCY; CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_APPEND); s.reserved0 = 1;     CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_APPEND); s.deadline_ns = 1;   CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_APPEND); s.flags = SHM_SQE_F_BULK; CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_APPEND); s.flags = SHM_SQE_F_BULK | SHM_SQE_F_LATENCY;
	CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_CANCEL); s.arg[1] = 7;        CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_CANCEL); s.arg[2] = 7;        CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_CANCEL); s.deadline_ns = 7;   CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_CANCEL); s.session = 7;       CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_APPEND); s.arg[0] = 1;        CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SCORE);  s.arg[1] = 1;        CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_NOP);    s.session = 1;       CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_NOP);    s.in_off = 4; s.in_len = 4; CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	CHECK_EQ(shm_sqe_validate(NULL, ARENA), -EINVAL);

	/* ranges: zero where a range is required, offset without a length */
	s = sqe_of(SHM_OP_APPEND); s.in_len = 0;        CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_APPEND); s.in_off = 0; s.in_len = 0; CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SCORE);  s.aux_off = 0; s.aux_len = 0; CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SCORE);  s.in_off = 0; s.in_len = 0;  CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_SCORE);  s.in_off = 8; s.in_len = 0;  CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_GENERATE); s.out_cap = 0; s.out_off = 0; CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	/* alignment */
	s = sqe_of(SHM_OP_APPEND); s.in_off = 66;       CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_APPEND); s.in_len = 41;       CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SCORE);  s.aux_off = 130;     CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	/* inside the arena: exactly to the end is fine, one granule more is not */
	s = sqe_of(SHM_OP_APPEND); s.in_off = ARENA - 40; CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_APPEND); s.in_off = ARENA - 36; CHECK_EQ(shm_sqe_validate(&s, ARENA), -ERANGE);
	s = sqe_of(SHM_OP_APPEND); s.in_off = ARENA;      CHECK_EQ(shm_sqe_validate(&s, ARENA), -ERANGE);
	s = sqe_of(SHM_OP_SCORE);  s.out_off = ARENA - 8; CHECK_EQ(shm_sqe_validate(&s, ARENA), -ERANGE);
	s = sqe_of(SHM_OP_SCORE);  s.aux_len = ARENA;     s.out_cap = ARENA; s.aux_off = 0; s.out_off = 0;
	CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	/* off + len overflows 32 bits: must not wrap to a small end */
	s = sqe_of(SHM_OP_APPEND); s.in_off = 0xfffffff0u; s.in_len = 0x20;
	CHECK_EQ(shm_sqe_validate(&s, ARENA), -ERANGE);
	s = sqe_of(SHM_OP_APPEND); s.in_off = 0xfffffffcu; s.in_len = 0xfffffffcu;
	CHECK_EQ(shm_sqe_validate(&s, UINT32_MAX), -ERANGE);
	s = sqe_of(SHM_OP_APPEND); s.in_off = 4; s.in_len = 0xfffffffcu;
	CHECK_EQ(shm_sqe_validate(&s, 0xfffffffcu), -ERANGE);
	s = sqe_of(SHM_OP_APPEND); s.in_off = 4; s.in_len = 8;
	CHECK_EQ(shm_sqe_validate(&s, 8), -ERANGE);
	CHECK_EQ(shm_sqe_validate(&s, 12), 0);

	/* per-op rules */
	s = sqe_of(SHM_OP_SESSION_OPEN); s.aux_len = SHM_SESSION_NAME_MAX + 1;
	CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SESSION_OPEN); s.aux_len = SHM_SESSION_NAME_MAX;
	CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_SESSION_OPEN); s.arg[0] = 8;  CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SESSION_OPEN); s.arg[0] = SHM_OPEN_F_BULK; CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_SESSION_OPEN); s.aux_off = 0; s.aux_len = 0;
	CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL); /* flags on an unnamed session */
	s.arg[0] = 0;                                   CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s.arg[0] = SHM_OPEN_F_BULK;                     CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_SESSION_OPEN); s.session = 9; CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SESSION_CLOSE); s.arg[0] = 2; CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SCORE); s.out_cap = 8;        CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_SCORE); s.arg[0] = 2;         CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_GENERATE); s.arg[0] = 0;      CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_GENERATE); s.arg[0] = 17;     CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	/* 4 * 0x40000000 is 0 in 32 bits: the check must be done in 64 */
	s = sqe_of(SHM_OP_GENERATE); s.arg[0] = 0x40000000u; s.out_cap = 4;
	CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_GENERATE); s.in_off = 0; s.in_len = 8; CHECK_EQ(shm_sqe_validate(&s, ARENA), 0);
	s = sqe_of(SHM_OP_GENERATE); s.aux_off = 0; s.aux_len = 4; CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);
	s = sqe_of(SHM_OP_TRUNCATE); s.arg[1] = 1;      CHECK_EQ(shm_sqe_validate(&s, ARENA), -EINVAL);

	CHECK(strcmp(shm_op_name(SHM_OP_APPEND), "append") == 0);
	CHECK(strcmp(shm_op_name(SHM_OP_FORK), "fork") == 0);
	CHECK(strcmp(shm_op_name(200), "?") == 0);
}

int main(void)
{
	test_layout();
	test_region_init_attach();
	test_attach_rejects();
	test_empty_full();
	test_wraparound();
	test_batch();
	test_lying_peers();
	test_sqe_copy();
	test_sqe_validate();
	if (failures) {
		fprintf(stderr, "test_ring: %d check(s) failed\n", failures);
		return 1;
	}
	printf("test_ring: ok\n");
	return 0;
}

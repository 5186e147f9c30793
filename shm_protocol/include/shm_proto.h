/* SPDX-License-Identifier: MIT */
/*
 * The shared-memory contract between hearthd and its clients: region layout,
 * submission and completion descriptors, operation codes and flags, and the
 * setup/validation calls (shm_region.c, shm_sqe.c). The ring fast path is in
 * shm_ring.h, waiting in shm_wait.h. This header is self-contained (no
 * project headers) because client programs build against it.
 *
 * Region layout. One region per client connection: a memfd the daemon creates,
 * sizes, seals and passes over the control socket; both sides map it
 * MAP_SHARED. Offsets are from the start of the region.
 *
 *   0          struct shm_region_hdr                                   512 B
 *                [  0,128) info: magic, version, sizes, offsets (daemon writes
 *                          once, before the fd is passed; read-only after)
 *                [128,256) daemon waitq: the daemon sleeps on it when idle
 *                [256,384) client waitq: the client sleeps on it
 *                [384,512) reserved, zero
 *   sq_off     struct shm_ring_hdr: [0,128) tail (client writes),
 *                                   [128,256) head (daemon writes)    256 B
 *              struct shm_sqe[sq_entries]                      64 B each
 *   cq_off     struct shm_ring_hdr: tail (daemon writes), head (client writes)
 *              struct shm_cqe[cq_entries]                      32 B each
 *   arena_off  arena: arena_size bytes the client owns: token ids in, results
 *              out. 4096-aligned so it can be registered/pinned as pages.
 *   total_size arena_off + arena_size, a multiple of 4096.
 *
 * Every word written by one side and read by the other sits in its own
 * 128-byte block: one cache line plus a guard line, because Intel's adjacent-
 * line prefetcher moves 64-byte lines in pairs and two hot words 64 bytes
 * apart still bounce between cores (DPDK's RTE_CACHE_GUARD, same reason).
 *
 * Ring indices are free-running u32: tail counts entries ever produced, head
 * entries ever consumed, both mod 2^32. used = tail - head (mod 2^32) is in
 * [0, entries]; the slot of index i is i & (entries - 1). entries is a power
 * of two not above SHM_RING_MAX_ENTRIES, so 2^32 is a multiple of it and the
 * wrap of the u32 is invisible. Each side keeps the mask and its own index
 * privately (shm_ring.h) and never re-reads them from the region.
 *
 * Trust. The daemon trusts nothing in the region after it passed the fd: it
 * reads every shared word once into a local, checks it, then uses it; a client
 * that writes garbage gets error completions or is disconnected (-EPROTO from
 * the ring calls). The client trusts the daemon but checks the header once at
 * attach (shm_region_attach_check) so that a wrong fd fails cleanly.
 */
#ifndef SHM_PROTO_H
#define SHM_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- constants ---------------------------------------------------------- */

#define SHM_MAGIC 0x4d485348u /* "HSHM" as little-endian bytes */
#define SHM_VERSION_MAJOR 1u  /* incompatible layout changes */
#define SHM_VERSION_MINOR 1u  /* additions in reserved space; zero means absent
                                * 1: sqe.deadline_ns, SHM_SQE_F_BULK, CANCEL */
#define SHM_VERSION ((SHM_VERSION_MAJOR << 16) | SHM_VERSION_MINOR)

#define SHM_CACHELINE 64u
#define SHM_BLOCK 128u                /* one written-by-one-side block */
#define SHM_PAGE 4096u
#define SHM_RING_MIN_ENTRIES 2u
#define SHM_RING_MAX_ENTRIES 32768u
#define SHM_ARENA_MAX (1u << 30)      /* 1 GiB: offsets and lengths fit u32/s32 */
#define SHM_SESSION_NAME_MAX 255u     /* bytes of a session name (SESSION_OPEN) */

/* ---- operations --------------------------------------------------------- */

/*
 * Ranges: in (in_off, in_len), aux (aux_off, aux_len) and out (out_off,
 * out_cap) are BYTE offsets and BYTE lengths inside the arena. Token ids and
 * label ids are u32 (little-endian, host order), scores are f32: such ranges
 * are 4-byte aligned and a multiple of 4 long (n_tokens = in_len / 4). An
 * unused range is (0, 0). Unused args and all reserved fields are zero. The
 * daemon reads in/aux before it writes out; ranges may overlap.
 *
 * res in the completion is >= 0 on success as listed, else -errno.
 */
enum shm_op {
	/* No ranges, no args. res = 0. Ping / latency probe. */
	SHM_OP_NOP = 0,
	/* session = 0. aux = session name (bytes, no NUL, <= SESSION_NAME_MAX,
	 * any alignment) or (0,0) for a fresh unnamed session. arg0 =
	 * SHM_OPEN_F_*. res = session handle; cqe.pos = its length in tokens. */
	SHM_OP_SESSION_OPEN = 1,
	/* session = handle. arg0 = SHM_CLOSE_F_*. res = 0. */
	SHM_OP_SESSION_CLOSE = 2,
	/* session = handle. in = token ids (required). res = tokens appended;
	 * cqe.pos = new session length. */
	SHM_OP_APPEND = 3,
	/* session = handle. in = token ids to append first (optional). aux =
	 * label token ids (required). out = f32 per label (out_cap >= aux_len).
	 * arg0 = SHM_SCORE_F_*. Probabilities of the labels at the last
	 * position. res = labels scored; cqe.out_len = bytes written. */
	SHM_OP_SCORE = 4,
	/* session = handle. in = prompt tokens to append first (optional).
	 * out = generated token ids (out_cap >= 4 * arg0). arg0 = max new
	 * tokens (>= 1), arg1 = temperature in 1/1000 (0 = greedy), arg2 =
	 * top_k (0 = off), arg3 = seed. Streamed: every completion but the last
	 * has SHM_CQE_F_MORE; res = tokens in this completion, cqe.out_len =
	 * bytes written so far (cumulative), cqe.pos = session length. */
	SHM_OP_GENERATE = 5,
	/* session = handle. arg0 = new length in tokens (<= current). Roll back
	 * a hypothetical event. res = new length. */
	SHM_OP_TRUNCATE = 6,
	/* Reserved: session = source handle, res = new handle sharing the
	 * prefix pages copy-on-write. Rejected with -EOPNOTSUPP for now. */
	SHM_OP_FORK = 7,
	/* session = 0. arg0, arg1 = low and high 32 bits of the user_data of an
	 * earlier request of this connection still queued or running. res = 0
	 * when it was cancelled (it completes with -ECANCELED: a queued one
	 * changes nothing; a running GENERATE stops after the tokens already
	 * streamed, which stay in the session; a running APPEND or SCORE is
	 * rolled back), -ENOENT when no such request is in flight. */
	SHM_OP_CANCEL = 8,
	SHM_OP__MAX
};

/* shm_sqe.flags: the request's latency class, overriding its session's
 * (interactive unless opened with SHM_OPEN_F_BULK). Not both. */
#define SHM_SQE_F_LATENCY   (1u << 0) /* interactive: never waits behind a long prefill */
#define SHM_SQE_F_BULK      (1u << 1) /* bulk: fills what interactive work leaves */
#define SHM_SQE_F__ALL      (SHM_SQE_F_LATENCY | SHM_SQE_F_BULK)

/* SESSION_OPEN arg0 */
#define SHM_OPEN_F_CREATE   (1u << 0) /* named: create if missing */
#define SHM_OPEN_F_EXCL     (1u << 1) /* named: -EEXIST if present */
#define SHM_OPEN_F_BULK     (1u << 2) /* the session's requests are bulk by default */
#define SHM_OPEN_F__ALL     (SHM_OPEN_F_CREATE | SHM_OPEN_F_EXCL | SHM_OPEN_F_BULK)
/* SESSION_CLOSE arg0 */
#define SHM_CLOSE_F_DROP    (1u << 0) /* named: delete its durable state too */
#define SHM_CLOSE_F__ALL    (SHM_CLOSE_F_DROP)
/* SCORE arg0 */
#define SHM_SCORE_F_LOGPROB (1u << 0) /* log-probabilities, not probabilities */
#define SHM_SCORE_F__ALL    (SHM_SCORE_F_LOGPROB)

/* shm_cqe.flags */
#define SHM_CQE_F_MORE      (1u << 0) /* more completions follow for this user_data */

/* ---- descriptors ---------------------------------------------------------- */

/* Submission descriptor, written by the client into an SQ slot. */
struct shm_sqe {
	uint8_t op;          /* enum shm_op */
	uint8_t flags;       /* SHM_SQE_F_* */
	uint16_t reserved0;  /* zero */
	uint32_t session;    /* session handle (0 for NOP, SESSION_OPEN) */
	uint64_t user_data;  /* echoed in every completion */
	uint32_t in_off;     /* bytes */
	uint32_t in_len;     /* bytes */
	uint32_t out_off;    /* bytes */
	uint32_t out_cap;    /* bytes */
	uint32_t aux_off;    /* bytes */
	uint32_t aux_len;    /* bytes */
	uint32_t arg[4];     /* per op, see enum shm_op; unused ones zero */
	uint64_t deadline_ns; /* CLOCK_MONOTONIC ns: a request not started by then
			       * completes with -ETIMEDOUT; 0: none */
};

/* Completion, written by the daemon into a CQ slot. */
struct shm_cqe {
	uint64_t user_data;  /* from the submission */
	int32_t res;         /* >= 0 per op, or -errno */
	uint32_t flags;      /* SHM_CQE_F_* */
	uint32_t out_len;    /* bytes written into the out range */
	uint32_t pos;        /* session length in tokens after the op */
	uint64_t reserved;   /* zero */
};

/* ---- region header -------------------------------------------------------- */

/* One wait queue: the side that sleeps on it owns need_wakeup; the other side
 * bumps futex and calls FUTEX_WAKE. Protocol in shm_wait.h. */
struct shm_waitq {
	uint32_t futex;       /* wake sequence: wakers add 1, then FUTEX_WAKE */
	uint32_t need_wakeup; /* SHM_WAIT_F_* the sleeper waits for */
	uint32_t shutdown;    /* nonzero: the peer is gone; waits end */
	uint32_t reserved;
	uint8_t pad[SHM_BLOCK - 16];
} __attribute__((aligned(SHM_BLOCK)));

/* need_wakeup bits: what a sleeper waits for. Each bit has one sleeper. */
#define SHM_WAIT_F_SQ_DATA  (1u << 0) /* daemon: SQ not empty */
#define SHM_WAIT_F_CQ_SPACE (1u << 1) /* daemon: CQ not full */
#define SHM_WAIT_F_CQ_DATA  (1u << 2) /* client: CQ not empty */
#define SHM_WAIT_F_SQ_SPACE (1u << 3) /* client: SQ not full */

struct shm_region_info {
	uint32_t magic;        /* SHM_MAGIC, stored last by shm_region_init */
	uint32_t version;      /* SHM_VERSION */
	uint32_t hdr_size;     /* sizeof(struct shm_region_hdr) */
	uint32_t flags;        /* zero for now */
	uint64_t total_size;   /* bytes of the region */
	uint64_t sq_off;       /* struct shm_ring_hdr of the SQ */
	uint64_t cq_off;       /* struct shm_ring_hdr of the CQ */
	uint64_t arena_off;
	uint32_t arena_size;
	uint32_t sq_entries;   /* power of two */
	uint32_t cq_entries;   /* power of two */
	uint16_t sqe_size;     /* sizeof(struct shm_sqe) */
	uint16_t cqe_size;     /* sizeof(struct shm_cqe) */
	uint8_t pad[SHM_BLOCK - 64];
} __attribute__((aligned(SHM_BLOCK)));

struct shm_region_hdr {
	struct shm_region_info info;
	struct shm_waitq daemon_wq;  /* daemon sleeps: client wakes */
	struct shm_waitq client_wq;  /* client sleeps: daemon wakes */
	uint8_t reserved[SHM_BLOCK];
};

/* One shared index in its own block. */
struct shm_ring_index {
	uint32_t v;
	uint8_t pad[SHM_BLOCK - 4];
} __attribute__((aligned(SHM_BLOCK)));

struct shm_ring_hdr {
	struct shm_ring_index tail;  /* producer writes, consumer reads */
	struct shm_ring_index head;  /* consumer writes, producer reads */
	/* entries follow, 64-aligned */
};

/* Layout facts a peer depends on (DPDK RTE_BUILD_BUG_ON). */
#ifdef __cplusplus
#define SHM_BUILD_ASSERT(c, msg) static_assert(c, msg)
#else
#define SHM_BUILD_ASSERT(c, msg) _Static_assert(c, msg)
#endif
SHM_BUILD_ASSERT(sizeof(struct shm_sqe) == 64, "sqe is one cache line");
SHM_BUILD_ASSERT(offsetof(struct shm_sqe, session) == 4, "sqe.session");
SHM_BUILD_ASSERT(offsetof(struct shm_sqe, user_data) == 8, "sqe.user_data");
SHM_BUILD_ASSERT(offsetof(struct shm_sqe, in_off) == 16, "sqe.in_off");
SHM_BUILD_ASSERT(offsetof(struct shm_sqe, out_off) == 24, "sqe.out_off");
SHM_BUILD_ASSERT(offsetof(struct shm_sqe, aux_off) == 32, "sqe.aux_off");
SHM_BUILD_ASSERT(offsetof(struct shm_sqe, arg) == 40, "sqe.arg");
SHM_BUILD_ASSERT(offsetof(struct shm_sqe, deadline_ns) == 56, "sqe.deadline_ns");
SHM_BUILD_ASSERT(sizeof(struct shm_cqe) == 32, "two cqes per cache line");
SHM_BUILD_ASSERT(offsetof(struct shm_cqe, res) == 8, "cqe.res");
SHM_BUILD_ASSERT(offsetof(struct shm_cqe, flags) == 12, "cqe.flags");
SHM_BUILD_ASSERT(offsetof(struct shm_cqe, out_len) == 16, "cqe.out_len");
SHM_BUILD_ASSERT(offsetof(struct shm_cqe, pos) == 20, "cqe.pos");
SHM_BUILD_ASSERT(sizeof(struct shm_waitq) == SHM_BLOCK, "waitq block");
SHM_BUILD_ASSERT(offsetof(struct shm_waitq, need_wakeup) == 4, "waitq.need_wakeup");
SHM_BUILD_ASSERT(sizeof(struct shm_region_info) == SHM_BLOCK, "info block");
SHM_BUILD_ASSERT(offsetof(struct shm_region_info, total_size) == 16, "info.total_size");
SHM_BUILD_ASSERT(offsetof(struct shm_region_info, arena_size) == 48, "info.arena_size");
SHM_BUILD_ASSERT(offsetof(struct shm_region_info, cqe_size) == 62, "info.cqe_size");
SHM_BUILD_ASSERT(offsetof(struct shm_region_hdr, daemon_wq) == 128, "hdr.daemon_wq");
SHM_BUILD_ASSERT(offsetof(struct shm_region_hdr, client_wq) == 256, "hdr.client_wq");
SHM_BUILD_ASSERT(sizeof(struct shm_region_hdr) == 512, "hdr size");
SHM_BUILD_ASSERT(offsetof(struct shm_ring_hdr, head) == SHM_BLOCK, "ring.head");
SHM_BUILD_ASSERT(sizeof(struct shm_ring_hdr) == 2 * SHM_BLOCK, "ring hdr size");

/* ---- setup and validation (shm_region.c, shm_sqe.c) ----------------------- */

/*
 * Where everything is. The daemon computes it (shm_layout_compute) and keeps
 * it private; a client gets it from shm_region_attach_check. Ring views are
 * built from a layout, never from the shared header.
 */
struct shm_layout {
	uint64_t total_size;
	uint64_t sq_off, cq_off, arena_off;
	uint32_t sq_entries, cq_entries;
	uint32_t arena_size;
};

/*
 * Compute the layout for the given sizes. sq_entries and cq_entries: powers
 * of two in [SHM_RING_MIN_ENTRIES, SHM_RING_MAX_ENTRIES]; arena_size: a
 * nonzero multiple of SHM_PAGE, at most SHM_ARENA_MAX. Returns 0 and fills
 * *ret, or -EINVAL. Pure function, thread-safe.
 */
int shm_layout_compute(uint32_t sq_entries, uint32_t cq_entries, uint32_t arena_size,
		       struct shm_layout *ret);

/* Bytes of memory a region of these sizes needs (a multiple of SHM_PAGE), or
 * -EINVAL. Call before shm_region_init (DPDK rte_ring_get_memsize). */
ssize_t shm_region_memsize(uint32_t sq_entries, uint32_t cq_entries, uint32_t arena_size);

/*
 * Lay out a region in caller-owned memory of len bytes (>= lay->total_size,
 * 128-byte aligned; a fresh mmap is page-aligned): zero the header and rings,
 * fill the header, indices at 0, magic stored last with release. The arena is
 * left as it is (a fresh memfd reads as zeros). Returns 0, or -EINVAL for a
 * NULL/misaligned/too small memory or a layout shm_layout_compute would not
 * make. Not thread-safe against users of the same memory: call before sharing.
 */
int shm_region_init(void *mem, size_t len, const struct shm_layout *lay);

/*
 * Check a region a client was given (mapped, len bytes) and fill *ret with its
 * layout: magic, major version, header and descriptor sizes, total_size <=
 * len, power-of-two ring sizes in range, offsets aligned, every part inside
 * the mapping and after the header, parts not overlapping, and for both rings
 * tail - head <= entries. Arithmetic is 64-bit and overflow-checked. Returns
 * 0, -EINVAL (malformed), -EPROTONOSUPPORT (other major version) or -EBADMSG
 * (bad magic). *ret is written only on success. Reads the header once into a
 * private copy, so it is safe against a concurrent writer (the result is then
 * merely one of the values that were written).
 */
int shm_region_attach_check(const void *mem, size_t len, struct shm_layout *ret);

/* Pointers into a region whose layout is known (no checks). */
static inline struct shm_region_hdr *shm_region_hdr(void *mem)
{
	return (struct shm_region_hdr *)mem;
}
static inline struct shm_ring_hdr *shm_region_sq(void *mem, const struct shm_layout *lay)
{
	return (struct shm_ring_hdr *)((char *)mem + lay->sq_off);
}
static inline struct shm_ring_hdr *shm_region_cq(void *mem, const struct shm_layout *lay)
{
	return (struct shm_ring_hdr *)((char *)mem + lay->cq_off);
}
static inline void *shm_region_arena(void *mem, const struct shm_layout *lay)
{
	return (char *)mem + lay->arena_off;
}

/*
 * Validate a descriptor the daemon has copied to private memory (see
 * shm_sqe_copy in shm_ring.h: never validate the shared slot, the client can
 * change it after the check). Checks the op, flags, reserved fields, the args
 * the op does not use, which ranges the op needs, alignment and that every
 * range lies inside an arena of arena_size bytes (computed in 64 bits, so no
 * off + len overflow). Session ownership is the daemon's check. Returns 0,
 * -EINVAL (malformed), -ERANGE (a range outside the arena) or -EOPNOTSUPP
 * (reserved op). Pure function, thread-safe.
 */
int shm_sqe_validate(const struct shm_sqe *sqe, uint32_t arena_size);

/* Name of an op for logs and dumps ("append"), or "?" for an unknown one. */
const char *shm_op_name(unsigned int op);

#ifdef __cplusplus
}
#endif

#endif

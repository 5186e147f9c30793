/* SPDX-License-Identifier: MIT */
/*
 * Tier L2 of the KV cache: a preallocated file (on NVMe, opened O_DIRECT) cut
 * into slots of one KV page each, a slot allocator, and a pager that moves
 * pages between host memory (a page-aligned staging area owned by the store)
 * and slots. Two pagers behind one table: io_uring (registered buffers and
 * file, batched submissions) and a pread/pwrite thread pool, chosen
 * automatically (io_uring when it can be set up, else the pool; the caller
 * logs kv_l2_pager_name() and kv_l2_notes() once) or forced by the caller.
 *
 * Each page written carries an xxh3-64 checksum computed over its page_bytes
 * (not the slot padding); reads verify it and report -EBADMSG for a page that
 * does not match.
 *
 * Threading: a store is driven by one thread (the reactor): every function
 * below is for that thread. Completions are reaped with kv_l2_poll() or
 * kv_l2_wait(). The thread pool's workers are internal.
 * Errors: 0 or -errno. ENOSPC/EFBIG/EIO from the file system are returned in
 * the completion of the page they hit; nothing is retried silently (a short
 * transfer is continued for the rest of the slot; one that makes no progress
 * is -EIO).
 */
#ifndef KV_L2_H
#define KV_L2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kv_l2;

enum kv_l2_pager {
	KV_L2_PAGER_AUTO = 0,
	KV_L2_PAGER_URING = 1,
	KV_L2_PAGER_THREADS = 2,
};

/* Open without O_DIRECT (through the page cache). */
#define KV_L2_F_BUFFERED       (1u << 0)
/* Fail (EINVAL) where the file system refuses O_DIRECT, instead of falling
 * back to buffered I/O with a note. */
#define KV_L2_F_REQUIRE_DIRECT (1u << 1)

#define KV_L2_DEFAULT_QUEUE_DEPTH 64u
#define KV_L2_DEFAULT_THREADS     4u
#define KV_L2_MAX_QUEUE_DEPTH     4096u
#define KV_L2_MAX_THREADS         256u
#define KV_L2_MAX_PAGE_BYTES      (1ull << 30) /* io_uring's limit per registered buffer */

/* Zero-initialised fields take their defaults. */
struct kv_l2_params {
	const char *path;        /* the L2 file; created (0600) if missing */
	uint64_t file_bytes;     /* size to preallocate (fallocate); rounded down to slots */
	size_t page_bytes;       /* one KV page, 1 .. KV_L2_MAX_PAGE_BYTES */
	uint32_t staging_pages;  /* staging buffers (0: queue_depth) */
	uint32_t queue_depth;    /* most transfers in flight (0: 64) */
	uint32_t threads;        /* thread-pool workers (0: 4) */
	enum kv_l2_pager pager;
	uint32_t flags;          /* KV_L2_F_* */
};

/* Slot size: page_bytes rounded up to 4096 (O_DIRECT alignment); 0 for 0 or
 * on overflow. */
size_t kv_l2_slot_bytes(size_t page_bytes);

/*
 * Open or create the file, lock it (flock: one store per file; waits up to
 * 2 s for a holder that is going away, such as a killed process whose
 * io_uring still references the file), preallocate, set up staging and the
 * pager. A file larger than needed is kept as it is; existing slots keep
 * their bytes (restore them with kv_l2_slot_mark_used). A process with an
 * RLIMIT_FSIZE should ignore SIGXFSZ (its default action kills). A file
 * created here that cannot be preallocated is removed again.
 * Returns NULL with errno set and a reason in err (which names the path and,
 * for ENOSPC/EFBIG, the size asked for): EINVAL (parameters; O_DIRECT refused
 * with KV_L2_F_REQUIRE_DIRECT), EBUSY (locked by another store), ENOSPC,
 * EFBIG, ENOTSUP (io_uring forced but not built), the io_uring setup error
 * when forced, ENOMEM.
 */
struct kv_l2 *kv_l2_open(const struct kv_l2_params *p, char *err, size_t errlen);
/* Waits for in-flight I/O (discarding its completions), then frees.
 * Accepts NULL. */
void kv_l2_close(struct kv_l2 *l2);
const char *kv_l2_pager_name(const struct kv_l2 *l2); /* "io_uring" or "threads" */
/* Whether O_DIRECT is in effect (it may have been refused by the file system). */
bool kv_l2_is_direct(const struct kv_l2 *l2);
/* What open chose and why, for the caller to log once ("" when nothing to
 * say): O_DIRECT refused, fallocate unsupported, io_uring unavailable,
 * buffers not registered. Valid until close. */
const char *kv_l2_notes(const struct kv_l2 *l2);
uint32_t kv_l2_n_slots(const struct kv_l2 *l2);
uint32_t kv_l2_n_free_slots(const struct kv_l2 *l2);
size_t kv_l2_page_bytes(const struct kv_l2 *l2);
/* Transfers queued and not yet reaped. */
uint32_t kv_l2_in_flight(const struct kv_l2 *l2);

/* Slot allocator (a bitmap searched next-fit from the last slot handed out).
 * alloc returns a slot index or -ENOSPC. free returns 0, or -EINVAL for a
 * slot out of range or not in use. mark_used is for restoring slots named by
 * a manifest after a restart: 0, -EINVAL (out of range), -EEXIST (in use). */
int64_t kv_l2_slot_alloc(struct kv_l2 *l2);
int kv_l2_slot_free(struct kv_l2 *l2, uint32_t slot);
int kv_l2_slot_mark_used(struct kv_l2 *l2, uint32_t slot);

/* Staging buffers: slot_bytes each (page_bytes usable; the padding is zeroed
 * before a write), 4096-aligned host memory owned by the store. get returns
 * one or NULL when all are held or in flight; put gives one back: 0, -EINVAL
 * (not a staging buffer, or not held), -EBUSY (its transfer is in flight). */
void *kv_l2_staging_get(struct kv_l2 *l2);
int kv_l2_staging_put(struct kv_l2 *l2, void *buf);
/* The whole staging area (one mapping, page-aligned), e.g. for the caller to
 * register it with a GPU runtime once. */
void *kv_l2_staging_area(const struct kv_l2 *l2, size_t *ret_bytes);

/* One page transfer; tag is returned with its completion. */
struct kv_l2_io {
	uint64_t tag;
	void *buf;          /* a staging buffer the caller holds */
	uint32_t slot;
	uint64_t checksum;  /* write: filled by the store; read: the expected value */
	int res;            /* completion: 0, -EBADMSG (checksum), or -errno */
};

/*
 * Queue writes / reads of n pages, batched into one submission. Returns how
 * many were queued, from the front of ios (fewer when the queue is full; 0
 * when it is), or -errno with nothing queued: -EINVAL for a buffer that is
 * not a held staging buffer (or appears twice) or a slot out of range.
 * A write's checksum is computed here, before submission: it is stored in
 * ios[i].checksum and returned in the completion. From queueing until its
 * completion is reaped a buffer belongs to the store: do not touch it.
 */
int kv_l2_write(struct kv_l2 *l2, struct kv_l2_io *ios, uint32_t n);
int kv_l2_read(struct kv_l2 *l2, struct kv_l2_io *ios, uint32_t n);
/* Reap up to max completions without waiting (poll) or waiting for at least
 * min (wait; fewer only when fewer are in flight). Returns the number reaped
 * into out, or -errno. A reaped io's buffer is held by the caller again. */
int kv_l2_poll(struct kv_l2 *l2, struct kv_l2_io *out, uint32_t max);
int kv_l2_wait(struct kv_l2 *l2, struct kv_l2_io *out, uint32_t min, uint32_t max);
/* A file descriptor (eventfd) that becomes readable when completions are
 * ready, for an epoll-driven caller; poll/wait clear it, and set it again
 * when they leave completions behind. */
int kv_l2_event_fd(const struct kv_l2 *l2);
/* fdatasync the file: pages whose writes completed before it are durable
 * after it. */
int kv_l2_sync(struct kv_l2 *l2);

uint64_t kv_l2_checksum(const void *buf, size_t len); /* xxh3-64 */

#endif

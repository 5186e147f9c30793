/* SPDX-License-Identifier: MIT */
/*
 * What the L2 store shares with its pagers and nobody else: the store itself,
 * one request per transfer in flight, and the table of pager operations
 * (io_uring in l2_uring.c, thread pool in l2_threads.c).
 */
#ifndef KV_L2_INTERNAL_H
#define KV_L2_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hearth_config.h"
#include "kv_l2.h"

/* One transfer of one slot. Owned by the driving thread except while a
 * thread-pool worker holds it (handed over under the pool's lock). */
struct l2_req {
	struct kv_l2_io io;  /* as queued; io.res is set at completion */
	uint64_t off;        /* file offset of the slot */
	size_t done;         /* bytes transferred so far (short transfers) */
	uint32_t staging;    /* index of io.buf in the staging area */
	uint8_t retries;     /* -EAGAIN resubmissions (io_uring) */
	bool write;
};

struct l2_pager_ops {
	const char *name;
	/* Set up l2->pager. May fill l2's notes. Returns 0 or -errno with a
	 * reason in err. */
	int (*init)(struct kv_l2 *l2, char *err, size_t errlen);
	/* Tear down; nothing is in flight. Accepts a pager whose init failed. */
	void (*fini)(struct kv_l2 *l2);
	/* Start n prepared requests as one batch. All or nothing: 0 or -errno. */
	int (*submit)(struct kv_l2 *l2, struct l2_req *const *reqs, uint32_t n);
	/* Reap finished requests into out through l2_req_retire(), waiting until
	 * at least min (<= in flight) are reaped. Returns the count or -errno. */
	int (*reap)(struct kv_l2 *l2, struct kv_l2_io *out, uint32_t min, uint32_t max);
};

enum l2_staging_state { L2_STAGING_FREE = 0, L2_STAGING_HELD, L2_STAGING_IN_FLIGHT };

struct kv_l2 {
	const struct l2_pager_ops *ops;
	void *pager;             /* the pager's own state */
	int fd;
	int event_fd;
	bool direct;
	char *path;
	size_t page_bytes, slot_bytes;

	/* slots: bit set = in use; bits past n_slots are set for good */
	uint32_t n_slots, n_free_slots, slot_cursor, n_words;
	uint64_t *slot_bits;

	/* staging: one mapping of staging_pages * slot_bytes */
	uint8_t *staging;
	size_t staging_bytes;
	uint32_t staging_pages, n_staging_free;
	uint8_t *staging_state;  /* enum l2_staging_state */
	uint32_t *staging_free;  /* stack of free indices */

	/* requests: queue_depth of them, a free stack, a scratch batch */
	uint32_t queue_depth, threads, n_req_free;
	struct l2_req *reqs;
	struct l2_req **req_free;
	struct l2_req **batch;

	char notes[512];
};

/* Append a note for kv_l2_notes() ("; "-separated). */
void l2_note(struct kv_l2 *l2, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A transfer ended with res (bytes of the slot done, or -errno): set
 * io.res, verifying a read's checksum. Called once per request, from any
 * thread (it touches only the request and immutable store fields). */
void l2_req_complete(const struct kv_l2 *l2, struct l2_req *r, int res);

/* Hand a completed request back to the caller as *out and recycle it.
 * Driving thread only. */
void l2_req_retire(struct kv_l2 *l2, struct l2_req *r, struct kv_l2_io *out);

/* Full-slot pread/pwrite, continuing short transfers: 0 or -errno (-EIO when
 * a transfer makes no progress). */
int l2_pio(const struct kv_l2 *l2, struct l2_req *r);

extern const struct l2_pager_ops l2_threads_ops;
#if HEARTH_HAVE_IO_URING
extern const struct l2_pager_ops l2_uring_ops;
#endif

#endif

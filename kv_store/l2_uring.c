/* SPDX-License-Identifier: MIT */
/*
 * io_uring pager: one ring of queue_depth entries, the L2 file registered as
 * fixed file 0 and each staging buffer as fixed buffer i, so a transfer is
 * one READ_FIXED/WRITE_FIXED SQE with IOSQE_FIXED_FILE and no per-I/O page
 * pinning or fd lookup. A batch is prepared whole and submitted with one
 * io_uring_enter. CQEs map back to their request through user_data; a short
 * transfer is resubmitted for the rest of the slot, one that makes no
 * progress is -EIO. Reads are verified at reap, on the driving thread.
 */
#include <assert.h>
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "hr_common.h"
#include "l2_internal.h"

#define L2_URING_MAX_RETRIES 8 /* -EAGAIN resubmissions of one request */

struct l2_uring {
	struct io_uring ring;
	bool fixed_bufs; /* staging registered; else plain READ/WRITE */
};

static void uring_fini(struct kv_l2 *l2)
{
	struct l2_uring *u = l2->pager;

	if (!u)
		return;
	/* Exiting the ring unregisters the buffers and file. */
	io_uring_queue_exit(&u->ring);
	free(u);
	l2->pager = NULL;
}

static int uring_register_staging(struct kv_l2 *l2, struct l2_uring *u)
{
	struct iovec *iov = calloc(l2->staging_pages, sizeof(*iov));
	int ret;

	if (!iov)
		return -ENOMEM;
	for (uint32_t i = 0; i < l2->staging_pages; i++) {
		iov[i].iov_base = l2->staging + (size_t)i * l2->slot_bytes;
		iov[i].iov_len = l2->slot_bytes;
	}
	ret = io_uring_register_buffers(&u->ring, iov, l2->staging_pages);
	free(iov);
	return ret;
}

static int uring_init(struct kv_l2 *l2, char *err, size_t errlen)
{
	struct l2_uring *u = calloc(1, sizeof(*u));
	const char *what;
	int ret;

	if (!u)
		return -ENOMEM;
	/* In flight <= queue_depth = SQ entries, so an SQE is always there;
	 * the CQ (twice the SQ) never overflows. */
	ret = io_uring_queue_init(l2->queue_depth, &u->ring, 0);
	if (ret < 0) {
		free(u);
		what = "io_uring_queue_init";
		goto fail;
	}
	l2->pager = u;
	what = "io_uring_register_files";
	if ((ret = io_uring_register_files(&u->ring, &l2->fd, 1)) < 0)
		goto fail_exit;
	what = "io_uring_register_eventfd";
	if ((ret = io_uring_register_eventfd(&u->ring, l2->event_fd)) < 0)
		goto fail_exit;
	/* Registration pins the staging area and is charged to RLIMIT_MEMLOCK
	 * for unprivileged users; where that is too small, plain READ/WRITE
	 * still work (pinning per I/O). */
	ret = uring_register_staging(l2, u);
	u->fixed_bufs = ret == 0;
	if (ret < 0)
		l2_note(l2, "io_uring: staging not registered (%s, %zu bytes; see RLIMIT_MEMLOCK): "
			"unregistered buffers", strerror(-ret), l2->staging_bytes);
	return 0;

fail_exit:
	uring_fini(l2);
fail:
	if (err && errlen)
		snprintf(err, errlen, "kv_l2: %s: %s: %s", l2->path, what, strerror(-ret));
	return ret;
}

/* Prepare r's (remaining) transfer; an SQE is always available (see init). */
static void uring_prep(struct kv_l2 *l2, struct l2_uring *u, struct l2_req *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	uint8_t *buf = (uint8_t *)r->io.buf + r->done;
	unsigned len = (unsigned)(l2->slot_bytes - r->done);
	uint64_t off = r->off + r->done;

	assert(sqe);
	if (u->fixed_bufs && r->write)
		io_uring_prep_write_fixed(sqe, 0, buf, len, off, (int)r->staging);
	else if (u->fixed_bufs)
		io_uring_prep_read_fixed(sqe, 0, buf, len, off, (int)r->staging);
	else if (r->write)
		io_uring_prep_write(sqe, 0, buf, len, off);
	else
		io_uring_prep_read(sqe, 0, buf, len, off);
	io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
	io_uring_sqe_set_data(sqe, r);
}

/* Push prepared SQEs to the kernel, waiting for want CQEs. Errors that only
 * mean "later" leave the SQEs in the ring for the next call. */
static int uring_enter(struct l2_uring *u, unsigned want)
{
	int ret;

	do
		ret = io_uring_submit_and_wait(&u->ring, want);
	while (ret == -EINTR);
	if (ret == -EAGAIN || ret == -EBUSY)
		ret = 0;
	return ret < 0 ? ret : 0;
}

static int uring_submit(struct kv_l2 *l2, struct l2_req *const *reqs, uint32_t n)
{
	struct l2_uring *u = l2->pager;

	for (uint32_t i = 0; i < n; i++)
		uring_prep(l2, u, reqs[i]);
	/* Once prepared the SQEs cannot be taken back: on a hard error they
	 * stay queued and the error comes back from the next reap. */
	(void)uring_enter(u, 0);
	return 0;
}

/* Handle one CQE: true when its request is finished, false when it was
 * resubmitted. */
static bool uring_cqe(struct kv_l2 *l2, struct l2_uring *u, struct l2_req *r, int res)
{
	if (res == -EAGAIN && r->retries < L2_URING_MAX_RETRIES) {
		r->retries++;
		uring_prep(l2, u, r);
		return false;
	}
	if (res > 0 && r->done + (size_t)res < l2->slot_bytes) {
		r->done += (size_t)res;
		uring_prep(l2, u, r);
		return false;
	}
	if (res == 0)
		res = -EIO; /* no progress: past the end of the file */
	l2_req_complete(l2, r, res < 0 ? res : 0);
	return true;
}

static int uring_reap(struct kv_l2 *l2, struct kv_l2_io *out, uint32_t min, uint32_t max)
{
	struct l2_uring *u = l2->pager;
	struct io_uring_cqe *cqes[32];
	uint32_t n = 0;
	int ret;

	while (n < max) {
		unsigned k = io_uring_peek_batch_cqe(&u->ring, cqes,
						     HR_MIN(HR_ARRAY_SIZE(cqes), max - n));

		for (unsigned i = 0; i < k; i++) {
			struct l2_req *r = io_uring_cqe_get_data(cqes[i]);

			if (uring_cqe(l2, u, r, cqes[i]->res))
				l2_req_retire(l2, r, &out[n++]);
		}
		io_uring_cq_advance(&u->ring, k);
		if (k)
			continue;
		/* Nothing ready: push resubmissions, and wait if still short
		 * of min. */
		if (n >= min && !io_uring_sq_ready(&u->ring))
			break;
		ret = uring_enter(u, n < min ? min - n : 0);
		if (ret < 0)
			return n ? (int)n : ret;
		if (n >= min && !io_uring_cq_ready(&u->ring))
			break;
	}
	/* Leaving with max reaped: resubmissions must not wait for the next
	 * call, which an epoll caller makes only after a CQE. */
	if (io_uring_sq_ready(&u->ring) && (ret = uring_enter(u, 0)) < 0 && !n)
		return ret;
	return (int)n;
}

const struct l2_pager_ops l2_uring_ops = {
	.name = "io_uring",
	.init = uring_init,
	.fini = uring_fini,
	.submit = uring_submit,
	.reap = uring_reap,
};

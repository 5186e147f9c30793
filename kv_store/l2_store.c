/* SPDX-License-Identifier: MIT */
/*
 * L2 store: the file (open, lock, preallocate, O_DIRECT detection), the slot
 * bitmap, the staging area, checksums, and the calls that validate a batch
 * and hand it to the pager chosen at open (l2_uring.c or l2_threads.c).
 */
#define _GNU_SOURCE /* O_DIRECT, fallocate */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "hr_common.h"
#include "l2_internal.h"

#define L2_ALIGN 4096u
#define L2_LOCK_WAIT_MS 2000u

static void l2_errf(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void l2_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void l2_note(struct kv_l2 *l2, const char *fmt, ...)
{
	size_t len = strlen(l2->notes);
	va_list ap;

	if (len && len + 2 < sizeof(l2->notes)) {
		memcpy(l2->notes + len, "; ", 3);
		len += 2;
	}
	if (len + 1 >= sizeof(l2->notes))
		return;
	va_start(ap, fmt);
	vsnprintf(l2->notes + len, sizeof(l2->notes) - len, fmt, ap);
	va_end(ap);
}

uint64_t kv_l2_checksum(const void *buf, size_t len)
{
	return XXH3_64bits(buf, len);
}

size_t kv_l2_slot_bytes(size_t page_bytes)
{
	if (!page_bytes || page_bytes > SIZE_MAX - L2_ALIGN)
		return 0;
	return HR_ALIGN_UP(page_bytes, (size_t)L2_ALIGN);
}

/* ---- requests ---------------------------------------------------------- */

void l2_req_complete(const struct kv_l2 *l2, struct l2_req *r, int res)
{
	if (res < 0)
		r->io.res = res;
	else if (!r->write && kv_l2_checksum(r->io.buf, l2->page_bytes) != r->io.checksum)
		r->io.res = -EBADMSG;
	else
		r->io.res = 0;
}

void l2_req_retire(struct kv_l2 *l2, struct l2_req *r, struct kv_l2_io *out)
{
	assert(l2->staging_state[r->staging] == L2_STAGING_IN_FLIGHT);
	l2->staging_state[r->staging] = L2_STAGING_HELD;
	*out = r->io;
	assert(l2->n_req_free < l2->queue_depth);
	l2->req_free[l2->n_req_free++] = r;
}

int l2_pio(const struct kv_l2 *l2, struct l2_req *r)
{
	while (r->done < l2->slot_bytes) {
		uint8_t *p = (uint8_t *)r->io.buf + r->done;
		size_t len = l2->slot_bytes - r->done;
		off_t off = (off_t)(r->off + r->done);
		ssize_t n = r->write ? pwrite(l2->fd, p, len, off) : pread(l2->fd, p, len, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		r->done += (size_t)n;
	}
	return 0;
}

/* ---- slots --------------------------------------------------------------- */

uint32_t kv_l2_n_slots(const struct kv_l2 *l2)
{
	return l2 ? l2->n_slots : 0;
}

uint32_t kv_l2_n_free_slots(const struct kv_l2 *l2)
{
	return l2 ? l2->n_free_slots : 0;
}

static bool slot_test(const struct kv_l2 *l2, uint32_t slot)
{
	return l2->slot_bits[slot / 64] & (1ull << (slot % 64));
}

int64_t kv_l2_slot_alloc(struct kv_l2 *l2)
{
	uint32_t w;
	uint64_t mask;

	if (!l2)
		return -EINVAL;
	if (!l2->n_free_slots)
		return -ENOSPC;
	/* Next-fit: from the cursor to the end, then around to just below it
	 * (the cursor's word is visited twice: its high bits first, its low
	 * bits last). Slots are handed out in file order, which keeps the
	 * pages of one session close together on disk. */
	w = l2->slot_cursor / 64;
	mask = ~0ull << (l2->slot_cursor % 64);
	for (uint32_t i = 0; i <= l2->n_words; i++) {
		uint64_t free_bits = ~l2->slot_bits[w] & mask;

		if (free_bits) {
			uint32_t slot = w * 64 + (uint32_t)__builtin_ctzll(free_bits);

			assert(slot < l2->n_slots);
			l2->slot_bits[w] |= 1ull << (slot % 64);
			l2->n_free_slots--;
			l2->slot_cursor = slot + 1 == l2->n_slots ? 0 : slot + 1;
			return slot;
		}
		w = w + 1 == l2->n_words ? 0 : w + 1;
		mask = ~0ull;
	}
	assert(!"n_free_slots out of step with the bitmap");
	return -ENOSPC;
}

int kv_l2_slot_free(struct kv_l2 *l2, uint32_t slot)
{
	if (!l2 || slot >= l2->n_slots || !slot_test(l2, slot))
		return -EINVAL;
	l2->slot_bits[slot / 64] &= ~(1ull << (slot % 64));
	l2->n_free_slots++;
	return 0;
}

int kv_l2_slot_mark_used(struct kv_l2 *l2, uint32_t slot)
{
	if (!l2 || slot >= l2->n_slots)
		return -EINVAL;
	if (slot_test(l2, slot))
		return -EEXIST;
	l2->slot_bits[slot / 64] |= 1ull << (slot % 64);
	l2->n_free_slots--;
	return 0;
}

/* ---- staging ------------------------------------------------------------- */

/* Index of a staging buffer, or -1 when buf is not the start of one. */
static int64_t staging_index(const struct kv_l2 *l2, const void *buf)
{
	uintptr_t b = (uintptr_t)buf, base = (uintptr_t)l2->staging;

	if (b < base || b >= base + l2->staging_bytes || (b - base) % l2->slot_bytes)
		return -1;
	return (int64_t)((b - base) / l2->slot_bytes);
}

void *kv_l2_staging_get(struct kv_l2 *l2)
{
	uint32_t i;

	if (!l2 || !l2->n_staging_free)
		return NULL;
	i = l2->staging_free[--l2->n_staging_free];
	assert(l2->staging_state[i] == L2_STAGING_FREE);
	l2->staging_state[i] = L2_STAGING_HELD;
	return l2->staging + (size_t)i * l2->slot_bytes;
}

int kv_l2_staging_put(struct kv_l2 *l2, void *buf)
{
	int64_t i;

	if (!l2 || (i = staging_index(l2, buf)) < 0)
		return -EINVAL;
	if (l2->staging_state[i] == L2_STAGING_IN_FLIGHT)
		return -EBUSY;
	if (l2->staging_state[i] != L2_STAGING_HELD)
		return -EINVAL;
	l2->staging_state[i] = L2_STAGING_FREE;
	l2->staging_free[l2->n_staging_free++] = (uint32_t)i;
	return 0;
}

void *kv_l2_staging_area(const struct kv_l2 *l2, size_t *ret_bytes)
{
	if (!l2)
		return NULL;
	if (ret_bytes)
		*ret_bytes = l2->staging_bytes;
	return l2->staging;
}

/* ---- transfers ----------------------------------------------------------- */

uint32_t kv_l2_in_flight(const struct kv_l2 *l2)
{
	return l2 ? l2->queue_depth - l2->n_req_free : 0;
}

static int l2_queue(struct kv_l2 *l2, struct kv_l2_io *ios, uint32_t n, bool write)
{
	uint32_t k, i;
	int ret;

	if (!l2 || (n && !ios))
		return -EINVAL;
	k = HR_MIN(n, l2->n_req_free);
	/* Validate the whole batch first: a bad io queues nothing. Marking the
	 * buffers in flight as we go also catches one named twice. */
	for (i = 0; i < k; i++) {
		int64_t s = staging_index(l2, ios[i].buf);

		if (s < 0 || l2->staging_state[s] != L2_STAGING_HELD || ios[i].slot >= l2->n_slots)
			break;
		l2->staging_state[s] = L2_STAGING_IN_FLIGHT;
	}
	if (i < k) {
		while (i--)
			l2->staging_state[staging_index(l2, ios[i].buf)] = L2_STAGING_HELD;
		return -EINVAL;
	}
	for (i = 0; i < k; i++) {
		struct l2_req *r = l2->req_free[--l2->n_req_free];

		r->io = ios[i];
		r->io.res = 0;
		r->off = (uint64_t)ios[i].slot * l2->slot_bytes;
		r->done = 0;
		r->staging = (uint32_t)staging_index(l2, ios[i].buf);
		r->retries = 0;
		r->write = write;
		if (write) {
			/* Whole slots go to disk: zero the padding so that
			 * nothing stale does. */
			memset((uint8_t *)r->io.buf + l2->page_bytes, 0,
			       l2->slot_bytes - l2->page_bytes);
			r->io.checksum = kv_l2_checksum(r->io.buf, l2->page_bytes);
			ios[i].checksum = r->io.checksum;
		}
		l2->batch[i] = r;
	}
	if (!k)
		return 0;
	ret = l2->ops->submit(l2, l2->batch, k);
	if (ret < 0) {
		for (i = 0; i < k; i++) {
			l2->staging_state[l2->batch[i]->staging] = L2_STAGING_HELD;
			l2->req_free[l2->n_req_free++] = l2->batch[i];
		}
		return ret;
	}
	return (int)k;
}

int kv_l2_write(struct kv_l2 *l2, struct kv_l2_io *ios, uint32_t n)
{
	return l2_queue(l2, ios, n, true);
}

int kv_l2_read(struct kv_l2 *l2, struct kv_l2_io *ios, uint32_t n)
{
	return l2_queue(l2, ios, n, false);
}

static int l2_reap(struct kv_l2 *l2, struct kv_l2_io *out, uint32_t min, uint32_t max)
{
	uint32_t in_flight;
	uint64_t v;
	int ret;

	if (!l2 || (max && !out) || min > max)
		return -EINVAL;
	in_flight = kv_l2_in_flight(l2);
	if (!max || !in_flight)
		return 0;
	/* Clear the eventfd before reaping: a completion that lands after this
	 * sets it again, so an epoll caller never misses one. */
	if (read(l2->event_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return -errno;
	ret = l2->ops->reap(l2, out, HR_MIN(min, in_flight), max);
	if (ret == (int)max && kv_l2_in_flight(l2))
		(void)eventfd_write(l2->event_fd, 1); /* more may be ready */
	return ret;
}

int kv_l2_poll(struct kv_l2 *l2, struct kv_l2_io *out, uint32_t max)
{
	return l2_reap(l2, out, 0, max);
}

int kv_l2_wait(struct kv_l2 *l2, struct kv_l2_io *out, uint32_t min, uint32_t max)
{
	return l2_reap(l2, out, min, max);
}

int kv_l2_event_fd(const struct kv_l2 *l2)
{
	return l2 ? l2->event_fd : -EINVAL;
}

int kv_l2_sync(struct kv_l2 *l2)
{
	if (!l2)
		return -EINVAL;
	return fdatasync(l2->fd) < 0 ? -errno : 0;
}

/* ---- accessors ----------------------------------------------------------- */

const char *kv_l2_pager_name(const struct kv_l2 *l2)
{
	return l2 && l2->ops ? l2->ops->name : "none";
}

bool kv_l2_is_direct(const struct kv_l2 *l2)
{
	return l2 && l2->direct;
}

const char *kv_l2_notes(const struct kv_l2 *l2)
{
	return l2 ? l2->notes : "";
}

size_t kv_l2_page_bytes(const struct kv_l2 *l2)
{
	return l2 ? l2->page_bytes : 0;
}

/* ---- open and close ------------------------------------------------------ */

static int l2_check_params(const struct kv_l2_params *p, char *err, size_t errlen)
{
	size_t slot = kv_l2_slot_bytes(p->page_bytes);

	if (!p->path || !*p->path) {
		l2_errf(err, errlen, "kv_l2: no path");
		return -EINVAL;
	}
	if (!slot || p->page_bytes > KV_L2_MAX_PAGE_BYTES) {
		l2_errf(err, errlen, "kv_l2: page_bytes %zu out of range 1..%llu", p->page_bytes,
			(unsigned long long)KV_L2_MAX_PAGE_BYTES);
		return -EINVAL;
	}
	if (p->file_bytes / slot < 1 || p->file_bytes / slot >= UINT32_MAX ||
	    p->file_bytes > (uint64_t)INT64_MAX) {
		l2_errf(err, errlen, "kv_l2: %s: file_bytes %llu holds %llu slots of %zu bytes "
			"(need 1 .. 2^32-2)", p->path, (unsigned long long)p->file_bytes,
			(unsigned long long)(p->file_bytes / slot), slot);
		return -EINVAL;
	}
	if (p->queue_depth > KV_L2_MAX_QUEUE_DEPTH || p->threads > KV_L2_MAX_THREADS ||
	    p->staging_pages > UINT32_MAX / 2 || (unsigned)p->pager > KV_L2_PAGER_THREADS ||
	    (p->flags & ~(KV_L2_F_BUFFERED | KV_L2_F_REQUIRE_DIRECT)) ||
	    ((p->flags & KV_L2_F_BUFFERED) && (p->flags & KV_L2_F_REQUIRE_DIRECT))) {
		l2_errf(err, errlen, "kv_l2: %s: invalid queue_depth/threads/staging/pager/flags",
			p->path);
		return -EINVAL;
	}
	return 0;
}

/* Size the file to n_slots whole slots, blocks allocated up front so that a
 * full disk is found now rather than in the middle of a page-out. */
static int l2_preallocate(struct kv_l2 *l2, char *err, size_t errlen)
{
	uint64_t need = (uint64_t)l2->n_slots * l2->slot_bytes;
	struct statvfs sv;
	struct stat st;
	int ret;

	do
		ret = fallocate(l2->fd, 0, 0, (off_t)need) < 0 ? -errno : 0;
	while (ret == -EINTR);
	if (!ret)
		return 0;
	if (ret == -EOPNOTSUPP) {
		if (fstat(l2->fd, &st) < 0)
			return -errno;
		if ((uint64_t)st.st_size < need && ftruncate(l2->fd, (off_t)need) < 0) {
			ret = -errno;
			goto fail;
		}
		l2_note(l2, "%s: fallocate not supported; sized with ftruncate, so blocks are "
			"allocated on first write and a full disk shows up as write errors",
			l2->path);
		return 0;
	}
fail:
	if (ret == -ENOSPC) {
		unsigned long long avail = 0;

		if (fstatvfs(l2->fd, &sv) == 0)
			avail = (unsigned long long)sv.f_bavail * sv.f_frsize;
		l2_errf(err, errlen, "kv_l2: %s: cannot preallocate %llu bytes (%.1f MiB): "
			"no space left on device (%llu bytes free)", l2->path,
			(unsigned long long)need, need / 1048576.0, avail);
	} else if (ret == -EFBIG) {
		l2_errf(err, errlen, "kv_l2: %s: cannot preallocate %llu bytes (%.1f MiB): file "
			"too large (over RLIMIT_FSIZE or the file system's maximum)", l2->path,
			(unsigned long long)need, need / 1048576.0);
	} else {
		l2_errf(err, errlen, "kv_l2: %s: preallocate %llu bytes: %s", l2->path,
			(unsigned long long)need, strerror(-ret));
	}
	return ret;
}

/* flock, waiting up to L2_LOCK_WAIT_MS for a holder that is going away: a
 * killed process's io_uring drops its reference to the file (and with it
 * the lock) asynchronously, some milliseconds after the process is gone. */
static int l2_lock(int fd)
{
	for (uint32_t waited = 0;; waited += 10) {
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK)
			return -errno;
		if (waited >= L2_LOCK_WAIT_MS)
			return -EBUSY;
		usleep(10 * 1000);
	}
}

/* Open (creating), lock, size. O_DIRECT is asked for unless BUFFERED; where
 * the file system refuses it (open or a first aligned read fails with
 * EINVAL: tmpfs on older kernels, some FUSE and network file systems) the
 * file is used buffered and a note says so, unless REQUIRE_DIRECT. */
static int l2_open_file(struct kv_l2 *l2, uint32_t flags, char *err, size_t errlen)
{
	bool want_direct = !(flags & KV_L2_F_BUFFERED);
	int oflags = O_RDWR | O_CREAT | O_CLOEXEC;
	struct stat st;
	bool existed = stat(l2->path, &st) == 0;
	int ret;

	l2->fd = open(l2->path, oflags | (want_direct ? O_DIRECT : 0), 0600);
	l2->direct = want_direct && l2->fd >= 0;
	if (l2->fd < 0 && errno == EINVAL && want_direct && !(flags & KV_L2_F_REQUIRE_DIRECT))
		l2->fd = open(l2->path, oflags, 0600);
	if (l2->fd < 0) {
		ret = -errno;
		if (ret == -EINVAL && want_direct)
			l2_errf(err, errlen, "kv_l2: open %s: the file system refuses O_DIRECT",
				l2->path);
		else
			l2_errf(err, errlen, "kv_l2: open %s: %s", l2->path, strerror(-ret));
		return ret;
	}
	if (fstat(l2->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		l2_errf(err, errlen, "kv_l2: %s: not a regular file", l2->path);
		return -EINVAL;
	}
	if ((ret = l2_lock(l2->fd)) < 0) {
		l2_errf(err, errlen, "kv_l2: %s: %s", l2->path,
			ret == -EBUSY ? "in use by another store (locked)" : strerror(-ret));
		return ret;
	}
	/* A file this open created and could not size is removed (we hold
	 * the lock, so no other store uses it): a failed start leaves no
	 * half-allocated file taking the disk. */
	if ((ret = l2_preallocate(l2, err, errlen)) < 0 && !existed)
		unlink(l2->path);
	return ret;
}

/* One aligned read of the first block, with the staging area mapped. */
static int l2_probe_direct(struct kv_l2 *l2, uint32_t flags, char *err, size_t errlen)
{
	int fl;

	if (!l2->direct)
		goto refused;
	if (pread(l2->fd, l2->staging, L2_ALIGN, 0) >= 0)
		return 0;
	if (errno != EINVAL) {
		l2_errf(err, errlen, "kv_l2: %s: read: %s", l2->path, strerror(errno));
		return -errno;
	}
	fl = fcntl(l2->fd, F_GETFL);
	if (fl < 0 || fcntl(l2->fd, F_SETFL, fl & ~O_DIRECT) < 0)
		return -errno;
	l2->direct = false;
refused:
	if (flags & KV_L2_F_BUFFERED)
		return 0;
	if (flags & KV_L2_F_REQUIRE_DIRECT) {
		l2_errf(err, errlen, "kv_l2: %s: the file system refuses O_DIRECT", l2->path);
		return -EINVAL;
	}
	l2_note(l2, "%s: the file system refuses O_DIRECT; using buffered I/O (page cache)",
		l2->path);
	return 0;
}

static int l2_alloc_tables(struct kv_l2 *l2)
{
	uint32_t tail = l2->n_slots % 64;

	l2->n_words = (l2->n_slots + 63) / 64;
	l2->n_free_slots = l2->n_slots;
	l2->slot_bits = calloc(l2->n_words, sizeof(uint64_t));
	l2->staging_state = calloc(l2->staging_pages, 1);
	l2->staging_free = malloc(sizeof(uint32_t) * l2->staging_pages);
	l2->reqs = calloc(l2->queue_depth, sizeof(*l2->reqs));
	l2->req_free = malloc(sizeof(*l2->req_free) * l2->queue_depth);
	l2->batch = malloc(sizeof(*l2->batch) * l2->queue_depth);
	if (!l2->slot_bits || !l2->staging_state || !l2->staging_free || !l2->reqs ||
	    !l2->req_free || !l2->batch)
		return -ENOMEM;
	if (tail)
		l2->slot_bits[l2->n_words - 1] = ~0ull << tail;
	/* Stacks: hand out low indices first. */
	for (uint32_t i = 0; i < l2->staging_pages; i++)
		l2->staging_free[i] = l2->staging_pages - 1 - i;
	l2->n_staging_free = l2->staging_pages;
	for (uint32_t i = 0; i < l2->queue_depth; i++)
		l2->req_free[i] = &l2->reqs[l2->queue_depth - 1 - i];
	l2->n_req_free = l2->queue_depth;
	return 0;
}

#if HEARTH_HAVE_IO_URING
static bool uring_fallback_ok(int err)
{
	/* Containers and hardened kernels refuse io_uring with these. */
	return err == -EPERM || err == -ENOSYS || err == -EINVAL || err == -EACCES ||
	       err == -EOPNOTSUPP;
}
#endif

static int l2_start_pager(struct kv_l2 *l2, enum kv_l2_pager want, char *err, size_t errlen)
{
	int ret;

	if (want != KV_L2_PAGER_THREADS) {
#if HEARTH_HAVE_IO_URING
		l2->ops = &l2_uring_ops;
		ret = l2->ops->init(l2, err, errlen);
		if (!ret)
			return 0;
		l2->ops = NULL;
		if (want == KV_L2_PAGER_URING || !uring_fallback_ok(ret))
			return ret;
		l2_note(l2, "io_uring unavailable (%s): thread pool", strerror(-ret));
#else
		if (want == KV_L2_PAGER_URING) {
			l2_errf(err, errlen, "kv_l2: io_uring pager asked for, but hearth was "
				"built without liburing");
			return -ENOTSUP;
		}
		l2_note(l2, "built without io_uring: thread pool");
#endif
	}
	l2->ops = &l2_threads_ops;
	ret = l2->ops->init(l2, err, errlen);
	if (ret)
		l2->ops = NULL;
	return ret;
}

struct kv_l2 *kv_l2_open(const struct kv_l2_params *p, char *err, size_t errlen)
{
	struct kv_l2 *l2;
	int ret;

	if (!p) {
		errno = EINVAL;
		return NULL;
	}
	if ((ret = l2_check_params(p, err, errlen)) < 0) {
		errno = -ret;
		return NULL;
	}
	l2 = calloc(1, sizeof(*l2));
	if (!l2)
		return NULL;
	l2->fd = -1;
	l2->event_fd = -1;
	l2->staging = MAP_FAILED;
	l2->page_bytes = p->page_bytes;
	l2->slot_bytes = kv_l2_slot_bytes(p->page_bytes);
	l2->n_slots = (uint32_t)(p->file_bytes / l2->slot_bytes);
	l2->queue_depth = p->queue_depth ? p->queue_depth : KV_L2_DEFAULT_QUEUE_DEPTH;
	l2->threads = p->threads ? p->threads : KV_L2_DEFAULT_THREADS;
	l2->staging_pages = p->staging_pages ? p->staging_pages : l2->queue_depth;
	ret = -ENOMEM;
	if (!hr_mul_ok(l2->staging_pages, l2->slot_bytes, &l2->staging_bytes))
		goto fail_msg;
	l2->path = strdup(p->path);
	if (!l2->path || l2_alloc_tables(l2) < 0)
		goto fail_msg;
	/* One mapping: page-aligned (so 4096-aligned) and populated up front,
	 * since it is meant to stay resident (registered with io_uring, maybe
	 * with a GPU runtime too). */
	l2->staging = mmap(NULL, l2->staging_bytes, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (l2->staging == MAP_FAILED) {
		ret = -errno;
		goto fail_msg;
	}
	l2->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (l2->event_fd < 0) {
		ret = -errno;
		l2_errf(err, errlen, "kv_l2: eventfd: %s", strerror(-ret));
		goto fail;
	}
	if ((ret = l2_open_file(l2, p->flags, err, errlen)) < 0 ||
	    (ret = l2_probe_direct(l2, p->flags, err, errlen)) < 0 ||
	    (ret = l2_start_pager(l2, p->pager, err, errlen)) < 0)
		goto fail;
	return l2;

fail_msg:
	l2_errf(err, errlen, "kv_l2: %s: %zu staging buffers of %zu bytes: %s", p->path,
		(size_t)l2->staging_pages, l2->slot_bytes, strerror(-ret));
fail:
	kv_l2_close(l2);
	errno = -ret;
	return NULL;
}

void kv_l2_close(struct kv_l2 *l2)
{
	struct kv_l2_io sink[16];

	if (!l2)
		return;
	if (l2->ops) {
		while (kv_l2_in_flight(l2))
			if (l2->ops->reap(l2, sink, 1, HR_ARRAY_SIZE(sink)) < 0)
				break; /* the pager is broken; its fini cancels */
		l2->ops->fini(l2);
	}
	if (l2->fd >= 0) {
		/* Unlock explicitly: a ring being torn down may hold a reference
		 * to the file a little longer, and with it the lock. */
		flock(l2->fd, LOCK_UN);
		close(l2->fd);
	}
	if (l2->event_fd >= 0)
		close(l2->event_fd);
	if (l2->staging != MAP_FAILED)
		munmap(l2->staging, l2->staging_bytes);
	free(l2->slot_bits);
	free(l2->staging_state);
	free(l2->staging_free);
	free(l2->reqs);
	free(l2->req_free);
	free(l2->batch);
	free(l2->path);
	free(l2);
}

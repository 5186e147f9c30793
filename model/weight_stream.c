/* SPDX-License-Identifier: MIT */
/*
 * Streaming weight reads for model_load_ex (STREAM mode): the data sections
 * of the safetensors files are read in chunks into a ring of `depth` host
 * buffers (pinned, from ops->alloc_host), with io_uring (O_DIRECT where the
 * file system allows it) or, without io_uring, one pread thread per buffer.
 * While the reads of the next chunks are in flight, the pieces of the chunk
 * that arrived are copied to their tensors' backend memory (write_async),
 * then the buffer is reused for the chunk `depth` places ahead.
 *
 * Arithmetic of the defaults: 6 buffers of 32 MiB keep 160-192 MiB of reads
 * queued, enough for an NVMe drive to stream at full rate (its queue is fed
 * by requests of max_sectors_kb each), and each 32 MiB copy to an H200 takes
 * under 1 ms at PCIe Gen5 speed, far less than the read it overlaps.
 */
#define _GNU_SOURCE /* O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hearth_config.h"
#if HEARTH_HAVE_IO_URING
#include <liburing.h>
#endif

#include "hr_common.h"
#include "stream_pvt.h"

#define WS_ALIGN 4096u           /* O_DIRECT offsets, lengths and buffers */
#define WS_CHUNK_DEFAULT 32u     /* MiB */
#define WS_DEPTH_DEFAULT 6u
#define WS_DEPTH_MAX 32u
#define WS_RESIDENT_BUFFERED 0.5 /* page-cache share above which reads stay buffered */

enum ws_state { WS_IDLE, WS_QUEUED, WS_RUNNING, WS_DONE };

struct ws_req {
	int fd;
	uint8_t *buf;
	size_t len;      /* asked */
	size_t want;     /* bytes the file holds in the range (short of len at EOF) */
	uint64_t off;
	size_t done;
	int err;         /* negative errno */
	bool buffered;
	enum ws_state state;
	unsigned retries;
};

struct ws_io {
	unsigned depth;
	struct ws_req req[WS_DEPTH_MAX];
	bool uring;
#if HEARTH_HAVE_IO_URING
	struct io_uring ring;
#endif
	/* threads */
	pthread_t th[WS_DEPTH_MAX];
	unsigned n_threads;
	pthread_mutex_t lock;
	pthread_cond_t cv_req, cv_done;
	bool quit;
};

struct ws_chunk {
	uint32_t file;
	uint64_t off;
	size_t len;
};

struct ws_ctx {
	struct ws_plan *plan;
	struct kern_backend *be;
	const struct model_load_opts *o;
	char *err;
	size_t errlen;
	int *fds;        /* per file */
	bool *direct;    /* per file */
	uint8_t *raw[WS_DEPTH_MAX]; /* allocations; buffers are aligned inside */
	uint8_t *buf[WS_DEPTH_MAX];
	bool pinned;
	size_t chunk;
	struct ws_chunk *chunks;
	uint32_t n_chunks;
	uint64_t total;
	uint32_t cursor; /* first tensor not yet complete */
};

hr_printf_fmt(3, 4) static int ws_fail(const struct ws_ctx *c, int r, const char *fmt, ...)
{
	va_list ap;

	if (c->err && c->errlen) {
		va_start(ap, fmt);
		vsnprintf(c->err, c->errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}

hr_printf_fmt(2, 3) static void ws_note(const struct ws_ctx *c, const char *fmt, ...)
{
	char msg[320];
	va_list ap;

	if (!c->o->note)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	c->o->note(c->o->arg, msg);
}

/* ---------------------------------------------------------------- threads */

/* One blocking read of the whole request, short only at end of file. */
static void ws_pread_all(struct ws_req *q)
{
	while (q->done < q->len) {
		ssize_t n = pread(q->fd, q->buf + q->done, q->len - q->done,
				  (off_t)(q->off + q->done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			q->err = -errno;
			return;
		}
		if (n == 0)
			return;
		q->done += (size_t)n;
		if (q->done >= q->want)
			return; /* O_DIRECT reads a whole block past the end: nothing more */
	}
}

static void *ws_thread_main(void *arg)
{
	struct ws_io *io = arg;

	hr_thread_name("ws-read", NULL);
	pthread_mutex_lock(&io->lock);
	for (;;) {
		struct ws_req *q = NULL;

		for (unsigned i = 0; i < io->depth && !q; i++)
			if (io->req[i].state == WS_QUEUED)
				q = &io->req[i];
		if (!q) {
			if (io->quit)
				break;
			pthread_cond_wait(&io->cv_req, &io->lock);
			continue;
		}
		q->state = WS_RUNNING;
		pthread_mutex_unlock(&io->lock);
		ws_pread_all(q);
		pthread_mutex_lock(&io->lock);
		q->state = WS_DONE;
		pthread_cond_broadcast(&io->cv_done);
	}
	pthread_mutex_unlock(&io->lock);
	return NULL;
}

static void ws_threads_stop(struct ws_io *io)
{
	pthread_mutex_lock(&io->lock);
	io->quit = true;
	pthread_cond_broadcast(&io->cv_req);
	pthread_mutex_unlock(&io->lock);
	for (unsigned i = 0; i < io->n_threads; i++)
		pthread_join(io->th[i], NULL);
	pthread_mutex_destroy(&io->lock);
	pthread_cond_destroy(&io->cv_req);
	pthread_cond_destroy(&io->cv_done);
}

static int ws_threads_init(struct ws_io *io)
{
	int r;

	pthread_mutex_init(&io->lock, NULL);
	pthread_cond_init(&io->cv_req, NULL);
	pthread_cond_init(&io->cv_done, NULL);
	for (unsigned i = 0; i < io->depth; i++) {
		r = pthread_create(&io->th[i], NULL, ws_thread_main, io);
		if (r) {
			ws_threads_stop(io);
			return -r;
		}
		io->n_threads++;
	}
	return 0;
}

/* ---------------------------------------------------------------- io_uring */

#if HEARTH_HAVE_IO_URING
static void ws_uring_prep(struct ws_io *io, struct ws_req *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);

	/* In flight <= depth = SQ entries: an SQE is always there. */
	io_uring_prep_read(sqe, q->fd, q->buf + q->done, (unsigned)(q->len - q->done),
			   q->off + q->done);
	/* A buffered read of cached pages would run inline, one copy at a time
	 * in this thread; ASYNC hands it to io-wq workers, copies in parallel. */
	if (q->buffered)
		io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
	io_uring_sqe_set_data(sqe, q);
}

static int ws_uring_submit(struct ws_io *io)
{
	int r;

	do
		r = io_uring_submit(&io->ring);
	while (r == -EINTR);
	return r < 0 ? r : 0;
}

/* Reap one completion (waiting for it), resubmitting a short transfer. */
static int ws_uring_reap(struct ws_io *io)
{
	struct io_uring_cqe *cqe;
	struct ws_req *q;
	int r, res;

	do
		r = io_uring_wait_cqe(&io->ring, &cqe);
	while (r == -EINTR);
	if (r < 0)
		return r;
	q = io_uring_cqe_get_data(cqe);
	res = cqe->res;
	io_uring_cqe_seen(&io->ring, cqe);
	if (res == -EAGAIN && q->retries++ < 8) {
		ws_uring_prep(io, q);
		return ws_uring_submit(io);
	}
	if (res < 0) {
		q->err = res;
		q->state = WS_DONE;
		return 0;
	}
	q->done += (size_t)res;
	if (res > 0 && q->done < q->want) {
		ws_uring_prep(io, q);
		return ws_uring_submit(io);
	}
	q->state = WS_DONE;
	return 0;
}
#endif

/* ---------------------------------------------------------------- requests */

static int ws_io_init(struct ws_io *io, unsigned depth, enum model_load_io want,
		      const struct ws_ctx *c)
{
	memset(io, 0, sizeof(*io));
	io->depth = depth;
#if HEARTH_HAVE_IO_URING
	if (want != MODEL_IO_THREADS) {
		int r = io_uring_queue_init(depth, &io->ring, 0);

		if (r == 0) {
			io->uring = true;
			return 0;
		}
		if (want == MODEL_IO_URING)
			return ws_fail(c, r, "io_uring_queue_init: %s", strerror(-r));
		ws_note(c, "io_uring unavailable (%s): reading with %u threads", strerror(-r), depth);
	}
#else
	if (want == MODEL_IO_URING)
		return ws_fail(c, -ENOSYS, "this build has no io_uring (liburing not found)");
	if (want == MODEL_IO_AUTO)
		ws_note(c, "built without io_uring: reading with %u threads", depth);
#endif
	return ws_threads_init(io);
}

static int ws_io_submit(struct ws_io *io, unsigned slot, int fd, uint8_t *buf, size_t len,
			size_t want, uint64_t off, bool buffered)
{
	struct ws_req *q = &io->req[slot];

	if (!io->uring)
		pthread_mutex_lock(&io->lock);
	*q = (struct ws_req){ .fd = fd, .buf = buf, .len = len, .want = want, .off = off,
			      .buffered = buffered, .state = WS_QUEUED };
	if (!io->uring) {
		pthread_cond_signal(&io->cv_req);
		pthread_mutex_unlock(&io->lock);
		return 0;
	}
#if HEARTH_HAVE_IO_URING
	q->state = WS_RUNNING;
	ws_uring_prep(io, q);
	return ws_uring_submit(io);
#else
	return -ENOSYS;
#endif
}

/* Wait for slot's read. Returns 0 (result in the request) or -errno of the
 * ring itself. An idle slot returns at once. */
static int ws_io_wait(struct ws_io *io, unsigned slot)
{
	struct ws_req *q = &io->req[slot];
	int r = 0;

	if (!io->uring) {
		pthread_mutex_lock(&io->lock);
		while (q->state == WS_QUEUED || q->state == WS_RUNNING)
			pthread_cond_wait(&io->cv_done, &io->lock);
		pthread_mutex_unlock(&io->lock);
		return 0;
	}
#if HEARTH_HAVE_IO_URING
	while (r == 0 && q->state == WS_RUNNING)
		r = ws_uring_reap(io);
#endif
	return r;
}

/* Wait for every read in flight (their buffers are about to be freed). */
static void ws_io_fini(struct ws_io *io)
{
	for (unsigned i = 0; i < io->depth; i++)
		if (ws_io_wait(io, i) < 0)
			break; /* the ring itself failed: exiting it cancels the rest */
	if (io->uring) {
#if HEARTH_HAVE_IO_URING
		io_uring_queue_exit(&io->ring);
#endif
		return;
	}
	ws_threads_stop(io);
}

/* ---------------------------------------------------------------- files */

/* Share of [off, off + len) of the mapping already in the page cache. */
static double ws_resident(const void *map, uint64_t off, uint64_t len)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t a, b, n, in = 0;
	unsigned char *vec;

	if (!map || !len || pg <= 0)
		return 0;
	a = off / (uint64_t)pg * (uint64_t)pg;
	b = off + len;
	n = (b - a + (uint64_t)pg - 1) / (uint64_t)pg;
	vec = malloc(n);
	if (!vec)
		return 0;
	if (mincore((uint8_t *)(uintptr_t)map + a, b - a, vec) < 0) {
		free(vec);
		return 0;
	}
	for (uint64_t i = 0; i < n; i++)
		in += vec[i] & 1;
	free(vec);
	return (double)in / (double)n;
}

/*
 * Open file f, with O_DIRECT unless the page cache already holds it or the
 * file system refuses; a first aligned read proves O_DIRECT works here.
 */
static int ws_open(struct ws_ctx *c, uint32_t f, uint64_t lo, uint64_t hi)
{
	const struct ws_file *wf = &c->plan->files[f];
	enum model_load_direct mode = c->o->direct;
	int fd, r;

	c->direct[f] = false;
	if (mode == MODEL_DIRECT_AUTO) {
		/* Parsing the header faulted the file's first pages in, with
		 * readahead: on a large file, judge by what lies past them. */
		uint64_t skip = hi - lo > ((uint64_t)64 << 20) ? (uint64_t)16 << 20 : 0;
		double res = ws_resident(wf->map, lo + skip, hi - lo - skip);

		if (res >= WS_RESIDENT_BUFFERED) {
			ws_note(c, "%s: %.0f%% in the page cache: buffered reads", wf->name,
				res * 100);
			mode = MODEL_DIRECT_NEVER;
		}
	}
	if (mode != MODEL_DIRECT_NEVER) {
		fd = open(wf->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_DIRECT);
		if (fd >= 0) {
			ssize_t n;

			do
				n = pread(fd, c->buf[0], WS_ALIGN, (off_t)(lo & ~(uint64_t)(WS_ALIGN - 1)));
			while (n < 0 && errno == EINTR);
			if (n >= 0) {
				c->fds[f] = fd;
				c->direct[f] = true;
				return 0;
			}
			r = -errno;
			close(fd);
		} else {
			r = -errno;
		}
		if (r != -EINVAL && r != -EOPNOTSUPP)
			return ws_fail(c, r, "%s: cannot read with O_DIRECT: %s", wf->name,
				       strerror(-r));
		ws_note(c, "%s: O_DIRECT not possible here (%s): buffered reads", wf->name,
			strerror(-r));
	}
	fd = open(wf->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return ws_fail(c, -errno, "%s: cannot open: %s", wf->name, strerror(errno));
	(void)posix_fadvise(fd, (off_t)lo, (off_t)(hi - lo), POSIX_FADV_SEQUENTIAL);
	c->fds[f] = fd;
	return 0;
}

/* Cut each file's needed range into chunk-sized, aligned reads. */
static int ws_plan_chunks(struct ws_ctx *c)
{
	struct ws_plan *p = c->plan;
	uint32_t n = 0, cap = 0, i = 0;
	int r;

	for (uint32_t f = 0; f < p->n_files; f++) {
		uint64_t lo = UINT64_MAX, hi = 0, off;

		for (; i < p->n_tensors && p->tensors[i].file == f; i++) {
			lo = HR_MIN(lo, p->tensors[i].off);
			hi = HR_MAX(hi, p->tensors[i].off + p->tensors[i].bytes);
		}
		if (hi == 0)
			continue;
		if (hi > p->files[f].size)
			return ws_fail(c, -EINVAL, "%s: tensor data past the end of the file",
				       p->files[f].name);
		lo &= ~(uint64_t)(WS_ALIGN - 1);
		r = ws_open(c, f, lo, hi);
		if (r < 0)
			return r;
		for (off = lo; off < hi; off += c->chunk) {
			if (n == cap) {
				struct ws_chunk *t;

				cap = cap ? 2 * cap : 64;
				t = realloc(c->chunks, cap * sizeof(*t));
				if (!t)
					return ws_fail(c, -ENOMEM, "out of memory");
				c->chunks = t;
			}
			c->chunks[n++] = (struct ws_chunk){ .file = f, .off = off,
							    .len = (size_t)HR_MIN(c->chunk, hi - off) };
			c->total += HR_MIN(c->chunk, hi - off);
		}
	}
	c->n_chunks = n;
	return 0;
}

/* ---------------------------------------------------------------- delivery */

static int ws_put(struct ws_ctx *c, struct ws_tensor *t, const uint8_t *src, uint64_t at,
		  size_t len)
{
	const struct kern_ops *ops = c->be->ops;
	int r;

	if (t->dst) {
		uint8_t *dst = (uint8_t *)t->dst + (at - t->off);

		r = c->pinned ? ops->write_async(c->be, dst, src, len) : ops->upload(c->be, dst, src, len);
		if (r < 0)
			return ws_fail(c, r, "%s: tensor '%s': copy to the %s backend failed: %s",
				       c->plan->files[t->file].name, t->name, c->be->name,
				       strerror(-r));
		t->got += len;
		return 0;
	}
	if (!t->gather) {
		t->gather = malloc(t->bytes);
		if (!t->gather)
			return ws_fail(c, -ENOMEM, "%s: tensor '%s': out of memory (%llu bytes)",
				       c->plan->files[t->file].name, t->name,
				       (unsigned long long)t->bytes);
	}
	memcpy(t->gather + (at - t->off), src, len);
	t->got += len;
	if (t->got < t->bytes)
		return 0;
	r = c->plan->gathered(c->plan->arg, t, c->err, c->errlen);
	free(t->gather);
	t->gather = NULL;
	return r;
}

/* Hand the chunk's bytes [off, off + got) to the tensors they belong to. */
static int ws_deliver(struct ws_ctx *c, const struct ws_chunk *ch, const uint8_t *buf, size_t got)
{
	struct ws_plan *p = c->plan;
	uint64_t end = ch->off + got;

	for (uint32_t k = c->cursor; k < p->n_tensors; k++) {
		struct ws_tensor *t = &p->tensors[k];
		uint64_t a, b;
		int r;

		if (t->file > ch->file || (t->file == ch->file && t->off >= end))
			break;
		if (t->file < ch->file || t->off + t->bytes <= ch->off) {
			if (t->got < t->bytes)
				return ws_fail(c, -EIO, "%s: tensor '%s': incomplete read",
					       p->files[t->file].name, t->name);
			continue;
		}
		a = HR_MAX(t->off, ch->off);
		b = HR_MIN(t->off + t->bytes, end);
		r = ws_put(c, t, buf + (a - ch->off), a, (size_t)(b - a));
		if (r < 0)
			return r;
		if (k == c->cursor && t->got == t->bytes)
			c->cursor++;
	}
	return 0;
}

static void ws_progress(const struct ws_ctx *c, uint64_t done, uint64_t t0, bool final)
{
	struct model_load_progress pr = {
		.done_bytes = done, .total_bytes = c->total,
		.seconds = (double)(hr_now_ns() - t0) / 1e9, .final = final,
	};

	if (c->o->progress)
		c->o->progress(c->o->arg, &pr);
}

/* The pipeline: depth reads in flight; each arrival is copied out, then its
 * buffer refilled for the chunk depth places ahead. */
static int ws_pump(struct ws_ctx *c, struct ws_io *io, uint64_t *ret_bytes, uint64_t t0)
{
	const struct kern_ops *ops = c->be->ops;
	uint64_t done = 0, next_mark = c->total / 10, last_ns = hr_now_ns();
	unsigned d = io->depth;
	int r = 0;

	for (uint32_t i = 0; i < HR_MIN(d, c->n_chunks) && !r; i++) {
		const struct ws_chunk *ch = &c->chunks[i];
		uint64_t fsz = c->plan->files[ch->file].size;

		r = ws_io_submit(io, i % d, c->fds[ch->file], c->buf[i % d],
				 HR_ALIGN_UP(ch->len, (size_t)WS_ALIGN), (size_t)HR_MIN(ch->len, fsz - ch->off),
				 ch->off, !c->direct[ch->file]);
	}
	for (uint32_t i = 0; i < c->n_chunks && !r; i++) {
		const struct ws_chunk *ch = &c->chunks[i];
		const struct ws_file *wf = &c->plan->files[ch->file];
		struct ws_req *q = &io->req[i % d];
		size_t got;

		r = ws_io_wait(io, i % d);
		if (r < 0)
			return ws_fail(c, r, "%s: io_uring: %s", wf->name, strerror(-r));
		q->state = WS_IDLE;
		if (q->err < 0)
			return ws_fail(c, q->err, "%s: read error at offset %llu: %s", wf->name,
				       (unsigned long long)ch->off, strerror(-q->err));
		got = HR_MIN(q->done, ch->len);
		if (got < ch->len)
			return ws_fail(c, -EIO, "%s: short read at offset %llu (%zu of %zu bytes): "
				       "did the file change while loading?", wf->name,
				       (unsigned long long)ch->off, got, ch->len);
		r = ws_deliver(c, ch, c->buf[i % d], got);
		if (r < 0)
			return r;
		done += got;
		if (done >= next_mark || hr_now_ns() - last_ns >= 1000000000ull) {
			ws_progress(c, done, t0, false);
			last_ns = hr_now_ns();
			while (next_mark <= done && c->total)
				next_mark += c->total / 10 ? c->total / 10 : 1;
		}
		if (i + d < c->n_chunks) {
			const struct ws_chunk *nx = &c->chunks[i + d];
			uint64_t fsz = c->plan->files[nx->file].size;

			/* The copies out of this buffer must be done before it is refilled. */
			if (ops->sync && (r = ops->sync(c->be)) < 0)
				return ws_fail(c, r, "%s: copy to the %s backend failed: %s", wf->name,
					       c->be->name, strerror(-r));
			r = ws_io_submit(io, i % d, c->fds[nx->file], c->buf[i % d],
					 HR_ALIGN_UP(nx->len, (size_t)WS_ALIGN),
					 (size_t)HR_MIN(nx->len, fsz - nx->off), nx->off,
					 !c->direct[nx->file]);
			if (r < 0)
				return ws_fail(c, r, "%s: io_uring submit: %s", wf->name, strerror(-r));
		}
	}
	if (r < 0)
		return ws_fail(c, r, "io_uring submit: %s", strerror(-r));
	*ret_bytes = done;
	return 0;
}

static int ws_alloc_bufs(struct ws_ctx *c, unsigned depth)
{
	const struct kern_ops *ops = c->be->ops;
	size_t bytes = c->chunk + WS_ALIGN;

	c->pinned = ops->alloc_host && ops->free_host && ops->write_async;
	for (unsigned i = 0; i < depth; i++) {
		if (c->pinned) {
			c->raw[i] = ops->alloc_host(c->be, bytes);
		} else {
			void *p = NULL;

			c->raw[i] = posix_memalign(&p, WS_ALIGN, bytes) ? NULL : p;
		}
		if (!c->raw[i])
			return ws_fail(c, -ENOMEM, "cannot allocate %u read buffers of %zu KiB%s",
				       depth, c->chunk >> 10, c->pinned ? " (pinned)" : "");
		c->buf[i] = (uint8_t *)HR_ALIGN_UP((uintptr_t)c->raw[i], (uintptr_t)WS_ALIGN);
	}
	return 0;
}

void model_load_read_shape(const struct model_load_opts *o, size_t *chunk, unsigned *depth)
{
	static const struct model_load_opts defaults;

	o = o ? o : &defaults;
	*depth = o->depth ? HR_MIN(o->depth, WS_DEPTH_MAX) : WS_DEPTH_DEFAULT;
	*chunk = o->chunk_kib ? HR_ALIGN_UP((size_t)HR_MIN(o->chunk_kib, 1u << 20) << 10,
					    (size_t)WS_ALIGN)
			      : (size_t)WS_CHUNK_DEFAULT << 20;
}

int ws_run(struct ws_plan *plan, struct kern_backend *be, const struct model_load_opts *o,
	   struct ws_result *ret, char *err, size_t errlen)
{
	static const struct model_load_opts defaults;
	struct ws_ctx c = { .plan = plan, .be = be, .o = o ? o : &defaults, .err = err,
			    .errlen = errlen };
	unsigned depth;
	struct ws_io io;
	bool io_up = false;
	uint64_t t0 = hr_now_ns(), bytes = 0;
	int r;

	model_load_read_shape(c.o, &c.chunk, &depth);
	c.fds = malloc(HR_MAX(plan->n_files, 1u) * sizeof(*c.fds));
	c.direct = calloc(HR_MAX(plan->n_files, 1u), sizeof(*c.direct));
	if (!c.fds || !c.direct) {
		r = ws_fail(&c, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t f = 0; f < plan->n_files; f++)
		c.fds[f] = -1;
	if ((r = ws_alloc_bufs(&c, depth)) < 0 || (r = ws_plan_chunks(&c)) < 0)
		goto out;
	r = ws_io_init(&io, depth, c.o->io, &c);
	if (r < 0)
		goto out;
	io_up = true;
	r = ws_pump(&c, &io, &bytes, t0);
	/* Every tensor must have been filled (the chunks cover them all). */
	for (uint32_t k = c.cursor; r == 0 && k < plan->n_tensors; k++)
		if (plan->tensors[k].got != plan->tensors[k].bytes)
			r = ws_fail(&c, -EIO, "%s: tensor '%s': incomplete read",
				    plan->files[plan->tensors[k].file].name, plan->tensors[k].name);
	if (r == 0 && be->ops->sync && (r = be->ops->sync(be)) < 0)
		ws_fail(&c, r, "copy to the %s backend failed: %s", be->name, strerror(-r));
	if (r == 0) {
		ws_progress(&c, bytes, t0, true);
		if (ret) {
			*ret = (struct ws_result){ .bytes_read = bytes, .io = io.uring ? "io_uring" : "threads",
						   .seconds = (double)(hr_now_ns() - t0) / 1e9 };
			for (uint32_t f = 0; f < plan->n_files; f++)
				if (c.fds[f] >= 0)
					*(c.direct[f] ? &ret->files_direct : &ret->files_buffered) += 1;
		}
	}
out:
	if (io_up)
		ws_io_fini(&io);
	if (r < 0 && be->ops->sync)
		(void)be->ops->sync(be); /* no copy may still read a buffer freed below */
	for (uint32_t k = 0; k < plan->n_tensors; k++) {
		free(plan->tensors[k].gather);
		plan->tensors[k].gather = NULL;
	}
	for (unsigned i = 0; i < depth; i++) {
		if (c.pinned)
			be->ops->free_host(be, c.raw[i]);
		else
			free(c.raw[i]);
	}
	for (uint32_t f = 0; c.fds && f < plan->n_files; f++)
		if (c.fds[f] >= 0)
			close(c.fds[f]);
	free(c.fds);
	free(c.direct);
	free(c.chunks);
	return r;
}

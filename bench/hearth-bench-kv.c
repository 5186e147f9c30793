/* SPDX-License-Identifier: MIT */
/*
 * hearth-bench-kv: the L2 KV tier against plain O_DIRECT I/O on the same file,
 * for the page sizes of two model shapes (bf16, 16 tokens per page):
 *   1b  Llama-3.2-1B: 16 layers, 8 kv heads, head_dim 64  -> 512 KiB pages
 *   8b  Llama-3-8B:   32 layers, 8 kv heads, head_dim 128 -> 2 MiB pages
 * Measured in the same run, iterations interleaved: page-out (write) and
 * page-in (read) throughput of every slot of the file through the store, for
 * both pagers; the same bytes with one sequential pwrite/pread loop over a few
 * large buffers (the baseline); and the resume of a 2048-token session (128
 * pages: kv_l2_read of each into staging, wait for all) against the raw
 * sequential read of its bytes. Every page read is checked against the
 * checksum of its write (the store) and its stamp (here).
 * Prints a table; last line BENCH {json}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "bench_util.h"
#include "hr_common.h"
#include "kv_l2.h"

#define PAGE_TOKENS     16u
#define SESSION_TOKENS  2048u
#define SESSION_PAGES   (SESSION_TOKENS / PAGE_TOKENS)
#define PLAIN_CHUNK     (8u << 20) /* baseline: 8 MiB per call */
#define PLAIN_BUFS      4u
#define MAX_ITERS       64u
#define TMPFS_MAGIC_NR  0x01021994

struct shape {
	const char *name;
	uint32_t n_layers, n_kv_heads, head_dim;
	uint32_t file_pages; /* pages moved per throughput pass */
};

static const struct shape shapes[] = {
	{ "1b", 16, 8, 64, 512 },  /* 512 KiB pages, 256 MiB */
	{ "8b", 32, 8, 128, 256 }, /* 2 MiB pages, 512 MiB */
};

enum side { SIDE_PLAIN, SIDE_URING, SIDE_THREADS, N_SIDES };
static const char *const side_names[N_SIDES] = { "plain", "io_uring", "threads" };

struct opts {
	const char *dir;
	unsigned shape_mask;
	uint32_t iters, qd, threads;
	bool verbose;
};

/* Resumes per store pass, each paired with a raw read (the raw read first
 * in even pairs, second in odd ones): about 256 MiB of session reads per
 * pass, at least two pairs (4 for the 1b shape, 2 for 8b). */
#define RESUME_PAIRS(page_bytes) \
	((uint32_t)HR_MAX(2ull, (256ull << 20) / ((uint64_t)SESSION_PAGES * (page_bytes))))
#define MAX_PAIRS 8u

/* Per shape, per side: nanoseconds per iteration (resume: per pair). */
struct results {
	uint64_t w_ns[N_SIDES][MAX_ITERS], r_ns[N_SIDES][MAX_ITERS];
	uint64_t resume_ns[N_SIDES][MAX_ITERS * MAX_PAIRS], raw_ns[N_SIDES][MAX_ITERS * MAX_PAIRS];
	uint32_t n_resume[N_SIDES];
	bool ran[N_SIDES];
	bool direct;
	char notes[600];
};

static char workdir[4096], cur_file[4200];
static bool have_uring = true;

static void cleanup(void)
{
	if (cur_file[0])
		unlink(cur_file);
	if (workdir[0])
		rmdir(workdir);
}

static void die(const char *what, int err)
{
	fprintf(stderr, "hearth-bench-kv: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static size_t page_bytes_of(const struct shape *s)
{
	return (size_t)PAGE_TOKENS * s->n_layers * 2 * s->n_kv_heads * s->head_dim * 2;
}

static void fill_random(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t x = seed | 1;

	for (size_t i = 0; i + 8 <= len; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, 8);
	}
}

/* Each page carries its index at both ends, so that a page read from the
 * wrong slot (or a stale one) shows. */
static void stamp(uint8_t *p, size_t len, uint64_t idx)
{
	memcpy(p, &idx, 8);
	memcpy(p + len - 8, &idx, 8);
}

static bool stamp_ok(const uint8_t *p, size_t len, uint64_t idx)
{
	return !memcmp(p, &idx, 8) && !memcmp(p + len - 8, &idx, 8);
}

/* ---- baseline: one sequential loop, a few large buffers ----------------- */

static int full_io(int fd, bool write, uint8_t *buf, size_t len, off_t off)
{
	while (len) {
		ssize_t n = write ? pwrite(fd, buf, len, off) : pread(fd, buf, len, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		buf += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

static uint64_t plain_loop(int fd, uint8_t **bufs, bool write, uint64_t bytes, bool check)
{
	uint64_t t0 = hr_now_ns();
	uint32_t i = 0;
	int ret;

	for (uint64_t off = 0; off < bytes; off += PLAIN_CHUNK, i++) {
		size_t len = (size_t)HR_MIN((uint64_t)PLAIN_CHUNK, bytes - off);
		uint8_t *b = bufs[i % PLAIN_BUFS];

		if (write)
			stamp(b, len, i);
		if ((ret = full_io(fd, write, b, len, (off_t)off)) < 0)
			die(write ? "plain pwrite" : "plain pread", ret);
		if (!write && check && !stamp_ok(b, len, i))
			die("plain read back a wrong chunk", EIO);
	}
	return hr_now_ns() - t0;
}

static void plain_pass(const char *path, uint64_t bytes, struct results *res, uint32_t it,
		       bool *direct)
{
	uint8_t *bufs[PLAIN_BUFS];
	int fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);

	*direct = fd >= 0;
	if (fd < 0 && errno == EINVAL)
		fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die(path, errno);
	for (uint32_t i = 0; i < PLAIN_BUFS; i++) {
		if (posix_memalign((void **)&bufs[i], 4096, PLAIN_CHUNK))
			die("alloc", ENOMEM);
		fill_random(bufs[i], PLAIN_CHUNK, 1000 + i);
	}
	res->w_ns[SIDE_PLAIN][it] = plain_loop(fd, bufs, true, bytes, true);
	res->r_ns[SIDE_PLAIN][it] = plain_loop(fd, bufs, false, bytes, true);
	res->ran[SIDE_PLAIN] = true;
	for (uint32_t i = 0; i < PLAIN_BUFS; i++)
		free(bufs[i]);
	close(fd);
}

/* The raw read of a session's bytes (the file's first SESSION_PAGES slots:
 * the store hands slots out in order from an empty file). */
static uint64_t raw_read(const char *path, uint64_t bytes)
{
	uint8_t *bufs[PLAIN_BUFS];
	uint64_t ns;
	int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);

	if (fd < 0 && errno == EINVAL)
		fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(path, errno);
	for (uint32_t i = 0; i < PLAIN_BUFS; i++) {
		if (posix_memalign((void **)&bufs[i], 4096, PLAIN_CHUNK))
			die("alloc", ENOMEM);
		memset(bufs[i], 0, PLAIN_CHUNK); /* no page faults in the timed loop */
	}
	ns = plain_loop(fd, bufs, false, bytes, false);
	for (uint32_t i = 0; i < PLAIN_BUFS; i++)
		free(bufs[i]);
	close(fd);
	return ns;
}

/* ---- the store ----------------------------------------------------------- */

struct store_run {
	struct kv_l2 *l2;
	size_t page_bytes;
	uint32_t n_pages, qd;
	uint8_t **bufs;        /* every staging buffer, held for the whole run */
	uint32_t *free_bufs, n_free_bufs;
	uint32_t *slots;       /* page i lives in slots[i] */
	uint64_t *checksums;   /* of page i, from its write's completion */
	struct kv_l2_io *ios, *out;
};

static void reap(struct store_run *s, bool write, uint32_t min, uint32_t *done)
{
	int r = kv_l2_wait(s->l2, s->out, min, s->qd);

	if (r < 0)
		die("kv_l2_wait", r);
	for (int i = 0; i < r; i++) {
		const struct kv_l2_io *io = &s->out[i];

		if (io->res < 0)
			die(write ? "page-out" : "page-in (checksum or I/O)", io->res);
		if (write)
			s->checksums[io->tag] = io->checksum;
		else if (!stamp_ok(io->buf, s->page_bytes, io->tag))
			die("page-in read back a wrong page", EIO);
		s->free_bufs[s->n_free_bufs++] = (uint32_t)(((uint8_t *)io->buf - s->bufs[0]) /
							    kv_l2_slot_bytes(s->page_bytes));
	}
	*done += (uint32_t)r;
}

/* Move pages [0, n) with the queue kept full: each round submits one batch
 * of everything that fits, then reaps at least one. */
static uint64_t store_loop(struct store_run *s, bool write, uint32_t n)
{
	uint64_t t0 = hr_now_ns();
	uint32_t next = 0, done = 0;

	while (done < n) {
		uint32_t k = 0, room = s->qd - kv_l2_in_flight(s->l2);
		int r;

		while (next + k < n && k < room && s->n_free_bufs) {
			uint32_t b = s->free_bufs[--s->n_free_bufs], p = next + k;

			if (write)
				stamp(s->bufs[b], s->page_bytes, p);
			s->ios[k++] = (struct kv_l2_io){ .tag = p, .buf = s->bufs[b], .slot = s->slots[p],
							 .checksum = write ? 0 : s->checksums[p] };
		}
		if (k) {
			if ((r = write ? kv_l2_write(s->l2, s->ios, k) : kv_l2_read(s->l2, s->ios, k)) < 0)
				die(write ? "kv_l2_write" : "kv_l2_read", r);
			if ((uint32_t)r != k)
				die("queue refused a batch that fits", EAGAIN);
			next += k;
		}
		reap(s, write, 1, &done);
	}
	return hr_now_ns() - t0;
}

/* The session's pages each into a staging buffer of its own (they are not
 * recycled: they hold the session), submitted in batches as the queue
 * allows, until all are in. */
static uint64_t resume(struct store_run *s)
{
	uint64_t t0 = hr_now_ns();
	uint32_t next = 0, done = 0;

	s->n_free_bufs = 0;
	while (done < SESSION_PAGES) {
		uint32_t k = HR_MIN(SESSION_PAGES - next, s->qd - kv_l2_in_flight(s->l2));
		int r;

		for (uint32_t i = 0; i < k; i++)
			s->ios[i] = (struct kv_l2_io){ .tag = next + i, .buf = s->bufs[next + i],
						       .slot = s->slots[next + i],
						       .checksum = s->checksums[next + i] };
		if (k && (r = kv_l2_read(s->l2, s->ios, k)) != (int)k)
			die("kv_l2_read (resume)", r < 0 ? r : EAGAIN);
		next += k;
		reap(s, false, 1, &done);
	}
	return hr_now_ns() - t0;
}

static void store_pass(const struct opts *o, const char *path, const struct shape *sh,
		       enum kv_l2_pager pager, enum side side, struct results *res, uint32_t it)
{
	struct store_run s = { .page_bytes = page_bytes_of(sh), .n_pages = sh->file_pages,
			       .qd = o->qd };
	uint32_t staging = HR_MAX(o->qd, SESSION_PAGES);
	struct kv_l2_params p = {
		.path = path,
		.file_bytes = (uint64_t)sh->file_pages * kv_l2_slot_bytes(s.page_bytes),
		.page_bytes = s.page_bytes,
		.staging_pages = staging,
		.queue_depth = o->qd,
		.threads = o->threads,
		.pager = pager,
	};
	char err[512];

	s.l2 = kv_l2_open(&p, err, sizeof(err));
	if (!s.l2) {
		if (pager == KV_L2_PAGER_URING && it == 0) {
			printf("io_uring pager unavailable: %s\n", err);
			have_uring = false;
			return;
		}
		fprintf(stderr, "hearth-bench-kv: %s\n", err);
		exit(1);
	}
	res->direct = res->direct && kv_l2_is_direct(s.l2);
	if (*kv_l2_notes(s.l2) && !res->notes[0])
		snprintf(res->notes, sizeof(res->notes), "%s", kv_l2_notes(s.l2));
	s.bufs = calloc(staging, sizeof(*s.bufs));
	s.free_bufs = calloc(staging, sizeof(*s.free_bufs));
	s.slots = calloc(s.n_pages, sizeof(*s.slots));
	s.checksums = calloc(s.n_pages, sizeof(*s.checksums));
	s.ios = calloc(HR_MAX(o->qd, SESSION_PAGES), sizeof(*s.ios));
	s.out = calloc(HR_MAX(o->qd, SESSION_PAGES), sizeof(*s.out));
	if (!s.bufs || !s.free_bufs || !s.slots || !s.checksums || !s.ios || !s.out)
		die("alloc", ENOMEM);
	for (uint32_t i = 0; i < staging; i++) {
		s.bufs[i] = kv_l2_staging_get(s.l2);
		fill_random(s.bufs[i], s.page_bytes, 77 + i);
		s.free_bufs[staging - 1 - i] = i;
	}
	s.n_free_bufs = staging;
	for (uint32_t i = 0; i < s.n_pages; i++) {
		int64_t slot = kv_l2_slot_alloc(s.l2);

		if (slot < 0)
			die("kv_l2_slot_alloc", (int)slot);
		s.slots[i] = (uint32_t)slot;
	}

	res->w_ns[side][it] = store_loop(&s, true, s.n_pages);
	res->r_ns[side][it] = store_loop(&s, false, s.n_pages);

	/* Resume, paired with the raw read of the same bytes right before or
	 * after it (alternating), so that both see the same disk. */
	for (uint32_t k = 0; k < RESUME_PAIRS(s.page_bytes); k++) {
		uint32_t at = it * RESUME_PAIRS(s.page_bytes) + k;
		uint64_t raw = 0;

		if (k % 2 == 0)
			raw = raw_read(path, (uint64_t)SESSION_PAGES * s.page_bytes);
		res->resume_ns[side][at] = resume(&s);
		if (k % 2 == 1)
			raw = raw_read(path, (uint64_t)SESSION_PAGES * s.page_bytes);
		res->raw_ns[side][at] = raw;
	}
	res->n_resume[side] = (it + 1) * RESUME_PAIRS(s.page_bytes);
	res->ran[side] = true;

	kv_l2_close(s.l2);
	free(s.bufs);
	free(s.free_bufs);
	free(s.slots);
	free(s.checksums);
	free(s.ios);
	free(s.out);
}

/* ---- driver -------------------------------------------------------------- */

static double median_ns(const uint64_t *ns, uint32_t n)
{
	uint64_t tmp[MAX_ITERS * MAX_PAIRS];
	struct bench_stats st;

	memcpy(tmp, ns, n * sizeof(*ns));
	bench_summarise(tmp, n, &st);
	return st.median;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median of n values (sorted in place). */
static double median_d(double *v, uint32_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Store over plain, per iteration (the sides of one iteration ran within
 * seconds of each other, so a drifting disk cancels out), then the median. */
static double paired_ratio(const uint64_t *plain_ns, const uint64_t *side_ns, uint32_t n)
{
	double v[MAX_ITERS];

	for (uint32_t i = 0; i < n; i++)
		v[i] = (double)plain_ns[i] / (double)side_ns[i];
	return median_d(v, n);
}

/* Median of resume - raw over the pairs, in ms. */
static double paired_diff_ms(const uint64_t *a_ns, const uint64_t *b_ns, uint32_t n)
{
	double v[MAX_ITERS * MAX_PAIRS];

	for (uint32_t i = 0; i < n; i++)
		v[i] = ((double)a_ns[i] - (double)b_ns[i]) / 1e6;
	return median_d(v, n);
}

static double gbps(uint64_t bytes, double ns)
{
	return ns > 0 ? (double)bytes / ns : 0; /* bytes per ns = GB/s */
}

static void check_space(const char *dir, uint64_t need)
{
	struct statvfs sv;

	if (statvfs(dir, &sv) < 0)
		die(dir, errno);
	if ((uint64_t)sv.f_bavail * sv.f_frsize < need + (256ull << 20)) {
		fprintf(stderr, "hearth-bench-kv: %s: %.0f MiB free, need %.0f MiB (+256 MiB "
			"margin)\n", dir, (double)sv.f_bavail * sv.f_frsize / 1048576.0,
			need / 1048576.0);
		exit(1);
	}
}

/* --verbose: every sample of one iteration, in ms. */
static void dump_iteration(const struct shape *sh, const struct results *res, uint32_t it)
{
	printf("%s iter %u:", sh->name, it);
	for (int side = 0; side < N_SIDES; side++) {
		if (!res->ran[side])
			continue;
		printf(" %s w %.1f r %.1f", side_names[side], res->w_ns[side][it] / 1e6,
		       res->r_ns[side][it] / 1e6);
		for (uint32_t k = 0; side != SIDE_PLAIN && k < res->n_resume[side] / (it + 1); k++) {
			uint32_t at = it * (res->n_resume[side] / (it + 1)) + k;

			printf(" [resume %.1f raw %.1f]", res->resume_ns[side][at] / 1e6,
			       res->raw_ns[side][at] / 1e6);
		}
		printf(";");
	}
	printf("\n");
}

static void run_shape(const struct opts *o, const struct shape *sh, struct results *res)
{
	size_t pb = page_bytes_of(sh);
	uint64_t bytes = (uint64_t)sh->file_pages * pb;
	bool plain_direct = true;
	int fd;

	snprintf(cur_file, sizeof(cur_file), "%s/l2-%s.bin", workdir, sh->name);
	check_space(o->dir, bytes);
	/* Create and preallocate through the store, then write every byte once
	 * (untimed) so that no side pays for converting unwritten extents. */
	fd = open(cur_file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || fallocate(fd, 0, 0, (off_t)bytes) < 0)
		die(cur_file, errno);
	close(fd);
	res->direct = true;
	{
		struct results warm;

		plain_pass(cur_file, bytes, &warm, 0, &plain_direct);
	}
	for (uint32_t it = 0; it < o->iters; it++) {
		/* Rotate the order so that no side always runs first. */
		for (uint32_t j = 0; j < N_SIDES; j++) {
			enum side side = (enum side)((it + j) % N_SIDES);

			if (side == SIDE_PLAIN)
				plain_pass(cur_file, bytes, res, it, &plain_direct);
			else if (side == SIDE_URING && have_uring)
				store_pass(o, cur_file, sh, KV_L2_PAGER_URING, side, res, it);
			else if (side == SIDE_THREADS)
				store_pass(o, cur_file, sh, KV_L2_PAGER_THREADS, side, res, it);
		}
		if (o->verbose)
			dump_iteration(sh, res, it);
	}
	res->direct = res->direct && plain_direct;
	unlink(cur_file);
	cur_file[0] = 0;
}

static void usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [--dir DIR] [--shape 1b|8b|both] [--iters N] [--qd N] "
		"[--threads N] [--verbose]\n", argv0);
	exit(2);
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "dir", required_argument, NULL, 'd' },   { "shape", required_argument, NULL, 's' },
		{ "iters", required_argument, NULL, 'i' }, { "qd", required_argument, NULL, 'q' },
		{ "threads", required_argument, NULL, 't' }, { "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *tmp = getenv("TMPDIR");
	int c;

	*o = (struct opts){ .dir = tmp && *tmp ? tmp : "/var/tmp", .shape_mask = 3, .iters = 5,
			    .qd = 32, .threads = 4 };
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'd': o->dir = optarg; break;
		case 's':
			o->shape_mask = !strcmp(optarg, "1b") ? 1 : !strcmp(optarg, "8b") ? 2 :
					!strcmp(optarg, "both") ? 3 : 0;
			if (!o->shape_mask)
				usage(argv[0]);
			break;
		case 'i': o->iters = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'q': o->qd = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 't': o->threads = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'v': o->verbose = true; break;
		default: usage(argv[0]);
		}
	}
	if (!o->iters || o->iters > MAX_ITERS || !o->qd || o->qd > KV_L2_MAX_QUEUE_DEPTH ||
	    !o->threads || o->threads > KV_L2_MAX_THREADS)
		usage(argv[0]);
}

int main(int argc, char **argv)
{
	static struct results res[HR_ARRAY_SIZE(shapes)];
	char json[4096];
	size_t jl = 0;
	bool direct = true;
	const char *auto_pager;
	struct statfs sf;
	struct opts o;

	parse(argc, argv, &o);
	snprintf(workdir, sizeof(workdir), "%s/hearth-bench-kv-XXXXXX", o.dir);
	if (!mkdtemp(workdir))
		die(o.dir, errno);
	atexit(cleanup);
	if (statfs(workdir, &sf) == 0 && sf.f_type == TMPFS_MAGIC_NR)
		printf("warning: %s is tmpfs: memory, not a disk\n", o.dir);
	printf("dir %s, %u iterations (median shown), queue depth %u, %u pool threads, "
	       "%ld cores\n", o.dir, o.iters, o.qd, o.threads, sysconf(_SC_NPROCESSORS_ONLN));

	for (uint32_t si = 0; si < HR_ARRAY_SIZE(shapes); si++)
		if (o.shape_mask & (1u << si))
			run_shape(&o, &shapes[si], &res[si]);
	auto_pager = have_uring ? "io_uring" : "threads";

	printf("\n%-5s %-8s %-9s %8s %8s %10s %10s   %s\n", "shape", "page", "side", "out GB/s",
	       "in GB/s", "resume ms", "raw ms", "store / plain (paired medians)");
	for (uint32_t si = 0; si < HR_ARRAY_SIZE(shapes); si++) {
		const struct shape *sh = &shapes[si];
		const struct results *r = &res[si];
		uint64_t bytes = (uint64_t)sh->file_pages * page_bytes_of(sh);
		double w[N_SIDES] = { 0 }, rd[N_SIDES] = { 0 }, rs[N_SIDES] = { 0 };
		double raw[N_SIDES] = { 0 }, out_x[N_SIDES] = { 0 }, in_x[N_SIDES] = { 0 };
		double diff[N_SIDES] = { 0 };
		enum side as = have_uring ? SIDE_URING : SIDE_THREADS;

		if (!(o.shape_mask & (1u << si)))
			continue;
		direct = direct && r->direct;
		for (int side = 0; side < N_SIDES; side++) {
			if (!r->ran[side])
				continue;
			w[side] = median_ns(r->w_ns[side], o.iters);
			rd[side] = median_ns(r->r_ns[side], o.iters);
			if (side == SIDE_PLAIN)
				continue;
			out_x[side] = paired_ratio(r->w_ns[SIDE_PLAIN], r->w_ns[side], o.iters);
			in_x[side] = paired_ratio(r->r_ns[SIDE_PLAIN], r->r_ns[side], o.iters);
			rs[side] = median_ns(r->resume_ns[side], r->n_resume[side]);
			raw[side] = median_ns(r->raw_ns[side], r->n_resume[side]);
			diff[side] = paired_diff_ms(r->resume_ns[side], r->raw_ns[side],
						    r->n_resume[side]);
		}
		for (int side = 0; side < N_SIDES; side++) {
			if (!r->ran[side])
				continue;
			printf("%-5s %4zu KiB %-9s %8.2f %8.2f", sh->name, page_bytes_of(sh) >> 10,
			       side_names[side], gbps(bytes, w[side]), gbps(bytes, rd[side]));
			if (side == SIDE_PLAIN) {
				printf("\n");
				continue;
			}
			printf(" %10.2f %10.2f   out %.2fx, in %.2fx, resume %+.2f ms\n",
			       rs[side] / 1e6, raw[side] / 1e6, out_x[side], in_x[side], diff[side]);
		}
		jl += (size_t)snprintf(json + jl, sizeof(json) - jl,
			"\"%s\":{\"page_bytes\":%zu,\"pages\":%u,\"session_pages\":%u,"
			"\"pageout_ratio\":%.3f,\"pagein_ratio\":%.3f,\"resume_ms\":%.2f,"
			"\"raw_read_ms\":%.2f,\"resume_minus_raw_ms\":%.2f,"
			"\"plain_write_gbps\":%.3f,\"plain_read_gbps\":%.3f,"
			"\"pageout_gbps\":%.3f,\"pagein_gbps\":%.3f,"
			"\"threads_pageout_ratio\":%.3f,\"threads_pagein_ratio\":%.3f,"
			"\"threads_resume_ms\":%.2f,\"threads_raw_read_ms\":%.2f,"
			"\"threads_resume_minus_raw_ms\":%.2f,\"resume_samples\":%u},",
			sh->name, page_bytes_of(sh), sh->file_pages, SESSION_PAGES, out_x[as],
			in_x[as], rs[as] / 1e6, raw[as] / 1e6, diff[as], gbps(bytes, w[SIDE_PLAIN]),
			gbps(bytes, rd[SIDE_PLAIN]), gbps(bytes, w[as]), gbps(bytes, rd[as]),
			out_x[SIDE_THREADS], in_x[SIDE_THREADS], rs[SIDE_THREADS] / 1e6,
			raw[SIDE_THREADS] / 1e6, diff[SIDE_THREADS], r->n_resume[as]);
		if (r->notes[0])
			printf("notes (%s): %s\n", sh->name, r->notes);
	}
	if (!direct)
		printf("warning: O_DIRECT was not in effect: figures include the page cache\n");
	printf("validated: every page read back matched its write's checksum and stamp\n");
	printf("BENCH {\"bench\":\"kv_l2\",\"pager\":\"%s\",\"direct\":%s,\"qd\":%u,"
	       "\"threads\":%u,\"iters\":%u,%s\"ok\":true}\n", auto_pager,
	       direct ? "true" : "false", o.qd, o.threads, o.iters, json);
	return 0;
}

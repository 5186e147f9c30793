/* SPDX-License-Identifier: MIT */
/*
 * hearth-bench-load-model: time model_load_ex of a model directory to
 * backend-resident weights (load + ops->sync), from the page cache and from
 * disk, against a raw O_DIRECT read of the same files in the same run (the
 * loop `dd iflag=direct bs=16M` does: sequential 16 MiB reads, one at a time).
 * "From disk" drops the files from the page cache first (fsync, then
 * posix_fadvise DONTNEED; with --drop-caches also /proc/sys/vm/drop_caches
 * when writable, which empties the whole machine's page cache) and
 * checks with mincore that they are gone. Every load is validated: a sample
 * of tensors (embedding, final norm, lm_head, every tensor of the first,
 * middle and last layers; windows of large ones) is downloaded back and
 * compared with the file bytes converted to the backend's type.
 * A second raw reference reads the same files the way the loader does, with
 * none of its work: io_uring O_DIRECT reads of its chunk size, as many in
 * flight as its buffers, in file order. Loader against it is the loader's own
 * cost; it against the dd-like read is what the read shape costs on this disk.
 * Last line: BENCH {json}.
 *
 *   hearth-bench-load-model [--backend B] [--mode auto|stream|mmap] [--reps N]
 *                           [--no-disk] [--drop-caches] MODEL_DIR
 */
#define _GNU_SOURCE /* O_DIRECT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "hearth_config.h"
#if HEARTH_HAVE_IO_URING
#include <liburing.h>
#endif

#include "hr_common.h"
#include "model.h"

#define MAX_FILES 256
#define RAW_BS ((size_t)16 << 20)
#define WINDOW ((size_t)8 << 20) /* per sampled window of a large tensor */

struct files {
	char *path[MAX_FILES];
	uint64_t size[MAX_FILES];
	unsigned n;
	uint64_t total;
};

static int list_files(const char *dir, struct files *f)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return -errno;
	while ((e = readdir(d)) && f->n < MAX_FILES) {
		size_t n = strlen(e->d_name);
		struct stat st;
		char *p;

		if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors"))
			continue;
		if (asprintf(&p, "%s/%s", dir, e->d_name) < 0)
			break;
		if (stat(p, &st) < 0 || !S_ISREG(st.st_mode)) {
			free(p);
			continue;
		}
		f->path[f->n] = p;
		f->size[f->n++] = (uint64_t)st.st_size;
		f->total += (uint64_t)st.st_size;
	}
	closedir(d);
	return f->n ? 0 : -ENOENT;
}

/* Share of the files' pages in the page cache. */
static double resident(const struct files *f)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t in = 0, all = 0;

	for (unsigned i = 0; i < f->n; i++) {
		int fd = open(f->path[i], O_RDONLY | O_CLOEXEC);
		size_t np = (f->size[i] + (uint64_t)pg - 1) / (uint64_t)pg;
		unsigned char *vec;
		void *map;

		if (fd < 0 || !f->size[i]) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		map = mmap(NULL, f->size[i], PROT_READ, MAP_SHARED, fd, 0);
		close(fd);
		vec = malloc(np);
		if (map != MAP_FAILED && vec && mincore(map, f->size[i], vec) == 0)
			for (size_t j = 0; j < np; j++)
				in += vec[j] & 1;
		all += np;
		free(vec);
		if (map != MAP_FAILED)
			munmap(map, f->size[i]);
	}
	return all ? (double)in / (double)all : 0;
}

static bool use_drop_caches; /* --drop-caches: also the global knob */

/* Evict the files from the page cache; returns how ("fadvise", ...). */
static const char *drop_cache(const struct files *f)
{
	bool global = false;
	int fd;

	for (unsigned i = 0; i < f->n; i++) {
		fd = open(f->path[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		(void)fsync(fd); /* dirty pages are not dropped */
		(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
	fd = use_drop_caches ? open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC) : -1;
	if (fd >= 0) {
		sync();
		global = write(fd, "1", 1) == 1;
		close(fd);
	}
	return global ? "fsync+fadvise+drop_caches" : "fsync+fadvise";
}

/* Read every file whole; O_DIRECT: like dd iflag=direct bs=16M. Returns seconds or < 0. */
static double read_all(const struct files *f, bool direct, uint8_t *buf)
{
	uint64_t t0 = hr_now_ns();

	for (unsigned i = 0; i < f->n; i++) {
		int fd = open(f->path[i], O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
		ssize_t n;

		if (fd < 0)
			return -1;
		while ((n = read(fd, buf, RAW_BS)) > 0)
			;
		close(fd);
		if (n < 0)
			return -1;
	}
	return (double)(hr_now_ns() - t0) / 1e9;
}

/*
 * Read every file whole in `chunk`-byte O_DIRECT reads, `depth` in flight
 * through io_uring, in file order (the loader's read shape), into bufs[depth]
 * and nothing more. Returns seconds, or < 0 (-1 with errno set).
 */
static double read_all_deep(const struct files *f, size_t chunk, unsigned depth, uint8_t **bufs)
{
#if HEARTH_HAVE_IO_URING
	struct io_uring ring;
	uint64_t t0 = hr_now_ns(), off = 0, got = 0;
	unsigned fi = 0, n_free = depth, free_slot[64];
	size_t want[64];
	int fds[MAX_FILES], r;

	if (depth > 64) {
		errno = EINVAL;
		return -1;
	}
	if ((r = io_uring_queue_init(depth, &ring, 0)) < 0) {
		errno = -r;
		return -1;
	}
	for (unsigned i = 0; i < depth; i++)
		free_slot[i] = i;
	for (unsigned i = 0; i < f->n; i++)
		fds[i] = -1;
	for (unsigned i = 0; i < f->n && r >= 0; i++)
		if ((fds[i] = open(f->path[i], O_RDONLY | O_CLOEXEC | O_DIRECT)) < 0)
			r = -errno;
	while (r >= 0 && (fi < f->n || n_free < depth)) {
		struct io_uring_cqe *cqe;
		unsigned b;

		/* Every free buffer takes the next chunk; then one completion. */
		while (n_free && fi < f->n) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

			b = free_slot[--n_free];
			want[b] = (size_t)HR_MIN((uint64_t)chunk, f->size[fi] - off);
			io_uring_prep_read(sqe, fds[fi], bufs[b],
					   (unsigned)HR_ALIGN_UP(want[b], (size_t)4096), off);
			io_uring_sqe_set_data64(sqe, b);
			off += want[b];
			if (off >= f->size[fi]) {
				fi++;
				off = 0;
			}
		}
		if ((r = io_uring_submit_and_wait(&ring, 1)) < 0 ||
		    (r = io_uring_wait_cqe(&ring, &cqe)) < 0)
			break;
		b = (unsigned)io_uring_cqe_get_data64(cqe);
		r = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
		got += r > 0 ? HR_MIN((size_t)r, want[b]) : 0;
		free_slot[n_free++] = b;
	}
	io_uring_queue_exit(&ring);
	for (unsigned i = 0; i < f->n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (r < 0 || got != f->total) {
		errno = r < 0 ? -r : EIO; /* a short read: not the figure it claims */
		return -1;
	}
	return (double)(hr_now_ns() - t0) / 1e9;
#else
	(void)f;
	(void)chunk;
	(void)depth;
	(void)bufs;
	errno = ENOSYS;
	return -1;
#endif
}

/* ---------------------------------------------------------------- validation */

struct check {
	unsigned tensors;
	uint64_t bytes, mismatches;
	uint64_t digest;
	XXH3_state_t *xxh;
};

/* Expected backend bytes of elements [e0, e0 + n) of t. */
static void expect(const struct st_tensor *t, enum kern_dtype act, size_t e0, size_t n, uint8_t *out)
{
	size_t es = kern_dtype_size(t->dtype);
	const uint8_t *src = (const uint8_t *)t->data + e0 * es;

	if (act == t->dtype) {
		memcpy(out, src, n * es);
		return;
	}
	if (act == KERN_F32) {
		kern_to_f32((float *)(void *)out, src, t->dtype, n);
		return;
	}
	for (size_t i = 0; i < n; i++) { /* to bf16 */
		float x;
		uint16_t h;

		kern_to_f32(&x, src + i * es, t->dtype, 1);
		h = kern_f32_to_bf16(x);
		memcpy(out + 2 * i, &h, 2);
	}
}

static int check_tensor(struct kern_backend *be, const struct st_file *sf, unsigned nsf,
			const char *name, const void *w, struct check *ck)
{
	const struct st_tensor *t = NULL;
	size_t ab = be->act_bytes, n, starts[3], nw;
	uint8_t *got, *want;

	for (unsigned i = 0; i < nsf && !t; i++)
		t = st_find(&sf[i], name);
	if (!t || !w)
		return t || w ? -ENOENT : 0; /* absent from both: an optional tensor */
	n = t->n_elems;
	nw = WINDOW / ab;
	starts[0] = 0;
	starts[1] = n > nw ? (n / 2) - nw / 2 : 0;
	starts[2] = n > nw ? n - nw : 0;
	got = malloc(WINDOW);
	want = malloc(WINDOW);
	if (!got || !want) {
		free(got);
		free(want);
		return -ENOMEM;
	}
	for (int k = 0; k < (n > nw ? 3 : 1); k++) {
		size_t cnt = HR_MIN(nw, n - starts[k]);
		int r = be->ops->download(be, got, (const uint8_t *)w + starts[k] * ab, cnt * ab);

		if (r < 0) {
			free(got);
			free(want);
			return r;
		}
		expect(t, be->act_dtype, starts[k], cnt, want);
		for (size_t i = 0; i < cnt * ab; i++)
			ck->mismatches += got[i] != want[i];
		XXH3_64bits_update(ck->xxh, got, cnt * ab);
		ck->bytes += cnt * ab;
	}
	ck->tensors++;
	free(got);
	free(want);
	return 0;
}

static int validate(struct kern_backend *be, const struct model *m, const struct files *f,
		    struct check *ck)
{
	struct st_file sf[MAX_FILES];
	uint32_t layers[3] = { 0, m->cfg.n_layers / 2, m->cfg.n_layers - 1 };
	char name[128], err[256];
	int r = 0;

	memset(ck, 0, sizeof(*ck));
	ck->xxh = XXH3_createState();
	if (!ck->xxh || XXH3_64bits_reset(ck->xxh) != XXH_OK)
		return -ENOMEM;
	for (unsigned i = 0; i < f->n; i++) {
		r = st_open(f->path[i], &sf[i], err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "validate: %s\n", err);
			for (unsigned j = 0; j < i; j++)
				st_close(&sf[j]);
			XXH3_freeState(ck->xxh);
			return r;
		}
	}
	if (!r)
		r = check_tensor(be, sf, f->n, "model.embed_tokens.weight", m->embed, ck);
	if (!r)
		r = check_tensor(be, sf, f->n, "model.norm.weight", m->final_norm, ck);
	if (!r && m->lm_head != m->embed)
		r = check_tensor(be, sf, f->n, "lm_head.weight", m->lm_head, ck);
	for (int k = 0; k < 3 && !r; k++)
		for (unsigned j = 0; model_layer_tensor_suffix(j) && !r; j++) {
			snprintf(name, sizeof(name), "model.layers.%u.%s", layers[k],
				 model_layer_tensor_suffix(j));
			r = check_tensor(be, sf, f->n, name, model_tensor(m, name), ck);
		}
	for (unsigned i = 0; i < f->n; i++)
		st_close(&sf[i]);
	ck->digest = XXH3_64bits_digest(ck->xxh);
	XXH3_freeState(ck->xxh);
	return r;
}

/* ---------------------------------------------------------------- main */

static void on_note(void *arg, const char *msg)
{
	(void)arg;
	fprintf(stderr, "  note: %s\n", msg);
}

static void on_progress(void *arg, const struct model_load_progress *p)
{
	if (!*(bool *)arg)
		return;
	fprintf(stderr, "  loading model: %.1f/%.1f GB, %.2f GB/s\n", p->done_bytes / 1e9,
		p->total_bytes / 1e9, p->seconds > 0 ? p->done_bytes / 1e9 / p->seconds : 0.0);
}

/* One timed load, validated; returns seconds or < 0. */
static double load_once(const char *dir, struct kern_backend *be, struct model_load_opts *o,
			const struct files *f, struct check *ck, char *how, size_t howlen)
{
	char err[512] = "";
	uint64_t t0 = hr_now_ns();
	struct model *m = model_load_ex(dir, be, o, err, sizeof(err));
	double s;

	if (!m || (be->ops->sync && be->ops->sync(be) < 0)) {
		fprintf(stderr, "load failed: %s\n", err[0] ? err : strerror(errno));
		model_free(m);
		return -1;
	}
	s = (double)(hr_now_ns() - t0) / 1e9;
	snprintf(how, howlen, "%s", m->load_how);
	if (validate(be, m, f, ck) < 0 || ck->mismatches || !ck->tensors) {
		fprintf(stderr, "VALIDATION FAILED: %llu mismatching bytes in %u tensors\n",
			(unsigned long long)ck->mismatches, ck->tensors);
		model_free(m);
		return -1;
	}
	model_free(m);
	return s;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_dbl);
	return n ? (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2) : 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "backend", required_argument, NULL, 'b' }, { "mode", required_argument, NULL, 'm' },
		{ "reps", required_argument, NULL, 'r' },    { "no-disk", no_argument, NULL, 'n' },
		{ "drop-caches", no_argument, NULL, 'd' },   { "help", no_argument, NULL, 'h' },
		{ "chunk-kib", required_argument, NULL, 'c' }, { "depth", required_argument, NULL, 'D' },
		{ "no-cache", no_argument, NULL, 'N' },      {}
	};
	const char *backend = "auto", *dir, *drop = "none";
	bool disk = true, verbose = true, cache_runs = true;
	struct model_load_opts o = { .note = on_note, .progress = on_progress, .arg = &verbose };
	struct files f = { 0 };
	struct check ck = { 0 };
	double cache[16], dsk[16], raw[16], deep[16], warm_s, res_after = -1, t;
	char how[128] = "", how_disk[128] = "";
	int reps = 3, reps_cache, nd = 0, c, fails = 0;
	struct kern_backend *be;
	uint8_t *buf, *deep_buf[64] = { NULL };
	size_t chunk;
	unsigned depth;
	int n_deep = 0;

	while ((c = getopt_long(argc, argv, "b:m:r:ndhc:D:N", lo, NULL)) != -1) {
		switch (c) {
		case 'b':
			backend = optarg;
			break;
		case 'm':
			o.mode = !strcmp(optarg, "stream") ? MODEL_LOAD_STREAM
				 : !strcmp(optarg, "mmap") ? MODEL_LOAD_MMAP : MODEL_LOAD_AUTO;
			break;
		case 'r':
			reps = HR_MAX(1, HR_MIN(atoi(optarg), 16));
			break;
		case 'n':
			disk = false;
			break;
		case 'd':
			use_drop_caches = true;
			break;
		case 'c':
			o.chunk_kib = (uint32_t)atoi(optarg);
			break;
		case 'D':
			o.depth = (uint32_t)atoi(optarg);
			break;
		case 'N':
			cache_runs = false;
			break;
		default:
			fprintf(stderr, "usage: %s [--backend auto|cpu|cuda] [--mode auto|stream|mmap] "
				"[--reps N] [--no-disk] [--no-cache] [--drop-caches] [--chunk-kib N] [--depth N] "
				"MODEL_DIR\n", argv[0]);
			return c == 'h' ? 0 : 2;
		}
	}
	reps_cache = reps;
	if (optind != argc - 1) {
		fprintf(stderr, "%s: one MODEL_DIR expected\n", argv[0]);
		return 2;
	}
	dir = argv[optind];
	if (list_files(dir, &f) < 0) {
		fprintf(stderr, "%s: no .safetensors files in %s\n", argv[0], dir);
		return 1;
	}
	be = kern_backend_new(backend, 0, 0);
	if (!be) {
		fprintf(stderr, "backend %s: %s\n", backend, strerror(errno));
		return errno == ENODEV ? 77 : 1;
	}
	if (posix_memalign((void **)&buf, 4096, RAW_BS))
		return 1;
	/* The loader's read shape. */
	model_load_read_shape(&o, &chunk, &depth);
	for (unsigned i = 0; i < depth; i++)
		if (posix_memalign((void **)&deep_buf[i], 4096, chunk))
			return 1;
	printf("model %s: %u files, %.2f GB; backend %s (%s)\n", dir, f.n, f.total / 1e9, be->name,
	       be->device_name);

	/* From the page cache: read the files once (buffered), then load. */
	if (!cache_runs)
		reps_cache = 0;
	warm_s = cache_runs ? read_all(&f, false, buf) : 0;
	if (cache_runs)
		printf("  page cache: %.0f%% resident after a buffered read (%.2f s, %.2f GB/s)\n",
	       resident(&f) * 100, warm_s, f.total / 1e9 / warm_s);
	t = cache_runs ? load_once(dir, be, &o, &f, &ck, how, sizeof(how)) : 0; /* warm-up */
	fails += t < 0;
	verbose = false;
	for (int i = 0; i < reps_cache && !fails; i++) {
		cache[i] = load_once(dir, be, &o, &f, &ck, how, sizeof(how));
		fails += cache[i] < 0;
		printf("  load from page cache #%d: %.3f s (%.2f GB/s) [%s]\n", i + 1, cache[i],
		       f.total / 1e9 / cache[i], how);
	}

	/* From disk: drop, raw O_DIRECT read; drop, load. */
	for (int i = 0; disk && i < reps && !fails; i++) {
		drop = drop_cache(&f);
		res_after = resident(&f);
		if (res_after > 0.05) {
			printf("  cannot drop the files from the page cache (%.0f%% still resident, %s): "
			       "no disk figures\n", res_after * 100, drop);
			break;
		}
		raw[nd] = read_all(&f, true, buf);
		if (raw[nd] < 0) {
			printf("  O_DIRECT read not possible here (%s): no disk figures\n", strerror(errno));
			break;
		}
		drop_cache(&f);
		deep[nd] = read_all_deep(&f, chunk, depth, deep_buf);
		if (deep[nd] < 0)
			printf("  raw io_uring read in the loader's shape not possible here (%s)\n",
			       strerror(errno));
		else
			n_deep++;
		drop_cache(&f);
		verbose = i == 0;
		dsk[nd] = load_once(dir, be, &o, &f, &ck, how_disk, sizeof(how_disk));
		if (dsk[nd] < 0) {
			fails++;
			break;
		}
		printf("  raw O_DIRECT read (16 MiB, QD1) #%d: %.3f s (%.2f GB/s); in the loader's shape "
		       "(%zu MiB x %u): %.3f s; load from disk: %.3f s (%.2f GB/s) = %.2fx raw [%s]\n",
		       i + 1, raw[nd], f.total / 1e9 / raw[nd], chunk >> 20, depth, deep[nd], dsk[nd],
		       f.total / 1e9 / dsk[nd], dsk[nd] / raw[nd], how_disk);
		nd++;
	}

	{
		double cm = fails || !reps_cache ? 0 : median(cache, reps_cache), dm = median(dsk, nd), rm = median(raw, nd);
		double qm = n_deep == nd ? median(deep, nd) : 0;
		double per16 = cm * 16e9 / (double)f.total;

		printf("\n  %-26s %10s %10s\n", "", "seconds", "GB/s");
		if (reps_cache)
			printf("  %-26s %10.3f %10.2f\n", "load from page cache", cm, f.total / 1e9 / cm);
		if (nd) {
			printf("  %-26s %10.3f %10.2f\n", "raw O_DIRECT read", rm, f.total / 1e9 / rm);
			if (qm > 0)
				printf("  %-26s %10.3f %10.2f   (%zu MiB x %u in flight, io_uring)\n",
				       "raw, the loader's shape", qm, f.total / 1e9 / qm, chunk >> 20, depth);
			printf("  %-26s %10.3f %10.2f   (%.2fx raw; target <= 1.2x)\n", "load from disk",
			       dm, f.total / 1e9 / dm, dm / rm);
		}
		printf("  page cache: %.2f s per 16 GB (target <= 3 s); validated %u tensors, %.1f MB, "
		       "%llu mismatches, xxh3 %016llx\n", per16, ck.tensors, ck.bytes / 1e6,
		       (unsigned long long)ck.mismatches, (unsigned long long)ck.digest);
		printf("BENCH {\"bench\":\"load_model\",\"model\":\"%s\",\"backend\":\"%s\",\"files\":%u,"
		       "\"bytes\":%llu,\"reps\":%d,\"how_cache\":\"%s\",\"how_disk\":\"%s\","
		       "\"cache_load_s\":%.4f,\"cache_gbps\":%.3f,\"cache_s_per_16gb\":%.3f,"
		       "\"drop\":\"%s\",\"resident_after_drop\":%.4f,\"disk_load_s\":%.4f,"
		       "\"raw_read_s\":%.4f,\"disk_vs_raw\":%.3f,\"raw_deep_read_s\":%.4f,"
		       "\"disk_vs_raw_deep\":%.3f,\"validated_tensors\":%u,"
		       "\"validated_bytes\":%llu,\"mismatches\":%llu,\"ok\":%s,"
		       "\"target_cache\":%s,\"target_disk\":%s}\n",
		       dir, be->name, f.n, (unsigned long long)f.total, reps, how, how_disk, cm,
		       cm > 0 ? f.total / 1e9 / cm : 0, per16, drop, res_after < 0 ? 0 : res_after,
		       dm, rm, nd ? dm / rm : 0, qm, qm > 0 ? dm / qm : 0, ck.tensors,
		       (unsigned long long)ck.bytes,
		       (unsigned long long)ck.mismatches, fails ? "false" : "true", reps_cache && per16 <= 3 ? "true" : "false",
		       nd && dm / rm <= 1.2 ? "true" : "false");
	}
	for (unsigned i = 0; i < f.n; i++)
		free(f.path[i]);
	for (unsigned i = 0; i < depth; i++)
		free(deep_buf[i]);
	free(buf);
	kern_backend_free(be);
	return fails ? 1 : 0;
}

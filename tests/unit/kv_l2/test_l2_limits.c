/* SPDX-License-Identifier: MIT */
/*
 * L2 store limits, for the pager named on the command line: parameter checks,
 * the slot allocator (next-fit order, exhaustion, free and mark_used errors),
 * one store per file (flock), and full disks: a file size limit
 * (RLIMIT_FSIZE) under which preallocation fails with EFBIG and writes past
 * the limit complete with -EFBIG, and a small tmpfs (when this process may
 * mount one) where preallocation fails with ENOSPC, and where a store
 * preallocated before the disk filled up keeps working; and a ramfs, which
 * refuses O_DIRECT and fallocate (the store falls back, and says so); and
 * io_uring refused by a seccomp filter (AUTO falls back to the pool).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "hr_common.h"
#include "l2t.h"

#define PAGE_BYTES (64 * 1024)

static char dir[4096];
static enum kv_l2_pager pager;

static struct kv_l2_params params(const char *path, uint64_t file_bytes)
{
	return (struct kv_l2_params){
		.path = path,
		.file_bytes = file_bytes,
		.page_bytes = PAGE_BYTES,
		.queue_depth = 8,
		.threads = 2,
		.pager = pager,
	};
}

static void expect_open_error(const struct kv_l2_params *p, int err_no, const char *needle)
{
	char err[512] = "";

	errno = 0;
	CHECK(!kv_l2_open(p, err, sizeof(err)));
	if (errno != err_no) {
		fprintf(stderr, "expected %s, got %s: %s\n", strerror(err_no), strerror(errno), err);
		exit(1);
	}
	if (needle && !strstr(err, needle)) {
		fprintf(stderr, "error \"%s\" does not mention \"%s\"\n", err, needle);
		exit(1);
	}
	printf("  expected error: %s\n", err);
}

static void test_params(void)
{
	char path[4200];
	struct kv_l2_params p;

	snprintf(path, sizeof(path), "%s/params.bin", dir);
	CHECK_EQ(kv_l2_slot_bytes(0), 0);
	CHECK_EQ(kv_l2_slot_bytes(1), 4096);
	CHECK_EQ(kv_l2_slot_bytes(4096), 4096);
	CHECK_EQ(kv_l2_slot_bytes(4097), 8192);
	CHECK_EQ(kv_l2_slot_bytes(SIZE_MAX), 0);
	errno = 0;
	CHECK(!kv_l2_open(NULL, NULL, 0) && errno == EINVAL);
	p = params(NULL, 1 << 20);
	expect_open_error(&p, EINVAL, "path");
	p = params(path, 1 << 20);
	p.page_bytes = 0;
	expect_open_error(&p, EINVAL, "page_bytes");
	p = params(path, PAGE_BYTES - 1);
	expect_open_error(&p, EINVAL, path);
	p = params(path, 1 << 20);
	p.queue_depth = KV_L2_MAX_QUEUE_DEPTH + 1;
	expect_open_error(&p, EINVAL, NULL);
	p = params(path, 1 << 20);
	p.flags = KV_L2_F_BUFFERED | KV_L2_F_REQUIRE_DIRECT;
	expect_open_error(&p, EINVAL, NULL);
	p = params(path, 1 << 20);
	p.pager = (enum kv_l2_pager)7;
	expect_open_error(&p, EINVAL, NULL);
	CHECK(access(path, F_OK) < 0); /* nothing created */
}

static void test_slots(void)
{
	char path[4200];
	struct kv_l2_params p;
	struct kv_l2 *l2, *again;

	snprintf(path, sizeof(path), "%s/slots.bin", dir);
	p = params(path, 130ull * PAGE_BYTES + 4095); /* 130 slots: 3 bitmap words */
	l2 = l2t_open(&p);
	CHECK_EQ(kv_l2_n_slots(l2), 130);
	CHECK_EQ(kv_l2_n_free_slots(l2), 130);
	for (int64_t i = 0; i < 130; i++)
		CHECK_EQ(kv_l2_slot_alloc(l2), i); /* next-fit hands them out in order */
	CHECK_EQ(kv_l2_slot_alloc(l2), -ENOSPC);
	CHECK_EQ(kv_l2_n_free_slots(l2), 0);
	CHECK_EQ(kv_l2_slot_free(l2, 70), 0);
	CHECK_EQ(kv_l2_slot_free(l2, 5), 0);
	CHECK_EQ(kv_l2_slot_free(l2, 5), -EINVAL);
	CHECK_EQ(kv_l2_slot_free(l2, 130), -EINVAL);
	CHECK_EQ(kv_l2_n_free_slots(l2), 2);
	CHECK_EQ(kv_l2_slot_alloc(l2), 5); /* the cursor wrapped to 0 */
	CHECK_EQ(kv_l2_slot_free(l2, 3), 0);
	CHECK_EQ(kv_l2_slot_alloc(l2), 70); /* from 6 onwards before 3 */
	CHECK_EQ(kv_l2_slot_alloc(l2), 3);
	CHECK_EQ(kv_l2_slot_alloc(l2), -ENOSPC);
	for (uint32_t i = 0; i < 130; i++)
		CHECK_EQ(kv_l2_slot_free(l2, i), 0);
	CHECK_EQ(kv_l2_slot_mark_used(l2, 129), 0);
	CHECK_EQ(kv_l2_slot_mark_used(l2, 129), -EEXIST);
	CHECK_EQ(kv_l2_slot_mark_used(l2, 130), -EINVAL);
	CHECK_EQ(kv_l2_n_free_slots(l2), 129);
	CHECK_EQ(kv_l2_slot_alloc(l2), 4); /* cursor after 3 */

	/* One store per file. */
	expect_open_error(&p, EBUSY, path);
	kv_l2_close(l2);
	again = l2t_open(&p);
	kv_l2_close(again);
	CHECK(unlink(path) == 0);
}

/* Fork, run fn in the child, return its exit status. */
static int in_child(void (*fn)(const char *), const char *arg)
{
	pid_t pid;
	int st;

	fflush(stdout); /* else the child flushes the parent's buffer too */
	pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		fn(arg);
		exit(0);
	}
	CHECK(waitpid(pid, &st, 0) == pid);
	CHECK(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static void limit_file_size(rlim_t bytes)
{
	struct rlimit rl = { .rlim_cur = bytes, .rlim_max = bytes };

	signal(SIGXFSZ, SIG_IGN); /* else the first write past the limit kills us */
	CHECK(setrlimit(RLIMIT_FSIZE, &rl) == 0);
}

/* Under a 1 MiB file size limit: a new 4 MiB store cannot be preallocated. */
static void child_fsize_open(const char *path)
{
	struct kv_l2_params p = params(path, 4 << 20);

	limit_file_size(1 << 20);
	expect_open_error(&p, EFBIG, path);
	expect_open_error(&p, EFBIG, "4194304 bytes");
	CHECK(access(path, F_OK) < 0 && errno == ENOENT); /* not left behind */
}

/* Under a limit of 1 MiB + half a page, a 4 MiB store made before: writes
 * below the limit succeed, the one across it is cut short there (and its
 * rest fails), those past it complete with -EFBIG. */
static void child_fsize_io(const char *path)
{
	struct kv_l2_params p = params(path, 4 << 20);
	struct kv_l2_io ios[8], out[8];
	struct kv_l2 *l2;
	uint32_t n_ok = 0, n_big = 0;

	limit_file_size((1 << 20) + PAGE_BYTES / 2);
	l2 = l2t_open(&p);
	for (uint32_t i = 0; i < 8; i++) {
		ios[i] = (struct kv_l2_io){ .buf = kv_l2_staging_get(l2), .slot = i * 8, .tag = i };
		l2t_fill(ios[i].buf, PAGE_BYTES, i, 1); /* slots 0, 8 in; 16 .. 56 past 1 MiB */
	}
	CHECK_EQ(kv_l2_write(l2, ios, 8), 8);
	CHECK_EQ(kv_l2_wait(l2, out, 8, 8), 8);
	for (uint32_t i = 0; i < 8; i++) {
		bool past = (uint64_t)out[i].slot * PAGE_BYTES >= (1 << 20);

		if (past)
			CHECK_EQ(out[i].res, -EFBIG);
		else
			CHECK_EQ(out[i].res, 0);
		n_ok += !past;
		n_big += past;
	}
	CHECK(n_ok == 2 && n_big == 6);
	/* The pages below the limit read back (ios[0..1] hold their checksums). */
	CHECK_EQ(kv_l2_read(l2, ios, 2), 2);
	CHECK_EQ(kv_l2_wait(l2, out, 2, 2), 2);
	CHECK(out[0].res == 0 && out[1].res == 0);
	kv_l2_close(l2);
	printf("  writes past RLIMIT_FSIZE: %u x -EFBIG, %u ok\n", n_big, n_ok);
}

static void test_file_size_limit(void)
{
	char path[4200];
	struct kv_l2_params p;

	snprintf(path, sizeof(path), "%s/fsize.bin", dir);
	CHECK_EQ(in_child(child_fsize_open, path), 0);
	p = params(path, 4 << 20);
	kv_l2_close(l2t_open(&p)); /* preallocated without the limit */
	CHECK_EQ(in_child(child_fsize_io, path), 0);
	CHECK(unlink(path) == 0);
}

/* In a private mount namespace: a 1 MiB tmpfs. Exits 77 when mounting is
 * not allowed here. */
static void child_tmpfs(const char *mnt)
{
	char path[4200], fill[4200], buf[65536];
	struct kv_l2_params p;
	struct kv_l2_io ios[4], out[4];
	struct kv_l2 *l2;
	int fd;

	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("tmpfs", mnt, "tmpfs", 0, "size=1m") < 0) {
		printf("skip tmpfs part: cannot mount a tmpfs here: %s\n", strerror(errno));
		exit(77);
	}
	snprintf(path, sizeof(path), "%s/l2.bin", mnt);
	snprintf(fill, sizeof(fill), "%s/fill", mnt);
	p = params(path, 4 << 20);
	expect_open_error(&p, ENOSPC, path);
	expect_open_error(&p, ENOSPC, "4194304 bytes");
	CHECK(access(path, F_OK) < 0 && errno == ENOENT); /* not left behind */

	/* Preallocated first, then the disk fills up: the store still writes. */
	p = params(path, 8 * PAGE_BYTES);
	l2 = l2t_open(&p);
	printf("  tmpfs store: pager %s, direct %d%s%s\n", kv_l2_pager_name(l2),
	       kv_l2_is_direct(l2), *kv_l2_notes(l2) ? ", notes: " : "", kv_l2_notes(l2));
	fd = open(fill, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	CHECK(fd >= 0);
	memset(buf, 1, sizeof(buf));
	while (write(fd, buf, sizeof(buf)) > 0)
		;
	CHECK(errno == ENOSPC);
	close(fd);
	for (uint32_t i = 0; i < 4; i++) {
		ios[i] = (struct kv_l2_io){ .buf = kv_l2_staging_get(l2), .slot = 7 - i };
		l2t_fill(ios[i].buf, PAGE_BYTES, i, 2);
	}
	CHECK_EQ(kv_l2_write(l2, ios, 4), 4);
	CHECK_EQ(kv_l2_wait(l2, out, 4, 4), 4);
	for (uint32_t i = 0; i < 4; i++)
		CHECK_EQ(out[i].res, 0);
	CHECK_EQ(kv_l2_read(l2, ios, 4), 4);
	CHECK_EQ(kv_l2_wait(l2, out, 4, 4), 4);
	for (uint32_t i = 0; i < 4; i++)
		CHECK_EQ(out[i].res, 0);
	kv_l2_close(l2);
	CHECK(umount2(mnt, MNT_DETACH) == 0);
}

/* ramfs refuses O_DIRECT and has no fallocate: the store falls back to
 * buffered I/O and ftruncate, and says so; REQUIRE_DIRECT refuses. */
static void child_ramfs(const char *mnt)
{
	char path[4200];
	struct kv_l2_params p;
	struct kv_l2_io ios[4], out[4];
	struct kv_l2 *l2;

	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("ramfs", mnt, "ramfs", 0, NULL) < 0) {
		printf("skip ramfs part: cannot mount a ramfs here: %s\n", strerror(errno));
		exit(77);
	}
	snprintf(path, sizeof(path), "%s/l2.bin", mnt);
	p = params(path, 8 * PAGE_BYTES);
	p.flags = KV_L2_F_REQUIRE_DIRECT;
	expect_open_error(&p, EINVAL, "O_DIRECT");
	p.flags = 0;
	l2 = l2t_open(&p);
	printf("  ramfs store: pager %s, direct %d, notes: %s\n", kv_l2_pager_name(l2),
	       kv_l2_is_direct(l2), kv_l2_notes(l2));
	CHECK(!kv_l2_is_direct(l2));
	CHECK(strstr(kv_l2_notes(l2), "O_DIRECT") && strstr(kv_l2_notes(l2), "fallocate"));
	for (uint32_t i = 0; i < 4; i++) {
		ios[i] = (struct kv_l2_io){ .buf = kv_l2_staging_get(l2), .slot = 2 * i };
		l2t_fill(ios[i].buf, PAGE_BYTES, i, 3);
	}
	CHECK_EQ(kv_l2_write(l2, ios, 4), 4);
	CHECK_EQ(kv_l2_wait(l2, out, 4, 4), 4);
	CHECK_EQ(kv_l2_read(l2, ios, 4), 4);
	CHECK_EQ(kv_l2_wait(l2, out, 4, 4), 4);
	for (uint32_t i = 0; i < 4; i++)
		CHECK_EQ(out[i].res, 0);
	kv_l2_close(l2);
	CHECK(umount2(mnt, MNT_DETACH) == 0);
}

/* As in a container whose seccomp policy refuses io_uring_setup with EPERM:
 * AUTO falls back to the thread pool and says why; URING fails. */
static void child_no_uring(const char *path)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = HR_ARRAY_SIZE(filter), .filter = filter };
	struct kv_l2_params p = params(path, 8 * PAGE_BYTES);
	struct kv_l2 *l2;

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
		printf("skip seccomp part: %s\n", strerror(errno));
		exit(77);
	}
	p.pager = KV_L2_PAGER_AUTO;
	l2 = l2t_open(&p);
	printf("  io_uring refused: pager %s, notes: %s\n", kv_l2_pager_name(l2), kv_l2_notes(l2));
	CHECK(!strcmp(kv_l2_pager_name(l2), "threads"));
	CHECK(strstr(kv_l2_notes(l2), "io_uring"));
	kv_l2_close(l2);
	p.pager = KV_L2_PAGER_URING;
#if HEARTH_HAVE_IO_URING
	expect_open_error(&p, EPERM, "io_uring");
#else
	expect_open_error(&p, ENOTSUP, "liburing");
#endif
}

static void test_no_uring(void)
{
	char path[4200];
	int st;

	snprintf(path, sizeof(path), "%s/nouring.bin", dir);
	st = in_child(child_no_uring, path);
	CHECK(st == 0 || st == 77);
	unlink(path);
}

/* A store whose process is killed with I/O in flight: its lock goes with it
 * (a little later with io_uring) and a new store opens the file. */
static void test_killed_holder(void)
{
	char path[4200];
	struct kv_l2_params p;
	int pipefd[2], st;
	uint64_t t0;
	pid_t pid;
	char c;

	snprintf(path, sizeof(path), "%s/killed.bin", dir);
	p = params(path, 64 * PAGE_BYTES);
	CHECK(pipe(pipefd) == 0);
	fflush(stdout);
	pid = fork();
	CHECK(pid >= 0);
	if (!pid) {
		struct kv_l2 *l2 = l2t_open(&p);
		struct kv_l2_io ios[8];

		for (uint32_t round = 0;; round++) {
			for (uint32_t i = 0; i < 8; i++)
				ios[i] = (struct kv_l2_io){ .buf = kv_l2_staging_get(l2),
							    .slot = (round * 8 + i) % 64 };
			CHECK_EQ(kv_l2_write(l2, ios, 8), 8);
			if (!round)
				CHECK(write(pipefd[1], "x", 1) == 1);
			CHECK_EQ(kv_l2_wait(l2, ios, 8, 8), 8);
			for (uint32_t i = 0; i < 8; i++)
				CHECK_EQ(kv_l2_staging_put(l2, ios[i].buf), 0);
		}
	}
	CHECK(read(pipefd[0], &c, 1) == 1);
	CHECK(kill(pid, SIGKILL) == 0);
	CHECK(waitpid(pid, &st, 0) == pid && WIFSIGNALED(st));
	t0 = (uint64_t)time(NULL);
	kv_l2_close(l2t_open(&p));
	CHECK((uint64_t)time(NULL) - t0 <= 3);
	close(pipefd[0]);
	close(pipefd[1]);
	CHECK(unlink(path) == 0);
}

static void test_mounts(void)
{
	char mnt[4200];
	int st;

	snprintf(mnt, sizeof(mnt), "%s/mnt", dir);
	CHECK(mkdir(mnt, 0700) == 0);
	st = in_child(child_tmpfs, mnt);
	CHECK(st == 0 || st == 77);
	st = in_child(child_ramfs, mnt);
	CHECK(st == 0 || st == 77);
	CHECK(rmdir(mnt) == 0);
}

int main(int argc, char **argv)
{
	pager = l2t_pager(argc, argv);
	l2t_mkdtemp(dir, sizeof(dir));
	test_params();
	test_slots();
	test_file_size_limit();
	test_mounts();
	test_no_uring();
	test_killed_holder();
	CHECK(rmdir(dir) == 0);
	printf("ok\n");
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * Integration-test harness (see harness.h): daemon lifecycle and cleanup,
 * control-socket helpers, and a raw protocol client over shm_ring.h.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

unsigned th_failures;

static const char *test_name = "test";
static pid_t owner_pid;

/* Every daemon started, by value (a test's struct th_daemon may live on a
 * stack frame that is gone by exit time): its pid while it runs, for the
 * signal handler and atexit, and its directory, removed at exit. */
#define MAX_DAEMONS 16
static volatile pid_t daemon_pids[MAX_DAEMONS];
static char daemon_dirs[MAX_DAEMONS][64];
static char daemon_logs[MAX_DAEMONS][160];
static unsigned n_daemons;

/* ---- checks ---------------------------------------------------------------- */

void th_log(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "[%s %d] %s\n", test_name, (int)getpid(), buf);
}

bool th_check(bool ok, const char *file, int line, const char *cond, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	if (ok)
		return true;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "[%s %d] FAIL %s:%d: %s: %s\n", test_name, (int)getpid(), file, line,
		cond, buf);
	th_failures++;
	return false;
}

static void kill_daemons_now(void)
{
	for (int i = 0; i < MAX_DAEMONS; i++)
		if (daemon_pids[i] > 0)
			kill(daemon_pids[i], SIGKILL);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if ((flag == FTW_DP ? rmdir(path) : unlink(path)) < 0)
		fprintf(stderr, "[%s] cannot remove %s: %s\n", test_name, path, strerror(errno));
	return 0;
}

/* A test's directory and whatever it holds (TH_KEEP=1 keeps it). */
static void rm_dir(const char *dir)
{
	if (!dir[0])
		return;
	if (getenv("TH_KEEP")) {
		fprintf(stderr, "[%s] keeping %s\n", test_name, dir);
		return;
	}
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Scratch directories of th_tmpdir(), removed with their contents at exit. */
#define TH_MAX_TMPDIRS 16
static char tmp_dirs[TH_MAX_TMPDIRS][64];
static unsigned n_tmp_dirs;

void th_tmpdir(char *buf, size_t n, const char *base)
{
	REQUIRE(n_tmp_dirs < TH_MAX_TMPDIRS, "th_tmpdir: more than %d directories",
		TH_MAX_TMPDIRS);
	snprintf(tmp_dirs[n_tmp_dirs], sizeof(tmp_dirs[0]), "%s/hearth-%s-XXXXXX", base,
		 test_name);
	REQUIRE(mkdtemp(tmp_dirs[n_tmp_dirs]) != NULL, "mkdtemp %s: %s", tmp_dirs[n_tmp_dirs],
		strerror(errno));
	snprintf(buf, n, "%s", tmp_dirs[n_tmp_dirs++]);
}

static void rm_tmp_dirs(void)
{
	for (unsigned i = 0; i < n_tmp_dirs; i++)
		rm_dir(tmp_dirs[i]);
	n_tmp_dirs = 0;
}

static void cleanup_at_exit(void)
{
	if (getpid() != owner_pid)
		return; /* a forked client: the daemons are the parent's */
	for (unsigned i = 0; i < n_daemons; i++) {
		pid_t pid = daemon_pids[i];

		if (pid > 0) {
			fprintf(stderr, "[%s] killing hearthd %d left running\n", test_name, (int)pid);
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			daemon_pids[i] = 0;
		}
		rm_dir(daemon_dirs[i]);
	}
	n_daemons = 0;
	rm_tmp_dirs(); /* after the daemons that wrote there are gone */
}

static void on_fatal_signal(int sig)
{
	static const char msg[] = "harness: fatal signal or watchdog; killing hearthd\n";

	if (getpid() == owner_pid) {
		ssize_t r = write(2, msg, sizeof(msg) - 1);
		(void)r;
		kill_daemons_now();
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

void th_fatal(const char *why)
{
	fprintf(stderr, "[%s %d] FATAL: %s\n", test_name, (int)getpid(), why);
	if (getpid() == owner_pid)
		for (unsigned i = 0; i < n_daemons; i++)
			if (daemon_pids[i] > 0) {
				struct th_daemon t = { .pid = daemon_pids[i] };
				snprintf(t.log, sizeof(t.log), "%.159s", daemon_logs[i]);
				th_daemon_dump_log(&t, 40);
			}
	exit(1); /* atexit kills the daemons (in the owner) */
}

void th_init(const char *name, unsigned watchdog_s)
{
	static const int sigs[] = { SIGTERM, SIGINT, SIGALRM, SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGQUIT };

	test_name = name;
	owner_pid = getpid();
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	atexit(cleanup_at_exit);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		struct sigaction sa = { .sa_handler = on_fatal_signal };
		sigemptyset(&sa.sa_mask);
		sigaction(sigs[i], &sa, NULL);
	}
	alarm(watchdog_s);
}

void th_child_init(unsigned watchdog_s)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != owner_pid)
		_exit(127); /* the parent is already gone */
	alarm(watchdog_s);
}

int th_result(void)
{
	if (th_failures) {
		fprintf(stderr, "[%s] %u check(s) FAILED\n", test_name, th_failures);
		return 1;
	}
	fprintf(stderr, "[%s] all checks passed\n", test_name);
	return 0;
}

int th_run_capture(const char *const *argv, char *out, size_t cap, unsigned timeout_ms)
{
	uint64_t deadline = th_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	size_t len = 0;
	int pfd[2], st = -1;
	pid_t pid;

	if (cap)
		out[0] = 0;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -1;
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(pfd[1]);
	for (;;) {
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		int64_t left = (int64_t)(deadline - th_now_ns()) / 1000000;
		char sink[256];
		ssize_t k;

		if (left <= 0) {
			kill(pid, SIGKILL);
			break;
		}
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		if (len + 1 < cap)
			k = read(pfd[0], out + len, cap - 1 - len);
		else
			k = read(pfd[0], sink, sizeof(sink));
		if (k <= 0)
			break;
		if (len + 1 < cap)
			len += (size_t)k;
	}
	if (cap)
		out[len] = 0;
	close(pfd[0]);
	waitpid(pid, &st, 0);
	return st;
}

uint64_t th_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void th_sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

uint64_t th_rand(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* ---- the daemon ---------------------------------------------------------------- */

static int try_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	int r;

	if (fd < 0)
		return -errno;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	if (r < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

void th_daemon_start(struct th_daemon *d, const char *hearthd, const char *model,
		     const char *const *extra)
{
	const char *argv[64];
	unsigned n = 0, slot;
	uint64_t deadline;
	pid_t parent = getpid();
	int logfd;

	memset(d, 0, sizeof(*d));
	REQUIRE(n_daemons < MAX_DAEMONS, "too many daemons");
	slot = n_daemons;
	snprintf(d->dir, sizeof(d->dir), "/tmp/hearth-integ-XXXXXX");
	REQUIRE(mkdtemp(d->dir) != NULL, "mkdtemp: %s", strerror(errno));
	snprintf(d->sock, sizeof(d->sock), "%s/h.sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/hearthd.log", d->dir);
	snprintf(daemon_dirs[slot], sizeof(daemon_dirs[slot]), "%s", d->dir);
	snprintf(daemon_logs[slot], sizeof(daemon_logs[slot]), "%s", d->log);
	n_daemons++;

	argv[n++] = hearthd;
	argv[n++] = "--socket-path";
	argv[n++] = d->sock;
	argv[n++] = "--model-path";
	argv[n++] = model;
	for (unsigned i = 0; extra && extra[i] && n < 62; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;

	logfd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	REQUIRE(logfd >= 0, "open %s: %s", d->log, strerror(errno));
	d->pid = fork();
	REQUIRE(d->pid >= 0, "fork: %s", strerror(errno));
	if (d->pid == 0) {
		/* The daemon dies with the test even if the test is SIGKILLed. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		dup2(logfd, 1);
		dup2(logfd, 2);
		execv(hearthd, (char *const *)argv);
		_exit(127);
	}
	close(logfd);
	daemon_pids[slot] = d->pid;

	/* Bounded wait for the socket to accept (generous for sanitizer builds). */
	deadline = th_now_ns() + 30ull * 1000000000ull;
	for (;;) {
		int fd = try_connect(d->sock);

		if (fd >= 0) {
			close(fd);
			break;
		}
		if (!th_daemon_alive(d)) {
			th_daemon_dump_log(d, 40);
			th_fatal("hearthd exited before accepting connections");
		}
		if (th_now_ns() > deadline) {
			th_daemon_dump_log(d, 40);
			th_fatal("hearthd did not accept connections within 30 s");
		}
		th_sleep_ms(5);
	}
}

static void forget_pid(pid_t pid)
{
	for (int i = 0; i < MAX_DAEMONS; i++)
		if (daemon_pids[i] == pid)
			daemon_pids[i] = 0;
}

bool th_daemon_alive(struct th_daemon *d)
{
	int st;

	if (d->pid <= 0)
		return false;
	if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
		forget_pid(d->pid);
		d->status = st;
		d->pid = 0;
		return false;
	}
	return true;
}

bool th_daemon_wait_exit(struct th_daemon *d, unsigned timeout_ms)
{
	uint64_t deadline = th_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	while (th_daemon_alive(d)) {
		if (th_now_ns() > deadline)
			return false;
		th_sleep_ms(2);
	}
	return true;
}

static const char *const sanitizer_marks[] = {
	"ERROR: AddressSanitizer",
	"ERROR: LeakSanitizer",
	"runtime error:",
	"SUMMARY: UndefinedBehaviorSanitizer",
	"WARNING: ThreadSanitizer",
	"ERROR: MemorySanitizer",
};

bool th_daemon_judge(struct th_daemon *d)
{
	bool ok = true;

	if (WIFSIGNALED(d->status)) {
		ok = CHECK(0, "hearthd was killed by signal %d (%s)", WTERMSIG(d->status),
			   strsignal(WTERMSIG(d->status)));
	} else if (!WIFEXITED(d->status) || WEXITSTATUS(d->status) != 0) {
		ok = CHECK(0, "hearthd exited with status %d", WEXITSTATUS(d->status));
	}
	for (size_t i = 0; i < sizeof(sanitizer_marks) / sizeof(sanitizer_marks[0]); i++) {
		unsigned n = th_daemon_log_count(d, sanitizer_marks[i]);
		if (n)
			ok = CHECK(0, "hearthd's log has %u sanitizer report(s) '%s'", n,
				   sanitizer_marks[i]);
	}
	if (!ok)
		th_daemon_dump_log(d, 60);
	return ok;
}

bool th_daemon_stop(struct th_daemon *d, unsigned timeout_ms)
{
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		if (!th_daemon_wait_exit(d, timeout_ms)) {
			CHECK(0, "hearthd did not exit within %u ms of SIGTERM", timeout_ms);
			kill(d->pid, SIGKILL);
			th_daemon_wait_exit(d, 10000);
			th_daemon_dump_log(d, 40);
			return false;
		}
	}
	return th_daemon_judge(d);
}

void th_daemon_dump_log(const struct th_daemon *d, unsigned max_lines)
{
	FILE *f = fopen(d->log, "r");
	char **ring, line[2048];
	unsigned n = 0;

	if (!f)
		return;
	ring = calloc(max_lines, sizeof(*ring));
	if (!ring) {
		fclose(f);
		return;
	}
	while (fgets(line, sizeof(line), f)) {
		free(ring[n % max_lines]);
		ring[n % max_lines] = strdup(line);
		n++;
	}
	fclose(f);
	fprintf(stderr, "---- hearthd log (%s), last %u of %u lines ----\n", d->log,
		n < max_lines ? n : max_lines, n);
	for (unsigned i = n > max_lines ? n - max_lines : 0; i < n; i++)
		fputs(ring[i % max_lines] ? ring[i % max_lines] : "", stderr);
	fprintf(stderr, "---- end of hearthd log ----\n");
	for (unsigned i = 0; i < max_lines; i++)
		free(ring[i]);
	free(ring);
}

unsigned th_daemon_log_count(const struct th_daemon *d, const char *needle)
{
	FILE *f = fopen(d->log, "r");
	char line[4096];
	unsigned n = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, needle))
			n++;
	fclose(f);
	return n;
}

int th_daemon_fd_count(const struct th_daemon *d)
{
	char path[64];
	struct dirent *e;
	DIR *dir;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)d->pid);
	dir = opendir(path);
	if (!dir)
		return -errno;
	while ((e = readdir(dir)))
		if (e->d_name[0] != '.')
			n++;
	closedir(dir);
	return n;
}

uint64_t th_daemon_cpu_ns(const struct th_daemon *d)
{
	char path[64], buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)d->pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strrchr(buf, ')');
	if (!p)
		return 0;
	/* After ") ": state(3) ... utime(14) stime(15). */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return 0;
	return (ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* ---- control socket -------------------------------------------------------------- */

int th_ctl_connect(const char *path)
{
	struct timeval tv = { 10, 0 };
	int fd = try_connect(path);

	if (fd < 0)
		return fd;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

int th_ctl_call(int sock, Hearth__Control__Request *req, Hearth__Control__Response **ret,
		int *ret_fd)
{
	uint8_t *buf = malloc(HR_CTL_MAX_MSG);
	Hearth__Control__Response *rep;
	int eof = 0, fd = -1, r;

	if (ret_fd)
		*ret_fd = -1;
	if (!buf)
		return -ENOMEM;
	r = hr_ctl_send(sock, &req->base, -1);
	/* A peer that refused us (EUSERS, EACCES) replied, then closed: its
	 * reply may still be queued for us although our send failed. */
	if (r < 0 && r != -EPIPE && r != -ECONNRESET)
		goto out;
	r = hr_ctl_recv(sock, buf, HR_CTL_MAX_MSG, &fd, &eof);
	if (r < 0)
		goto out;
	if (eof) {
		r = -ECONNRESET;
		goto out;
	}
	rep = hearth__control__response__unpack(NULL, (size_t)r, buf + HR_CTL_HDR);
	if (!rep) {
		r = -EBADMSG;
		goto out;
	}
	/* An error about the connection itself (EUSERS, EACCES at accept)
	 * comes unasked, with id 0. */
	if (rep->id != req->id && !(rep->id == 0 && rep->error)) {
		hearth__control__response__free_unpacked(rep, NULL);
		r = -EBADMSG;
		goto out;
	}
	*ret = rep;
	if (ret_fd)
		*ret_fd = fd;
	else if (fd >= 0)
		close(fd);
	fd = -1;
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

int th_stats(const char *path, struct th_stats *ret)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__GetStats gs = HEARTH__CONTROL__GET_STATS__INIT;
	Hearth__Control__Response *rep = NULL;
	int fd = th_ctl_connect(path), r;

	if (fd < 0)
		return fd;
	req.id = 7;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_GET_STATS;
	req.get_stats = &gs;
	r = th_ctl_call(fd, &req, &rep, NULL);
	close(fd);
	if (r < 0)
		return r;
	if (rep->error || rep->body_case != HEARTH__CONTROL__RESPONSE__BODY_STATS) {
		r = rep->error ? rep->error : -EBADMSG;
		hearth__control__response__free_unpacked(rep, NULL);
		return r;
	}
	memset(ret, 0, sizeof(*ret));
	ret->clients = rep->stats->clients;
	ret->sessions = rep->stats->sessions;
	ret->kv_total = rep->stats->kv_pages_total;
	ret->kv_free = rep->stats->kv_pages_free;
	ret->tokens = rep->stats->tokens_processed;
	ret->steps = rep->stats->steps;
	ret->disconnects = rep->stats->disconnects;
	ret->bad_descriptors = rep->stats->bad_descriptors;
	ret->interactive_skips = rep->stats->interactive_skips;
	ret->interactive_skip_max = rep->stats->interactive_skip_max;
	ret->burst_holds = rep->stats->burst_holds;
	ret->burst_hold_us = rep->stats->burst_hold_us;
	for (size_t i = 0; i < rep->stats->n_batch_sizes && i < sizeof(ret->batch) / sizeof(ret->batch[0]); i++)
		ret->batch[i] = rep->stats->batch_sizes[i];
	for (size_t i = 0; i < rep->stats->n_ops; i++) {
		const Hearth__Control__OpCounter *oc = rep->stats->ops[i];
		for (unsigned op = 0; op < SHM_OP__MAX; op++)
			if (strcmp(oc->op, shm_op_name(op)) == 0) {
				ret->op_count[op] = oc->count;
				ret->op_errors[op] = oc->errors;
			}
	}
	hearth__control__response__free_unpacked(rep, NULL);
	return 0;
}

int th_sessions(const char *path, struct th_session_info *ret, unsigned max)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__ListSessions ls = HEARTH__CONTROL__LIST_SESSIONS__INIT;
	Hearth__Control__Response *rep = NULL;
	int fd = th_ctl_connect(path), r;

	if (fd < 0)
		return fd;
	req.id = 8;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_LIST_SESSIONS;
	req.list_sessions = &ls;
	r = th_ctl_call(fd, &req, &rep, NULL);
	close(fd);
	if (r < 0)
		return r;
	if (rep->error || rep->body_case != HEARTH__CONTROL__RESPONSE__BODY_SESSIONS) {
		r = rep->error ? rep->error : -EBADMSG;
		hearth__control__response__free_unpacked(rep, NULL);
		return r;
	}
	r = (int)rep->sessions->n_sessions;
	for (unsigned i = 0; i < rep->sessions->n_sessions && i < max; i++) {
		const Hearth__Control__SessionInfo *si = rep->sessions->sessions[i];
		snprintf(ret[i].name, sizeof(ret[i].name), "%s", si->name);
		ret[i].handle = si->handle;
		ret[i].n_tokens = si->n_tokens;
		ret[i].kv_pages = si->kv_pages;
		ret[i].attached = si->attached;
	}
	hearth__control__response__free_unpacked(rep, NULL);
	return r;
}

/* ---- raw protocol client ------------------------------------------------------------ */

int rc_connect(struct rc *c, const char *path, const struct rc_opts *o)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__Hello hello = HEARTH__CONTROL__HELLO__INIT;
	Hearth__Control__Response *rep = NULL;
	struct stat st;
	int fd = -1, r, seals;

	memset(c, 0, sizeof(*c));
	c->memfd = -1;
	c->sock = th_ctl_connect(path);
	if (c->sock < 0)
		return c->sock;
	hello.client_name = (char *)(o && o->name ? o->name : "integ");
	hello.model = (char *)"";
	if (o) {
		hello.sq_entries = o->sq_entries;
		hello.cq_entries = o->cq_entries;
		hello.arena_bytes = o->arena_bytes;
	}
	req.id = 1;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_HELLO;
	req.hello = &hello;
	r = th_ctl_call(c->sock, &req, &rep, &fd);
	if (r < 0)
		goto fail;
	if (rep->error) {
		r = rep->error;
		goto fail;
	}
	if (rep->body_case != HEARTH__CONTROL__RESPONSE__BODY_HELLO || fd < 0) {
		r = -EBADMSG;
		goto fail;
	}
	c->client_id = rep->hello->client_id;
	c->vocab = rep->hello->model ? rep->hello->model->vocab_size : 0;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != rep->hello->region_bytes) {
		r = -EBADMSG;
		goto fail;
	}
	seals = fcntl(fd, F_GET_SEALS);
	CHECK(seals >= 0 && (seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
				    (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
	      "region memfd seals 0x%x lack SHRINK|GROW|SEAL", seals);
	c->len = (size_t)st.st_size;
	c->mem = mmap(NULL, c->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (c->mem == MAP_FAILED) {
		c->mem = NULL;
		r = -errno;
		goto fail;
	}
	c->memfd = fd;
	fd = -1;
	if ((r = shm_region_attach_check(c->mem, c->len, &c->lay)) < 0 ||
	    (r = shm_sq_prod_init(&c->sq, c->mem, &c->lay)) < 0 ||
	    (r = shm_cq_cons_init(&c->cq, c->mem, &c->lay)) < 0)
		goto fail;
	CHECK(c->lay.sq_entries == rep->hello->sq_entries && c->lay.cq_entries == rep->hello->cq_entries &&
		      c->lay.arena_size == rep->hello->arena_bytes,
	      "Hello reply sizes (sq %u cq %u arena %u) differ from the region's (%u %u %u)",
	      rep->hello->sq_entries, rep->hello->cq_entries, rep->hello->arena_bytes,
	      c->lay.sq_entries, c->lay.cq_entries, c->lay.arena_size);
	c->hdr = shm_region_hdr(c->mem);
	c->arena = shm_region_arena(c->mem, &c->lay);
	hearth__control__response__free_unpacked(rep, NULL);
	return 0;
fail:
	if (rep)
		hearth__control__response__free_unpacked(rep, NULL);
	if (fd >= 0)
		close(fd);
	rc_close(c);
	return r;
}

void rc_close(struct rc *c)
{
	if (c->mem)
		munmap(c->mem, c->len);
	if (c->memfd >= 0)
		close(c->memfd);
	if (c->sock >= 0)
		close(c->sock);
	memset(c, 0, sizeof(*c));
	c->memfd = -1;
	c->sock = -1;
}

static bool peer_gone(int sock)
{
	struct pollfd p = { .fd = sock, .events = POLLRDHUP };

	return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR));
}

int rc_try_put(struct rc *c, const struct shm_sqe *sqe)
{
	uint32_t idx;
	int r = shm_sq_reserve(&c->sq, 1, &idx);

	if (r < 0)
		return r;
	if (r == 0)
		return -EAGAIN;
	*shm_sq_slot(&c->sq, idx) = *sqe;
	shm_sq_publish(&c->sq);
	return 0;
}

int rc_submit(struct rc *c, const struct shm_sqe *sqe)
{
	uint64_t deadline = th_now_ns() + RC_TIMEOUT_NS;

	for (;;) {
		int r = rc_try_put(c, sqe);
		int64_t left = (int64_t)(deadline - th_now_ns());

		if (r == 0) {
			shm_wake(&c->hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
			return 0;
		}
		if (r != -EAGAIN)
			return r;
		if (left <= 0)
			return -ETIMEDOUT;
		r = shm_sq_wait_space(&c->sq, &c->hdr->client_wq, 20000, left);
		if (r < 0 && r != -EINTR && r != -ETIMEDOUT)
			return r;
	}
}

int rc_wait(struct rc *c, struct shm_cqe *ret, int64_t timeout_ns)
{
	uint64_t deadline = th_now_ns() + (uint64_t)timeout_ns;

	for (;;) {
		uint32_t idx;
		int64_t left;
		int r = shm_cq_peek(&c->cq, 1, &idx);

		if (r < 0)
			return -EPROTO;
		if (r == 1) {
			*ret = *shm_cq_entry(&c->cq, idx);
			shm_cq_advance(&c->cq, 1);
			shm_wake(&c->hdr->daemon_wq, SHM_WAIT_F_CQ_SPACE);
			return 0;
		}
		left = (int64_t)(deadline - th_now_ns());
		if (left <= 0)
			return -ETIMEDOUT;
		/* A daemon that died without shutting the queue down (a crash)
		 * shows as a hang-up on the control socket: fail fast then. */
		if (peer_gone(c->sock) && shm_cq_peek(&c->cq, 1, &idx) == 0)
			return -ECONNRESET;
		r = shm_cq_wait_data(&c->cq, &c->hdr->client_wq, 20000,
				     left < 100000000 ? left : 100000000);
		if (r == -ESHUTDOWN) {
			/* Completions posted before the shutdown are still there. */
			if (shm_cq_peek(&c->cq, 1, &idx) == 1)
				continue;
			return -ESHUTDOWN;
		}
		if (r < 0 && r != -EINTR && r != -ETIMEDOUT)
			return r;
	}
}

int32_t rc_call(struct rc *c, struct shm_sqe *sqe, struct shm_cqe *ret)
{
	struct shm_cqe cqe;
	int r;

	if (!sqe->user_data)
		sqe->user_data = ++c->next_ud;
	r = rc_submit(c, sqe);
	if (!CHECK(r == 0, "submit of op %u: %s", sqe->op, strerror(-r)))
		return TH_EHARNESS;
	r = rc_wait(c, &cqe, RC_TIMEOUT_NS);
	if (!CHECK(r == 0, "no completion for op %u (user_data %llu): %s", sqe->op,
		   (unsigned long long)sqe->user_data, strerror(-r)))
		return TH_EHARNESS;
	if (!CHECK(cqe.user_data == sqe->user_data && !(cqe.flags & SHM_CQE_F_MORE),
		   "completion user_data %llu flags 0x%x for submission %llu",
		   (unsigned long long)cqe.user_data, cqe.flags, (unsigned long long)sqe->user_data))
		return TH_EHARNESS;
	if (ret)
		*ret = cqe;
	return cqe.res;
}

int32_t rc_open(struct rc *c, const char *name, uint32_t flags, uint32_t *ret_len)
{
	struct shm_sqe q = { .op = SHM_OP_SESSION_OPEN };
	struct shm_cqe cqe;
	size_t len = name ? strlen(name) : 0;
	int32_t r;

	if (len) {
		memcpy(c->arena + RC_AUX_OFF, name, len);
		q.aux_off = RC_AUX_OFF;
		q.aux_len = (uint32_t)len;
		q.arg[0] = flags;
	}
	r = rc_call(c, &q, &cqe);
	if (r >= 0 && ret_len)
		*ret_len = cqe.pos;
	return r;
}

int32_t rc_close_session(struct rc *c, uint32_t session, uint32_t flags)
{
	struct shm_sqe q = { .op = SHM_OP_SESSION_CLOSE, .session = session, .arg = { flags } };

	return rc_call(c, &q, NULL);
}

int32_t rc_append(struct rc *c, uint32_t session, const int32_t *tok, uint32_t n, uint32_t *ret_pos)
{
	struct shm_sqe q = { .op = SHM_OP_APPEND, .session = session, .in_off = RC_IN_OFF,
			     .in_len = n * 4 };
	struct shm_cqe cqe;
	int32_t r;

	memcpy(c->arena + RC_IN_OFF, tok, n * 4);
	r = rc_call(c, &q, &cqe);
	if (ret_pos)
		*ret_pos = cqe.pos;
	return r;
}

int32_t rc_score(struct rc *c, uint32_t session, const int32_t *tok, uint32_t n,
		 const int32_t *labels, uint32_t n_labels, float *probs)
{
	struct shm_sqe q = { .op = SHM_OP_SCORE, .session = session,
			     .aux_off = RC_AUX_OFF, .aux_len = n_labels * 4,
			     .out_off = RC_OUT_OFF, .out_cap = n_labels * 4 };
	struct shm_cqe cqe;
	int32_t r;

	if (n) {
		q.in_off = RC_IN_OFF;
		q.in_len = n * 4;
		memcpy(c->arena + RC_IN_OFF, tok, n * 4);
	}
	memcpy(c->arena + RC_AUX_OFF, labels, n_labels * 4);
	memset(c->arena + RC_OUT_OFF, 0xff, n_labels * 4);
	r = rc_call(c, &q, &cqe);
	if (r >= 0) {
		CHECK((uint32_t)r == n_labels && cqe.out_len == n_labels * 4,
		      "score: res %d out_len %u for %u labels", r, cqe.out_len, n_labels);
		memcpy(probs, c->arena + RC_OUT_OFF, n_labels * 4);
	}
	return r;
}

int32_t rc_truncate(struct rc *c, uint32_t session, uint32_t n)
{
	struct shm_sqe q = { .op = SHM_OP_TRUNCATE, .session = session, .arg = { n } };

	return rc_call(c, &q, NULL);
}

int32_t rc_generate(struct rc *c, uint32_t session, const int32_t *prompt, uint32_t n_prompt,
		    uint32_t max_tokens, int32_t *out, int (*cb)(void *, uint32_t), void *ud)
{
	struct shm_sqe q = { .op = SHM_OP_GENERATE, .session = session, .out_off = RC_OUT_OFF,
			     .out_cap = max_tokens * 4, .arg = { max_tokens } };
	uint32_t got = 0;
	int r;

	if (!CHECK(max_tokens * 4 <= RC_OUT_CAP, "max_tokens %u too large", max_tokens))
		return TH_EHARNESS;
	if (n_prompt) {
		q.in_off = RC_IN_OFF;
		q.in_len = n_prompt * 4;
		memcpy(c->arena + RC_IN_OFF, prompt, n_prompt * 4);
	}
	q.user_data = ++c->next_ud;
	r = rc_submit(c, &q);
	if (!CHECK(r == 0, "submit generate: %s", strerror(-r)))
		return TH_EHARNESS;
	for (;;) {
		struct shm_cqe cqe;

		r = rc_wait(c, &cqe, RC_TIMEOUT_NS);
		if (!CHECK(r == 0, "generate: after %u tokens, no completion: %s", got, strerror(-r)))
			return TH_EHARNESS;
		if (!CHECK(cqe.user_data == q.user_data, "generate: completion for %llu, not %llu",
			   (unsigned long long)cqe.user_data, (unsigned long long)q.user_data))
			return TH_EHARNESS;
		if (cqe.flags & SHM_CQE_F_MORE) {
			CHECK(cqe.res == 1 && cqe.out_len == 4 * (got + 1) && got < max_tokens,
			      "generate: streamed completion %u has res %d out_len %u", got, cqe.res,
			      cqe.out_len);
			if (got < max_tokens)
				out[got] = ((const int32_t *)(c->arena + RC_OUT_OFF))[got];
			got++;
			if (cb && cb(ud, got))
				return (int32_t)got;
			continue;
		}
		if (cqe.res < 0)
			return cqe.res;
		CHECK((uint32_t)cqe.res == got && cqe.out_len == 4 * got,
		      "generate: final completion res %d out_len %u after %u streamed tokens",
		      cqe.res, cqe.out_len, got);
		return (int32_t)got;
	}
}

/* ---- floats ------------------------------------------------------------------- */

bool th_close(const float *got, const float *want, uint32_t n, const char *what)
{
	float mx = 0, worst = 0;
	uint32_t wi = 0;

	for (uint32_t i = 0; i < n; i++)
		if (fabsf(want[i]) > mx)
			mx = fabsf(want[i]);
	for (uint32_t i = 0; i < n; i++) {
		float e = fabsf(got[i] - want[i]);
		if (!isfinite(got[i]))
			e = INFINITY;
		if (e > worst || (i == 0 && e == 0)) {
			worst = e;
			wi = i;
		}
	}
	return CHECK(worst <= 1e-5f * mx + 1e-6f, "%s: element %u is %.9g, want %.9g (|err| %.3g > tol %.3g)",
		     what, wi, got[wi], want[wi], worst, 1e-5f * mx + 1e-6f);
}

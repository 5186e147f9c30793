/* SPDX-License-Identifier: MIT */
/* Benchmark helpers: percentiles and a private hearthd. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double pct(const uint64_t *ns, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return (double)ns[i < n ? i : n - 1];
}

void bench_summarise(uint64_t *ns, size_t n, struct bench_stats *ret)
{
	double sum = 0;

	memset(ret, 0, sizeof(*ret));
	if (!n)
		return;
	qsort(ns, n, sizeof(*ns), cmp_u64);
	for (size_t i = 0; i < n; i++)
		sum += (double)ns[i];
	ret->median = pct(ns, n, 0.5);
	ret->p99 = pct(ns, n, 0.99);
	ret->p999 = pct(ns, n, 0.999);
	ret->mean = sum / (double)n;
	ret->min = (double)ns[0];
	ret->max = (double)ns[n - 1];
}

int bench_ctl_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), r;

	if (fd < 0)
		return -errno;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

static int try_connect(const char *path)
{
	int fd = bench_ctl_connect(path);

	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

pid_t bench_start_daemon(const char *hearthd, const char *const *flags, char *sock, size_t len,
			 const char *log_path, int timeout_s)
{
	char dir[] = "/tmp/hearth-bench-XXXXXX";
	char sockflag[160];
	const char *argv[32];
	int argc = 0;
	pid_t pid;

	if (!mkdtemp(dir))
		return -errno;
	snprintf(sock, len, "%s/hearthd.sock", dir);
	snprintf(sockflag, sizeof(sockflag), "--socket-path=%s", sock);
	argv[argc++] = hearthd;
	argv[argc++] = sockflag;
	for (int i = 0; flags && flags[i] && argc < 30; i++)
		argv[argc++] = flags[i];
	argv[argc] = NULL;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (log_path) {
			int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
			if (fd >= 0)
				dup2(fd, 2);
		}
		execv(hearthd, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", hearthd, strerror(errno));
		_exit(127);
	}
	for (int i = 0; i < timeout_s * 100; i++) {
		int status;
		if (try_connect(sock) == 0)
			return pid;
		if (waitpid(pid, &status, WNOHANG) == pid)
			return -ECHILD;
		nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -ETIMEDOUT;
}

int bench_stop_daemon(pid_t pid)
{
	int status;

	if (kill(pid, SIGTERM) < 0)
		return -errno;
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the benchmarks: sample sorting and percentiles, and
 * starting a private hearthd on a temporary socket (stopped at exit).
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stdint.h>
#include <sys/types.h>

struct bench_stats {
	double median, p99, p999, mean, min, max;
};

/* Sort samples in place and summarise them. */
void bench_summarise(uint64_t *ns, size_t n, struct bench_stats *ret);

/*
 * Start `hearthd` (path) with the given extra flags (NULL-terminated) on a
 * socket in a fresh temporary directory; wait until it accepts (up to
 * timeout_s). Writes the socket path to sock (len bytes). Returns the pid or
 * -errno. The daemon's stderr goes to log_path when not NULL.
 */
pid_t bench_start_daemon(const char *hearthd, const char *const *flags, char *sock, size_t len,
			 const char *log_path, int timeout_s);
/* A connection to hearthd's control socket (SOCK_SEQPACKET): fd or -errno. */
int bench_ctl_connect(const char *path);
/* SIGTERM, wait; returns its exit status or -errno. */
int bench_stop_daemon(pid_t pid);

#endif

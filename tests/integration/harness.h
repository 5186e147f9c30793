/* SPDX-License-Identifier: MIT */
/*
 * Integration-test harness: start hearthd on a private socket in a fresh temp
 * directory, wait for it to accept, stop it with SIGTERM and judge how it
 * ended (exit status, sanitizer reports in its log); make sure no daemon
 * outlives the test (atexit, fatal signals, a watchdog alarm, PDEATHSIG).
 * Also a raw protocol client (hand-written Hello, own mapping of the region,
 * the shm_ring.h producer/consumer calls) and control-socket helpers (stats,
 * sessions), used where the test must see or break the protocol itself.
 */
#ifndef TH_HARNESS_H
#define TH_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "hr_control.h"
#include "shm_proto.h"
#include "shm_ring.h"
#include "shm_wait.h"

/* ---- checks ----------------------------------------------------------------- */

/* Count of failed checks in this process (a forked child has its own). */
extern unsigned th_failures;

/* A check that fails is reported (file:line, the condition, a message) and
 * counted; the test goes on so that one run shows every failure. */
#define CHECK(cond, ...) th_check(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)
/* A check the rest of the test cannot do without: report, clean up, exit 1. */
#define REQUIRE(cond, ...)                                                        \
	do {                                                                      \
		if (!th_check(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)) \
			th_fatal("a required check failed");                      \
	} while (0)

bool th_check(bool ok, const char *file, int line, const char *cond, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
void th_fatal(const char *why) __attribute__((noreturn));
void th_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Set up a test: its name for messages, a watchdog (the whole program is
 * killed, daemons first, after watchdog_s seconds), cleanup on exit and on
 * fatal signals. Call first in main().
 */
void th_init(const char *name, unsigned watchdog_s);
/* First call in a forked client process: it dies with its parent
 * (PDEATHSIG) and after watchdog_s seconds at most (alarms are not
 * inherited across fork). */
void th_child_init(unsigned watchdog_s);
/* Exit status for main: 0 if every check passed, else 1 (prints a summary). */
int th_result(void);

/* Run argv (argv[0] a path), stdout and stderr into out (NUL-terminated,
 * truncated to cap - 1), bounded by timeout_ms (then SIGKILL). Returns the
 * waitpid status, or -1 when it could not run. */
int th_run_capture(const char *const *argv, char *out, size_t cap, unsigned timeout_ms);

/* A fresh directory under base (/tmp, /var/tmp) named after the test, in
 * buf; removed with its contents when the test exits (TH_KEEP=1 keeps it). */
void th_tmpdir(char *buf, size_t n, const char *base);
uint64_t th_now_ns(void);
void th_sleep_ms(unsigned ms);
/* xorshift64*: deterministic streams of token ids per seed. */
uint64_t th_rand(uint64_t *state);

/* ---- the daemon ------------------------------------------------------------- */

struct th_daemon {
	pid_t pid;          /* 0 once reaped */
	int status;         /* waitpid status once reaped */
	char dir[64];       /* mkdtemp */
	char sock[108];     /* dir/h.sock */
	char log[160];      /* dir/hearthd.log: the daemon's stdout + stderr */
};

/*
 * Start hearthd (binary path, model dir) with --socket-path in a fresh temp
 * dir, --model-path model, --threads 0 and any extra flags (NULL-terminated,
 * may be NULL), and wait (bounded) until its socket accepts. Fatal on failure
 * (prints the daemon's log).
 */
void th_daemon_start(struct th_daemon *d, const char *hearthd, const char *model,
		     const char *const *extra);
/* Still running (not exited)? Reaps it when it has exited. */
bool th_daemon_alive(struct th_daemon *d);
/* Wait up to timeout_ms for it to exit; true if it has. */
bool th_daemon_wait_exit(struct th_daemon *d, unsigned timeout_ms);
/*
 * Send SIGTERM, wait up to timeout_ms for the exit and check that it was a
 * clean one: exit status 0 and no sanitizer report in the log. Counts a
 * failure (and SIGKILLs it) otherwise. Returns true when clean.
 */
bool th_daemon_stop(struct th_daemon *d, unsigned timeout_ms);
/* Judge an already-exited daemon the same way (after th_daemon_wait_exit). */
bool th_daemon_judge(struct th_daemon *d);
/* Print the last lines of the daemon's log to stderr. */
void th_daemon_dump_log(const struct th_daemon *d, unsigned max_lines);
/* Count occurrences of needle in the daemon's log so far. */
unsigned th_daemon_log_count(const struct th_daemon *d, const char *needle);
/* Open file descriptors of the daemon (from /proc), or -errno. */
int th_daemon_fd_count(const struct th_daemon *d);
/* CPU time (user + system) the daemon used so far, in ns (from /proc). */
uint64_t th_daemon_cpu_ns(const struct th_daemon *d);

/* ---- control socket ------------------------------------------------------------- */

/* Connect a SOCK_SEQPACKET socket with a receive timeout; fd or -errno. */
int th_ctl_connect(const char *path);
/* Send req and receive its response (unpacked; free with
 * hearth__control__response__free_unpacked). ret_fd gets a passed fd or -1.
 * Returns 0 (response in *ret), or -errno (-ECONNRESET / -EPIPE on a closed
 * peer, -EAGAIN on the receive timeout, -EBADMSG). */
int th_ctl_call(int sock, Hearth__Control__Request *req, Hearth__Control__Response **ret,
		int *ret_fd);

struct th_stats {
	uint32_t clients, sessions, kv_total, kv_free;
	uint64_t tokens, steps, disconnects, bad_descriptors;
	uint64_t op_count[SHM_OP__MAX], op_errors[SHM_OP__MAX];
	uint64_t interactive_skips;
	uint32_t interactive_skip_max;
	uint64_t burst_holds, burst_hold_us;
	uint64_t batch[10];   /* steps by sessions: 1, 2, 3-4, ..., 257+ */
};
/* GetStats on a fresh connection (no Hello, like hearthctl). 0 or -errno. */
int th_stats(const char *path, struct th_stats *ret);

struct th_session_info {
	char name[SHM_SESSION_NAME_MAX + 1];
	uint32_t handle, n_tokens, kv_pages, attached;
};
/* ListSessions on a fresh connection: up to max into ret; returns how many
 * there are (may exceed max) or -errno. */
int th_sessions(const char *path, struct th_session_info *ret, unsigned max);

/* ---- raw protocol client ------------------------------------------------------------- */

struct rc {
	int sock;
	int memfd;
	void *mem;
	size_t len;
	struct shm_layout lay;
	struct shm_sq_prod sq;
	struct shm_cq_cons cq;
	struct shm_region_hdr *hdr;
	uint8_t *arena;
	uint32_t client_id;
	uint32_t vocab;
	uint64_t next_ud;
};

struct rc_opts {
	const char *name;
	uint32_t sq_entries, cq_entries, arena_bytes;
};

/* Arena areas the rc_* helpers use (the arena is at least 256 KiB there). */
#define RC_IN_OFF 0u
#define RC_AUX_OFF (64u << 10)
#define RC_OUT_OFF (128u << 10)
#define RC_OUT_CAP (64u << 10)

#define RC_TIMEOUT_NS (10ull * 1000000000ull)

/* Connect, Hello, receive and check the region, map it, build ring views.
 * opts may be NULL. Returns 0 or -errno (-error of the Hello reply). */
int rc_connect(struct rc *c, const char *path, const struct rc_opts *opts);
/* Unmap and close (the daemon sees a hang-up). Accepts a zeroed struct. */
void rc_close(struct rc *c);

/* Reserve one SQ slot (waiting for room, bounded), copy sqe there, publish,
 * wake the daemon. Returns 0, -ETIMEDOUT, or -EPROTO. */
int rc_submit(struct rc *c, const struct shm_sqe *sqe);
/* Publish without waking (for tests that batch or flood). */
int rc_try_put(struct rc *c, const struct shm_sqe *sqe);
/* Wait (bounded by timeout_ns) for one completion, copy it out and release
 * its slot. Returns 0, -ETIMEDOUT, -ESHUTDOWN, -EPROTO. */
int rc_wait(struct rc *c, struct shm_cqe *ret, int64_t timeout_ns);
/* Submit one descriptor (user_data assigned when 0) and wait for its single
 * completion. Returns the completion's res, or a harness error below -4096
 * minus the errno (TH_EHARNESS) when no completion came. */
#define TH_EHARNESS (-100000)
int32_t rc_call(struct rc *c, struct shm_sqe *sqe, struct shm_cqe *ret);

/* Ring wrappers of the data ops; data is copied through the helper areas. */
int32_t rc_open(struct rc *c, const char *name, uint32_t flags, uint32_t *ret_len);
int32_t rc_close_session(struct rc *c, uint32_t session, uint32_t flags);
int32_t rc_append(struct rc *c, uint32_t session, const int32_t *tok, uint32_t n, uint32_t *ret_pos);
int32_t rc_score(struct rc *c, uint32_t session, const int32_t *tok, uint32_t n,
		 const int32_t *labels, uint32_t n_labels, float *probs);
int32_t rc_truncate(struct rc *c, uint32_t session, uint32_t n);
/*
 * GENERATE with streaming: checks the stream's shape (every completion but the
 * last has SHM_CQE_F_MORE and res 1, out_len grows by 4 each time, the last
 * has no MORE and res = total) and counts violations as failures. Copies the
 * tokens to out[0..max). cb, when not NULL, is called after each streamed
 * completion with the count so far; a non-zero return stops reading (the
 * request stays in flight). Returns the number of tokens, or the error res.
 */
int32_t rc_generate(struct rc *c, uint32_t session, const int32_t *prompt, uint32_t n_prompt,
		    uint32_t max_tokens, int32_t *out, int (*cb)(void *, uint32_t), void *ud);

/* ---- floats ------------------------------------------------------------------- */

/* |a - b| <= 1e-5 * max|ref| + 1e-6 for every element; reports the worst. */
bool th_close(const float *got, const float *want, uint32_t n, const char *what);

#endif

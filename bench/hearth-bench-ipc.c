/* SPDX-License-Identifier: MIT */
/*
 * hearth-bench-ipc: round-trip latency of the local path. Starts its own
 * hearthd on the embedded tiny model (or connects to one with --socket) and
 * measures, in the same run:
 *   nop      a NOP through the shared-memory rings (libhearth)
 *   score32  APPEND of 32 tokens then SCORE of 2 labels (one SCORE request),
 *            rolled back with TRUNCATE (untimed) so the context stays put
 *   resume   (--resume, a daemon with an L2 file) a SCORE on a session of
 *            --context tokens just paged out to L2: page-in, device copies
 *            and the step, end to end; against the same SCORE on a session
 *            still in L1 (the difference is the resume cost)
 *   uds      the same NOP request and response over hearthd's Unix socket
 *            (a Ping control message: framed protobuf, answered by the
 *            daemon's epoll loop without touching the engine): what the
 *            rings replace
 *   echo     a bare 64-byte request / 32-byte reply over a Unix socket to
 *            an echo process blocked in read(): the floor of any socket
 *            transport, shown for reference
 * Prints median, p99, p99.9; last line BENCH {json}.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "hr_control.h"
#include "hearth/hearth.h"
#include "hr_common.h"

#ifndef HEARTHD_PATH
#define HEARTHD_PATH "hearthd"
#endif

struct opts {
	const char *socket;
	const char *hearthd;
	uint32_t nop_iters, score_iters, uds_iters, context, resume_iters;
};

static void die(const char *what, int err)
{
	fprintf(stderr, "hearth-bench-ipc: %s: %s\n", what, hearth_strerror(err));
	exit(1);
}

static void bench_nop(struct hearth *h, uint32_t iters, uint64_t *ns)
{
	int r;

	/* Warm-up, for at least a second: a freshly started daemon's library
	 * threads (OpenBLAS's pool polls for work for a while after start-up)
	 * still compete for the cores. */
	for (uint64_t end = hr_now_ns() + 1000000000ull; hr_now_ns() < end;)
		if ((r = hearth_nop(h)) < 0)
			die("nop", r);
	for (uint32_t i = 0; i < iters; i++) {
		uint64_t t0 = hr_now_ns();
		r = hearth_nop(h);
		ns[i] = hr_now_ns() - t0;
		if (r < 0)
			die("nop", r);
	}
}

/* Returns the probabilities of the first run, for the determinism check. */
static void bench_score(struct hearth *h, const struct opts *o, uint32_t vocab, uint64_t *ns,
			float first[2])
{
	int32_t ctx[4096], ev[32], labels[2] = { 1, 2 };
	float probs[2];
	int64_t sess;
	int r;

	sess = hearth_session_open(h, NULL, 0, NULL);
	if (sess < 0)
		die("session open", (int)sess);
	for (uint32_t i = 0; i < o->context; i++)
		ctx[i] = (int32_t)((i * 7919u + 13) % vocab);
	for (uint32_t i = 0; i < 32; i++)
		ev[i] = (int32_t)((i * 104729u + 5) % vocab);
	if ((r = hearth_append(h, (uint32_t)sess, ctx, o->context)) < 0)
		die("append context", r);
	for (uint32_t i = 0; i < o->score_iters + 20; i++) {
		uint64_t t0 = hr_now_ns();
		r = hearth_score(h, (uint32_t)sess, ev, 32, labels, 2, probs);
		uint64_t dt = hr_now_ns() - t0;
		if (r != 2)
			die("score", r < 0 ? r : -EPROTO);
		if (i == 0)
			memcpy(first, probs, sizeof(probs));
		/* Validate: a distribution over the labels, and the same event on the
		 * same context gives the same answer every time. */
		if (!(fabsf(probs[0] + probs[1] - 1.0f) < 1e-4f) ||
		    fabsf(probs[0] - first[0]) > 1e-5f) {
			fprintf(stderr, "hearth-bench-ipc: score %u: %g %g (first %g %g)\n", i,
				probs[0], probs[1], first[0], first[1]);
			exit(1);
		}
		if ((r = hearth_truncate(h, (uint32_t)sess, o->context)) < 0)
			die("truncate", r);
		if (i >= 20)
			ns[i - 20] = dt;
	}
	hearth_session_close(h, (uint32_t)sess, 1);
}

/*
 * Resume: evict a session of o->context tokens, let the page-out finish, then
 * time one SCORE (no new tokens) on it; and the same SCORE on a resident
 * session whose last logits must be recomputed too. Medians into ret.
 */
static void bench_resume(struct hearth *h, const struct opts *o, uint32_t vocab, double *ret_resume,
			 double *ret_resident)
{
	int32_t ctx[4096], labels[2] = { 1, 2 };
	uint64_t *a = calloc(o->resume_iters, sizeof(*a)), *b = calloc(o->resume_iters, sizeof(*b));
	struct bench_stats sa, sb;
	float p[2], ref[2];
	int64_t s1, s2;
	int r;

	if (!a || !b)
		die("alloc", -ENOMEM);
	s1 = hearth_session_open(h, NULL, 0, NULL);
	s2 = hearth_session_open(h, NULL, 0, NULL);
	if (s1 < 0 || s2 < 0)
		die("session open", (int)(s1 < 0 ? s1 : s2));
	for (uint32_t i = 0; i < o->context; i++)
		ctx[i] = (int32_t)((i * 7919u + 13) % vocab);
	if ((r = hearth_append(h, (uint32_t)s1, ctx, o->context)) < 0 ||
	    (r = hearth_append(h, (uint32_t)s2, ctx, o->context)) < 0)
		die("append context", r);
	if ((r = hearth_score(h, (uint32_t)s1, NULL, 0, labels, 2, ref)) < 0)
		die("score", r);
	for (uint32_t i = 0; i < o->resume_iters; i++) {
		uint64_t t0;

		if ((r = hearth_session_evict(h, (uint32_t)s1)) < 0)
			die("evict (does the daemon have --l2-path?)", r);
		nanosleep(&(struct timespec){ 0, 300000000 }, NULL); /* page-out done */
		t0 = hr_now_ns();
		r = hearth_score(h, (uint32_t)s1, NULL, 0, labels, 2, p);
		a[i] = hr_now_ns() - t0;
		if (r != 2 || fabsf(p[0] - ref[0]) > 1e-3f)
			die("score after resume differs", r < 0 ? r : -EPROTO);
		/* Resident baseline: s2 is in L1 but not the last session scored. */
		t0 = hr_now_ns();
		r = hearth_score(h, (uint32_t)s2, NULL, 0, labels, 2, p);
		b[i] = hr_now_ns() - t0;
		if (r != 2)
			die("score", r);
	}
	bench_summarise(a, o->resume_iters, &sa);
	bench_summarise(b, o->resume_iters, &sb);
	*ret_resume = sa.median;
	*ret_resident = sb.median;
	hearth_session_close(h, (uint32_t)s1, 1);
	hearth_session_close(h, (uint32_t)s2, 1);
	free(a);
	free(b);
}

/* NOP over hearthd's control socket: Ping request, empty response. */
static void bench_uds_daemon(const char *path, uint32_t iters, uint64_t *ns)
{
	static uint8_t buf[HR_CTL_MAX_MSG];
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__Ping ping = HEARTH__CONTROL__PING__INIT;
	int fd = bench_ctl_connect(path), eof, r;

	if (fd < 0)
		die("connect to the control socket", fd);
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_PING;
	req.ping = &ping;
	for (uint32_t i = 0; i < iters + iters / 10; i++) {
		uint64_t t0 = hr_now_ns();
		Hearth__Control__Response *rep;

		req.id = i;
		if ((r = hr_ctl_send(fd, &req.base, -1)) < 0)
			die("ping", r);
		r = hr_ctl_recv(fd, buf, sizeof(buf), NULL, &eof);
		if (r < 0 || eof)
			die("ping reply", r < 0 ? r : -ECONNRESET);
		rep = hearth__control__response__unpack(NULL, (size_t)r, buf + HR_CTL_HDR);
		if (!rep || rep->id != i || rep->error)
			die("ping reply", -EPROTO);
		hearth__control__response__free_unpacked(rep, NULL);
		if (i >= iters / 10)
			ns[i - iters / 10] = hr_now_ns() - t0;
	}
	close(fd);
}

/* The same request/response over a Unix socket to an echo process. */
static void bench_uds(uint32_t iters, uint64_t *ns)
{
	uint8_t req[64], rsp[32];
	int sv[2];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair", -errno);
	pid = fork();
	if (pid < 0)
		die("fork", -errno);
	if (pid == 0) {
		close(sv[0]);
		for (;;) {
			ssize_t n = read(sv[1], req, sizeof(req));
			if (n <= 0)
				_exit(0);
			memcpy(rsp, req + 8, 8); /* echo user_data, like a completion */
			memset(rsp + 8, 0, sizeof(rsp) - 8);
			if (write(sv[1], rsp, sizeof(rsp)) != sizeof(rsp))
				_exit(1);
		}
	}
	close(sv[1]);
	memset(req, 0, sizeof(req));
	for (uint32_t i = 0; i < iters + iters / 10; i++) {
		uint64_t t0 = hr_now_ns(), ud = i;
		memcpy(req + 8, &ud, 8);
		if (write(sv[0], req, sizeof(req)) != sizeof(req) ||
		    read(sv[0], rsp, sizeof(rsp)) != sizeof(rsp) || memcmp(rsp, &ud, 8) != 0)
			die("uds echo", -EPROTO);
		if (i >= iters / 10)
			ns[i - iters / 10] = hr_now_ns() - t0;
	}
	close(sv[0]);
	waitpid(pid, NULL, 0);
}

static void row(const char *name, const struct bench_stats *s)
{
	printf("%-10s %12.0f %12.0f %12.0f %12.0f %12.0f\n", name, s->median, s->p99, s->p999,
	       s->mean, s->max);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "hearthd", required_argument, NULL, 'd' },
		{ "iters", required_argument, NULL, 'n' },
		{ "score-iters", required_argument, NULL, 'c' },
		{ "context", required_argument, NULL, 'x' },
		{ "resume", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{}
	};
	struct opts o = { .hearthd = HEARTHD_PATH, .nop_iters = 200000, .score_iters = 2000,
			  .uds_iters = 20000, .context = 64 };
	char sock[160];
	struct hearth *h;
	struct bench_stats nop, uds, echo, score;
	uint64_t *ns;
	float first[2];
	double resume_ns = 0, resident_ns = 0;
	pid_t daemon = 0;
	int c;

	while ((c = getopt_long(argc, argv, "s:d:n:c:x:r:h", longopts, NULL)) != -1) {
		switch (c) {
		case 's': o.socket = optarg; break;
		case 'd': o.hearthd = optarg; break;
		case 'n': o.nop_iters = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'c': o.score_iters = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'x': o.context = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'r': o.resume_iters = (uint32_t)strtoul(optarg, NULL, 10); break;
		default:
			fprintf(c == 'h' ? stdout : stderr,
				"Usage: hearth-bench-ipc [--socket PATH | --hearthd PATH] [--iters N]\n"
				"                        [--score-iters N] [--context N] [--resume N]\n");
			return c == 'h' ? 0 : 2;
		}
	}
	if (!o.nop_iters || !o.score_iters || !o.context || o.context > 4096) {
		fprintf(stderr, "hearth-bench-ipc: iterations must be > 0 and context in 1..4096\n");
		return 2;
	}
	if (!o.socket) {
		static const char *const flags[] = { "--log-level=warn", NULL };
		daemon = bench_start_daemon(o.hearthd, flags, sock, sizeof(sock), NULL, 60);
		if (daemon < 0)
			die("starting hearthd", (int)daemon);
		o.socket = sock;
	}
	h = hearth_connect(&(struct hearth_opts){ .socket_path = o.socket,
						  .client_name = "hearth-bench-ipc" });
	if (!h)
		die("connect", -errno);
	ns = calloc(HR_MAX(o.nop_iters, HR_MAX(o.score_iters, o.uds_iters)), sizeof(*ns));
	if (!ns)
		die("alloc", -ENOMEM);

	bench_nop(h, o.nop_iters, ns);
	bench_summarise(ns, o.nop_iters, &nop);
	bench_score(h, &o, hearth_model(h)->vocab_size, ns, first);
	bench_summarise(ns, o.score_iters, &score);
	if (o.resume_iters)
		bench_resume(h, &o, hearth_model(h)->vocab_size, &resume_ns, &resident_ns);
	bench_uds_daemon(o.socket, o.uds_iters, ns);
	bench_summarise(ns, o.uds_iters, &uds);
	bench_uds(o.uds_iters, ns);
	bench_summarise(ns, o.uds_iters, &echo);
	printf("model %s (%s), context %u tokens, %ld cores\n", hearth_model(h)->name,
	       hearth_model(h)->arch, o.context, sysconf(_SC_NPROCESSORS_ONLN));
	hearth_close(h);
	if (daemon > 0 && bench_stop_daemon(daemon) != 0)
		fprintf(stderr, "hearth-bench-ipc: warning: hearthd did not exit cleanly\n");
	printf("%-10s %12s %12s %12s %12s %12s   (ns)\n", "op", "median", "p99", "p99.9",
	       "mean", "max");
	row("nop", &nop);
	row("uds", &uds);
	row("echo", &echo);
	row("score32", &score);
	printf("uds / nop median: %.1fx (bare socket echo / nop: %.1fx)\n", uds.median / nop.median,
	       echo.median / nop.median);
	if (o.resume_iters)
		printf("resume of a %u-token session from L2, end to end (SCORE): median %.2f ms; "
		       "the same SCORE resident: %.2f ms; resume cost %.2f ms\n",
		       o.context, resume_ns / 1e6, resident_ns / 1e6, (resume_ns - resident_ns) / 1e6);
	printf("BENCH {\"bench\":\"ipc\",\"nop_median_ns\":%.0f,\"nop_p99_ns\":%.0f,"
	       "\"nop_p999_ns\":%.0f,\"uds_median_ns\":%.0f,\"uds_p99_ns\":%.0f,"
	       "\"uds_p999_ns\":%.0f,\"score32_median_ns\":%.0f,\"score32_p99_ns\":%.0f,"
	       "\"score32_p999_ns\":%.0f,\"uds_over_nop\":%.1f,\"echo_median_ns\":%.0f,\"echo_over_nop\":%.1f,\"nop_iters\":%u,"
	       "\"score_iters\":%u,\"context\":%u,\"resume_ms\":%.3f,\"resident_score_ms\":%.3f}\n",
	       nop.median, nop.p99, nop.p999, uds.median, uds.p99, uds.p999, score.median,
	       score.p99, score.p999, uds.median / nop.median, echo.median,
	       echo.median / nop.median, o.nop_iters, o.score_iters,
	       o.context, resume_ns / 1e6, resident_ns / 1e6);
	free(ns);
	return 0;
}

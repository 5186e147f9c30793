/* SPDX-License-Identifier: MIT */
/*
 * hearth-bench-load: the streaming-risk-scoring workload under load. N client
 * processes with M sessions each; every session starts from a context of C
 * tokens, then each event appends A tokens and asks for a SCORE. Events are
 * sent open loop at a fixed rate per session, and latency is measured from the
 * event's intended send time, so a stall in the daemon (or in this client)
 * shows up instead of being absorbed. Loads N*M = 1, 8, 64, 256 by default.
 * Reports throughput, p50 / p99 / p99.9 and the daemon's batch sizes (from its
 * stats) per load; last line BENCH {json}.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"
#include "control.pb-c.h"
#include "hearth/hearth.h"
#include "hr_common.h"
#include "hr_control.h"

#ifndef HEARTHD_PATH
#define HEARTHD_PATH "hearthd"
#endif

#define MAX_LOADS 8
#define MAX_DEPTH 4          /* events of one session in flight at once */
#define N_LABELS 2
#define TAG_TRUNCATE (1ull << 62)
#define BATCH_BUCKETS 10

struct opts {
	const char *socket, *hearthd, *model, *backend;
	const char *daemon_args[16];
	uint32_t n_daemon_args;
	uint32_t loads[MAX_LOADS], n_loads;
	uint32_t procs;            /* client processes (at most the load) */
	double rate;               /* events/s per session; 0: closed loop */
	double duration;           /* seconds per load */
	uint32_t context, append, window;
};

/* One client process's results, in memory shared with the parent. */
struct proc_res {
	_Atomic uint32_t ready;
	uint32_t n_samples, cap;
	uint64_t events, errors, bad_scores;
	uint64_t in_window;        /* good events completed inside the measured window */
	int fail;                  /* -errno of a setup failure */
	uint64_t samples[];        /* latency ns of measured events */
};

struct shared {
	_Atomic uint32_t go;
	uint64_t t0;               /* CLOCK_MONOTONIC ns: the first events' time */
};

static void die(const char *what, int err)
{
	fprintf(stderr, "hearth-bench-load: %s: %s\n", what, hearth_strerror(err));
	exit(1);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* ---- one client process -------------------------------------------------------- */

struct sess {
	int64_t handle;
	uint32_t len;               /* tokens, counting those in flight */
	uint32_t inflight;
	uint64_t next_ns;           /* intended time of its next event */
	uint64_t intended[MAX_DEPTH];
	uint32_t slot_busy;         /* bit per arena slot */
};

struct slot_mem {
	int32_t *tokens;            /* [append] */
	int32_t *labels;            /* [N_LABELS] */
	float *probs;               /* [N_LABELS] */
};

static int run_client(const struct opts *o, uint32_t idx, uint32_t n_sess, struct shared *sh,
		      struct proc_res *res)
{
	struct hearth *h;
	struct sess *ss = calloc(n_sess, sizeof(*ss));
	struct slot_mem *mem = calloc((size_t)n_sess * MAX_DEPTH, sizeof(*mem));
	uint32_t depth = o->rate > 0 ? MAX_DEPTH : 1, vocab;
	uint64_t rng = 0x9e3779b97f4a7c15ull * (idx + 1), period, end, warm;
	uint32_t arena = (uint32_t)((size_t)n_sess * MAX_DEPTH * 256 + (size_t)o->context * 4 + (1u << 16));
	int32_t *ctx;
	int r;

	h = hearth_connect(&(struct hearth_opts){ .socket_path = o->socket,
						  .client_name = "hearth-bench-load",
						  .sq_entries = 1024, .arena_bytes = arena,
						  .spin_us = 20 });
	if (!h || !ss || !mem)
		return -ENOMEM;
	vocab = hearth_model(h)->vocab_size;
	ctx = malloc((size_t)o->context * sizeof(int32_t));
	if (!ctx)
		return -ENOMEM;
	for (uint32_t i = 0; i < n_sess * MAX_DEPTH; i++) {
		mem[i].tokens = hearth_arena_alloc(h, o->append * 4);
		mem[i].labels = hearth_arena_alloc(h, N_LABELS * 4);
		mem[i].probs = hearth_arena_alloc(h, N_LABELS * 4);
		if (!mem[i].tokens || !mem[i].labels || !mem[i].probs)
			return -EMSGSIZE;
		for (uint32_t k = 0; k < N_LABELS; k++)
			mem[i].labels[k] = (int32_t)(1 + k);
	}
	/* Each session starts from its own context of C tokens. */
	for (uint32_t s = 0; s < n_sess; s++) {
		ss[s].handle = hearth_session_open(h, NULL, 0, NULL);
		if (ss[s].handle < 0)
			return (int)ss[s].handle;
		for (uint32_t i = 0; i < o->context; i++)
			ctx[i] = (int32_t)(3 + rng_next(&rng) % (vocab - 3));
		r = hearth_append(h, (uint32_t)ss[s].handle, ctx, o->context);
		if (r < 0)
			return r;
		ss[s].len = o->context;
	}
	atomic_store(&res->ready, 1);
	while (!atomic_load(&sh->go))
		usleep(100);
	period = o->rate > 0 ? (uint64_t)(1e9 / o->rate) : 0;
	warm = sh->t0 + (uint64_t)(o->duration * 1e8); /* the first 10% is warm-up */
	end = sh->t0 + (uint64_t)(o->duration * 1e9);
	/* Sessions' events are spread evenly over one period. */
	for (uint32_t s = 0; s < n_sess; s++)
		ss[s].next_ns = sh->t0 + (period ? period * s / n_sess : 0);

	for (;;) {
		uint64_t now = hr_now_ns(), wake = UINT64_MAX;
		struct hearth_cqe *cqe;
		uint32_t pending = 0;
		bool sent = false;

		for (uint32_t s = 0; s < n_sess; s++) {
			struct sess *x = &ss[s];

			pending += x->inflight;
			while (x->next_ns < end && x->next_ns <= now && x->inflight < depth) {
				uint32_t slot = (uint32_t)__builtin_ctz(~x->slot_busy);
				struct slot_mem *m = &mem[s * MAX_DEPTH + slot];
				struct hearth_sqe *q;

				/* A window over the stream: roll back to the context. */
				if (x->len + o->append > o->context + o->window) {
					if (!(q = hearth_get_sqe(h)))
						break;
					hearth_prep_truncate(h, q, (uint32_t)x->handle, o->context);
					q->user_data = TAG_TRUNCATE | s;
					x->len = o->context;
				}
				if (!(q = hearth_get_sqe(h)))
					break;
				for (uint32_t i = 0; i < o->append; i++)
					m->tokens[i] = (int32_t)(3 + rng_next(&rng) % (vocab - 3));
				hearth_prep_score(h, q, (uint32_t)x->handle, m->tokens, o->append,
						  m->labels, N_LABELS, m->probs);
				q->user_data = (uint64_t)s << 8 | slot;
				x->intended[slot] = x->next_ns;
				x->slot_busy |= 1u << slot;
				x->inflight++;
				x->len += o->append;
				x->next_ns = period ? x->next_ns + period : UINT64_MAX;
				pending++;
				sent = true;
			}
			if (x->next_ns < end && x->inflight < depth)
				wake = HR_MIN(wake, x->next_ns);
		}
		if (sent && (r = hearth_submit(h)) < 0)
			return r;
		if (!pending && (now >= end || wake == UINT64_MAX))
			break;
		r = hearth_wait_cqe(h, &cqe,
				    wake == UINT64_MAX ? 1000000000ll
						       : (int64_t)(wake > now ? wake - now : 0));
		if (r == -ETIMEDOUT || r == -EINTR)
			continue;
		if (r < 0)
			return r;
		do {
			uint64_t ud = cqe->user_data, t = hr_now_ns();

			if (!(ud & TAG_TRUNCATE)) {
				uint32_t s = (uint32_t)(ud >> 8), slot = (uint32_t)(ud & 0xff);
				struct sess *x = &ss[s];
				const float *p = mem[s * MAX_DEPTH + slot].probs;

				res->events++;
				if (cqe->res != N_LABELS)
					res->errors++;
				else if (fabsf(p[0] + p[1] - 1.0f) > 1e-3f || !(p[0] >= 0) || !(p[1] >= 0))
					res->bad_scores++;
				else if (x->intended[slot] >= warm && res->n_samples < res->cap)
					res->samples[res->n_samples++] = t - x->intended[slot];
				res->in_window += cqe->res == N_LABELS && t >= warm && t < end;
				x->slot_busy &= ~(1u << slot);
				x->inflight--;
				if (!period)
					x->next_ns = t; /* closed loop: the next event at once */
			} else if (cqe->res < 0) {
				res->errors++;
			}
			hearth_cqe_seen(h, cqe);
		} while (hearth_peek_cqe(h, &cqe) == 0);
	}
	hearth_close(h);
	return 0;
}

/* ---- the daemon's batch sizes ----------------------------------------------------- */

/* The daemon's step counters: steps by sequences (ret), then [0] step tokens,
 * [1] step time, [2] steps scored from the label rows of the LM head, [3]
 * graph captures (each stalls its step), [4] microseconds spent capturing,
 * [5] recaptures after a backend workspace moved, [6 + i] steps by duration
 * (STEP_BUCKETS: up to 0.25 ms x 2^i), [6 + STEP_BUCKETS] steps held for a
 * burst (batch_wait_us). */
#define STEP_BUCKETS 10
#define N_CNT (7 + STEP_BUCKETS)
static int get_batches(const char *path, uint64_t *ret, uint64_t cnt[N_CNT])
{
	static uint8_t buf[HR_CTL_MAX_MSG];
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__GetStats gs = HEARTH__CONTROL__GET_STATS__INIT;
	Hearth__Control__Response *rep;
	int fd = bench_ctl_connect(path), eof, r;

	if (fd < 0)
		return fd;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_GET_STATS;
	req.get_stats = &gs;
	req.id = 1;
	r = hr_ctl_send(fd, &req.base, -1);
	if (r >= 0)
		r = hr_ctl_recv(fd, buf, sizeof(buf), NULL, &eof);
	close(fd);
	if (r < 0)
		return r;
	rep = hearth__control__response__unpack(NULL, (size_t)r, buf + HR_CTL_HDR);
	if (!rep || rep->body_case != HEARTH__CONTROL__RESPONSE__BODY_STATS) {
		if (rep)
			hearth__control__response__free_unpacked(rep, NULL);
		return -EPROTO;
	}
	memset(ret, 0, BATCH_BUCKETS * sizeof(*ret));
	for (size_t i = 0; i < rep->stats->n_batch_sizes && i < BATCH_BUCKETS; i++)
		ret[i] = rep->stats->batch_sizes[i];
	cnt[0] = rep->stats->step_tokens;
	cnt[1] = rep->stats->step_ns;
	cnt[2] = rep->stats->score_steps;
	cnt[3] = rep->stats->graph_captures;
	cnt[4] = rep->stats->graph_capture_us;
	cnt[5] = rep->stats->graph_recaptures;
	for (size_t i = 0; i < STEP_BUCKETS; i++)
		cnt[6 + i] = i < rep->stats->n_step_times ? rep->stats->step_times[i] : 0;
	cnt[6 + STEP_BUCKETS] = rep->stats->burst_holds;
	hearth__control__response__free_unpacked(rep, NULL);
	return 0;
}

/* ---- one load ------------------------------------------------------------------------- */

struct load_res {
	uint32_t sessions, procs;
	double throughput, offered;
	struct bench_stats lat;
	uint64_t events, errors, batches[BATCH_BUCKETS], step_tokens, score_steps, captures, recaptures;
	uint64_t burst_holds;
	double capture_ms;
	uint64_t step_times[STEP_BUCKETS];
	double step_max_ms; /* upper bound of the longest steps' range (inf: more than 64 ms) */
	double mean_batch, mean_step_ms; /* the daemon's steps during the load */
};

static void run_load(const struct opts *o, uint32_t total, struct load_res *lr)
{
	uint32_t procs = HR_MIN(o->procs, total), per = (total + procs - 1) / procs;
	size_t cap = (size_t)(o->rate > 0 ? o->rate * o->duration * 1.2 + 64 : 2e6 / procs + 64) * per;
	size_t stride = sizeof(struct proc_res) + cap * sizeof(uint64_t);
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint8_t *area = mmap(NULL, stride * procs, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t b0[BATCH_BUCKETS], b1[BATCH_BUCKETS], c0[N_CNT], c1[N_CNT], *all;
	uint64_t n_all = 0, nb = 0;
	uint64_t in_window = 0;
	pid_t pids[256];
	int st, r;

	if (sh == MAP_FAILED || area == MAP_FAILED || procs > 256)
		die("mmap", -ENOMEM);
	memset(lr, 0, sizeof(*lr));
	lr->sessions = total;
	lr->procs = procs;
	for (uint32_t p = 0; p < procs; p++) {
		struct proc_res *pr = (struct proc_res *)(area + stride * p);
		uint32_t n = HR_MIN(per, total - per * p);

		pr->cap = (uint32_t)cap;
		pids[p] = fork();
		if (pids[p] < 0)
			die("fork", -errno);
		if (pids[p] == 0) {
			r = n ? run_client(o, p, n, sh, pr) : 0;
			pr->fail = r;
			atomic_store(&pr->ready, 1);
			_exit(r < 0 ? 1 : 0);
		}
	}
	for (uint32_t p = 0; p < procs; p++) {
		struct proc_res *pr = (struct proc_res *)(area + stride * p);
		while (!atomic_load(&pr->ready))
			usleep(1000);
		if (pr->fail)
			die("client setup", pr->fail);
	}
	if ((r = get_batches(o->socket, b0, c0)) < 0)
		die("stats", r);
	sh->t0 = hr_now_ns() + 20000000ull;
	atomic_store(&sh->go, 1);
	for (uint32_t p = 0; p < procs; p++) {
		if (waitpid(pids[p], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
			struct proc_res *pr = (struct proc_res *)(area + stride * p);
			die("client process", pr->fail ? pr->fail : -ECHILD);
		}
	}
	if ((r = get_batches(o->socket, b1, c1)) < 0)
		die("stats", r);
	all = malloc(cap * procs * sizeof(uint64_t));
	if (!all)
		die("alloc", -ENOMEM);
	for (uint32_t p = 0; p < procs; p++) {
		struct proc_res *pr = (struct proc_res *)(area + stride * p);
		memcpy(all + n_all, pr->samples, pr->n_samples * sizeof(uint64_t));
		n_all += pr->n_samples;
		lr->events += pr->events;
		in_window += pr->in_window;
		lr->errors += pr->errors + pr->bad_scores;
	}
	if (!n_all)
		die("no events measured", -ENODATA);
	bench_summarise(all, n_all, &lr->lat);
	/* Throughput: events completed inside the measured 90% of the run (an
	 * overloaded daemon's backlog, drained after it, does not count). */
	lr->throughput = (double)in_window / (o->duration * 0.9);
	lr->offered = o->rate > 0 ? o->rate * total : 0;
	for (int i = 0; i < BATCH_BUCKETS; i++) {
		static const double mid[BATCH_BUCKETS] = { 1, 2, 3.5, 6.5, 12.5, 24.5, 48.5, 96.5, 192.5, 300 };
		lr->batches[i] = b1[i] - b0[i];
		nb += lr->batches[i];
		lr->mean_batch += mid[i] * (double)lr->batches[i];
	}
	lr->mean_batch = nb ? lr->mean_batch / (double)nb : 0;
	lr->step_tokens = c1[0] - c0[0];
	lr->mean_step_ms = nb ? (double)(c1[1] - c0[1]) / (double)nb / 1e6 : 0;
	lr->score_steps = c1[2] - c0[2];
	lr->captures = c1[3] - c0[3];
	lr->capture_ms = (double)(c1[4] - c0[4]) / 1e3;
	lr->recaptures = c1[5] - c0[5];
	lr->burst_holds = c1[6 + STEP_BUCKETS] - c0[6 + STEP_BUCKETS];
	for (int i = 0; i < STEP_BUCKETS; i++) {
		lr->step_times[i] = c1[6 + i] - c0[6 + i];
		if (lr->step_times[i])
			lr->step_max_ms = i + 1 < STEP_BUCKETS ? 0.25 * (1u << i) : INFINITY;
	}
	free(all);
	munmap(sh, sizeof(*sh));
	munmap(area, stride * procs);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: hearth-bench-load [--socket PATH | --hearthd PATH [--model DIR] [--backend B]\n"
		"                         [--daemon-arg=--key=value ...]] [--loads 1,8,64,256]\n"
		"                         [--procs N] [--rate EVENTS_PER_S] [--duration S]\n"
		"                         [--context TOKENS] [--append TOKENS] [--window TOKENS]\n"
		"  --rate 0 runs closed loop (each session sends its next event when the last\n"
		"  completes): the capacity. Latency is measured from each event's intended time.\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "hearthd", required_argument, NULL, 'd' },
		{ "model", required_argument, NULL, 'm' },
		{ "backend", required_argument, NULL, 'b' },
		{ "daemon-arg", required_argument, NULL, 'a' },
		{ "loads", required_argument, NULL, 'l' },
		{ "procs", required_argument, NULL, 'p' },
		{ "rate", required_argument, NULL, 'r' },
		{ "duration", required_argument, NULL, 't' },
		{ "context", required_argument, NULL, 'c' },
		{ "append", required_argument, NULL, 'n' },
		{ "window", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' },
		{}
	};
	struct opts o = { .hearthd = HEARTHD_PATH, .loads = { 1, 8, 64, 256 }, .n_loads = 4,
			  .procs = 8, .rate = 100, .duration = 5, .context = 1024, .append = 16,
			  .window = 256 };
	struct load_res lr[MAX_LOADS];
	char sock[160], flagbuf[3][4200];
	const char *flags[24];
	uint32_t nf = 0, max_ctx;
	pid_t daemon = 0;
	struct hearth *h;
	int c, bad = 0;
	double t1 = 0, t64 = 0;

	while ((c = getopt_long(argc, argv, "s:d:m:b:a:l:p:r:t:c:n:w:h", longopts, NULL)) != -1) {
		switch (c) {
		case 's': o.socket = optarg; break;
		case 'd': o.hearthd = optarg; break;
		case 'm': o.model = optarg; break;
		case 'b': o.backend = optarg; break;
		case 'a':
			if (o.n_daemon_args < HR_ARRAY_SIZE(o.daemon_args))
				o.daemon_args[o.n_daemon_args++] = optarg;
			break;
		case 'l': {
			char *p = optarg, *end;
			o.n_loads = 0;
			while (*p && o.n_loads < MAX_LOADS) {
				o.loads[o.n_loads++] = (uint32_t)strtoul(p, &end, 10);
				p = *end ? end + 1 : end;
			}
			break;
		}
		case 'p': o.procs = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'r': o.rate = strtod(optarg, NULL); break;
		case 't': o.duration = strtod(optarg, NULL); break;
		case 'c': o.context = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'n': o.append = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'w': o.window = (uint32_t)strtoul(optarg, NULL, 10); break;
		default:
			usage(c == 'h' ? stdout : stderr);
			return c == 'h' ? 0 : 2;
		}
	}
	for (uint32_t i = 0; i < o.n_loads; i++)
		bad |= !o.loads[i] || o.loads[i] > 4096;
	if (bad || !o.n_loads || !o.procs || o.procs > 256 || o.rate < 0 || o.duration <= 0.1 ||
	    !o.context || !o.append || o.append > 4096 || o.window < o.append) {
		fprintf(stderr, "hearth-bench-load: bad arguments (loads 1..4096, procs 1..256, "
				"duration > 0.1 s, window >= append)\n");
		return 2;
	}
	if (!o.socket) {
		flags[nf++] = "--log-level=warn";
		if (o.model) {
			snprintf(flagbuf[0], sizeof(flagbuf[0]), "--model-path=%s", o.model);
			flags[nf++] = flagbuf[0];
		}
		if (o.backend) {
			snprintf(flagbuf[1], sizeof(flagbuf[1]), "--backend=%s", o.backend);
			flags[nf++] = flagbuf[1];
		}
		{
			/* KV for the largest load: its contexts, windows and one step's
			 * worth of slack (a --daemon-arg=--kv-pages=N later wins). */
			uint32_t most = 0;
			for (uint32_t i = 0; i < o.n_loads; i++)
				most = HR_MAX(most, o.loads[i]);
			snprintf(flagbuf[2], sizeof(flagbuf[2]), "--kv-pages=%u",
				 most * ((o.context + o.window + 15) / 16 + 2) + 64);
			flags[nf++] = flagbuf[2];
		}
		for (uint32_t i = 0; i < o.n_daemon_args; i++)
			flags[nf++] = o.daemon_args[i];
		flags[nf] = NULL;
		daemon = bench_start_daemon(o.hearthd, flags, sock, sizeof(sock), NULL, 600);
		if (daemon < 0)
			die("starting hearthd", (int)daemon);
		o.socket = sock;
	}
	h = hearth_connect(&(struct hearth_opts){ .socket_path = o.socket,
						  .client_name = "hearth-bench-load" });
	if (!h)
		die("connect", -errno);
	max_ctx = hearth_model(h)->max_context;
	printf("model %s (%s, %u layers), context %u + %u-token events (window %u), %s, %.1f s per load, "
	       "%ld cores here\n", hearth_model(h)->name, hearth_model(h)->arch,
	       hearth_model(h)->n_layers, o.context, o.append, o.window,
	       o.rate > 0 ? "open loop" : "closed loop", o.duration, sysconf(_SC_NPROCESSORS_ONLN));
	hearth_close(h);
	if (max_ctx && o.context + o.window > max_ctx) {
		fprintf(stderr, "hearth-bench-load: context + window (%u) exceeds the model's %u\n",
			o.context + o.window, max_ctx);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	printf("%8s %6s %10s %10s %10s %10s %10s %8s %8s %8s %7s %8s %8s  %s\n", "sessions",
	       "procs", "offered/s", "events/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "step ms",
	       "max <=", "scored", "captures", "capt ms", "batch sizes (steps)");
	for (uint32_t i = 0; i < o.n_loads; i++) {
		static const char *const lab[BATCH_BUCKETS] = { "1", "2", "3-4", "5-8", "9-16", "17-32",
							       "33-64", "65-128", "129-256", ">256" };
		run_load(&o, o.loads[i], &lr[i]);
		printf("%8u %6u %10.0f %10.1f %10.3f %10.3f %10.3f %8llu %8.3f %8.2f %7llu %8llu "
		       "%8.1f ", lr[i].sessions, lr[i].procs, lr[i].offered, lr[i].throughput,
		       lr[i].lat.median / 1e6, lr[i].lat.p99 / 1e6, lr[i].lat.p999 / 1e6,
		       (unsigned long long)lr[i].errors, lr[i].mean_step_ms, lr[i].step_max_ms,
		       (unsigned long long)lr[i].score_steps, (unsigned long long)lr[i].captures,
		       lr[i].capture_ms);
		for (int b = 0; b < BATCH_BUCKETS; b++)
			if (lr[i].batches[b])
				printf(" %s:%llu", lab[b], (unsigned long long)lr[i].batches[b]);
		printf("\n");
		fflush(stdout);
		if (lr[i].sessions == 1)
			t1 = lr[i].throughput;
		if (lr[i].sessions == 64)
			t64 = lr[i].throughput;
	}
	if (daemon > 0 && bench_stop_daemon(daemon) != 0)
		fprintf(stderr, "hearth-bench-load: warning: hearthd did not exit cleanly\n");
	bad = 0;
	for (uint32_t i = 0; i < o.n_loads; i++)
		bad |= lr[i].errors != 0;
	if (bad)
		fprintf(stderr, "hearth-bench-load: some events failed or returned bad scores\n");
	printf("BENCH {\"bench\":\"load\",\"rate_per_session\":%.1f,\"context\":%u,\"append\":%u,"
	       "\"loads\":[", o.rate, o.context, o.append);
	for (uint32_t i = 0; i < o.n_loads; i++) {
		printf("%s{\"sessions\":%u,\"throughput\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
		       "\"p999_ms\":%.3f,\"errors\":%llu,\"mean_batch\":%.1f,\"mean_step_ms\":%.3f,"
		       "\"score_steps\":%llu,\"graph_captures\":%llu,\"graph_capture_ms\":%.1f,"
		       "\"graph_recaptures\":%llu,\"burst_holds\":%llu,\"batches\":[",
		       i ? "," : "", lr[i].sessions, lr[i].throughput, lr[i].lat.median / 1e6,
		       lr[i].lat.p99 / 1e6, lr[i].lat.p999 / 1e6, (unsigned long long)lr[i].errors,
		       lr[i].mean_batch, lr[i].mean_step_ms, (unsigned long long)lr[i].score_steps,
		       (unsigned long long)lr[i].captures, lr[i].capture_ms,
		       (unsigned long long)lr[i].recaptures, (unsigned long long)lr[i].burst_holds);
		for (int b = 0; b < BATCH_BUCKETS; b++)
			printf("%s%llu", b ? "," : "", (unsigned long long)lr[i].batches[b]);
		printf("],\"step_times\":[");
		for (int b = 0; b < STEP_BUCKETS; b++)
			printf("%s%llu", b ? "," : "", (unsigned long long)lr[i].step_times[b]);
		printf("]}");
	}
	printf("],\"throughput_ratio_64_vs_1\":%.2f}\n", t1 > 0 && t64 > 0 ? t64 / t1 : 0.0);
	return bad ? 1 : 0;
}

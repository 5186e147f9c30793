/* SPDX-License-Identifier: MIT */
/*
 * DPDK-style stress of the shm protocol: request/response through one region.
 * A submitter (client) produces the SQ, an echo (daemon reactor) consumes it
 * and produces the CQ, a reaper (client) consumes the CQ. Every request is
 * stamped with its writer and a sequence number, in the descriptor and in its
 * arena slot; each stage verifies stamps, order and arena contents, re-stamps
 * and passes it on; the reaper poisons the slot and the submitter checks the
 * poison before reusing it (arena slots recycle only after the reply).
 *
 * All three sides sometimes nap so the others spin out and sleep on the
 * futexes; a wait that times out while its ring index had moved is a lost
 * wake-up and fails the run, and a run that does not finish in time fails as a
 * hang. --procs runs the roles as fork()ed processes on a sealed memfd (the
 * client roles map it again at their own address), --threads as pthreads on
 * one mapping (the mode that ThreadSanitizer can check).
 *
 *   test_ring_stress [--procs|--threads] [--fast|--sleepy] [--seconds S] [S]
 *
 * --fast: no naps, long spins: for throughput. --sleepy: no naps, no spins:
 * every empty or full ring goes straight to the futex, which makes the
 * need-wakeup race as frequent as it gets. Exits non-zero on any failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hr_common.h"
#include "shm_proto.h"
#include "shm_ring.h"
#include "shm_wait.h"

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

#define SQ_ENTRIES 32u
#define CQ_ENTRIES 16u                    /* smaller: the echo also finds the CQ full */
#define N_SLOTS (SQ_ENTRIES + CQ_ENTRIES) /* unfinished requests never exceed this */
#define SLOT_BYTES 256u
#define ARENA_BYTES HR_ALIGN_UP(N_SLOTS * SLOT_BYTES, SHM_PAGE)
#define IN_WORDS 16u   /* slot + 0: request tokens */
#define AUX_WORDS 4u   /* slot + 64: label ids */
#define AUX_OFF 64u
#define OUT_WORDS 4u   /* slot + 128: reply */
#define OUT_OFF 128u
#define MAX_BATCH 12u
#define WAIT_TIMEOUT_NS (2000ll * 1000 * 1000) /* a wake-up this late is lost */
#define HANG_GRACE_S 20
#define POISON 0xdeadbeefu
#define SESSION_STAMP 0x5b5bu                  /* the submitter's id */
#define ECHO_STAMP 0xec40u                     /* the echo's id, in cqe.pos */
#define STOP_BIT (1ull << 63)

enum role { SUB, ECHO, REAP, N_ROLES };
static const char *const role_names[N_ROLES] = { "submit", "echo", "reap" };

struct role_stats {
	uint64_t items, batches, sleeps, wakes, naps, ns;
};

/* Shared between the roles (MAP_SHARED anonymous: survives fork). */
struct ctl {
	uint32_t go, stop, abort, done;
	int fast;   /* no naps, long spins */
	int sleepy; /* no naps, no spins */
	int memfd;
	size_t map_len;
	struct role_stats st[N_ROLES];
	char msg[N_ROLES][256];
};

struct worker {
	struct ctl *ctl;
	void *mem; /* the mapping this role uses */
	struct shm_layout lay;
	enum role role;
	uint64_t rng;
};

/* ---- helpers ------------------------------------------------------------ */

static uint32_t mix(uint64_t seq, uint32_t i, uint32_t salt)
{
	uint64_t x = seq * 0x9e3779b97f4a7c15ull + i * 0xbf58476d1ce4e5b9ull + salt;

	x ^= x >> 31;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 29;
	return (uint32_t)x;
}

static uint32_t rnd(struct worker *w)
{
	w->rng ^= w->rng << 13;
	w->rng ^= w->rng >> 7;
	w->rng ^= w->rng << 17;
	return (uint32_t)(w->rng >> 11);
}

static int aborted(const struct worker *w)
{
	return shm_load_relaxed(&w->ctl->abort) != 0;
}

/* Record the first failure of this role, stop everyone, wake all sleepers. */
static hr_printf_fmt(2, 3) int fail(struct worker *w, const char *fmt, ...)
{
	struct shm_region_hdr *hdr = shm_region_hdr(w->mem);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->ctl->msg[w->role], sizeof(w->ctl->msg[0]), fmt, ap);
	va_end(ap);
	shm_store_release(&w->ctl->abort, 1);
	shm_waitq_shutdown(&hdr->daemon_wq);
	shm_waitq_shutdown(&hdr->client_wq);
	return -1;
}

/* Sometimes sleep, so the peers run dry and go to sleep on their futexes. */
static void maybe_nap(struct worker *w)
{
	uint32_t r = rnd(w);

	if (w->ctl->fast || w->ctl->sleepy || r % 64)
		return;
	struct timespec ts = { 0, (long)(r >> 8) % 2000 * 1000 }; /* < 2 ms */
	if (r % 4096 == 0)
		ts.tv_nsec = 20 * 1000 * 1000;
	w->ctl->st[w->role].naps++;
	nanosleep(&ts, NULL);
}

static uint64_t spin_ns(struct worker *w)
{
	static const uint64_t choices[] = { 0, 0, 1000, 20000 };

	if (w->ctl->sleepy)
		return 0;
	return w->ctl->fast ? 50000 : choices[rnd(w) % HR_ARRAY_SIZE(choices)];
}

/*
 * Wait for *word to leave old. A timeout after which the word HAS moved means
 * the waker published, saw nobody waiting or did not wake us, and we slept
 * through it for WAIT_TIMEOUT_NS: a lost wake-up. Returns 0 to go on, -1 to
 * stop (failure or abort).
 */
static int wait_for(struct worker *w, struct shm_waitq *wq, uint32_t bit, const uint32_t *word,
		    uint32_t old, const char *what)
{
	for (;;) {
		int r = shm_wait_index(wq, bit, word, old, spin_ns(w), WAIT_TIMEOUT_NS);

		if (r >= 0) {
			w->ctl->st[w->role].sleeps += (uint64_t)r;
			return 0;
		}
		if (aborted(w))
			return -1;
		if (r == -ETIMEDOUT) {
			if (shm_load_acquire(word) != old) /* pairs with the publish/advance release */
				return fail(w, "lost wake-up waiting for %s: index moved %u -> %u "
					    "but no wake in %lld ms", what, old,
					    shm_load_relaxed(word), WAIT_TIMEOUT_NS / 1000000);
			continue; /* the peer is just slow (napping) */
		}
		if (r == -EINTR)
			continue;
		return fail(w, "wait for %s: %s", what, strerror(-r));
	}
}

static void wake(struct worker *w, struct shm_waitq *wq, uint32_t bits)
{
	int r = shm_wake(wq, bits);

	if (r > 0)
		w->ctl->st[w->role].wakes++;
	else if (r < 0)
		fail(w, "wake: %s", strerror(-r));
}

static uint32_t *slot_words(struct worker *w, uint64_t seq, uint32_t off)
{
	char *arena = shm_region_arena(w->mem, &w->lay);

	return (uint32_t *)(arena + (seq % N_SLOTS) * SLOT_BYTES + off);
}

/* ---- the three roles ------------------------------------------------------ */

static int fill_request(struct worker *w, struct shm_sqe *s, uint64_t seq)
{
	uint32_t *in = slot_words(w, seq, 0), *aux = slot_words(w, seq, AUX_OFF);
	uint32_t *out = slot_words(w, seq, OUT_OFF);
	uint32_t want = seq < N_SLOTS ? 0 : POISON; /* fresh, or poisoned by the reaper */
	uint32_t base = (uint32_t)(seq % N_SLOTS) * SLOT_BYTES;

	for (uint32_t i = 0; i < IN_WORDS; i++)
		if (in[i] != want)
			return fail(w, "seq %" PRIu64 ": slot reused before the reply was reaped "
				    "(word %u = %#x)", seq, i, in[i]);
	for (uint32_t i = 0; i < OUT_WORDS; i++)
		if (out[i] != want)
			return fail(w, "seq %" PRIu64 ": out slot not poisoned (%#x)", seq, out[i]);
	for (uint32_t i = 0; i < IN_WORDS; i++)
		in[i] = mix(seq, i, SUB);
	for (uint32_t i = 0; i < AUX_WORDS; i++)
		aux[i] = (uint32_t)seq + i;
	*s = (struct shm_sqe){
		.op = SHM_OP_SCORE,
		.flags = seq & 1 ? SHM_SQE_F_LATENCY : 0,
		.session = SESSION_STAMP,
		.user_data = seq,
		.in_off = base, .in_len = IN_WORDS * 4,
		.aux_off = base + AUX_OFF, .aux_len = AUX_WORDS * 4,
		.out_off = base + OUT_OFF, .out_cap = OUT_WORDS * 4,
		.arg = { seq % 3 == 0 ? SHM_SCORE_F_LOGPROB : 0 },
	};
	return 0;
}

static int run_submit(struct worker *w)
{
	struct shm_region_hdr *hdr = shm_region_hdr(w->mem);
	struct role_stats *st = &w->ctl->st[SUB];
	struct shm_sq_prod sq;
	uint64_t seq = 0;
	int stopping = 0;

	if (shm_sq_prod_init(&sq, w->mem, &w->lay) < 0)
		return fail(w, "sq_prod_init");
	while (!aborted(w)) {
		uint32_t idx;
		int n;

		stopping = shm_load_relaxed(&w->ctl->stop) != 0;
		n = shm_sq_reserve(&sq, stopping ? 1 : 1 + rnd(w) % MAX_BATCH, &idx);
		if (n < 0)
			return fail(w, "sq reserve: %s", strerror(-n));
		if (n == 0) {
			if (wait_for(w, &hdr->client_wq, SHM_WAIT_F_SQ_SPACE, sq.r.head_p,
				     sq.r.head, "sq space") < 0)
				return -1;
			continue;
		}
		if (stopping) {
			*shm_sq_slot(&sq, idx) = (struct shm_sqe){ .op = SHM_OP_NOP,
								   .user_data = STOP_BIT | seq };
		} else {
			for (int i = 0; i < n; i++)
				if (fill_request(w, shm_sq_slot(&sq, idx + (uint32_t)i), seq++) < 0)
					return -1;
			st->items += (uint64_t)n;
		}
		shm_sq_publish(&sq);
		st->batches++;
		wake(w, &hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
		if (stopping)
			return 0;
		maybe_nap(w);
	}
	return -1;
}

/* Check one request (the private copy) and its arena slot; write the reply. */
static int echo_one(struct worker *w, const struct shm_sqe *s, uint64_t seq, struct shm_cqe *c)
{
	int r = shm_sqe_validate(s, w->lay.arena_size);

	if (r < 0)
		return fail(w, "seq %" PRIu64 ": validate: %s", seq, strerror(-r));
	if (s->op == SHM_OP_NOP) {
		if (s->user_data != (STOP_BIT | seq))
			return fail(w, "stop marker %#" PRIx64 ", expected seq %" PRIu64,
				    s->user_data, seq);
		*c = (struct shm_cqe){ .user_data = s->user_data, .pos = ECHO_STAMP };
		return 1;
	}
	if (s->user_data != seq || s->session != SESSION_STAMP || s->op != SHM_OP_SCORE)
		return fail(w, "request out of order or stamp wrong: user_data %" PRIu64
			    " session %#x op %u, expected seq %" PRIu64, s->user_data,
			    s->session, s->op, seq);

	const char *arena = shm_region_arena(w->mem, &w->lay);
	const uint32_t *in = (const uint32_t *)(arena + s->in_off);
	const uint32_t *aux = (const uint32_t *)(arena + s->aux_off);
	uint32_t *out = (uint32_t *)(arena + s->out_off);

	for (uint32_t i = 0; i < IN_WORDS; i++)
		if (in[i] != mix(seq, i, SUB))
			return fail(w, "seq %" PRIu64 ": request word %u = %#x", seq, i, in[i]);
	for (uint32_t i = 0; i < AUX_WORDS; i++)
		if (aux[i] != (uint32_t)seq + i)
			return fail(w, "seq %" PRIu64 ": label %u = %#x", seq, i, aux[i]);
	for (uint32_t i = 0; i < OUT_WORDS; i++)
		out[i] = mix(seq, i, ECHO);
	*c = (struct shm_cqe){
		.user_data = seq,
		.res = (int32_t)(seq & 0x7fffffff),
		.out_len = OUT_WORDS * 4,
		.pos = ECHO_STAMP,
	};
	return 0;
}

static int run_echo(struct worker *w)
{
	struct shm_region_hdr *hdr = shm_region_hdr(w->mem);
	struct role_stats *st = &w->ctl->st[ECHO];
	struct shm_sq_cons sq;
	struct shm_cq_prod cq;
	uint64_t seq = 0;

	if (shm_sq_cons_init(&sq, w->mem, &w->lay) < 0 || shm_cq_prod_init(&cq, w->mem, &w->lay) < 0)
		return fail(w, "ring init");
	while (!aborted(w)) {
		uint32_t idx;
		int n = shm_sq_peek(&sq, 1 + rnd(w) % MAX_BATCH, &idx), stop = 0;

		if (n < 0)
			return fail(w, "sq peek: %s", strerror(-n));
		if (n == 0) {
			if (wait_for(w, &hdr->daemon_wq, SHM_WAIT_F_SQ_DATA, sq.r.tail_p, sq.r.head,
				     "sq data") < 0)
				return -1;
			continue;
		}
		for (int i = 0; i < n && !stop; i++) {
			struct shm_sqe s;
			uint32_t ci;
			int r;

			shm_sq_copy(&sq, idx + (uint32_t)i, &s); /* one read; the slot is not looked at again */
			while ((r = shm_cq_reserve(&cq, 1, &ci)) == 0) {
				/* CQ full: hand over what is filled, then sleep. */
				shm_cq_publish(&cq);
				wake(w, &hdr->client_wq, SHM_WAIT_F_CQ_DATA);
				if (wait_for(w, &hdr->daemon_wq, SHM_WAIT_F_CQ_SPACE, cq.r.head_p,
					     cq.r.head, "cq space") < 0)
					return -1;
			}
			if (r < 0)
				return fail(w, "cq reserve: %s", strerror(-r));
			r = echo_one(w, &s, seq, shm_cq_slot(&cq, ci));
			if (r < 0)
				return -1;
			stop = r;
			seq += !stop;
		}
		shm_cq_publish(&cq);
		shm_sq_advance(&sq, (uint32_t)n);
		/* One barrier for both changes. */
		wake(w, &hdr->client_wq, SHM_WAIT_F_CQ_DATA | SHM_WAIT_F_SQ_SPACE);
		st->items = seq;
		st->batches++;
		if (stop)
			return 0;
		maybe_nap(w);
	}
	return -1;
}

static int reap_one(struct worker *w, const struct shm_cqe *c, uint64_t seq)
{
	if (c->user_data & STOP_BIT)
		return c->user_data == (STOP_BIT | seq) && c->res == 0 ? 1 :
			fail(w, "bad stop completion %#" PRIx64 " at seq %" PRIu64, c->user_data, seq);
	if (c->user_data != seq || c->res != (int32_t)(seq & 0x7fffffff) || c->flags ||
	    c->out_len != OUT_WORDS * 4 || c->pos != ECHO_STAMP || c->reserved)
		return fail(w, "completion out of order or stamp wrong: user_data %" PRIu64
			    " res %d pos %#x, expected seq %" PRIu64, c->user_data, c->res,
			    c->pos, seq);

	uint32_t *in = slot_words(w, seq, 0), *aux = slot_words(w, seq, AUX_OFF);
	uint32_t *out = slot_words(w, seq, OUT_OFF);

	for (uint32_t i = 0; i < OUT_WORDS; i++)
		if (out[i] != mix(seq, i, ECHO))
			return fail(w, "seq %" PRIu64 ": reply word %u = %#x", seq, i, out[i]);
	for (uint32_t i = 0; i < IN_WORDS; i++)
		if (in[i] != mix(seq, i, SUB))
			return fail(w, "seq %" PRIu64 ": request changed under us", seq);
	/* Poison: the submitter checks it before reusing the slot. */
	for (uint32_t i = 0; i < IN_WORDS; i++)
		in[i] = POISON;
	for (uint32_t i = 0; i < AUX_WORDS; i++)
		aux[i] = POISON;
	for (uint32_t i = 0; i < OUT_WORDS; i++)
		out[i] = POISON;
	return 0;
}

static int run_reap(struct worker *w)
{
	struct shm_region_hdr *hdr = shm_region_hdr(w->mem);
	struct role_stats *st = &w->ctl->st[REAP];
	struct shm_cq_cons cq;
	uint64_t seq = 0;

	if (shm_cq_cons_init(&cq, w->mem, &w->lay) < 0)
		return fail(w, "cq_cons_init");
	while (!aborted(w)) {
		uint32_t idx;
		int n = shm_cq_peek(&cq, 1 + rnd(w) % MAX_BATCH, &idx), stop = 0;

		if (n < 0)
			return fail(w, "cq peek: %s", strerror(-n));
		if (n == 0) {
			if (wait_for(w, &hdr->client_wq, SHM_WAIT_F_CQ_DATA, cq.r.tail_p, cq.r.head,
				     "cq data") < 0)
				return -1;
			continue;
		}
		for (int i = 0; i < n && !stop; i++) {
			int r = reap_one(w, shm_cq_entry(&cq, idx + (uint32_t)i), seq);

			if (r < 0)
				return -1;
			stop = r;
			seq += !stop;
		}
		shm_cq_advance(&cq, (uint32_t)n);
		wake(w, &hdr->daemon_wq, SHM_WAIT_F_CQ_SPACE);
		st->items = seq;
		st->batches++;
		if (stop)
			return 0;
		maybe_nap(w);
	}
	return -1;
}

static int (*const role_fns[N_ROLES])(struct worker *) = { run_submit, run_echo, run_reap };

static int run_role(struct worker *w)
{
	uint64_t t0;
	int r;

	while (!shm_load_acquire(&w->ctl->go)) /* pairs with the release in main */
		usleep(100);
	t0 = hr_now_ns();
	r = role_fns[w->role](w);
	w->ctl->st[w->role].ns = hr_now_ns() - t0;
	shm_fetch_add_acq_rel(&w->ctl->done, 1);
	return r;
}

/* ---- process and thread harness ------------------------------------------ */

/* Client roles check the region the way a client does. In process mode they
 * also map the memfd themselves, at another address, so nothing may depend on
 * where the daemon mapped it. (Threads share the one mapping: ThreadSanitizer
 * tracks memory by address and would not relate two mappings of one page.) */
static int attach_client(struct worker *w, int remap)
{
	int r;

	if (remap) {
		void *mem = mmap(NULL, w->ctl->map_len, PROT_READ | PROT_WRITE, MAP_SHARED,
				 w->ctl->memfd, 0);

		if (mem == MAP_FAILED)
			return fail(w, "client mmap: %s", strerror(errno));
		w->mem = mem;
	}
	r = shm_region_attach_check(w->mem, w->ctl->map_len, &w->lay);
	return r < 0 ? fail(w, "attach_check: %s", strerror(-r)) : 0;
}

static void *thread_main(void *arg)
{
	struct worker *w = arg;

	if (w->role != ECHO && attach_client(w, 0) < 0)
		shm_fetch_add_acq_rel(&w->ctl->done, 1);
	else
		run_role(w);
	return NULL;
}

static void print_stats(const struct ctl *ctl, double secs)
{
	for (int i = 0; i < N_ROLES; i++) {
		const struct role_stats *s = &ctl->st[i];

		printf("  %-6s items %10" PRIu64 "  batches %9" PRIu64 " (%.1f/batch)  sleeps %7"
		       PRIu64 "  wakes %7" PRIu64 "  naps %6" PRIu64 "\n", role_names[i], s->items,
		       s->batches, s->batches ? (double)s->items / (double)s->batches : 0.0,
		       s->sleeps, s->wakes, s->naps);
	}
	printf("  round trips: %" PRIu64 " in %.2f s = %.2f M/s\n", ctl->st[REAP].items, secs,
	       (double)ctl->st[REAP].items / secs / 1e6);
}

static int usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [--procs|--threads] [--fast|--sleepy] [--seconds S] [S]\n",
		argv0);
	return 2;
}

int main(int argc, char **argv)
{
	int threads = UNDER_TSAN, fast = 0, sleepy = 0, failed = 0;
	double seconds = 2.0;
	struct shm_layout lay;
	struct worker w[N_ROLES];
	pid_t pids[N_ROLES] = {0};
	pthread_t tids[N_ROLES];
	struct ctl *ctl;
	void *mem;
	int fd;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads"))
			threads = 1;
		else if (!strcmp(argv[i], "--procs"))
			threads = 0;
		else if (!strcmp(argv[i], "--fast"))
			fast = 1;
		else if (!strcmp(argv[i], "--sleepy"))
			sleepy = 1;
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (argv[i][0] != '-' && atof(argv[i]) > 0)
			seconds = atof(argv[i]);
		else
			return usage(argv[0]);
	}
	if (seconds <= 0 || (fast && sleepy))
		return usage(argv[0]);

	/* The daemon's side: layout, a sealed memfd, init. */
	if (shm_layout_compute(SQ_ENTRIES, CQ_ENTRIES, ARENA_BYTES, &lay) < 0)
		return 1;
	fd = memfd_create("hearth-ring-stress", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, (off_t)lay.total_size) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		fprintf(stderr, "memfd: %s\n", strerror(errno));
		return 1;
	}
	mem = mmap(NULL, lay.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ctl = mmap(NULL, sizeof(*ctl), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || ctl == MAP_FAILED || shm_region_init(mem, lay.total_size, &lay) < 0) {
		fprintf(stderr, "region setup failed\n");
		return 1;
	}
	memset(ctl, 0, sizeof(*ctl));
	ctl->fast = fast;
	ctl->sleepy = sleepy;
	ctl->memfd = fd;
	ctl->map_len = lay.total_size;

	printf("ring stress: %s, %.1f s, sq %u cq %u, %s%s\n", threads ? "threads" : "processes",
	       seconds, SQ_ENTRIES, CQ_ENTRIES,
	       fast ? "fast (no naps)" : sleepy ? "sleepy (no naps, no spins)" : "with naps",
	       UNDER_TSAN ? ", under TSan" : "");
	fflush(stdout);
	for (int i = 0; i < N_ROLES; i++) {
		w[i] = (struct worker){ .ctl = ctl, .mem = mem, .lay = lay, .role = (enum role)i,
					.rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) ^ hr_now_ns() };
		if (threads) {
			if (pthread_create(&tids[i], NULL, thread_main, &w[i]) != 0)
				return 1;
			continue;
		}
		pids[i] = fork();
		if (pids[i] < 0)
			return 1;
		if (pids[i] == 0) {
			if (i != ECHO && attach_client(&w[i], 1) < 0) {
				shm_fetch_add_acq_rel(&ctl->done, 1);
				_exit(1);
			}
			_exit(run_role(&w[i]) < 0 ? 1 : 0);
		}
	}

	uint64_t t0 = hr_now_ns(), deadline;
	shm_store_release(&ctl->go, 1); /* pairs with the acquire in run_role() */
	while (hr_now_ns() - t0 < (uint64_t)(seconds * 1e9) && !shm_load_relaxed(&ctl->abort))
		usleep(10000);
	shm_store_relaxed(&ctl->stop, 1);

	/* Everyone must finish; a lost wake-up that no timeout caught hangs here. */
	deadline = hr_now_ns() + HANG_GRACE_S * 1000000000ull;
	while (shm_load_acquire(&ctl->done) < N_ROLES && hr_now_ns() < deadline)
		usleep(10000); /* acquire: pairs with the done increments (stats) */
	if (shm_load_acquire(&ctl->done) < N_ROLES) {
		printf("FAIL: hang: %u of %d roles finished %d s after stop (lost wake-up?)\n",
		       ctl->done, N_ROLES, HANG_GRACE_S);
		print_stats(ctl, seconds);
		fflush(stdout);
		for (int i = 0; i < N_ROLES; i++)
			if (pids[i] > 0)
				kill(pids[i], SIGKILL);
		_exit(1);
	}
	for (int i = 0; i < N_ROLES; i++) {
		if (threads) {
			pthread_join(tids[i], NULL);
		} else {
			int status;

			if (waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status) ||
			    WEXITSTATUS(status) != 0)
				failed = 1;
		}
	}
	double secs = (double)(hr_now_ns() - t0) / 1e9;

	for (int i = 0; i < N_ROLES; i++)
		if (ctl->msg[i][0]) {
			printf("FAIL: %s: %s\n", role_names[i], ctl->msg[i]);
			failed = 1;
		}
	if (ctl->abort)
		failed = 1;
	print_stats(ctl, (double)ctl->st[REAP].ns / 1e9);
	if (ctl->st[SUB].items == 0 || ctl->st[SUB].items != ctl->st[ECHO].items ||
	    ctl->st[ECHO].items != ctl->st[REAP].items) {
		printf("FAIL: counts differ or no progress\n");
		failed = 1;
	}
	/* With naps the futex path must have been taken, or this tested nothing. */
	if (!fast && !failed) {
		uint64_t sleeps = 0, wakes = 0;

		for (int i = 0; i < N_ROLES; i++) {
			sleeps += ctl->st[i].sleeps;
			wakes += ctl->st[i].wakes;
		}
		if (!sleeps || !wakes) {
			printf("FAIL: no futex sleep/wake happened (sleeps %" PRIu64 ", wakes %" PRIu64
			       ")\n", sleeps, wakes);
			failed = 1;
		}
	}
	printf("%s (%.2f s wall)\n", failed ? "FAIL" : "ok", secs);
	return failed;
}

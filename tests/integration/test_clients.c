/* SPDX-License-Identifier: MIT */
/*
 * Several client processes at once through libhearth, each with a named and
 * an anonymous session: APPEND and SCORE through the synchronous API and
 * through the asynchronous one (arena buffers, batched submissions), every
 * score compared with the engine run in-process on the same token history;
 * GENERATE streaming (synchronous with a callback, and asynchronous for more
 * tokens than the completion ring holds) equal to the engine's greedy tokens;
 * a hypothetical event scored and rolled back with TRUNCATE; named sessions
 * reopened by other connections with their tokens, shared by two live
 * connections, destroyed; a fixed-time phase where every process stamps its
 * requests and checks it gets exactly its own back (DPDK style); the control
 * socket's stats moving as they must.
 *
 * Usage: test_integ_clients HEARTHD MODEL_DIR [HEARTHCTL]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#ifndef TH_WITH_LIBHEARTH
int main(void)
{
	printf("libhearth is not part of this build (no libhearth_dep): skipped\n");
	return 77;
}
#else

#include "hearth/hearth.h"
#include "ref.h"

#define N_PROC 4
#define K 12u            /* events per session */
#define EV 3u            /* tokens per event */
#define PFX 8u           /* prefix tokens */
#define NL 5u            /* labels */
#define GEN_SHORT 24u
#define GEN_LONG 300u    /* more than the default CQ (128 entries) holds */
#define L_NAMED (PFX + K * EV)

static const int32_t labels[NL] = { 17, 99, 200, 333, 480 };

struct script {
	int32_t prefix[PFX], prefix2[PFX], ev[K][EV], hyp[EV], gprompt[4], lprompt[6];
	float named[K][NL];      /* after prefix + ev[0..k] */
	float anon[K][NL];       /* after prefix2 + ev[K-1..K-1-k] */
	float hypo[NL];          /* named + hyp */
	float trunc[NL];         /* named after rolling hyp back (recomputed) */
	int32_t gen[GEN_SHORT];  /* anon + gprompt, greedy */
	uint32_t n_gen;
	int32_t lgen[GEN_LONG];  /* fresh + lprompt, greedy */
	uint32_t n_lgen;
};
static struct script sc[N_PROC];

struct shared {
	_Atomic uint32_t ready, go;
	_Atomic uint64_t stamped; /* NOPs the stamp phase sent, all clients */
};
static struct shared *sh;
static const char *sock;

static void make_scripts(struct ref *r)
{
	for (int p = 0; p < N_PROC; p++) {
		struct script *s = &sc[p];
		uint64_t st = 1000 + (uint64_t)p * 77;
		struct engine_seq *q;

		for (uint32_t i = 0; i < PFX; i++) {
			s->prefix[i] = (int32_t)(th_rand(&st) % 512);
			s->prefix2[i] = (int32_t)(th_rand(&st) % 512);
		}
		for (uint32_t k = 0; k < K; k++)
			for (uint32_t i = 0; i < EV; i++)
				s->ev[k][i] = (int32_t)(th_rand(&st) % 512);
		for (uint32_t i = 0; i < EV; i++)
			s->hyp[i] = (int32_t)(th_rand(&st) % 512);
		for (uint32_t i = 0; i < 4; i++)
			s->gprompt[i] = (int32_t)(th_rand(&st) % 512);
		for (uint32_t i = 0; i < 6; i++)
			s->lprompt[i] = (int32_t)(th_rand(&st) % 512);

		q = ref_seq(r);
		ref_append(r, q, s->prefix, PFX);
		for (uint32_t k = 0; k < K; k++) {
			ref_append(r, q, s->ev[k], EV);
			ref_probs(r, q, labels, NL, s->named[k]);
		}
		ref_append(r, q, s->hyp, EV);
		ref_probs(r, q, labels, NL, s->hypo);
		REQUIRE(engine_truncate(r->e, q, L_NAMED) == 0, "truncate");
		ref_probs(r, q, labels, NL, s->trunc);
		engine_seq_free(r->e, q);

		q = ref_seq(r);
		ref_append(r, q, s->prefix2, PFX);
		for (uint32_t k = 0; k < K; k++) {
			ref_append(r, q, s->ev[K - 1 - k], EV);
			ref_probs(r, q, labels, NL, s->anon[k]);
		}
		ref_append(r, q, s->gprompt, 4);
		s->n_gen = ref_generate(r, q, GEN_SHORT, s->gen);
		engine_seq_free(r->e, q);

		q = ref_seq(r);
		ref_append(r, q, s->lprompt, 6);
		s->n_lgen = ref_generate(r, q, GEN_LONG, s->lgen);
		engine_seq_free(r->e, q);
	}
}

/* ---- one client process ----------------------------------------------------------- */

struct cb_ctx {
	int32_t tok[GEN_SHORT + 1];
	uint32_t n;
};

static int on_token(void *ud, int32_t token)
{
	struct cb_ctx *c = ud;

	if (c->n <= GEN_SHORT)
		c->tok[c->n] = token;
	c->n++;
	return 0;
}

static void sync_named(struct hearth *h, const struct script *s, uint32_t named, int p)
{
	float probs[NL];
	char what[96];
	int r = hearth_append(h, named, s->prefix, PFX);

	CHECK(r == (int)PFX, "client %d: append prefix: %d (%s)", p, r, hearth_strerror(r));
	for (uint32_t k = 0; k < K; k++) {
		r = hearth_score(h, named, s->ev[k], EV, labels, NL, probs);
		snprintf(what, sizeof(what), "client %d: sync score %u (named)", p, k);
		if (CHECK(r == (int)NL, "%s: %d (%s)", what, r, hearth_strerror(r)))
			th_close(probs, s->named[k], NL, what);
	}
}

static void async_anon(struct hearth *h, const struct script *s, uint32_t anon, int p)
{
	int32_t *pfx = hearth_arena_alloc(h, PFX * 4), *lab = hearth_arena_alloc(h, NL * 4);
	int32_t *tok[K], *ovl;
	float *out[K], *logp;
	struct hearth_sqe *sqe;
	struct hearth_cqe *cqe;
	char what[96];
	int r;

	REQUIRE(pfx && lab, "arena");
	memcpy(pfx, s->prefix2, sizeof(s->prefix2));
	memcpy(lab, labels, sizeof(labels));
	sqe = hearth_get_sqe(h);
	REQUIRE(sqe, "sqe");
	hearth_prep_append(h, sqe, anon, pfx, PFX);
	sqe->user_data = 1000;
	for (uint32_t k = 0; k < K; k++) {
		tok[k] = hearth_arena_alloc(h, EV * 4);
		out[k] = hearth_arena_alloc(h, NL * 4);
		REQUIRE(tok[k] && out[k], "arena");
		memcpy(tok[k], s->ev[K - 1 - k], EV * 4);
		sqe = hearth_get_sqe(h);
		REQUIRE(sqe, "sqe %u", k);
		hearth_prep_score(h, sqe, anon, tok[k], EV, lab, NL, out[k]);
		sqe->user_data = 2000 + k;
	}
	/* Log-probabilities of the last position again, no tokens. */
	logp = hearth_arena_alloc(h, NL * 4);
	sqe = hearth_get_sqe(h);
	REQUIRE(logp && sqe, "arena/sqe");
	hearth_prep_score(h, sqe, anon, NULL, 0, lab, NL, logp);
	sqe->arg[0] = HEARTH_SCORE_F_LOGPROB;
	sqe->user_data = 2999;
	/* Output over the labels themselves: "the daemon reads in/aux before it
	 * writes out; ranges may overlap". */
	ovl = hearth_arena_alloc(h, NL * 4);
	sqe = hearth_get_sqe(h);
	REQUIRE(ovl && sqe, "arena/sqe");
	memcpy(ovl, labels, sizeof(labels));
	hearth_prep_score(h, sqe, anon, NULL, 0, ovl, NL, (float *)ovl);
	sqe->user_data = 3999;
	r = hearth_submit(h);
	CHECK(r == (int)K + 3, "client %d: submit published %d, want %u", p, r, K + 3);
	for (uint32_t i = 0; i < K + 3; i++) {
		uint64_t want_ud = i == 0 ? 1000 : i <= K ? 2000 + i - 1 : i == K + 1 ? 2999 : 3999;

		r = hearth_wait_cqe(h, &cqe, 10000000000ll);
		if (!CHECK(r == 0, "client %d: async completion %u: %s", p, i, hearth_strerror(r)))
			return;
		CHECK(cqe->user_data == want_ud && !(cqe->flags & HEARTH_CQE_F_MORE),
		      "client %d: completion %u for %llu, want %llu (one session: in order)", p, i,
		      (unsigned long long)cqe->user_data, (unsigned long long)want_ud);
		if (want_ud == 1000) {
			CHECK(cqe->res == (int)PFX && cqe->pos == PFX, "client %d: async append res %d pos %u",
			      p, cqe->res, cqe->pos);
		} else if (want_ud == 3999) {
			snprintf(what, sizeof(what), "client %d: async score with out over its labels", p);
			if (CHECK(cqe->res == (int)NL, "%s: res %d", what, cqe->res))
				th_close((const float *)ovl, s->anon[K - 1], NL, what);
		} else if (want_ud == 2999) {
			float e[NL];
			for (uint32_t j = 0; j < NL; j++)
				e[j] = expf(logp[j]);
			snprintf(what, sizeof(what), "client %d: async LOGPROB score", p);
			if (CHECK(cqe->res == (int)NL, "%s: res %d", what, cqe->res))
				th_close(e, s->anon[K - 1], NL, what);
		} else {
			uint32_t k = (uint32_t)(want_ud - 2000);
			snprintf(what, sizeof(what), "client %d: async score %u (anonymous)", p, k);
			if (CHECK(cqe->res == (int)NL && cqe->out_len == NL * 4 &&
					  cqe->pos == PFX + EV * (k + 1),
				  "%s: res %d out_len %u pos %u", what, cqe->res, cqe->out_len, cqe->pos))
				th_close(out[k], s->anon[k], NL, what);
		}
		hearth_cqe_seen(h, cqe);
	}
	hearth_arena_reset(h);
}

static void hypothetical(struct hearth *h, const struct script *s, uint32_t named, int p)
{
	float probs[NL];
	char what[96];
	int r = hearth_score(h, named, s->hyp, EV, labels, NL, probs);

	snprintf(what, sizeof(what), "client %d: hypothetical event", p);
	if (CHECK(r == (int)NL, "%s: %d", what, r))
		th_close(probs, s->hypo, NL, what);
	r = hearth_truncate(h, named, L_NAMED);
	CHECK(r == (int)L_NAMED, "client %d: truncate: %d, want %u", p, r, L_NAMED);
	r = hearth_score(h, named, NULL, 0, labels, NL, probs);
	snprintf(what, sizeof(what), "client %d: score after rolling back = score before it", p);
	if (CHECK(r == (int)NL, "%s: %d", what, r)) {
		th_close(probs, s->named[K - 1], NL, what);
		snprintf(what, sizeof(what), "client %d: score after rolling back (engine)", p);
		th_close(probs, s->trunc, NL, what);
	}
}

static void gen_short(struct hearth *h, const struct script *s, uint32_t anon, int p)
{
	struct cb_ctx cb = { 0 };
	int32_t out[GEN_SHORT];
	int r = hearth_generate(h, anon, s->gprompt, 4, GEN_SHORT, out, on_token, &cb);

	if (!CHECK(r == (int)s->n_gen, "client %d: generate: %d tokens, want %u", p, r, s->n_gen))
		return;
	CHECK(cb.n == s->n_gen, "client %d: the callback saw %u tokens of %u", p, cb.n, s->n_gen);
	CHECK(memcmp(out, s->gen, s->n_gen * 4) == 0, "client %d: generated tokens differ from the engine's", p);
	CHECK(memcmp(cb.tok, s->gen, (cb.n < s->n_gen ? cb.n : s->n_gen) * 4) == 0,
	      "client %d: streamed tokens differ from the engine's", p);
}

/* Asynchronous GENERATE of more tokens than the CQ has entries, read as the
 * completions come (bounded waits: a stall is a failure, not a hang). */
static void gen_long(struct hearth *h, const struct script *s, int p)
{
	int64_t sess = hearth_session_open(h, NULL, 0, NULL);
	int32_t *pr = hearth_arena_alloc(h, 6 * 4), *out = hearth_arena_alloc(h, GEN_LONG * 4);
	struct hearth_sqe *sqe = hearth_get_sqe(h);
	struct hearth_cqe *cqe;
	uint32_t got = 0;
	bool busy_checked = false;

	REQUIRE(sess > 0 && pr && out && sqe, "long generate setup");
	memcpy(pr, s->lprompt, sizeof(s->lprompt));
	hearth_prep_generate(h, sqe, (uint32_t)sess, pr, 6, GEN_LONG, out);
	sqe->user_data = 3000;
	/* In the same batch: a TRUNCATE of the session being generated into. It
	 * waits behind the GENERATE (requests of a session run in order), then
	 * rolls the session back to 0 tokens. */
	sqe = hearth_get_sqe(h);
	REQUIRE(sqe, "sqe");
	hearth_prep_truncate(h, sqe, (uint32_t)sess, 0);
	sqe->user_data = 3001;
	CHECK(hearth_submit(h) == 2, "submit");
	for (bool gen_done = false, trunc_done = false; !gen_done || !trunc_done;) {
		int r = hearth_wait_cqe(h, &cqe, 10000000000ll);

		if (!CHECK(r == 0, "client %d: long GENERATE (%u tokens, CQ of %u): no completion for "
				   "10 s after %u tokens: %s",
			   p, GEN_LONG, 128, got, hearth_strerror(r)))
			break;
		if (cqe->user_data == 3001) {
			CHECK(gen_done && cqe->res == 0 && cqe->pos == 0 &&
				      !(cqe->flags & HEARTH_CQE_F_MORE),
			      "client %d: TRUNCATE behind a GENERATE: res %d pos %u (generate done: %d), "
			      "want 0 after it", p, cqe->res, cqe->pos, gen_done);
			trunc_done = true;
			hearth_cqe_seen(h, cqe);
			continue;
		}
		if (!CHECK(cqe->user_data == 3000, "client %d: completion for %llu", p,
			   (unsigned long long)cqe->user_data)) {
			hearth_cqe_seen(h, cqe);
			continue;
		}
		if (got == 1 && !busy_checked) {
			/* Streaming, and stalled on our CQ until we read on (GEN_LONG
			 * exceeds it): closing the session must wait. */
			int r2 = hearth_session_close(h, (uint32_t)sess, 0);
			CHECK(r2 == -EBUSY, "client %d: close during a GENERATE: %d, want -EBUSY", p, r2);
			busy_checked = true;
		}
		if (cqe->flags & HEARTH_CQE_F_MORE) {
			CHECK(cqe->res == 1 && cqe->out_len == 4 * (got + 1), "client %d: stream %u: res %d out_len %u",
			      p, got, cqe->res, cqe->out_len);
			if (got < s->n_lgen)
				CHECK(out[got] == s->lgen[got], "client %d: long generate token %u is %d, want %d", p,
				      got, out[got], s->lgen[got]);
			got++;
			hearth_cqe_seen(h, cqe);
			continue;
		}
		CHECK(cqe->res == (int)s->n_lgen && got == s->n_lgen,
		      "client %d: long generate: final res %d after %u streamed, want %u", p, cqe->res, got,
		      s->n_lgen);
		hearth_cqe_seen(h, cqe);
		gen_done = true;
	}
	hearth_arena_reset(h);
	if (got == s->n_lgen) {
		int32_t t = 1;
		CHECK(hearth_session_close(h, (uint32_t)sess, 0) == 0, "close long session");
		int r = hearth_append(h, (uint32_t)sess, &t, 1);
		CHECK(r == -EBADF, "client %d: a closed session's handle still works (%d)", p, r);
	}
}

/* DPDK-style: for a fixed time, every client stamps its requests with its id
 * and a sequence number and checks that exactly its own come back, in order,
 * while the others do the same. */
static void stamp(struct hearth *h, int p)
{
	uint64_t seq = 0, next = 0, end = th_now_ns() + 300000000ull;

	while (th_now_ns() < end && th_failures == 0) {
		struct hearth_cqe *cqe;
		int n = 0;

		for (; n < 8; n++) {
			struct hearth_sqe *q = hearth_get_sqe(h);
			if (!q)
				break;
			hearth_prep_nop(h, q);
			q->user_data = ((uint64_t)(p + 1) << 48) | seq++;
		}
		CHECK(hearth_submit(h) == n, "stamp: submit");
		for (int i = 0; i < n; i++) {
			int r = hearth_wait_cqe(h, &cqe, 10000000000ll);
			if (!CHECK(r == 0, "client %d: stamp: no completion: %s", p, hearth_strerror(r)))
				return;
			CHECK(cqe->user_data == (((uint64_t)(p + 1) << 48) | next) && cqe->res == 0,
			      "client %d: stamp: completion %llx res %d, want %llx", p,
			      (unsigned long long)cqe->user_data, cqe->res,
			      (unsigned long long)(((uint64_t)(p + 1) << 48) | next));
			next++;
			hearth_cqe_seen(h, cqe);
		}
	}
	atomic_fetch_add(&sh->stamped, seq);
}

static void client(int p)
{
	const struct script *s = &sc[p];
	char name[32], sname[32];
	struct hearth *h;
	uint32_t len = 99;
	int64_t named, anon;
	uint64_t deadline;

	th_child_init(60);
	snprintf(name, sizeof(name), "client-%d", p);
	snprintf(sname, sizeof(sname), "acct:%d", p);
	h = hearth_connect(&(struct hearth_opts){ .socket_path = sock, .client_name = name });
	REQUIRE(h, "client %d: connect: %s", p, strerror(errno));
	CHECK(hearth_model(h) && hearth_model(h)->vocab_size == 512, "model info");
	named = hearth_session_open(h, sname, HEARTH_OPEN_CREATE, &len);
	CHECK(named > 0 && len == 0, "client %d: open %s: %lld len %u", p, sname, (long long)named, len);
	anon = hearth_session_open(h, NULL, 0, &len);
	CHECK(anon > 0 && len == 0, "client %d: open anonymous: %lld", p, (long long)anon);
	CHECK(hearth_session_open(h, "acct:absent", 0, NULL) == -ENOENT, "absent name without CREATE");
	atomic_fetch_add(&sh->ready, 1);
	deadline = th_now_ns() + 20000000000ull;
	while (!atomic_load(&sh->go) && th_now_ns() < deadline)
		th_sleep_ms(1);
	if (named > 0 && anon > 0) {
		sync_named(h, s, (uint32_t)named, p);
		async_anon(h, s, (uint32_t)anon, p);
		hypothetical(h, s, (uint32_t)named, p);
		gen_short(h, s, (uint32_t)anon, p);
		CHECK(hearth_nop(h) == 0, "nop");
		stamp(h, p);
		gen_long(h, s, p); /* last: after a stall this connection is unusable */
	}
	hearth_close(h);
	_exit(th_failures ? 1 : 0);
}

/* ---- the parent ------------------------------------------------------------------------ */

/* Returns true when every client process passed. */
static bool wait_children(pid_t *pids)
{
	bool ok = true;

	uint64_t deadline = th_now_ns() + 70000000000ull;

	for (int p = 0; p < N_PROC; p++) {
		int st = 0;
		pid_t r;

		while ((r = waitpid(pids[p], &st, WNOHANG)) == 0 && th_now_ns() < deadline)
			th_sleep_ms(5);
		if (r == 0) {
			kill(pids[p], SIGKILL);
			waitpid(pids[p], &st, 0);
		}
		ok &= CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client process %d failed (status 0x%x)",
			    p, st);
	}
	return ok;
}

static void reopen_and_share(struct ref *r, struct th_daemon *d)
{
	struct hearth *h1 = hearth_connect(&(struct hearth_opts){ .socket_path = sock, .client_name = "reopen-1" });
	struct hearth *h2 = hearth_connect(&(struct hearth_opts){ .socket_path = sock, .client_name = "reopen-2" });
	struct th_session_info si[16];
	struct th_stats st;
	uint32_t len = 0;
	int64_t a, b1, b2;
	float probs[NL], want[NL];
	int32_t t1 = 5, t2 = 6;
	int n, rr;

	REQUIRE(h1 && h2, "connect: %s", strerror(errno));
	/* A second connection finds acct:0 as the first left it. */
	a = hearth_session_open(h1, "acct:0", 0, &len);
	CHECK(a > 0 && len == L_NAMED, "reopen acct:0: %lld, %u tokens, want %u", (long long)a, len, L_NAMED);
	rr = hearth_score(h1, (uint32_t)a, NULL, 0, labels, NL, probs);
	if (CHECK(rr == (int)NL, "score reopened acct:0: %d", rr))
		th_close(probs, sc[0].named[K - 1], NL, "reopened named session's score");

	/* Two live connections share acct:1. */
	b1 = hearth_session_open(h1, "acct:1", 0, NULL);
	b2 = hearth_session_open(h2, "acct:1", 0, NULL);
	CHECK(b1 > 0 && b2 > 0, "open acct:1 twice: %lld %lld", (long long)b1, (long long)b2);
	CHECK(hearth_append(h1, (uint32_t)b1, &t1, 1) == (int)L_NAMED + 1, "append via connection 1");
	CHECK(hearth_append(h2, (uint32_t)b2, &t2, 1) == (int)L_NAMED + 2, "append via connection 2");
	{
		struct engine_seq *q = ref_seq(r);
		ref_append(r, q, sc[1].prefix, PFX);
		for (uint32_t k = 0; k < K; k++)
			ref_append(r, q, sc[1].ev[k], EV);
		ref_append(r, q, &t1, 1);
		ref_append(r, q, &t2, 1);
		ref_probs(r, q, labels, NL, want);
		engine_seq_free(r->e, q);
	}
	rr = hearth_score(h1, (uint32_t)b1, NULL, 0, labels, NL, probs);
	if (CHECK(rr == (int)NL, "score shared acct:1: %d", rr))
		th_close(probs, want, NL, "shared named session: both connections' tokens");
	n = th_sessions(d->sock, si, 16);
	for (int i = 0; i < n && i < 16; i++)
		if (strcmp(si[i].name, "acct:1") == 0)
			CHECK(si[i].attached == 2 && si[i].n_tokens == L_NAMED + 2,
			      "acct:1: attached %u tokens %u", si[i].attached, si[i].n_tokens);
	CHECK(hearth_session_close(h1, (uint32_t)b1, 1) == -EBUSY,
	      "destroying a named session another connection holds must fail with EBUSY");
	CHECK(hearth_session_close(h2, (uint32_t)b2, 0) == 0, "close on connection 2");
	REQUIRE(th_stats(d->sock, &st) == 0, "stats");
	CHECK(hearth_session_close(h1, (uint32_t)b1, 1) == 0, "destroy acct:1");
	{
		struct th_stats st2;
		REQUIRE(th_stats(d->sock, &st2) == 0, "stats");
		CHECK(st2.sessions == st.sessions - 1 && st2.kv_free == st.kv_free + (L_NAMED + 2 + 15) / 16,
		      "destroying acct:1: sessions %u -> %u, KV free %u -> %u", st.sessions, st2.sessions,
		      st.kv_free, st2.kv_free);
	}
	CHECK(hearth_session_open(h2, "acct:1", 0, NULL) == -ENOENT, "acct:1 is gone");

	/* Requests of a session run in order, whichever connection sends them:
	 * an APPEND from another connection waits behind a GENERATE streaming
	 * into a shared named session (stalled here: h1 stops reading), one
	 * with a deadline that passes meanwhile ends with -ETIMEDOUT, and a
	 * CANCEL ends a queued one. */
	{
		int64_t g1 = hearth_session_open(h1, "acct:2", 0, NULL);
		int64_t g2 = hearth_session_open(h2, "acct:2", 0, NULL);
		int32_t *o = hearth_arena_alloc(h1, 200 * 4), t = 9;
		int32_t *in2 = hearth_arena_alloc(h2, 4);
		struct hearth_sqe *q = hearth_get_sqe(h1);
		struct hearth_cqe *c;
		uint32_t seen = 0, len0 = 0, gen_n = 0;
		bool fin = false;

		REQUIRE(g1 > 0 && g2 > 0 && o && q && in2, "acct:2 setup");
		*in2 = t;
		hearth_session_open(h1, "acct:2", 0, &len0);
		hearth_prep_generate(h1, q, (uint32_t)g1, NULL, 0, 200, o);
		q->user_data = 4000;
		CHECK(hearth_submit(h1) == 1, "submit");
		CHECK(hearth_wait_cqe(h1, &c, 10000000000ll) == 0, "first token");
		/* h1 stops reading: 200 tokens > its CQ, the GENERATE stays in flight. */
		q = hearth_get_sqe(h2);
		hearth_prep_append(h2, q, (uint32_t)g2, in2, 1);
		q->user_data = 4101;
		q = hearth_get_sqe(h2);
		hearth_prep_append(h2, q, (uint32_t)g2, in2, 1);
		q->user_data = 4102;
		q->deadline_ns = th_now_ns() + 30000000ull;
		q = hearth_get_sqe(h2);
		hearth_prep_append(h2, q, (uint32_t)g2, in2, 1);
		q->user_data = 4103;
		CHECK(hearth_submit(h2) == 3, "submit on h2");
		rr = hearth_wait_cqe(h2, &c, 150000000ll);
		CHECK(rr == 0 && c->user_data == 4102 && c->res == -ETIMEDOUT,
		      "queued APPEND with a 30 ms deadline behind a stalled GENERATE: %d, %llu res %d, want -ETIMEDOUT",
		      rr, rr == 0 ? (unsigned long long)c->user_data : 0ull, rr == 0 ? c->res : 0);
		if (rr == 0)
			hearth_cqe_seen(h2, c);
		q = hearth_get_sqe(h2);
		hearth_prep_cancel(h2, q, 4103);
		q->user_data = 4104;
		CHECK(hearth_submit(h2) == 1, "submit cancel");
		for (int k = 0; k < 2; k++) {
			rr = hearth_wait_cqe(h2, &c, 1000000000ll);
			if (!CHECK(rr == 0, "cancel: completion %d: %d", k, rr))
				break;
			CHECK((c->user_data == 4104 && c->res == 0) || (c->user_data == 4103 && c->res == -ECANCELED),
			      "cancel of a queued APPEND: user_data %llu res %d", (unsigned long long)c->user_data, c->res);
			hearth_cqe_seen(h2, c);
		}
		rr = hearth_wait_cqe(h2, &c, 50000000ll);
		CHECK(rr == -ETIMEDOUT, "the APPEND behind the stalled GENERATE completed early: %d", rr);
		while (!fin && hearth_wait_cqe(h1, &c, 10000000000ll) == 0) {
			fin = !(c->flags & HEARTH_CQE_F_MORE);
			gen_n = fin && c->res > 0 ? (uint32_t)c->res : gen_n;
			seen++;
			hearth_cqe_seen(h1, c);
		}
		CHECK(fin, "acct:2 GENERATE: no final completion after %u", seen);
		rr = hearth_wait_cqe(h2, &c, 10000000000ll);
		CHECK(rr == 0 && c->user_data == 4101 && c->res == 1 && c->pos == len0 + gen_n + 1,
		      "the APPEND after the GENERATE: %d, user_data %llu res %d pos %u, want pos %u", rr,
		      rr == 0 ? (unsigned long long)c->user_data : 0ull, rr == 0 ? c->res : 0,
		      rr == 0 ? c->pos : 0, len0 + gen_n + 1);
		if (rr == 0)
			hearth_cqe_seen(h2, c);
		hearth_arena_reset(h1);
		hearth_arena_reset(h2);
		rr = hearth_append(h2, (uint32_t)g2, &t, 1);
		CHECK(rr == (int)(len0 + gen_n + 2), "append after the GENERATE: %d", rr);
	}
	hearth_close(h2);
	hearth_close(h1);
}

/* hearthctl agrees with the control socket. */
static void hearthctl(const char *path, struct th_daemon *d)
{
	static char out[65536];
	struct th_stats st;
	const char *status[] = { path, "--socket", d->sock, "status", NULL };
	const char *sessions[] = { path, "--socket", d->sock, "sessions", NULL };
	char line[64];
	int r;

	REQUIRE(th_stats(d->sock, &st) == 0, "stats");
	r = th_run_capture(status, out, sizeof(out), 10000);
	if (CHECK(WIFEXITED(r) && WEXITSTATUS(r) == 0, "hearthctl status: status 0x%x: %s", r, out)) {
		snprintf(line, sizeof(line), "sessions           %u\n", st.sessions);
		CHECK(strstr(out, line), "hearthctl status does not say '%.30s':\n%s", line, out);
	}
	r = th_run_capture(sessions, out, sizeof(out), 10000);
	if (CHECK(WIFEXITED(r) && WEXITSTATUS(r) == 0, "hearthctl sessions: status 0x%x: %s", r, out))
		CHECK(strstr(out, "acct:0") && strstr(out, "acct:3") && !strstr(out, "acct:1 "),
		      "hearthctl sessions does not list acct:0 and acct:3 (and not the destroyed acct:1):\n%s",
		      out);
}

int main(int argc, char **argv)
{
	struct th_daemon d;
	struct th_stats s0, s1, s2;
	struct ref ref;
	pid_t pids[N_PROC];
	uint64_t deadline, tokens = 0;
	bool children_ok;

	th_init("clients", 110);
	REQUIRE(argc == 3 || argc == 4, "usage: %s HEARTHD MODEL_DIR [HEARTHCTL]", argv[0]);
	ref_init(&ref, argv[2]);
	make_scripts(&ref);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	REQUIRE(sh != MAP_FAILED, "mmap");
	memset(sh, 0, sizeof(*sh));

	th_daemon_start(&d, argv[1], argv[2], NULL);
	sock = d.sock;
	REQUIRE(th_stats(sock, &s0) == 0, "stats");

	for (int p = 0; p < N_PROC; p++) {
		pids[p] = fork();
		REQUIRE(pids[p] >= 0, "fork");
		if (pids[p] == 0)
			client(p);
	}
	/* All attached at once, each with two sessions. */
	deadline = th_now_ns() + 20000000000ull;
	while (atomic_load(&sh->ready) < N_PROC && th_now_ns() < deadline)
		th_sleep_ms(2);
	CHECK(atomic_load(&sh->ready) == N_PROC, "only %u clients got ready", atomic_load(&sh->ready));
	REQUIRE(th_stats(sock, &s1) == 0, "stats");
	CHECK(s1.clients == N_PROC && s1.sessions == 2 * N_PROC,
	      "with %d clients connected: stats say %u clients, %u sessions", N_PROC, s1.clients,
	      s1.sessions);
	atomic_store(&sh->go, 1);
	children_ok = wait_children(pids);

	/* Gone: anonymous sessions freed, named ones kept with their pages. */
	deadline = th_now_ns() + 5000000000ull;
	do {
		REQUIRE(th_stats(sock, &s2) == 0, "stats");
		if (s2.clients == 0)
			break;
		th_sleep_ms(5);
	} while (th_now_ns() < deadline);
	CHECK(s2.clients == 0 && s2.sessions == N_PROC, "after the clients left: %u clients, %u sessions",
	      s2.clients, s2.sessions);
	CHECK(s2.kv_total - s2.kv_free == N_PROC * ((L_NAMED + 15) / 16),
	      "after the clients left: %u KV pages in use, want %u (the named sessions')",
	      s2.kv_total - s2.kv_free, N_PROC * ((L_NAMED + 15) / 16));
	if (!children_ok) {
		th_log("client processes failed: the exact counts below are not checked");
		goto reopen;
	}
	for (int p = 0; p < N_PROC; p++)
		tokens += PFX + K * EV + EV + PFX + K * EV + 4 + sc[p].n_gen + 6 + sc[p].n_lgen;
	CHECK(s2.tokens - s0.tokens == tokens, "stats: tokens_processed moved by %llu, want %llu",
	      (unsigned long long)(s2.tokens - s0.tokens), (unsigned long long)tokens);
	CHECK(s2.op_count[SHM_OP_SCORE] - s0.op_count[SHM_OP_SCORE] == N_PROC * (2 * K + 4),
	      "stats: score count moved by %llu, want %u",
	      (unsigned long long)(s2.op_count[SHM_OP_SCORE] - s0.op_count[SHM_OP_SCORE]), N_PROC * (2 * K + 4));
	CHECK(s2.op_count[SHM_OP_GENERATE] - s0.op_count[SHM_OP_GENERATE] == 2 * N_PROC,
	      "stats: generate count moved by %llu",
	      (unsigned long long)(s2.op_count[SHM_OP_GENERATE] - s0.op_count[SHM_OP_GENERATE]));
	CHECK(s2.op_count[SHM_OP_TRUNCATE] - s0.op_count[SHM_OP_TRUNCATE] == 2 * N_PROC &&
		      s2.op_errors[SHM_OP_TRUNCATE] - s0.op_errors[SHM_OP_TRUNCATE] == 0,
	      "stats: truncate count/errors moved by %llu/%llu",
	      (unsigned long long)(s2.op_count[SHM_OP_TRUNCATE] - s0.op_count[SHM_OP_TRUNCATE]),
	      (unsigned long long)(s2.op_errors[SHM_OP_TRUNCATE] - s0.op_errors[SHM_OP_TRUNCATE]));
	CHECK(s2.op_count[SHM_OP_APPEND] - s0.op_count[SHM_OP_APPEND] == 3 * N_PROC &&
		      s2.op_errors[SHM_OP_APPEND] - s0.op_errors[SHM_OP_APPEND] == N_PROC,
	      "stats: append count/errors moved by %llu/%llu, want %u/%u",
	      (unsigned long long)(s2.op_count[SHM_OP_APPEND] - s0.op_count[SHM_OP_APPEND]),
	      (unsigned long long)(s2.op_errors[SHM_OP_APPEND] - s0.op_errors[SHM_OP_APPEND]),
	      3 * N_PROC, N_PROC);
	CHECK(s2.op_count[SHM_OP_NOP] - s0.op_count[SHM_OP_NOP] == N_PROC + atomic_load(&sh->stamped),
	      "stats: nop count moved by %llu, want %llu",
	      (unsigned long long)(s2.op_count[SHM_OP_NOP] - s0.op_count[SHM_OP_NOP]),
	      (unsigned long long)(N_PROC + atomic_load(&sh->stamped)));
	th_log("stamp phase: %llu NOPs from %d processes, each seeing only its own",
	       (unsigned long long)atomic_load(&sh->stamped), N_PROC);

reopen:
	reopen_and_share(&ref, &d);
	if (argc > 3)
		hearthctl(argv[3], &d);
	th_daemon_stop(&d, 20000);
	munmap(sh, sizeof(*sh));
	ref_fini(&ref);
	return th_result();
}
#endif

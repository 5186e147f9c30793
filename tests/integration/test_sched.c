/* SPDX-License-Identifier: MIT */
/*
 * The scheduler's promises, through the daemon: an interactive SCORE sent
 * while a long bulk prefill runs joins the next step and completes long
 * before the prefill (chunked under the step's token budget); bulk work is
 * not starved by a stream of interactive work; every result equals the
 * engine's.
 *
 * "Joins the next step" is checked on the daemon's own count (GetStats
 * interactive_skip_max: the most steps a runnable interactive request was
 * left out of), not by reading the step counter from here after the fact:
 * on a loaded machine this process may sleep through many steps of the tiny
 * model, which proves nothing about the scheduler.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hearth/hearth.h"
#include "ref.h"

#define LONG 448u     /* bulk prefill: 112 steps of 4 tokens */
#define STEP 4u
#define BUDGET "4"

static uint64_t steps_now(const char *sock)
{
	struct th_stats st;

	REQUIRE(th_stats(sock, &st) == 0, "stats");
	return st.steps;
}

int main(int argc, char **argv)
{
	static const char *const extra[] = { "--max-step-tokens=" BUDGET, "--bulk-share-pct=50", NULL };
	struct th_daemon d;
	struct ref r;
	struct hearth *h;
	int32_t *in_long, *in_short, *labels, toks[LONG], ctx[8] = { 5, 6, 7, 8, 9, 10, 11, 12 };
	float *probs, want[2];
	struct hearth_sqe *q;
	struct hearth_cqe *c;
	int64_t bulk, inter;
	uint64_t s0, s_at, s_score = 0, s_long = 0;
	bool got_score = false, got_long = false;

	if (argc < 3) {
		fprintf(stderr, "usage: %s HEARTHD MODEL_DIR\n", argv[0]);
		return 2;
	}
	th_init("sched", 60);
	ref_init(&r, argv[2]);
	th_daemon_start(&d, argv[1], argv[2], extra);
	h = hearth_connect(&(struct hearth_opts){ .socket_path = d.sock, .client_name = "sched" });
	REQUIRE(h, "connect: %s", strerror(errno));
	bulk = hearth_session_open(h, NULL, HEARTH_OPEN_BULK, NULL);
	inter = hearth_session_open(h, NULL, 0, NULL);
	REQUIRE(bulk > 0 && inter > 0, "open: %lld %lld", (long long)bulk, (long long)inter);
	REQUIRE(hearth_append(h, (uint32_t)inter, ctx, 8) == 8, "interactive context");

	in_long = hearth_arena_alloc(h, LONG * 4);
	in_short = hearth_arena_alloc(h, 4 * 4);
	labels = hearth_arena_alloc(h, 2 * 4);
	probs = hearth_arena_alloc(h, 2 * 4);
	REQUIRE(in_long && in_short && labels && probs, "arena");
	for (uint32_t i = 0; i < LONG; i++)
		toks[i] = in_long[i] = (int32_t)(3 + (i * 37) % 500);
	for (uint32_t i = 0; i < 4; i++)
		in_short[i] = (int32_t)(20 + i);
	labels[0] = 3;
	labels[1] = 4;

	/* 1. A long bulk prefill, then an interactive SCORE right behind it. */
	s0 = steps_now(d.sock);
	q = hearth_get_sqe(h);
	hearth_prep_append(h, q, (uint32_t)bulk, in_long, LONG);
	q->user_data = 1;
	REQUIRE(hearth_submit(h) == 1, "submit long");
	/* Send the SCORE once the prefill is under way. */
	for (int i = 0; i < 5000 && steps_now(d.sock) - s0 < 2; i++)
		th_sleep_ms(1);
	s_at = steps_now(d.sock) - s0;
	q = hearth_get_sqe(h);
	hearth_prep_score(h, q, (uint32_t)inter, in_short, 4, labels, 2, probs);
	q->user_data = 2;
	REQUIRE(hearth_submit(h) == 1, "submit score");
	while (!got_score || !got_long) {
		if (!CHECK(hearth_wait_cqe(h, &c, 10000000000ll) == 0, "no completion for 10 s"))
			break;
		if (c->user_data == 1) {
			CHECK(c->res == (int)LONG, "long append: %d", c->res);
			got_long = true;
			s_long = steps_now(d.sock) - s0;
		} else if (c->user_data == 2) {
			CHECK(c->res == 2, "score: %d", c->res);
			got_score = true;
			s_score = steps_now(d.sock) - s0;
			CHECK(!got_long, "the interactive SCORE completed after the bulk prefill");
		}
		hearth_cqe_seen(h, c);
	}
	/* The prefill needs LONG / STEP = 112 steps alone; the SCORE joins the
	 * step after the one running when it arrived. The step numbers seen from
	 * here are read after the fact and only logged. */
	{
		struct th_stats st;

		REQUIRE(th_stats(d.sock, &st) == 0, "stats");
		th_log("interactive SCORE sent near step %llu, seen done near %llu; bulk prefill done "
		       "at %llu; daemon: interactive requests left out of %llu steps (max %u)",
		       (unsigned long long)s_at, (unsigned long long)s_score,
		       (unsigned long long)s_long, (unsigned long long)st.interactive_skips,
		       st.interactive_skip_max);
		CHECK(st.interactive_skip_max == 0 && st.interactive_skips == 0,
		      "an interactive request waited behind the prefill: left out of %llu steps "
		      "(at most %u in a row)", (unsigned long long)st.interactive_skips,
		      st.interactive_skip_max);
	}
	CHECK(s_long >= LONG / STEP, "the prefill ran in %llu steps of at most %u tokens",
	      (unsigned long long)s_long, STEP);
	{
		struct engine_seq *x = ref_seq(&r);
		ref_append(&r, x, ctx, 8);
		ref_append(&r, x, (int32_t[]){ 20, 21, 22, 23 }, 4);
		ref_probs(&r, x, (int32_t[]){ 3, 4 }, 2, want);
		engine_seq_free(r.e, x);
		th_close(probs, want, 2, "interactive score during the prefill");
		x = ref_seq(&r);
		ref_append(&r, x, toks, LONG);
		CHECK(hearth_score(h, (uint32_t)bulk, NULL, 0, (int32_t[]){ 3, 4 }, 2, probs) == 2,
		      "score the bulk session");
		ref_probs(&r, x, (int32_t[]){ 3, 4 }, 2, want);
		engine_seq_free(r.e, x);
		th_close(probs, want, 2, "bulk session after its chunked prefill");
	}

	/* 2. Bulk is not starved: interactive SCOREs keep every step busy while
	 * a bulk append of 64 tokens waits; it still completes while they run. */
	hearth_arena_reset(h);
	REQUIRE(hearth_truncate(h, (uint32_t)bulk, 8) == 8, "truncate bulk");
	in_long = hearth_arena_alloc(h, 64 * 4);
	labels = hearth_arena_alloc(h, 2 * 4);
	REQUIRE(in_long && labels, "arena");
	labels[0] = 3;
	labels[1] = 4;
	for (uint32_t i = 0; i < 64; i++)
		in_long[i] = (int32_t)(7 + i);
	{
		enum { N_SCORE = 24 };
		float *pr = hearth_arena_alloc(h, N_SCORE * 2 * 4);
		int32_t *one = hearth_arena_alloc(h, N_SCORE * 16 * 4);
		uint32_t scores_before = 0, done = 0;
		bool bulk_done = false;

		REQUIRE(pr && one, "arena");
		for (uint32_t i = 0; i < N_SCORE * 16; i++)
			one[i] = (int32_t)(30 + i % 200);
		q = hearth_get_sqe(h);
		hearth_prep_append(h, q, (uint32_t)bulk, in_long, 64);
		q->user_data = 100;
		/* Interactive SCOREs of 16 tokens each: each alone fills a step. */
		for (uint32_t i = 0; i < N_SCORE; i++) {
			q = hearth_get_sqe(h);
			REQUIRE(q, "sqe");
			hearth_prep_score(h, q, (uint32_t)inter, one + i * 16, 16, labels, 2, pr + 2 * i);
			q->user_data = 200 + i;
		}
		REQUIRE(hearth_submit(h) == N_SCORE + 1, "submit");
		while (done < N_SCORE + 1) {
			if (!CHECK(hearth_wait_cqe(h, &c, 10000000000ll) == 0, "no completion for 10 s"))
				break;
			if (c->user_data == 100) {
				CHECK(c->res == 64, "bulk append: %d", c->res);
				bulk_done = true;
			} else {
				CHECK(c->res == 2, "score %llu: %d", (unsigned long long)c->user_data, c->res);
				scores_before += !bulk_done;
			}
			done++;
			hearth_cqe_seen(h, c);
		}
		th_log("bulk append of 64 tokens done after %u of %u interactive SCOREs", scores_before,
		       N_SCORE);
		CHECK(scores_before <= N_SCORE / 2, "bulk work starved: it finished after %u of %u SCOREs",
		      scores_before, N_SCORE);
	}
	{
		struct th_stats st;

		REQUIRE(th_stats(d.sock, &st) == 0, "stats");
		CHECK(st.interactive_skip_max == 0, "an interactive SCORE was left out of %u steps "
		      "while the bulk append ran", st.interactive_skip_max);
	}
	hearth_close(h);
	th_daemon_stop(&d, 10000);
	ref_fini(&r);
	return th_result();
}

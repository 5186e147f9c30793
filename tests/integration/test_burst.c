/* SPDX-License-Identifier: MIT */
/*
 * batch_wait_us, through the daemon: the SCOREs of a burst that reaches the
 * rings spread over milliseconds share one step when each arrives within
 * half the wait of the one before, and the first of them waits no more than
 * batch_wait_us for it; the daemon counts the hold. A request arriving alone
 * is held at least half the wait and at most the wait (the whole wait once a
 * burst's size is known), and every score comes back whole. A held request
 * cancelled ends the hold: the reactor goes back to sleep instead of waking
 * for a step that will not come. Once held steps have shown the bursts' size,
 * a hold waits for that many or the whole wait, whatever the gaps between
 * arrivals. Times are generous (a 60 ms wait, arrivals 4 ms apart) so a
 * loaded 2-core machine passes it; what the step held is read from the
 * daemon's own counters, not from timing here.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hearth/hearth.h"

#define N_SESS 4u
#define WAIT_US 60000u
#define GAP_MS 4u

static void wait_scores(struct hearth *h, uint32_t n, const float *probs, uint64_t t_first,
			uint64_t *first_ns)
{
	struct hearth_cqe *c;

	for (uint32_t done = 0; done < n; done++) {
		if (!CHECK(hearth_wait_cqe(h, &c, 10000000000ll) == 0, "no completion for 10 s"))
			return;
		CHECK(c->res == 2, "score %llu: %d", (unsigned long long)c->user_data, c->res);
		if (c->res == 2) {
			const float *p = probs + 2 * c->user_data;

			CHECK(fabsf(p[0] + p[1] - 1.0f) < 1e-3f && p[0] >= 0 && p[1] >= 0,
			      "score %llu: %g %g", (unsigned long long)c->user_data, p[0], p[1]);
		}
		if (c->user_data == 0)
			*first_ns = th_now_ns() - t_first;
		hearth_cqe_seen(h, c);
	}
}

int main(int argc, char **argv)
{
	static const char *const extra[] = { "--batch-wait-us=60000", NULL };
	struct th_daemon d;
	struct th_stats s0, s1;
	struct hearth *h;
	int64_t sess[N_SESS];
	int32_t *toks, *labels, ctx[8] = { 5, 6, 7, 8, 9, 10, 11, 12 };
	float *probs;
	uint64_t t0, first_ns = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: %s HEARTHD MODEL_DIR\n", argv[0]);
		return 2;
	}
	th_init("burst", 60);
	th_daemon_start(&d, argv[1], argv[2], extra);
	h = hearth_connect(&(struct hearth_opts){ .socket_path = d.sock, .client_name = "burst" });
	REQUIRE(h, "connect: %s", strerror(errno));
	toks = hearth_arena_alloc(h, N_SESS * 4 * 4);
	labels = hearth_arena_alloc(h, 2 * 4);
	probs = hearth_arena_alloc(h, N_SESS * 2 * 4);
	REQUIRE(toks && labels && probs, "arena");
	labels[0] = 3;
	labels[1] = 4;
	for (uint32_t i = 0; i < N_SESS * 4; i++)
		toks[i] = (int32_t)(20 + i);
	for (uint32_t i = 0; i < N_SESS; i++) {
		sess[i] = hearth_session_open(h, NULL, 0, NULL);
		REQUIRE(sess[i] > 0, "open: %lld", (long long)sess[i]);
		REQUIRE(hearth_append(h, (uint32_t)sess[i], ctx, 8) == 8, "context");
	}

	/* 1. A burst: one SCORE per session, GAP_MS apart. */
	REQUIRE(th_stats(d.sock, &s0) == 0, "stats");
	t0 = th_now_ns();
	for (uint32_t i = 0; i < N_SESS; i++) {
		struct hearth_sqe *q = hearth_get_sqe(h);

		REQUIRE(q, "sqe");
		hearth_prep_score(h, q, (uint32_t)sess[i], toks + 4 * i, 4, labels, 2, probs + 2 * i);
		q->user_data = i;
		REQUIRE(hearth_submit(h) == 1, "submit %u", i);
		if (i + 1 < N_SESS)
			th_sleep_ms(GAP_MS);
	}
	wait_scores(h, N_SESS, probs, t0, &first_ns);
	REQUIRE(th_stats(d.sock, &s1) == 0, "stats");
	th_log("burst of %u SCOREs %u ms apart: steps by sessions 1:%llu 2:%llu 3-4:%llu; held %llu "
	       "times, %llu us; the first done after %.1f ms", N_SESS, GAP_MS,
	       (unsigned long long)(s1.batch[0] - s0.batch[0]),
	       (unsigned long long)(s1.batch[1] - s0.batch[1]),
	       (unsigned long long)(s1.batch[2] - s0.batch[2]),
	       (unsigned long long)(s1.burst_holds - s0.burst_holds),
	       (unsigned long long)(s1.burst_hold_us - s0.burst_hold_us), first_ns / 1e6);
	CHECK(s1.batch[2] - s0.batch[2] == 1 && s1.batch[0] == s0.batch[0] &&
	      s1.batch[1] == s0.batch[1], "the burst did not share one step");
	CHECK(s1.burst_holds - s0.burst_holds == 1, "holds: %llu",
	      (unsigned long long)(s1.burst_holds - s0.burst_holds));
	/* The step waited for the last arrival, (N_SESS - 1) * GAP_MS after the
	 * first, and at most WAIT_US after the first. */
	CHECK(s1.burst_hold_us - s0.burst_hold_us >= (N_SESS - 1) * GAP_MS * 1000 &&
	      s1.burst_hold_us - s0.burst_hold_us <= WAIT_US + 5000,
	      "held %llu us", (unsigned long long)(s1.burst_hold_us - s0.burst_hold_us));

	/* 2. One SCORE alone: held until half the wait has passed with nothing
	 * after it, then run by itself. */
	s0 = s1;
	{
		struct hearth_sqe *q = hearth_get_sqe(h);

		REQUIRE(q, "sqe");
		hearth_prep_score(h, q, (uint32_t)sess[0], toks, 4, labels, 2, probs);
		q->user_data = 0;
		t0 = th_now_ns();
		REQUIRE(hearth_submit(h) == 1, "submit alone");
	}
	wait_scores(h, 1, probs, t0, &first_ns);
	REQUIRE(th_stats(d.sock, &s1) == 0, "stats");
	th_log("one SCORE alone: held %llu us, done after %.1f ms",
	       (unsigned long long)(s1.burst_hold_us - s0.burst_hold_us), first_ns / 1e6);
	CHECK(s1.batch[0] - s0.batch[0] == 1, "the lone SCORE did not run alone");
	CHECK(s1.burst_hold_us - s0.burst_hold_us >= WAIT_US / 2 - 1000 &&
	      s1.burst_hold_us - s0.burst_hold_us <= WAIT_US + 5000,
	      "held %llu us", (unsigned long long)(s1.burst_hold_us - s0.burst_hold_us));

	/* 3. A held SCORE cancelled: -ECANCELED, and the daemon idles after. */
	s0 = s1;
	{
		struct hearth_sqe *q = hearth_get_sqe(h);
		struct hearth_cqe *c;
		uint64_t cpu0;
		int seen = 0;

		REQUIRE(q, "sqe");
		hearth_prep_score(h, q, (uint32_t)sess[1], toks, 4, labels, 2, probs);
		q->user_data = 7;
		REQUIRE(hearth_submit(h) == 1, "submit score");
		th_sleep_ms(5); /* held: nothing came after it for less than half the wait */
		q = hearth_get_sqe(h);
		REQUIRE(q, "sqe");
		hearth_prep_cancel(h, q, 7);
		q->user_data = 8;
		REQUIRE(hearth_submit(h) == 1, "submit cancel");
		while (seen < 2 && CHECK(hearth_wait_cqe(h, &c, 10000000000ll) == 0, "no completion")) {
			if (c->user_data == 7)
				CHECK(c->res == -ECANCELED, "cancelled score: %d", c->res);
			else
				CHECK(c->res == 0, "cancel: %d", c->res);
			seen++;
			hearth_cqe_seen(h, c);
		}
		th_sleep_ms(100);
		cpu0 = th_daemon_cpu_ns(&d);
		th_sleep_ms(400);
		th_log("after a cancelled hold: daemon cpu %.1f ms in 400 ms",
		       (th_daemon_cpu_ns(&d) - cpu0) / 1e6);
		CHECK(th_daemon_cpu_ns(&d) - cpu0 < 200000000ull,
		      "the daemon kept busy after the held request was cancelled");
	}
	REQUIRE(th_stats(d.sock, &s1) == 0, "stats");
	CHECK(s1.steps == s0.steps, "a step ran for a cancelled request");

	/* 4. Bursts of a known size: the held steps so far had 4 and 1 sessions,
	 * so a hold now waits for 4 requests or the whole wait. Two SCOREs 40 ms
	 * apart (more than half the wait) share one step, where a hold that ends
	 * at a gap of half the wait would have split them. */
	s0 = s1;
	t0 = th_now_ns();
	for (uint32_t i = 0; i < 2; i++) {
		struct hearth_sqe *q = hearth_get_sqe(h);

		REQUIRE(q, "sqe");
		hearth_prep_score(h, q, (uint32_t)sess[i], toks + 4 * i, 4, labels, 2, probs + 2 * i);
		q->user_data = i;
		REQUIRE(hearth_submit(h) == 1, "submit %u", i);
		if (!i)
			th_sleep_ms(WAIT_US / 1000 * 2 / 3);
	}
	wait_scores(h, 2, probs, t0, &first_ns);
	REQUIRE(th_stats(d.sock, &s1) == 0, "stats");
	th_log("two SCOREs %u ms apart after a burst of %u: steps by sessions 1:%llu 2:%llu; held "
	       "%llu us", WAIT_US / 1000 * 2 / 3, N_SESS,
	       (unsigned long long)(s1.batch[0] - s0.batch[0]),
	       (unsigned long long)(s1.batch[1] - s0.batch[1]),
	       (unsigned long long)(s1.burst_hold_us - s0.burst_hold_us));
	CHECK(s1.batch[1] - s0.batch[1] == 1 && s1.batch[0] == s0.batch[0],
	      "two requests of a burst of known size did not share one step");
	hearth_close(h);
	th_daemon_stop(&d, 10000);
	return th_result();
}

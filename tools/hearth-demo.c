/* SPDX-License-Identifier: MIT */
/*
 * hearth-demo: a streaming risk-scoring client. It opens a few named sessions
 * (one per account), primes each with a profile, then streams synthetic
 * events into them round-robin: every event appends a few tokens and asks for
 * the probabilities of two label tokens ("approve", "review"). It also shows a
 * what-if (score a hypothetical event, then TRUNCATE it away) and a short
 * streamed GENERATE, and ends with a latency summary.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hearth/hearth.h"
#include "hr_common.h"

#define N_ACCOUNTS_MAX 64
#define PROFILE_TOKENS 48
#define EVENT_TOKENS 4

static const int32_t labels[2] = { 10, 11 }; /* "approve", "review" */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int print_token(void *userdata, int32_t token)
{
	(void)userdata;
	printf(" %d", token);
	fflush(stdout);
	return 0;
}

static int fail(const char *what, int err)
{
	fprintf(stderr, "hearth-demo: %s: %s\n", what, hearth_strerror(err));
	return 1;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "accounts", required_argument, NULL, 'a' },
		{ "events", required_argument, NULL, 'e' },
		{ "help", no_argument, NULL, 'h' },
		{}
	};
	const char *socket_path = NULL;
	uint32_t n_acct = 4, n_events = 400, vocab, max_ctx;
	uint32_t handles[N_ACCOUNTS_MAX], lens[N_ACCOUNTS_MAX];
	uint64_t rng = 0x9e3779b97f4a7c15ull, *lat, t_all;
	struct hearth *h;
	int c, r;

	while ((c = getopt_long(argc, argv, "s:a:e:h", longopts, NULL)) != -1) {
		switch (c) {
		case 's': socket_path = optarg; break;
		case 'a': n_acct = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'e': n_events = (uint32_t)strtoul(optarg, NULL, 10); break;
		default:
			fprintf(c == 'h' ? stdout : stderr,
				"Usage: hearth-demo [--socket PATH] [--accounts N] [--events N]\n");
			return c == 'h' ? 0 : 2;
		}
	}
	if (!n_acct || n_acct > N_ACCOUNTS_MAX || !n_events) {
		fprintf(stderr, "hearth-demo: --accounts in 1..%d, --events > 0\n", N_ACCOUNTS_MAX);
		return 2;
	}
	h = hearth_connect(&(struct hearth_opts){ .socket_path = socket_path,
						  .client_name = "hearth-demo" });
	if (!h)
		return fail("connect", -errno);
	vocab = hearth_model(h)->vocab_size;
	max_ctx = hearth_model(h)->max_context;
	printf("connected: model '%s' (%s, vocab %u, context %u)\n", hearth_model(h)->name,
	       hearth_model(h)->arch, vocab, max_ctx);

	/* One named session per account, primed with a profile. */
	for (uint32_t a = 0; a < n_acct; a++) {
		char name[32];
		int32_t profile[PROFILE_TOKENS];
		uint32_t len = 0;
		int64_t s;

		snprintf(name, sizeof(name), "acct:%u", 1001 + a);
		s = hearth_session_open(h, name, HEARTH_OPEN_CREATE, &len);
		if (s < 0)
			return fail("session open", (int)s);
		handles[a] = (uint32_t)s;
		lens[a] = PROFILE_TOKENS;
		if (len) /* left by an earlier run: start the account afresh */
			hearth_truncate(h, handles[a], 0);
		for (uint32_t i = 0; i < PROFILE_TOKENS; i++)
			profile[i] = (int32_t)(rng_next(&rng) % vocab);
		if ((r = hearth_append(h, handles[a], profile, PROFILE_TOKENS)) < 0)
			return fail("append profile", r);
		printf("session %-10s handle %#x primed with %u tokens\n", name, handles[a],
		       PROFILE_TOKENS);
	}

	/* Stream events round-robin; every event is one SCORE request. */
	lat = calloc(n_events, sizeof(*lat));
	if (!lat)
		return fail("alloc", -ENOMEM);
	printf("\nstreaming %u events (%u tokens each) into %u sessions\n", n_events, EVENT_TOKENS,
	       n_acct);
	t_all = hr_now_ns();
	for (uint32_t e = 0; e < n_events; e++) {
		uint32_t a = e % n_acct;
		int32_t ev[EVENT_TOKENS];
		float p[2];
		uint64_t t0;

		for (uint32_t i = 0; i < EVENT_TOKENS; i++)
			ev[i] = (int32_t)(rng_next(&rng) % vocab);
		/* Keep a rolling window: back to the profile when the context fills. */
		if (lens[a] + EVENT_TOKENS + 16 > max_ctx) {
			if ((r = hearth_truncate(h, handles[a], PROFILE_TOKENS)) < 0)
				return fail("truncate", r);
			lens[a] = PROFILE_TOKENS;
		}
		t0 = hr_now_ns();
		r = hearth_score(h, handles[a], ev, EVENT_TOKENS, labels, 2, p);
		lat[e] = hr_now_ns() - t0;
		lens[a] += EVENT_TOKENS;
		if (r < 0)
			return fail("score", r);
		if (e < 8 || e % (n_events / 8 ? n_events / 8 : 1) == 0)
			printf("event %4u acct:%u  p(approve)=%.4f p(review)=%.4f  %6.1f us%s\n", e,
			       1001 + a, p[0], p[1], lat[e] / 1e3, p[1] > 0.5f ? "  -> REVIEW" : "");
	}
	t_all = hr_now_ns() - t_all;

	/* What-if: score a hypothetical large transfer, then roll it back. */
	{
		int32_t what_if[EVENT_TOKENS] = { 400, 401, 402, 403 };
		float p[2];
		if ((r = hearth_score(h, handles[0], what_if, EVENT_TOKENS, labels, 2, p)) < 0)
			return fail("what-if score", r);
		if ((r = hearth_truncate(h, handles[0], lens[0])) < 0)
			return fail("what-if roll back", r);
		printf("\nwhat-if on acct:1001: p(review)=%.4f for a hypothetical event, rolled back "
		       "to %u tokens\n", p[1], lens[0]);
	}

	/* A short streamed completion on the first account. */
	printf("generate on acct:1001:");
	r = hearth_generate(h, handles[0], NULL, 0, 12, NULL, print_token, NULL);
	printf("\n");
	if (r < 0)
		return fail("generate", r);

	qsort(lat, n_events, sizeof(*lat), cmp_u64);
	printf("\n%u SCORE round trips in %.1f ms (%.0f events/s): median %.1f us, p99 %.1f us, "
	       "max %.1f us\n",
	       n_events, t_all / 1e6, n_events / (t_all / 1e9), lat[n_events / 2] / 1e3,
	       lat[(size_t)(n_events * 0.99)] / 1e3, lat[n_events - 1] / 1e3);
	free(lat);
	hearth_close(h);
	return 0;
}

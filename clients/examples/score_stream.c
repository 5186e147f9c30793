/* SPDX-License-Identifier: MIT */
/*
 * score_stream: a tour of libhearth, quoted in full by docs/client.md. It
 * keeps a named session per account, appends a profile, scores an event over
 * two label tokens, tries a what-if and rolls it back, streams a short
 * generation, then scores a burst of events with the zero-copy asynchronous
 * API. Token ids would come from a tokenizer; these are made up.
 *
 *   usage: score_stream [SOCKET]
 */
#include <errno.h>
#include <stdio.h>

#include <hearth/hearth.h>

#define PROFILE_TOKENS 32
#define EVENT_TOKENS 4
#define BURST 8 /* asynchronous requests in flight at once (< sq_entries) */

/* The label tokens whose probabilities we want: "approve" and "review". */
static const int32_t labels[2] = { 10, 11 };

static int fail(const char *what, int err)
{
	fprintf(stderr, "score_stream: %s: %s\n", what, hearth_strerror(err));
	return 1;
}

/* Called for every generated token as it arrives; non-zero stops the calls. */
static int on_token(void *userdata, int32_t token)
{
	unsigned *n = userdata;

	printf(" %d", token);
	fflush(stdout);
	return ++*n == 16;
}

int main(int argc, char **argv)
{
	struct hearth_opts opts = {
		.socket_path = argc > 1 ? argv[1] : NULL, /* NULL: $HEARTH_SOCKET or default */
		.client_name = "score_stream",
	};
	int32_t profile[PROFILE_TOKENS], event[EVENT_TOKENS] = { 5, 6, 7, 8 };
	uint32_t vocab, len = 0, n_gen = 0;
	float p[2];
	int64_t s;
	int r;

	/* 1. Connect: one control socket plus a shared region of rings and arena. */
	struct hearth *h = hearth_connect(&opts);
	if (!h)
		return fail("connect", -errno);
	vocab = hearth_model(h)->vocab_size;
	printf("model %s (%s): vocab %u, context %u\n", hearth_model(h)->name,
	       hearth_model(h)->arch, vocab, hearth_model(h)->max_context);

	/* 2. A named session survives this connection; an earlier run may have
	 * left tokens in it, so start it afresh. */
	s = hearth_session_open(h, "acct:12345", HEARTH_OPEN_CREATE, &len);
	if (s < 0)
		return fail("open acct:12345", (int)s);
	uint32_t acct = (uint32_t)s;
	if (len && (r = hearth_truncate(h, acct, 0)) < 0)
		return fail("truncate", r);

	/* 3. Append the account's profile. */
	for (uint32_t i = 0; i < PROFILE_TOKENS; i++)
		profile[i] = (int32_t)((i * 37 + 3) % vocab);
	r = hearth_append(h, acct, profile, PROFILE_TOKENS);
	if (r < 0)
		return fail("append", r);
	printf("acct:12345 (handle %#x) holds %d tokens\n", acct, r);

	/* 4. An event arrives: append it and score the labels in one round trip. */
	r = hearth_score(h, acct, event, EVENT_TOKENS, labels, 2, p);
	if (r < 0)
		return fail("score", r);
	printf("event: p(approve) = %.4f, p(review) = %.4f\n", p[0], p[1]);
	len = PROFILE_TOKENS + EVENT_TOKENS;

	/* 5. What-if: score a hypothetical event, then roll the session back. */
	int32_t what_if[EVENT_TOKENS] = { 400 % vocab, 401 % vocab, 402 % vocab, 403 % vocab };
	if ((r = hearth_score(h, acct, what_if, EVENT_TOKENS, labels, 2, p)) < 0)
		return fail("what-if", r);
	if ((r = hearth_truncate(h, acct, len)) < 0)
		return fail("roll back", r);
	printf("what-if: p(review) = %.4f, rolled back to %d tokens\n", p[1], r);

	/* 6. Generate: tokens stream to the callback as the daemon produces them.
	 * The generated tokens join the session; roll them back too. */
	printf("generate:");
	r = hearth_generate(h, acct, NULL, 0, 12, NULL, on_token, &n_gen);
	printf("\n");
	if (r < 0)
		return fail("generate", r);
	if ((r = hearth_truncate(h, acct, len)) < 0)
		return fail("roll back", r);

	/* 7. Asynchronous and zero-copy: buffers live in the arena, the daemon
	 * reads the events and writes the probabilities in place. BURST SCOREs
	 * are in flight at once; each appends its event, in submission order. */
	int32_t *lab = hearth_arena_alloc(h, sizeof(labels));
	int32_t *ev = hearth_arena_alloc(h, BURST * EVENT_TOKENS * sizeof(int32_t));
	float *probs = hearth_arena_alloc(h, BURST * 2 * sizeof(float));
	if (!lab || !ev || !probs)
		return fail("arena", -ENOMEM);
	lab[0] = labels[0];
	lab[1] = labels[1];
	for (uint32_t i = 0; i < BURST; i++) {
		struct hearth_sqe *sqe = hearth_get_sqe(h);

		if (!sqe) /* ring full: cannot happen with BURST < sq_entries */
			return fail("get_sqe", -EBUSY);
		for (uint32_t k = 0; k < EVENT_TOKENS; k++)
			ev[i * EVENT_TOKENS + k] = (int32_t)((i * 11 + k + 20) % vocab);
		hearth_prep_score(h, sqe, acct, &ev[i * EVENT_TOKENS], EVENT_TOKENS, lab, 2,
				  &probs[i * 2]);
		sqe->user_data = i;                 /* after prep: prep clears the slot */
		sqe->flags |= HEARTH_SQE_F_LATENCY; /* scheduled ahead of bulk work */
	}
	if ((r = hearth_submit(h)) < 0) /* one publish, at most one wake-up */
		return fail("submit", r);
	for (uint32_t done = 0; done < BURST; done++) {
		struct hearth_cqe *cqe;

		if ((r = hearth_wait_cqe(h, &cqe, -1)) < 0)
			return fail("wait", r);
		uint64_t i = cqe->user_data;
		int res = cqe->res;
		uint32_t pos = cqe->pos;
		hearth_cqe_seen(h, cqe); /* the slot goes back to the daemon */
		if (res < 0)
			return fail("async score", res);
		printf("event %llu: p(review) = %.4f at %u tokens\n", (unsigned long long)i,
		       probs[i * 2 + 1], pos);
	}
	hearth_arena_reset(h); /* nothing in flight uses the buffers any more */

	/* 8. Roll the burst back, close our use of the session (it stays, named,
	 * for the next run or another process) and detach. */
	if ((r = hearth_truncate(h, acct, len)) < 0)
		return fail("truncate", r);
	if ((r = hearth_session_close(h, acct, 0)) < 0)
		return fail("close", r);
	hearth_close(h);
	return 0;
}

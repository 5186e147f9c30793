/* SPDX-License-Identifier: MIT */
/*
 * SIGTERM while a GENERATE is in flight: the daemon drains, the client still
 * receives every token (equal to the engine's greedy tokens) and the final
 * completion, then the daemon closes the connection, marks the client's wait
 * queue shut down and exits 0.
 *
 *  A. The GENERATE is still producing when SIGTERM arrives (large rings, the
 *     client reads as fast as it can). Also connected: an idle attached
 *     client and a connection that never said Hello.
 *  B. The client is slow: it stops reading after a few tokens so the
 *     GENERATE stalls on its full CQ, SIGTERM comes, and only then does the
 *     client resume: the daemon must wait for it (within its drain timeout)
 *     and deliver the rest.
 *
 * Usage: test_integ_drain HEARTHD MODEL_DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "ref.h"

#define PROMPT_LEN 6u
#define GEN_A 500u
#define GEN_B 300u

static int32_t prompt[PROMPT_LEN];
static int32_t want[GEN_A];
static uint32_t n_want;

static void pick_prompt(struct ref *r)
{
	for (uint64_t seed = 1; seed < 64; seed++) {
		uint64_t st = seed * 104729;
		struct engine_seq *s = ref_seq(r);

		for (uint32_t i = 0; i < PROMPT_LEN; i++)
			prompt[i] = 3 + (int32_t)(th_rand(&st) % 509);
		ref_append(r, s, prompt, PROMPT_LEN);
		n_want = ref_generate(r, s, GEN_A, want);
		engine_seq_free(r->e, s);
		if (n_want == GEN_A)
			return;
	}
	th_fatal("no prompt found whose greedy continuation avoids EOS");
}

/* The daemon closes our control socket once it is done with us. */
static void expect_hangup(struct rc *c, const char *what)
{
	struct pollfd p = { .fd = c->sock, .events = POLLIN | POLLRDHUP };
	char buf[64];
	int n = poll(&p, 1, 10000);

	if (!CHECK(n == 1, "%s: the control socket saw no hang-up within 10 s", what))
		return;
	CHECK(recv(c->sock, buf, sizeof(buf), MSG_DONTWAIT) <= 0,
	      "%s: unexpected data on the control socket", what);
}

static void check_tokens(const int32_t *got, int32_t n, uint32_t want_n, const char *what)
{
	if (!CHECK(n == (int32_t)want_n, "%s: %d tokens, want %u", what, n, want_n))
		return;
	for (uint32_t i = 0; i < want_n; i++)
		if (!CHECK(got[i] == want[i], "%s: token %u is %d, the engine's is %d", what, i,
			   got[i], want[i]))
			return;
}

struct pause_ctl {
	struct th_daemon *d;
	uint32_t pause_after;
	bool paused;
	bool alive_after_term;
};

/* Phase B: after pause_after tokens, stop reading, SIGTERM, check the daemon
 * is still there after a while, then go on reading. */
static int pause_and_term(void *ud, uint32_t got)
{
	struct pause_ctl *p = ud;

	if (p->paused || got < p->pause_after)
		return 0;
	p->paused = true;
	th_sleep_ms(200); /* the GENERATE fills our CQ and stalls */
	kill(p->d->pid, SIGTERM);
	th_sleep_ms(300);
	p->alive_after_term = th_daemon_alive(p->d);
	return 0;
}

static void phase_a(const char *hearthd, const char *model)
{
	struct th_daemon d;
	struct rc c, idle;
	struct shm_sqe q;
	uint32_t got = 0, posted;
	int32_t sess, *out = calloc(GEN_A, sizeof(int32_t));
	int raw;
	bool final = false;
	uint64_t t0;

	th_daemon_start(&d, hearthd, model, NULL);
	REQUIRE(rc_connect(&c, d.sock, &(struct rc_opts){ .name = "drain-a", .sq_entries = 512,
							   .cq_entries = 1024 }) == 0, "connect");
	REQUIRE(rc_connect(&idle, d.sock, &(struct rc_opts){ .name = "idle" }) == 0, "connect idle");
	raw = th_ctl_connect(d.sock); /* never says Hello */
	REQUIRE(raw >= 0, "raw connect");
	sess = rc_open(&c, NULL, 0, NULL);
	REQUIRE(sess > 0, "open: %d", sess);

	q = (struct shm_sqe){ .op = SHM_OP_GENERATE, .session = (uint32_t)sess, .user_data = 99,
			      .in_off = RC_IN_OFF, .in_len = PROMPT_LEN * 4, .out_off = RC_OUT_OFF,
			      .out_cap = GEN_A * 4, .arg = { GEN_A } };
	memcpy(c.arena + RC_IN_OFF, prompt, sizeof(prompt));
	t0 = th_now_ns();
	REQUIRE(rc_submit(&c, &q) == 0, "submit");
	/* SIGTERM as soon as the first token is posted... */
	while (shm_load_acquire(c.cq.r.tail_p) == c.cq.r.head && th_now_ns() - t0 < 10000000000ull)
		;
	kill(d.pid, SIGTERM);
	/* ...and check it was in flight: fewer than all completions posted after it. */
	posted = shm_load_acquire(c.cq.r.tail_p) - c.cq.r.head;
	CHECK(posted < GEN_A + 1, "the GENERATE was already complete when SIGTERM was sent "
				  "(%u completions): the test proves nothing", posted);
	th_log("phase A: SIGTERM after %u of %u completions", posted, GEN_A + 1);

	while (!final) {
		struct shm_cqe cqe;
		int r = rc_wait(&c, &cqe, 10000000000ll);

		if (!CHECK(r == 0, "phase A: after SIGTERM and %u tokens, no completion: %s", got,
			   strerror(-r)))
			break;
		if (!CHECK(cqe.user_data == 99, "phase A: completion for %llu",
			   (unsigned long long)cqe.user_data))
			break;
		if (cqe.flags & SHM_CQE_F_MORE) {
			CHECK(cqe.res == 1 && cqe.out_len == 4 * (got + 1),
			      "phase A: streamed completion %u: res %d out_len %u", got, cqe.res,
			      cqe.out_len);
			if (got < GEN_A)
				out[got] = ((int32_t *)(c.arena + RC_OUT_OFF))[got];
			got++;
		} else {
			final = true;
			CHECK(cqe.res == (int32_t)got && cqe.out_len == got * 4,
			      "phase A: final completion res %d out_len %u after %u tokens", cqe.res,
			      cqe.out_len, got);
		}
	}
	CHECK(final, "phase A: no final completion");
	check_tokens(out, (int32_t)got, n_want, "phase A tokens");
	th_log("phase A: generate + drain took %.1f ms", (th_now_ns() - t0) / 1e6);

	if (th_daemon_wait_exit(&d, 15000))
		th_daemon_judge(&d);
	else
		th_daemon_stop(&d, 1000); /* reports it, then SIGKILL */
	expect_hangup(&c, "phase A");
	expect_hangup(&idle, "phase A idle client");
	CHECK(shm_load_acquire(&c.hdr->client_wq.shutdown) == 1,
	      "phase A: the client's wait queue was not shut down");
	close(raw);
	rc_close(&idle);
	rc_close(&c);
	free(out);
}

static void phase_b(const char *hearthd, const char *model)
{
	struct th_daemon d;
	struct rc c;
	struct pause_ctl pc;
	int32_t sess, r, *out = calloc(GEN_B, sizeof(int32_t));
	uint64_t t0;

	th_daemon_start(&d, hearthd, model, NULL);
	/* Default rings: sq 64, cq 128 < GEN_B, so a paused reader stalls it. */
	REQUIRE(rc_connect(&c, d.sock, &(struct rc_opts){ .name = "drain-b" }) == 0, "connect");
	sess = rc_open(&c, NULL, 0, NULL);
	REQUIRE(sess > 0, "open: %d", sess);
	pc = (struct pause_ctl){ .d = &d, .pause_after = 10 };
	t0 = th_now_ns();
	r = rc_generate(&c, (uint32_t)sess, prompt, PROMPT_LEN, GEN_B, out, pause_and_term, &pc);
	CHECK(pc.paused && pc.alive_after_term,
	      "phase B: hearthd exited within 300 ms of SIGTERM while a GENERATE was in flight");
	check_tokens(out, r, GEN_B, "phase B tokens (slow reader across SIGTERM)");
	th_log("phase B: took %.1f ms", (th_now_ns() - t0) / 1e6);
	if (th_daemon_wait_exit(&d, 15000))
		th_daemon_judge(&d);
	else
		th_daemon_stop(&d, 1000); /* reports it, then SIGKILL */
	expect_hangup(&c, "phase B");
	rc_close(&c);
	free(out);
}

int main(int argc, char **argv)
{
	struct ref ref;

	th_init("drain", 100);
	REQUIRE(argc == 3, "usage: %s HEARTHD MODEL_DIR", argv[0]);
	ref_init(&ref, argv[2]);
	pick_prompt(&ref);
	ref_fini(&ref);
	phase_a(argv[1], argv[2]);
	phase_b(argv[1], argv[2]);
	return th_result();
}

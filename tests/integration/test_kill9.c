/* SPDX-License-Identifier: MIT */
/*
 * A client killed with SIGKILL in the middle of two long GENERATEs (one into
 * an anonymous session, one into a named one): the daemon sees the hang-up,
 * detaches it (stats: client count back, the anonymous session freed, KV
 * pages back to what they were but for the named session's growth), leaves
 * the named session usable (not busy) with exactly the tokens generated so
 * far, keeps serving the other clients correctly, and exits 0 on SIGTERM.
 * While the dying client has stopped reading its completion ring, the
 * reactor must not burn a core waiting for room (it has a wake-up bit for it).
 *
 * Usage: test_integ_kill9 HEARTHD MODEL_DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "ref.h"

#define GEN_TOKENS 400u
#define PROMPT_LEN 6u
#define NAMED_TOKENS 20u
#define READ_BEFORE_KILL 20u
#define N_LABELS 5u
#define N_EVENTS 4u
#define EVENT_LEN 3u

static int32_t prompt[PROMPT_LEN];
static const int32_t labels[N_LABELS] = { 10, 77, 150, 301, 499 };
static int32_t prefix[8];
static int32_t events[N_EVENTS][EVENT_LEN];
static float want_event[N_EVENTS][N_LABELS];

/* A prompt whose greedy continuation does not hit EOS within GEN_TOKENS, so
 * that the daemon is certainly still streaming when the client dies. */
static void pick_prompt(struct ref *r)
{
	static int32_t out[GEN_TOKENS];

	for (uint64_t seed = 1; seed < 64; seed++) {
		uint64_t st = seed * 7919;
		struct engine_seq *s = ref_seq(r);
		uint32_t n;

		for (uint32_t i = 0; i < PROMPT_LEN; i++)
			prompt[i] = 3 + (int32_t)(th_rand(&st) % 509);
		ref_append(r, s, prompt, PROMPT_LEN);
		n = ref_generate(r, s, GEN_TOKENS, out);
		engine_seq_free(r->e, s);
		if (n == GEN_TOKENS && out[GEN_TOKENS - 1] != ref_eos(r))
			return;
	}
	th_fatal("no prompt found whose greedy continuation avoids EOS");
}

/* The honest client's script: a prefix, then hypothetical events scored and
 * rolled back. */
static void make_script(struct ref *r)
{
	uint64_t st = 42;
	struct engine_seq *s = ref_seq(r);

	for (uint32_t i = 0; i < 8; i++)
		prefix[i] = (int32_t)(th_rand(&st) % 512);
	ref_append(r, s, prefix, 8);
	for (uint32_t k = 0; k < N_EVENTS; k++) {
		for (uint32_t i = 0; i < EVENT_LEN; i++)
			events[k][i] = (int32_t)(th_rand(&st) % 512);
		ref_append(r, s, events[k], EVENT_LEN);
		ref_probs(r, s, labels, N_LABELS, want_event[k]);
		REQUIRE(engine_truncate(r->e, s, 8) == 0, "reference truncate");
	}
	engine_seq_free(r->e, s);
}

static void honest_event(struct rc *c, uint32_t sess, uint32_t k, const char *when)
{
	float got[N_LABELS];
	char what[128];
	int32_t r = rc_score(c, sess, events[k], EVENT_LEN, labels, N_LABELS, got);

	snprintf(what, sizeof(what), "honest client score of event %u %s", k, when);
	if (CHECK(r == (int32_t)N_LABELS, "%s: res %d", what, r))
		th_close(got, want_event[k], N_LABELS, what);
	r = rc_truncate(c, sess, 8);
	CHECK(r == 8, "%s: truncate res %d", what, r);
}

static int write_byte(int fd, char b)
{
	return write(fd, &b, 1) == 1 ? 0 : -1;
}

static char read_byte(int fd, unsigned timeout_ms)
{
	uint64_t deadline = th_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	char b;

	for (;;) {
		ssize_t n = read(fd, &b, 1);
		if (n == 1)
			return b;
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			return 0;
		if (th_now_ns() > deadline)
			return 0;
		th_sleep_ms(1);
	}
}

static int32_t named_tokens(uint32_t i)
{
	return (int32_t)(i * 13 + 5);
}

/* The client that dies: a named session with tokens and an anonymous one,
 * each streaming a long GENERATE, of which it reads a few completions and
 * then stops reading. Default rings (sq 64, cq 128): both GENERATEs stall
 * on the full CQ well before their 400 tokens. */
static void victim(const char *sock, int to_parent, int from_parent)
{
	struct rc c;
	int32_t named, anon, toks[NAMED_TOKENS];
	struct shm_cqe cqe;

	if (rc_connect(&c, sock, &(struct rc_opts){ .name = "victim" }) < 0)
		_exit(2);
	named = rc_open(&c, "kill9:keep", SHM_OPEN_F_CREATE, NULL);
	anon = rc_open(&c, NULL, 0, NULL);
	for (uint32_t i = 0; i < NAMED_TOKENS; i++)
		toks[i] = named_tokens(i);
	if (named <= 0 || anon <= 0 || rc_append(&c, (uint32_t)named, toks, NAMED_TOKENS, NULL) !=
						     (int32_t)NAMED_TOKENS)
		_exit(3);
	if (write_byte(to_parent, 'R') < 0 || read_byte(from_parent, 20000) != 'G')
		_exit(4);
	memcpy(c.arena + RC_IN_OFF, prompt, sizeof(prompt));
	for (int i = 0; i < 2; i++) {
		struct shm_sqe q = { .op = SHM_OP_GENERATE, .session = (uint32_t)(i ? named : anon),
				     .user_data = 77 + (uint64_t)i, .in_off = RC_IN_OFF,
				     .in_len = PROMPT_LEN * 4, .out_off = RC_OUT_OFF + (uint32_t)i * 4096,
				     .out_cap = GEN_TOKENS * 4, .arg = { GEN_TOKENS } };
		if (rc_submit(&c, &q) < 0)
			_exit(5);
	}
	for (uint32_t i = 0; i < READ_BEFORE_KILL; i++)
		if (rc_wait(&c, &cqe, RC_TIMEOUT_NS) < 0 || !(cqe.flags & SHM_CQE_F_MORE) || cqe.res != 1)
			_exit(6);
	write_byte(to_parent, 'T');
	/* Hold the region and stop reading: the daemon is mid-stream. */
	for (;;)
		pause();
}

static void check_reactor_idle(struct th_daemon *d)
{
	uint64_t c0 = th_daemon_cpu_ns(d), c1;

	th_sleep_ms(1000);
	c1 = th_daemon_cpu_ns(d);
	CHECK(c1 - c0 < 300000000ull,
	      "hearthd used %.0f ms of CPU in 1 s while its only active client had stopped reading "
	      "its CQ mid-GENERATE: the reactor busy-polls instead of sleeping for CQ space",
	      (c1 - c0) / 1e6);
}

int main(int argc, char **argv)
{
	struct th_daemon d;
	struct th_stats s0, s1, s2, s3;
	struct th_session_info si[16];
	struct ref ref;
	struct rc b, cc;
	int32_t sb, r;
	int up[2], down[2], st, n;
	uint32_t named_len = 0;
	pid_t victim_pid;
	uint64_t deadline;

	th_init("kill9", 80);
	REQUIRE(argc == 3, "usage: %s HEARTHD MODEL_DIR", argv[0]);
	ref_init(&ref, argv[2]);
	pick_prompt(&ref);
	make_script(&ref);

	th_daemon_start(&d, argv[1], argv[2], NULL);
	REQUIRE(th_stats(d.sock, &s0) == 0, "stats");
	CHECK(s0.clients == 0 && s0.sessions == 0 && s0.kv_free == s0.kv_total,
	      "fresh daemon: clients %u sessions %u kv %u/%u free", s0.clients, s0.sessions,
	      s0.kv_free, s0.kv_total);

	/* B: an honest client that stays connected throughout. */
	REQUIRE(rc_connect(&b, d.sock, &(struct rc_opts){ .name = "honest" }) == 0, "connect B");
	sb = rc_open(&b, NULL, 0, NULL);
	REQUIRE(sb > 0, "open B's session: %d", sb);
	REQUIRE(rc_append(&b, (uint32_t)sb, prefix, 8, NULL) == 8, "B prefix");
	honest_event(&b, (uint32_t)sb, 0, "before the victim");
	REQUIRE(th_stats(d.sock, &s1) == 0, "stats");
	CHECK(s1.clients == 1 && s1.sessions == 1, "with B: clients %u sessions %u", s1.clients,
	      s1.sessions);

	REQUIRE(pipe(up) == 0 && pipe(down) == 0, "pipe");
	victim_pid = fork();
	REQUIRE(victim_pid >= 0, "fork");
	if (victim_pid == 0) {
		th_child_init(60);
		close(up[0]);
		close(down[1]);
		victim(d.sock, up[1], down[0]);
	}
	close(up[1]);
	close(down[0]);
	REQUIRE(read_byte(up[0], 20000) == 'R', "the victim did not get ready");
	REQUIRE(th_stats(d.sock, &s2) == 0, "stats");
	CHECK(s2.clients == 2 && s2.sessions == 3, "with the victim: clients %u sessions %u",
	      s2.clients, s2.sessions);
	REQUIRE(write_byte(down[1], 'G') == 0, "go");
	if (!CHECK(read_byte(up[0], 20000) == 'T', "the victim did not stream %u tokens",
		   READ_BEFORE_KILL)) {
		kill(victim_pid, SIGKILL);
		waitpid(victim_pid, &st, 0);
		th_log("victim exit status %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		th_fatal("victim failed");
	}
	/* The GENERATE is stalled on the victim's full CQ: still in flight. */
	REQUIRE(th_stats(d.sock, &s3) == 0, "stats");
	CHECK(s3.kv_free < s2.kv_free, "the stalled GENERATE holds no KV pages? free %u before, %u now",
	      s2.kv_free, s3.kv_free);
	CHECK(s3.tokens < s2.tokens + 2 * (PROMPT_LEN + GEN_TOKENS),
	      "the GENERATEs finished although their client stopped reading (%llu tokens)",
	      (unsigned long long)(s3.tokens - s2.tokens));
	check_reactor_idle(&d);
	honest_event(&b, (uint32_t)sb, 1, "while the victim's GENERATE is stalled");

	kill(victim_pid, SIGKILL);
	REQUIRE(waitpid(victim_pid, &st, 0) == victim_pid && WIFSIGNALED(st), "victim reaped");

	/* The daemon notices within a bounded time. The named session keeps
	 * what the GENERATE had appended to it, and its pages. */
	deadline = th_now_ns() + 5000000000ull;
	for (;;) {
		REQUIRE(th_stats(d.sock, &s3) == 0, "stats");
		if (s3.clients == 1 && s3.sessions == 2)
			break;
		if (th_now_ns() > deadline)
			break;
		th_sleep_ms(10);
	}
	CHECK(s3.clients == 1, "5 s after SIGKILL: %u clients, want 1", s3.clients);
	CHECK(s3.sessions == 2, "5 s after SIGKILL: %u sessions, want 2 (B's and the named one)",
	      s3.sessions);
	n = th_sessions(d.sock, si, 16);
	CHECK(n == 2, "ListSessions: %d sessions", n);
	for (int i = 0; i < n && i < 16; i++)
		if (si[i].name[0]) {
			named_len = si[i].n_tokens;
			CHECK(strcmp(si[i].name, "kill9:keep") == 0 && si[i].attached == 0 &&
				      named_len > NAMED_TOKENS + PROMPT_LEN &&
				      named_len < NAMED_TOKENS + PROMPT_LEN + GEN_TOKENS,
			      "named session '%s': %u tokens, %u attached", si[i].name, named_len,
			      si[i].attached);
		}
	th_log("named session: %u tokens when its client was killed mid-GENERATE", named_len);
	REQUIRE(th_stats(d.sock, &s3) == 0, "stats");
	CHECK(s3.kv_free == s2.kv_free - ((named_len + 15) / 16 - (NAMED_TOKENS + 15) / 16),
	      "after SIGKILL: %u KV pages free, want %u (as before, less the named session's growth "
	      "from %u to %u tokens)",
	      s3.kv_free, s2.kv_free - ((named_len + 15) / 16 - (NAMED_TOKENS + 15) / 16),
	      NAMED_TOKENS, named_len);

	/* B is unaffected. */
	honest_event(&b, (uint32_t)sb, 2, "after the victim died");

	/* A new client: correct greedy tokens; the named session is usable (not
	 * left busy by the cancelled GENERATE) and holds exactly the tokens the
	 * GENERATE had produced. */
	REQUIRE(rc_connect(&cc, d.sock, &(struct rc_opts){ .name = "after" }) == 0, "connect C");
	{
		int32_t got[64], want[64], hist[NAMED_TOKENS + PROMPT_LEN + GEN_TOKENS], one = 321;
		float p_got[N_LABELS], p_want[N_LABELS];
		uint32_t len = 0, nw, pos = 0;
		struct engine_seq *s = ref_seq(&ref);
		int32_t sc = rc_open(&cc, NULL, 0, NULL), sn;

		ref_append(&ref, s, prompt, PROMPT_LEN);
		nw = ref_generate(&ref, s, 64, want);
		engine_seq_free(ref.e, s);
		r = rc_generate(&cc, (uint32_t)sc, prompt, PROMPT_LEN, 64, got, NULL, NULL);
		if (CHECK(r == (int32_t)nw, "C generate: %d tokens, want %u", r, nw))
			CHECK(memcmp(got, want, nw * 4) == 0, "C generate: tokens differ from the engine's");
		sn = rc_open(&cc, "kill9:keep", 0, &len);
		CHECK(sn > 0 && len == named_len, "reopen named: res %d len %u, want %u", sn, len, named_len);
		r = rc_append(&cc, (uint32_t)sn, &one, 1, &pos);
		CHECK(r == 1 && pos == named_len + 1,
		      "append to the named session whose GENERATE was cancelled: res %d pos %u", r, pos);
		if (r == 1 && named_len <= NAMED_TOKENS + PROMPT_LEN + GEN_TOKENS) {
			uint32_t k = 0;

			s = ref_seq(&ref);
			for (uint32_t i = 0; i < NAMED_TOKENS; i++)
				hist[k++] = named_tokens(i);
			memcpy(hist + k, prompt, sizeof(prompt));
			k += PROMPT_LEN;
			ref_append(&ref, s, hist, k);
			ref_generate(&ref, s, named_len - k, hist + k);
			ref_append(&ref, s, &one, 1);
			ref_probs(&ref, s, labels, N_LABELS, p_want);
			engine_seq_free(ref.e, s);
			r = rc_score(&cc, (uint32_t)sn, NULL, 0, labels, N_LABELS, p_got);
			if (CHECK(r == (int32_t)N_LABELS, "score named: %d", r))
				th_close(p_got, p_want, N_LABELS,
					 "named session after its GENERATE was cancelled by SIGKILL");
		}
		CHECK(rc_close_session(&cc, (uint32_t)sn, SHM_CLOSE_F_DROP) == 0, "drop the named session");
	}
	honest_event(&b, (uint32_t)sb, 3, "at the end");
	rc_close(&cc);
	rc_close(&b);

	th_daemon_stop(&d, 20000);
	close(up[0]);
	close(down[1]);
	ref_fini(&ref);
	return th_result();
}

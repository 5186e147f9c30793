/* SPDX-License-Identifier: MIT */
/*
 * KV tiers end to end: more named sessions than L1 holds, each scored again
 * and again, must give the scores of an engine that never evicts (both
 * pagers); the sessions survive a SIGTERM restart, a kill -9 restart, a
 * corrupted L2 file (recomputed from their histories) and an L2 too small to
 * hold them (they stay in L1).
 */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "hearth/hearth.h"
#include "ref.h"

#define N_SESS 8
#define CTX 200          /* 13 pages of 16: 8 sessions need 104 of the 64 L1 pages */
#define EVENT 4

static const int32_t labels[2] = { 10, 11 };

struct world {
	struct ref ref;
	struct engine_seq *seq[N_SESS];
	uint64_t rng;
};

static void session_name(char *buf, size_t len, int i)
{
	snprintf(buf, len, "tier:%d", i);
}

static void world_fini(struct world *w)
{
	for (int i = 0; i < N_SESS; i++)
		engine_seq_free(w->ref.e, w->seq[i]);
	ref_fini(&w->ref);
}

static void event(struct world *w, int32_t *ev)
{
	for (int i = 0; i < EVENT; i++)
		ev[i] = (int32_t)(th_rand(&w->rng) % 512);
}

/* Score one event in every session through the daemon and in the reference. */
static void score_round_ex(struct world *w, struct hearth *h, const uint32_t *handles,
			   const char *what, bool allow_enomem, uint32_t *ret_enomem)
{
	for (int i = 0; i < N_SESS; i++) {
		int32_t ev[EVENT];
		float got[2], want[2];
		int r;

		event(w, ev);
		r = hearth_score(h, handles[i], ev, EVENT, labels, 2, got);
		if (allow_enomem && r == -ENOMEM) {
			/* KV exhausted in both tiers: refused, and the session unchanged. */
			(*ret_enomem)++;
			continue;
		}
		CHECK(r == 2, "%s: session %d: score: %s", what, i, hearth_strerror(r));
		if (r != 2)
			continue;
		ref_append(&w->ref, w->seq[i], ev, EVENT);
		ref_probs(&w->ref, w->seq[i], labels, 2, want);
		th_close(got, want, 2, what);
	}
}

static void score_round(struct world *w, struct hearth *h, const uint32_t *handles, const char *what)
{
	score_round_ex(w, h, handles, what, false, NULL);
}

static struct hearth *attach(struct th_daemon *d)
{
	struct hearth *h = hearth_connect(&(struct hearth_opts){ .socket_path = d->sock,
								 .client_name = "test_tiers" });
	REQUIRE(h, "connect: %s", hearth_strerror(-errno));
	return h;
}

static void open_all(struct hearth *h, uint32_t *handles, uint32_t *lens)
{
	for (int i = 0; i < N_SESS; i++) {
		char name[32];
		int64_t s;

		session_name(name, sizeof(name), i);
		s = hearth_session_open(h, name, HEARTH_OPEN_CREATE, &lens[i]);
		REQUIRE(s > 0, "open %s: %s", name, hearth_strerror((int)s));
		handles[i] = (uint32_t)s;
	}
}

static void build(struct world *w, struct hearth *h, uint32_t *handles)
{
	uint32_t lens[N_SESS];

	open_all(h, handles, lens);
	for (int i = 0; i < N_SESS; i++) {
		int32_t ctx[CTX];
		int r;

		CHECK(lens[i] == 0, "session %d is new", i);
		for (int j = 0; j < CTX; j++)
			ctx[j] = (int32_t)(th_rand(&w->rng) % 512);
		r = hearth_append(h, handles[i], ctx, CTX);
		REQUIRE(r == CTX, "append: %s", hearth_strerror(r));
		w->seq[i] = ref_seq(&w->ref);
		ref_append(&w->ref, w->seq[i], ctx, CTX);
	}
}

static void start(struct th_daemon *d, const char *hearthd, const char *model, const char *dir,
		  const char *pager, const char *l2_mib, const char *checkpoint_ms)
{
	char l2[256], state[256], pg[64], mib[64], ck[64];
	const char *extra[] = { "--kv-pages", "64", l2, state, pg, mib, ck, NULL };

	snprintf(l2, sizeof(l2), "--l2-path=%s/l2.kv", dir);
	snprintf(state, sizeof(state), "--state-dir=%s/state", dir);
	snprintf(pg, sizeof(pg), "--pager=%s", pager);
	snprintf(mib, sizeof(mib), "--l2-mib=%s", l2_mib);
	snprintf(ck, sizeof(ck), "--checkpoint-ms=%s", checkpoint_ms);
	th_daemon_start(d, hearthd, model, extra);
}

static bool stats_tiers(const char *sock, uint64_t *out, uint64_t *in, uint64_t *recomputed)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__GetStats gs = HEARTH__CONTROL__GET_STATS__INIT;
	Hearth__Control__Response *rep = NULL;
	int sock_fd = th_ctl_connect(sock), r;

	if (sock_fd < 0)
		return false;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_GET_STATS;
	req.get_stats = &gs;
	r = th_ctl_call(sock_fd, &req, &rep, NULL);
	close(sock_fd);
	if (r < 0 || !rep || !rep->stats)
		return false;
	*out = rep->stats->pages_out;
	*in = rep->stats->pages_in;
	*recomputed = rep->stats->recomputed;
	hearth__control__response__free_unpacked(rep, NULL);
	return true;
}

/* 1 and 2: eviction under load with one pager, then a SIGTERM restart. */
static void run_pager(const char *hearthd, const char *model, const char *pager)
{
	struct world w = { .rng = 42 };
	struct th_daemon d;
	uint32_t handles[N_SESS], lens[N_SESS];
	uint64_t out = 0, in = 0, rec = 0;
	char dir[64], what[64];
	struct hearth *h;

	th_tmpdir(dir, sizeof(dir), "/var/tmp");
	ref_init_kv(&w.ref, model, 1024);
	start(&d, hearthd, model, dir, pager, "64", "0");
	if (!th_daemon_alive(&d) && !strcmp(pager, "io_uring")) {
		th_log("skip io_uring pager: hearthd could not set it up here");
		th_daemon_dump_log(&d, 5);
		world_fini(&w);
		return;
	}
	h = attach(&d);
	build(&w, h, handles);
	for (int round = 0; round < 3; round++) {
		snprintf(what, sizeof(what), "%s round %d", pager, round);
		score_round(&w, h, handles, what);
	}
	CHECK(stats_tiers(d.sock, &out, &in, &rec), "stats");
	CHECK(out > 0 && in > 0, "%s: pages out %llu, in %llu: eviction did not happen", pager,
	      (unsigned long long)out, (unsigned long long)in);
	th_log("%s: %llu pages out, %llu in", pager, (unsigned long long)out, (unsigned long long)in);
	hearth_close(h);
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM: clean exit");

	/* Restart: the named sessions come back with their histories. */
	start(&d, hearthd, model, dir, pager, "64", "0");
	h = attach(&d);
	open_all(h, handles, lens);
	for (int i = 0; i < N_SESS; i++)
		CHECK(lens[i] == CTX + 3 * EVENT, "restart: session %d has %u tokens", i, lens[i]);
	snprintf(what, sizeof(what), "%s after restart", pager);
	score_round(&w, h, handles, what);
	hearth_close(h);
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM after restart: clean exit");

	/* 4: a corrupted L2 file: every page fails its checksum and is recomputed. */
	{
		char path[300];
		int fd;
		static char junk[1 << 16];

		snprintf(path, sizeof(path), "%s/l2.kv", dir);
		memset(junk, 0x5a, sizeof(junk));
		fd = open(path, O_WRONLY);
		REQUIRE(fd >= 0, "open l2");
		for (off_t o = 0; o < (8 << 20); o += sizeof(junk))
			CHECK(pwrite(fd, junk, sizeof(junk), o) == sizeof(junk), "corrupt");
		close(fd);
	}
	start(&d, hearthd, model, dir, pager, "64", "0");
	h = attach(&d);
	open_all(h, handles, lens);
	snprintf(what, sizeof(what), "%s after corruption", pager);
	score_round(&w, h, handles, what);
	CHECK(stats_tiers(d.sock, &out, &in, &rec), "stats");
	CHECK(rec > 0, "%s: corrupted pages: %llu sessions recomputed", pager, (unsigned long long)rec);
	hearth_close(h);
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM after corruption: clean exit");
	world_fini(&w);
}

/* 3: kill -9 while sessions are being paged out: histories checkpointed
 * before the kill rebuild every session. */
static void run_kill9(const char *hearthd, const char *model)
{
	struct world w = { .rng = 7 };
	struct th_daemon d;
	uint32_t handles[N_SESS], lens[N_SESS];
	char dir[64];
	struct hearth *h;

	th_tmpdir(dir, sizeof(dir), "/var/tmp");
	ref_init_kv(&w.ref, model, 1024);
	start(&d, hearthd, model, dir, "threads", "64", "20");
	h = attach(&d);
	build(&w, h, handles);
	score_round(&w, h, handles, "before kill -9");
	th_sleep_ms(300); /* a few checkpoints */
	score_round(&w, h, handles, "paging during kill -9");
	kill(d.pid, SIGKILL);
	th_daemon_wait_exit(&d, 10000);
	hearth_close(h);

	start(&d, hearthd, model, dir, "threads", "64", "20");
	h = attach(&d);
	open_all(h, handles, lens);
	for (int i = 0; i < N_SESS; i++) {
		/* The last round may or may not have been checkpointed. */
		CHECK(lens[i] == CTX + EVENT || lens[i] == CTX + 2 * EVENT,
		      "kill -9: session %d restored with %u tokens", i, lens[i]);
		if (lens[i] == CTX + EVENT) {
			/* Roll the reference back to what survived. */
			struct engine_seq *old = w.seq[i];
			w.seq[i] = ref_seq(&w.ref);
			ref_append(&w.ref, w.seq[i], engine_seq_tokens(old), CTX + EVENT);
			engine_seq_free(w.ref.e, old);
		}
	}
	score_round(&w, h, handles, "after kill -9");
	hearth_close(h);
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM after kill -9 restart: clean exit");
	world_fini(&w);
}

/* 5: an L2 of 1 MiB holds only a few sessions' pages: page-outs that find
 * no slot leave their sessions in L1; nothing is lost and scores stay right. */
static void run_small_l2(const char *hearthd, const char *model)
{
	struct world w = { .rng = 99 };
	struct th_daemon d;
	uint32_t handles[N_SESS];
	char dir[64];
	struct hearth *h;

	th_tmpdir(dir, sizeof(dir), "/var/tmp");
	ref_init_kv(&w.ref, model, 1024);
	start(&d, hearthd, model, dir, "threads", "1", "0");
	h = attach(&d);
	for (int i = 0; i < N_SESS; i++)
		handles[i] = 0;
	build(&w, h, handles);
	uint32_t enomem = 0, lens[N_SESS];
	score_round_ex(&w, h, handles, "small L2", true, &enomem);
	score_round_ex(&w, h, handles, "small L2 again", true, &enomem);
	th_log("small L2: %u of %u scores refused with ENOMEM", enomem, 2 * N_SESS);
	/* Every session is intact, whatever was refused. */
	open_all(h, handles, lens);
	for (int i = 0; i < N_SESS; i++)
		CHECK(lens[i] == engine_seq_len(w.seq[i]), "small L2: session %d has %u tokens, want %u",
		      i, lens[i], engine_seq_len(w.seq[i]));
	score_round_ex(&w, h, handles, "small L2 last", true, &enomem);
	hearth_close(h);
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM with a small L2: clean exit");
	world_fini(&w);
}

/* One session's tier as hearthd reports it ("" when absent). */
static void session_tier(const char *sock, const char *name, char *tier, size_t len)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__ListSessions ls = HEARTH__CONTROL__LIST_SESSIONS__INIT;
	Hearth__Control__Response *rep = NULL;
	int fd = th_ctl_connect(sock);

	tier[0] = 0;
	if (fd < 0)
		return;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_LIST_SESSIONS;
	req.list_sessions = &ls;
	if (th_ctl_call(fd, &req, &rep, NULL) == 0 && rep && rep->sessions)
		for (size_t i = 0; i < rep->sessions->n_sessions; i++)
			if (!strcmp(rep->sessions->sessions[i]->name, name))
				snprintf(tier, len, "%s", rep->sessions->sessions[i]->tier);
	if (rep)
		hearth__control__response__free_unpacked(rep, NULL);
	close(fd);
}

/* hearthctl evict / pin / unpin, by name. Returns the daemon's error. */
static int session_action(const char *sock, const char *name, int action)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__SessionAction sa = HEARTH__CONTROL__SESSION_ACTION__INIT;
	Hearth__Control__Response *rep = NULL;
	int fd = th_ctl_connect(sock), r;

	if (fd < 0)
		return fd;
	sa.name = (char *)name;
	sa.action = action;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_SESSION_ACTION;
	req.session_action = &sa;
	r = th_ctl_call(fd, &req, &rep, NULL);
	if (r == 0 && rep)
		r = rep->error;
	if (rep)
		hearth__control__response__free_unpacked(rep, NULL);
	close(fd);
	return r;
}

/* 6: pin keeps a session in L1 under pressure, evict moves one to L2 on
 * demand; then a daemon serving another model refuses the manifests. */
static void run_controls(const char *hearthd, const char *model)
{
	struct world w = { .rng = 5 };
	struct th_daemon d;
	uint32_t handles[N_SESS];
	char dir[64], tier[16], other[512];
	struct hearth *h;
	int r;

	th_tmpdir(dir, sizeof(dir), "/var/tmp");
	ref_init_kv(&w.ref, model, 1024);
	start(&d, hearthd, model, dir, "threads", "64", "0");
	h = attach(&d);
	{
		uint32_t lens[N_SESS];
		open_all(h, handles, lens);
	}
	CHECK(session_action(d.sock, "tier:0", HEARTH__CONTROL__SESSION_ACTION__ACTION__PIN) == 0,
	      "pin tier:0");
	CHECK(session_action(d.sock, "nope", HEARTH__CONTROL__SESSION_ACTION__ACTION__PIN) == -ENOENT,
	      "pin of an unknown session: ENOENT");
	hearth_close(h);
	h = attach(&d);
	build(&w, h, handles); /* reopens the same named sessions */
	score_round(&w, h, handles, "pinned");
	session_tier(d.sock, "tier:0", tier, sizeof(tier));
	CHECK(!strcmp(tier, "L1"), "pinned tier:0 is in %s, want L1", tier);
	r = session_action(d.sock, "tier:0", HEARTH__CONTROL__SESSION_ACTION__ACTION__EVICT);
	CHECK(r == -EBUSY, "evict of a pinned session: %d, want -EBUSY", r);
	CHECK(session_action(d.sock, "tier:0", HEARTH__CONTROL__SESSION_ACTION__ACTION__UNPIN) == 0,
	      "unpin");
	CHECK(session_action(d.sock, "tier:0", HEARTH__CONTROL__SESSION_ACTION__ACTION__EVICT) == 0,
	      "evict tier:0");
	for (int i = 0; i < 500; i++) {
		session_tier(d.sock, "tier:0", tier, sizeof(tier));
		if (!strcmp(tier, "L2"))
			break;
		th_sleep_ms(10);
	}
	CHECK(!strcmp(tier, "L2"), "evicted tier:0 is in %s, want L2", tier);
	score_round(&w, h, handles, "after evict");
	hearth_close(h);
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM: clean exit");

	/* The same state directory under another model: refused, clearly. */
	snprintf(other, sizeof(other), "%s", model);
	{
		char *slash = strrchr(other, '/');
		REQUIRE(slash, "model path");
		snprintf(slash + 1, sizeof(other) - (size_t)(slash + 1 - other), "qwen2-tiny");
	}
	{
		char l2[256], state[256];
		const char *extra[] = { "--kv-pages", "64", l2, state, NULL };
		snprintf(l2, sizeof(l2), "--l2-path=%s/l2-other.kv", dir);
		snprintf(state, sizeof(state), "--state-dir=%s/state", dir);
		th_daemon_start(&d, hearthd, other, extra);
	}
	CHECK(th_daemon_log_count(&d, "was made for another model") == N_SESS,
	      "another model: %u refusals logged, want %d", th_daemon_log_count(&d, "was made for another model"),
	      N_SESS);
	{
		struct th_session_info si[4];
		CHECK(th_sessions(d.sock, si, 4) == 0, "another model: no session restored");
	}
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM with refused manifests: clean exit");
	world_fini(&w);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s HEARTHD MODEL_DIR\n", argv[0]);
		return 2;
	}
	th_init("tiers", 300);
	run_pager(argv[1], argv[2], "threads");
	run_pager(argv[1], argv[2], "io_uring");
	run_kill9(argv[1], argv[2]);
	run_small_l2(argv[1], argv[2]);
	run_controls(argv[1], argv[2]);
	return th_result();
}

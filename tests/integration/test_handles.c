/* SPDX-License-Identifier: MIT */
/*
 * Session handles over many open/close cycles. A handle is positive (the
 * SESSION_OPEN completion carries it in res, where negative means -errno),
 * never 0, and a closed handle does not name a later session for a long
 * while (hearthd.h: not within 2047 reuses of its slot). With every other
 * slot of the session table held open, the open/close cycles all go through
 * one slot, so its generation counter runs through every value it can take
 * in a few thousand cycles. Afterwards
 * nothing may be left behind: no sessions, every KV page free. Then the
 * limits: max_sessions_per_client (-EMFILE) and max_clients (-EUSERS, which a
 * refused client must actually receive), and more clients than one
 * futex_waitv call watches, each still able to wake an idle reactor.
 *
 * Usage: test_integ_handles HEARTHD MODEL_DIR
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define CYCLES 4200u
#define HELD 63u

/* Connect, send a Hello, read the answer 20 ms later: its error, or -errno. */
static int refused_probe(const char *path)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__Hello h = HEARTH__CONTROL__HELLO__INIT;
	Hearth__Control__Response *rep;
	static uint8_t buf[HR_CTL_MAX_MSG];
	int fd = th_ctl_connect(path), eof = 0, r;

	if (fd < 0)
		return fd;
	h.client_name = (char *)"refused";
	h.model = (char *)"";
	req.id = 1;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_HELLO;
	req.hello = &h;
	r = hr_ctl_send(fd, &req.base, -1);
	if (r < 0 && r != -EPIPE && r != -ECONNRESET)
		goto out;
	th_sleep_ms(20);
	r = hr_ctl_recv(fd, buf, sizeof(buf), NULL, &eof);
	if (r < 0)
		goto out;
	if (eof) {
		r = -ENODATA;
		goto out;
	}
	rep = hearth__control__response__unpack(NULL, (size_t)r, buf + HR_CTL_HDR);
	r = rep ? rep->error : -EBADMSG;
	if (rep && r == 0 && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_HELLO)
		r = 1; /* accepted */
	if (rep)
		hearth__control__response__free_unpacked(rep, NULL);
out:
	close(fd);
	return r;
}

/* max_sessions_per_client and max_clients. */
static void limits(const char *hearthd, const char *model)
{
	static const char *const flags[] = { "--max-clients", "3", "--max-sessions-per-client", "4", NULL };
	struct th_daemon d;
	struct rc c[4];
	int32_t h[5];
	int r = 0;

	th_daemon_start(&d, hearthd, model, flags);
	th_sleep_ms(50); /* the harness's readiness probe has hung up by now */
	for (int i = 0; i < 3; i++) {
		r = rc_connect(&c[i], d.sock, NULL);
		REQUIRE(r == 0, "client %d of 3: %s", i, strerror(-r));
	}
	/* Refused connections, each sending its Hello at once, as a client
	 * library does, and reading the answer a little later (a client that
	 * was preempted): every one must learn why (EUSERS). A daemon that
	 * closes with the Hello unread makes the kernel reset the connection,
	 * and the queued refusal is lost (ECONNRESET). */
	{
		unsigned users = 0, reset = 0, other = 0;
		int last_other = 0;

		for (int i = 0; i < 20; i++) {
			r = refused_probe(d.sock);
			if (r == -EUSERS)
				users++;
			else if (r == -ECONNRESET || r == -EPIPE)
				reset++;
			else
				other++, last_other = r;
		}
		CHECK(users == 20, "20 connections over max_clients: %u got EUSERS, %u ECONNRESET or EPIPE "
				   "(the refusal was lost: the daemon closed with the client's Hello unread), "
				   "%u other (%d)", users, reset, other, last_other);
	}
	rc_close(&c[2]);
	for (uint64_t end = th_now_ns() + 2000000000ull; th_now_ns() < end; th_sleep_ms(5)) {
		r = rc_connect(&c[2], d.sock, NULL);
		if (r != -EUSERS && r != -ECONNRESET)
			break;
	}
	CHECK(r == 0, "a connection after one closed: %d", r);

	for (int i = 0; i < 4; i++) {
		h[i] = rc_open(&c[0], NULL, 0, NULL);
		CHECK(h[i] > 0, "session %d of 4: %d", i, h[i]);
	}
	h[4] = rc_open(&c[0], NULL, 0, NULL);
	CHECK(h[4] == -EMFILE, "a 5th session with max_sessions_per_client 4: %d, want -EMFILE", h[4]);
	h[4] = rc_open(&c[0], "lim:named", SHM_OPEN_F_CREATE, NULL);
	CHECK(h[4] == -EMFILE, "a 5th (named) session: %d, want -EMFILE", h[4]);
	CHECK(rc_close_session(&c[0], (uint32_t)h[0], 0) == 0, "close one");
	h[4] = rc_open(&c[0], "lim:named", SHM_OPEN_F_CREATE, NULL);
	CHECK(h[4] > 0, "a session after closing one: %d", h[4]);
	/* The limit is per connection. */
	r = rc_open(&c[1], "lim:named", 0, NULL);
	CHECK(r > 0, "another connection opens the named session: %d", r);
	CHECK(rc_close_session(&c[1], (uint32_t)r, 0) == 0, "close");
	CHECK(rc_close_session(&c[0], (uint32_t)h[4], SHM_CLOSE_F_DROP) == 0, "drop lim:named");
	for (int i = 0; i < 3; i++)
		rc_close(&c[i]);
	th_daemon_stop(&d, 20000);
}

/* More clients than one futex_waitv call can watch (128 words, one of them
 * the reactor's doorbell): a client past them must still wake an idle
 * reactor at once, not after its 1 s sleep. */
#define MANY 140
static void many_clients(const char *hearthd, const char *model)
{
	static const char *const flags[] = { "--max-clients", "200", NULL };
	static struct rc c[MANY];
	struct th_daemon d;
	uint64_t worst = 0;
	int worst_i = -1, n = 0;

	th_daemon_start(&d, hearthd, model, flags);
	for (; n < MANY; n++) {
		int r = rc_connect(&c[n], d.sock, &(struct rc_opts){ .sq_entries = 2, .cq_entries = 4,
								     .arena_bytes = 4096 });
		if (!CHECK(r == 0, "client %d of %d: %s", n, MANY, strerror(-r)))
			break;
	}
	static const int probe[] = { 0, 64, 126, 127, 128, MANY - 1 };

	for (unsigned k = 0; k < sizeof(probe) / sizeof(probe[0]); k++) {
		struct shm_sqe q = { .op = SHM_OP_NOP };
		int i = probe[k];
		uint64_t t0, dt;
		int32_t r;

		if (i >= n)
			continue;
		th_sleep_ms(20); /* the reactor goes to sleep */
		t0 = th_now_ns();
		r = rc_call(&c[i], &q, NULL);
		dt = th_now_ns() - t0;
		CHECK(r == 0, "client %d: NOP: %d", i, r);
		if (dt > worst) {
			worst = dt;
			worst_i = i;
		}
	}
	CHECK(worst < 200000000ull,
	      "with %d clients, a NOP from an idle client took %.0f ms (client %d): clients past the "
	      "127 the reactor's futex_waitv watches cannot wake it", n, worst / 1e6, worst_i);
	for (int i = 0; i < n; i++)
		rc_close(&c[i]);
	th_daemon_stop(&d, 20000);
}

int main(int argc, char **argv)
{
	struct th_daemon d;
	struct th_stats st;
	struct rc c;
	uint32_t *seen, first_bad = 0, n_bad = 0, n_dup = 0, n_unusable = 0, n_period = 0;
	int32_t tok[1] = { 42 }, held[HELD];

	th_init("handles", 80);
	REQUIRE(argc == 3, "usage: %s HEARTHD MODEL_DIR", argv[0]);
	seen = calloc(CYCLES, sizeof(*seen));
	REQUIRE(seen, "calloc");
	th_daemon_start(&d, argv[1], argv[2], NULL);
	REQUIRE(rc_connect(&c, d.sock, &(struct rc_opts){ .name = "churn" }) == 0, "connect");
	/* Hold all but one slot of the session table (64 at first): whatever
	 * order free slots are reused in, the churn below then runs through a
	 * single slot and its generation counter wraps (twice). */
	for (uint32_t i = 0; i < HELD; i++) {
		held[i] = rc_open(&c, NULL, 0, NULL);
		REQUIRE(held[i] > 0, "held session %u: %d", i, held[i]);
	}

	for (uint32_t i = 0; i < CYCLES; i++) {
		int32_t h = rc_open(&c, NULL, 0, NULL);
		uint32_t pos = 0;

		if (h <= 0) {
			if (!n_bad++)
				first_bad = i;
			if (h == TH_EHARNESS)
				th_fatal("lost contact with the daemon");
			/* A negative res may still be a session the daemon opened for us:
			 * its handle is the res bit pattern. Close it so the cycle goes on. */
			rc_close_session(&c, (uint32_t)h, 0);
			continue;
		}
		seen[i] = (uint32_t)h;
		if (i >= 2047 && seen[i - 2047] == (uint32_t)h)
			n_period++;
		/* Generations are finite: a handle may come back, but not within
		 * 2047 reuses of its slot (hearthd.h). */
		for (uint32_t j = i > 2046 ? i - 2046 : 0; j < i; j++)
			if (seen[j] == (uint32_t)h) {
				n_dup++;
				break;
			}
		/* The handle works (checked now and then: a forward pass costs
		 * ~0.2 ms), then it is closed. */
		if ((i % 64 == 0 || i > 2040) && (rc_append(&c, (uint32_t)h, tok, 1, &pos) != 1 || pos != 1))
			n_unusable++;
		CHECK(rc_close_session(&c, (uint32_t)h, 0) == 0, "cycle %u: close %x", i, (uint32_t)h);
	}
	CHECK(n_bad == 0,
	      "%u of %u SESSION_OPENs returned a handle <= 0, first at cycle %u: a slot's generation "
	      "counter (u16) shifted left by 20 bits overflows the u32 handle (bit 31 set = negative "
	      "res from cycle 2047, handle 0 at cycle 4095)",
	      n_bad, CYCLES, first_bad);
	CHECK(n_dup == 0, "%u handles repeated one of the 2046 handles before them", n_dup);
	th_log("%u of %u handles equal the one 2047 cycles earlier (the generation wrapped)", n_period,
	       CYCLES);
	CHECK(n_unusable == 0, "%u freshly opened sessions could not be appended to", n_unusable);
	for (uint32_t i = 0; i < HELD; i++)
		CHECK(rc_close_session(&c, (uint32_t)held[i], 0) == 0, "close held %u", i);
	rc_close(&c);

	/* Nothing left behind once the client has gone. */
	for (uint64_t end = th_now_ns() + 5000000000ull; th_now_ns() < end; th_sleep_ms(10)) {
		REQUIRE(th_stats(d.sock, &st) == 0, "stats");
		if (st.clients == 0 && st.sessions == 0 && st.kv_free == st.kv_total)
			break;
	}
	CHECK(st.clients == 0 && st.sessions == 0 && st.kv_free == st.kv_total,
	      "after the client left: %u clients, %u sessions, %u/%u KV pages free", st.clients,
	      st.sessions, st.kv_free, st.kv_total);
	th_daemon_stop(&d, 20000);
	free(seen);
	limits(argv[1], argv[2]);
	many_clients(argv[1], argv[2]);
	return th_result();
}

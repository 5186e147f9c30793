/* SPDX-License-Identifier: MIT */
/*
 * Session handles over many open/close cycles. A handle is positive (the
 * SESSION_OPEN completion carries it in res, where negative means -errno),
 * never 0, and a closed handle never names a later session ("a stale handle
 * never reaches a new session"). One client opening and closing an anonymous
 * session reuses the same slot each time, so the slot's generation counter
 * runs through every value it can take in a few thousand cycles. Afterwards
 * nothing may be left behind: no sessions, every KV page free.
 *
 * Usage: test_integ_handles HEARTHD MODEL_DIR
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define CYCLES 4200u

int main(int argc, char **argv)
{
	struct th_daemon d;
	struct th_stats st;
	struct rc c;
	uint32_t *seen, first_bad = 0, n_bad = 0, n_dup = 0, n_unusable = 0;
	int32_t tok[1] = { 42 };

	th_init("handles", 80);
	REQUIRE(argc == 3, "usage: %s HEARTHD MODEL_DIR", argv[0]);
	seen = calloc(CYCLES, sizeof(*seen));
	REQUIRE(seen, "calloc");
	th_daemon_start(&d, argv[1], argv[2], NULL);
	REQUIRE(rc_connect(&c, d.sock, &(struct rc_opts){ .name = "churn" }) == 0, "connect");

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
	CHECK(n_unusable == 0, "%u freshly opened sessions could not be appended to", n_unusable);
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
	return th_result();
}

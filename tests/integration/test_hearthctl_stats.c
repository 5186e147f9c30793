/* SPDX-License-Identifier: MIT */
/*
 * hearthctl stats: run it against hearthd, do work through libhearth, run it
 * again and check that the table moved by what was done (tokens, per-op
 * counts, p50 <= p99 <= max from the histogram), that --interval reports
 * only the interval, and that status still works.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "hearth/hearth.h"

static char out[65536];

static int ctl(const char *hearthctl, const char *sock, const char *a1, const char *a2,
	       const char *a3)
{
	const char *argv[] = { hearthctl, "--socket", sock, a1, a2, a3, NULL };
	int r = th_run_capture(argv, out, sizeof(out), 15000);

	return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

/* The value after `key` on the line that starts with it, or -1. */
static double field(const char *key)
{
	for (const char *p = out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (!strncmp(p, key, strlen(key)))
			return strtod(p + strlen(key), NULL);
	return -1;
}

/* Microseconds of a "850 ns" / "12.3 us" / "1.20 ms" / "< 10.0 us" cell (the
 * last read as its bound); -1 for "-". */
static double cell_us(const char *s, const char **ret_end)
{
	char *end;
	double v;

	while (*s == ' ')
		s++;
	if (*s == '-') {
		*ret_end = s + 1;
		return -1;
	}
	if (*s == '<')
		s += 2;
	v = strtod(s, &end);
	while (*end == ' ')
		end++;
	if (!strncmp(end, "ms", 2))
		v *= 1000;
	else if (!strncmp(end, "ns", 2))
		v /= 1000;
	*ret_end = end + 2;
	return v;
}

/* Row of op: count, errors, mean, p50, p99, max. */
static int op_row(const char *op, double *count, double q[4])
{
	char key[32];
	const char *p;

	snprintf(key, sizeof(key), "\n  %-14s ", op);
	p = strstr(out, key);
	if (!p)
		return -1;
	p += strlen(key);
	*count = strtod(p, (char **)&p);
	strtod(p, (char **)&p); /* errors */
	for (int i = 0; i < 4; i++)
		q[i] = cell_us(p, &p);
	return 0;
}

int main(int argc, char **argv)
{
	int32_t tok[10] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, labels[2] = { 3, 4 };
	double t0, t1, n_score, n_nop, q[4];
	struct th_daemon d;
	struct hearth *h;
	float probs[2];
	int64_t s;

	if (argc < 4) {
		fprintf(stderr, "usage: %s HEARTHD MODEL_DIR HEARTHCTL\n", argv[0]);
		return 2;
	}
	th_init("hearthctl_stats", 90);
	th_daemon_start(&d, argv[1], argv[2], NULL);

	REQUIRE(ctl(argv[3], d.sock, "stats", NULL, NULL) == 0, "hearthctl stats: %s", out);
	t0 = field("  tokens           ");
	CHECK(t0 == 0, "tokens before any work: %g\n%s", t0, out);
	CHECK(strstr(out, "stats since start") && strstr(out, "KV pages L1") &&
	      strstr(out, "queues           SQ 0 pending") && strstr(out, "loaded in") &&
	      strstr(out, "p50") && strstr(out, "p99"), "stats table lacks a line:\n%s", out);
	CHECK(op_row("score", &n_score, q) == 0 && n_score == 0 && q[1] < 0,
	      "score row before any work:\n%s", out);

	h = hearth_connect(&(struct hearth_opts){ .socket_path = d.sock, .client_name = "ctl" });
	REQUIRE(h, "connect");
	s = hearth_session_open(h, NULL, 0, NULL);
	REQUIRE(s > 0, "open");
	CHECK(hearth_append(h, (uint32_t)s, tok, 10) == 10, "append");
	for (int i = 0; i < 3; i++)
		CHECK(hearth_score(h, (uint32_t)s, tok, 2, labels, 2, probs) == 2, "score");
	for (int i = 0; i < 5; i++)
		CHECK(hearth_nop(h) == 0, "nop");

	REQUIRE(ctl(argv[3], d.sock, "stats", NULL, NULL) == 0, "hearthctl stats: %s", out);
	t1 = field("  tokens           ");
	CHECK(t1 - t0 == 16, "tokens moved by %g, want 16:\n%s", t1 - t0, out);
	CHECK(field("  clients          ") == 1, "one client:\n%s", out);
	CHECK(field("  busy             ") > 0 && field("  busy             ") <= 100,
	      "busy share after steps:\n%s", out);
	CHECK(op_row("score", &n_score, q) == 0 && n_score == 3, "3 scores:\n%s", out);
	CHECK(q[1] > 0 && q[1] <= q[2] && q[2] <= q[3] + 1e-9 && q[0] > 0,
	      "score: p50 %g <= p99 %g <= max %g us\n%s", q[1], q[2], q[3], out);
	CHECK(op_row("nop", &n_nop, q) == 0 && n_nop == 5 && q[1] > 0, "5 nops:\n%s", out);

	/* --interval: nothing happens during it, so nothing is counted. */
	REQUIRE(ctl(argv[3], d.sock, "--interval", "0.3", "stats") == 0, "stats --interval: %s", out);
	CHECK(strstr(out, "stats over the last"), "interval header:\n%s", out);
	CHECK(field("  tokens           ") == 0, "tokens over an idle interval:\n%s", out);
	CHECK(op_row("score", &n_score, q) == 0 && n_score == 0, "no score in the interval:\n%s", out);

	CHECK(ctl(argv[3], d.sock, "status", NULL, NULL) == 0 && strstr(out, "tokens processed   16"),
	      "hearthctl status still works:\n%s", out);
	CHECK(ctl(argv[3], d.sock, "--interval", "0", "stats") == 2, "bad interval is a usage error");
	hearth_close(h);
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM: clean exit");
	return th_result();
}

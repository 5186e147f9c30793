/* SPDX-License-Identifier: MIT */
/*
 * Prometheus /metrics: scrape hearthd, check the metric names, do work through
 * libhearth, scrape again and check that the counters moved by what was done.
 * The daemon runs with max_step_tokens 4, so a 10-token append is 3 steps.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "hearth/hearth.h"

static int free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

/* GET path; returns the body (malloc'ed) and the status in *ret_status. */
static char *http_get(int port, const char *path, int *ret_status)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	size_t cap = 1 << 16, len = 0;
	char req[256], *buf = malloc(cap), *body;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	ssize_t n;

	*ret_status = -1;
	if (!buf || fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		free(buf);
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
	if (write(fd, req, strlen(req)) < 0) {
		close(fd);
		free(buf);
		return NULL;
	}
	while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
		len += (size_t)n;
		if (len + 1 == cap) {
			char *p = realloc(buf, cap *= 2);
			if (!p)
				break;
			buf = p;
		}
	}
	close(fd);
	buf[len] = 0;
	sscanf(buf, "HTTP/%*s %d", ret_status);
	body = strstr(buf, "\r\n\r\n");
	body = strdup(body ? body + 4 : "");
	free(buf);
	return body;
}

static double metric_exact(const char *text, const char *series)
{
	size_t l = strlen(series);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (!strncmp(p, series, l) && p[l] == ' ')
			return strtod(p + l + 1, NULL);
	return -1;
}

/* The value of a series of the model "default": every per-model series
 * carries model="NAME" as its first label (daemon-wide ones have none). */
static double metric(const char *text, const char *series)
{
	char key[256];
	const char *brace = strchr(series, '{');

	if (!strncmp(series, "hearth_uptime_seconds", 21) || !strncmp(series, "hearth_models", 13))
		return metric_exact(text, series);
	if (brace)
		snprintf(key, sizeof(key), "%.*s{model=\"default\",%s", (int)(brace - series), series,
			 brace + 1);
	else
		snprintf(key, sizeof(key), "%s{model=\"default\"}", series);
	return metric_exact(text, key);
}

/* How much series moved from scrape a to scrape b. */
static double moved(const char *a, const char *b, const char *series)
{
	return metric(b, series) - metric(a, series);
}

#define BATCH "hearth_sched_batch_sequences"

/* The batch histogram is cumulative, and its +Inf bucket is its count. */
static void check_batch_histogram(const char *text)
{
	char series[128];
	double prev = 0;

	for (unsigned le = 1; le <= 256; le *= 2) {
		double v;

		snprintf(series, sizeof(series), BATCH "_bucket{le=\"%u\"}", le);
		v = metric(text, series);
		CHECK(v >= prev, "%s = %g below the previous bucket %g", series, v, prev);
		prev = v;
	}
	CHECK(metric(text, BATCH "_bucket{le=\"+Inf\"}") >= prev, "+Inf bucket below le=256");
	CHECK(metric(text, BATCH "_bucket{le=\"+Inf\"}") == metric(text, BATCH "_count"),
	      "+Inf bucket %g, count %g", metric(text, BATCH "_bucket{le=\"+Inf\"}"),
	      metric(text, BATCH "_count"));
}

/*
 * Four sessions, an APPEND of 2 tokens each, submitted together: with a
 * budget of 4 tokens a step holds one or two of them. However they were
 * batched, the histogram counts every step once, in the right bucket.
 */
static void batched_appends(struct hearth *h, int port)
{
	int64_t s[4];
	int32_t *tok = hearth_arena_alloc(h, 2 * sizeof(int32_t));
	struct hearth_cqe *cqe;
	char *a, *b;
	double steps, ones, twos;
	int status, n_done = 0;

	REQUIRE(tok, "arena");
	tok[0] = 5;
	tok[1] = 6;
	for (int i = 0; i < 4; i++) {
		s[i] = hearth_session_open(h, NULL, 0, NULL);
		REQUIRE(s[i] > 0, "open %d", i);
	}
	a = http_get(port, "/metrics", &status);
	REQUIRE(a && status == 200, "GET /metrics: status %d", status);
	for (int i = 0; i < 4; i++) {
		struct hearth_sqe *sqe = hearth_get_sqe(h);

		REQUIRE(sqe, "sqe %d", i);
		hearth_prep_append(h, sqe, (uint32_t)s[i], tok, 2);
		sqe->user_data = (uint64_t)i + 1;
	}
	CHECK(hearth_submit(h) == 4, "submit 4");
	while (n_done < 4 && hearth_wait_cqe(h, &cqe, 10 * 1000000000LL) == 0) {
		CHECK(cqe->res == 2, "append %llu: res %d", (unsigned long long)cqe->user_data,
		      cqe->res);
		hearth_cqe_seen(h, cqe);
		n_done++;
	}
	CHECK(n_done == 4, "%d of 4 appends completed", n_done);
	b = http_get(port, "/metrics", &status);
	REQUIRE(b && status == 200, "GET /metrics: status %d", status);
	check_batch_histogram(b);
	steps = moved(a, b, "hearth_sched_steps_total");
	ones = moved(a, b, BATCH "_bucket{le=\"1\"}");
	twos = moved(a, b, BATCH "_bucket{le=\"2\"}") - ones;
	CHECK(steps >= 2 && steps <= 4, "4 appends of 2 tokens in %g steps of 4 tokens", steps);
	CHECK(moved(a, b, BATCH "_count") == steps, "histogram count moved by %g, steps by %g",
	      moved(a, b, BATCH "_count"), steps);
	CHECK(moved(a, b, "hearth_steps_total") == steps, "engine steps moved by %g, scheduler's by %g",
	      moved(a, b, "hearth_steps_total"), steps);
	/* Every step in the duration histogram, and all within its +Inf bucket. */
	CHECK(moved(a, b, "hearth_sched_step_duration_seconds_count") == steps &&
		      moved(a, b, "hearth_sched_step_duration_seconds_bucket{le=\"+Inf\"}") == steps,
	      "step durations moved by %g, steps by %g",
	      moved(a, b, "hearth_sched_step_duration_seconds_count"), steps);
	CHECK(ones + 2 * twos == 4 && ones + twos == steps,
	      "%g steps of one sequence and %g of two: not the 4 appends", ones, twos);
	CHECK(moved(a, b, "hearth_sched_step_tokens_total") == 8, "step tokens moved by %g, want 8",
	      moved(a, b, "hearth_sched_step_tokens_total"));
	CHECK(metric(b, "hearth_sched_busy_ratio") > 0 && metric(b, "hearth_sched_busy_ratio") <= 1,
	      "busy ratio %g after steps", metric(b, "hearth_sched_busy_ratio"));
	CHECK(metric(b, "hearth_sched_queued_requests") == 0 &&
	      metric(b, "hearth_sched_active_sessions") == 0, "queued %g on %g sessions after all",
	      metric(b, "hearth_sched_queued_requests"), metric(b, "hearth_sched_active_sessions"));
	printf("batched appends: %g steps, %g of one sequence, %g of two\n", steps, ones, twos);
	free(a);
	free(b);
	for (int i = 0; i < 4; i++)
		CHECK(hearth_session_close(h, (uint32_t)s[i], 0) == 0, "close %d", i);
}

int main(int argc, char **argv)
{
	static const char *const names[] = {
		"hearth_request_duration_seconds_bucket{op=\"score\",le=\"0.001\"}",
		"hearth_request_duration_seconds_count{op=\"nop\"}",
		"hearth_request_errors_total{op=\"append\"}",
		"hearth_tokens_total", "hearth_steps_total", "hearth_score_steps_total",
		"hearth_graph_captures_total", "hearth_graph_recaptures_total",
		"hearth_graph_capture_seconds_total",
		"hearth_clients", "hearth_sessions",
		"hearth_kv_pages{tier=\"L1\",state=\"free\"}", "hearth_l2_bytes_total{direction=\"out\"}",
		"hearth_model_load_seconds", "hearth_uptime_seconds", "hearth_disconnects_total",
		"hearth_sched_steps_total", "hearth_sched_step_tokens_total",
		"hearth_sched_step_seconds_total", BATCH "_bucket{le=\"1\"}",
		BATCH "_bucket{le=\"256\"}", BATCH "_bucket{le=\"+Inf\"}", BATCH "_count",
		"hearth_sched_timeouts_total", "hearth_sched_cancels_total",
		"hearth_sched_kv_waits_total", "hearth_sched_interactive_skips_total",
		"hearth_sched_interactive_skip_max", "hearth_sched_queued_requests",
		"hearth_sched_active_sessions", "hearth_kv_bytes",
		"hearth_device_memory_bytes{state=\"free\"}",
		"hearth_device_memory_bytes{state=\"total\"}", "hearth_models{state=\"ready\"}",
	};
	struct th_daemon d;
	char portflag[64], *a, *b;
	int port, status;
	struct hearth *h;
	int32_t tok[10] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, labels[2] = { 3, 4 };
	float probs[2];
	int64_t s;

	if (argc < 3) {
		fprintf(stderr, "usage: %s HEARTHD MODEL_DIR\n", argv[0]);
		return 2;
	}
	th_init("metrics", 60);
	port = free_port();
	REQUIRE(port > 0, "free port");
	snprintf(portflag, sizeof(portflag), "--metrics-port=%d", port);
	th_daemon_start(&d, argv[1], argv[2],
			(const char *const[]){ portflag, "--max-step-tokens=4", NULL });

	a = http_get(port, "/metrics", &status);
	REQUIRE(a && status == 200, "GET /metrics: status %d", status);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		CHECK(metric(a, names[i]) >= 0, "metric %s missing", names[i]);
	CHECK(strstr(a, "# TYPE hearth_request_duration_seconds histogram"), "histogram TYPE line");
	CHECK(strstr(a, "# TYPE " BATCH " histogram"), "batch histogram TYPE line");
	CHECK(metric(a, "hearth_models{state=\"ready\"}") == 1, "one model ready");
	CHECK(metric(a, "hearth_kv_bytes") > 0, "KV pool bytes");
	CHECK(metric(a, "hearth_device_memory_bytes{state=\"total\"}") > 0 &&
	      metric(a, "hearth_device_memory_bytes{state=\"free\"}") <=
		      metric(a, "hearth_device_memory_bytes{state=\"total\"}"),
	      "device memory: free %g of %g", metric(a, "hearth_device_memory_bytes{state=\"free\"}"),
	      metric(a, "hearth_device_memory_bytes{state=\"total\"}"));
	{
		/* One HELP and one TYPE line per family, whatever the models. */
		const char *p = strstr(a, "# TYPE hearth_tokens_total counter");
		CHECK(p && !strstr(p + 1, "# TYPE hearth_tokens_total"), "one TYPE line per family");
	}
	check_batch_histogram(a);

	h = hearth_connect(&(struct hearth_opts){ .socket_path = d.sock, .client_name = "metrics" });
	REQUIRE(h, "connect");
	s = hearth_session_open(h, NULL, 0, NULL);
	REQUIRE(s > 0, "open");
	CHECK(hearth_append(h, (uint32_t)s, tok, 10) == 10, "append");
	for (int i = 0; i < 3; i++)
		CHECK(hearth_score(h, (uint32_t)s, tok, 2, labels, 2, probs) == 2, "score");
	for (int i = 0; i < 5; i++)
		CHECK(hearth_nop(h) == 0, "nop");

	b = http_get(port, "/metrics", &status);
	REQUIRE(b && status == 200, "second GET /metrics: status %d", status);
	CHECK(metric(b, "hearth_tokens_total") - metric(a, "hearth_tokens_total") == 16,
	      "tokens_total moved by %g, want 16", metric(b, "hearth_tokens_total") - metric(a, "hearth_tokens_total"));
	CHECK(metric(b, "hearth_request_duration_seconds_count{op=\"score\"}") == 3, "3 scores counted");
	CHECK(metric(b, "hearth_request_duration_seconds_count{op=\"nop\"}") == 5, "5 nops counted");
	CHECK(metric(b, "hearth_request_duration_seconds_bucket{op=\"score\",le=\"+Inf\"}") == 3,
	      "+Inf bucket holds every score");
	CHECK(metric(b, "hearth_steps_total") > metric(a, "hearth_steps_total"), "steps moved");
	/* Each score's step outputs only its labels: no LM head over the vocabulary. */
	CHECK(moved(a, b, "hearth_score_steps_total") == 3, "score steps moved by %g, want 3",
	      moved(a, b, "hearth_score_steps_total"));
	/* One session, one request at a time: the append in 3 steps (4 + 4 + 2
	 * tokens), a score in one each, every step of one sequence. */
	CHECK(moved(a, b, "hearth_sched_steps_total") == 6, "scheduler steps moved by %g, want 6",
	      moved(a, b, "hearth_sched_steps_total"));
	CHECK(moved(a, b, BATCH "_count") == 6, "batch histogram count moved by %g, want 6",
	      moved(a, b, BATCH "_count"));
	CHECK(moved(a, b, BATCH "_bucket{le=\"1\"}") == 6, "le=1 bucket moved by %g, want 6",
	      moved(a, b, BATCH "_bucket{le=\"1\"}"));
	CHECK(moved(a, b, "hearth_sched_step_tokens_total") == 16, "step tokens moved by %g, want 16",
	      moved(a, b, "hearth_sched_step_tokens_total"));
	CHECK(moved(a, b, "hearth_sched_step_seconds_total") > 0, "step time did not move");
	check_batch_histogram(b);
	CHECK(metric(b, "hearth_clients") == 1 && metric(b, "hearth_sessions") == 1,
	      "one client, one session");
	free(a);
	free(b);
	batched_appends(h, port);
	hearth_close(h);

	a = http_get(port, "/health", &status);
	CHECK(a && status == 200 && !strcmp(a, "ok\n"), "/health: %d", status);
	free(a);
	a = http_get(port, "/nope", &status);
	CHECK(status == 404, "unknown path: %d", status);
	free(a);
	CHECK(th_daemon_stop(&d, 30000), "SIGTERM: clean exit");
	return th_result();
}

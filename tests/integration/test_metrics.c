/* SPDX-License-Identifier: MIT */
/*
 * Prometheus /metrics: scrape hearthd, check the metric names, do work through
 * libhearth, scrape again and check that the counters moved by what was done.
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

static double metric(const char *text, const char *series)
{
	size_t l = strlen(series);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (!strncmp(p, series, l) && p[l] == ' ')
			return strtod(p + l + 1, NULL);
	return -1;
}

int main(int argc, char **argv)
{
	static const char *const names[] = {
		"hearth_request_duration_seconds_bucket{op=\"score\",le=\"0.001\"}",
		"hearth_request_duration_seconds_count{op=\"nop\"}",
		"hearth_request_errors_total{op=\"append\"}",
		"hearth_tokens_total", "hearth_steps_total", "hearth_clients", "hearth_sessions",
		"hearth_kv_pages{tier=\"L1\",state=\"free\"}", "hearth_l2_bytes_total{direction=\"out\"}",
		"hearth_model_load_seconds", "hearth_uptime_seconds", "hearth_disconnects_total",
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
	th_daemon_start(&d, argv[1], argv[2], (const char *const[]){ portflag, NULL });

	a = http_get(port, "/metrics", &status);
	REQUIRE(a && status == 200, "GET /metrics: status %d", status);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		CHECK(metric(a, names[i]) >= 0, "metric %s missing", names[i]);
	CHECK(strstr(a, "# TYPE hearth_request_duration_seconds histogram"), "histogram TYPE line");

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
	CHECK(metric(b, "hearth_clients") == 1 && metric(b, "hearth_sessions") == 1,
	      "one client, one session");
	free(a);
	free(b);
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

/* SPDX-License-Identifier: MIT */
/*
 * Prometheus text exposition (GET /metrics) and a liveness probe (GET
 * /health) on an HTTP port, served by libmicrohttpd's own thread. Each scrape
 * asks the reactor for a snapshot (one command, as hearthctl status does), so
 * the hot path keeps plain counters and no lock.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hearthd.h"
#include "hr_common.h"
#include "hr_log.h"

struct text {
	char *buf;
	size_t len, cap;
	bool oom;
};

static void put(struct text *t, const char *fmt, ...) hr_printf_fmt(2, 3);
static void put(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		size_t room = t->cap - t->len;
		va_start(ap, fmt);
		n = vsnprintf(t->buf ? t->buf + t->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0 || t->oom)
			return;
		if ((size_t)n < room) {
			t->len += (size_t)n;
			return;
		}
		char *p = realloc(t->buf, t->cap * 2 + (size_t)n + 1);
		if (!p) {
			t->oom = true;
			return;
		}
		t->buf = p;
		t->cap = t->cap * 2 + (size_t)n + 1;
	}
}

static void counter(struct text *t, const char *name, const char *help, uint64_t v)
{
	put(t, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
	    (unsigned long long)v);
}

static void gauge(struct text *t, const char *name, const char *help, double v)
{
	put(t, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

/*
 * The scheduler's steps. Sequences per step is a histogram with bounds at
 * powers of two: batch[] counts steps per range (1, 2, 3-4, ..., 129-256,
 * more), so the cumulative count at le=2^b is the sum of the first b + 1
 * ranges. It has no _sum: the scheduler keeps no total of sequences.
 */
static void render_sched(const struct hd_sched_stats *s, struct text *t)
{
	const char *h = "hearth_sched_batch_sequences";
	uint64_t cum = 0;

	counter(t, "hearth_sched_steps_total", "Forward steps formed by the scheduler.", s->steps);
	counter(t, "hearth_sched_step_tokens_total", "Token positions computed in those steps.",
		s->step_tokens);
	put(t, "# HELP hearth_sched_step_seconds_total Time spent in those steps.\n"
	       "# TYPE hearth_sched_step_seconds_total counter\n"
	       "hearth_sched_step_seconds_total %.9f\n", s->step_ns / 1e9);
	put(t, "# HELP %s Sequences (sessions) in each forward step.\n# TYPE %s histogram\n", h, h);
	for (unsigned b = 0; b < HD_BATCH_BUCKETS - 1; b++) {
		cum += s->batch[b];
		put(t, "%s_bucket{le=\"%u\"} %llu\n", h, 1u << b, (unsigned long long)cum);
	}
	cum += s->batch[HD_BATCH_BUCKETS - 1];
	put(t, "%s_bucket{le=\"+Inf\"} %llu\n%s_count %llu\n", h, (unsigned long long)cum, h,
	    (unsigned long long)cum);
	counter(t, "hearth_sched_timeouts_total",
		"Requests whose deadline passed before they started (-ETIMEDOUT).", s->timeouts);
	counter(t, "hearth_sched_cancels_total", "Requests cancelled (-ECANCELED).", s->cancels);
	counter(t, "hearth_sched_kv_waits_total",
		"Requests that waited for KV pages to be paged out.", s->kv_waits);
	gauge(t, "hearth_sched_queued_requests",
	      "Requests queued on sessions (running or waiting), not yet completed.", s->queued);
	gauge(t, "hearth_sched_active_sessions", "Sessions with queued requests.", s->active);
}

static void render(struct hd_daemon *d, const struct hd_metrics *m, struct text *t)
{
	const char *h = "hearth_request_duration_seconds";

	put(t, "# HELP %s Time from reading a descriptor to its (final) completion, per op.\n"
	       "# TYPE %s histogram\n", h, h);
	for (unsigned op = 0; op < SHM_OP__MAX; op++) {
		const struct hd_op_stats *st = &m->ops[op];
		uint64_t cum = 0;

		for (unsigned b = 0; b < HD_LAT_BUCKETS; b++) {
			cum += st->buckets[b];
			put(t, "%s_bucket{op=\"%s\",le=\"%g\"} %llu\n", h, shm_op_name(op),
			    hd_lat_bounds_ns[b] / 1e9, (unsigned long long)cum);
		}
		put(t, "%s_bucket{op=\"%s\",le=\"+Inf\"} %llu\n", h, shm_op_name(op),
		    (unsigned long long)st->count);
		put(t, "%s_sum{op=\"%s\"} %.9f\n%s_count{op=\"%s\"} %llu\n", h, shm_op_name(op),
		    st->total_ns / 1e9, h, shm_op_name(op), (unsigned long long)st->count);
	}
	put(t, "# HELP hearth_request_errors_total Requests that completed with an error, per op.\n"
	       "# TYPE hearth_request_errors_total counter\n");
	for (unsigned op = 0; op < SHM_OP__MAX; op++)
		put(t, "hearth_request_errors_total{op=\"%s\"} %llu\n", shm_op_name(op),
		    (unsigned long long)m->ops[op].errors);
	counter(t, "hearth_tokens_total", "Tokens appended or generated.", m->tokens);
	counter(t, "hearth_steps_total", "Forward steps run by the engine.", m->steps);
	render_sched(&m->sched, t);
	counter(t, "hearth_disconnects_total", "Client connections ended.", m->disconnects);
	counter(t, "hearth_bad_descriptors_total", "Malformed descriptors answered with an error.",
		m->bad_descriptors);
	gauge(t, "hearth_clients", "Attached client connections.", m->clients);
	gauge(t, "hearth_sessions", "Open sessions.", m->sessions);
	put(t, "# HELP hearth_kv_pages KV cache pages of tier L1.\n# TYPE hearth_kv_pages gauge\n"
	       "hearth_kv_pages{tier=\"L1\",state=\"free\"} %u\n"
	       "hearth_kv_pages{tier=\"L1\",state=\"total\"} %u\n"
	       "hearth_kv_pages{tier=\"L2\",state=\"free\"} %u\n"
	       "hearth_kv_pages{tier=\"L2\",state=\"total\"} %u\n",
	    m->kv_free, m->kv_total, m->tier.l2_free, m->tier.l2_slots);
	gauge(t, "hearth_sessions_not_in_l1", "Sessions paged out to L2 or moving.", m->sessions_l2);
	put(t, "# HELP hearth_l2_bytes_total Bytes moved between L1 and L2.\n"
	       "# TYPE hearth_l2_bytes_total counter\n"
	       "hearth_l2_bytes_total{direction=\"out\"} %llu\n"
	       "hearth_l2_bytes_total{direction=\"in\"} %llu\n",
	    (unsigned long long)m->tier.bytes_out, (unsigned long long)m->tier.bytes_in);
	put(t, "# HELP hearth_l2_transfer_seconds Whole-session page-outs and page-ins.\n"
	       "# TYPE hearth_l2_transfer_seconds summary\n"
	       "hearth_l2_transfer_seconds_sum{direction=\"out\"} %.9f\n"
	       "hearth_l2_transfer_seconds_count{direction=\"out\"} %llu\n"
	       "hearth_l2_transfer_seconds_sum{direction=\"in\"} %.9f\n"
	       "hearth_l2_transfer_seconds_count{direction=\"in\"} %llu\n",
	    m->tier.out_ns / 1e9, (unsigned long long)m->tier.outs, m->tier.in_ns / 1e9,
	    (unsigned long long)m->tier.ins);
	counter(t, "hearth_l2_errors_total", "Page-outs kept in L1 and page-ins recomputed.",
		m->tier.errors);
	gauge(t, "hearth_model_load_seconds", "Time to load the model's weights.",
	      d->model->load_seconds);
	gauge(t, "hearth_model_weight_bytes", "Bytes of the model's weights as stored.",
	      (double)d->model->weight_bytes);
	gauge(t, "hearth_uptime_seconds", "Seconds since hearthd started.",
	      (hr_now_ns() - d->start_ns) / 1e9);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
			     char *body, size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;

	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *data,
				  size_t *data_size, void **state)
{
	struct hd_daemon *d = cls;
	struct hd_metrics m;
	struct hd_cmd cmd = { .type = HD_CMD_METRICS, .out = &m };
	struct text t = { 0 };

	(void)version;
	(void)data;
	(void)data_size;
	(void)state;
	if (strcmp(method, "GET") && strcmp(method, "HEAD"))
		return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
			     strdup("only GET\n"), 9);
	if (!strcmp(url, "/health"))
		return reply(conn, MHD_HTTP_OK, "text/plain", strdup("ok\n"), 3);
	if (strcmp(url, "/metrics"))
		return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", strdup("not found\n"), 10);
	/* hd_metrics_stop() runs before the reactor stops, so this call returns. */
	if (hd_reactor_call(d, &cmd) < 0)
		return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain",
			     strdup("stopping\n"), 9);
	render(d, &m, &t);
	if (t.oom) {
		free(t.buf);
		return MHD_NO;
	}
	return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", t.buf, t.len);
}

int hd_metrics_start(struct hd_daemon *d)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)d->cfg.metrics_port) };

	if (!d->cfg.metrics_port)
		return 0;
	inet_pton(AF_INET, d->cfg.metrics_addr, &sa.sin_addr);
	d->http = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
				   (uint16_t)d->cfg.metrics_port, NULL, NULL, on_request, d,
				   MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
				   MHD_OPTION_CONNECTION_LIMIT, (unsigned int)16,
				   MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)10, MHD_OPTION_END);
	if (!d->http) {
		hr_err("metrics: cannot listen on %s:%u", d->cfg.metrics_addr, d->cfg.metrics_port);
		return -EADDRINUSE;
	}
	hr_info("metrics on http://%s:%u/metrics", d->cfg.metrics_addr, d->cfg.metrics_port);
	return 0;
}

void hd_metrics_stop(struct hd_daemon *d)
{
	if (d->http)
		MHD_stop_daemon(d->http);
	d->http = NULL;
}

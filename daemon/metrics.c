/* SPDX-License-Identifier: MIT */
/*
 * Prometheus text exposition (GET /metrics) and a liveness probe (GET
 * /health) on an HTTP port, served by libmicrohttpd's own thread. Each scrape
 * asks every model's reactor for a snapshot (one command, as hearthctl status
 * does), so the hot path keeps plain counters and no lock.
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

/*
 * Several models share one exposition: every family is written once, with a
 * series per model (label model="NAME"). Series go into their family's own
 * buffer as each model is rendered; the families are joined at the end, in
 * the order they first appeared.
 */
#define MAX_FAMILIES 64

struct family {
	const char *name, *type, *help;
	struct text body;
};

struct expo {
	struct family fam[MAX_FAMILIES];
	unsigned n;
	bool oom;
};

static struct text *fam(struct expo *e, const char *name, const char *type, const char *help)
{
	static struct text sink; /* past MAX_FAMILIES (a bug): marked oom, never sent */

	for (unsigned i = 0; i < e->n; i++)
		if (!strcmp(e->fam[i].name, name))
			return &e->fam[i].body;
	if (e->n == MAX_FAMILIES) {
		e->oom = true;
		sink.len = 0;
		return &sink;
	}
	e->fam[e->n] = (struct family){ .name = name, .type = type, .help = help };
	return &e->fam[e->n++].body;
}

static void counter(struct expo *e, const char *mn, const char *name, const char *help, uint64_t v)
{
	put(fam(e, name, "counter", help), "%s{model=\"%s\"} %llu\n", name, mn,
	    (unsigned long long)v);
}

/* A counter of seconds kept in nanoseconds. */
static void counter_s(struct expo *e, const char *mn, const char *name, const char *help,
		      uint64_t ns)
{
	put(fam(e, name, "counter", help), "%s{model=\"%s\"} %.9f\n", name, mn, ns / 1e9);
}

static void gauge(struct expo *e, const char *mn, const char *name, const char *help, double v)
{
	put(fam(e, name, "gauge", help), "%s{model=\"%s\"} %.17g\n", name, mn, v);
}

/*
 * The scheduler's steps. Sequences per step is a histogram with bounds at
 * powers of two: batch[] counts steps per range (1, 2, 3-4, ..., 129-256,
 * more), so the cumulative count at le=2^b is the sum of the first b + 1
 * ranges. It has no _sum: the scheduler keeps no total of sequences.
 */
static void render_sched(struct expo *e, const char *mn, const struct hd_sched_stats *s)
{
	const char *h = "hearth_sched_batch_sequences";
	struct text *t;
	uint64_t cum = 0;

	counter(e, mn, "hearth_sched_steps_total", "Forward steps formed by the scheduler.", s->steps);
	counter(e, mn, "hearth_sched_step_tokens_total", "Token positions computed in those steps.",
		s->step_tokens);
	counter_s(e, mn, "hearth_sched_step_seconds_total", "Time spent in those steps.", s->step_ns);
	t = fam(e, h, "histogram", "Sequences (sessions) in each forward step.");
	for (unsigned b = 0; b < HD_BATCH_BUCKETS - 1; b++) {
		cum += s->batch[b];
		put(t, "%s_bucket{model=\"%s\",le=\"%u\"} %llu\n", h, mn, 1u << b,
		    (unsigned long long)cum);
	}
	cum += s->batch[HD_BATCH_BUCKETS - 1];
	put(t, "%s_bucket{model=\"%s\",le=\"+Inf\"} %llu\n%s_count{model=\"%s\"} %llu\n", h, mn,
	    (unsigned long long)cum, h, mn, (unsigned long long)cum);
	h = "hearth_sched_step_duration_seconds";
	t = fam(e, h, "histogram", "Duration of each forward step.");
	cum = 0;
	for (unsigned b = 0; b < HD_STEP_BUCKETS - 1; b++) {
		cum += s->step_time[b];
		put(t, "%s_bucket{model=\"%s\",le=\"%g\"} %llu\n", h, mn, 0.00025 * (1u << b),
		    (unsigned long long)cum);
	}
	cum += s->step_time[HD_STEP_BUCKETS - 1];
	put(t, "%s_bucket{model=\"%s\",le=\"+Inf\"} %llu\n%s_sum{model=\"%s\"} %.9f\n"
	       "%s_count{model=\"%s\"} %llu\n", h, mn, (unsigned long long)cum, h, mn,
	    s->step_ns / 1e9, h, mn, (unsigned long long)cum);
	counter(e, mn, "hearth_sched_timeouts_total",
		"Requests whose deadline passed before they started (-ETIMEDOUT).", s->timeouts);
	counter(e, mn, "hearth_sched_cancels_total", "Requests cancelled (-ECANCELED).", s->cancels);
	counter(e, mn, "hearth_sched_kv_waits_total",
		"Requests that waited for KV pages to be paged out.", s->kv_waits);
	counter(e, mn, "hearth_sched_interactive_skips_total",
		"Steps formed while a runnable interactive request was left out of them.",
		s->interactive_skips);
	gauge(e, mn, "hearth_sched_interactive_skip_max",
	      "The most steps one interactive request was left out of (0: none waited).",
	      s->interactive_skip_max);
	counter(e, mn, "hearth_sched_burst_holds_total",
		"Steps held back while a burst of requests kept arriving (batch_wait_us).",
		s->burst_holds);
	counter_s(e, mn, "hearth_sched_burst_hold_seconds_total",
		  "Time steps were held back for bursts.", s->burst_hold_ns);
	gauge(e, mn, "hearth_sched_queued_requests",
	      "Requests queued on sessions (running or waiting), not yet completed.", s->queued);
	gauge(e, mn, "hearth_sched_active_sessions", "Sessions with queued requests.", s->active);
	gauge(e, mn, "hearth_sched_busy_ratio",
	      "Share of recent time spent in steps, time held for bursts left out (an average "
	      "over about 32 steps; batch_wait_us holds nothing above 0.9).",
	      s->busy_ppm / 1e6);
}

/* One model's series. */
static void render(struct expo *e, const char *mn, const struct hd_metrics *m,
		   const struct model *model)
{
	const char *h = "hearth_request_duration_seconds";
	struct text *t;

	t = fam(e, h, "histogram", "Time from reading a descriptor to its (final) completion, per op.");
	for (unsigned op = 0; op < SHM_OP__MAX; op++) {
		const struct hd_op_stats *st = &m->ops[op];
		const char *on = shm_op_name(op);
		uint64_t cum = 0;

		for (unsigned b = 0; b < HD_LAT_BUCKETS; b++) {
			cum += st->buckets[b];
			put(t, "%s_bucket{model=\"%s\",op=\"%s\",le=\"%g\"} %llu\n", h, mn, on,
			    hd_lat_bounds_ns[b] / 1e9, (unsigned long long)cum);
		}
		put(t, "%s_bucket{model=\"%s\",op=\"%s\",le=\"+Inf\"} %llu\n", h, mn, on,
		    (unsigned long long)st->count);
		put(t, "%s_sum{model=\"%s\",op=\"%s\"} %.9f\n%s_count{model=\"%s\",op=\"%s\"} %llu\n", h,
		    mn, on, st->total_ns / 1e9, h, mn, on, (unsigned long long)st->count);
	}
	t = fam(e, "hearth_request_errors_total", "counter",
		"Requests that completed with an error, per op.");
	for (unsigned op = 0; op < SHM_OP__MAX; op++)
		put(t, "hearth_request_errors_total{model=\"%s\",op=\"%s\"} %llu\n", mn,
		    shm_op_name(op), (unsigned long long)m->ops[op].errors);
	counter(e, mn, "hearth_tokens_total", "Tokens appended or generated.", m->tokens);
	counter(e, mn, "hearth_steps_total", "Forward steps run by the engine.", m->steps);
	counter(e, mn, "hearth_score_steps_total",
		"Of those, steps whose outputs were all scores, computed from the label ids' rows "
		"of the LM head alone.", m->score_steps);
	counter(e, mn, "hearth_graph_captures_total",
		"CUDA graphs captured for step buckets, recaptures included (each stalls its step).",
		m->graphs.captures);
	counter(e, mn, "hearth_graph_recaptures_total",
		"Of those, graphs captured again because a backend workspace moved.",
		m->graphs.recaptures);
	counter_s(e, mn, "hearth_graph_capture_seconds_total",
		  "Host time spent capturing CUDA graphs.", m->graphs.capture_ns);
	render_sched(e, mn, &m->sched);
	counter(e, mn, "hearth_disconnects_total", "Client connections ended.", m->disconnects);
	counter(e, mn, "hearth_bad_descriptors_total", "Malformed descriptors answered with an error.",
		m->bad_descriptors);
	gauge(e, mn, "hearth_clients", "Attached client connections.", m->clients);
	gauge(e, mn, "hearth_sessions", "Open sessions.", m->sessions);
	put(fam(e, "hearth_kv_pages", "gauge", "KV cache pages per tier."),
	    "hearth_kv_pages{model=\"%s\",tier=\"L1\",state=\"free\"} %u\n"
	    "hearth_kv_pages{model=\"%s\",tier=\"L1\",state=\"total\"} %u\n"
	    "hearth_kv_pages{model=\"%s\",tier=\"L2\",state=\"free\"} %u\n"
	    "hearth_kv_pages{model=\"%s\",tier=\"L2\",state=\"total\"} %u\n",
	    mn, m->kv_free, mn, m->kv_total, mn, m->tier.l2_free, mn, m->tier.l2_slots);
	gauge(e, mn, "hearth_kv_bytes", "Bytes of the L1 KV pool.", (double)m->kv_bytes);
	gauge(e, mn, "hearth_sessions_not_in_l1", "Sessions paged out to L2 or moving.",
	      m->sessions_l2);
	put(fam(e, "hearth_l2_bytes_total", "counter", "Bytes moved between L1 and L2."),
	    "hearth_l2_bytes_total{model=\"%s\",direction=\"out\"} %llu\n"
	    "hearth_l2_bytes_total{model=\"%s\",direction=\"in\"} %llu\n",
	    mn, (unsigned long long)m->tier.bytes_out, mn, (unsigned long long)m->tier.bytes_in);
	put(fam(e, "hearth_l2_transfer_seconds", "summary", "Whole-session page-outs and page-ins."),
	    "hearth_l2_transfer_seconds_sum{model=\"%s\",direction=\"out\"} %.9f\n"
	    "hearth_l2_transfer_seconds_count{model=\"%s\",direction=\"out\"} %llu\n"
	    "hearth_l2_transfer_seconds_sum{model=\"%s\",direction=\"in\"} %.9f\n"
	    "hearth_l2_transfer_seconds_count{model=\"%s\",direction=\"in\"} %llu\n",
	    mn, m->tier.out_ns / 1e9, mn, (unsigned long long)m->tier.outs, mn, m->tier.in_ns / 1e9,
	    mn, (unsigned long long)m->tier.ins);
	counter(e, mn, "hearth_l2_errors_total", "Page-outs kept in L1 and page-ins recomputed.",
		m->tier.errors);
	gauge(e, mn, "hearth_model_load_seconds", "Time to load the model's weights.",
	      model->load_seconds);
	gauge(e, mn, "hearth_model_weight_bytes", "Bytes of the model's weights as stored.",
	      (double)model->weight_bytes);
	if (m->dev_total)
		put(fam(e, "hearth_device_memory_bytes", "gauge",
			"Memory of the device the model runs on (host memory for the cpu backend)."),
		    "hearth_device_memory_bytes{model=\"%s\",state=\"free\"} %llu\n"
		    "hearth_device_memory_bytes{model=\"%s\",state=\"total\"} %llu\n",
		    mn, (unsigned long long)m->dev_free, mn, (unsigned long long)m->dev_total);
}

/* Join the families into one exposition (t). */
static void join(struct expo *e, struct text *t)
{
	for (unsigned i = 0; i < e->n; i++) {
		struct family *f = &e->fam[i];

		put(t, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, f->type);
		if (f->body.len)
			put(t, "%s", f->body.buf);
		e->oom |= f->body.oom;
		free(f->body.buf);
	}
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
	struct expo *e;
	struct text t = { 0 };
	uint32_t by_state[HD_MODEL_UNLOADING + 1] = { 0 };

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
	e = calloc(1, sizeof(*e));
	if (!e)
		return MHD_NO;
	/* The lock keeps every model listed here alive and its reactor running
	 * (the control thread changes states under it). hd_metrics_stop() runs
	 * before the reactors stop, so these calls return. */
	pthread_mutex_lock(&d->models_lock);
	for (uint32_t i = 0; i < d->n_models; i++) {
		struct hd_model *hm = d->models[i];

		by_state[hm->state]++;
		/* READY and DRAINING models have a reactor (set under the lock
		 * after it starts, and before an unload stops it). */
		if ((hm->state != HD_MODEL_READY && hm->state != HD_MODEL_DRAINING) ||
		    hd_reactor_call(hm, &cmd) < 0)
			continue;
		render(e, hm->name, &m, hm->model);
	}
	pthread_mutex_unlock(&d->models_lock);
	{
		struct text *ft = fam(e, "hearth_models", "gauge", "Models by state.");
		for (unsigned st = 0; st <= HD_MODEL_UNLOADING; st++)
			put(ft, "hearth_models{state=\"%s\"} %u\n", hd_model_state_name(st), by_state[st]);
		put(fam(e, "hearth_uptime_seconds", "gauge", "Seconds since hearthd started."),
		    "hearth_uptime_seconds %.17g\n", (hr_now_ns() - d->start_ns) / 1e9);
	}
	join(e, &t);
	if (t.oom || e->oom) {
		free(t.buf);
		free(e);
		return MHD_NO;
	}
	free(e);
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

/* SPDX-License-Identifier: MIT */
/*
 * hearthctl: look at a running hearthd through its control socket, without
 * attaching a shared region: `status` (uptime, clients, KV pages, counters and
 * per-op latencies), `stats` (what /metrics exports: latency histograms with
 * p50/p99, queue depths, tokens/s, KV tiers, L2, model load), `models`,
 * `sessions`, `evict`, `pin`, `unpin`, and `load` / `unload` of models. Exit
 * status 0 on success, 1 when the daemon cannot be reached or answers with an
 * error, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hearth_pvt.h"
#include "hr_common.h"

static const char *prog = "hearthctl";

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s [--socket PATH] [--model NAME] [--interval SECONDS] COMMAND [ARGS]\n"
		"\n"
		"Commands:\n"
		"  status     uptime, clients, sessions, KV pages, device memory, counters,\n"
		"             per-op latency (of one model: --model, else the default one)\n"
		"  stats      what /metrics exports: per-op latency (p50/p99 from the\n"
		"             histogram), queue depths, tokens/s, KV pages per tier, L2\n"
		"             traffic and latency, model load; over the daemon's lifetime,\n"
		"             or over --interval SECONDS\n"
		"  models     every model the daemon serves or loads, with its state\n"
		"  sessions   every session of a model: name, handle, tokens, KV pages,\n"
		"             tier, idle time\n"
		"  evict SESSION   page a session out to L2 now (SESSION: a name, or a handle\n"
		"                  such as 0x100003)\n"
		"  pin SESSION     keep a session in L1: never evicted\n"
		"  unpin SESSION   make it evictable again\n"
		"  load NAME [PATH]  load a model (a Hugging Face directory) while the others\n"
		"                  keep serving; waits until it is resident. Without PATH,\n"
		"                  the path the daemon's configuration gives NAME\n"
		"  unload NAME     stop serving a model and free its memory, saving its named\n"
		"                  sessions (state_dir); refused while clients are attached\n"
		"\n"
		"Options:\n"
		"  -s, --socket PATH   control socket (default: $HEARTH_SOCKET, else the\n"
		"                      daemon's default for this user)\n"
		"  -m, --model NAME    status, stats, sessions, evict, pin, unpin: this model\n"
		"                      (default: the daemon's default model)\n"
		"  -i, --interval SECONDS  stats: two snapshots SECONDS apart; rates and\n"
		"                      latencies over that interval\n"
		"      --kv-pages N    load: KV pages of its L1 pool (default: the daemon's)\n"
		"      --wait          unload: refuse new clients and wait for the attached\n"
		"                      ones to close, then unload\n"
		"      --force         unload: even when named sessions cannot be saved\n"
		"                      (no state_dir): they are lost\n"
		"  -h, --help          this text\n",
		prog);
}

static void fmt_duration(char *buf, size_t len, uint64_t ms)
{
	uint64_t s = ms / 1000, d = s / 86400, hh = s / 3600 % 24, mm = s / 60 % 60, ss = s % 60;

	if (d)
		snprintf(buf, len, "%llud %02lluh %02llum %02llus", (unsigned long long)d,
			 (unsigned long long)hh, (unsigned long long)mm, (unsigned long long)ss);
	else if (hh)
		snprintf(buf, len, "%lluh %02llum %02llus", (unsigned long long)hh,
			 (unsigned long long)mm, (unsigned long long)ss);
	else if (mm)
		snprintf(buf, len, "%llum %02llus", (unsigned long long)mm, (unsigned long long)ss);
	else
		snprintf(buf, len, "%llu.%03llus", (unsigned long long)ss,
			 (unsigned long long)(ms % 1000));
}

static void fmt_us(char *buf, size_t len, double ns)
{
	if (ns >= 1e6)
		snprintf(buf, len, "%.2f ms", ns / 1e6);
	else
		snprintf(buf, len, "%.1f us", ns / 1e3);
}

static void print_status(const char *path, const Hearth__Control__StatsReply *st)
{
	char up[64];
	double free_pct = st->kv_pages_total ? 100.0 * st->kv_pages_free / st->kv_pages_total : 0;

	fmt_duration(up, sizeof(up), st->uptime_ms);
	printf("hearthd on %s\n", path);
	if (st->model && st->model[0])
		printf("  model              %s\n", st->model);
	printf("  uptime             %s\n", up);
	printf("  clients            %u\n", st->clients);
	printf("  sessions           %u\n", st->sessions);
	printf("  KV pages           %u free / %u total (%.1f%% free)\n", st->kv_pages_free,
	       st->kv_pages_total, free_pct);
	if (st->device_mem_total)
		printf("  device memory      %.2f GB free / %.2f GB total (%s)\n",
		       st->device_mem_free / 1e9, st->device_mem_total / 1e9,
		       st->backend && st->backend[0] ? st->backend : "?");
	printf("  tokens processed   %llu\n", (unsigned long long)st->tokens_processed);
	printf("  steps              %llu (%llu scored from the label rows alone)\n",
	       (unsigned long long)st->steps, (unsigned long long)st->score_steps);
	printf("  graphs captured    %llu (%llu after a workspace moved), %.1f ms capturing\n",
	       (unsigned long long)st->graph_captures, (unsigned long long)st->graph_recaptures,
	       st->graph_capture_us / 1e3);
	printf("  disconnects        %llu\n", (unsigned long long)st->disconnects);
	printf("  bad descriptors    %llu\n", (unsigned long long)st->bad_descriptors);
	if (st->pager && st->pager[0])
		printf("  L2 (%s)%*s %u free / %u slots; out %llu pages (%.1f MB), in %llu pages "
		       "(%.1f MB); %llu errors, %llu recomputed\n",
		       st->pager, (int)(10 - strlen(st->pager)), "", st->l2_slots_free, st->l2_slots,
		       (unsigned long long)st->pages_out, st->bytes_out / 1e6,
		       (unsigned long long)st->pages_in, st->bytes_in / 1e6,
		       (unsigned long long)st->tier_errors, (unsigned long long)st->recomputed);
	if (st->pager && st->pager[0])
		printf("  session page-outs  %llu (mean %.2f ms, max %.2f ms); page-ins %llu (mean %.2f ms, "
		       "max %.2f ms)\n",
		       (unsigned long long)st->pageouts,
		       st->pageouts ? st->pageout_ns_total / 1e6 / st->pageouts : 0.0,
		       st->pageout_ns_max / 1e6, (unsigned long long)st->pageins,
		       st->pageins ? st->pagein_ns_total / 1e6 / st->pageins : 0.0,
		       st->pagein_ns_max / 1e6);
	printf("\n  %-14s %10s %8s %12s %12s\n", "op", "count", "errors", "mean", "max");
	for (size_t i = 0; i < st->n_ops; i++) {
		const Hearth__Control__OpCounter *oc = st->ops[i];
		char mean[32] = "-", max[32] = "-";

		if (oc->count) {
			fmt_us(mean, sizeof(mean), (double)oc->total_ns / (double)oc->count);
			fmt_us(max, sizeof(max), (double)oc->max_ns);
		}
		printf("  %-14s %10llu %8llu %12s %12s\n", oc->op, (unsigned long long)oc->count,
		       (unsigned long long)oc->errors, mean, max);
	}
}

/*
 * Quantile q of a latency histogram (count per bucket, upper bounds
 * bounds[nbounds], a last bucket for +Inf), interpolated linearly inside the
 * bucket that holds the rank, as Prometheus' histogram_quantile does; the
 * +Inf bucket ends at max_ns, and no estimate exceeds max_ns. -1 when empty.
 */
static double hist_quantile(const uint64_t *b, size_t nb, const uint64_t *bounds, size_t nbounds,
			    uint64_t max_ns, double q)
{
	uint64_t total = 0, cum = 0;
	double rank, lo, hi, v;

	for (size_t i = 0; i < nb; i++)
		total += b[i];
	if (!total)
		return -1;
	rank = q * (double)total;
	for (size_t i = 0; i < nb; i++) {
		if (!b[i] || (double)(cum + b[i]) < rank) {
			cum += b[i];
			continue;
		}
		if (i == 0 && nbounds)
			return -2; /* in the first bucket: below bounds[0], nothing finer */
		lo = i && i - 1 < nbounds ? (double)bounds[i - 1] : 0;
		hi = i < nbounds ? (double)bounds[i] : HR_MAX((double)max_ns, lo);
		v = lo + (hi - lo) * (rank - (double)cum) / (double)b[i];
		return max_ns && v > (double)max_ns ? (double)max_ns : v;
	}
	return (double)max_ns;
}

/* fmt_us, with nanoseconds under a microsecond (a NOP's mean). */
static void fmt_ns(char *buf, size_t len, double ns)
{
	if (ns < 1e3)
		snprintf(buf, len, "%.0f ns", ns);
	else
		fmt_us(buf, len, ns);
}

/* A hist_quantile result: a value, "< first bound", or "-" when empty. */
static void fmt_quantile(char *buf, size_t len, double q, const Hearth__Control__StatsReply *st)
{
	char b[24];

	if (q == -2) {
		fmt_ns(b, sizeof(b), (double)st->latency_bounds_ns[0]);
		snprintf(buf, len, "< %s", b);
	} else if (q >= 0) {
		fmt_ns(buf, len, q);
	} else {
		snprintf(buf, len, "-");
	}
}

static const Hearth__Control__OpCounter *find_op(const Hearth__Control__StatsReply *st,
						 const char *op)
{
	for (size_t i = 0; st && i < st->n_ops; i++)
		if (!strcmp(st->ops[i]->op, op))
			return st->ops[i];
	return NULL;
}

/* st, or the change from prev to st over dt seconds when prev != NULL. */
static void print_stats(const char *path, const Hearth__Control__StatsReply *st,
			const Hearth__Control__StatsReply *prev, double dt)
{
	uint64_t tokens = st->tokens_processed - (prev ? prev->tokens_processed : 0);
	uint64_t steps = st->steps - (prev ? prev->steps : 0);
	double secs = prev ? dt : st->uptime_ms / 1e3;
	char up[64], mean[32], p50[32], p99[32], max[32];

	fmt_duration(up, sizeof(up), st->uptime_ms);
	if (prev)
		printf("hearthd on %s: stats over the last %.1f s (uptime %s)\n", path, dt, up);
	else
		printf("hearthd on %s: stats since start (uptime %s)\n", path, up);
	printf("  model            %s backend, %.1f MB of weights, loaded in %.0f ms (%s)\n",
	       st->backend[0] ? st->backend : "?", st->weight_bytes / 1e6,
	       st->model_load_seconds * 1e3, st->model_load_how[0] ? st->model_load_how : "?");
	printf("  clients          %u; sessions %u (%u not in L1)\n", st->clients, st->sessions,
	       st->sessions_not_in_l1);
	printf("  queues           SQ %u pending, CQ %u unreaped, %u requests queued on %u sessions, "
	       "%u deferred for page-in\n", st->sq_pending, st->cq_pending, st->requests_queued,
	       st->sessions_active, st->deferred);
	{
		static const char *const label[] = { "1", "2", "3-4", "5-8", "9-16", "17-32",
						     "33-64", "65-128", "129-256", ">256" };
		uint64_t n_steps = 0, tok = st->step_tokens - (prev ? prev->step_tokens : 0);
		uint64_t ns = st->step_ns - (prev ? prev->step_ns : 0);

		printf("  batches         ");
		for (size_t i = 0; i < st->n_batch_sizes && i < HR_ARRAY_SIZE(label); i++) {
			uint64_t v = st->batch_sizes[i] -
				     (prev && i < prev->n_batch_sizes ? prev->batch_sizes[i] : 0);
			n_steps += v;
			if (v)
				printf(" %s:%llu", label[i], (unsigned long long)v);
		}
		printf("%s\n", n_steps ? "" : " none");
		{
			static const char *const tl[] = { "0.25", "0.5", "1", "2", "4", "8", "16",
							  "32", "64", ">64" };
			bool any = false;

			printf("  step times (ms) ");
			for (size_t i = 0; i < st->n_step_times && i < HR_ARRAY_SIZE(tl); i++) {
				uint64_t v = st->step_times[i] -
					     (prev && i < prev->n_step_times ? prev->step_times[i] : 0);

				if (v)
					printf(" %s%s:%llu", i + 1 < HR_ARRAY_SIZE(tl) ? "<=" : "", tl[i],
					       (unsigned long long)v);
				any |= v != 0;
			}
			printf("%s\n", any ? "" : " none");
		}
		printf("  steps            %llu batched (%.1f tokens, %.3f ms each); %llu timed out, "
		       "%llu cancelled, %llu waited for KV\n", (unsigned long long)n_steps,
		       n_steps ? (double)tok / n_steps : 0.0, n_steps ? ns / 1e6 / n_steps : 0.0,
		       (unsigned long long)(st->timeouts - (prev ? prev->timeouts : 0)),
		       (unsigned long long)(st->cancels - (prev ? prev->cancels : 0)),
		       (unsigned long long)(st->kv_waits - (prev ? prev->kv_waits : 0)));
		printf("  busy             %.1f%% of recent time in steps (holds left out)\n",
		       st->busy_ppm / 1e4);
		printf("  interactive      left out of %llu steps (at most %u in a row for one request)\n",
		       (unsigned long long)(st->interactive_skips - (prev ? prev->interactive_skips : 0)),
		       st->interactive_skip_max);
		if (st->burst_holds) {
			uint64_t holds = st->burst_holds - (prev ? prev->burst_holds : 0);
			uint64_t us = st->burst_hold_us - (prev ? prev->burst_hold_us : 0);

			printf("  burst holds      %llu steps held for a burst (%.1f us each)\n",
			       (unsigned long long)holds, holds ? (double)us / holds : 0.0);
		}
	}
	printf("  tokens           %llu (%.1f tokens/s); %llu steps (%.1f tokens per step)\n",
	       (unsigned long long)tokens, secs > 0 ? tokens / secs : 0.0, (unsigned long long)steps,
	       steps ? (double)tokens / (double)steps : 0.0);
	printf("  KV pages L1      %u free / %u (%.1f%% free; %.2f MiB per page, %.1f MB in all)\n",
	       st->kv_pages_free, st->kv_pages_total,
	       st->kv_pages_total ? 100.0 * st->kv_pages_free / st->kv_pages_total : 0.0,
	       st->kv_page_bytes / 1048576.0, (double)st->kv_page_bytes * st->kv_pages_total / 1e6);
	if (st->pager[0]) {
		uint64_t outs = st->pageouts - (prev ? prev->pageouts : 0);
		uint64_t ins = st->pageins - (prev ? prev->pageins : 0);
		uint64_t out_ns = st->pageout_ns_total - (prev ? prev->pageout_ns_total : 0);
		uint64_t in_ns = st->pagein_ns_total - (prev ? prev->pagein_ns_total : 0);

		printf("  KV pages L2      %u free / %u slots (%s)\n", st->l2_slots_free, st->l2_slots,
		       st->pager);
		printf("  L2 traffic       out %llu pages (%.1f MB), in %llu pages (%.1f MB); %llu errors, "
		       "%llu recomputed\n",
		       (unsigned long long)(st->pages_out - (prev ? prev->pages_out : 0)),
		       (st->bytes_out - (prev ? prev->bytes_out : 0)) / 1e6,
		       (unsigned long long)(st->pages_in - (prev ? prev->pages_in : 0)),
		       (st->bytes_in - (prev ? prev->bytes_in : 0)) / 1e6,
		       (unsigned long long)(st->tier_errors - (prev ? prev->tier_errors : 0)),
		       (unsigned long long)(st->recomputed - (prev ? prev->recomputed : 0)));
		printf("  L2 latency       page-outs %llu (mean %.2f ms, max %.2f ms); page-ins %llu "
		       "(mean %.2f ms, max %.2f ms)\n", (unsigned long long)outs,
		       outs ? out_ns / 1e6 / outs : 0.0, st->pageout_ns_max / 1e6,
		       (unsigned long long)ins, ins ? in_ns / 1e6 / ins : 0.0, st->pagein_ns_max / 1e6);
	} else {
		printf("  KV pages L2      none (no L2 file configured)\n");
	}
	printf("  disconnects      %llu; bad descriptors %llu\n",
	       (unsigned long long)(st->disconnects - (prev ? prev->disconnects : 0)),
	       (unsigned long long)(st->bad_descriptors - (prev ? prev->bad_descriptors : 0)));
	printf("\n  %-14s %10s %8s %11s %11s %11s %11s\n", "op", "count", "errors", "mean", "p50",
	       "p99", "max");
	for (size_t i = 0; i < st->n_ops; i++) {
		const Hearth__Control__OpCounter *oc = st->ops[i], *po = find_op(prev, oc->op);
		uint64_t b[64] = { 0 }, count = oc->count - (po ? po->count : 0);
		uint64_t total_ns = oc->total_ns - (po ? po->total_ns : 0);
		size_t nb = HR_MIN(oc->n_buckets, HR_ARRAY_SIZE(b));
		double q50, q99;

		for (size_t j = 0; j < nb; j++)
			b[j] = oc->buckets[j] - (po && j < po->n_buckets ? po->buckets[j] : 0);
		snprintf(mean, sizeof(mean), "-");
		snprintf(p50, sizeof(p50), "-");
		snprintf(p99, sizeof(p99), "-");
		snprintf(max, sizeof(max), "-");
		if (count) {
			fmt_ns(mean, sizeof(mean), (double)total_ns / (double)count);
			fmt_us(max, sizeof(max), (double)oc->max_ns);
		}
		q50 = hist_quantile(b, nb, st->latency_bounds_ns, st->n_latency_bounds_ns, oc->max_ns, 0.5);
		q99 = hist_quantile(b, nb, st->latency_bounds_ns, st->n_latency_bounds_ns, oc->max_ns, 0.99);
		fmt_quantile(p50, sizeof(p50), q50, st);
		fmt_quantile(p99, sizeof(p99), q99, st);
		printf("  %-14s %10llu %8llu %11s %11s %11s %11s\n", oc->op, (unsigned long long)count,
		       (unsigned long long)(oc->errors - (po ? po->errors : 0)), mean, p50, p99, max);
	}
	if (!st->n_latency_bounds_ns)
		printf("  (this daemon sends no latency histogram: p50/p99 unavailable)\n");
	printf("  (max is since start; p50/p99 are estimated from the histogram buckets,\n"
	       "   \"< 10.0 us\" means inside the first one)\n");
}

static void print_models(const Hearth__Control__ModelsReply *m)
{
	for (size_t i = 0; i < m->n_models; i++) {
		const Hearth__Control__ModelInfo *mi = m->models[i];

		if (i)
			printf("\n");
		printf("model %s%s\n", mi->name, mi->is_default ? " (default)" : "");
		if (mi->state && mi->state[0])
			printf("  state          %s\n", mi->state);
		printf("  path           %s\n", mi->path);
		if (!mi->arch || !mi->arch[0])
			continue; /* still loading: nothing more known */
		printf("  architecture   %s\n", mi->arch);
		printf("  vocabulary     %u\n", mi->vocab_size);
		printf("  layers         %u\n", mi->n_layers);
		printf("  hidden size    %u\n", mi->hidden_size);
		printf("  max context    %u\n", mi->max_context);
		printf("  dtype          %s\n", mi->dtype);
		printf("  backend        %s\n", mi->backend);
		printf("  weights        %.1f MB\n", (double)mi->weight_bytes / 1e6);
		if (mi->kv_pages)
			printf("  KV pool        %u pages, %.1f MB\n", mi->kv_pages, mi->kv_bytes / 1e6);
		printf("  clients        %u\n", mi->clients);
		printf("  load time      %.0f ms\n", mi->load_seconds * 1e3);
	}
	if (!m->n_models)
		printf("no model loaded\n");
}

static void print_sessions(const Hearth__Control__SessionsReply *s)
{
	int w = 12;

	for (size_t i = 0; i < s->n_sessions; i++) {
		int n = (int)strlen(s->sessions[i]->name);
		if (n > w)
			w = n > 48 ? 48 : n;
	}
	printf("%-*s %10s %8s %8s %4s %8s %10s\n", w, "NAME", "HANDLE", "TOKENS", "KV PAGES",
	       "TIER", "ATTACHED", "IDLE MS");
	for (size_t i = 0; i < s->n_sessions; i++) {
		const Hearth__Control__SessionInfo *si = s->sessions[i];

		printf("%-*s %#10x %8u %8u %4s %8u %10llu\n", w,
		       si->name[0] ? si->name : "(anonymous)", si->handle, si->n_tokens,
		       si->kv_pages, si->tier, si->attached, (unsigned long long)si->last_used_ms);
	}
	printf("%zu session%s\n", s->n_sessions, s->n_sessions == 1 ? "" : "s");
}

enum cmd { CMD_STATUS, CMD_STATS, CMD_MODELS, CMD_SESSIONS, CMD_EVICT, CMD_PIN, CMD_UNPIN,
	   CMD_LOAD, CMD_UNLOAD };

static double interval_s; /* stats: 0 = since start */
static const char *model_opt = ""; /* --model */
static uint32_t kv_pages_opt;      /* load --kv-pages */
static bool wait_opt, force_opt;   /* unload --wait, --force */

static int run(const char *path, enum cmd cmd, const char *session, const char *arg2)
{
	Hearth__Control__LoadModel lo = HEARTH__CONTROL__LOAD_MODEL__INIT;
	Hearth__Control__UnloadModel un = HEARTH__CONTROL__UNLOAD_MODEL__INIT;
	char abs[4096];
	Hearth__Control__SessionAction sa = HEARTH__CONTROL__SESSION_ACTION__INIT;
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__ListModels lm = HEARTH__CONTROL__LIST_MODELS__INIT;
	Hearth__Control__ListSessions ls = HEARTH__CONTROL__LIST_SESSIONS__INIT;
	Hearth__Control__GetStats gs = HEARTH__CONTROL__GET_STATS__INIT;
	Hearth__Control__Response *rep = NULL, *first = NULL;
	_cleanup_close_ int sock = -1;
	uint64_t t_first = 0;
	uint64_t id = 0;
	char msg[256];
	int r;

	sock = hearth__ctl_connect(path);
	if (sock < 0) {
		fprintf(stderr, "%s: cannot connect to %s: %s — is hearthd running?\n", prog, path,
			strerror(-sock));
		return 1;
	}
	gs.model = ls.model = sa.model = (char *)model_opt;
	switch (cmd) {
	case CMD_STATUS:
	case CMD_STATS:
		req.body_case = HEARTH__CONTROL__REQUEST__BODY_GET_STATS;
		req.get_stats = &gs;
		break;
	case CMD_LOAD:
		lo.name = (char *)session;
		/* The daemon resolves paths from its own directory: send an absolute one. */
		if (arg2 && !realpath(arg2, abs)) {
			fprintf(stderr, "%s: %s: %s\n", prog, arg2, strerror(errno));
			return 1;
		}
		lo.path = arg2 ? abs : (char *)"";
		lo.kv_pages = kv_pages_opt;
		req.body_case = HEARTH__CONTROL__REQUEST__BODY_LOAD_MODEL;
		req.load_model = &lo;
		fprintf(stderr, "%s: loading model '%s'%s%s ...\n", prog, session,
			arg2 ? " from " : "", arg2 ? abs : "");
		break;
	case CMD_UNLOAD:
		un.name = (char *)session;
		un.wait = wait_opt;
		un.force = force_opt;
		req.body_case = HEARTH__CONTROL__REQUEST__BODY_UNLOAD_MODEL;
		req.unload_model = &un;
		if (wait_opt)
			fprintf(stderr, "%s: model '%s': waiting for its clients to close ...\n", prog,
				session);
		break;
	case CMD_MODELS:
		req.body_case = HEARTH__CONTROL__REQUEST__BODY_LIST_MODELS;
		req.list_models = &lm;
		break;
	case CMD_SESSIONS:
		req.body_case = HEARTH__CONTROL__REQUEST__BODY_LIST_SESSIONS;
		req.list_sessions = &ls;
		break;
	case CMD_EVICT:
	case CMD_PIN:
	case CMD_UNPIN: {
		char *end;
		unsigned long h = strtoul(session, &end, 0);

		/* A number is a handle; anything else is a name. */
		if (*session && !*end && h && h <= UINT32_MAX)
			sa.handle = (uint32_t)h;
		else
			sa.name = (char *)session;
		sa.action = cmd == CMD_EVICT ? HEARTH__CONTROL__SESSION_ACTION__ACTION__EVICT
			    : cmd == CMD_PIN ? HEARTH__CONTROL__SESSION_ACTION__ACTION__PIN
					     : HEARTH__CONTROL__SESSION_ACTION__ACTION__UNPIN;
		req.body_case = HEARTH__CONTROL__REQUEST__BODY_SESSION_ACTION;
		req.session_action = &sa;
		break;
	}
	}
again:
	/* A load reads the weights, an unload --wait waits for clients: no limit. */
	r = hearth__ctl_call(sock, &id, &req, &rep, NULL, msg, sizeof(msg),
			     cmd == CMD_LOAD || cmd == CMD_UNLOAD ? -1 : 0);
	if (r < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, msg[0] ? msg : hearth_strerror(r));
		if (first)
			hearth__control__response__free_unpacked(first, NULL);
		return 1;
	}
	if (cmd == CMD_STATS && interval_s > 0 && !first &&
	    rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_STATS) {
		struct timespec ts = { .tv_sec = (time_t)interval_s,
				       .tv_nsec = (long)((interval_s - (time_t)interval_s) * 1e9) };

		first = rep;
		rep = NULL;
		t_first = hr_now_ns();
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		goto again;
	}
	r = 0;
	if (cmd == CMD_STATUS && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_STATS)
		print_status(path, rep->stats);
	else if (cmd == CMD_STATS && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_STATS)
		print_stats(path, rep->stats, first ? first->stats : NULL,
			    (double)(hr_now_ns() - t_first) / 1e9);
	else if (cmd == CMD_MODELS && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_MODELS)
		print_models(rep->models);
	else if (cmd == CMD_SESSIONS && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_SESSIONS)
		print_sessions(rep->sessions);
	else if (cmd == CMD_LOAD && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_MODELS)
		print_models(rep->models);
	else if (cmd == CMD_UNLOAD)
		printf("model %s: unloaded\n", session);
	else if (cmd >= CMD_EVICT && cmd <= CMD_UNPIN)
		printf("%s: %s\n", session, cmd == CMD_EVICT ? "paging out to L2"
					     : cmd == CMD_PIN ? "pinned in L1" : "unpinned");
	else {
		fprintf(stderr, "%s: %s: unexpected reply from the daemon\n", prog, path);
		r = 1;
	}
	hearth__control__response__free_unpacked(rep, NULL);
	if (first)
		hearth__control__response__free_unpacked(first, NULL);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "model", required_argument, NULL, 'm' },
		{ "interval", required_argument, NULL, 'i' },
		{ "kv-pages", required_argument, NULL, 'K' },
		{ "wait", no_argument, NULL, 'W' },
		{ "force", no_argument, NULL, 'F' },
		{ "help", no_argument, NULL, 'h' },
		{}
	};
	static const struct {
		const char *name;
		int min_args, max_args;
		const char *args;
	} cmds[] = {
		{ "status", 0, 0, "no argument" },	   { "stats", 0, 0, "no argument" },
		{ "models", 0, 0, "no argument" },	   { "sessions", 0, 0, "no argument" },
		{ "evict", 1, 1, "one SESSION argument" }, { "pin", 1, 1, "one SESSION argument" },
		{ "unpin", 1, 1, "one SESSION argument" }, { "load", 1, 2, "NAME [PATH]" },
		{ "unload", 1, 1, "one NAME argument" },
	};
	const char *socket_opt = NULL;
	char path[108];
	int c, r;

	if (argc > 0 && argv[0][0])
		prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	while ((c = getopt_long(argc, argv, "s:m:i:h", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			socket_opt = optarg;
			break;
		case 'm':
			model_opt = optarg;
			break;
		case 'K': {
			char *end;
			unsigned long v = strtoul(optarg, &end, 10);

			if (*end || !v || v > (1ul << 24)) {
				fprintf(stderr, "%s: --kv-pages wants a number in [1, %lu]\n", prog,
					1ul << 24);
				return 2;
			}
			kv_pages_opt = (uint32_t)v;
			break;
		}
		case 'W':
			wait_opt = true;
			break;
		case 'F':
			force_opt = true;
			break;
		case 'i': {
			char *end;

			interval_s = strtod(optarg, &end);
			if (*end || !(interval_s > 0 && interval_s <= 3600)) {
				fprintf(stderr, "%s: --interval wants seconds in (0, 3600]\n", prog);
				return 2;
			}
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind == argc) {
		fprintf(stderr, "%s: missing command\n", prog);
		usage(stderr);
		return 2;
	}
	r = hearth__socket_path(socket_opt, path, sizeof(path));
	if (r < 0) {
		fprintf(stderr, "%s: socket path: %s\n", prog, strerror(-r));
		return 2;
	}
	for (size_t i = 0; i < HR_ARRAY_SIZE(cmds); i++) {
		int n = argc - optind - 1;

		if (strcmp(argv[optind], cmds[i].name))
			continue;
		if (n < cmds[i].min_args || n > cmds[i].max_args) {
			fprintf(stderr, "%s: %s takes %s\n", prog, cmds[i].name, cmds[i].args);
			return 2;
		}
		return run(path, (enum cmd)i, n >= 1 ? argv[optind + 1] : NULL,
			   n >= 2 ? argv[optind + 2] : NULL);
	}
	fprintf(stderr, "%s: unknown command '%s'\n", prog, argv[optind]);
	usage(stderr);
	return 2;
}

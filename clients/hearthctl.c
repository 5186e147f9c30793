/* SPDX-License-Identifier: MIT */
/*
 * hearthctl: look at a running hearthd through its control socket, without
 * attaching a shared region: `status` (uptime, clients, KV pages, counters and
 * per-op latencies), `models`, `sessions`. Exit status 0 on success, 1 when
 * the daemon cannot be reached or answers with an error, 2 on a usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hearth_pvt.h"
#include "hr_common.h"

static const char *prog = "hearthctl";

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s [--socket PATH] COMMAND [SESSION]\n"
		"\n"
		"Commands:\n"
		"  status     uptime, clients, sessions, KV pages, counters, per-op latency\n"
		"  models     the model the daemon serves\n"
		"  sessions   every session: name, handle, tokens, KV pages, tier, idle time\n"
		"  evict SESSION   page a session out to L2 now (SESSION: a name, or a handle\n"
		"                  such as 0x100003)\n"
		"  pin SESSION     keep a session in L1: never evicted\n"
		"  unpin SESSION   make it evictable again\n"
		"\n"
		"Options:\n"
		"  -s, --socket PATH   control socket (default: $HEARTH_SOCKET, else the\n"
		"                      daemon's default for this user)\n"
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
	printf("  uptime             %s\n", up);
	printf("  clients            %u\n", st->clients);
	printf("  sessions           %u\n", st->sessions);
	printf("  KV pages           %u free / %u total (%.1f%% free)\n", st->kv_pages_free,
	       st->kv_pages_total, free_pct);
	printf("  tokens processed   %llu\n", (unsigned long long)st->tokens_processed);
	printf("  steps              %llu\n", (unsigned long long)st->steps);
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

static void print_models(const Hearth__Control__ModelsReply *m)
{
	for (size_t i = 0; i < m->n_models; i++) {
		const Hearth__Control__ModelInfo *mi = m->models[i];

		if (i)
			printf("\n");
		printf("model %s\n", mi->name);
		printf("  architecture   %s\n", mi->arch);
		printf("  path           %s\n", mi->path);
		printf("  vocabulary     %u\n", mi->vocab_size);
		printf("  layers         %u\n", mi->n_layers);
		printf("  hidden size    %u\n", mi->hidden_size);
		printf("  max context    %u\n", mi->max_context);
		printf("  dtype          %s\n", mi->dtype);
		printf("  backend        %s\n", mi->backend);
		printf("  weights        %.1f MB\n", (double)mi->weight_bytes / 1e6);
		printf("  load time      %.0f ms\n", mi->load_seconds * 1e3);
	}
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

enum cmd { CMD_STATUS, CMD_MODELS, CMD_SESSIONS, CMD_EVICT, CMD_PIN, CMD_UNPIN };

static int run(const char *path, enum cmd cmd, const char *session)
{
	Hearth__Control__SessionAction sa = HEARTH__CONTROL__SESSION_ACTION__INIT;
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__ListModels lm = HEARTH__CONTROL__LIST_MODELS__INIT;
	Hearth__Control__ListSessions ls = HEARTH__CONTROL__LIST_SESSIONS__INIT;
	Hearth__Control__GetStats gs = HEARTH__CONTROL__GET_STATS__INIT;
	Hearth__Control__Response *rep = NULL;
	_cleanup_close_ int sock = -1;
	uint64_t id = 0;
	char msg[256];
	int r;

	sock = hearth__ctl_connect(path);
	if (sock < 0) {
		fprintf(stderr, "%s: cannot connect to %s: %s — is hearthd running?\n", prog, path,
			strerror(-sock));
		return 1;
	}
	switch (cmd) {
	case CMD_STATUS:
		req.body_case = HEARTH__CONTROL__REQUEST__BODY_GET_STATS;
		req.get_stats = &gs;
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
	r = hearth__ctl_call(sock, &id, &req, &rep, NULL, msg, sizeof(msg));
	if (r < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, msg[0] ? msg : hearth_strerror(r));
		return 1;
	}
	r = 0;
	if (cmd == CMD_STATUS && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_STATS)
		print_status(path, rep->stats);
	else if (cmd == CMD_MODELS && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_MODELS)
		print_models(rep->models);
	else if (cmd == CMD_SESSIONS && rep->body_case == HEARTH__CONTROL__RESPONSE__BODY_SESSIONS)
		print_sessions(rep->sessions);
	else if (cmd >= CMD_EVICT)
		printf("%s: %s\n", session, cmd == CMD_EVICT ? "paging out to L2"
					     : cmd == CMD_PIN ? "pinned in L1" : "unpinned");
	else {
		fprintf(stderr, "%s: %s: unexpected reply from the daemon\n", prog, path);
		r = 1;
	}
	hearth__control__response__free_unpacked(rep, NULL);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{}
	};
	static const char *const names[] = { "status", "models", "sessions", "evict", "pin", "unpin" };
	const char *socket_opt = NULL;
	char path[108];
	int c, r;

	if (argc > 0 && argv[0][0])
		prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	while ((c = getopt_long(argc, argv, "s:h", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			socket_opt = optarg;
			break;
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
	for (size_t i = 0; i < HR_ARRAY_SIZE(names); i++) {
		int want = i >= CMD_EVICT ? 2 : 1;

		if (strcmp(argv[optind], names[i]))
			continue;
		if (argc - optind != want) {
			fprintf(stderr, "%s: %s takes %s\n", prog, names[i],
				want == 2 ? "one SESSION argument" : "no argument");
			return 2;
		}
		return run(path, (enum cmd)i, want == 2 ? argv[optind + 1] : NULL);
	}
	fprintf(stderr, "%s: unknown command '%s'\n", prog, argv[optind]);
	usage(stderr);
	return 2;
}

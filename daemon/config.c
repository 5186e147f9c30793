/* SPDX-License-Identifier: MIT */
/*
 * hearthd configuration: the key table, INI parsing through inih, flags,
 * validation and dumping.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "hr_common.h"
#include "kern.h"

enum key_type { K_STR, K_U32, K_IDS_UID, K_IDS_GID, K_LOGLEVEL, K_PRELOAD };

struct key {
	const char *section;
	const char *name;
	enum key_type type;
	size_t off;
	size_t size;      /* K_STR: buffer size */
	uint32_t min, max; /* K_U32 */
	const char *help;
};

#define STR(sec, k, h) { sec, #k, K_STR, offsetof(struct hd_config, k), sizeof(((struct hd_config *)0)->k), 0, 0, h }
#define U32(sec, k, lo, hi, h) { sec, #k, K_U32, offsetof(struct hd_config, k), 0, lo, hi, h }

static const struct key keys[] = {
	STR("daemon", socket_path, "control socket path"),
	{ "daemon", "allow_uids", K_IDS_UID, offsetof(struct hd_config, allow_uids), 0, 0, 0,
	  "uids allowed to connect besides root and the daemon's own, comma-separated" },
	{ "daemon", "allow_gids", K_IDS_GID, offsetof(struct hd_config, allow_gids), 0, 0, 0,
	  "gids allowed to connect, comma-separated" },
	U32("daemon", max_clients, 1, 1024, "most client connections at once"),
	U32("daemon", metrics_port, 0, 65535, "HTTP port of Prometheus /metrics and /health (0: off)"),
	STR("daemon", metrics_addr, "address the metrics port binds (IPv4)"),
	{ "daemon", "log_level", K_LOGLEVEL, offsetof(struct hd_config, log_level), 0, 0, 0,
	  "err, warn, info or debug" },
	STR("model", model_path, "Hugging Face model directory (default: the embedded tiny model)"),
	STR("model", model_name, "name clients use for the model"),
	STR("model", backend, "compute backend: auto, cpu or cuda"),
	U32("model", device, 0, 63, "GPU index for the cuda backend"),
	U32("model", threads, 0, 1024, "CPU backend threads (0: all cores)"),
	U32("model", kv_pages, 0, 1u << 24, "KV pages in L1 (0: sized for a few full contexts)"),
	U32("model", page_tokens, 1, 1024, "tokens per KV page"),
	U32("model", max_step_tokens, 1, 65536, "token budget of one forward step, all sessions together"),
	U32("model", graph_max_tokens, 0, KERN_GRAPH_MAX_TOKENS,
	    "steps of at most this many tokens replay captured CUDA graphs (0: none)"),
	U32("scheduler", max_batch, 1, 1024, "most sessions in one forward step"),
	U32("scheduler", bulk_share_pct, 0, 100, "share of a step's tokens kept for bulk requests while they wait"),
	U32("scheduler", batch_wait_us, 0, 100000,
	    "hold a step while a burst of requests keeps arriving, at most this long (us; 0: never)"),
	{ "models", "preload", K_PRELOAD, offsetof(struct hd_config, preload), 0, 0, 0,
	  "NAME=PATH: load this model too at start (repeatable; in the file, NAME = PATH lines "
	  "in [models])" },
	STR("kv", l2_path, "L2 file for paged-out KV (empty: no L2, sessions stay in L1)"),
	U32("kv", l2_mib, 1, 1u << 24, "size of the L2 file in MiB"),
	STR("kv", pager, "L2 I/O: auto, io_uring or threads"),
	STR("kv", state_dir, "directory of named sessions' manifests (empty: not durable)"),
	U32("kv", evict_low_pct, 0, 100, "evict when free L1 pages fall under this percentage"),
	U32("kv", evict_high_pct, 0, 100, "... until this percentage is free"),
	U32("kv", checkpoint_ms, 0, 3600000, "how often named sessions' histories are saved (0: only on eviction and stop)"),
	U32("reactor", spin_us, 0, 1000000, "busy-poll time before the reactor sleeps (us)"),
	U32("client", sq_entries, 1, 65536, "default SQ ring entries (power of two)"),
	U32("client", arena_bytes, 4096, 1u << 30, "default client arena bytes"),
	U32("client", max_arena_bytes, 4096, 1u << 30, "largest arena a client may ask for"),
	U32("client", max_sessions_per_client, 1, 1u << 20, "sessions one connection may hold open"),
};

void hd_config_defaults(struct hd_config *c)
{
	const char *rt = getenv("XDG_RUNTIME_DIR");

	memset(c, 0, sizeof(*c));
	if (geteuid() == 0)
		snprintf(c->socket_path, sizeof(c->socket_path), "/run/hearth/hearthd.sock");
	else if (rt && rt[0] == '/' && strlen(rt) < 80)
		snprintf(c->socket_path, sizeof(c->socket_path), "%s/hearth/hearthd.sock", rt);
	else
		snprintf(c->socket_path, sizeof(c->socket_path), "/tmp/hearth-%u/hearthd.sock",
			 (unsigned)getuid());
	c->max_clients = 64;
	c->log_level = HR_LOG_INFO;
	snprintf(c->metrics_addr, sizeof(c->metrics_addr), "127.0.0.1");
	snprintf(c->model_name, sizeof(c->model_name), "default");
	snprintf(c->backend, sizeof(c->backend), "auto");
	c->page_tokens = 16;
	c->max_step_tokens = 512;
	c->graph_max_tokens = KERN_GRAPH_MAX_TOKENS;
	c->max_batch = 64;
	c->bulk_share_pct = 25;
	c->spin_us = 50;
	c->l2_mib = 1024;
	snprintf(c->pager, sizeof(c->pager), "auto");
	c->evict_low_pct = 10;
	c->evict_high_pct = 25;
	c->checkpoint_ms = 1000;
	c->sq_entries = 64;
	c->arena_bytes = 1u << 20;
	c->max_arena_bytes = 64u << 20;
	c->max_sessions_per_client = 4096;
}

static int parse_u32(const char *v, uint32_t *ret)
{
	char *end;
	unsigned long long x;

	if (!*v || *v == '-')
		return -EINVAL;
	errno = 0;
	x = strtoull(v, &end, 10); /* decimal: "010" is ten, not eight */
	if (errno || *end || x > UINT32_MAX)
		return -EINVAL;
	*ret = (uint32_t)x;
	return 0;
}

static int parse_ids(const char *v, uint32_t *ids, uint32_t *n)
{
	char buf[512], *save = NULL, *tok;
	uint32_t k = 0;

	if (strlen(v) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, v);
	for (tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
		if (k == HD_MAX_IDS || parse_u32(tok, &ids[k]) < 0)
			return -EINVAL;
		k++;
	}
	*n = k;
	return 0;
}

bool hd_config_model_name_ok(const char *name)
{
	size_t n = strlen(name);

	if (!n || n >= sizeof(((struct hd_preload *)0)->name) || name[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = name[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '.' || ch == '_' || ch == '-'))
			return false;
	}
	return true;
}

static int add_preload(struct hd_config *c, const char *name, size_t name_len, const char *path,
		       char *err, size_t errlen)
{
	struct hd_preload *p;

	if (c->n_preload == HD_MAX_PRELOAD) {
		snprintf(err, errlen, "more than %d models to preload", HD_MAX_PRELOAD);
		return -EINVAL;
	}
	p = &c->preload[c->n_preload];
	if (name_len >= sizeof(p->name) || strlen(path) >= sizeof(p->path) || !path[0]) {
		snprintf(err, errlen, "preload: want NAME=PATH with a name under %zu bytes and a path",
			 sizeof(p->name));
		return -EINVAL;
	}
	memcpy(p->name, name, name_len);
	p->name[name_len] = 0;
	strcpy(p->path, path);
	if (!hd_config_model_name_ok(p->name)) {
		snprintf(err, errlen,
			 "preload: bad model name '%s' (1 to 63 letters, digits, '.', '_' or '-', "
			 "not starting with '.')", p->name);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < c->n_preload; i++)
		if (!strcmp(c->preload[i].name, p->name)) {
			snprintf(err, errlen, "preload: model '%s' named twice", p->name);
			return -EINVAL;
		}
	c->n_preload++;
	return 0;
}

static int set_key(struct hd_config *c, const struct key *k, const char *v, char *err,
		   size_t errlen)
{
	char *base = (char *)c + k->off;
	uint32_t x;

	switch (k->type) {
	case K_STR:
		if (strlen(v) >= k->size) {
			snprintf(err, errlen, "%s: value longer than %zu bytes", k->name, k->size - 1);
			return -EINVAL;
		}
		strcpy(base, v);
		return 0;
	case K_U32:
		if (parse_u32(v, &x) < 0 || x < k->min || x > k->max) {
			snprintf(err, errlen, "%s: '%s' is not an integer in [%u, %u]", k->name, v,
				 k->min, k->max);
			return -EINVAL;
		}
		*(uint32_t *)base = x;
		return 0;
	case K_IDS_UID:
	case K_IDS_GID: {
		uint32_t *n = k->type == K_IDS_UID ? &c->n_allow_uids : &c->n_allow_gids;
		if (parse_ids(v, (uint32_t *)base, n) < 0) {
			snprintf(err, errlen, "%s: '%s' is not a list of at most %d numeric ids",
				 k->name, v, HD_MAX_IDS);
			return -EINVAL;
		}
		return 0;
	}
	case K_PRELOAD: {
		const char *eq = strchr(v, '=');

		if (!eq) {
			snprintf(err, errlen, "preload: '%s' is not NAME=PATH", v);
			return -EINVAL;
		}
		return add_preload(c, v, (size_t)(eq - v), eq + 1, err, errlen);
	}
	case K_LOGLEVEL:
		if (hr_log_parse_level(v, (enum hr_log_level *)base) < 0) {
			snprintf(err, errlen, "%s: '%s' is not one of err, warn, info, debug",
				 k->name, v);
			return -EINVAL;
		}
		return 0;
	}
	return -EINVAL;
}

static const struct key *find_key(const char *section, const char *name)
{
	for (size_t i = 0; i < HR_ARRAY_SIZE(keys); i++)
		if ((!section || strcmp(keys[i].section, section) == 0) &&
		    strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

struct ini_ctx {
	struct hd_config *c;
	char *err;
	size_t errlen;
	int r;
};

static int config_ini_handler(void *user, const char *section, const char *name, const char *value)
{
	struct ini_ctx *ctx = user;
	const struct key *k = find_key(section, name);
	char msg[256];

	if (ctx->r < 0)
		return 0;
	if (!strcmp(section, "models")) {
		/* NAME = PATH: a model to load at start. */
		if (add_preload(ctx->c, name, strlen(name), value, msg, sizeof(msg)) < 0) {
			snprintf(ctx->err, ctx->errlen, "[models] %s", msg);
			ctx->r = -EINVAL;
			return 0;
		}
		return 1;
	}
	if (!k) {
		snprintf(ctx->err, ctx->errlen, "unknown key '%s' in section [%s]", name, section);
		ctx->r = -EINVAL;
		return 0;
	}
	if (set_key(ctx->c, k, value, msg, sizeof(msg)) < 0) {
		snprintf(ctx->err, ctx->errlen, "[%s] %s", section, msg);
		ctx->r = -EINVAL;
		return 0;
	}
	return 1;
}

int hd_config_parse_string(struct hd_config *c, const char *text, char *err, size_t errlen)
{
	struct ini_ctx ctx = { c, err, errlen, 0 };
	int line = ini_parse_string(text, config_ini_handler, &ctx);

	if (ctx.r < 0) {
		char msg[384];
		snprintf(msg, sizeof(msg), "line %d: %s", line, err);
		snprintf(err, errlen, "%s", msg);
		return ctx.r;
	}
	if (line != 0) {
		snprintf(err, errlen, "line %d: syntax error", line);
		return -EINVAL;
	}
	return 0;
}

static int parse_file(struct hd_config *c, const char *path, char *err, size_t errlen)
{
	struct ini_ctx ctx = { c, err, errlen, 0 };
	char msg[384];
	int line = ini_parse(path, config_ini_handler, &ctx);

	if (line == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno ? errno : ENOENT));
		return -ENOENT;
	}
	if (ctx.r < 0 || line != 0) {
		snprintf(msg, sizeof(msg), "%s:%d: %s", path, line, ctx.r < 0 ? err : "syntax error");
		snprintf(err, errlen, "%s", msg);
		return -EINVAL;
	}
	return 0;
}

int hd_config_load(struct hd_config *c, int argc, char **argv, bool *ret_check, bool *ret_help,
		   char *err, size_t errlen)
{
	const char *path = NULL;
	bool check = false, help = false;
	int r;

	*ret_check = false;
	*ret_help = false;
	/* First pass: --config, --check-config, --help; the file is read before flags. */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--check-config") == 0)
			check = true;
		else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			help = true;
		else if (strncmp(argv[i], "--config=", 9) == 0)
			path = argv[i] + 9;
		else if (strcmp(argv[i], "--config") == 0) {
			if (i + 1 >= argc) {
				snprintf(err, errlen, "option '--config' needs a file");
				return -EINVAL;
			}
			path = argv[++i];
		}
	}
	*ret_check = check;
	*ret_help = help;
	if (help)
		return 0;
	if (path) {
		r = parse_file(c, path, err, errlen);
		if (r < 0)
			return r;
	} else if (access(HD_DEFAULT_CONFIG, R_OK) == 0) {
		r = parse_file(c, HD_DEFAULT_CONFIG, err, errlen);
		if (r < 0)
			return r;
	}
	for (int i = 1; i < argc; i++) {
		char name[64], *eq;
		const char *arg = argv[i], *value;
		const struct key *k;

		if (strcmp(arg, "--check-config") == 0)
			continue;
		if (strcmp(arg, "--config") == 0) {
			i++;
			continue;
		}
		if (strncmp(arg, "--config=", 9) == 0)
			continue;
		if (strncmp(arg, "--", 2) != 0 || strlen(arg + 2) >= sizeof(name)) {
			snprintf(err, errlen, "unexpected argument '%s' (see --help)", arg);
			return -EINVAL;
		}
		snprintf(name, sizeof(name), "%s", arg + 2);
		eq = strchr(name, '=');
		if (eq) {
			*eq = 0;
			value = arg + 2 + (eq - name) + 1;
		} else if (i + 1 < argc) {
			value = argv[++i];
		} else {
			snprintf(err, errlen, "option '--%s' needs a value", name);
			return -EINVAL;
		}
		for (char *p = name; *p; p++)
			if (*p == '-')
				*p = '_';
		k = find_key(NULL, name);
		if (!k) {
			snprintf(err, errlen, "unknown option '%s' (see --help)", arg);
			return -EINVAL;
		}
		r = set_key(c, k, value, err, errlen);
		if (r < 0)
			return r;
	}
	return hd_config_validate(c, err, errlen);
}

int hd_config_validate(const struct hd_config *c, char *err, size_t errlen)
{
	if (c->socket_path[0] != '/') {
		snprintf(err, errlen, "socket_path '%s' must be an absolute path", c->socket_path);
		return -EINVAL;
	}
	if (c->sq_entries & (c->sq_entries - 1)) {
		snprintf(err, errlen, "sq_entries %u is not a power of two", c->sq_entries);
		return -EINVAL;
	}
	if (c->arena_bytes > c->max_arena_bytes) {
		snprintf(err, errlen, "arena_bytes %u exceeds max_arena_bytes %u", c->arena_bytes,
			 c->max_arena_bytes);
		return -EINVAL;
	}
	if (strcmp(c->backend, "auto") && strcmp(c->backend, "cpu") && strcmp(c->backend, "cuda")) {
		snprintf(err, errlen, "backend '%s' is not one of auto, cpu, cuda", c->backend);
		return -EINVAL;
	}
	if (strcmp(c->pager, "auto") && strcmp(c->pager, "io_uring") && strcmp(c->pager, "threads")) {
		snprintf(err, errlen, "pager '%s' is not one of auto, io_uring, threads", c->pager);
		return -EINVAL;
	}
	{
		struct in_addr a;
		if (inet_pton(AF_INET, c->metrics_addr, &a) != 1) {
			snprintf(err, errlen, "metrics_addr '%s' is not an IPv4 address", c->metrics_addr);
			return -EINVAL;
		}
	}
	if (c->evict_low_pct > c->evict_high_pct) {
		snprintf(err, errlen, "evict_low_pct %u exceeds evict_high_pct %u", c->evict_low_pct,
			 c->evict_high_pct);
		return -EINVAL;
	}
	if (c->model_path[0]) {
		struct stat st;
		if (stat(c->model_path, &st) < 0 || !S_ISDIR(st.st_mode)) {
			snprintf(err, errlen, "model_path '%s' is not a directory", c->model_path);
			return -EINVAL;
		}
	}
	if (!hd_config_model_name_ok(c->model_name)) {
		snprintf(err, errlen,
			 "model_name '%s': 1 to 63 letters, digits, '.', '_' or '-', not starting with '.'",
			 c->model_name);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < c->n_preload; i++) {
		const struct hd_preload *p = &c->preload[i];
		struct stat st;

		if (!strcmp(p->name, c->model_name)) {
			snprintf(err, errlen, "[models] %s: the [model] section's model has that name",
				 p->name);
			return -EINVAL;
		}
		if (p->path[0] != '/' || stat(p->path, &st) < 0 || !S_ISDIR(st.st_mode)) {
			snprintf(err, errlen, "[models] %s: '%s' is not an absolute path to a directory",
				 p->name, p->path);
			return -EINVAL;
		}
	}
	return 0;
}

static void print_value(const struct hd_config *c, const struct key *k, FILE *f)
{
	const char *base = (const char *)c + k->off;
	static const char *levels[8] = { [3] = "err", [4] = "warn", [6] = "info", [7] = "debug" };

	switch (k->type) {
	case K_STR: fputs(base, f); break;
	case K_U32: fprintf(f, "%u", *(const uint32_t *)base); break;
	case K_IDS_UID:
	case K_IDS_GID: {
		uint32_t n = k->type == K_IDS_UID ? c->n_allow_uids : c->n_allow_gids;
		for (uint32_t i = 0; i < n; i++)
			fprintf(f, "%s%u", i ? "," : "", ((const uint32_t *)base)[i]);
		break;
	}
	case K_LOGLEVEL: fputs(levels[*(const int *)base & 7], f); break;
	case K_PRELOAD: break;
	}
}

void hd_config_dump(const struct hd_config *c, FILE *f)
{
	const char *section = "";

	for (size_t i = 0; i < HR_ARRAY_SIZE(keys); i++) {
		if (strcmp(section, keys[i].section)) {
			section = keys[i].section;
			fprintf(f, "%s[%s]\n", i ? "\n" : "", section);
		}
		if (keys[i].type == K_PRELOAD) {
			/* As the file writes it: NAME = PATH, one line each. */
			for (uint32_t j = 0; j < c->n_preload; j++)
				fprintf(f, "%s = %s\n", c->preload[j].name, c->preload[j].path);
			continue;
		}
		fprintf(f, "%s = ", keys[i].name);
		print_value(c, &keys[i], f);
		fputc('\n', f);
	}
}

void hd_config_usage(FILE *f)
{
	struct hd_config d;

	hd_config_defaults(&d);
	fprintf(f, "Usage: hearthd [--config FILE] [--check-config] [--KEY=VALUE]...\n\n"
		   "Every configuration key is also a flag (write '_' as '-'); flags override\n"
		   "the file (default %s, read when present).\n\n",
		HD_DEFAULT_CONFIG);
	for (size_t i = 0; i < HR_ARRAY_SIZE(keys); i++) {
		char flag[64];
		snprintf(flag, sizeof(flag), "--%s", keys[i].name);
		for (char *p = flag + 2; *p; p++)
			if (*p == '_')
				*p = '-';
		bool empty = (keys[i].type == K_STR && !((const char *)&d + keys[i].off)[0]) ||
			     (keys[i].type == K_IDS_UID && !d.n_allow_uids) ||
			     (keys[i].type == K_IDS_GID && !d.n_allow_gids) ||
			     keys[i].type == K_PRELOAD;

		fprintf(f, "  %-28s [%s] %s", flag, keys[i].section, keys[i].help);
		if (!empty) {
			fputs(" (default: ", f);
			print_value(&d, &keys[i], f);
			fputc(')', f);
		}
		fputc('\n', f);
	}
	fputs("\n  --check-config               parse and validate, print the effective "
	      "configuration, exit\n",
	      f);
}

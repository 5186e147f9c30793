/* SPDX-License-Identifier: MIT */
/*
 * hearthd's configuration as an operator meets it: `--check-config` with a
 * good INI file (exit 0, the dump echoes every value), with bad ones (unknown
 * key or section, bad or out-of-range numbers, bad enumerated values, a
 * missing file, cross-field errors: exit non-zero with a message naming the
 * problem), every INI key also as a --flag (both `--flag value` and
 * `--flag=value`), flags overriding the file, and --help listing every key.
 * The key list comes from the daemon's own dump, so a new key without a test
 * value here fails the test.
 *
 * Usage: test_integ_daemon_config HEARTHD MODEL_DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static const char *hearthd, *model;
static char dir[64];

struct run {
	int status;      /* waitpid status */
	char out[32768];
	char err[8192];
};

static bool exited_ok(const struct run *r)
{
	return WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0;
}

static bool failed_cleanly(const struct run *r)
{
	/* A non-zero exit, not a crash. */
	return WIFEXITED(r->status) && WEXITSTATUS(r->status) != 0;
}

/* Run hearthd with args (NULL-terminated), capturing stdout and stderr;
 * bounded by 10 s. */
static void run(struct run *r, const char *const *args)
{
	const char *argv[160];
	int po[2], pe[2];
	size_t no = 0, ne = 0, n = 0;
	pid_t pid;
	uint64_t deadline = th_now_ns() + 10000000000ull;

	memset(r, 0, sizeof(*r));
	argv[n++] = hearthd;
	for (unsigned i = 0; args[i] && n < 159; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	REQUIRE(pipe2(po, O_CLOEXEC) == 0 && pipe2(pe, O_CLOEXEC) == 0, "pipe");
	pid = fork();
	REQUIRE(pid >= 0, "fork");
	if (pid == 0) {
		dup2(po[1], 1);
		dup2(pe[1], 2);
		execv(hearthd, (char *const *)argv);
		_exit(127);
	}
	close(po[1]);
	close(pe[1]);
	{
		struct pollfd p[2] = { { po[0], POLLIN, 0 }, { pe[0], POLLIN, 0 } };
		char *buf[2] = { r->out, r->err };
		size_t *len[2] = { &no, &ne }, cap[2] = { sizeof(r->out) - 1, sizeof(r->err) - 1 };

		while (p[0].fd >= 0 || p[1].fd >= 0) {
			int64_t left = (int64_t)(deadline - th_now_ns()) / 1000000;

			if (left <= 0) {
				kill(pid, SIGKILL);
				CHECK(0, "hearthd %s ... did not finish within 10 s", args[0] ? args[0] : "");
				break;
			}
			if (poll(p, 2, (int)left) < 0 && errno != EINTR)
				break;
			for (int i = 0; i < 2; i++) {
				ssize_t k;

				if (p[i].fd < 0 || !p[i].revents)
					continue;
				k = read(p[i].fd, buf[i] + *len[i], cap[i] - *len[i]);
				if (k > 0)
					*len[i] += (size_t)k;
				if (k <= 0 || *len[i] == cap[i]) {
					close(p[i].fd);
					p[i].fd = -1;
				}
			}
		}
		for (int i = 0; i < 2; i++)
			if (p[i].fd >= 0)
				close(p[i].fd);
	}
	waitpid(pid, &r->status, 0);
	CHECK(!strstr(r->err, "Sanitizer") && !strstr(r->err, "runtime error:"),
	      "sanitizer report from hearthd %s:\n%s", args[0] ? args[0] : "", r->err);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	REQUIRE(f, "fopen %s: %s", path, strerror(errno));
	fputs(text, f);
	fclose(f);
}

/* ---- values for every key ----------------------------------------------------- */

struct kv {
	const char *section, *key, *value, *dump; /* dump: how --check-config prints it */
};

static char sock_path[128], l2_path[128], state_dir[128];

static struct kv values[] = {
	{ "daemon", "socket_path", sock_path, NULL },
	{ "daemon", "allow_uids", "1000, 1001", "1000,1001" },
	{ "daemon", "allow_gids", "27", NULL },
	{ "daemon", "max_clients", "17", NULL },
	{ "daemon", "metrics_port", "19999", NULL },
	{ "daemon", "metrics_addr", "127.0.0.2", NULL },
	{ "daemon", "log_level", "debug", NULL },
	{ "model", "model_path", NULL /* the model dir */, NULL },
	{ "model", "model_name", "tiny-test", NULL },
	{ "model", "backend", "cpu", NULL },
	{ "model", "device", "1", NULL },
	{ "model", "threads", "2", NULL },
	{ "model", "kv_pages", "300", NULL },
	{ "model", "page_tokens", "32", NULL },
	{ "model", "max_step_tokens", "256", NULL },
	{ "model", "graph_max_tokens", "64", NULL },
	{ "scheduler", "max_batch", "32", NULL },
	{ "scheduler", "bulk_share_pct", "10", NULL },
	{ "scheduler", "batch_wait_us", "250", NULL },
	{ "reactor", "spin_us", "7", NULL },
	{ "client", "sq_entries", "128", NULL },
	{ "client", "arena_bytes", "2097152", NULL },
	{ "client", "max_arena_bytes", "8388608", NULL },
	{ "client", "max_sessions_per_client", "99", NULL },
	{ "kv", "l2_path", l2_path, NULL },
	{ "kv", "l2_mib", "64", NULL },
	{ "kv", "pager", "threads", NULL },
	{ "kv", "state_dir", state_dir, NULL },
	{ "kv", "evict_low_pct", "5", NULL },
	{ "kv", "evict_high_pct", "30", NULL },
	{ "kv", "checkpoint_ms", "250", NULL },
};
#define N_VALUES (sizeof(values) / sizeof(values[0]))

static const struct kv *find_value(const char *key)
{
	for (size_t i = 0; i < N_VALUES; i++)
		if (strcmp(values[i].key, key) == 0)
			return &values[i];
	return NULL;
}

static bool dump_has(const char *dump, const char *key, const char *value)
{
	char line[512];

	snprintf(line, sizeof(line), "\n%s = %s\n", key, value);
	return strstr(dump, line) != NULL || (strncmp(dump, line + 1, strlen(line + 1)) == 0);
}

/* The keys the daemon knows, from its own dump of the defaults. */
static unsigned daemon_keys(char keys[][64], unsigned max)
{
	const char *args[] = { "--check-config", NULL };
	struct run r;
	unsigned n = 0;
	char *save = NULL, *line;

	run(&r, args);
	REQUIRE(exited_ok(&r), "hearthd --check-config with defaults failed: %s", r.err);
	CHECK(strstr(r.out, "# configuration OK") != NULL, "no '# configuration OK' in:\n%s", r.out);
	for (line = strtok_r(r.out, "\n", &save); line && n < max; line = strtok_r(NULL, "\n", &save)) {
		char *eq = strstr(line, " = ");
		if (line[0] == '[' || line[0] == '#' || !eq)
			continue;
		snprintf(keys[n], 64, "%.*s", (int)(eq - line), line);
		n++;
	}
	return n;
}

/* ---- checks ------------------------------------------------------------------------ */

static void good_file(char keys[][64], unsigned n_keys)
{
	char path[128], text[8192];
	size_t len = 0;
	const char *section = "";
	const char *args[] = { "--config", path, "--check-config", NULL };
	struct run r;

	snprintf(path, sizeof(path), "%s/good.conf", dir);
	len += (size_t)snprintf(text + len, sizeof(text) - len,
				"; hearthd test configuration\n# with comments\n\n");
	for (size_t i = 0; i < N_VALUES; i++) {
		if (strcmp(section, values[i].section)) {
			section = values[i].section;
			len += (size_t)snprintf(text + len, sizeof(text) - len, "\n[%s]\n", section);
		}
		len += (size_t)snprintf(text + len, sizeof(text) - len, "%s = %s\n", values[i].key,
					values[i].value);
	}
	write_file(path, text);
	run(&r, args);
	if (!CHECK(exited_ok(&r), "good file: exit status 0x%x, stderr: %s", r.status, r.err))
		return;
	for (unsigned i = 0; i < n_keys; i++) {
		const struct kv *v = find_value(keys[i]);

		if (!CHECK(v, "key '%s' has no test value here: add it to values[]", keys[i]))
			continue;
		CHECK(dump_has(r.out, v->key, v->dump ? v->dump : v->value),
		      "good file: the dump does not show '%s = %s':\n%s", v->key,
		      v->dump ? v->dump : v->value, r.out);
	}
}

static void flag_names(const struct kv *v, char *flag, size_t len)
{
	snprintf(flag, len, "--%s", v->key);
	for (char *p = flag + 2; *p; p++)
		if (*p == '_')
			*p = '-';
}

/* One key as a flag, both spellings (used to find the culprit when the
 * all-flags run fails). */
static void one_key_as_flag(const struct kv *v)
{
	char flag[80], flag_eq[600];
	struct run r;

	flag_names(v, flag, sizeof(flag));
	snprintf(flag_eq, sizeof(flag_eq), "%s=%s", flag, v->value);
	{
		const char *args[] = { "--check-config", flag, v->value, NULL };
		run(&r, args);
		if (CHECK(exited_ok(&r), "%s %s: status 0x%x: %s", flag, v->value, r.status, r.err))
			CHECK(dump_has(r.out, v->key, v->dump ? v->dump : v->value),
			      "%s %s: the dump does not show it", flag, v->value);
	}
	{
		const char *args[] = { flag_eq, "--check-config", NULL };
		run(&r, args);
		if (CHECK(exited_ok(&r), "%s: status 0x%x: %s", flag_eq, r.status, r.err))
			CHECK(dump_has(r.out, v->key, v->dump ? v->dump : v->value),
			      "%s: the dump does not show it", flag_eq);
	}
}

/* Every key as a flag at once, as `--flag value` and as `--flag=value`
 * (each hearthd start costs ~0.1 s where it links the CUDA runtime). */
static void every_key_as_flag(char keys[][64], unsigned n_keys)
{
	static char flags[64][80], eqs[64][600];
	for (int form = 0; form < 2; form++) {
		const char *args[2 * 64 + 2];
		unsigned n = 0;
		bool ok = true;
		struct run r;

		args[n++] = "--check-config";
		for (unsigned i = 0; i < n_keys && i < 64; i++) {
			const struct kv *v = find_value(keys[i]);

			if (!v)
				continue; /* reported by good_file */
			flag_names(v, flags[i], sizeof(flags[i]));
			if (form == 0) {
				args[n++] = flags[i];
				args[n++] = v->value;
			} else {
				snprintf(eqs[i], sizeof(eqs[i]), "%s=%s", flags[i], v->value);
				args[n++] = eqs[i];
			}
		}
		args[n] = NULL;
		run(&r, args);
		ok = exited_ok(&r);
		for (unsigned i = 0; ok && i < n_keys; i++) {
			const struct kv *v = find_value(keys[i]);
			ok = !v || dump_has(r.out, v->key, v->dump ? v->dump : v->value);
		}
		if (ok)
			continue;
		th_log("every key as a flag (%s form) failed: trying one key at a time",
		       form ? "--flag=value" : "--flag value");
		for (unsigned i = 0; i < n_keys; i++)
			if (find_value(keys[i]))
				one_key_as_flag(find_value(keys[i]));
		return;
	}
}

static void help_lists_every_key(char keys[][64], unsigned n_keys)
{
	const char *args[] = { "--help", NULL };
	struct run r;

	run(&r, args);
	CHECK(exited_ok(&r), "--help: status 0x%x", r.status);
	for (unsigned i = 0; i < n_keys; i++) {
		char flag[80];

		snprintf(flag, sizeof(flag), "--%.60s ", keys[i]);
		for (char *p = flag + 2; *p; p++)
			if (*p == '_')
				*p = '-';
		CHECK(strstr(r.out, flag) != NULL, "--help does not list %s", flag);
	}
}

/* A bad file: exit non-zero (not a crash) with stderr naming each needle. */
static void bad_file(const char *what, const char *text, const char *needle1, const char *needle2)
{
	char path[128];
	const char *args[] = { "--config", path, "--check-config", NULL };
	struct run r;

	snprintf(path, sizeof(path), "%s/bad.conf", dir);
	write_file(path, text);
	run(&r, args);
	if (!CHECK(failed_cleanly(&r), "%s: accepted (status 0x%x); stdout:\n%.200s", what, r.status, r.out))
		return;
	CHECK(strstr(r.err, needle1), "%s: the message does not name '%s': %s", what, needle1, r.err);
	if (needle2)
		CHECK(strstr(r.err, needle2), "%s: the message does not name '%s': %s", what, needle2,
		      r.err);
}

static void bad_args(const char *what, const char *const *args, const char *needle)
{
	struct run r;

	run(&r, args);
	if (!CHECK(failed_cleanly(&r), "%s: accepted (status 0x%x); stdout:\n%.400s", what, r.status,
		   r.out))
		return;
	if (needle)
		CHECK(strstr(r.err, needle), "%s: the message does not name '%s': %s", what, needle,
		      r.err);
}

static void bad_cases(void)
{
	char text[512], missing[128];

	bad_file("unknown key", "[daemon]\nbogus_key = 1\n", "bogus_key", NULL);
	bad_file("unknown section", "[bogus]\nspin_us = 1\n", "bogus", NULL);
	bad_file("key in the wrong section", "[model]\nspin_us = 5\n", "spin_us", NULL);
	bad_file("not a number", "[model]\npage_tokens = 12abc\n", "page_tokens", "12abc");
	bad_file("negative number", "[daemon]\nmax_clients = -1\n", "max_clients", "-1");
	bad_file("number above the range", "[daemon]\nmax_clients = 5000\n", "max_clients", "5000");
	bad_file("number below the range", "[model]\npage_tokens = 0\n", "page_tokens", NULL);
	bad_file("number over u32", "[model]\nkv_pages = 99999999999999999999\n", "kv_pages", NULL);
	bad_file("empty number", "[reactor]\nspin_us =\n", "spin_us", NULL);
	bad_file("float", "[reactor]\nspin_us = 1.5\n", "spin_us", NULL);
	bad_file("bad log level", "[daemon]\nlog_level = loud\n", "log_level", "loud");
	bad_file("bad metrics address", "[daemon]\nmetrics_addr = localhost\n", "metrics_addr", "localhost");
	bad_file("bad backend", "[model]\nbackend = tpu\n", "backend", "tpu");
	bad_file("bad uid list", "[daemon]\nallow_uids = 1,abc\n", "allow_uids", NULL);
	bad_file("sq_entries not a power of two", "[client]\nsq_entries = 100\n", "sq_entries", NULL);
	bad_file("arena over its maximum", "[client]\narena_bytes = 8388608\nmax_arena_bytes = 4194304\n",
		 "arena_bytes", NULL);
	bad_file("bad pager", "[kv]\npager = aio\n", "pager", "aio");
	bad_file("evict_low_pct over evict_high_pct", "[kv]\nevict_low_pct = 50\nevict_high_pct = 40\n",
		 "evict_low_pct", NULL);
	bad_file("percentage over 100", "[kv]\nevict_high_pct = 101\n", "evict_high_pct", NULL);
	bad_file("relative socket path", "[daemon]\nsocket_path = run/h.sock\n", "socket_path", NULL);
	snprintf(text, sizeof(text), "[model]\nmodel_path = %s/no-such-model\n", dir);
	bad_file("model path not a directory", text, "model_path", NULL);
	bad_file("syntax error", "[daemon\nthis is not ini\n", "bad.conf", NULL);
	bad_file("model name too long",
		 "[model]\nmodel_name = "
		 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
		 "model_name", NULL);

	snprintf(missing, sizeof(missing), "%s/no-such-file.conf", dir);
	{
		const char *args[] = { "--config", missing, "--check-config", NULL };
		bad_args("missing config file", args, "no-such-file.conf");
	}
	{
		const char *args[] = { "--check-config", "--bogus-flag", "1", NULL };
		bad_args("unknown flag", args, "bogus-flag");
	}
	{
		const char *args[] = { "--check-config", "--spin-us", NULL };
		bad_args("flag without its value", args, "spin-us");
	}
	{
		const char *args[] = { "--check-config", "--spin-us=abc", NULL };
		bad_args("flag with a bad value", args, "spin_us");
	}
	{
		const char *args[] = { "--check-config", "stray", NULL };
		bad_args("stray argument", args, "stray");
	}
	{
		const char *args[] = { "--check-config", "--config", NULL };
		bad_args("--config without a file", args, "config");
	}
	{
		/* A misspelt option that merely starts with "--config". */
		char a[160];
		snprintf(a, sizeof(a), "--config-file=%s", missing);
		const char *args[] = { "--check-config", a, NULL };
		bad_args("--config-file=FILE (not an option)", args, "config-file");
	}
}

static void flags_override_file(void)
{
	char path[128];
	const char *args[] = { "--config", path, "--spin-us=9", "--check-config", "--max-clients", "5", NULL };
	struct run r;

	snprintf(path, sizeof(path), "%s/override.conf", dir);
	write_file(path, "[reactor]\nspin_us = 7\n[daemon]\nmax_clients = 3\nlog_level = warn\n");
	run(&r, args);
	if (!CHECK(exited_ok(&r), "override: status 0x%x: %s", r.status, r.err))
		return;
	CHECK(dump_has(r.out, "spin_us", "9") && dump_has(r.out, "max_clients", "5"),
	      "flags do not override the file:\n%s", r.out);
	CHECK(dump_has(r.out, "log_level", "warn"), "the file's other keys are lost:\n%s", r.out);
}

int main(int argc, char **argv)
{
	static char keys[64][64];
	unsigned n_keys;
	char p[160];

	th_init("daemon_config", 80);
	REQUIRE(argc == 3, "usage: %s HEARTHD MODEL_DIR", argv[0]);
	hearthd = argv[1];
	model = argv[2];
	snprintf(dir, sizeof(dir), "/tmp/hearth-cfg-XXXXXX");
	REQUIRE(mkdtemp(dir), "mkdtemp");
	snprintf(sock_path, sizeof(sock_path), "%s/run/h.sock", dir);
	snprintf(l2_path, sizeof(l2_path), "%s/l2.bin", dir);
	snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
	for (size_t i = 0; i < N_VALUES; i++)
		if (!values[i].value)
			values[i].value = model;

	n_keys = daemon_keys(keys, 64);
	CHECK(n_keys >= N_VALUES, "the daemon dumps %u keys, this test knows %zu", n_keys, N_VALUES);
	help_lists_every_key(keys, n_keys);
	good_file(keys, n_keys);
	every_key_as_flag(keys, n_keys);
	flags_override_file();
	bad_cases();

	/* --check-config must not start anything: no socket appeared. */
	CHECK(access(sock_path, F_OK) < 0, "--check-config created %s", sock_path);
	CHECK(access(l2_path, F_OK) < 0, "--check-config created %s", l2_path);
	CHECK(access(state_dir, F_OK) < 0, "--check-config created %s", state_dir);
	unlink(sock_path);
	unlink(l2_path);
	rmdir(state_dir);
	for (const char *f = "good.conf\0bad.conf\0override.conf\0"; *f; f += strlen(f) + 1) {
		snprintf(p, sizeof(p), "%s/%s", dir, f);
		unlink(p);
	}
	snprintf(p, sizeof(p), "%s/run", dir);
	rmdir(p);
	rmdir(dir);
	return th_result();
}

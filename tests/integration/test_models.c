/* SPDX-License-Identifier: MIT */
/*
 * Several models in one daemon: a preloaded second model serves its own
 * clients (scores equal the in-process reference of that model); hearthctl
 * load brings a third one in while the others keep serving (the daemon holds
 * the load open for 1.5 s through HEARTH_TEST_LOAD_DELAY_MS, and requests on
 * the default model complete meanwhile); unload is refused while a client is
 * attached, --wait waits for it, and a reload restores the named sessions the
 * unload saved; without a state directory, an unload that would lose named
 * sessions is refused unless --force; bad loads give their reason and the
 * daemon serves on.
 *   test_integ_models HEARTHD MODEL_DIR HEARTHCTL FIXTURES_MODELS_DIR
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "hearth/hearth.h"
#include "ref.h"

static char out[65536];
static const char *hearthctl;

/* hearthctl --socket SOCK ARGS...: exit status, output in out. */
static int ctl(const char *sock, const char *a1, const char *a2, const char *a3, const char *a4)
{
	const char *argv[] = { hearthctl, "--socket", sock, a1, a2, a3, a4, NULL };
	int r = th_run_capture(argv, out, sizeof(out), 30000);

	return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

/* hearthctl in the background, output to path: its pid. */
static pid_t ctl_spawn(const char *sock, const char *path, const char *a1, const char *a2,
		       const char *a3, const char *a4)
{
	pid_t pid = fork();

	REQUIRE(pid >= 0, "fork");
	if (pid == 0) {
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0)
			_exit(126);
		dup2(fd, 1);
		dup2(fd, 2);
		execl(hearthctl, hearthctl, "--socket", sock, a1, a2, a3, a4, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Exit status of pid within timeout_ms, -1 if it is still running then. */
static int wait_exit(pid_t pid, unsigned timeout_ms)
{
	uint64_t end = th_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	int st;

	do {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
		th_sleep_ms(10);
	} while (th_now_ns() < end);
	return -1;
}

static bool file_has(const char *path, const char *needle)
{
	FILE *f = fopen(path, "r");
	size_t n;

	if (!f)
		return false;
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = 0;
	fclose(f);
	return strstr(out, needle) != NULL;
}

static struct hearth *connect_model(const char *sock, const char *model)
{
	return hearth_connect(&(struct hearth_opts){ .socket_path = sock, .client_name = "models",
						      .model = model });
}

/* Scores on model `name` through the daemon equal the reference's. */
static void check_scores(const char *sock, const char *name, const char *dir)
{
	int32_t tok[12] = { 5, 9, 14, 3, 7, 21, 2, 11, 30, 8, 4, 19 }, labels[3] = { 3, 4, 10 };
	float got[3], want[3];
	struct engine_seq *rs;
	struct hearth *h;
	struct ref ref;
	int64_t s;

	ref_init(&ref, dir);
	rs = ref_seq(&ref);
	ref_append(&ref, rs, tok, 12);
	ref_probs(&ref, rs, labels, 3, want);
	h = connect_model(sock, name);
	REQUIRE(h, "connect to model '%s': %s", name, strerror(errno));
	CHECK(!strcmp(hearth_model(h)->name, name), "attached to '%s', asked for '%s'",
	      hearth_model(h)->name, name);
	s = hearth_session_open(h, NULL, 0, NULL);
	REQUIRE(s > 0, "open on '%s'", name);
	CHECK(hearth_append(h, (uint32_t)s, tok, 12) == 12, "append on '%s'", name);
	CHECK(hearth_score(h, (uint32_t)s, NULL, 0, labels, 3, got) == 3, "score on '%s'", name);
	for (int i = 0; i < 3; i++)
		CHECK(got[i] - want[i] < 1e-5f && want[i] - got[i] < 1e-5f,
		      "'%s' label %d: %g, reference %g", name, i, got[i], want[i]);
	hearth_close(h);
	engine_seq_free(ref.e, rs);
	ref_fini(&ref);
}

int main(int argc, char **argv)
{
	char qwen[512], mistral[512], flag[600], log[160], state[128];
	int32_t tok[4] = { 1, 2, 3, 4 }, labels[2] = { 3, 4 };
	struct th_daemon d, d2;
	struct hearth *h, *hq;
	float probs[2];
	uint32_t len = 0;
	int64_t s;
	pid_t pid;
	int rc, served = 0;

	if (argc < 5) {
		fprintf(stderr, "usage: %s HEARTHD MODEL_DIR HEARTHCTL FIXTURE_MODELS\n", argv[0]);
		return 2;
	}
	hearthctl = argv[3];
	th_init("models", 120);
	snprintf(qwen, sizeof(qwen), "%s/qwen2-tiny", argv[4]);
	snprintf(mistral, sizeof(mistral), "%s/mistral-tiny", argv[4]);
	snprintf(flag, sizeof(flag), "--preload=qwen=%s", qwen);
	/* The daemon holds a hearthctl load open this long once the weights are in. */
	setenv("HEARTH_TEST_LOAD_DELAY_MS", "1500", 1);
	{
		char tmp[64];

		th_tmpdir(tmp, sizeof(tmp), "/tmp");
		snprintf(state, sizeof(state), "--state-dir=%s", tmp);
	}
	th_daemon_start(&d, argv[1], argv[2], (const char *const[]){ flag, state, NULL });

	/* Two models at start; the first is the default. */
	rc = ctl(d.sock, "models", NULL, NULL, NULL);
	CHECK(rc == 0 && strstr(out, "model default (default)") && strstr(out, "model qwen\n") &&
		      strstr(out, "Qwen2ForCausalLM"),
	      "models at start (rc %d):\n%s", rc, out);
	check_scores(d.sock, "qwen", qwen);
	check_scores(d.sock, "default", argv[2]);
	errno = 0;
	CHECK(!connect_model(d.sock, "nope") && errno == ENOENT, "unknown model: errno %d", errno);
	rc = ctl(d.sock, "--model", "qwen", "status", NULL);
	CHECK(rc == 0 && strstr(out, "model              qwen"), "status of qwen:\n%s", out);

	/* Load a third while the default one serves. */
	h = connect_model(d.sock, NULL);
	REQUIRE(h, "connect default");
	s = hearth_session_open(h, NULL, 0, NULL);
	REQUIRE(s > 0, "open");
	CHECK(hearth_append(h, (uint32_t)s, tok, 4) == 4, "append");
	snprintf(log, sizeof(log), "%s/load.out", d.dir);
	pid = ctl_spawn(d.sock, log, "load", "mistral", mistral, NULL);
	th_sleep_ms(300);
	CHECK(wait_exit(pid, 0) < 0, "hearthctl load returned before the load was done");
	rc = ctl(d.sock, "models", NULL, NULL, NULL);
	CHECK(rc == 0 && strstr(out, "model mistral\n  state          loading"),
	      "mistral not listed as loading:\n%s", out);
	errno = 0;
	CHECK(!connect_model(d.sock, "mistral") && errno == EAGAIN,
	      "connect to a loading model: errno %d", errno);
	for (uint64_t end = th_now_ns() + 500000000ull; th_now_ns() < end; served++)
		if (hearth_score(h, (uint32_t)s, NULL, 0, labels, 2, probs) != 2)
			break;
	CHECK(served >= 10, "only %d scores during the load", served);
	CHECK(wait_exit(pid, 0) < 0, "the load ended during the scores (too fast to tell)");
	rc = wait_exit(pid, 20000);
	CHECK(rc == 0 && file_has(log, "MistralForCausalLM"), "hearthctl load: rc %d\n%s", rc, out);
	th_log("%d scores on the default model while 'mistral' loaded", served);
	check_scores(d.sock, "mistral", mistral);
	hearth_close(h);

	/* Unload: refused while attached; --wait waits; a reload restores sessions. */
	hq = connect_model(d.sock, "qwen");
	REQUIRE(hq, "connect qwen");
	s = hearth_session_open(hq, "acct:7", HEARTH_OPEN_CREATE, NULL);
	REQUIRE(s > 0, "named session on qwen");
	CHECK(hearth_append(hq, (uint32_t)s, tok, 4) == 4 && hearth_append(hq, (uint32_t)s, tok, 3) == 7,
	      "append to acct:7");
	rc = ctl(d.sock, "unload", "qwen", NULL, NULL);
	CHECK(rc == 1 && strstr(out, "connection") && strstr(out, "--wait"),
	      "unload with a client attached: rc %d\n%s", rc, out);
	snprintf(log, sizeof(log), "%s/unload.out", d.dir);
	pid = ctl_spawn(d.sock, log, "unload", "--wait", "qwen", NULL);
	th_sleep_ms(300);
	CHECK(wait_exit(pid, 0) < 0, "unload --wait returned with a client attached");
	errno = 0;
	CHECK(!connect_model(d.sock, "qwen") && errno == ESHUTDOWN,
	      "connect to a draining model: errno %d", errno);
	CHECK(hearth_score(hq, (uint32_t)s, NULL, 0, labels, 2, probs) == 2,
	      "the attached client is still served while the unload waits");
	hearth_close(hq);
	rc = wait_exit(pid, 20000);
	CHECK(rc == 0 && file_has(log, "unloaded"), "unload --wait: rc %d\n%s", rc, out);
	rc = ctl(d.sock, "models", NULL, NULL, NULL);
	CHECK(rc == 0 && !strstr(out, "model qwen"), "qwen still listed:\n%s", out);
	rc = ctl(d.sock, "load", "qwen", NULL, NULL);
	CHECK(rc == 0, "reload qwen by name: rc %d\n%s", rc, out);
	hq = connect_model(d.sock, "qwen");
	REQUIRE(hq, "connect qwen again");
	s = hearth_session_open(hq, "acct:7", 0, &len);
	CHECK(s > 0 && len == 7, "acct:7 after unload and load: handle %lld, %u tokens (want 7)",
	      (long long)s, len);
	hearth_close(hq);

	/* Bad loads: a reason each, and the daemon serves on. */
	rc = ctl(d.sock, "load", "x", "/tmp", NULL);
	CHECK(rc == 1 && strstr(out, "config.json"), "load of a non-model: rc %d\n%s", rc, out);
	rc = ctl(d.sock, "load", "mistral", mistral, NULL);
	CHECK(rc == 1 && strstr(out, "already loaded"), "load twice: rc %d\n%s", rc, out);
	rc = ctl(d.sock, "load", "bad/name", mistral, NULL);
	CHECK(rc == 1 && strstr(out, "bad model name"), "bad name: rc %d\n%s", rc, out);
	rc = ctl(d.sock, "load", "unknown", NULL, NULL);
	CHECK(rc == 1 && strstr(out, "no path given"), "load without a path: rc %d\n%s", rc, out);
	rc = ctl(d.sock, "unload", "nope", NULL, NULL);
	CHECK(rc == 1 && strstr(out, "no model named"), "unload unknown: rc %d\n%s", rc, out);
	check_scores(d.sock, "default", argv[2]);
	CHECK(th_daemon_stop(&d, 20000), "clean stop");

	/* No state directory: named sessions would be lost, so --force is asked for. */
	th_daemon_start(&d2, argv[1], argv[2], NULL);
	h = connect_model(d2.sock, NULL);
	REQUIRE(h, "connect");
	s = hearth_session_open(h, "keep", HEARTH_OPEN_CREATE, NULL);
	CHECK(s > 0, "named session");
	hearth_close(h);
	rc = ctl(d2.sock, "unload", "default", NULL, NULL);
	CHECK(rc == 1 && strstr(out, "--force") && strstr(out, "state_dir"),
	      "unload losing sessions: rc %d\n%s", rc, out);
	rc = ctl(d2.sock, "unload", "--force", "default", NULL);
	CHECK(rc == 0, "unload --force: rc %d\n%s", rc, out);
	rc = ctl(d2.sock, "models", NULL, NULL, NULL);
	CHECK(rc == 0 && strstr(out, "no model loaded"), "models after unloading all:\n%s", out);
	errno = 0;
	CHECK(!connect_model(d2.sock, NULL) && errno == ENOENT, "connect with no model: errno %d",
	      errno);
	rc = ctl(d2.sock, "load", "default", NULL, NULL);
	CHECK(rc == 0 && strstr(out, "(default)"), "load the configured model again: rc %d\n%s",
	      rc, out);
	check_scores(d2.sock, "default", argv[2]);
	CHECK(th_daemon_stop(&d2, 20000), "clean stop");
	return th_result();
}

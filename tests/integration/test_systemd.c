/* SPDX-License-Identifier: MIT */
/*
 * hearthd under systemd's service protocol, without systemd: the sd_notify
 * messages (READY, STATUS, WATCHDOG pings while the reactor turns, STOPPING)
 * through a NOTIFY_SOCKET this test owns, and socket activation through
 * systemd-socket-activate (skipped when that tool is missing).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "hearth/hearth.h"

/* Read one datagram within timeout_ms into buf; returns its length or -1. */
static int recv_msg(int fd, char *buf, size_t len, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	ssize_t n;

	if (poll(&p, 1, timeout_ms) != 1)
		return -1;
	n = recv(fd, buf, len - 1, 0);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return (int)n;
}

/* Wait for a datagram containing needle; returns true when seen. */
static bool expect_msg(int fd, const char *needle, int timeout_ms, char *seen, size_t seen_len)
{
	uint64_t end = th_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	char buf[1024];

	while (th_now_ns() < end) {
		if (recv_msg(fd, buf, sizeof(buf), (int)((end - th_now_ns()) / 1000000) + 1) < 0)
			continue;
		if (seen)
			snprintf(seen, seen_len, "%s", buf);
		if (strstr(buf, needle))
			return true;
	}
	return false;
}

static pid_t spawn(char *const argv[], char *const envp_extra[])
{
	pid_t pid = fork();

	REQUIRE(pid >= 0, "fork");
	if (pid == 0) {
		for (int i = 0; envp_extra && envp_extra[i]; i++)
			putenv(envp_extra[i]);
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

static int wait_exit(pid_t pid, unsigned timeout_ms)
{
	int status;

	for (unsigned i = 0; i < timeout_ms / 10; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		th_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* A file of /proc/PID into buf (NUL-terminated; environ's NULs kept). */
static size_t proc_read(pid_t pid, const char *name, char *buf, size_t cap)
{
	char path[96];
	ssize_t n = -1;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, buf, cap - 1);
		close(fd);
	}
	buf[n > 0 ? n : 0] = 0;
	return n > 0 ? (size_t)n : 0;
}

static bool environ_has(const char *env, size_t len, const char *prefix)
{
	for (size_t i = 0; i < len; i += strlen(env + i) + 1)
		if (!strncmp(env + i, prefix, strlen(prefix)))
			return true;
	return false;
}

/*
 * The process as ps, top and systemd see it, after hearthd re-executed
 * itself to quiet the cpu backend's thread pools: still named hearthd, the
 * pools' variables set, the caller's environment kept, the pid unchanged
 * (READY came from it), and the reactor thread named after its model.
 */
static void check_process(pid_t pid)
{
	char buf[8192], task[64], name[32];
	size_t n = proc_read(pid, "comm", buf, sizeof(buf));
	bool reactor = false;
	DIR *d;

	CHECK(n && !strcmp(buf, "hearthd\n"), "process name '%s', want hearthd", buf);
	n = proc_read(pid, "environ", buf, sizeof(buf));
	CHECK(environ_has(buf, n, "OMP_WAIT_POLICY=passive") &&
	      environ_has(buf, n, "OPENBLAS_THREAD_TIMEOUT=4"), "pool variables not set");
	CHECK(environ_has(buf, n, "NOTIFY_SOCKET="), "NOTIFY_SOCKET lost across the re-exec");
	snprintf(task, sizeof(task), "/proc/%d/task", (int)pid);
	d = opendir(task);
	for (struct dirent *e; d && (e = readdir(d));) {
		snprintf(name, sizeof(name), "task/%.16s/comm", e->d_name);
		if (e->d_name[0] != '.' && proc_read(pid, name, buf, sizeof(buf)))
			reactor |= !strcmp(buf, "hd-r:default\n");
	}
	if (d)
		closedir(d);
	CHECK(reactor, "no thread named hd-r:default");
}

static void test_notify(const char *hearthd, const char *model, const char *dir)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char sock[256], modelflag[512], sockflag[300], env_notify[300], seen[1024] = "";
	char env_wd[] = "WATCHDOG_USEC=200000";
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), pings = 0, rc;
	pid_t pid;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", dir);
	REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "notify socket");
	snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", sa.sun_path);
	snprintf(sock, sizeof(sock), "%s/h.sock", dir);
	snprintf(sockflag, sizeof(sockflag), "--socket-path=%s", sock);
	snprintf(modelflag, sizeof(modelflag), "--model-path=%s", model);
	pid = spawn((char *[]){ (char *)hearthd, sockflag, modelflag, NULL },
		    (char *[]){ env_notify, env_wd, NULL });
	CHECK(expect_msg(fd, "READY=1", 30000, seen, sizeof(seen)), "READY=1 never came (last: %s)",
	      seen);
	CHECK(strstr(seen, "STATUS=serving model"), "READY without a STATUS line: %s", seen);
	/* The socket is there once READY is sent. */
	CHECK(access(sock, F_OK) == 0, "socket missing after READY");
	check_process(pid);
	for (uint64_t end = th_now_ns() + 1000000000ull; th_now_ns() < end;)
		if (expect_msg(fd, "WATCHDOG=1", 300, NULL, 0))
			pings++;
	CHECK(pings >= 3, "%d WATCHDOG=1 pings in 1 s with WATCHDOG_USEC=200000, want >= 3", pings);
	kill(pid, SIGTERM);
	CHECK(expect_msg(fd, "STOPPING=1", 10000, seen, sizeof(seen)), "no STOPPING=1 (last: %s)",
	      seen);
	rc = wait_exit(pid, 30000);
	CHECK(rc == 0, "hearthd under NOTIFY_SOCKET exited %d", rc);
	close(fd);
}

static void test_activation(const char *hearthd, const char *model, const char *dir)
{
	static const char *const tools[] = { "/usr/bin/systemd-socket-activate",
					     "/lib/systemd/systemd-socket-activate" };
	const char *tool = NULL;
	char sock[256], listen[300], modelflag[512], unused[300];
	struct hearth *h = NULL;
	pid_t pid;
	int rc;

	for (size_t i = 0; i < sizeof(tools) / sizeof(tools[0]); i++)
		if (access(tools[i], X_OK) == 0)
			tool = tools[i];
	if (!tool) {
		th_log("skip socket activation: systemd-socket-activate not installed");
		return;
	}
	snprintf(sock, sizeof(sock), "%s/act.sock", dir);
	snprintf(listen, sizeof(listen), "--listen=%s", sock);
	snprintf(modelflag, sizeof(modelflag), "--model-path=%s", model);
	/* A socket path hearthd must not use: the passed socket wins. */
	snprintf(unused, sizeof(unused), "--socket-path=%s/not-used.sock", dir);
	pid = spawn((char *[]){ (char *)tool, "--seqpacket", listen, (char *)hearthd, modelflag,
				unused, NULL },
		    NULL);
	for (int i = 0; i < 3000 && access(sock, F_OK) < 0; i++)
		th_sleep_ms(10);
	for (int i = 0; i < 300 && !h; i++) {
		h = hearth_connect(&(struct hearth_opts){ .socket_path = sock,
							  .client_name = "activated" });
		if (!h)
			th_sleep_ms(100);
	}
	CHECK(h, "connect through the activated socket: %s", strerror(errno));
	if (h) {
		CHECK(hearth_nop(h) == 0, "NOP through the activated daemon");
		hearth_close(h);
	}
	CHECK(access(sock, F_OK) == 0 || errno != ENOENT, "activated socket file");
	{
		char p[320];
		snprintf(p, sizeof(p), "%s/not-used.sock", dir);
		CHECK(access(p, F_OK) < 0, "hearthd bound its own socket despite activation");
	}
	kill(pid, SIGTERM);
	rc = wait_exit(pid, 30000);
	CHECK(rc == 0, "socket-activated hearthd exited %d", rc);
	CHECK(access(sock, F_OK) == 0, "hearthd removed the socket systemd owns");
}

int main(int argc, char **argv)
{
	char dir[] = "/tmp/hearth-systemd-XXXXXX";

	if (argc < 3) {
		fprintf(stderr, "usage: %s HEARTHD MODEL_DIR\n", argv[0]);
		return 2;
	}
	th_init("systemd", 120);
	REQUIRE(mkdtemp(dir), "mkdtemp");
	test_notify(argv[1], argv[2], dir);
	test_activation(argv[1], argv[2], dir);
	return th_result();
}

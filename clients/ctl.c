/* SPDX-License-Identifier: MIT */
/*
 * The client end of the control socket: where the daemon listens (the same
 * rule as hearthd's configuration defaults), connecting, and one
 * request/response round trip with an optional passed descriptor. Used by
 * libhearth and hearthctl.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "hearth_pvt.h"
#include "hr_common.h"
#include "hr_control.h"

const char *hearth_default_socket(char *buf, size_t len)
{
	const char *rt = getenv("XDG_RUNTIME_DIR");
	int n;

	if (!buf) {
		errno = EINVAL;
		return NULL;
	}
	/* Mirrors hd_config_defaults() in daemon/config.c. */
	if (geteuid() == 0)
		n = snprintf(buf, len, "/run/hearth/hearthd.sock");
	else if (rt && rt[0] == '/' && strlen(rt) < 80)
		n = snprintf(buf, len, "%s/hearth/hearthd.sock", rt);
	else
		n = snprintf(buf, len, "/tmp/hearth-%u/hearthd.sock", (unsigned)getuid());
	if (n < 0 || (size_t)n >= len) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	return buf;
}

int hearth__socket_path(const char *path, char *buf, size_t len)
{
	const char *env = getenv("HEARTH_SOCKET");

	if (!path || !path[0])
		path = env && env[0] ? env : NULL;
	if (!path)
		return hearth_default_socket(buf, len) ? 0 : -errno;
	if (strlen(path) >= len)
		return -ENAMETOOLONG;
	strcpy(buf, path);
	return 0;
}

int hearth__ctl_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_close_ int fd = -1;
	int r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	do
		r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return TAKE_FD(fd);
}

/* Wait until sock is readable; a hang-up is readable too (recv sees EOF). */
static int wait_readable(int sock, int timeout_ms)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	int r;

	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return r == 0 ? -ETIMEDOUT : 0;
}

static void copy_msg(char *msg, size_t msglen, const char *text)
{
	if (msg && msglen)
		snprintf(msg, msglen, "%s", text ? text : "");
}

int hearth__ctl_call(int sock, uint64_t *id_seq, Hearth__Control__Request *req,
		     Hearth__Control__Response **ret, int *ret_fd, char *msg, size_t msglen,
		     int timeout_ms)
{
	_cleanup_free_ uint8_t *buf = NULL;
	int r;

	copy_msg(msg, msglen, NULL);
	req->id = ++*id_seq;
	r = hr_ctl_send(sock, &req->base, -1);
	if (r == -EPIPE || r == -ECONNRESET)
		return -ECONNRESET;
	if (r < 0)
		return r;
	buf = malloc(HR_CTL_MAX_MSG);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		Hearth__Control__Response *rep;
		int fd = -1, eof = 0, n;

		r = wait_readable(sock, timeout_ms ? timeout_ms : HEARTH__CTL_TIMEOUT_MS);
		if (r < 0)
			return r;
		n = hr_ctl_recv(sock, buf, HR_CTL_MAX_MSG, &fd, &eof);
		if (n == -EAGAIN)
			continue;
		if (eof || n == -ECONNRESET || n == -EPIPE)
			return -ECONNRESET;
		if (n < 0)
			return n;
		rep = hearth__control__response__unpack(NULL, (size_t)n, buf + HR_CTL_HDR);
		if (!rep) {
			if (fd >= 0)
				close(fd);
			return -EBADMSG;
		}
		if (rep->id != req->id && !(rep->id == 0 && rep->error)) {
			/* A late reply to a request we gave up on: drop it. */
			if (fd >= 0)
				close(fd);
			hearth__control__response__free_unpacked(rep, NULL);
			continue;
		}
		if (rep->error) {
			/* The daemon sends negative errnos; accept a positive one too. */
			r = rep->error < 0 ? rep->error : -rep->error;
			copy_msg(msg, msglen, rep->message);
			if (fd >= 0)
				close(fd);
			hearth__control__response__free_unpacked(rep, NULL);
			return r;
		}
		if (ret_fd)
			*ret_fd = fd;
		else if (fd >= 0)
			close(fd);
		*ret = rep;
		return 0;
	}
}

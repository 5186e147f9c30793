/* SPDX-License-Identifier: MIT */
/* Control-socket framing: header, protobuf-c payload, SCM_RIGHTS. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hr_common.h"
#include "hr_control.h"

int hr_ctl_send(int sock, const ProtobufCMessage *msg, int pass_fd)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctrl;
	struct hr_ctl_hdr hdr = { HR_CTL_MAGIC, HR_CTL_VERSION, 0 };
	struct iovec iov[2];
	struct msghdr mh = { 0 };
	_cleanup_free_ uint8_t *payload = NULL;
	ssize_t n;

	if (len > HR_CTL_MAX_MSG - HR_CTL_HDR)
		return -EMSGSIZE;
	payload = malloc(len ? len : 1);
	if (!payload)
		return -ENOMEM;
	protobuf_c_message_pack(msg, payload);
	iov[0] = (struct iovec){ &hdr, sizeof(hdr) };
	iov[1] = (struct iovec){ payload, len };
	mh.msg_iov = iov;
	mh.msg_iovlen = 2;
	if (pass_fd >= 0) {
		struct cmsghdr *c;

		memset(&ctrl, 0, sizeof(ctrl));
		mh.msg_control = ctrl.buf;
		mh.msg_controllen = sizeof(ctrl.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == sizeof(hdr) + len ? 0 : -EIO;
}

int hr_ctl_recv(int sock, void *buf, size_t cap, int *ret_fd, int *ret_eof)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 8)];
		struct cmsghdr align;
	} ctrl;
	struct iovec iov = { buf, cap };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = ctrl.buf, .msg_controllen = sizeof(ctrl.buf) };
	struct hr_ctl_hdr hdr;
	int fd = -1;
	ssize_t n;

	*ret_eof = 0;
	if (ret_fd)
		*ret_fd = -1;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	/* Take every passed descriptor first, so that none leaks on an error. */
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < nfd; i++) {
			int x;
			memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (fd < 0 && ret_fd)
				fd = x;
			else
				close(x);
		}
	}
	if (n == 0 && !(mh.msg_flags & MSG_TRUNC)) {
		if (fd >= 0)
			close(fd);
		*ret_eof = 1;
		return 0;
	}
	if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || (size_t)n < sizeof(hdr))
		goto bad;
	memcpy(&hdr, buf, sizeof(hdr));
	if (hdr.magic != HR_CTL_MAGIC)
		goto bad;
	if (hdr.version != HR_CTL_VERSION) {
		if (fd >= 0)
			close(fd);
		return -EPROTONOSUPPORT;
	}
	if (ret_fd)
		*ret_fd = fd;
	return (int)(n - (ssize_t)sizeof(hdr));
bad:
	if (fd >= 0)
		close(fd);
	return -EBADMSG;
}

/* SPDX-License-Identifier: MIT */
/*
 * Control-socket framing shared by hearthd and libhearth: every SOCK_SEQPACKET
 * datagram is an 8-byte header (magic "HRTH", version, reserved) followed by
 * one protobuf-c message (control.proto), optionally with one file descriptor
 * passed as SCM_RIGHTS. Datagrams are bounded by HR_CTL_MAX_MSG.
 */
#ifndef HR_CONTROL_H
#define HR_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "control.pb-c.h"

#define HR_CTL_MAGIC 0x48545248u /* "HRTH" little-endian */
#define HR_CTL_VERSION 1u
#define HR_CTL_HDR 8u
#define HR_CTL_MAX_MSG (256u << 10)

struct hr_ctl_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t reserved;
};
_Static_assert(sizeof(struct hr_ctl_hdr) == HR_CTL_HDR, "control header size");

/*
 * Serialize msg and send it as one datagram, with pass_fd attached when >= 0.
 * Returns 0 or -errno (-EMSGSIZE over HR_CTL_MAX_MSG, -EPIPE on a closed peer).
 * Never raises SIGPIPE.
 */
int hr_ctl_send(int sock, const ProtobufCMessage *msg, int pass_fd);

/*
 * Receive one datagram into buf (cap >= HR_CTL_MAX_MSG recommended) and check
 * its header. On success returns the payload length (>= 0) with the payload at
 * buf + HR_CTL_HDR; *ret_fd receives a passed descriptor (close-on-exec) or -1
 * when ret_fd is not NULL (extra descriptors are closed). Returns 0 with
 * *ret_eof = 1 on an orderly shutdown; -EBADMSG on a bad magic, a truncated
 * datagram or header; -EPROTONOSUPPORT on another version; -errno otherwise.
 */
int hr_ctl_recv(int sock, void *buf, size_t cap, int *ret_fd, int *ret_eof);

#endif

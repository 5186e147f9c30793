/* SPDX-License-Identifier: MIT */
/*
 * libhearth internals: the connection object shared by the control side
 * (libhearth.c) and the data path (data.c), and the control-socket round trip
 * (ctl.c) that hearthctl links too. Nothing here is exported from
 * libhearth.so (libhearth.sym lists what is).
 */
#ifndef HEARTH_PVT_H
#define HEARTH_PVT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "control.pb-c.h"
#include "hearth/hearth.h"
#include "shm_proto.h"
#include "shm_ring.h"

/* How long a control request may wait for its reply. */
#define HEARTH__CTL_TIMEOUT_MS 30000
/* How often a sleeping hearth_wait_cqe() looks for a hang-up of the daemon. */
#define HEARTH__LIVENESS_NS (100ull * 1000 * 1000)
/* Arena buffers are cache-line aligned. */
#define HEARTH__ARENA_ALIGN 64u
/* user_data of the synchronous calls: the top bit set, a sequence below. */
#define HEARTH__SYNC_TAG (1ull << 63)
#define HEARTH__CANCEL_TAG (1ull << 62) /* a sync call's CANCEL: never its user_data */

struct hearth {
	int sock;                       /* control socket; its hang-up detaches us */
	uint64_t ctl_id;                /* id of the last control request */
	void *mem;                      /* the shared region */
	size_t mem_len;
	struct shm_layout lay;          /* checked once at attach; never re-read */
	struct shm_region_hdr *hdr;
	struct shm_sq_prod sq;
	struct shm_cq_cons cq;
	uint8_t *arena;
	uint32_t arena_top;             /* bump allocator: bytes handed out */
	uint32_t inflight;              /* submitted requests whose last completion is unseen */
	uint64_t spin_ns;
	uint64_t sync_seq;
	bool dead;                      /* the daemon is gone: waits return -ESHUTDOWN */
	struct hearth_model_info model;
};

/* ---- ctl.c: control socket (also used by hearthctl) ------------------------ */

/* Resolve the socket path: path if set, else $HEARTH_SOCKET, else the
 * default. Returns 0 and writes buf, or -ENAMETOOLONG. */
int hearth__socket_path(const char *path, char *buf, size_t len);

/* Connect a SOCK_SEQPACKET socket to path (close-on-exec, blocking).
 * Returns the fd or -errno. */
int hearth__ctl_connect(const char *path);

/*
 * Send req (its id is set from *id_seq, incremented) and wait for the
 * matching Response (replies with other ids are dropped; an error reply with
 * id 0 is the daemon refusing the connection and counts as the answer).
 * On success returns 0 with *ret (free with
 * hearth__control__response__free_unpacked) and *ret_fd (a passed
 * descriptor or -1; ret_fd may be NULL, then any descriptor is closed). On a
 * daemon error returns its negative errno and copies its message to msg
 * (when msg is not NULL). Other errors: -ECONNRESET (the daemon closed the
 * socket), -ETIMEDOUT, -EBADMSG, -EPROTO, -ENOMEM, -errno of the socket.
 * timeout_ms: how long to wait for the reply; 0: HEARTH__CTL_TIMEOUT_MS,
 * -1: as long as it takes (a model load).
 */
int hearth__ctl_call(int sock, uint64_t *id_seq, Hearth__Control__Request *req,
		     Hearth__Control__Response **ret, int *ret_fd, char *msg, size_t msglen,
		     int timeout_ms);

#endif

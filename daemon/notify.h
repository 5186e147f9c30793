/* SPDX-License-Identifier: MIT */
/* systemd service protocol: notifications, watchdog, socket activation. */
#ifndef HD_NOTIFY_H
#define HD_NOTIFY_H

#include <stdint.h>

/* Send a notification ("READY=1\nSTATUS=...") to $NOTIFY_SOCKET. Returns 1
 * when sent, 0 when not under systemd, -errno on failure. */
int hd_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The watchdog interval asked for by the service manager, or 0. */
uint64_t hd_watchdog_usec(void);
/* The listening socket passed by socket activation (fd 3, SOCK_SEQPACKET),
 * -ENOENT when not socket-activated, -EINVAL for something else passed. */
int hd_listen_fd(void);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * Private to tier.c and manifest.c: the tiering state of a daemon and the
 * manifest calls the pager uses.
 */
#ifndef HD_TIER_PVT_H
#define HD_TIER_PVT_H

#include <pthread.h>

#include "hearthd.h"
#include "kv_l2.h"

#define MANIFEST_MAX (64u << 20)

struct manifest_job {
	char path[4200];
	uint8_t *buf;
	size_t len;
	struct manifest_job *next;
};

struct hd_tiering {
	struct kv_l2 *l2;
	size_t page_bytes;
	uint64_t last_checkpoint_ns;
	uint32_t inflight;              /* I/Os queued and not reaped */
	bool scan;                      /* sessions are moving or waiting: visit them */
	/* manifest writer thread */
	pthread_t writer;
	bool writer_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct manifest_job *head, *tail;
	bool stop;
	char sessions_dir[4120];
	/* counters */
	uint64_t pages_out, pages_in, bytes_out, bytes_in, errors, recomputed;
	/* whole-session transfers: count, total and worst latency */
	uint64_t outs, ins, out_ns, in_ns, out_max_ns, in_max_ns;
};


/* manifest.c */
int hd_manifest_start(struct hd_tiering *t);
void hd_manifest_stop(struct hd_tiering *t);
/* Queue s's manifest: its history, and its L2 slots when with_slots. */
void hd_manifest_save(struct hd_model *hm, struct hd_session *s, bool with_slots);
/* Queue the removal of the manifest of the session named name. */
void hd_manifest_remove(struct hd_tiering *t, const char *name);
/* Restore every manifest of sessions_dir as sessions. */
void hd_manifest_restore_all(struct hd_model *hm);
int hd_mkdir_p(const char *path);

#endif

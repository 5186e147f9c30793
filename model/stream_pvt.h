/* SPDX-License-Identifier: MIT */
/*
 * The streaming weight reader behind model_load_ex's STREAM mode (see
 * model.h): a plan of tensors (file, byte range, destination) that
 * weight_stream.c fills from the files through a ring of host buffers.
 * Only loader.c and the unit tests use it.
 */
#ifndef MODEL_STREAM_PVT_H
#define MODEL_STREAM_PVT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

struct ws_file {
	const char *name;      /* for messages */
	const char *path;
	uint64_t size;         /* as parsed: reads past it are an error */
	const void *map;       /* the parser's mapping: residency check only */
};

struct ws_tensor {
	const char *name;
	uint32_t file;         /* index into ws_plan.files */
	uint64_t off, bytes;   /* absolute range in the file; bytes > 0 */
	void *dst;             /* backend memory to write the bytes into as is,
				* or NULL: gathered into host memory and handed
				* to plan->gathered once whole */
	void *ctx;             /* the caller's */
	uint8_t *gather;       /* owned by ws_run until gathered() */
	uint64_t got;
};

struct ws_plan {
	struct ws_file *files;
	uint32_t n_files;
	struct ws_tensor *tensors; /* sorted by (file, off), not overlapping */
	uint32_t n_tensors;
	/* A gathered tensor is complete: consume t->gather (ws_run frees it
	 * after the call). Return 0 or -errno with err filled. */
	int (*gathered)(void *arg, struct ws_tensor *t, char *err, size_t errlen);
	void *arg;
};

struct ws_result {
	uint64_t bytes_read;
	uint32_t files_direct, files_buffered;
	const char *io;        /* "io_uring" or "threads" */
	double seconds;
};

/*
 * Read every tensor of the plan into its destination on be, then ops->sync.
 * Returns 0 or -errno with err naming file, tensor (where one is concerned)
 * and reason. Destinations are left partly written on failure; the caller
 * frees them. Notes and progress go to o's callbacks.
 */
int ws_run(struct ws_plan *plan, struct kern_backend *be, const struct model_load_opts *o,
	   struct ws_result *ret, char *err, size_t errlen);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * Helpers for the L2 store tests: checks, a scratch directory, the pager
 * named on the command line (io_uring skips with 77 where the kernel or the
 * build refuses it), and pages of reproducible random bytes.
 */
#ifndef L2T_H
#define L2T_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hearth_config.h"
#include "kv_l2.h"
#if HEARTH_HAVE_IO_URING
#include <liburing.h>
#endif

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

#define CHECK_EQ(a, b)                                                                     \
	do {                                                                               \
		long long _a = (long long)(a), _b = (long long)(b);                        \
		if (_a != _b) {                                                            \
			fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, \
				__LINE__, #a, _a, #b, _b);                                 \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

static inline enum kv_l2_pager l2t_pager(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "threads"))
		return KV_L2_PAGER_THREADS;
	if (strcmp(argv[1], "uring")) {
		fprintf(stderr, "usage: %s threads|uring\n", argv[0]);
		exit(2);
	}
#if HEARTH_HAVE_IO_URING
	struct io_uring ring;
	int ret = io_uring_queue_init(4, &ring, 0);
	if (ret < 0) {
		printf("skip: io_uring_queue_init: %s\n", strerror(-ret));
		exit(77);
	}
	io_uring_queue_exit(&ring);
	return KV_L2_PAGER_URING;
#else
	printf("skip: built without liburing\n");
	exit(77);
#endif
}

/* A fresh directory under $TMPDIR or /tmp; path in dir (PATH_MAX). */
static inline void l2t_mkdtemp(char *dir, size_t len)
{
	const char *t = getenv("TMPDIR");

	snprintf(dir, len, "%s/hearth-l2-XXXXXX", t && *t ? t : "/tmp");
	CHECK(mkdtemp(dir));
}

static inline uint64_t l2t_splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Fill len bytes with the page named by (slot, gen). */
static inline void l2t_fill(void *buf, size_t len, uint32_t slot, uint32_t gen)
{
	uint64_t s = ((uint64_t)slot << 32) ^ gen ^ 0x5eedull, w;
	uint8_t *p = buf;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		w = l2t_splitmix(&s);
		memcpy(p + i, &w, 8);
	}
	w = l2t_splitmix(&s);
	memcpy(p + i, &w, len - i);
}

/* Fisher-Yates shuffle of n indices. */
static inline void l2t_shuffle(uint32_t *a, uint32_t n, uint64_t *seed)
{
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = (uint32_t)(l2t_splitmix(seed) % i), t = a[i - 1];
		a[i - 1] = a[j];
		a[j] = t;
	}
}

static inline struct kv_l2 *l2t_open(const struct kv_l2_params *p)
{
	char err[512] = "";
	struct kv_l2 *l2 = kv_l2_open(p, err, sizeof(err));

	if (!l2) {
		fprintf(stderr, "kv_l2_open: %s (%s)\n", err, strerror(errno));
		exit(1);
	}
	return l2;
}

#endif

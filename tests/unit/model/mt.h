/* SPDX-License-Identifier: MIT */
/*
 * Tiny helpers shared by the model unit tests: CHECK macros that count
 * failures instead of aborting, and temporary directories.
 */
#ifndef MT_H
#define MT_H

#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int mt_failures;

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
			mt_failures++;                                                     \
		}                                                                          \
	} while (0)

/* err must contain every word; prints the message when it does not. */
#define CHECK_MSG(err, ...)                                                                \
	do {                                                                               \
		const char *_w[] = { __VA_ARGS__ };                                        \
		for (size_t _i = 0; _i < sizeof(_w) / sizeof(_w[0]); _i++)                 \
			if (!strstr((err), _w[_i])) {                                      \
				fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n",    \
					__FILE__, __LINE__, (err), _w[_i]);                \
				mt_failures++;                                             \
			}                                                                  \
	} while (0)

static inline int mt_rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* rm -rf of a directory this test made. */
static inline void mt_rmtree(const char *dir)
{
	nftw(dir, mt_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline int mt_write(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	size_t n;

	if (!f)
		return -errno;
	n = fwrite(buf, 1, len, f);
	if (fclose(f) != 0 || n != len)
		return -EIO;
	return 0;
}

static inline int mt_done(const char *name)
{
	if (mt_failures) {
		fprintf(stderr, "%s: %d check(s) failed\n", name, mt_failures);
		return 1;
	}
	printf("%s: all checks passed\n", name);
	return 0;
}

#endif

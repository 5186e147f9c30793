/* SPDX-License-Identifier: MIT */
/* Checks shared by the shm_protocol unit tests: count failures, keep going. */
#ifndef SHM_CHECK_H
#define SHM_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(c)                                                                   \
	do {                                                                       \
		if (!(c)) {                                                        \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__,     \
				__LINE__, #c);                                     \
			failures++;                                                \
		}                                                                  \
	} while (0)

#define CHECK_EQ(a, b)                                                             \
	do {                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                \
		if (a_ != b_) {                                                    \
			fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n",  \
				__FILE__, __LINE__, #a, a_, #b, b_);               \
			failures++;                                                \
		}                                                                  \
	} while (0)

#endif

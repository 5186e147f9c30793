/* SPDX-License-Identifier: MIT */
/*
 * Compiler helpers shared by every part of hearth: branch hints, cleanup
 * attributes, array sizes, overflow-checked arithmetic. Nothing here allocates
 * or prints.
 */
#ifndef HR_COMMON_H
#define HR_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define hr_likely(x)   __builtin_expect(!!(x), 1)
#define hr_unlikely(x) __builtin_expect(!!(x), 0)
#define HR_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define HR_ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((__typeof__(x))(a) - 1))
#define HR_MIN(a, b) ((a) < (b) ? (a) : (b))
#define HR_MAX(a, b) ((a) > (b) ? (a) : (b))
#define HR_CACHELINE 64
#define hr_printf_fmt(a, b) __attribute__((format(printf, a, b)))

/* Overflow-checked size arithmetic: return false on overflow. */
static inline int hr_mul_ok(size_t a, size_t b, size_t *ret)
{
	return !__builtin_mul_overflow(a, b, ret);
}

static inline int hr_add_ok(size_t a, size_t b, size_t *ret)
{
	return !__builtin_add_overflow(a, b, ret);
}

/* systemd-style cleanup: `_cleanup_free_ char *p = NULL;` and TAKE_PTR(p). */
#define _cleanup_(f) __attribute__((cleanup(f)))
static inline void hr_freep(void *p)
{
	free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(hr_freep)
static inline void hr_closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}
#define _cleanup_close_ _cleanup_(hr_closep)
#define TAKE_PTR(p) ({ __typeof__(p) _p = (p); (p) = NULL; _p; })
#define TAKE_FD(fd) ({ int _fd = (fd); (fd) = -1; _fd; })

/* A thread name (ps -L, top -H, gdb, perf): prefix + name, cut to the 15
 * characters the kernel keeps. */
static inline void hr_thread_name_fmt(char buf[16], const char *prefix, const char *name)
{
	size_t n = 0;

	for (const char *p = prefix; *p && n < 15; p++)
		buf[n++] = *p;
	for (const char *p = name ? name : ""; *p && n < 15; p++)
		buf[n++] = *p;
	buf[n] = 0;
}

/* Name the calling thread prefix + name. */
#include <sys/prctl.h>
static inline void hr_thread_name(const char *prefix, const char *name)
{
	char buf[16];

	hr_thread_name_fmt(buf, prefix, name);
	(void)prctl(PR_SET_NAME, buf, 0, 0, 0);
}

/* Monotonic clock in nanoseconds. */
#include <time.h>
static inline uint64_t hr_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif

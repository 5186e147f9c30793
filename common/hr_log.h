/* SPDX-License-Identifier: MIT */
/*
 * Leveled logging to stderr for the programs (hearthd, tools). Libraries never
 * call this: they return -errno and, where a reason helps, fill an error
 * buffer that the program logs once where it handles the error.
 */
#ifndef HR_LOG_H
#define HR_LOG_H

#include "hr_common.h"

enum hr_log_level { HR_LOG_ERR = 3, HR_LOG_WARN = 4, HR_LOG_INFO = 6, HR_LOG_DEBUG = 7 };

/* Messages above `level` are dropped. Default HR_LOG_INFO. Not thread-safe to change. */
void hr_log_set_level(enum hr_log_level level);
/* Parse "err", "warn", "info", "debug"; return 0 or -EINVAL. */
int hr_log_parse_level(const char *s, enum hr_log_level *ret);
void hr_log(enum hr_log_level level, const char *fmt, ...) hr_printf_fmt(2, 3);

#define hr_err(...)   hr_log(HR_LOG_ERR, __VA_ARGS__)
#define hr_warn(...)  hr_log(HR_LOG_WARN, __VA_ARGS__)
#define hr_info(...)  hr_log(HR_LOG_INFO, __VA_ARGS__)
#define hr_debug(...) hr_log(HR_LOG_DEBUG, __VA_ARGS__)

#endif

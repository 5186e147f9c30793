/* SPDX-License-Identifier: MIT */
/* Leveled stderr logging for hearth's programs: one line per message, with a
 * level tag (and an sd-daemon priority prefix when stderr goes to the journal). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <strings.h>

#include "hr_log.h"

static enum hr_log_level log_level = HR_LOG_INFO;

void hr_log_set_level(enum hr_log_level level)
{
	log_level = level;
}

int hr_log_parse_level(const char *s, enum hr_log_level *ret)
{
	static const struct { const char *name; enum hr_log_level level; } names[] = {
		{ "err", HR_LOG_ERR }, { "error", HR_LOG_ERR }, { "warn", HR_LOG_WARN },
		{ "warning", HR_LOG_WARN }, { "info", HR_LOG_INFO }, { "debug", HR_LOG_DEBUG },
	};
	for (size_t i = 0; i < HR_ARRAY_SIZE(names); i++)
		if (strcasecmp(s, names[i].name) == 0) {
			*ret = names[i].level;
			return 0;
		}
	return -EINVAL;
}

void hr_log(enum hr_log_level level, const char *fmt, ...)
{
	static const char *tags[8] = { [3] = "error", [4] = "warning", [6] = "info", [7] = "debug" };
	char line[1024];
	va_list ap;
	int n;

	if (level > log_level)
		return;
	/* Under systemd, stderr is the journal: a "<N>" prefix carries the priority. */
	static int journal = -1;
	if (journal < 0)
		journal = getenv("JOURNAL_STREAM") != NULL;
	if (journal)
		n = snprintf(line, sizeof(line), "<%d>%s: ", (int)level, tags[level & 7]);
	else
		n = snprintf(line, sizeof(line), "hearth: %s: ", tags[level & 7]);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/* One write per line so lines from several threads do not interleave. */
	size_t len = strlen(line);
	if (len + 1 < sizeof(line)) {
		line[len++] = '\n';
		line[len] = 0;
	}
	fputs(line, stderr);
}

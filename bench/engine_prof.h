/* SPDX-License-Identifier: MIT */
/*
 * Op-by-op profile of forward steps (hearth-bench-engine --profile): between
 * prof_on() and prof_off() every compute operation of `be` is timed alone and
 * prof_off() prints the table. Not thread-safe; one backend at a time.
 */
#ifndef ENGINE_PROF_H
#define ENGINE_PROF_H

#include "kern.h"

void prof_on(struct kern_backend *be);
/* Restore the backend's ops and print the table under the title `what`. */
void prof_off(const char *what);

#endif

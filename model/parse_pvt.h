/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the model file parsers (safetensors.c, config.c,
 * loader.c) and their tests: strict UTF-8, strict JSON on top of cJSON,
 * integer extraction, and quoting of untrusted names for error messages.
 * Implemented in safetensors.c. Not part of the model API.
 */
#ifndef MODEL_PARSE_PVT_H
#define MODEL_PARSE_PVT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* Largest integer a JSON number (an IEEE double) holds exactly: 2^53. */
#define MODEL_JSON_MAX_INT 9007199254740992ull

/*
 * Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past
 * U+10FFFF, no truncated sequence. NUL is valid UTF-8; callers that refuse it
 * check separately. On failure stores the offset of the first bad byte.
 */
bool model__utf8_valid(const void *buf, size_t len, size_t *ret_bad);

/*
 * Parse untrusted JSON text of len bytes (not NUL-terminated). Beyond cJSON:
 * rejects NUL and other control bytes outside whitespace, invalid UTF-8,
 * "\u0000" escapes (cJSON would silently cut the string there), trailing
 * garbage, and duplicate keys in any object. Returns the tree or NULL with
 * errno set (EINVAL, ENOMEM) and a reason (without file name) in why.
 */
cJSON *model__json_parse(const char *buf, size_t len, char *why, size_t whylen);

/* True when item is a JSON number holding an integer in [0, max]. */
bool model__json_uint(const cJSON *item, uint64_t max, uint64_t *ret);

/* "a string", "an array", ... for messages about a wrong JSON type. */
const char *model__json_type(const cJSON *item);

/*
 * Copy an untrusted string into buf for a message: control bytes and DEL
 * become \xNN, and the copy is cut with "..." when longer than buf allows.
 * Returns buf.
 */
const char *model__esc(char *buf, size_t size, const char *s);

/* "[64, 128]" into buf; returns buf. */
const char *model__fmt_shape(char *buf, size_t size, const uint64_t *shape, uint32_t n_dims);

/* Size of a quoted name in messages: 128 characters, escapes and "...". */
#define MODEL_ESC_MAX 160

#endif

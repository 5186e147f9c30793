/* SPDX-License-Identifier: MIT */
/*
 * The engine: a loaded model, its L1 KV page pool and sequences on top of it.
 * A sequence is one stream of tokens with its block table and token history;
 * appends of any length are split into steps of at most max_step_tokens.
 *
 * Errors: 0 or -errno. -EINVAL for bad arguments or token ids outside the
 * vocabulary, -ENOMEM when the KV pool is exhausted (nothing of the failed call
 * is kept: the sequence is as before), -E2BIG past the model's context limit,
 * -ENODATA when logits are asked of an empty sequence, -EIO from the backend.
 * Thread-safety: one thread per engine.
 */
#ifndef ENGINE_H
#define ENGINE_H

#include <stdint.h>

#include "kern.h"
#include "kv.h"
#include "model.h"

struct engine;
struct engine_seq;

struct engine_params {
	uint32_t kv_pages;        /* 0: a default sized for a few long sequences */
	uint32_t page_tokens;     /* 0: KV_DEFAULT_PAGE_TOKENS */
	uint32_t max_step_tokens; /* 0: 512 */
	uint32_t max_context;     /* 0: the model's max_position_embeddings (capped by sliding_window) */
};

/* Takes ownership of nothing: m and its backend must outlive the engine. */
struct engine *engine_new(struct model *m, const struct engine_params *p);
void engine_free(struct engine *e);
struct model *engine_model(const struct engine *e);
struct kv_pool *engine_pool(const struct engine *e);
/* Forward steps run since engine_new (a long append counts one per chunk). */
uint64_t engine_n_steps(const struct engine *e);

struct engine_seq *engine_seq_new(struct engine *e);
/* Release the sequence's pages and memory. Accepts NULL. */
void engine_seq_free(struct engine *e, struct engine_seq *s);
uint32_t engine_seq_len(const struct engine_seq *s);
const int32_t *engine_seq_tokens(const struct engine_seq *s);

/* Append n tokens (n >= 1), running the forward pass; the last position's
 * logits become available. */
int engine_append(struct engine *e, struct engine_seq *s, const int32_t *tokens, uint32_t n);
/* Copy the last position's logits (vocab fp32) to host memory `out`. */
int engine_logits(struct engine *e, struct engine_seq *s, float *out, uint32_t vocab);
/* Probabilities of ids[0..n) at the last position, renormalised over that set
 * (softmax restricted to the ids); out is host memory [n]. n in 1..1024. */
int engine_probs(struct engine *e, struct engine_seq *s, const int32_t *ids, uint32_t n,
		 float *out);
/*
 * Greedy-decode n tokens: each is the argmax of the current last logits and
 * is appended. out (host, [n]) receives them. cb, when not NULL, is called
 * after each token with its index and the logits it was taken from (host copy
 * only when want_logits; else NULL); a non-zero return stops decoding and is
 * returned. Returns 0 or -errno.
 */
typedef int (*engine_token_cb)(void *userdata, uint32_t i, int32_t token, const float *logits);
int engine_generate(struct engine *e, struct engine_seq *s, uint32_t n, int32_t *out,
		    engine_token_cb cb, void *userdata, int want_logits);
/*
 * Paging support (the daemon's L1 <-> L2 tiering). A sequence's KV may hold
 * fewer positions than its token history: the missing ones are recomputed
 * from the history on the next use, so dropping KV never loses anything.
 */
const struct kv_block_table *engine_seq_kv(const struct engine_seq *s);
/* Release every KV page of s (its history stays). */
void engine_seq_drop_kv(struct engine *e, struct engine_seq *s);
/* Take L1 pages for the whole history (to be filled by a page-in): 0 or -ENOMEM. */
int engine_seq_reserve_kv(struct engine *e, struct engine_seq *s);
/* The reserved pages now hold the history's K/V (a page-in completed). */
void engine_seq_kv_restored(struct engine *e, struct engine_seq *s);
/* A sequence with this history and no KV (restored from a manifest). */
struct engine_seq *engine_seq_from_history(struct engine *e, const int32_t *tokens, uint32_t n);
/* Backend address and size of one L1 page, for the pager's copies. */
void *engine_page_ptr(struct engine *e, uint32_t page);
size_t engine_page_bytes(const struct engine *e);

/* Keep the first n tokens (n <= length). Logits of the new last position are
 * recomputed on demand. */
int engine_truncate(struct engine *e, struct engine_seq *s, uint32_t n);

#endif

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
	uint32_t max_step_tokens; /* 0: 512; tokens of one forward step, all sequences */
	uint32_t max_batch;       /* 0: 64; sequences in one forward step */
	uint32_t max_context;     /* 0: the model's max_position_embeddings (capped by sliding_window) */
	uint32_t graph_max_tokens; /* 0: KERN_GRAPH_MAX_TOKENS; steps of at most this many
				    * tokens replay captured graphs (cuda) */
	bool graphs_off;          /* every step runs eagerly */
	bool score_full_head;     /* probabilities of ids from the LM head over the
				   * whole vocabulary, as for logits (comparisons);
				   * default: from the ids' rows of it alone */
};

/* Takes ownership of nothing: m and its backend must outlive the engine. */
struct engine *engine_new(struct model *m, const struct engine_params *p);
void engine_free(struct engine *e);
struct model *engine_model(const struct engine *e);
struct kv_pool *engine_pool(const struct engine *e);
/* Forward steps run since engine_new (a long append counts one per chunk). */
uint64_t engine_n_steps(const struct engine *e);
/* Of those, the steps whose outputs were all probabilities of ids, scored
 * from the ids' rows of the LM head alone (not its whole vocabulary). */
uint64_t engine_n_score_steps(const struct engine *e);
/* The step graphs' captures (model_scratch_graph_counts). */
void engine_graph_counts(const struct engine *e, struct model_graph_counts *ret);

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
/* Take L1 pages for the first n positions (n <= length; to be filled by a
 * page-in): 0, -EINVAL or -ENOMEM. */
int engine_seq_reserve_kv(struct engine *e, struct engine_seq *s, uint32_t n);
/* The reserved pages now hold the K/V of the first n positions (a page-in
 * completed); the rest of the history is pending. */
void engine_seq_kv_restored(struct engine *e, struct engine_seq *s, uint32_t n);
/* A sequence with this history and no KV (restored from a manifest). */
struct engine_seq *engine_seq_from_history(struct engine *e, const int32_t *tokens, uint32_t n);
/* Backend address and size of one L1 page, for the pager's copies. */
void *engine_page_ptr(struct engine *e, uint32_t page);
size_t engine_page_bytes(const struct engine *e);

/* Keep the first n tokens (n <= length). Logits of the new last position are
 * recomputed on demand. */
int engine_truncate(struct engine *e, struct engine_seq *s, uint32_t n);

/*
 * Batched stepping (the daemon's scheduler). History and computation are
 * apart: engine_seq_push() extends the history without computing; the
 * positions not yet in the KV are "pending", and engine_step() computes a
 * chunk of pending positions of many sequences in one forward pass.
 */
/* Append n tokens to the history, validated, computing nothing: 0, -EINVAL
 * (bad id), -E2BIG (past the context limit) or -ENOMEM (host memory). */
int engine_seq_push(struct engine *e, struct engine_seq *s, const int32_t *tokens, uint32_t n);
/* History positions whose K/V are not computed yet. */
uint32_t engine_seq_pending(const struct engine_seq *s);
uint32_t engine_max_batch(const struct engine *e);
uint32_t engine_max_step_tokens(const struct engine *e);
/* Longest history a sequence may have (tokens). */
uint32_t engine_max_context(const struct engine *e);

/*
 * One sequence's part of a step. Inputs: seq (at most once per step),
 * max_tokens (>= 1: the chunk limit) and the outputs wanted at the end of the
 * history: probabilities of ids[0..n_ids) (n_ids <= 1024, ids validated by
 * the caller's engine_check_ids or here), the greedy next token, or the full
 * logits (host memory). Outputs are written only when the chunk reaches the
 * end of the history (out_ready). A sequence with nothing pending that wants
 * an output recomputes its last position. Results: done (positions computed)
 * and res (0 or -errno; -ENOMEM: no KV page for the chunk, nothing changed).
 */
struct engine_work {
	struct engine_seq *seq;
	uint32_t max_tokens;
	const int32_t *ids;
	uint32_t n_ids;
	float *probs;         /* [n_ids] */
	int32_t *next_token;  /* [1] */
	float *logits;        /* [vocab] */
	uint32_t done;
	bool out_ready;
	int res;
};
/* Run one forward pass over n items (1 <= n <= max_batch, the chunks summing
 * to at most max_step_tokens). Returns 0 when the step ran (each item has its
 * own res), or -errno when nothing could run (-EINVAL, -E2BIG, -EIO). */
int engine_step(struct engine *e, struct engine_work *w, uint32_t n);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * The attention tests' scenario shape, shared by the cpu test and the cuda
 * one: a paged pool's geometry, sequences written in two steps, and the
 * check that a step wrote exactly the slots it owns.
 */
#ifndef KT_ATTN_H
#define KT_ATTN_H

#include "kt.h"

struct geom {
	uint32_t n_layers, n_kv_heads, n_heads, head_dim, page_tokens, n_pages, max_blocks;
	uint32_t layer;
};

/* One sequence: step 1 writes n_past tokens, step 2 n_new. */
struct seq {
	uint32_t n_past, n_new;
};

static inline uint32_t ctx_of(const struct seq *s, int step)
{
	return step == 1 ? s->n_past : s->n_past + s->n_new;
}

/*
 * Elements of a pool that started as NaN which break the rule after both
 * steps: those of `layer` in a sequence's pages up to its context are
 * written (not NaN), every other one is untouched (NaN). bt: the block
 * table, n_seqs rows of g->max_blocks.
 */
static inline size_t kt_pool_wrong(const float *pool, const struct kern_kv *kv,
				   const struct geom *g, const int32_t *bt, uint32_t n_seqs,
				   const struct seq *seq)
{
	size_t bad = 0;

	for (uint32_t page = 0; page < g->n_pages; page++) {
		int owner = -1;
		uint32_t blk = 0;

		for (uint32_t s = 0; s < n_seqs && owner < 0; s++)
			for (uint32_t j = 0; j < g->max_blocks; j++)
				if (bt[s * g->max_blocks + j] == (int32_t)page) {
					owner = (int)s;
					blk = j;
				}
		for (uint32_t l = 0; l < g->n_layers; l++)
			for (uint32_t kvi = 0; kvi < 2; kvi++)
				for (uint32_t h = 0; h < g->n_kv_heads; h++)
					for (uint32_t t = 0; t < g->page_tokens; t++) {
						const float *x =
							pool + kern_kv_offset(kv, page, l, kvi, h, t);
						uint32_t p = blk * g->page_tokens + t;
						int written = owner >= 0 && l == g->layer &&
							      p < ctx_of(&seq[owner], 2);

						for (uint32_t d = 0; d < g->head_dim; d++)
							bad += written == !!isnan(x[d]);
					}
	}
	return bad;
}

static inline void kt_pool_check(const float *pool, const struct kern_kv *kv,
				 const struct geom *g, const int32_t *bt, uint32_t n_seqs,
				 const struct seq *seq, const char *tag)
{
	size_t bad = kt_pool_wrong(pool, kv, g, bt, n_seqs, seq);

	if (bad) {
		fprintf(stderr, "%s: %zu pool elements wrong (written outside slots or not at all)\n",
			tag, bad);
		kt_failures++;
	}
}

#endif

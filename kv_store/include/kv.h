/* SPDX-License-Identifier: MIT */
/*
 * Paged KV cache, tier L1: a pool of pages in backend memory with a free list
 * and per-page reference counts (FORK shares pages), and a block table per
 * sequence mapping its token positions to pages. Page layout and geometry are
 * struct kern_kv (kernels/include/kern.h).
 *
 * Thread-safety: a pool and its block tables belong to one thread (the
 * reactor of the model they serve).
 */
#ifndef KV_H
#define KV_H

#include <stdbool.h>
#include <stdint.h>

#include "kern.h"

#define KV_DEFAULT_PAGE_TOKENS 16u

struct kv_pool;

struct kv_geom {
	uint32_t page_tokens;
	uint32_t n_layers;
	uint32_t n_kv_heads;
	uint32_t head_dim;
};

/* Bytes of one page for this geometry and element size; 0 on overflow. */
size_t kv_page_bytes(const struct kv_geom *g, uint32_t elem_bytes);

/*
 * Allocate n_pages pages in backend memory. Returns NULL with errno set
 * (EINVAL for a zero or overflowing geometry, ENOMEM).
 */
struct kv_pool *kv_pool_new(struct kern_backend *be, const struct kv_geom *g, uint32_t n_pages);
/* Accepts NULL. Pages still referenced are released with the pool. */
void kv_pool_free(struct kv_pool *pool);

/* The pool's storage as the kernels see it. */
const struct kern_kv *kv_pool_kern(const struct kv_pool *pool);
uint32_t kv_pool_n_pages(const struct kv_pool *pool);
uint32_t kv_pool_n_free(const struct kv_pool *pool);

/* Take a free page (refcount 1): returns its index, or -ENOMEM. */
int64_t kv_page_alloc(struct kv_pool *pool);
/* Add a reference to a page in use. */
void kv_page_ref(struct kv_pool *pool, uint32_t page);
/* Drop a reference; the page returns to the free list at zero. */
void kv_page_unref(struct kv_pool *pool, uint32_t page);
uint32_t kv_page_refcount(const struct kv_pool *pool, uint32_t page);

/*
 * A sequence's block table: pages[j] holds tokens [j*page_tokens,
 * (j+1)*page_tokens). n_tokens is how many positions hold valid K/V.
 */
struct kv_block_table {
	uint32_t *pages;
	uint32_t n_pages;
	uint32_t cap;
	uint32_t n_tokens;
};

/* Zero-initialised tables are valid and empty. */
void kv_bt_init(struct kv_block_table *bt);
/*
 * Make the table hold pages for n_tokens positions (allocating as needed).
 * Does not change bt->n_tokens. On -ENOMEM nothing is kept from this call.
 * A shared last page (refcount > 1) that would be written is first copied
 * to a private one (copy-on-write), so call before writing new tokens.
 */
int kv_bt_reserve(struct kv_pool *pool, struct kv_block_table *bt, uint32_t n_tokens);
/* Keep the first n_tokens positions; release pages past them. */
void kv_bt_truncate(struct kv_pool *pool, struct kv_block_table *bt, uint32_t n_tokens);
/* Release every page and the table's memory. */
void kv_bt_release(struct kv_pool *pool, struct kv_block_table *bt);
/* dst (empty) shares all of src's pages (refcounts +1). */
int kv_bt_fork(struct kv_pool *pool, struct kv_block_table *dst, const struct kv_block_table *src);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * L1 page pool and block tables. Pages live in one backend allocation; the
 * free list is a stack of page indices (LIFO keeps recently used pages warm in
 * cache) and each page carries a reference count so that FORK can share them.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hr_common.h"
#include "kv.h"

struct kv_pool {
	struct kern_backend *be;
	struct kern_kv kv;
	size_t page_bytes;
	uint32_t n_free;
	uint32_t *free_stack; /* [n_pages], top at n_free - 1 */
	uint32_t *refcount;   /* [n_pages] */
};

size_t kv_page_bytes(const struct kv_geom *g, uint32_t elem_bytes)
{
	size_t n = 1;
	if (!hr_mul_ok(n, g->page_tokens, &n) || !hr_mul_ok(n, g->n_layers, &n) ||
	    !hr_mul_ok(n, 2, &n) || !hr_mul_ok(n, g->n_kv_heads, &n) ||
	    !hr_mul_ok(n, g->head_dim, &n) || !hr_mul_ok(n, elem_bytes, &n))
		return 0;
	return n;
}

struct kv_pool *kv_pool_new(struct kern_backend *be, const struct kv_geom *g, uint32_t n_pages)
{
	struct kv_pool *pool;
	size_t page_bytes, total;

	if (!be || !g || !n_pages || !g->page_tokens || !g->n_layers || !g->n_kv_heads ||
	    !g->head_dim) {
		errno = EINVAL;
		return NULL;
	}
	page_bytes = kv_page_bytes(g, be->act_bytes);
	if (!page_bytes || !hr_mul_ok(page_bytes, n_pages, &total)) {
		errno = EINVAL;
		return NULL;
	}
	pool = calloc(1, sizeof(*pool));
	if (!pool)
		return NULL;
	pool->be = be;
	pool->page_bytes = page_bytes;
	pool->free_stack = malloc(sizeof(uint32_t) * n_pages);
	pool->refcount = calloc(n_pages, sizeof(uint32_t));
	if (!pool->free_stack || !pool->refcount)
		goto fail;
	pool->kv.base = be->ops->alloc(be, total);
	if (!pool->kv.base)
		goto fail;
	pool->kv.n_pages = n_pages;
	pool->kv.page_tokens = g->page_tokens;
	pool->kv.n_layers = g->n_layers;
	pool->kv.n_kv_heads = g->n_kv_heads;
	pool->kv.head_dim = g->head_dim;
	/* Lowest indices on top of the stack, so that fresh pools hand out 0, 1, 2... */
	for (uint32_t i = 0; i < n_pages; i++)
		pool->free_stack[i] = n_pages - 1 - i;
	pool->n_free = n_pages;
	return pool;
fail:
	free(pool->free_stack);
	free(pool->refcount);
	free(pool);
	errno = ENOMEM;
	return NULL;
}

void kv_pool_free(struct kv_pool *pool)
{
	if (!pool)
		return;
	pool->be->ops->free(pool->be, pool->kv.base);
	free(pool->free_stack);
	free(pool->refcount);
	free(pool);
}

const struct kern_kv *kv_pool_kern(const struct kv_pool *pool)
{
	return &pool->kv;
}

uint32_t kv_pool_n_pages(const struct kv_pool *pool)
{
	return pool->kv.n_pages;
}

uint32_t kv_pool_n_free(const struct kv_pool *pool)
{
	return pool->n_free;
}

int64_t kv_page_alloc(struct kv_pool *pool)
{
	uint32_t page;

	if (!pool->n_free)
		return -ENOMEM;
	page = pool->free_stack[--pool->n_free];
	assert(pool->refcount[page] == 0);
	pool->refcount[page] = 1;
	return page;
}

void kv_page_ref(struct kv_pool *pool, uint32_t page)
{
	assert(page < pool->kv.n_pages && pool->refcount[page] > 0);
	pool->refcount[page]++;
}

void kv_page_unref(struct kv_pool *pool, uint32_t page)
{
	assert(page < pool->kv.n_pages && pool->refcount[page] > 0);
	if (--pool->refcount[page] == 0)
		pool->free_stack[pool->n_free++] = page;
}

uint32_t kv_page_refcount(const struct kv_pool *pool, uint32_t page)
{
	assert(page < pool->kv.n_pages);
	return pool->refcount[page];
}

void kv_bt_init(struct kv_block_table *bt)
{
	memset(bt, 0, sizeof(*bt));
}

static int bt_grow(struct kv_block_table *bt, uint32_t need)
{
	uint32_t cap;
	uint32_t *pages;

	if (need <= bt->cap)
		return 0;
	cap = bt->cap ? bt->cap : 8;
	while (cap < need)
		cap = cap > UINT32_MAX / 2 ? need : cap * 2;
	pages = realloc(bt->pages, sizeof(uint32_t) * cap);
	if (!pages)
		return -ENOMEM;
	bt->pages = pages;
	bt->cap = cap;
	return 0;
}

/* Replace a shared page that is about to be written with a private copy. */
static int bt_unshare(struct kv_pool *pool, struct kv_block_table *bt, uint32_t j)
{
	uint32_t old = bt->pages[j];
	int64_t page;
	int r;

	if (pool->refcount[old] == 1)
		return 0;
	page = kv_page_alloc(pool);
	if (page < 0)
		return (int)page;
	r = pool->be->ops->copy(pool->be, (char *)pool->kv.base + (size_t)page * pool->page_bytes,
				(char *)pool->kv.base + (size_t)old * pool->page_bytes,
				pool->page_bytes);
	if (r < 0) {
		kv_page_unref(pool, (uint32_t)page);
		return r;
	}
	kv_page_unref(pool, old);
	bt->pages[j] = (uint32_t)page;
	return 0;
}

int kv_bt_reserve(struct kv_pool *pool, struct kv_block_table *bt, uint32_t n_tokens)
{
	uint32_t pt = pool->kv.page_tokens;
	uint32_t need = (uint32_t)(((uint64_t)n_tokens + pt - 1) / pt);
	uint32_t had = bt->n_pages, first = bt->n_tokens / pt, shared = 0;
	int r;

	if (n_tokens <= bt->n_tokens)
		return 0;
	/* Pages from the one holding position n_tokens (the first to be written)
	 * on may be shared after a FORK: writes go to private copies. */
	for (uint32_t j = first; j < HR_MIN(need, had); j++)
		shared += pool->refcount[bt->pages[j]] > 1;
	if ((need > had ? need - had : 0) + shared > pool->n_free)
		return -ENOMEM;
	r = bt_grow(bt, need);
	if (r < 0)
		return r;
	for (uint32_t j = first; j < HR_MIN(need, had); j++) {
		r = bt_unshare(pool, bt, j);
		if (r < 0)
			return r;
	}
	while (bt->n_pages < need)
		bt->pages[bt->n_pages++] = (uint32_t)kv_page_alloc(pool);
	return 0;
}

void kv_bt_truncate(struct kv_pool *pool, struct kv_block_table *bt, uint32_t n_tokens)
{
	uint32_t pt = pool->kv.page_tokens;
	uint32_t keep = (uint32_t)(((uint64_t)n_tokens + pt - 1) / pt);

	while (bt->n_pages > keep)
		kv_page_unref(pool, bt->pages[--bt->n_pages]);
	if (bt->n_tokens > n_tokens)
		bt->n_tokens = n_tokens;
}

void kv_bt_release(struct kv_pool *pool, struct kv_block_table *bt)
{
	kv_bt_truncate(pool, bt, 0);
	free(bt->pages);
	kv_bt_init(bt);
}

int kv_bt_fork(struct kv_pool *pool, struct kv_block_table *dst, const struct kv_block_table *src)
{
	int r;

	assert(dst->n_pages == 0);
	r = bt_grow(dst, src->n_pages);
	if (r < 0)
		return r;
	for (uint32_t j = 0; j < src->n_pages; j++) {
		kv_page_ref(pool, src->pages[j]);
		dst->pages[j] = src->pages[j];
	}
	dst->n_pages = src->n_pages;
	dst->n_tokens = src->n_tokens;
	return 0;
}

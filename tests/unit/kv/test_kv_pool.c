/* SPDX-License-Identifier: MIT */
/* Page pool and block tables: allocation, refcounts, exhaustion without
 * partial effects, truncation, and copy-on-write after a fork. */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			exit(1);                                                       \
		}                                                                      \
	} while (0)

static float *page_ptr(struct kv_pool *pool, uint32_t page)
{
	const struct kern_kv *kv = kv_pool_kern(pool);
	return (float *)kv->base + kern_kv_page_elems(kv) * page;
}

int main(void)
{
	struct kern_backend *be = kern_cpu_new(1);
	struct kv_geom g = { .page_tokens = 4, .n_layers = 2, .n_kv_heads = 2, .head_dim = 8 };
	struct kv_block_table a, b;
	struct kv_pool *pool;

	CHECK(be);
	CHECK(kv_page_bytes(&g, 4) == 4 * 2 * 2 * 2 * 8 * 4);
	CHECK(!kv_pool_new(be, &g, 0) && errno == EINVAL);
	pool = kv_pool_new(be, &g, 8);
	CHECK(pool && kv_pool_n_free(pool) == 8 && kv_pool_n_pages(pool) == 8);

	/* Offsets follow [layer][K|V][kv_head][token][head_dim]. */
	const struct kern_kv *kv = kv_pool_kern(pool);
	CHECK(kern_kv_offset(kv, 1, 0, 0, 0, 0) == kern_kv_page_elems(kv));
	CHECK(kern_kv_offset(kv, 0, 1, 1, 1, 3) == ((1 * 2 + 1) * 2 + 1) * 4 * 8 + 3 * 8);

	kv_bt_init(&a);
	CHECK(kv_bt_reserve(pool, &a, 9) == 0 && a.n_pages == 3 && kv_pool_n_free(pool) == 5);
	a.n_tokens = 9;
	/* Exhaustion: asking for more than is free changes nothing. */
	CHECK(kv_bt_reserve(pool, &a, 40) == -ENOMEM && a.n_pages == 3 &&
	      kv_pool_n_free(pool) == 5);
	CHECK(kv_bt_reserve(pool, &a, 12) == 0 && a.n_pages == 3);

	/* Fork shares pages; a write into the shared partial page copies it. */
	for (uint32_t i = 0; i < kern_kv_page_elems(kv); i++)
		page_ptr(pool, a.pages[2])[i] = (float)i;
	kv_bt_init(&b);
	CHECK(kv_bt_fork(pool, &b, &a) == 0 && b.n_tokens == 9);
	CHECK(kv_page_refcount(pool, a.pages[0]) == 2 && kv_pool_n_free(pool) == 5);
	CHECK(kv_bt_reserve(pool, &b, 10) == 0);
	CHECK(b.pages[0] == a.pages[0] && b.pages[1] == a.pages[1] && b.pages[2] != a.pages[2]);
	CHECK(kv_page_refcount(pool, a.pages[2]) == 1 && kv_page_refcount(pool, b.pages[2]) == 1);
	CHECK(memcmp(page_ptr(pool, a.pages[2]), page_ptr(pool, b.pages[2]),
		     kv_page_bytes(&g, 4)) == 0);
	CHECK(kv_pool_n_free(pool) == 4);

	/* Truncation releases whole pages past the new length only. */
	kv_bt_truncate(pool, &a, 5);
	CHECK(a.n_pages == 2 && a.n_tokens == 5 && kv_pool_n_free(pool) == 5);
	kv_bt_release(pool, &b);
	CHECK(kv_pool_n_free(pool) == 6 && kv_page_refcount(pool, a.pages[0]) == 1);
	kv_bt_release(pool, &a);
	CHECK(kv_pool_n_free(pool) == 8 && a.pages == NULL);

	/* Every page can be taken, none twice. */
	int seen[8] = { 0 };
	for (int i = 0; i < 8; i++) {
		int64_t p = kv_page_alloc(pool);
		CHECK(p >= 0 && p < 8 && !seen[p]);
		seen[p] = 1;
	}
	CHECK(kv_page_alloc(pool) == -ENOMEM);
	kv_pool_free(pool);
	kern_backend_free(be);
	printf("kv pool: ok\n");
	return 0;
}

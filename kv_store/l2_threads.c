/* SPDX-License-Identifier: MIT */
/*
 * Thread-pool pager: workers take requests from a bounded queue, pread or
 * pwrite the whole slot (verifying a read's checksum there, off the driving
 * thread), push the request to a completion list and signal the store's
 * eventfd. The queue and the list hold at most queue_depth entries each,
 * since the store never has more than that in flight.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "hr_common.h"
#include "l2_internal.h"

/* A ring of request pointers; capacity cap. */
struct l2_fifo {
	struct l2_req **r;
	uint32_t head, len, cap;
};

struct l2_pool {
	pthread_mutex_t lock;
	pthread_cond_t work;  /* workers: queue not empty, or stop */
	pthread_cond_t done;  /* driver: completion list not empty */
	struct l2_fifo queue; /* submitted, not yet taken by a worker */
	struct l2_fifo compl; /* finished, not yet reaped */
	bool stop;
	uint32_t n_started;
	pthread_t *tids;
	struct kv_l2 *l2;
};

static void fifo_push(struct l2_fifo *f, struct l2_req *r)
{
	assert(f->len < f->cap);
	f->r[(f->head + f->len++) % f->cap] = r;
}

static struct l2_req *fifo_pop(struct l2_fifo *f)
{
	struct l2_req *r;

	assert(f->len);
	r = f->r[f->head];
	f->head = (f->head + 1) % f->cap;
	f->len--;
	return r;
}

static void *pool_worker(void *arg)
{
	struct l2_pool *pool = arg;
	struct kv_l2 *l2 = pool->l2;

	hr_thread_name("l2-io", NULL);
	pthread_mutex_lock(&pool->lock);
	for (;;) {
		struct l2_req *r;

		while (!pool->queue.len && !pool->stop)
			pthread_cond_wait(&pool->work, &pool->lock);
		if (!pool->queue.len)
			break; /* stop, and nothing left to do */
		r = fifo_pop(&pool->queue);
		pthread_mutex_unlock(&pool->lock);

		l2_req_complete(l2, r, l2_pio(l2, r));

		pthread_mutex_lock(&pool->lock);
		fifo_push(&pool->compl, r);
		pthread_cond_signal(&pool->done);
		/* An eventfd write cannot fail short of overflowing a 64-bit
		 * counter. */
		(void)eventfd_write(l2->event_fd, 1);
	}
	pthread_mutex_unlock(&pool->lock);
	return NULL;
}

static void pool_fini(struct kv_l2 *l2)
{
	struct l2_pool *pool = l2->pager;

	if (!pool)
		return;
	pthread_mutex_lock(&pool->lock);
	pool->stop = true;
	pthread_cond_broadcast(&pool->work);
	pthread_mutex_unlock(&pool->lock);
	for (uint32_t i = 0; i < pool->n_started; i++)
		pthread_join(pool->tids[i], NULL);
	pthread_cond_destroy(&pool->work);
	pthread_cond_destroy(&pool->done);
	pthread_mutex_destroy(&pool->lock);
	free(pool->queue.r);
	free(pool->compl.r);
	free(pool->tids);
	free(pool);
	l2->pager = NULL;
}

static int pool_init(struct kv_l2 *l2, char *err, size_t errlen)
{
	struct l2_pool *pool = calloc(1, sizeof(*pool));
	int ret;

	if (!pool)
		return -ENOMEM;
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->work, NULL);
	pthread_cond_init(&pool->done, NULL);
	pool->l2 = l2;
	pool->queue.cap = pool->compl.cap = l2->queue_depth;
	pool->queue.r = malloc(sizeof(*pool->queue.r) * l2->queue_depth);
	pool->compl.r = malloc(sizeof(*pool->compl.r) * l2->queue_depth);
	pool->tids = malloc(sizeof(*pool->tids) * l2->threads);
	l2->pager = pool;
	if (!pool->queue.r || !pool->compl.r || !pool->tids) {
		ret = -ENOMEM;
		goto fail;
	}
	for (; pool->n_started < l2->threads; pool->n_started++) {
		ret = -pthread_create(&pool->tids[pool->n_started], NULL, pool_worker, pool);
		if (ret)
			goto fail;
	}
	return 0;
fail:
	if (err && errlen)
		snprintf(err, errlen, "kv_l2: %s: thread pool of %u: %s", l2->path, l2->threads,
			 strerror(-ret));
	pool_fini(l2);
	return ret;
}

static int pool_submit(struct kv_l2 *l2, struct l2_req *const *reqs, uint32_t n)
{
	struct l2_pool *pool = l2->pager;

	pthread_mutex_lock(&pool->lock);
	for (uint32_t i = 0; i < n; i++)
		fifo_push(&pool->queue, reqs[i]);
	if (n == 1)
		pthread_cond_signal(&pool->work);
	else
		pthread_cond_broadcast(&pool->work);
	pthread_mutex_unlock(&pool->lock);
	return 0;
}

static int pool_reap(struct kv_l2 *l2, struct kv_l2_io *out, uint32_t min, uint32_t max)
{
	struct l2_pool *pool = l2->pager;
	struct l2_req *got[64];
	uint32_t n = 0;

	/* Take completions in chunks and retire them outside the lock: retiring
	 * touches only the driving thread's state. */
	while (n < max) {
		uint32_t k = 0;

		pthread_mutex_lock(&pool->lock);
		while (n < min && !pool->compl.len)
			pthread_cond_wait(&pool->done, &pool->lock);
		while (k < HR_ARRAY_SIZE(got) && n + k < max && pool->compl.len)
			got[k++] = fifo_pop(&pool->compl);
		pthread_mutex_unlock(&pool->lock);
		if (!k)
			break;
		for (uint32_t i = 0; i < k; i++)
			l2_req_retire(l2, got[i], &out[n + i]);
		n += k;
	}
	return (int)n;
}

const struct l2_pager_ops l2_threads_ops = {
	.name = "threads",
	.init = pool_init,
	.fini = pool_fini,
	.submit = pool_submit,
	.reap = pool_reap,
};

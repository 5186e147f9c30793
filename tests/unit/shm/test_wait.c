/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of futex waiting: spin-only and sleeping waits, timeouts, a wake
 * that reaches a sleeper, a wake with nobody asleep staying in user space,
 * shutdown, and a wake across two processes through a MAP_SHARED memfd (the
 * futex must not be process-private).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hr_common.h"
#include "shm_proto.h"
#include "shm_wait.h"
#include "shm_check.h"


#define MS 1000000ll

/* A waitq and an index in one cache-aligned block, as in a region. */
struct pair {
	struct shm_waitq wq;
	struct shm_ring_index idx;
};

struct waiter_arg {
	struct pair *p;
	uint64_t spin_ns;
	int64_t timeout_ns;
	int ret;
};

static void *waiter(void *arg)
{
	struct waiter_arg *a = arg;

	a->ret = shm_wait_index(&a->p->wq, SHM_WAIT_F_CQ_DATA, &a->p->idx.v, 0, a->spin_ns,
				a->timeout_ns);
	return NULL;
}

/* Poll until the waiter has announced itself (it is about to sleep or asleep). */
static int wait_announced(struct pair *p, uint32_t bit)
{
	for (int i = 0; i < 5000; i++) {
		if (shm_load_acquire(&p->wq.need_wakeup) & bit)
			return 1;
		usleep(1000);
	}
	return 0;
}

static void test_no_wait(void)
{
	struct pair p;

	memset(&p, 0, sizeof(p));
	p.idx.v = 5;
	CHECK_EQ(shm_wait_index(&p.wq, SHM_WAIT_F_CQ_DATA, &p.idx.v, 0, 0, -1), 0);
	CHECK_EQ(shm_wait_index(&p.wq, SHM_WAIT_F_CQ_DATA, &p.idx.v, 4, 1000, 0), 0);
	CHECK_EQ(p.wq.need_wakeup, 0);
}

static void test_timeouts(void)
{
	struct pair p;
	uint64_t t0;

	memset(&p, 0, sizeof(p));
	/* spin only */
	t0 = hr_now_ns();
	CHECK_EQ(shm_wait_index(&p.wq, SHM_WAIT_F_CQ_DATA, &p.idx.v, 0, 200000, 0), -ETIMEDOUT);
	CHECK(hr_now_ns() - t0 >= 200000);
	/* sleep with a deadline */
	t0 = hr_now_ns();
	CHECK_EQ(shm_wait_index(&p.wq, SHM_WAIT_F_CQ_DATA, &p.idx.v, 0, 0, 30 * MS), -ETIMEDOUT);
	CHECK(hr_now_ns() - t0 >= 30 * MS);
	CHECK_EQ(p.wq.need_wakeup, 0); /* withdrawn */
}

static void test_wake_sleeper(void)
{
	struct pair p;
	pthread_t t;
	struct waiter_arg a = { .p = &p, .spin_ns = 1000, .timeout_ns = 10000 * MS };

	memset(&p, 0, sizeof(p));
	/* nobody asleep: no system call, the futex word does not move */
	CHECK_EQ(shm_wake(&p.wq, SHM_WAIT_F_CQ_DATA), 0);
	CHECK_EQ(p.wq.futex, 0);

	CHECK_EQ(pthread_create(&t, NULL, waiter, &a), 0);
	CHECK(wait_announced(&p, SHM_WAIT_F_CQ_DATA));
	usleep(20000); /* let it reach FUTEX_WAIT (correct either way) */
	/* a wake for another bit does not count */
	CHECK_EQ(shm_wake(&p.wq, SHM_WAIT_F_SQ_SPACE), 0);
	uint64_t t0 = hr_now_ns();
	shm_store_release(&p.idx.v, 1); /* the "publish" */
	CHECK_EQ(shm_wake(&p.wq, SHM_WAIT_F_CQ_DATA), 1);
	pthread_join(t, NULL);
	CHECK(a.ret >= 1);                   /* it slept */
	CHECK(hr_now_ns() - t0 < 5000 * MS); /* and was woken, not timed out */
	CHECK_EQ(p.wq.futex, 1);
	CHECK_EQ(p.wq.need_wakeup, 0);
}

static void test_shutdown(void)
{
	struct pair p;
	pthread_t t;
	struct waiter_arg a = { .p = &p, .spin_ns = 0, .timeout_ns = -1 };

	memset(&p, 0, sizeof(p));
	CHECK_EQ(pthread_create(&t, NULL, waiter, &a), 0);
	CHECK(wait_announced(&p, SHM_WAIT_F_CQ_DATA));
	CHECK_EQ(shm_waitq_shutdown(&p.wq), 1);
	pthread_join(t, NULL);
	CHECK_EQ(a.ret, -ESHUTDOWN);
	/* later waits end at once */
	CHECK_EQ(shm_wait_index(&p.wq, SHM_WAIT_F_CQ_DATA, &p.idx.v, 0, 0, -1), -ESHUTDOWN);
	CHECK_EQ(shm_waitq_shutdown(NULL), -EINVAL);
}

/* The split API, as a daemon watching two regions would use it. */
static void test_split_api(void)
{
	struct pair p;

	memset(&p, 0, sizeof(p));
	uint32_t seq = shm_wait_prepare(&p.wq, SHM_WAIT_F_SQ_DATA);
	CHECK_EQ(p.wq.need_wakeup, SHM_WAIT_F_SQ_DATA);
	/* a wake between prepare and sleep is not lost: sleep returns at once */
	CHECK_EQ(shm_wake(&p.wq, SHM_WAIT_F_SQ_DATA), 1);
	uint64_t t0 = hr_now_ns();
	CHECK_EQ(shm_wait_sleep(&p.wq, seq, hr_now_ns() + 5000 * MS), 0);
	CHECK(hr_now_ns() - t0 < 1000 * MS);
	shm_wait_finish(&p.wq, SHM_WAIT_F_SQ_DATA);
	CHECK_EQ(p.wq.need_wakeup, 0);
	/* deadline in the past */
	seq = shm_wait_prepare(&p.wq, SHM_WAIT_F_SQ_DATA);
	CHECK_EQ(shm_wait_sleep(&p.wq, seq, hr_now_ns() - 1), -ETIMEDOUT);
	shm_wait_finish(&p.wq, SHM_WAIT_F_SQ_DATA);
}

/* Child sleeps on a MAP_SHARED memfd page, parent wakes it. */
static void test_cross_process(void)
{
	int fd = memfd_create("shm-wait-test", MFD_CLOEXEC);
	struct pair *p;
	pid_t pid;
	int status;

	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK_EQ(ftruncate(fd, 4096), 0);
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	CHECK(p != MAP_FAILED);
	if (p == MAP_FAILED)
		return;

	pid = fork();
	if (pid == 0) {
		int r = shm_wait_index(&p->wq, SHM_WAIT_F_SQ_DATA, &p->idx.v, 0, 0, 10000 * MS);
		_exit(r >= 1 ? 0 : 10 + (r < 0 ? -r % 100 : 0));
	}
	CHECK(pid > 0);
	CHECK(wait_announced(p, SHM_WAIT_F_SQ_DATA));
	usleep(20000);
	shm_store_release(&p->idx.v, 1);
	CHECK_EQ(shm_wake(&p->wq, SHM_WAIT_F_SQ_DATA), 1);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	munmap(p, 4096);
}

int main(void)
{
	test_no_wait();
	test_timeouts();
	test_wake_sleeper();
	test_shutdown();
	test_split_api();
	test_cross_process();
	if (failures) {
		fprintf(stderr, "test_wait: %d check(s) failed\n", failures);
		return 1;
	}
	printf("test_wait: ok\n");
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * The slow path of waiting: spinning with a pause, the need-wakeup handshake,
 * FUTEX_WAIT/FUTEX_WAKE on a word in the shared region, and shutdown. The
 * protocol and the race it avoids are described in shm_wait.h.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hr_common.h"
#include "shm_wait.h"

/* Clock reads cost ~20 ns through the vDSO; a pause ~40 cycles on recent
 * x86 (~140 on Skylake-X). Reading the clock every 64 spins keeps its cost
 * under a few percent of the spin while overshooting spin_ns by < 3 us. */
#define SPINS_PER_CLOCK_READ 64u

/* Not FUTEX_PRIVATE_FLAG: the word is in a MAP_SHARED mapping used by two
 * processes; a private futex is keyed by (mm, address) and would never meet
 * the other process's wake. FUTEX_WAIT_BITSET takes an absolute
 * CLOCK_MONOTONIC deadline, so retries after spurious wake-ups need no
 * recomputation. */
static long futex_wait(uint32_t *uaddr, uint32_t val, const struct timespec *abs)
{
	return syscall(SYS_futex, uaddr, FUTEX_WAIT_BITSET, val, abs, NULL,
		       FUTEX_BITSET_MATCH_ANY);
}

static long futex_wake(uint32_t *uaddr, int n)
{
	return syscall(SYS_futex, uaddr, FUTEX_WAKE, n, NULL, NULL, 0);
}

int shm_wake_slow(struct shm_waitq *wq)
{
	/* Pairs with the acquire of futex in shm_wait_prepare(): the sleeper
	 * either read the old value (then FUTEX_WAIT sees the bump and returns,
	 * or this wake finds it queued) or reads the new one later. */
	shm_fetch_add_acq_rel(&wq->futex, 1);
	/* Wake all: one sleeper per bit, but both bits of a side share the word. */
	if (futex_wake(&wq->futex, INT_MAX) < 0)
		return -errno;
	return 1;
}

uint32_t shm_wait_prepare(struct shm_waitq *wq, uint32_t bits)
{
	/* Pairs with the release bump in shm_wake_slow() and
	 * shm_waitq_shutdown(): read before we announce ourselves, so any wake
	 * that sees the announcement bumps the word past this value. */
	uint32_t seq = shm_load_acquire(&wq->futex);

	/* Release: pairs with the acquire of need_wakeup in shm_wake(), which
	 * thereby knows our read of futex came first. */
	shm_fetch_or_acq_rel(&wq->need_wakeup, bits);
	/* Dekker: the flag store is ordered before the caller's re-check of the
	 * ring index; pairs with shm_smp_mb() in shm_wake(). */
	shm_smp_mb();
	return seq;
}

void shm_wait_finish(struct shm_waitq *wq, uint32_t bits)
{
	/* Release/acquire only to keep the RMW ordered with our other accesses;
	 * a waker that still sees the bit issues one harmless extra wake. */
	shm_fetch_and_acq_rel(&wq->need_wakeup, ~bits);
}

int shm_wait_sleep(struct shm_waitq *wq, uint32_t seq, uint64_t deadline_ns)
{
	struct timespec ts, *abs = NULL;

	/* Pairs with the release store in shm_waitq_shutdown(). */
	if (shm_load_acquire(&wq->shutdown))
		return -ESHUTDOWN;
	if (deadline_ns) {
		ts.tv_sec = (time_t)(deadline_ns / 1000000000u);
		ts.tv_nsec = (long)(deadline_ns % 1000000000u);
		abs = &ts;
	}
	if (futex_wait(&wq->futex, seq, abs) == 0)
		return 0;
	switch (errno) {
	case EAGAIN:  /* the word moved before we slept: a wake-up is due */
		return 0;
	case ETIMEDOUT:
		return -ETIMEDOUT;
	case EINTR:
		return -EINTR;
	default:
		return -errno;
	}
}

/* Spin until *word != old or spin_ns passed. Returns 1 if it moved. */
static int spin_on(const uint32_t *word, uint32_t old, uint64_t start, uint64_t spin_ns)
{
	for (uint32_t i = 1;; i++) {
		shm_cpu_relax();
		/* Relaxed: a hint; the caller's peek/reserve loads with acquire. */
		if (shm_load_relaxed(word) != old)
			return 1;
		if (i % SPINS_PER_CLOCK_READ == 0 && hr_now_ns() - start >= spin_ns)
			return 0;
	}
}

int shm_wait_index(struct shm_waitq *wq, uint32_t bits, const uint32_t *word, uint32_t old,
		   uint64_t spin_ns, int64_t timeout_ns)
{
	uint64_t start, deadline = 0;
	int slept = 0;

	if (shm_load_relaxed(word) != old)
		return 0;
	start = hr_now_ns();
	if (spin_ns && spin_on(word, old, start, spin_ns))
		return 0;
	if (timeout_ns == 0)
		return -ETIMEDOUT;
	if (timeout_ns > 0)
		deadline = start + (uint64_t)timeout_ns;

	for (;;) {
		uint32_t seq = shm_wait_prepare(wq, bits);
		int r;

		/* After the barrier in prepare: the Dekker re-check. */
		if (shm_load_relaxed(word) != old) {
			shm_wait_finish(wq, bits);
			return slept;
		}
		r = shm_wait_sleep(wq, seq, deadline);
		shm_wait_finish(wq, bits);
		if (r < 0)
			return r;
		slept++;
		if (shm_load_relaxed(word) != old)
			return slept;
	}
}

int shm_waitq_shutdown(struct shm_waitq *wq)
{
	if (!wq)
		return -EINVAL;
	/* Pairs with the acquire in shm_wait_sleep(). */
	shm_store_release(&wq->shutdown, 1);
	return shm_wake_slow(wq);
}

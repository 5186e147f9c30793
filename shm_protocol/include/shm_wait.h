/* SPDX-License-Identifier: MIT */
/*
 * Sleeping and waking across processes without a system call on the hot path
 * (io_uring SQPOLL's need-wakeup scheme). A waiter spins for a while, then
 * announces itself in need_wakeup and sleeps on a futex word in the shared
 * region; a producer checks need_wakeup after publishing and enters the
 * kernel only when someone sleeps.
 *
 * The handshake is Dekker's: the waiter stores need_wakeup then loads the
 * ring index, the waker stores the ring index then loads need_wakeup. Without
 * a full barrier between each store and the following load, both loads can be
 * satisfied before either store is visible (x86 store buffers allow exactly
 * this), so the waiter sees an empty ring, the waker sees nobody waiting, and
 * the waiter sleeps on data that is already there: a lost wake-up. With
 * shm_smp_mb() on both sides, at least one of the two sees the other's store:
 * either the waiter sees the index move and does not sleep, or the waker sees
 * the flag and wakes it. The futex word closes the remaining window: the
 * waiter reads it before raising the flag and sleeps only while it still has
 * that value, the waker bumps it before FUTEX_WAKE, so a wake between the
 * waiter's check and its FUTEX_WAIT makes FUTEX_WAIT return at once.
 *
 * The futexes are shared (no FUTEX_PRIVATE_FLAG): they cross processes through
 * a MAP_SHARED mapping, and the kernel keys them by the backing file page.
 * Each need_wakeup bit has at most one sleeper at a time.
 */
#ifndef SHM_WAIT_H
#define SHM_WAIT_H

#include <stdint.h>

#include "shm_barrier.h"
#include "shm_proto.h"
#include "shm_ring.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Out-of-line part of shm_wake(): bump the futex word and FUTEX_WAKE. Returns
 * 1, or -errno if the system call failed. */
int shm_wake_slow(struct shm_waitq *wq);

/*
 * Waker side: call after publishing (or advancing) a batch, with the bits that
 * the change can satisfy, e.g. SHM_WAIT_F_SQ_DATA after shm_sq_publish on the
 * daemon's queue. Costs one full barrier and a load; enters the kernel only if
 * a sleeper announced one of bits. Returns 1 if it woke, 0 if nobody slept,
 * or -errno. Batch: one call for several publishes, with the OR of the bits.
 * The daemon treats need_wakeup as a hint from an untrusted peer: the worst a
 * client can do with it is make the daemon issue wake-ups for that client.
 */
static inline int shm_wake(struct shm_waitq *wq, uint32_t bits)
{
	/* Dekker: our index store (before this call) is ordered before the flag
	 * load; pairs with shm_smp_mb() in shm_wait_prepare(). */
	shm_smp_mb();
	/* Pairs with the release of the flag in shm_wait_prepare(): what the
	 * sleeper did before announcing itself (reading the futex word) happens
	 * before our bump of it. */
	if (!(shm_load_acquire(&wq->need_wakeup) & bits))
		return 0;
	return shm_wake_slow(wq);
}

/*
 * Low-level waiting, for a waiter that checks several conditions (the daemon
 * watching many clients' regions) or needs to see each step:
 *
 *   seq = shm_wait_prepare(wq, bits)     announce, full barrier
 *   re-check every condition             nothing to do? then:
 *   shm_wait_sleep(wq, seq, deadline)    FUTEX_WAIT while the word is seq
 *   shm_wait_finish(wq, bits)            withdraw the announcement
 *
 * prepare returns the futex sequence to pass to sleep; call finish once after
 * prepare whatever happened in between.
 */
uint32_t shm_wait_prepare(struct shm_waitq *wq, uint32_t bits);
void shm_wait_finish(struct shm_waitq *wq, uint32_t bits);

/*
 * Sleep while wq->futex == seq, until deadline_ns (CLOCK_MONOTONIC, as
 * hr_now_ns; 0 = no deadline). Returns 0 when woken or when the word already
 * differs (the caller re-checks its conditions), -ETIMEDOUT, -EINTR (a
 * signal), or -ESHUTDOWN if the peer shut the queue down.
 */
int shm_wait_sleep(struct shm_waitq *wq, uint32_t seq, uint64_t deadline_ns);

/*
 * Wait until the shared index *word differs from old: spin up to spin_ns with
 * a pause instruction, then sleep as above until timeout_ns from now
 * (negative = forever, 0 = spin only). Returns the number of times it slept
 * (>= 0; the condition held when it returned), -ETIMEDOUT (the timeout ran
 * out while the index had not moved as far as the last check saw), -EINTR,
 * or -ESHUTDOWN. The caller re-reads the ring (peek/reserve) afterwards: this
 * load is only a hint. One sleeper per bit.
 */
int shm_wait_index(struct shm_waitq *wq, uint32_t bits, const uint32_t *word, uint32_t old,
		   uint64_t spin_ns, int64_t timeout_ns);

/* Mark the queue shut down and wake its sleeper: its waits return -ESHUTDOWN
 * from then on (the daemon calls it on the client's queue before it unmaps a
 * region or exits). Returns 1 or -errno. */
int shm_waitq_shutdown(struct shm_waitq *wq);

/* ---- one call per ring condition --------------------------------------- */

/* Daemon: until the SQ has an entry. Wake with SHM_WAIT_F_SQ_DATA. */
static inline int shm_sq_wait_data(struct shm_sq_cons *sq, struct shm_waitq *daemon_wq,
				   uint64_t spin_ns, int64_t timeout_ns)
{
	return shm_wait_index(daemon_wq, SHM_WAIT_F_SQ_DATA, sq->r.tail_p, sq->r.head,
			      spin_ns, timeout_ns);
}

/* Daemon: until the client frees CQ slots (after a reserve returned 0).
 * Wake with SHM_WAIT_F_CQ_SPACE. */
static inline int shm_cq_wait_space(struct shm_cq_prod *cq, struct shm_waitq *daemon_wq,
				    uint64_t spin_ns, int64_t timeout_ns)
{
	return shm_wait_index(daemon_wq, SHM_WAIT_F_CQ_SPACE, cq->r.head_p, cq->r.head,
			      spin_ns, timeout_ns);
}

/* Client: until the CQ has an entry. Wake with SHM_WAIT_F_CQ_DATA. */
static inline int shm_cq_wait_data(struct shm_cq_cons *cq, struct shm_waitq *client_wq,
				   uint64_t spin_ns, int64_t timeout_ns)
{
	return shm_wait_index(client_wq, SHM_WAIT_F_CQ_DATA, cq->r.tail_p, cq->r.head,
			      spin_ns, timeout_ns);
}

/* Client: until the daemon frees SQ slots (after a reserve returned 0).
 * Wake with SHM_WAIT_F_SQ_SPACE. */
static inline int shm_sq_wait_space(struct shm_sq_prod *sq, struct shm_waitq *client_wq,
				    uint64_t spin_ns, int64_t timeout_ns)
{
	return shm_wait_index(client_wq, SHM_WAIT_F_SQ_SPACE, sq->r.head_p, sq->r.head,
			      spin_ns, timeout_ns);
}

#ifdef __cplusplus
}
#endif

#endif

/* SPDX-License-Identifier: MIT */
/*
 * The only atomics in shm_protocol: acquire/release/relaxed loads and stores of
 * shared 32-bit words, one full barrier and a CPU pause. They are the C11
 * memory model through the __atomic builtins (the same orders as
 * <stdatomic.h>, but usable from C++ bindings too); ThreadSanitizer
 * understands them. Every acquire/release at a call site carries a comment
 * naming its pair.
 */
#ifndef SHM_BARRIER_H
#define SHM_BARRIER_H

#include <stdint.h>

/* Acquire: later loads/stores of this thread stay after the load. */
#define shm_load_acquire(p)     __atomic_load_n((p), __ATOMIC_ACQUIRE)
/* Release: earlier loads/stores of this thread complete before the store. */
#define shm_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
/* Relaxed: one untorn access, no ordering: owned words and hints. */
#define shm_load_relaxed(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define shm_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

/* Read-modify-write on the wait words (slow path only). */
#define shm_fetch_add_acq_rel(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
#define shm_fetch_or_acq_rel(p, v)  __atomic_fetch_or((p), (v), __ATOMIC_ACQ_REL)
#define shm_fetch_and_acq_rel(p, v) __atomic_fetch_and((p), (v), __ATOMIC_ACQ_REL)

#if defined(__SANITIZE_THREAD__)
#define SHM_TSAN_ 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SHM_TSAN_ 1
#endif
#endif

/*
 * Full barrier: orders an earlier store before a later load (the one
 * reordering x86 allows). Needed only for the need-wakeup handshake in
 * shm_wait.h, where each side stores one word and then loads the other's.
 * On x86-64 a locked RMW of a stack word is a full barrier for ordinary
 * memory and cheaper than the mfence clang emits for a seq_cst fence (mfence
 * also waits for write-combining stores, which we do not have); the word is
 * below the 128-byte red zone so that it does not alias live locals. Under
 * ThreadSanitizer the C11 fence is used: TSan does not model fences (GCC warns
 * so), and does not need to here: the words around it are atomics and the
 * data is published by release/acquire.
 */
#if defined(SHM_TSAN_) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtsan"
#endif
static inline void shm_smp_mb(void)
{
#if defined(__x86_64__) && !defined(SHM_TSAN_)
	__asm__ __volatile__("lock; orl $0, -132(%%rsp)" ::: "memory", "cc");
#else
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}
#if defined(SHM_TSAN_) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/* Compiler-only barrier. */
#define shm_barrier() __asm__ __volatile__("" ::: "memory")

/* Spin-wait hint: lets the sibling hyperthread run, saves power. */
static inline void shm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	shm_barrier();
#endif
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * The cpu backend: the fp32 reference and the CI path. This file owns its
 * construction, memory (64-byte aligned host memory), copies (memcpy), weight
 * upload (conversion to fp32) and the ops table; the operations themselves
 * live in cpu_ops.c and cpu_attention.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "hr_common.h"
#include "cpu_internal.h"

void *kern_cpu_alloc_host(size_t bytes)
{
	size_t sz;
	void *p = NULL;
	int r;

	/* Round up to whole cache lines (at least one) so that a zero-size
	 * request still returns a unique pointer and vector tails stay inside. */
	if (!hr_add_ok(bytes, KERN_CPU_ALIGN - 1, &sz)) {
		errno = ENOMEM;
		return NULL;
	}
	sz &= ~(size_t)(KERN_CPU_ALIGN - 1);
	if (!sz)
		sz = KERN_CPU_ALIGN;
	r = posix_memalign(&p, KERN_CPU_ALIGN, sz);
	if (r) {
		errno = r == EINVAL ? EINVAL : ENOMEM;
		return NULL;
	}
	return p;
}

static void *cpu_alloc(struct kern_backend *be, size_t bytes)
{
	(void)be;
	return kern_cpu_alloc_host(bytes);
}

static void cpu_free(struct kern_backend *be, void *p)
{
	(void)be;
	free(p);
}

static int cpu_memcpy(void *dst, const void *src, size_t bytes)
{
	if (!bytes)
		return 0;
	if (!dst || !src)
		return -EINVAL;
	memmove(dst, src, bytes);
	return 0;
}

static int cpu_upload(struct kern_backend *be, void *dst, const void *host_src, size_t bytes)
{
	(void)be;
	return cpu_memcpy(dst, host_src, bytes);
}

static int cpu_download(struct kern_backend *be, void *host_dst, const void *src, size_t bytes)
{
	(void)be;
	return cpu_memcpy(host_dst, src, bytes);
}

static int cpu_copy(struct kern_backend *be, void *dst, const void *src, size_t bytes)
{
	(void)be;
	return cpu_memcpy(dst, src, bytes);
}

static int cpu_sync(struct kern_backend *be)
{
	(void)be;
	return 0;
}

static void *cpu_weight_upload(struct kern_backend *be, const void *host_src, enum kern_dtype dt,
			       size_t n)
{
	size_t bytes;
	float *w;

	(void)be;
	if (!host_src || !n || !kern_dtype_size(dt)) {
		errno = EINVAL;
		return NULL;
	}
	if (!hr_mul_ok(n, sizeof(float), &bytes)) {
		errno = ENOMEM;
		return NULL;
	}
	w = kern_cpu_alloc_host(bytes);
	if (!w)
		return NULL;
	kern_to_f32(w, host_src, dt, n);
	return w;
}

int kern_cpu_scratch_reserve(struct kern_backend *be, size_t row)
{
	struct kern_cpu *cpu = kern_cpu_priv(be);
	size_t bytes;
	float *p;

	if (row <= cpu->scratch_row)
		return 0;
	/* Grow geometrically so that a sequence growing one token a step does
	 * not reallocate every step. */
	if (row < 2 * cpu->scratch_row)
		row = 2 * cpu->scratch_row;
	row = HR_ALIGN_UP(row, (size_t)16);
	if (!hr_mul_ok(row, (size_t)cpu->n_threads, &bytes) ||
	    !hr_mul_ok(bytes, sizeof(float), &bytes))
		return -ENOMEM;
	p = kern_cpu_alloc_host(bytes);
	if (!p)
		return -ENOMEM;
	free(cpu->scratch);
	cpu->scratch = p;
	cpu->scratch_row = row;
	return 0;
}

static void cpu_destroy(struct kern_backend *be)
{
	struct kern_cpu *cpu = kern_cpu_priv(be);

	if (cpu)
		free(cpu->scratch);
	free(cpu);
	free(be);
}

/* Host memory: available pages (as the kernel counts them) and all pages. */
static int cpu_mem_info(struct kern_backend *be, uint64_t *free_bytes, uint64_t *total_bytes)
{
	long page = sysconf(_SC_PAGESIZE), avail = sysconf(_SC_AVPHYS_PAGES),
	     total = sysconf(_SC_PHYS_PAGES);

	(void)be;
	if (page <= 0 || avail < 0 || total <= 0)
		return -ENOSYS;
	*free_bytes = (uint64_t)avail * (uint64_t)page;
	*total_bytes = (uint64_t)total * (uint64_t)page;
	return 0;
}

static const struct kern_ops cpu_ops = {
	.alloc = cpu_alloc,
	.free = cpu_free,
	.upload = cpu_upload,
	.download = cpu_download,
	.copy = cpu_copy,
	.sync = cpu_sync,
	.weight_upload = cpu_weight_upload,
	.embed = kern_cpu_embed,
	.add_rmsnorm = kern_cpu_add_rmsnorm,
	.matmul = kern_cpu_matmul,
	.matmul_acc = kern_cpu_matmul_acc,
	.matmul_f32out = kern_cpu_matmul_f32out,
	.rope_kv_write = kern_cpu_rope_kv_write,
	.attention = kern_cpu_attention,
	.swiglu = kern_cpu_swiglu,
	.gather_rows = kern_cpu_gather_rows,
	.argmax = kern_cpu_argmax,
	.softmax_ids = kern_cpu_softmax_ids,
	.mem_info = cpu_mem_info,
	.destroy = cpu_destroy,
};

static int cpu_default_threads(void)
{
	long n;

#ifdef _OPENMP
	n = omp_get_num_procs();
#else
	n = sysconf(_SC_NPROCESSORS_ONLN);
#endif
	if (n < 1)
		n = 1;
	if (n > 1024)
		n = 1024;
	return (int)n;
}

/* Measured on the 2-core machine, tiny model, hearthd serving 64 sessions in
 * closed loop (docs/BENCHMARKS.md): 871-947 events/s with OpenMP's default
 * against 1335-1504 passive; then p99 74-91 ms with OpenBLAS's default
 * timeout against 45-51 ms with 4. */
void kern_cpu_quiet_pools(char **argv)
{
	bool set = false;

	if (!getenv("OMP_WAIT_POLICY"))
		set |= setenv("OMP_WAIT_POLICY", "passive", 0) == 0;
	if (!getenv("OPENBLAS_THREAD_TIMEOUT"))
		set |= setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0) == 0;
	if (set) {
		/* The file's own path, not /proc/self/exe: the program's name
		 * (comm: ps, top, pkill) comes from the path executed. */
		char path[4096];
		ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);

		if (n > 0) {
			path[n] = 0;
			execv(path, argv);
		}
	}
	/* No /proc, or the file is gone: go on, with the pools spinning. */
}

struct kern_backend *kern_cpu_new(int n_threads)
{
	struct kern_backend *be;
	struct kern_cpu *cpu;

	if (n_threads < 0) {
		errno = EINVAL;
		return NULL;
	}
	if (n_threads == 0)
		n_threads = cpu_default_threads();
	be = calloc(1, sizeof(*be));
	cpu = calloc(1, sizeof(*cpu));
	if (!be || !cpu) {
		free(be);
		free(cpu);
		errno = ENOMEM;
		return NULL;
	}
	cpu->n_threads = n_threads;
	be->ops = &cpu_ops;
	be->name = "cpu";
	be->act_bytes = 4;
	be->act_dtype = KERN_F32;
	/* From 16 tokens a step (prefill chunks; not decode nor short appends):
	 * the residual add is a small share of a cpu step either way, and so the
	 * cpu tests run both ways through the forward pass. */
	be->acc_min_rows = 16;
	be->priv = cpu;
	snprintf(be->device_name, sizeof(be->device_name), "host cpu, %d threads, %s",
		 n_threads, openblas_get_config());
	/* OpenBLAS keeps one global thread count: the last backend created wins. */
	openblas_set_num_threads(n_threads);
	cpu->blas_threads = n_threads;
	return be;
}

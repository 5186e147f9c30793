/* SPDX-License-Identifier: MIT */
/*
 * Streaming upload for the cuda backend: pinned host buffers the model
 * loader reads weight files into (with O_DIRECT where it can), and copies
 * from them straight to the device on the backend's stream, without the
 * 2 MiB staging slots that ops->upload goes through. The copy is queued and
 * the call returns: the buffer must stay unchanged until ops->sync, which
 * waits for the stream.
 *
 * Why pinned: a cudaMemcpyAsync from pageable memory is staged by the driver
 * through its own pinned buffer and is synchronous with respect to the host;
 * from page-locked memory the copy engine reads the buffer by DMA at PCIe
 * speed (~50 GB/s on an H200's Gen5 link) while the host thread goes back to
 * the next read.
 */
#include <errno.h>

#include <cuda_runtime_api.h>

#include "cuda_internal.h"
#include "cuda_upload.h"

void *kc_alloc_host_op(struct kern_backend *be, size_t bytes)
{
	void *p = NULL;
	int r = kc_enter(be);

	if (r < 0) {
		errno = -r;
		return NULL;
	}
	/* Portable: usable from any context; the allocation is page-aligned. */
	r = kc_err(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable));
	if (r < 0) {
		errno = -r;
		return NULL;
	}
	return p;
}

void kc_free_host_op(struct kern_backend *be, void *p)
{
	(void)be;
	if (p)
		cudaFreeHost(p);
}

int kc_write_async_op(struct kern_backend *be, void *dst, const void *host_src, size_t bytes)
{
	return kc_copy_async(be, dst, host_src, bytes, cudaMemcpyHostToDevice);
}

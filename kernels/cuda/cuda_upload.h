/* SPDX-License-Identifier: MIT */
/*
 * Streaming upload of the cuda backend (kern_ops alloc_host, free_host,
 * write_async), defined in cuda_upload.c and registered in cuda_backend.c's
 * ops table. Nothing outside kernels/cuda includes this.
 */
#ifndef KERN_CUDA_UPLOAD_H
#define KERN_CUDA_UPLOAD_H

#include "kern.h"

void *kc_alloc_host_op(struct kern_backend *be, size_t bytes);
void kc_free_host_op(struct kern_backend *be, void *p);
int kc_write_async_op(struct kern_backend *be, void *dst, const void *host_src, size_t bytes);

#endif

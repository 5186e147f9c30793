/* SPDX-License-Identifier: MIT */
/*
 * The cuda backend: bf16 activations, KV and weights with fp32 arithmetic, on
 * one CUDA stream. This file owns construction (ENODEV when no usable GPU or
 * driver, so that "auto" falls back to cpu), device memory, copies through
 * pinned staging, weight upload with conversion to bf16, the device error
 * word, and the ops table; the operations live in cuda_ops.c, cuda_gemm.c
 * and the .cu files.
 *
 * Synchronisation: upload returns once the data sits in pinned staging (the
 * copy to the device is queued on the stream); download and sync wait for the
 * stream. Nothing else waits for the device, except free (cudaFree) and the
 * rare growth of the attention workspace.
 * Deferred errors: kernels that find bad indices in device data (ids, rows,
 * slots, pages, positions) clamp or skip them and set the error word; the
 * next download or sync returns -EINVAL and clears it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "hr_common.h"
#include "cuda_internal.h"
#include "cuda_upload.h"

/* Preallocated attention workspace. Growth makes every captured graph stale
 * (each is captured again at its next step, a stall of milliseconds under
 * load), so it starts at what the split rules can ask for at any size: a
 * step is split only while its blocks are short of the machine, so splits x
 * rows stay near mma_blocks x SMs x 64 / group, about 2 x 528 tokens of 32
 * heads x 130 floats at the 8B shape (17.6 MB; 16 MB was too little for it),
 * and decode's splits x sequences stay near a few hundred. */
#define KC_ATTN_WS_INIT ((size_t)64 << 20)

int kc_err(cudaError_t e)
{
	if (e == cudaSuccess)
		return 0;
	(void)cudaGetLastError();
	return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
}

int kc_enter(struct kern_backend *be)
{
	struct kern_cuda *c = kc_priv(be);
	int cur = -1;

	if (cudaGetDevice(&cur) == cudaSuccess && cur == c->device)
		return 0;
	return kc_err(cudaSetDevice(c->device));
}

int kc_attn_ws_reserve(struct kern_backend *be, size_t bytes)
{
	struct kern_cuda *c = kc_priv(be);
	void *p = NULL;
	cudaError_t e;

	if (bytes <= c->attn_ws_bytes)
		return 0;
	/* Moving it during a capture would break the capture (cudaFree waits
	 * for the device); the caller runs the step eagerly once first. */
	if (c->capturing)
		return -EBUSY;
	if (bytes < 2 * c->attn_ws_bytes)
		bytes = 2 * c->attn_ws_bytes;
	/* cudaFree waits for the device, so no queued kernel still uses it. */
	cudaFree(c->attn_ws);
	c->attn_ws = NULL;
	c->attn_ws_bytes = 0;
	c->ws_gen++; /* graphs that captured the old address are stale */
	e = cudaMalloc(&p, bytes);
	if (e != cudaSuccess)
		return kc_err(e);
	/* The decode kernel's split counters start at zero. */
	e = cudaMemset(p, 0, KC_ATTN_CNT_BYTES);
	if (e != cudaSuccess) {
		cudaFree(p);
		return kc_err(e);
	}
	c->attn_ws = p;
	c->attn_ws_bytes = bytes;
	return 0;
}

/* Deferred device-side errors, see the file comment. Call after a sync. */
static int take_dev_err(struct kern_cuda *c)
{
	volatile uint32_t *w = c->err_host;

	if (!*w)
		return 0;
	*w = 0;
	return -EINVAL;
}

static void *cuda_alloc(struct kern_backend *be, size_t bytes)
{
	void *p = NULL;
	int r = kc_enter(be);
	cudaError_t e;

	if (r < 0) {
		errno = -r;
		return NULL;
	}
	/* A zero-size request still gets a unique pointer. */
	e = cudaMalloc(&p, bytes ? bytes : 256);
	if (e != cudaSuccess) {
		errno = -kc_err(e);
		return NULL;
	}
	return p;
}

static void cuda_free(struct kern_backend *be, void *p)
{
	if (!p || kc_enter(be) < 0)
		return;
	cudaFree(p);
}

/* Take the next staging slot, waiting until its last copy is done. */
static int stage_take(struct kern_cuda *c, unsigned *ret_slot)
{
	unsigned s = c->stage_next++ % KC_STAGE_SLOTS;
	int r = kc_err(cudaEventSynchronize(c->stage_ev[s]));

	if (r == 0)
		*ret_slot = s;
	return r;
}

static int cuda_upload(struct kern_backend *be, void *dst, const void *host_src, size_t bytes)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!bytes)
		return 0;
	if (!dst || !host_src)
		return -EINVAL;
	r = kc_enter(be);
	for (size_t off = 0; !r && off < bytes; off += KC_STAGE_BYTES) {
		size_t len = HR_MIN(KC_STAGE_BYTES, bytes - off);
		unsigned s = 0;

		r = stage_take(c, &s);
		if (r < 0)
			break;
		memcpy(c->stage_host[s], (const char *)host_src + off, len);
		r = kc_err(cudaMemcpyAsync((char *)dst + off, c->stage_host[s], len,
					   cudaMemcpyHostToDevice, c->stream));
		if (!r)
			r = kc_err(cudaEventRecord(c->stage_ev[s], c->stream));
	}
	return r;
}

static int cuda_download(struct kern_backend *be, void *host_dst, const void *src, size_t bytes)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!bytes)
		return 0;
	if (!host_dst || !src)
		return -EINVAL;
	r = kc_enter(be);
	/* The device writes the slot in stream order, after any pending copy
	 * out of it, so no wait on the slot's event is needed here. */
	for (size_t off = 0; !r && off < bytes; off += KC_STAGE_BYTES) {
		size_t len = HR_MIN(KC_STAGE_BYTES, bytes - off);
		unsigned s = c->stage_next++ % KC_STAGE_SLOTS;

		r = kc_err(cudaMemcpyAsync(c->stage_host[s], (const char *)src + off, len,
					   cudaMemcpyDeviceToHost, c->stream));
		if (!r)
			r = kc_err(cudaStreamSynchronize(c->stream));
		if (!r)
			memcpy((char *)host_dst + off, c->stage_host[s], len);
	}
	return r ? r : take_dev_err(c);
}

int kc_copy_async(struct kern_backend *be, void *dst, const void *src, size_t bytes,
		  enum cudaMemcpyKind kind)
{
	int r;

	if (!bytes)
		return 0;
	if (!dst || !src)
		return -EINVAL;
	r = kc_enter(be);
	if (r < 0)
		return r;
	return kc_err(cudaMemcpyAsync(dst, src, bytes, kind, kc_priv(be)->stream));
}

static int cuda_copy(struct kern_backend *be, void *dst, const void *src, size_t bytes)
{
	return kc_copy_async(be, dst, src, bytes, cudaMemcpyDeviceToDevice);
}

static int cuda_sync(struct kern_backend *be)
{
	struct kern_cuda *c = kc_priv(be);
	int r = kc_enter(be);

	if (!r)
		r = kc_err(cudaStreamSynchronize(c->stream));
	return r ? r : take_dev_err(c);
}

/*
 * bf16 goes through staging as is; f32 and f16 go through staging to a
 * device slot and are converted there by a kernel (the host only copies,
 * which keeps a large fp32 checkpoint loading at copy speed).
 */
static void *cuda_weight_upload(struct kern_backend *be, const void *host_src,
				enum kern_dtype dt, size_t n)
{
	struct kern_cuda *c = kc_priv(be);
	size_t esize = kern_dtype_size(dt), bytes, chunk;
	char *dst;
	int r;

	if (!host_src || !n || !esize) {
		errno = EINVAL;
		return NULL;
	}
	if (!hr_mul_ok(n, 2, &bytes)) {
		errno = ENOMEM;
		return NULL;
	}
	dst = cuda_alloc(be, bytes);
	if (!dst)
		return NULL;
	if (dt == KERN_BF16) {
		r = cuda_upload(be, dst, host_src, bytes);
		goto out;
	}
	chunk = KC_STAGE_BYTES / esize;
	r = 0;
	for (size_t off = 0; !r && off < n; off += chunk) {
		size_t cnt = HR_MIN(chunk, n - off);
		unsigned s = 0;

		r = stage_take(c, &s);
		if (r < 0)
			break;
		memcpy(c->stage_host[s], (const char *)host_src + off * esize, cnt * esize);
		r = kc_err(cudaMemcpyAsync(c->stage_dev[s], c->stage_host[s], cnt * esize,
					   cudaMemcpyHostToDevice, c->stream));
		if (!r)
			r = kc_convert_bf16(dst + off * 2, c->stage_dev[s], dt, cnt, c->stream);
		if (!r)
			r = kc_err(cudaEventRecord(c->stage_ev[s], c->stream));
	}
out:
	if (r < 0) {
		cuda_free(be, dst);
		errno = -r;
		return NULL;
	}
	return dst;
}

/*
 * Graphs: stream capture of the ops issued between begin and end, in
 * thread-local mode (other threads' CUDA calls are not affected), then
 * instantiation. A graph remembers the attention workspace generation it
 * captured; launching it after the workspace moved is -ESTALE.
 */
struct kc_graph {
	cudaGraphExec_t exec;
	uint64_t ws_gen;
};

static int cuda_graph_begin(struct kern_backend *be)
{
	struct kern_cuda *c = kc_priv(be);
	int r = kc_enter(be);

	if (r < 0)
		return r;
	if (c->capturing)
		return -EBUSY;
	r = kc_err(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
	if (!r)
		c->capturing = 1;
	return r;
}

static int cuda_graph_end(struct kern_backend *be, void **ret_graph)
{
	struct kern_cuda *c = kc_priv(be);
	cudaGraph_t g = NULL;
	cudaGraphExec_t exec = NULL;
	struct kc_graph *kg;
	int r;

	if (!c->capturing)
		return -EINVAL;
	c->capturing = 0;
	r = kc_err(cudaStreamEndCapture(c->stream, &g));
	if (r < 0 || !ret_graph) {
		if (g)
			cudaGraphDestroy(g);
		(void)cudaGetLastError();
		return r < 0 ? r : 0;
	}
	r = kc_err(cudaGraphInstantiate(&exec, g, 0));
	cudaGraphDestroy(g);
	if (r < 0)
		return r;
	kg = malloc(sizeof(*kg));
	if (!kg) {
		cudaGraphExecDestroy(exec);
		return -ENOMEM;
	}
	kg->exec = exec;
	kg->ws_gen = c->ws_gen;
	*ret_graph = kg;
	return 0;
}

static int cuda_graph_launch(struct kern_backend *be, void *graph)
{
	struct kern_cuda *c = kc_priv(be);
	struct kc_graph *kg = graph;
	int r;

	if (!kg)
		return -EINVAL;
	if (kg->ws_gen != c->ws_gen)
		return -ESTALE;
	if ((r = kc_enter(be)) < 0)
		return r;
	return kc_err(cudaGraphLaunch(kg->exec, c->stream));
}

static void cuda_tune(struct kern_backend *be, bool on)
{
	kc_priv(be)->tuning = on;
}

static void cuda_graph_destroy(struct kern_backend *be, void *graph)
{
	struct kc_graph *kg = graph;

	if (!kg || kc_enter(be) < 0)
		return;
	cudaGraphExecDestroy(kg->exec);
	free(kg);
}

static void cuda_destroy(struct kern_backend *be)
{
	struct kern_cuda *c = kc_priv(be);

	if (c) {
		cudaSetDevice(c->device);
		if (c->stream)
			cudaStreamSynchronize(c->stream);
		kc_gemm_destroy(c);
		cudaFree(c->attn_ws);
		for (unsigned i = 0; i < KC_STAGE_SLOTS; i++) {
			if (c->stage_ev[i])
				cudaEventDestroy(c->stage_ev[i]);
			cudaFreeHost(c->stage_host[i]);
			cudaFree(c->stage_dev[i]);
		}
		cudaFreeHost(c->err_host);
		if (c->stream)
			cudaStreamDestroy(c->stream);
		(void)cudaGetLastError();
	}
	free(c);
	free(be);
}

static int cuda_mem_info(struct kern_backend *be, uint64_t *free_bytes, uint64_t *total_bytes)
{
	size_t f = 0, t = 0;
	int r = kc_enter(be);

	if (r < 0)
		return r;
	r = kc_err(cudaMemGetInfo(&f, &t));
	if (r < 0)
		return r;
	*free_bytes = f;
	*total_bytes = t;
	return 0;
}

static const struct kern_ops cuda_ops = {
	.alloc = cuda_alloc,
	.free = cuda_free,
	.upload = cuda_upload,
	.download = cuda_download,
	.copy = cuda_copy,
	.sync = cuda_sync,
	.weight_upload = cuda_weight_upload,
	.alloc_host = kc_alloc_host_op,
	.free_host = kc_free_host_op,
	.write_async = kc_write_async_op,
	.embed = kc_embed_op,
	.add_rmsnorm = kc_add_rmsnorm_op,
	.matmul = kc_matmul_op,
	.matmul_f32out = kc_matmul_f32out_op,
	.rope_kv_write = kc_rope_kv_write_op,
	.attention = kc_attention_op,
	.swiglu = kc_swiglu_op,
	.gather_rows = kc_gather_rows_op,
	.argmax = kc_argmax_op,
	.softmax_ids = kc_softmax_ids_op,
	.matmul_qkv = kc_matmul_qkv_op,
	.matmul_swiglu = kc_matmul_swiglu_op,
	.matmul_acc = kc_gemm_acc,
	/* norm_matmul_qkv, norm_matmul_swiglu: added in kern_cuda_new() unless
	 * both fusion knobs turn them off. */
	.graph_begin = cuda_graph_begin,
	.graph_end = cuda_graph_end,
	.graph_launch = cuda_graph_launch,
	.graph_destroy = cuda_graph_destroy,
	.tune = cuda_tune,
	.mem_info = cuda_mem_info,
	.destroy = cuda_destroy,
};

/* Everything that can fail after the device is known to be usable. */
static int cuda_setup(struct kern_backend *be)
{
	struct kern_cuda *c = kc_priv(be);
	void *p;
	int r;

	r = kc_err(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
	for (unsigned i = 0; !r && i < KC_STAGE_SLOTS; i++) {
		r = kc_err(cudaHostAlloc(&c->stage_host[i], KC_STAGE_BYTES, cudaHostAllocDefault));
		if (!r)
			r = kc_err(cudaMalloc(&c->stage_dev[i], KC_STAGE_BYTES));
		if (!r)
			r = kc_err(cudaEventCreateWithFlags(&c->stage_ev[i],
							    cudaEventDisableTiming));
	}
	if (r)
		return r;
	r = kc_err(cudaHostAlloc(&p, sizeof(uint32_t), cudaHostAllocMapped));
	if (r)
		return r;
	c->err_host = p;
	*c->err_host = 0;
	r = kc_err(cudaHostGetDevicePointer(&p, c->err_host, 0));
	if (r)
		return r;
	c->err_dev = p;
	r = kc_err(cudaMalloc(&c->attn_ws, KC_ATTN_WS_INIT));
	if (r)
		return r;
	r = kc_err(cudaMemset(c->attn_ws, 0, KC_ATTN_CNT_BYTES));
	if (r)
		return r;
	c->attn_ws_bytes = KC_ATTN_WS_INIT;
	r = kc_gemm_init(c);
	if (r)
		return r;
	r = kc_attention_init(c->smem_optin);
	if (r)
		return r;
	c->dec_occ[0] = kc_attn_decode_occupancy(64);
	c->dec_occ[1] = kc_attn_decode_occupancy(128);
	return 0;
}

struct kern_backend *kern_cuda_new(int device_index)
{
	struct cudaDeviceProp prop;
	struct kern_backend *be;
	struct kern_cuda *c;
	int n = 0, r;

	/* No driver, no device, or a device this build has no code for: ENODEV,
	 * so that "auto" falls back to the cpu backend. */
	if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0 || device_index < 0 ||
	    device_index >= n || cudaSetDevice(device_index) != cudaSuccess ||
	    cudaGetDeviceProperties(&prop, device_index) != cudaSuccess || prop.major < 8 ||
	    kc_probe(NULL) < 0 || cudaDeviceSynchronize() != cudaSuccess) {
		(void)cudaGetLastError();
		errno = ENODEV;
		return NULL;
	}
	be = calloc(1, sizeof(*be));
	c = calloc(1, sizeof(*c));
	if (!be || !c) {
		free(be);
		free(c);
		errno = ENOMEM;
		return NULL;
	}
	c->device = device_index;
	{
		const char *rnd = getenv("HEARTH_CUDA_ROUNDING");

		const char *occ = getenv("HEARTH_CUDA_GEMV_OCC"), *db = getenv("HEARTH_CUDA_DEC_BLOCKS");
		const char *mma = getenv("HEARTH_CUDA_ATTN_MMA"), *dm = getenv("HEARTH_CUDA_DEC_MMA");
		const char *sk = getenv("HEARTH_CUDA_SKINNY"), *lt = getenv("HEARTH_CUDA_LT_TUNE");
		const char *pe = getenv("HEARTH_CUDA_PDL_EARLY");
		const char *sm = getenv("HEARTH_CUDA_DEC_SPLIT_MIN");
		const char *lp = getenv("HEARTH_CUDA_LT_PAIR");
		const char *nf = getenv("HEARTH_CUDA_NORM_FUSE");
		const char *rf = getenv("HEARTH_CUDA_ROPE_FUSE");
		const char *mt = getenv("HEARTH_CUDA_ATTN_MMA_MT");
		const char *wg = getenv("HEARTH_CUDA_ATTN_WG");
		const char *ws = getenv("HEARTH_CUDA_ATTN_WS");
		const char *sw = getenv("HEARTH_CUDA_SWIGLU_WG");
		const char *ll = getenv("HEARTH_CUDA_LT_LOG");
		const char *po = getenv("HEARTH_CUDA_PLAN_ONCE");
		const char *sc = getenv("HEARTH_CUDA_SWIGLU_WG_CL");

		c->hf_round = rnd && !strcmp(rnd, "transformers");
		c->gemv_occ = occ && atoi(occ) >= 1 && atoi(occ) <= 8 ? atoi(occ) : 1;
		c->dec_blocks = db && atoi(db) >= 1 && atoi(db) <= 64 ? atoi(db) : 0;
		c->dec_mma = !(dm && !strcmp(dm, "0"));
		c->mma_blocks = mma && atoi(mma) >= 0 && atoi(mma) <= 64 ? atoi(mma) : 4;
		c->mma_mt = !mt ? 0
			    : !strcmp(mt, "1") ? 1
			    : !strcmp(mt, "2") ? 2
			    : !strcmp(mt, "wg") ? KC_MMA_WG
			    : !strcmp(mt, "ws") ? KC_MMA_WS
						: 0;
		c->attn_wg = !(wg && !strcmp(wg, "0"));
		c->attn_wspec = !ws ? -1 : !strcmp(ws, "1") ? 1 : !strcmp(ws, "0") ? 0 : -1;
		c->skinny_off = sk && !strcmp(sk, "0");
		c->lt_tune = !(lt && !strcmp(lt, "0"));
		c->lt_log = ll && !strcmp(ll, "1");
		c->plan_once = po && !strcmp(po, "1");
		c->swiglu_wg_cl = sc && !strcmp(sc, "2") ? 2 : 1;
		c->swiglu_wg = sw && atoi(sw) > 0 ? (uint32_t)atoi(sw) : 0;
		c->lt_pair = !(lp && !strcmp(lp, "0"));
		c->norm_fuse = !(nf && !strcmp(nf, "0"));
		c->rope_fuse = !(rf && !strcmp(rf, "0"));
		c->pdl_early = pe ? atoi(pe) & 3 : 1;
		c->dec_split_min = sm && atoi(sm) >= 16 && atoi(sm) <= 4096 ? (uint32_t)atoi(sm) : 128;
	}
	c->n_sms = prop.multiProcessorCount;
	c->smem_optin = prop.sharedMemPerBlockOptin;
	/* The fused forms change the forward pass (the residual moves between two
	 * buffers): offered unless both knobs turn them off. */
	c->ops = cuda_ops;
	if (c->norm_fuse || c->rope_fuse) {
		c->ops.norm_matmul_qkv = kc_norm_matmul_qkv_op;
		c->ops.norm_matmul_swiglu = kc_norm_matmul_swiglu_op;
	}
	be->ops = &c->ops;
	be->name = "cuda";
	be->act_bytes = 2;
	be->act_dtype = KERN_BF16;
	/* HEARTH_CUDA_GEMM_ACC=N: the o and down projections of steps of N
	 * tokens or more add into the residual (cuBLASLt, beta = 1; meant for N
	 * past the skinny kernel's 64 rows, where cuBLASLt runs them anyway).
	 * Off: right on an H100 but no faster (docs/gpu.md, 2026-12-07). */
	{
		const char *ga = getenv("HEARTH_CUDA_GEMM_ACC");

		be->acc_min_rows = ga && atoi(ga) > 0 ? (uint32_t)atoi(ga) : 0;
	}
	be->priv = c;
	snprintf(be->device_name, sizeof(be->device_name), "%.80s (sm_%d%d, %zu MiB, %d SMs)",
		 prop.name, prop.major, prop.minor, prop.totalGlobalMem >> 20,
		 prop.multiProcessorCount);
	r = cuda_setup(be);
	if (r < 0) {
		cuda_destroy(be);
		errno = -r;
		return NULL;
	}
	return be;
}

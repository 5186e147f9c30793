/* SPDX-License-Identifier: MIT */
/*
 * The kernels interface: one table of the operations the forward pass uses,
 * implemented by each compute backend (cpu: the fp32 reference; cuda: bf16 with
 * fp32 accumulation). kernels/ knows nothing of sessions, sockets or files.
 *
 * Memory: every pointer passed to an operation is backend memory (host memory
 * for cpu, device memory for cuda) obtained from ops->alloc, unless the
 * parameter says "host". Activations and KV pages are stored in the backend's
 * activation type (be->act_bytes bytes per element: 4 = fp32 on cpu, 2 = bf16
 * on cuda); logits and probabilities are always fp32; ids are int32.
 *
 * Errors: operations return 0 or a negative errno (-EINVAL for bad shapes,
 * -ENOMEM, -EIO for a failed launch). They never print and never exit.
 * Ordering: operations on one backend run in issue order (one stream); results
 * are visible to the host after ops->download or ops->sync.
 * Thread-safety: one backend instance is used by one thread at a time.
 */
#ifndef KERN_H
#define KERN_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

enum kern_dtype {
	KERN_F32 = 0,
	KERN_BF16 = 1,
	KERN_F16 = 2,
};

/* Bytes per element of a dtype; 0 for an unknown one. */
size_t kern_dtype_size(enum kern_dtype dt);
const char *kern_dtype_name(enum kern_dtype dt);

/*
 * Paged KV geometry and storage. A page holds page_tokens tokens of every
 * layer, laid out [layer][K|V][kv_head][token][head_dim]; page p starts at
 * base + p * page_elems() elements. The pool that hands pages out lives in
 * kv_store/; kernels only read and write the pages.
 */
struct kern_kv {
	void *base;
	uint32_t n_pages;
	uint32_t page_tokens;
	uint32_t n_layers;
	uint32_t n_kv_heads;
	uint32_t head_dim;
};

static inline size_t kern_kv_page_elems(const struct kern_kv *kv)
{
	return (size_t)kv->n_layers * 2 * kv->n_kv_heads * kv->page_tokens * kv->head_dim;
}

/* Element offset of (page, layer, k_or_v, head, token-in-page) inside the pool. */
static inline size_t kern_kv_offset(const struct kern_kv *kv, uint32_t page, uint32_t layer,
				    uint32_t k_or_v, uint32_t head, uint32_t tok)
{
	return (size_t)page * kern_kv_page_elems(kv) +
	       ((((size_t)layer * 2 + k_or_v) * kv->n_kv_heads + head) * kv->page_tokens + tok) *
		       kv->head_dim;
}

/*
 * Row counts of captured steps: a step of at most KERN_GRAPH_MAX_TOKENS
 * tokens is padded up to kern_step_bucket(tokens), powers of two up to 128,
 * then multiples of 32 (so a mixed step of 144 tokens pads to 160, not 256).
 * Backends may prepare work for these row counts (cuda tunes its GEMMs for
 * them and for no others: ops->tune).
 */
#define KERN_GRAPH_MAX_TOKENS 512u
static inline uint32_t kern_step_bucket(uint32_t n)
{
	uint32_t b = 1;

	if (n > 128)
		return (n + 31) & ~31u;
	while (b < n)
		b <<= 1;
	return b;
}

/*
 * One step's tokens, from one or more sequences, flattened: sequence s owns
 * tokens [seq_start[s], seq_start[s+1]). All arrays are backend memory (the
 * caller uploads them once per step). Token i sits at absolute position pos[i]
 * of its sequence and its K/V go to KV slot slot[i] = page * page_tokens +
 * offset-in-page. After the step, sequence s holds ctx_len[s] tokens, whose
 * pages are block_table[s * max_blocks + j] for j < ceil(ctx_len[s]/page_tokens).
 * Attention is causal: token i attends to positions 0 .. pos[i] of its sequence.
 * slot[i] == KERN_SLOT_PAD marks a padding token (a batch padded up to the
 * shape of a captured graph): rope_kv_write leaves its q, k and every page
 * untouched, and no error is raised for it; attention still computes its row
 * (from positions 0 .. pos[i] of its own sequence), which the caller ignores.
 */
#define KERN_SLOT_PAD INT32_MIN /* any other negative slot is an error */

/*
 * The RMSNorm in front of a fused matmul (norm_matmul_qkv, norm_matmul_swiglu):
 * resid = resid_in + add (add NULL: a copy of resid_in), then the matmul's
 * input is rmsnorm(resid) * weight with eps. resid must not overlap
 * resid_in: the fused kernel's blocks all read resid_in while one writes
 * resid. h ([n, dim]) is scratch the backend may use (undefined after).
 */
struct kern_norm {
	void *resid;
	const void *resid_in, *add, *weight;
	void *h;
	float eps;
};
/* rope_kv_write's arguments, for a q/k/v matmul that ends with it
 * (norm_matmul_qkv). */
struct kern_rope {
	const struct kern_batch *batch;
	const struct kern_kv *kv;
	uint32_t layer, n_heads;
	const float *inv_freq;
};
struct kern_batch {
	uint32_t n_tokens;
	uint32_t n_seqs;
	uint32_t max_blocks;
	uint32_t max_ctx;         /* max over s of ctx_len[s]; a host-side hint for launch sizing */
	const int32_t *pos;       /* [n_tokens] */
	const int32_t *slot;      /* [n_tokens] */
	const int32_t *seq_start; /* [n_seqs + 1] */
	const int32_t *ctx_len;   /* [n_seqs] */
	const int32_t *block_table; /* [n_seqs * max_blocks] */
};

struct kern_backend;

struct kern_ops {
	/* Memory. alloc returns NULL with errno set; free accepts NULL. */
	void *(*alloc)(struct kern_backend *be, size_t bytes);
	void (*free)(struct kern_backend *be, void *p);
	/* Copies: host -> backend, backend -> host (synchronous: src/dst usable
	 * on return), backend -> backend. */
	int (*upload)(struct kern_backend *be, void *dst, const void *host_src, size_t bytes);
	int (*download)(struct kern_backend *be, void *host_dst, const void *src, size_t bytes);
	int (*copy)(struct kern_backend *be, void *dst, const void *src, size_t bytes);
	/* Wait until all issued work is done. */
	int (*sync)(struct kern_backend *be);

	/*
	 * Weights: convert n host elements of dtype `dt` into the backend's weight
	 * type and store them in backend memory (allocated by the call; release
	 * with ops->free). Returns NULL with errno set on failure.
	 */
	void *(*weight_upload)(struct kern_backend *be, const void *host_src, enum kern_dtype dt,
			       size_t n);

	/*
	 * Optional streaming of host data into backend memory, for backends
	 * whose memory is not host memory (NULL: not available; the cpu backend
	 * leaves them NULL because it uses the bytes in place). model_load reads
	 * weight files into alloc_host buffers and copies them with write_async
	 * while the next read is in flight.
	 * alloc_host: page-aligned host memory the backend copies from without
	 * staging (pinned on cuda); NULL with errno set. free_host accepts NULL.
	 * write_async: copy bytes from host_src (inside an alloc_host buffer) to
	 * backend memory dst as is; returns 0 or -errno and may return before the
	 * copy is done: host_src must stay unchanged until the next ops->sync.
	 * A weight is backend memory (as from alloc) holding act_dtype elements,
	 * so a file tensor already in act_dtype may be written with write_async
	 * into alloc'd memory instead of going through weight_upload.
	 */
	void *(*alloc_host)(struct kern_backend *be, size_t bytes);
	void (*free_host)(struct kern_backend *be, void *p);
	int (*write_async)(struct kern_backend *be, void *dst, const void *host_src, size_t bytes);

	/* out[i, :] = table[ids[i], :] for i < n. ids are checked: -EINVAL on an id
	 * outside [0, vocab) with nothing written past the check (cpu) or a device
	 * side clamp plus error flag (cuda). */
	int (*embed)(struct kern_backend *be, void *out, const void *table, const int32_t *ids,
		     uint32_t n, uint32_t dim, uint32_t vocab);

	/*
	 * Fused residual add and RMSNorm over n rows of dim:
	 *   if add != NULL: resid[i] += add[i]
	 *   out[i] = resid[i] / sqrt(mean(resid[i]^2) + eps) * weight
	 * out may not alias resid.
	 */
	int (*add_rmsnorm)(struct kern_backend *be, void *out, void *resid, const void *add,
			   const void *weight, uint32_t n, uint32_t dim, float eps);

	/* out[n, m] = in[n, k] @ W[m, k]^T (+ bias[m] if bias != NULL). W is a
	 * weight from weight_upload; bias too. W and bias must not be written by
	 * the operation issued just before (cuda starts loading them before that
	 * one ends); in may be. */
	int (*matmul)(struct kern_backend *be, void *out, const void *in, const void *w,
		      const void *bias, uint32_t n, uint32_t k, uint32_t m);

	/* Like matmul, but out is fp32 logits [n, m] (the LM head). */
	int (*matmul_f32out)(struct kern_backend *be, float *out, const void *in, const void *w,
			     uint32_t n, uint32_t k, uint32_t m);

	/*
	 * Rotary embedding (Hugging Face "rotate half" convention: dimension d pairs
	 * with d + head_dim/2) at positions batch->pos, applied in place to q
	 * [n_tokens, n_heads * head_dim] and to k [n_tokens, n_kv_heads * head_dim];
	 * then the rotated k and the unchanged v of each token are written into
	 * the KV pages of `layer` at batch->slot. inv_freq[head_dim/2] is backend
	 * memory prepared by the caller (scaling such as llama3 is folded into it).
	 */
	int (*rope_kv_write)(struct kern_backend *be, void *q, void *k, const void *v,
			     const struct kern_batch *batch, const struct kern_kv *kv,
			     uint32_t layer, uint32_t n_heads, const float *inv_freq);

	/*
	 * Paged causal attention of the step's tokens against their sequences' KV
	 * (which already contains this step's K/V, written by rope_kv_write):
	 * out[i, h*hd:(h+1)*hd] = softmax(q_i,h . K^T * scale) V over positions
	 * 0..pos[i], using kv head h / (n_heads / n_kv_heads) (GQA).
	 */
	int (*attention)(struct kern_backend *be, void *out, const void *q,
			 const struct kern_batch *batch, const struct kern_kv *kv, uint32_t layer,
			 uint32_t n_heads, float scale);

	/* out[i, j] = silu(gate[i, j]) * up[i, j] over n rows of dim. */
	int (*swiglu)(struct kern_backend *be, void *out, const void *gate, const void *up,
		      uint32_t n, uint32_t dim);

	/* out[i, :] = in[rows[i], :] for i < n (rows: backend int32). */
	int (*gather_rows)(struct kern_backend *be, void *out, const void *in, const int32_t *rows,
			   uint32_t n, uint32_t dim);

	/* out[i] = argmax_j logits[i, j] (lowest index on ties) for n rows of vocab. */
	int (*argmax)(struct kern_backend *be, int32_t *out, const float *logits, uint32_t n,
		      uint32_t vocab);

	/*
	 * Softmax restricted to a set of token ids: for each row i,
	 * out[i, j] = exp(logits[i, ids[j]]) / sum_l exp(logits[i, ids[l]]).
	 * ids must be in [0, vocab) (the caller validates them).
	 */
	int (*softmax_ids)(struct kern_backend *be, float *out, const float *logits,
			   const int32_t *ids, uint32_t n, uint32_t n_ids, uint32_t vocab);

	/*
	 * Optional operations: NULL where a backend lacks them (cpu); the forward
	 * pass then uses the plain operations above.
	 *
	 * matmul_qkv: q[n, mq] = in @ Wq^T (+bq), k[n, mkv] = in @ Wk^T (+bk),
	 * v[n, mkv] = in @ Wv^T (+bv) in one call (one pass over in; at few rows
	 * one launch). Biases may be NULL.
	 */
	int (*matmul_qkv)(struct kern_backend *be, void *q, void *k, void *v, const void *in,
			  const void *wq, const void *wk, const void *wv, const void *bq,
			  const void *bk, const void *bv, uint32_t n, uint32_t kdim, uint32_t mq,
			  uint32_t mkv);
	/*
	 * matmul_acc: out[n, m] += in[n, k] @ W[m, k]^T (no bias). The forward
	 * pass adds the o and down projections to the residual with it, in steps
	 * of at least be->acc_min_rows tokens, so that the norm after each reads
	 * the residual instead of adding another [n, dim] pass to it.
	 */
	int (*matmul_acc)(struct kern_backend *be, void *out, const void *in, const void *w,
			  uint32_t n, uint32_t k, uint32_t m);
	/*
	 * matmul_swiglu: out[n, m] = silu(in @ Wg^T) * (in @ Wu^T). gate and up
	 * ([n, m] each) are scratch the backend may use (contents undefined after).
	 */
	int (*matmul_swiglu)(struct kern_backend *be, void *out, void *gate, void *up,
			     const void *in, const void *w_gate, const void *w_up, uint32_t n,
			     uint32_t k, uint32_t m);
	/*
	 * matmul_qkv and matmul_swiglu of the rows that nm normalises (struct
	 * kern_norm), the residual add and norm included: at few rows one
	 * launch instead of two. Present only where matmul_qkv and
	 * matmul_swiglu are. norm_matmul_qkv with rope (may be NULL) also does
	 * rope_kv_write(q, k, v, rope->...) (at few rows in the same launch).
	 */
	int (*norm_matmul_qkv)(struct kern_backend *be, const struct kern_norm *nm,
			       const struct kern_rope *rope, void *q, void *k, void *v,
			       const void *wq, const void *wk, const void *wv, const void *bq,
			       const void *bk, const void *bv, uint32_t n, uint32_t kdim,
			       uint32_t mq, uint32_t mkv);
	int (*norm_matmul_swiglu)(struct kern_backend *be, const struct kern_norm *nm, void *out,
				  void *gate, void *up, const void *w_gate, const void *w_up,
				  uint32_t n, uint32_t k, uint32_t m);

	/*
	 * Optional graph capture (NULL on cpu). Between graph_begin and graph_end
	 * the operations issued (compute operations only: no upload, download,
	 * copy, sync, alloc or free) are recorded instead of run; graph_end
	 * returns the replayable graph in *ret_graph, or, with ret_graph NULL,
	 * abandons the capture (after an operation failed during it). A graph
	 * replays the recorded launches with the pointers and shapes they had:
	 * the caller keeps every buffer it captured alive and at the same address
	 * and changes only their contents between replays.
	 * graph_launch returns -ESTALE when backend-internal memory the graph
	 * captured has moved since (the caller destroys it and captures again).
	 * graph_destroy accepts NULL.
	 */
	int (*graph_begin)(struct kern_backend *be);
	int (*graph_end)(struct kern_backend *be, void **ret_graph);
	int (*graph_launch)(struct kern_backend *be, void *graph);
	void (*graph_destroy)(struct kern_backend *be, void *graph);
	/*
	 * Optional (NULL: nothing to tune): while on, operations on shapes of
	 * graph steps (kern_step_bucket() rows) not met before are tuned, which
	 * may synchronise and take milliseconds each; off (the default), they
	 * keep what they have. Turned on only to prepare, before serving.
	 */
	void (*tune)(struct kern_backend *be, bool on);

	/* Optional: free and total bytes of the memory this backend allocates
	 * from (the GPU's for cuda, the host's for cpu). NULL: unknown. */
	int (*mem_info)(struct kern_backend *be, uint64_t *free_bytes, uint64_t *total_bytes);

	void (*destroy)(struct kern_backend *be);
};

struct kern_backend {
	const struct kern_ops *ops;
	const char *name;          /* "cpu", "cuda" */
	uint32_t act_bytes;        /* bytes per activation / KV element */
	enum kern_dtype act_dtype; /* KERN_F32 on cpu, KERN_BF16 on cuda */
	uint32_t acc_min_rows;     /* steps that take ops->matmul_acc (0: none) */
	char device_name[128];
	void *priv;
};

/*
 * The cpu backend's thread pools spin when idle unless told otherwise:
 * OpenMP's threads after every parallel region (OMP_WAIT_POLICY), OpenBLAS's
 * in sched_yield for 2^OPENBLAS_THREAD_TIMEOUT cycles after every threaded
 * GEMM (default 2^28, longer than a step), taking the cores from a daemon's
 * reactors and its clients. Both libraries read their variable once, when
 * loaded (before main). Called first thing in main, with main's argv: when
 * either variable is unset, sets it (passive; 4) and re-executes the
 * program, which then runs on; a value set by the caller is kept. Returns
 * only when nothing was to be set or the re-exec failed (no /proc).
 */
void kern_cpu_quiet_pools(char **argv);

/* Backends. Each returns NULL with errno set (ENODEV: backend or device not
 * available in this build or on this machine). n_threads 0 = all cores. */
struct kern_backend *kern_cpu_new(int n_threads);
struct kern_backend *kern_cuda_new(int device_index);
/* "cpu", "cuda" or "auto" (cuda when a device is usable, else cpu). */
struct kern_backend *kern_backend_new(const char *name, int device_index, int n_threads);
/* Accepts NULL. */
void kern_backend_free(struct kern_backend *be);

/* Host-side dtype conversion helpers (round-to-nearest-even for bf16). */
float kern_bf16_to_f32(uint16_t h);
uint16_t kern_f32_to_bf16(float f);
float kern_f16_to_f32(uint16_t h);
/* Convert n elements of dtype `dt` at src to fp32 at dst. */
void kern_to_f32(float *dst, const void *src, enum kern_dtype dt, size_t n);

#endif

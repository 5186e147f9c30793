/* SPDX-License-Identifier: MIT */
/*
 * Private state of the cuda backend and the launchers of its kernels.
 * cuda_backend.c owns construction, memory, copies and the ops table;
 * cuda_ops.c checks arguments and calls the launchers; cuda_gemm.c drives
 * cuBLASLt and the GEMV fast path. The .cu files hold the kernels and their extern "C" launchers,
 * which take a cudaStream_t and return 0 or a negative errno (-EIO for a
 * failed launch). This header is C and C++ clean; nothing outside
 * kernels/cuda and tests/gpu includes it.
 */
#ifndef KERN_CUDA_INTERNAL_H
#define KERN_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "kern.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Pinned staging for upload, download and weight conversion: slots used
 * round-robin, each reusable once its event has completed. 8 x 2 MiB keeps
 * several copies in flight while weights stream in. */
#define KC_STAGE_SLOTS 8
#define KC_STAGE_BYTES ((size_t)2 << 20)

/* Bits of the device error word. Kernels that find bad indices in device
 * data (which the host cannot check without a synchronisation) clamp or skip
 * and set a bit; the next sync or download reports -EINVAL and clears it. */
#define KC_ERR_EMBED_ID (1u << 0)  /* embed: id outside [0, vocab) */
#define KC_ERR_ROW (1u << 1)       /* gather_rows: negative row */
#define KC_ERR_IDS (1u << 2)       /* softmax_ids: id outside [0, vocab) */
#define KC_ERR_SLOT (1u << 3)      /* rope_kv_write: bad slot or position */
#define KC_ERR_BATCH (1u << 4)     /* attention: bad seq_start, ctx_len or pos */
#define KC_ERR_PAGE (1u << 5)      /* attention: page outside the pool */

/* Attention kernel choice; tests force one, the backend picks by shape. */
enum kc_attn_path {
	KC_ATTN_AUTO = 0,
	KC_ATTN_SMALL = 1, /* 128 threads, up to 16 query rows per block: decode */
	KC_ATTN_LARGE = 2, /* 256 threads, up to 64 query rows per block: prefill */
	KC_ATTN_DECODE = 3, /* one block per (split, kv head, sequence): decode */
	KC_ATTN_MMA = 4,   /* tensor cores, 64 rows per block: chunks (head_dim 64, 128) */
	KC_ATTN_DECODE_MMA = 5, /* decode on tensor cores (head_dim 64, 128) */
};

/* The attention workspace starts with the split counters of the decode
 * kernel (zero between launches), then the tile plan, then split partials. */
#define KC_ATTN_CNT_BYTES ((size_t)64 << 10)

struct kc_gemm_cache;

struct kern_cuda {
	int device;
	int n_sms;
	size_t smem_optin;          /* max dynamic shared memory per block */
	cudaStream_t stream;

	void *stage_host[KC_STAGE_SLOTS]; /* pinned */
	void *stage_dev[KC_STAGE_SLOTS];  /* raw source of a conversion */
	cudaEvent_t stage_ev[KC_STAGE_SLOTS];
	unsigned stage_next;

	uint32_t *err_host;         /* mapped pinned word, see KC_ERR_* */
	uint32_t *err_dev;          /* its device address */

	void *lt;                   /* cublasLtHandle_t */
	void *lt_ws;
	size_t lt_ws_bytes;
	struct kc_gemm_cache *gemm;

	void *attn_ws;              /* split partials and the tile plan */
	size_t attn_ws_bytes;
	enum kc_attn_path attn_path; /* KC_ATTN_AUTO unless a test forces one */
	uint32_t attn_splits;        /* 0 = by shape; tests force a count */
	int gemv_off;                /* tests: every matmul through cuBLASLt */
	int skinny_off;              /* HEARTH_CUDA_SKINNY=0: no skinny GEMM */
	int lt_tune;                 /* time cuBLASLt's candidates (HEARTH_CUDA_LT_TUNE=0: off) */
	int lt_log;                  /* print each tuned shape (HEARTH_CUDA_LT_LOG=1) */
	uint32_t swiglu_wg;          /* gate/up + SwiGLU on wgmma from this many rows (0: off) */
	int swiglu_wg_cl;            /* its CTAs a cluster, 1 or 2 (HEARTH_CUDA_SWIGLU_WG_CL) */
	int tuning;                  /* ops->tune: on while the model prepares, before serving */
	void *skinny_ws;             /* its split-k counters and partials */
	size_t skinny_ws_bytes;
	int fused_off;               /* tests: matmul_qkv / matmul_swiglu unfused */
	int lt_pair;                 /* k/v and gate/up in one cuBLASLt launch (HEARTH_CUDA_LT_PAIR=0: off) */
	uint64_t n_pairs;            /* kc_gemm_pair launches (tests) */
	struct kern_ops ops;          /* the backend's table (be->ops): cuda_ops, plus the fused ops when on */
	int norm_fuse;               /* the RMSNorm in the decode GEMV (HEARTH_CUDA_NORM_FUSE=0: off) */
	uint64_t n_norm_fused;       /* GEMV launches with the norm in front (tests) */
	int rope_fuse;               /* rope_kv_write in the q/k/v GEMV (HEARTH_CUDA_ROPE_FUSE=0: off) */
	uint64_t n_rope_fused;       /* GEMV launches with rope_kv_write after (tests) */

	/*
	 * Round where transformers' bf16 Llama/Qwen2 modules round (environment
	 * HEARTH_CUDA_ROUNDING=transformers at creation): RMSNorm's normalised
	 * value before the weight, cos/sin and each rope product, silu(gate)
	 * before the product with up, the logits. Off: one rounding per stored
	 * result (closer to fp32 arithmetic).
	 */
	int hf_round;
	/* Tuning, from the environment at creation (for measurements):
	 * HEARTH_CUDA_GEMV_OCC: multiplies the GEMV's persistent grid (default
	 * 1; the grid is capped at the 2 blocks of 16 warps an SM that fit, so
	 * larger values change nothing today); HEARTH_CUDA_DEC_BLOCKS: decode
	 * attention blocks aimed at per SM (default 0: as many as fit);
	 * HEARTH_CUDA_DEC_MMA=0: decode attention on CUDA cores (the kernel
	 * before the tensor-core one); HEARTH_CUDA_ATTN_MMA: tensor-core attention
	 * blocks aimed at per SM when it splits the KV length (default 4), 0
	 * for the tile kernels instead (before/after figures). */
	int gemv_occ;
	int dec_blocks;
	int dec_mma;
	uint32_t dec_occ[2];         /* kc_attn_decode_occupancy at head_dim 64, 128 */
	int mma_blocks;
	/* HEARTH_CUDA_ATTN_MMA_MT: the multi-token tensor-core attention's
	 * blocks, 1 (mma.sync, 64 rows), 2 (mma.sync, 128 rows) or wg (wgmma,
	 * 128 rows: KC_MMA_WG); default 0: by step (attention_mma).
	 * HEARTH_CUDA_ATTN_WG=0: the step's choice never takes wgmma;
	 * attn_wspec (HEARTH_CUDA_ATTN_WS): where it would take wg at
	 * head_dim 128, it takes the warp-specialised kernel (KC_MMA_WS, ws)
	 * when that loads K/V by TMA (default, -1), always (1) or never (0). */
	uint32_t mma_mt;
	int attn_wg;
	int attn_wspec;
	/* HEARTH_CUDA_PDL_EARLY (bits, default 1): 1 rope_kv_write launched as a
	 * programmatic dependent of the q/k/v matmul (1B decode 1% faster, 8B
	 * the same); 2 decode attention lets the o projection launch at its
	 * start (1B 1.5% faster, 8B 1.5% slower; letting it launch before the
	 * split merge instead: 8B 12% slower). */
	int pdl_early;
	uint32_t dec_split_min;      /* HEARTH_CUDA_DEC_SPLIT_MIN (default 128) */
	int capturing;              /* a graph capture is under way on stream */
	uint64_t ws_gen;            /* bumped whenever attn_ws moves */
	/*
	 * HEARTH_CUDA_PLAN_ONCE=1: the tiled attention's plan (the tiles of each
	 * sequence, a one-block launch before every multi-token attention) is
	 * the same at every layer of a step. With the knob it runs at a step's
	 * first layer only: a call for layer l + 1 right after one for layer l,
	 * on the same batch, rows per tile and workspace, reuses the tiles l's
	 * call left in attn_ws (plan_last says what they are). Anything else
	 * that writes that part of attn_ws (decode attention, the tile kernels)
	 * clears plan_last.valid. Off until measured on a GPU (docs/gpu.md).
	 */
	int plan_once;
	struct kc_plan_key {
		const void *ws, *seq_start, *ctx_len;
		uint64_t ws_gen;
		uint32_t n_seqs, n_tokens, max_blocks, page_tokens, rows_per_token, rows_per_tile;
		uint32_t layer;
		int valid;
	} plan_last;
	uint64_t n_plans_reused;     /* tests */
};

static inline struct kern_cuda *kc_priv(struct kern_backend *be)
{
	return (struct kern_cuda *)be->priv;
}

/* Map a CUDA error to a negative errno: allocation failures are -ENOMEM,
 * everything else -EIO. Clears the (non-sticky) last error. */
int kc_err(cudaError_t e);
/* Make be's device current on this thread (cheap when it already is). */
int kc_enter(struct kern_backend *be);
/* cudaMemcpyAsync on be's stream, after the checks every copy op makes
 * (nothing to do for 0 bytes, -EINVAL for a NULL pointer). */
int kc_copy_async(struct kern_backend *be, void *dst, const void *src, size_t bytes,
		  enum cudaMemcpyKind kind);
/* Grow the attention workspace to at least `bytes`. */
int kc_attn_ws_reserve(struct kern_backend *be, size_t bytes);

/* cuda_gemm.c */
int kc_gemm_init(struct kern_cuda *c);
void kc_gemm_destroy(struct kern_cuda *c);
int kc_gemm(struct kern_backend *be, void *out, int out_f32, const void *in, const void *w,
	    const void *bias, uint32_t n, uint32_t k, uint32_t m);
/* out[n, m] += in @ W^T, bf16, through cuBLASLt (beta = 1, C = D = out). */
int kc_gemm_acc(struct kern_backend *be, void *out, const void *in, const void *w, uint32_t n,
		uint32_t k, uint32_t m);
/* out0 = in @ W0^T (+ b0) and out1 = in @ W1^T (+ b1), bf16 out, in one
 * cuBLASLt launch; -ENOTSUP where the buffers' placement does not allow it
 * (or HEARTH_CUDA_LT_PAIR=0): the caller makes two kc_gemm calls. */
int kc_gemm_pair(struct kern_backend *be, void *out0, void *out1, const void *in, const void *w0,
		 const void *w1, const void *b0, const void *b1, uint32_t n, uint32_t k,
		 uint32_t m);

/* cuda_ops.c: the operations of the ops table. */
int kc_embed_op(struct kern_backend *be, void *out, const void *table, const int32_t *ids,
		uint32_t n, uint32_t dim, uint32_t vocab);
int kc_add_rmsnorm_op(struct kern_backend *be, void *out, void *resid, const void *add,
		      const void *weight, uint32_t n, uint32_t dim, float eps);
int kc_matmul_op(struct kern_backend *be, void *out, const void *in, const void *w,
		 const void *bias, uint32_t n, uint32_t k, uint32_t m);
int kc_matmul_f32out_op(struct kern_backend *be, float *out, const void *in, const void *w,
			uint32_t n, uint32_t k, uint32_t m);
int kc_rope_kv_write_op(struct kern_backend *be, void *q, void *k, const void *v,
			const struct kern_batch *batch, const struct kern_kv *kv, uint32_t layer,
			uint32_t n_heads, const float *inv_freq);
int kc_attention_op(struct kern_backend *be, void *out, const void *q,
		    const struct kern_batch *batch, const struct kern_kv *kv, uint32_t layer,
		    uint32_t n_heads, float scale);
int kc_swiglu_op(struct kern_backend *be, void *out, const void *gate, const void *up,
		 uint32_t n, uint32_t dim);
int kc_gather_rows_op(struct kern_backend *be, void *out, const void *in, const int32_t *rows,
		      uint32_t n, uint32_t dim);
int kc_argmax_op(struct kern_backend *be, int32_t *out, const float *logits, uint32_t n,
		 uint32_t vocab);
int kc_softmax_ids_op(struct kern_backend *be, float *out, const float *logits,
		      const int32_t *ids, uint32_t n, uint32_t n_ids, uint32_t vocab);
int kc_matmul_qkv_op(struct kern_backend *be, void *q, void *k, void *v, const void *in,
		     const void *wq, const void *wk, const void *wv, const void *bq,
		     const void *bk, const void *bv, uint32_t n, uint32_t kdim, uint32_t mq,
		     uint32_t mkv);
int kc_matmul_swiglu_op(struct kern_backend *be, void *out, void *gate, void *up,
			const void *in, const void *w_gate, const void *w_up, uint32_t n,
			uint32_t k, uint32_t m);
int kc_norm_matmul_qkv_op(struct kern_backend *be, const struct kern_norm *nm,
			  const struct kern_rope *rope, void *q, void *k, void *v, const void *wq,
			  const void *wk, const void *wv, const void *bq, const void *bk,
			  const void *bv, uint32_t n, uint32_t kdim, uint32_t mq, uint32_t mkv);
int kc_norm_matmul_swiglu_op(struct kern_backend *be, const struct kern_norm *nm, void *out,
			     void *gate, void *up, const void *w_gate, const void *w_up, uint32_t n,
			     uint32_t k, uint32_t m);

/* ------------------------------------------------------------ launchers */

/* kc_rowops.cu. Shapes are checked by the caller; n, dim > 0. */
int kc_probe(cudaStream_t st);
int kc_convert_bf16(void *dst, const void *src, enum kern_dtype dt, size_t n, cudaStream_t st);
int kc_embed(void *out, const void *table, const int32_t *ids, uint32_t n, uint32_t dim,
	     uint32_t vocab, uint32_t *err, cudaStream_t st);
/* resid = resid_in + add (add may be NULL; resid may be resid_in), then
 * out = rmsnorm(resid) * weight. hf: round where transformers' bf16 modules
 * do (see kern_cuda.hf_round). */
int kc_add_rmsnorm(void *out, void *resid, const void *resid_in, const void *add,
		   const void *weight, uint32_t n, uint32_t dim, float eps, int hf,
		   cudaStream_t st);
int kc_swiglu(void *out, const void *gate, const void *up, size_t n_elems, int hf,
	      cudaStream_t st);
/* x[i] = bf16(x[i]) in place, fp32 storage (logits as transformers returns them). */
int kc_round_bf16_f32(float *x, size_t n, cudaStream_t st);
int kc_gather_rows(void *out, const void *in, const int32_t *rows, uint32_t n, uint32_t dim,
		   uint32_t *err, cudaStream_t st);
int kc_argmax(int32_t *out, const float *logits, uint32_t n, uint32_t vocab, cudaStream_t st);
int kc_softmax_ids(float *out, const float *logits, const int32_t *ids, uint32_t n,
		   uint32_t n_ids, uint32_t vocab, uint32_t *err, cudaStream_t st);
/* Reference GEMM for shapes cuBLASLt declines: out[n, m] = in @ W^T + bias
 * (acc: out += that). */
int kc_gemm_simple(void *out, int out_f32, const void *in, const void *w, const void *bias,
		   uint32_t n, uint32_t k, uint32_t m, int acc, cudaStream_t st);

/* cuda_gemv.cu: matmul for n <= KC_GEMV_MAX_N rows (decode); -EINVAL when
 * the shape or alignment does not suit it (k % 8, 16-byte in and w). */
#define KC_GEMV_MAX_N 4 /* at most; kc_gemv_suits() picks by shape below that */
int kc_gemv(void *out, int out_f32, const void *in, const void *w, const void *bias, uint32_t n,
	    uint32_t k, uint32_t m, int n_sms, cudaStream_t st);
/* Up to three matmuls of the same input in one launch (bf16 out): segment i
 * is out[i][n, m[i]] = in @ w[i]^T (+ bias[i]); unused segments have m 0. */
struct kc_gemv_seg {
	void *out;
	const void *w, *bias;
	uint32_t m;
};
int kc_gemv_multi(const struct kc_gemv_seg seg[3], const void *in, uint32_t n, uint32_t k,
		  int n_sms, cudaStream_t st);
/* out[n, m] = silu(in @ Wg^T) * (in @ Wu^T) in one launch. */
int kc_gemv_swiglu(void *out, const void *in, const void *w_gate, const void *w_up, uint32_t n,
		   uint32_t k, uint32_t m, int n_sms, int hf, cudaStream_t st);
/* Whether the GEMV's NORM prologue takes nm at n rows of k: every block
 * normalises the n input rows (struct kern_norm, nm->h unused) into its
 * shared memory and block 0 stores the residual, so n x k bf16 must fit 96
 * KB and the buffers be aligned and apart. Where not, the caller runs
 * kc_add_rmsnorm and the plain GEMV. */
int kc_gemv_norm_fits(const struct kern_norm *nm, uint32_t n, uint32_t k);
/* q/k/v stacked (seg: q, k, v) from in, or with nm from the rows nm
 * normalises (in unused); with ro, q and k rotated and k, v written to the
 * KV pages as rope_kv_write does (bad slots reported in err). -EINVAL where
 * nm or ro do not suit (the segments not whole heads of ro->kv): the caller
 * runs the unfused ops. */
int kc_gemv_qkv(const struct kern_norm *nm, const void *in, const struct kern_rope *ro,
		uint32_t *err, int hf, const struct kc_gemv_seg seg[3], uint32_t n, uint32_t k,
		int n_sms, cudaStream_t st);
/* kc_gemv_swiglu of the rows nm normalises. */
int kc_gemv_norm_swiglu(const struct kern_norm *nm, int hf, void *out, const void *w_gate,
			const void *w_up, uint32_t n, uint32_t k, uint32_t m, int n_sms,
			cudaStream_t st);
/* The GEMV with its shape given (measurements, tests): rows, matrix rows one
 * warp reads at a time (1, 2 or 4; SwiGLU 2 or 4, gate and up in pairs);
 * blocks, at most that many blocks of 256 threads (fewer when the matrix
 * needs fewer, or fewer fit at once); pdl, launch as a programmatic
 * dependent when kc_pdl_enabled(). */
struct kc_gemv_cfg {
	uint32_t rows, blocks;
	int pdl;
};
enum kc_gemv_op { KC_GEMV_PLAIN, KC_GEMV_QKV, KC_GEMV_SWIGLU };
/* Whether the GEMV is the faster path for n input rows of this shape (else
 * cuBLASLt): the measured choice, shapes aside (see gemv_args_ok). */
int kc_gemv_suits(uint32_t n, uint32_t k, uint64_t m_all, enum kc_gemv_op op);
int kc_gemv_multi_cfg(const struct kc_gemv_seg seg[3], const void *in, uint32_t n, uint32_t k,
		      int out_f32, const struct kc_gemv_cfg *cfg, cudaStream_t st);
int kc_gemv_swiglu_cfg(void *out, const void *in, const void *w_gate, const void *w_up,
		       uint32_t n, uint32_t k, uint32_t m, int hf, const struct kc_gemv_cfg *cfg,
		       cudaStream_t st);
/* Whether kernels are launched as programmatic dependents (sm_90 and
 * HEARTH_CUDA_PDL not "0"; read once). */
int kc_pdl_enabled(void);
/* Measurements: 0 turns PDL off, 1 back to what kc_pdl_enabled() finds. */
void kc_pdl_override(int on);

/* cuda_skinny.cu: tensor-core matmul for 5..64 rows (batched decode), one
 * pass over the weights split across the whole machine (stream-K). The
 * workspace (kc_skinny_ws_bytes(), counters zeroed once at allocation,
 * zero again whenever no launch is in flight) serves one stream. */
#define KC_SKINNY_MIN_N 5
#define KC_SKINNY_MAX_N 64
size_t kc_skinny_ws_bytes(int n_sms);
/* Whether the skinny GEMM is the faster path for n rows of this shape
 * (else cuBLASLt): the measured choice, shapes aside. */
int kc_skinny_suits(uint32_t n, uint32_t k, uint64_t m_all, enum kc_gemv_op op);
/* blocks: at most that many blocks (0: as many as fit at once, up to four
 * an SM); pdl: launch as a programmatic dependent when kc_pdl_enabled(). */
struct kc_skinny_cfg {
	uint32_t blocks;
	int pdl;
};
/* Segments as kc_gemv_multi (n <= KC_SKINNY_MAX_N rows); -EINVAL when the
 * shape or alignment does not suit it (k % 8, 16-byte in and w). */
int kc_skinny_multi(const struct kc_gemv_seg seg[3], const void *in, uint32_t n, uint32_t k,
		    int out_f32, void *ws, size_t ws_bytes, int n_sms,
		    const struct kc_skinny_cfg *cfg, cudaStream_t st);
/* out[n, m] = silu(in @ Wg^T) * (in @ Wu^T), as kc_gemv_swiglu. */
int kc_skinny_swiglu(void *out, const void *in, const void *w_gate, const void *w_up,
		     uint32_t n, uint32_t k, uint32_t m, int hf, void *ws, size_t ws_bytes,
		     int n_sms, const struct kc_skinny_cfg *cfg, cudaStream_t st);
/* cuda_gemm_wg.cu: out[n, m] = silu(in @ Wg^T) * (in @ Wu^T) on wgmma with
 * TMA loads, for many rows (HEARTH_CUDA_SWIGLU_WG=N: from N rows), over at
 * most n_sms CTAs (at cl = 2 one cluster at least) in clusters of cl (1, or
 * 2: the weights multicast to a pair of row tiles,
 * HEARTH_CUDA_SWIGLU_WG_CL); -EINVAL where it does not
 * run (not sm_90a, k % 64, m % 128, alignment, no cluster of two resident).
 * _init returns whether it can. kc_tma_encoder: the driver's
 * cuTensorMapEncodeTiled, or NULL. */
int kc_swiglu_wg_init(size_t smem_optin);
int kc_swiglu_wg(void *out, const void *in, const void *w_gate, const void *w_up, uint32_t n,
		 uint32_t k, uint32_t m, int hf, int n_sms, int cl, cudaStream_t st);
void *kc_tma_encoder(void);
/* This build has sm_90a code (KC_WGMMA) and the device runs it (9.0). */
int kc_wgmma_device(void);
/* cuda_gemm.c: kc_skinny_multi() with c's workspace and grid (-EINVAL: the
 * shape is not taken). */
int kc_skinny_run(struct kern_cuda *c, const struct kc_gemv_seg seg[3], const void *in,
		  uint32_t n, uint32_t k, int out_f32);

/* cuda_attention.cu */
struct kc_attn_args {
	void *out;                 /* [n_tokens, n_heads * head_dim] bf16 */
	const void *q;             /* [n_tokens, n_heads * head_dim] bf16 */
	const void *kv_base;       /* bf16 pages */
	const int32_t *pos, *seq_start, *ctx_len, *block_table;
	uint32_t n_tokens, n_seqs, max_blocks;
	uint32_t n_pages, page_tokens, n_kv_heads, head_dim, n_heads;
	uint64_t page_elems;       /* elements of one page */
	uint64_t layer_off;        /* element offset of (layer, K, head 0) in a page */
	float scale;
	uint32_t *err;
	int32_t *tile_start;       /* workspace: [n_seqs + 1] */
	float *part;               /* workspace: split partials, see kc_attn_part_floats() */
	int early;                 /* decode: the next kernel may launch at the start */
	uint32_t split_min;        /* decode: positions per KV split at least */
};

int kc_rope_kv_write(void *q, void *k, const void *v, const int32_t *pos, const int32_t *slot,
		     uint32_t n_tokens, uint32_t n_heads, const struct kern_kv *kv, uint32_t layer,
		     const float *inv_freq, uint32_t *err, int hf, int pdl, cudaStream_t st);
/* Set the kernels' shared-memory limits once per device. */
int kc_attention_init(size_t smem_optin);
/* Dynamic shared memory of one block of `path` for head_dim hd. */
size_t kc_attn_smem_bytes(enum kc_attn_path path, uint32_t hd);
/* Query rows (token x head pairs) one block of `path` handles at most. */
uint32_t kc_attn_rows(enum kc_attn_path path);
/* Floats of split partials for n_splits > 1. */
size_t kc_attn_part_floats(uint32_t n_splits, uint32_t n_tokens, uint32_t n_heads, uint32_t hd);
#define KC_DEC_MAX_SPLITS 64

/* cuda_attention_dec.cu: decode attention. mma: the tensor-core kernel
 * (head_dim 64 or 128, any group), else the CUDA-core one (head_dim 32, 64
 * or 128 and at most 8 q heads per kv head). */
int kc_attn_decode_ok(uint32_t head_dim, uint32_t group, int mma);
int kc_attn_decode_init(size_t smem_optin);
/* Blocks of the tensor-core decode kernel for head_dim 64 or 128 that fit
 * one multiprocessor (asked once, at backend creation: dec_occ). */
uint32_t kc_attn_decode_occupancy(uint32_t head_dim);
/* One launch: attention and, for n_splits > 1, the merge of the splits
 * (a->part holds kc_attn_part_floats(n_splits, ...); counters: n_seqs x
 * n_kv_heads words, zero on entry and on return). */
int kc_attention_decode(const struct kc_attn_args *a, uint32_t n_splits, int mma,
			uint32_t *counters, cudaStream_t st);
/* Plan (tiles of sequences), attention, and the split combine when n_splits > 1.
 * split_len: KV positions per split (a multiple of 32), ignored for 1 split;
 * 0: each tile shares its own KV length evenly among the splits. */
int kc_attention(const struct kc_attn_args *a, enum kc_attn_path path, uint32_t n_splits,
		 uint32_t split_len, cudaStream_t st);
/* The plan alone: a sequence of n tokens has n * rows_per_token rows, cut
 * into tiles of rows_per_tile; a->tile_start gets the prefix sum. */
int kc_attn_plan(const struct kc_attn_args *a, uint32_t rows_per_token, uint32_t rows_per_tile,
		 cudaStream_t st);
/* The merge of n_splits partials in a->part into a->out. */
int kc_attn_combine(const struct kc_attn_args *a, uint32_t n_splits, cudaStream_t st);

/* cuda_attention_mma.cu: tensor-core attention for steps of several tokens
 * per sequence: mt 1 or 2, mma.sync with that many m16 tiles of query rows
 * per warp (64 or 128 rows a block); KC_MMA_WG, wgmma with 128 rows a block
 * (sm_90a builds on compute capability 9.0 only). Shapes it takes: head_dim
 * 64 or 128 (any GQA group) when its shared memory fits smem_optin. */
#define KC_MMA_WG 3
/* KC_MMA_WS: wgmma, warp-specialised (a producer warpgroup, two consumers
 * taking turns on the tensor cores), 128 rows a block, head_dim 128. */
#define KC_MMA_WS 4
int kc_attn_mma_ok(uint32_t head_dim, uint32_t mt, size_t smem_optin);
/* KC_MMA_WS runs and loads K/V by TMA for pools of pages of page_tokens
 * positions (HEARTH_CUDA_ATTN_WS_TMA=0 turns TMA off). */
int kc_attn_ws_tma(uint32_t page_tokens);
/* Query rows ((token, q head) pairs of one kv head) per block. */
uint32_t kc_attn_mma_rows(uint32_t mt);
int kc_attn_mma_init(size_t smem_optin);
/* Plan (unless plan is 0: a->tile_start already holds it, as kc_attn_plan
 * with rows per token the group and rows per tile kc_attn_mma_rows(mt)
 * left it), attention and, for n_splits > 1, the combine (a->tile_start as
 * for kc_attention; a->part holds kc_attn_part_floats(n_splits, ...)). Each
 * block splits its own KV length (graphs replay any context). -EINVAL for
 * an unsupported shape or q / kv_base not 16-byte aligned. */
int kc_attention_mma(const struct kc_attn_args *a, uint32_t mt, uint32_t n_splits, int plan,
		     cudaStream_t st);

#ifdef __cplusplus
}
#endif

#endif

/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, the operations of the ops table: host-side argument checks
 * (what the host can see without reading device memory: pointers, shapes,
 * geometry), then the launchers. Indices held in device memory (ids, rows,
 * slots, positions, pages, sequence bounds) are checked by the kernels,
 * which set the deferred error word (cuda_backend.c). Also the choice of
 * attention kernel and of the KV split for decode.
 */
#include <errno.h>
#include <limits.h>

#include "hr_common.h"
#include "cuda_internal.h"

/* Rows and grid sizes: every launcher takes n as gridDim.x. */
#define KC_MAX_ROWS ((uint32_t)INT32_MAX)

int kc_embed_op(struct kern_backend *be, void *out, const void *table, const int32_t *ids,
		uint32_t n, uint32_t dim, uint32_t vocab)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!out || !table || !ids || !n || !dim || !vocab || n > KC_MAX_ROWS)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	return kc_embed(out, table, ids, n, dim, vocab, c->err_dev, c->stream);
}

int kc_add_rmsnorm_op(struct kern_backend *be, void *out, void *resid, const void *add,
		      const void *weight, uint32_t n, uint32_t dim, float eps)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!out || !resid || !weight || !n || !dim || out == resid || n > KC_MAX_ROWS)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	return kc_add_rmsnorm(out, resid, resid, add, weight, n, dim, eps, c->hf_round, c->stream);
}

int kc_matmul_op(struct kern_backend *be, void *out, const void *in, const void *w,
		 const void *bias, uint32_t n, uint32_t k, uint32_t m)
{
	return kc_gemm(be, out, 0, in, w, bias, n, k, m);
}

int kc_matmul_f32out_op(struct kern_backend *be, float *out, const void *in, const void *w,
			uint32_t n, uint32_t k, uint32_t m)
{
	return kc_gemm(be, out, 1, in, w, NULL, n, k, m);
}

/* Few rows: one GEMV launch over the three stacked matrices; up to 32 one
 * skinny GEMM launch; else q, then k and v as one pair (cuBLASLt).
 * kc_gemv_suits() and kc_skinny_suits() say where those are faster. */
int kc_matmul_qkv_op(struct kern_backend *be, void *q, void *k, void *v, const void *in,
		     const void *wq, const void *wk, const void *wv, const void *bq,
		     const void *bk, const void *bv, uint32_t n, uint32_t kdim, uint32_t mq,
		     uint32_t mkv)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!q || !k || !v || !in || !wq || !wk || !wv || !n || !kdim || !mq || !mkv)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	if (!c->gemv_off && !c->fused_off &&
	    kc_gemv_suits(n, kdim, (uint64_t)mq + 2ull * mkv, KC_GEMV_QKV)) {
		const struct kc_gemv_seg seg[3] = {
			{ q, wq, bq, mq }, { k, wk, bk, mkv }, { v, wv, bv, mkv },
		};

		r = kc_gemv_multi(seg, in, n, kdim, c->n_sms * c->gemv_occ, c->stream);
		if (r != -EINVAL)
			return r;
	}
	if (!c->gemv_off && !c->fused_off && !c->skinny_off &&
	    kc_skinny_suits(n, kdim, (uint64_t)mq + 2ull * mkv, KC_GEMV_QKV)) {
		const struct kc_gemv_seg seg[3] = {
			{ q, wq, bq, mq }, { k, wk, bk, mkv }, { v, wv, bv, mkv },
		};

		r = kc_skinny_run(c, seg, in, n, kdim, 0);
		if (r != -EINVAL)
			return r;
	}
	if ((r = kc_gemm(be, q, 0, in, wq, bq, n, kdim, mq)) < 0)
		return r;
	if (!c->fused_off &&
	    (r = kc_gemm_pair(be, k, v, in, wk, wv, bk, bv, n, kdim, mkv)) != -ENOTSUP)
		return r;
	if ((r = kc_gemm(be, k, 0, in, wk, bk, n, kdim, mkv)) < 0)
		return r;
	return kc_gemm(be, v, 0, in, wv, bv, n, kdim, mkv);
}

int kc_matmul_swiglu_op(struct kern_backend *be, void *out, void *gate, void *up,
			const void *in, const void *w_gate, const void *w_up, uint32_t n,
			uint32_t k, uint32_t m)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!out || !gate || !up || !in || !w_gate || !w_up || !n || !k || !m)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	if (!c->gemv_off && !c->fused_off && kc_gemv_suits(n, k, m, KC_GEMV_SWIGLU)) {
		r = kc_gemv_swiglu(out, in, w_gate, w_up, n, k, m, c->n_sms * c->gemv_occ, c->hf_round,
				   c->stream);
		if (r != -EINVAL)
			return r;
	}
	if (!c->gemv_off && !c->fused_off && !c->skinny_off &&
	    kc_skinny_suits(n, k, m, KC_GEMV_SWIGLU)) {
		const struct kc_skinny_cfg cfg = { 0, 1 };

		r = kc_skinny_swiglu(out, in, w_gate, w_up, n, k, m, c->hf_round, c->skinny_ws,
				     c->skinny_ws_bytes, c->n_sms, &cfg, c->stream);
		if (r != -EINVAL)
			return r;
	}
	if (c->swiglu_wg && n >= c->swiglu_wg && !c->fused_off) {
		r = kc_swiglu_wg(out, in, w_gate, w_up, n, k, m, c->hf_round, c->n_sms,
				 c->swiglu_wg_cl, c->stream);
		if (r != -EINVAL)
			return r;
	}
	/* gate and up are scratch: each takes whichever buffer puts the two
	 * outputs in the weights' order, as one cuBLASLt launch wants them. */
	if (((const char *)w_up > (const char *)w_gate) != ((char *)up > (char *)gate)) {
		void *t = gate;

		gate = up, up = t;
	}
	r = c->fused_off ? -ENOTSUP
			 : kc_gemm_pair(be, gate, up, in, w_gate, w_up, NULL, NULL, n, k, m);
	if (r == -ENOTSUP && (r = kc_gemm(be, gate, 0, in, w_gate, NULL, n, k, m)) >= 0)
		r = kc_gemm(be, up, 0, in, w_up, NULL, n, k, m);
	if (r < 0)
		return r;
	return kc_swiglu(out, gate, up, (size_t)n * m, c->hf_round, c->stream);
}

/* KV geometry, layer and head counts shared by rope and attention (as the
 * cpu backend checks them), plus the even head_dim the bf16 pairs need. */
static int kv_check(const struct kern_kv *kv, uint32_t layer, uint32_t n_heads)
{
	if (!kv->base || !kv->n_pages || !kv->page_tokens || !kv->n_layers || !kv->n_kv_heads ||
	    !kv->head_dim || kv->head_dim % 2)
		return -EINVAL;
	if (layer >= kv->n_layers || !n_heads || n_heads % kv->n_kv_heads)
		return -EINVAL;
	return 0;
}

/* The norm of nm checked as add_rmsnorm's arguments, and its fallback:
 * resid = resid_in + add and h = rmsnorm(resid) in one launch. */
static int norm_check(const struct kern_norm *nm, uint32_t n)
{
	if (!nm || !nm->resid || !nm->resid_in || !nm->weight || !nm->h || !n ||
	    n > KC_MAX_ROWS || nm->h == nm->resid || nm->h == nm->resid_in ||
	    nm->resid == nm->resid_in)
		return -EINVAL;
	return 0;
}

static int norm_unfused(struct kern_cuda *c, const struct kern_norm *nm, uint32_t n,
			uint32_t dim)
{
	return kc_add_rmsnorm(nm->h, nm->resid, nm->resid_in, nm->add, nm->weight, n, dim, nm->eps,
			      c->hf_round, c->stream);
}

/* rope's arguments against the step and the q/k/v shape: q and k whole
 * heads of the pool's geometry, one position and slot per row. */
static int rope_check(const struct kern_rope *rope, uint32_t n, uint32_t mq, uint32_t mkv)
{
	const struct kern_batch *b = rope->batch;

	if (!b || !rope->kv || !rope->inv_freq || b->n_tokens != n || !b->pos || !b->slot ||
	    kv_check(rope->kv, rope->layer, rope->n_heads) < 0 ||
	    mq != rope->n_heads * rope->kv->head_dim ||
	    mkv != rope->kv->n_kv_heads * rope->kv->head_dim)
		return -EINVAL;
	return 0;
}

/*
 * At few rows (the GEMV's) the norm runs in the q/k/v GEMV's prologue and
 * rope_kv_write in its epilogue, each unless its knob turns it off
 * (HEARTH_CUDA_NORM_FUSE=0, HEARTH_CUDA_ROPE_FUSE=0): one launch where there
 * were three; else add_rmsnorm, matmul_qkv, then rope_kv_write.
 */
int kc_norm_matmul_qkv_op(struct kern_backend *be, const struct kern_norm *nm,
			  const struct kern_rope *rope, void *q, void *k, void *v, const void *wq,
			  const void *wk, const void *wv, const void *bq, const void *bk,
			  const void *bv, uint32_t n, uint32_t kdim, uint32_t mq, uint32_t mkv)
{
	struct kern_cuda *c = kc_priv(be);
	bool gemv, fn, fr;
	int r;

	if ((r = norm_check(nm, n)) < 0 || !q || !k || !v || !wq || !wk || !wv || !kdim || !mq ||
	    !mkv || (rope && (r = rope_check(rope, n, mq, mkv)) < 0))
		return r < 0 ? r : -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	gemv = !c->gemv_off && !c->fused_off &&
	       kc_gemv_suits(n, kdim, (uint64_t)mq + 2ull * mkv, KC_GEMV_QKV);
	fn = gemv && c->norm_fuse && kc_gemv_norm_fits(nm, n, kdim);
	fr = gemv && c->rope_fuse && rope;
	if (fn || fr) {
		const struct kc_gemv_seg seg[3] = {
			{ q, wq, bq, mq }, { k, wk, bk, mkv }, { v, wv, bv, mkv },
		};

		if (!fn && (r = norm_unfused(c, nm, n, kdim)) < 0)
			return r;
		r = kc_gemv_qkv(fn ? nm : NULL, nm->h, fr ? rope : NULL, c->err_dev, c->hf_round, seg,
				n, kdim, c->n_sms * c->gemv_occ, c->stream);
		if (r < 0)
			return r;
		c->n_norm_fused += fn;
		c->n_rope_fused += fr;
	} else if ((r = norm_unfused(c, nm, n, kdim)) < 0 ||
		   (r = kc_matmul_qkv_op(be, q, k, v, nm->h, wq, wk, wv, bq, bk, bv, n, kdim, mq,
					 mkv)) < 0) {
		return r;
	}
	if (rope && !fr)
		return kc_rope_kv_write_op(be, q, k, v, rope->batch, rope->kv, rope->layer,
					   rope->n_heads, rope->inv_freq);
	return 0;
}

int kc_norm_matmul_swiglu_op(struct kern_backend *be, const struct kern_norm *nm, void *out,
			     void *gate, void *up, const void *w_gate, const void *w_up, uint32_t n,
			     uint32_t k, uint32_t m)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if ((r = norm_check(nm, n)) < 0 || !out || !gate || !up || !w_gate || !w_up || !k || !m)
		return r < 0 ? r : -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	if (c->norm_fuse && !c->gemv_off && !c->fused_off &&
	    kc_gemv_suits(n, k, m, KC_GEMV_SWIGLU) && kc_gemv_norm_fits(nm, n, k)) {
		r = kc_gemv_norm_swiglu(nm, c->hf_round, out, w_gate, w_up, n, k, m,
					c->n_sms * c->gemv_occ, c->stream);
		c->n_norm_fused += r == 0;
		return r;
	}
	if ((r = norm_unfused(c, nm, n, k)) < 0)
		return r;
	return kc_matmul_swiglu_op(be, out, gate, up, nm->h, w_gate, w_up, n, k, m);
}

int kc_swiglu_op(struct kern_backend *be, void *out, const void *gate, const void *up,
		 uint32_t n, uint32_t dim)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!out || !gate || !up || !n || !dim)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	return kc_swiglu(out, gate, up, (size_t)n * dim, c->hf_round, c->stream);
}

int kc_gather_rows_op(struct kern_backend *be, void *out, const void *in, const int32_t *rows,
		      uint32_t n, uint32_t dim)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!out || !in || !rows || !n || !dim || n > KC_MAX_ROWS)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	return kc_gather_rows(out, in, rows, n, dim, c->err_dev, c->stream);
}

int kc_argmax_op(struct kern_backend *be, int32_t *out, const float *logits, uint32_t n,
		 uint32_t vocab)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!out || !logits || !n || !vocab || vocab > INT32_MAX || n > KC_MAX_ROWS)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	return kc_argmax(out, logits, n, vocab, c->stream);
}

int kc_softmax_ids_op(struct kern_backend *be, float *out, const float *logits,
		      const int32_t *ids, uint32_t n, uint32_t n_ids, uint32_t vocab)
{
	struct kern_cuda *c = kc_priv(be);
	int r;

	if (!out || !logits || !ids || !n || !n_ids || !vocab || vocab > INT32_MAX ||
	    n > KC_MAX_ROWS)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	return kc_softmax_ids(out, logits, ids, n, n_ids, vocab, c->err_dev, c->stream);
}

int kc_rope_kv_write_op(struct kern_backend *be, void *q, void *k, const void *v,
			const struct kern_batch *batch, const struct kern_kv *kv, uint32_t layer,
			uint32_t n_heads, const float *inv_freq)
{
	struct kern_cuda *c;
	int r;

	if (!be || !q || !k || !v || !batch || !kv || !inv_freq)
		return -EINVAL;
	if ((r = kv_check(kv, layer, n_heads)) < 0)
		return r;
	if (!batch->n_tokens || batch->n_tokens > KC_MAX_ROWS || !batch->pos || !batch->slot)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	c = kc_priv(be);
	return kc_rope_kv_write(q, k, v, batch->pos, batch->slot, batch->n_tokens, n_heads, kv,
				layer, inv_freq, c->err_dev, c->hf_round, c->pdl_early & 1, c->stream);
}

/*
 * Split the KV length over several blocks when the grid is small next to
 * the machine (decode): a block walks its positions 32 at a time, load then
 * compute, so a long walk is latency-bound and more blocks in flight hide
 * it. Aim at about eight blocks per multiprocessor, each split at least 64
 * positions (two tiles; the combine pass costs more than shorter splits
 * save). H200, 1B geometry: 64 sequences x 1024, 0.17 ms against 0.25
 * unsplit; one sequence of 512, 25 us with 8 splits, 34 with 4. max_ctx is
 * only a hint: the last split runs to each row's own end, so a low hint
 * costs speed, not correctness.
 */
static uint32_t attn_splits(const struct kern_cuda *c, const struct kern_batch *b,
			    uint32_t blocks, uint32_t *ret_len)
{
	uint32_t want, len, n;

	n = c->attn_splits;
	if (!n) {
		want = blocks ? (8u * (uint32_t)c->n_sms + blocks - 1) / blocks : 1;
		n = HR_MIN(want, b->max_ctx / 64);
	}
	n = HR_MIN(n, (uint32_t)KC_DEC_MAX_SPLITS); /* the merge's shared arrays */
	if (n <= 1 || !b->max_ctx) {
		*ret_len = 0;
		return 1;
	}
	len = HR_ALIGN_UP((b->max_ctx + n - 1) / n, 32u);
	*ret_len = len;
	return (b->max_ctx + len - 1) / len;
}

static void attn_args_fill(struct kc_attn_args *a, struct kern_cuda *c, void *out, const void *q,
			   const struct kern_batch *b, const struct kern_kv *kv, uint32_t layer,
			   uint32_t n_heads, float scale)
{
	*a = (struct kc_attn_args){
		.out = out,
		.q = q,
		.kv_base = kv->base,
		.pos = b->pos,
		.seq_start = b->seq_start,
		.ctx_len = b->ctx_len,
		.block_table = b->block_table,
		.n_tokens = b->n_tokens,
		.n_seqs = b->n_seqs,
		.max_blocks = b->max_blocks,
		.n_pages = kv->n_pages,
		.page_tokens = kv->page_tokens,
		.n_kv_heads = kv->n_kv_heads,
		.head_dim = kv->head_dim,
		.n_heads = n_heads,
		.page_elems = kern_kv_page_elems(kv),
		.layer_off = kern_kv_offset(kv, 0, layer, 0, 0, 0),
		.scale = scale,
		.early = c->pdl_early >> 1 & 1,
		.split_min = c->dec_split_min,
		.err = c->err_dev,
	};
}

/* The tiled kernels' workspace: split counters, then the tile starts
 * (n_seqs + 1), then n_splits partial results when the KV length is split.
 * Reserves it and fills *a. */
static int attn_tiled_args(struct kern_backend *be, struct kc_attn_args *a, void *out,
			   const void *q, const struct kern_batch *b, const struct kern_kv *kv,
			   uint32_t layer, uint32_t n_heads, float scale, uint32_t n_splits)
{
	struct kern_cuda *c = kc_priv(be);
	size_t tiles_bytes = HR_ALIGN_UP(((size_t)b->n_seqs + 1) * sizeof(int32_t), (size_t)256);
	size_t part_bytes = 0;
	int r;

	if (n_splits > 1)
		part_bytes = kc_attn_part_floats(n_splits, b->n_tokens, n_heads, kv->head_dim) *
			     sizeof(float);
	if ((r = kc_attn_ws_reserve(be, KC_ATTN_CNT_BYTES + tiles_bytes + part_bytes)) < 0)
		return r;
	attn_args_fill(a, c, out, q, b, kv, layer, n_heads, scale);
	a->tile_start = (int32_t *)((char *)c->attn_ws + KC_ATTN_CNT_BYTES);
	a->part = n_splits > 1 ? (float *)((char *)c->attn_ws + KC_ATTN_CNT_BYTES + tiles_bytes)
			       : NULL;
	return 0;
}

/*
 * Decode: one launch. The KV length is split to fill the machine (the
 * kernel's blocks per multiprocessor, or HEARTH_CUDA_DEC_BLOCKS) over
 * n_seqs x n_kv_heads blocks, each split at least 128 positions, from the
 * max_ctx hint: a graph passes its capacity, so the count is fixed per graph;
 * each sequence then uses as many of them as its own length fills (the
 * tensor-core kernel) or divides its length among all (the CUDA-core one).
 */
static int attention_decode(struct kern_backend *be, void *out, const void *q,
			    const struct kern_batch *b, const struct kern_kv *kv, uint32_t layer,
			    uint32_t n_heads, float scale, int mma)
{
	struct kern_cuda *c = kc_priv(be);
	struct kc_attn_args a;
	uint32_t n_splits;
	size_t part_bytes = 0;
	int r;

	n_splits = c->attn_splits;
	if (!n_splits) {
		uint32_t blocks = b->n_seqs * kv->n_kv_heads;
		uint32_t per_sm = c->dec_blocks ? (uint32_t)c->dec_blocks
				  : mma		 ? c->dec_occ[kv->head_dim == 64 ? 0 : 1]
						 : 4u; /* the CUDA-core kernel's aim */

		n_splits = (per_sm * (uint32_t)c->n_sms + blocks - 1) / blocks;
		n_splits = HR_MIN(n_splits, b->max_ctx / c->dec_split_min);
	}
	n_splits = HR_MAX(HR_MIN(n_splits, (uint32_t)KC_DEC_MAX_SPLITS), 1u);
	if (n_splits > 1)
		part_bytes = kc_attn_part_floats(n_splits, b->n_tokens, n_heads, kv->head_dim) *
			     sizeof(float);
	if ((r = kc_attn_ws_reserve(be, KC_ATTN_CNT_BYTES + part_bytes)) < 0)
		return r;
	attn_args_fill(&a, c, out, q, b, kv, layer, n_heads, scale);
	a.part = n_splits > 1 ? (float *)((char *)c->attn_ws + KC_ATTN_CNT_BYTES) : NULL;
	c->plan_last.valid = 0; /* the partials overwrite the tiles */
	return kc_attention_decode(&a, n_splits, mma, c->attn_ws, c->stream);
}

/*
 * The tiles left in attn_ws by the last multi-token attention serve this
 * call (HEARTH_CUDA_PLAN_ONCE, struct kern_cuda): the next layer of the same
 * step. The metadata pointers, counts and workspace all match; the contents
 * of the metadata cannot change between two layers of one step (the step
 * uploads them before its first layer, which always plans).
 */
static bool plan_reusable(const struct kern_cuda *c, const struct kc_plan_key *k)
{
	const struct kc_plan_key *p = &c->plan_last;

	return c->plan_once && p->valid && k->layer && k->layer == p->layer + 1 && p->ws == k->ws &&
	       p->ws_gen == k->ws_gen && p->seq_start == k->seq_start && p->ctx_len == k->ctx_len &&
	       p->n_seqs == k->n_seqs && p->n_tokens == k->n_tokens &&
	       p->max_blocks == k->max_blocks && p->page_tokens == k->page_tokens &&
	       p->rows_per_token == k->rows_per_token && p->rows_per_tile == k->rows_per_tile;
}

/*
 * Steps of several tokens per sequence on tensor cores. Long chunks (two
 * 128-row tiles a sequence or more, and enough of them for two blocks per
 * multiprocessor) take 128-row blocks, unsplit: the wgmma kernel where the
 * device and build have it (HEARTH_CUDA_ATTN_WG=0: never), else two m16 tiles
 * a warp of mma.sync. Other steps take 64-row blocks of mma.sync; the grid is
 * then about tiles x kv heads (64 rows of the group's heads x tokens per
 * tile), and when that is short of the machine (APPEND 32: 2 tiles x 8 kv
 * heads) the KV length is split to fill about mma_blocks blocks per
 * multiprocessor, each split at least 128 positions (two tiles; the combine
 * reads every split). Head_dim 64 steps left unsplit take wgmma too (the
 * 1B's 64 x 16-token chunks: 43 against 54 us alone, a 64-session mixed step
 * 5.5 against 6.2 ms; H100, docs/BENCHMARKS.md). (The 8B's APPEND 32 on
 * wgmma at 16 splits: 20.8 against 23.0 us alone, but no faster end to end.)
 * As for decode, the choice depends on the bucket and the max_ctx hint
 * only. At head_dim 128 the long chunks take the warp-specialised wgmma
 * kernel instead where it loads K/V by TMA (8B prefill 2048: 95.5 against
 * 143.2 us alone, the prefill 47.1 against 48.4-48.8 ms; H100); cp.async
 * loads make it no faster than wg. HEARTH_CUDA_ATTN_WS=0 keeps it out, =1
 * takes it even without TMA. HEARTH_CUDA_ATTN_MMA_MT=1,
 * 2, wg or ws forces one kernel (c->mma_mt).
 */
static int attention_mma(struct kern_backend *be, void *out, const void *q,
			 const struct kern_batch *b, const struct kern_kv *kv, uint32_t layer,
			 uint32_t n_heads, float scale)
{
	struct kern_cuda *c = kc_priv(be);
	const uint32_t group = n_heads / kv->n_kv_heads, hd = kv->head_dim;
	const uint64_t rows_all = (uint64_t)b->n_tokens * group;
	const int wg = c->attn_wg && kc_attn_mma_ok(hd, KC_MMA_WG, c->smem_optin);
	const int ws = wg && kc_attn_mma_ok(hd, KC_MMA_WS, c->smem_optin) &&
		       (c->attn_wspec > 0 || (c->attn_wspec < 0 && kc_attn_ws_tma(kv->page_tokens)));
	uint32_t mt = c->mma_mt, n_splits;
	struct kc_attn_args a;
	struct kc_plan_key key;
	bool reuse;
	int r;

	if (!mt && rows_all >= 256ull * b->n_seqs &&
	    rows_all / 128 * kv->n_kv_heads >= 2ull * (uint32_t)c->n_sms)
		mt = ws ? KC_MMA_WS : wg ? KC_MMA_WG : 2;
	if (!kc_attn_mma_ok(hd, mt, c->smem_optin))
		mt = 1; /* by step: not long; or forced where it cannot run */
	n_splits = c->attn_splits;
	if (!n_splits && mt == 1) {
		const uint32_t rows = kc_attn_mma_rows(1);
		const uint64_t blocks = ((rows_all + rows - 1) / rows +
					 HR_MIN(b->n_seqs, b->n_tokens)) * kv->n_kv_heads;
		const uint64_t want = ((uint64_t)c->mma_blocks * (uint32_t)c->n_sms + blocks - 1) /
				      blocks;

		n_splits = (uint32_t)HR_MIN(want, (uint64_t)(b->max_ctx / 128));
	}
	n_splits = HR_MAX(HR_MIN(n_splits, (uint32_t)KC_DEC_MAX_SPLITS), 1u);
	if (!c->mma_mt && mt == 1 && wg && hd == 64 && n_splits == 1)
		mt = KC_MMA_WG;
	if ((r = attn_tiled_args(be, &a, out, q, b, kv, layer, n_heads, scale, n_splits)) < 0)
		return r;
	key = (struct kc_plan_key){
		.ws = c->attn_ws, .seq_start = b->seq_start, .ctx_len = b->ctx_len,
		.ws_gen = c->ws_gen, .n_seqs = b->n_seqs, .n_tokens = b->n_tokens,
		.max_blocks = b->max_blocks, .page_tokens = kv->page_tokens,
		.rows_per_token = group, .rows_per_tile = kc_attn_mma_rows(mt), .layer = layer,
		.valid = 1,
	};
	reuse = plan_reusable(c, &key);
	c->plan_last.valid = 0;
	if ((r = kc_attention_mma(&a, mt, n_splits, !reuse, c->stream)) < 0)
		return r;
	c->plan_last = key;
	c->n_plans_reused += reuse;
	return 0;
}

int kc_attention_op(struct kern_backend *be, void *out, const void *q,
		    const struct kern_batch *batch, const struct kern_kv *kv, uint32_t layer,
		    uint32_t n_heads, float scale)
{
	const struct kern_batch *b = batch;
	struct kern_cuda *c;
	struct kc_attn_args a;
	enum kc_attn_path path;
	uint32_t group, rows, gc, bq, blocks, n_splits = 1, split_len = 0;
	size_t smem;
	int q16;
	int r;

	if (!be || !out || !q || !b || !kv)
		return -EINVAL;
	if ((r = kv_check(kv, layer, n_heads)) < 0)
		return r;
	if (!b->n_tokens || !b->n_seqs || !b->max_blocks || !b->pos || !b->seq_start ||
	    !b->ctx_len || !b->block_table || b->n_tokens > KC_MAX_ROWS ||
	    b->n_seqs > KC_MAX_ROWS - 1)
		return -EINVAL;
	if ((r = kc_enter(be)) < 0)
		return r;
	c = kc_priv(be);
	group = n_heads / kv->n_kv_heads;
	q16 = !((uintptr_t)q % 16) && !((uintptr_t)kv->base % 16);

	/* DECODE_MMA (tensor cores) when every sequence brings one token and
	 * the head size suits it, else DECODE (CUDA cores) where that takes the
	 * shape; MMA (tensor cores) for other steps where it takes the shape;
	 * the tile kernels for the rest: SMALL when a sequence brings about one
	 * block's worth of rows or less (short appends), else LARGE (prefill
	 * chunks). */
	path = c->attn_path;
	if (path == KC_ATTN_AUTO && b->n_tokens == b->n_seqs)
		path = c->dec_mma && kc_attn_decode_ok(kv->head_dim, group, 1) && q16
			       ? KC_ATTN_DECODE_MMA
			       : KC_ATTN_DECODE;
	if ((path == KC_ATTN_DECODE || path == KC_ATTN_DECODE_MMA) &&
	    (!kc_attn_decode_ok(kv->head_dim, group, path == KC_ATTN_DECODE_MMA) ||
	     (path == KC_ATTN_DECODE_MMA && !q16) || b->n_seqs > 65535 ||
	     (uint64_t)b->n_seqs * kv->n_kv_heads * sizeof(uint32_t) > KC_ATTN_CNT_BYTES))
		path = c->attn_path == KC_ATTN_AUTO ? KC_ATTN_AUTO : KC_ATTN_SMALL;
	if (path == KC_ATTN_DECODE || path == KC_ATTN_DECODE_MMA)
		return attention_decode(be, out, q, b, kv, layer, n_heads, scale,
					path == KC_ATTN_DECODE_MMA);
	if ((path == KC_ATTN_MMA || (path == KC_ATTN_AUTO && c->mma_blocks)) &&
	    kc_attn_mma_ok(kv->head_dim, 1, c->smem_optin) && q16 &&
	    (uint64_t)b->n_tokens * group <= INT32_MAX)
		return attention_mma(be, out, q, b, kv, layer, n_heads, scale);
	if (path == KC_ATTN_MMA)
		path = KC_ATTN_AUTO;
	if (path == KC_ATTN_AUTO)
		path = (uint64_t)b->n_tokens * group <= (uint64_t)b->n_seqs * kc_attn_rows(KC_ATTN_SMALL)
			       ? KC_ATTN_SMALL
			       : KC_ATTN_LARGE;
	smem = kc_attn_smem_bytes(path, kv->head_dim);
	if (smem > c->smem_optin && path == KC_ATTN_LARGE) {
		path = KC_ATTN_SMALL;
		smem = kc_attn_smem_bytes(path, kv->head_dim);
	}
	if (smem > c->smem_optin)
		return -EINVAL; /* head_dim too large for one block's shared memory */

	rows = kc_attn_rows(path);
	gc = HR_MIN(group, rows);
	bq = rows / gc;
	blocks = (uint32_t)HR_MIN((uint64_t)b->n_tokens, (uint64_t)(b->n_tokens + bq - 1) / bq +
								 b->n_seqs) *
		 kv->n_kv_heads * ((group + gc - 1) / gc);
	n_splits = attn_splits(c, b, blocks, &split_len);

	if ((r = attn_tiled_args(be, &a, out, q, b, kv, layer, n_heads, scale, n_splits)) < 0)
		return r;
	(void)split_len; /* the kernel splits each tile's own length (graphs replay any) */
	c->plan_last.valid = 0; /* it plans tiles of its own */
	return kc_attention(&a, path, n_splits, 0, c->stream);
}

/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, paged causal attention on tensor cores (flash attention 2)
 * for steps whose sequences bring several tokens: prefill chunks, appends,
 * mixed batches. Two kernels share the block setup, the K/V loads and the
 * epilogue: attn_mma_kernel (warp-level mma.sync m16n8k16 bf16 -> fp32, 64
 * or 128 rows a block) and attn_wg_kernel (warpgroup wgmma, sm_90a, 128 rows
 * a block; long chunks). head_dim 64 and 128, any GQA group; the tile
 * kernels of cuda_attention.cu serve the other shapes, the decode kernels
 * one token per sequence.
 */
#include <cuda.h> /* CUtensorMap (the type only: no libcuda link) */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_device.cuh"
#include "cuda_internal.h"
#include "cuda_mma.cuh"
#include "cuda_wgmma.cuh"

typedef __nv_bfloat16 bf16;

/*
 * A block is 4 warps; its 64 x MT query rows are consecutive (token, q head)
 * pairs of one sequence and one kv head: row R of the sequence is token
 * R / group, head R % group of the kv head's group, so the group's heads
 * share every K/V tile (read once per group) whatever the group size. Each
 * warp owns 16 x MT rows (MT m16 MMA tiles) and keeps its scores (16 x 64
 * fp32 a tile) and its output (16 x head_dim fp32 a tile) in registers, and
 * at MT = 1 its Q fragments too. K/V tiles of 64 positions (32 at head_dim
 * 128 with MT = 2) stream from the pages into shared memory with
 * cp.async, double-buffered: the next tile's loads fly while this one is
 * used. Rows are padded by 16 bytes so that ldmatrix's eight row addresses
 * fall in distinct banks.
 *
 * Arithmetic per tile and warp: S = Q K^T (ldmatrix of K rows is already
 * the col-major B operand), scores scaled by scale * log2 e, masked by
 * position (p <= pos[row], p < end of the block's KV range), online softmax
 * in base 2 in fp32, P rounded to bf16 straight from the accumulator
 * registers into A fragments (the m16n8 C layout of two n8 tiles is the
 * m16k16 A layout), O += P V with V through ldmatrix.trans.
 */
#define MMA_NT 128
/* KV positions per tile: 64, or 32 at head_dim 128 with two row tiles a
 * warp (64 spilled: 128 fp32 of O and 64 of scores a lane). */
static constexpr __host__ __device__ int mma_bn(int hd, int mt)
{
	return hd == 128 && mt == 2 ? 32 : 64;
}

/* What a block of either kernel works on: its sequence, the KV positions
 * [begin, end) of its split, and its rows' tables in shared memory. */
struct fa_block {
	const int32_t *bt; /* the sequence's block table */
	int32_t begin, end;
};

/*
 * Block (tile x kv head, split). Tiles come from the plan (a.tile_start, BM
 * rows of group x tokens each) and run last first, the kv heads of a tile
 * side by side: in a long prefill the last tiles see the most positions, so
 * they start in the first wave and the short ones fill the tail. With
 * n_splits > 1 each block takes its share of its own KV length (the rows'
 * largest position + 1, in whole tiles of BN) and writes fp32 partials (O, m,
 * l) that attn_combine_kernel merges. Fills the rows' token, head and causal
 * limit (-1: no row) with NTHR threads and synchronises; false (for the whole
 * block) when the block has no tile.
 */
template <int BM, int BN, int NTHR>
static __device__ __forceinline__ bool fa_block_rows(const struct kc_attn_args &a, int *sm_tok,
						     int *sm_head, int *sm_lim, struct fa_block &fb)
{
	const uint32_t group = a.n_heads / a.n_kv_heads, kvh = blockIdx.x % a.n_kv_heads;
	const uint32_t split = blockIdx.y, n_splits = gridDim.y;
	const int32_t *ts = a.tile_start;
	const uint32_t n_tiles = (uint32_t)ts[a.n_seqs];
	const int lane = threadIdx.x & 31;

	if (blockIdx.x / a.n_kv_heads >= n_tiles)
		return false; /* the grid is an upper bound on the tiles */

	const uint32_t tile = n_tiles - 1 - blockIdx.x / a.n_kv_heads;
	const uint32_t s = tile_seq(ts, a.n_seqs, tile);
	const int32_t t0 = a.seq_start[s], ctx = a.ctx_len[s];
	const int64_t n_rows = (int64_t)(a.seq_start[s + 1] - t0) * group;
	const int64_t r0 = (int64_t)(tile - (uint32_t)ts[s]) * BM;
	const bool ctx_ok = ctx >= 0 && (uint64_t)ctx <= (uint64_t)a.max_blocks * a.page_tokens;
	int mx = -1, kv_end;

	fb.bt = a.block_table + (size_t)s * a.max_blocks;
	for (int i = threadIdx.x; i < BM; i += NTHR) {
		const int64_t R = r0 + i;
		int tok = -1, head = -1, lim = -1;

		if (R < n_rows) {
			int32_t p;

			tok = t0 + (int32_t)(R / group);
			head = (int)(kvh * group + (uint32_t)(R % group));
			p = a.pos[tok];
			if (ctx_ok && p >= 0 && p < ctx)
				lim = p;
			else
				set_err(a.err, KC_ERR_BATCH);
		}
		sm_tok[i] = tok;
		sm_head[i] = head;
		sm_lim[i] = lim;
	}
	__syncthreads();
	for (int i = lane; i < BM; i += 32)
		mx = max(mx, sm_lim[i]);
	kv_end = warp_max_int(mx) + 1;
	if (n_splits > 1) {
		const int32_t len = (int32_t)((((uint32_t)kv_end + n_splits - 1) / n_splits +
					       BN - 1) & ~(uint32_t)(BN - 1));

		fb.begin = (int32_t)split * len;
		fb.end = split + 1 == n_splits ? kv_end : min(kv_end, fb.begin + len);
	} else {
		fb.begin = 0;
		fb.end = kv_end;
	}
	return true;
}

/*
 * One tile of K and V (positions p0 .. p0 + BN - 1 of kv head blockIdx.x %
 * n_kv_heads) into shared memory at kd and vd by cp.async, NTHR threads; 16-byte
 * chunk ch of position row r lands at byte off(r, ch). Positions at or past end
 * are zeros (their scores are masked; zero V keeps 0 * NaN out of P V).
 * LK, LV: load K, V (one of them alone for pipelines that stagger them).
 */
template <int HD, int BN, int NTHR, bool LK = true, bool LV = true, class Off>
static __device__ __forceinline__ void fa_load_kv(const struct kc_attn_args &a,
						  const struct fa_block &fb, int32_t p0,
						  uint32_t kd, uint32_t vd, Off off)
{
	constexpr int CPR = HD / 8; /* 16-byte chunks per row */
	const uint32_t pt = a.page_tokens, kvh = blockIdx.x % a.n_kv_heads;
	const int pt_sh = pt & (pt - 1) ? -1 : __ffs((int)pt) - 1; /* pages of 2^k: shifts */
	const uint64_t k_off = a.layer_off + (uint64_t)kvh * pt * HD;
	const uint64_t v_off = k_off + (uint64_t)a.n_kv_heads * pt * HD;
	const bf16 *kvb = (const bf16 *)a.kv_base;

#pragma unroll
	for (int i = 0; i < BN * CPR / NTHR; i++) {
		const int c = threadIdx.x + i * NTHR, r = c / CPR, ch = c % CPR;
		const int32_t p = p0 + r;
		const bf16 *ks = kvb, *vs = kvb;
		bool ok = false;

		if (p < fb.end) {
			const int32_t blk = pt_sh >= 0 ? p >> pt_sh : p / (int32_t)pt;
			const int32_t pg = fb.bt[blk];

			if (pg < 0 || (uint32_t)pg >= a.n_pages) {
				set_err(a.err, KC_ERR_PAGE);
			} else {
				const uint64_t base = (uint64_t)pg * a.page_elems +
						      (uint64_t)(p - blk * (int32_t)pt) * HD + ch * 8;

				ks = kvb + base + k_off;
				vs = kvb + base + v_off;
				ok = true;
			}
		}
		if (LK)
			cp_async16(kd + off(r, ch), ks, ok);
		if (LV)
			cp_async16(vd + off(r, ch), vs, ok);
	}
}

/* The block's BM rows of Q into shared memory at qd (chunk ch of row r at
 * off(r, ch)); rows of no token are zeros. */
template <int HD, int BM, int NTHR, class Off>
static __device__ __forceinline__ void fa_load_q(const struct kc_attn_args &a, const int *sm_tok,
						 const int *sm_head, uint32_t qd, Off off)
{
	constexpr int CPR = HD / 8;
	const bf16 *qb = (const bf16 *)a.q;

#pragma unroll
	for (int i = 0; i < BM * CPR / NTHR; i++) {
		const int c = threadIdx.x + i * NTHR, r = c / CPR, ch = c % CPR, tok = sm_tok[r];
		const bf16 *src = tok >= 0 ? qb + ((size_t)tok * a.n_heads + sm_head[r]) * HD + ch * 8
					   : qb;

		cp_async16(qd + off(r, ch), src, tok >= 0);
	}
}

/*
 * The end of a warp's m16 tile of rows ra and rb = ra + 8 (O in the m16n8 C
 * layout of DT n8 tiles, the rows' maxima and this lane's share of their
 * sums): unsplit, O / l in bf16 into out; split, the fp32 partials (O, m, l)
 * of this split into a.part.
 */
template <int HD>
static __device__ __forceinline__ void fa_store(const struct kc_attn_args &a, const float (&o)[HD / 8][4],
						float m_a, float m_b, float la, float lb, int ra,
						const int *sm_tok, const int *sm_head)
{
	constexpr int DT = HD / 8;
	const int t4 = threadIdx.x & 3, rb = ra + 8;
	const int tok_a = sm_tok[ra], tok_b = sm_tok[rb];

	la += __shfl_xor_sync(0xffffffffu, la, 1);
	la += __shfl_xor_sync(0xffffffffu, la, 2);
	lb += __shfl_xor_sync(0xffffffffu, lb, 1);
	lb += __shfl_xor_sync(0xffffffffu, lb, 2);
	if (gridDim.y == 1) {
		const float inv_a = la > 0.0f ? 1.0f / la : 0.0f;
		const float inv_b = lb > 0.0f ? 1.0f / lb : 0.0f;
		uint32_t *oa = tok_a < 0 ? NULL
					 : (uint32_t *)a.out +
						   (((size_t)tok_a * a.n_heads + sm_head[ra]) * HD) / 2 + t4;
		uint32_t *ob = tok_b < 0 ? NULL
					 : (uint32_t *)a.out +
						   (((size_t)tok_b * a.n_heads + sm_head[rb]) * HD) / 2 + t4;

#pragma unroll
		for (int j = 0; j < DT; j++) {
			if (oa)
				oa[j * 4] = pack_bf16(o[j][0] * inv_a, o[j][1] * inv_a);
			if (ob)
				ob[j * 4] = pack_bf16(o[j][2] * inv_b, o[j][3] * inv_b);
		}
	} else {
		const size_t row_f = HD + 2, split = blockIdx.y;
		float *pa = tok_a < 0 ? NULL
				      : a.part + ((split * a.n_tokens + tok_a) * a.n_heads +
						  sm_head[ra]) * row_f;
		float *pb = tok_b < 0 ? NULL
				      : a.part + ((split * a.n_tokens + tok_b) * a.n_heads +
						  sm_head[rb]) * row_f;

#pragma unroll
		for (int j = 0; j < DT; j++) {
			if (pa)
				*(float2 *)(pa + j * 8 + 2 * t4) = make_float2(o[j][0], o[j][1]);
			if (pb)
				*(float2 *)(pb + j * 8 + 2 * t4) = make_float2(o[j][2], o[j][3]);
		}
		if (!t4) {
			if (pa) {
				pa[HD] = m_a;
				pa[HD + 1] = la;
			}
			if (pb) {
				pb[HD] = m_b;
				pb[HD + 1] = lb;
			}
		}
	}
}

/*
 * mma.sync kernel, 4 warps. MT: m16 tiles of rows per warp. At MT = 1 a warp
 * keeps its Q fragments in registers; at MT = 2 (32 rows a warp, 128 a
 * block) every K and V fragment read from shared memory feeds two MMAs, and
 * Q fragments are read from shared memory at each use instead (the registers
 * go to the second tile's O and scores).
 */
template <int HD, int MT>
static __global__ void __launch_bounds__(MMA_NT)
attn_mma_kernel(const struct kc_attn_args a)
{
	constexpr int BM = 64 * MT;        /* query rows per block */
	constexpr int BN = mma_bn(HD, MT); /* KV positions per tile */
	constexpr int LD = HD + 8;         /* shared row stride, bf16 */
	constexpr int NTL = BN / 8;        /* n8 tiles of S */
	constexpr int DT = HD / 8;         /* n8 tiles of O */
	constexpr int QR = MT == 1 ? HD / 16 : 1; /* Q fragments kept in registers */
	extern __shared__ __align__(16) bf16 mma_smem[];
	__shared__ int sm_tok[BM], sm_head[BM], sm_lim[BM];
	bf16 *sq = mma_smem, *sk = sq + BM * LD, *sv = sk + 2 * BN * LD;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int g = lane >> 2, t4 = lane & 3;
	const auto off = [](int r, int ch) { return (uint32_t)(r * LD + ch * 8) * 2; };
	struct fa_block fb;
	int32_t wlim, wmin;

	if (!fa_block_rows<BM, BN, MMA_NT>(a, sm_tok, sm_head, sm_lim, fb))
		return;
	{
		int wl = -1, wm = INT32_MAX;

#pragma unroll
		for (int t = 0; t < MT; t++) {
			const int32_t la = sm_lim[warp * 16 * MT + t * 16 + g];
			const int32_t lb = sm_lim[warp * 16 * MT + t * 16 + g + 8];

			wl = max(wl, max(la, lb));
			wm = min(wm, min(la, lb));
		}
		wlim = warp_max_int(wl);
		wmin = -warp_max_int(-wm);
	}

	const int32_t begin = fb.begin, end = fb.end;
	float o[MT][DT][4], m_a[MT], m_b[MT], l_a[MT], l_b[MT];
	uint32_t qf[QR][4];
	const float sl2 = a.scale * KC_LOG2E;
	/* Q fragments of tile t at k step kk: lanes 0-15 rows 0-15 at column k,
	 * 16-31 at k + 8. */
	const uint32_t qa = smem_addr(sq + (warp * 16 * MT + (lane & 15)) * LD + (lane >> 4) * 8);

#pragma unroll
	for (int t = 0; t < MT; t++) {
		m_a[t] = m_b[t] = -INFINITY;
		l_a[t] = l_b[t] = 0.0f;
#pragma unroll
		for (int j = 0; j < DT; j++)
			o[t][j][0] = o[t][j][1] = o[t][j][2] = o[t][j][3] = 0.0f;
	}
	if (begin < end) {
		fa_load_q<HD, BM, MMA_NT>(a, sm_tok, sm_head, smem_addr(sq), off);
		fa_load_kv<HD, BN, MMA_NT>(a, fb, begin, smem_addr(sk), smem_addr(sv), off);
	}
	cp_async_commit();

	int buf = 0;

	for (int32_t p0 = begin; p0 < end; p0 += BN, buf ^= 1) {
		cp_async_wait_all();
		__syncthreads(); /* tile p0 (and Q) landed; buffer buf ^ 1 is free */
		if (p0 + BN < end)
			fa_load_kv<HD, BN, MMA_NT>(a, fb, p0 + BN, smem_addr(sk + (buf ^ 1) * BN * LD),
						   smem_addr(sv + (buf ^ 1) * BN * LD), off);
		cp_async_commit();
		if (MT == 1 && p0 == begin) {
#pragma unroll
			for (int kk = 0; kk < QR; kk++)
				ldsm_x4(qa + kk * 32, qf[kk]);
		}
		if (p0 > wlim)
			continue; /* no row of this warp sees the tile (warp-uniform) */

		const bf16 *kt = sk + buf * BN * LD, *vt = sv + buf * BN * LD;
		float sc[MT][NTL][4];

#pragma unroll
		for (int t = 0; t < MT; t++)
#pragma unroll
			for (int j = 0; j < NTL; j++)
				sc[t][j][0] = sc[t][j][1] = sc[t][j][2] = sc[t][j][3] = 0.0f;
		/* S = Q K^T. x4 of K: lanes 0-7 positions 0-7 at d, 8-15 the same
		 * at d + 8, 16-31 positions 8-15: b0 b1 of two n8 tiles. */
		{
			const uint32_t ka = smem_addr(kt + ((lane & 7) + ((lane >> 4) << 3)) * LD +
						      ((lane >> 3) & 1) * 8);

#pragma unroll
			for (int kk = 0; kk < HD / 16; kk++) {
				uint32_t qm[MT][4];

#pragma unroll
				for (int t = 0; t < MT; t++) {
					if constexpr (MT == 1)
#pragma unroll
						for (int e = 0; e < 4; e++)
							qm[t][e] = qf[kk][e];
					else
						ldsm_x4(qa + (t * 16 * LD + kk * 16) * 2, qm[t]);
				}
#pragma unroll
				for (int np = 0; np < NTL / 2; np++) {
					uint32_t b[4];

					ldsm_x4(ka + (np * 16 * LD + kk * 16) * 2, b);
#pragma unroll
					for (int t = 0; t < MT; t++) {
						mma_bf16(sc[t][2 * np], qm[t], b[0], b[1]);
						mma_bf16(sc[t][2 * np + 1], qm[t], b[2], b[3]);
					}
				}
			}
		}
		/* Scale, mask (not where every row of the warp sees the whole
		 * tile: all but the last tiles of a long context), then the online
		 * softmax and O += P V (cuda_mma.cuh). */
#pragma unroll
		for (int t = 0; t < MT; t++) {
			if (p0 + BN <= end && p0 + BN - 1 <= wmin) {
#pragma unroll
				for (int j = 0; j < NTL; j++)
#pragma unroll
					for (int e = 0; e < 4; e++)
						sc[t][j][e] *= sl2;
			} else {
				/* this lane's rows' limits, from shared memory (registers
				 * are short at head_dim 128 with two tiles) */
				fa_mask<NTL>(sc[t], p0, t4, sm_lim[warp * 16 * MT + t * 16 + g],
					     sm_lim[warp * 16 * MT + t * 16 + g + 8], end, sl2);
			}
			fa_softmax<NTL, DT>(sc[t], o[t], m_a[t], m_b[t], l_a[t], l_b[t]);
		}
		fa_pv_mt<MT, NTL, DT, LD>(sc, vt, o);
	}

#pragma unroll
	for (int t = 0; t < MT; t++)
		fa_store<HD>(a, o[t], m_a[t], m_b[t], l_a[t], l_b[t], warp * 16 * MT + t * 16 + g,
			     sm_tok, sm_head);
}

/*
 * wgmma kernel (sm_90a), 128 rows a block: two warpgroups of 64 rows each
 * share every K/V tile of BN positions. Q, K and V sit in shared memory in
 * the 128-byte swizzle (cuda_wgmma.cuh), K and V in ST stages by cp.async
 * (wg_bn, wg_st: by head_dim). Per tile and warpgroup: S = Q K^T by HD / 16
 * wgmma m64nBNk16 from shared memory (both K-major); each warp then masks
 * and runs the online softmax on its 16 rows (the wgmma accumulator of a
 * warp is the m16n8 C layout of mma.sync, so fa_mask and fa_softmax serve
 * unchanged); P in bf16 from those registers is the A operand of BN / 16
 * wgmma m64nHDk16 with V from shared memory (MN-major): O += P V. The two
 * warpgroups interleave on the tensor cores: one's softmax runs while the
 * other's MMAs do.
 */
#define WG_NT 256

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Limits of the warpgroup whose 64 rows start at r0: glim, its last row's
 * (uniform over its 4 warps: wgmma is collective), and wmin, the first of
 * this warp's rows at row0 (this lane's rows row0 + g, row0 + g + 8). */
static __device__ __forceinline__ void wg_lims(const int *sm_lim, int r0, int row0, int32_t &glim,
					       int32_t &wmin)
{
	const int lane = threadIdx.x & 31, g = lane >> 2;
	const int32_t la = sm_lim[row0 + g], lb = sm_lim[row0 + g + 8];

	glim = warp_max_int(max(sm_lim[r0 + lane], sm_lim[r0 + 32 + lane]));
	wmin = -warp_max_int(-min(la, lb));
}

/* Issue S = Q K^T for a warpgroup's 64 rows: k steps of 16 along head_dim,
 * 32 bytes apart inside an atom, atoms BM (Q: its rows from qw) or BN (K)
 * rows of 128 bytes apart. Committed, not waited for. */
template <int HD, int BM, int BN>
static __device__ __forceinline__ void wg_qk(float (&sc)[BN / 8][4], uint32_t qw, uint32_t kt)
{
	wg_fence();
#pragma unroll
	for (int kk = 0; kk < HD / 16; kk++)
		wgmma_ss<BN>(sc, wg_desc(qw + (kk >> 2) * BM * 128 + (kk & 3) * 32, 16, 1024),
			     wg_desc(kt + (kk >> 2) * BN * 128 + (kk & 3) * 32, 16, 1024), kk > 0);
	wg_commit();
}

/* A warp's scores of the tile at p0 to probabilities: scaled to base 2, masked
 * unless every row of the warp (its first: wmin) sees the whole tile, then the
 * online softmax (rows ra and ra + 8 of this lane, t4 = lane & 3). */
template <int HD, int BN>
static __device__ __forceinline__ void wg_softmax(float (&sc)[BN / 8][4], float (&o)[HD / 8][4],
						  float &m_a, float &m_b, float &l_a, float &l_b,
						  int32_t p0, int32_t end, int32_t wmin, int t4,
						  const int *sm_lim, int ra, float sl2)
{
	if (p0 + BN <= end && p0 + BN - 1 <= wmin) {
#pragma unroll
		for (int j = 0; j < BN / 8; j++)
#pragma unroll
			for (int e = 0; e < 4; e++)
				sc[j][e] *= sl2;
	} else {
		fa_mask<BN / 8>(sc, p0, t4, sm_lim[ra], sm_lim[ra + 8], end, sl2);
	}
	fa_softmax<BN / 8, HD / 8>(sc, o, m_a, m_b, l_a, l_b);
}

/* O += P V, waited for: k steps of 16 positions (2048 bytes of V apart), V's
 * atoms along head_dim BN rows of 128 bytes apart (LBO). */
template <int HD, int BN>
static __device__ __forceinline__ void wg_pv(const float (&sc)[BN / 8][4], float (&o)[HD / 8][4],
					     uint32_t vt)
{
	uint32_t pa[BN / 16][4];

#pragma unroll
	for (int kk = 0; kk < BN / 16; kk++)
		fa_p_frag(sc, kk, pa[kk]);
	wg_fence();
#pragma unroll
	for (int kk = 0; kk < BN / 16; kk++)
		wgmma_rs<HD>(o, pa[kk], wg_desc(vt + kk * 16 * 128, BN * 128, 1024), 1);
	wg_commit();
	wg_wait(o);
}
#endif

/* KV positions per tile (BN) and tiles in flight (ST stages) */
template <int HD, int BN, int ST>
static __global__ void __launch_bounds__(WG_NT, 1)
attn_wg_kernel(const struct kc_attn_args a)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int BM = 128, NTL = BN / 8, DT = HD / 8;
	constexpr uint32_t QB = BM * HD * 2, KB = BN * HD * 2; /* bytes of Q, of one K tile */
	extern __shared__ __align__(1024) unsigned char wg_smem[];
	__shared__ int sm_tok[BM], sm_head[BM], sm_lim[BM];
	const uint32_t sq = (smem_addr(wg_smem) + 1023) & ~1023u, sk = sq + QB, sv = sk + ST * KB;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
	const int g = lane >> 2, t4 = lane & 3, row0 = wg * 64 + (warp & 3) * 16;
	const auto q_off = [](int r, int ch) { return sw128_off(BM, r, ch); };
	const auto kv_off = [](int r, int ch) { return sw128_off(BN, r, ch); };
	struct fa_block fb;
	int32_t glim, wmin;

	if (!fa_block_rows<BM, BN, WG_NT>(a, sm_tok, sm_head, sm_lim, fb))
		return;
	wg_lims(sm_lim, wg * 64, row0, glim, wmin);

	const int32_t begin = fb.begin, end = fb.end;
	float o[DT][4], sc[NTL][4], m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
	const float sl2 = a.scale * KC_LOG2E;

#pragma unroll
	for (int j = 0; j < DT; j++)
		o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
#pragma unroll
	for (int j = 0; j < NTL; j++)
		sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
	if (begin < end)
		fa_load_q<HD, BM, WG_NT>(a, sm_tok, sm_head, sq, q_off);
	/* one cp.async group a tile, empty past the end: the first ST - 1 */
#pragma unroll
	for (int t = 0; t < ST - 1; t++) {
		if (begin + t * BN < end)
			fa_load_kv<HD, BN, WG_NT>(a, fb, begin + t * BN, sk + t * KB, sv + t * KB,
						  kv_off);
		cp_async_commit();
	}

	int buf = 0;

	for (int32_t p0 = begin; p0 < end; p0 += BN, buf = buf + 1 == ST ? 0 : buf + 1) {
		const int nb = buf == 0 ? ST - 1 : buf - 1; /* tile p0 + (ST - 1) BN's buffer */

		cp_async_wait<ST - 2>();
		fence_async_smem();
		__syncthreads(); /* tile p0 (and Q) landed; buffer nb (tile p0 - BN) is free */
		if (p0 + (ST - 1) * BN < end)
			fa_load_kv<HD, BN, WG_NT>(a, fb, p0 + (ST - 1) * BN, sk + nb * KB,
						  sv + nb * KB, kv_off);
		cp_async_commit();
		if (p0 > glim)
			continue; /* no row of this warpgroup sees the tile */

		wg_qk<HD, BM, BN>(sc, sq + wg * 64 * 128, sk + buf * KB);
		wg_wait(sc);
		wg_softmax<HD, BN>(sc, o, m_a, m_b, l_a, l_b, p0, end, wmin, t4, sm_lim, row0 + g,
				   sl2);
		wg_pv<HD, BN>(sc, o, sv + buf * KB);
	}
	fa_store<HD>(a, o, m_a, m_b, l_a, l_b, row0 + g, sm_tok, sm_head);
#else
	__trap(); /* built without sm_90a: kc_attn_mma_ok() refuses this path */
#endif
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/*
 * The warp-specialised kernel's K/V tiles by TMA, from the producer's first
 * warp: tile t (positions p0 .. p0 + BN - 1) into stage t % ST once both
 * consumers are done with tile t - ST, one box a page and 64-wide head_dim
 * atom of K and of V (ws_map's 4-D view of the pool: head_dim, the page's
 * positions, (layer x 2 + k_or_v) x n_kv_heads + head, page), which lands
 * in the 128-byte swizzle sw128_off gives. Lane i owns page i of the tile
 * (BN / page_tokens <= 16 of them): it reads that page's id for the next
 * tile while the current one is consumed, so a tile costs one block-table
 * round trip at most, and issues that page's copies. Pages wholly past the
 * end are not copied (the consumers zero V's rows there); a page id out of
 * range sets KC_ERR_PAGE and is not copied either: the phase counts only
 * the bytes asked for.
 */
template <int HD, int BN, int ST>
static __device__ __forceinline__ void ws_tma_tiles(const struct kc_attn_args &a,
						    const struct fa_block &fb, const void *map,
						    uint32_t sk, uint32_t sv, uint32_t full,
						    uint32_t empty)
{
	constexpr uint32_t KB = BN * HD * 2;
	const int32_t pt = (int32_t)a.page_tokens;
	const int32_t off = (int32_t)(threadIdx.x & 31) * pt; /* this lane's page, in the tile */
	const uint32_t kvh = blockIdx.x % a.n_kv_heads;
	const int32_t ck = (int32_t)(a.layer_off / ((uint64_t)pt * HD) + kvh);
	const int32_t cv = ck + (int32_t)a.n_kv_heads;
	const uint32_t page_bytes = (uint32_t)pt * 128; /* one atom of one page */
	/* the tile at p0 has this lane's page (not past the end) */
	const auto here_at = [&](int32_t p0) { return off < BN && p0 + off < fb.end; };
	int32_t pg = here_at(fb.begin) ? fb.bt[(fb.begin + off) / pt] : 0;
	int t = 0;

	for (int32_t p0 = fb.begin; p0 < fb.end; p0 += BN, t++) {
		const int s = t % ST;
		const bool here = here_at(p0);
		const bool ok = here && pg >= 0 && (uint32_t)pg < a.n_pages;
		const uint32_t n = __popc(__ballot_sync(~0u, ok));

		if (here && !ok)
			set_err(a.err, KC_ERR_PAGE);
		if (t >= ST)
			mbar_wait(empty + 8 * s, (uint32_t)(t / ST - 1) & 1);
		if ((threadIdx.x & 31) == 0)
			mbar_expect_tx(full + 8 * s, n * 2 * (HD / 64) * page_bytes);
		__syncwarp();
		if (ok) {
#pragma unroll
			for (int c = 0; c < HD / 64; c++) {
				tma_load_4d(sk + s * KB + c * BN * 128 + off * 128, map, c * 64, 0, ck,
					    pg, full + 8 * s);
				tma_load_4d(sv + s * KB + c * BN * 128 + off * 128, map, c * 64, 0, cv,
					    pg, full + 8 * s);
			}
		}
		/* the next tile's page, read while this one is consumed */
		if (here_at(p0 + BN))
			pg = fb.bt[(p0 + BN + off) / pt];
	}
}
#endif

/*
 * Warp-specialised wgmma kernel (sm_90a, FA3's layout), 128 rows a block,
 * three warpgroups: the first (the producer, 40 registers a thread) loads Q
 * by cp.async and the K/V tiles into ST stages, by TMA from its first warp
 * (ws_tma_tiles) or by cp.async from all of it, each stage's arrival
 * counted by its `full` mbarrier; the other two (the consumers, 232 registers) own
 * 64 rows each and run the arithmetic of attn_wg_kernel, each warp freeing
 * a stage through its `empty` mbarrier once its wgmma have read it. No block
 * barrier inside the loop: the consumers take turns to issue S = Q K^T
 * (named barriers 1 and 2), so that one's softmax runs while the other's
 * MMAs do (ping-pong) instead of both waiting on the tensor cores at once.
 */
#define WS_NT 384
#define WS_REGS_P 40  /* producer registers a thread */
#define WS_REGS_C 232 /* consumer: (168 x 384 - 40 x 128) / 256 */

template <int HD, int BN, int ST, bool TMA>
static __global__ void __launch_bounds__(WS_NT, 1)
attn_ws_kernel(const struct kc_attn_args a, const __grid_constant__ CUtensorMap kv_map)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int BM = 128, NTL = BN / 8, DT = HD / 8;
	constexpr uint32_t QB = BM * HD * 2, KB = BN * HD * 2; /* bytes of Q, of one K tile */
	extern __shared__ __align__(1024) unsigned char wg_smem[];
	__shared__ int sm_tok[BM], sm_head[BM], sm_lim[BM];
	__shared__ __align__(8) uint64_t bars[2 * ST + 1]; /* full[ST], empty[ST], Q */
	const uint32_t sq = (smem_addr(wg_smem) + 1023) & ~1023u, sk = sq + QB, sv = sk + ST * KB;
	const uint32_t full = smem_addr(bars), empty = full + 8 * ST, qfull = full + 16 * ST;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
	struct fa_block fb;

	if (tid == 0) {
		for (int s = 0; s < ST; s++) {
			mbar_init(full + 8 * s, TMA ? 1 : 128);
			mbar_init(empty + 8 * s, 8);
		}
		mbar_init(qfull, 128);
	}
	/* (its barrier makes the mbarriers' initialisation visible) */
	if (!fa_block_rows<BM, BN, WS_NT>(a, sm_tok, sm_head, sm_lim, fb))
		return;

	const int32_t begin = fb.begin, end = fb.end;

	if (wg == 0) {
		/* producer: Q, then tile t into stage t % ST once both consumers
		 * are done with tile t - ST; eight rows of a tile a pass, so
		 * that a thread keeps one page lookup live */
		regs_dec<WS_REGS_P>();
		if (begin < end) {
			fa_load_q<HD, BM, 128>(a, sm_tok, sm_head, sq,
					       [](int r, int ch) { return sw128_off(BM, r, ch); });
			cp_async_mbar_arrive(qfull);
		}
		if (TMA) {
			if (warp == 0)
				ws_tma_tiles<HD, BN, ST>(a, fb, &kv_map, sk, sv, full, empty);
			cp_async_wait_all();
			return;
		}
		int t = 0;

		for (int32_t p0 = begin; p0 < end; p0 += BN, t++) {
			const int s = t % ST;

			if (t >= ST)
				mbar_wait(empty + 8 * s, (uint32_t)(t / ST - 1) & 1);
#pragma unroll 4
			for (int i = 0; i < BN / 8; i++)
				fa_load_kv<HD, 8, 128>(a, fb, p0 + 8 * i, sk + s * KB, sv + s * KB,
						       [i](int r, int ch) {
							       return sw128_off(BN, r + 8 * i, ch);
						       });
			cp_async_mbar_arrive(full + 8 * s);
		}
		cp_async_wait_all(); /* nothing in flight past the thread's end */
		return;
	}

	regs_inc<WS_REGS_C>();
	const int cw = wg - 1; /* consumer 0 or 1 */
	const int g = lane >> 2, t4 = lane & 3, row0 = cw * 64 + (warp & 3) * 16;
	int32_t glim, wmin;

	wg_lims(sm_lim, cw * 64, row0, glim, wmin);

	float o[DT][4], sc[NTL][4], m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
	const float sl2 = a.scale * KC_LOG2E;

#pragma unroll
	for (int j = 0; j < DT; j++)
		o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
#pragma unroll
	for (int j = 0; j < NTL; j++)
		sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
	if (cw == 1)
		bar_arrive(1, 256); /* consumer 0 issues first */
	if (begin < end)
		mbar_wait(qfull, 0);

	int t = 0;

	for (int32_t p0 = begin; p0 < end; p0 += BN, t++) {
		const int s = t % ST;

		mbar_wait(full + 8 * s, (uint32_t)(t / ST) & 1);
		fence_async_smem(); /* the producer's cp.async writes, to wgmma */
		bar_sync(1 + cw, 256); /* this consumer's turn */
		if (p0 > glim) { /* no row of this consumer sees the tile */
			bar_arrive(2 - cw, 256);
			__syncwarp();
			if (lane == 0)
				mbar_arrive(empty + 8 * s);
			continue;
		}
		wg_qk<HD, BM, BN>(sc, sq + cw * 64 * 128, sk + s * KB);
		bar_arrive(2 - cw, 256); /* the other's turn */
		if (TMA && p0 + BN > end) {
			/* whole pages came: V's rows at or past the end to zeros
			 * (both consumers write the same zeros; K's are masked) */
			for (int i = tid & 127; i < (p0 + BN - end) * (HD / 8); i += 128) {
				const int r = end - p0 + i / (HD / 8), ch = i % (HD / 8);

				asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(
						     sv + s * KB + sw128_off(BN, r, ch)),
					     "r"(0)
					     : "memory");
			}
			fence_async_smem();
			bar_sync(3 + cw, 128);
		}
		wg_wait(sc);
		wg_softmax<HD, BN>(sc, o, m_a, m_b, l_a, l_b, p0, end, wmin, t4, sm_lim, row0 + g,
				   sl2);
		wg_pv<HD, BN>(sc, o, sv + s * KB);
		__syncwarp();
		if (lane == 0)
			mbar_arrive(empty + 8 * s); /* this warp is done with stage s */
	}
	if (cw == 0)
		bar_sync(1, 256); /* consumer 1's last arrival */
	fa_store<HD>(a, o, m_a, m_b, l_a, l_b, row0 + g, sm_tok, sm_head);
#else
	__trap(); /* built without sm_90a: kc_attn_mma_ok() refuses this path */
#endif
}

/* ------------------------------------------------------------ launchers */

/* The wgmma kernel's K/V tiles by head_dim (measured on an H100, engine-shaped
 * pools): 128 positions in two stages at 128 (64 positions in three: 8B
 * prefill attention 5.87 ms against 5.64), 64 in three at 64 (one block of
 * 115 registers and 65 KB: two an SM; 128 in two: 1B 1.65 ms against 1.24). */
static constexpr int wg_bn(int hd)
{
	return hd == 128 ? 128 : 64;
}

static constexpr int wg_st(int hd)
{
	return hd == 128 ? 2 : 3;
}

/* The warp-specialised kernel: head_dim 128 only, K/V tiles of 128
 * positions, ws_st stages (2 or 3: HEARTH_CUDA_ATTN_WS_ST, read at init);
 * K/V by TMA where encode_tiled is set (the driver has it and
 * HEARTH_CUDA_ATTN_WS_TMA is not 0) and the pool's pages suit (ws_tma_pages),
 * else by cp.async. */
static int ws_st = 2;

static encode_tiled_fn encode_tiled; /* from the driver, at init; NULL: no TMA */

/* TMA is on and suits pools of pt-position pages: 8 to 128 positions
 * dividing 128, so that a page's rows start 1024-aligned in the tile. */
static bool ws_tma_pages(uint32_t pt)
{
	return encode_tiled && pt >= 8 && pt <= 128 && 128 % pt == 0;
}

/*
 * The 4-D view of a's pool that ws_tma_tiles copies from (innermost first:
 * head_dim; the page's positions; (layer x 2 + k_or_v) x n_kv_heads + head,
 * kern_kv_offset's order; page), boxes of 64 x page_tokens in the 128-byte
 * swizzle. Encoded at each launch (a host call of a microsecond or so, and
 * no state shared between the reactors of several models). False where the
 * pages do not suit.
 */
static bool ws_map(const struct kc_attn_args *a, CUtensorMap *ret)
{
	const uint32_t pt = a->page_tokens, hd = a->head_dim;

	if (!ws_tma_pages(pt) || a->page_elems % ((uint64_t)pt * hd))
		return false;

	const cuuint64_t dim[4] = { hd, pt, a->page_elems / ((uint64_t)pt * hd), a->n_pages };
	const cuuint64_t stride[3] = { (cuuint64_t)hd * 2, (cuuint64_t)pt * hd * 2,
				       a->page_elems * 2 };
	const cuuint32_t box[4] = { 64, pt, 1, 1 }, es[4] = { 1, 1, 1, 1 };

	return encode_tiled(ret, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, (void *)a->kv_base, dim,
			    stride, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
			    CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
			    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* mt 1, 2: the mma.sync kernel with that many m16 tiles a warp; KC_MMA_WG:
 * the wgmma kernel; KC_MMA_WS: the warp-specialised one. */
static size_t mma_smem_bytes(uint32_t hd, uint32_t mt)
{
	if (mt == KC_MMA_WG) /* Q, the K and V tiles of every stage, 1 KB to align them */
		return (size_t)(128 + 2 * wg_bn((int)hd) * wg_st((int)hd)) * hd * sizeof(bf16) + 1024;
	if (mt == KC_MMA_WS)
		return (size_t)(128 + 2 * 128 * ws_st) * hd * sizeof(bf16) + 1024;
	return (size_t)(64 * mt + 4 * mma_bn((int)hd, (int)mt)) * (hd + 8) * sizeof(bf16);
}

/* The device runs sm_90a code (compute capability 9.0) and this file was
 * built for it; and the warp-specialised kernel's shared memory was granted.
 * Set by kc_attn_mma_init(). */
static int wg_ok, ws_ok;

extern "C" int kc_attn_mma_ok(uint32_t head_dim, uint32_t mt, size_t smem_optin)
{
	return (head_dim == 64 || head_dim == 128) &&
	       (mt == 1 || mt == 2 || (mt == KC_MMA_WG && wg_ok) ||
		(mt == KC_MMA_WS && ws_ok && head_dim == 128)) &&
	       mma_smem_bytes(head_dim, mt) <= smem_optin;
}

extern "C" int kc_attn_ws_tma(uint32_t page_tokens)
{
	return ws_ok && ws_tma_pages(page_tokens);
}

extern "C" uint32_t kc_attn_mma_rows(uint32_t mt)
{
	return mt == KC_MMA_WG || mt == KC_MMA_WS ? 128 : mt == 1 || mt == 2 ? 64 * mt : 0;
}

template <class K>
static int kernel_smem(K *kernel, size_t bytes, size_t smem_optin)
{
	return bytes <= smem_optin &&
	       cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
				    (int)bytes) != cudaSuccess;
}

/* The warp-specialised kernel of ST stages gets its shared memory (its TMA
 * instantiation too where encode_tiled is set); true when granted. */
template <int ST>
static bool ws_grant(size_t smem_optin)
{
	const size_t bytes = mma_smem_bytes(128, KC_MMA_WS);

	return !kernel_smem(attn_ws_kernel<128, 128, ST, false>, bytes, smem_optin) &&
	       (!encode_tiled || !kernel_smem(attn_ws_kernel<128, 128, ST, true>, bytes, smem_optin));
}

/* Launch it, with K/V by TMA where ws_map gives a tensor map. */
template <int ST>
static void ws_launch(const struct kc_attn_args *a, dim3 grid, size_t smem, cudaStream_t st)
{
	CUtensorMap map;

	if (ws_map(a, &map)) {
		attn_ws_kernel<128, 128, ST, true><<<grid, WS_NT, smem, st>>>(*a, map);
	} else {
		memset(&map, 0, sizeof(map));
		attn_ws_kernel<128, 128, ST, false><<<grid, WS_NT, smem, st>>>(*a, map);
	}
}

extern "C" int kc_attn_mma_init(size_t smem_optin)
{
#if defined(KC_WGMMA)
	const char *st = getenv("HEARTH_CUDA_ATTN_WS_ST");
	const char *tma = getenv("HEARTH_CUDA_ATTN_WS_TMA");

	ws_st = st && !strcmp(st, "3") ? 3 : 2;
	if (!(tma && !strcmp(tma, "0")))
		encode_tiled = (encode_tiled_fn)kc_tma_encoder();
	wg_ok = kc_wgmma_device();
#endif
	if (kernel_smem(attn_mma_kernel<64, 1>, mma_smem_bytes(64, 1), smem_optin) ||
	    kernel_smem(attn_mma_kernel<128, 1>, mma_smem_bytes(128, 1), smem_optin) ||
	    kernel_smem(attn_mma_kernel<64, 2>, mma_smem_bytes(64, 2), smem_optin) ||
	    kernel_smem(attn_mma_kernel<128, 2>, mma_smem_bytes(128, 2), smem_optin) ||
	    (wg_ok &&
	     (kernel_smem(attn_wg_kernel<64, wg_bn(64), wg_st(64)>, mma_smem_bytes(64, KC_MMA_WG),
			  smem_optin) ||
	      kernel_smem(attn_wg_kernel<128, wg_bn(128), wg_st(128)>,
			  mma_smem_bytes(128, KC_MMA_WG), smem_optin)))) {
		(void)cudaGetLastError();
		return -EIO;
	}
	/* three stages fill the 227 KB of a block to the byte: where the
	 * device refuses them, the kernel is left out */
	ws_ok = wg_ok && mma_smem_bytes(128, KC_MMA_WS) <= smem_optin &&
		(ws_st == 3 ? ws_grant<3>(smem_optin) : ws_grant<2>(smem_optin));
	(void)cudaGetLastError();
	return 0;
}

extern "C" int kc_attention_mma(const struct kc_attn_args *a, uint32_t mt, uint32_t n_splits,
				int plan, cudaStream_t st)
{
	const uint32_t group = a->n_heads / a->n_kv_heads, bm = kc_attn_mma_rows(mt);
	const uint64_t rows = (uint64_t)a->n_tokens * group;
	const uint64_t tiles = (rows + bm - 1) / bm +
			       (a->n_seqs < a->n_tokens ? a->n_seqs : a->n_tokens);
	const uint64_t blocks = tiles * a->n_kv_heads;
	const size_t smem = mma_smem_bytes(a->head_dim, mt);
	dim3 grid;
	int r;

	if ((a->head_dim != 64 && a->head_dim != 128) ||
	    !kc_attn_mma_rows(mt) || (mt == KC_MMA_WG && !wg_ok) || (mt == KC_MMA_WS && !ws_ok) ||
	    (mt == KC_MMA_WS && a->head_dim != 128) || !n_splits ||
	    n_splits > KC_DEC_MAX_SPLITS || (n_splits > 1 && !a->part) ||
	    rows > 0x7fffffffu || blocks > 0x7fffffffu ||
	    ((uintptr_t)a->q | (uintptr_t)a->kv_base) % 16)
		return -EINVAL;
	if (plan && (r = kc_attn_plan(a, group, bm, st)) < 0)
		return r;
	grid = dim3((unsigned)blocks, n_splits);
	if (mt == KC_MMA_WS && ws_st == 3)
		ws_launch<3>(a, grid, smem, st);
	else if (mt == KC_MMA_WS)
		ws_launch<2>(a, grid, smem, st);
	else if (mt == KC_MMA_WG && a->head_dim == 64)
		attn_wg_kernel<64, wg_bn(64), wg_st(64)><<<grid, WG_NT, smem, st>>>(*a);
	else if (mt == KC_MMA_WG)
		attn_wg_kernel<128, wg_bn(128), wg_st(128)><<<grid, WG_NT, smem, st>>>(*a);
	else if (a->head_dim == 64 && mt == 1)
		attn_mma_kernel<64, 1><<<grid, MMA_NT, smem, st>>>(*a);
	else if (a->head_dim == 64)
		attn_mma_kernel<64, 2><<<grid, MMA_NT, smem, st>>>(*a);
	else if (mt == 1)
		attn_mma_kernel<128, 1><<<grid, MMA_NT, smem, st>>>(*a);
	else
		attn_mma_kernel<128, 2><<<grid, MMA_NT, smem, st>>>(*a);
	if (cudaGetLastError() != cudaSuccess)
		return -EIO;
	return n_splits > 1 ? kc_attn_combine(a, n_splits, st) : 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, paged causal attention on tensor cores (flash attention 2
 * with warp-level mma.sync m16n8k16 bf16 -> fp32) for steps whose sequences
 * bring several tokens: prefill chunks, appends, mixed batches. head_dim 64
 * and 128, any GQA group; the tile kernels of cuda_attention.cu serve the
 * other shapes, attn_decode_kernel one token per sequence.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>

#include "cuda_device.cuh"
#include "cuda_internal.h"
#include "cuda_mma.cuh"

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
/*
 * Block (tile x kv head, split). Tiles come from the plan (a.tile_start, 64 x
 * MT rows of group x tokens each) and run last first, the kv heads of a tile
 * side by side: in a long prefill the last tiles see the most positions, so
 * they start in the first wave and the short ones fill the tail. With
 * n_splits > 1 each block takes its share of its own KV length (the rows'
 * largest position + 1, in whole tiles) and writes fp32 partials (O, m, l)
 * that attn_combine_kernel merges.
 *
 * MT: m16 tiles of rows per warp. At MT = 1 a warp keeps its Q fragments in
 * registers; at MT = 2 (32 rows a warp, 128 a block) every K and V fragment
 * read from shared memory feeds two MMAs, and Q fragments are read from
 * shared memory at each use instead (the registers go to the second tile's O
 * and scores).
 */
template <int HD, int MT>
static __global__ void __launch_bounds__(MMA_NT)
attn_mma_kernel(const struct kc_attn_args a)
{
	constexpr int BM = 64 * MT;        /* query rows per block */
	constexpr int BN = mma_bn(HD, MT); /* KV positions per tile */
	constexpr int LD = HD + 8;         /* shared row stride, bf16 */
	constexpr int CPR = HD / 8;        /* 16-byte chunks per row */
	constexpr int NTL = BN / 8;        /* n8 tiles of S */
	constexpr int DT = HD / 8;         /* n8 tiles of O */
	constexpr int QR = MT == 1 ? HD / 16 : 1; /* Q fragments kept in registers */
	extern __shared__ __align__(16) bf16 mma_smem[];
	__shared__ int sm_tok[BM], sm_head[BM], sm_lim[BM];
	bf16 *sq = mma_smem, *sk = sq + BM * LD, *sv = sk + 2 * BN * LD;
	const uint32_t group = a.n_heads / a.n_kv_heads, pt = a.page_tokens;
	const uint32_t kvh = blockIdx.x % a.n_kv_heads, split = blockIdx.y, n_splits = gridDim.y;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int g = lane >> 2, t4 = lane & 3;
	const int32_t *ts = a.tile_start;
	const uint32_t n_tiles = (uint32_t)ts[a.n_seqs];
	const bf16 *kvb = (const bf16 *)a.kv_base, *qb = (const bf16 *)a.q;
	const uint64_t k_off = a.layer_off + (uint64_t)kvh * pt * HD;
	const uint64_t v_off = k_off + (uint64_t)a.n_kv_heads * pt * HD;
	const int pt_sh = pt & (pt - 1) ? -1 : __ffs((int)pt) - 1; /* pages of 2^k: shifts */
	uint32_t s, tile;
	int32_t t0, ctx, begin, end, kv_end, wlim, wmin;
	int64_t r0, n_rows;
	const int32_t *bt;
	bool ctx_ok;

	if (blockIdx.x / a.n_kv_heads >= n_tiles)
		return; /* the grid is an upper bound on the tiles */
	tile = n_tiles - 1 - blockIdx.x / a.n_kv_heads;
	s = tile_seq(ts, a.n_seqs, tile);
	t0 = a.seq_start[s];
	n_rows = (int64_t)(a.seq_start[s + 1] - t0) * group;
	r0 = (int64_t)(tile - (uint32_t)ts[s]) * BM;
	ctx = a.ctx_len[s];
	ctx_ok = ctx >= 0 && (uint64_t)ctx <= (uint64_t)a.max_blocks * pt;
	bt = a.block_table + (size_t)s * a.max_blocks;

	for (int i = tid; i < BM; i += MMA_NT) {
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
	{
		int mx = -1, wl = -1, wm = INT32_MAX;

		for (int i = lane; i < BM; i += 32)
			mx = max(mx, sm_lim[i]);
		kv_end = warp_max_int(mx) + 1;
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
	if (n_splits > 1) {
		const int32_t len = (int32_t)((((uint32_t)kv_end + n_splits - 1) / n_splits +
					       BN - 1) & ~(uint32_t)(BN - 1));

		begin = (int32_t)split * len;
		end = split + 1 == n_splits ? kv_end : min(kv_end, begin + len);
	} else {
		begin = 0;
		end = kv_end;
	}

	/* One tile of K and V (positions p0 .. p0 + 63) into buffer b; positions
	 * at or past end are zeros (their scores are masked; zero V keeps
	 * 0 * NaN out of the P V product). */
	auto load_kv = [&](int32_t p0, int b) {
		const uint32_t kd = smem_addr(sk + b * BN * LD), vd = smem_addr(sv + b * BN * LD);

#pragma unroll
		for (int i = 0; i < BN * CPR / MMA_NT; i++) {
			const int c = tid + i * MMA_NT, r = c / CPR, ch = c % CPR;
			const int32_t p = p0 + r;
			const bf16 *ks = kvb, *vs = kvb;
			bool ok = false;

			if (p < end) {
				const int32_t blk = pt_sh >= 0 ? p >> pt_sh : p / (int32_t)pt;
				const int32_t pg = bt[blk];

				if (pg < 0 || (uint32_t)pg >= a.n_pages) {
					set_err(a.err, KC_ERR_PAGE);
				} else {
					const uint64_t base = (uint64_t)pg * a.page_elems +
							      (uint64_t)(p - blk * (int32_t)pt) * HD +
							      ch * 8;

					ks = kvb + base + k_off;
					vs = kvb + base + v_off;
					ok = true;
				}
			}
			cp_async16(kd + (uint32_t)(r * LD + ch * 8) * 2, ks, ok);
			cp_async16(vd + (uint32_t)(r * LD + ch * 8) * 2, vs, ok);
		}
	};

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
		const uint32_t qd = smem_addr(sq);

#pragma unroll
		for (int i = 0; i < BM * CPR / MMA_NT; i++) {
			const int c = tid + i * MMA_NT, r = c / CPR, ch = c % CPR, tok = sm_tok[r];
			const bf16 *src = tok >= 0 ? qb + ((size_t)tok * a.n_heads + sm_head[r]) * HD +
							     ch * 8
						   : qb;

			cp_async16(qd + (uint32_t)(r * LD + ch * 8) * 2, src, tok >= 0);
		}
		load_kv(begin, 0);
	}
	cp_async_commit();

	int buf = 0;

	for (int32_t p0 = begin; p0 < end; p0 += BN, buf ^= 1) {
		cp_async_wait_all();
		__syncthreads(); /* tile p0 (and Q) landed; buffer buf ^ 1 is free */
		if (p0 + BN < end)
			load_kv(p0 + BN, buf ^ 1);
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
	for (int t = 0; t < MT; t++) {
		float la = l_a[t], lb = l_b[t];

		la += __shfl_xor_sync(0xffffffffu, la, 1);
		la += __shfl_xor_sync(0xffffffffu, la, 2);
		lb += __shfl_xor_sync(0xffffffffu, lb, 1);
		lb += __shfl_xor_sync(0xffffffffu, lb, 2);

		const int ra = warp * 16 * MT + t * 16 + g, rb = ra + 8;
		const int tok_a = sm_tok[ra], tok_b = sm_tok[rb];

		if (n_splits == 1) {
			const float inv_a = la > 0.0f ? 1.0f / la : 0.0f;
			const float inv_b = lb > 0.0f ? 1.0f / lb : 0.0f;
			uint32_t *oa = tok_a < 0 ? NULL
						 : (uint32_t *)a.out + (((size_t)tok_a * a.n_heads +
									 sm_head[ra]) * HD) / 2 + t4;
			uint32_t *ob = tok_b < 0 ? NULL
						 : (uint32_t *)a.out + (((size_t)tok_b * a.n_heads +
									 sm_head[rb]) * HD) / 2 + t4;

#pragma unroll
			for (int j = 0; j < DT; j++) {
				if (oa)
					oa[j * 4] = pack_bf16(o[t][j][0] * inv_a, o[t][j][1] * inv_a);
				if (ob)
					ob[j * 4] = pack_bf16(o[t][j][2] * inv_b, o[t][j][3] * inv_b);
			}
		} else {
			const size_t row_f = HD + 2;
			float *pa = tok_a < 0 ? NULL
					      : a.part + (((size_t)split * a.n_tokens + tok_a) *
								  a.n_heads + sm_head[ra]) * row_f;
			float *pb = tok_b < 0 ? NULL
					      : a.part + (((size_t)split * a.n_tokens + tok_b) *
								  a.n_heads + sm_head[rb]) * row_f;

#pragma unroll
			for (int j = 0; j < DT; j++) {
				if (pa)
					*(float2 *)(pa + j * 8 + 2 * t4) =
						make_float2(o[t][j][0], o[t][j][1]);
				if (pb)
					*(float2 *)(pb + j * 8 + 2 * t4) =
						make_float2(o[t][j][2], o[t][j][3]);
			}
			if (!t4) {
				if (pa) {
					pa[HD] = m_a[t];
					pa[HD + 1] = la;
				}
				if (pb) {
					pb[HD] = m_b[t];
					pb[HD + 1] = lb;
				}
			}
		}
	}
}

/* ------------------------------------------------------------ launchers */

static size_t mma_smem_bytes(uint32_t hd, uint32_t mt)
{
	return (size_t)(64 * mt + 4 * mma_bn((int)hd, (int)mt)) * (hd + 8) * sizeof(bf16);
}

extern "C" int kc_attn_mma_ok(uint32_t head_dim, uint32_t mt, size_t smem_optin)
{
	return (head_dim == 64 || head_dim == 128) && (mt == 1 || mt == 2) &&
	       mma_smem_bytes(head_dim, mt) <= smem_optin;
}

extern "C" uint32_t kc_attn_mma_rows(uint32_t mt)
{
	return 64 * mt;
}

template <int HD, int MT>
static int mma_attr(size_t smem_optin)
{
	const size_t b = mma_smem_bytes(HD, MT);

	return b <= smem_optin && cudaFuncSetAttribute(attn_mma_kernel<HD, MT>,
						       cudaFuncAttributeMaxDynamicSharedMemorySize,
						       (int)b) != cudaSuccess;
}

extern "C" int kc_attn_mma_init(size_t smem_optin)
{
	if (mma_attr<64, 1>(smem_optin) || mma_attr<128, 1>(smem_optin) ||
	    mma_attr<64, 2>(smem_optin) || mma_attr<128, 2>(smem_optin)) {
		(void)cudaGetLastError();
		return -EIO;
	}
	return 0;
}

extern "C" int kc_attention_mma(const struct kc_attn_args *a, uint32_t mt, uint32_t n_splits,
				cudaStream_t st)
{
	const uint32_t group = a->n_heads / a->n_kv_heads, bm = kc_attn_mma_rows(mt);
	const uint64_t rows = (uint64_t)a->n_tokens * group;
	const uint64_t tiles = (rows + bm - 1) / bm +
			       (a->n_seqs < a->n_tokens ? a->n_seqs : a->n_tokens);
	const uint64_t blocks = tiles * a->n_kv_heads;
	const size_t smem = mma_smem_bytes(a->head_dim, mt);
	dim3 grid;
	int r;

	if ((a->head_dim != 64 && a->head_dim != 128) || (mt != 1 && mt != 2) || !n_splits ||
	    n_splits > KC_DEC_MAX_SPLITS || (n_splits > 1 && !a->part) ||
	    rows > 0x7fffffffu || blocks > 0x7fffffffu ||
	    ((uintptr_t)a->q | (uintptr_t)a->kv_base) % 16)
		return -EINVAL;
	if ((r = kc_attn_plan(a, group, bm, st)) < 0)
		return r;
	grid = dim3((unsigned)blocks, n_splits);
	if (a->head_dim == 64 && mt == 1)
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

/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, decode attention (flash decoding): steps whose sequences bring
 * one new token each. One launch per layer, a block per (split, kv head,
 * sequence); the q heads of the kv head's group share every K/V read (GQA).
 * With several splits each block writes fp32 partials (O, m, l) and the last
 * block of its (sequence, kv head) to finish merges them (a counter per pair
 * at the start of the workspace, returned to zero by that block), so a graph
 * replays the whole of it for any context.
 *
 * Two kernels: attn_dec_mma_kernel (tensor cores, head_dim 64 and 128, any
 * group) and attn_decode_kernel (CUDA cores, head_dim 32 as well, groups up
 * to 8), the fallback and the reference it was measured against.
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
 * Element d of (token tok, q head h) from its split's softmax state (max mx,
 * sum sum_l, weighted value sum_o): the output in bf16 when the KV length is
 * one split; else the split's partial row (values, then max and sum, written
 * by d == 0), which dec_merge_splits() combines.
 */
template <int HD>
static __device__ __forceinline__ void dec_emit(const struct kc_attn_args &a, uint32_t split,
						uint32_t nsp, int32_t tok, uint32_t h, uint32_t d,
						float mx, float sum_l, float sum_o)
{
	const size_t row_f = HD + 2;

	if (nsp == 1) {
		((bf16 *)a.out)[((size_t)tok * a.n_heads + h) * HD + d] =
			__float2bfloat16_rn(sum_l > 0.0f ? sum_o / sum_l : 0.0f);
	} else {
		float *pr = a.part + (((size_t)split * a.n_tokens + tok) * a.n_heads + h) * row_f;

		pr[d] = sum_o;
		if (!d) {
			pr[HD] = mx;
			pr[HD + 1] = sum_l;
		}
	}
}

/*
 * Merge of the splits, run by every thread of each block once its partials
 * are written: the last block of (sequence, kv head) to arrive reads every
 * split's maxima and sums in one parallel pass into shared memory (a serial
 * walk over 32-64 splits costs one L2 latency each, tens of us), then sums
 * each output over the splits with independent loads. Heads go GM at a time.
 */
template <int NT>
static __device__ void dec_merge_splits(const struct kc_attn_args &a, uint32_t *counter,
					uint32_t kvh, int32_t t0, int32_t t1, uint32_t nsp)
{
	constexpr uint32_t GM = 8;
	__shared__ float zm[KC_DEC_MAX_SPLITS][GM], zl[KC_DEC_MAX_SPLITS][GM], zinv[GM];
	__shared__ int last;
	const uint32_t hd = a.head_dim, group = a.n_heads / a.n_kv_heads;
	const size_t row_f = hd + 2, zstride = (size_t)a.n_tokens * a.n_heads * row_f;
	const int tid = threadIdx.x;

	__threadfence();
	__syncthreads();
	if (!tid)
		last = atomicAdd(counter, 1u) == nsp - 1;
	__syncthreads();
	if (!last)
		return;
	__threadfence();
	for (int32_t t = t0; t < t1; t++)
		for (uint32_t g0 = 0; g0 < group; g0 += GM) {
			const uint32_t gn = min(group - g0, GM);
			const float *p0 = a.part + ((size_t)t * a.n_heads + kvh * group + g0) * row_f;

			for (uint32_t idx = tid; idx < nsp * gn; idx += NT) {
				const uint32_t z = idx / gn, g = idx % gn;

				zm[z][g] = __ldcg(p0 + z * zstride + g * row_f + hd);
				zl[z][g] = __ldcg(p0 + z * zstride + g * row_f + hd + 1);
			}
			__syncthreads();
			if (tid < (int)gn) {
				float mx = -INFINITY, sum_l = 0.0f;

				for (uint32_t z = 0; z < nsp; z++)
					mx = fmaxf(mx, zm[z][tid]);
				for (uint32_t z = 0; z < nsp; z++) {
					float w = mx == -INFINITY || zm[z][tid] == -INFINITY
							  ? 0.0f
							  : exp2f(zm[z][tid] - mx);

					zm[z][tid] = w;
					sum_l += w * zl[z][tid];
				}
				zinv[tid] = sum_l > 0.0f ? 1.0f / sum_l : 0.0f;
			}
			__syncthreads();
			for (uint32_t idx = tid; idx < gn * hd; idx += NT) {
				const uint32_t g = idx / hd, d = idx % hd;
				const float *pr = p0 + g * row_f + d;
				float acc = 0.0f;

#pragma unroll 16
				for (uint32_t z = 0; z < nsp; z++)
					acc = fmaf(zm[z][g], __ldcg(pr + z * zstride), acc);
				((bf16 *)a.out)[((size_t)t * a.n_heads + kvh * group + g0 + g) * hd + d] =
					__float2bfloat16_rn(acc * zinv[g]);
			}
			__syncthreads();
		}
	if (!tid)
		*counter = 0;
}

/* Checks every decode block makes: seq_start covers the tokens once (block
 * 0), the sequence's own range and context. Returns false (error flagged)
 * when the sequence is to be skipped. */
static __device__ bool dec_seq_ok(const struct kc_attn_args &a, uint32_t s, int32_t *t0,
				  int32_t *t1, int32_t *ctx)
{
	const bool first = !s && !blockIdx.x && !blockIdx.y && !threadIdx.x;

	*t0 = a.seq_start[s];
	*t1 = a.seq_start[s + 1];
	*ctx = a.ctx_len[s];
	if (first && (a.seq_start[0] != 0 || a.seq_start[a.n_seqs] != (int32_t)a.n_tokens))
		set_err(a.err, KC_ERR_BATCH);
	if (*t0 < 0 || *t1 < *t0 || *t1 > (int32_t)a.n_tokens || *ctx < 0 ||
	    (uint64_t)*ctx > (uint64_t)a.max_blocks * a.page_tokens) {
		if (!threadIdx.x)
			set_err(a.err, KC_ERR_BATCH);
		*t1 = *t0 = 0;
		return false;
	}
	return true;
}

/*
 * Decode attention (flash decoding): one block per (split, kv head, sequence),
 * for batches whose sequences bring one new token each (more are walked one
 * after another, correct but slow). The q heads of the kv head's group sit in
 * registers; each lane holds 8 dimensions of one position's K and V (16-byte
 * loads straight from the pages, LPP = HD/8 lanes per position, PPW
 * positions per warp step, U steps of loads in flight), so K/V are read once
 * from memory with no shared-memory staging. Online softmax per lane group,
 * merged over the warp by shuffles, over the block's warps through shared
 * memory and over splits by the last block to finish (a counter per
 * (sequence, kv head) in the workspace, returned to zero by that block), so
 * one launch does all of it and a graph replays it for any context.
 */
#define DEC_NT 128
#define DEC_NW (DEC_NT / 32)

template <int HD, int GM>
static __global__ void __launch_bounds__(DEC_NT)
attn_decode_kernel(const struct kc_attn_args a, uint32_t *counters)
{
	constexpr int LPP = HD / 8, PPW = 32 / LPP, U = 2;
	__shared__ float sm_o[DEC_NW][GM][HD];
	__shared__ float sm_m[DEC_NW][GM], sm_l[DEC_NW][GM];
	const uint32_t split = blockIdx.x, nsp = gridDim.x, kvh = blockIdx.y, s = blockIdx.z;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int sub = lane / LPP, li = lane % LPP;
	const uint32_t group = a.n_heads / a.n_kv_heads, pt = a.page_tokens;
	const uint4 *kv4 = (const uint4 *)a.kv_base;
	const uint64_t k_off = a.layer_off + (uint64_t)kvh * pt * HD;
	const uint64_t v_off = k_off + (uint64_t)a.n_kv_heads * pt * HD;
	const float sl2 = a.scale * KC_LOG2E;
	const int32_t *bt = a.block_table + (size_t)s * a.max_blocks;
	int32_t t0, t1, ctx;

	dec_seq_ok(a, s, &t0, &t1, &ctx);
	for (int32_t t = t0; t < t1; t++) {
		const int32_t p = a.pos[t];
		int32_t kv_end = p + 1, len, b, e;
		float q[GM][8], m[GM], l[GM], acc[GM][8];

		if (p < 0 || p >= ctx) {
			if (!tid)
				set_err(a.err, KC_ERR_BATCH);
			kv_end = 0;
		}
		len = ((kv_end + (int32_t)nsp - 1) / (int32_t)nsp + 15) & ~15;
		b = (int32_t)split * len;
		e = min(kv_end, b + len);
#pragma unroll
		for (int g = 0; g < GM; g++) {
			m[g] = -INFINITY;
			l[g] = 0.0f;
#pragma unroll
			for (int x = 0; x < 8; x++) {
				q[g][x] = 0.0f;
				acc[g][x] = 0.0f;
			}
			if (g < (int)group) {
				uint4 qv = ((const uint4 *)a.q)[(((size_t)t * a.n_heads + kvh * group + g) *
								 HD) / 8 + li];

				unpack8(qv, q[g]);
#pragma unroll
				for (int x = 0; x < 8; x++)
					q[g][x] *= sl2;
			}
		}
		/* Loads of the next step are issued before the current one is
		 * used (the page lookup and the K/V loads are two dependent
		 * latencies), so the warp always has 2U rows of K and V in flight. */
		const int32_t step = DEC_NW * PPW * U;
		uint4 kr[U], vr[U], kn[U], vn[U];
		bool act[U], an[U];
		auto load = [&](int32_t pw, uint4 *kk, uint4 *vv, bool *aa) {
#pragma unroll
			for (int u = 0; u < U; u++) {
				const int32_t pp = pw + u * DEC_NW * PPW + sub;

				aa[u] = pp < e;
				kk[u] = vv[u] = make_uint4(0, 0, 0, 0);
				if (aa[u]) {
					const int32_t pg = bt[pp / (int32_t)pt];

					if (pg < 0 || (uint32_t)pg >= a.n_pages) {
						set_err(a.err, KC_ERR_PAGE);
						aa[u] = false;
					} else {
						uint64_t base = (uint64_t)pg * a.page_elems +
								(uint64_t)(pp % (int32_t)pt) * HD;

						kk[u] = __ldg(kv4 + (base + k_off) / 8 + li);
						vv[u] = __ldg(kv4 + (base + v_off) / 8 + li);
					}
				}
			}
		};
		if (b + warp * PPW < e)
			load(b + warp * PPW, kr, vr, act);
		for (int32_t pw = b + warp * PPW; pw < e; pw += step) {
			if (pw + step < e) {
				load(pw + step, kn, vn, an);
			} else {
#pragma unroll
				for (int u = 0; u < U; u++) {
					an[u] = false;
					kn[u] = vn[u] = make_uint4(0, 0, 0, 0);
				}
			}
#pragma unroll
			for (int u = 0; u < U; u++) {
				float kf[8], vf[8];

				unpack8(kr[u], kf);
				unpack8(vr[u], vf);
#pragma unroll
				for (int g = 0; g < GM; g++) {
					float d = 0.0f;

					if (g >= (int)group)
						break; /* uniform over the block */
#pragma unroll
					for (int x = 0; x < 8; x++)
						d = fmaf(q[g][x], kf[x], d);
#pragma unroll
					for (int o = 1; o < LPP; o <<= 1)
						d += __shfl_xor_sync(0xffffffffu, d, o);
					if (act[u]) {
						float mn = fmaxf(m[g], d);
						float c = exp2f(m[g] - mn), pe = exp2f(d - mn);

						l[g] = l[g] * c + pe;
#pragma unroll
						for (int x = 0; x < 8; x++)
							acc[g][x] = fmaf(pe, vf[x], acc[g][x] * c);
						m[g] = mn;
					}
				}
			}
#pragma unroll
			for (int u = 0; u < U; u++) {
				kr[u] = kn[u];
				vr[u] = vn[u];
				act[u] = an[u];
			}
		}
		/* Merge the lane groups of the warp (same li, other positions). */
#pragma unroll
		for (int o = LPP; o < 32; o <<= 1) {
#pragma unroll
			for (int g = 0; g < GM; g++) {
				float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
				float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
				float mn = fmaxf(m[g], mo);
				float c1 = mn == -INFINITY ? 0.0f : exp2f(m[g] - mn);
				float c2 = mn == -INFINITY ? 0.0f : exp2f(mo - mn);

				l[g] = l[g] * c1 + lo * c2;
#pragma unroll
				for (int x = 0; x < 8; x++) {
					float ao = __shfl_xor_sync(0xffffffffu, acc[g][x], o);

					acc[g][x] = acc[g][x] * c1 + ao * c2;
				}
				m[g] = mn;
			}
		}
		if (sub == 0) {
#pragma unroll
			for (int g = 0; g < GM; g++) {
#pragma unroll
				for (int x = 0; x < 8; x++)
					sm_o[warp][g][li * 8 + x] = acc[g][x];
				if (!li) {
					sm_m[warp][g] = m[g];
					sm_l[warp][g] = l[g];
				}
			}
		}
		__syncthreads();
		for (uint32_t idx = tid; idx < group * HD; idx += DEC_NT) {
			const uint32_t g = idx / HD, d = idx % HD, h = kvh * group + g;
			float mx = -INFINITY, sum_l = 0.0f, sum_o = 0.0f;

			for (int w = 0; w < DEC_NW; w++)
				mx = fmaxf(mx, sm_m[w][g]);
			if (mx != -INFINITY)
				for (int w = 0; w < DEC_NW; w++) {
					float c = exp2f(sm_m[w][g] - mx);

					sum_l += c * sm_l[w][g];
					sum_o += c * sm_o[w][g][d];
				}
			dec_emit<HD>(a, split, nsp, t, h, d, mx, sum_l, sum_o);
		}
		__syncthreads(); /* shared memory reused by the next token */
	}
	if (nsp > 1)
		dec_merge_splits<DEC_NT>(a, &counters[(size_t)s * a.n_kv_heads + kvh], kvh, t0,
					 t1, nsp);
}
/*
 * Decode on tensor cores. The rows of one m16 MMA tile are (token, q head)
 * pairs of the block's sequence and kv head (row r: token t0 + r / group,
 * head r % group), so one token's group up to 16 heads is one pass; more
 * rows take further passes over the KV range (correct, not fast). The
 * block's KV range is cut into chunks of DM_C positions dealt round robin to
 * its warps. Each warp streams its chunks through its own ring of DM_STAGES
 * shared buffers with cp.async (DM_STAGES - 1 chunks in flight while it
 * computes one; no block barrier in the loop), and per chunk computes
 * S = Q K^T (16 x 16), the online softmax in base 2, and O += P V, P going
 * from the accumulator registers straight into the A operand. The warps'
 * (O, m, l) merge through shared memory (the ring, reused), then across
 * splits as for attn_decode_kernel. Unlike the CUDA-core kernel the number
 * of loads in flight does not depend on registers, and no shuffle sits
 * between a K load and its score.
 */
#define DM_NW 4
#define DM_NT (DM_NW * 32)
#define DM_C 16      /* positions per chunk: one k16 step of P V */

/* ST: chunks per warp's ring (ST - 1 in flight). */
static constexpr size_t dm_smem_bytes(uint32_t hd, uint32_t st)
{
	return (size_t)DM_NW * st * 2 * DM_C * (hd + 8) * sizeof(bf16);
}

template <int HD, int DM_STAGES>
static __global__ void __launch_bounds__(DM_NT)
attn_dec_mma_kernel(const struct kc_attn_args a, uint32_t *counters)
{
	constexpr int LD = HD + 8;   /* shared row stride, bf16: ldmatrix rows in distinct banks */
	constexpr int CPR = HD / 8;  /* 16-byte pieces per row */
	constexpr int DT = HD / 8;   /* n8 tiles of O */
	constexpr int CH = DM_C * LD; /* one K (or V) chunk, bf16 */
	extern __shared__ __align__(16) bf16 dm_smem[];
	__shared__ float sm_m[DM_NW][16], sm_l[DM_NW][16];
	const uint32_t split = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
	const uint32_t group = a.n_heads / a.n_kv_heads, pt = a.page_tokens;
	const bf16 *kvb = (const bf16 *)a.kv_base, *qb = (const bf16 *)a.q;
	const uint64_t k_off = a.layer_off + (uint64_t)kvh * pt * HD;
	const uint64_t v_off = k_off + (uint64_t)a.n_kv_heads * pt * HD;
	const int pt_sh = pt & (pt - 1) ? -1 : __ffs((int)pt) - 1; /* pages of 2^k: shifts */
	const float sl2 = a.scale * KC_LOG2E;
	const int32_t *bt = a.block_table + (size_t)s * a.max_blocks;
	bf16 *ring = dm_smem + (size_t)warp * DM_STAGES * 2 * CH;

	/* With a.early the o projection's GEMV may start once every block of
	 * this grid has: its weight loads then run beside this kernel's
	 * latency-bound ones (1B decode 1.5% faster, 8B 1.5% slower: off by
	 * default, see kern_cuda.pdl_early). */
	if (a.early)
		pdl_trigger();
	float *mo = (float *)dm_smem; /* [DM_NW][16][HD] once the chunks are done */
	int32_t t0, t1, ctx;

	dec_seq_ok(a, s, &t0, &t1, &ctx);
	const int64_t n_rows = (int64_t)(t1 - t0) * group;
	int32_t old_end = ctx, seq_end = 0; /* positions below old_end predate this step */

	for (int32_t t = t0; t < t1; t++) {
		const int32_t p = a.pos[t];

		old_end = min(old_end, max(p, 0));
		if (p >= 0 && p < ctx)
			seq_end = max(seq_end, p + 1);
	}
	/* The splits this sequence uses: each at least a.split_min positions
	 * of its own length (the grid's count comes from a graph's capacity);
	 * the blocks past them have nothing to do. */
	const uint32_t nsp =
		max(1u, min(gridDim.x, (uint32_t)(seq_end + a.split_min - 1) / a.split_min));

	if (!n_rows || split >= nsp) {
		pdl_wait();
		return;
	}
	for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
		int tok_a = -1, tok_b = -1, head_a = 0, head_b = 0;
		int32_t lim_a = -1, lim_b = -1;

		/* This lane's rows: g and g + 8 of the tile. */
		auto row = [&](int64_t R, int *tok, int *head, int32_t *lim) {
			if (R >= n_rows)
				return;
			*tok = t0 + (int32_t)(R / group);
			*head = (int)(kvh * group + (uint32_t)(R % group));
			const int32_t p = a.pos[*tok];

			if (p >= 0 && p < ctx)
				*lim = p;
			else if (!t4)
				set_err(a.err, KC_ERR_BATCH);
		};
		row(r0 + g, &tok_a, &head_a, &lim_a);
		row(r0 + g + 8, &tok_b, &head_b, &lim_b);

		const int32_t kv_end = __reduce_max_sync(0xffffffffu, max(lim_a, lim_b)) + 1;
		const int32_t len = ((kv_end + (int32_t)nsp - 1) / (int32_t)nsp + DM_C - 1) & ~(DM_C - 1);
		const int32_t begin = (int32_t)split * len, end = min(kv_end, begin + len);
		const int32_t n_chunks = end > begin ? (end - begin + DM_C - 1) / DM_C : 0;
		const int32_t mine = n_chunks > warp ? (n_chunks - warp + DM_NW - 1) / DM_NW : 0;

		/* Pages of a multiple of DM_C positions hold a whole chunk: one
		 * lookup a chunk (warp-uniform), made an iteration ahead so that
		 * its latency hides behind a chunk's arithmetic. */
		const bool one_page = pt % DM_C == 0;
		auto page_of = [&](int32_t i) -> int32_t {
			const int32_t p0 = begin + (warp + i * DM_NW) * DM_C;

			if (!one_page || i >= mine)
				return -1;
			return bt[pt_sh >= 0 ? p0 >> pt_sh : p0 / (int32_t)pt];
		};
		/* Chunk i of this warp (positions p0 .. p0 + 15) into ring slot b;
		 * positions at or past end are zeros (masked scores; zero V keeps
		 * 0 * NaN out of P V). */
		auto load = [&](int32_t i, int b, int32_t pg0) {
			const int32_t p0 = begin + (warp + i * DM_NW) * DM_C;
			const uint32_t kd = smem_addr(ring + b * 2 * CH), vd = kd + CH * 2;
			int32_t blk0 = pt_sh >= 0 ? p0 >> pt_sh : p0 / (int32_t)pt;

			if (one_page) {
				if (pg0 < 0 || (uint32_t)pg0 >= a.n_pages) {
					if (!lane)
						set_err(a.err, KC_ERR_PAGE);
					pg0 = -1;
				}
			}
#pragma unroll
			for (int j = 0; j < DM_C * CPR / 32; j++) {
				const int c = lane + j * 32, r = c / CPR, ch = c % CPR;
				const int32_t p = p0 + r;
				const bf16 *ks = kvb, *vs = kvb;
				int32_t blk = blk0, pg = pg0;

				if (p < end && !one_page) {
					blk = pt_sh >= 0 ? p >> pt_sh : p / (int32_t)pt;
					pg = bt[blk];
					if (pg < 0 || (uint32_t)pg >= a.n_pages) {
						set_err(a.err, KC_ERR_PAGE);
						pg = -1;
					}
				}
				if (p < end && pg >= 0) {
					const uint64_t base = (uint64_t)pg * a.page_elems +
							      (uint64_t)(p - blk * (int32_t)pt) * HD + ch * 8;

					ks = kvb + base + k_off;
					vs = kvb + base + v_off;
				}
				cp_async16(kd + (uint32_t)(r * LD + ch * 8) * 2, ks, p < end && pg >= 0);
				cp_async16(vd + (uint32_t)(r * LD + ch * 8) * 2, vs, p < end && pg >= 0);
			}
		};
		/* Programmatic dependent launch: the kernel before this one
		 * (rope_kv_write) writes q and the new tokens' K/V, nothing
		 * older, so chunks wholly below the sequence's first new
		 * position load before pdl_wait(). They are a prefix of this
		 * warp's chunks. */
		bool waited = r0 > 0;

#pragma unroll
		for (int i = 0; i < DM_STAGES - 1; i++) {
			if (!waited && (i >= mine || begin + (warp + i * DM_NW + 1) * DM_C > old_end)) {
				pdl_wait();
				waited = true;
			}
			if (i < mine)
				load(i, i, page_of(i));
			cp_async_commit();
		}
		if (!waited)
			pdl_wait();
		int32_t pg_next = page_of(DM_STAGES - 1);

		/* Q fragments straight from memory: a0 (row g, k 2t4), a1 (row
		 * g + 8), a2 and a3 the same at k + 8. Rows past the end are 0. */
		uint32_t qf[HD / 16][4];
		const uint32_t *qa =
			(const uint32_t *)(qb + ((size_t)max(tok_a, 0) * a.n_heads + head_a) * HD);
		const uint32_t *qbr =
			(const uint32_t *)(qb + ((size_t)max(tok_b, 0) * a.n_heads + head_b) * HD);

#pragma unroll
		for (int kk = 0; kk < HD / 16; kk++) {
			qf[kk][0] = tok_a >= 0 ? qa[kk * 8 + t4] : 0u;
			qf[kk][1] = tok_b >= 0 ? qbr[kk * 8 + t4] : 0u;
			qf[kk][2] = tok_a >= 0 ? qa[kk * 8 + 4 + t4] : 0u;
			qf[kk][3] = tok_b >= 0 ? qbr[kk * 8 + 4 + t4] : 0u;
		}

		float o[DT][4], m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

#pragma unroll
		for (int j = 0; j < DT; j++)
			o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

		for (int32_t i = 0; i < mine; i++) {
			const int b = i % DM_STAGES;
			const int32_t p0 = begin + (warp + i * DM_NW) * DM_C;
			const bf16 *kt = ring + b * 2 * CH, *vt = kt + CH;

			if (i + DM_STAGES - 1 < mine)
				load(i + DM_STAGES - 1, (i + DM_STAGES - 1) % DM_STAGES, pg_next);
			pg_next = page_of(i + DM_STAGES);
			cp_async_commit();
			cp_async_wait<DM_STAGES - 1>();
			__syncwarp();

			/* S = Q K^T: x4 of K, lanes 0-7 positions 0-7 at k, 8-15 at
			 * k + 8, 16-31 positions 8-15: b0 b1 of both n8 tiles. */
			float sc[2][4] = {}, sd[2][4] = {}; /* even and odd k steps: two chains */
			const uint32_t ka = smem_addr(kt + ((lane & 7) + ((lane >> 4) << 3)) * LD +
						      ((lane >> 3) & 1) * 8);

#pragma unroll
			for (int kk = 0; kk < HD / 16; kk += 2) {
				uint32_t bk[4], bl[4];

				ldsm_x4(ka + kk * 32, bk);
				ldsm_x4(ka + kk * 32 + 32, bl);
				mma_bf16(sc[0], qf[kk], bk[0], bk[1]);
				mma_bf16(sc[1], qf[kk], bk[2], bk[3]);
				mma_bf16(sd[0], qf[kk + 1], bl[0], bl[1]);
				mma_bf16(sd[1], qf[kk + 1], bl[2], bl[3]);
			}
#pragma unroll
			for (int j = 0; j < 2; j++)
#pragma unroll
				for (int e = 0; e < 4; e++)
					sc[j][e] += sd[j][e];
			fa_mask<2>(sc, p0, t4, lim_a, lim_b, end, sl2);
			fa_softmax<2, DT>(sc, o, m_a, m_b, l_a, l_b);
			fa_pv<2, DT, LD>(sc, vt, o);
			__syncwarp(); /* slot b is refilled by the next iteration */
		}
		cp_async_wait<0>();
		l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
		l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
		l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
		l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);

		/* Merge the warps through shared memory (the rings are free). */
		__syncthreads();
		{
			float *ma = mo + ((size_t)warp * 16 + g) * HD, *mb = ma + 8 * HD;

#pragma unroll
			for (int j = 0; j < DT; j++) {
				*(float2 *)(ma + j * 8 + 2 * t4) = make_float2(o[j][0], o[j][1]);
				*(float2 *)(mb + j * 8 + 2 * t4) = make_float2(o[j][2], o[j][3]);
			}
			if (!t4) {
				sm_m[warp][g] = m_a;
				sm_l[warp][g] = l_a;
				sm_m[warp][g + 8] = m_b;
				sm_l[warp][g + 8] = l_b;
			}
		}
		__syncthreads();
		for (int idx = tid; idx < 16 * HD; idx += DM_NT) {
			const int r = idx / HD, d = idx % HD;
			const int64_t R = r0 + r;
			float mx = -INFINITY, sum_l = 0.0f, sum_o = 0.0f;

			if (R >= n_rows)
				break; /* rows ascend with idx */
			const int32_t tok = t0 + (int32_t)(R / group);
			const uint32_t h = kvh * group + (uint32_t)(R % group);

#pragma unroll
			for (int w = 0; w < DM_NW; w++)
				mx = fmaxf(mx, sm_m[w][r]);
			if (mx != -INFINITY)
#pragma unroll
				for (int w = 0; w < DM_NW; w++) {
					const float c = exp2f(sm_m[w][r] - mx);

					sum_l += c * sm_l[w][r];
					sum_o += c * mo[((size_t)w * 16 + r) * HD + d];
				}
			dec_emit<HD>(a, split, nsp, tok, h, d, mx, sum_l, sum_o);
		}
		__syncthreads(); /* shared memory reused by the next pass */
	}
	if (nsp > 1)
		dec_merge_splits<DM_NT>(a, &counters[(size_t)s * a.n_kv_heads + kvh], kvh, t0, t1,
					nsp);
}

/* ------------------------------------------------------------ launchers */

static int launched(void)
{
	return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

extern "C" int kc_attn_decode_ok(uint32_t head_dim, uint32_t group, int mma)
{
	if (mma)
		return (head_dim == 64 || head_dim == 128) && group >= 1;
	return (head_dim == 64 || head_dim == 128 || head_dim == 32) && group >= 1 && group <= 8;
}

/* Ring depth by head size: the deepest ring (bytes in flight per warp)
 * that still lets three blocks share a multiprocessor, which measured best
 * (head_dim 128 with 4 chunks: one block per SM, 20% slower at batch 64). */
static constexpr int dm_stages(uint32_t hd)
{
	return hd == 64 ? 4 : 2;
}

static void (*dm_kernel(uint32_t hd))(const struct kc_attn_args, uint32_t *)
{
	return hd == 64 ? attn_dec_mma_kernel<64, dm_stages(64)>
			: attn_dec_mma_kernel<128, dm_stages(128)>;
}

extern "C" int kc_attn_decode_init(size_t smem_optin)
{
	static const uint32_t hds[] = { 64, 128 };

	for (int i = 0; i < 2; i++)
		if (dm_smem_bytes(hds[i], dm_stages(hds[i])) > smem_optin ||
		    cudaFuncSetAttribute(dm_kernel(hds[i]), cudaFuncAttributeMaxDynamicSharedMemorySize,
					 (int)dm_smem_bytes(hds[i], dm_stages(hds[i])))) {
			(void)cudaGetLastError();
			return -EIO;
		}
	return 0;
}

extern "C" uint32_t kc_attn_decode_occupancy(uint32_t head_dim)
{
	int n = 0;

	if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
		    &n, dm_kernel(head_dim), DM_NT, dm_smem_bytes(head_dim, dm_stages(head_dim))) !=
	    cudaSuccess) {
		(void)cudaGetLastError();
		return 1;
	}
	return n > 0 ? (uint32_t)n : 1;
}

extern "C" int kc_attention_decode(const struct kc_attn_args *a, uint32_t n_splits, int mma,
				   uint32_t *counters, cudaStream_t st)
{
	const uint32_t group = a->n_heads / a->n_kv_heads;
	dim3 grid;

	if (!kc_attn_decode_ok(a->head_dim, group, mma) || !n_splits ||
	    n_splits > KC_DEC_MAX_SPLITS || a->n_seqs > 65535 || a->n_kv_heads > 65535 ||
	    (n_splits > 1 && !a->part) || (mma && ((uintptr_t)a->q | (uintptr_t)a->kv_base) % 16))
		return -EINVAL;
	grid = dim3(n_splits, a->n_kv_heads, a->n_seqs);
	if (mma)
		return kc_launch_pdl(kc_pdl_enabled(), dm_kernel(a->head_dim), grid, dim3(DM_NT),
				     dm_smem_bytes(a->head_dim, dm_stages(a->head_dim)), st, *a,
				     counters) == cudaSuccess
			       ? 0
			       : -EIO;
	/* One instance (groups up to 8) for every group: the fallback's speed
	 * matters less than its registers (at 4 q heads it spilled). */
	switch (a->head_dim) {
	case 32: attn_decode_kernel<32, 8><<<grid, DEC_NT, 0, st>>>(*a, counters); break;
	case 64: attn_decode_kernel<64, 8><<<grid, DEC_NT, 0, st>>>(*a, counters); break;
	default: attn_decode_kernel<128, 8><<<grid, DEC_NT, 0, st>>>(*a, counters); break;
	}
	return launched();
}

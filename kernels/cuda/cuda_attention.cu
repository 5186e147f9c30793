/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, attention family (bf16 Q/K/V, fp32 arithmetic): rotary
 * embedding fused with the KV write into pages, and paged causal attention
 * with GQA for any kern_batch (decode tokens, prefill chunks, both mixed).
 *
 * Attention runs in up to three launches:
 *  1. plan (one block): each sequence's new tokens are cut into tiles of bq
 *     tokens; tile_start[s] is the exclusive prefix sum of tiles per
 *     sequence, so block b of the next launch finds its sequence by binary
 *     search. The plan also checks seq_start and ctx_len.
 *  2. attention: one block per (tile, kv head, split). Its query rows are the
 *     tile's tokens times the q heads sharing that kv head (GQA: K/V are read
 *     once for all of them). K/V stream through shared memory 32 positions at
 *     a time (one per lane when scoring) with the online softmax of flash
 *     attention, in base 2 (scores pre-scaled by log2 e). Each row stops at
 *     its own position (causal, also across chunks).
 *  3. combine, when the KV length is split over several blocks (decode with
 *     few sequences): out = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s.
 * Two block shapes: SMALL (128 threads, 16 rows: decode) and LARGE (256
 * threads, 64 rows: prefill). Both are correct for every batch. Scores and
 * P.V use CUDA cores: the backend runs steps of several tokens per sequence
 * on the tensor-core kernel of cuda_attention_mma.cu where it takes the
 * shape (head_dim 64, 128), which shares the plan and the combine from here.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>

#include "cuda_device.cuh"
#include "cuda_internal.h"

typedef __nv_bfloat16 bf16;

#define KC_TK 32 /* KV positions per tile: one per lane when scoring */

static __device__ __forceinline__ float2 bf2x(uint32_t w)
{
	__nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162 *>(&w);

	return __bfloat1622float2(h);
}

static __device__ __forceinline__ uint32_t pack2(float a, float b)
{
	__nv_bfloat162 h = __floats2bfloat162_rn(a, b);

	return *reinterpret_cast<uint32_t *>(&h);
}


/*
 * One block per token (rope_pair; dimension d pairs with d + hd/2). A token
 * with a bad slot or position writes nothing.
 */
static __global__ void rope_kv_kernel(bf16 *q, bf16 *k, const bf16 *v, const int32_t *pos,
				      const int32_t *slot, uint32_t n_heads, uint32_t nkv,
				      uint32_t hd, uint32_t pt, uint64_t n_slots,
				      uint64_t page_elems, uint64_t layer_off, bf16 *kv,
				      const float *inv_freq, uint32_t *err, int hf)
{
	const uint32_t i = blockIdx.x, half = hd / 2;
	const int32_t p = pos[i], sl = slot[i]; /* step metadata: no kernel writes it */
	const uint64_t head_stride = (uint64_t)pt * hd;
	bf16 *kdst, *vdst;

	/* q, k and v come from the kernel before. Only then may decode
	 * attention start (it loads older K/V first): launched while that
	 * kernel drains, its blocks would crowd onto the first SMs it frees. */
	pdl_wait();
	pdl_trigger();
	if (sl == KERN_SLOT_PAD)
		return; /* padding token: nothing rotated, nothing written */
	if (p < 0 || sl < 0 || (uint64_t)sl >= n_slots) {
		if (!threadIdx.x)
			set_err(err, KC_ERR_SLOT);
		return;
	}
	kdst = kv + (uint64_t)(sl / pt) * page_elems + layer_off + (uint64_t)(sl % pt) * hd;
	vdst = kdst + nkv * head_stride;
	for (uint32_t idx = threadIdx.x; idx < (n_heads + nkv) * half; idx += blockDim.x) {
		uint32_t h = idx / half, d = idx % half;
		bf16 *x = h < n_heads ? q + ((size_t)i * n_heads + h) * hd
				      : k + ((size_t)i * nkv + (h - n_heads)) * hd;
		const float2 y = rope_pair(__bfloat162float(x[d]), __bfloat162float(x[d + half]), p,
					   inv_freq[d], hf);
		const bf16 y1 = __float2bfloat16_rn(y.x), y2 = __float2bfloat16_rn(y.y);

		x[d] = y1;
		x[d + half] = y2;
		if (h >= n_heads) {
			bf16 *kh = kdst + (h - n_heads) * head_stride;

			kh[d] = y1;
			kh[d + half] = y2;
		}
	}
	for (uint32_t idx = threadIdx.x; idx < nkv * hd; idx += blockDim.x) {
		uint32_t h = idx / hd, d = idx % hd;

		vdst[h * head_stride + d] = v[((size_t)i * nkv + h) * hd + d];
	}
}

/* One block of 1024 threads: tiles per sequence and their prefix sum. A
 * sequence of n tokens has n * mult rows, bq rows per tile. */
static __global__ void attn_plan_kernel(const struct kc_attn_args a, uint32_t mult, uint32_t bq)
{
	__shared__ int32_t warp_tot[32];
	__shared__ int32_t carry;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	if (!threadIdx.x) {
		carry = 0;
		if (a.seq_start[0] != 0 || a.seq_start[a.n_seqs] != (int32_t)a.n_tokens)
			set_err(a.err, KC_ERR_BATCH);
	}
	__syncthreads();
	for (uint32_t base = 0; base < a.n_seqs; base += blockDim.x) {
		uint32_t s = base + threadIdx.x;
		int32_t cnt = 0, x;

		if (s < a.n_seqs) {
			int32_t t0 = a.seq_start[s], t1 = a.seq_start[s + 1], ctx = a.ctx_len[s];

			if (t0 < 0 || t1 < t0 || t1 > (int32_t)a.n_tokens)
				set_err(a.err, KC_ERR_BATCH);
			else
				cnt = (int32_t)(((int64_t)(t1 - t0) * mult + bq - 1) / bq);
			if (ctx < 0 || (uint64_t)ctx > (uint64_t)a.max_blocks * a.page_tokens)
				set_err(a.err, KC_ERR_BATCH);
		}
		x = cnt;
#pragma unroll
		for (int o = 1; o < 32; o <<= 1) {
			int32_t y = __shfl_up_sync(0xffffffffu, x, o);

			if (lane >= o)
				x += y;
		}
		if (lane == 31)
			warp_tot[warp] = x;
		__syncthreads();
		if (warp == 0) {
			int32_t w = lane < (int)(blockDim.x >> 5) ? warp_tot[lane] : 0;

#pragma unroll
			for (int o = 1; o < 32; o <<= 1) {
				int32_t y = __shfl_up_sync(0xffffffffu, w, o);

				if (lane >= o)
					w += y;
			}
			warp_tot[lane] = w;
		}
		__syncthreads();
		if (s < a.n_seqs)
			a.tile_start[s] = carry + (warp ? warp_tot[warp - 1] : 0) + x - cnt;
		__syncthreads();
		if (!threadIdx.x)
			carry += warp_tot[31];
		__syncthreads();
	}
	if (!threadIdx.x)
		a.tile_start[a.n_seqs] = carry;
}

/* Shared memory of one block: RMAX rows, head_dim hd. Keep in step with
 * kc_attn_smem_bytes(). All 4-byte words. */
struct attn_smem {
	float *o;      /* [RMAX][hd] unnormalised output */
	float *p;      /* [RMAX][TK] probabilities of the current tile */
	float *alpha;  /* [RMAX] rescale of the current tile; later m */
	float *l;      /* [RMAX] */
	int *tok;      /* [RMAX] token of the row, -1 none */
	int *head;     /* [RMAX] q head of the row */
	int *lim;      /* [RMAX] last position the row attends, -1 none */
	int *page;     /* [TK] page of each tile position, -1 none */
	uint32_t *q;   /* [RMAX][hd/2] bf16 pairs */
	uint32_t *k;   /* [TK][hd/2 + 1] padded: lanes read different rows */
	uint32_t *v;   /* [TK][hd/2] */
};

static __host__ __device__ size_t attn_smem_words(uint32_t rmax, uint32_t hd)
{
	return (size_t)rmax * hd + (size_t)rmax * KC_TK + 5u * rmax + KC_TK +
	       (size_t)rmax * (hd / 2) + (size_t)KC_TK * (hd / 2 + 1) + (size_t)KC_TK * (hd / 2);
}

static __device__ struct attn_smem attn_smem_carve(uint32_t *sm, uint32_t rmax, uint32_t hd)
{
	struct attn_smem s;

	s.o = (float *)sm;
	s.p = s.o + (size_t)rmax * hd;
	s.alpha = s.p + rmax * KC_TK;
	s.l = s.alpha + rmax;
	s.tok = (int *)(s.l + rmax);
	s.head = s.tok + rmax;
	s.lim = s.head + rmax;
	s.page = s.lim + rmax;
	s.q = (uint32_t *)(s.page + KC_TK);
	s.k = s.q + (size_t)rmax * (hd / 2);
	s.v = s.k + (size_t)KC_TK * (hd / 2 + 1);
	return s;
}

/*
 * Block (tile, kv head x head chunk, split). gc q heads of the group per
 * block (n_hchunks chunks cover the group), bq tokens per tile, bq * gc <=
 * RMAX rows. Warp w scores rows w, w + NW, ...: lane j takes position p0 + j.
 */
template <int NT, int RMAX>
static __global__ void __launch_bounds__(NT)
attn_kernel(const struct kc_attn_args a, uint32_t bq, uint32_t gc, uint32_t n_hchunks,
	    uint32_t split_len)
{
	constexpr int NW = NT / 32, RPW = RMAX / NW;
	extern __shared__ uint32_t smem_words[];
	const uint32_t hd = a.head_dim, hd2 = hd / 2, pt = a.page_tokens;
	const uint32_t group = a.n_heads / a.n_kv_heads;
	const uint32_t kvh = blockIdx.y / n_hchunks, hc = blockIdx.y % n_hchunks;
	const uint32_t split = blockIdx.z, n_splits = gridDim.z, tile = blockIdx.x;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const struct attn_smem S = attn_smem_carve(smem_words, RMAX, hd);
	const int32_t *ts = a.tile_start;
	const uint32_t *kvw = (const uint32_t *)a.kv_base;
	float m_r[RPW], l_r[RPW];
	int32_t t0, t1, ctx, kv_end = 0, begin, end;
	uint32_t s;
	uint64_t k_off, v_off;
	const int32_t *bt;
	bool ctx_ok;

	if (tile >= (uint32_t)ts[a.n_seqs])
		return; /* the grid is an upper bound on the tiles */
	s = tile_seq(ts, a.n_seqs, tile);
	t0 = a.seq_start[s] + (int32_t)((tile - (uint32_t)ts[s]) * bq);
	t1 = min(t0 + (int32_t)bq, a.seq_start[s + 1]);
	ctx = a.ctx_len[s];
	ctx_ok = ctx >= 0 && (uint64_t)ctx <= (uint64_t)a.max_blocks * pt;
	bt = a.block_table + (size_t)s * a.max_blocks;

	for (int r = tid; r < RMAX; r += NT) {
		uint32_t tj = r / gc, hin = hc * gc + r % gc;
		int tok = -1, head = -1, lim = -1;

		if (tj < bq && t0 + (int32_t)tj < t1 && hin < group) {
			int32_t p;

			tok = t0 + (int32_t)tj;
			head = (int)(kvh * group + hin);
			p = a.pos[tok];
			if (ctx_ok && p >= 0 && p < ctx)
				lim = p;
			else
				set_err(a.err, KC_ERR_BATCH);
		}
		S.tok[r] = tok;
		S.head[r] = head;
		S.lim[r] = lim;
	}
	for (uint32_t idx = tid; idx < (uint32_t)RMAX * hd; idx += NT)
		S.o[idx] = 0.0f;
	__syncthreads();
	for (uint32_t idx = tid; idx < (uint32_t)RMAX * hd2; idx += NT) {
		uint32_t r = idx / hd2, d2 = idx % hd2;
		int tok = S.tok[r];

		S.q[idx] = tok >= 0 ? ((const uint32_t *)a.q)[((size_t)tok * a.n_heads + S.head[r]) *
							      hd2 + d2]
				    : 0u;
	}
	for (int r = 0; r < RMAX; r++)
		kv_end = max(kv_end, S.lim[r] + 1);
	/* split_len 0: this tile's own KV length shared evenly by the splits
	 * (tiles of short contexts end early; a graph replays any context). */
	if (!split_len)
		split_len = (((uint32_t)kv_end + n_splits - 1) / n_splits + 31) & ~31u;
	begin = (int32_t)(split * split_len);
	end = split + 1 == n_splits ? kv_end : min(kv_end, begin + (int32_t)split_len);
	k_off = (uint64_t)a.layer_off + (uint64_t)kvh * pt * hd;
	v_off = k_off + (uint64_t)a.n_kv_heads * pt * hd;
#pragma unroll
	for (int j = 0; j < RPW; j++) {
		m_r[j] = -INFINITY;
		l_r[j] = 0.0f;
	}
	const float sl2 = a.scale * KC_LOG2E;

	for (int32_t p0 = begin; p0 < end; p0 += KC_TK) {
		__syncthreads(); /* previous tile's K/V/P fully used; q stored */
		if (tid < KC_TK) {
			int32_t p = p0 + tid, pg = -1;

			if (p < end) {
				pg = bt[p / pt];
				if (pg < 0 || (uint32_t)pg >= a.n_pages) {
					set_err(a.err, KC_ERR_PAGE);
					pg = -1;
				}
			}
			S.page[tid] = pg;
		}
		__syncthreads();
		for (uint32_t idx = tid; idx < KC_TK * hd2; idx += NT) {
			uint32_t pp = idx / hd2, d2 = idx % hd2;
			int32_t pg = S.page[pp];
			uint32_t kw = 0, vw = 0;

			if (pg >= 0) {
				uint64_t base = (uint64_t)pg * a.page_elems +
						(uint64_t)((p0 + pp) % pt) * hd;

				kw = kvw[(base + k_off) / 2 + d2];
				vw = kvw[(base + v_off) / 2 + d2];
			}
			S.k[pp * (hd2 + 1) + d2] = kw;
			S.v[pp * hd2 + d2] = vw;
		}
		__syncthreads();
#pragma unroll
		for (int j = 0; j < RPW; j++) {
			const int r = warp + j * NW;
			const int lim = S.lim[r];
			const int32_t p = p0 + lane;
			float sc = -INFINITY, mt, m_new, pv, alpha;

			if (lim < p0)
				continue; /* the whole tile is masked (or no row): warp-uniform */
			if (p <= lim && p < end) {
				const uint32_t *qr = S.q + r * hd2, *kr = S.k + lane * (hd2 + 1);
				float acc = 0.0f;

				for (uint32_t d2 = 0; d2 < hd2; d2++) {
					float2 qf = bf2x(qr[d2]), kf = bf2x(kr[d2]);

					acc = fmaf(qf.x, kf.x, acc);
					acc = fmaf(qf.y, kf.y, acc);
				}
				sc = acc * sl2;
			}
			mt = warp_max(sc);
			m_new = fmaxf(m_r[j], mt); /* finite: position p0 <= lim is unmasked */
			pv = exp2f(sc - m_new);
			alpha = exp2f(m_r[j] - m_new);
			l_r[j] = l_r[j] * alpha + warp_sum(pv);
			m_r[j] = m_new;
			S.p[r * KC_TK + lane] = pv;
			if (!lane)
				S.alpha[r] = alpha;
		}
		__syncthreads();
		for (uint32_t idx = tid; idx < (uint32_t)RMAX * hd2; idx += NT) {
			uint32_t r = idx / hd2, d2 = idx % hd2;
			const float *pr = S.p + r * KC_TK;
			float2 acc;
			float al;

			if (S.lim[r] < p0)
				continue;
			acc = ((float2 *)S.o)[idx];
			al = S.alpha[r];
			acc.x *= al;
			acc.y *= al;
#pragma unroll 8
			for (int pp = 0; pp < KC_TK; pp++) {
				float w = pr[pp];
				float2 vf = bf2x(S.v[pp * hd2 + d2]);

				acc.x = fmaf(w, vf.x, acc.x);
				acc.y = fmaf(w, vf.y, acc.y);
			}
			((float2 *)S.o)[idx] = acc;
		}
	}
	__syncthreads();
#pragma unroll
	for (int j = 0; j < RPW; j++)
		if (!lane) {
			S.l[warp + j * NW] = l_r[j];
			S.alpha[warp + j * NW] = m_r[j];
		}
	__syncthreads();
	if (n_splits == 1) {
		for (uint32_t idx = tid; idx < (uint32_t)RMAX * hd2; idx += NT) {
			uint32_t r = idx / hd2, d2 = idx % hd2;
			int tok = S.tok[r];
			float l = S.l[r], inv = l > 0.0f ? 1.0f / l : 0.0f;
			float2 acc;

			if (tok < 0)
				continue;
			acc = ((float2 *)S.o)[idx];
			((uint32_t *)a.out)[((size_t)tok * a.n_heads + S.head[r]) * hd2 + d2] =
				pack2(acc.x * inv, acc.y * inv);
		}
	} else {
		const size_t row_f = hd + 2;

		for (uint32_t idx = tid; idx < (uint32_t)RMAX * (hd + 2); idx += NT) {
			uint32_t r = idx / (hd + 2), d = idx % (hd + 2);
			int tok = S.tok[r];
			float x;

			if (tok < 0)
				continue;
			x = d < hd ? S.o[r * hd + d] : d == hd ? S.alpha[r] : S.l[r];
			a.part[(((size_t)split * a.n_tokens + tok) * a.n_heads + S.head[r]) * row_f +
			       d] = x;
		}
	}
}

/* One block per (token, head): merge the splits' partial softmax sums. The
 * splits' maxima and sums are read in one parallel pass into shared memory,
 * then each output sums over the splits with independent loads (a serial walk
 * costs one L2 latency per split, tens of us for 64 splits). */
static __global__ void attn_combine_kernel(const float *part, bf16 *out, uint32_t n_rows,
					   uint32_t hd, uint32_t n_splits)
{
	__shared__ float w[KC_DEC_MAX_SPLITS], lz[KC_DEC_MAX_SPLITS], inv;
	const size_t row_f = hd + 2, stride = (size_t)n_rows * row_f;
	const float *pr = part + (size_t)blockIdx.x * row_f;

	for (uint32_t z = threadIdx.x; z < n_splits; z += blockDim.x) {
		w[z] = pr[z * stride + hd];
		lz[z] = pr[z * stride + hd + 1];
	}
	__syncthreads();
	if (!threadIdx.x) {
		float mx = -INFINITY, l = 0.0f;

		for (uint32_t z = 0; z < n_splits; z++)
			mx = fmaxf(mx, w[z]);
		for (uint32_t z = 0; z < n_splits; z++) {
			w[z] = mx == -INFINITY || w[z] == -INFINITY ? 0.0f : exp2f(w[z] - mx);
			l += w[z] * lz[z];
		}
		inv = l > 0.0f ? 1.0f / l : 0.0f;
	}
	__syncthreads();
	for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) {
		float acc = 0.0f;

#pragma unroll 16
		for (uint32_t z = 0; z < n_splits; z++)
			acc = fmaf(w[z], pr[z * stride + d], acc);
		out[(size_t)blockIdx.x * hd + d] = __float2bfloat16_rn(acc * inv);
	}
}

/* ------------------------------------------------------------ launchers */

#define SMALL_NT 128
#define SMALL_RMAX 16
#define LARGE_NT 256
#define LARGE_RMAX 64

static int launched(void)
{
	return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

extern "C" int kc_rope_kv_write(void *q, void *k, const void *v, const int32_t *pos,
				const int32_t *slot, uint32_t n_tokens, uint32_t n_heads,
				const struct kern_kv *kv, uint32_t layer, const float *inv_freq,
				uint32_t *err, int hf, int pdl, cudaStream_t st)
{
	uint64_t page_elems = kern_kv_page_elems(kv);
	uint64_t layer_off = kern_kv_offset(kv, 0, layer, 0, 0, 0);
	uint32_t work = (n_heads + kv->n_kv_heads) * (kv->head_dim / 2);
	unsigned t = work >= 256 ? 256 : work >= 128 ? 128 : 64;

	/* A programmatic dependent of the q/k/v matmul: launched while it runs,
	 * resident as soon as an SM has room. */
	return kc_launch_pdl(pdl && kc_pdl_enabled(), rope_kv_kernel, dim3(n_tokens), dim3(t), 0, st,
			     (bf16 *)q, (bf16 *)k, (const bf16 *)v, pos, slot, n_heads,
			     kv->n_kv_heads, kv->head_dim, kv->page_tokens,
			     (uint64_t)kv->n_pages * kv->page_tokens, page_elems, layer_off,
			     (bf16 *)kv->base, inv_freq, err, hf) == cudaSuccess
		       ? 0
		       : -EIO;
}

extern "C" size_t kc_attn_smem_bytes(enum kc_attn_path path, uint32_t hd)
{
	return attn_smem_words(path == KC_ATTN_LARGE ? LARGE_RMAX : SMALL_RMAX, hd) * 4;
}

extern "C" uint32_t kc_attn_rows(enum kc_attn_path path)
{
	return path == KC_ATTN_LARGE ? LARGE_RMAX : SMALL_RMAX;
}

extern "C" size_t kc_attn_part_floats(uint32_t n_splits, uint32_t n_tokens, uint32_t n_heads,
				      uint32_t hd)
{
	return (size_t)n_splits * n_tokens * n_heads * (hd + 2);
}

extern "C" int kc_attention_init(size_t smem_optin)
{
	if (cudaFuncSetAttribute(attn_kernel<SMALL_NT, SMALL_RMAX>,
				 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_optin) ||
	    cudaFuncSetAttribute(attn_kernel<LARGE_NT, LARGE_RMAX>,
				 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_optin)) {
		(void)cudaGetLastError();
		return -EIO;
	}
	if (kc_attn_decode_init(smem_optin) < 0)
		return -EIO;
	return kc_attn_mma_init(smem_optin);
}

static void attn_combine(const struct kc_attn_args *a, uint32_t n_splits, cudaStream_t st)
{
	uint32_t n_rows = a->n_tokens * a->n_heads;
	unsigned t = a->head_dim >= 128 ? 128 : a->head_dim > 32 ? 64 : 32;

	attn_combine_kernel<<<n_rows, t, 0, st>>>(a->part, (bf16 *)a->out, n_rows, a->head_dim,
						  n_splits);
}

extern "C" int kc_attention(const struct kc_attn_args *a, enum kc_attn_path path,
			    uint32_t n_splits, uint32_t split_len, cudaStream_t st)
{
	const uint32_t rmax = kc_attn_rows(path), group = a->n_heads / a->n_kv_heads;
	const uint32_t gc = group < rmax ? group : rmax, n_hchunks = (group + gc - 1) / gc;
	const uint32_t bq = rmax / gc;
	uint64_t tiles = (uint64_t)(a->n_tokens + bq - 1) / bq + a->n_seqs;
	size_t smem = kc_attn_smem_bytes(path, a->head_dim);
	dim3 grid;

	if (tiles > a->n_tokens)
		tiles = a->n_tokens;
	if (!n_splits)
		n_splits = 1;
	if ((uint64_t)a->n_kv_heads * n_hchunks > 65535 || n_splits > KC_DEC_MAX_SPLITS ||
	    tiles > 0x7fffffffu)
		return -EINVAL;
	grid = dim3((unsigned)tiles, a->n_kv_heads * n_hchunks, n_splits);

	attn_plan_kernel<<<1, 1024, 0, st>>>(*a, 1, bq);
	if (path == KC_ATTN_LARGE)
		attn_kernel<LARGE_NT, LARGE_RMAX><<<grid, LARGE_NT, smem, st>>>(*a, bq, gc, n_hchunks,
										  split_len);
	else
		attn_kernel<SMALL_NT, SMALL_RMAX><<<grid, SMALL_NT, smem, st>>>(*a, bq, gc, n_hchunks,
										  split_len);
	if (n_splits > 1)
		attn_combine(a, n_splits, st);
	return launched();
}

extern "C" int kc_attn_plan(const struct kc_attn_args *a, uint32_t rows_per_token,
			    uint32_t rows_per_tile, cudaStream_t st)
{
	attn_plan_kernel<<<1, 1024, 0, st>>>(*a, rows_per_token, rows_per_tile);
	return launched();
}

extern "C" int kc_attn_combine(const struct kc_attn_args *a, uint32_t n_splits, cudaStream_t st)
{
	attn_combine(a, n_splits, st);
	return launched();
}

/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, matmul for 5..64 rows (batched decode): out[n, m] = in[n, k]
 * @ W^T (+ bias) on tensor cores, bf16 operands, fp32 sums. Bound by reading
 * W once, like the GEMV, but with every row's products on mma.sync instead
 * of FMAs. Also q/k/v stacked in one launch and gate/up with the SwiGLU
 * epilogue. kc_skinny_suits() says where it beats cuBLASLt.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdint.h>

#include "cuda_device.cuh"
#include "cuda_internal.h"
#include "cuda_mma.cuh"

typedef __nv_bfloat16 bf16;

/*
 * Weights are the M side (mma's A operand: W[m][k] row-major is A
 * row-major), the activations the N side (B: in[n][k] row-major is B
 * column-major), padded to NT n8 tiles. A tile is SK_BM weight rows (SwiGLU:
 * 32 gate rows and the same 32 rows of up); a unit is one tile's SK_BK
 * columns. The grid is persistent and takes the units of all tiles in
 * order, an equal share per block (stream-K): a block's share may start and
 * end inside a tile, so every SM streams weights whatever the shape (1B k/v:
 * 8 tiles of 32 units). A block whose share covers a tile writes it; a
 * share of a tile goes to a partial slot in fp32, and the block that brings
 * the tile's last unit (a counter per tile, reset to zero by that block)
 * sums the slots in block order (deterministic) and writes the tile.
 *
 * Inside a block the 4 warps split each unit's 64 columns, one k16 slice
 * each, over all 64 rows and NT n8 tiles (4 x NT mma per unit and warp):
 * shared memory is then read about twice per weight byte (A once, B
 * 64 / SK_BM * N / 64), not 4 times as when warps split the rows. Units
 * stream in by cp.async, SK_STAGES deep; rows of 128 bytes have their
 * 16-byte chunks XOR-swizzled by row so that ldmatrix's eight rows fall in
 * distinct banks. At a tile's end the warps' sums meet in shared memory
 * (warp 0 stores, 1..3 add in turn: a fixed order).
 */
#define SK_THREADS 128
#define SK_BM 64                 /* weight rows per tile: 4 m16 tiles */
#define SK_MT (SK_BM / 16)
#define SK_BK 64                 /* columns per unit: a k16 slice per warp */
#define SK_STAGES 5              /* units in flight: 4 ahead (32 KB of W a block) */
#define SK_RLD (SK_BM + 4)       /* fp32 row stride of the sums: conflict-free stores */
#define SK_MAX_BPS 4             /* blocks per SM at most (sizes the workspace) */
#define SK_MAX_TILES 65536u      /* counters */
#define SK_MAX_FAN 64            /* shares of one tile at most (see skinny_launch_nt) */
#define SK_LOADS 8               /* partial slots read at once when summing */
#define SK_CNT_BYTES ((size_t)SK_MAX_TILES * sizeof(uint32_t))

struct skinny_args {
	void *out[3];
	const bf16 *w[3], *bias[3];
	uint32_t m[3];
	uint32_t tile_end[3]; /* tiles of segments 0..i (SwiGLU: [0] only) */
	const bf16 *x;
	uint32_t n, k, kt;    /* rows, columns, units per tile */
	uint32_t units;       /* tiles * kt */
	float *part;          /* [blocks][2][NP][SK_BM] */
	uint32_t *cnt;        /* [tiles], zero between launches */
	int out_f32, hf;
};

static __host__ __device__ constexpr size_t skinny_smem(int nt)
{
	return (size_t)SK_STAGES * (SK_BM + 8 * nt) * SK_BK * 2 +
	       (size_t)8 * nt * SK_RLD * sizeof(float);
}

/* Byte offset of 16-byte chunk c of row r in a unit's tile (8 chunks a row). */
static __device__ __forceinline__ uint32_t sk_swz(uint32_t r, uint32_t c)
{
	return (r * 8 + (c ^ (r & 7))) * 16;
}

/* Tile t: its segment and first row there (SwiGLU: output column). */
template <bool SWIGLU>
static __device__ __forceinline__ void sk_tile(const skinny_args &a, uint32_t t, int &seg,
					       uint32_t &j0)
{
	if (SWIGLU) {
		seg = 0;
		j0 = t * (SK_BM / 2);
		return;
	}
	seg = t < a.tile_end[0] ? 0 : t < a.tile_end[1] ? 1 : 2;
	j0 = (t - (seg ? a.tile_end[seg - 1] : 0)) * SK_BM;
}

/* Weights of unit u into a stage: 64 rows x 8 chunks, 4 per thread (each
 * thread one chunk column). Rows past the matrix and columns past k read
 * as zero. */
template <bool SWIGLU>
static __device__ __forceinline__ void sk_load_w(const skinny_args &a, uint32_t sw, uint32_t u)
{
	const uint32_t t = u / a.kt, c = threadIdx.x & 7;
	const uint32_t kc = (u - t * a.kt) * SK_BK + c * 8;
	const bool kin = kc < a.k;
	uint32_t j0;
	int seg;

	sk_tile<SWIGLU>(a, t, seg, j0);
#pragma unroll
	for (int i = 0; i < SK_BM / 16; i++) {
		const uint32_t r = (threadIdx.x >> 3) + 16 * i;
		const bf16 *w = SWIGLU ? a.w[r < SK_BM / 2 ? 0 : 1] : a.w[seg];
		const uint32_t j = SWIGLU ? j0 + (r & (SK_BM / 2 - 1)) : j0 + r;
		const bool ok = kin && j < a.m[seg];

		cp_async16_stream(sw + sk_swz(r, c), ok ? w + (size_t)j * a.k + kc : w, ok);
	}
}

/* Activations of unit u: NP rows x 8 chunks (rows past n zero). */
template <int NT>
static __device__ __forceinline__ void sk_load_x(const skinny_args &a, uint32_t sx, uint32_t u)
{
	const uint32_t kb = (u % a.kt) * SK_BK;

#pragma unroll
	for (uint32_t i = threadIdx.x; i < 8 * NT * 8; i += SK_THREADS) {
		const uint32_t r = i >> 3, c = i & 7, kc = kb + c * 8;
		const bool ok = r < a.n && kc < a.k;

		cp_async16(sx + sk_swz(r, c), ok ? a.x + (size_t)r * a.k + kc : a.x, ok);
	}
}

/* Block b's share of the units: [b * units / blocks, (b + 1) * units / blocks). */
static __device__ __forceinline__ uint32_t sk_start(uint32_t b, uint32_t units, uint32_t nb)
{
	return (uint32_t)((uint64_t)b * units / nb);
}

/* The last block whose share starts at or before unit x. */
static __device__ __forceinline__ uint32_t sk_owner(uint32_t x, uint32_t units, uint32_t nb)
{
	return (uint32_t)((((uint64_t)x + 1) * nb - 1) / units);
}

/* Write the finished tile t from red0 (fp32 [NP][SK_RLD]): bias, SwiGLU,
 * bf16 or fp32. */
template <int NT, bool SWIGLU>
static __device__ void sk_store(const skinny_args &a, const float *red0, uint32_t t)
{
	constexpr int CW = SWIGLU ? SK_BM / 2 : SK_BM; /* output columns */
	uint32_t j0;
	int seg;

	sk_tile<SWIGLU>(a, t, seg, j0);
	for (uint32_t i = threadIdx.x; i < a.n * CW; i += SK_THREADS) {
		const uint32_t q = i / CW, c = i % CW, j = j0 + c, m = a.m[seg];
		float v = red0[q * SK_RLD + c];

		if (j >= m)
			continue;
		if (SWIGLU) {
			/* as the swiglu kernel: g and u rounded to bf16 first */
			v = swiglu_bf(bf_round(v), bf_round(red0[q * SK_RLD + c + SK_BM / 2]), a.hf);
		} else if (a.bias[seg]) {
			v += __bfloat162float(a.bias[seg][j]);
		}
		if (a.out_f32)
			((float *)a.out[seg])[(size_t)q * m + j] = v;
		else
			((bf16 *)a.out[seg])[(size_t)q * m + j] = __float2bfloat16_rn(v);
	}
}

/*
 * The end of block b's segment [lo, hi) of tile t: the warps' sums into
 * red, then the tile's output when the segment is the whole tile or the
 * last part of it to finish; otherwise a partial slot (slot 0 for the
 * block's first tile, 1 for its last). Clears acc. Block-uniform.
 */
template <int NT, bool SWIGLU>
static __device__ void sk_tile_end(const skinny_args &a, float (&acc)[SK_MT][NT][4], float *red,
				   uint32_t t, uint32_t lo, uint32_t hi, uint32_t first_tile)
{
	constexpr int NP = 8 * NT;
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
	const uint32_t b = blockIdx.x, nb = gridDim.x;
	__shared__ uint32_t sk_last, sk_slot[SK_MAX_FAN];

	__syncthreads(); /* red is free: the previous tile's store is done */
	for (int pass = 0; pass < SK_THREADS / 32; pass++) {
		if (warp == pass) {
#pragma unroll
			for (int mt = 0; mt < SK_MT; mt++)
#pragma unroll
				for (int nt = 0; nt < NT; nt++)
#pragma unroll
					for (int e = 0; e < 4; e++) {
						const int r = mt * 16 + g + (e >> 1) * 8;
						const int q = nt * 8 + 2 * t4 + (e & 1);
						float *p = &red[q * SK_RLD + r];

						*p = pass ? *p + acc[mt][nt][e] : acc[mt][nt][e];
						acc[mt][nt][e] = 0.0f;
					}
		}
		__syncthreads();
	}
	if (lo != t * a.kt || hi != (t + 1) * a.kt) {
		const size_t slot_floats = (size_t)NP * SK_BM;
		float *part = a.part + ((size_t)b * 2 + (t != first_tile)) * slot_floats;

		for (uint32_t i = threadIdx.x; i < a.n * (SK_BM / 4); i += SK_THREADS) {
			const uint32_t q = i / (SK_BM / 4), c = (i % (SK_BM / 4)) * 4;

			__stcg((float4 *)&part[q * SK_BM + c], *(const float4 *)&red[q * SK_RLD + c]);
		}
		/* release: the slot before the count (pairs with the fence below) */
		__threadfence();
		__syncthreads();
		if (!threadIdx.x) {
			const uint32_t done = atomicAdd(&a.cnt[t], hi - lo) + (hi - lo);

			sk_last = done == a.kt;
			if (sk_last)
				a.cnt[t] = 0; /* nobody counts this tile again in this launch */
		}
		__syncthreads();
		if (!sk_last)
			return;
		/* acquire: every other share's slot is visible (pairs with the
		 * fence above, in those blocks) */
		__threadfence();
		{
			/* The shares' slots in block order; read SK_LOADS at a time
			 * (one L2 round trip each batch, not each slot). */
			const uint32_t b0 = sk_owner(t * a.kt, a.units, nb);
			const uint32_t nf = sk_owner((t + 1) * a.kt - 1, a.units, nb) - b0 + 1;

			for (uint32_t o = threadIdx.x; o < nf; o += SK_THREADS)
				sk_slot[o] = (b0 + o) * 2 + (t != sk_start(b0 + o, a.units, nb) / a.kt);
			__syncthreads();
			for (uint32_t i = threadIdx.x; i < a.n * (SK_BM / 4); i += SK_THREADS) {
				const uint32_t q = i / (SK_BM / 4), c = (i % (SK_BM / 4)) * 4;
				float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

				for (uint32_t o0 = 0; o0 < nf; o0 += SK_LOADS) {
					float4 v[SK_LOADS];

#pragma unroll
					for (int j = 0; j < SK_LOADS; j++)
						if (o0 + j < nf)
							v[j] = __ldcg((const float4 *)&a.part
								[sk_slot[o0 + j] * slot_floats +
								 q * SK_BM + c]);
#pragma unroll
					for (int j = 0; j < SK_LOADS; j++)
						if (o0 + j < nf) {
							s.x += v[j].x;
							s.y += v[j].y;
							s.z += v[j].z;
							s.w += v[j].w;
						}
				}
				*(float4 *)&red[q * SK_RLD + c] = s;
			}
		}
	}
	__syncthreads();
	sk_store<NT, SWIGLU>(a, red, t);
}

template <int NT, bool SWIGLU>
static __global__ void __launch_bounds__(SK_THREADS)
skinny_kernel(const __grid_constant__ skinny_args a)
{
	constexpr uint32_t W_BYTES = SK_BM * SK_BK * 2, X_BYTES = 8 * NT * SK_BK * 2;
	constexpr uint32_t STAGE = W_BYTES + X_BYTES;
	extern __shared__ __align__(128) unsigned char sk_smem[];
	float *red = (float *)(sk_smem + SK_STAGES * STAGE);
	const uint32_t base = smem_addr(sk_smem);
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const uint32_t u0 = sk_start(blockIdx.x, a.units, gridDim.x);
	const uint32_t u1 = sk_start(blockIdx.x + 1, a.units, gridDim.x);
	const uint32_t first_tile = u0 / a.kt;
	float acc[SK_MT][NT][4];
	uint32_t lo = u0;

#pragma unroll
	for (int mt = 0; mt < SK_MT; mt++)
#pragma unroll
		for (int nt = 0; nt < NT; nt++)
#pragma unroll
			for (int e = 0; e < 4; e++)
				acc[mt][nt][e] = 0.0f;

	/* Weights depend on no earlier kernel: in flight before the wait. */
#pragma unroll
	for (int s = 0; s < SK_STAGES - 1; s++)
		if (u0 + s < u1)
			sk_load_w<SWIGLU>(a, base + s * STAGE, u0 + s);
	pdl_trigger();
	pdl_wait();
#pragma unroll
	for (int s = 0; s < SK_STAGES - 1; s++) {
		if (u0 + s < u1)
			sk_load_x<NT>(a, base + s * STAGE + W_BYTES, u0 + s);
		cp_async_commit();
	}

	for (uint32_t u = u0; u < u1; u++) {
		const uint32_t s = (u - u0) % SK_STAGES, un = u + SK_STAGES - 1;
		const uint32_t sw = base + s * STAGE, sx = sw + W_BYTES;

		cp_async_wait<SK_STAGES - 2>();
		__syncthreads(); /* unit u landed; the stage loaded next is free */
		if (un < u1) {
			const uint32_t sn = base + ((s + SK_STAGES - 1) % SK_STAGES) * STAGE;

			sk_load_w<SWIGLU>(a, sn, un);
			sk_load_x<NT>(a, sn + W_BYTES, un);
		}
		cp_async_commit();
		{
			/* this warp's k16 slice: chunks 2 warp, 2 warp + 1 */
			uint32_t af[SK_MT][4], bfr[NT][2];

#pragma unroll
			for (int mt = 0; mt < SK_MT; mt++)
				ldsm_x4(sw + sk_swz(mt * 16 + (lane & 15), 2 * warp + (lane >> 4)),
					   af[mt]);
			if (NT == 1) {
				ldsm_x2(sx + sk_swz(lane & 7, 2 * warp + ((lane >> 3) & 1)),
					   bfr[0][0], bfr[0][1]);
			} else {
#pragma unroll
				for (int np = 0; np < NT / 2; np++) {
					uint32_t r[4];

					ldsm_x4(sx + sk_swz(np * 16 + ((lane >> 4) << 3) + (lane & 7),
							       2 * warp + ((lane >> 3) & 1)),
						   r);
					bfr[2 * np][0] = r[0];
					bfr[2 * np][1] = r[1];
					bfr[2 * np + 1][0] = r[2];
					bfr[2 * np + 1][1] = r[3];
				}
			}
#pragma unroll
			for (int mt = 0; mt < SK_MT; mt++)
#pragma unroll
				for (int nt = 0; nt < NT; nt++)
					mma_bf16(acc[mt][nt], af[mt], bfr[nt][0], bfr[nt][1]);
		}
		if (u + 1 == u1 || (u + 1) % a.kt == 0) {
			sk_tile_end<NT, SWIGLU>(a, acc, red, u / a.kt, lo, u + 1, first_tile);
			lo = u + 1;
		}
	}
	cp_async_wait<0>();
}

/* ------------------------------------------------------------ launchers */

extern "C" size_t kc_skinny_ws_bytes(int n_sms)
{
	return SK_CNT_BYTES + (size_t)(n_sms > 0 ? n_sms : 1) * SK_MAX_BPS * 2 * KC_SKINNY_MAX_N *
				      SK_BM * sizeof(float);
}

template <int NT, bool SWIGLU>
static int skinny_launch_nt(skinny_args *a, uint32_t tiles, void *ws, size_t ws_bytes, int n_sms,
			    const struct kc_skinny_cfg *cfg, cudaStream_t st)
{
	constexpr size_t smem = skinny_smem(NT);
	auto kern = skinny_kernel<NT, SWIGLU>;
	static int fit = 0; /* blocks an SM holds at once (per instance) */
	const size_t slot_bytes = (size_t)2 * 8 * NT * SK_BM * sizeof(float);
	uint64_t nb, most;

	if (!fit) {
		int o = 0;

		if (cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
					 (int)smem) != cudaSuccess ||
		    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o, kern, SK_THREADS, smem) !=
			    cudaSuccess) {
			(void)cudaGetLastError();
			return -EIO;
		}
		fit = o > 0 ? o : 1;
	}
	a->units = tiles * a->kt;
	a->cnt = (uint32_t *)ws;
	a->part = (float *)((char *)ws + SK_CNT_BYTES);
	/*
	 * As many blocks as fit at once (up to SK_MAX_BPS an SM), but shares
	 * of at least max(4, NP / 8) units and kt / 32: the block finishing a
	 * tile reads one slot of NP x 64 fp32 per share (at most a quarter of
	 * the tile's weight bytes, at most 34 slots < SK_MAX_FAN), and each
	 * share pays for a pipeline start and a slot.
	 */
	most = (uint64_t)(fit < SK_MAX_BPS ? fit : SK_MAX_BPS) * (uint32_t)n_sms;
	if (cfg->blocks)
		most = cfg->blocks;
	{
		uint32_t mu = NT > 4 ? NT : 4;

		mu = mu > (a->kt + 31) / 32 ? mu : (a->kt + 31) / 32;
		nb = a->units / mu;
	}
	nb = nb < most ? nb : most;
	nb = nb ? nb : 1;
	if ((ws_bytes - SK_CNT_BYTES) / slot_bytes < nb)
		return -EINVAL; /* workspace made for fewer SMs */
	return kc_launch_pdl(cfg->pdl && kc_pdl_enabled(), kern, dim3((uint32_t)nb),
			     dim3(SK_THREADS), smem, st, *a) == cudaSuccess ? 0 : -EIO;
}

template <bool SWIGLU>
static int skinny_launch(skinny_args *a, uint32_t tiles, void *ws, size_t ws_bytes, int n_sms,
			 const struct kc_skinny_cfg *cfg, cudaStream_t st)
{
	if (a->n <= 8)
		return skinny_launch_nt<1, SWIGLU>(a, tiles, ws, ws_bytes, n_sms, cfg, st);
	if (a->n <= 16)
		return skinny_launch_nt<2, SWIGLU>(a, tiles, ws, ws_bytes, n_sms, cfg, st);
	if (a->n <= 32)
		return skinny_launch_nt<4, SWIGLU>(a, tiles, ws, ws_bytes, n_sms, cfg, st);
	return skinny_launch_nt<8, SWIGLU>(a, tiles, ws, ws_bytes, n_sms, cfg, st);
}

static int skinny_args_ok(uint32_t n, uint32_t k, const void *in, const void *ws,
			  size_t ws_bytes, int n_sms)
{
	return n && n <= KC_SKINNY_MAX_N && k && k % 8 == 0 && !((uintptr_t)in & 15) && ws &&
	       ws_bytes > SK_CNT_BYTES && n_sms > 0;
}

/*
 * Where the skinny GEMM beats cuBLASLt (H200, time_cuda_gemv skinny, NOTES.md):
 * q/k/v stacked at every row count (one launch against three: 0.25-0.62x
 * the time on the 1B, 0.39-0.92x on the 8B); gate/up with SwiGLU up to 16
 * rows (0.78-0.95x); a plain matrix up to 8 rows below 40 MB (1B q/o/k/v
 * and down, 8B q/o/k/v: 0.71-0.97x; past 8 rows the tuned cuBLASLt ties or
 * wins). At 32-64 rows a unit of weights costs its load time plus its mma
 * time (they do not overlap), 35-50% of the copy rate at 64 rows, where
 * cuBLASLt (wgmma) reaches 75-85%; the LM head's size ties at 8-16 rows
 * and loses above.
 */
extern "C" int kc_skinny_suits(uint32_t n, uint32_t k, uint64_t m_all, enum kc_gemv_op op)
{
	const uint64_t bytes = m_all * k * 2;

	if (n < KC_SKINNY_MIN_N || n > KC_SKINNY_MAX_N || m_all >= 65536)
		return 0;
	if (op == KC_GEMV_QKV)
		return n <= 32; /* at 64 rows a batch-64 step ran 3-5% slower with it */
	if (op == KC_GEMV_SWIGLU)
		return n <= 16;
	return n <= 8 && bytes <= ((uint64_t)40 << 20);
}

extern "C" int kc_skinny_multi(const struct kc_gemv_seg seg[3], const void *in, uint32_t n,
			       uint32_t k, int out_f32, void *ws, size_t ws_bytes, int n_sms,
			       const struct kc_skinny_cfg *cfg, cudaStream_t st)
{
	skinny_args a = {};
	uint64_t tiles = 0;

	if (!skinny_args_ok(n, k, in, ws, ws_bytes, n_sms))
		return -EINVAL;
	for (int i = 0; i < 3; i++) {
		if (seg[i].m && (!seg[i].w || !seg[i].out || ((uintptr_t)seg[i].w & 15)))
			return -EINVAL;
		a.out[i] = seg[i].out;
		a.w[i] = (const bf16 *)seg[i].w;
		a.bias[i] = (const bf16 *)seg[i].bias;
		a.m[i] = seg[i].m;
		tiles += (seg[i].m + SK_BM - 1) / SK_BM;
		a.tile_end[i] = (uint32_t)tiles;
	}
	a.kt = (k + SK_BK - 1) / SK_BK;
	if (!tiles || tiles > SK_MAX_TILES || tiles * a.kt > 0x7fffffffu)
		return -EINVAL;
	a.x = (const bf16 *)in;
	a.n = n;
	a.k = k;
	a.out_f32 = out_f32;
	return skinny_launch<false>(&a, (uint32_t)tiles, ws, ws_bytes, n_sms, cfg, st);
}

extern "C" int kc_skinny_swiglu(void *out, const void *in, const void *w_gate, const void *w_up,
				uint32_t n, uint32_t k, uint32_t m, int hf, void *ws,
				size_t ws_bytes, int n_sms, const struct kc_skinny_cfg *cfg,
				cudaStream_t st)
{
	skinny_args a = {};
	uint64_t tiles = ((uint64_t)m + SK_BM / 2 - 1) / (SK_BM / 2);

	if (!skinny_args_ok(n, k, in, ws, ws_bytes, n_sms) || !out || !m || !w_gate || !w_up ||
	    ((uintptr_t)w_gate | (uintptr_t)w_up) & 15)
		return -EINVAL;
	a.kt = (k + SK_BK - 1) / SK_BK;
	if (tiles > SK_MAX_TILES || tiles * a.kt > 0x7fffffffu)
		return -EINVAL;
	a.out[0] = out;
	a.w[0] = (const bf16 *)w_gate;
	a.w[1] = (const bf16 *)w_up;
	a.m[0] = m;
	a.tile_end[0] = (uint32_t)tiles;
	a.x = (const bf16 *)in;
	a.n = n;
	a.k = k;
	a.hf = hf;
	return skinny_launch<true>(&a, (uint32_t)tiles, ws, ws_bytes, n_sms, cfg, st);
}

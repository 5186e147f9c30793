/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, matmul for few rows (decode): out[n, m] = in[n, k] @ W^T
 * (+ bias) for n <= KC_GEMV_MAX_N, bf16 operands, fp32 sums. At n = 1 this is
 * a matrix-vector product, bound by reading W once (2*m*k bytes). A
 * persistent grid of warps (16 an SM) walks the matrix rows; each warp keeps
 * two batches of eight 16-byte loads per lane in flight (8 KB a warp, 128 KB
 * an SM) and applies them to all n input rows, whose values stay in L1.
 * Launched as a programmatic dependent (sm_90), a GEMV issues its first
 * weight loads before it waits for the kernel that writes its input, and
 * lets the next kernel launch at once. H200, n = 1, back to back
 * (time_cuda_gemv): 95-96% of the copy rate on the 8B gate/up and down, 89%
 * on q/k/v, 78% on o; the 1B matrices (8-67 MB, one short wave of warps
 * each) 50-94%. cuBLASLt takes larger n and the shapes kc_gemv_suits()
 * leaves it.
 *
 * Fused forms (a decode layer's q/k/v and gate/up): NORM makes the input
 * rows in every block's prologue (residual add and RMSNorm, one launch less);
 * ROPE (q/k/v) rotates q and k in the epilogue and writes k and v to the KV
 * pages, rows d and d + hd/2 of a head summed by one warp (one launch less).
 *
 * Measurement knobs, read once: HEARTH_CUDA_PDL=0 launches every kernel the
 * ordinary way; HEARTH_CUDA_GEMV_ROWS=1|2|4 sets the matrix rows one warp
 * reads at a time (SwiGLU reads gate and up rows in pairs).
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_device.cuh"
#include "cuda_internal.h"

typedef __nv_bfloat16 bf16;

#define GEMV_THREADS 256
#define GEMV_WARPS (GEMV_THREADS / 32)
#define GEMV_LOADS 8 /* 16-byte loads per lane in a batch: rows x pieces */
#define GEMV_DEPTH 2 /* batches in flight per warp (4 of 4 loads: 1-3% slower) */
#define GEMV_BPS 2   /* blocks per SM of the persistent grid (16 warps; 1: slower) */
#define GEMV_LT_MIN_M 65536u /* matrices this tall go to cuBLASLt (the LM head) */
#define GEMV_NORM_SMEM ((size_t)96 << 10) /* NORM: input rows of n x k bf16 at most */

/* Output rows of one launch: up to three matrices stacked (segments), or the
 * gate and up matrices of a SwiGLU read together (one output row each). */
struct gemv_segs {
	void *out[3];
	const bf16 *w[3], *bias[3];
	uint32_t m[3];   /* rows of each segment; m[0] + m[1] + m[2] in total */
	int out_f32;
	int hf;          /* silu(g) (SWIGLU) and the normalised value (NORM) rounded to bf16 first */
	/* NORM: the input is rmsnorm(resid_in + add) * norm_w, made by every
	 * block in shared memory; block 0 stores resid_in + add to resid. */
	const bf16 *resid_in, *add, *norm_w;
	bf16 *resid;
	float eps;
	/* ROPE: q/k/v stacked (m[0] = nq * hd, m[1] = m[2] = nkv * hd); the
	 * epilogue rotates q and k as rope_kv_write does and writes the new k
	 * and v to the KV pages. Row groups: first the (head, d) pairs of q then
	 * k (rows d and d + hd/2 of a head, one warp), then v two rows a group. */
	struct {
		const int32_t *pos, *slot; /* [n]: step metadata */
		bf16 *kv;                  /* the pool */
		const float *inv_freq;     /* [hd / 2] */
		uint32_t *err;
		uint64_t n_slots, page_elems, layer_off;
		uint32_t pt, hd, n_pairs;  /* page tokens, head_dim, (nq + nkv) * hd / 2 */
	} rope;
};

/* Weights are read once per step: not kept in L1, and the 256-byte L2
 * prefetch fills whole DRAM bursts (each warp reads 512 contiguous bytes). */
static __device__ __forceinline__ uint4 ld_weight(const uint4 *p)
{
	uint4 v;

	asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
		     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
		     : "l"(p));
	return v;
}

/* Row rr of row group g: where it starts in its matrix. Rows past the last
 * read the last one (the result is dropped). SWIGLU: rows 0..R-1 are gate,
 * R..2R-1 the same rows of up. */
template <int RR, bool SWIGLU, bool ROPE>
static __device__ __forceinline__ uint32_t gemv_row_index(const gemv_segs &sg, uint32_t g, int rr)
{
	constexpr int R = SWIGLU ? RR / 2 : RR;

	if (ROPE) {
		const uint32_t half = sg.rope.hd / 2;

		/* a pair of rows rotated together, or two rows of v */
		return g < sg.rope.n_pairs ? g / half * sg.rope.hd + g % half + rr * half
					   : sg.m[0] + sg.m[1] + (g - sg.rope.n_pairs) * 2 + rr;
	}
	return g * R + rr % R;
}

template <int RR, bool SWIGLU, bool ROPE>
static __device__ __forceinline__ const uint4 *gemv_row(const gemv_segs &sg, uint32_t g, int rr,
							 size_t k8, uint32_t m_all)
{
	constexpr int R = SWIGLU ? RR / 2 : RR;
	uint32_t j = gemv_row_index<RR, SWIGLU, ROPE>(sg, g, rr);

	j = j < m_all ? j : m_all - 1;
	if (SWIGLU)
		return (const uint4 *)(rr < R ? sg.w[0] : sg.w[1]) + (size_t)j * k8;
	if (j < sg.m[0])
		return (const uint4 *)sg.w[0] + (size_t)j * k8;
	j -= sg.m[0];
	if (j < sg.m[1])
		return (const uint4 *)sg.w[1] + (size_t)j * k8;
	return (const uint4 *)sg.w[2] + (size_t)(j - sg.m[1]) * k8;
}

/* Batch b of group g: lane's pieces u at 16-byte index b*32*U + u*32 + lane
 * of each row (zero past the row's end). */
template <int RR, int U, bool SWIGLU, bool ROPE>
static __device__ __forceinline__ void gemv_load(uint4 (&t)[RR][U], const gemv_segs &sg,
						 uint32_t g, uint32_t b, size_t k8, uint32_t m_all,
						 int lane)
{
	const size_t c = (size_t)b * 32 * U + lane;

#pragma unroll
	for (int rr = 0; rr < RR; rr++) {
		const uint4 *p = gemv_row<RR, SWIGLU, ROPE>(sg, g, rr, k8, m_all);

#pragma unroll
		for (int u = 0; u < U; u++)
			t[rr][u] = c + u * 32 < k8 ? ld_weight(p + c + u * 32)
						   : make_uint4(0, 0, 0, 0);
	}
}

template <int NR, int RR, int U, bool SMEM>
static __device__ __forceinline__ void gemv_fma(float (&acc)[RR][NR], const uint4 (&t)[RR][U],
						const uint4 *x, uint32_t b, size_t k8, int lane)
{
	const size_t c = (size_t)b * 32 * U + lane;

	/* Past the row's end w is zero and x reads as zero: without branches
	 * the x loads (L1 hits) can all issue before the first FMA. Three or
	 * four input rows would spill that way: those stop at the end. */
#pragma unroll
	for (int u = 0; u < U; u++) {
		const bool in = c + u * 32 < k8;
		float xf[NR][8];

		if (NR > 2 && !in)
			break;
#pragma unroll
		for (int q = 0; q < NR; q++)
			unpack8(in ? (SMEM ? x[q * k8 + c + u * 32] : __ldg(x + q * k8 + c + u * 32))
				   : make_uint4(0, 0, 0, 0),
				xf[q]);
#pragma unroll
		for (int rr = 0; rr < RR; rr++) {
			float wf[8];

			unpack8(t[rr][u], wf);
#pragma unroll
			for (int q = 0; q < NR; q++)
#pragma unroll
				for (int e = 0; e < 8; e++)
					acc[rr][q] = fmaf(wf[e], xf[q][e], acc[rr][q]);
		}
	}
}

/*
 * ROPE's epilogue of group g: lane r * NR + q holds row r of the group for
 * input row q, v its sum. As the unfused path: the bias added, the value
 * rounded to bf16 (q, k and v are stored so), then q and k rotated as
 * rope_kv_write rotates them (rope_pair, hf rounding included), and the
 * token's k and v written to its KV slot (a padding token's to none; a bad
 * slot or position sets KC_ERR_SLOT and writes no page).
 */
template <int NR, int RR>
static __device__ __forceinline__ void gemv_store_rope(float v, const gemv_segs &sg, uint32_t g,
						       int lane)
{
	const int r = lane / NR, q = lane % NR;
	const uint32_t hd = sg.rope.hd, half = hd / 2, mq = sg.m[0], mkv = sg.m[1];
	const bool pair = g < sg.rope.n_pairs; /* warp-uniform */
	uint32_t j = gemv_row_index<RR, false, true>(sg, g, r), seg = 0;
	float x = 0.0f, o;

	static_assert(RR == 2, "rope pairs are two rows");
	if (lane < 2 * NR) {
		const bf16 *bias = sg.bias[0];

		if (j >= mq) {
			j -= mq;
			seg = 1;
			bias = sg.bias[1];
			if (j >= mkv) {
				j -= mkv;
				seg = 2;
				bias = sg.bias[2];
			}
		}
		x = bf_round(bias ? v + __bfloat162float(bias[j]) : v);
	}
	/* the other row of the pair: lanes q and NR + q swap values */
	o = __shfl_sync(0xffffffffu, x, lane < NR ? lane + NR : lane - NR);
	if (lane >= 2 * NR)
		return;
	/* a padding token's q and k stay as they are, as rope_kv_write leaves them */
	if (pair && sg.rope.slot[q] != KERN_SLOT_PAD) {
		const float2 y = rope_pair(r ? o : x, r ? x : o, sg.rope.pos[q],
					   sg.rope.inv_freq[g % half], sg.hf);

		x = r ? y.y : y.x;
	}
	{
		const bf16 y = __float2bfloat16_rn(x);
		const uint32_t m = seg == 0 ? mq : mkv;

		((bf16 *)(seg == 0 ? sg.out[0] : seg == 1 ? sg.out[1] : sg.out[2]))[(size_t)q * m + j] = y;
		if (seg) {
			const int32_t p = sg.rope.pos[q], sl = sg.rope.slot[q];

			if (sl == KERN_SLOT_PAD)
				return;
			if (p < 0 || sl < 0 || (uint64_t)sl >= sg.rope.n_slots) {
				set_err(sg.rope.err, KC_ERR_SLOT);
				return;
			}
			/* head j / hd of k (seg 1) or v (seg 2), as rope_kv_write lays them out */
			sg.rope.kv[(uint64_t)(sl / sg.rope.pt) * sg.rope.page_elems + sg.rope.layer_off +
				   (uint64_t)(sl % sg.rope.pt) * hd +
				   ((seg - 1) * (mkv / hd) + j / hd) * (uint64_t)sg.rope.pt * hd + j % hd] = y;
		}
	}
}

/* Group g done: sum acc over the warp; lane r * NR + q writes output row
 * g * R + r of input row q (ROPE: gemv_store_rope). Clears acc. */
template <int NR, int RR, bool SWIGLU, bool ROPE>
static __device__ __forceinline__ void gemv_store(float (&acc)[RR][NR], const gemv_segs &sg,
						  uint32_t g, uint32_t m_all, int lane)
{
	constexpr int R = SWIGLU ? RR / 2 : RR;
	float v = 0.0f, v2 = 0.0f;

#pragma unroll
	for (int rr = 0; rr < RR; rr++)
#pragma unroll
		for (int q = 0; q < NR; q++) {
			float s = warp_sum(acc[rr][q]);

			if (rr < R && lane == rr * NR + q)
				v = s;
			if (SWIGLU && rr >= R && lane == (rr - R) * NR + q)
				v2 = s;
			acc[rr][q] = 0.0f;
		}
	if constexpr (ROPE) {
		gemv_store_rope<NR, RR>(v, sg, g, lane);
		return;
	}
	if (lane < R * NR && g * R + lane / NR < m_all) {
		uint32_t j = g * R + lane / NR, q = lane % NR, seg = 0, m;

		if (SWIGLU) {
			/* as the swiglu kernel: g and u rounded to bf16 first */
			v = swiglu_bf(bf_round(v), bf_round(v2), sg.hf);
		} else {
			if (j >= sg.m[0]) {
				j -= sg.m[0];
				seg = 1;
				if (j >= sg.m[1]) {
					j -= sg.m[1];
					seg = 2;
				}
			}
			{
				const bf16 *bias = seg == 0   ? sg.bias[0]
						   : seg == 1 ? sg.bias[1]
							      : sg.bias[2];

				if (bias)
					v += __bfloat162float(bias[j]);
			}
		}
		m = seg == 0 ? sg.m[0] : seg == 1 ? sg.m[1] : sg.m[2];
		{
			void *out = seg == 0 ? sg.out[0] : seg == 1 ? sg.out[1] : sg.out[2];

			if (sg.out_f32)
				((float *)out)[(size_t)q * m + j] = v;
			else
				((bf16 *)out)[(size_t)q * m + j] = __float2bfloat16_rn(v);
		}
	}
}

/*
 * NORM's prologue, after pdl_wait(): the NR input rows as the unfused
 * add_rmsnorm kernel makes them (the sum rounded to bf16 and stored, the
 * sum of squares over the rounded values, the normalised value rounded
 * first where hf), into xs (NR x k bf16). Each thread rereads only the
 * pieces it wrote, so one barrier (the reduction's) separates the passes.
 */
template <int NR>
static __device__ __forceinline__ void gemv_norm_rows(const gemv_segs &sg, uint4 *xs, size_t k8,
						      uint32_t k)
{
	__shared__ float red[NR][GEMV_WARPS];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const bool store = blockIdx.x == 0;
	float ss[NR], inv[NR];

#pragma unroll
	for (int q = 0; q < NR; q++) {
		const uint4 *ri = (const uint4 *)sg.resid_in + q * k8;
		const uint4 *a = sg.add ? (const uint4 *)sg.add + q * k8 : nullptr;

		ss[q] = 0.0f;
		for (size_t j = threadIdx.x; j < k8; j += GEMV_THREADS) {
			float x[8], y[8];

			unpack8(ri[j], x);
			if (a) {
				unpack8(a[j], y);
#pragma unroll
				for (int e = 0; e < 8; e++)
					x[e] = bf_round(x[e] + y[e]);
			}
#pragma unroll
			for (int e = 0; e < 8; e++)
				ss[q] = fmaf(x[e], x[e], ss[q]);
			xs[q * k8 + j] = pack8(x);
			if (store)
				((uint4 *)sg.resid)[q * k8 + j] = pack8(x);
		}
		ss[q] = warp_sum(ss[q]);
		if (!lane)
			red[q][warp] = ss[q];
	}
	__syncthreads();
#pragma unroll
	for (int q = 0; q < NR; q++) {
		float t = 0.0f;

#pragma unroll
		for (int w = 0; w < GEMV_WARPS; w++)
			t += red[q][w];
		inv[q] = rsqrtf(t / (float)k + sg.eps);
	}
#pragma unroll
	for (int q = 0; q < NR; q++)
		for (size_t j = threadIdx.x; j < k8; j += GEMV_THREADS) {
			float x[8], w[8];

			unpack8(xs[q * k8 + j], x);
			unpack8(((const uint4 *)sg.norm_w)[j], w);
#pragma unroll
			for (int e = 0; e < 8; e++)
				x[e] = sg.hf ? bf_round(x[e] * inv[q]) * w[e] : x[e] * inv[q] * w[e];
			xs[q * k8 + j] = pack8(x);
		}
	__syncthreads();
}

/*
 * Warp w of the grid takes row groups w, w + warps, ... (R output rows each:
 * RR matrix rows), each in batches of U pieces per row, and walks the
 * sequence of (group, batch) steps with NBUF batches in flight: a batch's
 * registers load the step NBUF ahead as soon as it is summed. The first
 * NBUF are issued before pdl_wait(): weights depend on no earlier kernel.
 */
template <int NR, int RR, int U, bool SWIGLU, bool NORM, bool ROPE>
static __global__ void __launch_bounds__(GEMV_THREADS, GEMV_BPS)
gemv_kernel(const __grid_constant__ gemv_segs sg, const bf16 *in, uint32_t k, uint32_t n_groups)
{
	extern __shared__ uint4 gemv_xs[]; /* NORM: the normalised input rows */
	const int lane = threadIdx.x & 31;
	const uint32_t w0 = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
	const uint32_t nw = gridDim.x * GEMV_WARPS;
	const size_t k8 = k / 8;
	const uint32_t nb = (uint32_t)((k8 + 32 * U - 1) / (32 * U));
	const uint32_t m_all = SWIGLU ? sg.m[0] : sg.m[0] + sg.m[1] + sg.m[2];
	const uint32_t steps = w0 < n_groups ? (n_groups - w0 + nw - 1) / nw * nb : 0;
	const uint4 *x = NORM ? gemv_xs : (const uint4 *)in;
	constexpr int NBUF = GEMV_DEPTH;
	uint32_t lg = w0, lb = 0, cg = w0, cb = 0; /* next step to load, to sum */
	uint4 t[NBUF][RR][U];
	float acc[RR][NR];

#define GEMV_NEXT(g, b)                                                                        \
	do {                                                                                   \
		if (++(b) == nb) {                                                             \
			(b) = 0;                                                               \
			(g) += nw;                                                             \
		}                                                                              \
	} while (0)

#pragma unroll
	for (int rr = 0; rr < RR; rr++)
#pragma unroll
		for (int q = 0; q < NR; q++)
			acc[rr][q] = 0.0f;
#pragma unroll
	for (int i = 0; i < NBUF; i++)
		if (i < steps) {
			gemv_load<RR, U, SWIGLU, ROPE>(t[i], sg, lg, lb, k8, m_all, lane);
			GEMV_NEXT(lg, lb);
		}
	/* The next kernel may launch now, but not after ROPE's: attention,
	 * whose blocks would crowd onto the first SMs this grid frees. */
	if (!ROPE)
		pdl_trigger();
	pdl_wait();
	if (NORM)
		gemv_norm_rows<NR>(sg, gemv_xs, k8, k);
	for (uint32_t s = 0; s < steps; s += NBUF) {
#pragma unroll
		for (int i = 0; i < NBUF; i++) {
			if (s + i >= steps)
				break;
			gemv_fma<NR, RR, U, NORM>(acc, t[i], x, cb, k8, lane);
			if (cb == nb - 1)
				gemv_store<NR, RR, SWIGLU, ROPE>(acc, sg, cg, m_all, lane);
			GEMV_NEXT(cg, cb);
			if (s + i + NBUF < steps) {
				gemv_load<RR, U, SWIGLU, ROPE>(t[i], sg, lg, lb, k8, m_all, lane);
				GEMV_NEXT(lg, lb);
			}
		}
	}
#undef GEMV_NEXT
}

/* ------------------------------------------------------------ launchers */

static int pdl_state = -1;

/* PDL needs sm_90; HEARTH_CUDA_PDL=0 turns it off (measurements). */
extern "C" int kc_pdl_enabled(void)
{
	int s = __atomic_load_n(&pdl_state, __ATOMIC_RELAXED);

	if (s < 0) {
		const char *e = getenv("HEARTH_CUDA_PDL");
		int dev = 0, major = 0;

		s = cudaGetDevice(&dev) == cudaSuccess &&
		    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) ==
			    cudaSuccess &&
		    major >= 9 && !(e && !strcmp(e, "0"));
		(void)cudaGetLastError();
		__atomic_store_n(&pdl_state, s, __ATOMIC_RELAXED);
	}
	return s;
}

extern "C" void kc_pdl_override(int on)
{
	__atomic_store_n(&pdl_state, on ? -1 : 0, __ATOMIC_RELAXED);
}

/* An integer from the environment (measurements), read once; dflt when unset. */
static int env_knob(int *cache, const char *name, int dflt)
{
	int v = __atomic_load_n(cache, __ATOMIC_RELAXED);

	if (v < 0) {
		const char *e = getenv(name);

		v = e && atoi(e) > 0 ? atoi(e) : dflt;
		__atomic_store_n(cache, v, __ATOMIC_RELAXED);
	}
	return v;
}

template <int NR, int RR, bool SWIGLU, bool NORM, bool ROPE>
static int gemv_launch_nr(const gemv_segs *sg, const bf16 *in, uint32_t k, uint32_t m_all,
			  uint32_t blocks, int pdl, cudaStream_t st)
{
	constexpr int R = SWIGLU ? RR / 2 : RR, U = GEMV_LOADS / RR;
	auto kern = gemv_kernel<NR, RR, U, SWIGLU, NORM, ROPE>;
	/* Blocks that fit on the device at once, per instance (and, NORM, per
	 * size of its shared input rows). */
	static int fit = 0, sms = 0;
	static size_t fit_smem = 0;
	const size_t smem = NORM ? (size_t)NR * k * sizeof(bf16) : 0;
	uint32_t n_groups = (m_all + R - 1) / R, grid;

	if (!fit || smem != fit_smem) {
		int o = 0, dev = 0;

		if ((NORM && cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
						  (int)GEMV_NORM_SMEM) != cudaSuccess) ||
		    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o, kern, GEMV_THREADS, smem) !=
			    cudaSuccess ||
		    cudaGetDevice(&dev) != cudaSuccess ||
		    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) !=
			    cudaSuccess) {
			(void)cudaGetLastError();
			return -EIO;
		}
		fit = o > 0 ? o * sms : 1;
		fit_smem = smem;
	}
	/* A grid that stays resident: at most what fits at once. */
	grid = (n_groups + GEMV_WARPS - 1) / GEMV_WARPS;
	grid = grid < blocks ? grid : blocks;
	grid = grid < (uint32_t)fit ? grid : (uint32_t)fit;
	return kc_launch_pdl(pdl, kern, dim3(grid), dim3(GEMV_THREADS), smem, st, *sg, in, k,
			     n_groups) == cudaSuccess ? 0 : -EIO;
}

template <int RR, bool SWIGLU, bool NORM, bool ROPE = false>
static int gemv_launch_rr(const gemv_segs *sg, const void *in, uint32_t n, uint32_t k,
			  uint32_t m_all, uint32_t blocks, int pdl, cudaStream_t st)
{
	/* Four matrix rows of three or four inputs spill (128 registers): two. */
	constexpr int RR34 = RR < 4 ? RR : 2;
	const bf16 *x = (const bf16 *)in;

	static_assert(KC_GEMV_MAX_N == 4, "one instance per row count");
	switch (n) {
	case 1: return gemv_launch_nr<1, RR, SWIGLU, NORM, ROPE>(sg, x, k, m_all, blocks, pdl, st);
	case 2: return gemv_launch_nr<2, RR, SWIGLU, NORM, ROPE>(sg, x, k, m_all, blocks, pdl, st);
	case 3: return gemv_launch_nr<3, RR34, SWIGLU, NORM, ROPE>(sg, x, k, m_all, blocks, pdl, st);
	default: return gemv_launch_nr<4, RR34, SWIGLU, NORM, ROPE>(sg, x, k, m_all, blocks, pdl, st);
	}
}

template <bool NORM>
static int gemv_launch_t(const gemv_segs *sg, bool swiglu, const void *in, uint32_t n,
			 uint32_t k, const struct kc_gemv_cfg *cfg, cudaStream_t st)
{
	/* NORM: the backend's row choices only (gemv_cfg), not the four-row
	 * variants a measurement can ask for (fewer instances to build). */
	uint32_t rows = cfg->rows, blocks = cfg->blocks ? cfg->blocks : 1;
	int pdl = cfg->pdl && kc_pdl_enabled();

	if (swiglu) {
		uint32_t m = sg->m[0];

		if constexpr (!NORM) {
			if (rows >= 4)
				return gemv_launch_rr<4, true, false>(sg, in, n, k, m, blocks, pdl, st);
		}
		return gemv_launch_rr<2, true, NORM>(sg, in, n, k, m, blocks, pdl, st);
	}
	{
		uint32_t m = sg->m[0] + sg->m[1] + sg->m[2];

		/* ROPE: the rows of a rotated pair in one warp */
		if (sg->rope.hd)
			return gemv_launch_rr<2, false, NORM, true>(sg, in, n, k, m, blocks, pdl, st);
		if constexpr (!NORM) {
			if (rows >= 4)
				return gemv_launch_rr<4, false, false>(sg, in, n, k, m, blocks, pdl,
								       st);
		}
		if (rows == 2 || (NORM && rows > 2))
			return gemv_launch_rr<2, false, NORM>(sg, in, n, k, m, blocks, pdl, st);
		return gemv_launch_rr<1, false, NORM>(sg, in, n, k, m, blocks, pdl, st);
	}
}

/* sg->resid_in set: the NORM prologue makes the input rows (in unused). */
static int gemv_launch(const gemv_segs *sg, bool swiglu, const void *in, uint32_t n, uint32_t k,
		       const struct kc_gemv_cfg *cfg, cudaStream_t st)
{
	return sg->resid_in ? gemv_launch_t<true>(sg, swiglu, in, n, k, cfg, st)
			    : gemv_launch_t<false>(sg, swiglu, in, n, k, cfg, st);
}

static int gemv_args_ok(uint32_t n, uint32_t k, const void *in)
{
	return n && n <= KC_GEMV_MAX_N && k % 8 == 0 && k && !((uintptr_t)in & 15);
}

/*
 * The backend's choice (H200, time_cuda_gemv): one matrix row per warp, two
 * at two input rows (8B o and down 10-12% faster, the 1B matrices within
 * 5%); SwiGLU reads a gate and an up row; GEMV_BPS blocks per SM (times
 * HEARTH_CUDA_GEMV_OCC, as many as fit); PDL. HEARTH_CUDA_GEMV_ROWS
 * overrides the rows.
 */
static struct kc_gemv_cfg gemv_cfg(uint32_t n, int n_sms, bool swiglu)
{
	static int rows_env = -1;
	struct kc_gemv_cfg cfg;
	int rows = env_knob(&rows_env, "HEARTH_CUDA_GEMV_ROWS", 0);

	rows = rows ? rows : n == 2 ? 2 : 1;
	cfg.rows = swiglu ? (rows >= 4 ? 4 : 2) : (uint32_t)rows;
	cfg.blocks = (uint32_t)(n_sms > 0 ? n_sms : 1) * GEMV_BPS;
	cfg.pdl = 1;
	return cfg;
}

/*
 * Where the GEMV beats cuBLASLt (H200, time_cuda_gemv, PDL): at one and two
 * input rows, every matrix but the LM head's size, which cuBLASLt's kernel
 * reads about 6% faster; at three and four, where the FMAs of every piece
 * make the GEMV issue-bound, a plain matrix only up to 16 MB (1B down, 8B o
 * and down: cuBLASLt 10-35% faster), but q/k/v and gate/up always (cuBLASLt
 * takes three launches for those).
 */
extern "C" int kc_gemv_suits(uint32_t n, uint32_t k, uint64_t m_all, enum kc_gemv_op op)
{
	if (!n || n > KC_GEMV_MAX_N || m_all >= GEMV_LT_MIN_M)
		return 0;
	return n <= 2 || op != KC_GEMV_PLAIN || m_all * k * 2 <= ((uint64_t)16 << 20);
}

/* NORM's arguments into sg: -EINVAL where they do not suit the prologue. */
static int gemv_norm_args(gemv_segs *sg, const struct kern_norm *nm, int hf, uint32_t n,
			  uint32_t k)
{
	const size_t bytes = (size_t)n * k * sizeof(bf16);
	const char *ri = (const char *)nm->resid_in, *r = (const char *)nm->resid;

	if (!nm->resid || !nm->resid_in || !nm->weight || bytes > GEMV_NORM_SMEM ||
	    ((uintptr_t)nm->resid | (uintptr_t)nm->resid_in | (uintptr_t)nm->weight |
	     (uintptr_t)nm->add) & 15 ||
	    !(r >= ri + bytes || ri >= r + bytes))
		return -EINVAL;
	sg->resid_in = (const bf16 *)nm->resid_in;
	sg->add = (const bf16 *)nm->add;
	sg->norm_w = (const bf16 *)nm->weight;
	sg->resid = (bf16 *)nm->resid;
	sg->eps = nm->eps;
	sg->hf = hf;
	return 0;
}

/* ROPE's arguments into sg: -EINVAL where the q/k/v segments are not
 * whole heads of the pool's geometry. */
static int gemv_rope_args(gemv_segs *sg, const struct kern_rope *ro, uint32_t *err, int hf,
			  const struct kc_gemv_seg seg[3])
{
	const struct kern_kv *kv = ro->kv;
	const uint32_t hd = kv->head_dim;

	if (!ro->batch->pos || !ro->batch->slot || !ro->inv_freq || !err || !kv->base || !hd ||
	    hd % 2 || !kv->page_tokens || !kv->n_pages || ro->layer >= kv->n_layers ||
	    !ro->n_heads || seg[0].m != ro->n_heads * hd || seg[1].m != kv->n_kv_heads * hd ||
	    seg[2].m != seg[1].m)
		return -EINVAL;
	sg->rope.pos = ro->batch->pos;
	sg->rope.slot = ro->batch->slot;
	sg->rope.kv = (bf16 *)kv->base;
	sg->rope.inv_freq = ro->inv_freq;
	sg->rope.err = err;
	sg->rope.n_slots = (uint64_t)kv->n_pages * kv->page_tokens;
	sg->rope.page_elems = kern_kv_page_elems(kv);
	sg->rope.layer_off = kern_kv_offset(kv, 0, ro->layer, 0, 0, 0);
	sg->rope.pt = kv->page_tokens;
	sg->rope.hd = hd;
	sg->rope.n_pairs = (ro->n_heads + kv->n_kv_heads) * (hd / 2);
	sg->hf = hf;
	return 0;
}

/* Whether nm suits the NORM prologue (gemv_norm_args) at n rows of k. */
extern "C" int kc_gemv_norm_fits(const struct kern_norm *nm, uint32_t n, uint32_t k)
{
	gemv_segs sg = {};

	return gemv_norm_args(&sg, nm, 0, n, k) == 0;
}

static int gemv_multi(const struct kc_gemv_seg seg[3], const void *in, uint32_t n, uint32_t k,
		      int out_f32, const struct kc_gemv_cfg *cfg, const struct kern_norm *nm,
		      const struct kern_rope *ro, uint32_t *err, int hf, cudaStream_t st)
{
	struct gemv_segs sg = {};
	uint64_t m_all = 0;

	if (!gemv_args_ok(n, k, in) || (nm && gemv_norm_args(&sg, nm, hf, n, k) < 0) ||
	    (ro && (out_f32 || gemv_rope_args(&sg, ro, err, hf, seg) < 0)))
		return -EINVAL;
	for (int i = 0; i < 3; i++) {
		if (seg[i].m && (!seg[i].w || !seg[i].out || ((uintptr_t)seg[i].w & 15)))
			return -EINVAL;
		sg.out[i] = seg[i].out;
		sg.w[i] = (const bf16 *)seg[i].w;
		sg.bias[i] = (const bf16 *)seg[i].bias;
		sg.m[i] = seg[i].m;
		m_all += seg[i].m;
	}
	if (!m_all || m_all > 0x7fffffffu)
		return -EINVAL;
	sg.out_f32 = out_f32;
	return gemv_launch(&sg, false, in, n, k, cfg, st);
}

static int gemv_swiglu(void *out, const void *in, const void *w_gate, const void *w_up,
		       uint32_t n, uint32_t k, uint32_t m, int hf, const struct kc_gemv_cfg *cfg,
		       const struct kern_norm *nm, cudaStream_t st)
{
	struct gemv_segs sg = {};

	if (!gemv_args_ok(n, k, in) || !m || m > 0x7fffffffu ||
	    ((uintptr_t)w_gate | (uintptr_t)w_up) & 15 ||
	    (nm && gemv_norm_args(&sg, nm, hf, n, k) < 0))
		return -EINVAL;
	sg.out[0] = out;
	sg.w[0] = (const bf16 *)w_gate;
	sg.w[1] = (const bf16 *)w_up;
	sg.m[0] = m;
	sg.hf = hf;
	return gemv_launch(&sg, true, in, n, k, cfg, st);
}

extern "C" int kc_gemv_multi_cfg(const struct kc_gemv_seg seg[3], const void *in, uint32_t n,
				 uint32_t k, int out_f32, const struct kc_gemv_cfg *cfg,
				 cudaStream_t st)
{
	return gemv_multi(seg, in, n, k, out_f32, cfg, NULL, NULL, NULL, 0, st);
}

extern "C" int kc_gemv_swiglu_cfg(void *out, const void *in, const void *w_gate,
				  const void *w_up, uint32_t n, uint32_t k, uint32_t m, int hf,
				  const struct kc_gemv_cfg *cfg, cudaStream_t st)
{
	return gemv_swiglu(out, in, w_gate, w_up, n, k, m, hf, cfg, NULL, st);
}

extern "C" int kc_gemv_qkv(const struct kern_norm *nm, const void *in, const struct kern_rope *ro,
			   uint32_t *err, int hf, const struct kc_gemv_seg seg[3], uint32_t n,
			   uint32_t k, int n_sms, cudaStream_t st)
{
	struct kc_gemv_cfg cfg = gemv_cfg(n, n_sms, false);

	return gemv_multi(seg, nm ? nm->resid_in : in, n, k, 0, &cfg, nm, ro, err, hf, st);
}

extern "C" int kc_gemv_norm_swiglu(const struct kern_norm *nm, int hf, void *out,
				   const void *w_gate, const void *w_up, uint32_t n, uint32_t k,
				   uint32_t m, int n_sms, cudaStream_t st)
{
	struct kc_gemv_cfg cfg = gemv_cfg(n, n_sms, true);

	return gemv_swiglu(out, nm->resid_in, w_gate, w_up, n, k, m, hf, &cfg, nm, st);
}

extern "C" int kc_gemv_multi(const struct kc_gemv_seg seg[3], const void *in, uint32_t n,
			     uint32_t k, int n_sms, cudaStream_t st)
{
	struct kc_gemv_cfg cfg = gemv_cfg(n, n_sms, false);

	return kc_gemv_multi_cfg(seg, in, n, k, 0, &cfg, st);
}

extern "C" int kc_gemv_swiglu(void *out, const void *in, const void *w_gate, const void *w_up,
			      uint32_t n, uint32_t k, uint32_t m, int n_sms, int hf, cudaStream_t st)
{
	struct kc_gemv_cfg cfg = gemv_cfg(n, n_sms, true);

	return kc_gemv_swiglu_cfg(out, in, w_gate, w_up, n, k, m, hf, &cfg, st);
}

extern "C" int kc_gemv(void *out, int out_f32, const void *in, const void *w, const void *bias,
		       uint32_t n, uint32_t k, uint32_t m, int n_sms, cudaStream_t st)
{
	const struct kc_gemv_seg seg[3] = { { out, w, bias, m }, { NULL, NULL, NULL, 0 },
					    { NULL, NULL, NULL, 0 } };
	struct kc_gemv_cfg cfg = gemv_cfg(n, n_sms, false);

	return kc_gemv_multi_cfg(seg, in, n, k, out_f32, &cfg, st);
}

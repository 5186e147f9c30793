/* SPDX-License-Identifier: MIT */
/*
 * Warp-level tensor-core helpers (sm_80+ PTX): cp.async into shared memory,
 * ldmatrix, mma.sync m16n8k16 bf16 -> fp32, and the fast exp2 of the softmax.
 * Included by .cu files only.
 */
#ifndef KERN_CUDA_MMA_CUH
#define KERN_CUDA_MMA_CUH

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

static __device__ __forceinline__ uint32_t smem_addr(const void *p)
{
	return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, bypassing L1; zero-filled when !valid (src
 * is then not read). */
static __device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
		     "r"(valid ? 16 : 0));
}

/* The same with an L2 prefetch of the surrounding 256 bytes, for streams
 * read once (weights). */
static __device__ __forceinline__ void cp_async16_stream(uint32_t dst, const void *src, bool valid)
{
	asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(dst),
		     "l"(src), "r"(valid ? 16 : 0));
}

static __device__ __forceinline__ void cp_async_commit(void)
{
	asm volatile("cp.async.commit_group;\n" ::);
}

static __device__ __forceinline__ void cp_async_wait_all(void)
{
	asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

static __device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t r[4])
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(addr));
}

/* Two 8x8 b16 matrices from the row addresses of lanes 0..15. */
static __device__ __forceinline__ void ldsm_x2(uint32_t addr, uint32_t &r0, uint32_t &r1)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
		     : "=r"(r0), "=r"(r1)
		     : "r"(addr));
}

static __device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t r[4])
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(addr));
}

/* c += a (16x16, row) . b (16x8, col), bf16 in, fp32 accumulate. */
static __device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0,
						uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
		     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
	__nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);

	return *reinterpret_cast<uint32_t *>(&h);
}

/* 2^x, flushing results below 2^-126 to 0 (no weight in a softmax); 0 for
 * x = -inf. */
static __device__ __forceinline__ float fast_exp2(float x)
{
	float y;

	asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
	return y;
}

static __device__ __forceinline__ int warp_max_int(int x)
{
	return __reduce_max_sync(0xffffffffu, x);
}

/* Wait until at most n of this thread's cp.async groups are still pending. */
template <int N>
static __device__ __forceinline__ void cp_async_wait(void)
{
	asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/*
 * Scale a tile of NT n8 score tiles (positions p0 + 8j + 2t4 and + 1, C
 * layout) to base 2 and mask it causally: -inf past a row's own position
 * (lim_a: row g, lim_b: row g + 8) or at and past end.
 */
template <int NT>
static __device__ __forceinline__ void fa_mask(float sc[NT][4], int32_t p0, int t4, int32_t lim_a,
					       int32_t lim_b, int32_t end, float sl2)
{
#pragma unroll
	for (int j = 0; j < NT; j++) {
		const int32_t p = p0 + j * 8 + 2 * t4;

		sc[j][0] = p <= lim_a && p < end ? sc[j][0] * sl2 : -INFINITY;
		sc[j][1] = p + 1 <= lim_a && p + 1 < end ? sc[j][1] * sl2 : -INFINITY;
		sc[j][2] = p <= lim_b && p < end ? sc[j][2] * sl2 : -INFINITY;
		sc[j][3] = p + 1 <= lim_b && p + 1 < end ? sc[j][3] * sl2 : -INFINITY;
	}
}

/*
 * Flash-attention step of one warp over a tile of NT n8 score tiles in the
 * m16n8 C layout (this lane: row g in [0] [1], row g + 8 in [2] [3]), the
 * scores scaled to base 2 and masked to -inf. Updates the rows' running
 * maxima and this lane's share of their sums (the quad adds its shares at
 * the end), rescales O (DT n8 tiles) and leaves the probabilities in sc. A
 * row that has seen nothing yet keeps m = -inf; 0 then stands in as its
 * reference (every p and alpha is 0).
 */
template <int NT, int DT>
static __device__ __forceinline__ void fa_softmax(float sc[NT][4], float o[DT][4], float &m_a,
						  float &m_b, float &l_a, float &l_b)
{
	float mx_a = -INFINITY, mx_b = -INFINITY, su_a = 0.0f, su_b = 0.0f;

#pragma unroll
	for (int j = 0; j < NT; j++) {
		mx_a = fmaxf(mx_a, fmaxf(sc[j][0], sc[j][1]));
		mx_b = fmaxf(mx_b, fmaxf(sc[j][2], sc[j][3]));
	}
	mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
	mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
	mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
	mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));

	const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
	const float ref_a = mn_a == -INFINITY ? 0.0f : mn_a;
	const float ref_b = mn_b == -INFINITY ? 0.0f : mn_b;
	const float al_a = fast_exp2(m_a - ref_a), al_b = fast_exp2(m_b - ref_b);

	m_a = mn_a;
	m_b = mn_b;
#pragma unroll
	for (int j = 0; j < NT; j++) {
		sc[j][0] = fast_exp2(sc[j][0] - ref_a);
		sc[j][1] = fast_exp2(sc[j][1] - ref_a);
		sc[j][2] = fast_exp2(sc[j][2] - ref_b);
		sc[j][3] = fast_exp2(sc[j][3] - ref_b);
		su_a += sc[j][0] + sc[j][1];
		su_b += sc[j][2] + sc[j][3];
	}
	l_a = l_a * al_a + su_a;
	l_b = l_b * al_b + su_b;
#pragma unroll
	for (int j = 0; j < DT; j++) {
		o[j][0] *= al_a;
		o[j][1] *= al_a;
		o[j][2] *= al_b;
		o[j][3] *= al_b;
	}
}

/* The m16k16 A fragment of P for positions 16 kk .. 16 kk + 15 from the
 * probabilities of two n8 tiles in the C layout, rounded to bf16. */
static __device__ __forceinline__ void fa_p_frag(const float sc[][4], int kk, uint32_t pa[4])
{
	pa[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
	pa[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
	pa[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
	pa[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
}

/*
 * O += P V for the tile: P straight from the probabilities in registers (the
 * C layout of two n8 tiles is the m16k16 A layout, rounded to bf16), V from
 * shared memory (NT * 8 positions of rows LD bf16 apart from vt) by
 * ldmatrix.trans: lanes 0-7 positions 0-7 at d, 8-15 positions 8-15 at d,
 * 16-31 the same at d + 8, b0 b1 of two n8 tiles of O.
 * MT m16 tiles of rows at once: each V fragment read from shared memory
 * feeds all of them (half the ldmatrix traffic at MT = 2).
 */
template <int MT, int NT, int DT, int LD>
static __device__ __forceinline__ void fa_pv_mt(const float sc[MT][NT][4],
						const __nv_bfloat16 *vt, float o[MT][DT][4])
{
	const int lane = threadIdx.x & 31;
	const uint32_t va = smem_addr(vt + ((lane & 7) + (((lane >> 3) & 1) << 3)) * LD +
				      (lane >> 4) * 8);

#pragma unroll
	for (int kk = 0; kk < NT / 2; kk++) {
		uint32_t pa[MT][4];

#pragma unroll
		for (int t = 0; t < MT; t++)
			fa_p_frag(sc[t], kk, pa[t]);
#pragma unroll
		for (int dp = 0; dp < DT / 2; dp++) {
			uint32_t b[4];

			ldsm_x4_t(va + (kk * 16 * LD + dp * 16) * 2, b);
#pragma unroll
			for (int t = 0; t < MT; t++) {
				mma_bf16(o[t][2 * dp], pa[t], b[0], b[1]);
				mma_bf16(o[t][2 * dp + 1], pa[t], b[2], b[3]);
			}
		}
	}
}

/* fa_pv_mt for one m16 tile of rows. */
template <int NT, int DT, int LD>
static __device__ __forceinline__ void fa_pv(const float sc[NT][4], const __nv_bfloat16 *vt,
					     float o[DT][4])
{
	fa_pv_mt<1, NT, DT, LD>(reinterpret_cast<const float(*)[NT][4]>(sc), vt,
				reinterpret_cast<float(*)[DT][4]>(o));
}

#endif

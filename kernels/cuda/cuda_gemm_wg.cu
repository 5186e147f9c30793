/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, gate/up with the SwiGLU in the epilogue for many rows
 * (prefill chunks, mixed steps): out[n, m] = silu(in W_gate^T) * (in W_up^T)
 * in one warp-specialised wgmma kernel, instead of a cuBLASLt pair writing
 * gate and up (2 x n x m bf16) and a SwiGLU pass reading them back. On the
 * 8B's 2048-token prefill those two passes move 176 MB a layer.
 *
 * A tile is 128 rows of in by 128 output columns: the 128 gate rows and the
 * same 128 up rows of the weights, so that each consumer thread holds a
 * gate sum and its up sum in the same registers and the epilogue is local.
 * Three warpgroups: one thread of the first streams the tiles' k-slices of
 * 64 columns (in: 128 x 64, gate: 128 x 64, up: 128 x 64, 48 KB a stage) by
 * TMA into SG_ST stages; the two others take 64 rows each, eight
 * m64n128k16 wgmma a stage (gate and up over four k16 steps), one batch in
 * flight while the next stage is waited for. The grid is persistent, tiles
 * dealt round robin with the row tiles of one weight block next to each
 * other, so the CTAs running at once share their weight blocks in L2;
 * with clusters of two (HEARTH_CUDA_SWIGLU_WG_CL=2) the two CTAs of a pair
 * of row tiles load the weight slices once for both, by TMA multicast.
 * Rounding as the unfused path: gate and up to bf16, then silu (rounded too
 * with hf), the product rounded once.
 */
#include <cuda.h> /* CUtensorMap (the type only: no libcuda link) */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "cuda_device.cuh"
#include "cuda_internal.h"
#include "cuda_mma.cuh"
#include "cuda_wgmma.cuh"

typedef __nv_bfloat16 bf16;

#define SG_BM 128 /* rows of in a tile */
#define SG_BN 128 /* output columns a tile (gate and up rows each) */
#define SG_BK 64  /* columns of a stage: one 128-byte swizzle atom */
#define SG_ST 4   /* stages */
#define SG_NT 384
#define SG_SLICE (SG_BM * SG_BK * 2) /* bytes of one operand's slice */
#define SG_STAGE (3 * SG_SLICE)
#define SG_SMEM ((size_t)SG_ST * SG_STAGE + 1024)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* Wait until at most N committed batches are pending; the accumulators are
 * tied to the wait so that nothing reads them before. */
template <int N>
static __device__ __forceinline__ void sg_wait(float (&g)[16][4], float (&u)[16][4])
{
	asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#pragma unroll
	for (int j = 0; j < 16; j++)
#pragma unroll
		for (int e = 0; e < 4; e++)
			asm volatile("" : "+f"(g[j][e]), "+f"(u[j][e])::"memory");
}
#endif

/*
 * CL: CTAs a cluster (1 or 2). At 2 the two CTAs of a cluster take the two
 * row tiles of a pair with the same output columns: each loads its own input
 * slice and one of the two weight slices (rank 0 the gate's, rank 1 the
 * up's) into both by multicast, so a CTA reads half the weight bytes from
 * L2 (at 128 x 256 x 64 a stage and the tensor cores' peak, one CTA an SM
 * alone would ask about 11 TB/s of it). A stage then holds what both
 * producers wrote, so its empty barrier counts the consumer warps of both
 * CTAs: each warp arrives on its own CTA's and on the peer's. The second
 * tile of a pair past the rows loads the last row tile again and stores
 * nothing; no CTA leaves while its peer may still arrive on its barriers.
 */
template <int CL>
static __global__ void __launch_bounds__(SG_NT, 1)
swiglu_wg_kernel(const __grid_constant__ CUtensorMap xmap, const __grid_constant__ CUtensorMap gmap,
		 const __grid_constant__ CUtensorMap umap, bf16 *out, uint32_t n, uint32_t m,
		 uint32_t k, int hf)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	extern __shared__ __align__(1024) unsigned char sg_smem[];
	__shared__ __align__(8) uint64_t bars[2 * SG_ST]; /* full[ST], empty[ST] */
	const uint32_t base = (smem_addr(sg_smem) + 1023) & ~1023u;
	const uint32_t full = smem_addr(bars), empty = full + 8 * SG_ST;
	const uint32_t mt = (n + SG_BM - 1) / SG_BM, mtc = (mt + CL - 1) / CL;
	const uint32_t tiles = mtc * (m / SG_BN), kt = k / SG_BK;
	const uint32_t rank = CL > 1 ? cluster_rank() : 0, cid = blockIdx.x / CL;
	const uint32_t ncl = gridDim.x / CL;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;

	static_assert(CL == 1 || CL == 2, "clusters of one or two CTAs");
	if (tid == 0) {
		for (int s = 0; s < SG_ST; s++) {
			mbar_init(full + 8 * s, 1);
			mbar_init(empty + 8 * s, 8 * CL); /* a lane of each consumer warp */
		}
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	if (CL > 1)
		cluster_sync(); /* the peer's barriers are ready before any multicast */
	else
		__syncthreads();
	if (wg == 0) {
		regs_dec<40>();
		if (tid == 0) {
			uint32_t it = 0;

			for (uint32_t t = cid; t < tiles; t += ncl) {
				const uint32_t rt = (t % mtc) * CL + rank;
				const int32_t row = (int32_t)((rt < mt ? rt : mt - 1) * SG_BM);
				const int32_t col = (int32_t)((t / mtc) * SG_BN);

				for (uint32_t kk = 0; kk < kt; kk++, it++) {
					const uint32_t s = it % SG_ST, st = base + s * SG_STAGE;
					const uint32_t fb = full + 8 * s;
					const int32_t kc = (int32_t)(kk * SG_BK);

					if (it >= SG_ST)
						mbar_wait(empty + 8 * s, (it / SG_ST - 1) & 1);
					mbar_expect_tx(fb, SG_STAGE);
					tma_load_2d(st, &xmap, kc, row, fb);
					if (CL == 1) {
						tma_load_2d(st + SG_SLICE, &gmap, kc, col, fb);
						tma_load_2d(st + 2 * SG_SLICE, &umap, kc, col, fb);
					} else if (rank == 0) {
						tma_load_2d_mc(st + SG_SLICE, &gmap, kc, col, fb, 3);
					} else {
						tma_load_2d_mc(st + 2 * SG_SLICE, &umap, kc, col, fb, 3);
					}
				}
			}
		}
	} else {
		regs_inc<232>();

		const uint32_t cw = (uint32_t)wg - 1, g8 = lane >> 2, t4 = lane & 3;
		uint32_t it = 0;
		float dg[16][4] = {}, du[16][4] = {};
		/* stage s goes back to the producers: this warp's arrival on the
		 * empty barrier of each CTA that wrote into it */
		const auto release = [&](uint32_t s) {
			__syncwarp();
			if (lane == 0) {
				mbar_arrive(empty + 8 * s);
				if (CL > 1)
					mbar_arrive_cluster(empty + 8 * s, rank ^ 1);
			}
		};

		for (uint32_t t = cid; t < tiles; t += ncl) {
			const uint32_t row = ((t % mtc) * CL + rank) * SG_BM, col = (t / mtc) * SG_BN;

			for (uint32_t kk = 0; kk < kt; kk++, it++) {
				const uint32_t s = it % SG_ST, st = base + s * SG_STAGE;
				const uint32_t xa = st + cw * 64 * 128; /* this warpgroup's 64 rows */

				mbar_wait(full + 8 * s, (it / SG_ST) & 1);
				wg_fence();
#pragma unroll
				for (int k16 = 0; k16 < 4; k16++) {
					const uint64_t da = wg_desc(xa + k16 * 32, 16, 1024);
					const int acc = kk > 0 || k16 > 0;

					wgmma_ss<128>(dg, da, wg_desc(st + SG_SLICE + k16 * 32, 16, 1024),
						      acc);
					wgmma_ss<128>(du, da,
						      wg_desc(st + 2 * SG_SLICE + k16 * 32, 16, 1024), acc);
				}
				wg_commit();
				/* the batch before this one is done: its stage goes back */
				sg_wait<1>(dg, du);
				if (kk > 0)
					release((it - 1) % SG_ST);
			}
			sg_wait<0>(dg, du);
			if (kt > 0)
				release((it - 1) % SG_ST);
			/* rows g8 and g8 + 8 of this warp's 16, columns 8j + 2 t4 (+1);
			 * a pair's tile past the rows stores none */
			const uint32_t r0 = row + cw * 64 + (uint32_t)(warp & 3) * 16 + g8;

#pragma unroll
			for (int h = 0; h < 2; h++) {
				const uint32_t r = r0 + 8 * h;

				if (r >= n)
					continue;
#pragma unroll
				for (int j = 0; j < 16; j++) {
					const uint32_t c = col + 8 * j + 2 * t4;
					float v[2];

#pragma unroll
					for (int e = 0; e < 2; e++)
						v[e] = swiglu_bf(bf_round(dg[j][2 * h + e]),
								 bf_round(du[j][2 * h + e]), hf);
					*(__nv_bfloat162 *)(out + (size_t)r * m + c) =
						__floats2bfloat162_rn(v[0], v[1]);
				}
			}
		}
	}
	if (CL > 1) {
		__syncwarp();
		cluster_sync(); /* the peer's last arrivals on our barriers are in */
	}
#else
	__trap(); /* built without sm_90a: kc_swiglu_wg() refuses */
#endif
}

/* ------------------------------------------------------------ host side */

static void *tma_encoder_query(void)
{
	cudaDriverEntryPointQueryResult q;
	void *fn = NULL;

	if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
					     cudaEnableDefault, &q) != cudaSuccess ||
	    q != cudaDriverEntryPointSuccess)
		fn = NULL;
	(void)cudaGetLastError();
	return fn;
}

/* Asked once per process (a function-local static: thread-safe, as backends
 * of several models may start at once). */
extern "C" void *kc_tma_encoder(void)
{
	static void *const fn = tma_encoder_query();

	return fn;
}

extern "C" int kc_wgmma_device(void)
{
#if defined(KC_WGMMA)
	int dev, major = 0, minor = 0;

	return cudaGetDevice(&dev) == cudaSuccess &&
	       cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
	       cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
	       major == 9 && minor == 0;
#else
	return 0;
#endif
}

static int sg_ok; /* sm_90a code on a 9.0 device, TMA and the shared memory had */
static int sg_clusters; /* clusters of two of the CL = 2 kernel resident at once (0: none) */

static cudaLaunchConfig_t sg_cl2_config(unsigned grid, cudaStream_t st, cudaLaunchAttribute *at)
{
	cudaLaunchConfig_t cfg = {};

	*at = cudaLaunchAttribute{};
	at->id = cudaLaunchAttributeClusterDimension;
	at->val.clusterDim.x = 2;
	at->val.clusterDim.y = 1;
	at->val.clusterDim.z = 1;
	cfg.gridDim = dim3(grid);
	cfg.blockDim = dim3(SG_NT);
	cfg.dynamicSmemBytes = SG_SMEM;
	cfg.stream = st;
	cfg.attrs = at;
	cfg.numAttrs = 1;
	return cfg;
}

extern "C" int kc_swiglu_wg_init(size_t smem_optin)
{
	sg_ok = kc_wgmma_device() && kc_tma_encoder() && SG_SMEM <= smem_optin &&
		cudaFuncSetAttribute(swiglu_wg_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
				     (int)SG_SMEM) == cudaSuccess;
	sg_clusters = 0;
	if (sg_ok && cudaFuncSetAttribute(swiglu_wg_kernel<2>,
					  cudaFuncAttributeMaxDynamicSharedMemorySize,
					  (int)SG_SMEM) == cudaSuccess) {
		cudaLaunchAttribute at;
		const cudaLaunchConfig_t cfg = sg_cl2_config(2, 0, &at);
		int nc = 0;

		if (cudaOccupancyMaxActiveClusters(&nc, swiglu_wg_kernel<2>, &cfg) == cudaSuccess)
			sg_clusters = nc;
	}
	(void)cudaGetLastError();
	return sg_ok;
}

/* A row-major [rows, k] bf16 matrix as a 2-D tensor map, boxes of 64 x 128
 * in the 128-byte swizzle (rows past the end read as zeros). */
static bool sg_map(CUtensorMap *map, const void *p, uint32_t rows, uint32_t k)
{
	const encode_tiled_fn enc = (encode_tiled_fn)kc_tma_encoder();
	const cuuint64_t dim[2] = { k, rows }, stride[1] = { (cuuint64_t)k * 2 };
	const cuuint32_t box[2] = { SG_BK, 128 }, es[2] = { 1, 1 };

	return enc && enc(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)p, dim, stride, box, es,
			  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
			  CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
			  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

extern "C" int kc_swiglu_wg(void *out, const void *in, const void *w_gate, const void *w_up,
			    uint32_t n, uint32_t k, uint32_t m, int hf, int n_sms, int cl,
			    cudaStream_t st)
{
	CUtensorMap xm, gm, um;
	uint64_t tiles, grid;

	if (!sg_ok || !out || !in || !w_gate || !w_up || !n || !k || k % SG_BK || !m ||
	    m % SG_BN || n > (1u << 30) || m > (1u << 30) ||
	    ((uintptr_t)in | (uintptr_t)w_gate | (uintptr_t)w_up) & 15 || ((uintptr_t)out & 3) ||
	    n_sms < 1 || (cl != 1 && cl != 2) || (cl == 2 && sg_clusters < 1))
		return -EINVAL;
	if (!sg_map(&xm, in, n, k) || !sg_map(&gm, w_gate, m, k) || !sg_map(&um, w_up, m, k))
		return -EINVAL;
	tiles = (uint64_t)((n + SG_BM - 1) / SG_BM + cl - 1) / cl * (m / SG_BN);
	if (cl == 1) {
		grid = tiles < (uint64_t)n_sms ? tiles : (uint64_t)n_sms;
		swiglu_wg_kernel<1><<<(unsigned)grid, SG_NT, SG_SMEM, st>>>(xm, gm, um, (bf16 *)out,
									    n, m, k, hf);
	} else {
		/* clusters: a pair of row tiles each, at most n_sms / 2 (one at least)
		 * and as many as are resident at once */
		cudaLaunchAttribute at;
		cudaLaunchConfig_t cfg;

		grid = (uint64_t)(n_sms / 2 > 1 ? n_sms / 2 : 1);
		grid = grid < (uint64_t)sg_clusters ? grid : (uint64_t)sg_clusters;
		grid = tiles < grid ? tiles : grid;
		cfg = sg_cl2_config((unsigned)(2 * grid), st, &at);
		if (cudaLaunchKernelEx(&cfg, swiglu_wg_kernel<2>, xm, gm, um, (bf16 *)out, n, m, k,
				       hf) != cudaSuccess) {
			(void)cudaGetLastError(); /* as kc_launch_pdl: not left for the next check */
			return -EIO;
		}
	}
	return cudaPeekAtLastError() == cudaSuccess ? 0 : -EIO;
}

/* SPDX-License-Identifier: MIT */
/*
 * Warpgroup tensor-core helpers (sm_90a PTX: wgmma): shared-memory matrix
 * descriptors for the 128-byte swizzle, the fence / commit / wait of a batch
 * of wgmma, the m64nNk16 bf16 -> fp32 forms the attention uses (N = 64,
 * 128), and what warp-specialised kernels need besides: mbarriers, named
 * barriers, setmaxnreg. Only compiled where __CUDA_ARCH_FEAT_SM90_ALL is
 * defined (nvcc -arch=sm_90a); callers guard their bodies the same way.
 *
 * Layouts (PTX ISA, "Shared Memory Matrix Layout"), bf16, 128-byte swizzle:
 * an operand is made of atoms of 8 rows x 64 elements (128 bytes a row),
 * each 1024-byte aligned; the 16-byte chunk c of row r of an atom is stored
 * at chunk c ^ (r & 7). K-major (the contraction runs along the 128-byte
 * rows): SBO = the distance between groups of 8 rows (1024 when atoms of a
 * tile are stacked row after row), LBO unused; a k16 step inside an atom
 * adds 32 bytes to the start address. MN-major (the rows run along K): LBO
 * = the distance between atoms along MN, SBO = between groups of 8 K rows.
 */
#ifndef KERN_CUDA_WGMMA_CUH
#define KERN_CUDA_WGMMA_CUH

#include <cuda.h> /* CUtensorMap (the types only: no libcuda link) */
#include <stdint.h>

/* The driver's cuTensorMapEncodeTiled (kc_tma_encoder(): NULL without). */
typedef CUresult (*encode_tiled_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
				    const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
				    const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
				    CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

/* Byte offset of 16-byte chunk ch of row r in a tile of `rows` rows of
 * 128-byte-swizzled atoms (chunks 0-7 in the first atom, 8-15 in the next,
 * rows * 128 bytes further). */
static __device__ __forceinline__ uint32_t sw128_off(uint32_t rows, uint32_t r, uint32_t ch)
{
	return (ch >> 3) * rows * 128 + r * 128 + (((ch & 7) ^ (r & 7)) << 4);
}

/* Descriptor of a 128-byte-swizzled operand at shared address addr
 * (its atoms 1024-byte aligned, so the base offset is 0). */
static __device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
{
	return (uint64_t)((addr & 0x3ffff) >> 4) | (uint64_t)((lbo & 0x3ffff) >> 4) << 16 |
	       (uint64_t)((sbo & 0x3ffff) >> 4) << 32 | 1ull << 62;
}

/* Before a batch: register writes (accumulators, A fragments) are seen by
 * the wgmma that follow. */
static __device__ __forceinline__ void wg_fence(void)
{
	asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

static __device__ __forceinline__ void wg_commit(void)
{
	asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/* Wait for every committed batch; the accumulators of n8 tiles d may be
 * read after it (the empty asm ties them to the wait). */
template <int NT>
static __device__ __forceinline__ void wg_wait(float (&d)[NT][4])
{
	asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
	for (int j = 0; j < NT; j++)
#pragma unroll
		for (int e = 0; e < 4; e++)
			asm volatile("" : "+f"(d[j][e])::"memory");
}

/* Shared-memory writes of the generic proxy (cp.async, st.shared) become
 * visible to wgmma's reads (the async proxy); then a barrier. */
static __device__ __forceinline__ void fence_async_smem(void)
{
	asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/*
 * mbarriers (a 64-bit object in shared memory at addr): init with the
 * arrivals a phase needs; wait until the phase of the given parity has
 * completed (acquire); arrive; and the arrival of this thread's earlier
 * cp.async once they land (counted among the arrivals: .noinc).
 */
static __device__ __forceinline__ void mbar_init(uint32_t addr, uint32_t count)
{
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
}

static __device__ __forceinline__ void mbar_wait(uint32_t addr, uint32_t parity)
{
	asm volatile("{\n.reg .pred p;\nWAIT:\n"
		     "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
		     "@!p bra WAIT;\n}\n" ::"r"(addr),
		     "r"(parity)
		     : "memory");
}

static __device__ __forceinline__ void mbar_arrive(uint32_t addr)
{
	asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(addr) : "memory");
}

static __device__ __forceinline__ void cp_async_mbar_arrive(uint32_t addr)
{
	asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(addr) : "memory");
}

/* This thread's arrival on the mbarrier at addr, announcing `bytes` more
 * that copies of the async proxy (TMA) will deliver to the phase. */
static __device__ __forceinline__ void mbar_expect_tx(uint32_t addr, uint32_t bytes)
{
	asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(addr),
		     "r"(bytes)
		     : "memory");
}

/* TMA: the box of the 4-D tensor map at `map` (a __grid_constant__
 * parameter) at coordinates c0..c3 (innermost first) into shared memory at
 * dst, its bytes counted on the mbarrier at bar. */
static __device__ __forceinline__ void tma_load_4d(uint32_t dst, const void *map, int32_t c0,
						   int32_t c1, int32_t c2, int32_t c3, uint32_t bar)
{
	asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
		     " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
		     "l"((uint64_t)(uintptr_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
		     : "memory");
}

/* The same for a 2-D tensor map, at (c0, c1). */
static __device__ __forceinline__ void tma_load_2d(uint32_t dst, const void *map, int32_t c0,
						   int32_t c1, uint32_t bar)
{
	asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
		     " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
		     "l"((uint64_t)(uintptr_t)map), "r"(c0), "r"(c1), "r"(bar)
		     : "memory");
}

/* The same, multicast: the box lands at dst in every CTA of the cluster
 * whose bit is set in mask, each counting its bytes on its own mbarrier at
 * bar (the same shared offsets in each). */
static __device__ __forceinline__ void tma_load_2d_mc(uint32_t dst, const void *map, int32_t c0,
						      int32_t c1, uint32_t bar, uint16_t mask)
{
	asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
		     ".multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
		     "l"((uint64_t)(uintptr_t)map), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
		     : "memory");
}

/* Thread block clusters: this CTA's rank in its cluster; an arrival on the
 * mbarrier at the local address addr of the CTA of rank `rank` (the default
 * release at CTA scope, as CUTLASS's ClusterBarrier: what it releases are
 * wgmma reads, already done at wgmma.wait_group, for a TMA write, both of
 * the async proxy; .release.cluster would add a GPU-scope fence an arrival);
 * every thread of every CTA of the cluster meets (release, acquire; all
 * threads of a warp together). */
static __device__ __forceinline__ uint32_t cluster_rank(void)
{
	uint32_t r;

	asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
	return r;
}

static __device__ __forceinline__ void mbar_arrive_cluster(uint32_t addr, uint32_t rank)
{
	asm volatile("{\n.reg .b32 ra;\n"
		     "mapa.shared::cluster.u32 ra, %0, %1;\n"
		     "mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n" ::"r"(addr),
		     "r"(rank)
		     : "memory");
}

static __device__ __forceinline__ void cluster_sync(void)
{
	asm volatile("barrier.cluster.arrive.release.aligned;\n"
		     "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

/* Named barrier id (1-15; 0 is __syncthreads) of n threads: wait there, or
 * count this warp's threads in and go on. */
static __device__ __forceinline__ void bar_sync(uint32_t id, uint32_t n)
{
	asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

static __device__ __forceinline__ void bar_arrive(uint32_t id, uint32_t n)
{
	asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

/* A warpgroup gives registers back to the block's pool (N a thread from
 * here on), or takes them from it (waits until they are free). */
template <int N>
static __device__ __forceinline__ void regs_dec(void)
{
	asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

template <int N>
static __device__ __forceinline__ void regs_inc(void)
{
	asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

template <int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db,
					 int scale_d);
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4],
					 uint64_t db, int scale_d);

/* The accumulator of m64nNk16 (N / 2 fp32 a thread, as N / 8 n8 tiles d[j][0..3])
 * as asm operands, and their place holders %0 .. %(N / 2 - 1). */
#define WG_D64 \
	"+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), \
	"+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
	"+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
	"+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
	"+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), \
	"+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
	"+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
	"+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define WG_D128 \
	WG_D64, \
	"+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), \
	"+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
	"+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), \
	"+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
	"+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), \
	"+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
	"+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), \
	"+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
#define WG_R64 \
	"%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
	"%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_R128 \
	WG_R64 ", " \
	"%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
	"%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

/* D (64 x 64 fp32) = (scale_d ? D : 0) + A . B, A (64 x 16) and B (16 x 64)
 * in shared memory, both K-major (descriptors da, db). */
template <>
__device__ __forceinline__ void wgmma_ss<64>(float (&d)[8][4], uint64_t da, uint64_t db,
					   int scale_d)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" WG_R64 "}, "
		     "%32, %33, p, 1, 1, 0, 0;\n}\n"
		     : WG_D64
		     : "l"(da), "l"(db), "r"(scale_d));
}

/* D (64 x 64 fp32) = (scale_d ? D : 0) + A . B, A (64 x 16 bf16) in
 * registers (each warp the m16k16 fragment of its 16 rows), B (16 x 64) in
 * shared memory, MN-major (descriptor db). */
template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[8][4], const uint32_t (&a)[4],
					   uint64_t db, int scale_d)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" WG_R64 "}, "
		     "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
		     : WG_D64
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
}

/* D (64 x 128 fp32) = (scale_d ? D : 0) + A . B, A (64 x 16) and B (16 x 128)
 * in shared memory, both K-major (descriptors da, db). */
template <>
__device__ __forceinline__ void wgmma_ss<128>(float (&d)[16][4], uint64_t da, uint64_t db,
					   int scale_d)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" WG_R128 "}, "
		     "%64, %65, p, 1, 1, 0, 0;\n}\n"
		     : WG_D128
		     : "l"(da), "l"(db), "r"(scale_d));
}

/* D (64 x 128 fp32) = (scale_d ? D : 0) + A . B, A (64 x 16 bf16) in
 * registers (each warp the m16k16 fragment of its 16 rows), B (16 x 128) in
 * shared memory, MN-major (descriptor db). */
template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[16][4], const uint32_t (&a)[4],
					   uint64_t db, int scale_d)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" WG_R128 "}, "
		     "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
		     : WG_D128
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
}

#endif /* __CUDA_ARCH_FEAT_SM90_ALL */
#endif

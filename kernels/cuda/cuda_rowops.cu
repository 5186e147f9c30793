/* SPDX-License-Identifier: MIT */
/*
 * cuda backend, row-wise kernels (bf16 activations, fp32 arithmetic): dtype
 * conversion of weights, embedding lookup, fused residual add + RMSNorm,
 * SwiGLU, row gather, argmax and softmax over a set of ids, and a plain GEMM
 * for the shapes cuBLASLt declines. Each is memory-bound: one pass over its
 * rows with 16-byte accesses where the shape and alignment allow.
 * Bad indices found in device data are clamped or skipped and reported
 * through the error word (KC_ERR_*), never read or written out of bounds.
 * add_rmsnorm and gather_rows (the decode step's row ops between GEMVs) are
 * programmatic dependents that let the next kernel launch at once.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>

#include "cuda_device.cuh"
#include "cuda_internal.h"

typedef __nv_bfloat16 bf16;

static __device__ __forceinline__ float bf2f(bf16 x)
{
	return __bfloat162float(x);
}

static __device__ __forceinline__ bf16 f2bf(float x)
{
	return __float2bfloat16_rn(x);
}

/* Bitwise the same as the host's kern_f32_to_bf16(): round to nearest even,
 * NaN kept quiet with its sign, so device and host conversions agree. */
static __device__ __forceinline__ uint16_t f32_to_bf16_bits(float f)
{
	uint32_t u = __float_as_uint(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x0040u);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}


/* Sum (or max) over the block, returned to every thread. blockDim.x is a
 * multiple of 32; `red` has 32 floats. */
static __device__ float block_sum(float x, float *red)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

	x = warp_sum(x);
	__syncthreads(); /* red may still be read by a previous call */
	if (!lane)
		red[warp] = x;
	__syncthreads();
	x = lane < nw ? red[lane] : 0.0f;
	return warp_sum(x);
}

static __device__ float block_max(float x, float *red)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

	x = warp_max(x);
	__syncthreads();
	if (!lane)
		red[warp] = x;
	__syncthreads();
	x = lane < nw ? red[lane] : -INFINITY;
	return warp_max(x);
}

static __global__ void probe_kernel(int *x)
{
	if (x)
		*x = 1;
}

static __global__ void convert_kernel(uint16_t *dst, const void *src, int dt, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float f = dt == KERN_F32 ? ((const float *)src)[i]
					 : __half2float(((const __half *)src)[i]);

		dst[i] = f32_to_bf16_bits(f);
	}
}

/* One block per row; ids outside [0, vocab) are clamped and flagged. */
static __global__ void embed_kernel(bf16 *out, const bf16 *table, const int32_t *ids,
				    uint32_t dim, uint32_t vocab, uint32_t *err, int vec)
{
	int32_t id = ids[blockIdx.x];
	const bf16 *src;
	bf16 *dst;

	if (id < 0 || (uint32_t)id >= vocab) {
		if (!threadIdx.x)
			set_err(err, KC_ERR_EMBED_ID);
		id = id < 0 ? 0 : (int32_t)(vocab - 1);
	}
	src = table + (size_t)id * dim;
	dst = out + (size_t)blockIdx.x * dim;
	if (vec)
		for (uint32_t j = threadIdx.x; j < dim / 8; j += blockDim.x)
			((uint4 *)dst)[j] = ((const uint4 *)src)[j];
	else
		for (uint32_t j = threadIdx.x; j < dim; j += blockDim.x)
			dst[j] = src[j];
}

/*
 * One block per row: resid = resid_in + add (rounded to bf16, as stored),
 * then out = resid * rsqrt(mean(resid^2) + eps) * weight. The sum of squares
 * is taken over the rounded residual, the value the next layer reads too.
 * resid may be resid_in (in place).
 */
template <bool VEC>
static __global__ void add_rmsnorm_kernel(bf16 *out, bf16 *resid, const bf16 *resid_in,
					  const bf16 *add, const bf16 *w, uint32_t dim, float eps,
					  int hf)
{
	__shared__ float red[32];
	bf16 *r = resid + (size_t)blockIdx.x * dim;
	const bf16 *ri = resid_in + (size_t)blockIdx.x * dim;
	const bool copy = add || resid != resid_in;
	const bf16 *a = add ? add + (size_t)blockIdx.x * dim : nullptr;
	bf16 *o = out + (size_t)blockIdx.x * dim;
	float ss = 0.0f, inv;

	/* Decode: the GEMV after this one may start loading its weights now. */
	pdl_trigger();
	pdl_wait();
	if (VEC) {
		for (uint32_t j = threadIdx.x; j < dim / 8; j += blockDim.x) {
			float x[8], y[8];

			unpack8(((const uint4 *)ri)[j], x);
			if (a) {
				unpack8(((const uint4 *)a)[j], y);
#pragma unroll
				for (int e = 0; e < 8; e++)
					x[e] = bf_round(x[e] + y[e]);
			}
			if (copy)
				((uint4 *)r)[j] = pack8(x);
#pragma unroll
			for (int e = 0; e < 8; e++)
				ss = fmaf(x[e], x[e], ss);
		}
	} else {
		for (uint32_t j = threadIdx.x; j < dim; j += blockDim.x) {
			float x = bf2f(ri[j]);

			if (a)
				x = bf_round(x + bf2f(a[j]));
			if (copy)
				r[j] = f2bf(x);
			ss = fmaf(x, x, ss);
		}
	}
	ss = block_sum(ss, red);
	inv = rsqrtf(ss / (float)dim + eps);
	/* Each thread reads back only the elements it wrote. */
	if (VEC) {
		for (uint32_t j = threadIdx.x; j < dim / 8; j += blockDim.x) {
			float x[8], y[8];

			unpack8(((const uint4 *)r)[j], x);
			unpack8(((const uint4 *)w)[j], y);
#pragma unroll
			for (int e = 0; e < 8; e++)
				x[e] = hf ? bf_round(x[e] * inv) * y[e] : x[e] * inv * y[e];
			((uint4 *)o)[j] = pack8(x);
		}
	} else {
		for (uint32_t j = threadIdx.x; j < dim; j += blockDim.x)
			o[j] = f2bf(hf ? bf_round(bf2f(r[j]) * inv) * bf2f(w[j])
				       : bf2f(r[j]) * inv * bf2f(w[j]));
	}
}

template <bool VEC>
static __global__ void swiglu_kernel(bf16 *out, const bf16 *gate, const bf16 *up, size_t n,
				     int hf)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;

	if (VEC) {
		for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n / 8; i += stride) {
			float g[8], u[8];

			unpack8(((const uint4 *)gate)[i], g);
			unpack8(((const uint4 *)up)[i], u);
#pragma unroll
			for (int e = 0; e < 8; e++)
				g[e] = swiglu_bf(g[e], u[e], hf);
			((uint4 *)out)[i] = pack8(g);
		}
	} else {
		for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride)
			out[i] = f2bf(swiglu_bf(bf2f(gate[i]), bf2f(up[i]), hf));
	}
}

static __global__ void round_f32_kernel(float *x, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		x[i] = bf_round(x[i]);
}

/* One block per output row; a negative row is flagged and gives zeros. */
static __global__ void gather_kernel(bf16 *out, const bf16 *in, const int32_t *rows,
				     uint32_t dim, uint32_t *err, int vec)
{
	int32_t row;
	bf16 *dst = out + (size_t)blockIdx.x * dim;
	const bf16 *src;

	pdl_trigger();
	pdl_wait();
	row = rows[blockIdx.x];
	src = in + (size_t)(row < 0 ? 0 : row) * dim;
	if (row < 0 && !threadIdx.x)
		set_err(err, KC_ERR_ROW);
	if (vec)
		for (uint32_t j = threadIdx.x; j < dim / 8; j += blockDim.x)
			((uint4 *)dst)[j] = row < 0 ? make_uint4(0, 0, 0, 0) : ((const uint4 *)src)[j];
	else
		for (uint32_t j = threadIdx.x; j < dim; j += blockDim.x)
			dst[j] = row < 0 ? f2bf(0.0f) : src[j];
}

/* Candidate of the argmax: the lowest-index maximum, and the first NaN
 * (which wins, as in torch.argmax and the cpu backend). */
struct amax {
	float v;
	uint32_t i;   /* UINT32_MAX: none seen */
	uint32_t nan; /* UINT32_MAX: none seen */
};

static __device__ __forceinline__ void amax_see(struct amax *a, float v, uint32_t i)
{
	if (v != v) {
		if (i < a->nan)
			a->nan = i;
	} else if (a->i == UINT32_MAX || v > a->v || (v == a->v && i < a->i)) {
		a->v = v;
		a->i = i;
	}
}

static __device__ __forceinline__ void amax_merge(struct amax *a, const struct amax *b)
{
	if (b->nan < a->nan)
		a->nan = b->nan;
	if (b->i != UINT32_MAX)
		amax_see(a, b->v, b->i);
}

static __global__ void argmax_kernel(int32_t *out, const float *logits, uint32_t vocab, int vec)
{
	__shared__ struct amax red[32];
	const float *l = logits + (size_t)blockIdx.x * vocab;
	struct amax a = { -INFINITY, UINT32_MAX, UINT32_MAX };
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

	if (vec) {
		for (uint32_t j = threadIdx.x; j < vocab / 4; j += blockDim.x) {
			float4 v = ((const float4 *)l)[j];

			amax_see(&a, v.x, 4 * j);
			amax_see(&a, v.y, 4 * j + 1);
			amax_see(&a, v.z, 4 * j + 2);
			amax_see(&a, v.w, 4 * j + 3);
		}
	} else {
		for (uint32_t j = threadIdx.x; j < vocab; j += blockDim.x)
			amax_see(&a, l[j], j);
	}
#pragma unroll
	for (int o = 16; o; o >>= 1) {
		struct amax b;

		b.v = __shfl_xor_sync(0xffffffffu, a.v, o);
		b.i = __shfl_xor_sync(0xffffffffu, a.i, o);
		b.nan = __shfl_xor_sync(0xffffffffu, a.nan, o);
		amax_merge(&a, &b);
	}
	if (!lane)
		red[warp] = a;
	__syncthreads();
	if (threadIdx.x == 0) {
		for (int w = 1; w < nw; w++)
			amax_merge(&a, &red[w]);
		out[blockIdx.x] = (int32_t)(a.nan != UINT32_MAX ? a.nan
					    : a.i != UINT32_MAX ? a.i : 0);
	}
}

/* One block per row: softmax over logits[row, ids[*]]. Bad ids are clamped
 * into the vocabulary and flagged. */
static __global__ void softmax_ids_kernel(float *out, const float *logits, const int32_t *ids,
					  uint32_t n_ids, uint32_t vocab, uint32_t *err)
{
	__shared__ float red[32];
	const float *l = logits + (size_t)blockIdx.x * vocab;
	float *o = out + (size_t)blockIdx.x * n_ids;
	float mx = -INFINITY, sum = 0.0f, inv;

	for (uint32_t j = threadIdx.x; j < n_ids; j += blockDim.x) {
		int32_t id = ids[j];

		if (id < 0 || (uint32_t)id >= vocab) {
			set_err(err, KC_ERR_IDS);
			id = id < 0 ? 0 : (int32_t)(vocab - 1);
		}
		mx = fmaxf(mx, l[id]);
	}
	mx = block_max(mx, red);
	if (mx == -INFINITY)
		mx = 0.0f; /* all -inf: 0/0 gives NaN, as the cpu backend and torch */
	for (uint32_t j = threadIdx.x; j < n_ids; j += blockDim.x) {
		int32_t id = min(max(ids[j], 0), (int32_t)(vocab - 1));
		float e = expf(l[id] - mx);

		o[j] = e;
		sum += e;
	}
	sum = block_sum(sum, red);
	inv = 1.0f / sum;
	for (uint32_t j = threadIdx.x; j < n_ids; j += blockDim.x)
		o[j] *= inv;
}

/* One warp per output element; slow, for odd shapes only. */
static __global__ void gemm_simple_kernel(void *out, int out_f32, const bf16 *in, const bf16 *w,
					  const bf16 *bias, uint32_t n, uint32_t k, uint32_t m,
					  int acc)
{
	size_t e = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
	int lane = threadIdx.x & 31;
	float sum = 0.0f;
	uint32_t i, j;

	if (e >= (size_t)n * m)
		return;
	i = (uint32_t)(e / m);
	j = (uint32_t)(e % m);
	for (uint32_t t = lane; t < k; t += 32)
		sum = fmaf(bf2f(in[(size_t)i * k + t]), bf2f(w[(size_t)j * k + t]), sum);
	sum = warp_sum(sum);
	if (lane)
		return;
	if (bias)
		sum += bf2f(bias[j]);
	if (out_f32)
		((float *)out)[e] = acc ? ((float *)out)[e] + sum : sum;
	else
		((bf16 *)out)[e] = f2bf(acc ? bf2f(((bf16 *)out)[e]) + sum : sum);
}

/* ------------------------------------------------------------ launchers */

static int launched(void)
{
	return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

static int aligned16(const void *p)
{
	return ((uintptr_t)p & 15u) == 0;
}

/* Threads per row: enough for one 16-byte access each, 32..256. */
static unsigned row_threads(uint32_t units)
{
	unsigned t = 32;

	while (t < 256 && t < units)
		t *= 2;
	return t;
}

/* Blocks for a grid-stride loop over `units` items: at most a few waves. */
static unsigned stride_blocks(size_t units, unsigned threads)
{
	size_t b = (units + threads - 1) / threads;

	return (unsigned)(b < 8192 ? (b ? b : 1) : 8192);
}

extern "C" int kc_probe(cudaStream_t st)
{
	probe_kernel<<<1, 32, 0, st>>>(nullptr);
	return launched();
}

extern "C" int kc_convert_bf16(void *dst, const void *src, enum kern_dtype dt, size_t n,
			       cudaStream_t st)
{
	if (dt != KERN_F32 && dt != KERN_F16)
		return -EINVAL;
	convert_kernel<<<stride_blocks(n, 256), 256, 0, st>>>((uint16_t *)dst, src, (int)dt, n);
	return launched();
}

extern "C" int kc_embed(void *out, const void *table, const int32_t *ids, uint32_t n,
			uint32_t dim, uint32_t vocab, uint32_t *err, cudaStream_t st)
{
	int vec = dim % 8 == 0 && aligned16(out) && aligned16(table);

	embed_kernel<<<n, row_threads(vec ? dim / 8 : dim), 0, st>>>(
		(bf16 *)out, (const bf16 *)table, ids, dim, vocab, err, vec);
	return launched();
}

extern "C" int kc_round_bf16_f32(float *x, size_t n, cudaStream_t st)
{
	round_f32_kernel<<<stride_blocks(n, 256), 256, 0, st>>>(x, n);
	return launched();
}

extern "C" int kc_add_rmsnorm(void *out, void *resid, const void *resid_in, const void *add,
			      const void *weight, uint32_t n, uint32_t dim, float eps, int hf,
			      cudaStream_t st)
{
	int vec = dim % 8 == 0 && aligned16(out) && aligned16(resid) && aligned16(resid_in) &&
		  aligned16(weight) && (!add || aligned16(add));
	unsigned t = row_threads(vec ? dim / 8 : dim);
	cudaError_t e;

	e = kc_launch_pdl(kc_pdl_enabled(),
			  vec ? add_rmsnorm_kernel<true> : add_rmsnorm_kernel<false>, dim3(n),
			  dim3(t), 0, st, (bf16 *)out, (bf16 *)resid, (const bf16 *)resid_in,
			  (const bf16 *)add, (const bf16 *)weight, dim, eps, hf);
	return e == cudaSuccess ? 0 : -EIO;
}

extern "C" int kc_swiglu(void *out, const void *gate, const void *up, size_t n_elems, int hf,
			 cudaStream_t st)
{
	int vec = n_elems % 8 == 0 && aligned16(out) && aligned16(gate) && aligned16(up);

	if (vec)
		swiglu_kernel<true><<<stride_blocks(n_elems / 8, 256), 256, 0, st>>>(
			(bf16 *)out, (const bf16 *)gate, (const bf16 *)up, n_elems, hf);
	else
		swiglu_kernel<false><<<stride_blocks(n_elems, 256), 256, 0, st>>>(
			(bf16 *)out, (const bf16 *)gate, (const bf16 *)up, n_elems, hf);
	return launched();
}

extern "C" int kc_gather_rows(void *out, const void *in, const int32_t *rows, uint32_t n,
			      uint32_t dim, uint32_t *err, cudaStream_t st)
{
	int vec = dim % 8 == 0 && aligned16(out) && aligned16(in);
	cudaError_t e;

	e = kc_launch_pdl(kc_pdl_enabled(), gather_kernel, dim3(n),
			  dim3(row_threads(vec ? dim / 8 : dim)), 0, st, (bf16 *)out,
			  (const bf16 *)in, rows, dim, err, vec);
	return e == cudaSuccess ? 0 : -EIO;
}

extern "C" int kc_argmax(int32_t *out, const float *logits, uint32_t n, uint32_t vocab,
			 cudaStream_t st)
{
	int vec = vocab % 4 == 0 && aligned16(logits);
	uint32_t units = vec ? vocab / 4 : vocab;
	unsigned t = 32;

	while (t < 1024 && t < units)
		t *= 2;
	argmax_kernel<<<n, t, 0, st>>>(out, logits, vocab, vec);
	return launched();
}

extern "C" int kc_softmax_ids(float *out, const float *logits, const int32_t *ids, uint32_t n,
			      uint32_t n_ids, uint32_t vocab, uint32_t *err, cudaStream_t st)
{
	softmax_ids_kernel<<<n, row_threads(n_ids), 0, st>>>(out, logits, ids, n_ids, vocab, err);
	return launched();
}

extern "C" int kc_gemm_simple(void *out, int out_f32, const void *in, const void *w,
			      const void *bias, uint32_t n, uint32_t k, uint32_t m, int acc,
			      cudaStream_t st)
{
	size_t threads = (size_t)n * m * 32;
	size_t blocks = (threads + 255) / 256;

	if (blocks > 0x7fffffffu)
		return -EINVAL;
	gemm_simple_kernel<<<(unsigned)blocks, 256, 0, st>>>(out, out_f32, (const bf16 *)in,
							     (const bf16 *)w, (const bf16 *)bias,
							     n, k, m, acc);
	return launched();
}

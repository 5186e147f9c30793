/* SPDX-License-Identifier: MIT */
/*
 * Rough timing of the cuda backend through the engine (not a test, not the
 * benchmark of bench/): prefill of a prompt, then decode one token at a time,
 * for the tiny fixture model and for a Llama-3.2-1B-shaped model with random
 * bf16 weights built in memory (16 layers, hidden 2048, 32 q / 8 kv heads of
 * 64, MLP 8192, vocab 128256, tied embeddings). Per decode step: wall time
 * of engine_append + sync (what a caller waits) and the device time between
 * two events around it. The floor for the 1B model is its weight bytes
 * (about 2.5 GB) over the copy bandwidth (about 4.3 TB/s): near 0.6 ms.
 *
 * Usage: time_cuda_decode [TINY_MODEL_DIR]
 */
#include <time.h>

#include <cuda_runtime_api.h>

#include "gt.h"
#include "cuda_internal.h"
#include "engine.h"
#include "model.h"

static struct kt_rng rng = { 0x74696d65ull };

#define HR_MIN_SZ(a, b) ((a) < (b) ? (a) : (b))

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Random bf16 values of about `scale`, shared by all weights (each takes a
 * random window of it). */
static uint16_t *pool_bf16;
static size_t pool_n;

static void *rand_weight(struct kern_backend *be, size_t n, float scale, float bias)
{
	static uint16_t *tmp;
	static size_t tmp_n;
	size_t off = kt_below(&rng, 1u << 20);
	void *w;

	if (n + off > pool_n) {
		fprintf(stderr, "weight pool too small\n");
		exit(1);
	}
	if (scale == 0.02f && bias == 0.0f) {
		w = be->ops->weight_upload(be, pool_bf16 + off, KERN_BF16, n);
	} else {
		if (n > tmp_n) {
			free(tmp);
			tmp = kt_xmalloc(n * 2);
			tmp_n = n;
		}
		for (size_t i = 0; i < n; i++)
			tmp[i] = kern_f32_to_bf16(bias + scale * (float)(kt_unif(&rng) * 2 - 1));
		w = be->ops->weight_upload(be, tmp, KERN_BF16, n);
	}
	if (!w) {
		fprintf(stderr, "weight_upload failed\n");
		exit(1);
	}
	return w;
}

static struct model *llama1b(struct kern_backend *be)
{
	struct model *m = calloc(1, sizeof(*m));
	struct model_config *c = &m->cfg;
	uint32_t D, F, Q, KV;
	float *inv;

	*c = (struct model_config){
		.arch = MODEL_ARCH_LLAMA, .arch_name = "LlamaForCausalLM (random)",
		.vocab_size = 128256, .hidden_size = 2048, .intermediate_size = 8192,
		.n_layers = 16, .n_heads = 32, .n_kv_heads = 8, .head_dim = 64,
		.max_position_embeddings = 4096, .rms_norm_eps = 1e-5f, .rope_theta = 500000.0f,
		.tie_word_embeddings = true, .torch_dtype = KERN_BF16,
		.bos_token_id = -1, .eos_token_id = -1,
	};
	D = c->hidden_size;
	F = c->intermediate_size;
	Q = c->n_heads * c->head_dim;
	KV = c->n_kv_heads * c->head_dim;
	pool_n = (size_t)c->vocab_size * D + (1u << 20);
	pool_bf16 = kt_xmalloc(pool_n * 2);
	for (size_t i = 0; i < pool_n; i++)
		pool_bf16[i] = kern_f32_to_bf16(0.02f * (float)(kt_unif(&rng) * 2 - 1));
	m->be = be;
	m->embed = rand_weight(be, (size_t)c->vocab_size * D, 0.02f, 0);
	m->lm_head = m->embed;
	m->final_norm = rand_weight(be, D, 0.1f, 1.0f);
	m->layers = calloc(c->n_layers, sizeof(*m->layers));
	for (uint32_t l = 0; l < c->n_layers; l++) {
		struct model_layer *L = &m->layers[l];

		L->attn_norm = rand_weight(be, D, 0.1f, 1.0f);
		L->mlp_norm = rand_weight(be, D, 0.1f, 1.0f);
		L->wq = rand_weight(be, (size_t)Q * D, 0.02f, 0);
		L->wk = rand_weight(be, (size_t)KV * D, 0.02f, 0);
		L->wv = rand_weight(be, (size_t)KV * D, 0.02f, 0);
		L->wo = rand_weight(be, (size_t)D * Q, 0.02f, 0);
		L->w_gate = rand_weight(be, (size_t)F * D, 0.02f, 0);
		L->w_up = rand_weight(be, (size_t)F * D, 0.02f, 0);
		L->w_down = rand_weight(be, (size_t)D * F, 0.02f, 0);
	}
	inv = kt_xmalloc(c->head_dim / 2 * sizeof(float));
	model_rope_inv_freq(c, inv);
	m->inv_freq = kt_upload(be, inv, c->head_dim / 2 * sizeof(float));
	free(inv);
	free(pool_bf16);
	pool_bf16 = NULL;
	return m;
}

static void llama1b_free(struct model *m)
{
	struct kern_backend *be = m->be;

	for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
		struct model_layer *L = &m->layers[l];
		void *w[] = { L->attn_norm, L->mlp_norm, L->wq, L->wk, L->wv, L->wo, L->w_gate,
			      L->w_up, L->w_down };

		for (size_t i = 0; i < KT_ARRAY_SIZE(w); i++)
			be->ops->free(be, w[i]);
	}
	be->ops->free(be, m->embed);
	be->ops->free(be, m->final_norm);
	be->ops->free(be, m->inv_freq);
	free(m->layers);
	free(m);
}

static void time_model(struct model *m, const char *name, uint32_t n_prompt, uint32_t n_decode)
{
	struct kern_backend *be = m->be;
	struct kern_cuda *c = be->priv;
	struct engine_params ep = { .max_step_tokens = 512 };
	struct engine *e = engine_new(m, &ep);
	struct engine_seq *s = e ? engine_seq_new(e) : NULL;
	int32_t *prompt = kt_xmalloc(n_prompt * sizeof(int32_t));
	double *wall = kt_xmalloc(n_decode * sizeof(double));
	double *dev = kt_xmalloc(n_decode * sizeof(double));
	double *host = kt_xmalloc(n_decode * sizeof(double));
	cudaEvent_t e0, e1;
	double t0, t_prefill, t_gen;
	int32_t *gen = kt_xmalloc(n_decode * sizeof(int32_t));
	float ms;

	if (!s) {
		fprintf(stderr, "%s: engine_new failed\n", name);
		kt_failures++;
		return;
	}
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	for (uint32_t i = 0; i < n_prompt; i++)
		prompt[i] = (int32_t)kt_below(&rng, m->cfg.vocab_size);
	/* Warm-up: plans, heuristics, module load. */
	KT_CHECK_EQ_INT(engine_append(e, s, prompt, n_prompt), 0);
	KT_CHECK_EQ_INT(be->ops->sync(be), 0);
	for (uint32_t i = 0; i < 8; i++)
		KT_CHECK_EQ_INT(engine_append(e, s, prompt + i, 1), 0);
	KT_CHECK_EQ_INT(engine_truncate(e, s, 0), 0);
	KT_CHECK_EQ_INT(be->ops->sync(be), 0);

	t0 = now_ms();
	KT_CHECK_EQ_INT(engine_append(e, s, prompt, n_prompt), 0);
	KT_CHECK_EQ_INT(be->ops->sync(be), 0);
	t_prefill = now_ms() - t0;
	for (uint32_t i = 0; i < n_decode; i++) {
		int32_t tok = (int32_t)kt_below(&rng, m->cfg.vocab_size);

		t0 = now_ms();
		cudaEventRecord(e0, c->stream);
		KT_CHECK_EQ_INT(engine_append(e, s, &tok, 1), 0);
		host[i] = now_ms() - t0;
		cudaEventRecord(e1, c->stream);
		KT_CHECK_EQ_INT(be->ops->sync(be), 0);
		wall[i] = now_ms() - t0;
		cudaEventElapsedTime(&ms, e0, e1);
		dev[i] = ms;
	}
	t0 = now_ms();
	KT_CHECK_EQ_INT(engine_generate(e, s, n_decode, gen, NULL, NULL, 0), 0);
	t_gen = (now_ms() - t0) / n_decode;
	qsort(wall, n_decode, sizeof(double), cmp_double);
	qsort(dev, n_decode, sizeof(double), cmp_double);
	qsort(host, n_decode, sizeof(double), cmp_double);
	printf("%-28s prefill %u tokens: %.2f ms (%.0f tok/s)\n", name, n_prompt, t_prefill,
	       n_prompt / t_prefill * 1e3);
	printf("%-28s decode step at ctx ~%u: wall median %.3f ms (min %.3f), device median %.3f ms\n",
	       name, n_prompt, wall[n_decode / 2], wall[0], dev[n_decode / 2]);
	printf("%-28s host time to issue one step: median %.3f ms\n", name, host[n_decode / 2]);
	printf("%-28s engine_generate: %.3f ms/token (argmax + download + append)\n", name, t_gen);
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	engine_seq_free(e, s);
	engine_free(e);
	free(prompt);
	free(wall);
	free(dev);
	free(host);
	free(gen);
}

/* Median of reps timed launches of fn between events, in ms. */
static double time_events(struct kern_backend *be, int (*fn)(void *), void *arg, int reps)
{
	struct kern_cuda *c = be->priv;
	double *t = kt_xmalloc(reps * sizeof(double)), med;
	cudaEvent_t a, b;
	float ms;

	cudaEventCreate(&a);
	cudaEventCreate(&b);
	for (int i = 0; i < 5; i++)
		KT_CHECK_EQ_INT(fn(arg), 0);
	for (int i = 0; i < reps; i++) {
		cudaEventRecord(a, c->stream);
		KT_CHECK_EQ_INT(fn(arg), 0);
		cudaEventRecord(b, c->stream);
		cudaEventSynchronize(b);
		cudaEventElapsedTime(&ms, a, b);
		t[i] = ms;
	}
	qsort(t, reps, sizeof(double), cmp_double);
	med = t[reps / 2];
	cudaEventDestroy(a);
	cudaEventDestroy(b);
	free(t);
	return med;
}

struct mm_arg {
	struct kern_backend *be;
	void *out, *in, *w[8];
	uint32_t n, k, m, nw, next;
};

static int mm_fn(void *p)
{
	struct mm_arg *a = p;

	/* Rotate among weight copies so that W comes from memory, not L2. */
	return a->be->ops->matmul(a->be, a->out, a->in, a->w[a->next++ % a->nw], NULL, a->n, a->k,
				  a->m);
}

static void time_matmuls(struct kern_backend *be)
{
	static const uint32_t shapes[][3] = {
		{ 1, 2048, 2048 }, { 1, 2048, 512 }, { 1, 2048, 8192 }, { 1, 8192, 2048 },
		{ 1, 2048, 128256 }, { 4, 2048, 8192 }, { 8, 2048, 8192 }, { 16, 2048, 8192 },
		{ 512, 2048, 8192 },
	};
	struct kern_cuda *c = be->priv;

	printf("matmul (bf16, W rotated over >= 256 MB), median of 50:\n");
	for (size_t i = 0; i < KT_ARRAY_SIZE(shapes); i++) {
		struct mm_arg a = { .be = be, .n = shapes[i][0], .k = shapes[i][1], .m = shapes[i][2] };
		size_t wb = (size_t)a.m * a.k * 2;
		float *x = gt_rand(&rng, (size_t)a.n * a.k, 1.0f);

		uint16_t *h = kt_xmalloc(wb);

		/* Cheap random bf16 of magnitude 2^-7..2^-6, both signs. */
		for (size_t j = 0; j < wb / 2; j++)
			h[j] = (uint16_t)(0x3c00u | (kt_next(&rng) & 0x807fu));
		a.nw = (uint32_t)HR_MIN_SZ((((size_t)256 << 20) + wb - 1) / wb, 8);
		a.in = gt_put(be, x, (size_t)a.n * a.k);
		a.out = be->ops->alloc(be, (size_t)a.n * a.m * 2);
		for (uint32_t j = 0; j < a.nw; j++) {
			a.w[j] = be->ops->weight_upload(be, h, KERN_BF16, (size_t)a.m * a.k);
			KT_CHECK(a.w[j] != NULL);
		}
		free(h);
		for (int lt = 0; lt < 2; lt++) {
			double ms;

			if (!lt && a.n > KC_GEMV_MAX_N)
				continue;
			c->gemv_off = lt;
			ms = time_events(be, mm_fn, &a, 50);
			printf("  n=%-4u k=%-5u m=%-6u %-9s %8.4f ms  %7.0f GB/s of W  %6.1f TFLOP/s\n",
			       a.n, a.k, a.m, lt ? "cuBLASLt" : "gemv", ms, wb / ms / 1e6,
			       2.0 * a.n * a.k * a.m / ms / 1e9);
		}
		c->gemv_off = 0;
		for (uint32_t j = 0; j < a.nw; j++)
			be->ops->free(be, a.w[j]);
		be->ops->free(be, a.in);
		be->ops->free(be, a.out);
		free(x);
	}
}

struct at_arg {
	struct kern_backend *be;
	void *out, *q;
	struct kern_batch b;
	struct kern_kv kv;
	uint32_t n_heads;
};

static int at_fn(void *p)
{
	struct at_arg *a = p;

	return a->be->ops->attention(a->be, a->out, a->q, &a->b, &a->kv, 0, a->n_heads, 0.125f);
}

/* Decode attention of n_seqs sequences of ctx tokens, 1B geometry (32 q,
 * 8 kv heads of 64, pages of 16), KV of random bf16. */
static void time_attention(struct kern_backend *be, uint32_t n_seqs, uint32_t ctx, uint32_t n_new)
{
	struct at_arg a = { .be = be, .n_heads = 32 };
	uint32_t pt = 16, nb = (ctx + pt - 1) / pt, T = n_seqs * n_new;
	int32_t *pos = kt_xmalloc(T * 4), *ss = kt_xmalloc((n_seqs + 1) * 4);
	int32_t *cl = kt_xmalloc(n_seqs * 4), *bt = kt_xmalloc((size_t)n_seqs * nb * 4);
	size_t pool_elems;
	float *x;
	double ms, bytes;

	a.kv = (struct kern_kv){ .n_pages = n_seqs * nb, .page_tokens = pt, .n_layers = 1,
				 .n_kv_heads = 8, .head_dim = 64 };
	pool_elems = kern_kv_page_elems(&a.kv) * a.kv.n_pages;
	x = gt_rand(&rng, pool_elems, 1.0f);
	a.kv.base = gt_put(be, x, pool_elems);
	free(x);
	for (uint32_t s = 0; s < n_seqs; s++) {
		ss[s] = (int32_t)(s * n_new);
		cl[s] = (int32_t)ctx;
		for (uint32_t j = 0; j < n_new; j++)
			pos[s * n_new + j] = (int32_t)(ctx - n_new + j);
		for (uint32_t j = 0; j < nb; j++)
			bt[(size_t)s * nb + j] = (int32_t)(s * nb + j);
	}
	ss[n_seqs] = (int32_t)T;
	x = gt_rand(&rng, (size_t)T * 32 * 64, 1.0f);
	a.q = gt_put(be, x, (size_t)T * 32 * 64);
	free(x);
	a.out = be->ops->alloc(be, (size_t)T * 32 * 64 * 2);
	a.b = (struct kern_batch){ .n_tokens = T, .n_seqs = n_seqs, .max_blocks = nb, .max_ctx = ctx,
				   .pos = kt_upload(be, pos, T * 4),
				   .slot = kt_upload(be, pos, T * 4),
				   .seq_start = kt_upload(be, ss, (n_seqs + 1) * 4),
				   .ctx_len = kt_upload(be, cl, n_seqs * 4),
				   .block_table = kt_upload(be, bt, (size_t)n_seqs * nb * 4) };
	bytes = (double)n_seqs * ctx * 8 * 64 * 2 * 2;
	/* Splits: by shape (0), then forced to 1 and 4 for decode. */
	for (uint32_t sp = 0; sp <= 4; sp = sp ? sp * 4 : 1) {
		char lab[16];

		if (sp && n_new > 1)
			break;
		((struct kern_cuda *)be->priv)->attn_splits = sp;
		ms = time_events(be, at_fn, &a, 50);
		snprintf(lab, sizeof(lab), sp ? "%u" : "auto", sp);
		printf("  attention %3u seqs x ctx %-5u new %-4u splits %-4s %8.4f ms  %7.0f GB/s of K+V\n",
		       n_seqs, ctx, n_new, lab, ms, bytes / ms / 1e6);
	}
	((struct kern_cuda *)be->priv)->attn_splits = 0;
	void *d[] = { a.kv.base, a.q, a.out, (void *)a.b.pos, (void *)a.b.slot,
		      (void *)a.b.seq_start, (void *)a.b.ctx_len, (void *)a.b.block_table };
	for (size_t i = 0; i < KT_ARRAY_SIZE(d); i++)
		be->ops->free(be, d[i]);
	free(pos);
	free(ss);
	free(cl);
	free(bt);
}

int main(int argc, char **argv)
{
	char err[256];
	struct model *m;

	gt_init("time_cuda_decode");
	if (argc > 1) {
		m = model_load(argv[1], gt_gpu, err, sizeof(err));
		if (!m) {
			fprintf(stderr, "model_load: %s\n", err);
			return 1;
		}
		time_model(m, "llama-tiny", 64, 64);
		model_free(m);
	}
	{
		double t0 = now_ms();

		m = llama1b(gt_gpu);
		KT_CHECK_EQ_INT(gt_gpu->ops->sync(gt_gpu), 0);
		printf("%-28s built in %.1f s\n", "llama-1B-shaped (random)", (now_ms() - t0) / 1e3);
	}
	time_model(m, "llama-1B-shaped (random)", 512, 64);
	time_model(m, "llama-1B-shaped ctx 32", 32, 64);
	llama1b_free(m);
	time_matmuls(gt_gpu);
	printf("attention (1B geometry), median of 50:\n");
	time_attention(gt_gpu, 1, 512, 1);
	time_attention(gt_gpu, 1, 4096, 1);
	time_attention(gt_gpu, 64, 1024, 1);
	time_attention(gt_gpu, 64, 1024, 4);
	time_attention(gt_gpu, 1, 2048, 512);
	gt_fini();
	return kt_finish("time_cuda_decode");
}

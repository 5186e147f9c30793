/* SPDX-License-Identifier: MIT */
/*
 * Tiny model directories for the loader tests: a host-memory test backend
 * that counts its allocations, a generator of Llama/Mistral/Qwen2 tensors with
 * known values, writers for config.json, safetensors files and the shard
 * index, and checks that a loaded model holds exactly those values.
 */
#ifndef TINY_MODEL_H
#define TINY_MODEL_H

#include "mt.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>

#include "model.h"

/* ---------------------------------------------------------------- backend */

struct tb {
	struct kern_backend be;
	long live;          /* backend allocations not yet freed */
	long n_weights;     /* weight_upload calls */
	long fail_weight_at; /* fail the n-th weight_upload (1-based), 0 = never */
	long fail_alloc;    /* fail ops->alloc */
	long misaligned;    /* weight_upload calls with a misaligned source */
};

static inline struct tb *tb_of(struct kern_backend *be)
{
	return (struct tb *)be;
}

static inline void *tb_alloc(struct kern_backend *be, size_t bytes)
{
	void *p;

	if (tb_of(be)->fail_alloc) {
		errno = ENOMEM;
		return NULL;
	}
	p = malloc(bytes ? bytes : 1);
	if (p)
		tb_of(be)->live++;
	return p;
}

static inline void tb_free(struct kern_backend *be, void *p)
{
	if (!p)
		return;
	tb_of(be)->live--;
	free(p);
}

static inline int tb_upload(struct kern_backend *be, void *dst, const void *src, size_t bytes)
{
	memcpy(dst, src, bytes);
	return 0;
}

static inline float bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;

	memcpy(&f, &u, 4);
	return f;
}

static inline uint16_t f32_to_bf16(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	u += 0x7fff + ((u >> 16) & 1); /* round to nearest even; no NaNs here */
	return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h)
{
	uint32_t e = (h >> 10) & 31, m = h & 1023;
	float v = e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m | 1024), (int)e - 25);

	return (h & 0x8000) ? -v : v;
}

/* Own conversion: kern_to_f32 belongs to the kernels library. Reads go
 * through memcpy since tensors in a file need not be aligned. */
static inline void *tb_weight_upload(struct kern_backend *be, const void *src, enum kern_dtype dt, size_t n)
{
	const uint8_t *s = src;
	float *out;
	size_t i;

	/* the loader hands over element-aligned host memory, always */
	if ((uintptr_t)src % (dt == KERN_F32 ? 4 : 2) != 0)
		tb_of(be)->misaligned++;
	if (++tb_of(be)->n_weights == tb_of(be)->fail_weight_at) {
		errno = ENOMEM;
		return NULL;
	}
	out = malloc(n ? n * sizeof(float) : 1);
	if (!out)
		return NULL;
	tb_of(be)->live++;
	for (i = 0; i < n; i++) {
		uint16_t h;

		if (dt == KERN_F32) {
			memcpy(&out[i], s + 4 * i, 4);
			continue;
		}
		memcpy(&h, s + 2 * i, 2);
		out[i] = dt == KERN_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
	}
	return out;
}

__attribute__((unused)) static const struct kern_ops tb_ops = {
	.alloc = tb_alloc,
	.free = tb_free,
	.upload = tb_upload,
	.weight_upload = tb_weight_upload,
};

static inline void tb_init(struct tb *tb)
{
	memset(tb, 0, sizeof(*tb));
	tb->be.ops = &tb_ops;
	tb->be.name = "test";
	tb->be.act_bytes = 4;
	tb->be.act_dtype = KERN_F32;
}

/* ---------------------------------------------------------------- model files */

#define VOCAB 32
#define HIDDEN 16
#define INTER 24
#define HEADS 4
#define KV 2
#define HD 4
#define MAX_T 64

struct tt {
	char name[96];
	enum kern_dtype dt;
	uint32_t n_dims;
	uint64_t shape[3];
	float *vals;   /* as they read back: rounded to dt */
	int shard;     /* for sharded writes */
	bool skip;     /* not written */
	bool noindex;  /* written, but left out of the index */
};

struct tmodel {
	const char *arch;
	bool tie;
	int n_layers;
	const char *config_extra;
	bool odd_header;    /* header length 1 mod 8: the data section misaligned */
	struct tt t[MAX_T];
	int n;
};

static inline uint64_t tt_elems(const struct tt *t)
{
	uint64_t n = 1;

	for (uint32_t i = 0; i < t->n_dims; i++)
		n *= t->shape[i];
	return n;
}

__attribute__((format(printf, 5, 6))) static inline struct tt *add(struct tmodel *tm, enum kern_dtype dt,
							     uint64_t rows, uint64_t cols,
							     const char *fmt, ...)
{
	struct tt *t = &tm->t[tm->n++];
	uint64_t i, n;
	va_list ap;

	memset(t, 0, sizeof(*t));
	va_start(ap, fmt);
	vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	t->dt = dt;
	t->n_dims = cols ? 2 : 1;
	t->shape[0] = rows;
	t->shape[1] = cols;
	n = tt_elems(t);
	t->vals = malloc(n * sizeof(float) + 64); /* room for a grown shape */
	for (i = 0; i < n; i++) {
		float v = sinf((float)tm->n * 1.31f + (float)i * 0.37f);

		t->vals[i] = dt == KERN_BF16 ? bf16_to_f32(f32_to_bf16(v)) : v;
	}
	return t;
}

static inline void gen(struct tmodel *tm, const char *arch, enum kern_dtype dt, bool tie, bool lm_head)
{
	bool bias = strcmp(arch, "Qwen2ForCausalLM") == 0;
	int l;

	memset(tm, 0, sizeof(*tm));
	tm->arch = arch;
	tm->tie = tie;
	tm->n_layers = 2;
	add(tm, dt, VOCAB, HIDDEN, "model.embed_tokens.weight");
	for (l = 0; l < tm->n_layers; l++) {
		add(tm, dt, HIDDEN, 0, "model.layers.%d.input_layernorm.weight", l);
		add(tm, dt, HEADS * HD, HIDDEN, "model.layers.%d.self_attn.q_proj.weight", l);
		add(tm, dt, KV * HD, HIDDEN, "model.layers.%d.self_attn.k_proj.weight", l);
		add(tm, dt, KV * HD, HIDDEN, "model.layers.%d.self_attn.v_proj.weight", l);
		if (bias) {
			add(tm, dt, HEADS * HD, 0, "model.layers.%d.self_attn.q_proj.bias", l);
			add(tm, dt, KV * HD, 0, "model.layers.%d.self_attn.k_proj.bias", l);
			add(tm, dt, KV * HD, 0, "model.layers.%d.self_attn.v_proj.bias", l);
		}
		add(tm, dt, HIDDEN, HEADS * HD, "model.layers.%d.self_attn.o_proj.weight", l);
		add(tm, dt, HIDDEN, 0, "model.layers.%d.post_attention_layernorm.weight", l);
		add(tm, dt, INTER, HIDDEN, "model.layers.%d.mlp.gate_proj.weight", l);
		add(tm, dt, INTER, HIDDEN, "model.layers.%d.mlp.up_proj.weight", l);
		add(tm, dt, HIDDEN, INTER, "model.layers.%d.mlp.down_proj.weight", l);
	}
	add(tm, dt, HIDDEN, 0, "model.norm.weight");
	if (lm_head)
		add(tm, dt, VOCAB, HIDDEN, "lm_head.weight");
}

static inline void tm_free(struct tmodel *tm)
{
	for (int i = 0; i < tm->n; i++)
		free(tm->t[i].vals);
	tm->n = 0;
}

static inline struct tt *tm_find(struct tmodel *tm, const char *name)
{
	for (int i = 0; i < tm->n; i++)
		if (strcmp(tm->t[i].name, name) == 0)
			return &tm->t[i];
	return NULL;
}

static inline void put_dtype(uint8_t *dst, const struct tt *t)
{
	uint64_t i, n = tt_elems(t);

	for (i = 0; i < n; i++) {
		uint16_t h;

		if (t->dt == KERN_F32) {
			memcpy(dst + 4 * i, &t->vals[i], 4);
			continue;
		}
		h = f32_to_bf16(t->vals[i]); /* BF16 only in these tests */
		memcpy(dst + 2 * i, &h, 2);
	}
}

/* Write the tensors of `shard` (-1: all) as dir/file. */
static inline int write_st(const struct tmodel *tm, const char *dir, const char *file, int shard)
{
	size_t cap = 64 * 1024, o = 0, data = 0, hl, dsz;
	char *h = malloc(cap), path[512];
	uint8_t *img;
	int i, r;

	o += (size_t)snprintf(h + o, cap - o, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (i = 0; i < tm->n; i++) {
		const struct tt *t = &tm->t[i];
		size_t bytes = tt_elems(t) * (t->dt == KERN_F32 ? 4 : 2);

		if (t->skip || (shard >= 0 && t->shard != shard))
			continue;
		o += (size_t)snprintf(h + o, cap - o, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name,
				      t->dt == KERN_F32 ? "F32" : "BF16");
		for (uint32_t d = 0; d < t->n_dims; d++)
			o += (size_t)snprintf(h + o, cap - o, "%s%llu", d ? "," : "",
					      (unsigned long long)t->shape[d]);
		o += (size_t)snprintf(h + o, cap - o, "],\"data_offsets\":[%zu,%zu]}", data, data + bytes);
		data += bytes;
	}
	o += (size_t)snprintf(h + o, cap - o, "}");
	while (o % 8 != (tm->odd_header ? 1u : 0u)) /* pad with spaces, as the reference */
		h[o++] = ' ';
	hl = o;
	dsz = data;
	img = calloc(1, 8 + hl + dsz);
	for (i = 0; i < 8; i++)
		img[i] = (uint8_t)((uint64_t)hl >> (8 * i));
	memcpy(img + 8, h, hl);
	data = 0;
	for (i = 0; i < tm->n; i++) {
		const struct tt *t = &tm->t[i];

		if (t->skip || (shard >= 0 && t->shard != shard))
			continue;
		put_dtype(img + 8 + hl + data, t);
		data += tt_elems(t) * (t->dt == KERN_F32 ? 4 : 2);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	r = mt_write(path, img, 8 + hl + dsz);
	free(img);
	free(h);
	return r;
}

static inline int write_text(const char *dir, const char *file, const char *text)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	return mt_write(path, text, strlen(text));
}

static inline int write_config(const struct tmodel *tm, const char *dir)
{
	char buf[2048];

	snprintf(buf, sizeof(buf),
		 "{\"architectures\": [\"%s\"], \"vocab_size\": %d, \"hidden_size\": %d,"
		 " \"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d,"
		 " \"num_key_value_heads\": %d, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0,"
		 " \"tie_word_embeddings\": %s, \"torch_dtype\": \"bfloat16\"%s}",
		 tm->arch, VOCAB, HIDDEN, INTER, tm->n_layers, HEADS, KV, tm->tie ? "true" : "false",
		 tm->config_extra ? tm->config_extra : "");
	return write_text(dir, "config.json", buf);
}

/* Index over shards 0 and 1 (tensor i goes to shard i % 2). */
static inline int write_index(const struct tmodel *tm, const char *dir, const char *const shards[2])
{
	size_t cap = 64 * 1024, o = 0;
	char *b = malloc(cap);
	int i, r, n = 0;

	o += (size_t)snprintf(b + o, cap - o, "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {");
	for (i = 0; i < tm->n; i++)
		if (!tm->t[i].noindex)
			o += (size_t)snprintf(b + o, cap - o, "%s\"%s\": \"%s\"", n++ ? ", " : "",
					      tm->t[i].name, shards[tm->t[i].shard]);
	snprintf(b + o, cap - o, "}}");
	r = write_text(dir, "model.safetensors.index.json", b);
	free(b);
	return r;
}

/* A fresh directory under root. */
/* Each test program sets it to its own mkdtemp directory. */
static char root[64];

static inline const char *newdir(const char *name)
{
	static char path[256];

	snprintf(path, sizeof(path), "%s/%s", root, name);
	if (mkdir(path, 0700) < 0)
		perror(path);
	return path;
}

static inline void write_single(struct tmodel *tm, const char *dir)
{
	CHECK(write_config(tm, dir) == 0);
	CHECK(write_st(tm, dir, "model.safetensors", -1) == 0);
}

static inline void write_sharded(struct tmodel *tm, const char *dir)
{
	static const char *const shards[2] = { "model-00001-of-00002.safetensors",
					       "model-00002-of-00002.safetensors" };

	for (int i = 0; i < tm->n; i++)
		tm->t[i].shard = i % 2;
	CHECK(write_config(tm, dir) == 0);
	CHECK(write_st(tm, dir, shards[0], 0) == 0);
	CHECK(write_st(tm, dir, shards[1], 1) == 0);
	CHECK(write_index(tm, dir, shards) == 0);
}

/* ---------------------------------------------------------------- checks */

static inline void check_weights(const struct model *m, const struct tmodel *tm)
{
	uint64_t bytes = 0;

	for (int i = 0; i < tm->n; i++) {
		const struct tt *t = &tm->t[i];
		const float *w = model_tensor(m, t->name);

		if (t->skip || strstr(t->name, "rotary_emb"))
			continue;
		bytes += tt_elems(t) * (t->dt == KERN_F32 ? 4 : 2);
		if (!w || memcmp(w, t->vals, tt_elems(t) * sizeof(float)) != 0) {
			fprintf(stderr, "weight %s differs\n", t->name);
			mt_failures++;
		}
	}
	CHECK(m->weight_bytes == bytes);
	CHECK(m->cfg.qkv_bias == (m->layers[0].bq != NULL));
	/* names the model has no tensor for: a layer past the last (it has 2),
	 * malformed layer numbers and suffixes, buffers the loader ignores */
	CHECK(!model_tensor(m, "model.layers.2.mlp.up_proj.weight"));
	CHECK(!model_tensor(m, "model.layers.01.mlp.up_proj.weight"));
	CHECK(!model_tensor(m, "model.layers..mlp.up_proj.weight"));
	CHECK(!model_tensor(m, "model.layers.1.mlp.up_proj"));
	CHECK(!model_tensor(m, "model.layers.1.self_attn.rotary_emb.inv_freq"));
	CHECK(!model_tensor(m, "model.embed_tokens"));
	CHECK(model_tensor(m, "model.layers.1.mlp.up_proj.weight") == m->layers[1].w_up);
	if (!m->cfg.qkv_bias)
		CHECK(!model_tensor(m, "model.layers.0.self_attn.q_proj.bias"));
	for (unsigned i = 0; model_layer_tensor_suffix(i); i++)
		CHECK(i < 12);
}

static inline void check_inv_freq(const struct model *m)
{
	float ref[HD / 2];

	model_rope_inv_freq(&m->cfg, ref);
	CHECK(m->inv_freq && memcmp(m->inv_freq, ref, sizeof(ref)) == 0);
	CHECK(ref[0] == 1.0f && fabsf(ref[1] - 0.01f) < 1e-7f); /* 10000^(-2/4) */
}

/* ---------------------------------------------------------------- tests */

static inline uint64_t load_ok(struct tmodel *tm, const char *dir, long *ret_n_weights)
{
	struct tb tb;
	struct model *m;
	char err[512] = "";
	uint64_t fp = 0;

	tb_init(&tb);
	m = model_load(dir, &tb.be, err, sizeof(err));
	if (!m) {
		fprintf(stderr, "load %s failed: %s\n", dir, err);
		mt_failures++;
		return 0;
	}
	CHECK(err[0] == '\0');
	CHECK(strcmp(m->dir, dir) == 0 && m->be == &tb.be);
	CHECK(m->cfg.n_layers == 2 && m->cfg.vocab_size == VOCAB && m->cfg.head_dim == HD);
	CHECK(m->load_seconds >= 0 && m->load_seconds < 60 && m->fingerprint != 0);
	check_weights(m, tm);
	check_inv_freq(m);
	if (tm->tie && !tm_find(tm, "lm_head.weight"))
		CHECK(m->lm_head == m->embed);
	else
		CHECK(m->lm_head != m->embed);
	fp = m->fingerprint;
	if (ret_n_weights)
		*ret_n_weights = tb.n_weights;
	model_free(m);
	CHECK(tb.live == 0 && tb.misaligned == 0);
	return fp;
}

/* Load must fail with errno `e` and every word in the message; no leaks. */
#define LOAD_FAIL(dir, e, ...)                                                             \
	do {                                                                               \
		struct tb _tb;                                                             \
		char _err[512] = "";                                                       \
		tb_init(&_tb);                                                             \
		errno = 0;                                                                 \
		CHECK(model_load(dir, &_tb.be, _err, sizeof(_err)) == NULL);               \
		if (errno != (e)) {                                                        \
			fprintf(stderr, "%s:%d: errno %d, want %d (%s)\n", __FILE__,       \
				__LINE__, errno, (e), _err);                               \
			mt_failures++;                                                     \
		}                                                                          \
		CHECK(_tb.live == 0);                                                      \
		CHECK_MSG(_err, __VA_ARGS__);                                              \
	} while (0)

#endif

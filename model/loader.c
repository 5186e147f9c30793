/* SPDX-License-Identifier: MIT */
/*
 * Loading a Hugging Face model directory onto a backend: config.json, one
 * model.safetensors or the shards named by model.safetensors.index.json,
 * checked against what the architecture needs (every tensor present with its
 * shape, no stray layer tensors), then either uploaded from the mapping
 * through ops->weight_upload (MMAP) or streamed from the files by
 * weight_stream.c (STREAM: see model.h), then unmapped. Also the model
 * fingerprint and model_free.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "hr_common.h"
#include "model.h"
#include "parse_pvt.h"
#include "stream_pvt.h"

#define CONFIG_FILE "config.json"
#define SINGLE_FILE "model.safetensors"
#define INDEX_FILE "model.safetensors.index.json"
#define CONFIG_MAX (4u << 20)
#define INDEX_MAX (64u << 20)

/* Shape dimension of a tensor, from the config. */
enum ld_dim { D_NONE, D_HIDDEN, D_Q, D_KV, D_INTER, D_VOCAB };

/* Tensors of one decoder layer: "model.layers.<i>.<suffix>". */
static const struct ld_layer_tensor {
	const char *suffix;
	size_t off;       /* in struct model_layer */
	enum ld_dim rows, cols;
	bool bias;        /* only with qkv_bias */
} ld_layer_tensors[] = {
	{ "input_layernorm.weight", offsetof(struct model_layer, attn_norm), D_HIDDEN, D_NONE, false },
	{ "self_attn.q_proj.weight", offsetof(struct model_layer, wq), D_Q, D_HIDDEN, false },
	{ "self_attn.k_proj.weight", offsetof(struct model_layer, wk), D_KV, D_HIDDEN, false },
	{ "self_attn.v_proj.weight", offsetof(struct model_layer, wv), D_KV, D_HIDDEN, false },
	{ "self_attn.q_proj.bias", offsetof(struct model_layer, bq), D_Q, D_NONE, true },
	{ "self_attn.k_proj.bias", offsetof(struct model_layer, bk), D_KV, D_NONE, true },
	{ "self_attn.v_proj.bias", offsetof(struct model_layer, bv), D_KV, D_NONE, true },
	{ "self_attn.o_proj.weight", offsetof(struct model_layer, wo), D_HIDDEN, D_Q, false },
	{ "post_attention_layernorm.weight", offsetof(struct model_layer, mlp_norm), D_HIDDEN, D_NONE,
	  false },
	{ "mlp.gate_proj.weight", offsetof(struct model_layer, w_gate), D_INTER, D_HIDDEN, false },
	{ "mlp.up_proj.weight", offsetof(struct model_layer, w_up), D_INTER, D_HIDDEN, false },
	{ "mlp.down_proj.weight", offsetof(struct model_layer, w_down), D_HIDDEN, D_INTER, false },
};

struct ld_shard {
	const char *file;  /* name inside dir (points into the index JSON) */
	struct st_file st;
};

struct ld_entry {
	const char *name;  /* tensor (points into the index JSON) */
	uint32_t shard;
};

struct loader {
	const char *dir;
	struct kern_backend *be;
	struct model *m;
	cJSON *index_json;
	const char *index_file;   /* for messages: the index, or the single file */
	struct ld_shard *shards;
	uint32_t n_shards;
	struct ld_entry *entries; /* sorted by name */
	uint32_t n_entries;
	XXH3_state_t *xxh;
	char *err;
	size_t errlen;
	const struct model_load_opts *o;
	bool stream;              /* plan tensors for ws_run instead of uploading */
	struct ws_tensor *plan;
	uint32_t n_plan, cap_plan;
};

hr_printf_fmt(3, 4) static int ld_fail(const struct loader *l, int r, const char *fmt, ...)
{
	va_list ap;

	if (l->err && l->errlen) {
		va_start(ap, fmt);
		vsnprintf(l->err, l->errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}

static char *ld_path(const char *dir, const char *file)
{
	size_t n = strlen(dir) + 1 + strlen(file) + 1;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s/%s", dir, file);
	return p;
}

/* Read dir/file whole (at most max bytes) into a malloc'd buffer. */
static int ld_read_file(struct loader *l, const char *file, size_t max, char **ret, size_t *ret_len)
{
	char *path = ld_path(l->dir, file), *buf = NULL;
	size_t len, done = 0;
	struct stat st;
	int fd = -1, r;

	if (!path)
		return ld_fail(l, -ENOMEM, "%s: out of memory", file);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	free(path);
	if (fd < 0) {
		r = -errno;
		return ld_fail(l, r, "%s: cannot open: %s", file, strerror(-r));
	}
	if (fstat(fd, &st) < 0) {
		r = ld_fail(l, -errno, "%s: cannot stat: %s", file, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		r = ld_fail(l, -EINVAL, "%s: not a regular file", file);
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		r = ld_fail(l, -EFBIG, "%s: %lld bytes, over the %zu-byte limit", file,
			    (long long)st.st_size, max);
		goto out;
	}
	len = (size_t)st.st_size;
	buf = malloc(len + 1);
	if (!buf) {
		r = ld_fail(l, -ENOMEM, "%s: out of memory", file);
		goto out;
	}
	while (done < len) {
		ssize_t n = read(fd, buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = ld_fail(l, -errno, "%s: read error: %s", file, strerror(errno));
			goto out;
		}
		if (n == 0)
			break; /* shrank under us: parse what is there */
		done += (size_t)n;
	}
	buf[done] = '\0';
	*ret = TAKE_PTR(buf);
	*ret_len = done;
	r = 0;
out:
	free(buf);
	close(fd);
	return r;
}

static int ld_open_shard(struct loader *l, struct ld_shard *s)
{
	char *path = ld_path(l->dir, s->file);
	int r;

	if (!path)
		return ld_fail(l, -ENOMEM, "%s: out of memory", s->file);
	r = st_open(path, &s->st, l->err, l->errlen);
	free(path);
	return r;
}

/* A shard name from the index must name a file in dir and nothing else. */
static bool ld_plain_name(const char *s)
{
	return s[0] != '\0' && !strchr(s, '/') && !strstr(s, "..") && strcmp(s, ".") != 0;
}

static int cmp_entry_shard(const void *a, const void *b)
{
	return strcmp(((const struct ld_shard *)a)->file, ((const struct ld_shard *)b)->file);
}

static int cmp_entry_name(const void *a, const void *b)
{
	return strcmp(((const struct ld_entry *)a)->name, ((const struct ld_entry *)b)->name);
}

/* Parse the index and open each distinct shard once. */
static int ld_open_index(struct loader *l, const char *text, size_t len)
{
	const cJSON *wm, *e;
	char why[256], esc[MODEL_ESC_MAX], esc2[MODEL_ESC_MAX];
	struct ld_shard *tmp;
	uint32_t n = 0, i, j;
	int r;

	l->index_json = model__json_parse(text, len, why, sizeof(why));
	if (!l->index_json)
		return ld_fail(l, -errno, "%s: %s", INDEX_FILE, why);
	if (!cJSON_IsObject(l->index_json))
		return ld_fail(l, -EINVAL, "%s: %s, not a JSON object", INDEX_FILE,
			       model__json_type(l->index_json));
	wm = cJSON_GetObjectItemCaseSensitive(l->index_json, "weight_map");
	if (!cJSON_IsObject(wm))
		return ld_fail(l, -EINVAL, "%s: 'weight_map' is %s, not an object", INDEX_FILE,
			       model__json_type(wm));
	cJSON_ArrayForEach(e, wm) {
		if (!cJSON_IsString(e))
			return ld_fail(l, -EINVAL, "%s: tensor '%s': shard is %s, not a file name",
				       INDEX_FILE, model__esc(esc, sizeof(esc), e->string),
				       model__json_type(e));
		if (!ld_plain_name(e->valuestring))
			return ld_fail(l, -EINVAL, "%s: tensor '%s': shard '%s' is not a plain file name",
				       INDEX_FILE, model__esc(esc, sizeof(esc), e->string),
				       model__esc(esc2, sizeof(esc2), e->valuestring));
		if (n == UINT32_MAX)
			return ld_fail(l, -E2BIG, "%s: too many entries", INDEX_FILE);
		n++;
	}

	/* One temporary shard slot per entry, sorted and deduplicated. */
	l->entries = calloc(n ? n : 1, sizeof(*l->entries));
	tmp = calloc(n ? n : 1, sizeof(*tmp));
	if (!l->entries || !tmp) {
		free(tmp);
		return ld_fail(l, -ENOMEM, "%s: out of memory", INDEX_FILE);
	}
	i = 0;
	cJSON_ArrayForEach(e, wm)
		tmp[i++].file = e->valuestring;
	qsort(tmp, n, sizeof(*tmp), cmp_entry_shard);
	for (i = 0, j = 0; i < n; i++)
		if (j == 0 || strcmp(tmp[j - 1].file, tmp[i].file) != 0)
			tmp[j++] = tmp[i];
	l->shards = tmp;
	l->n_shards = j;

	i = 0;
	cJSON_ArrayForEach(e, wm) {
		struct ld_shard key = { .file = e->valuestring };
		const struct ld_shard *s = bsearch(&key, l->shards, l->n_shards, sizeof(key),
						   cmp_entry_shard);

		l->entries[i].name = e->string;
		l->entries[i++].shard = (uint32_t)(s - l->shards);
	}
	/* Keys are unique: model__json_parse rejects duplicates. */
	qsort(l->entries, n, sizeof(*l->entries), cmp_entry_name);
	l->n_entries = n;

	for (i = 0; i < l->n_shards; i++) {
		r = ld_open_shard(l, &l->shards[i]);
		if (r < 0)
			return r;
	}
	for (i = 0; i < n; i++) {
		const struct ld_entry *en = &l->entries[i];

		if (!st_find(&l->shards[en->shard].st, en->name))
			return ld_fail(l, -EINVAL, "%s: tensor '%s' is listed in shard '%s' but absent from it",
				       INDEX_FILE, model__esc(esc, sizeof(esc), en->name),
				       l->shards[en->shard].file);
	}
	return 0;
}

static int ld_open_files(struct loader *l)
{
	_cleanup_free_ char *text = NULL;
	char *path;
	size_t len;
	int r;

	r = ld_read_file(l, INDEX_FILE, INDEX_MAX, &text, &len);
	if (r == 0) {
		l->index_file = INDEX_FILE;
		return ld_open_index(l, text, len);
	}
	if (r != -ENOENT)
		return r;

	l->index_file = SINGLE_FILE;
	l->shards = calloc(1, sizeof(*l->shards));
	if (!l->shards)
		return ld_fail(l, -ENOMEM, "%s: out of memory", SINGLE_FILE);
	l->shards[0].file = SINGLE_FILE;
	l->n_shards = 1;
	path = ld_path(l->dir, SINGLE_FILE);
	if (!path)
		return ld_fail(l, -ENOMEM, "%s: out of memory", SINGLE_FILE);
	if (access(path, F_OK) < 0 && errno == ENOENT) {
		free(path);
		return ld_fail(l, -ENOENT, "no %s or %s in '%s'", SINGLE_FILE, INDEX_FILE, l->dir);
	}
	free(path);
	return ld_open_shard(l, &l->shards[0]);
}

/* Find a tensor through the index (or in the single file). */
static const struct st_tensor *ld_lookup(const struct loader *l, const char *name,
					 const struct ld_shard **ret_shard)
{
	const struct ld_entry *en;
	struct ld_entry key = { .name = name };

	if (!l->index_json) {
		*ret_shard = &l->shards[0];
		return st_find(&l->shards[0].st, name);
	}
	en = bsearch(&key, l->entries, l->n_entries, sizeof(key), cmp_entry_name);
	if (!en)
		return NULL;
	*ret_shard = &l->shards[en->shard];
	return st_find(&l->shards[en->shard].st, name);
}

static uint64_t ld_dim(const struct model_config *cfg, enum ld_dim d)
{
	switch (d) {
	case D_HIDDEN:
		return cfg->hidden_size;
	case D_Q:
		return (uint64_t)cfg->n_heads * cfg->head_dim;
	case D_KV:
		return (uint64_t)cfg->n_kv_heads * cfg->head_dim;
	case D_INTER:
		return cfg->intermediate_size;
	case D_VOCAB:
		return cfg->vocab_size;
	case D_NONE:
		break;
	}
	return 0;
}

static void ld_hash_tensor(struct loader *l, const struct st_tensor *t)
{
	uint64_t hdr[2] = { strlen(t->name), (uint64_t)t->dtype << 32 | t->n_dims };

	XXH3_64bits_update(l->xxh, hdr, sizeof(hdr));
	XXH3_64bits_update(l->xxh, t->name, hdr[0]);
	XXH3_64bits_update(l->xxh, t->shape, t->n_dims * sizeof(t->shape[0]));
}

/*
 * Hand the tensor to the backend. The format does not align tensors (a
 * header of odd length shifts the whole data section), and backends read
 * elements in place, so a misaligned tensor goes through an aligned copy.
 */
static void *ld_upload(const struct loader *l, const struct st_tensor *t)
{
	size_t esize = t->n_elems ? t->n_bytes / t->n_elems : 1;
	void *tmp, *p;

	errno = 0;
	if ((uintptr_t)t->data % esize == 0)
		return l->be->ops->weight_upload(l->be, t->data, t->dtype, t->n_elems);
	tmp = malloc(t->n_bytes);
	if (!tmp)
		return NULL;
	memcpy(tmp, t->data, t->n_bytes);
	p = l->be->ops->weight_upload(l->be, tmp, t->dtype, t->n_elems);
	free(tmp);
	return p;
}

/*
 * STREAM: note where the tensor's bytes go. One already in the backend's
 * type gets its backend memory now and is written in place as chunks
 * arrive; any other is gathered and converted by weight_upload
 * (ld_gathered), which is when *ret is set.
 */
static int ld_plan(struct loader *l, const struct ld_shard *s, const struct st_tensor *t,
		   void **ret)
{
	struct ws_tensor *w;

	if (t->n_bytes == 0)
		return ld_fail(l, -EINVAL, "%s: tensor '%s' is empty", s->file, t->name);
	if (l->n_plan == l->cap_plan) {
		uint32_t cap = l->cap_plan ? 2 * l->cap_plan : 64;
		struct ws_tensor *p = realloc(l->plan, cap * sizeof(*p));

		if (!p)
			return ld_fail(l, -ENOMEM, "out of memory");
		l->plan = p;
		l->cap_plan = cap;
	}
	w = &l->plan[l->n_plan];
	*w = (struct ws_tensor){
		.name = t->name, .file = (uint32_t)(s - l->shards),
		.off = (uint64_t)((const uint8_t *)t->data - (const uint8_t *)s->st.map),
		.bytes = t->n_bytes, .ctx = ret,
	};
	if (t->dtype == l->be->act_dtype) {
		w->dst = l->be->ops->alloc(l->be, t->n_bytes);
		if (!w->dst) {
			int r = errno > 0 ? -errno : -ENOMEM;

			return ld_fail(l, r, "%s: tensor '%s': %s backend allocation of %llu bytes failed: %s",
				       s->file, t->name, l->be->name ? l->be->name : "?",
				       (unsigned long long)t->n_bytes, strerror(-r));
		}
		*ret = w->dst;
	}
	l->n_plan++;
	l->m->weight_bytes += t->n_bytes;
	return 0;
}

/* ws_run: a gathered tensor is whole: convert and upload it. */
static int ld_gathered(void *arg, struct ws_tensor *w, char *err, size_t errlen)
{
	struct loader *l = arg;
	const struct ld_shard *s = &l->shards[w->file];
	const struct st_tensor *t = st_find(&s->st, w->name);
	void *p;

	errno = 0;
	p = l->be->ops->weight_upload(l->be, w->gather, t->dtype, t->n_elems);
	if (!p) {
		int r = errno > 0 ? -errno : -ENOMEM;

		if (err && errlen)
			snprintf(err, errlen, "%s: tensor '%s': upload to the %s backend failed: %s",
				 s->file, w->name, l->be->name ? l->be->name : "?", strerror(-r));
		return r;
	}
	*(void **)w->ctx = p;
	return 0;
}

static int cmp_plan(const void *pa, const void *pb)
{
	const struct ws_tensor *a = pa, *b = pb;

	if (a->file != b->file)
		return a->file < b->file ? -1 : 1;
	return a->off < b->off ? -1 : a->off > b->off;
}

static int ld_stream(struct loader *l)
{
	struct ws_plan plan = { .tensors = l->plan, .n_tensors = l->n_plan,
				.gathered = ld_gathered, .arg = l };
	struct ws_file *files = calloc(l->n_shards ? l->n_shards : 1, sizeof(*files));
	struct ws_result res = { 0 };
	int r;

	if (!files)
		return ld_fail(l, -ENOMEM, "out of memory");
	for (uint32_t i = 0; i < l->n_shards; i++)
		files[i] = (struct ws_file){ .name = l->shards[i].file, .path = l->shards[i].st.path,
					     .size = l->shards[i].st.map_len,
					     .map = l->shards[i].st.map };
	plan.files = files;
	plan.n_files = l->n_shards;
	qsort(l->plan, l->n_plan, sizeof(*l->plan), cmp_plan);
	r = ws_run(&plan, l->be, l->o, &res, l->err, l->errlen);
	free(files);
	if (r < 0)
		return r;
	snprintf(l->m->load_how, sizeof(l->m->load_how),
		 "stream: %s, %u file%s O_DIRECT, %u buffered, %s buffers", res.io, res.files_direct,
		 res.files_direct == 1 ? "" : "s", res.files_buffered,
		 l->be->ops->alloc_host && l->be->ops->write_async ? "pinned" : "host");
	return 0;
}

/*
 * Find `name`, check its shape is [rows] or [rows, cols], upload it and
 * store the backend pointer in *ret. With optional, a missing tensor leaves
 * *ret NULL and returns 0.
 */
static int ld_tensor(struct loader *l, const char *name, enum ld_dim rows, enum ld_dim cols,
		     bool optional, void **ret)
{
	const struct model_config *cfg = &l->m->cfg;
	const struct ld_shard *s = NULL;
	const struct st_tensor *t = ld_lookup(l, name, &s);
	uint64_t want[2] = { ld_dim(cfg, rows), ld_dim(cfg, cols) };
	uint32_t want_dims = cols == D_NONE ? 1 : 2;
	char a[64], b[160];
	void *p;

	if (!t) {
		if (optional)
			return 0;
		return ld_fail(l, -EINVAL, "%s: missing tensor '%s'", s ? s->file : l->index_file,
			       name);
	}
	if (t->n_dims != want_dims || t->shape[0] != want[0] ||
	    (want_dims == 2 && t->shape[1] != want[1]))
		return ld_fail(l, -EINVAL, "%s: tensor '%s': expected shape %s but found %s", s->file,
			       name, model__fmt_shape(a, sizeof(a), want, want_dims),
			       model__fmt_shape(b, sizeof(b), t->shape, t->n_dims));
	ld_hash_tensor(l, t);
	if (l->stream)
		return ld_plan(l, s, t, ret);
	p = ld_upload(l, t);
	if (!p) {
		int r = errno > 0 ? -errno : -ENOMEM;

		return ld_fail(l, r, "%s: tensor '%s': upload to the %s backend failed: %s", s->file,
			       name, l->be->name ? l->be->name : "?", strerror(-r));
	}
	*ret = p;
	l->m->weight_bytes += t->n_bytes;
	return 0;
}

/* The model-wide tensors' names, as the files carry them. */
#define LD_EMBED "model.embed_tokens.weight"
#define LD_NORM "model.norm.weight"
#define LD_HEAD "lm_head.weight"
#define LD_LAYERS "model.layers."

/* The layer number of "model.layers.<i>.<suffix>" (decimal, no leading
 * zero), *suffix set past its dot; -1 for any other name. */
static int64_t ld_layer_of(const char *name, const char **suffix)
{
	const char *p = name + sizeof(LD_LAYERS) - 1, *q;
	int64_t layer = 0;

	if (strncmp(name, LD_LAYERS, sizeof(LD_LAYERS) - 1) != 0)
		return -1;
	for (q = p; *q >= '0' && *q <= '9' && layer <= UINT32_MAX; q++)
		layer = layer * 10 + (*q - '0');
	if (q == p || *q != '.' || (p[0] == '0' && q - p > 1))
		return -1;
	*suffix = q + 1;
	return layer;
}

/* The layer tensor named by suffix, or NULL. */
static const struct ld_layer_tensor *ld_layer_tensor_of(const char *suffix)
{
	for (size_t i = 0; i < HR_ARRAY_SIZE(ld_layer_tensors); i++)
		if (strcmp(suffix, ld_layer_tensors[i].suffix) == 0)
			return &ld_layer_tensors[i];
	return NULL;
}

/*
 * A tensor under "model.layers." must be one the architecture uses, of a
 * layer that exists: anything else means config and weights disagree.
 */
static int ld_check_layer_name(const struct loader *l, const struct ld_shard *s, const char *name)
{
	static const char rot[] = "rotary_emb.inv_freq";
	const struct model_config *cfg = &l->m->cfg;
	const char *suffix;
	char esc[MODEL_ESC_MAX];
	const struct ld_layer_tensor *lt;
	int64_t layer;
	size_t n = strlen(name);

	if (strncmp(name, LD_LAYERS, sizeof(LD_LAYERS) - 1) != 0)
		return 0;
	if (n >= sizeof(rot) - 1 && strcmp(name + n - (sizeof(rot) - 1), rot) == 0)
		return 0;
	layer = ld_layer_of(name, &suffix);
	if (layer < 0)
		goto unexpected;
	if (layer >= cfg->n_layers)
		return ld_fail(l, -EINVAL, "%s: tensor '%s' is for layer %lld but num_hidden_layers is %u",
			       s->file, model__esc(esc, sizeof(esc), name), (long long)layer,
			       cfg->n_layers);
	lt = ld_layer_tensor_of(suffix);
	if (lt && (!lt->bias || cfg->qkv_bias))
		return 0;
unexpected:
	return ld_fail(l, -EINVAL, "%s: unexpected tensor '%s' for %s", s->file,
		       model__esc(esc, sizeof(esc), name), cfg->arch_name);
}

static int ld_check_names(const struct loader *l)
{
	uint32_t i, j;
	int r;

	for (i = 0; i < l->n_shards; i++)
		for (j = 0; j < l->shards[i].st.n_tensors; j++) {
			r = ld_check_layer_name(l, &l->shards[i], l->shards[i].st.tensors[j].name);
			if (r < 0)
				return r;
		}
	return 0;
}

static int ld_weights(struct loader *l)
{
	struct model *m = l->m;
	const struct model_config *cfg = &m->cfg;
	char name[96];
	uint32_t i;
	size_t k;
	int r;

	r = ld_tensor(l, LD_EMBED, D_VOCAB, D_HIDDEN, false, &m->embed);
	if (r < 0)
		return r;
	for (i = 0; i < cfg->n_layers; i++)
		for (k = 0; k < HR_ARRAY_SIZE(ld_layer_tensors); k++) {
			const struct ld_layer_tensor *lt = &ld_layer_tensors[k];

			if (lt->bias && !cfg->qkv_bias)
				continue;
			snprintf(name, sizeof(name), "model.layers.%u.%s", i, lt->suffix);
			r = ld_tensor(l, name, lt->rows, lt->cols, false,
				      (void **)((char *)&m->layers[i] + lt->off));
			if (r < 0)
				return r;
		}
	r = ld_tensor(l, LD_NORM, D_HIDDEN, D_NONE, false, &m->final_norm);
	if (r < 0)
		return r;
	/* Tied: lm_head is the embedding, unless the file carries its own copy. */
	return ld_tensor(l, LD_HEAD, D_VOCAB, D_HIDDEN, cfg->tie_word_embeddings,
			 &m->lm_head);
}

/* After the weights are resident (a streamed load fills the pointers only
 * then): a tied model's LM head is its embedding. */
static int ld_tie(struct loader *l)
{
	if (!l->m->lm_head)
		l->m->lm_head = l->m->embed;
	return l->m->lm_head ? 0 : ld_fail(l, -EINVAL, "%s: no embedding for the LM head", l->index_file);
}

static int ld_inv_freq(struct loader *l)
{
	struct model *m = l->m;
	struct kern_backend *be = l->be;
	size_t n = m->cfg.head_dim / 2;
	float *host = malloc(n * sizeof(float));
	int r;

	if (!host)
		return ld_fail(l, -ENOMEM, "out of memory");
	model_rope_inv_freq(&m->cfg, host);
	m->inv_freq = be->ops->alloc(be, n * sizeof(float));
	if (!m->inv_freq) {
		r = errno > 0 ? -errno : -ENOMEM;
		ld_fail(l, r, "rope inv_freq: backend allocation failed: %s", strerror(-r));
		goto out;
	}
	r = be->ops->upload(be, m->inv_freq, host, n * sizeof(float));
	if (r < 0)
		ld_fail(l, r, "rope inv_freq: upload failed: %s", strerror(-r));
out:
	free(host);
	return r;
}

static int ld_config(struct loader *l)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r;

	r = ld_read_file(l, CONFIG_FILE, CONFIG_MAX, &text, &len);
	if (r < 0)
		return r;
	r = model_config_parse(text, len, &l->m->cfg, l->err, l->errlen);
	if (r < 0)
		return r;
	XXH3_64bits_update(l->xxh, text, len);
	l->m->layers = calloc(l->m->cfg.n_layers, sizeof(*l->m->layers));
	if (!l->m->layers)
		return ld_fail(l, -ENOMEM, "out of memory");
	return 0;
}

struct model *model_load(const char *dir, struct kern_backend *be, char *err, size_t errlen)
{
	return model_load_ex(dir, be, NULL, err, errlen);
}

struct model *model_load_ex(const char *dir, struct kern_backend *be,
			    const struct model_load_opts *opts, char *err, size_t errlen)
{
	static const struct model_load_opts defaults;
	struct loader l = { .dir = dir, .be = be, .err = err, .errlen = errlen,
			    .o = opts ? opts : &defaults };
	uint64_t t0 = hr_now_ns();
	struct model *m = NULL;
	uint32_t i;
	int r;

	if (err && errlen)
		err[0] = '\0';
	if (!dir || !be || !be->ops || !be->ops->weight_upload || !be->ops->alloc ||
	    !be->ops->upload || !be->ops->free) {
		errno = EINVAL;
		return NULL;
	}
	m = calloc(1, sizeof(*m));
	l.xxh = XXH3_createState();
	if (!m || !l.xxh || XXH3_64bits_reset(l.xxh) != XXH_OK) {
		r = ld_fail(&l, -ENOMEM, "out of memory");
		goto out;
	}
	l.m = m;
	m->be = be;
	l.stream = l.o->mode == MODEL_LOAD_STREAM ||
		   (l.o->mode == MODEL_LOAD_AUTO && be->ops->alloc_host && be->ops->free_host &&
		    be->ops->write_async);
	snprintf(m->load_how, sizeof(m->load_how), "mmap");
	m->dir = strdup(dir);
	if (!m->dir) {
		r = ld_fail(&l, -ENOMEM, "out of memory");
		goto out;
	}

	if ((r = ld_config(&l)) < 0 || (r = ld_open_files(&l)) < 0 ||
	    (r = ld_check_names(&l)) < 0 || (r = ld_weights(&l)) < 0 ||
	    (l.stream && (r = ld_stream(&l)) < 0) || (r = ld_tie(&l)) < 0 ||
	    (r = ld_inv_freq(&l)) < 0)
		goto out;

	m->fingerprint = XXH3_64bits_digest(l.xxh);
	m->load_seconds = (double)(hr_now_ns() - t0) / 1e9;
	if (err && errlen)
		err[0] = '\0'; /* drop the note about an absent index */
	r = 0;
out:
	for (i = 0; i < l.n_shards; i++)
		st_close(&l.shards[i].st);
	free(l.shards);
	free(l.entries);
	free(l.plan);
	cJSON_Delete(l.index_json);
	XXH3_freeState(l.xxh);
	if (r < 0) {
		model_free(m);
		errno = -r;
		return NULL;
	}
	return m;
}

const char *model_layer_tensor_suffix(unsigned i)
{
	return i < HR_ARRAY_SIZE(ld_layer_tensors) ? ld_layer_tensors[i].suffix : NULL;
}

void *model_tensor(const struct model *m, const char *name)
{
	const struct ld_layer_tensor *lt;
	const char *suffix;
	int64_t layer;

	if (strcmp(name, LD_EMBED) == 0)
		return m->embed;
	if (strcmp(name, LD_NORM) == 0)
		return m->final_norm;
	if (strcmp(name, LD_HEAD) == 0)
		return m->lm_head;
	layer = ld_layer_of(name, &suffix);
	if (layer < 0 || layer >= m->cfg.n_layers)
		return NULL;
	lt = ld_layer_tensor_of(suffix);
	return lt ? *(void *const *)((const char *)&m->layers[layer] + lt->off) : NULL;
}

void model_free(struct model *m)
{
	struct kern_backend *be;
	uint32_t i;
	size_t k;

	if (!m)
		return;
	be = m->be;
	if (be && be->ops && be->ops->free) {
		for (i = 0; m->layers && i < m->cfg.n_layers; i++)
			for (k = 0; k < HR_ARRAY_SIZE(ld_layer_tensors); k++)
				be->ops->free(be, *(void **)((char *)&m->layers[i] +
							    ld_layer_tensors[k].off));
		if (m->lm_head != m->embed)
			be->ops->free(be, m->lm_head);
		be->ops->free(be, m->embed);
		be->ops->free(be, m->final_norm);
		be->ops->free(be, m->inv_freq);
	}
	free(m->layers);
	free(m->dir);
	free(m);
}

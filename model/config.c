/* SPDX-License-Identifier: MIT */
/*
 * config.json of a Hugging Face model: the architecture and its dimensions,
 * read with the defaults of transformers' LlamaConfig, MistralConfig and
 * Qwen2Config and range-checked so that later size arithmetic cannot
 * overflow. Also the RoPE inverse frequencies, with llama3 scaling as in
 * transformers' _compute_llama3_parameters.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "hr_common.h"
#include "model.h"
#include "parse_pvt.h"

#define CFG_MAX_DIM (1u << 20)
#define CFG_MAX_VOCAB (1u << 22)
#define CFG_MAX_LAYERS 1024u

static const struct {
	const char *name;
	const char *model_type; /* used when "architectures" is absent */
	enum model_arch arch;
	uint32_t max_pos;       /* transformers' default max_position_embeddings */
} cfg_archs[] = {
	{ "LlamaForCausalLM", "llama", MODEL_ARCH_LLAMA, 2048 },
	{ "MistralForCausalLM", "mistral", MODEL_ARCH_MISTRAL, 4096 * 32 },
	{ "Qwen2ForCausalLM", "qwen2", MODEL_ARCH_QWEN2, 32768 },
};

struct cfg_ctx {
	const cJSON *root;
	char *err;
	size_t errlen;
};

hr_printf_fmt(2, 3) static int cfg_fail(const struct cfg_ctx *c, const char *fmt, ...)
{
	va_list ap;
	int o;

	if (!c->err || c->errlen == 0)
		return -EINVAL;
	o = snprintf(c->err, c->errlen, "config.json: ");
	if (o >= 0 && (size_t)o < c->errlen) {
		va_start(ap, fmt);
		vsnprintf(c->err + o, c->errlen - (size_t)o, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* The item for key in obj, NULL when absent or JSON null. */
static const cJSON *cfg_get(const cJSON *obj, const char *key)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsNull(it) ? NULL : it;
}

/*
 * Integer key in [min, max]. Absent or null: def when !required, else an
 * error. Wrong type or out of range: an error naming the key.
 */
static int cfg_uint(const struct cfg_ctx *c, const cJSON *obj, const char *key, bool required,
		    uint32_t def, uint32_t min, uint32_t max, uint32_t *ret)
{
	const cJSON *it = cfg_get(obj, key);
	uint64_t v;

	if (!it) {
		if (required)
			return cfg_fail(c, "missing '%s'", key);
		*ret = def;
		return 0;
	}
	if (!cJSON_IsNumber(it))
		return cfg_fail(c, "'%s' is %s, not an integer", key, model__json_type(it));
	if (!model__json_uint(it, UINT32_MAX, &v) || v < min || v > max)
		return cfg_fail(c, "'%s' is %.17g, not an integer in [%u, %u]", key, it->valuedouble,
				min, max);
	*ret = (uint32_t)v;
	return 0;
}

/* Positive finite number key, at most max; absent or null: def. */
static int cfg_float(const struct cfg_ctx *c, const cJSON *obj, const char *key, bool required,
		     double def, double max, float *ret)
{
	const cJSON *it = cfg_get(obj, key);
	double d;

	if (!it) {
		if (required)
			return cfg_fail(c, "missing '%s'", key);
		*ret = (float)def;
		return 0;
	}
	if (!cJSON_IsNumber(it))
		return cfg_fail(c, "'%s' is %s, not a number", key, model__json_type(it));
	d = it->valuedouble;
	if (!(d > 0.0 && d <= max) || (float)d <= 0.0f)
		return cfg_fail(c, "'%s' is %.17g, not a number in (0, %g]", key, d, max);
	*ret = (float)d;
	return 0;
}

static int cfg_bool(const struct cfg_ctx *c, const char *key, bool def, bool *ret)
{
	const cJSON *it = cfg_get(c->root, key);

	if (!it) {
		*ret = def;
		return 0;
	}
	if (!cJSON_IsBool(it))
		return cfg_fail(c, "'%s' is %s, not a boolean", key, model__json_type(it));
	*ret = cJSON_IsTrue(it);
	return 0;
}

static int cfg_arch(const struct cfg_ctx *c, struct model_config *cfg, uint32_t *ret_max_pos)
{
	const cJSON *archs = cfg_get(c->root, "architectures");
	const cJSON *mt = cfg_get(c->root, "model_type");
	char esc[MODEL_ESC_MAX];
	const char *name;
	size_t i;

	if (archs) {
		if (!cJSON_IsArray(archs) || !cJSON_IsString(archs->child))
			return cfg_fail(c, "'architectures' is %s, not a list of names",
					cJSON_IsArray(archs) ? "an empty or non-string list"
							     : model__json_type(archs));
		name = archs->child->valuestring;
		for (i = 0; i < HR_ARRAY_SIZE(cfg_archs); i++)
			if (strcmp(name, cfg_archs[i].name) == 0)
				goto found;
		return cfg_fail(c, "unsupported architecture '%s'", model__esc(esc, sizeof(esc), name));
	}
	if (!mt)
		return cfg_fail(c, "missing 'architectures'");
	if (!cJSON_IsString(mt))
		return cfg_fail(c, "'model_type' is %s, not a string", model__json_type(mt));
	for (i = 0; i < HR_ARRAY_SIZE(cfg_archs); i++)
		if (strcmp(mt->valuestring, cfg_archs[i].model_type) == 0)
			goto found;
	return cfg_fail(c, "unsupported model_type '%s'",
			model__esc(esc, sizeof(esc), mt->valuestring));
found:
	cfg->arch = cfg_archs[i].arch;
	snprintf(cfg->arch_name, sizeof(cfg->arch_name), "%s", cfg_archs[i].name);
	*ret_max_pos = cfg_archs[i].max_pos;
	return 0;
}

static int cfg_dims(const struct cfg_ctx *c, struct model_config *cfg, uint32_t def_max_pos)
{
	const cJSON *r = c->root;
	int e;

	if ((e = cfg_uint(c, r, "vocab_size", true, 0, 1, CFG_MAX_VOCAB, &cfg->vocab_size)) < 0 ||
	    (e = cfg_uint(c, r, "hidden_size", true, 0, 1, CFG_MAX_DIM, &cfg->hidden_size)) < 0 ||
	    (e = cfg_uint(c, r, "intermediate_size", true, 0, 1, CFG_MAX_DIM,
			  &cfg->intermediate_size)) < 0 ||
	    (e = cfg_uint(c, r, "num_hidden_layers", true, 0, 1, CFG_MAX_LAYERS, &cfg->n_layers)) < 0 ||
	    (e = cfg_uint(c, r, "num_attention_heads", true, 0, 1, CFG_MAX_DIM, &cfg->n_heads)) < 0 ||
	    (e = cfg_uint(c, r, "num_key_value_heads", false, cfg->n_heads, 1, CFG_MAX_DIM,
			  &cfg->n_kv_heads)) < 0 ||
	    (e = cfg_uint(c, r, "head_dim", false, 0, 1, CFG_MAX_DIM, &cfg->head_dim)) < 0 ||
	    (e = cfg_uint(c, r, "max_position_embeddings", false, def_max_pos, 1, CFG_MAX_DIM,
			  &cfg->max_position_embeddings)) < 0)
		return e;

	if (cfg->n_heads % cfg->n_kv_heads != 0)
		return cfg_fail(c, "num_attention_heads (%u) is not a multiple of num_key_value_heads (%u)",
				cfg->n_heads, cfg->n_kv_heads);
	if (cfg->head_dim == 0) {
		if (cfg->hidden_size % cfg->n_heads != 0)
			return cfg_fail(c, "hidden_size (%u) is not a multiple of num_attention_heads (%u)",
					cfg->hidden_size, cfg->n_heads);
		cfg->head_dim = cfg->hidden_size / cfg->n_heads;
	}
	if (cfg->head_dim % 2 != 0)
		return cfg_fail(c, "head_dim (%u) is odd; rotary embeddings need it even",
				cfg->head_dim);
	if ((uint64_t)cfg->n_heads * cfg->head_dim > CFG_MAX_DIM)
		return cfg_fail(c, "num_attention_heads x head_dim (%u x %u) is over %u", cfg->n_heads,
				cfg->head_dim, CFG_MAX_DIM);

	if ((e = cfg_float(c, r, "rms_norm_eps", false, 1e-6, 1.0, &cfg->rms_norm_eps)) < 0)
		return e;
	return 0;
}

static int cfg_dtype(const struct cfg_ctx *c, struct model_config *cfg)
{
	static const struct {
		const char *name;
		enum kern_dtype dt;
	} names[] = {
		{ "float32", KERN_F32 },
		{ "bfloat16", KERN_BF16 },
		{ "float16", KERN_F16 },
	};
	const char *key = "torch_dtype";
	const cJSON *it = cfg_get(c->root, key);
	char esc[MODEL_ESC_MAX];
	size_t i;

	if (!it) {
		key = "dtype"; /* transformers >= 4.56 writes "dtype" */
		it = cfg_get(c->root, key);
	}
	if (!it) {
		cfg->torch_dtype = KERN_F32; /* transformers' default */
		return 0;
	}
	if (!cJSON_IsString(it))
		return cfg_fail(c, "'%s' is %s, not a string", key, model__json_type(it));
	for (i = 0; i < HR_ARRAY_SIZE(names); i++)
		if (strcmp(it->valuestring, names[i].name) == 0) {
			cfg->torch_dtype = names[i].dt;
			return 0;
		}
	return cfg_fail(c, "unsupported %s '%s'", key, model__esc(esc, sizeof(esc), it->valuestring));
}

/* Token id: an integer, a list whose first element is used, or absent/null (-1). */
static int cfg_token(const struct cfg_ctx *c, const char *key, int32_t *ret)
{
	const cJSON *it = cfg_get(c->root, key);
	uint64_t v;

	*ret = -1;
	if (cJSON_IsArray(it))
		it = it->child; /* an empty list is as good as absent */
	if (!it || cJSON_IsNull(it))
		return 0;
	/* Not checked against vocab_size: some checkpoints carry ids of a
	 * larger tokenizer, and the engine checks ids before use. */
	if (!model__json_uint(it, INT32_MAX, &v))
		return cfg_fail(c, "'%s' is %s, not a token id", key,
				cJSON_IsNumber(it) ? "out of range" : model__json_type(it));
	*ret = (int32_t)v;
	return 0;
}

/* rope_scaling (or transformers 5's rope_parameters): none or llama3. */
static int cfg_rope(const struct cfg_ctx *c, struct model_config *cfg)
{
	const char *key = "rope_scaling";
	const cJSON *rs = cfg_get(c->root, key), *type, *params;
	char esc[MODEL_ESC_MAX];
	int e;

	params = cfg_get(c->root, "rope_parameters");
	if (params && !cJSON_IsObject(params))
		return cfg_fail(c, "'rope_parameters' is %s, not an object", model__json_type(params));
	/* rope_theta: top level, else inside rope_parameters, else 10000 */
	if (cfg_get(c->root, "rope_theta") || !params)
		e = cfg_float(c, c->root, "rope_theta", false, 10000.0, 1e15, &cfg->rope_theta);
	else
		e = cfg_float(c, params, "rope_theta", false, 10000.0, 1e15, &cfg->rope_theta);
	if (e < 0)
		return e;

	cfg->rope_scaling = MODEL_ROPE_NONE;
	if (!rs && params) {
		key = "rope_parameters";
		rs = params;
	}
	if (!rs)
		return 0;
	if (!cJSON_IsObject(rs))
		return cfg_fail(c, "'%s' is %s, not an object", key, model__json_type(rs));
	type = cfg_get(rs, "rope_type");
	if (!type)
		type = cfg_get(rs, "type");
	if (!type)
		return cfg_fail(c, "'%s' has no 'rope_type'", key);
	if (!cJSON_IsString(type))
		return cfg_fail(c, "%s 'rope_type' is %s, not a string", key, model__json_type(type));
	if (strcmp(type->valuestring, "default") == 0)
		return 0;
	if (strcmp(type->valuestring, "llama3") != 0)
		return cfg_fail(c, "unsupported %s type '%s'", key,
				model__esc(esc, sizeof(esc), type->valuestring));

	if ((e = cfg_float(c, rs, "factor", true, 0, 1e6, &cfg->rope_factor)) < 0 ||
	    (e = cfg_float(c, rs, "low_freq_factor", true, 0, 1e6, &cfg->rope_low_freq_factor)) < 0 ||
	    (e = cfg_float(c, rs, "high_freq_factor", true, 0, 1e6, &cfg->rope_high_freq_factor)) < 0 ||
	    (e = cfg_uint(c, rs, "original_max_position_embeddings", true, 0, 1, CFG_MAX_DIM,
			  &cfg->rope_original_max_pos)) < 0)
		return e;
	if (cfg->rope_factor < 1.0f)
		return cfg_fail(c, "%s factor (%g) is below 1", key, cfg->rope_factor);
	if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
		return cfg_fail(c, "%s high_freq_factor (%g) is not above low_freq_factor (%g)", key,
				cfg->rope_high_freq_factor, cfg->rope_low_freq_factor);
	cfg->rope_scaling = MODEL_ROPE_LLAMA3;
	return 0;
}

static int cfg_attention(const struct cfg_ctx *c, struct model_config *cfg)
{
	bool b = false;
	int e;

	cfg->sliding_window = 0;
	switch (cfg->arch) {
	case MODEL_ARCH_LLAMA:
		if ((e = cfg_bool(c, "attention_bias", false, &cfg->qkv_bias)) < 0 ||
		    (e = cfg_bool(c, "mlp_bias", false, &b)) < 0)
			return e;
		if (b)
			return cfg_fail(c, "'mlp_bias': true is not supported");
		return 0;
	case MODEL_ARCH_MISTRAL:
		cfg->qkv_bias = false;
		return cfg_uint(c, c->root, "sliding_window", false, 0, 1, 1u << 30,
				&cfg->sliding_window);
	case MODEL_ARCH_QWEN2:
		cfg->qkv_bias = true;
		if ((e = cfg_bool(c, "use_sliding_window", false, &b)) < 0)
			return e;
		if (!b)
			return 0;
		return cfg_uint(c, c->root, "sliding_window", false, 0, 1, 1u << 30,
				&cfg->sliding_window);
	}
	return cfg_fail(c, "internal: unknown architecture");
}

int model_config_parse(const char *json, size_t len, struct model_config *ret, char *err,
		       size_t errlen)
{
	struct cfg_ctx c = { .err = err, .errlen = errlen };
	struct model_config cfg = { 0 };
	uint32_t def_max_pos = 0;
	char why[256];
	cJSON *root;
	int r;

	if ((!json && len) || !ret)
		return -EINVAL;
	root = model__json_parse(json ? json : "", len, why, sizeof(why));
	if (!root) {
		r = -errno;
		cfg_fail(&c, "%s", why);
		return r;
	}
	c.root = root;
	if (!cJSON_IsObject(root)) {
		r = cfg_fail(&c, "top level is %s, not an object", model__json_type(root));
		goto out;
	}
	if ((r = cfg_arch(&c, &cfg, &def_max_pos)) < 0 || (r = cfg_dims(&c, &cfg, def_max_pos)) < 0 ||
	    (r = cfg_rope(&c, &cfg)) < 0 || (r = cfg_attention(&c, &cfg)) < 0 ||
	    (r = cfg_bool(&c, "tie_word_embeddings", false, &cfg.tie_word_embeddings)) < 0 ||
	    (r = cfg_dtype(&c, &cfg)) < 0 || (r = cfg_token(&c, "bos_token_id", &cfg.bos_token_id)) < 0 ||
	    (r = cfg_token(&c, "eos_token_id", &cfg.eos_token_id)) < 0)
		goto out;
	*ret = cfg;
out:
	cJSON_Delete(root);
	return r;
}

void model_rope_inv_freq(const struct model_config *cfg, float *out)
{
	uint32_t half = cfg->head_dim / 2, i;
	double lo_wl = 0, hi_wl = 0;

	if (cfg->rope_scaling == MODEL_ROPE_LLAMA3) {
		lo_wl = cfg->rope_original_max_pos / (double)cfg->rope_low_freq_factor;
		hi_wl = cfg->rope_original_max_pos / (double)cfg->rope_high_freq_factor;
	}
	for (i = 0; i < half; i++) {
		double inv = pow((double)cfg->rope_theta, -(2.0 * i) / cfg->head_dim);

		if (cfg->rope_scaling == MODEL_ROPE_LLAMA3) {
			double factor = cfg->rope_factor, wl = 2.0 * M_PI / inv;

			if (wl > lo_wl) {
				inv /= factor; /* low frequencies: stretched by factor */
			} else if (wl >= hi_wl) {
				/* medium: interpolate between scaled and unscaled */
				double smooth = (cfg->rope_original_max_pos / wl -
						 cfg->rope_low_freq_factor) /
						(cfg->rope_high_freq_factor -
						 cfg->rope_low_freq_factor);

				inv = (1.0 - smooth) * inv / factor + smooth * inv;
			}
			/* high frequencies (wl < hi_wl): unchanged */
		}
		out[i] = (float)inv;
	}
}

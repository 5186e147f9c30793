/* SPDX-License-Identifier: MIT */
/*
 * model_config_parse on real-world shaped configs of each architecture
 * (Llama 3.1 with llama3 rope scaling, Mistral, Qwen2) and on malformed ones;
 * model_rope_inv_freq against a double-precision reference written here from
 * transformers' _compute_llama3_parameters.
 */
#include "mt.h"

#include <math.h>

#include "model.h"

static const char llama31[] =
	"{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
	" \"attention_dropout\": 0.0, \"bos_token_id\": 128000,"
	" \"eos_token_id\": [128001, 128008, 128009], \"hidden_act\": \"silu\","
	" \"hidden_size\": 4096, \"initializer_range\": 0.02, \"intermediate_size\": 14336,"
	" \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\","
	" \"num_attention_heads\": 32, \"num_hidden_layers\": 32, \"num_key_value_heads\": 8,"
	" \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 8.0,"
	" \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
	" \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
	" \"rope_theta\": 500000.0, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
	" \"transformers_version\": \"4.43.0.dev0\", \"use_cache\": true, \"vocab_size\": 128256}";

static const char mistral[] =
	"{\"architectures\": [\"MistralForCausalLM\"], \"bos_token_id\": 1, \"eos_token_id\": 2,"
	" \"hidden_act\": \"silu\", \"hidden_size\": 4096, \"initializer_range\": 0.02,"
	" \"intermediate_size\": 14336, \"max_position_embeddings\": 32768,"
	" \"model_type\": \"mistral\", \"num_attention_heads\": 32, \"num_hidden_layers\": 32,"
	" \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0,"
	" \"sliding_window\": 4096, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
	" \"use_cache\": true, \"vocab_size\": 32000}";

static const char qwen2[] =
	"{\"architectures\": [\"Qwen2ForCausalLM\"], \"attention_dropout\": 0.0,"
	" \"bos_token_id\": 151643, \"eos_token_id\": 151645, \"hidden_act\": \"silu\","
	" \"hidden_size\": 896, \"initializer_range\": 0.02, \"intermediate_size\": 4864,"
	" \"max_position_embeddings\": 32768, \"max_window_layers\": 21, \"model_type\": \"qwen2\","
	" \"num_attention_heads\": 14, \"num_hidden_layers\": 24, \"num_key_value_heads\": 2,"
	" \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"sliding_window\": 32768,"
	" \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\","
	" \"transformers_version\": \"4.43.1\", \"use_cache\": true, \"use_sliding_window\": false,"
	" \"vocab_size\": 151936}";

/* A minimal llama config with one key replaced (or added): "%s" is spliced in. */
static const char tiny_fmt[] =
	"{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 64, \"hidden_size\": 32,"
	" \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
	" %s \"rms_norm_eps\": 1e-5}";

static int parse(const char *json, struct model_config *cfg, char *err, size_t errlen)
{
	return model_config_parse(json, strlen(json), cfg, err, errlen);
}

/* transformers' llama3 scaling, in double, straight from the Python. */
static double ref_inv_freq(const struct model_config *c, uint32_t i)
{
	double inv = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
	double old = c->rope_original_max_pos, lf = c->rope_low_freq_factor,
	       hf = c->rope_high_freq_factor, f = c->rope_factor;
	double low_wl = old / lf, high_wl = old / hf, wl = 2 * M_PI / inv, llama, smooth;

	if (c->rope_scaling != MODEL_ROPE_LLAMA3)
		return inv;
	llama = wl > low_wl ? inv / f : inv;
	smooth = (old / wl - lf) / (hf - lf);
	if (!(wl < high_wl) && !(wl > low_wl))
		llama = (1 - smooth) * llama / f + smooth * llama;
	return llama;
}

static void check_inv_freq(const struct model_config *c)
{
	uint32_t i, half = c->head_dim / 2;
	float *out = malloc(half * sizeof(float));
	int n_low = 0, n_mid = 0, n_high = 0;

	model_rope_inv_freq(c, out);
	for (i = 0; i < half; i++) {
		double ref = ref_inv_freq(c, i), unscaled = 1.0 / pow(c->rope_theta, 2.0 * i / c->head_dim);

		if (fabs(out[i] - ref) > 1e-6 * fabs(ref) + 1e-30) {
			fprintf(stderr, "inv_freq[%u] = %.9g, reference %.9g\n", i, out[i], ref);
			mt_failures++;
		}
		if (fabs(ref - unscaled) < 1e-12 * unscaled)
			n_high++;
		else if (fabs(ref - unscaled / c->rope_factor) < 1e-12 * unscaled)
			n_low++;
		else
			n_mid++;
	}
	/* Llama 3.1's shape puts frequencies in all three bands. */
	if (c->rope_scaling == MODEL_ROPE_LLAMA3)
		CHECK(n_low > 0 && n_mid > 0 && n_high > 0);
	free(out);
}

static void test_good(void)
{
	struct model_config c;
	char err[256] = "", buf[1024];

	CHECK(parse(llama31, &c, err, sizeof(err)) == 0);
	CHECK(c.arch == MODEL_ARCH_LLAMA && strcmp(c.arch_name, "LlamaForCausalLM") == 0);
	CHECK(c.vocab_size == 128256 && c.hidden_size == 4096 && c.intermediate_size == 14336);
	CHECK(c.n_layers == 32 && c.n_heads == 32 && c.n_kv_heads == 8 && c.head_dim == 128);
	CHECK(c.max_position_embeddings == 131072 && c.sliding_window == 0);
	CHECK(c.rms_norm_eps == 1e-5f && c.rope_theta == 500000.0f);
	CHECK(!c.tie_word_embeddings && !c.qkv_bias && c.torch_dtype == KERN_BF16);
	CHECK(c.rope_scaling == MODEL_ROPE_LLAMA3 && c.rope_factor == 8.0f &&
	      c.rope_low_freq_factor == 1.0f && c.rope_high_freq_factor == 4.0f &&
	      c.rope_original_max_pos == 8192);
	CHECK(c.bos_token_id == 128000 && c.eos_token_id == 128001);
	check_inv_freq(&c);

	CHECK(parse(mistral, &c, err, sizeof(err)) == 0);
	CHECK(c.arch == MODEL_ARCH_MISTRAL && c.sliding_window == 4096 && !c.qkv_bias);
	CHECK(c.rope_scaling == MODEL_ROPE_NONE && c.rope_theta == 10000.0f);
	CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && c.vocab_size == 32000);
	check_inv_freq(&c);

	CHECK(parse(qwen2, &c, err, sizeof(err)) == 0);
	CHECK(c.arch == MODEL_ARCH_QWEN2 && c.qkv_bias && c.tie_word_embeddings);
	CHECK(c.head_dim == 64 && c.n_heads == 14 && c.n_kv_heads == 2);
	CHECK(c.sliding_window == 0); /* use_sliding_window is false */
	CHECK(c.rms_norm_eps == 1e-6f && c.rope_theta == 1e6f && c.eos_token_id == 151645);
	check_inv_freq(&c);

	/* defaults of a minimal config; explicit null head_dim; "dtype" key */
	snprintf(buf, sizeof(buf), tiny_fmt, "\"head_dim\": null, \"dtype\": \"float16\",");
	CHECK(parse(buf, &c, err, sizeof(err)) == 0);
	CHECK(c.n_kv_heads == 4 && c.head_dim == 8 && c.rope_theta == 10000.0f);
	CHECK(c.max_position_embeddings == 2048 && c.torch_dtype == KERN_F16);
	CHECK(c.bos_token_id == -1 && c.eos_token_id == -1 && !c.tie_word_embeddings);
	/* explicit head_dim different from hidden / heads */
	snprintf(buf, sizeof(buf), tiny_fmt, "\"head_dim\": 16, \"num_key_value_heads\": 2,");
	CHECK(parse(buf, &c, err, sizeof(err)) == 0 && c.head_dim == 16 && c.n_kv_heads == 2);
	/* attention_bias on llama means q/k/v biases */
	snprintf(buf, sizeof(buf), tiny_fmt, "\"attention_bias\": true,");
	CHECK(parse(buf, &c, err, sizeof(err)) == 0 && c.qkv_bias);
	/* rope_scaling: null, "default", old "type" key */
	snprintf(buf, sizeof(buf), tiny_fmt, "\"rope_scaling\": null,");
	CHECK(parse(buf, &c, err, sizeof(err)) == 0 && c.rope_scaling == MODEL_ROPE_NONE);
	snprintf(buf, sizeof(buf), tiny_fmt, "\"rope_scaling\": {\"rope_type\": \"default\"},");
	CHECK(parse(buf, &c, err, sizeof(err)) == 0 && c.rope_scaling == MODEL_ROPE_NONE);
	snprintf(buf, sizeof(buf), tiny_fmt,
		 "\"rope_scaling\": {\"type\": \"llama3\", \"factor\": 32, \"low_freq_factor\": 1,"
		 " \"high_freq_factor\": 4, \"original_max_position_embeddings\": 64},");
	CHECK(parse(buf, &c, err, sizeof(err)) == 0 && c.rope_scaling == MODEL_ROPE_LLAMA3 &&
	      c.rope_factor == 32.0f);
	check_inv_freq(&c);
	/* transformers 5: rope_parameters carries rope_theta */
	snprintf(buf, sizeof(buf), tiny_fmt,
		 "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 250000.0},");
	CHECK(parse(buf, &c, err, sizeof(err)) == 0 && c.rope_theta == 250000.0f &&
	      c.rope_scaling == MODEL_ROPE_NONE);
	/* architectures absent: model_type */
	CHECK(parse("{\"model_type\": \"qwen2\", \"vocab_size\": 64, \"hidden_size\": 32,"
		    " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
		    " \"use_sliding_window\": true, \"sliding_window\": 128, \"eos_token_id\": []}",
		    &c, err, sizeof(err)) == 0);
	CHECK(c.arch == MODEL_ARCH_QWEN2 && c.qkv_bias && c.sliding_window == 128 &&
	      c.eos_token_id == -1);
	/* mistral with sliding_window null */
	CHECK(parse("{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 64,"
		    " \"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 2,"
		    " \"num_attention_heads\": 4, \"sliding_window\": null}", &c, err, sizeof(err)) == 0);
	CHECK(c.sliding_window == 0 && c.max_position_embeddings == 131072);
	/* not NUL-terminated: len is honoured */
	memcpy(buf, qwen2, sizeof(qwen2) - 1);
	memcpy(buf + sizeof(qwen2) - 1, "garbage", 7);
	CHECK(model_config_parse(buf, sizeof(qwen2) - 1, &c, err, sizeof(err)) == 0);
}

/* The config with `extra` spliced in must fail with every word in its message. */
#define BAD(extra, ...)                                                                   \
	do {                                                                              \
		char _b[2048], _e[256] = "";                                              \
		struct model_config _c, _before;                                          \
		memset(&_c, 0x5a, sizeof(_c));                                            \
		_before = _c;                                                             \
		snprintf(_b, sizeof(_b), tiny_fmt, extra);                                \
		CHECK(parse(_b, &_c, _e, sizeof(_e)) == -EINVAL);                         \
		CHECK(memcmp(&_c, &_before, sizeof(_c)) == 0);                            \
		CHECK_MSG(_e, "config.json: ", __VA_ARGS__);                              \
	} while (0)

#define BAD_RAW(json, ...)                                                                \
	do {                                                                              \
		char _e[256] = "";                                                        \
		struct model_config _c;                                                   \
		CHECK(parse(json, &_c, _e, sizeof(_e)) == -EINVAL);                       \
		CHECK_MSG(_e, "config.json: ", __VA_ARGS__);                              \
	} while (0)

static void test_bad(void)
{
	BAD_RAW("", "not valid JSON");
	BAD_RAW("{\"vocab_size\": 64", "not valid JSON");
	BAD_RAW("[1]", "not an object");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"]}", "missing 'vocab_size'");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 64}", "missing 'hidden_size'");
	BAD_RAW("{\"vocab_size\": 64}", "missing 'architectures'");
	BAD_RAW("{\"architectures\": [\"GPT2LMHeadModel\"]}", "unsupported architecture 'GPT2LMHeadModel'");
	BAD_RAW("{\"architectures\": []}", "'architectures'");
	BAD_RAW("{\"architectures\": \"LlamaForCausalLM\"}", "'architectures' is a string");
	BAD_RAW("{\"architectures\": [7]}", "'architectures'");
	BAD_RAW("{\"model_type\": \"gpt2\"}", "unsupported model_type 'gpt2'");
	BAD_RAW("{\"architectures\": [\"Llama\\nForCausalLM\"]}", "'Llama\\x0aForCausalLM'");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"architectures\": [\"X\"]}", "duplicate key");
	BAD_RAW("{\"a\": \"\xff\"}", "UTF-8");

	BAD("\"hidden_size\": 0,", "duplicate key 'hidden_size'"); /* spliced before the real one */
	BAD("\"num_key_value_heads\": 0,", "'num_key_value_heads' is 0");
	BAD("\"num_key_value_heads\": -2,", "'num_key_value_heads' is -2");
	BAD("\"num_key_value_heads\": 3,", "num_attention_heads (4) is not a multiple of num_key_value_heads (3)");
	BAD("\"num_key_value_heads\": 8,", "not a multiple");
	BAD("\"num_key_value_heads\": 2.5,", "'num_key_value_heads' is 2.5");
	BAD("\"num_key_value_heads\": \"2\",", "'num_key_value_heads' is a string");
	BAD("\"num_key_value_heads\": true,", "'num_key_value_heads' is a boolean");
	BAD("\"head_dim\": 7,", "head_dim (7)", "even");
	BAD("\"head_dim\": 1048576,", "num_attention_heads x head_dim");
	BAD("\"head_dim\": 2097152,", "'head_dim'");
	BAD("\"max_position_embeddings\": 0,", "'max_position_embeddings' is 0");
	BAD("\"rope_theta\": -1,", "'rope_theta'");
	BAD("\"rope_theta\": 0,", "'rope_theta'");
	BAD("\"rope_theta\": \"1e4\",", "'rope_theta' is a string");
	BAD("\"rope_theta\": 1e400,", "'rope_theta'");
	BAD("\"tie_word_embeddings\": 1,", "'tie_word_embeddings' is a number");
	BAD("\"attention_bias\": \"no\",", "'attention_bias' is a string");
	BAD("\"mlp_bias\": true,", "mlp_bias");
	BAD("\"torch_dtype\": \"float8_e4m3fn\",", "unsupported torch_dtype 'float8_e4m3fn'");
	BAD("\"torch_dtype\": 16,", "'torch_dtype' is a number");
	BAD("\"bos_token_id\": -1,", "'bos_token_id'");
	BAD("\"eos_token_id\": [\"2\"],", "'eos_token_id' is a string");
	BAD("\"eos_token_id\": 1e12,", "'eos_token_id' is out of range");
	BAD("\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0},", "unsupported rope_scaling type 'yarn'");
	BAD("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0},", "unsupported rope_scaling type 'linear'");
	BAD("\"rope_scaling\": {\"factor\": 4.0},", "'rope_scaling' has no 'rope_type'");
	BAD("\"rope_scaling\": 4,", "'rope_scaling' is a number");
	BAD("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0},", "missing 'low_freq_factor'");
	BAD("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 0.5, \"low_freq_factor\": 1,"
	    " \"high_freq_factor\": 4, \"original_max_position_embeddings\": 64},", "factor (0.5) is below 1");
	BAD("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4,"
	    " \"high_freq_factor\": 4, \"original_max_position_embeddings\": 64},", "high_freq_factor");
	BAD("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1,"
	    " \"high_freq_factor\": 4, \"original_max_position_embeddings\": 0},",
	    "'original_max_position_embeddings' is 0");
	BAD("\"rope_parameters\": [],", "'rope_parameters' is an array");
	BAD("\"rms_norm_eps\": 0,", "duplicate key");

	/* dims: zero, negative, float, absurd */
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 0}", "'vocab_size' is 0");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": -5}", "'vocab_size' is -5");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 64.5}", "'vocab_size' is 64.5");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 4194305}", "'vocab_size' is 4194305",
		"[1, 4194304]");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 1e300}", "'vocab_size'");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": null}", "missing 'vocab_size'");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": {}}", "'vocab_size' is an object");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 64, \"hidden_size\": 30,"
		" \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
		"hidden_size (30) is not a multiple of num_attention_heads (4)");
	BAD_RAW("{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 64, \"hidden_size\": 32,"
		" \"intermediate_size\": 48, \"num_hidden_layers\": 1025, \"num_attention_heads\": 4}",
		"'num_hidden_layers' is 1025");
	BAD_RAW("{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 64, \"hidden_size\": 32,"
		" \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
		" \"sliding_window\": 0}", "'sliding_window' is 0");
	BAD_RAW("{\"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": 64, \"hidden_size\": 32,"
		" \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
		" \"use_sliding_window\": \"yes\"}", "'use_sliding_window' is a string");

	/* contract edges */
	{
		struct model_config c;

		CHECK(model_config_parse(NULL, 0, &c, NULL, 0) == -EINVAL);
		CHECK(model_config_parse(qwen2, sizeof(qwen2) - 1, NULL, NULL, 0) == -EINVAL);
		CHECK(model_config_parse("{\0}", 3, &c, NULL, 0) == -EINVAL);
	}
}

int main(void)
{
	test_good();
	test_bad();
	return mt_done("test_config");
}

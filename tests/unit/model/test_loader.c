/* SPDX-License-Identifier: MIT */
/*
 * model_load on tiny model directories written here (F32, BF16, tied, Qwen2
 * with biases, sharded with an index, misaligned data) and on the committed
 * transformers fixtures, through a host-memory test backend: every weight
 * round-trips, tied embeddings alias, nothing leaks.
 */
#include "tiny_model.h"

#include "hearth_config.h"

static void test_good(void)
{
	struct tmodel tm;
	uint64_t fp_f32, fp_bf16, fp_single, fp_sharded, fp;
	const char *dir;
	long n_weights = 0;

	/* F32 llama, own lm_head, plus an ignored rotary buffer */
	gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
	add(&tm, KERN_F32, HD / 2, 0, "model.layers.%d.self_attn.rotary_emb.inv_freq", 1);
	dir = newdir("llama-f32");
	write_single(&tm, dir);
	fp_f32 = load_ok(&tm, dir, &n_weights);
	CHECK(n_weights == 1 + 2 * 9 + 2);
	/* the fingerprint is stable across loads */
	CHECK(load_ok(&tm, dir, NULL) == fp_f32);
	tm_free(&tm);

	/* BF16 llama, tied, no lm_head in the file */
	gen(&tm, "LlamaForCausalLM", KERN_BF16, true, false);
	dir = newdir("llama-bf16-tied");
	write_single(&tm, dir);
	fp_bf16 = load_ok(&tm, dir, NULL);
	CHECK(fp_bf16 != fp_f32);
	tm_free(&tm);

	/* tied, but the file carries lm_head anyway: it is used */
	gen(&tm, "LlamaForCausalLM", KERN_F32, true, true);
	dir = newdir("llama-tied-with-head");
	write_single(&tm, dir);
	load_ok(&tm, dir, NULL);
	tm_free(&tm);

	/* Qwen2 (q/k/v biases) single and sharded: same fingerprint */
	gen(&tm, "Qwen2ForCausalLM", KERN_BF16, true, false);
	dir = newdir("qwen2-single");
	write_single(&tm, dir);
	fp_single = load_ok(&tm, dir, &n_weights);
	CHECK(n_weights == 1 + 2 * 12 + 1);
	dir = newdir("qwen2-sharded");
	write_sharded(&tm, dir);
	fp_sharded = load_ok(&tm, dir, NULL);
	CHECK(fp_single == fp_sharded);
	tm_free(&tm);

	/* an unpadded header of odd length: every tensor misaligned in the map */
	gen(&tm, "LlamaForCausalLM", KERN_BF16, false, true);
	dir = newdir("llama-even-header");
	write_single(&tm, dir);
	fp = load_ok(&tm, dir, NULL);
	tm.odd_header = true;
	dir = newdir("llama-odd-header");
	write_single(&tm, dir);
	CHECK(load_ok(&tm, dir, NULL) == fp); /* padding is not part of the fingerprint */
	tm_free(&tm);

	/* mixed dtypes in one file are fine */
	gen(&tm, "MistralForCausalLM", KERN_F32, false, true);
	for (int i = 0; i < tm.n; i += 3) {
		tm.t[i].dt = KERN_BF16;
		for (uint64_t j = 0; j < tt_elems(&tm.t[i]); j++)
			tm.t[i].vals[j] = bf16_to_f32(f32_to_bf16(tm.t[i].vals[j]));
	}
	dir = newdir("mistral-mixed");
	write_single(&tm, dir);
	fp = load_ok(&tm, dir, NULL);
	CHECK(fp != 0);
	tm_free(&tm);
}

static void test_fixtures(void)
{
	static const struct {
		const char *name;
		enum model_arch arch;
		enum kern_dtype dtype;
		bool tie;
		uint32_t vocab, hidden, layers, heads, kv, hd;
	} fx[] = {
		{ "llama-tiny", MODEL_ARCH_LLAMA, KERN_F32, false, 512, 128, 2, 4, 2, 32 },
		{ "llama3-scaled", MODEL_ARCH_LLAMA, KERN_F32, true, 384, 128, 2, 2, 1, 64 },
		{ "mistral-tiny", MODEL_ARCH_MISTRAL, KERN_F32, false, 320, 64, 3, 4, 1, 16 },
		{ "qwen2-tiny", MODEL_ARCH_QWEN2, KERN_BF16, true, 448, 128, 2, 4, 2, 32 },
		{ "qwen2-untied", MODEL_ARCH_QWEN2, KERN_F32, false, 400, 64, 2, 4, 2, 16 },
	};

	for (size_t i = 0; i < sizeof(fx) / sizeof(fx[0]); i++) {
		char dir[512], err[512] = "";
		struct model *m;
		struct tb tb;

		snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/%s", HEARTH_SOURCE_ROOT, fx[i].name);
		if (access(dir, F_OK) < 0) {
			printf("fixture %s absent, not checked\n", fx[i].name);
			continue;
		}
		tb_init(&tb);
		m = model_load(dir, &tb.be, err, sizeof(err));
		if (!m) {
			fprintf(stderr, "fixture %s: %s\n", fx[i].name, err);
			mt_failures++;
			continue;
		}
		CHECK(m->cfg.arch == fx[i].arch && m->cfg.torch_dtype == fx[i].dtype);
		CHECK(m->cfg.tie_word_embeddings == fx[i].tie && (m->lm_head == m->embed) == fx[i].tie);
		CHECK(m->cfg.vocab_size == fx[i].vocab && m->cfg.hidden_size == fx[i].hidden &&
		      m->cfg.n_layers == fx[i].layers && m->cfg.n_heads == fx[i].heads &&
		      m->cfg.n_kv_heads == fx[i].kv && m->cfg.head_dim == fx[i].hd);
		CHECK(m->cfg.qkv_bias == (fx[i].arch == MODEL_ARCH_QWEN2));
		CHECK(m->cfg.sliding_window == 0 && tb.misaligned == 0);
		if (strcmp(fx[i].name, "llama3-scaled") == 0) {
			/* README: of the 32 frequencies 28 are scaled, 3 smoothed, 1 unchanged */
			int scaled = 0, smoothed = 0, same = 0;

			CHECK(m->cfg.rope_scaling == MODEL_ROPE_LLAMA3);
			for (uint32_t j = 0; j < m->cfg.head_dim / 2; j++) {
				double inv = pow(500000.0, -2.0 * j / m->cfg.head_dim);
				double got = m->inv_freq[j];

				if (fabs(got - inv) <= 1e-6 * inv)
					same++;
				else if (fabs(got - inv / 8) <= 1e-6 * inv)
					scaled++;
				else
					smoothed++;
			}
			CHECK(scaled == 28 && smoothed == 3 && same == 1);
		}
		model_free(m);
		CHECK(tb.live == 0);
	}
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/hearth-test-loader-XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	test_good();
	test_fixtures();
	if (!mt_failures)
		mt_rmtree(root);
	else
		fprintf(stderr, "left %s for inspection\n", root);
	return mt_done("test_loader");
}

/* SPDX-License-Identifier: MIT */
/*
 * model_load on broken model directories: missing or misshapen tensors,
 * stray layer tensors, bad config or index files, missing shards, shard
 * names that leave the directory, and a backend failing at every upload.
 * Each fails with errno, a message naming file, tensor and reason, and no
 * backend memory left allocated.
 */
#include "tiny_model.h"

static void test_bad_tensors(void)
{
	struct tmodel tm;
	const char *dir;

	gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
	tm_find(&tm, "model.layers.1.mlp.up_proj.weight")->skip = true;
	dir = newdir("missing");
	write_single(&tm, dir);
	LOAD_FAIL(dir, EINVAL, "model.safetensors: missing tensor 'model.layers.1.mlp.up_proj.weight'");
	tm_free(&tm);

	gen(&tm, "LlamaForCausalLM", KERN_F32, false, false);
	dir = newdir("untied-no-head");
	write_single(&tm, dir);
	LOAD_FAIL(dir, EINVAL, "missing tensor 'lm_head.weight'");
	tm_free(&tm);

	gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
	tm_find(&tm, "model.layers.0.self_attn.q_proj.weight")->shape[1] = HIDDEN - 1;
	dir = newdir("wrong-shape");
	write_single(&tm, dir);
	LOAD_FAIL(dir, EINVAL,
		  "model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight': expected shape "
		  "[16, 16] but found [16, 15]");
	tm_free(&tm);

	gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
	tm_find(&tm, "model.norm.weight")->n_dims = 2;
	tm_find(&tm, "model.norm.weight")->shape[1] = 1;
	dir = newdir("wrong-rank");
	write_single(&tm, dir);
	LOAD_FAIL(dir, EINVAL, "'model.norm.weight': expected shape [16] but found [16, 1]");
	tm_free(&tm);

	/* Qwen2 without its biases */
	gen(&tm, "Qwen2ForCausalLM", KERN_F32, false, true);
	tm_find(&tm, "model.layers.1.self_attn.k_proj.bias")->skip = true;
	dir = newdir("qwen2-no-bias");
	write_single(&tm, dir);
	LOAD_FAIL(dir, EINVAL, "missing tensor 'model.layers.1.self_attn.k_proj.bias'");
	tm_free(&tm);

	/* stray tensors: a layer past num_hidden_layers, an unknown layer
	 * tensor, biases the config does not ask for, a malformed index */
	static const char *const stray[][2] = {
		{ "model.layers.2.mlp.up_proj.weight", "for layer 2 but num_hidden_layers is 2" },
		{ "model.layers.0.self_attn.q_norm.weight", "unexpected tensor 'model.layers.0.self_attn.q_norm.weight'" },
		{ "model.layers.0.self_attn.q_proj.bias", "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'" },
		{ "model.layers.0.self_attn.o_proj.bias", "unexpected tensor" },
		{ "model.layers.00.mlp.up_proj.weight", "unexpected tensor 'model.layers.00" },
		{ "model.layers.0x.mlp.up_proj.weight", "unexpected tensor" },
		{ "model.layers.0", "unexpected tensor" },
		{ "model.layers.999999999999999999990.mlp.up_proj.weight", "unexpected tensor" },
		{ "model.layers.4294967296.mlp.up_proj.weight", "for layer 4294967296" },
	};
	for (size_t i = 0; i < sizeof(stray) / sizeof(stray[0]); i++) {
		char name[32];

		gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
		add(&tm, KERN_F32, HIDDEN, 0, "%s", stray[i][0]);
		snprintf(name, sizeof(name), "stray%zu", i);
		dir = newdir(name);
		write_single(&tm, dir);
		LOAD_FAIL(dir, EINVAL, "model.safetensors: ", stray[i][1]);
		tm_free(&tm);
	}

	/* a corrupt file: the parser's message comes through */
	gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
	dir = newdir("corrupt");
	write_single(&tm, dir);
	{
		char path[512];
		FILE *f;

		snprintf(path, sizeof(path), "%s/model.safetensors", dir);
		f = fopen(path, "r+b");
		CHECK(f && fseek(f, 3, SEEK_SET) == 0 && fputc(0x10, f) != EOF);
		if (f)
			fclose(f);
	}
	LOAD_FAIL(dir, EINVAL, "model.safetensors: ", "limit");
	tm_free(&tm);
}

static void test_bad_dirs(void)
{
	struct tmodel tm;
	const char *dir;
	char path[512];

	LOAD_FAIL("/nonexistent/hearth", ENOENT, "config.json: cannot open");

	gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
	dir = newdir("no-weights");
	CHECK(write_config(&tm, dir) == 0);
	LOAD_FAIL(dir, ENOENT, "no model.safetensors or model.safetensors.index.json");

	tm.config_extra = ", \"num_key_value_heads\": 3";
	dir = newdir("bad-config");
	write_single(&tm, dir);
	LOAD_FAIL(dir, EINVAL, "config.json: duplicate key 'num_key_value_heads'");
	tm.config_extra = NULL;

	dir = newdir("huge-config");
	write_single(&tm, dir);
	{
		size_t n = (4u << 20) + 1;
		char *big = malloc(n);

		memset(big, ' ', n);
		big[0] = '{';
		big[n - 1] = '}';
		snprintf(path, sizeof(path), "%s/config.json", dir);
		CHECK(mt_write(path, big, n) == 0);
		free(big);
	}
	LOAD_FAIL(dir, EFBIG, "config.json: ", "limit");

	dir = newdir("config-is-dir");
	snprintf(path, sizeof(path), "%s/config.json", dir);
	CHECK(mkdir(path, 0700) == 0);
	LOAD_FAIL(dir, EINVAL, "config.json: not a regular file");
	tm_free(&tm);
}

static void test_bad_shards(void)
{
	static const char *const traversal[] = {
		"../model-00001-of-00002.safetensors", "sub/x.safetensors", "..", ".", "",
		"/etc/passwd", "a..b",
	};
	struct tmodel tm;
	const char *dir;
	char path[512];

	gen(&tm, "LlamaForCausalLM", KERN_BF16, false, true);

	/* a shard listed in the index is missing */
	dir = newdir("shard-missing");
	write_sharded(&tm, dir);
	snprintf(path, sizeof(path), "%s/model-00002-of-00002.safetensors", dir);
	CHECK(unlink(path) == 0);
	LOAD_FAIL(dir, ENOENT, "model-00002-of-00002.safetensors: cannot open");

	/* an index entry names a tensor its shard does not hold */
	dir = newdir("shard-lacks-tensor");
	tm_find(&tm, "model.layers.1.mlp.down_proj.weight")->skip = true;
	write_sharded(&tm, dir);
	tm_find(&tm, "model.layers.1.mlp.down_proj.weight")->skip = false;
	LOAD_FAIL(dir, EINVAL, "model.safetensors.index.json: tensor 'model.layers.1.mlp.down_proj.weight'",
		  "absent");

	/* a required tensor not in the index at all (present in a shard) */
	dir = newdir("index-lacks-tensor");
	write_sharded(&tm, dir);
	{
		static const char *const shards[2] = { "model-00001-of-00002.safetensors",
						       "model-00002-of-00002.safetensors" };
		struct tt *t = tm_find(&tm, "model.norm.weight");

		t->noindex = true;
		CHECK(write_index(&tm, dir, shards) == 0);
		t->noindex = false;
	}
	LOAD_FAIL(dir, EINVAL, "model.safetensors.index.json: missing tensor 'model.norm.weight'");

	/* shard names that leave the directory */
	for (size_t i = 0; i < sizeof(traversal) / sizeof(traversal[0]); i++) {
		const char *shards[2] = { "model-00001-of-00002.safetensors", traversal[i] };
		char name[32];

		snprintf(name, sizeof(name), "traversal%zu", i);
		dir = newdir(name);
		write_sharded(&tm, dir);
		CHECK(write_index(&tm, dir, shards) == 0);
		LOAD_FAIL(dir, EINVAL, "model.safetensors.index.json: ", "not a plain file name");
	}

	/* malformed index files */
	static const char *const bad_index[][2] = {
		{ "{", "not valid JSON" },
		{ "[]", "an array, not a JSON object" },
		{ "{\"metadata\": {}}", "'weight_map' is missing" },
		{ "{\"weight_map\": []}", "'weight_map' is an array" },
		{ "{\"weight_map\": {\"model.norm.weight\": 3}}", "shard is a number" },
		{ "{\"weight_map\": {}}", "missing tensor 'model.embed_tokens.weight'" },
	};
	for (size_t i = 0; i < sizeof(bad_index) / sizeof(bad_index[0]); i++) {
		char name[32];

		snprintf(name, sizeof(name), "bad-index%zu", i);
		dir = newdir(name);
		write_sharded(&tm, dir);
		CHECK(write_text(dir, "model.safetensors.index.json", bad_index[i][0]) == 0);
		LOAD_FAIL(dir, EINVAL, "model.safetensors.index.json: ", bad_index[i][1]);
	}
	tm_free(&tm);
}

/* Every backend failure point: NULL, errno, message, nothing leaked. */
static void test_backend_failures(void)
{
	struct tmodel tm;
	const char *dirs[2];
	long n = 0, k;

	gen(&tm, "Qwen2ForCausalLM", KERN_BF16, false, true);
	dirs[0] = strdup(newdir("fail-single"));
	write_single(&tm, dirs[0]);
	dirs[1] = strdup(newdir("fail-sharded"));
	write_sharded(&tm, dirs[1]);
	load_ok(&tm, dirs[0], &n);
	CHECK(n == 1 + 2 * 12 + 2);
	for (int d = 0; d < 2; d++) {
		for (k = 1; k <= n; k++) {
			struct tb tb;
			char err[512] = "";

			tb_init(&tb);
			tb.fail_weight_at = k;
			errno = 0;
			CHECK(model_load(dirs[d], &tb.be, err, sizeof(err)) == NULL);
			CHECK(errno == ENOMEM && tb.live == 0);
			CHECK_MSG(err, "upload to the test backend failed");
		}
		{
			struct tb tb;
			char err[512] = "";

			tb_init(&tb);
			tb.fail_alloc = 1;
			CHECK(model_load(dirs[d], &tb.be, err, sizeof(err)) == NULL);
			CHECK(errno == ENOMEM && tb.live == 0);
			CHECK_MSG(err, "inv_freq");
		}
	}
	free((void *)dirs[0]);
	free((void *)dirs[1]);
	tm_free(&tm);

	/* argument checks; model_free(NULL) */
	{
		struct tb tb;
		struct kern_ops no_upload = tb_ops;
		struct kern_backend be;

		tb_init(&tb);
		errno = 0;
		CHECK(model_load(NULL, &tb.be, NULL, 0) == NULL && errno == EINVAL);
		CHECK(model_load("/tmp", NULL, NULL, 0) == NULL && errno == EINVAL);
		no_upload.weight_upload = NULL;
		be = tb.be;
		be.ops = &no_upload;
		CHECK(model_load("/tmp", &be, NULL, 0) == NULL && errno == EINVAL);
		model_free(NULL);
	}
}

/* The committed transformers fixtures (tests/fixtures/README.md) load. */

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/hearth-test-loader-errors-XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	test_bad_tensors();
	test_bad_dirs();
	test_bad_shards();
	test_backend_failures();
	if (!mt_failures)
		mt_rmtree(root);
	else
		fprintf(stderr, "left %s for inspection\n", root);
	return mt_done("test_loader_errors");
}

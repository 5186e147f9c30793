/* SPDX-License-Identifier: MIT */
/*
 * Parity of the engine (CPU backend) with Hugging Face transformers on the
 * tiny models of tests/fixtures: one-shot and chunked prefill, greedy
 * decoding, truncation and re-decoding, each against the reference logits made
 * by tests/fixtures/make_fixtures.py.
 *
 * Usage: test_parity FIXTURE.json MODEL_DIR. Exit 0 on pass, 1 on failure
 * (a missing or malformed fixture is a failure, not a skip).
 */
#define _GNU_SOURCE /* asprintf */
#include <endian.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine.h"
#include "kern.h"
#include "model.h"

#define N_GREEDY 16u
/* Engine logits vs transformers: max|diff| <= PARITY_RTOL * max|ref| per row. */
#define PARITY_RTOL 1e-4f
/* Two engine paths that compute the same position (chunked vs one-shot, a
 * recomputation after truncate): max|diff| <= SAME_RTOL * max|logit|. */
#define SAME_RTOL 1e-5f

struct fixture {
	char name[128];
	uint32_t vocab;
	int32_t *prompt;
	uint32_t n_prompt;
	uint32_t *chunks;
	uint32_t n_chunks;
	int32_t greedy[N_GREEDY];
	float *rows; /* [n_chunks + N_GREEDY][vocab] */
};

static int n_fail;

static void __attribute__((format(printf, 1, 2))) fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("FAIL: ", stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	va_end(ap);
	n_fail++;
}

/* An engine call that must succeed. */
static int ok_rc(int rc, const char *what)
{
	if (rc == 0)
		return 1;
	fail("%s returned %d (%s)", what, rc, strerror(rc < 0 ? -rc : rc));
	return 0;
}

static const float *chunk_row(const struct fixture *f, uint32_t i)
{
	return f->rows + (size_t)i * f->vocab;
}

static const float *greedy_row(const struct fixture *f, uint32_t j)
{
	return f->rows + (size_t)(f->n_chunks + j) * f->vocab;
}

static float max_abs(const float *x, uint32_t n)
{
	float m = 0.0f;

	for (uint32_t i = 0; i < n; i++)
		m = fmaxf(m, fabsf(x[i]));
	return m;
}

/* max|got - ref|; NaN or infinity in got counts as infinite. */
static float max_diff(const float *got, const float *ref, uint32_t n)
{
	float worst = 0.0f;

	for (uint32_t i = 0; i < n; i++)
		worst = fmaxf(worst, isfinite(got[i]) ? fabsf(got[i] - ref[i]) : INFINITY);
	return worst;
}

/*
 * Compare n values; print the measured max|diff| against rtol * max|ref|.
 * NaN or infinity in `got` counts as an infinite difference. Returns 1 when
 * within the bound.
 */
static int check_close(const char *what, const float *got, const float *ref, uint32_t n,
		       float rtol)
{
	float bound = rtol * max_abs(ref, n), worst = -1.0f;
	uint32_t at = 0;

	for (uint32_t i = 0; i < n; i++) {
		float d = isfinite(got[i]) ? fabsf(got[i] - ref[i]) : INFINITY;

		if (d > worst) {
			worst = d;
			at = i;
		}
	}
	if (worst <= bound) {
		printf("  %-40s max|diff| %.3e <= bound %.3e  ok\n", what, worst, bound);
		return 1;
	}
	fail("%s: max|diff| %.3e > bound %.3e (at id %u: got %.6f, want %.6f)", what, worst, bound,
	     at, got[at], ref[at]);
	return 0;
}

static char *read_file(const char *path, size_t *ret_len)
{
	FILE *fp = fopen(path, "rb");
	char *buf = NULL;
	long len;

	if (!fp)
		return NULL;
	if (fseek(fp, 0, SEEK_END) != 0 || (len = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0)
		goto out;
	buf = malloc((size_t)len + 1);
	if (!buf)
		goto out;
	if (fread(buf, 1, (size_t)len, fp) != (size_t)len) {
		free(buf);
		buf = NULL;
		errno = EIO;
		goto out;
	}
	buf[len] = '\0';
	*ret_len = (size_t)len;
out:
	fclose(fp);
	return buf;
}

/* A non-empty JSON array of integers in [0, limit), copied to *ret (caller frees). */
static int json_uints(const cJSON *root, const char *key, uint32_t limit, int32_t **ret,
		      uint32_t *ret_n)
{
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key), *it;
	int32_t *v;
	uint32_t n = 0;

	if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) <= 0)
		return -EINVAL;
	v = calloc((size_t)cJSON_GetArraySize(a), sizeof(*v));
	if (!v)
		return -ENOMEM;
	cJSON_ArrayForEach(it, a) {
		if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= limit ||
		    it->valuedouble != (double)(int32_t)it->valuedouble) {
			free(v);
			return -EINVAL;
		}
		v[n++] = (int32_t)it->valuedouble;
	}
	*ret = v;
	*ret_n = n;
	return 0;
}

static void fixture_free(struct fixture *f)
{
	free(f->prompt);
	free(f->chunks);
	free(f->rows);
}

/* Load FIXTURE.json and the .bin it names (beside it). 0 or -1 with a message. */
static int fixture_load(const char *json_path, struct fixture *f)
{
	char *text = NULL, *bin = NULL, *bin_path = NULL;
	const cJSON *item;
	cJSON *root = NULL;
	int32_t *ends = NULL, *greedy = NULL, *chunks = NULL;
	uint32_t n_ends = 0, n_greedy = 0, sum = 0;
	size_t len = 0, want;
	const char *slash, *base;
	int ret = -1;

	memset(f, 0, sizeof(*f));
	base = strrchr(json_path, '/') ? strrchr(json_path, '/') + 1 : json_path;
	snprintf(f->name, sizeof(f->name), "%.*s",
		 (int)(strstr(base, ".json") ? (size_t)(strstr(base, ".json") - base) : strlen(base)),
		 base);

	text = read_file(json_path, &len);
	if (!text) {
		fail("cannot read fixture %s: %s (regenerate with "
		     "python3 tests/fixtures/make_fixtures.py)", json_path, strerror(errno));
		return -1;
	}
	root = cJSON_ParseWithLength(text, len);
	if (!root || !cJSON_IsObject(root)) {
		fail("%s: not a JSON object", json_path);
		goto out;
	}
	item = cJSON_GetObjectItemCaseSensitive(root, "vocab_size");
	if (!cJSON_IsNumber(item) || item->valuedouble < 2 || item->valuedouble > (1 << 22)) {
		fail("%s: bad vocab_size", json_path);
		goto out;
	}
	f->vocab = (uint32_t)item->valuedouble;
	if (json_uints(root, "prompt", f->vocab, &f->prompt, &f->n_prompt) ||
	    json_uints(root, "chunks", 1u << 20, &chunks, &f->n_chunks) ||
	    json_uints(root, "chunk_end_positions", 1u << 20, &ends, &n_ends) ||
	    json_uints(root, "greedy_tokens", f->vocab, &greedy, &n_greedy)) {
		fail("%s: prompt, chunks, chunk_end_positions or greedy_tokens missing or out of "
		     "range", json_path);
		goto out;
	}
	f->chunks = (uint32_t *)chunks;
	chunks = NULL;
	if (n_ends != f->n_chunks || n_greedy != N_GREEDY) {
		fail("%s: %u chunks but %u chunk ends, %u greedy tokens (want %u)", json_path,
		     f->n_chunks, n_ends, n_greedy, N_GREEDY);
		goto out;
	}
	for (uint32_t i = 0; i < f->n_chunks; i++) {
		sum += f->chunks[i];
		if (f->chunks[i] == 0 || (uint32_t)ends[i] != sum - 1) {
			fail("%s: chunk %u: end position %d, want %u", json_path, i, ends[i],
			     sum - 1);
			goto out;
		}
	}
	if (sum != f->n_prompt) {
		fail("%s: chunks sum to %u, prompt has %u tokens", json_path, sum, f->n_prompt);
		goto out;
	}
	memcpy(f->greedy, greedy, sizeof(f->greedy));

	/* The .bin: named by "bin" (beside the json), else FIXTURE.bin. */
	item = cJSON_GetObjectItemCaseSensitive(root, "bin");
	slash = strrchr(json_path, '/');
	if (cJSON_IsString(item) && !strchr(item->valuestring, '/')) {
		if (asprintf(&bin_path, "%.*s%s", slash ? (int)(slash - json_path + 1) : 0,
			     json_path, item->valuestring) < 0)
			bin_path = NULL;
	} else if (asprintf(&bin_path, "%.*s.bin", (int)(strlen(json_path) - strlen(".json")),
			    json_path) < 0) {
		bin_path = NULL;
	}
	if (!bin_path) {
		fail("out of memory");
		goto out;
	}
	bin = read_file(bin_path, &len);
	want = (size_t)(f->n_chunks + N_GREEDY) * f->vocab * sizeof(float);
	if (!bin) {
		fail("cannot read %s: %s", bin_path, strerror(errno));
		goto out;
	}
	if (len != want) {
		fail("%s: %zu bytes, want %zu ((%u chunks + %u greedy) x %u x 4)", bin_path, len,
		     want, f->n_chunks, N_GREEDY, f->vocab);
		goto out;
	}
	f->rows = malloc(want);
	if (!f->rows) {
		fail("out of memory");
		goto out;
	}
	for (size_t i = 0; i < want / 4; i++) {
		uint32_t u;

		memcpy(&u, bin + 4 * i, 4);
		u = le32toh(u);
		memcpy(&f->rows[i], &u, 4);
	}
	ret = 0;
out:
	if (ret)
		fixture_free(f);
	free(chunks);
	free(ends);
	free(greedy);
	free(bin_path);
	free(bin);
	cJSON_Delete(root);
	free(text);
	return ret;
}

/* ------------------------------------------------------------------ checks */

struct greedy_ctx {
	const struct fixture *f;
	const char *label;
	uint32_t calls;
	int32_t tokens[N_GREEDY];
	/* The step whose logits came closest to their bound, for the summary. */
	float worst_ratio, worst_diff, worst_bound;
	uint32_t worst_step;
};

static uint32_t argmax(const float *x, uint32_t n)
{
	uint32_t best = 0;

	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

static int on_token(void *userdata, uint32_t i, int32_t token, const float *logits)
{
	struct greedy_ctx *g = userdata;
	const float *ref;
	float diff, bound;
	char what[96];

	if (i != g->calls || i >= N_GREEDY) {
		fail("%s: callback index %u, expected %u", g->label, i, g->calls);
		return -EINVAL;
	}
	g->calls++;
	g->tokens[i] = token;
	if (!logits) {
		fail("%s: step %u: no logits although want_logits was set", g->label, i);
		return 0;
	}
	ref = greedy_row(g->f, i);
	bound = PARITY_RTOL * max_abs(ref, g->f->vocab);
	diff = max_diff(logits, ref, g->f->vocab);
	if (diff > bound) {
		snprintf(what, sizeof(what), "%s step %u logits", g->label, i);
		check_close(what, logits, ref, g->f->vocab, PARITY_RTOL);
	}
	if (i == 0 || diff / bound > g->worst_ratio) {
		g->worst_ratio = diff / bound;
		g->worst_diff = diff;
		g->worst_bound = bound;
		g->worst_step = i;
	}
	if ((uint32_t)token != argmax(logits, g->f->vocab))
		fail("%s: step %u: token %d is not the argmax %u of its own logits", g->label, i,
		     token, argmax(logits, g->f->vocab));
	return 0;
}

/* Generate N_GREEDY tokens from s and compare with transformers' greedy run. */
static void check_greedy(struct engine *e, struct engine_seq *s, const struct fixture *f,
			 const char *label)
{
	struct greedy_ctx g = { .f = f, .label = label };
	int32_t out[N_GREEDY];
	uint32_t len0 = engine_seq_len(s);
	int mismatch = 0;

	memset(out, 0xff, sizeof(out));
	if (!ok_rc(engine_generate(e, s, N_GREEDY, out, on_token, &g, 1), "engine_generate"))
		return;
	if (g.calls != N_GREEDY)
		fail("%s: callback called %u times, want %u", label, g.calls, N_GREEDY);
	else
		printf("  %-40s max|diff| %.3e %s bound %.3e  (worst of %u steps: step %u)\n",
		       "greedy logits vs transformers", g.worst_diff,
		       g.worst_diff <= g.worst_bound ? "<=" : "> ", g.worst_bound, N_GREEDY,
		       g.worst_step);
	if (engine_seq_len(s) != len0 + N_GREEDY)
		fail("%s: sequence length %u after generate, want %u", label, engine_seq_len(s),
		     len0 + N_GREEDY);
	for (uint32_t i = 0; i < N_GREEDY; i++) {
		if (out[i] != f->greedy[i] || g.tokens[i] != out[i])
			mismatch = 1;
	}
	printf("  %-40s", label);
	for (uint32_t i = 0; i < N_GREEDY; i++)
		printf(" %d", out[i]);
	printf("  %s\n", mismatch ? "MISMATCH" : "= transformers");
	if (mismatch) {
		printf("  %-40s", "transformers");
		for (uint32_t i = 0; i < N_GREEDY; i++)
			printf(" %d", f->greedy[i]);
		printf("\n");
		fail("%s: greedy tokens differ from transformers", label);
	}
}

static int append(struct engine *e, struct engine_seq *s, const int32_t *t, uint32_t n)
{
	return ok_rc(engine_append(e, s, t, n), "engine_append");
}

static int logits(struct engine *e, struct engine_seq *s, float *out, uint32_t vocab)
{
	return ok_rc(engine_logits(e, s, out, vocab), "engine_logits");
}

/*
 * The checks on one engine. one_shot receives the one-shot logits (check a),
 * the reference for the later same-engine comparisons.
 */
static void run_checks(struct engine *e, const struct fixture *f, float *one_shot, float *buf)
{
	const float *last_ref = chunk_row(f, f->n_chunks - 1);
	struct engine_seq *a = NULL, *b = NULL;
	uint32_t pos = 0, mid;
	char what[96];

	/* a) one-shot prefill of the whole prompt. */
	printf(" a) one-shot: %u tokens\n", f->n_prompt);
	a = engine_seq_new(e);
	if (!a) {
		fail("engine_seq_new: %s", strerror(errno));
		return;
	}
	if (!append(e, a, f->prompt, f->n_prompt) || !logits(e, a, one_shot, f->vocab))
		goto out;
	check_close("last position vs transformers", one_shot, last_ref, f->vocab, PARITY_RTOL);

	/* b) chunked prefill on a fresh sequence. */
	printf(" b) chunked:");
	for (uint32_t i = 0; i < f->n_chunks; i++)
		printf(" %u", f->chunks[i]);
	printf("\n");
	b = engine_seq_new(e);
	if (!b) {
		fail("engine_seq_new: %s", strerror(errno));
		goto out;
	}
	for (uint32_t i = 0; i < f->n_chunks; i++) {
		if (!append(e, b, f->prompt + pos, f->chunks[i]) || !logits(e, b, buf, f->vocab))
			goto out;
		pos += f->chunks[i];
		snprintf(what, sizeof(what), "chunk %u (end pos %3u) vs transformers", i, pos - 1);
		check_close(what, buf, chunk_row(f, i), f->vocab, PARITY_RTOL);
	}
	check_close("chunked vs one-shot", buf, one_shot, f->vocab, SAME_RTOL);
	/* The engine holds one sequence's logits at a time: asking the first
	 * sequence again recomputes its last position. */
	if (logits(e, a, buf, f->vocab))
		check_close("one-shot seq again (recomputed)", buf, one_shot, f->vocab, SAME_RTOL);
	engine_seq_free(e, b);
	b = NULL;

	/* c) greedy decoding from the one-shot sequence. */
	printf(" c) greedy: %u tokens\n", N_GREEDY);
	check_greedy(e, a, f, "greedy");

	/* d) truncate back to the prompt, same logits, same continuation. */
	printf(" d) truncate to %u, generate again\n", f->n_prompt);
	if (!ok_rc(engine_truncate(e, a, f->n_prompt), "engine_truncate"))
		goto out;
	if (engine_seq_len(a) != f->n_prompt ||
	    memcmp(engine_seq_tokens(a), f->prompt, f->n_prompt * sizeof(int32_t)) != 0)
		fail("after truncate: length %u or tokens differ from the prompt",
		     engine_seq_len(a));
	if (!logits(e, a, buf, f->vocab))
		goto out;
	check_close("after truncate vs transformers", buf, last_ref, f->vocab, PARITY_RTOL);
	check_close("after truncate vs one-shot", buf, one_shot, f->vocab, SAME_RTOL);
	check_greedy(e, a, f, "greedy after truncate");

	/* e) truncate into the middle of a page and re-append the rest: the
	 * stale K/V past the cut must be overwritten. */
	mid = f->n_prompt * 2 / 5 + 1;
	printf(" e) truncate to %u (mid-page), re-append %u\n", mid, f->n_prompt - mid);
	if (!ok_rc(engine_truncate(e, a, mid), "engine_truncate") ||
	    !append(e, a, f->prompt + mid, f->n_prompt - mid) || !logits(e, a, buf, f->vocab))
		goto out;
	check_close("re-appended vs transformers", buf, last_ref, f->vocab, PARITY_RTOL);
	check_close("re-appended vs one-shot", buf, one_shot, f->vocab, SAME_RTOL);
out:
	engine_seq_free(e, b);
	engine_seq_free(e, a);
}

int main(int argc, char **argv)
{
	struct kern_backend *be = NULL;
	struct model *m = NULL;
	struct engine *e = NULL;
	struct fixture f;
	float *one_shot = NULL, *buf = NULL, *split = NULL;
	char err[512] = "";

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 3) {
		fprintf(stderr, "usage: %s FIXTURE.json MODEL_DIR\n", argv[0]);
		return 1;
	}
	if (fixture_load(argv[1], &f) < 0)
		return 1;
	printf("parity %s: %s, vocab %u, prompt %u tokens\n", f.name, argv[2], f.vocab,
	       f.n_prompt);

	be = kern_backend_new("cpu", 0, 0);
	if (!be) {
		fail("kern_backend_new(cpu): %s", strerror(errno));
		goto out;
	}
	m = model_load(argv[2], be, err, sizeof(err));
	if (!m) {
		fail("model_load %s: %s (%s)", argv[2], err, strerror(errno));
		goto out;
	}
	printf("  model: %s, %u layers, hidden %u, heads %u/%u, head_dim %u, %s, tied %d\n",
	       m->cfg.arch_name, m->cfg.n_layers, m->cfg.hidden_size, m->cfg.n_heads,
	       m->cfg.n_kv_heads, m->cfg.head_dim, kern_dtype_name(m->cfg.torch_dtype),
	       (int)m->cfg.tie_word_embeddings);
	if (m->cfg.vocab_size != f.vocab) {
		fail("model vocab %u, fixture vocab %u", m->cfg.vocab_size, f.vocab);
		goto out;
	}
	one_shot = calloc(f.vocab, sizeof(float));
	buf = calloc(f.vocab, sizeof(float));
	split = calloc(f.vocab, sizeof(float));
	if (!one_shot || !buf || !split) {
		fail("out of memory");
		goto out;
	}

	e = engine_new(m, NULL);
	if (!e) {
		fail("engine_new: %s", strerror(errno));
		goto out;
	}
	run_checks(e, &f, one_shot, buf);
	engine_free(e);

	/* The same checks with the engine splitting every append into steps of
	 * at most 7 tokens (steps that straddle page boundaries). */
	printf(" engine with max_step_tokens 7:\n");
	e = engine_new(m, &(struct engine_params){ .max_step_tokens = 7 });
	if (!e) {
		fail("engine_new(max_step_tokens 7): %s", strerror(errno));
		goto out;
	}
	run_checks(e, &f, split, buf);
	check_close("split engine vs default engine", split, one_shot, f.vocab, SAME_RTOL);
out:
	engine_free(e);
	model_free(m);
	kern_backend_free(be);
	free(split);
	free(buf);
	free(one_shot);
	fixture_free(&f);
	if (n_fail) {
		printf("parity %s: FAILED (%d check%s)\n", f.name, n_fail, n_fail == 1 ? "" : "s");
		return 1;
	}
	printf("parity %s: ok\n", f.name);
	return 0;
}

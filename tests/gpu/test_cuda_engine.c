/* SPDX-License-Identifier: MIT */
/*
 * Engine-level parity of the cuda backend (bf16) with the cpu backend (fp32)
 * on the fixture models: the same prompt appended in chunks on both, then
 * teacher-forced decoding (both engines are fed the cpu's greedy token).
 * At every position: relative L2 error of the logits <= 5e-2; the greedy
 * token agrees wherever the cpu's top-2 margin exceeds twice the largest
 * logit difference (each of the two could move by that much); the
 * probabilities over a label set agree as far as those logits allow (logits
 * within d of each other give probabilities within a factor e^(2d), plus
 * 1e-6 for the fp32 softmax). Finally engine_generate
 * runs on cuda (its argmax on the device) and must follow the cpu's tokens
 * as long as those margins hold.
 *
 * Usage: test_cuda_engine MODEL_DIR... Exit 77 without a CUDA device.
 */
#include "gt.h"
#include "engine.h"
#include "model.h"

#define N_PROMPT 48
#define N_DECODE 16
/*
 * Why 5e-2 and not 2e-2: these fixtures are tiny random-weight models, which
 * amplify perturbations. Emulating the cuda backend's bf16 storage in an fp32
 * forward pass on the cpu (same rounding points) moves their logits by
 * 2.2-4.6% (worst over 17 positions); rounding only the f32-stored weights to
 * bf16 already gives 2.0-3.4% (llama-tiny, llama3-scaled, mistral-tiny), and
 * an fp32 residual stream does not reduce it. The cuda backend measured
 * 1.8-4.5% on an H200. A wrong kernel gives far more (or NaN), and the greedy
 * check below stays exact wherever the margin allows.
 */
#define REL_L2_MAX 5e-2

static struct kt_rng rng = { 0x656e67696e65ull };

struct pair {
	struct model *m[2];
	struct engine *e[2];
	struct engine_seq *s[2];
	uint32_t vocab;
};

static double rel_l2(const float *got, const float *ref, uint32_t n, double *ret_max_abs)
{
	double num = 0, den = 0, mx = 0;

	for (uint32_t i = 0; i < n; i++) {
		double d = (double)got[i] - ref[i];

		num += d * d;
		den += (double)ref[i] * ref[i];
		if (fabs(d) > mx || isnan(d))
			mx = isnan(d) ? INFINITY : fabs(d);
	}
	*ret_max_abs = mx;
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

static uint32_t top2(const float *l, uint32_t n, float *ret_margin)
{
	uint32_t b = 0;
	float second = -INFINITY;

	for (uint32_t j = 1; j < n; j++)
		if (l[j] > l[b])
			b = j;
	for (uint32_t j = 0; j < n; j++)
		if (j != b && l[j] > second)
			second = l[j];
	*ret_margin = l[b] - second;
	return b;
}

struct stats {
	double worst_rel, worst_abs, last_abs;
	uint32_t checked, agreed, skipped;
};

/* Compare the last-position logits of both engines; returns the cpu's
 * greedy token. */
static int32_t compare_position(struct pair *p, const char *what, struct stats *st,
				int verbose)
{
	float *l[2];
	double rel, mx;
	float margin;
	uint32_t tc, tg;

	for (int i = 0; i < 2; i++) {
		l[i] = kt_xmalloc((size_t)p->vocab * sizeof(float));
		KT_CHECK_EQ_INT(engine_logits(p->e[i], p->s[i], l[i], p->vocab), 0);
	}
	rel = rel_l2(l[1], l[0], p->vocab, &mx);
	tc = top2(l[0], p->vocab, &margin);
	tg = top2(l[1], p->vocab, &(float){ 0 });
	if (verbose)
		printf("  %-34s rel L2 %.3g, max|diff| %.3g, cpu top-2 margin %.3g, tokens %u/%u\n",
		       what, rel, mx, margin, tc, tg);
	if (!(rel <= REL_L2_MAX)) {
		fprintf(stderr, "%s: relative L2 error %.3g > %.3g\n", what, rel, REL_L2_MAX);
		kt_failures++;
	}
	st->worst_rel = fmax(st->worst_rel, rel);
	st->worst_abs = fmax(st->worst_abs, mx);
	st->last_abs = mx;
	if (margin > 2 * mx) {
		st->checked++;
		st->agreed += tc == tg;
		if (tc != tg) {
			fprintf(stderr, "%s: greedy token %u on cuda, %u on cpu (margin %.3g)\n", what,
				tg, tc, margin);
			kt_failures++;
		}
	} else {
		st->skipped++;
	}
	free(l[0]);
	free(l[1]);
	return (int32_t)tc;
}

static void compare_probs(struct pair *p, const char *what, double max_logit_diff)
{
	int32_t ids[20];
	float pr[2][20];
	char w[160];
	struct model_graph_counts g0, g1;

	for (int j = 0; j < 20; j++)
		ids[j] = (int32_t)kt_below(&rng, p->vocab);
	KT_CHECK_EQ_INT(engine_probs(p->e[0], p->s[0], ids, 20, pr[0]), 0);
	engine_graph_counts(p->e[1], &g0);
	/* A score recomputes the last position without the LM head over the
	 * vocabulary (its ids' rows alone): three times, so that its graph
	 * bucket runs eagerly, is captured and replays. */
	for (int rep = 0; rep < 3; rep++) {
		KT_CHECK_EQ_INT(engine_probs(p->e[1], p->s[1], ids, 20, pr[1]), 0);
		snprintf(w, sizeof(w), "%s: probs of 20 ids (%s)", what,
			 rep == 0 ? "eager" : rep == 1 ? "capture" : "replay");
		gt_close(w, pr[1], pr[0], 20, 1e-6, expm1(2 * max_logit_diff));
	}
	/* The same step three times: captured once at most, and by now the
	 * engine has captured graphs (counted for /metrics). */
	engine_graph_counts(p->e[1], &g1);
	KT_CHECK(g1.captures - g0.captures <= 1 && g1.captures >= 1);
	KT_CHECK(g1.capture_ns > 0 && g1.recaptures <= g1.captures);
}

static int test_model(const char *dir)
{
	struct kern_backend *be[2] = { gt_cpu, gt_gpu };
	/* cuda in steps of 16 tokens: prefill chunks over existing context. */
	struct engine_params params[2] = { { 0 }, { .max_step_tokens = 16 } };
	int32_t prompt[N_PROMPT], gen[2][N_DECODE], forced[N_DECODE];
	struct stats st = { 0 };
	struct pair p = { 0 };
	char err[256], what[96];
	const char *name = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
	uint32_t follow = 0;

	for (int i = 0; i < 2; i++) {
		p.m[i] = model_load(dir, be[i], err, sizeof(err));
		if (!p.m[i]) {
			fprintf(stderr, "%s: model_load on %s: %s\n", dir, be[i]->name, err);
			kt_failures++;
			return -1;
		}
		p.e[i] = engine_new(p.m[i], &params[i]);
		p.s[i] = p.e[i] ? engine_seq_new(p.e[i]) : NULL;
		if (!p.s[i]) {
			fprintf(stderr, "%s: engine on %s failed\n", dir, be[i]->name);
			kt_failures++;
			return -1;
		}
	}
	p.vocab = p.m[0]->cfg.vocab_size;
	printf("%s (%s, stored %s, vocab %u):\n", name, p.m[0]->cfg.arch_name,
	       kern_dtype_name(p.m[0]->cfg.torch_dtype), p.vocab);

	for (int j = 0; j < N_PROMPT; j++)
		prompt[j] = (int32_t)kt_below(&rng, p.vocab);
	/* The prompt in two appends: 30 tokens, then 18 more. */
	for (int i = 0; i < 2; i++) {
		KT_CHECK_EQ_INT(engine_append(p.e[i], p.s[i], prompt, 30), 0);
		KT_CHECK_EQ_INT(engine_append(p.e[i], p.s[i], prompt + 30, N_PROMPT - 30), 0);
	}
	snprintf(what, sizeof(what), "%s after %d-token prompt", name, N_PROMPT);
	forced[0] = compare_position(&p, what, &st, 1);
	compare_probs(&p, what, st.last_abs);

	/* Teacher-forced decoding: both engines take the cpu's token. */
	for (int j = 0; j < N_DECODE; j++) {
		int32_t tok = forced[j];

		for (int i = 0; i < 2; i++)
			KT_CHECK_EQ_INT(engine_append(p.e[i], p.s[i], &tok, 1), 0);
		snprintf(what, sizeof(what), "%s decode %d", name, j + 1);
		if (j + 1 < N_DECODE)
			forced[j + 1] = compare_position(&p, what, &st, j == N_DECODE - 1);
		else
			compare_position(&p, what, &st, 1);
	}
	printf("  %-34s worst rel L2 %.3g, worst max|diff| %.3g over %u positions\n", name,
	       st.worst_rel, st.worst_abs, st.checked + st.skipped);
	printf("  %-34s greedy agreement %u/%u where margin > 2 max|diff| (%u below)\n", name,
	       st.agreed, st.checked, st.skipped);

	/* Free-running greedy generation on both from the prompt's end. */
	for (int i = 0; i < 2; i++) {
		KT_CHECK_EQ_INT(engine_truncate(p.e[i], p.s[i], N_PROMPT), 0);
		KT_CHECK_EQ_INT(engine_generate(p.e[i], p.s[i], N_DECODE, gen[i], NULL, NULL, 0),
				0);
	}
	/* The cpu's free-running tokens are the forced ones above. */
	for (int j = 0; j < N_DECODE; j++)
		KT_CHECK_EQ_INT(gen[0][j], forced[j]);
	while (follow < N_DECODE && gen[1][follow] == gen[0][follow])
		follow++;
	printf("  %-34s engine_generate: cuda follows cpu for %u/%d tokens\n", name, follow,
	       N_DECODE);

	for (int i = 0; i < 2; i++) {
		engine_seq_free(p.e[i], p.s[i]);
		engine_free(p.e[i]);
		model_free(p.m[i]);
	}
	return 0;
}

/*
 * model_forward with several sequences per step, as a batching scheduler
 * calls it: one mixed prefill step (three sequences of 7, 20 and 33 tokens:
 * 60 tokens, padded to a 64-token, 4-sequence graph), then decode steps of
 * all three (padded to 4) and of two of them, each bucket run eagerly, then
 * captured, then replayed. Every wanted logits row against the cpu backend;
 * later steps also show that padding wrote nobody's KV. Then the same
 * decode on cuda with graphs off: the two agree closely.
 */
#define BATCH_SEQS 3
#define BATCH_DECODE 8

static void test_forward_batch(const char *dir)
{
	struct kern_backend *be[2] = { gt_cpu, gt_gpu };
	struct model *m[2];
	struct kv_pool *pool[2];
	struct model_scratch *sc[2];
	struct kv_block_table bt[2][BATCH_SEQS];
	static const uint32_t plen[BATCH_SEQS] = { 7, 20, 33 };
	int32_t *toks[BATCH_SEQS];
	uint32_t len[BATCH_SEQS] = { 0 }, vocab;
	double worst = 0, worst_off = 0;
	char err[256];
	float *l[2];

	for (int i = 0; i < 2; i++) {
		m[i] = model_load(dir, be[i], err, sizeof(err));
		if (!m[i]) {
			fprintf(stderr, "%s: model_load: %s\n", dir, err);
			kt_failures++;
			return;
		}
		struct kv_geom g = { .page_tokens = 16, .n_layers = m[i]->cfg.n_layers,
				     .n_kv_heads = m[i]->cfg.n_kv_heads,
				     .head_dim = m[i]->cfg.head_dim };
		pool[i] = kv_pool_new(be[i], &g, 64);
		sc[i] = model_scratch_new(m[i], pool[i], 64, 8);
		KT_CHECK(pool[i] && sc[i]);
		for (int s = 0; s < BATCH_SEQS; s++)
			kv_bt_init(&bt[i][s]);
	}
	vocab = m[0]->cfg.vocab_size;
	for (int s = 0; s < BATCH_SEQS; s++) {
		toks[s] = kt_xmalloc(128 * sizeof(int32_t));
		for (int j = 0; j < 128; j++)
			toks[s][j] = (int32_t)kt_below(&rng, vocab);
	}
	l[0] = kt_xmalloc((size_t)BATCH_SEQS * vocab * sizeof(float));
	l[1] = kt_xmalloc((size_t)BATCH_SEQS * vocab * sizeof(float));
	for (int step = 0; step <= BATCH_DECODE + 1; step++) {
		/* step 0: prefill; then decode of all three, except every third
		 * step decodes sequences 0 and 2 only. The extra last step
		 * redoes the previous one on cuda with graphs off. */
		int sel[BATCH_SEQS], n = 0, off = step > BATCH_DECODE;
		struct model_seq_step st[BATCH_SEQS];

		if (off) {
			for (int s = 0; s < BATCH_SEQS; s++)
				len[s] -= (BATCH_DECODE % 3 || s != 1);
			memcpy(l[0], l[1], (size_t)BATCH_SEQS * vocab * sizeof(float));
		}
		for (int s = 0; s < BATCH_SEQS; s++)
			if (step == 0 || (off ? BATCH_DECODE : step) % 3 || s != 1)
				sel[n++] = s;
		for (int i = 0; i < 2; i++) {
			if (off && i == 0)
				continue;
			/* The warm-up's padding steps, run after the prefill, read
			 * page 0 (a real sequence's) and must leave every page as it
			 * was: the next steps' logits still match the cpu's. */
			if (step == 1 && i == 1)
				KT_CHECK(model_scratch_warm(m[1], pool[1], sc[1]) == 7); /* 1 .. 64 */
			model_scratch_set_graphs(sc[i], !off);
			for (int k = 0; k < n; k++) {
				int s = sel[k];
				uint32_t add = step == 0 ? plen[s] : 1;

				KT_CHECK_EQ_INT(kv_bt_reserve(pool[i], &bt[i][s], len[s] + add), 0);
				st[k] = (struct model_seq_step){ .bt = &bt[i][s], .n_past = len[s],
								 .n_new = add,
								 .tokens = toks[s] + len[s],
								 .want_logits = true };
			}
			KT_CHECK_EQ_INT(model_forward(m[i], pool[i], sc[i], st, (uint32_t)n), 0);
			for (int k = 0; k < n; k++)
				KT_CHECK_EQ_INT(be[i]->ops->download(be[i], l[i] + (size_t)k * vocab,
								     model_step_logits(sc[i], k),
								     vocab * sizeof(float)), 0);
		}
		for (int k = 0; k < n; k++) {
			double mx, rel = rel_l2(l[1] + (size_t)k * vocab, l[0] + (size_t)k * vocab,
						vocab, &mx);

			if (off) {
				worst_off = fmax(worst_off, rel);
				continue;
			}
			worst = fmax(worst, rel);
			if (!(rel <= REL_L2_MAX)) {
				fprintf(stderr, "batch step %d seq %d: rel L2 %.3g > %.3g\n", step,
					sel[k], rel, REL_L2_MAX);
				kt_failures++;
			}
		}
		for (int k = 0; k < n; k++)
			len[sel[k]] += step == 0 ? plen[sel[k]] : 1;
	}
	printf("  %-34s batched model_forward (graphs): worst rel L2 %.3g vs cpu; graphs off vs on "
	       "%.3g\n", dir, worst, worst_off);
	if (!(worst_off <= 1e-2)) {
		fprintf(stderr, "batch: graphs off vs on rel L2 %.3g > 1e-2\n", worst_off);
		kt_failures++;
	}
	for (int i = 0; i < 2; i++) {
		for (int s = 0; s < BATCH_SEQS; s++)
			kv_bt_release(pool[i], &bt[i][s]);
		model_scratch_free(sc[i]);
		kv_pool_free(pool[i]);
		model_free(m[i]);
		free(l[i]);
	}
	for (int s = 0; s < BATCH_SEQS; s++)
		free(toks[s]);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s MODEL_DIR...\n", argv[0]);
		return 1;
	}
	gt_init("test_cuda_engine");
	for (int i = 1; i < argc; i++)
		test_model(argv[i]);
	test_forward_batch(argv[1]);
	gt_fini();
	return kt_finish("test_cuda_engine");
}

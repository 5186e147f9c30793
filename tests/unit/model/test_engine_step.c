/* SPDX-License-Identifier: MIT */
/*
 * engine_step() against the single-sequence path (engine_append, then
 * engine_logits / engine_probs) on the CPU backend with a tiny fixture model:
 * many sequences in one step, mixed decode and chunked prefill under the
 * item and step budgets, a long prefill over several steps, recomputing the
 * last position, -ENOMEM of one item, truncation, and the argument checks.
 * The reference engine scores ids through the LM head over the whole
 * vocabulary; the engines under test score them from the ids' rows alone
 * wherever a step's outputs are all probabilities (test_scores).
 *
 * Usage: test_engine_step MODEL_DIR. Exit 0 on pass, 1 on failure.
 */
#include "mt.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine.h"
#include "kern.h"
#include "kv.h"
#include "model.h"

/* Two engine paths that compute the same position: max|diff| <= SAME_RTOL *
 * max|logit| (as tests/parity). Renormalised probabilities move by at most
 * twice the largest logit difference (|dp_i| <= p_i (|dl_i| + sum_j p_j |dl_j|)). */
#define SAME_RTOL 1e-5f
#define MAX_HIST 256u
#define N_IDS 5u

#define W_LOGITS 1u
#define W_PROBS 2u
#define W_NEXT 4u
#define W_ALL (W_LOGITS | W_PROBS | W_NEXT)

#define CHECKF(cond, ...)                                                                  \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                      \
			fputc('\n', stderr);                                               \
			mt_failures++;                                                     \
		}                                                                          \
	} while (0)

/* A sequence and the host copy of its history (what the reference runs). */
struct t_seq {
	struct engine_seq *s;
	int32_t tok[MAX_HIST];
	uint32_t len;
};

/* Room for every output of one work item. */
struct t_out {
	float *logits; /* [vocab] */
	float probs[N_IDS];
	int32_t next;
};

struct t_ctx {
	struct model *m;
	struct engine *ref; /* default engine: the single-sequence reference */
	uint32_t vocab;
	int32_t ids[N_IDS];
	float *ref_logits;  /* [vocab] */
	float worst;        /* largest max|diff| / max|logit| seen */
};

static uint32_t rng_state;

static uint32_t umin(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

static int32_t rand_token(uint32_t vocab)
{
	rng_state = rng_state * 1664525u + 1013904223u;
	return (int32_t)((rng_state >> 8) % vocab);
}

static void seq_new(struct engine *e, struct t_seq *q)
{
	memset(q, 0, sizeof(*q));
	q->s = engine_seq_new(e);
	if (!q->s) {
		fprintf(stderr, "engine_seq_new: %s\n", strerror(errno));
		exit(1);
	}
}

/* Push n fresh random tokens to the history (nothing computed). */
static void seq_push(struct t_ctx *c, struct engine *e, struct t_seq *q, uint32_t n)
{
	int r;

	if (q->len + n > MAX_HIST) {
		fprintf(stderr, "test bug: history over %u\n", MAX_HIST);
		exit(1);
	}
	for (uint32_t i = 0; i < n; i++)
		q->tok[q->len + i] = rand_token(c->vocab);
	r = engine_seq_push(e, q->s, q->tok + q->len, n);
	CHECKF(r == 0, "engine_seq_push %u: %d", n, r);
	if (r == 0)
		q->len += n;
}

static void seq_push_tok(struct engine *e, struct t_seq *q, int32_t tok)
{
	int r = q->len < MAX_HIST ? engine_seq_push(e, q->s, &tok, 1) : -E2BIG;

	CHECKF(r == 0, "engine_seq_push of token %d: %d", tok, r);
	if (r == 0)
		q->tok[q->len++] = tok;
}

/* Push and compute n tokens alone (engine_append). */
static void seq_append(struct t_ctx *c, struct engine *e, struct t_seq *q, uint32_t n)
{
	int r;

	for (uint32_t i = 0; i < n; i++)
		q->tok[q->len + i] = rand_token(c->vocab);
	r = engine_append(e, q->s, q->tok + q->len, n);
	CHECKF(r == 0, "engine_append %u: %d", n, r);
	if (r == 0)
		q->len += n;
}

static void work_for(struct t_ctx *c, struct engine_work *w, struct t_seq *q, struct t_out *o,
		     unsigned want, uint32_t max_tokens)
{
	*w = (struct engine_work){ .seq = q->s, .max_tokens = max_tokens };
	if (want & W_LOGITS)
		w->logits = o->logits;
	if (want & W_PROBS) {
		w->ids = c->ids;
		w->n_ids = N_IDS;
		w->probs = o->probs;
	}
	if (want & W_NEXT)
		w->next_token = &o->next;
	/* Stale values must not pass for outputs. */
	memset(o->probs, 0xff, sizeof(o->probs));
	o->next = -1;
	for (uint32_t i = 0; i < c->vocab; i++)
		o->logits[i] = NAN;
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
 * w's outputs are ready and equal those of q's history run alone on the
 * reference engine (append, then logits and probs of the last position).
 */
static void check_outputs(struct t_ctx *c, const char *what, const struct t_seq *q,
			  const struct engine_work *w)
{
	struct engine_seq *s = engine_seq_new(c->ref);
	float probs[N_IDS], bound, d;
	int32_t best = 0;
	int r;

	CHECKF(w->out_ready, "%s: outputs not ready (res %d, done %u)", what, w->res, w->done);
	if (!s || !w->out_ready)
		goto out;
	r = engine_append(c->ref, s, q->tok, q->len);
	if (r == 0)
		r = engine_logits(c->ref, s, c->ref_logits, c->vocab);
	if (r == 0)
		r = engine_probs(c->ref, s, c->ids, N_IDS, probs);
	CHECKF(r == 0, "%s: reference of %u tokens: %d", what, q->len, r);
	if (r < 0)
		goto out;
	bound = SAME_RTOL * max_abs(c->ref_logits, c->vocab);
	for (uint32_t i = 1; i < c->vocab; i++)
		if (c->ref_logits[i] > c->ref_logits[best])
			best = (int32_t)i;
	if (w->logits) {
		d = max_diff(w->logits, c->ref_logits, c->vocab);
		c->worst = fmaxf(c->worst, d / max_abs(c->ref_logits, c->vocab));
		CHECKF(d <= bound, "%s: logits max|diff| %.3e > %.3e (len %u)", what, d, bound, q->len);
	}
	if (w->probs) {
		d = max_diff(w->probs, probs, N_IDS);
		CHECKF(d <= 2 * bound, "%s: probs max|diff| %.3e > %.3e", what, d, 2 * bound);
	}
	/* The greedy token is the reference's argmax, or a near-tie with it. */
	if (w->next_token)
		CHECKF(*w->next_token == best ||
		       (*w->next_token >= 0 && (uint32_t)*w->next_token < c->vocab &&
			c->ref_logits[*w->next_token] >= c->ref_logits[best] - 2 * bound),
		       "%s: next token %d, reference argmax %d", what, *w->next_token, best);
out:
	engine_seq_free(c->ref, s);
}

/* s's KV holds exactly its whole history (nothing pending). */
static void check_computed(const char *what, const struct t_seq *q)
{
	CHECKF(engine_seq_len(q->s) == q->len, "%s: length %u, want %u", what,
	       engine_seq_len(q->s), q->len);
	CHECKF(engine_seq_pending(q->s) == 0, "%s: %u pending", what, engine_seq_pending(q->s));
	CHECKF(engine_seq_kv(q->s)->n_tokens == q->len, "%s: KV holds %u of %u", what,
	       engine_seq_kv(q->s)->n_tokens, q->len);
}

/* ---- one step over many sequences ---------------------------------------------- */

/* n sequences on e, sequence i with base + (i * mul) % mod pending tokens,
 * and room for their outputs. */
static void seqs_new(struct t_ctx *c, struct engine *e, struct t_seq *q, struct t_out *o,
		     uint32_t n, uint32_t base, uint32_t mul, uint32_t mod)
{
	for (uint32_t i = 0; i < n; i++) {
		o[i].logits = calloc(c->vocab, sizeof(float));
		seq_new(e, &q[i]);
		seq_push(c, e, &q[i], base + (i * mul) % mod);
	}
}

/* Release what seqs_new() made. */
static void seqs_free(struct engine *e, struct t_seq *q, struct t_out *o, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		engine_seq_free(e, q[i].s);
		free(o[i].logits);
	}
}

static void test_batch(struct t_ctx *c)
{
	enum { N = 12 };
	static const unsigned kinds[4] = { W_ALL, W_PROBS, W_NEXT, W_LOGITS };
	struct engine *e = engine_new(c->m, NULL);
	struct t_seq q[N];
	struct t_out o[N];
	struct engine_work w[N];
	uint64_t steps;
	char what[64];
	int r;

	if (!e) {
		CHECKF(0, "engine_new: %s", strerror(errno));
		return;
	}
	seqs_new(c, e, q, o, N, 1, 7, 37);
	for (uint32_t i = 0; i < N; i++)
		work_for(c, &w[i], &q[i], &o[i], kinds[i % 4], 512);
	steps = engine_n_steps(e);
	r = engine_step(e, w, N);
	CHECKF(r == 0, "step of %d sequences: %d", N, r);
	CHECKF(engine_n_steps(e) == steps + 1, "one forward pass, counted %llu",
	       (unsigned long long)(engine_n_steps(e) - steps));
	for (uint32_t i = 0; i < N; i++) {
		snprintf(what, sizeof(what), "batch item %u", i);
		CHECKF(w[i].res == 0 && w[i].done == q[i].len, "%s: res %d, done %u of %u", what,
		       w[i].res, w[i].done, q[i].len);
		check_computed(what, &q[i]);
		check_outputs(c, what, &q[i], &w[i]);
	}
	/* The KV written by the batch is right: one more token each, batched again. */
	for (uint32_t i = 0; i < N; i++) {
		seq_push(c, e, &q[i], 1);
		work_for(c, &w[i], &q[i], &o[i], kinds[(i + 1) % 4], 1);
	}
	r = engine_step(e, w, N);
	CHECKF(r == 0, "decode step: %d", r);
	for (uint32_t i = 0; i < N; i++) {
		snprintf(what, sizeof(what), "batch decode item %u", i);
		CHECKF(w[i].res == 0 && w[i].done == 1, "%s: res %d, done %u", what, w[i].res,
		       w[i].done);
		check_outputs(c, what, &q[i], &w[i]);
		engine_seq_free(e, q[i].s);
		free(o[i].logits);
	}
	engine_free(e);
}

/* ---- SCORE from the ids' rows of the LM head ------------------------------------ */

/* w's probabilities of ids[0..n) equal those of q's history on the reference. */
static void check_probs(struct t_ctx *c, const char *what, const struct t_seq *q,
			const struct engine_work *w)
{
	struct engine_seq *s = engine_seq_new(c->ref);
	float ref[512], bound, d;
	int r = -ENOMEM;

	CHECKF(w->res == 0 && w->out_ready, "%s: res %d, ready %d", what, w->res, w->out_ready);
	if (w->n_ids > 512) {
		CHECKF(0, "%s: test bug: %u ids", what, w->n_ids);
		r = -EINVAL;
	} else if (s)
		r = engine_append(c->ref, s, q->tok, q->len);
	if (r == 0)
		r = engine_logits(c->ref, s, c->ref_logits, c->vocab);
	if (r == 0)
		r = engine_probs(c->ref, s, w->ids, w->n_ids, ref);
	CHECKF(r == 0, "%s: reference: %d", what, r);
	if (r == 0 && w->out_ready) {
		float sum = 0;

		bound = 2 * SAME_RTOL * max_abs(c->ref_logits, c->vocab);
		d = max_diff(w->probs, ref, w->n_ids);
		for (uint32_t i = 0; i < w->n_ids; i++)
			sum += w->probs[i];
		CHECKF(d <= bound, "%s: probs max|diff| %.3e > %.3e over %u ids", what, d, bound,
		       w->n_ids);
		CHECKF(fabsf(sum - 1.0f) < 1e-4f, "%s: probabilities sum to %g", what, sum);
		if (w->logits) {
			d = max_diff(w->logits, c->ref_logits, c->vocab);
			CHECKF(d <= bound / 2, "%s: logits max|diff| %.3e", what, d);
		}
		if (w->next_token) {
			int32_t t = *w->next_token, best = 0;

			for (uint32_t i = 1; i < c->vocab; i++)
				if (c->ref_logits[i] > c->ref_logits[best])
					best = (int32_t)i;
			CHECKF(t == best || (t >= 0 && (uint32_t)t < c->vocab &&
					     c->ref_logits[t] >= c->ref_logits[best] - bound),
			       "%s: next token %d, reference argmax %d", what, t, best);
		}
	}
	engine_seq_free(c->ref, s);
}

/*
 * Random steps of scores against the reference, with now and then a greedy
 * token or full logits among them: label sets of 1-24 ids drawn from a pool
 * of 40 (overlaps and repeats), now and then one of more than half the
 * vocabulary. engine_n_score_steps() moves exactly for the steps whose
 * outputs were all probabilities over at most half the vocabulary.
 */
static void test_scores_random(struct t_ctx *c)
{
	enum { N = 10, ROUNDS = 24, POOL = 40, MAX_IDS = 512 };
	static int32_t ids[N][MAX_IDS];
	static float probs[N][MAX_IDS];
	struct engine *e = engine_new(c->m, NULL);
	struct t_seq q[N];
	struct t_out o[N];
	struct engine_work w[N];
	int32_t pool[POOL];
	uint64_t want = 0, sc0;
	uint8_t *seen = calloc(c->vocab, 1);
	char what[64];

	if (!e || !seen || c->vocab > MAX_IDS) {
		CHECKF(0, "engine_new: %s (vocab %u)", strerror(errno), c->vocab);
		engine_free(e);
		free(seen);
		return;
	}
	seqs_new(c, e, q, o, N, 2, 5, 17);
	for (uint32_t i = 0; i < POOL; i++)
		pool[i] = rand_token(c->vocab);
	sc0 = engine_n_score_steps(e);
	for (uint32_t round = 0; round < ROUNDS; round++) {
		uint32_t n = 1 + (uint32_t)rand_token(N), distinct = 0;
		bool only_probs = true;
		int r;

		for (uint32_t i = 0; i < n; i++) {
			uint32_t pick = (uint32_t)rand_token(24), k;
			unsigned kind = pick == 0 ? W_NEXT | W_PROBS : pick == 1 ? W_LOGITS | W_PROBS
									  : W_PROBS;

			seq_push(c, e, &q[i], 1 + (uint32_t)rand_token(6));
			work_for(c, &w[i], &q[i], &o[i], kind, 512);
			only_probs &= kind == W_PROBS;
			if (rand_token(16) == 0) {
				uint32_t off = (uint32_t)rand_token(c->vocab);

				k = c->vocab / 2 + 1;
				for (uint32_t j = 0; j < k; j++)
					ids[i][j] = (int32_t)((off + j) % c->vocab);
			} else {
				k = 1 + (uint32_t)rand_token(24);
				for (uint32_t j = 0; j < k; j++)
					ids[i][j] = pool[rand_token(POOL)];
			}
			w[i].ids = ids[i];
			w[i].n_ids = k;
			w[i].probs = probs[i];
			for (uint32_t j = 0; j < k; j++)
				if (!seen[ids[i][j]]) {
					seen[ids[i][j]] = 1;
					distinct++;
				}
		}
		memset(seen, 0, c->vocab);
		want += only_probs && distinct <= c->vocab / 2;
		r = engine_step(e, w, n);
		CHECKF(r == 0, "round %u: step of %u: %d", round, n, r);
		for (uint32_t i = 0; i < n; i++) {
			snprintf(what, sizeof(what), "random scores, round %u item %u", round, i);
			check_probs(c, what, &q[i], &w[i]);
		}
	}
	CHECKF(engine_n_score_steps(e) - sc0 == want, "%llu steps scored from the label rows, want %llu",
	       (unsigned long long)(engine_n_score_steps(e) - sc0), (unsigned long long)want);
	printf("random scores: %llu of %u steps from the label rows\n", (unsigned long long)want,
	       ROUNDS);
	seqs_free(e, q, o, N);
	free(seen);
	engine_free(e);
}

/*
 * Steps whose outputs are all probabilities skip the LM head over the
 * vocabulary: rows sharing a label set (scored in one launch), a set of its
 * own with a repeated id, a single id, and a set sharing ids with the
 * others, among rows that only prefill; then the cases that take the whole
 * LM head: a greedy token beside a score, and more distinct ids than half
 * the vocabulary.
 */
static void test_scores(struct t_ctx *c)
{
	enum { N = 8 };
	struct engine *e = engine_new(c->m, NULL);
	struct t_seq q[N];
	struct t_out o[N];
	struct engine_work w[N];
	int32_t own[4] = { c->ids[1], 7, 7, (int32_t)c->vocab - 1 }, one[1] = { 42 };
	int32_t *half[2];
	float big[2][512];
	uint32_t nh = c->vocab / 2 + 1;
	uint64_t sc;
	char what[64];
	int r;

	if (!e) {
		CHECKF(0, "engine_new: %s", strerror(errno));
		return;
	}
	seqs_new(c, e, q, o, N, 3, 11, 29);
	for (uint32_t i = 0; i < N; i++)
		work_for(c, &w[i], &q[i], &o[i], i == 6 ? 0 : W_PROBS, 512);
	w[3].ids = own;
	w[3].n_ids = 4;
	w[5].ids = one;
	w[5].n_ids = 1;
	sc = engine_n_score_steps(e);
	r = engine_step(e, w, N);
	CHECKF(r == 0, "score step: %d", r);
	CHECKF(engine_n_score_steps(e) == sc + 1, "the step did not score from the ids' rows");
	for (uint32_t i = 0; i < N; i++) {
		snprintf(what, sizeof(what), "score item %u", i);
		if (i == 6)
			CHECKF(w[i].res == 0 && !w[i].out_ready, "%s: prefill only", what);
		else
			check_probs(c, what, &q[i], &w[i]);
	}
	CHECKF(w[5].probs[0] == 1.0f, "one id: probability %g", w[5].probs[0]);

	/* A greedy token beside the scores: the whole LM head, the same results. */
	for (uint32_t i = 0; i < N; i++) {
		seq_push(c, e, &q[i], 1);
		work_for(c, &w[i], &q[i], &o[i], i == 2 ? W_NEXT | W_PROBS : W_PROBS, 512);
	}
	sc = engine_n_score_steps(e);
	r = engine_step(e, w, N);
	CHECKF(r == 0 && engine_n_score_steps(e) == sc, "step with a greedy token: %d", r);
	for (uint32_t i = 0; i < N; i++) {
		snprintf(what, sizeof(what), "beside a greedy token, item %u", i);
		check_probs(c, what, &q[i], &w[i]);
	}

	/* More distinct ids than half the vocabulary: the whole LM head. */
	half[0] = calloc(nh, sizeof(int32_t));
	half[1] = calloc(nh, sizeof(int32_t));
	if (!half[0] || !half[1] || nh > 512) {
		CHECKF(0, "id sets of %u", nh);
		goto out;
	}
	for (uint32_t i = 0; i < nh; i++) {
		half[0][i] = (int32_t)i;
		half[1][i] = (int32_t)(c->vocab - 1 - i);
	}
	for (uint32_t i = 0; i < 2; i++) {
		seq_push(c, e, &q[i], 2);
		work_for(c, &w[i], &q[i], &o[i], 0, 512);
		w[i].ids = half[i];
		w[i].n_ids = nh;
		w[i].probs = big[i];
	}
	sc = engine_n_score_steps(e);
	r = engine_step(e, w, 2);
	CHECKF(r == 0 && engine_n_score_steps(e) == sc, "step of %u distinct ids: %d", c->vocab, r);
	for (uint32_t i = 0; i < 2; i++) {
		snprintf(what, sizeof(what), "half the vocabulary, item %u", i);
		check_probs(c, what, &q[i], &w[i]);
	}
	/* Half the vocabulary or fewer distinct ids: from their rows. */
	w[0].n_ids = w[1].n_ids = c->vocab / 4;
	for (uint32_t i = 0; i < 2; i++)
		seq_push(c, e, &q[i], 1);
	sc = engine_n_score_steps(e);
	r = engine_step(e, w, 2);
	CHECKF(r == 0 && engine_n_score_steps(e) == sc + 1, "step of %u distinct ids: %d",
	       2 * (c->vocab / 4), r);
	for (uint32_t i = 0; i < 2; i++) {
		snprintf(what, sizeof(what), "a quarter of the vocabulary, item %u", i);
		check_probs(c, what, &q[i], &w[i]);
	}
out:
	free(half[0]);
	free(half[1]);
	seqs_free(e, q, o, N);
	engine_free(e);
}

/* ---- decode and chunked prefill in the same steps ------------------------------ */

/*
 * Four sequences decode one token per step (greedy, feeding back their
 * token) while four others prefill in chunks limited by their max_tokens and
 * by the step's budget of 48 tokens, taken in item order.
 */
static void test_mixed(struct t_ctx *c)
{
	enum { N_DEC = 4, N = 8, BUDGET = 48, ROUNDS = 12 };
	static const uint32_t prompt[N] = { 10, 17, 23, 31, 20, 20, 60, 10 };
	static const uint32_t max_tok[N] = { 1, 1, 1, 1, 5, 9, 100, 10 };
	static const unsigned kinds[N] = { W_NEXT, W_ALL, W_NEXT | W_PROBS, W_NEXT,
					   W_LOGITS, W_PROBS, W_NEXT, W_ALL };
	struct engine *e = engine_new(c->m, &(struct engine_params){ .max_step_tokens = BUDGET,
								     .max_batch = 16 });
	struct t_seq q[N];
	struct t_out o[N];
	struct engine_work w[N];
	bool ready[N] = { false };
	uint32_t decoded[N_DEC] = { 0 };
	char what[64];

	if (!e) {
		CHECKF(0, "engine_new: %s", strerror(errno));
		return;
	}
	for (uint32_t i = 0; i < N; i++) {
		o[i].logits = calloc(c->vocab, sizeof(float));
		seq_new(e, &q[i]);
		if (i < N_DEC)
			seq_append(c, e, &q[i], prompt[i]);
		else
			seq_push(c, e, &q[i], prompt[i]);
	}
	for (uint32_t round = 0; round < ROUNDS; round++) {
		uint32_t n = 0, budget = BUDGET, idx[N], expect[N], pending[N], sum = 0;
		int r;

		for (uint32_t i = 0; i < N; i++) {
			if (i >= N_DEC && ready[i])
				continue;
			/* Decoders take the token they decoded last round. */
			if (i < N_DEC && round)
				seq_push_tok(e, &q[i], o[i].next);
			else if (i < N_DEC)
				seq_push(c, e, &q[i], 1);
			pending[n] = engine_seq_pending(q[i].s);
			expect[n] = umin(umin(pending[n], max_tok[i]), budget);
			budget -= expect[n];
			work_for(c, &w[n], &q[i], &o[i], kinds[i], max_tok[i]);
			idx[n++] = i;
		}
		if (!n)
			break;
		r = engine_step(e, w, n);
		CHECKF(r == 0, "round %u: step of %u: %d", round, n, r);
		for (uint32_t k = 0; k < n; k++) {
			uint32_t i = idx[k];

			snprintf(what, sizeof(what), "round %u item %u (seq %u)", round, k, i);
			sum += w[k].done;
			if (!expect[k]) {
				/* Nothing left of the budget: skipped, unchanged. */
				CHECKF(w[k].res == -EAGAIN && w[k].done == 0 && !w[k].out_ready,
				       "%s: over budget: res %d, done %u", what, w[k].res, w[k].done);
				CHECKF(engine_seq_pending(q[i].s) == pending[k], "%s: pending %u, want %u",
				       what, engine_seq_pending(q[i].s), pending[k]);
				continue;
			}
			CHECKF(w[k].res == 0 && w[k].done == expect[k], "%s: res %d, done %u, want %u",
			       what, w[k].res, w[k].done, expect[k]);
			CHECKF(engine_seq_pending(q[i].s) == pending[k] - w[k].done,
			       "%s: pending %u after %u of %u", what, engine_seq_pending(q[i].s),
			       w[k].done, pending[k]);
			if (w[k].done < pending[k]) {
				CHECKF(!w[k].out_ready, "%s: outputs before the end of the history", what);
				continue;
			}
			check_outputs(c, what, &q[i], &w[k]);
			if (i < N_DEC)
				decoded[i]++;
			else
				ready[i] = true;
		}
		CHECKF(sum <= BUDGET, "round %u: %u tokens in a step of %u", round, sum, BUDGET);
		if (ready[4] && ready[5] && ready[6] && ready[7] && decoded[0] >= 4)
			break;
	}
	for (uint32_t i = 0; i < N; i++) {
		if (i < N_DEC)
			CHECKF(decoded[i] >= 4, "seq %u decoded %u tokens", i, decoded[i]);
		else
			CHECKF(ready[i], "seq %u: prefill of %u never finished", i, prompt[i]);
		engine_seq_free(e, q[i].s);
		free(o[i].logits);
	}
	engine_free(e);
}

/* ---- a long prefill over several steps ----------------------------------------- */

static void chunked(struct t_ctx *c, uint32_t step_tokens, uint32_t max_tokens, uint32_t len)
{
	struct engine *e = engine_new(c->m, &(struct engine_params){ .max_step_tokens = step_tokens });
	uint32_t chunk = umin(step_tokens, max_tokens), steps = 0, want;
	struct engine_work w;
	struct t_out o;
	struct t_seq q;
	char what[96];

	if (!e) {
		CHECKF(0, "engine_new: %s", strerror(errno));
		return;
	}
	snprintf(what, sizeof(what), "prefill %u in chunks of %u", len, chunk);
	o.logits = calloc(c->vocab, sizeof(float));
	seq_new(e, &q);
	seq_push(c, e, &q, len);
	want = (len + chunk - 1) / chunk;
	do {
		uint32_t before = engine_seq_pending(q.s);
		int r;

		work_for(c, &w, &q, &o, W_ALL, max_tokens);
		r = engine_step(e, &w, 1);
		steps++;
		CHECKF(r == 0 && w.res == 0 && w.done == umin(before, chunk),
		       "%s: step %u: %d, res %d, done %u", what, steps, r, w.res, w.done);
		CHECKF(w.out_ready == (w.done == before), "%s: step %u: out_ready %d", what, steps,
		       (int)w.out_ready);
		if (r < 0 || w.res < 0 || !w.done)
			break;
	} while (engine_seq_pending(q.s) && steps < want + 1);
	CHECKF(steps == want && engine_n_steps(e) == want, "%s: %u steps (engine %llu), want %u",
	       what, steps, (unsigned long long)engine_n_steps(e), want);
	check_computed(what, &q);
	check_outputs(c, what, &q, &w);
	engine_seq_free(e, q.s);
	free(o.logits);
	engine_free(e);
}

static void test_chunked(struct t_ctx *c)
{
	chunked(c, 64, 512, 200);  /* the step budget cuts: 64, 64, 64, 8 */
	chunked(c, 512, 7, 200);   /* the item's max_tokens cuts */
	chunked(c, 16, 16, 48);    /* chunks on page boundaries */
}

/* ---- outputs of a sequence with nothing pending -------------------------------- */

static void test_recompute(struct t_ctx *c)
{
	struct engine *e = engine_new(c->m, NULL);
	struct t_seq a, b, empty;
	struct t_out oa, ob, oe;
	struct engine_work w[3];
	int r;

	if (!e) {
		CHECKF(0, "engine_new: %s", strerror(errno));
		return;
	}
	oa.logits = calloc(c->vocab, sizeof(float));
	ob.logits = calloc(c->vocab, sizeof(float));
	oe.logits = calloc(c->vocab, sizeof(float));
	seq_new(e, &a);
	seq_new(e, &b);
	seq_new(e, &empty);
	seq_append(c, e, &a, 33);
	/* Twice: the recomputation leaves the KV as it was. */
	for (int i = 0; i < 2; i++) {
		work_for(c, &w[0], &a, &oa, W_ALL, 1);
		r = engine_step(e, w, 1);
		CHECKF(r == 0 && w[0].res == 0 && w[0].done == 1, "recompute %d: %d, res %d, done %u",
		       i, r, w[0].res, w[0].done);
		check_computed("recompute", &a);
		check_outputs(c, "recompute alone", &a, &w[0]);
	}
	/* Beside a prefill, and an empty sequence asking for outputs. */
	seq_push(c, e, &b, 21);
	work_for(c, &w[0], &b, &ob, W_PROBS, 512);
	work_for(c, &w[1], &a, &oa, W_LOGITS | W_NEXT, 512);
	work_for(c, &w[2], &empty, &oe, W_LOGITS, 512);
	r = engine_step(e, w, 3);
	CHECKF(r == 0, "recompute beside a prefill: %d", r);
	CHECKF(w[0].res == 0 && w[0].done == 21, "prefill: res %d, done %u", w[0].res, w[0].done);
	CHECKF(w[1].res == 0 && w[1].done == 1, "recompute: res %d, done %u", w[1].res, w[1].done);
	CHECKF(w[2].res == -ENODATA && w[2].done == 0 && !w[2].out_ready,
	       "empty sequence: res %d, done %u", w[2].res, w[2].done);
	check_outputs(c, "prefill beside a recompute", &b, &w[0]);
	check_outputs(c, "recompute beside a prefill", &a, &w[1]);
	check_computed("recompute beside a prefill", &a);
	/* No output wanted and nothing pending: nothing to do. */
	work_for(c, &w[0], &a, &oa, 0, 512);
	r = engine_step(e, w, 1);
	CHECKF(r == 0 && w[0].res == 0 && w[0].done == 0, "idle item: %d, res %d, done %u", r,
	       w[0].res, w[0].done);
	engine_seq_free(e, a.s);
	engine_seq_free(e, b.s);
	engine_seq_free(e, empty.s);
	free(oa.logits);
	free(ob.logits);
	free(oe.logits);
	engine_free(e);
}

/* ---- -ENOMEM for one item ------------------------------------------------------- */

/*
 * Six pages of 16 tokens. a holds 40 tokens (3 pages), b 16 (1 page): 2
 * free. b then asks for 40 more (3 more pages): -ENOMEM, while a decodes one
 * token (no new page) and c prefills 5 (the fifth page) in the same step.
 */
static void test_enomem(struct t_ctx *c)
{
	struct engine *e = engine_new(c->m, &(struct engine_params){ .kv_pages = 6,
								     .page_tokens = 16 });
	struct kv_pool *pool;
	struct t_seq a, b, cc;
	struct t_out oa, ob, oc;
	struct engine_work w[3];
	uint64_t steps;
	int r;

	if (!e) {
		CHECKF(0, "engine_new: %s", strerror(errno));
		return;
	}
	pool = engine_pool(e);
	oa.logits = calloc(c->vocab, sizeof(float));
	ob.logits = calloc(c->vocab, sizeof(float));
	oc.logits = calloc(c->vocab, sizeof(float));
	seq_new(e, &a);
	seq_new(e, &b);
	seq_new(e, &cc);
	seq_append(c, e, &a, 40);
	seq_append(c, e, &b, 16);
	CHECKF(kv_pool_n_free(pool) == 2, "free pages %u, want 2", kv_pool_n_free(pool));
	seq_push(c, e, &b, 40);
	seq_push(c, e, &a, 1);
	seq_push(c, e, &cc, 5);
	work_for(c, &w[0], &b, &ob, W_ALL, 512);
	work_for(c, &w[1], &a, &oa, W_ALL, 512);
	work_for(c, &w[2], &cc, &oc, W_PROBS, 512);
	r = engine_step(e, w, 3);
	CHECKF(r == 0, "step with one item out of KV: %d", r);
	CHECKF(w[0].res == -ENOMEM && w[0].done == 0 && !w[0].out_ready,
	       "b: res %d, done %u, out_ready %d", w[0].res, w[0].done, (int)w[0].out_ready);
	CHECKF(engine_seq_len(b.s) == 56 && engine_seq_pending(b.s) == 40 &&
	       engine_seq_kv(b.s)->n_tokens == 16 && engine_seq_kv(b.s)->n_pages == 1,
	       "b changed: len %u, pending %u, KV %u tokens in %u pages", engine_seq_len(b.s),
	       engine_seq_pending(b.s), engine_seq_kv(b.s)->n_tokens, engine_seq_kv(b.s)->n_pages);
	CHECKF(w[1].res == 0 && w[1].done == 1, "a: res %d, done %u", w[1].res, w[1].done);
	CHECKF(w[2].res == 0 && w[2].done == 5, "c: res %d, done %u", w[2].res, w[2].done);
	check_outputs(c, "a beside an -ENOMEM", &a, &w[1]);
	check_outputs(c, "c beside an -ENOMEM", &cc, &w[2]);
	CHECKF(kv_pool_n_free(pool) == 1, "free pages %u, want 1 (c took one)", kv_pool_n_free(pool));

	/* Alone, still too big: no forward pass, still unchanged. */
	engine_seq_free(e, cc.s);
	steps = engine_n_steps(e);
	work_for(c, &w[0], &b, &ob, W_ALL, 512);
	r = engine_step(e, w, 1);
	CHECKF(r == 0 && w[0].res == -ENOMEM && engine_n_steps(e) == steps,
	       "b alone, 2 free pages: %d, res %d, %llu steps", r, w[0].res,
	       (unsigned long long)(engine_n_steps(e) - steps));
	CHECKF(engine_seq_kv(b.s)->n_tokens == 16 && kv_pool_n_free(pool) == 2,
	       "b alone: KV %u tokens, %u pages free", engine_seq_kv(b.s)->n_tokens,
	       kv_pool_n_free(pool));
	/* With a's pages back, b completes, on top of the 16 positions it kept. */
	engine_seq_free(e, a.s);
	work_for(c, &w[0], &b, &ob, W_ALL, 512);
	r = engine_step(e, w, 1);
	CHECKF(r == 0 && w[0].res == 0 && w[0].done == 40, "b with room: %d, res %d, done %u", r,
	       w[0].res, w[0].done);
	check_computed("b with room", &b);
	check_outputs(c, "b after -ENOMEM", &b, &w[0]);
	engine_seq_free(e, b.s);
	CHECKF(kv_pool_n_free(pool) == 6, "pages leaked: %u of 6 free", kv_pool_n_free(pool));
	free(oa.logits);
	free(ob.logits);
	free(oc.logits);
	engine_free(e);
}

/* ---- engine_truncate, then step ------------------------------------------------- */

static void test_truncate(struct t_ctx *c)
{
	struct engine *e = engine_new(c->m, NULL);
	struct t_seq a, b;
	struct t_out oa, ob;
	struct engine_work w[2];
	int r;

	if (!e) {
		CHECKF(0, "engine_new: %s", strerror(errno));
		return;
	}
	oa.logits = calloc(c->vocab, sizeof(float));
	ob.logits = calloc(c->vocab, sizeof(float));
	seq_new(e, &a);
	seq_new(e, &b);
	seq_append(c, e, &a, 50);
	seq_append(c, e, &b, 20);

	/* Back to 30 (mid-page): the last position is recomputed in a batch. */
	CHECKF(engine_truncate(e, a.s, 30) == 0, "truncate to 30");
	a.len = 30;
	check_computed("truncated to 30", &a);
	seq_push(c, e, &b, 1);
	work_for(c, &w[0], &a, &oa, W_ALL, 512);
	work_for(c, &w[1], &b, &ob, W_PROBS, 512);
	r = engine_step(e, w, 2);
	CHECKF(r == 0 && w[0].res == 0 && w[0].done == 1 && w[1].res == 0 && w[1].done == 1,
	       "after truncate: %d, res %d/%d, done %u/%u", r, w[0].res, w[1].res, w[0].done,
	       w[1].done);
	check_outputs(c, "truncated to 30", &a, &w[0]);
	check_outputs(c, "beside a truncated one", &b, &w[1]);

	/* Back to 12, then different tokens. */
	CHECKF(engine_truncate(e, a.s, 12) == 0, "truncate to 12");
	a.len = 12;
	seq_push(c, e, &a, 7);
	work_for(c, &w[0], &a, &oa, W_ALL, 512);
	r = engine_step(e, w, 1);
	CHECKF(r == 0 && w[0].res == 0 && w[0].done == 7, "re-append: %d, res %d, done %u", r,
	       w[0].res, w[0].done);
	check_computed("truncated to 12, 7 new", &a);
	check_outputs(c, "truncated to 12, 7 new", &a, &w[0]);

	/* Tokens pushed and not computed, truncated away: nothing pending. */
	seq_push(c, e, &a, 9);
	CHECKF(engine_seq_pending(a.s) == 9, "pending %u, want 9", engine_seq_pending(a.s));
	CHECKF(engine_truncate(e, a.s, 19) == 0, "truncate the pending tokens");
	a.len = 19;
	check_computed("pending truncated", &a);
	work_for(c, &w[0], &a, &oa, W_LOGITS, 512);
	r = engine_step(e, w, 1);
	CHECKF(r == 0 && w[0].res == 0 && w[0].done == 1, "after dropping pending: %d, res %d",
	       r, w[0].res);
	check_outputs(c, "pending truncated", &a, &w[0]);

	/* To nothing, then a fresh start. */
	CHECKF(engine_truncate(e, a.s, 0) == 0, "truncate to 0");
	a.len = 0;
	CHECKF(engine_truncate(e, a.s, 1) == -EINVAL, "truncate past the end");
	seq_push(c, e, &a, 3);
	work_for(c, &w[0], &a, &oa, W_ALL, 512);
	r = engine_step(e, w, 1);
	CHECKF(r == 0 && w[0].res == 0 && w[0].done == 3, "from empty: %d, res %d", r, w[0].res);
	check_outputs(c, "truncated to 0, 3 new", &a, &w[0]);
	engine_seq_free(e, a.s);
	engine_seq_free(e, b.s);
	free(oa.logits);
	free(ob.logits);
	engine_free(e);
}

/* ---- arguments ------------------------------------------------------------------ */

static void test_args(struct t_ctx *c)
{
	enum { N = 5 };
	struct engine *e = engine_new(c->m, &(struct engine_params){ .max_batch = 4,
								     .max_step_tokens = 64 });
	struct engine *e2 = engine_new(c->m, &(struct engine_params){ .max_batch = 8,
								      .max_step_tokens = 2 });
	int32_t bad_ids[N_IDS] = { 0, 1, 2, 3, (int32_t)c->vocab };
	struct t_seq q[N];
	struct t_out o[N];
	struct engine_work w[N];
	int r;

	if (!e || !e2) {
		CHECKF(0, "engine_new: %s", strerror(errno));
		goto out;
	}
	CHECKF(engine_max_batch(e) == 4, "max_batch %u", engine_max_batch(e));
	CHECKF(engine_max_batch(e2) == 2, "max_batch %u: not capped by max_step_tokens",
	       engine_max_batch(e2));
	seqs_new(c, e, q, o, N, 3, 0, 1);
	for (uint32_t i = 0; i < N; i++)
		work_for(c, &w[i], &q[i], &o[i], W_NEXT, 8);
	r = engine_step(e, w, N);
	CHECKF(r == -EINVAL, "n %d > max_batch 4: %d", N, r);
	CHECKF(engine_step(e, w, 0) == -EINVAL, "n 0");
	CHECKF(engine_step(e, NULL, 1) == -EINVAL, "w NULL");
	CHECKF(engine_n_steps(e) == 0, "a refused step ran: %llu steps",
	       (unsigned long long)engine_n_steps(e));
	for (uint32_t i = 0; i < N; i++)
		CHECKF(engine_seq_pending(q[i].s) == 3 && engine_seq_kv(q[i].s)->n_tokens == 0,
		       "seq %u touched by a refused step", i);

	/* Bad items fail alone: max_tokens 0, an id outside the vocabulary. */
	w[1].max_tokens = 0;
	w[2].ids = bad_ids;
	w[2].n_ids = N_IDS;
	w[2].probs = o[2].probs;
	r = engine_step(e, w, 4);
	CHECKF(r == 0, "step of 4 with two bad items: %d", r);
	CHECKF(w[1].res == -EINVAL && w[1].done == 0, "max_tokens 0: res %d", w[1].res);
	CHECKF(w[2].res == -EINVAL && w[2].done == 0, "bad id: res %d", w[2].res);
	CHECKF(engine_seq_pending(q[1].s) == 3 && engine_seq_pending(q[2].s) == 3,
	       "bad items computed");
	CHECKF(w[0].res == 0 && w[0].done == 3 && w[3].res == 0 && w[3].done == 3,
	       "good items: res %d/%d, done %u/%u", w[0].res, w[3].res, w[0].done, w[3].done);
	check_outputs(c, "beside bad items (0)", &q[0], &w[0]);
	check_outputs(c, "beside bad items (3)", &q[3], &w[3]);
	seqs_free(e, q, o, N);
out:
	engine_free(e2);
	engine_free(e);
}

int main(int argc, char **argv)
{
	struct kern_backend *be = NULL;
	struct t_ctx c = { 0 };
	char err[512] = "";

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 2) {
		fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
		return 1;
	}
	be = kern_backend_new("cpu", 0, 0);
	if (!be) {
		fprintf(stderr, "kern_backend_new(cpu): %s\n", strerror(errno));
		return 1;
	}
	c.m = model_load(argv[1], be, err, sizeof(err));
	if (!c.m) {
		fprintf(stderr, "model_load %s: %s (%s)\n", argv[1], err, strerror(errno));
		kern_backend_free(be);
		return 1;
	}
	c.vocab = c.m->cfg.vocab_size;
	c.ids[0] = 0;
	c.ids[1] = 3;
	c.ids[2] = (int32_t)c.vocab - 1;
	c.ids[3] = 17;
	c.ids[4] = (int32_t)c.vocab / 2;
	c.ref = engine_new(c.m, &(struct engine_params){ .score_full_head = true });
	c.ref_logits = calloc(c.vocab, sizeof(float));
	if (!c.ref || !c.ref_logits) {
		fprintf(stderr, "engine_new: %s\n", strerror(errno));
		return 1;
	}
	printf("engine_step on %s (%s, vocab %u)\n", argv[1], c.m->cfg.arch_name, c.vocab);
	rng_state = 12345;
	test_batch(&c);
	test_scores(&c);
	test_scores_random(&c);
	test_mixed(&c);
	test_chunked(&c);
	test_recompute(&c);
	test_enomem(&c);
	test_truncate(&c);
	test_args(&c);
	printf("largest logit difference: %.3e of max|logit| (bound %.0e)\n", c.worst, SAME_RTOL);
	free(c.ref_logits);
	engine_free(c.ref);
	model_free(c.m);
	kern_backend_free(be);
	return mt_done("test_engine_step");
}

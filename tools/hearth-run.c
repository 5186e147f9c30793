/* SPDX-License-Identifier: MIT */
/*
 * hearth-run: load a model on a backend, append token ids, greedy-generate,
 * print the tokens with timings, and optionally write every step's
 * last-position logits (little-endian float32, vocab_size per step) for
 * comparison with other implementations.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "hearth_config.h"
#include "hr_common.h"
#include "hr_log.h"

struct run_opts {
	const char *model_dir;
	const char *tokens;
	const char *logits_path;
	const char *backend;
	uint32_t generate;
	int threads;
	int device;
	uint32_t step_tokens;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: hearth-run [--model DIR] --tokens \"1 2 3\" [--generate N] [--logits FILE]\n"
		"                  [--backend auto|cpu|cuda] [--device N] [--threads N] [--step-tokens N]\n"
		"\n"
		"Appends the token ids to a new sequence, greedy-generates N tokens and prints\n"
		"them with timings. --logits FILE writes the last-position logits of every step\n"
		"(the prompt, then each generated token) as little-endian float32, vocab_size\n"
		"floats per step. The default model is the embedded tiny model:\n  %s\n",
		HEARTH_TINY_MODEL);
}

static int parse_u32(const char *s, uint32_t max, uint32_t *ret)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > max || s[0] == '-')
		return -EINVAL;
	*ret = (uint32_t)v;
	return 0;
}

/* Parse whitespace- or comma-separated token ids. */
static int parse_tokens(const char *s, int32_t **ret, uint32_t *ret_n)
{
	_cleanup_free_ int32_t *ids = NULL;
	uint32_t n = 0, cap = 0;

	while (*s) {
		char *end;
		long v;

		if (*s == ' ' || *s == ',' || *s == '\t' || *s == '\n') {
			s++;
			continue;
		}
		errno = 0;
		v = strtol(s, &end, 10);
		if (errno || end == s || v < 0 || v > INT32_MAX)
			return -EINVAL;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			int32_t *p = realloc(ids, cap * sizeof(int32_t));
			if (!p)
				return -ENOMEM;
			ids = p;
		}
		ids[n++] = (int32_t)v;
		s = end;
	}
	if (!n)
		return -EINVAL;
	*ret = TAKE_PTR(ids);
	*ret_n = n;
	return 0;
}

struct gen_state {
	FILE *logits;
	uint32_t vocab;
	int err;
};

static int on_token(void *userdata, uint32_t i, int32_t token, const float *logits)
{
	struct gen_state *g = userdata;

	(void)i;
	(void)token;
	if (g->logits && fwrite(logits, sizeof(float), g->vocab, g->logits) != g->vocab) {
		g->err = -errno;
		return g->err ? g->err : -EIO;
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct run_opts *o)
{
	static const struct option longopts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "tokens", required_argument, NULL, 't' },
		{ "generate", required_argument, NULL, 'g' },
		{ "logits", required_argument, NULL, 'l' },
		{ "backend", required_argument, NULL, 'b' },
		{ "device", required_argument, NULL, 'd' },
		{ "threads", required_argument, NULL, 'j' },
		{ "step-tokens", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{}
	};
	uint32_t v;
	int c;

	*o = (struct run_opts){ .model_dir = HEARTH_TINY_MODEL, .backend = "auto" };
	while ((c = getopt_long(argc, argv, "m:t:g:l:b:d:j:s:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'm': o->model_dir = optarg; break;
		case 't': o->tokens = optarg; break;
		case 'l': o->logits_path = optarg; break;
		case 'b': o->backend = optarg; break;
		case 'g':
			if (parse_u32(optarg, 1u << 20, &o->generate) < 0)
				goto bad;
			break;
		case 'd':
			if (parse_u32(optarg, 64, &v) < 0)
				goto bad;
			o->device = (int)v;
			break;
		case 'j':
			if (parse_u32(optarg, 1024, &v) < 0)
				goto bad;
			o->threads = (int)v;
			break;
		case 's':
			if (parse_u32(optarg, 1u << 16, &o->step_tokens) < 0 || !o->step_tokens)
				goto bad;
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -EINVAL;
		}
		continue;
bad:
		fprintf(stderr, "hearth-run: invalid value '%s' for -%c\n", optarg, c);
		return -EINVAL;
	}
	if (optind < argc) {
		fprintf(stderr, "hearth-run: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	if (!o->tokens) {
		fprintf(stderr, "hearth-run: --tokens is required\n");
		usage(stderr);
		return -EINVAL;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct run_opts o;
	struct kern_backend *be = NULL;
	struct model *m = NULL;
	struct engine *e = NULL;
	struct engine_seq *s = NULL;
	_cleanup_free_ int32_t *prompt = NULL, *out = NULL;
	_cleanup_free_ float *logits = NULL;
	struct gen_state g = { 0 };
	char err[512] = "";
	uint32_t n_prompt;
	uint64_t t0, t1, t2;
	int r, rc = 1;

	if (parse_args(argc, argv, &o) < 0)
		return 2;
	r = parse_tokens(o.tokens, &prompt, &n_prompt);
	if (r < 0) {
		hr_err("--tokens: expected non-negative integer ids separated by spaces or commas");
		return 2;
	}
	be = kern_backend_new(o.backend, o.device, o.threads);
	if (!be) {
		hr_err("backend '%s': %s", o.backend,
		       errno == ENODEV ? "not available in this build or on this machine"
				       : strerror(errno));
		return 1;
	}
	m = model_load(o.model_dir, be, err, sizeof(err));
	if (!m) {
		hr_err("cannot load model: %s", err[0] ? err : strerror(errno));
		goto out;
	}
	printf("model   %s (%s, %u layers, hidden %u, vocab %u, %.1f MB as %s)\n", o.model_dir,
	       m->cfg.arch_name, m->cfg.n_layers, m->cfg.hidden_size, m->cfg.vocab_size,
	       (double)m->weight_bytes / 1e6, kern_dtype_name(m->cfg.torch_dtype));
	printf("backend %s%s%s, loaded in %.1f ms\n", be->name, be->device_name[0] ? " " : "",
	       be->device_name, m->load_seconds * 1e3);
	e = engine_new(m, &(struct engine_params){ .max_step_tokens = o.step_tokens });
	s = e ? engine_seq_new(e) : NULL;
	out = calloc(o.generate + 1, sizeof(int32_t));
	logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
	if (!e || !s || !out || !logits) {
		hr_err("cannot set up the engine: %s", strerror(errno ? errno : ENOMEM));
		goto out;
	}
	if (o.logits_path) {
		g.logits = fopen(o.logits_path, "wb");
		if (!g.logits) {
			hr_err("--logits %s: %s", o.logits_path, strerror(errno));
			goto out;
		}
	}
	g.vocab = m->cfg.vocab_size;

	t0 = hr_now_ns();
	r = engine_append(e, s, prompt, n_prompt);
	t1 = hr_now_ns();
	if (r < 0) {
		hr_err("append of %u tokens: %s", n_prompt,
		       r == -EINVAL ? "a token id is outside the vocabulary" : strerror(-r));
		goto out;
	}
	r = engine_generate(e, s, o.generate, out, on_token, &g, g.logits != NULL);
	t2 = hr_now_ns();
	if (r < 0) {
		hr_err("generate: %s", strerror(-r));
		goto out;
	}
	if (g.logits) {
		/* The last row: logits after the last generated token. */
		r = engine_logits(e, s, logits, g.vocab);
		if (r < 0 || fwrite(logits, sizeof(float), g.vocab, g.logits) != g.vocab ||
		    fclose(g.logits) != 0) {
			g.logits = NULL;
			hr_err("--logits %s: write failed", o.logits_path);
			goto out;
		}
		g.logits = NULL;
	}
	printf("prompt  %u tokens in %.2f ms (%.0f tokens/s)\n", n_prompt, (t1 - t0) / 1e6,
	       n_prompt / ((t1 - t0) / 1e9));
	printf("output ");
	for (uint32_t i = 0; i < o.generate; i++)
		printf(" %d", out[i]);
	printf("\n");
	if (o.generate)
		printf("decode  %u tokens in %.2f ms (%.3f ms/token, %.0f tokens/s)\n", o.generate,
		       (t2 - t1) / 1e6, (t2 - t1) / 1e6 / o.generate,
		       o.generate / ((t2 - t1) / 1e9));
	if (o.logits_path)
		printf("logits  %u rows x %u floats -> %s\n", o.generate + 1, m->cfg.vocab_size,
		       o.logits_path);
	rc = 0;
out:
	if (g.logits)
		fclose(g.logits);
	if (e) {
		engine_seq_free(e, s);
		engine_free(e);
	}
	model_free(m);
	kern_backend_free(be);
	return rc;
}

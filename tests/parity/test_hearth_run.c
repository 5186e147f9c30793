/* SPDX-License-Identifier: MIT */
/*
 * hearth-run against transformers: run the tool on a fixture's prompt with
 * --generate 15 --logits FILE, and check its output tokens and every row of
 * the logits file (the prompt's last position, then one row after each
 * generated token) against the reference greedy rows.
 * usage: test_hearth_run HEARTH_RUN FIXTURE.json MODEL_DIR
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define STEPS 15

static char *slurp(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
		buf[n] = 0;
		*ret_len = (size_t)n;
	} else {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

int main(int argc, char **argv)
{
	char logits_path[] = "/tmp/hearth-run-logits-XXXXXX", bin_path[4096], out[8192] = "";
	char *json, *tokens, *ref, *got, *p;
	size_t json_len, ref_len, got_len, n_chunks, vocab, off = 0;
	cJSON *root, *prompt, *greedy;
	int pipefd[2], status, fails = 0;
	double worst = 0;
	pid_t pid;

	if (argc != 4) {
		fprintf(stderr, "usage: %s HEARTH_RUN FIXTURE.json MODEL_DIR\n", argv[0]);
		return 2;
	}
	json = slurp(argv[2], &json_len);
	root = json ? cJSON_Parse(json) : NULL;
	prompt = cJSON_GetObjectItem(root, "prompt");
	greedy = cJSON_GetObjectItem(root, "greedy_tokens");
	if (!root || !cJSON_IsArray(prompt) || !cJSON_IsArray(greedy)) {
		fprintf(stderr, "%s: not a parity fixture\n", argv[2]);
		return 1;
	}
	vocab = (size_t)cJSON_GetObjectItem(root, "vocab_size")->valueint;
	n_chunks = (size_t)cJSON_GetArraySize(cJSON_GetObjectItem(root, "chunks"));
	snprintf(bin_path, sizeof(bin_path), "%.*s.bin", (int)(strlen(argv[2]) - 5), argv[2]);
	ref = slurp(bin_path, &ref_len);
	if (!ref || ref_len != (n_chunks + 16) * vocab * 4) {
		fprintf(stderr, "%s: missing or wrong size\n", bin_path);
		return 1;
	}
	tokens = malloc((size_t)cJSON_GetArraySize(prompt) * 12 + 1);
	p = tokens;
	for (cJSON *t = prompt->child; t; t = t->next)
		p += sprintf(p, "%d ", t->valueint);
	close(mkstemp(logits_path));

	if (pipe(pipefd) < 0)
		return 1;
	pid = fork();
	if (pid == 0) {
		dup2(pipefd[1], 1);
		execl(argv[1], argv[1], "--backend", "cpu", "--model", argv[3], "--tokens", tokens,
		      "--generate", "15", "--logits", logits_path, (char *)NULL);
		_exit(127);
	}
	close(pipefd[1]);
	for (ssize_t n; (n = read(pipefd[0], out + off, sizeof(out) - 1 - off)) > 0;)
		off += (size_t)n;
	out[off] = 0;
	waitpid(pid, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "hearth-run failed:\n%s", out);
		return 1;
	}
	/* Tokens: the "output" line equals the first 15 greedy tokens. */
	p = strstr(out, "output");
	for (int i = 0; i < STEPS; i++) {
		long tok = p ? strtol(p + (i ? 0 : 6), &p, 10) : -1;
		if (tok != cJSON_GetArrayItem(greedy, i)->valueint) {
			fprintf(stderr, "token %d: hearth-run %ld, transformers %d\n", i, tok,
				cJSON_GetArrayItem(greedy, i)->valueint);
			fails++;
		}
	}
	/* Logits: rows 0..15 equal the reference greedy rows. */
	got = slurp(logits_path, &got_len);
	unlink(logits_path);
	if (!got || got_len != (STEPS + 1) * vocab * 4) {
		fprintf(stderr, "logits file: %zu bytes, want %zu\n", got ? got_len : 0,
			(STEPS + 1) * vocab * 4);
		return 1;
	}
	for (size_t r = 0; r <= STEPS; r++) {
		const float *g = (const float *)got + r * vocab;
		const float *w = (const float *)ref + (n_chunks + r) * vocab;
		float mx = 0, d = 0;

		for (size_t j = 0; j < vocab; j++) {
			mx = fmaxf(mx, fabsf(w[j]));
			d = fmaxf(d, fabsf(g[j] - w[j]));
		}
		worst = fmax(worst, d / mx);
		if (d > 1e-4f * mx) {
			fprintf(stderr, "row %zu: max|diff| %g > 1e-4 * %g\n", r, d, mx);
			fails++;
		}
	}
	printf("hearth-run: %d tokens and %d logit rows checked, worst max|diff| / max|logit| %.2e "
	       "(bound 1e-4): %s\n", STEPS, STEPS + 1, worst, fails ? "FAIL" : "ok");
	free(got);
	free(ref);
	free(tokens);
	free(json);
	cJSON_Delete(root);
	return fails ? 1 : 0;
}

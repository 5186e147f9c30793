/* SPDX-License-Identifier: MIT */
/*
 * The reference: the same model run in-process through the engine API, to
 * compare the daemon's scores and generated tokens with. Same code, same
 * backend, so results agree to rounding (thread counts may change BLAS
 * summation order).
 */
#ifndef TH_REF_H
#define TH_REF_H

#include <stdint.h>

#include "engine.h"

struct ref {
	struct kern_backend *be;
	struct model *m;
	struct engine *e;
};

/* Load the model on the CPU backend with the daemon's default engine
 * parameters. Fatal on failure. */
void ref_init(struct ref *r, const char *model_dir);
/* The same with a KV pool of kv_pages pages (0: the engine's default, 128
 * pages of 16 tokens for the tiny model), for references holding many or
 * long sequences at once. */
void ref_init_kv(struct ref *r, const char *model_dir, uint32_t kv_pages);
void ref_fini(struct ref *r);

/* One-call helpers on a fresh sequence: append each chunk (as the daemon
 * would, chunk by chunk), then probabilities / greedy tokens. */
struct engine_seq *ref_seq(struct ref *r);
void ref_append(struct ref *r, struct engine_seq *s, const int32_t *tok, uint32_t n);
void ref_probs(struct ref *r, struct engine_seq *s, const int32_t *labels, uint32_t n, float *out);
/* Greedy tokens as the daemon streams them: stops after eos (included). */
uint32_t ref_generate(struct ref *r, struct engine_seq *s, uint32_t max, int32_t *out);
int32_t ref_eos(const struct ref *r);

#endif

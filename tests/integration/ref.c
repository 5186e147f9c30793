/* SPDX-License-Identifier: MIT */
/* The in-process reference engine (see ref.h). */
#include <errno.h>
#include <string.h>

#include "harness.h"
#include "ref.h"

void ref_init(struct ref *r, const char *model_dir)
{
	ref_init_kv(r, model_dir, 0);
}

void ref_init_kv(struct ref *r, const char *model_dir, uint32_t kv_pages)
{
	char err[512] = "";

	memset(r, 0, sizeof(*r));
	r->be = kern_backend_new("cpu", 0, 0);
	REQUIRE(r->be, "cpu backend: %s", strerror(errno));
	r->m = model_load(model_dir, r->be, err, sizeof(err));
	REQUIRE(r->m, "model_load %s: %s", model_dir, err);
	r->e = engine_new(r->m, &(struct engine_params){ .kv_pages = kv_pages, .page_tokens = 16,
							  .max_step_tokens = 512 });
	REQUIRE(r->e, "engine_new: %s", strerror(errno));
}

void ref_fini(struct ref *r)
{
	engine_free(r->e);
	model_free(r->m);
	kern_backend_free(r->be);
	memset(r, 0, sizeof(*r));
}

struct engine_seq *ref_seq(struct ref *r)
{
	struct engine_seq *s = engine_seq_new(r->e);

	REQUIRE(s, "engine_seq_new");
	return s;
}

void ref_append(struct ref *r, struct engine_seq *s, const int32_t *tok, uint32_t n)
{
	int rc;

	if (!n)
		return;
	rc = engine_append(r->e, s, tok, n);
	REQUIRE(rc == 0, "reference engine_append of %u tokens: %d", n, rc);
}

void ref_probs(struct ref *r, struct engine_seq *s, const int32_t *labels, uint32_t n, float *out)
{
	int rc = engine_probs(r->e, s, labels, n, out);

	REQUIRE(rc == 0, "reference engine_probs: %d", rc);
}

int32_t ref_eos(const struct ref *r)
{
	return r->m->cfg.eos_token_id;
}

uint32_t ref_generate(struct ref *r, struct engine_seq *s, uint32_t max, int32_t *out)
{
	uint32_t i;

	for (i = 0; i < max;) {
		int rc = engine_generate(r->e, s, 1, &out[i], NULL, NULL, 0);

		REQUIRE(rc == 0, "reference engine_generate: %d", rc);
		if (out[i++] == ref_eos(r))
			break;
	}
	return i;
}

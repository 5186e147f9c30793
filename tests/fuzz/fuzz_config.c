/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: model_config_parse on arbitrary bytes. On success,
 * checks the bounds model.h promises and that the RoPE frequencies derived
 * from the config are finite and positive.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct model_config c;
	char err[512];
	float *inv;
	uint32_t i;

	if (model_config_parse((const char *)data, size, &c, err, sizeof(err)) < 0) {
		if (strlen(err) == 0)
			abort();
		return 0;
	}
	if (c.vocab_size == 0 || c.vocab_size > (1u << 22) || c.n_layers == 0 ||
	    c.n_layers > 1024 || c.hidden_size == 0 || c.hidden_size > (1u << 20) ||
	    c.n_kv_heads == 0 || c.n_heads % c.n_kv_heads != 0 || c.head_dim == 0 ||
	    c.head_dim % 2 != 0 || c.intermediate_size == 0 || !(c.rms_norm_eps > 0) ||
	    !(c.rope_theta > 0) || isinf(c.rope_theta))
		abort();
	inv = malloc(c.head_dim / 2 * sizeof(float));
	if (!inv)
		return 0;
	model_rope_inv_freq(&c, inv);
	for (i = 0; i < c.head_dim / 2; i++)
		if (!(inv[i] > 0) || !isfinite(inv[i]))
			abort();
	free(inv);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: st_parse on arbitrary bytes. On success, checks the
 * invariants the loader relies on (each tensor inside the data section,
 * sorted, not overlapping, bytes = elements x dtype size, findable by name)
 * and touches the first and last byte of every tensor.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *end = data + size, *prev_end = NULL;
	struct st_file f;
	char err[512];
	uint32_t i;

	if (st_parse(data, size, "fuzz.safetensors", &f, err, sizeof(err)) < 0) {
		if (strlen(err) == 0)
			abort(); /* every failure explains itself */
		return 0;
	}
	for (i = 0; i < f.n_tensors; i++) {
		const struct st_tensor *t = &f.tensors[i];
		const uint8_t *b = t->data;
		uint64_t n = 1, es = t->dtype == KERN_F32 ? 4 : 2;

		for (uint32_t d = 0; d < t->n_dims; d++)
			n *= t->shape[d];
		if (b < data + 8 || b > end || t->n_bytes > (uint64_t)(end - b) || n != t->n_elems ||
		    t->n_bytes != n * es || t->n_dims > ST_MAX_DIMS || st_find(&f, t->name) != t)
			abort();
		if (t->n_bytes) {
			if (prev_end && b < prev_end)
				abort();
			prev_end = b + t->n_bytes;
			sink ^= b[0] ^ b[t->n_bytes - 1];
		}
	}
	st_close(&f);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: what a hostile client controls in its shared region.
 * The input's first 64 bytes are a submission descriptor checked with
 * shm_sqe_validate; when it passes, every range it names must lie inside the
 * arena. The whole input is then offered to shm_region_attach_check as a
 * region header, whose accepted layouts must lie inside the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct shm_sqe sqe;
	struct shm_layout lay;
	uint32_t arena = 1u << 16;

	if (size >= sizeof(sqe)) {
		memcpy(&sqe, data, sizeof(sqe));
		if (shm_sqe_validate(&sqe, arena) == 0 &&
		    ((uint64_t)sqe.in_off + sqe.in_len > arena ||
		     (uint64_t)sqe.out_off + sqe.out_cap > arena ||
		     (uint64_t)sqe.aux_off + sqe.aux_len > arena || sqe.op >= SHM_OP__MAX))
			abort();
	}
	/* attach_check wants 128-byte aligned memory, as a mapping is. */
	if (size >= sizeof(struct shm_region_hdr)) {
		void *mem = aligned_alloc(4096, (size + 4095) & ~(size_t)4095);
		if (!mem)
			return 0;
		memcpy(mem, data, size);
		if (shm_region_attach_check(mem, size, &lay) == 0 &&
		    (lay.total_size > size || lay.arena_off + lay.arena_size > lay.total_size ||
		     lay.sq_off < sizeof(struct shm_region_hdr)))
			abort();
		free(mem);
	}
	return 0;
}

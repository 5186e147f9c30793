/* SPDX-License-Identifier: MIT */
/*
 * Validation of submission descriptors: what each op accepts, checked on the
 * daemon's private copy before anything else looks at it. One table says
 * which ranges and args an op uses; a few per-op rules follow.
 */
#include <errno.h>

#include "hr_common.h"
#include "shm_proto.h"

enum range_use { R_NONE, R_OPT, R_REQ };

struct op_spec {
	const char *name;
	uint8_t in, aux, out;  /* enum range_use */
	uint8_t aux_unit;      /* alignment and length granule of aux in bytes */
	uint8_t n_args;        /* arg[n_args..] must be zero */
	uint8_t no_session;    /* session must be 0 */
};

#define TOKEN_BYTES 4u /* u32 token and label ids, f32 scores */

static const struct op_spec op_specs[SHM_OP__MAX] = {
	[SHM_OP_NOP]           = { "nop", R_NONE, R_NONE, R_NONE, 1, 0, 1 },
	[SHM_OP_SESSION_OPEN]  = { "session_open", R_NONE, R_OPT, R_NONE, 1, 1, 1 },
	[SHM_OP_SESSION_CLOSE] = { "session_close", R_NONE, R_NONE, R_NONE, 1, 1, 0 },
	[SHM_OP_APPEND]        = { "append", R_REQ, R_NONE, R_NONE, 1, 0, 0 },
	[SHM_OP_SCORE]         = { "score", R_OPT, R_REQ, R_REQ, TOKEN_BYTES, 1, 0 },
	[SHM_OP_GENERATE]      = { "generate", R_OPT, R_NONE, R_REQ, 1, 4, 0 },
	[SHM_OP_TRUNCATE]      = { "truncate", R_NONE, R_NONE, R_NONE, 1, 1, 0 },
	[SHM_OP_FORK]          = { "fork", R_NONE, R_NONE, R_NONE, 1, 0, 0 },
	[SHM_OP_CANCEL]        = { "cancel", R_NONE, R_NONE, R_NONE, 1, 2, 1 },
};

const char *shm_op_name(unsigned int op)
{
	return op < SHM_OP__MAX ? op_specs[op].name : "?";
}

/* Shape of one range: (0, 0) means unused; otherwise the op must use it, and
 * it is aligned to unit and a multiple of unit long. */
static int check_shape(uint32_t off, uint32_t len, enum range_use use, uint32_t unit)
{
	if (len == 0)
		return off != 0 || use == R_REQ ? -EINVAL : 0;
	if (use == R_NONE || (off | len) & (unit - 1))
		return -EINVAL;
	return 0;
}

/* Placement: inside the arena, with off + len computed in 64 bits so that
 * off = 0xfffffff0, len = 0x20 cannot wrap to a small end. */
static int check_place(uint32_t off, uint32_t len, uint32_t arena_size)
{
	return (uint64_t)off + len > arena_size ? -ERANGE : 0;
}

static int check_op_rules(const struct shm_sqe *s)
{
	switch (s->op) {
	case SHM_OP_SESSION_OPEN:
		if (s->aux_len > SHM_SESSION_NAME_MAX || s->arg[0] & ~SHM_OPEN_F__ALL)
			return -EINVAL;
		/* Create/exclusive only mean something for a named session. */
		if (s->aux_len == 0 && s->arg[0] & ~SHM_OPEN_F_BULK)
			return -EINVAL;
		return 0;
	case SHM_OP_SESSION_CLOSE:
		return s->arg[0] & ~SHM_CLOSE_F__ALL ? -EINVAL : 0;
	case SHM_OP_SCORE:
		if (s->arg[0] & ~SHM_SCORE_F__ALL)
			return -EINVAL;
		/* One f32 per label id. */
		return s->out_cap < s->aux_len ? -EINVAL : 0;
	case SHM_OP_CANCEL:
		/* Cancel has no deadline and no class of its own. */
		return s->flags || s->deadline_ns ? -EINVAL : 0;
	case SHM_OP_GENERATE:
		if (s->arg[0] == 0)
			return -EINVAL;
		/* One u32 token id per generated token, in 64 bits. */
		return (uint64_t)s->arg[0] * TOKEN_BYTES > s->out_cap ? -EINVAL : 0;
	default:
		return 0;
	}
}

int shm_sqe_validate(const struct shm_sqe *s, uint32_t arena_size)
{
	const struct op_spec *spec;
	int r;

	if (!s || s->op >= SHM_OP__MAX)
		return -EINVAL;
	if (s->op == SHM_OP_FORK)
		return -EOPNOTSUPP;
	spec = &op_specs[s->op];
	if (s->flags & ~SHM_SQE_F__ALL || s->reserved0 ||
	    (s->flags & SHM_SQE_F_LATENCY && s->flags & SHM_SQE_F_BULK))
		return -EINVAL;
	if (spec->no_session && s->session)
		return -EINVAL;
	for (unsigned int i = spec->n_args; i < HR_ARRAY_SIZE(s->arg); i++)
		if (s->arg[i])
			return -EINVAL;

	/* Shape first (-EINVAL), then placement (-ERANGE): a malformed
	 * descriptor is reported as malformed wherever its ranges point. */
	r = check_shape(s->in_off, s->in_len, spec->in, TOKEN_BYTES);
	if (r == 0)
		r = check_shape(s->aux_off, s->aux_len, spec->aux, spec->aux_unit);
	if (r == 0)
		r = check_shape(s->out_off, s->out_cap, spec->out, TOKEN_BYTES);
	if (r == 0)
		r = check_op_rules(s);
	if (r == 0)
		r = check_place(s->in_off, s->in_len, arena_size);
	if (r == 0)
		r = check_place(s->aux_off, s->aux_len, arena_size);
	if (r == 0)
		r = check_place(s->out_off, s->out_cap, arena_size);
	return r;
}

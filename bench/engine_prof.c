/* SPDX-License-Identifier: MIT */
/*
 * Op-by-op profile for hearth-bench-engine (--profile): the backend's ops
 * table is swapped for one whose compute operations each synchronise, run
 * the real operation PROF_REPS times back to back, synchronise again and add
 * the time to a table keyed by operation and shape. Graphs are hidden
 * meanwhile (graph_launch NULL), since a capture cannot synchronise. Every
 * compute operation of struct kern_ops must be wrapped here, or its time is
 * missing from the sum.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine_prof.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Repeating an op in place only changes values, never shapes. */
#define PROF_REPS 10
#define PROF_MAX 48

static const struct kern_ops *prof_real;
static struct kern_backend *prof_be;
static struct prof_entry {
	char name[64];
	double ns;
	unsigned calls;
} prof[PROF_MAX];
static unsigned prof_n;

static void prof_add(const char *name, uint64_t ns)
{
	unsigned i;

	for (i = 0; i < prof_n; i++)
		if (!strcmp(prof[i].name, name))
			break;
	if (i == prof_n) {
		if (prof_n == PROF_MAX)
			return;
		snprintf(prof[prof_n++].name, sizeof(prof[0].name), "%s", name);
	}
	prof[i].ns += (double)ns / PROF_REPS;
	prof[i].calls++;
}

#define PROF_RUN(name, call)                                                                   \
	do {                                                                                   \
		uint64_t _t0;                                                                  \
		int _r = prof_real->sync(be);                                                  \
		_t0 = now_ns();                                                                \
		for (int _i = 0; _i < PROF_REPS && _r >= 0; _i++)                              \
			_r = (call);                                                           \
		if (_r >= 0)                                                                   \
			_r = prof_real->sync(be);                                              \
		prof_add(name, now_ns() - _t0);                                                \
		return _r;                                                                     \
	} while (0)

static char prof_name[64];

static int p_embed(struct kern_backend *be, void *out, const void *table, const int32_t *ids,
		   uint32_t n, uint32_t dim, uint32_t vocab)
{
	PROF_RUN("embed", prof_real->embed(be, out, table, ids, n, dim, vocab));
}

static int p_add_rmsnorm(struct kern_backend *be, void *out, void *resid, const void *add,
			 const void *weight, uint32_t n, uint32_t dim, float eps)
{
	PROF_RUN("add_rmsnorm", prof_real->add_rmsnorm(be, out, resid, add, weight, n, dim, eps));
}

static int p_matmul(struct kern_backend *be, void *out, const void *in, const void *w,
		    const void *bias, uint32_t n, uint32_t k, uint32_t m)
{
	snprintf(prof_name, sizeof(prof_name), "matmul %ux%u", k, m);
	PROF_RUN(prof_name, prof_real->matmul(be, out, in, w, bias, n, k, m));
}

static int p_matmul_acc(struct kern_backend *be, void *out, const void *in, const void *w,
			uint32_t n, uint32_t k, uint32_t m)
{
	snprintf(prof_name, sizeof(prof_name), "matmul_acc %ux%u", k, m);
	PROF_RUN(prof_name, prof_real->matmul_acc(be, out, in, w, n, k, m));
}

static int p_matmul_f32out(struct kern_backend *be, float *out, const void *in, const void *w,
			   uint32_t n, uint32_t k, uint32_t m)
{
	snprintf(prof_name, sizeof(prof_name), "lm_head %ux%u", k, m);
	PROF_RUN(prof_name, prof_real->matmul_f32out(be, out, in, w, n, k, m));
}

static int p_rope(struct kern_backend *be, void *q, void *k, const void *v,
		  const struct kern_batch *b, const struct kern_kv *kv, uint32_t layer,
		  uint32_t n_heads, const float *inv_freq)
{
	PROF_RUN("rope_kv_write", prof_real->rope_kv_write(be, q, k, v, b, kv, layer, n_heads,
							   inv_freq));
}

static int p_attention(struct kern_backend *be, void *out, const void *q,
		       const struct kern_batch *b, const struct kern_kv *kv, uint32_t layer,
		       uint32_t n_heads, float scale)
{
	PROF_RUN("attention", prof_real->attention(be, out, q, b, kv, layer, n_heads, scale));
}

static int p_swiglu(struct kern_backend *be, void *out, const void *gate, const void *up,
		    uint32_t n, uint32_t dim)
{
	PROF_RUN("swiglu", prof_real->swiglu(be, out, gate, up, n, dim));
}

static int p_gather(struct kern_backend *be, void *out, const void *in, const int32_t *rows,
		    uint32_t n, uint32_t dim)
{
	PROF_RUN("gather_rows", prof_real->gather_rows(be, out, in, rows, n, dim));
}

static int p_qkv(struct kern_backend *be, void *q, void *k, void *v, const void *in,
		 const void *wq, const void *wk, const void *wv, const void *bq, const void *bk,
		 const void *bv, uint32_t n, uint32_t kdim, uint32_t mq, uint32_t mkv)
{
	snprintf(prof_name, sizeof(prof_name), "matmul_qkv %ux(%u+2x%u)", kdim, mq, mkv);
	PROF_RUN(prof_name, prof_real->matmul_qkv(be, q, k, v, in, wq, wk, wv, bq, bk, bv, n, kdim,
						  mq, mkv));
}

static int p_mswiglu(struct kern_backend *be, void *out, void *gate, void *up, const void *in,
		     const void *w_gate, const void *w_up, uint32_t n, uint32_t k, uint32_t m)
{
	snprintf(prof_name, sizeof(prof_name), "matmul_swiglu %ux2x%u", k, m);
	PROF_RUN(prof_name, prof_real->matmul_swiglu(be, out, gate, up, in, w_gate, w_up, n, k, m));
}

static int p_nqkv(struct kern_backend *be, const struct kern_norm *nm, const struct kern_rope *rope,
		  void *q, void *k, void *v, const void *wq, const void *wk, const void *wv,
		  const void *bq, const void *bk, const void *bv, uint32_t n, uint32_t kdim,
		  uint32_t mq, uint32_t mkv)
{
	snprintf(prof_name, sizeof(prof_name), "norm_matmul_qkv%s %ux(%u+2x%u)", rope ? "_rope" : "",
		 kdim, mq, mkv);
	PROF_RUN(prof_name, prof_real->norm_matmul_qkv(be, nm, rope, q, k, v, wq, wk, wv, bq, bk,
						       bv, n, kdim, mq, mkv));
}

static int p_nswiglu(struct kern_backend *be, const struct kern_norm *nm, void *out, void *gate,
		     void *up, const void *w_gate, const void *w_up, uint32_t n, uint32_t k,
		     uint32_t m)
{
	snprintf(prof_name, sizeof(prof_name), "norm_matmul_swiglu %ux2x%u", k, m);
	PROF_RUN(prof_name,
		 prof_real->norm_matmul_swiglu(be, nm, out, gate, up, w_gate, w_up, n, k, m));
}

static struct kern_ops prof_ops;

void prof_on(struct kern_backend *be)
{
	prof_real = be->ops;
	prof_be = be;
	prof_ops = *be->ops;
	prof_ops.embed = p_embed;
	prof_ops.add_rmsnorm = p_add_rmsnorm;
	prof_ops.matmul = p_matmul;
	prof_ops.matmul_f32out = p_matmul_f32out;
	prof_ops.matmul_acc = be->ops->matmul_acc ? p_matmul_acc : NULL;
	prof_ops.rope_kv_write = p_rope;
	prof_ops.attention = p_attention;
	prof_ops.swiglu = p_swiglu;
	prof_ops.gather_rows = p_gather;
	prof_ops.matmul_qkv = be->ops->matmul_qkv ? p_qkv : NULL;
	prof_ops.matmul_swiglu = be->ops->matmul_swiglu ? p_mswiglu : NULL;
	prof_ops.norm_matmul_qkv = be->ops->norm_matmul_qkv ? p_nqkv : NULL;
	prof_ops.norm_matmul_swiglu = be->ops->norm_matmul_swiglu ? p_nswiglu : NULL;
	prof_ops.graph_launch = NULL; /* no capture while timing op by op */
	be->ops = &prof_ops;
	prof_n = 0;
	memset(prof, 0, sizeof(prof));
}

void prof_off(const char *what)
{
	double tot = 0;

	prof_be->ops = prof_real;
	for (unsigned i = 0; i < prof_n; i++)
		tot += prof[i].ns;
	printf("\nprofile: %s (op by op, %d back-to-back launches each; sum %.1f us)\n", what,
	       PROF_REPS, tot / 1e3);
	for (unsigned i = 0; i < prof_n; i++)
		printf("  %-36s %4u calls %9.1f us %5.1f%%\n", prof[i].name, prof[i].calls,
		       prof[i].ns / 1e3, 100.0 * prof[i].ns / tot);
}

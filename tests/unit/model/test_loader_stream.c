/* SPDX-License-Identifier: MIT */
/*
 * model_load_ex in STREAM mode (weight_stream.c) against the MMAP path on the
 * same tiny directories: every weight equal, the same fingerprint, nothing
 * leaked, for io_uring and the thread reader, O_DIRECT and buffered, chunks
 * of 4 KiB (tensors straddle chunks; an unused 2.5 MiB tensor spans many)
 * and of 32 MiB; a
 * backend with alloc_host/write_async (copies held back until sync, so a
 * buffer reused before its copy is done shows up as wrong weights) and one
 * without; progress reaches the total; an allocation failure names the tensor;
 * a file that shrinks between parsing and reading is a clear error.
 */
#include "tiny_model.h"

#include "hearth_config.h"
#include "hr_common.h"

/* A "pinned" backend: write_async only records the copy; sync performs them.
 * If the reader refilled a buffer before ops->sync, the weights would hold
 * the later chunk's bytes. */
#define PEND_MAX 4096
static struct pend {
	void *dst;
	const void *src;
	size_t len;
	uint8_t *snap; /* the source bytes at the time of the call */
} pend[PEND_MAX];
static unsigned n_pend;
static long n_host_live, n_async;

static void *tp_alloc_host(struct kern_backend *be, size_t bytes)
{
	void *p = NULL;

	(void)be;
	if (posix_memalign(&p, 4096, bytes))
		return NULL;
	n_host_live++;
	return p;
}

static void tp_free_host(struct kern_backend *be, void *p)
{
	(void)be;
	if (p)
		n_host_live--;
	free(p);
}

static int tp_sync(struct kern_backend *be)
{
	(void)be;
	for (unsigned i = 0; i < n_pend; i++) {
		/* the buffer must not have changed since write_async */
		CHECK(memcmp(pend[i].src, pend[i].snap, pend[i].len) == 0);
		memcpy(pend[i].dst, pend[i].src, pend[i].len);
		free(pend[i].snap);
	}
	n_pend = 0;
	return 0;
}

static int tp_write_async(struct kern_backend *be, void *dst, const void *src, size_t len)
{
	if (n_pend == PEND_MAX)
		tp_sync(be);
	pend[n_pend].snap = malloc(len ? len : 1);
	if (!pend[n_pend].snap)
		return -ENOMEM;
	memcpy(pend[n_pend].snap, src, len);
	pend[n_pend].dst = dst;
	pend[n_pend].src = src;
	pend[n_pend++].len = len;
	n_async++;
	return 0;
}

static const struct kern_ops tp_ops = {
	.alloc = tb_alloc,
	.free = tb_free,
	.upload = tb_upload,
	.weight_upload = tb_weight_upload,
	.sync = tp_sync,
	.alloc_host = tp_alloc_host,
	.free_host = tp_free_host,
	.write_async = tp_write_async,
};

struct prog {
	uint64_t last_done, total;
	int calls, finals;
	char note[512];
};

static void on_progress(void *arg, const struct model_load_progress *p)
{
	struct prog *g = arg;

	CHECK(p->done_bytes >= g->last_done && p->done_bytes <= p->total_bytes);
	g->last_done = p->done_bytes;
	g->total = p->total_bytes;
	g->calls++;
	g->finals += p->final;
}

static void on_note(void *arg, const char *msg)
{
	struct prog *g = arg;

	snprintf(g->note, sizeof(g->note), "%s", msg);
}

/* Load dir with opts on a fresh backend (pinned or not); check every weight. */
static uint64_t stream_ok(struct tmodel *tm, const char *dir, struct model_load_opts o, bool pinned)
{
	struct prog g = { 0 };
	struct model *m;
	struct tb tb;
	char err[512] = "";
	uint64_t fp = 0;

	tb_init(&tb);
	if (pinned)
		tb.be.ops = &tp_ops;
	o.mode = MODEL_LOAD_STREAM;
	o.progress = on_progress;
	o.note = on_note;
	o.arg = &g;
	n_async = 0;
	m = model_load_ex(dir, &tb.be, &o, err, sizeof(err));
	if (!m) {
		fprintf(stderr, "stream load %s (io %d, direct %d, chunk %u KiB, pinned %d) failed: %s\n",
			dir, o.io, o.direct, o.chunk_kib, pinned, err);
		mt_failures++;
		return 0;
	}
	CHECK(strncmp(m->load_how, "stream: ", 8) == 0);
	CHECK(g.finals == 1 && g.total > 0 && g.last_done == g.total);
	{
		bool any_raw = false; /* tensors already in act_dtype go through write_async */

		for (int i = 0; i < tm->n; i++)
			any_raw |= tm->t[i].dt == KERN_F32;
		CHECK(!pinned || !any_raw || n_async > 0);
	}
	check_weights(m, tm);
	check_inv_freq(m);
	/* A tied model's LM head is its embedding, also when streamed (the
	 * pointers are filled only once the stream is done). */
	CHECK(m->embed && m->lm_head);
	fp = m->fingerprint;
	model_free(m);
	CHECK(tb.live == 0 && n_host_live == 0 && n_pend == 0);
	return fp;
}

static void test_modes(void)
{
	static const enum model_load_io ios[] = { MODEL_IO_AUTO, MODEL_IO_THREADS };
	static const enum model_load_direct directs[] = { MODEL_DIRECT_AUTO, MODEL_DIRECT_ALWAYS,
							  MODEL_DIRECT_NEVER };
	static const uint32_t chunks[] = { 4, 12, 32768 }; /* KiB */
	struct tmodel tm;
	const char *dirs[3];
	uint64_t fp_mmap[3];
	char dbuf[3][256];

	/* F32 (raw on this backend), BF16 (gathered and converted), sharded mixed. */
	gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
	/* an unused tensor (read through, not delivered) over many chunks */
	add(&tm, KERN_F32, 5 * 128 * 1024, 0, "model.layers.%d.self_attn.rotary_emb.inv_freq", 1);
	snprintf(dbuf[0], sizeof(dbuf[0]), "%s", newdir("s-llama-f32"));
	write_single(&tm, dbuf[0]);
	dirs[0] = dbuf[0];
	fp_mmap[0] = load_ok(&tm, dirs[0], NULL);
	for (size_t a = 0; a < HR_ARRAY_SIZE(ios); a++)
		for (size_t b = 0; b < HR_ARRAY_SIZE(directs); b++)
			for (size_t c = 0; c < HR_ARRAY_SIZE(chunks); c++)
				for (int pinned = 0; pinned < 2; pinned++) {
					struct model_load_opts o = { .io = ios[a], .direct = directs[b],
								     .chunk_kib = chunks[c],
								     .depth = c ? 0 : 2 };

					CHECK(stream_ok(&tm, dirs[0], o, pinned) == fp_mmap[0]);
				}
	tm_free(&tm);

	gen(&tm, "LlamaForCausalLM", KERN_BF16, true, false);
	tm.odd_header = true; /* every tensor misaligned in the file */
	snprintf(dbuf[1], sizeof(dbuf[1]), "%s", newdir("s-llama-bf16"));
	write_single(&tm, dbuf[1]);
	fp_mmap[1] = load_ok(&tm, dbuf[1], NULL);
	for (int pinned = 0; pinned < 2; pinned++)
		CHECK(stream_ok(&tm, dbuf[1], (struct model_load_opts){ .chunk_kib = 8 }, pinned) ==
		      fp_mmap[1]);
	tm_free(&tm);

	gen(&tm, "Qwen2ForCausalLM", KERN_F32, true, false);
	for (int i = 0; i < tm.n; i += 2) {
		tm.t[i].dt = KERN_BF16;
		for (uint64_t j = 0; j < tt_elems(&tm.t[i]); j++)
			tm.t[i].vals[j] = bf16_to_f32(f32_to_bf16(tm.t[i].vals[j]));
	}
	snprintf(dbuf[2], sizeof(dbuf[2]), "%s", newdir("s-qwen2-sharded"));
	write_sharded(&tm, dbuf[2]);
	fp_mmap[2] = load_ok(&tm, dbuf[2], NULL);
	for (size_t a = 0; a < HR_ARRAY_SIZE(ios); a++)
		CHECK(stream_ok(&tm, dbuf[2], (struct model_load_opts){ .io = ios[a] }, true) ==
		      fp_mmap[2]);

	/* AUTO picks STREAM on a backend with alloc_host/write_async */
	{
		struct tb tb;
		struct model *m;
		char err[512] = "";

		tb_init(&tb);
		tb.be.ops = &tp_ops;
		m = model_load_ex(dbuf[2], &tb.be, NULL, err, sizeof(err));
		CHECK(m && strncmp(m->load_how, "stream", 6) == 0);
		model_free(m);
		tb_init(&tb);
		m = model_load(dbuf[2], &tb.be, err, sizeof(err));
		CHECK(m && strcmp(m->load_how, "mmap") == 0);
		model_free(m);
		CHECK(tb.live == 0);
	}

	/* an allocation failure while planning names file and tensor; no leak */
	{
		struct model_load_opts o = { .mode = MODEL_LOAD_STREAM };
		struct tb tb;
		char err[512] = "";

		tb_init(&tb);
		tb.fail_weight_at = 3; /* the third gathered (bf16) tensor */
		CHECK(model_load_ex(dbuf[2], &tb.be, &o, err, sizeof(err)) == NULL);
		CHECK_MSG(err, "tensor '", "upload to the test backend failed");
		CHECK(tb.live == 0);
	}
	tm_free(&tm);
}

/* A file that shrinks between parsing and reading: a clear error, no leak.
 * The note about buffered reads comes between the two: truncate there. */
static const char *trunc_path;

static void note_truncate(void *arg, const char *msg)
{
	struct stat st;

	(void)arg;
	(void)msg;
	if (stat(trunc_path, &st) == 0)
		CHECK(truncate(trunc_path, st.st_size / 2) == 0);
}

static void test_truncated(void)
{
	/* AUTO: the freshly written file is in the page cache, which is noted. */
	struct model_load_opts o = { .mode = MODEL_LOAD_STREAM, .note = note_truncate };
	static char path[512];
	struct tmodel tm;
	const char *dir;
	char err[512] = "";
	struct tb tb;

	gen(&tm, "LlamaForCausalLM", KERN_F32, false, true);
	dir = newdir("s-truncated");
	write_single(&tm, dir);
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	trunc_path = path;
	tb_init(&tb);
	errno = 0;
	CHECK(model_load_ex(dir, &tb.be, &o, err, sizeof(err)) == NULL && errno == EIO);
	CHECK_MSG(err, "model.safetensors", "short read", "change");
	CHECK(tb.live == 0);
	tm_free(&tm);
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/hearth-test-stream-XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 1;
	}
	test_modes();
	test_truncated();
	if (mt_failures == 0)
		mt_rmtree(root);
	else
		fprintf(stderr, "left %s for inspection\n", root);
	printf("%s: %d failure%s\n", mt_failures ? "FAIL" : "ok", mt_failures,
	       mt_failures == 1 ? "" : "s");
	return mt_failures ? 1 : 0;
}

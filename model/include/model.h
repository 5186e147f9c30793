/* SPDX-License-Identifier: MIT */
/*
 * Models: a Hugging Face directory (config.json, model.safetensors or shards
 * with model.safetensors.index.json) parsed defensively and loaded onto a
 * compute backend, and the forward pass over paged KV written against the
 * kernels interface.
 *
 * Errors: loaders return NULL with errno set and, when err != NULL, a message
 * naming the file, the tensor and the reason (e.g.
 * "model.safetensors: tensor 'model.norm.weight': shape [64] x F32 is 256 bytes but
 * data_offsets span 128"). Nothing here prints.
 */
#ifndef MODEL_H
#define MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kern.h"
#include "kv.h"

enum model_arch {
	MODEL_ARCH_LLAMA = 1,   /* LlamaForCausalLM (Llama 2, Llama 3 with rope_scaling "llama3") */
	MODEL_ARCH_MISTRAL = 2, /* MistralForCausalLM */
	MODEL_ARCH_QWEN2 = 3,   /* Qwen2ForCausalLM (q/k/v bias) */
};

enum model_rope_scaling {
	MODEL_ROPE_NONE = 0,
	MODEL_ROPE_LLAMA3 = 1,
};

struct model_config {
	enum model_arch arch;
	char arch_name[64];       /* "LlamaForCausalLM", ... */
	uint32_t vocab_size;
	uint32_t hidden_size;
	uint32_t intermediate_size;
	uint32_t n_layers;
	uint32_t n_heads;
	uint32_t n_kv_heads;
	uint32_t head_dim;        /* config "head_dim" or hidden_size / n_heads */
	uint32_t max_position_embeddings;
	uint32_t sliding_window;  /* 0 = none; the engine caps context at it */
	float rms_norm_eps;
	float rope_theta;
	bool tie_word_embeddings;
	bool qkv_bias;            /* Qwen2 (or attention_bias: true) */
	enum kern_dtype torch_dtype; /* as stored in the files */
	/* rope_scaling {"rope_type": "llama3", ...} */
	enum model_rope_scaling rope_scaling;
	float rope_factor;
	float rope_low_freq_factor;
	float rope_high_freq_factor;
	uint32_t rope_original_max_pos;
	int32_t bos_token_id;     /* -1 if absent */
	int32_t eos_token_id;     /* -1 if absent (first of a list) */
};

/*
 * Parse config.json text (len bytes, not NUL-terminated necessarily).
 * Returns 0 or -EINVAL (malformed JSON, missing or out-of-range field,
 * unsupported architecture or rope scaling) with a message in err.
 * Bounds: every dimension > 0 and <= 1<<20, n_heads % n_kv_heads == 0,
 * head_dim even, vocab <= 1<<22, n_layers <= 1024.
 */
int model_config_parse(const char *json, size_t len, struct model_config *ret,
		       char *err, size_t errlen);

/* ---------------------------------------------------------------- safetensors */

#define ST_MAX_HEADER (100u << 20) /* 100 MiB, as the reference implementation */
#define ST_MAX_DIMS 8

struct st_tensor {
	char *name;
	enum kern_dtype dtype;
	uint32_t n_dims;
	uint64_t shape[ST_MAX_DIMS];
	uint64_t n_elems;
	const void *data;   /* into the mapping */
	uint64_t n_bytes;
};

struct st_file {
	char *path;
	void *map;
	size_t map_len;
	uint32_t n_tensors;
	struct st_tensor *tensors; /* sorted by data offset */
};

/*
 * Parse a safetensors image in memory (buf, len): 8-byte little-endian header
 * length N, N bytes of UTF-8 JSON, then the data section. Checks: N within
 * bounds and the file; the header is valid UTF-8 and valid JSON; every key is a
 * non-empty UTF-8 name appearing once; dtype is F32, BF16 or F16 (others
 * -> EINVAL "unsupported dtype"); shape entries are non-negative integers whose
 * product times the dtype size equals end - begin without overflow; ranges lie
 * inside the data section and do not overlap. "__metadata__" is allowed and
 * must be an object of strings. `name` (for messages) is the file name.
 * On success fills ret (tensors point into buf) and returns 0; on failure
 * returns -EINVAL with err filled and ret untouched.
 */
int st_parse(const void *buf, size_t len, const char *name, struct st_file *ret, char *err,
	     size_t errlen);
/* mmap `path` read-only and st_parse it. -errno on failure with err filled. */
int st_open(const char *path, struct st_file *ret, char *err, size_t errlen);
/* Unmap and free; accepts a zeroed struct. */
void st_close(struct st_file *f);
const struct st_tensor *st_find(const struct st_file *f, const char *name);

/* ---------------------------------------------------------------- weights */

/* Backend-memory weights of one decoder layer. Biases are NULL when absent. */
struct model_layer {
	void *attn_norm;  /* [hidden] */
	void *wq, *wk, *wv; /* [n_heads*hd, hidden], [n_kv*hd, hidden] x2 */
	void *bq, *bk, *bv;
	void *wo;         /* [hidden, n_heads*hd] */
	void *mlp_norm;   /* [hidden] */
	void *w_gate, *w_up; /* [inter, hidden] */
	void *w_down;     /* [hidden, inter] */
};

struct model {
	struct model_config cfg;
	struct kern_backend *be;  /* not owned */
	char *dir;
	void *embed;              /* [vocab, hidden] */
	void *final_norm;         /* [hidden] */
	void *lm_head;            /* [vocab, hidden]; == embed when tied */
	struct model_layer *layers;
	float *inv_freq;          /* backend memory, [head_dim / 2] */
	uint64_t weight_bytes;    /* bytes of weights as stored in the files */
	uint64_t fingerprint;     /* hash of config.json and tensor headers */
	double load_seconds;
	char load_how[128];       /* how the weights were read, e.g. "stream: io_uring, O_DIRECT" */
};

/*
 * Load the model in `dir` onto backend `be`: parse config.json, open the
 * safetensors file(s) (single file, or shards listed by
 * model.safetensors.index.json, each shard parsed as above and every index
 * entry checked against its shard), check that every tensor the architecture
 * needs is present with the right shape (and no unexpected layer tensors),
 * and upload them. Returns NULL with errno set and err filled.
 */
struct model *model_load(const char *dir, struct kern_backend *be, char *err, size_t errlen);

/*
 * How model_load_ex reads the weights.
 * MMAP: map each file and hand tensors to ops->weight_upload (the cpu
 * backend's path: it converts from the mapping into place, one copy).
 * STREAM: read the data sections in chunks (io_uring when built and
 * allowed, else a pread thread per buffer) into host buffers from
 * ops->alloc_host (pinned on cuda) and copy them with ops->write_async while
 * the next reads are in flight; tensors not in the backend's act_dtype are
 * gathered whole and go through weight_upload. Backends without
 * alloc_host/write_async get malloc'd buffers and ops->upload.
 * AUTO: STREAM when the backend has alloc_host and write_async, else MMAP.
 * Headers are parsed from the mapping in every mode: validation is the same.
 */
enum model_load_mode { MODEL_LOAD_AUTO = 0, MODEL_LOAD_MMAP, MODEL_LOAD_STREAM };
/* STREAM: O_DIRECT (bypassing the page cache) per file. AUTO: O_DIRECT unless
 * half the file is already in the page cache (then buffered reads are faster);
 * where O_DIRECT is refused (tmpfs, alignment) buffered reads, with a note. */
enum model_load_direct { MODEL_DIRECT_AUTO = 0, MODEL_DIRECT_ALWAYS, MODEL_DIRECT_NEVER };
/* STREAM: the reader. AUTO: io_uring, else threads (with a note). */
enum model_load_io { MODEL_IO_AUTO = 0, MODEL_IO_URING, MODEL_IO_THREADS };

struct model_load_progress {
	uint64_t done_bytes, total_bytes; /* of weight data read so far / in all */
	double seconds;                  /* since the reads started */
	bool final;
};

struct model_load_opts {
	enum model_load_mode mode;
	enum model_load_direct direct;
	enum model_load_io io;
	uint32_t chunk_kib;   /* STREAM read size (multiple of 4), 0: 32 MiB */
	uint32_t depth;       /* STREAM buffers (reads in flight), 0: 6 */
	/* Called from the loading thread: roughly every 10% and at least once a
	 * second while reading, and once at the end (final). May be NULL. */
	void (*progress)(void *arg, const struct model_load_progress *p);
	/* A one-line reason when the loader falls back (no io_uring, no
	 * O_DIRECT on this file system, ...). May be NULL. */
	void (*note)(void *arg, const char *msg);
	void *arg;
};

/* The STREAM loader's read shape for opts (NULL: the defaults): bytes per
 * read (*chunk) and reads in flight (*depth), as it clamps and rounds them. */
void model_load_read_shape(const struct model_load_opts *opts, size_t *chunk, unsigned *depth);

/* model_load with options (NULL: defaults, as model_load). */
struct model *model_load_ex(const char *dir, struct kern_backend *be,
			    const struct model_load_opts *opts, char *err, size_t errlen);
/* Accepts NULL. */
void model_free(struct model *m);

/* The backend memory of the tensor the files call `name`
 * ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight" or
 * "model.layers.<i>.<suffix>"); NULL when m has no such tensor (a bias of a
 * model without q/k/v bias, a layer past the last, any other name). */
void *model_tensor(const struct model *m, const char *name);
/* The suffix of a decoder layer's i-th tensor ("mlp.up_proj.weight"), in the
 * loader's order; NULL past the last. */
const char *model_layer_tensor_suffix(unsigned i);

/* RoPE inverse frequencies for cfg (llama3 scaling applied): out[head_dim/2]. */
void model_rope_inv_freq(const struct model_config *cfg, float *out);

/* ---------------------------------------------------------------- forward */

struct model_seq_step {
	struct kv_block_table *bt;  /* pages already reserved for n_past + n_new */
	uint32_t n_past;            /* tokens already in the KV */
	uint32_t n_new;             /* tokens in this step */
	const int32_t *tokens;      /* host, [n_new] */
	bool want_logits;           /* logits of the last new token */
	bool ids_only;              /* with want_logits: only a few ids' logits are
				     * wanted (model_step_score) */
};

/* Ids one model_step_score() call takes. */
#define MODEL_SCORE_MAX_IDS 1024u

struct model_scratch;

/* Scratch buffers for steps of at most max_tokens tokens and max_seqs sequences. */
struct model_scratch *model_scratch_new(const struct model *m, const struct kv_pool *pool,
					uint32_t max_tokens, uint32_t max_seqs);
void model_scratch_free(struct model_scratch *s);

/*
 * Run one forward step over n sequences' new tokens (at most the scratch's
 * max_tokens in total), writing their K/V into the pool. For each sequence with
 * want_logits, its last token's fp32 logits land in backend memory returned by
 * model_step_logits(s, i) where i counts the sequences with want_logits in
 * order. Returns 0 or -errno (-EINVAL on a token id outside the vocabulary,
 * -E2BIG over the scratch's capacity, -EIO from a backend). On a backend with
 * graphs, rows of model_step_logits() past the wanted ones may be written
 * too (padding); only the wanted rows are defined.
 */
int model_forward(struct model *m, struct kv_pool *pool, struct model_scratch *s,
		  const struct model_seq_step *steps, uint32_t n);
/* Backend pointer to row i of the last step's logits ([vocab] fp32); defined
 * only when some wanted row of the step was not ids_only. */
float *model_step_logits(struct model_scratch *s, uint32_t i);
/*
 * Scoring without the vocabulary. When every wanted row of a step is
 * ids_only, the step skips the LM head. model_score_ids(), called before the
 * step, takes the LM head's rows of ids[0..n_ids) (backend int32, each in
 * [0, vocab), n_ids at most MODEL_SCORE_MAX_IDS); they stay for later steps
 * until the next call. model_step_score(), after the step, computes those ids'
 * logits at each wanted row: *ret receives backend fp32 [rows, n_ids], wanted
 * row i at i * n_ids (rows past the wanted ones may be padding). Both return 0
 * or -errno; model_step_score gives -EINVAL when the last step computed full
 * logits or had no wanted rows, or no ids were taken.
 */
int model_score_ids(struct model *m, struct model_scratch *s, const int32_t *ids, uint32_t n_ids);
int model_step_score(struct model *m, struct model_scratch *s, float **ret);
/*
 * Steps of at most KERN_GRAPH_MAX_TOKENS (512) tokens replay captured graphs
 * on backends that have them (cuda), one per bucket of (tokens, sequences,
 * block-table width): tokens rounded up by kern_step_bucket(), the others to
 * powers of two; on by default. Off: every step runs eagerly
 * (for comparisons). Results are the same either way.
 */
void model_scratch_set_graphs(struct model_scratch *s, bool on);
/* Replay graphs for steps of at most max tokens (capped at
 * KERN_GRAPH_MAX_TOKENS; the default): fewer buckets and captures, and
 * larger steps run eagerly. */
void model_scratch_set_graph_tokens(struct model_scratch *s, uint32_t max);
/*
 * Before serving, on a backend with graphs: run one eager step of padding
 * tokens (no KV written) per token bucket, so that the backend prepares
 * (cuda: tunes) every GEMM shape graph steps use now rather than stalling a
 * step under load. It overwrites the scratch's logits (of the last step).
 * Returns the number of buckets run (0: no graphs) or -errno.
 */
int model_scratch_warm(struct model *m, struct kv_pool *pool, struct model_scratch *s);

/* Graph captures since model_scratch_new: each costs the step that makes it
 * milliseconds (a stall under load), so they are counted. */
struct model_graph_counts {
	uint64_t captures;   /* graphs captured, recaptures included */
	uint64_t recaptures; /* of those, after a backend workspace moved (stale graphs) */
	uint64_t capture_ns; /* host time spent capturing */
};
void model_scratch_graph_counts(const struct model_scratch *s, struct model_graph_counts *ret);

#endif

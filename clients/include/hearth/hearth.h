/* SPDX-License-Identifier: MIT */
/*
 * libhearth: the client library of hearthd. A connection attaches to the
 * daemon over its control socket and receives a shared-memory region holding
 * a submission ring, a completion ring and an arena; requests then travel
 * through the rings with no system call and no copy (token ids and results are
 * read and written in place in the arena).
 *
 * Two APIs over one connection:
 *  - synchronous: hearth_append(), hearth_score(), hearth_generate(), ...
 *  - asynchronous, in the spirit of liburing: hearth_get_sqe() for a
 *    submission slot, hearth_prep_*() to fill it, hearth_submit() to publish,
 *    hearth_wait_cqe() / hearth_peek_cqe() and hearth_cqe_seen() for
 *    completions; buffers come from hearth_arena_alloc() (zero-copy).
 * A synchronous call needs the asynchronous side idle (nothing taken,
 * submitted or unreaped): it returns -EINPROGRESS otherwise.
 *
 * Errors: functions return 0 (or a count) on success and a negative errno on
 * failure; hearth_strerror() describes them. Constructors return NULL and set
 * errno. The library never prints.
 * Threads: a connection is used by one thread at a time; a process may hold
 * several connections. The library does not depend on CUDA or the engine.
 */
#ifndef HEARTH_H
#define HEARTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HEARTH_VERSION_MAJOR 0
#define HEARTH_VERSION_MINOR 1

struct hearth;

/* Options for hearth_connect(); zero fields take defaults. */
struct hearth_opts {
	const char *socket_path;  /* NULL: $HEARTH_SOCKET, else the daemon's default */
	const char *client_name;  /* shown by hearthctl; NULL: the program's name */
	const char *model;        /* NULL: the daemon's default model */
	uint32_t sq_entries;      /* power of two; 0: daemon default */
	uint32_t cq_entries;      /* power of two; 0: 2 * sq_entries */
	uint32_t arena_bytes;     /* 0: daemon default (1 MiB); rounded up to 4 KiB */
	uint32_t spin_us;         /* busy-poll time before sleeping on a futex (default 50) */
};

struct hearth_model_info {
	char name[64];
	char arch[64];
	uint32_t vocab_size;
	uint32_t n_layers;
	uint32_t hidden_size;
	uint32_t max_context;
};

/* The default socket path: /run/hearth/hearthd.sock for root, else
 * $XDG_RUNTIME_DIR/hearth/hearthd.sock or /tmp/hearth-$UID/hearthd.sock (the
 * rule hearthd itself follows). Writes it to buf and returns buf, or NULL
 * with errno ENAMETOOLONG when len is too small. $HEARTH_SOCKET is not
 * consulted here (hearth_connect() does). */
const char *hearth_default_socket(char *buf, size_t len);

/* Connect and attach. opts may be NULL. Returns NULL with errno set
 * (ENOENT/ECONNREFUSED: no daemon; EACCES: refused by policy; EPROTO: a
 * daemon speaking another protocol; EINVAL: bad sizes; ENOENT also for an
 * unknown opts->model, or no model loaded; EAGAIN: that model is still
 * loading; ESHUTDOWN: it is being unloaded; EUSERS: too many clients). */
struct hearth *hearth_connect(const struct hearth_opts *opts);
/* Detach and free; the daemon frees the connection's anonymous sessions and
 * cancels its in-flight requests. Accepts NULL. */
void hearth_close(struct hearth *h);
const struct hearth_model_info *hearth_model(const struct hearth *h);
/* A description of err (negative or positive errno). Never NULL; static
 * storage, thread-safe. */
const char *hearth_strerror(int err);

/* ---- sessions (control socket; cold path) ---------------------------------- */

#define HEARTH_OPEN_CREATE 1u /* named: create when absent */
#define HEARTH_OPEN_BULK 2u   /* a new session's requests are bulk by default */

/*
 * Open a session. name NULL or "": a fresh anonymous session freed when closed
 * or when the connection ends. A named session (e.g. "acct:12345", at most
 * 255 bytes, no control characters) outlives the connection and is shared by
 * every connection that opens it. Returns the handle (> 0) or -errno
 * (-ENOENT: named, absent and no CREATE; -ENAMETOOLONG; -EMFILE: too many
 * open on this connection). *ret_tokens, when not NULL, receives its current
 * length. May be called with asynchronous requests in flight.
 */
int64_t hearth_session_open(struct hearth *h, const char *name, uint32_t flags,
			    uint32_t *ret_tokens);
/* Close this connection's use of a session; destroy: forget a named one
 * (-EBUSY while other connections have it open). Anonymous sessions are
 * always freed. Call when no request on it is in flight (-EBUSY while some
 * are queued or running). Returns 0 or -errno (-EBADF: not open here). */
int hearth_session_close(struct hearth *h, uint32_t session, int destroy);
/*
 * Start paging a session out to the daemon's L2 file now (hearthctl evict).
 * Returns 0 once the page-out has started; the next request on the session
 * waits for it and pages it back in. -EOPNOTSUPP: the daemon has no L2;
 * -EBUSY: pinned, streaming, or nothing in L1.
 */
int hearth_session_evict(struct hearth *h, uint32_t session);

/* ---- synchronous data path (rings) ----------------------------------------- */

/*
 * Each call copies its inputs into the free part of the arena (above what
 * hearth_arena_alloc() handed out), submits one request, waits for its
 * completion and copies the results out. -EMSGSIZE when the request does not
 * fit in that free part (connect with a larger arena_bytes).
 */

/* Append n (>= 1) token ids. Returns the session's new length or -errno. */
int hearth_append(struct hearth *h, uint32_t session, const int32_t *tokens, uint32_t n);
/*
 * Append n_tokens (may be 0), then write to probs[0..n_labels) the
 * probabilities of the label token ids at the last position, renormalised
 * over the labels (1 <= n_labels <= 1024). Returns n_labels or -errno
 * (-ENODATA: the session is empty).
 */
int hearth_score(struct hearth *h, uint32_t session, const int32_t *tokens, uint32_t n_tokens,
		 const int32_t *labels, uint32_t n_labels, float *probs);
/*
 * Append the prompt (may be empty), then greedy-generate up to max_tokens
 * (stopping after the model's end-of-sequence token), calling cb for every
 * token as it arrives (cb may be NULL). A non-zero return from cb stops the
 * callbacks and cancels the request: the call returns the tokens generated
 * so far, which stay in the session. Generated ids are also written to
 * out[0..max_tokens) when out != NULL. Returns the number of tokens
 * generated or -errno (-ENODATA: empty session and no prompt).
 */
typedef int (*hearth_token_cb)(void *userdata, int32_t token);
int hearth_generate(struct hearth *h, uint32_t session, const int32_t *prompt, uint32_t n_prompt,
		    uint32_t max_tokens, int32_t *out, hearth_token_cb cb, void *userdata);
/* Roll the session back to its first n tokens. Returns n or -errno. */
int hearth_truncate(struct hearth *h, uint32_t session, uint32_t n);
/* Round trip of a no-op through the rings. Returns 0 or -errno. */
int hearth_nop(struct hearth *h);

/* ---- asynchronous data path --------------------------------------------------- */

/* Submission and completion, layout-compatible with the shared ring entries
 * (struct shm_sqe / shm_cqe of shm_protocol). */
struct hearth_sqe {
	uint8_t op;
	uint8_t flags;           /* HEARTH_SQE_F_* */
	uint16_t reserved0;
	uint32_t session;
	uint64_t user_data;      /* echoed in every completion of the request */
	uint32_t in_off, in_len;
	uint32_t out_off, out_cap;
	uint32_t aux_off, aux_len;
	uint32_t arg[4];
	uint64_t deadline_ns;    /* CLOCK_MONOTONIC: not started by then -> -ETIMEDOUT; 0: none */
};

struct hearth_cqe {
	uint64_t user_data;
	int32_t res;             /* per op as documented at the prep call, or -errno */
	uint32_t flags;          /* HEARTH_CQE_F_MORE: more completions follow */
	uint32_t out_len;        /* bytes written to the out buffer (GENERATE: so far) */
	uint32_t pos;            /* session length after the op */
	uint64_t reserved;
};

#define HEARTH_CQE_F_MORE 1u
/* sqe->flags: the request's latency class (default: its session's). An
 * interactive request never waits behind a long prefill for more than one
 * step; bulk requests fill the rest of each step and are never starved. */
#define HEARTH_SQE_F_LATENCY 1u   /* interactive */
#define HEARTH_SQE_F_BULK 2u      /* bulk */
#define HEARTH_SCORE_F_LOGPROB 1u /* SCORE sqe->arg[0]: log-probabilities */

/*
 * Arena: a bump allocator over the connection's arena for zero-copy buffers
 * (64-byte aligned, so buffers the daemon writes share no cache line with
 * buffers the client writes). Returns NULL when it is full (or bytes is 0).
 * hearth_arena_reset() frees everything allocated (call when no request
 * using them is in flight).
 */
void *hearth_arena_alloc(struct hearth *h, size_t bytes);
void hearth_arena_reset(struct hearth *h);
size_t hearth_arena_size(const struct hearth *h);

/* The next free submission slot, zeroed, or NULL when the ring is full
 * (submit and reap first). Nothing is visible to the daemon before submit. */
struct hearth_sqe *hearth_get_sqe(struct hearth *h);
/*
 * Fill a slot: every field is overwritten, so set sqe->user_data (and
 * sqe->flags, or SCORE's arg[0]) after the prep call. Buffers must come from
 * hearth_arena_alloc() and stay untouched until the request's last
 * completion; a buffer outside the arena makes the request complete with
 * -ERANGE. Completion results:
 *   nop: res 0.  append: res = tokens appended, pos = new length.
 *   score: res = n_labels, probs filled.  truncate: res = n.
 *   generate: one completion per token with HEARTH_CQE_F_MORE (res 1, the
 *   token at out[out_len / 4 - 1]), then a last one without MORE whose res
 *   is the number generated (or -errno).
 */
void hearth_prep_nop(struct hearth *h, struct hearth_sqe *sqe);
void hearth_prep_append(struct hearth *h, struct hearth_sqe *sqe, uint32_t session,
			const int32_t *tokens, uint32_t n);
void hearth_prep_score(struct hearth *h, struct hearth_sqe *sqe, uint32_t session,
		       const int32_t *tokens, uint32_t n_tokens, const int32_t *labels,
		       uint32_t n_labels, float *probs);
void hearth_prep_generate(struct hearth *h, struct hearth_sqe *sqe, uint32_t session,
			  const int32_t *prompt, uint32_t n_prompt, uint32_t max_tokens,
			  int32_t *out);
void hearth_prep_truncate(struct hearth *h, struct hearth_sqe *sqe, uint32_t session, uint32_t n);
/* Cancel the request whose user_data is target_user_data. Its own completion
 * res is 0 (cancelled) or -ENOENT (no longer in flight). The target ends
 * with -ECANCELED: a queued one changed nothing; a GENERATE stops after the
 * tokens already streamed (they stay in the session); a running APPEND or
 * SCORE is rolled back. */
void hearth_prep_cancel(struct hearth *h, struct hearth_sqe *sqe, uint64_t target_user_data);
/* Publish every slot taken since the last submit; wakes the daemon only if it
 * sleeps. Returns how many were published, or -ESHUTDOWN when the daemon is
 * known to be gone. */
int hearth_submit(struct hearth *h);
/* The oldest completion, without waiting: 0 and *ret, -EAGAIN when there is
 * none, or -EPROTO (the daemon broke the ring protocol). */
int hearth_peek_cqe(struct hearth *h, struct hearth_cqe **ret);
/*
 * Wait for a completion: spin for spin_us, then sleep on the futex.
 * timeout_ns < 0 waits forever; 0 only checks (spinning at most timeout_ns).
 * Returns 0 and *ret, -ETIMEDOUT, -EINTR (a signal), -EPROTO, or -ESHUTDOWN
 * when the daemon has gone (shut down, killed, or it dropped this connection;
 * completions it posted before are still returned first). While asleep it
 * checks the control socket every 100 ms, so a killed daemon is noticed.
 */
int hearth_wait_cqe(struct hearth *h, struct hearth_cqe **ret, int64_t timeout_ns);
/* Mark the completion from peek/wait consumed (the oldest one: completions
 * are consumed in order). Wakes the daemon if it waits for room. */
void hearth_cqe_seen(struct hearth *h, struct hearth_cqe *cqe);

#ifdef __cplusplus
}
#endif

#endif

/* SPDX-License-Identifier: MIT */
/*
 * hearthd internals shared by its threads: the daemon, its clients (one per
 * control connection, each with a shared region), sessions, and the command
 * queue through which the control thread hands cold-path work to the reactor.
 *
 * Threads: the main thread runs the control plane (listening socket, client
 * sockets, signals) in one epoll loop; one reactor thread per model owns the
 * engine, every session and every ring. Only the reactor touches sessions and
 * rings; the control thread touches client sockets and region mappings, and
 * talks to the reactor through hd_cmd (blocking request/response).
 */
#ifndef HEARTHD_H
#define HEARTHD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "engine.h"
#include "shm_proto.h"
#include "shm_ring.h"

struct hd_daemon;
struct hd_model;
struct hd_job;

/* Per-op counters, exported with stats. Written by the reactor only. */
/* Latency histogram bucket bounds (ns), shared by stats and /metrics. */
#define HD_LAT_BUCKETS 12
extern const uint64_t hd_lat_bounds_ns[HD_LAT_BUCKETS];

struct hd_op_stats {
	uint64_t count, errors, total_ns, max_ns;
	uint64_t buckets[HD_LAT_BUCKETS + 1]; /* per bucket (not cumulative); last: +Inf */
};

struct hd_stats {
	_Atomic uint64_t tokens, disconnects, bad_descriptors;
	struct hd_op_stats ops[SHM_OP__MAX];
};

struct hd_handle_set {
	uint32_t *slots; /* open addressing; 0 = empty */
	uint32_t cap, n;
};

struct hd_client {
	uint32_t id;
	int sock;
	int memfd;
	pid_t pid;
	uid_t uid;
	void *mem;
	size_t mem_len;
	struct shm_layout lay;          /* private copy: never re-read from the region */
	struct shm_sq_cons sq;
	struct shm_cq_prod cq;
	struct shm_region_hdr *hdr;
	uint8_t *arena;
	/* reactor-owned */
	struct hd_handle_set open;      /* session handles this client may use */
	/* Descriptors taken from the SQ whose last completion is not posted yet
	 * (queued jobs, deferred ones): each has a CQ slot kept for it, so the
	 * reactor takes a descriptor only while room > n_outstanding. */
	uint32_t n_outstanding;
	bool dead;                      /* protocol violation: no longer served */
	bool killed;                    /* ... and its disconnect was started */
	bool in_reactor;
	int refused;                    /* -EACCES / -EUSERS: answered so until it hangs up */
	struct hd_client *conn_next, *conn_prev; /* control-owned list of connections */
	struct hd_model *m;             /* the model it attached to (Hello), or NULL */
	uint32_t wait_seq;
	char name[64];
};

enum hd_tier {
	HD_TIER_L1 = 0,        /* KV in L1 (possibly partial: the rest recomputes on use) */
	HD_TIER_PAGING_OUT,    /* L1 pages being written to L2 */
	HD_TIER_L2,            /* KV only in L2 slots */
	HD_TIER_PAGING_IN,     /* L2 slots being read into reserved L1 pages */
};

/* A descriptor that waits for its session's page-in. */
struct hd_deferred {
	struct shm_sqe sqe;
	uint32_t client_id;
};

struct hd_session {
	char *name;            /* NULL: anonymous */
	/* tiering (tier.c) */
	enum hd_tier tier;
	bool pinned;           /* never evicted */
	bool want_in;          /* a request waits: page in as soon as L1 has room */
	uint32_t n_pages;      /* pages in this transfer */
	uint32_t kv_tokens;    /* positions those pages hold (<= history) */
	uint32_t *slots;       /* [n_pages] L2 slots */
	uint64_t *checksums;   /* [n_pages] */
	uint32_t io_next;      /* pages queued so far */
	uint32_t io_done;      /* pages completed */
	int io_err;            /* first error of the transfer */
	uint32_t manifest_len; /* history length in the last manifest written */
	uint64_t io_start_ns;  /* when this transfer started */
	struct hd_deferred *deferred;
	uint32_t n_deferred, cap_deferred;
	uint32_t handle;       /* (generation << 20) | slot */
	struct engine_seq *seq;
	uint32_t attached;     /* clients holding it open */
	uint32_t owner;        /* anonymous: the client id that created it */
	bool bulk;             /* its requests are bulk unless they say otherwise */
	/* scheduler (sched.c): requests in arrival order; the head one runs */
	struct hd_job *jobs, *jobs_tail;
	uint32_t n_jobs;
	uint32_t active_idx;   /* index in the scheduler's active list */
	uint64_t last_used_ns;
};

/* A handle is (generation << 20) | slot with an 11-bit generation that skips
 * 0: handles are positive int32 (they travel as a completion's res), never 0,
 * and a stale handle matches a reused slot only after 2047 reuses. */
#define HD_SLOT_BITS 20u
#define HD_SLOT_MASK ((1u << HD_SLOT_BITS) - 1)
#define HD_GEN_MASK 0x7ffu

struct hd_sessions {
	struct hd_session **slots; /* [cap] */
	uint16_t *gen;             /* [cap] */
	uint32_t cap, n;
	uint32_t *free_slots;      /* FIFO ring [cap]: a freed slot is reused last, */
	uint32_t free_head, n_free; /* so a stale handle stays stale for long */
};

enum hd_cmd_type {
	HD_CMD_ATTACH,
	HD_CMD_DETACH,
	HD_CMD_OPEN,
	HD_CMD_CLOSE,
	HD_CMD_SESSIONS,
	HD_CMD_STATS,
	HD_CMD_SESSION_ACTION,
	HD_CMD_METRICS,
	HD_CMD_NAMED,         /* res: named sessions (an unload would save or lose them) */
	HD_CMD_STOP,
};

struct hd_cmd {
	enum hd_cmd_type type;
	struct hd_client *client;
	/* OPEN: name (may be empty), create; CLOSE: handle, destroy */
	const char *name;
	bool flag;
	bool bulk;            /* OPEN: a created session is bulk by default */
	uint32_t handle;
	int action;           /* SESSION_ACTION: Hearth__Control__SessionAction__Action */
	/* results */
	int res;
	uint32_t out_handle, out_tokens;
	bool out_created;
	void *out;            /* SESSIONS / STATS: a protobuf reply the reactor fills */
	/* completion */
	bool done;
	struct hd_cmd *next;
};

/* Scheduler statistics (reactor-owned). */
#define HD_BATCH_BUCKETS 10 /* sequences per step: 1, 2, 4, ... 256, more */
#define HD_STEP_BUCKETS 10  /* step durations: up to 0.25, 0.5, 1, ... 64 ms, more */
struct hd_sched_stats {
	uint64_t steps, step_tokens, step_ns;
	uint64_t batch[HD_BATCH_BUCKETS];
	uint64_t step_time[HD_STEP_BUCKETS];
	uint64_t timeouts, cancels, kv_waits;
	/* Steps formed while a runnable interactive request (the head of its
	 * session) was left out, and the most steps one request was left out
	 * of: the latency-class promise is that both stay 0 whatever bulk work
	 * waits (only more runnable sessions than seats can raise them). */
	uint64_t interactive_skips;
	uint32_t interactive_skip_max;
	/* Steps held for a burst (batch_wait_us) and the time held. */
	uint64_t burst_holds, burst_hold_ns;
	uint32_t queued;       /* jobs queued now */
	uint32_t active;       /* sessions with jobs now */
	/* Share of recent time in steps, time held for bursts left out, in
	 * parts per million (an average over about 32 steps; hold_for_burst). */
	uint32_t busy_ppm;
};

struct hd_sched {
	struct hd_session **active;   /* sessions with jobs */
	uint32_t n_active, cap_active;
	struct hd_job *free_jobs;
	struct engine_work *work;     /* [max_batch] */
	struct hd_job **step_jobs;    /* [max_batch] */
	struct hd_job **cand;         /* [cap_active] */
	uint32_t n_deadlines;         /* queued jobs with a deadline */
	uint64_t hold_since;          /* batch_wait_us: when the step being held was first due, or 0 */
	uint64_t hold_until;          /* ... and when it is due unless more arrive */
	uint8_t held_n[4];            /* sessions in the last 4 steps that began with a hold */
	uint32_t held_i;
	bool step_held;               /* the step being formed began with a hold */
	uint64_t last_step_end;       /* when the last step ended (hr_now_ns), or 0 */
	uint64_t gap_hold_ns;         /* time held since then */
	struct hd_sched_stats st;
};

/* Where a model is in its life (hd_daemon.models_lock guards changes). */
enum hd_model_state {
	HD_MODEL_LOADING,   /* a worker thread loads it; no reactor yet */
	HD_MODEL_READY,     /* its reactor serves clients */
	HD_MODEL_DRAINING,  /* unload --wait: new clients refused, waits for attached ones */
	HD_MODEL_UNLOADING, /* a worker thread stops its reactor, saves sessions, frees it */
};

/* A control request answered when a model's worker finishes (load, unload). */
struct hd_waiter {
	uint32_t client_id;   /* the connection to answer (it may be gone by then) */
	uint64_t req_id;
};
#define HD_MAX_WAITERS 8
#define HD_MAX_MODELS 16

/*
 * One model instance: its weights, engine and KV pool, the reactor thread that
 * serves every client attached to it, and its sessions. Fields marked
 * reactor-owned are touched only by that thread while it runs.
 */
struct hd_model {
	struct hd_daemon *daemon;
	char name[64];
	/* The daemon's configuration with this model's path, KV size, L2 file and
	 * state directory in place of the [model]/[kv] ones. */
	struct hd_config cfg;
	struct kern_backend *be;
	struct model *model;
	struct engine *engine;
	/* control -> reactor command queue */
	pthread_mutex_t cmd_lock;
	pthread_cond_t cmd_done;
	struct hd_cmd *cmd_head, *cmd_tail;
	_Atomic uint32_t doorbell;     /* private futex: bumped on every new command */
	_Atomic uint64_t reactor_turns;   /* the watchdog's proof of life */
	uint64_t idle_wake_ns;            /* longest idle sleep of the reactor */
	pthread_t reactor;
	bool reactor_running;
	/* reactor-owned */
	struct hd_client **clients;
	uint32_t n_clients;
	struct hd_sessions sessions;
	struct hd_sched sched;
	struct hd_stats stats;
	struct hd_tiering *tiering;   /* NULL: no L2 configured */
	bool stopping;
	/* control-owned: the model's life */
	enum hd_model_state state;
	uint32_t n_attached;          /* connections attached to it */
	pthread_t worker;             /* load or unload */
	bool worker_started;
	bool worker_finished;         /* set by the worker (atomic builtins) */
	int worker_res;               /* 0 or -errno, with worker_err */
	char worker_err[1024];
	struct hd_waiter waiters[HD_MAX_WAITERS];
	uint32_t n_waiters;
	uint64_t wd_turns;            /* reactor_turns at the last watchdog ping */
};

struct hd_daemon {
	struct hd_config cfg;
	uint64_t start_ns;
	/* Models in load order; the first is the default one (a Hello that names
	 * none). The control thread adds, removes and changes their state under
	 * the lock; the metrics thread reads under it. */
	pthread_mutex_t models_lock;
	struct hd_model *models[HD_MAX_MODELS];
	uint32_t n_models;
	int worker_efd;               /* eventfd: a model's worker finished */
	uint64_t idle_wake_ns;        /* longest idle sleep of a reactor (watchdog) */
	void *http;                   /* the metrics server, or NULL */
	/* control-owned */
	uint32_t next_client_id;
	uint32_t n_conns, n_refused;
	struct hd_client *conns;
};

/* reactor.c */
int hd_reactor_start(struct hd_model *hm);
/* Queue a command and wait for the reactor to finish it; returns cmd->res. */
int hd_reactor_call(struct hd_model *hm, struct hd_cmd *cmd);
/* Drain in-flight work, stop the reactor thread and join it. */
void hd_reactor_stop(struct hd_model *hm);

/* session.c (reactor thread only) */
int hd_sessions_init(struct hd_sessions *t);
void hd_sessions_fini(struct hd_model *hm);
struct hd_session *hd_session_get(struct hd_model *hm, uint32_t handle);
struct hd_session *hd_session_find_name(struct hd_model *hm, const char *name, size_t len);
/* Open (or create) a session for client c: returns 0 and *ret, or -errno. */
int hd_session_open(struct hd_model *hm, struct hd_client *c, const char *name, size_t len,
		    bool create, bool excl, struct hd_session **ret);
/* Close c's use of handle; destroy a named one too when asked (and unused). */
int hd_session_close(struct hd_model *hm, struct hd_client *c, uint32_t handle, bool destroy);
/* Close every session c holds (anonymous ones are freed). */
void hd_session_close_all(struct hd_model *hm, struct hd_client *c);
bool hd_client_may_use(const struct hd_client *c, uint32_t handle);

/* tier.c (reactor thread only): L1 <-> L2 paging, eviction, manifests. */
struct hd_tier_stats {
	uint64_t pages_out, pages_in, bytes_out, bytes_in, errors, recomputed;
	uint64_t outs, ins, out_ns, in_ns, out_max_ns, in_max_ns;
	uint32_t l2_slots, l2_free;
	const char *pager;
};
void hd_tier_stats(const struct hd_model *hm, struct hd_tier_stats *ret);
int hd_tier_init(struct hd_model *hm);
void hd_tier_fini(struct hd_model *hm);
/* Reap I/O, advance transfers, evict under the watermark, checkpoint.
 * Returns progress made (0: nothing to do now). */
uint32_t hd_tier_turn(struct hd_model *hm);
/* I/O in flight (the reactor must keep turning, not sleep long). */
bool hd_tier_busy(const struct hd_model *hm);
/* 0 when s's KV is usable now; -EAGAIN when it is (being) paged in: defer. */
int hd_tier_ready(struct hd_model *hm, struct hd_session *s);
/* Ask for pages: evict idle sessions until n pages could be free. Returns
 * true when eviction can help (the caller defers), false when it cannot. */
bool hd_tier_make_room(struct hd_model *hm, uint32_t n);
int hd_tier_evict(struct hd_model *hm, struct hd_session *s);
/* SIGTERM: write every named session's pages and manifest. */
void hd_tier_flush(struct hd_model *hm);
/* s is being destroyed; drop: delete its manifest too. */
void hd_tier_forget(struct hd_model *hm, struct hd_session *s, bool drop);
/* Queue sqe until s is paged in: 0, or -EBUSY when too many wait. */
int hd_session_defer(struct hd_session *s, uint32_t client_id, const struct shm_sqe *sqe);
/* Register a session restored from a manifest (session.c). */
struct hd_session *hd_session_restore(struct hd_model *hm, const char *name,
				      struct engine_seq *seq);
struct hd_client *hd_client_by_id(struct hd_model *hm, uint32_t id);

/* ops.c (reactor thread only): execute one descriptor taken from c's SQ
 * (counted in c->n_outstanding until its last completion). */
void hd_ops_execute(struct hd_model *hm, struct hd_client *c, const struct shm_sqe *sqe);
/* TRUNCATE and SESSION_CLOSE, run at once or when they reach the head of
 * their session's queue: res. */
int hd_ops_run_simple(struct hd_model *hm, struct hd_client *c, const struct shm_sqe *q);
/* Post one completion into the CQ slot kept for it; one without
 * SHM_CQE_F_MORE is the descriptor's last and releases the slot. */
void hd_post_cqe(struct hd_client *c, uint64_t user_data, int32_t res, uint32_t flags,
		 uint32_t out_len, uint32_t pos);
uint32_t hd_cq_room(struct hd_client *c);
/* A descriptor's last completion: counted in the per-op statistics (latency
 * from t0) and posted. */
void hd_complete(struct hd_model *hm, struct hd_client *c, const struct shm_sqe *q, int res,
		 uint64_t t0, uint32_t out_len, uint32_t pos);

/* sched.c (reactor thread only): continuous batching. */
int hd_sched_init(struct hd_model *hm);
void hd_sched_fini(struct hd_model *hm);
/* Queue a validated descriptor on s (APPEND, SCORE, GENERATE, or TRUNCATE /
 * SESSION_CLOSE behind earlier ones): 0, or -errno to complete it with. */
int hd_sched_submit(struct hd_model *hm, struct hd_client *c, struct hd_session *s,
		    const struct shm_sqe *q);
/* Form and run one step from every runnable job; returns the jobs that
 * advanced (0: none can run now). */
uint32_t hd_sched_turn(struct hd_model *hm);
/* Some job could run now (the reactor must not sleep). */
bool hd_sched_ready(struct hd_model *hm);
/* The earliest deadline of a job not started (the reactor wakes for it), 0: none. */
uint64_t hd_sched_next_deadline(const struct hd_model *hm);
int hd_sched_cancel(struct hd_model *hm, struct hd_client *c, uint64_t user_data);
/* Forget c's jobs (it disconnected: nobody reads their completions). */
void hd_sched_drop_client(struct hd_model *hm, struct hd_client *c);
/* s is being destroyed: its remaining jobs complete with err. */
void hd_sched_drop_session(struct hd_model *hm, struct hd_session *s, int err);
static inline bool hd_session_busy(const struct hd_session *s)
{
	return s->jobs != NULL;
}

/* A copy of everything /metrics exports, taken by the reactor. */
struct hd_metrics {
	struct hd_op_stats ops[SHM_OP__MAX];
	struct hd_sched_stats sched;
	uint64_t tokens, steps, score_steps, disconnects, bad_descriptors;
	struct model_graph_counts graphs;
	uint32_t clients, sessions, kv_total, kv_free, sessions_l2;
	uint64_t kv_bytes, dev_free, dev_total; /* dev_*: 0 when the backend cannot tell */
	struct hd_tier_stats tier;
};

/* metrics.c: Prometheus text exposition over HTTP (libmicrohttpd). */
int hd_metrics_start(struct hd_daemon *d);
void hd_metrics_stop(struct hd_daemon *d);

/* models.c (control thread, or main before the control loop) */
/* By name; "" or NULL: the default model (the first in the list). */
struct hd_model *hd_model_find(struct hd_daemon *d, const char *name);
const char *hd_model_state_name(enum hd_model_state s);
/* The path the configuration gives a model name ([model] or [models]), or NULL. */
const char *hd_model_config_path(const struct hd_daemon *d, const char *name);
/* Change a state under models_lock (the metrics thread reads states). */
void hd_model_set_state(struct hd_daemon *d, struct hd_model *m, enum hd_model_state s);
/* Load now and start serving it (start-up): 0 or -errno with err. */
int hd_model_load_now(struct hd_daemon *d, const char *name, const char *path, uint32_t kv_pages,
		      char *err, size_t errlen);
/* Add it as LOADING and load it on a worker thread (hearthctl load). */
int hd_model_load_start(struct hd_daemon *d, const char *name, const char *path,
			uint32_t kv_pages, struct hd_model **ret, char *err, size_t errlen);
/* UNLOADING: a worker stops its reactor (no client attached), saves the
 * named sessions and frees it. */
int hd_model_unload_start(struct hd_daemon *d, struct hd_model *m);
/* A model whose worker finished (worker_efd fired), or NULL. A load is now
 * READY (worker_res 0) or failed (worker_res, worker_err: forget it); an
 * unload is done (forget it). *ret_was: the state the worker ran in. */
struct hd_model *hd_model_reap_one(struct hd_daemon *d, enum hd_model_state *ret_was);
/* Remove from the list and free. */
void hd_model_forget(struct hd_daemon *d, struct hd_model *m);
/* Daemon stop: wait for workers, drain and stop every reactor, detach clients. */
void hd_models_stop(struct hd_daemon *d);
/* ... then save every model's named sessions and free them all. */
void hd_models_shutdown(struct hd_daemon *d);

/* control.c */
/* STATUS= for systemd: the models served and the connections, after prefix. */
void hd_notify_serving(struct hd_daemon *d, const char *prefix);
int hd_control_run(struct hd_daemon *d, int listen_fd);
int hd_control_listen(const struct hd_config *cfg, int *ret_fd);

#endif

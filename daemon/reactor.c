/* SPDX-License-Identifier: MIT */
/*
 * The reactor: one thread per model that owns SQ reading, engine calls and CQ
 * posting for all of that model's clients, with no locks on the hot path. It
 * busy-polls while there is work and for spin_us after, then announces
 * need-wakeup in every client's region and sleeps on all their futex words
 * and its private command doorbell at once (futex_waitv).
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "control.pb-c.h"
#include "hearthd.h"
#include "hr_common.h"
#include "hr_log.h"
#include "shm_wait.h"

#define SQ_BATCH 32u
#define DRAIN_TIMEOUT_NS (10ull * 1000000000ull)

/* ---- commands from the control thread ------------------------------------ */

int hd_reactor_call(struct hd_model *hm, struct hd_cmd *cmd)
{
	cmd->done = false;
	cmd->next = NULL;
	pthread_mutex_lock(&hm->cmd_lock);
	if (hm->cmd_tail)
		hm->cmd_tail->next = cmd;
	else
		hm->cmd_head = cmd;
	hm->cmd_tail = cmd;
	pthread_mutex_unlock(&hm->cmd_lock);
	/* Pairs with the acquire load of the doorbell in reactor_sleep(). */
	atomic_fetch_add_explicit(&hm->doorbell, 1, memory_order_release);
	syscall(SYS_futex, &hm->doorbell, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	pthread_mutex_lock(&hm->cmd_lock);
	while (!cmd->done)
		pthread_cond_wait(&hm->cmd_done, &hm->cmd_lock);
	pthread_mutex_unlock(&hm->cmd_lock);
	return cmd->res;
}

static int client_attach(struct hd_model *hm, struct hd_client *c)
{
	struct hd_client **cs;

	cs = realloc(hm->clients, (hm->n_clients + 1) * sizeof(*cs));
	if (!cs)
		return -ENOMEM;
	hm->clients = cs;
	hm->clients[hm->n_clients++] = c;
	c->in_reactor = true;
	return 0;
}

static void client_detach(struct hd_model *hm, struct hd_client *c)
{
	for (uint32_t i = 0; i < hm->n_clients; i++)
		if (hm->clients[i] == c) {
			hm->clients[i] = hm->clients[--hm->n_clients];
			break;
		}
	/* Its queued and running requests go: nobody reads their completions. */
	hd_sched_drop_client(hm, c);
	atomic_fetch_add_explicit(&hm->stats.disconnects, 1, memory_order_relaxed);
	hd_session_close_all(hm, c);
	c->in_reactor = false;
	/* Wake a client thread that may still sleep on this region. */
	shm_waitq_shutdown(&c->hdr->client_wq);
}

static void fill_sessions(struct hd_model *hm, Hearth__Control__SessionsReply *rep)
{
	uint64_t now = hr_now_ns();
	uint32_t k = 0;

	rep->sessions = calloc(hm->sessions.n ? hm->sessions.n : 1, sizeof(*rep->sessions));
	if (!rep->sessions)
		return;
	for (uint32_t i = 0; i < hm->sessions.cap; i++) {
		struct hd_session *s = hm->sessions.slots[i];
		Hearth__Control__SessionInfo *si;

		if (!s || !(si = calloc(1, sizeof(*si))))
			continue;
		hearth__control__session_info__init(si);
		si->name = strdup(s->name ? s->name : "");
		si->handle = s->handle;
		si->n_tokens = engine_seq_len(s->seq);
		si->kv_pages = (engine_seq_len(s->seq) + hm->cfg.page_tokens - 1) / hm->cfg.page_tokens;
		{
			static const char *const tiers[] = { "L1", "L1->L2", "L2", "L2->L1" };
			si->tier = strdup(tiers[s->tier]);
		}
		si->pinned = s->pinned;
		si->attached = s->attached;
		si->last_used_ms = (now - s->last_used_ns) / 1000000;
		rep->sessions[k++] = si;
	}
	rep->n_sessions = k;
}

/* Everything stats and /metrics export, read in one place. */
static void snapshot(struct hd_model *hm, struct hd_metrics *m)
{
	memcpy(m->ops, hm->stats.ops, sizeof(m->ops));
	m->sched = hm->sched.st;
	m->sched.active = hm->sched.n_active;
	m->tokens = atomic_load(&hm->stats.tokens);
	m->steps = engine_n_steps(hm->engine);
	m->score_steps = engine_n_score_steps(hm->engine);
	engine_graph_counts(hm->engine, &m->graphs);
	m->disconnects = atomic_load(&hm->stats.disconnects);
	m->bad_descriptors = atomic_load(&hm->stats.bad_descriptors);
	m->clients = hm->n_clients;
	m->sessions = hm->sessions.n;
	m->kv_total = kv_pool_n_pages(engine_pool(hm->engine));
	m->kv_free = kv_pool_n_free(engine_pool(hm->engine));
	m->sessions_l2 = 0;
	for (uint32_t i = 0; i < hm->sessions.cap; i++)
		m->sessions_l2 += hm->sessions.slots[i] && hm->sessions.slots[i]->tier != HD_TIER_L1;
	hd_tier_stats(hm, &m->tier);
	m->kv_bytes = (uint64_t)m->kv_total * engine_page_bytes(hm->engine);
	m->dev_free = m->dev_total = 0;
	if (hm->be->ops->mem_info)
		hm->be->ops->mem_info(hm->be, &m->dev_free, &m->dev_total);
}

static void fill_stats(struct hd_model *hm, Hearth__Control__StatsReply *rep)
{
	struct hd_metrics m;

	snapshot(hm, &m);
	rep->clients = m.clients;
	rep->sessions = m.sessions;
	rep->kv_pages_total = m.kv_total;
	rep->kv_pages_free = m.kv_free;
	rep->tokens_processed = m.tokens;
	rep->steps = m.steps;
	rep->score_steps = m.score_steps;
	rep->graph_captures = m.graphs.captures;
	rep->graph_recaptures = m.graphs.recaptures;
	rep->graph_capture_us = m.graphs.capture_ns / 1000;
	rep->disconnects = m.disconnects;
	rep->bad_descriptors = m.bad_descriptors;
	rep->pages_out = m.tier.pages_out;
	rep->pages_in = m.tier.pages_in;
	rep->bytes_out = m.tier.bytes_out;
	rep->bytes_in = m.tier.bytes_in;
	rep->tier_errors = m.tier.errors;
	rep->recomputed = m.tier.recomputed;
	rep->l2_slots = m.tier.l2_slots;
	rep->l2_slots_free = m.tier.l2_free;
	rep->pager = strdup(m.tier.pager ? m.tier.pager : "");
	rep->pageouts = m.tier.outs;
	rep->pageout_ns_total = m.tier.out_ns;
	rep->pageout_ns_max = m.tier.out_max_ns;
	rep->pageins = m.tier.ins;
	rep->pagein_ns_total = m.tier.in_ns;
	rep->pagein_ns_max = m.tier.in_max_ns;
	rep->sessions_not_in_l1 = m.sessions_l2;
	rep->kv_page_bytes = engine_page_bytes(hm->engine);
	rep->kv_bytes = m.kv_bytes;
	rep->device_mem_free = m.dev_free;
	rep->device_mem_total = m.dev_total;
	rep->model = hm->name;
	rep->weight_bytes = hm->model->weight_bytes;
	rep->model_load_seconds = hm->model->load_seconds;
	/* Strings and arrays the reply borrows (live as long as the daemon):
	 * the control thread frees only what it knows to free. */
	rep->model_load_how = hm->model->load_how;
	if (hm->be->name)
		rep->backend = (char *)hm->be->name;
	/* Queue depths: rings as the reactor sees them now (a bad index is
	 * the reactor's to handle on its next turn: counted as 0 here). */
	for (uint32_t i = 0; i < hm->n_clients; i++) {
		struct hd_client *c = hm->clients[i];
		int n;

		if (!c || c->dead)
			continue;
		n = shm_ring_cons_refresh(&c->sq.r);
		rep->sq_pending += n > 0 ? (uint32_t)n : 0;
		if (shm_ring_prod_refresh(&c->cq.r) >= 0)
			rep->cq_pending += c->cq.r.tail - c->cq.r.head;
	}
	rep->requests_queued = m.sched.queued;
	rep->sessions_active = m.sched.active;
	rep->batch_sizes = calloc(HD_BATCH_BUCKETS, sizeof(uint64_t));
	if (rep->batch_sizes) {
		memcpy(rep->batch_sizes, m.sched.batch, sizeof(m.sched.batch));
		rep->n_batch_sizes = HD_BATCH_BUCKETS;
	}
	rep->step_times = calloc(HD_STEP_BUCKETS, sizeof(uint64_t));
	if (rep->step_times) {
		memcpy(rep->step_times, m.sched.step_time, sizeof(m.sched.step_time));
		rep->n_step_times = HD_STEP_BUCKETS;
	}
	rep->step_tokens = m.sched.step_tokens;
	rep->step_ns = m.sched.step_ns;
	rep->timeouts = m.sched.timeouts;
	rep->cancels = m.sched.cancels;
	rep->kv_waits = m.sched.kv_waits;
	rep->interactive_skips = m.sched.interactive_skips;
	rep->interactive_skip_max = m.sched.interactive_skip_max;
	rep->burst_holds = m.sched.burst_holds;
	rep->burst_hold_us = m.sched.burst_hold_ns / 1000;
	rep->busy_ppm = m.sched.busy_ppm;
	for (uint32_t i = 0; i < hm->sessions.cap; i++)
		if (hm->sessions.slots[i])
			rep->deferred += hm->sessions.slots[i]->n_deferred;
	rep->latency_bounds_ns = (uint64_t *)hd_lat_bounds_ns;
	rep->n_latency_bounds_ns = HD_LAT_BUCKETS;
	rep->ops = calloc(SHM_OP__MAX, sizeof(*rep->ops));
	if (!rep->ops)
		return;
	for (unsigned op = 0; op < SHM_OP__MAX; op++) {
		/* The histogram rides in the same allocation (freed with it). */
		Hearth__Control__OpCounter *oc =
			calloc(1, sizeof(*oc) + sizeof(m.ops[op].buckets));
		if (!oc)
			continue;
		hearth__control__op_counter__init(oc);
		oc->op = strdup(shm_op_name(op));
		oc->count = m.ops[op].count;
		oc->errors = m.ops[op].errors;
		oc->total_ns = m.ops[op].total_ns;
		oc->max_ns = m.ops[op].max_ns;
		oc->buckets = (uint64_t *)(void *)(oc + 1);
		memcpy(oc->buckets, m.ops[op].buckets, sizeof(m.ops[op].buckets));
		oc->n_buckets = HD_LAT_BUCKETS + 1;
		rep->ops[rep->n_ops++] = oc;
	}
}

static void run_cmd(struct hd_model *hm, struct hd_cmd *cmd)
{
	struct hd_session *s;

	switch (cmd->type) {
	case HD_CMD_ATTACH:
		cmd->res = client_attach(hm, cmd->client);
		break;
	case HD_CMD_DETACH:
		client_detach(hm, cmd->client);
		cmd->res = 0;
		break;
	case HD_CMD_OPEN:
		cmd->res = hd_session_open(hm, cmd->client, cmd->name, strlen(cmd->name), cmd->flag,
					   false, &s);
		if (cmd->res >= 0) {
			cmd->out_created = cmd->res == 1;
			if (cmd->out_created)
				s->bulk = cmd->bulk;
			cmd->out_handle = s->handle;
			cmd->out_tokens = engine_seq_len(s->seq);
			cmd->res = 0;
		}
		break;
	case HD_CMD_CLOSE:
		/* Requests still queued on it keep it (the ring's SESSION_CLOSE
		 * waits behind them instead). */
		s = hd_session_get(hm, cmd->handle);
		cmd->res = s && hd_session_busy(s) && hd_client_may_use(cmd->client, cmd->handle)
				   ? -EBUSY
				   : hd_session_close(hm, cmd->client, cmd->handle, cmd->flag);
		break;
	case HD_CMD_SESSIONS:
		fill_sessions(hm, cmd->out);
		cmd->res = 0;
		break;
	case HD_CMD_STATS:
		fill_stats(hm, cmd->out);
		cmd->res = 0;
		break;
	case HD_CMD_SESSION_ACTION:
		s = cmd->name[0] ? hd_session_find_name(hm, cmd->name, strlen(cmd->name))
				 : hd_session_get(hm, cmd->handle);
		cmd->res = s ? 0 : -ENOENT;
		if (s && cmd->action == HEARTH__CONTROL__SESSION_ACTION__ACTION__EVICT)
			cmd->res = hd_tier_evict(hm, s);
		else if (s)
			s->pinned = cmd->action == HEARTH__CONTROL__SESSION_ACTION__ACTION__PIN;
		break;
	case HD_CMD_NAMED:
		cmd->res = 0;
		for (uint32_t i = 0; i < hm->sessions.cap; i++)
			cmd->res += hm->sessions.slots[i] && hm->sessions.slots[i]->name;
		break;
	case HD_CMD_METRICS:
		snapshot(hm, cmd->out);
		cmd->res = 0;
		break;
	case HD_CMD_STOP:
		/* Completed when the reactor has drained (reactor_main). */
		hm->stopping = true;
		return;
	}
	cmd->done = true;
}

/* Run queued commands; returns how many. STOP stays pending until drained. */
static uint32_t run_cmds(struct hd_model *hm, struct hd_cmd **stop)
{
	struct hd_cmd *list;
	uint32_t n = 0;

	pthread_mutex_lock(&hm->cmd_lock);
	list = hm->cmd_head;
	hm->cmd_head = hm->cmd_tail = NULL;
	pthread_mutex_unlock(&hm->cmd_lock);
	if (!list)
		return 0;
	for (struct hd_cmd *cmd = list, *next; cmd; cmd = next, n++) {
		next = cmd->next;
		run_cmd(hm, cmd);
		if (cmd->type == HD_CMD_STOP)
			*stop = cmd;
	}
	pthread_mutex_lock(&hm->cmd_lock);
	pthread_cond_broadcast(&hm->cmd_done);
	pthread_mutex_unlock(&hm->cmd_lock);
	return n;
}

/* ---- the hot path ------------------------------------------------------------ */

/* A client broke the protocol: stop serving it and let the control thread
 * see a hang-up, which detaches it like any other disconnect. */
static void client_kill(struct hd_model *hm, struct hd_client *c, const char *why)
{
	c->dead = true;
	if (c->killed)
		return;
	c->killed = true;
	hr_warn("client %u (pid %d): %s; disconnecting", c->id, (int)c->pid, why);
	shutdown(c->sock, SHUT_RDWR);
}

/* CQ slots free beyond the ones kept for c's outstanding descriptors. */
static uint32_t cq_avail(struct hd_client *c)
{
	uint32_t room = hd_cq_room(c);

	return room > c->n_outstanding ? room - c->n_outstanding : 0;
}

/* Take up to SQ_BATCH descriptors of one client; returns how many. Each
 * keeps a CQ slot until its last completion, so a client that submits more
 * than its CQ holds waits in its own SQ (backpressure), never dropped. */
static uint32_t serve_client(struct hd_model *hm, struct hd_client *c)
{
	struct shm_sqe batch[SQ_BATCH];
	uint32_t room, idx, n;
	int r;

	room = cq_avail(c);
	if (!room)
		return 0;
	r = shm_sq_peek(&c->sq, HR_MIN(room, SQ_BATCH), &idx);
	if (r <= 0) {
		if (r < 0)
			client_kill(hm, c, "SQ tail moved impossibly");
		return 0;
	}
	n = (uint32_t)r;
	/* One copy of each descriptor into private memory; the slots go back to
	 * the client at once and the copies are all we look at from here on. */
	for (uint32_t i = 0; i < n; i++)
		shm_sq_copy(&c->sq, idx + i, &batch[i]);
	shm_sq_advance(&c->sq, n);
	c->n_outstanding += n;
	for (uint32_t i = 0; i < n; i++)
		hd_ops_execute(hm, c, &batch[i]);
	return n;
}

static void notify_client(struct hd_client *c)
{
	if (shm_cq_publish(&c->cq))
		shm_wake(&c->hdr->client_wq, SHM_WAIT_F_CQ_DATA | SHM_WAIT_F_SQ_SPACE);
}

/* Take every client's submissions, run one batched step over all of them,
 * then publish every CQ. */
static uint32_t reactor_turn(struct hd_model *hm)
{
	uint32_t work = 0;

	for (uint32_t i = 0; i < hm->n_clients; i++)
		if (!hm->clients[i]->dead)
			work += serve_client(hm, hm->clients[i]);
	work += hd_sched_turn(hm);
	for (uint32_t i = 0; i < hm->n_clients; i++) {
		struct hd_client *c = hm->clients[i];

		if (c->dead && c->killed)
			continue;
		notify_client(c);
		if (c->dead)
			client_kill(hm, c, "CQ head moved impossibly");
	}
	return work;
}

/* Submissions with a CQ slot to answer them: work the reactor can do now. A
 * client that stopped reaping its CQ has none: the reactor sleeps until it
 * frees slots. */
static bool client_has_work(struct hd_client *c)
{
	if (c->dead)
		return false;
	return cq_avail(c) && shm_ring_cons_refresh(&c->sq.r) != 0;
}

/*
 * Sleep until a client submits, a blocked CQ gains room, or a command comes.
 * Every waitq is announced first and every condition re-checked after
 * (shm_wait.h explains the handshake), so no wake-up is lost.
 */
static void reactor_sleep(struct hd_model *hm)
{
	static bool waitv_missing;
	struct futex_waitv w[FUTEX_WAITV_MAX];
	uint32_t n = 0, bits[FUTEX_WAITV_MAX], ci = 0;
	bool idle = true;
	struct timespec ts;

	/* Pairs with the release increment in hd_reactor_call(). */
	w[n++] = (struct futex_waitv){ .val = atomic_load_explicit(&hm->doorbell, memory_order_acquire),
				       .uaddr = (uintptr_t)&hm->doorbell,
				       .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG };
	for (; ci < hm->n_clients && n < FUTEX_WAITV_MAX; ci++) {
		struct hd_client *c = hm->clients[ci];

		if (c->dead)
			continue;
		bits[n] = SHM_WAIT_F_SQ_DATA | SHM_WAIT_F_CQ_SPACE;
		c->wait_seq = shm_wait_prepare(&c->hdr->daemon_wq, bits[n]);
		w[n++] = (struct futex_waitv){ .val = c->wait_seq, .uaddr = (uintptr_t)&c->hdr->daemon_wq.futex,
					       .flags = FUTEX_32 };
	}
	pthread_mutex_lock(&hm->cmd_lock);
	idle = hm->cmd_head == NULL;
	pthread_mutex_unlock(&hm->cmd_lock);
	for (uint32_t i = 0; idle && i < hm->n_clients; i++)
		idle = !client_has_work(hm->clients[i]);
	idle = idle && !hd_sched_ready(hm);
	if (idle) {
		/* While draining, wake often to notice the end of the drain. Past
		 * FUTEX_WAITV_MAX - 1 clients, the ones not watched are polled. */
		clock_gettime(CLOCK_MONOTONIC, &ts);
		if (ci < hm->n_clients)
			ts.tv_nsec += 100000;
		else if (hm->stopping)
			ts.tv_nsec += 10000000;
		else if (hm->idle_wake_ns < 1000000000ull)
			ts.tv_nsec += (long)hm->idle_wake_ns; /* the watchdog wants proof of life */
		else
			ts.tv_sec += 1;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		/* A queued request's deadline: wake to complete it with -ETIMEDOUT. */
		uint64_t dl = hd_sched_next_deadline(hm);
		if (dl && dl < (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) {
			ts.tv_sec = (time_t)(dl / 1000000000ull);
			ts.tv_nsec = (long)(dl % 1000000000ull);
		}
		if (!waitv_missing &&
		    syscall(SYS_futex_waitv, w, n, 0, &ts, CLOCK_MONOTONIC) < 0 && errno == ENOSYS) {
			waitv_missing = true;
			hr_warn("futex_waitv unavailable (kernel < 5.16): the reactor polls every 100 us when idle");
		}
		if (waitv_missing)
			nanosleep(&(struct timespec){ 0, 100000 }, NULL);
	}
	for (uint32_t i = 0, k = 1; i < hm->n_clients && k < n; i++) {
		struct hd_client *c = hm->clients[i];
		if (!c->dead)
			shm_wait_finish(&c->hdr->daemon_wq, bits[k++]);
	}
}

/* Nothing in flight: no request queued or running and no submission waiting
 * (even for CQ room: a slow reader still gets everything it asked for,
 * within DRAIN_TIMEOUT_NS). */
static bool drained(struct hd_model *hm)
{
	for (uint32_t i = 0; i < hm->n_clients; i++) {
		struct hd_client *c = hm->clients[i];
		if (!c->dead && (c->n_outstanding || shm_ring_cons_refresh(&c->sq.r) != 0))
			return false;
	}
	return true;
}

static void *reactor_main(void *arg)
{
	struct hd_model *hm = arg;
	uint64_t spin_ns = (uint64_t)hm->cfg.spin_us * 1000, last_work = hr_now_ns(), stop_at = 0;
	struct hd_cmd *stop = NULL;

	for (;;) {
		uint32_t work = run_cmds(hm, &stop) + reactor_turn(hm) + hd_tier_turn(hm);

		/* Relaxed: read by the control thread only to see that it changes. */
		atomic_store_explicit(&hm->reactor_turns,
				      atomic_load_explicit(&hm->reactor_turns, memory_order_relaxed) + 1,
				      memory_order_relaxed);
		uint64_t now;

		if (stop) {
			if (!stop_at)
				stop_at = hr_now_ns() + DRAIN_TIMEOUT_NS;
			if (drained(hm) || hr_now_ns() > stop_at)
				break;
		}
		if (work || hd_tier_busy(hm)) {
			last_work = hr_now_ns();
			continue;
		}
		now = hr_now_ns();
		if (now - last_work < spin_ns) {
			shm_cpu_relax();
			continue;
		}
		reactor_sleep(hm);
		last_work = hr_now_ns() - spin_ns; /* after a sleep, spin again only on work */
	}
	pthread_mutex_lock(&hm->cmd_lock);
	stop->res = 0;
	stop->done = true;
	pthread_cond_broadcast(&hm->cmd_done);
	pthread_mutex_unlock(&hm->cmd_lock);
	return NULL;
}

/* The reactor is named here, not by itself, so that it has its name by the
 * time the model is marked ready (and READY sent). */
int hd_reactor_start(struct hd_model *hm)
{
	char name[16];
	int r = pthread_create(&hm->reactor, NULL, reactor_main, hm);

	if (r == 0) {
		hr_thread_name_fmt(name, "hd-r:", hm->name);
		(void)pthread_setname_np(hm->reactor, name);
	}
	return -r;
}

void hd_reactor_stop(struct hd_model *hm)
{
	struct hd_cmd cmd = { .type = HD_CMD_STOP };

	hd_reactor_call(hm, &cmd);
	pthread_join(hm->reactor, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * KV tiering on the reactor thread: page sessions out of L1 into the L2 file
 * when free L1 pages fall under a watermark (least recently used idle
 * sessions first, whole sessions), page them back in when a request needs
 * them (that request waits; others do not), and keep named sessions durable
 * through manifests (manifest.proto) written by a small writer thread.
 * Nothing is ever lost: a session whose pages cannot be written stays in L1,
 * and one whose pages cannot be read back (I/O error, checksum) is recomputed
 * from its token history.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_common.h"
#include "hr_log.h"
#include "tier_pvt.h"

#define IO_BATCH 32u
/* ---- transfers ------------------------------------------------------------------- */

static void transfer_free(struct hd_session *s)
{
	free(s->slots);
	free(s->checksums);
	s->slots = NULL;
	s->checksums = NULL;
	s->n_pages = s->io_next = s->io_done = 0;
	s->io_err = 0;
}

static void slots_release(struct hd_model *hm, struct hd_session *s)
{
	for (uint32_t i = 0; i < s->n_pages; i++)
		if (s->slots[i] != UINT32_MAX)
			kv_l2_slot_free(hm->tiering->l2, s->slots[i]);
	transfer_free(s);
}

static int pageout_start(struct hd_model *hm, struct hd_session *s)
{
	const struct kv_block_table *bt = engine_seq_kv(s->seq);
	uint32_t n;

	if (!hm->tiering->l2)
		return -EOPNOTSUPP;
	if (s->tier != HD_TIER_L1 || hd_session_busy(s) || s->pinned || !bt->n_pages)
		return -EBUSY;
	/* The KV may hold fewer positions than the history (tokens pending):
	 * only the computed positions travel; the rest recompute on use. */
	n = (bt->n_tokens + hm->cfg.page_tokens - 1) / hm->cfg.page_tokens;
	if (!n)
		return -EBUSY;
	if (kv_l2_n_free_slots(hm->tiering->l2) < n)
		return -ENOSPC;
	s->slots = malloc(n * sizeof(uint32_t));
	s->checksums = calloc(n, sizeof(uint64_t));
	if (!s->slots || !s->checksums) {
		transfer_free(s);
		return -ENOMEM;
	}
	s->n_pages = n;
	s->kv_tokens = bt->n_tokens;
	for (uint32_t i = 0; i < s->n_pages; i++)
		s->slots[i] = (uint32_t)kv_l2_slot_alloc(hm->tiering->l2);
	s->tier = HD_TIER_PAGING_OUT;
	hm->tiering->scan = true;
	s->io_start_ns = hr_now_ns();
	s->io_next = s->io_done = 0;
	s->io_err = 0;
	return 0;
}

/* Queue as many of s's page transfers as staging allows. */
static uint32_t transfer_pump(struct hd_model *hm, struct hd_session *s)
{
	struct hd_tiering *t = hm->tiering;
	struct kern_backend *be = hm->be;
	const struct kv_block_table *bt = engine_seq_kv(s->seq);
	bool out = s->tier == HD_TIER_PAGING_OUT;
	struct kv_l2_io ios[IO_BATCH];
	uint32_t n = 0, queued = 0;
	int r;

	while (s->io_next + n < s->n_pages && n < IO_BATCH) {
		uint32_t i = s->io_next + n;
		void *buf = kv_l2_staging_get(t->l2);

		if (!buf)
			break;
		if (out && be->ops->download(be, buf, engine_page_ptr(hm->engine, bt->pages[i]),
					      t->page_bytes) < 0) {
			kv_l2_staging_put(t->l2, buf);
			s->io_err = -EIO;
			break;
		}
		ios[n++] = (struct kv_l2_io){ .tag = ((uint64_t)s->handle << 32) | i, .buf = buf,
					      .slot = s->slots[i], .checksum = s->checksums[i] };
	}
	if (!n)
		return 0;
	r = out ? kv_l2_write(t->l2, ios, n) : kv_l2_read(t->l2, ios, n);
	queued = r > 0 ? (uint32_t)r : 0;
	for (uint32_t i = queued; i < n; i++)
		kv_l2_staging_put(t->l2, ios[i].buf);
	if (r < 0 && !s->io_err)
		s->io_err = r;
	s->io_next += queued;
	t->inflight += queued;
	return queued;
}

/* Every page of s's transfer has completed. */
static void transfer_done(struct hd_model *hm, struct hd_session *s)
{
	struct hd_tiering *t = hm->tiering;

	if (s->tier == HD_TIER_PAGING_OUT) {
		if (!s->io_err)
			s->io_err = kv_l2_sync(t->l2); /* pages durable before any manifest */
		if (s->io_err) {
			/* ENOSPC, EIO: the session stays in L1, whole. */
			t->errors++;
			hr_warn("page-out of session %#x failed: %s; it stays in GPU/host memory",
				s->handle, strerror(-s->io_err));
			slots_release(hm, s);
			s->tier = HD_TIER_L1;
			return;
		}
		t->pages_out += s->n_pages;
		t->outs++;
		t->out_ns += hr_now_ns() - s->io_start_ns;
		t->out_max_ns = HR_MAX(t->out_max_ns, hr_now_ns() - s->io_start_ns);
		t->bytes_out += (uint64_t)s->n_pages * t->page_bytes;
		engine_seq_drop_kv(hm->engine, s->seq);
		s->tier = HD_TIER_L2;
		hd_manifest_save(hm, s, true);
		return;
	}
	/* Page-in. */
	if (s->io_err) {
		t->errors++;
		t->recomputed++;
		hr_warn("page-in of session %#x failed: %s; recomputing it from its %u tokens",
			s->handle, strerror(-s->io_err), engine_seq_len(s->seq));
		engine_seq_drop_kv(hm->engine, s->seq);
	} else {
		t->pages_in += s->n_pages;
		t->ins++;
		t->in_ns += hr_now_ns() - s->io_start_ns;
		t->in_max_ns = HR_MAX(t->in_max_ns, hr_now_ns() - s->io_start_ns);
		t->bytes_in += (uint64_t)s->n_pages * t->page_bytes;
		engine_seq_kv_restored(hm->engine, s->seq, s->kv_tokens);
	}
	slots_release(hm, s);
	s->tier = HD_TIER_L1;
	s->want_in = false;
	/* The manifest must not keep pointing at slots that are free again. */
	hd_manifest_save(hm, s, false);
}

static void complete(struct hd_model *hm, struct kv_l2_io *done, int n)
{
	struct hd_tiering *t = hm->tiering;

	for (int i = 0; i < n; i++) {
		struct hd_session *s = hd_session_get(hm, (uint32_t)(done[i].tag >> 32));
		uint32_t page = (uint32_t)done[i].tag;

		t->inflight--;
		if (!s || page >= s->n_pages) {
			kv_l2_staging_put(t->l2, done[i].buf);
			continue;
		}
		if (done[i].res < 0 && !s->io_err)
			s->io_err = done[i].res;
		if (s->tier == HD_TIER_PAGING_OUT) {
			s->checksums[page] = done[i].checksum;
		} else if (!done[i].res && !s->io_err) {
			const struct kv_block_table *bt = engine_seq_kv(s->seq);
			if (hm->be->ops->upload(hm->be, engine_page_ptr(hm->engine, bt->pages[page]),
					       done[i].buf, t->page_bytes) < 0)
				s->io_err = -EIO;
		}
		kv_l2_staging_put(t->l2, done[i].buf);
		if (++s->io_done == s->n_pages)
			transfer_done(hm, s);
	}
}

static void reap(struct hd_model *hm, bool wait)
{
	struct hd_tiering *t = hm->tiering;
	struct kv_l2_io done[IO_BATCH];
	int n;

	if (wait && t->inflight && (n = kv_l2_wait(t->l2, done, 1, IO_BATCH)) > 0)
		complete(hm, done, n);
	while (t->inflight && (n = kv_l2_poll(t->l2, done, IO_BATCH)) > 0)
		complete(hm, done, n);
}

/* ---- policy ------------------------------------------------------------------------ */

/* L1 pages that page-outs under way will free. */
static uint32_t pages_in_flight_out(struct hd_model *hm)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < hm->sessions.cap; i++) {
		struct hd_session *s = hm->sessions.slots[i];
		/* Its L1 pages are released when the whole transfer is done. */
		if (s && s->tier == HD_TIER_PAGING_OUT)
			n += s->n_pages;
	}
	return n;
}

/* Start page-outs of LRU idle sessions until `want` pages are free or coming. */
static bool evict_until(struct hd_model *hm, uint32_t want)
{
	struct kv_pool *pool = engine_pool(hm->engine);
	uint32_t coming = kv_pool_n_free(pool) + pages_in_flight_out(hm);
	bool started = false;

	while (coming < want) {
		struct hd_session *lru = NULL;

		for (uint32_t i = 0; i < hm->sessions.cap; i++) {
			struct hd_session *s = hm->sessions.slots[i];
			if (s && s->tier == HD_TIER_L1 && !hd_session_busy(s) && !s->pinned && !s->n_deferred &&
			    engine_seq_kv(s->seq)->n_pages &&
			    (!lru || s->last_used_ns < lru->last_used_ns))
				lru = s;
		}
		if (!lru || pageout_start(hm, lru) < 0)
			break;
		coming += lru->n_pages;
		started = true;
	}
	return started || coming >= want;
}

bool hd_tier_make_room(struct hd_model *hm, uint32_t n)
{
	uint32_t total;

	if (!hm->tiering)
		return false;
	total = kv_pool_n_pages(engine_pool(hm->engine));
	hm->tiering->scan = true; /* the caller defers a request: replay it */
	return n <= total && evict_until(hm, n + total * hm->cfg.evict_low_pct / 100);
}

static void fail_deferred(struct hd_model *hm, struct hd_session *s, int err)
{
	for (uint32_t i = 0; i < s->n_deferred; i++) {
		struct hd_client *c = hd_client_by_id(hm, s->deferred[i].client_id);
		if (c && !c->dead && hd_cq_room(c)) {
			hd_post_cqe(c, s->deferred[i].sqe.user_data, err, 0, 0, engine_seq_len(s->seq));
			hm->stats.ops[s->deferred[i].sqe.op].errors++;
		}
	}
	s->n_deferred = 0;
}

static uint32_t start_page_ins(struct hd_model *hm)
{
	struct kv_pool *pool = engine_pool(hm->engine);
	uint32_t started = 0;

	for (uint32_t i = 0; i < hm->sessions.cap; i++) {
		struct hd_session *s = hm->sessions.slots[i];
		uint32_t need;

		if (!s || s->tier != HD_TIER_L2 || !(s->want_in || s->n_deferred))
			continue;
		need = s->n_pages;
		if (kv_pool_n_free(pool) < need || engine_seq_reserve_kv(hm->engine, s->seq, s->kv_tokens) < 0) {
			/* No room now and none coming (L1 holds only sessions that
			 * cannot move, L2 is full): the waiting requests fail with
			 * -ENOMEM instead of waiting forever; the session stays in L2. */
			if (!evict_until(hm, need) && !pages_in_flight_out(hm)) {
				fail_deferred(hm, s, -ENOMEM);
				s->want_in = false;
			}
			continue;
		}
		s->tier = HD_TIER_PAGING_IN;
		s->io_start_ns = hr_now_ns();
		s->io_next = s->io_done = 0;
		s->io_err = 0;
		started++;
	}
	return started;
}

static void replay_deferred(struct hd_model *hm, struct hd_session *s)
{
	struct hd_deferred *q = s->deferred;
	uint32_t n = s->n_deferred, i = 0, handle = s->handle;

	/* Executing may defer again (KV still short): start a fresh queue. */
	s->deferred = NULL;
	s->n_deferred = s->cap_deferred = 0;
	for (; i < n; i++) {
		struct hd_client *c = hd_client_by_id(hm, q[i].client_id);

		if (!c || c->dead)
			continue;
		if (!hd_cq_room(c))
			break;
		hd_ops_execute(hm, c, &q[i].sqe);
		if (!hd_session_get(hm, handle)) {
			i++;
			break; /* closed by a client meanwhile */
		}
	}
	for (; i < n; i++) {
		struct hd_client *c = hd_client_by_id(hm, q[i].client_id);

		if (hd_session_get(hm, handle) == s && hd_session_defer(s, q[i].client_id, &q[i].sqe) == 0)
			continue;
		if (c && !c->dead && hd_cq_room(c))
			hd_post_cqe(c, q[i].sqe.user_data, -ECANCELED, 0, 0, 0);
	}
	free(q);
}

uint32_t hd_tier_turn(struct hd_model *hm)
{
	struct hd_tiering *t = hm->tiering;
	struct kv_pool *pool;
	uint32_t progress = 0, total;
	uint64_t now;

	if (!t)
		return 0;
	pool = engine_pool(hm->engine);
	total = kv_pool_n_pages(pool);
	if (t->inflight)
		reap(hm, false);
	if (kv_pool_n_free(pool) < total * hm->cfg.evict_low_pct / 100)
		evict_until(hm, total * hm->cfg.evict_high_pct / 100);
	/* The scan over sessions runs only while some are moving or waiting:
	 * an idle tier costs the reactor's hot path two comparisons. */
	if (t->scan) {
		t->scan = false;
		progress += start_page_ins(hm);
		for (uint32_t i = 0; i < hm->sessions.cap; i++) {
			struct hd_session *s = hm->sessions.slots[i];

			if (!s)
				continue;
			if ((s->tier == HD_TIER_PAGING_OUT || s->tier == HD_TIER_PAGING_IN) &&
			    s->io_next < s->n_pages && !s->io_err)
				progress += transfer_pump(hm, s);
			else if ((s->tier == HD_TIER_PAGING_OUT || s->tier == HD_TIER_PAGING_IN) &&
				 s->io_err && s->io_done == s->io_next)
				transfer_done(hm, s); /* nothing more in flight for a failed transfer */
			if (s->tier == HD_TIER_L1 && s->n_deferred) {
				uint32_t before = s->n_deferred;
				replay_deferred(hm, s);
				progress += before - s->n_deferred;
			}
			if (s->tier != HD_TIER_L1 ? s->tier != HD_TIER_L2 || s->want_in || s->n_deferred
						  : s->n_deferred != 0)
				t->scan = true;
		}
	}
	if (hm->cfg.checkpoint_ms && t->sessions_dir[0] &&
	    (now = hr_now_ns()) - t->last_checkpoint_ns > hm->cfg.checkpoint_ms * 1000000ull) {
		t->last_checkpoint_ns = now;
		for (uint32_t i = 0; i < hm->sessions.cap; i++) {
			struct hd_session *s = hm->sessions.slots[i];
			if (s && s->name && s->tier == HD_TIER_L1 && !hd_session_busy(s) &&
			    s->manifest_len != engine_seq_len(s->seq))
				hd_manifest_save(hm, s, false);
		}
	}
	return progress;
}

bool hd_tier_busy(const struct hd_model *hm)
{
	return hm->tiering && hm->tiering->inflight;
}

int hd_tier_ready(struct hd_model *hm, struct hd_session *s)
{
	if (s->tier != HD_TIER_L1 || s->n_deferred)
		hm->tiering->scan = true;
	switch (s->tier) {
	case HD_TIER_L1:
		return 0;
	case HD_TIER_PAGING_OUT:
		/* Let the write finish; the session comes back right after. */
		s->want_in = true;
		return -EAGAIN;
	case HD_TIER_L2:
		/* hd_tier_turn() starts the page-in, after the caller deferred. */
		s->want_in = true;
		return -EAGAIN;
	case HD_TIER_PAGING_IN:
		return -EAGAIN;
	}
	return 0;
}

int hd_tier_evict(struct hd_model *hm, struct hd_session *s)
{
	if (!hm->tiering)
		return -EOPNOTSUPP;
	if (s->tier == HD_TIER_L2 || s->tier == HD_TIER_PAGING_OUT)
		return 0;
	return pageout_start(hm, s);
}

int hd_session_defer(struct hd_session *s, uint32_t client_id, const struct shm_sqe *sqe)
{
	if (s->n_deferred == s->cap_deferred) {
		uint32_t cap = s->cap_deferred ? s->cap_deferred * 2 : 8;
		struct hd_deferred *p;

		if (cap > 1024)
			return -EBUSY;
		p = realloc(s->deferred, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->deferred = p;
		s->cap_deferred = cap;
	}
	s->deferred[s->n_deferred++] = (struct hd_deferred){ .sqe = *sqe, .client_id = client_id };
	return 0;
}

void hd_tier_forget(struct hd_model *hm, struct hd_session *s, bool drop)
{
	struct hd_tiering *t = hm->tiering;

	/* Requests still waiting for this session end now, with an error. */
	fail_deferred(hm, s, -ECANCELED);
	free(s->deferred);
	s->deferred = NULL;
	s->n_deferred = 0;
	if (!t)
		return;
	/* A transfer in flight: its completions find no session and are dropped.
	 * Its slots may still be written to, so they are not reused in this run. */
	if (s->n_pages && s->io_done == s->io_next)
		slots_release(hm, s);
	else
		transfer_free(s);
	if (drop && s->name)
		hd_manifest_remove(t, s->name);
}

int hd_tier_init(struct hd_model *hm)
{
	const struct hd_config *cfg = &hm->cfg;
	struct hd_tiering *t;
	char err[512] = "";
	int r;

	if (!cfg->l2_path[0] && !cfg->state_dir[0])
		return 0;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	hm->tiering = t;
	t->page_bytes = engine_page_bytes(hm->engine);
	t->last_checkpoint_ns = hr_now_ns();
	if (cfg->l2_path[0]) {
		struct kv_l2_params p = {
			.path = cfg->l2_path,
			.file_bytes = (uint64_t)cfg->l2_mib << 20,
			.page_bytes = t->page_bytes,
			.staging_pages = 64,
			.queue_depth = 64,
			.threads = 4,
			.pager = !strcmp(cfg->pager, "io_uring") ? KV_L2_PAGER_URING
				 : !strcmp(cfg->pager, "threads") ? KV_L2_PAGER_THREADS
								    : KV_L2_PAGER_AUTO,
		};
		t->l2 = kv_l2_open(&p, err, sizeof(err));
		if (!t->l2) {
			r = -errno;
			hr_err("L2 file %s: %s", cfg->l2_path, err[0] ? err : strerror(-r));
			return r;
		}
		hr_info("L2 %s: %u slots of %zu bytes, pager %s%s", cfg->l2_path,
			kv_l2_n_slots(t->l2), kv_l2_slot_bytes(t->page_bytes),
			kv_l2_pager_name(t->l2), kv_l2_is_direct(t->l2) ? ", O_DIRECT" : "");
	}
	if (cfg->state_dir[0]) {
		snprintf(t->sessions_dir, sizeof(t->sessions_dir), "%s/sessions", cfg->state_dir);
		r = hd_mkdir_p(t->sessions_dir);
		if (r < 0) {
			hr_err("state directory %s: %s", t->sessions_dir, strerror(-r));
			return r;
		}
	}
	r = hd_manifest_start(t);
	if (r < 0)
		return r;
	if (t->sessions_dir[0])
		hd_manifest_restore_all(hm);
	return 0;
}

void hd_tier_flush(struct hd_model *hm)
{
	struct hd_tiering *t = hm->tiering;
	uint64_t deadline = hr_now_ns() + 30ull * 1000000000ull;
	uint32_t n = 0;

	if (!t || !t->sessions_dir[0])
		return;
	for (uint32_t i = 0; i < hm->sessions.cap; i++) {
		struct hd_session *s = hm->sessions.slots[i];

		if (!s || !s->name)
			continue;
		hd_sched_drop_session(hm, s, -ECANCELED); /* the drain timed out */
		s->pinned = false;
		if (s->tier == HD_TIER_L1 && engine_seq_kv(s->seq)->n_pages && t->l2 &&
		    pageout_start(hm, s) == 0)
			n++;
		else if (s->tier == HD_TIER_L1)
			hd_manifest_save(hm, s, false);
	}
	/* Pump and reap until every page-out (and page-in) has finished. */
	while (hr_now_ns() < deadline) {
		bool active = false;

		for (uint32_t i = 0; i < hm->sessions.cap; i++) {
			struct hd_session *s = hm->sessions.slots[i];
			if (s && (s->tier == HD_TIER_PAGING_OUT || s->tier == HD_TIER_PAGING_IN)) {
				active = true;
				if (s->io_next < s->n_pages && !s->io_err)
					transfer_pump(hm, s);
				else if (s->io_err && s->io_done == s->io_next)
					transfer_done(hm, s);
			}
		}
		if (!active)
			break;
		reap(hm, true);
	}
	hr_info("flushed %u named sessions to %s", n, t->sessions_dir);
}

void hd_tier_fini(struct hd_model *hm)
{
	struct hd_tiering *t = hm->tiering;

	if (!t)
		return;
	hd_manifest_stop(t);
	kv_l2_close(t->l2);
	free(t);
	hm->tiering = NULL;
}

void hd_tier_stats(const struct hd_model *hm, struct hd_tier_stats *ret)
{
	const struct hd_tiering *t = hm->tiering;

	memset(ret, 0, sizeof(*ret));
	if (!t)
		return;
	ret->pages_out = t->pages_out;
	ret->pages_in = t->pages_in;
	ret->bytes_out = t->bytes_out;
	ret->bytes_in = t->bytes_in;
	ret->errors = t->errors;
	ret->outs = t->outs;
	ret->ins = t->ins;
	ret->out_ns = t->out_ns;
	ret->in_ns = t->in_ns;
	ret->out_max_ns = t->out_max_ns;
	ret->in_max_ns = t->in_max_ns;
	ret->recomputed = t->recomputed;
	if (t->l2) {
		ret->l2_slots = kv_l2_n_slots(t->l2);
		ret->l2_free = kv_l2_n_free_slots(t->l2);
		ret->pager = kv_l2_pager_name(t->l2);
	}
}

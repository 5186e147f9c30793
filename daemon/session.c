/* SPDX-License-Identifier: MIT */
/*
 * Sessions: a slot table with generation-tagged handles (a stale handle never
 * reaches a new session), names for durable sessions, and each client's set of
 * open handles, which is the ownership check of every descriptor.
 * Reactor thread only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hearthd.h"
#include "hr_common.h"

/* ---- per-client handle set: open addressing, linear probing --------------- */

static uint32_t hs_hash(uint32_t h)
{
	h ^= h >> 16;
	h *= 0x7feb352dU;
	h ^= h >> 15;
	return h;
}

static bool hs_contains(const struct hd_handle_set *s, uint32_t handle)
{
	if (!s->cap || !handle)
		return false;
	for (uint32_t i = hs_hash(handle) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (s->slots[i] == handle)
			return true;
		if (!s->slots[i])
			return false;
	}
}

bool hd_client_may_use(const struct hd_client *c, uint32_t handle)
{
	return hs_contains(&c->open, handle);
}

static int hs_insert(struct hd_handle_set *s, uint32_t handle);

static int hs_grow(struct hd_handle_set *s)
{
	struct hd_handle_set n = { .cap = s->cap ? s->cap * 2 : 16 };

	n.slots = calloc(n.cap, sizeof(uint32_t));
	if (!n.slots)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->cap; i++)
		if (s->slots[i])
			hs_insert(&n, s->slots[i]);
	free(s->slots);
	*s = n;
	return 0;
}

static int hs_insert(struct hd_handle_set *s, uint32_t handle)
{
	/* Keep the load under 1/2 so probes stay short. */
	if ((s->n + 1) * 2 > s->cap) {
		int r = hs_grow(s);
		if (r < 0)
			return r;
	}
	for (uint32_t i = hs_hash(handle) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (s->slots[i] == handle)
			return 0;
		if (!s->slots[i]) {
			s->slots[i] = handle;
			s->n++;
			return 0;
		}
	}
}

static void hs_remove(struct hd_handle_set *s, uint32_t handle)
{
	uint32_t i, j;

	if (!hs_contains(s, handle))
		return;
	for (i = hs_hash(handle) & (s->cap - 1); s->slots[i] != handle; i = (i + 1) & (s->cap - 1))
		;
	s->slots[i] = 0;
	s->n--;
	/* Re-insert the rest of the cluster so that lookups do not stop early. */
	for (j = (i + 1) & (s->cap - 1); s->slots[j]; j = (j + 1) & (s->cap - 1)) {
		uint32_t h = s->slots[j];
		s->slots[j] = 0;
		s->n--;
		hs_insert(s, h);
	}
}

/* ---- the slot table -------------------------------------------------------- */

int hd_sessions_init(struct hd_sessions *t)
{
	memset(t, 0, sizeof(*t));
	return 0;
}

static int table_grow(struct hd_sessions *t)
{
	uint32_t cap = t->cap ? t->cap * 2 : 64;
	struct hd_session **slots;
	uint16_t *gen;
	uint32_t *fq;

	if (cap > HD_SLOT_MASK + 1)
		return -ENOSPC;
	slots = realloc(t->slots, cap * sizeof(*slots));
	if (slots)
		t->slots = slots;
	gen = realloc(t->gen, cap * sizeof(*gen));
	if (gen)
		t->gen = gen;
	fq = malloc(cap * sizeof(*fq));
	if (!slots || !gen || !fq) {
		free(fq);
		return -ENOMEM;
	}
	for (uint32_t i = t->cap; i < cap; i++) {
		t->slots[i] = NULL;
		t->gen[i] = 1;
	}
	/* The queued free slots keep their order; the new ones follow. */
	for (uint32_t i = 0; i < t->n_free; i++)
		fq[i] = t->free_slots[(t->free_head + i) % t->cap];
	for (uint32_t i = t->cap; i < cap; i++)
		fq[t->n_free++] = i;
	free(t->free_slots);
	t->free_slots = fq;
	t->free_head = 0;
	t->cap = cap;
	return 0;
}

static uint32_t slot_take(struct hd_sessions *t)
{
	uint32_t slot = t->free_slots[t->free_head];

	t->free_head = (t->free_head + 1) % t->cap;
	t->n_free--;
	return slot;
}

static void slot_give(struct hd_sessions *t, uint32_t slot)
{
	t->free_slots[(t->free_head + t->n_free) % t->cap] = slot;
	t->n_free++;
}

struct hd_session *hd_session_get(struct hd_model *hm, uint32_t handle)
{
	struct hd_sessions *t = &hm->sessions;
	uint32_t slot = handle & HD_SLOT_MASK;
	struct hd_session *s;

	if (slot >= t->cap)
		return NULL;
	s = t->slots[slot];
	return s && s->handle == handle ? s : NULL;
}

struct hd_session *hd_session_find_name(struct hd_model *hm, const char *name, size_t len)
{
	/* Linear: named sessions are opened on the cold path. */
	for (uint32_t i = 0; i < hm->sessions.cap; i++) {
		struct hd_session *s = hm->sessions.slots[i];
		if (s && s->name && strlen(s->name) == len && memcmp(s->name, name, len) == 0)
			return s;
	}
	return NULL;
}

static void session_destroy(struct hd_model *hm, struct hd_session *s, bool drop)
{
	struct hd_sessions *t = &hm->sessions;
	uint32_t slot = s->handle & HD_SLOT_MASK;

	t->slots[slot] = NULL;
	/* Skip generation 0 so that a handle is never 0. */
	t->gen[slot] = (uint16_t)((t->gen[slot] + 1) & HD_GEN_MASK);
	if (!t->gen[slot])
		t->gen[slot] = 1;
	slot_give(t, slot);
	t->n--;
	hd_sched_drop_session(hm, s, -EBADF);
	hd_tier_forget(hm, s, drop);
	engine_seq_free(hm->engine, s->seq);
	free(s->name);
	free(s);
}

static bool valid_name(const char *name, size_t len)
{
	if (!len || len > SHM_SESSION_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
			return false;
	return true;
}

int hd_session_open(struct hd_model *hm, struct hd_client *c, const char *name, size_t len,
		    bool create, bool excl, struct hd_session **ret)
{
	struct hd_sessions *t = &hm->sessions;
	struct hd_session *s = NULL;
	uint32_t slot;
	int r;

	if (name && len) {
		if (!valid_name(name, len))
			return -EINVAL;
		s = hd_session_find_name(hm, name, len);
		if (s && excl)
			return -EEXIST;
		if (!s && !create)
			return -ENOENT;
	}
	if (c->open.n >= hm->cfg.max_sessions_per_client)
		return -EMFILE;
	if (s) {
		if (hd_client_may_use(c, s->handle)) {
			*ret = s;
			return 0;
		}
		r = hs_insert(&c->open, s->handle);
		if (r < 0)
			return r;
		s->attached++;
		*ret = s;
		return 0;
	}
	if (!t->n_free && (r = table_grow(t)) < 0)
		return r;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (name && len) {
		s->name = strndup(name, len);
		if (!s->name)
			goto nomem;
	}
	s->seq = engine_seq_new(hm->engine);
	if (!s->seq)
		goto nomem;
	slot = t->free_slots[t->free_head];
	s->handle = ((uint32_t)t->gen[slot] << HD_SLOT_BITS) | slot;
	if (hs_insert(&c->open, s->handle) < 0) {
		engine_seq_free(hm->engine, s->seq);
		goto nomem;
	}
	slot_take(t);
	t->slots[slot] = s;
	t->n++;
	s->attached = 1;
	s->owner = c->id;
	s->last_used_ns = hr_now_ns();
	*ret = s;
	return 1;
nomem:
	free(s->name);
	free(s);
	return -ENOMEM;
}

static void session_release(struct hd_model *hm, struct hd_session *s, bool destroy)
{
	s->attached--;
	if (!s->name || (destroy && !s->attached))
		session_destroy(hm, s, destroy);
}

int hd_session_close(struct hd_model *hm, struct hd_client *c, uint32_t handle, bool destroy)
{
	struct hd_session *s = hd_session_get(hm, handle);

	if (!s || !hd_client_may_use(c, handle))
		return -EBADF;
	if (destroy && s->name && s->attached > 1)
		return -EBUSY;
	hs_remove(&c->open, handle);
	session_release(hm, s, destroy);
	return 0;
}

void hd_session_close_all(struct hd_model *hm, struct hd_client *c)
{
	for (uint32_t i = 0; i < c->open.cap; i++) {
		uint32_t h = c->open.slots[i];
		struct hd_session *s = h ? hd_session_get(hm, h) : NULL;

		if (s)
			session_release(hm, s, false);
	}
	free(c->open.slots);
	memset(&c->open, 0, sizeof(c->open));
}

void hd_sessions_fini(struct hd_model *hm)
{
	struct hd_sessions *t = &hm->sessions;

	for (uint32_t i = 0; i < t->cap; i++)
		if (t->slots[i])
			session_destroy(hm, t->slots[i], false);
	free(t->slots);
	free(t->gen);
	free(t->free_slots);
	memset(t, 0, sizeof(*t));
}

struct hd_session *hd_session_restore(struct hd_model *hm, const char *name, struct engine_seq *seq)
{
	struct hd_sessions *t = &hm->sessions;
	struct hd_session *s;
	uint32_t slot;

	if (!t->n_free && table_grow(t) < 0)
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->name = strdup(name);
	if (!s->name) {
		free(s);
		return NULL;
	}
	slot = slot_take(t);
	s->handle = ((uint32_t)t->gen[slot] << HD_SLOT_BITS) | slot;
	s->seq = seq;
	s->last_used_ns = hr_now_ns();
	t->slots[slot] = s;
	t->n++;
	return s;
}

struct hd_client *hd_client_by_id(struct hd_model *hm, uint32_t id)
{
	for (uint32_t i = 0; i < hm->n_clients; i++)
		if (hm->clients[i]->id == id)
			return hm->clients[i];
	return NULL;
}

/* SPDX-License-Identifier: MIT */
/*
 * Models: the list of model instances a daemon serves, and their life. Each
 * instance has its own backend, weights, engine, KV pool, reactor thread and
 * sessions. Start-up loads the preload list on the main thread before READY;
 * hearthctl load and unload run the slow part (reading weights; draining the
 * reactor, saving sessions, freeing device memory) on a worker thread, so the
 * other models keep serving and the control thread keeps answering. The
 * worker signals worker_efd when done and the control thread finishes the job
 * (hd_model_reap). Only the control thread changes the list or a state, always
 * under models_lock, which the metrics thread takes to read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hearth_config.h"
#include "hearthd.h"
#include "hr_common.h"
#include "hr_log.h"
#include "shm_wait.h"

struct hd_model *hd_model_find(struct hd_daemon *d, const char *name)
{
	if (!name || !name[0])
		return d->n_models ? d->models[0] : NULL;
	for (uint32_t i = 0; i < d->n_models; i++)
		if (!strcmp(d->models[i]->name, name))
			return d->models[i];
	return NULL;
}

const char *hd_model_config_path(const struct hd_daemon *d, const char *name)
{
	if (!strcmp(name, d->cfg.model_name))
		return d->cfg.model_path[0] ? d->cfg.model_path : HEARTH_TINY_MODEL;
	for (uint32_t i = 0; i < d->cfg.n_preload; i++)
		if (!strcmp(name, d->cfg.preload[i].name))
			return d->cfg.preload[i].path;
	return NULL;
}

const char *hd_model_state_name(enum hd_model_state s)
{
	static const char *const names[] = { "loading", "ready", "draining", "unloading" };

	return (unsigned)s < HR_ARRAY_SIZE(names) ? names[s] : "?";
}

/*
 * This model's configuration: the daemon's, with its own name, path and KV
 * size. The [model] section's model (model_name) keeps l2_path and state_dir
 * as configured; any other model NAME gets l2_path.NAME and state_dir/models/NAME,
 * so no two models share an L2 file or a manifest directory.
 */
static int model_cfg(struct hd_daemon *d, struct hd_model *m, const char *path,
		     uint32_t kv_pages, char *err, size_t errlen)
{
	struct hd_config *c = &m->cfg;
	bool primary = !strcmp(m->name, d->cfg.model_name);
	int n;

	*c = d->cfg;
	snprintf(c->model_name, sizeof(c->model_name), "%s", m->name);
	if (strlen(path) >= sizeof(c->model_path)) {
		snprintf(err, errlen, "model path too long");
		return -ENAMETOOLONG;
	}
	strcpy(c->model_path, path);
	if (kv_pages)
		c->kv_pages = kv_pages;
	if (primary)
		return 0;
	if (d->cfg.l2_path[0]) {
		n = snprintf(c->l2_path, sizeof(c->l2_path), "%s.%s", d->cfg.l2_path, m->name);
		if (n < 0 || (size_t)n >= sizeof(c->l2_path)) {
			snprintf(err, errlen, "l2_path too long for model '%s'", m->name);
			return -ENAMETOOLONG;
		}
	}
	if (d->cfg.state_dir[0]) {
		n = snprintf(c->state_dir, sizeof(c->state_dir), "%s/models/%s", d->cfg.state_dir,
			     m->name);
		if (n < 0 || (size_t)n >= sizeof(c->state_dir)) {
			snprintf(err, errlen, "state_dir too long for model '%s'", m->name);
			return -ENAMETOOLONG;
		}
	}
	return 0;
}

/* model_load_ex callbacks: progress and fallback reasons into the log. */
static void load_progress(void *arg, const struct model_load_progress *p)
{
	struct hd_model *m = arg;

	hr_info("model '%s': loading %.1f/%.1f GB, %.2f GB/s%s", m->name, p->done_bytes / 1e9,
		p->total_bytes / 1e9, p->seconds > 0 ? p->done_bytes / 1e9 / p->seconds : 0.0,
		p->final ? ", done" : "");
}

static void load_note(void *arg, const char *msg)
{
	struct hd_model *m = arg;

	hr_info("model '%s': %s", m->name, msg);
}

/* Backend, weights, engine, scheduler, tiers (restoring saved sessions).
 * Any thread; the reactor is not running yet. 0 or -errno with worker_err. */
static int model_init(struct hd_model *m)
{
	const struct hd_config *cfg = &m->cfg;
	char err[512] = "";
	uint64_t t_engine, t_ready;
	int r;

	m->be = kern_backend_new(cfg->backend, (int)cfg->device, (int)cfg->threads);
	if (!m->be) {
		r = -errno;
		snprintf(m->worker_err, sizeof(m->worker_err), "backend '%s': %s", cfg->backend,
			 r == -ENODEV ? "not available in this build or on this machine"
				      : strerror(-r));
		return r;
	}
	hr_info("model '%s': loading %s on %s", m->name, cfg->model_path, m->be->name);
	m->model = model_load_ex(cfg->model_path, m->be,
				 &(struct model_load_opts){ .progress = load_progress,
							    .note = load_note,
							    .arg = m },
				 err, sizeof(err));
	if (!m->model) {
		r = errno ? -errno : -EINVAL;
		snprintf(m->worker_err, sizeof(m->worker_err), "cannot load %.300s: %.500s",
			 cfg->model_path, err[0] ? err : strerror(-r));
		return r;
	}
	t_engine = hr_now_ns();
	m->engine = engine_new(m->model, &(struct engine_params){
						 .kv_pages = cfg->kv_pages,
						 .page_tokens = cfg->page_tokens,
						 .max_step_tokens = cfg->max_step_tokens,
						 .graph_max_tokens = cfg->graph_max_tokens,
						 .graphs_off = !cfg->graph_max_tokens,
						 .max_batch = cfg->max_batch,
					 });
	if (!m->engine) {
		r = -errno;
		snprintf(m->worker_err, sizeof(m->worker_err),
			 "cannot create the engine (KV pool of %u pages): %s", cfg->kv_pages,
			 strerror(-r));
		return r;
	}
	if (hd_sched_init(m) < 0) {
		snprintf(m->worker_err, sizeof(m->worker_err), "cannot create the scheduler: %s",
			 strerror(ENOMEM));
		return -ENOMEM;
	}
	t_ready = hr_now_ns();
	r = hd_tier_init(m);
	if (r < 0) {
		snprintf(m->worker_err, sizeof(m->worker_err),
			 "cannot open the KV tiers (L2 file %.300s, state directory %.300s): %s",
			 cfg->l2_path[0] ? cfg->l2_path : "none",
			 cfg->state_dir[0] ? cfg->state_dir : "none", strerror(-r));
		return r;
	}
	hr_info("model '%s' resident: %s, %u layers, vocab %u, %.1f MB in %.0f ms (%s); KV pool %u pages of %u tokens; "
		"engine (with graph warm-up on cuda) in %.0f ms",
		m->name, m->model->cfg.arch_name, m->model->cfg.n_layers,
		m->model->cfg.vocab_size, m->model->weight_bytes / 1e6,
		m->model->load_seconds * 1e3, m->model->load_how,
		kv_pool_n_pages(engine_pool(m->engine)), cfg->page_tokens,
		(t_ready - t_engine) / 1e6);
	return 0;
}

/* Free what model_init made (the reactor is stopped). */
static void model_fini(struct hd_model *m)
{
	if (m->engine)
		hd_sessions_fini(m);
	hd_sched_fini(m);
	hd_tier_fini(m);
	engine_free(m->engine);
	model_free(m->model);
	kern_backend_free(m->be);
	free(m->clients);
	m->engine = NULL;
	m->model = NULL;
	m->be = NULL;
	m->clients = NULL;
}

static void model_destroy(struct hd_model *m)
{
	model_fini(m);
	pthread_mutex_destroy(&m->cmd_lock);
	pthread_cond_destroy(&m->cmd_done);
	free(m);
}

/* A new model in the list, state LOADING. */
static struct hd_model *model_add(struct hd_daemon *d, const char *name, const char *path,
				  uint32_t kv_pages, int *ret, char *err, size_t errlen)
{
	char abs[PATH_MAX];
	struct hd_model *m;
	int r;

	*ret = 0;
	if (!hd_config_model_name_ok(name)) {
		snprintf(err, errlen,
			 "bad model name '%s': 1 to 63 letters, digits, '.', '_' or '-', not starting with '.'",
			 name);
		*ret = -EINVAL;
		return NULL;
	}
	if (hd_model_find(d, name)) {
		snprintf(err, errlen, "a model named '%s' is already loaded (or loading)", name);
		*ret = -EEXIST;
		return NULL;
	}
	if (d->n_models == HD_MAX_MODELS) {
		snprintf(err, errlen, "%u models loaded already: the most one daemon serves",
			 HD_MAX_MODELS);
		*ret = -ENOSPC;
		return NULL;
	}
	/* Relative paths (from the configuration) are the daemon's cwd's. */
	if (!realpath(path, abs)) {
		*ret = -errno;
		snprintf(err, errlen, "model path '%.300s': %s", path, strerror(errno));
		return NULL;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		*ret = -ENOMEM;
		return NULL;
	}
	m->daemon = d;
	snprintf(m->name, sizeof(m->name), "%s", name);
	r = model_cfg(d, m, abs, kv_pages, err, errlen);
	if (r < 0) {
		free(m);
		*ret = r;
		return NULL;
	}
	pthread_mutex_init(&m->cmd_lock, NULL);
	pthread_cond_init(&m->cmd_done, NULL);
	hd_sessions_init(&m->sessions);
	m->state = HD_MODEL_LOADING;
	pthread_mutex_lock(&d->models_lock);
	d->models[d->n_models++] = m;
	pthread_mutex_unlock(&d->models_lock);
	return m;
}

static void model_remove(struct hd_daemon *d, struct hd_model *m)
{
	pthread_mutex_lock(&d->models_lock);
	for (uint32_t i = 0; i < d->n_models; i++)
		if (d->models[i] == m) {
			memmove(&d->models[i], &d->models[i + 1],
				(d->n_models - i - 1) * sizeof(d->models[0]));
			d->n_models--;
			break;
		}
	pthread_mutex_unlock(&d->models_lock);
}

void hd_model_forget(struct hd_daemon *d, struct hd_model *m)
{
	model_remove(d, m);
	model_destroy(m);
}

void hd_model_set_state(struct hd_daemon *d, struct hd_model *m, enum hd_model_state s)
{
	pthread_mutex_lock(&d->models_lock);
	m->state = s;
	pthread_mutex_unlock(&d->models_lock);
}

/* The reactor runs: the model serves. */
static int model_start(struct hd_daemon *d, struct hd_model *m)
{
	int r;

	m->idle_wake_ns = d->idle_wake_ns;
	r = hd_reactor_start(m);
	if (r < 0) {
		snprintf(m->worker_err, sizeof(m->worker_err), "cannot start the reactor: %s",
			 strerror(-r));
		return r;
	}
	m->reactor_running = true;
	hd_model_set_state(d, m, HD_MODEL_READY);
	return 0;
}

int hd_model_load_now(struct hd_daemon *d, const char *name, const char *path, uint32_t kv_pages,
		      char *err, size_t errlen)
{
	struct hd_model *m;
	int r;

	m = model_add(d, name, path, kv_pages, &r, err, errlen);
	if (!m)
		return r;
	r = model_init(m);
	if (r == 0)
		r = model_start(d, m);
	if (r < 0) {
		snprintf(err, errlen, "model '%s': %s", name, m->worker_err);
		hd_model_forget(d, m);
	}
	return r;
}

static void worker_done(struct hd_model *m)
{
	uint64_t one = 1;

	/* The flag first: the control thread looks for it once woken. */
	__atomic_store_n(&m->worker_finished, true, __ATOMIC_RELEASE);
	if (write(m->daemon->worker_efd, &one, sizeof(one)) < 0) {
		/* The counter cannot overflow here: the control thread reads it. */
	}
}

static void *load_worker(void *arg)
{
	struct hd_model *m = arg;

	hr_thread_name("hd-load:", m->name);
	/* A test hook: hold the load open so a test can see others serve meanwhile. */
	const char *delay = getenv("HEARTH_TEST_LOAD_DELAY_MS");

	m->worker_res = model_init(m);
	if (delay && m->worker_res == 0)
		usleep((useconds_t)HR_MIN(strtoul(delay, NULL, 10), 60000ul) * 1000);
	worker_done(m);
	return NULL;
}

int hd_model_load_start(struct hd_daemon *d, const char *name, const char *path,
			uint32_t kv_pages, struct hd_model **ret, char *err, size_t errlen)
{
	struct hd_model *m;
	int r;

	m = model_add(d, name, path, kv_pages, &r, err, errlen);
	if (!m)
		return r;
	r = -pthread_create(&m->worker, NULL, load_worker, m);
	if (r < 0) {
		snprintf(err, errlen, "cannot start a loader thread: %s", strerror(-r));
		hd_model_forget(d, m);
		return r;
	}
	m->worker_started = true;
	hr_info("model '%s': loading %s in the background", name, path);
	*ret = m;
	return 0;
}

/* Drain and stop the reactor, then detach whatever clients are still
 * attached (daemon shutdown: their queued work is dropped, their anonymous
 * sessions freed; an unload has none). */
static void model_stop(struct hd_model *m)
{
	if (!m->reactor_running)
		return;
	hd_reactor_stop(m);
	m->reactor_running = false;
	/* The reactor is gone: this thread owns the clients and sessions now. */
	for (uint32_t i = m->n_clients; i > 0; i--) {
		struct hd_client *c = m->clients[i - 1];

		c->in_reactor = false;
		shm_waitq_shutdown(&c->hdr->client_wq);
		hd_sched_drop_client(m, c);
		hd_session_close_all(m, c);
	}
	m->n_clients = 0;
}

/* Stop; save named sessions; free everything but m. */
static void model_shutdown(struct hd_model *m)
{
	model_stop(m);
	hd_tier_flush(m);
	model_fini(m);
}

static void *unload_worker(void *arg)
{
	struct hd_model *m = arg;

	hr_thread_name("hd-unload:", m->name);
	model_shutdown(m);
	m->worker_res = 0;
	worker_done(m);
	return NULL;
}

int hd_model_unload_start(struct hd_daemon *d, struct hd_model *m)
{
	int r;

	hd_model_set_state(d, m, HD_MODEL_UNLOADING);
	hr_info("model '%s': unloading", m->name);
	r = -pthread_create(&m->worker, NULL, unload_worker, m);
	if (r < 0) {
		/* No thread: do it here (the control thread pauses for it). */
		model_shutdown(m);
		m->worker_res = 0;
		m->worker_started = false;
		worker_done(m);
		return 0;
	}
	m->worker_started = true;
	return 0;
}

struct hd_model *hd_model_reap_one(struct hd_daemon *d, enum hd_model_state *ret_was)
{
	for (uint32_t i = 0; i < d->n_models; i++) {
		struct hd_model *m = d->models[i];

		if (!__atomic_load_n(&m->worker_finished, __ATOMIC_ACQUIRE))
			continue;
		if (m->worker_started)
			pthread_join(m->worker, NULL);
		m->worker_started = false;
		m->worker_finished = false;
		*ret_was = m->state;
		if (m->state == HD_MODEL_LOADING) {
			if (m->worker_res == 0)
				m->worker_res = model_start(d, m);
			if (m->worker_res == 0)
				hr_info("model '%s': ready", m->name);
			else
				hr_err("model '%s': %s", m->name, m->worker_err);
		} else {
			hr_info("model '%s': unloaded", m->name);
		}
		return m;
	}
	return NULL;
}

void hd_models_stop(struct hd_daemon *d)
{
	/* Workers first: a load in progress finishes (its memory is then freed
	 * with the rest), an unload completes. */
	for (uint32_t i = 0; i < d->n_models; i++) {
		struct hd_model *m = d->models[i];

		if (m->worker_started) {
			pthread_join(m->worker, NULL);
			m->worker_started = false;
		}
	}
	for (uint32_t i = 0; i < d->n_models; i++)
		model_stop(d->models[i]);
}

void hd_models_shutdown(struct hd_daemon *d)
{
	while (d->n_models) {
		struct hd_model *m = d->models[d->n_models - 1];

		if (m->state != HD_MODEL_UNLOADING)
			model_shutdown(m);
		hd_model_forget(d, m);
	}
}

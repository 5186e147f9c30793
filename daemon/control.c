/* SPDX-License-Identifier: MIT */
/*
 * The control plane: the listening SOCK_SEQPACKET socket, one connection per
 * client, SO_PEERCRED policy, protobuf-c requests, the per-client sealed
 * memfd region, and signals (SIGTERM/SIGINT drain and stop). One epoll loop
 * on the main thread; everything that touches sessions goes to the reactor
 * as a command.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "hearthd.h"
#include "hr_common.h"
#include "hr_control.h"
#include "hr_log.h"
#include "notify.h"
#include "shm_wait.h"

static char listen_tag, signal_tag, worker_tag;

/* SIGTERM/SIGINT: a handler that pokes an eventfd. Blocking the signals and
 * reading a signalfd is not enough: libraries start threads before main()
 * (OpenBLAS does, from a constructor) that never block them. */
static int signal_efd = -1;
static volatile sig_atomic_t signal_seen;

static void on_signal(int sig)
{
	uint64_t one = 1;
	int saved = errno;

	signal_seen = sig;
	if (write(signal_efd, &one, sizeof(one)) < 0) {
		/* Nothing to do in a handler: the counter is already non-zero. */
	}
	errno = saved;
}

static int mkdir_parents(const char *path)
{
	char buf[108], *p;

	snprintf(buf, sizeof(buf), "%s", path);
	p = strrchr(buf, '/');
	if (!p || p == buf)
		return 0;
	*p = 0;
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int hd_control_listen(const struct hd_config *cfg, int *ret_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_close_ int fd = -1;
	int r;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", cfg->socket_path);
	r = mkdir_parents(cfg->socket_path);
	if (r < 0) {
		hr_err("cannot create the directory of %s: %s", cfg->socket_path, strerror(-r));
		return r;
	}
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		_cleanup_close_ int probe = -1;

		r = -errno;
		if (r != -EADDRINUSE) {
			hr_err("bind %s: %s", cfg->socket_path, strerror(-r));
			return r;
		}
		/* A stale socket from a dead daemon, or a live daemon? Ask it. */
		probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			hr_err("%s: another hearthd is already listening there", cfg->socket_path);
			return -EADDRINUSE;
		}
		unlink(cfg->socket_path);
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			r = -errno;
			hr_err("bind %s: %s", cfg->socket_path, strerror(-r));
			return r;
		}
	}
	/* Access is decided by SO_PEERCRED against the allow-list, not by the mode. */
	chmod(cfg->socket_path, 0666);
	if (listen(fd, 64) < 0)
		return -errno;
	*ret_fd = TAKE_FD(fd);
	return 0;
}

static bool peer_allowed(const struct hd_config *cfg, uid_t uid, gid_t gid)
{
	if (uid == 0 || uid == geteuid())
		return true;
	for (uint32_t i = 0; i < cfg->n_allow_uids; i++)
		if (cfg->allow_uids[i] == uid)
			return true;
	for (uint32_t i = 0; i < cfg->n_allow_gids; i++)
		if (cfg->allow_gids[i] == gid)
			return true;
	return false;
}

static void reply_error(int sock, uint64_t id, int err, const char *msg)
{
	Hearth__Control__Response rep = HEARTH__CONTROL__RESPONSE__INIT;

	rep.id = id;
	rep.error = err;
	rep.message = (char *)msg;
	hr_ctl_send(sock, &rep.base, -1);
}

static uint32_t round_pow2(uint32_t x)
{
	uint32_t p = 1;
	while (p < x && p < (1u << 31))
		p <<= 1;
	return p;
}

/* "'a', 'b (LlamaForCausalLM)', ..." (with what: the architecture of a
 * ready model, else its state), or "none". */
static void list_models(struct hd_daemon *d, bool with_what, char *buf, size_t len)
{
	size_t k = 0;

	snprintf(buf, len, "none");
	for (uint32_t i = 0; i < d->n_models && k < len; i++) {
		struct hd_model *m = d->models[i];
		int n = snprintf(buf + k, len - k, "%s'%s'", i ? ", " : "", m->name);

		if (n > 0 && with_what && (size_t)n < len - k)
			n += snprintf(buf + k + n, len - k - n, " (%s)",
				      m->state == HD_MODEL_READY && m->model
					      ? m->model->cfg.arch_name
					      : hd_model_state_name(m->state));
		if (n < 0)
			break;
		k += (size_t)n;
	}
}

/* The model a request names ("": the default one) with a running reactor:
 * 0 and *ret, or -errno with a reason. */
static int usable_model(struct hd_daemon *d, const char *name, struct hd_model **ret, char *why,
			size_t whylen)
{
	struct hd_model *m = hd_model_find(d, name);
	char names[256];

	if (!m) {
		list_models(d, false, names, sizeof(names));
		if (name && name[0])
			snprintf(why, whylen, "no model named '%s' (loaded: %s)", name, names);
		else
			snprintf(why, whylen, "no model is loaded (hearthctl load NAME PATH)");
		return -ENOENT;
	}
	if (m->state == HD_MODEL_LOADING) {
		snprintf(why, whylen, "model '%s' is still loading", m->name);
		return -EAGAIN;
	}
	if (m->state == HD_MODEL_UNLOADING) {
		snprintf(why, whylen, "model '%s' is being unloaded", m->name);
		return -ESHUTDOWN;
	}
	*ret = m;
	return 0;
}

void hd_notify_serving(struct hd_daemon *d, const char *prefix)
{
	char buf[512];

	list_models(d, true, buf, sizeof(buf));
	hd_notify("%sSTATUS=serving model%s %s; %u connection%s", prefix,
		  d->n_models == 1 ? "" : "s", d->n_models ? buf : "(none)", d->n_conns,
		  d->n_conns == 1 ? "" : "s");
}

/* Build, seal and map a client's region; attach it to the reactor. */
static int client_hello(struct hd_daemon *d, struct hd_client *c, const Hearth__Control__Hello *h,
			char *why, size_t whylen)
{
	const struct hd_config *cfg = &d->cfg;
	uint32_t sq = h->sq_entries ? h->sq_entries : cfg->sq_entries;
	uint32_t cq = h->cq_entries ? h->cq_entries : 2 * sq;
	uint64_t arena = h->arena_bytes ? h->arena_bytes : cfg->arena_bytes;
	struct hd_cmd cmd = { .type = HD_CMD_ATTACH, .client = c };
	struct hd_model *m;
	int r;

	if (c->in_reactor || c->m) {
		snprintf(why, whylen, "already attached");
		return -EALREADY;
	}
	r = usable_model(d, h->model, &m, why, whylen);
	if (r < 0)
		return r;
	if (m->state != HD_MODEL_READY) {
		snprintf(why, whylen, "model '%s' is being unloaded: no new connections", m->name);
		return -ESHUTDOWN;
	}
	arena = HR_ALIGN_UP(arena, (uint64_t)SHM_PAGE);
	if (sq != round_pow2(sq) || cq != round_pow2(cq) || arena > cfg->max_arena_bytes ||
	    shm_layout_compute(sq, cq, (uint32_t)arena, &c->lay) < 0) {
		snprintf(why, whylen,
			 "bad sizes: sq_entries %u and cq_entries %u must be powers of two in [%u, %u], "
			 "arena_bytes at most %u",
			 sq, cq, SHM_RING_MIN_ENTRIES, SHM_RING_MAX_ENTRIES, cfg->max_arena_bytes);
		return -EINVAL;
	}
	snprintf(c->name, sizeof(c->name), "%s", h->client_name);
	c->memfd = memfd_create("hearth-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (c->memfd < 0)
		return -errno;
	if (ftruncate(c->memfd, (off_t)c->lay.total_size) < 0)
		return -errno;
	c->mem = mmap(NULL, c->lay.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->memfd, 0);
	if (c->mem == MAP_FAILED) {
		c->mem = NULL;
		return -errno;
	}
	c->mem_len = c->lay.total_size;
	/* Sealed size: a client cannot shrink the region under the daemon (SIGBUS). */
	if (fcntl(c->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		return -errno;
	if ((r = shm_region_init(c->mem, c->mem_len, &c->lay)) < 0 ||
	    (r = shm_sq_cons_init(&c->sq, c->mem, &c->lay)) < 0 ||
	    (r = shm_cq_prod_init(&c->cq, c->mem, &c->lay)) < 0)
		return r;
	c->hdr = shm_region_hdr(c->mem);
	c->arena = shm_region_arena(c->mem, &c->lay);
	r = hd_reactor_call(m, &cmd);
	if (r < 0)
		return r;
	c->m = m;
	m->n_attached++;
	hr_info("client %u attached to model '%s': pid %d uid %u '%s', sq %u cq %u arena %u", c->id,
		m->name, (int)c->pid, (unsigned)c->uid, c->name, sq, cq, c->lay.arena_size);
	hd_notify_serving(d, "");
	return 0;
}

static void fill_model_info(struct hd_daemon *d, struct hd_model *m,
			    Hearth__Control__ModelInfo *mi)
{
	hearth__control__model_info__init(mi);
	mi->name = m->name;
	mi->path = m->cfg.model_path;
	mi->state = (char *)hd_model_state_name(m->state);
	mi->clients = m->n_attached;
	mi->is_default = d->n_models && d->models[0] == m;
	/* A model still loading has no weights yet (its worker owns them). */
	if (m->state == HD_MODEL_LOADING || !m->model)
		return;
	const struct model_config *mc = &m->model->cfg;

	mi->arch = (char *)mc->arch_name;
	mi->path = m->model->dir;
	mi->vocab_size = mc->vocab_size;
	mi->n_layers = mc->n_layers;
	mi->hidden_size = mc->hidden_size;
	mi->max_context = mc->sliding_window ? HR_MIN(mc->sliding_window, mc->max_position_embeddings)
					     : mc->max_position_embeddings;
	mi->dtype = (char *)kern_dtype_name(mc->torch_dtype);
	mi->backend = (char *)m->be->name;
	mi->weight_bytes = m->model->weight_bytes;
	mi->load_seconds = m->model->load_seconds;
	mi->kv_pages = kv_pool_n_pages(engine_pool(m->engine));
	mi->kv_bytes = (uint64_t)mi->kv_pages * engine_page_bytes(m->engine);
}

/* The model a stats/sessions/session-action request is about: the one it
 * names, else the connection's, else the default one. */
static int target_model(struct hd_daemon *d, struct hd_client *c, const char *name,
			struct hd_model **ret, char *why, size_t whylen)
{
	return usable_model(d, name[0] ? name : c->m ? c->m->name : "", ret, why, whylen);
}

/* Root and the daemon's own uid may load and unload models. */
static bool peer_admin(const struct hd_client *c)
{
	return c->uid == 0 || c->uid == geteuid();
}

static void add_waiter(struct hd_model *m, struct hd_client *c, uint64_t req_id)
{
	if (m->n_waiters < HD_MAX_WAITERS)
		m->waiters[m->n_waiters++] = (struct hd_waiter){ .client_id = c->id, .req_id = req_id };
}

/* hearthctl load: 1 when the reply is deferred until the load ends, or -errno. */
static int request_load(struct hd_daemon *d, struct hd_client *c, uint64_t req_id,
			const Hearth__Control__LoadModel *lm, char *why, size_t whylen)
{
	const char *path = lm->path;
	struct hd_model *m;
	int r;

	if (!peer_admin(c)) {
		snprintf(why, whylen, "only root and hearthd's own user may load models");
		return -EPERM;
	}
	if (!path[0] && !(path = hd_model_config_path(d, lm->name))) {
		snprintf(why, whylen, "no path given and the configuration names no model '%s'",
			 lm->name);
		return -EINVAL;
	}
	r = hd_model_load_start(d, lm->name, path, lm->kv_pages, &m, why, whylen);
	if (r < 0)
		return r;
	add_waiter(m, c, req_id);
	hd_notify_serving(d, "");
	return 1;
}

/* hearthctl unload: 1 when the reply is deferred, or -errno. */
static int request_unload(struct hd_daemon *d, struct hd_client *c, uint64_t req_id,
			  const Hearth__Control__UnloadModel *um, char *why, size_t whylen)
{
	struct hd_model *m;
	struct hd_cmd cmd = { .type = HD_CMD_NAMED };
	int r, named;

	if (!peer_admin(c)) {
		snprintf(why, whylen, "only root and hearthd's own user may unload models");
		return -EPERM;
	}
	if (!um->name[0]) {
		snprintf(why, whylen, "name the model to unload");
		return -EINVAL;
	}
	r = usable_model(d, um->name, &m, why, whylen);
	if (r < 0)
		return r == -EAGAIN ? -EBUSY : r;
	if (m->state == HD_MODEL_DRAINING) {
		if (!um->wait) {
			snprintf(why, whylen,
				 "model '%s' is already waiting for %u connection%s to close before its unload",
				 m->name, m->n_attached, m->n_attached == 1 ? "" : "s");
			return -EBUSY;
		}
		add_waiter(m, c, req_id);
		return 1;
	}
	named = hd_reactor_call(m, &cmd);
	if (named > 0 && !m->cfg.state_dir[0] && !um->force) {
		snprintf(why, whylen,
			 "model '%s' has %d named session%s and no state_dir to save them in: "
			 "unloading would lose them (hearthctl unload --force drops them)",
			 m->name, named, named == 1 ? "" : "s");
		return -EBUSY;
	}
	if (m->n_attached && !um->wait) {
		snprintf(why, whylen,
			 "model '%s' has %u connection%s attached: unload once they have closed, "
			 "or hearthctl unload --wait",
			 m->name, m->n_attached, m->n_attached == 1 ? "" : "s");
		return -EBUSY;
	}
	add_waiter(m, c, req_id);
	if (m->n_attached) {
		hd_model_set_state(d, m, HD_MODEL_DRAINING);
		hr_info("model '%s': unload waits for %u connection%s to close", m->name,
			m->n_attached, m->n_attached == 1 ? "" : "s");
		return 1;
	}
	hd_model_unload_start(d, m);
	hd_notify_serving(d, "");
	return 1;
}

static void handle_request(struct hd_daemon *d, struct hd_client *c, const uint8_t *buf, size_t len)
{
	Hearth__Control__Request *req = hearth__control__request__unpack(NULL, len, buf);
	Hearth__Control__Response rep = HEARTH__CONTROL__RESPONSE__INIT;
	Hearth__Control__HelloReply hello = HEARTH__CONTROL__HELLO_REPLY__INIT;
	Hearth__Control__ModelsReply models = HEARTH__CONTROL__MODELS_REPLY__INIT;
	Hearth__Control__OpenSessionReply open = HEARTH__CONTROL__OPEN_SESSION_REPLY__INIT;
	Hearth__Control__SessionsReply sessions = HEARTH__CONTROL__SESSIONS_REPLY__INIT;
	Hearth__Control__StatsReply stats = HEARTH__CONTROL__STATS_REPLY__INIT;
	Hearth__Control__ModelInfo mi, *mis = NULL, **mip = NULL;
	struct hd_cmd cmd = { .client = c };
	struct hd_model *m = NULL;
	char why[512] = "";
	int pass_fd = -1, r = 0;

	if (!req) {
		reply_error(c->sock, 0, -EBADMSG, "malformed request");
		return;
	}
	if (c->refused) {
		reply_error(c->sock, req->id, c->refused,
			    c->refused == -EACCES ? "uid not allowed by hearthd's policy"
						  : "too many clients (max_clients)");
		hearth__control__request__free_unpacked(req, NULL);
		return;
	}
	rep.id = req->id;
	switch (req->body_case) {
	case HEARTH__CONTROL__REQUEST__BODY_HELLO:
		r = client_hello(d, c, req->hello, why, sizeof(why));
		if (r == 0) {
			fill_model_info(d, c->m, &mi);
			hello.client_id = c->id;
			hello.region_bytes = c->mem_len;
			hello.sq_entries = c->lay.sq_entries;
			hello.cq_entries = c->lay.cq_entries;
			hello.arena_bytes = c->lay.arena_size;
			hello.model = &mi;
			rep.body_case = HEARTH__CONTROL__RESPONSE__BODY_HELLO;
			rep.hello = &hello;
			pass_fd = c->memfd;
		}
		break;
	case HEARTH__CONTROL__REQUEST__BODY_PING:
		break;
	case HEARTH__CONTROL__REQUEST__BODY_LIST_MODELS:
		mis = calloc(d->n_models + 1, sizeof(*mis));
		mip = calloc(d->n_models + 1, sizeof(*mip));
		if (!mis || !mip) {
			r = -ENOMEM;
			break;
		}
		for (uint32_t i = 0; i < d->n_models; i++) {
			fill_model_info(d, d->models[i], &mis[i]);
			mip[i] = &mis[i];
		}
		models.n_models = d->n_models;
		models.models = mip;
		rep.body_case = HEARTH__CONTROL__RESPONSE__BODY_MODELS;
		rep.models = &models;
		break;
	case HEARTH__CONTROL__REQUEST__BODY_LOAD_MODEL:
		r = request_load(d, c, req->id, req->load_model, why, sizeof(why));
		break;
	case HEARTH__CONTROL__REQUEST__BODY_UNLOAD_MODEL:
		r = request_unload(d, c, req->id, req->unload_model, why, sizeof(why));
		break;
	case HEARTH__CONTROL__REQUEST__BODY_OPEN_SESSION:
		if (!c->in_reactor) {
			r = -ENOTCONN;
			snprintf(why, sizeof(why), "send hello first");
			break;
		}
		cmd.type = HD_CMD_OPEN;
		cmd.name = req->open_session->name;
		cmd.flag = req->open_session->create || !req->open_session->name[0];
		cmd.bulk = req->open_session->bulk;
		r = hd_reactor_call(c->m, &cmd);
		open.handle = cmd.out_handle;
		open.n_tokens = cmd.out_tokens;
		open.created = cmd.out_created;
		rep.body_case = HEARTH__CONTROL__RESPONSE__BODY_OPEN_SESSION;
		rep.open_session = &open;
		break;
	case HEARTH__CONTROL__REQUEST__BODY_CLOSE_SESSION:
		if (!c->in_reactor) {
			r = -ENOTCONN;
			snprintf(why, sizeof(why), "send hello first");
			break;
		}
		cmd.type = HD_CMD_CLOSE;
		cmd.handle = req->close_session->handle;
		cmd.flag = req->close_session->destroy;
		r = hd_reactor_call(c->m, &cmd);
		break;
	case HEARTH__CONTROL__REQUEST__BODY_LIST_SESSIONS:
		r = target_model(d, c, req->list_sessions->model, &m, why, sizeof(why));
		if (r < 0)
			break;
		cmd.type = HD_CMD_SESSIONS;
		cmd.out = &sessions;
		r = hd_reactor_call(m, &cmd);
		rep.body_case = HEARTH__CONTROL__RESPONSE__BODY_SESSIONS;
		rep.sessions = &sessions;
		break;
	case HEARTH__CONTROL__REQUEST__BODY_SESSION_ACTION:
		r = target_model(d, c, req->session_action->model, &m, why, sizeof(why));
		if (r < 0)
			break;
		cmd.type = HD_CMD_SESSION_ACTION;
		cmd.name = req->session_action->name;
		cmd.handle = req->session_action->handle;
		cmd.action = req->session_action->action;
		r = hd_reactor_call(m, &cmd);
		if (r == -EOPNOTSUPP)
			snprintf(why, sizeof(why), "no L2 configured (l2_path): sessions cannot be evicted");
		else if (r == -EBUSY)
			snprintf(why, sizeof(why), "session is pinned, streaming, or has no KV in L1");
		else if (r == -ENOENT)
			snprintf(why, sizeof(why), "no such session");
		break;
	case HEARTH__CONTROL__REQUEST__BODY_GET_STATS:
		r = target_model(d, c, req->get_stats->model, &m, why, sizeof(why));
		if (r < 0)
			break;
		cmd.type = HD_CMD_STATS;
		cmd.out = &stats;
		r = hd_reactor_call(m, &cmd);
		stats.uptime_ms = (hr_now_ns() - d->start_ns) / 1000000; /* the daemon's */
		rep.body_case = HEARTH__CONTROL__RESPONSE__BODY_STATS;
		rep.stats = &stats;
		break;
	default:
		r = -EOPNOTSUPP;
		snprintf(why, sizeof(why), "unknown request");
		break;
	}
	if (r < 0) {
		rep.body_case = HEARTH__CONTROL__RESPONSE__BODY__NOT_SET;
		rep.error = r;
		rep.message = why[0] ? why : (char *)strerror(-r);
		pass_fd = -1;
	}
	/* r > 0: answered later (a load or an unload in progress). */
	if (r <= 0) {
		r = hr_ctl_send(c->sock, &rep.base, pass_fd);
		if (r < 0)
			hr_debug("client %u: reply not sent: %s", c->id, strerror(-r));
	}
	free(mis);
	free(mip);
	/* Free what the reactor allocated for the replies. */
	for (size_t i = 0; i < sessions.n_sessions; i++) {
		free(sessions.sessions[i]->name);
		free(sessions.sessions[i]->tier);
		free(sessions.sessions[i]);
	}
	free(sessions.sessions);
	for (size_t i = 0; i < stats.n_ops; i++) {
		free(stats.ops[i]->op);
		free(stats.ops[i]);
	}
	free(stats.ops);
	free(stats.batch_sizes);
	free(stats.step_times);
	if (stats.pager != protobuf_c_empty_string)
		free(stats.pager);
	hearth__control__request__free_unpacked(req, NULL);
}

static void client_free(struct hd_daemon *d, struct hd_client *c)
{
	struct hd_model *m = c->m;

	if (c->in_reactor) {
		struct hd_cmd cmd = { .type = HD_CMD_DETACH, .client = c };
		hd_reactor_call(m, &cmd);
		hr_info("client %u detached from model '%s'", c->id, m->name);
	}
	if (m) {
		m->n_attached--;
		/* unload --wait: the last connection is gone. */
		if (m->state == HD_MODEL_DRAINING && !m->n_attached && m->reactor_running)
			hd_model_unload_start(d, m);
	}
	if (c->mem)
		munmap(c->mem, c->mem_len);
	if (c->memfd >= 0)
		close(c->memfd);
	close(c->sock);
	if (c->conn_prev)
		c->conn_prev->conn_next = c->conn_next;
	else
		d->conns = c->conn_next;
	if (c->conn_next)
		c->conn_next->conn_prev = c->conn_prev;
	d->n_conns--;
	d->n_refused -= c->refused != 0;
	free(c);
}

#define HD_MAX_REFUSED 64

static void accept_one(struct hd_daemon *d, int lfd, int ep)
{
	struct ucred cred = { 0 };
	socklen_t len = sizeof(cred);
	struct hd_client *c;
	int refused = 0, fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0)
		return;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
	    !peer_allowed(&d->cfg, cred.uid, cred.gid)) {
		hr_warn("refused connection from uid %u pid %d: not in allow_uids/allow_gids",
			(unsigned)cred.uid, (int)cred.pid);
		refused = -EACCES;
	} else if (d->n_conns - d->n_refused >= d->cfg.max_clients) {
		refused = -EUSERS;
	}
	/* A refused peer is kept until it hangs up, and each of its requests is
	 * answered with the refusal: closing at once would reset the connection
	 * under a Hello already sent, and the reason would be lost. */
	if (refused && d->n_refused >= HD_MAX_REFUSED) {
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->sock = fd;
	c->memfd = -1;
	c->pid = cred.pid;
	c->uid = cred.uid;
	c->refused = refused;
	c->id = ++d->next_client_id;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd,
		      &(struct epoll_event){ .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c }) < 0) {
		close(fd);
		free(c);
		return;
	}
	c->conn_next = d->conns;
	if (d->conns)
		d->conns->conn_prev = c;
	d->conns = c;
	d->n_conns++;
	d->n_refused += refused != 0;
}

/* Returns false when the connection is finished. */
static bool client_readable(struct hd_daemon *d, struct hd_client *c, uint32_t events)
{
	static uint8_t buf[HR_CTL_MAX_MSG];
	int eof, r;

	for (;;) {
		r = hr_ctl_recv(c->sock, buf, sizeof(buf), NULL, &eof);
		if (r == -EAGAIN)
			return !(events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR));
		if (eof || r == -ECONNRESET || r == -EPIPE || r == -ENOTCONN)
			return false;
		if (r < 0) {
			reply_error(c->sock, 0, r,
				    r == -EPROTONOSUPPORT ? "unsupported protocol version"
							  : "malformed frame");
			return false;
		}
		handle_request(d, c, buf + HR_CTL_HDR, (size_t)r);
	}
}

/* Answer the requests that waited for m's load or unload. */
static void answer_waiters(struct hd_daemon *d, struct hd_model *m, int res, bool with_info)
{
	Hearth__Control__Response rep = HEARTH__CONTROL__RESPONSE__INIT;
	Hearth__Control__ModelsReply models = HEARTH__CONTROL__MODELS_REPLY__INIT;
	Hearth__Control__ModelInfo mi, *mip = &mi;

	if (res < 0) {
		rep.error = res;
		rep.message = m->worker_err[0] ? m->worker_err : (char *)strerror(-res);
	} else if (with_info) {
		fill_model_info(d, m, &mi);
		models.n_models = 1;
		models.models = &mip;
		rep.body_case = HEARTH__CONTROL__RESPONSE__BODY_MODELS;
		rep.models = &models;
	}
	for (uint32_t i = 0; i < m->n_waiters; i++)
		for (struct hd_client *c = d->conns; c; c = c->conn_next)
			if (c->id == m->waiters[i].client_id && !c->refused) {
				rep.id = m->waiters[i].req_id;
				hr_ctl_send(c->sock, &rep.base, -1);
				break;
			}
	m->n_waiters = 0;
}

/* worker_efd fired: finish every load and unload whose worker is done. */
static void reap_workers(struct hd_daemon *d)
{
	enum hd_model_state was;
	struct hd_model *m;
	uint64_t v;

	if (read(d->worker_efd, &v, sizeof(v)) < 0) {
		/* EAGAIN: a previous pass took them already. */
	}
	while ((m = hd_model_reap_one(d, &was))) {
		if (was == HD_MODEL_LOADING && m->worker_res == 0) {
			answer_waiters(d, m, 0, true);
			continue;
		}
		answer_waiters(d, m, was == HD_MODEL_LOADING ? m->worker_res : 0, false);
		hd_model_forget(d, m);
	}
	hd_notify_serving(d, "");
}

/* Ping the watchdog only while every running reactor turns (each wakes at
 * least once per idle_wake_ns, well inside the interval). */
static void watchdog(struct hd_daemon *d)
{
	for (uint32_t i = 0; i < d->n_models; i++) {
		struct hd_model *m = d->models[i];

		if (m->reactor_running &&
		    atomic_load_explicit(&m->reactor_turns, memory_order_relaxed) == m->wd_turns)
			return;
	}
	for (uint32_t i = 0; i < d->n_models; i++)
		d->models[i]->wd_turns =
			atomic_load_explicit(&d->models[i]->reactor_turns, memory_order_relaxed);
	hd_notify("WATCHDOG=1");
}

int hd_control_run(struct hd_daemon *d, int lfd)
{
	struct epoll_event ev[32];
	_cleanup_close_ int ep = -1, sfd = -1;
	struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESTART };
	uint64_t wd_usec = hd_watchdog_usec(), last_check = 0;
	/* Ping the watchdog at half its interval, and only while the reactor
	 * turns (it wakes at least once a second even when idle). */
	int timeout_ms = wd_usec ? (int)HR_MAX(wd_usec / 2000, 1) : -1;
	bool running = true;

	signal_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	sfd = signal_efd;
	sigemptyset(&sa.sa_mask);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (sfd < 0 || ep < 0 || sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0 ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &(struct epoll_event){ .events = EPOLLIN, .data.ptr = &listen_tag }) < 0 ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &(struct epoll_event){ .events = EPOLLIN, .data.ptr = &signal_tag }) < 0 ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, d->worker_efd, &(struct epoll_event){ .events = EPOLLIN, .data.ptr = &worker_tag }) < 0)
		return -errno;
	while (running) {
		int n = epoll_wait(ep, ev, HR_ARRAY_SIZE(ev), timeout_ms);

		if (wd_usec && hr_now_ns() - last_check >= wd_usec * 500) {
			watchdog(d);
			last_check = hr_now_ns();
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		for (int i = 0; i < n; i++) {
			if (ev[i].data.ptr == &listen_tag) {
				accept_one(d, lfd, ep);
			} else if (ev[i].data.ptr == &worker_tag) {
				reap_workers(d);
			} else if (ev[i].data.ptr == &signal_tag) {
				uint64_t v;
				if (read(sfd, &v, sizeof(v)) == sizeof(v)) {
					hr_info("%s: draining in-flight work and stopping",
						strsignal((int)signal_seen));
					hd_notify("STOPPING=1\nSTATUS=draining in-flight work");
					running = false;
				}
			} else {
				struct hd_client *c = ev[i].data.ptr;
				if (!client_readable(d, c, ev[i].events)) {
					epoll_ctl(ep, EPOLL_CTL_DEL, c->sock, NULL);
					client_free(d, c);
				}
			}
		}
	}
	/* Stop accepting; let every reactor finish what was submitted (a load
	 * in progress finishes first). Clients still connected are detached
	 * after the drain; main saves the sessions and frees the models. */
	epoll_ctl(ep, EPOLL_CTL_DEL, lfd, NULL);
	hd_metrics_stop(d); /* its scrapes ask the reactors, which are about to stop */
	hd_models_stop(d);
	/* Every connection, attached or not, is closed and freed. */
	while (d->conns)
		client_free(d, d->conns);
	return 0;
}

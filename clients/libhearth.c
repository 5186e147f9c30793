/* SPDX-License-Identifier: MIT */
/*
 * libhearth, the cold path: attaching to hearthd (Hello over the control
 * socket, the region's memfd checked and mapped, ring views built), detaching,
 * sessions opened and closed through the control socket, and error texts.
 * The data path is in data.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hearth_pvt.h"
#include "hr_common.h"
#include "shm_wait.h"

#define DEFAULT_SPIN_US 50u

static void copy_str(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src ? src : "");
}

static void free_hearth(struct hearth *h)
{
	if (h->mem)
		munmap(h->mem, h->mem_len);
	if (h->sock >= 0)
		close(h->sock);
	free(h);
}

/* Send Hello, map the region it returns and check it. */
static int attach(struct hearth *h, const struct hearth_opts *o)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__Hello hello = HEARTH__CONTROL__HELLO__INIT;
	Hearth__Control__Response *rep = NULL;
	const Hearth__Control__HelloReply *hr;
	_cleanup_close_ int memfd = -1;
	struct stat st;
	int r;

	hello.client_name = (char *)(o->client_name ? o->client_name : program_invocation_short_name);
	hello.model = (char *)(o->model ? o->model : "");
	hello.sq_entries = o->sq_entries;
	hello.cq_entries = o->cq_entries;
	hello.arena_bytes = o->arena_bytes;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_HELLO;
	req.hello = &hello;
	r = hearth__ctl_call(h->sock, &h->ctl_id, &req, &rep, &memfd, NULL, 0, 0);
	if (r == -EBADMSG || r == -EPROTONOSUPPORT)
		return -EPROTO; /* not a hearthd, or one of another protocol version */
	if (r < 0)
		return r;
	r = -EPROTO;
	if (rep->body_case != HEARTH__CONTROL__RESPONSE__BODY_HELLO || memfd < 0)
		goto out;
	hr = rep->hello;
	if (fstat(memfd, &st) < 0) {
		r = -errno;
		goto out;
	}
	if (st.st_size < (off_t)sizeof(struct shm_region_hdr) || (uint64_t)st.st_size > SIZE_MAX ||
	    (uint64_t)st.st_size != hr->region_bytes)
		goto out;
	/* MAP_POPULATE: fault the rings and the arena in now, not on the hot path. */
	h->mem = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
		      memfd, 0);
	if (h->mem == MAP_FAILED) {
		h->mem = NULL;
		r = -errno;
		goto out;
	}
	h->mem_len = (size_t)st.st_size;
	r = shm_region_attach_check(h->mem, h->mem_len, &h->lay);
	if (r == -EBADMSG || r == -EPROTONOSUPPORT)
		r = -EPROTO;
	if (r < 0)
		goto out;
	if ((r = shm_sq_prod_init(&h->sq, h->mem, &h->lay)) < 0 ||
	    (r = shm_cq_cons_init(&h->cq, h->mem, &h->lay)) < 0)
		goto out;
	h->hdr = shm_region_hdr(h->mem);
	h->arena = shm_region_arena(h->mem, &h->lay);
	if (hr->model) {
		copy_str(h->model.name, sizeof(h->model.name), hr->model->name);
		copy_str(h->model.arch, sizeof(h->model.arch), hr->model->arch);
		h->model.vocab_size = hr->model->vocab_size;
		h->model.n_layers = hr->model->n_layers;
		h->model.hidden_size = hr->model->hidden_size;
		h->model.max_context = hr->model->max_context;
	}
	r = 0;
out:
	hearth__control__response__free_unpacked(rep, NULL);
	return r;
}

struct hearth *hearth_connect(const struct hearth_opts *opts)
{
	const struct hearth_opts none = { 0 };
	const struct hearth_opts *o = opts ? opts : &none;
	char path[108];
	struct hearth *h;
	int r;

	r = hearth__socket_path(o->socket_path, path, sizeof(path));
	if (r < 0) {
		errno = -r;
		return NULL;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->sock = hearth__ctl_connect(path);
	if (h->sock < 0) {
		r = h->sock;
		goto fail;
	}
	h->spin_ns = (uint64_t)(o->spin_us ? o->spin_us : DEFAULT_SPIN_US) * 1000;
	r = attach(h, o);
	if (r < 0)
		goto fail;
	return h;
fail:
	free_hearth(h);
	errno = -r;
	return NULL;
}

void hearth_close(struct hearth *h)
{
	if (!h)
		return;
	/* Closing the socket is the detach: the daemon sees the hang-up, cancels
	 * our requests and frees anonymous sessions; unmapping is ours alone. */
	free_hearth(h);
}

const struct hearth_model_info *hearth_model(const struct hearth *h)
{
	return h ? &h->model : NULL;
}

/* A control request on an attached connection; marks it dead on a hang-up. */
static int call(struct hearth *h, Hearth__Control__Request *req, Hearth__Control__Response **ret)
{
	int r;

	if (h->dead)
		return -ESHUTDOWN;
	r = hearth__ctl_call(h->sock, &h->ctl_id, req, ret, NULL, NULL, 0, 0);
	if (r == -ECONNRESET) {
		h->dead = true;
		return -ESHUTDOWN;
	}
	return r;
}

int64_t hearth_session_open(struct hearth *h, const char *name, uint32_t flags,
			    uint32_t *ret_tokens)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__OpenSession os = HEARTH__CONTROL__OPEN_SESSION__INIT;
	Hearth__Control__Response *rep = NULL;
	int64_t handle;
	int r;

	if (!h || flags & ~(HEARTH_OPEN_CREATE | HEARTH_OPEN_BULK))
		return -EINVAL;
	if (name && strlen(name) > SHM_SESSION_NAME_MAX)
		return -ENAMETOOLONG;
	os.name = (char *)(name ? name : "");
	os.create = flags & HEARTH_OPEN_CREATE;
	os.bulk = flags & HEARTH_OPEN_BULK;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_OPEN_SESSION;
	req.open_session = &os;
	r = call(h, &req, &rep);
	if (r < 0)
		return r;
	if (rep->body_case != HEARTH__CONTROL__RESPONSE__BODY_OPEN_SESSION ||
	    !rep->open_session->handle) {
		hearth__control__response__free_unpacked(rep, NULL);
		return -EPROTO;
	}
	handle = rep->open_session->handle;
	if (ret_tokens)
		*ret_tokens = rep->open_session->n_tokens;
	hearth__control__response__free_unpacked(rep, NULL);
	return handle;
}

int hearth_session_close(struct hearth *h, uint32_t session, int destroy)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__CloseSession cs = HEARTH__CONTROL__CLOSE_SESSION__INIT;
	Hearth__Control__Response *rep = NULL;
	int r;

	if (!h)
		return -EINVAL;
	cs.handle = session;
	cs.destroy = destroy != 0;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_CLOSE_SESSION;
	req.close_session = &cs;
	r = call(h, &req, &rep);
	if (r < 0)
		return r;
	hearth__control__response__free_unpacked(rep, NULL);
	return 0;
}

int hearth_session_evict(struct hearth *h, uint32_t session)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__SessionAction sa = HEARTH__CONTROL__SESSION_ACTION__INIT;
	Hearth__Control__Response *rep = NULL;
	int r;

	if (!h || !session)
		return -EINVAL;
	sa.handle = session;
	sa.action = HEARTH__CONTROL__SESSION_ACTION__ACTION__EVICT;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_SESSION_ACTION;
	req.session_action = &sa;
	r = call(h, &req, &rep);
	if (r < 0)
		return r;
	hearth__control__response__free_unpacked(rep, NULL);
	return 0;
}

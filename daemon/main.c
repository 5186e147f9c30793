/* SPDX-License-Identifier: MIT */
/*
 * hearthd: load the configured model once, keep it resident, and serve local
 * clients through shared-memory rings until SIGTERM or SIGINT, which drain
 * in-flight work and exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hearth_config.h"
#include "hearthd.h"
#include "notify.h"
#include "hr_common.h"
#include "hr_log.h"

/* model_load_ex callbacks: progress and fallback reasons into the log. */
static void load_progress(void *arg, const struct model_load_progress *p)
{
	(void)arg;
	hr_info("loading model: %.1f/%.1f GB, %.2f GB/s%s", p->done_bytes / 1e9,
		p->total_bytes / 1e9, p->seconds > 0 ? p->done_bytes / 1e9 / p->seconds : 0.0,
		p->final ? ", done" : "");
}

static void load_note(void *arg, const char *msg)
{
	(void)arg;
	hr_info("loading model: %s", msg);
}

static int daemon_init(struct hd_daemon *d)
{
	const struct hd_config *cfg = &d->cfg;
	const char *path = cfg->model_path[0] ? cfg->model_path : HEARTH_TINY_MODEL;
	char err[512] = "";

	d->start_ns = hr_now_ns();
	pthread_mutex_init(&d->cmd_lock, NULL);
	pthread_cond_init(&d->cmd_done, NULL);
	hd_sessions_init(&d->sessions);
	d->be = kern_backend_new(cfg->backend, (int)cfg->device, (int)cfg->threads);
	if (!d->be) {
		hr_err("backend '%s': %s", cfg->backend,
		       errno == ENODEV ? "not available in this build or on this machine"
				       : strerror(errno));
		return -errno;
	}
	hr_info("loading model %s on %s", path, d->be->name);
	d->model = model_load_ex(path, d->be,
				 &(struct model_load_opts){ .progress = load_progress,
							    .note = load_note },
				 err, sizeof(err));
	if (!d->model) {
		hr_err("cannot load model: %s", err[0] ? err : strerror(errno));
		return -EINVAL;
	}
	d->engine = engine_new(d->model, &(struct engine_params){
						 .kv_pages = cfg->kv_pages,
						 .page_tokens = cfg->page_tokens,
						 .max_step_tokens = cfg->max_step_tokens,
						 .max_batch = cfg->max_batch,
					 });
	if (!d->engine) {
		hr_err("cannot create the engine (KV pool of %u pages): %s", cfg->kv_pages,
		       strerror(errno));
		return -errno;
	}
	if (hd_sched_init(d) < 0) {
		hr_err("cannot create the scheduler: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	if (hd_tier_init(d) < 0)
		return -EINVAL;
	hr_info("model '%s' resident: %s, %u layers, vocab %u, %.1f MB in %.0f ms (%s); KV pool %u pages of %u tokens",
		cfg->model_name, d->model->cfg.arch_name, d->model->cfg.n_layers,
		d->model->cfg.vocab_size, d->model->weight_bytes / 1e6,
		d->model->load_seconds * 1e3, d->model->load_how,
		kv_pool_n_pages(engine_pool(d->engine)),
		cfg->page_tokens);
	return 0;
}

static void daemon_fini(struct hd_daemon *d)
{
	if (d->engine)
		hd_sessions_fini(d);
	hd_sched_fini(d);
	hd_tier_fini(d);
	engine_free(d->engine);
	model_free(d->model);
	kern_backend_free(d->be);
	free(d->clients);
	pthread_mutex_destroy(&d->cmd_lock);
	pthread_cond_destroy(&d->cmd_done);
}

int main(int argc, char **argv)
{
	static struct hd_daemon d;
	bool check = false, help = false;
	char err[512] = "";
	int lfd = -1, r, rc = 1;
	bool activated = false;

	hd_config_defaults(&d.cfg);
	r = hd_config_load(&d.cfg, argc, argv, &check, &help, err, sizeof(err));
	if (help) {
		hd_config_usage(stdout);
		return 0;
	}
	if (r < 0) {
		hr_err("configuration: %s", err);
		return 2;
	}
	if (check) {
		hd_config_dump(&d.cfg, stdout);
		printf("# configuration OK\n");
		return 0;
	}
	hr_log_set_level(d.cfg.log_level);
	/* SIGTERM/SIGINT are handled by the control loop (control.c). */
	signal(SIGPIPE, SIG_IGN);

	hr_info("hearthd %s starting", HEARTH_VERSION);
	if (daemon_init(&d) < 0)
		goto out;
	lfd = hd_listen_fd();
	if (lfd >= 0) {
		/* Socket activation: systemd owns the socket file. */
		activated = true;
		fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
		fcntl(lfd, F_SETFD, FD_CLOEXEC);
	} else if (lfd == -EINVAL) {
		hr_err("socket activation: expected one SOCK_SEQPACKET listening socket");
		goto out;
	} else if (hd_control_listen(&d.cfg, &lfd) < 0) {
		goto out;
	}
	/* An idle reactor wakes at least four times per watchdog interval. */
	d.idle_wake_ns = hd_watchdog_usec() ? HR_MIN(hd_watchdog_usec() * 250, 1000000000ull)
					    : 1000000000ull;
	if ((r = hd_reactor_start(&d)) < 0) {
		hr_err("cannot start the reactor: %s", strerror(-r));
		goto out;
	}
	hr_info("listening on %s", activated ? "the socket passed by systemd" : d.cfg.socket_path);
	if (hd_metrics_start(&d) < 0) {
		hd_reactor_stop(&d);
		goto out;
	}
	hd_notify("READY=1\nSTATUS=serving model '%s' (%s, %s backend)", d.cfg.model_name,
		  d.model->cfg.arch_name, d.be->name);
	r = hd_control_run(&d, lfd);
	if (r < 0) {
		hr_err("control loop: %s", strerror(-r));
		goto out;
	}
	rc = 0;
	hr_info("stopped");
out:
	if (lfd >= 0) {
		close(lfd);
		if (!activated)
			unlink(d.cfg.socket_path);
	}
	daemon_fini(&d);
	return rc;
}

/* SPDX-License-Identifier: MIT */
/*
 * hearthd: load the configured models once, keep them resident, and serve
 * local clients through shared-memory rings until SIGTERM or SIGINT, which
 * drain in-flight work and exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "hearth_config.h"
#include "hearthd.h"
#include "notify.h"
#include "hr_common.h"
#include "hr_log.h"

/* The [model] section's model, then the preload list ([models]). */
static int daemon_init(struct hd_daemon *d)
{
	const struct hd_config *cfg = &d->cfg;
	char err[1024] = "";
	int r;

	d->start_ns = hr_now_ns();
	pthread_mutex_init(&d->models_lock, NULL);
	d->worker_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->worker_efd < 0) {
		hr_err("eventfd: %s", strerror(errno));
		return -errno;
	}
	r = hd_model_load_now(d, cfg->model_name, hd_model_config_path(d, cfg->model_name), 0, err,
			      sizeof(err));
	for (uint32_t i = 0; r == 0 && i < cfg->n_preload; i++) {
		hd_notify("STATUS=loading model '%s' (%u of %u)", cfg->preload[i].name, i + 2,
			  cfg->n_preload + 1);
		r = hd_model_load_now(d, cfg->preload[i].name, cfg->preload[i].path, 0, err,
				      sizeof(err));
	}
	if (r < 0) {
		hr_err("%s", err);
		return r;
	}
	return 0;
}

static void daemon_fini(struct hd_daemon *d)
{
	hd_models_stop(d);
	hd_models_shutdown(d);
	if (d->worker_efd >= 0)
		close(d->worker_efd);
	pthread_mutex_destroy(&d->models_lock);
}

int main(int argc, char **argv)
{
	static struct hd_daemon d;
	bool check = false, help = false;
	char err[512] = "";
	int lfd = -1, r, rc = 1;
	bool activated = false;

	kern_cpu_quiet_pools(argv);
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
	d.worker_efd = -1;
	/* An idle reactor wakes at least four times per watchdog interval. */
	d.idle_wake_ns = hd_watchdog_usec() ? HR_MIN(hd_watchdog_usec() * 250, 1000000000ull)
					    : 1000000000ull;
	if (daemon_init(&d) < 0)
		goto out;
	/* Metrics first: once the control socket exists (what clients and
	 * tests wait for) every endpoint of the daemon answers. */
	if (hd_metrics_start(&d) < 0)
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
	hr_info("listening on %s", activated ? "the socket passed by systemd" : d.cfg.socket_path);
	hd_notify_serving(&d, "READY=1\n");
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
	hd_metrics_stop(&d); /* no-op unless start-up failed after it began */
	daemon_fini(&d);
	return rc;
}

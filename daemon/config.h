/* SPDX-License-Identifier: MIT */
/*
 * hearthd configuration: an INI file (parsed with inih) whose every key is
 * also a command-line flag (--key=value, with '_' written as '-'); flags win
 * over the file. One table describes every key, so the file, the flags,
 * --help and --check-config cannot disagree.
 */
#ifndef HD_CONFIG_H
#define HD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "hr_log.h"

#define HD_MAX_IDS 32
#define HD_MAX_PRELOAD 15 /* besides the [model] section's */

/* A model loaded at start besides the [model] section's: [models] NAME = PATH. */
struct hd_preload {
	char name[64];
	char path[4096];
};
#define HD_DEFAULT_CONFIG "/etc/hearth/hearthd.conf"

struct hd_config {
	/* [daemon] */
	char socket_path[108];
	uid_t allow_uids[HD_MAX_IDS];
	uint32_t n_allow_uids;
	gid_t allow_gids[HD_MAX_IDS];
	uint32_t n_allow_gids;
	uint32_t max_clients;
	enum hr_log_level log_level;
	uint32_t metrics_port;
	char metrics_addr[64];
	/* [model] */
	char model_path[4096];
	char model_name[64];
	char backend[16];
	uint32_t device;
	uint32_t threads;
	uint32_t kv_pages;
	uint32_t page_tokens;
	uint32_t max_step_tokens;
	uint32_t graph_max_tokens;
	uint32_t max_batch;
	uint32_t bulk_share_pct;
	uint32_t batch_wait_us;
	/* [models] */
	struct hd_preload preload[HD_MAX_PRELOAD];
	uint32_t n_preload;
	/* [kv] */
	char l2_path[4096];
	uint32_t l2_mib;
	char pager[16];
	char state_dir[4096];
	uint32_t evict_low_pct;
	uint32_t evict_high_pct;
	uint32_t checkpoint_ms;
	/* [reactor] */
	uint32_t spin_us;
	/* [client] */
	uint32_t sq_entries;
	uint32_t arena_bytes;
	uint32_t max_arena_bytes;
	uint32_t max_sessions_per_client;
};

/* Defaults: socket /run/hearth/hearthd.sock as root, else
 * $XDG_RUNTIME_DIR/hearth/hearthd.sock (or /tmp/hearth-$UID/hearthd.sock). */
void hd_config_defaults(struct hd_config *c);

/*
 * Load from argv: --config FILE (default HD_DEFAULT_CONFIG when it exists),
 * then every --key=value flag. Sets *ret_check for --check-config and
 * *ret_help for --help. Returns 0 or -EINVAL with a message in err.
 */
int hd_config_load(struct hd_config *c, int argc, char **argv, bool *ret_check, bool *ret_help,
		   char *err, size_t errlen);
/* Parse INI text (for tests and fuzzing). */
int hd_config_parse_string(struct hd_config *c, const char *text, char *err, size_t errlen);
/* Cross-field checks (model path set, sizes powers of two, ...). */
int hd_config_validate(const struct hd_config *c, char *err, size_t errlen);
/* A model name: 1 to 63 of [A-Za-z0-9._-], not starting with '.'. */
bool hd_config_model_name_ok(const char *name);
/* Print the effective configuration as INI. */
void hd_config_dump(const struct hd_config *c, FILE *f);
/* Print --help: every flag with its section, default and meaning. */
void hd_config_usage(FILE *f);

#endif

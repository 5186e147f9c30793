/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: hearthd's INI configuration. Any text either parses into
 * values inside each key's bounds or fails with a message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct hd_config c;
	char err[512] = "";
	char *text = malloc(size + 1);

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = 0;
	hd_config_defaults(&c);
	if (hd_config_parse_string(&c, text, err, sizeof(err)) < 0) {
		if (!err[0])
			abort();
	} else if (c.page_tokens == 0 || c.max_step_tokens == 0 || c.max_clients == 0 ||
		   c.n_allow_uids > HD_MAX_IDS || c.n_allow_gids > HD_MAX_IDS ||
		   memchr(c.socket_path, 0, sizeof(c.socket_path)) == NULL ||
		   memchr(c.model_path, 0, sizeof(c.model_path)) == NULL) {
		abort();
	}
	free(text);
	return 0;
}

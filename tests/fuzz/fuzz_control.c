/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: a control-socket request as hearthd receives it. The
 * frame header is checked as hr_ctl_recv() does, then the protobuf-c payload
 * is unpacked; a request that unpacks must have a consistent body and strings
 * the daemon can use as C strings.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hr_control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Hearth__Control__Request *req;
	struct hr_ctl_hdr hdr;

	if (size < sizeof(hdr) || size > HR_CTL_MAX_MSG)
		return 0;
	memcpy(&hdr, data, sizeof(hdr));
	/* Only well-framed requests reach the decoder; let half the inputs through
	 * regardless so that the decoder sees arbitrary payloads too. */
	if ((hdr.magic != HR_CTL_MAGIC || hdr.version != HR_CTL_VERSION) && (data[0] & 1))
		return 0;
	req = hearth__control__request__unpack(NULL, size - sizeof(hdr), data + sizeof(hdr));
	if (!req)
		return 0;
	switch (req->body_case) {
	case HEARTH__CONTROL__REQUEST__BODY_HELLO:
		if (!req->hello || !req->hello->client_name || !req->hello->model)
			abort();
		(void)strlen(req->hello->client_name);
		break;
	case HEARTH__CONTROL__REQUEST__BODY_OPEN_SESSION:
		if (!req->open_session || !req->open_session->name)
			abort();
		(void)strlen(req->open_session->name);
		break;
	default:
		break;
	}
	hearth__control__request__free_unpacked(req, NULL);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * hearth_strerror(): what the errnos hearthd and libhearth return mean for a
 * hearth client (EBADF is a session handle here, ENOMEM a full KV cache),
 * falling back to the C library's text for the others.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "hearth/hearth.h"

const char *hearth_strerror(int err)
{
	if (err < 0)
		err = err == INT_MIN ? INT_MAX : -err;
	switch (err) {
	case 0:               return "success";
	case EBADF:           return "unknown session handle or not opened by this connection";
	case EBUSY:           return "session busy (a GENERATE is streaming into it, or another connection holds it)";
	case E2BIG:           return "context limit of the model exceeded";
	case ENOMEM:          return "out of memory (KV cache full)";
	case EINVAL:          return "invalid argument (bad token id, size or flags)";
	case ERANGE:          return "buffer outside the arena";
	case EOPNOTSUPP:      return "operation not supported by this daemon";
	case EPROTO:          return "protocol violation";
	case ENOBUFS:         return "output buffer too small";
	case ENODATA:         return "session is empty (nothing to score or continue)";
	case ENOENT:          return "no such session, model or socket (is hearthd running?)";
	case ECONNREFUSED:    return "connection refused (is hearthd running?)";
	case EACCES:          return "refused by hearthd's access policy (allow_uids/allow_gids)";
	case EEXIST:          return "session already exists";
	case EMFILE:          return "too many sessions open on this connection";
	case ENOSPC:          return "session table of the daemon is full";
	case EUSERS:          return "too many clients connected to hearthd";
	case ENAMETOOLONG:    return "name too long (session names: 255 bytes at most)";
	case EMSGSIZE:        return "request does not fit in the arena (connect with a larger arena_bytes)";
	case EINPROGRESS:     return "asynchronous requests in flight (reap them before a synchronous call)";
	case ESHUTDOWN:       return "hearthd has shut down, died, or dropped this connection";
	case ECONNRESET:      return "connection to hearthd lost";
	case ETIMEDOUT:       return "timed out";
	case EAGAIN:          return "no completion ready";
	case EINTR:           return "interrupted by a signal";
	case EBADMSG:         return "malformed message";
	case EPROTONOSUPPORT: return "hearthd speaks another protocol version";
	case EALREADY:        return "already attached";
	case ENOTCONN:        return "not attached to hearthd";
	case EIO:             return "compute backend error in hearthd";
	default:              return strerror(err);
	}
}

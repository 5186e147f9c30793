/* SPDX-License-Identifier: MIT */
/*
 * An adversarial client speaking the protocol by hand (its own Hello, its own
 * mapping of the region, raw descriptors written into SQ slots) while an
 * honest client in another process keeps scoring and checking every result
 * against the in-process engine. Every bad descriptor must get an error
 * completion (with the expected errno where it is deterministic), never a
 * crash or an effect on someone else's session; ring-index violations must
 * get the offender disconnected; afterwards the daemon serves new clients,
 * holds no descriptor of the gone ones, and exits 0 on SIGTERM. The control
 * plane is attacked by hand too: requests before Hello, bad Hellos, garbage
 * protobuf, bad magic and version, short frames, descriptors passed along
 * with requests (not kept).
 *
 * Usage: test_integ_adversary HEARTHD MODEL_DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "ref.h"

#define N_LABELS 6u
#define N_EVENTS 8u
#define EVENT_LEN 3u
#define PREFIX_LEN 10u
#define ANY_RES INT32_MIN /* expectation: any result, as long as one comes */

static const int32_t labels[N_LABELS] = { 3, 64, 128, 256, 400, 511 };
static int32_t prefix[PREFIX_LEN];
static int32_t events[N_EVENTS][EVENT_LEN];
static float want_event[N_EVENTS][N_LABELS];

/* Shared with the honest child. */
struct shared {
	_Atomic uint32_t stop;
	_Atomic uint32_t handle;
	_Atomic uint32_t iterations;
	_Atomic uint64_t max_op_ns;
	_Atomic uint32_t pause, paused; /* quiet while the adversary measures CPU */
};
static struct shared *sh;

static void make_script(struct ref *r)
{
	uint64_t st = 2024;
	struct engine_seq *s = ref_seq(r);

	for (uint32_t i = 0; i < PREFIX_LEN; i++)
		prefix[i] = (int32_t)(th_rand(&st) % 512);
	ref_append(r, s, prefix, PREFIX_LEN);
	for (uint32_t k = 0; k < N_EVENTS; k++) {
		for (uint32_t i = 0; i < EVENT_LEN; i++)
			events[k][i] = (int32_t)(th_rand(&st) % 512);
		ref_append(r, s, events[k], EVENT_LEN);
		ref_probs(r, s, labels, N_LABELS, want_event[k]);
		REQUIRE(engine_truncate(r->e, s, PREFIX_LEN) == 0, "reference truncate");
	}
	engine_seq_free(r->e, s);
}

/* ---- the honest client (a child process) ------------------------------------------ */

static void honest(const char *sock)
{
	struct rc c;
	int32_t s;

	if (rc_connect(&c, sock, &(struct rc_opts){ .name = "honest" }) < 0)
		_exit(2);
	s = rc_open(&c, NULL, 0, NULL);
	if (s <= 0 || rc_append(&c, (uint32_t)s, prefix, PREFIX_LEN, NULL) != (int32_t)PREFIX_LEN)
		_exit(3);
	atomic_store(&sh->handle, (uint32_t)s);
	for (uint32_t it = 0; !atomic_load(&sh->stop) && th_failures == 0; it++) {
		uint32_t k = it % N_EVENTS;
		float got[N_LABELS];
		uint64_t t0, dt;
		int32_t r;

		if (atomic_load(&sh->pause)) {
			atomic_store(&sh->paused, 1);
			while (atomic_load(&sh->pause) && !atomic_load(&sh->stop))
				th_sleep_ms(1);
			atomic_store(&sh->paused, 0);
		}
		t0 = th_now_ns();
		r = rc_score(&c, (uint32_t)s, events[k], EVENT_LEN, labels, N_LABELS, got);

		if (CHECK(r == (int32_t)N_LABELS, "honest: iteration %u score res %d", it, r))
			th_close(got, want_event[k], N_LABELS, "honest client's score");
		r = rc_truncate(&c, (uint32_t)s, PREFIX_LEN);
		CHECK(r == (int32_t)PREFIX_LEN, "honest: iteration %u truncate res %d", it, r);
		dt = th_now_ns() - t0;
		if (dt > atomic_load(&sh->max_op_ns))
			atomic_store(&sh->max_op_ns, dt);
		atomic_fetch_add(&sh->iterations, 1);
	}
	rc_close(&c);
	_exit(th_failures ? 1 : 0);
}

/* ---- helpers ------------------------------------------------------------------ */

struct adv {
	struct rc c;
	uint32_t own;        /* our own anonymous session */
	uint32_t own_len;    /* its length, as we expect it */
	uint32_t foreign;    /* the honest client's session */
	uint32_t stale;      /* a handle we closed */
	uint32_t arena;
	uint64_t bad;        /* descriptors shm_sqe_validate rejects, as sent */
	uint64_t nops;       /* well-formed NOP descriptors sent */
	uint32_t named[2];   /* named sessions we opened */
};

/* Send one descriptor, expect its single completion with res == want
 * (ANY_RES: any). Returns the completion's res. */
static int32_t expect(struct adv *a, struct shm_sqe q, int32_t want, const char *what)
{
	struct shm_cqe cqe;
	int32_t r;

	if (shm_sqe_validate(&q, a->arena) < 0)
		a->bad++;
	else if (q.op == SHM_OP_NOP)
		a->nops++;
	q.user_data = 0;
	r = rc_call(&a->c, &q, &cqe);
	if (want != ANY_RES)
		CHECK(r == want, "%s: res %d (%s), want %d (%s)", what, r, strerror(r < 0 ? -r : 0),
		      want, strerror(want < 0 ? -want : 0));
	return r;
}

static bool hung_up(int sock, unsigned timeout_ms)
{
	struct pollfd p = { .fd = sock, .events = POLLIN | POLLRDHUP };
	char b[16];

	if (poll(&p, 1, (int)timeout_ms) != 1)
		return false;
	return recv(sock, b, sizeof(b), MSG_DONTWAIT) <= 0;
}

/* ---- 0. the control plane, by hand ---------------------------------------------------- */

static int send_frame(int fd, uint32_t magic, uint16_t version, const void *payload, size_t len,
		      int pass_fd)
{
	struct hr_ctl_hdr hdr = { magic, version, 0 };
	struct iovec iov[2] = { { &hdr, sizeof(hdr) }, { (void *)payload, len } };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctrl;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };

	if (pass_fd >= 0) {
		struct cmsghdr *cm;

		memset(&ctrl, 0, sizeof(ctrl));
		mh.msg_control = ctrl.buf;
		mh.msg_controllen = sizeof(ctrl.buf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
	}
	return sendmsg(fd, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

/* Receive one response; its error field, or a harness error. */
static int32_t recv_error(int fd)
{
	static uint8_t buf[HR_CTL_MAX_MSG];
	Hearth__Control__Response *rep;
	int eof = 0, rfd = -1;
	int32_t e;
	int r = hr_ctl_recv(fd, buf, sizeof(buf), &rfd, &eof);

	if (rfd >= 0)
		close(rfd);
	if (r < 0 || eof)
		return TH_EHARNESS;
	rep = hearth__control__response__unpack(NULL, (size_t)r, buf + HR_CTL_HDR);
	if (!rep)
		return TH_EHARNESS;
	e = rep->error;
	hearth__control__response__free_unpacked(rep, NULL);
	return e;
}

static int32_t ctl_hello(int fd, uint32_t sq, uint32_t arena, const char *model)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__Hello h = HEARTH__CONTROL__HELLO__INIT;
	Hearth__Control__Response *rep = NULL;
	int32_t e;

	h.client_name = (char *)"ctl-adversary";
	h.model = (char *)model;
	h.sq_entries = sq;
	h.arena_bytes = arena;
	req.id = 21;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_HELLO;
	req.hello = &h;
	if (th_ctl_call(fd, &req, &rep, NULL) < 0)
		return TH_EHARNESS;
	e = rep->error;
	hearth__control__response__free_unpacked(rep, NULL);
	return e;
}

static int32_t ctl_open(int fd, const char *name, bool create)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__OpenSession o = HEARTH__CONTROL__OPEN_SESSION__INIT;
	Hearth__Control__Response *rep = NULL;
	int32_t e;

	o.name = (char *)name;
	o.create = create;
	req.id = 22;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_OPEN_SESSION;
	req.open_session = &o;
	if (th_ctl_call(fd, &req, &rep, NULL) < 0)
		return TH_EHARNESS;
	e = rep->error ? rep->error : (int32_t)rep->open_session->handle;
	hearth__control__response__free_unpacked(rep, NULL);
	return e;
}

static int32_t ctl_close(int fd, uint32_t handle, bool destroy)
{
	Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
	Hearth__Control__CloseSession cs = HEARTH__CONTROL__CLOSE_SESSION__INIT;
	Hearth__Control__Response *rep = NULL;
	int32_t e;

	cs.handle = handle;
	cs.destroy = destroy;
	req.id = 23;
	req.body_case = HEARTH__CONTROL__REQUEST__BODY_CLOSE_SESSION;
	req.close_session = &cs;
	if (th_ctl_call(fd, &req, &rep, NULL) < 0)
		return TH_EHARNESS;
	e = rep->error;
	hearth__control__response__free_unpacked(rep, NULL);
	return e;
}

static void expect_err(int32_t got, int32_t want, const char *what)
{
	CHECK(got == want, "%s: %d (%s), want %d (%s)", what, got, strerror(got < 0 ? -got : 0), want,
	      strerror(want < 0 ? -want : 0));
}

static void control_phase(struct th_daemon *d, uint32_t foreign)
{
	int fd = th_ctl_connect(d->sock), fds0, fds1, devnull;
	char longname[301];
	int32_t e;

	REQUIRE(fd >= 0, "connect");
	expect_err(ctl_open(fd, "ctl:x", true), -ENOTCONN, "OpenSession before Hello");
	expect_err(ctl_close(fd, 1, false), -ENOTCONN, "CloseSession before Hello");
	{
		/* A request with no body. */
		Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
		Hearth__Control__Response *rep = NULL;
		req.id = 9;
		if (CHECK(th_ctl_call(fd, &req, &rep, NULL) == 0, "empty request: no reply")) {
			CHECK(rep->error == -EOPNOTSUPP, "empty request: error %d", rep->error);
			hearth__control__response__free_unpacked(rep, NULL);
		}
	}
	/* Garbage protobuf in a well-formed frame: an error, and the connection lives. */
	{
		static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x99, 0x01, 0x02 };
		CHECK(send_frame(fd, HR_CTL_MAGIC, HR_CTL_VERSION, junk, sizeof(junk), -1) == 0, "send");
		expect_err(recv_error(fd), -EBADMSG, "garbage request");
	}
	expect_err(ctl_hello(fd, 3, 0, ""), -EINVAL, "Hello sq_entries 3");
	expect_err(ctl_hello(fd, 1u << 16, 0, ""), -EINVAL, "Hello sq_entries 65536");
	expect_err(ctl_hello(fd, 0, 1u << 30, ""), -EINVAL, "Hello arena 1 GiB (max 64 MiB)");
	expect_err(ctl_hello(fd, 0, 0, "no-such-model"), -ENOENT, "Hello unknown model");
	expect_err(ctl_hello(fd, 0, 0, ""), 0, "Hello after failed ones");
	expect_err(ctl_hello(fd, 0, 0, ""), -EALREADY, "Hello twice");
	memset(longname, 'n', 300);
	longname[300] = 0;
	expect_err(ctl_open(fd, longname, true), -EINVAL, "OpenSession 300-byte name");
	expect_err(ctl_open(fd, "a\tb", true), -EINVAL, "OpenSession name with a tab");
	expect_err(ctl_open(fd, "ctl:absent", false), -ENOENT, "OpenSession absent, no create");
	expect_err(ctl_close(fd, foreign, true), -EBADF, "CloseSession of another client's session");
	expect_err(ctl_close(fd, 0, false), -EBADF, "CloseSession handle 0");
	e = ctl_open(fd, NULL, false);
	CHECK(e > 0 && ctl_close(fd, (uint32_t)e, false) == 0, "anonymous open/close over control: %d", e);

	/* Descriptors passed along with requests are not kept. */
	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	fds0 = th_daemon_fd_count(d);
	for (int i = 0; i < 64; i++) {
		Hearth__Control__Request req = HEARTH__CONTROL__REQUEST__INIT;
		Hearth__Control__GetStats gs = HEARTH__CONTROL__GET_STATS__INIT;
		uint8_t buf[64];
		size_t n;

		req.id = 100 + (uint64_t)i;
		req.body_case = HEARTH__CONTROL__REQUEST__BODY_GET_STATS;
		req.get_stats = &gs;
		n = hearth__control__request__pack(&req, buf);
		CHECK(send_frame(fd, HR_CTL_MAGIC, HR_CTL_VERSION, buf, n, devnull) == 0, "send with fd");
		CHECK(recv_error(fd) == 0, "GetStats with an fd attached");
	}
	fds1 = th_daemon_fd_count(d);
	CHECK(fds1 == fds0, "hearthd holds %d descriptors after 64 requests that each passed one, %d before",
	      fds1, fds0);
	close(devnull);

	/* A bad magic, then another version: an error each, then a hang-up. */
	CHECK(send_frame(fd, 0x12345678u, HR_CTL_VERSION, "x", 1, -1) == 0, "send");
	expect_err(recv_error(fd), -EBADMSG, "bad magic");
	CHECK(hung_up(fd, 5000), "bad magic: the connection stays open");
	close(fd);
	fd = th_ctl_connect(d->sock);
	REQUIRE(fd >= 0, "connect");
	CHECK(send_frame(fd, HR_CTL_MAGIC, 2, "x", 1, -1) == 0, "send");
	expect_err(recv_error(fd), -EPROTONOSUPPORT, "version 2");
	CHECK(hung_up(fd, 5000), "version 2: the connection stays open");
	close(fd);
	/* A frame shorter than its header. */
	fd = th_ctl_connect(d->sock);
	REQUIRE(fd >= 0, "connect");
	CHECK(send(fd, "HRT", 3, MSG_NOSIGNAL) == 3, "send");
	expect_err(recv_error(fd), -EBADMSG, "3-byte frame");
	CHECK(hung_up(fd, 5000), "3-byte frame: the connection stays open");
	close(fd);
}

/* ---- 1. crafted descriptors, one expected errno each --------------------------------- */

static void crafted(struct adv *a)
{
	uint32_t A = a->arena, own = a->own;
	int32_t tok[4] = { 5, 6, 7, 8 }, bad_tok[2] = { 5, 512 }, neg_tok[1] = { -3 };
	int32_t big_label[2] = { 4, 512 };
	uint32_t pos = 0;
	int32_t r;

#define Q(...) ((struct shm_sqe){ __VA_ARGS__ })
	/* Unknown and reserved ops. */
	expect(a, Q(.op = SHM_OP__MAX), -EINVAL, "op 9");
	expect(a, Q(.op = 200), -EINVAL, "op 200");
	expect(a, Q(.op = 255, .session = own), -EINVAL, "op 255");
	expect(a, Q(.op = SHM_OP_FORK, .session = own), -EOPNOTSUPP, "FORK");
	/* Flags, reserved fields, args and ranges an op does not use. */
	expect(a, Q(.op = SHM_OP_NOP, .flags = 3), -EINVAL, "NOP flags latency|bulk");
	expect(a, Q(.op = SHM_OP_NOP, .flags = 0x80), -EINVAL, "NOP flags 0x80");
	expect(a, Q(.op = SHM_OP_NOP, .reserved0 = 1), -EINVAL, "NOP reserved0");
	expect(a, Q(.op = SHM_OP_CANCEL, .deadline_ns = 1), -EINVAL, "CANCEL with a deadline");
	expect(a, Q(.op = SHM_OP_CANCEL, .arg = { 12345 }), -ENOENT, "CANCEL of nothing in flight");
	expect(a, Q(.op = SHM_OP_NOP, .session = own), -EINVAL, "NOP with a session");
	expect(a, Q(.op = SHM_OP_NOP, .arg = { 1 }), -EINVAL, "NOP arg0");
	expect(a, Q(.op = SHM_OP_NOP, .arg = { 0, 0, 0, 1 }), -EINVAL, "NOP arg3");
	expect(a, Q(.op = SHM_OP_NOP, .in_off = 4), -EINVAL, "NOP (4, 0) range");
	expect(a, Q(.op = SHM_OP_NOP, .in_len = 4), -EINVAL, "NOP with an in range");
	expect(a, Q(.op = SHM_OP_NOP, .flags = SHM_SQE_F_LATENCY), 0, "NOP latency flag");
	/* Overflowing, out-of-range and misaligned ranges. */
	memcpy(a->c.arena, tok, sizeof(tok));
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_off = 0xfffffff0u, .in_len = 0x20),
	       -ERANGE, "APPEND off+len wraps u32");
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_off = 0, .in_len = 0xfffffffcu),
	       -ERANGE, "APPEND len 4 GiB - 4");
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_off = A - 4, .in_len = 8), -ERANGE,
	       "APPEND straddling the arena end");
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_off = A, .in_len = 4), -ERANGE,
	       "APPEND at the arena end");
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_off = 2, .in_len = 4), -EINVAL,
	       "APPEND misaligned offset");
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_off = 0, .in_len = 6), -EINVAL,
	       "APPEND length not a multiple of 4");
	expect(a, Q(.op = SHM_OP_APPEND, .session = own), -EINVAL, "APPEND without tokens");
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_len = 4, .aux_off = 0, .aux_len = 4),
	       -EINVAL, "APPEND with an aux range");
	expect(a, Q(.op = SHM_OP_SCORE, .session = own, .aux_off = 0x10000, .aux_len = 8,
		    .out_off = 0x20000, .out_cap = 4), -EINVAL, "SCORE out_cap < labels");
	expect(a, Q(.op = SHM_OP_SCORE, .session = own, .aux_off = 0x10002, .aux_len = 4,
		    .out_off = 0x20000, .out_cap = 4), -EINVAL, "SCORE misaligned labels");
	expect(a, Q(.op = SHM_OP_SCORE, .session = own, .aux_off = 0x10000, .aux_len = 4,
		    .out_off = 0xfffffffcu, .out_cap = 8), -ERANGE, "SCORE out wraps u32");
	expect(a, Q(.op = SHM_OP_SCORE, .session = own, .aux_off = A - 4, .aux_len = 8,
		    .out_off = 0x20000, .out_cap = 8), -ERANGE, "SCORE labels past the arena");
	expect(a, Q(.op = SHM_OP_SCORE, .session = own, .aux_off = 0x10000, .aux_len = 4,
		    .out_off = 0x20000, .out_cap = 4, .arg = { 2 }), -EINVAL, "SCORE unknown flag");
	expect(a, Q(.op = SHM_OP_SCORE, .session = own, .out_off = 0x20000, .out_cap = 4), -EINVAL,
	       "SCORE without labels");
	memset(a->c.arena + 0x10000, 0, 1025 * 4);
	expect(a, Q(.op = SHM_OP_SCORE, .session = own, .aux_off = 0x10000, .aux_len = 1025 * 4,
		    .out_off = 0x20000, .out_cap = 1025 * 4), -EINVAL, "SCORE 1025 labels");
	expect(a, Q(.op = SHM_OP_GENERATE, .session = own, .out_off = 0x20000, .out_cap = 64),
	       -EINVAL, "GENERATE 0 tokens");
	expect(a, Q(.op = SHM_OP_GENERATE, .session = own, .out_off = 0x20000, .out_cap = 4,
		    .arg = { 0x40000001u }), -EINVAL, "GENERATE 4 * max_tokens wraps u32");
	expect(a, Q(.op = SHM_OP_GENERATE, .session = own, .out_off = 0x20000, .out_cap = 4,
		    .arg = { 2 }), -EINVAL, "GENERATE out_cap < 4 * max_tokens");
	expect(a, Q(.op = SHM_OP_GENERATE, .session = own, .out_off = 0x20000, .out_cap = 64,
		    .arg = { 2, 700 }), -EOPNOTSUPP, "GENERATE with a temperature");
	expect(a, Q(.op = SHM_OP_TRUNCATE, .session = own, .arg = { 0, 1 }), -EINVAL,
	       "TRUNCATE arg1");
	expect(a, Q(.op = SHM_OP_SESSION_OPEN, .session = own), -EINVAL, "OPEN with a session");
	expect(a, Q(.op = SHM_OP_SESSION_OPEN, .arg = { SHM_OPEN_F_CREATE }), -EINVAL,
	       "OPEN anonymous with CREATE");
	expect(a, Q(.op = SHM_OP_SESSION_OPEN, .aux_off = 0x10000, .aux_len = 256,
		    .arg = { SHM_OPEN_F_CREATE }), -EINVAL, "OPEN name of 256 bytes");
	expect(a, Q(.op = SHM_OP_SESSION_OPEN, .aux_off = 0x10000, .aux_len = 4, .arg = { 4 }),
	       -EINVAL, "OPEN unknown flag");
	expect(a, Q(.op = SHM_OP_SESSION_CLOSE, .session = own, .arg = { 2 }), -EINVAL,
	       "CLOSE unknown flag");
	/* Session names: control characters, absent without CREATE, EXCL. */
	memcpy(a->c.arena + 0x10000, "adv\nx", 5);
	expect(a, Q(.op = SHM_OP_SESSION_OPEN, .aux_off = 0x10000, .aux_len = 5,
		    .arg = { SHM_OPEN_F_CREATE }), -EINVAL, "OPEN name with a newline");
	memcpy(a->c.arena + 0x10000, "adv:x", 5);
	expect(a, Q(.op = SHM_OP_SESSION_OPEN, .aux_off = 0x10000, .aux_len = 5), -ENOENT,
	       "OPEN absent name without CREATE");
	memcpy(a->c.arena + 0x10101, "adv:y", 5);
	r = expect(a, Q(.op = SHM_OP_SESSION_OPEN, .aux_off = 0x10101, .aux_len = 5,
			.arg = { SHM_OPEN_F_CREATE | SHM_OPEN_F_EXCL }), ANY_RES,
		   "OPEN named at an odd offset");
	CHECK(r > 0, "OPEN 'adv:y' at an odd arena offset (names have any alignment): res %d", r);
	a->named[0] = r > 0 ? (uint32_t)r : 0;
	r = expect(a, Q(.op = SHM_OP_SESSION_OPEN, .aux_off = 0x10000, .aux_len = 5,
			.arg = { SHM_OPEN_F_CREATE | SHM_OPEN_F_EXCL }), ANY_RES, "OPEN adv:x EXCL");
	CHECK(r > 0, "OPEN adv:x with CREATE|EXCL: res %d", r);
	a->named[1] = r > 0 ? (uint32_t)r : 0;
	expect(a, Q(.op = SHM_OP_SESSION_OPEN, .aux_off = 0x10000, .aux_len = 5,
		    .arg = { SHM_OPEN_F_CREATE | SHM_OPEN_F_EXCL }), -EEXIST, "OPEN adv:x EXCL again");

	/* Handles we do not own: the honest client's, made-up ones, a stale one. */
	expect(a, Q(.op = SHM_OP_APPEND, .session = a->foreign, .in_off = 0, .in_len = 8), -EBADF,
	       "APPEND to the honest client's session");
	memcpy(a->c.arena + 0x10000, labels, sizeof(labels));
	expect(a, Q(.op = SHM_OP_SCORE, .session = a->foreign, .aux_off = 0x10000,
		    .aux_len = N_LABELS * 4, .out_off = 0x20000, .out_cap = N_LABELS * 4), -EBADF,
	       "SCORE the honest client's session");
	expect(a, Q(.op = SHM_OP_TRUNCATE, .session = a->foreign, .arg = { 0 }), -EBADF,
	       "TRUNCATE the honest client's session");
	expect(a, Q(.op = SHM_OP_GENERATE, .session = a->foreign, .out_off = 0x20000,
		    .out_cap = 64, .arg = { 4 }), -EBADF, "GENERATE into the honest client's session");
	expect(a, Q(.op = SHM_OP_SESSION_CLOSE, .session = a->foreign, .arg = { SHM_CLOSE_F_DROP }),
	       -EBADF, "CLOSE the honest client's session");
	expect(a, Q(.op = SHM_OP_SESSION_CLOSE, .session = 0), -EBADF, "CLOSE handle 0");
	expect(a, Q(.op = SHM_OP_APPEND, .session = 0, .in_len = 4), -EBADF, "APPEND handle 0");
	expect(a, Q(.op = SHM_OP_APPEND, .session = 0xffffffffu, .in_len = 4), -EBADF,
	       "APPEND handle ~0");
	for (uint32_t slot = 0; slot < 8; slot++)
		for (uint32_t gen = 0; gen < 4; gen++) {
			uint32_t h = (gen << 20) | slot;
			if (h != own && h != a->named[0] && h != a->named[1])
				expect(a, Q(.op = SHM_OP_TRUNCATE, .session = h, .arg = { 0 }), -EBADF,
				       "TRUNCATE a guessed handle we do not hold");
		}
	expect(a, Q(.op = SHM_OP_APPEND, .session = a->stale, .in_len = 4), -EBADF,
	       "APPEND to a closed (stale) handle");

	/* Bad token and label ids: an error, and the session unchanged. */
	memcpy(a->c.arena, bad_tok, sizeof(bad_tok));
	r = expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_len = 8), -EINVAL,
		   "APPEND token id 512 (vocab 512)");
	memcpy(a->c.arena, neg_tok, sizeof(neg_tok));
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_len = 4), -EINVAL,
	       "APPEND token id -3");
	memset(a->c.arena, 0, 600 * 4);
	expect(a, Q(.op = SHM_OP_APPEND, .session = own, .in_len = 600 * 4), -E2BIG,
	       "APPEND past the context (600 tokens)");
	memcpy(a->c.arena, tok, sizeof(tok));
	memcpy(a->c.arena + 0x10000, big_label, sizeof(big_label));
	{
		struct shm_sqe q = Q(.op = SHM_OP_SCORE, .session = own, .in_len = 8,
				     .aux_off = 0x10000, .aux_len = 8, .out_off = 0x20000,
				     .out_cap = 8);
		struct shm_cqe cqe;

		q.user_data = ++a->c.next_ud;
		r = rc_call(&a->c, &q, &cqe);
		CHECK(r == -EINVAL, "SCORE label id 512: res %d", r);
		CHECK(cqe.pos == a->own_len,
		      "SCORE with 2 tokens and a bad label failed (%d) but the session grew from %u "
		      "to %u tokens: the tokens were appended before the labels were checked",
		      r, a->own_len, cqe.pos);
		/* Resynchronise with what the daemon did. */
		if (r == -EINVAL && cqe.pos > a->own_len)
			CHECK(rc_truncate(&a->c, own, a->own_len) == (int32_t)a->own_len, "truncate back");
	}
	expect(a, Q(.op = SHM_OP_TRUNCATE, .session = own, .arg = { a->own_len + 1 }), -EINVAL,
	       "TRUNCATE past the length");
	r = rc_append(&a->c, own, tok, 1, &pos);
	CHECK(r == 1 && pos == a->own_len + 1,
	      "own session: append after the errors: res %d, length %u, want %u", r, pos,
	      a->own_len + 1);
	a->own_len = pos;
	{
		/* GENERATE on an empty session. */
		int32_t e = rc_open(&a->c, NULL, 0, NULL);
		expect(a, Q(.op = SHM_OP_GENERATE, .session = (uint32_t)e, .out_off = 0x20000,
			    .out_cap = 16, .arg = { 4 }), -ENODATA, "GENERATE on an empty session");
		CHECK(rc_close_session(&a->c, (uint32_t)e, 0) == 0, "close");
	}
#undef Q
}

/* ---- 2. random descriptors ---------------------------------------------------------- */

struct pending {
	uint64_t ud;
	int32_t want;
	uint8_t op;
	bool done;
};

static void rand_range(uint64_t *st, uint32_t A, uint32_t *off, uint32_t *len)
{
	uint32_t k = (uint32_t)(th_rand(st) % 100);

	if (k < 30) {
		*off = 0;
		*len = 0;
	} else if (k < 75) {
		*off = (uint32_t)(th_rand(st) % ((A - 4096) / 4)) * 4;
		*len = 4 * (1 + (uint32_t)(th_rand(st) % 16));
	} else if (k < 82) {
		*off = 0xfffffff0u + 4 * (uint32_t)(th_rand(st) % 4);
		*len = 0x20;
	} else if (k < 90) {
		*off = A + 4 * (uint32_t)(th_rand(st) % 64);
		*len = 4;
	} else if (k < 95) {
		*off = 1 + (uint32_t)(th_rand(st) % (A - 64));
		*len = 4;
	} else {
		*off = (uint32_t)th_rand(st);
		*len = (uint32_t)th_rand(st);
	}
}

/* A descriptor that is often well-formed enough to get past validation. */
static struct shm_sqe rand_sqe(struct adv *a, uint64_t *st)
{
	struct shm_sqe q;
	uint32_t k;

	memset(&q, 0, sizeof(q));
	k = (uint32_t)(th_rand(st) % 100);
	q.op = k < 85 ? (uint8_t)(th_rand(st) % SHM_OP__MAX) : (uint8_t)th_rand(st);
	if (th_rand(st) % 10 == 0)
		q.flags = (uint8_t)th_rand(st);
	if (th_rand(st) % 20 == 0)
		q.reserved0 = (uint16_t)th_rand(st);
	if (th_rand(st) % 20 == 0)
		q.deadline_ns = th_rand(st);
	k = (uint32_t)(th_rand(st) % 100);
	q.session = k < 45 ? a->own : k < 65 ? a->foreign : k < 75 ? a->stale : k < 85 ? 0
									     : (uint32_t)th_rand(st);
	rand_range(st, a->arena, &q.in_off, &q.in_len);
	rand_range(st, a->arena, &q.aux_off, &q.aux_len);
	rand_range(st, a->arena, &q.out_off, &q.out_cap);
	if (th_rand(st) % 4)
		q.out_cap = q.out_cap < 64 && q.out_off && q.out_off + 64 <= a->arena ? 64 : q.out_cap;
	q.arg[0] = th_rand(st) % 5 ? (uint32_t)(th_rand(st) % 6) : (uint32_t)th_rand(st);
	for (int i = 1; i < 4; i++)
		if (th_rand(st) % 6 == 0)
			q.arg[i] = (uint32_t)(th_rand(st) % 4);
	/* Keep our own session: it is the one the other checks use. */
	if (q.op == SHM_OP_SESSION_CLOSE && q.session == a->own)
		q.session = a->stale;
	/* Named sessions outlive us: only anonymous opens here. */
	if (q.op == SHM_OP_SESSION_OPEN && q.aux_len && th_rand(st) % 2)
		q.aux_len = q.aux_off = q.arg[0] = 0;
	return q;
}

static bool uses_session(uint8_t op)
{
	return op == SHM_OP_APPEND || op == SHM_OP_SCORE || op == SHM_OP_GENERATE ||
	       op == SHM_OP_TRUNCATE || op == SHM_OP_SESSION_CLOSE;
}

static int32_t predict(struct adv *a, const struct shm_sqe *q)
{
	int32_t v = shm_sqe_validate(q, a->arena);

	if (v < 0)
		return v;
	if (uses_session(q->op) && q->session != a->own)
		return -EBADF; /* not ours (or closed, or made up) */
	return ANY_RES;
}

/* Submit a batch (all at once), then collect one final completion per
 * descriptor (GENERATE may stream first), checking predictions. */
static void run_batch(struct adv *a, struct shm_sqe *qs, uint32_t n, const char *what)
{
	struct pending p[64];
	uint32_t left = n;
	uint64_t deadline;

	for (uint32_t i = 0; i < n; i++) {
		p[i] = (struct pending){ .ud = qs[i].user_data = (a->c.next_ud += 1) | (1ull << 62),
					 .want = predict(a, &qs[i]), .op = qs[i].op };
		if (p[i].want != ANY_RES && p[i].want != -EBADF)
			a->bad++;
		else if (qs[i].op == SHM_OP_NOP)
			a->nops++;
		REQUIRE(rc_try_put(&a->c, &qs[i]) == 0, "SQ full in a batch of %u", n);
	}
	shm_wake(&a->c.hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
	deadline = th_now_ns() + 10000000000ull;
	while (left) {
		struct shm_cqe cqe;
		uint32_t i;
		int r = rc_wait(&a->c, &cqe, (int64_t)(deadline - th_now_ns()));

		if (!CHECK(r == 0, "%s: %u of %u completions missing: %s", what, left, n,
			   strerror(-r))) {
			for (i = 0; i < n; i++)
				if (!p[i].done)
					th_log("missing: op %u flags %x session %x in (%x,%x) aux (%x,%x) "
					       "out (%x,%x) args %u %u %u %u",
					       qs[i].op, qs[i].flags, qs[i].session, qs[i].in_off, qs[i].in_len,
					       qs[i].aux_off, qs[i].aux_len, qs[i].out_off, qs[i].out_cap,
					       qs[i].arg[0], qs[i].arg[1], qs[i].arg[2], qs[i].arg[3]);
			th_fatal("completions lost");
		}
		for (i = 0; i < n && p[i].ud != cqe.user_data; i++)
			;
		if (!CHECK(i < n && !p[i].done, "%s: completion for unknown or finished user_data %llx",
			   what, (unsigned long long)cqe.user_data))
			continue;
		if (cqe.flags & SHM_CQE_F_MORE) {
			CHECK(p[i].op == SHM_OP_GENERATE, "%s: streamed completion for op %u", what,
			      p[i].op);
			continue;
		}
		p[i].done = true;
		left--;
		if (p[i].want != ANY_RES)
			CHECK(cqe.res == p[i].want, "%s: op %u session %x: res %d, want %d", what,
			      qs[i].op, qs[i].session, cqe.res, p[i].want);
	}
}

static void random_phase(struct adv *a)
{
	uint64_t st = 0xadc0ffee;
	struct shm_sqe qs[32];

	/* Arena full of token id 7: random in-ranges are valid token lists. */
	for (uint32_t i = 0; i < a->arena / 4; i++)
		((int32_t *)a->c.arena)[i] = 7;
	/* (a) Pure random bytes. */
	for (int b = 0; b < 40; b++) {
		for (int i = 0; i < 32; i++)
			for (int w = 0; w < 8; w++)
				((uint64_t *)&qs[i])[w] = th_rand(&st);
		run_batch(a, qs, 32, "random bytes");
	}
	/* (b) Random but plausible descriptors, reaching the ops themselves. */
	for (int b = 0; b < 80; b++) {
		for (int i = 0; i < 16; i++)
			qs[i] = rand_sqe(a, &st);
		run_batch(a, qs, 16, "random descriptors");
	}
	/* Back to a known state of our own session. */
	{
		int32_t r = rc_truncate(&a->c, a->own, 0);
		int32_t tok[4] = { 11, 12, 13, 14 };
		uint32_t pos;

		if (r == -EBUSY) { /* a random GENERATE still streaming into it */
			th_sleep_ms(200);
			r = rc_truncate(&a->c, a->own, 0);
		}
		CHECK(r == 0, "truncate own session to 0 after the random phase: %d", r);
		r = rc_append(&a->c, a->own, tok, 4, &pos);
		CHECK(r == 4 && pos == 4, "own session after the random phase: res %d len %u", r, pos);
		a->own_len = 4;
	}
}

/* ---- 3. rewriting descriptors and buffers after submitting them ----------------------- */

struct flipper {
	volatile uint32_t *word;
	uint32_t v0, v1;
	atomic_bool stop;
};

static void *flip_main(void *arg)
{
	struct flipper *f = arg;

	while (!atomic_load_explicit(&f->stop, memory_order_relaxed)) {
		*f->word = f->v0;
		*f->word = f->v1;
	}
	return NULL;
}

static void rewrite_phase(struct adv *a)
{
	const uint32_t own = a->own;
	uint32_t bad_ok = 0, good = 0;

	memcpy(a->c.arena + 0x10000, labels, sizeof(labels));
	/* (a) The descriptor itself, rewritten in its slot right after publishing. */
	for (int it = 0; it < 300; it++) {
		struct shm_sqe q = { .op = SHM_OP_SCORE, .session = own, .user_data = 5000 + it,
				     .aux_off = 0x10000, .aux_len = N_LABELS * 4,
				     .out_off = 0x20000, .out_cap = N_LABELS * 4 };
		volatile struct shm_sqe *slot;
		struct shm_cqe cqe;
		uint32_t idx = 0;
		int r;

		REQUIRE(shm_sq_reserve(&a->c.sq, 1, &idx) == 1, "reserve");
		slot = (volatile struct shm_sqe *)shm_sq_slot(&a->c.sq, idx);
		*(struct shm_sqe *)slot = q;
		shm_sq_publish(&a->c.sq);
		shm_wake(&a->c.hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
		for (uint32_t k = 0; shm_load_acquire(a->c.cq.r.tail_p) == a->c.cq.r.head; k++) {
			switch (k % 4) {
			case 0: slot->aux_off = 0xfffffff0u; break;
			case 1: slot->session = a->foreign; break;
			case 2: slot->op = 255; break;
			case 3: slot->aux_off = 0x10000; slot->session = own; slot->op = SHM_OP_SCORE; break;
			}
			if (k > 100000000u)
				break;
		}
		r = rc_wait(&a->c, &cqe, RC_TIMEOUT_NS);
		REQUIRE(r == 0, "rewrite: no completion: %s", strerror(-r));
		CHECK(cqe.res == (int32_t)N_LABELS || cqe.res == -EINVAL || cqe.res == -ERANGE ||
			      cqe.res == -EBADF,
		      "rewritten descriptor: res %d", cqe.res);
		if (cqe.res == (int32_t)N_LABELS)
			good++;
		else
			bad_ok++;
	}
	th_log("rewrite (descriptor): %u served as written, %u rejected as rewritten", good, bad_ok);

	/* (b) Label ids flipping between valid and out-of-vocab during SCOREs. */
	{
		struct flipper f = { .word = (volatile uint32_t *)(a->c.arena + 0x10000 + 8),
				     .v0 = (uint32_t)labels[2], .v1 = 0x7ffffff0u };
		pthread_t t;
		uint32_t ok = 0, rej = 0;
		uint64_t end = th_now_ns() + 500000000ull;

		REQUIRE(pthread_create(&t, NULL, flip_main, &f) == 0, "thread");
		while (th_now_ns() < end) {
			struct shm_sqe q = { .op = SHM_OP_SCORE, .session = own, .aux_off = 0x10000,
					     .aux_len = N_LABELS * 4, .out_off = 0x20000,
					     .out_cap = N_LABELS * 4 };
			int32_t r = rc_call(&a->c, &q, NULL);

			CHECK(r == (int32_t)N_LABELS || r == -EINVAL, "flipping labels: res %d", r);
			r == (int32_t)N_LABELS ? ok++ : rej++;
		}
		atomic_store(&f.stop, true);
		pthread_join(t, NULL);
		th_log("rewrite (labels): %u scored, %u rejected", ok, rej);
	}

	/* (c) Token ids flipping during long APPENDs (the engine reads them in place). */
	{
		struct flipper f = { .word = (volatile uint32_t *)(a->c.arena + 4 * 250),
				     .v0 = 9, .v1 = 0x7ffffff0u };
		pthread_t t;
		uint32_t ok = 0, rej = 0;
		uint64_t end = th_now_ns() + 500000000ull;

		for (uint32_t i = 0; i < 500; i++)
			((int32_t *)a->c.arena)[i] = 9;
		REQUIRE(pthread_create(&t, NULL, flip_main, &f) == 0, "thread");
		while (th_now_ns() < end) {
			struct shm_sqe q = { .op = SHM_OP_APPEND, .session = own, .in_len = 500 * 4 };
			struct shm_cqe cqe;
			int32_t r = rc_call(&a->c, &q, &cqe);

			CHECK(r == 500 || r == -EINVAL, "flipping tokens: res %d", r);
			CHECK(cqe.pos == a->own_len + (r == 500 ? 500 : 0),
			      "flipping tokens: res %d but length %u (was %u)", r, cqe.pos, a->own_len);
			r == 500 ? ok++ : rej++;
			if (r == 500)
				CHECK(rc_truncate(&a->c, own, a->own_len) == (int32_t)a->own_len, "truncate");
		}
		atomic_store(&f.stop, true);
		pthread_join(t, NULL);
		th_log("rewrite (tokens): %u appended, %u rejected", ok, rej);
	}
}

/* ---- 4. flooding ----------------------------------------------------------------------- */

static void flood_phase(struct adv *a, struct th_daemon *d)
{
	uint32_t put = 0, got = 0;
	uint64_t first = a->c.next_ud + 1, c0, c1;
	struct shm_cqe cqe;

	/* Fill SQ and CQ without reading: the daemon stops at a full CQ. */
	for (uint64_t end = th_now_ns() + 1000000000ull; th_now_ns() < end;) {
		struct shm_sqe q = { .op = (put % 3 == 2) ? 250 : SHM_OP_NOP,
				     .user_data = ++a->c.next_ud };
		if (rc_try_put(&a->c, &q) < 0) {
			a->c.next_ud--;
			shm_wake(&a->c.hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
			th_sleep_ms(1);
			if (shm_load_acquire(a->c.sq.r.head_p) == a->c.sq.r.tail - a->c.lay.sq_entries &&
			    shm_load_acquire(a->c.cq.r.tail_p) - a->c.cq.r.head == a->c.lay.cq_entries)
				break; /* both rings full: the daemon waits for us */
			continue;
		}
		q.op == SHM_OP_NOP ? a->nops++ : a->bad++;
		put++;
		shm_wake(&a->c.hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
	}
	CHECK(put == a->c.lay.sq_entries + a->c.lay.cq_entries,
	      "flood: %u descriptors accepted, want SQ + CQ = %u", put,
	      a->c.lay.sq_entries + a->c.lay.cq_entries);
	/* Blocked on our CQ, the daemon must sleep, not spin (the honest
	 * client pauses meanwhile: its work would count). */
	atomic_store(&sh->pause, 1);
	for (uint64_t end = th_now_ns() + 5000000000ull; !atomic_load(&sh->paused) && th_now_ns() < end;)
		th_sleep_ms(1);
	th_sleep_ms(20);
	c0 = th_daemon_cpu_ns(d);
	th_sleep_ms(500);
	c1 = th_daemon_cpu_ns(d);
	atomic_store(&sh->pause, 0);
	CHECK(c1 - c0 < 250000000ull, "flood: hearthd used %.0f ms CPU in 500 ms while blocked on a full CQ",
	      (c1 - c0) / 1e6);
	/* Every one answered, in order, none lost. */
	while (got < put && rc_wait(&a->c, &cqe, RC_TIMEOUT_NS) == 0) {
		uint64_t ud = first + got;
		CHECK(cqe.user_data == ud, "flood: completion %u is for %llu, want %llu", got,
		      (unsigned long long)cqe.user_data, (unsigned long long)ud);
		CHECK(cqe.res == ((ud - first) % 3 == 2 ? -EINVAL : 0), "flood: res %d", cqe.res);
		got++;
	}
	CHECK(got == put, "flood: %u of %u completions", got, put);
}

/* ---- 5. ring-index violations: disconnect ------------------------------------------------ */

static void violate(const char *sock, const char *how)
{
	struct adv v = { 0 };
	uint32_t *tail, *head;

	REQUIRE(rc_connect(&v.c, sock, &(struct rc_opts){ .name = how }) == 0, "connect %s", how);
	v.arena = v.c.lay.arena_size;
	tail = &shm_region_sq(v.c.mem, &v.c.lay)->tail.v;
	head = &shm_region_sq(v.c.mem, &v.c.lay)->head.v;
	expect(&v, (struct shm_sqe){ .op = SHM_OP_NOP }, 0, how);
	if (strcmp(how, "sq-tail-off-by-one") == 0) {
		shm_store_release(tail, shm_load_acquire(head) + v.c.lay.sq_entries + 1);
	} else if (strcmp(how, "sq-tail-backwards") == 0) {
		shm_store_release(tail, shm_load_acquire(head) - 1);
	} else if (strcmp(how, "cq-head-jump") == 0) {
		uint32_t *cqh = &shm_region_cq(v.c.mem, &v.c.lay)->head.v;
		uint64_t end = th_now_ns() + 3000000000ull;

		shm_store_release(cqh, shm_load_acquire(cqh) + 5000);
		/* The daemon re-reads our CQ head when its cached room runs out:
		 * keep submitting (without reading) until it gives up on us. */
		while (th_now_ns() < end) {
			struct shm_sqe q = { .op = SHM_OP_NOP, .user_data = 1 };

			while (rc_try_put(&v.c, &q) == 0)
				;
			shm_wake(&v.c.hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
			if (hung_up(v.c.sock, 1))
				break;
		}
	}
	shm_wake(&v.c.hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
	CHECK(hung_up(v.c.sock, 5000), "%s: the control socket did not hang up within 5 s", how);
	rc_close(&v.c);
}

/* Scribbling over the region's header changes nothing: the daemon keeps its
 * private copy of the layout. */
static void scribble(const char *sock)
{
	struct rc c;
	struct shm_region_info *info;

	REQUIRE(rc_connect(&c, sock, &(struct rc_opts){ .name = "scribbler" }) == 0, "connect");
	info = &c.hdr->info;
	info->magic = 0;
	info->sq_entries = 1u << 30;
	info->cq_entries = 3;
	info->arena_size = 0xffffffffu;
	info->sq_off = info->cq_off = info->arena_off = 0;
	info->total_size = ~0ull;
	c.hdr->daemon_wq.shutdown = 1;
	c.hdr->daemon_wq.need_wakeup = ~0u;
	for (int i = 0; i < 50; i++) {
		struct shm_sqe q = { .op = SHM_OP_NOP };
		CHECK(rc_call(&c, &q, NULL) == 0, "scribbled header: NOP %d failed", i);
	}
	{
		struct shm_sqe q = { .op = SHM_OP_APPEND, .session = 1, .in_off = 0x7ffff000u,
				     .in_len = 4 };
		CHECK(rc_call(&c, &q, NULL) == -ERANGE,
		      "scribbled arena_size: the daemon must still use its own");
	}
	/* A sealed region cannot be resized under the daemon. */
	CHECK(ftruncate(c.memfd, 4096) < 0 && errno == EPERM, "ftruncate of the sealed region");
	rc_close(&c);
}

int main(int argc, char **argv)
{
	struct th_daemon d;
	struct th_stats s0, s1, s2, s3;
	struct adv a = { 0 };
	struct ref ref;
	pid_t hon;
	int st, r, fds_before, fds;
	uint64_t deadline;

	th_init("adversary", 110);
	REQUIRE(argc == 3, "usage: %s HEARTHD MODEL_DIR", argv[0]);
	ref_init(&ref, argv[2]);
	make_script(&ref);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	REQUIRE(sh != MAP_FAILED, "mmap");
	memset(sh, 0, sizeof(*sh));

	th_daemon_start(&d, argv[1], argv[2], NULL);
	REQUIRE(th_stats(d.sock, &s0) == 0, "stats");

	hon = fork();
	REQUIRE(hon >= 0, "fork");
	if (hon == 0) {
		th_child_init(100);
		honest(d.sock);
	}
	deadline = th_now_ns() + 20000000000ull;
	while (!atomic_load(&sh->iterations) && th_now_ns() < deadline && waitpid(hon, &st, WNOHANG) == 0)
		th_sleep_ms(1);
	REQUIRE(atomic_load(&sh->iterations) > 0, "the honest client did not start");

	fds_before = th_daemon_fd_count(&d);
	control_phase(&d, atomic_load(&sh->handle));
	th_log("control plane done");
	REQUIRE(rc_connect(&a.c, d.sock, &(struct rc_opts){ .name = "adversary" }) == 0, "connect");
	a.arena = a.c.lay.arena_size;
	a.foreign = atomic_load(&sh->handle);
	r = rc_open(&a.c, NULL, 0, NULL);
	REQUIRE(r > 0, "open own");
	a.own = (uint32_t)r;
	r = rc_open(&a.c, NULL, 0, NULL);
	REQUIRE(r > 0 && rc_close_session(&a.c, (uint32_t)r, 0) == 0, "stale handle");
	a.stale = (uint32_t)r;
	{
		int32_t tok[4] = { 1, 2, 3, 4 };
		REQUIRE(rc_append(&a.c, a.own, tok, 4, &a.own_len) == 4, "own prefix");
	}
	REQUIRE(th_stats(d.sock, &s1) == 0, "stats");
	a.bad = 0;
	a.nops = 0;

	crafted(&a);
	th_log("crafted descriptors done (honest iterations so far: %u)", atomic_load(&sh->iterations));
	random_phase(&a);
	th_log("random descriptors done (honest iterations so far: %u)", atomic_load(&sh->iterations));
	flood_phase(&a, &d);
	th_log("flood done (honest iterations so far: %u)", atomic_load(&sh->iterations));

	/* Deterministic so far: the daemon counted what we sent. */
	REQUIRE(th_stats(d.sock, &s2) == 0, "stats");
	CHECK(s2.bad_descriptors - s1.bad_descriptors == a.bad,
	      "stats: bad_descriptors moved by %llu, we sent %llu malformed descriptors",
	      (unsigned long long)(s2.bad_descriptors - s1.bad_descriptors), (unsigned long long)a.bad);
	CHECK(s2.op_count[SHM_OP_NOP] - s1.op_count[SHM_OP_NOP] == a.nops,
	      "stats: op 'nop' count moved by %llu, we sent %llu well-formed NOPs (malformed "
	      "descriptors, e.g. unknown op codes, counted as nop?)",
	      (unsigned long long)(s2.op_count[SHM_OP_NOP] - s1.op_count[SHM_OP_NOP]),
	      (unsigned long long)a.nops);

	rewrite_phase(&a);
	th_log("rewrite done (honest iterations so far: %u)", atomic_load(&sh->iterations));
	scribble(d.sock);

	REQUIRE(th_stats(d.sock, &s2) == 0, "stats");
	violate(d.sock, "cq-head-jump");
	violate(d.sock, "sq-tail-off-by-one");
	violate(d.sock, "sq-tail-backwards");
	/* Finally the main adversary jumps its own SQ tail. */
	shm_store_release(&shm_region_sq(a.c.mem, &a.c.lay)->tail.v,
			  a.c.sq.r.tail + a.c.lay.sq_entries + 1000);
	shm_wake(&a.c.hdr->daemon_wq, SHM_WAIT_F_SQ_DATA);
	CHECK(hung_up(a.c.sock, 5000), "SQ tail jump: the control socket did not hang up within 5 s");
	deadline = th_now_ns() + 5000000000ull;
	while (!shm_load_acquire(&a.c.hdr->client_wq.shutdown) && th_now_ns() < deadline)
		th_sleep_ms(1);
	CHECK(shm_load_acquire(&a.c.hdr->client_wq.shutdown),
	      "SQ tail jump: the client's wait queue was not shut down");
	rc_close(&a.c);
	REQUIRE(th_stats(d.sock, &s3) == 0, "stats");
	CHECK(s3.disconnects - s2.disconnects == 4,
	      "stats: disconnects moved by %llu for 4 clients disconnected for ring violations",
	      (unsigned long long)(s3.disconnects - s2.disconnects));
	CHECK(th_daemon_log_count(&d, "disconnecting") == 4,
	      "the daemon logged %u disconnections for 4 ring violations (the CQ-head one?)",
	      th_daemon_log_count(&d, "disconnecting"));

	/* The honest client kept being served correctly throughout. */
	{
		uint32_t before = atomic_load(&sh->iterations);
		th_sleep_ms(100);
		CHECK(atomic_load(&sh->iterations) > before, "the honest client stalled");
	}
	atomic_store(&sh->stop, 1);
	REQUIRE(waitpid(hon, &st, 0) == hon, "waitpid honest");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the honest client failed (status 0x%x)", st);
	th_log("honest client: %u iterations, slowest %.1f ms", atomic_load(&sh->iterations),
	       atomic_load(&sh->max_op_ns) / 1e6);
	CHECK(atomic_load(&sh->max_op_ns) < 2000000000ull,
	      "the honest client waited %.0f ms for one score", atomic_load(&sh->max_op_ns) / 1e6);

	/* Everyone gone: nothing left but the named sessions the adversary made. */
	deadline = th_now_ns() + 5000000000ull;
	do {
		REQUIRE(th_stats(d.sock, &s3) == 0, "stats");
		if (s3.clients == 0)
			break;
		th_sleep_ms(10);
	} while (th_now_ns() < deadline);
	CHECK(s3.clients == 0, "%u clients left", s3.clients);
	/* Every region and socket of the gone clients is closed (the honest one
	 * was connected when fds_before was taken). */
	for (uint64_t end = th_now_ns() + 2000000000ull;; th_sleep_ms(5)) {
		/* (the daemon closes the stats connections above asynchronously) */
		fds = th_daemon_fd_count(&d);
		if (fds <= fds_before - 2 || th_now_ns() > end)
			break;
	}
	CHECK(fds <= fds_before - 2, "hearthd holds %d descriptors after all clients left, %d with the "
				      "honest client connected", fds, fds_before);
	{
		struct th_session_info si[64];
		int n = th_sessions(d.sock, si, 64);

		CHECK(n == 2, "%d sessions left, want the 2 named ones (adv:x, adv:y)", n);
		for (int i = 0; i < n && i < 64; i++)
			CHECK(si[i].name[0] && si[i].attached == 0, "session '%s' (handle %x) attached %u",
			      si[i].name, si[i].handle, si[i].attached);
	}

	/* A new client is served correctly and can drop the adversary's leftovers. */
	{
		struct rc c;
		float got[N_LABELS];
		int32_t s, x;

		REQUIRE(rc_connect(&c, d.sock, &(struct rc_opts){ .name = "after" }) == 0, "connect");
		s = rc_open(&c, NULL, 0, NULL);
		CHECK(s > 0 && rc_append(&c, (uint32_t)s, prefix, PREFIX_LEN, NULL) == (int32_t)PREFIX_LEN,
		      "new client: open/append");
		x = rc_score(&c, (uint32_t)s, events[5], EVENT_LEN, labels, N_LABELS, got);
		if (CHECK(x == (int32_t)N_LABELS, "new client score: %d", x))
			th_close(got, want_event[5], N_LABELS, "new client's score");
		x = rc_open(&c, "adv:x", 0, NULL);
		CHECK(x > 0 && rc_close_session(&c, (uint32_t)x, SHM_CLOSE_F_DROP) == 0, "drop adv:x");
		x = rc_open(&c, "adv:y", 0, NULL);
		CHECK(x > 0 && rc_close_session(&c, (uint32_t)x, SHM_CLOSE_F_DROP) == 0, "drop adv:y");
		rc_close(&c);
	}
	th_daemon_stop(&d, 20000);
	munmap(sh, sizeof(*sh));
	ref_fini(&ref);
	return th_result();
}

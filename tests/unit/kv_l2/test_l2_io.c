/* SPDX-License-Identifier: MIT */
/*
 * L2 store transfers, for the pager named on the command line: many pages of
 * random bytes written and read back in random slot order with batches of 1
 * up to the queue depth and with the queue kept full; checksum mismatches
 * (bytes corrupted on disk, a wrong expected value); a read cut short by the
 * end of the file (-EIO); argument checks; the
 * eventfd; close with I/O in flight, then reopen and read what it wrote.
 */
#define _GNU_SOURCE /* fallocate */
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>

#include "l2t.h"

#define PAGE_BYTES (3 * 4096 + 100) /* padded to 4 blocks: exercises the padding */
#define N_SLOTS    256u
#define QD         16u

struct shadow {
	uint32_t gen[N_SLOTS];      /* 0: never written */
	uint64_t checksum[N_SLOTS];
};

static char dir[4096], path[4200];
static enum kv_l2_pager pager;
static uint8_t scratch[PAGE_BYTES];

static struct kv_l2_params params(void)
{
	return (struct kv_l2_params){
		.path = path,
		.file_bytes = (uint64_t)N_SLOTS * kv_l2_slot_bytes(PAGE_BYTES) + 1000,
		.page_bytes = PAGE_BYTES,
		.staging_pages = QD,
		.queue_depth = QD,
		.threads = 3,
		.pager = pager,
	};
}

static void check_page(const struct kv_l2_io *io, const struct shadow *sh)
{
	CHECK_EQ(io->res, 0);
	CHECK(io->tag == io->slot);
	CHECK(io->checksum == sh->checksum[io->slot]);
	l2t_fill(scratch, PAGE_BYTES, io->slot, sh->gen[io->slot]);
	CHECK(!memcmp(io->buf, scratch, PAGE_BYTES));
}

/* Write (or read and verify) the slots in order, all in one kv_l2_write/read
 * call, then wait for all of them. */
static void batch(struct kv_l2 *l2, struct shadow *sh, const uint32_t *slots, uint32_t n,
		  bool write)
{
	struct kv_l2_io ios[QD], out[QD];
	bool seen[N_SLOTS] = { 0 };

	for (uint32_t i = 0; i < n; i++) {
		uint32_t s = slots[i];

		ios[i] = (struct kv_l2_io){ .tag = s, .slot = s, .buf = kv_l2_staging_get(l2) };
		CHECK(ios[i].buf);
		if (write) {
			sh->gen[s]++;
			l2t_fill(ios[i].buf, PAGE_BYTES, s, sh->gen[s]);
			sh->checksum[s] = kv_l2_checksum(ios[i].buf, PAGE_BYTES);
		} else {
			ios[i].checksum = sh->checksum[s];
			memset(ios[i].buf, 0xee, PAGE_BYTES);
		}
	}
	CHECK_EQ(write ? kv_l2_write(l2, ios, n) : kv_l2_read(l2, ios, n), n);
	CHECK_EQ(kv_l2_in_flight(l2), n);
	if (write)
		for (uint32_t i = 0; i < n; i++)
			CHECK(ios[i].checksum == sh->checksum[ios[i].slot]);
	CHECK_EQ(kv_l2_wait(l2, out, n, QD), n);
	CHECK_EQ(kv_l2_in_flight(l2), 0);
	for (uint32_t i = 0; i < n; i++) {
		CHECK(!seen[out[i].slot]);
		seen[out[i].slot] = true;
		check_page(&out[i], sh);
		CHECK_EQ(kv_l2_staging_put(l2, out[i].buf), 0);
	}
}

/* Every slot in order, the queue kept full: submit what fits, reap at
 * least one, repeat. */
static void stream(struct kv_l2 *l2, struct shadow *sh, const uint32_t *slots, uint32_t n,
		   bool write)
{
	struct kv_l2_io io, out[QD];
	uint32_t next = 0, done = 0;
	int r;

	while (done < n) {
		while (next < n && kv_l2_in_flight(l2) < QD) {
			uint32_t s = slots[next];

			io = (struct kv_l2_io){ .tag = s, .slot = s, .buf = kv_l2_staging_get(l2) };
			CHECK(io.buf);
			if (write) {
				sh->gen[s]++;
				l2t_fill(io.buf, PAGE_BYTES, s, sh->gen[s]);
				sh->checksum[s] = kv_l2_checksum(io.buf, PAGE_BYTES);
			} else {
				io.checksum = sh->checksum[s];
			}
			CHECK_EQ(write ? kv_l2_write(l2, &io, 1) : kv_l2_read(l2, &io, 1), 1);
			next++;
		}
		r = kv_l2_wait(l2, out, 1, QD);
		CHECK(r >= 1);
		for (int i = 0; i < r; i++) {
			check_page(&out[i], sh);
			CHECK_EQ(kv_l2_staging_put(l2, out[i].buf), 0);
		}
		done += (uint32_t)r;
	}
}

static void test_roundtrip(struct kv_l2 *l2, struct shadow *sh)
{
	uint32_t order[N_SLOTS], used = 0;
	uint64_t seed = 42;

	for (uint32_t i = 0; i < N_SLOTS; i++)
		order[i] = i;
	l2t_shuffle(order, N_SLOTS, &seed);
	/* Batches of 1 .. QD pages on fresh slots, each read back shuffled. */
	for (uint32_t b = 1; b <= QD; b++) {
		uint32_t back[QD];

		batch(l2, sh, order + used, b, true);
		memcpy(back, order + used, b * sizeof(uint32_t));
		l2t_shuffle(back, b, &seed);
		batch(l2, sh, back, b, false);
		used += b;
	}
	CHECK(used < N_SLOTS);
	/* Everything, overwriting, queue full; then read all in a new order. */
	l2t_shuffle(order, N_SLOTS, &seed);
	stream(l2, sh, order, N_SLOTS, true);
	l2t_shuffle(order, N_SLOTS, &seed);
	stream(l2, sh, order, N_SLOTS, false);
	CHECK_EQ(kv_l2_sync(l2), 0);
}

static int read_one(struct kv_l2 *l2, uint32_t slot, uint64_t checksum)
{
	struct kv_l2_io io = { .slot = slot, .checksum = checksum }, out;

	io.buf = kv_l2_staging_get(l2);
	CHECK(io.buf);
	CHECK_EQ(kv_l2_read(l2, &io, 1), 1);
	CHECK_EQ(kv_l2_wait(l2, &out, 1, 1), 1);
	CHECK_EQ(kv_l2_staging_put(l2, out.buf), 0);
	return out.res;
}

static void corrupt(uint32_t slot, size_t at)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	uint8_t junk[16];

	CHECK(fd >= 0);
	memset(junk, 0xa5, sizeof(junk));
	CHECK(pwrite(fd, junk, sizeof(junk), (off_t)(slot * kv_l2_slot_bytes(PAGE_BYTES) + at)) ==
	      (ssize_t)sizeof(junk));
	CHECK(fsync(fd) == 0);
	close(fd);
}

static void test_checksums(struct kv_l2 *l2, struct shadow *sh)
{
	CHECK_EQ(read_one(l2, 7, sh->checksum[7]), 0);
	CHECK_EQ(read_one(l2, 7, sh->checksum[7] ^ 1), -EBADMSG);
	/* The padding past page_bytes is not covered by the checksum... */
	corrupt(7, PAGE_BYTES + 8);
	CHECK_EQ(read_one(l2, 7, sh->checksum[7]), 0);
	/* ...every byte of the page is. */
	corrupt(7, 0);
	CHECK_EQ(read_one(l2, 7, sh->checksum[7]), -EBADMSG);
	corrupt(9, PAGE_BYTES - 16);
	CHECK_EQ(read_one(l2, 9, sh->checksum[9]), -EBADMSG);
	CHECK_EQ(read_one(l2, 8, sh->checksum[8]), 0);
	sh->gen[7] = sh->gen[9] = 0; /* no longer hold what the shadow says */
}

/* A slot cut in half by a shorter file: the read comes back short, the rest
 * makes no progress: -EIO. */
static void test_short_read(struct kv_l2 *l2, struct shadow *sh)
{
	size_t slot_bytes = kv_l2_slot_bytes(PAGE_BYTES);
	int fd = open(path, O_RDWR | O_CLOEXEC);

	CHECK(fd >= 0);
	CHECK(ftruncate(fd, (off_t)((N_SLOTS - 1) * slot_bytes + 8192)) == 0);
	CHECK_EQ(read_one(l2, N_SLOTS - 1, sh->checksum[N_SLOTS - 1]), -EIO);
	CHECK_EQ(read_one(l2, N_SLOTS - 2, sh->checksum[N_SLOTS - 2]), 0);
	CHECK(ftruncate(fd, (off_t)(N_SLOTS * slot_bytes)) == 0);
	CHECK(fallocate(fd, 0, 0, (off_t)(N_SLOTS * slot_bytes)) == 0);
	close(fd);
	sh->gen[N_SLOTS - 1] = 0;
}

static void test_arguments(struct kv_l2 *l2)
{
	struct kv_l2_io ios[QD + 4], out[QD];
	void *bufs[QD];
	size_t area_bytes;
	uint8_t *area = kv_l2_staging_area(l2, &area_bytes);
	static uint8_t not_staging[8192];

	CHECK(area && area_bytes == QD * kv_l2_slot_bytes(PAGE_BYTES));
	CHECK(((uintptr_t)area % 4096) == 0);
	for (uint32_t i = 0; i < QD; i++) {
		bufs[i] = kv_l2_staging_get(l2);
		CHECK(bufs[i] && (uint8_t *)bufs[i] >= area &&
		      (uint8_t *)bufs[i] < area + area_bytes && (uintptr_t)bufs[i] % 4096 == 0);
	}
	CHECK(!kv_l2_staging_get(l2));
	CHECK_EQ(kv_l2_staging_put(l2, not_staging), -EINVAL);
	CHECK_EQ(kv_l2_staging_put(l2, (uint8_t *)bufs[0] + 4096), -EINVAL);

	/* Bad ios queue nothing. */
	ios[0] = (struct kv_l2_io){ .buf = not_staging, .slot = 0 };
	CHECK_EQ(kv_l2_write(l2, ios, 1), -EINVAL);
	ios[0] = (struct kv_l2_io){ .buf = bufs[0], .slot = 0 };
	ios[1] = (struct kv_l2_io){ .buf = bufs[1], .slot = N_SLOTS };
	CHECK_EQ(kv_l2_write(l2, ios, 2), -EINVAL);
	ios[1] = (struct kv_l2_io){ .buf = bufs[0], .slot = 1 }; /* the same buffer twice */
	CHECK_EQ(kv_l2_write(l2, ios, 2), -EINVAL);
	CHECK_EQ(kv_l2_in_flight(l2), 0);
	CHECK_EQ(kv_l2_write(l2, NULL, 1), -EINVAL);
	CHECK_EQ(kv_l2_write(l2, ios, 0), 0);
	CHECK_EQ(kv_l2_poll(l2, out, QD), 0);
	CHECK_EQ(kv_l2_wait(l2, out, 5, QD), 0); /* nothing in flight: no wait */
	CHECK_EQ(kv_l2_wait(l2, out, 2, 1), -EINVAL);
	CHECK_EQ(kv_l2_staging_put(l2, bufs[0]), 0);
	CHECK_EQ(kv_l2_write(l2, ios, 1), -EINVAL); /* no longer held */
	bufs[0] = kv_l2_staging_get(l2);

	/* A full queue takes what fits; a buffer in flight cannot be put. */
	for (uint32_t i = 0; i < QD; i++) {
		ios[i] = (struct kv_l2_io){ .buf = bufs[i], .slot = 100 + i, .tag = i };
		memset(bufs[i], (int)i, PAGE_BYTES);
	}
	CHECK_EQ(kv_l2_write(l2, ios, QD - 2), QD - 2);
	CHECK_EQ(kv_l2_staging_put(l2, bufs[0]), -EBUSY);
	CHECK_EQ(kv_l2_write(l2, ios + QD - 2, 2), 2);
	CHECK_EQ(kv_l2_in_flight(l2), QD);
	CHECK_EQ(kv_l2_write(l2, ios, 1), 0);
	CHECK_EQ(kv_l2_wait(l2, out, QD, QD), QD);
	for (uint32_t i = 0; i < QD; i++) {
		CHECK_EQ(out[i].res, 0);
		CHECK(out[i].checksum == ios[out[i].tag].checksum);
		CHECK_EQ(kv_l2_staging_put(l2, out[i].buf), 0);
	}
}

static void test_event_fd(struct kv_l2 *l2)
{
	struct pollfd pfd = { .fd = kv_l2_event_fd(l2), .events = POLLIN };
	struct kv_l2_io ios[4], out[4];
	uint32_t got = 0;

	CHECK(pfd.fd >= 0);
	for (uint32_t i = 0; i < 4; i++) {
		ios[i] = (struct kv_l2_io){ .buf = kv_l2_staging_get(l2), .slot = 200 + i };
		memset(ios[i].buf, 0x11 * (int)i, PAGE_BYTES);
	}
	CHECK_EQ(kv_l2_write(l2, ios, 4), 4);
	/* Reaping one at a time through the eventfd, as an epoll loop would. */
	while (got < 4) {
		CHECK(poll(&pfd, 1, 10000) == 1);
		int r = kv_l2_poll(l2, out, 1);
		CHECK(r >= 0 && r <= 1);
		if (r) {
			CHECK_EQ(out[0].res, 0);
			CHECK_EQ(kv_l2_staging_put(l2, out[0].buf), 0);
		}
		got += (uint32_t)r;
	}
	CHECK(poll(&pfd, 1, 0) == 0 || kv_l2_poll(l2, out, 4) == 0);
}

/* Close with writes and reads in flight; what the writes carried is on disk
 * afterwards (close waits for them). */
static void test_close_in_flight(struct shadow *sh)
{
	struct kv_l2_params p = params();
	struct kv_l2_io ios[QD];
	struct kv_l2 *l2 = l2t_open(&p);

	for (uint32_t i = 0; i < QD; i++) {
		uint32_t s = i < QD / 2 ? 20 + i : 60 + i;

		ios[i] = (struct kv_l2_io){ .buf = kv_l2_staging_get(l2), .slot = s };
		if (i < QD / 2) {
			sh->gen[s]++;
			l2t_fill(ios[i].buf, PAGE_BYTES, s, sh->gen[s]);
		} else {
			ios[i].checksum = sh->checksum[s];
		}
	}
	CHECK_EQ(kv_l2_write(l2, ios, QD / 2), QD / 2);
	CHECK_EQ(kv_l2_read(l2, ios + QD / 2, QD / 2), QD / 2);
	for (uint32_t i = 0; i < QD / 2; i++)
		sh->checksum[ios[i].slot] = ios[i].checksum;
	kv_l2_close(l2);

	l2 = l2t_open(&p);
	for (uint32_t i = 0; i < QD / 2; i++)
		CHECK_EQ(read_one(l2, 20 + i, sh->checksum[20 + i]), 0);
	kv_l2_close(l2);
}

int main(int argc, char **argv)
{
	static struct shadow sh;
	struct kv_l2_params p;
	struct kv_l2 *l2;

	pager = l2t_pager(argc, argv);
	l2t_mkdtemp(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/l2.bin", dir);
	p = params();
	l2 = l2t_open(&p);
	printf("pager %s, direct %d%s%s\n", kv_l2_pager_name(l2), kv_l2_is_direct(l2),
	       *kv_l2_notes(l2) ? ", notes: " : "", kv_l2_notes(l2));
	CHECK_EQ(kv_l2_n_slots(l2), N_SLOTS);
	CHECK_EQ(kv_l2_page_bytes(l2), PAGE_BYTES);
	CHECK(!strcmp(kv_l2_pager_name(l2), pager == KV_L2_PAGER_URING ? "io_uring" : "threads"));

	test_roundtrip(l2, &sh);
	test_checksums(l2, &sh);
	test_short_read(l2, &sh);
	test_arguments(l2);
	test_event_fd(l2);
	kv_l2_close(l2);
	test_close_in_flight(&sh);
	kv_l2_close(NULL);

	CHECK(unlink(path) == 0 && rmdir(dir) == 0);
	printf("ok\n");
	return 0;
}

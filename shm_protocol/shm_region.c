/* SPDX-License-Identifier: MIT */
/*
 * Region setup and checking: the layout a set of sizes gives, laying a region
 * out in caller-owned memory (daemon), checking a region that was handed over
 * (client), and building the private ring views from a trusted layout.
 */
#include <errno.h>
#include <string.h>

#include "hr_common.h"
#include "shm_proto.h"
#include "shm_ring.h"

#define RING_HDR_SIZE ((uint64_t)sizeof(struct shm_ring_hdr))

static int is_pow2(uint64_t x)
{
	return x && !(x & (x - 1));
}

static int ring_entries_ok(uint32_t n)
{
	return is_pow2(n) && n >= SHM_RING_MIN_ENTRIES && n <= SHM_RING_MAX_ENTRIES;
}

static int arena_size_ok(uint32_t n)
{
	return n && n <= SHM_ARENA_MAX && n % SHM_PAGE == 0;
}

static uint64_t ring_bytes(uint32_t entries, uint32_t esize)
{
	return RING_HDR_SIZE + (uint64_t)entries * esize;
}

int shm_layout_compute(uint32_t sq_entries, uint32_t cq_entries, uint32_t arena_size,
		       struct shm_layout *ret)
{
	struct shm_layout l = {0};

	if (!ret || !ring_entries_ok(sq_entries) || !ring_entries_ok(cq_entries) ||
	    !arena_size_ok(arena_size))
		return -EINVAL;

	/* Bounded by 512 + 2 MiB + 1 MiB + 1 GiB: no overflow possible. */
	l.sq_entries = sq_entries;
	l.cq_entries = cq_entries;
	l.arena_size = arena_size;
	l.sq_off = sizeof(struct shm_region_hdr);
	l.cq_off = HR_ALIGN_UP(l.sq_off + ring_bytes(sq_entries, sizeof(struct shm_sqe)),
			       (uint64_t)SHM_BLOCK);
	l.arena_off = HR_ALIGN_UP(l.cq_off + ring_bytes(cq_entries, sizeof(struct shm_cqe)),
				  (uint64_t)SHM_PAGE);
	l.total_size = l.arena_off + arena_size;
	*ret = l;
	return 0;
}

ssize_t shm_region_memsize(uint32_t sq_entries, uint32_t cq_entries, uint32_t arena_size)
{
	struct shm_layout l;
	int r = shm_layout_compute(sq_entries, cq_entries, arena_size, &l);

	return r < 0 ? r : (ssize_t)l.total_size;
}

static int layout_is_computed(const struct shm_layout *lay)
{
	struct shm_layout l;

	if (shm_layout_compute(lay->sq_entries, lay->cq_entries, lay->arena_size, &l) < 0)
		return 0;
	return l.total_size == lay->total_size && l.sq_off == lay->sq_off &&
	       l.cq_off == lay->cq_off && l.arena_off == lay->arena_off;
}

int shm_region_init(void *mem, size_t len, const struct shm_layout *lay)
{
	struct shm_region_hdr *hdr = mem;
	struct shm_region_info *info;

	if (!mem || !lay || (uintptr_t)mem % SHM_BLOCK || !layout_is_computed(lay) ||
	    len < lay->total_size)
		return -EINVAL;

	/* Header and both rings (indices 0, slots zero); the arena is the caller's. */
	memset(mem, 0, lay->arena_off);
	info = &hdr->info;
	info->version = SHM_VERSION;
	info->hdr_size = sizeof(*hdr);
	info->total_size = lay->total_size;
	info->sq_off = lay->sq_off;
	info->cq_off = lay->cq_off;
	info->arena_off = lay->arena_off;
	info->arena_size = lay->arena_size;
	info->sq_entries = lay->sq_entries;
	info->cq_entries = lay->cq_entries;
	info->sqe_size = sizeof(struct shm_sqe);
	info->cqe_size = sizeof(struct shm_cqe);
	/* Pairs with the acquire of magic in shm_region_attach_check(): a peer
	 * in this process that sees the magic sees the whole header. (Across
	 * processes, passing the fd orders it anyway.) */
	shm_store_release(&info->magic, SHM_MAGIC);
	return 0;
}

struct part {
	uint64_t off, len;
};

/* [off, off + len) inside [0, total) without computing off + len first. */
static int part_inside(const struct part *p, uint64_t total)
{
	return p->off <= total && p->len <= total - p->off;
}

/* Parts sorted by offset must each end before the next starts. */
static int parts_disjoint(struct part *p, size_t n)
{
	for (size_t i = 1; i < n; i++) /* insertion sort: n is 4 */
		for (size_t j = i; j > 0 && p[j - 1].off > p[j].off; j--) {
			struct part t = p[j];

			p[j] = p[j - 1];
			p[j - 1] = t;
		}
	for (size_t i = 1; i < n; i++)
		if (p[i - 1].off + p[i - 1].len > p[i].off)
			return 0;
	return 1;
}

static int ring_indices_ok(const void *mem, uint64_t off, uint32_t entries)
{
	const struct shm_ring_hdr *ring = (const void *)((const char *)mem + off);
	uint32_t tail = shm_load_relaxed(&ring->tail.v);
	uint32_t head = shm_load_relaxed(&ring->head.v);

	return (uint32_t)(tail - head) <= entries;
}

int shm_region_attach_check(const void *mem, size_t len, struct shm_layout *ret)
{
	const struct shm_region_hdr *hdr = mem;
	struct shm_region_info info;
	struct part parts[4];
	struct shm_layout l;

	if (!mem || !ret || (uintptr_t)mem % SHM_BLOCK || len < sizeof(*hdr))
		return -EINVAL;
	/* Pairs with the release of magic in shm_region_init(). */
	if (shm_load_acquire(&hdr->info.magic) != SHM_MAGIC)
		return -EBADMSG;
	memcpy(&info, &hdr->info, sizeof(info)); /* one read; only the copy is used */
	if (info.magic != SHM_MAGIC)
		return -EBADMSG;
	if (info.version >> 16 != SHM_VERSION_MAJOR)
		return -EPROTONOSUPPORT;
	if (info.hdr_size != sizeof(*hdr) || info.flags != 0 ||
	    info.sqe_size != sizeof(struct shm_sqe) || info.cqe_size != sizeof(struct shm_cqe))
		return -EINVAL;
	if (info.total_size > len || info.total_size < sizeof(*hdr))
		return -EINVAL;
	if (!ring_entries_ok(info.sq_entries) || !ring_entries_ok(info.cq_entries) ||
	    !arena_size_ok(info.arena_size))
		return -EINVAL;
	if (info.sq_off % SHM_BLOCK || info.cq_off % SHM_BLOCK || info.arena_off % SHM_PAGE)
		return -EINVAL;

	parts[0] = (struct part){ 0, info.hdr_size };
	parts[1] = (struct part){ info.sq_off, ring_bytes(info.sq_entries, info.sqe_size) };
	parts[2] = (struct part){ info.cq_off, ring_bytes(info.cq_entries, info.cqe_size) };
	parts[3] = (struct part){ info.arena_off, info.arena_size };
	for (size_t i = 0; i < HR_ARRAY_SIZE(parts); i++)
		if (!part_inside(&parts[i], info.total_size))
			return -EINVAL;
	/* All inside total_size <= len, so the sums below cannot overflow. */
	if (!parts_disjoint(parts, HR_ARRAY_SIZE(parts)))
		return -EINVAL;
	if (!ring_indices_ok(mem, info.sq_off, info.sq_entries) ||
	    !ring_indices_ok(mem, info.cq_off, info.cq_entries))
		return -EINVAL;

	l = (struct shm_layout){
		.total_size = info.total_size,
		.sq_off = info.sq_off,
		.cq_off = info.cq_off,
		.arena_off = info.arena_off,
		.sq_entries = info.sq_entries,
		.cq_entries = info.cq_entries,
		.arena_size = info.arena_size,
	};
	*ret = l;
	return 0;
}

/* ---- private ring views ------------------------------------------------- */

static struct shm_ring_hdr *ring_at(void *mem, uint64_t off)
{
	return (struct shm_ring_hdr *)((char *)mem + off);
}

static int prod_setup(struct shm_ring_prod *p, struct shm_ring_hdr *ring, uint32_t entries)
{
	struct shm_ring_prod v = {
		.tail_p = &ring->tail.v,
		.head_p = &ring->head.v,
		.entries = ring + 1,
		.mask = entries - 1,
	};

	v.tail = shm_load_relaxed(v.tail_p); /* ours: nobody else writes it */
	/* Pairs with R1 in shm_ring_cons_advance(), should the consumer have
	 * started already. */
	v.head = shm_load_acquire(v.head_p);
	if ((uint32_t)(v.tail - v.head) > entries)
		return -EPROTO;
	v.published = v.tail;
	*p = v;
	return 0;
}

static int cons_setup(struct shm_ring_cons *c, struct shm_ring_hdr *ring, uint32_t entries)
{
	struct shm_ring_cons v = {
		.head_p = &ring->head.v,
		.tail_p = &ring->tail.v,
		.entries = ring + 1,
		.mask = entries - 1,
	};

	v.head = shm_load_relaxed(v.head_p); /* ours: nobody else writes it */
	/* Pairs with R0 in shm_ring_prod_publish(), should the producer have
	 * started already. */
	v.tail = shm_load_acquire(v.tail_p);
	if ((uint32_t)(v.tail - v.head) > entries)
		return -EPROTO;
	*c = v;
	return 0;
}

int shm_sq_prod_init(struct shm_sq_prod *sq, void *mem, const struct shm_layout *lay)
{
	if (!sq || !mem || !lay || !ring_entries_ok(lay->sq_entries))
		return -EINVAL;
	return prod_setup(&sq->r, ring_at(mem, lay->sq_off), lay->sq_entries);
}

int shm_sq_cons_init(struct shm_sq_cons *sq, void *mem, const struct shm_layout *lay)
{
	if (!sq || !mem || !lay || !ring_entries_ok(lay->sq_entries))
		return -EINVAL;
	return cons_setup(&sq->r, ring_at(mem, lay->sq_off), lay->sq_entries);
}

int shm_cq_prod_init(struct shm_cq_prod *cq, void *mem, const struct shm_layout *lay)
{
	if (!cq || !mem || !lay || !ring_entries_ok(lay->cq_entries))
		return -EINVAL;
	return prod_setup(&cq->r, ring_at(mem, lay->cq_off), lay->cq_entries);
}

int shm_cq_cons_init(struct shm_cq_cons *cq, void *mem, const struct shm_layout *lay)
{
	if (!cq || !mem || !lay || !ring_entries_ok(lay->cq_entries))
		return -EINVAL;
	return cons_setup(&cq->r, ring_at(mem, lay->cq_off), lay->cq_entries);
}

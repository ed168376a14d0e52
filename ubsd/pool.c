/* SPDX-License-Identifier: MIT */
/*
 * pool.c - the memory pool's bookkeeping (see pool.h).
 *
 * One table of segments, each a memfd (MFD_CLOEXEC, mode 0600, sealed against shrinking and growing so a borrower cannot
 * make another mapping of it fault).  A segment is either lent (owner !=
 * 0) or free: a free one has had its pages punched out
 * (FALLOC_FL_PUNCH_HOLE), so it holds no memory and reads as zeros, and
 * is lent again as is to the next request of the same size and kind.  At
 * most FREE_KEEP free segments are kept; more are closed.
 *
 * Hugepages: with pool_hugepages on, a segment is a MFD_HUGETLB memfd
 * whose pages are reserved at once (fallocate), so a borrower never takes
 * SIGBUS on a missing hugepage; when that fails (none free) the segment
 * is made of normal pages and the pool says so (CTL_MEM_PAGES_HUGE_UNAVAIL).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pool.h"

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21 << 26)
#endif

#define FREE_KEEP 64                    /* free segments kept for reuse */
#define LEASE_MAX (1ull << 40)          /* no single lease beyond 1 TiB */
#define ORPHAN (1ull << 63)             /* owner bit: session gone */

struct seg {
	uint64_t id;                    /* of the current lease, 0 if free */
	uint64_t owner;                 /* session id, 0 = free; ORPHAN|pid
					 * when its session ended before its
					 * process did */
	pid_t pid;
	int fd;
	int pidfd;                      /* an orphan's process, else -1 */
	uint64_t size;
	bool huge;
	char service[CTL_NAME_MAX];
};

static struct {
	uint64_t size;
	bool want_huge;
	uint32_t pages;                 /* CTL_MEM_PAGES_* */
	uint64_t used;
	uint32_t nlent, nfree;
	uint64_t next_id;
	uint64_t leases_total, refused;
	struct seg *seg;
	uint32_t nseg, cap;
} pool;

void pool_configure(uint64_t size, bool hugepages)
{
	pool.size = size;
	pool.want_huge = hugepages;
	pool.pages = hugepages ? CTL_MEM_PAGES_HUGE : CTL_MEM_PAGES_NORMAL;
}

/* A new memfd of size bytes; hugepages when asked and reservable.
 * Returns the fd or -errno; *huge says what it is made of. */
static int seg_create(uint64_t size, bool want_huge, bool *huge)
{
	int fd;

	*huge = false;
	if (want_huge) {
		fd = memfd_create("ubs-pool", MFD_CLOEXEC | MFD_HUGETLB |
				  MFD_HUGE_2MB);
		if (fd >= 0) {
			if (fchmod(fd, 0600) == 0 &&
			    ftruncate(fd, (off_t)size) == 0 &&
			    fallocate(fd, 0, 0, (off_t)size) == 0) {
				*huge = true;
				return fd;
			}
			close(fd);
		}
		pool.pages = CTL_MEM_PAGES_HUGE_UNAVAIL;
	}
	fd = memfd_create("ubs-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)size) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW |
		  F_SEAL_SEAL) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

/* Give s's memory back to the kernel; it reads as zeros after this.  A
 * hugepage segment is closed instead when punching fails. */
static void seg_release(struct seg *s)
{
	pool.used -= s->size;
	pool.nlent--;
	s->owner = 0;
	s->id = 0;
	s->pid = 0;
	if (s->pidfd >= 0)
		close(s->pidfd);
	s->pidfd = -1;
	s->service[0] = '\0';
	if (s->fd < 0) {                /* a claim: nothing to keep */
		*s = pool.seg[--pool.nseg];
		return;
	}
	if (pool.nfree >= FREE_KEEP ||
	    fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
		      (off_t)s->size) < 0) {
		close(s->fd);
		*s = pool.seg[--pool.nseg];
		return;
	}
	if (s->huge && fallocate(s->fd, 0, 0, (off_t)s->size) < 0) {
		/* Could not reserve its hugepages again: drop it. */
		close(s->fd);
		*s = pool.seg[--pool.nseg];
		return;
	}
	pool.nfree++;
}

/* Room for one more segment record.  0 or -ENOMEM. */
static int seg_room(void)
{
	if (pool.nseg == pool.cap) {
		uint32_t cap = pool.cap ? pool.cap * 2 : 16;
		struct seg *t = realloc(pool.seg, cap * sizeof(*t));

		if (!t)
			return -ENOMEM;
		pool.seg = t;
		pool.cap = cap;
	}
	return 0;
}

static uint64_t service_used(const char *name)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < pool.nseg; i++)
		if (pool.seg[i].owner && strcmp(pool.seg[i].service, name) == 0)
			n += pool.seg[i].size;
	return n;
}

int pool_lease(uint64_t owner, pid_t pid, const char *service,
	       uint64_t quota, uint64_t bytes, struct ctl_mem_seg *out,
	       int *fd, char *msg, size_t msglen)
{
	struct seg *s = NULL;
	uint64_t size;
	bool reused = false;

	if (bytes == 0 || bytes > LEASE_MAX) {
		snprintf(msg, msglen, "bad lease size %llu",
			 (unsigned long long)bytes);
		return -EINVAL;
	}
	size = (bytes + POOL_GRANULE - 1) & ~(POOL_GRANULE - 1);
	pool_sweep();
	if (pool.used + size > pool.size) {
		pool.refused++;
		snprintf(msg, msglen, "memory pool exhausted (%llu of %llu "
			 "bytes lent)", (unsigned long long)pool.used,
			 (unsigned long long)pool.size);
		return -ENOSPC;
	}
	if (quota && service_used(service) + size > quota) {
		pool.refused++;
		snprintf(msg, msglen, "service %.64s: mem_quota %llu bytes "
			 "reached", service, (unsigned long long)quota);
		return -EDQUOT;
	}
	for (uint32_t i = 0; i < pool.nseg; i++) {
		struct seg *f = &pool.seg[i];

		if (!f->owner && f->size == size &&
		    (f->huge || !pool.want_huge ||
		     pool.pages == CTL_MEM_PAGES_HUGE_UNAVAIL)) {
			s = f;
			reused = true;
			pool.nfree--;
			break;
		}
	}
	if (!s) {
		bool huge;
		int nfd;

		if (seg_room() < 0) {
			snprintf(msg, msglen, "out of memory");
			return -ENOMEM;
		}
		nfd = seg_create(size, pool.want_huge, &huge);
		if (nfd < 0) {
			snprintf(msg, msglen, "memfd: %s", strerror(-nfd));
			return nfd;
		}
		s = &pool.seg[pool.nseg++];
		memset(s, 0, sizeof(*s));
		s->pidfd = -1;
		s->fd = nfd;
		s->size = size;
		s->huge = huge;
	}
	s->id = ++pool.next_id;
	s->owner = owner;
	s->pid = pid;
	snprintf(s->service, sizeof(s->service), "%s", service);
	pool.used += size;
	pool.nlent++;
	pool.leases_total++;
	memset(out, 0, sizeof(*out));
	out->seg_id = s->id;
	out->size = size;
	out->flags = (s->huge ? CTL_MEM_HUGE : 0) |
		     (reused ? CTL_MEM_REUSED : 0);
	*fd = s->fd;
	return 0;
}

int pool_claim(uint64_t owner, pid_t pid, const char *service,
	       uint64_t bytes, char *msg, size_t msglen)
{
	struct seg *s;

	if (bytes == 0 || bytes > LEASE_MAX) {
		snprintf(msg, msglen, "bad claim size %llu",
			 (unsigned long long)bytes);
		return -EINVAL;
	}
	if (seg_room() < 0) {
		snprintf(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	s = &pool.seg[pool.nseg++];
	memset(s, 0, sizeof(*s));
	s->pidfd = -1;
	s->fd = -1;                     /* the memory is the process's */
	s->size = bytes;
	s->id = ++pool.next_id;
	s->owner = owner;
	s->pid = pid;
	snprintf(s->service, sizeof(s->service), "%s", service);
	pool.used += bytes;
	pool.nlent++;
	return 0;
}

int pool_return(uint64_t owner, uint64_t seg_id)
{
	for (uint32_t i = 0; i < pool.nseg; i++) {
		struct seg *s = &pool.seg[i];

		if (s->owner && s->owner == owner && s->id == seg_id) {
			seg_release(s);
			return 0;
		}
	}
	return -ENOENT;
}

/* Has the process behind pidfd exited? */
static bool exited(int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };

	return poll(&p, 1, 0) != 0;
}

/*
 * Does pid still map segment s (by its memfd's inode; a claim, which has
 * no memfd here, by any pool mapping)?  An exec, or an exit (the memory
 * goes before the files), ends the mappings.
 */
static bool still_mapped(const struct seg *s)
{
	char path[64], line[512];
	unsigned long ino = 0;
	struct stat st;
	bool found = false;
	FILE *f;

	if (s->fd >= 0) {
		if (fstat(s->fd, &st) < 0)
			return true;    /* cannot tell: keep it */
		ino = (unsigned long)st.st_ino;
	}
	snprintf(path, sizeof(path), "/proc/%ld/maps", (long)s->pid);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long i;

		if (!strstr(line, "memfd:ubs-pool"))
			continue;
		if (sscanf(line, "%*s %*s %*s %*s %lu", &i) == 1 &&
		    (!ino || i == ino))
			found = true;
	}
	fclose(f);
	return found;
}

/*
 * A session ended.  Its segments come back at once if its process is
 * gone or maps them no more (exec).  A process that lives on with them
 * mapped (it lost its connection) keeps them counted, as orphans watched
 * through a pidfd and its maps, until it has exited or unmapped them
 * (pool_sweep), so no live heap is ever punched or lent twice.
 */
void pool_session_end(uint64_t owner)
{
	uint32_t i = 0;

	while (i < pool.nseg) {
		struct seg *s = &pool.seg[i];
		uint32_t before = pool.nseg;

		if (s->owner == owner) {
			int pfd = (int)syscall(SYS_pidfd_open, s->pid, 0);

			if (pfd >= 0 && !exited(pfd) && still_mapped(s)) {
				s->owner = ORPHAN | (uint32_t)s->pid;
				s->pidfd = pfd;
				i++;
				continue;
			}
			if (pfd >= 0)
				close(pfd);
			seg_release(s);
			if (pool.nseg < before)
				continue;       /* the last one moved here */
		}
		i++;
	}
}

void pool_sweep(void)
{
	uint32_t i = 0;

	while (i < pool.nseg) {
		struct seg *s = &pool.seg[i];
		uint32_t before = pool.nseg;

		if ((s->owner & ORPHAN) &&
		    (exited(s->pidfd) || !still_mapped(s))) {
			seg_release(s);
			if (pool.nseg < before)
				continue;
		}
		i++;
	}
}

void pool_totals(struct ctl_mem_pool *out)
{
	pool_sweep();
	memset(out, 0, sizeof(*out));
	out->size = pool.size;
	out->used = pool.used;
	out->granule = POOL_GRANULE;
	out->leases_total = pool.leases_total;
	out->refused = pool.refused;
	out->pages = pool.pages;
	out->segments = pool.nlent;
}

uint64_t pool_service_used(const char *name, uint32_t *holders)
{
	uint64_t n = 0;

	*holders = 0;
	for (uint32_t i = 0; i < pool.nseg; i++) {
		const struct seg *s = &pool.seg[i];
		bool first = true;

		if (!s->owner || strcmp(s->service, name) != 0)
			continue;
		n += s->size;
		for (uint32_t k = 0; k < i; k++)
			if (pool.seg[k].owner == s->owner)
				first = false;
		if (first)
			(*holders)++;
	}
	return n;
}

bool pool_holder(uint32_t i, struct ctl_mem_holder *out)
{
	uint32_t nth = 0;

	for (uint32_t a = 0; a < pool.nseg; a++) {
		const struct seg *s = &pool.seg[a];
		bool first = true;

		if (!s->owner)
			continue;
		for (uint32_t k = 0; k < a && first; k++)
			if (pool.seg[k].owner == s->owner)
				first = false;
		if (!first || nth++ != i)
			continue;
		memset(out, 0, sizeof(*out));
		out->pid = (uint32_t)s->pid;
		memcpy(out->service, s->service, sizeof(out->service));
		for (uint32_t k = a; k < pool.nseg; k++)
			if (pool.seg[k].owner == s->owner) {
				out->segments++;
				out->bytes += pool.seg[k].size;
			}
		return true;
	}
	return false;
}

void pool_fini(void)
{
	/* Nothing is punched: live processes keep what they map. */
	for (uint32_t i = 0; i < pool.nseg; i++) {
		if (pool.seg[i].fd >= 0)
			close(pool.seg[i].fd);
		if (pool.seg[i].pidfd >= 0)
			close(pool.seg[i].pidfd);
	}
	free(pool.seg);
	memset(&pool, 0, sizeof(pool));
}

/* SPDX-License-Identifier: MIT */
/*
 * pool.c - memhooks' pool: a jemalloc arena whose extents come from
 * segments leased from ubsd and mapped one after another inside one
 * reserved virtual range, so that "is this pool memory?" is one range
 * compare (mh_is_pool).
 *
 * jemalloc is loaded once, at init, with dlopen("libjemalloc.so.2",
 * RTLD_NOW | RTLD_LOCAL), only when the pool is on: a program linked with
 * it gets its own instance back, any other program gets one whose symbols
 * (malloc, and the C++ operators Debian's build exports) stay out of the
 * global scope.  Its initial-exec TLS needs static TLS room that glibc
 * reserves at start only when told (GLIBC_TUNABLES=
 * glibc.rtld.optional_static_tls=4096: ubsrun sets it); without it the
 * pool stays off and the program runs on its own allocator.  mallocx/dallocx/sallocx/rallocx/mallctl are looked
 * up on that handle at init, never on the malloc path.  Pool arenas are
 * made by arenas.create with our extent hooks (one per CPU, up to 4, each
 * thread bound to one) and used with MALLOCX_ARENA | MALLOCX_TCACHE_NONE
 * (no tcache mixes their blocks with ordinary arenas').
 *
 * Leases: memhooks has its own control connection to ubsd (a session of
 * the process's service), apart from the preload's ctl.c, so that a lease
 * never waits for a lock that a thread holds while it allocates.  The
 * first segment is leased at init; later ones from the extent hook, under
 * region_lock, with nothing but system calls and stack buffers (no
 * allocation, no dlsym).  A refusal (quota, pool exhausted, no daemon)
 * makes the hook fail: jemalloc returns NULL and the router falls back to
 * ordinary memory; further requests wait LEASE_BACKOFF_MS.  A thread
 * already inside the pool (in_pool) never enters it again: a nested
 * allocation goes to ordinary memory.
 *
 * Return: extents are carved from a table of the segments' free ranges,
 * never across two segments; the dalloc hook punches an extent out and
 * frees its range, and a segment with nothing left in use goes back to
 * ubsd (MEM_RETURN) while the process runs.  Frees purge the pool arenas
 * when most of the lease is idle (maybe_purge).
 *
 * Policy: while the pool is up, the service's mem_pool and mem_sites are
 * followed from the policy page, checked on the pool path only
 * (mh_pool_wants).
 *
 * fork: the segments are MAP_SHARED, so a child would write into its
 * parent's heap.  At fork (pthread_atfork; jemalloc's own handlers hold
 * its arenas still around the fork itself) the parent waits while the
 * child copies every page of the live segments into private anonymous
 * memory and moves it over the shared mapping (mremap): the child's heap
 * is a snapshot as of the fork, and nothing is shared after.  The child
 * drops the inherited connection; its own leases, if it needs more,
 * come with its own session.
 *
 * Lock order: region_lock, then jemalloc's own locks are never taken
 * under it (the hook runs inside jemalloc, which may hold its locks).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "preload.h"
#include "ctl.h"
#include "ctl_proto.h"
#include "policy.h"
#include "ubt.h"
#include "mh.h"

#define MH_RESERVE (64ull << 30)        /* virtual range for the pool */
#define MH_ALIGN (2ull << 20)           /* hugepage mappings need it */
#define MH_CHUNK (4ull << 20)           /* lease at least this much */
#define MH_MIN_DEFAULT (16u << 10)      /* UBS_MEM_POOL=1 without MIN */
#define LEASE_BACKOFF_MS 100
#define LEASE_IO_MS 2500
#define POLICY_IO_MS 250                /* at start: a slow ubsd, pool off */
#define MH_PEEK (128u << 10)            /* allocations this big always look
					 * at the policy page's generation */

/* jemalloc 5 ABI (jemalloc_macros.h, jemalloc_typedefs.h). */
#define MALLOCX_LG_ALIGN(la) ((int)(la))
#define MALLOCX_ZERO ((int)0x40)
#define MALLOCX_TCACHE_NONE ((int)(1 << 8))
#define MALLOCX_ARENA(a) ((int)(((unsigned)(a) + 1) << 20))

typedef struct extent_hooks_s extent_hooks_t;
struct extent_hooks_s {
	void *(*alloc)(extent_hooks_t *, void *, size_t, size_t, bool *,
		       bool *, unsigned);
	bool (*dalloc)(extent_hooks_t *, void *, size_t, bool, unsigned);
	void (*destroy)(extent_hooks_t *, void *, size_t, bool, unsigned);
	bool (*commit)(extent_hooks_t *, void *, size_t, size_t, size_t,
		       unsigned);
	bool (*decommit)(extent_hooks_t *, void *, size_t, size_t, size_t,
			 unsigned);
	bool (*purge_lazy)(extent_hooks_t *, void *, size_t, size_t, size_t,
			   unsigned);
	bool (*purge_forced)(extent_hooks_t *, void *, size_t, size_t, size_t,
			     unsigned);
	bool (*split)(extent_hooks_t *, void *, size_t, size_t, size_t, bool,
		      unsigned);
	bool (*merge)(extent_hooks_t *, void *, size_t, void *, size_t, bool,
		      unsigned);
};

static struct {
	void *(*mallocx)(size_t, int);
	void (*dallocx)(void *, int);
	size_t (*sallocx)(const void *, int);
	void *(*rallocx)(void *, size_t, int);
	int (*mallctl)(const char *, void *, size_t *, void *, size_t);
	int (*mallctlnametomib)(const char *, size_t *, size_t *);
	int (*mallctlbymib)(const size_t *, size_t, void *, size_t *, void *,
			    size_t);
	size_t purge_mib[3];            /* arena.<i>.purge */
	int flags;                      /* MALLOCX_ARENA | TCACHE_NONE */
} je;

static struct {
	pthread_mutex_t lock;           /* region_lock */
	uintptr_t base;                 /* reserved range start (2 MiB) */
	uintptr_t top;                  /* end of the range ever mapped */
	int fd;                         /* control connection, -1 if none */
	uint32_t sess;                  /* sessions opened (a segment can be
					 * returned by id in its own only) */
	uint32_t seq;
	uint64_t retry_ms;              /* no lease asked before this */
	uint64_t leased;                /* bytes leased by this process's
					 * sessions (not a fork parent's) */
	int fork_pipe[2];
} rg = { .lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1,
	 .fork_pipe = { -1, -1 } };

/*
 * The leased segments, with their memfds kept (high, close-on-exec, the
 * library's), so that pool memory can be shared by fd and offset
 * (mh_pool_segment, which reads them without the lock: fd is stored last
 * and cleared first).  An entry with fd -1 is a hole: a returned
 * segment's range, reserved PROT_NONE, where a later lease may be mapped.
 * Changed under region_lock only.
 */
#define MH_SEGS_MAX 1024
static struct {
	uintptr_t addr;
	uint64_t size;
	int fd;                         /* -1: a hole (atomic) */
	uint32_t sess;                  /* rg.sess it was leased in */
	uint64_t id;                    /* ubsd's segment id */
	uint64_t used;                  /* bytes handed to jemalloc */
	bool huge;                      /* of 2 MiB hugepages */
} segs[MH_SEGS_MAX];
static unsigned nsegs;                  /* atomic (release on append) */

/*
 * Free ranges of the leased segments (not handed to jemalloc, or handed
 * back by its dalloc hook), each inside one segment and zero (never used,
 * or punched out with MADV_REMOVE when it came back).  Unordered; first
 * fit.  A range that finds no slot is dropped: it comes back with its
 * segment.  Under region_lock.
 */
#define MH_FREE_MAX 4096
#define NO_SEG UINT32_MAX               /* a fork child's private copy */
static struct {
	uintptr_t addr, len;
	uint32_t seg;                   /* index in segs, or NO_SEG */
} fr[MH_FREE_MAX];
static unsigned nfr;

/* Process-wide live figures (the stats page of a fork child starts at
 * zero: it is given these back). */
static uint64_t live_bytes, live_allocs;

static UBS_TLS bool in_pool;

/*
 * The service's policy, followed at run time.  The policy page stays
 * mapped (read-only, its fd closed) while the pool is up; its generation
 * is compared on the pool path (mh_pool_wants), never on the small path.
 * min is the threshold the policy asks for (SIZE_MAX: mem_pool = off);
 * mh_hot.min, the router's, is min(min, MH_PEEK) so that a process whose
 * pool was turned off still looks at the page on its big allocations.
 * With UBS_MEM_POOL in the environment there is no page: min is fixed.
 */
static struct {
	struct ubt_seg page;            /* base NULL: nothing to follow */
	uint64_t seen;                  /* generation applied (atomic) */
	uint32_t hint;
	size_t min;                     /* atomic */
	bool sites_env;                 /* UBS_MEM_SITES: mem_sites ignored */
} pol = { .min = SIZE_MAX };

/*
 * Pool arenas: one per CPU up to MH_ARENAS_MAX, so that threads do not
 * all queue on one arena's locks (pool blocks bypass the thread caches).
 * The first is made at init; the others when a thread is first given
 * one (its first pool allocation), so a single-threaded process leases
 * for one arena's metadata only.
 */
#define MH_ARENAS_MAX 4
static struct {
	pthread_mutex_t lock;
	int flags[MH_ARENAS_MAX];       /* mallocx flags, 0 = not made */
	unsigned max, next;
} arenas = { .lock = PTHREAD_MUTEX_INITIALIZER };
static UBS_TLS int thread_flags;        /* this thread's arena */

static int arena_new(void);

/* This thread's arena flags (caller in_pool). */
static int my_arena(void)
{
	unsigned i;
	int f;

	if (__builtin_expect(thread_flags != 0, 1))
		return thread_flags;
	i = __atomic_fetch_add(&arenas.next, 1, __ATOMIC_RELAXED) %
	    arenas.max;
	f = __atomic_load_n(&arenas.flags[i], __ATOMIC_ACQUIRE);
	if (!f) {
		pthread_mutex_lock(&arenas.lock);
		f = arenas.flags[i];
		if (!f) {
			f = arena_new();
			if (f)
				__atomic_store_n(&arenas.flags[i], f,
						 __ATOMIC_RELEASE);
			else
				f = je.flags;   /* the first one */
		}
		pthread_mutex_unlock(&arenas.lock);
	}
	thread_flags = f;
	return f;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ control */

static void conn_close(void)
{
	if (rg.fd >= 0)
		ubs_fd_release(rg.fd);
	rg.fd = -1;
}

/* Send one message.  0 or -errno. */
static int conn_send(uint16_t type, const void *body, uint32_t len)
{
	unsigned char buf[sizeof(struct ctl_hdr) + 64];
	struct ctl_hdr h;
	size_t off = 0, n = sizeof(h) + len;

	ctl_fill(&h, type, len, ++rg.seq);
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), body, len);
	while (off < n) {
		long r = syscall(SYS_sendto, rg.fd, buf + off, n - off,
				 MSG_NOSIGNAL, NULL, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -EPIPE;
		off += (size_t)r;
	}
	return 0;
}

/*
 * Receive one message into h and body (up to CTL_MAX_BODY), its fd (if
 * any) into *fd (else -1), bounded by ms.  0 or -errno.
 */
static int conn_recv_ms(struct ctl_hdr *h, void *body, int *fd, int ms)
{
	unsigned char buf[sizeof(struct ctl_hdr) + CTL_MAX_BODY];
	uint64_t deadline = now_ms() + (uint64_t)ms;
	size_t have = 0, want = sizeof(*h);
	const char *why;

	*fd = -1;
	while (have < want) {
		union {
			struct cmsghdr align;
			char b[CMSG_SPACE(sizeof(int) * CTL_MAX_FDS)];
		} cm;
		struct iovec iov = { buf + have, want - have };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = cm.b,
				     .msg_controllen = sizeof(cm.b) };
		struct pollfd pfd = { .fd = rg.fd, .events = POLLIN };
		uint64_t now = now_ms();
		long r;

		if (now >= deadline)
			return -ETIMEDOUT;
		r = syscall(SYS_poll, &pfd, 1, (int)(deadline - now));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -ETIMEDOUT;
		r = syscall(SYS_recvmsg, rg.fd, &mh, MSG_CMSG_CLOEXEC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -EPIPE;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
		     c = CMSG_NXTHDR(&mh, c)) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

			if (c->cmsg_level != SOL_SOCKET ||
			    c->cmsg_type != SCM_RIGHTS)
				continue;
			for (int i = 0; i < k; i++) {
				int f;

				memcpy(&f, CMSG_DATA(c) + i * sizeof(int),
				       sizeof(f));
				if (*fd < 0)
					*fd = f;
				else
					syscall(SYS_close, f);
			}
		}
		have += (size_t)r;
		if (have == sizeof(*h)) {
			memcpy(h, buf, sizeof(*h));
			if (ctl_check(h, NULL, &why) < 0)
				goto bad;
			want += h->len;
		}
	}
	if (ctl_check(h, buf + sizeof(*h), &why) < 0)
		goto bad;
	memcpy(body, buf + sizeof(*h), h->len);
	return 0;
bad:
	if (*fd >= 0)
		syscall(SYS_close, *fd);
	*fd = -1;
	return -EPROTO;
}

static int conn_recv(struct ctl_hdr *h, void *body, int *fd)
{
	return conn_recv_ms(h, body, fd, LEASE_IO_MS);
}

/* A new connection to ubsd (no session yet).  0 or -errno. */
static int conn_open(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd;

	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s",
			     ubs_config.run_dir, CTL_SOCK_NAME) >=
	    sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	fd = (int)syscall(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (syscall(SYS_connect, fd, &sun, sizeof(sun)) < 0) {
		int err = -errno;

		syscall(SYS_close, fd);
		return err;
	}
	rg.fd = ubs_fd_high(fd);
	return 0;
}

/* Send a request that is answered OK (or ERROR): 0 or -errno. */
static int conn_call(uint16_t type, const void *body_out, uint32_t len)
{
	unsigned char body[CTL_MAX_BODY];
	struct ctl_hdr h;
	int fd, err;

	err = conn_send(type, body_out, len);
	if (!err)
		err = conn_recv(&h, body, &fd);
	if (!err && fd >= 0)
		syscall(SYS_close, fd);
	if (!err && h.type != CTL_R_OK)
		err = -EPROTO;
	return err;
}

/* Start the session on the open connection.  0 or -errno. */
static int conn_hello(void)
{
	struct ctl_hello m = { .pid = (uint32_t)getpid() };

	memcpy(m.service, ubs_config.service, sizeof(m.service));
	m.service[sizeof(m.service) - 1] = '\0';
	return conn_call(CTL_REQ_HELLO, &m, sizeof(m));
}

/*
 * A new session after the old one broke (ubsd restarted): what this
 * process still maps from its earlier leases counts as its lease with the
 * new daemon.  0 or -errno.
 */
static int claim(void)
{
	struct ctl_mem_lease m = { .bytes = rg.leased };

	return conn_call(CTL_REQ_MEM_CLAIM, &m, sizeof(m));
}

static int policy_page(struct ubt_seg *page, int ms);

/*
 * A new daemon, a new policy page: follow it from now on.  The old
 * mapping stays (a thread may be reading it) and is never reused.
 */
static void policy_remap(void)
{
	struct ubt_seg page;

	if (policy_page(&page, LEASE_IO_MS) < 0)
		return;
	__atomic_store_n(&pol.seen, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&pol.page.base, page.base, __ATOMIC_RELEASE);
	pol.page.size = page.size;
}

/* Add [addr, addr+len) of segment seg to the free ranges, joined with a
 * neighbour of the same segment.  Dropped when there is no room. */
static void free_add(uintptr_t addr, uintptr_t len, uint32_t seg)
{
	unsigned i, before = nfr, after = nfr;

	if (!len)
		return;
	for (i = 0; i < nfr; i++) {
		if (fr[i].seg != seg)
			continue;
		if (fr[i].addr + fr[i].len == addr)
			before = i;
		else if (addr + len == fr[i].addr)
			after = i;
	}
	if (before < nfr && after < nfr) {
		fr[before].len += len + fr[after].len;
		fr[after] = fr[--nfr];
	} else if (before < nfr) {
		fr[before].len += len;
	} else if (after < nfr) {
		fr[after].addr = addr;
		fr[after].len += len;
	} else if (nfr < MH_FREE_MAX) {
		fr[nfr].addr = addr;
		fr[nfr].len = len;
		fr[nfr].seg = seg;
		nfr++;
	}
}

/* An extent of size bytes aligned to align from the free ranges, its
 * segment's use counted; 0 if none fits. */
static uintptr_t free_take(size_t size, size_t align)
{
	for (unsigned i = 0; i < nfr; i++) {
		uintptr_t at = (fr[i].addr + align - 1) & ~(uintptr_t)(align - 1);
		uintptr_t end = fr[i].addr + fr[i].len;
		uint32_t seg = fr[i].seg;

		if (at < fr[i].addr || at + size > end || at + size < at)
			continue;
		if (at > fr[i].addr) {
			fr[i].len = at - fr[i].addr;
			free_add(at + size, end - at - size, seg);
		} else {
			fr[i] = fr[--nfr];
			free_add(at + size, end - at - size, seg);
		}
		if (seg != NO_SEG)
			segs[seg].used += size;
		return at;
	}
	return 0;
}

/*
 * Where a new segment of size bytes goes: a hole at least that big (the
 * entry is reused; what is left of the hole becomes a hole of its own
 * when there is an entry for it), else the top of the range.  Returns
 * the address with *slot its entry (a new one: *slot == nsegs), or 0.
 */
static uintptr_t seg_place(uint64_t size, unsigned *slot)
{
	unsigned n = nsegs;

	for (unsigned i = 0; i < n; i++) {
		if (segs[i].fd >= 0 || segs[i].size < size)
			continue;
		if (segs[i].size > size && n < MH_SEGS_MAX) {
			segs[n].addr = segs[i].addr + size;
			segs[n].size = segs[i].size - size;
			segs[n].fd = -1;
			__atomic_store_n(&nsegs, n + 1, __ATOMIC_RELEASE);
		}
		segs[i].size = size;
		*slot = i;
		return segs[i].addr;
	}
	if (n >= MH_SEGS_MAX || rg.top + size > rg.base + MH_RESERVE)
		return 0;
	*slot = n;
	return rg.top;
}

/*
 * Lease at least bytes and map them in the pool range, their range added
 * to the free ranges (caller holds region_lock).  0, or -errno:
 * -ENOSPC/-EDQUOT refused, other: no daemon or a broken connection
 * (dropped).  A failure sets the back-off (rg.retry_ms) that ext_alloc
 * honours.
 */
static int lease(uint64_t bytes)
{
	struct ctl_mem_lease m = { .bytes = bytes };
	unsigned char body[CTL_MAX_BODY];
	struct ctl_mem_seg seg;
	struct ctl_hdr h;
	uintptr_t at;
	unsigned slot;
	void *p;
	int fd, err;

	/* A connection that broke since the last lease (ubsd restarted) is
	 * found broken by this request: once more on a new one. */
	for (int tries = 0;; tries++) {
		if (rg.fd < 0) {
			err = conn_open();
			rg.sess++;
			if (!err)
				err = conn_hello();
			if (!err && rg.leased)
				err = claim();
			if (err)
				goto fail;
			if (pol.page.base)
				policy_remap();
		}
		err = conn_send(CTL_REQ_MEM_LEASE, &m, sizeof(m));
		if (!err)
			err = conn_recv(&h, body, &fd);
		if (!err)
			break;
		conn_close();
		if (tries)
			goto fail;
	}
	if (h.type == CTL_R_ERROR) {
		struct ctl_error e;

		memcpy(&e, body, sizeof(e));
		if (fd >= 0)
			syscall(SYS_close, fd);
		ubs_dbg("memhooks: lease of %llu bytes refused: %s",
			(unsigned long long)bytes, e.msg);
		rg.retry_ms = now_ms() + LEASE_BACKOFF_MS;
		return -e.err;
	}
	memcpy(&seg, body, sizeof(seg));
	if (h.type != CTL_R_MEM_SEG || fd < 0 || seg.size < bytes ||
	    seg.size % MH_ALIGN) {
		if (fd >= 0)
			syscall(SYS_close, fd);
		err = -EPROTO;
		goto fail;
	}
	at = seg_place(seg.size, &slot);
	p = at ? mmap((void *)at, seg.size, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_FIXED, fd, 0) : MAP_FAILED;
	err = p == MAP_FAILED ? (at ? -errno : -ENOSPC) : 0;
	if (p == MAP_FAILED) {
		struct ctl_mem_ref r = { .seg_id = seg.seg_id };

		syscall(SYS_close, fd);
		/* MAP_FIXED may have unmapped the reservation there. */
		if (at)
			mmap((void *)at, seg.size, PROT_NONE, MAP_PRIVATE |
			     MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
		/* Not ours after all: give it back (the reply is read and
		 * dropped; a broken connection ends the lease anyway). */
		if (conn_send(CTL_REQ_MEM_RETURN, &r, sizeof(r)) == 0 &&
		    conn_recv(&h, body, &fd) == 0 && fd >= 0)
			syscall(SYS_close, fd);
		rg.retry_ms = now_ms() + LEASE_BACKOFF_MS;
		return err;
	}
	segs[slot].addr = at;
	segs[slot].size = seg.size;
	segs[slot].sess = rg.sess;
	segs[slot].id = seg.seg_id;
	segs[slot].used = 0;
	segs[slot].huge = seg.flags & CTL_MEM_HUGE;
	__atomic_store_n(&segs[slot].fd, ubs_fd_high(fd), __ATOMIC_RELEASE);
	if (slot == nsegs) {
		__atomic_store_n(&nsegs, slot + 1, __ATOMIC_RELEASE);
		rg.top = at + seg.size;
	}
	free_add(at, seg.size, slot);
	rg.leased += seg.size;
	ubs_stats_add(UBS_STAT_MEM_POOL_LEASED, seg.size);
	ubs_dbg("memhooks: leased %llu bytes (segment %llu%s)",
		(unsigned long long)seg.size, (unsigned long long)seg.seg_id,
		seg.flags & CTL_MEM_HUGE ? ", hugepages" : "");
	return 0;
fail:
	conn_close();
	rg.retry_ms = now_ms() + LEASE_BACKOFF_MS;
	return err;
}

/* ------------------------------------------------------------ extent hooks */

static inline uintptr_t align_up(uintptr_t v, uintptr_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/*
 * jemalloc grows an arena by asking for more than it needs (2 MiB and
 * more, page aligned, sizes of its page-size series) and keeps the rest
 * as "retained" ranges that it never hands back: a segment holding one
 * would never come back whole.  Such a call is refused once; jemalloc
 * then asks for exactly the extent it needs (extent_alloc_wrapper, the
 * next call in the same thread), which is served.  A request of exactly
 * such a size (a large block with jemalloc's cache-oblivious padding off)
 * is served at its second ask the same way, or falls back.
 */
static UBS_TLS bool grow_refused;

static bool looks_like_growth(size_t size, size_t alignment)
{
	unsigned lg;

	if (alignment != 4096 || size < MH_ALIGN)
		return false;
	lg = 63u - (unsigned)__builtin_clzl(size);
	return (size & ((1ul << (lg - 2)) - 1)) == 0;
}

static void *ext_alloc(extent_hooks_t *hk, void *new_addr, size_t size,
		       size_t alignment, bool *zero, bool *commit,
		       unsigned arena)
{
	uintptr_t at;
	void *ret = NULL;

	(void)hk;
	(void)arena;
	if (new_addr || !size)
		return NULL;            /* no growth in place */
	if (looks_like_growth(size, alignment) && !grow_refused) {
		grow_refused = true;
		return NULL;
	}
	grow_refused = false;
	if (alignment < 4096)
		alignment = 4096;
	pthread_mutex_lock(&rg.lock);
	at = free_take(size, alignment);
	if (!at) {
		/* Segments start 2 MiB aligned: more only for more. */
		uint64_t need = size + (alignment > MH_ALIGN ?
					alignment - MH_ALIGN : 0);
		uint64_t ask = align_up(need, MH_ALIGN);

		if (rg.retry_ms && now_ms() < rg.retry_ms)
			goto out;       /* refused a moment ago */
		rg.retry_ms = 0;
		if (ask < MH_CHUNK && lease(MH_CHUNK) == 0)
			;
		else if (lease(ask) < 0)
			goto out;
		at = free_take(size, alignment);
		if (!at)
			goto out;
	}
	ret = (void *)at;
	/* Fresh from a lease, or punched out when it came back: zero. */
	*zero = true;
	*commit = true;
out:
	pthread_mutex_unlock(&rg.lock);
	return ret;
}

/* The live segment holding [addr, addr+size), or -1. */
static int seg_of(uintptr_t addr, size_t size)
{
	for (unsigned i = 0; i < nsegs; i++)
		if (segs[i].fd >= 0 && addr - segs[i].addr < segs[i].size)
			return size <= segs[i].size - (addr - segs[i].addr) ?
			       (int)i : -1;
	return -1;
}

/*
 * Give segment i back to ubsd (caller holds region_lock; its use is 0):
 * its range becomes a hole again (PROT_NONE), its free ranges go, ubsd
 * is told (MEM_RETURN, in the session that leased it; a segment of a
 * daemon before a restart is counted in a claim and only unmapped).
 */
static void seg_return(unsigned i)
{
	struct ctl_mem_ref r = { .seg_id = segs[i].id };
	unsigned char body[CTL_MAX_BODY];
	struct ctl_hdr h;
	int fd = segs[i].fd;

	for (unsigned k = 0; k < nfr;)
		if (fr[k].seg == i)
			fr[k] = fr[--nfr];
		else
			k++;
	mmap((void *)segs[i].addr, segs[i].size, PROT_NONE, MAP_PRIVATE |
	     MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
	__atomic_store_n(&segs[i].fd, -1, __ATOMIC_RELEASE);
	ubs_fd_release(fd);
	rg.leased -= segs[i].size;
	ubs_stats_add(UBS_STAT_MEM_POOL_LEASED, -(uint64_t)segs[i].size);
	if (rg.fd >= 0 && segs[i].sess == rg.sess) {
		if (conn_send(CTL_REQ_MEM_RETURN, &r, sizeof(r)) < 0 ||
		    conn_recv(&h, body, &fd) < 0)
			conn_close();   /* the next lease reconnects */
		else if (fd >= 0)
			syscall(SYS_close, fd);
	}
	ubs_dbg("memhooks: returned %llu bytes (segment %llu)",
		(unsigned long long)segs[i].size,
		(unsigned long long)segs[i].id);
}

/*
 * jemalloc is done with an extent (its decay, or a purge memhooks asked
 * for): its pages are punched out and its range is free again; a segment
 * left with nothing in use goes back to ubsd.  An extent that is not in
 * a live segment (a fork child's private copy) is kept by jemalloc
 * (true), as is one whose pages cannot be punched whole.
 */
static bool ext_dalloc(extent_hooks_t *hk, void *addr, size_t size,
		       bool committed, unsigned arena)
{
	int i;

	(void)hk, (void)committed, (void)arena;
	pthread_mutex_lock(&rg.lock);
	i = seg_of((uintptr_t)addr, size);
	/* A hugepage segment punches whole hugepages only (the rest of the
	 * range would keep its bytes). */
	if (i < 0 || segs[i].used < size ||
	    (segs[i].huge && (((uintptr_t)addr | size) & (MH_ALIGN - 1))) ||
	    madvise(addr, size, MADV_REMOVE) < 0) {
		pthread_mutex_unlock(&rg.lock);
		return true;
	}
	segs[i].used -= size;
	if (segs[i].used == 0)
		seg_return((unsigned)i);
	else
		free_add((uintptr_t)addr, size, (uint32_t)i);
	pthread_mutex_unlock(&rg.lock);
	return false;
}

static bool ext_split(extent_hooks_t *hk, void *addr, size_t size,
		      size_t a, size_t b, bool committed, unsigned arena)
{
	(void)hk, (void)addr, (void)size, (void)a, (void)b, (void)committed;
	(void)arena;
	return false;
}

/* Extents of two segments stay apart (true): each segment must come back
 * to the dalloc hook on its own. */
static bool ext_merge(extent_hooks_t *hk, void *a, size_t as, void *b,
		      size_t bs, bool committed, unsigned arena)
{
	bool apart;

	(void)hk, (void)committed, (void)arena;
	pthread_mutex_lock(&rg.lock);
	apart = seg_of((uintptr_t)a, as) != seg_of((uintptr_t)b, bs);
	pthread_mutex_unlock(&rg.lock);
	return apart;
}

static void ext_destroy(extent_hooks_t *hk, void *addr, size_t size,
			bool committed, unsigned arena)
{
	(void)hk, (void)addr, (void)size, (void)committed, (void)arena;
}

/* Pages are always committed: commit succeeds, decommit and the purges
 * opt out (true), so jemalloc keeps the pages as they are. */
static bool ext_commit(extent_hooks_t *hk, void *addr, size_t size,
		       size_t off, size_t len, unsigned arena)
{
	(void)hk, (void)addr, (void)size, (void)off, (void)len, (void)arena;
	return false;
}

static bool ext_keep(extent_hooks_t *hk, void *addr, size_t size,
		     size_t off, size_t len, unsigned arena)
{
	(void)hk, (void)addr, (void)size, (void)off, (void)len, (void)arena;
	return true;
}

static extent_hooks_t hooks = {
	.alloc = ext_alloc,
	.dalloc = ext_dalloc,
	.destroy = ext_destroy,
	.commit = ext_commit,
	.decommit = ext_keep,
	.purge_lazy = ext_keep,
	.purge_forced = ext_keep,
	.split = ext_split,
	.merge = ext_merge,
};

/* ------------------------------------------------------------ the pool */

void *mh_pool_alloc(size_t n, size_t align, bool zero)
{
	void *p;
	int f;

	if (in_pool || !je.mallocx)
		return NULL;
	in_pool = true;
	f = my_arena() | (zero ? MALLOCX_ZERO : 0) |
	    (align ? MALLOCX_LG_ALIGN(__builtin_ctzl(align)) : 0);
	p = je.mallocx(n, f);
	if (p) {
		size_t u = je.sallocx(p, 0);

		__atomic_fetch_add(&live_bytes, u, __ATOMIC_RELAXED);
		__atomic_fetch_add(&live_allocs, 1, __ATOMIC_RELAXED);
		ubs_stats_add(UBS_STAT_MEM_POOL_ALLOCS, 1);
		ubs_stats_add(UBS_STAT_MEM_POOL_BYTES, u);
	}
	in_pool = false;
	return p;
}

/*
 * Pool memory freed but still leased is given back at jemalloc's pace (its
 * decay, 10 s by default, run as the arena is used).  Sooner when much
 * of the lease lies idle: every MH_CHUNK bytes freed, if the bytes leased
 * beyond the live ones exceed both 2 * MH_CHUNK and the live ones, the
 * pool arenas are purged (at most once per PURGE_MS): every free extent
 * goes to ext_dalloc, and wholly free segments back to ubsd.
 */
#define PURGE_MS 1000
static uint64_t freed_since, next_purge_ms;

__attribute__((noinline)) static void maybe_purge(void)
{
	uint64_t live = __atomic_load_n(&live_bytes, __ATOMIC_RELAXED);
	uint64_t leased = __atomic_load_n(&rg.leased, __ATOMIC_RELAXED);
	uint64_t now, next;
	size_t mib[3];

	__atomic_store_n(&freed_since, 0, __ATOMIC_RELAXED);
	if (!je.mallctlbymib || leased < live ||
	    leased - live <= 2 * MH_CHUNK || leased - live <= live)
		return;
	now = now_ms();
	next = __atomic_load_n(&next_purge_ms, __ATOMIC_RELAXED);
	if (now < next || !__atomic_compare_exchange_n(&next_purge_ms, &next,
						       now + PURGE_MS, false,
						       __ATOMIC_RELAXED,
						       __ATOMIC_RELAXED))
		return;                 /* soon again, or another thread */
	memcpy(mib, je.purge_mib, sizeof(mib));
	for (unsigned i = 0; i < MH_ARENAS_MAX; i++) {
		int f = __atomic_load_n(&arenas.flags[i], __ATOMIC_ACQUIRE);

		if (!f)
			continue;
		mib[1] = ((unsigned)f >> 20) - 1;
		je.mallctlbymib(mib, 3, NULL, NULL, NULL, 0);
	}
}

void mh_pool_free(void *p)
{
	size_t u;
	bool nested = in_pool;

	in_pool = true;
	u = je.sallocx(p, 0);
	__atomic_fetch_sub(&live_bytes, u, __ATOMIC_RELAXED);
	__atomic_fetch_sub(&live_allocs, 1, __ATOMIC_RELAXED);
	ubs_stats_add(UBS_STAT_MEM_POOL_BYTES, -(uint64_t)u);
	je.dallocx(p, MALLOCX_TCACHE_NONE);
	if (__builtin_expect(__atomic_add_fetch(&freed_since, u,
						__ATOMIC_RELAXED) >= MH_CHUNK,
			     0) && !nested)
		maybe_purge();
	in_pool = nested;
}

void *mh_pool_realloc(void *p, size_t n)
{
	size_t old, u;
	void *q;

	if (in_pool)
		return NULL;
	in_pool = true;
	old = je.sallocx(p, 0);
	q = je.rallocx(p, n, my_arena());
	if (q) {
		u = je.sallocx(q, 0);
		__atomic_fetch_add(&live_bytes, u - old, __ATOMIC_RELAXED);
		ubs_stats_add(UBS_STAT_MEM_POOL_BYTES, u - old);
	}
	in_pool = false;
	return q;
}

size_t mh_pool_usable(void *p)
{
	return je.sallocx(p, 0);
}

int mh_pool_segment(const void *p, size_t len, int *fd, uint64_t *off)
{
	uintptr_t a = (uintptr_t)p;
	unsigned n = __atomic_load_n(&nsegs, __ATOMIC_ACQUIRE);

	if (!mh_is_pool(p))
		return -ENOENT;
	for (unsigned i = 0; i < n; i++) {
		int f = __atomic_load_n(&segs[i].fd, __ATOMIC_ACQUIRE);

		if (f < 0 || a - segs[i].addr >= segs[i].size)
			continue;
		if (len > segs[i].size - (a - segs[i].addr))
			return -ERANGE;
		*fd = f;
		*off = a - segs[i].addr;
		return 0;
	}
	return -ENOENT;
}

void mh_fallback(void)
{
	ubs_stats_add(UBS_STAT_MEM_FALLBACKS, 1);
}

/* ------------------------------------------------------------ fork */

/*
 * prepare runs before jemalloc's (handlers registered later run first),
 * so it must not take region_lock: a thread inside the extent hook holds
 * jemalloc's locks and waits for region_lock, and jemalloc's prepare
 * waits for those.  A lease in flight in another thread at the fork is
 * harmless: the child copies the segments its copy of segs[] lists,
 * drops the connection and re-initialises the lock.
 */
static void fork_prepare(void)
{
	if (syscall(SYS_pipe2, rg.fork_pipe, O_CLOEXEC) < 0)
		rg.fork_pipe[0] = rg.fork_pipe[1] = -1;
}

static void fork_parent(void)
{
	char c;

	if (rg.fork_pipe[1] >= 0) {
		syscall(SYS_close, rg.fork_pipe[1]);
		/* The child's byte, or EOF if there is no child (fork
		 * failed) or it died copying. */
		while (syscall(SYS_read, rg.fork_pipe[0], &c, 1) < 0 &&
		       errno == EINTR)
			;
		syscall(SYS_close, rg.fork_pipe[0]);
	}
	rg.fork_pipe[0] = rg.fork_pipe[1] = -1;
}

/*
 * In the child: replace the shared pool mappings by private copies at the
 * same addresses.  Pages the segment never had are left out (mincore):
 * they read as zeros in the anonymous copy too.
 */
static void fork_child(void)
{
	static unsigned char vec[4096];
	const size_t pg = 4096, step = sizeof(vec) * pg;
	char c = 1;

	/* The live segments only: holes are private PROT_NONE already. */
	for (unsigned k = 0; k < nsegs; k++)
	for (uintptr_t a = segs[k].addr, e = a + segs[k].size;
	     segs[k].fd >= 0 && a < e; a += step) {
		size_t len = e - a < step ? e - a : step;
		void *tmp = mmap(NULL, len, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (tmp == MAP_FAILED)
			abort();        /* cannot keep fork's meaning */
		if (mincore((void *)a, len, vec) < 0)
			memset(vec, 1, sizeof(vec));
		for (size_t i = 0; i < len / pg; i++)
			if (vec[i] & 1)
				memcpy((char *)tmp + i * pg,
				       (const char *)a + i * pg, pg);
		if (mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
			   (void *)a) == MAP_FAILED)
			abort();
	}
	if (rg.fork_pipe[1] >= 0) {
		syscall(SYS_write, rg.fork_pipe[1], &c, 1);
		syscall(SYS_close, rg.fork_pipe[1]);
		syscall(SYS_close, rg.fork_pipe[0]);
	}
	rg.fork_pipe[0] = rg.fork_pipe[1] = -1;
	/* The parent's session and segments are the parent's: the child's
	 * copy is private memory. */
	for (unsigned i = 0; i < nsegs; i++)
		if (segs[i].fd >= 0)
			ubs_fd_release(segs[i].fd);
	nsegs = 0;
	/* What was free in them is private memory now: still carved from,
	 * never returned. */
	for (unsigned i = 0; i < nfr; i++)
		fr[i].seg = NO_SEG;
	conn_close();
	rg.retry_ms = 0;
	rg.leased = 0;                  /* the inherited range is private */
	ubs_stats_add(UBS_STAT_MEM_POOL_BYTES,
		      __atomic_load_n(&live_bytes, __ATOMIC_RELAXED));
	pthread_mutex_init(&rg.lock, NULL);
	pthread_mutex_init(&arenas.lock, NULL);
}

/* ------------------------------------------------------------ init */

/* N[K|M|G] from the environment, or def. */
static uint64_t env_size(const char *name, uint64_t def)
{
	const char *v = secure_getenv(name);
	char *end;
	unsigned long long n;

	if (!v || !*v)
		return def;
	n = strtoull(v, &end, 10);
	switch (*end) {
	case 'k': case 'K': n <<= 10; end++; break;
	case 'm': case 'M': n <<= 20; end++; break;
	case 'g': case 'G': n <<= 30; end++; break;
	}
	return *end ? def : n;
}

/*
 * Ask for the policy page on the open connection (a session or not) and
 * map it into *page (its fd closed: the mapping is all memhooks reads).
 * 0 or -errno.  No allocation: also used from the lease path.
 */
static int policy_page(struct ubt_seg *page, int ms)
{
	unsigned char body[CTL_MAX_BODY];
	struct ctl_hdr h;
	int fd;

	*page = (struct ubt_seg){ .fd = -1 };
	if (conn_send(CTL_REQ_POLICY_FD, NULL, 0) < 0 ||
	    conn_recv_ms(&h, body, &fd, ms) < 0)
		return -EPIPE;
	if (h.type != CTL_R_POLICY || fd < 0 || pp_map(page, fd) < 0) {
		if (fd >= 0)
			syscall(SYS_close, fd);
		return -EPROTO;
	}
	syscall(SYS_close, page->fd);
	page->fd = -1;
	return 0;
}

/* The service's mem_pool_min from the policy page (0 = off), and its
 * mem_sites into sites[n] ("" for any caller), asked on the open
 * connection without a session.  The page stays mapped in pol.page
 * while the threshold says on (the pool follows it); else unmapped. */
static uint32_t policy_min(char *sites, size_t n)
{
	struct ubs_svc_policy p;
	uint64_t gen;

	if (policy_page(&pol.page, POLICY_IO_MS) < 0)
		return 0;
	gen = pp_generation(&pol.page);
	if (pp_lookup_hint(&pol.page, ubs_config.service, &p,
			   &pol.hint) < 0)
		p.mem_pool_min = 0;
	if (!p.mem_pool_min) {
		ubt_seg_unmap(&pol.page);
		pol.page.base = NULL;
		return 0;
	}
	pol.seen = gen;
	p.mem_sites[sizeof(p.mem_sites) - 1] = '\0';  /* the page is shared */
	snprintf(sites, n, "%s", p.mem_sites);
	return p.mem_pool_min;
}

/* Apply threshold min (0: off) to the router. */
static void policy_apply(uint32_t min)
{
	size_t m = min ? min : SIZE_MAX;

	__atomic_store_n(&pol.min, m, __ATOMIC_RELAXED);
	__atomic_store_n(&mh_hot.min,
			 pol.page.base && m > MH_PEEK ? MH_PEEK : m,
			 __ATOMIC_RELEASE);
}

/*
 * The page changed since pol.seen: read the service's record again and
 * apply its mem_pool and mem_sites.  No syscall, lock or allocation (a
 * seqlock read of shared memory, names resolved against the objects
 * listed at init); threads that race here apply the same record.
 */
__attribute__((noinline)) static void policy_refresh(uint64_t gen)
{
	struct ubs_svc_policy p;
	uint32_t hint = __atomic_load_n(&pol.hint, __ATOMIC_RELAXED);

	if (pp_lookup_hint(&pol.page, ubs_config.service, &p, &hint) < 0)
		return;                 /* a writer inside: next time */
	__atomic_store_n(&pol.hint, hint, __ATOMIC_RELAXED);
	policy_apply(p.mem_pool_min);
	p.mem_sites[sizeof(p.mem_sites) - 1] = '\0';
	if (!pol.sites_env && !mh_sites_set(p.mem_sites))
		return;                 /* another thread is at it: again */
	__atomic_store_n(&pol.seen, gen, __ATOMIC_RELEASE);
}

bool mh_pool_wants(size_t n)
{
	if (pol.page.base) {
		uint64_t gen = pp_generation(&pol.page);

		if (__builtin_expect(gen !=
				     __atomic_load_n(&pol.seen,
						     __ATOMIC_RELAXED), 0))
			policy_refresh(gen);
	}
	return n >= __atomic_load_n(&pol.min, __ATOMIC_RELAXED);
}

/* A new pool arena (caller in_pool): its mallocx flags, 0 on failure. */
static int arena_new(void)
{
	extent_hooks_t *hp = &hooks;
	unsigned ind;
	size_t sz = sizeof(ind), lim = MH_CHUNK;
	char name[64];

	if (je.mallctl("arenas.create", &ind, &sz, &hp, sizeof(hp)) != 0)
		return 0;
	/* Grow by at most one lease at a time: a quota refuses big asks. */
	snprintf(name, sizeof(name), "arena.%u.retain_grow_limit", ind);
	je.mallctl(name, NULL, NULL, &lim, sizeof(lim));
	return MALLOCX_ARENA(ind) | MALLOCX_TCACHE_NONE;
}

/* Load jemalloc (the program's instance if it has one).  0 or -1. */
static int je_load(void)
{
	void *h = dlopen("libjemalloc.so.2", RTLD_NOW | RTLD_LOCAL);

	if (!h) {
		/* Mostly: no static TLS left for jemalloc's 2.6 KiB. */
		ubs_err("memhooks: no pool: %s (start the program with "
			"GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096, "
			"as ubsrun does)", dlerror());
		return -1;
	}
	*(void **)&je.mallocx = dlsym(h, "mallocx");
	*(void **)&je.dallocx = dlsym(h, "dallocx");
	*(void **)&je.sallocx = dlsym(h, "sallocx");
	*(void **)&je.rallocx = dlsym(h, "rallocx");
	*(void **)&je.mallctl = dlsym(h, "mallctl");
	*(void **)&je.mallctlnametomib = dlsym(h, "mallctlnametomib");
	*(void **)&je.mallctlbymib = dlsym(h, "mallctlbymib");
	if (je.mallctlnametomib && je.mallctlbymib) {
		size_t n = 3;

		if (je.mallctlnametomib("arena.0.purge", je.purge_mib, &n) ||
		    n != 3)
			je.mallctlbymib = NULL;
	}
	if (!je.mallocx || !je.dallocx || !je.sallocx || !je.rallocx ||
	    !je.mallctl) {
		ubs_info("memhooks: no pool: libjemalloc.so.2 lacks mallocx");
		je.mallocx = NULL;
		return -1;
	}
	return 0;
}

/* Make the first pool arena (leases its metadata).  0 or -1. */
static int je_arena(void)
{
	in_pool = true;
	je.flags = arena_new();
	in_pool = false;
	if (!je.flags) {
		ubs_info("memhooks: no pool: arenas.create failed");
		return -1;
	}
	arenas.flags[0] = je.flags;
	arenas.max = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	if (arenas.max < 1)
		arenas.max = 1;
	if (arenas.max > MH_ARENAS_MAX)
		arenas.max = MH_ARENAS_MAX;
	return 0;
}

void mh_init(void)
{
	char sites[UBS_MEM_SITES_MAX] = "";
	const char *v = secure_getenv("UBS_MEM_POOL");
	uint64_t min = 0;
	void *res;

	if (ubs_config.disabled || mh_resolve() < 0)
		return;
	if (v && (!strcmp(v, "0") || !strcmp(v, "off")))
		return;
	if (conn_open() < 0) {
		if (v)
			ubs_info("memhooks: no pool: ubsd not reachable");
		return;
	}
	if (v && (!strcmp(v, "1") || !strcmp(v, "on")))
		min = env_size("UBS_MEM_MIN", MH_MIN_DEFAULT);
	else
		min = policy_min(sites, sizeof(sites));
	if (min == 0 || je_load() < 0 || conn_hello() < 0) {
		je.mallocx = NULL;
		conn_close();
		if (pol.page.base) {
			ubt_seg_unmap(&pol.page);
			pol.page.base = NULL;
		}
		return;
	}
	res = mmap(NULL, MH_RESERVE + MH_ALIGN, PROT_NONE, MAP_PRIVATE |
		   MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED) {
		conn_close();
		return;
	}
	rg.base = align_up((uintptr_t)res, MH_ALIGN);
	rg.top = rg.base;
	/* The pool range is set before the arena exists: jemalloc's own
	 * metadata for it comes from the hooks too, and never reaches
	 * free(). */
	mh_hot.lo = rg.base;
	__atomic_store_n(&mh_hot.len, MH_RESERVE, __ATOMIC_RELEASE);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
	if (je_arena() < 0) {
		je.mallocx = NULL;
		conn_close();
		return;                 /* range stays: nothing is in it */
	}
	/* Call sites: the environment's list over the service's (which is
	 * followed, as mem_pool is). */
	v = secure_getenv("UBS_MEM_SITES");
	pol.sites_env = v && *v;
	mh_sites_init(pol.sites_env ? v : sites);
	policy_apply((uint32_t)(min < UINT32_MAX ? min : UINT32_MAX));
	ubs_info("memhooks: pool on, allocations of %llu bytes and more%s",
		 (unsigned long long)min, pol.page.base ?
		 " (the service's policy, followed)" : "");
}

/* SPDX-License-Identifier: MIT */
/*
 * mh.h - memhooks' private interface between the router (malloc.c: the
 * interposed malloc family, the bootstrap arena) and the pool (pool.c:
 * jemalloc arena on leased segments, leases, fork).  See README.md.
 */
#ifndef UBS_MH_H
#define UBS_MH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The allocator the program would have used (dlsym(RTLD_NEXT)). */
struct mh_real {
	void *(*malloc)(size_t);
	void (*free)(void *);
	void *(*calloc)(size_t, size_t);
	void *(*realloc)(void *, size_t);
	void *(*reallocarray)(void *, size_t, size_t);
	int (*posix_memalign)(void **, size_t, size_t);
	void *(*aligned_alloc)(size_t, size_t);
	void *(*memalign)(size_t, size_t);
	void *(*valloc)(size_t);
	void *(*pvalloc)(size_t);
	size_t (*malloc_usable_size)(void *);
};

/*
 * What the malloc path reads, in one cache line: the router's threshold
 * (SIZE_MAX while the pool is off: the one branch of a small malloc; at
 * most 128 KiB while a pool that follows the service's policy is up,
 * mh_pool_wants having the last word) and the pool's virtual range
 * [lo, lo + len) (len 0 while off).
 */
struct mh_hot {
	size_t min;                     /* allocations >= min go to the pool */
	uintptr_t lo;
	uintptr_t len;
};

extern struct mh_real mh_real;
extern struct mh_hot mh_hot;

static inline bool mh_is_pool(const void *p)
{
	return (uintptr_t)p - mh_hot.lo < mh_hot.len;
}

/*
 * Call-site policy (sites.c): when on, a pool allocation must also come
 * from one of these code ranges: the return address of the interposed
 * call, or one of its callers' up to MH_SITES_DEPTH frames in all.
 * Replaced whole (mh_sites_set) when the policy changes: readers load
 * mh_sites_cur once per check.
 */
#define MH_SITES_MAX 64
#define MH_SITES_DEPTH 8
struct mh_sites {
	bool on;
	unsigned n;
	struct {
		uintptr_t lo, len;
	} r[MH_SITES_MAX];
};

extern struct mh_sites *mh_sites_cur;

/* List the loaded objects and resolve spec (comma-separated functions and
 * libraries; "" = every caller).  At init, outside malloc. */
void mh_sites_init(const char *spec);

/* Resolve a new spec against the objects listed at init and make it the
 * policy: no lock, allocation or syscall (callable inside malloc).  false
 * if another thread is doing it (try again later). */
bool mh_sites_set(const char *spec);

/* Walk up from ra's callers (ra itself is in no range of t). */
bool mh_site_deep(const struct mh_sites *t, const void *ra);

/* May an allocation called from ra go to the pool?  The direct caller is
 * compared first; only when it is in no range are its callers walked. */
static inline bool mh_site_ok(const void *ra)
{
	const struct mh_sites *t = __atomic_load_n(&mh_sites_cur,
						   __ATOMIC_ACQUIRE);
	unsigned n;

	if (!t->on)
		return true;
	n = t->n < MH_SITES_MAX ? t->n : MH_SITES_MAX;
	for (unsigned i = 0; i < n; i++)
		if ((uintptr_t)ra - t->r[i].lo < t->r[i].len)
			return true;
	return mh_site_deep(t, ra);
}

/* Does the service's policy, as it is now, send n bytes to the pool?
 * Called on the pool path only (n >= mh_hot.min): it looks at the policy
 * page's generation and reads the record again when it changed. */
bool mh_pool_wants(size_t n);

/* Pool allocation of n bytes (align 0: natural; zero: calloc).  NULL when
 * the pool cannot serve it (the caller falls back and counts it). */
void *mh_pool_alloc(size_t n, size_t align, bool zero);
void mh_pool_free(void *p);
void *mh_pool_realloc(void *p, size_t n);
size_t mh_pool_usable(void *p);
/*
 * The segment holding [p, p+len) of pool memory, for sharing it by fd
 * (with the verbs and socket shims): 0 with *fd (the library's own,
 * do not close) and *off, -ENOENT when p is not pool memory (or was
 * inherited over fork: private then), -ERANGE when the range spans two
 * segments.
 */
int mh_pool_segment(const void *p, size_t len, int *fd, uint64_t *off);

/* A pool allocation could not be served: counted. */
void mh_fallback(void);

/* Resolve mh_real (idempotent).  0, or -1 from a nested call made while
 * resolving (the caller serves it from the bootstrap arena). */
int mh_resolve(void);

/* Preload constructor: read the policy, bring the pool up if it is on. */
void mh_init(void);

#endif /* UBS_MH_H */

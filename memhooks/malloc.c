/* SPDX-License-Identifier: MIT */
/*
 * malloc.c - the interposed malloc family: a router.
 *
 * Each entry point is a dispatch.  With the pool off, an allocation costs
 * one compare against mh_hot.min (SIZE_MAX) and a tail call to the
 * program's own allocator; free, realloc and malloc_usable_size compare
 * the address against the pool range (empty) and the bootstrap arena.
 * With the pool on, allocations of at least mh_hot.min bytes go to the
 * pool (pool.c); when it cannot serve one, the program's allocator does
 * and the fallback is counted: never NULL where it would have succeeded.
 *
 * Bootstrap: mh_real starts out pointing at the boot_* functions, which
 * resolve the table with dlsym(RTLD_NEXT) on first use.  dlsym itself may
 * allocate: such nested calls are served from a static bump arena, whose
 * blocks are never freed (free of one does nothing; realloc copies out).
 */
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"
#include "mh.h"

#define BOOT_SIZE (256u << 10)          /* bootstrap arena */
#define BOOT_HDR  16u                   /* size stored before each block */

static void *boot_malloc(size_t n);
static void boot_free(void *p);
static void *boot_calloc(size_t a, size_t b);
static void *boot_realloc(void *p, size_t n);
static size_t boot_usable(void *p);

struct mh_real mh_real = {
	.malloc = boot_malloc,
	.free = boot_free,
	.calloc = boot_calloc,
	.realloc = boot_realloc,
	.malloc_usable_size = boot_usable,
};
struct mh_hot mh_hot __attribute__((aligned(64))) = { .min = SIZE_MAX };

static struct {
	_Alignas(64) unsigned char mem[BOOT_SIZE];
	size_t used;                    /* atomic */
} boot;

static bool mh_resolved;                /* mh_real is the program's */
static pthread_mutex_t resolve_lock = PTHREAD_MUTEX_INITIALIZER;
static UBS_TLS bool resolving;          /* this thread is in mh_resolve */

static inline bool is_boot(const void *p)
{
	return (uintptr_t)p - (uintptr_t)boot.mem < BOOT_SIZE;
}

/* A block of the bootstrap arena (aligned to align >= 16), or NULL with
 * ENOMEM when it is used up. */
static void *boot_alloc(size_t n, size_t align)
{
	size_t old = __atomic_load_n(&boot.used, __ATOMIC_RELAXED), start,
	       end;

	if (align < BOOT_HDR)
		align = BOOT_HDR;
	do {
		start = (old + BOOT_HDR + align - 1) & ~(align - 1);
		if (n > BOOT_SIZE || start + n > BOOT_SIZE) {
			errno = ENOMEM;
			return NULL;
		}
		end = (start + n + 15) & ~(size_t)15;
	} while (!__atomic_compare_exchange_n(&boot.used, &old, end, false,
					      __ATOMIC_RELAXED,
					      __ATOMIC_RELAXED));
	memcpy(boot.mem + start - sizeof(size_t), &n, sizeof(n));
	return boot.mem + start;            /* never used before: zero */
}

static size_t boot_size(const void *p)
{
	size_t n;

	memcpy(&n, (const unsigned char *)p - sizeof(size_t), sizeof(n));
	return n;
}

int mh_resolve(void)
{
	struct mh_real r;

	if (__atomic_load_n(&mh_resolved, __ATOMIC_ACQUIRE))
		return 0;
	if (resolving)
		return -1;
	resolving = true;
	pthread_mutex_lock(&resolve_lock);
	if (!mh_resolved) {
#define MH_RESOLVE(fn) r.fn = (__typeof__(r.fn))dlsym(RTLD_NEXT, #fn);
		MH_RESOLVE(malloc) MH_RESOLVE(free) MH_RESOLVE(calloc)
		MH_RESOLVE(realloc) MH_RESOLVE(reallocarray)
		MH_RESOLVE(posix_memalign) MH_RESOLVE(aligned_alloc)
		MH_RESOLVE(memalign) MH_RESOLVE(valloc) MH_RESOLVE(pvalloc)
		MH_RESOLVE(malloc_usable_size)
#undef MH_RESOLVE
		/* Without the core four nothing works: stay on the arena. */
		if (r.malloc && r.free && r.calloc && r.realloc) {
			mh_real = r;
			__atomic_store_n(&mh_resolved, true, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&resolve_lock);
	resolving = false;
	return mh_resolved ? 0 : -1;
}

static void *boot_malloc(size_t n)
{
	return mh_resolve() == 0 ? mh_real.malloc(n) : boot_alloc(n, 16);
}

static void boot_free(void *p)
{
	if (!p || is_boot(p))
		return;
	if (mh_resolve() == 0)
		mh_real.free(p);
}

static void *boot_calloc(size_t a, size_t b)
{
	size_t n;

	if (mh_resolve() == 0)
		return mh_real.calloc(a, b);
	if (__builtin_mul_overflow(a, b, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	return boot_alloc(n, 16);
}

static void *boot_realloc(void *p, size_t n)
{
	return mh_resolve() == 0 ? mh_real.realloc(p, n) : NULL;
}

static size_t boot_usable(void *p)
{
	return mh_resolve() == 0 ? mh_real.malloc_usable_size(p) : 0;
}

/* The table, resolved, for the functions boot_* does not stand in for. */
static inline bool real_ready(void)
{
	return __builtin_expect(__atomic_load_n(&mh_resolved,
						__ATOMIC_ACQUIRE), 1) ||
	       mh_resolve() == 0;
}

/* realloc of a block of the bootstrap arena: copy it out. */
static void *boot_move(void *p, size_t n)
{
	size_t old = boot_size(p);
	void *q = malloc(n ? n : 1);

	if (q)
		memcpy(q, p, old < n ? old : n);
	return q;
}

/*
 * Pool allocation for a call from ra (if the policy, as it is now, and
 * the call-site policy allow it), with the program's allocator as the
 * fallback.
 */
static void *pool_or(size_t n, size_t align, bool zero, const void *ra)
{
	void *p = NULL;

	if (mh_pool_wants(n) && mh_site_ok(ra)) {
		p = mh_pool_alloc(n, align, zero);
		if (__builtin_expect(p != NULL, 1)) {
			ubs_site_note(ra, n);
			return p;
		}
		mh_fallback();
	}
	if (zero)
		return mh_real.calloc(1, n);
	if (align)
		return mh_real.memalign(align, n);
	return mh_real.malloc(n);
}

static inline bool pow2(size_t a)
{
	return a && !(a & (a - 1));
}

UBS_EXPORT void *malloc(size_t n)
{
	if (__builtin_expect(n >= mh_hot.min, 0))
		return pool_or(n, 0, false, __builtin_return_address(0));
	return mh_real.malloc(n);
}

UBS_EXPORT void free(void *p)
{
	if (__builtin_expect(mh_is_pool(p), 0)) {
		mh_pool_free(p);
		return;
	}
	if (__builtin_expect(is_boot(p), 0))
		return;
	mh_real.free(p);
}

UBS_EXPORT void *calloc(size_t a, size_t b)
{
	size_t n;

	if (__builtin_expect(mh_hot.min != SIZE_MAX, 0) &&
	    !__builtin_mul_overflow(a, b, &n) && n >= mh_hot.min)
		return pool_or(n, 0, true, __builtin_return_address(0));
	return mh_real.calloc(a, b);
}

/* realloc where something is special: the old block is in the pool or
 * the bootstrap arena, or the new size belongs in the pool. */
static void *realloc_slow(void *p, size_t n, const void *ra)
{
	size_t old;
	void *q;

	if (is_boot(p))
		return boot_move(p, n);
	if (mh_is_pool(p)) {
		if (n == 0) {
			mh_pool_free(p);
			return NULL;
		}
		q = mh_pool_realloc(p, n);
		if (q)
			return q;
		/* The pool cannot grow it: move it to ordinary memory. */
		mh_fallback();
		q = mh_real.malloc(n);
		if (q) {
			old = mh_pool_usable(p);
			memcpy(q, p, old < n ? old : n);
			mh_pool_free(p);
		}
		return q;
	}
	if (!p)
		return pool_or(n, 0, false, ra);
	if (!mh_pool_wants(n) || !mh_site_ok(ra))
		return mh_real.realloc(p, n);
	q = mh_pool_alloc(n, 0, false);
	if (!q) {
		mh_fallback();
		return mh_real.realloc(p, n);
	}
	ubs_site_note(ra, n);
	old = mh_real.malloc_usable_size ? mh_real.malloc_usable_size(p) : 0;
	memcpy(q, p, old < n ? old : n);
	mh_real.free(p);
	return q;
}

static inline void *realloc_ra(void *p, size_t n, const void *ra)
{
	if (__builtin_expect(mh_is_pool(p) || is_boot(p) ||
			     n >= mh_hot.min, 0))
		return realloc_slow(p, n, ra);
	return mh_real.realloc(p, n);
}

UBS_EXPORT void *realloc(void *p, size_t n)
{
	return realloc_ra(p, n, __builtin_return_address(0));
}

UBS_EXPORT void *reallocarray(void *p, size_t a, size_t b)
{
	size_t n;

	if (__builtin_mul_overflow(a, b, &n)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc_ra(p, n, __builtin_return_address(0));
}

UBS_EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
	if (!real_ready())
		return ENOMEM;
	if (__builtin_expect(n >= mh_hot.min, 0) && pow2(align) &&
	    align % sizeof(void *) == 0) {
		int saved = errno;
		void *p = pool_or(n, align, false,
				  __builtin_return_address(0));

		if (!p) {
			int err = errno;

			errno = saved;
			return err ? err : ENOMEM;
		}
		*out = p;
		return 0;
	}
	return mh_real.posix_memalign(out, align, n);
}

UBS_EXPORT void *aligned_alloc(size_t align, size_t n)
{
	if (!real_ready())
		return NULL;
	if (__builtin_expect(n >= mh_hot.min, 0) && pow2(align))
		return pool_or(n, align, false,
			       __builtin_return_address(0));
	return mh_real.aligned_alloc(align, n);
}

UBS_EXPORT void *memalign(size_t align, size_t n)
{
	if (!real_ready())
		return boot_alloc(n, align);
	if (__builtin_expect(n >= mh_hot.min, 0) && pow2(align))
		return pool_or(n, align, false,
			       __builtin_return_address(0));
	return mh_real.memalign(align, n);
}

UBS_EXPORT void *valloc(size_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	if (!real_ready())
		return NULL;
	if (__builtin_expect(n >= mh_hot.min, 0))
		return pool_or(n, pg, false, __builtin_return_address(0));
	return mh_real.valloc(n);
}

UBS_EXPORT void *pvalloc(size_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), r;

	if (!real_ready())
		return NULL;
	if (__builtin_add_overflow(n, pg - 1, &r)) {
		errno = ENOMEM;
		return NULL;
	}
	r &= ~(pg - 1);
	if (r == 0)
		r = pg;
	if (__builtin_expect(r >= mh_hot.min, 0))
		return pool_or(r, pg, false, __builtin_return_address(0));
	return mh_real.pvalloc(n);
}

UBS_EXPORT size_t malloc_usable_size(void *p)
{
	if (__builtin_expect(mh_is_pool(p), 0))
		return mh_pool_usable(p);
	if (__builtin_expect(is_boot(p), 0))
		return boot_size(p);
	if (!p)
		return 0;
	return mh_real.malloc_usable_size(p);
}

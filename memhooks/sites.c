/* SPDX-License-Identifier: MIT */
/*
 * sites.c - the call-site policy: allocations go to the pool only when
 * the malloc-family function was called from a named function or from
 * code of a named library (UBS_MEM_SITES or the service's mem_sites,
 * comma-separated), on top of the size threshold.
 *
 * At init (outside malloc) the objects loaded then are listed once
 * (dl_iterate_phdr): file name, executable PT_LOAD ranges, and the
 * dynamic symbol table with its GNU hash table.  Names are resolved
 * against that list: a function (a name without ".so") by a GNU hash
 * lookup of a defined dynamic symbol with a size, in load order as dlsym
 * would; a library (a name with ".so", matched against the start of each
 * object's file name) by its executable ranges.  The lookup reads only
 * that list and the objects' own tables, which stay mapped for the life
 * of the process (objects loaded at start are never unloaded): no lock,
 * no allocation, so a new mem_sites can be resolved inside malloc when
 * the policy page changes (mh_sites_set).
 *
 * Inside malloc the check compares return addresses against the ranges:
 * first the direct caller's; when it is in none, the next callers up the
 * stack, MH_SITES_DEPTH frames in all, found by libgcc's unwinder
 * (_Unwind_Backtrace, linked in whole and hidden: the .eh_frame tables
 * say where each frame's return address is, and glibc's _dl_find_object
 * finds a return address's object without a lock).  No symbolization,
 * loader lock or allocation.  Libraries loaded after start and functions
 * that are not dynamic symbols are not seen.
 */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <unwind.h>

#include "preload.h"
#include "mh.h"

/* Two tables: readers use the current one while a change fills the
 * other; a change is made by one thread at a time (busy). */
static struct mh_sites tables[2];
struct mh_sites *mh_sites_cur = &tables[0];
static int busy;
static char applied[128];               /* the spec in force (busy) */

/* ------------------------------------------------------------ objects */

#define MH_OBJS_MAX 256
#define MH_OBJ_X 4                      /* executable ranges per object */
static struct {
	const char *name;               /* file name, the loader's string */
	uintptr_t base;
	unsigned nx;
	uintptr_t x_lo[MH_OBJ_X], x_hi[MH_OBJ_X];
	const ElfW(Sym) *symtab;
	const char *strtab;
	const uint32_t *gnu_hash;
} objs[MH_OBJS_MAX];
static unsigned nobjs;

/* A dynamic-section address: relocated in place by the loader, except in
 * objects whose dynamic section it left read-only (the vDSO). */
static uintptr_t dyn_addr(uintptr_t base, ElfW(Addr) v)
{
	return v < base ? base + v : v;
}

static int obj_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	const char *base = strrchr(info->dlpi_name, '/');
	unsigned n = nobjs;

	(void)size, (void)arg;
	if (n >= MH_OBJS_MAX)
		return 1;
	memset(&objs[n], 0, sizeof(objs[n]));
	objs[n].name = base ? base + 1 : info->dlpi_name;
	objs[n].base = info->dlpi_addr;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) &&
		    objs[n].nx < MH_OBJ_X) {
			uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

			objs[n].x_lo[objs[n].nx] = lo;
			objs[n].x_hi[objs[n].nx++] = lo + ph->p_memsz;
		}
		if (ph->p_type == PT_DYNAMIC) {
			const ElfW(Dyn) *d = (const void *)(info->dlpi_addr +
							    ph->p_vaddr);

			for (; d->d_tag != DT_NULL; d++) {
				uintptr_t a = dyn_addr(info->dlpi_addr,
						       d->d_un.d_ptr);

				if (d->d_tag == DT_SYMTAB)
					objs[n].symtab = (const void *)a;
				else if (d->d_tag == DT_STRTAB)
					objs[n].strtab = (const void *)a;
				else if (d->d_tag == DT_GNU_HASH)
					objs[n].gnu_hash = (const void *)a;
			}
		}
	}
	nobjs = n + 1;
	return 0;
}

static uint32_t gnu_hash(const char *s)
{
	uint32_t h = 5381;

	for (; *s; s++)
		h = h * 33 + (unsigned char)*s;
	return h;
}

/* Object i's defined dynamic symbol name (a function or object with a
 * size), or NULL: the lookup of its GNU hash table. */
static const ElfW(Sym) *obj_sym(unsigned i, const char *name, uint32_t hash)
{
	const uint32_t *h = objs[i].gnu_hash;
	const ElfW(Sym) *tab = objs[i].symtab;
	const char *str = objs[i].strtab;
	const ElfW(Addr) *bloom;
	const uint32_t *buckets, *chain;
	uint32_t nb, off, nbloom, shift, k;
	ElfW(Addr) word, mask;
	const unsigned bits = sizeof(ElfW(Addr)) * 8;

	if (!h || !tab || !str || !h[0] || !h[2])
		return NULL;
	nb = h[0], off = h[1], nbloom = h[2], shift = h[3];
	bloom = (const void *)&h[4];
	buckets = (const void *)&bloom[nbloom];
	chain = &buckets[nb];
	word = bloom[(hash / bits) % nbloom];
	mask = ((ElfW(Addr))1 << (hash % bits)) |
	       ((ElfW(Addr))1 << ((hash >> shift) % bits));
	if ((word & mask) != mask)
		return NULL;
	k = buckets[hash % nb];
	if (k < off)
		return NULL;
	for (;; k++) {
		uint32_t h2 = chain[k - off];
		const ElfW(Sym) *s = &tab[k];

		if ((hash | 1) == (h2 | 1) && s->st_shndx != SHN_UNDEF &&
		    s->st_size && strcmp(str + s->st_name, name) == 0 &&
		    ELF64_ST_TYPE(s->st_info) != STT_GNU_IFUNC)
			return s;
		if (h2 & 1)
			return NULL;
	}
}

/* ------------------------------------------------------------ tables */

static void add_range(struct mh_sites *t, uintptr_t lo, uintptr_t hi,
		      const char *what, bool quiet)
{
	if (t->n >= MH_SITES_MAX) {
		if (!quiet)
			ubs_info("memhooks: too many call-site ranges, %s "
				 "left out", what);
		return;
	}
	t->r[t->n].lo = lo;
	t->r[t->n].len = hi - lo;
	t->n++;
	if (!quiet)
		ubs_dbg("memhooks: call site %s: %#lx-%#lx", what,
			(unsigned long)lo, (unsigned long)hi);
}

/* One name of the list (NUL-terminated) into t.  quiet: inside malloc,
 * nothing logged. */
static void add_name(struct mh_sites *t, const char *name, bool quiet)
{
	bool found = false;

	if (strstr(name, ".so")) {
		size_t len = strlen(name);

		for (unsigned i = 0; i < nobjs; i++) {
			if (strncmp(objs[i].name, name, len) != 0)
				continue;
			for (unsigned k = 0; k < objs[i].nx; k++)
				add_range(t, objs[i].x_lo[k], objs[i].x_hi[k],
					  objs[i].name, quiet);
			found = true;
		}
		if (!found && !quiet)
			ubs_info("memhooks: call site %s: no such library "
				 "loaded", name);
		return;
	}
	{
		uint32_t hash = gnu_hash(name);

		for (unsigned i = 0; i < nobjs; i++) {
			const ElfW(Sym) *s = obj_sym(i, name, hash);

			if (s) {
				uintptr_t lo = objs[i].base + s->st_value;

				add_range(t, lo, lo + s->st_size, name, quiet);
				return;
			}
		}
		if (!quiet)
			ubs_info("memhooks: call site %s: no such function "
				 "with a size", name);
	}
}

/* Fill t from spec ("" or NULL: every caller). */
static void fill(struct mh_sites *t, const char *spec, bool quiet)
{
	char name[256];

	t->n = 0;
	t->on = spec && *spec;
	while (spec && *spec) {
		size_t n = strcspn(spec, ",");

		if (n > 0 && n < sizeof(name)) {
			memcpy(name, spec, n);
			name[n] = '\0';
			add_name(t, name, quiet);
		}
		spec += n;
		if (*spec == ',')
			spec++;
	}
}

/* ------------------------------------------------------------ the walk */

/* Is return address a in one of t's ranges? */
static bool in_sites(const struct mh_sites *t, uintptr_t a)
{
	unsigned n = t->n < MH_SITES_MAX ? t->n : MH_SITES_MAX;

	for (unsigned i = 0; i < n; i++)
		if (a - t->r[i].lo < t->r[i].len)
			return true;
	return false;
}

/* State of one walk up the stack (on the walker's stack). */
struct walk {
	const struct mh_sites *t;
	uintptr_t ra;                   /* the direct caller's return address */
	unsigned seen;                  /* frames from ra up, ra included */
	unsigned skipped;               /* frames below ra (ours) */
	bool hit;
};

/*
 * One frame of _Unwind_Backtrace, innermost first: our own frames (the
 * walk, the router) until ra, then ra and its callers, MH_SITES_DEPTH in
 * all.  Stops at a frame in a named range.  Reads only the unwinder's
 * context; allocates nothing.
 */
static _Unwind_Reason_Code walk_frame(struct _Unwind_Context *ctx, void *arg)
{
	struct walk *w = arg;
	uintptr_t ip = (uintptr_t)_Unwind_GetIP(ctx);

	if (!w->seen) {
		if (ip != w->ra)
			/* Not there yet; a router that never shows ra (it
			 * should, within a few frames) ends the walk. */
			return ++w->skipped > 8 ? _URC_END_OF_STACK :
			       _URC_NO_REASON;
	}
	if (w->seen++ && in_sites(w->t, ip)) {
		w->hit = true;
		return _URC_END_OF_STACK;
	}
	return w->seen >= MH_SITES_DEPTH ? _URC_END_OF_STACK : _URC_NO_REASON;
}

/*
 * The slow half of mh_site_ok: ra (the direct caller, already compared)
 * is in no range of t; is one of its callers, up to MH_SITES_DEPTH frames
 * from ra, in one?  noinline: its frame is one of those skipped.
 */
__attribute__((noinline)) bool mh_site_deep(const struct mh_sites *t,
					    const void *ra)
{
	struct walk w = { .t = t, .ra = (uintptr_t)ra };

	_Unwind_Backtrace(walk_frame, &w);
	return w.hit;
}

void mh_sites_init(const char *spec)
{
	nobjs = 0;
	dl_iterate_phdr(obj_cb, NULL);
	fill(&tables[0], spec, false);
	snprintf(applied, sizeof(applied), "%s", spec ? spec : "");
	__atomic_store_n(&mh_sites_cur, &tables[0], __ATOMIC_RELEASE);
	/* The unwinder's one-time set-up (pthread_once) happens here, not
	 * inside malloc. */
	mh_site_deep(&tables[0], __builtin_return_address(0));
}

bool mh_sites_set(const char *spec)
{
	struct mh_sites *cur, *next;

	if (__atomic_exchange_n(&busy, 1, __ATOMIC_ACQUIRE))
		return false;           /* another thread is at it */
	if (strncmp(spec, applied, sizeof(applied)) != 0) {
		cur = __atomic_load_n(&mh_sites_cur, __ATOMIC_RELAXED);
		next = cur == &tables[0] ? &tables[1] : &tables[0];
		fill(next, spec, true);
		__atomic_store_n(&mh_sites_cur, next, __ATOMIC_RELEASE);
		strncpy(applied, spec, sizeof(applied) - 1);
	}
	__atomic_store_n(&busy, 0, __ATOMIC_RELEASE);
	return true;
}

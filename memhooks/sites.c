/* SPDX-License-Identifier: MIT */
/*
 * sites.c - the call-site policy: allocations go to the pool only when
 * the malloc-family function was called from a named function or from
 * code of a named library (UBS_MEM_SITES, comma-separated), on top of the
 * size threshold.
 *
 * Names are resolved once, at init, to address ranges: a function (a name
 * without ".so") by dlsym and the size of its dynamic symbol (dladdr1), a
 * library (a name with ".so", matched against the start of each loaded
 * object's file name) by the executable PT_LOAD segments dl_iterate_phdr
 * reports.  Inside malloc the check compares return addresses against
 * these ranges: first the direct caller's; when it is in none, the next
 * callers up the stack, MH_SITES_DEPTH frames in all, found by libgcc's
 * unwinder (_Unwind_Backtrace, linked in whole and hidden: the .eh_frame
 * tables say where each frame's return address is, and glibc's
 * _dl_find_object finds a return address's object without a lock).  No
 * symbolization, loader lock or allocation.  Libraries loaded after start
 * and functions that are not dynamic symbols are not seen.
 */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <unwind.h>

#include "preload.h"
#include "mh.h"

struct mh_sites mh_sites;

static void add_range(uintptr_t lo, uintptr_t hi, const char *what)
{
	if (mh_sites.n >= MH_SITES_MAX) {
		ubs_info("memhooks: too many call-site ranges, %s left out",
			 what);
		return;
	}
	mh_sites.r[mh_sites.n].lo = lo;
	mh_sites.r[mh_sites.n].len = hi - lo;
	mh_sites.n++;
	ubs_dbg("memhooks: call site %s: %#lx-%#lx", what, (unsigned long)lo,
		(unsigned long)hi);
}

struct lib_match {
	const char *name;
	size_t len;
	int found;
};

static int lib_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct lib_match *m = arg;
	const char *base = strrchr(info->dlpi_name, '/');

	(void)size;
	base = base ? base + 1 : info->dlpi_name;
	if (strncmp(base, m->name, m->len) != 0)
		return 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
			uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

			add_range(lo, lo + ph->p_memsz, base);
			m->found = 1;
		}
	}
	return 0;
}

/* One name of the list (NUL-terminated). */
static void add_name(const char *name)
{
	if (strstr(name, ".so")) {
		struct lib_match m = { name, strlen(name), 0 };

		dl_iterate_phdr(lib_cb, &m);
		if (!m.found)
			ubs_info("memhooks: call site %s: no such library "
				 "loaded", name);
		return;
	}
	{
		void *addr = dlsym(RTLD_DEFAULT, name);
		const ElfW(Sym) *sym = NULL;
		Dl_info info;

		if (!addr || !dladdr1(addr, &info, (void **)&sym,
				      RTLD_DL_SYMENT) || !sym ||
		    !sym->st_size) {
			ubs_info("memhooks: call site %s: no such function "
				 "with a size", name);
			return;
		}
		add_range((uintptr_t)addr, (uintptr_t)addr + sym->st_size,
			  name);
	}
}

/* Is return address a in one of the ranges? */
static bool in_sites(uintptr_t a)
{
	for (unsigned i = 0; i < mh_sites.n; i++)
		if (a - mh_sites.r[i].lo < mh_sites.r[i].len)
			return true;
	return false;
}

/* State of one walk up the stack (on the walker's stack). */
struct walk {
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
	if (w->seen++ && in_sites(ip)) {
		w->hit = true;
		return _URC_END_OF_STACK;
	}
	return w->seen >= MH_SITES_DEPTH ? _URC_END_OF_STACK : _URC_NO_REASON;
}

/*
 * The slow half of mh_site_ok: ra (the direct caller, already compared)
 * is in no range; is one of its callers, up to MH_SITES_DEPTH frames from
 * ra, in one?  noinline: its frame is one of those skipped.
 */
__attribute__((noinline)) bool mh_site_deep(const void *ra)
{
	struct walk w = { .ra = (uintptr_t)ra };

	_Unwind_Backtrace(walk_frame, &w);
	return w.hit;
}

void mh_sites_init(const char *spec)
{
	char name[256];

	mh_sites.on = true;
	while (*spec) {
		size_t n = strcspn(spec, ",");

		if (n > 0 && n < sizeof(name)) {
			memcpy(name, spec, n);
			name[n] = '\0';
			add_name(name);
		}
		spec += n;
		if (*spec == ',')
			spec++;
	}
	/* The unwinder's one-time set-up (pthread_once) happens here, not
	 * inside malloc. */
	mh_site_deep(__builtin_return_address(0));
}

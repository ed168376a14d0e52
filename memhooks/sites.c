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
 * reports.  Inside malloc the check is a comparison of the return address
 * against these ranges: no unwinding, symbolization, loader lock or
 * allocation.  Only the direct caller counts; libraries loaded after start
 * and functions that are not dynamic symbols are not seen.
 */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

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
}

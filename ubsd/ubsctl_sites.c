/* SPDX-License-Identifier: MIT */
/*
 * ubsctl_sites.c - `ubsctl mem --sites PID`: where a process's pool memory
 * was allocated from.  memhooks counts each pool allocation under the
 * address its caller returns to, in the call-site table of the process's
 * stats file (layout in ubs_stats.h); this reads the table (untrusted:
 * bounds checked, SIGBUS caught) and names each address the way a
 * debugger would, from outside the process: the mapping that holds it
 * (/proc/PID/maps), then the function around it in that file's ELF symbol
 * tables (.symtab, else .dynsym).  Names need the process alive and its
 * files readable; otherwise the raw address is shown.
 */
#include <elf.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ubs_stats.h"
#include "ubsctl.h"

#define EX_ERROR 3

struct site {
	uint64_t addr, allocs, bytes;
	char object[PATH_MAX];          /* "" when not found */
	uint64_t offset;                /* in the object's file */
	char func[128];                 /* "" when not found */
	uint64_t func_off;
};

static sigjmp_buf sites_bus_jmp;

static void sites_on_sigbus(int sig)
{
	(void)sig;
	siglongjmp(sites_bus_jmp, 1);
}

/* Is [off, off+len) inside a file of size n? */
static bool in_file(uint64_t off, uint64_t len, uint64_t n)
{
	return off <= n && len <= n - off;
}

/*
 * The function of the ELF file at path that holds file offset off: its
 * name into s->func and the distance into s->func_off.  Everything read
 * from the file is bounds-checked; anything odd leaves s->func empty.
 */
static void elf_func(const char *path, struct site *s)
{
	const Elf64_Ehdr *eh;
	const Elf64_Shdr *sh;
	const Elf64_Phdr *ph;
	volatile uint64_t vaddr = UINT64_MAX, best = UINT64_MAX;
	volatile size_t size = 0;
	void *volatile map = MAP_FAILED;
	struct stat st;
	int fd, pass;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_size < (off_t)sizeof(*eh) || st.st_size > (1ll << 31)) {
		close(fd);
		return;
	}
	size = (size_t)st.st_size;
	map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return;
	if (sigsetjmp(sites_bus_jmp, 1)) {       /* truncated under us */
		munmap(map, size);
		s->func[0] = '\0';
		return;
	}
	eh = map;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
	    eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_phentsize != sizeof(*ph) || eh->e_shentsize != sizeof(*sh) ||
	    !in_file(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(*ph), size) ||
	    !in_file(eh->e_shoff, (uint64_t)eh->e_shnum * sizeof(*sh), size))
		goto out;
	/* File offset -> the address the symbols use. */
	ph = (const void *)((const char *)map + eh->e_phoff);
	for (unsigned i = 0; i < eh->e_phnum; i++)
		if (ph[i].p_type == PT_LOAD && s->offset >= ph[i].p_offset &&
		    s->offset - ph[i].p_offset < ph[i].p_filesz)
			vaddr = s->offset - ph[i].p_offset + ph[i].p_vaddr;
	if (vaddr == UINT64_MAX)
		goto out;
	sh = (const void *)((const char *)map + eh->e_shoff);
	/* .symtab first (every function), .dynsym if stripped. */
	for (pass = 0; pass < 2 && !s->func[0]; pass++) {
		uint32_t want = pass ? SHT_DYNSYM : SHT_SYMTAB;

		for (unsigned i = 0; i < eh->e_shnum; i++) {
			const Elf64_Shdr *str;
			const Elf64_Sym *sym;
			uint64_t n;

			if (sh[i].sh_type != want || sh[i].sh_link >= eh->e_shnum ||
			    sh[i].sh_entsize != sizeof(*sym) ||
			    !in_file(sh[i].sh_offset, sh[i].sh_size, size))
				continue;
			str = &sh[sh[i].sh_link];
			if (!in_file(str->sh_offset, str->sh_size, size))
				continue;
			sym = (const void *)((const char *)map + sh[i].sh_offset);
			n = sh[i].sh_size / sizeof(*sym);
			for (uint64_t k = 0; k < n; k++) {
				const char *name;

				if (ELF64_ST_TYPE(sym[k].st_info) != STT_FUNC ||
				    sym[k].st_value > vaddr ||
				    vaddr - sym[k].st_value >=
				    (sym[k].st_size ? sym[k].st_size : 1) ||
				    vaddr - sym[k].st_value >= best ||
				    sym[k].st_name >= str->sh_size)
					continue;
				name = (const char *)map + str->sh_offset +
				       sym[k].st_name;
				if (!memchr(name, '\0', str->sh_size -
					    sym[k].st_name))
					continue;
				best = vaddr - sym[k].st_value;
				snprintf(s->func, sizeof(s->func), "%s", name);
				s->func_off = best;
			}
		}
	}
out:
	munmap(map, size);
}

/* Name s->addr in process pid: its mapping's file and offset, then the
 * function there. */
static void name_site(pid_t pid, struct site *s)
{
	char path[64], line[PATH_MAX + 128];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi, off;
		int n = 0;

		if (sscanf(line, "%lx-%lx %*s %lx %*s %*s %n", &lo, &hi, &off,
			   &n) < 3 || !n || s->addr < lo || s->addr >= hi)
			continue;
		line[strcspn(line, "\n")] = '\0';
		if (line[n] == '/') {
			snprintf(s->object, sizeof(s->object), "%s", line + n);
			s->offset = s->addr - lo + off;
		}
		break;
	}
	fclose(f);
	if (s->object[0])
		elf_func(s->object, s);
}

static int by_bytes(const void *a, const void *b)
{
	const struct site *x = a, *y = b;

	return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : 0;
}

int ubsctl_sites(const char *run_dir, const char *pid_arg, bool json)
{
	struct sigaction sa = { .sa_handler = sites_on_sigbus }, old_sa;
	const struct ubs_stats_page *pg;
	struct site *volatile sites = NULL;
	volatile size_t len = 0;
	void *volatile map = MAP_FAILED;
	char path[PATH_MAX];
	uint32_t off, max;
	volatile size_t n = 0;
	struct stat st;
	pid_t pid = ubsctl_pid_name(pid_arg);
	int fd, rc = EX_ERROR;

	if (!pid) {
		fprintf(stderr, "ubsctl: --sites takes a pid, not %s\n",
			pid_arg);
		return 2;
	}
	snprintf(path, sizeof(path), "%s/stats/%d", run_dir, (int)pid);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		fprintf(stderr, "ubsctl: %s: %s (no stats file for pid %d)\n",
			path, strerror(errno), (int)pid);
		return EX_ERROR;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_size < (off_t)UBS_STATS_SIZE || st.st_size > (1 << 30)) {
		close(fd);
		fprintf(stderr, "ubsctl: %s: not a stats file\n", path);
		return EX_ERROR;
	}
	len = (size_t)st.st_size;
	map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED) {
		fprintf(stderr, "ubsctl: %s: mmap: %s\n", path,
			strerror(errno));
		return EX_ERROR;
	}
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old_sa);
	if (sigsetjmp(sites_bus_jmp, 1)) {
		fprintf(stderr, "ubsctl: %s: cut short while being read\n",
			path);
		goto out;
	}
	pg = map;
	off = __atomic_load_n(&pg->sites_off, __ATOMIC_RELAXED);
	max = __atomic_load_n(&pg->sites_max, __ATOMIC_RELAXED);
	if (__atomic_load_n(&pg->magic, __ATOMIC_ACQUIRE) != UBS_STATS_MAGIC ||
	    __atomic_load_n(&pg->version, __ATOMIC_RELAXED) !=
	    UBS_STATS_VERSION || __atomic_load_n(&pg->pid, __ATOMIC_RELAXED) !=
	    pid) {
		fprintf(stderr, "ubsctl: %s: not a stats page of pid %d\n",
			path, (int)pid);
		goto out;
	}
	if (max == 0) {
		fprintf(stderr, "ubsctl: pid %d keeps no call-site table (an "
			"older library)\n", (int)pid);
		goto out;
	}
	if (off < UBS_STATS_SIZE || off % 32 || max > 65536 ||
	    (uint64_t)off + (uint64_t)max * sizeof(struct ubs_site_slot) >
	    len) {
		fprintf(stderr, "ubsctl: %s: call-site table outside the "
			"file\n", path);
		goto out;
	}
	sites = calloc(max, sizeof(*sites));
	if (!sites) {
		fprintf(stderr, "ubsctl: out of memory\n");
		goto out;
	}
	for (uint32_t i = 0; i < max; i++) {
		const struct ubs_site_slot *t = (const struct ubs_site_slot *)
			((const char *)map + off) + i;
		struct site *s = &sites[n];

		s->addr = __atomic_load_n(&t->addr, __ATOMIC_RELAXED);
		s->allocs = __atomic_load_n(&t->allocs, __ATOMIC_RELAXED);
		s->bytes = __atomic_load_n(&t->bytes, __ATOMIC_RELAXED);
		if (s->addr && s->allocs)
			n++;
	}
	rc = 0;
out:
	munmap(map, len);
	sigaction(SIGBUS, &old_sa, NULL);
	if (rc) {
		free(sites);
		return rc;
	}
	sigaction(SIGBUS, &sa, &old_sa);        /* for the ELF files */
	for (size_t i = 0; i < n; i++)
		if (sites[i].addr > 1)
			name_site(pid, &sites[i]);
	sigaction(SIGBUS, &old_sa, NULL);
	if (n)
		qsort(sites, n, sizeof(*sites), by_bytes);
	if (json) {
		putchar('[');
		for (size_t i = 0; i < n; i++) {
			const struct site *s = &sites[i];

			printf("%s{\"addr\":\"0x%" PRIx64 "\",\"allocs\":%" PRIu64
			       ",\"bytes\":%" PRIu64 ",\"object\":", i ? "," : "",
			       s->addr, s->allocs, s->bytes);
			ubsctl_json_str(s->addr == 1 ? "(table full)" :
					s->object);
			printf(",\"offset\":%" PRIu64 ",\"function\":", s->offset);
			ubsctl_json_str(s->func);
			printf(",\"function_offset\":%" PRIu64 "}", s->func_off);
		}
		printf("]\n");
	} else {
		printf("%-10s %-14s %s\n", "ALLOCS", "BYTES", "SITE");
		for (size_t i = 0; i < n; i++) {
			const struct site *s = &sites[i];

			printf("%-10" PRIu64 " %-14" PRIu64 " ", s->allocs,
			       s->bytes);
			if (s->addr == 1)
				printf("(sites beyond the table)\n");
			else if (s->func[0])
				printf("%s+0x%" PRIx64 " (%s)\n", s->func,
				       s->func_off, s->object);
			else if (s->object[0])
				printf("%s+0x%" PRIx64 "\n", s->object,
				       s->offset);
			else
				printf("0x%" PRIx64 "\n", s->addr);
		}
	}
	free(sites);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "ubsctl: write: %s\n", strerror(errno));
		return EX_ERROR;
	}
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * stats.c - the per-process stats page (layout in ubs_stats.h).
 *
 * The page is $UBS_RUN_DIR/stats/<pid> when that directory exists and is
 * writable, else a private static page.  The file is built under a
 * temporary name and renamed into place, so a reader never sees a partial
 * header, and a new image after exec (same pid) replaces the old page
 * instead of adding to it.  The fd is closed as soon as the page is mapped:
 * the library holds no fds for stats.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "preload.h"

static struct ubs_stats_page ubs_private_page;

/* Counters of this process; starts private so early bumps never fault. */
struct ubs_stats_page *ubs_stats = &ubs_private_page;

/*
 * Appends the decimal form of v to buf[size] at *len.  Returns 0 or
 * -ENAMETOOLONG.  No stdio: this can run in a fork child handler.
 */
static int ubs_path_add_uint(char *buf, size_t size, size_t *len, unsigned long v)
{
	char tmp[24];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	if (*len + n >= size)
		return -ENAMETOOLONG;
	while (n)
		buf[(*len)++] = tmp[--n];
	buf[*len] = '\0';
	return 0;
}

/* Appends string s to buf[size] at *len.  Returns 0 or -ENAMETOOLONG. */
static int ubs_path_add(char *buf, size_t size, size_t *len, const char *s)
{
	size_t n = strlen(s);

	if (*len + n >= size)
		return -ENAMETOOLONG;
	memcpy(buf + *len, s, n + 1);
	*len += n;
	return 0;
}

/*
 * Builds "<run_dir>/stats/<pid>" into path and the temporary name
 * "<run_dir>/stats/.<pid>.tmp" into tmp.  Returns 0 or -ENAMETOOLONG.
 */
static int ubs_stats_paths(char *path, char *tmp, size_t size, pid_t pid)
{
	size_t len = 0, tlen;
	int ret;

	ret = ubs_path_add(path, size, &len, ubs_config.run_dir);
	if (!ret)
		ret = ubs_path_add(path, size, &len, "/stats/");
	if (ret)
		return ret;
	memcpy(tmp, path, len + 1);
	tlen = len;
	ret = ubs_path_add_uint(path, size, &len, (unsigned long)pid);
	if (!ret)
		ret = ubs_path_add(tmp, size, &tlen, ".");
	if (!ret)
		ret = ubs_path_add_uint(tmp, size, &tlen, (unsigned long)pid);
	if (!ret)
		ret = ubs_path_add(tmp, size, &tlen, ".tmp");
	return ret;
}

/* Writes the header of page for this process; magic goes last. */
static void ubs_stats_header(struct ubs_stats_page *page, pid_t pid)
{
	page->version = UBS_STATS_VERSION;
	page->size = UBS_STATS_SIZE;
	page->pid = pid;
	page->ncounters = UBS_STAT_NR;
	memcpy(page->service, ubs_config.service, sizeof(page->service));
	__atomic_store_n(&page->magic, UBS_STATS_MAGIC, __ATOMIC_RELEASE);
}

/*
 * Creates, maps and publishes $UBS_RUN_DIR/stats/<pid>, zeroed.  Returns
 * the mapping, or NULL when the directory is missing or not writable (or
 * anything else fails; nothing is left behind then).
 */
static struct ubs_stats_page *ubs_stats_file(pid_t pid)
{
	char path[PATH_MAX], tmp[PATH_MAX];
	struct ubs_stats_page *page;
	void *map;
	int fd;

	if (ubs_stats_paths(path, tmp, sizeof(path), pid) < 0)
		return NULL;
	unlink(tmp);	/* a stale one from a dead process with our pid */
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return NULL;
	if (fchmod(fd, 0644) < 0 || ftruncate(fd, UBS_STATS_SIZE) < 0)
		goto fail;
	map = mmap(NULL, UBS_STATS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		goto fail;
	ubs_real.close(fd);
	fd = -1;
	page = map;
	ubs_stats_header(page, pid);
	if (rename(tmp, path) < 0) {
		munmap(map, UBS_STATS_SIZE);
		goto fail;
	}
	return page;
fail:
	if (fd >= 0)
		ubs_real.close(fd);
	unlink(tmp);
	return NULL;
}

/*
 * Sets up this process's stats page (called once from ubs_init, after the
 * config is loaded): no page at all when UBS_DISABLE=1, else the shared
 * file, else the private page.
 */
void ubs_stats_init(void)
{
	struct ubs_stats_page *page;
	pid_t pid = getpid();

	if (ubs_config.disabled) {
		__atomic_store_n(&ubs_stats, NULL, __ATOMIC_RELAXED);
		return;
	}
	page = ubs_stats_file(pid);
	if (!page) {
		page = &ubs_private_page;
		ubs_stats_header(page, pid);
	}
	/* Calls counted before this point (during init) are carried over. */
	for (int i = 0; page != &ubs_private_page && i < UBS_STAT_NR; i++)
		page->counters[i] = __atomic_exchange_n(&ubs_private_page.counters[i],
							0, __ATOMIC_RELAXED);
	__atomic_store_n(&ubs_stats, page, __ATOMIC_RELEASE);
}

/*
 * pthread_atfork child handler: the child stops counting into its parent's
 * page and gets its own for its pid, starting from zero.  Runs with one
 * thread, so the page pointer can be swapped without care for readers.
 */
void ubs_stats_atfork_child(void)
{
	struct ubs_stats_page *old = ubs_stats;

	if (!old)
		return;		/* disabled */
	ubs_stats = &ubs_private_page;
	if (old != &ubs_private_page)
		munmap(old, UBS_STATS_SIZE);
	memset(&ubs_private_page, 0, sizeof(ubs_private_page));
	ubs_stats_init();
}

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
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

#include "preload.h"
#include "ubt.h"

static struct ubs_stats_page ubs_private_page;

/* The connection table's lock (see the end of this file). */
static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;

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
	if (page != &ubs_private_page) {
		page->conns_off = UBS_STATS_SIZE;
		page->conns_max = UBS_CONNS_MAX;
		page->sites_off = UBS_STATS_SIZE + UBS_STATS_CONNS_SIZE;
		page->sites_max = UBS_SITES_MAX;
	}
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

	if (ubs_stats_paths(path, tmp, sizeof(path), pid) < 0 ||
	    !ubt_fsize_ok(UBS_STATS_FILE_SIZE))
		return NULL;    /* a file size limit (ulimit -f): no page */
	unlink(tmp);	/* a stale one from a dead process with our pid */
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return NULL;
	/* The connection table's pages are only touched when used. */
	if (fchmod(fd, 0644) < 0 || ftruncate(fd, UBS_STATS_FILE_SIZE) < 0)
		goto fail;
	map = mmap(NULL, UBS_STATS_FILE_SIZE, PROT_READ | PROT_WRITE,
		   MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		goto fail;
	ubs_real.close(fd);
	fd = -1;
	page = map;
	ubs_stats_header(page, pid);
	if (rename(tmp, path) < 0) {
		munmap(map, UBS_STATS_FILE_SIZE);
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
 * page and gets its own for its pid, starting from zero (its connection
 * table too: the socket shim enters the connections it inherited).  Runs with one
 * thread, so the page pointer can be swapped without care for readers.
 */
void ubs_stats_atfork_child(void)
{
	struct ubs_stats_page *old = ubs_stats;

	if (!old)
		return;		/* disabled */
	pthread_mutex_init(&conn_lock, NULL);   /* another thread's, maybe */
	ubs_stats = &ubs_private_page;
	if (old != &ubs_private_page)
		munmap(old, UBS_STATS_FILE_SIZE);
	memset(&ubs_private_page, 0, sizeof(ubs_private_page));
	ubs_stats_init();
}

/* ---------------------------------------------------- connection table */

static uint16_t conn_free[UBS_CONNS_LIVE];     /* free live slots */
static unsigned conn_nfree;
static struct ubs_stats_page *conn_page;       /* the page they are of */
static unsigned conn_hist;                      /* next history slot */

/* The table of the current page, or NULL (private page, disabled). */
static struct ubs_conn_slot *conn_table(void)
{
	struct ubs_stats_page *page = __atomic_load_n(&ubs_stats,
						      __ATOMIC_ACQUIRE);

	if (!page || page == &ubs_private_page || !page->conns_max)
		return NULL;
	if (conn_page != page) {        /* first use, or a fork child's */
		conn_page = page;
		conn_hist = 0;
		conn_nfree = UBS_CONNS_LIVE;
		for (unsigned i = 0; i < UBS_CONNS_LIVE; i++)
			conn_free[i] = (uint16_t)(UBS_CONNS_LIVE - 1 - i);
	}
	return (struct ubs_conn_slot *)((char *)page + page->conns_off);
}

static uint64_t conn_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Fill slot c under its seqlock. */
static void conn_fill(struct ubs_conn_slot *c, uint8_t state, int fd,
		      int side, uint16_t why, uint64_t chan_id, uint64_t ino)
{
	uint32_t seq = __atomic_load_n(&c->seq, __ATOMIC_RELAXED) | 1;

	__atomic_store_n(&c->seq, seq, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	c->side = (uint8_t)side;
	c->why = why;
	c->fd = fd;
	c->chan_id = chan_id;
	c->ino = ino;
	c->since_ms = conn_now_ms();
	__atomic_store_n(&c->tx, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&c->rx, 0, __ATOMIC_RELAXED);
	c->state = state;
	__atomic_store_n(&c->seq, seq + 1, __ATOMIC_RELEASE);
}

struct ubs_conn_slot *ubs_conn_open(int fd, int side, uint64_t chan_id)
{
	struct ubs_conn_slot *t, *c = NULL;

	pthread_mutex_lock(&conn_lock);
	t = conn_table();
	if (t && conn_nfree) {
		c = &t[conn_free[--conn_nfree]];
		conn_fill(c, UBS_CONN_UB, fd, side, 0, chan_id, 0);
	}
	pthread_mutex_unlock(&conn_lock);
	return c;
}

void ubs_conn_close(struct ubs_conn_slot *c)
{
	struct ubs_conn_slot *t;

	if (!c)
		return;
	pthread_mutex_lock(&conn_lock);
	t = conn_table();
	/* A slot of the page this process uses now (a fork child's old
	 * slots went with its parent's page). */
	if (t && c >= t && c < t + UBS_CONNS_LIVE) {
		conn_fill(c, UBS_CONN_FREE, -1, 0, 0, 0, 0);
		conn_free[conn_nfree++] = (uint16_t)(c - t);
	}
	pthread_mutex_unlock(&conn_lock);
}

void ubs_conn_tcp(int fd, int side, enum ubs_stat_id why)
{
	struct ubs_conn_slot *t;

	struct stat st;
	uint64_t ino;

	if (!conn_table())              /* unlocked: a hint */
		return;
	/* The rare path (a peer on TCP): one fstat names the socket. */
	ino = fstat(fd, &st) == 0 ? (uint64_t)st.st_ino : 0;
	pthread_mutex_lock(&conn_lock);
	t = conn_table();
	if (t) {
		conn_fill(&t[UBS_CONNS_LIVE + conn_hist], UBS_CONN_TCP, fd,
			  side, (uint16_t)why, 0, ino);
		conn_hist = (conn_hist + 1) % (UBS_CONNS_MAX - UBS_CONNS_LIVE);
	}
	pthread_mutex_unlock(&conn_lock);
}

/* ------------------------------------------------------ pool call sites */

void ubs_site_note(const void *ra, uint64_t bytes)
{
	struct ubs_stats_page *page = __atomic_load_n(&ubs_stats,
						      __ATOMIC_ACQUIRE);
	struct ubs_site_slot *t, *hit = NULL;
	uint64_t addr = (uint64_t)(uintptr_t)ra, h;

	if (!page || page == &ubs_private_page || !page->sites_max || addr < 2)
		return;
	t = (struct ubs_site_slot *)((char *)page + page->sites_off);
	h = (addr * 0x9e3779b97f4a7c15ull) >> 56;       /* 0..255 */
	for (unsigned i = 0; i < 16 && !hit; i++) {
		struct ubs_site_slot *s = &t[1 + (h + i) % (UBS_SITES_MAX - 1)];
		uint64_t cur = __atomic_load_n(&s->addr, __ATOMIC_RELAXED);

		if (cur == 0 &&
		    !__atomic_compare_exchange_n(&s->addr, &cur, addr, false,
						 __ATOMIC_RELAXED,
						 __ATOMIC_RELAXED) &&
		    cur != addr)
			continue;       /* another site took it meanwhile */
		if (cur == 0 || cur == addr)
			hit = s;
	}
	if (!hit) {                     /* the table is full around h */
		hit = &t[0];
		__atomic_store_n(&hit->addr, 1, __ATOMIC_RELAXED);
	}
	__atomic_add_fetch(&hit->allocs, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&hit->bytes, bytes, __ATOMIC_RELAXED);
}

/* SPDX-License-Identifier: MIT */
/*
 * mhcase.c - one memhooks scenario per run, for tests/preload-memhooks,
 * which runs it under the preload with a private ubsd.  Exits 0 when
 * every check held, else prints what failed and exits 1.  "Pool memory"
 * is told from /proc/self/maps: the mappings of ubsd's segments are named
 * memfd:ubs-pool.  The process's own counters are read from its stats
 * page.
 *
 *   family   every malloc-family function, alignment, realloc across
 *            arenas, below and above the threshold (UBS_MEM_MIN=1024)
 *   threads  pool blocks freed by another thread than their allocator
 *   quota    64 x 1 MiB under a 4 MiB quota: all served, fallbacks counted
 *   fork     the child sees a snapshot as of fork; neither sees the
 *            other's writes after it
 *   off      pool off: nothing lands in the pool
 *   sites    call-site policy: from a named function or library only
 *   deep     call-site policy through helpers: a named function up to 8
 *            frames above malloc, from 2 threads and a signal handler
 *   hold     allocate 3 MiB in the pool, print READY; 3 MiB more for
 *            each line on stdin, reported (MORE ok); exit at EOF
 *   release  hold 40 MiB in 1 MiB pool blocks (HELD), free them, and at
 *            the next line use the pool a little after a second (FREED
 *            with the bytes leased), then allocate 16 MiB again (AGAIN)
 *   follow   print READY; for each line on stdin allocate 256 KiB, then
 *            4 KiB, then 4 KiB from mh_site_alloc, and say where each
 *            went (POOL or HEAP); exit at EOF
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ubs_stats.h"

static int failures;

#define CHECK(x) do {							\
	if (!(x)) {							\
		printf("%d: line %d: %s (errno %s)\n", (int)getpid(),	\
		       __LINE__, #x, strerror(errno));			\
		failures++;						\
	}								\
} while (0)

/* Is byte p inside a mapping of a pool segment? */
static int in_pool1(uintptr_t a)
{
	char line[512];
	FILE *f = fopen("/proc/self/maps", "re");
	int found = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;

		if (!strstr(line, "memfd:ubs-pool") ||
		    sscanf(line, "%lx-%lx", &lo, &hi) != 2)
			continue;
		if (a >= lo && a < hi)
			found = 1;
	}
	fclose(f);
	return found;
}

/* Are the first and last bytes of [p, p+n) in pool segments (a block may
 * span two segments, mapped one after the other)? */
static int in_pool(const void *p, size_t n)
{
	return in_pool1((uintptr_t)p) && in_pool1((uintptr_t)p + n - 1);
}

/* How many of this process's fds are pool segments (kept by memhooks to
 * share pool memory by fd)? */
static int pool_fds(void)
{
	char path[64], link[256];
	int n = 0;

	for (int fd = 0; fd < 65536; fd++) {
		ssize_t r;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		r = readlink(path, link, sizeof(link) - 1);
		if (r <= 0)
			continue;
		link[r] = '\0';
		n += strstr(link, "memfd:ubs-pool") != NULL;
	}
	return n;
}

/* Counter id of this process's stats page. */
static uint64_t stat_of(enum ubs_stat_id id)
{
	char path[512];
	struct ubs_stats_page pg;
	const char *dir = getenv("UBS_RUN_DIR");
	int fd;

	snprintf(path, sizeof(path), "%s/stats/%d", dir ? dir : "/run/ubs",
		 (int)getpid());
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (pread(fd, &pg, sizeof(pg), 0) != (ssize_t)sizeof(pg))
		pg.ncounters = 0;
	close(fd);
	return id < pg.ncounters ? pg.counters[id] : 0;
}

static void fill(void *p, size_t n, int seed)
{
	for (size_t i = 0; i < n; i++)
		((unsigned char *)p)[i] = (unsigned char)(seed + i * 7);
}

static int same(const void *p, size_t n, int seed)
{
	for (size_t i = 0; i < n; i++)
		if (((const unsigned char *)p)[i] != (unsigned char)(seed + i * 7))
			return 0;
	return 1;
}

static int all_zero(const void *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (((const unsigned char *)p)[i])
			return 0;
	return 1;
}

/* UBS_MEM_MIN=1024: small blocks stay ordinary, big ones go to the pool. */
static void case_family(void)
{
	void *p, *q, *r;
	char *s;
	volatile size_t huge = SIZE_MAX / 2;

	p = malloc(100);
	CHECK(p && !in_pool(p, 100));
	q = malloc(4096);
	CHECK(q && in_pool(q, 4096));
	CHECK(malloc_usable_size(q) >= 4096);
	CHECK(malloc_usable_size(p) >= 100);
	fill(q, 4096, 1);
	free(p);

	/* realloc inside the pool keeps the bytes. */
	r = realloc(q, 100000);
	CHECK(r && in_pool(r, 100000) && same(r, 4096, 1));
	/* realloc of an ordinary block past the threshold moves it in. */
	s = malloc(500);
	CHECK(s && !in_pool(s, 500));
	fill(s, 500, 2);
	s = realloc(s, 3000);
	CHECK(s && in_pool(s, 3000) && same(s, 500, 2));
	/* ...and shrinking a pool block keeps it and its bytes. */
	s = realloc(s, 200);
	CHECK(s && same(s, 200, 2));
	free(s);
	free(r);

	/* calloc: zeroed, also when it reuses a freed block. */
	for (int i = 0; i < 4; i++) {
		p = calloc(1024, 8);
		CHECK(p && in_pool(p, 8192) && all_zero(p, 8192));
		memset(p, 0xff, 8192);
		free(p);
	}
	p = calloc(10, 10);
	CHECK(p && !in_pool(p, 100) && all_zero(p, 100));
	free(p);
	errno = 0;
	CHECK(calloc(huge, 4) == NULL && errno == ENOMEM);

	/* Alignment, in the pool. */
	p = NULL;
	CHECK(posix_memalign(&p, 4096, 8192) == 0);
	CHECK(p && ((uintptr_t)p & 4095) == 0 && in_pool(p, 8192));
	free(p);
	CHECK(posix_memalign(&p, 24, 8192) == EINVAL);
	p = aligned_alloc(65536, 65536);
	CHECK(p && ((uintptr_t)p & 65535) == 0 && in_pool(p, 65536));
	free(p);
	p = memalign(256, 2000);
	CHECK(p && ((uintptr_t)p & 255) == 0 && in_pool(p, 2000));
	free(p);
	p = valloc(5000);
	CHECK(p && ((uintptr_t)p & 4095) == 0 && in_pool(p, 5000));
	free(p);
	p = pvalloc(5000);
	CHECK(p && ((uintptr_t)p & 4095) == 0 && malloc_usable_size(p) >=
	      8192);
	free(p);
	/* ...and below the threshold, ordinary but still aligned. */
	p = memalign(64, 100);
	CHECK(p && ((uintptr_t)p & 63) == 0 && !in_pool(p, 100));
	free(p);
	p = aligned_alloc(32, 64);
	CHECK(p && ((uintptr_t)p & 31) == 0);
	free(p);

	/* reallocarray: overflow refused, else a realloc. */
	errno = 0;
	CHECK(reallocarray(NULL, huge, 4) == NULL && errno == ENOMEM);
	p = reallocarray(NULL, 512, 8);
	CHECK(p && in_pool(p, 4096));
	free(p);
	free(NULL);
	CHECK(malloc_usable_size(NULL) == 0);

	/* Many pool blocks at once, each with its own bytes. */
	{
		void *b[256];

		for (int i = 0; i < 256; i++) {
			b[i] = malloc(1024 + (size_t)i * 97);
			CHECK(b[i] && in_pool(b[i], 1024));
			fill(b[i], 1024, i);
		}
		for (int i = 0; i < 256; i++) {
			CHECK(same(b[i], 1024, i));
			free(b[i]);
		}
	}
	CHECK(stat_of(UBS_STAT_MEM_POOL_ALLOCS) >= 256);
	CHECK(pool_fds() > 0);
	CHECK(stat_of(UBS_STAT_MEM_POOL_LEASED) > 0);
	CHECK(stat_of(UBS_STAT_MEM_FALLBACKS) == 0);
}

#define XFER 2000

static void *ring[64];
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ring_cond = PTHREAD_COND_INITIALIZER;
static int ring_n, pool_hits;

static void *consumer(void *arg)
{
	(void)arg;
	for (int got = 0; got < XFER; got++) {
		void *p;

		pthread_mutex_lock(&ring_lock);
		while (ring_n == 0)
			pthread_cond_wait(&ring_cond, &ring_lock);
		p = ring[--ring_n];
		pthread_cond_signal(&ring_cond);
		pthread_mutex_unlock(&ring_lock);
		if (!same(p, 2048, 3))
			failures++;
		free(p);
	}
	return NULL;
}

static void case_threads(void)
{
	pthread_t t;

	CHECK(pthread_create(&t, NULL, consumer, NULL) == 0);
	for (int i = 0; i < XFER; i++) {
		void *p = malloc(2048 + (size_t)(i % 7) * 1000);

		CHECK(p);
		if (i % 100 == 0)
			pool_hits += in_pool(p, 2048);
		fill(p, 2048, 3);
		pthread_mutex_lock(&ring_lock);
		while (ring_n == 64)
			pthread_cond_wait(&ring_cond, &ring_lock);
		ring[ring_n++] = p;
		pthread_cond_signal(&ring_cond);
		pthread_mutex_unlock(&ring_lock);
	}
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(pool_hits == XFER / 100);
	/* Everything freed by the other thread came back. */
	CHECK(stat_of(UBS_STAT_MEM_POOL_BYTES) == 0);
}

/* Under a 4 MiB quota: 64 MiB in 1 MiB blocks all served. */
static void case_quota(void)
{
	void *b[64];
	int pooled = 0;

	for (int i = 0; i < 64; i++) {
		b[i] = malloc(1 << 20);
		CHECK(b[i]);
		if (!b[i])
			continue;
		memset(b[i], i, 1 << 20);
		pooled += in_pool(b[i], 1 << 20);
	}
	CHECK(pooled > 0 && pooled < 64);
	CHECK(stat_of(UBS_STAT_MEM_FALLBACKS) >= (uint64_t)(64 - pooled));
	CHECK(stat_of(UBS_STAT_MEM_POOL_LEASED) <= 4u << 20);
	for (int i = 0; i < 64; i++) {
		if (!b[i])
			continue;
		CHECK(((unsigned char *)b[i])[12345] == (unsigned char)i);
		free(b[i]);
	}
	/* realloc of an ordinary block: served, ordinary. */
	{
		char *p = malloc(100);

		CHECK(p);
		memset(p, 'x', 100);
		p = realloc(p, 8 << 20);
		CHECK(p && p[99] == 'x');
		free(p);
	}
}

static void case_fork(void)
{
	size_t n = 3 << 20;
	char *p = malloc(n), *q;
	int up[2], down[2];
	char c;
	pid_t kid;
	int st;

	CHECK(p && in_pool(p, n));
	memset(p, 'A', n);
	CHECK(pipe(up) == 0 && pipe(down) == 0);
	kid = fork();
	if (kid == 0) {
		/* The child's copy is private now, as of the fork, and the
		 * parent's segments are not the child's. */
		CHECK(!in_pool(p, n));
		CHECK(pool_fds() == 0);
		CHECK(p[0] == 'A' && p[n - 1] == 'A');
		memset(p, 'B', n);
		CHECK(write(up[1], "1", 1) == 1);
		CHECK(read(down[0], &c, 1) == 1);   /* the parent wrote 'C' */
		CHECK(p[0] == 'B' && p[n / 2] == 'B');
		/* The child allocates on (from its private copy of the
		 * range, or from a lease of its own). */
		q = malloc(1 << 20);
		CHECK(q != NULL);
		memset(q, 'K', 1 << 20);
		free(q);
		free(p);
		_exit(failures ? 1 : 0);
	}
	CHECK(kid > 0);
	CHECK(read(up[0], &c, 1) == 1);             /* the child wrote 'B' */
	CHECK(p[0] == 'A' && p[n - 1] == 'A');
	memset(p, 'C', n);
	CHECK(write(down[1], "1", 1) == 1);
	CHECK(waitpid(kid, &st, 0) == kid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK(p[0] == 'C' && in_pool(p, n));
	q = malloc(1 << 20);
	CHECK(q && in_pool(q, 1 << 20));
	memset(q, 'P', 1 << 20);
	CHECK(p[0] == 'C');
	free(q);
	free(p);
}

/* Called by name in UBS_MEM_SITES (exported: mhcase is linked
 * -rdynamic); the barrier keeps malloc from being a tail call, whose
 * return address would be our caller's. */
__attribute__((noinline)) void *mh_site_alloc(size_t n);
__attribute__((noinline)) void *mh_site_alloc(size_t n)
{
	void *p = malloc(n);

	__asm__ volatile("" ::: "memory");
	return p;
}

static void *alloc_buf(int depth, size_t n);

/* UBS_MEM_SITES=mh_site_alloc,libc.so.6 and UBS_MEM_MIN=1024.  The
 * caller chain counts up to 8 frames, and libc's code that called main
 * is 3 frames above this function's own malloc calls: q, not meant for
 * the pool, is allocated 9 helper frames down. */
static void case_sites(void)
{
	char big[5000];
	void *p = mh_site_alloc(4096), *q = alloc_buf(9, 4096), *r;
	char *s;

	CHECK(p && in_pool(p, 4096));
	CHECK(q && !in_pool(q, 4096));
	r = mh_site_alloc(100);
	CHECK(r && !in_pool(r, 100));
	memset(big, 'b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	s = strdup(big);                /* libc's own malloc call */
	CHECK(s && in_pool(s, sizeof(big)) && !strcmp(s, big));
	free(p);
	free(q);
	free(r);
	free(s);
	CHECK(stat_of(UBS_STAT_MEM_FALLBACKS) == 0);
}

/*
 * A helper between malloc and the named function: depth frames of it
 * (1: alloc_buf calls malloc).  The barriers keep the calls from being
 * tail calls (the frame would vanish) or a loop.
 */
__attribute__((noinline)) static void *alloc_buf(int depth, size_t n)
{
	void *p = depth > 1 ? alloc_buf(depth - 1, n) : malloc(n);

	__asm__ volatile("" ::: "memory");
	return p;
}

/* Named in UBS_MEM_SITES (exported, -rdynamic): what it allocates
 * through depth frames of alloc_buf belongs in the pool when it is at
 * most 8 frames above malloc. */
__attribute__((noinline)) void *mh_deep_caller(int depth, size_t n);
__attribute__((noinline)) void *mh_deep_caller(int depth, size_t n)
{
	void *p = alloc_buf(depth, n);

	__asm__ volatile("" ::: "memory");
	return p;
}

#define DEEP_ROUNDS 3000

static void *deep_thread(void *arg)
{
	uintptr_t bad = 0;

	(void)arg;
	for (int i = 0; i < DEEP_ROUNDS; i++) {
		void *p = mh_deep_caller(1 + i % 7, 4096 + (size_t)(i % 5) * 512);

		if (!p)
			bad++;
		else
			memset(p, 'd', 4096);
		free(p);
	}
	return (void *)bad;
}

/* What the signal handler allocated (each slot written once). */
#define SIG_MAX 32
static void *volatile sig_blocks[SIG_MAX];
static volatile sig_atomic_t sig_n;

static void deep_handler(int sig)
{
	int saved = errno;

	(void)sig;
	if (sig_n < SIG_MAX) {
		sig_blocks[sig_n] = mh_deep_caller(3, 8192);
		sig_n = sig_n + 1;
	}
	errno = saved;
}

/* UBS_MEM_SITES=mh_deep_caller and UBS_MEM_MIN=1024. */
static void case_deep(void)
{
	struct itimerval it = { { 0, 2000 }, { 0, 2000 } };
	struct sigaction sa = { .sa_handler = deep_handler };
	pthread_t t[2];
	void *p, *ret;
	int pooled = 0;

	/* Seven helper frames: mh_deep_caller is the 8th frame above
	 * malloc, counting alloc_buf as the first.  Eight: the 9th, out. */
	for (int d = 1; d <= 7; d++) {
		p = mh_deep_caller(d, 4096);
		CHECK(p && in_pool(p, 4096));
		free(p);
	}
	p = mh_deep_caller(8, 4096);
	CHECK(p && !in_pool(p, 4096));
	free(p);
	/* Not under the named function: ordinary; small: ordinary. */
	p = alloc_buf(3, 4096);
	CHECK(p && !in_pool(p, 4096));
	free(p);
	p = mh_deep_caller(2, 100);
	CHECK(p && !in_pool(p, 100));
	free(p);

	/* Two threads walking at once. */
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&t[i], NULL, deep_thread, NULL) == 0);
	for (int i = 0; i < 2; i++) {
		CHECK(pthread_join(t[i], &ret) == 0);
		CHECK(ret == NULL);
	}

	/* A signal handler that walks while this thread walks (or is inside
	 * the pool): no deadlock, and its blocks are served. */
	CHECK(sigaction(SIGALRM, &sa, NULL) == 0);
	CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
	for (int i = 0; sig_n < SIG_MAX && i < 200000; i++) {
		p = mh_deep_caller(1 + i % 7, 4096);
		if (!p)
			failures++;
		free(p);
	}
	memset(&it, 0, sizeof(it));
	CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
	CHECK(sig_n > 0);
	for (int i = 0; i < sig_n; i++) {
		CHECK(sig_blocks[i] != NULL);
		pooled += sig_blocks[i] && in_pool(sig_blocks[i], 8192);
		free(sig_blocks[i]);
	}
	CHECK(pooled > 0);
	printf("deep: %d signal allocations, %d in the pool\n", (int)sig_n,
	       pooled);
}

static void case_off(void)
{
	void *p = malloc(8 << 20), *q = calloc(1, 1 << 20);

	CHECK(p && !in_pool(p, 1));
	CHECK(q && !in_pool(q, 1));
	free(p);
	free(q);
	CHECK(stat_of(UBS_STAT_MEM_POOL_ALLOCS) == 0);
	CHECK(stat_of(UBS_STAT_MEM_POOL_LEASED) == 0);
}

static void case_hold(void)
{
	void *p = malloc(3 << 20), *site[3];
	char buf[16];

	CHECK(p && in_pool(p, 3 << 20));
	memset(p, 'H', 3 << 20);
	/* Three more from a named function (`ubsctl mem --sites`). */
	for (int i = 0; i < 3; i++) {
		site[i] = mh_site_alloc(8192);
		CHECK(site[i] && in_pool(site[i], 8192));
	}
	printf("READY %d\n", (int)getpid());
	fflush(stdout);
	/* Each line: 3 MiB more, reported. */
	while (read(0, buf, sizeof(buf)) > 0) {
		void *q = malloc(3 << 20);

		CHECK(q && in_pool(q, 3 << 20));
		if (q)
			memset(q, 'M', 3 << 20);
		printf("MORE %s\n", failures ? "FAIL" : "ok");
		fflush(stdout);
	}
	for (int i = 0; i < 3; i++)
		free(site[i]);
	free(p);
}

/* Wait for a line on stdin: 0, or -1 at EOF. */
static int wait_line(void)
{
	char buf[16];

	return read(0, buf, sizeof(buf)) > 0 ? 0 : -1;
}

static void case_release(void)
{
	void *b[40];

	for (int i = 0; i < 40; i++) {
		b[i] = malloc(1 << 20);
		CHECK(b[i] && in_pool(b[i], 1 << 20));
		if (b[i])
			memset(b[i], 'r', 1 << 20);
	}
	printf("HELD %d\n", (int)getpid());
	fflush(stdout);
	if (wait_line() < 0)
		return;
	for (int i = 0; i < 40; i++)
		free(b[i]);
	/* Purges are a second apart at the most: after one, the next
	 * 4 MiB of pool frees find the lease idle and give it back. */
	usleep(1100 * 1000);
	for (int i = 0; i < 4; i++) {
		void *p = malloc(1 << 20);

		CHECK(p && in_pool(p, 1 << 20));
		free(p);
	}
	printf("FREED %llu\n",
	       (unsigned long long)stat_of(UBS_STAT_MEM_POOL_LEASED));
	fflush(stdout);
	if (wait_line() < 0)
		return;
	/* The pool goes on: new leases, in the returned ranges or not. */
	for (int i = 0; i < 16; i++) {
		b[i] = malloc(1 << 20);
		CHECK(b[i] && in_pool(b[i], 1 << 20));
		if (b[i])
			memset(b[i], 'a' + i, 1 << 20);
	}
	for (int i = 0; i < 16; i++) {
		CHECK(b[i] && ((char *)b[i])[i * 1000] == 'a' + i);
		free(b[i]);
	}
	CHECK(stat_of(UBS_STAT_MEM_FALLBACKS) == 0);
	printf("AGAIN %s\n", failures ? "FAIL" : "ok");
	fflush(stdout);
	wait_line();
}

/* The test changes the service's policy between lines. */
static void case_follow(void)
{
	char buf[16];

	printf("READY %d\n", (int)getpid());
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0) {
		void *big = malloc(256 << 10), *small = malloc(4096);
		void *site = mh_site_alloc(4096);

		CHECK(big && small && site);
		printf("%s %s %s\n", big && in_pool(big, 256 << 10) ? "POOL" :
		       "HEAP", small && in_pool(small, 4096) ? "POOL" : "HEAP",
		       site && in_pool(site, 4096) ? "POOL" : "HEAP");
		fflush(stdout);
		free(big);
		free(small);
		free(site);
	}
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*fn)(void);
	} cases[] = {
		{ "family", case_family }, { "threads", case_threads },
		{ "quota", case_quota }, { "fork", case_fork },
		{ "off", case_off }, { "hold", case_hold },
		{ "sites", case_sites }, { "deep", case_deep },
		{ "follow", case_follow }, { "release", case_release },
	};

	if (argc != 2)
		return 2;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (strcmp(argv[1], cases[i].name) == 0) {
			cases[i].fn();
			printf("%s: %s\n", argv[1], failures ? "FAIL" : "ok");
			return failures ? 1 : 0;
		}
	}
	return 2;
}

/* SPDX-License-Identifier: MIT */
/*
 * stats.c - `ubsctl stats` on the per-process stats pages of
 * RUN_DIR/stats (layout in preload/ubs_stats.h): pages written by hand
 * with known counters (live pids, a dead pid, a page of an older library
 * with fewer counters, one claiming more than the file holds) must come
 * out exactly, in the table and as JSON, filtered by pid or service, with
 * a total; broken pages (bad magic, another layout version, a pid that is
 * not the file's, too short, a FIFO) are skipped with a warning and
 * change nothing else; a missing stats/ is an error; a page that the
 * real preload library published is read like the hand-made ones; and
 * ubsd keeps only the newest pages of exited processes.
 *
 * Each test has its own mkdtemp run directory (no daemon but in the
 * reaping test: stats reads files only); every process started is
 * killed and reaped by pid.
 */
#include <criterion/criterion.h>

#include <sys/prctl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <stdbool.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ubs_stats.h"
#include "support/dtest.h"

static pid_t child_pid = -1, child2_pid = -1;
static char ubsctl_path[PATH_MAX];      /* this build tree's (setup) */

/*
 * Run ubsctl with args (NULL-terminated, at most 6) on run_dir; capture
 * stdout and stderr.  Returns its exit code (-1 if it did not exit
 * normally within WAIT_MS: a crash is -1).
 */
static int run_ubsctlv(char *out, char *err, const char *const *args)
{
	return dt_run_ubsctl(ubsctl_path, args, out, err, NULL);
}

#define UBSCTL(out, err, ...) \
	run_ubsctlv(out, err, (const char *const[]){ __VA_ARGS__, NULL })

/* A child that lives until killed (a live pid to own a page). */
static pid_t spawn_sleeper(void)
{
	pid_t pid = fork();

	cr_assert(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;)
			pause();
	}
	return pid;
}

/* A pid that has exited and been reaped. */
static pid_t dead_pid(void)
{
	pid_t pid = fork();

	cr_assert(pid >= 0);
	if (pid == 0)
		_exit(0);
	cr_assert_eq(waitpid(pid, NULL, 0), pid);
	return pid;
}

/* A valid page of pid for service svc with counters c[0..n) (rest 0). */
static void make_page(struct ubs_stats_page *pg, pid_t pid, const char *svc,
		      const uint64_t *c, unsigned n)
{
	memset(pg, 0, sizeof(*pg));
	pg->magic = UBS_STATS_MAGIC;
	pg->version = UBS_STATS_VERSION;
	pg->size = UBS_STATS_SIZE;
	pg->pid = pid;
	pg->ncounters = UBS_STAT_NR;
	snprintf(pg->service, sizeof(pg->service), "%s", svc);
	for (unsigned i = 0; i < n && i < UBS_STAT_NR; i++)
		pg->counters[i] = c[i];
}

/* Write len bytes of pg (padded with zeros to len) as stats/name. */
static void put_page(const char *name, const struct ubs_stats_page *pg,
		     size_t len)
{
	static unsigned char buf[UBS_STATS_SIZE];
	char path[256];
	int fd;

	memset(buf, 0, sizeof(buf));
	memcpy(buf, pg, len < sizeof(*pg) ? len : sizeof(*pg));
	snprintf(path, sizeof(path), "%s/stats/%s", run_dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static void put_pid_page(const struct ubs_stats_page *pg)
{
	char name[16];

	snprintf(name, sizeof(name), "%d", (int)pg->pid);
	put_page(name, pg, UBS_STATS_SIZE);
}

/* The line of the table that starts with the word w, or NULL. */
static const char *line_of(const char *out, const char *w, char *line,
			   size_t n)
{
	size_t wl = strlen(w);

	for (const char *l = out; *l;) {
		const char *e = strchr(l, '\n');
		size_t len = e ? (size_t)(e - l) : strlen(l);
		if (len >= wl && strncmp(l, w, wl) == 0 &&
		    (len == wl || l[wl] == ' ')) {
			snprintf(line, n, "%.*s", (int)len, l);
			return line;
		}
		if (!e)
			break;
		l = e + 1;
	}
	return NULL;
}

/* Split a table line into at most max words; returns the count. */
static int words(char *line, char **w, int max)
{
	int n = 0;

	for (char *t = strtok(line, " "); t && n < max; t = strtok(NULL, " "))
		w[n++] = t;
	return n;
}

#define MAXCOL (UBS_STAT_NR + 3)

/* The table's header, split into words (upper-case names). */
struct table {
	char line[1024];
	char *col[MAXCOL];
	int ncol;
};

static void table_head(const char *out, struct table *t)
{
	cr_assert_not_null(line_of(out, "PID", t->line, sizeof(t->line)),
			   "no header in:\n%s", out);
	t->ncol = words(t->line, t->col, MAXCOL);
}

/* Column of the counter id (its name in upper case), or -1. */
static int table_col(const struct table *t, int id)
{
	char up[64];
	size_t i;

	for (i = 0; ubs_stat_names[id][i] && i + 1 < sizeof(up); i++)
		up[i] = (char)(ubs_stat_names[id][i] - ('a' <= ubs_stat_names[id][i] &&
			ubs_stat_names[id][i] <= 'z' ? 32 : 0));
	up[i] = '\0';
	for (int k = 0; k < t->ncol; k++)
		if (strcmp(t->col[k], up) == 0)
			return k;
	return -1;
}

/*
 * The row starting with first must hold lead[0..nlead) (pid, service,
 * alive...), then for each counter: its value in c[] if id < n, else "-".
 * The total row has one word less before the counters ("total(N)" spans
 * PID and SERVICE): pass skip = 1 for it.
 */
static void expect_row(const char *out, const struct table *t,
		       const char *first, const char *const *lead, int nlead,
		       const uint64_t *c, unsigned n, int skip)
{
	char line[1024], *w[MAXCOL], want[32];
	int nw;

	cr_assert_not_null(line_of(out, first, line, sizeof(line)),
			   "no line for %s in:\n%s", first, out);
	nw = words(line, w, MAXCOL);
	cr_assert_eq(nw, t->ncol - skip, "%s: %d columns, the header has %d,"
		     " in:\n%s", first, nw, t->ncol, out);
	for (int i = 0; i < nlead; i++)
		cr_expect_str_eq(w[i], lead[i], "%s: column %d in:\n%s", first,
				 i, out);
	for (int id = 0; id < UBS_STAT_NR; id++) {
		int k = table_col(t, id);

		cr_assert(k >= 0, "no column for %s in:\n%s",
			  ubs_stat_names[id], out);
		if ((unsigned)id < n)
			snprintf(want, sizeof(want), "%" PRIu64, c[id]);
		else
			strcpy(want, "-");
		cr_expect_str_eq(w[k - skip], want, "%s: %s in:\n%s", first,
				 ubs_stat_names[id], out);
	}
}

/* The JSON object of counters c[0..n): ,"name":value... in the order
 * ubsctl prints (the first five, then the others in page order). */
static void json_counters(char *buf, size_t size, const uint64_t *c,
			  unsigned n)
{
	static const int first[] = { UBS_STAT_UB_CONNS, UBS_STAT_TCP_CONNS,
		UBS_STAT_UB_BYTES_TX, UBS_STAT_UB_BYTES_RX,
		UBS_STAT_FALLBACKS };
	size_t len = 0;

	buf[0] = '\0';
	for (int k = 0; k < UBS_STAT_NR; k++) {
		int id = k < 5 ? first[k] : -1;

		if (k >= 5) {   /* the (k-5)th id not among first[] */
			int seen = -1;
			for (id = 0; id < UBS_STAT_NR; id++) {
				bool f = false;
				for (int j = 0; j < 5; j++)
					f |= first[j] == id;
				if (!f && ++seen == k - 5)
					break;
			}
		}
		if ((unsigned)id < n)
			len += (size_t)snprintf(buf + len, size - len,
						",\"%s\":%" PRIu64,
						ubs_stat_names[id], c[id]);
	}
	cr_assert(len < size);
}

/* The run directory with stats/. */
static void setup(void)
{
	char stats[128];

	dt_bin_path(ubsctl_path, sizeof(ubsctl_path), "ubsctl");
	dt_make_run_dir("/tmp/ubsd-stats.XXXXXX");
	path_in(stats, sizeof(stats), "stats");
	cr_assert_eq(mkdir(stats, 0755), 0, "%s: %s", stats, strerror(errno));
}

/* Reap the children, then remove the run directory (stats/ too). */
static void teardown(void)
{
	kill_reap(&child_pid);
	kill_reap(&child2_pid);
	dt_teardown();
}

TestSuite(stats, .init = setup, .fini = teardown, .timeout = 30);

/* Counter values of the pages: known values for the counters the
 * test is about, something distinct for every other one. */
static uint64_t ca[UBS_STAT_NR], cb[UBS_STAT_NR], cd[UBS_STAT_NR];
static uint64_t sum2[UBS_STAT_NR], sum3[UBS_STAT_NR];

static void fill_counters(void)
{
	for (int i = 0; i < UBS_STAT_NR; i++) {
		ca[i] = 100 + (uint64_t)i;
		cb[i] = 1000 * (uint64_t)(i + 1);
		cd[i] = 5;
	}
	ca[UBS_STAT_UB_CONNS] = 8;
	ca[UBS_STAT_TCP_CONNS] = 1;
	ca[UBS_STAT_UB_BYTES_TX] = 4194304;
	ca[UBS_STAT_UB_BYTES_RX] = 12345;
	cb[UBS_STAT_UB_CONNS] = 2;
	cb[UBS_STAT_TCP_CONNS] = 0;
	cb[UBS_STAT_UB_BYTES_TX] = 100;
	cb[UBS_STAT_UB_BYTES_RX] = 4194304;
	for (int i = 0; i < UBS_STAT_NR; i++) {
		sum2[i] = ca[i] + cb[i];
		sum3[i] = sum2[i] + cd[i];
	}
}

Test(stats, fake_pages_come_out_exactly)
{
	char out[OUT_MAX], err[OUT_MAX], pa[16], pb[16], pd[16], want[2048];
	char obj[1536], line[1024];
	struct ubs_stats_page pg;
	struct table t;
	pid_t dead = dead_pid();

	fill_counters();
	child_pid = spawn_sleeper();
	child2_pid = spawn_sleeper();
	snprintf(pa, sizeof(pa), "%d", (int)child_pid);
	snprintf(pb, sizeof(pb), "%d", (int)child2_pid);
	snprintf(pd, sizeof(pd), "%d", (int)dead);
	make_page(&pg, child_pid, "svc-a", ca, UBS_STAT_NR);
	put_pid_page(&pg);
	make_page(&pg, child2_pid, "svc-b", cb, UBS_STAT_NR);
	put_pid_page(&pg);
	make_page(&pg, dead, "gone", cd, UBS_STAT_NR);
	put_pid_page(&pg);
	/* A page being built, and another name: not pages, no warning. */
	make_page(&pg, child_pid, "tmp", cd, UBS_STAT_NR);
	put_page(".123.tmp", &pg, UBS_STATS_SIZE);
	put_page("notes", &pg, 10);

	cr_assert_eq(UBSCTL(out, err, "stats"), 0, "%s", err);
	cr_expect_str_empty(err);
	table_head(out, &t);
	/* PID SERVICE, then the connection and byte counters, then the
	 * others: one column per counter. */
	cr_assert_eq(t.ncol, 2 + UBS_STAT_NR, "%s", out);
	{
		const char *h[] = { "PID", "SERVICE", "UB_CONNS", "TCP_CONNS",
			"UB_BYTES_TX", "UB_BYTES_RX", "FALLBACKS" };
		for (int i = 0; i < 7; i++)
			cr_expect_str_eq(t.col[i], h[i], "%s", out);
	}
	{
		const char *a[] = { pa, "svc-a" }, *b[] = { pb, "svc-b" };
		const char *tot[] = { "total(2)" };
		expect_row(out, &t, pa, a, 2, ca, UBS_STAT_NR, 0);
		expect_row(out, &t, pb, b, 2, cb, UBS_STAT_NR, 0);
		expect_row(out, &t, "total(2)", tot, 1, sum2, UBS_STAT_NR, 1);
	}
	cr_expect_null(line_of(out, pd, line, sizeof(line)),
		       "dead pid shown without --all:\n%s", out);
	cr_expect_null(strstr(out, "tmp"), "a temporary page shown:\n%s",
		       out);

	/* --all: the dead pid too, with an ALIVE column. */
	cr_assert_eq(UBSCTL(out, err, "--all", "stats"), 0, "%s", err);
	table_head(out, &t);
	cr_assert_eq(t.ncol, 3 + UBS_STAT_NR, "%s", out);
	cr_expect_str_eq(t.col[2], "ALIVE");
	{
		const char *a[] = { pa, "svc-a", "yes" };
		const char *d[] = { pd, "gone", "no" };
		const char *tot[] = { "total(3)" };
		expect_row(out, &t, pa, a, 3, ca, UBS_STAT_NR, 0);
		expect_row(out, &t, pd, d, 3, cd, UBS_STAT_NR, 0);
		/* The total row leaves ALIVE blank: two words less. */
		expect_row(out, &t, "total(3)", tot, 1, sum3, UBS_STAT_NR, 2);
	}

	/* --json, after the command as well as before it. */
	cr_assert_eq(UBSCTL(out, err, "stats", "--json"), 0, "%s", err);
	json_counters(obj, sizeof(obj), ca, UBS_STAT_NR);
	snprintf(want, sizeof(want), "{\"pid\":%d,\"service\":\"svc-a\","
		 "\"alive\":true%s}", (int)child_pid, obj);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	json_counters(obj, sizeof(obj), cb, UBS_STAT_NR);
	snprintf(want, sizeof(want), "{\"pid\":%d,\"service\":\"svc-b\","
		 "\"alive\":true%s}", (int)child2_pid, obj);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	/* Rows sorted by pid; the total; one line. */
	snprintf(want, sizeof(want), "{\"processes\":[{\"pid\":%d,",
		 (int)(child_pid < child2_pid ? child_pid : child2_pid));
	cr_expect_eq(strncmp(out, want, strlen(want)), 0, "want %s in:\n%s",
		     want, out);
	json_counters(obj, sizeof(obj), sum2, UBS_STAT_NR);
	snprintf(want, sizeof(want), "}],\"total\":{\"processes\":2%s}}\n",
		 obj);
	cr_expect(strlen(out) > strlen(want) &&
		  strcmp(out + strlen(out) - strlen(want), want) == 0,
		  "want %s at the end of:\n%s", want, out);
	cr_expect_null(strstr(out, "gone"), "%s", out);
	cr_assert_eq(UBSCTL(out, err, "--json", "--all", "stats"), 0, "%s",
		     err);
	json_counters(obj, sizeof(obj), cd, UBS_STAT_NR);
	snprintf(want, sizeof(want), "{\"pid\":%d,\"service\":\"gone\","
		 "\"alive\":false%s}", (int)dead, obj);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);

	/* By pid, by service. */
	cr_assert_eq(UBSCTL(out, err, "stats", pb), 0, "%s", err);
	cr_expect_null(strstr(out, "svc-a"), "%s", out);
	cr_expect(line_of(out, pb, line, sizeof(line)), "%s", out);
	cr_expect(line_of(out, "total(1)", line, sizeof(line)), "%s", out);
	cr_assert_eq(UBSCTL(out, err, "--json", "stats", "svc-a"), 0, "%s",
		     err);
	cr_expect_null(strstr(out, "svc-b"), "%s", out);
	cr_expect(strstr(out, "\"total\":{\"processes\":1,\"ub_conns\":8,"),
		  "%s", out);
	/* A service with no process: an empty table, not an error. */
	cr_assert_eq(UBSCTL(out, err, "--json", "stats", "nobody-here"), 0);
	cr_expect(strstr(out, "{\"processes\":[],\"total\":{\"processes\":0,"
			 "\"ub_conns\":0,"), "%s", out);
	/* A pid that has exited: an error without --all, its page with. */
	cr_assert_eq(UBSCTL(out, err, "stats", pd), 3);
	cr_expect(strstr(err, "has exited"), "%s", err);
	cr_assert_eq(UBSCTL(out, err, "--all", "stats", pd), 0, "%s", err);
	cr_expect(line_of(out, pd, line, sizeof(line)), "%s", out);
	/* A pid without a page. */
	cr_assert_eq(UBSCTL(out, err, "stats", "1"), 3);
	cr_expect(strstr(err, "no stats page for pid 1"), "%s", err);
	/* Usage: bad pid, two filters, --all elsewhere; stat is status. */
	cr_expect_eq(UBSCTL(out, err, "stats", "99999999999"), 2);
	cr_expect_eq(UBSCTL(out, err, "stats", "a", "b"), 2);
	cr_expect_eq(UBSCTL(out, err, "--all", "sessions"), 2);
	cr_expect_eq(UBSCTL(out, err, "stat"), 1, "stat must stay status "
		     "(no daemon here: exit 1)");
}

Test(stats, bad_pages_are_skipped_with_a_warning)
{
	char out[OUT_MAX], err[OUT_MAX], pa[16], name[64], fifo[256];
	struct ubs_stats_page pg;
	struct table t;
	pid_t self = getpid();

	fill_counters();
	child_pid = spawn_sleeper();
	snprintf(pa, sizeof(pa), "%d", (int)child_pid);
	make_page(&pg, child_pid, "good", ca, UBS_STAT_NR);
	put_pid_page(&pg);

	/* Bad magic (under the test's own live pid). */
	make_page(&pg, self, "badmagic", cd, UBS_STAT_NR);
	pg.magic = 0x4c49414d44414221ULL;
	put_pid_page(&pg);
	/* Another layout version. */
	make_page(&pg, 1, "badversion", cd, UBS_STAT_NR);
	pg.version = UBS_STATS_VERSION + 1;
	put_pid_page(&pg);
	/* A page of another pid under this name. */
	make_page(&pg, 4242, "wrongpid", cd, UBS_STAT_NR);
	put_page("2", &pg, UBS_STATS_SIZE);
	/* Shorter than the header. */
	make_page(&pg, 3, "short", cd, UBS_STAT_NR);
	put_page("3", &pg, 100);
	/* A FIFO must not hang the reader. */
	snprintf(fifo, sizeof(fifo), "%s/stats/4", run_dir);
	cr_assert_eq(mkfifo(fifo, 0644), 0);

	cr_assert_eq(UBSCTL(out, err, "stats"), 0, "stderr:\n%s", err);
	snprintf(name, sizeof(name), "stats/%d: bad magic", (int)self);
	cr_expect(strstr(err, name), "want '%s' in:\n%s", name, err);
	cr_expect(strstr(err, "stats/1: layout version 2"), "%s", err);
	cr_expect(strstr(err, "stats/2: page of pid 4242"), "%s", err);
	cr_expect(strstr(err, "stats/3: too small"), "%s", err);
	cr_expect(strstr(err, "stats/4: not a regular file"), "%s", err);
	cr_expect(strstr(err, "skipped"), "%s", err);
	for (const char *s = "badmagic\0badversion\0wrongpid\0short\0"; *s;
	     s += strlen(s) + 1)
		cr_expect_null(strstr(out, s), "%s shown:\n%s", s, out);
	table_head(out, &t);
	{
		const char *a[] = { pa, "good" }, *tot[] = { "total(1)" };
		expect_row(out, &t, pa, a, 2, ca, UBS_STAT_NR, 0);
		expect_row(out, &t, "total(1)", tot, 1, ca, UBS_STAT_NR, 1);
	}
	/* Asked by pid, a bad page is not there. */
	snprintf(name, sizeof(name), "%d", (int)self);
	cr_expect_eq(UBSCTL(out, err, "--json", "stats", name), 3);
	cr_expect(strstr(err, "bad magic"), "%s", err);
}

Test(stats, counters_beyond_the_page_or_missing)
{
	char out[OUT_MAX], err[OUT_MAX], pa[16], pb[16], want[256];
	struct ubs_stats_page pg;
	struct table t;
	uint64_t sum[UBS_STAT_NR] = { 0 };

	fill_counters();
	child_pid = spawn_sleeper();
	child2_pid = spawn_sleeper();
	snprintf(pa, sizeof(pa), "%d", (int)child_pid);
	snprintf(pb, sizeof(pb), "%d", (int)child2_pid);
	/* An older library: 3 counters (socket bind listen). */
	make_page(&pg, child_pid, "old", ca, UBS_STAT_NR);
	pg.ncounters = 3;
	put_pid_page(&pg);
	/* A page claiming 2^32-1 counters in a file of 128 + 5 * 8 bytes:
	 * only the 5 inside the file are read. */
	make_page(&pg, child2_pid, "liar", cb, UBS_STAT_NR);
	pg.ncounters = UINT32_MAX;
	put_page(pb, &pg, 128 + 5 * 8);
	for (int i = 0; i < 5; i++)
		sum[i] = (i < 3 ? ca[i] : 0) + cb[i];

	cr_assert_eq(UBSCTL(out, err, "stats"), 0, "%s", err);
	table_head(out, &t);
	{
		const char *a[] = { pa, "old" }, *b[] = { pb, "liar" };
		const char *tot[] = { "total(2)" };
		expect_row(out, &t, pa, a, 2, ca, 3, 0);
		expect_row(out, &t, pb, b, 2, cb, 5, 0);
		/* Totals count what is there: 0 for counters nobody has. */
		expect_row(out, &t, "total(2)", tot, 1, sum, UBS_STAT_NR, 1);
	}
	cr_assert_eq(UBSCTL(out, err, "--json", "stats", "old"), 0, "%s", err);
	snprintf(want, sizeof(want), "\"alive\":true,\"socket\":%" PRIu64
		 ",\"bind\":%" PRIu64 ",\"listen\":%" PRIu64 "}", ca[0], ca[1],
		 ca[2]);
	cr_expect(strstr(out, want), "absent counters must be left out: want"
		  " %s in\n%s", want, out);
}

Test(stats, no_stats_directory_is_an_error)
{
	char out[OUT_MAX], err[OUT_MAX], stats[128];

	path_in(stats, sizeof(stats), "stats");
	cr_assert_eq(rmdir(stats), 0);
	cr_assert_eq(UBSCTL(out, err, "stats"), 3);
	cr_expect(strstr(err, "/stats"), "%s", err);
	cr_expect_str_empty(out);
}

/*
 * The preload library for the tests that run real programs under it:
 * $UBS_PRELOAD_LIB, else this build tree's (build/tests/ubsd-stats ->
 * build/libubs_preload.so).  Skips the test when there is none, or when
 * this is a sanitized build (its library cannot be preloaded into a
 * plain program; run-tests passes the plain build's).
 */
static const char *preload_lib(char *buf, size_t n)
{
	const char *lib = getenv("UBS_PRELOAD_LIB");
	struct stat st;

	if (!lib || !*lib) {
#ifdef __SANITIZE_ADDRESS__
		cr_skip_test("sanitized build: set UBS_PRELOAD_LIB to a plain "
			     "build's library");
#endif
		snprintf(buf, n, "%s", ubsctl_path);
		strcpy(strstr(buf, "/bin/ubsctl"), "/libubs_preload.so");
		lib = buf;
	}
	if (stat(lib, &st) != 0)
		cr_skip_test("no preload library at %s", lib);
	return lib;
}

Test(stats, a_page_published_by_the_preload)
{
	char out[OUT_MAX], err[OUT_MAX], libpath[PATH_MAX], path[256];
	const char *lib = preload_lib(libpath, sizeof(libpath));
	char want[128];
	struct stat st;

	child_pid = fork();
	cr_assert(child_pid >= 0);
	if (child_pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		setenv("UBS_RUN_DIR", run_dir, 1);
		setenv("UBS_SERVICE", "stats-e2e", 1);
		setenv("LD_PRELOAD", lib, 1);
		execlp("sleep", "sleep", "20", (char *)NULL);
		_exit(127);
	}
	snprintf(path, sizeof(path), "%s/stats/%d", run_dir, (int)child_pid);
	for (int t = 0; t < WAIT_MS && stat(path, &st) != 0; t += 10)
		sleep_ms(10);
	cr_assert_eq(stat(path, &st), 0, "no page at %s", path);
	cr_assert_eq(UBSCTL(out, err, "--json", "stats", "stats-e2e"), 0,
		     "%s", err);
	snprintf(want, sizeof(want), "{\"processes\":[{\"pid\":%d,"
		 "\"service\":\"stats-e2e\",\"alive\":true,\"ub_conns\":0,",
		 (int)child_pid);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	cr_expect(strstr(out, "\"total\":{\"processes\":1,"), "%s", out);
	cr_expect_str_empty(err);
}

/* Does RUN_DIR/stats/name exist? */
static bool page_exists(const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/stats/%s", run_dir, name);
	return access(path, F_OK) == 0;
}

/*
 * ubsd keeps the pages of the newest 64 exited processes and removes the
 * older ones (and pages left half-built by a dead process) when it
 * starts: a live process's page, its page being built and files that are
 * not pages stay.  Pids above any pid_max never exist: dead for sure.
 */
Test(stats, ubsd_reaps_pages_of_exited_processes)
{
	const int ndead = 80, keep = 64;
	struct ubs_stats_page pg;
	char name[32], live[16];

	child_pid = spawn_sleeper();
	for (int i = 0; i < ndead; i++) {
		struct timespec ts[2] = { { .tv_sec = 1000000 + i },
					  { .tv_sec = 1000000 + i } };
		char path[256];

		make_page(&pg, 2000000000 + i, "gone", cd, UBS_STAT_NR);
		put_pid_page(&pg);
		snprintf(path, sizeof(path), "%s/stats/%d", run_dir,
			 2000000000 + i);
		cr_assert_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
	}
	make_page(&pg, child_pid, "alive", ca, UBS_STAT_NR);
	put_pid_page(&pg);
	snprintf(live, sizeof(live), "%d", (int)child_pid);
	put_page(".2000000999.tmp", &pg, UBS_STATS_SIZE);
	snprintf(name, sizeof(name), ".%d.tmp", (int)child_pid);
	put_page(name, &pg, UBS_STATS_SIZE);
	put_page("notes", &pg, 10);

	{
		char ubsd[PATH_MAX];

		dt_bin_path(ubsd, sizeof(ubsd), "ubsd");
		dt_start_daemon(ubsd);
	}
	for (int i = 0; i < ndead; i++) {
		snprintf(name, sizeof(name), "%d", 2000000000 + i);
		cr_expect_eq(page_exists(name), i >= ndead - keep,
			     "page %s (mtime rank %d)", name, i);
	}
	cr_expect(page_exists(live));
	snprintf(name, sizeof(name), ".%d.tmp", (int)child_pid);
	cr_expect(page_exists(name), "a live process's page being built");
	cr_expect(!page_exists(".2000000999.tmp"));
	cr_expect(page_exists("notes"));
}

/* ------------------------------------------------ ubsctl conns */

/* Write pg with a connection table of UBS_CONNS_MAX slots (slots, where
 * set) as stats/<pid>; conns_off/conns_max as in pg. */
static void put_conns_file(const struct ubs_stats_page *pg,
			   const struct ubs_conn_slot *slots)
{
	static unsigned char buf[UBS_STATS_FILE_SIZE];
	char path[256];
	int fd;

	memset(buf, 0, sizeof(buf));
	memcpy(buf, pg, sizeof(*pg));
	memcpy(buf + UBS_STATS_SIZE, slots,
	       UBS_CONNS_MAX * sizeof(struct ubs_conn_slot));
	snprintf(path, sizeof(path), "%s/stats/%d", run_dir, (int)pg->pid);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	close(fd);
}

static void ub_slot(struct ubs_conn_slot *s, int side, uint64_t chan,
		    uint64_t tx, uint64_t rx)
{
	memset(s, 0, sizeof(*s));
	s->seq = 2;
	s->state = UBS_CONN_UB;
	s->side = (uint8_t)side;
	s->fd = -1;
	s->chan_id = chan;
	s->tx = tx;
	s->rx = rx;
}

/*
 * Hand-made tables: the two ends of one channel in two processes are
 * each other's peer (also when only one process is asked for), a TCP
 * decision shows its reason, a slot in an unknown state and a table that
 * lies outside its file are skipped with a warning.
 */
Test(stats, conns_from_hand_made_tables)
{
	static struct ubs_conn_slot ta[UBS_CONNS_MAX], tb[UBS_CONNS_MAX];
	char out[OUT_MAX], err[OUT_MAX], want[512], pa[16], pb[16];
	struct ubs_stats_page pg;
	pid_t dead = dead_pid();

	child_pid = spawn_sleeper();
	child2_pid = spawn_sleeper();
	snprintf(pa, sizeof(pa), "%d", (int)child_pid);
	snprintf(pb, sizeof(pb), "%d", (int)child2_pid);
	ub_slot(&ta[0], 0, 77, 100, 200);
	ta[3] = ta[0];
	ta[3].state = 9;
	ta[UBS_CONNS_LIVE].seq = 4;
	ta[UBS_CONNS_LIVE].state = UBS_CONN_TCP;
	ta[UBS_CONNS_LIVE].why = UBS_STAT_TCP_PLAIN_PEER;
	ta[UBS_CONNS_LIVE].fd = -1;
	ub_slot(&tb[5], 1, 77, 200, 100);
	make_page(&pg, child_pid, "svc-a", ca, 0);
	pg.conns_off = UBS_STATS_SIZE;
	pg.conns_max = UBS_CONNS_MAX;
	put_conns_file(&pg, ta);
	make_page(&pg, child2_pid, "svc-b", cb, 0);
	pg.conns_off = UBS_STATS_SIZE;
	pg.conns_max = UBS_CONNS_MAX;
	put_conns_file(&pg, tb);
	make_page(&pg, dead, "gone", cd, 0);
	pg.conns_off = UBS_STATS_SIZE;
	pg.conns_max = 4 * UBS_CONNS_MAX;       /* past the end of the file */
	put_conns_file(&pg, tb);

	cr_assert_eq(UBSCTL(out, err, "--json", "--all", "conns"), 0, "%s",
		     err);
	snprintf(want, sizeof(want), "{\"pid\":%s,\"service\":\"svc-a\","
		 "\"alive\":true,\"fd\":-1,\"side\":\"accepted\",\"state\":"
		 "\"ub\",\"local\":\"-\",\"remote\":\"-\",\"chan_id\":77,"
		 "\"tx\":100,\"rx\":200,\"peer\":{\"pid\":%s,\"fd\":-1},", pa, pb);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	snprintf(want, sizeof(want), "{\"pid\":%s,\"service\":\"svc-b\","
		 "\"alive\":true,\"fd\":-1,\"side\":\"connected\",\"state\":"
		 "\"ub\",\"local\":\"-\",\"remote\":\"-\",\"chan_id\":77,"
		 "\"tx\":200,\"rx\":100,\"peer\":{\"pid\":%s,\"fd\":-1},", pb, pa);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	snprintf(want, sizeof(want), "{\"pid\":%s,\"service\":\"svc-a\","
		 "\"alive\":true,\"fd\":-1,\"side\":\"accepted\",\"state\":"
		 "\"tcp\",\"local\":\"-\",\"remote\":\"-\",\"why\":"
		 "\"plain_peer\",", pa);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	cr_expect(strstr(err, "1 slots in an unknown state, skipped"), "%s",
		  err);
	cr_expect(strstr(err, "outside the file, skipped"), "%s", err);

	/* One process asked for: its rows only, its peer still found. */
	cr_assert_eq(UBSCTL(out, err, "--json", "conns", pb), 0, "%s", err);
	cr_expect(strstr(out, "\"service\":\"svc-b\""), "%s", out);
	cr_expect(!strstr(out, "\"service\":\"svc-a\""), "%s", out);
	snprintf(want, sizeof(want), "\"peer\":{\"pid\":%s,\"fd\":-1}", pa);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	/* The table: one line per row under the header. */
	cr_assert_eq(UBSCTL(out, err, "conns", "svc-a"), 0, "%s", err);
	cr_expect(strstr(out, "PID "), "%s", out);
	snprintf(want, sizeof(want), "%s/-1", pb);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	cr_expect(strstr(out, "plain_peer"), "%s", out);
}

/* Run python3 -c script under the preload (lib, or none) with stdout
 * into a new pipe whose read end is *rd; returns its pid. */
static pid_t spawn_py(const char *lib, const char *script, int *rd)
{
	int p[2];
	pid_t pid;

	cr_assert_eq(pipe(p), 0);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(p[1], 1);
		close(p[0]);
		close(p[1]);
		setenv("UBS_RUN_DIR", run_dir, 1);
		if (lib)
			setenv("LD_PRELOAD", lib, 1);
		else
			unsetenv("LD_PRELOAD");
		execlp("python3", "python3", "-c", script, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	*rd = p[0];
	return pid;
}

/* One line of fd (bounded by WAIT_MS), without its newline. */
static void read_line(int fd, char *buf, size_t n)
{
	size_t got = 0;

	for (int t = 0; t < WAIT_MS && got + 1 < n; ) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&p, 1, 50) <= 0) {
			t += 50;
			continue;
		}
		r = read(fd, buf + got, 1);
		if (r <= 0 || buf[got] == '\n')
			break;
		got++;
	}
	buf[got] = '\0';
}

/*
 * Real programs: a preloaded Python server holding a UB connection from
 * a preloaded client and a TCP one from a plain client.  `ubsctl conns`
 * shows the UB pair with the addresses the kernel gives, each end the
 * other's peer and the bytes each way, and the plain client's connection
 * as a TCP decision for a plain peer.
 */
Test(stats, conns_of_real_programs)
{
	static const char srv[] =
		"import socket\n"
		"l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(8)\n"
		"print(l.getsockname()[1], flush=True)\n"
		"k = []\n"
		"while True:\n"
		"    c, _ = l.accept(); c.sendall(c.recv(100) * 2); k.append(c)\n";
	static const char cli_fmt[] =
		"import socket, time\n"
		"s = socket.create_connection(('127.0.0.1', %s))\n"
		"s.sendall(b'hello'); n = 0\n"
		"while n < 10: n += len(s.recv(100))\n"
		"print(s.getsockname()[1], flush=True); time.sleep(20)\n";
	char libpath[PATH_MAX], ubsd[PATH_MAX], port[16], cport[16];
	char pport[16], cli[512], out[OUT_MAX], err[OUT_MAX], want[256];
	const char *lib = preload_lib(libpath, sizeof(libpath));
	pid_t spid, cpid, ppid;
	int srd, crd, prd;

	dt_bin_path(ubsd, sizeof(ubsd), "ubsd");
	dt_start_daemon(ubsd);

	spid = spawn_py(lib, srv, &srd);
	read_line(srd, port, sizeof(port));
	cr_assert(atoi(port) > 0, "server port: '%s'", port);
	snprintf(cli, sizeof(cli), cli_fmt, port);
	cpid = spawn_py(lib, cli, &crd);
	read_line(crd, cport, sizeof(cport));
	cr_assert(atoi(cport) > 0, "preloaded client: '%s'", cport);
	ppid = spawn_py(NULL, cli, &prd);
	read_line(prd, pport, sizeof(pport));
	cr_assert(atoi(pport) > 0, "plain client: '%s'", pport);

	cr_assert_eq(UBSCTL(out, err, "--json", "conns"), 0, "%s", err);
	snprintf(want, sizeof(want), "{\"pid\":%d,\"service\":\"python3\","
		 "\"alive\":true,\"fd\":", (int)spid);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	snprintf(want, sizeof(want), "\"side\":\"accepted\",\"state\":\"ub\","
		 "\"local\":\"127.0.0.1:%s\",\"remote\":\"127.0.0.1:%s\"", port,
		 cport);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	snprintf(want, sizeof(want), "\"side\":\"connected\",\"state\":"
		 "\"ub\",\"local\":\"127.0.0.1:%s\",\"remote\":\"127.0.0.1:%s\"",
		 cport, port);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	/* Bytes: the client sent 5 and read 10. */
	cr_expect(strstr(out, "\"tx\":10,\"rx\":5,\"peer\":{\"pid\":"),
		  "server's bytes in:\n%s", out);
	snprintf(want, sizeof(want), "\"tx\":5,\"rx\":10,\"peer\":{\"pid\":%d,",
		 (int)spid);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	snprintf(want, sizeof(want), "\"side\":\"accepted\",\"state\":\"tcp\","
		 "\"local\":\"127.0.0.1:%s\",\"remote\":\"127.0.0.1:%s\","
		 "\"why\":\"plain_peer\"", port, pport);
	cr_expect(strstr(out, want), "want %s in:\n%s", want, out);
	kill_reap(&ppid);
	kill_reap(&cpid);
	kill_reap(&spid);
	close(srd);
	close(crd);
	close(prd);
}

/*
 * A program that forbids file growth (RLIMIT_FSIZE 0, as sshd's
 * privilege-separated child does) while the library logs into a file
 * (UBS_LOG_FILE) is not killed by SIGXFSZ: its lines are lost, it lives.
 * socat (which, unlike python3, keeps SIGXFSZ's default action) talks to a
 * preloaded echo server over UB under `ulimit -f 0`.
 */
Test(stats, log_file_past_the_size_limit)
{
	static const char srv[] =
		"import socket\n"
		"l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(8)\n"
		"print(l.getsockname()[1], flush=True)\n"
		"c, _ = l.accept(); c.sendall(c.recv(100) * 2); c.recv(1)\n";
	char libpath[PATH_MAX], ubsd[PATH_MAX], log[PATH_MAX], port[16];
	char cmd[PATH_MAX * 3], out[64] = "";
	const char *lib = preload_lib(libpath, sizeof(libpath));
	int rd, status;
	struct stat st;
	pid_t spid;
	FILE *f;

	dt_bin_path(ubsd, sizeof(ubsd), "ubsd");
	dt_start_daemon(ubsd);
	path_in(log, sizeof(log), "ubs.log");
	spid = spawn_py(lib, srv, &rd);
	read_line(rd, port, sizeof(port));
	cr_assert(atoi(port) > 0, "server port: '%s'", port);
	snprintf(cmd, sizeof(cmd),
		 "echo hello | UBS_RUN_DIR='%s' LD_PRELOAD='%s' UBS_LOG=3 "
		 "UBS_LOG_FILE='%s' timeout 20 sh -c 'ulimit -f 0; exec socat "
		 "-t 1 - TCP:127.0.0.1:%s'", run_dir, lib, log, port);
	f = popen(cmd, "r");
	cr_assert_not_null(f);
	out[fread(out, 1, sizeof(out) - 1, f)] = '\0';
	status = pclose(f);
	kill(spid, SIGKILL);
	waitpid(spid, NULL, 0);
	close(rd);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "socat ended with status %#x (SIGXFSZ is %d)", status,
		  SIGXFSZ);
	cr_assert_str_eq(out, "hello\nhello\n");
	cr_assert_eq(stat(log, &st), 0, "the library opened no log file");
	cr_assert_eq(st.st_size, 0, "a line went past the limit");
}

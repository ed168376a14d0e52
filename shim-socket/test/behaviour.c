/* SPDX-License-Identifier: MIT */
/*
 * behaviour.c - the differential behaviour suite of the socket shim.
 *
 * Each test is one scenario of sockcase (sockcase.c): it runs it twice,
 * without the preload and with LD_PRELOAD=$UBS_PRELOAD_LIB (default: the
 * build's libubs_preload.so) against a private ubsd, and requires:
 *   - both runs exit 0 and print the same trace, byte for byte (what the
 *     program observed through the interposed calls: return values, errno,
 *     bytes, events, fd numbers); a failure names the first differing line
 *     of each process (SHIM_BEHAVIOUR_TRACES=1 logs both whole traces);
 *   - the preloaded run was accelerated: the ub_conns counters of the
 *     stats pages its processes published in RUN_DIR/stats add up to at
 *     least the case's expect_ub (exactly 0 when the case must stay on
 *     TCP; exactly exact_ub when the case declares it), and when the case
 *     moved 1 MiB or more, the kernel sockets' TCP_INFO byte counters
 *     (acked + received) stay under 1/100 of it;
 *   - the plain run proves the kernel counters work: there they cover
 *     every byte moved.
 * Every run is bounded (sockcase has its own alarm; the spawner kills its
 * process group and reaps it after RUN_TIMEOUT_MS).
 *
 * Both runs get SOCKCASE_RUN_DIR (the test's ubsd, for a case that runs
 * ubsctl) and SOCKCASE_HARNESS: two pipes at fixed fds through which a
 * case asks this suite to kill its ubsd or start it again (the daemon
 * stays this process's child, reaped here; see harness_request()).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "dtest.h"
#include "ubs_stats.h"

#ifndef UBS_PRELOAD_DEFAULT
#define UBS_PRELOAD_DEFAULT "build/libubs_preload.so"
#endif
#ifndef UBSD_PATH
#define UBSD_PATH "build/bin/ubsd"
#endif
#ifndef SOCKCASE_PATH
#define SOCKCASE_PATH "build/shim-socket/sockcase"
#endif

#define RUN_TIMEOUT_MS	15000		/* sockcase's own alarm is 10 s */
#define TRACE_CAP	(128 * 1024)
#define BIG_MOVE	(1024u * 1024u)	/* from here on, kbytes is checked */

extern char **environ;

/* One finished sockcase run. */
struct run {
	int status;
	size_t len;
	char out[TRACE_CAP];
	char err[2048];		/* tail of its stderr */
	bool have_k;
	uint64_t kbytes, moved;
	int expect_ub;
	int exact_ub;		/* > 0: ub_conns must be exactly this */
};

static const char *preload_lib(void)
{
	const char *lib = getenv("UBS_PRELOAD_LIB");

	return lib && lib[0] ? lib : UBS_PRELOAD_DEFAULT;
}

/* Creates the run directory with stats/ and starts the private ubsd. */
static void setup_conf(const char *conf_text)
{
	char stats[128];

	dt_make_run_dir("/tmp/ubs-behaviour-XXXXXX");
	/* Open to the child of other_uid_accept that becomes nobody (the
	 * control socket is 0666, as in /run/ubs). */
	path_in(stats, sizeof(stats), "");
	cr_assert_eq(chmod(stats, 0755), 0, "chmod %s: %s", stats,
		     strerror(errno));
	path_in(stats, sizeof(stats), "stats");
	cr_assert_eq(mkdir(stats, 0755), 0, "mkdir %s: %s", stats, strerror(errno));
	if (conf_text) {
		char conf[128];
		FILE *f;

		path_in(conf, sizeof(conf), "ubs.conf");
		f = fopen(conf, "w");
		cr_assert_not_null(f, "%s: %s", conf, strerror(errno));
		fputs(conf_text, f);
		fclose(f);
	}
	dt_start_daemon(UBSD_PATH);
}

static void setup(void)
{
	setup_conf(NULL);
}

/* board_full's daemon: a board of two slots. */
static void setup_small_board(void)
{
	setup_conf("[daemon]\nboard_slots = 2\n");
}

/* Empties and removes stats/, then the daemon and the run directory. */
static void teardown(void)
{
	char stats[128], path[512];
	struct dirent *de;
	DIR *d;

	path_in(stats, sizeof(stats), "stats");
	d = opendir(stats);
	while (d && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		snprintf(path, sizeof(path), "%s/%s", stats, de->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
	rmdir(stats);
	dt_teardown();
}

/*
 * Our environment minus LD_PRELOAD, UBS_* and SOCKCASE_*, plus the
 * NULL-terminated extra.  A preloaded run (ubs) keeps the UBS_* settings
 * the suite was started with (UBS_BOARD, UBS_MEM_POOL...), all but
 * UBS_RUN_DIR, which extra names.  Free with free_env().
 */
static char **child_env(const char *const *extra, bool ubs)
{
	size_t n = 0, k = 0;
	char **env;

	for (char **e = environ; *e; e++)
		n++;
	for (const char *const *x = extra; *x; x++)
		n++;
	env = calloc(n + 1, sizeof(*env));
	cr_assert_not_null(env);
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "SOCKCASE_", 9) &&
		    (strncmp(*e, "UBS_", 4) ||
		     (ubs && strncmp(*e, "UBS_RUN_DIR=", 12))))
			env[k++] = strdup(*e);
	for (const char *const *x = extra; *x; x++)
		env[k++] = strdup(*x);
	return env;
}

static void free_env(char **env)
{
	for (char **e = env; *e; e++)
		free(*e);
	free(env);
}

/* Reads the kstats file sockcase wrote (kbytes, moved, expect_ub,
 * exact_ub). */
static void read_kstats(const char *path, struct run *r)
{
	char text[256];
	int got = 0;
	unsigned long long k, m;
	int ub, exact = 0;

	slurp(path, text, sizeof(text));
	got = sscanf(text, "kbytes %llu\nmoved %llu\nexpect_ub %d\nexact_ub %d",
		     &k, &m, &ub, &exact);
	if (got >= 3) {
		r->have_k = true;
		r->kbytes = k;
		r->moved = m;
		r->expect_ub = ub;
		r->exact_ub = got == 4 ? exact : 0;
	}
}

/* The fds of sockcase's end of the harness pipes (SOCKCASE_HARNESS). */
#define HARNESS_WFD 200
#define HARNESS_RFD 201

/*
 * A request of the case through the harness pipe: 'K' kills the test's
 * ubsd (SIGKILL, reaped), 'S' starts it again and waits (bounded) for its
 * socket.  Answers with the request in lower case, or 'e'.
 */
static void harness_request(char req, int reply_fd)
{
	char sock[128], ans = 'e';
	struct stat st;

	path_in(sock, sizeof(sock), CTL_SOCK_NAME);
	if (req == 'K') {
		kill_reap(&daemon_pid);
		ans = 'k';
	} else if (req == 'S' && daemon_pid < 0) {
		unlink(sock);	/* the dead daemon's: wait for the new one */
		daemon_pid = dt_spawn_ubsd(UBSD_PATH, "ubsd.log", "ubs.conf");
		for (int t = 0; t < WAIT_MS; t += 5) {
			if (stat(sock, &st) == 0) {
				ans = 's';
				break;
			}
			if (waitpid(daemon_pid, NULL, WNOHANG) != 0) {
				daemon_pid = -1;
				break;
			}
			sleep_ms(5);
		}
	}
	if (write(reply_fd, &ans, 1) != 1)
		cr_log_error("harness: reply: %s", strerror(errno));
}

/*
 * Runs `sockcase name` with stdout captured into r, with the preload (and
 * UBS_RUN_DIR = the test's run dir) or without, in a clean process: its
 * own process group, stdin /dev/null, no inherited fd above 2 (so fd
 * numbers are the same in both runs).  Bounded: after RUN_TIMEOUT_MS its
 * group is killed and it is reaped, and the test fails.
 */
static void run_case(const char *name, bool preload, struct run *r)
{
	const char *mode = preload ? "ub" : "plain";
	char ld[4200], dir[128], kvar[200], kpath[128], errpath[128], tmp[64];
	char rdir[128], hvar[64];
	const char *extra[6] = { kvar, rdir, hvar, NULL, NULL, NULL };
	long long deadline = (long long)dt_now_ms() + RUN_TIMEOUT_MS;
	bool timed_out = false;
	char **env;
	int p[2], req[2], rep[2], ret;
	pid_t pid;

	memset(r, 0, sizeof(*r));
	snprintf(tmp, sizeof(tmp), "%s.%s.kstats", name, mode);
	path_in(kpath, sizeof(kpath), tmp);
	snprintf(tmp, sizeof(tmp), "%s.%s.err", name, mode);
	path_in(errpath, sizeof(errpath), tmp);
	snprintf(kvar, sizeof(kvar), "SOCKCASE_KSTATS=%s", kpath);
	snprintf(rdir, sizeof(rdir), "SOCKCASE_RUN_DIR=%s", run_dir);
	snprintf(hvar, sizeof(hvar), "SOCKCASE_HARNESS=%d,%d", HARNESS_WFD,
		 HARNESS_RFD);
	unlink(kpath);
	if (preload) {
		cr_assert_eq(access(preload_lib(), R_OK), 0, "%s: %s", preload_lib(),
			     strerror(errno));
		snprintf(ld, sizeof(ld), "LD_PRELOAD=%s", preload_lib());
		snprintf(dir, sizeof(dir), "UBS_RUN_DIR=%s", run_dir);
		extra[3] = ld;
		extra[4] = dir;
	}
	cr_assert_eq(access(SOCKCASE_PATH, X_OK), 0, "%s: %s", SOCKCASE_PATH,
		     strerror(errno));
	env = child_env(extra, preload);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(req, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(rep, O_CLOEXEC), 0);
	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY);
		int err = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		setpgid(0, 0);
		/* The harness pipes go to fixed high numbers (above what
		 * the case opens, so its fd numbers are as without them). */
		int hw = fcntl(req[1], F_DUPFD, 300), hr = fcntl(rep[0], F_DUPFD, 300);

		if (in < 0 || err < 0 || dup2(in, 0) < 0 || dup2(p[1], 1) < 0 ||
		    dup2(err, 2) < 0 || hw < 0 || hr < 0 ||
		    dup2(hw, HARNESS_WFD) < 0 || dup2(hr, HARNESS_RFD) < 0)
			_exit(126);
		syscall(SYS_close_range, 3U, HARNESS_WFD - 1U, 0U);
		syscall(SYS_close_range, HARNESS_RFD + 1U, ~0U, 0U);
		execle(SOCKCASE_PATH, "sockcase", name, (char *)NULL, env);
		_exit(127);
	}
	setpgid(pid, pid);	/* either side may win; both set the same */
	free_env(env);
	close(p[1]);
	close(req[1]);
	close(rep[0]);

	for (;;) {
		struct pollfd pfd[2] = { { .fd = p[0], .events = POLLIN },
					 { .fd = req[0], .events = POLLIN } };
		long long left = deadline - (long long)dt_now_ms();
		ssize_t n;

		if (left <= 0) {
			timed_out = true;
			break;
		}
		ret = poll(pfd, 2, (int)left);
		if (ret <= 0)
			continue;
		if (pfd[1].revents) {
			char c;

			if (read(req[0], &c, 1) == 1)
				harness_request(c, rep[1]);
			else	/* every sockcase process is gone */
				close(req[0]), req[0] = -1;
		}
		if (!pfd[0].revents)
			continue;
		n = read(p[0], r->out + r->len, sizeof(r->out) - 1 - r->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || (r->len += (size_t)n) == sizeof(r->out) - 1)
			break;
	}
	close(p[0]);
	if (req[0] >= 0)
		close(req[0]);
	close(rep[1]);
	r->out[r->len] = '\0';
	while (!timed_out) {
		ret = waitpid(pid, &r->status, WNOHANG);
		if (ret == pid)
			break;
		if ((long long)dt_now_ms() >= deadline)
			timed_out = true;
		else
			sleep_ms(5);
	}
	if (timed_out) {
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
		waitpid(pid, &r->status, 0);
	}
	{
		static char errtext[64 * 1024];
		size_t el;

		slurp(errpath, errtext, sizeof(errtext));
		el = strlen(errtext);
		snprintf(r->err, sizeof(r->err), "%s",
			 errtext + (el > sizeof(r->err) - 1 ? el - (sizeof(r->err) - 1) : 0));
	}
	cr_assert(!timed_out, "%s (%s) still running after %d ms; trace so far:\n%s",
		  name, mode, RUN_TIMEOUT_MS, r->out);
	read_kstats(kpath, r);
}

/* Copies line number `line` (0-based) of text[0..len) into out. */
static void nth_line(const char *text, size_t len, int line, char *out, size_t n)
{
	const char *s = text, *end = text + len, *e;

	for (int i = 0; i < line && s; i++) {
		s = memchr(s, '\n', (size_t)(end - s));
		if (s)
			s++;
	}
	if (!s || s >= end) {
		snprintf(out, n, "<none: ended>");
		return;
	}
	e = memchr(s, '\n', (size_t)(end - s));
	snprintf(out, n, "%.*s", (int)((e ? e : end) - s), s);
}

/* The 0-based line of the first difference of a[0..la) and b[0..lb), or -1. */
static int first_diff(const char *a, size_t la, const char *b, size_t lb)
{
	int line = 0;

	for (size_t i = 0;; i++) {
		if (i == la || i == lb)
			return la == lb ? -1 : line;
		if (a[i] != b[i])
			return line;
		if (a[i] == '\n')
			line++;
	}
}

/* The block "== name" of a trace (its lines after the header), or NULL. */
static const char *block_of(const char *text, const char *name, size_t *len)
{
	char head[32];
	const char *s, *e;

	snprintf(head, sizeof(head), "\n== %s\n", name);
	if (!strncmp(text, head + 1, strlen(head + 1)))
		s = text;		/* the first block */
	else if (!(s = strstr(text, head)))
		return NULL;
	else
		s += 1;
	s += strlen(head + 1);
	e = strstr(s, "\n== ");
	*len = e ? (size_t)(e + 1 - s) : strlen(s);
	return s;
}
/*
 * Describes where two traces differ into msg: for each process block
 * (server, client, child) that differs, its first differing line in both.
 */
static void describe_diff(const char *pa, const char *pb, char *msg, size_t n)
{
	static const char *const names[] = { "server", "client", "child" };
	char a[400], b[400], prev[400];
	size_t k = 0;

	msg[0] = '\0';
	for (int i = 0; i < 3; i++) {
		size_t la = 0, lb = 0;
		const char *ba = block_of(pa, names[i], &la);
		const char *bb = block_of(pb, names[i], &lb);
		int line;

		if (!ba && !bb)
			continue;
		line = first_diff(ba ? ba : "", la, bb ? bb : "", lb);
		if (line < 0)
			continue;
		nth_line(ba ? ba : "", la, line, a, sizeof(a));
		nth_line(bb ? bb : "", lb, line, b, sizeof(b));
		if (line > 0)
			nth_line(ba ? ba : "", la, line - 1, prev, sizeof(prev));
		k += (size_t)snprintf(msg + k, n - k, "\n  %s line %d%s%s:\n"
				      "    without preload: %s\n"
				      "    with preload:    %s", names[i], line + 1,
				      line > 0 ? ", after " : "", line > 0 ? prev : "",
				      ba ? a : "<no block>", bb ? b : "<no block>");
		if (k >= n)
			return;
	}
	if (!k) {		/* outside the blocks (e.g. a TIMEOUT line) */
		int line = first_diff(pa, strlen(pa), pb, strlen(pb));
		nth_line(pa, strlen(pa), line, a, sizeof(a));
		nth_line(pb, strlen(pb), line, b, sizeof(b));
		snprintf(msg, n, "\n  line %d:\n    without preload: %s\n"
			 "    with preload:    %s", line + 1, a, b);
	}
}

/*
 * Sums counter id over the stats pages in RUN_DIR/stats (each checked
 * for magic, version and size); *pages (if not NULL) gets how many there
 * were.
 */
static uint64_t sum_counter_pages(enum ubs_stat_id id, int *pages)
{
	char stats[128], path[512];
	struct ubs_stats_page page;
	struct dirent *de;
	uint64_t sum = 0;
	int n_pages = 0;
	DIR *d;

	path_in(stats, sizeof(stats), "stats");
	d = opendir(stats);
	cr_assert_not_null(d, "%s: %s", stats, strerror(errno));
	while ((de = readdir(d))) {
		ssize_t n;
		int fd;

		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;	/* ".", "..", a temporary name */
		snprintf(path, sizeof(path), "%s/%s", stats, de->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = pread(fd, &page, sizeof(page), 0);
		close(fd);
		cr_assert_eq(n, (ssize_t)sizeof(page), "short stats page %s", path);
		cr_assert_eq(page.magic, UBS_STATS_MAGIC, "bad magic in %s", path);
		cr_assert_eq(page.version, UBS_STATS_VERSION, "version of %s", path);
		cr_assert_gt(page.ncounters, (uint32_t)id, "ncounters of %s", path);
		sum += __atomic_load_n(&page.counters[id], __ATOMIC_RELAXED);
		n_pages++;
	}
	closedir(d);
	if (pages)
		*pages = n_pages;
	return sum;
}

/* How a run ended, for messages. */
static const char *status_text(int st, char *buf, size_t n)
{
	if (WIFEXITED(st))
		snprintf(buf, n, "exit %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		snprintf(buf, n, "signal %d", WTERMSIG(st));
	else
		snprintf(buf, n, "status 0x%x", st);
	return buf;
}

static struct run plain_run, ub_run;

/* The whole check of one case; see the file comment. */
static void check_case(const char *name)
{
	struct run *plain = &plain_run, *ub = &ub_run;
	char diff[2048], st[64];
	uint64_t ub_conns;
	int pages;

	run_case(name, false, plain);
	cr_assert(WIFEXITED(plain->status) && WEXITSTATUS(plain->status) == 0,
		  "%s without the preload: %s (a bug of the case itself); trace:\n%s"
		  "stderr:\n%s", name, status_text(plain->status, st, sizeof(st)),
		  plain->out, plain->err);
	cr_assert(plain->have_k, "%s: no kstats from the plain run", name);
	if (plain->moved >= BIG_MOVE)
		cr_assert_geq(plain->kbytes, plain->moved,
			      "%s: plain run moved %" PRIu64 " bytes but TCP_INFO "
			      "counted only %" PRIu64 ": the measure is broken", name,
			      plain->moved, plain->kbytes);

	run_case(name, true, ub);
	if (strcmp(plain->out, ub->out)) {
		describe_diff(plain->out, ub->out, diff, sizeof(diff));
		if (getenv("SHIM_BEHAVIOUR_TRACES")) {
			cr_log_error("%s: trace without the preload:\n%s", name, plain->out);
			cr_log_error("%s: trace with the preload:\n%s", name, ub->out);
		}
		if (ub->err[0])
			cr_log_error("%s: stderr with the preload:\n%s", name, ub->err);
		cr_assert_fail("%s: traces differ (first difference of each process):%s",
			       name, diff);
	}
	cr_assert(WIFEXITED(ub->status) && WEXITSTATUS(ub->status) == 0,
		  "%s with the preload: %s; stderr:\n%s", name,
		  status_text(ub->status, st, sizeof(st)), ub->err);
	cr_assert(ub->have_k, "%s: no kstats from the preloaded run", name);

	ub_conns = sum_counter_pages(UBS_STAT_UB_CONNS, &pages);
	if (ub->exact_ub > 0)
		cr_assert_eq(ub_conns, (uint64_t)ub->exact_ub, "%s: the stats pages "
			     "count %" PRIu64 " UB connection ends, the case expects "
			     "exactly %d", name, ub_conns, ub->exact_ub);
	else if (ub->expect_ub == 0)
		cr_assert_eq(ub_conns, 0, "%s must stay on TCP, but the stats pages "
			     "count %" PRIu64 " UB connections", name, ub_conns);
	else
		cr_assert_geq(ub_conns, (uint64_t)ub->expect_ub,
			      "%s was not accelerated: ub_conns %" PRIu64 " over %d "
			      "stats pages, expected >= %d", name, ub_conns, pages,
			      ub->expect_ub);
	if (ub->moved >= BIG_MOVE)
		cr_assert_lt(ub->kbytes, ub->moved / 100,
			     "%s moved %" PRIu64 " bytes but the kernel TCP sockets "
			     "counted %" PRIu64 " (TCP_INFO acked+received): the bytes "
			     "went over TCP", name, ub->moved, ub->kbytes);
}

/* The cases, as sockcase --list prints them. */
static const char *const case_names[] = {
	"roundtrip", "bulk", "readv_writev", "recv_flags", "sendto_sendmsg",
	"nonblock_connect", "accept4_flags", "fill_eagain", "half_close",
	"close_remaining", "peer_reset", "late_accept", "late_accept_close",
	"raw_accept", "other_uid_accept", "board_full",
	"peer_killed", "poll_select",
	"epoll_lt", "epoll_et", "epoll_oneshot", "epoll_rdhup", "fionread",
	"names", "fork_shared", "dup_fds", "nonblock_fcntl", "rcvtimeo",
	"refused", "server_first", "sequential", "duplex", "sigpipe",
	"sendfile", "splice", "exec_inherit", "exec_keep", "exec_drop",
	"demote_poll", "exec_forged", "exec_fails", "plain_peer",
	"eintr_restart",
	"eintr_norestart", "eintr_timeout", "eintr_poll", "eintr_partial",
	"handler_write",
	"threads_close", "policy_flip", "daemon_restart", "mmsg",
	"mmsg_timeout", "fork_handoff", "close_others", "dup2_others", "uring", "connect_ahead",
	"epoll_many", "epoll_connecting",
};

/* Every case of sockcase has a test here, and no test names a lost case. */
Test(shim_behaviour, case_list_matches, .timeout = 30)
{
	char cmd[512], line[128];
	size_t n = 0;
	FILE *f;

	snprintf(cmd, sizeof(cmd), "%s --list", SOCKCASE_PATH);
	f = popen(cmd, "r");
	cr_assert_not_null(f, "%s: %s", cmd, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		cr_expect(n < sizeof(case_names) / sizeof(case_names[0]) &&
			  !strcmp(line, case_names[n]),
			  "sockcase case %zu is %s, behaviour.c says %s", n, line,
			  n < sizeof(case_names) / sizeof(case_names[0]) ?
			  case_names[n] : "nothing");
		n++;
	}
	cr_assert_eq(pclose(f), 0, "%s failed", cmd);
	cr_assert_eq(n, sizeof(case_names) / sizeof(case_names[0]),
		     "sockcase has %zu cases, behaviour.c %zu", n,
		     sizeof(case_names) / sizeof(case_names[0]));
}

#define CASE(n)								\
	Test(shim_behaviour, n, .init = setup, .fini = teardown, .timeout = 60) \
	{								\
		check_case(#n);						\
	}

CASE(roundtrip)
CASE(bulk)
CASE(readv_writev)
CASE(recv_flags)
CASE(sendto_sendmsg)
CASE(nonblock_connect)
CASE(accept4_flags)
CASE(fill_eagain)
CASE(half_close)
CASE(close_remaining)
CASE(peer_reset)
CASE(late_accept)
CASE(late_accept_close)
/* Is the board on for this run (not UBS_BOARD=0)? */
static bool board_on(void)
{
	const char *b = getenv("UBS_BOARD");

	return !(b && !strcmp(b, "0"));
}

/* The client's post went TCP by its own deadline (tcp_no_channel), not
 * handed back. */
Test(shim_behaviour, raw_accept, .init = setup, .fini = teardown,
     .timeout = 60)
{
	check_case("raw_accept");
	if (board_on())
		cr_assert_eq(sum_counter_pages(UBS_STAT_TCP_NO_CHANNEL, NULL), 1,
			     "the client's deadline did not end its post");
}

/* ubsd handed the post back (tcp_peer_tcp), before the client's own
 * deadline would have (tcp_no_channel). */
Test(shim_behaviour, other_uid_accept, .init = setup, .fini = teardown,
     .timeout = 60)
{
	check_case("other_uid_accept");
	if (board_on() && geteuid() == 0) {
		cr_assert_eq(sum_counter_pages(UBS_STAT_TCP_PEER_TCP, NULL), 1,
			     "ubsd did not hand the post back");
		cr_assert_eq(sum_counter_pages(UBS_STAT_TCP_NO_CHANNEL, NULL),
			     0, "the client's deadline ended its post");
	}
}
Test(shim_behaviour, board_full, .init = setup_small_board, .fini = teardown,
     .timeout = 60)
{
	check_case("board_full");
}
CASE(peer_killed)
CASE(poll_select)
CASE(epoll_lt)
CASE(epoll_et)
CASE(epoll_oneshot)
CASE(epoll_rdhup)
CASE(fionread)
CASE(names)
CASE(fork_shared)
CASE(dup_fds)
CASE(nonblock_fcntl)
CASE(rcvtimeo)
CASE(refused)
CASE(server_first)
CASE(sequential)
CASE(duplex)
CASE(sigpipe)
CASE(sendfile)
CASE(splice)
CASE(exec_inherit)
CASE(exec_keep)
CASE(exec_drop)
CASE(demote_poll)
CASE(exec_forged)
CASE(exec_fails)
CASE(plain_peer)
CASE(eintr_restart)
CASE(eintr_norestart)
CASE(eintr_timeout)
CASE(eintr_poll)
CASE(eintr_partial)
CASE(handler_write)
CASE(threads_close)
CASE(policy_flip)
CASE(daemon_restart)
CASE(mmsg)
CASE(mmsg_timeout)
CASE(fork_handoff)
CASE(close_others)
CASE(dup2_others)
CASE(uring)
CASE(connect_ahead)
CASE(epoll_connecting)

/*
 * epoll_many, and then: its waits (about 40, over a set of 2000 UB
 * connections, one active at a time) looked at the registrations that
 * peers posted as ready, not at the whole set each time: every
 * registration once when it is added, then a few per wait.  Looking at
 * the whole set per wait would count at least 40 x 2000.
 */
Test(shim_behaviour, epoll_many_looks_at_ready_ones_only, .init = setup,
     .fini = teardown, .timeout = 60)
{
	uint64_t checks;

	check_case("epoll_many");
	checks = sum_counter_pages(UBS_STAT_EP_CHECKS, NULL);
	cr_assert_gt(checks, 0, "no epoll wait was counted");
	cr_assert_leq(checks, 2000 + 2000 / 2, "epoll waits looked at %" PRIu64
		      " registrations: O(registrations) per wait", checks);
}

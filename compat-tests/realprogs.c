/* SPDX-License-Identifier: MIT */
/*
 * realprogs.c - real, unmodified programs under libubs_preload.so: Redis
 * (redis-server, redis-cli, redis-benchmark), Nginx (curl, wrk) and
 * memcached (memccp, memccat, memcslap from libmemcached-tools).
 *
 * Each test runs in a network namespace of its own (when it can create
 * one: root, or CAP_SYS_ADMIN; else in the host's, with a warning and
 * without the kernel checks), with its own ubsd in a mkdtemp run
 * directory holding stats/, so that
 *   - the stats pages of RUN_DIR/stats are this test's processes only,
 *     read with `ubsctl --json --all stats SERVICE` (service = program
 *     name);
 *   - the kernel's IP byte counters of the namespace (IpExt OutOctets in
 *     /proc/net/netstat) count this test's TCP traffic only: the proof,
 *     from the kernel's side, that a payload did or did not cross TCP.
 * Every process is started by fork/exec in a process group of its own,
 * bounded in time, and killed (its group, by pid) and reaped; servers die
 * with the test process (PR_SET_PDEATHSIG) if it is killed.
 *
 * Three modes per program:
 *   ub            both sides preloaded: the results are right; every
 *                 connection made (the namespace's Tcp PassiveOpens) is UB
 *                 on the server and on a client (ub_conns equal, no
 *                 tcp_conns anywhere); UB bytes cover the payload each
 *                 way and nobody received more than the other side sent;
 *                 the kernel sent less than a tenth of what moved (at most
 *                 1 KiB per connection for its handshake and close);
 *   plain_client  preloaded server, client without the preload: results
 *                 right; every connection TCP on the server (tcp_conns ==
 *                 PassiveOpens, all for a plain peer), no UB connection or
 *                 byte; the kernel carried the payload;
 *   plain_server  server without the preload, preloaded client: results
 *                 right; the clients' connects were seen, no UB
 *                 connection or byte; the kernel carried the payload.
 *                 (The client's tcp_conns stays 0: it counts candidates
 *                 only, and a port without a UB listener is none.)
 * The netns_* tests run the same programs across two network namespaces
 * of their own, A (servers, on 0.0.0.0) and B (clients), joined by a
 * veth pair the test creates and deletes, with one ubsd in the test's
 * namespace for both (two_namespaces()): ub, plain_client and
 * plain_server as above, the kernel's counters summed over the three
 * namespaces; and with `cross_netns = off` (SIGHUP) both ends preloaded
 * get TCP, at once (each curl timed), for the reason the daemon gives.
 * A test that fails here because a program misbehaves under the preload
 * is a shim bug: see README.md.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dtest.h"
#include "ubs_stats.h"

extern char **environ;

#define RUN_MS          20000   /* any one client run */
#define MAX_SERVERS     4
#define KIB             1024u
#define MIB             (1024u * 1024u)

/* ------------------------------------------------------------ set-up */

static char bin_dir[1024];              /* build/bin */
static char preload_lib[1024];
static bool own_netns;                  /* kernel counters are ours */
static bool across;                     /* server and clients in two
					 * namespaces (two_namespaces) */
static bool other_uid;                  /* the server's workers are not of
					 * the clients' uid (start_nginx) */
static int port;                        /* the server's port */
static pid_t server_pids[MAX_SERVERS];
static int nservers;

/*
 * Where the programs run.  By default everything is in the test's own
 * namespace (HOME), servers on 127.0.0.1.  two_namespaces() moves the
 * servers into A (listening on 0.0.0.0) and the clients into B, which
 * connect to A's veth address; ubsd, ubsctl and the test stay in HOME.
 */
enum { HOME = -1, NS_A = 0, NS_B = 1 };
#define ADDR_A          "10.79.0.1"
#define ADDR_B          "10.79.0.2"
static int ns_fd[2] = { -1, -1 };       /* A and B: held by these fds */
static int home_fd = -1;                /* HOME, to come back to */
static char veth[2][16];                /* A's end, B's end */
static bool have_veth;
static int server_ns = HOME, client_ns = HOME;
static const char *srv_host = "127.0.0.1";  /* what clients connect to */
static const char *srv_bind = "127.0.0.1";  /* what servers listen on */
static bool preload_log;                /* UBS_LOG=debug into ubs-debug.log */

/* build/tests/compat-realprogs -> build/bin, build/libubs_preload.so. */
static void find_build(void)
{
	char exe[900], *slash;
	const char *lib = getenv("UBS_PRELOAD_LIB");
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	cr_assert(n > 0);
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	cr_assert_not_null(slash);
	*slash = '\0';                          /* build/tests */
	snprintf(bin_dir, sizeof(bin_dir), "%s/../bin", exe);
	if (lib && *lib)
		snprintf(preload_lib, sizeof(preload_lib), "%.1000s", lib);
	else
		snprintf(preload_lib, sizeof(preload_lib),
			 "%s/../libubs_preload.so", exe);
	cr_assert_eq(access(preload_lib, R_OK), 0, "no preload library at "
		     "%s (UBS_PRELOAD_LIB)", preload_lib);
}

/* A network namespace of our own with lo up; false if not allowed. */
static bool enter_netns(void)
{
	struct ifreq ifr = { .ifr_name = "lo" };
	int fd;

	if (unshare(CLONE_NEWNET) != 0) {
		cr_log_warn("unshare(CLONE_NEWNET): %s: running in the host's "
			    "network namespace, without the kernel byte "
			    "checks", strerror(errno));
		return false;
	}
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert(fd >= 0);
	cr_assert_eq(ioctl(fd, SIOCGIFFLAGS, &ifr), 0, "%s", strerror(errno));
	ifr.ifr_flags |= IFF_UP;
	cr_assert_eq(ioctl(fd, SIOCSIFFLAGS, &ifr), 0, "%s", strerror(errno));
	close(fd);
	return true;
}

/* A free TCP port on 127.0.0.1 (bound once, then released). */
static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), p;

	cr_assert(fd >= 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	p = ntohs(a.sin_port);
	close(fd);
	return p;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	if (ftw->level > 0)
		remove(path);
	return 0;
}

static int guard_fd = -1;               /* to the guard: server groups */
static pid_t guard_pid = -1;

/*
 * The guard, a child that does not die with the test process: it is
 * told the process group of each server, and if the test process dies
 * without its teardown (Criterion's timeout SIGKILLs it) it kills those
 * groups and ubsd and removes the run directory.  The servers die with
 * the test process themselves (PR_SET_PDEATHSIG), but not their own
 * children (nginx's worker), which would live on, listening, in a
 * namespace nobody can reach any more.  Teardown sends 0: nothing to do.
 */
static void start_guard(void)
{
	int p[2];

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0, "pipe: %s", strerror(errno));
	guard_pid = fork();
	cr_assert(guard_pid >= 0, "fork: %s", strerror(errno));
	if (guard_pid == 0) {
		pid_t groups[MAX_SERVERS], ubsd = daemon_pid;
		int null = open("/dev/null", O_RDWR), n = 0;
		int32_t v;

		/* Only the pipe: no fd of the test runner's kept open. */
		if (null < 0)
			_exit(1);
		for (int fd = 0; fd < 3; fd++)
			dup2(null, fd);
		if (dup2(p[0], 3) < 0)
			_exit(1);
		close_range(4, ~0U, 0);
		while (read(3, &v, sizeof(v)) == sizeof(v)) {
			if (v == 0)
				_exit(0);
			if (n < MAX_SERVERS)
				groups[n++] = v;
		}
		kill(ubsd, SIGKILL);
		for (int i = 0; i < n; i++)
			kill(-groups[i], SIGKILL);
		sleep_ms(200);          /* ubsd's last writes */
		nftw(run_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
		rmdir(run_dir);
		_exit(0);
	}
	close(p[0]);
	guard_fd = p[1];
}

/* Tell the guard about a server's process group (its pid). */
static void guard_add(pid_t pgid)
{
	int32_t v = (int32_t)pgid;

	cr_assert_eq(write(guard_fd, &v, sizeof(v)), (ssize_t)sizeof(v));
}

/* Teardown: the guard has nothing to do; it exits and is reaped. */
static void stop_guard(void)
{
	int32_t v = 0;

	if (guard_fd >= 0) {
		if (write(guard_fd, &v, sizeof(v)) != sizeof(v))
			kill(guard_pid, SIGKILL);
		close(guard_fd);
		guard_fd = -1;
	}
	if (guard_pid > 0)
		waitpid(guard_pid, NULL, 0);
	guard_pid = -1;
}

static void setup(void)
{
	char path[1100];

	/* Orphans of our servers (nginx's worker, when its master is
	 * killed first) become our children: teardown reaps them. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	find_build();
	own_netns = enter_netns();
	dt_make_run_dir("/tmp/ubs-compat.XXXXXX");
	/* nginx's worker runs as nobody when we are root: it must reach
	 * the files it serves. */
	cr_assert_eq(chmod(run_dir, 0755), 0);
	path_in(path, sizeof(path), "stats");
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/ubsd", bin_dir);
	dt_start_daemon(path);
	start_guard();
	port = free_port();
	nservers = 0;
}

static void drop_namespaces(void);

/* Kill every server's process group and reap all its members (ours, as
 * subreaper, once their parent is gone), then remove what the test
 * made. */
static void teardown(void)
{
	for (int i = 0; i < nservers; i++) {
		if (server_pids[i] > 0) {
			kill(-server_pids[i], SIGKILL);
			while (waitpid(-server_pids[i], NULL, 0) > 0 ||
			       errno == EINTR)
				;
			server_pids[i] = -1;
		}
	}
	stop_guard();
	drop_namespaces();
	/* Everything but ubsd's own files; dt_teardown checks the daemon
	 * survived and removes the rest. */
	nftw(run_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	dt_teardown();
}

TestSuite(compat, .init = setup, .fini = teardown, .timeout = 45);

/* ------------------------------------------------------- processes */

/* Our environment minus LD_PRELOAD and UBS_*, plus UBS_RUN_DIR and, with
 * preload, LD_PRELOAD (and with preload_log the library's debug log into
 * RUN_DIR/ubs-debug.log).  A preloaded program keeps the UBS_* settings
 * the suite was started with (UBS_MEM_POOL, UBS_BOARD...), all but
 * UBS_RUN_DIR and the log's.  Built in the child (no free needed). */
static char **child_env(bool preload)
{
	static char rd[128], lp[PATH_MAX + 16], lf[160];
	size_t n = 0, k = 0;
	char **env;

	for (char **e = environ; *e; e++)
		n++;
	env = calloc(n + 5, sizeof(*env));
	if (!env)
		_exit(126);
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11) &&
		    (strncmp(*e, "UBS_", 4) ||
		     (preload && strncmp(*e, "UBS_RUN_DIR=", 12) &&
		      strncmp(*e, "UBS_LOG", 7))))
			env[k++] = *e;
	snprintf(rd, sizeof(rd), "UBS_RUN_DIR=%s", run_dir);
	env[k++] = rd;
	if (preload) {
		snprintf(lp, sizeof(lp), "LD_PRELOAD=%s", preload_lib);
		env[k++] = lp;
	}
	if (preload && preload_log) {
		snprintf(lf, sizeof(lf), "UBS_LOG_FILE=%s/ubs-debug.log",
			 run_dir);
		env[k++] = "UBS_LOG=debug";
		env[k++] = lf;
	}
	return env;
}

/*
 * Start argv[0] (searched in PATH) with or without the preload, in
 * network namespace ns (HOME, NS_A, NS_B), in RUN_DIR/cwd (or RUN_DIR),
 * stdin from RUN_DIR/in (or /dev/null), stdout and stderr into
 * RUN_DIR/out and RUN_DIR/err.  Its own process group; it dies with the
 * test process.  Returns its pid.
 */
static pid_t spawn(const char *const *argv, bool preload, int ns,
		   const char *cwd, const char *in, const char *out,
		   const char *err)
{
	char p[3][PATH_MAX];
	pid_t pid;

	snprintf(p[0], sizeof(p[0]), "%s/%s", run_dir, in ? in : "");
	snprintf(p[1], sizeof(p[1]), "%s/%s", run_dir, out);
	snprintf(p[2], sizeof(p[2]), "%s/%s", run_dir, err);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		char dir[PATH_MAX];
		int fd;

		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		fd = open(in ? p[0] : "/dev/null", O_RDONLY);
		if (fd < 0)
			_exit(125);
		dup2(fd, 0);
		fd = open(p[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			_exit(125);
		dup2(fd, 1);
		fd = open(p[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			_exit(125);
		dup2(fd, 2);
		if (ns != HOME && setns(ns_fd[ns], CLONE_NEWNET) != 0) {
			fprintf(stderr, "setns: %s\n", strerror(errno));
			_exit(124);
		}
		snprintf(dir, sizeof(dir), "%s/%s", run_dir, cwd ? cwd : "");
		if (chdir(dir) < 0)
			_exit(125);
		execvpe(argv[0], (char *const *)argv, child_env(preload));
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	setpgid(pid, pid);      /* either of us may get there first */
	return pid;
}

/* The last ~1.5 KiB of RUN_DIR/name, for failure messages. */
static const char *tail_of(const char *name)
{
	static char buf[4][1600];
	static int k;
	char path[PATH_MAX], *b = buf[k++ % 4];
	off_t size;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", run_dir, name);
	b[0] = '\0';
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return "(no file)";
	size = lseek(fd, 0, SEEK_END);
	if (size > (off_t)sizeof(buf[0]) - 1)
		lseek(fd, size - (off_t)sizeof(buf[0]) + 1, SEEK_SET);
	else
		lseek(fd, 0, SEEK_SET);
	ssize_t n = read(fd, b, sizeof(buf[0]) - 1);
	b[n > 0 ? n : 0] = '\0';
	close(fd);
	return b;
}

static uint64_t last_run_us;            /* wall time of the last run_in */

/*
 * Run a program in namespace ns to its end (at most RUN_MS; then its
 * group is killed and the test fails).  out/err are RUN_DIR/NAME.out and
 * NAME.err, NAME = argv[0] + tag.  Returns its exit code (-1: killed by
 * a signal); its wall time, fork to reap, is in last_run_us.
 */
static int run_in(int ns, const char *const *argv, bool preload,
		  const char *cwd, const char *in, const char *tag)
{
	char out[96], err[96];
	uint64_t t0 = dt_now_us();
	int status;
	pid_t pid;

	snprintf(out, sizeof(out), "%s%s.out", argv[0], tag);
	snprintf(err, sizeof(err), "%s%s.err", argv[0], tag);
	pid = spawn(argv, preload, ns, cwd, in, out, err);
	while (dt_now_us() - t0 < (uint64_t)RUN_MS * 1000) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		cr_assert(r >= 0, "waitpid: %s", strerror(errno));
		if (r == pid) {
			last_run_us = dt_now_us() - t0;
			if (WIFSIGNALED(status))
				cr_log_error("%s%s: killed by signal %d; "
					     "stderr:\n%s", argv[0], tag,
					     WTERMSIG(status), tail_of(err));
			return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		}
		sleep_ms(2);
	}
	kill(-pid, SIGKILL);
	waitpid(pid, NULL, 0);
	cr_assert_fail("%s%s did not finish within %d ms%s; stderr:\n%s",
		       argv[0], tag, RUN_MS, preload ? " (preloaded)" : "",
		       tail_of(err));
	return -1;
}

/* A client: run_in the clients' namespace. */
static int run_client(const char *const *argv, bool preload, const char *cwd,
		      const char *in, const char *tag)
{
	return run_in(client_ns, argv, preload, cwd, in, tag);
}

/* Is something listening on port p (any TCP listener on the port) in
 * the network namespace of process pid?  Read from /proc: probing with a
 * connection would count in the server's stats. */
static bool listening(pid_t pid, int p)
{
	char line[512], want[16], path[64];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/net/tcp", (int)pid);
	f = fopen(path, "r");

	if (!f)
		return false;
	snprintf(want, sizeof(want), ":%04X ", p);
	while (!found && fgets(line, sizeof(line), f)) {
		char *local = strchr(line, ':');        /* "sl:" */
		if (!local)
			continue;
		local = strchr(local + 1, ':');         /* local addr:port */
		if (local && strncmp(local, want, strlen(want)) == 0 &&
		    strstr(line, " 0A "))
			found = true;
	}
	fclose(f);
	return found;
}

/* Start a server in the servers' namespace; wait (bounded) until it
 * listens on port there. */
static pid_t start_server(const char *const *argv, bool preload)
{
	char out[96], err[96];
	pid_t pid;
	int status;

	cr_assert(nservers < MAX_SERVERS);
	snprintf(out, sizeof(out), "%s.out", argv[0]);
	snprintf(err, sizeof(err), "%s.err", argv[0]);
	pid = spawn(argv, preload, server_ns, NULL, NULL, out, err);
	server_pids[nservers++] = pid;
	guard_add(pid);
	for (int t = 0; t < WAIT_MS; t += 10) {
		if (listening(pid, port))
			return pid;
		cr_assert_eq(waitpid(pid, &status, WNOHANG), 0,
			     "%s exited at start (status 0x%x); stdout:\n%s\n"
			     "stderr:\n%s", argv[0], status, tail_of(out),
			     tail_of(err));
		sleep_ms(10);
	}
	cr_assert_fail("%s does not listen on port %d; stderr:\n%s", argv[0],
		       port, tail_of(err));
	return -1;
}

/* The server (server_pids[i]) must still run. */
static void expect_alive(int i, const char *name)
{
	char err[96];

	snprintf(err, sizeof(err), "%s.err", name);
	cr_expect_eq(waitpid(server_pids[i], NULL, WNOHANG), 0,
		     "%s died during the test; stderr:\n%s", name,
		     tail_of(err));
}

/* --------------------------------------------------- two namespaces */

/*
 * Run `ip ARGS` in namespace ns (ARGS: the formatted text split at
 * spaces; shown: that text, for messages); bounded like a client.
 * Returns its exit code; its stderr is RUN_DIR/ip.err.
 */
__attribute__((format(printf, 4, 0)))
static int ip_v(int ns, char *shown, size_t n, const char *fmt, va_list ap)
{
	char cmd[256], *save = NULL, *tok;
	const char *argv[24] = { "ip" };
	int argc = 1;

	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	snprintf(shown, n, "%s", cmd);
	for (tok = strtok_r(cmd, " ", &save); tok && argc < 23;
	     tok = strtok_r(NULL, " ", &save))
		argv[argc++] = tok;
	argv[argc] = NULL;
	return run_in(ns, argv, false, NULL, NULL, "");
}

/* ip_v with its arguments. */
__attribute__((format(printf, 4, 5)))
static int ip_run(int ns, char *shown, size_t n, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = ip_v(ns, shown, n, fmt, ap);
	va_end(ap);
	return rc;
}

static const char *ns_name(int ns)
{
	return ns == NS_A ? "A" : ns == NS_B ? "B" : "the test's namespace";
}

/* `ip ARGS` in ns must succeed; otherwise the test fails, saying why. */
__attribute__((format(printf, 2, 3)))
static void ip_in(int ns, const char *fmt, ...)
{
	char shown[256];
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = ip_v(ns, shown, sizeof(shown), fmt, ap);
	va_end(ap);
	cr_assert_eq(rc, 0, "`ip %s` in %s failed (exit %d): %s\n"
		     "the namespace tests need root and iproute2 (ip, veth); "
		     "see scripts/setup-deps", shown, ns_name(ns), rc,
		     tail_of("ip.err"));
}

/*
 * Two network namespaces, A (the servers', ADDR_A) and B (the clients',
 * ADDR_B), joined by a veth pair, lo up in both; ubsd and ubsctl stay in
 * the test's own namespace, as on a host whose containers are A and B.
 * The namespaces have no name: they are held by the test's fds (and by
 * the processes in them), so nothing can outlive the test.  The veth
 * pair (named after the test's pid) is made in A with its peer created
 * in B, so it never exists in the test's own namespace; teardown deletes
 * it.  Fails (never skips) without the privileges or iproute2.
 */
static void two_namespaces(void)
{
	int me = (int)getpid();

	across = true;
	cr_assert(own_netns, "the namespace tests need root (CAP_SYS_ADMIN, "
		  "CAP_NET_ADMIN): unshare(CLONE_NEWNET) was refused");
	home_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	cr_assert(home_fd >= 0, "/proc/thread-self/ns/net: %s",
		  strerror(errno));
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(unshare(CLONE_NEWNET), 0, "unshare: %s",
			     strerror(errno));
		ns_fd[i] = open("/proc/thread-self/ns/net",
				O_RDONLY | O_CLOEXEC);
		cr_assert_eq(setns(home_fd, CLONE_NEWNET), 0, "setns: %s",
			     strerror(errno));
		cr_assert(ns_fd[i] >= 0, "/proc/thread-self/ns/net: %s",
			  strerror(errno));
	}
	snprintf(veth[NS_A], sizeof(veth[NS_A]), "ubsA%d", me);
	snprintf(veth[NS_B], sizeof(veth[NS_B]), "ubsB%d", me);
	ip_in(NS_A, "link add %s type veth peer name %s netns /proc/%d/fd/%d",
	      veth[NS_A], veth[NS_B], me, ns_fd[NS_B]);
	have_veth = true;
	ip_in(NS_A, "addr add " ADDR_A "/24 dev %s", veth[NS_A]);
	ip_in(NS_B, "addr add " ADDR_B "/24 dev %s", veth[NS_B]);
	for (int i = 0; i < 2; i++) {
		ip_in(i, "link set lo up");
		ip_in(i, "link set %s up", veth[i]);
	}
	server_ns = NS_A;
	client_ns = NS_B;
	srv_host = ADDR_A;
	srv_bind = "0.0.0.0";
	cr_log_info("namespaces A (%s, " ADDR_A ") and B (%s, " ADDR_B ")",
		    veth[NS_A], veth[NS_B]);
}

/* Teardown, once the servers are dead: delete the veth pair (both ends
 * go; at once, whereas a namespace's own clean-up after its last
 * reference is deferred) and let go of the namespaces. */
static void drop_namespaces(void)
{
	if (have_veth) {
		char shown[256];
		int rc;

		have_veth = false;
		rc = ip_run(NS_A, shown, sizeof(shown), "link del %s",
			    veth[NS_A]);
		cr_expect_eq(rc, 0, "`ip %s` in A failed (exit %d): %s", shown,
			     rc, tail_of("ip.err"));
	}
	for (int i = 0; i < 2; i++) {
		if (ns_fd[i] >= 0)
			close(ns_fd[i]);
		ns_fd[i] = -1;
	}
	if (home_fd >= 0)
		close(home_fd);
	home_fd = -1;
	server_ns = client_ns = HOME;
	srv_host = srv_bind = "127.0.0.1";
}

/* ------------------------------------------------------------ files */

/* Write n bytes of random data (printable if text) as RUN_DIR/name. */
static void random_file(const char *name, size_t n, bool text)
{
	static const char abc[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	char path[PATH_MAX];
	unsigned char buf[65536];
	int in = open("/dev/urandom", O_RDONLY), out;

	snprintf(path, sizeof(path), "%s/%s", run_dir, name);
	out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert(in >= 0 && out >= 0, "%s: %s", path, strerror(errno));
	while (n) {
		size_t k = n < sizeof(buf) ? n : sizeof(buf);
		cr_assert_eq(read(in, buf, k), (ssize_t)k);
		if (text)
			for (size_t i = 0; i < k; i++)
				buf[i] = (unsigned char)abc[buf[i] % 62];
		cr_assert_eq(write(out, buf, k), (ssize_t)k);
		n -= k;
	}
	close(in);
	close(out);
}

/* Read all of RUN_DIR/name into a malloc'd buffer; *n its size. */
static unsigned char *load(const char *name, size_t *n)
{
	char path[PATH_MAX];
	struct stat st;
	unsigned char *b;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", run_dir, name);
	fd = open(path, O_RDONLY);
	cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(fstat(fd, &st), 0);
	b = malloc((size_t)st.st_size + 1);
	cr_assert_not_null(b);
	*n = 0;
	while (*n < (size_t)st.st_size) {
		ssize_t r = read(fd, b + *n, (size_t)st.st_size - *n);
		cr_assert(r > 0);
		*n += (size_t)r;
	}
	b[*n] = '\0';
	close(fd);
	return b;
}

/* RUN_DIR/a and RUN_DIR/b hold the same bytes. */
static void expect_same_file(const char *a, const char *b)
{
	size_t na, nb, at = 0;
	unsigned char *x = load(a, &na), *y = load(b, &nb);

	while (at < na && at < nb && x[at] == y[at])
		at++;
	cr_expect(na == nb && at == na, "%s (%zu bytes) and %s (%zu bytes) "
		  "differ from byte %zu", a, na, b, nb, at);
	free(x);
	free(y);
}

/* ------------------------------------------------ what was counted */

/* Counters summed over the stats pages of one service (all processes,
 * exited ones too), as `ubsctl --json --all stats SERVICE` totals them. */
struct svc {
	unsigned procs;
	uint64_t c[UBS_STAT_NR];
};

static struct svc stats_of(const char *service)
{
	const char *argv[] = { "ubsctl", "--json", "--all", "stats", service,
			       NULL };
	char prog[PATH_MAX], tag[80], name[128];
	struct svc s = { 0 };
	const char *tot, *p;
	size_t n;
	unsigned char *out;
	pid_t pid;
	int status = -1;

	snprintf(prog, sizeof(prog), "%s/ubsctl", bin_dir);
	argv[0] = prog;
	snprintf(tag, sizeof(tag), "ubsctl-%s", service);
	snprintf(name, sizeof(name), "%s.out", tag);
	pid = spawn(argv, false, HOME, NULL, NULL, name, "ubsctl.err");
	for (int t = 0; t < WAIT_MS && waitpid(pid, &status, WNOHANG) == 0;
	     t += 5)
		sleep_ms(5);
	if (!WIFEXITED(status)) {
		kill(-pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "ubsctl stats %s failed; stderr:\n%s", service,
		  tail_of("ubsctl.err"));
	out = load(name, &n);
	tot = strstr((char *)out, "\"total\":{");
	cr_assert_not_null(tot, "no total in:\n%s", out);
	p = strstr(tot, "\"processes\":");
	cr_assert_not_null(p);
	s.procs = (unsigned)strtoul(p + 12, NULL, 10);
	for (int i = 0; i < UBS_STAT_NR; i++) {
		char key[64];

		snprintf(key, sizeof(key), "\"%s\":", ubs_stat_names[i]);
		p = strstr(tot, key);
		cr_assert_not_null(p, "no %s in:\n%s", key, tot);
		s.c[i] = strtoull(p + strlen(key), NULL, 10);
	}
	free(out);
	return s;
}

#define C(s, name) ((s).c[UBS_STAT_##name])

/* Several client services summed. */
static struct svc stats_sum(const char *const *services)
{
	struct svc sum = { 0 };

	for (; *services; services++) {
		struct svc s = stats_of(*services);
		sum.procs += s.procs;
		for (int i = 0; i < UBS_STAT_NR; i++)
			sum.c[i] += s.c[i];
	}
	return sum;
}

static void log_svc(const char *what, const struct svc *s)
{
	cr_log_info("%-15s procs %u ub_conns %" PRIu64 " tcp_conns %" PRIu64
		    " ub_tx %" PRIu64 " ub_rx %" PRIu64 " connect() %" PRIu64
		    " accept() %" PRIu64, what, s->procs, C(*s, UB_CONNS),
		    C(*s, TCP_CONNS), C(*s, UB_BYTES_TX), C(*s, UB_BYTES_RX),
		    C(*s, CONNECT), C(*s, ACCEPT) + C(*s, ACCEPT4));
}

/* Counter name of the "prefix:" table of file (snmp or netstat of
 * /proc/thread-self/net: a line of names, then a line of values), in
 * the calling thread's network namespace. */
static uint64_t proc_net_value(const char *file, const char *prefix,
			       const char *name)
{
	char names[4096], vals[4096];
	size_t pl = strlen(prefix);
	uint64_t v = 0;
	FILE *f = fopen(file, "r");
	int col = -1, k = 0;
	bool found = false;

	cr_assert_not_null(f, "%s: %s", file, strerror(errno));
	while (!found && fgets(names, sizeof(names), f))
		if (strncmp(names, prefix, pl) == 0)
			found = fgets(vals, sizeof(vals), f) != NULL;
	fclose(f);
	cr_assert(found, "no %s table in %s", prefix, file);
	for (char *t = strtok(names, " \n"); t; t = strtok(NULL, " \n"), k++)
		if (strcmp(t, name) == 0)
			col = k;
	cr_assert(col > 0, "no %s %s in %s", prefix, name, file);
	k = 0;
	for (char *t = strtok(vals, " \n"); t; t = strtok(NULL, " \n"), k++)
		if (k == col)
			v = strtoull(t, NULL, 10);
	return v;
}

/*
 * proc_net_value summed over the test's namespaces: its own and, with
 * two_namespaces(), A and B (the thread enters each and comes back).
 */
static uint64_t ns_value(const char *file, const char *prefix,
			 const char *name)
{
	uint64_t v = proc_net_value(file, prefix, name);

	for (int i = 0; i < 2; i++) {
		if (ns_fd[i] < 0)
			continue;
		cr_assert_eq(setns(ns_fd[i], CLONE_NEWNET), 0, "setns: %s",
			     strerror(errno));
		v += proc_net_value(file, prefix, name);
		cr_assert_eq(setns(home_fd, CLONE_NEWNET), 0, "setns: %s",
			     strerror(errno));
	}
	return v;
}

/* IP bytes the kernel sent in the test's namespaces (IpExt OutOctets);
 * loopback traffic is sent once and received once, and a packet from B
 * to A over the veth is sent in B only, so this is each byte once. */
static uint64_t kernel_out_octets(void)
{
	return ns_value("/proc/thread-self/net/netstat", "IpExt:",
			"OutOctets");
}

/*
 * TCP connections made in the test's namespaces (Tcp PassiveOpens:
 * handshakes completed towards a listener; only the test's servers
 * listen).  In the host's namespace (no netns of our own) this is
 * unknown: 0.
 */
static uint64_t kernel_conns(void)
{
	if (!own_netns)
		return 0;
	return ns_value("/proc/thread-self/net/snmp", "Tcp:", "PassiveOpens");
}

/*
 * Both ends UB: every connection the server accepted is UB on the
 * server and on a client, nothing went TCP, the UB bytes cover the
 * payload each way (to_server: bytes the clients sent at least; to_client
 * the other way), nobody received more than the other side sent, and the
 * kernel carried less than a tenth of what moved (its own packets for
 * each connection's handshake and close, at most 1 KiB each, and 64 KiB
 * of slack).
 */
static void expect_ub(const char *server, const char *const *clients,
		      uint64_t to_server, uint64_t to_client)
{
	struct svc s = stats_of(server), c = stats_sum(clients);
	uint64_t conns = kernel_conns(), moved, kout;

	log_svc(server, &s);
	log_svc("clients", &c);
	cr_expect(C(s, UB_CONNS) > 0, "%s: no UB connection", server);
	if (own_netns)
		cr_expect_eq(C(s, UB_CONNS), conns, "%s: %" PRIu64 " UB "
			     "connections of %" PRIu64 " made (kernel's "
			     "PassiveOpens)", server, C(s, UB_CONNS), conns);
	else
		conns = C(s, UB_CONNS) + C(s, TCP_CONNS);
	cr_expect_eq(C(s, TCP_CONNS), 0, "%s: %" PRIu64 " TCP connections "
		     "(no_daemon %" PRIu64 " no_channel %" PRIu64 " peer_tcp %"
		     PRIu64 " plain_peer %" PRIu64 ")", server, C(s, TCP_CONNS),
		     C(s, TCP_NO_DAEMON), C(s, TCP_NO_CHANNEL),
		     C(s, TCP_PEER_TCP), C(s, TCP_PLAIN_PEER));
	cr_expect_eq(C(c, UB_CONNS), C(s, UB_CONNS), "clients have %" PRIu64
		     " UB connections, %s %" PRIu64, C(c, UB_CONNS), server,
		     C(s, UB_CONNS));
	{
		/* One uid, one namespace: every connection met on the board
		 * (not with UBS_BOARD=0); across namespaces or uids, through
		 * ubsd. */
		const char *b = getenv("UBS_BOARD");
		bool board = !across && !other_uid && !(b && !strcmp(b, "0"));

		cr_expect_eq(C(s, UB_BOARD), board ? C(s, UB_CONNS) : 0,
			     "%s: %" PRIu64 " of %" PRIu64 " UB connections "
			     "set up on the board", server, C(s, UB_BOARD),
			     C(s, UB_CONNS));
		cr_expect_eq(C(c, UB_BOARD), board ? C(c, UB_CONNS) : 0,
			     "clients: %" PRIu64 " of %" PRIu64 " UB "
			     "connections set up on the board",
			     C(c, UB_BOARD), C(c, UB_CONNS));
	}
	cr_expect_eq(C(c, TCP_CONNS), 0, "clients: %" PRIu64 " TCP "
		     "connections (no_daemon %" PRIu64 " no_channel %" PRIu64
		     " peer_tcp %" PRIu64 ")", C(c, TCP_CONNS),
		     C(c, TCP_NO_DAEMON), C(c, TCP_NO_CHANNEL),
		     C(c, TCP_PEER_TCP));
	cr_expect_geq(C(c, UB_BYTES_TX), to_server, "clients sent %" PRIu64
		      " bytes on UB, the payload is %" PRIu64,
		      C(c, UB_BYTES_TX), to_server);
	cr_expect_geq(C(s, UB_BYTES_RX), to_server, "%s received %" PRIu64
		      " bytes on UB, the payload is %" PRIu64, server,
		      C(s, UB_BYTES_RX), to_server);
	cr_expect_geq(C(s, UB_BYTES_TX), to_client, "%s sent %" PRIu64
		      " bytes on UB, the payload is %" PRIu64, server,
		      C(s, UB_BYTES_TX), to_client);
	cr_expect_geq(C(c, UB_BYTES_RX), to_client, "clients received %"
		      PRIu64 " bytes on UB, the payload is %" PRIu64,
		      C(c, UB_BYTES_RX), to_client);
	cr_expect_leq(C(s, UB_BYTES_RX), C(c, UB_BYTES_TX), "%s received "
		      "more on UB than the clients sent", server);
	cr_expect_leq(C(c, UB_BYTES_RX), C(s, UB_BYTES_TX), "clients received"
		      " more on UB than %s sent", server);
	cr_expect_eq(C(s, UB_BYPASS) + C(c, UB_BYPASS), 0, "bytes arrived on "
		     "the kernel socket of a UB connection");
	if (!own_netns)
		return;
	kout = kernel_out_octets();
	moved = C(s, UB_BYTES_TX) + C(c, UB_BYTES_TX);
	cr_log_info("kernel IP out %" PRIu64 " bytes for %" PRIu64
		    " bytes moved on UB over %" PRIu64 " connections", kout,
		    moved, conns);
	cr_expect_leq(kout, 1024 * conns + 64 * KIB, "the kernel sent %"
		      PRIu64 " IP bytes for %" PRIu64 " connections: payload "
		      "on TCP?", kout, conns);
	cr_expect_lt(kout, moved / 10, "the kernel sent %" PRIu64 " IP bytes"
		     ", UB moved %" PRIu64, kout, moved);
}

/* The kernel carried at least payload bytes (fallback really on TCP). */
static void expect_kernel_carried(uint64_t payload)
{
	uint64_t kout;

	if (!own_netns)
		return;
	kout = kernel_out_octets();
	cr_log_info("kernel IP out %" PRIu64 " bytes, payload %" PRIu64, kout,
		    payload);
	cr_expect_geq(kout, payload, "the kernel sent %" PRIu64 " IP bytes, "
		      "less than the %" PRIu64 " bytes of payload", kout,
		      payload);
}

/* Preloaded server, plain clients: every accepted connection TCP. */
static void expect_server_fell_back(const char *server, uint64_t payload)
{
	struct svc s = stats_of(server);
	uint64_t conns = kernel_conns();

	log_svc(server, &s);
	cr_expect(C(s, TCP_CONNS) > 0, "%s: no TCP connection", server);
	cr_expect_eq(C(s, UB_CONNS), 0, "%s: %" PRIu64 " UB connections with "
		     "plain clients", server, C(s, UB_CONNS));
	if (own_netns)
		cr_expect_eq(C(s, TCP_CONNS), conns, "%s: %" PRIu64 " TCP "
			     "connections of %" PRIu64 " made (kernel's "
			     "PassiveOpens)", server, C(s, TCP_CONNS), conns);
	cr_expect_eq(C(s, TCP_PLAIN_PEER), C(s, TCP_CONNS), "%s: %" PRIu64
		     " of %" PRIu64 " TCP connections for another reason than"
		     " a plain peer", server, C(s, TCP_CONNS) -
		     C(s, TCP_PLAIN_PEER), C(s, TCP_CONNS));
	cr_expect_eq(C(s, UB_BYTES_TX) + C(s, UB_BYTES_RX), 0, "%s moved "
		     "bytes on UB with plain clients", server);
	expect_kernel_carried(payload);
}

/* Plain server, preloaded clients: nothing on UB.  (tcp_conns counts
 * only connections that were candidates for UB: towards a registered
 * listener; a plain server's port is none, so it is not checked.) */
static void expect_clients_fell_back(const char *const *clients,
				     uint64_t payload)
{
	struct svc c = stats_sum(clients);

	log_svc("clients", &c);
	cr_expect(c.procs > 0, "no stats page from the preloaded clients");
	cr_expect(C(c, CONNECT) > 0, "the clients' connects were not seen");
	cr_expect_eq(C(c, UB_CONNS), 0, "clients: %" PRIu64 " UB connections"
		     " to a plain server", C(c, UB_CONNS));
	cr_expect_eq(C(c, UB_BYTES_TX) + C(c, UB_BYTES_RX), 0, "clients "
		     "moved bytes on UB with a plain server");
	expect_kernel_carried(payload);
}

/*
 * Both ends preloaded, but ubsd refused to pair them (the reason it gave
 * the clients: reason): every connection made is TCP on both ends (the
 * server's for a plain peer, as its client never attached; the clients'
 * for no channel, each with reason in the library's debug log, so
 * preload_log must be set), no UB connection or byte; the kernel carried
 * at least payload.
 */
static void expect_refused(const char *server, const char *const *clients,
			   const char *reason, uint64_t payload)
{
	struct svc c = stats_sum(clients);
	uint64_t conns = kernel_conns(), logged = 0;
	char want[96];
	unsigned char *log;
	size_t n;

	expect_server_fell_back(server, payload);
	log_svc("clients", &c);
	cr_expect_eq(C(c, UB_CONNS), 0, "clients: %" PRIu64 " UB connections",
		     C(c, UB_CONNS));
	cr_expect_eq(C(c, TCP_CONNS), conns, "clients: %" PRIu64 " TCP "
		     "connections of %" PRIu64 " made", C(c, TCP_CONNS), conns);
	cr_expect_eq(C(c, TCP_NO_CHANNEL), C(c, TCP_CONNS), "clients: %"
		     PRIu64 " of %" PRIu64 " TCP connections for another "
		     "reason than no channel (no_daemon %" PRIu64 " peer_tcp %"
		     PRIu64 ")", C(c, TCP_CONNS) - C(c, TCP_NO_CHANNEL),
		     C(c, TCP_CONNS), C(c, TCP_NO_DAEMON), C(c, TCP_PEER_TCP));
	cr_expect_eq(C(c, UB_BYTES_TX) + C(c, UB_BYTES_RX), 0, "clients "
		     "moved bytes on UB");
	snprintf(want, sizeof(want), ": TCP (%s)\n", reason);
	log = load("ubs-debug.log", &n);
	for (const char *at = (char *)log; (at = strstr(at, want)); at++)
		logged++;
	cr_expect_eq(logged, conns, "%" PRIu64 " of %" PRIu64 " connections "
		     "went TCP for \"%s\"; the library's log:\n%s", logged,
		     conns, reason, tail_of("ubs-debug.log"));
	free(log);
}

/*
 * Write text as ubs.conf and SIGHUP ubsd; wait (bounded) until its log
 * says the reload took effect: want, e.g. "cross_netns off, generation"
 * (the start-up line says "policy generation").
 */
static void reload_conf(const char *text, const char *want)
{
	static char log[OUT_MAX * 8];
	char path[PATH_MAX];

	write_file("ubs.conf", text);
	cr_assert_eq(kill(daemon_pid, SIGHUP), 0, "SIGHUP ubsd: %s",
		     strerror(errno));
	path_in(path, sizeof(path), "ubsd.log");
	for (int t = 0; t < WAIT_MS; t += 10) {
		slurp(path, log, sizeof(log));
		if (strstr(log, want))
			return;
		sleep_ms(10);
	}
	cr_assert_fail("ubsd did not log \"%s\" after SIGHUP; log:\n%s", want,
		       log);
}

/* ------------------------------------------------------------ redis */

#define REDIS_VALUE     (100 * KIB)

static void start_redis(bool preload)
{
	char p[16];
	const char *argv[] = { "redis-server", "--port", p, "--bind",
		srv_bind, "--protected-mode", "no", "--save", "",
		"--appendonly", "no", "--daemonize", "no", "--dir", run_dir,
		"--logfile", "", NULL };

	snprintf(p, sizeof(p), "%d", port);
	start_server(argv, preload);
}

/* redis-cli SET then GET of a 100 KiB binary value, compared. */
static void redis_set_get(bool preload)
{
	char p[16];
	const char *set[] = { "redis-cli", "-h", srv_host, "-p", p, "-x",
			      "set", "big", NULL };
	const char *get[] = { "redis-cli", "-h", srv_host, "-p", p,
			      "--raw", "get", "big", NULL };
	unsigned char *want, *got;
	size_t nw, ng;

	snprintf(p, sizeof(p), "%d", port);
	random_file("value.bin", REDIS_VALUE, false);
	cr_assert_eq(run_client(set, preload, NULL, "value.bin", "-set"), 0,
		     "redis-cli set: %s", tail_of("redis-cli-set.err"));
	cr_expect_str_eq(tail_of("redis-cli-set.out"), "OK\n");
	cr_assert_eq(run_client(get, preload, NULL, NULL, "-get"), 0,
		     "redis-cli get: %s", tail_of("redis-cli-get.err"));
	want = load("value.bin", &nw);
	got = load("redis-cli-get.out", &ng);
	cr_expect(ng == nw + 1 && memcmp(want, got, nw) == 0 &&
		  got[nw] == '\n', "GET gave %zu bytes, not the %zu bytes SET "
		  "(+ newline)", ng, nw);
	free(want);
	free(got);
}

/* redis-benchmark -t set,get -n 20000 -q: exit 0 and both numbers. */
static void redis_benchmark(bool preload)
{
	char p[16];
	const char *argv[] = { "redis-benchmark", "-h", srv_host, "-p", p,
			       "-t", "set,get", "-n", "20000", "-q", NULL };
	unsigned char *out;
	size_t n;

	snprintf(p, sizeof(p), "%d", port);
	cr_assert_eq(run_client(argv, preload, NULL, NULL, ""), 0,
		     "redis-benchmark: %s", tail_of("redis-benchmark.err"));
	out = load("redis-benchmark.out", &n);
	for (const char *t = "SET: \0GET: \0"; *t; t += strlen(t) + 1) {
		/* The final line, not the "SET: rps=..." progress ones. */
		const char *at = strstr((char *)out, t);
		double rps;

		while (at && !(at[5] >= '0' && at[5] <= '9'))
			at = strstr(at + 5, t);
		rps = at ? strtod(at + 5, NULL) : 0;

		cr_expect(at && rps > 0 && strstr(at, "requests per second"),
			  "no %s number in:\n%s", t, out);
		cr_log_info("redis-benchmark %s%.0f requests per second", t,
			    rps);
	}
	free(out);
}

Test(compat, redis_ub)
{
	const char *clients[] = { "redis-cli", "redis-benchmark", NULL };

	start_redis(true);
	redis_set_get(true);
	redis_benchmark(true);
	expect_alive(0, "redis-server");
	/* 20000 SETs and GETs of 3-byte values: > 20000 * 40 bytes each
	 * way, and the 100 KiB value once each way. */
	expect_ub("redis-server", clients, REDIS_VALUE + 20000 * 40,
		  REDIS_VALUE + 20000 * 8);
}

Test(compat, redis_plain_client)
{
	start_redis(true);
	redis_set_get(false);
	expect_alive(0, "redis-server");
	expect_server_fell_back("redis-server", 2 * REDIS_VALUE);
}

Test(compat, redis_plain_server)
{
	const char *clients[] = { "redis-cli", NULL };

	start_redis(false);
	redis_set_get(true);
	expect_alive(0, "redis-server");
	expect_clients_fell_back(clients, 2 * REDIS_VALUE);
}

/* ------------------------------------------------------------ nginx */

#define SMALL_FILE      KIB
#define BIG_FILE        (4 * MIB)

/* nginx, foreground, master + 1 worker, everything in the run dir,
 * sendfile on, serving RUN_DIR/www. */
static void start_nginx(bool preload)
{
	char conf[128], text[4096], errlog[128], www[128];
	const char *argv[] = { "nginx", "-p", run_dir, "-c", conf, "-e",
			       errlog, NULL };

	snprintf(www, sizeof(www), "%s/www", run_dir);
	cr_assert_eq(mkdir(www, 0755), 0);
	random_file("www/small.bin", SMALL_FILE, false);
	random_file("www/big.bin", BIG_FILE, false);
	snprintf(text, sizeof(text),
		 "daemon off;\n"
		 "master_process on;\n"
		 "worker_processes 1;\n"
		 "pid %1$s/nginx.pid;\n"
		 "error_log %1$s/nginx-error.log info;\n"
		 "events { worker_connections 256; }\n"
		 "http {\n"
		 "    access_log %1$s/nginx-access.log;\n"
		 "    sendfile on;\n"
		 "    keepalive_timeout 30;\n"
		 /* wrk's 8 connections live the whole run: no reconnect
		  * racing its end (a connection made as wrk stops would be
		  * counted by the kernel before nginx decides it). */
		 "    keepalive_requests 1000000;\n"
		 "    client_body_temp_path %1$s/nginx-tmp;\n"
		 "    proxy_temp_path %1$s/nginx-tmp;\n"
		 "    fastcgi_temp_path %1$s/nginx-tmp;\n"
		 "    uwsgi_temp_path %1$s/nginx-tmp;\n"
		 "    scgi_temp_path %1$s/nginx-tmp;\n"
		 "    types { application/octet-stream bin; }\n"
		 "    server {\n"
		 "        listen %4$s:%2$d;\n"
		 "        root %3$s;\n"
		 "    }\n"
		 "}\n", run_dir, port, www, srv_bind);
	write_file("nginx.conf", text);
	/* Started as root, nginx runs its workers as nobody: they never
	 * meet root's clients on a board (ubsd pairs them). */
	other_uid = geteuid() == 0;
	path_in(conf, sizeof(conf), "nginx.conf");
	path_in(errlog, sizeof(errlog), "nginx-error.log");
	start_server(argv, preload);
}

/* curl GET /name into RUN_DIR/name.got: exit 0, status 200, same bytes. */
static void curl_get(const char *name, bool preload)
{
	char url[128], outp[PATH_MAX], tag[64], file[96], got[96], out[96];
	char err[96];
	int rc;
	const char *argv[] = { "curl", "-sS", "--max-time", "15", "-o", outp,
			       "-w", "%{http_code}", url, NULL };

	snprintf(url, sizeof(url), "http://%s:%d/%s", srv_host, port, name);
	snprintf(got, sizeof(got), "%s.got", name);
	path_in(outp, sizeof(outp), got);
	snprintf(tag, sizeof(tag), "-%s", name);
	snprintf(out, sizeof(out), "curl%s.out", tag);
	snprintf(err, sizeof(err), "curl%s.err", tag);
	rc = run_client(argv, preload, NULL, NULL, tag);
	if (rc != 0)
		sleep_ms(200);  /* let nginx write why into its log */
	cr_assert_eq(rc, 0, "curl %s: %s\nnginx error log:\n%s", url,
		     tail_of(err), tail_of("nginx-error.log"));
	cr_expect_str_eq(tail_of(out), "200", "curl %s: HTTP status", url);
	snprintf(file, sizeof(file), "www/%s", name);
	expect_same_file(file, got);
}

/* wrk -t1 -c8 -d2s: requests done, no socket errors, no non-2xx. */
static uint64_t run_wrk(bool preload)
{
	char url[128];
	const char *argv[] = { "wrk", "-t1", "-c8", "-d2s", url, NULL };
	unsigned char *out;
	const char *at;
	uint64_t reqs = 0;
	size_t n;

	snprintf(url, sizeof(url), "http://%s:%d/small.bin", srv_host, port);
	cr_assert_eq(run_client(argv, preload, NULL, NULL, ""), 0,
		     "wrk: %s", tail_of("wrk.err"));
	out = load("wrk.out", &n);
	at = strstr((char *)out, " requests in ");
	while (at && at > (char *)out && at[-1] >= '0' && at[-1] <= '9')
		at--;
	if (at)
		reqs = strtoull(at, NULL, 10);
	cr_expect(reqs > 0, "wrk made no requests:\n%s", out);
	cr_expect_null(strstr((char *)out, "Socket errors"), "wrk:\n%s", out);
	cr_expect_null(strstr((char *)out, "Non-2xx"), "wrk:\n%s", out);
	cr_log_info("wrk: %" PRIu64 " requests in 2 s", reqs);
	free(out);
	return reqs;
}

Test(compat, nginx_ub_small_and_wrk)
{
	const char *clients[] = { "curl", "wrk", NULL };
	uint64_t reqs;

	start_nginx(true);
	curl_get("small.bin", true);
	reqs = run_wrk(true);
	expect_alive(0, "nginx");
	/* Each response carries the 1 KiB file; each request > 40 bytes. */
	expect_ub("nginx", clients, 40 * (reqs + 1),
		  (uint64_t)SMALL_FILE * (reqs + 1));
}

Test(compat, nginx_ub_4mib_sendfile)
{
	const char *clients[] = { "curl", NULL };

	start_nginx(true);
	curl_get("big.bin", true);
	expect_alive(0, "nginx");
	expect_ub("nginx", clients, 40, BIG_FILE);
}

Test(compat, nginx_plain_client)
{
	start_nginx(true);
	curl_get("small.bin", false);
	curl_get("big.bin", false);
	expect_alive(0, "nginx");
	expect_server_fell_back("nginx", SMALL_FILE + BIG_FILE);
}

Test(compat, nginx_plain_server)
{
	const char *clients[] = { "curl", NULL };

	start_nginx(false);
	curl_get("small.bin", true);
	curl_get("big.bin", true);
	expect_alive(0, "nginx");
	expect_clients_fell_back(clients, SMALL_FILE + BIG_FILE);
}

/* -------------------------------------------------------- memcached */

#define MC_KEYS         1000

static void start_memcached(bool preload)
{
	char p[16];
	const char *argv[] = { "memcached", "-l", srv_bind, "-p", p, "-U",
			       "0", "-m", "64", NULL, NULL, NULL };

	snprintf(p, sizeof(p), "%d", port);
	if (geteuid() == 0) {           /* memcached refuses root without */
		argv[9] = "-u";
		argv[10] = "root";
	}
	start_server(argv, preload);
}

/*
 * memccp MC_KEYS files (keys k0000..., 100 to 2000 random bytes each),
 * then memccat them all and compare with the files, each value followed
 * by a newline.  Returns the bytes of all values.
 */
static uint64_t memc_copy_cat(bool preload, const char *tag)
{
	char servers[64], name[64];
	const char *cp[MC_KEYS + 3], *cat[MC_KEYS + 3];
	static char keys[MC_KEYS][8];
	unsigned char *got, *want;
	uint64_t total = 0;
	size_t ng, at = 0;
	unsigned seed = (unsigned)getpid();
	char dir[PATH_MAX];

	snprintf(servers, sizeof(servers), "--servers=%s:%d", srv_host, port);
	snprintf(dir, sizeof(dir), "%s/mc", run_dir);
	mkdir(dir, 0755);
	cp[0] = "memccp";
	cp[1] = servers;
	cat[0] = "memccat";
	cat[1] = servers;
	for (int i = 0; i < MC_KEYS; i++) {
		size_t len = 100 + rand_r(&seed) % 1901;

		snprintf(keys[i], sizeof(keys[i]), "k%04d", i);
		snprintf(name, sizeof(name), "mc/k%04d", i);
		random_file(name, len, true);
		total += len;
		cp[i + 2] = cat[i + 2] = keys[i];
	}
	cp[MC_KEYS + 2] = cat[MC_KEYS + 2] = NULL;
	cr_assert_eq(run_client(cp, preload, "mc", NULL, tag), 0,
		     "memccp: %s", tail_of("memccp.err"));
	cr_assert_eq(run_client(cat, preload, "mc", NULL, tag), 0,
		     "memccat: %s", tail_of("memccat.err"));
	snprintf(name, sizeof(name), "memccat%s.out", tag);
	got = load(name, &ng);
	for (int i = 0; i < MC_KEYS; i++) {
		size_t nw;

		snprintf(name, sizeof(name), "mc/k%04d", i);
		want = load(name, &nw);
		bool ok = at + nw + 1 <= ng && memcmp(got + at, want, nw) == 0 &&
			  got[at + nw] == '\n';
		free(want);
		cr_assert(ok, "memccat: value of %s (%zu bytes) differs at "
			  "offset %zu of the output (%zu bytes)", keys[i], nw,
			  at, ng);
		at += nw + 1;
	}
	cr_expect_eq(at, ng, "memccat printed %zu bytes, expected %zu", ng,
		     at);
	free(got);
	return total;
}

/* memcslap -c 2 -e 2000 -t set, then -t get: exit 0, timings printed. */
static void memcslap(bool preload)
{
	char servers[64];
	const char *set[] = { "memcslap", servers, "-c", "2", "-e", "2000",
			      "-t", "set", NULL };
	const char *get[] = { "memcslap", servers, "-c", "2", "-e", "2000",
			      "-t", "get", NULL };

	snprintf(servers, sizeof(servers), "--servers=%s:%d", srv_host, port);
	cr_assert_eq(run_client(set, preload, NULL, NULL, "-set"), 0,
		     "memcslap set: %s", tail_of("memcslap-set.err"));
	cr_expect(strstr(tail_of("memcslap-set.out"), "Time to set"), "%s",
		  tail_of("memcslap-set.out"));
	cr_assert_eq(run_client(get, preload, NULL, NULL, "-get"), 0,
		     "memcslap get: %s", tail_of("memcslap-get.err"));
	cr_expect(strstr(tail_of("memcslap-get.out"), "Time to get"), "%s",
		  tail_of("memcslap-get.out"));
}

Test(compat, memcached_ub)
{
	const char *clients[] = { "memccp", "memccat", "memcslap", NULL };
	uint64_t total;

	start_memcached(true);
	total = memc_copy_cat(true, "");
	memcslap(true);
	expect_alive(0, "memcached");
	expect_ub("memcached", clients, total, total);
}

Test(compat, memcached_plain_client)
{
	uint64_t total;

	start_memcached(true);
	total = memc_copy_cat(false, "");
	expect_alive(0, "memcached");
	expect_server_fell_back("memcached", 2 * total);
}

Test(compat, memcached_plain_server)
{
	const char *clients[] = { "memccp", "memccat", NULL };
	uint64_t total;

	start_memcached(false);
	total = memc_copy_cat(true, "");
	expect_alive(0, "memcached");
	expect_clients_fell_back(clients, 2 * total);
}

/* -------------------------------------------- across two namespaces */

/*
 * Servers in namespace A, on 0.0.0.0; clients in B, connecting to A's
 * address over the veth pair; one ubsd for both, in the test's own
 * namespace (two_namespaces).  The kernel's counters are summed over the
 * three namespaces.
 */

Test(compat, netns_redis_ub)
{
	const char *clients[] = { "redis-cli", "redis-benchmark", NULL };

	two_namespaces();
	start_redis(true);
	redis_set_get(true);
	redis_benchmark(true);
	expect_alive(0, "redis-server");
	expect_ub("redis-server", clients, REDIS_VALUE + 20000 * 40,
		  REDIS_VALUE + 20000 * 8);
}

Test(compat, netns_redis_plain_client)
{
	two_namespaces();
	start_redis(true);
	redis_set_get(false);
	expect_alive(0, "redis-server");
	expect_server_fell_back("redis-server", 2 * REDIS_VALUE);
}

Test(compat, netns_redis_plain_server)
{
	const char *clients[] = { "redis-cli", NULL };

	two_namespaces();
	start_redis(false);
	redis_set_get(true);
	expect_alive(0, "redis-server");
	expect_clients_fell_back(clients, 2 * REDIS_VALUE);
}

Test(compat, netns_nginx_ub_4mib)
{
	const char *clients[] = { "curl", NULL };

	two_namespaces();
	start_nginx(true);
	curl_get("big.bin", true);
	cr_log_info("curl of 4 MiB across the veth: %" PRIu64 " us",
		    last_run_us);
	expect_alive(0, "nginx");
	expect_ub("nginx", clients, 40, BIG_FILE);
}

#define SMALL_CURLS     3
#define STALL_US        250000  /* half of UBS_CONNECT_WAIT_MS */

/*
 * cross_netns = off (SIGHUP): both ends preloaded, but in different
 * namespaces, so ubsd must not pair them: TCP on both ends, at once.
 * Each small curl, start to exit, takes well under the client's 500 ms
 * wait for its channel (a refusal that came only at the request's
 * timeout would show), and the files are right.
 */
Test(compat, netns_nginx_cross_netns_off)
{
	const char *clients[] = { "curl", NULL };
	uint64_t slowest = 0;

	two_namespaces();
	reload_conf("[daemon]\ncross_netns = off\n",
		    "cross_netns off, generation");
	preload_log = true;
	start_nginx(true);
	for (int i = 0; i < SMALL_CURLS; i++) {
		curl_get("small.bin", true);
		cr_log_info("curl of 1 KiB with cross_netns off: %" PRIu64
			    " us", last_run_us);
		if (last_run_us > slowest)
			slowest = last_run_us;
	}
	curl_get("big.bin", true);
	expect_alive(0, "nginx");
	cr_expect_lt(slowest, STALL_US, "a curl took %" PRIu64 " us with "
		     "cross_netns off: its connect waited for a channel?",
		     slowest);
	expect_refused("nginx", clients, "cross-netns off",
		       SMALL_CURLS * SMALL_FILE + BIG_FILE);
}

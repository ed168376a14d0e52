/* SPDX-License-Identifier: MIT */
/*
 * daemon.c - ubsd and ubsctl as a user sees them: sessions that end with
 * their process, malformed input that closes only its own connection, a
 * half-sent message that stalls nobody, the pid lock, clean exit on
 * SIGTERM, and ubsctl's exit codes; the service policy: from ubs.conf,
 * flipped at run time by ubsctl and seen in the shared policy page without
 * a restart, reloaded on SIGHUP (a bad file keeps the old policy), refused
 * to other uids, and a policy fd its receiver cannot write.
 *
 * Each test runs its own `ubsd -f` in its own mkdtemp run directory; every
 * process started is killed and reaped by pid (and dies with the test
 * process through PR_SET_PDEATHSIG if the test is killed on timeout).
 * The daemon always gets `-c RUN_DIR/ubs.conf` (empty unless the test
 * writes one), so /etc/ubs/ubs.conf of the host never matters.  The
 * daemon must still be alive at the end of each test and its log must be
 * free of sanitizer reports.
 */
#include <criterion/criterion.h>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <sys/wait.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "policy.h"
#include "ubt.h"
#include "support/dtest.h"

#ifndef UBSD_PATH
#define UBSD_PATH "build/bin/ubsd"
#endif
#ifndef UBSCTL_PATH
#define UBSCTL_PATH "build/bin/ubsctl"
#endif

static pid_t client_pid = -1;

/* Start the test's daemon and wait (bounded) until its socket exists. */
static void start_daemon(void)
{
	dt_start_daemon(UBSD_PATH);
}

/* A fresh run directory with an empty ubs.conf; no daemon yet. */
static void setup(void)
{
	dt_make_run_dir("/tmp/ubsd-test.XXXXXX");
}

/* Reap the test's client, then check the daemon and clean up. */
static void teardown(void)
{
	kill_reap(&client_pid);
	dt_teardown();
}

/* Drop to nobody (uid/gid 65534); with supp != 0, keep that one
 * supplementary group, with prim != 0 use it as the primary group. */
static int become_nobody(gid_t supp, gid_t prim)
{
	if (setgroups(supp ? 1 : 0, &supp) < 0 ||
	    setgid(prim ? prim : 65534) < 0 || setuid(65534) < 0)
		return -errno;
	return 0;
}

/* ubsctl runs as nobody (see become_nobody) when this is set. */
static int ubsctl_as_nobody;

/* In ubsctl's child: become nobody. */
static int ubsctl_prep(void)
{
	return become_nobody(0, 0);
}

/*
 * Run ubsctl with args (NULL-terminated, at most 6) on run_dir; capture
 * stdout and stderr.  Returns its exit code (or -1 if it did not exit
 * normally within WAIT_MS).
 */
static int run_ubsctlv(char *out, char *err, const char *const *args)
{
	const char *prog = UBSCTL_PATH;
	char copy[128];

	/* nobody may not be able to reach the build tree (a clone under
	 * /root): run a copy from the run directory instead. */
	if (ubsctl_as_nobody) {
		char cmd[512];

		snprintf(copy, sizeof(copy), "%s/ubsctl", run_dir);
		snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 0755 '%s'",
			 UBSCTL_PATH, copy, copy);
		cr_assert_eq(system(cmd), 0);
		prog = copy;
	}
	return dt_run_ubsctl(prog, args, out, err,
			     ubsctl_as_nobody ? ubsctl_prep : NULL);
}

static int run_ubsctl(char *out, char *err, const char *a1, const char *a2)
{
	const char *args[] = { a1, a2, NULL };

	return run_ubsctlv(out, err, args);
}

static void send_all(int fd, const void *buf, size_t n)
{
	cr_assert(send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n,
		  "send: %s", strerror(errno));
}

static void send_msg(int fd, uint16_t type, uint32_t seq, const void *body,
		     uint32_t len)
{
	unsigned char buf[sizeof(struct ctl_hdr) + CTL_MAX_BODY];

	send_all(fd, buf, dt_ctl_frame(buf, type, seq, body, len));
}

static void recv_all(int fd, void *buf, size_t n)
{
	unsigned char *p = buf;

	while (n > 0) {
		ssize_t r = recv(fd, p, n, 0);
		cr_assert(r > 0, "recv: %s", r ? strerror(errno) : "EOF");
		p += r;
		n -= (size_t)r;
	}
}

/* Receive one valid reply with sequence seq; returns its type. */
static uint16_t recv_msg(int fd, uint32_t seq, void *body)
{
	struct ctl_hdr h;
	const char *why;

	recv_all(fd, &h, sizeof(h));
	cr_assert(ctl_check(&h, NULL, &why) == 0, "bad header: %s", why);
	recv_all(fd, body, h.len);
	cr_assert(ctl_check(&h, body, &why) == 0, "bad body: %s", why);
	cr_assert_eq(h.seq, seq);
	return h.type;
}

/* Ask for STATUS on a fresh connection. */
static struct ctl_status get_status(void)
{
	unsigned char body[CTL_MAX_BODY];
	struct ctl_status st;
	int fd = dt_ctl_open();

	send_msg(fd, CTL_REQ_STATUS, 7, NULL, 0);
	cr_assert_eq(recv_msg(fd, 7, body), CTL_R_STATUS);
	memcpy(&st, body, sizeof(st));
	cr_assert_eq(recv_msg(fd, 7, body), CTL_R_END);
	close(fd);
	cr_assert_eq(st.daemon_pid, (uint32_t)daemon_pid);
	return st;
}

/* Does the `ubsctl sessions` table have a line for pid? */
static int table_has_pid(const char *out, pid_t pid)
{
	for (const char *l = out; l && *l; l = strchr(l, '\n')) {
		long p;
		if (*l == '\n')
			l++;
		if (sscanf(l, "%ld", &p) == 1 && p == (long)pid)
			return 1;
	}
	return 0;
}

TestSuite(daemon, .init = setup, .fini = teardown, .timeout = 30);

Test(daemon, session_ends_when_client_is_killed)
{
	char out[OUT_MAX], err[OUT_MAX], want[64];
	int sync[2];
	char c;

	start_daemon();
	cr_assert(pipe(sync) == 0);
	client_pid = fork();
	cr_assert(client_pid >= 0);
	if (client_pid == 0) {
		struct ctl_hello m = { .pid = (uint32_t)getpid() };
		unsigned char body[CTL_MAX_BODY];
		int fd;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		strcpy(m.service, "svc-a");
		fd = dt_ctl_open();
		send_msg(fd, CTL_REQ_HELLO, 1, &m, sizeof(m));
		if (recv_msg(fd, 1, body) != CTL_R_OK)
			_exit(1);
		if (write(sync[1], "k", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(sync[1]);
	cr_assert_eq(read(sync[0], &c, 1), 1, "client did not say HELLO");
	close(sync[0]);

	cr_assert_eq(run_ubsctl(out, err, "--json", "sessions"), 0, "%s", err);
	snprintf(want, sizeof(want), "\"pid\":%ld,", (long)client_pid);
	cr_assert(strstr(out, want), "no %s in %s", want, out);
	cr_assert(strstr(out, "\"service\":\"svc-a\""), "%s", out);
	cr_assert_eq(run_ubsctl(out, err, "sessions", NULL), 0, "%s", err);
	cr_assert(table_has_pid(out, client_pid), "%s", out);
	cr_assert(strstr(out, "svc-a"), "%s", out);

	pid_t gone = client_pid;
	kill_reap(&client_pid);
	for (int t = 0; ; t += 20) {
		cr_assert_eq(run_ubsctl(out, err, "sessions", NULL), 0, "%s",
			     err);
		if (!table_has_pid(out, gone))
			break;
		cr_assert(t < WAIT_MS, "session of killed pid %ld remains",
			  (long)gone);
		sleep_ms(20);
	}
	cr_assert_eq(get_status().sessions, 0);
}

/* Send bytes, optionally shut down our side; the daemon must close. */
static void expect_closed(const void *buf, size_t n, int shut)
{
	char c;
	int fd = dt_ctl_open();

	send_all(fd, buf, n);
	if (shut)
		shutdown(fd, SHUT_WR);
	cr_assert_eq(recv(fd, &c, 1, 0), 0, "connection not closed (%s)",
		     strerror(errno));
	close(fd);
}

Test(daemon, malformed_input_closes_only_that_connection)
{
	unsigned char buf[sizeof(struct ctl_hdr) + sizeof(struct ctl_hello)];
	struct ctl_hello m;
	struct ctl_hdr h;
	char log[128], text[OUT_MAX * 4];

	start_daemon();

	/* 16 random bytes (never the magic by accident). */
	srand((unsigned)getpid());
	for (size_t i = 0; i < 16; i++)
		buf[i] = (unsigned char)rand();
	buf[0] = (unsigned char)~(CTL_MAGIC & 0xff);
	expect_closed(buf, 16, 0);

	/* Another protocol version. */
	ctl_fill(&h, CTL_REQ_STATUS, 0, 1);
	h.version = CTL_VERSION + 1;
	expect_closed(&h, sizeof(h), 0);

	/* A body over CTL_MAX_BODY: closed on the header alone. */
	ctl_fill(&h, CTL_REQ_HELLO, CTL_MAX_BODY + 1, 2);
	expect_closed(&h, sizeof(h), 0);

	/* HELLO whose service has no NUL. */
	ctl_fill(&h, CTL_REQ_HELLO, sizeof(m), 3);
	memset(&m, 'A', sizeof(m));
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), &m, sizeof(m));
	expect_closed(buf, sizeof(buf), 0);

	/* A truncated header, then close. */
	ctl_fill(&h, CTL_REQ_STATUS, 0, 4);
	expect_closed(&h, sizeof(h) / 2, 1);

	struct ctl_status st = get_status();
	cr_assert_eq(st.rejected, 5);
	cr_assert_eq(st.sessions, 0);

	path_in(log, sizeof(log), "ubsd.log");
	slurp(log, text, sizeof(text));
	cr_assert(strstr(text, "bad magic"), "%s", text);
	cr_assert(strstr(text, "unsupported protocol version"), "%s", text);
	cr_assert(strstr(text, "body too large"), "%s", text);
	cr_assert(strstr(text, "terminating NUL"), "%s", text);
	cr_assert(strstr(text, "truncated"), "%s", text);
	char want[64];
	snprintf(want, sizeof(want), "client pid %ld", (long)getpid());
	cr_assert(strstr(text, want), "%s", text);
}

Test(daemon, half_a_header_stalls_nobody)
{
	unsigned char body[CTL_MAX_BODY];
	struct ctl_hdr h;
	int slow;

	start_daemon();
	slow = dt_ctl_open();
	ctl_fill(&h, CTL_REQ_STATUS, 0, 99);
	send_all(slow, &h, 6);
	sleep_ms(100);

	/* Another client is served while the slow one sits mid-header. */
	for (int i = 0; i < 3; i++)
		cr_assert_eq(get_status().rejected, 0);

	/* The slow client's message, once complete, is served too. */
	send_all(slow, (unsigned char *)&h + 6, sizeof(h) - 6);
	cr_assert_eq(recv_msg(slow, 99, body), CTL_R_STATUS);
	cr_assert_eq(recv_msg(slow, 99, body), CTL_R_END);
	close(slow);
}

Test(daemon, client_that_never_reads_is_dropped)
{
	struct ctl_hdr h[64];
	int fd, closed = 0;

	start_daemon();
	fd = dt_ctl_open();
	for (int i = 0; i < 64; i++)
		ctl_fill(&h[i], CTL_REQ_STATUS, 0, (uint32_t)i);
	/* Ask forever, read nothing: the daemon's queue must overflow. */
	for (int n = 0; n < 100000; n++) {
		ssize_t r = send(fd, h, sizeof(h), MSG_NOSIGNAL);
		if (r < 0) {
			cr_assert(errno == EPIPE || errno == ECONNRESET ||
				  errno == EAGAIN, "send: %s", strerror(errno));
			if (errno != EAGAIN) {
				closed = 1;
				break;
			}
		}
	}
	cr_assert(closed, "daemon kept a client that never reads");
	close(fd);
	cr_assert_geq(get_status().rejected, 1);
}

Test(daemon, second_instance_refuses_to_start)
{
	char log[128], text[OUT_MAX];
	pid_t second;
	int status;

	start_daemon();
	second = dt_spawn_ubsd(UBSD_PATH, "ubsd2.log", "ubs.conf");
	status = dt_reap(second);
	cr_assert(status >= 0, "second ubsd did not exit");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0);
	path_in(log, sizeof(log), "ubsd2.log");
	slurp(log, text, sizeof(text));
	char want[64];
	snprintf(want, sizeof(want), "ubsd already running (pid %ld)",
		 (long)daemon_pid);
	cr_assert(strstr(text, want), "%s", text);

	/* The first keeps serving, on its socket. */
	get_status();
}

Test(daemon, sigterm_exits_cleanly)
{
	char path[128];
	struct stat st;
	int status;

	start_daemon();
	get_status();
	cr_assert(kill(daemon_pid, SIGTERM) == 0);
	status = dt_wait_exit(daemon_pid, WAIT_MS);
	cr_assert(status >= 0, "ubsd did not exit on SIGTERM");
	daemon_pid = -1;
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "status %#x", status);
	path_in(path, sizeof(path), CTL_SOCK_NAME);
	cr_assert(stat(path, &st) < 0 && errno == ENOENT);
	path_in(path, sizeof(path), CTL_PID_NAME);
	cr_assert(stat(path, &st) < 0 && errno == ENOENT);
}

Test(daemon, ubsctl_exit_codes)
{
	char out[OUT_MAX], err[OUT_MAX], want[160];

	/* No daemon. */
	cr_assert_eq(run_ubsctl(out, err, "status", NULL), 1);
	snprintf(want, sizeof(want),
		 "ubsctl: ubsd is not running (no socket at %s/%s)",
		 run_dir, CTL_SOCK_NAME);
	cr_assert(strstr(err, want), "%s", err);

	/* Usage errors do not need a daemon. */
	cr_assert_eq(run_ubsctl(out, err, "frobnicate", NULL), 2);
	cr_assert(strstr(err, "usage"), "%s", err);
	cr_assert_eq(run_ubsctl(out, err, "s", NULL), 2, "ambiguous prefix");
	cr_assert_eq(run_ubsctl(out, err, NULL, NULL), 2);

	start_daemon();
	cr_assert_eq(run_ubsctl(out, err, "stat", NULL), 0, "%s", err);
	cr_assert(strstr(out, "sessions"), "%s", out);
	cr_assert_eq(run_ubsctl(out, err, "sess", NULL), 0, "%s", err);
	cr_assert(strstr(out, "PID"), "%s", out);
	cr_assert_eq(run_ubsctl(out, err, "--json", "st"), 0, "%s", err);
	snprintf(want, sizeof(want), "{\"daemon_pid\":%ld,", (long)daemon_pid);
	cr_assert(strstr(out, want), "%s", out);
}

/* ------------------------------------------------------------- policy */

/* Ask for the policy page's fd and map it with pp_map. */
static void map_policy(struct ubt_seg *pg)
{
	unsigned char buf[sizeof(struct ctl_hdr) + sizeof(struct ctl_policy)];
	struct ctl_policy pol;
	struct ctl_hdr h;
	const char *why;
	int fds[2], nfds = 2, fd, n;

	fd = dt_ctl_open();
	send_msg(fd, CTL_REQ_POLICY_FD, 11, NULL, 0);
	n = ubt_recv_fds(fd, fds, &nfds, buf, sizeof(buf));
	cr_assert_eq(n, (int)sizeof(buf), "recv: %d", n);
	cr_assert_eq(nfds, 1, "no fd with the policy reply");
	memcpy(&h, buf, sizeof(h));
	memcpy(&pol, buf + sizeof(h), sizeof(pol));
	cr_assert_eq(ctl_check(&h, &pol, &why), 0, "%s", why);
	cr_assert_eq(h.type, CTL_R_POLICY);
	cr_assert_eq(h.seq, 11);
	cr_assert_eq(pp_map(pg, fds[0]), 0);
	cr_assert_eq(pol.size, pg->size);
	cr_assert_geq(pp_generation(pg), pol.generation);
	close(fd);
}

/* pg's record for name; *own gets pp_lookup's 1/0. */
static struct ubs_svc_policy lookup(const struct ubt_seg *pg,
				    const char *name, int *own)
{
	struct ubs_svc_policy p;
	int r = pp_lookup(pg, name, &p);

	cr_assert_geq(r, 0, "pp_lookup(%s): %d", name, r);
	if (own)
		*own = r;
	return p;
}

/* Wait (bounded) until the daemon's log contains text. */
static void wait_log(const char *text)
{
	char log[128], buf[OUT_MAX * 4];

	path_in(log, sizeof(log), "ubsd.log");
	for (int t = 0; ; t += 10) {
		slurp(log, buf, sizeof(buf));
		if (strstr(buf, text))
			return;
		cr_assert(t < WAIT_MS, "no '%s' in the log:\n%s", text, buf);
		sleep_ms(10);
	}
}

/* The test's config: admin_group is our own gid, so the tests may set
 * policy whoever runs them; text follows. */
static void write_conf(const char *name, const char *text)
{
	char buf[2048];

	snprintf(buf, sizeof(buf), "[daemon]\nadmin_group = %ld\n%s",
		 (long)getegid(), text);
	write_file(name, buf);
}

static const char two_services[] =
	"[default]\n"
	"spin_us = 20\n"
	"[service svc-a]\n"
	"ring_kib = 64\n"
	"[service svc-b]\n"
	"accel = off\n"
	"mem_quota = 64M\n";

Test(daemon, services_come_from_the_config)
{
	char out[OUT_MAX], err[OUT_MAX];
	const char *json[] = { "--json", "services", NULL };

	write_conf("ubs.conf", two_services);
	start_daemon();
	cr_assert_eq(run_ubsctlv(out, err, json), 0, "%s", err);
	cr_assert(strstr(out, "{\"name\":\"(default)\",\"accel\":true,"
			 "\"spin_us\":20,"), "%s", out);
	cr_assert(strstr(out, "{\"name\":\"svc-a\",\"accel\":true,"
			 "\"spin_us\":20,\"ring_kib\":64,\"mem_quota\":0,"
			 "\"mem_pool_min\":0,\"mem_sites\":\"\"}"),
		  "%s", out);
	cr_assert(strstr(out, "{\"name\":\"svc-b\",\"accel\":false,"
			 "\"spin_us\":20,\"ring_kib\":1024,"
			 "\"mem_quota\":67108864,\"mem_pool_min\":0,"
			 "\"mem_sites\":\"\"}"), "%s", out);
	cr_assert_eq(run_ubsctl(out, err, "services", NULL), 0, "%s", err);
	cr_assert(strstr(out, "NAME"), "%s", out);
	cr_assert(strstr(out, "(default)"), "%s", out);
	cr_assert(strstr(out, "64M"), "%s", out);

	/* The page says the same. */
	struct ubt_seg pg;
	int own;
	map_policy(&pg);
	cr_assert_eq(lookup(&pg, "svc-b", &own).accel, 0);
	cr_assert_eq(own, 1);
	cr_assert_eq(lookup(&pg, "svc-a", &own).ring_kib, 64);
	cr_assert_eq(lookup(&pg, "unknown", &own).spin_us, 20);
	cr_assert_eq(own, 0);
	ubt_seg_unmap(&pg);
}

/* pp_excluded on pg for an IPv4 address text and port. */
static int excluded4(const struct ubt_seg *pg, const char *svc,
		     const char *addr, uint16_t port)
{
	struct in_addr a;
	int r;

	cr_assert_eq(inet_pton(AF_INET, addr, &a), 1);
	r = pp_excluded(pg, svc, AF_INET, &a, port);
	cr_assert_geq(r, 0, "pp_excluded: %d", r);
	return r;
}

Test(daemon, exclude_rules_come_from_the_config_and_reload)
{
	struct ubt_seg pg;
	struct in6_addr a6;
	uint64_t gen;

	write_conf("ubs.conf", "[exclude]\n"
		   "address = 10.20.0.0/16:6379\n"
		   "address = [fd00::]/8\n"
		   "port = 53\n"
		   "program = backup-agent\n"
		   "[service svc-a]\nring_kib = 64\n");
	start_daemon();
	map_policy(&pg);
	cr_assert_eq(excluded4(&pg, "web", "10.20.3.4", 6379), 1);
	cr_assert_eq(excluded4(&pg, "web", "10.20.3.4", 6380), 0);
	cr_assert_eq(excluded4(&pg, "web", "10.21.3.4", 6379), 0);
	cr_assert_eq(excluded4(&pg, "web", "8.8.8.8", 53), 1);
	cr_assert_eq(excluded4(&pg, "backup-agent", "8.8.8.8", 80), 1);
	cr_assert_eq(excluded4(&pg, "svc-a", "8.8.8.8", 80), 0);
	cr_assert_eq(inet_pton(AF_INET6, "fd12::1", &a6), 1);
	cr_assert_eq(pp_excluded(&pg, "web", AF_INET6, &a6, 80), 1);
	cr_assert_eq(lookup(&pg, "svc-a", NULL).ring_kib, 64);
	gen = pp_generation(&pg);

	/* ubsctl shows them, in file order. */
	{
		char out[OUT_MAX], err[OUT_MAX];
		const char *json[] = { "--json", "excludes", NULL };

		cr_assert_eq(run_ubsctl(out, err, "excludes", NULL), 0, "%s",
			     err);
		cr_assert(strstr(out, "KIND     RULE\n"
				 "address  10.20.0.0/16:6379\n"
				 "address  fd00::/8\n"
				 "port     53\n"
				 "program  backup-agent\n"), "%s", out);
		cr_assert_eq(run_ubsctlv(out, err, json), 0, "%s", err);
		cr_assert_str_eq(out, "[{\"kind\":\"address\",\"family\":"
				 "\"inet\",\"address\":\"10.20.0.0\",\"prefix\":"
				 "16,\"port_lo\":6379,\"port_hi\":6379},"
				 "{\"kind\":\"address\",\"family\":\"inet6\","
				 "\"address\":\"fd00::\",\"prefix\":8,"
				 "\"port_lo\":0,\"port_hi\":0},"
				 "{\"kind\":\"port\",\"port_lo\":53,"
				 "\"port_hi\":53},"
				 "{\"kind\":\"program\",\"program\":"
				 "\"backup-agent\"}]\n");
	}

	/* A bad rule: the old rules stay. */
	write_conf("ubs.conf", "[exclude]\nport = 53\naddress = 10.0.0.0/33\n");
	cr_assert(kill(daemon_pid, SIGHUP) == 0);
	wait_log("bad address '10.0.0.0/33'");
	wait_log("keeping the old policy");
	cr_assert_eq(pp_generation(&pg), gen);
	cr_assert_eq(excluded4(&pg, "backup-agent", "8.8.8.8", 80), 1);

	/* A good file replaces them. */
	write_conf("ubs.conf", "[exclude]\nport = 8000-8100\n");
	cr_assert(kill(daemon_pid, SIGHUP) == 0);
	for (int t = 0; pp_generation(&pg) == gen; t += 10) {
		cr_assert(t < WAIT_MS, "SIGHUP did not republish");
		sleep_ms(10);
	}
	cr_assert_eq(excluded4(&pg, "backup-agent", "8.8.8.8", 80), 0);
	cr_assert_eq(excluded4(&pg, "web", "10.20.3.4", 6379), 0);
	cr_assert_eq(excluded4(&pg, "web", "8.8.8.8", 53), 0);
	cr_assert_eq(excluded4(&pg, "web", "8.8.8.8", 8050), 1);
	cr_assert_eq(pp_excluded(&pg, "web", AF_INET6, &a6, 80), 0);
	{
		char out[OUT_MAX], err[OUT_MAX];

		cr_assert_eq(run_ubsctl(out, err, "ex", NULL), 0, "%s", err);
		cr_assert_str_eq(out, "KIND     RULE\nport     8000-8100\n");
	}
	ubt_seg_unmap(&pg);
}

Test(daemon, flipping_a_service_needs_no_restart)
{
	char out[OUT_MAX], err[OUT_MAX];
	const char *off[] = { "service", "svc-a", "off", NULL };
	const char *json[] = { "--json", "services", NULL };
	const char *create[] = { "service", "late", "set", "spin_us=7", NULL };
	const char *bad[] = { "service", "svc-a", "set", "ring_kib=3", NULL };
	const char *badkey[] = { "service", "svc-a", "set", "color=red",
				 NULL };
	const char *deflt[] = { "service", "(default)", "set",
				"mem_quota=1G", NULL };
	struct ubs_svc_policy p;
	struct ubt_seg pg;
	uint64_t gen;
	int own;

	write_conf("ubs.conf", two_services);
	start_daemon();
	map_policy(&pg);
	cr_assert_eq(lookup(&pg, "svc-a", NULL).accel, 1);
	gen = pp_generation(&pg);

	cr_assert_eq(run_ubsctlv(out, err, off), 0, "%s", err);
	/* ubsctl has its OK: the page is already updated. */
	cr_assert_eq(lookup(&pg, "svc-a", &own).accel, 0);
	cr_assert_eq(own, 1);
	cr_assert_neq(pp_generation(&pg), gen);
	cr_assert_eq(lookup(&pg, "svc-b", NULL).accel, 0);
	cr_assert_eq(run_ubsctlv(out, err, json), 0, "%s", err);
	cr_assert(strstr(out, "{\"name\":\"svc-a\",\"accel\":false,"),
		  "%s", out);

	/* A service not seen yet is created from the default record. */
	cr_assert_eq(lookup(&pg, "late", &own).spin_us, 20);
	cr_assert_eq(own, 0);
	cr_assert_eq(run_ubsctlv(out, err, create), 0, "%s", err);
	p = lookup(&pg, "late", &own);
	cr_assert_eq(own, 1);
	cr_assert_eq(p.spin_us, 7);
	cr_assert_eq(p.accel, 1);
	cr_assert_eq(p.ring_kib, 1024);

	/* The default record. */
	cr_assert_eq(run_ubsctlv(out, err, deflt), 0, "%s", err);
	cr_assert_eq(lookup(&pg, "nobody-knows", NULL).mem_quota, 1ull << 30);

	/* Bad values and keys: exit 3, ubsd's message, page unchanged. */
	gen = pp_generation(&pg);
	cr_assert_eq(run_ubsctlv(out, err, bad), 3);
	cr_assert(strstr(err, "bad value '3' for ring_kib"), "%s", err);
	cr_assert_eq(run_ubsctlv(out, err, badkey), 3);
	cr_assert(strstr(err, "unknown key 'color'"), "%s", err);
	cr_assert_eq(pp_generation(&pg), gen);
	cr_assert_eq(lookup(&pg, "svc-a", NULL).ring_kib, 64);

	/* Usage errors need no daemon round trip. */
	const char *u1[] = { "service", "svc-a", "maybe", NULL };
	const char *u2[] = { "service", "svc-a", "set", "novalue", NULL };
	cr_assert_eq(run_ubsctlv(out, err, u1), 2);
	cr_assert_eq(run_ubsctlv(out, err, u2), 2);
	ubt_seg_unmap(&pg);
}

Test(daemon, bad_config_refuses_to_start)
{
	char path[128], log[128], text[OUT_MAX], want[192];
	pid_t pid;
	int status;

	write_file("bad.conf", "[default]\naccel = on\n\nspeed = 11\n");
	pid = dt_spawn_ubsd(UBSD_PATH, "ubsd2.log", "bad.conf");
	status = dt_reap(pid);
	cr_assert(status >= 0, "ubsd started with a bad config");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1,
		  "status %#x", status);
	path_in(log, sizeof(log), "ubsd2.log");
	slurp(log, text, sizeof(text));
	path_in(path, sizeof(path), "bad.conf");
	snprintf(want, sizeof(want), "%s:4: unknown key 'speed'", path);
	cr_assert(strstr(text, want), "want '%s' in:\n%s", want, text);
	/* Nothing was left behind. */
	path_in(path, sizeof(path), CTL_SOCK_NAME);
	cr_assert(access(path, F_OK) < 0);

	/* A file named with -c must exist. */
	unlink(log);
	pid = dt_spawn_ubsd(UBSD_PATH, "ubsd2.log", "missing.conf");
	status = dt_reap(pid);
	cr_assert(status >= 0 && WIFEXITED(status) &&
		  WEXITSTATUS(status) == 1);
	slurp(log, text, sizeof(text));
	cr_assert(strstr(text, "missing.conf: No such file"), "%s", text);
}

Test(daemon, sighup_reloads_and_keeps_the_old_policy_on_error)
{
	char out[OUT_MAX], err[OUT_MAX], want[192], path[128];
	const char *set[] = { "service", "svc-b", "set", "spin_us=99", NULL };
	struct ubt_seg pg;
	uint64_t gen;
	int own;

	write_conf("ubs.conf", two_services);
	start_daemon();
	map_policy(&pg);
	/* A run-time change, to be lost by the reload. */
	cr_assert_eq(run_ubsctlv(out, err, set), 0, "%s", err);
	cr_assert_eq(lookup(&pg, "svc-b", NULL).spin_us, 99);
	gen = pp_generation(&pg);

	/* Bad file: logged with FILE:LINE, page unchanged. */
	write_conf("ubs.conf", "[default]\n[service svc-a]\nring_kib = 100\n");
	cr_assert(kill(daemon_pid, SIGHUP) == 0);
	path_in(path, sizeof(path), "ubs.conf");
	snprintf(want, sizeof(want), "%s:5: bad value '100' for ring_kib",
		 path);
	wait_log(want);
	wait_log("keeping the old policy");
	cr_assert_eq(pp_generation(&pg), gen);
	cr_assert_eq(lookup(&pg, "svc-a", NULL).ring_kib, 64);
	cr_assert_eq(lookup(&pg, "svc-b", NULL).spin_us, 99);
	get_status();

	/* Good file: applied. */
	write_conf("ubs.conf", "[service svc-a]\naccel = off\n"
		   "[service svc-c]\nring_kib = 8\n");
	cr_assert(kill(daemon_pid, SIGHUP) == 0);
	for (int t = 0; pp_generation(&pg) == gen; t += 10) {
		cr_assert(t < WAIT_MS, "SIGHUP did not republish");
		sleep_ms(10);
	}
	cr_assert_eq(lookup(&pg, "svc-a", &own).accel, 0);
	cr_assert_eq(lookup(&pg, "svc-c", &own).ring_kib, 8);
	cr_assert_eq(own, 1);
	lookup(&pg, "svc-b", &own);
	cr_assert_eq(own, 0, "svc-b should be gone after the reload");
	cr_assert_eq(lookup(&pg, "svc-b", NULL).spin_us, 50,
		     "built-in default spin_us expected");
	ubt_seg_unmap(&pg);
}

/*
 * In a child that became nobody (become_nobody(supp, prim)), send
 * SERVICE_SET svc-a accel=off.  Returns 0 for OK, 1 for EPERM with a
 * "permission denied" message, 2 for another error, 3+ for failures.
 */
static int set_as_nobody(gid_t supp, gid_t prim)
{
	int status;
	pid_t pid = fork();

	cr_assert(pid >= 0);
	if (pid == 0) {
		struct ctl_service_set m = { .name = "svc-a", .key = "accel",
					     .value = "off" };
		union {
			unsigned char raw[CTL_MAX_BODY];
			struct ctl_error e;
		} body;
		struct ctl_hdr h;
		const char *why;
		int fd;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (become_nobody(supp, prim) < 0)
			_exit(3);
		/* No Criterion asserts in here: plain checks. */
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		path_in(sun.sun_path, sizeof(sun.sun_path), CTL_SOCK_NAME);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sun,
				      sizeof(sun)) < 0)
			_exit(4);
		unsigned char buf[sizeof(h) + sizeof(m)];
		ctl_fill(&h, CTL_REQ_SERVICE_SET, sizeof(m), 5);
		memcpy(buf, &h, sizeof(h));
		memcpy(buf + sizeof(h), &m, sizeof(m));
		if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
			_exit(5);
		if (recv(fd, &h, sizeof(h), MSG_WAITALL) != sizeof(h) ||
		    ctl_check(&h, NULL, &why) ||
		    (h.len && recv(fd, &body, h.len, MSG_WAITALL) !=
			      (ssize_t)h.len) ||
		    ctl_check(&h, &body, &why))
			_exit(6);
		if (h.type == CTL_R_OK)
			_exit(0);
		if (h.type == CTL_R_ERROR && body.e.err == EPERM &&
		    strncmp(body.e.msg, "permission denied: ", 19) == 0)
			_exit(1);
		_exit(2);
	}
	status = dt_reap(pid);
	cr_assert(status >= 0 && WIFEXITED(status), "child hung or died: %#x",
		  status);
	return WEXITSTATUS(status);
}

Test(daemon, other_uids_may_not_change_policy)
{
	char out[OUT_MAX], err[OUT_MAX];
	const char *off[] = { "service", "svc-a", "off", NULL };
	struct ubt_seg pg;
	uint64_t gen;

	if (geteuid() != 0)
		cr_skip_test("needs root to become another uid");
	/* nobody must reach the socket; the admin group is 4242. */
	cr_assert(chmod(run_dir, 0755) == 0);
	write_file("ubs.conf", "[daemon]\nadmin_group = 4242\n"
		   "[service svc-a]\naccel = on\n");
	start_daemon();
	map_policy(&pg);
	gen = pp_generation(&pg);

	cr_assert_eq(set_as_nobody(0, 0), 1, "nobody was not refused");
	cr_assert_eq(pp_generation(&pg), gen);
	cr_assert_eq(lookup(&pg, "svc-a", NULL).accel, 1);
	wait_log("permission denied: uid 65534");

	/* ubsctl: the message and exit code 4. */
	ubsctl_as_nobody = 1;
	int rc = run_ubsctlv(out, err, off);
	ubsctl_as_nobody = 0;
	cr_assert_eq(rc, 4, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "permission denied: uid 65534 is neither root "
			 "nor in admin group 4242"), "%s", err);
	cr_assert_eq(pp_generation(&pg), gen);

	/* But nobody in the admin group may: supplementary (from /proc)
	 * or primary (from SO_PEERCRED). */
	cr_assert_eq(set_as_nobody(4242, 0), 0);
	cr_assert_eq(lookup(&pg, "svc-a", NULL).accel, 0);
	cr_assert_neq(pp_generation(&pg), gen);
	gen = pp_generation(&pg);
	cr_assert_eq(set_as_nobody(0, 4242), 0);
	cr_assert_neq(pp_generation(&pg), gen);
	ubt_seg_unmap(&pg);
}

Test(daemon, policy_fd_cannot_be_written)
{
	struct ubt_seg pg;
	char byte = 1;
	void *p;

	start_daemon();
	map_policy(&pg);
	p = mmap(NULL, pg.size, PROT_READ | PROT_WRITE, MAP_SHARED, pg.fd, 0);
	cr_assert_eq(p, MAP_FAILED, "the policy page mapped writable");
	cr_assert_eq(errno, EPERM, "mmap: %s", strerror(errno));
	cr_assert_eq(write(pg.fd, &byte, 1), -1);
	cr_assert_eq(errno, EPERM, "write: %s", strerror(errno));
	cr_assert_eq(pwrite(pg.fd, &byte, 1, UBT_SEG_HDR_SIZE), -1);
	cr_assert_eq(errno, EPERM, "pwrite: %s", strerror(errno));
	/* Nor can the read-only mapping be made writable. */
	cr_assert_neq(mprotect(pg.base, pg.size, PROT_READ | PROT_WRITE), 0);
	cr_assert_neq(ftruncate(pg.fd, 0), 0);
	ubt_seg_unmap(&pg);
	get_status();
}

/* Mode bits (07777) of RUN_DIR/name, asserting it is a directory. */
static unsigned dir_mode(const char *name)
{
	char path[128];
	struct stat st;

	path_in(path, sizeof(path), name);
	cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, strerror(errno));
	cr_assert(S_ISDIR(st.st_mode), "%s is not a directory", path);
	return (unsigned)(st.st_mode & 07777);
}

/*
 * As nobody, in a child: create RUN_DIR/stats/mine (0: done, else the
 * errno), then try to remove RUN_DIR/stats/other (*rm_err: 0 or its
 * errno).  Returns -1 if the child did not report.
 */
static int nobody_in_stats(int *rm_err)
{
	int p[2], res[2] = { -1, -1 };
	pid_t pid;

	cr_assert(pipe(p) == 0);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		char path[128];
		int fd;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (become_nobody(0, 0) < 0)
			_exit(126);
		path_in(path, sizeof(path), "stats/mine");
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
		res[0] = fd < 0 ? errno : 0;
		if (fd >= 0)
			close(fd);
		path_in(path, sizeof(path), "stats/other");
		res[1] = unlink(path) < 0 ? errno : 0;
		if (write(p[1], res, sizeof(res)) != sizeof(res))
			_exit(1);
		_exit(0);
	}
	close(p[1]);
	if (read(p[0], res, sizeof(res)) != sizeof(res))
		res[0] = -1;
	close(p[0]);
	cr_assert(dt_wait_exit(pid, WAIT_MS) >= 0);
	*rm_err = res[1];
	return res[0];
}

/*
 * ubsd makes RUN_DIR/stats, where preloaded processes publish their
 * stats pages: mode 1777 whatever the umask, before its socket appears;
 * any uid may add its own page there but not remove another's; a
 * restart leaves it (and what is in it) as it is, quietly.
 */
Test(daemon, stats_dir_is_made_sticky_and_world_writable)
{
	char path[128];
	mode_t old;
	int rm_err, fd;

	old = umask(077);
	start_daemon();         /* returns once the socket exists */
	umask(old);
	cr_assert_eq(dir_mode("stats"), 01777, "mode %04o", dir_mode("stats"));
	wait_log("stats: created, mode 1777");
	path_in(path, sizeof(path), "stats/other");
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
	cr_assert(fd >= 0);
	close(fd);
	if (geteuid() == 0) {
		/* nobody must reach it through the run directory. */
		cr_assert(chmod(run_dir, 0755) == 0);
		cr_assert_eq(nobody_in_stats(&rm_err), 0,
			     "nobody cannot create its page");
		cr_assert_eq(rm_err, EPERM, "nobody removed root's page: %s",
			     strerror(rm_err));
	} else {
		cr_log_warn("not root: other uids not tried");
	}

	/* A restart: nothing to say, nothing changed. */
	cr_assert_eq(kill(daemon_pid, SIGTERM), 0);
	cr_assert(dt_wait_exit(daemon_pid, WAIT_MS) >= 0);
	daemon_pid = -1;
	path_in(path, sizeof(path), "ubsd.log");
	cr_assert_eq(unlink(path), 0);
	start_daemon();
	get_status();
	cr_assert_eq(dir_mode("stats"), 01777);
	path_in(path, sizeof(path), "stats/other");
	cr_assert_eq(access(path, F_OK), 0, "a restart emptied stats/");
	{
		char log[128], text[OUT_MAX];

		path_in(log, sizeof(log), "ubsd.log");
		slurp(log, text, sizeof(text));
		cr_assert(!strstr(text, "stats"), "%s", text);
	}
}

/* A stats/ made by someone else stays as it is; ubsd says so and runs. */
Test(daemon, existing_stats_dir_is_left_as_it_is)
{
	char path[128];

	path_in(path, sizeof(path), "stats");
	cr_assert_eq(mkdir(path, 0700), 0);
	cr_assert_eq(chmod(path, 0750), 0);
	start_daemon();
	get_status();
	cr_assert_eq(dir_mode("stats"), 0750);
	wait_log("stats: exists with mode 0750, not 1777; left as it is");
	cr_assert_eq(kill(daemon_pid, SIGTERM), 0);
	cr_assert(dt_wait_exit(daemon_pid, WAIT_MS) >= 0);
	daemon_pid = -1;

	/* Not even a directory: said too, and ubsd still starts. */
	cr_assert_eq(rmdir(path), 0);
	write_file("stats", "not a directory\n");
	start_daemon();
	get_status();
	wait_log("stats: exists and is not a directory; left as it is");
}

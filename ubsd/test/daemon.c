/* SPDX-License-Identifier: MIT */
/*
 * daemon.c - ubsd and ubsctl as a user sees them: sessions that end with
 * their process, malformed input that closes only its own connection, a
 * half-sent message that stalls nobody, the pid lock, clean exit on
 * SIGTERM, and ubsctl's exit codes.
 *
 * Each test runs its own `ubsd -f` in its own mkdtemp run directory; every
 * process started is killed and reaped by pid (and dies with the test
 * process through PR_SET_PDEATHSIG if the test is killed on timeout).  The
 * daemon must still be alive at the end of each test and its log must be
 * free of sanitizer reports.
 */
#include <criterion/criterion.h>

#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl_proto.h"

#ifndef UBSD_PATH
#define UBSD_PATH "build/bin/ubsd"
#endif
#ifndef UBSCTL_PATH
#define UBSCTL_PATH "build/bin/ubsctl"
#endif

#define WAIT_MS  5000           /* any bounded wait; tests time out at 30 s */
#define OUT_MAX  8192

static char run_dir[64];
static pid_t daemon_pid = -1;
static pid_t client_pid = -1;

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

static void path_in(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", run_dir, name);
}

/* Wait up to ms for pid to exit; returns its wait status or -1. */
static int wait_exit(pid_t pid, int ms)
{
	int status;

	for (int t = 0; t < ms; t += 10) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return status;
		if (r < 0)
			return -1;
		sleep_ms(10);
	}
	return -1;
}

static void kill_reap(pid_t *pid)
{
	if (*pid > 0) {
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
		*pid = -1;
	}
}

/*
 * Start `ubsd -f` (plus extra args) on run_dir, stderr into log_name in
 * run_dir.  Returns its pid.
 */
static pid_t spawn_ubsd(const char *log_name)
{
	char log[128];
	pid_t pid;

	path_in(log, sizeof(log), log_name);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd >= 0)
			dup2(fd, STDERR_FILENO);
		setenv("UBS_RUN_DIR", run_dir, 1);
		execl(UBSD_PATH, "ubsd", "-f", "-d", (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Start the test's daemon and wait (bounded) until its socket exists. */
static void start_daemon(void)
{
	char sock[128];
	struct stat st;

	daemon_pid = spawn_ubsd("ubsd.log");
	path_in(sock, sizeof(sock), CTL_SOCK_NAME);
	for (int t = 0; t < WAIT_MS; t += 10) {
		if (stat(sock, &st) == 0)
			return;
		cr_assert(waitpid(daemon_pid, NULL, WNOHANG) == 0,
			  "ubsd exited at start");
		sleep_ms(10);
	}
	cr_assert_fail("ubsd socket did not appear");
}

static void setup(void)
{
	strcpy(run_dir, "/tmp/ubsd-test.XXXXXX");
	cr_assert(mkdtemp(run_dir));
}

/* Read all of a file into buf (NUL-terminated; empty if missing). */
static void slurp(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY);
	size_t len = 0;
	ssize_t r;

	buf[0] = '\0';
	if (fd < 0)
		return;
	while (len + 1 < n && (r = read(fd, buf + len, n - 1 - len)) > 0)
		len += (size_t)r;
	buf[len] = '\0';
	close(fd);
}

static void teardown(void)
{
	char log[128], text[OUT_MAX * 4];

	kill_reap(&client_pid);
	if (daemon_pid > 0) {
		int alive = waitpid(daemon_pid, NULL, WNOHANG) == 0;
		kill_reap(&daemon_pid);
		path_in(log, sizeof(log), "ubsd.log");
		slurp(log, text, sizeof(text));
		cr_expect(alive, "ubsd died during the test; log:\n%s", text);
		cr_expect(!strstr(text, "Sanitizer") &&
			  !strstr(text, "runtime error"),
			  "sanitizer report in ubsd log:\n%s", text);
	}
	const char *names[] = { "ubsd.log", "ubsd2.log", CTL_SOCK_NAME,
				CTL_PID_NAME };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		path_in(log, sizeof(log), names[i]);
		unlink(log);
	}
	rmdir(run_dir);
}

/*
 * Run ubsctl with args on run_dir; capture stdout and stderr.  Returns its
 * exit code (or -1 if it did not exit normally within WAIT_MS).
 */
static int run_ubsctl(char *out, char *err, const char *a1, const char *a2)
{
	int po[2], pe[2], status;
	pid_t pid;

	cr_assert(pipe(po) == 0 && pipe(pe) == 0);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(po[1], STDOUT_FILENO);
		dup2(pe[1], STDERR_FILENO);
		close(po[0]);
		close(pe[0]);
		setenv("UBS_RUN_DIR", run_dir, 1);
		execl(UBSCTL_PATH, "ubsctl", a1, a2, (char *)NULL);
		_exit(127);
	}
	close(po[1]);
	close(pe[1]);
	/* Outputs are small: each fits in its pipe, so order is safe. */
	status = wait_exit(pid, WAIT_MS);
	if (status < 0)
		kill_reap(&pid);
	for (int k = 0; k < 2; k++) {
		int fd = k ? pe[0] : po[0];
		char *buf = k ? err : out;
		size_t len = 0;
		ssize_t r;

		fcntl(fd, F_SETFL, O_NONBLOCK);
		while (len + 1 < OUT_MAX &&
		       (r = read(fd, buf + len, OUT_MAX - 1 - len)) > 0)
			len += (size_t)r;
		buf[len] = '\0';
		close(fd);
	}
	if (status < 0 || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

/* A connected control socket with bounded receive/send waits. */
static int ctl_open(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = WAIT_MS / 1000 };
	int fd;

	path_in(sun.sun_path, sizeof(sun.sun_path), CTL_SOCK_NAME);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(fd >= 0);
	cr_assert(connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0,
		  "connect: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
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
	struct ctl_hdr h;

	ctl_fill(&h, type, len, seq);
	memcpy(buf, &h, sizeof(h));
	if (len)
		memcpy(buf + sizeof(h), body, len);
	send_all(fd, buf, sizeof(h) + len);
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
	int fd = ctl_open();

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
		fd = ctl_open();
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
	int fd = ctl_open();

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
	slow = ctl_open();
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
	fd = ctl_open();
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
	second = spawn_ubsd("ubsd2.log");
	status = wait_exit(second, WAIT_MS);
	if (status < 0)
		kill_reap(&second);
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
	status = wait_exit(daemon_pid, WAIT_MS);
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

/* SPDX-License-Identifier: MIT */
/*
 * dtest.c - helpers shared by the tests that start a real ubsd in a
 * private run directory; see dtest.h.
 */
#include <criterion/criterion.h>

#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "dtest.h"

char run_dir[64];
pid_t daemon_pid = -1;
int dt_in_child;

/* The children of dt_spawn; a free entry is <= 0. */
static pid_t kids[DT_MAX_KIDS];

/* Sleep for ms milliseconds. */
void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* The monotonic clock in microseconds. */
uint64_t dt_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* The monotonic clock in milliseconds. */
uint64_t dt_now_ms(void)
{
	return dt_now_us() / 1000;
}

/* buf = BUILD/bin/NAME, from this binary's path BUILD/tests/X. */
void dt_bin_path(char *buf, size_t n, const char *name)
{
	char exe[PATH_MAX], *slash;
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	cr_assert(len > 0, "/proc/self/exe: %s", strerror(errno));
	exe[len] = '\0';
	slash = strrchr(exe, '/');
	cr_assert_not_null(slash);
	*slash = '\0';                          /* BUILD/tests */
	snprintf(buf, n, "%s/../bin/%s", exe, name);
}

/* buf = RUN_DIR/name. */
void path_in(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", run_dir, name);
}

/* SIGKILL and reap *pid if it is > 0; *pid becomes -1. */
void kill_reap(pid_t *pid)
{
	if (*pid > 0) {
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
		*pid = -1;
	}
}

/*
 * Fork a child running fn(arg); it dies with the test process and exits 0
 * when fn returns.  It stays in kids[] until dt_reap or dt_reap_kids.
 */
pid_t dt_spawn(void (*fn)(void *), void *arg)
{
	pid_t pid = fork();

	cr_assert(pid >= 0);
	if (pid == 0) {
		dt_in_child = 1;
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		fn(arg);
		_exit(0);
	}
	for (int i = 0; i < DT_MAX_KIDS; i++)
		if (kids[i] <= 0) {
			kids[i] = pid;
			return pid;
		}
	cr_assert_fail("too many children");
	return -1;
}

/* Wait up to ms for child pid to exit; its wait status, or -1. */
int dt_wait_exit(pid_t pid, int ms)
{
	int status;

	for (int t = 0; t < ms; t += 5) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return status;
		if (r < 0)
			return -1;
		sleep_ms(5);
	}
	return -1;
}

/*
 * Wait (bounded) for child pid to exit, SIGKILLing it if it does not, and
 * forget it in kids[]; its wait status, or -1 if it was killed.
 */
int dt_reap(pid_t pid)
{
	int status = dt_wait_exit(pid, WAIT_MS);

	if (status < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	for (int i = 0; i < DT_MAX_KIDS; i++)
		if (kids[i] == pid)
			kids[i] = -1;
	return status;
}

/* SIGKILL and reap every child still in kids[]. */
void dt_reap_kids(void)
{
	for (int i = 0; i < DT_MAX_KIDS; i++)
		kill_reap(&kids[i]);
}

/* dt_spawn with pipes up (child -> test) and go (test -> child). */
pid_t dt_spawn_piped(void (*fn)(void *), void *arg, int up[2], int go[2])
{
	pid_t pid;

	cr_assert(pipe(up) == 0 && pipe(go) == 0);
	pid = dt_spawn(fn, arg);
	close(up[1]);
	close(go[0]);
	return pid;
}

/* 0 down go, the child must exit 0; close the test's ends. */
void dt_end_piped(pid_t pid, int up[2], int go[2], const char *who)
{
	dt_pipe_put(go[1], 0);
	cr_assert_eq(dt_reap(pid), 0, "%s child failed", who);
	close(up[0]);
	close(go[1]);
}

/* Write v to pipe fd. */
void dt_pipe_put(int fd, uint32_t v)
{
	REQUIRE(write(fd, &v, sizeof(v)) == sizeof(v));
}

/* Read one value from pipe fd, waiting at most WAIT_MS. */
uint32_t dt_pipe_get(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	uint32_t v = 0;

	REQUIRE(poll(&p, 1, WAIT_MS) == 1);
	REQUIRE(read(fd, &v, sizeof(v)) == sizeof(v));
	return v;
}

/* Bytes waiting in socket fd's receive queue. */
int dt_tcp_queued(int fd)
{
	int n = -1;

	REQUIRE(ioctl(fd, FIONREAD, &n) == 0);
	return n;
}

/* Write text to name in run_dir. */
void write_file(const char *name, const char *text)
{
	char path[128];
	FILE *f;

	path_in(path, sizeof(path), name);
	f = fopen(path, "w");
	cr_assert(f, "%s: %s", path, strerror(errno));
	cr_assert(fputs(text, f) >= 0);
	cr_assert(fclose(f) == 0);
}

/* Read what fd has (up to n - 1 bytes) into buf, NUL-terminated, and
 * close fd. */
static void read_close(int fd, char *buf, size_t n)
{
	size_t len = 0;
	ssize_t r;

	while (len + 1 < n && (r = read(fd, buf + len, n - 1 - len)) > 0)
		len += (size_t)r;
	buf[len] = '\0';
	close(fd);
}

/* Read all of a file into buf (NUL-terminated; empty if missing). */
void slurp(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY);

	buf[0] = '\0';
	if (fd >= 0)
		read_close(fd, buf, n);
}

/* Create run_dir from the mkdtemp template tmpl, with an empty ubs.conf. */
void dt_make_run_dir(const char *tmpl)
{
	snprintf(run_dir, sizeof(run_dir), "%s", tmpl);
	cr_assert(mkdtemp(run_dir));
	write_file("ubs.conf", "");
}

/*
 * Start `PROG -f -d -c CONF` on run_dir, stderr into log_name in run_dir;
 * CONF is conf_name in run_dir.  The daemon dies with the test process
 * (PR_SET_PDEATHSIG).  Returns its pid.
 */
pid_t dt_spawn_ubsd(const char *prog, const char *log_name,
		    const char *conf_name)
{
	char log[128], conf[128];
	pid_t pid;

	path_in(log, sizeof(log), log_name);
	path_in(conf, sizeof(conf), conf_name);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd >= 0)
			dup2(fd, STDERR_FILENO);
		setenv("UBS_RUN_DIR", run_dir, 1);
		execl(prog, "ubsd", "-f", "-d", "-c", conf, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/*
 * Start the test's daemon (prog, log ubsd.log, conf ubs.conf) into
 * daemon_pid and wait (bounded) until its socket exists.
 */
void dt_start_daemon(const char *prog)
{
	char sock[128];
	struct stat st;

	char pidf[128], text[32];

	daemon_pid = dt_spawn_ubsd(prog, "ubsd.log", "ubs.conf");
	path_in(sock, sizeof(sock), CTL_SOCK_NAME);
	path_in(pidf, sizeof(pidf), CTL_PID_NAME);
	/* Ready when it listens: ubsd binds the socket, listens, then
	 * writes its pid into the pid file (the socket file alone appears
	 * before listen). */
	for (int t = 0; t < WAIT_MS; t += 10) {
		slurp(pidf, text, sizeof(text));
		if (stat(sock, &st) == 0 && atol(text) == (long)daemon_pid)
			return;
		cr_assert(waitpid(daemon_pid, NULL, WNOHANG) == 0,
			  "ubsd (%s) exited at start", prog);
		sleep_ms(10);
	}
	cr_assert_fail("ubsd socket did not appear");
}

/* Remove everything in directory path, down to depth levels of
 * directories (ubsd's stats/ is one), then path itself. */
static void rm_tree(const char *path, int depth)
{
	DIR *dir = opendir(path);
	struct dirent *de;

	while (dir && (de = readdir(dir))) {
		char ent[512];

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		snprintf(ent, sizeof(ent), "%s/%s", path, de->d_name);
		if (unlink(ent) < 0 && errno == EISDIR && depth > 1)
			rm_tree(ent, depth - 1);
	}
	if (dir)
		closedir(dir);
	rmdir(path);
}

/*
 * End of a test, once its own processes are reaped: the daemon must still
 * be alive and its log free of sanitizer reports; it is killed and
 * everything in the run directory (all the test's own, ubsd's stats/
 * included) removed.
 */
void dt_teardown(void)
{
	static char text[OUT_MAX * 8];
	char log[128];

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
	rm_tree(run_dir, 2);
}

/*
 * A control socket connected to the daemon, with bounded receive/send
 * waits; -1 with errno set if it cannot be created or connected.  No
 * assertion here: callers assert in their own way (some in children).
 */
int dt_ctl_connect(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = WAIT_MS / 1000 };
	int fd, err;

	path_in(sun.sun_path, sizeof(sun.sun_path), CTL_SOCK_NAME);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

/* dt_ctl_connect, REQUIRing success (in a child of dt_spawn too). */
int dt_ctl_open(void)
{
	int fd = dt_ctl_connect();

	REQUIRE(fd >= 0);
	return fd;
}

/*
 * Frame a message (header with sequence seq, then len bytes of body) into
 * buf, which holds sizeof(struct ctl_hdr) + CTL_MAX_BODY bytes; returns
 * its size.
 */
size_t dt_ctl_frame(void *buf, uint16_t type, uint32_t seq,
		    const void *body, uint32_t len)
{
	struct ctl_hdr h;

	ctl_fill(&h, type, len, seq);
	memcpy(buf, &h, sizeof(h));
	if (len)
		memcpy((char *)buf + sizeof(h), body, len);
	return sizeof(h) + len;
}

/*
 * Run ubsctl (prog) with args on run_dir, capturing stdout into out and,
 * unless err is NULL, stderr into err; prep runs in the child before exec
 * (< 0: exit 126).  Returns the exit code, or -1 if ubsctl did not exit
 * normally within WAIT_MS.
 */
int dt_run_ubsctl(const char *prog, const char *const *args, char *out,
		  char *err, int (*prep)(void))
{
	const char *argv[8] = { "ubsctl" };
	int po[2], pe[2] = { -1, -1 }, status;
	pid_t pid;

	cr_assert(pipe(po) == 0 && (!err || pipe(pe) == 0));
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(po[1], STDOUT_FILENO);
		close(po[0]);
		if (err) {
			dup2(pe[1], STDERR_FILENO);
			close(pe[0]);
		}
		setenv("UBS_RUN_DIR", run_dir, 1);
		if (prep && prep() < 0)
			_exit(126);
		for (int i = 0; i < 6 && args[i]; i++)
			argv[i + 1] = args[i];
		execv(prog, (char *const *)argv);
		_exit(127);
	}
	close(po[1]);
	if (err)
		close(pe[1]);
	/* Outputs are small: each fits in its pipe, so order is safe. */
	status = dt_reap(pid);
	fcntl(po[0], F_SETFL, O_NONBLOCK);
	read_close(po[0], out, OUT_MAX);
	if (err) {
		fcntl(pe[0], F_SETFL, O_NONBLOCK);
		read_close(pe[0], err, OUT_MAX);
	}
	if (status < 0 || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

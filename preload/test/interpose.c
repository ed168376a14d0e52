/* SPDX-License-Identifier: MIT */
/*
 * interpose.c - proves that libubs_preload.so really interposes the socket
 * calls of an unmodified program, and that doing so changes nothing the
 * program can see.
 *
 * The program is a real python3 run under LD_PRELOAD; each behaviour check
 * runs it with and without the preload and requires identical results.
 * The library path comes from $UBS_PRELOAD_LIB, else UBS_PRELOAD_DEFAULT
 * (set by the Makefile to the freshly built library).
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ubs_stats.h"

#ifndef UBS_PRELOAD_DEFAULT
#define UBS_PRELOAD_DEFAULT "build/libubs_preload.so"
#endif

#define CHILD_TIMEOUT_MS 20000	/* below the Criterion timeout of 30 s */
#define OUT_MAX 4096

extern char **environ;

/* One finished child: its pid, wait status and what it wrote on stdout. */
struct run {
	pid_t pid;
	int status;
	char out[OUT_MAX];
	size_t len;
};

static char run_dir[64];	/* fresh per test; holds stats/ */

/* Creates the per-test UBS_RUN_DIR with an empty stats/ inside. */
static void setup(void)
{
	char stats[128];

	strcpy(run_dir, "/tmp/ubs-interpose-XXXXXX");
	cr_assert_not_null(mkdtemp(run_dir), "mkdtemp: %s", strerror(errno));
	snprintf(stats, sizeof(stats), "%s/stats", run_dir);
	cr_assert_eq(mkdir(stats, 0755), 0, "mkdir %s: %s", stats, strerror(errno));
}

/* Removes the per-test run dir and the stats files in it. */
static void teardown(void)
{
	char stats[128], path[512];
	struct dirent *de;
	DIR *d;

	if (!run_dir[0])
		return;
	snprintf(stats, sizeof(stats), "%s/stats", run_dir);
	d = opendir(stats);
	if (d) {
		while ((de = readdir(d))) {
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			snprintf(path, sizeof(path), "%s/%s", stats, de->d_name);
			unlink(path);
		}
		closedir(d);
	}
	rmdir(stats);
	rmdir(run_dir);
}

static const char *preload_lib(void)
{
	const char *lib = getenv("UBS_PRELOAD_LIB");

	return lib && lib[0] ? lib : UBS_PRELOAD_DEFAULT;
}

/* Milliseconds on the monotonic clock. */
static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/*
 * Returns a new environment: ours minus LD_PRELOAD and UBS_*, plus the
 * NULL-terminated list extra.  Free with free_env().
 */
static char **child_env(const char *const *extra)
{
	size_t n = 0, k = 0;
	char **env;

	for (char **e = environ; *e; e++)
		n++;
	for (const char *const *x = extra; x && *x; x++)
		n++;
	env = calloc(n + 1, sizeof(*env));
	cr_assert_not_null(env);
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "UBS_", 4))
			env[k++] = strdup(*e);
	for (const char *const *x = extra; x && *x; x++)
		env[k++] = strdup(*x);
	return env;
}

static void free_env(char **env)
{
	for (char **e = env; *e; e++)
		free(*e);
	free(env);
}

/*
 * Spawns argv[0] (PATH search) with env, collects its stdout into r and
 * waits for it.  A child still running after CHILD_TIMEOUT_MS is killed
 * and the test fails.  Never leaves a child behind.
 */
static void run_child(const char *const *argv, char **env, struct run *r)
{
	posix_spawn_file_actions_t fa;
	long long deadline = now_ms() + CHILD_TIMEOUT_MS;
	bool timed_out = false;
	int p[2], ret;

	memset(r, 0, sizeof(*r));
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], STDOUT_FILENO);
	ret = posix_spawnp(&r->pid, argv[0], &fa, NULL, (char *const *)argv, env);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (ret) {
		close(p[0]);
		cr_assert_fail("posix_spawnp %s: %s", argv[0], strerror(ret));
	}

	for (;;) {
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		long long left = deadline - now_ms();
		ssize_t n;

		if (left <= 0) {
			timed_out = true;
			break;
		}
		ret = poll(&pfd, 1, (int)left);
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret <= 0)
			continue;
		n = read(p[0], r->out + r->len, sizeof(r->out) - 1 - r->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		r->len += (size_t)n;
		if (r->len == sizeof(r->out) - 1)
			break;
	}
	close(p[0]);
	r->out[r->len] = '\0';

	while (!timed_out) {
		ret = waitpid(r->pid, &r->status, WNOHANG);
		if (ret == r->pid)
			break;
		if (ret < 0 && errno != EINTR)
			cr_assert_fail("waitpid: %s", strerror(errno));
		if (now_ms() >= deadline)
			timed_out = true;
		else
			usleep(5000);
	}
	if (timed_out) {
		kill(r->pid, SIGKILL);
		waitpid(r->pid, &r->status, 0);
		cr_assert_fail("%s timed out after %d ms", argv[0], CHILD_TIMEOUT_MS);
	}
}

/*
 * Runs `python3 -c code`, with the preload (and UBS_RUN_DIR=run_dir plus
 * the NULL-terminated extra variables) or without it.
 */
static void run_python(const char *code, bool preload, const char *const *extra,
		       struct run *r)
{
	const char *argv[] = { "python3", "-c", code, NULL };
	const char *vars[16];
	char ld[4200], dir[128];
	size_t n = 0;
	char **env;

	if (preload) {
		cr_assert_eq(access(preload_lib(), R_OK), 0, "%s: %s",
			     preload_lib(), strerror(errno));
		snprintf(ld, sizeof(ld), "LD_PRELOAD=%s", preload_lib());
		snprintf(dir, sizeof(dir), "UBS_RUN_DIR=%s", run_dir);
		vars[n++] = ld;
		vars[n++] = dir;
		for (const char *const *x = extra; x && *x && n < 15; x++)
			vars[n++] = *x;
	}
	vars[n] = NULL;
	env = child_env(vars);
	run_child(argv, env, r);
	free_env(env);
}

/* Asserts that r exited with status 0. */
static void assert_exit0(const struct run *r, const char *what)
{
	cr_assert(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0,
		  "%s: python3 did not exit 0 (status 0x%x), stdout: %s",
		  what, r->status, r->out);
}

/*
 * Reads the stats page of pid from run_dir/stats/<pid> into page and
 * checks its header.  Fails the test when the file is missing.
 */
static void read_stats(pid_t pid, struct ubs_stats_page *page)
{
	char path[128];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/stats/%d", run_dir, (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0, "no stats page %s: %s", path, strerror(errno));
	n = pread(fd, page, sizeof(*page), 0);
	close(fd);
	cr_assert_eq(n, (ssize_t)sizeof(*page), "short stats page %s", path);
	cr_assert_eq(page->magic, UBS_STATS_MAGIC, "bad magic in %s", path);
	cr_assert_eq(page->version, UBS_STATS_VERSION);
	cr_assert_eq(page->size, UBS_STATS_SIZE);
	cr_assert_eq(page->ncounters, UBS_STAT_NR);
	cr_assert_eq(page->pid, pid, "pid field %d, expected %d", page->pid, (int)pid);
}

/* Listen, connect, accept, echo a few bytes, close: all on 127.0.0.1. */
static const char echo_py[] =
	"import socket\n"
	"l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
	"l.bind(('127.0.0.1', 0))\n"
	"l.listen(1)\n"
	"c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
	"c.connect(l.getsockname())\n"
	"s, peer = l.accept()\n"
	"msg = b'ubs echo 0123456789'\n"
	"c.sendall(msg)\n"
	"got = b''\n"
	"while len(got) < len(msg):\n"
	"    got += s.recv(64)\n"
	"s.sendall(got)\n"
	"back = b''\n"
	"while len(back) < len(msg):\n"
	"    back += c.recv(64)\n"
	"print(back.decode())\n"
	"print(c.getpeername() == l.getsockname(), peer == c.getsockname())\n"
	"s.close()\n"
	"c.close()\n"
	"l.close()\n";
static const char echo_expected[] = "ubs echo 0123456789\nTrue True\n";

/* socket() with an address family no kernel has: print the errno. */
static const char bad_socket_py[] =
	"import socket\n"
	"try:\n"
	"    socket.socket(12345, socket.SOCK_STREAM, 0)\n"
	"    print('no error')\n"
	"except OSError as e:\n"
	"    print(e.errno)\n";

Test(interpose, counters_of_real_program, .init = setup, .fini = teardown, .timeout = 30)
{
	const char *extra[] = { "UBS_SERVICE=ubs-interpose-test", NULL };
	struct ubs_stats_page page;
	const uint64_t *c = page.counters;
	struct run r;

	run_python(echo_py, true, extra, &r);
	assert_exit0(&r, "with preload");
	cr_assert_str_eq(r.out, echo_expected);

	read_stats(r.pid, &page);
	cr_assert_str_eq(page.service, "ubs-interpose-test");
	cr_assert_geq(c[UBS_STAT_SOCKET], 2, "socket counter %" PRIu64, c[UBS_STAT_SOCKET]);
	cr_assert_geq(c[UBS_STAT_BIND], 1, "bind counter %" PRIu64, c[UBS_STAT_BIND]);
	cr_assert_geq(c[UBS_STAT_LISTEN], 1, "listen counter %" PRIu64, c[UBS_STAT_LISTEN]);
	cr_assert_geq(c[UBS_STAT_CONNECT], 1, "connect counter %" PRIu64, c[UBS_STAT_CONNECT]);
	/* CPython's accept() is accept4(SOCK_CLOEXEC) where libc has it. */
	cr_assert_geq(c[UBS_STAT_ACCEPT] + c[UBS_STAT_ACCEPT4], 1,
		      "accept counters %" PRIu64 "+%" PRIu64, c[UBS_STAT_ACCEPT],
		      c[UBS_STAT_ACCEPT4]);
	cr_assert_geq(c[UBS_STAT_CLOSE], 3, "close counter %" PRIu64, c[UBS_STAT_CLOSE]);
	for (int i = UBS_STAT_UB_CONNS; i < UBS_STAT_NR; i++)
		cr_assert_eq(c[i], 0, "reserved counter %s is %" PRIu64, ubs_stat_names[i], c[i]);
}

Test(interpose, same_bytes_with_and_without, .init = setup, .fini = teardown, .timeout = 30)
{
	struct run plain, pre;

	run_python(echo_py, false, NULL, &plain);
	run_python(echo_py, true, NULL, &pre);
	assert_exit0(&plain, "without preload");
	assert_exit0(&pre, "with preload");
	cr_assert_str_eq(plain.out, echo_expected);
	cr_assert_str_eq(pre.out, plain.out);
	cr_assert_eq(pre.status, plain.status);
}

Test(interpose, exports_only_interposed_names, .timeout = 30)
{
	static const char *const expected[] = {
		"__poll_chk",
		"__ppoll_chk",
		"__read_chk",
		"__recv_chk",
		"__recvfrom_chk",
		"__sigaction",
		"__sysv_signal",
		"accept",
		"accept4",
		"aligned_alloc",
		"bind",
		"bsd_signal",
		"calloc",
		"close",
		"close_range",
		"closefrom",
		"connect",
		"dup",
		"dup2",
		"dup3",
		"epoll_create",
		"epoll_create1",
		"epoll_ctl",
		"epoll_pwait",
		"epoll_pwait2",
		"epoll_wait",
		"execl",
		"execle",
		"execlp",
		"execv",
		"execve",
		"execvp",
		"execvpe",
		"fcntl",
		"fcntl64",
		"fdopen",
		"fexecve",
		"free",
		"getsockopt",
		"io_uring_queue_init",
		"io_uring_queue_init_params",
		"io_uring_setup",
		"ioctl",
		"listen",
		"malloc",
		"malloc_usable_size",
		"memalign",
		"poll",
		"posix_memalign",
		"posix_spawn",
		"posix_spawnp",
		"ppoll",
		"prctl",
		"pselect",
		"pvalloc",
		"read",
		"readv",
		"realloc",
		"reallocarray",
		"recv",
		"recvfrom",
		"recvmmsg",
		"recvmsg",
		"select",
		"send",
		"sendfile",
		"sendfile64",
		"sendmmsg",
		"sendmsg",
		"sendto",
		"setsockopt",
		"shutdown",
		"sigaction",
		"siginterrupt",
		"signal",
		"socket",
		"splice",
		"ssignal",
		"sysv_signal",
		"valloc",
		"write",
		"writev",
		/* the verbs shim (shim-verbs/) */
		"_ibv_query_gid_ex",
		"_ibv_query_gid_table",
		"ibv_ack_async_event",
		"ibv_ack_cq_events",
		"ibv_alloc_pd",
		"ibv_close_device",
		"ibv_create_ah",
		"ibv_create_ah_from_wc",
		"ibv_create_comp_channel",
		"ibv_create_cq",
		"ibv_create_qp",
		"ibv_create_srq",
		"ibv_dealloc_pd",
		"ibv_dereg_mr",
		"ibv_destroy_ah",
		"ibv_destroy_comp_channel",
		"ibv_destroy_cq",
		"ibv_destroy_qp",
		"ibv_destroy_srq",
		"ibv_free_device_list",
		"ibv_get_async_event",
		"ibv_get_cq_event",
		"ibv_get_device_guid",
		"ibv_get_device_list",
		"ibv_get_device_name",
		"ibv_get_pkey_index",
		"ibv_modify_qp",
		"ibv_modify_srq",
		"ibv_open_device",
		"ibv_qp_to_qp_ex",
		"ibv_query_device",
		"ibv_query_gid",
		"ibv_query_gid_type",
		"ibv_query_pkey",
		"ibv_query_port",
		"ibv_query_qp",
		"ibv_query_srq",
		"ibv_read_sysfs_file",
		"ibv_reg_mr",
		"ibv_reg_mr_iova",
		"ibv_reg_mr_iova2",
		"ibv_resize_cq",
	};
	const size_t nexp = sizeof(expected) / sizeof(expected[0]);
	const char *argv[] = { "nm", "-D", "--defined-only", preload_lib(), NULL };
	bool seen[sizeof(expected) / sizeof(expected[0])] = { false };
	char *line, *save = NULL;
	char **env;
	struct run r;

	cr_assert_eq(access(preload_lib(), R_OK), 0, "%s: %s", preload_lib(), strerror(errno));
	env = child_env(NULL);
	run_child(argv, env, &r);
	free_env(env);
	cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0, "nm failed");

	/* Lines are "<value> <type> <name>[@version]". */
	for (line = strtok_r(r.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *name = strrchr(line, ' ');
		size_t i;

		name = name ? name + 1 : line;
		name[strcspn(name, "@")] = '\0';
		for (i = 0; i < nexp; i++)
			if (!strcmp(name, expected[i]))
				break;
		cr_assert_lt(i, nexp, "unexpected export '%s'", name);
		cr_assert_not(seen[i], "'%s' exported twice", name);
		seen[i] = true;
	}
	for (size_t i = 0; i < nexp; i++)
		cr_assert(seen[i], "'%s' is not exported", expected[i]);
}

Test(interpose, failing_socket_same_errno, .init = setup, .fini = teardown, .timeout = 30)
{
	struct ubs_stats_page page;
	struct run plain, pre;

	run_python(bad_socket_py, false, NULL, &plain);
	run_python(bad_socket_py, true, NULL, &pre);
	assert_exit0(&plain, "without preload");
	assert_exit0(&pre, "with preload");
	cr_assert(plain.out[0] >= '1' && plain.out[0] <= '9', "expected an errno, got: %s",
		  plain.out);
	cr_assert_str_eq(pre.out, plain.out);

	/* ... and the failing call did go through the preload. */
	read_stats(pre.pid, &page);
	cr_assert_geq(page.counters[UBS_STAT_SOCKET], 1);
}

Test(interpose, fork_child_gets_own_page, .init = setup, .fini = teardown, .timeout = 30)
{
	static const char fork_py[] =
		"import os, socket\n"
		"socket.socket().close()\n"
		"pid = os.fork()\n"
		"if pid == 0:\n"
		"    for _ in range(3):\n"
		"        socket.socket().close()\n"
		"    os._exit(0)\n"
		"os.waitpid(pid, 0)\n"
		"print(pid)\n";
	struct ubs_stats_page parent, child;
	struct run r;

	run_python(fork_py, true, NULL, &r);
	assert_exit0(&r, "with preload");
	read_stats(r.pid, &parent);
	read_stats((pid_t)atoi(r.out), &child);
	cr_assert_eq(parent.counters[UBS_STAT_SOCKET], 1, "parent counted %" PRIu64 " sockets",
		     parent.counters[UBS_STAT_SOCKET]);
	cr_assert_eq(child.counters[UBS_STAT_SOCKET], 3, "child counted %" PRIu64 " sockets",
		     child.counters[UBS_STAT_SOCKET]);
}

Test(interpose, disabled_is_pass_through, .init = setup, .fini = teardown, .timeout = 30)
{
	const char *extra[] = { "UBS_DISABLE=1", NULL };
	bool empty = true;
	char stats[128];
	struct dirent *de;
	struct run r;
	DIR *d;

	run_python(echo_py, true, extra, &r);
	assert_exit0(&r, "with UBS_DISABLE=1");
	cr_assert_str_eq(r.out, echo_expected);

	snprintf(stats, sizeof(stats), "%s/stats", run_dir);
	d = opendir(stats);
	cr_assert_not_null(d);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			empty = false;
	closedir(d);
	cr_assert(empty, "UBS_DISABLE=1 still wrote a stats page");
}

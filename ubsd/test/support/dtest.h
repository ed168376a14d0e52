/* SPDX-License-Identifier: MIT */
/*
 * dtest.h - helpers shared by the ubsd tests (test/daemon.c,
 * test/rendezvous_e2e.c, test/netns_e2e.c, test/stats.c, test/policy.c):
 * the private mkdtemp run directory and its files, starting the daemon
 * and waiting for its socket, checking its log and removing the run
 * directory at the end of a test, connecting to its control socket,
 * running ubsctl, and forked children (REQUIRE, dt_spawn, dt_reap).  Each
 * test binary links exactly one test file with this one, so run_dir,
 * daemon_pid and the children table are that test file's own.
 *
 * dtest.c is compiled again for tests/shim-behaviour (preload/Makefile)
 * and tests/compat-realprogs (compat-tests/Makefile), which link it with
 * ctl_proto.o and Criterion only: it may use libc, Criterion and
 * ctl_proto, but not libubt.a or policy.o (the fd-passing control helpers
 * and the policy page stay with the tests that use them).
 */
#ifndef UBSD_TEST_DTEST_H
#define UBSD_TEST_DTEST_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define WAIT_MS  5000           /* any bounded wait; tests time out at 30 s */
#define OUT_MAX  8192
#define DT_MAX_KIDS 8           /* children of dt_spawn at once */

/* The test's run directory (UBS_RUN_DIR of every program it starts). */
extern char run_dir[64];
/* The test's daemon, or -1. */
extern pid_t daemon_pid;

/* 1 in a child started by dt_spawn, 0 in the test process. */
extern int dt_in_child;

/*
 * Check x in the test process or in a child of dt_spawn alike: in the
 * test process a false x fails the test (Criterion); in a child it is
 * printed to stderr with the child's pid and errno and the child exits 1,
 * which its parent sees through dt_reap.  (Criterion's header comes
 * first in every test file.)
 */
#define REQUIRE(x) do {							\
	if (!(x)) {							\
		if (dt_in_child) {					\
			fprintf(stderr, "child %d: %s:%d: %s (%s)\n",	\
				getpid(), __FILE__, __LINE__, #x,	\
				strerror(errno));			\
			_exit(1);					\
		}							\
		cr_assert_fail("%s:%d: %s (errno: %s)", __FILE__,	\
			       __LINE__, #x, strerror(errno));		\
	}								\
} while (0)

/* Sleep for ms milliseconds. */
void sleep_ms(int ms);

/* The monotonic clock in microseconds, and in milliseconds. */
uint64_t dt_now_us(void);
uint64_t dt_now_ms(void);

/*
 * buf = the build tree's bin/NAME, found from this test binary's own path
 * (BUILD/tests/X -> BUILD/tests/../bin/NAME), so that a sanitizer build
 * runs its own programs.
 */
void dt_bin_path(char *buf, size_t n, const char *name);

/* buf = RUN_DIR/name. */
void path_in(char *buf, size_t n, const char *name);

/* SIGKILL and reap *pid if it is > 0; *pid becomes -1. */
void kill_reap(pid_t *pid);

/*
 * Fork a child running fn(arg), which dies with the test process
 * (PR_SET_PDEATHSIG) and exits 0 when fn returns; dt_in_child is 1 in it.
 * It is entered in the children table (DT_MAX_KIDS at once, or the test
 * fails) until dt_reap or dt_reap_kids.
 */
pid_t dt_spawn(void (*fn)(void *), void *arg);

/*
 * dt_spawn with two new pipes: up (child -> test) and go (test -> child).
 * The test keeps up[0] and go[1], the child up[1] and go[0].
 */
pid_t dt_spawn_piped(void (*fn)(void *), void *arg, int up[2], int go[2]);

/*
 * End a child of dt_spawn_piped: put 0 down go, dt_reap it (it must exit
 * 0, or the test fails: "WHO child failed"), close the test's ends.
 */
void dt_end_piped(pid_t pid, int up[2], int go[2], const char *who);

/* Wait up to ms for child pid to exit; its wait status, or -1. */
int dt_wait_exit(pid_t pid, int ms);

/*
 * Wait (bounded, WAIT_MS) for child pid to exit and forget it in the
 * children table; its wait status, or -1 if it had to be SIGKILLed.
 */
int dt_reap(pid_t pid);

/* SIGKILL and reap every child still in the children table. */
void dt_reap_kids(void);

/* Write v to pipe fd; read one (bounded: WAIT_MS) from pipe fd.  They
 * REQUIRE success, so a child may use them too. */
void dt_pipe_put(int fd, uint32_t v);
uint32_t dt_pipe_get(int fd);

/* Bytes waiting in socket fd's receive queue (FIONREAD). */
int dt_tcp_queued(int fd);

/* Write text to name in run_dir. */
void write_file(const char *name, const char *text);

/* Read all of a file into buf (NUL-terminated; empty if missing). */
void slurp(const char *path, char *buf, size_t n);

/* Create run_dir from the mkdtemp template tmpl, with an empty ubs.conf. */
void dt_make_run_dir(const char *tmpl);

/*
 * Start `PROG -f -d -c CONF` on run_dir, stderr into log_name in run_dir;
 * CONF is conf_name in run_dir.  Returns its pid.
 */
pid_t dt_spawn_ubsd(const char *prog, const char *log_name,
		    const char *conf_name);

/*
 * Start the test's daemon (prog, log ubsd.log, conf ubs.conf) into
 * daemon_pid and wait (bounded) until its socket exists.
 */
void dt_start_daemon(const char *prog);

/*
 * End of a test, once its own processes are reaped: the daemon must still
 * be alive and its log free of sanitizer reports; it is killed and the
 * run directory removed.
 */
void dt_teardown(void);

/*
 * A control socket connected to the daemon, with bounded receive/send
 * waits; -1 with errno set if it cannot be created or connected.
 */
int dt_ctl_connect(void);

/* dt_ctl_connect, REQUIRing success. */
int dt_ctl_open(void);

/*
 * Frame a message (header with sequence seq, then len bytes of body) into
 * buf, which holds sizeof(struct ctl_hdr) + CTL_MAX_BODY bytes; returns
 * its size.
 */
size_t dt_ctl_frame(void *buf, uint16_t type, uint32_t seq,
		    const void *body, uint32_t len);

/*
 * Run ubsctl (the program at prog) with args (NULL-terminated, at most 6)
 * on run_dir; its stdout into out and its stderr into err, or to the
 * test's own stderr if err is NULL (OUT_MAX bytes each, NUL-terminated;
 * they must fit in a pipe).
 * With prep, the child calls prep() before exec and exits 126 if it
 * returns < 0.  Returns ubsctl's exit code, or -1 if it did not exit
 * normally within WAIT_MS (it is killed then).
 */
int dt_run_ubsctl(const char *prog, const char *const *args, char *out,
		  char *err, int (*prep)(void));

#endif

/* SPDX-License-Identifier: MIT */
/*
 * dtest.h - helpers shared by the tests that start a real ubsd in a
 * private mkdtemp run directory (test/daemon.c, test/rendezvous_e2e.c):
 * the run directory and its files, starting the daemon and waiting for
 * its socket, checking its log and removing the run directory at the end
 * of a test, and connecting to its control socket.  Each test binary
 * links exactly one test file with this one, so run_dir and daemon_pid
 * are that test file's own.
 */
#ifndef UBSD_TEST_DTEST_H
#define UBSD_TEST_DTEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define WAIT_MS  5000           /* any bounded wait; tests time out at 30 s */
#define OUT_MAX  8192

/* The test's run directory (UBS_RUN_DIR of every program it starts). */
extern char run_dir[64];
/* The test's daemon, or -1. */
extern pid_t daemon_pid;

/* Sleep for ms milliseconds. */
void sleep_ms(int ms);

/* buf = RUN_DIR/name. */
void path_in(char *buf, size_t n, const char *name);

/* SIGKILL and reap *pid if it is > 0; *pid becomes -1. */
void kill_reap(pid_t *pid);

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

/*
 * Frame a message (header with sequence seq, then len bytes of body) into
 * buf, which holds sizeof(struct ctl_hdr) + CTL_MAX_BODY bytes; returns
 * its size.
 */
size_t dt_ctl_frame(void *buf, uint16_t type, uint32_t seq,
		    const void *body, uint32_t len);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * vtest.h - helpers of the verbs shim's tests: a private ubsd per test
 * (dtest.h) and programs started under the preload with UBS_RUN_DIR set,
 * their output captured, killed by pid when they overrun their time.
 */
#ifndef UBS_VTEST_H
#define UBS_VTEST_H

#include <criterion/criterion.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dtest.h"

#ifndef UBS_PRELOAD_DEFAULT
#define UBS_PRELOAD_DEFAULT "build/libubs_preload.so"
#endif

#define VT_OUT 65536

struct vt_proc {
	pid_t pid;
	int out;                        /* read end of stdout+stderr */
	char buf[VT_OUT];
	size_t len;
	int status;
};

static inline const char *vt_lib(void)
{
	const char *l = getenv("UBS_PRELOAD_LIB");

	return l && *l ? l : UBS_PRELOAD_DEFAULT;
}

/* Start argv[0] (PATH search) under the preload with extra "K=V" env
 * entries (NULL-terminated, may be NULL). */
static inline void vt_start(struct vt_proc *p, const char *const *argv,
			    const char *const *env)
{
	int fds[2];

	memset(p, 0, sizeof(*p));
	REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
	p->pid = fork();
	REQUIRE(p->pid >= 0);
	if (p->pid == 0) {
		dup2(fds[1], 1);
		dup2(fds[1], 2);
		setenv("UBS_RUN_DIR", run_dir, 1);
		setenv("LD_PRELOAD", vt_lib(), 1);
		for (int i = 0; env && env[i]; i++)
			putenv((char *)env[i]);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	p->out = fds[0];
}

/* Collect p's output until it exits or ms pass (then SIGKILL).  Returns
 * the wait status (-1: killed for overrunning). */
static inline int vt_finish(struct vt_proc *p, int ms)
{
	uint64_t end = dt_now_ms() + (uint64_t)ms;
	bool killed = false;

	for (;;) {
		struct pollfd f = { .fd = p->out, .events = POLLIN };
		uint64_t now = dt_now_ms();
		ssize_t r;

		if (now >= end) {
			kill(p->pid, SIGKILL);
			killed = true;
			break;
		}
		if (poll(&f, 1, (int)(end - now)) <= 0)
			continue;
		r = read(p->out, p->buf + p->len, sizeof(p->buf) - 1 - p->len);
		if (r <= 0)
			break;
		p->len += (size_t)r;
	}
	p->buf[p->len] = '\0';
	close(p->out);
	waitpid(p->pid, &p->status, 0);
	return killed ? -1 : p->status;
}

static inline bool vt_ok(const struct vt_proc *p)
{
	return WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0;
}

#endif

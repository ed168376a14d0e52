/* SPDX-License-Identifier: MIT */
/*
 * init.c - library entry of libubs_preload.so: the table of real libc
 * functions, configuration from the environment, and the lazy, idempotent,
 * thread-safe init that both the constructor and every entry point use.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "preload.h"
#include "ctl.h"
#include "mh.h"

struct ubs_real ubs_real;
struct ubs_config ubs_config;
int ubs_init_state;			/* enum ubs_init_state */
UBS_TLS bool ubs_guard;

static pthread_mutex_t ubs_init_lock = PTHREAD_MUTEX_INITIALIZER;
static UBS_TLS bool ubs_in_init;	/* this thread is inside ubs_init() */
static bool ubs_real_done;		/* ubs_real is fully resolved */

/*
 * Resolves every real libc function with dlsym(RTLD_NEXT).  Returns 0, or
 * -ENOSYS if one is missing (the table is then unusable).  Called with
 * ubs_init_lock held, before anything that could allocate on our behalf.
 */
static int ubs_real_resolve(void)
{
#define UBS_RESOLVE(fn)							\
	do {								\
		ubs_real.fn = (__typeof__(ubs_real.fn))dlsym(RTLD_NEXT, #fn); \
		if (!ubs_real.fn)					\
			return -ENOSYS;					\
	} while (0);
	UBS_REAL_FUNCS(UBS_RESOLVE)
	ubs_real.epoll_pwait2 = (__typeof__(ubs_real.epoll_pwait2))
		dlsym(RTLD_NEXT, "epoll_pwait2");
#undef UBS_RESOLVE
	return 0;
}

/* Does a seccomp filter confine this process ("Seccomp: 2")?  Such a
 * filter may forbid what the library needs (memfd, eventfd, futex):
 * the process keeps its connections on TCP. */
static bool ubs_seccomp_filtered(void)
{
	char buf[4096], *p;
	ssize_t n;
	int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return false;
	n = ubs_real.read(fd, buf, sizeof(buf) - 1);
	ubs_real.close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	p = strstr(buf, "\nSeccomp:");
	return p && strtol(p + 9, NULL, 10) == 2;
}

/* Integer from the environment, def when unset or out of [lo, hi]. */
static int ubs_env_int(const char *name, int def, int lo, int hi)
{
	const char *v = secure_getenv(name);
	char *end;
	long n;

	if (!v || !*v)
		return def;
	if (!strcmp(v, "error"))
		return 1;
	if (!strcmp(v, "info"))
		return 2;
	if (!strcmp(v, "debug"))
		return 3;
	n = strtol(v, &end, 10);
	return *end || n < lo || n > hi ? def : (int)n;
}

/* Copies src into dst[size], truncating, always NUL-terminated. */
static void ubs_strlcpy(char *dst, const char *src, size_t size)
{
	size_t n = strnlen(src, size - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

/*
 * Fills name[size] with the program name: program_invocation_short_name,
 * else /proc/self/comm (newline stripped), else "unknown".
 */
static void ubs_program_name(char *name, size_t size)
{
	ssize_t n;
	int fd;

	if (program_invocation_short_name && program_invocation_short_name[0]) {
		ubs_strlcpy(name, program_invocation_short_name, size);
		return;
	}
	ubs_strlcpy(name, "unknown", size);
	fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = read(fd, name, size - 1);
	ubs_real.close(fd);
	if (n <= 0) {
		ubs_strlcpy(name, "unknown", size);
		return;
	}
	name[n] = '\0';
	name[strcspn(name, "\n")] = '\0';
}

/*
 * Reads UBS_DISABLE, UBS_RUN_DIR and UBS_SERVICE.  secure_getenv: a
 * set-uid program keeps the defaults.
 */
static void ubs_config_load(void)
{
	const char *v;

	v = secure_getenv("UBS_DISABLE");
	ubs_config.disabled = v && strcmp(v, "1") == 0;

	ubs_config.connect_wait_ms = ubs_env_int("UBS_CONNECT_WAIT_MS", 500,
						 0, 2000);
	ubs_config.first_send_wait_ms = ubs_env_int("UBS_FIRST_SEND_WAIT_MS",
						    20, 0, 2000);
	ubs_config.no_board = ubs_env_int("UBS_BOARD", 1, 0, 1) == 0;
	ubs_config.log_level = ubs_env_int("UBS_LOG", 0, 0, 3);
	ubs_config.log_fd = 2;
	v = secure_getenv("UBS_LOG_FILE");
	if (ubs_config.log_level && v && v[0]) {
		int fd = open(v, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
			      0644);

		if (fd >= 0)
			ubs_config.log_fd = ubs_fd_high(fd);
	}
	ubs_config.tcp_only = ubs_seccomp_filtered();

	v = secure_getenv("UBS_RUN_DIR");
	ubs_strlcpy(ubs_config.run_dir, v && v[0] ? v : "/run/ubs",
		    sizeof(ubs_config.run_dir));

	v = secure_getenv("UBS_SERVICE");
	if (v && v[0])
		ubs_strlcpy(ubs_config.service, v, sizeof(ubs_config.service));
	else
		ubs_program_name(ubs_config.service, sizeof(ubs_config.service));
}

/*
 * ubs_log: one line "ubs[pid]: message" on stderr, written with one
 * write(2) so lines of several processes do not interleave.
 */
void ubs_log(int level, const char *fmt, ...)
{
	static const char *const tag[] = { "", "error", "info", "debug" };
	int saved = errno;
	char buf[512];
	va_list ap;
	int n;

	if (level > ubs_config.log_level)
		return;
	n = snprintf(buf, sizeof(buf), "ubs[%d] %s: ", (int)getpid(),
		     tag[level & 3]);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	if (ubs_real.write) {
		/* A program may forbid file growth (RLIMIT_FSIZE 0, as
		 * sshd's privilege-separated child does): a log line must
		 * not bring it SIGXFSZ.  Logging is off unless asked for. */
		static const struct timespec zero = { 0, 0 };
		sigset_t xfsz, old;

		sigemptyset(&xfsz);
		sigaddset(&xfsz, SIGXFSZ);
		pthread_sigmask(SIG_BLOCK, &xfsz, &old);
		if (ubs_real.write(ubs_config.log_fd, buf, (size_t)n) < 0 &&
		    errno == EFBIG && !sigismember(&old, SIGXFSZ))
			sigtimedwait(&xfsz, NULL, &zero);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	errno = saved;
}

/*
 * Brings the library up once: real table, config, stats page, fork
 * handler.  Safe to call from any thread at any time, including from an
 * interposed call that arrives before our constructor ran.  A nested call
 * from the same thread (something inside init re-entering an entry point)
 * does not wait: it gets 0 once the real table is usable, else -ENOSYS.
 * Returns 0 or -ENOSYS; errno is left as the caller had it.
 */
int ubs_init(void)
{
	int saved_errno = errno;
	int state, ret;

	state = __atomic_load_n(&ubs_init_state, __ATOMIC_ACQUIRE);
	if (state != UBS_INIT_NONE)
		return state == UBS_INIT_READY ? 0 : -ENOSYS;
	if (ubs_in_init)
		return __atomic_load_n(&ubs_real_done, __ATOMIC_ACQUIRE) ? 0 : -ENOSYS;

	ubs_in_init = true;
	pthread_mutex_lock(&ubs_init_lock);
	state = __atomic_load_n(&ubs_init_state, __ATOMIC_ACQUIRE);
	if (state == UBS_INIT_NONE) {
		if (ubs_real_resolve() < 0) {
			state = UBS_INIT_BROKEN;
		} else {
			__atomic_store_n(&ubs_real_done, true, __ATOMIC_RELEASE);
			ubs_config_load();
			ubs_stats_init();
			pthread_atfork(NULL, NULL, ubs_stats_atfork_child);
			sock_init();
			state = UBS_INIT_READY;
		}
		__atomic_store_n(&ubs_init_state, state, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&ubs_init_lock);
	ubs_in_init = false;

	ret = state == UBS_INIT_READY ? 0 : -ENOSYS;
	errno = saved_errno;
	return ret;
}

/* Constructor: init early, so the stats page exists before main(). */
__attribute__((constructor))
static void ubs_ctor(void)
{
	ubs_init();
	mh_init();              /* memhooks: the pool, if policy wants it */
}

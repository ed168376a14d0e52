/* SPDX-License-Identifier: MIT */
/*
 * preload.h - private header of libubs_preload.so, shared by preload/ and
 * the shims: the table of real libc functions, lazy init, configuration,
 * the recursion guard and the stats counters.
 *
 * Everything declared here is hidden (-fvisibility=hidden); only the
 * interposed entry points, marked UBS_EXPORT, leave the library, and the
 * version script ubs_preload.map decides which of them.
 */
#ifndef UBS_PRELOAD_H
#define UBS_PRELOAD_H

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <spawn.h>
#include <stdio.h>
#include <unistd.h>

#include "ubs_stats.h"

/* Marks an interposed libc entry point; everything else stays hidden. */
#define UBS_EXPORT __attribute__((visibility("default")))

/* initial-exec TLS: no __tls_get_addr, so no allocation on first touch. */
#define UBS_TLS __thread __attribute__((tls_model("initial-exec")))

/*
 * The real libc functions, resolved once with dlsym(RTLD_NEXT, ...):
 * X(name) for every function the library interposes or calls past
 * itself.  A missing one leaves its slot NULL and the library broken
 * (calls fail ENOSYS) only if it is in the required set.
 */
#define UBS_REAL_FUNCS(X)						\
	X(socket) X(bind) X(listen) X(connect) X(accept) X(accept4)	\
	X(close) X(shutdown) X(read) X(write) X(readv) X(writev)	\
	X(recv) X(send) X(recvfrom) X(sendto) X(recvmsg) X(sendmsg)	\
	X(dup) X(dup2) X(dup3) X(fcntl) X(ioctl) X(getsockopt)		\
	X(setsockopt) X(getsockname) X(getpeername) X(poll) X(ppoll) X(select) X(pselect)		\
	X(epoll_create) X(epoll_create1) X(epoll_ctl) X(epoll_wait)	\
	X(epoll_pwait) X(sendfile) X(pread)	\
	X(execve) X(execv) X(execvp) X(execvpe) X(fexecve)		\
	X(posix_spawn) X(posix_spawnp) X(fdopen) X(splice)		\
	X(recvmmsg) X(sendmmsg) X(prctl) X(close_range)

struct ubs_real {
#define UBS_REAL_SLOT_(fn) __typeof__(fn) *fn;
	UBS_REAL_FUNCS(UBS_REAL_SLOT_)
#undef UBS_REAL_SLOT_
	/* Newer or optional: may be NULL. */
	int (*epoll_pwait2)(int, void *, int, const void *, const void *);
};

/* Configuration, read once from the environment at init. */
struct ubs_config {
	bool disabled;				/* UBS_DISABLE=1: pure pass-through */
	int connect_wait_ms;			/* UBS_CONNECT_WAIT_MS: client's wait
						 * for its channel (default 500) */
	int first_send_wait_ms;			/* UBS_FIRST_SEND_WAIT_MS: server's
						 * wait before it speaks first on an
						 * undecided connection (default 20) */
	bool no_board;				/* UBS_BOARD=0: connections set up
						 * through ubsd only, never the
						 * board */
	bool tcp_only;				/* io_uring or seccomp seen: no
						 * more UB (sock_go_tcp) */
	int log_fd;				/* stderr, or UBS_LOG_FILE */
	int log_level;				/* UBS_LOG: 0 silent (default),
						 * 1 error, 2 info, 3 debug */
	char run_dir[PATH_MAX];			/* UBS_RUN_DIR, default /run/ubs */
	char service[UBS_STATS_SERVICE_MAX];	/* UBS_SERVICE, default program */
};

enum ubs_init_state {
	UBS_INIT_NONE = 0,	/* nothing resolved yet */
	UBS_INIT_READY,		/* real table, config and stats are set */
	UBS_INIT_BROKEN,	/* a real symbol is missing: calls fail ENOSYS */
};

extern struct ubs_real ubs_real;
extern struct ubs_config ubs_config;
extern int ubs_init_state;			/* enum ubs_init_state, atomic */
extern struct ubs_stats_page *ubs_stats;	/* NULL when disabled */
extern UBS_TLS bool ubs_guard;

int ubs_init(void);
void sock_init(void);           /* shim-socket: fork handler, reconnect hook */
void ubs_stats_init(void);
void ubs_stats_atfork_child(void);

/*
 * The connection table of the stats file (ubs_stats.h), for `ubsctl
 * conns`.  ubs_conn_open takes a live slot for a connection decided UB
 * (NULL without a shared page or with every slot taken); ubs_conn_close
 * frees it; ubs_conn_tcp records a decision for TCP and its reason.
 */
struct ubs_conn_slot *ubs_conn_open(int fd, int side, uint64_t chan_id);
void ubs_conn_close(struct ubs_conn_slot *c);
void ubs_conn_tcp(int fd, int side, enum ubs_stat_id why);

/* memhooks placed bytes in the pool for a call returning to ra: count it
 * in the stats file's call-site table (allocation-free, lock-free). */
void ubs_site_note(const void *ra, uint64_t bytes);

static inline void ubs_conn_bytes(struct ubs_conn_slot *c, bool tx,
				  uint64_t n)
{
	if (c)
		__atomic_add_fetch(tx ? &c->tx : &c->rx, n, __ATOMIC_RELAXED);
}

/*
 * Recursion guard for the library's own socket use: wrap the calls the
 * library itself makes with ubs_guard_enter()/ubs_guard_exit(); entry
 * points reached while the guard is held pass straight to libc, uncounted.
 * ubs_guard_enter() returns false when the guard is already held.
 */
static inline bool ubs_guard_enter(void)
{
	if (ubs_guard)
		return false;
	ubs_guard = true;
	return true;
}

static inline void ubs_guard_exit(void)
{
	ubs_guard = false;
}

/* Adds n to counter id of this process's stats page (relaxed atomic). */
static inline void ubs_stats_add(enum ubs_stat_id id, uint64_t n)
{
	struct ubs_stats_page *page = ubs_stats;

	if (page)
		__atomic_fetch_add(&page->counters[id], n, __ATOMIC_RELAXED);
}

/*
 * Common prologue of every entry point: make sure the real table is
 * resolved (the call may come before our constructor ran), then count the
 * call.  Returns 0, or -ENOSYS when libc lacks the real symbol.  Never
 * changes errno.
 */
static inline int ubs_enter(enum ubs_stat_id id)
{
	if (__builtin_expect(__atomic_load_n(&ubs_init_state, __ATOMIC_ACQUIRE)
			     != UBS_INIT_READY, 0)) {
		int ret = ubs_init();

		if (ret < 0)
			return ret;
	}
	if (!ubs_guard)
		ubs_stats_add(id, 1);
	return 0;
}

/* Is the real table usable (init done or done enough)?  The data path
 * calls this instead of ubs_enter: it counts nothing. */
static inline bool ubs_ready(void)
{
	return __builtin_expect(__atomic_load_n(&ubs_init_state,
						__ATOMIC_ACQUIRE) ==
				UBS_INIT_READY, 1) || ubs_init() == 0;
}

/* Log at level (1 error, 2 info, 3 debug) to stderr when UBS_LOG allows;
 * never changes errno. */
void ubs_log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
#define ubs_dbg(...) do { if (ubs_config.log_level >= 3) ubs_log(3, __VA_ARGS__); } while (0)
#define ubs_info(...) do { if (ubs_config.log_level >= 2) ubs_log(2, __VA_ARGS__); } while (0)
#define ubs_err(...) do { if (ubs_config.log_level >= 1) ubs_log(1, __VA_ARGS__); } while (0)

/* The libc boundary: turns a -errno into errno = e and a -1 return. */
static inline int ubs_fail(int neg_errno)
{
	errno = -neg_errno;
	return -1;
}

#endif /* UBS_PRELOAD_H */

/* SPDX-License-Identifier: MIT */
/*
 * demote.c - turning a live UB connection back into plain TCP without
 * losing or reordering a byte (invariant 7), and the paths that need it:
 * exec (the new image may not have the library: environment stripped,
 * static, setuid, or simply another program), and stdio's fdopen (glibc
 * reads and writes a FILE's descriptor past any read/write hook).
 *
 * The side that demotes (ubt_chan_demote) stops producing and consuming
 * its rings at once and from then on is plain TCP: its peer re-sends over
 * the kernel socket what it had written that was never consumed, and
 * drains what the demoting side had written before reading the kernel
 * socket.  The peer notices the flag on its next call on the socket, or
 * is woken by the doorbells ubt_chan_demote rings when it sleeps.
 */
#include <dlfcn.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sock.h"

/* Has either side asked for demotion? */
bool sock_demote_pending(const struct sock *s)
{
	return s->have_chan &&
		(atomic_load_explicit(ubt_chan_demote_word(&s->ch, 0),
				      memory_order_acquire) ||
		 atomic_load_explicit(ubt_chan_demote_word(&s->ch, 1),
				      memory_order_acquire));
}

/* Send all of buf on the kernel socket, waiting for room. */
static int send_all(int fd, const char *buf, size_t n)
{
	while (n) {
		ssize_t w = ubs_real.send(fd, buf, n,
					  MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w > 0) {
			buf += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		{
			struct pollfd p = { .fd = fd, .events = POLLOUT };

			ubs_real.poll(&p, 1, 100);
		}
	}
	return 0;
}

void sock_resend_tx(struct sock *s, int fd)
{
	char buf[16384];
	ssize_t n;

	ubs_guard_enter();
	while ((n = ubt_stream_read(s->tx, buf, sizeof(buf), 0)) > 0)
		if (send_all(fd, buf, (size_t)n) < 0)
			break;
	ubs_guard_exit();
}

/*
 * Act on a demotion flag.  Called with a reference on s, not holding
 * its mutex.  Returns the state that now holds: SK_UB (nothing to do),
 * SK_DRAIN (reads first empty the ring, writes go to the kernel) or 0
 * (plain TCP: the entry is gone).
 */
int sock_demote_handle(struct sock *s, int fd)
{
	int me, peer, st;
	bool own, theirs;

	pthread_mutex_lock(&s->mu);
	st = atomic_load(&s->state);
	if (st != SK_UB && st != SK_DRAIN) {
		pthread_mutex_unlock(&s->mu);
		return st;
	}
	me = s->ch.side;
	peer = !me;
	own = atomic_load(ubt_chan_demote_word(&s->ch, me));
	theirs = atomic_load(ubt_chan_demote_word(&s->ch, peer));
	if (!own && !theirs) {
		pthread_mutex_unlock(&s->mu);
		return st;
	}
	sock_board_counted(s);  /* a client's end: before the resend */
	if (theirs && !s->resent) {
		/* The peer will not consume our ring: what it holds goes
		 * over the kernel socket, ahead of anything we write next. */
		sock_resend_tx(s, fd);
		s->resent = true;
	}
	if (!own && ubt_ring_readable(s->rx) > 0) {
		/* The peer's bytes in our ring come before its kernel ones. */
		atomic_store(&s->state, SK_DRAIN);
		pthread_mutex_unlock(&s->mu);
		return SK_DRAIN;
	}
	atomic_store(&s->state, 0);
	pthread_mutex_unlock(&s->mu);
	ubs_stats_add(UBS_STAT_FALLBACKS, 1);
	ubs_info("fd %d: connection demoted to TCP (%s)", fd,
		 own ? "this side" : "peer");
	sock_to_tcp(s, fd);
	return 0;
}

/* This process demotes s (an fd of it is fd).  Returns 0. */
int sock_demote(struct sock *s, int fd)
{
	int st = atomic_load(&s->state);

	if (st == SK_UNDECIDED &&
	    ubt_chan_decide(&s->ch, UBT_CHAN_TCP) == UBT_CHAN_TCP) {
		/* Nothing went over the channel: plain TCP at once. */
		pthread_mutex_lock(&s->mu);
		atomic_store(&s->state, 0);
		pthread_mutex_unlock(&s->mu);
		sock_to_tcp(s, fd);
		return 0;
	}
	if (st == SK_UNDECIDED)
		sock_promote(s);        /* the client's: its doorbell too */
	if (s->have_chan) {
		ubs_guard_enter();
		ubt_chan_demote(&s->ch);
		ubs_guard_exit();
	}
	sock_demote_handle(s, fd);
	return 0;
}

/* ---------------------------------------------------------------- exec */

/* Every UB connection that survives an exec (no FD_CLOEXEC) into an image
 * that will not have the library is demoted (exec.c keeps them when it
 * will); so is every one inherited by posix_spawn's child and fexecve's
 * image, which are not looked at. */
struct todo {
	struct sock *s[64];
	int fd[64];
	int n;
	bool all;               /* every UB connection, not only inherited */
};

static void collect_inherited(int fd, struct sock *s, void *arg)
{
	struct todo *t = arg;
	int st = atomic_load(&s->state), fl;

	if (st != SK_UB && st != SK_UNDECIDED && st != SK_DRAIN)
		return;
	if (t->n == 64)
		return;
	fl = t->all ? 0 : ubs_real.fcntl(fd, F_GETFD);
	if (fl < 0 || (fl & FD_CLOEXEC))
		return;
	for (int i = 0; i < t->n; i++)
		if (t->s[i] == s)
			return;
	__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
	t->s[t->n] = s;
	t->fd[t->n++] = fd;
}

/* Demote the inherited UB connections (all of them with all). */
static void demote_connections(bool all)
{
	struct todo t = { .all = all };
	int saved = errno;

	/* Collect under the table lock, act after it (sock_to_tcp takes
	 * it for writing); demoted ones leave the table, so repeat until a
	 * round finds fewer than fit. */
	do {
		t.n = 0;
		sock_for_each(collect_inherited, &t);
		for (int i = 0; i < t.n; i++) {
			sock_demote(t.s[i], t.fd[i]);
			sock_put(t.s[i]);
		}
	} while (t.n == 64);
	errno = saved;
}

void sock_demote_inherited(void)
{
	if (ubs_ready() && !ubs_guard)
		demote_connections(false);
}

static void exec_prepare(void)
{
	sock_demote_inherited();
}

/* Run an exec with the environment sock_exec_prepare chose; put things
 * back if it fails. */
#define EXEC_WITH(ne, keep_call, plain_call)				\
	do {								\
		int r_;							\
									\
		if (!(ne))						\
			return plain_call;				\
		r_ = keep_call;						\
		sock_exec_undo();					\
		return r_;						\
	} while (0)

/*
 * From now on this process keeps its connections on TCP (new ones stay
 * there, UB ones are demoted): it has something that moves bytes past
 * the library (an io_uring instance) or a seccomp filter that may forbid
 * what the library needs.
 */
void sock_go_tcp(const char *why)
{
	if (__atomic_exchange_n(&ubs_config.tcp_only, true, __ATOMIC_ACQ_REL))
		return;
	ubs_info("staying on TCP: %s", why);
	if (ubs_ready() && !ubs_guard)
		demote_connections(true);
}

UBS_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	char **ne = sock_exec_prepare(path, envp);

	EXEC_WITH(ne, ubs_real.execve(path, argv, ne),
		  ubs_real.execve(path, argv, envp));
}

UBS_EXPORT int execv(const char *path, char *const argv[])
{
	char **ne = sock_exec_prepare(path, environ);

	EXEC_WITH(ne, ubs_real.execve(path, argv, ne),
		  ubs_real.execv(path, argv));
}

UBS_EXPORT int execvp(const char *file, char *const argv[])
{
	char **ne = sock_exec_prepare_file(file, environ);

	EXEC_WITH(ne, ubs_real.execvpe(file, argv, ne),
		  ubs_real.execvp(file, argv));
}

UBS_EXPORT int execvpe(const char *file, char *const argv[],
		       char *const envp[])
{
	char **ne = sock_exec_prepare_file(file, envp);

	EXEC_WITH(ne, ubs_real.execvpe(file, argv, ne),
		  ubs_real.execvpe(file, argv, envp));
}

UBS_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
	exec_prepare();
	return ubs_real.fexecve(fd, argv, envp);
}

/* The execl family: gather the variadic list into argv (and envp). */
#define EXECL_ARGV(first, ap, argv, n)					\
	do {								\
		va_list c_;						\
		va_copy(c_, ap);					\
		n = 1;							\
		while (va_arg(c_, char *))				\
			n++;						\
		va_end(c_);						\
		argv = alloca(sizeof(char *) * (n + 1));		\
		argv[0] = (char *)(first);				\
		for (size_t i_ = 1; i_ <= n; i_++)			\
			argv[i_] = va_arg(ap, char *);			\
	} while (0)

UBS_EXPORT int execl(const char *path, const char *arg, ...)
{
	va_list ap;
	char **argv;
	size_t n;

	char **ne;

	va_start(ap, arg);
	EXECL_ARGV(arg, ap, argv, n);
	va_end(ap);
	ne = sock_exec_prepare(path, environ);
	EXEC_WITH(ne, ubs_real.execve(path, argv, ne),
		  ubs_real.execv(path, argv));
}

UBS_EXPORT int execlp(const char *file, const char *arg, ...)
{
	va_list ap;
	char **argv;
	size_t n;

	char **ne;

	va_start(ap, arg);
	EXECL_ARGV(arg, ap, argv, n);
	va_end(ap);
	ne = sock_exec_prepare_file(file, environ);
	EXEC_WITH(ne, ubs_real.execvpe(file, argv, ne),
		  ubs_real.execvp(file, argv));
}

UBS_EXPORT int execle(const char *path, const char *arg, ...)
{
	va_list ap;
	char **argv, **envp;
	size_t n;

	va_start(ap, arg);
	EXECL_ARGV(arg, ap, argv, n);
	char **ne;

	envp = va_arg(ap, char **);
	va_end(ap);
	ne = sock_exec_prepare(path, envp);
	EXEC_WITH(ne, ubs_real.execve(path, argv, ne),
		  ubs_real.execve(path, argv, envp));
}

UBS_EXPORT int posix_spawn(pid_t *pid, const char *path,
			   const posix_spawn_file_actions_t *fa,
			   const posix_spawnattr_t *attr, char *const argv[],
			   char *const envp[])
{
	exec_prepare();
	return ubs_real.posix_spawn(pid, path, fa, attr, argv, envp);
}

UBS_EXPORT int posix_spawnp(pid_t *pid, const char *file,
			    const posix_spawn_file_actions_t *fa,
			    const posix_spawnattr_t *attr, char *const argv[],
			    char *const envp[])
{
	exec_prepare();
	return ubs_real.posix_spawnp(pid, file, fa, attr, argv, envp);
}

/* --------------------------------------------------------------- stdio */

UBS_EXPORT FILE *fdopen(int fd, const char *mode)
{
	struct sock *s;

	if (ubs_ready() && !ubs_guard && (s = sock_get(fd))) {
		int st = atomic_load(&s->state);

		if (st == SK_UB || st == SK_UNDECIDED || st == SK_DRAIN)
			sock_demote(s, fd);
		sock_put(s);
	}
	return ubs_real.fdopen(fd, mode);
}

/* -------------------------------------------- io_uring, seccomp filters */

/* liburing's entry points: a ring reads and writes descriptors in the
 * kernel, past every hook. */
#define URING_FWD(ret, name, params, args)				\
	UBS_EXPORT ret name params					\
	{								\
		ret (*real) params = (ret (*) params)dlsym(RTLD_NEXT, #name); \
									\
		sock_go_tcp("the process uses io_uring");		\
		return real ? real args : -ENOSYS;			\
	}

struct io_uring;
struct io_uring_params;
int io_uring_queue_init(unsigned entries, struct io_uring *ring,
			unsigned flags);
int io_uring_queue_init_params(unsigned entries, struct io_uring *ring,
			       struct io_uring_params *p);
int io_uring_setup(unsigned entries, struct io_uring_params *p);

URING_FWD(int, io_uring_queue_init,
	  (unsigned entries, struct io_uring *ring, unsigned flags),
	  (entries, ring, flags))
URING_FWD(int, io_uring_queue_init_params,
	  (unsigned entries, struct io_uring *ring, struct io_uring_params *p),
	  (entries, ring, p))
URING_FWD(int, io_uring_setup,
	  (unsigned entries, struct io_uring_params *p), (entries, p))

UBS_EXPORT int prctl(int option, ...)
{
	unsigned long a[4];
	va_list ap;

	va_start(ap, option);
	for (int i = 0; i < 4; i++)
		a[i] = va_arg(ap, unsigned long);
	va_end(ap);
	if (option == PR_SET_SECCOMP)
		sock_go_tcp("the process installs a seccomp filter");
	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	return ubs_real.prctl(option, a[0], a[1], a[2], a[3]);
}

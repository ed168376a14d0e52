/* SPDX-License-Identifier: MIT */
/*
 * signal.c - the kernel's EINTR and SA_RESTART rules on UB connections.
 *
 * A blocking recv/send on a kernel socket that a signal handler
 * interrupts is restarted when the handler was installed with SA_RESTART
 * and the socket has no SO_RCVTIMEO/SO_SNDTIMEO, and fails with EINTR
 * otherwise; poll, select and epoll_wait always fail with EINTR.  The shim
 * waits for a UB connection in poll(), which the kernel never restarts
 * after a handler, so on its own it would always say EINTR.
 *
 * So sigaction (and signal, bsd_signal/ssignal, sysv_signal/__sysv_signal
 * and siginterrupt, which glibc implements with internal calls) install a
 * program's handler behind a trampoline.  The trampoline records, for its
 * thread, that a handler ran and whether it had SA_RESTART, then calls
 * the program's handler with the arguments the kernel gave (sig; and the
 * siginfo and context for an SA_SIGINFO handler).  The waits of io.c and
 * poll.c read that record (ubs_sig_mark, ubs_sig_restarts in sock.h).
 *
 * Everything else is the program's: sa_mask, SA_RESETHAND, SA_NODEFER,
 * SA_ONSTACK go to the kernel unchanged; SIG_IGN and SIG_DFL are installed
 * as they are (no trampoline); sigaction's old action is the program's
 * own handler and flags, never the trampoline.  The old action is read
 * from the kernel in the same call that sets the new one, so a disposition
 * changed behind our back (glibc's internal __sigaction, a raw syscall, a
 * SA_RESETHAND delivery) is reported as the kernel has it.  A handler
 * installed behind our back runs without the trampoline: the wait then
 * says EINTR, as before.
 *
 * A handler that runs while the thread sleeps in a wait of the shim runs
 * with the recursion guard lifted (ubs_sig_sleep): its own socket calls
 * (write() of a heartbeat to a UB connection) go through the shim, not
 * straight to the kernel socket, where the peer would never read them.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "sock.h"

UBS_TLS volatile uint32_t ubs_sig_seq;
UBS_TLS volatile bool ubs_sig_restart;
UBS_TLS volatile bool ubs_sig_sleep;
UBS_TLS _Atomic uint32_t ubs_sig_hit;

/* Exported by glibc, not declared by its headers under _GNU_SOURCE. */
int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);
sighandler_t bsd_signal(int sig, sighandler_t handler);

/* glibc's own, historical no-op for sysv_signal's flags. */
#ifndef SA_INTERRUPT
#define SA_INTERRUPT 0x20000000
#endif

/*
 * The program's handler of each signal, for the trampoline.  A seqlock:
 * writers (sigaction, serialised by wlock with every signal blocked) make
 * seq odd, store, make it even; the trampoline reads until it sees one
 * even value around its loads.
 */
struct slot {
	_Atomic uint32_t seq;
	_Atomic(void *) fn;             /* sa_handler / sa_sigaction */
	_Atomic int flags;              /* the program's sa_flags */
	bool active;                    /* the kernel has our trampoline
					 * (as far as we know; wlock) */
};

static struct slot slots[_NSIG];
static atomic_flag wlock = ATOMIC_FLAG_INIT;
static sigset_t intr_set;               /* siginterrupt(sig, 1); wlock */

typedef int (*sigaction_fn)(int, const struct sigaction *,
			    struct sigaction *);
static _Atomic(sigaction_fn) real_sigaction_p;

static sigaction_fn real_sigaction(void)
{
	sigaction_fn f = atomic_load_explicit(&real_sigaction_p,
					      memory_order_acquire);

	if (!f) {
		f = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
		atomic_store_explicit(&real_sigaction_p, f,
				      memory_order_release);
	}
	return f;
}

/* A fork while another thread was inside sigaction: the child has one
 * thread, and nobody to release the lock it inherited. */
static void sig_atfork_child(void)
{
	atomic_flag_clear_explicit(&wlock, memory_order_relaxed);
}

__attribute__((constructor))
static void sig_ctor(void)
{
	real_sigaction();       /* not in a handler, the first time */
	pthread_atfork(NULL, NULL, sig_atfork_child);
}

static void slot_read(int sig, void **fn, int *flags)
{
	struct slot *s = &slots[sig];
	uint32_t a, b;

	do {
		a = atomic_load_explicit(&s->seq, memory_order_acquire);
		*fn = atomic_load_explicit(&s->fn, memory_order_relaxed);
		*flags = atomic_load_explicit(&s->flags, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		b = atomic_load_explicit(&s->seq, memory_order_relaxed);
	} while ((a & 1) || a != b);
}

/* Under wlock. */
static void slot_write(int sig, void *fn, int flags)
{
	struct slot *s = &slots[sig];
	uint32_t q = atomic_load_explicit(&s->seq, memory_order_relaxed);

	atomic_store_explicit(&s->seq, q + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&s->fn, fn, memory_order_relaxed);
	atomic_store_explicit(&s->flags, flags, memory_order_relaxed);
	atomic_store_explicit(&s->seq, q + 2, memory_order_release);
}

/* Every program handler installed through us runs here. */
static void trampoline(int sig, siginfo_t *info, void *uc)
{
	bool guard = ubs_guard, sleep = ubs_sig_sleep;
	void *fn;
	int flags;

	if (sig <= 0 || sig >= _NSIG)
		return;
	slot_read(sig, &fn, &flags);
	ubs_sig_restart = flags & SA_RESTART;
	ubs_sig_seq++;
	atomic_store_explicit(&ubs_sig_hit, 1, memory_order_relaxed);
	atomic_signal_fence(memory_order_seq_cst);
	if (fn == (void *)SIG_DFL || fn == (void *)SIG_IGN)
		return;         /* not reached: the kernel had no trampoline */
	if (sleep) {
		/* Interrupted in a shim wait, which holds nothing: the
		 * handler's calls go through the shim. */
		ubs_sig_sleep = false;
		ubs_guard = false;
	}
	if (flags & SA_SIGINFO)
		((void (*)(int, siginfo_t *, void *))fn)(sig, info, uc);
	else
		((void (*)(int))fn)(sig);
	if (sleep) {
		ubs_guard = guard;
		ubs_sig_sleep = true;
	}
}

/* Should signals go through the trampoline at all? */
static bool sig_on(void)
{
	return ubs_ready() && !ubs_config.disabled;
}

static void wlock_take(sigset_t *saved)
{
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, saved);
	while (atomic_flag_test_and_set_explicit(&wlock, memory_order_acquire))
		;
}

static void wlock_drop(const sigset_t *saved)
{
	atomic_flag_clear_explicit(&wlock, memory_order_release);
	pthread_sigmask(SIG_SETMASK, saved, NULL);
}

/* The kernel's old action *o, as the program installed it. */
static void user_view(int sig, struct sigaction *o, void *fn, int flags,
		      bool active)
{
	if (o->sa_sigaction == trampoline) {
		o->sa_sigaction = (void (*)(int, siginfo_t *, void *))fn;
		o->sa_flags = (o->sa_flags & ~SA_SIGINFO) | (flags & SA_SIGINFO);
	} else if (o->sa_handler == SIG_DFL && active &&
		   (flags & SA_RESETHAND)) {
		/* The kernel reset our trampoline at a delivery: the flags
		 * are still the ones we gave it. */
		o->sa_flags = (o->sa_flags & ~SA_SIGINFO) | (flags & SA_SIGINFO);
	}
	(void)sig;
}

/* sigaction, with *intr (if not NULL) updated under the same lock. */
static int do_sigaction(int sig, const struct sigaction *act,
			struct sigaction *old, const int *intr)
{
	sigaction_fn real = real_sigaction();
	struct sigaction k;
	void *pfn, *h = NULL;
	int pflags, r, e;
	bool pactive, wrapped = false;
	sigset_t saved;

	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	if (sig < 1 || sig >= _NSIG || !sig_on())
		return real(sig, act, old);
	wlock_take(&saved);
	slot_read(sig, &pfn, &pflags);
	pactive = slots[sig].active;
	if (act) {              /* act may be old: read it all first */
		k = *act;
		h = (void *)k.sa_handler;
		if (h != (void *)SIG_DFL && h != (void *)SIG_IGN &&
		    h != (void *)trampoline) {
			slot_write(sig, h, k.sa_flags);
			k.sa_sigaction = trampoline;
			k.sa_flags |= SA_SIGINFO;
			wrapped = true;
		}
	}
	r = real(sig, act ? &k : NULL, old);
	e = errno;
	if (r == 0 && act) {
		if (h != (void *)trampoline)
			slots[sig].active = wrapped;
		if (intr) {
			if (*intr)
				sigaddset(&intr_set, sig);
			else
				sigdelset(&intr_set, sig);
		}
	} else if (r < 0 && wrapped) {
		slot_write(sig, pfn, pflags);   /* refused: as it was */
	}
	if (r == 0 && old)
		user_view(sig, old, pfn, pflags, pactive);
	wlock_drop(&saved);
	errno = e;
	return r;
}

UBS_EXPORT int sigaction(int sig, const struct sigaction *act,
			 struct sigaction *old)
{
	return do_sigaction(sig, act, old, NULL);
}

UBS_EXPORT int __sigaction(int sig, const struct sigaction *act,
			   struct sigaction *old)
{
	return do_sigaction(sig, act, old, NULL);
}

/* glibc's signal(): BSD semantics, SA_RESTART unless siginterrupt(sig, 1). */
UBS_EXPORT sighandler_t signal(int sig, sighandler_t handler)
{
	struct sigaction act, old;
	bool intr;
	sigset_t saved;

	if (handler == SIG_ERR || sig < 1 || sig >= _NSIG) {
		errno = EINVAL;
		return SIG_ERR;
	}
	memset(&act, 0, sizeof(act));
	act.sa_handler = handler;
	sigemptyset(&act.sa_mask);
	sigaddset(&act.sa_mask, sig);
	wlock_take(&saved);
	intr = sigismember(&intr_set, sig) == 1;
	wlock_drop(&saved);
	act.sa_flags = intr ? 0 : SA_RESTART;
	if (do_sigaction(sig, &act, &old, NULL) < 0)
		return SIG_ERR;
	return old.sa_handler;
}

UBS_EXPORT sighandler_t bsd_signal(int sig, sighandler_t handler)
{
	return signal(sig, handler);
}

UBS_EXPORT sighandler_t ssignal(int sig, sighandler_t handler)
{
	return signal(sig, handler);
}

/* glibc's sysv_signal(): one-shot, not blocked in its handler, no restart. */
UBS_EXPORT sighandler_t __sysv_signal(int sig, sighandler_t handler)
{
	struct sigaction act, old;

	if (handler == SIG_ERR || sig < 1 || sig >= _NSIG) {
		errno = EINVAL;
		return SIG_ERR;
	}
	memset(&act, 0, sizeof(act));
	act.sa_handler = handler;
	sigemptyset(&act.sa_mask);
	act.sa_flags = (int)(SA_ONESHOT | SA_NOMASK | SA_INTERRUPT);
	act.sa_flags &= ~SA_RESTART;
	if (do_sigaction(sig, &act, &old, NULL) < 0)
		return SIG_ERR;
	return old.sa_handler;
}

UBS_EXPORT sighandler_t sysv_signal(int sig, sighandler_t handler)
{
	return __sysv_signal(sig, handler);
}

/* glibc's siginterrupt(): toggles SA_RESTART of the current action and
 * what signal() will give the signal from now on. */
UBS_EXPORT int siginterrupt(int sig, int interrupt)
{
	struct sigaction act;
	int on = interrupt != 0;

	if (do_sigaction(sig, NULL, &act, NULL) < 0)
		return -1;
	if (on)
		act.sa_flags &= ~SA_RESTART;
	else
		act.sa_flags |= SA_RESTART;
	return do_sigaction(sig, &act, NULL, &on) < 0 ? -1 : 0;
}

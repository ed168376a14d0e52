/* SPDX-License-Identifier: MIT */
/*
 * poll.c - readiness over any mix of UB and kernel fds: poll, ppoll,
 * select, pselect, and epoll emulated for UB connections.
 *
 * A UB connection's readiness lives in its rings, which the kernel does
 * not see, so its registrations are kept here (struct ep_reg) instead of
 * in the kernel epoll set; kernel fds stay in the kernel, as libvma and
 * Onload do.  A wait first collects UB readiness (no syscall) and the
 * kernel's (timeout 0), then spins for the sockets' budget, then sleeps:
 * it arms the doorbells of the UB rings it waits on (so a peer rings this
 * side's eventfd only when somebody sleeps), and sleeps in one kernel
 * wait over the kernel fds, those eventfds and the UB connections'
 * kernel sockets (whose FIN/RST tells that a peer died).
 *
 * epoll looks only at registrations that may have changed: peers post
 * the token of an endpoint whose rings moved to this process's
 * notification page (ubtransport/note.c) and ring its doorbell only when
 * a waiter is registered asleep there; a wait takes the posted tokens,
 * makes the registrations of those sockets candidates of their sets, and
 * checks the candidates only (plus level-triggered ones still ready, and
 * those of channels inherited over fork, which post to the parent's page
 * and are armed one by one as before).  O(ready), not O(registrations).
 * poll and select take their fd list each call: they arm each ring.
 */
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "sock.h"
#include "ctl.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen);

#define POLL_SMALL 32    /* fds of a poll/select handled on the stack */

/* Is s a connection whose readiness is computed here? */
static bool emulated(struct sock *s)
{
	int st = atomic_load(&s->state);

	return st == SK_UB || st == SK_UNDECIDED || st == SK_DRAIN;
}

/* Is s going back to TCP, with nothing of the peer's left in its ring to
 * read first?  The next sock_demote_handle settles it; until then its
 * readiness is not the kernel's. */
static bool settling(struct sock *s)
{
	int st = atomic_load(&s->state);

	return (st == SK_UB && sock_demote_pending(s)) ||
		(st == SK_DRAIN && ubt_ring_readable(s->rx) <= 0);
}

uint32_t sock_ready(struct sock *s, uint32_t want)
{
	uint32_t ev = 0;
	bool fin, pcl;

	if (atomic_load(&s->state) == SK_UNDECIDED && !sock_promote(s)) {
		/* Bytes or FIN on the kernel socket settle it on the
		 * next read.  An epoll set watching the kernel socket
		 * probes it on its edges; otherwise a syscall, but only
		 * until it is decided. */
		if (ubt_ring_readable(s->rx) > 0 || atomic_load(&s->kin) ||
		    atomic_load(&s->peer_fin) ||
		    (!atomic_load(&s->watched) &&
		     sock_probe_kernel(s, s->fd) != 0))
			ev |= EPOLLIN | EPOLLRDNORM;
		if ((want & (EPOLLRDHUP | EPOLLHUP)) &&
		    (atomic_load(&s->kin) || atomic_load(&s->peer_fin))) {
			/* A plain client (it wrote, or closed, on the kernel
			 * socket): TCP, whose FIN and reset only the kernel
			 * knows; the next read settles it. */
			struct pollfd p = { .fd = s->fd, .events = POLLIN |
					    POLLRDHUP };

			if (ubs_real.poll(&p, 1, 0) > 0)
				ev |= (uint32_t)p.revents &
					(EPOLLRDHUP | EPOLLHUP | EPOLLERR);
		}
		ev |= EPOLLOUT | EPOLLWRNORM;
		return ev & (want | EPOLLHUP | EPOLLERR);
	}
	if (atomic_load(&s->state) == SK_DRAIN || sock_demote_pending(s)) {
		/* Going back to TCP: the next read or write settles it. */
		ev = EPOLLIN | EPOLLRDNORM | EPOLLOUT | EPOLLWRNORM;
		return ev & (want | EPOLLHUP | EPOLLERR);
	}
	fin = atomic_load(&s->peer_fin);
	pcl = ubt_ring_pclosed(s->rx);
	if (fin || pcl || ubt_ring_cclosed(s->tx))
		sock_update_reset(s);
	if (ubt_ring_readable(s->rx) != 0 || pcl || fin || s->shut_rd ||
	    s->closed)
		ev |= EPOLLIN | EPOLLRDNORM;
	if (pcl || fin || s->shut_rd || s->closed)
		ev |= EPOLLRDHUP;
	if (ubt_ring_writable(s->tx) > 0 || sock_peer_gone(s) || s->shut_wr ||
	    s->closed)
		ev |= EPOLLOUT | EPOLLWRNORM;
	if (((pcl || fin) && s->shut_wr) || s->closed)
		ev |= EPOLLHUP;
	if (s->so_error)
		ev |= EPOLLERR;
	return ev & (want | EPOLLHUP | EPOLLERR);
}

/* Doorbells of s for a wait on want: armed[0] data, armed[1] space. */
struct arm {
	struct sock *s;
	uint32_t key[2];
	bool on[2];
};

static void arm(struct arm *a, struct sock *s, uint32_t want)
{
	a->s = s;
	a->on[0] = a->on[1] = false;
	if (want & (EPOLLIN | EPOLLRDNORM | EPOLLRDHUP)) {
		a->key[0] = ubt_ring_arm(s->rx, 0);
		a->on[0] = true;
	}
	if ((want & (EPOLLOUT | EPOLLWRNORM)) &&
	    atomic_load(&s->state) == SK_UB) {
		a->key[1] = ubt_ring_arm(s->tx, 1);
		a->on[1] = true;
	}
}

/* Returns how many of a's doorbells were rung for it. */
static int disarm(struct arm *a)
{
	int n = 0;

	if (a->on[0])
		n += ubt_ring_disarm(a->s->rx, 0, a->key[0]);
	if (a->on[1])
		n += ubt_ring_disarm(a->s->tx, 1, a->key[1]);
	return n;
}

/*
 * A doorbell is the process's: a sleeper may be woken by tokens that
 * belong to other sleepers (other threads, a forked process sharing it).
 * They take theirs soon: until then, yield (then sleep briefly) instead
 * of spinning on the readable eventfd; tokens nobody takes for
 * FOREIGN_STRAY_MS are strays (their sleeper was killed) and one is
 * discarded.  Not sooner: a token taken from a sleeper that is alive but
 * has not run yet (a loaded machine) is a lost wake-up, since its poll
 * finds the eventfd empty and sleeps on.
 */
#define FOREIGN_STRAY_MS 1000

struct foreign {
	unsigned n;
	uint64_t t0;
};

static void foreign_wake(struct foreign *f, int efd)
{
	if (f->n++ == 0)
		f->t0 = now_ns();
	if (now_ns() - f->t0 < FOREIGN_STRAY_MS * 1000000ull) {
		/* A few yields, then short sleeps: the owner of the token
		 * may be waiting for this very CPU. */
		if (f->n < 16) {
			sched_yield();
		} else {
			struct timespec ts = { 0, 200000 };

			nanosleep(&ts, NULL);
		}
	} else {
		uint64_t v;

		if (ubs_real.read(efd, &v, sizeof(v)) == sizeof(v))
			ubs_dbg("stray doorbell token discarded");
		f->n = 0;
	}
}

/*
 * Adaptive spin, per thread (a thread runs one event loop): a spin that
 * ends with something ready lets the next one spin longer, one that
 * ends empty-handed halves it, down to 1/64 of the policy's budget.  So
 * a process with more busy threads than CPUs, where spinning only delays
 * the thread that would make progress, stops spinning.
 */
static UBS_TLS int64_t spin_cur = -1;

static int64_t spin_budget(int64_t max)
{
	if (spin_cur < 0 || spin_cur > max)
		spin_cur = max;
	return spin_cur;
}

/* A wait that slept but was answered within the budget: a spin that
 * long would have caught it (see ubtransport/wait.c db_wait). */
static void spin_after_sleep(uint64_t waited_ns, int64_t max)
{
	int64_t want = (int64_t)waited_ns * 2;

	if (waited_ns >= (uint64_t)max)
		return;
	if (want > max)
		want = max;
	if (spin_cur < want)
		spin_cur = want;
}

static void spin_result(bool hit, int64_t max)
{
	if (hit) {
		spin_cur = spin_cur * 2 + 1000;
		if (spin_cur > max)
			spin_cur = max;
	} else {
		spin_cur /= 2;
		if (spin_cur < max / 64)
			spin_cur = max / 64;
	}
}

/* Spin budget of a wait: the largest of its sockets'. */
static int64_t spin_of(struct sock *s, int64_t cur)
{
	return atomic_load(&s->state) == SK_UB && s->spin_ns > cur ?
		s->spin_ns : cur;
}

/* Remaining ms until deadline (0: none left; -1: no deadline). */
static int left_ms(uint64_t deadline)
{
	uint64_t now;

	if (!deadline)
		return -1;
	now = now_ns();
	return now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
}

/* ----------------------------------------------------------- poll */

/*
 * poll over fds, some of them UB (socks[i] non-NULL).  timeout_ms -1 is
 * forever.  Returns the count of fds with events, or -errno.
 */
static int ub_poll(struct pollfd *fds, nfds_t n, struct sock **socks,
		   int timeout_ms, const sigset_t *mask)
{
	uint64_t deadline = timeout_ms > 0 ?
		now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
	int64_t budget = 0;
	nfds_t nk = 0, nu = 0;
	struct pollfd *kp, kp_small[POLL_SMALL * 2];
	struct arm *arms, arms_small[POLL_SMALL];
	struct foreign fw = { 0, 0 };
	uint32_t mark = ubs_sig_mark();
	int ready, r, claimed, foreign_efd;

	for (nfds_t i = 0; i < n; i++) {
		if (socks[i]) {
			nu++;
			budget = spin_of(socks[i], budget);
		} else {
			nk++;
		}
	}
	/* Kernel fds, then per UB sock its eventfd and its kernel socket;
	 * on the stack for the usual few fds (no allocation per call). */
	kp = nk + 2 * nu + 1 <= POLL_SMALL * 2 ? kp_small :
		calloc(nk + 2 * nu + 1, sizeof(*kp));
	arms = nu + 1 <= POLL_SMALL ? arms_small : calloc(nu + 1, sizeof(*arms));
	if (!kp || !arms) {
		if (kp != kp_small)
			free(kp);
		if (arms != arms_small)
			free(arms);
		return -ENOMEM;
	}
	for (bool first = true;; first = false) {
		nfds_t k = 0, u = 0;
		uint64_t spin_end;
		/* Posts nobody took: due ones go TCP (board.c). */
		int board_ms = sock_board_sweep();
		bool trim = false, slept = false, again = false;

		ready = 0;
		/* A connection going back to TCP is settled here, not
		 * reported ready: once it is plain TCP the kernel says
		 * when it is readable (a read right after a spurious
		 * POLLIN would say EAGAIN, which programs that trust poll
		 * take for an error).  One whose ring still holds the
		 * peer's bytes stays emulated (SK_DRAIN) until they are
		 * read. */
		for (nfds_t i = 0; i < n; i++)
			if (socks[i] && settling(socks[i]))
				sock_demote_handle(socks[i], fds[i].fd);
		/* One kernel poll, no wait: the kernel fds, and the kernel
		 * sockets of UB connections (a FIN there is a dead peer). */
		for (nfds_t i = 0; i < n; i++) {
			struct sock *s = socks[i];

			if (!s || !emulated(s)) {
				kp[k++] = fds[i];
			} else if (!atomic_load(&s->peer_fin) &&
				   !sock_demote_pending(s)) {
				kp[k].fd = fds[i].fd;
				kp[k++].events = POLLIN | POLLRDHUP;
			}
		}
		if (k) {
			r = ubs_real.poll(kp, k, 0);
			if (r < 0) {
				ready = -errno;
				break;
			}
		}
		k = 0;
		for (nfds_t i = 0; i < n; i++) {
			struct sock *s = socks[i];

			fds[i].revents = 0;
			if (!s || !emulated(s)) {
				fds[i].revents = kp[k++].revents;
			} else {
				if (!atomic_load(&s->peer_fin) &&
				    !sock_demote_pending(s) &&
				    kp[k++].revents)
					sock_probe_kernel(s, fds[i].fd);
				fds[i].revents = (short)sock_ready(s,
					(uint32_t)(uint16_t)fds[i].events);
				again |= settling(s);
			}
			ready += fds[i].revents != 0;
		}
		if (again)
			continue;       /* demoted meanwhile: settle, look again */
		if (ready || timeout_ms == 0 || (!first && left_ms(deadline) == 0))
			break;
		/* Spin on the rings only: kernel fds wait for the sleep. */
		spin_end = now_ns() + (uint64_t)spin_budget(budget);
		while (budget && now_ns() < spin_end && !ready &&
		       !ubs_sig_since(mark)) {
			for (nfds_t i = 0; i < n; i++)
				if (socks[i] && emulated(socks[i]) &&
				    sock_ready(socks[i], (uint16_t)fds[i].events))
					ready = 1;
			for (int j = 0; j < 32 && !ready; j++)
				__builtin_ia32_pause();
		}
		if (budget)
			spin_result(ready, budget);
		if (ready)
			continue;       /* collect properly */
		if (ubs_sig_since(mark)) {
			ready = -EINTR; /* a handler ran: poll is never
					 * restarted */
			break;
		}
		/* Sleep. */
		k = 0;
		for (nfds_t i = 0; i < n; i++) {
			struct sock *s = socks[i];

			if (!s || !emulated(s)) {
				kp[k++] = fds[i];
				continue;
			}
			arm(&arms[u++], s, (uint16_t)fds[i].events);
			if (sock_ready(s, (uint16_t)fds[i].events))
				ready = 1;
			kp[k].fd = s->ch.efd[s->ch.side];
			kp[k++].events = POLLIN;
			kp[k].fd = atomic_load(&s->peer_fin) ||
				sock_demote_pending(s) ? -1 : fds[i].fd;
			kp[k++].events = POLLIN | POLLRDHUP;
		}
		if (!ready) {
			struct timespec ts, *tsp = NULL;
			int lm = timeout_ms < 0 ? -1 : left_ms(deadline);

			for (nfds_t i = 0; i < n; i++)
				if (socks[i] && emulated(socks[i]))
					trim |= sock_trim_idle(socks[i]);
			if (trim && (lm < 0 || lm > UBS_TRIM_IDLE_MS))
				lm = UBS_TRIM_IDLE_MS;
			else
				trim = false;
			if (board_ms >= 0 && (lm < 0 || lm > board_ms)) {
				lm = board_ms ? board_ms : 1;
				trim = false;
			}
			if (lm >= 0) {
				ts.tv_sec = lm / 1000;
				ts.tv_nsec = (long)(lm % 1000) * 1000000;
				tsp = &ts;
			}
			ubs_sig_sleep = true;
			r = ubs_real.ppoll(kp, k, tsp, mask);
			ubs_sig_sleep = false;
			if (r < 0)
				ready = -errno;
			else if (r > 0)
				trim = false;
			slept = r > 0;
		}
		claimed = 0;
		for (nfds_t j = 0; j < u; j++)
			claimed += disarm(&arms[j]);
		if (ready < 0)
			break;
		/* Learn what the kernel sockets of UB connections said. */
		k = 0;
		foreign_efd = -1;
		for (nfds_t i = 0; i < n; i++) {
			if (!socks[i] || !emulated(socks[i])) {
				if (kp[k].revents)
					claimed++;      /* a kernel fd woke us */
				k++;
				continue;
			}
			if (kp[k].revents)
				foreign_efd = kp[k].fd;
			if (kp[k + 1].fd >= 0 && kp[k + 1].revents) {
				sock_probe_kernel(socks[i], fds[i].fd);
				claimed++;
			}
			k += 2;
		}
		if (slept && !claimed && foreign_efd >= 0)
			foreign_wake(&fw, foreign_efd);
		ready = 0;
		if (trim) {
			/* A quiet second: give idle rings' pages back. */
			for (nfds_t i = 0; i < n; i++)
				if (socks[i] && emulated(socks[i]))
					sock_trim_idle(socks[i]);
			continue;
		}
		if (timeout_ms > 0 && left_ms(deadline) == 0)
			timeout_ms = 0;         /* one last collection */
	}
	if (kp != kp_small)
		free(kp);
	if (arms != arms_small)
		free(arms);
	return ready;
}

/* Socks of the fds in a poll set, or NULL when none is emulated. */
static struct sock **poll_socks(struct pollfd *fds, nfds_t n,
				 struct sock **small)
{
	struct sock **socks = NULL;
	bool any = false;

	for (nfds_t i = 0; i < n; i++)
		if (sock_slot_used(fds[i].fd))
			any = true;
	if (!any)
		return NULL;
	socks = n <= POLL_SMALL ? small : calloc(n, sizeof(*socks));
	if (!socks)
		return NULL;
	any = false;
	for (nfds_t i = 0; i < n; i++) {
		struct sock *s = sock_get(fds[i].fd);

		if (s && atomic_load(&s->state) == SK_CONNECTING) {
			sock_settle_connect(s, fds[i].fd, false);
		}
		if (s && atomic_load(&s->state) == SK_LISTEN)
			sock_accepting(s, fds[i].fd);   /* once: see socket.c */
		if (s && !emulated(s)) {
			sock_put(s);
			s = NULL;
		}
		socks[i] = s;
		any |= s != NULL;
	}
	if (!any) {
		if (socks != small)
			free(socks);
		return NULL;
	}
	return socks;
}

static void put_socks(struct sock **socks, nfds_t n, struct sock **small)
{
	for (nfds_t i = 0; i < n; i++)
		sock_put(socks[i]);
	if (socks != small)
		free(socks);
}

static int do_poll(struct pollfd *fds, nfds_t n, int timeout_ms,
		   const sigset_t *mask, bool is_ppoll,
		   const struct timespec *ts)
{
	struct sock **socks, *small[POLL_SMALL];
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (__builtin_expect(ubs_listen_pending, 0) && !ubs_guard)
		sock_relisten_now();
	if (ubs_guard)
		goto kernel;
	ubs_guard_enter();
	socks = poll_socks(fds, n, small);
	if (!socks) {
		ubs_guard_exit();
		goto kernel;
	}
	r = ub_poll(fds, n, socks, timeout_ms, mask);
	put_socks(socks, n, small);
	ubs_guard_exit();
	return r < 0 ? ubs_fail(r) : r;
kernel:
	return is_ppoll ? ubs_real.ppoll(fds, n, ts, mask) :
		ubs_real.poll(fds, n, timeout_ms);
}

UBS_EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout)
{
	return do_poll(fds, n, timeout < 0 ? -1 : timeout, NULL, false, NULL);
}

UBS_EXPORT int __poll_chk(struct pollfd *fds, nfds_t n, int timeout,
			  size_t fdslen)
{
	if (fdslen / sizeof(*fds) < n)
		__builtin_trap();
	return poll(fds, n, timeout);
}

int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts,
		const sigset_t *mask, size_t fdslen);

static int ts_ms(const struct timespec *ts)
{
	if (!ts)
		return -1;
	if (ts->tv_sec > INT32_MAX / 1000 - 1)
		return INT32_MAX;
	return (int)(ts->tv_sec * 1000 + (ts->tv_nsec + 999999) / 1000000);
}

UBS_EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts,
		     const sigset_t *mask)
{
	return do_poll(fds, n, ts_ms(ts), mask, true, ts);
}

UBS_EXPORT int __ppoll_chk(struct pollfd *fds, nfds_t n,
			   const struct timespec *ts, const sigset_t *mask,
			   size_t fdslen)
{
	if (fdslen / sizeof(*fds) < n)
		__builtin_trap();
	return ppoll(fds, n, ts, mask);
}

/* ---------------------------------------------------------- select */

static int do_select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex,
		     int timeout_ms, const sigset_t *mask)
{
	struct pollfd *p;
	struct sock **socks, *small[POLL_SMALL];
	int n = 0, r, cnt = 0;

	for (int fd = 0; fd < nfds && fd < FD_SETSIZE; fd++)
		if ((rd && FD_ISSET(fd, rd)) || (wr && FD_ISSET(fd, wr)) ||
		    (ex && FD_ISSET(fd, ex)))
			n++;
	p = calloc((size_t)n + 1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	n = 0;
	for (int fd = 0; fd < nfds && fd < FD_SETSIZE; fd++) {
		short ev = 0;

		if (rd && FD_ISSET(fd, rd))
			ev |= POLLIN;
		if (wr && FD_ISSET(fd, wr))
			ev |= POLLOUT;
		if (ex && FD_ISSET(fd, ex))
			ev |= POLLPRI;
		if (ev) {
			p[n].fd = fd;
			p[n++].events = ev;
		}
	}
	socks = poll_socks(p, (nfds_t)n, small);
	if (!socks) {
		free(p);
		return 1 << 30;         /* not ours after all */
	}
	r = ub_poll(p, (nfds_t)n, socks, timeout_ms, mask);
	put_socks(socks, (nfds_t)n, small);
	if (r < 0) {
		free(p);
		return r;
	}
	for (int i = 0; i < n; i++) {
		int fd = p[i].fd;
		short re = p[i].revents;

		if (re & POLLNVAL) {
			free(p);
			return -EBADF;
		}
		if (rd && FD_ISSET(fd, rd) && !(re & (POLLIN | POLLHUP | POLLERR)))
			FD_CLR(fd, rd);
		else if (rd && FD_ISSET(fd, rd))
			cnt++;
		if (wr && FD_ISSET(fd, wr) && !(re & (POLLOUT | POLLERR)))
			FD_CLR(fd, wr);
		else if (wr && FD_ISSET(fd, wr))
			cnt++;
		if (ex && FD_ISSET(fd, ex) && !(re & POLLPRI))
			FD_CLR(fd, ex);
		else if (ex && FD_ISSET(fd, ex))
			cnt++;
	}
	free(p);
	return cnt;
}

static bool select_has_ub(int nfds, fd_set *rd, fd_set *wr, fd_set *ex)
{
	for (int fd = 0; fd < nfds && fd < FD_SETSIZE; fd++)
		if (((rd && FD_ISSET(fd, rd)) || (wr && FD_ISSET(fd, wr)) ||
		     (ex && FD_ISSET(fd, ex))) && sock_slot_used(fd))
			return true;
	return false;
}

UBS_EXPORT int select(int nfds, fd_set *rd, fd_set *wr, fd_set *ex,
		      struct timeval *tv)
{
	uint64_t t0;
	int r, ms;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (__builtin_expect(ubs_listen_pending, 0) && !ubs_guard)
		sock_relisten_now();
	if (ubs_guard || nfds < 0 || !select_has_ub(nfds, rd, wr, ex))
		return ubs_real.select(nfds, rd, wr, ex, tv);
	if (tv && (tv->tv_sec < 0 || tv->tv_usec < 0))
		return ubs_fail(-EINVAL);
	ms = !tv ? -1 : tv->tv_sec > INT32_MAX / 1000 - 1 ? INT32_MAX :
		(int)(tv->tv_sec * 1000 + (tv->tv_usec + 999) / 1000);
	t0 = now_ns();
	ubs_guard_enter();
	r = do_select(nfds, rd, wr, ex, ms, NULL);
	ubs_guard_exit();
	if (r == 1 << 30)
		return ubs_real.select(nfds, rd, wr, ex, tv);
	if (tv) {       /* Linux reports the time left */
		uint64_t el = (now_ns() - t0) / 1000, all =
			(uint64_t)tv->tv_sec * 1000000 + (uint64_t)tv->tv_usec;

		all = el >= all ? 0 : all - el;
		tv->tv_sec = (time_t)(all / 1000000);
		tv->tv_usec = (suseconds_t)(all % 1000000);
	}
	return r < 0 ? ubs_fail(r) : r;
}

UBS_EXPORT int pselect(int nfds, fd_set *rd, fd_set *wr, fd_set *ex,
		       const struct timespec *ts, const sigset_t *mask)
{
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (ubs_guard || nfds < 0 || !select_has_ub(nfds, rd, wr, ex))
		return ubs_real.pselect(nfds, rd, wr, ex, ts, mask);
	ubs_guard_enter();
	r = do_select(nfds, rd, wr, ex, ts_ms(ts), mask);
	ubs_guard_exit();
	if (r == 1 << 30)
		return ubs_real.pselect(nfds, rd, wr, ex, ts, mask);
	return r < 0 ? ubs_fail(r) : r;
}

/* ----------------------------------------------------------- epoll */

struct ep_set;

struct ep_reg {
	struct ep_reg *next;
	struct ep_set *set;
	struct ep_reg *snext;           /* its sock's list (note lock) */
	struct ep_reg *cprev, *cnext;   /* its set's candidates (note lock) */
	bool cand;                      /* in the candidate list */
	bool noted;                     /* its sock posts to this process's
					 * page: a candidate only when posted */
	int fd;
	struct sock *s;                 /* one ref */
	uint32_t events;
	epoll_data_t data;
	bool disabled;                  /* EPOLLONESHOT fired */
	uint32_t last;                  /* EPOLLET: mask last reported */
	uint64_t et_head, et_tail;      /* EPOLLET: ring positions seen */
};

/* A sock whose eventfd and kernel socket are in a set's inner epoll.
 * Membership outlives its registrations (programs DEL and ADD again all
 * the time) and ends when the sock does. */
struct ep_member {
	struct sock *s;
	int fd;
};

#define EP_DBS 8

struct ep_set {
	struct ep_set *next;
	int epfd;
	int inner;                      /* our epoll: epfd + UB wake fds */
	struct ep_member *mem;
	int nmem, capmem;
	pthread_mutex_t mu;
	struct ep_reg *regs;
	int nregs;
	int dbs[EP_DBS];                /* doorbells in the inner epoll */
	int ndbs;
	struct ep_reg *trim_cur;        /* next reg to look at for trimming */
	/* Note lock: */
	struct ep_reg *cand_head, *cand_tail;
	int ncand;
	int waiting;                    /* threads between arm and disarm */
	/* e->mu: */
	int64_t budget;                 /* spin: the largest seen */
	int note_efd;                   /* the page's eventfd, once in inner */
	bool trim_due;                  /* rings moved since the last pass */
	uint64_t trim_pass_ns;          /* next pass over the whole set */
};

static pthread_mutex_t ep_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ep_set *ep_sets;
static int ep_nregs;                    /* over all sets (ep_lock) */

/*
 * The notification side (note lock): this process's page, the table of
 * tokens (token -> sock), each sock's registrations over all sets, and
 * each set's candidate list.  Lock order: ep_lock -> e->mu -> note lock;
 * a collection holds the note lock while it asks sock_ready (which may
 * take the sock's mutex, as it did under e->mu before); nothing takes
 * the note lock with a sock mutex or the control lock held.
 */
static pthread_mutex_t nt_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ubt_note *nt_note;        /* this process's page, or NULL */
static struct sock **nt_tab;            /* by token; [0] unused */
static uint32_t *nt_free;               /* tokens given back */
static uint32_t nt_cap, nt_hi, nt_nfree;
static bool nt_kick;                    /* wake the page's sleepers */
static UBS_TLS struct ep_set *tl_set;   /* the set this thread waits on */

/* This process's page (made with its doorbell on first need); not with
 * any set lock held (it may take the control lock). */
static struct ubt_note *nt_note_get(void)
{
	struct ubt_note *n = __atomic_load_n(&nt_note, __ATOMIC_ACQUIRE);

	if (!n) {
		n = ubs_ctl_note();
		__atomic_store_n(&nt_note, n, __ATOMIC_RELEASE);
	}
	return n;
}

/* Unlock; then wake the page's sleepers if a candidate was given to a
 * set some other thread sleeps on. */
static void nt_unlock(void)
{
	bool kick = nt_kick;
	struct ubt_note *n = nt_note;

	nt_kick = false;
	pthread_mutex_unlock(&nt_mu);
	if (kick && n)
		ubt_note_wake(n);
}

static void cand_add(struct ep_reg *r)
{
	struct ep_set *e = r->set;

	if (r->cand)
		return;
	r->cand = true;
	r->cnext = NULL;
	r->cprev = e->cand_tail;
	if (e->cand_tail)
		e->cand_tail->cnext = r;
	else
		e->cand_head = r;
	e->cand_tail = r;
	e->ncand++;
	if (e->waiting > (tl_set == e ? 1 : 0))
		nt_kick = true;
}

static void cand_del(struct ep_reg *r)
{
	struct ep_set *e = r->set;

	if (!r->cand)
		return;
	if (r->cprev)
		r->cprev->cnext = r->cnext;
	else
		e->cand_head = r->cnext;
	if (r->cnext)
		r->cnext->cprev = r->cprev;
	else
		e->cand_tail = r->cprev;
	r->cand = false;
	r->cprev = r->cnext = NULL;
	e->ncand--;
}

/* Every registration of s becomes a candidate (note lock held). */
static void cand_sock(struct sock *s)
{
	for (struct ep_reg *r = s->ep_regs; r; r = r->snext)
		cand_add(r);
}

/* A token for s, or 0 when none is left (then s stays unnoted). */
static uint32_t tok_get(struct sock *s)
{
	uint32_t t;

	if (nt_nfree) {
		t = nt_free[--nt_nfree];
	} else {
		if (nt_hi + 1 >= UBT_NOTE_SLOTS)
			return 0;
		if (nt_hi + 1 >= nt_cap) {
			uint32_t cap = nt_cap ? nt_cap * 2 : 256;
			struct sock **tab = realloc(nt_tab, sizeof(*tab) * cap);
			uint32_t *fr;

			if (!tab)
				return 0;
			nt_tab = tab;
			fr = realloc(nt_free, sizeof(*fr) * cap);
			if (!fr)
				return 0;
			nt_free = fr;
			memset(nt_tab + nt_cap, 0,
			       sizeof(*tab) * (cap - nt_cap));
			nt_cap = cap;
		}
		t = ++nt_hi;
	}
	nt_tab[t] = s;
	return t;
}

/* A posted token: its sock's registrations are candidates.  The token
 * came from shared memory: only the table says what it names. */
static void nt_hit(uint32_t t, void *arg)
{
	struct sock *s = t < nt_cap ? nt_tab[t] : NULL;

	(void)arg;
	if (s)
		cand_sock(s);
}

/* Take what peers posted (note lock held). */
static void nt_drain(void)
{
	if (nt_note)
		ubt_note_pop(nt_note, nt_hit, NULL);
}

void ep_sock_poke(struct sock *s)
{
	if (s->note_tok && s->own_note && s->own_note == nt_note)
		ubt_note_post(s->own_note, s->note_tok);
}

/* Tags of the inner epoll's data: low bits say what woke. */
#define TAG_EPFD 1u
#define TAG_EFD  2u
#define TAG_SOCK 3u

/* The set of epfd (made with make, if unknown); ep_lock held. */
static struct ep_set *ep_find_locked(int epfd, bool make)
{
	struct ep_set *e;

	for (e = ep_sets; e; e = e->next)
		if (e->epfd == epfd)
			break;
	if (!e && make && (e = calloc(1, sizeof(*e)))) {
		e->epfd = epfd;
		e->inner = -1;
		pthread_mutex_init(&e->mu, NULL);
		e->next = ep_sets;
		ep_sets = e;
	}
	return e;
}

static struct ep_set *ep_find(int epfd, bool make)
{
	struct ep_set *e;

	pthread_mutex_lock(&ep_lock);
	e = ep_find_locked(epfd, make);
	pthread_mutex_unlock(&ep_lock);
	return e;
}

/* Inner epoll: watch s's eventfd and kernel socket (once per sock). */
static void inner_add(struct ep_set *e, struct sock *s, int fd)
{
	struct epoll_event ev;

	for (int i = 0; i < e->nmem; i++)
		if (e->mem[i].s == s)
			return;
	if (e->nmem == e->capmem) {
		int cap = e->capmem ? e->capmem * 2 : 16;
		struct ep_member *m = realloc(e->mem, sizeof(*m) * (size_t)cap);

		if (!m)
			return;
		e->mem = m;
		e->capmem = cap;
	}
	if (e->inner < 0) {
		int in = ubs_real.epoll_create1(EPOLL_CLOEXEC);

		if (in < 0)
			return;
		e->inner = ubs_fd_high(in);
		ev.events = EPOLLIN;
		ev.data.u64 = TAG_EPFD;
		ubs_real.epoll_ctl(e->inner, EPOLL_CTL_ADD, e->epfd, &ev);
	}
	/* The doorbell is the process's, shared by its socks: added once,
	 * never taken out (a forked child has its own beside its parent's,
	 * which the channels it inherited keep). */
	{
		int efd = s->ch.efd[s->ch.side], i;

		for (i = 0; i < e->ndbs && e->dbs[i] != efd; i++)
			;
		if (i == e->ndbs) {
			ev.events = EPOLLIN;
			ev.data.u64 = (uint64_t)(uint32_t)efd << 32 | TAG_EFD;
			ubs_real.epoll_ctl(e->inner, EPOLL_CTL_ADD, efd, &ev);
			if (e->ndbs < EP_DBS)
				e->dbs[e->ndbs++] = efd;
		}
	}
	ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
	ev.data.u64 = (uint64_t)(uintptr_t)s | TAG_SOCK;
	if (ubs_real.epoll_ctl(e->inner, EPOLL_CTL_ADD, fd, &ev) == 0) {
		/* Edges from now on; what came before, once. */
		atomic_fetch_add(&s->watched, 1);
		sock_probe_kernel(s, fd);
	}
	e->mem[e->nmem].s = s;
	e->mem[e->nmem++].fd = fd;
}

static void inner_del(struct ep_set *e, struct sock *s)
{
	struct epoll_event ev = { 0 };

	for (int i = 0; i < e->nmem; i++) {
		if (e->mem[i].s != s)
			continue;
		if (ubs_real.epoll_ctl(e->inner, EPOLL_CTL_DEL, e->mem[i].fd,
				       &ev) == 0)
			atomic_fetch_sub(&s->watched, 1);
		e->mem[i] = e->mem[--e->nmem];
		return;
	}
}

/* Unlink and free r (e->mu held). */
static void reg_drop(struct ep_set *e, struct ep_reg *r)
{
	struct ep_reg **pp;
	struct sock *s = r->s;

	if (e->trim_cur == r)
		e->trim_cur = r->next;
	for (pp = &e->regs; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	pthread_mutex_lock(&nt_mu);
	cand_del(r);
	for (pp = &s->ep_regs; *pp; pp = &(*pp)->snext)
		if (*pp == r) {
			*pp = r->snext;
			break;
		}
	if (!s->ep_regs && s->note_tok) {
		/* Its last registration: the token goes back (a late post
		 * of it names nothing, or another sock: a look, no more). */
		if (s->have_chan && s->own_note == nt_note)
			ubt_chan_set_note_tok(&s->ch, 0);
		if (s->note_tok < nt_cap && nt_tab[s->note_tok] == s) {
			nt_tab[s->note_tok] = NULL;
			nt_free[nt_nfree++] = s->note_tok;
		}
		s->note_tok = 0;
	}
	nt_unlock();
	e->nregs--;
	__atomic_sub_fetch(&ep_nregs, 1, __ATOMIC_RELAXED);
	sock_put(r->s);
	free(r);
}

static struct ep_reg *reg_find(struct ep_set *e, int fd)
{
	for (struct ep_reg *r = e->regs; r; r = r->next)
		if (r->fd == fd)
			return r;
	return NULL;
}

static void reg_reset_edge(struct ep_reg *r)
{
	r->last = 0;
	r->et_head = UINT64_MAX;
	r->et_tail = UINT64_MAX;
}

static int reg_add(struct ep_set *e, int fd, struct sock *s,
		   const struct epoll_event *ev)
{
	struct ep_reg *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->fd = fd;
	r->s = s;
	r->set = e;
	r->events = ev->events;
	r->data = ev->data;
	reg_reset_edge(r);
	inner_add(e, s, fd);
	r->next = e->regs;
	e->regs = r;
	e->trim_due = true;
	/* The sock names its token in the channel header (once, while it
	 * has registrations) if its channel end is this process's: then
	 * its peer posts it.  First look: as a candidate. */
	pthread_mutex_lock(&nt_mu);
	if (!s->note_tok && s->have_chan && nt_note &&
	    s->own_note == nt_note) {
		s->note_tok = tok_get(s);
		if (s->note_tok)
			ubt_chan_set_note_tok(&s->ch, s->note_tok);
	}
	r->noted = s->note_tok != 0;
	r->snext = s->ep_regs;
	s->ep_regs = r;
	cand_add(r);
	nt_unlock();
	e->nregs++;
	__atomic_add_fetch(&ep_nregs, 1, __ATOMIC_RELAXED);
	return 0;
}

/*
 * Emulated epoll_ctl for a UB/undecided sock.  The kernel still checks
 * epfd and fd (an ADD then DEL of the real socket gives its exact errors
 * for bad descriptors, loops and the like).  Takes over the caller's
 * reference to s on a successful ADD.
 */
static int ep_ctl_emul(int epfd, int op, int fd, struct sock *s,
		       struct epoll_event *ev, bool *kept)
{
	struct epoll_event probe = { 0 };
	struct ep_set *e;
	struct ep_reg *r;
	int ret = 0;

	*kept = false;
	if (epfd == fd)
		return -EINVAL;
	nt_note_get();
	e = ep_find(epfd, false);
	if (!e && op == EPOLL_CTL_ADD) {
		/* A set we did not see created (inherited, or made before
		 * the library was up): let the kernel vet it once. */
		if (!ev)
			return -EFAULT;
		if (ubs_real.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &probe) < 0)
			return -errno;
		ubs_real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &probe);
		e = ep_find(epfd, true);
	}
	if (!e)
		return op == EPOLL_CTL_ADD ? -ENOMEM : -ENOENT;
	pthread_mutex_lock(&e->mu);
	r = reg_find(e, fd);
	switch (op) {
	case EPOLL_CTL_ADD:
		if (r) {
			ret = -EEXIST;
		} else {
			ret = reg_add(e, fd, s, ev);
			*kept = ret == 0;
		}
		break;
	case EPOLL_CTL_MOD:
		if (!ev)
			ret = -EFAULT;
		else if (!r)
			ret = -ENOENT;
		else if (r->events & EPOLLEXCLUSIVE)
			ret = -EINVAL;
		else {
			r->events = ev->events;
			r->data = ev->data;
			r->disabled = false;
			reg_reset_edge(r);
			pthread_mutex_lock(&nt_mu);
			cand_add(r);
			nt_unlock();
		}
		break;
	case EPOLL_CTL_DEL:
		if (!r)
			ret = -ENOENT;
		else
			reg_drop(e, r);
		break;
	default:
		ret = -EINVAL;
	}
	pthread_mutex_unlock(&e->mu);
	return ret;
}

/* ------------------------------ kernel registrations of a connecting sock */

/*
 * A CONNECTING sock's epoll registrations stay in the kernel's sets (its
 * readiness is the kernel's until it is decided); if it goes UB,
 * ep_sock_adopt moves them here.  It used to find them in
 * /proc/self/fdinfo of every set of the process (three syscalls a set, a
 * tenth of a connection-per-request client's CPU).  Now epoll_ctl
 * records each one made while the sock is CONNECTING in s->kr, keyed as
 * the kernel keys it, by (epfd, fd number): ADD and MOD set it, DEL
 * drops it, the close of the fd (ep_fd_closing; dup2 over it) or of the
 * set (ep_fd_closing, close_range) forgets it.  Adoption moves a
 * recorded one only if the kernel's DEL of it succeeds: an entry that
 * went stale unseen (a set closed by a raw syscall, its number reused)
 * then moves nothing that is not there.
 *
 * What is not in s->kr sends adoption back to the fdinfo scan:
 *  - more registrations than SOCK_KREGS (kr_lost);
 *  - EPOLLONESHOT: the kernel disarms one that fired, unseen here;
 *  - an ADD of the fd made while the library did not track it as
 *    CONNECTING (the sock is made at connect(); a program may register
 *    the socket before, or between two connects of it).  Each such ADD
 *    the interposer passes to the kernel marks the fd number in
 *    kadd_bits, and the mark goes with the fd's close: a per-fd "the
 *    kernel may hold registrations of this fd we did not record".  A
 *    client that connects and then registers (wrk, most event loops)
 *    never has the mark, even with its epoll set made long before.  The
 *    mark is set before the kernel call, so an ADD racing with connect()
 *    is seen by the adoption that follows; fds above KADD_FDS count as
 *    marked.  What the library cannot see is not marked: registrations
 *    made by an image before exec, as the fdinfo scan (which looked at
 *    the sets the library knew only) did not find them either.
 * Registrations of another fd number of the socket are moved only if
 * recorded (a dup of the tracked fd); the fdinfo scan looks at the fd
 * being settled only, as before.
 *
 * Locking: s->kr_mu guards s->kr and is a leaf, held over the kernel's
 * epoll_ctl so that an adoption (which takes the list after the state
 * became SK_UB) cannot miss a registration being made: a call that finds
 * the sock emulated under kr_mu takes the emulated path instead.
 */
#define KADD_FDS (1u << 20)
static uint64_t kadd_bits[KADD_FDS / 64];       /* in .bss: pages on use */

static void kadd_mark(int fd)
{
	if ((unsigned)fd < KADD_FDS)
		__atomic_fetch_or(&kadd_bits[(unsigned)fd / 64],
				  1ull << ((unsigned)fd % 64), __ATOMIC_SEQ_CST);
}

static bool kadd_marked(int fd)
{
	return (unsigned)fd >= KADD_FDS ||
		(__atomic_load_n(&kadd_bits[(unsigned)fd / 64],
				 __ATOMIC_SEQ_CST) >> ((unsigned)fd % 64) & 1);
}

/* Forget the marks of fds [lo, hi], closed. */
static void kadd_clear(unsigned lo, unsigned hi)
{
	if (lo >= KADD_FDS)
		return;
	if (hi >= KADD_FDS)
		hi = KADD_FDS - 1;
	for (unsigned w = lo / 64; w <= hi / 64; w++) {
		uint64_t m = ~0ull;

		if (w == lo / 64)
			m &= ~0ull << (lo % 64);
		if (w == hi / 64 && hi % 64 != 63)
			m &= (1ull << (hi % 64 + 1)) - 1;
		if (__atomic_load_n(&kadd_bits[w], __ATOMIC_RELAXED) & m)
			__atomic_fetch_and(&kadd_bits[w], ~m, __ATOMIC_SEQ_CST);
	}
}

static struct sock_kreg *kr_find(struct sock *s, int epfd, int fd)
{
	for (int i = 0; i < s->nkr; i++)
		if (s->kr[i].epfd == epfd && s->kr[i].fd == fd)
			return &s->kr[i];
	return NULL;
}

/* The kernel did op (kr_mu held). */
static void kr_note(struct sock *s, int epfd, int op, int fd,
		    const struct epoll_event *ev)
{
	struct sock_kreg *k = kr_find(s, epfd, fd);

	if (op == EPOLL_CTL_DEL) {
		if (k)
			*k = s->kr[--s->nkr];
		return;
	}
	if (!k) {               /* an ADD; or a MOD of one not recorded */
		if (s->nkr == SOCK_KREGS) {
			s->kr_lost = true;
			return;
		}
		k = &s->kr[s->nkr++];
		k->epfd = epfd;
		k->fd = fd;
	}
	k->events = ev->events | EPOLLERR | EPOLLHUP;   /* as the kernel's */
	k->data = ev->data;
}

/* Drop s's entries of fd number fd, or of set epfd (the other -1). */
static void kr_forget(struct sock *s, int epfd, int fd)
{
	if (!__atomic_load_n(&s->nkr, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&s->kr_mu);
	for (int i = 0; i < s->nkr;)
		if (s->kr[i].epfd == epfd || s->kr[i].fd == fd)
			s->kr[i] = s->kr[--s->nkr];
		else
			i++;
	pthread_mutex_unlock(&s->kr_mu);
}

static void kr_forget_set(int fd, struct sock *s, void *epfd)
{
	(void)fd;
	kr_forget(s, *(int *)epfd, -1);
}

#define EP_GO_EMUL 1    /* ep_ctl_kernel: s is emulated now */

/*
 * epoll_ctl of a tracked sock that is not emulated: the kernel's,
 * recorded while s is CONNECTING.  Returns the kernel's result (errno
 * set), or EP_GO_EMUL when s went UB meanwhile: the emulated path then.
 */
static int ep_ctl_kernel(int epfd, int op, int fd, struct sock *s,
			 struct epoll_event *ev)
{
	int st = atomic_load(&s->state), r, err;

	if (st == SK_LISTEN)
		return ubs_real.epoll_ctl(epfd, op, fd, ev);
	if (st != SK_CONNECTING) {      /* going TCP: the kernel's alone */
		if (op == EPOLL_CTL_ADD)
			kadd_mark(fd);
		return ubs_real.epoll_ctl(epfd, op, fd, ev);
	}
	pthread_mutex_lock(&s->kr_mu);
	if (emulated(s)) {
		pthread_mutex_unlock(&s->kr_mu);
		return EP_GO_EMUL;
	}
	r = ubs_real.epoll_ctl(epfd, op, fd, ev);
	err = errno;
	if (r == 0) {
		kr_note(s, epfd, op, fd, ev);
		/* Gone TCP meanwhile: ep_sock_rehome may have passed. */
		if (op != EPOLL_CTL_DEL && atomic_load(&s->state) == 0)
			kadd_mark(fd);
	}
	pthread_mutex_unlock(&s->kr_mu);
	/* A set the library knows: its close forgets its entries. */
	if (r == 0 && op == EPOLL_CTL_ADD)
		ep_find(epfd, true);
	errno = err;
	return r;
}

UBS_EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	struct sock *s;
	bool kept;
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (ubs_guard || !(s = sock_get(fd))) {
		if (op == EPOLL_CTL_ADD)
			kadd_mark(fd);
		return ubs_real.epoll_ctl(epfd, op, fd, ev);
	}
	if (atomic_load(&s->state) == SK_LISTEN && op != EPOLL_CTL_DEL)
		sock_accepting(s, fd);          /* once: see socket.c */
	/* A connecting socket stays in the kernel set: adopted if it goes
	 * UB (ep_sock_adopt). */
	if (!emulated(s) &&
	    (r = ep_ctl_kernel(epfd, op, fd, s, ev)) != EP_GO_EMUL) {
		sock_put(s);
		return r;
	}
	ubs_guard_enter();
	r = ep_ctl_emul(epfd, op, fd, s, ev, &kept);
	ubs_guard_exit();
	if (!kept)
		sock_put(s);
	return r < 0 ? ubs_fail(r) : 0;
}

/*
 * Collect ready registrations into out (e->mu held): take what peers
 * posted, then look at the candidates only, each once, in list order;
 * a level-triggered one still ready stays (at the tail: fairness when
 * max is smaller than the ready set), as does one whose sock posts to
 * no page of this process (inherited over fork); the others wait for
 * their next post.
 */
static int ep_collect(struct ep_set *e, struct epoll_event *out, int max)
{
	uint64_t checks = 0;
	int n = 0, todo;

	pthread_mutex_lock(&nt_mu);
	nt_drain();
	todo = e->ncand;
	while (todo-- > 0 && n < max && e->cand_head) {
		struct ep_reg *r = e->cand_head;
		uint32_t m, full;
		bool keep = !r->noted;

		cand_del(r);
		if (r->disabled)
			continue;       /* until MOD */
		if (!emulated(r->s)) {
			if (keep)
				cand_add(r);
			continue;
		}
		checks++;
		/* Its rings moved (or it would not be here): note when, so
		 * that the pass after a quiet second trims them. */
		if (sock_trim_idle(r->s))
			e->trim_due = true;
		e->budget = spin_of(r->s, e->budget);
		/* Every bit, for edges: a FIN is a new event even to a set
		 * that did not ask for RDHUP. */
		full = sock_ready(r->s, ~0u);
		m = full & (r->events | EPOLLHUP | EPOLLERR);
		if (r->events & EPOLLET) {
			uint64_t h = atomic_load_explicit(&r->s->rx->shm->head,
							  memory_order_acquire);
			uint64_t t = atomic_load_explicit(&r->s->tx->shm->tail,
							  memory_order_acquire);
			bool edge = (full & ~r->last) != 0 ||
				(h != r->et_head && (m & EPOLLIN)) ||
				(t != r->et_tail && (m & EPOLLOUT));

			r->last = full;
			r->et_head = h;
			r->et_tail = t;
			if (!edge)
				m = 0;
		} else if (m) {
			keep = true;    /* level: reported until it is not */
		}
		if (m) {
			out[n].events = m;
			out[n].data = r->data;
			n++;
			if (r->events & EPOLLONESHOT) {
				r->disabled = true;
				keep = false;
			}
		}
		if (keep)
			cand_add(r);
	}
	nt_unlock();
	if (checks)
		ubs_stats_add(UBS_STAT_EP_CHECKS, checks);
	return n;
}

/*
 * A set that never sleeps (always busy) would never trim: each wait
 * also looks at a few registrations in turn, so rings idle for a second
 * are given back while others are busy.  e->mu held.
 */
static void ep_trim_some(struct ep_set *e)
{
	struct ep_reg *r = e->trim_cur;

	for (int k = 0; k < 4 && e->regs; k++) {
		if (!r)
			r = e->regs;
		if (emulated(r->s))
			sock_trim_idle(r->s);
		r = r->next;
	}
	e->trim_cur = r;
}

/*
 * A pass over the whole set gives idle rings' pages back (e->mu held):
 * once a second while the set is busy (O(registrations) a second, not a
 * wait), and after a quiet second.  Rings seen moving are pending.
 */
#define TRIM_WAKE_MS (UBS_TRIM_IDLE_MS + 20)    /* past the coarse clock */

static void ep_trim_all(struct ep_set *e)
{
	bool moved = false;

	for (struct ep_reg *r = e->regs; r; r = r->next)
		if (emulated(r->s))
			moved |= sock_trim_idle(r->s);
	e->trim_due = moved;
	e->trim_pass_ns = now_ns() + UBS_TRIM_IDLE_MS * 1000000ull;
}

/* The inner epoll said the kernel socket of a member changed: learn
 * whether its peer is gone, and look at its registrations again. */
static void probe_member(struct ep_set *e, uint64_t tag)
{
	struct sock *s = (struct sock *)(uintptr_t)(tag & ~(uint64_t)3);

	pthread_mutex_lock(&e->mu);
	for (int m = 0; m < e->nmem; m++)
		if (e->mem[m].s == s) {
			sock_probe_kernel(s, e->mem[m].fd);
			pthread_mutex_lock(&nt_mu);
			cand_sock(s);
			nt_unlock();
		}
	pthread_mutex_unlock(&e->mu);
}

/* The page's eventfd is in the inner set (a forked child's own may be
 * in none of its members' channels). e->mu held. */
static void inner_add_note(struct ep_set *e, struct ubt_note *note)
{
	struct epoll_event ev;
	int i;

	if (!note || e->inner < 0 || e->note_efd == note->efd + 1)
		return;
	e->note_efd = note->efd + 1;
	for (i = 0; i < e->ndbs && e->dbs[i] != note->efd; i++)
		;
	if (i < e->ndbs)
		return;
	ev.events = EPOLLIN;
	ev.data.u64 = (uint64_t)(uint32_t)note->efd << 32 | TAG_EFD;
	if (ubs_real.epoll_ctl(e->inner, EPOLL_CTL_ADD, note->efd, &ev) == 0 &&
	    e->ndbs < EP_DBS)
		e->dbs[e->ndbs++] = note->efd;
}

/*
 * epoll_wait on a set with UB registrations.  Returns events or -errno.
 */
static int ep_wait(struct ep_set *e, struct epoll_event *ev, int max,
		   int timeout_ms, const sigset_t *mask)
{
	uint64_t deadline = timeout_ms > 0 ?
		now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
	uint32_t mark = ubs_sig_mark();
	struct foreign fw = { 0, 0 };
	struct ubt_note *note = nt_note_get();
	int n, k;

	for (;;) {
		int64_t budget = 0;
		struct arm *arms = NULL;
		struct epoll_event tmp[32];
		int na = 0, lm;
		bool trim = false;
		uint64_t slept_at;
		uint32_t key = 0;

		/* The inner set, without waiting: a FIN on the kernel
		 * socket of a UB connection, and whether kernel fds of the
		 * program's set have events. */
		bool kernel = e->inner < 0;

		if (!kernel) {
			k = ubs_real.epoll_wait(e->inner, tmp, 32, 0);
			for (int j = 0; j < k; j++)
				if ((tmp[j].data.u64 & 3) == TAG_EPFD)
					kernel = true;
				else if ((tmp[j].data.u64 & 3) == TAG_SOCK)
					probe_member(e, tmp[j].data.u64);
		}
		pthread_mutex_lock(&e->mu);
		n = ep_collect(e, ev, max);
		budget = e->budget;
		ep_trim_some(e);
		if (e->trim_due && now_ns() >= e->trim_pass_ns)
			ep_trim_all(e);
		pthread_mutex_unlock(&e->mu);
		if (n < max && kernel) {
			k = ubs_real.epoll_wait(e->epfd, ev + n, max - n, 0);
			if (k < 0 && n == 0)
				return -errno;
			n += k > 0 ? k : 0;
		}
		if (n || timeout_ms == 0)
			return n;
		if (deadline && left_ms(deadline) == 0)
			return 0;
		/* Spin on the rings. */
		if (budget) {
			uint64_t end = now_ns() + (uint64_t)spin_budget(budget);

			while (now_ns() < end) {
				pthread_mutex_lock(&e->mu);
				n = ep_collect(e, ev, max);
				pthread_mutex_unlock(&e->mu);
				if (n) {
					spin_result(true, budget);
					return n;
				}
				if (ubs_sig_since(mark))
					return -EINTR;
				for (int j = 0; j < 64; j++)
					__builtin_ia32_pause();
			}
			spin_result(false, budget);
		}
		/* Sleep: register as a sleeper of the page, arm the
		 * registrations that post to no page of ours, re-check,
		 * then wait. */
		pthread_mutex_lock(&e->mu);
		inner_add_note(e, note);
		if (note)
			key = ubt_note_arm(note);
		tl_set = e;
		pthread_mutex_lock(&nt_mu);
		e->waiting++;
		for (struct ep_reg *r = e->cand_head; r; r = r->cnext)
			na += !r->noted;
		if (na && !(arms = calloc((size_t)na, sizeof(*arms)))) {
			e->waiting--;
			pthread_mutex_unlock(&nt_mu);
			pthread_mutex_unlock(&e->mu);
			tl_set = NULL;
			if (note)
				ubt_note_disarm(note, key);
			return -ENOMEM;
		}
		na = 0;
		for (struct ep_reg *r = arms ? e->cand_head : NULL; r;
		     r = r->cnext)
			if (!r->noted && !r->disabled && emulated(r->s)) {
				__atomic_add_fetch(&r->s->refs, 1,
						   __ATOMIC_RELAXED);
				arm(&arms[na++], r->s, r->events);
				trim |= sock_trim_idle(r->s);
			}
		pthread_mutex_unlock(&nt_mu);
		trim |= e->trim_due;
		n = ep_collect(e, ev, max);
		pthread_mutex_unlock(&e->mu);
		k = 0;
		slept_at = now_ns() - (uint64_t)spin_budget(budget);
		if (!n) {
			int board_ms = sock_board_sweep();

			lm = timeout_ms < 0 ? -1 : left_ms(deadline);
			if (trim && (lm < 0 || lm > TRIM_WAKE_MS))
				lm = TRIM_WAKE_MS;
			else
				trim = false;
			/* Posts nobody took: wake for the nearest deadline
			 * (the sweep posts each expired one's token). */
			if (board_ms >= 0 && (lm < 0 || lm > board_ms))
				lm = board_ms ? board_ms : 1;
			ubs_sig_sleep = true;
			k = ubs_real.epoll_pwait(e->inner >= 0 ? e->inner :
						 e->epfd, tmp, 32, lm, mask);
			ubs_sig_sleep = false;
			if (k < 0)
				k = -errno;
		}
		{
			int claimed = 0, efd = -1;

			for (int j = 0; j < na; j++) {
				claimed += disarm(&arms[j]);
				sock_put(arms[j].s);
			}
			if (note)
				claimed += ubt_note_disarm(note, key);
			pthread_mutex_lock(&nt_mu);
			e->waiting--;
			pthread_mutex_unlock(&nt_mu);
			tl_set = NULL;
			for (int j = 0; j < k; j++)
				if ((tmp[j].data.u64 & 3) == TAG_EFD)
					efd = (int)(tmp[j].data.u64 >> 32);
				else
					claimed++;
			if (!claimed && efd >= 0 && !n)
				foreign_wake(&fw, efd);
		}
		free(arms);
		if (budget && k > 0)
			spin_after_sleep(now_ns() - slept_at, budget);
		if (n)
			return n;
		if (k < 0)
			return k;
		for (int j = 0; j < k; j++)
			if ((tmp[j].data.u64 & 3) == TAG_SOCK)
				probe_member(e, tmp[j].data.u64);
		if (k == 0 && trim) {
			/* A quiet second: give idle rings' pages back. */
			pthread_mutex_lock(&e->mu);
			ep_trim_all(e);
			pthread_mutex_unlock(&e->mu);
			continue;
		}
		if (k == 0 && timeout_ms > 0)
			timeout_ms = 0;         /* one last collection */
	}
}

static int do_epoll_wait(int epfd, struct epoll_event *ev, int max,
			 int timeout, const sigset_t *mask, bool pwait)
{
	struct ep_set *e;
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (__builtin_expect(ubs_listen_pending, 0) && !ubs_guard)
		sock_relisten_now();
	if (ubs_guard || !__atomic_load_n(&ep_nregs, __ATOMIC_RELAXED) ||
	    !(e = ep_find(epfd, false)) || !e->nregs || max <= 0)
		return pwait ? ubs_real.epoll_pwait(epfd, ev, max, timeout, mask)
			: ubs_real.epoll_wait(epfd, ev, max, timeout);
	ubs_guard_enter();
	r = ep_wait(e, ev, max, timeout < 0 ? -1 : timeout, mask);
	ubs_guard_exit();
	return r < 0 ? ubs_fail(r) : r;
}

UBS_EXPORT int epoll_wait(int epfd, struct epoll_event *ev, int max,
			  int timeout)
{
	return do_epoll_wait(epfd, ev, max, timeout, NULL, false);
}

UBS_EXPORT int epoll_pwait(int epfd, struct epoll_event *ev, int max,
			   int timeout, const sigset_t *mask)
{
	return do_epoll_wait(epfd, ev, max, timeout, mask, true);
}

UBS_EXPORT int epoll_pwait2(int epfd, struct epoll_event *ev, int max,
			    const struct timespec *ts, const sigset_t *mask)
{
	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (ubs_guard || !__atomic_load_n(&ep_nregs, __ATOMIC_RELAXED) ||
	    !ep_find(epfd, false)) {
		if (!ubs_real.epoll_pwait2)
			return ubs_fail(-ENOSYS);
		return ubs_real.epoll_pwait2(epfd, ev, max, ts, mask);
	}
	return do_epoll_wait(epfd, ev, max, ts_ms(ts), mask, true);
}

UBS_EXPORT int epoll_create(int size)
{
	int fd;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	fd = ubs_real.epoll_create(size);
	if (fd >= 0 && !ubs_guard)
		ep_find(fd, true);
	return fd;
}

UBS_EXPORT int epoll_create1(int flags)
{
	int fd;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	fd = ubs_real.epoll_create1(flags);
	if (fd >= 0 && !ubs_guard)
		ep_find(fd, true);
	return fd;
}

/* ------------------------------------------- transitions, close, fork */

/* Remove (and with rehome, give back to the kernel) every registration
 * of s. */
static void ep_sock_drop(struct sock *s, bool rehome)
{
	pthread_mutex_lock(&ep_lock);
	for (struct ep_set *e = ep_sets; e; e = e->next) {
		struct ep_reg *r, *nx;

		pthread_mutex_lock(&e->mu);
		for (r = e->regs; r; r = nx) {
			nx = r->next;
			if (r->s != s)
				continue;
			if (rehome) {
				struct epoll_event ev = {
					.events = r->disabled ?
						EPOLLONESHOT : r->events,
					.data = r->data,
				};

				ubs_real.epoll_ctl(e->epfd, EPOLL_CTL_ADD,
						   r->fd, &ev);
			}
			reg_drop(e, r);
		}
		inner_del(e, s);
		pthread_mutex_unlock(&e->mu);
	}
	pthread_mutex_unlock(&ep_lock);
}

void ep_sock_gone(struct sock *s)
{
	if (__atomic_load_n(&ep_sets, __ATOMIC_RELAXED))
		ep_sock_drop(s, false);
}

void ep_sock_rehome(struct sock *s, int fd)
{
	(void)fd;
	/* A connecting sock going TCP: its recorded registrations stay in
	 * the kernel, unrecorded now (its fd may connect again: a new sock). */
	if (__atomic_load_n(&s->nkr, __ATOMIC_RELAXED)) {
		pthread_mutex_lock(&s->kr_mu);
		for (int i = 0; i < s->nkr; i++)
			kadd_mark(s->kr[i].fd);
		s->nkr = 0;
		pthread_mutex_unlock(&s->kr_mu);
	}
	if (__atomic_load_n(&ep_sets, __ATOMIC_RELAXED))
		ep_sock_drop(s, true);
}

/* Move the kernel's registration (epfd, fd) of s here if the kernel has
 * it (its DEL succeeds); ep_lock held. */
static void ep_adopt_one(struct sock *s, int epfd, int fd,
			 const struct epoll_event *kev)
{
	struct epoll_event ev = *kev;
	struct ep_set *e;

	if (ubs_real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev) < 0)
		return;
	e = ep_find_locked(epfd, true);
	if (!e) {
		ubs_real.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
		return;
	}
	__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&e->mu);
	if (reg_find(e, fd) || reg_add(e, fd, s, &ev))
		sock_put(s);
	pthread_mutex_unlock(&e->mu);
}

/*
 * The registrations of fd in the sets the library knows, as the kernel
 * tells them in /proc/self/fdinfo/EPFD ("tfd: N events: X data: Y"):
 * for what was not recorded (see ep_ctl_kernel).  ep_lock held.
 */
static void ep_adopt_scan(struct sock *s, int fd)
{
	for (struct ep_set *e = ep_sets; e; e = e->next) {
		char path[64], buf[8192], *line;
		ssize_t len;
		int f;

		snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", e->epfd);
		f = open(path, O_RDONLY | O_CLOEXEC);
		if (f < 0)
			continue;
		len = ubs_real.read(f, buf, sizeof(buf) - 1);
		ubs_real.close(f);
		if (len <= 0)
			continue;
		buf[len] = '\0';
		for (line = buf; line; line = strchr(line, '\n')) {
			unsigned int evs;
			unsigned long long data;
			int tfd;

			while (*line == '\n')
				line++;
			if (sscanf(line, "tfd: %d events: %x data: %llx", &tfd,
				   &evs, &data) != 3 || tfd != fd)
				continue;
			{
				struct epoll_event ev = { .events = evs };

				ev.data.u64 = data;
				ep_adopt_one(s, e->epfd, fd, &ev);
			}
		}
	}
}

/*
 * A connecting socket went UB: registrations the program made in the
 * kernel (during connect, or before) move here: those epoll_ctl recorded
 * (see ep_ctl_kernel), and the kernel's own list of fd's when some may
 * not have been.
 */
void ep_sock_adopt(struct sock *s, int fd)
{
	struct sock_kreg kr[SOCK_KREGS];
	bool scan;
	int n;

	/* The state is SK_UB: from here on epoll_ctl records nothing. */
	pthread_mutex_lock(&s->kr_mu);
	n = s->nkr;
	memcpy(kr, s->kr, sizeof(kr[0]) * (size_t)n);
	s->nkr = 0;
	scan = s->kr_lost || kadd_marked(fd);
	pthread_mutex_unlock(&s->kr_mu);
	for (int i = 0; i < n; i++)
		if ((kr[i].events & EPOLLONESHOT) && kr[i].fd == fd)
			scan = true;
	if (!scan && !n)
		return;
	nt_note_get();
	pthread_mutex_lock(&ep_lock);
	if (scan)
		ep_adopt_scan(s, fd);
	for (int i = 0; i < n; i++) {
		struct epoll_event ev = { .events = kr[i].events,
					  .data = kr[i].data };

		/* A one-shot one of another fd stays in the kernel (it may
		 * have fired); one the scan moved is not there any more. */
		if (!(kr[i].events & EPOLLONESHOT))
			ep_adopt_one(s, kr[i].epfd, kr[i].fd, &ev);
	}
	pthread_mutex_unlock(&ep_lock);
}

void ep_fd_closing(int fd)
{
	struct ep_set *e, **pp;
	struct sock *s;

	if (fd < 0)
		return;
	kadd_clear((unsigned)fd, (unsigned)fd);
	if (sock_slot_used(fd) && (s = sock_get(fd))) {
		kr_forget(s, -1, fd);   /* the kernel's key named this fd */
		sock_put(s);
	}
	if (!ep_sets)
		return;
	pthread_mutex_lock(&ep_lock);
	for (pp = &ep_sets; (e = *pp); pp = &e->next)
		if (e->epfd == fd)
			break;
	if (e) {                /* an epoll set: forget it */
		*pp = e->next;
		pthread_mutex_lock(&e->mu);
		while (e->regs)
			reg_drop(e, e->regs);
		pthread_mutex_unlock(&e->mu);
		if (e->inner >= 0)
			ubs_fd_release(e->inner);
		free(e->mem);
		pthread_mutex_destroy(&e->mu);
		free(e);
		pthread_mutex_unlock(&ep_lock);
		/* And what connecting socks recorded of it. */
		sock_for_each(kr_forget_set, &fd);
		return;
	} else if (__atomic_load_n(&ep_nregs, __ATOMIC_RELAXED)) {
		/* A registered fd: the kernel drops it from its sets. */
		for (e = ep_sets; e; e = e->next) {
			struct ep_reg *r;

			pthread_mutex_lock(&e->mu);
			if ((r = reg_find(e, fd)))
				reg_drop(e, r);
			pthread_mutex_unlock(&e->mu);
		}
	}
	pthread_mutex_unlock(&ep_lock);
}

void ep_atfork_child(void)
{
	/* The page and its tokens are the parent's: the child's sets look
	 * at their registrations as inherited ones (armed one by one) and
	 * name no token (the channel headers keep the parent's). */
	pthread_mutex_init(&ep_lock, NULL);
	pthread_mutex_init(&nt_mu, NULL);
	nt_note = NULL;
	nt_kick = false;
	for (uint32_t t = 1; t < nt_cap; t++)
		nt_tab[t] = NULL;
	nt_hi = nt_nfree = 0;
	for (struct ep_set *e = ep_sets; e; e = e->next) {
		pthread_mutex_init(&e->mu, NULL);
		e->waiting = 0;
		for (struct ep_reg *r = e->regs; r; r = r->next) {
			r->s->note_tok = 0;
			r->noted = false;
			cand_add(r);
		}
	}
}

/* Forget the epoll sets among fds [lo, hi], about to be closed together
 * (close_range); their registrations go too. */
void ep_forget_range(unsigned lo, unsigned hi)
{
	kadd_clear(lo, hi);
	for (;;) {
		struct ep_set *e;
		int fd = -1;

		pthread_mutex_lock(&ep_lock);
		for (e = ep_sets; e; e = e->next)
			if ((unsigned)e->epfd >= lo && (unsigned)e->epfd <= hi) {
				fd = e->epfd;
				break;
			}
		pthread_mutex_unlock(&ep_lock);
		if (fd < 0)
			return;
		ep_fd_closing(fd);
	}
}

/* SPDX-License-Identifier: MIT */
/*
 * wait.c - doorbells with event suppression, adaptive spin, real sleep.
 *
 * A doorbell is one shared word, epoch<<32 | waiters, plus the waiting
 * side's eventfd (EFD_SEMAPHORE).  A waiter registers (waiters+1), re-checks
 * its condition, then sleeps in poll() on the eventfd and its watched fd.
 * A notifier that finds waiters moves the epoch on, clears the count in the
 * same CAS ("claims" them) and writes exactly that many tokens.  Each
 * claimed waiter reads exactly one token; a waiter that sees the eventfd
 * readable but whose epoch has not moved does not read (the tokens belong
 * to others) and yields; a token nobody takes for STRAY_MS is a stray
 * (its claimed waiter was killed before reading it) and is discarded.  So:
 *   - no syscall on the notify side unless someone is registered;
 *   - no lost wake-up: registration is a seq_cst RMW, publication is
 *     followed by a seq_cst fence, so either the waiter sees the data or
 *     the notifier sees the waiter (the Dekker pattern);
 *   - tokens match claimed waiters, so several waiters (threads, forked
 *     processes, both directions of a channel) can share one eventfd.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <unistd.h>

#include "ubt.h"
#include "ubt_int.h"

#define DB_EPOCH(s) ((uint32_t)((s) >> 32))
#define DB_COUNT(s) ((uint32_t)(s))
#define MAX_WAITERS   (1u << 24)
#define TOKEN_WAIT_MS 200       /* a claimed waiter's token is at most this late */
#define STRAY_MS      1000      /* a token unclaimed this long is a stray:
				 * not sooner, as its sleeper may be alive
				 * and only waiting for a CPU (a token taken
				 * from it is a lost wake-up) */

int ubt_db_ring(_Atomic uint64_t *db, int efd)
{
	uint64_t s, k;

	if (efd < 0)
		return 0;       /* no doorbell to ring: leave waiters be */
	atomic_thread_fence(memory_order_seq_cst);
	s = atomic_load_explicit(db, memory_order_relaxed);
	while (DB_COUNT(s)) {
		uint64_t next = (uint64_t)(DB_EPOCH(s) + 1) << 32;

		if (atomic_compare_exchange_weak_explicit(
			    db, &s, next, memory_order_seq_cst,
			    memory_order_relaxed)) {
			k = DB_COUNT(s);
			return write(efd, &k, sizeof(k)) == sizeof(k);
		}
	}
	return 0;
}

/*
 * A ring changed: wake its sleepers on db, and post the endpoint that
 * the other side named in the channel header (data: the consumer's,
 * space: the producer's) to that side's notification page.
 */
void ubt_db_notify(struct ubt_ring *r, _Atomic uint64_t *db, int efd)
{
	int space = db != &r->shm->data_db;
	struct ubt_note *n = space ? r->space_note : r->data_note;
	const _Atomic uint32_t *tok = space ? r->space_tok : r->data_tok;

	if (ubt_db_ring(db, efd))
		r->st.doorbells++;
	if (n && tok) {
		uint32_t t = atomic_load_explicit(tok, memory_order_relaxed);

		if (t && ubt_note_post(n, t))
			r->st.doorbells++;
	}
}

/* Take one token from the eventfd: ours, since our epoch moved.  The
 * notifier writes right after its CAS; if it died in between, give up. */
static void take_token(int efd)
{
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t v, end = 0;

	while (read(efd, &v, sizeof(v)) != sizeof(v)) {
		if (errno != EAGAIN && errno != EINTR)
			return;
		if (!end)
			end = ubt_now_ns() + TOKEN_WAIT_MS * 1000000ull;
		else if (ubt_now_ns() >= end)
			return;
		poll(&p, 1, 10);
	}
}

/* Withdraw a registration made at epoch key: 1 if it had been claimed
 * (its token is taken), else 0. */
int ubt_db_cancel(_Atomic uint64_t *db, uint32_t key, int efd)
{
	uint64_t s = atomic_load_explicit(db, memory_order_relaxed);

	for (;;) {
		if (DB_EPOCH(s) != key) {
			take_token(efd);        /* claimed: consume its token */
			return 1;
		}
		if (DB_COUNT(s) == 0)
			return 0;               /* hostile reset: nothing to undo */
		if (atomic_compare_exchange_weak_explicit(
			    db, &s, s - 1, memory_order_seq_cst,
			    memory_order_relaxed))
			return 0;
	}
}

typedef int (*cond_fn)(const struct ubt_ring *r, uint64_t arg);

/* 1 when the ring has data or its producer closed, <0 when corrupt. */
static int cond_readable(const struct ubt_ring *r, uint64_t arg)
{
	int64_t u = ubt_ring_readable(r);

	if (u != 0)
		return u > 0 ? 1 : (int)u;
	return atomic_load_explicit(&r->shm->pclosed, memory_order_acquire) != 0;
}

/* 1 when arg bytes fit or the consumer is gone, <0 when corrupt. */
static int cond_writable(const struct ubt_ring *r, uint64_t arg)
{
	int64_t w = ubt_ring_writable(r);

	if (w < 0)
		return (int)w;
	if ((uint64_t)w >= arg)
		return 1;
	return atomic_load_explicit(&r->shm->cclosed, memory_order_acquire) != 0;
}

/* Has the waiter been told to stop? */
static int stopped(const struct ubt_wait *w)
{
	for (int i = 0; i < UBT_WAIT_STOPS; i++)
		if (w->stop[i] &&
		    atomic_load_explicit(w->stop[i], memory_order_acquire))
			return 1;
	return 0;
}

/* Spin for up to the adaptive budget.  Returns cond's result (0: give up). */
static int spin(struct ubt_ring *r, cond_fn cond, uint64_t arg, int64_t budget,
		const struct ubt_wait *w)
{
	uint64_t t0, limit;
	int c, i;

	if (r->spin_ns < 0 || r->spin_ns > budget)
		r->spin_ns = budget;
	limit = (uint64_t)r->spin_ns;
	t0 = ubt_now_ns();
	for (;;) {
		for (i = 0; i < 64; i++) {
			c = cond(r, arg);
			if (c) {
				/* Success: let the next wait spin longer. */
				r->spin_ns = r->spin_ns * 2 > budget ?
					budget : r->spin_ns * 2;
				if (r->spin_ns < budget / 64 + 1)
					r->spin_ns = budget / 64 + 1;
				r->st.spin_hits++;
				return c;
			}
			ubt_cpu_relax();
		}
		if (ubt_now_ns() - t0 >= limit || stopped(w))
			break;
	}
	/* Spinning did not pay: halve, but keep a floor so it can recover. */
	r->spin_ns /= 2;
	if (r->spin_ns < budget / 64)
		r->spin_ns = budget / 64;
	return 0;
}

/*
 * The common wait: condition, spin, then sleep on the doorbell.  efd is
 * this side's eventfd for db.
 */
static int db_wait_sleep(struct ubt_ring *r, _Atomic uint64_t *db, int efd,
			 cond_fn cond, uint64_t arg, const struct ubt_wait *w)
{
	uint64_t deadline = 0, s, stray_t0 = 0;
	int c, n, yields = 0;

	c = cond(r, arg);
	if (c)
		return c > 0 ? UBT_READY : c;
	if (stopped(w))
		return UBT_STOP;
	if (w->spin_ns > 0) {
		c = spin(r, cond, arg, w->spin_ns, w);
		if (c)
			return c > 0 ? UBT_READY : c;
		if (stopped(w))
			return UBT_STOP;
	}
	if (efd < 0)
		return -EINVAL;
	if (w->timeout_ms >= 0)
		deadline = ubt_now_ns() + (uint64_t)w->timeout_ms * 1000000ull;

	for (;;) {
		uint32_t key;

		/* A count no real set of waiters reaches: a hostile peer. */
		if (DB_COUNT(atomic_load_explicit(db, memory_order_relaxed)) >
		    MAX_WAITERS)
			return -EPROTO;
		s = atomic_fetch_add_explicit(db, 1, memory_order_seq_cst);
		key = DB_EPOCH(s);
		c = cond(r, arg);
		if (c || stopped(w)) {
			ubt_db_cancel(db, key, efd);
			return c > 0 ? UBT_READY : c < 0 ? c : UBT_STOP;
		}
		for (;;) {
			struct pollfd p[2] = {
				{ .fd = efd, .events = POLLIN },
				{ .fd = w->watch_fd, .events = w->watch_events },
			};
			int tmo = -1;

			if (deadline) {
				uint64_t now = ubt_now_ns();

				tmo = now >= deadline ? 0 :
					(int)((deadline - now + 999999) / 1000000);
			}
			r->st.sleeps++;
			n = poll(p, w->watch_fd >= 0 ? 2 : 1, tmo);
			if (n < 0) {
				int err = errno;

				ubt_db_cancel(db, key, efd);
				return -err;
			}
			if (DB_EPOCH(atomic_load_explicit(
				    db, memory_order_seq_cst)) != key) {
				take_token(efd);        /* woken for us */
				break;
			}
			if (n > 0 && p[1].revents) {
				ubt_db_cancel(db, key, efd);
				return UBT_WATCH;
			}
			c = cond(r, arg);
			if (c) {
				ubt_db_cancel(db, key, efd);
				return c > 0 ? UBT_READY : c;
			}
			if (n == 0 || (deadline && ubt_now_ns() >= deadline)) {
				ubt_db_cancel(db, key, efd);
				return -ETIMEDOUT;
			}
			/* Tokens of other waiters are pending: let them run.
			 * Tokens nobody takes for STRAY_MS are strays (their
			 * waiter was killed, or a hostile peer wrote them):
			 * take one, so sleeping stays a real sleep. */
			if (yields == 0)
				stray_t0 = ubt_now_ns();
			if (++yields < 200) {
				sched_yield();
			} else if (ubt_now_ns() - stray_t0 <
				   STRAY_MS * 1000000ull) {
				struct timespec ts = { 0, 1000000 };

				nanosleep(&ts, NULL);
			} else {
				uint64_t v;

				if (read(efd, &v, sizeof(v)) == sizeof(v))
					r->st.strays++;
				yields = 0;
			}
		}
		c = cond(r, arg);
		if (c)
			return c > 0 ? UBT_READY : c;
		if (stopped(w))
			return UBT_STOP;
		/* Another consumer took it: register again. */
	}
}

uint32_t ubt_ring_arm(struct ubt_ring *r, int space)
{
	_Atomic uint64_t *db = space ? &r->shm->space_db : &r->shm->data_db;

	return DB_EPOCH(atomic_fetch_add_explicit(db, 1, memory_order_seq_cst));
}

int ubt_ring_disarm(struct ubt_ring *r, int space, uint32_t key)
{
	if (space)
		return ubt_db_cancel(&r->shm->space_db, key, r->space_efd);
	return ubt_db_cancel(&r->shm->data_db, key, r->data_efd);
}

int ubt_ring_pclosed(const struct ubt_ring *r)
{
	return atomic_load_explicit(&r->shm->pclosed, memory_order_acquire) != 0;
}

int ubt_ring_cclosed(const struct ubt_ring *r)
{
	return atomic_load_explicit(&r->shm->cclosed, memory_order_acquire) != 0;
}

/*
 * A wait that slept but was answered within the spin budget would have
 * been caught by a longer spin: let the next one spin that long.  (Spins
 * only shrink when they fail; without this, two peers whose spins both
 * shrank to the floor while a CPU was busy keep waking each other from
 * real sleeps once it is free again.)
 */
static int db_wait(struct ubt_ring *r, _Atomic uint64_t *db, int efd,
		   cond_fn cond, uint64_t arg, const struct ubt_wait *w)
{
	uint64_t t0 = w->spin_ns > 0 ? ubt_now_ns() : 0, sleeps = r->st.sleeps;
	int ret = db_wait_sleep(r, db, efd, cond, arg, w);

	if (ret == UBT_READY && t0 && r->st.sleeps != sleeps) {
		uint64_t el = ubt_now_ns() - t0;

		if (el < (uint64_t)w->spin_ns) {
			int64_t want = (int64_t)el * 2;

			if (want > w->spin_ns)
				want = w->spin_ns;
			if (r->spin_ns < want)
				r->spin_ns = want;
		}
	}
	return ret;
}

int ubt_wait_readable(struct ubt_ring *r, const struct ubt_wait *w)
{
	return db_wait(r, &r->shm->data_db, r->data_efd, cond_readable, 0, w);
}

int ubt_wait_writable(struct ubt_ring *r, uint64_t need,
		      const struct ubt_wait *w)
{
	if (need > r->size)
		return -EMSGSIZE;
	if (r->kind == UBT_RING_MSG)
		need = ubt_rec_size(need);      /* need: payload bytes */
	if (need == 0)
		need = 1;
	if (need > r->size)
		return -EMSGSIZE;
	return db_wait(r, &r->shm->space_db, r->space_efd, cond_writable, need,
		       w);
}

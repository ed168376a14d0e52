/* SPDX-License-Identifier: MIT */
/*
 * board.c - connection set-up through the uid's board (ubtransport/board.c),
 * without ubsd: the fast way for two processes of one uid in one network
 * namespace, which is what a program opening a connection per request
 * talks to.
 *
 * Client (connect): the destination's listeners, as the policy page lists
 * them, must all be on this process's board in the socket's namespace;
 * then an intent before the kernel connect, and right after it (the
 * local port is known even while the handshake is in progress) a channel
 * in a slot of the board, posted under the connection's key.  Once the
 * kernel connection is made the socket is UB at once: the client writes
 * its request into the ring without waiting for the server's accept.
 * The server's doorbell is looked up when the channel turns UB (the
 * server attached); until then a wake-up has nobody to wake.
 *
 * Server (accept on a listener of the board): take the post of the
 * connection's key and attach.  Nothing posted: if an intent towards this
 * listener's address is in flight, wait for it a little (its client is
 * between connect() and its post), then leave a tombstone, which turns a
 * late client to TCP; no intent: the connection is not from a client of
 * the board, and the daemon's rendezvous (socket.c) takes over.  A
 * server whose policy is off still takes the post, and demotes the
 * channel: the client sends its bytes over the kernel socket instead.
 *
 * A client that closes before its post was taken decides the channel TCP
 * and sends what it wrote over the kernel socket, where a server that
 * accepts later reads it.  The slot's two references (one per side, the
 * last holder of a side lets go of it) free it.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "sock.h"
#include "ctl.h"
#include "policy.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

/* How long a server waits for a client whose intent is in flight. */
#define BOARD_WAIT_NS 2000000ull

/* A sockaddr as the board keys it: v4-mapped IPv6 is IPv4, unused bytes
 * zero.  false for another family or a short address. */
static bool key_addr(const struct sockaddr *sa, socklen_t len,
		     uint16_t *fam, uint8_t a[16], uint16_t *port)
{
	memset(a, 0, 16);
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const void *)sa;

		*fam = AF_INET;
		memcpy(a, &in->sin_addr, 4);
		*port = ntohs(in->sin_port);
		return true;
	}
	if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		*port = ntohs(in6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			*fam = AF_INET;
			memcpy(a, &in6->sin6_addr.s6_addr[12], 4);
		} else {
			*fam = AF_INET6;
			memcpy(a, &in6->sin6_addr, 16);
		}
		return true;
	}
	return false;
}

static bool addr_unspec(uint16_t fam, const uint8_t a[16])
{
	static const uint8_t zero[16];

	return memcmp(a, zero, fam == AF_INET ? 4 : 16) == 0;
}

uint64_t sock_netns(int fd)
{
	uint64_t c = 0;
	socklen_t l = sizeof(c);

	return ubs_real.getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &c, &l) == 0 ?
		c : 0;
}

/* The client's end is counted when its server decided (or never will):
 * UB once the server attached, TCP when the post went back.  Its line in
 * the connection table (`ubsctl conns`) is there from the start, for the
 * bytes it writes meanwhile. */
static void board_count(struct sock *s, bool ub, int why)
{
	if (s->board_counted || s->ch.side != 0)
		return;
	s->board_counted = true;
	if (ub) {
		ubs_stats_add(UBS_STAT_UB_CONNS, 1);
		ubs_stats_add(UBS_STAT_UB_BOARD, 1);
	} else {
		ubs_conn_close(s->cslot);
		s->cslot = NULL;
		sock_count_tcp(s->fd, why, 1);
	}
}

void sock_board_counted(struct sock *s)
{
	/* Decided UB by its server, which read something (a refusal reads
	 * nothing: see sock_board_check). */
	if (s->board && !s->board_counted)
		board_count(s, ubt_chan_state(&s->ch) == UBT_CHAN_UB &&
			    (!atomic_load(ubt_chan_demote_word(&s->ch, 1)) ||
			     (s->have_chan &&
			      atomic_load(&s->tx->shm->tail) > 0)),
			    UBS_STAT_TCP_PEER_TCP);
}

/*
 * A post nobody takes (the connection was accepted by a process that
 * does not look at this board and could not hand it back through ubsd:
 * not preloaded, or without a daemon) must not leave its client waiting
 * for good.  Past BOARD_TAKE_MS the client decides the channel TCP itself
 * and marks the server's side demoted: the next call on it sends what it
 * wrote over the kernel socket and goes on there (a server that takes
 * the post later finds it TCP).  Blocking calls wait no longer than the
 * deadline (io.c); poll and epoll sweep the list of such connections
 * (pend) before each sleep and sleep no longer than the nearest deadline.
 */
#define BOARD_TAKE_MS 1000
/* A client that closes a connection whose post nobody took yet waits
 * this long for its server to take it before it goes TCP (sending what it
 * wrote over the kernel socket). */
#define BOARD_CLOSE_WAIT_MS 200

static pthread_mutex_t pend_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sock *pend;               /* linked by pend_next */
static _Atomic int npend;

/* The list holds no reference: sock_free takes s off it first (under
 * pend_mu, which a sweep holds while it looks at s). */
static void pend_add(struct sock *s)
{
	pthread_mutex_lock(&pend_mu);
	s->pend_next = pend;
	pend = s;
	s->pending = true;
	atomic_fetch_add(&npend, 1);
	pthread_mutex_unlock(&pend_mu);
}

static void pend_del(struct sock *s)
{
	pthread_mutex_lock(&pend_mu);
	for (struct sock **pp = &pend; *pp; pp = &(*pp)->pend_next)
		if (*pp == s) {
			*pp = s->pend_next;
			s->pending = false;
			atomic_fetch_sub(&npend, 1);
			break;
		}
	pthread_mutex_unlock(&pend_mu);
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int sock_board_left_ms(const struct sock *s)
{
	uint64_t now;

	if (!s->board_wait || ubt_chan_state(&s->ch) != UBT_CHAN_UNDECIDED)
		return -1;
	now = mono_ns();
	return now >= s->board_due_ns ? 0 :
		(int)((s->board_due_ns - now + 999999) / 1000000);
}

bool sock_board_expire(struct sock *s)
{
	if (sock_board_left_ms(s) != 0 ||
	    ubt_chan_decide(&s->ch, UBT_CHAN_TCP) != UBT_CHAN_TCP)
		return false;
	ubt_board_unpost(s->board, &s->board_key, (uint32_t)s->board_slot);
	ubt_chan_demote_side(&s->ch, 1);
	s->board_wait = false;
	board_count(s, false, UBS_STAT_TCP_NO_CHANNEL);
	ubs_info("fd %d: no server took the connection's channel in %d ms: "
		 "TCP", s->fd, BOARD_TAKE_MS);
	if (s->own_note && s->note_tok)
		ubt_note_post(s->own_note, s->note_tok);        /* epoll */
	return true;
}

int sock_board_sweep(void)
{
	int next = -1;

	if (!atomic_load_explicit(&npend, memory_order_relaxed))
		return -1;
	pthread_mutex_lock(&pend_mu);
	for (struct sock **pp = &pend; *pp;) {
		struct sock *s = *pp;
		int left;

		sock_board_expire(s);
		left = sock_board_left_ms(s);
		if (left < 0) {                 /* settled: off the list */
			*pp = s->pend_next;
			s->pending = false;
			atomic_fetch_sub(&npend, 1);
			continue;
		}
		if (next < 0 || left < next)
			next = left;
		pp = &s->pend_next;
	}
	pthread_mutex_unlock(&pend_mu);
	return next;
}

/* ------------------------------------------------------------- client */

bool sock_board_connect_begin(struct sock *s, int fd,
			      const struct sockaddr *dst, socklen_t len,
			      const struct ubs_svc_policy *pol)
{
	struct ubt_board *b;
	struct ubt_board_key *k = &s->board_key;
	uint8_t a[16];
	uint16_t fam, port;
	uint64_t db_id;
	int h, db, slot;

	if (ubs_config.no_board || ubs_ctl_board(&b) < 0 ||
	    b->ring_size != (uint64_t)pol->ring_kib * 1024 ||
	    !key_addr(dst, len, &fam, a, &port) || addr_unspec(fam, a))
		return false;
	memset(k, 0, sizeof(*k));
	k->netns = sock_netns(fd);
	if (!k->netns || ubs_ctl_listener_board(fam, a, port, k->netns,
						b->id) != 1)
		return false;
	/* The slot first: with none free (or no doorbell) the daemon's way,
	 * whose request must go before the connect. */
	db = ubs_ctl_doorbell_known(&db_id, &s->own_note);
	slot = db < 0 ? db : ubt_board_chan_create(b, &s->ch, db, db_id);
	if (slot < 0) {
		ubs_dbg("fd %d: no board slot (%s): through ubsd", fd,
			strerror(-slot));
		return false;
	}
	h = ubt_board_intent(b, k->netns, fam, a, port);
	if (h < 0) {
		ubt_chan_close(&s->ch);
		ubt_board_slot_put(b, (uint32_t)slot);
		return false;
	}
	k->family = fam;
	k->sport = port;
	memcpy(k->saddr, a, 16);
	s->board = b;
	s->board_slot = slot;
	s->board_intent = h;
	return true;
}

void sock_board_connect_post(struct sock *s, int fd)
{
	struct ubt_board *b = s->board;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	uint16_t fam;
	int slot = s->board_slot, r = -EPROTO;

	if (ubs_real.getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
	    key_addr((struct sockaddr *)&ss, sl, &fam, s->board_key.caddr,
		     &s->board_key.cport) && fam == s->board_key.family)
		r = ubt_board_post(b, &s->board_key, (uint32_t)slot);
	/* After the post: a server sees the intent or the post, never
	 * neither. */
	ubt_board_intent_end(b, s->board_intent);
	s->board_intent = -1;
	if (r == 0) {
		s->board_posted = true;
		return;
	}
	ubt_chan_close(&s->ch);
	ubt_board_slot_put(b, (uint32_t)slot);
	s->board = NULL;
	s->board_slot = -1;
	/* A tombstone: the server went on without us (TCP).  Anything else
	 * (a full bucket): no server will look for us on the board, nor
	 * has the daemon an early request of ours: TCP too. */
	s->board_refused = true;
	ubs_dbg("fd %d: no post on the board (%s): TCP", fd, strerror(-r));
}

void sock_board_connect_abort(struct sock *s)
{
	struct ubt_board *b = s->board;

	if (!b)
		return;
	if (s->board_intent >= 0)
		ubt_board_intent_end(b, s->board_intent);
	s->board_intent = -1;
	if (s->board_posted) {
		ubt_board_unpost(b, &s->board_key, (uint32_t)s->board_slot);
		ubt_chan_decide(&s->ch, UBT_CHAN_TCP);
		s->board_posted = false;
	}
	if (s->board_slot >= 0) {       /* taken before the connect */
		ubt_chan_close(&s->ch);
		ubt_board_slot_put(b, (uint32_t)s->board_slot);
		s->board_slot = -1;
	}
	s->board = NULL;
}

/*
 * The client's channel turned UB (the server attached): find the
 * server's doorbell, then wake whatever of it may sleep on our rings (it
 * may have gone to sleep before we could ring it).  Called after each
 * data call until then (io.c), and before a wait.
 */
void sock_board_check(struct sock *s)
{
	atomic_thread_fence(memory_order_seq_cst);
	if (ubt_chan_state(&s->ch) != UBT_CHAN_UB)
		return;
	pthread_mutex_lock(&s->mu);
	if (s->board_wait && sock_demote_pending(s)) {
		/* Demoted by the server: refused at once (ubsd took the post
		 * back for us, or the server's policy is off: it read
		 * nothing), or later (an exec): the next call sends what it
		 * did not read over the kernel socket. */
		s->board_wait = false;
		board_count(s, atomic_load(&s->tx->shm->tail) > 0,
			    UBS_STAT_TCP_PEER_TCP);
	} else if (s->board_wait) {
		board_count(s, true, -1);
		if (sock_peer_db(s) < 0) {
			/* No way to wake the server: back to TCP, losing
			 * nothing (the next call settles it). */
			ubt_chan_demote(&s->ch);
		} else {
			ubt_chan_wake_peer(&s->ch);
		}
		s->board_wait = false;
	}
	pthread_mutex_unlock(&s->mu);
}

/* The kernel connection is made: UB now, through the posted channel. */
int sock_board_settle(struct sock *s, int fd)
{
	sock_bind_chan(s);
	s->board_due_ns = mono_ns() + BOARD_TAKE_MS * 1000000ull;
	s->board_wait = true;
	if (ubt_chan_state(&s->ch) == UBT_CHAN_UNDECIDED)
		pend_add(s);
	atomic_store(&s->state, SK_UB);
	pthread_mutex_unlock(&s->mu);
	ep_sock_adopt(s, fd);
	s->cslot = ubs_conn_open(fd, 1, s->ch.seg.id);
	ubs_dbg("fd %d: connected over UB (board slot %d)", fd, s->board_slot);
	sock_board_check(s);
	return SK_UB;
}

/* ------------------------------------------------------------- server */

/* The key of accepted socket fd of listener ls; false if it has none. */
static bool accepted_key(struct sock *ls, int fd, struct ubt_board_key *k)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	uint16_t f1, f2;

	memset(k, 0, sizeof(*k));
	k->netns = ls->netns;
	if (ubs_real.getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
	    !key_addr((struct sockaddr *)&ss, sl, &f1, k->saddr, &k->sport))
		return false;
	sl = sizeof(ss);
	if (ubs_real.getpeername(fd, (struct sockaddr *)&ss, &sl) < 0 ||
	    !key_addr((struct sockaddr *)&ss, sl, &f2, k->caddr, &k->cport) ||
	    f1 != f2)
		return false;
	k->family = f1;
	return true;
}

int sock_board_accept(struct sock *ls, int fd, int flags, bool on,
		      const struct ubs_svc_policy *pol)
{
	struct ubt_board *b;
	struct ubt_board_key k;
	struct sock *s;
	uint64_t db_id;
	int slot, db, r;

	if (!ls->netns || ubs_ctl_board(&b) < 0 || !accepted_key(ls, fd, &k))
		return 0;
	slot = ubt_board_take_wait(b, &k, BOARD_WAIT_NS);
	if (slot < 0)
		return 0;
	s = sock_new(fd);
	if (!s) {
		ubt_board_slot_put(b, (uint32_t)slot);
		return -ENOMEM;
	}
	db = ubs_ctl_doorbell_known(&db_id, &s->own_note);
	r = db < 0 ? db : ubt_board_chan_attach(b, &s->ch, (uint32_t)slot, db,
						db_id);
	if (r < 0) {
		/* A slot we cannot use (a hostile neighbour wrote it):
		 * nothing more can be done for its client. */
		ubt_board_slot_put(b, (uint32_t)slot);
		free(s);
		return r;
	}
	s->board = b;
	s->board_slot = slot;
	s->board_posted = true;
	sock_bind_chan(s);
	if (ubt_chan_decide(&s->ch, UBT_CHAN_UB) != UBT_CHAN_UB) {
		/* The client closed first and sent its bytes over TCP. */
		ubt_chan_release(&s->ch);
		ubt_chan_close(&s->ch);
		ubt_board_slot_put(b, (uint32_t)slot);
		free(s);
		return -ECONNREFUSED;
	}
	r = sock_peer_db(s);
	if (!on || r < 0) {
		/* Policy off here (or no doorbell to wake the client): the
		 * client sends what it wrote over the kernel socket. */
		ubt_chan_demote(&s->ch);
		ubs_dbg("fd %d: board connection demoted (%s)", fd,
			on ? "no doorbell of the client" : "policy off");
	}
	s->spin_ns = (int64_t)pol->spin_us * 1000;
	s->nonblock = flags & SOCK_NONBLOCK;
	atomic_store(&s->state, SK_UB);
	if (sock_install(fd, s) < 0) {
		ubt_chan_demote(&s->ch);
		ubt_chan_release(&s->ch);
		ubt_chan_close(&s->ch);
		ubt_board_slot_put(b, (uint32_t)slot);
		free(s);
		return -EMFILE;
	}
	sock_count_ub(s, fd, 0);
	ubs_stats_add(UBS_STAT_UB_BOARD, 1);
	ubs_dbg("fd %d: accepted over UB (board slot %d)", fd, slot);
	return 1;
}

/* ------------------------------------------------------------ closing */

/*
 * The last fd of s in this process closes (fd still open).  A client
 * whose post nobody took yet takes it back: the channel goes TCP and the
 * bytes written go over the kernel socket.  Returns true if it did (the
 * caller then skips the UB teardown).
 */
bool sock_board_close(struct sock *s, int fd)
{
	if (!s->board || !s->board_posted || s->ch.side != 0)
		return false;
	{
		/* The server is about to accept, most likely: give it a
		 * moment to take the connection over UB (what was written
		 * is read there, then EOF), as a kernel close would not
		 * change how the connection goes either. */
		const struct timespec tick = { 0, 200000 };

		for (int i = 0; i < BOARD_CLOSE_WAIT_MS * 5 &&
		     ubt_chan_state(&s->ch) == UBT_CHAN_UNDECIDED; i++)
			nanosleep(&tick, NULL);
	}
	if (ubt_chan_decide(&s->ch, UBT_CHAN_TCP) != UBT_CHAN_TCP) {
		board_count(s, !sock_demote_pending(s), UBS_STAT_TCP_PEER_TCP);
		return false;
	}
	board_count(s, false, UBS_STAT_TCP_NO_CHANNEL);
	if (s->have_chan)
		sock_resend_tx(s, fd);
	ubt_board_unpost(s->board, &s->board_key, (uint32_t)s->board_slot);
	return true;
}

/* s is freed: the last holder of this side gives its slot reference. */
void sock_board_free(struct sock *s)
{
	if (s->pending)
		pend_del(s);
	if (!s->board)
		return;
	sock_board_counted(s);
	if (!s->board_released)
		s->board_holds = ubt_chan_release(&s->ch);
	if (s->board_holds == 0)
		ubt_board_slot_put(s->board, (uint32_t)s->board_slot);
	s->board = NULL;
}

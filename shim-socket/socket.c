/* SPDX-License-Identifier: MIT */
/*
 * socket.c - connection set-up and teardown of the socket shim: listen,
 * accept, connect, the decision UB or TCP, close/shutdown/dup/fork.
 *
 * The attach protocol (DESIGN.md): a preloaded server registers each
 * listening socket with ubsd; on accept it creates the connection's
 * channel and publishes it under the socket (ubsd reads the 4-tuple from
 * the kernel).  A preloaded client whose connect() went to a possible UB
 * listener (the policy page says so, no syscall) asks ubsd for the
 * channel of its socket once connected, attaches, and decides the
 * connection by CAS UNDECIDED->UB in the channel header.  The server
 * decides TCP (CAS UNDECIDED->TCP) when bytes arrive on the kernel socket
 * or when it must speak first and no client attached within
 * UBS_FIRST_SEND_WAIT_MS.  Whatever fails, both ends are on TCP.
 *
 * Between processes of one uid in one network namespace, connect and
 * accept meet on the uid's board instead (board.c), without ubsd; the
 * rendezvous above is the way for everything else.
 *
 * The kernel connection stays open beside the channel: its FIN is the
 * end-of-stream signal of a peer that died without closing its rings.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/close_range.h>
#include <time.h>

#include "sock.h"
#include "ctl.h"
#include "policy.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Is fd a TCP socket?  (One syscall; only on listen/connect.) */
static bool is_tcp(int fd)
{
	int proto = 0;
	socklen_t len = sizeof(proto);

	return ubs_real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto,
				   &len) == 0 && proto == IPPROTO_TCP;
}

/* Address and port of a sockaddr, for policy checks.  Returns family or
 * 0 if not AF_INET/AF_INET6. */
static int sa_parts(const struct sockaddr *sa, socklen_t len,
		    const void **addr, uint16_t *port)
{
	if (!sa)
		return 0;
	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const void *)sa;

		*addr = &in->sin_addr;
		*port = ntohs(in->sin_port);
		return AF_INET;
	}
	if (sa->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		*addr = &in6->sin6_addr;
		*port = ntohs(in6->sin6_port);
		return AF_INET6;
	}
	return 0;
}

/* This service's policy, or false when it says "stay on TCP". */
static bool policy_on(struct ubs_svc_policy *p)
{
	if (ubs_config.disabled || ubs_config.tcp_only ||
	    ubs_ctl_policy(p) < 0 || !p->accel)
		return false;
	return true;
}

static void set_spin(struct sock *s, const struct ubs_svc_policy *p)
{
	s->spin_ns = (int64_t)p->spin_us * 1000;
}

int sock_peer_db(struct sock *s)
{
	struct ubt_note *note = NULL;
	uint64_t id;
	int fd;

	if (s->peer_db)
		return 0;
	/* Read once: the header is the peer's to scribble on. */
	id = ubt_chan_peer_db(&s->ch);
	fd = sock_peer_db_get(id, &note);
	if (fd < 0) {
		ubs_info("fd %d: no doorbell of the peer (%s)", s->fd,
			 strerror(-fd));
		return fd;
	}
	ubt_chan_set_peer_efd(&s->ch, fd);
	/* From now on each ring change posts the endpoint the other side
	 * named to that side's page (ours: only our own wake-ups). */
	if (s->ch.side == 0)
		ubt_chan_set_notes(&s->ch, s->own_note, note);
	else
		ubt_chan_set_notes(&s->ch, note, s->own_note);
	s->peer_db = id;
	return 0;
}

/* Bind the sock's ring pointers after create/attach. */
static void bind_chan(struct sock *s)
{
	s->have_chan = true;
	s->rx = ubt_chan_rx(&s->ch, 0);
	s->tx = ubt_chan_tx(&s->ch, 0);
}

/* Count a decided connection; why: the reason counter of a TCP one. */
/*
 * A connection was decided: count it, and enter it in the connection
 * table (`ubsctl conns`): s's live slot for UB, a line of the TCP
 * history with the reason (why, a counter id; -1 none) for TCP.  side 0
 * accepted, 1 connected.
 */
static void count_conn(struct sock *s, bool ub, int why, int fd, int side)
{
	ubs_stats_add(ub ? UBS_STAT_UB_CONNS : UBS_STAT_TCP_CONNS, 1);
	if (!ub && why >= 0)
		ubs_stats_add((enum ubs_stat_id)why, 1);
	if (ub)
		s->cslot = ubs_conn_open(fd, side, s->ch.seg.id);
	else
		ubs_conn_tcp(fd, side, why >= 0 ? (enum ubs_stat_id)why :
			     UBS_STAT_TCP_CONNS);
}

void sock_bind_chan(struct sock *s)
{
	bind_chan(s);
}

void sock_count_ub(struct sock *s, int fd, int side)
{
	count_conn(s, true, -1, fd, side);
}

void sock_count_tcp(int fd, int why, int side)
{
	count_conn(NULL, false, why, fd, side);
}

/* ---------------------------------------------------- socket, bind */

UBS_EXPORT int socket(int domain, int type, int protocol)
{
	int err = ubs_enter(UBS_STAT_SOCKET);

	return err ? ubs_fail(err) : ubs_real.socket(domain, type, protocol);
}

UBS_EXPORT int bind(int fd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
	int err = ubs_enter(UBS_STAT_BIND);

	return err ? ubs_fail(err) : ubs_real.bind(fd, addr, len);
}

/* ------------------------------------------------------------ listen */

UBS_EXPORT int listen(int fd, int backlog)
{
	struct ubs_svc_policy pol;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	const void *addr;
	uint16_t port;
	struct sock *s;
	int err = ubs_enter(UBS_STAT_LISTEN), r, fam;

	if (err)
		return ubs_fail(err);
	r = ubs_real.listen(fd, backlog);
	if (r < 0 || ubs_guard || sock_slot_used(fd))
		return r;
	err = errno;
	ubs_guard_enter();
	if (policy_on(&pol) && is_tcp(fd) &&
	    ubs_real.getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
	    (fam = sa_parts((struct sockaddr *)&ss, sl, &addr, &port)) &&
	    !ubs_ctl_excluded(fam, addr, port) &&
	    ubs_ctl_listen(fd, true) == 0 && (s = sock_new(fd))) {
		atomic_store(&s->state, SK_LISTEN);
		s->netns = sock_netns(fd);
		if (sock_install(fd, s) < 0)
			free(s);
		ubs_dbg("fd %d: UB listener on port %u", fd, port);
	}
	ubs_guard_exit();
	errno = err;
	return r;
}

/* After a daemon restart, register again every listener we hold. */
static void relisten_one(int fd, struct sock *s, void *arg)
{
	(void)arg;
	if (atomic_load(&s->state) == SK_LISTEN) {
		ubs_ctl_listen_locked(fd);
		s->accept_told = false;         /* a new daemon: again */
	}
}

static void relisten_all(void)
{
	sock_for_each(relisten_one, NULL);
}

/* ------------------------------------------------------------ accept */

/*
 * A connection accepted on a UB listener: create its channel, offer it
 * through ubsd, and track the socket as UNDECIDED.  Any failure leaves a
 * plain TCP socket.
 */
static void accepted(struct sock *ls, int fd, int flags)
{
	struct ubs_svc_policy pol;
	struct sock *s;
	uint64_t ring, db_id;
	bool on = policy_on(&pol);
	int r, db;

	/* A client of this process's board first (board.c): it posted its
	 * channel before the server could accept. */
	r = sock_board_accept(ls, fd, flags, on, &pol);
	if (r > 0)
		return;
	if (r < 0) {
		count_conn(NULL, false, UBS_STAT_TCP_PEER_TCP, fd, 0);
		return;
	}
	if (!on)
		return;
	s = sock_new(fd);
	if (!s)
		return;
	ring = (uint64_t)pol.ring_kib * 1024;
	if (ring < 4096 || (ring & (ring - 1)))
		ring = 1 << 20;
	db = ubs_ctl_doorbell(&db_id, &s->own_note);
	r = db < 0 ? db : ubt_chan_create_stream_db(&s->ch, ring, db, db_id);
	if (r) {
		ubs_info("fd %d: no channel (%s): TCP", fd, strerror(-r));
		if (s->ch.seg.base)
			ubt_chan_close(&s->ch);
		free(s);
		count_conn(NULL, false, -1, fd, 0);
		return;
	}
	r = ubs_ctl_publish(fd, s->ch.seg.fd);
	/* The mapping is all this side needs of the segment. */
	ubs_fd_release(s->ch.seg.fd);
	s->ch.seg.fd = -1;
	if (r) {
		ubt_chan_close(&s->ch);
		free(s);
		count_conn(NULL, false, UBS_STAT_TCP_NO_DAEMON, fd, 0);
		return;
	}
	bind_chan(s);
	set_spin(s, &pol);
	s->nonblock = flags & SOCK_NONBLOCK;
	s->undecided_until_ns = now_ns() +
		(uint64_t)ubs_config.first_send_wait_ms * 1000000ull;
	atomic_store(&s->state, SK_UNDECIDED);
	if (sock_install(fd, s) < 0) {
		ubt_chan_close(&s->ch);
		free(s);
	}
}

/*
 * The program waits for connections on listener s (accept, or s in a
 * poll, select or epoll set): tell ubsd once, which from then on names
 * our board for it, so that clients of the board post their connections
 * there.  Not before: the process that called listen() may never accept
 * (nginx's master) and its children may change uid first (nginx's
 * workers, when started as root); a client would post where nobody
 * looks (it would be handed back, TCP).
 */
void sock_accepting(struct sock *s, int fd)
{
	bool g;

	if (atomic_load(&s->state) != SK_LISTEN || s->accept_told)
		return;
	s->accept_told = true;
	if (__builtin_expect(ubs_listen_pending, 0) && !ubs_guard)
		sock_relisten_now();
	g = ubs_guard_enter();  /* poll's gathering holds it already */
	ubs_ctl_accepting(fd);
	if (g)
		ubs_guard_exit();
}

static int do_accept(int lfd, __SOCKADDR_ARG addr, socklen_t *len,
		     int flags, bool four)
{
	struct sock *ls;
	int fd, err;

	if (__builtin_expect(ubs_listen_pending, 0) && !ubs_guard)
		sock_relisten_now();
	if (!ubs_guard && sock_slot_used(lfd) && (ls = sock_get(lfd))) {
		sock_accepting(ls, lfd);
		sock_put(ls);
	}

	fd = four ? ubs_real.accept4(lfd, addr, len, flags) :
		ubs_real.accept(lfd, addr, len);
	if (fd < 0 || ubs_guard || !(ls = sock_get(lfd)))
		return fd;
	err = errno;
	if (atomic_load(&ls->state) == SK_LISTEN) {
		ubs_guard_enter();
		accepted(ls, fd, four ? flags : 0);
		ubs_guard_exit();
	}
	sock_put(ls);
	errno = err;
	return fd;
}

UBS_EXPORT int accept(int fd, __SOCKADDR_ARG addr, socklen_t *restrict len)
{
	int err = ubs_enter(UBS_STAT_ACCEPT);

	return err ? ubs_fail(err) : do_accept(fd, addr, len, 0, false);
}

UBS_EXPORT int accept4(int fd, __SOCKADDR_ARG addr, socklen_t *restrict len,
		       int flags)
{
	int err = ubs_enter(UBS_STAT_ACCEPT4);

	return err ? ubs_fail(err) : do_accept(fd, addr, len, flags, true);
}

/* ----------------------------------------------------------- connect */

UBS_EXPORT int connect(int fd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
	struct ubs_svc_policy pol;
	const void *a;
	uint16_t port;
	struct sock *s = NULL;
	int err = ubs_enter(UBS_STAT_CONNECT), r, fam, saved;

	if (err)
		return ubs_fail(err);
	if (ubs_guard || sock_slot_used(fd))
		return ubs_real.connect(fd, addr, len);
	ubs_guard_enter();
	fam = sa_parts(addr.__sockaddr__, len, &a, &port);
	if (fam && policy_on(&pol) && ubs_ctl_listener_maybe(fam, a, port) &&
	    !ubs_ctl_excluded(fam, a, port) && is_tcp(fd)) {
		s = sock_new(fd);
		if (s) {
			set_spin(s, &pol);
			s->nonblock = ubs_real.fcntl(fd, F_GETFL) & O_NONBLOCK;
		}
	}
	ubs_guard_exit();
	/* Ask for the channel before connecting: the request is then at
	 * ubsd before the server can accept, which lets ubsd tell a server
	 * at once that no preloaded client is coming (see ubsd/README.md,
	 * early requests).  The answer is read at first use, so the round
	 * trip overlaps the handshake and what the program does meanwhile. */
	if (s) {
		ubs_guard_enter();
		/* A server on this process's board: the board's way
		 * (board.c), no daemon. */
		if (!sock_board_connect_begin(s, fd, addr.__sockaddr__, len,
					      &pol))
			s->req_token = ubs_ctl_request_send(fd,
						ubs_config.connect_wait_ms);
		ubs_guard_exit();
	}
	r = ubs_real.connect(fd, addr, len);
	if (!s)
		return r;
	saved = errno;
	if (r == 0 || errno == EINPROGRESS || errno == EINTR) {
		if (s->board) {
			ubs_guard_enter();
			sock_board_connect_post(s, fd);
			ubs_guard_exit();
		}
		atomic_store(&s->state, SK_CONNECTING);
		if (sock_install(fd, s) < 0) {
			if (s->req_token)
				ubs_ctl_request_cancel(s->req_token);
			sock_board_connect_abort(s);
			free(s);
		} else if (r == 0) {
			ubs_guard_enter();
			sock_settle_connect(s, fd, true);
			ubs_guard_exit();
		}
	} else {
		if (s->req_token)
			ubs_ctl_request_cancel(s->req_token);
		sock_board_connect_abort(s);
		free(s);
	}
	errno = saved;
	return r;
}

/*
 * Move the tracking of every fd of s back to plain TCP: epoll
 * registrations return to the kernel, the slots are cleared, the channel
 * is released.  Called with s referenced (not with its mutex held).
 */
struct drop_arg {
	struct sock *s;
	int fds[16];
	int n;
};

static void collect_fds(int fd, struct sock *s, void *arg)
{
	struct drop_arg *d = arg;

	if (s == d->s && d->n < 16)
		d->fds[d->n++] = fd;
}

void sock_to_tcp(struct sock *s, int fd)
{
	struct drop_arg d = { .s = s };

	(void)fd;
	ep_sock_rehome(s, fd);
	sock_for_each(collect_fds, &d);
	for (int i = 0; i < d.n; i++) {
		struct sock *o = sock_detach(d.fds[i]);

		if (o == s)
			sock_put(o);
		else if (o)     /* raced with an install: put it back */
			sock_install(d.fds[i], o), sock_put(o);
	}
}

/*
 * A client's connect has completed (or may have; with may_wait, wait for
 * it): ask ubsd for the channel and decide.  Returns the state now held (SK_UB, or 0 after the
 * connection went TCP), or SK_CONNECTING when the kernel connection is
 * not established yet (nothing decided).
 */
int sock_settle_connect(struct sock *s, int fd, bool may_wait)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	char why[96] = "";
	int fds[1], r, st, db, reason = -1;
	uint64_t db_id;

	pthread_mutex_lock(&s->mu);
	st = atomic_load(&s->state);
	if (st != SK_CONNECTING) {
		pthread_mutex_unlock(&s->mu);
		return st;
	}
	/* may_wait: a blocking write, which the kernel holds until the
	 * connection is made (or fails), as long as SO_SNDTIMEO allows. */
	do
		r = ubs_real.poll(&p, 1, may_wait ? s->sndtimeo_ms : 0);
	while (r < 0 && errno == EINTR && may_wait);
	if (r == 0 || (r > 0 && !(p.revents & (POLLOUT | POLLERR | POLLHUP)))) {
		pthread_mutex_unlock(&s->mu);
		return SK_CONNECTING;
	}
	if (r < 0 || (p.revents & (POLLERR | POLLHUP))) {
		snprintf(why, sizeof(why), "connect failed");
		if (s->req_token)
			ubs_ctl_request_cancel(s->req_token);
		s->req_token = 0;
		sock_board_connect_abort(s);
		goto tcp;
	}
	if (s->board_posted)
		return sock_board_settle(s, fd);
	if (s->board_refused) {
		snprintf(why, sizeof(why), "the server went on without us");
		reason = UBS_STAT_TCP_NO_CHANNEL;
		goto tcp;
	}
	if (s->req_token) {
		r = ubs_ctl_request_finish(s->req_token,
					   ubs_config.connect_wait_ms, fds, why,
					   sizeof(why));
		s->req_token = 0;
	} else {
		r = ubs_ctl_request(fd, ubs_config.connect_wait_ms, fds, why,
				    sizeof(why));
	}
	if (r) {
		reason = r == -ENOENT ? UBS_STAT_TCP_NO_CHANNEL :
			UBS_STAT_TCP_NO_DAEMON;
		goto tcp;
	}
	db = ubs_ctl_doorbell(&db_id, &s->own_note);
	r = db < 0 ? db : ubt_chan_attach_db(&s->ch, fds[0], db, db_id);
	if (r) {
		snprintf(why, sizeof(why), "attach: %s", strerror(-r));
		ubs_fd_release(fds[0]);
		goto tcp;
	}
	/* The mapping is all we need of the segment. */
	ubs_fd_release(s->ch.seg.fd);
	s->ch.seg.fd = -1;
	bind_chan(s);
	r = sock_peer_db(s);
	if (r) {
		snprintf(why, sizeof(why), "no doorbell of the server: %s",
			 strerror(-r));
		reason = UBS_STAT_TCP_NO_DAEMON;
		ubt_chan_decide(&s->ch, UBT_CHAN_TCP);
		goto tcp;
	}
	if (ubt_chan_decide(&s->ch, UBT_CHAN_UB) != UBT_CHAN_UB) {
		snprintf(why, sizeof(why), "server chose TCP");
		reason = UBS_STAT_TCP_PEER_TCP;
		goto tcp;
	}
	atomic_store(&s->state, SK_UB);
	pthread_mutex_unlock(&s->mu);
	ep_sock_adopt(s, fd);
	count_conn(s, true, -1, fd, 1);
	ubs_dbg("fd %d: connected over UB", fd);
	return SK_UB;
tcp:
	atomic_store(&s->state, 0);
	pthread_mutex_unlock(&s->mu);
	ubs_dbg("fd %d: TCP (%s)", fd, why);
	count_conn(s, false, reason, fd, 1);
	sock_to_tcp(s, fd);
	return 0;
}

/* Is there something on the kernel socket: 1 bytes, 0 nothing, -1 FIN
 * or error (recorded on s). */
int sock_probe_kernel(struct sock *s, int fd)
{
	char c;
	ssize_t n = ubs_real.recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

	if (n > 0 && s->have_chan && atomic_load(&s->state) == SK_UB &&
	    !sock_demote_pending(s)) {
		/* The peer wrote past its library (a raw syscall, stdio,
		 * io_uring...): back to TCP for both, by the peer's flag:
		 * we drain its ring bytes first, then read the kernel. */
		ubs_stats_add(UBS_STAT_UB_BYPASS, 1);
		ubs_err("fd %d: bytes on the kernel socket of a UB connection "
			"(written past the library): demoting to TCP", fd);
		ubt_chan_demote_side(&s->ch, !s->ch.side);
	}
	if (n > 0) {
		atomic_store(&s->kin, true);
		return 1;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n < 0 && !s->closed) {
		s->so_error = errno;    /* a real reset of the kernel socket */
		s->closed = true;
	}
	atomic_store(&s->peer_fin, true);
	return -1;
}

bool sock_peer_gone(struct sock *s)
{
	return ubt_ring_cclosed(s->tx) ||
		(atomic_load(&s->peer_fin) && !ubt_ring_pclosed(s->rx));
}

void sock_update_reset(struct sock *s)
{
	if (s->closed || !s->have_chan || !sock_peer_gone(s))
		return;
	if (ubt_ring_readable(s->tx) > 0) {
		s->so_error = ECONNRESET;
		s->closed = true;
	}
}

int sock_take_error(struct sock *s)
{
	return __atomic_exchange_n(&s->so_error, 0, __ATOMIC_ACQ_REL);
}

/*
 * An accepted connection still UNDECIDED: settle it if it can be.
 * for_write: the server is about to send first, so wait (bounded) for a
 * client to attach, then choose TCP.  Returns SK_UB, 0 (now TCP) or
 * SK_UNDECIDED (nothing known yet, reads only).
 */
int sock_settle_undecided(struct sock *s, int fd, bool for_write)
{
	uint32_t cs;
	int k;

	for (;;) {
		cs = ubt_chan_state(&s->ch);
		if (cs == UBT_CHAN_UB)
			goto ub;
		if (cs == UBT_CHAN_TCP)
			goto tcp;
		k = sock_probe_kernel(s, fd);
		if (k != 0)
			break;          /* bytes or FIN on TCP: a plain peer */
		if (!for_write || now_ns() >= s->undecided_until_ns)
			break;
		{
			/* ubsd decides TCP in the channel as soon as it knows
			 * no preloaded client is coming: look often. */
			struct pollfd p = { .fd = fd, .events = POLLIN };
			const struct timespec ts = { 0, 200000 };

			ubs_real.ppoll(&p, 1, &ts, NULL);
		}
	}
	if (!for_write && k == 0)
		return SK_UNDECIDED;
	cs = ubt_chan_decide(&s->ch, UBT_CHAN_TCP);
	if (cs == UBT_CHAN_UB)
		goto ub;
tcp:
	pthread_mutex_lock(&s->mu);
	if (atomic_load(&s->state) == SK_UNDECIDED) {
		atomic_store(&s->state, 0);
		pthread_mutex_unlock(&s->mu);
		ubs_dbg("fd %d: accepted connection stays TCP", fd);
		count_conn(s, false, UBS_STAT_TCP_PLAIN_PEER, fd, 0);
		sock_to_tcp(s, fd);
		return 0;
	}
	pthread_mutex_unlock(&s->mu);
	return atomic_load(&s->state);
ub:
	sock_promote(s);
	return SK_UB;
}

static uint64_t ring_head(const struct ubt_ring *r)
{
	return atomic_load_explicit(&r->shm->head, memory_order_acquire);
}

bool sock_trim_idle(struct sock *s)
{
	struct timespec ts;
	uint64_t now;
	bool pending = false;

	if (!s->have_chan || atomic_load(&s->state) != SK_UB)
		return false;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	/* Either end may trim a ring (ubt_ring_trim takes both locks):
	 * so a peer that sleeps elsewhere does not keep our pages. */
	for (int i = 0; i < 2; i++) {
		struct ubt_ring *r = i ? s->tx : s->rx;
		uint64_t h = ring_head(r);

		if (h == s->trim_head[i])
			continue;               /* nothing since the last trim */
		if (h != s->seen_head[i]) {
			s->seen_head[i] = h;    /* moving: not idle yet */
			s->seen_ms[i] = now;
			pending = true;
			continue;
		}
		if (now - s->seen_ms[i] < UBS_TRIM_IDLE_MS ||
		    ubt_ring_readable(r) != 0) {
			pending = true;
			continue;
		}
		if (ubt_ring_trim(r) > 0)
			ubs_stats_add(UBS_STAT_UB_TRIMS, 1);
		s->trim_head[i] = h;
	}
	return pending;
}

bool sock_promote(struct sock *s)
{
	if (ubt_chan_state(&s->ch) != UBT_CHAN_UB)
		return false;
	if (atomic_load(&s->state) != SK_UNDECIDED)
		return true;
	/* The client's doorbell first: whoever sees SK_UB may ring it.
	 * Without it: a client that has closed its rings, or died (FIN),
	 * has nobody left to wake (its session, and so its doorbell, may
	 * be gone already); otherwise (ubsd gone since) this side demotes:
	 * the next call on the socket goes back to TCP, losing nothing (the
	 * callers may hold an epoll set's lock: no more than the flag). */
	pthread_mutex_lock(&s->mu);
	if (atomic_load(&s->state) == SK_UNDECIDED) {
		if (sock_peer_db(s) < 0 &&
		    !(ubt_ring_pclosed(s->rx) && ubt_ring_cclosed(s->tx)) &&
		    !atomic_load(&s->peer_fin) &&
		    sock_probe_kernel(s, s->fd) >= 0)
			ubt_chan_demote(&s->ch);
		atomic_store(&s->state, SK_UB);
		count_conn(s, true, -1, s->fd, 0);
		ubs_dbg("fd %d: accepted connection over UB", s->fd);
	}
	pthread_mutex_unlock(&s->mu);
	return true;
}

/* ------------------------------------------------------------ close */

/*
 * The process's last fd of s is being closed.  Release our hold on the
 * channel; the last holder anywhere shuts its side down (the peer reads
 * EOF after the data, its writes fail).  A listener is unregistered.
 */
void sock_last_close(struct sock *s)
{
	int st = atomic_load(&s->state);

	if (s->req_token) {     /* closed before its answer was read */
		ubs_ctl_request_cancel(s->req_token);
		s->req_token = 0;
	}

	if (s->have_chan) {
		for (int i = 0; i < 2; i++) {
			struct ubt_ring *r = i ? s->tx : s->rx;

			ubs_stats_add(UBS_STAT_UB_DOORBELLS, r->st.doorbells);
			ubs_stats_add(UBS_STAT_UB_SLEEPS, r->st.sleeps);
			ubs_stats_add(UBS_STAT_UB_SPIN_HITS, r->st.spin_hits);
		}
	}

	ubs_conn_close(s->cslot);
	s->cslot = NULL;
	/* The last holder anywhere ends it (a forked child may still hold
	 * it: an UNDECIDED connection is then the child's to settle). */
	if ((s->have_chan && (st == SK_UB || st == SK_UNDECIDED)) ||
	    s->board_posted) {
		s->board_holds = ubt_chan_release(&s->ch);
		s->board_released = true;
		if (s->board_holds > 0) {
			/* held elsewhere still */
		} else if (sock_board_close(s, s->fd)) {
			/* A post nobody took: TCP, with the bytes. */
		} else {
			if (st == SK_UNDECIDED)
				ubt_chan_decide(&s->ch, UBT_CHAN_TCP);
			ubs_dbg("last close of a UB connection: rings shut "
				"down");
			ubt_chan_shutdown(&s->ch);
		}
	}
	ep_sock_gone(s);
}

/*
 * close() of the last fd of a connection another thread is using: keep
 * the kernel socket open on a library fd and the channel up until that
 * thread's call returns (sock_put of the last reference runs
 * sock_last_close).  Waiters are woken to pick up the new fd.  Returns
 * false if no fd could be kept (then the close is done at once).
 */
static bool defer_close(struct sock *s, int fd)
{
	int keep = ubs_real.fcntl(fd, F_DUPFD_CLOEXEC, 0);

	if (keep < 0)
		return false;
	s->fd = ubs_fd_high(keep);
	s->closing = true;
	atomic_store(&s->moved, 1);
	if (s->have_chan)
		ubt_chan_wake_self(&s->ch);
	return true;
}

UBS_EXPORT int close(int fd)
{
	struct sock *s;
	int err = ubs_enter(UBS_STAT_CLOSE);

	if (err)
		return ubs_fail(err);
	if (ubs_guard) {
		ubs_fd_forget(fd);      /* the library closing its own */
		return ubs_real.close(fd);
	}
	if (ubs_fd_owned(fd))
		return ubs_fail(-EBADF);        /* never the program's */
	ep_fd_closing(fd);
	s = sock_detach(fd);
	if (s) {
		struct drop_arg d = { .s = s };
		int saved;

		if (sock_slots(s) > 0)          /* dup'd: its other fds */
			sock_for_each(collect_fds, &d);
		saved = errno;
		ubs_guard_enter();
		if (d.n > 0) {
			if (s->fd == fd)
				s->fd = d.fds[0];       /* another fd of it */
		} else if (atomic_load(&s->state) == SK_LISTEN) {
			/* A shared listener lives on in the other holders;
			 * the daemon drops ours with our session. */
			if (!s->shared)
				ubs_ctl_listen(fd, false);
			sock_last_close(s);
		} else if (__atomic_load_n(&s->refs, __ATOMIC_ACQUIRE) > 1 &&
			   defer_close(s, fd)) {
			/* Another thread is inside a call on it: as the
			 * kernel keeps the file until that call returns,
			 * the connection lives until the last one ends. */
		} else {
			sock_last_close(s);
		}
		ubs_guard_exit();
		errno = saved;
		sock_put(s);
	}
	return ubs_real.close(fd);
}

/*
 * close_range and closefrom pass over the library's own fds: a program
 * that closes "everything above 2" (at start, or in a child before exec)
 * does not take the library's control socket or doorbells with it.  The
 * program's fds in the range go through close() (which settles what the
 * shim tracks); the library's are skipped.
 */
static int close_span(unsigned first, unsigned last, int flags)
{
	unsigned fd = first;

	while (fd <= last) {
		int own = ubs_fd_next_owned((int)fd, last > INT32_MAX ?
					    INT32_MAX : (int)last);
		unsigned end = own < 0 ? last : (unsigned)own - 1;

		if (own != (int)fd) {
			/* Tracked sockets first, one by one; the rest in one
			 * call. */
			for (unsigned t = fd; t <= end && t < 1u << 20; t++)
				if (sock_slot_used((int)t))
					close((int)t);
			ep_forget_range(fd, end);
			if (ubs_real.close_range(fd, end, flags) < 0 &&
			    errno != EBADF)
				return -1;
		}
		if (own < 0 || (unsigned)own >= last)
			break;
		fd = (unsigned)own + 1;
	}
	return 0;
}

UBS_EXPORT int close_range(unsigned first, unsigned last, int flags)
{
	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (ubs_guard || first > last ||
	    (flags & CLOSE_RANGE_CLOEXEC) ||
	    ubs_fd_next_owned((int)(first > INT32_MAX ? INT32_MAX : first),
			      last > INT32_MAX ? INT32_MAX : (int)last) < 0)
		return ubs_real.close_range(first, last, flags);
	return close_span(first, last, flags);
}

UBS_EXPORT void closefrom(int lowfd)
{
	if (lowfd < 0)
		lowfd = 0;
	close_range((unsigned)lowfd, ~0u, 0);
}

UBS_EXPORT int shutdown(int fd, int how)
{
	struct sock *s;
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (ubs_guard || !(s = sock_get(fd)))
		return ubs_real.shutdown(fd, how);
	/* The ring's EOF before the kernel's FIN: a peer that sees the FIN
	 * first would take it for our death. */
	if (atomic_load(&s->state) == SK_UB &&
	    (how == SHUT_WR || how == SHUT_RDWR))
		ubt_ring_close_producer(s->tx);
	r = ubs_real.shutdown(fd, how);
	if (r == 0 && atomic_load(&s->state) == SK_UB) {
		if (how == SHUT_WR || how == SHUT_RDWR)
			s->shut_wr = true;
		if (how == SHUT_RD || how == SHUT_RDWR)
			s->shut_rd = true;
		ep_sock_poke(s);        /* readiness changed here */
	}
	sock_put(s);
	return r;
}

/* -------------------------------------------------------- dup, fcntl */

/* newfd now names the same socket as oldfd: share the sock. */
static int dup_track(int oldfd, int newfd)
{
	struct sock *s, *old;

	if (newfd < 0 || ubs_guard)
		return newfd;
	old = sock_detach(newfd);       /* dup2 over a tracked fd closed it */
	if (old) {
		struct drop_arg d = { .s = old };

		if (sock_slots(old) > 0)
			sock_for_each(collect_fds, &d);
		if (d.n == 0)
			sock_last_close(old);
		sock_put(old);
	}
	s = sock_get(oldfd);
	if (s) {
		sock_install(newfd, s);
		sock_put(s);
	}
	return newfd;
}

UBS_EXPORT int dup(int fd)
{
	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	return dup_track(fd, ubs_real.dup(fd));
}

/*
 * dup2/dup3 over one of the library's own fds (its control socket, a
 * channel's doorbell, an inner epoll set) would close it under the
 * library, and its doorbells would then be written into the program's
 * file: refused with EBUSY (which Linux's dup2 may say when the target
 * number is being set up), once logged.  Returns true when refused.
 */
static bool dup_refused(int fd, int nfd)
{
	static bool said;

	if (fd == nfd || ubs_guard || !ubs_fd_owned(nfd))
		return false;
	if (!__atomic_exchange_n(&said, true, __ATOMIC_RELAXED))
		ubs_err("dup2/dup3 onto fd %d refused: the library uses it "
			"(its fds are the highest; lower RLIMIT_NOFILE use "
			"is unaffected)", nfd);
	errno = EBUSY;
	return true;
}

UBS_EXPORT int dup2(int fd, int nfd)
{
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (dup_refused(fd, nfd))
		return -1;
	if (fd != nfd && !ubs_guard)
		ep_fd_closing(nfd);
	r = ubs_real.dup2(fd, nfd);
	return r < 0 || fd == nfd ? r : dup_track(fd, r);
}

UBS_EXPORT int dup3(int fd, int nfd, int flags)
{
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (dup_refused(fd, nfd))
		return -1;
	if (!ubs_guard)
		ep_fd_closing(nfd);
	r = ubs_real.dup3(fd, nfd, flags);
	return r < 0 ? r : dup_track(fd, r);
}

static int do_fcntl(int fd, int cmd, va_list ap)
{
	struct sock *s;
	long arg = va_arg(ap, long);
	int r;

	r = ubs_real.fcntl(fd, cmd, arg);
	if (r < 0 || ubs_guard)
		return r;
	if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
		return dup_track(fd, r);
	if (cmd == F_SETFL && (s = sock_get(fd))) {
		s->nonblock = arg & O_NONBLOCK;
		sock_put(s);
	}
	return r;
}

UBS_EXPORT int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	va_start(ap, cmd);
	r = do_fcntl(fd, cmd, ap);
	va_end(ap);
	return r;
}

/* The same entry under glibc's large-file name. */
UBS_EXPORT int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

UBS_EXPORT int ioctl(int fd, unsigned long req, ...)
{
	struct sock *s;
	va_list ap;
	void *arg;
	int r;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (ubs_guard || !(s = sock_get(fd)))
		return ubs_real.ioctl(fd, req, arg);
	if (req == FIONBIO) {
		r = ubs_real.ioctl(fd, req, arg);
		if (r == 0)
			s->nonblock = *(int *)arg != 0;
	} else if ((req == FIONREAD || req == TIOCOUTQ) &&
		   atomic_load(&s->state) == SK_UB) {
		int64_t n = req == FIONREAD ? ubt_ring_readable(s->rx) :
			(int64_t)s->tx->size - ubt_ring_writable(s->tx);

		*(int *)arg = n < 0 ? 0 : (int)n;
		r = 0;
	} else {
		r = ubs_real.ioctl(fd, req, arg);
	}
	sock_put(s);
	return r;
}

/* ------------------------------------------------------- sockopts */

UBS_EXPORT int setsockopt(int fd, int level, int name, const void *val,
			  socklen_t len)
{
	struct sock *s;
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	r = ubs_real.setsockopt(fd, level, name, val, len);
	if (r < 0 || ubs_guard || level != SOL_SOCKET ||
	    (name != SO_RCVTIMEO && name != SO_SNDTIMEO) ||
	    len < sizeof(struct timeval) || !(s = sock_get(fd)))
		return r;
	{
		const struct timeval *tv = val;
		long ms = tv->tv_sec * 1000 + (tv->tv_usec + 999) / 1000;

		if (ms > INT32_MAX)
			ms = INT32_MAX;
		if (name == SO_RCVTIMEO)
			s->rcvtimeo_ms = ms ? (int)ms : -1;
		else
			s->sndtimeo_ms = ms ? (int)ms : -1;
	}
	sock_put(s);
	return r;
}

UBS_EXPORT int getsockopt(int fd, int level, int name, void *val,
			  socklen_t *restrict len)
{
	struct sock *s;
	int r;

	if (!ubs_ready())
		return ubs_fail(-ENOSYS);
	if (ubs_guard || !(s = sock_get(fd)))
		return ubs_real.getsockopt(fd, level, name, val, len);
	if (level == SOL_SOCKET && name == SO_ERROR && val && len &&
	    *len >= sizeof(int) && atomic_load(&s->state) == SK_UB) {
		sock_update_reset(s);
		*(int *)val = sock_take_error(s);
		*len = sizeof(int);
		sock_put(s);
		return 0;
	}
	if (level == SOL_SOCKET && name == SO_ERROR &&
	    atomic_load(&s->state) == SK_CONNECTING) {
		/* Settle now: the program is asking whether connect
		 * finished, and it will use the socket next. */
		ubs_guard_enter();
		sock_settle_connect(s, fd, false);
		ubs_guard_exit();
	}
	r = ubs_real.getsockopt(fd, level, name, val, len);
	sock_put(s);
	return r;
}

/* ------------------------------------------------------------ fork */

static void fork_hold(int fd, struct sock *s, void *arg)
{
	int st = atomic_load(&s->state);

	(void)fd;
	(void)arg;
	/* Each slot of a sock is visited; hold once per sock. */
	if (s->have_chan && (st == SK_UB || st == SK_UNDECIDED) &&
	    !s->fork_seen) {
		ubt_chan_hold(&s->ch);
		s->fork_seen = true;
	}
}

static void fork_unmark(int fd, struct sock *s, void *arg)
{
	(void)fd;
	(void)arg;
	s->fork_seen = false;
}

/* A fork child: its inherited UB connections go into its own table (the
 * old slots were in the parent's page, unmapped here). */
static void fork_reslot(int fd, struct sock *s, void *arg)
{
	(void)arg;
	/* A leaf lock another thread may have held over its epoll_ctl. */
	pthread_mutex_init(&s->kr_mu, NULL);
	if (s->cslot) {
		s->cslot = NULL;
		s->cslot = ubs_conn_open(fd, s->ch.side ? 1 : 0,
					 s->ch.seg.id);
	}
}

/* A listener the process forked with is shared: its close in one
 * process does not end it (a pre-fork server's parent closes its copy
 * while the workers accept). */
static void fork_share(int fd, struct sock *s, void *any)
{
	(void)fd;
	if (atomic_load(&s->state) == SK_LISTEN) {
		s->shared = true;
		s->accept_told = false;         /* the child's own session */
		if (any)
			*(bool *)any = true;
	}
}

/*
 * The child's hold on every channel is taken here, in the parent before
 * the fork: taken in the child, it came too late when the parent closed
 * its copy first (a pre-fork server: accept, fork, close in the parent),
 * whose close then released the last hold and shut the rings down under
 * the child.  (A failed fork leaves the extra hold: the connection then
 * ends by the kernel's FIN instead of the rings' close.)
 */
static void sock_atfork_prepare(void)
{
	sock_for_each(fork_hold, NULL);
}

static void sock_atfork_parent(void)
{
	sock_for_each(fork_unmark, NULL);
	sock_for_each(fork_share, NULL);
}

/* The child holds the parent's listeners: it registers them in its own
 * session before it first waits for connections (ubs_listen_pending). */
bool ubs_listen_pending;

void sock_relisten_now(void)
{
	struct ubs_svc_policy pol;

	ubs_listen_pending = false;
	ubs_guard_enter();
	ubs_ctl_policy(&pol);   /* connects: the reconnect hook registers */
	ubs_guard_exit();
}

void sock_atfork_child(void)
{
	bool any = false;

	sock_tab_atfork_child();
	sock_peer_db_atfork_child();
	ubs_ctl_atfork_child();
	sock_for_each(fork_unmark, NULL);
	sock_for_each(fork_reslot, NULL);
	sock_for_each(fork_share, &any);
	ubs_listen_pending = any;
	ep_atfork_child();
}

void sock_init(void)
{
	ubs_ctl_on_reconnect(relisten_all);
	pthread_atfork(sock_atfork_prepare, sock_atfork_parent,
		       sock_atfork_child);
	sock_exec_adopt();      /* connections an exec kept on UB */
}

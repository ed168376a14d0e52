/* SPDX-License-Identifier: MIT */
/*
 * io.c - the data path of the socket shim: read/write/recv/send and their
 * vector, message and fortify forms, and sendfile, on UB connections.
 *
 * Each entry point looks the fd up (two loads when the library does not
 * track it) and either calls libc or works on the channel's rings with
 * the kernel's semantics: blocking and non-blocking (O_NONBLOCK,
 * MSG_DONTWAIT), MSG_PEEK, MSG_WAITALL, SO_RCVTIMEO/SO_SNDTIMEO, EOF after
 * every byte written before the peer's close or shutdown, EPIPE/SIGPIPE
 * (or not, with MSG_NOSIGNAL) once the peer is gone.
 *
 * Waiting spins for the service's budget, then sleeps on the ring's
 * doorbell and on the kernel socket (whose FIN/RST tells that a peer died
 * without closing its rings).
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <time.h>

#include "sock.h"

/* The fortify entry points (glibc's own prototypes are not exported). */
ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen);
ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
		       __SOCKADDR_ARG from, socklen_t *restrict len);

#define RESTART_KERNEL (-4095 + 1)      /* not an errno: decided TCP */
#define RESTART_IO     (-4095 + 2)      /* not an errno: demotion, or a
					 * call a handler restarts: redo */
/* Internal recv flag: read()/readv(), which return 0 at once for zero
 * bytes (the socket layer's shortcut), where recv() waits for data. */
#define RECV_RW        0x80000000u

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * The sock behind fd if the data call must go through the shim: a UB
 * connection, or (reads only) an accepted one still undecided or one
 * draining after a demotion.  Settles connections on the way.  NULL:
 * use the kernel, unless *err is set (-EAGAIN: a non-blocking write
 * while the connection is not settled yet).
 */
static struct sock *io_sock_err(int fd, bool for_write, int *err)
{
	struct sock *s;
	int st;

	*err = 0;
	if (!ubs_ready() || ubs_guard || !(s = sock_get(fd)))
		return NULL;
	st = atomic_load(&s->state);
	if (st == SK_UB && !sock_demote_pending(s) &&
	    (!__builtin_expect(s->board_wait, 0) || !sock_board_expire(s)))
		return s;
	ubs_guard_enter();
	if (st == SK_UB || st == SK_DRAIN)
		st = sock_demote_handle(s, fd);
	if (st == SK_CONNECTING)
		st = sock_settle_connect(s, fd, for_write && !s->nonblock);
	if (st == SK_UNDECIDED)
		st = sock_settle_undecided(s, fd, for_write);
	ubs_guard_exit();
	if (st == SK_UB ||
	    ((st == SK_UNDECIDED || st == SK_DRAIN) && !for_write))
		return s;
	/* A write before the connection is settled must not reach the
	 * kernel socket (the server would take it for a plain client):
	 * the kernel itself says EAGAIN to a write while connecting. */
	if (st == SK_CONNECTING && for_write)
		*err = -EAGAIN;
	sock_put(s);
	return NULL;
}

/* io_sock_err for reads, which never get an error of their own. */
static struct sock *io_sock(int fd, bool for_write)
{
	int err;

	return io_sock_err(fd, for_write, &err);
}

static size_t iov_total(const struct iovec *iov, int cnt)
{
	size_t t = 0;

	for (int i = 0; i < cnt; i++)
		t += iov[i].iov_len;
	return t;
}

/* out = iov without its first skip bytes; returns the count of out. */
static int iov_skip(const struct iovec *iov, int cnt, size_t skip,
		    struct iovec *out, int max)
{
	int n = 0;

	for (int i = 0; i < cnt && n < max; i++) {
		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		out[n].iov_base = (char *)iov[i].iov_base + skip;
		out[n].iov_len = iov[i].iov_len - skip;
		skip = 0;
		n++;
	}
	return n;
}

/* Remaining ms of a timeout that started at t0 (-1: none). */
static int remaining(int tmo_ms, uint64_t t0)
{
	uint64_t el;

	if (tmo_ms < 0)
		return -1;
	el = now_ms() - t0;
	return el >= (uint64_t)tmo_ms ? 0 : tmo_ms - (int)el;
}

/* Wait on a ring with the sock's budget, the kernel socket watched.
 * Returns 0 to go round again, or -EAGAIN (timeout) / -EINTR. */
static int io_wait(struct sock *s, int fd, bool write, int tmo_ms,
		   uint64_t t0)
{
	struct ubt_wait w;
	uint32_t mark;
	int r;

	fd = sock_kfd(s, fd);
	w = (struct ubt_wait){
		.spin_ns = atomic_load(&s->state) == SK_UB ? s->spin_ns : 0,
		.timeout_ms = remaining(tmo_ms, t0),
		.watch_fd = atomic_load(&s->peer_fin) ||
			sock_demote_pending(s) ? -1 : fd,
		.watch_events = POLLIN | POLLRDHUP,
		.stop = {
			ubt_chan_demote_word(&s->ch, !s->ch.side),
			/* Once: a wait started before a deferred close
			 * watches a closed fd number and must start again. */
			s->closing ? NULL : &s->moved,
			/* A handler ran (while spinning: a sleep would have
			 * been interrupted anyway). */
			&ubs_sig_hit,
		},
	};

	if (w.timeout_ms == 0)
		return -EAGAIN;
	bool trim = false;

	/* A half-closed peer leaves the kernel socket readable for good:
	 * sleep in slices instead of watching it. */
	if (w.watch_fd < 0 && (w.timeout_ms < 0 || w.timeout_ms > 100))
		w.timeout_ms = 100;
	if (sock_trim_idle(s) && (w.timeout_ms < 0 ||
				  w.timeout_ms > UBS_TRIM_IDLE_MS)) {
		w.timeout_ms = UBS_TRIM_IDLE_MS;
		trim = true;
	}
	/* A post no server took yet: no longer than its deadline (board.c). */
	int bl = s->board_wait ? sock_board_left_ms(s) : -1;

	if (bl >= 0 && (w.timeout_ms < 0 || w.timeout_ms > bl)) {
		w.timeout_ms = bl ? bl : 1;
		trim = false;
	}
	mark = ubs_sig_mark();
	atomic_store(&ubs_sig_hit, 0);
	ubs_guard_enter();
	ubs_sig_sleep = true;
	r = write ? ubt_wait_writable(s->tx, 1, &w) :
		ubt_wait_readable(s->rx, &w);
	ubs_sig_sleep = false;
	if (r == UBT_WATCH)
		sock_probe_kernel(s, fd);       /* FIN, reset or a bypass */
	if (r == -ETIMEDOUT && trim)
		sock_trim_idle(s);      /* a quiet second */
	if (bl >= 0 && sock_board_expire(s))
		r = 0;                  /* the caller sees the demotion */
	ubs_guard_exit();
	/* A handler ran (its EINTR, or while the wait spun): the kernel
	 * restarts the call after SA_RESTART when no timeout is set, from
	 * the start; a call that moved bytes returns their count. */
	if (r == -EINTR || ubs_sig_since(mark))
		return ubs_sig_restarts(mark, tmo_ms) ? RESTART_IO : -EINTR;
	if (r == -ETIMEDOUT)
		return tmo_ms >= 0 && remaining(tmo_ms, t0) == 0 ? -EAGAIN : 0;
	return 0;
}

/*
 * The ring says EOF (the peer shut down its side): its FIN follows on the
 * kernel socket within microseconds.  Wait for it (bounded), so that
 * what the program does next with the kernel socket (shutdown, a
 * TCP_INFO, ...) finds the state the kernel alone would have shown.
 */
static void wait_fin(struct sock *s, int fd)
{
	struct pollfd p = { .fd = sock_kfd(s, fd),
			    .events = POLLIN | POLLRDHUP };

	ubs_guard_enter();
	if (ubs_real.poll(&p, 1, 100) == 1)
		sock_probe_kernel(s, p.fd);
	ubs_guard_exit();
}

/* Receive into iov.  Returns bytes, 0 at EOF, -errno, or RESTART_KERNEL
 * when the connection turned out to be TCP. */
static ssize_t ub_recv(struct sock *s, int fd, const struct iovec *iov,
		       int cnt, int flags)
{
	size_t total = iov_total(iov, cnt), got = 0;
	bool nb = s->nonblock || (flags & MSG_DONTWAIT);
	bool peek = flags & MSG_PEEK;
	bool all = (flags & MSG_WAITALL) && !peek && !nb;

	if (total == 0 && ((unsigned)flags & RECV_RW))
		return 0;
	flags &= ~(int)RECV_RW;
	uint64_t t0 = s->rcvtimeo_ms >= 0 ? now_ms() : 0;
	struct iovec v[64];
	ssize_t n;
	int r;

	for (;;) {
		if (atomic_load(&s->state) == SK_UNDECIDED) {
			ubs_guard_enter();
			r = sock_settle_undecided(s, fd, false);
			ubs_guard_exit();
			if (r == 0)
				return RESTART_KERNEL;
			if (r == SK_UNDECIDED) {
				if (nb)
					return -EAGAIN;
				r = io_wait(s, fd, false, s->rcvtimeo_ms, t0);
				if (r)
					return r;
				continue;
			}
		}
		if (s->shut_rd)
			return (ssize_t)got;
		if (atomic_load(&s->state) == SK_UB && sock_demote_pending(s))
			return got ? (ssize_t)got : RESTART_IO;
		if (total == 0) {
			/* Zero bytes asked: the kernel still waits for data
			 * (or EOF) and says EAGAIN without it. */
			int64_t u = ubt_ring_readable(s->rx);

			n = u > 0 || ubt_ring_pclosed(s->rx) ? 0 : -EAGAIN;
			if (n == 0)
				return 0;
		} else {
			n = ubt_stream_readv(s->rx, v,
					     iov_skip(iov, cnt, got, v, 64),
					     peek ? UBT_PEEK : 0);
		}
		if (n > 0) {
			if (!peek) {
				ubs_stats_add(UBS_STAT_UB_BYTES_RX, (uint64_t)n);
				ubs_conn_bytes(s->cslot, false, (uint64_t)n);
			}
			got += (size_t)n;
			if (!all || got == total)
				return (ssize_t)got;
			continue;
		}
		if (n == 0 || (n == -EAGAIN && (atomic_load(&s->peer_fin) ||
						 s->closed))) {
			/* The end: a reset the kernel would have seen
			 * comes once, then EOF. */
			int e;

			if (got)
				return (ssize_t)got;
			if (n == 0 && !atomic_load(&s->peer_fin))
				wait_fin(s, fd);
			sock_update_reset(s);
			e = peek ? s->so_error : sock_take_error(s);
			return e ? -e : 0;
		}
		if (n != -EAGAIN)
			return got ? (ssize_t)got : -ECONNRESET;
		if (atomic_load(&s->state) == SK_DRAIN) {
			/* The ring is empty: the rest is on the kernel
			 * socket. */
			ubs_guard_enter();
			sock_demote_handle(s, fd);
			ubs_guard_exit();
			return got ? (ssize_t)got : RESTART_KERNEL;
		}
		if (nb) {
			ubs_guard_enter();
			r = sock_probe_kernel(s, sock_kfd(s, fd));
			ubs_guard_exit();
			if (r < 0)
				continue;       /* FIN: report after data */
			return got ? (ssize_t)got : -EAGAIN;
		}
		r = io_wait(s, fd, false, s->rcvtimeo_ms, t0);
		if (r)
			return got ? (ssize_t)got : r;
	}
}

/* A write's error: SIGPIPE goes with EPIPE unless MSG_NOSIGNAL. */
static ssize_t write_error(int err, int flags)
{
	if (err == EPIPE && !(flags & MSG_NOSIGNAL))
		pthread_kill(pthread_self(), SIGPIPE);
	return -err;
}

/* Send iov.  Returns bytes or -errno. */
static ssize_t ub_send(struct sock *s, int fd, const struct iovec *iov,
		       int cnt, int flags)
{
	size_t total = iov_total(iov, cnt), sent = 0;
	bool nb = s->nonblock || (flags & MSG_DONTWAIT);
	uint64_t t0 = s->sndtimeo_ms >= 0 ? now_ms() : 0;
	struct iovec v[64];
	ssize_t n;
	int r;

	if (s->shut_wr)
		return write_error(EPIPE, flags);
	for (;;) {
		int e;

		if (sock_demote_pending(s))
			return sent ? (ssize_t)sent : RESTART_IO;
		sock_update_reset(s);
		if ((e = sock_take_error(s)))
			return sent ? (ssize_t)sent : write_error(e, flags);
		if (s->closed)
			return sent ? (ssize_t)sent : write_error(EPIPE, flags);
		if (sock_peer_gone(s)) {
			/* The kernel sends this write; the peer answers with
			 * a reset, which fails the next one. */
			if (sent)
				return (ssize_t)sent;
			s->so_error = EPIPE;
			s->closed = true;
			return (ssize_t)total;
		}
		if (total == 0)
			return 0;
		n = ubt_stream_writev(s->tx, v,
				      iov_skip(iov, cnt, sent, v, 64));
		if (n > 0) {
			ubs_stats_add(UBS_STAT_UB_BYTES_TX, (uint64_t)n);
			ubs_conn_bytes(s->cslot, true, (uint64_t)n);
			sent += (size_t)n;
			if (sent == total || nb)
				return (ssize_t)sent;
			continue;
		}
		if (n == -EPIPE)
			continue;       /* peer_gone() says it next round */
		if (n != -EAGAIN)
			return sent ? (ssize_t)sent : -ECONNRESET;
		if (nb)
			return sent ? (ssize_t)sent : -EAGAIN;
		r = io_wait(s, fd, true, s->sndtimeo_ms, t0);
		if (r)
			return sent ? (ssize_t)sent : r;
	}
}

/* The libc boundary for the data calls. */
static ssize_t io_ret(struct sock *s, ssize_t r)
{
	if (__builtin_expect(s->board_wait, 0))
		sock_board_check(s);    /* after the ring moved: see board.c */
	sock_put(s);
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return r;
}

/* ------------------------------------------------------------ receive */

#define RECV_BODY(fd, iov, cnt, flags, kernel_call)			\
	for (;;) {							\
		struct sock *s_ = io_sock(fd, false);			\
		ssize_t r_;						\
									\
		if (!s_)						\
			return kernel_call;				\
		r_ = ub_recv(s_, fd, iov, cnt, flags);			\
		if (r_ == RESTART_KERNEL || r_ == RESTART_IO) {		\
			sock_put(s_);					\
			if (r_ == RESTART_KERNEL)			\
				return kernel_call;			\
			continue;					\
		}							\
		return io_ret(s_, r_);					\
	}

UBS_EXPORT ssize_t read(int fd, void *buf, size_t n)
{
	struct iovec v = { buf, n };

	RECV_BODY(fd, &v, 1, (int)RECV_RW, ubs_real.read(fd, buf, n));
}

UBS_EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen)
{
	if (n > buflen)
		__builtin_trap();       /* what glibc's __chk_fail ends in */
	return read(fd, buf, n);
}

UBS_EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
	if (cnt < 0 || cnt > IOV_MAX)
		return ubs_real.readv(fd, iov, cnt);
	RECV_BODY(fd, iov, cnt, (int)RECV_RW, ubs_real.readv(fd, iov, cnt));
}

UBS_EXPORT ssize_t recv(int fd, void *buf, size_t n, int flags)
{
	struct iovec v = { buf, n };

	RECV_BODY(fd, &v, 1, flags, ubs_real.recv(fd, buf, n, flags));
}

UBS_EXPORT ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen,
			      int flags)
{
	if (n > buflen)
		__builtin_trap();
	return recv(fd, buf, n, flags);
}

UBS_EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags,
			    __SOCKADDR_ARG from, socklen_t *restrict len)
{
	struct iovec v = { buf, n };
	struct sock *s;
	ssize_t r;

again:
	if (!(s = io_sock(fd, false)))
		return ubs_real.recvfrom(fd, buf, n, flags, from, len);
	r = ub_recv(s, fd, &v, 1, flags);
	if (r == RESTART_KERNEL || r == RESTART_IO) {
		sock_put(s);
		if (r == RESTART_IO)
			goto again;
		return ubs_real.recvfrom(fd, buf, n, flags, from, len);
	}
	/* TCP leaves the address alone (Linux reports no source for a
	 * stream socket: *len is set to 0). */
	if (r >= 0 && from.__sockaddr__ && len)
		*len = 0;
	return io_ret(s, r);
}

UBS_EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen,
				  int flags, __SOCKADDR_ARG from,
				  socklen_t *restrict len)
{
	if (n > buflen)
		__builtin_trap();
	return recvfrom(fd, buf, n, flags, from, len);
}

UBS_EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	struct sock *s;
	ssize_t r;

again:
	if (!msg || msg->msg_iovlen > IOV_MAX || !(s = io_sock(fd, false)))
		return ubs_real.recvmsg(fd, msg, flags);
	r = ub_recv(s, fd, msg->msg_iov, (int)msg->msg_iovlen, flags);
	if (r == RESTART_KERNEL || r == RESTART_IO) {
		sock_put(s);
		if (r == RESTART_IO)
			goto again;
		return ubs_real.recvmsg(fd, msg, flags);
	}
	if (r >= 0) {
		msg->msg_namelen = 0;
		msg->msg_controllen = 0;
		msg->msg_flags = 0;
	}
	return io_ret(s, r);
}

/* --------------------------------------------------------------- send */

#define SEND_BODY(fd, iov, cnt, flags, kernel_call)			\
	for (;;) {							\
		int e_;							\
		struct sock *s_ = io_sock_err(fd, true, &e_);		\
		ssize_t r_;						\
									\
		if (e_)							\
			return ubs_fail(e_);				\
		if (!s_)						\
			return kernel_call;				\
		r_ = ub_send(s_, fd, iov, cnt, flags);			\
		if (r_ == RESTART_IO) {					\
			sock_put(s_);					\
			continue;					\
		}							\
		return io_ret(s_, r_);					\
	}

UBS_EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
	struct iovec v = { (void *)buf, n };

	SEND_BODY(fd, &v, 1, 0, ubs_real.write(fd, buf, n));
}

UBS_EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	if (cnt < 0 || cnt > IOV_MAX)
		return ubs_real.writev(fd, iov, cnt);
	SEND_BODY(fd, iov, cnt, 0, ubs_real.writev(fd, iov, cnt));
}

UBS_EXPORT ssize_t send(int fd, const void *buf, size_t n, int flags)
{
	struct iovec v = { (void *)buf, n };

	SEND_BODY(fd, &v, 1, flags, ubs_real.send(fd, buf, n, flags));
}

UBS_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags,
			  __CONST_SOCKADDR_ARG to, socklen_t len)
{
	struct iovec v = { (void *)buf, n };

	/* A connected stream socket ignores the address (Linux). */
	SEND_BODY(fd, &v, 1, flags, ubs_real.sendto(fd, buf, n, flags, to,
						    len));
}

UBS_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	if (!msg || msg->msg_iovlen > IOV_MAX || msg->msg_controllen)
		return ubs_real.sendmsg(fd, msg, flags);
	SEND_BODY(fd, msg->msg_iov, (int)msg->msg_iovlen, flags,
		  ubs_real.sendmsg(fd, msg, flags));
}

/*
 * sendfile to a UB connection: file bytes are read into a bounce buffer
 * no larger than the room in the ring, so a short send never consumes
 * file bytes it did not send.  With offset, the file position is left
 * alone (pread); without, it advances by what was sent.
 */
static ssize_t ub_sendfile(struct sock *s, int out, int in, off_t *off,
			   size_t count)
{
	char buf[65536];
	size_t done = 0;
	off_t pos = off ? *off : 0;
	ssize_t err = 0;

	while (done < count) {
		int64_t room = ubt_ring_writable(s->tx);
		size_t want = count - done;
		struct iovec v;
		ssize_t n, w;

		if (room <= 0 && !sock_peer_gone(s)) {
			if (done)
				break;
			if (s->nonblock)
				return -EAGAIN; /* 0 would mean end of file */
			w = io_wait(s, out, true, s->sndtimeo_ms, now_ms());
			if (w)
				return w;
			continue;
		}
		if (want > sizeof(buf))
			want = sizeof(buf);
		if (room > 0 && want > (size_t)room)
			want = (size_t)room;
		n = off ? ubs_real.pread(in, buf, want, pos) :
			ubs_real.read(in, buf, want);
		if (n < 0) {
			err = -errno;
			break;
		}
		if (n == 0)
			break;
		v.iov_base = buf;
		v.iov_len = (size_t)n;
		w = ub_send(s, out, &v, 1, MSG_DONTWAIT);
		if (w < 0) {
			if (!off)       /* give the bytes back to the file */
				lseek(in, -(off_t)n, SEEK_CUR);
			err = w;
			break;
		}
		if (w < n && !off)
			lseek(in, (off_t)w - n, SEEK_CUR);
		done += (size_t)w;
		pos += w;
		if (w < n && s->nonblock)
			break;
	}
	/* What was sent is reported, error or not: with an offset, the
	 * caller resumes from it. */
	if (off)
		*off = pos;
	return done ? (ssize_t)done : err;
}

UBS_EXPORT ssize_t sendfile(int out, int in, off_t *off, size_t count)
{
	struct sock *s;
	ssize_t r;

	int e;

again:
	if (!(s = io_sock_err(out, true, &e)))
		return e ? ubs_fail(e) : ubs_real.sendfile(out, in, off, count);
	r = ub_sendfile(s, out, in, off, count);
	if (r == RESTART_IO) {
		sock_put(s);
		goto again;
	}
	return io_ret(s, r);
}

UBS_EXPORT ssize_t sendfile64(int out, int in, off_t *off, size_t count)
{
	return sendfile(out, in, off, count);
}

/*
 * splice between a UB connection and a pipe, through a bounce buffer no
 * larger than what the destination can take at once, so nothing is ever
 * taken from the source that could not be put in the destination.
 */
static ssize_t ub_splice_in(struct sock *s, int fd, int pipe_out,
			    size_t len, unsigned int flags)
{
	char buf[65536];
	bool nb = s->nonblock || (flags & SPLICE_F_NONBLOCK);
	uint64_t t0 = now_ms();

	for (;;) {
		int cap = ubs_real.fcntl(pipe_out, F_GETPIPE_SZ), used = 0;
		size_t room;
		ssize_t n, w;

		if (cap < 0)
			return -errno;
		ubs_real.ioctl(pipe_out, FIONREAD, &used);
		room = used < cap ? (size_t)(cap - used) : 0;
		if (len > room)
			len = room ? room : len;
		if (len > sizeof(buf))
			len = sizeof(buf);
		n = ubt_stream_read(s->rx, buf, len, UBT_PEEK);
		if (n == 0)
			return 0;                       /* EOF */
		if (n > 0) {
			w = ubs_real.write(pipe_out, buf, (size_t)n);
			if (w <= 0)
				return w < 0 ? -errno : -EAGAIN;
			ubt_stream_read(s->rx, buf, (size_t)w, 0);
			ubs_stats_add(UBS_STAT_UB_BYTES_RX, (uint64_t)w);
			ubs_conn_bytes(s->cslot, false, (uint64_t)w);
			return w;
		}
		if (n != -EAGAIN)
			return -ECONNRESET;
		if (atomic_load(&s->peer_fin))
			return 0;
		if (nb)
			return -EAGAIN;
		n = io_wait(s, fd, false, s->rcvtimeo_ms, t0);
		if (n)
			return n;
	}
}

static ssize_t ub_splice_out(struct sock *s, int fd, int pipe_in,
			     size_t len, unsigned int flags)
{
	char buf[65536];
	bool nb = s->nonblock || (flags & SPLICE_F_NONBLOCK);
	uint64_t t0 = now_ms();

	for (;;) {
		int64_t room = ubt_ring_writable(s->tx);
		struct iovec v;
		ssize_t n;

		if (room > 0 || sock_peer_gone(s) || s->closed) {
			if (room <= 0)
				room = 1;
			if ((int64_t)len > room)
				len = (size_t)room;
			if (len > sizeof(buf))
				len = sizeof(buf);
			n = ubs_real.read(pipe_in, buf, len);
			if (n <= 0)
				return n < 0 ? -errno : 0;
			v.iov_base = buf;
			v.iov_len = (size_t)n;
			return ub_send(s, fd, &v, 1, MSG_DONTWAIT);
		}
		if (nb)
			return -EAGAIN;
		n = io_wait(s, fd, true, s->sndtimeo_ms, t0);
		if (n)
			return n;
	}
}

UBS_EXPORT ssize_t splice(int in, loff_t *off_in, int out, loff_t *off_out,
			  size_t len, unsigned int flags)
{
	struct sock *s;
	ssize_t r;
	int e = 0;

again:
	if (!off_in && (s = io_sock(in, false))) {
		if (atomic_load(&s->state) != SK_UB) {
			sock_put(s);    /* undecided or draining: settle */
			s = NULL;
		} else {
			r = ub_splice_in(s, in, out, len, flags);
			if (r == RESTART_IO) {
				sock_put(s);
				goto again;
			}
			return io_ret(s, r);
		}
	}
	if (!off_out && (s = io_sock_err(out, true, &e))) {
		r = ub_splice_out(s, out, in, len, flags);
		if (r == RESTART_IO) {
			sock_put(s);
			goto again;
		}
		return io_ret(s, r);
	}
	if (e)
		return ubs_fail(e);
	return ubs_real.splice(in, off_in, out, off_out, len, flags);
}

/*
 * recvmmsg/sendmmsg on a UB connection: one recvmsg/sendmsg per message,
 * as the kernel does for a stream socket; an error after the first
 * message ends the batch with the count so far.  recvmmsg's timeout is
 * the kernel's: checked after each message (the first may block without
 * bound), the batch ends once it has run out, and *tmo gets the time
 * left.
 */
UBS_EXPORT int recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags,
			struct timespec *tmo)
{
	struct timespec end, now;
	unsigned int i;

	if (!ubs_ready() || ubs_guard || !sock_slot_used(fd))
		return ubs_real.recvmmsg(fd, v, n, flags, tmo);
	if (tmo) {
		if (tmo->tv_sec < 0 || tmo->tv_nsec < 0 ||
		    tmo->tv_nsec >= 1000000000L)
			return ubs_fail(-EINVAL);
		clock_gettime(CLOCK_MONOTONIC, &end);
		end.tv_sec += tmo->tv_sec;
		end.tv_nsec += tmo->tv_nsec;
		if (end.tv_nsec >= 1000000000L) {
			end.tv_sec++;
			end.tv_nsec -= 1000000000L;
		}
	}
	for (i = 0; i < n; i++) {
		int f = flags & ~MSG_WAITFORONE;
		ssize_t r;

		if (i && (flags & MSG_WAITFORONE))
			f |= MSG_DONTWAIT;
		r = recvmsg(fd, &v[i].msg_hdr, f);
		if (r < 0)
			return i ? (int)i : -1;
		v[i].msg_len = (unsigned int)r;
		if (r == 0)
			return (int)i + 1;      /* EOF ends the batch */
		if (tmo) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			tmo->tv_sec = end.tv_sec - now.tv_sec;
			tmo->tv_nsec = end.tv_nsec - now.tv_nsec;
			if (tmo->tv_nsec < 0) {
				tmo->tv_sec--;
				tmo->tv_nsec += 1000000000L;
			}
			if (tmo->tv_sec < 0) {
				tmo->tv_sec = tmo->tv_nsec = 0;
				return (int)i + 1;
			}
			if (tmo->tv_sec == 0 && tmo->tv_nsec == 0)
				return (int)i + 1;
		}
	}
	return (int)i;
}

UBS_EXPORT int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags)
{
	unsigned int i;

	if (!ubs_ready() || ubs_guard || !sock_slot_used(fd))
		return ubs_real.sendmmsg(fd, v, n, flags);
	for (i = 0; i < n; i++) {
		ssize_t r = sendmsg(fd, &v[i].msg_hdr, flags);

		if (r < 0)
			return i ? (int)i : -1;
		v[i].msg_len = (unsigned int)r;
	}
	return (int)i;
}

/* SPDX-License-Identifier: MIT */
/*
 * ctl.c - the preload's side of the control protocol (ubsd/ctl_proto.h):
 * one Unix stream connection per process to ubsd, opened lazily on the
 * first call that needs the daemon, a session (HELLO), the shared policy
 * page mapped read-only, the socket attach requests (LISTEN,
 * UNLISTEN, PUBLISH, REQUEST), and the uid's board (BOARD).
 *
 * No helper thread: requests are made by the application's own calls,
 * under one mutex.  Replies to requests sent without waiting (PUBLISH,
 * UNLISTEN) and unsolicited ones (WITHDRAWN) are read and dropped by the
 * next request that waits for its own reply, matched by sequence number.
 *
 * When the daemon is down or dies, every call here fails fast and the
 * caller stays on TCP; a new connection is tried at most once per
 * UBS_CTL_RETRY_MS, so a process without a daemon pays nearly nothing.
 * After a reconnect the process's UB listeners are registered again.
 *
 * The connection's fd is placed high (see ubs_fd_high) and close-on-exec;
 * a program that closes or dup2()s over it only costs a reconnect.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include "preload.h"
#include "ctl.h"
#include "ctl_proto.h"
#include "policy.h"
#include "ubt.h"

#define UBS_CTL_RETRY_MS 1000   /* between attempts to reach a dead daemon */
#define UBS_CTL_IO_MS    2500   /* any reply; REQUEST adds its own wait */
#define UBS_CTL_GRACE_MS 3000   /* after a reconnect: old listeners count */

static struct {
	pthread_mutex_t lock;
	int fd;                 /* control connection, -1 when down */
	uint32_t seq;
	uint64_t next_try_ms;   /* no connect attempt before this... */
	ino_t failed_ino;       /* ...unless the socket file is no longer
				 * the one that failed (a new daemon) */
	struct ubt_seg *page;   /* current policy page, NULL before the
				 * daemon was first reached */
	uint32_t hint;          /* pp_lookup_hint's */
	struct ubt_seg *prev_page;      /* the page of the daemon before */
	uint64_t reconnect_ms;          /* when this one replaced it */
	bool had_session;               /* this process had one before (not
					 * a forked child's inherited one) */
	void (*reconnected)(void);
} ctl = { .lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1 };

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void ctl_drop(const char *why)
{
	if (ctl.fd >= 0) {
		ubs_info("control connection to ubsd dropped: %s", why);
		ubs_fd_release(ctl.fd);
	}
	ctl.fd = -1;
	ctl.next_try_ms = now_ms() + UBS_CTL_RETRY_MS;
	ctl.failed_ino = 0;
	{
		char path[PATH_MAX];
		struct stat st;

		if ((size_t)snprintf(path, sizeof(path), "%s/%s",
				     ubs_config.run_dir, CTL_SOCK_NAME) <
		    sizeof(path) && stat(path, &st) == 0)
			ctl.failed_ino = st.st_ino;
	}
}

/* Is ctl.fd still our socket (a program may have closed or reused the
 * number)? */
static bool ctl_fd_ours(void)
{
	/* A program can take the number only with dup2/dup3 onto it, which
	 * clears the mark (dup_track): no syscall needed. */
	return ctl.fd >= 0 && ubs_fd_owned(ctl.fd);
}

/* Send one message with fds.  Returns 0 or -errno (connection dropped). */
static int ctl_send(uint16_t type, const void *body, uint32_t len,
		    const int *fds, int nfds, uint32_t *seq)
{
	unsigned char buf[sizeof(struct ctl_hdr) + CTL_MAX_BODY];
	struct ctl_hdr *h = (struct ctl_hdr *)buf;
	int r;

	*seq = ++ctl.seq;
	ctl_fill(h, type, len, *seq);
	if (len)
		memcpy(buf + sizeof(*h), body, len);
	r = ubt_send_fds(ctl.fd, fds, nfds, buf, sizeof(*h) + len);
	if (r < 0) {
		ctl_drop("send failed");
		return r;
	}
	return 0;
}

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			ubs_fd_release(fds[i]);
}

/*
 * Replies are read by whichever waiting thread gets there first (without
 * the lock) and handed to their waiter through a small mailbox, so that
 * one thread waiting long for its channel (REQUEST) does not hold up
 * another's PUBLISH or LISTEN.  Replies nobody waits for (to PUBLISH and
 * UNLISTEN, which do not wait, and WITHDRAWN notices) are dropped.
 */
#define CTL_WAITERS 128
#define CTL_REPLY_MAX 256               /* largest reply body we read */

struct ctl_mail {
	uint32_t seq;                   /* awaited; 0: free slot */
	uint64_t gen;                   /* of the connection it was sent on */
	bool full;
	uint16_t type;
	uint32_t len;
	unsigned char body[CTL_REPLY_MAX];
	int fds[CTL_MAX_FDS];
};

static struct ctl_mail mailbox[CTL_WAITERS];
static bool ctl_reading;                /* a thread reads the socket */
static bool ctl_connecting;             /* a thread sets the session up
					 * (the lock is let go meanwhile) */
static uint64_t ctl_gen;                /* connections made, for readers */
static pthread_cond_t ctl_cv = PTHREAD_COND_INITIALIZER;

/*
 * The process doorbell: one eventfd that every channel of this process
 * rings and sleeps on (created on first need), named by a random id,
 * and given to each session before its first PUBLISH or REQUEST (no
 * reply waited for: ubsd reads the stream in order).  A forked child
 * makes its own; channels it inherited keep the parent's.  With it goes
 * the process's notification page (ubt_note_*), where peers post which
 * of its endpoints became ready; it is allocated, never freed: channels
 * a forked child inherited keep pointing at the parent's.
 */
static struct {
	int fd;
	uint64_t id;
	uint64_t gen;           /* ctl_gen it was given to, 0: not yet */
	struct ubt_note *note;
} db = { .fd = -1 };

/*
 * The uid's board (BOARD), asked for at the first ubs_ctl_board and again
 * once per new session: ctl_connect clears fresh, the next call asks.
 * The answer (cur, or err when there is none) is read without the lock:
 * cur, id and err are stored before fresh is set (release), and read
 * after it (acquire).  A board once mapped is never unmapped or freed
 * (connections live in its slots): one the daemon names again (same id)
 * is the one already mapped (last).  A forked child keeps all of it: the
 * mapping is inherited, and so is the answer until the child's own first
 * session asks again.
 */
static struct {
	struct ubt_board *cur;          /* the answer; NULL: none */
	struct ubt_board *last;         /* the last board mapped */
	uint64_t id;                    /* cur's, 0 none */
	int err;                        /* the answer when cur is NULL */
	bool fresh;                     /* answered for this session */
} brd;

/*
 * The reader's buffer: what one recvmsg brought from the daemon and is
 * not parsed yet (often several replies: a server that publishes
 * without waiting collects the replies of its earlier PUBLISHes with one
 * read), and the fds that came with it.  A message's fds ride with its
 * first byte, and the kernel ends a read after the bytes that carried
 * fds, so each batch of fds belongs to a message that starts within the
 * bytes of the read that brought it (stream offsets [start, end)); a
 * batch left unclaimed once those bytes are parsed is a protocol error,
 * as a message without the fds its type needs.  Only the thread that
 * reads (ctl_reading, or the lock during ctl_connect) touches it; gen
 * says which connection the bytes belong to.
 */
#define CTL_RBUF   (2 * (sizeof(struct ctl_hdr) + CTL_MAX_BODY))
#define CTL_RBATCH 4

static struct {
	uint64_t gen;
	uint64_t pos;                   /* stream offset of buf[off] */
	size_t off, len;
	bool short_read;                /* the last read did not fill buf */
	int nb;
	struct {
		uint64_t start, end;
		int n, fds[CTL_MAX_FDS];
	} b[CTL_RBATCH];
	unsigned char buf[CTL_RBUF];
} rb;

/* Forget what is buffered (another connection, or a protocol error). */
static void rb_reset(uint64_t gen)
{
	for (int i = 0; i < rb.nb; i++)
		close_fds(rb.b[i].fds, rb.b[i].n);
	rb.nb = 0;
	rb.off = rb.len = 0;
	rb.pos = 0;
	rb.short_read = false;
	rb.gen = gen;
}

/* One recvmsg into the free end of rb.buf.  Returns bytes (> 0), or
 * -errno (-EAGAIN: nothing there, -EPIPE: the daemon closed). */
static int rb_fill(int fd)
{
	int fds[CTL_MAX_FDS], nfds = CTL_MAX_FDS, r;
	uint64_t start;

	if (rb.off > 0) {
		memmove(rb.buf, rb.buf + rb.off, rb.len - rb.off);
		rb.len -= rb.off;
		rb.off = 0;
	}
	if (rb.len == sizeof(rb.buf))
		return -EPROTO;         /* cannot be: a message fits twice */
	start = rb.pos + rb.len;
	r = ubt_recv_fds_flags(fd, fds, &nfds, rb.buf + rb.len,
			       sizeof(rb.buf) - rb.len, MSG_DONTWAIT);
	if (r <= 0)
		return r < 0 ? r : -EPIPE;
	/* Received fds are the library's: out of the program's range at
	 * once, whoever reads them and however long they wait in the
	 * mailbox (the program's next socket must get the number it would
	 * have without us). */
	for (int i = 0; i < nfds; i++)
		fds[i] = ubs_fd_high(fds[i]);
	rb.short_read = (size_t)r < sizeof(rb.buf) - rb.len;
	if (nfds > 0) {
		if (rb.nb == CTL_RBATCH) {
			close_fds(fds, nfds);
			return -EPROTO;
		}
		rb.b[rb.nb].start = start;
		rb.b[rb.nb].end = start + (uint64_t)r;
		rb.b[rb.nb].n = nfds;
		memcpy(rb.b[rb.nb].fds, fds, sizeof(int) * (size_t)nfds);
		rb.nb++;
	}
	rb.len += (size_t)r;
	return r;
}

/*
 * Take the whole message at the head of rb, if there is one: 1 (h, in
 * and got filled), 0 (incomplete), -EPROTO with *why set.
 */
static int rb_take(struct ctl_hdr *h, unsigned char *in, int *got,
		   const char **why)
{
	size_t have = rb.len - rb.off, size;
	uint64_t at = rb.pos;
	int n, r;

	if (have < sizeof(*h))
		return 0;
	memcpy(h, rb.buf + rb.off, sizeof(*h));
	if ((r = ctl_check(h, NULL, why)))
		return r;
	size = sizeof(*h) + h->len;
	if (have < size)
		return 0;
	memcpy(in, rb.buf + rb.off + sizeof(*h), h->len);
	rb.off += size;
	rb.pos += size;
	if ((r = ctl_check(h, in, why)))
		return r;
	n = ctl_fd_count(h->type);
	if (n > 0) {
		/* Its fds: the oldest batch, brought with its first byte. */
		if (rb.nb == 0 || rb.b[0].n != n || at < rb.b[0].start ||
		    at >= rb.b[0].end) {
			*why = "wrong number of fds";
			return -EPROTO;
		}
		memcpy(got, rb.b[0].fds, sizeof(int) * (size_t)n);
		rb.nb--;
		memmove(&rb.b[0], &rb.b[1], sizeof(rb.b[0]) * (size_t)rb.nb);
	}
	/* A batch whose bytes are all parsed and that no message took. */
	if (rb.nb > 0 && rb.pos >= rb.b[0].end) {
		*why = "wrong number of fds";
		return -EPROTO;
	}
	return 1;
}

/*
 * Read one whole message of fd (connection gen) by deadline (no lock
 * held): the first byte by deadline, the rest within UBS_CTL_IO_MS of it
 * (a message comes whole, or nearly).  A message already buffered costs
 * no syscall; otherwise reads before it polls, so a reply that is already
 * there costs one.  Returns 0 or -errno with *why set; fds in got (-1
 * unused).
 */
static int ctl_read_msg(int fd, uint64_t gen, struct ctl_hdr *h,
			unsigned char *in, int *got, uint64_t deadline,
			const char **why)
{
	bool partial = false;
	int r;

	for (int i = 0; i < CTL_MAX_FDS; i++)
		got[i] = -1;
	if (rb.gen != gen)
		rb_reset(gen);
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		uint64_t now;

		r = rb_take(h, in, got, why);
		if (r)
			break;
		if (!partial && rb.len > rb.off) {
			partial = true;         /* the rest comes soon */
			deadline = now_ms() + UBS_CTL_IO_MS;
		}
		r = rb_fill(fd);
		if (r > 0)
			continue;
		if (r != -EAGAIN && r != -EINTR)
			break;
		now = now_ms();
		if (now >= deadline) {
			r = partial ? -EPROTO : -ETIMEDOUT;
			if (partial)
				*why = "message cut short";
			break;
		}
		r = ubs_real.poll(&pfd, 1, (int)(deadline - now));
		if (r < 0 && errno != EINTR) {
			r = -errno;
			break;
		}
	}
	if (r == 1)
		return 0;
	close_fds(got, CTL_MAX_FDS);
	if (r == -EPROTO && !*why)
		*why = "message cut short";
	if (r != -ETIMEDOUT && r != -EINTR)
		rb_reset(gen);          /* the connection is dropped */
	return r;
}

/* A message arrived: to its waiter's slot, or dropped.  Lock held. */
static void ctl_deliver(const struct ctl_hdr *h, const unsigned char *in,
			int *got)
{
	for (int i = 0; i < CTL_WAITERS; i++) {
		struct ctl_mail *m = &mailbox[i];

		if (m->seq != h->seq || m->full || h->type == CTL_R_WITHDRAWN)
			continue;
		m->type = h->type;
		m->len = h->len < CTL_REPLY_MAX ? h->len : CTL_REPLY_MAX;
		memcpy(m->body, in, m->len);
		memcpy(m->fds, got, sizeof(m->fds));
		m->full = true;
		pthread_cond_broadcast(&ctl_cv);
		return;
	}
	close_fds(got, CTL_MAX_FDS);
}

/*
 * Read one message as the reader: the lock is released while blocked
 * in the socket.  Returns 1 (a message was delivered), 0 (none came by
 * deadline) or -errno (the connection was dropped).  Lock held on entry and
 * on return.
 */
static int ctl_read_one(uint64_t deadline)
{
	unsigned char in[CTL_MAX_BODY];
	int got[CTL_MAX_FDS], fd = ctl.fd, r;
	uint64_t gen = ctl_gen;
	const char *why = NULL;
	struct ctl_hdr h;

	ctl_reading = true;
	pthread_mutex_unlock(&ctl.lock);
	r = ctl_read_msg(fd, gen, &h, in, got, deadline, &why);
	pthread_mutex_lock(&ctl.lock);
	ctl_reading = false;
	pthread_cond_broadcast(&ctl_cv);
	if (r == 0)
		ctl_deliver(&h, in, got);
	else if (r != -ETIMEDOUT && r != -EINTR && gen == ctl_gen &&
		 ctl.fd == fd)
		ctl_drop(why ? why : "reply not read");
	return r == 0 ? 1 : r == -ETIMEDOUT || r == -EINTR ? 0 : r;
}

/*
 * Deliver what has arrived unasked and notice a dead daemon (EOF drops
 * the connection).  Lock held.
 */
static void ctl_drain(void)
{
	while (ctl.fd >= 0 && !ctl_reading) {
		uint64_t gen = ctl_gen;
		int fd = ctl.fd;

		/* Nothing there: one failed read, and out.  A read that
		 * did not fill the buffer took all there was: once its
		 * messages are delivered, no read is needed to know it. */
		if (ctl_read_one(0) <= 0 || ctl.fd != fd || gen != ctl_gen)
			return;
		if (rb.gen == gen && rb.off == rb.len && rb.short_read)
			return;
	}
}

/* Reserve the mailbox slot for the reply to seq (lock held): NULL when
 * all are taken. */
static struct ctl_mail *ctl_slot(uint32_t seq)
{
	for (int i = 0; i < CTL_WAITERS; i++)
		if (!mailbox[i].seq) {
			mailbox[i].seq = seq;
			mailbox[i].gen = ctl_gen;
			mailbox[i].full = false;
			return &mailbox[i];
		}
	return NULL;
}

static struct ctl_mail *ctl_slot_find(uint32_t seq)
{
	for (int i = 0; seq && i < CTL_WAITERS; i++)
		if (mailbox[i].seq == seq)
			return &mailbox[i];
	return NULL;
}

/* Give a slot up; a reply still to come is dropped on arrival. */
static void ctl_slot_free(struct ctl_mail *m)
{
	if (m->full)
		close_fds(m->fds, CTL_MAX_FDS);
	m->seq = 0;
	m->full = false;
}

/*
 * Wait for the reply in slot m (lock held; released while waiting), then
 * free the slot.  On success the reply's type, body (up to cap bytes)
 * and fds (up to *nfds, the rest closed) are returned.  Returns 0 or
 * -errno.
 */
static int ctl_slot_wait(struct ctl_mail *m, uint16_t *type, void *body,
			 size_t cap, int *fds, int *nfds, int wait_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)wait_ms;
	int r = 0;

	while (!m->full) {
		uint64_t now = now_ms();

		if (ctl.fd < 0 || ctl_gen != m->gen) {
			r = -ENOTCONN;  /* its connection is gone */
			break;
		}
		if (now >= deadline) {
			r = -ETIMEDOUT;
			break;
		}
		if (!ctl_reading) {
			r = ctl_read_one(deadline);
			if (r < 0)
				break;
			r = 0;
		} else {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 20 * 1000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&ctl_cv, &ctl.lock, &ts);
		}
	}
	if (m->full && r == 0) {
		int n = ctl_fd_count(m->type);

		*type = m->type;
		memcpy(body, m->body, m->len < cap ? m->len : cap);
		if (fds) {
			int keep = n < *nfds ? n : *nfds;

			memcpy(fds, m->fds, sizeof(int) * (size_t)keep);
			close_fds(m->fds + keep, CTL_MAX_FDS - keep);
			*nfds = keep;
		} else {
			close_fds(m->fds, CTL_MAX_FDS);
		}
		m->full = false;
	}
	ctl_slot_free(m);
	return r;
}

/* Wait for the reply to seq, just sent (lock held). */
static int ctl_wait(uint32_t seq, uint16_t *type, void *body, size_t cap,
		    int *fds, int *nfds, int wait_ms)
{
	struct ctl_mail *m = ctl_slot(seq);

	if (!m)
		return -EBUSY;
	return ctl_slot_wait(m, type, body, cap, fds, nfds, wait_ms);
}

/* A request that waits for a plain OK/ERROR.  Returns 0 or -errno. */
static int ctl_call(uint16_t type, const void *body, uint32_t len,
		    const int *fds, int nfds)
{
	struct ctl_error e;
	uint16_t rt;
	uint32_t seq;
	int r;

	r = ctl_send(type, body, len, fds, nfds, &seq);
	if (r == 0)
		r = ctl_wait(seq, &rt, &e, sizeof(e), NULL, NULL,
			     UBS_CTL_IO_MS);
	if (r)
		return r;
	if (rt == CTL_R_OK)
		return 0;
	return rt == CTL_R_ERROR && e.err > 0 ? -e.err : -EPROTO;
}

/* Connect, HELLO, map the policy page.  Called with the lock held. */
static int ctl_connect(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct ctl_hello hello = { .pid = (uint32_t)getpid() };
	struct ctl_policy pol;
	struct ubt_seg *page;
	struct stat st;
	int pfd = -1, n = 1, r;
	uint16_t rt;
	uint32_t seq;
	int fd;

	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s",
			     ubs_config.run_dir, CTL_SOCK_NAME) >=
	    sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	fd = ubs_real.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (ubs_real.connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		r = -errno;
		ubs_real.close(fd);
		ctl.next_try_ms = now_ms() + UBS_CTL_RETRY_MS;
		ctl.failed_ino = stat(sun.sun_path, &st) == 0 ? st.st_ino : 0;
		return r;
	}
	ctl.fd = ubs_fd_high(fd);
	ctl_gen++;
	/* connect() asks for its channel before connecting. */
	hello.flags |= CTL_HELLO_EARLY_REQUEST;
	if (ctl.had_session)
		hello.flags |= CTL_HELLO_RECONNECT;
	memcpy(hello.service, ubs_config.service,
	       strnlen(ubs_config.service, sizeof(hello.service) - 1));
	r = ctl_call(CTL_REQ_HELLO, &hello, sizeof(hello), NULL, 0);
	if (r == 0)
		r = ctl_send(CTL_REQ_POLICY_FD, NULL, 0, NULL, 0, &seq);
	if (r == 0)
		r = ctl_wait(seq, &rt, &pol, sizeof(pol), &pfd, &n,
			     UBS_CTL_IO_MS);
	if (r == 0 && (rt != CTL_R_POLICY || n != 1))
		r = -EPROTO;
	if (r) {
		if (pfd >= 0 && n == 1)
			ubs_fd_release(pfd);
		ctl_drop("session refused");
		return r;
	}
	/* The old page (a previous daemon's) may still be read by other
	 * threads without the lock: it is left mapped, never reused. */
	page = calloc(1, sizeof(*page));
	if (!page || pp_map(page, pfd) < 0) {
		free(page);
		ubs_fd_release(pfd);
		ctl_drop("policy page refused");
		return -EPROTO;
	}
	if (page->fd >= 0) {            /* the mapping is all we need */
		ubs_fd_release(page->fd);
		page->fd = -1;
	}
	if (ctl.page) {                 /* a previous daemon's */
		ctl.prev_page = ctl.page;
		ctl.reconnect_ms = now_ms();
	}
	__atomic_store_n(&ctl.page, page, __ATOMIC_RELEASE);
	__atomic_store_n(&brd.fresh, false, __ATOMIC_RELEASE);
	ctl.hint = 0;
	ctl.had_session = true;
	ubs_info("session with ubsd as service %s", ubs_config.service);
	if (ctl.reconnected)
		ctl.reconnected();
	return 0;
}

/* Has a daemon (re)created its socket since the last attempt failed?
 * One stat: cheaper than waiting out the retry interval after a
 * restart. */
static bool daemon_socket_new(void)
{
	char path[PATH_MAX];
	struct stat st;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", ubs_config.run_dir,
			     CTL_SOCK_NAME) >= sizeof(path))
		return false;
	return stat(path, &st) == 0 && S_ISSOCK(st.st_mode) &&
		st.st_ino != ctl.failed_ino;
}

/* Make sure the connection is up.  Called with the lock held. */
static int ctl_up(void)
{
	int r;

	/* Another thread is making the session: its result is ours. */
	while (ctl_connecting)
		pthread_cond_wait(&ctl_cv, &ctl.lock);
	if (ctl.fd >= 0 && !ctl_fd_ours()) {
		ctl.fd = -1;            /* the program took the number */
		ctl.next_try_ms = 0;
	}
	if (ctl.fd >= 0) {
		ctl_drain();
		if (ctl.fd >= 0)
			return 0;
		ctl.next_try_ms = 0;    /* the daemon went away: try anew */
	}
	if (now_ms() < ctl.next_try_ms && !daemon_socket_new())
		return -ENOTCONN;
	ctl_connecting = true;
	r = ctl_connect();
	ctl_connecting = false;
	pthread_cond_broadcast(&ctl_cv);
	return r;
}

void ubs_ctl_on_reconnect(void (*fn)(void))
{
	ctl.reconnected = fn;
}

int ubs_ctl_policy(struct ubs_svc_policy *p)
{
	struct ubt_seg *page = __atomic_load_n(&ctl.page, __ATOMIC_ACQUIRE);

	if (!page || (ctl.fd < 0 && (now_ms() >= ctl.next_try_ms ||
				     daemon_socket_new()))) {
		/* Never reached, or down and due for a retry. */
		pthread_mutex_lock(&ctl.lock);
		ctl_up();
		pthread_mutex_unlock(&ctl.lock);
		page = __atomic_load_n(&ctl.page, __ATOMIC_ACQUIRE);
	}
	if (!page)
		return -ENOTCONN;
	if (pp_lookup_hint(page, ubs_config.service, p, &ctl.hint) < 0)
		return -EAGAIN;
	return 0;
}

int ubs_ctl_excluded(int family, const void *addr, uint16_t port)
{
	struct ubt_seg *page = __atomic_load_n(&ctl.page, __ATOMIC_ACQUIRE);

	if (!page)
		return 1;
	return pp_excluded(page, ubs_config.service, family, addr, port) != 0;
}

int ubs_ctl_listener_maybe(int family, const void *addr, uint16_t port)
{
	struct ubt_seg *page = __atomic_load_n(&ctl.page, __ATOMIC_ACQUIRE);
	struct ubt_seg *prev = ctl.prev_page;

	if (!page)
		return 0;
	if (pp_listener_maybe(page, family, addr, port) == 1)
		return 1;
	/* Just after a daemon restart its servers have not registered
	 * their listeners again: the old daemon's table says where they
	 * were (the new daemon waits for them as long). */
	return prev && now_ms() - ctl.reconnect_ms < UBS_CTL_GRACE_MS &&
		pp_listener_maybe(prev, family, addr, port) == 1;
}

int ubs_ctl_listener_board(int family, const void *addr, uint16_t port,
			   uint64_t netns, uint64_t board)
{
	struct ubt_seg *page = __atomic_load_n(&ctl.page, __ATOMIC_ACQUIRE);

	return page && pp_listener_board(page, family, addr, port, netns,
					 board) == 1;
}

int ubs_ctl_listen(int fd, bool add)
{
	int r;

	pthread_mutex_lock(&ctl.lock);
	r = ctl_up();
	if (r == 0)
		r = ctl_call(add ? CTL_REQ_LISTEN : CTL_REQ_UNLISTEN, NULL, 0,
			     &fd, 1);
	pthread_mutex_unlock(&ctl.lock);
	return r;
}

int ubs_ctl_accepting(int fd)
{
	uint32_t seq;
	int r;

	pthread_mutex_lock(&ctl.lock);
	r = ctl_up();
	if (r == 0)
		r = ctl_send(CTL_REQ_ACCEPTING, NULL, 0, &fd, 1, &seq);
	pthread_mutex_unlock(&ctl.lock);
	return r;
}

int ubs_ctl_listen_locked(int fd)
{
	/* Only from the reconnect hook: the lock is held, the link up. */
	return ctl.fd >= 0 ? ctl_call(CTL_REQ_LISTEN, NULL, 0, &fd, 1) :
		-ENOTCONN;
}

/* The doorbell, made if need be (lock held): its fd, or -errno. */
static int db_make(void)
{
	if (db.fd < 0) {
		int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
		struct ubt_note *n = calloc(1, sizeof(*n));
		struct timespec ts;
		int err;

		if (fd < 0 || !n) {
			err = fd < 0 ? -errno : -ENOMEM;
			if (fd >= 0)
				close(fd);
			free(n);
			return err;
		}
		fd = ubs_fd_high(fd);
		err = ubt_note_create(n, fd);
		if (err) {
			ubs_fd_release(fd);
			free(n);
			return err;
		}
		n->seg.fd = ubs_fd_high(n->seg.fd);
		db.fd = fd;
		db.note = n;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		db.id = ((uint64_t)getpid() << 40) ^ (uint64_t)ts.tv_nsec ^
			((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)&db;
		if (!db.id)
			db.id = 1;
		db.gen = 0;
	}
	return db.fd;
}

/* Give the doorbell to this session if it does not have it (lock held,
 * connection up). */
static int db_register(void)
{
	struct ctl_doorbell m;
	uint32_t seq;
	int r = db_make();

	if (r < 0 || db.gen == ctl_gen)
		return r < 0 ? r : 0;
	int fds[2] = { db.fd, db.note->seg.fd };

	m.id = db.id;
	r = ctl_send(CTL_REQ_DOORBELL, &m, sizeof(m), fds, 2, &seq);
	if (r == 0)
		db.gen = ctl_gen;
	return r;
}

int ubs_ctl_doorbell(uint64_t *id, struct ubt_note **note)
{
	int r;

	pthread_mutex_lock(&ctl.lock);
	r = db_make();
	*id = db.id;
	*note = r < 0 ? NULL : db.note;
	pthread_mutex_unlock(&ctl.lock);
	return r;
}

int ubs_ctl_doorbell_known(uint64_t *id, struct ubt_note **note)
{
	int r;

	pthread_mutex_lock(&ctl.lock);
	r = db_make();
	*id = db.id;
	*note = r < 0 ? NULL : db.note;
	/* Once per session, not waited for: only a peer's PEER_DB, later,
	 * needs it at the daemon (which reads one session's messages in
	 * order, and the peer's after it learned of us from the board). */
	if (r >= 0 && db.gen != ctl_gen && (ctl_up() < 0 || db_register() < 0))
		r = -ENOTCONN;
	pthread_mutex_unlock(&ctl.lock);
	return r < 0 ? r : db.fd;
}

/* ---- exec keeping UB connections (shim-socket/exec.c) ---- */

int ubs_ctl_doorbell_peek(uint64_t *id)
{
	int fd;

	pthread_mutex_lock(&ctl.lock);
	fd = db.fd;
	*id = db.id;
	pthread_mutex_unlock(&ctl.lock);
	return fd;
}

void ubs_ctl_doorbell_adopt(int fd, uint64_t id, struct ubt_note *note)
{
	pthread_mutex_lock(&ctl.lock);
	if (db.fd < 0 && fd >= 0 && id && note) {
		db.fd = fd;
		db.id = id;
		db.note = note;
		db.gen = 0;             /* no session has it yet */
	}
	pthread_mutex_unlock(&ctl.lock);
}

struct ubt_note *ubs_ctl_note(void)
{
	struct ubt_note *n;

	pthread_mutex_lock(&ctl.lock);
	n = db_make() < 0 ? NULL : db.note;
	pthread_mutex_unlock(&ctl.lock);
	return n;
}

int ubs_ctl_peer_doorbell(uint64_t id, int *note_fd)
{
	struct ctl_doorbell m = { .id = id };
	struct ctl_error e;
	int fds[2] = { -1, -1 }, n = 2, r;
	uint16_t rt = 0;

	memset(&e, 0, sizeof(e));
	r = ubs_ctl_call(CTL_REQ_PEER_DB, &m, sizeof(m), NULL, 0, &rt, &e,
			 sizeof(e), fds, &n);
	if (r)
		return r;
	if (rt == CTL_R_DOORBELL && n == 2) {
		*note_fd = fds[1];
		return fds[0];
	}
	for (int i = 0; i < n; i++)
		ubs_fd_release(fds[i]);
	return rt == CTL_R_ERROR && e.err > 0 ? -e.err : -EPROTO;
}

int ubs_ctl_publish(int sock_fd, int seg_fd)
{
	int fds[2] = { sock_fd, seg_fd };
	uint32_t seq;
	int r;

	pthread_mutex_lock(&ctl.lock);
	r = ctl_up();
	if (r == 0)
		r = db_register();
	if (r == 0)
		r = ctl_send(CTL_REQ_PUBLISH, NULL, 0, fds, 2, &seq);
	pthread_mutex_unlock(&ctl.lock);
	return r;
}

uint32_t ubs_ctl_request_send(int sock_fd, int wait_ms)
{
	struct ctl_request q = { .timeout_ms = (uint32_t)wait_ms };
	uint32_t seq = 0;

	pthread_mutex_lock(&ctl.lock);
	if (ctl_up() == 0 && db_register() == 0 &&
	    ctl_send(CTL_REQ_REQUEST, &q, sizeof(q), &sock_fd, 1, &seq) == 0) {
		if (!ctl_slot(seq))
			seq = 0;        /* no slot: its reply will be dropped */
	} else {
		seq = 0;
	}
	pthread_mutex_unlock(&ctl.lock);
	return seq;
}

void ubs_ctl_request_cancel(uint32_t seq)
{
	struct ctl_mail *m;

	pthread_mutex_lock(&ctl.lock);
	if ((m = ctl_slot_find(seq)))
		ctl_slot_free(m);
	pthread_mutex_unlock(&ctl.lock);
}

int ubs_ctl_request_finish(uint32_t seq, int wait_ms, int fds[1], char *why,
			   size_t whylen)
{
	union {
		struct ctl_chan chan;
		struct ctl_tcp tcp;
		struct ctl_error err;
	} m;
	struct ctl_mail *slot;
	uint16_t rt = 0;
	int n = 1, r;

	memset(&m, 0, sizeof(m));
	pthread_mutex_lock(&ctl.lock);
	slot = ctl_slot_find(seq);
	r = slot ? ctl_slot_wait(slot, &rt, &m, sizeof(m), fds, &n,
				 wait_ms + UBS_CTL_IO_MS) : -ENOTCONN;
	pthread_mutex_unlock(&ctl.lock);
	if (r) {
		snprintf(why, whylen, "daemon: %s", strerror(-r));
		return r;
	}
	if (rt == CTL_R_CHANNEL && n == 1)
		return 0;
	close_fds(fds, rt == CTL_R_CHANNEL ? n : 0);
	if (rt == CTL_R_TCP) {
		m.tcp.reason[sizeof(m.tcp.reason) - 1] = '\0';
		snprintf(why, whylen, "%s", m.tcp.reason);
		return -ENOENT;
	}
	if (rt == CTL_R_ERROR) {
		m.err.msg[sizeof(m.err.msg) - 1] = '\0';
		snprintf(why, whylen, "%s", m.err.msg);
		return m.err.err > 0 ? -m.err.err : -EPROTO;
	}
	snprintf(why, whylen, "unexpected reply");
	return -EPROTO;
}

int ubs_ctl_request(int sock_fd, int wait_ms, int fds[1], char *why,
		    size_t whylen)
{
	uint32_t seq = ubs_ctl_request_send(sock_fd, wait_ms);

	if (!seq) {
		snprintf(why, whylen, "daemon unreachable");
		return -ENOTCONN;
	}
	return ubs_ctl_request_finish(seq, wait_ms, fds, why, whylen);
}

/*
 * Ask the daemon for the board (lock held, connection up; released while
 * waiting).  Returns 0 with *out the board mapped, or -errno.
 */
static int board_fetch(struct ubt_board **out)
{
	union {
		struct ctl_board b;
		struct ctl_error e;
	} m;
	struct ubt_board *b;
	uint16_t rt = 0;
	uint32_t seq;
	int fd = -1, n = 1, r;

	memset(&m, 0, sizeof(m));
	r = ctl_send(CTL_REQ_BOARD, NULL, 0, NULL, 0, &seq);
	if (r == 0)
		r = ctl_wait(seq, &rt, &m, sizeof(m), &fd, &n,
			     UBS_CTL_IO_MS);
	if (r)
		return r;
	if (rt == CTL_R_ERROR)
		return m.e.err > 0 ? -m.e.err : -EPROTO;
	if (rt != CTL_R_BOARD || n != 1) {
		if (n == 1 && fd >= 0)  /* some other reply's fd */
			ubs_fd_release(fd);
		return -EPROTO;
	}
	if (brd.last && brd.last->id == m.b.id) {
		ubs_fd_release(fd);     /* the one mapped already */
		*out = brd.last;
		return 0;
	}
	b = calloc(1, sizeof(*b));
	if (!b) {
		ubs_fd_release(fd);
		return -ENOMEM;
	}
	r = ubt_board_map(b, fd);
	if (r == 0 && b->id != m.b.id) {
		ubs_fd_release(b->seg.fd);
		b->seg.fd = -1;
		ubt_board_unmap(b);
		free(b);
		return -EPROTO;
	}
	if (r < 0) {
		ubs_fd_release(fd);
		free(b);
		return r;
	}
	if (b->seg.fd >= 0) {           /* the mapping is all we need */
		ubs_fd_release(b->seg.fd);
		b->seg.fd = -1;
	}
	/* The one before (a previous daemon's) stays mapped: connections
	 * may live in it. */
	brd.last = b;
	ubs_info("board %016llx: %u slots", (unsigned long long)b->id,
		 b->nslots);
	*out = b;
	return 0;
}

int ubs_ctl_board(struct ubt_board **out)
{
	struct ubt_board *b = NULL;
	uint64_t gen;
	int r;

	if (__atomic_load_n(&brd.fresh, __ATOMIC_ACQUIRE)) {
		*out = __atomic_load_n(&brd.cur, __ATOMIC_RELAXED);
		return *out ? 0 : __atomic_load_n(&brd.err, __ATOMIC_RELAXED);
	}
	pthread_mutex_lock(&ctl.lock);
	r = ctl_up();
	if (r == 0 && !brd.fresh) {
		gen = ctl_gen;
		r = board_fetch(&b);
		/* The answer of the session still up holds until the next
		 * session; a lost connection is asked again. */
		if (gen == ctl_gen && ctl.fd >= 0 && (r == 0 || r == -ENOENT)) {
			__atomic_store_n(&brd.cur, b, __ATOMIC_RELAXED);
			__atomic_store_n(&brd.id, b ? b->id : 0,
					 __ATOMIC_RELAXED);
			__atomic_store_n(&brd.err, r, __ATOMIC_RELAXED);
			__atomic_store_n(&brd.fresh, true, __ATOMIC_RELEASE);
		}
	}
	if (brd.fresh) {
		b = brd.cur;
		r = brd.err;
	} else if (r) {
		/* No daemon now: the last answer, if any, still holds
		 * (the board of the last daemon is where its processes
		 * meet). */
		b = brd.cur;
	}
	pthread_mutex_unlock(&ctl.lock);
	*out = b;
	return b ? 0 : r ? r : -ENOENT;
}

struct ubt_board *ubs_ctl_board_adopt(int fd)
{
	struct ubt_board *b = calloc(1, sizeof(*b));

	if (!b || ubt_board_map(b, fd) < 0) {
		ubs_real.close(fd);
		free(b);
		return NULL;
	}
	if (b->seg.fd >= 0) {
		ubs_real.close(b->seg.fd);      /* the mapping is all we need */
		b->seg.fd = -1;
	}
	pthread_mutex_lock(&ctl.lock);
	if (brd.last && brd.last->id == b->id) {
		ubt_board_unmap(b);
		free(b);
		b = brd.last;
	} else {
		brd.last = b;   /* the daemon names it again: this one */
	}
	pthread_mutex_unlock(&ctl.lock);
	return b;
}

uint64_t ubs_ctl_board_id(void)
{
	return __atomic_load_n(&brd.id, __ATOMIC_RELAXED);
}

int ubs_ctl_call(uint16_t type, const void *body, uint32_t len,
		 const int *fds, int nfds, uint16_t *rtype, void *rbody,
		 size_t cap, int *rfds, int *nrfds)
{
	uint32_t seq;
	int none = 0, r;

	pthread_mutex_lock(&ctl.lock);
	r = ctl_up();
	if (r == 0)
		r = ctl_send(type, body, len, fds, nfds, &seq);
	if (r == 0)
		r = ctl_wait(seq, rtype, rbody, cap, rfds,
			     rfds ? nrfds : &none, UBS_CTL_IO_MS);
	pthread_mutex_unlock(&ctl.lock);
	return r;
}

void ubs_ctl_atfork_child(void)
{
	/* The connection is the parent's session: the child makes its own
	 * on first need.  The page mapping is shared and stays valid. */
	pthread_mutex_init(&ctl.lock, NULL);
	pthread_cond_init(&ctl_cv, NULL);
	ctl_reading = false;
	ctl_connecting = false;
	ctl.had_session = false;
	/* Its own doorbell, made on first need; the parent's stays open
	 * for the channels inherited with it. */
	db.fd = -1;
	db.gen = 0;
	db.note = NULL;
	for (int i = 0; i < CTL_WAITERS; i++)
		ctl_slot_free(&mailbox[i]);
	rb_reset(0);            /* the parent's bytes and fds */
	if (ctl.fd >= 0)
		ubs_fd_release(ctl.fd);
	ctl.fd = -1;
	ctl.next_try_ms = 0;
}

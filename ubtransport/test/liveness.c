/* SPDX-License-Identifier: MIT */
/*
 * liveness.c - a peer's death is detected, never waited out.
 *
 * The waits take a watch_fd: a pidfd of the peer, or (as in the socket
 * shim) a kernel socket whose other end the peer holds, so the kernel's
 * FIN / EOF on its death is the signal.  Every wait here has no timeout:
 * a missed detection hangs and the Criterion timeout fails the test.
 *
 *   - a producer killed mid-stream: everything it published is read, an
 *     exact prefix of what it wrote, then the wait reports the watch (and
 *     keeps reporting it);
 *   - the same, seen through a TCP connection and through a socketpair;
 *   - a consumer killed while the producer sleeps on a full ring;
 *   - a producer killed while it holds the ring's producer lock, many
 *     times: the lock is taken over, no record is torn or lost;
 *   - an orderly close wakes a sleeping reader, which reads EOF.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "helpers.h"

#define KiB 1024u
#define MiB (1u << 20)
#define KILLED (128 + SIGKILL)          /* th_wait() of a kill -9 */

/* wait.c: a doorbell word is epoch << 32 | registered waiters. */
#define DB_COUNT(s) ((uint32_t)(s))
/* ring.c: a lock word is the owner's pid | this bit. */
#define LOCK_WAITERS 0x80000000u

static pid_t my_tid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* ============================================ a producer killed mid-stream */

#define PS_RING (64 * KiB)
#define PS_ROUNDS 4

struct progress {
	_Atomic uint64_t done;          /* bytes the producer's writes took */
	_Atomic uint64_t attempt;       /* end of the write in flight */
	_Atomic uint64_t writes;
};

struct prod_arg {
	struct progress *pg;
	uint64_t seed;
	int drop_fd;                    /* the parent's socket end, or -1 */
};

/* Child: stream th_fill bytes of a->seed forever, recording progress. */
static int stream_forever(struct ubt_chan *c, void *arg)
{
	struct prod_arg *a = arg;
	struct ubt_ring *tx = ubt_chan_tx(c, 0);
	uint8_t *buf = malloc(PS_RING);
	uint64_t pos = 0, rs = a->seed * 3 + 1;
	int pfd = th_watch_parent();

	/* Of the watched connection keep only our end: its close on our
	 * death is what the parent waits for. */
	if (a->drop_fd >= 0)
		close(a->drop_fd);
	CHECK(tx && buf);
	for (;;) {
		size_t len = th_logsize(&rs, PS_RING), off = 0;

		th_fill(a->seed, pos, buf, len);
		atomic_store(&a->pg->attempt, pos + len);
		while (off < len) {
			ssize_t n = ubt_stream_write(tx, buf + off, len - off);

			if (n == -EAGAIN) {
				struct ubt_wait w = {
					.spin_ns = th_rand(&rs) & 1 ? 20000 : 0,
					.timeout_ms = -1, .watch_fd = pfd,
					.watch_events = POLLIN,
				};

				CHECK(ubt_wait_writable(tx, 1, &w) == UBT_READY);
				continue;
			}
			CHECK(n > 0);
			off += (size_t)n;
			atomic_store(&a->pg->done, pos + off);
			atomic_fetch_add(&a->pg->writes, 1);
		}
		pos += len;
	}
}

/* Read from rx, verifying, until the wait reports watch_fd; kill pid
 * -9 once kill_at bytes are in.  Returns the bytes read. */
static uint64_t read_until_watch(struct ubt_ring *rx, uint64_t seed,
				 int watch_fd, short events, pid_t pid,
				 uint64_t kill_at, uint8_t *buf)
{
	const struct ubt_wait w = { .spin_ns = 0, .timeout_ms = -1,
				    .watch_fd = watch_fd,
				    .watch_events = events };
	uint64_t got = 0;
	int killed = 0, e;

	for (;;) {
		ssize_t n = ubt_stream_read(rx, buf, PS_RING, 0);

		if (n == -EAGAIN) {
			e = ubt_wait_readable(rx, &w);
			if (e == UBT_WATCH)
				break;
			cr_assert_eq(e, UBT_READY, "wait: %d", e);
			continue;
		}
		cr_assert_gt(n, 0, "read: %zd (the producer never closes)", n);
		cr_assert_eq(th_verify(seed, got, buf, (size_t)n), 0,
			     "corrupt byte at stream position ~%lu",
			     (unsigned long)got);
		got += (uint64_t)n;
		/* Right after a read: the producer is woken, mid-write. */
		if (!killed && got >= kill_at) {
			cr_assert_eq(kill(pid, SIGKILL), 0);
			killed = 1;
		}
	}
	cr_assert(killed, "the watch fired while the producer was alive");
	/* The watch fires only once the ring was found empty; whatever is
	 * still there (nothing, the producer being dead) must verify too. */
	for (;;) {
		ssize_t n = ubt_stream_read(rx, buf, PS_RING, 0);

		if (n == -EAGAIN)
			break;
		cr_assert_gt(n, 0, "read after death: %zd", n);
		cr_assert_eq(th_verify(seed, got, buf, (size_t)n), 0);
		got += (uint64_t)n;
	}
	/* Still dead: the next wait reports the watch at once... */
	cr_assert_eq(ubt_wait_readable(rx, &w), UBT_WATCH);
	/* ...and withdrew its doorbell registration both times. */
	cr_assert_eq(DB_COUNT(atomic_load(&rx->shm->data_db)), 0,
		     "a wait that returned left itself registered");
	return got;
}

enum watch_kind { W_PIDFD, W_TCP, W_SOCKETPAIR };

/* A connected pair of sockets: [0] stays with the parent. */
static void connected(enum watch_kind k, int sv[2])
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);
	int l;

	if (k == W_SOCKETPAIR) {
		cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC,
					0, sv), 0);
		return;
	}
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(l >= 0);
	cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(l, 1), 0);
	cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &alen), 0);
	sv[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(sv[1] >= 0);
	cr_assert_eq(connect(sv[1], (struct sockaddr *)&a, sizeof(a)), 0);
	sv[0] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	cr_assert(sv[0] >= 0);
	close(l);
}

static void producer_killed(enum watch_kind k)
{
	struct progress *pg = th_shared(sizeof(*pg));
	uint8_t *buf = malloc(PS_RING);
	uint64_t rs = 0x51ed + (uint64_t)k;
	int round;

	cr_assert(buf);
	for (round = 0; round < PS_ROUNDS; round++) {
		struct prod_arg a = { .pg = pg, .seed = th_rand(&rs),
				      .drop_fd = -1 };
		uint64_t kill_at = 2 * MiB + th_rand(&rs) % (2 * MiB), got;
		struct ubt_chan c;
		int sv[2] = { -1, -1 }, watch;
		short events;
		char b;
		pid_t pid;

		memset(pg, 0, sizeof(*pg));
		if (k != W_PIDFD) {
			connected(k, sv);
			a.drop_fd = sv[0];
		}
		pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
			{ .kind = UBT_RING_STREAM, .producer = 1,
			  .size = PS_RING },
		}, 1, stream_forever, &a);
		cr_assert(pid > 0);
		if (k == W_PIDFD) {
			watch = ubt_pidfd(pid);
			events = POLLIN;
			cr_assert(watch >= 0);
		} else {
			close(sv[1]);   /* now only the child holds it */
			watch = sv[0];
			events = POLLIN | POLLRDHUP;
		}
		got = read_until_watch(ubt_chan_rx(&c, 0), a.seed, watch,
				       events, pid, kill_at, buf);
		cr_assert_eq(th_wait(pid, 10000), KILLED,
			     "the producer failed before it was killed");
		/* An exact prefix: no more than was being written, no less
		 * than the writes that had returned. */
		cr_assert_geq(got, kill_at);
		cr_assert_leq(atomic_load(&pg->done), got,
			      "lost bytes: writes returned %lu, read %lu",
			      (unsigned long)atomic_load(&pg->done),
			      (unsigned long)got);
		cr_assert_leq(got, atomic_load(&pg->attempt),
			      "read %lu, more than was ever written (%lu)",
			      (unsigned long)got,
			      (unsigned long)atomic_load(&pg->attempt));
		if (k != W_PIDFD)       /* the reason: the peer's close */
			cr_assert_eq(recv(watch, &b, 1, MSG_DONTWAIT), 0);
		cr_log_info("producer killed (%s) after %lu writes: read %lu "
			    "bytes, written %lu..%lu",
			    k == W_PIDFD ? "pidfd" : k == W_TCP ? "tcp" :
			    "socketpair", (unsigned long)pg->writes,
			    (unsigned long)got, (unsigned long)pg->done,
			    (unsigned long)pg->attempt);
		close(watch);
		ubt_chan_close(&c);
	}
	free(buf);
	munmap(pg, sizeof(*pg));
}

Test(liveness, producer_killed_mid_stream_seen_by_pidfd, .timeout = 30)
{
	producer_killed(W_PIDFD);
}

Test(liveness, producer_killed_seen_by_tcp_connection_close, .timeout = 30)
{
	producer_killed(W_TCP);
}

Test(liveness, producer_killed_seen_by_socketpair_close, .timeout = 30)
{
	producer_killed(W_SOCKETPAIR);
}

/* ============================ a consumer killed, the producer asleep */

#define CK_RING 4096
#define CK_CHUNK 512

struct slow {
	uint64_t seed;
	_Atomic uint64_t consumed;
};

/* Child: read 256 bytes at a time, slowly, verifying them. */
static int slow_consumer(struct ubt_chan *c, void *arg)
{
	struct slow *s = arg;
	struct ubt_ring *rx = ubt_chan_rx(c, 0);
	int pfd = th_watch_parent();
	const struct ubt_wait w = { .spin_ns = 0, .timeout_ms = -1,
				    .watch_fd = pfd, .watch_events = POLLIN };
	uint8_t buf[256];
	uint64_t pos = 0;

	CHECK(rx);
	for (;;) {
		ssize_t n = ubt_stream_read(rx, buf, sizeof(buf), 0);

		if (n == -EAGAIN) {
			CHECK(ubt_wait_readable(rx, &w) == UBT_READY);
			continue;
		}
		CHECK(n > 0);
		CHECK(th_verify(s->seed, pos, buf, (size_t)n) == 0);
		pos += (uint64_t)n;
		atomic_store(&s->consumed, pos);
		usleep(300);
	}
}

struct killer {
	pid_t victim, waiter;           /* the consumer; the producer thread */
	int victim_pidfd;
	struct ubt_ring *ring;
	struct slow *s;
	_Atomic int fired;
};

/* Kill the consumer once it has read a while and the producer is asleep
 * in ubt_wait_writable (registered on the space doorbell, in poll). */
static void *killer_main(void *arg)
{
	struct killer *k = arg;
	struct pollfd p = { .fd = k->victim_pidfd, .events = POLLIN };

	for (;;) {
		if (poll(&p, 1, 0) != 0)
			return NULL;    /* died by itself: a failed check */
		if (atomic_load(&k->s->consumed) >= 16 * KiB &&
		    DB_COUNT(atomic_load(&k->ring->shm->space_db)) >= 1 &&
		    th_task_state(getpid(), k->waiter) == 'S')
			break;
		usleep(100);
	}
	kill(k->victim, SIGKILL);
	atomic_store(&k->fired, 1);
	return NULL;
}

Test(liveness, consumer_killed_while_producer_blocked_on_full_ring,
     .timeout = 30)
{
	struct slow *s = th_shared(sizeof(*s));
	struct killer k = { .s = s };
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = -1,
			      .watch_events = POLLIN };
	struct ubt_ring *tx;
	struct ubt_chan c;
	uint8_t buf[CK_CHUNK];
	uint64_t pos = 0;
	pthread_t th;
	pid_t pid;
	int e;

	s->seed = 0xc0ffee;
	pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 0, .size = CK_RING },
	}, 1, slow_consumer, s);
	cr_assert(pid > 0);
	tx = ubt_chan_tx(&c, 0);
	w.watch_fd = k.victim_pidfd = ubt_pidfd(pid);
	cr_assert(tx && w.watch_fd >= 0);
	k.victim = pid;
	k.waiter = my_tid();
	k.ring = tx;
	cr_assert_eq(pthread_create(&th, NULL, killer_main, &k), 0);
	for (;;) {
		ssize_t n;

		th_fill(s->seed, pos, buf, CK_CHUNK);
		n = ubt_stream_write(tx, buf, CK_CHUNK);
		if (n == -EAGAIN) {
			e = ubt_wait_writable(tx, 1, &w);
			if (e == UBT_WATCH)
				break;
			cr_assert_eq(e, UBT_READY, "wait: %d", e);
			continue;
		}
		cr_assert_gt(n, 0, "write: %zd", n);
		pos += (uint64_t)n;
	}
	pthread_join(th, NULL);
	cr_assert(atomic_load(&k.fired),
		  "the watch fired while the consumer was alive");
	/* Woken by the death, not by room: the ring is still full. */
	cr_assert_eq(ubt_ring_writable(tx), 0);
	cr_assert_eq(ubt_stream_write(tx, buf, 1), -EAGAIN);
	cr_assert_eq(ubt_wait_writable(tx, 1, &w), UBT_WATCH);
	cr_assert_eq(DB_COUNT(atomic_load(&tx->shm->space_db)), 0,
		     "a wait that returned left itself registered");
	cr_assert_eq(th_wait(pid, 10000), KILLED,
		     "the consumer failed before it was killed");
	cr_assert_geq(atomic_load(&s->consumed), 16 * KiB);
	cr_log_info("consumer killed after reading %lu of %lu bytes",
		    (unsigned long)s->consumed, (unsigned long)pos);
	close(w.watch_fd);
	ubt_chan_close(&c);
	munmap(s, sizeof(*s));
}

/* ================================== a producer killed holding the lock */

#define LK_RING (64 * KiB)
#define LK_ROUNDS_MIN 50
#define LK_ROUNDS_MAX 400
#define LK_HELD_WANT 5          /* kills that landed inside the lock */
#define LK_PREC 3               /* the parent's records per round */
#define LK_MAXW 256             /* body words per record */

enum { WHO_PARENT = 1, WHO_VICTIM = 2, WHO_DONE = 3 };

struct lrec {
	uint32_t round, who;
	uint64_t seq;
	uint64_t w[LK_MAXW];
};

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Record (round, who, seq): its length and every word depend on all three,
 * so a torn record (a header or words from another one) cannot verify. */
static size_t lrec_fill(struct lrec *m, uint32_t round, uint32_t who,
			uint64_t seq)
{
	uint64_t base = mix64(seq ^ (uint64_t)round << 40 ^
			      (uint64_t)who << 60);
	uint32_t i, nw = 1 + (uint32_t)(base >> 40) % LK_MAXW;

	m->round = round;
	m->who = who;
	m->seq = seq;
	for (i = 0; i < nw; i++)
		m->w[i] = base + i * 0xd6e8feb86659fd93ull;
	return 16 + 8 * (size_t)nw;
}

static int lrec_ok(const struct lrec *m, size_t len)
{
	uint64_t base = mix64(m->seq ^ (uint64_t)m->round << 40 ^
			      (uint64_t)m->who << 60);
	uint32_t i, nw = 1 + (uint32_t)(base >> 40) % LK_MAXW;

	if (len != 16 + 8 * (size_t)nw)
		return 0;
	for (i = 0; i < nw; i++)
		if (m->w[i] != base + i * 0xd6e8feb86659fd93ull)
			return 0;
	return 1;
}

struct lk_board {
	_Atomic uint32_t started;       /* 1 + the round a victim wrote in */
	_Atomic uint32_t rounds;        /* completed, as the consumer saw */
	_Atomic uint64_t victim_recs;
	_Atomic uint32_t rounds_with_victim_recs;
};

struct lk_ctx {
	struct ubt_ring *tx;            /* the parent's handle, inherited */
	struct lk_board *b;
	uint32_t round;
	int consumer_pidfd;
};

/* Child (forked, sharing the parent's channel): a second producer on
 * side 0 writing records as fast as it can, until killed. */
static int victim(void *arg)
{
	struct lk_ctx *x = arg;
	const struct ubt_wait w = { .spin_ns = 20000, .timeout_ms = -1,
				    .watch_fd = x->consumer_pidfd,
				    .watch_events = POLLIN };
	struct lrec m;
	uint64_t seq;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (seq = 0;; seq++) {
		size_t len = lrec_fill(&m, x->round, WHO_VICTIM, seq);
		int e;

		while ((e = ubt_msg_send(x->tx, WHO_VICTIM, &m, len)) ==
		       -EAGAIN)
			CHECK(ubt_wait_writable(x->tx, len, &w) == UBT_READY);
		CHECK(e == 0);
		if (seq == 0)
			atomic_store(&x->b->started, x->round + 1);
	}
}

/* Consumer child (side 1): every record whole, in this order per round:
 * the victim's records 0, 1, 2, ... (a prefix of what it sent), then the
 * parent's LK_PREC records; finally DONE.
 *
 * It spins (a 1 s budget outlasts every gap here) rather than sleeping on
 * the doorbell: this test is about the lock.  A victim killed between
 * publishing and ringing the doorbell would leave a sleeping consumer
 * asleep - a separate liveness problem, not what is tested here. */
static int lk_consumer(struct ubt_chan *c, void *arg)
{
	struct lk_board *b = arg;
	struct ubt_ring *rx = ubt_chan_rx(c, 0);
	int pfd = th_watch_parent();
	const struct ubt_wait w = { .spin_ns = 1000000000,
				    .timeout_ms = -1, .watch_fd = pfd,
				    .watch_events = POLLIN };
	uint32_t round = 0, tag;
	uint64_t vseq = 0, pseq = 0;
	static struct lrec m;

	CHECK(rx);
	for (;;) {
		ssize_t n = ubt_msg_recv(rx, &tag, &m, sizeof(m));

		if (n == -EAGAIN) {
			CHECK(ubt_wait_readable(rx, &w) == UBT_READY);
			continue;
		}
		CHECK(n >= 16);
		CHECK(tag == m.who);
		CHECK(lrec_ok(&m, (size_t)n));
		CHECK(m.round == round);
		if (m.who == WHO_DONE)
			break;
		if (m.who == WHO_VICTIM) {
			/* The victim is reaped before the parent writes. */
			CHECK(pseq == 0);
			CHECK(m.seq == vseq);
			vseq++;
			continue;
		}
		CHECK(m.who == WHO_PARENT);
		CHECK(m.seq == pseq);
		if (++pseq < LK_PREC)
			continue;
		atomic_fetch_add(&b->victim_recs, vseq);
		if (vseq)
			atomic_fetch_add(&b->rounds_with_victim_recs, 1);
		atomic_store(&b->rounds, ++round);
		vseq = pseq = 0;
	}
	return 0;
}

static void lk_send(struct ubt_ring *tx, uint32_t round, uint32_t who,
		    uint64_t seq, const struct ubt_wait *w)
{
	static struct lrec m;
	size_t len = lrec_fill(&m, round, who, seq);
	int e;

	while ((e = ubt_msg_send(tx, who, &m, len)) == -EAGAIN)
		cr_assert_eq(ubt_wait_writable(tx, len, w), UBT_READY);
	cr_assert_eq(e, 0, "round %u: send after the kill: %d", round, e);
}

Test(liveness, producer_killed_holding_the_ring_lock, .timeout = 30)
{
	struct lk_board *b = th_shared(sizeof(*b));
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = -1,
			      .watch_events = POLLIN };
	struct lk_ctx x;
	struct ubt_chan c;
	uint64_t rs = 0x10c4;
	uint32_t round, held = 0, i;
	pid_t cons;

	cons = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_MSG, .producer = 0, .size = LK_RING },
	}, 1, lk_consumer, b);
	cr_assert(cons > 0);
	x.tx = ubt_chan_tx(&c, 0);
	x.b = b;
	x.consumer_pidfd = w.watch_fd = ubt_pidfd(cons);
	cr_assert(x.tx && w.watch_fd >= 0);
	for (round = 0; round < LK_ROUNDS_MAX; round++) {
		uint32_t word;
		pid_t v;

		if (round >= LK_ROUNDS_MIN && held >= LK_HELD_WANT)
			break;
		x.round = round;
		v = th_fork(victim, &x);
		cr_assert(v > 0);
		/* A random moment (0-2 ms) after it got going. */
		while (atomic_load(&b->started) != round + 1) {
			cr_assert_eq(waitpid(v, NULL, WNOHANG), 0,
				     "round %u: the victim died unkilled",
				     round);
			usleep(20);
		}
		usleep((useconds_t)(th_rand(&rs) % 2001));
		cr_assert_eq(kill(v, SIGKILL), 0);
		cr_assert_eq(th_wait(v, 10000), KILLED,
			     "round %u: the victim failed before the kill",
			     round);
		word = atomic_load(&x.tx->shm->plock);
		if ((word & ~LOCK_WAITERS) == (uint32_t)v)
			held++;
		/* The victim is gone (reaped), maybe holding the lock. */
		for (i = 0; i < LK_PREC; i++)
			lk_send(x.tx, round, WHO_PARENT, i, &w);
		cr_assert_eq(atomic_load(&x.tx->shm->plock), 0,
			     "round %u: lock word %#x after the parent's sends",
			     round, atomic_load(&x.tx->shm->plock));
	}
	lk_send(x.tx, round, WHO_DONE, 0, &w);
	cr_assert_eq(th_wait(cons, 20000), 0, "the consumer saw a bad stream");
	cr_assert_eq(atomic_load(&b->rounds), round);
	cr_log_info("lock holder killed: %u rounds, killed inside the lock "
		    "%u times, %lu victim records in %u rounds", round, held,
		    (unsigned long)b->victim_recs, b->rounds_with_victim_recs);
	cr_assert_geq(held, 1, "no kill landed while the victim held the "
		      "lock: the takeover was not exercised");
	cr_assert_eq(atomic_load(&b->rounds_with_victim_recs), round,
		     "a victim was killed before it wrote");
	close(w.watch_fd);
	ubt_chan_close(&c);
	munmap(b, sizeof(*b));
}

/* ============================================== orderly close, EOF */

struct closer {
	pid_t parent_tid;
	int done_fd;                    /* read end: the parent is finished */
	int drop_fd;                    /* the write end, the parent's */
};

/* Child: once the parent sleeps in its wait, close the producer end, and
 * stay alive a while (so the parent's pidfd watch cannot be what wakes it). */
static int close_when_asleep(struct ubt_chan *c, void *arg)
{
	struct closer *k = arg;
	struct ubt_ring *tx = ubt_chan_tx(c, 0);
	struct pollfd p = { .fd = k->done_fd, .events = POLLIN };

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	close(k->drop_fd);
	CHECK(tx);
	while (!(DB_COUNT(atomic_load(&tx->shm->data_db)) >= 1 &&
		 th_task_state(getppid(), k->parent_tid) == 'S'))
		usleep(200);
	ubt_ring_close_producer(tx);
	CHECK(tx->st.doorbells == 1);
	CHECK(poll(&p, 1, 3000) >= 0);
	return 0;
}

Test(liveness, orderly_close_wakes_a_sleeping_reader, .timeout = 30)
{
	struct closer k = { .parent_tid = my_tid() };
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = -1,
			      .watch_events = POLLIN };
	struct ubt_ring *rx;
	struct ubt_chan c;
	int done[2], e;
	char b;
	pid_t pid;

	cr_assert_eq(pipe2(done, O_CLOEXEC), 0);
	k.done_fd = done[0];
	k.drop_fd = done[1];
	pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = 4096 },
	}, 1, close_when_asleep, &k);
	cr_assert(pid > 0);
	close(done[0]);
	rx = ubt_chan_rx(&c, 0);
	w.watch_fd = ubt_pidfd(pid);
	cr_assert(rx && w.watch_fd >= 0);
	cr_assert_eq(ubt_stream_read(rx, &b, 1, 0), -EAGAIN);
	e = ubt_wait_readable(rx, &w);
	cr_assert_neq(e, UBT_WATCH, "not woken by the close: by the exit");
	cr_assert_eq(e, UBT_READY, "wait: %d", e);
	cr_assert_eq(rx->st.sleeps, 1, "slept %lu times",
		     (unsigned long)rx->st.sleeps);
	cr_assert_eq(rx->st.spin_hits, 0);
	cr_assert_eq(ubt_stream_read(rx, &b, 1, 0), 0, "not EOF");
	cr_assert_eq(ubt_stream_read(rx, &b, 1, 0), 0, "EOF does not stay");
	cr_assert_eq(ubt_wait_readable(rx, &w), UBT_READY);
	close(done[1]);
	cr_assert_eq(th_wait(pid, 10000), 0);
	close(w.watch_fd);
	ubt_chan_close(&c);
}

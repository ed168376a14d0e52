/* SPDX-License-Identifier: MIT */
/*
 * spin.c - what waiting costs.
 *
 *   - a wait with spin budget 0 sleeps at once: blocked ~400 ms it uses
 *     next to no CPU and a couple of context switches; the control case
 *     (a 300 ms budget) shows the measurement does see spinning;
 *   - when both sides are busy a message costs ring operations only: a
 *     ping-pong with large spin budgets rings (almost) no doorbell and
 *     never sleeps, and makes (almost) no read/write system call;
 *   - a consumer that sleeps is woken by each message, one doorbell per
 *     sleep: every sleep ends on a doorbell, and a doorbell is only rung
 *     for a registered waiter (at most one per wait).
 *
 * No wall-clock performance is asserted: CPU time and counters only, with
 * generous margins.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "helpers.h"

/* wait.c: a doorbell word is epoch << 32 | registered waiters. */
#define DB_COUNT(s) ((uint32_t)(s))

/* Tests that measure CPU spent spinning take turns (Criterion runs tests
 * in parallel): a lock on this very binary, held until the test exits. */
static void cpu_alone(void)
{
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);

	cr_assert(fd >= 0);
	cr_assert_eq(flock(fd, LOCK_EX), 0);
}

static int64_t tv_us(const struct timeval *t)
{
	return (int64_t)t->tv_sec * 1000000 + t->tv_usec;
}

/* CPU time (user + system) between two getrusage() snapshots, in us. */
static int64_t cpu_us(const struct rusage *a, const struct rusage *b)
{
	return tv_us(&b->ru_utime) - tv_us(&a->ru_utime) +
	       tv_us(&b->ru_stime) - tv_us(&a->ru_stime);
}

/* read(2) + write(2)-family system calls made by the calling thread so far
 * (/proc task I/O accounting), or -1 if the kernel does not keep them. */
static int64_t rw_syscalls(void)
{
	char line[128];
	int64_t r = -1, w = -1;
	long long v;
	FILE *f = fopen("/proc/thread-self/io", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "syscr: %lld", &v) == 1)
			r = v;
		else if (sscanf(line, "syscw: %lld", &v) == 1)
			w = v;
	}
	fclose(f);
	return r < 0 || w < 0 ? -1 : r + w;
}

/* ======================================= the cost of a blocked wait */

#define BLOCK_MS 400

struct later {
	int go_fd;                      /* read end: the parent starts waiting */
	int drop_fd;                    /* the write end, the parent's */
};

/* Child: when told, sleep BLOCK_MS, then write one byte. */
static int write_later(struct ubt_chan *c, void *arg)
{
	struct later *l = arg;
	struct ubt_ring *tx = ubt_chan_tx(c, 0);
	char b;

	th_watch_parent();
	close(l->drop_fd);
	CHECK(tx);
	CHECK(read(l->go_fd, &b, 1) == 1);
	usleep(BLOCK_MS * 1000);
	CHECK(ubt_stream_write(tx, "x", 1) == 1);
	return 0;
}

struct cost {
	int64_t wall_us, cpu_us;
	long nvcsw;
	struct ubt_ring_stats st;
};

/* Block in ubt_wait_readable (no timeout) until the child writes, BLOCK_MS
 * after we start; measure this thread over the wait. */
static struct cost blocked_wait(int64_t spin_ns)
{
	struct later l;
	struct ubt_ring *rx;
	struct ubt_chan c;
	struct rusage r0, r1;
	struct cost k;
	uint64_t t0;
	int go[2], e;
	char b;
	pid_t pid;

	cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
	l.go_fd = go[0];
	l.drop_fd = go[1];
	pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = 4096 },
	}, 1, write_later, &l);
	cr_assert(pid > 0);
	close(go[0]);
	rx = ubt_chan_rx(&c, 0);
	cr_assert(rx);
	{
		struct ubt_wait w = { .spin_ns = spin_ns, .timeout_ms = -1,
				      .watch_fd = ubt_pidfd(pid),
				      .watch_events = POLLIN };

		cr_assert(w.watch_fd >= 0);
		cr_assert_eq(write(go[1], "g", 1), 1);
		t0 = th_now_ms();
		getrusage(RUSAGE_THREAD, &r0);
		e = ubt_wait_readable(rx, &w);
		getrusage(RUSAGE_THREAD, &r1);
		k.wall_us = (int64_t)(th_now_ms() - t0) * 1000;
		close(w.watch_fd);
	}
	cr_assert_eq(e, UBT_READY, "wait: %d (the writer died?)", e);
	cr_assert_eq(ubt_stream_read(rx, &b, 1, 0), 1);
	cr_assert_eq(b, 'x');
	cr_assert_eq(th_wait(pid, 10000), 0);
	k.cpu_us = cpu_us(&r0, &r1);
	k.nvcsw = r1.ru_nvcsw - r0.ru_nvcsw;
	k.st = rx->st;
	close(go[1]);
	ubt_chan_close(&c);
	cr_log_info("spin budget %ld ns, blocked %ld ms: cpu %ld us, "
		    "%ld voluntary switches, %lu sleeps, %lu spin hits",
		    (long)spin_ns, (long)(k.wall_us / 1000), (long)k.cpu_us,
		    k.nvcsw, (unsigned long)k.st.sleeps,
		    (unsigned long)k.st.spin_hits);
	/* The measurement covers a real block, or it says nothing. */
	cr_assert_geq(k.wall_us, 200 * 1000, "blocked only %ld ms",
		      (long)(k.wall_us / 1000));
	return k;
}

Test(spin, zero_budget_sleeps_without_spinning, .timeout = 30)
{
	struct cost k = blocked_wait(0);

	cr_assert_lt(k.cpu_us, 20 * 1000, "a spin-0 wait burnt %ld us of CPU",
		     (long)k.cpu_us);
	cr_assert_leq(k.nvcsw, 10, "%ld voluntary context switches",
		      k.nvcsw);
	cr_assert_eq(k.st.spin_hits, 0);
	cr_assert_eq(k.st.sleeps, 1, "slept %lu times",
		     (unsigned long)k.st.sleeps);
}

/* The control: the same measurement does see a spinning wait. */
Test(spin, control_a_300ms_budget_does_burn_cpu, .timeout = 30)
{
	struct cost k;

	cpu_alone();
	k = blocked_wait(300 * 1000 * 1000);

	/* Three times what the sleeping wait may burn: enough to tell the
	 * two apart, little enough for a CPU shared with other loads (two
	 * cores: a 300 ms spin got 122 ms of them beside two test runs). */
	cr_assert_geq(k.cpu_us, 60 * 1000,
		      "a 300 ms spin budget burnt only %ld us of CPU",
		      (long)k.cpu_us);
}

/* ==================================== busy both sides: no syscalls */

#define PP_N 100000
#define PP_MAX_MS 10000                 /* stop early on a starved box */
#define PP_MIN 1000                     /* ...but not before this many */
#define PP_SPIN 1000000000              /* 1 s: outlasts any reply */
#define TAG_PING 1
#define TAG_STOP 2

struct pp_report {
	struct ubt_ring_stats rx, tx;
	uint64_t msgs;
	int64_t rw_calls;               /* -1: not measured */
	long nvcsw;
};

static uint64_t bells(const struct ubt_ring_stats *a,
		      const struct ubt_ring_stats *b)
{
	return a->doorbells + a->sleeps + b->doorbells + b->sleeps;
}

/* Child: echo every ping; stop on STOP. */
static int ponger(struct ubt_chan *c, void *arg)
{
	struct pp_report *rep = arg;
	struct ubt_ring *rx = ubt_chan_rx(c, 0), *tx = ubt_chan_tx(c, 0);
	const struct ubt_wait w = { .spin_ns = PP_SPIN, .timeout_ms = -1,
				    .watch_fd = th_watch_parent(),
				    .watch_events = POLLIN };
	struct rusage r0, r1;
	int64_t io0 = rw_syscalls(), io1;
	uint64_t expect = 0, v;
	uint32_t tag;

	CHECK(rx && tx);
	getrusage(RUSAGE_THREAD, &r0);
	for (;;) {
		ssize_t n = ubt_msg_recv(rx, &tag, &v, sizeof(v));

		if (n == -EAGAIN) {
			CHECK(ubt_wait_readable(rx, &w) == UBT_READY);
			continue;
		}
		CHECK(n == sizeof(v));
		if (tag == TAG_STOP)
			break;
		CHECK(tag == TAG_PING && v == expect);
		expect++;
		/* At most one in flight: never full. */
		CHECK(ubt_msg_send(tx, TAG_PING, &v, sizeof(v)) == 0);
	}
	getrusage(RUSAGE_THREAD, &r1);
	io1 = rw_syscalls();
	rep->rx = rx->st;
	rep->tx = tx->st;
	rep->msgs = expect;
	rep->rw_calls = io0 < 0 || io1 < 0 ? -1 : io1 - io0;
	rep->nvcsw = r1.ru_nvcsw - r0.ru_nvcsw;
	return 0;
}

Test(spin, busy_ping_pong_makes_no_syscalls, .timeout = 30)
{
	struct pp_report *rep = th_shared(sizeof(*rep));
	struct ubt_ring *tx, *rx;
	struct ubt_chan c;
	struct ubt_wait w = { .spin_ns = PP_SPIN, .timeout_ms = -1,
			      .watch_events = POLLIN };
	struct rusage r0, r1;
	int64_t io0, io1;
	uint64_t i, v, t0, pb, cb, allowed;
	const char *broke = NULL;
	uint32_t tag;
	long nvcsw;
	pid_t pid;

	cpu_alone();
	pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_MSG, .producer = 0, .size = 4096 },
		{ .kind = UBT_RING_MSG, .producer = 1, .size = 4096 },
	}, 2, ponger, rep);
	cr_assert(pid > 0);
	tx = ubt_chan_tx(&c, 0);
	rx = ubt_chan_rx(&c, 0);
	w.watch_fd = ubt_pidfd(pid);
	cr_assert(tx && rx && w.watch_fd >= 0);

	t0 = th_now_ms();
	io0 = rw_syscalls();
	getrusage(RUSAGE_THREAD, &r0);
	for (i = 0; i < PP_N; i++) {
		ssize_t n;

		if ((i & 1023) == 0 && i >= PP_MIN &&
		    th_now_ms() - t0 > PP_MAX_MS)
			break;
		/* No assertion inside the measured loop: checks only. */
		if (ubt_msg_send(tx, TAG_PING, &i, sizeof(i)) != 0) {
			broke = "send";
			break;
		}
		while ((n = ubt_msg_recv(rx, &tag, &v, sizeof(v))) == -EAGAIN)
			if (ubt_wait_readable(rx, &w) != UBT_READY)
				break;
		if (n != sizeof(v) || tag != TAG_PING || v != i) {
			broke = "receive";
			break;
		}
	}
	getrusage(RUSAGE_THREAD, &r1);
	io1 = rw_syscalls();
	cr_assert_null(broke, "ping-pong: %s failed at %lu", broke,
		       (unsigned long)i);
	cr_assert_geq(i, PP_MIN);
	cr_assert_eq(ubt_msg_send(tx, TAG_STOP, &i, sizeof(i)), 0);
	cr_assert_eq(th_wait(pid, 10000), 0);
	cr_assert_eq(rep->msgs, i);

	pb = bells(&tx->st, &rx->st);
	cb = bells(&rep->rx, &rep->tx);
	nvcsw = r1.ru_nvcsw - r0.ru_nvcsw;
	allowed = i / 100;              /* 1% of the messages each way */
	cr_log_info("ping-pong x%lu in %lu ms: parent %lu doorbells+sleeps, "
		    "%ld rw syscalls, %ld voluntary switches; child %lu, "
		    "%ld, %ld", (unsigned long)i,
		    (unsigned long)(th_now_ms() - t0), (unsigned long)pb,
		    (long)(io0 < 0 || io1 < 0 ? -1 : io1 - io0), nvcsw,
		    (unsigned long)cb, (long)rep->rw_calls, rep->nvcsw);
	cr_assert_leq(pb + cb, allowed,
		      "busy sides rang %lu doorbells / slept, for %lu messages",
		      (unsigned long)(pb + cb), (unsigned long)i);
	/* The syscalls themselves (a few reading /proc itself). */
	cr_assert_leq(nvcsw, (long)allowed + 5);
	cr_assert_leq(rep->nvcsw, (long)allowed + 5);
	if (io0 >= 0 && io1 >= 0)
		cr_assert_leq(io1 - io0, (int64_t)allowed + 5,
			      "%ld read/write syscalls", (long)(io1 - io0));
	if (rep->rw_calls >= 0)
		cr_assert_leq(rep->rw_calls, (int64_t)allowed + 5,
			      "child: %ld read/write syscalls",
			      (long)rep->rw_calls);
	close(w.watch_fd);
	ubt_chan_close(&c);
	munmap(rep, sizeof(*rep));
}

/* ========================= a sleeping consumer: one doorbell per sleep */

#define WK_PACED 200
#define WK_FREE 20000
#define TAG_DATA 1

struct wk_report {
	struct ubt_ring_stats rx;
	uint64_t waits, msgs;
};

/* Child: consume with spin 0 (every wait that finds nothing sleeps),
 * counting waits; every record in order; stop after STOP. */
static int sleepy(struct ubt_chan *c, void *arg)
{
	struct wk_report *rep = arg;
	struct ubt_ring *rx = ubt_chan_rx(c, 0);
	const struct ubt_wait w = { .spin_ns = 0, .timeout_ms = -1,
				    .watch_fd = th_watch_parent(),
				    .watch_events = POLLIN };
	uint64_t expect = 0, v, waits = 0;
	uint32_t tag;

	CHECK(rx);
	for (;;) {
		ssize_t n = ubt_msg_recv(rx, &tag, &v, sizeof(v));

		if (n == -EAGAIN) {
			waits++;
			CHECK(ubt_wait_readable(rx, &w) == UBT_READY);
			continue;
		}
		CHECK(n == sizeof(v) && v == expect);
		expect++;
		if (tag == TAG_STOP)
			break;
		CHECK(tag == TAG_DATA);
	}
	rep->rx = rx->st;
	rep->waits = waits;
	rep->msgs = expect;
	return 0;
}

/* Until the consumer sleeps in its wait: registered on the doorbell and
 * blocked in a system call (after registering, only its poll() blocks). */
static void until_asleep(struct ubt_ring *tx, pid_t pid, int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };

	while (DB_COUNT(atomic_load(&tx->shm->data_db)) != 1 ||
	       th_task_state(pid, pid) != 'S') {
		cr_assert_eq(poll(&p, 1, 0), 0, "the consumer died");
		usleep(50);
	}
}

static pid_t sleepy_pair(struct ubt_chan *c, struct wk_report *rep,
			 uint64_t ring_size, int *pidfd)
{
	pid_t pid = th_chan_pair(c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_MSG, .producer = 0, .size = ring_size },
	}, 1, sleepy, rep);

	cr_assert(pid > 0);
	*pidfd = ubt_pidfd(pid);
	cr_assert(*pidfd >= 0);
	return pid;
}

/* Each message sent while the consumer sleeps: each wakes it, with exactly
 * one doorbell, and no doorbell is ever rung in the other direction. */
Test(spin, each_message_to_a_sleeper_rings_once, .timeout = 30)
{
	struct wk_report *rep = th_shared(sizeof(*rep));
	struct ubt_ring *tx;
	struct ubt_chan c;
	uint64_t i;
	int pfd;
	pid_t pid = sleepy_pair(&c, rep, 4096, &pfd);

	tx = ubt_chan_tx(&c, 0);
	for (i = 0; i < WK_PACED; i++) {
		until_asleep(tx, pid, pfd);
		cr_assert_eq(ubt_msg_send(tx, i + 1 == WK_PACED ? TAG_STOP :
					  TAG_DATA, &i, sizeof(i)), 0);
	}
	cr_assert_eq(th_wait(pid, 10000), 0);
	cr_log_info("paced: %lu messages, %lu doorbells, %lu sleeps",
		    (unsigned long)rep->msgs, (unsigned long)tx->st.doorbells,
		    (unsigned long)rep->rx.sleeps);
	cr_assert_eq(rep->msgs, WK_PACED);
	cr_assert_eq(rep->waits, WK_PACED);
	cr_assert_eq(rep->rx.sleeps, WK_PACED, "woken without sleeping?");
	cr_assert_eq(tx->st.doorbells, WK_PACED,
		     "%lu doorbells for %d messages to a sleeper",
		     (unsigned long)tx->st.doorbells, WK_PACED);
	cr_assert_eq(rep->rx.spin_hits, 0);
	/* The producer never waited: the consumer never rang for space. */
	cr_assert_eq(tx->st.sleeps, 0);
	cr_assert_eq(rep->rx.doorbells, 0);
	close(pfd);
	ubt_chan_close(&c);
	munmap(rep, sizeof(*rep));
}

/*
 * Free-running, with pauses so the consumer often sleeps.  What wait.c
 * guarantees, with one consumer and no watch event or timeout:
 *   sleeps <= doorbells: a sleep (poll) ends only on a token, and a token
 *     is written only by a doorbell that claimed this consumer; once
 *     claimed it leaves the poll loop (so one sleep per doorbell);
 *   doorbells <= waits: a doorbell claims a registration, and each wait
 *     registers at most once (woken, the data is there);
 *   doorbells <= messages: a send rings at most once.
 * doorbells may exceed sleeps: a message landing between registration and
 * the re-check rings, and the consumer takes the token without sleeping.
 */
Test(spin, sleeping_consumer_sleeps_end_on_doorbells, .timeout = 30)
{
	struct wk_report *rep = th_shared(sizeof(*rep));
	struct ubt_ring *tx;
	struct ubt_chan c;
	uint64_t i, rs = 0x5eed, d;
	int pfd;
	pid_t pid = sleepy_pair(&c, rep, 512 * 1024, &pfd);

	tx = ubt_chan_tx(&c, 0);
	until_asleep(tx, pid, pfd);     /* at least the first one sleeps */
	for (i = 0; i < WK_FREE; i++) {
		uint64_t r = th_rand(&rs);

		if (r % 16 == 0)
			usleep((useconds_t)(r >> 32) % 200);
		cr_assert_eq(ubt_msg_send(tx, i + 1 == WK_FREE ? TAG_STOP :
					  TAG_DATA, &i, sizeof(i)), 0);
	}
	cr_assert_eq(th_wait(pid, 10000), 0);
	d = tx->st.doorbells;
	cr_log_info("free-running: %lu messages, %lu waits, %lu doorbells, "
		    "%lu sleeps", (unsigned long)rep->msgs,
		    (unsigned long)rep->waits, (unsigned long)d,
		    (unsigned long)rep->rx.sleeps);
	cr_assert_eq(rep->msgs, WK_FREE);
	cr_assert_geq(rep->rx.sleeps, 1);
	cr_assert_leq(rep->rx.sleeps, d, "%lu sleeps but %lu doorbells",
		      (unsigned long)rep->rx.sleeps, (unsigned long)d);
	cr_assert_leq(d, rep->waits, "%lu doorbells but %lu waits",
		      (unsigned long)d, (unsigned long)rep->waits);
	cr_assert_leq(d, WK_FREE);
	cr_assert_eq(rep->rx.spin_hits, 0);
	cr_assert_eq(tx->st.sleeps, 0, "the ring filled up");
	cr_assert_eq(rep->rx.doorbells, 0);
	close(pfd);
	ubt_chan_close(&c);
	munmap(rep, sizeof(*rep));
}

/* Child for the stray-token test: on "1" write a byte (it claims the
 * killed waiter), on "2" write another after 2 s (past STRAY_MS). */
static int write_twice(struct ubt_chan *c, void *arg)
{
	struct ubt_ring *tx = ubt_chan_tx(c, 0);
	int go = *(int *)arg;
	char b;

	th_watch_parent();
	CHECK(read(go, &b, 1) == 1);
	CHECK(ubt_stream_write(tx, "a", 1) == 1);
	CHECK(read(go, &b, 1) == 1);
	usleep(2000000);
	CHECK(ubt_stream_write(tx, "b", 1) == 1);
	return 0;
}

static int doomed_waiter(void *arg)
{
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = -1, .watch_fd = -1 };

	ubt_wait_readable(arg, &w);
	return 0;
}

/*
 * A waiter killed while registered is claimed by the next doorbell, whose
 * token then nobody reads.  The next sleeper on that eventfd must discard
 * the stray and really sleep, not loop on a readable eventfd.
 */
Test(spin, stray_token_of_a_killed_waiter_is_discarded, .timeout = 30)
{
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = -1, .watch_fd = -1 };
	struct rusage r0, r1;
	struct ubt_chan c;
	struct ubt_ring *rx;
	int go[2];
	pid_t pid, d;
	char b;

	cpu_alone();
	cr_assert_eq(pipe(go), 0);
	pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = 4096 },
	}, 1, write_twice, &go[0]);
	cr_assert(pid > 0);
	rx = ubt_chan_rx(&c, 0);
	d = th_fork(doomed_waiter, rx);         /* a second consumer */
	while (DB_COUNT(atomic_load(&rx->shm->data_db)) != 1 ||
	       th_task_state(d, d) != 'S')
		usleep(100);
	kill(d, SIGKILL);
	cr_assert_eq(th_wait(d, 5000), 128 + SIGKILL);
	cr_assert_eq(write(go[1], "1", 1), 1);  /* claims the dead waiter */
	while (ubt_stream_read(rx, &b, 1, 0) != 1)
		usleep(100);
	cr_assert_eq(write(go[1], "2", 1), 1);
	getrusage(RUSAGE_THREAD, &r0);
	cr_assert_eq(ubt_wait_readable(rx, &w), UBT_READY);
	getrusage(RUSAGE_THREAD, &r1);
	cr_assert_eq(rx->st.strays, 1, "the stray token must be discarded");
	/* STRAY_MS (1 s) of yields and 1 ms naps, then one real sleep: not
	 * 2 s of naps. */
	cr_assert_leq(r1.ru_nvcsw - r0.ru_nvcsw, 1400, "%ld switches",
		      r1.ru_nvcsw - r0.ru_nvcsw);
	cr_assert_eq(th_wait(pid, 5000), 0);
	ubt_chan_close(&c);
}

/* Child for the starved-owner test: on "1" write a byte into the first
 * ring; end on the next byte. */
static int write_first(struct ubt_chan *c, void *arg)
{
	int go = *(int *)arg;
	char b;

	th_watch_parent();
	CHECK(read(go, &b, 1) == 1);
	CHECK(ubt_stream_write(ubt_chan_tx(c, 0), "a", 1) == 1);
	CHECK(read(go, &b, 1) == 1);
	return 0;
}

/* A sleeper that gets 0 only once it saw its data (10 s at most). */
static int patient_waiter(void *arg)
{
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = 10000, .watch_fd = -1 };

	return ubt_wait_readable(arg, &w) == UBT_READY ? 0 : 1;
}

/*
 * The sleepers of one process doorbell share its eventfd.  A sleeper
 * claimed by a doorbell but not running yet (stopped here; on a loaded
 * machine, waiting for a CPU) owns the token written for it: another
 * sleeper of the same eventfd, woken by it again and again meanwhile,
 * must not take it for a stray after a few milliseconds, or the owner,
 * when it runs, finds the eventfd empty and sleeps on: a lost wake-up.
 */
Test(spin, token_of_a_sleeper_not_running_yet_is_not_a_stray, .timeout = 30)
{
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = 300, .watch_fd = -1 };
	struct ubt_chan c;
	struct ubt_ring *mine, *theirs;
	int go[2];
	pid_t pid, a;

	cr_assert_eq(pipe(go), 0);
	pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = 4096 },
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = 4096 },
	}, 2, write_first, &go[0]);
	cr_assert(pid > 0);
	theirs = ubt_chan_rx(&c, 0);
	mine = ubt_chan_rx(&c, 1);
	a = th_fork(patient_waiter, theirs);    /* shares our eventfd */
	while (DB_COUNT(atomic_load(&theirs->shm->data_db)) != 1 ||
	       th_task_state(a, a) != 'S')
		usleep(100);
	cr_assert_eq(kill(a, SIGSTOP), 0);
	while (th_task_state(a, a) != 'T')
		usleep(100);
	cr_assert_eq(write(go[1], "1", 1), 1);  /* claims a, one token */
	while (DB_COUNT(atomic_load(&theirs->shm->data_db)) != 0)
		usleep(100);
	cr_assert_eq(ubt_wait_readable(mine, &w), -ETIMEDOUT);
	cr_assert_eq(mine->st.strays, 0, "a's token was taken for a stray");
	cr_assert_eq(kill(a, SIGCONT), 0);
	cr_assert_eq(th_wait(a, 5000), 0, "the claimed sleeper never woke");
	cr_assert_eq(write(go[1], "x", 1), 1);
	close(go[1]);
	cr_assert_eq(th_wait(pid, 5000), 0);
	ubt_chan_close(&c);
}

/* SPDX-License-Identifier: MIT */
/*
 * chan.c - channels across two processes: create + attach, a message each
 * way, layout-version refusal, the UB/TCP decision CAS under a real race,
 * one-sided access to a stopped peer's memory by (segment id, offset), and
 * shutdown (EOF after data, EPIPE for writes).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "helpers.h"

/* struct ubt_chan_hdr sits right after struct ubt_seg_hdr, at byte 64 of
 * the segment (chan.c's CHAN_HDR_OFF); chan_hdr() checks that. */
#define CHAN_HDR_OFF 64

static struct ubt_chan_hdr *chan_hdr(struct ubt_chan *c)
{
	struct ubt_chan_hdr *h = (void *)(c->seg.base + CHAN_HDR_OFF);

	cr_assert_eq(h->version, UBT_LAYOUT_VER, "channel header moved?");
	cr_assert_eq(h->nrings, c->nrings, "channel header moved?");
	return h;
}

static const struct ubt_wait block = {
	.spin_ns = 0, .timeout_ms = 10000, .watch_fd = -1,
};

/* Blocking helpers usable in a child (return <0 instead of asserting). */
static int write_all(struct ubt_ring *r, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = ubt_stream_write(r, p, len);

		if (n == -EAGAIN) {
			int e = ubt_wait_writable(r, 1, &block);

			if (e != UBT_READY)
				return e;
			continue;
		}
		if (n < 0)
			return (int)n;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read exactly len bytes (or until EOF): returns bytes read or <0. */
static ssize_t read_full(struct ubt_ring *r, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = ubt_stream_read(r, (char *)buf + got, len - got, 0);

		if (n == -EAGAIN) {
			int e = ubt_wait_readable(r, &block);

			if (e != UBT_READY)
				return e;
			continue;
		}
		if (n < 0)
			return n;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* ----------------------------------------------------- ping / pong */

static int pong(struct ubt_chan *c, void *arg)
{
	struct ubt_ring *rx = ubt_chan_rx(c, 0), *tx = ubt_chan_tx(c, 0);
	char buf[5];

	CHECK(c->side == 1 && c->nrings == 2);
	CHECK(rx && tx && !ubt_chan_rx(c, 1) && !ubt_chan_tx(c, 1));
	CHECK(rx->prod_side == 0 && tx->prod_side == 1);
	/* Sleep (no spin) in wait: the parent writes later. */
	CHECK(ubt_stream_read(rx, buf, 5, 0) == -EAGAIN);
	CHECK(ubt_wait_readable(rx, &block) == UBT_READY);
	CHECK(read_full(rx, buf, 5) == 5);
	CHECK(memcmp(buf, "ping!", 5) == 0);
	CHECK(write_all(tx, "pong!", 5) == 0);
	ubt_chan_close(c);
	return 0;
}

Test(chan, message_each_way, .timeout = 30)
{
	struct ubt_chan c;
	struct ubt_ring *tx, *rx;
	char buf[5];
	pid_t pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 0, .size = 4096 },
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = 4096 },
	}, 2, pong, NULL);

	cr_assert(pid > 0);
	cr_assert_eq(c.side, 0);
	tx = ubt_chan_tx(&c, 0);
	rx = ubt_chan_rx(&c, 0);
	cr_assert(tx && rx && tx != rx);
	/* Give the child time to go to sleep, so the doorbell is rung. */
	usleep(20000);
	cr_assert_eq(write_all(tx, "ping!", 5), 0);
	cr_assert_eq(read_full(rx, buf, 5), 5);
	cr_assert_eq(memcmp(buf, "pong!", 5), 0);
	cr_assert_eq(th_wait(pid, 10000), 0);
	cr_assert_eq(atomic_load(&chan_hdr(&c)->pid[0]), (uint32_t)getpid());
	cr_assert_eq(atomic_load(&chan_hdr(&c)->pid[1]), (uint32_t)pid);
	ubt_chan_close(&c);
}

Test(chan, create_stream_helper, .timeout = 30)
{
	struct ubt_chan c;

	cr_assert_eq(ubt_chan_create_stream(&c, 8192), 0);
	cr_assert_eq(c.nrings, 2);
	cr_assert(ubt_chan_tx(&c, 0) && ubt_chan_rx(&c, 0));
	cr_assert_eq(ubt_chan_tx(&c, 0)->size, 8192);
	cr_assert(fcntl(c.seg.fd, F_GETFD) & FD_CLOEXEC);
	cr_assert(fcntl(c.efd[0], F_GETFD) & FD_CLOEXEC);
	ubt_chan_close(&c);
	cr_assert_eq(ubt_chan_create_stream(&c, 1000), -EINVAL);
	cr_assert_eq(ubt_chan_create_stream(&c, 32), -EINVAL);
}

/* ---------------------------------------------------- layout version */

Test(chan, attach_refuses_other_layout_version, .timeout = 30)
{
	struct ubt_chan c, a;
	struct ubt_chan_hdr *h;
	struct stat was, st;
	int fd;

	cr_assert_eq(ubt_chan_create_stream(&c, 4096), 0);
	h = chan_hdr(&c);
	fd = dup(c.seg.fd);
	cr_assert(fd >= 0);
	cr_assert_eq(fstat(fd, &was), 0);

	h->version = UBT_LAYOUT_VER + 1;
	cr_assert_eq(ubt_chan_attach(&a, fd, -1), -EPROTONOSUPPORT);
	cr_assert_eq(fstat(fd, &st), 0, "attach closed the caller's fd");
	cr_assert_eq(st.st_ino, was.st_ino);
	h->version = 0;
	cr_assert_eq(ubt_chan_attach(&a, fd, -1), -EPROTONOSUPPORT);
	cr_assert_eq(fstat(fd, &st), 0, "attach closed the caller's fd");

	/* The same fd, header repaired: now it attaches (and owns fd). */
	h->version = UBT_LAYOUT_VER;
	cr_assert_eq(ubt_chan_attach(&a, fd, -1), 0);
	cr_assert_eq(a.seg.fd, fd);
	cr_assert_eq(a.side, 1);
	ubt_chan_close(&a);
	cr_assert_eq(fcntl(fd, F_GETFD), -1, "close did not release the fd");
	ubt_chan_close(&c);
}

/* ---------------------------------------------------- the decision CAS */

struct race {
	_Atomic uint32_t arrive[2];     /* per side: rounds reached */
	_Atomic uint32_t answer;        /* child's result */
	uint32_t round;
};

static void barrier(struct race *r, int side)
{
	atomic_store(&r->arrive[side], r->round);
	while (atomic_load(&r->arrive[!side]) != r->round)
		;
}

static int decide_child(struct ubt_chan *c, void *arg)
{
	struct race *r = arg;   /* MAP_SHARED: survives the fork */

	barrier(r, 1);
	atomic_store(&r->answer, ubt_chan_decide(c, UBT_CHAN_TCP));
	/* Asking again never changes the answer. */
	CHECK(ubt_chan_decide(c, UBT_CHAN_UB) == atomic_load(&r->answer));
	return 0;
}

Test(chan, decide_is_one_answer_for_both, .timeout = 30)
{
	struct race *r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int i, ub = 0, tcp = 0;

	cr_assert(r != MAP_FAILED);
	for (i = 0; i < 200; i++) {
		struct ubt_chan c;
		uint32_t mine;
		pid_t pid;

		r->round = (uint32_t)i + 1;
		atomic_store(&r->answer, 0);
		pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
			{ .kind = UBT_RING_STREAM, .producer = 0, .size = 64 },
		}, 1, decide_child, r);
		cr_assert(pid > 0);
		cr_assert_eq(atomic_load(&chan_hdr(&c)->state),
			     UBT_CHAN_UNDECIDED);
		barrier(r, 0);
		mine = ubt_chan_decide(&c, UBT_CHAN_UB);
		cr_assert_eq(th_wait(pid, 10000), 0);
		cr_assert(mine == UBT_CHAN_UB || mine == UBT_CHAN_TCP);
		cr_assert_eq(mine, atomic_load(&r->answer),
			     "round %d: parent got %u, child got %u", i, mine,
			     atomic_load(&r->answer));
		cr_assert_eq(atomic_load(&chan_hdr(&c)->state), mine);
		cr_assert_eq(ubt_chan_decide(&c, mine == UBT_CHAN_UB ?
					     UBT_CHAN_TCP : UBT_CHAN_UB), mine);
		if (mine == UBT_CHAN_UB)
			ub++;
		else
			tcp++;
		ubt_chan_close(&c);
	}
	cr_log_info("decide race: UB won %d, TCP won %d", ub, tcp);
	munmap(r, sizeof(*r));
}

Test(chan, garbage_state_reads_as_tcp, .timeout = 30)
{
	static const uint32_t junk[] = { 3, 7, 0x80000001u, UINT32_MAX };
	struct ubt_chan c;
	size_t i;

	cr_assert_eq(ubt_chan_create_stream(&c, 4096), 0);
	cr_assert_eq(ubt_chan_decide(&c, UBT_CHAN_UB), UBT_CHAN_UB);
	cr_assert_eq(ubt_chan_decide(&c, UBT_CHAN_TCP), UBT_CHAN_UB);
	for (i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
		atomic_store(&chan_hdr(&c)->state, junk[i]);
		cr_assert_eq(ubt_chan_decide(&c, UBT_CHAN_UB), UBT_CHAN_TCP,
			     "state %#x", junk[i]);
		cr_assert_eq(ubt_chan_decide(&c, UBT_CHAN_TCP), UBT_CHAN_TCP);
	}
	atomic_store(&chan_hdr(&c)->state, UBT_CHAN_TCP);
	cr_assert_eq(ubt_chan_decide(&c, UBT_CHAN_UB), UBT_CHAN_TCP);
	ubt_chan_close(&c);
}

/* ------------------------------------------ one-sided: a stopped target */

#define OS_SIZE   (256 * 1024)
#define OS_OFF    (3 * 4096 + 40)       /* pattern: not page aligned */
#define OS_LEN    50000
#define OS_CTR    (OS_SIZE - 8)         /* the counter: last word */
#define OS_INIT   1000u
#define OS_FAA    10000u                /* while stopped */
#define OS_RACE   200000u               /* each, afterwards, concurrently */

struct os_addr {
	uint64_t seg, off, len, ctr;
};

static int target(void *arg)
{
	int sock = *(int *)arg;
	struct ubt_seg s;
	struct os_addr a;
	_Atomic uint64_t *ctr;
	uint8_t *p;
	uint32_t i;
	char go;

	prctl(PR_SET_PDEATHSIG, SIGKILL);       /* never left stopped */
	CHECK(ubt_seg_create(&s, OS_SIZE, UBT_SEG_DATA, "t-target") == 0);
	p = ubt_seg_ptr(&s, OS_OFF, OS_LEN);
	ctr = ubt_seg_ptr(&s, OS_CTR, 8);
	CHECK(p && ctr);
	memset(p, 0, OS_LEN);
	atomic_store(ctr, OS_INIT);
	a = (struct os_addr){ s.id, OS_OFF, OS_LEN, OS_CTR };
	CHECK(ubt_send_fds(sock, &s.fd, 1, &a, sizeof(a)) == sizeof(a));
	/* Stopped around here; continued with the work done. */
	CHECK(read(sock, &go, 1) == 1 && go == 'c');
	CHECK(th_verify(s.id, OS_OFF, p, OS_LEN) == 0);
	CHECK(atomic_load(ctr) == OS_INIT + OS_FAA);
	/* Now both add at the same time: atomic across processes. */
	CHECK(write(sock, "r", 1) == 1);
	for (i = 0; i < OS_RACE; i++)
		atomic_fetch_add(ctr, 1);
	CHECK(write(sock, "d", 1) == 1);
	ubt_seg_unmap(&s);
	return 0;
}

Test(chan, one_sided_access_to_a_stopped_target, .timeout = 30)
{
	struct ubt_seg s, wrong;
	struct os_addr a;
	_Atomic uint64_t *ctr;
	uint8_t *p, back[OS_LEN];
	int sv[2], fd = -1, n = 1, st, dup_fd, faa_ok = 1;
	char stopped_during, c;
	uint32_t i;
	pid_t pid;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
		     0);
	pid = th_fork(target, &sv[1]);
	cr_assert(pid > 0);
	close(sv[1]);
	cr_assert_eq(ubt_recv_fds(sv[0], &fd, &n, &a, sizeof(a)), sizeof(a));
	cr_assert_eq(n, 1);

	cr_assert_eq(kill(pid, SIGSTOP), 0);
	cr_assert_eq(waitpid(pid, &st, WUNTRACED), pid);
	cr_assert(WIFSTOPPED(st));

	/* A DATA segment is not a channel. */
	dup_fd = dup(fd);
	cr_assert_eq(ubt_seg_map(&wrong, dup_fd, UBT_SEG_CHAN), -EPROTO);
	close(dup_fd);

	cr_assert_eq(ubt_seg_map(&s, fd, UBT_SEG_DATA), 0);
	cr_assert_eq(s.id, a.seg, "not the segment the target named");
	/* Remote addresses outside the segment do not resolve. */
	cr_assert_null(ubt_seg_ptr(&s, a.off, OS_SIZE));
	cr_assert_null(ubt_seg_ptr(&s, a.ctr, 9));

	p = ubt_seg_ptr(&s, a.off, a.len);
	ctr = ubt_seg_ptr(&s, a.ctr, 8);
	cr_assert(p && ctr);
	/* Write, read back, fetch-and-add: nothing runs on the target. */
	th_fill(a.seg, a.off, p, a.len);
	memcpy(back, p, a.len);
	for (i = 0; i < OS_FAA; i++)
		if (atomic_fetch_add(ctr, 1) != OS_INIT + i)
			faa_ok = 0;
	stopped_during = th_task_state(pid, pid);

	/* Continue before asserting: a failure must not leave it stopped. */
	cr_assert_eq(kill(pid, SIGCONT), 0);
	cr_assert_eq(stopped_during, 'T', "target ran (state %c)",
		     stopped_during);
	cr_assert_eq(th_verify(a.seg, a.off, back, a.len), 0);
	cr_assert(faa_ok, "fetch-add returned a wrong old value");
	cr_assert_eq(atomic_load(ctr), OS_INIT + OS_FAA);

	cr_assert_eq(write(sv[0], "c", 1), 1);
	cr_assert_eq(read(sv[0], &c, 1), 1);
	cr_assert_eq(c, 'r');
	for (i = 0; i < OS_RACE; i++)
		atomic_fetch_add(ctr, 1);
	cr_assert_eq(read(sv[0], &c, 1), 1);
	cr_assert_eq(c, 'd');
	cr_assert_eq(th_wait(pid, 10000), 0);
	cr_assert_eq(atomic_load(ctr), OS_INIT + OS_FAA + 2ull * OS_RACE,
		     "concurrent fetch-adds lost updates");
	/* The memory outlives its creator: we hold the fd. */
	cr_assert_eq(th_verify(a.seg, a.off, p, a.len), 0);
	ubt_seg_unmap(&s);
	close(sv[0]);
}

/* -------------------------------------------------------- shutdown */

static int after_shutdown(struct ubt_chan *c, void *arg)
{
	struct ubt_ring *rx = ubt_chan_rx(c, 0), *tx = ubt_chan_tx(c, 0);
	int done_fd = *(int *)arg;
	char buf[64];

	/* All pending data first, then EOF, then EOF again. */
	CHECK(read_full(rx, buf, sizeof(buf)) == 11);
	CHECK(memcmp(buf, "last words.", 11) == 0);
	CHECK(ubt_stream_read(rx, buf, sizeof(buf), 0) == 0);
	CHECK(ubt_stream_read(rx, buf, sizeof(buf), UBT_PEEK) == 0);
	CHECK(ubt_wait_readable(rx, &block) == UBT_READY);
	/* EOF can show before ubt_chan_shutdown has closed the parent's
	 * reading end too: wait for it to have returned. */
	CHECK(read(done_fd, buf, 1) == 1);
	/* Writes to the side that shut down: EPIPE, and a writable wait does
	 * not block on it. */
	CHECK(ubt_stream_write(tx, "x", 1) == -EPIPE);
	CHECK(ubt_wait_writable(tx, 1, &block) == UBT_READY);
	CHECK(ubt_stream_write(tx, "x", 1) == -EPIPE);
	ubt_chan_close(c);
	return 0;
}

Test(chan, shutdown_eof_after_data_and_epipe, .timeout = 30)
{
	struct ubt_chan c;
	int done[2];
	pid_t pid;

	cr_assert_eq(pipe2(done, O_CLOEXEC), 0);
	pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 0, .size = 4096 },
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = 4096 },
	}, 2, after_shutdown, &done[0]);
	cr_assert(pid > 0);
	close(done[0]);
	cr_assert_eq(write_all(ubt_chan_tx(&c, 0), "last words.", 11), 0);
	ubt_chan_shutdown(&c);
	cr_assert_eq(write(done[1], "s", 1), 1);
	cr_assert_eq(th_wait(pid, 10000), 0);
	close(done[1]);
	ubt_chan_close(&c);
}

static int shut_then_wait(struct ubt_chan *c, void *arg)
{
	struct ubt_ring *rx = ubt_chan_rx(c, 0);
	char b;

	/* Asleep in the wait when the parent shuts down: woken, EOF. */
	CHECK(ubt_wait_readable(rx, &block) == UBT_READY);
	CHECK(ubt_stream_read(rx, &b, 1, 0) == 0);
	ubt_chan_close(c);
	return 0;
}

Test(chan, shutdown_wakes_a_sleeping_reader, .timeout = 30)
{
	struct ubt_chan c;
	uint64_t t0;
	pid_t pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 0, .size = 4096 },
	}, 1, shut_then_wait, NULL);

	cr_assert(pid > 0);
	usleep(50000);
	t0 = th_now_ms();
	ubt_chan_shutdown(&c);
	cr_assert_eq(th_wait(pid, 10000), 0);
	cr_assert_lt(th_now_ms() - t0, 5000, "the reader was not woken");
	ubt_chan_close(&c);
}

/* Child: receive segment + both eventfds in one message, attach with them,
 * echo one message back; both sides sleep (spin 0), so the eventfds must
 * really be each other's doorbells. */
static int one_message_attacher(void *arg)
{
	int sock = *(int *)arg, fds[3], n = 3;
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = 10000, .watch_fd = -1 };
	struct ubt_chan ch;
	char buf[8];

	CHECK(ubt_recv_fds(sock, fds, &n, NULL, 0) == 0 && n == 3);
	CHECK(ubt_chan_attach_efds(&ch, fds[0], fds[1], fds[2]) == 0);
	CHECK(ch.efd[1] == fds[2]);
	while (ubt_stream_read(ubt_chan_rx(&ch, 0), buf, 5, 0) == -EAGAIN)
		CHECK(ubt_wait_readable(ubt_chan_rx(&ch, 0), &w) == UBT_READY);
	CHECK(memcmp(buf, "hello", 5) == 0);
	CHECK(ubt_stream_write(ubt_chan_tx(&ch, 0), "world", 5) == 5);
	ubt_chan_close(&ch);
	return 0;
}

Test(chan, travels_in_one_message_with_both_eventfds, .timeout = 30)
{
	struct ubt_wait w = { .spin_ns = 0, .timeout_ms = 10000, .watch_fd = -1 };
	struct ubt_chan c;
	int sv[2], fds[3];
	char buf[8];
	pid_t pid;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(ubt_chan_create_stream(&c, 4096), 0);
	fds[0] = c.seg.fd;
	fds[1] = c.efd[0];
	fds[2] = ubt_chan_make_peer_efd(&c);
	cr_assert_geq(fds[2], 0);
	pid = th_fork(one_message_attacher, &sv[1]);
	cr_assert_gt(pid, 0);
	cr_assert_eq(ubt_send_fds(sv[0], fds, 3, NULL, 0), 0);
	usleep(20000);                  /* let the child sleep first */
	cr_assert_eq(ubt_stream_write(ubt_chan_tx(&c, 0), "hello", 5), 5);
	while (ubt_stream_read(ubt_chan_rx(&c, 0), buf, 5, 0) == -EAGAIN)
		cr_assert_eq(ubt_wait_readable(ubt_chan_rx(&c, 0), &w), UBT_READY);
	cr_assert_eq(memcmp(buf, "world", 5), 0);
	cr_assert_eq(th_wait(pid, 10000), 0);
	ubt_chan_close(&c);
}

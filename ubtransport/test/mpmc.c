/* SPDX-License-Identifier: MIT */
/*
 * mpmc.c - several producers and consumers on one ring: threads and
 * forked processes on both ends.  Every record arrives exactly once, each
 * consumer sees each producer's records in order, and sleepers sharing
 * one eventfd are all woken (no timeout anywhere: a lost wake-up hangs).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "helpers.h"

#define NPROD 3                 /* 2 threads + 1 forked child */
#define PER_PROD 30000
#define MAXLEN 2048

struct board {
	_Atomic uint8_t seen[NPROD][PER_PROD];
	_Atomic uint32_t dups;
	_Atomic uint32_t disorder;
	_Atomic uint32_t received;
};

struct rec {
	uint32_t prod, seq;
	uint8_t fill[MAXLEN];
};

static struct board *board;

struct pctx {
	struct ubt_ring *r;
	uint32_t id;
};

static int produce(struct ubt_ring *r, uint32_t id)
{
	uint64_t rs = id * 1000 + 1;
	struct rec m;
	uint32_t i;

	for (i = 0; i < PER_PROD; i++) {
		size_t len = 8 + th_rand(&rs) % MAXLEN;
		int e;

		m.prod = id;
		m.seq = i;
		th_fill(id * 1000003ull + i, 0, m.fill, len - 8);
		while ((e = ubt_msg_send(r, id, &m, len)) == -EAGAIN) {
			struct ubt_wait w = {
				.spin_ns = th_rand(&rs) & 1 ? 5000 : 0,
				.timeout_ms = -1, .watch_fd = -1,
			};

			int we = ubt_wait_writable(r, len, &w);

			if (we != UBT_READY) {
				fprintf(stderr, "producer %u: wait %d\n", id, we);
				return 1;
			}
		}
		if (e) {
			fprintf(stderr, "producer %u: send %d\n", id, e);
			return 2;
		}
	}
	return 0;
}

static void *prod_thread(void *arg)
{
	struct pctx *p = arg;

	return (void *)(intptr_t)produce(p->r, p->id);
}

static int prod_child(void *arg)
{
	struct pctx *p = arg;

	return produce(p->r, p->id);
}

static int consume(struct ubt_ring *r)
{
	uint32_t last[NPROD], tag;
	uint64_t rs = (uint64_t)pthread_self() | 1;
	struct rec m;
	int i;

	for (i = 0; i < NPROD; i++)
		last[i] = UINT32_MAX;
	for (;;) {
		ssize_t n = ubt_msg_recv(r, &tag, &m, sizeof(m));

		if (n == -EAGAIN) {
			struct ubt_wait w = {
				.spin_ns = th_rand(&rs) & 1 ? 5000 : 0,
				.timeout_ms = -1, .watch_fd = -1,
			};

			if (ubt_wait_readable(r, &w) != UBT_READY)
				return 1;
			continue;
		}
		if (n == -EPIPE)
			return 0;
		if (n < 8 || m.prod >= NPROD || m.seq >= PER_PROD ||
		    tag != m.prod)
			return 3;
		if (th_verify(m.prod * 1000003ull + m.seq, 0, m.fill,
			      (size_t)n - 8))
			return 4;
		if (atomic_fetch_add(&board->seen[m.prod][m.seq], 1))
			atomic_fetch_add(&board->dups, 1);
		if (last[m.prod] != UINT32_MAX && m.seq <= last[m.prod])
			atomic_fetch_add(&board->disorder, 1);
		last[m.prod] = m.seq;
		atomic_fetch_add(&board->received, 1);
	}
}

static void *cons_thread(void *arg)
{
	return (void *)(intptr_t)consume(arg);
}

static int cons_proc(void *arg)
{
	return consume(arg);
}

/* Side 1: two consumer threads and a forked consumer process. */
static int consumers(struct ubt_chan *c, void *arg)
{
	struct ubt_ring *rx = ubt_chan_rx(c, 0);
	pthread_t t[2];
	void *rv;
	pid_t pid = th_fork(cons_proc, rx);
	int i, bad = 0;

	CHECK(pid > 0);
	for (i = 0; i < 2; i++)
		CHECK(pthread_create(&t[i], NULL, cons_thread, rx) == 0);
	for (i = 0; i < 2; i++) {
		pthread_join(t[i], &rv);
		bad |= (int)(intptr_t)rv;
	}
	return bad | th_wait(pid, 60000);
}

Test(mpmc, threads_and_processes_on_both_ends, .timeout = 90)
{
	struct ubt_chan c;
	struct pctx pc[NPROD];
	pthread_t t[2];
	pid_t cons, prod;
	void *rv;
	int i, p, s;

	board = mmap(NULL, sizeof(*board), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert(board != MAP_FAILED);
	/* A small ring keeps both ends contending and sleeping. */
	cons = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_MSG, .producer = 0, .size = 16384 },
	}, 1, consumers, NULL);
	cr_assert(cons > 0);
	for (i = 0; i < NPROD; i++)
		pc[i] = (struct pctx){ ubt_chan_tx(&c, 0), (uint32_t)i };
	prod = th_fork(prod_child, &pc[2]);
	cr_assert(prod > 0);
	for (i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, prod_thread, &pc[i]), 0);
	for (i = 0; i < 2; i++) {
		pthread_join(t[i], &rv);
		cr_assert_null(rv, "producer thread %d failed", i);
	}
	cr_assert_eq(th_wait(prod, 60000), 0);
	ubt_ring_close_producer(ubt_chan_tx(&c, 0));
	cr_assert_eq(th_wait(cons, 60000), 0);

	cr_assert_eq(board->received, NPROD * PER_PROD);
	cr_assert_eq(board->dups, 0);
	cr_assert_eq(board->disorder, 0);
	for (p = 0; p < NPROD; p++)
		for (s = 0; s < PER_PROD; s++)
			cr_assert_eq(board->seen[p][s], 1, "lost %d/%d", p, s);
	ubt_chan_close(&c);
}

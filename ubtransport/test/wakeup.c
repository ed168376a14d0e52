/* SPDX-License-Identifier: MIT */
/*
 * wakeup.c - no lost wake-ups.  Both sides sleep on every wait (spin 0)
 * with NO timeout, and both take random pauses so that every interleaving
 * of "register as waiter" and "publish + notify" is hit; a single lost
 * doorbell leaves one side asleep forever and the test times out.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

#define ROUNDS 20000

static const struct ubt_wait forever = { .spin_ns = 0, .timeout_ms = -1,
					 .watch_fd = -1 };

/* Sometimes pause a little, sometimes not at all. */
static void jitter(uint64_t *rs)
{
	uint64_t r = th_rand(rs);

	if ((r & 3) == 0) {
		struct timespec ts = { 0, (long)((r >> 8) % 30000) };

		nanosleep(&ts, NULL);
	} else if ((r & 3) == 1) {
		sched_yield();
	}
}

struct wctx {
	uint32_t kind;
};

/* Blocking stream write of len bytes (may exceed the ring: then the writer
 * sleeps for space while the reader drains). */
static int put(struct ubt_ring *r, const uint8_t *buf, size_t len)
{
	while (len) {
		ssize_t k = ubt_stream_write(r, buf, len);

		if (k == -EAGAIN) {
			if (ubt_wait_writable(r, 1, &forever) != UBT_READY)
				return -1;
			continue;
		}
		if (k <= 0)
			return -1;
		buf += k;
		len -= (size_t)k;
	}
	return 0;
}

/* Blocking stream read of exactly len bytes. */
static int get(struct ubt_ring *r, uint8_t *buf, size_t len, uint64_t *rs)
{
	while (len) {
		ssize_t k;

		jitter(rs);
		k = ubt_stream_read(r, buf, len, 0);
		if (k == -EAGAIN) {
			if (ubt_wait_readable(r, &forever) != UBT_READY)
				return -1;
			continue;
		}
		if (k <= 0)
			return -1;
		buf += k;
		len -= (size_t)k;
	}
	return 0;
}

static int send_rec(struct ubt_ring *r, uint32_t tag, const void *b, size_t len)
{
	int e;

	while ((e = ubt_msg_send(r, tag, b, len)) == -EAGAIN)
		if (ubt_wait_writable(r, len, &forever) != UBT_READY)
			return -1;
	return e;
}

static ssize_t recv_rec(struct ubt_ring *r, uint32_t *tag, void *b, size_t cap)
{
	ssize_t k;

	while ((k = ubt_msg_recv(r, tag, b, cap)) == -EAGAIN)
		if (ubt_wait_readable(r, &forever) != UBT_READY)
			return -1;
	return k;
}

/*
 * Child: each round, receive the request (a record, or len stream bytes
 * where both sides draw len from the same generator), verify it, and
 * answer.  The parent waits for every answer, so one lost doorbell on
 * either side deadlocks the pair.
 */
static int responder(struct ubt_chan *c, void *arg)
{
	struct wctx *w = arg;
	struct ubt_ring *rx = ubt_chan_rx(c, 0), *tx = ubt_chan_tx(c, 0);
	uint64_t rs = 77, ls = 11;
	uint8_t buf[512];
	uint32_t i, tag;

	for (i = 0; i < ROUNDS; i++) {
		size_t len = 1 + th_rand(&ls) % 300;

		if (w->kind == UBT_RING_MSG) {
			jitter(&rs);
			CHECK(recv_rec(rx, &tag, buf, sizeof(buf)) == (ssize_t)len);
			CHECK(tag == i && th_verify(i, 0, buf, len) == 0);
			jitter(&rs);
			CHECK(send_rec(tx, i, &i, sizeof(i)) == 0);
		} else {
			CHECK(get(rx, buf, len, &rs) == 0);
			CHECK(th_verify(i, 0, buf, len) == 0);
			jitter(&rs);
			CHECK(put(tx, (uint8_t *)&i, sizeof(i)) == 0);
		}
	}
	return 0;
}

static void run(uint32_t kind, uint64_t ring)
{
	struct wctx w = { kind };
	struct ubt_chan c;
	pid_t pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = kind, .producer = 0, .size = ring },
		{ .kind = kind, .producer = 1, .size = 64 },
	}, 2, responder, &w);
	struct ubt_ring *tx = ubt_chan_tx(&c, 0), *rx = ubt_chan_rx(&c, 0);
	uint64_t rs = 3, ls = 11;
	uint8_t buf[512];
	uint32_t i, ack, tag;

	cr_assert(pid > 0);
	for (i = 0; i < ROUNDS; i++) {
		size_t len = 1 + th_rand(&ls) % 300;

		th_fill(i, 0, buf, len);
		jitter(&rs);
		if (kind == UBT_RING_MSG) {
			cr_assert_eq(send_rec(tx, i, buf, len), 0);
			cr_assert_eq(recv_rec(rx, &tag, &ack, sizeof(ack)),
				     sizeof(ack));
		} else {
			cr_assert_eq(put(tx, buf, len), 0);
			cr_assert_eq(get(rx, (uint8_t *)&ack, sizeof(ack), &rs), 0);
		}
		cr_assert_eq(ack, i);
	}
	cr_assert_eq(th_wait(pid, 10000), 0);
	/* Only meaningful if the sides really slept, many times. */
	cr_assert_gt(tx->st.sleeps + rx->st.sleeps, ROUNDS / 4);
	ubt_chan_close(&c);
}

Test(wakeup, stream_both_sides_sleep_without_timeout, .timeout = 60)
{
	/* A 128 B ring: requests up to 300 B make the writer sleep for
	 * space as well as the reader for data. */
	run(UBT_RING_STREAM, 128);
}

Test(wakeup, records_both_sides_sleep_without_timeout, .timeout = 60)
{
	run(UBT_RING_MSG, 1024);
}

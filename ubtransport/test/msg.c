/* SPDX-License-Identifier: MIT */
/*
 * msg.c - the record ring: two-process stress with log-uniform record
 * sizes 1 B - 1 MiB across the wrap, and record semantics (zero-length
 * records, ENOBUFS keeps the record, EMSGSIZE, fixed entry size, EOF).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

#define MiB (1u << 20)

struct mstress {
	uint64_t seed;
	uint32_t max_msgs;
	uint64_t max_ms;
};

static int wait_w(struct ubt_ring *r, size_t len, uint64_t *rs)
{
	struct ubt_wait w = { .spin_ns = th_rand(rs) & 1 ? 20000 : 0,
			      .timeout_ms = -1, .watch_fd = -1 };

	return ubt_wait_writable(r, len, &w);
}

static int wait_r(struct ubt_ring *r, uint64_t *rs)
{
	struct ubt_wait w = { .spin_ns = th_rand(rs) & 1 ? 20000 : 0,
			      .timeout_ms = -1, .watch_fd = -1 };

	return ubt_wait_readable(r, &w);
}

/* Child: receive records until EOF; record i has tag i and content
 * th_fill(seed ^ i, 0, len).  Report the count on the reverse ring. */
static int mreader(struct ubt_chan *c, void *arg)
{
	struct mstress *s = arg;
	struct ubt_ring *rx = ubt_chan_rx(c, 0), *tx = ubt_chan_tx(c, 0);
	uint8_t *buf = malloc(MiB);
	uint32_t seq = 0, tag;
	uint64_t rs = 99;

	CHECK(buf);
	for (;;) {
		ssize_t n = ubt_msg_recv(rx, &tag, buf, MiB);

		if (n == -EAGAIN) {
			CHECK(wait_r(rx, &rs) == UBT_READY);
			continue;
		}
		if (n == -EPIPE)
			break;
		CHECK(n >= 0);
		CHECK(tag == seq);
		CHECK(th_verify(s->seed ^ seq, 0, buf, (size_t)n) == 0);
		seq++;
	}
	while (ubt_msg_send(tx, 0, &seq, sizeof(seq)) == -EAGAIN)
		CHECK(wait_w(tx, sizeof(seq), &rs) == UBT_READY);
	return 0;
}

Test(msg, two_process_log_uniform_records, .timeout = 60)
{
	struct mstress s = { .seed = 0xabcdef, .max_msgs = 20000,
			     .max_ms = 3000 };
	struct ubt_chan c;
	pid_t pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_MSG, .producer = 0, .size = 2 * MiB },
		{ .kind = UBT_RING_MSG, .producer = 1, .size = 64 },
	}, 2, mreader, &s);
	struct ubt_ring *tx = ubt_chan_tx(&c, 0), *rx = ubt_chan_rx(&c, 0);
	uint8_t *buf = malloc(MiB);
	uint64_t rs = s.seed, t0 = th_now_ms(), bytes = 0;
	uint32_t seq = 0, got = 0, tag;
	ssize_t n;

	cr_assert(pid > 0 && buf);
	while (seq < s.max_msgs && th_now_ms() - t0 < s.max_ms) {
		size_t len = th_logsize(&rs, MiB);
		int e;

		th_fill(s.seed ^ seq, 0, buf, len);
		while ((e = ubt_msg_send(tx, seq, buf, len)) == -EAGAIN)
			cr_assert_eq(wait_w(tx, len, &rs), UBT_READY);
		cr_assert_eq(e, 0);
		bytes += len;
		seq++;
	}
	ubt_ring_close_producer(tx);
	while ((n = ubt_msg_recv(rx, &tag, &got, sizeof(got))) == -EAGAIN)
		cr_assert_eq(wait_r(rx, &rs), UBT_READY);
	cr_assert_eq(n, sizeof(got));
	cr_assert_eq(th_wait(pid, 20000), 0);
	cr_assert_eq(got, seq);
	cr_assert_gt(bytes, 8ull * 2 * MiB, "the ring must wrap many times");
	ubt_chan_close(&c);
	free(buf);
}

static struct ubt_ring *local_msg_ring(uint64_t size, uint32_t esize)
{
	return th_local_ring(UBT_RING_MSG, size, esize);
}

Test(msg, records_keep_boundaries_and_tags)
{
	struct ubt_ring *r = local_msg_ring(256, 0);
	char buf[64];
	uint32_t tag;

	cr_assert_eq(ubt_msg_send(r, 7, "one", 3), 0);
	cr_assert_eq(ubt_msg_send(r, 8, "", 0), 0);
	cr_assert_eq(ubt_msg_send(r, 9, "three", 5), 0);
	cr_assert_eq(ubt_msg_peek(r, &tag), 3);
	cr_assert_eq(tag, 7);
	cr_assert_eq(ubt_msg_recv(r, &tag, buf, sizeof(buf)), 3);
	cr_assert_eq(memcmp(buf, "one", 3), 0);
	cr_assert_eq(ubt_msg_recv(r, &tag, buf, sizeof(buf)), 0);
	cr_assert_eq(tag, 8);
	cr_assert_eq(ubt_msg_recv(r, &tag, buf, sizeof(buf)), 5);
	cr_assert_eq(tag, 9);
	cr_assert_eq(ubt_msg_recv(r, &tag, buf, sizeof(buf)), -EAGAIN);
}

Test(msg, small_buffer_leaves_the_record_queued)
{
	struct ubt_ring *r = local_msg_ring(256, 0);
	char buf[64];
	uint32_t tag;

	cr_assert_eq(ubt_msg_send(r, 1, "0123456789", 10), 0);
	cr_assert_eq(ubt_msg_recv(r, &tag, buf, 4), -ENOBUFS);
	cr_assert_eq(ubt_msg_recv(r, &tag, buf, 10), 10);
	cr_assert_eq(memcmp(buf, "0123456789", 10), 0);
}

Test(msg, oversized_and_full)
{
	struct ubt_ring *r = local_msg_ring(64, 0);
	char big[100] = { 0 };

	cr_assert_eq(ubt_msg_send(r, 0, big, 57), -EMSGSIZE);
	cr_assert_eq(ubt_msg_send(r, 0, big, 56), 0);
	cr_assert_eq(ubt_msg_send(r, 0, big, 1), -EAGAIN);
}

Test(msg, fixed_entry_size_is_enforced)
{
	struct ubt_ring *r = local_msg_ring(256, sizeof(struct ubt_cqe));
	struct ubt_cqe e = { .wr_id = 42, .op = UBT_OP_WRITE }, o;
	uint32_t tag;

	cr_assert_eq(ubt_msg_send(r, 0, &e, sizeof(e) - 1), -EMSGSIZE);
	cr_assert_eq(ubt_msg_send(r, 0, &e, sizeof(e)), 0);
	cr_assert_eq(ubt_msg_recv(r, &tag, &o, sizeof(o)), sizeof(o));
	cr_assert_eq(o.wr_id, 42);
}

Test(msg, eof_after_records)
{
	struct ubt_ring *r = local_msg_ring(256, 0);
	char buf[8];
	uint32_t tag;

	cr_assert_eq(ubt_msg_send(r, 0, "x", 1), 0);
	ubt_ring_close_producer(r);
	cr_assert_eq(ubt_msg_recv(r, &tag, buf, 8), 1);
	cr_assert_eq(ubt_msg_recv(r, &tag, buf, 8), -EPIPE);
	cr_assert_eq(ubt_msg_peek(r, &tag), -EPIPE);
}

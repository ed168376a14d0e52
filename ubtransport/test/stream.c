/* SPDX-License-Identifier: MIT */
/*
 * stream.c - the byte-stream ring: two-process stress with random sizes
 * and wrap-around, and the socket-like edge semantics (EOF after data,
 * EPIPE, peek, short writes, scatter/gather).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"

#define MiB (1u << 20)

struct stress {
	uint64_t seed;
	uint64_t max_bytes;
	uint64_t max_ms;
};

/* Blocking write of all of buf; spin budget chosen at random per call. */
static int write_all(struct ubt_ring *r, const uint8_t *buf, size_t len,
		     uint64_t *rs)
{
	while (len) {
		ssize_t n = ubt_stream_write(r, buf, len);

		if (n == -EAGAIN) {
			struct ubt_wait w = {
				.spin_ns = th_rand(rs) & 1 ? 20000 : 0,
				.timeout_ms = -1, .watch_fd = -1,
			};
			int e = ubt_wait_writable(r, 1, &w);

			if (e != UBT_READY)
				return e;
			continue;
		}
		if (n < 0)
			return (int)n;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Child: read random-size pieces until EOF, verify every byte, report the
 * total back on the reverse ring. */
static int stress_reader(struct ubt_chan *c, void *arg)
{
	struct stress *s = arg;
	struct ubt_ring *rx = ubt_chan_rx(c, 0), *tx = ubt_chan_tx(c, 0);
	uint64_t pos = 0, rs = s->seed * 7 + 1;
	uint8_t *buf = malloc(MiB);

	CHECK(buf && rx && tx);
	for (;;) {
		size_t want = th_logsize(&rs, MiB);
		ssize_t n = ubt_stream_read(rx, buf, want, 0);

		if (n == -EAGAIN) {
			struct ubt_wait w = {
				.spin_ns = th_rand(&rs) & 1 ? 20000 : 0,
				.timeout_ms = -1, .watch_fd = -1,
			};
			CHECK(ubt_wait_readable(rx, &w) == UBT_READY);
			continue;
		}
		CHECK(n >= 0);
		if (n == 0)
			break;
		CHECK(th_verify(s->seed, pos, buf, (size_t)n) == 0);
		pos += (uint64_t)n;
	}
	CHECK(write_all(tx, (uint8_t *)&pos, sizeof(pos), &rs) == 0);
	return 0;
}

static void run_stress(uint64_t ring_size, struct stress *s)
{
	struct ubt_chan c;
	pid_t pid = th_chan_pair(&c, (struct ubt_ring_desc[]){
		{ .kind = UBT_RING_STREAM, .producer = 0, .size = ring_size },
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = 64 },
	}, 2, stress_reader, s);
	struct ubt_ring *tx = ubt_chan_tx(&c, 0), *rx = ubt_chan_rx(&c, 0);
	uint64_t pos = 0, rs = s->seed, t0 = th_now_ms(), got = 0;
	uint8_t *buf = malloc(MiB);
	int writes = 0;

	cr_assert(pid > 0 && buf);
	while (pos < s->max_bytes && th_now_ms() - t0 < s->max_ms) {
		size_t len = th_logsize(&rs, MiB);

		th_fill(s->seed, pos, buf, len);
		cr_assert_eq(write_all(tx, buf, len, &rs), 0);
		pos += len;
		writes++;
	}
	ubt_ring_close_producer(tx);
	for (;;) {
		struct ubt_wait w = { .spin_ns = 0, .timeout_ms = 20000,
				      .watch_fd = -1 };
		ssize_t n = ubt_stream_read(rx, &got, sizeof(got), UBT_PEEK);

		if (n == sizeof(got))
			break;
		cr_assert_eq(ubt_wait_readable(rx, &w), UBT_READY);
	}
	cr_assert_eq(th_wait(pid, 20000), 0);
	cr_assert_eq(got, pos, "reader saw %lu bytes of %lu",
		     (unsigned long)got, (unsigned long)pos);
	cr_assert_gt(pos, 4 * ring_size, "the ring must wrap many times");
	cr_log_info("stream stress: %d writes, %lu bytes", writes,
		    (unsigned long)pos);
	ubt_chan_close(&c);
	free(buf);
}

Test(stream, two_process_random_sizes_small_ring, .timeout = 60)
{
	struct stress s = { .seed = 0x1234, .max_bytes = 192ull * MiB,
			    .max_ms = 3000 };

	run_stress(64 * 1024, &s);
}

Test(stream, two_process_random_sizes_large_ring, .timeout = 60)
{
	struct stress s = { .seed = 0x9876, .max_bytes = 384ull * MiB,
			    .max_ms = 3000 };

	run_stress(4 * MiB, &s);
}

static struct ubt_ring *local_ring(uint64_t size)
{
	return th_local_ring(UBT_RING_STREAM, size, 0);
}

Test(stream, eof_comes_after_the_data)
{
	struct ubt_ring *r = local_ring(64);
	char buf[8];

	cr_assert_eq(ubt_stream_read(r, buf, 8, 0), -EAGAIN);
	cr_assert_eq(ubt_stream_write(r, "abc", 3), 3);
	ubt_ring_close_producer(r);
	cr_assert_eq(ubt_stream_read(r, buf, 2, 0), 2);
	cr_assert_eq(ubt_stream_read(r, buf + 2, 8, 0), 1);
	cr_assert_eq(memcmp(buf, "abc", 3), 0);
	cr_assert_eq(ubt_stream_read(r, buf, 8, 0), 0);
	cr_assert_eq(ubt_stream_read(r, buf, 8, 0), 0);
}

Test(stream, write_after_consumer_close_is_epipe)
{
	struct ubt_ring *r = local_ring(64);

	ubt_ring_close_consumer(r);
	cr_assert_eq(ubt_stream_write(r, "x", 1), -EPIPE);
}

Test(stream, peek_does_not_consume)
{
	struct ubt_ring *r = local_ring(64);
	char a[4], b[4];

	cr_assert_eq(ubt_stream_write(r, "wxyz", 4), 4);
	cr_assert_eq(ubt_stream_read(r, a, 4, UBT_PEEK), 4);
	cr_assert_eq(ubt_ring_readable(r), 4);
	cr_assert_eq(ubt_stream_read(r, b, 4, 0), 4);
	cr_assert_eq(memcmp(a, b, 4), 0);
	cr_assert_eq(ubt_ring_readable(r), 0);
}

Test(stream, full_ring_gives_short_write_then_eagain)
{
	struct ubt_ring *r = local_ring(64);
	uint8_t buf[100] = { 0 }, out[100];
	int i;

	for (i = 0; i < 100; i++)
		buf[i] = (uint8_t)i;
	cr_assert_eq(ubt_stream_write(r, buf, 100), 64);
	cr_assert_eq(ubt_stream_write(r, buf, 1), -EAGAIN);
	cr_assert_eq(ubt_ring_writable(r), 0);
	cr_assert_eq(ubt_stream_read(r, out, 10, 0), 10);
	cr_assert_eq(ubt_stream_write(r, buf + 64, 36), 10);
	cr_assert_eq(ubt_stream_read(r, out + 10, 100, 0), 64);
	cr_assert_eq(memcmp(out, buf, 74), 0);
}

Test(stream, scatter_gather_across_the_wrap)
{
	struct ubt_ring *r = local_ring(64);
	char skip[50], o1[7], o2[30];
	struct iovec w[3] = { { "hello ", 6 }, { "wrapped ", 8 },
			      { "world, scattered", 16 } };
	struct iovec rd[2] = { { o1, 7 }, { o2, 30 } };

	cr_assert_eq(ubt_stream_write(r, skip, 50), 50);
	cr_assert_eq(ubt_stream_read(r, skip, 50, 0), 50);
	cr_assert_eq(ubt_stream_writev(r, w, 3), 30);
	cr_assert_eq(ubt_stream_readv(r, rd, 2, 0), 30);
	cr_assert_eq(memcmp(o1, "hello w", 7), 0);
	cr_assert_eq(memcmp(o2, "rapped world, scattered", 23), 0);
}

/* An idle ring gives its pages back (the memfd's allocated blocks drop)
 * and works as before afterwards; a ring holding data is left alone. */
Test(stream, trim_releases_an_empty_rings_pages)
{
	struct ubt_chan c;
	struct ubt_ring *tx, *rx;
	struct stat st0, st1, st2;
	static uint8_t buf[256 * 1024], back[256 * 1024];
	uint64_t total = 0;

	cr_assert_eq(ubt_chan_create_stream(&c, 1 << 20), 0);
	/* One ring, both of its ends in this process. */
	tx = rx = ubt_chan_tx(&c, 0);
	cr_assert(tx);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 7);
	cr_assert_eq(fstat(c.seg.fd, &st0), 0);
	while (total < (1 << 20)) {
		cr_assert_eq(ubt_stream_write(tx, buf, sizeof(buf)),
			     (ssize_t)sizeof(buf));
		cr_assert_eq(ubt_stream_read(rx, back, sizeof(back), 0),
			     (ssize_t)sizeof(back));
		total += sizeof(buf);
	}
	cr_assert_eq(fstat(c.seg.fd, &st1), 0);
	cr_assert_geq((st1.st_blocks - st0.st_blocks) * 512, 1 << 20,
		      "the ring's pages were touched");
	cr_assert_eq(ubt_stream_write(tx, "x", 1), 1);
	cr_assert_eq(ubt_ring_trim(tx), 0, "a ring holding data is kept");
	cr_assert_eq(ubt_stream_read(rx, back, 1, 0), 1);
	cr_assert_geq(ubt_ring_trim(tx), (1 << 20) - 8192);
	cr_assert_eq(fstat(c.seg.fd, &st2), 0);
	cr_assert_leq((st2.st_blocks - st0.st_blocks) * 512, 16384,
		      "%lld bytes still allocated",
		      (long long)(st2.st_blocks - st0.st_blocks) * 512);
	/* Still a ring: bytes across the trimmed area come back intact. */
	cr_assert_eq(ubt_stream_write(tx, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	cr_assert_eq(ubt_stream_read(rx, back, sizeof(back), 0), (ssize_t)sizeof(back));
	cr_assert_eq(memcmp(buf, back, sizeof(buf)), 0);
	ubt_chan_close(&c);
}

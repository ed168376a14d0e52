/* SPDX-License-Identifier: MIT */
/*
 * board.c - the uid's board: a client posts a channel in a slot under a
 * connection's key and writes at once, a server process (forked, mapping
 * the board from its fd) takes it and reads; tombstones, unpost, intents
 * (pending, dead owner), slot exhaustion and reuse, and a board a peer
 * scribbled on (indices out of range, a lock held by a dead process).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

#include "helpers.h"

#define RING (64u << 10)

static struct ubt_board board;
static int efd;

static void setup(void)
{
	cr_assert_eq(ubt_board_create(&board, 8, RING), 0);
	efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	cr_assert_geq(efd, 0);
}

static void teardown(void)
{
	ubt_board_unmap(&board);
	close(efd);
}

static struct ubt_board_key key_of(uint16_t cport)
{
	struct ubt_board_key k;

	memset(&k, 0, sizeof(k));
	k.netns = 4096;
	k.family = AF_INET;
	k.sport = 8080;
	k.cport = cport;
	k.saddr[0] = k.caddr[0] = 127;
	k.saddr[3] = k.caddr[3] = 1;
	return k;
}

TestSuite(board, .init = setup, .fini = teardown, .timeout = 30);

/* The server's end, in another process: map the board from its fd, take
 * the post, attach, decide UB, read what the client wrote, answer. */
static int server(void *arg)
{
	struct ubt_board b;
	struct ubt_board_key k = key_of(40000);
	struct ubt_chan c;
	char buf[16] = "";
	int fd = *(int *)arg, slot, e;

	CHECK(ubt_board_map(&b, fd) == 0);
	CHECK(b.id == board.id && b.nslots == 8 && b.ring_size == RING);
	slot = ubt_board_take(&b, &k, 0);
	CHECK(slot >= 0);
	e = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	CHECK(ubt_board_chan_attach(&b, &c, (uint32_t)slot, e, 77) == 0);
	CHECK(ubt_chan_peer_db(&c) == 55);
	CHECK(ubt_chan_decide(&c, UBT_CHAN_UB) == UBT_CHAN_UB);
	CHECK(ubt_stream_read(ubt_chan_rx(&c, 0), buf, sizeof(buf), 0) == 5);
	CHECK(memcmp(buf, "hello", 5) == 0);
	CHECK(ubt_stream_write(ubt_chan_tx(&c, 0), "world", 5) == 5);
	ubt_chan_close(&c);             /* no munmap of the board's memory */
	ubt_board_slot_put(&b, (uint32_t)slot);
	/* Taken: a second take finds nothing. */
	CHECK(ubt_board_take(&b, &k, 0) == -ENOENT);
	ubt_board_unmap(&b);
	return 0;
}

Test(board, client_posts_server_takes)
{
	struct ubt_board_key k = key_of(40000);
	struct ubt_chan c;
	char buf[16];
	int slot, fd = board.seg.fd;
	pid_t p;

	slot = ubt_board_chan_create(&board, &c, efd, 55);
	cr_assert_geq(slot, 0);
	cr_assert_eq(ubt_board_post(&board, &k, (uint32_t)slot), 0);
	/* The same key twice, from a live poster: refused. */
	cr_assert_eq(ubt_board_post(&board, &k, (uint32_t)slot), -EEXIST);
	/* The client writes before anyone took it. */
	cr_assert_eq(ubt_stream_write(ubt_chan_tx(&c, 0), "hello", 5), 5);
	cr_assert_eq(ubt_chan_state(&c), UBT_CHAN_UNDECIDED);
	p = th_fork(server, &fd);
	cr_assert_eq(th_wait(p, 10000), 0);
	cr_assert_eq(ubt_chan_state(&c), UBT_CHAN_UB);
	cr_assert_eq(ubt_chan_peer_db(&c), 77);
	cr_assert_eq(ubt_stream_read(ubt_chan_rx(&c, 0), buf, sizeof(buf), 0), 5);
	cr_assert_eq(memcmp(buf, "world", 5), 0);
	/* Already taken: unpost removes nothing. */
	cr_assert_eq(ubt_board_unpost(&board, &k, (uint32_t)slot), 0);
	ubt_chan_close(&c);
	ubt_board_slot_put(&board, (uint32_t)slot);
	/* Both references gone: the slot is free again (LIFO: the same). */
	cr_assert_eq(ubt_board_chan_create(&board, &c, efd, 55), slot);
	ubt_chan_close(&c);
	ubt_board_slot_put(&board, (uint32_t)slot);
}

Test(board, tombstone_turns_a_late_client_away)
{
	struct ubt_board_key k = key_of(40001);
	struct ubt_chan c;
	int slot;

	cr_assert_eq(ubt_board_take(&board, &k, 1), -ENOENT);
	slot = ubt_board_chan_create(&board, &c, efd, 55);
	cr_assert_geq(slot, 0);
	cr_assert_eq(ubt_board_post(&board, &k, (uint32_t)slot), -ECONNREFUSED);
	/* The tombstone is used up: the key can be posted again. */
	cr_assert_eq(ubt_board_post(&board, &k, (uint32_t)slot), 0);
	cr_assert_eq(ubt_board_unpost(&board, &k, (uint32_t)slot), 1);
	cr_assert_eq(ubt_board_take(&board, &k, 0), -ENOENT);
	ubt_chan_close(&c);
	ubt_board_slot_put(&board, (uint32_t)slot);
}

Test(board, slots_run_out_and_come_back)
{
	struct ubt_chan c[9];
	int s[9];

	for (int i = 0; i < 8; i++) {
		s[i] = ubt_board_chan_create(&board, &c[i], efd, 1);
		cr_assert_geq(s[i], 0);
		for (int j = 0; j < i; j++)
			cr_assert_neq(s[i], s[j]);
	}
	cr_assert_eq(ubt_board_chan_create(&board, &c[8], efd, 1), -ENOSPC);
	ubt_chan_close(&c[3]);
	ubt_board_slot_put(&board, (uint32_t)s[3]);
	cr_assert_eq(ubt_board_chan_create(&board, &c[8], efd, 1), s[3]);
	for (int i = 0; i < 9; i++)
		if (i != 3) {
			ubt_chan_close(&c[i]);
			ubt_board_slot_put(&board, (uint32_t)s[i]);
		}
}

static int hold_intent(void *arg)
{
	uint8_t a[16] = { 127, 0, 0, 1 };

	(void)arg;
	CHECK(ubt_board_intent(&board, 4096, AF_INET, a, 8080) >= 0);
	pause();                        /* killed with its intent in flight */
	return 0;
}

Test(board, intents)
{
	uint8_t a[16] = { 127, 0, 0, 1 }, o[16] = { 127, 0, 0, 2 };
	int h[9];
	pid_t p;

	cr_assert_eq(ubt_board_intent_pending(&board, 4096, AF_INET, a, 8080), 0);
	h[0] = ubt_board_intent(&board, 4096, AF_INET, a, 8080);
	cr_assert_geq(h[0], 0);
	cr_assert_eq(ubt_board_intent_pending(&board, 4096, AF_INET, a, 8080), 1);
	cr_assert_eq(ubt_board_intent_pending(&board, 4097, AF_INET, a, 8080), 0);
	cr_assert_eq(ubt_board_intent_pending(&board, 4096, AF_INET, o, 8080), 0);
	cr_assert_eq(ubt_board_intent_pending(&board, 4096, AF_INET, a, 8081), 0);
	/* A group holds 8 in flight towards one destination. */
	for (int i = 1; i < 8; i++)
		cr_assert_geq(h[i] = ubt_board_intent(&board, 4096, AF_INET, a, 8080), 0);
	cr_assert_eq(ubt_board_intent(&board, 4096, AF_INET, a, 8080), -ENOSPC);
	for (int i = 0; i < 8; i++)
		ubt_board_intent_end(&board, h[i]);
	cr_assert_eq(ubt_board_intent_pending(&board, 4096, AF_INET, a, 8080), 0);

	/* An intent whose process died stops counting once it is old. */
	p = th_fork(hold_intent, NULL);
	for (int i = 0; i < 200 &&
	     !ubt_board_intent_pending(&board, 4096, AF_INET, a, 8080); i++)
		usleep(5000);
	cr_assert_eq(ubt_board_intent_pending(&board, 4096, AF_INET, a, 8080), 1);
	kill(p, SIGKILL);
	th_wait(p, 5000);
	usleep(250000);
	cr_assert_eq(ubt_board_intent_pending(&board, 4096, AF_INET, a, 8080), 0);
}

static int hold_nothing(void *arg)
{
	(void)arg;
	return 0;
}

Test(board, scribbled_board)
{
	struct ubt_board_key k = key_of(40002);
	uint8_t *bk;
	struct ubt_chan c;
	int slot, pid;
	pid_t p;

	/* An entry naming a slot out of range: taken as nothing. */
	slot = ubt_board_chan_create(&board, &c, efd, 1);
	cr_assert_eq(ubt_board_post(&board, &k, (uint32_t)slot), 0);
	for (bk = board.buckets; bk < board.intents; bk += 64) {
		uint32_t *w = (uint32_t *)(void *)bk;

		if (w[0] == 1 && w[1] == (uint32_t)slot &&
		    memcmp(bk + 16, &k, sizeof(k)) == 0)
			w[1] = 1u << 30;
	}
	cr_assert_eq(ubt_board_take(&board, &k, 0), -ENOENT);
	ubt_chan_close(&c);
	ubt_board_slot_put(&board, (uint32_t)slot);

	/* A bucket lock left by a dead process is taken over. */
	p = th_fork(hold_nothing, NULL);
	th_wait(p, 5000);
	pid = (int)p;
	for (bk = board.buckets; bk < board.intents; bk += 512)
		*(uint32_t *)(void *)bk = (uint32_t)pid;
	cr_assert_eq(ubt_board_take(&board, &k, 0), -ENOENT);

	/* A free-stack head out of range: no slot, no crash. */
	*(uint64_t *)(void *)((uint8_t *)board.hdr + 72) = 1000;
	cr_assert_eq(ubt_board_chan_create(&board, &c, efd, 1), -ENOSPC);
}

Test(board, map_refuses_a_channel_and_a_bad_geometry)
{
	struct ubt_board b;
	struct ubt_chan c;
	int fd;

	cr_assert_eq(ubt_chan_create_stream(&c, 4096), 0);
	fd = dup(c.seg.fd);
	cr_assert_neq(ubt_board_map(&b, fd), 0);
	close(fd);
	ubt_chan_close(&c);
	cr_assert_eq(ubt_board_create(&b, 0, RING), -EINVAL);
	cr_assert_eq(ubt_board_create(&b, 4, 5000), -EINVAL);
}

/* A process that dies holding its side alone: ubsd's reclaim gives its
 * reference back; a side still held (by a live process) is left alone. */
static int die_holding(void *arg)
{
	struct ubt_chan c;
	int e = eventfd(0, EFD_CLOEXEC);

	(void)arg;
	CHECK(ubt_board_chan_create(&board, &c, e, 9) >= 0);
	return 0;                       /* dies without a put */
}

Test(board, reclaim_of_a_dead_process)
{
	struct ubt_chan c[8];
	pid_t p = th_fork(die_holding, NULL);
	int s, n = 0;

	cr_assert_eq(th_wait(p, 5000), 0);
	cr_assert_eq(ubt_board_reclaim(&board, (uint32_t)getpid()), 0);
	cr_assert_eq(ubt_board_reclaim(&board, (uint32_t)p), 1);
	cr_assert_eq(ubt_board_reclaim(&board, (uint32_t)p), 0);
	/* All 8 slots can be had again. */
	while ((s = ubt_board_chan_create(&board, &c[n], efd, 1)) >= 0)
		n++;
	cr_assert_eq(n, 8);
	/* Ours, alive: not reclaimed, none of them. */
	cr_assert_eq(ubt_board_reclaim(&board, 12345678), 0);
}

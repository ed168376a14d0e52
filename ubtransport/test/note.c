/* SPDX-License-Identifier: MIT */
/*
 * note.c - the notification page: a waiter over many channels learns
 * which are ready by popping their tokens, not by looking at all of
 * them; posting twice is posting once; the eventfd is written only for
 * a registered sleeper; a hostile page never yields an out-of-range
 * token nor an endless pop.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "helpers.h"

struct popped {
	uint32_t tok[64];
	int n;
	int over;
};

static void collect(uint32_t tok, void *arg)
{
	struct popped *p = arg;

	if (p->n < 64)
		p->tok[p->n++] = tok;
	else
		p->over++;
}

static int efd_count(int efd)
{
	struct pollfd p = { .fd = efd, .events = POLLIN };

	return poll(&p, 1, 0);
}

Test(note, post_pop_dedup)
{
	struct ubt_note own, peer;
	struct popped got = { 0 };
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	int fd;

	cr_assert_eq(ubt_note_create(&own, efd), 0);
	fd = dup(own.seg.fd);
	cr_assert_eq(ubt_note_map(&peer, fd, efd), 0);
	cr_assert_eq(ubt_note_post(&peer, 7), 0, "no sleeper: no eventfd write");
	ubt_note_post(&peer, 7);
	ubt_note_post(&peer, 70000);
	ubt_note_post(&peer, 0);                        /* ignored */
	ubt_note_post(&peer, UBT_NOTE_SLOTS);           /* ignored */
	cr_assert_eq(peer.posts, 2, "a posted token is not posted again");
	cr_assert_eq(efd_count(efd), 0);
	cr_assert_eq(ubt_note_pop(&own, collect, &got), 2);
	cr_assert_eq(got.tok[0], 7);
	cr_assert_eq(got.tok[1], 70000);
	got.n = 0;
	cr_assert_eq(ubt_note_pop(&own, collect, &got), 0, "taken once");
	ubt_note_post(&peer, 7);
	cr_assert_eq(peer.posts, 3, "taken: posted again");
	ubt_note_close(&peer);
	ubt_note_close(&own);
	close(efd);
}

Test(note, sleeper_is_rung_once)
{
	struct ubt_note own;
	struct popped got = { 0 };
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	uint32_t key;

	cr_assert_eq(ubt_note_create(&own, efd), 0);
	key = ubt_note_arm(&own);
	cr_assert_eq(ubt_note_post(&own, 5), 1, "a sleeper: rung");
	cr_assert_eq(ubt_note_post(&own, 6), 0, "claimed: not rung twice");
	cr_assert_eq(efd_count(efd), 1);
	cr_assert_eq(ubt_note_disarm(&own, key), 1, "the token was ours");
	cr_assert_eq(efd_count(efd), 0, "and it was taken");
	cr_assert_eq(ubt_note_pop(&own, collect, &got), 2);
	key = ubt_note_arm(&own);
	cr_assert_eq(ubt_note_disarm(&own, key), 0, "withdrawn unclaimed");
	cr_assert_eq(ubt_note_post(&own, 5), 0, "nobody asleep");
	ubt_note_close(&own);
	close(efd);
}

/* 2000 idle channels and one busy one: the waiter learns of the busy one
 * only, through its token, and the idle ones are never looked at. */
#define NCHAN 2000

Test(note, many_channels_one_ready, .timeout = 60)
{
	static struct ubt_chan a[NCHAN], b[NCHAN];
	struct ubt_note own, peer;
	struct popped got = { 0 };
	int efd_a = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	int efd_b = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	char c = 'x';
	uint32_t key;

	cr_assert_eq(ubt_note_create(&own, efd_a), 0);
	cr_assert_eq(ubt_note_map(&peer, dup(own.seg.fd), efd_a), 0);
	for (int i = 0; i < NCHAN; i++) {
		int fd;

		cr_assert_eq(ubt_chan_create_stream_db(&a[i], 4096, efd_a, 1), 0);
		fd = dup(a[i].seg.fd);
		cr_assert_eq(ubt_chan_attach_db(&b[i], fd, efd_b, 2), 0);
		ubt_chan_set_peer_efd(&b[i], efd_a);
		ubt_chan_set_peer_efd(&a[i], efd_b);
		ubt_chan_set_notes(&a[i], &own, NULL);
		ubt_chan_set_notes(&b[i], &peer, NULL);
		ubt_chan_set_note_tok(&a[i], (uint32_t)i + 1);
	}
	key = ubt_note_arm(&own);
	cr_assert_eq(ubt_stream_write(ubt_chan_tx(&b[1234], 0), &c, 1), 1);
	cr_assert_eq(ubt_stream_write(ubt_chan_tx(&b[1234], 0), &c, 1), 1);
	cr_assert_eq(efd_count(efd_a), 1, "the sleeper was rung");
	cr_assert_eq(ubt_note_disarm(&own, key), 1);
	cr_assert_eq(ubt_note_pop(&own, collect, &got), 1);
	cr_assert_eq(got.tok[0], 1235, "the busy channel's token");
	cr_assert_eq(peer.posts, 1, "posted once for two writes");
	/* The reader frees space: nothing to post (the writer named no
	 * token), and the idle ones stay silent. */
	cr_assert_eq(ubt_stream_read(ubt_chan_rx(&a[1234], 0), &c, 1, 0), 1);
	got.n = 0;
	cr_assert_eq(ubt_note_pop(&own, collect, &got), 0);
	for (int i = 0; i < NCHAN; i++) {
		ubt_chan_close(&a[i]);
		ubt_chan_close(&b[i]);
	}
	ubt_note_close(&peer);
	ubt_note_close(&own);
	close(efd_a);
	close(efd_b);
}

/* A hostile peer sets every bit and scribbles the sleeper word: one pop
 * ends, every token is in range, the page keeps working. */
Test(note, hostile_page)
{
	struct ubt_note own;
	struct popped got = { 0 };
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	uint32_t key;

	cr_assert_eq(ubt_note_create(&own, efd), 0);
	memset((void *)own.shm, 0xff, sizeof(*own.shm));
	cr_assert_eq(ubt_note_pop(&own, collect, &got), UBT_NOTE_SLOTS - 1);
	for (int i = 0; i < got.n; i++)
		cr_assert(got.tok[i] > 0 && got.tok[i] < UBT_NOTE_SLOTS);
	got.n = got.over = 0;
	cr_assert_eq(ubt_note_pop(&own, collect, &got), 0);
	key = ubt_note_arm(&own);
	atomic_store(&own.shm->sleep, (uint64_t)key << 32); /* count reset */
	cr_assert_eq(ubt_note_disarm(&own, key), 0);
	ubt_note_close(&own);
	close(efd);
}

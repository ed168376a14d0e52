/* SPDX-License-Identifier: MIT */
/*
 * doorbell.c - the doorbells of peer processes.
 *
 * Every channel of a process rings, and sleeps on, that process's one
 * doorbell eventfd (ubs_ctl_doorbell); a channel header names each side's
 * doorbell by id.  To ring a peer, this process needs a copy of the
 * peer's doorbell: it asks ubsd once per peer process (PEER_DB) and keeps
 * it here, counted by the connections that use it.  So a process holds
 * one fd per UB connection (the kernel socket) plus one per peer process,
 * not three per connection.  Entries nobody uses stay cached (a program
 * that opens a connection per request would otherwise ask every time)
 * up to PEER_IDLE_MAX of them.  With each doorbell comes the peer's
 * notification page (mapped here, allocated so that channels may point
 * at it while the table grows), where this process posts which of the
 * peer's endpoints became ready.
 */
#include <pthread.h>
#include <stdlib.h>

#include "sock.h"
#include "ctl.h"

#define PEER_IDLE_MAX 64

struct peer_db {
	uint64_t id;
	int fd;
	unsigned refs;
	struct ubt_note *note;
};

static void peer_free(struct peer_db *p)
{
	ubt_note_close(p->note);
	free(p->note);
	ubs_fd_release(p->fd);
}

static pthread_mutex_t peer_mu = PTHREAD_MUTEX_INITIALIZER;
static struct peer_db *peers;
static int npeers, cappeers;

static struct peer_db *peer_find(uint64_t id)
{
	for (int i = 0; i < npeers; i++)
		if (peers[i].id == id)
			return &peers[i];
	return NULL;
}

/* Make room for one more entry: drop an unused one when too many idle. */
static bool peer_room(void)
{
	int idle = 0, victim = -1;

	for (int i = 0; i < npeers; i++)
		if (!peers[i].refs) {
			idle++;
			victim = i;
		}
	if (idle >= PEER_IDLE_MAX) {
		peer_free(&peers[victim]);
		peers[victim] = peers[--npeers];
	}
	if (npeers == cappeers) {
		int cap = cappeers ? cappeers * 2 : 16;
		struct peer_db *p = realloc(peers, sizeof(*p) * (size_t)cap);

		if (!p)
			return false;
		peers = p;
		cappeers = cap;
	}
	return true;
}

/* Map a peer's notification page received as nfd (taken either way),
 * woken through efd: NULL if refused.  The page is the peer's: mapped
 * only if sealed, of the right kind and size.  The mapping is all we
 * need of it. */
static struct ubt_note *peer_note_map(int nfd, int efd)
{
	struct ubt_note *n = calloc(1, sizeof(*n));

	if (!n || ubt_note_map(n, nfd, efd) < 0) {
		ubs_fd_release(nfd);
		free(n);
		return NULL;
	}
	ubs_fd_release(n->seg.fd);
	n->seg.fd = -1;
	return n;
}

int sock_peer_db_get(uint64_t id, struct ubt_note **note)
{
	struct peer_db *p, fresh;
	int fd, nfd = -1;

	if (!id)
		return -EPROTO;
	pthread_mutex_lock(&peer_mu);
	p = peer_find(id);
	if (p) {
		p->refs++;
		fd = p->fd;
		*note = p->note;
		pthread_mutex_unlock(&peer_mu);
		return fd;
	}
	pthread_mutex_unlock(&peer_mu);
	fd = ubs_ctl_peer_doorbell(id, &nfd);   /* once per peer process */
	if (fd < 0)
		return fd;
	/* Without its page there is no doorbell either. */
	fresh.id = id;
	fresh.fd = fd;
	fresh.refs = 1;
	fresh.note = peer_note_map(nfd, fd);
	if (!fresh.note) {
		ubs_fd_release(fd);
		return -EPROTO;
	}
	pthread_mutex_lock(&peer_mu);
	p = peer_find(id);
	if (p) {                                /* another thread got it */
		peer_free(&fresh);
		p->refs++;
		fd = p->fd;
		*note = p->note;
	} else if (peer_room()) {
		peers[npeers++] = fresh;
		*note = fresh.note;
	} else {
		peer_free(&fresh);
		fd = -ENOMEM;
	}
	pthread_mutex_unlock(&peer_mu);
	return fd;
}

void sock_peer_db_put(uint64_t id)
{
	struct peer_db *p;

	pthread_mutex_lock(&peer_mu);
	p = peer_find(id);
	if (p && p->refs)
		p->refs--;
	pthread_mutex_unlock(&peer_mu);
}

void sock_peer_db_atfork_child(void)
{
	pthread_mutex_init(&peer_mu, NULL);
}

/* Exec keeping UB connections: the notification page of the peer whose
 * doorbell id the new image took back (sock_peer_db_adopt, which has no
 * page: the old image kept only its mapping), asked of ubsd the first
 * time.  NULL if it cannot be had. */
struct ubt_note *sock_peer_db_note(uint64_t id)
{
	struct ubt_note *n = NULL, *fresh;
	struct peer_db *p;
	int fd, nfd = -1;

	pthread_mutex_lock(&peer_mu);
	p = peer_find(id);
	if (p)
		n = p->note;
	pthread_mutex_unlock(&peer_mu);
	if (n || !p)
		return n;
	fd = ubs_ctl_peer_doorbell(id, &nfd);
	if (fd < 0)
		return NULL;
	ubs_fd_release(fd);                     /* the same eventfd again */
	fresh = peer_note_map(nfd, -1);
	if (!fresh)
		return NULL;
	pthread_mutex_lock(&peer_mu);
	p = peer_find(id);
	if (p && !p->note) {
		fresh->efd = p->fd;
		p->note = fresh;
		fresh = NULL;
	}
	n = p ? p->note : NULL;
	pthread_mutex_unlock(&peer_mu);
	if (fresh) {
		ubt_note_close(fresh);
		free(fresh);
	}
	return n;
}

/* Exec keeping UB connections: the new image takes back a peer's doorbell
 * it held before (fd, inherited), one more connection using it.  Returns
 * the fd to use (an entry for id may exist already: then fd is not
 * taken), or -errno. */
int sock_peer_db_adopt(uint64_t id, int fd)
{
	struct peer_db *p;
	int r = fd;

	if (!id)
		return -EPROTO;
	pthread_mutex_lock(&peer_mu);
	p = peer_find(id);
	if (p) {
		p->refs++;
		r = p->fd;
	} else if (peer_room()) {
		peers[npeers].id = id;
		peers[npeers].fd = fd;
		peers[npeers++].refs = 1;
	} else {
		r = -ENOMEM;
	}
	pthread_mutex_unlock(&peer_mu);
	return r;
}

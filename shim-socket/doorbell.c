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
 * up to PEER_IDLE_MAX of them.
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
};

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
		ubs_fd_release(peers[victim].fd);
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

int sock_peer_db_get(uint64_t id)
{
	struct peer_db *p;
	int fd;

	if (!id)
		return -EPROTO;
	pthread_mutex_lock(&peer_mu);
	p = peer_find(id);
	if (p) {
		p->refs++;
		fd = p->fd;
		pthread_mutex_unlock(&peer_mu);
		return fd;
	}
	pthread_mutex_unlock(&peer_mu);
	fd = ubs_ctl_peer_doorbell(id);         /* once per peer process */
	if (fd < 0)
		return fd;
	pthread_mutex_lock(&peer_mu);
	p = peer_find(id);
	if (p) {                                /* another thread got it */
		ubs_fd_release(fd);
		p->refs++;
		fd = p->fd;
	} else if (peer_room()) {
		peers[npeers].id = id;
		peers[npeers].fd = fd;
		peers[npeers++].refs = 1;
	} else {
		ubs_fd_release(fd);
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

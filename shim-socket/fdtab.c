/* SPDX-License-Identifier: MIT */
/*
 * fdtab.c - the fd table: fd number -> struct sock, for the sockets the
 * library may accelerate.
 *
 * Two levels of FDTAB_CHUNK slots, chunks mapped on first use, so a
 * lookup of an fd the library does not know is two loads and no lock:
 * the price every read()/write() of a file or pipe pays.  A slot that is
 * set is read under the table's read lock, which also guards the
 * refcounts, so a sock cannot be freed between the load and the +1.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "sock.h"
#include "ctl.h"

#define FDTAB_CHUNK   1024
#define FDTAB_CHUNKS  1024      /* fds up to 1M */

static struct sock **tab[FDTAB_CHUNKS];
static pthread_rwlock_t tab_lock = PTHREAD_RWLOCK_INITIALIZER;

static struct sock **slot(int fd, bool make)
{
	unsigned c = (unsigned)fd / FDTAB_CHUNK;
	struct sock **chunk;

	if (fd < 0 || c >= FDTAB_CHUNKS)
		return NULL;
	chunk = __atomic_load_n(&tab[c], __ATOMIC_ACQUIRE);
	if (!chunk && make) {
		chunk = mmap(NULL, FDTAB_CHUNK * sizeof(*chunk),
			     PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (chunk == MAP_FAILED)
			return NULL;
		tab[c] = chunk;         /* under the write lock */
	}
	return chunk ? &chunk[(unsigned)fd % FDTAB_CHUNK] : NULL;
}

bool sock_slot_used(int fd)
{
	struct sock **p = slot(fd, false);

	return p && __atomic_load_n(p, __ATOMIC_RELAXED);
}

struct sock *sock_get(int fd)
{
	struct sock **p = slot(fd, false);
	struct sock *s;

	if (!p || !__atomic_load_n(p, __ATOMIC_RELAXED))
		return NULL;
	pthread_rwlock_rdlock(&tab_lock);
	s = *p;
	if (s)
		__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
	pthread_rwlock_unlock(&tab_lock);
	return s;
}

static void sock_free(struct sock *s)
{
	bool g = ubs_guard_enter();     /* ubt_chan_close closes our fds */

	if (s->closing) {       /* the program closed it while in use */
		sock_last_close(s);
		ubs_fd_release(s->fd);
	}
	sock_board_free(s);
	if (s->have_chan || s->board_posted)
		ubt_chan_close(&s->ch);
	if (s->peer_db)
		sock_peer_db_put(s->peer_db);
	if (g)
		ubs_guard_exit();
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->kr_mu);
	free(s);
}

void sock_put(struct sock *s)
{
	if (s && __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0)
		sock_free(s);
}

struct sock *sock_new(int fd)
{
	struct sock *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->kr_mu, NULL);    /* kr: none recorded */
	s->fd = fd;
	s->ch.seg.fd = s->ch.efd[0] = s->ch.efd[1] = -1;
	s->rcvtimeo_ms = s->sndtimeo_ms = -1;
	s->board_slot = s->board_intent = -1;
	return s;
}

int sock_install(int fd, struct sock *s)
{
	struct sock **p, *old;

	pthread_rwlock_wrlock(&tab_lock);
	p = slot(fd, true);
	if (!p) {
		pthread_rwlock_unlock(&tab_lock);
		return -EMFILE;
	}
	old = *p;
	s->refs++;
	s->nslots++;
	if (old)
		old->nslots--;
	__atomic_store_n(p, s, __ATOMIC_RELEASE);
	pthread_rwlock_unlock(&tab_lock);
	/* A stale entry (the kernel reused the number behind our back). */
	if (old)
		sock_put(old);
	return 0;
}

struct sock *sock_detach(int fd)
{
	struct sock **p = slot(fd, false);
	struct sock *s;

	if (!p || !__atomic_load_n(p, __ATOMIC_RELAXED))
		return NULL;
	pthread_rwlock_wrlock(&tab_lock);
	s = *p;
	if (s)
		s->nslots--;
	__atomic_store_n(p, NULL, __ATOMIC_RELEASE);
	pthread_rwlock_unlock(&tab_lock);
	return s;
}

/* How many fds name s: 0 after the close of its only fd, which then
 * needs no look through the whole table (sock_for_each) for others. */
int sock_slots(struct sock *s)
{
	int n;

	pthread_rwlock_rdlock(&tab_lock);
	n = s->nslots;
	pthread_rwlock_unlock(&tab_lock);
	return n;
}

void sock_for_each(void (*fn)(int fd, struct sock *s, void *arg), void *arg)
{
	pthread_rwlock_rdlock(&tab_lock);
	for (unsigned c = 0; c < FDTAB_CHUNKS; c++) {
		struct sock **chunk = tab[c];

		if (!chunk)
			continue;
		for (unsigned i = 0; i < FDTAB_CHUNK; i++)
			if (chunk[i])
				fn((int)(c * FDTAB_CHUNK + i), chunk[i], arg);
	}
	pthread_rwlock_unlock(&tab_lock);
}

void sock_tab_atfork_child(void)
{
	pthread_rwlock_init(&tab_lock, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * board.c - a uid's board (see ubt.h): intents, posted connections and a
 * pool of channel slots, in one segment that every process of the uid
 * maps and any of them may scribble on.
 *
 * Layout (offsets fixed by the geometry in the board header, which each
 * process copies and checks once at map time):
 *   header page    segment header, then struct ubt_board_hdr
 *   buckets        nbuckets x 512 B: a lock word and BUCKET_ENTS entries;
 *                  a key lives in the bucket its hash names, nowhere else
 *   intents        nintents x 64 B, in groups of INTENT_GROUP by the hash
 *                  of (netns, destination)
 *   meta           nslots x 16 B: references, free-stack link, generation
 *   slots          nslots x slot_size, page aligned: a channel each
 *
 * Locks: a bucket's word is 0 or the pid of its holder, who holds it for
 * a few compares and stores.  A waiter that has waited long takes it over
 * when the holder is dead (kill(pid, 0) says ESRCH) or after LOCK_STEAL_MS
 * whatever the holder (then an entry may be torn: keys are compared in
 * full and slots bounds-checked, so a torn entry costs one connection its
 * acceleration, nothing else).  Free slots are a stack of indices with a
 * generation tag in the head (no ABA).  Every index read from the board
 * is checked before use; the channel in a slot is checked as a received
 * segment would be.
 */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "ubt.h"
#include "ubt_int.h"

#define BOARD_HDR_OFF   64u
#define BUCKET_ENTS     7u
#define INTENT_GROUP    8u
#define NINTENTS        1024u
#define SLOT_MAX        (1u << 20)
#define TOMB_MS         1000u   /* a tombstone older than this is empty */
#define INTENT_CHECK_MS 100u    /* an intent this old: is its owner alive? */
#define LOCK_STEAL_MS   50u
#define PID_FILLING     0x80000000u
#define TRIM_MOVED      (64u << 10)

enum { ENT_EMPTY = 0, ENT_POSTED = 1, ENT_TOMB = 2 };

struct ubt_board_hdr {
	uint32_t version;
	uint32_t nslots;
	uint32_t nbuckets;
	uint32_t nintents;
	uint64_t id;
	uint64_t ring_size;
	uint64_t slot_size;
	uint64_t buckets_off, intents_off, meta_off, slots_off;
	_Atomic uint64_t free_head;     /* tag<<32 | (top index + 1) */
};

struct board_ent {
	_Atomic uint32_t state;
	uint32_t slot;
	uint32_t pid;
	uint32_t ms;                    /* when written (CLOCK_MONOTONIC) */
	struct ubt_board_key key;
};

struct board_bucket {
	_Atomic uint32_t lock;
	uint32_t pad[15];
	struct board_ent e[BUCKET_ENTS];
};

struct board_intent {
	_Atomic uint32_t pid;           /* 0 free; PID_FILLING while written */
	uint16_t family, port;
	uint64_t netns;
	uint8_t addr[16];
	uint32_t ms;
	uint8_t pad[28];
};

struct board_meta {
	_Atomic uint32_t refs;
	_Atomic uint32_t next;          /* free stack: next index + 1 */
	_Atomic uint32_t gen;
	uint32_t pad;
};

_Static_assert(sizeof(struct ubt_board_key) == 48, "key");
_Static_assert(sizeof(struct board_ent) == 64, "entry");
_Static_assert(sizeof(struct board_bucket) == 512, "bucket");
_Static_assert(sizeof(struct board_intent) == 64, "intent");
_Static_assert(sizeof(struct board_meta) == 16, "meta");
_Static_assert(BOARD_HDR_OFF + sizeof(struct ubt_board_hdr) <= UBT_SEG_HDR_SIZE,
	       "board header");

static uint32_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint32_t)((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
}

static uint64_t page_up(uint64_t v)
{
	return (v + 4095) & ~4095ull;
}

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

/* The geometry of nslots slots of two ring_size rings; 0 or -EINVAL. */
static int geometry(struct ubt_board *b, uint32_t nslots, uint64_t ring_size)
{
	uint64_t nb = 1;

	if (nslots == 0 || nslots > SLOT_MAX || ring_size < 4096 ||
	    ring_size > (1ull << 30) || (ring_size & (ring_size - 1)))
		return -EINVAL;
	while (nb < nslots)
		nb <<= 1;
	b->nslots = nslots;
	b->nbuckets = (uint32_t)nb;
	b->nintents = NINTENTS;
	b->ring_size = ring_size;
	b->slot_size = UBT_SEG_HDR_SIZE +
		2 * page_up(UBT_RING_CTL_SIZE + ring_size);
	return 0;
}

static void layout(struct ubt_board *b, uint64_t off[4])
{
	off[0] = UBT_SEG_HDR_SIZE;
	off[1] = off[0] + (uint64_t)b->nbuckets * sizeof(struct board_bucket);
	off[2] = off[1] + (uint64_t)b->nintents * sizeof(struct board_intent);
	off[3] = page_up(off[2] + (uint64_t)b->nslots * sizeof(struct board_meta));
}

static void bind_board(struct ubt_board *b, const uint64_t off[4])
{
	b->hdr = (struct ubt_board_hdr *)(void *)(b->seg.base + BOARD_HDR_OFF);
	b->buckets = b->seg.base + off[0];
	b->intents = b->seg.base + off[1];
	b->meta = b->seg.base + off[2];
	b->slots = b->seg.base + off[3];
}

int ubt_board_create(struct ubt_board *b, uint32_t nslots, uint64_t ring_size)
{
	struct ubt_board_hdr *h;
	struct board_meta *m;
	uint64_t off[4];
	int err;

	memset(b, 0, sizeof(*b));
	b->seg.fd = -1;
	err = geometry(b, nslots, ring_size);
	if (err)
		return err;
	layout(b, off);
	err = ubt_seg_create(&b->seg, off[3] + (uint64_t)nslots * b->slot_size,
			     UBT_SEG_BOARD, "ubs-board");
	if (err)
		return err;
	bind_board(b, off);
	h = b->hdr;
	h->version = UBT_LAYOUT_VER;
	h->nslots = b->nslots;
	h->nbuckets = b->nbuckets;
	h->nintents = b->nintents;
	h->id = b->id = b->seg.id;
	h->ring_size = b->ring_size;
	h->slot_size = b->slot_size;
	h->buckets_off = off[0];
	h->intents_off = off[1];
	h->meta_off = off[2];
	h->slots_off = off[3];
	m = (struct board_meta *)(void *)b->meta;
	for (uint32_t i = 0; i < nslots; i++)
		atomic_store(&m[i].next, i + 1 < nslots ? i + 2 : 0);
	atomic_store(&h->free_head, 1);
	return 0;
}

int ubt_board_map(struct ubt_board *b, int fd)
{
	struct ubt_board_hdr h;
	uint64_t off[4];
	int err;

	memset(b, 0, sizeof(*b));
	b->seg.fd = -1;
	err = ubt_seg_map(&b->seg, fd, UBT_SEG_BOARD);
	if (err)
		return err;
	/* One private copy of the geometry, checked against itself. */
	memcpy(&h, b->seg.base + BOARD_HDR_OFF, sizeof(h));
	err = -EPROTO;
	if (h.version != UBT_LAYOUT_VER ||
	    geometry(b, h.nslots, h.ring_size) != 0 ||
	    h.nbuckets != b->nbuckets || h.nintents != b->nintents ||
	    h.slot_size != b->slot_size || h.id != b->seg.id)
		goto fail;
	layout(b, off);
	if (h.buckets_off != off[0] || h.intents_off != off[1] ||
	    h.meta_off != off[2] || h.slots_off != off[3] ||
	    off[3] + (uint64_t)b->nslots * b->slot_size > b->seg.size)
		goto fail;
	b->id = h.id;
	bind_board(b, off);
	return 0;
fail:
	b->seg.fd = -1;                 /* the caller's */
	ubt_seg_unmap(&b->seg);
	memset(b, 0, sizeof(*b));
	b->seg.fd = -1;
	return err;
}

void ubt_board_unmap(struct ubt_board *b)
{
	ubt_seg_unmap(&b->seg);
	b->hdr = NULL;
}

/* ------------------------------------------------------------- locking */

static int pid_dead(uint32_t pid)
{
	return pid && kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

static void bucket_lock(struct board_bucket *k)
{
	uint32_t me = ubt_self_pid(), cur;
	uint64_t t0 = 0;

	for (unsigned spins = 0;; spins++) {
		cur = 0;
		if (atomic_compare_exchange_weak(&k->lock, &cur, me))
			return;
		if (spins < 256) {
			ubt_cpu_relax();
			continue;
		}
		if (!t0)
			t0 = ubt_now_ns();
		else if (cur && (pid_dead(cur) ||
				 ubt_now_ns() - t0 > LOCK_STEAL_MS * 1000000ull) &&
			 atomic_compare_exchange_strong(&k->lock, &cur, me))
			return;         /* taken over from a dead or stuck holder */
		sched_yield();
	}
}

static void bucket_unlock(struct board_bucket *k)
{
	uint32_t me = ubt_self_pid();

	/* Not ours any more (taken over): leave it to its new holder. */
	atomic_compare_exchange_strong(&k->lock, &me, 0);
}

static struct board_bucket *bucket_of(struct ubt_board *b,
				      const struct ubt_board_key *k)
{
	uint64_t h = fnv(k, sizeof(*k), 0xcbf29ce484222325ull);

	return (struct board_bucket *)(void *)(b->buckets +
		(h & (b->nbuckets - 1)) * sizeof(struct board_bucket));
}

static int key_eq(const struct board_ent *e, const struct ubt_board_key *k)
{
	return memcmp(&e->key, k, sizeof(*k)) == 0;
}

/* ------------------------------------------------------------- intents */

static struct board_intent *intent_group(struct ubt_board *b, uint64_t netns,
					 uint16_t family, const uint8_t addr[16],
					 uint16_t port)
{
	uint64_t h = 0xcbf29ce484222325ull;
	uint32_t ngroups = b->nintents / INTENT_GROUP;

	h = fnv(&netns, sizeof(netns), h);
	h = fnv(&family, sizeof(family), h);
	h = fnv(addr, 16, h);
	h = fnv(&port, sizeof(port), h);
	return (struct board_intent *)(void *)b->intents +
		(h % ngroups) * INTENT_GROUP;
}

int ubt_board_intent(struct ubt_board *b, uint64_t netns, uint16_t family,
		     const uint8_t addr[16], uint16_t port)
{
	struct board_intent *g = intent_group(b, netns, family, addr, port);
	uint32_t me = ubt_self_pid();

	for (uint32_t i = 0; i < INTENT_GROUP; i++) {
		uint32_t cur = 0;

		if (!atomic_compare_exchange_strong(&g[i].pid, &cur,
						    me | PID_FILLING))
			continue;
		g[i].family = family;
		g[i].port = port;
		g[i].netns = netns;
		memcpy(g[i].addr, addr, 16);
		g[i].ms = now_ms();
		atomic_store(&g[i].pid, me);
		return (int)((g - (struct board_intent *)(void *)b->intents) + i);
	}
	return -ENOSPC;
}

void ubt_board_intent_end(struct ubt_board *b, int handle)
{
	struct board_intent *in = (struct board_intent *)(void *)b->intents;

	if (handle >= 0 && (uint32_t)handle < b->nintents)
		atomic_store(&in[handle].pid, 0);
}

int ubt_board_intent_pending(struct ubt_board *b, uint64_t netns,
			     uint16_t family, const uint8_t addr[16],
			     uint16_t port)
{
	struct board_intent *g = intent_group(b, netns, family, addr, port);
	uint32_t now = now_ms();
	int pending = 0;

	for (uint32_t i = 0; i < INTENT_GROUP; i++) {
		uint32_t pid = atomic_load(&g[i].pid);

		if (!pid)
			continue;
		if (pid & PID_FILLING) {
			pending = 1;    /* being written: may be ours */
			continue;
		}
		if (g[i].netns != netns || g[i].family != family ||
		    g[i].port != port || memcmp(g[i].addr, addr, 16) != 0)
			continue;
		if (now - g[i].ms > INTENT_CHECK_MS && pid_dead(pid)) {
			atomic_compare_exchange_strong(&g[i].pid, &pid, 0);
			continue;
		}
		pending = 1;
	}
	return pending;
}

/* --------------------------------------------------------------- slots */

static struct board_meta *meta_of(struct ubt_board *b, uint32_t slot)
{
	return (struct board_meta *)(void *)b->meta + slot;
}

static void slot_seg(struct ubt_board *b, uint32_t slot, uint64_t id,
		     struct ubt_seg *at)
{
	memset(at, 0, sizeof(*at));
	at->fd = -1;
	at->base = b->slots + (uint64_t)slot * b->slot_size;
	at->size = b->slot_size;
	at->id = id;
	at->kind = UBT_SEG_CHAN;
	at->borrowed = 1;
}

static int slot_pop(struct ubt_board *b)
{
	_Atomic uint64_t *head = &b->hdr->free_head;
	uint64_t h = atomic_load(head);

	for (;;) {
		uint32_t top = (uint32_t)h, next;

		if (top == 0 || top > b->nslots)
			return -ENOSPC;         /* empty (or scribbled on) */
		next = atomic_load(&meta_of(b, top - 1)->next);
		if (next > b->nslots)
			return -ENOSPC;
		if (atomic_compare_exchange_weak(head, &h,
				(((h >> 32) + 1) << 32) | next))
			return (int)(top - 1);
	}
}

static void slot_push(struct ubt_board *b, uint32_t slot)
{
	_Atomic uint64_t *head = &b->hdr->free_head;
	uint64_t h = atomic_load(head);

	do
		atomic_store(&meta_of(b, slot)->next, (uint32_t)h);
	while (!atomic_compare_exchange_weak(head, &h,
			(((h >> 32) + 1) << 32) | (slot + 1)));
}

int ubt_board_chan_create(struct ubt_board *b, struct ubt_chan *c,
			  int own_efd, uint64_t db_id)
{
	struct board_meta *m;
	struct ubt_seg at;
	uint32_t gen;
	int slot, err;

	slot = slot_pop(b);
	if (slot < 0)
		return slot;
	m = meta_of(b, (uint32_t)slot);
	gen = atomic_fetch_add(&m->gen, 1) + 1;
	atomic_store(&m->refs, 1);
	/* The channel's id: the board's, the slot and its generation. */
	slot_seg(b, (uint32_t)slot,
		 (b->id ^ (((uint64_t)gen << 20 | (uint64_t)slot) *
			   0x9e3779b97f4a7c15ull)) | 1, &at);
	err = ubt_chan_create_at(c, &at, b->ring_size, own_efd, db_id);
	if (err) {
		ubt_board_slot_put(b, (uint32_t)slot);
		return err;
	}
	return slot;
}

int ubt_board_chan_attach(struct ubt_board *b, struct ubt_chan *c,
			  uint32_t slot, int own_efd, uint64_t db_id)
{
	struct ubt_seg at;

	if (slot >= b->nslots)
		return -EPROTO;
	slot_seg(b, slot, 0, &at);
	return ubt_chan_attach_at(c, &at, own_efd, db_id);
}

int ubt_board_chan_adopt(struct ubt_board *b, struct ubt_chan *c,
			 uint32_t slot, int side, int own_efd, int peer_efd)
{
	struct ubt_seg at;

	if (slot >= b->nslots) {
		memset(c, 0, sizeof(*c));
		c->seg.fd = c->efd[0] = c->efd[1] = -1;
		return -EPROTO;
	}
	slot_seg(b, slot, 0, &at);
	return ubt_chan_adopt_at(c, &at, side, own_efd, peer_efd);
}

void ubt_board_slot_put(struct ubt_board *b, uint32_t slot)
{
	struct board_meta *m;
	uint32_t v;

	if (slot >= b->nslots)
		return;
	m = meta_of(b, slot);
	v = atomic_load(&m->refs);
	/* Never below zero, whatever a peer wrote. */
	while (v && !atomic_compare_exchange_weak(&m->refs, &v, v - 1))
		;
	if (v != 1)
		return;
	{
		/* A connection that moved much gives its pages back; a
		 * short one leaves them for the next (no faults then). */
		uint8_t *base = b->slots + (uint64_t)slot * b->slot_size;
		uint64_t r0 = UBT_SEG_HDR_SIZE;
		uint64_t r1 = r0 + page_up(UBT_RING_CTL_SIZE + b->ring_size);
		struct ubt_ring_shm *a = (void *)(base + r0);
		struct ubt_ring_shm *z = (void *)(base + r1);

		if (atomic_load(&a->head) > TRIM_MOVED ||
		    atomic_load(&z->head) > TRIM_MOVED)
			madvise(base, b->slot_size, MADV_REMOVE);
	}
	slot_push(b, slot);
}

int ubt_board_reclaim(struct ubt_board *b, uint32_t pid)
{
	int n = 0;

	if (!pid)
		return 0;
	for (uint32_t i = 0; i < b->nslots; i++) {
		struct ubt_chan_hdr *h;

		if (!atomic_load(&meta_of(b, i)->refs))
			continue;
		h = (struct ubt_chan_hdr *)(void *)(b->slots +
			(uint64_t)i * b->slot_size + BOARD_HDR_OFF);
		for (int side = 0; side < 2; side++) {
			uint32_t one = 1;

			/* Held by that process alone, which died holding it:
			 * its reference, which it can no longer give. */
			if (atomic_load(&h->pid[side]) == pid &&
			    atomic_compare_exchange_strong(&h->holders[side],
							   &one, 0)) {
				ubt_board_slot_put(b, i);
				n++;
			}
		}
	}
	return n;
}

/* ------------------------------------------------------------- entries */

/* Fill entry e (bucket locked) and publish it as state. */
static void ent_write(struct board_ent *e, const struct ubt_board_key *k,
		      uint32_t slot, uint32_t now, uint32_t state)
{
	e->key = *k;
	e->slot = slot;
	e->pid = ubt_self_pid();
	e->ms = now;
	atomic_store(&e->state, state);
}

/* e's state as its bucket's scans see it: a stale tombstone is empty. */
static uint32_t ent_state(const struct board_ent *e, uint32_t now)
{
	uint32_t st = atomic_load(&e->state);

	return st == ENT_TOMB && now - e->ms >= TOMB_MS ? ENT_EMPTY : st;
}

int ubt_board_post(struct ubt_board *b, const struct ubt_board_key *k,
		   uint32_t slot)
{
	struct board_bucket *bk = bucket_of(b, k);
	struct board_ent *free_e = NULL;
	uint32_t now = now_ms();
	int r = -ENOSPC;

	bucket_lock(bk);
	for (uint32_t i = 0; i < BUCKET_ENTS; i++) {
		struct board_ent *e = &bk->e[i];
		uint32_t st = ent_state(e, now);

		if (st == ENT_EMPTY) {
			if (!free_e)
				free_e = e;
			continue;
		}
		if (!key_eq(e, k))
			continue;
		if (st == ENT_TOMB) {
			atomic_store(&e->state, ENT_EMPTY);
			r = -ECONNREFUSED;
			goto out;
		}
		if (!pid_dead(e->pid)) {
			r = -EEXIST;
			goto out;
		}
		free_e = e;                     /* its poster died */
		break;
	}
	if (free_e) {
		ent_write(free_e, k, slot, now, ENT_POSTED);
		r = 0;
	}
out:
	bucket_unlock(bk);
	return r;
}

int ubt_board_take(struct ubt_board *b, const struct ubt_board_key *k,
		   int tomb)
{
	struct board_bucket *bk = bucket_of(b, k);
	struct board_ent *free_e = NULL;
	uint32_t now = now_ms();
	int r = -ENOENT;

	bucket_lock(bk);
	for (uint32_t i = 0; i < BUCKET_ENTS; i++) {
		struct board_ent *e = &bk->e[i];
		uint32_t st = ent_state(e, now);

		if (st == ENT_EMPTY) {
			if (!free_e)
				free_e = e;
			continue;
		}
		if (st != ENT_POSTED || !key_eq(e, k))
			continue;
		atomic_store(&e->state, ENT_EMPTY);
		if (e->slot >= b->nslots)
			break;                  /* scribbled on: nothing */
		atomic_fetch_add(&meta_of(b, e->slot)->refs, 1);
		r = (int)e->slot;
		goto out;
	}
	if (tomb && free_e)
		ent_write(free_e, k, 0, now, ENT_TOMB);
out:
	bucket_unlock(bk);
	return r;
}

int ubt_board_take_wait(struct ubt_board *b, const struct ubt_board_key *k,
			uint64_t wait_ns)
{
	uint64_t t0 = 0;
	int slot = ubt_board_take(b, k, 0);

	while (slot < 0 && ubt_board_intent_pending(b, k->netns, k->family,
						    k->saddr, k->sport)) {
		uint64_t now = ubt_now_ns();

		if (!t0)
			t0 = now;
		else if (now - t0 > wait_ns)
			return ubt_board_take(b, k, 1);
		sched_yield();
		slot = ubt_board_take(b, k, 0);
	}
	/* The intent ended after the post: look once more. */
	return slot >= 0 ? slot : ubt_board_take(b, k, 0);
}

int ubt_board_unpost(struct ubt_board *b, const struct ubt_board_key *k,
		     uint32_t slot)
{
	struct board_bucket *bk = bucket_of(b, k);
	int r = 0;

	bucket_lock(bk);
	for (uint32_t i = 0; i < BUCKET_ENTS; i++) {
		struct board_ent *e = &bk->e[i];

		if (atomic_load(&e->state) == ENT_POSTED && e->slot == slot &&
		    key_eq(e, k)) {
			atomic_store(&e->state, ENT_EMPTY);
			r = 1;
			break;
		}
	}
	bucket_unlock(bk);
	return r;
}

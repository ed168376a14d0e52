/* SPDX-License-Identifier: MIT */
/*
 * chan.c - channels: one segment holding a header, a ring table and rings,
 * shared by two sides.  The creator lays it out; the attacher validates a
 * private copy of the table before it touches any ring.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>

#include "ubt.h"
#include "ubt_int.h"

#define CHAN_HDR_OFF  64u               /* after struct ubt_seg_hdr */
#define RING_ALIGN    4096u
#define RING_MAX_SIZE (1ull << 30)

_Static_assert(sizeof(struct ubt_seg_hdr) <= CHAN_HDR_OFF, "seg hdr");
_Static_assert(CHAN_HDR_OFF + sizeof(struct ubt_chan_hdr) <= UBT_SEG_HDR_SIZE,
	       "chan hdr must fit the header page");
_Static_assert(sizeof(struct ubt_ring_shm) <= UBT_RING_CTL_SIZE, "ring ctl");

static struct ubt_chan_hdr *chan_hdr(const struct ubt_chan *c)
{
	return (struct ubt_chan_hdr *)(c->seg.base + CHAN_HDR_OFF);
}

static int new_efd(void)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);

	return fd < 0 ? -errno : fd;
}

/* Is one ring description sane for a segment of seg_size bytes? */
static int desc_ok(const struct ubt_ring_desc *d, uint64_t seg_size)
{
	if (d->kind != UBT_RING_STREAM && d->kind != UBT_RING_MSG)
		return 0;
	if (d->producer > 1 || d->size < 64 || d->size > RING_MAX_SIZE ||
	    (d->size & (d->size - 1)))
		return 0;
	if (d->kind == UBT_RING_STREAM && d->entry_size)
		return 0;
	if (d->entry_size && ubt_rec_size(d->entry_size) > d->size)
		return 0;
	if (d->off < UBT_SEG_HDR_SIZE || (d->off & 63) || d->off > seg_size ||
	    seg_size - d->off < UBT_RING_CTL_SIZE + d->size)
		return 0;
	return 1;
}

/* Rings must not overlap: a peer could otherwise alias two of them. */
static int descs_disjoint(const struct ubt_ring_desc *d, uint32_t n)
{
	uint32_t i, j;

	for (i = 0; i < n; i++)
		for (j = i + 1; j < n; j++) {
			uint64_t ai = d[i].off, ae = ai + UBT_RING_CTL_SIZE + d[i].size;
			uint64_t bi = d[j].off, be = bi + UBT_RING_CTL_SIZE + d[j].size;

			if (ai < be && bi < ae)
				return 0;
		}
	return 1;
}

/* Bind ring handles to the validated private table. */
static void bind_rings(struct ubt_chan *c, const struct ubt_ring_desc *d)
{
	uint32_t i;

	for (i = 0; i < c->nrings; i++) {
		uint32_t p = d[i].producer;

		ubt_ring_bind(&c->ring[i], c->seg.base + d[i].off, d[i].size,
			      d[i].kind, d[i].entry_size, c->efd[!p], c->efd[p]);
		c->ring[i].prod_side = (int)p;
	}
}

/* Create with this side's eventfd own_efd (shared, not the channel's), or
 * a new one of the channel's when own_efd is -1. */
static int chan_create(struct ubt_chan *c, const struct ubt_ring_desc *spec,
		       uint32_t nrings, int own_efd, uint64_t db_id,
		       const struct ubt_seg *at)
{
	struct ubt_ring_desc d[UBT_CHAN_MAX_RINGS];
	struct ubt_chan_hdr *h;
	uint64_t off = UBT_SEG_HDR_SIZE;
	uint32_t i;
	int err;

	memset(c, 0, sizeof(*c));
	c->seg.fd = c->efd[0] = c->efd[1] = -1;
	if (nrings == 0 || nrings > UBT_CHAN_MAX_RINGS)
		return -EINVAL;
	for (i = 0; i < nrings; i++) {
		d[i] = spec[i];
		d[i].off = off;
		d[i].reserved = 0;
		off += UBT_RING_CTL_SIZE + d[i].size;
		off = (off + RING_ALIGN - 1) & ~(uint64_t)(RING_ALIGN - 1);
		if (!desc_ok(&d[i], UINT64_MAX / 2))
			return -EINVAL;
	}
	if (at) {
		/* A board slot: lay out the segment header in place. */
		struct ubt_seg_hdr *sh = (struct ubt_seg_hdr *)(void *)at->base;

		if (off > at->size)
			return -EINVAL;
		c->seg = *at;
		c->seg.fd = -1;
		c->seg.borrowed = 1;
		sh->magic = UBT_MAGIC;
		sh->version = UBT_LAYOUT_VER;
		sh->kind = UBT_SEG_CHAN;
		sh->size = at->size;
		sh->id = at->id;
		sh->hdr_size = UBT_SEG_HDR_SIZE;
		sh->creator_pid = ubt_self_pid();
		c->seg.kind = UBT_SEG_CHAN;
	} else {
		err = ubt_seg_create(&c->seg, off, UBT_SEG_CHAN, "ubs-chan");
		if (err)
			return err;
	}
	err = own_efd >= 0 ? own_efd : new_efd();
	if (err < 0) {
		ubt_seg_unmap(&c->seg);
		return err;
	}
	c->efd[0] = err;
	c->shared_efds = own_efd >= 0;
	c->side = 0;
	c->nrings = nrings;

	h = chan_hdr(c);
	h->version = UBT_LAYOUT_VER;
	atomic_store(&h->state, UBT_CHAN_UNDECIDED);
	h->nrings = nrings;
	atomic_store(&h->pid[0], ubt_self_pid());
	atomic_store(&h->holders[0], 1);
	atomic_store(&h->db[0], db_id);
	memcpy(h->ring, d, sizeof(d[0]) * nrings);
	for (i = 0; i < nrings; i++)
		ubt_ring_format(c->seg.base + d[i].off, d[i].size);
	bind_rings(c, d);
	return 0;
}

int ubt_chan_create(struct ubt_chan *c, const struct ubt_ring_desc *spec,
		    uint32_t nrings)
{
	return chan_create(c, spec, nrings, -1, 0, NULL);
}

/* Attach with own_efd, the channel's (owned: taken on success) or, when
 * shared, the process's doorbell named db_id. */
static int chan_attach(struct ubt_chan *c, int seg_fd, int peer_efd,
		       int own_efd, int shared, uint64_t db_id,
		       const struct ubt_seg *at);

int ubt_chan_attach(struct ubt_chan *c, int seg_fd, int peer_efd)
{
	return chan_attach(c, seg_fd, peer_efd, -1, 0, 0, NULL);
}

int ubt_chan_attach_efds(struct ubt_chan *c, int seg_fd, int peer_efd,
			 int own_efd)
{
	return chan_attach(c, seg_fd, peer_efd, own_efd, 0, 0, NULL);
}

int ubt_chan_attach_db(struct ubt_chan *c, int seg_fd, int own_efd,
		       uint64_t db_id)
{
	if (own_efd < 0)
		return -EBADF;
	return chan_attach(c, seg_fd, -1, own_efd, 1, db_id, NULL);
}

int ubt_chan_attach_at(struct ubt_chan *c, const struct ubt_seg *at,
		       int own_efd, uint64_t db_id)
{
	if (own_efd < 0)
		return -EBADF;
	return chan_attach(c, -1, -1, own_efd, 1, db_id, at);
}

uint64_t ubt_chan_own_db(const struct ubt_chan *c)
{
	return atomic_load_explicit(&chan_hdr(c)->db[c->side & 1],
				    memory_order_acquire);
}

uint64_t ubt_chan_peer_db(const struct ubt_chan *c)
{
	return atomic_load_explicit(&chan_hdr(c)->db[!c->side],
				    memory_order_acquire);
}

/*
 * Map seg_fd as a channel of this layout (c cleared first) and copy its
 * ring table into d (*n rings), each description checked against the
 * segment and the others.  On failure c is unmapped and seg_fd stays the
 * caller's.
 */
static int chan_map(struct ubt_chan *c, int seg_fd, const struct ubt_seg *at,
		    struct ubt_ring_desc d[UBT_CHAN_MAX_RINGS], uint32_t *n)
{
	struct ubt_chan_hdr *h;
	uint32_t i;
	int err;

	memset(c, 0, sizeof(*c));
	c->seg.fd = c->efd[0] = c->efd[1] = -1;
	if (at) {
		/* A board slot: its segment header is the peer's too. */
		struct ubt_seg_hdr sh;

		memcpy(&sh, at->base, sizeof(sh));
		if (sh.magic != UBT_MAGIC || sh.version != UBT_LAYOUT_VER ||
		    sh.kind != UBT_SEG_CHAN || sh.size != at->size ||
		    sh.hdr_size != UBT_SEG_HDR_SIZE || sh.id == 0)
			return -EPROTO;
		c->seg = *at;
		c->seg.fd = -1;
		c->seg.borrowed = 1;
		c->seg.id = sh.id;
		c->seg.kind = UBT_SEG_CHAN;
	} else {
		err = ubt_seg_map(&c->seg, seg_fd, UBT_SEG_CHAN);
		if (err)
			return err;
	}
	h = chan_hdr(c);
	*n = h->nrings;
	err = -EPROTONOSUPPORT;
	if (h->version != UBT_LAYOUT_VER)
		goto fail;
	err = -EPROTO;
	if (*n == 0 || *n > UBT_CHAN_MAX_RINGS)
		goto fail;
	memcpy(d, h->ring, sizeof(d[0]) * *n);
	for (i = 0; i < *n; i++)
		if (!desc_ok(&d[i], c->seg.size))
			goto fail;
	if (!descs_disjoint(d, *n))
		goto fail;
	return 0;
fail:
	c->seg.fd = -1;                 /* the caller's */
	ubt_seg_unmap(&c->seg);
	return err;
}

static int chan_attach(struct ubt_chan *c, int seg_fd, int peer_efd,
		       int own_efd, int shared, uint64_t db_id,
		       const struct ubt_seg *at)
{
	struct ubt_ring_desc d[UBT_CHAN_MAX_RINGS];
	struct ubt_chan_hdr *h;
	uint32_t n;
	int err;

	err = chan_map(c, seg_fd, at, d, &n);
	if (err)
		return err;
	h = chan_hdr(c);
	err = own_efd >= 0 ? own_efd : new_efd();
	if (err < 0) {
		c->seg.fd = -1;         /* the caller's */
		ubt_seg_unmap(&c->seg);
		return err;
	}
	c->efd[1] = err;
	c->efd[0] = peer_efd;
	c->shared_efds = shared;
	c->side = 1;
	c->nrings = n;
	atomic_store(&h->pid[1], ubt_self_pid());
	atomic_store(&h->holders[1], 1);
	atomic_store(&h->db[1], db_id);
	bind_rings(c, d);
	return 0;
}

static int chan_adopt(struct ubt_chan *c, int seg_fd, const struct ubt_seg *at,
		      int side, int own_efd, int peer_efd)
{
	struct ubt_ring_desc d[UBT_CHAN_MAX_RINGS];
	uint32_t n;
	int err;

	if (side != 0 && side != 1) {
		memset(c, 0, sizeof(*c));
		c->seg.fd = c->efd[0] = c->efd[1] = -1;
		return -EINVAL;
	}
	err = chan_map(c, seg_fd, at, d, &n);
	if (err)
		return err;
	c->side = side;
	c->efd[side] = own_efd;
	c->efd[!side] = peer_efd;
	c->shared_efds = 1;
	c->nrings = n;
	bind_rings(c, d);
	return 0;
}

int ubt_chan_adopt(struct ubt_chan *c, int seg_fd, int side, int own_efd,
		   int peer_efd)
{
	return chan_adopt(c, seg_fd, NULL, side, own_efd, peer_efd);
}

int ubt_chan_adopt_at(struct ubt_chan *c, const struct ubt_seg *at, int side,
		      int own_efd, int peer_efd)
{
	return chan_adopt(c, -1, at, side, own_efd, peer_efd);
}

void ubt_chan_reclaim_locks(struct ubt_chan *c)
{
	for (uint32_t i = 0; i < c->nrings; i++)
		ubt_ring_reclaim_locks(&c->ring[i]);
}

void ubt_chan_set_peer_efd(struct ubt_chan *c, int efd)
{
	uint32_t i;

	if (c->efd[!c->side] >= 0 && !c->shared_efds)
		close(c->efd[!c->side]);
	c->efd[!c->side] = efd;
	for (i = 0; i < c->nrings; i++) {
		struct ubt_ring *r = &c->ring[i];

		if (r->prod_side == c->side)
			r->data_efd = efd;      /* the peer consumes */
		else
			r->space_efd = efd;     /* the peer produces */
	}
}

int ubt_chan_make_peer_efd(struct ubt_chan *c)
{
	int fd = new_efd();

	if (fd >= 0)
		ubt_chan_set_peer_efd(c, fd);
	return fd;
}

uint32_t ubt_chan_decide(struct ubt_chan *c, uint32_t want)
{
	uint32_t cur = UBT_CHAN_UNDECIDED;

	if (atomic_compare_exchange_strong(&chan_hdr(c)->state, &cur, want))
		return want;
	/* A state we do not know (a hostile peer) means TCP. */
	return cur == UBT_CHAN_UB ? UBT_CHAN_UB : UBT_CHAN_TCP;
}

int ubt_chan_decide_fd(int seg_fd, uint32_t want)
{
	struct ubt_chan c;
	uint32_t r;
	int err;

	memset(&c, 0, sizeof(c));
	err = ubt_seg_map(&c.seg, seg_fd, UBT_SEG_CHAN);
	if (err)
		return err;
	c.seg.fd = -1;                  /* the caller's: not closed here */
	if (chan_hdr(&c)->version != UBT_LAYOUT_VER) {
		ubt_seg_unmap(&c.seg);
		return -EPROTONOSUPPORT;
	}
	r = ubt_chan_decide(&c, want);
	ubt_seg_unmap(&c.seg);
	return (int)r;
}

void ubt_chan_shutdown(struct ubt_chan *c)
{
	struct ubt_ring *r;
	int n;

	/* Consumer ends first: a peer that has seen EOF must get EPIPE. */
	for (n = 0; (r = ubt_chan_rx(c, n)); n++)
		ubt_ring_close_consumer(r);
	for (n = 0; (r = ubt_chan_tx(c, n)); n++)
		ubt_ring_close_producer(r);
}

void ubt_chan_close(struct ubt_chan *c)
{
	ubt_seg_unmap(&c->seg);
	if (c->efd[0] >= 0 && !c->shared_efds)
		close(c->efd[0]);
	if (c->efd[1] >= 0 && !c->shared_efds)
		close(c->efd[1]);
	c->efd[0] = c->efd[1] = -1;
	c->nrings = 0;
}

/* The n-th ring whose producer is (tx) or is not (rx) this side. */
static struct ubt_ring *nth_ring(struct ubt_chan *c, int n, int tx)
{
	uint32_t i;

	for (i = 0; i < c->nrings; i++)
		if ((c->ring[i].prod_side == c->side) == tx && n-- == 0)
			return &c->ring[i];
	return NULL;
}

struct ubt_ring *ubt_chan_tx(struct ubt_chan *c, int n)
{
	return nth_ring(c, n, 1);
}

struct ubt_ring *ubt_chan_rx(struct ubt_chan *c, int n)
{
	return nth_ring(c, n, 0);
}

int ubt_chan_create_stream(struct ubt_chan *c, uint64_t ring_size)
{
	struct ubt_ring_desc spec[2] = {
		{ .kind = UBT_RING_STREAM, .producer = 0, .size = ring_size },
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = ring_size },
	};

	return ubt_chan_create(c, spec, 2);
}

int ubt_chan_create_stream_db(struct ubt_chan *c, uint64_t ring_size,
			      int own_efd, uint64_t db_id)
{
	struct ubt_ring_desc spec[2] = {
		{ .kind = UBT_RING_STREAM, .producer = 0, .size = ring_size },
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = ring_size },
	};

	if (own_efd < 0)
		return -EBADF;
	return chan_create(c, spec, 2, own_efd, db_id, NULL);
}

int ubt_chan_create_at(struct ubt_chan *c, const struct ubt_seg *at,
		       uint64_t ring_size, int own_efd, uint64_t db_id)
{
	struct ubt_ring_desc spec[2] = {
		{ .kind = UBT_RING_STREAM, .producer = 0, .size = ring_size },
		{ .kind = UBT_RING_STREAM, .producer = 1, .size = ring_size },
	};

	if (own_efd < 0)
		return -EBADF;
	return chan_create(c, spec, 2, own_efd, db_id, at);
}

int ubt_pidfd(int pid)
{
	long fd = syscall(SYS_pidfd_open, pid, 0);

	return fd < 0 ? -errno : (int)fd;
}

void ubt_chan_hold(struct ubt_chan *c)
{
	atomic_fetch_add(&chan_hdr(c)->holders[c->side], 1);
}

uint32_t ubt_chan_release(struct ubt_chan *c)
{
	_Atomic uint32_t *h = &chan_hdr(c)->holders[c->side];
	uint32_t v = atomic_load(h);

	/* A peer may scribble on the count: never wrap below zero. */
	while (v && !atomic_compare_exchange_weak(h, &v, v - 1))
		;
	return v ? v - 1 : 0;
}

uint32_t ubt_chan_state(const struct ubt_chan *c)
{
	return atomic_load_explicit(&chan_hdr(c)->state, memory_order_acquire);
}

void ubt_chan_move_efd(struct ubt_chan *c, int side, int newfd)
{
	int old = c->efd[side & 1];

	for (uint32_t i = 0; i < c->nrings; i++) {
		if (c->ring[i].data_efd == old)
			c->ring[i].data_efd = newfd;
		if (c->ring[i].space_efd == old)
			c->ring[i].space_efd = newfd;
	}
	c->efd[side & 1] = newfd;
}

void ubt_chan_demote(struct ubt_chan *c)
{
	ubt_chan_demote_side(c, c->side);
}

void ubt_chan_demote_side(struct ubt_chan *c, int side)
{
	struct ubt_ring *r;

	atomic_store_explicit(&chan_hdr(c)->demote[side & 1], 1,
			      memory_order_seq_cst);
	/* The peer may sleep as a consumer of what we produce or as a
	 * producer waiting for room in what we consume. */
	for (int n = 0; (r = ubt_chan_tx(c, n)); n++)
		ubt_db_notify(r, &r->shm->data_db, r->data_efd);
	for (int n = 0; (r = ubt_chan_rx(c, n)); n++)
		ubt_db_notify(r, &r->shm->space_db, r->space_efd);
}

const _Atomic uint32_t *ubt_chan_demote_word(const struct ubt_chan *c,
					     int side)
{
	return &chan_hdr(c)->demote[side & 1];
}

void ubt_chan_wake_peer(struct ubt_chan *c)
{
	struct ubt_ring *r;

	/* The peer's sleepers: consumers of what we produce, producers
	 * waiting for room in what we consume. */
	for (int n = 0; (r = ubt_chan_tx(c, n)); n++)
		ubt_db_notify(r, &r->shm->data_db, r->data_efd);
	for (int n = 0; (r = ubt_chan_rx(c, n)); n++)
		ubt_db_notify(r, &r->shm->space_db, r->space_efd);
}

void ubt_chan_wake_self(struct ubt_chan *c)
{
	struct ubt_ring *r;

	/* Our sleepers: consumers of what the peer produces, producers
	 * waiting for room in what the peer consumes. */
	for (int n = 0; (r = ubt_chan_rx(c, n)); n++)
		ubt_db_notify(r, &r->shm->data_db, r->data_efd);
	for (int n = 0; (r = ubt_chan_tx(c, n)); n++)
		ubt_db_notify(r, &r->shm->space_db, r->space_efd);
}

void ubt_chan_set_notes(struct ubt_chan *c, struct ubt_note *n0,
			struct ubt_note *n1)
{
	struct ubt_chan_hdr *h = chan_hdr(c);
	uint32_t i;

	c->note[0] = n0;
	c->note[1] = n1;
	for (i = 0; i < c->nrings; i++) {
		struct ubt_ring *r = &c->ring[i];
		int p = r->prod_side & 1;

		r->data_note = c->note[!p];
		r->data_tok = &h->note_tok[!p];
		r->space_note = c->note[p];
		r->space_tok = &h->note_tok[p];
	}
}

void ubt_chan_set_note_tok(struct ubt_chan *c, uint32_t tok)
{
	atomic_store_explicit(&chan_hdr(c)->note_tok[c->side & 1], tok,
			      memory_order_seq_cst);
}

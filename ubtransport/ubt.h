/* SPDX-License-Identifier: MIT */
/*
 * ubt.h - the UB transport: shared-memory segments, rings, doorbells.
 *
 * A UB domain is modelled as memory that several processes of one host map.
 * Everything here returns -errno on failure (never sets errno for the
 * caller); anything read from shared memory is treated as hostile and
 * bounds-checked before use.
 */
#ifndef UBT_H
#define UBT_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <sys/uio.h>

#define UBT_MAGIC        0x55425453u /* "UBTS" */
#define UBT_LAYOUT_VER   5u          /* bump on any shared layout change */

/* ---------------------------------------------------------------- segments */

enum ubt_seg_kind {
	UBT_SEG_DATA = 1,       /* plain memory, addressed by id + offset */
	UBT_SEG_CHAN = 2,       /* a channel: header + ring table + rings */
	UBT_SEG_POLICY = 3,     /* ubsd's policy page: others map it
				 * read-only (F_SEAL_FUTURE_WRITE) */
	UBT_SEG_NOTE = 4,       /* a process's notification page */
	UBT_SEG_BOARD = 5,      /* a uid's board: rendezvous + channel slots */
};

/* First bytes of every segment; the rest of the first page is reserved. */
struct ubt_seg_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t kind;
	uint64_t size;          /* whole segment, bytes */
	uint64_t id;            /* unique per host, for id + offset addressing */
	uint32_t hdr_size;      /* bytes reserved for headers before payload */
	uint32_t creator_pid;
};

#define UBT_SEG_HDR_SIZE 4096u

/* A mapped segment, private to the process that holds it. */
struct ubt_seg {
	int fd;                 /* memfd, close-on-exec */
	uint8_t *base;
	size_t size;            /* trusted copy, checked against fstat */
	uint64_t id;
	uint16_t kind;
	uint8_t borrowed;       /* a slot of a board: base..size lies in the
				 * board's mapping; unmap forgets it only */
};

/* May this process make a file of size bytes (RLIMIT_FSIZE)?  Growing
 * one past the limit, a memfd too, brings SIGXFSZ, which kills.  1 or 0. */
int ubt_fsize_ok(uint64_t size);
/* Create a sealed (fixed-size) 0600 memfd segment of size bytes, mapped;
 * -EFBIG past the process's file size limit. */
int ubt_seg_create(struct ubt_seg *s, size_t size, uint16_t kind,
		   const char *name);
/* Map a segment received as fd; takes ownership of fd on success only.
 * Refuses (-EPROTO / -EPROTONOSUPPORT / -EBADF / -EPERM) a segment of the
 * wrong kind, layout version or size, or one that is not sealed. */
int ubt_seg_map(struct ubt_seg *s, int fd, uint16_t kind);
void ubt_seg_unmap(struct ubt_seg *s);
/* Pointer to [off, off+len) inside s, or NULL if out of bounds. */
void *ubt_seg_ptr(const struct ubt_seg *s, uint64_t off, uint64_t len);

#define UBT_MAX_FDS 8
/* Pass up to UBT_MAX_FDS fds (and len bytes of data) over a Unix socket.
 * Returns len (0 when len is 0: one filler byte is sent). */
int ubt_send_fds(int sock, const int *fds, int nfds, const void *data,
		 size_t len);
/* Receive up to *nfds fds (close-on-exec) and data; *nfds is updated.
 * Returns bytes of data received, -EPIPE on EOF, -EPROTO if control data
 * was truncated.  Fds beyond *nfds are closed. */
int ubt_recv_fds(int sock, int *fds, int *nfds, void *data, size_t len);
/* The same with recvmsg flags (MSG_DONTWAIT); -EAGAIN when nothing came. */
int ubt_recv_fds_flags(int sock, int *fds, int *nfds, void *data, size_t len,
		       int flags);

/* ------------------------------------------------------------------- rings */

enum ubt_ring_kind {
	UBT_RING_STREAM = 1,    /* byte stream (sockets) */
	UBT_RING_MSG = 2,       /* tagged records, 1 B .. capacity-8 */
};

/* Shared ring control block: producer, consumer and doorbell words on
 * separate cache lines.  Written by both sides: never trusted. */
struct ubt_ring_shm {
	_Atomic uint64_t head;          /* bytes ever produced */
	_Atomic uint32_t plock;         /* producer lock: 0 or owner pid|WAIT */
	_Atomic uint32_t pclosed;       /* producer shut down: EOF after data */
	uint8_t pad0[48];
	_Atomic uint64_t tail;          /* bytes ever consumed */
	_Atomic uint32_t clock;         /* consumer lock */
	_Atomic uint32_t cclosed;       /* consumer gone: writes get EPIPE */
	uint8_t pad1[48];
	_Atomic uint64_t data_db;       /* consumers waiting: epoch<<32|count */
	uint8_t pad2[56];
	_Atomic uint64_t space_db;      /* producers waiting: epoch<<32|count */
	uint8_t pad3[56];
};

#define UBT_RING_CTL_SIZE 256u

struct ubt_note;

/* Counters kept per process per ring end (not shared). */
struct ubt_ring_stats {
	uint64_t doorbells;     /* eventfd writes issued (syscalls) */
	uint64_t sleeps;        /* real sleeps (poll) entered */
	uint64_t spin_hits;     /* waits satisfied while spinning */
	uint64_t strays;        /* stray doorbell tokens discarded */
};

/* A process's handle on one ring; the geometry is a private, validated copy. */
struct ubt_ring {
	struct ubt_ring_shm *shm;
	uint8_t *data;
	uint64_t size;          /* power of two */
	uint32_t kind;
	uint32_t entry_size;    /* MSG: if nonzero every record has this size */
	int data_efd;           /* consumer's eventfd: rung when data arrives */
	int space_efd;          /* producer's eventfd: rung when space frees */
	int prod_side;          /* in a channel: the side that produces */
	/* Notification pages to post to when data comes (the consumer's)
	 * and when space frees (the producer's), with the word of the
	 * channel header where that side names its endpoint; NULL: none. */
	struct ubt_note *data_note, *space_note;
	const _Atomic uint32_t *data_tok, *space_tok;
	int64_t spin_ns;        /* adaptive spin, <= the wait's budget */
	struct ubt_ring_stats st;
};

/* Initialise shared ring memory (ctl + data) at mem; size power of two. */
int ubt_ring_format(void *mem, uint64_t size);
/* Bind a handle to formatted memory; efds may be -1 (no doorbell). */
void ubt_ring_bind(struct ubt_ring *r, void *mem, uint64_t size, uint32_t kind,
		   uint32_t entry_size, int data_efd, int space_efd);

/* Byte stream.  write: bytes written (short if full), -EAGAIN if full,
 * -EPIPE if the consumer closed, -EPROTO on a corrupt header. */
ssize_t ubt_stream_writev(struct ubt_ring *r, const struct iovec *iov, int cnt);
ssize_t ubt_stream_write(struct ubt_ring *r, const void *buf, size_t len);
#define UBT_PEEK 1
/* read: bytes read, 0 at EOF (producer closed, ring empty), -EAGAIN. */
ssize_t ubt_stream_readv(struct ubt_ring *r, const struct iovec *iov, int cnt,
			 int flags);
ssize_t ubt_stream_read(struct ubt_ring *r, void *buf, size_t len, int flags);
/* Bytes ready to read / room to write; -EPROTO if corrupt. */
int64_t ubt_ring_readable(const struct ubt_ring *r);
int64_t ubt_ring_writable(const struct ubt_ring *r);

/* Records.  send: 0, -EAGAIN (no room yet), -EMSGSIZE (never fits),
 * -EPIPE, -EPROTO.  recv: payload length; -ENOBUFS if cap is too small
 * (record stays queued, *tag and the needed length via ubt_msg_peek). */
int ubt_msg_sendv(struct ubt_ring *r, uint32_t tag, const struct iovec *iov,
		  int cnt);
int ubt_msg_send(struct ubt_ring *r, uint32_t tag, const void *buf,
		 size_t len);
ssize_t ubt_msg_recv(struct ubt_ring *r, uint32_t *tag, void *buf, size_t cap);
/* Length of the next record (0 is a valid length), -EAGAIN if none,
 * -EPIPE if none will come (producer closed), -EPROTO if corrupt.
 * recv returns the same errors when nothing can be received. */
ssize_t ubt_msg_peek(const struct ubt_ring *r, uint32_t *tag);

/* An empty ring's data pages back to the system (both locks taken for a
 * moment, never waited for): bytes released, 0 if not empty or busy. */
int64_t ubt_ring_trim(struct ubt_ring *r);

/* Shut down one end: producer -> EOF for the reader, consumer -> EPIPE
 * for the writer.  Wakes sleepers on the other side. */
void ubt_ring_close_producer(struct ubt_ring *r);
void ubt_ring_close_consumer(struct ubt_ring *r);

/* --------------------------------------------------------------- waiting */

/* How to wait: spin up to spin_ns (0 = never spin), then sleep in poll()
 * on the doorbell and on watch_fd (if >= 0) for watch_events, for at most
 * timeout_ms (-1 = forever).  Signals interrupt the sleep. */
#define UBT_WAIT_STOPS 3
struct ubt_wait {
	int64_t spin_ns;
	int timeout_ms;
	int watch_fd;
	short watch_events;
	/* Words that end the wait (UBT_STOP) when one becomes nonzero,
	 * checked while spinning and around each sleep; NULL: unused. */
	const _Atomic uint32_t *stop[UBT_WAIT_STOPS];
};

enum ubt_wake {
	UBT_READY = 0,          /* the condition holds */
	UBT_WATCH = 1,          /* watch_fd reported an event */
	UBT_STOP = 2,           /* *stop became nonzero */
};
/* Wait until the ring is readable (data or EOF) / writable (room for
 * need bytes, or consumer closed).  Returns UBT_READY, UBT_WATCH,
 * UBT_STOP, -EINTR, -ETIMEDOUT or -EPROTO.  Whoever sets *stop must ring
 * the doorbell the waiter sleeps on (ubt_chan_demote does). */
int ubt_wait_readable(struct ubt_ring *r, const struct ubt_wait *w);
int ubt_wait_writable(struct ubt_ring *r, uint64_t need,
		      const struct ubt_wait *w);

/*
 * Waiting on many rings at once (poll/epoll emulation): arm registers this
 * process as a sleeper on r's data doorbell (space = 0, consumer side) or
 * space doorbell (space = 1, producer side), so that the next change rings
 * this side's eventfd; the caller re-checks its conditions, sleeps on the
 * eventfd with whatever else it waits for, then must disarm with the key
 * arm returned (which consumes the token if the doorbell was rung).
 */
uint32_t ubt_ring_arm(struct ubt_ring *r, int space);
/* Returns 1 when the doorbell was rung for this registration (its token
 * taken), 0 when the registration was withdrawn unclaimed. */
int ubt_ring_disarm(struct ubt_ring *r, int space, uint32_t key);
/* Has the producer / consumer side of r been shut down? */
int ubt_ring_pclosed(const struct ubt_ring *r);
int ubt_ring_cclosed(const struct ubt_ring *r);

/*
 * A process's notification page (note.c): peers post the tokens of its
 * endpoints that became ready (a three-level bitmap: posting twice is
 * posting once), and ring its eventfd only when a waiter of the page is
 * registered as asleep.  Everything in it is written by peers: a token is
 * only a hint, which the owner checks against its own table.
 */
#define UBT_NOTE_SLOTS (1u << 18)       /* tokens 1 .. UBT_NOTE_SLOTS-1 */

struct ubt_note_shm {
	_Atomic uint64_t sleep;         /* sleepers: epoch<<32 | count */
	uint8_t pad0[56];
	_Atomic uint64_t top;           /* bit i: mid[i] may be nonzero */
	uint8_t pad1[56];
	_Atomic uint64_t mid[64];       /* bit j: leaf[i*64+j] may be nonzero */
	_Atomic uint64_t leaf[UBT_NOTE_SLOTS / 64];
};

struct ubt_note {
	struct ubt_seg seg;
	struct ubt_note_shm *shm;
	int efd;                        /* the owner's doorbell eventfd */
	uint64_t posts;                 /* tokens this handle posted */
};

/* Create a page (owner), woken through efd (not owned). */
int ubt_note_create(struct ubt_note *n, int efd);
/* Map a peer's page received as fd (taken on success only); its
 * sleepers are woken through efd (the peer's doorbell, not owned). */
int ubt_note_map(struct ubt_note *n, int fd, int efd);
void ubt_note_close(struct ubt_note *n);
/* Post token tok (0 and out-of-range tokens are ignored); wake the
 * page's sleepers if any.  Returns 1 if the eventfd was written. */
int ubt_note_post(struct ubt_note *n, uint32_t tok);
/* Owner: take every posted token, calling fn for each (at most
 * UBT_NOTE_SLOTS calls); returns how many. */
int ubt_note_pop(struct ubt_note *n, void (*fn)(uint32_t tok, void *arg),
		 void *arg);
/* Owner: register as a sleeper of the page before the last check, and
 * withdraw after the sleep (as ubt_ring_arm / ubt_ring_disarm). */
uint32_t ubt_note_arm(struct ubt_note *n);
int ubt_note_disarm(struct ubt_note *n, uint32_t key);
/* Wake the page's registered sleepers (as a post would), e.g. when the
 * owner's own threads have something new for a sleeping one. */
int ubt_note_wake(struct ubt_note *n);

/* State letter ('R', 'S', 'Z'...) and parent of process pid, from
 * /proc/PID/stat: 0, or -errno (no such process, unreadable). */
int ubt_proc_stat(int pid, char *state, int *ppid);

/* A pidfd for pid: readable once the process has exited (a watch_fd). */
int ubt_pidfd(int pid);

/* ---------------------------------------------------------------- channel */

#define UBT_CHAN_MAX_RINGS 8

enum ubt_chan_state {
	UBT_CHAN_UNDECIDED = 0,
	UBT_CHAN_UB = 1,
	UBT_CHAN_TCP = 2,
};

/* One ring of a channel, as laid out by its creator. */
struct ubt_ring_desc {
	uint32_t kind;
	uint32_t producer;      /* side (0 creator, 1 attacher) that produces */
	uint64_t off;           /* of the ring's ctl block in the segment */
	uint64_t size;          /* data bytes, power of two */
	uint32_t entry_size;
	uint32_t reserved;
};

/* Follows the segment header. */
struct ubt_chan_hdr {
	uint32_t version;
	_Atomic uint32_t state;         /* enum ubt_chan_state, set by CAS */
	uint32_t nrings;
	uint32_t reserved;
	_Atomic uint32_t pid[2];        /* pid of each side, for diagnostics */
	_Atomic uint32_t holders[2];    /* processes holding each side (fork
					 * adds one): the last one to let go
					 * shuts the side down */
	_Atomic uint32_t demote[2];     /* side went back to plain TCP: it
					 * neither produces nor consumes its
					 * rings any more (ubt_chan_demote) */
	struct ubt_ring_desc ring[UBT_CHAN_MAX_RINGS];
	_Atomic uint64_t db[2];         /* each side's process doorbell id
					 * (0: the channel's own eventfds) */
	_Atomic uint32_t note_tok[2];   /* each side's endpoint token in its
					 * notification page (0: post
					 * nothing); written by that side */
};

struct ubt_chan {
	struct ubt_seg seg;
	int side;                       /* 0 creator, 1 attacher */
	int efd[2];                     /* each side's doorbell eventfd */
	int shared_efds;                /* efds are the processes' doorbells,
					 * not the channel's: never closed */
	uint32_t nrings;
	struct ubt_ring ring[UBT_CHAN_MAX_RINGS];
	struct ubt_note *note[2];       /* each side's notification page */
};

/* Create a channel: nrings rings described by kind/producer/size/entry_size
 * in spec (off ignored).  Creates this side's eventfd. */
int ubt_chan_create(struct ubt_chan *c, const struct ubt_ring_desc *spec,
		    uint32_t nrings);
/* Attach to a channel segment fd as side 1; takes ownership of seg_fd and
 * peer_efd on success.  Creates this side's eventfd. */
int ubt_chan_attach(struct ubt_chan *c, int seg_fd, int peer_efd);
/* The same, with the attacher's own eventfd given (own_efd, taken on
 * success) instead of created: when the creator made both, a channel
 * travels in one message (segment + both eventfds) and no reply is
 * needed. */
int ubt_chan_attach_efds(struct ubt_chan *c, int seg_fd, int peer_efd,
			 int own_efd);
/* Creator: install the attacher's eventfd (takes ownership, unless the
 * channel's doorbells are shared). */
void ubt_chan_set_peer_efd(struct ubt_chan *c, int efd);
/*
 * Process doorbells: every channel of a process rings, and sleeps on, one
 * eventfd of that process (own_efd), named in the channel header by a
 * 64-bit id (db_id) so that the peer, which gets its copy of that eventfd
 * once per process pair, can find it.  The channel never closes these
 * eventfds.  The attacher starts with no peer doorbell: install it with
 * ubt_chan_set_peer_efd, once ubt_chan_peer_db told which it is, before
 * the channel carries anything.
 */
int ubt_chan_create_stream_db(struct ubt_chan *c, uint64_t ring_size,
			      int own_efd, uint64_t db_id);
int ubt_chan_attach_db(struct ubt_chan *c, int seg_fd, int own_efd,
		       uint64_t db_id);
/* This side's doorbell id, as the header names it. */
/* The same in place, in memory the caller maps (a board slot: at->base,
 * at->size, at->id; nothing unmapped at close). */
int ubt_chan_create_at(struct ubt_chan *c, const struct ubt_seg *at,
		       uint64_t ring_size, int own_efd, uint64_t db_id);
int ubt_chan_attach_at(struct ubt_chan *c, const struct ubt_seg *at,
		       int own_efd, uint64_t db_id);
uint64_t ubt_chan_own_db(const struct ubt_chan *c);
/* The peer side's doorbell id (0: none published). */
uint64_t ubt_chan_peer_db(const struct ubt_chan *c);
/* Creator: make the attacher's eventfd here and install it; returns it
 * (still owned by the channel: pass a copy), or -errno. */
int ubt_chan_make_peer_efd(struct ubt_chan *c);
/* Renumber side's eventfd to newfd (a dup of it, e.g. placed high): the
 * channel and its rings use newfd from now on; the old fd is the
 * caller's to close. */
void ubt_chan_move_efd(struct ubt_chan *c, int side, int newfd);
/*
 * After an exec that kept the channel: the new image of the same process
 * maps seg_fd again (taken on success) as side, with own_efd and peer_efd
 * (process doorbells, never closed by the channel).  The segment must be
 * a sealed channel of this layout with a sane ring table; the header
 * (state, holders, pids, doorbell ids) is left as it is: the process kept
 * its hold.  -errno on failure (the caller keeps seg_fd).
 */
int ubt_chan_adopt(struct ubt_chan *c, int seg_fd, int side, int own_efd,
		   int peer_efd);
/* Ring-end locks left held by this pid (a thread of the old image that
 * exec ended mid-operation, before it published anything) are let go. */
/* The same for a channel in place (a board slot, see ubt_chan_create_at). */
int ubt_chan_adopt_at(struct ubt_chan *c, const struct ubt_seg *at, int side,
		      int own_efd, int peer_efd);
void ubt_chan_reclaim_locks(struct ubt_chan *c);
void ubt_ring_reclaim_locks(struct ubt_ring *r);
/* The notification pages of side 0 and side 1 (either may be NULL; not
 * owned): from now on every ring change posts the token the other side
 * named (ubt_chan_set_note_tok) to that side's page. */
void ubt_chan_set_notes(struct ubt_chan *c, struct ubt_note *n0,
			struct ubt_note *n1);
/* This side names its endpoint token (0: post nothing) for its peer. */
void ubt_chan_set_note_tok(struct ubt_chan *c, uint32_t tok);
/* CAS the channel state from UNDECIDED; returns the state that holds. */
uint32_t ubt_chan_decide(struct ubt_chan *c, uint32_t want);
/* The same on a channel segment fd not attached to (ubsd withdrawing an
 * offer nobody can take): the state that holds, or -errno. */
int ubt_chan_decide_fd(int seg_fd, uint32_t want);
/* Shut down this side's ends: EOF to the peer's reader, EPIPE to the
 * peer's writer.  ubt_chan_close only releases this process's handles. */
void ubt_chan_shutdown(struct ubt_chan *c);
void ubt_chan_close(struct ubt_chan *c);

/* This process takes / drops a hold on its side of the channel (a forked
 * child holding the same socket takes one).  Create and attach count as
 * one hold.  ubt_chan_release returns the holds that remain. */
void ubt_chan_hold(struct ubt_chan *c);
uint32_t ubt_chan_release(struct ubt_chan *c);
/*
 * Demotion (UB back to TCP, nothing lost): this side stops producing and
 * consuming its rings, sets its demote flag and rings every doorbell the
 * peer may sleep on.  The peer, seeing it, drains what this side wrote
 * into its rings, then reads the kernel socket; and sends back over the
 * kernel socket what it had written that this side never consumed (read
 * its own tx ring as a consumer), then writes to the kernel socket.
 */
void ubt_chan_demote(struct ubt_chan *c);
/* The same for either side: a side may demote its peer (which saw
 * evidence that the peer no longer uses its library, e.g. bytes on the
 * kernel socket). */
void ubt_chan_demote_side(struct ubt_chan *c, int side);
/* Wake this side's own sleepers (threads of this process waiting on the
 * channel), e.g. to make them look again at what changed. */
void ubt_chan_wake_self(struct ubt_chan *c);
/* Ring the peer's sleepers on every ring of the channel (a doorbell that
 * was not known when they went to sleep). */
void ubt_chan_wake_peer(struct ubt_chan *c);
/* The demote flag of side (0 creator, 1 attacher), a ubt_wait.stop word. */
const _Atomic uint32_t *ubt_chan_demote_word(const struct ubt_chan *c,
					     int side);
/* The channel's decided state, as both sides see it. */
uint32_t ubt_chan_state(const struct ubt_chan *c);

/* The n-th ring this side produces into / consumes from, or NULL. */
struct ubt_ring *ubt_chan_tx(struct ubt_chan *c, int n);
struct ubt_ring *ubt_chan_rx(struct ubt_chan *c, int n);


/* ------------------------------------------------------------------ board */

/*
 * A board (board.c): where two processes of one uid, in one network
 * namespace, meet for a new TCP connection without asking ubsd, and a pool
 * of channel slots that the connection's channel lives in (no segment made
 * or mapped per connection).  ubsd creates one board per uid and gives it
 * to that uid's processes only; everything in it is written by every one
 * of them, so all of it is read as hostile: indices bounds-checked, keys
 * compared in full, a lock whose owner died taken over.
 *
 * A connection is named by its key: the network namespace (cookie) and
 * the 4-tuple as the server sees it.  The client, which knows it first:
 *   1. ubt_board_intent() for (netns, destination) before connect(): "a
 *      client of this board may post a connection to this destination";
 *   2. after connect(), ubt_board_chan_create() (a slot, one reference)
 *      and ubt_board_post(key, slot); then ubt_board_intent_end();
 *   3. it may write at once: the channel is UNDECIDED until the server
 *      decides it.
 * The server, on accept from a listener of this board: ubt_board_take()
 * moves the posted slot to it (a second reference), attaches, and decides
 * the channel (UB; or TCP, after which the client sends what it wrote
 * over the kernel socket).  Nothing posted and no intent pending for its
 * (netns, local address): no client of this board made this connection.
 * An intent pending: wait for it to end; past the wait, take with a
 * tombstone, which a late post finds (-ECONNREFUSED: that client goes TCP).
 * Each end drops its reference with ubt_board_slot_put; the last frees
 * the slot.  A client that closes before the server took its post takes
 * it back with ubt_board_unpost.
 */
struct ubt_board_key {
	uint64_t netns;                 /* SO_NETNS_COOKIE */
	uint16_t family;                /* AF_INET, AF_INET6 (v4-mapped
					 * addresses normalised to AF_INET) */
	uint16_t sport;                 /* server (local) port, host order */
	uint16_t cport;                 /* client port */
	uint16_t pad;                   /* zero */
	uint8_t saddr[16];              /* network order; v4: [0..3], rest 0 */
	uint8_t caddr[16];
};

struct ubt_board_hdr;

/* A process's handle on a board; the geometry is a private, checked copy. */
struct ubt_board {
	struct ubt_seg seg;
	struct ubt_board_hdr *hdr;
	uint64_t id;                    /* random, names the board in the
					 * listener table of the policy page */
	uint64_t ring_size;             /* of every slot's two rings */
	uint64_t slot_size;
	uint32_t nslots, nbuckets, nintents;
	uint8_t *buckets, *intents, *meta, *slots;
};

/* ubsd: create a board of nslots slots of two ring_size rings (sealed
 * memfd, mapped).  -EINVAL for a bad geometry. */
int ubt_board_create(struct ubt_board *b, uint32_t nslots,
		     uint64_t ring_size);
/* Map a board received as fd (taken on success only); refuses one of
 * another kind, layout or geometry. */
int ubt_board_map(struct ubt_board *b, int fd);
void ubt_board_unmap(struct ubt_board *b);

/* Intents.  begin returns a handle (>= 0) for end, or -ENOSPC (too many
 * in flight towards that destination: use another way). */
int ubt_board_intent(struct ubt_board *b, uint64_t netns, uint16_t family,
		     const uint8_t addr[16], uint16_t port);
void ubt_board_intent_end(struct ubt_board *b, int handle);
/* Is an intent in flight towards (netns, family, addr, port)?  1 or 0;
 * an intent whose process has died is cleared. */
int ubt_board_intent_pending(struct ubt_board *b, uint64_t netns,
			     uint16_t family, const uint8_t addr[16],
			     uint16_t port);

/* Slots.  create: take a free slot and lay out a stream channel in it
 * (this side 0, with doorbell own_efd named db_id, not owned), one
 * reference: the slot index (>= 0), or -ENOSPC.  attach: side 1 of the
 * channel in slot (checked as a received segment would be).  put: drop
 * one reference; the last frees the slot (its pages given back if the
 * connection moved much). */
int ubt_board_chan_create(struct ubt_board *b, struct ubt_chan *c,
			  int own_efd, uint64_t db_id);
int ubt_board_chan_attach(struct ubt_board *b, struct ubt_chan *c,
			  uint32_t slot, int own_efd, uint64_t db_id);
void ubt_board_slot_put(struct ubt_board *b, uint32_t slot);
/* ubsd, when process pid is gone: drop the references of the slots whose
 * side pid held alone (the channel header's pid and holders), as its last
 * close would have.  Returns how many. */
int ubt_board_reclaim(struct ubt_board *b, uint32_t pid);
/* After an exec that kept a connection whose channel is in slot: this
 * process's side again (ubt_chan_adopt_at), no reference taken. */
int ubt_board_chan_adopt(struct ubt_board *b, struct ubt_chan *c,
			 uint32_t slot, int side, int own_efd, int peer_efd);

/* Entries.  post: the client's slot under key: 0; -ECONNREFUSED when a
 * server left a tombstone there (taken away: go TCP); -ENOSPC when the
 * key's bucket is full; -EEXIST when a live post has that key.  take: the
 * slot posted under key (the entry removed, one reference added for the
 * caller), or -ENOENT, leaving a tombstone when tomb.  unpost: remove the
 * entry of slot under key if still there: 1 removed, 0 taken already. */
int ubt_board_post(struct ubt_board *b, const struct ubt_board_key *k,
		   uint32_t slot);
int ubt_board_take(struct ubt_board *b, const struct ubt_board_key *k,
		   int tomb);
int ubt_board_unpost(struct ubt_board *b, const struct ubt_board_key *k,
		     uint32_t slot);
/* The server's take: now, or once the intent in flight towards k's
 * server address ends (its client is between connect() and its post);
 * past wait_ns, with a tombstone.  The slot, or -ENOENT when no post of
 * this board is coming. */
int ubt_board_take_wait(struct ubt_board *b, const struct ubt_board_key *k,
			uint64_t wait_ns);

/* A channel with one stream ring each way (a socket's byte-stream pair). */
int ubt_chan_create_stream(struct ubt_chan *c, uint64_t ring_size);

/* ------------------------------------------------------------ descriptors */

/* Work descriptors carried in MSG rings for one-sided and two-sided
 * operations (the verbs shim's jettys).  Memory is named by segment id
 * and offset, never by pointer. */
enum ubt_op {
	UBT_OP_SEND = 1,
	UBT_OP_WRITE = 2,
	UBT_OP_READ = 3,
	UBT_OP_CAS = 4,
	UBT_OP_FAA = 5,
};

struct ubt_wqe {
	uint64_t wr_id;
	uint32_t op;
	uint32_t len;
	uint64_t lseg, loff;            /* local segment id, offset */
	uint64_t rseg, roff;            /* remote segment id, offset */
	uint64_t compare, swap;         /* atomics */
	uint32_t imm;
	uint32_t flags;
};

struct ubt_cqe {
	uint64_t wr_id;
	uint32_t op;
	uint32_t status;                /* 0 or a positive errno */
	uint32_t byte_len;
	uint32_t imm;
};

#endif /* UBT_H */

/* SPDX-License-Identifier: MIT */
/*
 * sock.h - private header of the socket shim: the per-socket state the
 * library keeps beside a kernel TCP socket, and the fd table that finds it.
 *
 * A program's fd is always the real kernel socket (invariant 3).  Only
 * sockets the library may accelerate have an entry: a registered UB
 * listener, a client whose connect() went towards a possible UB listener
 * (CONNECTING until settled), an accepted connection whose channel is
 * offered (UNDECIDED until the client attaches or TCP wins), a UB
 * connection, and one draining its ring after the peer's demotion.
 * Everything else (and a connection decided TCP, whose entry is dropped)
 * goes straight to libc after one table load.
 *
 * Locking: the fd table's rwlock guards the slots and the sock refcounts;
 * a sock's mutex guards its state changes; the rings have their own
 * locks.  Order: control lock (ctl.c) -> table lock -> sock mutex.  No
 * ubt_* or ctl call is made with the table lock held for writing.
 */
#ifndef UBS_SOCK_H
#define UBS_SOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "preload.h"
#include "ubt.h"

struct ubs_svc_policy;

enum sk_state {
	SK_LISTEN = 1,          /* listening socket registered with ubsd */
	SK_CONNECTING,          /* client towards a maybe-UB listener */
	SK_UNDECIDED,           /* accepted, channel offered */
	SK_UB,                  /* both ends on the channel */
	SK_DRAIN,               /* demoted by the peer: reads empty the
				 * ring, then the kernel socket */
};

/* A kernel epoll registration of a CONNECTING sock, as epoll_ctl made it
 * (poll.c): what ep_sock_adopt moves to the emulated sets. */
#define SOCK_KREGS 4
struct sock_kreg {
	int epfd, fd;           /* the kernel's key: the set, the fd number */
	uint32_t events;
	epoll_data_t data;
};

struct sock {
	int refs;               /* fd slots + calls in flight (table lock) */
	int nslots;             /* fd slots naming it (table lock) */
	_Atomic int state;      /* enum sk_state */
	pthread_mutex_t mu;     /* state changes */
	int fd;                 /* an fd of this socket, for kernel calls
				 * made on its behalf (watch, FIN probe);
				 * after a deferred close, the library's */
	bool closing;           /* closed by the program while another
				 * thread was in a call on it */
	_Atomic uint32_t moved; /* set with closing: sleepers look again
				 * (the kernel fd they watch changed) */
	struct ubt_chan ch;
	bool have_chan;
	uint64_t peer_db;       /* the peer's doorbell, held (0: none yet) */
	struct ubt_ring *rx, *tx;
	bool nonblock;          /* O_NONBLOCK of the open file (cached) */
	bool shut_rd, shut_wr;  /* local shutdown */
	_Atomic bool peer_fin;  /* the kernel socket saw FIN or RST */
	_Atomic bool kin;       /* bytes seen on the kernel socket (what
				 * settles an UNDECIDED one as TCP) */
	_Atomic int watched;    /* inner epoll sets that watch its kernel
				 * socket: they probe it on its edges */
	int so_error;           /* pending socket error (the kernel's
				 * sk_err): ECONNRESET, EPIPE; taken by the
				 * next read, write or SO_ERROR */
	bool closed;            /* reset: the kernel's TCP_CLOSE */
	int rcvtimeo_ms, sndtimeo_ms;   /* -1: none */
	int64_t spin_ns;        /* wait budget from the service policy */
	uint64_t undecided_until_ns;    /* first-send wait deadline */
	uint32_t req_token;     /* SK_CONNECTING: REQUEST sent at connect
				 * time, answer not read yet (0: none) */
	bool fork_seen;         /* atfork walk: hold taken */
	bool shared;            /* SK_LISTEN: other processes hold it too */
	uint64_t trim_head[2];  /* rx, tx heads when last trimmed */
	uint64_t seen_head[2];  /* ... when last seen moving */
	uint64_t seen_ms[2];    /* ... and when (coarse clock) */
	bool resent;            /* after the peer's demotion: our unread
				 * ring bytes went over the kernel socket */
	struct ubs_conn_slot *cslot;    /* its entry in the connection table
					 * (UB; NULL if none) */
	struct ubt_note *own_note;      /* the notification page of the
					 * process that made its channel end */
	uint32_t note_tok;              /* its token in that page (poll.c;
					 * 0: none) */
	struct ep_reg *ep_regs;         /* its epoll registrations, every
					 * set (poll.c, note lock) */
	pthread_mutex_t kr_mu;          /* kr, nkr, kr_lost (a leaf: held
					 * over one epoll_ctl syscall) */
	struct sock_kreg kr[SOCK_KREGS];        /* SK_CONNECTING: its
						 * kernel registrations */
	int nkr;
	bool kr_lost;                   /* one was not recorded: adoption
					 * asks the kernel (fdinfo) */
	/* The board (board.c): a channel in a slot of the uid's board. */
	uint64_t netns;                 /* SK_LISTEN: SO_NETNS_COOKIE */
	bool accept_told;               /* SK_LISTEN: ubsd knows this process
					 * accepts from it (ACCEPTING) */
	struct ubt_board *board;        /* NULL: a segment of its own */
	int board_slot;
	int board_intent;               /* client: intent in flight, or -1 */
	struct ubt_board_key board_key;
	bool board_posted;              /* the channel is in board_slot */
	bool board_refused;             /* client: no post (TCP) */
	bool board_wait;                /* client: the server's doorbell is
					 * not known yet */
	bool board_released;            /* this process let go of its side */
	uint32_t board_holds;           /* ... and the holds left then */
	uint64_t board_due_ns;          /* client: TCP if not taken by then */
	bool board_counted;             /* client: counted UB or TCP */
	bool pending;                   /* on board.c's list of posts that
					 * no server took yet */
	struct sock *pend_next;
};

/* The fd table. */
struct sock *sock_get(int fd);          /* +1 ref, or NULL */
void sock_put(struct sock *s);          /* -1 ref, frees at 0 */
int sock_install(int fd, struct sock *s);       /* +1 ref for the slot */
struct sock *sock_detach(int fd);       /* clear the slot; the slot's ref
					 * is handed to the caller */
bool sock_slot_used(int fd);            /* no lock, no ref: a hint */
int sock_slots(struct sock *s);         /* fd slots naming s now */
struct sock *sock_new(int fd);          /* refs 0, state 0 */
/* Call fn(fd, s) for every slot (table read-locked: fn must not take it
 * for writing). */
void sock_for_each(void (*fn)(int fd, struct sock *s, void *arg), void *arg);

/* The fd for kernel calls of a call made on fd (fd may have been closed
 * by another thread meanwhile). */
static inline int sock_kfd(const struct sock *s, int fd)
{
	return s->closing ? s->fd : fd;
}

/* Peer processes' doorbells (doorbell.c): get a held copy of the one
 * named id (asking ubsd the first time), or -errno; put lets it go. */
int sock_peer_db_get(uint64_t id, struct ubt_note **note);
void sock_peer_db_put(uint64_t id);
void sock_peer_db_atfork_child(void);
struct ubt_note *sock_peer_db_note(uint64_t id);
int sock_peer_db_adopt(uint64_t id, int fd);
/* Install the peer's doorbell in s's channel (once): 0 or -errno. */
int sock_peer_db(struct sock *s);

/* Exec (exec.c): keep the inherited UB connections across an exec into an
 * image with the library; the new image takes them back at init. */
void sock_bind_chan(struct sock *s);
void sock_count_ub(struct sock *s, int fd, int side);
void sock_count_tcp(int fd, int why, int side);
char **sock_exec_prepare(const char *image, char *const envp[]);
char **sock_exec_prepare_file(const char *file, char *const envp[]);
void sock_exec_undo(void);
void sock_demote_inherited(void);
void sock_exec_adopt(void);

/* Set-up through the board (board.c). */
uint64_t sock_netns(int fd);
bool sock_board_connect_begin(struct sock *s, int fd,
			      const struct sockaddr *dst, socklen_t len,
			      const struct ubs_svc_policy *pol);
void sock_board_connect_post(struct sock *s, int fd);
void sock_board_connect_abort(struct sock *s);
int sock_board_settle(struct sock *s, int fd);   /* s->mu held; unlocks */
void sock_board_check(struct sock *s);
/* 1: accepted through the board (s installed), 0: not a board client,
 * -errno: a board client, now plain TCP. */
int sock_board_accept(struct sock *ls, int fd, int flags, bool on,
		      const struct ubs_svc_policy *pol);
bool sock_board_close(struct sock *s, int fd);
/* Count a client's board connection now if it is not yet (demotion). */
void sock_board_counted(struct sock *s);
/* A client's post nobody took: ms left before it goes TCP (-1: not such a
 * post; 0: due), and the expiry itself (true if it happened now). */
int sock_board_left_ms(const struct sock *s);
bool sock_board_expire(struct sock *s);
/* Expire every due post of this process; the ms to the next deadline, or
 * -1 when none is pending. */
int sock_board_sweep(void);
void sock_board_free(struct sock *s);
/* Send what this side wrote into its tx ring over the kernel socket. */
void sock_resend_tx(struct sock *s, int fd);

/* Transitions. */
void sock_to_tcp(struct sock *s, int fd);       /* drop the channel, detach
						 * every slot of s, re-home
						 * epoll registrations */
int sock_settle_connect(struct sock *s, int fd, bool may_wait);
int sock_settle_undecided(struct sock *s, int fd, bool for_write);
int sock_probe_kernel(struct sock *s, int fd);
/*
 * Idle rings give their pages back: each time a waiter goes to sleep it
 * trims the rings of its connections that are empty and have not moved
 * for UBS_TRIM_IDLE_MS (both directions: a peer sleeping outside the
 * library does not keep its pages).  Returns true while some ring moved
 * since its last trim: the sleeper then wakes after UBS_TRIM_IDLE_MS at
 * the latest to look again.
 */
#define UBS_TRIM_IDLE_MS 1000
bool sock_trim_idle(struct sock *s);
/* UNDECIDED -> UB once the client attached; true if s is UB now. */
bool sock_promote(struct sock *s);
void sock_tab_atfork_child(void);
void sock_last_close(struct sock *s);
bool sock_demote_pending(const struct sock *s);
int sock_demote_handle(struct sock *s, int fd);
int sock_demote(struct sock *s, int fd);

/* Readiness of a sock for poll/epoll (EPOLL* bits of want, plus
 * EPOLLHUP/EPOLLERR).  No syscall for a decided connection: the callers
 * learn about FIN from the kernel socket (sock_probe_kernel). */
uint32_t sock_ready(struct sock *s, uint32_t want);
/* Is the peer gone (its last close, or its death seen as FIN)? */
bool sock_peer_gone(struct sock *s);
/* A gone peer that never read what we wrote reset the connection, as the
 * kernel's TCP would have (a close with unread data sends RST). */
void sock_update_reset(struct sock *s);
/* Take the pending error (0 if none). */
int sock_take_error(struct sock *s);

/* epoll emulation (poll.c). */
struct ep_reg;
/* Something this process did changed s's readiness (shutdown): epoll
 * waiters look at it again. */
void ep_sock_poke(struct sock *s);
void ep_sock_gone(struct sock *s);              /* drop its registrations */
void ep_sock_rehome(struct sock *s, int fd);    /* emulated -> kernel */
void ep_sock_adopt(struct sock *s, int fd);     /* kernel -> emulated */
void ep_fd_closing(int fd);                     /* fd is about to close */
void ep_forget_range(unsigned lo, unsigned hi); /* close_range is */
void ep_atfork_child(void);

void sock_go_tcp(const char *why);
/* The program waits for connections on listener s (socket.c). */
void sock_accepting(struct sock *s, int fd);
/* Set in a forked child holding listeners: register them before the
 * first wait for connections (accept, poll, epoll, select). */
extern bool ubs_listen_pending;
void sock_relisten_now(void);
void sock_init(void);
void sock_atfork_child(void);

/*
 * Signals (signal.c).  The program's handlers run through a trampoline
 * that counts, per thread, the handlers that ran (ubs_sig_seq) and keeps
 * whether the last one had SA_RESTART.  A wait takes a mark before it
 * sleeps; a handler since the mark is the kernel's EINTR, or a restart
 * (ubs_sig_restarts).  ubs_sig_sleep: the thread sleeps in a wait that
 * holds no lock, where a handler's own calls may enter the shim.
 */
extern UBS_TLS volatile uint32_t ubs_sig_seq;
extern UBS_TLS volatile bool ubs_sig_restart;
extern UBS_TLS volatile bool ubs_sig_sleep;
/* Set to 1 by every handler that runs: a stop word for a wait that this
 * thread zeroes before it spins (a signal must end the spin at once). */
extern UBS_TLS _Atomic uint32_t ubs_sig_hit;

static inline uint32_t ubs_sig_mark(void)
{
	return ubs_sig_seq;
}

/* Has a handler run on this thread since mark? */
static inline bool ubs_sig_since(uint32_t mark)
{
	return ubs_sig_seq != mark;
}

/* A blocking socket call that a handler interrupted: does the kernel
 * restart it?  (SA_RESTART, and no SO_RCVTIMEO/SO_SNDTIMEO.) */
static inline bool ubs_sig_restarts(uint32_t mark, int tmo_ms)
{
	return ubs_sig_since(mark) && ubs_sig_restart && tmo_ms < 0;
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * ctl.h - the preload's client of ubsd (see ctl.c).  Every call returns
 * 0 or -errno and never sets errno for the caller; a failure means "stay
 * on TCP".
 */
#ifndef UBS_PRELOAD_CTL_H
#define UBS_PRELOAD_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ubs_svc_policy;

/* This process's service policy from the shared page (no syscall once
 * the daemon has been reached); -ENOTCONN when no daemon ever was. */
int ubs_ctl_policy(struct ubs_svc_policy *p);
/* Must a connection to/at addr:port stay on TCP (exclude rules)?  1 yes,
 * 0 no; 1 when no policy page is mapped. */
int ubs_ctl_excluded(int family, const void *addr, uint16_t port);
/* Might a UB listener accept a connection to addr:port?  1 or 0. */
int ubs_ctl_listener_maybe(int family, const void *addr, uint16_t port);

/* May a connection to addr:port from namespace netns be set up through
 * board `board` (every listener that could take it is on that board)?
 * 1 or 0. */
int ubs_ctl_listener_board(int family, const void *addr, uint16_t port,
			   uint64_t netns, uint64_t board);
/* Register (add) or drop a listening socket; waits for the answer. */
int ubs_ctl_listen(int fd, bool add);
/* This process accepts from listening socket fd (registered): its board
 * is named for it from now on.  Not waited for. */
int ubs_ctl_accepting(int fd);
/* The same from inside the reconnect hook (lock already held). */
int ubs_ctl_listen_locked(int fd);
/* Offer the channel (its segment) of an accepted socket; does not wait. */
int ubs_ctl_publish(int sock_fd, int seg_fd);
/* Ask for the channel of a connected socket, waiting up to wait_ms for
 * the server's publication.  0 with fds[0] = its segment; -ENOENT when
 * the daemon said "use TCP"; else an error.  why gets a short reason on
 * failure. */
int ubs_ctl_request(int sock_fd, int wait_ms, int fds[1], char *why,
		    size_t whylen);
struct ubt_note;
/* This process's doorbell (made on first call): its fd, or -errno; *id
 * names it in channel headers, *note is its notification page.  A forked
 * child gets its own. */
int ubs_ctl_doorbell(uint64_t *id, struct ubt_note **note);
/* The same, and made known to ubsd (sent once per session, not waited
 * for), so that a peer that met us without the daemon can ask for it. */
int ubs_ctl_doorbell_known(uint64_t *id, struct ubt_note **note);
/* Exec keeping UB connections: the process doorbell if made (its fd, or
 * -1; never makes one), and, in the new image, the inherited one taken
 * back as the process doorbell (given to ubsd again at its next need). */
int ubs_ctl_doorbell_peek(uint64_t *id);
void ubs_ctl_doorbell_adopt(int fd, uint64_t id, struct ubt_note *note);
/* This process's notification page (made with the doorbell), or NULL.
 * A forked child gets its own; the parent's stays mapped. */
struct ubt_note *ubs_ctl_note(void);
/* A copy of the doorbell named id of a peer process, from ubsd (library
 * fds): the eventfd, or -errno; *note_fd gets its notification page. */
int ubs_ctl_peer_doorbell(uint64_t id, int *note_fd);
/* The same in two steps, so that the daemon's answer is on its way while
 * the program goes on: send returns a token (0 if the request could not
 * be sent), finish waits for the answer; cancel forgets it. */
uint32_t ubs_ctl_request_send(int sock_fd, int wait_ms);
int ubs_ctl_request_finish(uint32_t token, int wait_ms, int fds[1],
			   char *why, size_t whylen);
void ubs_ctl_request_cancel(uint32_t token);

struct ubt_board;
/*
 * This process's board (ubsd's, one per uid: ubtransport board.c), asked
 * for at the first call and again after each new session (a restarted
 * daemon has new boards); the same answer otherwise, for an atomic load.
 * A board once returned stays mapped and allocated for the process's life
 * (connections point into it); a forked child keeps its parent's.  0, or
 * -ENOTCONN (no daemon), -ENOENT (no board for this uid), -errno.
 */
int ubs_ctl_board(struct ubt_board **out);
/* Exec: map the board an old image kept (fd, taken in any case); the
 * board ubs_ctl_board returns when the daemon names the same one. */
struct ubt_board *ubs_ctl_board_adopt(int fd);
/* The id of the board ubs_ctl_board last returned, 0 before any. */
uint64_t ubs_ctl_board_id(void);

/* One request and its single reply, for the verbs registry: type with
 * body and fds; the reply's type, body (up to cap bytes) and fds (up to
 * *nrfds, set to how many came).  0 or -errno (-ENOTCONN: no daemon). */
int ubs_ctl_call(uint16_t type, const void *body, uint32_t len,
		 const int *fds, int nfds, uint16_t *rtype, void *rbody,
		 size_t cap, int *rfds, int *nrfds);

/* Called (with the control lock held) after each new session. */
void ubs_ctl_on_reconnect(void (*fn)(void));
void ubs_ctl_atfork_child(void);

/* The library's own fds (fds.c).  ubs_fd_high moves one above the range
 * programs use (close-on-exec) and marks it ours: returns the new fd (the
 * old one closed) or fd itself if no room.  A program's close of a marked
 * fd is refused; the library closes its own with ubs_fd_release (or, from
 * code that closes it with close(), under the recursion guard, which
 * forgets the mark).  ubs_fd_next_owned: the first marked fd in
 * [from, to], or -1. */
int ubs_fd_high(int fd);
bool ubs_fd_owned(int fd);
void ubs_fd_forget(int fd);
int ubs_fd_release(int fd);
int ubs_fd_next_owned(int from, int to);
/* An fd the library owned before an exec (already high): marked ours
 * again and close-on-exec. */
void ubs_fd_adopt(int fd);

#endif

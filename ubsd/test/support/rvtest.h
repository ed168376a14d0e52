/* SPDX-License-Identifier: MIT */
/*
 * rvtest.h - the control protocol spoken by hand, for the tests that play
 * the preload's part against a real ubsd (rendezvous_e2e.c, netns_e2e.c):
 * framed messages with fds, a session, and bounded reads and writes on
 * a channel's stream rings.  Linked into ubsd's tests only (it needs
 * libubt.a), unlike dtest.c.  Every helper REQUIREs success, so a forked
 * child may use them too.
 */
#ifndef UBSD_TEST_RVTEST_H
#define UBSD_TEST_RVTEST_H

#include <stddef.h>
#include <stdint.h>

#include "ctl_proto.h"
#include "ubt.h"

/* Send one message of type (sequence = type) with nfds fds. */
void dt_send(int fd, uint16_t type, const void *body, uint32_t len,
	     const int *fds, int nfds);
/* Receive one message: header, body (up to CTL_MAX_BODY) and fds (up to
 * *nfds, updated; fds and nfds may be NULL).  0, or -1 on EOF/timeout. */
int dt_recv(int fd, struct ctl_hdr *h, void *body, int *fds, int *nfds);
/* Expect a reply of type want (body into body, fds into fds, or closed
 * when fds is NULL); returns the number of fds.  An ERROR reply's
 * message goes to stderr. */
int dt_expect(int fd, uint16_t want, void *body, int *fds);
/* A control connection with a session for service name. */
int dt_hello(const char *name);
/* Bounded (WAIT_MS) read of exactly len bytes from ch's stream ring;
 * write of len bytes into it. */
void dt_ring_read(struct ubt_chan *ch, void *buf, size_t len);
void dt_ring_write(struct ubt_chan *ch, const void *buf, size_t len);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * verbs_reg.h - ubsd's registry of verbs endpoints (shim-verbs): device
 * context segments, host-wide QP numbers, and the hand-over of a peer's
 * segment to a session that connects one of its own QPs to that peer.
 */
#ifndef UBSD_VERBS_REG_H
#define UBSD_VERBS_REG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ctl_proto.h"

/* One reply message; fd >= 0 rides with it (still owned by the registry). */
struct vreg_msg {
	uint16_t type;
	uint32_t len;
	int fd;
	unsigned char body[64];
};

/*
 * Handle one verbs request of session (0: none) of process pid, uid.  fds are
 * the message's fds (ctl_fd_count(type)), taken over.  Sets *out to a
 * malloc'd array of *nout replies (free it), in order.  Returns 0, or
 * -ENOMEM when no reply could be made (the connection is then dropped).
 */
int vreg_handle(uint64_t session, pid_t pid, uid_t uid, uint16_t type, const void *body,
		int *fds, struct vreg_msg **out, size_t *nout);
/* The session ended: its contexts and QPs are dropped. */
void vreg_session_gone(uint64_t session);

#endif

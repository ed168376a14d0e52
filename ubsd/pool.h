/* SPDX-License-Identifier: MIT */
/*
 * pool.h - ubsd's memory pool: a byte capacity lent to sessions as memfd
 * segments (2 MiB hugepages when configured and free, else normal pages),
 * under a per-service quota.  A lease lasts until the session returns the
 * segment or ends (its connection closes, including by kill -9): the
 * segment's pages are then punched out (the memory goes back to the
 * kernel, and the next borrower reads zeros) and the memfd is kept for
 * reuse.  Pure bookkeeping: no sockets, the daemon sends the replies.
 */
#ifndef UBSD_POOL_H
#define UBSD_POOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ctl_proto.h"

#define POOL_GRANULE (2ull << 20)       /* lease sizes round up to this */

/* Set (or change, at reload) the capacity and page kind.  Leases already
 * out stay; a smaller capacity only refuses new ones. */
void pool_configure(uint64_t size, bool hugepages);

/*
 * Lend at least bytes to session owner (pid, service) whose service quota
 * is quota (0 = none).  Returns 0 with *out filled and *fd the segment's
 * memfd (still owned by the pool: send it, do not close it), or -ENOSPC
 * (pool exhausted), -EDQUOT (quota), -EINVAL (0 or absurd size),
 * -ENOMEM/-errno (memfd), with a reason in msg.
 */
int pool_lease(uint64_t owner, pid_t pid, const char *service,
	       uint64_t quota, uint64_t bytes, struct ctl_mem_seg *out,
	       int *fd, char *msg, size_t msglen);

/*
 * Session owner still maps bytes lent by a daemon before this one (ubsd
 * restarted while it lived): they count as its lease from now on, in the
 * pool and its service's use, even past the capacity or quota (the memory
 * is in use; new leases are refused until there is room).  Returns 0 or
 * -EINVAL (0 or absurd size), -ENOMEM.
 */
int pool_claim(uint64_t owner, pid_t pid, const char *service,
	       uint64_t bytes, char *msg, size_t msglen);

/* owner gives segment seg_id back.  Returns 0 or -ENOENT. */
int pool_return(uint64_t owner, uint64_t seg_id);

/* Session owner ended: every segment it holds comes back, at once if its
 * process is gone, else when it has exited (pool_sweep). */
void pool_session_end(uint64_t owner);

/* Give back the segments of ended sessions whose process has exited
 * (done by pool_lease and pool_totals too). */
void pool_sweep(void);

/* Pool-wide figures. */
void pool_totals(struct ctl_mem_pool *out);

/* Bytes and sessions of service name holding leases. */
uint64_t pool_service_used(const char *name, uint32_t *holders);

/*
 * Iterate holders: fills *out for the i-th session holding leases
 * (i from 0); returns false past the last one.
 */
bool pool_holder(uint32_t i, struct ctl_mem_holder *out);

/* Close every segment without punching it (daemon exit: processes that
 * live on keep their memory).  Call before ending the sessions. */
void pool_fini(void);

#endif /* UBSD_POOL_H */

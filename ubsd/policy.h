/* SPDX-License-Identifier: MIT */
/*
 * policy.h - the shared policy page: ubsd writes per-service policy into a
 * memfd segment sealed against writes by anyone else (F_SEAL_FUTURE_WRITE:
 * a receiver can map it read-only only); every preloaded process maps it
 * and reads a service's record with no syscall.  A seqlock (seq odd while
 * the writer is inside) guarantees a reader never uses a torn record.
 */
#ifndef UBS_POLICY_H
#define UBS_POLICY_H

#include <stdint.h>
#include <stdatomic.h>

#include "ubt.h"
#include "ctl_proto.h"

#define UBS_POLICY_MAX_SVC 256

/* One service's policy.  name "" is the default record. */
struct ubs_svc_policy {
	char name[CTL_NAME_MAX];
	uint32_t accel;                 /* 1 accelerate, 0 stay on TCP */
	uint32_t spin_us;               /* spin budget before sleeping */
	uint32_t ring_kib;              /* per-direction ring size */
	uint32_t reserved;
	uint64_t mem_quota;             /* bytes of pool memory, 0 = none */
};

/* Follows the segment header page. */
struct ubs_policy_page {
	_Atomic uint64_t seq;           /* even: stable; odd: being written */
	uint32_t nsvc;
	uint32_t reserved;
	struct ubs_svc_policy deflt;
	struct ubs_svc_policy svc[UBS_POLICY_MAX_SVC];
};

/* ubsd: create the page (kind UBT_SEG_POLICY, sealed read-only for
 * receivers) with the built-in defaults. */
int pp_create(struct ubt_seg *s);
/* ubsd: replace the whole table (n <= UBS_POLICY_MAX_SVC, else -E2BIG). */
int pp_publish(struct ubt_seg *s, const struct ubs_svc_policy *deflt,
	       const struct ubs_svc_policy *svc, uint32_t n);
/* The built-in default record. */
void pp_defaults(struct ubs_svc_policy *p);

/* Preload: map a received page read-only (takes fd on success). */
int pp_map(struct ubt_seg *s, int fd);
/* Copy the record of service name (or the default record when the
 * service has none) into *out.  Returns 1 if name had its own record, 0 if
 * the default was used, -EAGAIN if no stable copy could be read (a writer
 * stuck mid-update), -EPROTO if the page is inconsistent. */
int pp_lookup(const struct ubt_seg *s, const char *name,
	      struct ubs_svc_policy *out);
/* The same, trying first the index in *hint (where name was found last
 * time) and updating it: a constant-time lookup for a process's own
 * service. */
int pp_lookup_hint(const struct ubt_seg *s, const char *name,
		   struct ubs_svc_policy *out, uint32_t *hint);
/* Generation of the page (changes on every publish). */
uint64_t pp_generation(const struct ubt_seg *s);

#endif /* UBS_POLICY_H */

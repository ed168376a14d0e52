/* SPDX-License-Identifier: MIT */
/*
 * policy.h - the shared policy page: ubsd writes per-service policy into a
 * memfd segment sealed against writes by anyone else (F_SEAL_FUTURE_WRITE:
 * a receiver can map it read-only only); every preloaded process maps it
 * and reads a service's record, the exclude rules and the table of UB
 * listeners with no syscall.  A seqlock (seq odd while the writer is
 * inside) guarantees a reader never uses a torn record.
 */
#ifndef UBS_POLICY_H
#define UBS_POLICY_H

#include <stdint.h>
#include <stdatomic.h>

#include "ubt.h"
#include "ctl_proto.h"

#define UBS_POLICY_MAX_SVC 256
#define UBS_MEM_SITES_MAX 96       /* mem_sites text, NUL included */
#define UBS_POLICY_MAX_EXCL 64
#define UBS_POLICY_MAX_LST 1024

/* Kinds of exclude rule (connections that must stay on TCP). */
enum ubs_excl_kind {
	UBS_EXCL_NONE = 0,              /* unused slot: never matches */
	UBS_EXCL_ADDR = 1,              /* family + prefix [+ port range] */
	UBS_EXCL_PORT = 2,              /* port range, any address */
	UBS_EXCL_PROGRAM = 3,           /* every connection of a service */
};

/* One exclude rule.  A port range of 0-0 on an address rule means any
 * port. */
struct ubs_excl_rule {
	uint8_t kind;                   /* enum ubs_excl_kind */
	uint8_t family;                 /* AF_INET or AF_INET6 (ADDR) */
	uint8_t prefix;                 /* prefix length in bits (ADDR) */
	uint8_t reserved;
	uint16_t port_lo, port_hi;      /* host order, inclusive */
	uint8_t addr[16];               /* network order; v4 in addr[0..3] */
	char program[CTL_NAME_MAX];     /* service name (PROGRAM) */
};

/* One service's policy.  name "" is the default record. */
struct ubs_svc_policy {
	char name[CTL_NAME_MAX];
	uint32_t accel;                 /* 1 accelerate, 0 stay on TCP */
	uint32_t spin_us;               /* spin budget before sleeping */
	uint32_t ring_kib;              /* per-direction ring size */
	uint32_t mem_pool_min;          /* memhooks: allocations of at least
					 * this many bytes go to the memory
					 * pool; 0 = pool off (mem_pool) */
	uint64_t mem_quota;             /* bytes of pool memory, 0 = none */
	char mem_sites[UBS_MEM_SITES_MAX]; /* memhooks call-site policy:
					 * function and library names, comma
					 * separated; "" = every caller */
};

/* One listening socket registered with ubsd (LISTEN).  ubsd publishes
 * normalised entries: an IPv4-mapped IPv6 address is AF_INET, unused
 * address bytes are zero, v6only is 0 unless family is AF_INET6. */
struct ubs_lst_entry {
	uint16_t family;                /* AF_INET or AF_INET6 */
	uint16_t port;                  /* host order */
	uint32_t v6only;                /* IPV6_V6ONLY of a :: listener */
	uint8_t addr[16];               /* network order; v4 in addr[0..3] */
	uint64_t netns;                 /* SO_NETNS_COOKIE of the listener */
	uint64_t board;                 /* id of the board (ubt_board) of
					 * its holders' uid, 0 = none: a
					 * client of that board may meet it
					 * there without asking ubsd */
};

/* Follows the segment header page. */
struct ubs_policy_page {
	_Atomic uint64_t seq;           /* even: stable; odd: being written */
	uint32_t nsvc;
	uint32_t reserved;
	struct ubs_svc_policy deflt;
	struct ubs_svc_policy svc[UBS_POLICY_MAX_SVC];
	uint32_t nexcl;
	uint32_t reserved2;
	struct ubs_excl_rule excl[UBS_POLICY_MAX_EXCL];
	uint32_t nlst;
	uint32_t reserved3;
	struct ubs_lst_entry lst[UBS_POLICY_MAX_LST];
};

/* ubsd: create the page (kind UBT_SEG_POLICY, sealed read-only for
 * receivers) with the built-in defaults. */
int pp_create(struct ubt_seg *s);
/* ubsd: replace the whole table (n <= UBS_POLICY_MAX_SVC, else -E2BIG). */
int pp_publish(struct ubt_seg *s, const struct ubs_svc_policy *deflt,
	       const struct ubs_svc_policy *svc, uint32_t n);
/* ubsd: replace the whole table and the exclude rules in one update
 * (n <= UBS_POLICY_MAX_SVC and nexcl <= UBS_POLICY_MAX_EXCL, else
 * -E2BIG).  pp_publish leaves the exclude rules as they are. */
int pp_publish_ex(struct ubt_seg *s, const struct ubs_svc_policy *deflt,
		  const struct ubs_svc_policy *svc, uint32_t n,
		  const struct ubs_excl_rule *excl, uint32_t nexcl);
/*
 * ubsd: replace the listener table in one seqlock update (n <=
 * UBS_POLICY_MAX_LST, else -E2BIG; an entry of another family: -EINVAL).
 * Entries are normalised as they are stored (see struct ubs_lst_entry).
 * Services and exclude rules are untouched, and pp_publish /
 * pp_publish_ex leave the listener table as it is.
 */
int pp_publish_listeners(struct ubt_seg *s, const struct ubs_lst_entry *l,
			 uint32_t n);
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
/*
 * Must this connection stay on TCP?  service is the process's service
 * name (NULL: none); family (AF_INET or AF_INET6, any other: no address)
 * with addr (struct in_addr / struct in6_addr, network order) and port
 * (host order) name the other side for connect and the local side for
 * listen/accept.  A v4-mapped IPv6 address also matches IPv4 rules.
 * Returns 1 if a rule matches, 0 if none, -EAGAIN / -EPROTO as pp_lookup.
 */
int pp_excluded(const struct ubt_seg *s, const char *service, int family,
		const void *addr, uint16_t port);
/*
 * Preload, on connect(): might a UB listener accept a connection to
 * addr:port?  family AF_INET (addr: struct in_addr) or AF_INET6 (struct
 * in6_addr; v4-mapped is treated as IPv4), network order; port in host
 * order.  1 if some listener has that port and either the same address or
 * a wildcard that takes it (0.0.0.0 for IPv4; :: for IPv6, and for IPv4
 * too unless v6only), in any network namespace; 0 if none; -EAFNOSUPPORT
 * for another family, -EINVAL without addr; -EAGAIN / -EPROTO as
 * pp_lookup.  No
 * syscall, no allocation; never reads past the table, whatever nlst says.
 */
int pp_listener_maybe(const struct ubt_seg *s, int family, const void *addr,
		      uint16_t port);
/*
 * Preload, on connect(): may a connection to addr:port from namespace
 * netns be set up through board `board` (no ubsd)?  1 when there is at
 * least one listener in netns that could take it (the address rules of
 * pp_listener_maybe) and every such listener carries that board (board
 * != 0); 0 otherwise (none, or one of another board or of none: it
 * would never look at this board).  Errors as pp_listener_maybe.
 */
int pp_listener_board(const struct ubt_seg *s, int family, const void *addr,
		      uint16_t port, uint64_t netns, uint64_t board);
/* Generation of the page (changes on every publish). */
uint64_t pp_generation(const struct ubt_seg *s);

#endif /* UBS_POLICY_H */

/* SPDX-License-Identifier: MIT */
/*
 * ctl_proto.h - the control protocol between ubsd and its clients (the
 * preload, ubsctl).  One Unix stream socket per client; every message is a
 * fixed header followed by len bytes of body.  Bodies are fixed-layout
 * structs (little-endian, host order on one host) or, for names, a
 * NUL-terminated string inside the struct.  A multi-part reply is a series
 * of CTL_R_* messages closed by CTL_R_END.
 *
 * Anything malformed (bad magic, other version, unknown type, a body length
 * that does not match the type, a body over CTL_MAX_BODY, a string without
 * its NUL) makes the receiver close the connection with a logged reason.
 */
#ifndef UBS_CTL_PROTO_H
#define UBS_CTL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define CTL_MAGIC     0x55424331u       /* "UBC1" */
#define CTL_VERSION   2u
#define CTL_MAX_BODY  4096u
#define CTL_NAME_MAX  64u               /* service name, NUL included */
#define CTL_SOCK_NAME "ubsd.sock"       /* under the run directory */
#define CTL_PID_NAME  "ubsd.pid"
#define CTL_STATS_NAME "stats"          /* preloaded processes' stats pages */
#define CTL_DEFAULT_RUN_DIR "/run/ubs"

struct ctl_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;          /* enum ctl_type */
	uint32_t len;           /* body bytes following */
	uint32_t seq;           /* echoed in every reply to a request */
};

/* Type ranges: requests 0x01xx, replies 0x02xx; a type inside a range
 * that ctl_body_len does not know is unknown (-EBADMSG). */
enum ctl_type {
	CTL_REQ_FIRST = 0x0100,
	CTL_REQ_HELLO = 0x0100,         /* struct ctl_hello: start a session */
	CTL_REQ_STATUS = 0x0101,        /* no body: one CTL_R_STATUS + END */
	CTL_REQ_SESSIONS = 0x0102,      /* no body: CTL_R_SESSION... + END */
	CTL_REQ_SERVICES = 0x0103,      /* no body: CTL_R_SERVICE... + END,
					 * the default record first */
	CTL_REQ_SERVICE_SET = 0x0104,   /* struct ctl_service_set: OK|ERROR */
	CTL_REQ_POLICY_FD = 0x0105,     /* no body: CTL_R_POLICY carrying the
					 * policy page's fd (SCM_RIGHTS) */
	/* Rendezvous (socket attach protocol); all need a session (HELLO)
	 * and carry ctl_fd_count(type) fds with their first byte. */
	CTL_REQ_LISTEN = 0x0106,        /* no body; fd: a TCP listening
					 * socket.  OK|ERROR */
	CTL_REQ_UNLISTEN = 0x0107,      /* no body; fd: the same.  OK|ERROR */
	CTL_REQ_PUBLISH = 0x0108,       /* no body; fds: accepted socket,
					 * channel segment.
					 * CTL_R_PUBLISHED|WITHDRAWN|ERROR */
	CTL_REQ_REQUEST = 0x0109,       /* struct ctl_request; fd: a TCP
					 * socket, connected or connecting
					 * (then answered once it is).
					 * CTL_R_CHANNEL (+1 fd)|
					 * CTL_R_TCP|ERROR, maybe later */
	CTL_REQ_LISTENERS = 0x010a,     /* no body: CTL_R_LISTENER... + END */
	CTL_REQ_EXCLUDES = 0x010b,      /* no body: CTL_R_EXCLUDE... + END,
					 * in the order of the config */
	CTL_REQ_DOORBELL = 0x010c,      /* struct ctl_doorbell; 2 fds: the
					 * session's process doorbell (an
					 * eventfd), named by its id, and
					 * its notification page (a sealed
					 * memfd).  OK|ERROR */
	CTL_REQ_PEER_DB = 0x010d,       /* struct ctl_doorbell: the id of a
					 * peer's doorbell.  CTL_R_DOORBELL
					 * (+2 fds)|ERROR */
	CTL_REQ_BOARD = 0x010e,         /* no body; needs a session: the
					 * board of the session's uid.
					 * CTL_R_BOARD + 1 fd (its sealed
					 * memfd)|ERROR (ENOENT: no board
					 * for this uid) */
	CTL_REQ_ACCEPTING = 0x010f,     /* no body; fd: a listening socket
					 * this session holds (LISTEN).  A
					 * process of it accepts from it: its
					 * board is named in the policy page
					 * from now on (clients meet there a
					 * process that does look).  OK|ERROR */
	/* Memory pool (memhooks issue): requests 0x0110..0x011f. */
	CTL_REQ_MEM_LEASE = 0x0110,     /* struct ctl_mem_lease; needs a
					 * session.  CTL_R_MEM_SEG + 1 fd
					 * (the segment's memfd)|ERROR
					 * (ENOSPC pool, EDQUOT quota) */
	CTL_REQ_MEM_RETURN = 0x0111,    /* struct ctl_mem_ref: give one
					 * leased segment back.  OK|ERROR */
	CTL_REQ_MEM = 0x0112,           /* no body: CTL_R_MEM_POOL,
					 * CTL_R_MEM_SERVICE...,
					 * CTL_R_MEM_HOLDER... + END */
	CTL_REQ_MEM_CLAIM = 0x0113,     /* struct ctl_mem_lease; needs a
					 * session: the process still maps
					 * that many bytes lent by a daemon
					 * before this one (a restart): they
					 * count as its lease.  OK|ERROR */

	/* Verbs endpoint registry (verbs issue): requests 0x0120..0x012f. */
	CTL_REQ_VERBS_OPEN = 0x0120,    /* struct ctl_verbs_open; fd: the
					 * device context's segment.
					 * CTL_R_VERBS_CTX|ERROR */
	CTL_REQ_VERBS_QP = 0x0121,      /* struct ctl_verbs_qp: a host-wide
					 * QPN.  CTL_R_VERBS_QPN|ERROR */
	CTL_REQ_VERBS_QP_DROP = 0x0122, /* struct ctl_verbs_qpn.  OK|ERROR */
	CTL_REQ_VERBS_CONNECT = 0x0123, /* struct ctl_verbs_connect: own QP
					 * to a peer QPN.  CTL_R_VERBS_PEER
					 * (+ the peer's segment)|ERROR */
	CTL_REQ_VERBS_LIST = 0x0124,    /* no body: CTL_R_VERBS_EP... + END */

	CTL_REQ_LAST = 0x012f,          /* end of the request range */

	CTL_R_FIRST = 0x0200,
	CTL_R_OK = 0x0200,              /* no body */
	CTL_R_ERROR = 0x0201,           /* struct ctl_error */
	CTL_R_END = 0x0202,             /* no body: closes a multi-part reply */
	CTL_R_STATUS = 0x0203,          /* struct ctl_status */
	CTL_R_SESSION = 0x0204,         /* struct ctl_session */
	CTL_R_SERVICE = 0x0205,         /* struct ctl_service */
	CTL_R_POLICY = 0x0206,          /* struct ctl_policy + one fd */
	CTL_R_PUBLISHED = 0x0207,       /* struct ctl_chan: offered */
	CTL_R_CHANNEL = 0x0208,         /* struct ctl_chan + 1 fd: segment */
	CTL_R_TCP = 0x0209,             /* struct ctl_tcp: use TCP */
	CTL_R_WITHDRAWN = 0x020a,       /* struct ctl_chan: the publication
					 * was dropped unmatched (also sent
					 * unsolicited, seq of its PUBLISH) */
	CTL_R_LISTENER = 0x020b,        /* struct ctl_listener */
	CTL_R_EXCLUDE = 0x020c,         /* struct ctl_exclude */
	CTL_R_DOORBELL = 0x020d,        /* struct ctl_doorbell + 2 fds:
					 * eventfd, notification page */
	CTL_R_BOARD = 0x020e,           /* struct ctl_board + 1 fd */
	/* Memory pool replies: 0x0210..0x021f. */
	CTL_R_MEM_SEG = 0x0210,         /* struct ctl_mem_seg + 1 fd */
	CTL_R_MEM_POOL = 0x0211,        /* struct ctl_mem_pool */
	CTL_R_MEM_SERVICE = 0x0212,     /* struct ctl_mem_service */
	CTL_R_MEM_HOLDER = 0x0213,      /* struct ctl_mem_holder */

	/* Verbs registry replies: 0x0220..0x022f. */
	CTL_R_VERBS_CTX = 0x0220,       /* struct ctl_verbs_ctx */
	CTL_R_VERBS_QPN = 0x0221,       /* struct ctl_verbs_qpn */
	CTL_R_VERBS_PEER = 0x0222,      /* struct ctl_verbs_peer + 1 fd */
	CTL_R_VERBS_EP = 0x0223,        /* struct ctl_verbs_ep */

	CTL_R_LAST = 0x022f,            /* end of the reply range */
};

/* The client had a session with a daemon before (this one restarted):
 * its servers are registering their listeners again. */
#define CTL_HELLO_RECONNECT 0x1u
/* The client's library sends its REQUEST before connect() (the socket is
 * not connected yet when it arrives), so a request is always there before
 * the server can accept: the daemon may withdraw this session's
 * publications, deciding TCP in the channel, as soon as nothing it has
 * read can match them (a server speaking first to a plain client then
 * learns it at once). */
#define CTL_HELLO_EARLY_REQUEST 0x2u

struct ctl_hello {
	uint32_t pid;                   /* as the client sees itself; the
					 * daemon trusts SO_PEERCRED instead */
	uint32_t flags;                 /* CTL_HELLO_* */
	char service[CTL_NAME_MAX];
};

struct ctl_error {
	int32_t err;                    /* positive errno */
	char msg[124];
};

struct ctl_status {
	uint32_t daemon_pid;
	uint32_t sessions;
	uint64_t uptime_ms;
	uint64_t requests;              /* served since start */
	uint64_t rejected;              /* connections closed for bad input */
};

struct ctl_session {
	uint32_t pid;                   /* from SO_PEERCRED */
	uint32_t uid;
	uint64_t netns;                 /* inode of /proc/<pid>/ns/net */
	uint64_t started_ms;            /* age, ms */
	char service[CTL_NAME_MAX];
};

#define CTL_KEY_MAX   32u               /* policy key, NUL included */
#define CTL_VALUE_MAX 64u               /* its text value, NUL included */

/* One service's policy; name "" is the default record. */
struct ctl_service {
	char name[CTL_NAME_MAX];
	uint32_t accel;                 /* 1 on, 0 off */
	uint32_t spin_us;
	uint32_t ring_kib;
	uint32_t mem_pool_min;          /* 0 = pool off (mem_pool) */
	uint64_t mem_quota;             /* bytes, 0 = none */
	char mem_sites[96];             /* NUL-terminated; "" = any caller */
};

/* Set one key of a service (created from the default record if it has
 * none; name "" sets the default record).  Values are text, exactly as in
 * ubs.conf: accel on|off, spin_us N, ring_kib N, mem_quota N[K|M|G],
 * mem_pool off|on|N[K|M|G], mem_sites NAME[,NAME...]|any. */
struct ctl_service_set {
	char name[CTL_NAME_MAX];
	char key[CTL_KEY_MAX];
	char value[CTL_VALUE_MAX];
};

/* Sent with the policy page's memfd attached; the body is informative. */
struct ctl_policy {
	uint64_t generation;            /* at the time of the reply */
	uint64_t size;                  /* segment bytes */
};

/* REQUEST: how long the daemon may hold the request unanswered. */
#define CTL_REQUEST_MAX_MS 2000u
struct ctl_request {
	uint32_t timeout_ms;            /* capped at CTL_REQUEST_MAX_MS */
	uint32_t reserved;
};

struct ctl_chan {
	uint64_t chan_id;
};

/*
 * Process doorbells: each process rings, and sleeps on, one eventfd for
 * all its channels.  Its id (random, nonzero) is written in the header of
 * every channel the process creates or attaches; the peer asks ubsd for
 * that doorbell once per process pair (PEER_DB).  ubsd hands a doorbell
 * to a session of the same uid as its owner, to root, and to a session
 * it has given a channel with the owner's session (or whose process
 * descends from such a session's).  The doorbell travels with the
 * process's notification page (ubt_note_*), where peers post which
 * endpoints became ready.
 */
struct ctl_doorbell {
	uint64_t id;
};

/*
 * Boards (ubtransport board.c): one per uid, made by ubsd at the first
 * BOARD or LISTEN of a session of that uid and kept as long as ubsd runs;
 * given to sessions of that uid only.  Same-uid processes of one network
 * namespace meet there for a connection without asking ubsd; the policy
 * page's listener table names the board of each listener's uid (struct
 * ubs_lst_entry, board), so a client knows when its board is the way.
 * The body repeats what the board's own header says, for logs and
 * checks: the mapping (ubt_board_map) is the authority.
 */
struct ctl_board {
	uint64_t id;                    /* random, never 0 */
	uint64_t ring_size;             /* bytes, of each slot's two rings */
	uint32_t nslots;
	uint32_t reserved;
};

struct ctl_tcp {
	char reason[64];                /* NUL-terminated */
};

struct ctl_listener {
	uint64_t sock_id;               /* inode of the listening socket */
	uint64_t netns;                 /* SO_NETNS_COOKIE (or ns inode) */
	uint16_t family;                /* AF_INET, AF_INET6 */
	uint16_t port;                  /* host order */
	uint32_t v6only;
	uint8_t addr[16];
	uint32_t holders;               /* sessions holding the socket */
	uint32_t reserved;
};

/* One exclude rule (ubs.conf(5) [exclude]; struct ubs_excl_rule). */
struct ctl_exclude {
	uint8_t kind;                   /* 1 address, 2 port, 3 program */
	uint8_t family;                 /* AF_INET, AF_INET6 (address) */
	uint8_t prefix;                 /* bits (address) */
	uint8_t reserved;
	uint16_t port_lo, port_hi;      /* host order; 0-0: any port */
	uint8_t addr[16];               /* network order (address) */
	char program[CTL_NAME_MAX];     /* service name (program) */
};

/* Memory pool (ubsd/pool.c).  A lease is one memfd segment of at least
 * the bytes asked for (rounded up to the pool's granule), lent to the
 * session until it returns it or its connection closes. */
struct ctl_mem_lease {
	uint64_t bytes;
};

struct ctl_mem_ref {
	uint64_t seg_id;
};

#define CTL_MEM_HUGE 0x1u               /* segment of 2 MiB hugepages */
#define CTL_MEM_REUSED 0x2u             /* lent before (and zeroed since) */

struct ctl_mem_seg {
	uint64_t seg_id;
	uint64_t size;                  /* bytes of the memfd */
	uint32_t flags;                 /* CTL_MEM_* */
	uint32_t reserved;
};

/* Pool hugepage state. */
enum { CTL_MEM_PAGES_NORMAL = 0,        /* hugepages not configured */
	CTL_MEM_PAGES_HUGE = 1,         /* configured and in use */
	CTL_MEM_PAGES_HUGE_UNAVAIL = 2, /* configured, none free: normal */
};

struct ctl_mem_pool {
	uint64_t size;                  /* capacity, bytes */
	uint64_t used;                  /* leased now */
	uint64_t granule;               /* lease sizes are multiples */
	uint64_t leases_total;          /* granted since start */
	uint64_t refused;               /* ENOSPC or EDQUOT since start */
	uint32_t pages;                 /* CTL_MEM_PAGES_* */
	uint32_t segments;              /* leased now */
};

struct ctl_mem_service {
	char name[CTL_NAME_MAX];
	uint64_t quota;                 /* bytes, 0 = none */
	uint64_t used;
	uint32_t holders;               /* sessions holding leases */
	uint32_t reserved;
};

struct ctl_mem_holder {
	uint32_t pid;
	uint32_t segments;
	uint64_t bytes;
	char service[CTL_NAME_MAX];
};

/* Verbs registry (shim-verbs/README.md).  A context registers its
 * shared segment once; QPNs are allocated host-wide; a peer's segment is
 * handed over only to a session connecting one of its own QPs to that
 * peer's QPN. */
/* Offset of a u32 in a verbs context segment that ubsd sets to 1 (with
 * pwrite, never a mapping) when the segment's owner's session ends. */
#define CTL_VERBS_SEG_DEAD_OFF 36

struct ctl_verbs_open {
	uint64_t seg_size;              /* bytes of the segment passed */
	uint64_t reserved;
};

struct ctl_verbs_ctx {
	uint64_t ctx_id;
};

struct ctl_verbs_qp {
	uint64_t ctx_id;                /* from CTL_R_VERBS_CTX */
	uint64_t qp_off;                /* QP record inside its segment */
	uint32_t qp_type;               /* enum ibv_qp_type */
	uint32_t reserved;
};

struct ctl_verbs_qpn {
	uint32_t qpn;
	uint32_t reserved;
};

struct ctl_verbs_connect {
	uint32_t qpn;                   /* the caller's own QP */
	uint32_t dest_qpn;              /* the peer's */
};

struct ctl_verbs_peer {
	uint32_t pid;                   /* owner of the peer QP */
	uint32_t qp_type;
	uint64_t ctx_id;
	uint64_t seg_size;
	uint64_t qp_off;
};

struct ctl_verbs_ep {
	uint32_t qpn;
	uint32_t pid;
	uint32_t qp_type;
	uint32_t dest_qpn;              /* last connected to, 0 none */
	uint64_t ctx_id;
};

/* Max fds any message carries, and how many a type carries. */
#define CTL_MAX_FDS 4
int ctl_fd_count(uint16_t type);

/*
 * Check a received header and the body that follows it.  Returns 0, or a
 * negative errno with *why set to a short reason: -EPROTO (magic, length,
 * string), -EPROTONOSUPPORT (version), -EBADMSG (unknown type), -EMSGSIZE
 * (body over CTL_MAX_BODY).  body may be NULL when only the header has
 * arrived (then only the header is checked).
 */
int ctl_check(const struct ctl_hdr *h, const void *body, const char **why);
/* Fill a header for type with len body bytes and sequence seq. */
void ctl_fill(struct ctl_hdr *h, uint16_t type, uint32_t len, uint32_t seq);
/* Body length a type must have, or -1 for an unknown type. */
int ctl_body_len(uint16_t type);
/* Human name of a type, for logs. */
const char *ctl_type_name(uint16_t type);

#endif /* UBS_CTL_PROTO_H */

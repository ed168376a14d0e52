/* SPDX-License-Identifier: MIT */
/*
 * rendezvous.h - the daemon's matching rules for the socket attach
 * protocol, as a pure module: no sockets, no I/O, no clock (time is the
 * caller's now_ms), no globals (all state lives in a struct rv_table the
 * caller owns).  ubsd feeds it what the kernel told it about passed fds
 * (4-tuples from getsockname/getpeername, SO_NETNS_COOKIE, fstat inode)
 * and turns the answers into replies.
 *
 * Terms:
 *  - listener:    one listening socket (sock_id = its inode), held by one
 *                 or more sessions; lives while any holder remains.
 *  - publication: the server side of an accepted connection, offering the
 *                 channel chan_id under the connection's 4-tuple.
 *  - request:     the client side of a connected socket asking for the
 *                 channel of its 4-tuple; answered now or left pending.
 *  - intent:      a client announcing "I am about to connect to dst from
 *                 this port", so the server waits before sending first.
 *
 * Matching (publication P, request R): P.local == R.remote and
 * P.remote == R.local, exact address and port after normalisation, and
 * local != remote.  Among candidates, the unique one in the same netns
 * wins.  With none in the same netns, the candidates in other namespaces
 * are considered, unless the requester's own namespace has a listener the
 * request's destination could reach (the connection may then have landed
 * there: those candidates are ignored and a request waits for its own
 * namespace's publication).  A single such candidate wins only when the
 * table allows cross-namespace matches (no RV_NO_CROSS_NETNS) and BOTH
 * ends carry RV_PROVEN (see rv_proof: each end's local address is
 * configured in its own namespace and its remote address is not); a
 * refused single candidate, or several, means TCP at once.  A match is
 * made only when BOTH sides choose each other (P's view of the pending
 * requests and R's view of the publications), and a publication is
 * consumed by its match.  A publication that leaves a pending request
 * with no possible match (it makes that request's view ambiguous or
 * refused) answers the request "use TCP" at the next rv_expire.  A
 * request that finds no candidate at all waits only if a registered
 * listener could have accepted its connection (rv_listener_could, with
 * the caller's knowledge of namespace addresses); otherwise no
 * publication can ever come and it is answered "use TCP" at once.
 *
 * Why a cross-namespace pair is then the right one: in one namespace a
 * 4-tuple names one connection, but the same tuple can exist in two
 * namespaces (a client whose packets went to another host that uses the
 * same addresses).  The server's socket proves the connection ended in
 * its namespace on an address it owns, from a peer address it does not
 * own; the client's socket proves the connection began in its namespace
 * on an address it owns, towards an address it does not own (had it
 * owned it, the connection would have stayed inside).  NAT never passes:
 * a translated connection's two ends do not see mirrored tuples, so no
 * publication matches its request at all.
 *
 * Answers never allocate: every store is preallocated at rv_table_init.
 * Lookups of publications and requests are a chained hash on the
 * server-oriented 4-tuple (O(1) per connect/accept at thousands of live
 * entries); listeners and intents are linear scans (a few hundred, and
 * only touched on listen/close, cross-netns checks and intents); expiry,
 * the next deadline and session teardown are linear sweeps of the stored
 * entries (not of the capacity).
 */
#ifndef UBS_RENDEZVOUS_H
#define UBS_RENDEZVOUS_H

#include <stddef.h>
#include <stdint.h>

/* An endpoint.  family is AF_INET or AF_INET6; port in host byte order
 * (any order works if the caller is consistent); AF_INET uses addr[0..3].
 * Inputs are normalised: ::ffff:a.b.c.d becomes AF_INET a.b.c.d and
 * unused bytes are zeroed, so equal endpoints compare equal.  IPv6 scope
 * ids are not part of the key. */
struct rv_addr {
	uint16_t family;
	uint16_t port;
	uint8_t addr[16];
};

/* A socket's view of its connection: getsockname, getpeername. */
struct rv_tuple {
	struct rv_addr local, remote;
};

enum rv_verdict {
	RV_MATCH = 1,   /* request + publication paired: hand chan_id to req */
	RV_PENDING,     /* stored; answered later by rv_publish or rv_expire */
	RV_TCP,         /* request answered: use TCP */
	RV_WITHDRAWN,   /* publication dropped unmatched: server uses TCP */
};

/* One answer.  Which fields are meaningful depends on verdict:
 *  RV_MATCH:     all of them.
 *  RV_PENDING:   req_id/req_session (rv_request) or chan_id/pub_session
 *                (rv_publish).
 *  RV_TCP:       req_id, req_session.
 *  RV_WITHDRAWN: chan_id, pub_session. */
struct rv_answer {
	enum rv_verdict verdict;
	uint32_t cause;         /* RV_TCP, RV_WITHDRAWN: enum rv_cause */
	uint64_t req_id;
	uint64_t req_session;
	uint64_t chan_id;
	uint64_t pub_session;
};

/* Why an answer is RV_TCP or RV_WITHDRAWN (for logs and replies). */
enum rv_cause {
	RV_CAUSE_NONE = 0,
	RV_CAUSE_SELF,          /* local == remote: never matchable */
	RV_CAUSE_NO_PEER,       /* no candidate, and no time to wait */
	RV_CAUSE_AMBIGUOUS,     /* several candidates */
	RV_CAUSE_CROSS_OFF,     /* the only peer is in another netns and the
				 * table refuses cross-namespace matches */
	RV_CAUSE_UNPROVEN,      /* the only peer is in another netns and an
				 * end lacks RV_PROVEN */
	RV_CAUSE_TIMEOUT,       /* rv_expire: deadline passed / stale */
	RV_CAUSE_SUPERSEDED,    /* rv_expire: same tuple and netns again */
	RV_CAUSE_NO_LISTENER,   /* no registered listener can have accepted
				 * the connection (rv_listener_could) */
};

/* Short text for a cause ("ambiguous", "cross-netns off", ...). */
const char *rv_cause_str(uint32_t cause);

/*
 * What the daemon proved about one end of a connection in that end's own
 * network namespace: the `proof` argument of rv_publish and rv_request,
 * computed with rv_proof from the namespace's local addresses.  A
 * cross-namespace pair needs RV_PROVEN on both ends; a same-namespace
 * pair needs nothing.
 */
#define RV_LOCAL_HERE   0x1u    /* its local address is configured there */
#define RV_REMOTE_AWAY  0x2u    /* its remote address is not */
#define RV_PROVEN       (RV_LOCAL_HERE | RV_REMOTE_AWAY)

/*
 * The caller's knowledge of namespace addresses, for a request that finds
 * no publication (rv_request, rv_listener_could): fn(arg, netns, a) says
 * whether the normalised address a is local in namespace netns (the
 * kernel there delivers a connection to a to a socket of that namespace):
 * 1 yes, 0 no, negative when it cannot tell (counted as yes).  It may be
 * called several times per request, for different namespaces.
 */
struct rv_local {
	int (*fn)(void *arg, uint64_t netns, const struct rv_addr *a);
	void *arg;
};

/* Capacities (0 is refused) and tunables, fixed at init. */
struct rv_limits {
	uint32_t listeners;     /* listening sockets */
	uint32_t holders;       /* (listener, session) references in total */
	uint32_t pubs;          /* unmatched publications */
	uint32_t reqs;          /* pending requests */
	uint32_t intents;       /* announced intents */
	uint32_t stale_ms;      /* publication age at which rv_expire drops it */
	uint32_t flags;         /* RV_NO_CROSS_NETNS; see rv_set_flags */
};

#define RV_NO_CROSS_NETNS 0x1u  /* never pair ends of two namespaces */

/* Entry of rv_listener_list, for the shared listener page and ubsctl. */
struct rv_listener_info {
	uint64_t sock_id;
	uint64_t netns;
	struct rv_addr addr;
	uint32_t v6only;
	uint32_t holders;
	uint64_t board;         /* rv_listener_board: its holders' board, 0
				 * = none (or holders of different ones) */
};

/* Private to rendezvous.c; in the header only so the caller can own the
 * table by value. */
struct rv_entry;
struct rv_listener;
struct rv_intent;

struct rv_store {
	struct rv_entry *e;
	uint32_t *bucket;
	uint32_t cap, nbucket, count, free;
	uint32_t head, tail;    /* used entries, in insertion order */
};

struct rv_table {
	struct rv_limits lim;
	struct rv_store pubs, reqs;
	struct rv_listener *lst;
	uint32_t nlst, nholders;
	struct rv_intent *intents;
	uint32_t nintents;
	uint64_t next_req_id;
};

int rv_table_init(struct rv_table *t, const struct rv_limits *lim);
void rv_table_fini(struct rv_table *t);
/* Change lim.flags (a reload): decisions from now on follow them; nothing
 * already matched or answered changes. */
void rv_set_flags(struct rv_table *t, uint32_t flags);

/* Listeners. */
int rv_listener_add(struct rv_table *t, uint64_t sock_id, uint64_t netns,
		    const struct rv_addr *addr, int v6only, uint64_t session);
int rv_listener_drop(struct rv_table *t, uint64_t sock_id, uint64_t session);
/*
 * A holder of sock_id (just added) belongs to board `board` (0: none):
 * the first holder's board becomes the listener's, a later holder of
 * another one (a socket shared across uids) makes it 0 for as long as the
 * listener lives: a board is a meeting place for one uid, and a holder
 * of another would never look there.  -ENOENT for no such listener.
 */
int rv_listener_board(struct rv_table *t, uint64_t sock_id, uint64_t board);
/*
 * Holder `session` of sock_id accepts from it.  Until a holder said so
 * the listener's board is listed as 0 (rv_listener_list): the process that
 * called listen() may never accept (nginx's master), and its children may
 * change uid before they register; a client would post where nobody
 * looks.  -ENOENT when session holds no such listener.
 */
int rv_listener_accepting(struct rv_table *t, uint64_t sock_id,
			  uint64_t session);
int rv_listener_maybe(const struct rv_table *t, const struct rv_addr *dst);
/*
 * Could a registered listener have accepted a connection made from
 * namespace netns to dst, and a publication of it be paired?  Listener L
 * counts when it has dst's port and
 *  - takes dst's address: the same address, or a wildcard of a
 *    compatible family (0.0.0.0; :: for IPv4 too unless v6only), and a
 *    wildcard only if local->fn says dst is local in L's namespace (or
 *    cannot tell);
 *  - and, when L is in another namespace than netns: dst is not a
 *    loopback address (127.0.0.0/8, ::1: those never leave a
 *    namespace), dst is not local in netns itself (the kernel delivered
 *    the connection there), and the table allows cross-namespace pairs
 *    (no RV_NO_CROSS_NETNS: else no match could come of it).
 * local NULL: nothing is known about addresses (every wildcard counts).
 * 1 yes; 0 no, with *cause (if cause) RV_CAUSE_CROSS_OFF when a listener
 * of another namespace was left out only for RV_NO_CROSS_NETNS, else
 * RV_CAUSE_NO_LISTENER; -EAFNOSUPPORT.
 */
int rv_listener_could(const struct rv_table *t, uint64_t netns,
		      const struct rv_addr *dst, const struct rv_local *local,
		      uint32_t *cause);
size_t rv_listener_list(const struct rv_table *t,
			struct rv_listener_info *out, size_t cap);

/* Publications and requests. */
int rv_publish(struct rv_table *t, const struct rv_tuple *accepted,
	       uint64_t netns, uint32_t proof, uint64_t session,
	       uint64_t chan_id, uint64_t now_ms, struct rv_answer *ans);
int rv_withdraw(struct rv_table *t, uint64_t session, uint64_t chan_id);
int rv_request(struct rv_table *t, const struct rv_tuple *connected,
	       uint64_t netns, uint32_t proof, uint64_t session,
	       uint64_t now_ms, uint64_t deadline_ms,
	       const struct rv_local *local, struct rv_answer *ans);
int rv_request_cancel(struct rv_table *t, uint64_t session, uint64_t req_id);

/* Intents. */
int rv_intent(struct rv_table *t, const struct rv_addr *dst,
	      uint16_t client_local_port, uint64_t netns, uint64_t session,
	      uint64_t now_ms, uint64_t deadline_ms);
int rv_intent_pending(struct rv_table *t, const struct rv_tuple *accepted,
		      uint64_t netns, uint64_t now_ms);

/* Time and teardown. */
size_t rv_expire(struct rv_table *t, uint64_t now_ms,
		 struct rv_answer *out, size_t cap);
uint64_t rv_next_deadline(const struct rv_table *t);
int rv_session_gone(struct rv_table *t, uint64_t session);

/* Helpers for the daemon and tests. */
int rv_addr_norm(struct rv_addr *a);
int rv_addr_eq(const struct rv_addr *a, const struct rv_addr *b);

/*
 * The local addresses of one network namespace, as the daemon reads them
 * (text in, no I/O here): what the kernel delivers locally, i.e. the
 * "LOCAL" routes.  One entry is an address or a prefix.
 */
struct rv_net {
	uint16_t family;        /* AF_INET or AF_INET6 */
	uint8_t len;            /* prefix length */
	uint8_t addr[16];       /* host bits past len are zero */
};

/*
 * Parsers of /proc/PID/net files.  Each writes up to cap entries to out
 * and returns how many it found (more than cap: call again with room for
 * that many).  Lines it does not understand are skipped.
 *  - fib_trie: every "/LEN SCOPE LOCAL" entry of every table (addresses
 *    are "/32 host LOCAL"; 127.0.0.0/8 and AnyIP routes are prefixes);
 *  - if_inet6: every address, as /128;
 *  - ipv6_route: every route with RTF_LOCAL (addresses and AnyIP).
 */
size_t rv_parse_fib_trie(const char *text, struct rv_net *out, size_t cap);
size_t rv_parse_if_inet6(const char *text, struct rv_net *out, size_t cap);
size_t rv_parse_ipv6_route(const char *text, struct rv_net *out, size_t cap);

/* Is (normalised or not) address a inside one of the n entries? */
int rv_net_has(const struct rv_net *nets, size_t n, const struct rv_addr *a);

/*
 * The proof bits of a socket whose kernel view is tu, in a namespace
 * whose local addresses are nets[0..n): RV_LOCAL_HERE when tu->local is
 * local there, RV_REMOTE_AWAY when tu->remote is not.
 */
uint32_t rv_proof(const struct rv_net *nets, size_t n,
		  const struct rv_tuple *tu);

#endif

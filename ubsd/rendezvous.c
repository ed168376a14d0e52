/* SPDX-License-Identifier: MIT */
/*
 * rendezvous.c - the daemon's matching rules (see rendezvous.h): listener
 * references per listening socket, publications and requests paired on
 * the mirrored 4-tuple with the namespace rule, intents, expiry, and the
 * parsers of the namespace address facts the rule is decided on.  Pure:
 * no I/O, no clock, no globals; the answer paths never allocate.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "rendezvous.h"

#define RV_NIL   UINT32_MAX             /* end of a chain, "no candidate" */
#define RV_AMBIG (UINT32_MAX - 1)       /* several candidates: use TCP */
#define RV_EXTRA (UINT32_MAX - 2)       /* the entry being added won */

/* A publication or a request, keyed by the server-oriented tuple: srv is
 * the publication's local end and the request's remote end. */
struct rv_entry {
	struct rv_addr srv, cli;
	uint64_t netns, session;
	uint64_t id;            /* publication: chan_id; request: req_id */
	uint64_t t;             /* publication: published at; request: deadline */
	uint32_t next;          /* hash chain while used, free list otherwise */
	uint32_t lprev, lnext;  /* list of the used entries, oldest first */
	uint8_t used;
	uint8_t dead;           /* superseded or refused: due at the next
				 * rv_expire */
	uint8_t cause;          /* why dead (enum rv_cause) */
	uint8_t proof;          /* RV_LOCAL_HERE | RV_REMOTE_AWAY */
};

struct rv_listener {
	uint64_t sock_id, netns;
	struct rv_addr addr;
	int v6only;
	uint32_t nh, hcap;
	uint64_t *h;            /* holder sessions, each once */
	uint64_t board;         /* see rv_listener_board */
	int board_set;          /* board is a holder's (0: none told yet) */
	int accepting;          /* a holder accepts from it (its board is
				 * listed only then) */
};

struct rv_intent {
	struct rv_addr dst;
	uint16_t port;          /* client's local port, 0 = not known */
	uint64_t netns, session, deadline;
};

/* ---- addresses ---------------------------------------------------------- */

/*
 * Bring an address to its canonical form: IPv4-mapped IPv6 becomes
 * AF_INET, bytes an address family does not use are zeroed.  Returns 0 or
 * -EAFNOSUPPORT.
 */
int rv_addr_norm(struct rv_addr *a)
{
	static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };

	if (a->family == AF_INET6) {
		if (!memcmp(a->addr, mapped, sizeof(mapped))) {
			a->family = AF_INET;
			memmove(a->addr, a->addr + 12, 4);
			memset(a->addr + 4, 0, 12);
		}
		return 0;
	}
	if (a->family == AF_INET) {
		memset(a->addr + 4, 0, 12);
		return 0;
	}
	return -EAFNOSUPPORT;
}

/* Equal after normalisation (inputs need not be normalised). */
int rv_addr_eq(const struct rv_addr *a, const struct rv_addr *b)
{
	struct rv_addr x = *a, y = *b;

	if (rv_addr_norm(&x) || rv_addr_norm(&y))
		return 0;
	return !memcmp(&x, &y, sizeof(x));
}

static int rv_same(const struct rv_addr *a, const struct rv_addr *b)
{
	return !memcmp(a, b, sizeof(*a));
}

static int rv_is_any(const struct rv_addr *a)
{
	static const uint8_t zero[16];

	return !memcmp(a->addr, zero, sizeof(zero));
}

/* Could a connect to (normalised) dst reach listener l? */
static int rv_reaches(const struct rv_listener *l, const struct rv_addr *dst)
{
	if (l->addr.port != dst->port)
		return 0;
	if (l->addr.family == dst->family)
		return rv_is_any(&l->addr) || rv_same(&l->addr, dst);
	/* A dual-stack :: listener also takes IPv4. */
	return l->addr.family == AF_INET6 && dst->family == AF_INET &&
	       !l->v6only && rv_is_any(&l->addr);
}

static int rv_tuple_norm(const struct rv_tuple *in, struct rv_tuple *out)
{
	*out = *in;
	if (rv_addr_norm(&out->local) || rv_addr_norm(&out->remote))
		return -EAFNOSUPPORT;
	return 0;
}

/* ---- the hashed store of publications / requests ------------------------ */

static uint32_t rv_hash(const struct rv_store *s, const struct rv_addr *srv,
			const struct rv_addr *cli)
{
	const uint8_t *p;
	uint64_t h = 0xcbf29ce484222325ull;     /* FNV-1a */
	size_t i;

	p = (const uint8_t *)srv;
	for (i = 0; i < sizeof(*srv); i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	p = (const uint8_t *)cli;
	for (i = 0; i < sizeof(*cli); i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	h ^= h >> 29;
	return (uint32_t)h & (s->nbucket - 1);
}

static int rv_store_init(struct rv_store *s, uint32_t cap)
{
	uint32_t i, nb = 1;

	while (nb < 2 * (uint64_t)cap)
		nb <<= 1;
	s->e = calloc(cap, sizeof(*s->e));
	s->bucket = malloc(nb * sizeof(*s->bucket));
	if (!s->e || !s->bucket)
		return -ENOMEM;
	for (i = 0; i < nb; i++)
		s->bucket[i] = RV_NIL;
	for (i = 0; i < cap; i++)
		s->e[i].next = i + 1 < cap ? i + 1 : RV_NIL;
	s->head = s->tail = RV_NIL;
	s->cap = cap;
	s->nbucket = nb;
	s->count = 0;
	s->free = 0;
	return 0;
}

static void rv_store_fini(struct rv_store *s)
{
	free(s->e);
	free(s->bucket);
	memset(s, 0, sizeof(*s));
}

/*
 * Insert a copy of *src; the caller checked there is room.  The used
 * entries are also linked in insertion order, so that the sweeps
 * (rv_expire, rv_next_deadline, teardown) cost O(entries stored), not
 * O(capacity): they run at every turn of the daemon's loop.
 */
static void rv_store_add(struct rv_store *s, const struct rv_entry *src)
{
	uint32_t i = s->free, h = rv_hash(s, &src->srv, &src->cli);
	struct rv_entry *e = &s->e[i];

	s->free = e->next;
	*e = *src;
	e->used = 1;
	e->dead = 0;
	e->next = s->bucket[h];
	s->bucket[h] = i;
	e->lprev = s->tail;
	e->lnext = RV_NIL;
	if (s->tail != RV_NIL)
		s->e[s->tail].lnext = i;
	else
		s->head = i;
	s->tail = i;
	s->count++;
}

static void rv_store_del(struct rv_store *s, uint32_t i)
{
	struct rv_entry *e = &s->e[i];
	uint32_t *pp = &s->bucket[rv_hash(s, &e->srv, &e->cli)];

	while (*pp != i)
		pp = &s->e[*pp].next;
	*pp = e->next;
	if (e->lprev != RV_NIL)
		s->e[e->lprev].lnext = e->lnext;
	else
		s->head = e->lnext;
	if (e->lnext != RV_NIL)
		s->e[e->lnext].lprev = e->lprev;
	else
		s->tail = e->lprev;
	e->used = 0;
	e->next = s->free;
	s->free = i;
	s->count--;
}

static int rv_key_eq(const struct rv_entry *e, const struct rv_addr *srv,
		     const struct rv_addr *cli)
{
	return rv_same(&e->srv, srv) && rv_same(&e->cli, cli);
}

/* Is entry e of the publication store (reqs = 0) or of the request store
 * (reqs = 1) still open for matching at now? */
static int rv_live(const struct rv_table *t, const struct rv_entry *e,
		   int reqs, uint64_t now)
{
	if (e->dead)
		return 0;
	if (reqs)
		return e->t > now;
	return now < e->t || now - e->t < t->lim.stale_ms;
}

/* Due for rv_expire: superseded, past its deadline, or stale. */
static int rv_due(const struct rv_table *t, const struct rv_entry *e,
		  int reqs, uint64_t now)
{
	return !rv_live(t, e, reqs, now);
}

/*
 * A new entry with the same key and netns as live ones of the same store
 * proves them dead: within one namespace a 4-tuple names one connection
 * at a time, so the older socket is gone.  Mark them for rv_expire.
 */
static void rv_supersede(const struct rv_table *t, struct rv_store *s,
			 int reqs, const struct rv_addr *srv,
			 const struct rv_addr *cli, uint64_t netns, uint64_t now)
{
	uint32_t i;

	for (i = s->bucket[rv_hash(s, srv, cli)]; i != RV_NIL; i = s->e[i].next) {
		struct rv_entry *e = &s->e[i];

		if (rv_key_eq(e, srv, cli) && e->netns == netns &&
		    rv_live(t, e, reqs, now)) {
			e->dead = 1;
			e->cause = RV_CAUSE_SUPERSEDED;
		}
	}
}

/* ---- the matching rule --------------------------------------------------- */

/*
 * Does namespace req_netns have a listener that srv could reach?  Then a
 * request from there may well have landed in its own namespace, and a
 * publication elsewhere with the same tuple proves nothing: such
 * candidates are not considered at all (the request waits for its own
 * namespace's publication).
 */
static int rv_listener_near(const struct rv_table *t, uint64_t req_netns,
			    const struct rv_addr *srv)
{
	uint32_t i;

	for (i = 0; i < t->nlst; i++)
		if (t->lst[i].netns == req_netns && rv_reaches(&t->lst[i], srv))
			return 1;
	return 0;
}

/*
 * Choose the peer of an entry in namespace netns with proof bits proof,
 * keyed (srv, cli), among the live entries of the opposite store s
 * (reqs: s holds requests) plus, when extra_netns is given, the entry
 * about to be added (RV_EXTRA, proof extra_proof).  The unique same-netns
 * candidate wins.  Else the other-netns candidates count, unless the
 * requester's namespace has a listener near srv (then they are ignored):
 * a unique one wins if the table allows cross-namespace pairs and both
 * ends are RV_PROVEN.  Several candidates, or a refused unique one:
 * RV_AMBIG with *cause set; none: RV_NIL.
 */
static uint32_t rv_choose(const struct rv_table *t, const struct rv_store *s,
			  int reqs, const struct rv_addr *srv,
			  const struct rv_addr *cli, uint64_t netns,
			  uint32_t proof, uint64_t now,
			  const uint64_t *extra_netns, uint32_t extra_proof,
			  uint8_t *cause)
{
	uint32_t same = 0, other = 0, same_i = RV_NIL, other_i = RV_NIL;
	uint32_t i = s->bucket[rv_hash(s, srv, cli)], p = 0;
	int near = -1;  /* rv_listener_near, computed once if needed */

	for (;;) {
		uint64_t n;
		uint32_t cand;

		if (i != RV_NIL) {
			const struct rv_entry *e = &s->e[i];

			cand = i;
			i = e->next;
			if (!rv_key_eq(e, srv, cli) || !rv_live(t, e, reqs, now))
				continue;
			n = e->netns;
			p = e->proof;
		} else if (extra_netns) {
			cand = RV_EXTRA;
			n = *extra_netns;
			p = extra_proof;
			extra_netns = NULL;
		} else {
			break;
		}
		if (n == netns) {
			same++;
			same_i = cand;
			continue;
		}
		/* The requester's netns: the candidate's when it is a
		 * request, ours otherwise.  With several requests from
		 * several namespaces the answer differs per candidate. */
		if (reqs ? rv_listener_near(t, n, srv) :
		    (near < 0 ? (near = rv_listener_near(t, netns, srv)) :
		     near))
			continue;
		other++;
		other_i = cand;
		if (t->lim.flags & RV_NO_CROSS_NETNS)
			*cause = RV_CAUSE_CROSS_OFF;
		else if ((p & proof & RV_PROVEN) != RV_PROVEN)
			*cause = RV_CAUSE_UNPROVEN;
		else
			*cause = RV_CAUSE_NONE;
	}
	if (same) {
		if (same == 1)
			return same_i;
		*cause = RV_CAUSE_AMBIGUOUS;
		return RV_AMBIG;
	}
	if (!other)
		return RV_NIL;
	if (other > 1) {
		*cause = RV_CAUSE_AMBIGUOUS;
		return RV_AMBIG;
	}
	return *cause == RV_CAUSE_NONE ? other_i : RV_AMBIG;
}

const char *rv_cause_str(uint32_t cause)
{
	switch (cause) {
	case RV_CAUSE_SELF:
		return "self-connected";
	case RV_CAUSE_NO_PEER:
		return "no publication";
	case RV_CAUSE_AMBIGUOUS:
		return "ambiguous";
	case RV_CAUSE_CROSS_OFF:
		return "cross-netns off";
	case RV_CAUSE_UNPROVEN:
		return "cross-netns unproven";
	case RV_CAUSE_TIMEOUT:
		return "timeout";
	case RV_CAUSE_SUPERSEDED:
		return "superseded";
	case RV_CAUSE_NO_LISTENER:
		return "no local listener";
	default:
		return "none";
	}
}

/* ---- table ---------------------------------------------------------------- */

/*
 * Set up an empty table with the given capacities (each at least 1).
 * Everything the answer paths need is allocated here.
 */
int rv_table_init(struct rv_table *t, const struct rv_limits *lim)
{
	memset(t, 0, sizeof(*t));
	if (!lim->listeners || !lim->holders || !lim->pubs || !lim->reqs ||
	    !lim->intents || lim->pubs > (1u << 30) || lim->reqs > (1u << 30))
		return -EINVAL;
	t->lim = *lim;
	t->next_req_id = 1;
	t->lst = calloc(lim->listeners, sizeof(*t->lst));
	t->intents = calloc(lim->intents, sizeof(*t->intents));
	if (!t->lst || !t->intents || rv_store_init(&t->pubs, lim->pubs) ||
	    rv_store_init(&t->reqs, lim->reqs)) {
		rv_table_fini(t);
		return -ENOMEM;
	}
	return 0;
}

void rv_table_fini(struct rv_table *t)
{
	uint32_t i;

	for (i = 0; t->lst && i < t->nlst; i++)
		free(t->lst[i].h);
	free(t->lst);
	free(t->intents);
	rv_store_fini(&t->pubs);
	rv_store_fini(&t->reqs);
	memset(t, 0, sizeof(*t));
}

void rv_set_flags(struct rv_table *t, uint32_t flags)
{
	t->lim.flags = flags;
}

/* ---- listeners ------------------------------------------------------------ */

static struct rv_listener *rv_listener_find(const struct rv_table *t,
					    uint64_t sock_id)
{
	uint32_t i;

	for (i = 0; i < t->nlst; i++)
		if (t->lst[i].sock_id == sock_id)
			return &t->lst[i];
	return NULL;
}

static void rv_listener_remove(struct rv_table *t, struct rv_listener *l)
{
	t->nholders -= l->nh;
	free(l->h);
	*l = t->lst[--t->nlst];
	memset(&t->lst[t->nlst], 0, sizeof(*l));
}

/*
 * Session `session` proved it holds listening socket sock_id (bound to
 * addr in netns).  Each session counts once.  If sock_id is known with a
 * different identity, the old entry described a socket that is gone (a
 * live inode names one socket) and is replaced.  Returns 1 when the
 * listener is new (the listener page changes), 0 when only a reference
 * was added or already held, -ENOSPC, -ENOMEM or -EAFNOSUPPORT.
 */
int rv_listener_add(struct rv_table *t, uint64_t sock_id, uint64_t netns,
		    const struct rv_addr *addr, int v6only, uint64_t session)
{
	struct rv_listener *l;
	struct rv_addr a = *addr;
	int created = 0;
	uint32_t i;

	if (rv_addr_norm(&a))
		return -EAFNOSUPPORT;
	v6only = a.family == AF_INET6 && v6only;
	l = rv_listener_find(t, sock_id);
	if (l && (l->netns != netns || !rv_same(&l->addr, &a) ||
		  l->v6only != v6only)) {
		t->nholders -= l->nh;
		l->nh = 0;
		l->board = 0;
		l->board_set = 0;
		l->accepting = 0;
		l->netns = netns;
		l->addr = a;
		l->v6only = v6only;
		created = 1;
	}
	if (l) {
		for (i = 0; i < l->nh; i++)
			if (l->h[i] == session)
				return created;
	} else if (t->nlst >= t->lim.listeners) {
		return -ENOSPC;
	}
	if (t->nholders >= t->lim.holders) {
		if (l && !l->nh)
			rv_listener_remove(t, l);       /* replaced, unheld */
		return -ENOSPC;
	}
	if (!l) {
		l = &t->lst[t->nlst++];
		memset(l, 0, sizeof(*l));
		l->sock_id = sock_id;
		l->netns = netns;
		l->addr = a;
		l->v6only = v6only;
		created = 1;
	}
	if (l->nh == l->hcap) {
		uint32_t ncap = l->hcap ? 2 * l->hcap : 4;
		uint64_t *nh = realloc(l->h, ncap * sizeof(*nh));

		if (!nh) {
			if (!l->nh)
				rv_listener_remove(t, l);
			return -ENOMEM;
		}
		l->h = nh;
		l->hcap = ncap;
	}
	l->h[l->nh++] = session;
	t->nholders++;
	return created;
}

int rv_listener_board(struct rv_table *t, uint64_t sock_id, uint64_t board)
{
	struct rv_listener *l = rv_listener_find(t, sock_id);

	if (!l)
		return -ENOENT;
	if (!l->board_set) {
		l->board = board;
		l->board_set = 1;
	} else if (l->board != board) {
		l->board = 0;
	}
	return 0;
}

int rv_listener_accepting(struct rv_table *t, uint64_t sock_id,
			  uint64_t session)
{
	struct rv_listener *l = rv_listener_find(t, sock_id);

	if (!l)
		return -ENOENT;
	for (uint32_t i = 0; i < l->nh; i++)
		if (l->h[i] == session) {
			l->accepting = 1;
			return 0;
		}
	return -ENOENT;
}

/*
 * Session `session` no longer holds sock_id.  Returns 1 when that was the
 * last holder and the listener is gone, 0 when others still hold it,
 * -ENOENT when the session held no reference.
 */
int rv_listener_drop(struct rv_table *t, uint64_t sock_id, uint64_t session)
{
	struct rv_listener *l = rv_listener_find(t, sock_id);
	uint32_t i;

	if (!l)
		return -ENOENT;
	for (i = 0; i < l->nh; i++)
		if (l->h[i] == session)
			break;
	if (i == l->nh)
		return -ENOENT;
	l->h[i] = l->h[--l->nh];
	t->nholders--;
	if (l->nh)
		return 0;
	rv_listener_remove(t, l);
	return 1;
}

/*
 * Hint for a client: could a connect to dst reach any registered listener
 * in any namespace (same port, and the same address or a wildcard of a
 * compatible family)?  1 yes, 0 no, -EAFNOSUPPORT.
 */
int rv_listener_maybe(const struct rv_table *t, const struct rv_addr *dst)
{
	struct rv_addr d = *dst;
	uint32_t i;

	if (rv_addr_norm(&d))
		return -EAFNOSUPPORT;
	for (i = 0; i < t->nlst; i++)
		if (rv_reaches(&t->lst[i], &d))
			return 1;
	return 0;
}

/* 127.0.0.0/8 or ::1 (normalised): never leaves its namespace. */
static int rv_is_loopback(const struct rv_addr *a)
{
	static const uint8_t one6[16] = { [15] = 1 };

	if (a->family == AF_INET)
		return a->addr[0] == 127;
	return !memcmp(a->addr, one6, sizeof(one6));
}

/* What local->fn says of a in netns; -1 (cannot tell) without one. */
static int rv_ask(const struct rv_local *local, uint64_t netns,
		  const struct rv_addr *a)
{
	return local && local->fn ? local->fn(local->arg, netns, a) : -1;
}

/*
 * Could a listener have accepted a connection from netns to dst (see
 * rendezvous.h)?  local->fn is asked about netns at most once, and about
 * another namespace only for a wildcard listener there that the other
 * rules leave in.
 */
int rv_listener_could(const struct rv_table *t, uint64_t netns,
		      const struct rv_addr *dst, const struct rv_local *local,
		      uint32_t *cause)
{
	struct rv_addr d = *dst;
	int here = -2;          /* dst local in netns: -2 not asked yet */
	int off = 0;            /* one was left out for RV_NO_CROSS_NETNS */
	uint32_t i;

	if (rv_addr_norm(&d))
		return -EAFNOSUPPORT;
	for (i = 0; i < t->nlst; i++) {
		const struct rv_listener *l = &t->lst[i];
		int has;

		if (!rv_reaches(l, &d))
			continue;
		if (l->netns != netns) {
			if (rv_is_loopback(&d) ||
			    ((t->lim.flags & RV_NO_CROSS_NETNS) && off))
				continue;
			if (here == -2)
				here = rv_ask(local, netns, &d);
			if (here > 0)
				continue;
		}
		if (!rv_is_any(&l->addr))
			has = 1;
		else if (l->netns == netns)
			has = here == -2 ? (here = rv_ask(local, netns, &d)) :
			      here;
		else
			has = rv_ask(local, l->netns, &d);
		if (!has)
			continue;
		if (l->netns != netns && (t->lim.flags & RV_NO_CROSS_NETNS)) {
			off = 1;
			continue;
		}
		return 1;
	}
	if (cause)
		*cause = off ? RV_CAUSE_CROSS_OFF : RV_CAUSE_NO_LISTENER;
	return 0;
}

/* Copy up to cap listeners to out; returns how many there are in total. */
size_t rv_listener_list(const struct rv_table *t,
			struct rv_listener_info *out, size_t cap)
{
	uint32_t i;

	for (i = 0; i < t->nlst && i < cap; i++) {
		out[i].sock_id = t->lst[i].sock_id;
		out[i].netns = t->lst[i].netns;
		out[i].addr = t->lst[i].addr;
		out[i].v6only = (uint32_t)t->lst[i].v6only;
		out[i].holders = t->lst[i].nh;
		out[i].board = t->lst[i].accepting ? t->lst[i].board : 0;
	}
	return t->nlst;
}

/* ---- publications and requests -------------------------------------------- */

/*
 * The pending requests of key (srv, cli) whose view of the publications
 * is now ambiguous or refused can never be matched: mark them due, so
 * that the next rv_expire answers them "use TCP" at once rather than at
 * their deadline.
 */
static void rv_refuse_waiting(struct rv_table *t, const struct rv_addr *srv,
			      const struct rv_addr *cli, uint64_t now)
{
	struct rv_store *s = &t->reqs;
	uint32_t i;

	for (i = s->bucket[rv_hash(s, srv, cli)]; i != RV_NIL; i = s->e[i].next) {
		struct rv_entry *q = &s->e[i];
		uint8_t cause = RV_CAUSE_NONE;

		if (!rv_key_eq(q, srv, cli) || !rv_live(t, q, 1, now))
			continue;
		if (rv_choose(t, &t->pubs, 0, srv, cli, q->netns, q->proof,
			      now, NULL, 0, &cause) == RV_AMBIG) {
			q->dead = 1;
			q->cause = cause;
		}
	}
}

/*
 * The server accepted a connection (accepted = its getsockname /
 * getpeername) in netns, with proof bits proof (rv_proof), and offers
 * channel chan_id.  *ans says what happened: RV_MATCH (a pending request
 * took it: answer that client with chan_id), RV_PENDING (stored),
 * RV_WITHDRAWN (local == remote: never matchable, the server uses TCP).
 * An older unmatched publication of the same tuple and netns is
 * superseded, and pending requests it leaves without a possible match
 * are refused (both reported by the next rv_expire).  Returns 0, -ENOSPC
 * (table full: TCP) or -EAFNOSUPPORT.
 */
int rv_publish(struct rv_table *t, const struct rv_tuple *accepted,
	       uint64_t netns, uint32_t proof, uint64_t session,
	       uint64_t chan_id, uint64_t now_ms, struct rv_answer *ans)
{
	struct rv_tuple tu;
	struct rv_entry e;
	uint8_t cause = RV_CAUSE_NONE;
	uint32_t r;

	if (rv_tuple_norm(accepted, &tu))
		return -EAFNOSUPPORT;
	memset(ans, 0, sizeof(*ans));
	ans->chan_id = chan_id;
	ans->pub_session = session;
	if (rv_same(&tu.local, &tu.remote)) {
		ans->verdict = RV_WITHDRAWN;
		ans->cause = RV_CAUSE_SELF;
		return 0;
	}
	proof &= RV_PROVEN;
	rv_supersede(t, &t->pubs, 0, &tu.local, &tu.remote, netns, now_ms);
	r = rv_choose(t, &t->reqs, 1, &tu.local, &tu.remote, netns, proof,
		      now_ms, NULL, 0, &cause);
	if (r < RV_EXTRA) {
		const struct rv_entry *q = &t->reqs.e[r];

		if (rv_choose(t, &t->pubs, 0, &tu.local, &tu.remote, q->netns,
			      q->proof, now_ms, &netns, proof, &cause) ==
		    RV_EXTRA) {
			ans->verdict = RV_MATCH;
			ans->req_id = q->id;
			ans->req_session = q->session;
			rv_store_del(&t->reqs, r);
			return 0;
		}
	}
	if (t->pubs.count >= t->pubs.cap)
		return -ENOSPC;
	memset(&e, 0, sizeof(e));
	e.srv = tu.local;
	e.cli = tu.remote;
	e.netns = netns;
	e.session = session;
	e.id = chan_id;
	e.t = now_ms;
	e.proof = (uint8_t)proof;
	rv_store_add(&t->pubs, &e);
	rv_refuse_waiting(t, &tu.local, &tu.remote, now_ms);
	ans->verdict = RV_PENDING;
	return 0;
}

/* Find a used entry by (session, id): a linear sweep of the stored
 * entries, fine for the rare explicit withdrawals and cancellations. */
static uint32_t rv_store_find_id(const struct rv_store *s, uint64_t session,
				 uint64_t id)
{
	uint32_t i;

	for (i = s->head; i != RV_NIL; i = s->e[i].lnext)
		if (s->e[i].session == session && s->e[i].id == id)
			return i;
	return RV_NIL;
}

/* The server gave up on chan_id (TCP bytes arrived, it sent first, or it
 * closed): forget the publication.  0 or -ENOENT. */
int rv_withdraw(struct rv_table *t, uint64_t session, uint64_t chan_id)
{
	uint32_t i = rv_store_find_id(&t->pubs, session, chan_id);

	if (i == RV_NIL)
		return -ENOENT;
	rv_store_del(&t->pubs, i);
	return 0;
}

/*
 * The client's connect completed (connected = its getsockname /
 * getpeername) in netns, with proof bits proof (rv_proof); it asks for
 * the channel.  *ans: RV_MATCH (chan_id and pub_session filled; the
 * publication is consumed), RV_PENDING (stored until deadline_ms;
 * answered by rv_publish or rv_expire), RV_TCP (ans->cause: ambiguous,
 * a refused cross-namespace peer, local == remote, no candidate and
 * deadline_ms <= now, or -- given local -- no candidate and no listener
 * that could have accepted the connection: rv_listener_could from
 * netns to connected->remote; without local such a request waits).
 * ans->req_id is a fresh id in every case.  An
 * older pending request of the same tuple and netns is superseded
 * (reported by the next rv_expire).  Returns 0, -ENOSPC (would pend but
 * the table is full: TCP) or -EAFNOSUPPORT.
 */
int rv_request(struct rv_table *t, const struct rv_tuple *connected,
	       uint64_t netns, uint32_t proof, uint64_t session,
	       uint64_t now_ms, uint64_t deadline_ms,
	       const struct rv_local *local, struct rv_answer *ans)
{
	struct rv_tuple tu;
	struct rv_entry e;
	uint8_t cause = RV_CAUSE_NONE;
	uint32_t p;

	if (rv_tuple_norm(connected, &tu))
		return -EAFNOSUPPORT;
	memset(ans, 0, sizeof(*ans));
	ans->req_session = session;
	if (rv_same(&tu.local, &tu.remote)) {
		ans->req_id = t->next_req_id++;
		ans->verdict = RV_TCP;
		ans->cause = RV_CAUSE_SELF;
		return 0;
	}
	proof &= RV_PROVEN;
	/* Server orientation: srv = remote, cli = local. */
	rv_supersede(t, &t->reqs, 1, &tu.remote, &tu.local, netns, now_ms);
	p = rv_choose(t, &t->pubs, 0, &tu.remote, &tu.local, netns, proof,
		      now_ms, NULL, 0, &cause);
	if (p < RV_EXTRA) {
		const struct rv_entry *pe = &t->pubs.e[p];
		uint8_t ignored;

		if (rv_choose(t, &t->reqs, 1, &tu.remote, &tu.local, pe->netns,
			      pe->proof, now_ms, &netns, proof, &ignored) ==
		    RV_EXTRA) {
			ans->req_id = t->next_req_id++;
			ans->verdict = RV_MATCH;
			ans->chan_id = pe->id;
			ans->pub_session = pe->session;
			rv_store_del(&t->pubs, p);
			return 0;
		}
	}
	if (p == RV_AMBIG || deadline_ms <= now_ms) {
		ans->req_id = t->next_req_id++;
		ans->verdict = RV_TCP;
		ans->cause = p == RV_AMBIG ? cause : RV_CAUSE_NO_PEER;
		return 0;
	}
	/* Nothing to wait for if no listener can have taken the connection
	 * (a publication of the same tuple, even one that chose another
	 * request, proves a listener took one: then wait). */
	if (local && p == RV_NIL &&
	    !rv_listener_could(t, netns, &tu.remote, local, &ans->cause)) {
		ans->req_id = t->next_req_id++;
		ans->verdict = RV_TCP;
		return 0;
	}
	if (t->reqs.count >= t->reqs.cap)
		return -ENOSPC;
	memset(&e, 0, sizeof(e));
	e.srv = tu.remote;
	e.cli = tu.local;
	e.netns = netns;
	e.session = session;
	e.id = t->next_req_id++;
	e.t = deadline_ms;
	e.proof = (uint8_t)proof;
	rv_store_add(&t->reqs, &e);
	ans->req_id = e.id;
	ans->verdict = RV_PENDING;
	return 0;
}

/* The client no longer waits for req_id (closed the socket): forget it.
 * 0 or -ENOENT. */
int rv_request_cancel(struct rv_table *t, uint64_t session, uint64_t req_id)
{
	uint32_t i = rv_store_find_id(&t->reqs, session, req_id);

	if (i == RV_NIL)
		return -ENOENT;
	rv_store_del(&t->reqs, i);
	return 0;
}

/* ---- intents ---------------------------------------------------------------- */

static void rv_intent_purge(struct rv_table *t, uint64_t now)
{
	uint32_t i = 0;

	while (i < t->nintents) {
		if (t->intents[i].deadline <= now)
			t->intents[i] = t->intents[--t->nintents];
		else
			i++;
	}
}

/*
 * A client is about to connect to dst from client_local_port (0: not yet
 * known, matches any port).  Kept until deadline_ms (absolute) or until
 * rv_intent_pending consumes it.  0, -ENOSPC or -EAFNOSUPPORT.
 */
int rv_intent(struct rv_table *t, const struct rv_addr *dst,
	      uint16_t client_local_port, uint64_t netns, uint64_t session,
	      uint64_t now_ms, uint64_t deadline_ms)
{
	struct rv_intent *in;
	struct rv_addr d = *dst;

	if (rv_addr_norm(&d))
		return -EAFNOSUPPORT;
	if (deadline_ms <= now_ms)
		return 0;
	if (t->nintents >= t->lim.intents)
		rv_intent_purge(t, now_ms);
	if (t->nintents >= t->lim.intents)
		return -ENOSPC;
	in = &t->intents[t->nintents++];
	in->dst = d;
	in->port = client_local_port;
	in->netns = netns;
	in->session = session;
	in->deadline = deadline_ms;
	return 0;
}

/*
 * The server accepted `accepted` in netns: did an accelerated client
 * announce it?  Match: intent dst == accepted.local (exact) and intent
 * port == accepted.remote.port (or 0).  Preference: exact port before
 * port 0, then the same netns.  The chosen intent is consumed.  1 yes
 * (wait before sending first), 0 no, -EAFNOSUPPORT.
 */
int rv_intent_pending(struct rv_table *t, const struct rv_tuple *accepted,
		      uint64_t netns, uint64_t now_ms)
{
	struct rv_tuple tu;
	int best_score = -1;
	uint32_t i, best = 0;

	if (rv_tuple_norm(accepted, &tu))
		return -EAFNOSUPPORT;
	for (i = 0; i < t->nintents; i++) {
		const struct rv_intent *in = &t->intents[i];
		int score;

		if (in->deadline <= now_ms || !rv_same(&in->dst, &tu.local))
			continue;
		if (in->port && in->port != tu.remote.port)
			continue;
		score = (in->port ? 2 : 0) + (in->netns == netns);
		if (score > best_score) {
			best_score = score;
			best = i;
		}
	}
	if (best_score < 0)
		return 0;
	t->intents[best] = t->intents[--t->nintents];
	return 1;
}

/* ---- time and teardown -------------------------------------------------------- */

/*
 * Collect what is due at now_ms into out (at most cap answers) and remove
 * it: publications superseded or older than lim.stale_ms (RV_WITHDRAWN:
 * tell the server "use TCP"), requests superseded or past their deadline
 * (RV_TCP: tell the client).  Returns the number written; when it equals
 * cap, more may be due: call again.  Expired intents are dropped silently.
 */
size_t rv_expire(struct rv_table *t, uint64_t now_ms,
		 struct rv_answer *out, size_t cap)
{
	size_t n = 0;
	uint32_t i, next;

	for (i = t->pubs.head; i != RV_NIL && n < cap; i = next) {
		const struct rv_entry *e = &t->pubs.e[i];

		next = e->lnext;
		if (!rv_due(t, e, 0, now_ms))
			continue;
		memset(&out[n], 0, sizeof(out[n]));
		out[n].verdict = RV_WITHDRAWN;
		out[n].cause = e->dead ? e->cause : RV_CAUSE_TIMEOUT;
		out[n].chan_id = e->id;
		out[n].pub_session = e->session;
		n++;
		rv_store_del(&t->pubs, i);
	}
	for (i = t->reqs.head; i != RV_NIL && n < cap; i = next) {
		const struct rv_entry *e = &t->reqs.e[i];

		next = e->lnext;
		if (!rv_due(t, e, 1, now_ms))
			continue;
		memset(&out[n], 0, sizeof(out[n]));
		out[n].verdict = RV_TCP;
		out[n].cause = e->dead ? e->cause : RV_CAUSE_TIMEOUT;
		out[n].req_id = e->id;
		out[n].req_session = e->session;
		n++;
		rv_store_del(&t->reqs, i);
	}
	rv_intent_purge(t, now_ms);
	return n;
}

/*
 * The earliest time at which rv_expire has something to report (0 when
 * something is due already: a superseded entry), UINT64_MAX when nothing
 * is pending.  For the daemon's epoll timeout.
 */
uint64_t rv_next_deadline(const struct rv_table *t)
{
	uint64_t next = UINT64_MAX, d;
	uint32_t i;

	for (i = t->pubs.head; i != RV_NIL; i = t->pubs.e[i].lnext) {
		const struct rv_entry *e = &t->pubs.e[i];

		d = e->dead ? 0 : e->t + t->lim.stale_ms;
		if (d < next)
			next = d;
	}
	for (i = t->reqs.head; i != RV_NIL; i = t->reqs.e[i].lnext) {
		const struct rv_entry *e = &t->reqs.e[i];

		d = e->dead ? 0 : e->t;
		if (d < next)
			next = d;
	}
	return next;
}

/*
 * A session ended: drop its listener references (listeners it was the
 * last holder of disappear), its publications, pending requests and
 * intents, with no answers (nobody is left to tell).  Returns the number
 * of listeners that disappeared (the listener page changes if > 0).
 */
int rv_session_gone(struct rv_table *t, uint64_t session)
{
	int gone = 0;
	uint32_t i, j;

	i = 0;
	while (i < t->nlst) {
		struct rv_listener *l = &t->lst[i];

		for (j = 0; j < l->nh; j++) {
			if (l->h[j] == session) {
				l->h[j] = l->h[--l->nh];
				t->nholders--;
				break;
			}
		}
		if (!l->nh) {
			rv_listener_remove(t, l);
			gone++;
			continue;
		}
		i++;
	}
	for (i = t->pubs.head; i != RV_NIL; i = j) {
		j = t->pubs.e[i].lnext;
		if (t->pubs.e[i].session == session)
			rv_store_del(&t->pubs, i);
	}
	for (i = t->reqs.head; i != RV_NIL; i = j) {
		j = t->reqs.e[i].lnext;
		if (t->reqs.e[i].session == session)
			rv_store_del(&t->reqs, i);
	}
	i = 0;
	while (i < t->nintents) {
		if (t->intents[i].session == session)
			t->intents[i] = t->intents[--t->nintents];
		else
			i++;
	}
	return gone;
}

/* ---- namespace addresses (the facts of the cross-namespace rule) ------------ */

static void rv_net_put(struct rv_net *out, size_t cap, size_t n,
		       uint16_t family, const uint8_t *addr, unsigned len)
{
	struct rv_net *x;
	unsigned bit, max = family == AF_INET ? 32 : 128;

	if (n >= cap)
		return;
	x = &out[n];
	memset(x, 0, sizeof(*x));
	x->family = family;
	x->len = (uint8_t)(len > max ? max : len);
	memcpy(x->addr, addr, max / 8);
	for (bit = x->len; bit < max; bit++)
		x->addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
}

/* Next line of text at *p (NUL-terminated copy in buf, cut at its size);
 * 0 at the end. */
static int rv_line(const char **p, char *buf, size_t size)
{
	const char *s = *p, *e;
	size_t n;

	if (!*s)
		return 0;
	e = strchr(s, '\n');
	n = e ? (size_t)(e - s) : strlen(s);
	*p = e ? e + 1 : s + n;
	if (n >= size)
		n = size - 1;
	memcpy(buf, s, n);
	buf[n] = '\0';
	return 1;
}

/*
 * /proc/net/fib_trie: leaves are "|-- A.B.C.D", each followed by its
 * entries "/LEN SCOPE TYPE[ tos=N]".  Every entry of type LOCAL is kept,
 * as the prefix LEN of its leaf.
 */
size_t rv_parse_fib_trie(const char *text, struct rv_net *out, size_t cap)
{
	char line[256], scope[32], type[32];
	uint8_t leaf[4];
	int have_leaf = 0;
	size_t n = 0;

	while (rv_line(&text, line, sizeof(line))) {
		char *s = line, *l;
		unsigned len;

		while (*s == ' ' || *s == '\t')
			s++;
		if ((l = strstr(s, "|-- "))) {
			char a[32];

			have_leaf = sscanf(l + 4, "%31s", a) == 1 &&
				    inet_pton(AF_INET, a, leaf) == 1;
			continue;
		}
		if (*s != '/' || !have_leaf)
			continue;
		if (sscanf(s, "/%u %31s %31s", &len, scope, type) != 3 ||
		    len > 32 || strcmp(type, "LOCAL"))
			continue;
		rv_net_put(out, cap, n++, AF_INET, leaf, len);
	}
	return n;
}

static int rv_hex_addr6(const char *s, uint8_t *a)
{
	unsigned i, v;

	if (strspn(s, "0123456789abcdefABCDEF") != 32)
		return -1;
	for (i = 0; i < 16; i++) {
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		a[i] = (uint8_t)v;
	}
	return 0;
}

/* /proc/net/if_inet6: "ADDR32HEX IFINDEX PLEN SCOPE FLAGS NAME". */
size_t rv_parse_if_inet6(const char *text, struct rv_net *out, size_t cap)
{
	char line[256], hex[40];
	uint8_t a[16];
	size_t n = 0;

	while (rv_line(&text, line, sizeof(line))) {
		if (sscanf(line, "%39s", hex) != 1 || rv_hex_addr6(hex, a))
			continue;
		rv_net_put(out, cap, n++, AF_INET6, a, 128);
	}
	return n;
}

#define RV_RTF_LOCAL 0x80000000u

/* /proc/net/ipv6_route: "DST PLEN SRC SPLEN NEXTHOP METRIC REF USE FLAGS
 * DEV", numbers in hex; routes with RTF_LOCAL. */
size_t rv_parse_ipv6_route(const char *text, struct rv_net *out, size_t cap)
{
	char line[512], dst[40], src[40], nh[40];
	unsigned plen, splen, metric, ref, use, flags;
	uint8_t a[16];
	size_t n = 0;

	while (rv_line(&text, line, sizeof(line))) {
		if (sscanf(line, "%39s %x %39s %x %39s %x %x %x %x", dst, &plen,
			   src, &splen, nh, &metric, &ref, &use, &flags) != 9 ||
		    !(flags & RV_RTF_LOCAL) || plen > 128 ||
		    rv_hex_addr6(dst, a))
			continue;
		rv_net_put(out, cap, n++, AF_INET6, a, plen);
	}
	return n;
}

int rv_net_has(const struct rv_net *nets, size_t n, const struct rv_addr *a)
{
	struct rv_addr x = *a;
	size_t i;

	if (rv_addr_norm(&x))
		return 0;
	for (i = 0; i < n; i++) {
		const struct rv_net *p = &nets[i];
		unsigned full = p->len / 8, rest = p->len % 8;

		if (p->family != x.family)
			continue;
		if (memcmp(p->addr, x.addr, full))
			continue;
		if (rest && ((p->addr[full] ^ x.addr[full]) &
			     (uint8_t)(0xff00u >> rest)))
			continue;
		return 1;
	}
	return 0;
}

uint32_t rv_proof(const struct rv_net *nets, size_t n,
		  const struct rv_tuple *tu)
{
	struct rv_tuple x;
	uint32_t proof = 0;

	if (rv_tuple_norm(tu, &x))
		return 0;
	tu = &x;
	if (rv_net_has(nets, n, &tu->local))
		proof |= RV_LOCAL_HERE;
	if (!rv_net_has(nets, n, &tu->remote))
		proof |= RV_REMOTE_AWAY;
	return proof;
}

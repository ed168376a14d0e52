/* SPDX-License-Identifier: MIT */
/*
 * policy.c - the shared policy page (see policy.h).
 *
 * Writer (ubsd, the only one with a writable mapping):
 *   seq++ (odd) ; store records ; seq++ (even)
 * Reader (any process, read-only mapping):
 *   s1 = seq ; if odd retry ; copy record ; s2 = seq ; retry unless s1 == s2
 * The reader copies field by field through volatile-free memcpy between
 * two acquire loads of seq, with a fence before the second load, so a copy
 * that raced a writer is always detected and thrown away.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "policy.h"

#define PP_SIZE (UBT_SEG_HDR_SIZE + sizeof(struct ubs_policy_page))
#define PP_READ_TRIES 1000

static const uint8_t v4mapped[12] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
static const uint8_t zero16[16];

/* The layout is shared by separately built programs: keep it fixed. */
_Static_assert(sizeof(struct ubs_lst_entry) == 40, "listener entry layout");

static struct ubs_policy_page *page_of(const struct ubt_seg *s)
{
	return (struct ubs_policy_page *)(s->base + UBT_SEG_HDR_SIZE);
}

void pp_defaults(struct ubs_svc_policy *p)
{
	memset(p, 0, sizeof(*p));
	p->accel = 1;
	p->spin_us = 50;
	p->ring_kib = 1024;
	p->mem_quota = 0;
}

int pp_create(struct ubt_seg *s)
{
	struct ubs_svc_policy d;
	int err = ubt_seg_create(s, PP_SIZE, UBT_SEG_POLICY, "ubs-policy");

	if (err)
		return err;
	pp_defaults(&d);
	return pp_publish(s, &d, NULL, 0);
}

/* Inside the seqlock: store the exclude rules, zeroing unused slots. */
static void store_excl(struct ubs_policy_page *pg,
		       const struct ubs_excl_rule *excl, uint32_t nexcl)
{
	if (nexcl)
		memcpy(pg->excl, excl, sizeof(*excl) * nexcl);
	memset(pg->excl + nexcl, 0,
	       sizeof(*excl) * (UBS_POLICY_MAX_EXCL - nexcl));
	pg->nexcl = nexcl;
}

static int publish(struct ubt_seg *s, const struct ubs_svc_policy *deflt,
		   const struct ubs_svc_policy *svc, uint32_t n,
		   const struct ubs_excl_rule *excl, uint32_t nexcl,
		   int with_excl)
{
	struct ubs_policy_page *pg = page_of(s);
	uint64_t seq;

	if (n > UBS_POLICY_MAX_SVC || nexcl > UBS_POLICY_MAX_EXCL)
		return -E2BIG;
	seq = atomic_load_explicit(&pg->seq, memory_order_relaxed);
	atomic_store_explicit(&pg->seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	pg->deflt = *deflt;
	pg->deflt.name[0] = '\0';
	if (n)
		memcpy(pg->svc, svc, sizeof(*svc) * n);
	pg->nsvc = n;
	if (with_excl)
		store_excl(pg, excl, nexcl);
	atomic_store_explicit(&pg->seq, seq + 2, memory_order_release);
	return 0;
}

int pp_publish(struct ubt_seg *s, const struct ubs_svc_policy *deflt,
	       const struct ubs_svc_policy *svc, uint32_t n)
{
	return publish(s, deflt, svc, n, NULL, 0, 0);
}

int pp_publish_ex(struct ubt_seg *s, const struct ubs_svc_policy *deflt,
		  const struct ubs_svc_policy *svc, uint32_t n,
		  const struct ubs_excl_rule *excl, uint32_t nexcl)
{
	return publish(s, deflt, svc, n, excl, nexcl, 1);
}

/*
 * Normalise a listener entry: an IPv4-mapped IPv6 address becomes
 * AF_INET, bytes and flags its family does not use are zeroed.  Returns 0
 * or -EINVAL (neither AF_INET nor AF_INET6).
 */
static int lst_norm(struct ubs_lst_entry *e)
{
	if (e->family == AF_INET6 &&
	    memcmp(e->addr, v4mapped, sizeof(v4mapped)) == 0) {
		e->family = AF_INET;
		memmove(e->addr, e->addr + sizeof(v4mapped), 4);
	}
	if (e->family == AF_INET) {
		memset(e->addr + 4, 0, sizeof(e->addr) - 4);
		e->v6only = 0;
		return 0;
	}
	if (e->family == AF_INET6) {
		e->v6only = e->v6only != 0;
		return 0;
	}
	return -EINVAL;
}

int pp_publish_listeners(struct ubt_seg *s, const struct ubs_lst_entry *l,
			 uint32_t n)
{
	struct ubs_policy_page *pg = page_of(s);
	struct ubs_lst_entry e;
	uint64_t seq;
	uint32_t i;

	if (n > UBS_POLICY_MAX_LST)
		return -E2BIG;
	/* All checked before the update: a refusal changes nothing. */
	for (i = 0; i < n; i++) {
		e = l[i];
		if (lst_norm(&e))
			return -EINVAL;
	}
	seq = atomic_load_explicit(&pg->seq, memory_order_relaxed);
	atomic_store_explicit(&pg->seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	for (i = 0; i < n; i++) {
		e = l[i];
		lst_norm(&e);
		pg->lst[i] = e;
	}
	memset(pg->lst + n, 0, sizeof(pg->lst[0]) * (UBS_POLICY_MAX_LST - n));
	pg->nlst = n;
	atomic_store_explicit(&pg->seq, seq + 2, memory_order_release);
	return 0;
}

int pp_map(struct ubt_seg *s, int fd)
{
	int err = ubt_seg_map(s, fd, UBT_SEG_POLICY);

	if (err)
		return err;
	/* Every table, listeners last, must lie inside the mapping. */
	if (s->size < PP_SIZE) {
		s->fd = -1;             /* the caller keeps fd on failure */
		ubt_seg_unmap(s);
		return -EPROTO;
	}
	return 0;
}

uint64_t pp_generation(const struct ubt_seg *s)
{
	return atomic_load_explicit(&page_of(s)->seq, memory_order_acquire) / 2;
}

/* Seqlock read side: the sequence to hand to read_changed(); odd while
 * the writer is inside (retry). */
static uint64_t read_begin(const struct ubs_policy_page *pg)
{
	return atomic_load_explicit(&((struct ubs_policy_page *)pg)->seq,
				    memory_order_acquire);
}

/* Did a writer run since read_begin() returned s1?  Then what was copied
 * in between may be torn: throw it away. */
static int read_changed(const struct ubs_policy_page *pg, uint64_t s1)
{
	atomic_thread_fence(memory_order_acquire);
	return atomic_load_explicit(&((struct ubs_policy_page *)pg)->seq,
				    memory_order_relaxed) != s1;
}

int pp_lookup(const struct ubt_seg *s, const char *name,
	      struct ubs_svc_policy *out)
{
	return pp_lookup_hint(s, name, out, NULL);
}

int pp_lookup_hint(const struct ubt_seg *s, const char *name,
		   struct ubs_svc_policy *out, uint32_t *hint)
{
	const struct ubs_policy_page *pg = page_of(s);
	int tries;

	for (tries = 0; tries < PP_READ_TRIES; tries++) {
		uint64_t s1;
		uint32_t i, n;
		int found = 0;

		s1 = read_begin(pg);
		if (s1 & 1)
			continue;
		n = pg->nsvc;
		if (n > UBS_POLICY_MAX_SVC)
			n = UBS_POLICY_MAX_SVC; /* torn or hostile: checked below */
		*out = pg->deflt;
		/* Where the name was last time first; a scan otherwise. */
		if (hint && *hint < n && name &&
		    strncmp(pg->svc[*hint].name, name, CTL_NAME_MAX) == 0) {
			*out = pg->svc[*hint];
			found = 1;
		}
		for (i = 0; !found && name && name[0] && i < n; i++) {
			if (strncmp(pg->svc[i].name, name, CTL_NAME_MAX) == 0) {
				*out = pg->svc[i];
				found = 1;
				if (hint)
					*hint = i;
			}
		}
		if (read_changed(pg, s1))
			continue;
		if (pg->nsvc > UBS_POLICY_MAX_SVC)
			return -EPROTO;
		out->name[CTL_NAME_MAX - 1] = '\0';
		return found;
	}
	return -EAGAIN;
}

/* Do the first bits of a and b agree?  bits <= 128. */
static int prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;

	if (memcmp(a, b, full) != 0)
		return 0;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff00u >> rest);

		if ((a[full] ^ b[full]) & mask)
			return 0;
	}
	return 1;
}

/* Does rule r (read from the page: maybe torn, so bounded) match? */
static int excl_match(const struct ubs_excl_rule *r, const char *service,
		      int family, const uint8_t *a, uint16_t port)
{
	switch (r->kind) {
	case UBS_EXCL_PROGRAM:
		return service && service[0] &&
		       strncmp(r->program, service, CTL_NAME_MAX) == 0;
	case UBS_EXCL_PORT:
		return port >= r->port_lo && port <= r->port_hi;
	case UBS_EXCL_ADDR:
		if (!a || r->family != family)
			return 0;
		if (r->prefix > (family == AF_INET ? 32 : 128))
			return 0;
		if (r->port_hi && (port < r->port_lo || port > r->port_hi))
			return 0;
		return prefix_eq(r->addr, a, r->prefix);
	default:
		return 0;
	}
}

/* What a table scan compares each entry with (normalised address). */
struct pp_query {
	const char *service;
	int family;
	const uint8_t *a;
	uint16_t port;
	uint64_t netns, board;          /* pp_listener_board */
};

/* A v4-mapped IPv6 address is its IPv4 address. */
static void query_addr(struct pp_query *q, int family, const void *addr)
{
	q->family = family;
	q->a = addr;
	if (q->a && family == AF_INET6 &&
	    memcmp(q->a, v4mapped, sizeof(v4mapped)) == 0) {
		q->family = AF_INET;
		q->a += sizeof(v4mapped);
	}
}

/*
 * Does any of the first *count entries match (match(pg, i, q))?  One
 * seqlock read of a table whose count lives in the page: the count is
 * loaded once (the bound checked is the bound used), clamped to max when
 * torn, and an out-of-range count in a stable copy is -EPROTO.  Returns
 * 1, 0, -EAGAIN (no stable copy) or -EPROTO.
 */
static int pp_scan(const struct ubs_policy_page *pg, const uint32_t *count,
		   uint32_t max, int (*match)(const struct ubs_policy_page *,
					      uint32_t, const struct pp_query *),
		   const struct pp_query *q)
{
	for (int tries = 0; tries < PP_READ_TRIES; tries++) {
		uint64_t s1 = read_begin(pg);
		uint32_t i, n;
		int found = 0;

		if (s1 & 1)
			continue;
		n = *(const volatile uint32_t *)count;
		for (i = 0; !found && i < n && i < max; i++)
			found = match(pg, i, q);
		if (read_changed(pg, s1))
			continue;
		return n > max ? -EPROTO : found;
	}
	return -EAGAIN;
}

static int excl_entry(const struct ubs_policy_page *pg, uint32_t i,
		      const struct pp_query *q)
{
	return excl_match(&pg->excl[i], q->service, q->family, q->a, q->port);
}

int pp_excluded(const struct ubt_seg *s, const char *service, int family,
		const void *addr, uint16_t port)
{
	const struct ubs_policy_page *pg = page_of(s);
	struct pp_query q = { .service = service, .port = port };

	query_addr(&q, family, family == AF_INET || family == AF_INET6 ?
		   addr : NULL);
	return pp_scan(pg, &pg->nexcl, UBS_POLICY_MAX_EXCL, excl_entry, &q);
}

/*
 * Could a connect to (family, a, port), normalised, reach listener entry
 * e?  e is read from the page (maybe torn, so only compared): the same
 * port, and the same address or a wildcard that takes the family.
 */
static int lst_reaches(const struct ubs_lst_entry *e, int family,
		       const uint8_t *a, uint16_t port)
{
	size_t len = family == AF_INET ? 4 : 16;

	if (e->port != port)
		return 0;
	if (e->family == family)
		return memcmp(e->addr, zero16, len) == 0 ||
		       memcmp(e->addr, a, len) == 0;
	/* A dual-stack :: listener also takes IPv4. */
	return e->family == AF_INET6 && family == AF_INET && !e->v6only &&
	       memcmp(e->addr, zero16, sizeof(zero16)) == 0;
}

static int lst_entry(const struct ubs_policy_page *pg, uint32_t i,
		     const struct pp_query *q)
{
	return lst_reaches(&pg->lst[i], q->family, q->a, q->port);
}

int pp_listener_maybe(const struct ubt_seg *s, int family, const void *addr,
		      uint16_t port)
{
	const struct ubs_policy_page *pg = page_of(s);
	struct pp_query q = { .port = port };

	if (family != AF_INET && family != AF_INET6)
		return -EAFNOSUPPORT;
	if (!addr)
		return -EINVAL;
	query_addr(&q, family, addr);
	return pp_scan(pg, &pg->nlst, UBS_POLICY_MAX_LST, lst_entry, &q);
}

/*
 * pp_listener_board's scan: 1 when some listener of q->netns could take
 * the connection and none that could is of another board (or of none).
 * One seqlock read, bounded as pp_scan, whose stop at the first match it
 * cannot use: every candidate must agree.
 */
static int lst_board_scan(const struct ubs_policy_page *pg,
			  const struct pp_query *q)
{
	for (int tries = 0; tries < PP_READ_TRIES; tries++) {
		uint64_t s1 = read_begin(pg);
		int seen = 0, other = 0;
		uint32_t i, n;

		if (s1 & 1)
			continue;
		n = *(const volatile uint32_t *)&pg->nlst;
		for (i = 0; !other && i < n && i < UBS_POLICY_MAX_LST; i++) {
			const struct ubs_lst_entry *e = &pg->lst[i];

			if (e->netns != q->netns ||
			    !lst_reaches(e, q->family, q->a, q->port))
				continue;
			if (e->board == q->board)
				seen = 1;
			else
				other = 1;
		}
		if (read_changed(pg, s1))
			continue;
		if (n > UBS_POLICY_MAX_LST)
			return -EPROTO;
		return seen && !other;
	}
	return -EAGAIN;
}

int pp_listener_board(const struct ubt_seg *s, int family, const void *addr,
		      uint16_t port, uint64_t netns, uint64_t board)
{
	struct pp_query q = { .port = port, .netns = netns, .board = board };

	if (family != AF_INET && family != AF_INET6)
		return -EAFNOSUPPORT;
	if (!addr)
		return -EINVAL;
	if (!board)
		return 0;
	query_addr(&q, family, addr);
	return lst_board_scan(page_of(s), &q);
}

/* SPDX-License-Identifier: MIT */
/*
 * rendezvous.c - the daemon's matching rules: exact mirrored 4-tuple,
 * IPv4-mapped addresses, the namespace rule and ambiguity, the proof a
 * cross-namespace pair needs (both ends' proof bits, refusal at once in
 * either order, RV_NO_CROSS_NETNS switched at run time), the parsers of
 * the namespace address files and rv_proof (a stranger holding both
 * addresses told from the veth peer, loopback never paired), consumption,
 * pending requests, deadlines and staleness, listener references per
 * socket, session teardown, wildcards, capacity, intents; whether a
 * listener could have taken a request's connection (rv_listener_could:
 * wildcards where the address is local, exact addresses, dual stack,
 * other namespaces, loopback, the client's own addresses, cross_netns
 * off) and TCP at once when none could; and a long random run (random
 * proofs, flag flips and namespace address facts included) checked
 * against a naive reference model.
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "rendezvous.h"

static struct rv_addr v4(const char *s, uint16_t port)
{
	struct rv_addr a;

	memset(&a, 0, sizeof(a));
	a.family = AF_INET;
	a.port = port;
	cr_assert_eq(inet_pton(AF_INET, s, a.addr), 1);
	return a;
}

static struct rv_addr v6(const char *s, uint16_t port)
{
	struct rv_addr a;

	memset(&a, 0, sizeof(a));
	a.family = AF_INET6;
	a.port = port;
	cr_assert_eq(inet_pton(AF_INET6, s, a.addr), 1);
	return a;
}

static struct rv_tuple tup(struct rv_addr local, struct rv_addr remote)
{
	struct rv_tuple t = { .local = local, .remote = remote };

	return t;
}

static struct rv_tuple mirror(struct rv_tuple t)
{
	return tup(t.remote, t.local);
}

static void init(struct rv_table *t, uint32_t cap, uint32_t flags)
{
	struct rv_limits lim = {
		.listeners = cap, .holders = 2 * cap, .pubs = cap,
		.reqs = cap, .intents = cap, .stale_ms = 2000, .flags = flags,
	};

	cr_assert_eq(rv_table_init(t, &lim), 0);
}

/* The server's view of 10.0.0.2:40000 -> 10.0.0.1:80. */
static struct rv_tuple srv_tuple(void)
{
	return tup(v4("10.0.0.1", 80), v4("10.0.0.2", 40000));
}

/* Publish / request with the given proof bits. */
static struct rv_answer publish_p(struct rv_table *t, struct rv_tuple tu,
				  uint64_t netns, uint32_t proof,
				  uint64_t session, uint64_t chan, uint64_t now)
{
	struct rv_answer a;

	cr_assert_eq(rv_publish(t, &tu, netns, proof, session, chan, now, &a),
		     0);
	return a;
}

static struct rv_answer request_p(struct rv_table *t, struct rv_tuple tu,
				  uint64_t netns, uint32_t proof,
				  uint64_t session, uint64_t now,
				  uint64_t deadline)
{
	struct rv_answer a;

	cr_assert_eq(rv_request(t, &tu, netns, proof, session, now, deadline,
				NULL, &a), 0);
	return a;
}

/* Both ends proven (RV_PROVEN): only the other rules decide. */
static int publish(struct rv_table *t, struct rv_tuple tu, uint64_t netns,
		   uint64_t session, uint64_t chan, uint64_t now)
{
	return publish_p(t, tu, netns, RV_PROVEN, session, chan, now).verdict;
}

static struct rv_answer request(struct rv_table *t, struct rv_tuple tu,
				uint64_t netns, uint64_t session, uint64_t now,
				uint64_t deadline)
{
	return request_p(t, tu, netns, RV_PROVEN, session, now, deadline);
}

static int maybe(const struct rv_table *t, struct rv_addr dst)
{
	return rv_listener_maybe(t, &dst);
}

Test(rendezvous, exact_mirrored_tuple_matches)
{
	struct rv_table t;
	struct rv_answer a;

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 0xc0ffee, 0), RV_PENDING);
	a = request(&t, mirror(srv_tuple()), 1, 22, 5, 100);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 0xc0ffee);
	cr_assert_eq(a.pub_session, 11);
	cr_assert_eq(a.req_session, 22);
	cr_assert_neq(a.req_id, 0);
	rv_table_fini(&t);
}

Test(rendezvous, wrong_port_or_address_on_either_side_does_not_match)
{
	struct rv_table t;
	struct rv_tuple good = mirror(srv_tuple()), bad[4];
	int i;

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 7, 0), RV_PENDING);
	for (i = 0; i < 4; i++)
		bad[i] = good;
	bad[0].local.port++;                    /* client port */
	bad[1].local.addr[3]++;                 /* client address */
	bad[2].remote.port++;                   /* server port */
	bad[3].remote.addr[3]++;                /* server address */
	for (i = 0; i < 4; i++)
		cr_assert_eq(request(&t, bad[i], 1, 22, 1, 1).verdict, RV_TCP,
			     "perturbation %d matched", i);
	/* The publication is still there for the right request. */
	cr_assert_eq(request(&t, good, 1, 22, 1, 1).verdict, RV_MATCH);
	rv_table_fini(&t);
}

Test(rendezvous, ipv4_mapped_ipv6_equals_ipv4)
{
	struct rv_table t;
	struct rv_tuple mapped = tup(v6("::ffff:10.0.0.1", 80),
				     v6("::ffff:10.0.0.2", 40000));
	struct rv_tuple plain = srv_tuple();
	struct rv_answer a;

	cr_assert(rv_addr_eq(&mapped.local, &plain.local));
	init(&t, 8, 0);
	/* Dual-stack server sees mapped addresses, IPv4 client plain ones. */
	cr_assert_eq(publish(&t, mapped, 1, 11, 1, 0), RV_PENDING);
	a = request(&t, mirror(srv_tuple()), 1, 22, 0, 100);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 1);
	/* And the other way round. */
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 2, 0), RV_PENDING);
	a = request(&t, mirror(mapped), 1, 22, 0, 100);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 2);
	rv_table_fini(&t);
}

Test(rendezvous, same_netns_candidate_wins)
{
	struct rv_table t;
	struct rv_answer a;

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	cr_assert_eq(publish(&t, srv_tuple(), 2, 12, 200, 0), RV_PENDING);
	a = request(&t, mirror(srv_tuple()), 2, 22, 0, 100);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 200);
	a = request(&t, mirror(srv_tuple()), 1, 21, 0, 100);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 100);
	rv_table_fini(&t);
}

Test(rendezvous, two_other_netns_candidates_are_ambiguous)
{
	struct rv_table t;
	struct rv_answer a;

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	cr_assert_eq(publish(&t, srv_tuple(), 2, 12, 200, 0), RV_PENDING);
	a = request(&t, mirror(srv_tuple()), 3, 23, 0, 100);
	cr_assert_eq(a.verdict, RV_TCP, "ambiguous must be TCP, got %d",
		     a.verdict);
	/* Nothing was consumed. */
	cr_assert_eq(request(&t, mirror(srv_tuple()), 1, 21, 0, 100).chan_id,
		     100);
	rv_table_fini(&t);
}

Test(rendezvous, single_cross_netns_candidate_matches)
{
	struct rv_table t;
	struct rv_answer a;

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	a = request(&t, mirror(srv_tuple()), 2, 22, 0, 100);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 100);
	rv_table_fini(&t);
}

Test(rendezvous, cross_netns_refused_when_requester_netns_has_the_listener)
{
	struct rv_table t;
	struct rv_addr any = v4("0.0.0.0", 80);
	struct rv_answer a;

	init(&t, 8, 0);
	/* Netns 2 listens on the port itself: its client's connection may
	 * have landed there, so netns 1's publication is not proof. */
	cr_assert_eq(rv_listener_add(&t, 500, 2, &any, 0, 42), 1);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	a = request(&t, mirror(srv_tuple()), 2, 22, 0, 100);
	cr_assert_eq(a.verdict, RV_PENDING);
	/* Its own server's publication arrives and wins. */
	cr_assert_eq(publish(&t, srv_tuple(), 2, 12, 200, 1), RV_MATCH);
	rv_table_fini(&t);

	init(&t, 8, RV_NO_CROSS_NETNS);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	cr_assert_eq(request(&t, mirror(srv_tuple()), 2, 22, 0, 0).verdict,
		     RV_TCP);
	rv_table_fini(&t);
}

Test(rendezvous, cross_netns_needs_both_ends_proven)
{
	static const uint32_t bits[4] = { 0, RV_LOCAL_HERE, RV_REMOTE_AWAY,
					  RV_PROVEN };
	struct rv_table t;
	struct rv_answer a;

	init(&t, 8, 0);
	for (int sp = 0; sp < 4; sp++) {
		for (int cp = 0; cp < 4; cp++) {
			uint64_t chan = (uint64_t)(10 * sp + cp + 1);
			int ok = bits[sp] == RV_PROVEN && bits[cp] == RV_PROVEN;

			cr_assert_eq(publish_p(&t, srv_tuple(), 1, bits[sp], 11,
					       chan, 0).verdict, RV_PENDING);
			/* Refused: TCP at once, not after the deadline. */
			a = request_p(&t, mirror(srv_tuple()), 2, bits[cp], 22,
				      0, 100);
			cr_assert_eq(a.verdict, ok ? RV_MATCH : RV_TCP,
				     "server %u client %u: verdict %d",
				     bits[sp], bits[cp], a.verdict);
			if (!ok) {
				cr_assert_eq(a.cause, RV_CAUSE_UNPROVEN);
				cr_assert_eq(rv_withdraw(&t, 11, chan), 0,
					     "refusal consumed the publication");
			}
		}
	}
	/* The same namespace needs no proof. */
	cr_assert_eq(publish_p(&t, srv_tuple(), 1, 0, 11, 99, 0).verdict,
		     RV_PENDING);
	a = request_p(&t, mirror(srv_tuple()), 1, 0, 21, 0, 100);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 99);
	rv_table_fini(&t);
}

Test(rendezvous, refused_publication_answers_the_waiting_request_at_once)
{
	struct rv_table t;
	struct rv_answer a, out[4];

	init(&t, 8, 0);
	a = request(&t, mirror(srv_tuple()), 2, 22, 0, 500);
	cr_assert_eq(a.verdict, RV_PENDING);
	/* An unproven publication from another namespace: the request can
	 * never be matched, so it is due now. */
	cr_assert_eq(publish_p(&t, srv_tuple(), 1, RV_LOCAL_HERE, 11, 100,
			       1).verdict, RV_PENDING);
	cr_assert_eq(rv_next_deadline(&t), 0);
	cr_assert_eq(rv_expire(&t, 1, out, 4), 1);
	cr_assert_eq(out[0].verdict, RV_TCP);
	cr_assert_eq(out[0].req_id, a.req_id);
	cr_assert_eq(out[0].cause, RV_CAUSE_UNPROVEN);
	cr_assert_eq(rv_withdraw(&t, 11, 100), 0);

	/* A proven one is taken by the waiting request. */
	a = request(&t, mirror(srv_tuple()), 2, 22, 2, 500);
	cr_assert_eq(a.verdict, RV_PENDING);
	a = publish_p(&t, srv_tuple(), 1, RV_PROVEN, 11, 101, 3);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(rv_next_deadline(&t), UINT64_MAX, "nothing left");

	/* An expired request reports a timeout. */
	a = request(&t, mirror(srv_tuple()), 2, 22, 4, 10);
	cr_assert_eq(rv_expire(&t, 10, out, 4), 1);
	cr_assert_eq(out[0].cause, RV_CAUSE_TIMEOUT);
	rv_table_fini(&t);
}

Test(rendezvous, cross_netns_off_refuses_at_once_and_can_be_switched)
{
	struct rv_table t;
	struct rv_addr any = v4("0.0.0.0", 80);
	struct rv_answer a, out[4];

	init(&t, 8, RV_NO_CROSS_NETNS);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	a = request(&t, mirror(srv_tuple()), 2, 22, 0, 500);
	cr_assert_eq(a.verdict, RV_TCP);
	cr_assert_eq(a.cause, RV_CAUSE_CROSS_OFF);
	/* Publication second: the waiting request is refused at once. */
	a = request(&t, mirror(tup(v4("10.0.0.1", 81),
				   v4("10.0.0.2", 40000))), 2, 22, 0, 500);
	cr_assert_eq(a.verdict, RV_PENDING);
	cr_assert_eq(publish(&t, tup(v4("10.0.0.1", 81), v4("10.0.0.2",
			     40000)), 1, 11, 101, 1), RV_PENDING);
	cr_assert_eq(rv_expire(&t, 1, out, 4), 1);
	cr_assert_eq(out[0].req_id, a.req_id);
	cr_assert_eq(out[0].cause, RV_CAUSE_CROSS_OFF);
	/* The same namespace still matches. */
	cr_assert_eq(request(&t, mirror(srv_tuple()), 1, 21, 1, 500).verdict,
		     RV_MATCH);
	/* Switched on (a reload): the next request across matches. */
	rv_set_flags(&t, 0);
	a = request(&t, mirror(tup(v4("10.0.0.1", 81), v4("10.0.0.2",
				   40000))), 2, 22, 2, 500);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 101);
	/* Off again, with a listener near the requester: it waits for its
	 * own namespace (which may yet publish) rather than refusing. */
	rv_set_flags(&t, RV_NO_CROSS_NETNS);
	cr_assert_eq(rv_listener_add(&t, 500, 2, &any, 0, 42), 1);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 102, 3), RV_PENDING);
	a = request(&t, mirror(srv_tuple()), 2, 22, 3, 500);
	cr_assert_eq(a.verdict, RV_PENDING);
	cr_assert_eq(publish(&t, srv_tuple(), 2, 12, 200, 4), RV_MATCH);
	rv_table_fini(&t);
}

/* Local addresses of three namespaces: A (server), B (its veth peer),
 * C (holds both addresses itself, e.g. a second copy of that network). */
static const char fib_a[] =
	"Main:\n"
	"  +-- 0.0.0.0/0 3 0 5\n"
	"     +-- 10.77.0.0/24 2 0 2\n"
	"        +-- 10.77.0.0/30 2 0 2\n"
	"           |-- 10.77.0.0\n"
	"              /24 link UNICAST\n"
	"           |-- 10.77.0.1\n"
	"              /32 host LOCAL\n"
	"        |-- 10.77.0.255\n"
	"           /32 link BROADCAST\n"
	"     +-- 127.0.0.0/8 2 0 2\n"
	"        +-- 127.0.0.0/31 1 0 0\n"
	"           |-- 127.0.0.0\n"
	"              /8 host LOCAL\n"
	"           |-- 127.0.0.1\n"
	"              /32 host LOCAL\n"
	"        |-- 127.255.255.255\n"
	"           /32 link BROADCAST\n"
	"Local:\n"
	"  +-- 0.0.0.0/0 3 0 5\n"
	"     |-- 10.77.0.1\n"
	"        /32 host LOCAL tos=4\n";
static const char fib_b[] =
	"Local:\n"
	"  +-- 0.0.0.0/0 3 0 5\n"
	"     |-- 10.77.0.2\n"
	"        /32 host LOCAL\n"
	"     |-- 127.0.0.0\n"
	"        /8 host LOCAL\n";
static const char fib_c[] =
	"Local:\n"
	"  +-- 0.0.0.0/0 3 0 5\n"
	"     |-- 10.77.0.1\n"
	"        /32 host LOCAL\n"
	"     |-- 10.77.0.2\n"
	"        /32 host LOCAL\n"
	"     |-- 192.168.0.0\n"
	"        /16 host LOCAL\n";     /* AnyIP */

static size_t parse_fib(const char *text, struct rv_net *nets, size_t cap)
{
	size_t n = rv_parse_fib_trie(text, nets, cap);

	cr_assert_leq(n, cap);
	return n;
}

static int has(const struct rv_net *nets, size_t n, struct rv_addr a)
{
	return rv_net_has(nets, n, &a);
}

Test(rendezvous, fib_trie_local_entries_are_the_local_addresses)
{
	struct rv_net a[16], c[16];
	size_t na, nc;

	na = parse_fib(fib_a, a, 16);
	cr_assert_eq(na, 4, "10.77.0.1 twice, 127/8, 127.0.0.1: got %zu", na);
	cr_assert(has(a, na, v4("10.77.0.1", 0)));
	cr_assert(has(a, na, v6("::ffff:10.77.0.1", 9)), "v4-mapped");
	cr_assert(has(a, na, v4("127.0.0.1", 0)));
	cr_assert(has(a, na, v4("127.3.2.1", 0)), "127/8 is local");
	cr_assert(!has(a, na, v4("10.77.0.2", 0)));
	cr_assert(!has(a, na, v4("10.77.0.0", 0)), "UNICAST is not local");
	cr_assert(!has(a, na, v4("10.77.0.255", 0)), "nor BROADCAST");
	cr_assert(!has(a, na, v6("::1", 0)));
	/* Too little room: the count says how much is needed. */
	cr_assert_eq(rv_parse_fib_trie(fib_a, a, 1), 4);
	cr_assert_eq(rv_parse_fib_trie(fib_a, NULL, 0), 4);
	nc = parse_fib(fib_c, c, 16);
	cr_assert(has(c, nc, v4("192.168.200.7", 0)), "AnyIP prefix");
	cr_assert(!has(c, nc, v4("192.169.0.1", 0)));
	cr_assert_eq(rv_parse_fib_trie("garbage\n/32 host LOCAL\n|-- x\n"
				       "   /32 host LOCAL\n", c, 16), 0);
}

Test(rendezvous, if_inet6_and_ipv6_route_give_the_ipv6_addresses)
{
	static const char if6[] =
		"00000000000000000000000000000001 01 80 10 80       lo\n"
		"fd000000000000000000000000000002 04 40 00 82     eth0\n"
		"fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
		"short 01 02\n";
	static const char rt6[] =
		"fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
		"fd000000000000000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001     eth0\n"
		"20010db8000000000000000000000000 30 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo\n";
	struct rv_net n6[8];
	size_t n;

	n = rv_parse_if_inet6(if6, n6, 8);
	cr_assert_eq(n, 3);
	cr_assert(has(n6, n, v6("::1", 0)));
	cr_assert(has(n6, n, v6("fd00::2", 0)));
	cr_assert(has(n6, n, v6("fe80::fc:ff:fe00:1", 0)));
	cr_assert(!has(n6, n, v6("fd00::3", 0)), "/128 each, not the subnet");
	cr_assert(!has(n6, n, v4("127.0.0.1", 0)));
	n = rv_parse_ipv6_route(rt6, n6, 8);
	cr_assert_eq(n, 2, "only RTF_LOCAL routes");
	cr_assert(has(n6, n, v6("fd00::2", 0)));
	cr_assert(!has(n6, n, v6("fd00::5", 0)));
	cr_assert(has(n6, n, v6("2001:db8:0:ffff::1", 0)), "AnyIP /48");
	cr_assert(!has(n6, n, v6("2001:db9::1", 0)));
}

/*
 * The stranger of the design: A's server accepted 10.77.0.2:40000 ->
 * 10.77.0.1:80 from B over a veth.  C also holds both addresses, so the
 * same tuple exists inside C (a client and a server of its own): C's
 * client must not get A's channel; B's must.  Loopback connections never
 * pair across namespaces (each end's peer address is local to it).
 */
Test(rendezvous, proof_tells_the_veth_peer_from_a_stranger)
{
	struct rv_net a[16], b[16], c[16];
	size_t na = parse_fib(fib_a, a, 16), nb = parse_fib(fib_b, b, 16);
	size_t nc = parse_fib(fib_c, c, 16);
	struct rv_tuple st = tup(v4("10.77.0.1", 80), v4("10.77.0.2", 40000));
	struct rv_tuple lo = tup(v4("127.0.0.1", 80), v4("127.0.0.1", 40000));
	uint32_t pa = rv_proof(a, na, &st), pb, pc;
	struct rv_tuple ct = mirror(st);
	struct rv_table t;
	struct rv_answer r;

	pb = rv_proof(b, nb, &ct);
	pc = rv_proof(c, nc, &ct);
	cr_assert_eq(pa, RV_PROVEN);
	cr_assert_eq(pb, RV_PROVEN);
	cr_assert_eq(pc, RV_LOCAL_HERE, "in C the server address is local");
	cr_assert_eq(rv_proof(a, na, &lo), RV_LOCAL_HERE);
	cr_assert_eq(rv_proof(b, nb, &st), 0, "A's tuple does not fit in B");

	init(&t, 8, 0);
	cr_assert_eq(publish_p(&t, st, 1, pa, 11, 100, 0).verdict, RV_PENDING);
	r = request_p(&t, ct, 3, pc, 33, 0, 100);
	cr_assert_eq(r.verdict, RV_TCP);
	cr_assert_eq(r.cause, RV_CAUSE_UNPROVEN);
	r = request_p(&t, ct, 2, pb, 22, 0, 100);
	cr_assert_eq(r.verdict, RV_MATCH);
	cr_assert_eq(r.chan_id, 100);
	/* Loopback: the server's peer is local to it, never proven. */
	cr_assert_eq(publish_p(&t, lo, 1, rv_proof(a, na, &lo), 11, 101,
			       0).verdict, RV_PENDING);
	r = request_p(&t, mirror(lo), 2, rv_proof(b, nb, &lo), 22, 0, 100);
	cr_assert_eq(r.verdict, RV_TCP);
	rv_table_fini(&t);
}

Test(rendezvous, a_match_needs_both_sides_to_choose_each_other)
{
	struct rv_table t;
	struct rv_answer r2;

	init(&t, 8, 0);
	cr_assert_eq(request(&t, mirror(srv_tuple()), 2, 22, 0, 100).verdict,
		     RV_PENDING);
	r2 = request(&t, mirror(srv_tuple()), 3, 23, 0, 100);
	/* Netns 1 publishes: two foreign requests, ambiguous: kept. */
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 1), RV_PENDING);
	cr_assert_eq(rv_request_cancel(&t, 23, r2.req_id), 0);
	/* Netns 4 publishes: its only candidate is the netns 2 request, but
	 * that request now sees two foreign publications: no match. */
	cr_assert_eq(publish(&t, srv_tuple(), 4, 14, 400, 2), RV_PENDING);
	rv_table_fini(&t);
}

Test(rendezvous, publication_is_consumed_once)
{
	struct rv_table t;

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	cr_assert_eq(request(&t, mirror(srv_tuple()), 1, 22, 0, 100).verdict,
		     RV_MATCH);
	cr_assert_eq(request(&t, mirror(srv_tuple()), 1, 23, 0, 0).verdict,
		     RV_TCP);
	cr_assert_eq(request(&t, mirror(srv_tuple()), 2, 24, 0, 0).verdict,
		     RV_TCP);
	rv_table_fini(&t);
}

Test(rendezvous, pending_request_answered_by_later_publication)
{
	struct rv_table t;
	struct rv_answer a, p;
	struct rv_tuple st = srv_tuple();

	init(&t, 8, 0);
	a = request(&t, mirror(st), 1, 22, 0, 100);
	cr_assert_eq(a.verdict, RV_PENDING);
	cr_assert_eq(rv_next_deadline(&t), 100);
	cr_assert_eq(rv_publish(&t, &st, 1, RV_PROVEN, 11, 77, 50, &p), 0);
	cr_assert_eq(p.verdict, RV_MATCH);
	cr_assert_eq(p.req_id, a.req_id);
	cr_assert_eq(p.req_session, 22);
	cr_assert_eq(p.chan_id, 77);
	cr_assert_eq(p.pub_session, 11);
	cr_assert_eq(rv_next_deadline(&t), UINT64_MAX, "nothing left");
	rv_table_fini(&t);
}

Test(rendezvous, pending_request_past_deadline_expires_as_tcp)
{
	struct rv_table t;
	struct rv_answer a, out[4];

	init(&t, 8, 0);
	a = request(&t, mirror(srv_tuple()), 1, 22, 0, 100);
	cr_assert_eq(a.verdict, RV_PENDING);
	cr_assert_eq(rv_expire(&t, 99, out, 4), 0);
	cr_assert_eq(rv_expire(&t, 100, out, 4), 1);
	cr_assert_eq(out[0].verdict, RV_TCP);
	cr_assert_eq(out[0].req_id, a.req_id);
	cr_assert_eq(out[0].req_session, 22);
	/* A late publication finds nobody. */
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 5, 101), RV_PENDING);
	rv_table_fini(&t);
}

Test(rendezvous, stale_publications_are_withdrawn)
{
	struct rv_table t;
	struct rv_answer out[4];

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 9, 1000), RV_PENDING);
	cr_assert_eq(rv_next_deadline(&t), 3000);
	cr_assert_eq(rv_expire(&t, 2999, out, 4), 0);
	/* Stale is stale even before the sweep. */
	cr_assert_eq(request(&t, mirror(srv_tuple()), 1, 22, 3000, 3000).verdict,
		     RV_TCP);
	cr_assert_eq(rv_expire(&t, 3000, out, 4), 1);
	cr_assert_eq(out[0].verdict, RV_WITHDRAWN);
	cr_assert_eq(out[0].chan_id, 9);
	cr_assert_eq(out[0].pub_session, 11);
	cr_assert_eq(rv_expire(&t, 9000, out, 4), 0);
	rv_table_fini(&t);
}

Test(rendezvous, superseded_entries_are_reported_at_once)
{
	struct rv_table t;
	struct rv_answer a, out[4];

	init(&t, 8, 0);
	/* Same tuple, same netns: the older connection is gone. */
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 1, 0), RV_PENDING);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 2, 10), RV_PENDING);
	cr_assert_eq(rv_next_deadline(&t), 0);
	a = request(&t, mirror(srv_tuple()), 1, 22, 10, 10);
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 2);
	cr_assert_eq(rv_expire(&t, 10, out, 4), 1);
	cr_assert_eq(out[0].verdict, RV_WITHDRAWN);
	cr_assert_eq(out[0].chan_id, 1);
	rv_table_fini(&t);
}

Test(rendezvous, listener_lives_while_any_holder_remains)
{
	struct rv_table t;
	struct rv_addr la = v4("10.0.0.1", 80);

	init(&t, 8, 0);
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 1), 1);
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 2), 0);
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 2), 0, "idempotent");
	cr_assert_eq(rv_listener_list(&t, NULL, 0), 1);
	/* Old master exits; the worker still holds the socket. */
	cr_assert_eq(rv_session_gone(&t, 1), 0);
	cr_assert_eq(rv_listener_maybe(&t, &la), 1);
	cr_assert_eq(rv_listener_drop(&t, 900, 1), -ENOENT);
	cr_assert_eq(rv_listener_drop(&t, 900, 2), 1);
	cr_assert_eq(rv_listener_maybe(&t, &la), 0);
	cr_assert_eq(rv_listener_list(&t, NULL, 0), 0);
	/* Same again with session teardown as the last step. */
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 3), 1);
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 4), 0);
	cr_assert_eq(rv_listener_drop(&t, 900, 3), 0);
	cr_assert_eq(rv_session_gone(&t, 4), 1);
	cr_assert_eq(rv_listener_maybe(&t, &la), 0);
	/* A known inode with another identity is a new socket: the old
	 * holders' claims were about a socket that no longer exists. */
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 5), 1);
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 6), 0);
	la.port = 8080;
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 6), 1);
	cr_assert_eq(rv_listener_drop(&t, 900, 5), -ENOENT);
	cr_assert_eq(rv_listener_drop(&t, 900, 6), 1);
	rv_table_fini(&t);
}

/* The board of a listener's holders: the first one's, 0 once holders of
 * different boards share it, and forgotten with a replaced socket. */
Test(rendezvous, listener_board_is_its_holders_common_board)
{
	struct rv_listener_info info[2];
	struct rv_table t;
	struct rv_addr la = v4("10.0.0.1", 80);

	init(&t, 8, 0);
	cr_assert_eq(rv_listener_board(&t, 900, 7), -ENOENT);
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 1), 1);
	cr_assert_eq(rv_listener_list(&t, info, 2), 1);
	cr_assert_eq(info[0].board, 0, "none told yet");
	cr_assert_eq(rv_listener_board(&t, 900, 7), 0);
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 2), 0);
	cr_assert_eq(rv_listener_board(&t, 900, 7), 0);
	cr_assert_eq(rv_listener_list(&t, info, 2), 1);
	cr_assert_eq(info[0].board, 0, "no holder accepts yet");
	cr_assert_eq(rv_listener_accepting(&t, 900, 9), -ENOENT,
		     "not a holder");
	cr_assert_eq(rv_listener_accepting(&t, 901, 2), -ENOENT);
	cr_assert_eq(rv_listener_accepting(&t, 900, 2), 0);
	cr_assert_eq(rv_listener_list(&t, info, 2), 1);
	cr_assert_eq(info[0].board, 7, "same uid, same board");
	/* A holder of another board (another uid): none, for good. */
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 3), 0);
	cr_assert_eq(rv_listener_board(&t, 900, 8), 0);
	rv_listener_list(&t, info, 2);
	cr_assert_eq(info[0].board, 0);
	cr_assert_eq(rv_listener_board(&t, 900, 7), 0);
	cr_assert_eq(rv_session_gone(&t, 3), 0);
	rv_listener_list(&t, info, 2);
	cr_assert_eq(info[0].board, 0);
	/* The inode named again as another socket: a new listener. */
	la.port = 8080;
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 4), 1);
	rv_listener_list(&t, info, 2);
	cr_assert_eq(info[0].board, 0);
	cr_assert_eq(rv_listener_board(&t, 900, 9), 0);
	rv_listener_list(&t, info, 2);
	cr_assert_eq(info[0].board, 0, "the new one: nobody accepts yet");
	cr_assert_eq(rv_listener_accepting(&t, 900, 4), 0);
	rv_listener_list(&t, info, 2);
	cr_assert_eq(info[0].board, 9);
	/* A holder of no board makes it none too. */
	cr_assert_eq(rv_listener_add(&t, 900, 1, &la, 0, 5), 0);
	cr_assert_eq(rv_listener_board(&t, 900, 0), 0);
	rv_listener_list(&t, info, 2);
	cr_assert_eq(info[0].board, 0);
	rv_table_fini(&t);
}

Test(rendezvous, session_gone_removes_publications_and_requests)
{
	struct rv_table t;
	struct rv_answer out[4];
	struct rv_tuple other = tup(v4("10.0.0.1", 81), v4("10.0.0.2", 40001));

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	cr_assert_eq(request(&t, mirror(other), 1, 11, 0, 100).verdict,
		     RV_PENDING);
	cr_assert_eq(publish(&t, tup(v4("10.0.0.1", 82), v4("10.0.0.2", 1)),
			     1, 12, 300, 0), RV_PENDING);
	cr_assert_eq(rv_session_gone(&t, 11), 0);
	cr_assert_eq(request(&t, mirror(srv_tuple()), 1, 22, 0, 0).verdict,
		     RV_TCP);
	cr_assert_eq(publish(&t, other, 1, 13, 200, 0), RV_PENDING);
	/* Only the other session's entries remain to expire. */
	cr_assert_eq(rv_expire(&t, 100000, out, 4), 2);
	cr_assert(out[0].chan_id != 100 && out[1].chan_id != 100);
	cr_assert_eq(out[0].verdict, RV_WITHDRAWN);
	cr_assert_eq(out[1].verdict, RV_WITHDRAWN);
	rv_table_fini(&t);
}

/*
 * The sweeps (rv_expire, rv_next_deadline, rv_session_gone, withdraw and
 * cancel) walk the list of stored entries: after every way out of a full
 * table they must see exactly the entries left, and the table must fill
 * again to capacity.
 */
Test(rendezvous, sweeps_see_exactly_the_stored_entries)
{
	enum { CAP = 16 };
	struct rv_table t;
	struct rv_answer a, out[2 * CAP];
	uint64_t req_id[CAP];
	size_t n;

	init(&t, CAP, 0);
	for (int round = 0; round < 3; round++) {
		uint64_t now = 10000 * (uint64_t)round;
		struct rv_answer ans;
		struct rv_tuple extra = tup(v4("10.0.0.1", 80),
					    v4("10.0.0.2", 999));

		/* Publications of sessions 1 and 2 interleaved (stale at
		 * now + i + 2000); requests of sessions 3 and 4 (due at
		 * now + 100 + i); no two of them match. */
		for (int i = 0; i < CAP; i++) {
			struct rv_tuple pu = tup(v4("10.0.0.1", 80),
						 v4("10.0.0.2", 1000 + i));
			struct rv_tuple rq = tup(v4("10.0.1.2", 2000 + i),
						 v4("10.0.1.1", 81));

			cr_assert_eq(publish(&t, pu, 1, 1 + i % 2, 100 + i,
					     now + i), RV_PENDING);
			a = request(&t, rq, 1, 3 + i % 2, now + i,
				    now + 100 + i);
			cr_assert_eq(a.verdict, RV_PENDING);
			req_id[i] = a.req_id;
		}
		cr_assert_eq(rv_publish(&t, &extra, 1, RV_PROVEN, 1, 99, now,
					&ans), -ENOSPC, "publications full");
		cr_assert_eq(rv_next_deadline(&t), now + 100);

		/* Out in every way: session 2's publications with it,
		 * session 3's requests by cancel (every other one from the
		 * end), session 1's first publication by withdraw. */
		cr_assert_eq(rv_session_gone(&t, 2), 0);
		for (int i = CAP - 2; i >= 0; i -= 2)
			cr_assert_eq(rv_request_cancel(&t, 3, req_id[i]), 0);
		cr_assert_eq(rv_withdraw(&t, 1, 100), 0);
		cr_assert_eq(rv_withdraw(&t, 1, 100), -ENOENT);
		/* Left: session 1's publications 2, 4, ... (7) and session
		 * 4's requests 1, 3, ... (8). */
		cr_assert_eq(rv_next_deadline(&t), now + 101);
		cr_assert_eq(rv_expire(&t, now + 100, out, 2 * CAP), 0);
		n = rv_expire(&t, now + 100 + CAP, out, 2 * CAP);
		cr_assert_eq(n, CAP / 2, "the requests of session 4");
		for (size_t k = 0; k < n; k++) {
			cr_assert_eq(out[k].verdict, RV_TCP);
			cr_assert_eq(out[k].req_session, 4);
			cr_assert_eq(out[k].cause, RV_CAUSE_TIMEOUT);
		}
		cr_assert_eq(rv_next_deadline(&t), now + 2 + 2000);
		n = rv_expire(&t, now + 5000, out, 3);
		cr_assert_eq(n, 3, "capped");
		n += rv_expire(&t, now + 5000, out + 3, 2 * CAP);
		cr_assert_eq(n, CAP / 2 - 1, "session 1's publications");
		for (size_t k = 0; k < n; k++) {
			cr_assert_eq(out[k].verdict, RV_WITHDRAWN);
			cr_assert_eq(out[k].pub_session, 1);
		}
		cr_assert_eq(rv_next_deadline(&t), UINT64_MAX, "empty");
		cr_assert_eq(rv_expire(&t, UINT64_MAX - 1, out, 2 * CAP), 0);
	}
	rv_table_fini(&t);
}

Test(rendezvous, wildcard_listeners_in_maybe)
{
	struct rv_table t;
	struct rv_addr any4 = v4("0.0.0.0", 80), any6 = v6("::", 81);
	struct rv_addr one = v4("10.0.0.1", 83), six = v6("fd00::1", 84);

	init(&t, 8, 0);
	cr_assert_eq(rv_listener_add(&t, 1, 1, &any4, 0, 1), 1);
	cr_assert_eq(rv_listener_add(&t, 2, 1, &any6, 0, 1), 1);
	any6.port = 82;
	cr_assert_eq(rv_listener_add(&t, 3, 1, &any6, 1, 1), 1);
	cr_assert_eq(rv_listener_add(&t, 4, 1, &one, 0, 1), 1);
	cr_assert_eq(rv_listener_add(&t, 5, 1, &six, 0, 1), 1);

	/* 0.0.0.0: any IPv4 address, not IPv6, not another port. */
	cr_assert_eq(rv_listener_maybe(&t, &(struct rv_addr){ .family = 0 }), -EAFNOSUPPORT);
	cr_assert(maybe(&t, v4("1.2.3.4", 80)));
	cr_assert(maybe(&t, v6("::ffff:1.2.3.4", 80)));
	cr_assert(!maybe(&t, v6("fd00::9", 80)));
	cr_assert(!maybe(&t, v4("1.2.3.4", 85)));
	/* :: dual-stack: IPv6 and IPv4. */
	cr_assert(maybe(&t, v6("fd00::9", 81)));
	cr_assert(maybe(&t, v4("1.2.3.4", 81)));
	/* :: v6only: IPv6 only. */
	cr_assert(maybe(&t, v6("fd00::9", 82)));
	cr_assert(!maybe(&t, v4("1.2.3.4", 82)));
	cr_assert(!maybe(&t, v6("::ffff:1.2.3.4", 82)));
	/* Specific addresses: only themselves. */
	cr_assert(maybe(&t, v4("10.0.0.1", 83)));
	cr_assert(!maybe(&t, v4("10.0.0.2", 83)));
	cr_assert(maybe(&t, v6("fd00::1", 84)));
	cr_assert(!maybe(&t, v6("fd00::2", 84)));
	rv_table_fini(&t);
}

/* ---- "could a listener have taken it?" (rv_listener_could) ------------- */

/* A fake rv_local: what is local where.  Addresses not listed are not
 * local; ans -1 is "cannot tell".  Every question is counted. */
struct fake_local {
	struct {
		uint64_t ns;
		struct rv_addr a;
		int ans;
	} f[8];
	int n, calls;
};

static int fake_fn(void *arg, uint64_t netns, const struct rv_addr *a)
{
	struct fake_local *x = arg;
	struct rv_addr p = *a;

	x->calls++;
	cr_assert_eq(rv_addr_norm(&p), 0);
	cr_assert(!memcmp(&p, a, sizeof(p)), "the oracle gets normalised "
		  "addresses");
	for (int i = 0; i < x->n; i++) {
		struct rv_addr q = x->f[i].a;

		q.port = a->port;
		if (x->f[i].ns == netns && rv_addr_eq(&q, a))
			return x->f[i].ans;
	}
	return 0;
}

static void fake_set(struct fake_local *x, uint64_t ns, struct rv_addr a,
		     int ans)
{
	cr_assert_lt(x->n, 8);
	x->f[x->n].ns = ns;
	x->f[x->n].a = a;
	x->f[x->n].ans = ans;
	x->n++;
}

/* rv_listener_could from ns to dst; *cause gets the cause of a 0. */
static int could(const struct rv_table *t, struct fake_local *x,
		 uint64_t ns, struct rv_addr dst, uint32_t *cause)
{
	struct rv_local l = { fake_fn, x };
	uint32_t c = RV_CAUSE_NONE;
	int r = rv_listener_could(t, ns, &dst, &l, &c);

	if (cause)
		*cause = c;
	cr_assert(r == 0 || c == RV_CAUSE_NONE, "cause set on a yes");
	return r;
}

/* A request from ns (client 10.9.9.9:5555) to dst, with the fake. */
static struct rv_answer request_l(struct rv_table *t, struct fake_local *x,
				  uint64_t ns, struct rv_addr dst)
{
	struct rv_local l = { fake_fn, x };
	struct rv_tuple tu = tup(v4("10.9.9.9", 5555), dst);
	struct rv_answer a;

	if (dst.family == AF_INET6 && dst.addr[0] != 0)
		tu.local = v6("fd09::9", 5555);
	cr_assert_eq(rv_request(t, &tu, ns, RV_PROVEN, 22, 0, 500, &l, &a), 0);
	return a;
}

Test(rendezvous, request_with_no_listener_at_all_gets_tcp_at_once)
{
	struct fake_local x = { .n = 0 };
	struct rv_table t;
	struct rv_answer a;

	init(&t, 8, 0);
	fake_set(&x, 1, v4("10.0.0.1", 0), 1);
	a = request_l(&t, &x, 1, v4("10.0.0.1", 80));
	cr_assert_eq(a.verdict, RV_TCP);
	cr_assert_eq(a.cause, RV_CAUSE_NO_LISTENER);
	cr_assert_str_eq(rv_cause_str(a.cause), "no local listener");
	cr_assert_neq(a.req_id, 0);
	cr_assert_eq(x.calls, 0, "no listener: nothing to ask");
	cr_assert_eq(t.reqs.count, 0);
	/* Without rv_local the request waits, as it always did. */
	cr_assert_eq(request(&t, mirror(srv_tuple()), 1, 22, 0, 500).verdict,
		     RV_PENDING);
	/* A publication waiting for it: matched, the oracle not asked. */
	cr_assert_eq(publish(&t, tup(v4("10.0.0.1", 80), v4("10.9.9.9", 5555)),
			     1, 11, 7, 0), RV_PENDING);
	a = request_l(&t, &x, 1, v4("10.0.0.1", 80));
	cr_assert_eq(a.verdict, RV_MATCH);
	cr_assert_eq(a.chan_id, 7);
	cr_assert_eq(x.calls, 0);
	/* Past its deadline with no candidate: "no publication", as ever. */
	{
		struct rv_local l = { fake_fn, &x };
		struct rv_tuple tu = mirror(srv_tuple());

		cr_assert_eq(rv_request(&t, &tu, 1, RV_PROVEN, 22, 10, 10, &l,
					&a), 0);
		cr_assert_eq(a.verdict, RV_TCP);
		cr_assert_eq(a.cause, RV_CAUSE_NO_PEER);
	}
	rv_table_fini(&t);
}

/* The reported problem: a local nginx on 0.0.0.0:80, a client of the same
 * namespace connecting to a remote host's port 80. */
Test(rendezvous, wildcard_listener_counts_only_where_the_address_is_local)
{
	struct fake_local x = { .n = 0 };
	struct rv_addr any4 = v4("0.0.0.0", 80);
	struct rv_table t;
	struct rv_answer a;
	uint32_t c;

	init(&t, 8, 0);
	cr_assert_eq(rv_listener_add(&t, 1, 1, &any4, 0, 11), 1);
	fake_set(&x, 1, v4("10.0.0.1", 0), 1);
	fake_set(&x, 1, v4("127.0.0.1", 0), 1);
	fake_set(&x, 1, v4("10.0.0.3", 0), -1);         /* cannot tell */
	/* Remote: nobody here can have accepted it. */
	cr_assert_eq(could(&t, &x, 1, v4("192.0.2.7", 80), &c), 0);
	cr_assert_eq(c, RV_CAUSE_NO_LISTENER);
	a = request_l(&t, &x, 1, v4("192.0.2.7", 80));
	cr_assert_eq(a.verdict, RV_TCP);
	cr_assert_eq(a.cause, RV_CAUSE_NO_LISTENER);
	cr_assert_eq(t.reqs.count, 0);
	/* One of ours: wait for the publication. */
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 80), NULL), 1);
	cr_assert_eq(could(&t, &x, 1, v4("127.0.0.1", 80), NULL), 1);
	cr_assert_eq(could(&t, &x, 1, v6("::ffff:10.0.0.1", 80), NULL), 1);
	a = request_l(&t, &x, 1, v4("10.0.0.1", 80));
	cr_assert_eq(a.verdict, RV_PENDING);
	/* Cannot tell: wait, as before. */
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.3", 80), NULL), 1);
	/* Another port: no listener, the oracle is not even asked. */
	x.calls = 0;
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 81), NULL), 0);
	cr_assert_eq(x.calls, 0);
	/* Without an oracle every wildcard counts. */
	{
		struct rv_addr dst = v4("192.0.2.7", 80);

		cr_assert_eq(rv_listener_could(&t, 1, &dst, NULL, NULL), 1);
		dst.family = 0;
		cr_assert_eq(rv_listener_could(&t, 1, &dst, NULL, NULL),
			     -EAFNOSUPPORT);
	}
	rv_table_fini(&t);
}

Test(rendezvous, exact_listener_counts_for_its_own_address_only)
{
	struct fake_local x = { .n = 0 };
	struct rv_addr one = v4("10.0.0.1", 80), six = v6("fd00::1", 80);
	struct rv_table t;

	init(&t, 8, 0);
	cr_assert_eq(rv_listener_add(&t, 1, 1, &one, 0, 11), 1);
	cr_assert_eq(rv_listener_add(&t, 2, 1, &six, 0, 11), 1);
	/* Bound there: no question asked. */
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 80), NULL), 1);
	cr_assert_eq(could(&t, &x, 1, v6("::ffff:10.0.0.1", 80), NULL), 1);
	cr_assert_eq(could(&t, &x, 1, v6("fd00::1", 80), NULL), 1);
	cr_assert_eq(x.calls, 0);
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.2", 80), NULL), 0);
	cr_assert_eq(could(&t, &x, 1, v6("fd00::2", 80), NULL), 0);
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 81), NULL), 0);
	rv_table_fini(&t);
}

Test(rendezvous, dual_stack_and_v6only_wildcards)
{
	struct fake_local x = { .n = 0 };
	struct rv_addr dual = v6("::", 80), only6 = v6("::", 81);
	struct rv_table t;

	init(&t, 8, 0);
	cr_assert_eq(rv_listener_add(&t, 1, 1, &dual, 0, 11), 1);
	cr_assert_eq(rv_listener_add(&t, 2, 1, &only6, 1, 11), 1);
	fake_set(&x, 1, v4("10.0.0.1", 0), 1);
	fake_set(&x, 1, v6("fd00::1", 0), 1);
	/* :: takes IPv4 and IPv6, where they are local. */
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 80), NULL), 1);
	cr_assert_eq(could(&t, &x, 1, v6("::ffff:10.0.0.1", 80), NULL), 1);
	cr_assert_eq(could(&t, &x, 1, v6("fd00::1", 80), NULL), 1);
	cr_assert_eq(could(&t, &x, 1, v4("192.0.2.7", 80), NULL), 0);
	cr_assert_eq(could(&t, &x, 1, v6("2001:db8::7", 80), NULL), 0);
	/* v6only: IPv6 only. */
	cr_assert_eq(could(&t, &x, 1, v6("fd00::1", 81), NULL), 1);
	x.calls = 0;
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 81), NULL), 0);
	cr_assert_eq(could(&t, &x, 1, v6("::ffff:10.0.0.1", 81), NULL), 0);
	cr_assert_eq(x.calls, 0);
	rv_table_fini(&t);
}

/* Namespace 2 holds 10.0.0.1 behind a veth; namespace 1 is the client's. */
Test(rendezvous, listener_of_another_namespace)
{
	struct fake_local x = { .n = 0 };
	struct rv_addr any4 = v4("0.0.0.0", 80), any6 = v6("::", 81);
	struct rv_table t;
	struct rv_answer a;
	uint32_t c;

	init(&t, 8, 0);
	cr_assert_eq(rv_listener_add(&t, 1, 2, &any4, 0, 11), 1);
	cr_assert_eq(rv_listener_add(&t, 2, 2, &any6, 0, 11), 1);
	fake_set(&x, 2, v4("10.0.0.1", 0), 1);
	fake_set(&x, 2, v4("127.0.0.1", 0), 1);
	fake_set(&x, 2, v6("::1", 0), 1);
	fake_set(&x, 1, v4("10.0.0.2", 0), 1);
	/* The veth peer's address: it may be there. */
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 80), NULL), 1);
	a = request_l(&t, &x, 1, v4("10.0.0.1", 80));
	cr_assert_eq(a.verdict, RV_PENDING);
	/* Not local there: no. */
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.9", 80), &c), 0);
	cr_assert_eq(c, RV_CAUSE_NO_LISTENER);
	/* Loopback never leaves namespace 1, whatever 2 holds; from 2
	 * itself it counts. */
	x.calls = 0;
	cr_assert_eq(could(&t, &x, 1, v4("127.0.0.1", 80), NULL), 0);
	cr_assert_eq(could(&t, &x, 1, v6("::1", 81), NULL), 0);
	cr_assert_eq(could(&t, &x, 1, v6("::ffff:127.0.0.1", 81), NULL), 0);
	cr_assert_eq(x.calls, 0, "loopback: nothing to ask");
	cr_assert_eq(could(&t, &x, 2, v4("127.0.0.1", 80), NULL), 1);
	cr_assert_eq(could(&t, &x, 2, v6("::1", 81), NULL), 1);
	/* An address local in the client's own namespace stays there,
	 * even if namespace 2 holds it too. */
	fake_set(&x, 2, v4("10.0.0.2", 0), 1);
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.2", 80), NULL), 0);
	cr_assert_eq(could(&t, &x, 3, v4("10.0.0.2", 80), NULL), 1);
	/* ...and so does one bound exactly in namespace 2. */
	{
		struct rv_addr two = v4("10.0.0.2", 82);

		cr_assert_eq(rv_listener_add(&t, 3, 2, &two, 0, 11), 1);
		cr_assert_eq(could(&t, &x, 1, v4("10.0.0.2", 82), NULL), 0);
		cr_assert_eq(could(&t, &x, 3, v4("10.0.0.2", 82), NULL), 1);
	}
	/* Cannot tell about the client's namespace: the listener counts. */
	fake_set(&x, 4, v4("10.0.0.1", 0), -1);
	cr_assert_eq(could(&t, &x, 4, v4("10.0.0.1", 80), NULL), 1);
	rv_table_fini(&t);
}

Test(rendezvous, cross_netns_off_leaves_other_namespaces_out)
{
	struct fake_local x = { .n = 0 };
	struct rv_addr any4 = v4("0.0.0.0", 80);
	struct rv_table t;
	struct rv_answer a;
	uint32_t c;

	init(&t, 8, RV_NO_CROSS_NETNS);
	cr_assert_eq(rv_listener_add(&t, 1, 2, &any4, 0, 11), 1);
	fake_set(&x, 2, v4("10.0.0.1", 0), 1);
	/* Only namespace 2 could have it: TCP, and why. */
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 80), &c), 0);
	cr_assert_eq(c, RV_CAUSE_CROSS_OFF);
	a = request_l(&t, &x, 1, v4("10.0.0.1", 80));
	cr_assert_eq(a.verdict, RV_TCP);
	cr_assert_eq(a.cause, RV_CAUSE_CROSS_OFF);
	/* Nobody could: not the flag's doing. */
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.9", 80), &c), 0);
	cr_assert_eq(c, RV_CAUSE_NO_LISTENER);
	/* A listener of the client's own namespace still counts. */
	fake_set(&x, 1, v4("10.0.0.1", 0), 1);
	cr_assert_eq(rv_listener_add(&t, 2, 1, &any4, 0, 11), 1);
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 80), NULL), 1);
	/* Switched on: namespace 2's listener counts again. */
	rv_set_flags(&t, 0);
	cr_assert_eq(rv_listener_drop(&t, 2, 11), 1);
	x.n = 1;
	cr_assert_eq(could(&t, &x, 1, v4("10.0.0.1", 80), NULL), 1);
	rv_table_fini(&t);
}

Test(rendezvous, capacity_gives_enospc)
{
	struct rv_limits lim = {
		.listeners = 1, .holders = 2, .pubs = 2, .reqs = 1,
		.intents = 1, .stale_ms = 2000,
	};
	struct rv_table t;
	struct rv_tuple st = srv_tuple(), mst;
	struct rv_addr la = v4("10.0.0.1", 80);
	struct rv_answer a;
	int i;

	cr_assert_eq(rv_table_init(&t, &lim), 0);
	for (i = 0; i < 2; i++) {
		st.remote.port = (uint16_t)(1000 + i);
		cr_assert_eq(publish(&t, st, 1, 11, (uint64_t)i, 0), RV_PENDING);
	}
	st.remote.port = 2000;
	cr_assert_eq(rv_publish(&t, &st, 1, RV_PROVEN, 11, 9, 0, &a), -ENOSPC);
	/* A request that matches at once needs no room... */
	st.remote.port = 1000;
	cr_assert_eq(request(&t, mirror(st), 1, 22, 0, 100).verdict, RV_MATCH);
	/* ...one that waits does. */
	st.remote.port = 3000;
	cr_assert_eq(request(&t, mirror(st), 1, 22, 0, 100).verdict, RV_PENDING);
	st.remote.port = 3001;
	mst = mirror(st);
	cr_assert_eq(rv_request(&t, &mst, 1, RV_PROVEN, 22, 0, 100, NULL, &a),
		     -ENOSPC);
	cr_assert_eq(rv_listener_add(&t, 1, 1, &la, 0, 1), 1);
	cr_assert_eq(rv_listener_add(&t, 2, 1, &la, 0, 1), -ENOSPC);
	cr_assert_eq(rv_listener_add(&t, 1, 1, &la, 0, 2), 0);
	cr_assert_eq(rv_listener_add(&t, 1, 1, &la, 0, 3), -ENOSPC);
	cr_assert_eq(rv_intent(&t, &la, 5, 1, 1, 0, 10), 0);
	cr_assert_eq(rv_intent(&t, &la, 6, 1, 1, 0, 10), -ENOSPC);
	cr_assert_eq(rv_intent(&t, &la, 6, 1, 1, 10, 20), 0, "expired made room");
	rv_table_fini(&t);
}

Test(rendezvous, local_equal_remote_never_matches)
{
	struct rv_table t;
	struct rv_addr self = v4("127.0.0.1", 5000);
	struct rv_tuple loop = tup(self, self);
	struct rv_answer a;

	init(&t, 8, 0);
	cr_assert_eq(rv_publish(&t, &loop, 1, RV_PROVEN, 11, 1, 0, &a), 0);
	cr_assert_eq(a.verdict, RV_WITHDRAWN);
	a = request(&t, loop, 1, 11, 0, 100);
	cr_assert_eq(a.verdict, RV_TCP);
	cr_assert_eq(rv_next_deadline(&t), UINT64_MAX, "nothing stored");
	rv_table_fini(&t);
}

Test(rendezvous, withdraw_and_cancel)
{
	struct rv_table t;
	struct rv_tuple other = tup(v4("10.0.0.1", 81), v4("10.0.0.2", 40001));
	struct rv_answer a;

	init(&t, 8, 0);
	cr_assert_eq(publish(&t, srv_tuple(), 1, 11, 100, 0), RV_PENDING);
	cr_assert_eq(rv_withdraw(&t, 12, 100), -ENOENT, "not its publication");
	cr_assert_eq(rv_withdraw(&t, 11, 100), 0);
	cr_assert_eq(request(&t, mirror(srv_tuple()), 1, 22, 0, 0).verdict,
		     RV_TCP);
	a = request(&t, mirror(other), 1, 22, 0, 100);
	cr_assert_eq(rv_request_cancel(&t, 22, a.req_id), 0);
	cr_assert_eq(rv_request_cancel(&t, 22, a.req_id), -ENOENT);
	cr_assert_eq(publish(&t, other, 1, 11, 200, 1), RV_PENDING);
	rv_table_fini(&t);
}

Test(rendezvous, intents_are_consumed_once_and_expire)
{
	struct rv_table t;
	struct rv_addr dst = v4("10.0.0.1", 80);
	struct rv_tuple acc = srv_tuple();          /* remote port 40000 */
	struct rv_tuple mapped = tup(v6("::ffff:10.0.0.1", 80),
				     v6("::ffff:10.0.0.2", 40000));

	init(&t, 8, 0);
	cr_assert_eq(rv_intent_pending(&t, &acc, 1, 0), 0);
	cr_assert_eq(rv_intent(&t, &dst, 40001, 1, 5, 0, 100), 0);
	cr_assert_eq(rv_intent_pending(&t, &acc, 1, 0), 0, "wrong port");
	cr_assert_eq(rv_intent(&t, &dst, 40000, 1, 5, 0, 100), 0);
	cr_assert_eq(rv_intent_pending(&t, &mapped, 1, 0), 1);
	cr_assert_eq(rv_intent_pending(&t, &acc, 1, 0), 0, "consumed");
	cr_assert_eq(rv_intent(&t, &dst, 40000, 1, 5, 0, 100), 0);
	cr_assert_eq(rv_intent_pending(&t, &acc, 1, 100), 0, "expired");
	dst.port = 81;
	cr_assert_eq(rv_intent(&t, &dst, 40000, 1, 5, 100, 200), 0);
	cr_assert_eq(rv_intent_pending(&t, &acc, 1, 100), 0, "wrong dst port");
	/* Port 0 (not known yet) matches any client port, in any netns. */
	dst.port = 80;
	cr_assert_eq(rv_intent(&t, &dst, 0, 2, 5, 100, 200), 0);
	cr_assert_eq(rv_intent_pending(&t, &acc, 1, 100), 1);
	rv_table_fini(&t);
}

/* ---- random run against a naive reference model -------------------------- */

/*
 * Endpoints are small ints: address index (0 = 10.0.0.1, 1 = 10.0.0.2,
 * 2 = fd00::1) and port index; the real table gets them as rv_addr, IPv4
 * ones randomly in plain or mapped form.  The model is a flat list with
 * its own reach rule; it knows nothing of normalisation or hashing.
 */
#define M_ADDRS 3
#define M_PORTS 3
#define M_NS 3
#define M_SESS 4
#define M_CAP 12
#define M_LCAP 4
#define M_HCAP 6
#define M_SOCKS 6
#define M_STALE 500
#define M_CHANS 200000

struct m_ep { int a, p; };

struct m_ent {
	int used, dead;
	struct m_ep srv, cli;
	uint64_t netns, session, id, t;
	uint32_t proof;
};

struct m_lst {
	int used;
	int sock;
	uint64_t holders;       /* bit per session */
};

struct model {
	struct m_ent pub[M_CAP], req[M_CAP];
	struct m_lst lst[M_LCAP];
	uint64_t next_id;
	int no_cross;           /* RV_NO_CROSS_NETNS */
	int use_local;          /* requests pass m_local_fn */
	/* Is address a local in namespace ns (1..M_NS)?  1, 0, -1 cannot
	 * tell: what m_local_fn answers. */
	int local[M_NS + 1][M_ADDRS];
};

/* Listening socket k: fixed identity.  a: 0..2 address, 3 = 0.0.0.0,
 * 4 = :: dual-stack, 5 = :: v6only. */
static const int m_sock_addr[M_SOCKS] = { 0, 1, 2, 3, 4, 5 };
static const int m_sock_port[M_SOCKS] = { 0, 1, 2, 0, 1, 2 };
static const uint64_t m_sock_ns[M_SOCKS] = { 1, 2, 3, 2, 3, 1 };

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state % n);
}

static struct rv_addr m_addr(int a, int p)
{
	static const char *const s4[2] = { "10.0.0.1", "10.0.0.2" };
	static const char *const s6[2] = { "::ffff:10.0.0.1", "::ffff:10.0.0.2" };
	uint16_t port = (uint16_t)(80 + p);

	if (a == 2)
		return v6("fd00::1", port);
	if (a == 3)
		return v4("0.0.0.0", port);
	if (a >= 4)
		return v6("::", port);
	return rnd(2) ? v4(s4[a], port) : v6(s6[a], port);
}

static int m_ep_eq(struct m_ep x, struct m_ep y)
{
	return x.a == y.a && x.p == y.p;
}

static int m_reach(int sock, struct m_ep dst)
{
	int la = m_sock_addr[sock];
	int dst_v4 = dst.a < 2;

	if (m_sock_port[sock] != dst.p)
		return 0;
	if (la < 3)
		return la == dst.a;
	if (la == 3)
		return dst_v4;
	if (la == 4)
		return 1;
	return !dst_v4;
}

/* Has req_ns a listener srv could reach? */
static int m_near(const struct model *m, uint64_t req_ns, struct m_ep srv)
{
	int i;

	for (i = 0; i < M_LCAP; i++)
		if (m->lst[i].used && m_sock_ns[m->lst[i].sock] == req_ns &&
		    m_reach(m->lst[i].sock, srv))
			return 1;
	return 0;
}

/* rv_listener_could over the model (no loopback addresses in it). */
static int m_could(const struct model *m, uint64_t ns, struct m_ep dst)
{
	int here = m->local[ns][dst.a], i;

	for (i = 0; i < M_LCAP; i++) {
		int sock = m->lst[i].sock;
		uint64_t lns = m_sock_ns[sock];

		if (!m->lst[i].used || !m_reach(sock, dst))
			continue;
		if (lns != ns && (here > 0 || m->no_cross))
			continue;
		if (m_sock_addr[sock] < 3 || m->local[lns][dst.a])
			return 1;
	}
	return 0;
}

/* The rv_local of the random run: the model's facts, by address. */
static int m_local_fn(void *arg, uint64_t netns, const struct rv_addr *a)
{
	const struct model *m = arg;
	struct rv_addr x[M_ADDRS] = { v4("10.0.0.1", 0), v4("10.0.0.2", 0),
				      v6("fd00::1", 0) };

	cr_assert(netns >= 1 && netns <= M_NS);
	for (int i = 0; i < M_ADDRS; i++) {
		x[i].port = a->port;
		if (!memcmp(&x[i], a, sizeof(*a)))
			return m->local[netns][i];
	}
	cr_assert_fail("oracle asked about an address of no listener");
	return -1;
}

static int m_nlst(const struct model *m)
{
	int i, n = 0;

	for (i = 0; i < M_LCAP; i++)
		n += m->lst[i].used;
	return n;
}

static int m_live(const struct m_ent *e, int reqs, uint64_t now)
{
	if (!e->used || e->dead)
		return 0;
	return reqs ? e->t > now : e->t + M_STALE > now;
}

/* -1 none, -2 ambiguous or refused, M_CAP the extra entry (proof
 * extra_proof), else index.  The chooser is in ns with proof. */
static int m_choose(const struct model *m, int reqs, struct m_ep srv,
		    struct m_ep cli, uint64_t ns, uint32_t proof, uint64_t now,
		    const uint64_t *extra, uint32_t extra_proof)
{
	const struct m_ent *s = reqs ? m->req : m->pub;
	int same = 0, other = 0, same_i = -1, other_i = -1, other_ok = 0, i;

	for (i = 0; i <= M_CAP; i++) {
		uint64_t n;
		uint32_t p;

		if (i < M_CAP) {
			if (!m_live(&s[i], reqs, now) ||
			    !m_ep_eq(s[i].srv, srv) || !m_ep_eq(s[i].cli, cli))
				continue;
			n = s[i].netns;
			p = s[i].proof;
		} else if (extra) {
			n = *extra;
			p = extra_proof;
		} else {
			continue;
		}
		if (n == ns) {
			same++;
			same_i = i;
		} else if (!m_near(m, reqs ? n : ns, srv)) {
			other++;
			other_i = i;
			other_ok = !m->no_cross && p == RV_PROVEN &&
				   proof == RV_PROVEN;
		}
	}
	if (same)
		return same == 1 ? same_i : -2;
	if (other)
		return other == 1 && other_ok ? other_i : -2;
	return -1;
}

static int m_count(const struct m_ent *s)
{
	int i, n = 0;

	for (i = 0; i < M_CAP; i++)
		n += s[i].used;
	return n;
}

static void m_add(struct m_ent *s, struct m_ent e)
{
	int i;

	for (i = 0; i < M_CAP; i++) {
		if (!s[i].used) {
			s[i] = e;
			s[i].used = 1;
			return;
		}
	}
	cr_assert_fail("model store full");
}

static void m_supersede(struct m_ent *s, int reqs, struct m_ep srv,
			struct m_ep cli, uint64_t ns, uint64_t now)
{
	int i;

	for (i = 0; i < M_CAP; i++)
		if (m_live(&s[i], reqs, now) && m_ep_eq(s[i].srv, srv) &&
		    m_ep_eq(s[i].cli, cli) && s[i].netns == ns)
			s[i].dead = 1;
}

/* Model of rv_publish: returns the errno-style result, fills *a. */
static int m_publish(struct model *m, struct m_ep loc, struct m_ep rem,
		     uint64_t ns, uint32_t proof, uint64_t sess,
		     uint64_t chan, uint64_t now, struct rv_answer *a)
{
	struct m_ent e;
	int r, i;

	memset(a, 0, sizeof(*a));
	a->chan_id = chan;
	a->pub_session = sess;
	if (m_ep_eq(loc, rem)) {
		a->verdict = RV_WITHDRAWN;
		return 0;
	}
	m_supersede(m->pub, 0, loc, rem, ns, now);
	r = m_choose(m, 1, loc, rem, ns, proof, now, NULL, 0);
	if (r >= 0 && m_choose(m, 0, loc, rem, m->req[r].netns,
			       m->req[r].proof, now, &ns, proof) == M_CAP) {
		a->verdict = RV_MATCH;
		a->req_id = m->req[r].id;
		a->req_session = m->req[r].session;
		m->req[r].used = 0;
		return 0;
	}
	if (m_count(m->pub) >= M_CAP)
		return -ENOSPC;
	memset(&e, 0, sizeof(e));
	e.srv = loc;
	e.cli = rem;
	e.netns = ns;
	e.session = sess;
	e.id = chan;
	e.t = now;
	e.proof = proof;
	m_add(m->pub, e);
	/* Waiting requests of this key left with no possible match. */
	for (i = 0; i < M_CAP; i++) {
		struct m_ent *q = &m->req[i];

		if (m_live(q, 1, now) && m_ep_eq(q->srv, loc) &&
		    m_ep_eq(q->cli, rem) &&
		    m_choose(m, 0, loc, rem, q->netns, q->proof, now, NULL,
			     0) == -2)
			q->dead = 1;
	}
	a->verdict = RV_PENDING;
	return 0;
}

static int m_request(struct model *m, struct m_ep loc, struct m_ep rem,
		     uint64_t ns, uint32_t proof, uint64_t sess, uint64_t now,
		     uint64_t dl, struct rv_answer *a, int *pub_idx)
{
	struct m_ent e;
	int p;

	memset(a, 0, sizeof(*a));
	a->req_session = sess;
	*pub_idx = -1;
	if (m_ep_eq(loc, rem)) {
		a->req_id = m->next_id++;
		a->verdict = RV_TCP;
		return 0;
	}
	m_supersede(m->req, 1, rem, loc, ns, now);
	p = m_choose(m, 0, rem, loc, ns, proof, now, NULL, 0);
	if (p >= 0 && m_choose(m, 1, rem, loc, m->pub[p].netns,
			       m->pub[p].proof, now, &ns, proof) == M_CAP) {
		a->req_id = m->next_id++;
		a->verdict = RV_MATCH;
		a->chan_id = m->pub[p].id;
		a->pub_session = m->pub[p].session;
		*pub_idx = p;
		m->pub[p].used = 0;
		return 0;
	}
	if (p == -2 || dl <= now ||
	    (m->use_local && p == -1 && !m_could(m, ns, rem))) {
		a->req_id = m->next_id++;
		a->verdict = RV_TCP;
		return 0;
	}
	if (m_count(m->req) >= M_CAP)
		return -ENOSPC;
	memset(&e, 0, sizeof(e));
	e.srv = rem;
	e.cli = loc;
	e.netns = ns;
	e.session = sess;
	e.id = m->next_id++;
	e.t = dl;
	e.proof = proof;
	m_add(m->req, e);
	a->req_id = e.id;
	a->verdict = RV_PENDING;
	return 0;
}

static int ans_cmp(const void *x, const void *y)
{
	const struct rv_answer *a = x, *b = y;
	uint64_t ka = a->verdict == RV_TCP ? a->req_id : a->chan_id;
	uint64_t kb = b->verdict == RV_TCP ? b->req_id : b->chan_id;

	if (a->verdict != b->verdict)
		return a->verdict < b->verdict ? -1 : 1;
	return ka < kb ? -1 : ka > kb;
}

static void ans_eq(const struct rv_answer *x, const struct rv_answer *y,
		   unsigned long step)
{
	cr_assert_eq(x->verdict, y->verdict, "step %lu: verdict %d vs model %d",
		     step, x->verdict, y->verdict);
	cr_assert_eq(x->req_id, y->req_id, "step %lu: req_id", step);
	cr_assert_eq(x->req_session, y->req_session, "step %lu", step);
	cr_assert_eq(x->chan_id, y->chan_id, "step %lu: chan_id", step);
	cr_assert_eq(x->pub_session, y->pub_session, "step %lu", step);
}

/* Tuples of every publication ever made, by chan id, and what became of
 * each chan / request id: handed out at most once. */
static struct m_ep chan_srv[M_CHANS], chan_cli[M_CHANS];
static unsigned char chan_done[M_CHANS], req_done[M_CHANS];
/* The netns and proof of each publication and request, and whether
 * cross-namespace matching was off when each was made. */
static uint64_t chan_ns[M_CHANS], req_ns[M_CHANS];
static uint32_t chan_proof[M_CHANS], req_proof[M_CHANS];
static unsigned long cross_matches;

static void note_chan(uint64_t chan, unsigned long step)
{
	cr_assert_lt(chan, M_CHANS);
	cr_assert_eq(chan_done[chan], 0, "step %lu: chan %lu handed out twice",
		     step, (unsigned long)chan);
	chan_done[chan] = 1;
}

static void note_req(uint64_t id, unsigned long step)
{
	cr_assert_lt(id, M_CHANS);
	cr_assert_eq(req_done[id], 0, "step %lu: request %lu answered twice",
		     step, (unsigned long)id);
	req_done[id] = 1;
}

/* A match must pair a publication with the mirror of the request; across
 * namespaces, only proven ends and while allowed. */
static void check_match(const struct rv_answer *a, struct m_ep loc,
			struct m_ep rem, int no_cross, unsigned long step)
{
	uint64_t c = a->chan_id;

	cr_assert(m_ep_eq(chan_srv[c], rem) && m_ep_eq(chan_cli[c], loc) &&
		  !m_ep_eq(loc, rem), "step %lu: match breaks the tuple rule",
		  step);
	if (chan_ns[c] != req_ns[a->req_id]) {
		cr_assert(!no_cross && chan_proof[c] == RV_PROVEN &&
			  req_proof[a->req_id] == RV_PROVEN,
			  "step %lu: unproven or forbidden cross-netns match",
			  step);
		cross_matches++;
	}
	note_chan(c, step);
	note_req(a->req_id, step);
}

Test(rendezvous, random_operations_agree_with_model, .timeout = 120)
{
	static struct rv_answer out[2 * M_CAP], mout[2 * M_CAP];
	struct rv_limits lim = {
		.listeners = M_LCAP, .holders = M_HCAP, .pubs = M_CAP,
		.reqs = M_CAP, .intents = 4, .stale_ms = M_STALE,
	};
	struct rv_table t;
	struct model *m = calloc(1, sizeof(*m));
	uint64_t now = 1000, chan = 1;
	unsigned long step, matches = 0, pendings_answered = 0;
	unsigned long no_listener = 0;
	struct rv_local local;
	/* Request id -> its tuple, for matches answered by rv_publish. */
	static struct m_ep req_loc[M_CHANS], req_rem[M_CHANS];

	cr_assert_not_null(m);
	m->next_id = 1;
	local.fn = m_local_fn;
	local.arg = m;
	for (int i = 1; i <= M_NS; i++)
		for (int j = 0; j < M_ADDRS; j++)
			m->local[i][j] = 1;
	cr_assert_eq(rv_table_init(&t, &lim), 0);
	for (step = 0; step < 100000; step++) {
		/* Mostly a few hot connections, so that candidates pile up
		 * on one key; sometimes any endpoints. */
		static const struct m_ep hot[4][2] = {
			{ { 0, 0 }, { 1, 1 } }, { { 0, 0 }, { 1, 2 } },
			{ { 2, 1 }, { 2, 2 } }, { { 1, 0 }, { 1, 0 } },
		};
		int op = (int)rnd(100), r, mr, pi, i, k, h = (int)rnd(5);
		struct m_ep loc = { (int)rnd(M_ADDRS), (int)rnd(M_PORTS) };
		struct m_ep rem = { (int)rnd(M_ADDRS), (int)rnd(M_PORTS) };
		struct rv_tuple tu;
		uint64_t ns = 1 + rnd(M_NS), sess = 1 + rnd(M_SESS);
		/* Mostly proven; sometimes one bit or none. */
		uint32_t proof = rnd(5) ? RV_PROVEN : rnd(3);
		struct rv_answer a, ma;
		size_t n, mn;

		if (!rnd(400)) {
			m->no_cross = !m->no_cross;
			rv_set_flags(&t, m->no_cross ? RV_NO_CROSS_NETNS : 0);
		}
		/* The oracle: sometimes none, its facts change now and
		 * then (mostly local: requests must still wait). */
		if (!rnd(300))
			m->use_local = !m->use_local;
		if (!rnd(200)) {
			int fact = (int)rnd(6);

			m->local[1 + rnd(M_NS)][rnd(M_ADDRS)] =
				fact < 3 ? 1 : fact < 5 ? 0 : -1;
		}

		if (h < 4) {
			loc = hot[h][op >= 35];
			rem = hot[h][op < 35];
		}

		if (rnd(2))
			now += rnd(40);
		tu.local = m_addr(loc.a, loc.p);
		tu.remote = m_addr(rem.a, rem.p);
		if (op < 35) {
			if (chan >= M_CHANS)
				break;
			chan_srv[chan] = loc;
			chan_cli[chan] = rem;
			chan_ns[chan] = ns;
			chan_proof[chan] = proof;
			r = rv_publish(&t, &tu, ns, proof, sess, chan, now, &a);
			mr = m_publish(m, loc, rem, ns, proof, sess, chan, now,
				       &ma);
			chan++;
			cr_assert_eq(r, mr, "step %lu: publish %d vs %d", step,
				     r, mr);
			if (r)
				continue;
			ans_eq(&a, &ma, step);
			if (a.verdict == RV_MATCH) {
				check_match(&a, req_loc[a.req_id],
					    req_rem[a.req_id], m->no_cross,
					    step);
				pendings_answered++;
			} else if (a.verdict == RV_WITHDRAWN) {
				note_chan(a.chan_id, step);
			}
		} else if (op < 70) {
			uint64_t dl = now + rnd(300);

			r = rv_request(&t, &tu, ns, proof, sess, now, dl,
				       m->use_local ? &local : NULL, &a);
			mr = m_request(m, loc, rem, ns, proof, sess, now, dl,
				       &ma, &pi);
			cr_assert_eq(r, mr, "step %lu: request %d vs %d", step,
				     r, mr);
			if (r)
				continue;
			ans_eq(&a, &ma, step);
			cr_assert_lt(a.req_id, M_CHANS);
			req_loc[a.req_id] = loc;
			req_rem[a.req_id] = rem;
			req_ns[a.req_id] = ns;
			req_proof[a.req_id] = proof;
			if (a.verdict == RV_MATCH) {
				check_match(&a, loc, rem, m->no_cross, step);
				matches++;
			} else if (a.verdict == RV_TCP) {
				note_req(a.req_id, step);
				no_listener += a.cause == RV_CAUSE_NO_LISTENER;
			}
		} else if (op < 82) {
			n = rv_expire(&t, now, out, 2 * M_CAP);
			mn = 0;
			for (i = 0; i < M_CAP; i++) {
				struct m_ent *e = &m->pub[i];

				if (e->used && !m_live(e, 0, now)) {
					memset(&mout[mn], 0, sizeof(mout[mn]));
					mout[mn].verdict = RV_WITHDRAWN;
					mout[mn].chan_id = e->id;
					mout[mn].pub_session = e->session;
					mn++;
					e->used = 0;
				}
			}
			for (i = 0; i < M_CAP; i++) {
				struct m_ent *e = &m->req[i];

				if (e->used && !m_live(e, 1, now)) {
					memset(&mout[mn], 0, sizeof(mout[mn]));
					mout[mn].verdict = RV_TCP;
					mout[mn].req_id = e->id;
					mout[mn].req_session = e->session;
					mn++;
					e->used = 0;
				}
			}
			cr_assert_eq(n, mn, "step %lu: expire %zu vs %zu", step,
				     n, mn);
			qsort(out, n, sizeof(*out), ans_cmp);
			qsort(mout, mn, sizeof(*mout), ans_cmp);
			for (i = 0; i < (int)n; i++) {
				ans_eq(&out[i], &mout[i], step);
				if (out[i].verdict == RV_TCP)
					note_req(out[i].req_id, step);
				else
					note_chan(out[i].chan_id, step);
			}
			cr_assert_eq(rv_next_deadline(&t) > now, 1,
				     "step %lu: due entries left", step);
		} else if (op < 92) {
			int sock = (int)rnd(M_SOCKS), slot = -1, nh = 0;
			struct rv_addr la = m_addr(m_sock_addr[sock],
						   m_sock_port[sock]);

			for (i = 0; i < M_LCAP; i++) {
				if (m->lst[i].used)
					nh += __builtin_popcountll(m->lst[i].holders);
				if (m->lst[i].used && m->lst[i].sock == sock)
					slot = i;
			}
			if (rnd(2)) {
				r = rv_listener_add(&t, (uint64_t)sock + 100,
						    m_sock_ns[sock], &la,
						    m_sock_addr[sock] == 5, sess);
				if (slot >= 0 && (m->lst[slot].holders >> sess & 1))
					mr = 0;
				else if (slot < 0 && m_nlst(m) >= M_LCAP)
					mr = -ENOSPC;
				else if (nh >= M_HCAP)
					mr = -ENOSPC;
				else {
					mr = slot < 0;
					if (slot < 0) {
						for (i = 0; m->lst[i].used; i++)
							;
						slot = i;
						m->lst[slot].used = 1;
						m->lst[slot].sock = sock;
						m->lst[slot].holders = 0;
					}
					m->lst[slot].holders |= 1ull << sess;
				}
			} else {
				r = rv_listener_drop(&t, (uint64_t)sock + 100, sess);
				if (slot < 0 || !(m->lst[slot].holders >> sess & 1)) {
					mr = -ENOENT;
				} else {
					m->lst[slot].holders &= ~(1ull << sess);
					mr = !m->lst[slot].holders;
					if (mr)
						m->lst[slot].used = 0;
				}
			}
			cr_assert_eq(r, mr, "step %lu: listener %d vs %d", step,
				     r, mr);
		} else if (op < 94) {
			r = rv_session_gone(&t, sess);
			mr = 0;
			for (i = 0; i < M_LCAP; i++) {
				if (!m->lst[i].used)
					continue;
				m->lst[i].holders &= ~(1ull << sess);
				if (!m->lst[i].holders) {
					m->lst[i].used = 0;
					mr++;
				}
			}
			for (i = 0; i < M_CAP; i++) {
				if (m->pub[i].used && m->pub[i].session == sess) {
					m->pub[i].used = 0;
					note_chan(m->pub[i].id, step);
				}
				if (m->req[i].used && m->req[i].session == sess) {
					m->req[i].used = 0;
					note_req(m->req[i].id, step);
				}
			}
			cr_assert_eq(r, mr, "step %lu: session_gone", step);
		} else if (op < 97) {
			/* Withdraw a random live model publication. */
			i = (int)rnd(M_CAP);
			if (m->pub[i].used) {
				cr_assert_eq(rv_withdraw(&t, m->pub[i].session,
							 m->pub[i].id), 0);
				m->pub[i].used = 0;
				note_chan(m->pub[i].id, step);
			} else {
				cr_assert_eq(rv_withdraw(&t, sess, 0), -ENOENT);
			}
		} else {
			i = (int)rnd(M_CAP);
			if (m->req[i].used) {
				cr_assert_eq(rv_request_cancel(&t, m->req[i].session,
							       m->req[i].id), 0);
				m->req[i].used = 0;
				note_req(m->req[i].id, step);
			}
		}
		/* Liveness: no pending request has a live same-netns
		 * publication of its tuple that it could have had (unless
		 * that publication's own view is ambiguous). */
		for (i = 0; i < M_CAP; i++) {
			const struct m_ent *q = &m->req[i];

			if (!m_live(q, 1, now))
				continue;
			for (k = 0; k < M_CAP; k++) {
				const struct m_ent *p = &m->pub[k];

				if (m_live(p, 0, now) && p->netns == q->netns &&
				    m_ep_eq(p->srv, q->srv) &&
				    m_ep_eq(p->cli, q->cli))
					cr_assert(m_choose(m, 1, p->srv, p->cli,
							   p->netns, p->proof,
							   now, NULL, 0) == -2,
						  "step %lu: request %lu left "
						  "waiting beside its peer",
						  step, (unsigned long)q->id);
			}
		}
	}
	cr_assert_gt(matches, 100, "the run must exercise matching (%lu)",
		     matches);
	cr_assert_gt(pendings_answered, 100, "and late answers (%lu)",
		     pendings_answered);
	cr_assert_gt(cross_matches, 100, "and cross-netns matches (%lu)",
		     cross_matches);
	cr_assert_gt(no_listener, 100, "and requests no listener could "
		     "have taken (%lu)", no_listener);
	rv_table_fini(&t);
	free(m);
}

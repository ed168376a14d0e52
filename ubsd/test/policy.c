/* SPDX-License-Identifier: MIT */
/*
 * policy.c - the shared policy page: receivers cannot write it, a reader
 * racing the writer never sees a torn record, lookups fall back to the
 * default record, and the reader refuses pages it should not trust.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "policy.h"
#include "support/dtest.h"

static struct ubs_svc_policy rec(const char *name, uint32_t k)
{
	struct ubs_svc_policy p;

	memset(&p, 0, sizeof(p));
	snprintf(p.name, sizeof(p.name), "%s", name);
	p.accel = k & 1;
	p.spin_us = k;
	p.ring_kib = k;
	p.mem_quota = k;
	return p;
}

/* fork() with the child dying with us; the child runs fn(fd). */
static pid_t child(int (*fn)(int), int fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		_exit(fn(fd));
	}
	return pid;
}

static int wait_ok(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/*
 * The race tests: the writer child republishes until the reader has seen
 * enough (RACE_MIN_MS at least, RACE_MAX_MS at most), told by a word
 * shared across the fork, so that a machine busy with other work only
 * makes the test longer, never fail for want of a race.
 */
#define RACE_MIN_MS 1000
#define RACE_MAX_MS 10000
static uint32_t *race_stop;

static void race_begin(void)
{
	if (!race_stop) {
		race_stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		cr_assert(race_stop != MAP_FAILED);
	}
	__atomic_store_n(race_stop, 0, __ATOMIC_RELAXED);
}

/* The writer: go on? */
static bool race_on(uint64_t t0)
{
	return !__atomic_load_n(race_stop, __ATOMIC_RELAXED) &&
	       dt_now_ms() < t0 + RACE_MAX_MS;
}

/* The reader: read on?  enough: it has seen what the test needs. */
static bool race_reading(uint64_t t0, bool enough)
{
	uint64_t now = dt_now_ms();

	if (now < t0 + RACE_MIN_MS || (!enough && now < t0 + RACE_MAX_MS))
		return true;
	__atomic_store_n(race_stop, 1, __ATOMIC_RELAXED);
	return false;
}

/* A receiver of the fd: every way to write is refused, reading works. */
static int receiver(int fd)
{
	struct ubs_svc_policy p;
	struct ubt_seg s;
	void *w;
	char b = 0;

	w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (w != MAP_FAILED || errno != EPERM)
		return 1;
	if (pwrite(fd, &b, 1, UBT_SEG_HDR_SIZE) != -1 || errno != EPERM)
		return 2;
	if (ftruncate(fd, 0) != -1)
		return 3;
	if (pp_map(&s, fd) != 0)
		return 4;
	if (mprotect(s.base, 4096, PROT_READ | PROT_WRITE) != -1)
		return 5;
	if (pp_lookup(&s, "svc-a", &p) != 1 || p.spin_us != 7)
		return 6;
	return 0;
}

Test(policy, receivers_cannot_write_the_page, .timeout = 30)
{
	struct ubs_svc_policy d, a = rec("svc-a", 7);
	struct ubt_seg s;
	pid_t pid;
	int fd;

	cr_assert_eq(pp_create(&s), 0);
	pp_defaults(&d);
	cr_assert_eq(pp_publish(&s, &d, &a, 1), 0);
	/* The child must go through the fd alone: drop the inherited
	 * writable mapping in it by re-opening nothing but the fd. */
	fd = dup(s.fd);
	pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		munmap(s.base, s.size);
		_exit(receiver(fd));
	}
	cr_assert_eq(wait_ok(pid), 0);
	/* The writer's own mapping still writes. */
	a.spin_us = 8;
	cr_assert_eq(pp_publish(&s, &d, &a, 1), 0);
	close(fd);
	ubt_seg_unmap(&s);
}

static struct ubt_seg shared_seg;

/* Republish as fast as possible: every record all-k, k changing. */
static int writer(int unused)
{
	struct ubs_svc_policy d, v[64];
	uint64_t t0 = dt_now_ms();
	uint32_t k = 0, i;

	(void)unused;
	while (race_on(t0)) {
		k++;
		d = rec("", k);
		for (i = 0; i < 64; i++) {
			char n[16];

			snprintf(n, sizeof(n), "svc-%u", i);
			v[i] = rec(n, k);
		}
		if (pp_publish(&shared_seg, &d, v, 64 - (k & 1)))
			return 1;
	}
	return 0;
}

Test(policy, concurrent_reader_never_sees_a_torn_record, .timeout = 30)
{
	struct ubs_svc_policy p;
	uint64_t end, reads = 0, changes = 0, last = 0, rs = 1;
	struct ubt_seg r;
	pid_t pid;

	cr_assert_eq(pp_create(&shared_seg), 0);
	p = rec("", 0);
	cr_assert_eq(pp_publish(&shared_seg, &p, NULL, 0), 0);
	cr_assert_eq(pp_map(&r, dup(shared_seg.fd)), 0);
	race_begin();
	pid = child(writer, 1);
	end = dt_now_ms();
	while (race_reading(end, reads > 10000 && changes > 100)) {
		char n[16];
		int got;

		rs = rs * 6364136223846793005ull + 1442695040888963407ull;
		snprintf(n, sizeof(n), "svc-%u", (unsigned)(rs >> 58));
		got = pp_lookup(&r, n, &p);
		if (got == -EAGAIN)
			continue;
		cr_assert_geq(got, 0);
		reads++;
		/* One publish, one value: any mix of two is a torn read. */
		cr_assert_eq(p.ring_kib, p.spin_us, "torn: %u vs %u",
			     p.ring_kib, p.spin_us);
		cr_assert_eq(p.mem_quota, p.spin_us);
		cr_assert_eq(p.accel, p.spin_us & 1);
		if (got == 1)
			cr_assert_str_eq(p.name, n);
		if (p.spin_us != last)
			changes++;
		last = p.spin_us;
	}
	cr_assert_eq(wait_ok(pid), 0);
	cr_assert_gt(reads, 10000);
	cr_assert_gt(changes, 100, "the reader must really race the writer");
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&shared_seg);
}

Test(policy, unknown_service_gets_the_default)
{
	struct ubs_svc_policy d, a = rec("svc-a", 3), p;
	struct ubt_seg s, r;
	uint64_t g;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	pp_defaults(&d);
	d.spin_us = 11;
	g = pp_generation(&r);
	cr_assert_eq(pp_publish(&s, &d, &a, 1), 0);
	cr_assert_eq(pp_generation(&r), g + 1);
	cr_assert_eq(pp_lookup(&r, "svc-a", &p), 1);
	cr_assert_eq(p.spin_us, 3);
	cr_assert_eq(pp_lookup(&r, "other", &p), 0);
	cr_assert_eq(p.spin_us, 11);
	cr_assert_str_eq(p.name, "");
	cr_assert_eq(pp_lookup(&r, "", &p), 0);
	{
		uint32_t hint = 99;     /* stale hint: falls back to the scan */

		cr_assert_eq(pp_lookup_hint(&r, "svc-a", &p, &hint), 1);
		cr_assert_eq(hint, 0);
		cr_assert_eq(p.spin_us, 3);
		cr_assert_eq(pp_lookup_hint(&r, "svc-a", &p, &hint), 1);
		cr_assert_eq(pp_lookup_hint(&r, "other", &p, &hint), 0);
		cr_assert_eq(p.spin_us, 11);
	}
	cr_assert_eq(pp_publish(&s, &d, &a, UBS_POLICY_MAX_SVC + 1), -E2BIG);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

Test(policy, reader_refuses_other_segments)
{
	struct ubt_seg d, r;

	cr_assert_eq(ubt_seg_create(&d, 1 << 16, UBT_SEG_DATA, "x"), 0);
	/* Not sealed against writers: a peer could still change it. */
	cr_assert_eq(pp_map(&r, d.fd), -EPERM);
	/* Refusal leaves the fd open and the caller's. */
	cr_assert_geq(fcntl(d.fd, F_GETFD), 0);
	ubt_seg_unmap(&d);
}

/* An address rule from text. */
static struct ubs_excl_rule xaddr(int fam, const char *a, unsigned prefix,
				  unsigned lo, unsigned hi)
{
	struct ubs_excl_rule r;

	memset(&r, 0, sizeof(r));
	r.kind = UBS_EXCL_ADDR;
	r.family = (uint8_t)fam;
	r.prefix = (uint8_t)prefix;
	r.port_lo = (uint16_t)lo;
	r.port_hi = (uint16_t)hi;
	cr_assert_eq(inet_pton(fam, a, r.addr), 1, "%s", a);
	return r;
}

static struct ubs_excl_rule xport(unsigned lo, unsigned hi)
{
	struct ubs_excl_rule r;

	memset(&r, 0, sizeof(r));
	r.kind = UBS_EXCL_PORT;
	r.port_lo = (uint16_t)lo;
	r.port_hi = (uint16_t)hi;
	return r;
}

static struct ubs_excl_rule xprog(const char *name)
{
	struct ubs_excl_rule r;

	memset(&r, 0, sizeof(r));
	r.kind = UBS_EXCL_PROGRAM;
	snprintf(r.program, sizeof(r.program), "%s", name);
	return r;
}

/* pp_excluded for address text a (family fam) and port. */
static int ex(const struct ubt_seg *r, const char *svc, int fam,
	      const char *a, unsigned port)
{
	uint8_t buf[16];

	cr_assert_eq(inet_pton(fam, a, buf), 1, "%s", a);
	return pp_excluded(r, svc, fam, buf, (uint16_t)port);
}

/* Publish rules (n of them) to s; r maps the page read-only. */
static void publish_rules(struct ubt_seg *s, const struct ubs_excl_rule *v,
			  uint32_t n)
{
	struct ubs_svc_policy d;

	pp_defaults(&d);
	cr_assert_eq(pp_publish_ex(s, &d, NULL, 0, v, n), 0);
}

Test(policy, exclude_prefixes_v4)
{
	struct ubs_excl_rule v[4];
	struct ubt_seg s, r;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	/* A fresh page excludes nothing. */
	cr_assert_eq(ex(&r, "svc", AF_INET, "10.0.0.1", 80), 0);
	cr_assert_eq(pp_excluded(&r, NULL, 0, NULL, 0), 0);

	v[0] = xaddr(AF_INET, "10.0.0.0", 8, 0, 0);
	v[1] = xaddr(AF_INET, "172.16.0.0", 20, 0, 0);
	v[2] = xaddr(AF_INET, "192.168.1.7", 32, 0, 0);
	publish_rules(&s, v, 3);
	cr_assert_eq(ex(&r, NULL, AF_INET, "10.0.0.0", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET, "10.255.255.255", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET, "11.0.0.0", 1), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET, "9.255.255.255", 1), 0);
	/* /20: 172.16.0.0 - 172.16.15.255. */
	cr_assert_eq(ex(&r, NULL, AF_INET, "172.16.0.1", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET, "172.16.15.255", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET, "172.16.16.0", 1), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET, "172.17.0.1", 1), 0);
	/* /32: that host alone. */
	cr_assert_eq(ex(&r, NULL, AF_INET, "192.168.1.7", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET, "192.168.1.6", 1), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET, "192.168.1.8", 1), 0);
	/* IPv4 rules do not match IPv6 addresses, but v4-mapped ones. */
	cr_assert_eq(ex(&r, NULL, AF_INET6, "::a00:1", 1), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "::ffff:10.0.0.1", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "::ffff:11.0.0.1", 1), 0);
	/* No address, no address rule. */
	cr_assert_eq(pp_excluded(&r, NULL, AF_INET, NULL, 1), 0);
	cr_assert_eq(pp_excluded(&r, NULL, AF_UNIX, "\x0a\0\0\1", 1), 0);
	/* /0 matches every IPv4 address and no IPv6 one. */
	v[3] = xaddr(AF_INET, "0.0.0.0", 0, 0, 0);
	publish_rules(&s, v + 3, 1);
	cr_assert_eq(ex(&r, NULL, AF_INET, "1.2.3.4", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET, "255.255.255.255", 0), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8::1", 1), 0);
	/* Republishing with no rules clears them. */
	publish_rules(&s, NULL, 0);
	cr_assert_eq(ex(&r, NULL, AF_INET, "1.2.3.4", 1), 0);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

Test(policy, exclude_prefixes_v6)
{
	struct ubs_excl_rule v[4];
	struct ubt_seg s, r;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	v[0] = xaddr(AF_INET6, "fd00::", 8, 0, 0);
	v[1] = xaddr(AF_INET6, "2001:db8:abcd:1230::", 60, 0, 0);
	v[2] = xaddr(AF_INET6, "2001:db8::1", 128, 0, 0);
	publish_rules(&s, v, 3);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "fd00::1", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "fdff:ffff::", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "fe00::", 1), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "fc00::", 1), 0);
	/* /60: ...:1230:: to ...:123f:ffff:... */
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8:abcd:1230::", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6,
			"2001:db8:abcd:123f:ffff:ffff:ffff:ffff", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8:abcd:1240::", 1), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8:abcd:122f::", 1), 0);
	/* /128: one address. */
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8::1", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8::", 1), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8::2", 1), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8::1:0:0:1", 1), 0);
	/* IPv6 rules do not match IPv4. */
	cr_assert_eq(ex(&r, NULL, AF_INET, "253.0.0.1", 1), 0);
	/* /0 matches every IPv6 address and no IPv4 one. */
	v[3] = xaddr(AF_INET6, "::", 0, 0, 0);
	publish_rules(&s, v + 3, 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "2001:db8::1", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET6, "::", 1), 1);
	cr_assert_eq(ex(&r, NULL, AF_INET, "1.2.3.4", 1), 0);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

Test(policy, exclude_ports_and_programs)
{
	struct ubs_excl_rule v[5];
	struct ubt_seg s, r;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	v[0] = xport(11211, 11211);
	v[1] = xport(5000, 5010);
	v[2] = xprog("batch-etl");
	v[3] = xaddr(AF_INET, "10.0.0.0", 8, 6379, 6379);
	v[4] = xaddr(AF_INET6, "fd00::", 16, 8000, 8100);
	publish_rules(&s, v, 5);
	/* Port rules: any address, any family, no address at all. */
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 11211), 1);
	cr_assert_eq(ex(&r, "web", AF_INET6, "2001:db8::1", 11211), 1);
	cr_assert_eq(pp_excluded(&r, "web", 0, NULL, 11211), 1);
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 11210), 0);
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 11212), 0);
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 5000), 1);
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 5005), 1);
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 5010), 1);
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 4999), 0);
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 5011), 0);
	cr_assert_eq(ex(&r, "web", AF_INET, "1.2.3.4", 0), 0);
	/* Program rule: that service, whatever the address. */
	cr_assert_eq(ex(&r, "batch-etl", AF_INET, "1.2.3.4", 80), 1);
	cr_assert_eq(pp_excluded(&r, "batch-etl", 0, NULL, 0), 1);
	cr_assert_eq(ex(&r, "batch-et", AF_INET, "1.2.3.4", 80), 0);
	cr_assert_eq(ex(&r, "batch-etl2", AF_INET, "1.2.3.4", 80), 0);
	cr_assert_eq(ex(&r, "", AF_INET, "1.2.3.4", 80), 0);
	cr_assert_eq(ex(&r, NULL, AF_INET, "1.2.3.4", 80), 0);
	/* Address + port: both must match. */
	cr_assert_eq(ex(&r, "web", AF_INET, "10.1.2.3", 6379), 1);
	cr_assert_eq(ex(&r, "web", AF_INET, "10.1.2.3", 6380), 0);
	cr_assert_eq(ex(&r, "web", AF_INET, "11.1.2.3", 6379), 0);
	cr_assert_eq(ex(&r, "web", AF_INET6, "fd00:1::5", 8000), 1);
	cr_assert_eq(ex(&r, "web", AF_INET6, "fd00:1::5", 8100), 1);
	cr_assert_eq(ex(&r, "web", AF_INET6, "fd00:1::5", 8101), 0);
	cr_assert_eq(ex(&r, "web", AF_INET6, "fd01::5", 8000), 0);
	cr_assert_eq(pp_publish_ex(&s, &(struct ubs_svc_policy){ 0 }, NULL, 0,
				   v, UBS_POLICY_MAX_EXCL + 1), -E2BIG);
	/* pp_publish (services only) keeps the rules. */
	{
		struct ubs_svc_policy d, a = rec("svc-a", 3), p;

		pp_defaults(&d);
		cr_assert_eq(pp_publish(&s, &d, &a, 1), 0);
		cr_assert_eq(pp_lookup(&r, "svc-a", &p), 1);
		cr_assert_eq(ex(&r, "batch-etl", AF_INET, "1.2.3.4", 80), 1);
	}
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

/*
 * Two rule sets, A and B, built so that every probe below gets the same
 * answer from A and from B, and a different one from any mix of the two:
 * rule i is 10.i.0.0/16 port 1000+i in A and 11.i.0.0/16 port 2000+i in B
 * (probe 10.i.0.1:2000+i and 11.i.0.1:1000+i: 0 in both, 1 from a rule
 * torn between them); A has 64 rules with a port-9 rule at 62 and program
 * "both" at 63, B has 63 rules with "both" at 62 (probe "both": 1 in both,
 * 0 from B's count over A's rules).
 */
static void torn_set(struct ubs_excl_rule *v, int b, uint32_t *n)
{
	char a[32];

	for (unsigned i = 0; i < 62; i++) {
		snprintf(a, sizeof(a), "%u.%u.0.0", b ? 11 : 10, i);
		v[i] = xaddr(AF_INET, a, 16, (b ? 2000 : 1000) + i,
			     (b ? 2000 : 1000) + i);
	}
	if (b) {
		v[62] = xprog("both");
		*n = 63;
	} else {
		v[62] = xport(9, 9);
		v[63] = xprog("both");
		*n = 64;
	}
}

static int excl_writer(int unused)
{
	struct ubs_excl_rule v[2][UBS_POLICY_MAX_EXCL];
	struct ubs_svc_policy d;
	uint64_t t0 = dt_now_ms();
	uint32_t n[2], k = 0;

	(void)unused;
	memset(v, 0, sizeof(v));
	torn_set(v[0], 0, &n[0]);
	torn_set(v[1], 1, &n[1]);
	pp_defaults(&d);
	while (race_on(t0)) {
		k++;
		if (pp_publish_ex(&shared_seg, &d, NULL, 0, v[k & 1],
				  n[k & 1]))
			return 1;
	}
	return 0;
}

Test(policy, concurrent_exclude_reader_sees_one_whole_set, .timeout = 30)
{
	struct ubs_excl_rule v[UBS_POLICY_MAX_EXCL];
	uint64_t end, reads = 0, rs = 1, gens = 0, g0;
	struct ubt_seg r;
	uint32_t n;
	pid_t pid;

	memset(v, 0, sizeof(v));
	cr_assert_eq(pp_create(&shared_seg), 0);
	torn_set(v, 0, &n);
	publish_rules(&shared_seg, v, n);
	cr_assert_eq(pp_map(&r, dup(shared_seg.fd)), 0);
	g0 = pp_generation(&r);
	race_begin();
	pid = child(excl_writer, 1);
	end = dt_now_ms();
	while (race_reading(end, reads > 10000 &&
			    pp_generation(&r) - g0 > 100)) {
		unsigned i;
		uint8_t a[4];
		int got;

		rs = rs * 6364136223846793005ull + 1442695040888963407ull;
		i = (unsigned)(rs >> 58);       /* 0..63 */
		switch ((rs >> 40) & 3) {
		case 0:                         /* 10.i.0.1 : 2000+i */
		case 1:                         /* 11.i.0.1 : 1000+i */
			if (i >= 62)
				i -= 2;
			a[0] = (rs >> 40) & 1 ? 11 : 10;
			a[1] = (uint8_t)i;
			a[2] = 0;
			a[3] = 1;
			got = pp_excluded(&r, "svc", AF_INET, a,
					  (uint16_t)(((rs >> 40) & 1 ? 1000 :
						      2000) + i));
			if (got == -EAGAIN)
				continue;
			cr_assert_eq(got, 0, "torn rule %u", i);
			break;
		default:                        /* program "both" */
			got = pp_excluded(&r, "both", AF_INET6, NULL, 1);
			if (got == -EAGAIN)
				continue;
			cr_assert_eq(got, 1, "torn rule count");
			break;
		}
		reads++;
	}
	gens = pp_generation(&r) - g0;
	cr_assert_eq(wait_ok(pid), 0);
	cr_assert_gt(reads, 10000);
	cr_assert_gt(gens, 100, "the reader must really race the writer");
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&shared_seg);
}

/* ------------------------------------------------------------ listeners */

/* A listener entry from text. */
static struct ubs_lst_entry lent(int fam, const char *a, unsigned port,
				 int v6only)
{
	struct ubs_lst_entry e;

	memset(&e, 0, sizeof(e));
	e.family = (uint16_t)fam;
	e.port = (uint16_t)port;
	e.v6only = (uint32_t)v6only;
	e.netns = 4026531840u;
	cr_assert_eq(inet_pton(fam, a, e.addr), 1, "%s", a);
	return e;
}

/* pp_listener_maybe for address text a (family fam) and port. */
static int lm(const struct ubt_seg *r, int fam, const char *a, unsigned port)
{
	uint8_t buf[16];

	cr_assert_eq(inet_pton(fam, a, buf), 1, "%s", a);
	return pp_listener_maybe(r, fam, buf, (uint16_t)port);
}

Test(policy, listener_table_wildcards_and_exact_addresses)
{
	struct ubs_lst_entry v[8];
	struct ubt_seg s, r;
	uint64_t g;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	/* A fresh page has no listener. */
	cr_assert_eq(lm(&r, AF_INET, "127.0.0.1", 80), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::1", 80), 0);
	cr_assert_eq(lm(&r, AF_INET, "0.0.0.0", 0), 0);

	v[0] = lent(AF_INET, "0.0.0.0", 1000, 0);
	v[1] = lent(AF_INET6, "::", 2000, 0);
	v[2] = lent(AF_INET6, "::", 3000, 1);
	v[3] = lent(AF_INET, "127.0.0.1", 4000, 0);
	v[4] = lent(AF_INET6, "2001:db8::1", 5000, 0);
	v[5] = lent(AF_INET6, "::ffff:10.0.0.1", 7000, 0);     /* mapped */
	v[6] = lent(AF_INET, "10.0.0.2", 8000, 1);  /* v6only ignored */
	g = pp_generation(&r);
	cr_assert_eq(pp_publish_listeners(&s, v, 7), 0);
	cr_assert_eq(pp_generation(&r), g + 1, "one seqlock update");

	/* 0.0.0.0: every IPv4 address (and v4-mapped), no IPv6 one. */
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 1000), 1);
	cr_assert_eq(lm(&r, AF_INET, "127.0.0.1", 1000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "::ffff:1.2.3.4", 1000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "2001:db8::9", 1000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::1", 1000), 0);
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 1001), 0);
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 999), 0);
	/* Dual-stack ::: IPv6, IPv4 and v4-mapped. */
	cr_assert_eq(lm(&r, AF_INET6, "2001:db8::9", 2000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "::1", 2000), 1);
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 2000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "::ffff:127.0.0.1", 2000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "::1", 2001), 0);
	/* v6only ::: IPv6 only. */
	cr_assert_eq(lm(&r, AF_INET6, "::1", 3000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "fe80::1", 3000), 1);
	cr_assert_eq(lm(&r, AF_INET, "127.0.0.1", 3000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::ffff:127.0.0.1", 3000), 0);
	/* An exact IPv4 address: that one, also v4-mapped. */
	cr_assert_eq(lm(&r, AF_INET, "127.0.0.1", 4000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "::ffff:127.0.0.1", 4000), 1);
	cr_assert_eq(lm(&r, AF_INET, "127.0.0.2", 4000), 0);
	cr_assert_eq(lm(&r, AF_INET, "0.0.0.0", 4000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::1", 4000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::7f00:1", 4000), 0); /* not mapped */
	cr_assert_eq(lm(&r, AF_INET, "127.0.0.1", 4001), 0);
	/* An exact IPv6 address. */
	cr_assert_eq(lm(&r, AF_INET6, "2001:db8::1", 5000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "2001:db8::2", 5000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "2001:db8::1:0:0:1", 5000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::", 5000), 0);
	cr_assert_eq(lm(&r, AF_INET, "32.1.13.184", 5000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "2001:db8::1", 5001), 0);
	/* A listener on a v4-mapped address was stored as IPv4. */
	cr_assert_eq(lm(&r, AF_INET, "10.0.0.1", 7000), 1);
	cr_assert_eq(lm(&r, AF_INET6, "::ffff:10.0.0.1", 7000), 1);
	cr_assert_eq(lm(&r, AF_INET, "10.0.0.3", 7000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::", 7000), 0);
	/* v6only means nothing on IPv4. */
	cr_assert_eq(lm(&r, AF_INET, "10.0.0.2", 8000), 1);
	/* Other families and no address. */
	cr_assert_eq(pp_listener_maybe(&r, AF_UNIX, "\x7f\0\0\1", 4000),
		     -EAFNOSUPPORT);
	cr_assert_eq(pp_listener_maybe(&r, AF_INET, NULL, 4000), -EINVAL);

	/* Refusals change nothing. */
	g = pp_generation(&r);
	cr_assert_eq(pp_publish_listeners(&s, v, UBS_POLICY_MAX_LST + 1),
		     -E2BIG);
	v[7] = v[0];
	v[7].family = AF_UNIX;
	cr_assert_eq(pp_publish_listeners(&s, v, 8), -EINVAL);
	cr_assert_eq(pp_generation(&r), g);
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 1000), 1);

	/* Republishing with none clears the table. */
	cr_assert_eq(pp_publish_listeners(&s, NULL, 0), 0);
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 1000), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::1", 2000), 0);
	cr_assert_eq(lm(&r, AF_INET, "127.0.0.1", 4000), 0);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

/* pp_listener_board for address text a (family fam), port, namespace
 * and board. */
static int lb(const struct ubt_seg *r, int fam, const char *a, unsigned port,
	      uint64_t netns, uint64_t board)
{
	uint8_t buf[16];

	cr_assert_eq(inet_pton(fam, a, buf), 1, "%s", a);
	return pp_listener_board(r, fam, buf, (uint16_t)port, netns, board);
}

/*
 * A connection may go through a board only when every listener of its
 * namespace that could take it is of that board: one of another board
 * (or of none) might be the one the kernel picks, and it would never
 * look there.  Listeners of other namespaces do not count.
 */
Test(policy, listener_board_needs_every_candidate_on_that_board)
{
	const uint64_t ns = 4026531840u, ns2 = 4026532000u;
	const uint64_t B = 0x1111, C = 0x2222;
	struct ubs_lst_entry v[12];
	struct ubt_seg s, r;
	uint32_t n = 0;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 1000, ns, B), 0, "empty");

	/* 1000: 0.0.0.0 of B. */
	v[n] = lent(AF_INET, "0.0.0.0", 1000, 0), v[n++].board = B;
	/* 2000: 127.0.0.1 of B and 127.0.0.2 of C (a different address). */
	v[n] = lent(AF_INET, "127.0.0.1", 2000, 0), v[n++].board = B;
	v[n] = lent(AF_INET, "127.0.0.2", 2000, 0), v[n++].board = C;
	/* 3000: 127.0.0.1 of B, and 0.0.0.0 of C (SO_REUSEPORT-like:
	 * either could take a connection to 127.0.0.1). */
	v[n] = lent(AF_INET, "127.0.0.1", 3000, 0), v[n++].board = B;
	v[n] = lent(AF_INET, "0.0.0.0", 3000, 0), v[n++].board = C;
	/* 4000: dual-stack :: of B, and 127.0.0.1 of none. */
	v[n] = lent(AF_INET6, "::", 4000, 0), v[n++].board = B;
	v[n] = lent(AF_INET, "127.0.0.1", 4000, 0), v[n++].board = 0;
	/* 5000: v6only :: of C, and 0.0.0.0 of B. */
	v[n] = lent(AF_INET6, "::", 5000, 1), v[n++].board = C;
	v[n] = lent(AF_INET, "0.0.0.0", 5000, 0), v[n++].board = B;
	/* 6000: of B in ns, of C in ns2. */
	v[n] = lent(AF_INET, "0.0.0.0", 6000, 0), v[n++].board = B;
	v[n] = lent(AF_INET, "0.0.0.0", 6000, 0), v[n].netns = ns2,
		v[n++].board = C;
	cr_assert_eq(pp_publish_listeners(&s, v, n), 0);

	cr_assert_eq(lb(&r, AF_INET, "10.1.2.3", 1000, ns, B), 1);
	cr_assert_eq(lb(&r, AF_INET6, "::ffff:10.1.2.3", 1000, ns, B), 1);
	cr_assert_eq(lb(&r, AF_INET, "10.1.2.3", 1000, ns, C), 0);
	cr_assert_eq(lb(&r, AF_INET, "10.1.2.3", 1000, ns2, B), 0,
		     "no listener in that namespace");
	cr_assert_eq(lb(&r, AF_INET, "10.1.2.3", 1001, ns, B), 0, "port");
	cr_assert_eq(lb(&r, AF_INET6, "::1", 1000, ns, B), 0, "family");
	cr_assert_eq(lb(&r, AF_INET, "10.1.2.3", 1000, ns, 0), 0,
		     "board 0 is no board");

	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 2000, ns, B), 1);
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.2", 2000, ns, C), 1);
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.2", 2000, ns, B), 0);
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.3", 2000, ns, B), 0);

	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 3000, ns, B), 0,
		     "a wildcard of another board could take it");
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 3000, ns, C), 0);
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.5", 3000, ns, C), 1,
		     "only the wildcard takes that address");

	cr_assert_eq(lb(&r, AF_INET6, "::1", 4000, ns, B), 1);
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 4000, ns, B), 0,
		     "a listener of no board could take it");
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.9", 4000, ns, B), 1);

	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 5000, ns, B), 1,
		     "a v6only :: does not take IPv4");
	cr_assert_eq(lb(&r, AF_INET6, "::1", 5000, ns, C), 1);
	cr_assert_eq(lb(&r, AF_INET6, "::1", 5000, ns, B), 0);

	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 6000, ns, B), 1,
		     "another namespace's listener does not count");
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 6000, ns2, C), 1);
	cr_assert_eq(lb(&r, AF_INET, "127.0.0.1", 6000, ns2, B), 0);

	/* Errors as pp_listener_maybe; a stuck writer, a count out of
	 * range. */
	cr_assert_eq(pp_listener_board(&r, AF_UNIX, "\x7f\0\0\1", 1000, ns,
				       B), -EAFNOSUPPORT);
	cr_assert_eq(pp_listener_board(&r, AF_INET, NULL, 1000, ns, B),
		     -EINVAL);
	{
		struct ubs_policy_page *pg = (struct ubs_policy_page *)
			(s.base + UBT_SEG_HDR_SIZE);

		atomic_fetch_add(&pg->seq, 1);
		cr_assert_eq(lb(&r, AF_INET, "10.1.2.3", 1000, ns, B), -EAGAIN);
		atomic_fetch_add(&pg->seq, 1);
		pg->nlst = UBS_POLICY_MAX_LST + 1;
		cr_assert_eq(lb(&r, AF_INET, "10.1.2.3", 1000, ns, B), -EPROTO);
		pg->nlst = n;
	}
	cr_assert_eq(lb(&r, AF_INET, "10.1.2.3", 1000, ns, B), 1);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

Test(policy, listener_table_full_and_independent_of_the_policy)
{
	static struct ubs_lst_entry v[UBS_POLICY_MAX_LST];
	struct ubs_svc_policy d, a = rec("svc-a", 3), p;
	struct ubs_excl_rule x = xport(11211, 11211);
	struct ubt_seg s, r;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	/* Every slot is searched, the last one too. */
	for (unsigned i = 0; i < UBS_POLICY_MAX_LST; i++) {
		char t[32];

		snprintf(t, sizeof(t), "10.0.%u.%u", i / 256, i % 256);
		v[i] = lent(AF_INET, t, 10000 + i, 0);
	}
	cr_assert_eq(pp_publish_listeners(&s, v, UBS_POLICY_MAX_LST), 0);
	cr_assert_eq(lm(&r, AF_INET, "10.0.0.0", 10000), 1);
	cr_assert_eq(lm(&r, AF_INET, "10.0.3.255", 10000 + 1023), 1);
	cr_assert_eq(lm(&r, AF_INET, "10.0.3.255", 10000 + 1022), 0);
	/* Services and exclude rules leave the listeners alone ... */
	pp_defaults(&d);
	cr_assert_eq(pp_publish_ex(&s, &d, &a, 1, &x, 1), 0);
	cr_assert_eq(pp_publish(&s, &d, &a, 1), 0);
	cr_assert_eq(lm(&r, AF_INET, "10.0.3.255", 10000 + 1023), 1);
	/* ... and the listeners leave services and exclude rules alone. */
	cr_assert_eq(pp_publish_listeners(&s, v, 1), 0);
	cr_assert_eq(pp_lookup(&r, "svc-a", &p), 1);
	cr_assert_eq(p.spin_us, 3);
	cr_assert_eq(pp_excluded(&r, "web", 0, NULL, 11211), 1);
	cr_assert_eq(lm(&r, AF_INET, "10.0.0.0", 10000), 1);
	cr_assert_eq(lm(&r, AF_INET, "10.0.3.255", 10000 + 1023), 0);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

/*
 * A count past the table (from a buggy or hostile writer: the reader
 * cannot trust shared memory) is refused, and the scan never leaves the
 * table: unclamped, 2^32 entries would run far off the mapping.
 */
Test(policy, listener_count_out_of_range_is_refused)
{
	struct ubs_lst_entry e = lent(AF_INET, "0.0.0.0", 1000, 0);
	struct ubs_policy_page *pg;
	struct ubt_seg s, r;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	cr_assert_eq(pp_publish_listeners(&s, &e, 1), 0);
	pg = (struct ubs_policy_page *)(s.base + UBT_SEG_HDR_SIZE);
	pg->nlst = UINT32_MAX;
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 999), -EPROTO);
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 1000), -EPROTO);
	pg->nlst = UBS_POLICY_MAX_LST + 1;
	cr_assert_eq(lm(&r, AF_INET6, "::1", 1), -EPROTO);
	pg->nlst = UBS_POLICY_MAX_LST;  /* in range: unused slots never match */
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 1000), 1);
	cr_assert_eq(lm(&r, AF_INET, "0.0.0.0", 0), 0);
	cr_assert_eq(lm(&r, AF_INET6, "::", 0), 0);
	/* A writer stuck inside an update: no stable copy. */
	atomic_fetch_add(&pg->seq, 1);
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 1000), -EAGAIN);
	atomic_fetch_add(&pg->seq, 1);
	cr_assert_eq(lm(&r, AF_INET, "1.2.3.4", 1000), 1);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

/* A policy segment too small for the listener table is not mapped. */
Test(policy, reader_refuses_a_page_without_the_listener_table)
{
	size_t small = UBT_SEG_HDR_SIZE +
		offsetof(struct ubs_policy_page, lst) + 4096;
	struct ubt_seg w, r;

	small &= ~(size_t)4095;
	cr_assert_lt(small, UBT_SEG_HDR_SIZE + sizeof(struct ubs_policy_page));
	cr_assert_eq(ubt_seg_create(&w, small, UBT_SEG_POLICY, "x"), 0);
	cr_assert_eq(pp_map(&r, w.fd), -EPROTO);
	cr_assert_geq(fcntl(w.fd, F_GETFD), 0);
	ubt_seg_unmap(&w);
	cr_assert_eq(pp_create(&w), 0);
	cr_assert_geq(w.size, UBT_SEG_HDR_SIZE +
		      sizeof(struct ubs_policy_page));
	cr_assert_eq(pp_map(&r, dup(w.fd)), 0);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&w);
}

/*
 * Two listener tables, A and B, whose every probe below answers the same
 * from A and from B and differently from any mix of the two:
 *  - entry i (1..996) is 10.x.y.1 port 10000+i in A, 11.x.y.1 port
 *    20000+i in B: probes 10.x.y.1:20000+i and 11.x.y.1:10000+i answer 0
 *    from both, 1 from an entry torn between them;
 *  - 1.2.3.4:9 is first in A and at 997 in B, 5.6.7.8:9 the other way
 *    round: both answer 1 from either table, 0 from the new table's head
 *    over the old table's tail (a reader overtaking the writer);
 *  - 9.9.9.9:9 is last of A's 1000 entries and of B's 999: 1 from both, 0
 *    from B's count over A's entries.
 */
#define TORN_LST 1000

static void torn_lst(struct ubs_lst_entry *v, int b, uint32_t *n)
{
	char a[32];

	for (unsigned i = 1; i <= 996; i++) {
		snprintf(a, sizeof(a), "%u.%u.%u.1", b ? 11 : 10, i / 256,
			 i % 256);
		v[i] = lent(AF_INET, a, (b ? 20000 : 10000) + i, 0);
	}
	v[0] = lent(AF_INET, b ? "5.6.7.8" : "1.2.3.4", 9, 0);
	v[997] = lent(AF_INET, b ? "1.2.3.4" : "5.6.7.8", 9, 0);
	if (b) {
		v[998] = lent(AF_INET, "9.9.9.9", 9, 0);
		*n = TORN_LST - 1;
	} else {
		v[998] = lent(AF_INET6, "::", 8, 1);
		v[999] = lent(AF_INET, "9.9.9.9", 9, 0);
		*n = TORN_LST;
	}
}

static int lst_writer(int unused)
{
	static struct ubs_lst_entry v[2][TORN_LST];
	uint64_t t0 = dt_now_ms();
	uint32_t n[2], k = 0;

	torn_lst(v[0], 0, &n[0]);
	torn_lst(v[1], 1, &n[1]);
	(void)unused;
	while (race_on(t0)) {
		k++;
		if (pp_publish_listeners(&shared_seg, v[k & 1], n[k & 1]))
			return 1;
	}
	return 0;
}

Test(policy, concurrent_listener_reader_sees_one_whole_table, .timeout = 30)
{
	static const uint8_t both[3][4] = {
		{ 1, 2, 3, 4 }, { 5, 6, 7, 8 }, { 9, 9, 9, 9 } };
	static struct ubs_lst_entry v[TORN_LST];
	uint64_t end, reads = 0, rs = 1, gens = 0, g0;
	struct ubt_seg r;
	uint32_t n;
	pid_t pid;

	cr_assert_eq(pp_create(&shared_seg), 0);
	torn_lst(v, 0, &n);
	cr_assert_eq(pp_publish_listeners(&shared_seg, v, n), 0);
	cr_assert_eq(pp_map(&r, dup(shared_seg.fd)), 0);
	g0 = pp_generation(&r);
	race_begin();
	pid = child(lst_writer, 1);
	end = dt_now_ms();
	while (race_reading(end, reads > 10000 &&
			    pp_generation(&r) - g0 > 100)) {
		unsigned i;
		uint8_t a[4];
		int got;

		rs = rs * 6364136223846793005ull + 1442695040888963407ull;
		i = 1 + (unsigned)((rs >> 33) % 996);
		switch ((rs >> 20) & 7) {
		case 0:                         /* 10.x.y.1 : 20000+i */
		case 1:                         /* 11.x.y.1 : 10000+i */
			a[0] = (rs >> 20) & 1 ? 11 : 10;
			a[1] = (uint8_t)(i / 256);
			a[2] = (uint8_t)(i % 256);
			a[3] = 1;
			got = pp_listener_maybe(&r, AF_INET, a,
						(uint16_t)(((rs >> 20) & 1 ?
							    10000 : 20000) + i));
			if (got == -EAGAIN)
				continue;
			cr_assert_eq(got, 0, "torn entry %u", i);
			break;
		default:                        /* in both, moved or last */
			memcpy(a, both[((rs >> 20) & 7) % 3], sizeof(a));
			got = pp_listener_maybe(&r, AF_INET, a, 9);
			if (got == -EAGAIN)
				continue;
			cr_assert_eq(got, 1, "torn table: %u.%u.%u.%u:9 missed",
				     a[0], a[1], a[2], a[3]);
			break;
		}
		reads++;
	}
	gens = pp_generation(&r) - g0;
	cr_assert_eq(wait_ok(pid), 0);
	cr_assert_gt(reads, 10000);
	cr_assert_gt(gens, 100, "the reader must really race the writer");
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&shared_seg);
}

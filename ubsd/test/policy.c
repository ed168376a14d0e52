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

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
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
static int writer(int secs)
{
	struct ubs_svc_policy d, v[64];
	uint64_t end = now_ms() + (uint64_t)secs * 1000;
	uint32_t k = 0, i;

	while (now_ms() < end) {
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
	pid = child(writer, 1);
	end = now_ms() + 1000;
	while (now_ms() < end) {
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

static int excl_writer(int secs)
{
	struct ubs_excl_rule v[2][UBS_POLICY_MAX_EXCL];
	struct ubs_svc_policy d;
	uint64_t end = now_ms() + (uint64_t)secs * 1000;
	uint32_t n[2], k = 0;

	memset(v, 0, sizeof(v));
	torn_set(v[0], 0, &n[0]);
	torn_set(v[1], 1, &n[1]);
	pp_defaults(&d);
	while (now_ms() < end) {
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
	pid = child(excl_writer, 1);
	end = now_ms() + 1000;
	while (now_ms() < end) {
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

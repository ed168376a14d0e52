/* SPDX-License-Identifier: MIT */
/*
 * conf.c - the ubs.conf parser: a good file gives exactly the values it
 * says (and prints back to a file that parses to the same table); every
 * kind of error names the right FILE:LINE; a failed parse leaves the
 * caller's table untouched; the value rules hold at their bounds.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "conf.h"

static char dir[64];
static char path[128];

static void setup(void)
{
	strcpy(dir, "/tmp/ubs-conf-test.XXXXXX");
	cr_assert(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/ubs.conf", dir);
}

static void teardown(void)
{
	unlink(path);
	rmdir(dir);
}

TestSuite(conf, .init = setup, .fini = teardown, .timeout = 30);

static void write_file(const char *text)
{
	FILE *f = fopen(path, "w");

	cr_assert(f);
	cr_assert(fputs(text, f) >= 0);
	cr_assert(fclose(f) == 0);
}

/* Parse text; expect an error at line with msg in it. */
static void expect_error(const char *text, unsigned line, const char *msg)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX], want[192];

	write_file(text);
	conf_init(&c);
	c.nsvc = 12345;                 /* must survive a failed parse */
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), -EINVAL,
		     "accepted:\n%s", text);
	snprintf(want, sizeof(want), "%s:%u: ", path, line);
	cr_assert(strncmp(err, want, strlen(want)) == 0,
		  "want '%s...', got '%s'", want, err);
	cr_assert(strstr(err, msg), "want '%s' in '%s'", msg, err);
	cr_assert_eq(c.nsvc, 12345, "a failed parse changed the table");
}

Test(conf, good_file_gives_its_values)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX];

	write_file("# UBS policy\n"
		   "\n"
		   "[daemon]\n"
		   "admin_group = root\n"
		   "\n"
		   "[service web-1]            # nginx\n"
		   "accel = off\n"
		   "mem_quota=2G\n"
		   "  [ default ]  \n"
		   "\taccel = on\n"
		   "spin_us = 0\n"
		   "ring_kib = 4\n"
		   "mem_quota = 512k\n"
		   "[service  db.primary_2]\n"
		   "spin_us = 1000000\n"
		   "ring_kib = 65536\n"
		   "mem_quota = 7\n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert(c.has_admin_group);
	cr_assert_eq(c.admin_gid, 0);
	cr_assert_str_eq(c.admin_group, "root");
	cr_assert_str_eq(c.deflt.name, "");
	cr_assert_eq(c.deflt.accel, 1);
	cr_assert_eq(c.deflt.spin_us, 0);
	cr_assert_eq(c.deflt.ring_kib, 4);
	cr_assert_eq(c.deflt.mem_quota, 512 * 1024);
	cr_assert_eq(c.nsvc, 2);
	/* web-1 came before [default] and still inherits what it left out. */
	cr_assert_str_eq(c.svc[0].name, "web-1");
	cr_assert_eq(c.svc[0].accel, 0);
	cr_assert_eq(c.svc[0].spin_us, 0);
	cr_assert_eq(c.svc[0].ring_kib, 4);
	cr_assert_eq(c.svc[0].mem_quota, 2ull << 30);
	cr_assert_str_eq(c.svc[1].name, "db.primary_2");
	cr_assert_eq(c.svc[1].accel, 1);
	cr_assert_eq(c.svc[1].spin_us, 1000000);
	cr_assert_eq(c.svc[1].ring_kib, 65536);
	cr_assert_eq(c.svc[1].mem_quota, 7);
	cr_assert_eq(conf_find(&c, "db.primary_2"), &c.svc[1]);
	cr_assert_null(conf_find(&c, "db"));
}

/* Print c as a config file (every key explicit). */
static void print_conf(FILE *f, const struct ubs_conf *c)
{
	const struct ubs_svc_policy *p = &c->deflt;

	fprintf(f, "[daemon]\ncross_netns = %s\n",
		c->cross_netns ? "on" : "off");
	if (c->has_admin_group)
		fprintf(f, "admin_group = %s\n", c->admin_group);
	for (uint32_t i = 0; i <= c->nsvc; i++) {
		if (i == 0)
			fprintf(f, "[default]\n");
		else
			fprintf(f, "[service %s]\n", (p = &c->svc[i - 1])->name);
		fprintf(f, "accel = %s\nspin_us = %" PRIu32 "\nring_kib = %"
			PRIu32 "\nmem_quota = %" PRIu64 "\n",
			p->accel ? "on" : "off", p->spin_us, p->ring_kib,
			p->mem_quota);
	}
}

Test(conf, good_file_round_trips)
{
	static struct ubs_conf a, b;
	char err[CONF_ERR_MAX];
	FILE *f;

	write_file("[default]\nspin_us = 3\nmem_quota = 1M\n"
		   "[daemon]\nadmin_group = 4242\ncross_netns = off\n"
		   "[service a]\naccel = off\n"
		   "[service b]\nring_kib = 128\n"
		   "[service c]\n");
	cr_assert_eq(conf_load(path, &a, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(a.admin_gid, 4242);
	f = fopen(path, "w");
	cr_assert(f);
	print_conf(f, &a);
	cr_assert(fclose(f) == 0);
	memset(&b, 0xa5, sizeof(b));
	cr_assert_eq(conf_load(path, &b, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(b.nsvc, 3);
	cr_assert_eq(memcmp(&a.deflt, &b.deflt, sizeof(a.deflt)), 0);
	cr_assert_eq(memcmp(a.svc, b.svc, sizeof(a.svc[0]) * 3), 0);
	cr_assert_eq(b.has_admin_group, a.has_admin_group);
	cr_assert(!a.cross_netns);
	cr_assert_eq(b.cross_netns, a.cross_netns);
	cr_assert_eq(b.admin_gid, a.admin_gid);
	cr_assert_str_eq(b.admin_group, a.admin_group);
}

Test(conf, empty_file_is_the_builtin_table)
{
	static struct ubs_conf c, builtin;
	char err[CONF_ERR_MAX];

	write_file("# nothing\n\n   \n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	conf_init(&builtin);
	cr_assert_eq(memcmp(&c, &builtin, sizeof(c)), 0);
	cr_assert_eq(c.nsvc, 0);
	cr_assert(!c.has_admin_group);
	cr_assert(c.cross_netns, "cross_netns is on by default");
}

Test(conf, missing_file_is_enoent)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX], want[160];

	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), -ENOENT);
	snprintf(want, sizeof(want), "%s: No such file or directory", path);
	cr_assert_str_eq(err, want);
}

Test(conf, each_error_names_its_line)
{
	expect_error("[default]\naccel = on\nfrob = 1\n", 3,
		     "unknown key 'frob'");
	expect_error("\n\n[service a]\naccel = maybe\n", 4,
		     "bad value 'maybe' for accel (on or off)");
	expect_error("[default]\nspin_us = 1000001\n", 2,
		     "bad value '1000001' for spin_us");
	expect_error("[default]\nspin_us = -1\n", 2, "for spin_us");
	expect_error("[default]\nring_kib = 48\n", 2,
		     "for ring_kib (a power of two, 4 to 65536)");
	expect_error("[default]\nring_kib = 2\n", 2, "for ring_kib");
	expect_error("[default]\nring_kib = 131072\n", 2, "for ring_kib");
	expect_error("[default]\nmem_quota = 1T\n", 2, "for mem_quota");
	expect_error("[default]\nmem_quota = 99999999999999999999\n", 2,
		     "for mem_quota");
	expect_error("[default]\nmem_quota = 17179869184G\n", 2,
		     "for mem_quota");
	expect_error("[service a]\n[service b]\n# x\n[service a]\n", 4,
		     "duplicate service 'a' (first at line 1)");
	expect_error("# top\naccel = on\n", 2,
		     "key 'accel' outside a section");
	expect_error("[default]\n[default]\n", 2, "duplicate section");
	expect_error("[daemon]\n[daemon]\n", 2, "duplicate section");
	expect_error("[default]\naccel = on\naccel = off\n", 3,
		     "duplicate key 'accel' (first at line 2)");
	expect_error("[servic x]\n", 1, "unknown section [servic x]");
	expect_error("[service]\n", 1, "needs a name");
	expect_error("[service a/b]\n", 1, "bad service name 'a/b'");
	expect_error("[service "
		     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		     "]\n", 1, "bad service name");
	expect_error("[default\n", 1, "without closing ']'");
	expect_error("[default]\naccel on\n", 2, "expected 'key = value'");
	expect_error("[default]\n= on\n", 2, "missing key");
	expect_error("[default]\naccel =\n", 2, "missing value");
	expect_error("[default]\nadmin_group = root\n", 2,
		     "'admin_group' belongs in [daemon]");
	expect_error("[daemon]\nspin_us = 4\n", 2, "not [daemon]");
	expect_error("[daemon]\nfoo = 4\n", 2, "unknown key 'foo' in [daemon]");
	expect_error("[daemon]\nadmin_group = no-such-group-ubs\n", 2,
		     "unknown group 'no-such-group-ubs'");
	expect_error("[daemon]\nadmin_group = 0\nadmin_group = 0\n", 3,
		     "duplicate key 'admin_group'");
}

Test(conf, cross_netns_key)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX];

	write_file("[daemon]\ncross_netns = off   # containers stay on TCP\n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert(!c.cross_netns);
	write_file("[daemon]\n  cross_netns=on\n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert(c.cross_netns);
	expect_error("[daemon]\n\ncross_netns = yes\n", 3,
		     "bad value 'yes' for cross_netns (on or off)");
	expect_error("[daemon]\ncross_netns = On\n", 2,
		     "bad value 'On' for cross_netns");
	expect_error("[daemon]\ncross_netns = off\ncross_netns = off\n", 3,
		     "duplicate key 'cross_netns' (first at line 2)");
	expect_error("[default]\ncross_netns = off\n", 2,
		     "key 'cross_netns' belongs in [daemon]");
	expect_error("[service a]\ncross_netns = off\n", 2,
		     "key 'cross_netns' belongs in [daemon]");
	expect_error("[exclude]\ncross_netns = off\n", 2,
		     "unknown key 'cross_netns' in [exclude]");
	expect_error("cross_netns = off\n", 1,
		     "key 'cross_netns' outside a section");
	expect_error("[daemon]\nfoo = 1\n", 2,
		     "(known: admin_group, cross_netns, pool_size, "
		     "pool_hugepages, board_slots)");
}

/* board_slots: each uid's board, 0 (none) to CONF_BOARD_SLOTS_MAX. */
Test(conf, board_slots)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX];

	conf_init(&c);
	cr_assert_eq(c.board_slots, CONF_BOARD_SLOTS_DEFAULT);
	cr_assert_eq(c.board_slots, 1024);
	write_file("[daemon]\nboard_slots = 0\n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.board_slots, 0);
	write_file("[daemon]\nboard_slots = 65536\n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.board_slots, 65536);
	expect_error("[daemon]\nboard_slots = 65537\n", 2,
		     "bad value '65537' for board_slots (0 to 65536)");
	expect_error("[daemon]\nboard_slots = -1\n", 2,
		     "bad value '-1' for board_slots");
	expect_error("[daemon]\nboard_slots = 1k\n", 2,
		     "bad value '1k' for board_slots");
	expect_error("[daemon]\nboard_slots = 8\nboard_slots = 8\n", 3,
		     "duplicate key 'board_slots' (first at line 2)");
	expect_error("[default]\nboard_slots = 8\n", 2,
		     "key 'board_slots' belongs in [daemon]");
}

Test(conf, memory_pool_keys)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX];

	conf_init(&c);
	cr_assert_eq(c.pool_size, CONF_POOL_SIZE_DEFAULT);
	cr_assert(!c.pool_hugepages);
	cr_assert_eq(c.deflt.mem_pool_min, 0, "the pool is off by default");
	write_file("[daemon]\npool_size = 1G\npool_hugepages = on\n"
		   "[default]\nmem_pool = 64K\n[service a]\nmem_pool = on\n"
		   "[service b]\nmem_quota = 8M\n[service c]\n"
		   "mem_pool = off\n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.pool_size, 1ull << 30);
	cr_assert(c.pool_hugepages);
	cr_assert_eq(c.deflt.mem_pool_min, 65536);
	cr_assert_eq(conf_find(&c, "a")->mem_pool_min, 1);
	cr_assert_eq(conf_find(&c, "b")->mem_pool_min, 65536, "inherited");
	cr_assert_eq(conf_find(&c, "b")->mem_quota, 8u << 20);
	cr_assert_eq(conf_find(&c, "c")->mem_pool_min, 0);
	expect_error("[daemon]\npool_size = lots\n", 2,
		     "bad value 'lots' for pool_size");
	expect_error("[daemon]\npool_hugepages = 1\n", 2,
		     "bad value '1' for pool_hugepages (on or off)");
	expect_error("[daemon]\npool_size = 1M\npool_size = 2M\n", 3,
		     "duplicate key 'pool_size' (first at line 2)");
	expect_error("[default]\npool_size = 1M\n", 2,
		     "key 'pool_size' belongs in [daemon]");
	expect_error("[default]\nmem_pool = 0\n", 2,
		     "bad value '0' for mem_pool");
	expect_error("[service x]\nmem_pool = 8G\n", 2,
		     "bad value '8G' for mem_pool");
}

/* mem_sites: names of functions and libraries, inherited from [default],
 * "any" clears it; anything else is an error on its line. */
Test(conf, memory_pool_call_sites)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX];

	conf_init(&c);
	cr_assert_str_empty(c.deflt.mem_sites, "any caller by default");
	write_file("[default]\nmem_sites = build_index,libsqlite3.so.0\n"
		   "[service a]\nmem_pool = 1K\n[service b]\n"
		   "mem_sites = any\n[service c]\nmem_sites = big_alloc\n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(c.deflt.mem_sites, "build_index,libsqlite3.so.0");
	cr_assert_str_eq(conf_find(&c, "a")->mem_sites,
			 "build_index,libsqlite3.so.0", "inherited");
	cr_assert_str_empty(conf_find(&c, "b")->mem_sites);
	cr_assert_str_eq(conf_find(&c, "c")->mem_sites, "big_alloc");
	expect_error("[default]\nmem_sites = a b\n", 2,
		     "bad value 'a b' for mem_sites");
	expect_error("[service x]\n\nmem_sites = a,,b\n", 3,
		     "bad value 'a,,b' for mem_sites");
	expect_error("[default]\nmem_sites = ,a\n", 2,
		     "bad value ',a' for mem_sites");
}

/* Rule i of c is an address rule of family fam for text/prefix/ports. */
static void expect_addr(const struct ubs_conf *c, uint32_t i, int fam,
			const char *text, unsigned prefix, unsigned lo,
			unsigned hi)
{
	uint8_t want[16] = { 0 };
	const struct ubs_excl_rule *r = &c->excl[i];

	cr_assert_eq(inet_pton(fam, text, want), 1);
	cr_assert_eq(r->kind, UBS_EXCL_ADDR, "rule %u", i);
	cr_assert_eq(r->family, fam, "rule %u", i);
	cr_assert_eq(r->prefix, prefix, "rule %u", i);
	cr_assert_eq(r->port_lo, lo, "rule %u", i);
	cr_assert_eq(r->port_hi, hi, "rule %u", i);
	cr_assert_eq(memcmp(r->addr, want, 16), 0, "rule %u address", i);
}

Test(conf, exclude_rules)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX];

	write_file("[default]\naccel = on\n"
		   "[exclude]\n"
		   "address = 10.0.0.0/8\n"
		   "address = 192.168.1.7            # one host\n"
		   "address = 172.16.5.9/20:6379\n"        /* host bits go */
		   "address = 10.1.2.3:8000-8100\n"
		   "address = 0.0.0.0/0:53\n"
		   "address = fd00::/8\n"
		   "address = 2001:db8::1\n"
		   "address = [2001:db8::]/32:443\n"
		   "address = [::1]:80-81\n"
		   "address = [::]\n"
		   "address = ::ffff:10.9.8.0/120\n"     /* is IPv4 */
		   "port = 11211\n"
		   "port=5000-5010\n"
		   "program = batch-etl\n"
		   "[service x]\n");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.nsvc, 1);
	cr_assert_eq(c.nexcl, 14);
	expect_addr(&c, 0, AF_INET, "10.0.0.0", 8, 0, 0);
	expect_addr(&c, 1, AF_INET, "192.168.1.7", 32, 0, 0);
	expect_addr(&c, 2, AF_INET, "172.16.0.0", 20, 6379, 6379);
	expect_addr(&c, 3, AF_INET, "10.1.2.3", 32, 8000, 8100);
	expect_addr(&c, 4, AF_INET, "0.0.0.0", 0, 53, 53);
	expect_addr(&c, 5, AF_INET6, "fd00::", 8, 0, 0);
	expect_addr(&c, 6, AF_INET6, "2001:db8::1", 128, 0, 0);
	expect_addr(&c, 7, AF_INET6, "2001:db8::", 32, 443, 443);
	expect_addr(&c, 8, AF_INET6, "::1", 128, 80, 81);
	expect_addr(&c, 9, AF_INET6, "::", 128, 0, 0);
	expect_addr(&c, 10, AF_INET, "10.9.8.0", 24, 0, 0);
	cr_assert_eq(c.excl[11].kind, UBS_EXCL_PORT);
	cr_assert_eq(c.excl[11].port_lo, 11211);
	cr_assert_eq(c.excl[11].port_hi, 11211);
	cr_assert_eq(c.excl[12].kind, UBS_EXCL_PORT);
	cr_assert_eq(c.excl[12].port_lo, 5000);
	cr_assert_eq(c.excl[12].port_hi, 5010);
	cr_assert_eq(c.excl[13].kind, UBS_EXCL_PROGRAM);
	cr_assert_str_eq(c.excl[13].program, "batch-etl");
}

Test(conf, exclude_errors_name_their_line)
{
	expect_error("[exclude]\nport = 1\n\n[exclude]\n", 4,
		     "duplicate section [exclude] (first at line 1)");
	expect_error("[exclude]\nport = 1\nspin_us = 5\n", 3,
		     "unknown key 'spin_us' in [exclude]");
	expect_error("[exclude]\nadmin_group = 0\n", 2,
		     "unknown key 'admin_group' in [exclude]");
	expect_error("[default]\naddress = 10.0.0.1\n", 2,
		     "key 'address' belongs in [exclude]");
	expect_error("[daemon]\nport = 80\n", 2,
		     "key 'port' belongs in [exclude]");
	expect_error("[service a]\nprogram = a\n", 2,
		     "key 'program' belongs in [exclude]");
	expect_error("port = 80\n", 1, "key 'port' outside a section");
	static const char *const bad_addr[] = {
		"10.0.0", "10.0.0.256", "10.0.0.1/33", "10.0.0.1/", "10.0.0.1/-1",
		"10.0.0.1/8/8", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536",
		"10.0.0.1:90-80", "10.0.0.1:80-", "10.0.0.1:x", "10.0.0.1/8:1:2",
		"fd00::/129", "fd00::/", "[fd00::", "[fd00::]x", "[fd00::]:",
		"[fd00::]/8:", "[10.0.0.1]:80", "fd00:::1", "gg::1", "host.example",
		"[fd00::/8]:80", "fd00::/8:80",
	};
	for (size_t i = 0; i < sizeof(bad_addr) / sizeof(bad_addr[0]); i++) {
		char text[128], msg[64];

		snprintf(text, sizeof(text), "[exclude]\nport = 1\n"
			 "address = %s\n", bad_addr[i]);
		snprintf(msg, sizeof(msg), "bad address '%s'", bad_addr[i]);
		expect_error(text, 3, msg);
	}
	static const char *const bad_port[] = {
		"0", "65536", "-1", "1-", "-5", "5-4", "1-2-3", "+5", "80 81",
		"http", "99999999999999999999999",
	};
	for (size_t i = 0; i < sizeof(bad_port) / sizeof(bad_port[0]); i++) {
		char text[128], msg[64];

		snprintf(text, sizeof(text), "[exclude]\n\nport = %s\n",
			 bad_port[i]);
		snprintf(msg, sizeof(msg), "bad port '%s'", bad_port[i]);
		expect_error(text, 3, msg);
	}
	expect_error("[exclude]\nprogram = a/b\n", 2,
		     "bad program name 'a/b'");
	expect_error("[exclude]\nprogram = "
		     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		     "\n", 2, "bad program name");
	expect_error("[exclude]\nprogram =\n", 2, "missing value");
}

Test(conf, too_many_exclude_rules)
{
	size_t cap = (UBS_POLICY_MAX_EXCL + 2) * 32;
	char *text = malloc(cap);
	size_t off = 0;

	cr_assert(text);
	off += (size_t)snprintf(text + off, cap - off, "[exclude]\n");
	for (unsigned i = 0; i < UBS_POLICY_MAX_EXCL; i++)
		off += (size_t)snprintf(text + off, cap - off,
					"port = %u\n", i + 1);
	write_file(text);
	{
		static struct ubs_conf c;
		char err[CONF_ERR_MAX];

		cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s",
			     err);
		cr_assert_eq(c.nexcl, UBS_POLICY_MAX_EXCL);
	}
	/* Rule number MAX+1 is on line MAX+2. */
	snprintf(text + off, cap - off, "program = x\n");
	expect_error(text, UBS_POLICY_MAX_EXCL + 2, "too many exclude rules");
	free(text);
}

Test(conf, line_too_long)
{
	size_t n = CONF_LINE_MAX + 1;
	char *text = malloc(2 * n + 128);

	cr_assert(text);
	strcpy(text, "[default]\n# fits\n");
	size_t off = strlen(text);
	memset(text + off, '#', CONF_LINE_MAX);         /* exactly the max */
	strcpy(text + off + CONF_LINE_MAX, "\n");
	write_file(text);
	{
		static struct ubs_conf c;
		char err[CONF_ERR_MAX];
		cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s",
			     err);
	}
	off = strlen(text);
	memset(text + off, '#', n);
	strcpy(text + off + n, "\naccel = on\n");
	expect_error(text, 4, "line too long");
	free(text);
}

Test(conf, too_many_services)
{
	size_t cap = (UBS_POLICY_MAX_SVC + 2) * 32;
	char *text = malloc(cap);
	size_t off = 0;

	cr_assert(text);
	off += (size_t)snprintf(text + off, cap - off, "[default]\n");
	for (unsigned i = 0; i <= UBS_POLICY_MAX_SVC; i++)
		off += (size_t)snprintf(text + off, cap - off,
					"[service s%u]\n", i);
	/* Service number MAX+1 is on line MAX+2. */
	expect_error(text, UBS_POLICY_MAX_SVC + 2, "too many services");
	free(text);
}

#ifdef CONF_EXAMPLE
Test(conf, the_shipped_example_parses)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX];

	cr_assert_eq(conf_load(CONF_EXAMPLE, &c, err, sizeof(err)), 0, "%s",
		     err);
	cr_assert_eq(c.nsvc, 3);
	cr_assert_eq(conf_find(&c, "nginx")->ring_kib, 4096);
	cr_assert_eq(conf_find(&c, "nginx")->spin_us, 50);
	cr_assert_eq(conf_find(&c, "batch-etl")->accel, 0);
	cr_assert_eq(c.nexcl, 0);
}

/* The commented [exclude] example, uncommented, parses to its rules. */
Test(conf, the_shipped_exclude_example_parses)
{
	static struct ubs_conf c;
	char err[CONF_ERR_MAX], line[CONF_LINE_MAX + 2];
	FILE *in = fopen(CONF_EXAMPLE, "r"), *out = fopen(path, "w");
	int on = 0;

	cr_assert(in && out);
	while (fgets(line, sizeof(line), in)) {
		if (strcmp(line, "#[exclude]\n") == 0)
			on = 1;
		/* "#key" (no space after '#') is a commented-out line. */
		if (on && line[0] == '#' && line[1] != ' ' && line[1] != '\n')
			fputs(line + 1, out);
		else
			fputs(line, out);
	}
	fclose(in);
	cr_assert(fclose(out) == 0);
	cr_assert(on, "no #[exclude] in the example");
	cr_assert_eq(conf_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.nsvc, 3);
	cr_assert_eq(c.nexcl, 7);
	expect_addr(&c, 0, AF_INET, "10.20.0.0", 16, 0, 0);
	expect_addr(&c, 1, AF_INET, "192.168.1.7", 32, 6379, 6379);
	expect_addr(&c, 2, AF_INET6, "fd00:1::", 64, 8000, 8100);
	expect_addr(&c, 3, AF_INET6, "2001:db8::", 32, 0, 0);
	cr_assert_eq(c.excl[4].kind, UBS_EXCL_PORT);
	cr_assert_eq(c.excl[4].port_lo, 53);
	cr_assert_eq(c.excl[5].port_hi, 5010);
	cr_assert_str_eq(c.excl[6].program, "backup-agent");
}
#endif

Test(conf, set_key_rules)
{
	struct ubs_svc_policy p;
	char err[CONF_ERR_MAX];

	pp_defaults(&p);
	cr_assert_eq(conf_set_key(&p, "accel", "off", err, sizeof(err)), 0);
	cr_assert_eq(p.accel, 0);
	cr_assert_eq(conf_set_key(&p, "accel", "On", err, sizeof(err)),
		     -EINVAL);
	cr_assert_eq(conf_set_key(&p, "spin_us", "1000000", err,
				  sizeof(err)), 0);
	cr_assert_eq(p.spin_us, 1000000);
	cr_assert_eq(conf_set_key(&p, "spin_us", "", err, sizeof(err)),
		     -EINVAL);
	cr_assert_eq(conf_set_key(&p, "spin_us", "+5", err, sizeof(err)),
		     -EINVAL);
	cr_assert_eq(conf_set_key(&p, "ring_kib", "65536", err, sizeof(err)),
		     0);
	cr_assert_eq(conf_set_key(&p, "ring_kib", "0", err, sizeof(err)),
		     -EINVAL);
	cr_assert_eq(conf_set_key(&p, "mem_quota", "0", err, sizeof(err)), 0);
	cr_assert_eq(p.mem_quota, 0);
	cr_assert_eq(conf_set_key(&p, "mem_quota", "16G", err, sizeof(err)),
		     0);
	cr_assert_eq(p.mem_quota, 16ull << 30);
	cr_assert_eq(conf_set_key(&p, "mem_quota", "3m", err, sizeof(err)),
		     0);
	cr_assert_eq(p.mem_quota, 3ull << 20);
	cr_assert_eq(conf_set_key(&p, "mem_quota", "K", err, sizeof(err)),
		     -EINVAL);
	cr_assert_eq(conf_set_key(&p, "bogus", "1", err, sizeof(err)),
		     -ENOENT);
	cr_assert(strstr(err, "unknown key 'bogus'"), "%s", err);

	cr_assert(conf_valid_name("a"));
	cr_assert(conf_valid_name("A.b_c-9"));
	cr_assert(!conf_valid_name(""));
	cr_assert(!conf_valid_name("a b"));
	cr_assert(!conf_valid_name("(default)"));
}

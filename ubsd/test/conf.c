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

	if (c->has_admin_group)
		fprintf(f, "[daemon]\nadmin_group = %s\n", c->admin_group);
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
		   "[daemon]\nadmin_group = 4242\n"
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

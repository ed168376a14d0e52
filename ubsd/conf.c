/* SPDX-License-Identifier: MIT */
/*
 * conf.c - the parser of ubs.conf.  Line-based: `#` starts a comment
 * (anywhere on a line), blank lines are ignored, `[section]` opens a
 * section, `key = value` sets a key of the current section.  Every error
 * names the file and the line.  A [service NAME] key left unset inherits
 * the [default] value, wherever [default] appears in the file.  Each
 * line of [exclude] is one rule (address, port or program).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"

enum key_id { K_ACCEL, K_SPIN_US, K_RING_KIB, K_MEM_QUOTA, K_MEM_POOL,
	K_MEM_SITES, K_COUNT };

static const char *const key_names[K_COUNT] = {
	[K_ACCEL] = "accel",
	[K_SPIN_US] = "spin_us",
	[K_RING_KIB] = "ring_kib",
	[K_MEM_QUOTA] = "mem_quota",
	[K_MEM_POOL] = "mem_pool",
	[K_MEM_SITES] = "mem_sites",
};

#define SPIN_US_MAX   1000000u
#define RING_KIB_MIN  4u
#define RING_KIB_MAX  65536u

enum section { S_NONE, S_DAEMON, S_DEFAULT, S_SERVICE, S_EXCLUDE };

/* Parser state: the table being built plus where each thing was set. */
struct parse {
	const char *path;
	unsigned line;
	char *err;
	size_t errlen;
	struct ubs_conf *c;
	enum section sec;
	struct ubs_svc_policy *cur;     /* record of the current section */
	unsigned *cur_lines;            /* its key lines, 0 = unset */
	unsigned daemon_line, default_line, group_line, exclude_line;
	unsigned cross_line;
	unsigned pool_size_line, pool_huge_line;
	unsigned board_slots_line;
	unsigned default_keys[K_COUNT];
	unsigned svc_line[UBS_POLICY_MAX_SVC];
	unsigned svc_keys[UBS_POLICY_MAX_SVC][K_COUNT];
};

static int fail(struct parse *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Format "FILE:LINE: message" into p->err; returns -EINVAL. */
static int fail(struct parse *p, const char *fmt, ...)
{
	va_list ap;
	int n;

	n = snprintf(p->err, p->errlen, "%s:%u: ", p->path, p->line);
	if (n >= 0 && (size_t)n < p->errlen) {
		va_start(ap, fmt);
		vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

void conf_init(struct ubs_conf *c)
{
	memset(c, 0, sizeof(*c));
	pp_defaults(&c->deflt);
	c->deflt.name[0] = '\0';
	c->cross_netns = true;
	c->pool_size = CONF_POOL_SIZE_DEFAULT;
	c->board_slots = CONF_BOARD_SLOTS_DEFAULT;
}

bool conf_valid_name(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n >= CTL_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)name[i];
		if (!isalnum(ch) && ch != '.' && ch != '_' && ch != '-')
			return false;
	}
	return true;
}

struct ubs_svc_policy *conf_find(struct ubs_conf *c, const char *name)
{
	for (uint32_t i = 0; i < c->nsvc; i++)
		if (strcmp(c->svc[i].name, name) == 0)
			return &c->svc[i];
	return NULL;
}

static int key_index(const char *key)
{
	for (int i = 0; i < K_COUNT; i++)
		if (strcmp(key, key_names[i]) == 0)
			return i;
	return -1;
}

/* A plain decimal number (digits only, no sign).  Returns -EINVAL/-ERANGE. */
static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (*end != '\0')
		return -EINVAL;
	*out = v;
	return 0;
}

/* N[K|M|G] (binary multiples, either case) in bytes. */
static int parse_size(const char *s, uint64_t *out)
{
	char num[32];
	size_t n = strlen(s);
	unsigned shift = 0;
	uint64_t v;

	if (n == 0 || n >= sizeof(num))
		return -EINVAL;
	memcpy(num, s, n + 1);
	switch (num[n - 1]) {
	case 'K': case 'k': shift = 10; break;
	case 'M': case 'm': shift = 20; break;
	case 'G': case 'g': shift = 30; break;
	}
	if (shift)
		num[n - 1] = '\0';
	if (parse_u64(num, &v) < 0 || v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = v << shift;
	return 0;
}

int conf_set_key(struct ubs_svc_policy *p, const char *key,
		 const char *value, char *err, size_t errlen)
{
	uint64_t v;

	switch (key_index(key)) {
	case K_ACCEL:
		if (strcmp(value, "on") == 0)
			p->accel = 1;
		else if (strcmp(value, "off") == 0)
			p->accel = 0;
		else
			goto bad;
		return 0;
	case K_SPIN_US:
		if (parse_u64(value, &v) < 0 || v > SPIN_US_MAX)
			goto bad;
		p->spin_us = (uint32_t)v;
		return 0;
	case K_RING_KIB:
		if (parse_u64(value, &v) < 0 || v < RING_KIB_MIN ||
		    v > RING_KIB_MAX || (v & (v - 1)))
			goto bad;
		p->ring_kib = (uint32_t)v;
		return 0;
	case K_MEM_QUOTA:
		if (parse_size(value, &v) < 0)
			goto bad;
		p->mem_quota = v;
		return 0;
	case K_MEM_POOL:
		/* off, on (every allocation), or the smallest allocation
		 * that goes to the pool. */
		if (strcmp(value, "off") == 0)
			v = 0;
		else if (strcmp(value, "on") == 0)
			v = 1;
		else if (parse_size(value, &v) < 0 || v == 0 ||
			 v > UINT32_MAX)
			goto bad;
		p->mem_pool_min = (uint32_t)v;
		return 0;
	case K_MEM_SITES:
		/* any, or names (functions, libraries) separated by commas:
		 * letters, digits, '_', '.', '+', '-'. */
		if (strcmp(value, "any") == 0) {
			memset(p->mem_sites, 0, sizeof(p->mem_sites));
			return 0;
		}
		if (!*value || strlen(value) >= sizeof(p->mem_sites) ||
		    value[0] == ',' || value[strlen(value) - 1] == ',' ||
		    strstr(value, ",,"))
			goto bad;
		for (const char *c = value; *c; c++)
			if (!isalnum((unsigned char)*c) && !strchr("_.+-,", *c))
				goto bad;
		memset(p->mem_sites, 0, sizeof(p->mem_sites));
		memcpy(p->mem_sites, value, strlen(value));
		return 0;
	default:
		snprintf(err, errlen, "unknown key '%s' (known: accel, "
			 "spin_us, ring_kib, mem_quota, mem_pool, mem_sites)",
			 key);
		return -ENOENT;
	}
bad:
	{
		static const char *const want[K_COUNT] = {
			[K_ACCEL] = "on or off",
			[K_SPIN_US] = "0 to 1000000",
			[K_RING_KIB] = "a power of two, 4 to 65536",
			[K_MEM_QUOTA] = "bytes, optional suffix K, M or G",
			[K_MEM_POOL] = "off, on, or a minimum size in bytes "
				       "(suffix K, M or G) below 4G",
			[K_MEM_SITES] = "any, or names of functions and "
					"libraries separated by commas, "
					"95 characters at most",
		};
		snprintf(err, errlen, "bad value '%s' for %s (%s)", value, key,
			 want[key_index(key)]);
	}
	return -EINVAL;
}

/* Remove leading and trailing white space in place; returns the start. */
static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* "[ ... ]": open a section. */
static int parse_section(struct parse *p, char *s)
{
	size_t n = strlen(s);
	char *name;

	if (s[n - 1] != ']')
		return fail(p, "section header without closing ']'");
	s[n - 1] = '\0';
	s = trim(s + 1);
	if (strcmp(s, "daemon") == 0) {
		if (p->daemon_line)
			return fail(p, "duplicate section [daemon] (first at "
				    "line %u)", p->daemon_line);
		p->daemon_line = p->line;
		p->sec = S_DAEMON;
		p->cur = NULL;
		return 0;
	}
	if (strcmp(s, "default") == 0) {
		if (p->default_line)
			return fail(p, "duplicate section [default] (first at "
				    "line %u)", p->default_line);
		p->default_line = p->line;
		p->sec = S_DEFAULT;
		p->cur = &p->c->deflt;
		p->cur_lines = p->default_keys;
		return 0;
	}
	if (strcmp(s, "exclude") == 0) {
		if (p->exclude_line)
			return fail(p, "duplicate section [exclude] (first at "
				    "line %u)", p->exclude_line);
		p->exclude_line = p->line;
		p->sec = S_EXCLUDE;
		p->cur = NULL;
		return 0;
	}
	if (strncmp(s, "service", 7) != 0 ||
	    (s[7] != '\0' && !isspace((unsigned char)s[7])))
		return fail(p, "unknown section [%s] (known: [daemon], "
			    "[default], [service NAME], [exclude])", s);
	name = trim(s + 7);
	if (!*name)
		return fail(p, "[service] needs a name: [service NAME]");
	if (!conf_valid_name(name))
		return fail(p, "bad service name '%s' (1 to %u of A-Z a-z "
			    "0-9 . _ -)", name, CTL_NAME_MAX - 1);
	for (uint32_t i = 0; i < p->c->nsvc; i++)
		if (strcmp(p->c->svc[i].name, name) == 0)
			return fail(p, "duplicate service '%s' (first at "
				    "line %u)", name, p->svc_line[i]);
	if (p->c->nsvc >= UBS_POLICY_MAX_SVC)
		return fail(p, "too many services (at most %u)",
			    UBS_POLICY_MAX_SVC);
	uint32_t i = p->c->nsvc++;
	p->cur = &p->c->svc[i];
	memset(p->cur, 0, sizeof(*p->cur));
	strcpy(p->cur->name, name);
	p->cur_lines = p->svc_keys[i];
	p->svc_line[i] = p->line;
	p->sec = S_SERVICE;
	return 0;
}

/* admin_group = NAME or numeric gid. */
static int set_admin_group(struct parse *p, const char *value)
{
	struct ubs_conf *c = p->c;
	uint64_t v;

	if (p->group_line)
		return fail(p, "duplicate key 'admin_group' (first at line %u)",
			    p->group_line);
	if (strlen(value) >= sizeof(c->admin_group))
		return fail(p, "group name too long: '%s'", value);
	if (parse_u64(value, &v) == 0) {
		if (v >= (gid_t)-1)
			return fail(p, "bad gid '%s'", value);
		c->admin_gid = (gid_t)v;
	} else {
		struct group gr, *res = NULL;
		char buf[4096];
		int e = getgrnam_r(value, &gr, buf, sizeof(buf), &res);

		if (e)
			return fail(p, "admin_group '%s': %s", value,
				    strerror(e));
		if (!res)
			return fail(p, "unknown group '%s'", value);
		c->admin_gid = gr.gr_gid;
	}
	strcpy(c->admin_group, value);
	c->has_admin_group = true;
	p->group_line = p->line;
	return 0;
}

/* cross_netns = on|off. */
static int set_cross_netns(struct parse *p, const char *value)
{
	if (p->cross_line)
		return fail(p, "duplicate key 'cross_netns' (first at line %u)",
			    p->cross_line);
	if (strcmp(value, "on") == 0)
		p->c->cross_netns = true;
	else if (strcmp(value, "off") == 0)
		p->c->cross_netns = false;
	else
		return fail(p, "bad value '%s' for cross_netns (on or off)",
			    value);
	p->cross_line = p->line;
	return 0;
}

/* [daemon] pool_size = N[K|M|G] and pool_hugepages = on|off: the memory
 * pool (ubsd/pool.c). */
static int set_pool_key(struct parse *p, const char *key, const char *value)
{
	bool size = strcmp(key, "pool_size") == 0;
	unsigned *line = size ? &p->pool_size_line : &p->pool_huge_line;
	uint64_t v;

	if (*line)
		return fail(p, "duplicate key '%s' (first at line %u)", key,
			    *line);
	if (size) {
		if (parse_size(value, &v) < 0)
			return fail(p, "bad value '%s' for pool_size (bytes, "
				    "optional suffix K, M or G)", value);
		p->c->pool_size = v;
	} else if (strcmp(value, "on") == 0) {
		p->c->pool_hugepages = true;
	} else if (strcmp(value, "off") == 0) {
		p->c->pool_hugepages = false;
	} else {
		return fail(p, "bad value '%s' for pool_hugepages (on or off)",
			    value);
	}
	*line = p->line;
	return 0;
}

/* [daemon] board_slots = N: channel slots of each uid's board, 0 (no
 * boards) to CONF_BOARD_SLOTS_MAX. */
static int set_board_slots(struct parse *p, const char *value)
{
	uint64_t v;

	if (p->board_slots_line)
		return fail(p, "duplicate key 'board_slots' (first at line %u)",
			    p->board_slots_line);
	if (parse_u64(value, &v) < 0 || v > CONF_BOARD_SLOTS_MAX)
		return fail(p, "bad value '%s' for board_slots (0 to %u)",
			    value, CONF_BOARD_SLOTS_MAX);
	p->c->board_slots = (uint32_t)v;
	p->board_slots_line = p->line;
	return 0;
}

/* N or N-M, 1 to 65535, N <= M.  Returns 0 or -EINVAL. */
static int parse_ports(const char *s, uint16_t *lo, uint16_t *hi)
{
	char buf[16];
	const char *dash = strchr(s, '-');
	uint64_t a, b;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	if (dash) {
		buf[dash - s] = '\0';
		if (parse_u64(dash + 1, &b) < 0)
			return -EINVAL;
	}
	if (parse_u64(buf, &a) < 0)
		return -EINVAL;
	if (!dash)
		b = a;
	if (a < 1 || b > 65535 || a > b)
		return -EINVAL;
	*lo = (uint16_t)a;
	*hi = (uint16_t)b;
	return 0;
}

/*
 * A.B.C.D[/LEN][:PORT[-PORT]], IPV6[/LEN] or [IPV6][/LEN][:PORT[-PORT]]
 * into r.  Host bits beyond LEN are cleared.  Returns 0 or -EINVAL.
 */
static int parse_address(const char *value, struct ubs_excl_rule *r)
{
	char buf[CONF_LINE_MAX + 1], *a, *rest, *len = NULL, *ports = NULL;
	unsigned max;
	uint64_t v;

	if (strlen(value) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, value);
	memset(r, 0, sizeof(*r));
	r->kind = UBS_EXCL_ADDR;
	if (buf[0] == '[') {
		char *close = strchr(buf, ']');

		if (!close)
			return -EINVAL;
		*close = '\0';
		a = buf + 1;
		rest = close + 1;
		r->family = AF_INET6;
		if (*rest == '/') {
			*rest++ = '\0';
			len = rest;
			rest = strchr(rest, ':');
		}
		if (rest && *rest) {
			if (*rest != ':')
				return -EINVAL;
			*rest = '\0';
			ports = rest + 1;
		}
	} else {
		char *c1 = strchr(buf, ':');

		a = buf;
		r->family = c1 && strchr(c1 + 1, ':') ? AF_INET6 : AF_INET;
		if (r->family == AF_INET && c1) {
			*c1 = '\0';
			ports = c1 + 1;
		}
		len = strchr(buf, '/');
		if (len)
			*len++ = '\0';
	}
	if (inet_pton(r->family, a, r->addr) != 1)
		return -EINVAL;
	max = r->family == AF_INET ? 32 : 128;
	r->prefix = (uint8_t)max;
	if (len) {
		if (parse_u64(len, &v) < 0 || v > max)
			return -EINVAL;
		r->prefix = (uint8_t)v;
	}
	if (ports && parse_ports(ports, &r->port_lo, &r->port_hi) < 0)
		return -EINVAL;
	for (unsigned bit = r->prefix; bit < max; bit++)
		r->addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
	/* ::ffff:A.B.C.D/LEN (LEN >= 96) is the IPv4 rule it stands for,
	 * as the reader matches v4-mapped addresses as IPv4. */
	if (r->family == AF_INET6 && r->prefix >= 96 &&
	    memcmp(r->addr, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
		memmove(r->addr, r->addr + 12, 4);
		memset(r->addr + 4, 0, 12);
		r->family = AF_INET;
		r->prefix = (uint8_t)(r->prefix - 96);
	}
	return 0;
}

/* One line of [exclude]: one rule. */
static int parse_exclude(struct parse *p, const char *key, const char *value)
{
	struct ubs_conf *c = p->c;
	struct ubs_excl_rule r;

	memset(&r, 0, sizeof(r));
	if (strcmp(key, "address") == 0) {
		if (parse_address(value, &r) < 0)
			return fail(p, "bad address '%s' (A.B.C.D[/LEN]"
				    "[:PORT[-PORT]], IPV6[/LEN] or [IPV6]"
				    "[/LEN]:PORT[-PORT])", value);
	} else if (strcmp(key, "port") == 0) {
		r.kind = UBS_EXCL_PORT;
		if (parse_ports(value, &r.port_lo, &r.port_hi) < 0)
			return fail(p, "bad port '%s' (N or N-M, 1 to 65535)",
				    value);
	} else if (strcmp(key, "program") == 0) {
		r.kind = UBS_EXCL_PROGRAM;
		if (!conf_valid_name(value))
			return fail(p, "bad program name '%s' (1 to %u of "
				    "A-Z a-z 0-9 . _ -)", value,
				    CTL_NAME_MAX - 1);
		strcpy(r.program, value);
	} else {
		return fail(p, "unknown key '%s' in [exclude] (known: "
			    "address, port, program)", key);
	}
	if (c->nexcl >= UBS_POLICY_MAX_EXCL)
		return fail(p, "too many exclude rules (at most %u)",
			    UBS_POLICY_MAX_EXCL);
	c->excl[c->nexcl++] = r;
	return 0;
}

static bool is_exclude_key(const char *key)
{
	return strcmp(key, "address") == 0 || strcmp(key, "port") == 0 ||
	       strcmp(key, "program") == 0;
}

/* "key = value" inside the current section. */
static int parse_assign(struct parse *p, char *s)
{
	char msg[CONF_ERR_MAX];
	char *eq = strchr(s, '='), *key, *value;
	int k, err;

	if (!eq)
		return fail(p, "expected 'key = value', '[section]' or a "
			    "comment");
	*eq = '\0';
	key = trim(s);
	value = trim(eq + 1);
	if (!*key)
		return fail(p, "missing key before '='");
	if (p->sec == S_NONE)
		return fail(p, "key '%s' outside a section", key);
	if (!*value)
		return fail(p, "missing value for key '%s'", key);
	k = key_index(key);
	if (p->sec == S_EXCLUDE)
		return parse_exclude(p, key, value);
	if (is_exclude_key(key))
		return fail(p, "key '%s' belongs in [exclude]", key);
	if (p->sec == S_DAEMON) {
		if (strcmp(key, "admin_group") == 0)
			return set_admin_group(p, value);
		if (strcmp(key, "cross_netns") == 0)
			return set_cross_netns(p, value);
		if (strcmp(key, "pool_size") == 0 ||
		    strcmp(key, "pool_hugepages") == 0)
			return set_pool_key(p, key, value);
		if (strcmp(key, "board_slots") == 0)
			return set_board_slots(p, value);
		if (k >= 0)
			return fail(p, "key '%s' belongs in [default] or "
				    "[service NAME], not [daemon]", key);
		return fail(p, "unknown key '%s' in [daemon] (known: "
			    "admin_group, cross_netns, pool_size, "
			    "pool_hugepages, board_slots)", key);
	}
	if (strcmp(key, "admin_group") == 0 || strcmp(key, "cross_netns") == 0 ||
	    strcmp(key, "pool_size") == 0 || strcmp(key, "pool_hugepages") == 0 ||
	    strcmp(key, "board_slots") == 0)
		return fail(p, "key '%s' belongs in [daemon]", key);
	if (k >= 0 && p->cur_lines[k])
		return fail(p, "duplicate key '%s' (first at line %u)", key,
			    p->cur_lines[k]);
	err = conf_set_key(p->cur, key, value, msg, sizeof(msg));
	if (err)
		return fail(p, "%s", msg);
	p->cur_lines[k] = p->line;
	return 0;
}

/* One line, newline stripped. */
static int parse_line(struct parse *p, char *s)
{
	char *hash = strchr(s, '#');

	if (hash)
		*hash = '\0';
	s = trim(s);
	if (!*s)
		return 0;
	if (*s == '[')
		return parse_section(p, s);
	return parse_assign(p, s);
}

/* Services inherit every key they did not set from [default]. */
static void inherit_defaults(struct parse *p)
{
	const struct ubs_svc_policy *d = &p->c->deflt;

	for (uint32_t i = 0; i < p->c->nsvc; i++) {
		struct ubs_svc_policy *s = &p->c->svc[i];
		const unsigned *set = p->svc_keys[i];

		if (!set[K_ACCEL])
			s->accel = d->accel;
		if (!set[K_SPIN_US])
			s->spin_us = d->spin_us;
		if (!set[K_RING_KIB])
			s->ring_kib = d->ring_kib;
		if (!set[K_MEM_QUOTA])
			s->mem_quota = d->mem_quota;
		if (!set[K_MEM_POOL])
			s->mem_pool_min = d->mem_pool_min;
		if (!set[K_MEM_SITES])
			memcpy(s->mem_sites, d->mem_sites,
			       sizeof(s->mem_sites));
	}
}

int conf_load(const char *path, struct ubs_conf *out, char *err,
	      size_t errlen)
{
	struct parse *p;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	FILE *f;
	int ret = 0;

	if (errlen)
		err[0] = '\0';
	f = fopen(path, "re");
	if (!f) {
		ret = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-ret));
		return ret;
	}
	p = calloc(1, sizeof(*p));
	if (p)
		p->c = malloc(sizeof(*p->c));
	if (!p || !p->c) {
		free(p);
		fclose(f);
		snprintf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	p->path = path;
	p->err = err;
	p->errlen = errlen;
	conf_init(p->c);

	while ((n = getline(&line, &cap, f)) >= 0) {
		p->line++;
		if (n > 0 && line[n - 1] == '\n')
			line[--n] = '\0';
		if (n > CONF_LINE_MAX) {
			ret = fail(p, "line too long (over %u bytes)",
				   CONF_LINE_MAX);
			break;
		}
		if (strlen(line) != (size_t)n) {
			ret = fail(p, "NUL byte in line");
			break;
		}
		ret = parse_line(p, line);
		if (ret)
			break;
	}
	if (!ret && ferror(f)) {
		ret = -EIO;
		snprintf(err, errlen, "%s: read error", path);
	}
	free(line);
	fclose(f);
	if (!ret) {
		inherit_defaults(p);
		memcpy(out, p->c, sizeof(*out));
	}
	free(p->c);
	free(p);
	return ret;
}

/* SPDX-License-Identifier: MIT */
/*
 * conf.c - the parser of ubs.conf.  Line-based: `#` starts a comment
 * (anywhere on a line), blank lines are ignored, `[section]` opens a
 * section, `key = value` sets a key of the current section.  Every error
 * names the file and the line.  A [service NAME] key left unset inherits
 * the [default] value, wherever [default] appears in the file.
 */
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

enum key_id { K_ACCEL, K_SPIN_US, K_RING_KIB, K_MEM_QUOTA, K_COUNT };

static const char *const key_names[K_COUNT] = {
	[K_ACCEL] = "accel",
	[K_SPIN_US] = "spin_us",
	[K_RING_KIB] = "ring_kib",
	[K_MEM_QUOTA] = "mem_quota",
};

#define SPIN_US_MAX   1000000u
#define RING_KIB_MIN  4u
#define RING_KIB_MAX  65536u

enum section { S_NONE, S_DAEMON, S_DEFAULT, S_SERVICE };

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
	unsigned daemon_line, default_line, group_line;
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
	default:
		snprintf(err, errlen, "unknown key '%s' (known: accel, "
			 "spin_us, ring_kib, mem_quota)", key);
		return -ENOENT;
	}
bad:
	{
		static const char *const want[K_COUNT] = {
			[K_ACCEL] = "on or off",
			[K_SPIN_US] = "0 to 1000000",
			[K_RING_KIB] = "a power of two, 4 to 65536",
			[K_MEM_QUOTA] = "bytes, optional suffix K, M or G",
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
	if (strncmp(s, "service", 7) != 0 ||
	    (s[7] != '\0' && !isspace((unsigned char)s[7])))
		return fail(p, "unknown section [%s] (known: [daemon], "
			    "[default], [service NAME])", s);
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
	if (p->sec == S_DAEMON) {
		if (strcmp(key, "admin_group") == 0)
			return set_admin_group(p, value);
		if (k >= 0)
			return fail(p, "key '%s' belongs in [default] or "
				    "[service NAME], not [daemon]", key);
		return fail(p, "unknown key '%s' in [daemon] (known: "
			    "admin_group)", key);
	}
	if (strcmp(key, "admin_group") == 0)
		return fail(p, "key 'admin_group' belongs in [daemon]");
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

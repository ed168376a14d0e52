/* SPDX-License-Identifier: MIT */
/*
 * ubsctl.c - the operator's CLI for ubsd.  One request per run over the
 * control socket, then replies until CTL_R_END; each reply is validated
 * with ctl_check before it is believed.
 *
 * Exit codes: 0 ok, 1 ubsd not running, 2 usage, 3 error reported by ubsd
 * (message on stderr), protocol or other error, 4 permission denied.
 */
#include <sys/mman.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "ubs_stats.h"
#include "ubsctl.h"

#define EX_NOTRUNNING 1
#define EX_USAGE      2
#define EX_ERROR      3
#define EX_PERM       4
#define REPLY_TIMEOUT_S 10      /* a reply never takes this long */

enum action { ACT_STATUS, ACT_SESSIONS, ACT_SERVICES, ACT_SERVICE,
	ACT_LISTENERS, ACT_EXCLUDES, ACT_STATS, ACT_CONNS, ACT_MEM,
	ACT_VERBS };

/*
 * The command keywords; any unique prefix is accepted, except for an
 * exact_only keyword: `stats` came after `status`, whose prefixes st, sta
 * and stat must keep meaning status.
 */
static const struct keyword {
	const char *name;
	enum action action;
	uint16_t req;
	bool exact_only;
} keywords[] = {
	{ "conns", ACT_CONNS, 0, false },       /* no request: reads files */
	{ "excludes", ACT_EXCLUDES, CTL_REQ_EXCLUDES, false },
	{ "listeners", ACT_LISTENERS, CTL_REQ_LISTENERS, false },
	{ "mem", ACT_MEM, CTL_REQ_MEM, false },
	{ "service", ACT_SERVICE, CTL_REQ_SERVICE_SET, false },
	{ "services", ACT_SERVICES, CTL_REQ_SERVICES, false },
	{ "sessions", ACT_SESSIONS, CTL_REQ_SESSIONS, false },
	{ "stats", ACT_STATS, 0, true },        /* no request: reads files */
	{ "status", ACT_STATUS, CTL_REQ_STATUS, false },
	{ "verbs", ACT_VERBS, CTL_REQ_VERBS_LIST, false },
};

/* How the default record is named on the command line and in output. */
#define DEFAULT_NAME "(default)"


static void __attribute__((noreturn)) usage(void)
{
	fprintf(stderr, "usage: ubsctl [--json] command\n"
		"       ubsctl [--json] [--all] stats [PID|SERVICE]\n"
		"       ubsctl [--json] [--all] conns [PID|SERVICE]\n"
		"       ubsctl [--json] mem --sites PID\n"
		"commands (any unique prefix):\n"
		"  status     daemon pid, uptime, counters\n"
		"  sessions   one line per preloaded process\n"
		"  services   policy of every service, default first\n"
		"  listeners  accelerated listening sockets and holders\n"
		"  excludes   exclude rules (connections kept on TCP)\n"
		"  mem        memory pool: size, free, page kind, leases per"
		" service and process\n"
		"  verbs      QPs of the virtual verbs device (ubv0)\n"
		"  stats      counters of preloaded processes (stats pages;"
		" no prefix)\n"
		"  conns      their connections: UB ones with their peer and"
		" bytes,\n"
		"             the latest decided TCP with the reason\n"
		"  service NAME on|off          accelerate NAME or not\n"
		"  service NAME set KEY=VALUE   KEY: accel, spin_us, ring_kib,"
		" mem_quota,\n"
		"                               mem_pool (off, on, min size),"
		" mem_sites\n"
		"  (NAME " DEFAULT_NAME " is the default record)\n");
	exit(EX_USAGE);
}

/* The keyword word names (exactly or as a unique prefix), or NULL. */
static const struct keyword *match_keyword(const char *word)
{
	const struct keyword *found = NULL;
	size_t n = strlen(word);

	if (n == 0)
		return NULL;
	for (size_t i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++) {
		if (strcmp(word, keywords[i].name) == 0)
			return &keywords[i];
		if (!keywords[i].exact_only &&
		    strncmp(word, keywords[i].name, n) == 0) {
			if (found)
				return NULL;    /* ambiguous */
			found = &keywords[i];
		}
	}
	return found;
}

/* Read exactly n bytes.  Returns 0, -EPIPE at EOF, or -errno. */
static int read_full(int fd, void *buf, size_t n)
{
	unsigned char *p = buf;

	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		}
		if (r == 0)
			return -EPIPE;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/*
 * Connect to the control socket.  Returns the fd, or exits: 1 when no
 * daemon is there, 3 on any other failure.
 */
static int ctl_connect(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = REPLY_TIMEOUT_S };
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "ubsctl: socket path too long: %s\n", path);
		exit(EX_ERROR);
	}
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "ubsctl: socket: %s\n", strerror(errno));
		exit(EX_ERROR);
	}
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		if (errno == ENOENT) {
			fprintf(stderr, "ubsctl: ubsd is not running "
				"(no socket at %s)\n", path);
			exit(EX_NOTRUNNING);
		}
		if (errno == ECONNREFUSED) {
			fprintf(stderr, "ubsctl: ubsd is not running "
				"(nothing listening at %s)\n", path);
			exit(EX_NOTRUNNING);
		}
		fprintf(stderr, "ubsctl: %s: %s\n", path, strerror(errno));
		exit(EX_ERROR);
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

/*
 * Receive one reply for seq into h and body (CTL_MAX_BODY bytes).
 * Returns 0, or -errno with *why set.
 */
static int ctl_recv(int fd, uint32_t seq, struct ctl_hdr *h, void *body,
		    const char **why)
{
	int err;

	*why = NULL;
	err = read_full(fd, h, sizeof(*h));
	if (!err)
		err = ctl_check(h, NULL, why);
	if (!err)
		err = read_full(fd, body, h->len);
	if (!err)
		err = ctl_check(h, body, why);
	if (err) {
		if (!*why)
			*why = err == -EPIPE ? "connection closed by ubsd"
			       : strerror(-err);
		return err;
	}
	if (h->type < CTL_R_FIRST || h->type > CTL_R_LAST) {
		*why = "request type in a reply";
		return -EBADMSG;
	}
	if (h->seq != seq) {
		*why = "reply to another request (sequence mismatch)";
		return -EPROTO;
	}
	return 0;
}

/* Print s as a JSON string. */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* Copy s for a table cell, non-printable bytes shown as '?'. */
static void printable(char *dst, const char *s, size_t n)
{
	size_t i;

	for (i = 0; i + 1 < n && s[i]; i++)
		dst[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
	dst[i] = '\0';
}

static void print_age(uint64_t ms)
{
	char buf[32];

	if (ms < 60 * 1000)
		snprintf(buf, sizeof(buf), "%" PRIu64 ".%" PRIu64 "s",
			 ms / 1000, ms % 1000 / 100);
	else if (ms < 3600 * 1000)
		snprintf(buf, sizeof(buf), "%" PRIu64 "m%02" PRIu64 "s",
			 ms / 60000, ms / 1000 % 60);
	else
		snprintf(buf, sizeof(buf), "%" PRIu64 "h%02" PRIu64 "m",
			 ms / 3600000, ms / 60000 % 60);
	printf("%s", buf);
}

static void show_status(const struct ctl_status *st, bool json)
{
	if (json) {
		printf("{\"daemon_pid\":%" PRIu32 ",\"sessions\":%" PRIu32
		       ",\"uptime_ms\":%" PRIu64 ",\"requests\":%" PRIu64
		       ",\"rejected\":%" PRIu64 "}\n", st->daemon_pid,
		       st->sessions, st->uptime_ms, st->requests,
		       st->rejected);
		return;
	}
	printf("pid       %" PRIu32 "\n", st->daemon_pid);
	printf("uptime    ");
	print_age(st->uptime_ms);
	printf("\nsessions  %" PRIu32 "\n", st->sessions);
	printf("requests  %" PRIu64 "\n", st->requests);
	printf("rejected  %" PRIu64 "\n", st->rejected);
}

/* Bytes as N, NK, NM or NG when exact. */
static void fmt_size(char *buf, size_t n, uint64_t v)
{
	static const char sfx[] = "KMG";
	int i = -1;

	while (i < 2 && v && (v & 1023) == 0) {
		v >>= 10;
		i++;
	}
	if (i < 0)
		snprintf(buf, n, "%" PRIu64, v);
	else
		snprintf(buf, n, "%" PRIu64 "%c", v, sfx[i]);
}

static void show_service(const struct ctl_service *s, bool json, int n)
{
	char name[CTL_NAME_MAX], q[32];

	if (s->name[0])
		printable(name, s->name, sizeof(name));
	else
		strcpy(name, DEFAULT_NAME);
	if (json) {
		printf("%s{\"name\":", n ? "," : "");
		json_str(s->name[0] ? s->name : DEFAULT_NAME);
		printf(",\"accel\":%s,\"spin_us\":%" PRIu32 ",\"ring_kib\":%"
		       PRIu32 ",\"mem_quota\":%" PRIu64 ",\"mem_pool_min\":%"
		       PRIu32 ",\"mem_sites\":",
		       s->accel ? "true" : "false", s->spin_us, s->ring_kib,
		       s->mem_quota, s->mem_pool_min);
		json_str(s->mem_sites);
		putchar('}');
		return;
	}
	fmt_size(q, sizeof(q), s->mem_quota);
	printf("%-24s %-5s %-8" PRIu32 " %-8" PRIu32 " %-9s ", name,
	       s->accel ? "on" : "off", s->spin_us, s->ring_kib, q);
	if (s->mem_pool_min)
		fmt_size(q, sizeof(q), s->mem_pool_min);
	else
		strcpy(q, "off");
	{
		char sites[sizeof(s->mem_sites)];

		printable(sites, s->mem_sites, sizeof(sites));
		printf("%-8s %s\n", q, sites[0] ? sites : "any");
	}
}

/* ubsctl mem: the pool, then services, then processes (in that order
 * from ubsd).  *part tracks which list is open. */
static void show_mem(uint16_t type, const void *body, bool json, int *part,
		     int *n)
{
	static const char *const pages[] = { "normal", "hugepages",
		"normal (hugepages configured, none free)" };
	char a[32], b[32], c[32], name[CTL_NAME_MAX];

	if (type == CTL_R_MEM_POOL) {
		const struct ctl_mem_pool *p = body;
		const char *pg = p->pages < 3 ? pages[p->pages] : "?";

		if (json) {
			printf("{\"pool\":{\"size\":%" PRIu64 ",\"used\":%"
			       PRIu64 ",\"free\":%" PRIu64 ",\"granule\":%"
			       PRIu64 ",\"hugepages\":%s,\"pages\":", p->size,
			       p->used, p->size > p->used ? p->size - p->used
			       : 0, p->granule,
			       p->pages == CTL_MEM_PAGES_HUGE ? "true" :
			       "false");
			json_str(pg);
			printf(",\"segments\":%" PRIu32 ",\"leases_total\":%"
			       PRIu64 ",\"refused\":%" PRIu64 "}", p->segments,
			       p->leases_total, p->refused);
			return;
		}
		fmt_size(a, sizeof(a), p->size);
		fmt_size(b, sizeof(b), p->used);
		fmt_size(c, sizeof(c), p->size > p->used ?
			 p->size - p->used : 0);
		printf("pool      %s\nused      %s in %" PRIu32 " segments\n"
		       "free      %s\npages     %s\nleases    %" PRIu64
		       " granted, %" PRIu64 " refused\n", a, b, p->segments, c,
		       pg, p->leases_total, p->refused);
		return;
	}
	if (type == CTL_R_MEM_SERVICE) {
		const struct ctl_mem_service *m = body;

		if (*part != 1) {
			*part = 1;
			*n = 0;
			if (json)
				printf(",\"services\":[");
			else
				printf("\n%-24s %-10s %-10s %s\n", "SERVICE",
				       "MEM_QUOTA", "USED", "HOLDERS");
		}
		if (json) {
			printf("%s{\"name\":", (*n)++ ? "," : "");
			json_str(m->name[0] ? m->name : DEFAULT_NAME);
			printf(",\"mem_quota\":%" PRIu64 ",\"used\":%" PRIu64
			       ",\"holders\":%" PRIu32 "}", m->quota, m->used,
			       m->holders);
			return;
		}
		if (m->name[0])
			printable(name, m->name, sizeof(name));
		else
			strcpy(name, DEFAULT_NAME);
		fmt_size(a, sizeof(a), m->quota);
		fmt_size(b, sizeof(b), m->used);
		printf("%-24s %-10s %-10s %" PRIu32 "\n", name,
		       m->quota ? a : "-", b, m->holders);
		return;
	}
	{
		const struct ctl_mem_holder *m = body;

		if (*part != 2) {
			if (json)
				printf("%s\"processes\":[", *part == 1 ?
				       "]," : ",");
			else
				printf("\n%-8s %-24s %-8s %s\n", "PID",
				       "SERVICE", "SEGMENTS", "BYTES");
			*part = 2;
			*n = 0;
		}
		if (json) {
			printf("%s{\"pid\":%" PRIu32 ",\"service\":",
			       (*n)++ ? "," : "", m->pid);
			json_str(m->service);
			printf(",\"segments\":%" PRIu32 ",\"bytes\":%" PRIu64
			       "}", m->segments, m->bytes);
			return;
		}
		printable(name, m->service, sizeof(name));
		fmt_size(a, sizeof(a), m->bytes);
		printf("%-8" PRIu32 " %-24s %-8" PRIu32 " %s\n", m->pid, name,
		       m->segments, a);
	}
}

/* Close what show_mem opened (JSON). */
static void show_mem_end(bool json, int part)
{
	if (!json)
		return;
	if (part == 0)
		printf(",\"services\":[],\"processes\":[]}\n");
	else if (part == 1)
		printf("],\"processes\":[]}\n");
	else
		printf("]}\n");
}

/*
 * Build the SERVICE_SET body from `NAME on|off` or `NAME set KEY=VALUE`
 * (args[0..n)).  Exits with EX_USAGE on bad syntax; values are checked by
 * ubsd, which owns the rules.
 */
static void service_args(struct ctl_service_set *m, char **args, int n)
{
	const char *name = args[0];
	char *eq;

	memset(m, 0, sizeof(*m));
	if (strcmp(name, DEFAULT_NAME) == 0)
		name = "";
	if (strlen(name) >= sizeof(m->name)) {
		fprintf(stderr, "ubsctl: service name too long\n");
		exit(EX_USAGE);
	}
	strcpy(m->name, name);
	if (n == 2 && (strcmp(args[1], "on") == 0 ||
		       strcmp(args[1], "off") == 0)) {
		strcpy(m->key, "accel");
		strcpy(m->value, args[1]);
		return;
	}
	if (n != 3 || strcmp(args[1], "set") != 0)
		usage();
	eq = strchr(args[2], '=');
	if (!eq || eq == args[2]) {
		fprintf(stderr, "ubsctl: expected KEY=VALUE, got '%s'\n",
			args[2]);
		exit(EX_USAGE);
	}
	if ((size_t)(eq - args[2]) >= sizeof(m->key) ||
	    strlen(eq + 1) >= sizeof(m->value)) {
		fprintf(stderr, "ubsctl: key or value too long\n");
		exit(EX_USAGE);
	}
	memcpy(m->key, args[2], (size_t)(eq - args[2]));
	strcpy(m->value, eq + 1);
}

static void show_session(const struct ctl_session *s, bool json, int n)
{
	char svc[CTL_NAME_MAX];

	if (json) {
		printf("%s{\"pid\":%" PRIu32 ",\"uid\":%" PRIu32
		       ",\"service\":", n ? "," : "", s->pid, s->uid);
		json_str(s->service);
		printf(",\"netns\":%" PRIu64 ",\"age_ms\":%" PRIu64 "}",
		       s->netns, s->started_ms);
		return;
	}
	printable(svc, s->service, sizeof(svc));
	printf("%-8" PRIu32 " %-6" PRIu32 " %-20s %-12" PRIu64 " ",
	       s->pid, s->uid, svc, s->netns);
	print_age(s->started_ms);
	putchar('\n');
}

static void show_listener(const struct ctl_listener *l, bool json, int n)
{
	char a[INET6_ADDRSTRLEN + 2], ep[INET6_ADDRSTRLEN + 16];

	if (!inet_ntop(l->family == AF_INET ? AF_INET : AF_INET6, l->addr, a,
		       sizeof(a)))
		strcpy(a, "?");
	if (l->family == AF_INET6)
		snprintf(ep, sizeof(ep), "[%s]:%u", a, l->port);
	else
		snprintf(ep, sizeof(ep), "%s:%u", a, l->port);
	if (json) {
		printf("%s{\"sock_id\":%" PRIu64 ",\"netns\":%" PRIu64
		       ",\"address\":\"%s\",\"port\":%u,\"v6only\":%s,"
		       "\"holders\":%" PRIu32 "}", n ? "," : "", l->sock_id,
		       l->netns, a, l->port, l->v6only ? "true" : "false",
		       l->holders);
		return;
	}
	printf("%-12" PRIu64 " %-20" PRIu64 " %-46s %" PRIu32 "\n",
	       l->sock_id, l->netns, ep, l->holders);
}

static void show_verbs_ep(const struct ctl_verbs_ep *e, bool json, int n)
{
	static const char *const types[] = { "?", "?", "RC", "UC", "UD" };
	const char *t = e->qp_type < 5 ? types[e->qp_type] : "?";

	if (json) {
		printf("%s{\"qpn\":%" PRIu32 ",\"pid\":%" PRIu32
		       ",\"type\":\"%s\",\"dest_qpn\":%" PRIu32
		       ",\"ctx\":%" PRIu64 "}", n ? "," : "", e->qpn, e->pid,
		       t, e->dest_qpn, e->ctx_id);
		return;
	}
	printf("0x%06" PRIx32 "  %-8" PRIu32 " %-4s 0x%06" PRIx32 "  %" PRIu64
	       "\n", e->qpn, e->pid, t, e->dest_qpn, e->ctx_id);
}

static void show_exclude(const struct ctl_exclude *x, bool json, int n)
{
	static const char *const kinds[] = { "?", "address", "port",
					     "program" };
	const char *kind = x->kind < 4 ? kinds[x->kind] : "?";
	char a[INET6_ADDRSTRLEN], prog[CTL_NAME_MAX], ports[16] = "";
	char rule[INET6_ADDRSTRLEN + 32];
	int fam = x->family == AF_INET ? AF_INET : AF_INET6;

	if (x->port_hi && x->port_lo != x->port_hi)
		snprintf(ports, sizeof(ports), "%u-%u", x->port_lo,
			 x->port_hi);
	else if (x->port_hi)
		snprintf(ports, sizeof(ports), "%u", x->port_lo);
	if (!inet_ntop(fam, x->addr, a, sizeof(a)))
		strcpy(a, "?");
	printable(prog, x->program, sizeof(prog));
	if (json) {
		printf("%s{\"kind\":\"%s\"", n ? "," : "", kind);
		if (x->kind == 1)
			printf(",\"family\":\"%s\",\"address\":\"%s\","
			       "\"prefix\":%u", fam == AF_INET ? "inet" :
			       "inet6", a, x->prefix);
		if (x->kind == 1 || x->kind == 2)
			printf(",\"port_lo\":%u,\"port_hi\":%u",
			       x->port_lo, x->port_hi);
		if (x->kind == 3) {
			printf(",\"program\":");
			json_str(x->program);
		}
		putchar('}');
		return;
	}
	if (x->kind == 1 && fam == AF_INET6 && ports[0])
		snprintf(rule, sizeof(rule), "[%s]/%u:%s", a, x->prefix,
			 ports);
	else if (x->kind == 1 && ports[0])
		snprintf(rule, sizeof(rule), "%s/%u:%s", a, x->prefix, ports);
	else if (x->kind == 1)
		snprintf(rule, sizeof(rule), "%s/%u", a, x->prefix);
	else if (x->kind == 2)
		snprintf(rule, sizeof(rule), "%s", ports);
	else
		snprintf(rule, sizeof(rule), "%s", prog);
	printf("%-8s %s\n", kind, rule);
}

/* ------------------------------------------------------------------ stats
 * `ubsctl stats` reads the per-process stats pages the preload publishes
 * in RUN_DIR/stats/<pid> (layout and reader rules in ubs_stats.h); it
 * needs no daemon.  A page is untrusted input: it is mapped read-only,
 * checked (regular file, size, magic, version, pid), read through relaxed
 * atomic loads of at most ncounters entries that lie inside the mapping,
 * and a page that fails a check is skipped with a warning.  SIGBUS (a
 * file cut short under the mapping) skips that page too.
 */

/* One process's counters, as read. */
struct stat_row {
	pid_t pid;
	bool alive;
	uint32_t n;                             /* counters present */
	char service[UBS_STATS_SERVICE_MAX];    /* NUL-terminated, raw */
	uint64_t c[UBS_STAT_NR];
};

/* Display order: the connection and byte counters, then the others. */
static const enum ubs_stat_id stat_first[] = {
	UBS_STAT_UB_CONNS, UBS_STAT_TCP_CONNS, UBS_STAT_UB_BYTES_TX,
	UBS_STAT_UB_BYTES_RX, UBS_STAT_FALLBACKS,
};
#define NFIRST (sizeof(stat_first) / sizeof(stat_first[0]))

static void stat_order(int order[UBS_STAT_NR])
{
	int k = 0;

	for (size_t i = 0; i < NFIRST; i++)
		order[k++] = stat_first[i];
	for (int i = 0; i < UBS_STAT_NR; i++) {
		bool first = false;
		for (size_t j = 0; j < NFIRST; j++)
			first |= (int)stat_first[j] == i;
		if (!first)
			order[k++] = i;
	}
}

static sigjmp_buf stats_bus_jmp;

static void stats_on_sigbus(int sig)
{
	(void)sig;
	siglongjmp(stats_bus_jmp, 1);
}

/* Is pid alive?  EPERM: it exists, owned by someone else. */
static bool pid_alive(pid_t pid)
{
	return kill(pid, 0) == 0 || errno != ESRCH;
}

/* A stats file name is a pid: decimal digits only, 1..INT_MAX. */
static pid_t stat_name_pid(const char *name)
{
	unsigned long v = 0;

	if (!*name)
		return 0;
	for (const char *p = name; *p; p++) {
		if (!isdigit((unsigned char)*p))
			return 0;
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > INT_MAX)
			return 0;
	}
	return (pid_t)v;
}

/*
 * Read the page at path (file name pid) into *row.  Returns 0, or -1 after
 * a warning naming the page and what is wrong with it.
 */
static int stat_read_page(const char *path, pid_t pid, struct stat_row *row)
{
	const struct ubs_stats_page *pg;
	volatile size_t len = 0;
	void *volatile map = MAP_FAILED;
	const char *why = NULL;
	char whybuf[96];
	struct stat st;
	uint64_t magic;
	uint32_t version, n, room;
	int32_t owner;
	int fd;

	/* O_NONBLOCK: a FIFO planted in stats/ must not hang us. */
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return -1;      /* gone since readdir: not a problem */
		fprintf(stderr, "ubsctl: %s: %s, skipped\n", path,
			strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		fprintf(stderr, "ubsctl: %s: not a regular file, skipped\n",
			path);
		return -1;
	}
	if ((uint64_t)st.st_size < offsetof(struct ubs_stats_page, counters)) {
		close(fd);
		fprintf(stderr, "ubsctl: %s: too small for a stats page "
			"(%lld bytes), skipped\n", path,
			(long long)st.st_size);
		return -1;
	}
	len = (uint64_t)st.st_size < UBS_STATS_SIZE ? (size_t)st.st_size
						    : UBS_STATS_SIZE;
	map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED) {
		fprintf(stderr, "ubsctl: %s: mmap: %s, skipped\n", path,
			strerror(errno));
		return -1;
	}
	if (sigsetjmp(stats_bus_jmp, 1)) {
		munmap(map, len);
		fprintf(stderr, "ubsctl: %s: cut short while being read "
			"(SIGBUS), skipped\n", path);
		return -1;
	}
	pg = map;
	magic = __atomic_load_n(&pg->magic, __ATOMIC_ACQUIRE);
	version = __atomic_load_n(&pg->version, __ATOMIC_RELAXED);
	owner = __atomic_load_n(&pg->pid, __ATOMIC_RELAXED);
	n = __atomic_load_n(&pg->ncounters, __ATOMIC_RELAXED);
	room = (uint32_t)((len - offsetof(struct ubs_stats_page, counters)) /
			  sizeof(uint64_t));
	if (magic != UBS_STATS_MAGIC) {
		snprintf(whybuf, sizeof(whybuf), "bad magic 0x%016" PRIx64,
			 magic);
		why = whybuf;
	} else if (version != UBS_STATS_VERSION) {
		snprintf(whybuf, sizeof(whybuf), "layout version %" PRIu32
			 " (this ubsctl reads %u)", version, UBS_STATS_VERSION);
		why = whybuf;
	} else if (owner != pid) {
		snprintf(whybuf, sizeof(whybuf), "page of pid %" PRId32
			 " under the name of pid %d", owner, (int)pid);
		why = whybuf;
	}
	if (why) {
		munmap(map, len);
		fprintf(stderr, "ubsctl: %s: %s, skipped\n", path, why);
		return -1;
	}
	/* At most ncounters, at most what we have names for (a newer
	 * library appends), at most what lies inside the file. */
	if (n > room)
		n = room;
	if (n > UBS_STAT_NR)
		n = UBS_STAT_NR;
	memset(row, 0, sizeof(*row));
	row->pid = pid;
	row->n = n;
	for (size_t i = 0; i + 1 < sizeof(row->service); i++)
		row->service[i] = __atomic_load_n(&pg->service[i],
						   __ATOMIC_RELAXED);
	row->service[sizeof(row->service) - 1] = '\0';
	for (uint32_t i = 0; i < n; i++)
		row->c[i] = __atomic_load_n(&pg->counters[i],
					    __ATOMIC_RELAXED);
	munmap(map, len);
	return 0;
}

static int stat_row_cmp(const void *a, const void *b)
{
	const struct stat_row *x = a, *y = b;

	return (x->pid > y->pid) - (x->pid < y->pid);
}

/* Decimal digits of v. */
static int ndigits(uint64_t v)
{
	int d = 1;

	while (v >= 10) {
		v /= 10;
		d++;
	}
	return d;
}

static void stats_print_json(const struct stat_row *rows, size_t nrows,
			     const uint64_t *total, const int *order)
{
	printf("{\"processes\":[");
	for (size_t r = 0; r < nrows; r++) {
		char svc[UBS_STATS_SERVICE_MAX];

		/* printable(): JSON output must be valid UTF-8 whatever
		 * bytes a page holds. */
		printable(svc, rows[r].service, sizeof(svc));
		printf("%s{\"pid\":%d,\"service\":", r ? "," : "",
		       (int)rows[r].pid);
		json_str(svc);
		printf(",\"alive\":%s", rows[r].alive ? "true" : "false");
		/* Counters the page does not have (an older library) are
		 * left out, not shown as 0. */
		for (int k = 0; k < UBS_STAT_NR; k++)
			if ((uint32_t)order[k] < rows[r].n)
				printf(",\"%s\":%" PRIu64,
				       ubs_stat_names[order[k]],
				       rows[r].c[order[k]]);
		putchar('}');
	}
	printf("],\"total\":{\"processes\":%zu", nrows);
	for (int k = 0; k < UBS_STAT_NR; k++)
		printf(",\"%s\":%" PRIu64, ubs_stat_names[order[k]],
		       total[order[k]]);
	printf("}}\n");
}

static void stats_print_table(const struct stat_row *rows, size_t nrows,
			      const uint64_t *total, const int *order,
			      bool all)
{
	int w[UBS_STAT_NR], wpid = 7, wsvc = 7;
	char svc[UBS_STATS_SERVICE_MAX], head[32], tot[32];

	snprintf(tot, sizeof(tot), "total(%zu)", nrows);
	if ((int)strlen(tot) > wpid + 1 + wsvc)
		wsvc = (int)strlen(tot) - wpid - 1;
	for (size_t r = 0; r < nrows; r++) {
		int l = (int)strlen(rows[r].service);
		if (ndigits((uint64_t)rows[r].pid) > wpid)
			wpid = ndigits((uint64_t)rows[r].pid);
		if (l > wsvc)
			wsvc = l > 24 ? 24 : l;
	}
	for (int k = 0; k < UBS_STAT_NR; k++) {
		w[k] = (int)strlen(ubs_stat_names[order[k]]);
		if (ndigits(total[order[k]]) > w[k])
			w[k] = ndigits(total[order[k]]);
	}
	printf("%-*s %-*s", wpid, "PID", wsvc, "SERVICE");
	if (all)
		printf(" %-5s", "ALIVE");
	for (int k = 0; k < UBS_STAT_NR; k++) {
		size_t i;
		for (i = 0; ubs_stat_names[order[k]][i] && i + 1 < sizeof(head);
		     i++)
			head[i] = (char)toupper(
				(unsigned char)ubs_stat_names[order[k]][i]);
		head[i] = '\0';
		printf(" %*s", w[k], head);
	}
	putchar('\n');
	for (size_t r = 0; r < nrows; r++) {
		printable(svc, rows[r].service, sizeof(svc));
		if ((int)strlen(svc) > wsvc)
			svc[wsvc] = '\0';
		printf("%-*d %-*s", wpid, (int)rows[r].pid, wsvc,
		       svc[0] ? svc : "-");
		if (all)
			printf(" %-5s", rows[r].alive ? "yes" : "no");
		for (int k = 0; k < UBS_STAT_NR; k++) {
			if ((uint32_t)order[k] < rows[r].n)
				printf(" %*" PRIu64, w[k], rows[r].c[order[k]]);
			else
				printf(" %*s", w[k], "-");
		}
		putchar('\n');
	}
	printf("%-*s", wpid + 1 + wsvc, tot);
	if (all)
		printf(" %-5s", "");
	for (int k = 0; k < UBS_STAT_NR; k++)
		printf(" %*" PRIu64, w[k], total[order[k]]);
	putchar('\n');
}

/*
 * `ubsctl stats [PID|SERVICE]`: one row per live process (every page with
 * all), filtered by pid (an all-digit argument) or service name, and a
 * total.  Returns the exit code.
 */
static int cmd_stats(const char *run_dir, const char *filter, bool json,
		     bool all)
{
	struct sigaction sa = { .sa_handler = stats_on_sigbus }, old_sa;
	struct stat_row *rows = NULL, row;
	size_t nrows = 0, cap = 0;
	uint64_t total[UBS_STAT_NR] = { 0 };
	int order[UBS_STAT_NR];
	pid_t want_pid = filter ? stat_name_pid(filter) : 0;
	bool want_pid_seen = false, want_pid_dead = false;
	char dir[PATH_MAX], path[PATH_MAX + 256];
	struct dirent *de;
	DIR *d;

	int rc;

	d = ubsctl_stats_dir(run_dir, filter, "stats pages", dir, sizeof(dir),
			     &rc);
	if (!d)
		return rc;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old_sa);
	while ((de = readdir(d))) {
		pid_t pid = stat_name_pid(de->d_name);

		/* Other names (".<pid>.tmp" while a page is being built)
		 * are not pages. */
		if (!pid || (want_pid && pid != want_pid))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (stat_read_page(path, pid, &row) < 0)
			continue;
		if (filter && !want_pid && strcmp(row.service, filter) != 0)
			continue;
		row.alive = pid_alive(pid);
		if (want_pid) {
			want_pid_seen = true;
			want_pid_dead = !row.alive;
		}
		if (!row.alive && !all)
			continue;
		if (nrows == cap) {
			struct stat_row *nr;
			cap = cap ? cap * 2 : 64;
			nr = realloc(rows, cap * sizeof(*rows));
			if (!nr) {
				fprintf(stderr, "ubsctl: out of memory\n");
				free(rows);
				closedir(d);
				return EX_ERROR;
			}
			rows = nr;
		}
		rows[nrows++] = row;
		for (uint32_t i = 0; i < row.n; i++)
			total[i] += row.c[i];
	}
	closedir(d);
	sigaction(SIGBUS, &old_sa, NULL);
	if (want_pid && !want_pid_seen) {
		fprintf(stderr, "ubsctl: no stats page for pid %d in %s\n",
			(int)want_pid, dir);
		free(rows);
		return EX_ERROR;
	}
	if (want_pid && want_pid_dead && !all) {
		fprintf(stderr, "ubsctl: pid %d has exited (--all shows the "
			"last counters of its page)\n", (int)want_pid);
		free(rows);
		return EX_ERROR;
	}
	if (nrows)
		qsort(rows, nrows, sizeof(*rows), stat_row_cmp);
	stat_order(order);
	if (json)
		stats_print_json(rows, nrows, total, order);
	else
		stats_print_table(rows, nrows, total, order, all);
	free(rows);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "ubsctl: write: %s\n", strerror(errno));
		return EX_ERROR;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "all", no_argument, NULL, 'a' },
		{ "sites", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	union {
		unsigned char raw[CTL_MAX_BODY];
		struct ctl_status status;
		struct ctl_session session;
		struct ctl_service service;
		struct ctl_error error;
		struct ctl_listener listener;
		struct ctl_verbs_ep verbs_ep;
		struct ctl_exclude exclude;
	} body;
	struct ctl_service_set set = { .name = "" };
	const struct keyword *kw;
	const char *run_dir, *why;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 64];
	struct ctl_hdr h;
	bool json = false, got_status = false, all = false;
	const char *sites = NULL;
	uint32_t seq = (uint32_t)getpid();
	int ch, fd, n = 0, mem_part = 0;

	while ((ch = getopt_long(argc, argv, "jah", longopts, NULL)) != -1) {
		switch (ch) {
		case 'j':
			json = true;
			break;
		case 's':
			sites = optarg;
			break;
		case 'a':
			all = true;
			break;
		default:
			usage();
		}
	}
	if (argc - optind < 1)
		usage();
	kw = match_keyword(argv[optind]);
	if (!kw) {
		fprintf(stderr, "ubsctl: unknown or ambiguous command: %s\n",
			argv[optind]);
		usage();
	}
	if (sites && kw->action != ACT_MEM) {
		fprintf(stderr, "ubsctl: --sites goes with mem only\n");
		usage();
	}
	if (all && kw->action != ACT_STATS && kw->action != ACT_CONNS) {
		fprintf(stderr, "ubsctl: --all goes with stats and conns "
			"only\n");
		usage();
	}
	if (kw->action == ACT_SERVICE) {
		if (argc - optind < 3)
			usage();
		service_args(&set, argv + optind + 1, argc - optind - 1);
	} else if (kw->action == ACT_STATS || kw->action == ACT_CONNS) {
		if (argc - optind > 2)
			usage();
	} else if (argc - optind != 1) {
		usage();
	}

	run_dir = getenv("UBS_RUN_DIR");
	if (!run_dir || !*run_dir)
		run_dir = CTL_DEFAULT_RUN_DIR;
	if (kw->action == ACT_STATS)
		return cmd_stats(run_dir, argc - optind == 2 ?
				 argv[optind + 1] : NULL, json, all);
	if (kw->action == ACT_CONNS)
		return ubsctl_conns(run_dir, argc - optind == 2 ?
				    argv[optind + 1] : NULL, json, all);
	if (sites)
		return ubsctl_sites(run_dir, sites, json);
	snprintf(path, sizeof(path), "%s/%s", run_dir, CTL_SOCK_NAME);
	fd = ctl_connect(path);

	{
		unsigned char req[sizeof(h) + sizeof(set)];
		uint32_t len = kw->action == ACT_SERVICE ? sizeof(set) : 0;

		ctl_fill(&h, kw->req, len, seq);
		memcpy(req, &h, sizeof(h));
		memcpy(req + sizeof(h), &set, len);
		if (send(fd, req, sizeof(h) + len, MSG_NOSIGNAL) !=
		    (ssize_t)(sizeof(h) + len)) {
			fprintf(stderr, "ubsctl: send: %s\n",
				strerror(errno));
			return EX_ERROR;
		}
	}
	if (kw->action == ACT_SESSIONS || kw->action == ACT_SERVICES ||
	    kw->action == ACT_LISTENERS || kw->action == ACT_EXCLUDES ||
	    kw->action == ACT_VERBS) {
		if (json)
			putchar('[');
		else if (kw->action == ACT_VERBS)
			printf("%-9s %-8s %-4s %-9s %s\n", "QPN", "PID", "TYPE",
			       "DEST_QPN", "CTX");
		else if (kw->action == ACT_EXCLUDES)
			printf("%-8s %s\n", "KIND", "RULE");
		else if (kw->action == ACT_LISTENERS)
			printf("%-12s %-20s %-46s %s\n", "SOCK_ID", "NETNS",
			       "ADDRESS:PORT", "HOLDERS");
		else if (kw->action == ACT_SESSIONS)
			printf("%-8s %-6s %-20s %-12s %s\n", "PID", "UID",
			       "SERVICE", "NETNS", "AGE");
		else
			printf("%-24s %-5s %-8s %-8s %-9s %-8s %s\n", "NAME",
			       "ACCEL", "SPIN_US", "RING_KIB", "MEM_QUOTA",
			       "MEM_POOL", "MEM_SITES");
	}
	for (;;) {
		if (ctl_recv(fd, seq, &h, &body, &why) < 0) {
			fprintf(stderr, "ubsctl: bad reply: %s\n", why);
			return EX_ERROR;
		}
		if (h.type == CTL_R_END)
			break;
		if (h.type == CTL_R_ERROR) {
			fprintf(stderr, "ubsctl: ubsd: %s (%s)\n",
				body.error.msg, strerror(body.error.err));
			return body.error.err == EPERM ? EX_PERM : EX_ERROR;
		}
		if (kw->action == ACT_SERVICE && h.type == CTL_R_OK)
			break;          /* a single reply, no END */
		if (kw->action == ACT_STATUS && h.type == CTL_R_STATUS &&
		    !got_status) {
			show_status(&body.status, json);
			got_status = true;
		} else if (kw->action == ACT_SESSIONS &&
			   h.type == CTL_R_SESSION) {
			show_session(&body.session, json, n++);
		} else if (kw->action == ACT_SERVICES &&
			   h.type == CTL_R_SERVICE) {
			show_service(&body.service, json, n++);
		} else if (kw->action == ACT_LISTENERS &&
			   h.type == CTL_R_LISTENER) {
			show_listener(&body.listener, json, n++);
		} else if (kw->action == ACT_EXCLUDES &&
			   h.type == CTL_R_EXCLUDE) {
			show_exclude(&body.exclude, json, n++);
		} else if (kw->action == ACT_MEM &&
			   (h.type == CTL_R_MEM_POOL ||
			    h.type == CTL_R_MEM_SERVICE ||
			    h.type == CTL_R_MEM_HOLDER)) {
			show_mem(h.type, &body, json, &mem_part, &n);
		} else if (kw->action == ACT_VERBS &&
			   h.type == CTL_R_VERBS_EP) {
			show_verbs_ep(&body.verbs_ep, json, n++);
		} else {
			fprintf(stderr, "ubsctl: bad reply: unexpected %s\n",
				ctl_type_name(h.type));
			return EX_ERROR;
		}
	}
	if (kw->action == ACT_MEM)
		show_mem_end(json, mem_part);
	if (kw->action == ACT_STATUS && !got_status) {
		fprintf(stderr, "ubsctl: bad reply: END without status\n");
		return EX_ERROR;
	}
	if ((kw->action == ACT_SESSIONS || kw->action == ACT_SERVICES ||
	     kw->action == ACT_LISTENERS || kw->action == ACT_EXCLUDES ||
	     kw->action == ACT_VERBS) && json)
		printf("]\n");
	close(fd);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "ubsctl: write: %s\n", strerror(errno));
		return EX_ERROR;
	}
	return 0;
}

/* For the commands in their own files (ubsctl.h). */
void ubsctl_json_str(const char *s)
{
	json_str(s);
}

void ubsctl_printable(char *dst, const char *s, size_t n)
{
	printable(dst, s, n);
}

void ubsctl_print_age(uint64_t ms)
{
	print_age(ms);
}

bool ubsctl_pid_alive(pid_t pid)
{
	return pid_alive(pid);
}

pid_t ubsctl_pid_name(const char *name)
{
	return stat_name_pid(name);
}

DIR *ubsctl_stats_dir(const char *run_dir, const char *filter,
		      const char *what, char *dir, size_t n, int *rc)
{
	DIR *d;

	*rc = EX_USAGE;
	if (filter && !stat_name_pid(filter)) {
		if (strlen(filter) >= UBS_STATS_SERVICE_MAX) {
			fprintf(stderr, "ubsctl: service name too long\n");
			return NULL;
		}
		if (isdigit((unsigned char)filter[0]) &&
		    strspn(filter, "0123456789") == strlen(filter)) {
			fprintf(stderr, "ubsctl: bad pid: %s\n", filter);
			return NULL;
		}
	}
	*rc = EX_ERROR;
	snprintf(dir, n, "%s/stats", run_dir);
	d = opendir(dir);
	if (!d)
		fprintf(stderr, "ubsctl: %s: %s (preloaded processes publish "
			"their %s only where this directory exists)\n", dir,
			strerror(errno), what);
	return d;
}

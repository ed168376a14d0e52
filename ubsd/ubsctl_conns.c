/* SPDX-License-Identifier: MIT */
/*
 * ubsctl_conns.c - `ubsctl conns`: the connections of preloaded processes,
 * from the connection tables of their stats files (layout in ubs_stats.h):
 * each live UB connection with its fd, side, addresses, the process at the
 * other end (the slot with the same channel id) and the bytes it carried,
 * then each process's latest decisions for TCP with the reason.  Needs no
 * daemon.  A table is untrusted input: mapped read-only, its place and
 * size checked against the file, each slot copied under its seqlock;
 * a file that fails a check is skipped with a warning, SIGBUS too.
 *
 * Addresses are not in the table (the library spends no syscall on them):
 * they come from the kernel, as ss(8) finds them, through the slot's fd
 * (/proc/PID/fd/FD -> socket:[INODE]) and the socket tables of the
 * process's network namespace (/proc/PID/net/tcp, tcp6).  An fd that is no
 * longer that socket, or a process we may not look into, shows "-".
 */
#include <arpa/inet.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ubs_stats.h"
#include "ubsctl.h"

#define ADDR_MAX 64                     /* "[v6 address]:port" and NUL */
#define EX_ERROR 3
#define EX_USAGE 2

struct conn_row {
	pid_t pid;
	bool alive;
	char service[UBS_STATS_SERVICE_MAX];
	struct ubs_conn_slot slot;      /* a stable copy */
	char local[ADDR_MAX], remote[ADDR_MAX];
	pid_t peer_pid;                 /* the other end, 0: unknown */
	int peer_fd;
	bool peer_opposite;             /* it is the other side */
	bool drop;                      /* not asked for (filter) */
};

static sigjmp_buf conns_bus_jmp;

static void conns_on_sigbus(int sig)
{
	(void)sig;
	siglongjmp(conns_bus_jmp, 1);
}

/* Copy slot *s into *out under its seqlock; false if it never held still
 * (a writer in the middle of it, three times). */
static bool slot_copy(const struct ubs_conn_slot *s, struct ubs_conn_slot *out)
{
	for (int tries = 0; tries < 3; tries++) {
		uint32_t a = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE), b;

		if (a & 1)
			continue;
		out->state = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
		out->side = __atomic_load_n(&s->side, __ATOMIC_RELAXED);
		out->why = __atomic_load_n(&s->why, __ATOMIC_RELAXED);
		out->fd = __atomic_load_n(&s->fd, __ATOMIC_RELAXED);
		out->chan_id = __atomic_load_n(&s->chan_id, __ATOMIC_RELAXED);
		out->since_ms = __atomic_load_n(&s->since_ms, __ATOMIC_RELAXED);
		out->tx = __atomic_load_n(&s->tx, __ATOMIC_RELAXED);
		out->rx = __atomic_load_n(&s->rx, __ATOMIC_RELAXED);
		out->ino = __atomic_load_n(&s->ino, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		b = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
		if (a == b)
			return true;
	}
	return false;
}

/*
 * Read the table of the stats file at path (pid's) into *rows.  Returns 0,
 * or -1 after a warning (the file is skipped).  A file without a table
 * (conns_max 0) has no rows.
 */
static int table_read(const char *path, pid_t pid, struct conn_row **rows,
		      size_t *nrows, size_t *cap)
{
	const struct ubs_stats_page *pg;
	volatile size_t len = 0;
	void *volatile map = MAP_FAILED;
	char service[UBS_STATS_SERVICE_MAX];
	uint32_t off, max;
	volatile uint32_t skipped = 0;
	struct stat st;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? -1 : (fprintf(stderr, "ubsctl: %s: "
			"%s, skipped\n", path, strerror(errno)), -1);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (uint64_t)st.st_size < UBS_STATS_SIZE ||
	    (uint64_t)st.st_size > ((uint64_t)1 << 30)) {
		close(fd);
		fprintf(stderr, "ubsctl: %s: not a stats file, skipped\n",
			path);
		return -1;
	}
	len = (size_t)st.st_size;
	map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED) {
		fprintf(stderr, "ubsctl: %s: mmap: %s, skipped\n", path,
			strerror(errno));
		return -1;
	}
	if (sigsetjmp(conns_bus_jmp, 1)) {
		munmap(map, len);
		fprintf(stderr, "ubsctl: %s: cut short while being read "
			"(SIGBUS), skipped\n", path);
		return -1;
	}
	pg = map;
	if (__atomic_load_n(&pg->magic, __ATOMIC_ACQUIRE) != UBS_STATS_MAGIC ||
	    __atomic_load_n(&pg->version, __ATOMIC_RELAXED) !=
	    UBS_STATS_VERSION ||
	    __atomic_load_n(&pg->pid, __ATOMIC_RELAXED) != pid) {
		munmap(map, len);
		fprintf(stderr, "ubsctl: %s: not a stats page of pid %d, "
			"skipped\n", path, (int)pid);
		return -1;
	}
	off = __atomic_load_n(&pg->conns_off, __ATOMIC_RELAXED);
	max = __atomic_load_n(&pg->conns_max, __ATOMIC_RELAXED);
	if (max == 0) {
		munmap(map, len);
		return 0;
	}
	if (off < UBS_STATS_SIZE || off % 64 || max > 65536 ||
	    (uint64_t)off + (uint64_t)max * sizeof(struct ubs_conn_slot) >
	    len) {
		munmap(map, len);
		fprintf(stderr, "ubsctl: %s: connection table (%u slots at %u) "
			"outside the file, skipped\n", path, max, off);
		return -1;
	}
	for (size_t i = 0; i + 1 < sizeof(service); i++)
		service[i] = __atomic_load_n(&pg->service[i],
					     __ATOMIC_RELAXED);
	service[sizeof(service) - 1] = '\0';
	for (uint32_t i = 0; i < max; i++) {
		const struct ubs_conn_slot *s = (const struct ubs_conn_slot *)
			((const char *)map + off) + i;
		struct conn_row *r;
		struct ubs_conn_slot c;

		memset(&c, 0, sizeof(c));
		if (!slot_copy(s, &c) || c.state == UBS_CONN_FREE)
			continue;
		if (c.state != UBS_CONN_UB && c.state != UBS_CONN_TCP) {
			skipped++;
			continue;
		}
		if (*nrows == *cap) {
			size_t nc = *cap ? *cap * 2 : 64;
			struct conn_row *nr = realloc(*rows, nc * sizeof(*nr));

			if (!nr) {
				munmap(map, len);
				fprintf(stderr, "ubsctl: out of memory\n");
				return -1;
			}
			*rows = nr;
			*cap = nc;
		}
		r = &(*rows)[(*nrows)++];
		memset(r, 0, sizeof(*r));
		r->pid = pid;
		memcpy(r->service, service, sizeof(service));
		r->slot = c;
		strcpy(r->local, "-");
		strcpy(r->remote, "-");
	}
	munmap(map, len);
	if (skipped)
		fprintf(stderr, "ubsctl: %s: %u slots in an unknown state, "
			"skipped\n", path, skipped);
	return 0;
}

/* "a.b.c.d:port" or "[v6]:port" from /proc/net/tcp{,6} hex fields. */
static bool hex_endpoint(const char *hex, bool v6, char *out)
{
	unsigned char a[16];
	char buf[INET6_ADDRSTRLEN];
	unsigned int port;
	const char *colon = strchr(hex, ':');
	size_t n = v6 ? 32 : 8;

	if (!colon || (size_t)(colon - hex) != n ||
	    sscanf(colon + 1, "%x", &port) != 1)
		return false;
	/* Each 32-bit word is printed in host order (little-endian). */
	for (size_t w = 0; w < n / 8; w++) {
		unsigned int v;
		char word[9];

		memcpy(word, hex + w * 8, 8);
		word[8] = '\0';
		if (sscanf(word, "%x", &v) != 1)
			return false;
		memcpy(a + w * 4, &v, 4);
	}
	if (!inet_ntop(v6 ? AF_INET6 : AF_INET, a, buf, sizeof(buf)))
		return false;
	if (v6 && strncmp(buf, "::ffff:", 7) == 0 && strchr(buf, '.'))
		snprintf(out, ADDR_MAX, "%s:%u", buf + 7, port);
	else if (v6)
		snprintf(out, ADDR_MAX, "[%s]:%u", buf, port);
	else
		snprintf(out, ADDR_MAX, "%s:%u", buf, port);
	return true;
}

/* Find socket inode ino in /proc/PID/net/tcp or tcp6: its addresses. */
static bool sock_addrs(pid_t pid, unsigned long ino, char *local,
		       char *remote)
{
	for (int v6 = 0; v6 < 2; v6++) {
		char path[64], line[512];
		bool found = false;
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/net/tcp%s", (int)pid,
			 v6 ? "6" : "");
		f = fopen(path, "re");
		if (!f)
			continue;
		while (!found && fgets(line, sizeof(line), f)) {
			char l[80], r[80];
			unsigned long i;

			/* sl local rem st tx:rx tr:when retrnsmt uid tmo inode */
			if (sscanf(line, " %*s %79s %79s %*s %*s %*s %*s %*s "
				   "%*s %lu", l, r, &i) == 3 && i == ino)
				found = hex_endpoint(l, v6, local) &&
					hex_endpoint(r, v6, remote);
		}
		fclose(f);
		if (found)
			return true;
	}
	return false;
}

/* Addresses of row r's fd, if it still is a TCP socket. */
static void row_addrs(struct conn_row *r)
{
	char path[64], link[64];
	unsigned long ino;
	ssize_t n;

	if (!r->alive || r->slot.fd < 0)
		return;
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)r->pid,
		 (int)r->slot.fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return;
	link[n] = '\0';
	if (sscanf(link, "socket:[%lu]", &ino) != 1 ||
	    (r->slot.ino && r->slot.ino != ino))
		return;                 /* closed since, the number reused */
	if (!sock_addrs(r->pid, ino, r->local, r->remote)) {
		strcpy(r->local, "-");
		strcpy(r->remote, "-");
	}
}

static int row_cmp(const void *a, const void *b)
{
	const struct conn_row *x = a, *y = b;

	if (x->slot.state != y->slot.state)
		return x->slot.state < y->slot.state ? -1 : 1;  /* UB first */
	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	if (x->slot.state == UBS_CONN_TCP)      /* newest first */
		return x->slot.since_ms > y->slot.since_ms ? -1 :
		       x->slot.since_ms < y->slot.since_ms;
	return x->slot.fd < y->slot.fd ? -1 : x->slot.fd > y->slot.fd;
}

static const char *why_str(uint16_t why)
{
	const char *s = why < UBS_STAT_NR ? ubs_stat_names[why] : "?";

	return strncmp(s, "tcp_", 4) == 0 && s[4] ? s + 4 :
	       strcmp(s, "tcp_conns") == 0 ? "other" : s;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void print_json(const struct conn_row *rows, size_t n)
{
	uint64_t now = wall_ms();

	putchar('[');
	for (size_t i = 0; i < n; i++) {
		const struct conn_row *r = &rows[i];
		const struct ubs_conn_slot *s = &r->slot;

		printf("%s{\"pid\":%d,\"service\":", i ? "," : "", (int)r->pid);
		ubsctl_json_str(r->service);
		printf(",\"alive\":%s,\"fd\":%d,\"side\":\"%s\","
		       "\"state\":\"%s\",\"local\":", r->alive ? "true" :
		       "false", (int)s->fd, s->side ? "connected" : "accepted",
		       s->state == UBS_CONN_UB ? "ub" : "tcp");
		ubsctl_json_str(r->local);
		printf(",\"remote\":");
		ubsctl_json_str(r->remote);
		if (s->state == UBS_CONN_UB) {
			printf(",\"chan_id\":%" PRIu64 ",\"tx\":%" PRIu64
			       ",\"rx\":%" PRIu64, s->chan_id, s->tx, s->rx);
			if (r->peer_pid)
				printf(",\"peer\":{\"pid\":%d,\"fd\":%d}",
				       (int)r->peer_pid, r->peer_fd);
			else
				printf(",\"peer\":null");
		} else {
			printf(",\"why\":\"%s\"", why_str(s->why));
		}
		printf(",\"age_ms\":%" PRIu64 "}", now > s->since_ms ?
		       now - s->since_ms : 0);
	}
	printf("]\n");
}

/* Bytes for a table cell: 812, 4.0K, 1.5M, 2.3G. */
static void human(char *buf, size_t n, uint64_t v)
{
	static const char sfx[] = "KMGT";
	double d = (double)v;
	int i = -1;

	while (d >= 1024 && i < 3) {
		d /= 1024;
		i++;
	}
	if (i < 0)
		snprintf(buf, n, "%" PRIu64, v);
	else
		snprintf(buf, n, "%.1f%c", d, sfx[i]);
}

static void print_table(const struct conn_row *rows, size_t n)
{
	uint64_t now = wall_ms();

	printf("%-7s %-12s %-5s %-9s %-5s %-22s %-22s %-13s %-9s %-9s %s\n",
	       "PID", "SERVICE", "FD", "SIDE", "STATE", "LOCAL", "REMOTE",
	       "PEER", "TX", "RX", "AGE/WHY");
	for (size_t i = 0; i < n; i++) {
		const struct conn_row *r = &rows[i];
		const struct ubs_conn_slot *s = &r->slot;
		char svc[13], peer[24] = "-", tx[16] = "-", rx[16] = "-";
		uint64_t age = now > s->since_ms ? now - s->since_ms : 0;

		ubsctl_printable(svc, r->service, sizeof(svc));
		if (s->state == UBS_CONN_UB) {
			if (r->peer_pid)
				snprintf(peer, sizeof(peer), "%d/%d",
					 (int)r->peer_pid, r->peer_fd);
			human(tx, sizeof(tx), s->tx);
			human(rx, sizeof(rx), s->rx);
		}
		printf("%-7d %-12s %-5d %-9s %-5s %-22s %-22s %-13s %-9s %-9s ",
		       (int)r->pid, svc, (int)s->fd,
		       s->side ? "connected" : "accepted",
		       s->state == UBS_CONN_UB ? "UB" : "TCP", r->local,
		       r->remote, peer, tx, rx);
		ubsctl_print_age(age);
		if (s->state == UBS_CONN_TCP)
			printf(" %s", why_str(s->why));
		if (!r->alive)
			printf(" (exited)");
		putchar('\n');
	}
}

int ubsctl_conns(const char *run_dir, const char *filter, bool json,
		 bool all)
{
	struct sigaction sa = { .sa_handler = conns_on_sigbus }, old_sa;
	struct conn_row *rows = NULL;
	size_t nrows = 0, cap = 0;
	pid_t want_pid = filter ? ubsctl_pid_name(filter) : 0;
	char dir[PATH_MAX], path[PATH_MAX + 256];
	struct dirent *de;
	DIR *d;

	int rc;

	d = ubsctl_stats_dir(run_dir, filter, "connections", dir, sizeof(dir),
			     &rc);
	if (!d)
		return rc;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &old_sa);
	while ((de = readdir(d))) {
		pid_t pid = ubsctl_pid_name(de->d_name);
		size_t first = nrows;
		bool alive;

		if (!pid)
			continue;
		alive = ubsctl_pid_alive(pid);
		if (!alive && !all)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (table_read(path, pid, &rows, &nrows, &cap) < 0)
			continue;
		for (size_t i = first; i < nrows; i++) {
			rows[i].alive = alive;
			rows[i].drop = want_pid ? pid != want_pid :
				       filter && strcmp(rows[i].service,
							filter) != 0;
		}
	}
	closedir(d);
	sigaction(SIGBUS, &old_sa, NULL);
	/* The other end: the UB slot of another process with the same
	 * channel (a forked holder of the same end shares it too: the
	 * opposite side is preferred).  Looked for among every process,
	 * then the rows not asked for go. */
	for (size_t i = 0; i < nrows; i++) {
		struct conn_row *r = &rows[i];

		if (r->slot.state != UBS_CONN_UB)
			continue;
		for (size_t j = 0; j < nrows; j++) {
			const struct conn_row *o = &rows[j];

			if (o->slot.state != UBS_CONN_UB ||
			    o->slot.chan_id != r->slot.chan_id ||
			    o->pid == r->pid ||
			    (r->peer_pid && r->peer_opposite))
				continue;
			r->peer_pid = o->pid;
			r->peer_fd = o->slot.fd;
			r->peer_opposite = o->slot.side != r->slot.side;
		}
	}
	for (size_t i = 0; i < nrows; i++)
		if (rows[i].drop)
			rows[i--] = rows[--nrows];
	for (size_t i = 0; i < nrows; i++)
		row_addrs(&rows[i]);
	if (nrows)
		qsort(rows, nrows, sizeof(*rows), row_cmp);
	if (json)
		print_json(rows, nrows);
	else
		print_table(rows, nrows);
	free(rows);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "ubsctl: write: %s\n", strerror(errno));
		return EX_ERROR;
	}
	return 0;
}

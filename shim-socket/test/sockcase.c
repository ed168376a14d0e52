/* SPDX-License-Identifier: MIT */
/*
 * sockcase.c - one socket scenario over 127.0.0.1, traced.
 *
 *   sockcase --list        the case names, one a line
 *   sockcase CASE          run CASE, print its trace on stdout
 *   sockcase --exec ...    (internal) a role some cases run after execve
 *
 * A case is a server and a client in two processes (the client is forked
 * first and learns the listening port through a pipe; the server is the
 * process that was started).  Each process appends one line per observed
 * result of an interposed call to its own block of a shared mapping: the
 * call, its return value, the errno name, the bytes (or their length and
 * FNV-1a digest), poll/epoll event masks by name, fd numbers.  When both
 * are done the server prints its block, then the client's (then a forked
 * grandchild's, for the case that has one), so the output is a pure
 * function of what the program observed.  Where the kernel itself varies
 * the trace is normalised: how many bytes fit before EAGAIN is printed as
 * "filled>0", multi-call reads and writes are printed as one total, and a
 * single-call check first waits (untraced, bounded) until the bytes it
 * needs have arrived.  Two synchronisation pipes order the two sides.
 *
 * The behaviour suite (behaviour.c) runs every case without and with the
 * preload and requires identical traces.  So that it can also prove the
 * preloaded run was accelerated, sockcase writes to the file named by
 * $SOCKCASE_KSTATS, at the end:
 *   kbytes N     sum, over every TCP socket it closed, of tcpi_bytes_acked
 *                + tcpi_bytes_received read with TCP_INFO just before the
 *                close (both ends of a connection count: a stricter bound)
 *   moved N      payload bytes the case's writes moved
 *   expect_ub N  connections of this case that must be accelerated (0: the
 *                case must stay on TCP)
 *   exact_ub N   when > 0, the exact sum of the stats pages' ub_conns (UB
 *                ends: two per connection), for a case where some
 *                connections must stay on TCP
 *
 * A few cases act on the case's ubsd: policy_flip runs ubsctl against
 * $SOCKCASE_RUN_DIR (the suite sets it in both runs), daemon_restart asks
 * the suite to kill and restart it through the pipes $SOCKCASE_HARNESS
 * names (see harness()).
 *
 * Every wait is bounded: alarm(10) in each process (the server then kills
 * and reaps the client by pid, prints what it has and exits 2), the sync
 * pipes end at the peer's death, and helper waits give up after 4 s.
 * Exit status 0, or 1 after a FATAL line (the case could not go on).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tcp.h>		/* struct tcp_info with tcpi_bytes_* */
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <liburing.h>
#include <linux/close_range.h>

#define ALARM_S		10		/* per process, whole case */
#define WAIT_MS		4000		/* any helper wait, poll timeouts */
#define TRACE_MAX	24576		/* bytes of trace per process */
#define SHOW_MAX	48		/* longer data is shown as a digest */
#define MIB		(1024u * 1024u)

enum { R_SERVER, R_CLIENT, R_CHILD, R_NR };
static const char *const role_names[R_NR] = { "server", "client", "child" };

/* One process's trace and counters, in the shared mapping. */
struct block {
	size_t len;
	int used;
	int truncated;
	uint64_t kbytes;	/* TCP_INFO bytes acked + received */
	uint64_t moved;		/* payload bytes written */
	char text[TRACE_MAX];
};

static struct block *blocks;	/* R_NR of them, MAP_SHARED */
static int role = R_SERVER;
static int sync_out = -1, sync_in = -1;	/* pipes to and from the peer */
static uint16_t port;		/* listening port (client: once learned) */
static volatile pid_t client_pid = -1;
static int exec_out = -1;
static bool client_may_die;	/* the case kills its client on purpose */		/* exec'd role: where its trace goes */

extern char **environ;

static void finish(int rc) __attribute__((noreturn));

/* ------------------------------------------------------------------ */
/* Trace                                                              */

/* Appends one line to this process's block. */
static void __attribute__((format(printf, 1, 2))) tr(const char *fmt, ...)
{
	struct block *b = &blocks[role];
	char line[640];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (b->len + (size_t)n + 1 >= TRACE_MAX) {
		b->truncated = 1;
		return;
	}
	memcpy(b->text + b->len, line, (size_t)n);
	b->len += (size_t)n;
	b->text[b->len++] = '\n';
}

/* The errno's symbolic name ("EAGAIN"), never its number. */
static const char *ename(int e)
{
	const char *n = e ? strerrorname_np(e) : "0";

	return n ? n : "E?";
}

/*
 * Traces "DESC = R", or "DESC = -1 ENAME" when r < 0; DESC is printf'd
 * from fmt.  Used through CALL(), which captures errno right after the
 * call and restores it.
 */
static void __attribute__((format(printf, 3, 4)))
tr_ret(long r, int e, const char *fmt, ...)
{
	char desc[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(desc, sizeof(desc), fmt, ap);
	va_end(ap);
	if (r < 0)
		tr("%s = %ld %s", desc, r, ename(e));
	else
		tr("%s = %ld", desc, r);
}

#define CALL(expr, ...) ({						\
	errno = 0;							\
	long r_ = (long)(expr);						\
	int e_ = errno;							\
	tr_ret(r_, e_, __VA_ARGS__);					\
	errno = e_;							\
	r_; })

/* FNV-1a 64 of n bytes, continuing from h (start with FNV_INIT). */
#define FNV_INIT 0xcbf29ce484222325ULL
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;

	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Writes a printable form of n bytes into out: quoted text or a digest. */
static const char *show(char *out, size_t outsz, const void *p, size_t n)
{
	const unsigned char *s = p;
	size_t k = 0;

	if (n > SHOW_MAX) {
		snprintf(out, outsz, "<%zu bytes fnv=%016llx>", n,
			 (unsigned long long)fnv(FNV_INIT, p, n));
		return out;
	}
	out[k++] = '"';
	for (size_t i = 0; i < n && k + 6 < outsz; i++) {
		if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\')
			out[k++] = (char)s[i];
		else
			k += (size_t)snprintf(out + k, outsz - k, "\\x%02x", s[i]);
	}
	out[k++] = '"';
	out[k] = '\0';
	return out;
}

/* poll/epoll event bits by name ("IN|OUT|RDHUP"), "0" when none. */
static const char *evname(char *out, size_t outsz, uint32_t m)
{
	static const struct { uint32_t bit; const char *name; } bits[] = {
		{ POLLIN, "IN" }, { POLLPRI, "PRI" }, { POLLOUT, "OUT" },
		{ POLLERR, "ERR" }, { POLLHUP, "HUP" }, { POLLNVAL, "NVAL" },
		{ POLLRDNORM, "RDNORM" }, { POLLRDBAND, "RDBAND" },
		{ POLLWRNORM, "WRNORM" }, { POLLWRBAND, "WRBAND" },
		{ POLLMSG, "MSG" }, { POLLRDHUP, "RDHUP" },
	};
	size_t k = 0;

	out[0] = '\0';
	for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
		if (!(m & bits[i].bit))
			continue;
		k += (size_t)snprintf(out + k, outsz - k, "%s%s", k ? "|" : "",
				      bits[i].name);
		m &= ~bits[i].bit;
	}
	if (m)
		k += (size_t)snprintf(out + k, outsz - k, "%s0x%x", k ? "|" : "", m);
	if (!k)
		snprintf(out, outsz, "0");
	return out;
}

/* The case cannot go on: say why, then end this process (exit 1). */
static void __attribute__((noreturn, format(printf, 1, 2))) fatal(const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	tr("FATAL %s", msg);
	finish(1);
}

/* Milliseconds on the monotonic clock. */
static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ------------------------------------------------------------------ */
/* Synchronisation with the peer (pipes, never traced)                */

/* Sends the one-byte step tag to the peer. */
static void tell(char tag)
{
	if (write(sync_out, &tag, 1) != 1)
		fatal("tell %c: %s", tag, ename(errno));
}

/* Waits for the peer's step tag (bounded by the alarm). */
static void hear(char tag)
{
	ssize_t n;
	char c;

	do
		n = read(sync_in, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		fatal("hear %c: %s", tag, n == 0 ? "peer gone" : ename(errno));
	if (c != tag)
		fatal("hear %c: got %c", tag, c);
}

static void tell_u64(uint64_t v)
{
	tell('#');
	if (write(sync_out, &v, sizeof(v)) != (ssize_t)sizeof(v))
		fatal("tell value: %s", ename(errno));
}

static uint64_t hear_u64(void)
{
	uint64_t v;
	size_t got = 0;

	hear('#');
	while (got < sizeof(v)) {
		ssize_t n = read(sync_in, (char *)&v + got, sizeof(v) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			fatal("hear value: %s", n == 0 ? "peer gone" : ename(errno));
		got += (size_t)n;
	}
	return v;
}

/* ------------------------------------------------------------------ */
/* Untraced bounded waits                                             */

/*
 * Waits until at least n bytes can be read from fd (MSG_PEEK|MSG_DONTWAIT,
 * so nothing is consumed), up to WAIT_MS.  Traces only a timeout.
 */
static void wait_bytes(int fd, size_t n)
{
	char buf[4096];
	ssize_t r = 0;

	if (n > sizeof(buf))
		n = sizeof(buf);
	for (long long end = now_ms() + WAIT_MS; now_ms() < end; sleep_ms(1)) {
		r = recv(fd, buf, n, MSG_PEEK | MSG_DONTWAIT);
		if (r >= (ssize_t)n)
			return;
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			break;
	}
	tr("wait_bytes(%d,%zu) gave up: peek = %zd %s", fd, n, r,
	   r < 0 ? ename(errno) : "");
}

/* Waits until poll on fd reports any of mask (up to WAIT_MS). */
static void wait_event(int fd, short mask)
{
	struct pollfd p = { .fd = fd, .events = mask };
	char ev[96];

	for (long long end = now_ms() + WAIT_MS; now_ms() < end; sleep_ms(1)) {
		p.revents = 0;
		if (poll(&p, 1, 0) == 1 && (p.revents & mask))
			return;
	}
	tr("wait_event(%d,%s) gave up", fd, evname(ev, sizeof(ev), (uint32_t)mask));
}

/* ------------------------------------------------------------------ */
/* Traced socket helpers                                              */

static struct sockaddr_in loopback(uint16_t p)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(p) };

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

/*
 * Server: a TCP socket bound to 127.0.0.1 on an ephemeral port (bind 0 +
 * getsockname), listening; the port is sent to the client.
 */
static int srv_listen(void)
{
	struct sockaddr_in a = loopback(0);
	socklen_t len = sizeof(a);
	int l;

	l = (int)CALL(socket(AF_INET, SOCK_STREAM, 0), "socket(INET,STREAM)");
	if (l < 0)
		fatal("no socket");
	CALL(bind(l, (struct sockaddr *)&a, sizeof(a)), "bind(%d,127.0.0.1:0)", l);
	if (listen(l, 16) != 0 ||
	    getsockname(l, (struct sockaddr *)&a, &len) != 0)
		fatal("listen/getsockname: %s", ename(errno));
	tr("listen(%d,16) = 0", l);
	port = ntohs(a.sin_port);
	tell_u64(port);
	return l;
}

/* Client: the listening port (learned once from the server). */
static uint16_t srv_port(void)
{
	if (!port)
		port = (uint16_t)hear_u64();
	return port;
}

/* Client: connect fd to the server; returns connect's result. */
static int cli_connect_fd(int fd)
{
	struct sockaddr_in a = loopback(srv_port());

	return (int)CALL(connect(fd, (struct sockaddr *)&a, sizeof(a)),
			 "connect(%d,127.0.0.1:port)", fd);
}

/* Client: a new blocking socket, connected to the server. */
static int cli_connect(void)
{
	int fd;

	srv_port();
	fd = (int)CALL(socket(AF_INET, SOCK_STREAM, 0), "socket(INET,STREAM)");
	if (fd < 0)
		fatal("no socket");
	if (cli_connect_fd(fd) != 0)
		fatal("connect failed");
	return fd;
}

static int srv_accept(int l)
{
	int s = (int)CALL(accept(l, NULL, NULL), "accept(%d)", l);

	if (s < 0)
		fatal("accept failed");
	return s;
}

/* Adds fd's kernel TCP byte counters to this process's kbytes. */
static void kinfo(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
	    len >= offsetof(struct tcp_info, tcpi_bytes_received) + 8)
		blocks[role].kbytes += ti.tcpi_bytes_acked + ti.tcpi_bytes_received;
}

/* close() of a socket, with its TCP_INFO counted first. */
static long kclose(int fd)
{
	kinfo(fd);
	return CALL(close(fd), "close(%d)", fd);
}

/* One traced write of a string. */
static ssize_t xwrite(int fd, const char *s)
{
	char sh[256];
	size_t n = strlen(s);
	ssize_t r;

	r = CALL(write(fd, s, n), "write(%d,%s)", fd, show(sh, sizeof(sh), s, n));
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	return r;
}

/* One traced read of up to n bytes; prints what was read. */
static ssize_t xread(int fd, size_t n)
{
	char buf[4096], sh[256];
	ssize_t r;
	int e;

	if (n > sizeof(buf))
		n = sizeof(buf);
	errno = 0;
	r = read(fd, buf, n);
	e = errno;
	if (r < 0)
		tr("read(%d,%zu) = -1 %s", fd, n, ename(e));
	else
		tr("read(%d,%zu) = %zd %s", fd, n, r, show(sh, sizeof(sh), buf, (size_t)r));
	errno = e;
	return r;
}

/* One traced recv with flags named in fl (text) and f. */
static ssize_t xrecv(int fd, size_t n, int f, const char *fl)
{
	char buf[4096], sh[256];
	ssize_t r;
	int e;

	if (n > sizeof(buf))
		n = sizeof(buf);
	errno = 0;
	r = recv(fd, buf, n, f);
	e = errno;
	if (r < 0)
		tr("recv(%d,%zu,%s) = -1 %s", fd, n, fl, ename(e));
	else
		tr("recv(%d,%zu,%s) = %zd %s", fd, n, fl, r,
		   (f & MSG_TRUNC) ? "(not copied)" : show(sh, sizeof(sh), buf, (size_t)r));
	errno = e;
	return r;
}

/*
 * Reads exactly n bytes (looping over short reads), then traces one line:
 * the total and the bytes, plus " EOF" or the errno if it ended early.
 * Returns the total.  buf may be NULL when n <= 4096.
 */
static size_t read_exact(int fd, void *out, size_t n)
{
	char local[4096], sh[256];
	char *buf = out ? out : local;
	size_t got = 0;
	ssize_t r = 1;
	int e = 0;

	if (!out && n > sizeof(local))
		fatal("read_exact: %zu too big", n);
	while (got < n) {
		r = read(fd, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			e = r < 0 ? errno : 0;
			break;
		}
		got += (size_t)r;
	}
	tr("read*(%d,%zu) = %zu %s%s%s", fd, n, got, show(sh, sizeof(sh), buf, got),
	   got < n ? " ended: " : "", got < n ? (r == 0 ? "EOF" : ename(e)) : "");
	return got;
}

/* Writes all n bytes (blocking, looping over short writes); one line. */
static size_t write_all(int fd, const void *p, size_t n, size_t chunk)
{
	const char *s = p;
	size_t put = 0;
	ssize_t r = 0;

	while (put < n) {
		size_t k = n - put < chunk ? n - put : chunk;
		r = write(fd, s + put, k);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		put += (size_t)r;
	}
	blocks[role].moved += put;
	tr("write*(%d,%zu) = %zu%s%s", fd, n, put, put < n ? " ended: " : "",
	   put < n ? ename(errno) : "");
	return put;
}

/* Traced poll of nfds entries; prints each entry's revents. */
static int xpoll(struct pollfd *p, int nfds, int timeout, const char *what)
{
	char ev[96];
	int n;

	for (int i = 0; i < nfds; i++)
		p[i].revents = 0;
	n = (int)CALL(poll(p, (nfds_t)nfds, timeout), "poll(%s,%d)", what, timeout);
	for (int i = 0; i < nfds && n >= 0; i++)
		tr("  fd %d revents %s", p[i].fd, evname(ev, sizeof(ev), (uint32_t)p[i].revents));
	return n;
}

/* Traced poll of one fd. */
static int poll1(int fd, short events, int timeout)
{
	struct pollfd p = { .fd = fd, .events = events };
	char ev[96], what[128];

	snprintf(what, sizeof(what), "%d:%s", fd, evname(ev, sizeof(ev), (uint32_t)events));
	return xpoll(&p, 1, timeout, what);
}

/* Traced epoll_wait; prints the events sorted by fd. */
static int ep_wait(int ep, int timeout)
{
	struct epoll_event e[8];
	char ev[96];
	int n;

	n = (int)CALL(epoll_wait(ep, e, 8, timeout), "epoll_wait(%d,%d)", ep, timeout);
	for (int i = 1; i < n; i++)	/* insertion sort by fd */
		for (int j = i; j > 0 && e[j].data.fd < e[j - 1].data.fd; j--) {
			struct epoll_event t = e[j];
			e[j] = e[j - 1];
			e[j - 1] = t;
		}
	for (int i = 0; i < n; i++)
		tr("  fd %d events %s", e[i].data.fd, evname(ev, sizeof(ev), e[i].events));
	return n;
}

static long ep_ctl(int ep, int op, int fd, uint32_t events, const char *evtext)
{
	struct epoll_event e = { .events = events, .data.fd = fd };
	static const char *const ops[] = { "?", "ADD", "DEL", "MOD" };

	return CALL(epoll_ctl(ep, op, fd, &e), "epoll_ctl(%d,%s,%d,%s)", ep,
		    ops[op >= 1 && op <= 3 ? op : 0], fd, evtext);
}

/* Traced F_GETFL, printing the flags that matter by name. */
static long getfl(int fd)
{
	long r = CALL(fcntl(fd, F_GETFL), "fcntl(%d,F_GETFL)", fd);

	if (r >= 0)
		tr("  -> %s%s", (r & O_ACCMODE) == O_RDWR ? "O_RDWR" : "acc?",
		   (r & O_NONBLOCK) ? "|O_NONBLOCK" : "");
	return r;
}

static long getfd(int fd)
{
	long r = CALL(fcntl(fd, F_GETFD), "fcntl(%d,F_GETFD)", fd);

	if (r >= 0)
		tr("  -> %s", (r & FD_CLOEXEC) ? "FD_CLOEXEC" : "0");
	return r;
}

static long setnonblock(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFL);

	return CALL(fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK),
		    "fcntl(%d,F_SETFL,%sO_NONBLOCK)", fd, on ? "+" : "-");
}

/* Traced getsockopt(SO_ERROR), printing the pending error by name. */
static long so_error(int fd)
{
	int v = -1;
	socklen_t len = sizeof(v);
	long r = CALL(getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &len),
		      "getsockopt(%d,SO_ERROR)", fd);

	if (r == 0)
		tr("  -> %s len=%u", ename(v), (unsigned)len);
	return r;
}

/* The byte at offset i of the bulk pattern. */
static inline unsigned char pat(uint64_t i)
{
	uint64_t x = (i >> 3) * 0x9e3779b97f4a7c15ULL;

	return (unsigned char)((x >> (8 * (i & 7))) ^ (x >> 40));
}

static void fill_pat(unsigned char *b, uint64_t off, size_t n)
{
	for (size_t i = 0; i < n; i++)
		b[i] = pat(off + i);
}

/* ------------------------------------------------------------------ */
/* Cases                                                              */

/* roundtrip: blocking connect/accept, write, read, reply, EOF. */
static void srv_roundtrip(void)
{
	int l = srv_listen(), s = srv_accept(l);

	read_exact(s, NULL, 17);
	xwrite(s, "reply: hello back");
	xread(s, 64);
	kclose(s);
	kclose(l);
}

static void cli_roundtrip(void)
{
	int c = cli_connect();

	xwrite(c, "hello from client");
	read_exact(c, NULL, 17);
	kclose(c);
}

/* server_first: the server writes a banner right after accept. */
static void srv_server_first(void)
{
	int l = srv_listen(), s = srv_accept(l);

	xwrite(s, "220 ubs ready\r\n");
	read_exact(s, NULL, 6);
	xwrite(s, "250 ok\r\n");
	xread(s, 64);
	kclose(s);
	kclose(l);
}

static void cli_server_first(void)
{
	int c = cli_connect();

	read_exact(c, NULL, 15);
	xwrite(c, "HELO\r\n");
	read_exact(c, NULL, 8);
	kclose(c);
}

/* bulk: 8 MiB client -> server, read in odd-sized chunks, checksummed. */
#define BULK_LEN (8u * MIB)

static void srv_bulk(void)
{
	static const size_t chunks[] = { 4093, 65521, 1, 131071, 777, 1000003 };
	int l = srv_listen(), s = srv_accept(l);
	unsigned char *buf = malloc(1000003), sh[64];
	uint64_t h = FNV_INIT, got = 0, bad = 0;
	ssize_t r = 0;

	if (!buf)
		fatal("malloc");
	for (size_t k = 0; got < BULK_LEN; k++) {
		size_t want = chunks[k % 6];
		if (want > BULK_LEN - got)
			want = BULK_LEN - got;
		r = read(s, buf, want);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		for (ssize_t i = 0; i < r; i++)
			bad += buf[i] != pat(got + (uint64_t)i);
		h = fnv(h, buf, (size_t)r);
		got += (uint64_t)r;
	}
	tr("read chunks(%d,%u) = %llu fnv=%016llx pattern %s%s", s, BULK_LEN,
	   (unsigned long long)got, (unsigned long long)h, bad ? "BAD" : "ok",
	   got < BULK_LEN ? (r == 0 ? " ended: EOF" : " ended: error") : "");
	memcpy(sh, &h, 8);
	r = CALL(write(s, sh, 8), "write(%d,fnv)", s);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	xread(s, 64);
	kclose(s);
	kclose(l);
	free(buf);
}

static void cli_bulk(void)
{
	unsigned char *buf = malloc(BULK_LEN);
	uint64_t h, back = 0;
	int c;

	if (!buf)
		fatal("malloc");
	fill_pat(buf, 0, BULK_LEN);
	h = fnv(FNV_INIT, buf, BULK_LEN);
	c = cli_connect();
	write_all(c, buf, BULK_LEN / 2, MIB);		/* 1 MiB writes */
	write_all(c, buf + BULK_LEN / 2, BULK_LEN / 2, 65536 + 12345);
	if (read_exact(c, &back, 8) == 8)
		tr("server's fnv %s mine", back == h ? "==" : "!=");
	kclose(c);
	free(buf);
}

/* readv_writev: scatter/gather, empty iovecs, iovcnt 0 and > IOV_MAX. */
static struct iovec big_iov[1025];

static void srv_readv_writev(void)
{
	char a[4], b[8], c[2000], sh1[64], sh2[64], sh3[64];
	struct iovec iov[3] = { { a, 4 }, { b, 8 }, { c, sizeof(c) } };
	struct iovec out[2] = { { "0123456789", 10 }, { "ABCDEFGHIJ", 10 } };
	int l = srv_listen(), s = srv_accept(l);
	long r;

	wait_bytes(s, 1011);
	r = CALL(readv(s, iov, 3), "readv(%d,[4,8,2000])", s);
	if (r == 1011)
		tr("  -> %s %s %s", show(sh1, sizeof(sh1), a, 4),
		   show(sh2, sizeof(sh2), b, 8), show(sh3, sizeof(sh3), c, 999));
	r = CALL(readv(s, iov, 0), "readv(%d,[],0)", s);
	xread(s, 0);
	xrecv(s, 0, MSG_DONTWAIT, "DONTWAIT");
	r = CALL(writev(s, out, 2), "writev(%d,[10,10])", s);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	xread(s, 64);
	kclose(s);
	kclose(l);
}

static void cli_readv_writev(void)
{
	static char pad[1000];
	char x[3], y[7], z[64], sh1[64], sh2[64], sh3[64];
	struct iovec iov[4] = { { "alpha-", 6 }, { "", 0 }, { "beta-", 5 },
				{ pad, sizeof(pad) } };
	struct iovec in[4] = { { x, 3 }, { NULL, 0 }, { y, 7 }, { z, sizeof(z) } };
	int c = cli_connect();
	long r;

	fill_pat((unsigned char *)pad, 0, sizeof(pad));
	r = CALL(writev(c, iov, 4), "writev(%d,[6,0,5,1000])", c);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	CALL(writev(c, iov, 0), "writev(%d,[],0)", c);
	xwrite(c, "");
	for (int i = 0; i < 1025; i++)
		big_iov[i] = (struct iovec){ pad, 1 };
	CALL(writev(c, big_iov, 1025), "writev(%d,[1x1025],1025)", c);
	wait_bytes(c, 20);
	r = CALL(readv(c, in, 4), "readv(%d,[3,0,7,64])", c);
	if (r == 20)
		tr("  -> %s %s %s", show(sh1, sizeof(sh1), x, 3),
		   show(sh2, sizeof(sh2), y, 7), show(sh3, sizeof(sh3), z, 10));
	kclose(c);
}

/* recv_flags: MSG_PEEK, MSG_WAITALL, MSG_DONTWAIT (EAGAIN on empty). */
static void srv_recv_flags(void)
{
	int l = srv_listen(), s = srv_accept(l);

	xrecv(s, 16, MSG_DONTWAIT, "DONTWAIT");
	tell('G');
	wait_bytes(s, 19);
	xrecv(s, 8, MSG_PEEK, "PEEK");
	xrecv(s, 64, MSG_PEEK, "PEEK");
	xrecv(s, 4, 0, "0");
	xrecv(s, 15, MSG_WAITALL, "WAITALL");
	xrecv(s, 16, MSG_DONTWAIT, "DONTWAIT");
	xrecv(s, 16, MSG_PEEK | MSG_DONTWAIT, "PEEK|DONTWAIT");
	tell('W');		/* the client sends 10, waits, sends 10 */
	xrecv(s, 20, MSG_WAITALL, "WAITALL");
	tell('T');
	wait_bytes(s, 12);
	xrecv(s, 5, MSG_TRUNC, "TRUNC");
	xrecv(s, 64, 0, "0");
	xrecv(s, 64, MSG_WAITALL, "WAITALL");	/* EOF: returns 0 */
	kclose(s);
	kclose(l);
}

static void cli_recv_flags(void)
{
	int c = cli_connect();

	hear('G');
	xwrite(c, "peekaboo-0123456789");
	hear('W');
	xwrite(c, "0123456789");
	sleep_ms(50);
	xwrite(c, "abcdefghij");
	hear('T');
	xwrite(c, "skip-me|kept");
	kclose(c);
}

/* sendto_sendmsg: sendto with NULL/peer address, sendmsg, recvfrom, recvmsg. */
static void tr_msg(const struct msghdr *m)
{
	tr("  -> namelen=%u controllen=%zu flags=0x%x", (unsigned)m->msg_namelen,
	   m->msg_controllen, (unsigned)m->msg_flags);
}

static void srv_sendto_sendmsg(void)
{
	char b1[16], b2[16], x[3], y[10], ctl[64], sh[64], sh2[64];
	struct sockaddr_in from;
	socklen_t flen = sizeof(from);
	struct iovec in[2] = { { x, 3 }, { y, 10 } };
	struct msghdr m = { .msg_name = &from, .msg_namelen = sizeof(from),
			    .msg_iov = in, .msg_iovlen = 2,
			    .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	struct iovec out = { "reply-12345!", 12 };
	struct msghdr mo = { .msg_iov = &out, .msg_iovlen = 1 };
	int l = srv_listen(), s = srv_accept(l);
	long r;

	hear('S');
	wait_bytes(s, 23);
	r = CALL(recvfrom(s, b1, 7, 0, NULL, NULL), "recvfrom(%d,7,0,NULL,NULL)", s);
	if (r > 0)
		tr("  -> %s", show(sh, sizeof(sh), b1, (size_t)r));
	r = CALL(recvfrom(s, b2, 9, 0, (struct sockaddr *)&from, &flen),
		 "recvfrom(%d,9,0,&addr,&len)", s);
	if (r > 0)
		tr("  -> %s addrlen=%u", show(sh, sizeof(sh), b2, (size_t)r), (unsigned)flen);
	r = CALL(recvmsg(s, &m, 0), "recvmsg(%d,[3,10],name,control)", s);
	if (r > 0) {
		tr("  -> %s %s", show(sh, sizeof(sh), x, 3),
		   show(sh2, sizeof(sh2), y, (size_t)r - 3));
		tr_msg(&m);
	}
	r = CALL(sendmsg(s, &mo, MSG_NOSIGNAL), "sendmsg(%d,[12],NOSIGNAL)", s);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	tell('R');
	xread(s, 64);
	kclose(s);
	kclose(l);
}

static void cli_sendto_sendmsg(void)
{
	char b[16], x[4], y[16], ctl[64], sh[64], sh2[64];
	struct sockaddr_in to, from;
	socklen_t flen = sizeof(from);
	struct iovec out[2] = { { "msg-", 4 }, { "one", 3 } };
	struct msghdr mo = { .msg_iov = out, .msg_iovlen = 2 };
	struct iovec in[2] = { { x, 4 }, { y, 16 } };
	struct msghdr m = { .msg_name = &from, .msg_namelen = sizeof(from),
			    .msg_iov = in, .msg_iovlen = 2,
			    .msg_control = ctl, .msg_controllen = sizeof(ctl) };
	int c = cli_connect();
	long r;

	to = loopback(srv_port());
	r = CALL(sendto(c, "to-null", 7, 0, NULL, 0), "sendto(%d,\"to-null\",0,NULL)", c);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	r = CALL(sendto(c, "to-server", 9, 0, (struct sockaddr *)&to, sizeof(to)),
		 "sendto(%d,\"to-server\",0,&peer)", c);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	r = CALL(sendmsg(c, &mo, 0), "sendmsg(%d,[4,3],0)", c);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	tell('S');
	hear('R');
	wait_bytes(c, 12);
	r = CALL(recvfrom(c, b, 5, 0, (struct sockaddr *)&from, &flen),
		 "recvfrom(%d,5,0,&addr,&len)", c);
	if (r > 0)
		tr("  -> %s addrlen=%u", show(sh, sizeof(sh), b, (size_t)r), (unsigned)flen);
	r = CALL(recvmsg(c, &m, MSG_DONTWAIT), "recvmsg(%d,[4,16],DONTWAIT)", c);
	if (r > 0) {
		tr("  -> %s %s", show(sh, sizeof(sh), x, r < 4 ? (size_t)r : 4),
		   show(sh2, sizeof(sh2), y, r > 4 ? (size_t)r - 4 : 0));
		tr_msg(&m);
	}
	m.msg_namelen = sizeof(from);
	m.msg_controllen = sizeof(ctl);
	r = CALL(recvmsg(c, &m, MSG_DONTWAIT), "recvmsg(%d,[4,16],DONTWAIT)", c);
	kclose(c);
}

/* nonblock_connect: EINPROGRESS, POLLOUT, SO_ERROR 0, EISCONN. */
static void srv_nonblock_connect(void)
{
	int l = srv_listen(), s = srv_accept(l);

	read_exact(s, NULL, 8);
	xwrite(s, "nb-ok");
	xread(s, 64);
	kclose(s);
	kclose(l);
}

static void cli_nonblock_connect(void)
{
	int c;

	srv_port();
	c = (int)CALL(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0),
		      "socket(INET,STREAM|NONBLOCK)");
	cli_connect_fd(c);
	poll1(c, POLLOUT, WAIT_MS);
	so_error(c);
	cli_connect_fd(c);
	getfl(c);
	xwrite(c, "nb-hello");
	wait_bytes(c, 5);
	xread(c, 64);
	xread(c, 64);
	kclose(c);
}

/* accept4_flags: accept4 NONBLOCK|CLOEXEC; accept of a non-blocking listener. */
static void srv_accept4_flags(void)
{
	int l = srv_listen(), s1, s2;

	s1 = (int)CALL(accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC),
		       "accept4(%d,NONBLOCK|CLOEXEC)", l);
	getfl(s1);
	getfd(s1);
	setnonblock(l, true);
	CALL(accept(l, NULL, NULL), "accept(%d)", l);		/* EAGAIN */
	tell('2');
	poll1(l, POLLIN, WAIT_MS);
	s2 = (int)CALL(accept(l, NULL, NULL), "accept(%d)", l);
	getfl(s2);
	getfd(s2);
	wait_bytes(s1, 3);
	xread(s1, 16);
	read_exact(s2, NULL, 3);
	xwrite(s1, "ok1");
	xwrite(s2, "ok2");
	setnonblock(s1, false);
	xread(s1, 16);
	xread(s2, 16);
	kclose(s2);
	kclose(s1);
	kclose(l);
}

static void cli_accept4_flags(void)
{
	int c1 = cli_connect(), c2;

	xwrite(c1, "c-1");
	hear('2');
	c2 = cli_connect();
	xwrite(c2, "c-2");
	read_exact(c1, NULL, 3);
	read_exact(c2, NULL, 3);
	kclose(c1);
	kclose(c2);
}

/* fill_eagain: fill a non-blocking socket until EAGAIN; drain; continue. */
static void srv_fill_eagain(void)
{
	int l = srv_listen(), s = srv_accept(l);
	static unsigned char buf[65536];
	uint64_t n, got = 0, bad = 0;
	ssize_t r = 0;

	n = hear_u64();
	while (got < n + 3) {
		r = read(s, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		for (ssize_t i = 0; i < r; i++) {
			uint64_t off = got + (uint64_t)i;
			unsigned char want = off < n ? pat(off) : (unsigned char)"END"[off - n];
			bad += buf[i] != want;
		}
		got += (uint64_t)r;
	}
	tr("read all(%d, filled+3) = %s pattern %s", s,
	   got == n + 3 ? "filled+3" : got < n + 3 ? "short" : "more", bad ? "BAD" : "ok");
	xwrite(s, "done");
	xread(s, 64);
	kclose(s);
	kclose(l);
}

static void cli_fill_eagain(void)
{
	static unsigned char buf[65536];
	uint64_t filled = 0;
	ssize_t r;
	int c = cli_connect(), e;

	getfl(c);
	setnonblock(c, true);
	getfl(c);
	for (;;) {
		fill_pat(buf, filled, sizeof(buf));
		r = write(c, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || filled > 512ull * MIB)
			break;
		filled += (uint64_t)r;
	}
	e = errno;
	blocks[role].moved += filled;
	if (r < 0)
		tr("write loop(%d,65536) until error: filled%s, then -1 %s", c,
		   filled ? ">0" : "=0", ename(e));
	else
		tr("write loop(%d,65536): never EAGAIN (filled > 512 MiB)", c);
	tell_u64(filled);
	poll1(c, POLLOUT, WAIT_MS);
	xwrite(c, "END");
	setnonblock(c, false);
	read_exact(c, NULL, 4);
	kclose(c);
}

/* half_close: shutdown(SHUT_WR): the reader sees EOF and can still write back. */
static void srv_half_close(void)
{
	int l = srv_listen(), s = srv_accept(l);

	read_exact(s, NULL, 7);
	xread(s, 64);
	xread(s, 64);
	poll1(s, POLLIN | POLLOUT | POLLRDHUP, 0);
	xwrite(s, "response");
	CALL(shutdown(s, SHUT_WR), "shutdown(%d,SHUT_WR)", s);
	poll1(s, POLLIN | POLLOUT | POLLRDHUP, 0);
	hear('D');
	kclose(s);
	kclose(l);
}

static void cli_half_close(void)
{
	int c = cli_connect();

	xwrite(c, "request");
	CALL(shutdown(c, SHUT_WR), "shutdown(%d,SHUT_WR)", c);
	xwrite(c, "x");		/* EPIPE (SIGPIPE is ignored) */
	read_exact(c, NULL, 8);
	xread(c, 64);
	CALL(shutdown(c, SHUT_RD), "shutdown(%d,SHUT_RD)", c);
	xread(c, 64);
	tell('D');
	kclose(c);
}

/* close_remaining: after the peer's close, the rest of the bytes, then 0. */
static void srv_close_remaining(void)
{
	int l = srv_listen(), s = srv_accept(l);

	hear('C');
	wait_event(s, POLLRDHUP);
	while (xread(s, 7) > 0)
		;
	xread(s, 7);
	kclose(s);
	kclose(l);
}

static void cli_close_remaining(void)
{
	int c = cli_connect();

	xwrite(c, "first|");
	xwrite(c, "second|");
	xwrite(c, "third|");
	kclose(c);
	tell('C');
}

/* The server waits for connections on l (a non-blocking accept: EAGAIN;
 * or, by_poll, a poll of it that finds none), as a server's event loop
 * does before its first client: a preloaded one names its board for l
 * from then on.  Then the client may connect. */
static void srv_waits_how(int l, bool by_poll)
{
	if (by_poll) {
		poll1(l, POLLIN, 0);
	} else {
		setnonblock(l, true);
		CALL(accept(l, NULL, NULL), "accept(%d)", l);
		setnonblock(l, false);
	}
	tell('R');
}

static void srv_waits(int l)
{
	srv_waits_how(l, false);
}

/* late_accept: the client writes before the server accepts (on the board
 * its bytes wait in the ring; through ubsd the client's wait for its
 * channel times out: TCP), then the server accepts, reads and answers. */
static void srv_late_accept(void)
{
	int l = srv_listen(), s;

	srv_waits_how(l, true);         /* the board's only if poll says */
	hear('W');
	s = srv_accept(l);
	xread(s, 16);
	xwrite(s, "world");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_late_accept(void)
{
	int c;

	srv_port();			/* told after listen() */
	hear('R');
	c = cli_connect();
	xwrite(c, "hello");
	tell('W');
	xread(c, 16);
	kclose(c);
}

/* late_accept_close: the client writes and closes before the server
 * accepts: the server still reads every byte, then EOF (on the board the
 * client takes its channel back at close and sends its bytes over TCP). */
static void srv_late_accept_close(void)
{
	int l = srv_listen(), s;

	srv_waits(l);
	hear('C');
	s = srv_accept(l);
	wait_event(s, POLLRDHUP);
	while (xread(s, 4) > 0)
		;
	kclose(s);
	kclose(l);
}

static void cli_late_accept_close(void)
{
	int c;

	srv_port();			/* told after listen() */
	hear('R');
	c = cli_connect();
	xwrite(c, "first|");
	xwrite(c, "second");
	kclose(c);
	tell('C');
}

/* raw_accept: the server accepts, reads and writes with raw syscalls,
 * past the library (as a process without it would): the client's post on
 * the board is never taken, and after its deadline the client sends its
 * bytes over the kernel socket (through ubsd the client's wait for its
 * channel times out instead); the exchange completes on TCP either way. */
static void srv_raw_accept(void)
{
	int l = srv_listen(), s;
	char buf[16];
	long n;

	srv_waits(l);
	s = (int)CALL(syscall(SYS_accept4, l, NULL, NULL, 0),
		      "raw accept4(%d)", l);
	n = CALL(syscall(SYS_read, s, buf, sizeof(buf)), "raw read(%d)", s);
	if (n > 0)
		tr("  \"%.*s\"", (int)n, buf);
	CALL(syscall(SYS_write, s, "world", 5), "raw write(%d)", s);
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_raw_accept(void)
{
	int c;

	srv_port();			/* told after listen() */
	hear('R');
	c = cli_connect();
	xwrite(c, "hello");
	xread(c, 16);
	kclose(c);
}

/* other_uid_accept: the listener is registered by this uid's process
 * (root), so the client posts on root's board; a child that became
 * another uid accepts (its library looks at its own uid's board, finds
 * nothing, and goes through ubsd, which takes the post back for the
 * client at once: TCP, not the client's deadline).  Through ubsd alone
 * (UBS_BOARD=0) the client's wait for its channel ends first (the child
 * accepts only after the client's write): TCP.  As root the child
 * becomes nobody; otherwise it keeps the uid (and meets on the board). */
static void srv_other_uid_accept(void)
{
	int l = srv_listen(), st = 0;
	pid_t pid;

	srv_waits(l);
	hear('W');
	pid = fork();
	if (pid < 0)
		fatal("fork: %s", ename(errno));
	if (pid == 0) {
		int s;

		role = R_CHILD;
		blocks[role].used = 1;
		alarm(ALARM_S);
		if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
			fatal("setuid: %s", ename(errno));
		s = srv_accept(l);
		read_exact(s, NULL, 5);
		xwrite(s, "world");
		xread(s, 16);
		kclose(s);
		kclose(l);
		finish(0);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	tr("child exit %d", WIFEXITED(st) ? WEXITSTATUS(st) :
	   128 + WTERMSIG(st));
	kclose(l);
}

static void cli_other_uid_accept(void)
{
	int c;

	srv_port();			/* told after listen() */
	hear('R');
	c = cli_connect();
	xwrite(c, "hello");
	tell('W');
	read_exact(c, NULL, 5);
	kclose(c);
}

/* board_full: four connections held open together, an exchange on each;
 * the suite runs it with a board of two slots: the last two connections
 * go through ubsd, UB all the same. */
static void srv_board_full(void)
{
	int l = srv_listen(), s[4];

	for (int i = 0; i < 4; i++)
		s[i] = srv_accept(l);
	for (int i = 0; i < 4; i++) {
		read_exact(s[i], NULL, 4);
		xwrite(s[i], "pong");
	}
	for (int i = 0; i < 4; i++) {
		xread(s[i], 16);
		kclose(s[i]);
	}
	kclose(l);
}

static void cli_board_full(void)
{
	int c[4];

	for (int i = 0; i < 4; i++)
		c[i] = cli_connect();
	for (int i = 0; i < 4; i++) {
		xwrite(c[i], "ping");
		read_exact(c[i], NULL, 4);
	}
	for (int i = 0; i < 4; i++)
		kclose(c[i]);
}

/* peer_reset: writing to a peer that closed: RST, POLLHUP, EPIPE. */
static void srv_peer_reset(void)
{
	int l = srv_listen(), s = srv_accept(l);

	hear('C');
	wait_event(s, POLLRDHUP);
	xread(s, 16);
	xwrite(s, "late");
	wait_event(s, POLLHUP | POLLERR);
	poll1(s, POLLIN | POLLOUT | POLLRDHUP, 0);
	so_error(s);
	xwrite(s, "later");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_peer_reset(void)
{
	int c = cli_connect();

	kclose(c);
	tell('C');
}

/* peer_killed: the peer dies (SIGKILL) with unread bytes: ECONNRESET, then 0. */
static void srv_peer_killed(void)
{
	int l = srv_listen(), s = srv_accept(l);

	client_may_die = true;
	read_exact(s, NULL, 5);
	xwrite(s, "never read");
	tell('K');		/* the client kills itself */
	wait_event(s, POLLERR | POLLHUP);
	poll1(s, POLLIN | POLLOUT | POLLRDHUP, 0);
	xread(s, 16);
	xread(s, 16);
	xwrite(s, "x");
	kclose(s);
	kclose(l);
}

static void cli_peer_killed(void)
{
	int c = cli_connect();

	xwrite(c, "hello");
	hear('K');
	wait_bytes(c, 10);
	raise(SIGKILL);
}

/* poll_select: poll, ppoll, select and pselect over the socket and a pipe. */
static void tr_sets(int n, fd_set *r, fd_set *w, int s, int p)
{
	if (n >= 0)
		tr("  -> r:%s%s w:%s%s", FD_ISSET(s, r) ? " sock" : "",
		   FD_ISSET(p, r) ? " pipe" : "", w && FD_ISSET(s, w) ? " sock" : "",
		   w && FD_ISSET(p, w) ? " pipe" : "");
}

static void srv_poll_select(void)
{
	int l = srv_listen(), s = srv_accept(l), p[2];
	struct pollfd pf[2];
	struct timeval tv;
	struct timespec ts = { 0, 0 };
	fd_set rs, ws;
	int n;

	CALL(pipe(p), "pipe");
	tr("  -> %d %d", p[0], p[1]);
	pf[0] = (struct pollfd){ .fd = s, .events = POLLIN };
	pf[1] = (struct pollfd){ .fd = p[0], .events = POLLIN };
	xpoll(pf, 2, 0, "sock:IN,pipe:IN");
	tell('G');		/* the client writes "x" 50 ms later */
	xpoll(pf, 2, WAIT_MS, "sock:IN,pipe:IN");
	CALL(write(p[1], "p", 1), "write(pipe,\"p\")");
	xpoll(pf, 2, 0, "sock:IN,pipe:IN");
	FD_ZERO(&rs);
	FD_ZERO(&ws);
	FD_SET(s, &rs);
	FD_SET(p[0], &rs);
	FD_SET(s, &ws);
	tv = (struct timeval){ 0, 0 };
	n = (int)CALL(select((s > p[0] ? s : p[0]) + 1, &rs, &ws, NULL, &tv),
		      "select(r:sock,pipe w:sock,0)");
	tr_sets(n, &rs, &ws, s, p[0]);
	xread(s, 16);
	xread(p[0], 16);
	poll1(s, POLLIN | POLLOUT, 0);
	FD_ZERO(&rs);
	FD_SET(s, &rs);
	FD_SET(p[0], &rs);
	tv = (struct timeval){ 0, 0 };
	n = (int)CALL(select((s > p[0] ? s : p[0]) + 1, &rs, NULL, NULL, &tv),
		      "select(r:sock,pipe,0)");
	tr_sets(n, &rs, NULL, s, p[0]);
	tell('H');		/* the client writes "y" 50 ms later */
	FD_ZERO(&rs);
	FD_SET(s, &rs);
	FD_SET(p[0], &rs);
	tv = (struct timeval){ WAIT_MS / 1000, 0 };
	n = (int)CALL(select((s > p[0] ? s : p[0]) + 1, &rs, NULL, NULL, &tv),
		      "select(r:sock,pipe,5s)");
	tr_sets(n, &rs, NULL, s, p[0]);
	wait_bytes(s, 1);
	pf[0].revents = 0;
	n = (int)CALL(ppoll(pf, 1, &ts, NULL), "ppoll(sock:IN,0)");
	if (n >= 0)
		tr("  fd %d revents %s", s, pf[0].revents == POLLIN ? "IN" : "other");
	xread(s, 16);
	FD_ZERO(&rs);
	FD_SET(s, &rs);
	n = (int)CALL(pselect(s + 1, &rs, NULL, NULL, &ts, NULL), "pselect(r:sock,0)");
	tell('E');		/* the client closes */
	poll1(s, POLLIN | POLLRDHUP, WAIT_MS);
	xread(s, 16);
	CALL(close(p[0]), "close(pipe r)");
	CALL(close(p[1]), "close(pipe w)");
	kclose(s);
	kclose(l);
}

static void cli_poll_select(void)
{
	int c = cli_connect();

	hear('G');
	sleep_ms(50);
	xwrite(c, "x");
	hear('H');
	sleep_ms(50);
	xwrite(c, "y");
	hear('E');
	kclose(c);
}

/* epoll_lt: level-triggered EPOLLIN/EPOLLOUT, ADD/MOD/DEL errors. */
static void srv_epoll_lt(void)
{
	int l = srv_listen(), s = srv_accept(l), ep;

	ep = (int)CALL(epoll_create1(EPOLL_CLOEXEC), "epoll_create1(CLOEXEC)");
	ep_ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, "IN");
	ep_ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN, "IN");		/* EEXIST */
	ep_wait(ep, 0);
	tell('G');		/* 10 bytes, 50 ms later */
	ep_wait(ep, WAIT_MS);
	wait_bytes(s, 10);
	ep_wait(ep, 0);
	xread(s, 4);
	ep_wait(ep, 0);
	xread(s, 6);
	ep_wait(ep, 0);
	ep_ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLOUT, "IN|OUT");
	ep_wait(ep, 0);
	ep_ctl(ep, EPOLL_CTL_DEL, s, 0, "0");
	ep_ctl(ep, EPOLL_CTL_DEL, s, 0, "0");			/* ENOENT */
	ep_ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN, "IN");		/* ENOENT */
	ep_wait(ep, 0);
	ep_ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLRDHUP, "IN|RDHUP");
	tell('D');		/* the client closes */
	ep_wait(ep, WAIT_MS);
	xread(s, 16);
	ep_wait(ep, 0);
	CALL(close(ep), "close(%d)", ep);
	kclose(s);
	kclose(l);
}

static void cli_epoll_lt(void)
{
	int c = cli_connect();

	hear('G');
	sleep_ms(50);
	xwrite(c, "0123456789");
	hear('D');
	kclose(c);
}

/* epoll_et: edge-triggered: one event per new arrival. */
static void srv_epoll_et(void)
{
	int l = srv_listen(), s = srv_accept(l), ep;

	setnonblock(s, true);
	ep = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	ep_ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLET, "IN|ET");
	ep_wait(ep, 0);
	tell('A');
	ep_wait(ep, WAIT_MS);
	ep_wait(ep, 0);
	tell('B');
	ep_wait(ep, WAIT_MS);
	ep_wait(ep, 0);
	wait_bytes(s, 2);
	xread(s, 16);
	xread(s, 16);			/* EAGAIN */
	ep_wait(ep, 0);
	ep_ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLOUT | EPOLLET, "IN|OUT|ET");
	ep_wait(ep, 0);
	ep_wait(ep, 0);
	tell('C');
	ep_wait(ep, WAIT_MS);
	ep_wait(ep, 0);
	wait_bytes(s, 1);
	xread(s, 16);
	tell('D');		/* the client closes */
	ep_wait(ep, WAIT_MS);
	xread(s, 16);
	CALL(close(ep), "close(%d)", ep);
	kclose(s);
	kclose(l);
}

static void cli_epoll_et(void)
{
	int c = cli_connect();

	hear('A');
	xwrite(c, "a");
	hear('B');
	xwrite(c, "b");
	hear('C');
	xwrite(c, "c");
	hear('D');
	kclose(c);
}

/* epoll_oneshot: EPOLLONESHOT disarms; EPOLL_CTL_MOD re-arms. */
static void srv_epoll_oneshot(void)
{
	int l = srv_listen(), s = srv_accept(l), ep;

	ep = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	ep_ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLONESHOT, "IN|ONESHOT");
	tell('1');
	ep_wait(ep, WAIT_MS);
	ep_wait(ep, 0);
	tell('2');
	wait_bytes(s, 2);
	ep_wait(ep, 0);
	ep_ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLONESHOT, "IN|ONESHOT");
	ep_wait(ep, 0);
	ep_wait(ep, 0);
	xread(s, 16);
	ep_ctl(ep, EPOLL_CTL_MOD, s, EPOLLIN | EPOLLONESHOT, "IN|ONESHOT");
	ep_wait(ep, 0);
	tell('3');
	ep_wait(ep, WAIT_MS);
	ep_wait(ep, 0);
	xread(s, 16);
	CALL(close(ep), "close(%d)", ep);
	tell('D');
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_epoll_oneshot(void)
{
	int c = cli_connect();

	hear('1');
	xwrite(c, "1");
	hear('2');
	xwrite(c, "2");
	hear('3');
	xwrite(c, "3");
	hear('D');
	kclose(c);
}

/* epoll_rdhup: EPOLLRDHUP after the peer's shutdown, EPOLLHUP after ours. */
static void srv_epoll_rdhup(void)
{
	int l = srv_listen(), s = srv_accept(l), ep;

	ep = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	ep_ctl(ep, EPOLL_CTL_ADD, s, EPOLLIN | EPOLLRDHUP, "IN|RDHUP");
	ep_wait(ep, 0);
	tell('S');
	hear('s');
	wait_event(s, POLLRDHUP);
	ep_wait(ep, 0);
	read_exact(s, NULL, 3);
	xread(s, 16);
	ep_wait(ep, 0);
	CALL(shutdown(s, SHUT_WR), "shutdown(%d,SHUT_WR)", s);
	ep_wait(ep, 0);
	poll1(s, POLLIN | POLLOUT | POLLRDHUP, 0);
	tell('E');
	hear('e');
	CALL(close(ep), "close(%d)", ep);
	kclose(s);
	kclose(l);
}

static void cli_epoll_rdhup(void)
{
	int c = cli_connect();

	hear('S');
	xwrite(c, "bye");
	CALL(shutdown(c, SHUT_WR), "shutdown(%d,SHUT_WR)", c);
	tell('s');
	hear('E');
	wait_event(c, POLLRDHUP);
	poll1(c, POLLIN | POLLOUT | POLLRDHUP, 0);
	xread(c, 16);
	tell('e');
	kclose(c);
}

/* fionread: FIONREAD (SIOCINQ) on the listener, before and after data. */
static long fionread(int fd)
{
	int v = -1;
	long r = CALL(ioctl(fd, FIONREAD, &v), "ioctl(%d,FIONREAD)", fd);

	if (r == 0)
		tr("  -> %d", v);
	return r;
}

static void srv_fionread(void)
{
	int l = srv_listen(), s = srv_accept(l);

	fionread(l);
	fionread(s);
	tell('W');
	hear('w');
	wait_bytes(s, 100);
	fionread(s);
	read_exact(s, NULL, 30);
	fionread(s);
	read_exact(s, NULL, 70);
	fionread(s);
	tell('D');
	wait_event(s, POLLRDHUP);
	fionread(s);
	kclose(s);
	kclose(l);
}

static void cli_fionread(void)
{
	char msg[101];
	int c = cli_connect();

	for (int i = 0; i < 100; i++)
		msg[i] = (char)('a' + i % 26);
	msg[100] = '\0';
	hear('W');
	xwrite(c, msg);
	tell('w');
	hear('D');
	kclose(c);
}

/* names: getsockname/getpeername (family, address, which ports match). */
static void tr_name(const char *call, int fd, long r, const struct sockaddr_in *a,
		    socklen_t len, uint16_t p1, const char *n1, uint16_t p2, const char *n2)
{
	char ip[INET_ADDRSTRLEN] = "?";

	(void)fd;
	if (r != 0)
		return;
	inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
	tr("  -> %s %s len=%u port%s%s%s", a->sin_family == AF_INET ? "AF_INET" : "family?",
	   ip, (unsigned)len, ntohs(a->sin_port) == p1 ? " ==" : " !=", n1,
	   p2 ? (ntohs(a->sin_port) == p2 ? " ==" : " !=") : "");
	if (p2)
		tr("     %s", n2);
	(void)call;
}

static void srv_names(void)
{
	struct sockaddr_in a;
	socklen_t len;
	uint16_t cport;
	long r;
	int l = srv_listen(), s;

	len = sizeof(a);
	r = CALL(getsockname(l, (struct sockaddr *)&a, &len), "getsockname(%d)", l);
	tr_name("getsockname", l, r, &a, len, port, "listen", 0, NULL);
	len = sizeof(a);
	CALL(getpeername(l, (struct sockaddr *)&a, &len), "getpeername(%d)", l);
	len = sizeof(a);
	memset(&a, 0, sizeof(a));
	s = (int)CALL(accept(l, (struct sockaddr *)&a, &len), "accept(%d,&addr,&len)", l);
	cport = (uint16_t)hear_u64();
	tr_name("accept", s, s >= 0 ? 0 : -1, &a, len, cport, "client's local", 0, NULL);
	len = sizeof(a);
	r = CALL(getsockname(s, (struct sockaddr *)&a, &len), "getsockname(%d)", s);
	tr_name("getsockname", s, r, &a, len, port, "listen", 0, NULL);
	len = sizeof(a);
	r = CALL(getpeername(s, (struct sockaddr *)&a, &len), "getpeername(%d)", s);
	tr_name("getpeername", s, r, &a, len, cport, "client's local", 0, NULL);
	len = 4;		/* too small: truncated, len says the real size */
	memset(&a, 0, sizeof(a));
	r = CALL(getpeername(s, (struct sockaddr *)&a, &len), "getpeername(%d,len=4)", s);
	if (r == 0)
		tr("  -> len=%u family %s port %s", (unsigned)len,
		   a.sin_family == AF_INET ? "AF_INET" : "?", a.sin_port ? "set" : "untouched");
	tell('D');
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_names(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int c, u;
	long r;

	srv_port();
	u = (int)CALL(socket(AF_INET, SOCK_STREAM, 0), "socket(INET,STREAM)");
	CALL(getpeername(u, (struct sockaddr *)&a, &len), "getpeername(%d)", u);
	len = sizeof(a);
	r = CALL(getsockname(u, (struct sockaddr *)&a, &len), "getsockname(%d)", u);
	if (r == 0)
		tr("  -> %s len=%u port %s", a.sin_family == AF_INET ? "AF_INET" : "?",
		   (unsigned)len, a.sin_port ? "set" : "0");
	CALL(close(u), "close(%d)", u);
	c = cli_connect();
	len = sizeof(a);
	r = CALL(getsockname(c, (struct sockaddr *)&a, &len), "getsockname(%d)", c);
	if (r == 0) {
		tr_name("getsockname", c, r, &a, len, port, "listen", 0, NULL);
		tell_u64(ntohs(a.sin_port));
	} else {
		tell_u64(0);
	}
	len = sizeof(a);
	r = CALL(getpeername(c, (struct sockaddr *)&a, &len), "getpeername(%d)", c);
	tr_name("getpeername", c, r, &a, len, port, "listen", 0, NULL);
	hear('D');
	kclose(c);
}

/* fork_shared: parent and child both hold the socket; EOF after both close. */
static void srv_fork_shared(void)
{
	int l = srv_listen(), s = srv_accept(l);

	xwrite(s, "ping");
	hear('P');
	read_exact(s, NULL, 11);
	xrecv(s, 16, MSG_DONTWAIT, "DONTWAIT");
	tell('C');		/* the client (last holder) closes */
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_fork_shared(void)
{
	int c = cli_connect(), st = 0;
	pid_t pid;

	pid = fork();
	if (pid < 0)
		fatal("fork: %s", ename(errno));
	if (pid == 0) {
		role = R_CHILD;
		blocks[role].used = 1;
		alarm(ALARM_S);
		read_exact(c, NULL, 4);
		xwrite(c, "child");
		kclose(c);
		finish(0);
	}
	tr("fork = child");
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	tr("child exit %d", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
	xwrite(c, "parent");
	tell('P');
	hear('C');
	kclose(c);
}

/* fork_handoff: a pre-fork server: accept, fork, the parent closes its
 * copy at once (before the child runs), the child talks; the connection
 * lives on in the child. */
static void srv_fork_handoff(void)
{
	int l = srv_listen(), s = srv_accept(l), go[2], st = 0;
	pid_t pid;
	char c;

	if (pipe(go) < 0)
		fatal("pipe: %s", ename(errno));
	pid = fork();
	if (pid < 0)
		fatal("fork: %s", ename(errno));
	if (pid == 0) {
		role = R_CHILD;
		blocks[role].used = 1;
		alarm(ALARM_S);
		kclose(l);
		if (read(go[0], &c, 1) != 1)    /* the parent has closed */
			fatal("go: %s", ename(errno));
		read_exact(s, NULL, 5);
		xwrite(s, "echo");
		kclose(s);
		finish(0);
	}
	kclose(s);
	if (write(go[1], "g", 1) != 1)
		fatal("go: %s", ename(errno));
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	tr("child exit %d", WIFEXITED(st) ? WEXITSTATUS(st) :
	   128 + WTERMSIG(st));
	close(go[0]);
	close(go[1]);
	tell('D');
	kclose(l);
}

static void cli_fork_handoff(void)
{
	int c = cli_connect();

	xwrite(c, "hello");
	read_exact(c, NULL, 4);
	xread(c, 16);			/* EOF: the child, last holder, closed */
	hear('D');
	kclose(c);
}

/* dup_fds: dup, dup2 (also over another connection), F_DUPFD_CLOEXEC. */
static void srv_dup_fds(void)
{
	int l = srv_listen(), s1 = srv_accept(l), s2 = srv_accept(l);

	hear('W');
	read_exact(s1, NULL, 6);
	xread(s2, 16);			/* EOF: the client dup2'd over c2 */
	xwrite(s1, "xyz");
	xread(s1, 16);			/* EOF once every copy is closed */
	kclose(s2);
	kclose(s1);
	kclose(l);
}

static void cli_dup_fds(void)
{
	int c1 = cli_connect(), c2 = cli_connect(), d;

	d = (int)CALL(dup(c1), "dup(%d)", c1);
	CALL(dup2(c1, 10), "dup2(%d,10)", c1);
	CALL(fcntl(c1, F_DUPFD_CLOEXEC, 20), "fcntl(%d,F_DUPFD_CLOEXEC,20)", c1);
	CALL(dup2(c1, c1), "dup2(%d,%d)", c1, c1);
	CALL(dup3(c1, c1, 0), "dup3(%d,%d,0)", c1, c1);
	getfd(20);
	getfd(10);
	xwrite(c1, "a");
	xwrite(d, "b");
	xwrite(10, "c");
	xwrite(20, "d");
	kclose(c1);
	xwrite(10, "e");
	xwrite(c1, "z");		/* EBADF */
	kinfo(c2);
	CALL(dup2(20, c2), "dup2(20,%d)", c2);
	xwrite(c2, "f");
	tell('W');
	read_exact(d, NULL, 3);
	kclose(d);
	kclose(10);
	kclose(20);
	kclose(c2);
}

/* nonblock_fcntl: O_NONBLOCK by fcntl and FIONBIO: EAGAIN, then data. */
static void srv_nonblock_fcntl(void)
{
	int l = srv_listen(), s = srv_accept(l);

	hear('R');
	xwrite(s, "data");
	hear('M');
	sleep_ms(50);
	xwrite(s, "more");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_nonblock_fcntl(void)
{
	int c = cli_connect(), one = 1, zero = 0;

	getfl(c);
	setnonblock(c, true);
	getfl(c);
	xread(c, 16);
	xrecv(c, 16, 0, "0");
	tell('R');
	wait_bytes(c, 4);
	xread(c, 16);
	xread(c, 16);
	setnonblock(c, false);
	getfl(c);
	tell('M');
	xread(c, 16);		/* blocks ~50 ms */
	CALL(ioctl(c, FIONBIO, &one), "ioctl(%d,FIONBIO,1)", c);
	getfl(c);
	xread(c, 16);
	CALL(ioctl(c, FIONBIO, &zero), "ioctl(%d,FIONBIO,0)", c);
	getfl(c);
	kclose(c);
}

/* rcvtimeo: SO_RCVTIMEO makes a blocking read fail with EAGAIN in time. */
static void srv_rcvtimeo(void)
{
	int l = srv_listen(), s = srv_accept(l);

	hear('T');
	xwrite(s, "late");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_rcvtimeo(void)
{
	struct timeval tv = { 0, 200000 }, got;
	socklen_t len = sizeof(got);
	int c = cli_connect();
	long long t0, dt;

	CALL(setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)),
	     "setsockopt(%d,SO_RCVTIMEO,200ms)", c);
	if (CALL(getsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &got, &len),
		 "getsockopt(%d,SO_RCVTIMEO)", c) == 0)
		tr("  -> %ld.%06ld s len=%u", (long)got.tv_sec, (long)got.tv_usec,
		   (unsigned)len);
	t0 = now_ms();
	xread(c, 16);
	dt = now_ms() - t0;
	tr("  waited %s", dt >= 150 && dt < 3000 ? "150ms..3s" : dt < 150 ? "<150ms" : ">=3s");
	t0 = now_ms();
	xrecv(c, 16, 0, "0");
	dt = now_ms() - t0;
	tr("  waited %s", dt >= 150 && dt < 3000 ? "150ms..3s" : dt < 150 ? "<150ms" : ">=3s");
	tell('T');
	wait_bytes(c, 4);
	xread(c, 16);
	tv = (struct timeval){ 1, 500000 };
	CALL(setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)),
	     "setsockopt(%d,SO_SNDTIMEO,1.5s)", c);
	len = sizeof(got);
	if (CALL(getsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &got, &len),
		 "getsockopt(%d,SO_SNDTIMEO)", c) == 0)
		tr("  -> %ld.%06ld s", (long)got.tv_sec, (long)got.tv_usec);
	kclose(c);
}

/* refused: connect to a closed port: ECONNREFUSED, blocking and not. */
static void srv_refused(void)
{
	struct sockaddr_in a = loopback(0);
	socklen_t len = sizeof(a);
	int u;

	u = (int)CALL(socket(AF_INET, SOCK_STREAM, 0), "socket(INET,STREAM)");
	CALL(bind(u, (struct sockaddr *)&a, sizeof(a)), "bind(%d,127.0.0.1:0)", u);
	if (getsockname(u, (struct sockaddr *)&a, &len) != 0)
		fatal("getsockname: %s", ename(errno));
	CALL(close(u), "close(%d)", u);	/* the port is now closed */
	port = ntohs(a.sin_port);
	tell_u64(port);
	hear('D');
}

static void cli_refused(void)
{
	int c, n;

	srv_port();
	c = (int)CALL(socket(AF_INET, SOCK_STREAM, 0), "socket(INET,STREAM)");
	cli_connect_fd(c);
	so_error(c);
	xwrite(c, "x");
	kclose(c);
	n = (int)CALL(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0),
		      "socket(INET,STREAM|NONBLOCK)");
	cli_connect_fd(n);
	wait_event(n, POLLERR | POLLHUP);
	poll1(n, POLLIN | POLLOUT, 0);
	so_error(n);
	so_error(n);
	kclose(n);
	tell('D');
}

/* sequential: eight connections one after the other (fd reuse). */
#define SEQ_N 8

static void srv_sequential(void)
{
	int l = srv_listen();

	for (int i = 0; i < SEQ_N; i++) {
		int s = srv_accept(l);
		read_exact(s, NULL, 5);
		xwrite(s, "ok");
		xread(s, 16);
		kclose(s);
	}
	kclose(l);
}

static void cli_sequential(void)
{
	for (int i = 0; i < SEQ_N; i++) {
		char msg[8];
		int c = cli_connect();

		snprintf(msg, sizeof(msg), "msg-%d", i);
		xwrite(c, msg);
		read_exact(c, NULL, 2);
		kclose(c);
	}
}

/* duplex: 4 MiB each way at once, non-blocking, driven by poll. */
#define DUPLEX_LEN (4u * MIB)

static void duplex(int fd)
{
	static unsigned char out[65536], in[65536 + 7];
	uint64_t put = 0, got = 0, bad = 0, h = FNV_INIT;
	long long end = now_ms() + 15000;
	int polls = 0;

	setnonblock(fd, true);
	while ((put < DUPLEX_LEN || got < DUPLEX_LEN) && now_ms() < end) {
		struct pollfd p = { .fd = fd, .events = (short)((got < DUPLEX_LEN ? POLLIN : 0) |
						      (put < DUPLEX_LEN ? POLLOUT : 0)) };
		if (poll(&p, 1, 1000) < 0 && errno != EINTR)
			break;
		polls++;
		if (p.revents & (POLLERR | POLLNVAL))
			break;
		if ((p.revents & (POLLIN | POLLHUP)) && got < DUPLEX_LEN) {
			ssize_t r = read(fd, in, sizeof(in));
			if (r == 0)
				break;
			for (ssize_t i = 0; i < r; i++)
				bad += in[i] != pat(got + (uint64_t)i);
			if (r > 0) {
				h = fnv(h, in, (size_t)r);
				got += (uint64_t)r;
			}
		}
		if ((p.revents & POLLOUT) && put < DUPLEX_LEN) {
			size_t k = DUPLEX_LEN - put < sizeof(out) - 4099 ?
				   DUPLEX_LEN - put : sizeof(out) - 4099;
			ssize_t r;
			fill_pat(out, put, k);
			r = write(fd, out, k);
			if (r > 0)
				put += (uint64_t)r;
		}
	}
	blocks[role].moved += put;
	tr("duplex(%d): put %llu got %llu fnv=%016llx pattern %s, polls %s", fd,
	   (unsigned long long)put, (unsigned long long)got, (unsigned long long)h,
	   bad ? "BAD" : "ok", polls > 0 ? ">0" : "0");
	setnonblock(fd, false);
}

static void srv_duplex(void)
{
	int l = srv_listen(), s = srv_accept(l);

	duplex(s);
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_duplex(void)
{
	int c = cli_connect();

	duplex(c);
	kclose(c);
}


/* sigpipe: EPIPE raises SIGPIPE unless MSG_NOSIGNAL. */
static volatile sig_atomic_t sigpipes;

static void on_sigpipe(int sig)
{
	(void)sig;
	sigpipes++;
}

static void srv_sigpipe(void)
{
	int l = srv_listen(), s = srv_accept(l);

	xread(s, 16);
	hear('D');
	kclose(s);
	kclose(l);
}

static void cli_sigpipe(void)
{
	struct sigaction sa = { .sa_handler = on_sigpipe };
	struct iovec iov = { "v", 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	int c = cli_connect();

	sigaction(SIGPIPE, &sa, NULL);
	CALL(shutdown(c, SHUT_WR), "shutdown(%d,SHUT_WR)", c);
	xwrite(c, "x");
	tr("  SIGPIPE seen %d", (int)sigpipes);
	CALL(send(c, "y", 1, MSG_NOSIGNAL), "send(%d,\"y\",NOSIGNAL)", c);
	tr("  SIGPIPE seen %d", (int)sigpipes);
	CALL(sendmsg(c, &m, 0), "sendmsg(%d,[1],0)", c);
	tr("  SIGPIPE seen %d", (int)sigpipes);
	CALL(writev(c, &iov, 1), "writev(%d,[1])", c);
	tr("  SIGPIPE seen %d", (int)sigpipes);
	signal(SIGPIPE, SIG_IGN);
	tell('D');
	kclose(c);
}

/* sendfile: sendfile from a memfd into the socket (with and without offset). */
#define SF_LEN (MIB + 7)

static void srv_sendfile(void)
{
	static unsigned char buf[65536];
	int l = srv_listen(), s = srv_accept(l);
	uint64_t got = 0, bad = 0;
	ssize_t r;

	while (got < SF_LEN) {
		r = read(s, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		for (ssize_t i = 0; i < r; i++)
			bad += buf[i] != pat(got + (uint64_t)i);
		got += (uint64_t)r;
	}
	tr("read all(%d,%u) = %llu pattern %s", s, SF_LEN, (unsigned long long)got,
	   bad ? "BAD" : "ok");
	xwrite(s, "got it");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_sendfile(void)
{
	static unsigned char buf[65536];
	uint64_t sent = 0;
	off_t off = 0;
	int c = cli_connect(), m;
	long r;

	m = (int)CALL(memfd_create("sockcase", MFD_CLOEXEC), "memfd_create");
	for (uint64_t o = 0; o < SF_LEN; o += sizeof(buf)) {
		size_t k = SF_LEN - o < sizeof(buf) ? SF_LEN - o : sizeof(buf);
		fill_pat(buf, o, k);
		if (pwrite(m, buf, k, (off_t)o) != (ssize_t)k)
			fatal("pwrite memfd: %s", ename(errno));
	}
	r = CALL(sendfile(c, m, &off, 7), "sendfile(%d,memfd,&off=0,7)", c);
	tr("  -> off=%lld file pos %lld", (long long)off, (long long)lseek(m, 0, SEEK_CUR));
	if (r > 0)
		sent += (uint64_t)r;
	lseek(m, (off_t)sent, SEEK_SET);
	while (sent < SF_LEN) {
		r = sendfile(c, m, NULL, SF_LEN - sent);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		sent += (uint64_t)r;
	}
	blocks[role].moved += sent;
	tr("sendfile loop(%d,memfd,NULL) total = %llu", c, (unsigned long long)sent);
	read_exact(c, NULL, 6);
	CALL(close(m), "close(memfd)");
	kclose(c);
}

/* splice: from the socket into a pipe, and from a pipe into the socket. */
static void srv_splice(void)
{
	unsigned char buf[4096];
	int l = srv_listen(), s = srv_accept(l), p[2];
	uint64_t bad = 0;
	ssize_t r;

	CALL(pipe(p), "pipe");
	tr("  -> %d %d", p[0], p[1]);
	wait_bytes(s, 4096);
	r = CALL(splice(s, NULL, p[1], NULL, 4096, 0), "splice(%d,pipe,4096)", s);
	if (r > 0) {
		r = read(p[0], buf, (size_t)r);
		for (ssize_t i = 0; i < r; i++)
			bad += buf[i] != pat((uint64_t)i);
		tr("  pipe holds %zd bytes, pattern %s", r, bad ? "BAD" : "ok");
	}
	read_exact(s, NULL, 7);
	CALL(write(p[1], "spliced!", 8), "write(pipe,\"spliced!\")");
	r = CALL(splice(p[0], NULL, s, NULL, 8, 0), "splice(pipe,%d,8)", s);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	xread(s, 16);
	CALL(close(p[0]), "close(pipe r)");
	CALL(close(p[1]), "close(pipe w)");
	kclose(s);
	kclose(l);
}

static void cli_splice(void)
{
	static unsigned char buf[4096];
	int c = cli_connect();

	fill_pat(buf, 0, sizeof(buf));
	write_all(c, buf, sizeof(buf), sizeof(buf));
	xwrite(c, "trailer");
	read_exact(c, NULL, 8);
	kclose(c);
}

/*
 * Exec'd roles (sockcase --exec ROLE ARGS...): a private trace block,
 * sent at the end to the fd named in the arguments, first line
 * "K kbytes moved".  The forking process collects it as the child block.
 */

/* Client: reads an exec'd child's trace from rfd into the child block, reaps it. */
static void collect_child(int rfd, pid_t pid)
{
	static char text[TRACE_MAX + 128];
	struct block *b = &blocks[R_CHILD];
	unsigned long long k = 0, mv = 0;
	size_t len = 0;
	char *body;
	ssize_t r;
	int st = 0;

	while (len < sizeof(text) - 1) {
		r = read(rfd, text + len, sizeof(text) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	text[len] = '\0';
	close(rfd);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	body = text;
	if (sscanf(text, "K %llu %llu", &k, &mv) == 2 && (body = strchr(text, '\n')))
		body++;
	else
		body = text;
	b->used = 1;
	b->kbytes += k;
	b->moved += mv;
	len = strlen(body);
	if (len > TRACE_MAX - 1)
		len = TRACE_MAX - 1;
	memcpy(b->text, body, len);
	b->len = len;
	tr("child exit %d", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
}

/*
 * Client: forks and execs this program as `--exec role a b`, with the
 * preload kept (plain false) or dropped from the environment (plain true);
 * a and b are fd numbers.  Returns the read end of its trace pipe.
 */
static pid_t exec_role(const char *r, int a, int b, bool plain, int *rfd)
{
	char sa[16], sb[16], so[16];
	int op[2];
	pid_t pid;

	if (pipe(op) != 0)
		fatal("pipe: %s", ename(errno));
	pid = fork();
	if (pid < 0)
		fatal("fork: %s", ename(errno));
	if (pid == 0) {
		char **env = environ;
		if (plain) {
			size_t n = 0, k = 0;
			for (char **e = environ; *e; e++)
				n++;
			env = calloc(n + 1, sizeof(*env));
			for (char **e = environ; env && *e; e++)
				if (strncmp(*e, "LD_PRELOAD=", 11))
					env[k++] = *e;
		}
		snprintf(sa, sizeof(sa), "%d", a);
		snprintf(sb, sizeof(sb), "%d", b);
		snprintf(so, sizeof(so), "%d", op[1]);
		close(op[0]);
		execle("/proc/self/exe", "sockcase", "--exec", r, sa, sb, so,
		       (char *)NULL, env ? env : environ);
		_exit(127);
	}
	close(op[1]);
	*rfd = op[0];
	return pid;
}

/* exec_inherit: the socket crosses an exec (still preloaded) and keeps working. */
static void srv_exec_inherit(void)
{
	int l = srv_listen(), s = srv_accept(l);

	read_exact(s, NULL, 11);
	xwrite(s, "hello");
	read_exact(s, NULL, 14);
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_exec_inherit(void)
{
	int c = cli_connect(), rfd;
	pid_t pid;

	xwrite(c, "before-exec");
	pid = exec_role("inherit", c, -1, false, &rfd);
	collect_child(rfd, pid);
	xwrite(c, "after");
	kclose(c);
}

/* Exec'd: reads the server's hello on the inherited socket, answers, closes. */
static void exec_inherit(int c, int unused)
{
	(void)unused;
	getfl(c);
	read_exact(c, NULL, 5);
	xwrite(c, "from-exec");
	kclose(c);
}

/*
 * exec_keep: the server hands its accepted connection to an exec'd image
 * with the preload (fork, exec, the parent closes its copy, as sshd does),
 * with bytes still in flight; the new image reads them and moves 2 MiB
 * each way.  Preloaded, the connection stays UB across the exec: three UB
 * ends (client, server, the new image) and no payload on the kernel
 * socket.  exec_drop: the same into an image without the preload (a
 * smaller load): the connection is demoted at exec, nothing lost.
 */
#define KEEP_KIB 2048

static void srv_exec_handoff(bool plain, int kib)
{
	int l = srv_listen(), s = srv_accept(l), rfd;
	pid_t pid;

	read_exact(s, NULL, 7);
	pid = exec_role("keep", s, kib, plain, &rfd);
	kclose(s);
	collect_child(rfd, pid);
	kclose(l);
}

static void cli_exec_handoff(int kib)
{
	size_t n = (size_t)kib * 1024;
	unsigned char *buf = malloc(n), *want = malloc(n);
	uint64_t h, back = 0;
	int c;

	if (!buf || !want)
		fatal("malloc");
	fill_pat(want, 0, n);
	h = fnv(FNV_INIT, want, n);
	c = cli_connect();
	xwrite(c, "before!");
	xwrite(c, "in-ring");
	read_exact(c, NULL, 9);
	write_all(c, want, n, 65536 + 4321);
	{
		/* An epoll wait for the exec'd image's answer: its ring
		 * changes must reach this side's waits (its notification
		 * page), not only its blocking reads. */
		struct epoll_event ev = { .events = EPOLLIN }, got;
		int ep = epoll_create1(EPOLL_CLOEXEC), k;

		if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0)
			fatal("epoll");
		k = epoll_wait(ep, &got, 1, 10000);
		tr("epoll_wait(answer) = %d%s", k,
		   k == 1 && (got.events & EPOLLIN) ? " IN" : "");
		close(ep);
	}
	if (read_exact(c, &back, 8) == 8)
		tr("exec'd image's fnv %s mine", back == h ? "==" : "!=");
	if (read_exact(c, buf, n) == n)
		tr("pattern back %s", memcmp(buf, want, n) ? "BAD" : "ok");
	kclose(c);
	free(buf);
	free(want);
}

static void srv_exec_keep(void)
{
	srv_exec_handoff(false, KEEP_KIB);
}

static void cli_exec_keep(void)
{
	cli_exec_handoff(KEEP_KIB);
}

static void srv_exec_drop(void)
{
	srv_exec_handoff(true, 256);
}

static void cli_exec_drop(void)
{
	cli_exec_handoff(256);
}

/* Exec'd: the server's end of exec_keep/exec_drop (kib KiB each way). */
static void exec_keep(int s, int kib)
{
	size_t n = (size_t)kib * 1024;
	unsigned char *buf = malloc(n);
	uint64_t h;

	if (!buf)
		fatal("malloc");
	getfl(s);
	read_exact(s, NULL, 7);		/* sent before the exec */
	xwrite(s, "from-exec");
	if (read_exact(s, buf, n) == n) {
		uint64_t bad = 0;

		for (size_t i = 0; i < n; i++)
			bad += buf[i] != pat(i);
		tr("pattern %s", bad ? "BAD" : "ok");
	}
	h = fnv(FNV_INIT, buf, n);
	write_all(s, &h, 8, 8);
	fill_pat(buf, 0, n);
	write_all(s, buf, n, 100000);
	xread(s, 16);
	kclose(s);
	free(buf);
}

/*
 * exec_forged: an exec'd preloaded image finds UBS_EXEC_CONNS forged (the
 * exec made with a raw syscall, past the library): entries naming a plain
 * TCP socket of its own with a fake channel segment (a sealed memfd named
 * like ours, holding no channel), fds that are not what they claim, and
 * junk.  Nothing is taken as a UB connection (the stats count the client
 * and the server only), nothing crashes, and the fds the entries name are
 * left as they were.
 */
static void srv_exec_forged(void)
{
	int l = srv_listen(), s = srv_accept(l);

	read_exact(s, NULL, 4);
	xwrite(s, "pong");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_exec_forged(void)
{
	int c = cli_connect(), op[2];
	pid_t pid;

	xwrite(c, "ping");
	read_exact(c, NULL, 4);
	if (pipe(op) != 0)
		fatal("pipe: %s", ename(errno));
	pid = fork();
	if (pid < 0)
		fatal("fork: %s", ename(errno));
	if (pid == 0) {
		static char forged[1024];
		char sa[16], sb[16], so[16], **env;
		char *argv[] = { "sockcase", "--exec", "forged", sa, sb, so, NULL };
		int t = socket(AF_INET, SOCK_STREAM, 0);
		int m = memfd_create("ubs-chan", MFD_ALLOW_SEALING);
		int e = eventfd(0, 0);
		struct stat st;
		size_t n = 0, k = 0;

		if (t < 0 || m < 0 || e < 0 || ftruncate(m, 1 << 16) != 0 ||
		    fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW |
			  F_SEAL_SEAL) != 0 || fstat(t, &st) != 0)
			_exit(126);
		fcntl(c, F_SETFD, FD_CLOEXEC);
		close(op[0]);
		snprintf(forged, sizeof(forged), "UBS_EXEC_CONNS=1;"
			 "%llu,%d,%d,1,0,4,0,%d,1,%d,2,0;"      /* fake segment */
			 "%llu,%d,%d,1,0,4,0,%d,1,%d,2,0;"      /* seg: an eventfd */
			 "%llu,%d,%d,1,1,4,0,%d,1,%d,2,0;"      /* wrong inode */
			 "junk;9,9999,-1;;"
			 "%llu,%d,%d,ffffffffffffffff,7,99,0,%d,0,%d,0,-5",
			 (unsigned long long)st.st_ino, t, m, e, e,
			 (unsigned long long)st.st_ino, t, e, e, e,
			 (unsigned long long)st.st_ino + 1, t, m, e, e,
			 (unsigned long long)st.st_ino, t, 1000000, -1, 2);
		for (char **p = environ; *p; p++)
			n++;
		env = calloc(n + 2, sizeof(*env));
		if (!env)
			_exit(126);
		for (char **p = environ; *p; p++)
			if (strncmp(*p, "UBS_EXEC_CONNS=", 15))
				env[k++] = *p;
		env[k] = forged;
		snprintf(sa, sizeof(sa), "%d", t);
		snprintf(sb, sizeof(sb), "%d", m);
		snprintf(so, sizeof(so), "%d", op[1]);
		syscall(SYS_execve, "/proc/self/exe", argv, env);
		_exit(127);
	}
	close(op[1]);
	collect_child(op[0], pid);
	kclose(c);
}

/* Exec'd with a forged description: its fds are as they were. */
static void exec_forged(int t, int m)
{
	getfl(t);
	CALL(fcntl(m, F_GETFD), "fcntl(memfd,F_GETFD)");
	CALL(ftruncate(m, 1 << 12), "ftruncate(memfd) (sealed)");
	kclose(t);
	CALL(close(m), "close(memfd)");
}

/*
 * exec_fails: the server execs a preloaded image while it holds a UB
 * connection, and the exec fails (an argument over the kernel's limit:
 * E2BIG).  Everything is as before: the same fds with the same
 * close-on-exec flags (the library's too), and the connection goes on
 * over UB (1 MiB, no payload on the kernel socket).
 */

/* Digest of this process's fds and their fdinfo flags. */
static uint64_t fd_digest(void)
{
	char path[64], buf[256];
	uint64_t h = FNV_INIT;

	for (int fd = 0; fd < 65536; fd++) {
		int f, n;

		if (fcntl(fd, F_GETFD) < 0)
			continue;
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
		f = open(path, O_RDONLY | O_CLOEXEC);
		n = f < 0 ? 0 : (int)read(f, buf, sizeof(buf) - 1);
		if (f >= 0)
			close(f);
		buf[n > 0 ? n : 0] = '\0';
		{
			char *fl = strstr(buf, "flags:");
			unsigned long v = fl ? strtoul(fl + 6, NULL, 8) : 0;

			h = fnv(h, &fd, sizeof(fd));
			h = fnv(h, &v, sizeof(v));
		}
	}
	return h;
}

static void srv_exec_fails(void)
{
	int l = srv_listen(), s = srv_accept(l);
	size_t big = 256 * 1024;
	char *arg = malloc(big + 1);
	unsigned char *buf = malloc(MIB);
	char *argv[] = { "sockcase", arg, NULL };
	uint64_t before;

	if (!arg || !buf)
		fatal("malloc");
	memset(arg, 'x', big);
	arg[big] = '\0';
	read_exact(s, NULL, 4);
	before = fd_digest();
	CALL(execve("/proc/self/exe", argv, environ), "execve(self, 256 KiB arg)");
	tr("fds and flags %s", fd_digest() == before ? "unchanged" : "CHANGED");
	xwrite(s, "still-here");
	if (read_exact(s, buf, MIB) == MIB) {
		uint64_t bad = 0;

		for (size_t i = 0; i < MIB; i++)
			bad += buf[i] != pat(i);
		tr("pattern %s", bad ? "BAD" : "ok");
	}
	xread(s, 16);
	kclose(s);
	kclose(l);
	free(arg);
	free(buf);
}

static void cli_exec_fails(void)
{
	unsigned char *buf = malloc(MIB);
	int c = cli_connect();

	if (!buf)
		fatal("malloc");
	fill_pat(buf, 0, MIB);
	xwrite(c, "ping");
	read_exact(c, NULL, 10);
	write_all(c, buf, MIB, 65536);
	kclose(c);
	free(buf);
}

/*
 * demote_poll: the server demotes a live connection (fdopen) while the
 * client waits in poll on its non-blocking socket; the server writes only
 * later.  poll must report POLLIN when the bytes are there, not at the
 * demotion: a read right after it must not say EAGAIN.
 */
static void srv_demote_poll(void)
{
	int l = srv_listen(), s = srv_accept(l);
	FILE *f;

	read_exact(s, NULL, 4);
	xwrite(s, "pong");
	read_exact(s, NULL, 2);
	f = fdopen(s, "w");
	tr("fdopen(%d) %s", s, f ? "ok" : ename(errno));
	if (!f)
		fatal("fdopen");
	usleep(100 * 1000);
	fputs("late", f);
	fflush(f);
	read_exact(s, NULL, 3);
	kinfo(s);
	tr("fclose = %d", fclose(f));
	kclose(l);
}

static void cli_demote_poll(void)
{
	int c = cli_connect();
	struct pollfd p = { .fd = c, .events = POLLIN };

	xwrite(c, "ping");
	read_exact(c, NULL, 4);
	setnonblock(c, true);
	xwrite(c, "ok");
	xpoll(&p, 1, 5000, "c");
	xread(c, 16);
	setnonblock(c, false);
	xwrite(c, "bye");
	xread(c, 16);
	kclose(c);
}

/* plain_peer: a client without the preload; server speaks first; plain TCP. */
static void srv_plain_peer(void)
{
	int l = srv_listen(), s = srv_accept(l);

	xwrite(s, "220 banner\r\n");
	read_exact(s, NULL, 6);
	xwrite(s, "250 ok\r\n");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_plain_peer(void)
{
	int rfd;
	pid_t pid;

	pid = exec_role("plain", sync_in, sync_out, true, &rfd);
	collect_child(rfd, pid);
}

/* Exec'd without the preload: the plain client of plain_peer. */
static void exec_plain(int in, int out)
{
	int c;

	sync_in = in;
	sync_out = out;
	c = cli_connect();
	read_exact(c, NULL, 12);
	xwrite(c, "HELO\r\n");
	read_exact(c, NULL, 8);
	kclose(c);
}

/* ------------------------------------------------------------------ */
/* Signals (EINTR, SA_RESTART), threads, policy flip, daemon restart  */

#define SIG_MS		150		/* the interrupting SIGALRM, after the call began */

static volatile sig_atomic_t alrm_hits;
static volatile sig_atomic_t alrm_tell;	/* first run: tell the peer 'S' */
static volatile int alrm_fd = -1;	/* handler_write: the socket it writes */
static volatile long alrm_wrote;

/* SIGALRM: counts; the first run tells the peer, or writes to the socket. */
static void on_alrm(int sig)
{
	int e = errno;

	(void)sig;
	if (++alrm_hits == 1) {
		if (alrm_fd >= 0)
			alrm_wrote = write(alrm_fd, "ping", 4);
		else if (alrm_tell)
			(void)!write(sync_out, "S", 1);
	}
	errno = e;
}

/* Installs on_alrm for SIGALRM with flags (named fl); traced. */
static void alrm_handler(int flags, const char *fl)
{
	struct sigaction sa = { .sa_handler = on_alrm, .sa_flags = flags };

	sigemptyset(&sa.sa_mask);
	CALL(sigaction(SIGALRM, &sa, NULL), "sigaction(SIGALRM,%s)", fl);
}

/* One SIGALRM in ms, from a POSIX timer (alarm() stays the case's bound). */
static void alrm_in(int ms)
{
	static timer_t t;
	static bool made;
	struct sigevent ev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGALRM };
	struct itimerspec it = { .it_value = { ms / 1000, (long)(ms % 1000) * 1000000 } };

	if (!made && timer_create(CLOCK_MONOTONIC, &ev, &t) != 0)
		fatal("timer_create: %s", ename(errno));
	made = true;
	if (timer_settime(t, 0, &it, NULL) != 0)
		fatal("timer_settime: %s", ename(errno));
}

/* "<1s" or how long since t0, for a wait that must end at the signal. */
static const char *quick(long long t0)
{
	return now_ms() - t0 < 1000 ? "<1s" : ">=1s";
}

/* eintr_restart: a blocking recv, a SIGALRM handler with SA_RESTART, then
 * data: the recv was restarted and returns the data. */
static void srv_eintr_restart(void)
{
	int l = srv_listen(), s = srv_accept(l);

	hear('S');		/* the client's handler ran */
	xwrite(s, "after the signal");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_eintr_restart(void)
{
	int c = cli_connect();

	alrm_tell = 1;
	alrm_handler(SA_RESTART, "SA_RESTART");
	alrm_in(SIG_MS);
	xrecv(c, 64, 0, "0");
	tr("  handler ran %d", (int)alrm_hits);
	kclose(c);
}

/* eintr_norestart: the same without SA_RESTART: EINTR, then the data. */
static void srv_eintr_norestart(void)
{
	int l = srv_listen(), s = srv_accept(l);

	hear('S');
	hear('E');		/* the client saw its recv end */
	xwrite(s, "after EINTR");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_eintr_norestart(void)
{
	int c = cli_connect();
	long long t0;

	alrm_tell = 1;
	alrm_handler(0, "0");
	alrm_in(SIG_MS);
	t0 = now_ms();
	xrecv(c, 64, 0, "0");
	tr("  handler ran %d, waited %s", (int)alrm_hits, quick(t0));
	tell('E');
	wait_bytes(c, 11);
	xrecv(c, 64, 0, "0");
	kclose(c);
}

/* eintr_timeout: SA_RESTART, but SO_RCVTIMEO is set: EINTR (the kernel
 * restarts only a call without a timeout). */
static void srv_eintr_timeout(void)
{
	srv_eintr_norestart();
}

static void cli_eintr_timeout(void)
{
	struct timeval tv = { 5, 0 };
	int c = cli_connect();
	long long t0;

	CALL(setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)),
	     "setsockopt(%d,SO_RCVTIMEO,5s)", c);
	alrm_tell = 1;
	alrm_handler(SA_RESTART, "SA_RESTART");
	alrm_in(SIG_MS);
	t0 = now_ms();
	xrecv(c, 64, 0, "0");
	tr("  handler ran %d, waited %s", (int)alrm_hits, quick(t0));
	tell('E');
	wait_bytes(c, 11);
	xrecv(c, 64, 0, "0");
	kclose(c);
}

/* eintr_poll: poll, epoll_wait and select say EINTR after a handler, even
 * one with SA_RESTART. */
static void srv_eintr_poll(void)
{
	int l = srv_listen(), s = srv_accept(l);

	hear('E');
	xwrite(s, "data");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_eintr_poll(void)
{
	int c = cli_connect(), ep;
	fd_set rd;
	long long t0;

	alrm_handler(SA_RESTART, "SA_RESTART");
	alrm_in(SIG_MS);
	t0 = now_ms();
	poll1(c, POLLIN, -1);
	tr("  handler ran %d, waited %s", (int)alrm_hits, quick(t0));
	ep = (int)CALL(epoll_create1(EPOLL_CLOEXEC), "epoll_create1");
	ep_ctl(ep, EPOLL_CTL_ADD, c, EPOLLIN, "IN");
	alrm_in(SIG_MS);
	t0 = now_ms();
	ep_wait(ep, -1);
	tr("  handler ran %d, waited %s", (int)alrm_hits, quick(t0));
	alrm_in(SIG_MS);
	t0 = now_ms();
	FD_ZERO(&rd);
	FD_SET(c, &rd);
	CALL(select(c + 1, &rd, NULL, NULL, NULL), "select(%d:r,NULL)", c);
	tr("  handler ran %d, waited %s", (int)alrm_hits, quick(t0));
	tell('E');
	ep_wait(ep, WAIT_MS);
	xread(c, 16);
	CALL(close(ep), "close(epoll)");
	kclose(c);
}

/* eintr_partial: a handler with SA_RESTART that interrupts a call which has
 * already moved bytes ends it with their count (MSG_WAITALL recv, a send
 * larger than the buffers): the kernel restarts only a call that moved
 * nothing. */
#define PARTIAL_LEN (32u * MIB)

static void srv_eintr_partial(void)
{
	static unsigned char buf[65536];
	int l = srv_listen(), s = srv_accept(l);
	uint64_t n, got = 0, bad = 0;
	ssize_t r;

	xwrite(s, "four");
	hear('S');		/* the client's recv was interrupted */
	n = hear_u64();		/* what its send moved before the signal */
	while (got < n) {
		size_t k = n - got < sizeof(buf) ? n - got : sizeof(buf);

		r = read(s, buf, k);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		for (ssize_t i = 0; i < r; i++)
			bad += buf[i] != pat(got + (uint64_t)i);
		got += (uint64_t)r;
	}
	tr("read all(%d,sent) = %s, pattern %s", s, got == n ? "sent" : "short",
	   bad ? "BAD" : "ok");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_eintr_partial(void)
{
	unsigned char *buf = malloc(PARTIAL_LEN);
	int c = cli_connect();
	ssize_t r;

	if (!buf)
		fatal("malloc");
	fill_pat(buf, 0, PARTIAL_LEN);
	alrm_tell = 1;
	alrm_handler(SA_RESTART, "SA_RESTART");
	wait_bytes(c, 4);
	alrm_in(SIG_MS);
	xrecv(c, 16, MSG_WAITALL, "WAITALL");
	tr("  handler ran %d", (int)alrm_hits);
	alrm_in(SIG_MS);
	errno = 0;
	r = send(c, buf, PARTIAL_LEN, 0);
	tr("send(%d,%u) = %s %s", c, PARTIAL_LEN,
	   r > 0 && r < (ssize_t)PARTIAL_LEN ? "partial" : r < 0 ? "-1" : "all",
	   r < 0 ? ename(errno) : "");
	tr("  handler ran %d", (int)alrm_hits);
	if (r > 0)
		blocks[role].moved += (uint64_t)r;
	tell_u64(r > 0 ? (uint64_t)r : 0);
	kclose(c);
	free(buf);
}

/* handler_write: the handler that interrupts a blocking recv writes to the
 * same socket; the peer reads it and answers; the restarted recv gets the
 * answer. */
static void srv_handler_write(void)
{
	int l = srv_listen(), s = srv_accept(l);

	read_exact(s, NULL, 4);
	xwrite(s, "pong");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_handler_write(void)
{
	int c = cli_connect();

	alrm_fd = c;
	alrm_handler(SA_RESTART, "SA_RESTART");
	alrm_in(SIG_MS);
	xrecv(c, 64, 0, "0");
	alrm_fd = -1;
	tr("  handler ran %d, its write(%d,\"ping\") = %ld", (int)alrm_hits, c,
	   (long)alrm_wrote);
	if (alrm_wrote > 0)
		blocks[role].moved += (uint64_t)alrm_wrote;
	kclose(c);
}

/* threads_close: thread A blocks in recv while thread B closes the fd.
 * The kernel keeps A waiting until data or EOF arrives (here the peer's
 * "late" and close, once B's close is done); what A gets is not traced,
 * only that B's close succeeded and that A came back. */
static int tc_fd = -1;
static volatile ssize_t tc_ret;
static volatile int tc_errno;

static void *tc_reader(void *arg)
{
	char buf[16];

	(void)arg;
	tc_ret = recv(tc_fd, buf, sizeof(buf), 0);
	tc_errno = errno;
	return NULL;
}

static void srv_threads_close(void)
{
	int l = srv_listen(), s = srv_accept(l);

	hear('C');
	xwrite(s, "late");
	hear('J');		/* the client's reader came back */
	kclose(s);
	kclose(l);
}

static void cli_threads_close(void)
{
	pthread_t t;
	int c = cli_connect(), e;

	tc_fd = c;
	if ((e = pthread_create(&t, NULL, tc_reader, NULL)))
		fatal("pthread_create: %s", ename(e));
	sleep_ms(100);
	kclose(c);
	tell('C');
	if ((e = pthread_join(t, NULL)))	/* bounded by the alarm */
		fatal("pthread_join: %s", ename(e));
	tr("reader thread returned");
	tell('J');
	fprintf(stderr, "threads_close: the reader's recv = %zd %s\n", (ssize_t)tc_ret,
		tc_ret < 0 ? ename(tc_errno) : "");
}

/* The run directory of the case's ubsd: SOCKCASE_RUN_DIR (set by the
 * behaviour suite in both runs), else UBS_RUN_DIR. */
static const char *case_run_dir(void)
{
	const char *d = getenv("SOCKCASE_RUN_DIR");

	if (!d || !*d)
		d = getenv("UBS_RUN_DIR");
	if (!d || !*d)
		fatal("this case needs SOCKCASE_RUN_DIR (the run dir of a ubsd)");
	return d;
}

#ifndef UBSD_PATH
#define UBSD_PATH "build/bin/ubsd"
#endif

/* Runs `ubsctl a b c` against the case's ubsd, without the preload (in
 * both runs, so the traces match); traces its exit status. */
static int ubsctl(const char *a, const char *b, const char *c)
{
	const char *argv[] = { "ubsctl", a, b, c, NULL };
	const char *slash = strrchr(UBSD_PATH, '/');	/* ubsctl is beside ubsd */
	char path[sizeof(UBSD_PATH) + 8], dir[4200];
	pid_t pid;
	int st = 0;

	snprintf(path, sizeof(path), "%.*subsctl",
		 slash ? (int)(slash + 1 - UBSD_PATH) : 0, UBSD_PATH);
	snprintf(dir, sizeof(dir), "UBS_RUN_DIR=%s", case_run_dir());
	pid = fork();
	if (pid < 0)
		fatal("fork: %s", ename(errno));
	if (pid == 0) {
		size_t n = 0, k = 0;
		char **env;
		int null = open("/dev/null", O_WRONLY);

		for (char **e = environ; *e; e++)
			n++;
		env = calloc(n + 2, sizeof(*env));
		if (!env || null < 0)
			_exit(126);
		for (char **e = environ; *e; e++)
			if (strncmp(*e, "LD_PRELOAD=", 11) && strncmp(*e, "UBS_", 4))
				env[k++] = *e;
		env[k++] = dir;
		dup2(null, 1);
		execve(path, (char **)argv, env);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	tr("ubsctl %s %s %s: exit %d", a, b, c,
	   WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Asks the behaviour suite to act on the case's ubsd through the pipes
 * named by SOCKCASE_HARNESS ("WFD,RFD"): 'K' kill it (SIGKILL, reaped),
 * 'S' start it again (its socket is there when the answer comes).  Waits
 * (bounded) for the answer and traces it. */
static void harness(char req, const char *what)
{
	const char *v = getenv("SOCKCASE_HARNESS");
	int wfd, rfd;
	struct pollfd p;
	char ans = '?';

	if (!v || sscanf(v, "%d,%d", &wfd, &rfd) != 2)
		fatal("this case needs the behaviour suite (SOCKCASE_HARNESS)");
	if (write(wfd, &req, 1) != 1)
		fatal("harness: %s", ename(errno));
	p = (struct pollfd){ .fd = rfd, .events = POLLIN };
	if (poll(&p, 1, 2 * WAIT_MS) != 1 || read(rfd, &ans, 1) != 1)
		fatal("harness: no answer to %c", req);
	tr("harness: %s: %s", what, ans == req + ('a' - 'A') ? "done" : "FAILED");
}

/* Exchanges msg and its answer ack on c (client side of policy_flip and
 * daemon_restart). */
static void ping(int c, const char *msg, const char *ack)
{
	xwrite(c, msg);
	read_exact(c, NULL, strlen(ack));
}

static void pong(int s, const char *msg, const char *ack)
{
	read_exact(s, NULL, strlen(msg));
	xwrite(s, ack);
}

/* policy_flip: connection 1 over UB, then `ubsctl service sockcase off`:
 * connection 2 is TCP, connection 1 keeps working.  Exactly 2 UB ends. */
static void srv_policy_flip(void)
{
	int l = srv_listen(), s1 = srv_accept(l), s2;

	pong(s1, "one", "ack1");
	s2 = srv_accept(l);
	pong(s2, "two", "ack2");
	pong(s1, "three", "ack3");
	xread(s2, 16);
	xread(s1, 16);
	kclose(s2);
	kclose(s1);
	kclose(l);
}

static void cli_policy_flip(void)
{
	int c1 = cli_connect(), c2;

	ping(c1, "one", "ack1");
	ubsctl("service", "sockcase", "off");
	c2 = cli_connect();
	ping(c2, "two", "ack2");
	ping(c1, "three", "ack3");
	kclose(c2);
	kclose(c1);
	ubsctl("service", "sockcase", "on");
}

/* daemon_restart: connection 1 over UB; ubsd is killed: connection 1 keeps
 * working, connection 2 (made while the daemon is down) is TCP through
 * ubsd (UBS_BOARD=0), UB on the board (both ends have it mapped, and the
 * doorbells of connection 1); ubsd is started again and, after the
 * preload's reconnect back-off (1 s), connection 3 is UB again.  Exactly
 * 4 UB ends, 6 with the board. */
static void srv_daemon_restart(void)
{
	int l = srv_listen(), s1 = srv_accept(l), s2, s3;

	pong(s1, "one", "ack1");
	s2 = srv_accept(l);
	pong(s2, "two", "ack2");
	pong(s1, "three", "ack3");
	s3 = srv_accept(l);
	pong(s3, "four", "ack4");
	pong(s1, "five", "ack5");
	xread(s3, 16);
	xread(s2, 16);
	xread(s1, 16);
	kclose(s3);
	kclose(s2);
	kclose(s1);
	kclose(l);
}

static void cli_daemon_restart(void)
{
	int c1 = cli_connect(), c2, c3;

	ping(c1, "one", "ack1");
	harness('K', "ubsd killed");
	c2 = cli_connect();
	ping(c2, "two", "ack2");
	ping(c1, "three", "ack3");
	harness('S', "ubsd started");
	sleep_ms(1100);		/* the preload's reconnect back-off */
	c3 = cli_connect();
	ping(c3, "four", "ack4");
	ping(c1, "five", "ack5");
	kclose(c3);
	kclose(c2);
	kclose(c1);
}

struct sockcase {
	const char *name;
	int expect_ub;		/* connections that must be accelerated */
	void (*server)(void);
	void (*client)(void);
	int exact_ub;		/* > 0: the stats pages' ub_conns (UB ends,
				 * two per connection) must be exactly this */
	int exact_board;	/* > 0: the same when the board is on (not
				 * UBS_BOARD=0), if it differs */
};

#define CASE(n, ub) { #n, ub, srv_##n, cli_##n, 0, 0 }
#define CASE_EXACT(n, ends) { #n, (ends) / 2, srv_##n, cli_##n, ends, 0 }
#define CASE_EXACT2(n, ends, board) \
	{ #n, (ends) / 2, srv_##n, cli_##n, ends, board }
/* mmsg: sendmmsg of three messages, recvmmsg of what arrived (a stream:
 * the batch fills the first buffer first), then recvmmsg at EOF. */
static void srv_mmsg(void)
{
	int l = srv_listen(), s = srv_accept(l), n;
	char b[3][8];
	struct iovec iov[3];
	struct mmsghdr m[3];

	wait_bytes(s, 18);
	memset(m, 0, sizeof(m));
	for (int i = 0; i < 3; i++) {
		iov[i].iov_base = b[i];
		iov[i].iov_len = sizeof(b[i]);
		m[i].msg_hdr.msg_iov = &iov[i];
		m[i].msg_hdr.msg_iovlen = 1;
	}
	n = (int)CALL(recvmmsg(s, m, 3, MSG_DONTWAIT, NULL),
		      "recvmmsg(%d,3,DONTWAIT)", s);
	for (int i = 0; i < n; i++)
		tr("  msg %d: %u \"%.*s\"", i, m[i].msg_len,
		   (int)m[i].msg_len, b[i]);
	blocks[role].moved += 18;
	tell('R');
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_mmsg(void)
{
	int c = cli_connect(), n;
	const char *parts[3] = { "first-", "second", "third!" };
	struct iovec iov[3];
	struct mmsghdr m[3];

	memset(m, 0, sizeof(m));
	for (int i = 0; i < 3; i++) {
		iov[i].iov_base = (void *)parts[i];
		iov[i].iov_len = 6;
		m[i].msg_hdr.msg_iov = &iov[i];
		m[i].msg_hdr.msg_iovlen = 1;
	}
	n = (int)CALL(sendmmsg(c, m, 3, 0), "sendmmsg(%d,3)", c);
	for (int i = 0; i < n; i++)
		tr("  msg %d: %u", i, m[i].msg_len);
	blocks[role].moved += 18;
	hear('R');
	kclose(c);
}

/* mmsg_timeout: recvmmsg with a timeout of zero returns after the first
 * message (the kernel checks it after each one) instead of blocking for
 * the next, and says no time is left; an invalid timeout is EINVAL. */
static void srv_mmsg_timeout(void)
{
	int l = srv_listen(), s = srv_accept(l), n;
	struct timespec tmo = { 0, 0 }, bad = { 0, 1000000000L };
	char b[3][8];
	struct iovec iov[3];
	struct mmsghdr m[3];

	wait_bytes(s, 16);
	memset(m, 0, sizeof(m));
	for (int i = 0; i < 3; i++) {
		iov[i].iov_base = b[i];
		iov[i].iov_len = sizeof(b[i]);
		m[i].msg_hdr.msg_iov = &iov[i];
		m[i].msg_hdr.msg_iovlen = 1;
	}
	CALL(recvmmsg(s, m, 3, 0, &bad), "recvmmsg(%d,3,tmo 1e9 ns)", s);
	n = (int)CALL(recvmmsg(s, m, 3, 0, &tmo), "recvmmsg(%d,3,tmo 0)", s);
	tr("  left %ld.%09ld", (long)tmo.tv_sec, tmo.tv_nsec);
	for (int i = 0; i < n; i++)
		tr("  msg %d: %u \"%.*s\"", i, m[i].msg_len,
		   (int)m[i].msg_len, b[i]);
	read_exact(s, NULL, 8);
	blocks[role].moved += 16;
	tell('R');
	kclose(s);
	kclose(l);
}

static void cli_mmsg_timeout(void)
{
	int c = cli_connect();

	xwrite(c, "0123456789abcdef");
	blocks[role].moved += 16;
	hear('R');
	kclose(c);
}

/* close_others: the client closes every fd above its socket (as a daemon
 * does at start, or a child before exec): the library's own fds stay,
 * and the connection goes on. */
static void srv_close_others(void)
{
	int l = srv_listen(), s = srv_accept(l);

	read_exact(s, NULL, 10);
	xwrite(s, "still here");
	xread(s, 16);
	kclose(s);
	kclose(l);
}

static void cli_close_others(void)
{
	int c = cli_connect();

	xwrite(c, "before|");
	CALL(close_range((unsigned)c + 1, ~0u, 0), "close_range(%d+1,~0)", c);
	xwrite(c, "aft");
	read_exact(c, NULL, 10);
	kclose(c);
}

/* dup2_others: the client dup2()s /dev/null over every fd that appeared
 * above its socket with the connection (in the preloaded run, the
 * library's own), then closes them, as a program that reuses "free" high
 * numbers may: the library refuses, its fds stay as they were, and the
 * connection goes on. */
static void srv_dup2_others(void)
{
	srv_close_others();
}

#define DUP2_SPAN 65536

static void cli_dup2_others(void)
{
	static unsigned char before[DUP2_SPAN];
	int c, nul, lost = 0, n;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		fatal("getrlimit: %s", ename(errno));
	if (rl.rlim_cur > DUP2_SPAN)
		rl.rlim_cur = DUP2_SPAN;
	for (n = 0; n < (int)rl.rlim_cur; n++)
		before[n] = fcntl(n, F_GETFD) >= 0;
	c = cli_connect();
	xwrite(c, "before|");
	nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul < 0)
		fatal("open /dev/null: %s", ename(errno));
	for (n = c + 1; n < (int)rl.rlim_cur; n++) {
		struct stat a, b;

		if (n == nul || before[n] || fstat(n, &a) < 0)
			continue;
		if (dup2(nul, n) == n)
			close(n);
		/* A refused dup2 leaves the same file there. */
		if (fstat(n, &b) < 0 || a.st_ino != b.st_ino ||
		    a.st_dev != b.st_dev)
			lost++;
	}
	close(nul);
	tr("new fds above the socket that changed: %d", lost);
	xwrite(c, "aft");
	read_exact(c, NULL, 10);
	kclose(c);
}

/* io_uring: after the connection is up, the client reads it through an
 * io_uring instance, past every read hook: the bytes arrive (the
 * library gives the connection back to TCP first). */
static void srv_uring(void)
{
	int l = srv_listen(), s = srv_accept(l);

	read_exact(s, NULL, 5);
	hear('U');
	xwrite(s, "from-server");
	read_exact(s, NULL, 4);
	kclose(s);
	kclose(l);
}

static void cli_uring(void)
{
	int c = cli_connect();
	struct io_uring ring;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	char buf[64] = "";
	int r;

	xwrite(c, "hello");
	r = io_uring_queue_init(8, &ring, 0);
	tr("io_uring_queue_init(8) = %d", r);
	tell('U');
	sqe = io_uring_get_sqe(&ring);
	io_uring_prep_recv(sqe, c, buf, 11, MSG_WAITALL);
	io_uring_submit(&ring);
	r = io_uring_wait_cqe(&ring, &cqe);
	tr("io_uring recv: wait %d res %d \"%.11s\"", r, cqe->res, buf);
	io_uring_cqe_seen(&ring, cqe);
	io_uring_queue_exit(&ring);
	xwrite(c, "done");
	kclose(c);
}

/* connect_ahead: several non-blocking connects made before any is
 * used (an event loop opening its pool): the program's fd numbers are
 * the kernel's, whatever the library holds meanwhile; then each carries
 * a round trip. */
#define AHEAD_N 6

static void srv_connect_ahead(void)
{
	int l = srv_listen(), s[AHEAD_N];

	for (int i = 0; i < AHEAD_N; i++)
		s[i] = srv_accept(l);
	for (int i = 0; i < AHEAD_N; i++) {
		read_exact(s[i], NULL, 4);
		xwrite(s[i], "ack");
	}
	for (int i = 0; i < AHEAD_N; i++)
		kclose(s[i]);
	kclose(l);
}

static void cli_connect_ahead(void)
{
	struct sockaddr_in a = loopback(srv_port());
	int c[AHEAD_N];

	for (int i = 0; i < AHEAD_N; i++) {
		c[i] = (int)CALL(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0),
				 "socket(INET,STREAM|NONBLOCK)");
		CALL(connect(c[i], (struct sockaddr *)&a, sizeof(a)) == 0 ||
		     errno == EINPROGRESS ? 0 : -1,
		     "connect(%d) started", c[i]);
		sleep_ms(20);   /* the library's answers arrive meanwhile */
	}
	for (int i = 0; i < AHEAD_N; i++) {
		char m[8];

		wait_event(c[i], POLLOUT);
		snprintf(m, sizeof(m), "req%d", i);
		xwrite(c[i], m);
		wait_bytes(c[i], 3);
		xread(c[i], 3);
	}
	for (int i = 0; i < AHEAD_N; i++)
		kclose(c[i]);
}

/*
 * epoll_many: one epoll set of MANY_N connections, one of them active at
 * a time: each wait reports exactly the one that has a byte.  (With the
 * preload, behaviour.c also checks through the stats page that the waits
 * looked at about MANY_N registrations in all, not MANY_N per wait.)
 */
#define MANY_N		2000
#define MANY_ROUNDS	20

/* Traced epoll_wait of the set whose data are connection indexes. */
static int ep_wait_idx(int ep, int timeout)
{
	struct epoll_event e[8];
	char ev[96];
	int n;

	n = (int)CALL(epoll_wait(ep, e, 8, timeout), "epoll_wait(%d,%d)", ep, timeout);
	for (int i = 0; i < n; i++)
		tr("  conn %u events %s", e[i].data.u32,
		   evname(ev, sizeof(ev), e[i].events));
	return n;
}

static void srv_epoll_many(void)
{
	static int s[MANY_N];
	int l = srv_listen(), ep, added = 0;

	listen(l, 4096);	/* the client connects faster than 16 ahead */
	for (int i = 0; i < MANY_N; i++) {
		s[i] = accept(l, NULL, NULL);
		if (s[i] < 0)
			fatal("accept %d: %s", i, ename(errno));
	}
	tr("accepted %d", MANY_N);
	ep = (int)CALL(epoll_create1(EPOLL_CLOEXEC), "epoll_create1(CLOEXEC)");
	for (int i = 0; i < MANY_N; i++) {
		struct epoll_event e = { .events = EPOLLIN, .data.u32 = (uint32_t)i };

		added += epoll_ctl(ep, EPOLL_CTL_ADD, s[i], &e) == 0;
	}
	tr("added %d", added);
	ep_wait_idx(ep, 0);
	for (int r = 0; r < MANY_ROUNDS; r++) {
		int hot = (r * 997 + 1234) % MANY_N;

		tell('G');	/* the client writes one byte on conn hot */
		ep_wait_idx(ep, WAIT_MS);
		xread(s[hot], 16);
		ep_wait_idx(ep, 0);
	}
	tell('D');
	for (int i = 0; i < MANY_N; i++) {
		kinfo(s[i]);
		close(s[i]);
	}
	tr("closed %d", MANY_N);
	CALL(close(ep), "close(%d)", ep);
	kclose(l);
}

static void cli_epoll_many(void)
{
	static int c[MANY_N];
	struct sockaddr_in a = loopback(srv_port());

	for (int i = 0; i < MANY_N; i++) {
		c[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (c[i] < 0 || connect(c[i], (struct sockaddr *)&a, sizeof(a)))
			fatal("connect %d: %s", i, ename(errno));
	}
	tr("connected %d", MANY_N);
	for (int r = 0; r < MANY_ROUNDS; r++) {
		hear('G');
		xwrite(c[(r * 997 + 1234) % MANY_N], "x");
	}
	hear('D');
	for (int i = 0; i < MANY_N; i++) {
		kinfo(c[i]);
		close(c[i]);
	}
	tr("closed %d", MANY_N);
}

/*
 * epoll_connecting: non-blocking connects registered in epoll before the
 * library decides them (their registrations are the kernel's until then,
 * and move to the emulated sets when the connection goes UB): one added
 * after connect() and modified before its first write; one added to two
 * sets, one closed (and its number reused by a new set) first; one added
 * before connect(); one registered through a dup of the fd.
 */
#define CONNECTING_N 4

static void srv_epoll_connecting(void)
{
	int l = srv_listen(), s[CONNECTING_N];

	for (int i = 0; i < CONNECTING_N; i++) {
		s[i] = srv_accept(l);
		read_exact(s[i], NULL, 4);
		xwrite(s[i], "ok");
	}
	hear('D');
	for (int i = 0; i < CONNECTING_N; i++)
		kclose(s[i]);
	kclose(l);
}

/* A non-blocking socket whose connect() is under way. */
static int cli_connect_started(int fd)
{
	struct sockaddr_in a = loopback(srv_port());

	CALL(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 ||
	     errno == EINPROGRESS ? 0 : -1, "connect(%d) started", fd);
	return fd;
}

static int nb_socket(void)
{
	return (int)CALL(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0),
			 "socket(INET,STREAM|NONBLOCK)");
}

static void cli_epoll_connecting(void)
{
	int a, b, c, d, d2, ep1, ep2, ep3, ep4, ep5, ep6;

	srv_port();
	/* Added after connect(), OUT; then IN before the first write. */
	ep1 = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	a = cli_connect_started(nb_socket());
	ep_ctl(ep1, EPOLL_CTL_ADD, a, EPOLLOUT, "OUT");
	ep_wait(ep1, WAIT_MS);
	ep_ctl(ep1, EPOLL_CTL_MOD, a, EPOLLIN, "IN");
	xwrite(a, "reqA");
	ep_wait(ep1, WAIT_MS);
	xread(a, 16);
	ep_wait(ep1, 0);
	ep_ctl(ep1, EPOLL_CTL_ADD, a, EPOLLIN, "IN");		/* EEXIST */

	/* In two sets; one closed and its number reused before the first
	 * write: the new set has nothing of it. */
	ep2 = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	ep3 = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	b = cli_connect_started(nb_socket());
	ep_ctl(ep2, EPOLL_CTL_ADD, b, EPOLLIN, "IN");
	ep_ctl(ep3, EPOLL_CTL_ADD, b, EPOLLIN | EPOLLOUT, "IN|OUT");
	CALL(close(ep3), "close(%d)", ep3);
	ep4 = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	wait_event(b, POLLOUT);
	xwrite(b, "reqB");
	ep_wait(ep2, WAIT_MS);
	ep_wait(ep4, 0);
	ep_ctl(ep4, EPOLL_CTL_DEL, b, 0, "0");			/* ENOENT */
	ep_ctl(ep4, EPOLL_CTL_ADD, b, EPOLLIN | EPOLLOUT, "IN|OUT");
	ep_wait(ep4, 0);
	xread(b, 16);
	ep_wait(ep2, 0);

	/* Added before connect(). */
	ep5 = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	c = nb_socket();
	ep_ctl(ep5, EPOLL_CTL_ADD, c, EPOLLIN, "IN");
	cli_connect_started(c);
	wait_event(c, POLLOUT);
	xwrite(c, "reqC");
	ep_wait(ep5, WAIT_MS);
	xread(c, 16);
	ep_wait(ep5, 0);

	/* Registered through a dup made while connecting. */
	ep6 = (int)CALL(epoll_create1(0), "epoll_create1(0)");
	d = cli_connect_started(nb_socket());
	d2 = (int)CALL(dup(d), "dup(%d)", d);
	ep_ctl(ep6, EPOLL_CTL_ADD, d2, EPOLLIN, "IN");
	wait_event(d, POLLOUT);
	xwrite(d, "reqD");
	ep_wait(ep6, WAIT_MS);
	xread(d2, 16);
	ep_wait(ep6, 0);

	tell('D');
	CALL(close(d2), "close(%d)", d2);
	kclose(a);
	kclose(b);
	kclose(c);
	kclose(d);
	CALL(close(ep1), "close(%d)", ep1);
	CALL(close(ep2), "close(%d)", ep2);
	CALL(close(ep4), "close(%d)", ep4);
	CALL(close(ep5), "close(%d)", ep5);
	CALL(close(ep6), "close(%d)", ep6);
}

static const struct sockcase cases[] = {
	CASE(roundtrip, 1),
	CASE(bulk, 1),
	CASE(readv_writev, 1),
	CASE(recv_flags, 1),
	CASE(sendto_sendmsg, 1),
	CASE(nonblock_connect, 1),
	CASE(accept4_flags, 2),
	CASE(fill_eagain, 1),
	CASE(half_close, 1),
	CASE(close_remaining, 1),
	CASE(peer_reset, 1),
	CASE_EXACT2(late_accept, 0, 2),
	CASE(late_accept_close, 0),
	CASE(raw_accept, 0),
	CASE(other_uid_accept, 0),
	CASE_EXACT(board_full, 8),
	CASE(peer_killed, 1),
	CASE(poll_select, 1),
	CASE(epoll_lt, 1),
	CASE(epoll_et, 1),
	CASE(epoll_oneshot, 1),
	CASE(epoll_rdhup, 1),
	CASE(fionread, 1),
	CASE(names, 1),
	CASE(fork_shared, 1),
	CASE(dup_fds, 2),
	CASE(nonblock_fcntl, 1),
	CASE(rcvtimeo, 1),
	CASE(refused, 0),
	CASE(server_first, 1),
	CASE(sequential, SEQ_N),
	CASE(duplex, 1),
	CASE(sigpipe, 1),
	CASE(sendfile, 1),
	CASE(splice, 1),
	CASE(exec_inherit, 1),
	CASE_EXACT(exec_keep, 3),
	CASE_EXACT(exec_drop, 2),
	CASE(demote_poll, 1),
	CASE_EXACT(exec_forged, 2),
	CASE_EXACT(exec_fails, 2),
	CASE(plain_peer, 0),
	CASE(eintr_restart, 1),
	CASE(eintr_norestart, 1),
	CASE(eintr_timeout, 1),
	CASE(eintr_poll, 1),
	CASE(eintr_partial, 1),
	CASE(handler_write, 1),
	CASE(threads_close, 1),
	CASE_EXACT(policy_flip, 2),
	CASE_EXACT2(daemon_restart, 4, 6),
	CASE(mmsg, 1),
	CASE(mmsg_timeout, 1),
	CASE(fork_handoff, 1),
	CASE(close_others, 1),
	CASE(dup2_others, 1),
	CASE(uring, 1),
	CASE(connect_ahead, AHEAD_N),
	CASE(epoll_many, MANY_N),
	CASE(epoll_connecting, CONNECTING_N),
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

static const struct sockcase *the_case;

/* ------------------------------------------------------------------ */
/* Process structure                                                  */

static void write_str(const char *s, size_t n)
{
	while (n > 0) {
		ssize_t r = write(STDOUT_FILENO, s, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		s += r;
		n -= (size_t)r;
	}
}

/* Server: print every block (server, client, child) in that order. */
static void print_blocks(void)
{
	char head[64];

	for (int r = 0; r < R_NR; r++) {
		struct block *b = &blocks[r];
		if (!b->used)
			continue;
		snprintf(head, sizeof(head), "== %s\n", role_names[r]);
		write_str(head, strlen(head));
		write_str(b->text, b->len);
		if (b->truncated)
			write_str("(trace truncated)\n", 18);
	}
}

/* Server: the kernel counters and what moved, into $SOCKCASE_KSTATS. */
static void write_kstats(void)
{
	const char *path = getenv("SOCKCASE_KSTATS");
	uint64_t k = 0, m = 0;
	int exact = the_case->exact_ub;
	FILE *f;

	if (!path || !*path)
		return;
	for (int r = 0; r < R_NR; r++) {
		k += blocks[r].kbytes;
		m += blocks[r].moved;
	}
	f = fopen(path, "w");
	if (!f)
		return;
	{
		const char *b = getenv("UBS_BOARD");

		if (the_case->exact_board && !(b && !strcmp(b, "0")))
			exact = the_case->exact_board;
	}
	fprintf(f, "kbytes %llu\nmoved %llu\nexpect_ub %d\nexact_ub %d\n",
		(unsigned long long)k, (unsigned long long)m, the_case->expect_ub,
		exact);
	fclose(f);
}

/* Reaps the client (bounded by the alarm) and traces how it ended. */
static int reap_client(void)
{
	int st = 0;

	if (client_pid <= 0)
		return 0;
	while (waitpid(client_pid, &st, 0) < 0) {
		if (errno != EINTR) {
			tr("waitpid(client): %s", ename(errno));
			return 1;
		}
	}
	client_pid = -1;
	if (WIFEXITED(st)) {
		if (WEXITSTATUS(st))
			tr("client exit %d", WEXITSTATUS(st));
		return WEXITSTATUS(st) != 0;
	}
	tr("client killed by signal %d", WTERMSIG(st));
	return !client_may_die;
}

/*
 * Ends this process.  A client or child just exits (its block is shared).
 * The server reaps the client, prints everything and writes the kstats.
 */
static void finish(int rc)
{
	if (exec_out >= 0) {
		char head[64];
		struct block *b = &blocks[role];
		int n = snprintf(head, sizeof(head), "K %llu %llu\n",
				 (unsigned long long)b->kbytes, (unsigned long long)b->moved);
		if (write(exec_out, head, (size_t)n) == n)
			(void)!write(exec_out, b->text, b->len);
		_exit(rc);
	}
	if (role != R_SERVER)
		_exit(rc);
	if (rc && client_pid > 0)
		kill(client_pid, SIGKILL);
	if (reap_client() && !rc)
		rc = 1;
	print_blocks();
	write_kstats();
	exit(rc);
}

/* Server's SIGALRM: the case hung.  Kill and reap the client, print, exit 2. */
static void on_alarm(int sig)
{
	static const char msg[] = "TIMEOUT\n";
	struct block *b = &blocks[R_SERVER];

	(void)sig;
	if (b->len + sizeof(msg) < TRACE_MAX) {	/* no stdio in a handler */
		memcpy(b->text + b->len, msg, sizeof(msg) - 1);
		b->len += sizeof(msg) - 1;
	}
	if (client_pid > 0) {
		kill(client_pid, SIGKILL);
		waitpid(client_pid, NULL, 0);
	}
	print_blocks();
	_exit(2);
}

/* An exec'd role's SIGALRM: say so and end (its trace goes out first). */
static void on_exec_alarm(int sig)
{
	(void)sig;
	tr("TIMEOUT");
	finish(2);
}

/* sockcase --exec ROLE A B OUTFD: run an exec'd role; see exec_role(). */
static int exec_main(char **argv)
{
	static const struct {
		const char *name;
		void (*fn)(int, int);
	} roles[] = { { "inherit", exec_inherit }, { "plain", exec_plain },
		      { "keep", exec_keep }, { "forged", exec_forged } };

	blocks = calloc(R_NR, sizeof(*blocks));
	if (!blocks)
		return 1;
	role = R_CHILD;
	exec_out = atoi(argv[5]);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_exec_alarm);
	alarm(5);
	for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
		if (!strcmp(argv[2], roles[i].name)) {
			roles[i].fn(atoi(argv[3]), atoi(argv[4]));
			finish(0);
		}
	fatal("no exec role %s", argv[2]);
}

int main(int argc, char **argv)
{
	int s2c[2], c2s[2];
	pid_t pid;

	if (argc == 2 && !strcmp(argv[1], "--list")) {
		for (size_t i = 0; i < NCASES; i++)
			printf("%s\n", cases[i].name);
		return 0;
	}
	if (argc == 6 && !strcmp(argv[1], "--exec"))
		return exec_main(argv);
	for (size_t i = 0; argc == 2 && i < NCASES; i++)
		if (!strcmp(argv[1], cases[i].name))
			the_case = &cases[i];
	if (!the_case) {
		fprintf(stderr, "usage: sockcase --list | sockcase CASE\n");
		return 64;
	}
	{
		/* The suite's pipes (see harness()): not for exec'd programs. */
		const char *h = getenv("SOCKCASE_HARNESS");
		int wfd, rfd;

		if (h && sscanf(h, "%d,%d", &wfd, &rfd) == 2) {
			fcntl(wfd, F_SETFD, FD_CLOEXEC);
			fcntl(rfd, F_SETFD, FD_CLOEXEC);
		}
	}
	signal(SIGPIPE, SIG_IGN);
	blocks = mmap(NULL, sizeof(struct block) * R_NR, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (blocks == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	if (pipe(s2c) || pipe(c2s)) {
		perror("pipe");
		return 1;
	}
	blocks[R_SERVER].used = blocks[R_CLIENT].used = 1;
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) {
		role = R_CLIENT;
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		alarm(ALARM_S);
		close(s2c[1]);
		close(c2s[0]);
		sync_in = s2c[0];
		sync_out = c2s[1];
		the_case->client();
		finish(0);
	}
	client_pid = pid;
	signal(SIGALRM, on_alarm);
	alarm(ALARM_S);
	close(s2c[0]);
	close(c2s[1]);
	sync_out = s2c[1];
	sync_in = c2s[0];
	the_case->server();
	finish(0);
}

/* SPDX-License-Identifier: MIT */
/*
 * netns_e2e.c - rendezvous across network namespaces through a real
 * ubsd, with real namespaces: A and B joined by a veth pair (10.77.0.1 in
 * A, 10.77.0.2 in B), as containers are.  A server socket listening in A
 * and a client socket connected from B, created inside their namespaces
 * by forked children (setns), talk to the daemon of the root namespace
 * (LISTEN, PUBLISH, REQUEST with the sockets passed over SCM_RIGHTS):
 *
 *  - they get a channel and move bytes over it, whichever of PUBLISH and
 *    REQUEST comes first;
 *  - with `cross_netns = off` (applied by SIGHUP) they get TCP, at once
 *    rather than at the request's timeout, and a channel again once it is
 *    back on;
 *  - a client whose tuple does not mirror a publication gets TCP;
 *  - a stranger (namespace C, which holds both addresses itself and
 *    makes the very same tuple between its own sockets) gets TCP, and the
 *    real peer in B still gets the channel;
 *  - a client whose connection no registered listener can have accepted
 *    (A's wildcard server and a client connecting to another host's
 *    address on its port: B's, or C's behind B; B's own address or
 *    loopback from B) gets TCP in well under 100 ms, not after its
 *    500 ms (the times are printed), while the connections A's server
 *    does accept, from B and from A, still get their channel.
 *
 * Needs root and iproute2 (`ip netns`, veth): when they are missing or
 * not permitted the tests FAIL, saying so; they never skip.  Namespaces
 * and links are named after the test process (unique) and removed at the
 * end of each test; every process is bounded and reaped by pid.
 */
#include <criterion/criterion.h>

#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "policy.h"
#include "ubt.h"
#include "support/dtest.h"
#include "support/rvtest.h"

#define ADDR_A "10.77.0.1"
#define ADDR_B "10.77.0.2"
#define ADDR_BC "10.78.0.1"     /* B's end of the B-C link */
#define ADDR_C "10.78.0.2"

static char ubsd_path[PATH_MAX];

/* ------------------------------------------------------ namespaces */

static char ns_a[32], ns_b[32], ns_c[32], veth_a[16], veth_b[16];
static int have_a, have_b, have_c, have_veth;

/*
 * Run `ip ARGS` (ARGS: the formatted text split at spaces), bounded by
 * WAIT_MS; its output (stdout and stderr) in out.  Returns its exit
 * status, 127 when ip cannot be run, -1 when killed.
 */
static int ip(char *out, size_t n, const char *fmt, ...)
{
	char cmd[256], *argv[24], *save = NULL, *tok;
	int po[2], argc = 0, status;
	size_t len = 0;
	va_list ap;
	pid_t pid;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	argv[argc++] = "ip";
	for (tok = strtok_r(cmd, " ", &save); tok && argc < 23;
	     tok = strtok_r(NULL, " ", &save))
		argv[argc++] = tok;
	argv[argc] = NULL;
	cr_assert(pipe2(po, O_CLOEXEC) == 0);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(po[1], STDOUT_FILENO);
		dup2(po[1], STDERR_FILENO);
		execvp("ip", argv);
		fprintf(stderr, "cannot run ip: %s", strerror(errno));
		_exit(127);
	}
	close(po[1]);
	out[0] = '\0';
	for (uint64_t end = dt_now_ms() + WAIT_MS; dt_now_ms() < end;) {
		struct pollfd p = { .fd = po[0], .events = POLLIN };
		ssize_t r;

		if (poll(&p, 1, 50) <= 0)
			continue;
		r = read(po[0], out + len, n - 1 - len);
		if (r <= 0)
			break;
		len += (size_t)r;
		out[len] = '\0';
		if (len + 1 >= n)
			break;
	}
	close(po[0]);
	status = dt_reap(pid);
	return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* `ip ARGS` must succeed; otherwise the test fails, saying why. */
#define IP(...) do {							\
	char o_[512], c_[256];						\
	int rc_ = ip(o_, sizeof(o_), __VA_ARGS__);			\
	snprintf(c_, sizeof(c_), __VA_ARGS__);				\
	cr_assert_eq(rc_, 0, "`ip %s` failed (exit %d): %s\n"		\
		     "this test needs root and iproute2 (ip netns, veth); " \
		     "see scripts/setup-deps", c_, rc_, o_);		\
} while (0)

/* A namespace of ours with lo up. */
static void ns_add(const char *name, int *have)
{
	IP("netns add %s", name);
	*have = 1;
	IP("-n %s link set lo up", name);
}

/* A and B joined by a veth pair, both ends up. */
static void make_pair(void)
{
	long me = (long)getpid();

	snprintf(ns_a, sizeof(ns_a), "ubs-e2e-%ld-a", me);
	snprintf(ns_b, sizeof(ns_b), "ubs-e2e-%ld-b", me);
	snprintf(veth_a, sizeof(veth_a), "ubsA%ld", me);
	snprintf(veth_b, sizeof(veth_b), "ubsB%ld", me);
	ns_add(ns_a, &have_a);
	ns_add(ns_b, &have_b);
	IP("link add %s type veth peer name %s", veth_a, veth_b);
	have_veth = 1;
	IP("link set %s netns %s", veth_a, ns_a);
	IP("link set %s netns %s", veth_b, ns_b);
	have_veth = 0;          /* gone with the namespaces */
	IP("-n %s addr add " ADDR_A "/24 dev %s", ns_a, veth_a);
	IP("-n %s addr add " ADDR_B "/24 dev %s", ns_b, veth_b);
	IP("-n %s link set %s up", ns_a, veth_a);
	IP("-n %s link set %s up", ns_b, veth_b);
}

/* C as another host behind B: a veth pair B-C, C routed only to B. */
static void make_remote(void)
{
	long me = (long)getpid();
	char vb[16], vc[16];

	snprintf(ns_c, sizeof(ns_c), "ubs-e2e-%ld-c", me);
	snprintf(vb, sizeof(vb), "ubsC%ld", me);
	snprintf(vc, sizeof(vc), "ubsD%ld", me);
	ns_add(ns_c, &have_c);
	IP("-n %s link add %s type veth peer name %s netns %s", ns_b, vb, vc,
	   ns_c);
	IP("-n %s addr add " ADDR_BC "/24 dev %s", ns_b, vb);
	IP("-n %s addr add " ADDR_C "/24 dev %s", ns_c, vc);
	IP("-n %s link set %s up", ns_b, vb);
	IP("-n %s link set %s up", ns_c, vc);
}

/* C: both addresses on its own lo, no link to anyone. */
static void make_stranger(void)
{
	snprintf(ns_c, sizeof(ns_c), "ubs-e2e-%ld-c", (long)getpid());
	ns_add(ns_c, &have_c);
	IP("-n %s addr add " ADDR_A "/32 dev lo", ns_c);
	IP("-n %s addr add " ADDR_B "/32 dev lo", ns_c);
}

static void drop_namespaces(void)
{
	char o[512];

	if (have_veth)
		ip(o, sizeof(o), "link del %s", veth_a);
	if (have_a)
		cr_expect_eq(ip(o, sizeof(o), "netns del %s", ns_a), 0, "%s", o);
	if (have_b)
		cr_expect_eq(ip(o, sizeof(o), "netns del %s", ns_b), 0, "%s", o);
	if (have_c)
		cr_expect_eq(ip(o, sizeof(o), "netns del %s", ns_c), 0, "%s", o);
	have_veth = have_a = have_b = have_c = 0;
}

/* In a child: move into namespace name. */
static void enter(const char *name)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/run/netns/%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	REQUIRE(fd >= 0);
	REQUIRE(setns(fd, CLONE_NEWNET) == 0);
	close(fd);
}

/* ------------------------------------------------------- processes */

static void setup(void)
{
	dt_bin_path(ubsd_path, sizeof(ubsd_path), "ubsd");
	dt_make_run_dir("/tmp/ubsd-netns.XXXXXX");
	dt_start_daemon(ubsd_path);
}

static void teardown(void)
{
	dt_reap_kids();
	drop_namespaces();
	dt_teardown();
}

TestSuite(netns_e2e, .init = setup, .fini = teardown, .timeout = 60);

static const char ping[] = "ping across namespaces", pong[] = "pong!";

/* ---------------------------------------------------------- actors */

/*
 * The server, in namespace ns: listens on 0.0.0.0 (reports the port),
 * then for each connection the test announces (go: 1 = publish and
 * talk over the channel, 2 = publish and expect nothing, 0 = end),
 * accepts, publishes, reports 1, and with 1 exchanges bytes over the
 * channel and reports 2.
 */
struct srv {
	const char *ns;
	int up[2], go[2];
};

static void server(void *arg)
{
	struct srv *s = arg;
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int ctl, lfd, one = 1;
	uint32_t cmd;

	enter(s->ns);
	ctl = dt_hello("netns-server");
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(lfd >= 0);
	REQUIRE(setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one,
			   sizeof(one)) == 0);
	REQUIRE(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	REQUIRE(listen(lfd, 16) == 0);
	REQUIRE(getsockname(lfd, (struct sockaddr *)&sin, &len) == 0);
	dt_send(ctl, CTL_REQ_LISTEN, NULL, 0, &lfd, 1);
	dt_expect(ctl, CTL_R_OK, NULL, NULL);
	dt_pipe_put(s->up[1], ntohs(sin.sin_port));
	while ((cmd = dt_pipe_get(s->go[0])) != 0) {
		struct ubt_chan ch;
		struct ctl_chan m;
		char buf[64];
		int afd, fds[2];

		afd = accept(lfd, NULL, NULL);
		REQUIRE(afd >= 0);
		REQUIRE(ubt_chan_create_stream(&ch, 4096) == 0);
		fds[0] = afd;
		fds[1] = ch.seg.fd;
		dt_send(ctl, CTL_REQ_PUBLISH, NULL, 0, fds, 2);
		dt_expect(ctl, CTL_R_PUBLISHED, &m, NULL);
		dt_pipe_put(s->up[1], 1);
		if (cmd == 1) {
			dt_ring_write(&ch, ping, sizeof(ping));
			dt_ring_read(&ch, buf, sizeof(pong));
			REQUIRE(memcmp(buf, pong, sizeof(pong)) == 0);
			REQUIRE(dt_tcp_queued(afd) == 0);
			dt_pipe_put(s->up[1], 2);
		}
		ubt_chan_close(&ch);
		close(afd);
	}
	close(lfd);
	close(ctl);
}

static pid_t start_server(struct srv *s, const char *ns, uint16_t *port)
{
	pid_t pid;

	s->ns = ns;
	pid = dt_spawn_piped(server, s, s->up, s->go);
	*port = (uint16_t)dt_pipe_get(s->up[0]);
	return pid;
}

static void stop_server(struct srv *s, pid_t pid)
{
	dt_end_piped(pid, s->up, s->go, "server");
}

/*
 * A client, in namespace ns: connects from src (address, port; port 0:
 * any) to dst:port, reports 1, waits for go, sends REQUEST (timeout
 * tmo_ms) and reports the answer: its type, its time in ms, and for
 * R_TCP the reason; with a channel it exchanges bytes with the server.
 * With keep, it holds the connection open until told 0.
 */
struct cli {
	const char *ns, *src, *dst;
	uint16_t sport, port;
	uint32_t tmo_ms;
	uint32_t repeat;        /* after a TCP answer: as many more
				 * requests, timed (struct timing) */
	int up[2], go[2];
};

struct result {
	uint32_t type, ms, us;
	char reason[64];
};

/* The repeated requests: all TCP (with the first one's reason), and
 * their times in µs. */
struct timing {
	uint32_t all_tcp, min_us, median_us, max_us;
};

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int tcp_connect(const char *src, uint16_t sport, const char *dst,
		       uint16_t port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	REQUIRE(fd >= 0);
	if (src) {
		REQUIRE(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
				   sizeof(one)) == 0);
		sin.sin_port = htons(sport);
		REQUIRE(inet_pton(AF_INET, src, &sin.sin_addr) == 1);
		REQUIRE(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	}
	sin.sin_port = htons(port);
	REQUIRE(inet_pton(AF_INET, dst, &sin.sin_addr) == 1);
	REQUIRE(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	return fd;
}

static void client(void *arg)
{
	struct cli *c = arg;
	struct ctl_request q = { .timeout_ms = c->tmo_ms };
	struct result res;
	union {
		struct ctl_chan chan;
		struct ctl_tcp tcp;
		unsigned char raw[CTL_MAX_BODY];
	} m;
	struct ctl_hdr h;
	int ctl, fd, fds[4], nfds = 4;
	uint64_t t0;

	enter(c->ns);
	fd = tcp_connect(c->src, c->sport, c->dst, c->port);
	ctl = dt_hello("netns-client");
	dt_pipe_put(c->up[1], 1);
	if (dt_pipe_get(c->go[0]) == 0)
		return;
	t0 = dt_now_us();
	dt_send(ctl, CTL_REQ_REQUEST, &q, sizeof(q), &fd, 1);
	REQUIRE(dt_recv(ctl, &h, &m, fds, &nfds) == 0);
	memset(&res, 0, sizeof(res));
	res.type = h.type;
	res.us = (uint32_t)(dt_now_us() - t0);
	res.ms = res.us / 1000;
	if (h.type == CTL_R_TCP)
		snprintf(res.reason, sizeof(res.reason), "%.63s", m.tcp.reason);
	REQUIRE(write(c->up[1], &res, sizeof(res)) == sizeof(res));
	if (h.type == CTL_R_TCP && c->repeat) {
		uint32_t *us = calloc(c->repeat, sizeof(*us));
		struct timing tm = { .all_tcp = 1 };

		REQUIRE(us);
		for (uint32_t i = 0; i < c->repeat; i++) {
			int k = 4;

			t0 = dt_now_us();
			dt_send(ctl, CTL_REQ_REQUEST, &q, sizeof(q), &fd, 1);
			REQUIRE(dt_recv(ctl, &h, &m, fds, &k) == 0);
			us[i] = (uint32_t)(dt_now_us() - t0);
			for (int j = 0; j < k; j++)
				close(fds[j]);
			m.tcp.reason[sizeof(m.tcp.reason) - 1] = '\0';
			if (h.type != CTL_R_TCP ||
			    strcmp(m.tcp.reason, res.reason))
				tm.all_tcp = 0;
		}
		qsort(us, c->repeat, sizeof(*us), cmp_u32);
		tm.min_us = us[0];
		tm.median_us = us[c->repeat / 2];
		tm.max_us = us[c->repeat - 1];
		free(us);
		REQUIRE(write(c->up[1], &tm, sizeof(tm)) == sizeof(tm));
	}
	if (h.type == CTL_R_CHANNEL) {
		struct ubt_chan ch;
		char buf[64];

		REQUIRE(nfds == 1);
		REQUIRE(ubt_chan_attach(&ch, fds[0], -1) == 0);
		dt_ring_read(&ch, buf, sizeof(ping));
		REQUIRE(memcmp(buf, ping, sizeof(ping)) == 0);
		dt_ring_write(&ch, pong, sizeof(pong));
		REQUIRE(dt_tcp_queued(fd) == 0);
		dt_pipe_put(c->up[1], 2);
		ubt_chan_close(&ch);
	} else {
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
	}
	dt_pipe_get(c->go[0]);     /* hold the connection until told */
	close(fd);
	close(ctl);
}

static pid_t start_client(struct cli *c)
{
	pid_t pid;

	pid = dt_spawn_piped(client, c, c->up, c->go);
	cr_assert_eq(dt_pipe_get(c->up[0]), 1, "client did not connect");
	return pid;
}

static struct result client_result(struct cli *c)
{
	struct pollfd p = { .fd = c->up[0], .events = POLLIN };
	struct result r;

	cr_assert_eq(poll(&p, 1, WAIT_MS), 1, "no answer to the request");
	cr_assert_eq(read(c->up[0], &r, sizeof(r)), (ssize_t)sizeof(r),
		     "client failed");
	r.reason[sizeof(r.reason) - 1] = '\0';
	return r;
}

static void stop_client(struct cli *c, pid_t pid)
{
	dt_end_piped(pid, c->up, c->go, "client");
}

/*
 * One connection from B to A's server: publish first (pub_first) or
 * request first, then check the answer: a channel the two talk over
 * (want_chan), or TCP with reason want_reason well before the request's
 * own timeout.
 */
static void connection_from(struct srv *s, const char *ns, const char *dst,
			    uint16_t port, int pub_first, int want_chan,
			    const char *want_reason)
{
	struct cli c = { .ns = ns, .dst = dst, .port = port, .tmo_ms = 2000 };
	struct result r;
	pid_t pid;

	pid = start_client(&c);
	if (pub_first) {
		dt_pipe_put(s->go[1], want_chan ? 1 : 2);
		cr_assert_eq(dt_pipe_get(s->up[0]), 1,
			     "server did not publish");
		dt_pipe_put(c.go[1], 1);
	} else {
		dt_pipe_put(c.go[1], 1);
		sleep_ms(100);  /* the request waits in the daemon */
		dt_pipe_put(s->go[1], want_chan ? 1 : 2);
		cr_assert_eq(dt_pipe_get(s->up[0]), 1,
			     "server did not publish");
	}
	r = client_result(&c);
	if (want_chan) {
		cr_assert_eq(r.type, CTL_R_CHANNEL,
			     "%s first: wanted a channel, got type %#x (%s)",
			     pub_first ? "publish" : "request", r.type,
			     r.reason);
		cr_assert_eq(dt_pipe_get(c.up[0]), 2, "client side failed");
		cr_assert_eq(dt_pipe_get(s->up[0]), 2, "server side failed");
	} else {
		cr_assert_eq(r.type, CTL_R_TCP,
			     "%s first: wanted TCP, got type %#x",
			     pub_first ? "publish" : "request", r.type);
		cr_assert_str_eq(r.reason, want_reason);
		cr_assert_lt(r.ms, 1000, "TCP only near the timeout (%u ms)",
			     r.ms);
	}
	stop_client(&c, pid);
}

/* The same, from B to A's address. */
static void one_connection(struct srv *s, uint16_t port, int pub_first,
			   int want_chan, const char *want_reason)
{
	connection_from(s, ns_b, ADDR_A, port, pub_first, want_chan,
			want_reason);
}

/*
 * A plain listening socket (never registered with ubsd) in namespace ns
 * on addr:port (addr NULL: 0.0.0.0), held by a child until it is killed;
 * its backlog completes the connections made to it.
 */
struct plain {
	const char *ns, *addr;
	uint16_t port;
	int lp[2];              /* child -> test: listening */
};

static void plain_child(void *arg)
{
	struct plain *p = arg;
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons(p->port) };
	int lfd, one = 1;

	enter(p->ns);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	REQUIRE(lfd >= 0);
	REQUIRE(setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one,
			   sizeof(one)) == 0);
	if (p->addr)
		REQUIRE(inet_pton(AF_INET, p->addr, &sin.sin_addr) == 1);
	REQUIRE(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	REQUIRE(listen(lfd, 16) == 0);
	dt_pipe_put(p->lp[1], 1);
	pause();
}

static pid_t plain_listener(const char *ns, const char *addr, uint16_t port)
{
	struct plain p = { .ns = ns, .addr = addr, .port = port };
	pid_t pid;

	cr_assert(pipe(p.lp) == 0);
	pid = dt_spawn(plain_child, &p);
	close(p.lp[1]);
	cr_assert_eq(dt_pipe_get(p.lp[0]), 1, "plain listener in %s failed",
		     ns);
	close(p.lp[0]);
	return pid;
}

/*
 * A client in ns connects to dst:port, somewhere no registered listener
 * can have accepted it, and asks (timeout 500 ms, the preload's
 * UBS_CONNECT_WAIT_MS): TCP, reason want_reason, in well under 100 ms;
 * then `repeat` more requests on the same socket, all answered the same
 * way, timed.  Returns the first answer's time in µs.
 */
static uint32_t no_listener_could(const char *ns, const char *dst,
				  uint16_t port, const char *want_reason,
				  uint32_t repeat)
{
	struct cli c = { .ns = ns, .dst = dst, .port = port, .tmo_ms = 500,
			 .repeat = repeat };
	struct timing tm;
	struct result r;
	pid_t pid;

	pid = start_client(&c);
	dt_pipe_put(c.go[1], 1);
	r = client_result(&c);
	fprintf(stderr, "netns_e2e: %s -> %s:%u: %s \"%s\" after %u us\n",
		ns, dst, port, r.type == CTL_R_TCP ? "R_TCP" : "not R_TCP",
		r.reason, r.us);
	cr_assert_eq(r.type, CTL_R_TCP, "%s -> %s: type %#x", ns, dst,
		     r.type);
	cr_assert_str_eq(r.reason, want_reason, "%s -> %s", ns, dst);
	cr_assert_lt(r.us, 100000, "%s -> %s: TCP after %u us", ns, dst,
		     r.us);
	if (repeat) {
		struct pollfd p = { .fd = c.up[0], .events = POLLIN };

		cr_assert_eq(poll(&p, 1, WAIT_MS), 1, "no timing");
		cr_assert_eq(read(c.up[0], &tm, sizeof(tm)),
			     (ssize_t)sizeof(tm), "client failed");
		cr_assert(tm.all_tcp, "a repeated request was not %s",
			  want_reason);
		fprintf(stderr, "netns_e2e: %u more: min %u us, median %u us, "
			"max %u us\n", repeat, tm.min_us, tm.median_us,
			tm.max_us);
		cr_assert_lt(tm.max_us, 100000);
	}
	stop_client(&c, pid);
	return r.us;
}

/* Rewrite ubs.conf, SIGHUP the daemon and wait until the reload is
 * published (the policy page's generation moves). */
static void reload(const char *conf)
{
	struct ctl_policy pol;
	struct ubt_seg pg;
	uint64_t g;
	int ctl = dt_ctl_connect(), fds[4];

	cr_assert(ctl >= 0);
	dt_send(ctl, CTL_REQ_POLICY_FD, NULL, 0, NULL, 0);
	cr_assert_eq(dt_expect(ctl, CTL_R_POLICY, &pol, fds), 1);
	cr_assert_eq(pp_map(&pg, fds[0]), 0);
	close(ctl);
	g = pp_generation(&pg);
	write_file("ubs.conf", conf);
	cr_assert_eq(kill(daemon_pid, SIGHUP), 0);
	for (int t = 0; pp_generation(&pg) == g && t < WAIT_MS; t += 10)
		sleep_ms(10);
	cr_assert_gt(pp_generation(&pg), g, "reload not published");
	ubt_seg_unmap(&pg);
}

/* ------------------------------------------------------------ tests */

Test(netns_e2e, veth_peers_get_a_channel)
{
	struct srv s;
	uint16_t port;
	pid_t pid;

	make_pair();
	pid = start_server(&s, ns_a, &port);
	one_connection(&s, port, 1, 1, NULL);
	one_connection(&s, port, 0, 1, NULL);
	stop_server(&s, pid);
}

/*
 * The reported case: a wildcard UB listener on port P (A's server on
 * 0.0.0.0:P) and a client of its namespace connecting to another host's
 * port P (B stands for it, with a plain listener on 0.0.0.0:P).  No
 * registered listener can have accepted that connection: TCP at once,
 * not after the request's 500 ms.  Nor B's own connections to B's
 * address or to 127.0.0.1 (they stay inside B, whatever A listens on),
 * nor B's connection to C, a host behind B (its address is local neither
 * in B nor in A: A's addresses are read through A's server's session).
 * The connections A's server really accepts, from B and from A itself,
 * still get their channel, the request waiting for the publication.
 */
Test(netns_e2e, remote_destination_beside_a_wildcard_listener_gets_tcp_at_once)
{
	struct srv s;
	uint16_t port;
	pid_t pid, plain_b, plain_c;

	make_pair();
	make_remote();
	pid = start_server(&s, ns_a, &port);
	plain_b = plain_listener(ns_b, NULL, port);
	plain_c = plain_listener(ns_c, NULL, port);
	no_listener_could(ns_a, ADDR_B, port, "no local listener", 200);
	no_listener_could(ns_b, ADDR_C, port, "no local listener", 200);
	no_listener_could(ns_b, ADDR_B, port, "no local listener", 0);
	no_listener_could(ns_b, "127.0.0.1", port, "no local listener", 0);
	connection_from(&s, ns_b, ADDR_A, port, 0, 1, NULL);
	connection_from(&s, ns_a, "127.0.0.1", port, 0, 1, NULL);
	connection_from(&s, ns_a, ADDR_A, port, 0, 1, NULL);
	stop_server(&s, pid);
	kill(plain_b, SIGKILL);
	dt_reap(plain_b);
	kill(plain_c, SIGKILL);
	dt_reap(plain_c);
}

Test(netns_e2e, cross_netns_off_gives_tcp_at_once_until_back_on)
{
	struct srv s;
	uint16_t port;
	pid_t pid;

	make_pair();
	pid = start_server(&s, ns_a, &port);
	reload("[daemon]\ncross_netns = off\n");
	one_connection(&s, port, 1, 0, "cross-netns off");
	one_connection(&s, port, 0, 0, "cross-netns off");
	reload("[daemon]\ncross_netns = on\n");
	one_connection(&s, port, 1, 1, NULL);
	stop_server(&s, pid);
}

Test(netns_e2e, tuple_that_does_not_mirror_gets_tcp)
{
	struct cli c1 = { .ns = ns_b, .dst = ADDR_A, .tmo_ms = 300 };
	struct cli c2;
	struct result r;
	struct srv s;
	uint16_t port;
	pid_t pid, p1, p2;

	make_pair();
	pid = start_server(&s, ns_a, &port);
	c1.port = port;
	c2 = c1;
	p1 = start_client(&c1);
	/* The server accepts and publishes c1's connection only. */
	dt_pipe_put(s.go[1], 1);
	cr_assert_eq(dt_pipe_get(s.up[0]), 1);
	p2 = start_client(&c2);
	dt_pipe_put(c2.go[1], 1);
	r = client_result(&c2);
	cr_assert_eq(r.type, CTL_R_TCP, "type %#x", r.type);
	cr_assert_str_eq(r.reason, "timeout");
	/* The publication was not spent on the stranger. */
	c1.tmo_ms = 2000;
	dt_pipe_put(c1.go[1], 1);
	r = client_result(&c1);
	cr_assert_eq(r.type, CTL_R_CHANNEL, "type %#x (%s)", r.type, r.reason);
	cr_assert_eq(dt_pipe_get(c1.up[0]), 2, "client side failed");
	cr_assert_eq(dt_pipe_get(s.up[0]), 2, "server side failed");
	stop_client(&c1, p1);
	stop_client(&c2, p2);
	stop_server(&s, pid);
}

/*
 * C holds both addresses on its own lo.  Its client, bound to the port
 * B's client uses, connects to a plain (unregistered) listener of C on
 * the port of A's server: the very tuple of A's publication, but the
 * connection stayed inside C.  It must get TCP; B's client, the real
 * peer, gets the channel.
 */
Test(netns_e2e, stranger_with_the_same_tuple_gets_tcp)
{
	struct cli b = { .ns = ns_b, .src = ADDR_B, .dst = ADDR_A,
			 .tmo_ms = 2000 };
	struct cli c;
	struct result r;
	struct srv s;
	uint16_t port;
	pid_t pid, pb, pc, pl;

	make_pair();
	make_stranger();
	pid = start_server(&s, ns_a, &port);
	/* C's own listener on A's port, not registered with ubsd. */
	pl = plain_listener(ns_c, ADDR_A, port);

	/* B's client from a fixed port; A publishes its connection. */
	b.port = port;
	b.sport = (uint16_t)(20000 + getpid() % 20000);
	pb = start_client(&b);
	dt_pipe_put(s.go[1], 1);
	cr_assert_eq(dt_pipe_get(s.up[0]), 1);
	/* C's client: the same tuple, inside C. */
	c = b;
	c.ns = ns_c;
	pc = start_client(&c);
	dt_pipe_put(c.go[1], 1);
	r = client_result(&c);
	cr_assert_eq(r.type, CTL_R_TCP, "the stranger got type %#x", r.type);
	cr_assert_str_eq(r.reason, "cross-netns unproven");
	/* The real peer. */
	dt_pipe_put(b.go[1], 1);
	r = client_result(&b);
	cr_assert_eq(r.type, CTL_R_CHANNEL, "type %#x (%s)", r.type, r.reason);
	cr_assert_eq(dt_pipe_get(b.up[0]), 2, "client side failed");
	cr_assert_eq(dt_pipe_get(s.up[0]), 2, "server side failed");
	stop_client(&c, pc);
	stop_client(&b, pb);
	stop_server(&s, pid);
	kill(pl, SIGKILL);
	dt_reap(pl);
}

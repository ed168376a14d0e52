/* SPDX-License-Identifier: MIT */
/*
 * rendezvous_e2e.c - the socket attach protocol through a real ubsd:
 * LISTEN / PUBLISH / REQUEST with the sockets passed over SCM_RIGHTS,
 * the channel handed to the client and used for bytes that never touch
 * TCP, pending requests answered by a later publication or by their
 * timeout, TCP at once when no registered listener can have accepted the
 * connection, mirror mismatches, listeners held by several sessions, a
 * killed server's publication withdrawn, malformed fd passing, and the
 * listener table a client sees in its mapped policy page.  The
 * daemon's fd count (/proc/PID/fd, its boards' memfds aside: they live as
 * long as the daemon) returns to its baseline after each
 * scenario.
 *
 * Each test runs its own `ubsd -f -d -c RUN_DIR/ubs.conf` (empty file) in
 * a mkdtemp run directory; the programs are found next to this binary
 * (BUILD/tests/../bin), so sanitizer builds test their own daemon.  Every
 * process started is killed and reaped by pid.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
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

static char ubsd_path[PATH_MAX], ubsctl_path[PATH_MAX];
static int baseline;               /* daemon fds when idle */

static void set_baseline(void);

/*
 * A fresh run directory and its daemon (the ubsd next to this binary);
 * the daemon's idle fd count becomes the baseline.
 */
static void setup(void)
{
	dt_bin_path(ubsd_path, sizeof(ubsd_path), "ubsd");
	dt_bin_path(ubsctl_path, sizeof(ubsctl_path), "ubsctl");
	dt_make_run_dir("/tmp/ubsd-e2e.XXXXXX");
	dt_start_daemon(ubsd_path);
	set_baseline();
}

/* Reap the test's children, then check the daemon and clean up. */
static void teardown(void)
{
	dt_reap_kids();
	dt_teardown();
}

/* Open fds of the daemon, but for the memfds of its boards: made at a
 * uid's first LISTEN and kept while it runs (one per uid, not a leak). */
static int daemon_fds(void)
{
	char path[320], dir_path[48], link[128];
	struct dirent *de;
	DIR *dir;
	int n = 0;

	snprintf(dir_path, sizeof(dir_path), "/proc/%ld/fd", (long)daemon_pid);
	dir = opendir(dir_path);
	cr_assert(dir);
	while ((de = readdir(dir))) {
		ssize_t k;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir_path, de->d_name);
		k = readlink(path, link, sizeof(link) - 1);
		link[k > 0 ? k : 0] = '\0';
		if (strncmp(link, "/memfd:ubs-board", 16) == 0)
			continue;
		n++;
	}
	closedir(dir);
	return n;
}

/* Wait (bounded) until the daemon holds want fds; returns the count. */
static int daemon_fds_settle(int want)
{
	int n = daemon_fds();

	for (int t = 0; n != want && t < WAIT_MS; t += 10) {
		sleep_ms(10);
		n = daemon_fds();
	}
	return n;
}

static int tcp_listen(uint16_t *port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	REQUIRE(fd >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	REQUIRE(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	REQUIRE(listen(fd, 16) == 0);
	REQUIRE(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
	*port = ntohs(sin.sin_port);
	return fd;
}

static int tcp_connect(uint16_t port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	REQUIRE(fd >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	REQUIRE(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	return fd;
}

/* Publish accepted socket afd with a fresh stream channel in *ch. */
static void publish(int ctl, int afd, struct ubt_chan *ch, uint64_t *id)
{
	struct ctl_chan m;
	int fds[2];

	REQUIRE(ubt_chan_create_stream(ch, 4096) == 0);
	fds[0] = afd;
	fds[1] = ch->seg.fd;
	dt_send(ctl, CTL_REQ_PUBLISH, NULL, 0, fds, 2);
	dt_expect(ctl, CTL_R_PUBLISHED, &m, NULL);
	if (id)
		*id = m.chan_id;
}

static void listen_msg(int ctl, uint16_t type, int lfd)
{
	dt_send(ctl, type, NULL, 0, &lfd, 1);
	dt_expect(ctl, CTL_R_OK, NULL, NULL);
}

static void send_request(int ctl, int cfd, uint32_t timeout_ms)
{
	struct ctl_request q = { .timeout_ms = timeout_ms };

	dt_send(ctl, CTL_REQ_REQUEST, &q, sizeof(q), &cfd, 1);
}

/* After send_request: expect the channel and attach to it. */
static void get_channel(int ctl, struct ubt_chan *ch)
{
	struct ctl_chan m;
	int fds[4];

	REQUIRE(dt_expect(ctl, CTL_R_CHANNEL, &m, fds) == 1);
	REQUIRE(ubt_chan_attach(ch, fds[0], -1) == 0);
}

/* Run `ubsctl --json listeners`; output in out.  Returns exit code. */
static int ubsctl_listeners(char *out)
{
	const char *args[] = { "--json", "listeners", NULL };

	return dt_run_ubsctl(ubsctl_path, args, out, NULL, NULL);
}

/* Wait (bounded) until the listener on port is listed with holders
 * (0: not listed). */
static void expect_listener(uint16_t port, int holders)
{
	char out[OUT_MAX], want[64];
	int ok = 0;

	snprintf(want, sizeof(want), "\"port\":%u,", port);
	for (int t = 0; !ok && t < WAIT_MS; t += 20) {
		cr_assert_eq(ubsctl_listeners(out), 0);
		char *p = strstr(out, want);
		if (holders == 0) {
			ok = !p;
		} else if (p) {
			char h[32];
			snprintf(h, sizeof(h), "\"holders\":%d}", holders);
			ok = strstr(p, h) != NULL;
		}
		if (!ok)
			sleep_ms(20);
	}
	cr_assert(ok, "listener port %u holders %d not seen: %s", port,
		  holders, out);
}

/* Is a reply waiting on fd within ms? */
static int readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, ms) == 1;
}

/*
 * The socket exists before the daemon has opened everything else: one
 * STATUS round trip proves the loop runs; the idle count is then the
 * count with that connection, minus it.
 */
static void set_baseline(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int ctl = -1, n;

	/* The socket file exists from bind, before listen. */
	path_in(sun.sun_path, sizeof(sun.sun_path), CTL_SOCK_NAME);
	for (int t = 0; ctl < 0 && t < WAIT_MS; t += 10) {
		ctl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		cr_assert(ctl >= 0);
		if (connect(ctl, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
			close(ctl);
			ctl = -1;
			sleep_ms(10);
		}
	}
	cr_assert(ctl >= 0, "ubsd does not accept connections");

	dt_send(ctl, CTL_REQ_STATUS, NULL, 0, NULL, 0);
	dt_expect(ctl, CTL_R_STATUS, NULL, NULL);
	dt_expect(ctl, CTL_R_END, NULL, NULL);
	n = daemon_fds();
	close(ctl);
	baseline = n - 1;
	cr_assert_eq(daemon_fds_settle(baseline), baseline);
}

/* ------------------------------------------------------------ server */

struct srv {
	int up[2];              /* child -> test: port, then "published" */
	int go[2];              /* test -> child: go on */
	int wait_before_accept; /* read go before accepting */
	int exchange;           /* talk over the channel, then report */
};

static const char ping[] = "ping over shared memory", pong[] = "pong!";

static void server(void *arg)
{
	struct srv *s = arg;
	struct ubt_chan ch;
	uint16_t port;
	char buf[64];
	int ctl, lfd, afd;

	ctl = dt_hello("e2e-server");
	lfd = tcp_listen(&port);
	dt_send(ctl, CTL_REQ_LISTEN, NULL, 0, &lfd, 1);
	dt_expect(ctl, CTL_R_OK, NULL, NULL);
	dt_pipe_put(s->up[1], port);
	if (s->wait_before_accept)
		dt_pipe_get(s->go[0]);
	afd = accept(lfd, NULL, NULL);
	REQUIRE(afd >= 0);
	publish(ctl, afd, &ch, NULL);
	dt_pipe_put(s->up[1], 1);
	if (s->exchange) {
		dt_ring_write(&ch, ping, sizeof(ping));
		dt_ring_read(&ch, buf, sizeof(pong));
		REQUIRE(memcmp(buf, pong, sizeof(pong)) == 0);
		REQUIRE(dt_tcp_queued(afd) == 0);
		dt_pipe_put(s->up[1], 2);
	}
	dt_pipe_get(s->go[0]);     /* stay until told (or killed) */
	ubt_chan_close(&ch);
}

static pid_t start_server(struct srv *s, uint16_t *port)
{
	pid_t pid;

	pid = dt_spawn_piped(server, s, s->up, s->go);
	*port = (uint16_t)dt_pipe_get(s->up[0]);
	return pid;
}

/* The test process is the client: channel bytes both ways. */
static void client_exchange(int ctl, int cfd, struct srv *s)
{
	struct ubt_chan ch;
	char buf[64];

	get_channel(ctl, &ch);
	dt_ring_read(&ch, buf, sizeof(ping));
	cr_assert_eq(memcmp(buf, ping, sizeof(ping)), 0);
	dt_ring_write(&ch, pong, sizeof(pong));
	cr_assert_eq(dt_pipe_get(s->up[0]), 1);
	cr_assert_eq(dt_pipe_get(s->up[0]), 2, "server side failed");
	cr_assert_eq(dt_tcp_queued(cfd), 0, "bytes went over TCP");
	ubt_chan_close(&ch);
}

static void finish_server(struct srv *s, pid_t pid)
{
	dt_end_piped(pid, s->up, s->go, "server");
}

TestSuite(rendezvous_e2e, .init = setup, .fini = teardown, .timeout = 30);

Test(rendezvous_e2e, publish_then_request_hands_over_the_channel)
{
	struct srv s = { .exchange = 1 };
	uint16_t port;
	int base = baseline, ctl, cfd;
	pid_t pid;

	pid = start_server(&s, &port);
	expect_listener(port, 1);
	cfd = tcp_connect(port);
	ctl = dt_hello("e2e-client");
	send_request(ctl, cfd, 2000);
	client_exchange(ctl, cfd, &s);
	finish_server(&s, pid);
	close(ctl);
	close(cfd);
	expect_listener(port, 0);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

Test(rendezvous_e2e, pending_request_is_answered_by_the_publication)
{
	struct srv s = { .exchange = 1, .wait_before_accept = 1 };
	uint16_t port;
	int base = baseline, ctl, cfd;
	pid_t pid;

	pid = start_server(&s, &port);
	cfd = tcp_connect(port);
	ctl = dt_hello("e2e-client");
	send_request(ctl, cfd, 2000);
	cr_assert(!readable(ctl, 200), "request answered before publish");
	dt_pipe_put(s.go[1], 0);
	client_exchange(ctl, cfd, &s);
	finish_server(&s, pid);
	close(ctl);
	close(cfd);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

Test(rendezvous_e2e, request_without_publication_gets_tcp_in_time)
{
	struct ctl_tcp m;
	uint16_t port;
	int base = baseline, lfd, cfd, ctl;
	uint64_t t0, ms;

	lfd = tcp_listen(&port);
	cfd = tcp_connect(port);
	ctl = dt_hello("e2e-client");
	/* A registered listener took it: worth waiting for. */
	listen_msg(ctl, CTL_REQ_LISTEN, lfd);
	t0 = dt_now_us();
	send_request(ctl, cfd, 300);
	dt_expect(ctl, CTL_R_TCP, &m, NULL);
	ms = (dt_now_us() - t0) / 1000;
	cr_assert(ms >= 250 && ms < 1500, "answered after %llu ms",
		  (unsigned long long)ms);
	cr_assert_str_eq(m.reason, "timeout");
	/* An over-long timeout is capped. */
	t0 = dt_now_us();
	send_request(ctl, cfd, 60000);
	dt_expect(ctl, CTL_R_TCP, &m, NULL);
	ms = (dt_now_us() - t0) / 1000;
	cr_assert(ms < CTL_REQUEST_MAX_MS + 1000, "cap not applied: %llu ms",
		  (unsigned long long)ms);
	close(ctl);
	close(cfd);
	close(lfd);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

/* TCP at once (well under 100 ms) with "no local listener". */
static void expect_no_listener(int ctl, int cfd)
{
	struct ctl_tcp m;
	uint64_t t0 = dt_now_us(), us;

	send_request(ctl, cfd, 500);
	dt_expect(ctl, CTL_R_TCP, &m, NULL);
	us = dt_now_us() - t0;
	cr_assert_str_eq(m.reason, "no local listener");
	cr_assert_lt(us, 100000, "answered after %llu us",
		     (unsigned long long)us);
}

/*
 * Nothing waits for a publication no registered listener can make: no
 * listener at all, or one on another address of the port.  A connection
 * the listener did accept still waits for its publication.
 */
Test(rendezvous_e2e, request_no_listener_could_take_gets_tcp_at_once)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct srv s = { .exchange = 1, .wait_before_accept = 1 };
	uint16_t port, sport;
	int base = baseline, ctl, cfd, plain, one = 1;
	pid_t pid;

	pid = start_server(&s, &sport);         /* on 127.0.0.1:sport */
	port = sport;
	expect_listener(port, 1);
	ctl = dt_hello("e2e-client");
	/* 127.0.0.2:port: a plain listener, not the registered one. */
	plain = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(plain >= 0);
	cr_assert_eq(setsockopt(plain, SOL_SOCKET, SO_REUSEADDR, &one,
				sizeof(one)), 0);
	sin.sin_port = htons(port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1);
	cr_assert_eq(bind(plain, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(plain, 4), 0);
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(cfd >= 0);
	cr_assert_eq(connect(cfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	expect_no_listener(ctl, cfd);
	close(cfd);
	close(plain);
	/* A port with no registered listener at all. */
	plain = tcp_listen(&port);
	cfd = tcp_connect(port);
	expect_no_listener(ctl, cfd);
	close(cfd);
	close(plain);
	/* The registered listener's connection: the request waits for its
	 * publication. */
	cfd = tcp_connect(sport);
	send_request(ctl, cfd, 2000);
	cr_assert(!readable(ctl, 100), "request answered before publish");
	dt_pipe_put(s.go[1], 0);
	client_exchange(ctl, cfd, &s);
	finish_server(&s, pid);
	close(ctl);
	close(cfd);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

Test(rendezvous_e2e, connection_to_another_server_gets_tcp)
{
	struct ubt_chan sch, cch;
	uint16_t pa, pb;
	int base = baseline, la, lb, c1, c2, a1, srv, cli;

	srv = dt_hello("e2e-server");
	cli = dt_hello("e2e-client");
	la = tcp_listen(&pa);
	lb = tcp_listen(&pb);
	dt_send(srv, CTL_REQ_LISTEN, NULL, 0, &la, 1);
	dt_expect(srv, CTL_R_OK, NULL, NULL);
	c1 = tcp_connect(pa);
	c2 = tcp_connect(pb);   /* to B: never accepted, never published */
	a1 = accept(la, NULL, NULL);
	cr_assert(a1 >= 0);
	publish(srv, a1, &sch, NULL);
	send_request(cli, c2, 300);
	dt_expect(cli, CTL_R_TCP, NULL, NULL);
	/* The publication was not taken by the mismatch. */
	send_request(cli, c1, 300);
	get_channel(cli, &cch);
	dt_ring_write(&sch, "x", 1);
	{
		char b;
		dt_ring_read(&cch, &b, 1);
		cr_assert_eq(b, 'x');
	}
	ubt_chan_close(&cch);
	ubt_chan_close(&sch);
	close(srv);
	close(cli);
	close(c1);
	close(c2);
	close(a1);
	close(la);
	close(lb);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

static int shared_lfd;

static void holder(void *arg)
{
	int *go = arg, ctl = dt_hello("e2e-holder");

	dt_send(ctl, CTL_REQ_LISTEN, NULL, 0, &shared_lfd, 1);
	dt_expect(ctl, CTL_R_OK, NULL, NULL);
	dt_pipe_put(go[3], 1);
	dt_pipe_get(go[0]);
}

Test(rendezvous_e2e, listener_lives_while_any_holder_does)
{
	int p1[4], p2[4], base = daemon_fds();
	uint16_t port;
	pid_t a, b;

	shared_lfd = tcp_listen(&port);
	cr_assert(pipe(p1) == 0 && pipe(p1 + 2) == 0);
	cr_assert(pipe(p2) == 0 && pipe(p2 + 2) == 0);
	a = dt_spawn(holder, p1);
	cr_assert_eq(dt_pipe_get(p1[2]), 1);
	b = dt_spawn(holder, p2);
	cr_assert_eq(dt_pipe_get(p2[2]), 1);
	close(shared_lfd);      /* only the children hold it now */
	expect_listener(port, 2);
	dt_pipe_put(p1[1], 0);     /* the first registrant exits */
	cr_assert_eq(dt_reap(a), 0);
	expect_listener(port, 1);
	kill(b, SIGKILL);
	dt_reap(b);
	expect_listener(port, 0);
	for (int i = 0; i < 4; i++) {
		close(p1[i]);
		close(p2[i]);
	}
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

Test(rendezvous_e2e, killed_server_publication_is_withdrawn)
{
	struct srv s = { 0 };
	uint16_t port;
	int base = baseline, ctl, cfd, n;
	pid_t pid;

	pid = start_server(&s, &port);
	cfd = tcp_connect(port);
	cr_assert_eq(dt_pipe_get(s.up[0]), 1);     /* published */
	n = daemon_fds();
	cr_assert_eq(n, base + 2, "expected the server's control socket and "
		     "its channel's segment, have %d over %d", n, base);
	kill(pid, SIGKILL);
	dt_reap(pid);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
	ctl = dt_hello("e2e-client");
	send_request(ctl, cfd, 300);
	dt_expect(ctl, CTL_R_TCP, NULL, NULL);
	close(ctl);
	close(cfd);
	close(s.up[0]);
	close(s.go[1]);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

/* The daemon closes the connection: EOF (or reset) within WAIT_MS. */
static void expect_dropped(int ctl)
{
	char b;

	cr_assert(readable(ctl, WAIT_MS));
	cr_assert(recv(ctl, &b, 1, 0) <= 0, "connection not dropped");
	close(ctl);
}

Test(rendezvous_e2e, wrong_fd_counts_drop_the_client)
{
	int base = baseline, ctl, p[2], many[5];
	uint16_t port;
	int lfd = tcp_listen(&port);
	struct ctl_error e;

	cr_assert(pipe(p) == 0);
	/* PUBLISH with one fd of two. */
	ctl = dt_hello("e2e-bad");
	dt_send(ctl, CTL_REQ_PUBLISH, NULL, 0, &p[0], 1);
	expect_dropped(ctl);
	/* An fd attached to STATUS. */
	ctl = dt_hello("e2e-bad");
	dt_send(ctl, CTL_REQ_STATUS, NULL, 0, &p[0], 1);
	expect_dropped(ctl);
	/* Five fds. */
	ctl = dt_hello("e2e-bad");
	for (int i = 0; i < 5; i++)
		many[i] = p[i % 2];
	dt_send(ctl, CTL_REQ_PUBLISH, NULL, 0, many, 5);
	expect_dropped(ctl);
	/* Two fds of the wrong kinds: refused, connection kept. */
	ctl = dt_hello("e2e-bad");
	dt_send(ctl, CTL_REQ_PUBLISH, NULL, 0, many, 2);
	dt_expect(ctl, CTL_R_ERROR, &e, NULL);
	/* LISTEN with a pipe, and with a listening socket but no session. */
	dt_send(ctl, CTL_REQ_LISTEN, NULL, 0, &p[1], 1);
	dt_expect(ctl, CTL_R_ERROR, &e, NULL);
	close(ctl);
	ctl = dt_ctl_open();
	dt_send(ctl, CTL_REQ_LISTEN, NULL, 0, &lfd, 1);
	dt_expect(ctl, CTL_R_ERROR, &e, NULL);
	cr_assert_eq(e.err, EPERM);
	/* The daemon still serves. */
	dt_send(ctl, CTL_REQ_STATUS, NULL, 0, NULL, 0);
	dt_expect(ctl, CTL_R_STATUS, NULL, NULL);
	dt_expect(ctl, CTL_R_END, NULL, NULL);
	close(ctl);
	close(p[0]);
	close(p[1]);
	close(lfd);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

/* Not asserted: the cost of one rendezvous (PUBLISH -> PUBLISHED, then
 * REQUEST -> CHANNEL + its segment) through the daemon. */
Test(rendezvous_e2e, round_trip_cost)
{
	enum { N = 1000 };
	struct ubt_chan ch;
	uint16_t port;
	int base = baseline, srv, cli, lfd, cfd, afd, fds[2];
	uint64_t t0, t1;

	srv = dt_hello("e2e-server");
	cli = dt_hello("e2e-client");
	lfd = tcp_listen(&port);
	cfd = tcp_connect(port);
	afd = accept(lfd, NULL, NULL);
	cr_assert(afd >= 0);
	cr_assert_eq(ubt_chan_create_stream(&ch, 4096), 0);
	fds[0] = afd;
	fds[1] = ch.seg.fd;
	t0 = dt_now_us();
	for (int i = 0; i < N; i++) {
		int got[4];

		dt_send(srv, CTL_REQ_PUBLISH, NULL, 0, fds, 2);
		dt_expect(srv, CTL_R_PUBLISHED, NULL, NULL);
		send_request(cli, cfd, 1000);
		cr_assert_eq(dt_expect(cli, CTL_R_CHANNEL, NULL, got), 1);
		close(got[0]);
	}
	t1 = dt_now_us();
	cr_log_info("rendezvous round trip (PUBLISH + REQUEST->CHANNEL): "
		    "%.1f us over %d iterations", (double)(t1 - t0) / N, N);
	fprintf(stderr, "rendezvous round trip (PUBLISH + REQUEST->CHANNEL):"
		" %.1f us over %d iterations\n", (double)(t1 - t0) / N, N);
	ubt_chan_close(&ch);
	close(srv);
	close(cli);
	close(cfd);
	close(afd);
	close(lfd);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

/* ------------------------------------------------------ policy page */

/* Map the daemon's policy page read-only, as a preload does (POLICY_FD). */
static void map_policy(struct ubt_seg *pg)
{
	struct ctl_policy pol;
	int ctl = dt_ctl_open(), fds[4];

	dt_send(ctl, CTL_REQ_POLICY_FD, NULL, 0, NULL, 0);
	cr_assert_eq(dt_expect(ctl, CTL_R_POLICY, &pol, fds), 1);
	cr_assert_eq(pp_map(pg, fds[0]), 0);
	cr_assert_eq(pol.size, pg->size);
	close(ctl);
}

/* pp_listener_maybe for address text a (family fam) and port. */
static int maybe(const struct ubt_seg *pg, int fam, const char *a,
		 uint16_t port)
{
	uint8_t buf[16];

	cr_assert_eq(inet_pton(fam, a, buf), 1, "%s", a);
	return pp_listener_maybe(pg, fam, buf, port);
}

/* Wait (bounded) until maybe() answers want. */
static void expect_maybe(const struct ubt_seg *pg, int fam, const char *a,
			 uint16_t port, int want)
{
	int got = maybe(pg, fam, a, port);

	for (int t = 0; got != want && t < WAIT_MS; t += 10) {
		sleep_ms(10);
		got = maybe(pg, fam, a, port);
	}
	cr_assert_eq(got, want, "%s port %u: pp_listener_maybe %d, wanted %d",
		     a, port, got, want);
}

/* A listening TCP socket on [::]:0 (*port set), or -1 without IPv6. */
static int tcp6_listen_any(int v6only, uint16_t *port)
{
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6,
				     .sin6_addr = IN6ADDR_ANY_INIT };
	socklen_t len = sizeof(sin6);
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	REQUIRE(setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only,
			   sizeof(v6only)) == 0);
	if (bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) < 0) {
		close(fd);
		return -1;
	}
	REQUIRE(listen(fd, 16) == 0);
	REQUIRE(getsockname(fd, (struct sockaddr *)&sin6, &len) == 0);
	*port = ntohs(sin6.sin6_port);
	return fd;
}

Test(rendezvous_e2e, listeners_are_published_in_the_policy_page)
{
	struct ubt_seg pg;
	uint16_t port, p6 = 0, p6only = 0;
	int base = baseline, lfd, l6, l6only, srv, other;
	uint64_t g;

	map_policy(&pg);
	lfd = tcp_listen(&port);
	cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", port), 0);

	/* LISTEN: in the page before the OK. */
	srv = dt_hello("e2e-server");
	g = pp_generation(&pg);
	listen_msg(srv, CTL_REQ_LISTEN, lfd);
	cr_assert_gt(pp_generation(&pg), g);
	cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", port), 1);
	cr_assert_eq(maybe(&pg, AF_INET6, "::ffff:127.0.0.1", port), 1);
	cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.2", port), 0);
	cr_assert_eq(maybe(&pg, AF_INET6, "::1", port), 0);
	cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", (uint16_t)(port + 1)),
		     0);

	/* Another holder of the same listener changes nothing in the page,
	 * and neither does its leaving. */
	other = dt_hello("e2e-holder");
	g = pp_generation(&pg);
	listen_msg(other, CTL_REQ_LISTEN, lfd);
	listen_msg(other, CTL_REQ_UNLISTEN, lfd);
	cr_assert_eq(pp_generation(&pg), g, "republished with no change");
	cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", port), 1);

	/* UNLISTEN by the last holder: gone before the OK. */
	listen_msg(srv, CTL_REQ_UNLISTEN, lfd);
	cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", port), 0);

	/* Wildcards: dual-stack :: takes IPv4 too, v6only :: does not. */
	l6 = tcp6_listen_any(0, &p6);
	l6only = tcp6_listen_any(1, &p6only);
	if (l6 >= 0 && l6only >= 0) {
		listen_msg(srv, CTL_REQ_LISTEN, l6);
		listen_msg(srv, CTL_REQ_LISTEN, l6only);
		cr_assert_eq(maybe(&pg, AF_INET6, "::1", p6), 1);
		cr_assert_eq(maybe(&pg, AF_INET, "10.1.2.3", p6), 1);
		cr_assert_eq(maybe(&pg, AF_INET6, "::1", p6only), 1);
		cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", p6only), 0);
		cr_assert_eq(maybe(&pg, AF_INET6, "::ffff:127.0.0.1", p6only),
			     0);
	} else {
		cr_log_warn("no IPv6: wildcard listeners not tested");
	}

	/* A reload (SIGHUP) republishes the policy, not the listeners. */
	listen_msg(srv, CTL_REQ_LISTEN, lfd);
	g = pp_generation(&pg);
	cr_assert_eq(kill(daemon_pid, SIGHUP), 0);
	for (int t = 0; pp_generation(&pg) == g && t < WAIT_MS; t += 10)
		sleep_ms(10);
	cr_assert_gt(pp_generation(&pg), g, "reload not published");
	cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", port), 1);
	if (l6 >= 0 && l6only >= 0)
		cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", p6), 1);

	/* The session's control connection closes: its listeners go. */
	close(srv);
	expect_maybe(&pg, AF_INET, "127.0.0.1", port, 0);
	if (l6 >= 0 && l6only >= 0) {
		expect_maybe(&pg, AF_INET, "127.0.0.1", p6, 0);
		expect_maybe(&pg, AF_INET6, "::1", p6only, 0);
	}
	expect_listener(port, 0);

	close(other);
	close(lfd);
	if (l6 >= 0)
		close(l6);
	if (l6only >= 0)
		close(l6only);
	ubt_seg_unmap(&pg);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

/* A killed listening server's listener leaves the page too. */
Test(rendezvous_e2e, killed_server_listener_leaves_the_policy_page)
{
	struct srv s = { 0 };
	struct ubt_seg pg;
	uint16_t port;
	pid_t pid;

	map_policy(&pg);
	s.wait_before_accept = 1;
	pid = start_server(&s, &port);
	cr_assert_eq(maybe(&pg, AF_INET, "127.0.0.1", port), 1);
	kill(pid, SIGKILL);
	dt_reap(pid);
	expect_maybe(&pg, AF_INET, "127.0.0.1", port, 0);
	close(s.up[0]);
	close(s.go[1]);
	ubt_seg_unmap(&pg);
}

/* A session whose library asks before connect() (CTL_HELLO_EARLY_REQUEST):
 * its publications may be withdrawn as soon as no request can come. */
static int hello_early(const char *name)
{
	struct ctl_hello m = { .pid = (uint32_t)getpid(),
			       .flags = CTL_HELLO_EARLY_REQUEST };
	int fd = dt_ctl_open();

	snprintf(m.service, sizeof(m.service), "%s", name);
	dt_send(fd, CTL_REQ_HELLO, &m, sizeof(m), NULL, 0);
	dt_expect(fd, CTL_R_OK, NULL, NULL);
	return fd;
}

/*
 * A client asks for its channel before connect(): the request waits,
 * unanswered, for the connect to complete; the server's publication
 * (from an early session, whose unmatched offers are withdrawn at once)
 * then finds it and the channel carries bytes that never touch TCP.
 */
Test(rendezvous_e2e, request_before_connect_meets_its_publication)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct ubt_chan sch, cch;
	char buf[5];
	uint16_t port;
	int base = baseline, srv, cli, lfd, cfd, afd;

	srv = hello_early("e2e-server");
	lfd = tcp_listen(&port);
	listen_msg(srv, CTL_REQ_LISTEN, lfd);
	cli = dt_hello("e2e-client");
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(cfd >= 0);
	send_request(cli, cfd, 2000);
	cr_assert(!readable(cli, 100), "answered before the connect");
	sin.sin_port = htons(port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(cfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	afd = accept(lfd, NULL, NULL);
	cr_assert(afd >= 0);
	publish(srv, afd, &sch, NULL);
	get_channel(cli, &cch);
	cr_assert_eq(ubt_chan_decide(&cch, UBT_CHAN_UB), UBT_CHAN_UB);
	cr_assert(!readable(srv, 200), "an offer that was taken withdrawn");
	cr_assert_eq(ubt_chan_state(&sch), UBT_CHAN_UB);
	dt_ring_write(&cch, "hello", 5);
	dt_ring_read(&sch, buf, 5);
	cr_assert_eq(memcmp(buf, "hello", 5), 0);
	cr_assert_eq(dt_tcp_queued(afd), 0, "bytes went over TCP");
	ubt_chan_close(&cch);
	ubt_chan_close(&sch);
	close(afd);
	close(cfd);
	close(lfd);
	close(cli);
	close(srv);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

/*
 * A plain client (no request): the early server's offer is withdrawn at
 * once, with TCP decided in the channel, so a server about to speak
 * first need not wait; a server of a session without the flag keeps its
 * offer (a late request may still come).
 */
Test(rendezvous_e2e, offer_nobody_asked_for_is_withdrawn_at_once)
{
	struct ubt_chan sch, och;
	struct ctl_chan m;
	uint64_t id, t0;
	uint16_t port;
	int base = baseline, srv, old, lfd, cfd, afd, cfd2, afd2;

	srv = hello_early("e2e-server");
	old = dt_hello("e2e-old-server");
	lfd = tcp_listen(&port);
	listen_msg(srv, CTL_REQ_LISTEN, lfd);
	listen_msg(old, CTL_REQ_LISTEN, lfd);
	cfd = tcp_connect(port);
	afd = accept(lfd, NULL, NULL);
	cr_assert(afd >= 0);
	t0 = dt_now_ms();
	publish(srv, afd, &sch, &id);
	dt_expect(srv, CTL_R_WITHDRAWN, &m, NULL);
	cr_log_info("withdrawn %llu ms after the publication",
		    (unsigned long long)(dt_now_ms() - t0));
	cr_assert_eq(m.chan_id, id);
	cr_assert_eq(ubt_chan_state(&sch), UBT_CHAN_TCP);
	cfd2 = tcp_connect(port);
	afd2 = accept(lfd, NULL, NULL);
	cr_assert(afd2 >= 0);
	publish(old, afd2, &och, NULL);
	cr_assert(!readable(old, 300), "offer of a late-request session "
		  "withdrawn");
	cr_assert_eq(ubt_chan_state(&och), UBT_CHAN_UNDECIDED);
	ubt_chan_close(&sch);
	ubt_chan_close(&och);
	close(afd);
	close(cfd);
	close(afd2);
	close(cfd2);
	close(lfd);
	close(srv);
	close(old);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

/* ------------------------------------------------------- doorbells */

/* Child (uid 65534): PEER_DB of the id read from go; reply type and errno
 * up. */
static void nobody_peer_db(void *arg)
{
	int *pp = arg, up = pp[0], go = pp[1];
	union { struct ctl_error e; unsigned char raw[CTL_MAX_BODY]; } r;
	struct ctl_doorbell m;
	struct ctl_hdr h;
	int fds[2], n = 2, ctl, out[2] = { 0, 0 };

	REQUIRE(read(go, &m, sizeof(m)) == (ssize_t)sizeof(m));
	REQUIRE(setgid(65534) == 0 && setuid(65534) == 0);
	ctl = dt_hello("e2e-nobody");
	dt_send(ctl, CTL_REQ_PEER_DB, &m, sizeof(m), NULL, 0);
	REQUIRE(dt_recv(ctl, &h, &r, fds, &n) == 0);
	out[0] = h.type;
	out[1] = h.type == CTL_R_ERROR ? r.e.err : 0;
	REQUIRE(write(up, out, sizeof(out)) == (ssize_t)sizeof(out));
	close(ctl);
}

struct nobody { int up[2], go[2]; int ends[2]; };

static void nobody_main(void *arg)
{
	struct nobody *b = arg;

	b->ends[0] = b->up[1];
	b->ends[1] = b->go[0];
	nobody_peer_db(b->ends);
}

/* PEER_DB as uid 65534 (a child process): the reply type and errno. */
static void peer_db_as_nobody(uint64_t id, uint16_t *type, int32_t *err)
{
	struct ctl_doorbell m = { .id = id };
	struct nobody b;
	int out[2] = { 0, 0 };
	pid_t pid;

	/* The daemon's socket is 0666; the test's directory lets others
	 * reach it. */
	cr_assert_eq(chmod(run_dir, 0711), 0);
	pid = dt_spawn_piped(nobody_main, &b, b.up, b.go);

	cr_assert_eq(write(b.go[1], &m, sizeof(m)), (ssize_t)sizeof(m));
	cr_assert_eq(read(b.up[0], out, sizeof(out)), (ssize_t)sizeof(out),
		     "the uid 65534 child failed (see its stderr)");
	*type = (uint16_t)out[0];
	*err = out[1];
	close(b.go[1]);
	close(b.up[0]);
	cr_assert_eq(dt_reap(pid), 0);
}

Test(rendezvous_e2e, doorbells_go_to_sessions_that_may_ring_them)
{
	struct ctl_doorbell m = { .id = 0x5542534442ull };
	struct ctl_error e;
	int base = baseline, srv, cli, anon, p[2], got[4], efd, two[2], loose;
	struct ubt_note note, peer;
	uint64_t v = 0;
	uint16_t type;
	int32_t err;

	srv = dt_hello("e2e-server");
	cli = dt_hello("e2e-client");
	efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE);
	cr_assert(efd >= 0);
	cr_assert_eq(ubt_note_create(&note, efd), 0);
	/* Only an eventfd with a nonzero id, with a sealed memfd, is a
	 * doorbell. */
	cr_assert_eq(pipe(p), 0);
	two[0] = p[0];
	two[1] = note.seg.fd;
	dt_send(srv, CTL_REQ_DOORBELL, &m, sizeof(m), two, 2);
	dt_expect(srv, CTL_R_ERROR, &e, NULL);
	cr_assert_eq(e.err, EINVAL);
	loose = memfd_create("loose", MFD_CLOEXEC);
	cr_assert(loose >= 0);
	two[0] = efd;
	two[1] = loose;
	dt_send(srv, CTL_REQ_DOORBELL, &m, sizeof(m), two, 2);
	dt_expect(srv, CTL_R_ERROR, &e, NULL);
	cr_assert_eq(e.err, EINVAL, "an unsealed page is refused");
	two[1] = note.seg.fd;
	dt_send(srv, CTL_REQ_DOORBELL, &m, sizeof(m), two, 2);
	dt_expect(srv, CTL_R_OK, NULL, NULL);
	/* A session of the same user gets the very eventfd and page. */
	dt_send(cli, CTL_REQ_PEER_DB, &m, sizeof(m), NULL, 0);
	cr_assert_eq(dt_expect(cli, CTL_R_DOORBELL, NULL, got), 2);
	v = 1;
	cr_assert_eq(write(got[0], &v, sizeof(v)), (ssize_t)sizeof(v));
	cr_assert_eq(read(efd, &v, sizeof(v)), (ssize_t)sizeof(v),
		     "rang another eventfd");
	cr_assert_eq(ubt_note_map(&peer, got[1], got[0]), 0);
	cr_assert_eq(peer.seg.id, note.seg.id, "another page");
	ubt_note_close(&peer);
	close(got[0]);
	close(loose);
	/* Another user with no channel with it does not. */
	peer_db_as_nobody(m.id, &type, &err);
	cr_assert_eq(type, CTL_R_ERROR);
	cr_assert_eq(err, EPERM);
	/* No session, no doorbell; an unknown id is ENOENT. */
	anon = dt_ctl_open();
	dt_send(anon, CTL_REQ_PEER_DB, &m, sizeof(m), NULL, 0);
	dt_expect(anon, CTL_R_ERROR, &e, NULL);
	cr_assert_eq(e.err, EPERM);
	m.id++;
	dt_send(cli, CTL_REQ_PEER_DB, &m, sizeof(m), NULL, 0);
	dt_expect(cli, CTL_R_ERROR, &e, NULL);
	cr_assert_eq(e.err, ENOENT);
	m.id--;
	/* The owner gone, its doorbell is gone from the daemon. */
	close(srv);
	for (int t = 0; t < 200; t++) {
		union { struct ctl_error e; unsigned char raw[CTL_MAX_BODY]; } r;
		struct ctl_hdr h;
		int n = 2;

		dt_send(cli, CTL_REQ_PEER_DB, &m, sizeof(m), NULL, 0);
		cr_assert_eq(dt_recv(cli, &h, &r, got, &n), 0);
		type = h.type;
		err = h.type == CTL_R_ERROR ? r.e.err : 0;
		for (int i = 0; i < n; i++)
			close(got[i]);
		if (type == CTL_R_ERROR)
			break;
		usleep(10000);
	}
	cr_assert_eq(type, CTL_R_ERROR);
	cr_assert_eq(err, ENOENT);
	close(anon);
	close(cli);
	ubt_note_close(&note);
	close(efd);
	close(p[0]);
	close(p[1]);
	cr_assert_eq(daemon_fds_settle(base), base, "daemon leaked fds");
}

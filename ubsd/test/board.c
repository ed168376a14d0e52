/* SPDX-License-Identifier: MIT */
/*
 * board.c - the boards through a real ubsd: one per uid, the same for
 * every session of that uid (and a working memfd: it maps as a board),
 * another for another uid, none at all with board_slots = 0, and the
 * board of a listener's uid named in its entry of the policy page's
 * listener table.  BOARD without a session is refused; BOARD with a body
 * or an fd drops only that client.
 *
 * Each test runs its own `ubsd -f -d -c RUN_DIR/ubs.conf` in a mkdtemp run
 * directory; the programs are found next to this binary (BUILD/tests/../
 * bin), so sanitizer builds test their own daemon.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "policy.h"
#include "ubt.h"
#include "support/dtest.h"
#include "support/rvtest.h"

static char ubsd_path[PATH_MAX];

/* A fresh run directory with conf as ubs.conf, and its daemon. */
static void start(const char *conf)
{
	dt_bin_path(ubsd_path, sizeof(ubsd_path), "ubsd");
	dt_make_run_dir("/tmp/ubsd-board.XXXXXX");
	write_file("ubs.conf", conf);
	dt_start_daemon(ubsd_path);
}

static void teardown(void)
{
	dt_reap_kids();
	dt_teardown();
}

/* BOARD on ctl: 0 with the reply body in *m and the fd in *fd, or the
 * ERROR's errno (its message to stderr). */
static int ask_board(int ctl, struct ctl_board *m, int *fd)
{
	union {
		struct ctl_board b;
		struct ctl_error e;
	} r;
	struct ctl_hdr h;
	int fds[4], n = 4;

	memset(&r, 0, sizeof(r));
	dt_send(ctl, CTL_REQ_BOARD, NULL, 0, NULL, 0);
	REQUIRE(dt_recv(ctl, &h, &r, fds, &n) == 0);
	if (h.type == CTL_R_ERROR) {
		REQUIRE(n == 0);
		r.e.msg[sizeof(r.e.msg) - 1] = '\0';
		fprintf(stderr, "BOARD: %s\n", r.e.msg);
		return r.e.err;
	}
	REQUIRE(h.type == CTL_R_BOARD);
	REQUIRE(n == 1);
	*m = r.b;
	*fd = fds[0];
	return 0;
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

/* Map the daemon's policy page read-only, as a preload does. */
static void map_policy(struct ubt_seg *pg)
{
	struct ctl_policy pol;
	int ctl = dt_ctl_open(), fds[4];

	dt_send(ctl, CTL_REQ_POLICY_FD, NULL, 0, NULL, 0);
	cr_assert_eq(dt_expect(ctl, CTL_R_POLICY, &pol, fds), 1);
	cr_assert_eq(pp_map(pg, fds[0]), 0);
	close(ctl);
}

/* The page's entry for the listener on port (bounded wait for it). */
static struct ubs_lst_entry lst_entry(const struct ubt_seg *pg, uint16_t port)
{
	const struct ubs_policy_page *p = (const void *)
		(pg->base + UBT_SEG_HDR_SIZE);

	for (int t = 0; t < WAIT_MS; t += 10) {
		for (uint32_t i = 0; i < p->nlst && i < UBS_POLICY_MAX_LST;
		     i++)
			if (p->lst[i].port == port)
				return p->lst[i];
		sleep_ms(10);
	}
	cr_assert_fail("listener on port %u not in the page", port);
	return p->lst[0];
}

/* pp_listener_board for 127.0.0.1:port. */
static int via_board(const struct ubt_seg *pg, uint16_t port, uint64_t netns,
		     uint64_t board)
{
	struct in_addr a = { htonl(INADDR_LOOPBACK) };

	return pp_listener_board(pg, AF_INET, &a, port, netns, board);
}

TestSuite(board, .fini = teardown, .timeout = 30);

Test(board, sessions_of_one_uid_share_one_board)
{
	struct ubt_board b1, b2;
	struct ctl_board m1, m2;
	int c1, c2, fd1, fd2;

	start("[default]\nring_kib = 64\n");
	c1 = dt_hello("board-a");
	c2 = dt_hello("board-b");
	cr_assert_eq(ask_board(c1, &m1, &fd1), 0);
	cr_assert_eq(ask_board(c2, &m2, &fd2), 0);
	cr_assert_neq(m1.id, 0);
	cr_assert_eq(m1.id, m2.id, "one board per uid");
	cr_assert_eq(m1.nslots, 1024, "board_slots defaults to 1024");
	cr_assert_eq(m1.ring_size, 64 * 1024, "the default ring_kib");
	cr_assert_eq(m2.nslots, m1.nslots);
	cr_assert_eq(m2.ring_size, m1.ring_size);
	/* The fds map, as that board. */
	cr_assert_eq(ubt_board_map(&b1, fd1), 0);
	cr_assert_eq(ubt_board_map(&b2, fd2), 0);
	cr_assert_eq(b1.id, m1.id);
	cr_assert_eq(b2.id, m1.id);
	cr_assert_eq(b1.nslots, m1.nslots);
	cr_assert_eq(b1.ring_size, m1.ring_size);
	/* It outlives the sessions: a later one gets it again. */
	close(c1);
	close(c2);
	c1 = dt_hello("board-c");
	cr_assert_eq(ask_board(c1, &m2, &fd2), 0);
	cr_assert_eq(m2.id, m1.id);
	close(fd2);
	close(c1);
	ubt_board_unmap(&b1);
	ubt_board_unmap(&b2);
}

/* In a child as uid 65534: its board's id down up (0: none). */
static void nobody_board(void *arg)
{
	int *up = arg, ctl, fd = -1;
	struct ctl_board m;
	struct ubt_board b;
	uint64_t id = 0;

	REQUIRE(setgroups(0, NULL) == 0);
	REQUIRE(setgid(65534) == 0 && setuid(65534) == 0);
	ctl = dt_hello("board-nobody");
	if (ask_board(ctl, &m, &fd) == 0) {
		REQUIRE(ubt_board_map(&b, fd) == 0);
		REQUIRE(b.id == m.id);
		id = m.id;
		ubt_board_unmap(&b);
	}
	REQUIRE(write(up[1], &id, sizeof(id)) == (ssize_t)sizeof(id));
	close(ctl);
}

Test(board, another_uid_gets_another_board)
{
	struct ctl_board m;
	uint64_t other = 0;
	int ctl, fd, up[2];
	pid_t pid;

	if (geteuid() != 0)
		cr_skip_test("needs root to run a session as another uid");
	start("");
	cr_assert_eq(chmod(run_dir, 0711), 0);  /* nobody's way in */
	ctl = dt_hello("board-root");
	cr_assert_eq(ask_board(ctl, &m, &fd), 0);
	close(fd);
	REQUIRE(pipe(up) == 0);
	pid = dt_spawn(nobody_board, up);
	close(up[1]);
	cr_assert_eq(read(up[0], &other, sizeof(other)),
		     (ssize_t)sizeof(other));
	close(up[0]);
	cr_assert_eq(dt_reap(pid), 0, "nobody's child failed");
	cr_assert_neq(other, 0);
	cr_assert_neq(other, m.id, "a board is one uid's");
	close(ctl);
}

Test(board, board_slots_0_means_no_board)
{
	struct ubs_lst_entry e;
	struct ctl_board m;
	struct ubt_seg pg;
	uint16_t port;
	int ctl, fd = -1, lfd;

	start("[daemon]\nboard_slots = 0\n");
	ctl = dt_hello("board-off");
	cr_assert_eq(ask_board(ctl, &m, &fd), ENOENT);
	cr_assert_eq(fd, -1);
	/* A listener then carries no board. */
	map_policy(&pg);
	lfd = tcp_listen(&port);
	dt_send(ctl, CTL_REQ_LISTEN, NULL, 0, &lfd, 1);
	dt_expect(ctl, CTL_R_OK, NULL, NULL);
	e = lst_entry(&pg, port);
	cr_assert_eq(e.board, 0);
	cr_assert_eq(via_board(&pg, port, e.netns, 0), 0);
	/* The session goes on. */
	cr_assert_eq(ask_board(ctl, &m, &fd), ENOENT);
	close(lfd);
	close(ctl);
	ubt_seg_unmap(&pg);
}

Test(board, listener_entry_names_the_board_of_its_uid)
{
	struct ubs_lst_entry e;
	struct ctl_board m;
	struct ubt_seg pg;
	uint16_t port;
	int ctl, ctl2, fd, lfd;

	start("");
	map_policy(&pg);
	/* LISTEN before any BOARD makes the uid's board; the listener
	 * names it once a holder says it accepts (ACCEPTING). */
	ctl = dt_hello("board-srv");
	lfd = tcp_listen(&port);
	dt_send(ctl, CTL_REQ_LISTEN, NULL, 0, &lfd, 1);
	dt_expect(ctl, CTL_R_OK, NULL, NULL);
	e = lst_entry(&pg, port);
	cr_assert_eq(e.board, 0, "named before anyone accepts");
	dt_send(ctl, CTL_REQ_ACCEPTING, NULL, 0, &lfd, 1);
	dt_expect(ctl, CTL_R_OK, NULL, NULL);
	e = lst_entry(&pg, port);
	cr_assert_neq(e.board, 0);
	ctl2 = dt_hello("board-cli");
	cr_assert_eq(ask_board(ctl2, &m, &fd), 0);
	close(fd);
	cr_assert_eq(e.board, m.id, "the listener's board is its uid's");
	cr_assert_eq(via_board(&pg, port, e.netns, m.id), 1);
	cr_assert_eq(via_board(&pg, port, e.netns, m.id + 1), 0);
	cr_assert_eq(via_board(&pg, port, e.netns + 1, m.id), 0,
		     "no listener in another namespace");
	cr_assert_eq(via_board(&pg, (uint16_t)(port + 1), e.netns, m.id), 0);
	/* ACCEPTING from a session that does not hold it: refused. */
	{
		unsigned char body[CTL_MAX_BODY];
		struct ctl_hdr h;
		int fds[2], n = 2;

		dt_send(ctl2, CTL_REQ_ACCEPTING, NULL, 0, &lfd, 1);
		cr_assert_geq(dt_recv(ctl2, &h, body, fds, &n), 0);
		cr_assert_eq(h.type, CTL_R_ERROR);
	}
	/* A second holder of the same uid changes nothing. */
	dt_send(ctl2, CTL_REQ_LISTEN, NULL, 0, &lfd, 1);
	dt_expect(ctl2, CTL_R_OK, NULL, NULL);
	cr_assert_eq(lst_entry(&pg, port).board, m.id);
	close(lfd);
	close(ctl2);
	close(ctl);
	ubt_seg_unmap(&pg);
}

/* Is the peer of ctl gone (EOF within WAIT_MS), after at most a few
 * replies to what it read before the bad part? */
static int dropped(int ctl)
{
	unsigned char body[CTL_MAX_BODY];
	struct ctl_hdr h;

	for (int i = 0; i < 4; i++) {
		int fds[4], n = 4;

		if (dt_recv(ctl, &h, body, fds, &n) < 0)
			return 1;
		for (int k = 0; k < n; k++)
			close(fds[k]);
	}
	return 0;
}

Test(board, bad_board_requests_hurt_only_their_sender)
{
	unsigned char buf[sizeof(struct ctl_hdr) + CTL_MAX_BODY];
	struct ctl_board m;
	int ctl, ok, fd, efd;
	size_t n;

	start("");
	ok = dt_hello("board-ok");
	/* No session: refused, the connection stays. */
	ctl = dt_ctl_open();
	cr_assert_eq(ask_board(ctl, &m, &fd), EPERM);
	close(ctl);
	/* A body: dropped. */
	ctl = dt_hello("board-body");
	n = dt_ctl_frame(buf, CTL_REQ_BOARD, 1, "x", 1);
	cr_assert_eq(write(ctl, buf, n), (ssize_t)n);
	cr_assert(dropped(ctl));
	close(ctl);
	/* An fd: dropped. */
	ctl = dt_hello("board-fd");
	efd = dup(2);
	dt_send(ctl, CTL_REQ_BOARD, NULL, 0, &efd, 1);
	cr_assert(dropped(ctl));
	close(efd);
	close(ctl);
	/* A reply type as a request: dropped. */
	ctl = dt_hello("board-reply");
	memset(&m, 0, sizeof(m));
	n = dt_ctl_frame(buf, CTL_R_BOARD, 1, &m, sizeof(m));
	cr_assert_eq(write(ctl, buf, n), (ssize_t)n);
	cr_assert(dropped(ctl));
	close(ctl);
	/* Everyone else is served. */
	cr_assert_eq(ask_board(ok, &m, &fd), 0);
	close(fd);
	close(ok);
}

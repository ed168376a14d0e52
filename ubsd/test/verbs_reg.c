/* SPDX-License-Identifier: MIT */
/*
 * verbs_reg.c - ubsd's verbs endpoint registry, spoken by hand: context
 * segments, host-wide QPNs, the authentication rule for handing a peer's
 * segment over (own QP, known peer QPN, same type), the listing in
 * `ubsctl verbs`, and what a session's end leaves behind (QPs gone, the
 * segment's dead word set).
 */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "support/dtest.h"
#include "support/rvtest.h"

#define SEG (64u << 10)

static char ubsd_path[PATH_MAX], ubsctl_path[PATH_MAX];

static void setup(void)
{
	dt_bin_path(ubsd_path, sizeof(ubsd_path), "ubsd");
	dt_bin_path(ubsctl_path, sizeof(ubsctl_path), "ubsctl");
	dt_make_run_dir("/tmp/ubsd-verbs.XXXXXX");
	dt_start_daemon(ubsd_path);
}

TestSuite(verbs_reg, .init = setup, .fini = dt_teardown, .timeout = 30);

/* A memfd segment of SEG bytes, mapped into *map. */
static int segment(uint8_t **map)
{
	int fd = memfd_create("vreg-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	REQUIRE(fd >= 0 && ftruncate(fd, SEG) == 0);
	*map = mmap(NULL, SEG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	REQUIRE(*map != MAP_FAILED);
	return fd;
}

static uint64_t open_ctx(int ctl, int seg)
{
	struct ctl_verbs_open m = { .seg_size = SEG };
	struct ctl_verbs_ctx r;

	dt_send(ctl, CTL_REQ_VERBS_OPEN, &m, sizeof(m), &seg, 1);
	dt_expect(ctl, CTL_R_VERBS_CTX, &r, NULL);
	return r.ctx_id;
}

static uint32_t new_qp(int ctl, uint64_t ctx, uint32_t type)
{
	struct ctl_verbs_qp m = { .ctx_id = ctx, .qp_off = 4096,
				  .qp_type = type };
	struct ctl_verbs_qpn r;

	dt_send(ctl, CTL_REQ_VERBS_QP, &m, sizeof(m), NULL, 0);
	dt_expect(ctl, CTL_R_VERBS_QPN, &r, NULL);
	cr_assert(r.qpn >= 0x100 && r.qpn <= 0xffffff, "QPN %#x", r.qpn);
	return r.qpn;
}

/* CONNECT qpn to dest: the error number, or 0 with the peer's reply and
 * segment fd. */
static int connect_qp(int ctl, uint32_t qpn, uint32_t dest,
		      struct ctl_verbs_peer *peer, int *fd)
{
	struct ctl_verbs_connect m = { .qpn = qpn, .dest_qpn = dest };
	union {
		struct ctl_verbs_peer p;
		struct ctl_error e;
	} r;
	struct ctl_hdr h;
	int fds[2] = { -1, -1 }, n = 2;

	dt_send(ctl, CTL_REQ_VERBS_CONNECT, &m, sizeof(m), NULL, 0);
	REQUIRE(dt_recv(ctl, &h, &r, fds, &n) == 0);
	if (h.type == CTL_R_ERROR)
		return r.e.err;
	cr_assert_eq(h.type, CTL_R_VERBS_PEER);
	cr_assert_eq(n, 1);
	*peer = r.p;
	*fd = fds[0];
	return 0;
}

Test(verbs_reg, qpns_are_host_wide_and_peers_handed_over_by_the_rule)
{
	int a = dt_hello("verbs-a"), b = dt_hello("verbs-b"), fd = -1;
	uint8_t *ma, *mb, *mp;
	int sa = segment(&ma), sb = segment(&mb);
	uint64_t ca = open_ctx(a, sa), cb = open_ctx(b, sb);
	uint32_t qa = new_qp(a, ca, 2), qb = new_qp(b, cb, 2),
		 qu = new_qp(b, cb, 4);
	struct ctl_verbs_peer p;

	cr_assert_neq(qa, qb);
	cr_assert_neq(ca, cb);
	/* Not one of my QPs: refused. */
	cr_assert_eq(connect_qp(a, qb, qa, &p, &fd), EPERM);
	/* No such peer. */
	cr_assert_eq(connect_qp(a, qa, 0xfffffe, &p, &fd), ENOENT);
	/* RC to UD: refused. */
	cr_assert_eq(connect_qp(a, qa, qu, &p, &fd), EINVAL);
	/* My RC QP to the peer's RC QP: its segment, pid, QP offset. */
	cr_assert_eq(connect_qp(a, qa, qb, &p, &fd), 0);
	cr_assert_eq(p.pid, (uint32_t)getpid());
	cr_assert_eq(p.ctx_id, cb);
	cr_assert_eq(p.seg_size, SEG);
	cr_assert_eq(p.qp_off, 4096);
	mp = mmap(NULL, SEG, PROT_READ, MAP_SHARED, fd, 0);
	REQUIRE(mp != MAP_FAILED);
	mb[100] = 0x5a;                 /* the same memory as b's */
	cr_assert_eq(mp[100], 0x5a);

	/* ubsctl verbs lists the three QPs, a's connected to b's. */
	{
		const char *args[] = { "--json", "verbs", NULL };
		char out[OUT_MAX], err[OUT_MAX], want[64];

		cr_assert_eq(dt_run_ubsctl(ubsctl_path, args, out, err, NULL),
			     0, "%s", err);
		snprintf(want, sizeof(want), "{\"qpn\":%u,", qa);
		cr_assert(strstr(out, want), "%s", out);
		snprintf(want, sizeof(want), "\"dest_qpn\":%u", qb);
		cr_assert(strstr(out, want), "%s", out);
		cr_assert(strstr(out, "\"type\":\"UD\""), "%s", out);
	}

	/* b's session ends: its QPs are gone and its segment says so. */
	cr_assert_eq(*(volatile uint32_t *)(mp + CTL_VERBS_SEG_DEAD_OFF), 0);
	close(b);
	for (int i = 0; i < 200 &&
	     !*(volatile uint32_t *)(mp + CTL_VERBS_SEG_DEAD_OFF); i++)
		sleep_ms(10);
	cr_assert_eq(*(volatile uint32_t *)(mp + CTL_VERBS_SEG_DEAD_OFF), 1);
	cr_assert_eq(connect_qp(a, qa, qb, &p, &fd), ENOENT);
	close(a);
}

Test(verbs_reg, needs_a_session_and_a_memfd)
{
	int ctl = dt_ctl_open(), nofd, a;
	struct ctl_verbs_open m = { .seg_size = SEG };
	struct ctl_error e;
	uint8_t *map;
	int seg = segment(&map);

	dt_send(ctl, CTL_REQ_VERBS_OPEN, &m, sizeof(m), &seg, 1);
	dt_expect(ctl, CTL_R_ERROR, &e, NULL);
	cr_assert_eq(e.err, EPERM);
	/* A pipe is no segment. */
	{
		int p[2];

		REQUIRE(pipe(p) == 0);
		a = dt_hello("verbs-pipe");
		dt_send(a, CTL_REQ_VERBS_OPEN, &m, sizeof(m), &p[0], 1);
		dt_expect(a, CTL_R_ERROR, &e, NULL);
		cr_assert_eq(e.err, EINVAL);
		close(p[0]);
		close(p[1]);
	}
	/* A session holds at most 64 device contexts. */
	{
		int b = dt_hello("verbs-many"), i;

		for (i = 0; i < 64; i++) {
			uint8_t *mm;
			int s = segment(&mm);

			open_ctx(b, s);
			close(s);
			munmap(mm, SEG);
		}
		dt_send(b, CTL_REQ_VERBS_OPEN, &m, sizeof(m), &seg, 1);
		dt_expect(b, CTL_R_ERROR, &e, NULL);
		cr_assert_eq(e.err, EMFILE);
		close(b);
	}
	/* Nor is a memfd of another size than announced. */
	nofd = memfd_create("vreg-small", MFD_CLOEXEC);
	REQUIRE(nofd >= 0 && ftruncate(nofd, 4096) == 0);
	dt_send(a, CTL_REQ_VERBS_OPEN, &m, sizeof(m), &nofd, 1);
	dt_expect(a, CTL_R_ERROR, &e, NULL);
	cr_assert_eq(e.err, EINVAL);
	close(ctl);
	close(a);
}

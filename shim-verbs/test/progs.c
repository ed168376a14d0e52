/* SPDX-License-Identifier: MIT */
/*
 * progs.c - unmodified Debian verbs programs under the preload, client and
 * server as two processes on 127.0.0.1, against a private ubsd: the
 * ibverbs-utils examples and perftest with their default options.  This
 * machine has no RDMA device, so without the shim every one of them fails
 * ("No IB devices found").
 */
#include "support/vtest.h"

static void setup(void)
{
	dt_make_run_dir("/tmp/ubs-verbs-progs.XXXXXX");
	dt_start_daemon(UBSD_PATH);
}

static void teardown(void)
{
	dt_teardown();
}

TestSuite(verbs_progs, .init = setup, .fini = teardown, .timeout = 60);

/* Run "prog -p port args" as server, then as client of 127.0.0.1; both
 * must exit 0 within ms.  Their outputs are left in srv, cli. */
static void pair(struct vt_proc *srv, struct vt_proc *cli, const char *prog,
		 int port, const char *extra, int ms)
{
	char p[16], opts[64], *save = NULL;
	const char *sa[12], *ca[13];
	int n = 0;

	snprintf(p, sizeof(p), "%d", port);
	sa[n++] = prog;
	sa[n++] = "-p";
	sa[n++] = p;
	/* extra: options separated by spaces. */
	snprintf(opts, sizeof(opts), "%s", extra ? extra : "");
	for (char *o = strtok_r(opts, " ", &save); o && n < 10;
	     o = strtok_r(NULL, " ", &save))
		sa[n++] = o;
	sa[n] = NULL;
	memcpy(ca, sa, sizeof(sa[0]) * (size_t)n);
	ca[n] = "127.0.0.1";
	ca[n + 1] = NULL;
	vt_start(srv, sa, NULL);
	/* The server listens within a moment; a client too early retries
	 * in neither tool, so wait for the port. */
	for (int i = 0; i < 200; i++) {
		char cmd[128];

		snprintf(cmd, sizeof(cmd),
			 "ss -ltnH 'sport = :%d' 2>/dev/null | grep -q .",
			 port);
		if (system(cmd) == 0)
			break;
		sleep_ms(20);
	}
	vt_start(cli, ca, NULL);
	vt_finish(cli, ms);
	vt_finish(srv, 2000);
	cr_assert(vt_ok(cli), "%s client failed (status %d):\n%s", prog,
		  cli->status, cli->buf);
	cr_assert(vt_ok(srv), "%s server failed (status %d):\n%s", prog,
		  srv->status, srv->buf);
}

static struct vt_proc srv, cli;

/* Both sides of a pingpong report bytes and iterations (with -c, each
 * checks the contents of every buffer it received). */
static void pingpong(const char *prog, int port, const char *extra)
{
	pair(&srv, &cli, prog, port, extra, 20000);
	cr_expect(strstr(cli.buf, "bytes in") && strstr(cli.buf, "iters in"),
		  "%s client:\n%s", prog, cli.buf);
	cr_expect(strstr(srv.buf, "bytes in") && strstr(srv.buf, "iters in"),
		  "%s server:\n%s", prog, srv.buf);
	cr_expect(strstr(cli.buf, "LID 0x0001"), "%s: LID:\n%s", prog,
		  cli.buf);
}

Test(verbs_progs, ibv_devices)
{
	const char *a[] = { "ibv_devices", NULL };

	vt_start(&cli, a, NULL);
	vt_finish(&cli, 5000);
	cr_assert(vt_ok(&cli), "%s", cli.buf);
	cr_expect(strstr(cli.buf, "ubv0"), "%s", cli.buf);
}

Test(verbs_progs, ibv_devinfo)
{
	const char *a[] = { "ibv_devinfo", "-v", NULL };

	vt_start(&cli, a, NULL);
	vt_finish(&cli, 5000);
	cr_assert(vt_ok(&cli), "%s", cli.buf);
	cr_expect(strstr(cli.buf, "hca_id:\tubv0"), "%s", cli.buf);
	cr_expect(strstr(cli.buf, "PORT_ACTIVE"), "%s", cli.buf);
	cr_expect(strstr(cli.buf, "link_layer:\t\tInfiniBand"), "%s",
		  cli.buf);
	cr_expect(strstr(cli.buf, "port_lid:\t\t1"), "%s", cli.buf);
	cr_expect(strstr(cli.buf, "ATOMIC_HCA"), "%s", cli.buf);
	cr_expect(strstr(cli.buf, "GID[  0]:\t\tfe80:0000:0000:0000:"),
		  "%s", cli.buf);
}

Test(verbs_progs, ibv_rc_pingpong) { pingpong("ibv_rc_pingpong", 18601, "-c"); }
Test(verbs_progs, ibv_rc_pingpong_gid) {
	pingpong("ibv_rc_pingpong", 18602, "-g 0 -c");
	cr_expect(strstr(cli.buf, "GID fe80::"), "%s", cli.buf);
}
Test(verbs_progs, ibv_rc_pingpong_events) { pingpong("ibv_rc_pingpong", 18603, "-e -c"); }
/* -N: the ibv_wr_* API; -s 64: SENDs carried in the completion. */
Test(verbs_progs, ibv_rc_pingpong_new_send) { pingpong("ibv_rc_pingpong", 18607, "-N -c"); }
Test(verbs_progs, ibv_rc_pingpong_small) { pingpong("ibv_rc_pingpong", 18608, "-s 64 -c"); }
Test(verbs_progs, ibv_uc_pingpong) { pingpong("ibv_uc_pingpong", 18604, "-c"); }
Test(verbs_progs, ibv_ud_pingpong) { pingpong("ibv_ud_pingpong", 18605, "-c"); }
Test(verbs_progs, ibv_ud_pingpong_gid) { pingpong("ibv_ud_pingpong", 18609, "-g 0 -c"); }
Test(verbs_progs, ibv_srq_pingpong) { pingpong("ibv_srq_pingpong", 18606, "-c"); }
Test(verbs_progs, ibv_srq_pingpong_events) { pingpong("ibv_srq_pingpong", 18610, "-e"); }

/* perftest: the client prints the result table; its last data line
 * starts with the message size. */
static void perf_opt(const char *prog, int port, const char *opt,
		     const char *head, const char *size)
{
	char want[32];

	pair(&srv, &cli, prog, port, opt, 80000);
	cr_expect(strstr(cli.buf, head), "%s:\n%s", prog, cli.buf);
	snprintf(want, sizeof(want), "\n %s ", size);
	cr_expect(strstr(cli.buf, want), "%s: no result line for %s:\n%s",
		  prog, size, cli.buf);
	cr_expect(strstr(cli.buf, "LID 0x01"), "%s:\n%s", prog, cli.buf);
}

static void perf(const char *prog, int port, const char *head,
		 const char *size)
{
	perf_opt(prog, port, NULL, head, size);
}

/* -a: every size from 2 B to 8 MiB, 23 result lines. */
static void perf_all(const char *prog, int port, const char *head)
{
	int lines = 0;

	perf_opt(prog, port, "-a", head, "8388608");
	cr_expect(strstr(cli.buf, "\n 2 "), "%s -a: no 2 B line", prog);
	for (const char *p = cli.buf; (p = strchr(p, '\n')); p++)
		if (p[1] == ' ' && p[2] >= '1' && p[2] <= '9')
			lines++;
	cr_expect_eq(lines, 23, "%s -a: %d result lines:\n%s", prog, lines,
		     cli.buf);
}

#define LAT "t_avg[usec]"
#define BW "BW average[MB/sec]"
Test(verbs_progs, ib_send_lat) { perf("ib_send_lat", 18611, LAT, "2"); }
Test(verbs_progs, ib_write_lat) { perf("ib_write_lat", 18612, LAT, "2"); }
Test(verbs_progs, ib_read_lat) { perf("ib_read_lat", 18613, LAT, "2"); }
Test(verbs_progs, ib_atomic_lat) { perf("ib_atomic_lat", 18614, LAT, "8"); }
Test(verbs_progs, ib_send_bw) { perf("ib_send_bw", 18615, BW, "65536"); }
Test(verbs_progs, ib_write_bw) { perf("ib_write_bw", 18616, BW, "65536"); }
Test(verbs_progs, ib_read_bw) { perf("ib_read_bw", 18617, BW, "65536"); }

/* -a (all sizes): 7 to 20 s each here.  ib_atomic_lat takes no -a
 * ("Message size cannot be changed for Atomic tests"). */
Test(verbs_progs, ib_send_lat_all, .timeout = 100) { perf_all("ib_send_lat", 18621, LAT); }
Test(verbs_progs, ib_write_lat_all, .timeout = 100) { perf_all("ib_write_lat", 18622, LAT); }
Test(verbs_progs, ib_read_lat_all, .timeout = 100) { perf_all("ib_read_lat", 18623, LAT); }
Test(verbs_progs, ib_send_bw_all, .timeout = 100) { perf_all("ib_send_bw", 18624, BW); }
Test(verbs_progs, ib_write_bw_all, .timeout = 100) { perf_all("ib_write_bw", 18625, BW); }
Test(verbs_progs, ib_read_bw_all, .timeout = 100) { perf_all("ib_read_bw", 18626, BW); }

/* Other transports and options of perftest. */
static void perf_x(const char *prog, int port, const char *opt,
		   const char *head, const char *size)
{
	perf_opt(prog, port, opt, head, size);
}

Test(verbs_progs, ib_send_lat_ud) { perf_x("ib_send_lat", 18631, "-c UD", LAT, "2"); }
Test(verbs_progs, ib_send_bw_ud) { perf_x("ib_send_bw", 18632, "-c UD", BW, "4096"); }
Test(verbs_progs, ib_send_lat_uc) { perf_x("ib_send_lat", 18633, "-c UC", LAT, "2"); }
Test(verbs_progs, ib_write_bw_uc) { perf_x("ib_write_bw", 18634, "-c UC", BW, "65536"); }
Test(verbs_progs, ib_send_lat_events) { perf_x("ib_send_lat", 18635, "-e", LAT, "2"); }
Test(verbs_progs, ib_send_bw_events) { perf_x("ib_send_bw", 18636, "-e", BW, "65536"); }
Test(verbs_progs, ib_write_bw_4qps) { perf_x("ib_write_bw", 18637, "-q 4", BW, "65536"); }
Test(verbs_progs, ib_send_bw_old_post_send) { perf_x("ib_send_bw", 18638, "--use_old_post_send", BW, "65536"); }
Test(verbs_progs, ib_atomic_bw_cas) { perf_x("ib_atomic_bw", 18639, "-A CMP_AND_SWAP", BW, "8"); }

/* Without ubsd the device still lists and opens, but no QP can be made
 * (no peer could ever reach it): the program says so and exits, at once. */
Test(verbs_progs, without_daemon_no_qp)
{
	const char *d[] = { "ibv_devinfo", "-l", NULL };
	const char *a[] = { "ibv_rc_pingpong", "-p", "18640", NULL };

	kill_reap(&daemon_pid);
	vt_start(&cli, d, NULL);
	vt_finish(&cli, 5000);
	cr_assert(vt_ok(&cli), "%s", cli.buf);
	cr_expect(strstr(cli.buf, "ubv0"), "%s", cli.buf);
	vt_start(&srv, a, NULL);
	cr_assert_neq(vt_finish(&srv, 5000), -1, "hung:\n%s", srv.buf);
	cr_expect(WIFEXITED(srv.status) && WEXITSTATUS(srv.status) == 1,
		  "status %d:\n%s", srv.status, srv.buf);
	cr_expect(strstr(srv.buf, "Couldn't create QP"), "%s", srv.buf);
}

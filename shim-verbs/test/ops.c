/* SPDX-License-Identifier: MIT */
/*
 * ops.c - verbs operations and their error paths between two processes
 * under the preload.  This binary is its own helper: started with
 * VT_ROLE=target or VT_ROLE=initiator (and the preload), a constructor
 * runs the role and exits before Criterion starts.  The two roles meet
 * through files in the run directory: the target publishes its QPN,
 * buffer address and rkey, the initiator its QPN.
 *
 * VT_CASE: rdma (WRITE, READ, FETCH_ADD, CMP_SWAP; with VT_STOP=1 the
 * target SIGSTOPs itself first and must not be needed), noaccess (a WRITE
 * into an MR without REMOTE_WRITE), send (SEND with immediate, the target
 * waiting in poll() on its completion channel), rnr (no receive posted,
 * rnr_retry 1), dead (the target is gone), modify (illegal QP
 * transitions, one process).
 */
#include "support/vtest.h"

#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <pthread.h>
#include <sys/mman.h>

#include "vshim.h"              /* the counters in our segment header */

#define BUF 4096

static char vt_dir[128];

static void fput(const char *name, const char *text)
{
	char p[256], tmp[260];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", vt_dir, name);
	snprintf(tmp, sizeof(tmp), "%s.t", p);
	f = fopen(tmp, "w");
	if (!f)
		_exit(20);
	fputs(text, f);
	fclose(f);
	rename(tmp, p);
}

/* Wait (5 s at most) for a file and read it. */
static void fget(const char *name, char *buf, size_t n)
{
	char p[256];

	snprintf(p, sizeof(p), "%s/%s", vt_dir, name);
	for (int i = 0; i < 500; i++) {
		FILE *f = fopen(p, "r");

		if (f) {
			size_t r = fread(buf, 1, n - 1, f);

			buf[r] = '\0';
			fclose(f);
			return;
		}
		usleep(10000);
	}
	fprintf(stderr, "no %s\n", name);
	_exit(21);
}

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "%s:%d: %s (%s)\n", \
	__FILE__, __LINE__, #x, strerror(errno)); _exit(3); } } while (0)

struct res {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_comp_channel *ch;
	struct ibv_cq *cq;
	struct ibv_qp *qp;
	struct ibv_mr *mr;
	char *buf;
};

static void open_res(struct res *r, int access)
{
	struct ibv_device **l = ibv_get_device_list(NULL);
	struct ibv_qp_init_attr qa = { .cap = { .max_send_wr = 16,
		.max_recv_wr = 16, .max_send_sge = 4, .max_recv_sge = 4 },
		.qp_type = IBV_QPT_RC };
	struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .port_num = 1,
		.qp_access_flags = IBV_ACCESS_REMOTE_WRITE |
			IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC };

	CHECK(l && l[0] && !strcmp(ibv_get_device_name(l[0]), "ubv0"));
	CHECK((r->ctx = ibv_open_device(l[0])));
	ibv_free_device_list(l);
	CHECK((r->pd = ibv_alloc_pd(r->ctx)));
	CHECK((r->ch = ibv_create_comp_channel(r->ctx)));
	CHECK((r->cq = ibv_create_cq(r->ctx, 32, NULL, r->ch, 0)));
	qa.send_cq = qa.recv_cq = r->cq;
	CHECK((r->qp = ibv_create_qp(r->pd, &qa)));
	CHECK(posix_memalign((void **)&r->buf, 4096, BUF) == 0);
	memset(r->buf, 'T', BUF);
	CHECK((r->mr = ibv_reg_mr(r->pd, r->buf, BUF, access)));
	CHECK(ibv_modify_qp(r->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX |
			    IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) == 0);
}

static void connect_res(struct res *r, uint32_t dest, int rnr_retry)
{
	struct ibv_qp_attr a = { .qp_state = IBV_QPS_RTR,
		.path_mtu = IBV_MTU_1024, .dest_qp_num = dest,
		.max_dest_rd_atomic = 1, .min_rnr_timer = 1,
		.ah_attr = { .dlid = 1, .port_num = 1 } };

	CHECK(ibv_modify_qp(r->qp, &a, IBV_QP_STATE | IBV_QP_AV |
			    IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
			    IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
			    IBV_QP_MIN_RNR_TIMER) == 0);
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 1;
	a.retry_cnt = 1;
	a.rnr_retry = (uint8_t)rnr_retry;
	a.max_rd_atomic = 1;
	CHECK(ibv_modify_qp(r->qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT |
			    IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
			    IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) == 0);
}

/* Post one WR and wait (2 s) for its completion. */
static struct ibv_wc one(struct res *r, struct ibv_send_wr *wr)
{
	struct ibv_send_wr *bad;
	struct ibv_wc wc;

	wr->send_flags |= IBV_SEND_SIGNALED;
	CHECK(ibv_post_send(r->qp, wr, &bad) == 0);
	for (int i = 0; i < 2000000; i++) {
		int n = ibv_poll_cq(r->cq, 1, &wc);

		CHECK(n >= 0);
		if (n == 1)
			return wc;
		if (i > 1000)
			usleep(1);
	}
	fprintf(stderr, "no completion\n");
	_exit(4);
}

#define NFAA 2000                       /* per initiator (atomics2) */

static struct ibv_qp *second_qp(struct res *r)
{
	struct ibv_qp_init_attr qa = { .send_cq = r->cq, .recv_cq = r->cq,
		.cap = { .max_send_wr = 16, .max_recv_wr = 16,
			 .max_send_sge = 1, .max_recv_sge = 1 },
		.qp_type = IBV_QPT_RC };
	struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .port_num = 1,
		.qp_access_flags = IBV_ACCESS_REMOTE_WRITE |
			IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC };
	struct ibv_qp *qp = ibv_create_qp(r->pd, &qa);

	CHECK(qp);
	CHECK(ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX |
			    IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) == 0);
	return qp;
}

static void role_target(const char *cs)
{
	struct res r;
	char line[128];
	unsigned iq, iq2 = 0;
	struct ibv_qp *qp2 = NULL;
	struct ibv_srq *srq = NULL;
	int acc = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
		IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;

	if (!strcmp(cs, "noaccess"))
		acc = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ;
	open_res(&r, acc);
	if (!strcmp(cs, "zc")) {
		/* The MR lies in a sealed memfd mapping: initiators map it
		 * and copy with memcpy. */
		int fd = memfd_create("vt-zc", MFD_CLOEXEC | MFD_ALLOW_SEALING);

		CHECK(fd >= 0 && ftruncate(fd, BUF) == 0);
		CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0);
		r.buf = mmap(NULL, BUF, PROT_READ | PROT_WRITE, MAP_SHARED,
			     fd, 0);
		CHECK(r.buf != MAP_FAILED);
		memset(r.buf, 'T', BUF);
		CHECK((r.mr = ibv_reg_mr(r.pd, r.buf, BUF, acc)));
	}
	*(uint64_t *)(r.buf + 128) = 40;
	*(uint64_t *)(r.buf + 136) = 7;
	if (!strcmp(cs, "atomics2") || !strcmp(cs, "threads")) {
		qp2 = second_qp(&r);
		*(uint64_t *)(r.buf + 128) = 0;
	}
	if (!strcmp(cs, "srqlimit")) {
		/* The initiator's QP meets one fed by an SRQ of 4 receives,
		 * armed at 2: its third SEND raises SRQ_LIMIT_REACHED. */
		struct ibv_srq_init_attr sa = { .attr = { .max_wr = 8,
							  .max_sge = 1 } };
		struct ibv_qp_init_attr qa = { .send_cq = r.cq,
			.recv_cq = r.cq, .cap = { .max_send_wr = 4,
						  .max_send_sge = 1 },
			.qp_type = IBV_QPT_RC };
		struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT,
					 .port_num = 1 };
		struct ibv_srq_attr lim = { .srq_limit = 2 };

		CHECK((srq = ibv_create_srq(r.pd, &sa)));
		qa.srq = srq;
		CHECK((r.qp = ibv_create_qp(r.pd, &qa)));
		CHECK(ibv_modify_qp(r.qp, &a, IBV_QP_STATE |
				    IBV_QP_PKEY_INDEX | IBV_QP_PORT |
				    IBV_QP_ACCESS_FLAGS) == 0);
		for (int i = 0; i < 4; i++) {
			struct ibv_sge s = { (uintptr_t)r.buf + 64 * i, 64,
					     r.mr->lkey };
			struct ibv_recv_wr w = { .wr_id = 100 + i,
						 .sg_list = &s,
						 .num_sge = 1 }, *bad;

			CHECK(ibv_post_srq_recv(srq, &w, &bad) == 0);
		}
		CHECK(ibv_modify_srq(srq, &lim, IBV_SRQ_LIMIT) == 0);
	}
	snprintf(line, sizeof(line), "%u %llu %u %u\n", r.qp->qp_num,
		 (unsigned long long)(uintptr_t)r.buf, r.mr->rkey,
		 qp2 ? qp2->qp_num : 0);
	fput("target", line);
	fget("initiator0", line, sizeof(line));
	CHECK(sscanf(line, "%u", &iq) == 1);
	if (qp2) {
		struct ibv_qp *q1 = r.qp;

		fget("initiator1", line, sizeof(line));
		CHECK(sscanf(line, "%u", &iq2) == 1);
		r.qp = qp2;
		connect_res(&r, iq2, 7);
		r.qp = q1;
	}
	if (!strcmp(cs, "badlkey")) {
		/* A receive buffer under a key that is not ours. */
		struct ibv_sge a = { (uintptr_t)r.buf, 2000,
				     r.mr->lkey + 0x100 };
		struct ibv_recv_wr w1 = { .wr_id = 1, .sg_list = &a,
					  .num_sge = 1 }, *bad;

		CHECK(ibv_post_recv(r.qp, &w1, &bad) == 0);
	}
	if (!strcmp(cs, "sge") || !strcmp(cs, "toolong")) {
		/* Receives of two SGEs each: [0,700) + [1000,1700) for a
		 * large SEND (copy path), [2000,5) + [2100,10) for a small
		 * one (carried in the completion); toolong: 16 bytes. */
		struct ibv_sge a[2] = {
			{ (uintptr_t)r.buf, 700, r.mr->lkey },
			{ (uintptr_t)r.buf + 1000, 700, r.mr->lkey } };
		struct ibv_sge b[2] = {
			{ (uintptr_t)r.buf + 2000, 5, r.mr->lkey },
			{ (uintptr_t)r.buf + 2100, 10, r.mr->lkey } };
		struct ibv_recv_wr w1 = { .wr_id = 1, .sg_list = a,
					  .num_sge = 2 };
		struct ibv_recv_wr w2 = { .wr_id = 2, .sg_list = b,
					  .num_sge = 2 }, *bad;

		if (!strcmp(cs, "toolong"))
			a[0].length = 16, w1.num_sge = 1;
		w1.next = &w2;
		CHECK(ibv_post_recv(r.qp, &w1, &bad) == 0);
	}
	if (!strcmp(cs, "send")) {
		struct ibv_sge s = { (uintptr_t)r.buf, BUF, r.mr->lkey };
		struct ibv_recv_wr w = { .wr_id = 77, .sg_list = &s,
					 .num_sge = 1 }, *bad;

		CHECK(ibv_post_recv(r.qp, &w, &bad) == 0);
		CHECK(ibv_req_notify_cq(r.cq, 0) == 0);
	}
	connect_res(&r, iq, 7);
	fput("ready", "1\n");
	if (getenv("VT_STOP"))
		raise(SIGSTOP);
	if (!strcmp(cs, "hostile")) {
		/* Scribble over every verbs segment we have mapped, ours
		 * and the initiator's, past their first 64 bytes: QP
		 * records, queues, CQ rings, MR tables, lock words. */
		FILE *m = fopen("/proc/self/maps", "r");
		unsigned long lo, hi;
		char l[512];
		int n = 0;

		CHECK(m);
		fget("connected", line, sizeof(line));
		while (fgets(l, sizeof(l), m))
			if (strstr(l, "memfd:ubs-verbs") &&
			    sscanf(l, "%lx-%lx", &lo, &hi) == 2) {
				memset((char *)lo + 64, 0xff, (4u << 20) - 64);
				n++;
			}
		fclose(m);
		CHECK(n == 2);
		fput("scribbled", "1\n");
		/* Our own polls survive it too. */
		for (int i = 0; i < 1000; i++) {
			struct ibv_wc wc[4];

			CHECK(ibv_poll_cq(r.cq, 4, wc) >= 0);
		}
	}
	if (!strcmp(cs, "send")) {
		struct pollfd p = { .fd = r.ch->fd, .events = POLLIN };
		struct ibv_cq *cq;
		struct ibv_wc wc;
		void *cctx;

		CHECK(poll(&p, 1, 5000) == 1);
		CHECK(ibv_get_cq_event(r.ch, &cq, &cctx) == 0 && cq == r.cq);
		ibv_ack_cq_events(cq, 1);
		/* The event is taken: the fd is quiet again. */
		CHECK(poll(&p, 1, 0) == 0);
		CHECK(ibv_poll_cq(r.cq, 1, &wc) == 1);
		CHECK(wc.status == IBV_WC_SUCCESS && wc.wr_id == 77);
		CHECK(wc.opcode == IBV_WC_RECV && wc.byte_len == 11);
		CHECK((wc.wc_flags & IBV_WC_WITH_IMM) &&
		      ntohl(wc.imm_data) == 0xabcd);
		CHECK(wc.src_qp == iq && wc.qp_num == r.qp->qp_num);
		CHECK(!memcmp(r.buf, "hello verbs", 11));
	}
	if (srq) {
		struct ibv_async_event ev;
		struct ibv_srq_attr q;
		struct pollfd p = { .fd = r.ctx->async_fd, .events = POLLIN };

		CHECK(poll(&p, 1, 5000) == 1);
		CHECK(ibv_get_async_event(r.ctx, &ev) == 0);
		CHECK(ev.event_type == IBV_EVENT_SRQ_LIMIT_REACHED &&
		      ev.element.srq == srq);
		ibv_ack_async_event(&ev);
		CHECK(ibv_query_srq(srq, &q) == 0 && q.srq_limit == 0);
		CHECK(poll(&p, 1, 0) == 0);     /* once only */
	}
	if (!strcmp(cs, "late")) {
		struct ibv_sge s = { (uintptr_t)r.buf, BUF, r.mr->lkey };
		struct ibv_recv_wr w = { .wr_id = 7, .sg_list = &s,
					 .num_sge = 1 }, *bad;

		fget("posted", line, sizeof(line));
		usleep(300000);
		CHECK(ibv_post_recv(r.qp, &w, &bad) == 0);
	}
	fget("done0", line, sizeof(line));
	if (!strcmp(cs, "sge")) {
		struct ibv_wc wc[2];
		int n = 0;

		for (int i = 0; i < 1000 && n < 2; i++)
			n += ibv_poll_cq(r.cq, 2 - n, wc + n);
		CHECK(n == 2);
		CHECK(wc[0].status == IBV_WC_SUCCESS && wc[0].wr_id == 1 &&
		      wc[0].byte_len == 1200);
		CHECK(wc[1].status == IBV_WC_SUCCESS && wc[1].wr_id == 2 &&
		      wc[1].byte_len == 8);
		/* 1200 bytes i%251 across [0,700) and [1000,1500). */
		for (int i = 0; i < 1200; i++)
			CHECK((uint8_t)r.buf[i < 700 ? i : 1000 + i - 700] ==
			      (uint8_t)(i % 251));
		CHECK(r.buf[1500] == 'T');
		CHECK(!memcmp(r.buf + 2000, "small", 5) &&
		      !memcmp(r.buf + 2100, "ish", 3) && r.buf[2103] == 'T');
	}
	if (!strcmp(cs, "toolong") || !strcmp(cs, "badlkey")) {
		struct ibv_wc wc;
		int n = 0;

		for (int i = 0; i < 1000 && !n; i++)
			n = ibv_poll_cq(r.cq, 1, &wc);
		CHECK(n == 1 && wc.wr_id == 1 &&
		      wc.status == (!strcmp(cs, "toolong") ?
				    IBV_WC_LOC_LEN_ERR : IBV_WC_LOC_PROT_ERR));
		CHECK(r.buf[0] == 'T');         /* nothing written */
	}
	if (qp2) {
		fget("done1", line, sizeof(line));
		/* Every add of both initiators, none lost. */
		CHECK(*(volatile uint64_t *)(r.buf + 128) == 2 * NFAA);
	}
	if (!strcmp(cs, "rdma") || !strcmp(cs, "zc")) {
		/* What the initiator did, seen in our memory. */
		CHECK(!memcmp(r.buf, "WWWWWWWW", 8) && r.buf[64] == 'T');
		CHECK(*(uint64_t *)(r.buf + 128) == 45);
		CHECK(*(uint64_t *)(r.buf + 136) == 99);
	}
	if (!strcmp(cs, "noaccess"))
		CHECK(r.buf[0] == 'T');
	_exit(0);
}

/* One thread of the "threads" initiator: NFAA adds through its own QP
 * and CQ, while the other thread does the same through its own. */
struct faa_job {
	struct res r;                   /* its QP and CQ; pd, mr shared */
	uint64_t addr;
	uint32_t rkey;
	int fails;
};

static void *faa_thread(void *arg)
{
	struct faa_job *j = arg;
	struct ibv_sge s = { (uintptr_t)j->r.buf, 8, j->r.mr->lkey };
	struct ibv_send_wr w = { .sg_list = &s, .num_sge = 1,
				 .opcode = IBV_WR_ATOMIC_FETCH_AND_ADD };

	w.wr.atomic.remote_addr = j->addr + 128;
	w.wr.atomic.rkey = j->rkey;
	w.wr.atomic.compare_add = 1;
	for (int i = 0; i < NFAA; i++) {
		struct ibv_wc wc = one(&j->r, &w);

		j->fails += wc.status != IBV_WC_SUCCESS;
	}
	return NULL;
}

/* Two threads, two QPs, one peer: what the peer caches and locks guard. */
static void role_threads(void)
{
	struct faa_job j[2];
	pthread_t t[2];
	char line[128];
	unsigned tq, tq2, rkey;
	unsigned long long addr;

	open_res(&j[0].r, IBV_ACCESS_LOCAL_WRITE);
	j[1].r = j[0].r;
	CHECK((j[1].r.cq = ibv_create_cq(j[0].r.ctx, 32, NULL, NULL, 0)));
	{
		struct ibv_qp_init_attr qa = { .send_cq = j[1].r.cq,
			.recv_cq = j[1].r.cq, .cap = { .max_send_wr = 16,
			.max_recv_wr = 16, .max_send_sge = 1,
			.max_recv_sge = 1 }, .qp_type = IBV_QPT_RC };
		struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT,
					 .port_num = 1 };

		CHECK((j[1].r.qp = ibv_create_qp(j[0].r.pd, &qa)));
		CHECK(ibv_modify_qp(j[1].r.qp, &a, IBV_QP_STATE |
				    IBV_QP_PKEY_INDEX | IBV_QP_PORT |
				    IBV_QP_ACCESS_FLAGS) == 0);
	}
	/* The second buffer: 8 bytes further into the same MR. */
	j[1].r.buf = j[0].r.buf + 64;
	fget("target", line, sizeof(line));
	CHECK(sscanf(line, "%u %llu %u %u", &tq, &addr, &rkey, &tq2) == 4);
	snprintf(line, sizeof(line), "%u\n", j[0].r.qp->qp_num);
	fput("initiator0", line);
	snprintf(line, sizeof(line), "%u\n", j[1].r.qp->qp_num);
	fput("initiator1", line);
	fget("ready", line, sizeof(line));
	connect_res(&j[0].r, tq, 7);
	connect_res(&j[1].r, tq2, 7);
	for (int i = 0; i < 2; i++) {
		j[i].addr = addr;
		j[i].rkey = rkey;
		j[i].fails = 0;
		CHECK(pthread_create(&t[i], NULL, faa_thread, &j[i]) == 0);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	CHECK(j[0].fails == 0 && j[1].fails == 0);
	fput("done0", "1\n");
	fput("done1", "1\n");
	_exit(0);
}

/* The header of this process's own verbs segment. */
static const struct vs_shm_hdr *own_hdr(void)
{
	FILE *m = fopen("/proc/self/maps", "r");
	unsigned long lo, hi;
	char l[512];

	CHECK(m);
	while (fgets(l, sizeof(l), m))
		if (strstr(l, "memfd:ubs-verbs") &&
		    sscanf(l, "%lx-%lx", &lo, &hi) == 2 &&
		    ((const struct vs_shm_hdr *)lo)->pid == (uint32_t)getpid()) {
			fclose(m);
			return (const struct vs_shm_hdr *)lo;
		}
	fclose(m);
	CHECK(!"own segment found");
	return NULL;
}

static void role_initiator(const char *cs)
{
	struct res r;
	char line[128];
	unsigned tq, rkey;
	unsigned long long addr;
	struct ibv_sge s;
	struct ibv_send_wr w;
	struct ibv_wc wc;
	unsigned tq2;
	int idx = getenv("VT_IDX") ? atoi(getenv("VT_IDX")) : 0;
	char name[32];

	open_res(&r, IBV_ACCESS_LOCAL_WRITE);
	fget("target", line, sizeof(line));
	CHECK(sscanf(line, "%u %llu %u %u", &tq, &addr, &rkey, &tq2) == 4);
	if (idx == 1)
		tq = tq2;
	snprintf(line, sizeof(line), "%u\n", r.qp->qp_num);
	snprintf(name, sizeof(name), "initiator%d", idx);
	fput(name, line);
	fget("ready", line, sizeof(line));
	if (!strcmp(cs, "dead")) {
		/* The test killed the target after "ready". */
		fget("killed", line, sizeof(line));
	}
	connect_res(&r, tq, !strcmp(cs, "rnr") || !strcmp(cs, "hostile") ?
		    1 : 7);
	if (getenv("VT_RESTART")) {
		/* The test restarts ubsd now: connected QPs need it not. */
		fput("connected", "1\n");
		fget("go", line, sizeof(line));
	}
	if (!strcmp(cs, "hostile")) {
		fput("connected", "1\n");
		fget("scribbled", line, sizeof(line));
		memset(&w, 0, sizeof(w));
		w.sg_list = &s;
		w.num_sge = 1;
		s.lkey = r.mr->lkey;
		s.addr = (uintptr_t)r.buf;
		s.length = 8;
		/* Each completes, with an error or not, and nothing more. */
		w.opcode = IBV_WR_SEND;
		wc = one(&r, &w);
		w.opcode = IBV_WR_RDMA_WRITE;
		w.wr.rdma.remote_addr = addr;
		w.wr.rdma.rkey = rkey;
		wc = one(&r, &w);
		w.opcode = IBV_WR_RDMA_READ;
		wc = one(&r, &w);
		w.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
		w.wr.atomic.remote_addr = addr + 128;
		w.wr.atomic.rkey = rkey;
		wc = one(&r, &w);
		goto done;
	}
	if (getenv("VT_STOP")) {
		/* Wait until the target really is stopped. */
		fget("stopped", line, sizeof(line));
	}
	memset(&w, 0, sizeof(w));
	w.sg_list = &s;
	w.num_sge = 1;
	s.lkey = r.mr->lkey;
	s.addr = (uintptr_t)r.buf;
	if (!strcmp(cs, "rdma") || !strcmp(cs, "noaccess") ||
	    !strcmp(cs, "dead") || !strcmp(cs, "zc")) {
		memset(r.buf, 'W', 8);
		s.length = 8;
		w.wr_id = 1;
		w.opcode = IBV_WR_RDMA_WRITE;
		w.wr.rdma.remote_addr = addr;
		w.wr.rdma.rkey = rkey;
		if (!strcmp(cs, "noaccess") && getenv("VT_LIST")) {
			/* Three WRs in one post: the first fails, the other
			 * two are flushed, none is lost. */
			struct ibv_send_wr w2 = w, w3 = w, *bad;
			struct ibv_wc wcs[3];
			int n = 0;

			w.wr_id = 21;
			w2.wr_id = 22;
			w3.wr_id = 23;
			w.next = &w2;
			w2.next = &w3;
			w3.next = NULL;
			w.send_flags = w2.send_flags = w3.send_flags =
				IBV_SEND_SIGNALED;
			CHECK(ibv_post_send(r.qp, &w, &bad) == 0);
			for (int i = 0; i < 1000 && n < 3; i++)
				n += ibv_poll_cq(r.cq, 3 - n, wcs + n);
			CHECK(n == 3);
			CHECK(wcs[0].wr_id == 21 &&
			      wcs[0].status == IBV_WC_REM_ACCESS_ERR);
			CHECK(wcs[1].wr_id == 22 &&
			      wcs[1].status == IBV_WC_WR_FLUSH_ERR);
			CHECK(wcs[2].wr_id == 23 &&
			      wcs[2].status == IBV_WC_WR_FLUSH_ERR);
			goto done;
		}
		wc = one(&r, &w);
		if (!strcmp(cs, "noaccess")) {
			CHECK(wc.status == IBV_WC_REM_ACCESS_ERR);
			/* The QP is in error now: the next WR is flushed. */
			w.wr_id = 2;
			wc = one(&r, &w);
			CHECK(wc.status == IBV_WC_WR_FLUSH_ERR && wc.wr_id == 2);
			goto done;
		}
		if (!strcmp(cs, "dead")) {
			CHECK(wc.status == IBV_WC_RETRY_EXC_ERR);
			goto done;
		}
		CHECK(wc.status == IBV_WC_SUCCESS && wc.wr_id == 1 &&
		      wc.opcode == IBV_WC_RDMA_WRITE);
		/* READ back what we wrote plus the untouched rest. */
		memset(r.buf, 0, 128);
		s.length = 72;
		w.wr_id = 2;
		w.opcode = IBV_WR_RDMA_READ;
		wc = one(&r, &w);
		CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode ==
		      IBV_WC_RDMA_READ && wc.byte_len == 72);
		CHECK(!memcmp(r.buf, "WWWWWWWW", 8) && r.buf[8] == 'T' &&
		      r.buf[71] == 'T');
		/* Atomics: 40 + 5, then 7 -> 99 (compare matches). */
		s.length = 8;
		w.wr_id = 3;
		w.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
		w.wr.atomic.remote_addr = addr + 128;
		w.wr.atomic.rkey = rkey;
		w.wr.atomic.compare_add = 5;
		wc = one(&r, &w);
		CHECK(wc.status == IBV_WC_SUCCESS &&
		      wc.opcode == IBV_WC_FETCH_ADD);
		CHECK(*(uint64_t *)r.buf == 40);
		w.wr_id = 4;
		w.opcode = IBV_WR_ATOMIC_CMP_AND_SWP;
		w.wr.atomic.remote_addr = addr + 136;
		w.wr.atomic.compare_add = 7;
		w.wr.atomic.swap = 99;
		wc = one(&r, &w);
		CHECK(wc.status == IBV_WC_SUCCESS &&
		      wc.opcode == IBV_WC_COMP_SWAP && *(uint64_t *)r.buf == 7);
		/* Which path the work took, from our segment's counters. */
		{
			const struct vs_shm_hdr *h = own_hdr();

			if (!strcmp(cs, "zc"))
				CHECK(h->zc_ops == 6 && h->copy_ops == 0);
			else
				CHECK(h->zc_ops == 0 && h->copy_ops == 6);
		}
		goto done;
	}
	if (!strcmp(cs, "atomics2")) {
		s.length = 8;
		w.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
		w.wr.atomic.remote_addr = addr + 128;
		w.wr.atomic.rkey = rkey;
		w.wr.atomic.compare_add = 1;
		for (int i = 0; i < NFAA; i++) {
			w.wr_id = (uint64_t)i;
			wc = one(&r, &w);
			CHECK(wc.status == IBV_WC_SUCCESS);
			CHECK(*(uint64_t *)r.buf < 2 * NFAA);
		}
		goto done;
	}
	if (!strcmp(cs, "sge") || !strcmp(cs, "toolong") ||
	    !strcmp(cs, "badlkey")) {
		/* Gathered from three SGEs of ours. */
		struct ibv_sge g[3] = {
			{ (uintptr_t)r.buf, 100, r.mr->lkey },
			{ (uintptr_t)r.buf + 1000, 1000, r.mr->lkey },
			{ (uintptr_t)r.buf + 3000, 100, r.mr->lkey } };

		for (int i = 0; i < 1200; i++)
			r.buf[i < 100 ? i : i < 1100 ? 1000 + i - 100 :
			      3000 + i - 1100] = (char)(i % 251);
		CHECK(r.qp->context);
		w.sg_list = g;
		w.num_sge = 3;
		w.opcode = IBV_WR_SEND;
		w.wr_id = 11;
		wc = one(&r, &w);
		if (!strcmp(cs, "toolong")) {
			CHECK(wc.status == IBV_WC_REM_INV_REQ_ERR);
			goto done;
		}
		if (!strcmp(cs, "badlkey")) {
			CHECK(wc.status == IBV_WC_REM_OP_ERR);
			goto done;
		}
		CHECK(wc.status == IBV_WC_SUCCESS);
		memcpy(r.buf + 3500, "smallish", 8);
		g[0].addr = (uintptr_t)r.buf + 3500;
		g[0].length = 8;
		w.num_sge = 1;
		w.wr_id = 12;
		wc = one(&r, &w);
		CHECK(wc.status == IBV_WC_SUCCESS);
		goto done;
	}
	if (!strcmp(cs, "srqlimit")) {
		s.length = 8;
		w.opcode = IBV_WR_SEND;
		for (int i = 0; i < 3; i++) {
			w.wr_id = (uint64_t)i;
			wc = one(&r, &w);
			CHECK(wc.status == IBV_WC_SUCCESS);
		}
		goto done;
	}
	if (!strcmp(cs, "late")) {
		/* The target posts its receive 300 ms from now; we sleep in
		 * poll() on our channel meanwhile, making no verbs call: the
		 * send must still complete (the device retries, not us). */
		struct ibv_send_wr *bad;
		struct pollfd p = { .fd = r.ch->fd, .events = POLLIN };
		struct ibv_cq *cq;
		void *cctx;

		s.length = 8;
		w.wr_id = 5;
		w.opcode = IBV_WR_SEND;
		w.send_flags = IBV_SEND_SIGNALED;
		CHECK(ibv_req_notify_cq(r.cq, 0) == 0);
		CHECK(ibv_post_send(r.qp, &w, &bad) == 0);
		CHECK(ibv_poll_cq(r.cq, 1, &wc) == 0);  /* not yet */
		fput("posted", "1\n");
		CHECK(poll(&p, 1, 5000) == 1);
		CHECK(ibv_get_cq_event(r.ch, &cq, &cctx) == 0);
		ibv_ack_cq_events(cq, 1);
		CHECK(ibv_poll_cq(r.cq, 1, &wc) == 1);
		CHECK(wc.status == IBV_WC_SUCCESS && wc.wr_id == 5);
		goto done;
	}
	if (!strcmp(cs, "send") || !strcmp(cs, "rnr")) {
		memcpy(r.buf, "hello verbs", 11);
		s.length = 11;
		w.wr_id = 9;
		w.opcode = IBV_WR_SEND_WITH_IMM;
		w.imm_data = htonl(0xabcd);
		wc = one(&r, &w);
		if (!strcmp(cs, "rnr"))
			CHECK(wc.status == IBV_WC_RNR_RETRY_EXC_ERR &&
			      wc.wr_id == 9);
		else
			CHECK(wc.status == IBV_WC_SUCCESS && wc.wr_id == 9 &&
			      wc.opcode == IBV_WC_SEND);
	}
done:
	snprintf(name, sizeof(name), "done%d", idx);
	fput(name, "1\n");
	_exit(0);
}

/* Illegal transitions and attribute masks fail with EINVAL. */
static void role_modify(void)
{
	struct res r;
	struct ibv_qp_attr a = { .qp_state = IBV_QPS_RTS };

	open_res(&r, IBV_ACCESS_LOCAL_WRITE);   /* in INIT */
	CHECK(ibv_modify_qp(r.qp, &a, IBV_QP_STATE) == EINVAL);
	a.qp_state = IBV_QPS_RTR;               /* RTR without its attrs */
	CHECK(ibv_modify_qp(r.qp, &a, IBV_QP_STATE) == EINVAL);
	a.qp_state = IBV_QPS_INIT;              /* INIT->INIT with SQ_PSN */
	CHECK(ibv_modify_qp(r.qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN) ==
	      EINVAL);
	/* Not at RTS: posting a send is refused. */
	{
		struct ibv_send_wr w = { .opcode = IBV_WR_SEND }, *bad;

		CHECK(ibv_post_send(r.qp, &w, &bad) == EINVAL && bad == &w);
	}
	/* A receive posted in INIT is dropped by RESET, with no
	 * completion (ERR would flush it with one). */
	{
		struct ibv_sge sg = { (uintptr_t)r.buf, 64, r.mr->lkey };
		struct ibv_recv_wr rw = { .wr_id = 9, .sg_list = &sg,
					  .num_sge = 1 }, *rbad;
		struct ibv_wc wc;

		CHECK(ibv_post_recv(r.qp, &rw, &rbad) == 0);
		a.qp_state = IBV_QPS_RESET;
		CHECK(ibv_modify_qp(r.qp, &a, IBV_QP_STATE) == 0);
		CHECK(r.qp->state == IBV_QPS_RESET);
		CHECK(ibv_poll_cq(r.cq, 1, &wc) == 0);
		/* Not even a receive can be posted in RESET. */
		CHECK(ibv_post_recv(r.qp, &rw, &rbad) == EINVAL);
		a.qp_state = IBV_QPS_INIT;
		a.port_num = 1;
		a.qp_access_flags = 0;
		CHECK(ibv_modify_qp(r.qp, &a, IBV_QP_STATE |
				    IBV_QP_PKEY_INDEX | IBV_QP_PORT |
				    IBV_QP_ACCESS_FLAGS) == 0);
		CHECK(ibv_post_recv(r.qp, &rw, &rbad) == 0);
		a.qp_state = IBV_QPS_ERR;
		CHECK(ibv_modify_qp(r.qp, &a, IBV_QP_STATE) == 0);
		CHECK(ibv_poll_cq(r.cq, 1, &wc) == 1 && wc.wr_id == 9 &&
		      wc.status == IBV_WC_WR_FLUSH_ERR);
		a.qp_state = IBV_QPS_RESET;
		CHECK(ibv_modify_qp(r.qp, &a, IBV_QP_STATE) == 0);
	}
	/* Remote write without local write is refused at registration. */
	errno = 0;
	CHECK(!ibv_reg_mr(r.pd, r.buf, BUF, IBV_ACCESS_REMOTE_WRITE) &&
	      errno == EINVAL);
	_exit(0);
}

/* Two QPs of one process connected to each other (loopback): SEND and
 * RDMA WRITE between them, through the same path as between processes. */
static void role_loop(void)
{
	struct res r;
	struct ibv_qp *b;
	struct ibv_sge s, rs;
	struct ibv_send_wr w = { .sg_list = &s, .num_sge = 1 };
	struct ibv_recv_wr rw = { .wr_id = 3, .sg_list = &rs, .num_sge = 1 },
			   *rbad;
	struct ibv_wc wc, two_wc[2];
	struct ibv_send_wr *bad;
	struct ibv_qp *a0;
	int n;

	open_res(&r, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	b = second_qp(&r);
	a0 = r.qp;
	connect_res(&r, b->qp_num, 7);
	r.qp = b;
	connect_res(&r, a0->qp_num, 7);
	r.qp = a0;
	rs = (struct ibv_sge){ (uintptr_t)r.buf + 2048, 64, r.mr->lkey };
	CHECK(ibv_post_recv(b, &rw, &rbad) == 0);
	memcpy(r.buf, "loopback", 8);
	s = (struct ibv_sge){ (uintptr_t)r.buf, 8, r.mr->lkey };
	w.opcode = IBV_WR_SEND;
	w.send_flags = IBV_SEND_SIGNALED;
	CHECK(ibv_post_send(a0, &w, &bad) == 0);
	/* One CQ for both QPs: the receive completes first (the HCA
	 * places the data, then acknowledges), then the send. */
	n = 0;
	for (int i = 0; i < 1000 && n < 2; i++)
		n += ibv_poll_cq(r.cq, 2 - n, two_wc + n);
	CHECK(n == 2);
	CHECK(two_wc[0].status == IBV_WC_SUCCESS && two_wc[0].wr_id == 3 &&
	      two_wc[0].qp_num == b->qp_num &&
	      two_wc[0].src_qp == a0->qp_num && two_wc[0].byte_len == 8);
	CHECK(two_wc[1].status == IBV_WC_SUCCESS &&
	      two_wc[1].qp_num == a0->qp_num &&
	      two_wc[1].opcode == IBV_WC_SEND);
	CHECK(!memcmp(r.buf + 2048, "loopback", 8));
	w.opcode = IBV_WR_RDMA_WRITE;
	w.wr.rdma.remote_addr = (uintptr_t)r.buf + 3000;
	w.wr.rdma.rkey = r.mr->rkey;
	wc = one(&r, &w);
	CHECK(wc.status == IBV_WC_SUCCESS);
	CHECK(!memcmp(r.buf + 3000, "loopback", 8));
	_exit(0);
}

/* A program that makes and drops QPs and big CQs for 3 s: the segment's
 * space comes back (after its quarantine), more than 256 MiB go
 * through it. */
static void role_churn(void)
{
	struct res r;

	open_res(&r, IBV_ACCESS_LOCAL_WRITE);
	for (int i = 0; i < 300; i++) {
		struct ibv_cq *cq = ibv_create_cq(r.ctx, 4000, NULL, NULL, 0);
		struct ibv_qp_init_attr qa = { .send_cq = cq, .recv_cq = cq,
			.cap = { .max_send_wr = 64, .max_recv_wr = 1024,
				 .max_send_sge = 1, .max_recv_sge = 1 },
			.qp_type = IBV_QPT_RC };
		struct ibv_qp *qp;

		CHECK(cq);
		CHECK((qp = ibv_create_qp(r.pd, &qa)));
		CHECK(ibv_destroy_qp(qp) == 0);
		CHECK(ibv_destroy_cq(cq) == 0);
		usleep(10000);
	}
	_exit(0);
}

__attribute__((constructor)) static void vt_role(void)
{
	const char *role = getenv("VT_ROLE"), *cs = getenv("VT_CASE");

	if (!role)
		return;
	snprintf(vt_dir, sizeof(vt_dir), "%s", getenv("UBS_RUN_DIR"));
	if (!strcmp(role, "target"))
		role_target(cs);
	if (!strcmp(role, "initiator"))
		role_initiator(cs);
	if (!strcmp(role, "modify"))
		role_modify();
	if (!strcmp(role, "loop"))
		role_loop();
	if (!strcmp(role, "churn"))
		role_churn();
	if (!strcmp(role, "threads"))
		role_threads();
	_exit(10);
}

/* ------------------------------------------------------------ tests */

static void setup(void)
{
	dt_make_run_dir("/tmp/ubs-verbs-ops.XXXXXX");
	dt_start_daemon(UBSD_PATH);
}

TestSuite(verbs_ops, .init = setup, .fini = dt_teardown, .timeout = 30);

static char self[256];

static bool restart;                    /* VT_RESTART for the next start */
static bool list;                       /* VT_LIST for the next start */

static void start_idx(struct vt_proc *p, const char *role, const char *cs,
		      bool stop, int idx)
{
	char r[64], c[64], i[16];
	const char *argv[] = { self, NULL };
	const char *env[] = { r, c, i, restart ? "VT_RESTART=1" : "VT_X=1",
			      list ? "VT_LIST=1" : "VT_Y=1",
			      stop ? "VT_STOP=1" : NULL, NULL };

	if (!self[0])
		REQUIRE(readlink("/proc/self/exe", self, sizeof(self) - 1) > 0);
	snprintf(r, sizeof(r), "VT_ROLE=%s", role);
	snprintf(c, sizeof(c), "VT_CASE=%s", cs);
	snprintf(i, sizeof(i), "VT_IDX=%d", idx);
	vt_start(p, argv, env);
}

static void start(struct vt_proc *p, const char *role, const char *cs,
		  bool stop)
{
	start_idx(p, role, cs, stop, 0);
}

static struct vt_proc tgt, ini;

/* Both roles of case cs; both must succeed. */
static void two(const char *cs, bool stop)
{
	start(&tgt, "target", cs, stop);
	start(&ini, "initiator", cs, stop);
	if (stop) {
		char f[256], st[512];
		bool stopped = false;

		/* The target stops itself after "ready". */
		for (int i = 0; i < 500 && !stopped; i++) {
			snprintf(f, sizeof(f), "/proc/%d/stat", tgt.pid);
			slurp(f, st, sizeof(st));
			stopped = strstr(st, ") T ") != NULL;
			if (!stopped)
				sleep_ms(10);
		}
		cr_assert(stopped, "target did not stop");
		write_file("stopped", "1\n");
		/* The initiator finishes while the target stays stopped. */
		vt_finish(&ini, 10000);
		slurp(f, st, sizeof(st));
		cr_expect(strstr(st, ") T ") != NULL,
			  "target ran during the one-sided work");
		kill(tgt.pid, SIGCONT);
	} else {
		vt_finish(&ini, 10000);
	}
	vt_finish(&tgt, 10000);
	cr_assert(vt_ok(&ini), "initiator (%d):\n%s", ini.status, ini.buf);
	cr_assert(vt_ok(&tgt), "target (%d):\n%s", tgt.status, tgt.buf);
}

Test(verbs_ops, rdma_write_read_atomics) { two("rdma", false); }
Test(verbs_ops, one_sided_while_target_stopped) { two("rdma", true); }
Test(verbs_ops, write_without_remote_write_is_rem_access_err) { two("noaccess", false); }
Test(verbs_ops, send_imm_wakes_channel_fd_in_poll) { two("send", false); }
Test(verbs_ops, no_receive_posted_is_rnr_retry_exc_err) { two("rnr", false); }

Test(verbs_ops, dead_target_is_retry_exc_err)
{
	char f[128], text[16];

	start(&tgt, "target", "dead", false);
	start(&ini, "initiator", "dead", false);
	path_in(f, sizeof(f), "ready");
	for (int i = 0; i < 500; i++) {
		slurp(f, text, sizeof(text));
		if (text[0])
			break;
		sleep_ms(10);
	}
	kill(tgt.pid, SIGKILL);
	vt_finish(&tgt, 5000);
	write_file("killed", "1\n");
	vt_finish(&ini, 10000);
	cr_assert(vt_ok(&ini), "initiator (%d):\n%s", ini.status, ini.buf);
}

Test(verbs_ops, illegal_transitions_einval)
{
	start(&tgt, "modify", "modify", false);
	vt_finish(&tgt, 10000);
	cr_assert(vt_ok(&tgt), "(%d):\n%s", tgt.status, tgt.buf);
}

/* Two initiators add to one word of the target at once: the device says
 * IBV_ATOMIC_HCA, so no add may be lost between them. */
Test(verbs_ops, atomics_are_atomic_across_initiators)
{
	static struct vt_proc ini2;

	start(&tgt, "target", "atomics2", false);
	start_idx(&ini, "initiator", "atomics2", false, 0);
	start_idx(&ini2, "initiator", "atomics2", false, 1);
	vt_finish(&ini, 20000);
	vt_finish(&ini2, 20000);
	vt_finish(&tgt, 10000);
	cr_assert(vt_ok(&ini), "initiator 0 (%d):\n%s", ini.status, ini.buf);
	cr_assert(vt_ok(&ini2), "initiator 1 (%d):\n%s", ini2.status,
		  ini2.buf);
	cr_assert(vt_ok(&tgt), "target (%d):\n%s", tgt.status, tgt.buf);
}

/* ubsd stops (SIGTERM, so it ends every session) and a new one starts
 * between connect and the work: the data path needs no daemon, and the
 * dead word the old one left on the live target is seen through. */
Test(verbs_ops, one_sided_across_a_daemon_restart)
{
	char f[128], text[16];

	restart = true;
	start(&tgt, "target", "rdma", false);
	start(&ini, "initiator", "rdma", false);
	restart = false;
	path_in(f, sizeof(f), "connected");
	for (int i = 0; i < 500; i++) {
		slurp(f, text, sizeof(text));
		if (text[0])
			break;
		sleep_ms(10);
	}
	cr_assert(text[0], "initiator did not connect");
	kill(daemon_pid, SIGTERM);
	cr_assert(dt_wait_exit(daemon_pid, 5000) >= 0, "ubsd did not exit");
	daemon_pid = -1;
	dt_start_daemon(UBSD_PATH);
	write_file("go", "1\n");
	vt_finish(&ini, 10000);
	vt_finish(&tgt, 10000);
	cr_assert(vt_ok(&ini), "initiator (%d):\n%s", ini.status, ini.buf);
	cr_assert(vt_ok(&tgt), "target (%d):\n%s", tgt.status, tgt.buf);
}

/* An SRQ armed with a limit raises SRQ_LIMIT_REACHED on the owner's async
 * fd when the initiator's SENDs take it below, once. */
Test(verbs_ops, srq_limit_async_event) { two("srqlimit", false); }

/* Invariant 8: a peer that scribbles over its own shared segment (queue
 * indices, sizes, lock words, CQ ring, MR table) cannot crash or hang an
 * initiator, nor itself. */
Test(verbs_ops, hostile_segment_costs_errors_only) { two("hostile", false); }

/* A SEND that meets no receive waits, and completes once the target
 * posts one, while the initiator sleeps in poll() on its channel. */
Test(verbs_ops, rnr_wait_completes_while_initiator_sleeps) { two("late", false); }

/* An MR in a sealed memfd mapping is reached by memcpy through a mapping
 * of the same file, the rest by the copy path: the initiator's counters
 * say which (6 transfers each: WRITE, READ, and a read and a write for
 * each of FETCH_ADD and CMP_SWAP). */
Test(verbs_ops, zero_copy_for_sealed_memfd_mr) { two("zc", false); }

/* SENDs gathered from three SGEs, scattered over two: a large one by the
 * copy path and a small one carried in the completion, each byte where it
 * belongs and nothing past the message. */
Test(verbs_ops, send_gather_scatter) { two("sge", false); }

/* A SEND longer than the receive: LOC_LEN_ERR at the target,
 * REM_INV_REQ_ERR at the initiator. */
Test(verbs_ops, send_longer_than_receive) { two("toolong", false); }

Test(verbs_ops, loopback_qps_in_one_process)
{
	start(&tgt, "loop", "loop", false);
	vt_finish(&tgt, 10000);
	cr_assert(vt_ok(&tgt), "(%d):\n%s", tgt.status, tgt.buf);
}

/* A list of three WRs whose first fails: the other two are flushed. */
Test(verbs_ops, failed_wr_flushes_the_rest_of_its_list)
{
	list = true;
	two("noaccess", false);
	list = false;
}

/* A receive posted with a key that is not the target's: LOC_PROT_ERR
 * there, REM_OP_ERR at the initiator, and no byte written. */
Test(verbs_ops, receive_with_foreign_lkey) { two("badlkey", false); }

/* Two threads of one initiator, each with its own QP and CQ, add to one
 * word of one target: every add arrives, none is lost. */
Test(verbs_ops, two_threads_two_qps_one_peer)
{
	start(&tgt, "target", "threads", false);
	start(&ini, "threads", "threads", false);
	vt_finish(&ini, 25000);
	vt_finish(&tgt, 10000);
	cr_assert(vt_ok(&ini), "initiator (%d):\n%s", ini.status, ini.buf);
	cr_assert(vt_ok(&tgt), "target (%d):\n%s", tgt.status, tgt.buf);
}

Test(verbs_ops, segment_space_comes_back)
{
	start(&tgt, "churn", "churn", false);
	vt_finish(&tgt, 25000);
	cr_assert(vt_ok(&tgt), "(%d):\n%s", tgt.status, tgt.buf);
}

/* SPDX-License-Identifier: MIT */
/*
 * verbs_reg.c - the verbs endpoint registry of ubsd.
 *
 * A preloaded process that opens the virtual device registers the
 * device context's shared segment (a memfd holding its QPs' receive
 * queues, its CQ rings and its MR table; layout in shim-verbs/vshim.h)
 * with VERBS_OPEN.  Each QP gets a QPN, unique on the host, with
 * VERBS_QP, so that LID + QPN names it across processes as on a fabric.
 *
 * Authentication rule: a process receives a peer's segment (and pid) only
 * through VERBS_CONNECT, naming one of its own registered QPs and the
 * peer's QPN, i.e. when it moves a QP of its own to RTR towards that peer
 * (RC/UC) or addresses it (UD).  Both QPs must be of the same type and
 * both sessions of the same uid.  What the initiator may then do with
 * the memory is checked on every work request against what the target
 * published (its QP's state, peer QPN, access flags; the MR table's
 * rkeys, bounds and access), as a responder HCA would.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "verbs_reg.h"

#define VREG_QPN_FIRST 0x100u
#define VREG_QPN_MASK 0xffffffu
#define VREG_MAX_CTX 64u        /* device contexts per session */
#define VREG_MAX_QP 16384u      /* QPs per session */
#define VREG_MAX_LIST 4096u     /* QPs one LIST shows (reply queue) */

struct vctx {
	uint64_t id;
	uint64_t session;
	pid_t pid;
	uid_t uid;
	int fd;
	uint64_t size;
	struct vctx *next;
};

struct vqp {
	uint32_t qpn;
	uint32_t type;
	uint32_t dest_qpn;
	uint64_t qp_off;
	struct vctx *ctx;
	struct vqp *next;
};

static struct vctx *ctxs;
static struct vqp *qps;
static uint64_t next_ctx_id;
static uint32_t next_qpn;               /* 0: not seeded yet */

static struct vctx *ctx_find(uint64_t id)
{
	for (struct vctx *c = ctxs; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static struct vqp *qp_find(uint32_t qpn)
{
	for (struct vqp *q = qps; q; q = q->next)
		if (q->qpn == qpn)
			return q;
	return NULL;
}

static struct vreg_msg *add(struct vreg_msg **out, size_t *n, size_t *cap,
			    uint16_t type, const void *body, uint32_t len)
{
	struct vreg_msg *m;

	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 4;
		struct vreg_msg *p = realloc(*out, nc * sizeof(*p));

		if (!p)
			return NULL;
		*out = p;
		*cap = nc;
	}
	m = &(*out)[(*n)++];
	memset(m, 0, sizeof(*m));
	m->type = type;
	m->len = len;
	m->fd = -1;
	if (len)
		memcpy(m->body, body, len);
	return m;
}

static int err_reply(struct vreg_msg **out, size_t *n, size_t *cap, int err,
		     const char *msg)
{
	struct ctl_error e = { .err = err };

	strncpy(e.msg, msg, sizeof(e.msg) - 1);
	return add(out, n, cap, CTL_R_ERROR, &e, sizeof(e)) ? 0 : -ENOMEM;
}

/* How many contexts and QPs session holds. */
static void session_counts(uint64_t session, unsigned *nctx, unsigned *nqp)
{
	*nctx = *nqp = 0;
	for (struct vctx *c = ctxs; c; c = c->next)
		*nctx += c->session == session;
	for (struct vqp *q = qps; q; q = q->next)
		*nqp += q->ctx->session == session;
}

/* A free QPN, or 0 when all 2^24 are taken. */
static uint32_t qpn_alloc(void)
{
	if (!next_qpn) {
		/* A restarted daemon must not hand out the QPNs live QPs of
		 * the previous one still carry: start somewhere else. */
		uint32_t seed = 0;

		if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) !=
		    sizeof(seed))
			seed = (uint32_t)getpid() * 2654435761u;
		next_qpn = VREG_QPN_FIRST +
			seed % (VREG_QPN_MASK + 1 - VREG_QPN_FIRST);
	}
	for (uint32_t i = 0; i <= VREG_QPN_MASK; i++) {
		uint32_t q = next_qpn;

		next_qpn = (next_qpn + 1) & VREG_QPN_MASK;
		if (next_qpn < VREG_QPN_FIRST)
			next_qpn = VREG_QPN_FIRST;
		if (!qp_find(q))
			return q;
	}
	return 0;
}

int vreg_handle(uint64_t session, pid_t pid, uid_t uid, uint16_t type, const void *body,
		int *fds, struct vreg_msg **out, size_t *nout)
{
	size_t cap = 0;

	*out = NULL;
	*nout = 0;
	if (!session && type != CTL_REQ_VERBS_LIST) {
		for (int i = 0; i < ctl_fd_count(type); i++)
			close(fds[i]);
		return err_reply(out, nout, &cap, EPERM,
				 "no session: send HELLO first");
	}
	switch (type) {
	case CTL_REQ_VERBS_OPEN: {
		struct ctl_verbs_open m;
		struct ctl_verbs_ctx r;
		struct vctx *c;

		memcpy(&m, body, sizeof(m));
		/* Only a memfd (it has seals) of the size announced, and
		 * not more of them than a program needs. */
		{
			struct stat st;
			unsigned nctx, nqp;

			session_counts(session, &nctx, &nqp);
			if (nctx >= VREG_MAX_CTX) {
				close(fds[0]);
				return err_reply(out, nout, &cap, EMFILE,
						 "too many device contexts");
			}

			if (fcntl(fds[0], F_GET_SEALS) < 0 ||
			    fstat(fds[0], &st) < 0 ||
			    (uint64_t)st.st_size != m.seg_size) {
				close(fds[0]);
				return err_reply(out, nout, &cap, EINVAL,
						 "segment is not a memfd of "
						 "its size");
			}
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fds[0]);
			return err_reply(out, nout, &cap, ENOMEM, "out of memory");
		}
		c->id = ++next_ctx_id;
		c->session = session;
		c->pid = pid;
		c->uid = uid;
		c->fd = fds[0];
		c->size = m.seg_size;
		c->next = ctxs;
		ctxs = c;
		r.ctx_id = c->id;
		return add(out, nout, &cap, CTL_R_VERBS_CTX, &r, sizeof(r)) ?
			0 : -ENOMEM;
	}
	case CTL_REQ_VERBS_QP: {
		struct ctl_verbs_qp m;
		struct ctl_verbs_qpn r = { 0 };
		struct vctx *c;
		struct vqp *q;

		memcpy(&m, body, sizeof(m));
		c = ctx_find(m.ctx_id);
		if (!c || c->session != session)
			return err_reply(out, nout, &cap, ENOENT,
					 "no such device context");
		if (m.qp_off >= c->size)
			return err_reply(out, nout, &cap, EINVAL,
					 "QP record outside the segment");
		{
			unsigned nctx, nqp;

			session_counts(session, &nctx, &nqp);
			if (nqp >= VREG_MAX_QP)
				return err_reply(out, nout, &cap, ENOSPC,
						 "too many QPs");
		}
		q = calloc(1, sizeof(*q));
		if (!q || !(r.qpn = qpn_alloc())) {
			free(q);
			return err_reply(out, nout, &cap, ENOSPC, "no QPN left");
		}
		q->qpn = r.qpn;
		q->type = m.qp_type;
		q->qp_off = m.qp_off;
		q->ctx = c;
		q->next = qps;
		qps = q;
		return add(out, nout, &cap, CTL_R_VERBS_QPN, &r, sizeof(r)) ?
			0 : -ENOMEM;
	}
	case CTL_REQ_VERBS_QP_DROP: {
		struct ctl_verbs_qpn m;

		memcpy(&m, body, sizeof(m));
		for (struct vqp **pp = &qps; *pp; pp = &(*pp)->next) {
			struct vqp *q = *pp;

			if (q->qpn == m.qpn && q->ctx->session == session) {
				*pp = q->next;
				free(q);
				return add(out, nout, &cap, CTL_R_OK, NULL, 0) ?
					0 : -ENOMEM;
			}
		}
		return err_reply(out, nout, &cap, ENOENT, "no such QP");
	}
	case CTL_REQ_VERBS_CONNECT: {
		struct ctl_verbs_connect m;
		struct ctl_verbs_peer r;
		struct vqp *mine, *peer;
		struct vreg_msg *msg;

		memcpy(&m, body, sizeof(m));
		mine = qp_find(m.qpn);
		if (!mine || mine->ctx->session != session)
			return err_reply(out, nout, &cap, EPERM,
					 "not a QP of this session");
		peer = qp_find(m.dest_qpn);
		if (!peer)
			return err_reply(out, nout, &cap, ENOENT,
					 "no such peer QPN");
		if (peer->ctx->uid != uid)
			return err_reply(out, nout, &cap, EPERM,
					 "peer QP of another user");
		if (peer->type != mine->type)
			return err_reply(out, nout, &cap, EINVAL,
					 "QP types differ");
		mine->dest_qpn = m.dest_qpn;
		r.pid = (uint32_t)peer->ctx->pid;
		r.qp_type = peer->type;
		r.ctx_id = peer->ctx->id;
		r.seg_size = peer->ctx->size;
		r.qp_off = peer->qp_off;
		msg = add(out, nout, &cap, CTL_R_VERBS_PEER, &r, sizeof(r));
		if (!msg)
			return -ENOMEM;
		msg->fd = peer->ctx->fd;
		return 0;
	}
	case CTL_REQ_VERBS_LIST: {
		unsigned n = 0;

		for (struct vqp *q = qps; q && n < VREG_MAX_LIST;
		     q = q->next, n++) {
			struct ctl_verbs_ep e = {
				.qpn = q->qpn, .pid = (uint32_t)q->ctx->pid,
				.qp_type = q->type, .dest_qpn = q->dest_qpn,
				.ctx_id = q->ctx->id,
			};

			if (!add(out, nout, &cap, CTL_R_VERBS_EP, &e, sizeof(e)))
				return -ENOMEM;
		}
		return add(out, nout, &cap, CTL_R_END, NULL, 0) ? 0 : -ENOMEM;
	}
	}
	return err_reply(out, nout, &cap, EINVAL, "unknown verbs request");
}

void vreg_session_gone(uint64_t session)
{
	for (struct vqp **pp = &qps; *pp;) {
		struct vqp *q = *pp;

		if (q->ctx->session == session) {
			*pp = q->next;
			free(q);
		} else {
			pp = &q->next;
		}
	}
	for (struct vctx **pp = &ctxs; *pp;) {
		struct vctx *c = *pp;

		if (c->session == session) {
			uint32_t one = 1;

			*pp = c->next;
			/* Peers that mapped the segment see the owner gone;
			 * pwrite, so a segment cut short cannot fault us. */
			if (pwrite(c->fd, &one, sizeof(one),
				   CTL_VERBS_SEG_DEAD_OFF) != sizeof(one))
				(void)0;
			close(c->fd);
			free(c);
		} else {
			pp = &c->next;
		}
	}
}

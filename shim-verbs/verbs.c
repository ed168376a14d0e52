/* SPDX-License-Identifier: MIT */
/*
 * verbs.c - resources (PD, MR, CQ, completion channel, QP, SRQ, AH) of the
 * virtual device and the data path.
 *
 * The HCA's work is done by the initiator: ibv_post_send places a SEND
 * into a receive buffer the target posted in its shared receive queue,
 * performs RDMA WRITE/READ and atomics on the target's registered memory
 * and writes the completions into both CQ rings, before it returns.  The
 * target's memory is reached with process_vm_writev/readv (its pid came
 * from ubsd with its segment), so one-sided operations complete while the
 * target does not run.  A send the responder cannot take yet (no receive
 * posted: RNR; peer QP not at RTR) waits in the QP's pending FIFO and is
 * retried by later post_send, poll_cq and get_cq_event calls of the
 * context, until the QP's rnr_retry (7: for ever) or retry budget ends.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <stdio.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "preload.h"
#include "ctl.h"
#include "ctl_proto.h"
#include "vshim.h"
#include "vshim_int.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------- shared locks */

/* Our pid without a system call per lock (glibc does not cache it);
 * a forked child learns its own. */
static int32_t self_pid;

static void self_pid_reset(void)
{
	__atomic_store_n(&self_pid, (int32_t)getpid(), __ATOMIC_RELAXED);
}

static void self_pid_atfork(void)
{
	pthread_atfork(NULL, NULL, self_pid_reset);
}

static int32_t my_pid(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	int32_t p = __atomic_load_n(&self_pid, __ATOMIC_RELAXED);

	if (__builtin_expect(p == 0, 0)) {
		pthread_once(&once, self_pid_atfork);
		self_pid_reset();
		p = __atomic_load_n(&self_pid, __ATOMIC_RELAXED);
	}
	return p;
}

/* Take a lock word in shared memory.  A holder that died (its pid is
 * gone), or a word that names no process at all (a peer scribbled on
 * it), loses it. */
static void shm_lock(vs_lock_t *l)
{
	int32_t me = my_pid();
	unsigned spins = 0;

	for (;;) {
		int32_t cur = 0;

		if (__atomic_compare_exchange_n(l, &cur, me, false,
						__ATOMIC_ACQUIRE,
						__ATOMIC_RELAXED))
			return;
		if (++spins % 1024 == 0) {
			if (cur <= 0 ||
			    (kill(cur, 0) < 0 && errno == ESRCH))
				__atomic_compare_exchange_n(l, &cur, 0, false,
							    __ATOMIC_RELAXED,
							    __ATOMIC_RELAXED);
			sched_yield();
		}
	}
}

static void shm_unlock(vs_lock_t *l)
{
	__atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

/* ------------------------------------------------- segment allocation */

static uint32_t pow2(uint32_t n)
{
	uint32_t p = 1;

	while (p < n)
		p <<= 1;
	return p;
}

static uint64_t now_ns(void);

#define VS_QUARANTINE_NS 1000000000ull /* before a freed block is reused */

/* Bytes of the context segment: a freed block of at least that size
 * whose quarantine is over (taken whole), else fresh ones; 0 when full. */
static uint64_t seg_alloc(struct vs_ctx *c, uint64_t bytes)
{
	uint64_t off, now = now_ns();

	pthread_mutex_lock(&c->lock);
	for (unsigned i = 0; i < c->nholes; i++) {
		struct vs_hole *h = &c->holes[i];

		if (h->bytes >= bytes && now - h->freed_ns > VS_QUARANTINE_NS) {
			off = h->off;
			bytes = h->bytes;
			*h = c->holes[--c->nholes];
			pthread_mutex_unlock(&c->lock);
			memset(c->base + off, 0, bytes);
			return off;
		}
	}
	off = (c->bump + 63) & ~63ull;
	if (off + bytes > VS_SEG_SIZE) {
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	c->bump = off + bytes;
	pthread_mutex_unlock(&c->lock);
	memset(c->base + off, 0, bytes);
	return off;
}

/* Give bytes at off back (kept, not reused, when the list is full). */
static void seg_free(struct vs_ctx *c, uint64_t off, uint64_t bytes)
{
	if (!off)
		return;
	pthread_mutex_lock(&c->lock);
	if (c->nholes < sizeof(c->holes) / sizeof(c->holes[0]))
		c->holes[c->nholes++] = (struct vs_hole){ off, bytes,
							  now_ns() };
	pthread_mutex_unlock(&c->lock);
}

static uint64_t cq_bytes(uint32_t size)
{
	return sizeof(struct vs_shm_cq) + (uint64_t)size *
		(sizeof(struct vs_cqe) + sizeof(struct vs_cq_inl));
}

static uint64_t rq_bytes(uint32_t size)
{
	return sizeof(struct vs_shm_rq) + (uint64_t)size *
		sizeof(struct vs_rwqe);
}

/* Pointer to [off, off+len) of a peer segment, or NULL. */
static void *peer_ptr(const struct vs_peer *p, uint64_t off, uint64_t len)
{
	if (off < 4096 || off > p->size || len > p->size - off)
		return NULL;
	return p->base + off;
}

/* ------------------------------------------------------------ PD, MR */

UBS_EXPORT struct ibv_pd *ibv_alloc_pd(struct ibv_context *ctx)
{
	struct ibv_pd *pd;

	if (!vs_is_ours(ctx)) {
		struct ibv_pd *(*real)(struct ibv_context *) =
			vs_real("ibv_alloc_pd", "IBVERBS_1.1");
		return real ? real(ctx) : NULL;
	}
	pd = calloc(1, sizeof(*pd));
	if (!pd) {
		errno = ENOMEM;
		return NULL;
	}
	pd->context = ctx;
	pd->handle = 1;
	return pd;
}

UBS_EXPORT int ibv_dealloc_pd(struct ibv_pd *pd)
{
	if (!vs_is_ours(pd->context)) {
		int (*real)(struct ibv_pd *) =
			vs_real("ibv_dealloc_pd", "IBVERBS_1.1");
		return real ? real(pd) : EINVAL;
	}
	free(pd);
	return 0;
}

/*
 * The memfd behind [addr, addr+len), if that range lies in one shared
 * mapping of a file sealed against shrinking (so that a peer mapping it
 * can never fault) and the process holds an fd of it: returns our own
 * high dup of that fd and sets *off to the file offset of addr and *ino;
 * -1 when the MR is not zero-copy capable.
 */
static int zc_probe(uint64_t addr, uint64_t len, uint64_t *off,
		    uint64_t *ino)
{
	unsigned long lo, hi, moff, inode = 0;
	char line[512], perms[8];
	bool found = false;
	FILE *m;
	DIR *d;
	struct dirent *de;
	int fd = -1;

	m = fopen("/proc/self/maps", "re");
	if (!m)
		return -1;
	while (fgets(line, sizeof(line), m))
		if (sscanf(line, "%lx-%lx %7s %lx %*s %lu", &lo, &hi, perms,
			   &moff, &inode) == 5 && lo <= addr &&
		    addr + len <= hi) {
			found = perms[3] == 's' && inode != 0;
			break;
		}
	fclose(m);
	if (!found)
		return -1;
	d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	while ((de = readdir(d))) {
		struct stat st;
		int n = atoi(de->d_name), seals;

		if (de->d_name[0] < '0' || de->d_name[0] > '9' ||
		    n == dirfd(d) || fstat(n, &st) < 0 ||
		    !S_ISREG(st.st_mode) || st.st_ino != inode)
			continue;
		seals = ubs_real.fcntl(n, F_GET_SEALS);
		if (seals < 0 || !(seals & F_SEAL_SHRINK))
			continue;
		fd = ubs_real.fcntl(n, F_DUPFD_CLOEXEC, 0);
		break;
	}
	closedir(d);
	if (fd < 0)
		return -1;
	*off = moff + (addr - lo);
	*ino = inode;
	return ubs_fd_high(fd);
}

static struct ibv_mr *reg_mr(struct ibv_pd *pd, void *addr, size_t len,
			     uint64_t iova, unsigned access)
{
	struct vs_ctx *c = vs_ctx_of(pd->context);
	struct vs_mr *m;
	uint32_t slot;

	/* Remote write and atomics need local write, as on hardware. */
	if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) &&
	    !(access & IBV_ACCESS_LOCAL_WRITE)) {
		errno = EINVAL;
		return NULL;
	}
	if (!addr && len) {
		errno = EINVAL;
		return NULL;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_lock(&c->lock);
	for (slot = 1; slot < VS_MAX_MR && c->mrs[slot]; slot++)
		;
	if (slot == VS_MAX_MR) {
		pthread_mutex_unlock(&c->lock);
		free(m);
		errno = ENOMEM;
		return NULL;
	}
	c->mrs[slot] = m;
	c->mr_gen++;
	pthread_mutex_unlock(&c->lock);
	m->slot = slot;
	m->mr.context = pd->context;
	m->mr.pd = pd;
	m->mr.addr = addr;
	m->mr.length = len;
	m->mr.handle = slot;
	m->mr.lkey = m->mr.rkey = (slot << 8) | (c->mr_gen & 0xff);
	c->mrt[slot].addr = iova;
	c->mrt[slot].len = len;
	c->mrt[slot].rkey = m->mr.rkey;
	c->mrt[slot].access = access;
	m->zc_fd = -1;
	c->mrt[slot].zc_fd1 = 0;
	if (iova == (uintptr_t)addr && len &&
	    (access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
		       IBV_ACCESS_REMOTE_ATOMIC))) {
		m->zc_fd = zc_probe((uintptr_t)addr, len,
				    &c->mrt[slot].zc_off,
				    &c->mrt[slot].zc_ino);
		if (m->zc_fd >= 0)
			c->mrt[slot].zc_fd1 = (uint32_t)m->zc_fd + 1;
	}
	__atomic_store_n(&c->mrt[slot].valid, 1, __ATOMIC_RELEASE);
	return &m->mr;
}

#undef ibv_reg_mr
#undef ibv_reg_mr_iova
UBS_EXPORT struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr,
				     size_t len, int access)
{
	if (!vs_is_ours(pd->context)) {
		struct ibv_mr *(*real)(struct ibv_pd *, void *, size_t, int) =
			vs_real("ibv_reg_mr", "IBVERBS_1.1");
		return real ? real(pd, addr, len, access) : NULL;
	}
	return reg_mr(pd, addr, len, (uintptr_t)addr, (unsigned)access);
}

UBS_EXPORT struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr,
					   size_t len, uint64_t iova,
					   unsigned int access)
{
	if (!vs_is_ours(pd->context)) {
		struct ibv_mr *(*real)(struct ibv_pd *, void *, size_t,
				       uint64_t, unsigned int) =
			vs_real("ibv_reg_mr_iova2", "IBVERBS_1.8");
		return real ? real(pd, addr, len, iova, access) : NULL;
	}
	return reg_mr(pd, addr, len, iova, access);
}

UBS_EXPORT struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *addr,
					  size_t len, uint64_t iova,
					  int access)
{
	if (!vs_is_ours(pd->context)) {
		struct ibv_mr *(*real)(struct ibv_pd *, void *, size_t,
				       uint64_t, int) =
			vs_real("ibv_reg_mr_iova", "IBVERBS_1.7");
		return real ? real(pd, addr, len, iova, access) : NULL;
	}
	return reg_mr(pd, addr, len, iova, (unsigned)access);
}

UBS_EXPORT int ibv_dereg_mr(struct ibv_mr *mr)
{
	struct vs_ctx *c;
	struct vs_mr *m;

	if (!vs_is_ours(mr->context)) {
		int (*real)(struct ibv_mr *) =
			vs_real("ibv_dereg_mr", "IBVERBS_1.1");
		return real ? real(mr) : EINVAL;
	}
	c = vs_ctx_of(mr->context);
	m = (struct vs_mr *)mr;
	__atomic_store_n(&c->mrt[m->slot].valid, 0, __ATOMIC_RELEASE);
	c->mrt[m->slot].zc_fd1 = 0;
	if (m->zc_fd >= 0)
		ubs_fd_release(m->zc_fd);
	pthread_mutex_lock(&c->lock);
	c->mrs[m->slot] = NULL;
	pthread_mutex_unlock(&c->lock);
	free(m);
	return 0;
}

/* The local MR of lkey covering [addr, addr+len), or NULL. */
static struct vs_mr *local_mr(struct vs_ctx *c, uint32_t lkey, uint64_t addr,
			      uint64_t len)
{
	uint32_t slot = lkey >> 8;
	struct vs_mr *m;

	if (slot == 0 || slot >= VS_MAX_MR)
		return NULL;
	m = c->mrs[slot];
	if (!m || m->mr.lkey != lkey)
		return NULL;
	if (addr < (uintptr_t)m->mr.addr ||
	    addr + len > (uintptr_t)m->mr.addr + m->mr.length ||
	    addr + len < addr)
		return NULL;
	return m;
}

/* -------------------------------------------------- channels and CQs */

UBS_EXPORT struct ibv_comp_channel *ibv_create_comp_channel(
	struct ibv_context *ctx)
{
	static uint64_t gens;
	struct vs_chan *ch;

	if (!vs_is_ours(ctx)) {
		struct ibv_comp_channel *(*real)(struct ibv_context *) =
			vs_real("ibv_create_comp_channel", "IBVERBS_1.0");
		return real ? real(ctx) : NULL;
	}
	ch = calloc(1, sizeof(*ch));
	if (!ch) {
		errno = ENOMEM;
		return NULL;
	}
	ch->ch.context = ctx;
	/* One count per event: the fd is readable exactly while an event
	 * waits, as the kernel's completion channel is. */
	ch->ch.fd = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
	if (ch->ch.fd < 0) {
		free(ch);
		return NULL;
	}
	ch->gen = __atomic_add_fetch(&gens, 1, __ATOMIC_RELAXED) |
		((uint64_t)getpid() << 32);
	return &ch->ch;
}

UBS_EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel *ch)
{
	if (!vs_is_ours(ch->context)) {
		int (*real)(struct ibv_comp_channel *) =
			vs_real("ibv_destroy_comp_channel", "IBVERBS_1.0");
		return real ? real(ch) : EINVAL;
	}
	if (ch->refcnt)
		return EBUSY;
	ubs_real.close(ch->fd);
	free(ch);
	return 0;
}

UBS_EXPORT struct ibv_cq *ibv_create_cq(struct ibv_context *ctx, int cqe,
					void *cq_context,
					struct ibv_comp_channel *channel,
					int comp_vector)
{
	struct vs_ctx *c;
	struct vs_cq *cq;
	uint32_t size;

	if (!vs_is_ours(ctx)) {
		struct ibv_cq *(*real)(struct ibv_context *, int, void *,
				       struct ibv_comp_channel *, int) =
			vs_real("ibv_create_cq", "IBVERBS_1.1");
		return real ? real(ctx, cqe, cq_context, channel,
				   comp_vector) : NULL;
	}
	c = vs_ctx_of(ctx);
	if (cqe < 1 || cqe > (int)VS_MAX_CQE || comp_vector != 0) {
		errno = EINVAL;
		return NULL;
	}
	cq = calloc(1, sizeof(*cq));
	if (!cq) {
		errno = ENOMEM;
		return NULL;
	}
	size = pow2((uint32_t)cqe + 1);
	cq->off = seg_alloc(c, cq_bytes(size));
	if (!cq->off) {
		free(cq);
		errno = ENOMEM;
		return NULL;
	}
	cq->shm = (struct vs_shm_cq *)(c->base + cq->off);
	cq->shm->size = size;
	cq->size = size;
	cq->shm->chan_fd = channel ? channel->fd : -1;
	cq->shm->chan_gen = channel ? ((struct vs_chan *)channel)->gen : 0;
	cq->cq.context = ctx;
	cq->cq.channel = channel;
	cq->cq.cq_context = cq_context;
	cq->cq.cqe = (int)size - 1;
	pthread_mutex_init(&cq->cq.mutex, NULL);
	pthread_cond_init(&cq->cq.cond, NULL);
	pthread_mutex_init(&cq->poll_lock, NULL);
	if (channel)
		__atomic_add_fetch(&channel->refcnt, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&c->lock);
	cq->next = c->cqs;
	c->cqs = cq;
	pthread_mutex_unlock(&c->lock);
	return &cq->cq;
}

UBS_EXPORT int ibv_destroy_cq(struct ibv_cq *ibcq)
{
	struct vs_ctx *c;
	struct vs_cq *cq = (struct vs_cq *)ibcq;

	if (!vs_is_ours(ibcq->context)) {
		int (*real)(struct ibv_cq *) =
			vs_real("ibv_destroy_cq", "IBVERBS_1.1");
		return real ? real(ibcq) : EINVAL;
	}
	c = vs_ctx_of(ibcq->context);
	pthread_mutex_lock(&c->lock);
	for (struct vs_qp *q = c->qps; q; q = q->next)
		if (q->qpx.qp_base.send_cq == ibcq ||
		    q->qpx.qp_base.recv_cq == ibcq) {
			pthread_mutex_unlock(&c->lock);
			return EBUSY;
		}
	for (struct vs_cq **pp = &c->cqs; *pp; pp = &(*pp)->next)
		if (*pp == cq) {
			*pp = cq->next;
			break;
		}
	pthread_mutex_unlock(&c->lock);
	cq->shm->chan_fd = -1;
	if (ibcq->channel)
		__atomic_sub_fetch(&ibcq->channel->refcnt, 1, __ATOMIC_RELAXED);
	seg_free(c, cq->off, cq_bytes(cq->size));
	free(cq);
	return 0;
}

UBS_EXPORT int ibv_resize_cq(struct ibv_cq *cq, int cqe)
{
	if (!vs_is_ours(cq->context)) {
		int (*real)(struct ibv_cq *, int) =
			vs_real("ibv_resize_cq", "IBVERBS_1.1");
		return real ? real(cq, cqe) : EINVAL;
	}
	/* The ring is fixed; a request it already satisfies succeeds. */
	return cqe >= 1 && cqe <= cq->cqe ? 0 : EOPNOTSUPP;
}

/* Wake the channel of a CQ in our own process (its fd from our own
 * memory: the shared copy is for peers, who could rewrite it). */
static void notify_local(struct vs_cq *c)
{
	uint64_t one = 1;
	int fd = c->cq.channel ? c->cq.channel->fd : -1;

	__atomic_store_n(&c->shm->fired, 1, __ATOMIC_RELEASE);
	if (fd >= 0 && ubs_real.write(fd, &one, sizeof(one)) < 0)
		ubs_dbg("verbs: channel write: %s", strerror(errno));
}

/* A copy of the peer's fd number rfd (pidfd_getfd: the same permission
 * as process_vm_writev), placed high; -1 when it cannot be had. */
static int peer_fd(struct vs_peer *p, int32_t rfd)
{
	int fd = -1;

	if (rfd < 0)
		return -1;
	if (p->pidfd < 0)
		p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
	if (p->pidfd >= 0)
		fd = (int)syscall(SYS_pidfd_getfd, p->pidfd, rfd, 0);
	if (fd < 0) {
		ubs_dbg("verbs: peer fd: %s", strerror(errno));
		return -1;
	}
	return ubs_fd_high(fd);
}

/* Wake the channel of a peer's CQ: its eventfd, fetched once from the
 * peer. */
static void notify_peer(struct vs_peer *p, uint64_t cq_off,
			struct vs_shm_cq *cq)
{
	uint64_t one = 1, gen = __atomic_load_n(&cq->chan_gen, __ATOMIC_ACQUIRE);
	int32_t rfd = cq->chan_fd;
	int fd = -1;
	unsigned i;

	__atomic_store_n(&cq->fired, 1, __ATOMIC_RELEASE);
	if (rfd < 0)
		return;
	pthread_mutex_lock(&p->lock);
	for (i = 0; i < p->nefd; i++)
		if (p->efd[i].cq_off == cq_off && p->efd[i].gen == gen) {
			fd = p->efd[i].fd;
			break;
		}
	if (fd < 0) {
		fd = peer_fd(p, rfd);
		if (fd < 0) {
			pthread_mutex_unlock(&p->lock);
			return;
		}
		if (p->nefd == sizeof(p->efd) / sizeof(p->efd[0])) {
			ubs_fd_release(p->efd[0].fd);
			memmove(&p->efd[0], &p->efd[1],
				sizeof(p->efd[0]) * (p->nefd - 1));
			p->nefd--;
		}
		p->efd[p->nefd].cq_off = cq_off;
		p->efd[p->nefd].gen = gen;
		p->efd[p->nefd].fd = fd;
		p->nefd++;
	}
	if (ubs_real.write(fd, &one, sizeof(one)) < 0)
		ubs_dbg("verbs: peer channel write: %s", strerror(errno));
	pthread_mutex_unlock(&p->lock);
}

/*
 * Append one completion to a CQ ring (ours or a peer's, whose size the
 * caller checked).  Returns 1 when the owner's channel must be woken,
 * 0 if not, -1 on overrun (the completion is lost, as on hardware).
 */
static struct vs_cq_inl *cq_inl(struct vs_shm_cq *cq, uint32_t size,
				uint64_t i)
{
	return (struct vs_cq_inl *)&cq->e[size] + (i & (size - 1));
}

static int cq_push(struct vs_shm_cq *cq, uint32_t size, const struct vs_cqe *e,
		   const struct vs_cq_inl *inl, bool solicited)
{
	uint64_t head, tail;
	uint32_t armed;

	shm_lock(&cq->lock);
	head = cq->head;
	tail = __atomic_load_n(&cq->tail, __ATOMIC_ACQUIRE);
	if (head - tail >= size) {
		cq->overrun = 1;
		shm_unlock(&cq->lock);
		ubs_dbg("verbs: CQ overrun (%u entries)", size);
		return -1;
	}
	cq->e[head & (size - 1)] = *e;
	{
		struct vs_cq_inl *d = cq_inl(cq, size, head);

		if (inl) {
			d->ndst = inl->ndst;
			memcpy(d->dst, inl->dst, sizeof(d->dst));
			memcpy(d->data, inl->data, inl->len);
			d->len = inl->len;
		} else {
			d->len = 0;
		}
	}
	__atomic_store_n(&cq->head, head + 1, __ATOMIC_RELEASE);
	shm_unlock(&cq->lock);
	/* Against vs_req_notify_cq's store of armed and the owner's poll
	 * that follows it: a full fence on both sides, so that either we see
	 * the CQ armed or its owner's poll sees this entry (a store followed
	 * by a load of another word may otherwise pass it, even on x86, and
	 * both would miss: a lost event, a program asleep for ever). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	armed = __atomic_load_n(&cq->armed, __ATOMIC_ACQUIRE);
	if (armed == 1 || (armed == 2 && (solicited || e->status))) {
		if (__atomic_exchange_n(&cq->armed, 0, __ATOMIC_ACQ_REL))
			return 1;
	}
	return 0;
}

static void local_complete(struct vs_cq *cq, const struct vs_cqe *e)
{
	if (cq_push(cq->shm, cq->size, e, NULL, false) == 1)
		notify_local(cq);
}

static void progress(struct vs_ctx *c);

/* A SEND that came in the completion's payload slot: copy it into the
 * receive buffers now, each checked against our MR table (a bad one turns
 * the completion into LOC_PROT_ERR, as the HCA would). */
static void deliver_inl(struct vs_ctx *c, struct ibv_wc *w,
			const struct vs_cq_inl *d)
{
	uint32_t len = d->len, ndst = d->ndst, done = 0;

	if (!len || w->status != IBV_WC_SUCCESS)
		return;
	if (len > VS_CQ_INL || ndst > VS_CQ_DST) {
		w->status = IBV_WC_LOC_PROT_ERR;
		return;
	}
	for (uint32_t i = 0; i < ndst && done < len; i++) {
		uint64_t a = d->dst[i].addr;
		uint32_t n = d->dst[i].length;

		if (n > len - done)
			n = len - done;
		if (!local_mr(c, d->dst[i].lkey, a, n)) {
			w->status = IBV_WC_LOC_PROT_ERR;
			return;
		}
		memcpy((void *)(uintptr_t)a, d->data + done, n);
		done += n;
	}
	if (done != len)
		w->status = IBV_WC_LOC_LEN_ERR;
}

static int vs_poll_cq(struct ibv_cq *ibcq, int n, struct ibv_wc *wc)
{
	struct vs_cq *cq = (struct vs_cq *)ibcq;
	struct vs_shm_cq *s = cq->shm;
	struct vs_ctx *c = vs_ctx_of(ibcq->context);
	uint64_t head, tail;
	int got = 0;

	if (__atomic_load_n(&c->npending, __ATOMIC_RELAXED))
		progress(c);
	pthread_mutex_lock(&cq->poll_lock);
	head = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
	tail = s->tail;
	if (head - tail > cq->size)     /* a corrupt index: drop it all */
		tail = head;
	while (tail != head && got < n) {
		const struct vs_cqe *e = &s->e[tail & (cq->size - 1)];
		struct ibv_wc *w = &wc[got++];

		memset(w, 0, sizeof(*w));
		w->wr_id = e->wr_id;
		/* Peers write these: no status the program cannot know. */
		w->status = e->status <= IBV_WC_GENERAL_ERR ?
			(enum ibv_wc_status)e->status : IBV_WC_GENERAL_ERR;
		w->opcode = (enum ibv_wc_opcode)e->opcode;
		w->vendor_err = e->vendor_err;
		w->byte_len = e->byte_len;
		w->imm_data = e->imm;
		w->qp_num = e->qp_num;
		w->src_qp = e->src_qp;
		w->wc_flags = e->wc_flags;
		w->pkey_index = e->pkey_index;
		w->slid = e->slid;
		w->sl = e->sl;
		w->dlid_path_bits = e->dlid_path_bits;
		deliver_inl(c, w, cq_inl(s, cq->size, tail));
		tail++;
	}
	__atomic_store_n(&s->tail, tail, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&cq->poll_lock);
	return got;
}

static int vs_req_notify_cq(struct ibv_cq *ibcq, int solicited_only)
{
	struct vs_cq *cq = (struct vs_cq *)ibcq;

	__atomic_store_n(&cq->shm->armed, solicited_only ? 2u : 1u,
			 __ATOMIC_RELEASE);
	/* See cq_push: the program's next poll must not read the ring before
	 * a pusher can see this. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return 0;
}

UBS_EXPORT int ibv_get_cq_event(struct ibv_comp_channel *ch,
				struct ibv_cq **cq_out, void **cq_context)
{
	struct vs_ctx *c;

	if (!vs_is_ours(ch->context)) {
		int (*real)(struct ibv_comp_channel *, struct ibv_cq **,
			    void **) = vs_real("ibv_get_cq_event",
					       "IBVERBS_1.1");
		return real ? real(ch, cq_out, cq_context) : -1;
	}
	c = vs_ctx_of(ch->context);
	for (;;) {
		uint64_t v;
		ssize_t r;

		if (__atomic_load_n(&c->npending, __ATOMIC_RELAXED)) {
			/* Our own sends wait for a responder: keep them
			 * going while we wait. */
			struct pollfd p = { .fd = ch->fd, .events = POLLIN };

			progress(c);
			if (ubs_real.poll(&p, 1, 1) <= 0)
				continue;
		}
		/* Takes one event's count (blocks, or EAGAIN when the
		 * program made the fd non-blocking). */
		r = ubs_real.read(ch->fd, &v, sizeof(v));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		pthread_mutex_lock(&c->lock);
		for (struct vs_cq *cq = c->cqs; cq; cq = cq->next)
			if (cq->cq.channel == ch &&
			    __atomic_exchange_n(&cq->shm->fired, 0,
						__ATOMIC_ACQ_REL)) {
				pthread_mutex_unlock(&c->lock);
				*cq_out = &cq->cq;
				*cq_context = cq->cq.cq_context;
				return 0;
			}
		pthread_mutex_unlock(&c->lock);
	}
}

UBS_EXPORT void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int n)
{
	if (!vs_is_ours(cq->context)) {
		void (*real)(struct ibv_cq *, unsigned int) =
			vs_real("ibv_ack_cq_events", "IBVERBS_1.1");
		if (real)
			real(cq, n);
		return;
	}
	pthread_mutex_lock(&cq->mutex);
	cq->comp_events_completed += n;
	pthread_mutex_unlock(&cq->mutex);
}

/* ------------------------------------------------------ receive queues */

static struct vs_shm_rq *rq_new(struct vs_ctx *c, uint32_t wr, uint64_t *off,
				uint32_t *size)
{
	*size = pow2(wr ? wr : 1);
	*off = seg_alloc(c, rq_bytes(*size));
	if (!*off)
		return NULL;
	((struct vs_shm_rq *)(c->base + *off))->size = *size;
	return (struct vs_shm_rq *)(c->base + *off);
}

static int rq_post(struct vs_ctx *c, struct vs_shm_rq *rq, uint32_t size,
		   uint32_t max_sge, struct ibv_recv_wr *wr,
		   struct ibv_recv_wr **bad)
{
	int err = 0;

	shm_lock(&rq->lock);
	for (; wr; wr = wr->next) {
		struct vs_rwqe *e;

		if ((uint32_t)wr->num_sge > max_sge || wr->num_sge < 0) {
			err = EINVAL;
			break;
		}
		if (rq->head - __atomic_load_n(&rq->tail, __ATOMIC_ACQUIRE) >=
		    size) {
			err = ENOMEM;
			break;
		}
		e = &rq->e[rq->head & (size - 1)];
		e->wr_id = wr->wr_id;
		e->num_sge = (uint32_t)wr->num_sge;
		for (int i = 0; i < wr->num_sge; i++) {
			e->sge[i].addr = wr->sg_list[i].addr;
			e->sge[i].length = wr->sg_list[i].length;
			e->sge[i].lkey = wr->sg_list[i].lkey;
		}
		__atomic_store_n(&rq->head, rq->head + 1, __ATOMIC_RELEASE);
	}
	shm_unlock(&rq->lock);
	(void)c;
	if (err)
		*bad = wr;
	return err;
}

/* Take the oldest posted receive of a (maybe peer's) queue into *out.
 * Returns false when there is none. */
static bool rq_take_left(struct vs_shm_rq *rq, uint32_t size,
			 struct vs_rwqe *out, uint64_t *left)
{
	bool ok = false;

	shm_lock(&rq->lock);
	if (rq->tail < rq->head && rq->head - rq->tail <= size) {
		*out = rq->e[rq->tail & (size - 1)];
		if (out->num_sge > VS_MAX_SGE)
			out->num_sge = VS_MAX_SGE;
		__atomic_store_n(&rq->tail, rq->tail + 1, __ATOMIC_RELEASE);
		*left = rq->head - rq->tail;
		ok = true;
	}
	shm_unlock(&rq->lock);
	return ok;
}

static bool rq_take(struct vs_shm_rq *rq, uint32_t size, struct vs_rwqe *out)
{
	uint64_t left;

	return rq_take_left(rq, size, out, &left);
}

/* ------------------------------------------------------- async events */

/* Queue an async event in a context segment's ring (ours or a peer's).
 * Returns true when the owner's async fd must be woken. */
static bool async_push(struct vs_shm_hdr *h, uint32_t type, uint64_t obj_off)
{
	bool ok = false;

	shm_lock(&h->async_lock);
	if (h->async_head - h->async_tail < VS_ASYNC_RING) {
		struct vs_async_ev *e = &h->async[h->async_head %
						  VS_ASYNC_RING];

		e->type = type;
		e->obj_off = obj_off;
		h->async_head++;
		ok = true;
	}
	shm_unlock(&h->async_lock);
	return ok;
}

static void async_local(struct vs_ctx *c, uint32_t type, uint64_t obj_off)
{
	uint64_t one = 1;

	if (async_push(c->hdr, type, obj_off) &&
	    ubs_real.write(c->vctx.context.async_fd, &one, sizeof(one)) < 0)
		ubs_dbg("verbs: async fd: %s", strerror(errno));
}

static int peer_fd(struct vs_peer *p, int32_t rfd);

static void async_peer(struct vs_peer *p, uint32_t type, uint64_t obj_off)
{
	struct vs_shm_hdr *h = (struct vs_shm_hdr *)p->base;
	uint64_t one = 1;

	if (!async_push(h, type, obj_off))
		return;
	pthread_mutex_lock(&p->lock);
	if (p->async_fd < 0)
		p->async_fd = peer_fd(p, h->async_fd);
	if (p->async_fd >= 0 &&
	    ubs_real.write(p->async_fd, &one, sizeof(one)) < 0)
		ubs_dbg("verbs: peer async fd: %s", strerror(errno));
	pthread_mutex_unlock(&p->lock);
}

int vs_async_pop(struct vs_ctx *c, struct ibv_async_event *ev)
{
	struct vs_shm_hdr *h = c->hdr;
	struct vs_async_ev e;
	int r = -EAGAIN;

	shm_lock(&h->async_lock);
	if (h->async_tail < h->async_head &&
	    h->async_head - h->async_tail <= VS_ASYNC_RING) {
		e = h->async[h->async_tail % VS_ASYNC_RING];
		h->async_tail++;
		r = 0;
	} else {
		h->async_tail = h->async_head;
	}
	shm_unlock(&h->async_lock);
	if (r)
		return r;
	memset(ev, 0, sizeof(*ev));
	ev->event_type = (enum ibv_event_type)e.type;
	pthread_mutex_lock(&c->lock);
	r = -EAGAIN;
	if (e.type == IBV_EVENT_SRQ_LIMIT_REACHED) {
		for (struct vs_srq *s = c->srqs; s; s = s->next)
			if (s->off == e.obj_off) {
				ev->element.srq = &s->srq;
				r = 0;
			}
	} else {
		for (struct vs_qp *q = c->qps; q; q = q->next)
			if (q->shm_off == e.obj_off) {
				ev->element.qp = &q->qpx.qp_base;
				r = 0;
			}
	}
	pthread_mutex_unlock(&c->lock);
	return r;               /* an object destroyed since: skipped */
}

/* ---------------------------------------------------------------- SRQ */

UBS_EXPORT struct ibv_srq *ibv_create_srq(struct ibv_pd *pd,
					  struct ibv_srq_init_attr *attr)
{
	struct vs_ctx *c;
	struct vs_srq *s;

	if (!vs_is_ours(pd->context)) {
		struct ibv_srq *(*real)(struct ibv_pd *,
					struct ibv_srq_init_attr *) =
			vs_real("ibv_create_srq", "IBVERBS_1.1");
		return real ? real(pd, attr) : NULL;
	}
	c = vs_ctx_of(pd->context);
	if (attr->attr.max_wr < 1 || attr->attr.max_wr > VS_MAX_QP_WR ||
	    attr->attr.max_sge > VS_MAX_SGE) {
		errno = EINVAL;
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	s->rq = rq_new(c, attr->attr.max_wr, &s->off, &s->size);
	if (!s->rq) {
		free(s);
		errno = ENOMEM;
		return NULL;
	}
	s->max_sge = attr->attr.max_sge ? attr->attr.max_sge : 1;
	s->rq->limit = attr->attr.srq_limit;
	attr->attr.max_wr = s->size;
	attr->attr.max_sge = s->max_sge;
	s->srq.context = pd->context;
	s->srq.srq_context = attr->srq_context;
	s->srq.pd = pd;
	pthread_mutex_init(&s->srq.mutex, NULL);
	pthread_cond_init(&s->srq.cond, NULL);
	pthread_mutex_lock(&c->lock);
	s->next = c->srqs;
	c->srqs = s;
	pthread_mutex_unlock(&c->lock);
	return &s->srq;
}

UBS_EXPORT int ibv_modify_srq(struct ibv_srq *srq, struct ibv_srq_attr *attr,
			      int mask)
{
	struct vs_srq *s = (struct vs_srq *)srq;

	if (!vs_is_ours(srq->context)) {
		int (*real)(struct ibv_srq *, struct ibv_srq_attr *, int) =
			vs_real("ibv_modify_srq", "IBVERBS_1.1");
		return real ? real(srq, attr, mask) : EINVAL;
	}
	if (mask & IBV_SRQ_MAX_WR)
		return EINVAL;          /* no resize */
	if (mask & IBV_SRQ_LIMIT) {
		if (attr->srq_limit > s->size)
			return EINVAL;
		/* Armed: the event comes once the queue drops below. */
		__atomic_store_n(&s->rq->limit, attr->srq_limit,
				 __ATOMIC_RELEASE);
	}
	return 0;
}

UBS_EXPORT int ibv_query_srq(struct ibv_srq *srq, struct ibv_srq_attr *attr)
{
	struct vs_srq *s = (struct vs_srq *)srq;

	if (!vs_is_ours(srq->context)) {
		int (*real)(struct ibv_srq *, struct ibv_srq_attr *) =
			vs_real("ibv_query_srq", "IBVERBS_1.1");
		return real ? real(srq, attr) : EINVAL;
	}
	attr->max_wr = s->size;
	attr->max_sge = s->max_sge;
	attr->srq_limit = s->rq->limit;
	return 0;
}

UBS_EXPORT int ibv_destroy_srq(struct ibv_srq *srq)
{
	if (!vs_is_ours(srq->context)) {
		int (*real)(struct ibv_srq *) =
			vs_real("ibv_destroy_srq", "IBVERBS_1.1");
		return real ? real(srq) : EINVAL;
	}
	{
		struct vs_ctx *c = vs_ctx_of(srq->context);

		pthread_mutex_lock(&c->lock);
		for (struct vs_qp *q = c->qps; q; q = q->next)
			if (q->qpx.qp_base.srq == srq) {
				pthread_mutex_unlock(&c->lock);
				return EBUSY;   /* a QP still uses it */
			}
		for (struct vs_srq **pp = &c->srqs; *pp; pp = &(*pp)->next)
			if (*pp == (struct vs_srq *)srq) {
				*pp = (*pp)->next;
				break;
			}
		pthread_mutex_unlock(&c->lock);
		seg_free(c, ((struct vs_srq *)srq)->off,
			 rq_bytes(((struct vs_srq *)srq)->size));
	}
	free(srq);
	return 0;
}

static int vs_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr,
			    struct ibv_recv_wr **bad)
{
	struct vs_srq *s = (struct vs_srq *)srq;

	return rq_post(vs_ctx_of(srq->context), s->rq, s->size, s->max_sge,
		       wr, bad);
}

/* ----------------------------------------------------------------- AH */

UBS_EXPORT struct ibv_ah *ibv_create_ah(struct ibv_pd *pd,
					struct ibv_ah_attr *attr)
{
	struct vs_ah *ah;

	if (!vs_is_ours(pd->context)) {
		struct ibv_ah *(*real)(struct ibv_pd *, struct ibv_ah_attr *) =
			vs_real("ibv_create_ah", "IBVERBS_1.1");
		return real ? real(pd, attr) : NULL;
	}
	if (attr->port_num != 1 || (!attr->dlid && !attr->is_global)) {
		errno = EINVAL;
		return NULL;
	}
	ah = calloc(1, sizeof(*ah));
	if (!ah) {
		errno = ENOMEM;
		return NULL;
	}
	ah->ah.context = pd->context;
	ah->ah.pd = pd;
	ah->attr = *attr;
	return &ah->ah;
}

UBS_EXPORT struct ibv_ah *ibv_create_ah_from_wc(struct ibv_pd *pd,
						struct ibv_wc *wc,
						struct ibv_grh *grh,
						uint8_t port)
{
	struct ibv_ah_attr a;

	if (!vs_is_ours(pd->context)) {
		struct ibv_ah *(*real)(struct ibv_pd *, struct ibv_wc *,
				       struct ibv_grh *, uint8_t) =
			vs_real("ibv_create_ah_from_wc", "IBVERBS_1.1");
		return real ? real(pd, wc, grh, port) : NULL;
	}
	memset(&a, 0, sizeof(a));
	a.dlid = wc->slid;
	a.sl = wc->sl;
	a.port_num = port;
	if ((wc->wc_flags & IBV_WC_GRH) && grh) {
		a.is_global = 1;
		a.grh.dgid = grh->sgid;
		a.grh.hop_limit = 0xff;
	}
	return ibv_create_ah(pd, &a);
}

UBS_EXPORT int ibv_destroy_ah(struct ibv_ah *ah)
{
	if (!vs_is_ours(ah->context)) {
		int (*real)(struct ibv_ah *) =
			vs_real("ibv_destroy_ah", "IBVERBS_1.1");
		return real ? real(ah) : EINVAL;
	}
	free(ah);
	return 0;
}

/* ---------------------------------------------------------------- peers */

/* Map the segment of peer context ctx_id (fd from ubsd; closed here). */
static struct vs_peer *peer_get(struct vs_ctx *c, const struct ctl_verbs_peer *r,
				int fd)
{
	struct vs_peer *p;
	void *base;

	pthread_mutex_lock(&c->lock);
	for (p = c->peers; p; p = p->next)
		if (p->ctx_id == r->ctx_id)
			break;
	pthread_mutex_unlock(&c->lock);
	if (p) {
		ubs_fd_release(fd);
		return p;
	}
	if (r->seg_size < 8192 || r->seg_size > VS_SEG_SIZE) {
		ubs_fd_release(fd);
		return NULL;
	}
	base = mmap(NULL, r->seg_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		    0);
	ubs_fd_release(fd);
	if (base == MAP_FAILED)
		return NULL;
	if (((struct vs_shm_hdr *)base)->magic != VS_MAGIC ||
	    ((struct vs_shm_hdr *)base)->version != VS_LAYOUT) {
		munmap(base, r->seg_size);
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		munmap(base, r->seg_size);
		return NULL;
	}
	p->ctx_id = r->ctx_id;
	p->pid = (pid_t)r->pid;
	p->pidfd = -1;
	p->async_fd = -1;
	pthread_mutex_init(&p->lock, NULL);
	p->base = base;
	p->size = r->seg_size;
	pthread_mutex_lock(&c->lock);
	p->next = c->peers;
	c->peers = p;
	pthread_mutex_unlock(&c->lock);
	return p;
}

void vs_peers_drop(struct vs_ctx *c)
{
	struct vs_peer *p, *n;

	for (p = c->peers; p; p = n) {
		n = p->next;
		for (unsigned i = 0; i < p->nefd; i++)
			ubs_fd_release(p->efd[i].fd);
		if (p->pidfd >= 0)
			ubs_real.close(p->pidfd);
		if (p->async_fd >= 0)
			ubs_fd_release(p->async_fd);
		for (unsigned i = 0; i < p->nzc; i++)
			munmap(p->zc[i].map, p->zc[i].maplen);
		munmap(p->base, p->size);
		free(p);
	}
	c->peers = NULL;
}

/* Has the peer process gone?  ubsd sets the segment's dead word when the
 * owner's session ends, which is also what a daemon restart does to a
 * live process: only then is the pid asked (and the answer kept). */
static bool peer_gone(struct vs_peer *p)
{
	char path[64], st[256];
	const char *e;
	ssize_t n;
	int fd;

	if (p->gone)
		return true;
	if (!__atomic_load_n(&((struct vs_shm_hdr *)p->base)->dead,
			     __ATOMIC_ACQUIRE))
		return false;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)p->pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	n = fd >= 0 ? ubs_real.read(fd, st, sizeof(st) - 1) : -1;
	if (fd >= 0)
		ubs_real.close(fd);
	if (n <= 0) {
		p->gone = true;
		return true;
	}
	st[n] = '\0';
	e = strrchr(st, ')');
	/* A zombie has closed everything: as good as gone. */
	if (e && (e[2] == 'Z' || e[2] == 'X'))
		p->gone = true;
	return p->gone;
}

/* Ask ubsd for the peer of qpn dest (the authentication point).  0 with
 * *peer and *qp_off, or -errno. */
static int connect_peer(struct vs_qp *qp, uint32_t dest, struct vs_peer **peer,
			uint64_t *qp_off)
{
	struct ctl_verbs_connect m = { .qpn = qp->qpx.qp_base.qp_num,
				       .dest_qpn = dest };
	union {
		struct ctl_verbs_peer ok;
		struct ctl_error err;
	} r;
	uint16_t rt = 0;
	int fd = -1, nfd = 1, e;

	e = ubs_ctl_call(CTL_REQ_VERBS_CONNECT, &m, sizeof(m), NULL, 0, &rt,
			 &r, sizeof(r), &fd, &nfd);
	if (e)
		return e;
	if (rt == CTL_R_ERROR)
		return r.err.err > 0 ? -r.err.err : -EPROTO;
	if (rt != CTL_R_VERBS_PEER || nfd != 1)
		return -EPROTO;
	*peer = peer_get(qp->ctx, &r.ok, fd);
	if (!*peer)
		return -ENOMEM;
	if (!peer_ptr(*peer, r.ok.qp_off, sizeof(struct vs_shm_qp)))
		return -EPROTO;
	*qp_off = r.ok.qp_off;
	return 0;
}

/* ------------------------------------------------------------------ QP */

static int vs_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr,
			struct ibv_send_wr **bad);
static int vs_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr,
			struct ibv_recv_wr **bad);
static void qpx_init(struct vs_qp *qp);

static struct ibv_qp *create_qp(struct ibv_context *ctx, struct ibv_pd *pd,
				struct ibv_qp_init_attr *a, bool send_ops)
{
	struct vs_ctx *c = vs_ctx_of(ctx);
	struct ctl_verbs_qp m;
	union {
		struct ctl_verbs_qpn ok;
		struct ctl_error err;
	} r;
	uint16_t rt = 0;
	struct vs_qp *qp;
	int e;

	if (a->qp_type != IBV_QPT_RC && a->qp_type != IBV_QPT_UC &&
	    a->qp_type != IBV_QPT_UD) {
		errno = EOPNOTSUPP;
		return NULL;
	}
	if (!a->send_cq || !a->recv_cq || a->cap.max_send_wr > VS_MAX_QP_WR ||
	    a->cap.max_recv_wr > VS_MAX_QP_WR ||
	    a->cap.max_send_sge > VS_MAX_SGE ||
	    a->cap.max_recv_sge > VS_MAX_SGE ||
	    a->cap.max_inline_data > VS_MAX_INLINE) {
		errno = EINVAL;
		return NULL;
	}
	if (!c->ctx_id && vs_ctx_register(c) < 0) {
		errno = ENODEV;         /* no registry: no peer could reach us */
		return NULL;
	}
	qp = calloc(1, sizeof(*qp));
	if (!qp) {
		errno = ENOMEM;
		return NULL;
	}
	qp->ctx = c;
	pthread_mutex_init(&qp->lock, NULL);
	qp->shm_off = seg_alloc(c, sizeof(struct vs_shm_qp));
	if (!qp->shm_off)
		goto nomem;
	qp->shm = (struct vs_shm_qp *)(c->base + qp->shm_off);
	if (a->srq) {
		qp->srq = (struct vs_srq *)a->srq;
		qp->shm->srq_off = qp->srq->off;
	} else {
		qp->rq = rq_new(c, a->cap.max_recv_wr, &qp->shm->rq_off,
				&qp->rq_size);
		if (!qp->rq)
			goto nomem;
		qp->rq_sge = a->cap.max_recv_sge ? a->cap.max_recv_sge : 1;
	}
	qp->cap = a->cap;
	if (!qp->cap.max_send_sge)
		qp->cap.max_send_sge = 1;
	if (!a->srq)
		qp->cap.max_recv_wr = qp->rq_size;
	qp->cap.max_inline_data = a->cap.max_inline_data < 256 ? 256 :
		a->cap.max_inline_data;
	a->cap = qp->cap;
	qp->sq_sig_all = a->sq_sig_all;
	qp->pend_size = pow2(a->cap.max_send_wr ? a->cap.max_send_wr : 1);
	qp->pend = calloc(qp->pend_size, sizeof(*qp->pend));
	if (!qp->pend)
		goto nomem;
	{
		struct vs_cq *rcq = (struct vs_cq *)a->recv_cq;

		qp->shm->recv_cq_off = rcq->off;
		qp->shm->recv_cq_size = rcq->size;
	}
	qp->shm->type = a->qp_type;
	qp->shm->state = IBV_QPS_RESET;
	m.ctx_id = c->ctx_id;
	m.qp_off = qp->shm_off;
	m.qp_type = a->qp_type;
	m.reserved = 0;
	e = ubs_ctl_call(CTL_REQ_VERBS_QP, &m, sizeof(m), NULL, 0, &rt, &r,
			 sizeof(r), NULL, NULL);
	if (!e && rt == CTL_R_ERROR && r.err.err == ENOENT &&
	    vs_ctx_register(c) == 0) {
		/* A new daemon: it does not know our context yet. */
		m.ctx_id = c->ctx_id;
		e = ubs_ctl_call(CTL_REQ_VERBS_QP, &m, sizeof(m), NULL, 0,
				 &rt, &r, sizeof(r), NULL, NULL);
	}
	if (e || rt != CTL_R_VERBS_QPN) {
		free(qp->pend);
		free(qp);
		errno = e ? -e : rt == CTL_R_ERROR ? r.err.err : EPROTO;
		return NULL;
	}
	qp->shm->qpn = r.ok.qpn;
	__atomic_store_n(&qp->shm->live, VS_QP_LIVE, __ATOMIC_RELEASE);

	qp->qpx.qp_base.context = ctx;
	qp->qpx.qp_base.qp_context = a->qp_context;
	qp->qpx.qp_base.pd = pd;
	qp->qpx.qp_base.send_cq = a->send_cq;
	qp->qpx.qp_base.recv_cq = a->recv_cq;
	qp->qpx.qp_base.srq = a->srq;
	qp->qpx.qp_base.qp_num = r.ok.qpn;
	qp->qpx.qp_base.state = IBV_QPS_RESET;
	qp->qpx.qp_base.qp_type = a->qp_type;
	pthread_mutex_init(&qp->qpx.qp_base.mutex, NULL);
	pthread_cond_init(&qp->qpx.qp_base.cond, NULL);
	if (send_ops)
		qpx_init(qp);
	pthread_mutex_lock(&c->lock);
	qp->next = c->qps;
	__atomic_store_n(&c->qps, qp, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&c->lock);
	return &qp->qpx.qp_base;
nomem:
	free(qp->pend);
	free(qp);
	errno = ENOMEM;
	return NULL;
}

UBS_EXPORT struct ibv_qp *ibv_create_qp(struct ibv_pd *pd,
					struct ibv_qp_init_attr *a)
{
	if (!vs_is_ours(pd->context)) {
		struct ibv_qp *(*real)(struct ibv_pd *,
				       struct ibv_qp_init_attr *) =
			vs_real("ibv_create_qp", "IBVERBS_1.1");
		return real ? real(pd, a) : NULL;
	}
	return create_qp(pd->context, pd, a, false);
}

static struct ibv_qp *vs_create_qp_ex(struct ibv_context *ctx,
				      struct ibv_qp_init_attr_ex *ax)
{
	struct ibv_qp_init_attr a;
	struct ibv_qp *qp;
	uint64_t known = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;

	if (!(ax->comp_mask & IBV_QP_INIT_ATTR_PD) ||
	    (ax->comp_mask & ~known)) {
		errno = EOPNOTSUPP;
		return NULL;
	}
	memset(&a, 0, sizeof(a));
	a.qp_context = ax->qp_context;
	a.send_cq = ax->send_cq;
	a.recv_cq = ax->recv_cq;
	a.srq = ax->srq;
	a.cap = ax->cap;
	a.qp_type = ax->qp_type;
	a.sq_sig_all = ax->sq_sig_all;
	qp = create_qp(ctx, ax->pd, &a, ax->comp_mask &
		       IBV_QP_INIT_ATTR_SEND_OPS_FLAGS);
	if (qp)
		ax->cap = a.cap;
	return qp;
}

UBS_EXPORT struct ibv_qp_ex *ibv_qp_to_qp_ex(struct ibv_qp *ibqp)
{
	struct vs_qp *qp = (struct vs_qp *)ibqp;

	if (!vs_is_ours(ibqp->context)) {
		struct ibv_qp_ex *(*real)(struct ibv_qp *) =
			vs_real("ibv_qp_to_qp_ex", "IBVERBS_1.6");
		return real ? real(ibqp) : NULL;
	}
	return qp->qpx.wr_start ? &qp->qpx : NULL;
}

/* Complete every posted receive of the QP's own queue with FLUSH. */
static void flush_recvs(struct vs_qp *qp)
{
	struct vs_cq *rcq = (struct vs_cq *)qp->qpx.qp_base.recv_cq;
	struct vs_rwqe e;

	if (!qp->rq)
		return;
	while (rq_take(qp->rq, qp->rq_size, &e)) {
		struct vs_cqe c = { .wr_id = e.wr_id,
				    .status = IBV_WC_WR_FLUSH_ERR,
				    .opcode = IBV_WC_RECV,
				    .qp_num = qp->qpx.qp_base.qp_num };
		local_complete(rcq, &c);
	}
}

static void set_state(struct vs_qp *qp, enum ibv_qp_state s)
{
	qp->qpx.qp_base.state = s;
	qp->attr.qp_state = s;
	__atomic_store_n(&qp->shm->state, s, __ATOMIC_RELEASE);
}

static void qp_error(struct vs_qp *qp);

/* Attribute masks a transition requires and allows (IB spec table),
 * for RC; UC and UD drop what they lack. */
static int check_mask(enum ibv_qp_type t, enum ibv_qp_state cur,
		      enum ibv_qp_state nxt, int mask)
{
	int req = IBV_QP_STATE, opt = 0;

	if (nxt == IBV_QPS_RESET || nxt == IBV_QPS_ERR)
		return mask == IBV_QP_STATE ? 0 : EINVAL;
	if (cur == IBV_QPS_RESET && nxt == IBV_QPS_INIT) {
		req |= IBV_QP_PKEY_INDEX | IBV_QP_PORT;
		req |= t == IBV_QPT_UD ? IBV_QP_QKEY : IBV_QP_ACCESS_FLAGS;
	} else if (cur == IBV_QPS_INIT && nxt == IBV_QPS_INIT) {
		opt = IBV_QP_PKEY_INDEX | IBV_QP_PORT |
			(t == IBV_QPT_UD ? IBV_QP_QKEY : IBV_QP_ACCESS_FLAGS);
	} else if (cur == IBV_QPS_INIT && nxt == IBV_QPS_RTR) {
		if (t == IBV_QPT_RC)
			req |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
				IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
				IBV_QP_MIN_RNR_TIMER;
		else if (t == IBV_QPT_UC)
			req |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
				IBV_QP_RQ_PSN;
		opt = IBV_QP_PKEY_INDEX |
			(t == IBV_QPT_UD ? IBV_QP_QKEY :
			 IBV_QP_ACCESS_FLAGS | IBV_QP_ALT_PATH);
	} else if (cur == IBV_QPS_RTR && nxt == IBV_QPS_RTS) {
		req |= IBV_QP_SQ_PSN;
		if (t == IBV_QPT_RC)
			req |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
				IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
		opt = t == IBV_QPT_UD ? IBV_QP_QKEY | IBV_QP_CUR_STATE :
			IBV_QP_CUR_STATE | IBV_QP_ACCESS_FLAGS |
			IBV_QP_ALT_PATH | IBV_QP_PATH_MIG_STATE |
			(t == IBV_QPT_RC ? IBV_QP_MIN_RNR_TIMER : 0);
	} else if (cur == IBV_QPS_RTS && nxt == IBV_QPS_RTS) {
		opt = IBV_QP_CUR_STATE | IBV_QP_ACCESS_FLAGS | IBV_QP_ALT_PATH |
			IBV_QP_PATH_MIG_STATE | IBV_QP_QKEY |
			(t == IBV_QPT_RC ? IBV_QP_MIN_RNR_TIMER : 0);
	} else {
		return EINVAL;
	}
	if ((mask & req) != req || (mask & ~(req | opt)))
		return EINVAL;
	return 0;
}

UBS_EXPORT int ibv_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *a,
			     int mask)
{
	struct vs_qp *qp = (struct vs_qp *)ibqp;
	enum ibv_qp_state cur, nxt;
	int e;

	if (!vs_is_ours(ibqp->context)) {
		int (*real)(struct ibv_qp *, struct ibv_qp_attr *, int) =
			vs_real("ibv_modify_qp", "IBVERBS_1.1");
		return real ? real(ibqp, a, mask) : EINVAL;
	}
	cur = (mask & IBV_QP_CUR_STATE) ? a->cur_qp_state : ibqp->state;
	if (cur != ibqp->state)
		return EINVAL;
	nxt = (mask & IBV_QP_STATE) ? a->qp_state : cur;
	if (!(mask & IBV_QP_STATE))
		return EINVAL;
	e = check_mask(ibqp->qp_type, cur, nxt, mask);
	if (e)
		return e;
	if ((mask & IBV_QP_PORT) && a->port_num != 1)
		return EINVAL;
	if ((mask & IBV_QP_PKEY_INDEX) && a->pkey_index != 0)
		return EINVAL;
	if ((mask & IBV_QP_AV) && (a->ah_attr.port_num != 1 ||
				   (!a->ah_attr.dlid &&
				    !a->ah_attr.is_global)))
		return EINVAL;
	if ((mask & IBV_QP_PATH_MTU) &&
	    (a->path_mtu < IBV_MTU_256 || a->path_mtu > IBV_MTU_4096))
		return EINVAL;
	if ((mask & IBV_QP_MAX_QP_RD_ATOMIC) && a->max_rd_atomic > 16)
		return EINVAL;
	if ((mask & IBV_QP_MAX_DEST_RD_ATOMIC) && a->max_dest_rd_atomic > 16)
		return EINVAL;
	if ((mask & IBV_QP_RETRY_CNT) && a->retry_cnt > 7)
		return EINVAL;
	if ((mask & IBV_QP_RNR_RETRY) && a->rnr_retry > 7)
		return EINVAL;
	if ((mask & IBV_QP_DEST_QPN) && (a->dest_qp_num & ~0xffffffu))
		return EINVAL;

	pthread_mutex_lock(&qp->lock);
	if (mask & IBV_QP_ACCESS_FLAGS) {
		qp->attr.qp_access_flags = a->qp_access_flags;
		qp->shm->access = a->qp_access_flags;
	}
	if (mask & IBV_QP_QKEY) {
		qp->attr.qkey = a->qkey;
		qp->shm->qkey = a->qkey;
	}
	if (mask & IBV_QP_MIN_RNR_TIMER) {
		qp->attr.min_rnr_timer = a->min_rnr_timer;
		qp->shm->min_rnr_timer = a->min_rnr_timer;
	}
	if (mask & IBV_QP_AV)
		qp->attr.ah_attr = a->ah_attr;
	if (mask & IBV_QP_PATH_MTU)
		qp->attr.path_mtu = a->path_mtu;
	if (mask & IBV_QP_RQ_PSN)
		qp->attr.rq_psn = a->rq_psn;
	if (mask & IBV_QP_SQ_PSN)
		qp->attr.sq_psn = a->sq_psn;
	if (mask & IBV_QP_TIMEOUT)
		qp->attr.timeout = a->timeout;
	if (mask & IBV_QP_RETRY_CNT)
		qp->attr.retry_cnt = a->retry_cnt;
	if (mask & IBV_QP_RNR_RETRY)
		qp->attr.rnr_retry = a->rnr_retry;
	if (mask & IBV_QP_MAX_QP_RD_ATOMIC)
		qp->attr.max_rd_atomic = a->max_rd_atomic;
	if (mask & IBV_QP_MAX_DEST_RD_ATOMIC)
		qp->attr.max_dest_rd_atomic = a->max_dest_rd_atomic;
	if (mask & IBV_QP_PORT)
		qp->attr.port_num = a->port_num;
	if (mask & IBV_QP_DEST_QPN) {
		qp->attr.dest_qp_num = a->dest_qp_num;
		qp->shm->dest_qpn = a->dest_qp_num;
		qp->peer = NULL;
		/* Ask for the peer now; one that is not there yet is
		 * asked again by the first send. */
		if (connect_peer(qp, a->dest_qp_num, &qp->peer,
				 &qp->peer_qp_off) < 0)
			qp->peer = NULL;
	}
	if (nxt == IBV_QPS_RESET) {
		/* Reset empties the queues without completions. */
		if (qp->rq) {
			shm_lock(&qp->rq->lock);
			qp->rq->tail = qp->rq->head;
			shm_unlock(&qp->rq->lock);
		}
		if (qp->pend_head != qp->pend_tail)
			__atomic_sub_fetch(&qp->ctx->npending, 1,
					   __ATOMIC_RELAXED);
		qp->pend_head = qp->pend_tail = 0;
		qp->pend_since_ns = qp->pend_next_ns = 0;
		qp->pend_tries = 0;
		qp->peer = NULL;
		qp->shm->dest_qpn = 0;
	}
	set_state(qp, nxt);
	pthread_mutex_unlock(&qp->lock);
	if (nxt == IBV_QPS_ERR)
		qp_error(qp);
	return 0;
}

UBS_EXPORT int ibv_query_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *a,
			    int mask, struct ibv_qp_init_attr *init)
{
	struct vs_qp *qp = (struct vs_qp *)ibqp;

	if (!vs_is_ours(ibqp->context)) {
		int (*real)(struct ibv_qp *, struct ibv_qp_attr *, int,
			    struct ibv_qp_init_attr *) =
			vs_real("ibv_query_qp", "IBVERBS_1.1");
		return real ? real(ibqp, a, mask, init) : EINVAL;
	}
	*a = qp->attr;
	a->qp_state = ibqp->state;
	a->cur_qp_state = ibqp->state;
	a->cap = qp->cap;
	a->port_num = 1;
	memset(init, 0, sizeof(*init));
	init->qp_context = ibqp->qp_context;
	init->send_cq = ibqp->send_cq;
	init->recv_cq = ibqp->recv_cq;
	init->srq = ibqp->srq;
	init->cap = qp->cap;
	init->qp_type = ibqp->qp_type;
	init->sq_sig_all = qp->sq_sig_all;
	return 0;
}

UBS_EXPORT int ibv_destroy_qp(struct ibv_qp *ibqp)
{
	struct vs_qp *qp = (struct vs_qp *)ibqp;
	struct vs_ctx *c;
	struct ctl_verbs_qpn m = { .qpn = ibqp->qp_num };
	struct ctl_error e;
	uint16_t rt;

	if (!vs_is_ours(ibqp->context)) {
		int (*real)(struct ibv_qp *) =
			vs_real("ibv_destroy_qp", "IBVERBS_1.1");
		return real ? real(ibqp) : EINVAL;
	}
	c = qp->ctx;
	__atomic_store_n(&qp->shm->live, VS_QP_GONE, __ATOMIC_RELEASE);
	__atomic_store_n(&qp->shm->state, IBV_QPS_ERR, __ATOMIC_RELEASE);
	ubs_ctl_call(CTL_REQ_VERBS_QP_DROP, &m, sizeof(m), NULL, 0, &rt, &e,
		     sizeof(e), NULL, NULL);
	pthread_rwlock_wrlock(&c->qps_rw);
	pthread_mutex_lock(&c->lock);
	for (struct vs_qp **pp = &c->qps; *pp; pp = &(*pp)->next)
		if (*pp == qp) {
			*pp = qp->next;
			break;
		}
	if (qp->pend_head != qp->pend_tail)
		__atomic_sub_fetch(&c->npending, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&c->lock);
	pthread_rwlock_unlock(&c->qps_rw);
	if (qp->rq)             /* our own offset, not the shared copy */
		seg_free(c, (uint64_t)((uint8_t *)qp->rq - c->base),
			 rq_bytes(qp->rq_size));
	seg_free(c, qp->shm_off, sizeof(struct vs_shm_qp));
	free(qp->pend);
	free(qp->build);
	free(qp->udest);
	free(qp);
	return 0;
}

static int vs_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr,
			struct ibv_recv_wr **bad)
{
	struct vs_qp *qp = (struct vs_qp *)ibqp;
	int e;

	if (!qp->rq) {
		*bad = wr;
		return EINVAL;
	}
	if (ibqp->state == IBV_QPS_RESET) {
		*bad = wr;
		return EINVAL;
	}
	e = rq_post(qp->ctx, qp->rq, qp->rq_size, qp->rq_sge, wr, bad);
	if (ibqp->state == IBV_QPS_ERR)
		flush_recvs(qp);
	return e;
}

/* ----------------------------------------------------------- data path */

enum exec_res {
	EX_DONE,        /* completed (status in *st) */
	EX_RNR,         /* responder has no receive posted */
	EX_NOT_READY,   /* responder QP not there or not at RTR */
};

/* RNR NAK timer values, µs (IB spec, min_rnr_timer encoding). */
static const uint32_t rnr_us[32] = {
	655360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960,
	1280, 1920, 2560, 3840, 5120, 7680, 10240, 15360, 20480, 30720,
	40960, 61440, 81920, 122880, 163840, 245760, 327680, 491520,
};

/* The local source of a work request: iovecs over its SGEs (checked
 * against our MR table) or its inline copy. */
static int src_iov(struct vs_qp *qp, const struct vs_swqe *w,
		   struct iovec *iov, int *n, uint64_t *len, bool local_write)
{
	const struct ibv_send_wr *wr = &w->wr;

	*len = 0;
	*n = 0;
	if (wr->send_flags & IBV_SEND_INLINE) {
		iov[0].iov_base = (void *)w->inl;
		iov[0].iov_len = w->inl_len;
		*n = w->inl_len ? 1 : 0;
		*len = w->inl_len;
		return 0;
	}
	for (int i = 0; i < wr->num_sge; i++) {
		struct vs_mr *m = local_mr(qp->ctx, w->sge[i].lkey,
					   w->sge[i].addr, w->sge[i].length);

		if (!m || (local_write &&
			   !(m->mr.pd && (qp->ctx->mrt[m->slot].access &
					  IBV_ACCESS_LOCAL_WRITE))))
			return IBV_WC_LOC_PROT_ERR;
		if (!w->sge[i].length)
			continue;
		iov[*n].iov_base = (void *)(uintptr_t)w->sge[i].addr;
		iov[*n].iov_len = w->sge[i].length;
		(*n)++;
		*len += w->sge[i].length;
	}
	return 0;
}

/* The target's MR for rkey covering [addr, addr+len) with access bits
 * need, or an error status. */
static int remote_mr(struct vs_peer *p, uint32_t rkey, uint64_t addr,
		     uint64_t len, unsigned need, struct vs_shm_mr *out)
{
	struct vs_shm_hdr *h = (struct vs_shm_hdr *)p->base;
	uint32_t slot = rkey >> 8, nmr = h->nmr;
	struct vs_shm_mr *t, mr;

	if (nmr > VS_MAX_MR || slot == 0 || slot >= nmr)
		return IBV_WC_REM_ACCESS_ERR;
	t = peer_ptr(p, h->mr_off, (uint64_t)nmr * sizeof(*t));
	if (!t)
		return IBV_WC_REM_ACCESS_ERR;
	mr = t[slot];
	if (!__atomic_load_n(&t[slot].valid, __ATOMIC_ACQUIRE) ||
	    mr.rkey != rkey || (mr.access & need) != need ||
	    addr < mr.addr || addr + len > mr.addr + mr.len ||
	    addr + len < addr)
		return IBV_WC_REM_ACCESS_ERR;
	*out = mr;
	return 0;
}

/*
 * Where the target's zero-copy MR mr starts in our address space: its
 * memfd mapped here once (and kept), after checking it is the file the
 * entry names, sealed against shrinking and long enough.  NULL: use the
 * copy path.
 */
static uint8_t *zc_at(struct vs_peer *p, const struct vs_shm_mr *mr)
{
	struct vs_zc *z;
	struct stat st;
	uint64_t base;
	void *map;
	int fd, seals;

	uint8_t *at = NULL;

	if (!mr->zc_fd1 || mr->zc_fd1 > INT32_MAX)
		return NULL;
	pthread_mutex_lock(&p->lock);
	for (unsigned i = 0; i < p->nzc; i++) {
		z = &p->zc[i];
		if (z->rkey == mr->rkey && z->ino == mr->zc_ino &&
		    z->off == mr->zc_off && z->len >= mr->len) {
			at = z->at;
			goto out;
		}
	}
	/* Mappings stay until the context closes (another thread may be
	 * copying through one): past the cache's size, the copy path. */
	if (p->nzc == sizeof(p->zc) / sizeof(p->zc[0]))
		goto out;
	fd = peer_fd(p, (int32_t)(mr->zc_fd1 - 1));
	if (fd < 0)
		goto out;
	seals = ubs_real.fcntl(fd, F_GET_SEALS);
	base = mr->zc_off & ~4095ull;
	map = MAP_FAILED;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    (uint64_t)st.st_ino == mr->zc_ino && seals >= 0 &&
	    (seals & F_SEAL_SHRINK) && mr->zc_off + mr->len >= mr->zc_off &&
	    (uint64_t)st.st_size >= mr->zc_off + mr->len)
		map = mmap(NULL, mr->zc_off - base + mr->len,
			   PROT_READ | PROT_WRITE, MAP_SHARED, fd,
			   (off_t)base);
	ubs_fd_release(fd);
	if (map == MAP_FAILED)
		goto out;
	z = &p->zc[p->nzc++];
	z->rkey = mr->rkey;
	z->ino = mr->zc_ino;
	z->off = mr->zc_off;
	z->len = mr->len;
	z->map = map;
	z->maplen = mr->zc_off - base + mr->len;
	z->at = (uint8_t *)map + (mr->zc_off - base);
	at = z->at;
out:
	pthread_mutex_unlock(&p->lock);
	return at;
}

/*
 * Move len bytes between our iovecs l and the target's [raddr, +len) of
 * MR mr: memcpy through the MR's mapping when it is zero-copy capable,
 * else process_vm_writev/readv.  0 or an error status.
 */
static int xfer(pid_t pid, bool to_remote, struct iovec *l, int nl,
		struct iovec *r, int nr, uint64_t len);

static int xfer_mr(struct vs_ctx *c, struct vs_peer *p,
		   const struct vs_shm_mr *mr, bool to_remote,
		   struct iovec *l, int nl, uint64_t raddr, uint64_t len)
{
	uint8_t *at = len ? zc_at(p, mr) : NULL;
	struct iovec r = { (void *)(uintptr_t)raddr, len };

	if (!at) {
		if (len)
			__atomic_add_fetch(&c->hdr->copy_ops, 1,
					   __ATOMIC_RELAXED);
		return xfer(p->pid, to_remote, l, nl, &r, 1, len);
	}
	at += raddr - mr->addr;
	for (int i = 0; i < nl; i++) {
		if (to_remote)
			memcpy(at, l[i].iov_base, l[i].iov_len);
		else
			memcpy(l[i].iov_base, at, l[i].iov_len);
		at += l[i].iov_len;
	}
	__atomic_add_fetch(&c->hdr->zc_ops, 1, __ATOMIC_RELAXED);
	return 0;
}

/* Copy between our iovecs and the target's memory.  Returns 0, or an
 * error status (the peer is gone: transport retries exhausted). */
static int xfer(pid_t pid, bool to_remote, struct iovec *l, int nl,
		struct iovec *r, int nr, uint64_t len)
{
	ssize_t got;

	if (!len)
		return 0;
	got = to_remote ? process_vm_writev(pid, l, (unsigned long)nl, r,
					    (unsigned long)nr, 0) :
		process_vm_readv(pid, l, (unsigned long)nl, r,
				 (unsigned long)nr, 0);
	if (got == (ssize_t)len)
		return 0;
	if (got < 0 && errno == EFAULT)
		return IBV_WC_REM_ACCESS_ERR;
	ubs_dbg("verbs: copy to/from pid %d: %zd of %llu bytes: %s", (int)pid,
		got, (unsigned long long)len, strerror(errno));
	return IBV_WC_RETRY_EXC_ERR;
}

static struct vs_udest *udest_get(struct vs_qp *qp, uint32_t qpn)
{
	struct vs_udest *d;

	for (unsigned i = 0; i < qp->nudest; i++)
		if (qp->udest[i].qpn == qpn)
			return &qp->udest[i];
	if (qp->nudest == qp->udest_cap) {
		unsigned nc = qp->udest_cap ? qp->udest_cap * 2 : 8;
		struct vs_udest *p = realloc(qp->udest, nc * sizeof(*p));

		if (!p)
			return NULL;
		qp->udest = p;
		qp->udest_cap = nc;
	}
	d = &qp->udest[qp->nudest];
	if (connect_peer(qp, qpn, &d->peer, &d->qp_off) < 0)
		return NULL;
	d->qpn = qpn;
	qp->nudest++;
	return d;
}

/* The target's receive queue of a QP record, or NULL. */
static struct vs_shm_rq *target_rq(struct vs_peer *p,
				   const struct vs_shm_qp *t, uint32_t *size)
{
	uint64_t off = t->srq_off ? t->srq_off : t->rq_off;
	struct vs_shm_rq *rq = peer_ptr(p, off, sizeof(*rq));

	if (!rq)
		return NULL;
	*size = rq->size;
	if (!*size || (*size & (*size - 1)) || *size > VS_MAX_QP_WR ||
	    !peer_ptr(p, off, sizeof(*rq) + (uint64_t)*size *
		      sizeof(struct vs_rwqe)))
		return NULL;
	return rq;
}

/* Deliver a receive completion into the target's CQ. */
static void target_complete(struct vs_peer *p, const struct vs_shm_qp *t,
			    const struct vs_cqe *e, const struct vs_cq_inl *inl,
			    bool solicited)
{
	uint64_t off = t->recv_cq_off;
	struct vs_shm_cq *cq = peer_ptr(p, off, sizeof(*cq));
	uint32_t size;

	if (!cq)
		return;
	size = cq->size;
	if (!size || (size & (size - 1)) || size > 2 * VS_MAX_CQE ||
	    !peer_ptr(p, off, sizeof(*cq) + (uint64_t)size *
		      (sizeof(struct vs_cqe) + sizeof(struct vs_cq_inl))))
		return;
	if (cq_push(cq, size, e, inl, solicited) == 1)
		notify_peer(p, off, cq);
}

/*
 * Do one work request as the HCA would.  On EX_DONE *st is the status of
 * the initiator's completion and *blen its byte count.
 */
static enum exec_res exec_wr(struct vs_qp *qp, struct vs_swqe *w, int *st,
			     uint32_t *blen)
{
	struct ibv_send_wr *wr = &w->wr;
	struct iovec l[VS_MAX_SGE], r[VS_MAX_SGE];
	struct vs_peer *p;
	struct vs_shm_qp *t;
	uint64_t t_off, len;
	int nl, e;
	bool ud = qp->qpx.qp_base.qp_type == IBV_QPT_UD;
	bool uc = qp->qpx.qp_base.qp_type == IBV_QPT_UC;
	uint32_t me = qp->qpx.qp_base.qp_num;

	*st = IBV_WC_SUCCESS;
	*blen = 0;
	e = src_iov(qp, w, l, &nl, &len,
		    wr->opcode == IBV_WR_RDMA_READ ||
		    wr->opcode == IBV_WR_ATOMIC_CMP_AND_SWP ||
		    wr->opcode == IBV_WR_ATOMIC_FETCH_AND_ADD);
	if (e) {
		*st = e;
		return EX_DONE;
	}
	if (ud) {
		struct vs_udest *d;

		if (len > VS_MTU_BYTES) {
			*st = IBV_WC_LOC_LEN_ERR;
			return EX_DONE;
		}
		d = udest_get(qp, wr->wr.ud.remote_qpn);
		if (!d)
			return EX_DONE;         /* nobody there: dropped */
		p = d->peer;
		t_off = d->qp_off;
	} else {
		if (!qp->peer &&
		    connect_peer(qp, qp->attr.dest_qp_num, &qp->peer,
				 &qp->peer_qp_off) < 0) {
			qp->peer = NULL;
			return EX_NOT_READY;
		}
		p = qp->peer;
		t_off = qp->peer_qp_off;
	}
	t = peer_ptr(p, t_off, sizeof(*t));
	if (!t)
		return EX_NOT_READY;
	/* The record must still be that QP's: a destroyed QP's place in
	 * the segment is reused after a while. */
	if (__atomic_load_n(&t->live, __ATOMIC_ACQUIRE) != VS_QP_LIVE ||
	    t->qpn != (ud ? wr->wr.ud.remote_qpn : qp->attr.dest_qp_num) ||
	    peer_gone(p)) {
		/* No responder: as on a fabric, no ACK comes back and the
		 * request is retried until the transport retries run out
		 * (UD: silently dropped). */
		ubs_dbg("verbs: QP %u: peer QP gone", me);
		return ud ? EX_DONE : EX_NOT_READY;
	}
	{
		uint32_t ts = __atomic_load_n(&t->state, __ATOMIC_ACQUIRE);

		if (ts != IBV_QPS_RTR && ts != IBV_QPS_RTS &&
		    ts != IBV_QPS_SQD && ts != IBV_QPS_SQE)
			return ud ? EX_DONE : EX_NOT_READY;
		if (ud) {
			uint32_t qkey = wr->wr.ud.remote_qkey & 0x80000000u ?
				qp->attr.qkey : wr->wr.ud.remote_qkey;

			if (t->qkey != qkey)
				return EX_DONE; /* silently dropped */
		} else if (t->dest_qpn != me) {
			return EX_NOT_READY;
		}
	}

	switch (wr->opcode) {
	case IBV_WR_SEND:
	case IBV_WR_SEND_WITH_IMM:
	case IBV_WR_RDMA_WRITE_WITH_IMM: {
		struct vs_shm_rq *rq;
		struct vs_rwqe rw;
		uint32_t rqs, rcap = 0, skip = ud ? VS_GRH_BYTES : 0;
		struct vs_cqe c = { .qp_num = t->qpn, .src_qp = me,
				    .slid = VS_LID };
		bool imm = wr->opcode != IBV_WR_SEND, use_inl = false;
		struct vs_shm_mr wmr;
		struct vs_cq_inl inl;
		uint32_t rk[VS_MAX_SGE];
		int nr = 0;

		if (wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
			if (uc || ud) {
				if (ud)
					return EX_DONE;
			}
			if (!(t->access & IBV_ACCESS_REMOTE_WRITE) ||
			    remote_mr(p, wr->wr.rdma.rkey,
				      wr->wr.rdma.remote_addr, len,
				      IBV_ACCESS_REMOTE_WRITE, &wmr)) {
				*st = IBV_WC_REM_ACCESS_ERR;
				return EX_DONE;
			}
		}
		rq = target_rq(p, t, &rqs);
		if (!rq)
			return EX_NOT_READY;
		{
			uint64_t left;
			uint32_t lim;

			if (!rq_take_left(rq, rqs, &rw, &left))
				return ud || uc ? EX_DONE : EX_RNR;
			lim = __atomic_load_n(&rq->limit, __ATOMIC_ACQUIRE);
			if (t->srq_off && lim && left < lim &&
			    __atomic_compare_exchange_n(&rq->limit, &lim, 0,
							false, __ATOMIC_ACQ_REL,
							__ATOMIC_RELAXED))
				async_peer(p, IBV_EVENT_SRQ_LIMIT_REACHED,
					   t->srq_off);
		}
		c.wr_id = rw.wr_id;
		if (wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
			r[0].iov_base = (void *)(uintptr_t)
				wr->wr.rdma.remote_addr;
			r[0].iov_len = len;
			nr = 1;
			c.opcode = IBV_WC_RECV_RDMA_WITH_IMM;
		} else {
			for (uint32_t i = 0; i < rw.num_sge; i++) {
				uint64_t a = rw.sge[i].addr;
				uint32_t sl = rw.sge[i].length;

				rcap += sl;
				if (skip >= sl) {
					skip -= sl;
					continue;
				}
				r[nr].iov_base = (void *)(uintptr_t)(a + skip);
				r[nr].iov_len = sl - skip;
				rk[nr] = rw.sge[i].lkey;
				skip = 0;
				nr++;
			}
			c.opcode = IBV_WC_RECV;
			if (len + (ud ? VS_GRH_BYTES : 0) > rcap) {
				c.status = IBV_WC_LOC_LEN_ERR;
				target_complete(p, t, &c, NULL, true);
				*st = ud ? IBV_WC_SUCCESS :
					IBV_WC_REM_INV_REQ_ERR;
				return EX_DONE;
			}
			/* Trim the target iovecs to the message. */
			{
				uint64_t left = len;
				int k;

				for (k = 0; k < nr && left; k++) {
					if (r[k].iov_len > left)
						r[k].iov_len = left;
					left -= r[k].iov_len;
				}
				nr = k;
			}
			/* The receive buffers must be the target's own
			 * registered, locally writable memory. */
			for (int k = 0; k < nr; k++) {
				struct vs_shm_mr rm;

				if (remote_mr(p, rk[k],
					      (uintptr_t)r[k].iov_base,
					      r[k].iov_len,
					      IBV_ACCESS_LOCAL_WRITE, &rm)) {
					c.status = IBV_WC_LOC_PROT_ERR;
					target_complete(p, t, &c, NULL, true);
					*st = ud ? IBV_WC_SUCCESS :
						IBV_WC_REM_OP_ERR;
					return EX_DONE;
				}
			}
		}
		if (wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM &&
		    len <= VS_CQ_INL && nr <= (int)VS_CQ_DST) {
			/* Small: in the completion, copied by the owner. */
			uint64_t at = 0;

			inl.len = (uint32_t)len;
			inl.ndst = (uint32_t)nr;
			for (int k = 0; k < nr; k++) {
				inl.dst[k].addr = (uintptr_t)r[k].iov_base;
				inl.dst[k].length = (uint32_t)r[k].iov_len;
				inl.dst[k].lkey = rk[k];
			}
			for (int k = 0; k < nl; k++) {
				memcpy(inl.data + at, l[k].iov_base,
				       l[k].iov_len);
				at += l[k].iov_len;
			}
			use_inl = len > 0;
		} else {
			e = wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM ?
				xfer_mr(qp->ctx, p, &wmr, true, l, nl,
					wr->wr.rdma.remote_addr, len) :
				xfer(p->pid, true, l, nl, r, nr, len);
			if (e) {
				*st = e;
				return EX_DONE;
			}
		}
		c.byte_len = (uint32_t)len + (ud ? VS_GRH_BYTES : 0);
		if (imm) {
			c.imm = wr->imm_data;
			c.wc_flags |= IBV_WC_WITH_IMM;
		}
		if (ud && w->ah && w->ah->attr.is_global)
			c.wc_flags |= IBV_WC_GRH;
		target_complete(p, t, &c, use_inl ? &inl : NULL,
				(wr->send_flags & IBV_SEND_SOLICITED) != 0);
		*blen = (uint32_t)len;
		return EX_DONE;
	}
	case IBV_WR_RDMA_WRITE:
	case IBV_WR_RDMA_READ: {
		bool wr_op = wr->opcode == IBV_WR_RDMA_WRITE;
		unsigned need = wr_op ? IBV_ACCESS_REMOTE_WRITE :
			IBV_ACCESS_REMOTE_READ;
		struct vs_shm_mr mr;

		if (ud || (uc && !wr_op)) {
			*st = IBV_WC_LOC_QP_OP_ERR;
			return EX_DONE;
		}
		if (!(t->access & need) ||
		    remote_mr(p, wr->wr.rdma.rkey, wr->wr.rdma.remote_addr,
			      len, need, &mr)) {
			*st = IBV_WC_REM_ACCESS_ERR;
			return EX_DONE;
		}
		*st = xfer_mr(qp->ctx, p, &mr, wr_op, l, nl,
			      wr->wr.rdma.remote_addr, len);
		*blen = (uint32_t)len;
		return EX_DONE;
	}
	case IBV_WR_ATOMIC_CMP_AND_SWP:
	case IBV_WR_ATOMIC_FETCH_AND_ADD: {
		struct vs_shm_hdr *h = (struct vs_shm_hdr *)p->base;
		uint64_t old = 0, nv, ra = wr->wr.atomic.remote_addr;
		struct iovec o = { &old, 8 }, ni = { &nv, 8 };
		struct vs_shm_mr mr;

		if (ud || uc) {
			*st = IBV_WC_LOC_QP_OP_ERR;
			return EX_DONE;
		}
		if (len < 8 || (ra & 7)) {
			*st = len < 8 ? IBV_WC_LOC_LEN_ERR :
				IBV_WC_REM_INV_REQ_ERR;
			return EX_DONE;
		}
		if (!(t->access & IBV_ACCESS_REMOTE_ATOMIC) ||
		    remote_mr(p, wr->wr.atomic.rkey, ra, 8,
			      IBV_ACCESS_REMOTE_ATOMIC, &mr)) {
			*st = IBV_WC_REM_ACCESS_ERR;
			return EX_DONE;
		}
		shm_lock(&h->atomic_lock);
		e = xfer_mr(qp->ctx, p, &mr, false, &o, 1, ra, 8);
		if (!e) {
			bool write = true;

			if (wr->opcode == IBV_WR_ATOMIC_FETCH_AND_ADD) {
				nv = old + wr->wr.atomic.compare_add;
			} else {
				write = old == wr->wr.atomic.compare_add;
				nv = wr->wr.atomic.swap;
			}
			if (write)
				e = xfer_mr(qp->ctx, p, &mr, true, &ni, 1,
					    ra, 8);
		}
		shm_unlock(&h->atomic_lock);
		if (e) {
			*st = e;
			return EX_DONE;
		}
		/* The original value lands in the local buffer. */
		memcpy(l[0].iov_base, &old, 8);
		*blen = 8;
		return EX_DONE;
	}
	default:
		*st = IBV_WC_LOC_QP_OP_ERR;
		return EX_DONE;
	}
}

static enum ibv_wc_opcode wc_opcode(enum ibv_wr_opcode op)
{
	switch (op) {
	case IBV_WR_RDMA_WRITE:
	case IBV_WR_RDMA_WRITE_WITH_IMM: return IBV_WC_RDMA_WRITE;
	case IBV_WR_RDMA_READ:           return IBV_WC_RDMA_READ;
	case IBV_WR_ATOMIC_CMP_AND_SWP:  return IBV_WC_COMP_SWAP;
	case IBV_WR_ATOMIC_FETCH_AND_ADD: return IBV_WC_FETCH_ADD;
	default:                         return IBV_WC_SEND;
	}
}

static void send_complete(struct vs_qp *qp, const struct vs_swqe *w, int st,
			  uint32_t blen)
{
	struct vs_cqe c = { .wr_id = w->wr.wr_id, .status = (uint32_t)st,
			    .opcode = wc_opcode(w->wr.opcode),
			    .byte_len = blen,
			    .qp_num = qp->qpx.qp_base.qp_num };

	if (st == IBV_WC_SUCCESS && !qp->sq_sig_all &&
	    !(w->wr.send_flags & IBV_SEND_SIGNALED))
		return;
	local_complete((struct vs_cq *)qp->qpx.qp_base.send_cq, &c);
}

/* The QP is in error: its waiting sends and receives are flushed. */
static void qp_error(struct vs_qp *qp)
{
	struct vs_ctx *c = qp->ctx;

	pthread_mutex_lock(&qp->lock);
	if (qp->pend_head != qp->pend_tail) {
		while (qp->pend_head != qp->pend_tail) {
			struct vs_swqe *w = &qp->pend[qp->pend_head &
						      (qp->pend_size - 1)];
			struct vs_cqe e = { .wr_id = w->wr.wr_id,
					    .status = IBV_WC_WR_FLUSH_ERR,
					    .opcode = wc_opcode(w->wr.opcode),
					    .qp_num = qp->qpx.qp_base.qp_num };

			local_complete((struct vs_cq *)qp->qpx.qp_base.send_cq,
				       &e);
			qp->pend_head++;
		}
		__atomic_sub_fetch(&c->npending, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&qp->lock);
	flush_recvs(qp);
	if (qp->srq)
		async_local(c, IBV_EVENT_QP_LAST_WQE_REACHED, qp->shm_off);
}

/* How long a send may wait for a responder that is not ready: the QP's
 * transport retries (timeout, retry_cnt), at least 100 ms. */
static uint64_t retry_budget_ns(const struct vs_qp *qp)
{
	uint64_t t = qp->attr.timeout ? 4096ull << qp->attr.timeout : 0;

	t *= (uint64_t)qp->attr.retry_cnt + 1;
	return t < 100000000ull ? 100000000ull : t;
}

/*
 * Run the QP's waiting sends (qp->lock held).  Returns true when the
 * queue emptied.  A failed WR puts the QP in error (flushing the rest).
 */
static bool run_pending(struct vs_qp *qp, bool *failed)
{
	uint64_t now = 0;

	*failed = false;
	while (qp->pend_head != qp->pend_tail) {
		struct vs_swqe *w = &qp->pend[qp->pend_head &
					      (qp->pend_size - 1)];
		enum exec_res r;
		uint32_t blen;
		int st;

		if (qp->pend_next_ns) {
			now = now ? now : now_ns();
			if (now < qp->pend_next_ns)
				return false;
		}
		r = exec_wr(qp, w, &st, &blen);
		if (r != EX_DONE) {
			uint32_t limit = qp->attr.rnr_retry;

			now = now ? now : now_ns();
			if (!qp->pend_since_ns)
				qp->pend_since_ns = now;
			qp->pend_tries++;
			if (r == EX_RNR) {
				uint32_t tm = qp->peer ?
					((struct vs_shm_qp *)(qp->peer->base +
					 qp->peer_qp_off))->min_rnr_timer & 31 :
					1;
				/* Spin on the first tries: a receive is
				 * usually about to be posted. */
				qp->pend_next_ns = qp->pend_tries < 64 ? 0 :
					now + rnr_us[tm] * 1000ull;
				if (limit != 7 && qp->pend_tries > limit + 64) {
					st = IBV_WC_RNR_RETRY_EXC_ERR;
					r = EX_DONE;
				}
			} else if (now - qp->pend_since_ns >
				   retry_budget_ns(qp)) {
				ubs_dbg("verbs: QP %u: peer not ready",
					qp->qpx.qp_base.qp_num);
				st = IBV_WC_RETRY_EXC_ERR;
				r = EX_DONE;
			} else {
				qp->pend_next_ns = qp->pend_tries < 64 ? 0 :
					now + 100000;
			}
			if (r != EX_DONE)
				return false;
		}
		qp->pend_since_ns = 0;
		qp->pend_next_ns = 0;
		qp->pend_tries = 0;
		send_complete(qp, w, st, blen);
		qp->pend_head++;
		if (st != IBV_WC_SUCCESS &&
		    qp->qpx.qp_base.qp_type != IBV_QPT_UD) {
			*failed = true;
			return qp->pend_head == qp->pend_tail;
		}
	}
	return true;
}

static void progress_qp(struct vs_qp *qp)
{
	bool failed, was, now;

	pthread_mutex_lock(&qp->lock);
	was = qp->pend_head != qp->pend_tail;
	run_pending(qp, &failed);
	now = qp->pend_head != qp->pend_tail;
	if (was && !now)
		__atomic_sub_fetch(&qp->ctx->npending, 1, __ATOMIC_RELAXED);
	if (failed)
		set_state(qp, IBV_QPS_ERR);
	pthread_mutex_unlock(&qp->lock);
	if (failed)
		qp_error(qp);
}

/* Run the waiting sends of every QP of the context.  qps_rw (read) keeps
 * the QPs from being freed meanwhile; lock order: qps_rw, qp->lock,
 * c->lock. */
static void progress(struct vs_ctx *c)
{
	pthread_rwlock_rdlock(&c->qps_rw);
	for (struct vs_qp *q = __atomic_load_n(&c->qps, __ATOMIC_ACQUIRE); q;
	     q = q->next)
		if (q->pend_head != q->pend_tail)
			progress_qp(q);
	pthread_rwlock_unlock(&c->qps_rw);
}

/*
 * The context's progress thread, the part of an HCA that retries on its
 * own: started with the first send that has to wait, it runs the waiting
 * sends every VS_PROGRESS_US while there are any, so that a program
 * asleep in poll()/epoll on its channel fd still sees them complete.  It
 * sleeps on pt_cv when nothing waits and never runs program code.
 */
#define VS_PROGRESS_US 50

static void *progress_main(void *arg)
{
	struct vs_ctx *c = arg;
	struct timespec ts = { 0, VS_PROGRESS_US * 1000 };

	pthread_mutex_lock(&c->pt_lock);
	while (!c->pt_stop) {
		if (!__atomic_load_n(&c->npending, __ATOMIC_ACQUIRE)) {
			pthread_cond_wait(&c->pt_cv, &c->pt_lock);
			continue;
		}
		pthread_mutex_unlock(&c->pt_lock);
		progress(c);
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&c->pt_lock);
	}
	pthread_mutex_unlock(&c->pt_lock);
	return NULL;
}

void vs_progress_kick(struct vs_ctx *c)
{
	pthread_mutex_lock(&c->pt_lock);
	if (c->pt_started && c->pt_pid != my_pid())
		c->pt_started = false;  /* a forked child: not its thread */
	if (!c->pt_started && !c->pt_stop) {
		sigset_t all, old;

		/* No signal of the program's lands on our thread. */
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		c->pt_started = pthread_create(&c->pt, NULL, progress_main,
					       c) == 0;
		c->pt_pid = my_pid();
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	pthread_cond_signal(&c->pt_cv);
	pthread_mutex_unlock(&c->pt_lock);
}

void vs_progress_stop(struct vs_ctx *c)
{
	bool started;

	pthread_mutex_lock(&c->pt_lock);
	c->pt_stop = true;
	started = c->pt_started && c->pt_pid == my_pid();
	pthread_cond_signal(&c->pt_cv);
	pthread_mutex_unlock(&c->pt_lock);
	if (started)
		pthread_join(c->pt, NULL);
}

/* Copy a program's WR into a queue entry (the inline data too). */
static int swqe_fill(struct vs_qp *qp, struct vs_swqe *w,
		     const struct ibv_send_wr *wr)
{
	w->wr = *wr;
	w->wr.next = NULL;
	w->wr.sg_list = w->sge;
	w->ah = qp->qpx.qp_base.qp_type == IBV_QPT_UD ?
		(struct vs_ah *)wr->wr.ud.ah : NULL;
	if (wr->num_sge)
		memcpy(w->sge, wr->sg_list,
		       sizeof(w->sge[0]) * (size_t)wr->num_sge);
	w->inl_len = 0;
	if (wr->send_flags & IBV_SEND_INLINE) {
		for (int i = 0; i < wr->num_sge; i++) {
			if (w->inl_len + wr->sg_list[i].length >
			    qp->cap.max_inline_data)
				return EINVAL;
			memcpy(w->inl + w->inl_len,
			       (void *)(uintptr_t)wr->sg_list[i].addr,
			       wr->sg_list[i].length);
			w->inl_len += wr->sg_list[i].length;
		}
	}
	return 0;
}

static int check_wr(struct vs_qp *qp, const struct ibv_send_wr *wr)
{
	enum ibv_qp_type t = qp->qpx.qp_base.qp_type;

	if (wr->num_sge < 0 || (uint32_t)wr->num_sge > qp->cap.max_send_sge)
		return EINVAL;
	switch (wr->opcode) {
	case IBV_WR_SEND:
	case IBV_WR_SEND_WITH_IMM:
		return t == IBV_QPT_UD && !wr->wr.ud.ah ? EINVAL : 0;
	case IBV_WR_RDMA_WRITE:
	case IBV_WR_RDMA_WRITE_WITH_IMM:
		return t == IBV_QPT_UD ? EINVAL : 0;
	case IBV_WR_RDMA_READ:
	case IBV_WR_ATOMIC_CMP_AND_SWP:
	case IBV_WR_ATOMIC_FETCH_AND_ADD:
		return t == IBV_QPT_RC ? 0 : EINVAL;
	default:
		return EINVAL;
	}
}

static int post_send_locked(struct vs_qp *qp, struct ibv_send_wr *wr,
			    struct ibv_send_wr **bad)
{
	struct ibv_qp *ibqp = &qp->qpx.qp_base;
	bool failed = false;
	int err = 0;

	if (ibqp->state != IBV_QPS_RTS && ibqp->state != IBV_QPS_ERR) {
		*bad = wr;
		return EINVAL;
	}
	for (; wr; wr = wr->next) {
		struct vs_swqe *w;
		bool was;

		err = check_wr(qp, wr);
		if (err)
			break;
		if (qp->pend_tail - qp->pend_head >= qp->pend_size) {
			err = ENOMEM;
			break;
		}
		w = &qp->pend[qp->pend_tail & (qp->pend_size - 1)];
		err = swqe_fill(qp, w, wr);
		if (err)
			break;
		if (ibqp->state == IBV_QPS_ERR) {
			struct vs_cqe e = { .wr_id = wr->wr_id,
					    .status = IBV_WC_WR_FLUSH_ERR,
					    .opcode = wc_opcode(wr->opcode),
					    .qp_num = ibqp->qp_num };

			local_complete((struct vs_cq *)ibqp->send_cq, &e);
			continue;
		}
		was = qp->pend_head != qp->pend_tail;
		qp->pend_tail++;
		if (!was) {
			bool empty = run_pending(qp, &failed);

			if (failed) {
				/* The QP is in error: the rest of the list
				 * is flushed, as the HCA would. */
				set_state(qp, IBV_QPS_ERR);
				continue;
			}
			if (!empty &&
			    __atomic_add_fetch(&qp->ctx->npending, 1,
					       __ATOMIC_RELAXED) == 1)
				vs_progress_kick(qp->ctx);
		}
	}
	if (failed) {
		set_state(qp, IBV_QPS_ERR);
		pthread_mutex_unlock(&qp->lock);
		qp_error(qp);
		pthread_mutex_lock(&qp->lock);
	}
	if (err)
		*bad = wr;
	return err;
}

static int vs_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr,
			struct ibv_send_wr **bad)
{
	struct vs_qp *qp = (struct vs_qp *)ibqp;
	int err;

	if (__atomic_load_n(&qp->ctx->npending, __ATOMIC_RELAXED))
		progress(qp->ctx);
	pthread_mutex_lock(&qp->lock);
	err = post_send_locked(qp, wr, bad);
	pthread_mutex_unlock(&qp->lock);
	return err;
}

/* ------------------------------------------------- ibv_wr_* (qp_ex) */

static struct vs_qp *qpx_qp(struct ibv_qp_ex *x)
{
	return (struct vs_qp *)x;
}

static struct vs_swqe *wr_new(struct ibv_qp_ex *x, enum ibv_wr_opcode op)
{
	struct vs_qp *qp = qpx_qp(x);
	struct vs_swqe *w;

	if (qp->nbuild >= qp->pend_size) {
		qp->build_err = ENOMEM;
		return NULL;
	}
	w = &qp->build[qp->nbuild++];
	memset(&w->wr, 0, sizeof(w->wr));
	w->wr.wr_id = x->wr_id;
	w->wr.send_flags = x->wr_flags;
	w->wr.opcode = op;
	w->wr.sg_list = w->sge;
	w->inl_len = 0;
	w->ah = NULL;
	return w;
}

static struct vs_swqe *wr_cur(struct ibv_qp_ex *x)
{
	struct vs_qp *qp = qpx_qp(x);

	return qp->nbuild ? &qp->build[qp->nbuild - 1] : NULL;
}

static void x_start(struct ibv_qp_ex *x)
{
	qpx_qp(x)->nbuild = 0;
	qpx_qp(x)->build_err = 0;
}

static void x_abort(struct ibv_qp_ex *x)
{
	qpx_qp(x)->nbuild = 0;
}

static int x_complete(struct ibv_qp_ex *x)
{
	struct vs_qp *qp = qpx_qp(x);
	struct ibv_send_wr *bad;
	int err = qp->build_err;

	if (!err && qp->nbuild) {
		/* Inline data already sits in the entries: post them as
		 * SGE lists over the copies. */
		for (uint32_t i = 0; i < qp->nbuild; i++) {
			struct vs_swqe *w = &qp->build[i];

			w->wr.next = i + 1 < qp->nbuild ?
				&qp->build[i + 1].wr : NULL;
			if (w->wr.send_flags & IBV_SEND_INLINE) {
				w->sge[0].addr = (uintptr_t)w->inl;
				w->sge[0].length = w->inl_len;
				w->wr.num_sge = w->inl_len ? 1 : 0;
			}
			if (w->ah)
				w->wr.wr.ud.ah = &w->ah->ah;
		}
		err = vs_post_send(&x->qp_base, &qp->build[0].wr, &bad);
	}
	qp->nbuild = 0;
	return err;
}

static void x_send(struct ibv_qp_ex *x)
{
	wr_new(x, IBV_WR_SEND);
}

static void x_send_imm(struct ibv_qp_ex *x, __be32 imm)
{
	struct vs_swqe *w = wr_new(x, IBV_WR_SEND_WITH_IMM);

	if (w)
		w->wr.imm_data = imm;
}

static void x_rdma(struct ibv_qp_ex *x, enum ibv_wr_opcode op, uint32_t rkey,
		   uint64_t addr)
{
	struct vs_swqe *w = wr_new(x, op);

	if (w) {
		w->wr.wr.rdma.rkey = rkey;
		w->wr.wr.rdma.remote_addr = addr;
	}
}

static void x_write(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr)
{
	x_rdma(x, IBV_WR_RDMA_WRITE, rkey, addr);
}

static void x_write_imm(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr,
			__be32 imm)
{
	x_rdma(x, IBV_WR_RDMA_WRITE_WITH_IMM, rkey, addr);
	if (wr_cur(x))
		wr_cur(x)->wr.imm_data = imm;
}

static void x_read(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr)
{
	x_rdma(x, IBV_WR_RDMA_READ, rkey, addr);
}

static void x_cas(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr,
		  uint64_t cmp, uint64_t swap)
{
	struct vs_swqe *w = wr_new(x, IBV_WR_ATOMIC_CMP_AND_SWP);

	if (w) {
		w->wr.wr.atomic.rkey = rkey;
		w->wr.wr.atomic.remote_addr = addr;
		w->wr.wr.atomic.compare_add = cmp;
		w->wr.wr.atomic.swap = swap;
	}
}

static void x_faa(struct ibv_qp_ex *x, uint32_t rkey, uint64_t addr,
		  uint64_t add)
{
	struct vs_swqe *w = wr_new(x, IBV_WR_ATOMIC_FETCH_AND_ADD);

	if (w) {
		w->wr.wr.atomic.rkey = rkey;
		w->wr.wr.atomic.remote_addr = addr;
		w->wr.wr.atomic.compare_add = add;
	}
}

static void x_ud_addr(struct ibv_qp_ex *x, struct ibv_ah *ah, uint32_t qpn,
		      uint32_t qkey)
{
	struct vs_swqe *w = wr_cur(x);

	if (w) {
		w->ah = (struct vs_ah *)ah;
		w->wr.wr.ud.ah = ah;
		w->wr.wr.ud.remote_qpn = qpn;
		w->wr.wr.ud.remote_qkey = qkey;
	}
}

static void x_sge(struct ibv_qp_ex *x, uint32_t lkey, uint64_t addr,
		  uint32_t len)
{
	struct vs_swqe *w = wr_cur(x);

	if (w) {
		w->sge[0].lkey = lkey;
		w->sge[0].addr = addr;
		w->sge[0].length = len;
		w->wr.num_sge = 1;
	}
}

static void x_sge_list(struct ibv_qp_ex *x, size_t n, const struct ibv_sge *l)
{
	struct vs_swqe *w = wr_cur(x);

	if (!w)
		return;
	if (n > VS_MAX_SGE) {
		qpx_qp(x)->build_err = EINVAL;
		return;
	}
	memcpy(w->sge, l, n * sizeof(*l));
	w->wr.num_sge = (int)n;
}

static void x_inline_list(struct ibv_qp_ex *x, size_t n,
			  const struct ibv_data_buf *b)
{
	struct vs_swqe *w = wr_cur(x);
	struct vs_qp *qp = qpx_qp(x);

	if (!w)
		return;
	w->wr.send_flags |= IBV_SEND_INLINE;
	w->inl_len = 0;
	for (size_t i = 0; i < n; i++) {
		if (w->inl_len + b[i].length > qp->cap.max_inline_data) {
			qp->build_err = EINVAL;
			return;
		}
		memcpy(w->inl + w->inl_len, b[i].addr, b[i].length);
		w->inl_len += (uint32_t)b[i].length;
	}
}

static void x_inline(struct ibv_qp_ex *x, void *addr, size_t len)
{
	struct ibv_data_buf b = { .addr = addr, .length = len };

	x_inline_list(x, 1, &b);
}

static void qpx_init(struct vs_qp *qp)
{
	struct ibv_qp_ex *x = &qp->qpx;

	qp->build = calloc(qp->pend_size, sizeof(*qp->build));
	if (!qp->build)
		return;
	x->wr_start = x_start;
	x->wr_complete = x_complete;
	x->wr_abort = x_abort;
	x->wr_send = x_send;
	x->wr_send_imm = x_send_imm;
	x->wr_rdma_write = x_write;
	x->wr_rdma_write_imm = x_write_imm;
	x->wr_rdma_read = x_read;
	x->wr_atomic_cmp_swp = x_cas;
	x->wr_atomic_fetch_add = x_faa;
	x->wr_set_ud_addr = x_ud_addr;
	x->wr_set_sge = x_sge;
	x->wr_set_sge_list = x_sge_list;
	x->wr_set_inline_data = x_inline;
	x->wr_set_inline_data_list = x_inline_list;
}

/* --------------------------------------------------------------- ops */

void vs_fill_ops(struct vs_ctx *c)
{
	struct ibv_context *ctx = &c->vctx.context;

	ctx->ops.poll_cq = vs_poll_cq;
	ctx->ops.req_notify_cq = vs_req_notify_cq;
	ctx->ops.post_send = vs_post_send;
	ctx->ops.post_recv = vs_post_recv;
	ctx->ops.post_srq_recv = vs_post_srq_recv;
	c->vctx.query_port = vs_query_port_op;
	c->vctx.query_device_ex = vs_query_device_ex;
	c->vctx.create_qp_ex = vs_create_qp_ex;
}

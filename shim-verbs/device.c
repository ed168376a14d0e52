/* SPDX-License-Identifier: MIT */
/*
 * device.c - the virtual device ubv0: device list, open/close, the
 * attributes of device and port (InfiniBand link layer, LID, GID table
 * entry 0, one pkey), sysfs answers for ibv_devinfo, async events.
 *
 * Entry points on a real device's objects go to the real libibverbs,
 * found with dlvsym (its symbols are versioned).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "preload.h"
#include "ctl.h"
#include "ctl_proto.h"
#include "vshim.h"
#include "vshim_int.h"

static struct ibv_device vs_dev = {
	.node_type = IBV_NODE_CA,
	.transport_type = IBV_TRANSPORT_IB,
	.name = "ubv0",
	.dev_name = "uverbs_ubv0",
	.dev_path = "/dev/infiniband/uverbs_ubv0",
	.ibdev_path = "/sys/class/infiniband/ubv0",
};

static uint64_t vs_guid_host;   /* host order; 0 until computed */

/* A real libibverbs function (NULL when libibverbs is not loaded). */
void *vs_real(const char *name, const char *ver)
{
	void *p = dlvsym(RTLD_NEXT, name, ver);

	return p ? p : dlsym(RTLD_NEXT, name);
}

bool vs_is_ours(struct ibv_context *ctx)
{
	return ctx && ctx->device == &vs_dev;
}

/* The node GUID: derived from the machine id, so stable per host. */
uint64_t vs_guid(void)
{
	if (!vs_guid_host) {
		char buf[64] = "";
		uint64_t h = 1469598103934665603ull;
		int fd = open("/etc/machine-id", O_RDONLY | O_CLOEXEC);

		if (fd >= 0) {
			if (ubs_real.read(fd, buf, sizeof(buf) - 1) < 0)
				buf[0] = '\0';
			ubs_real.close(fd);
		}
		if (!buf[0])
			gethostname(buf, sizeof(buf) - 1);
		for (char *p = buf; *p; p++)
			h = (h ^ (uint8_t)*p) * 1099511628211ull;
		/* An EUI-64 of a local OUI: never 0. */
		h = (h & 0x00ffffffffffffffull) | 0x0200000000000000ull;
		vs_guid_host = h;
	}
	return vs_guid_host;
}

/* The list we hand out: ours first, then the real ones; the real list is
 * kept behind the NULL so that free gives it back. */
UBS_EXPORT struct ibv_device **ibv_get_device_list(int *num)
{
	struct ibv_device **(*real)(int *) =
		vs_real("ibv_get_device_list", "IBVERBS_1.1");
	struct ibv_device **rl = NULL, **l;
	int n = 0;

	ubs_ready();
	if (real)
		rl = real(&n);
	if (!rl)
		n = 0;
	l = calloc((size_t)n + 3, sizeof(*l));
	if (!l) {
		if (rl)
			((void (*)(struct ibv_device **))vs_real(
				"ibv_free_device_list", "IBVERBS_1.1"))(rl);
		errno = ENOMEM;
		return NULL;
	}
	l[0] = &vs_dev;
	for (int i = 0; i < n; i++)
		l[1 + i] = rl[i];
	l[n + 2] = (struct ibv_device *)rl;
	if (num)
		*num = n + 1;
	return l;
}

UBS_EXPORT void ibv_free_device_list(struct ibv_device **list)
{
	struct ibv_device **rl;
	int n = 0;

	if (!list)
		return;
	while (list[n])
		n++;
	rl = (struct ibv_device **)list[n + 1];
	if (rl) {
		void (*real)(struct ibv_device **) =
			vs_real("ibv_free_device_list", "IBVERBS_1.1");
		if (real)
			real(rl);
	}
	free(list);
}

UBS_EXPORT const char *ibv_get_device_name(struct ibv_device *dev)
{
	const char *(*real)(struct ibv_device *);

	if (dev == &vs_dev)
		return vs_dev.name;
	real = vs_real("ibv_get_device_name", "IBVERBS_1.1");
	return real ? real(dev) : NULL;
}

UBS_EXPORT __be64 ibv_get_device_guid(struct ibv_device *dev)
{
	__be64 (*real)(struct ibv_device *);

	if (dev == &vs_dev)
		return htobe64(vs_guid());
	real = vs_real("ibv_get_device_guid", "IBVERBS_1.1");
	return real ? real(dev) : 0;
}

/* Register the context's segment with ubsd (again, after a daemon
 * restart); ctx_id stays 0 when it cannot. */
int vs_ctx_register(struct vs_ctx *c)
{
	struct ctl_verbs_open m = { .seg_size = VS_SEG_SIZE };
	union {
		struct ctl_verbs_ctx ok;
		struct ctl_error err;
	} r;
	uint16_t rt = 0;

	if (ubs_ctl_call(CTL_REQ_VERBS_OPEN, &m, sizeof(m), &c->seg_fd, 1, &rt,
			 &r, sizeof(r), NULL, NULL) == 0 &&
	    rt == CTL_R_VERBS_CTX) {
		/* The dead word of a previous daemon's session goes. */
		__atomic_store_n(&c->hdr->dead, 0, __ATOMIC_RELEASE);
		c->ctx_id = r.ok.ctx_id;
		return 0;
	}
	ubs_info("verbs: no registry (ubsd), QPs cannot connect");
	return -ENOTCONN;
}

UBS_EXPORT struct ibv_context *ibv_open_device(struct ibv_device *dev)
{
	struct vs_ctx *c;
	struct ibv_context *ctx;
	int fd;

	ubs_ready();
	if (dev != &vs_dev) {
		struct ibv_context *(*real)(struct ibv_device *) =
			vs_real("ibv_open_device", "IBVERBS_1.1");
		if (!real) {
			errno = ENODEV;
			return NULL;
		}
		return real(dev);
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		errno = ENOMEM;
		return NULL;
	}
	fd = memfd_create("ubs-verbs", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)VS_SEG_SIZE) < 0)
		goto fail;
	c->base = mmap(NULL, VS_SEG_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		       fd, 0);
	if (c->base == MAP_FAILED)
		goto fail;
	c->seg_fd = ubs_fd_high(fd);
	fd = -1;
	c->hdr = (struct vs_shm_hdr *)c->base;
	c->hdr->magic = VS_MAGIC;
	c->hdr->version = VS_LAYOUT;
	c->hdr->size = VS_SEG_SIZE;
	c->hdr->pid = (uint32_t)getpid();
	c->hdr->nmr = VS_MAX_MR;
	c->hdr->mr_off = 4096;
	c->mrt = (struct vs_shm_mr *)(c->base + c->hdr->mr_off);
	c->bump = c->hdr->mr_off + VS_MAX_MR * sizeof(struct vs_shm_mr);
	pthread_mutex_init(&c->lock, NULL);
	pthread_rwlock_init(&c->qps_rw, NULL);
	pthread_mutex_init(&c->pt_lock, NULL);
	pthread_cond_init(&c->pt_cv, NULL);
	vs_ctx_register(c);

	ctx = &c->vctx.context;
	ctx->device = dev;
	ctx->cmd_fd = -1;
	ctx->async_fd = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
	c->hdr->async_fd = ctx->async_fd;
	ctx->num_comp_vectors = 1;
	pthread_mutex_init(&ctx->mutex, NULL);
	ctx->abi_compat = __VERBS_ABI_IS_EXTENDED;
	c->vctx.sz = sizeof(c->vctx);
	vs_fill_ops(c);
	return ctx;
fail:
	if (fd >= 0)
		ubs_real.close(fd);
	free(c);
	errno = ENOMEM;
	return NULL;
}

UBS_EXPORT int ibv_close_device(struct ibv_context *ctx)
{
	struct vs_ctx *c;

	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *) =
			vs_real("ibv_close_device", "IBVERBS_1.1");
		return real ? real(ctx) : EINVAL;
	}
	c = vs_ctx_of(ctx);
	vs_progress_stop(c);
	vs_peers_drop(c);
	if (ctx->async_fd >= 0)
		ubs_real.close(ctx->async_fd);
	munmap(c->base, VS_SEG_SIZE);
	ubs_fd_release(c->seg_fd);
	free(c);
	return 0;
}

static void dev_attr(struct ibv_device_attr *a)
{
	memset(a, 0, sizeof(*a));
	snprintf(a->fw_ver, sizeof(a->fw_ver), "1.0.0");
	a->node_guid = htobe64(vs_guid());
	a->sys_image_guid = htobe64(vs_guid());
	a->max_mr_size = 1ull << 40;
	a->page_size_cap = 0xfffff000;
	a->vendor_id = 0x19e5;
	a->vendor_part_id = 0xa0b1;
	a->hw_ver = 1;
	a->max_qp = 65536;
	a->max_qp_wr = VS_MAX_QP_WR;
	a->device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN |
		IBV_DEVICE_PORT_ACTIVE_EVENT | IBV_DEVICE_SYS_IMAGE_GUID |
		IBV_DEVICE_CHANGE_PHY_PORT;
	a->max_sge = VS_MAX_SGE;
	a->max_sge_rd = VS_MAX_SGE;
	a->max_cq = 65536;
	a->max_cqe = VS_MAX_CQE;
	a->max_mr = VS_MAX_MR;
	a->max_pd = 65536;
	a->max_qp_rd_atom = 16;
	a->max_res_rd_atom = 16 * 65536;
	a->max_qp_init_rd_atom = 16;
	a->atomic_cap = IBV_ATOMIC_HCA;
	a->max_srq = 4096;
	a->max_srq_wr = VS_MAX_QP_WR;
	a->max_srq_sge = VS_MAX_SGE;
	a->max_pkeys = 1;
	a->local_ca_ack_delay = 16;
	a->phys_port_cnt = 1;
	a->max_ah = 65536;
}

UBS_EXPORT int ibv_query_device(struct ibv_context *ctx,
				struct ibv_device_attr *attr)
{
	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *, struct ibv_device_attr *) =
			vs_real("ibv_query_device", "IBVERBS_1.1");
		return real ? real(ctx, attr) : EINVAL;
	}
	dev_attr(attr);
	return 0;
}

int vs_query_device_ex(struct ibv_context *ctx,
		       const struct ibv_query_device_ex_input *in,
		       struct ibv_device_attr_ex *attr, size_t size)
{
	struct ibv_device_attr_ex a;

	memset(&a, 0, sizeof(a));
	dev_attr(&a.orig_attr);
	a.max_dm_size = 0;
	memcpy(attr, &a, size < sizeof(a) ? size : sizeof(a));
	return 0;
}

static void port_attr(struct ibv_port_attr *p)
{
	memset(p, 0, sizeof(*p));
	p->state = IBV_PORT_ACTIVE;
	p->max_mtu = IBV_MTU_4096;
	p->active_mtu = IBV_MTU_4096;
	p->gid_tbl_len = 1;
	p->port_cap_flags = 0;
	p->max_msg_sz = 1u << 31;
	p->pkey_tbl_len = 1;
	p->lid = VS_LID;
	p->sm_lid = VS_LID;
	p->lmc = 0;
	p->max_vl_num = 1;
	p->sm_sl = 0;
	p->subnet_timeout = 18;
	p->active_width = 2;            /* 4X */
	p->active_speed = 32;           /* EDR */
	p->phys_state = 5;              /* LinkUp */
	p->link_layer = IBV_LINK_LAYER_INFINIBAND;
}

int vs_query_port_op(struct ibv_context *ctx, uint8_t port,
		     struct ibv_port_attr *attr, size_t len)
{
	struct ibv_port_attr p;

	if (port != 1)
		return EINVAL;
	port_attr(&p);
	memcpy(attr, &p, len < sizeof(p) ? len : sizeof(p));
	return 0;
}

/* The exported one has the old, shorter layout (programs built without
 * the inline wrapper); it has no length, so it fills the compat part. */
int vs_query_port_old(struct ibv_context *ctx, uint8_t port,
		      struct ibv_port_attr *attr) __asm__("ibv_query_port");
UBS_EXPORT int vs_query_port_old(struct ibv_context *ctx, uint8_t port,
				 struct ibv_port_attr *attr)
{
	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *, uint8_t,
			    struct ibv_port_attr *) =
			vs_real("ibv_query_port", "IBVERBS_1.1");
		return real ? real(ctx, port, attr) : EINVAL;
	}
	return vs_query_port_op(ctx, port, attr,
				offsetof(struct ibv_port_attr, flags));
}

static void gid0(union ibv_gid *g)
{
	uint64_t be = htobe64(vs_guid());

	memset(g, 0, sizeof(*g));
	g->raw[0] = 0xfe;
	g->raw[1] = 0x80;
	memcpy(&g->raw[8], &be, 8);
}

UBS_EXPORT int ibv_query_gid(struct ibv_context *ctx, uint8_t port, int index,
			     union ibv_gid *gid)
{
	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *, uint8_t, int,
			    union ibv_gid *) =
			vs_real("ibv_query_gid", "IBVERBS_1.1");
		return real ? real(ctx, port, index, gid) : -1;
	}
	if (port != 1 || index != 0) {
		errno = EINVAL;
		return -1;
	}
	gid0(gid);
	return 0;
}

UBS_EXPORT int ibv_query_gid_type(struct ibv_context *ctx, uint8_t port,
				  unsigned int index, int *type)
{
	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *, uint8_t, unsigned int,
			    int *) =
			vs_real("ibv_query_gid_type", "IBVERBS_PRIVATE_34");
		return real ? real(ctx, port, index, type) : -1;
	}
	if (port != 1 || index != 0) {
		errno = EINVAL;
		return -1;
	}
	*type = 0;              /* IB/RoCE v1 in libibverbs' sysfs enum */
	return 0;
}

UBS_EXPORT int _ibv_query_gid_ex(struct ibv_context *ctx, uint32_t port,
				 uint32_t index, struct ibv_gid_entry *e,
				 uint32_t flags, size_t size)
{
	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *, uint32_t, uint32_t,
			    struct ibv_gid_entry *, uint32_t, size_t) =
			vs_real("_ibv_query_gid_ex", "IBVERBS_1.11");
		return real ? real(ctx, port, index, e, flags, size) : EINVAL;
	}
	if (port != 1 || index != 0)
		return ENODATA;
	memset(e, 0, size);
	gid0(&e->gid);
	e->gid_index = 0;
	e->port_num = 1;
	e->gid_type = IBV_GID_TYPE_IB;
	e->ndev_ifindex = 0;
	return 0;
}

UBS_EXPORT ssize_t _ibv_query_gid_table(struct ibv_context *ctx,
					struct ibv_gid_entry *e,
					size_t max, uint32_t flags,
					size_t size)
{
	if (!vs_is_ours(ctx)) {
		ssize_t (*real)(struct ibv_context *, struct ibv_gid_entry *,
				size_t, uint32_t, size_t) =
			vs_real("_ibv_query_gid_table", "IBVERBS_1.11");
		return real ? real(ctx, e, max, flags, size) : -EINVAL;
	}
	if (max < 1)
		return -EINVAL;
	return _ibv_query_gid_ex(ctx, 1, 0, e, 0, size) ? -EINVAL : 1;
}

UBS_EXPORT int ibv_query_pkey(struct ibv_context *ctx, uint8_t port, int index,
			      __be16 *pkey)
{
	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *, uint8_t, int, __be16 *) =
			vs_real("ibv_query_pkey", "IBVERBS_1.1");
		return real ? real(ctx, port, index, pkey) : -1;
	}
	if (port != 1 || index != 0) {
		errno = EINVAL;
		return -1;
	}
	*pkey = htobe16(0xffff);
	return 0;
}

UBS_EXPORT int ibv_get_pkey_index(struct ibv_context *ctx, uint8_t port,
				  __be16 pkey)
{
	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *, uint8_t, __be16) =
			vs_real("ibv_get_pkey_index", "IBVERBS_1.5");
		return real ? real(ctx, port, pkey) : -1;
	}
	if (port == 1 && (be16toh(pkey) & 0x7fff) == 0x7fff)
		return 0;
	errno = EINVAL;
	return -1;
}

/* ibv_devinfo reads a few attributes from sysfs. */
UBS_EXPORT int ibv_read_sysfs_file(const char *dir, const char *file,
				   char *buf, size_t size)
{
	static const struct {
		const char *name, *value;
	} files[] = {
		{ "board_id", "UBS_UBV_0001" },
		{ "node_desc", "UBS virtual UB device" },
		{ "fw_ver", "1.0.0" },
		{ "hw_rev", "1" },
		{ "node_type", "1: CA" },
	};

	if (dir && !strcmp(dir, vs_dev.ibdev_path)) {
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
			if (!strcmp(file, files[i].name)) {
				int n = snprintf(buf, size, "%s",
						 files[i].value);
				return n < (int)size ? n : (int)size - 1;
			}
		errno = ENOENT;
		return -1;
	} else {
		int (*real)(const char *, const char *, char *, size_t) =
			vs_real("ibv_read_sysfs_file", "IBVERBS_1.0");
		if (!real) {
			errno = ENOENT;
			return -1;
		}
		return real(dir, file, buf, size);
	}
}

/* Async events (SRQ limit, last WQE of an SRQ's QP): one count of the
 * semaphore eventfd each, the event itself in the segment's ring.  The
 * fd blocks, or gives EAGAIN when the program made it non-blocking. */
UBS_EXPORT int ibv_get_async_event(struct ibv_context *ctx,
				   struct ibv_async_event *ev)
{
	uint64_t v;

	if (!vs_is_ours(ctx)) {
		int (*real)(struct ibv_context *, struct ibv_async_event *) =
			vs_real("ibv_get_async_event", "IBVERBS_1.1");
		return real ? real(ctx, ev) : -1;
	}
	for (;;) {
		ssize_t r = ubs_real.read(ctx->async_fd, &v, sizeof(v));

		if (r < 0 && errno == EINTR)
			continue;
		if (r != sizeof(v))
			return -1;
		if (vs_async_pop(vs_ctx_of(ctx), ev) == 0)
			return 0;
	}
}

/* Is ev about an object of the virtual device? */
static bool ev_ours(const struct ibv_async_event *ev)
{
	switch (ev->event_type) {
	case IBV_EVENT_CQ_ERR:
		return vs_is_ours(ev->element.cq->context);
	case IBV_EVENT_SRQ_ERR:
	case IBV_EVENT_SRQ_LIMIT_REACHED:
		return vs_is_ours(ev->element.srq->context);
	case IBV_EVENT_QP_FATAL:
	case IBV_EVENT_QP_REQ_ERR:
	case IBV_EVENT_QP_ACCESS_ERR:
	case IBV_EVENT_COMM_EST:
	case IBV_EVENT_SQ_DRAINED:
	case IBV_EVENT_PATH_MIG:
	case IBV_EVENT_PATH_MIG_ERR:
	case IBV_EVENT_QP_LAST_WQE_REACHED:
		return vs_is_ours(ev->element.qp->context);
	default:
		return false;   /* port and device events: never ours */
	}
}

UBS_EXPORT void ibv_ack_async_event(struct ibv_async_event *ev)
{
	void (*real)(struct ibv_async_event *);

	if (ev_ours(ev))
		return;         /* nothing waits on our acks */
	real = vs_real("ibv_ack_async_event", "IBVERBS_1.1");
	if (real)
		real(ev);
}

/* SPDX-License-Identifier: MIT */
/*
 * vshim.h - the verbs shim's shared-memory layout and private objects.
 *
 * Every opened device context owns one segment (memfd, VS_SEG_SIZE bytes,
 * sparse) registered with ubsd.  It holds a header, the MR table, and the
 * shared parts of the context's QPs, receive queues (QP or SRQ) and CQ
 * rings.  A peer that connects a QP to one of ours gets the segment from
 * ubsd and maps it: it reads our QP record and MR table, takes receive
 * WRs from our queues and writes completions into our CQ rings, as an
 * HCA would.  Everything a peer can write is checked before use.
 */
#ifndef UBS_VSHIM_H
#define UBS_VSHIM_H

#include <infiniband/verbs.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctl_proto.h"

#define VS_MAGIC       0x55425653u      /* "UBVS" */
#define VS_LAYOUT      1u
#define VS_SEG_SIZE    (256ull << 20)   /* sparse: pages used only */
#define VS_MAX_MR      4096u            /* MR table slots */
#define VS_MAX_SGE     16u
#define VS_MAX_INLINE  1024u
#define VS_MAX_QP_WR   16384u
#define VS_MAX_CQE     65536u
#define VS_LID         1u
#define VS_MTU_BYTES   4096u
#define VS_GRH_BYTES   40u
#define VS_ASYNC_RING  64u

/* A lock word in shared memory: 0 free, else the holder's pid. */
typedef int32_t vs_lock_t;

struct vs_shm_mr {
	uint64_t addr, len;
	uint32_t rkey;
	uint32_t access;                /* enum ibv_access_flags */
	uint32_t valid;
	/* Zero-copy: the MR lies in a shared mapping of a memfd sealed
	 * against shrinking; the owner's fd number of it + 1 (0: none), the
	 * file's inode and the file offset of addr.  An initiator maps the
	 * file (pidfd_getfd) and copies with memcpy. */
	uint32_t zc_fd1;
	uint64_t zc_ino, zc_off;
};

struct vs_shm_hdr {
	uint32_t magic, version;
	uint64_t size;
	uint32_t pid;
	uint32_t nmr;                   /* MR table slots */
	uint64_t mr_off;
	vs_lock_t atomic_lock;          /* serialises remote atomics */
	uint32_t dead;                  /* set by ubsd when the owner's
					 * session ends (CTL_VERBS_SEG_DEAD_OFF) */
	/* Async events for the owner (ibv_get_async_event), raised by it
	 * or by an initiator, which wakes the owner's async_fd. */
	int32_t async_fd;
	vs_lock_t async_lock;
	uint64_t async_head, async_tail;
	struct vs_async_ev {
		uint32_t type;          /* enum ibv_event_type */
		uint32_t reserved;
		uint64_t obj_off;       /* the QP's or SRQ's record */
	} async[VS_ASYNC_RING];
	uint64_t zc_ops;                /* requests this context did
					 * zero-copy, as initiator */
	uint64_t copy_ops;              /* ... and through the copy path */
};

_Static_assert(offsetof(struct vs_shm_hdr, dead) == CTL_VERBS_SEG_DEAD_OFF,
	       "ubsd marks a dead owner at this offset");
_Static_assert(sizeof(struct vs_shm_hdr) <= 4096,
	       "the MR table starts at 4096");

/* A receive queue (a QP's or an SRQ's): the owner posts at head, the
 * initiators consume at tail, both under lock. */
struct vs_rwqe {
	uint64_t wr_id;
	uint32_t num_sge;
	uint32_t reserved;
	struct {
		uint64_t addr;
		uint32_t length, lkey;
	} sge[VS_MAX_SGE];
};

struct vs_shm_rq {
	vs_lock_t lock;
	uint32_t size;                  /* power of two */
	uint64_t head, tail;
	uint32_t limit;                 /* SRQ limit (no event yet) */
	uint32_t reserved;
	struct vs_rwqe e[];
};

/* One completion, as struct ibv_wc. */
struct vs_cqe {
	uint64_t wr_id;
	uint32_t status, opcode, vendor_err, byte_len;
	uint32_t imm, qp_num, src_qp, wc_flags;
	uint16_t pkey_index, slid;
	uint8_t sl, dlid_path_bits;
	uint8_t reserved[2];
};

/* A SEND of at most VS_CQ_INL bytes travels inside the receive
 * completion's payload slot (parallel to the ring): the owner copies it
 * into its receive buffer when it polls the completion, so a small SEND
 * costs no system call.  dst are the receive WR's SGEs (checked by the
 * owner against its own MR table). */
#define VS_CQ_INL 256u
#define VS_CQ_DST 4u
struct vs_cq_inl {
	uint32_t len;                   /* payload bytes, 0: none */
	uint32_t ndst;
	struct {
		uint64_t addr;
		uint32_t length, lkey;
	} dst[VS_CQ_DST];
	uint8_t data[VS_CQ_INL];
};

/* A CQ ring: many producers under lock, the owner consumes at tail;
 * size entries e[], then size payload slots (struct vs_cq_inl). */
struct vs_shm_cq {
	vs_lock_t lock;
	uint32_t size;                  /* power of two */
	uint64_t head, tail;
	uint32_t armed;                 /* 1 next, 2 solicited only */
	uint32_t fired;                 /* an event is due on the channel */
	int32_t chan_fd;                /* owner's channel eventfd, -1 */
	uint32_t overrun;
	uint64_t chan_gen;              /* changes with chan_fd */
	struct vs_cqe e[];
};

enum { VS_QP_LIVE = 1, VS_QP_GONE = 2 };

/* A QP's published state. */
struct vs_shm_qp {
	uint32_t qpn, type;             /* enum ibv_qp_type */
	uint32_t state;                 /* enum ibv_qp_state */
	uint32_t dest_qpn;              /* RC/UC: the connected peer */
	uint32_t qkey;                  /* UD */
	uint32_t access;                /* qp_access_flags */
	uint32_t min_rnr_timer;
	uint32_t live;                  /* VS_QP_LIVE, VS_QP_GONE */
	uint64_t rq_off;                /* own receive queue, 0 if SRQ */
	uint64_t srq_off;               /* SRQ's queue, 0 if none */
	uint64_t recv_cq_off;
	uint32_t recv_cq_size;
	uint32_t reserved;
};

/* ---------------------------------------------------------- private */

struct vs_peer;

struct vs_ctx {
	struct verbs_context vctx;      /* vctx.context is the program's */
	int seg_fd;
	uint8_t *base;
	struct vs_shm_hdr *hdr;
	struct vs_shm_mr *mrt;
	uint64_t bump;
	struct vs_hole {                /* freed blocks, reused after a
					 * quarantine (peers may still
					 * hold the offset) */
		uint64_t off, bytes, freed_ns;
	} holes[256];
	unsigned nholes;
	uint64_t ctx_id;                /* ubsd's, 0 without a daemon */
	pthread_mutex_t lock;
	struct vs_mr *mrs[VS_MAX_MR];
	struct vs_qp *qps;              /* all QPs, for progress */
	pthread_rwlock_t qps_rw;        /* held to walk qps unlocked */
	struct vs_cq *cqs;
	struct vs_srq *srqs;
	struct vs_peer *peers;
	int npending;                   /* QPs with pending sends */
	pthread_mutex_t pt_lock;        /* the progress thread's */
	pthread_cond_t pt_cv;
	pthread_t pt;
	bool pt_started, pt_stop;
	int32_t pt_pid;                 /* the process that started it */
	uint32_t mr_gen;
};

struct vs_mr {
	struct ibv_mr mr;
	uint32_t slot;
	int zc_fd;                      /* our dup of the memfd, -1 */
};

struct vs_chan {
	struct ibv_comp_channel ch;
	uint64_t gen;
};

struct vs_cq {
	struct ibv_cq cq;
	struct vs_shm_cq *shm;
	uint64_t off;
	uint32_t size;                  /* trusted copy */
	struct vs_cq *next;
	pthread_mutex_t poll_lock;
};

struct vs_srq {
	struct ibv_srq srq;
	struct vs_srq *next;
	struct vs_shm_rq *rq;
	uint64_t off;
	uint32_t size, max_sge;
};

struct vs_ah {
	struct ibv_ah ah;
	struct ibv_ah_attr attr;
};

/* A send work request kept for later (RNR, peer not ready) or built
 * through the ibv_wr_* API. */
struct vs_swqe {
	struct ibv_send_wr wr;
	struct ibv_sge sge[VS_MAX_SGE];
	struct vs_ah *ah;
	uint32_t inl_len;
	uint8_t inl[VS_MAX_INLINE];
};

/* A mapped peer context segment.  lock guards the caches below (fds
 * fetched from the peer, zero-copy mappings) against the context's
 * threads. */
struct vs_peer {
	struct vs_peer *next;
	pthread_mutex_t lock;
	uint64_t ctx_id;
	pid_t pid;
	int pidfd;
	uint8_t *base;
	uint64_t size;
	struct {
		uint64_t cq_off, gen;
		int fd;
	} efd[16];
	unsigned nefd;
	bool gone;                      /* the owner process is gone */
	int async_fd;                   /* its async eventfd, -1 */
	struct vs_zc {                  /* its zero-copy MRs we mapped */
		uint32_t rkey;
		uint64_t ino, off, len;
		uint8_t *map;           /* mapping of [off & ~4095, ...) */
		size_t maplen;
		uint8_t *at;            /* where the MR's addr is */
	} zc[16];
	unsigned nzc;
};

/* A UD destination resolved through ubsd. */
struct vs_udest {
	uint32_t qpn;
	struct vs_peer *peer;
	uint64_t qp_off;
};

struct vs_qp {
	struct ibv_qp_ex qpx;           /* qpx.qp_base is the program's */
	struct vs_ctx *ctx;
	struct vs_qp *next;
	struct vs_shm_qp *shm;
	uint64_t shm_off;
	struct vs_shm_rq *rq;           /* own receive queue, or NULL */
	uint32_t rq_size, rq_sge;
	struct vs_srq *srq;
	struct ibv_qp_cap cap;
	int sq_sig_all;
	struct ibv_qp_attr attr;        /* as set by modify, for query */
	pthread_mutex_t lock;
	/* RC/UC: the connected peer. */
	struct vs_peer *peer;
	uint64_t peer_qp_off;
	/* UD: destinations. */
	struct vs_udest *udest;
	unsigned nudest, udest_cap;
	/* Sends waiting for the responder (FIFO). */
	struct vs_swqe *pend;
	uint32_t pend_size, pend_head, pend_tail;
	uint64_t pend_since_ns, pend_next_ns;
	uint32_t pend_tries;
	/* ibv_wr_* builder. */
	struct vs_swqe *build;
	uint32_t nbuild;
	int build_err;
};

#endif

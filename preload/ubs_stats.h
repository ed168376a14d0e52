/* SPDX-License-Identifier: MIT */
/*
 * ubs_stats.h - layout of the per-process stats page.
 *
 * Each process running under libubs_preload.so owns one page of counters.
 * When $UBS_RUN_DIR/stats exists and is writable the page is the file
 * $UBS_RUN_DIR/stats/<pid>, mapped MAP_SHARED, so a reader (ubsctl) can
 * mmap or read it while the process runs; otherwise it is private memory.
 *
 * This header is a plain layout description shared by the library and its
 * readers: types, constants and the counter name table only.
 *
 * Reader rules: check magic, then version; read at most ncounters entries
 * of counters[] (newer libraries may append counters without changing the
 * version); load each counter with a relaxed 64-bit atomic load.  A file is
 * published complete (created under a temporary name, then renamed), and
 * is left in place when the process exits: readers check that pid lives.
 */
#ifndef UBS_STATS_H
#define UBS_STATS_H

#include <stddef.h>
#include <stdint.h>

#define UBS_STATS_MAGIC		0x0054415453534255ULL	/* "UBSSTAT\0" in memory (LE) */
#define UBS_STATS_VERSION	1u			/* layout version */
#define UBS_STATS_SIZE		4096u			/* file and mapping size */
#define UBS_STATS_SERVICE_MAX	64u			/* service name, NUL included */

/*
 * The counters, in page order: X(ENUM_SUFFIX, "name").  Append only: an
 * index never changes meaning within one layout version.
 */
#define UBS_STATS_COUNTERS(X)						\
	X(SOCKET,	"socket")	/* socket() calls */		\
	X(BIND,		"bind")		/* bind() calls */		\
	X(LISTEN,	"listen")	/* listen() calls */		\
	X(CONNECT,	"connect")	/* connect() calls */		\
	X(ACCEPT,	"accept")	/* accept() calls */		\
	X(ACCEPT4,	"accept4")	/* accept4() calls */		\
	X(CLOSE,	"close")	/* close() calls */		\
	X(UB_CONNS,	"ub_conns")	/* connections decided UB */	\
	X(TCP_CONNS,	"tcp_conns")	/* candidates decided TCP */	\
	X(UB_BYTES_TX,	"ub_bytes_tx")	/* bytes sent on UB */		\
	X(UB_BYTES_RX,	"ub_bytes_rx")	/* bytes received on UB */	\
	X(FALLBACKS,	"fallbacks")	/* reserved: UB -> TCP demotions */ \
	X(TCP_NO_DAEMON, "tcp_no_daemon") /* client: ubsd unreachable */ \
	X(TCP_NO_CHANNEL, "tcp_no_channel") /* client: no publication matched */ \
	X(TCP_PEER_TCP,	"tcp_peer_tcp")	/* the other end chose TCP */	\
	X(TCP_PLAIN_PEER, "tcp_plain_peer") /* server: bytes or silence on TCP */ \
	X(UB_DOORBELLS,	"ub_doorbells")	/* eventfd writes to wake a peer */ \
	X(UB_SLEEPS,	"ub_sleeps")	/* real sleeps on a ring */	\
	X(UB_SPIN_HITS,	"ub_spin_hits")	/* waits ended while spinning */ \
	X(UB_BYPASS,	"ub_bypass")	/* bytes on the kernel socket of a UB conn */ \
	X(UB_TRIMS,	"ub_trims")	/* idle rings whose pages were released */ \
	X(MEM_POOL_ALLOCS, "mem_pool_allocs") /* allocations served by the pool */ \
	X(MEM_POOL_BYTES, "mem_pool_bytes") /* bytes of live pool blocks */ \
	X(MEM_POOL_LEASED, "mem_pool_leased") /* bytes of segments leased */ \
	X(MEM_FALLBACKS, "mem_fallbacks") /* pool allocations served ordinarily */ \
	X(EP_CHECKS,	"ep_checks")	/* UB registrations an epoll wait looked at */ \
	X(UB_BOARD,	"ub_board")	/* UB connections set up on the board */

#define UBS_STAT_ENUM_(name, str) UBS_STAT_##name,
enum ubs_stat_id {
	UBS_STATS_COUNTERS(UBS_STAT_ENUM_)
	UBS_STAT_NR
};
#undef UBS_STAT_ENUM_

#define UBS_STAT_NAME_(name, str) [UBS_STAT_##name] = str,
/* Counter names, indexed by enum ubs_stat_id. */
static const char *const ubs_stat_names[UBS_STAT_NR] __attribute__((unused)) = {
	UBS_STATS_COUNTERS(UBS_STAT_NAME_)
};
#undef UBS_STAT_NAME_

struct ubs_stats_page {
	uint64_t magic;				/* UBS_STATS_MAGIC */
	uint32_t version;			/* UBS_STATS_VERSION */
	uint32_t size;				/* UBS_STATS_SIZE */
	int32_t pid;				/* owning process */
	uint32_t ncounters;			/* valid entries of counters[] */
	char service[UBS_STATS_SERVICE_MAX];	/* NUL-terminated */
	uint32_t conns_off;			/* connection table: file offset, */
	uint32_t conns_max;			/* slots (0, 0: none) */
	uint32_t sites_off;			/* pool call-site table: offset, */
	uint32_t sites_max;			/* slots (0, 0: none) */
	uint64_t reserved[3];			/* zero; future header fields */
	uint64_t counters[UBS_STAT_NR];		/* indexed by enum ubs_stat_id */
};

_Static_assert(offsetof(struct ubs_stats_page, counters) == 128,
	       "stats page header is 128 bytes");
_Static_assert(sizeof(struct ubs_stats_page) <= UBS_STATS_SIZE,
	       "stats page fits in UBS_STATS_SIZE");

/*
 * The connection table, after the page in the same file (header fields
 * conns_off, conns_max; a file without them has none): what `ubsctl conns`
 * lists.  Slots [0, UBS_CONNS_LIVE) are the process's live UB connections
 * (a slot is freed at the connection's last close in this process);
 * slots [UBS_CONNS_LIVE, conns_max) are a ring of its latest decisions
 * for TCP, with the reason.  A writer makes seq odd, writes, makes it
 * even again: a reader copies a slot between two equal even reads of seq.
 * tx/rx grow without the seqlock (relaxed 64-bit adds).
 */
#define UBS_CONNS_MAX		1024u		/* slots in the table */
#define UBS_CONNS_LIVE		960u		/* of them for live connections */

enum ubs_conn_state {
	UBS_CONN_FREE = 0,
	UBS_CONN_UB = 1,			/* live, over UB */
	UBS_CONN_TCP = 2,			/* decided TCP (history) */
};

struct ubs_conn_slot {
	uint32_t seq;				/* seqlock, even when stable */
	uint8_t state;				/* enum ubs_conn_state */
	uint8_t side;				/* 0 accepted, 1 connected */
	uint16_t why;				/* TCP: enum ubs_stat_id reason */
	int32_t fd;				/* its fd at the decision */
	uint32_t reserved;
	uint64_t chan_id;			/* UB: the channel (same id at both
						 * ends: pairs them) */
	uint64_t since_ms;			/* CLOCK_REALTIME of the decision */
	uint64_t tx, rx;			/* bytes over UB */
	uint64_t ino;				/* TCP: the socket's inode (its fd
						 * may since be another file) */
	uint64_t pad;
};

_Static_assert(sizeof(struct ubs_conn_slot) == 64, "connection slot is 64 bytes");

/*
 * The pool's call sites, after the connection table (sites_off,
 * sites_max): for `ubsctl mem --sites PID`.  memhooks counts each
 * allocation it places in the pool under the address its caller returns
 * to (an open-addressing table: a slot's addr is claimed once by a CAS
 * from 0 and never changes; allocs and bytes grow by relaxed adds).
 * Slot 0 counts the allocations whose site found no free slot (addr 1).
 */
#define UBS_SITES_MAX		256u

struct ubs_site_slot {
	uint64_t addr;				/* return address, 0: free */
	uint64_t allocs;			/* pool allocations from it */
	uint64_t bytes;				/* their bytes (as asked) */
	uint64_t pad;
};

_Static_assert(sizeof(struct ubs_site_slot) == 32, "site slot is 32 bytes");

/* File size of a page with its connection and call-site tables. */
#define UBS_STATS_CONNS_SIZE (UBS_CONNS_MAX * sizeof(struct ubs_conn_slot))
#define UBS_STATS_FILE_SIZE \
	(UBS_STATS_SIZE + UBS_STATS_CONNS_SIZE + \
	 UBS_SITES_MAX * sizeof(struct ubs_site_slot))

#endif /* UBS_STATS_H */

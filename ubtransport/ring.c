/* SPDX-License-Identifier: MIT */
/*
 * ring.c - byte-stream and record rings in shared memory.
 *
 * head and tail count bytes ever produced / consumed (64-bit, never wrap in
 * practice); the slot of byte i is data[i & (size-1)].  One producer lock
 * and one consumer lock per ring make several threads or forked processes
 * on one end correct; uncontended, each costs one atomic operation.
 *
 * Everything read from the shared control block may have been written by a
 * hostile peer: every index is checked (used = head - tail <= size) and
 * every offset is masked, so corruption yields -EPROTO, never an
 * out-of-bounds access.  The geometry (data, size) is a private copy.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>

#include "ubt.h"
#include "ubt_int.h"

#define LOCK_WAITERS   0x80000000u      /* someone sleeps on the lock word */
#define LOCK_GIVEUP_NS (5ull * 1000000000ull)

static uint32_t self_pid;

static void refresh_pid(void)
{
	self_pid = (uint32_t)getpid();
}

__attribute__((constructor)) static void ring_init(void)
{
	refresh_pid();
	pthread_atfork(NULL, NULL, refresh_pid);
}

uint32_t ubt_self_pid(void)
{
	if (__builtin_expect(self_pid == 0, 0))
		refresh_pid();
	return self_pid;
}

static long futex(_Atomic uint32_t *w, int op, uint32_t val,
		  const struct timespec *ts)
{
	/* Shared (not PRIVATE): waiters live in different processes. */
	return syscall(SYS_futex, (uint32_t *)w, op, val, ts, NULL, 0);
}

/* Is the process that wrote owner into a lock word gone?  A zombie (dead,
 * not yet reaped: its parent may be the one waiting here) counts as gone. */
static int owner_dead(uint32_t owner)
{
	char st;
	int pp;

	owner &= ~LOCK_WAITERS;
	if (owner == 0 || owner == ubt_self_pid() || owner > INT_MAX)
		return 0;
	if (kill((pid_t)owner, 0) < 0)
		return errno == ESRCH;
	return ubt_proc_stat((int)owner, &st, &pp) == 0 &&
		(st == 'Z' || st == 'X');
}

int ubt_proc_stat(int pid, char *state, int *ppid)
{
	char path[32], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return n < 0 ? -errno : -EIO;
	buf[n] = '\0';
	/* pid (comm) state ppid ...: comm may hold spaces and parens. */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 1, " %c %d", state, ppid) != 2)
		return -EPROTO;
	return 0;
}

/*
 * Take a ring-end lock.  The word holds the owner's pid (so a holder killed
 * mid-operation can be detected and its lock taken over: it had not
 * published anything yet) and a waiters bit.  Returns 0, or -EDEADLK after
 * LOCK_GIVEUP_NS of a live owner never letting go (a stopped or hostile
 * process).
 */
static int ring_lock(_Atomic uint32_t *w)
{
	uint32_t me = ubt_self_pid(), v = 0;
	struct timespec ts = { 0, 20 * 1000 * 1000 };
	uint64_t t0 = 0;
	int spins = 0;

	if (atomic_compare_exchange_strong_explicit(w, &v, me,
						    memory_order_acquire,
						    memory_order_relaxed))
		return 0;
	for (;;) {
		v = atomic_load_explicit(w, memory_order_relaxed);
		if (v == 0) {
			/* Keep the waiters bit: others may still sleep. */
			if (atomic_compare_exchange_weak_explicit(
				    w, &v, me | LOCK_WAITERS,
				    memory_order_acquire, memory_order_relaxed))
				return 0;
			continue;
		}
		if (spins < 100) {
			spins++;
			ubt_cpu_relax();
			continue;
		}
		if (!(v & LOCK_WAITERS) &&
		    !atomic_compare_exchange_weak_explicit(
			    w, &v, v | LOCK_WAITERS, memory_order_relaxed,
			    memory_order_relaxed))
			continue;
		futex(w, FUTEX_WAIT, v | LOCK_WAITERS, &ts);
		if (atomic_load_explicit(w, memory_order_relaxed) !=
		    (v | LOCK_WAITERS))
			continue;
		if (owner_dead(v)) {
			uint32_t cur = v | LOCK_WAITERS;

			if (atomic_compare_exchange_strong_explicit(
				    w, &cur, me | LOCK_WAITERS,
				    memory_order_acquire, memory_order_relaxed))
				return 0;
			continue;
		}
		if (t0 == 0)
			t0 = ubt_now_ns();
		else if (ubt_now_ns() - t0 > LOCK_GIVEUP_NS)
			return -EDEADLK;
	}
}

/* One attempt at the lock: 0, or -EBUSY. */
static int ring_try_lock(_Atomic uint32_t *w)
{
	uint32_t v = 0;

	return atomic_compare_exchange_strong_explicit(
		w, &v, ubt_self_pid(), memory_order_acquire,
		memory_order_relaxed) ? 0 : -EBUSY;
}

static void ring_unlock(_Atomic uint32_t *w)
{
	uint32_t v = atomic_exchange_explicit(w, 0, memory_order_release);

	if (v & LOCK_WAITERS)
		futex(w, FUTEX_WAKE, 1, NULL);
}

void ubt_ring_reclaim_locks(struct ubt_ring *r)
{
	_Atomic uint32_t *w[2] = { &r->shm->plock, &r->shm->clock };

	for (int i = 0; i < 2; i++) {
		uint32_t v = atomic_load_explicit(w[i], memory_order_relaxed);

		if (v && (v & ~LOCK_WAITERS) == ubt_self_pid() &&
		    atomic_compare_exchange_strong_explicit(
			    w[i], &v, 0, memory_order_release,
			    memory_order_relaxed) && (v & LOCK_WAITERS))
			futex(w[i], FUTEX_WAKE, INT_MAX, NULL);
	}
}

int ubt_ring_format(void *mem, uint64_t size)
{
	if (size < 64 || (size & (size - 1)) || size > (1ull << 40))
		return -EINVAL;
	memset(mem, 0, sizeof(struct ubt_ring_shm));
	return 0;
}

void ubt_ring_bind(struct ubt_ring *r, void *mem, uint64_t size, uint32_t kind,
		   uint32_t entry_size, int data_efd, int space_efd)
{
	memset(r, 0, sizeof(*r));
	r->shm = mem;
	r->data = (uint8_t *)mem + UBT_RING_CTL_SIZE;
	r->size = size;
	r->kind = kind;
	r->entry_size = entry_size;
	r->data_efd = data_efd;
	r->space_efd = space_efd;
	r->spin_ns = -1;
	r->prod_side = -1;
}

/* Bytes queued, or -EPROTO when the peer left the indices inconsistent.
 * The caller holds the producer or the consumer lock. */
static int64_t ring_used(const struct ubt_ring *r, uint64_t *head,
			 uint64_t *tail)
{
	uint64_t t = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
	uint64_t h = atomic_load_explicit(&r->shm->head, memory_order_acquire);

	if (h - t > r->size)
		return -EPROTO;
	if (head)
		*head = h;
	if (tail)
		*tail = t;
	return (int64_t)(h - t);
}

/*
 * ring_used() is exact for a caller holding either lock (its own index
 * cannot move).  Without a lock, a stale tail against a fresh head can
 * look like an overfull ring: read tail, head, tail again, and accept the
 * pair only when tail did not move (indices only grow, so no ABA).
 */
static int64_t ring_used_unlocked(const struct ubt_ring *r)
{
	uint64_t t1, t2, h;
	int tries = 64;

	do {
		t1 = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
		h = atomic_load_explicit(&r->shm->head, memory_order_acquire);
		t2 = atomic_load_explicit(&r->shm->tail, memory_order_acquire);
	} while (t1 != t2 && --tries);
	if (h - t2 > r->size)
		return -EPROTO;
	return (int64_t)(h - t2);
}

int64_t ubt_ring_readable(const struct ubt_ring *r)
{
	return ring_used_unlocked(r);
}

int64_t ubt_ring_writable(const struct ubt_ring *r)
{
	int64_t u = ring_used_unlocked(r);

	return u < 0 ? u : (int64_t)r->size - u;
}

/* Copy len bytes into the ring at position pos, wrapping. */
static void put_bytes(struct ubt_ring *r, uint64_t pos, const void *src,
		      size_t len)
{
	uint64_t off = pos & (r->size - 1);
	size_t first = len < r->size - off ? len : (size_t)(r->size - off);

	memcpy(r->data + off, src, first);
	if (len > first)
		memcpy(r->data, (const uint8_t *)src + first, len - first);
}

static void get_bytes(const struct ubt_ring *r, uint64_t pos, void *dst,
		      size_t len)
{
	uint64_t off = pos & (r->size - 1);
	size_t first = len < r->size - off ? len : (size_t)(r->size - off);

	memcpy(dst, r->data + off, first);
	if (len > first)
		memcpy((uint8_t *)dst + first, r->data, len - first);
}

static size_t iov_total(const struct iovec *iov, int cnt)
{
	size_t t = 0;
	int i;

	for (i = 0; i < cnt; i++) {
		if (iov[i].iov_len > SSIZE_MAX - t)
			return SSIZE_MAX;
		t += iov[i].iov_len;
	}
	return t;
}

ssize_t ubt_stream_writev(struct ubt_ring *r, const struct iovec *iov, int cnt)
{
	size_t total = iov_total(iov, cnt), n, done = 0;
	uint64_t h;
	int64_t used;
	int i, err;

	if (r->kind != UBT_RING_STREAM)
		return -EINVAL;
	if (atomic_load_explicit(&r->shm->cclosed, memory_order_relaxed))
		return -EPIPE;
	if (total == 0)
		return 0;
	err = ring_lock(&r->shm->plock);
	if (err)
		return err;
	used = ring_used(r, &h, NULL);
	if (used < 0) {
		ring_unlock(&r->shm->plock);
		return used;
	}
	n = r->size - (uint64_t)used;
	if (n > total)
		n = total;
	for (i = 0; i < cnt && done < n; i++) {
		size_t k = iov[i].iov_len < n - done ? iov[i].iov_len : n - done;

		put_bytes(r, h + done, iov[i].iov_base, k);
		done += k;
	}
	if (n)
		atomic_store_explicit(&r->shm->head, h + n,
				      memory_order_release);
	ring_unlock(&r->shm->plock);
	/* Ring even when full: if a co-producer died between publishing and
	 * ringing, the consumer may otherwise sleep on a full ring. */
	ubt_db_notify(r, &r->shm->data_db, r->data_efd);
	return n ? (ssize_t)n : -EAGAIN;
}

ssize_t ubt_stream_write(struct ubt_ring *r, const void *buf, size_t len)
{
	struct iovec iov = { (void *)buf, len };

	return ubt_stream_writev(r, &iov, 1);
}

ssize_t ubt_stream_readv(struct ubt_ring *r, const struct iovec *iov, int cnt,
			 int flags)
{
	size_t total = iov_total(iov, cnt), n, done = 0;
	uint64_t t;
	int64_t used;
	int i, err;

	if (r->kind != UBT_RING_STREAM)
		return -EINVAL;
	err = ring_lock(&r->shm->clock);
	if (err)
		return err;
	used = ring_used(r, NULL, &t);
	if (used <= 0) {
		ring_unlock(&r->shm->clock);
		if (used < 0)
			return used;
		/* pclosed is set after the last byte: recheck emptiness. */
		if (atomic_load_explicit(&r->shm->pclosed,
					 memory_order_acquire) &&
		    ring_used(r, NULL, NULL) == 0)
			return 0;
		return total == 0 ? 0 : -EAGAIN;
	}
	n = (uint64_t)used < total ? (size_t)used : total;
	for (i = 0; i < cnt && done < n; i++) {
		size_t k = iov[i].iov_len < n - done ? iov[i].iov_len : n - done;

		get_bytes(r, t + done, iov[i].iov_base, k);
		done += k;
	}
	if (!(flags & UBT_PEEK) && n)
		atomic_store_explicit(&r->shm->tail, t + n,
				      memory_order_release);
	ring_unlock(&r->shm->clock);
	if (!(flags & UBT_PEEK) && n)
		ubt_db_notify(r, &r->shm->space_db, r->space_efd);
	return (ssize_t)n;
}

ssize_t ubt_stream_read(struct ubt_ring *r, void *buf, size_t len, int flags)
{
	struct iovec iov = { buf, len };

	return ubt_stream_readv(r, &iov, 1, flags);
}

int ubt_msg_sendv(struct ubt_ring *r, uint32_t tag, const struct iovec *iov,
		  int cnt)
{
	size_t len = iov_total(iov, cnt), done = 0;
	uint32_t hdr[2];
	uint64_t h;
	int64_t used;
	int i, err;

	if (r->kind != UBT_RING_MSG)
		return -EINVAL;
	if (len > UINT32_MAX || ubt_rec_size(len) > r->size ||
	    (r->entry_size && len != r->entry_size))
		return -EMSGSIZE;
	if (atomic_load_explicit(&r->shm->cclosed, memory_order_relaxed))
		return -EPIPE;
	err = ring_lock(&r->shm->plock);
	if (err)
		return err;
	used = ring_used(r, &h, NULL);
	if (used < 0 || (h & 7)) {
		ring_unlock(&r->shm->plock);
		return -EPROTO;
	}
	if (r->size - (uint64_t)used < ubt_rec_size(len)) {
		ring_unlock(&r->shm->plock);
		ubt_db_notify(r, &r->shm->data_db, r->data_efd); /* as in writev */
		return -EAGAIN;
	}
	hdr[0] = (uint32_t)len;
	hdr[1] = tag;
	put_bytes(r, h, hdr, sizeof(hdr));
	for (i = 0; i < cnt; i++) {
		put_bytes(r, h + UBT_REC_HDR + done, iov[i].iov_base,
			  iov[i].iov_len);
		done += iov[i].iov_len;
	}
	atomic_store_explicit(&r->shm->head, h + ubt_rec_size(len),
			      memory_order_release);
	ring_unlock(&r->shm->plock);
	ubt_db_notify(r, &r->shm->data_db, r->data_efd);
	return 0;
}

int ubt_msg_send(struct ubt_ring *r, uint32_t tag, const void *buf,
		 size_t len)
{
	struct iovec iov = { (void *)buf, len };

	return ubt_msg_sendv(r, tag, &iov, 1);
}

/* Validate the record at the tail; returns its payload length. */
static ssize_t rec_at_tail(const struct ubt_ring *r, uint64_t *tail,
			   uint32_t *tag)
{
	uint32_t hdr[2];
	uint64_t t;
	int64_t used = ring_used(r, NULL, &t);

	if (used < 0 || (t & 7) || (used & 7))
		return -EPROTO;
	if (used == 0) {
		if (atomic_load_explicit(&r->shm->pclosed,
					 memory_order_acquire) &&
		    ring_used(r, NULL, NULL) == 0)
			return -EPIPE;
		return -EAGAIN;
	}
	get_bytes(r, t, hdr, sizeof(hdr));
	if (ubt_rec_size(hdr[0]) > (uint64_t)used ||
	    (r->entry_size && hdr[0] != r->entry_size))
		return -EPROTO;
	if (tail)
		*tail = t;
	if (tag)
		*tag = hdr[1];
	return hdr[0];
}

ssize_t ubt_msg_peek(const struct ubt_ring *r, uint32_t *tag)
{
	ssize_t len;
	int err;

	if (r->kind != UBT_RING_MSG)
		return -EINVAL;
	/* Under the consumer lock: another consumer may be taking it. */
	err = ring_lock(&r->shm->clock);
	if (err)
		return err;
	len = rec_at_tail(r, NULL, tag);
	ring_unlock(&r->shm->clock);
	return len;
}

ssize_t ubt_msg_recv(struct ubt_ring *r, uint32_t *tag, void *buf, size_t cap)
{
	uint64_t t;
	ssize_t len;
	int err;

	if (r->kind != UBT_RING_MSG)
		return -EINVAL;
	err = ring_lock(&r->shm->clock);
	if (err)
		return err;
	len = rec_at_tail(r, &t, tag);
	if (len < 0 || (size_t)len > cap) {
		ring_unlock(&r->shm->clock);
		return len < 0 ? len : -ENOBUFS;
	}
	get_bytes(r, t + UBT_REC_HDR, buf, (size_t)len);
	atomic_store_explicit(&r->shm->tail, t + ubt_rec_size((uint64_t)len),
			      memory_order_release);
	ring_unlock(&r->shm->clock);
	ubt_db_notify(r, &r->shm->space_db, r->space_efd);
	return len;
}

void ubt_ring_close_producer(struct ubt_ring *r)
{
	atomic_store_explicit(&r->shm->pclosed, 1, memory_order_release);
	ubt_db_notify(r, &r->shm->data_db, r->data_efd);
}

void ubt_ring_close_consumer(struct ubt_ring *r)
{
	atomic_store_explicit(&r->shm->cclosed, 1, memory_order_release);
	ubt_db_notify(r, &r->shm->space_db, r->space_efd);
}

/*
 * Give an empty ring's data pages back to the system (a shared memfd
 * mapping: MADV_REMOVE frees the pages; they come back zeroed on the next
 * touch).  Both ends' locks are held, so no byte can land in a page as it
 * goes.  Returns bytes released, 0 if the ring is not empty or the locks
 * are busy, or -errno.
 */
int64_t ubt_ring_trim(struct ubt_ring *r)
{
	uintptr_t lo, hi, pg = 4096;
	int64_t used, ret = 0;

	if (ring_try_lock(&r->shm->plock))
		return 0;
	if (ring_try_lock(&r->shm->clock)) {
		ring_unlock(&r->shm->plock);
		return 0;
	}
	used = ring_used(r, NULL, NULL);
	if (used == 0) {
		lo = ((uintptr_t)r->data + pg - 1) & ~(pg - 1);
		hi = ((uintptr_t)r->data + r->size) & ~(pg - 1);
		if (hi > lo) {
			if (madvise((void *)lo, hi - lo, MADV_REMOVE) == 0)
				ret = (int64_t)(hi - lo);
			else
				ret = -errno;
		}
	} else if (used < 0) {
		ret = used;
	}
	ring_unlock(&r->shm->clock);
	ring_unlock(&r->shm->plock);
	return ret;
}

/* SPDX-License-Identifier: MIT */
/*
 * seg.c - memfd segments: create, seal, map, validate, pass as fds.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "ubt.h"
#include "ubt_int.h"

#define REQUIRED_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

/*
 * A host-unique segment id (0 is never used): 64 random bits drawn once
 * per process (again in a fork child), then a counter through an odd
 * multiplier, so that a segment costs no getrandom of its own.
 */
static uint64_t seg_seed, seg_count;

static void seg_fork_child(void)
{
	seg_seed = 0;
}

__attribute__((constructor)) static void seg_init(void)
{
	pthread_atfork(NULL, NULL, seg_fork_child);
}

static uint64_t new_seg_id(void)
{
	uint64_t seed = __atomic_load_n(&seg_seed, __ATOMIC_RELAXED), id;

	if (seed == 0) {
		if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
			seed = ((uint64_t)getpid() << 32) ^
			       (uint64_t)ubt_now_ns();
		seed |= 1;
		__atomic_store_n(&seg_seed, seed, __ATOMIC_RELAXED);
	}
	do
		id = seed ^ (__atomic_add_fetch(&seg_count, 1,
						__ATOMIC_RELAXED) *
			     0x9e3779b97f4a7c15ull);
	while (id == 0);
	return id;
}

int ubt_fsize_ok(uint64_t size)
{
	struct rlimit rl;

	return getrlimit(RLIMIT_FSIZE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
		rl.rlim_cur >= size;
}

int ubt_seg_create(struct ubt_seg *s, size_t size, uint16_t kind,
		   const char *name)
{
	long pg = sysconf(_SC_PAGESIZE);
	struct ubt_seg_hdr *h;
	void *base;
	int fd, err;

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	if (size < UBT_SEG_HDR_SIZE || size > ((size_t)1 << 40))
		return -EINVAL;
	size = (size + (size_t)pg - 1) & ~((size_t)pg - 1);
	if (!ubt_fsize_ok(size))
		return -EFBIG;  /* ftruncate would bring SIGXFSZ */

	fd = memfd_create(name ? name : "ubs-seg",
			  MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	/* The policy page gets F_SEAL_SEAL only after F_SEAL_FUTURE_WRITE. */
	if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)size) < 0 ||
	    fcntl(fd, F_ADD_SEALS, REQUIRED_SEALS |
		  (kind == UBT_SEG_POLICY ? 0 : F_SEAL_SEAL)) < 0)
		goto fail;
	base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		goto fail;
	/* The policy page: only this (existing) mapping may write.  A passed
	 * memfd is otherwise writable by whoever receives it. */
	if (kind == UBT_SEG_POLICY &&
	    fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0) {
		munmap(base, size);
		goto fail;
	}

	h = base;
	h->magic = UBT_MAGIC;
	h->version = UBT_LAYOUT_VER;
	h->kind = kind;
	h->size = size;
	h->id = new_seg_id();
	h->hdr_size = UBT_SEG_HDR_SIZE;
	h->creator_pid = ubt_self_pid();

	s->fd = fd;
	s->base = base;
	s->size = size;
	s->id = h->id;
	s->kind = kind;
	return 0;
fail:
	err = -errno;
	close(fd);
	return err;
}

int ubt_seg_map(struct ubt_seg *s, int fd, uint16_t kind)
{
	struct ubt_seg_hdr h;
	struct stat st;
	void *base;
	int seals;

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	/* An unsealed segment could be shrunk under us: SIGBUS on access.
	 * Seals first: once sealed, the size read next cannot change. */
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		return errno == EINVAL ? -EPROTO : -errno;  /* not a memfd */
	if ((seals & REQUIRED_SEALS) != REQUIRED_SEALS ||
	    (kind == UBT_SEG_POLICY && !(seals & F_SEAL_FUTURE_WRITE)))
		return -EPERM;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)UBT_SEG_HDR_SIZE)
		return -EPROTO;
	base = mmap(NULL, (size_t)st.st_size, kind == UBT_SEG_POLICY ?
		    PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		return -errno;

	/* One private copy of the header; never re-read afterwards. */
	memcpy(&h, base, sizeof(h));
	if (h.magic != UBT_MAGIC || h.hdr_size != UBT_SEG_HDR_SIZE ||
	    h.size != (uint64_t)st.st_size || h.kind != kind || h.id == 0) {
		munmap(base, (size_t)st.st_size);
		return h.magic == UBT_MAGIC && h.version != UBT_LAYOUT_VER ?
			-EPROTONOSUPPORT : -EPROTO;
	}
	if (h.version != UBT_LAYOUT_VER) {
		munmap(base, (size_t)st.st_size);
		return -EPROTONOSUPPORT;
	}
	s->fd = fd;
	s->base = base;
	s->size = (size_t)st.st_size;
	s->id = h.id;
	s->kind = kind;
	return 0;
}

void ubt_seg_unmap(struct ubt_seg *s)
{
	if (s->borrowed)        /* a board's slot: the board's mapping */
		s->base = NULL;
	if (s->base)
		munmap(s->base, s->size);
	if (s->fd >= 0)
		close(s->fd);
	s->base = NULL;
	s->fd = -1;
}

void *ubt_seg_ptr(const struct ubt_seg *s, uint64_t off, uint64_t len)
{
	if (!s->base || off < UBT_SEG_HDR_SIZE || off > s->size ||
	    len > s->size - off)
		return NULL;
	return s->base + off;
}

int ubt_send_fds(int sock, const int *fds, int nfds, const void *data,
		 size_t len)
{
	char cbuf[CMSG_SPACE(sizeof(int) * UBT_MAX_FDS)];
	uint8_t dummy = 0;
	struct iovec iov = {
		.iov_base = len ? (void *)data : &dummy,
		.iov_len = len ? len : 1,
	};
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;
	ssize_t n;

	if (nfds < 0 || nfds > UBT_MAX_FDS)
		return -EINVAL;
	if (nfds > 0) {
		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return len ? (int)n : 0;
}

int ubt_recv_fds(int sock, int *fds, int *nfds, void *data, size_t len)
{
	return ubt_recv_fds_flags(sock, fds, nfds, data, len, 0);
}

int ubt_recv_fds_flags(int sock, int *fds, int *nfds, void *data, size_t len,
		       int flags)
{
	char cbuf[CMSG_SPACE(sizeof(int) * UBT_MAX_FDS)];
	uint8_t dummy;
	struct iovec iov = {
		.iov_base = len ? data : &dummy,
		.iov_len = len ? len : 1,
	};
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = cbuf, .msg_controllen = sizeof(cbuf),
	};
	struct cmsghdr *cm;
	int want = *nfds, got = 0;
	ssize_t n;

	*nfds = 0;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		size_t i, k;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
			if (got < want)
				fds[got++] = fd;
			else
				close(fd);
		}
	}
	*nfds = got;
	if (mh.msg_flags & MSG_CTRUNC) {
		while (got > 0)
			close(fds[--got]);
		*nfds = 0;
		return -EPROTO;
	}
	if (n == 0) {
		while (got > 0)
			close(fds[--got]);
		*nfds = 0;
		return -EPIPE;
	}
	return len ? (int)n : 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * fds.c - the library's own descriptors (control socket, eventfds, inner
 * epoll sets, kept sockets): placed high, out of the range programs use,
 * close-on-exec, and protected: a program's close(), close_range() or
 * closefrom() passes over them (close of one says EBADF, as for a number
 * the program never opened), so a program that closes "every fd" at
 * start or before exec does not break the library.
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "preload.h"
#include "ctl.h"

#define OWN_CHUNK_BITS  (1u << 16)      /* fds per bitmap chunk */
#define OWN_CHUNKS      16              /* fds up to 1M */

static uint64_t *own[OWN_CHUNKS];

static uint64_t *own_word(int fd, bool make)
{
	unsigned c = (unsigned)fd / OWN_CHUNK_BITS;
	uint64_t *chunk;

	if (fd < 0 || c >= OWN_CHUNKS)
		return NULL;
	chunk = __atomic_load_n(&own[c], __ATOMIC_ACQUIRE);
	if (!chunk && make) {
		uint64_t *n = mmap(NULL, OWN_CHUNK_BITS / 8,
				   PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (n == MAP_FAILED)
			return NULL;
		if (!__atomic_compare_exchange_n(&own[c], &chunk, n, false,
						 __ATOMIC_ACQ_REL,
						 __ATOMIC_ACQUIRE))
			munmap(n, OWN_CHUNK_BITS / 8);  /* another won */
		else
			chunk = n;
	}
	return chunk ? &chunk[((unsigned)fd % OWN_CHUNK_BITS) / 64] : NULL;
}

bool ubs_fd_owned(int fd)
{
	uint64_t *w = own_word(fd, false);

	return w && (__atomic_load_n(w, __ATOMIC_RELAXED) >> (fd % 64) & 1);
}

static void own_set(int fd, bool on)
{
	uint64_t *w = own_word(fd, on);
	uint64_t bit = 1ull << (fd % 64);

	if (!w)
		return;
	if (on)
		__atomic_fetch_or(w, bit, __ATOMIC_RELAXED);
	else
		__atomic_fetch_and(w, ~bit, __ATOMIC_RELAXED);
}

void ubs_fd_forget(int fd)
{
	own_set(fd, false);
}

int ubs_fd_release(int fd)
{
	own_set(fd, false);
	return ubs_real.close(fd);
}

int ubs_fd_next_owned(int from, int to)
{
	const int top = (int)(OWN_CHUNKS * OWN_CHUNK_BITS) - 1;

	if (to > top)
		to = top;               /* no mark lies above */
	for (int fd = from < 0 ? 0 : from; fd <= to; ) {
		uint64_t *w = own_word(fd, false);
		uint64_t v;

		if (!w) {               /* a whole chunk with none */
			fd = (fd / (int)OWN_CHUNK_BITS + 1) * (int)OWN_CHUNK_BITS;
			continue;
		}
		v = __atomic_load_n(w, __ATOMIC_RELAXED) >> (fd % 64);
		if (v)
			return fd + __builtin_ctzll(v) <= to ?
				fd + __builtin_ctzll(v) : -1;
		fd = (fd / 64 + 1) * 64;
	}
	return -1;
}

/* Lowest fd number for the library's own fds: room below the limit, out
 * of the range programs fill.  Computed once (a program that raises its
 * limit later only leaves more room above). */
static int fd_floor(void)
{
	static int floor_cached;
	struct rlimit rl;
	int floor = 900;

	if (floor_cached)
		return floor_cached;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		if (rl.rlim_cur > 1024)
			floor = rl.rlim_cur > (1u << 20) ? (1 << 20) - 256 :
				(int)rl.rlim_cur - 256;
		else if (rl.rlim_cur > 128)
			floor = (int)rl.rlim_cur - 64;
		else
			floor = 3;
	}
	floor_cached = floor;
	return floor;
}

int ubs_fd_high(int fd)
{
	int nfd;

	if (fd < 0)
		return fd;
	if (fd >= fd_floor() && ubs_fd_owned(fd))
		return fd;              /* already ours, up there */
	nfd = ubs_real.fcntl(fd, F_DUPFD_CLOEXEC, fd_floor());
	if (nfd < 0) {
		own_set(fd, true);      /* no room up there: keep it low */
		return fd;
	}
	own_set(fd, false);
	ubs_real.close(fd);
	own_set(nfd, true);
	return nfd;
}


void ubs_fd_adopt(int fd)
{
	int fl = ubs_real.fcntl(fd, F_GETFD);

	if (fl >= 0)
		ubs_real.fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
	own_set(fd, true);
}

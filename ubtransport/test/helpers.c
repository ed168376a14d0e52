/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "helpers.h"

/* In a new child: die with the parent, so a test killed on timeout
 * leaves no process behind. */
static void child_setup(pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(125);
}

pid_t th_fork(int (*fn)(void *), void *arg)
{
	pid_t pid, parent = getpid();

	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		child_setup(parent);
		_exit(fn(arg));
	}
	return pid;
}

int th_wait(pid_t pid, int timeout_ms)
{
	int fd = ubt_pidfd(pid), st;
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (fd >= 0) {
		if (poll(&p, 1, timeout_ms) == 0) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			close(fd);
			return -1;
		}
		close(fd);
	}
	if (waitpid(pid, &st, 0) < 0)
		return -1;
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return WEXITSTATUS(st);
}

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint8_t pat(uint64_t seed, uint64_t pos)
{
	return (uint8_t)(mix(seed ^ (pos >> 3)) >> ((pos & 7) * 8));
}

void th_fill(uint64_t seed, uint64_t pos, uint8_t *buf, size_t len)
{
	size_t i = 0;

	for (; i < len && ((pos + i) & 7); i++)
		buf[i] = pat(seed, pos + i);
	for (; i + 8 <= len; i += 8) {
		uint64_t w = mix(seed ^ ((pos + i) >> 3));

		memcpy(buf + i, &w, 8);
	}
	for (; i < len; i++)
		buf[i] = pat(seed, pos + i);
}

size_t th_verify(uint64_t seed, uint64_t pos, const uint8_t *buf, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (buf[i] != pat(seed, pos + i))
			return i + 1;
	return 0;
}

size_t th_logsize(uint64_t *s, size_t max)
{
	unsigned bits = 0, b;
	size_t m;

	while (((size_t)1 << (bits + 1)) <= max)
		bits++;
	b = (unsigned)(th_rand(s) % (bits + 1));
	m = (size_t)1 << b;
	m = m + th_rand(s) % m;         /* [2^b, 2^(b+1)) */
	return m > max ? max : m;
}

uint64_t th_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

pid_t th_chan_pair(struct ubt_chan *c, const struct ubt_ring_desc *spec,
		   uint32_t nrings, int (*fn)(struct ubt_chan *c, void *arg),
		   void *arg)
{
	int sv[2], fds[2], n = 1, err;
	pid_t pid, parent = getpid();

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	if (ubt_chan_create(c, spec, nrings) < 0)
		return -1;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		struct ubt_chan ch;

		child_setup(parent);
		close(sv[0]);
		/* Drop what fork gave us: attach only through the fds. */
		ubt_chan_close(c);
		n = 2;
		err = ubt_recv_fds(sv[1], fds, &n, NULL, 0);
		CHECK(err == 0 && n == 2);
		err = ubt_chan_attach(&ch, fds[0], fds[1]);
		CHECK(err == 0);
		CHECK(ubt_send_fds(sv[1], &ch.efd[1], 1, NULL, 0) == 0);
		close(sv[1]);
		_exit(fn(&ch, arg));
	}
	close(sv[1]);
	fds[0] = c->seg.fd;
	fds[1] = c->efd[0];
	if (ubt_send_fds(sv[0], fds, 2, NULL, 0) < 0 ||
	    ubt_recv_fds(sv[0], fds, &n, NULL, 0) < 0 || n != 1) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		close(sv[0]);
		return -1;
	}
	ubt_chan_set_peer_efd(c, fds[0]);
	close(sv[0]);
	return pid;
}

struct ubt_ring *th_local_ring(uint32_t kind, uint64_t size,
			       uint32_t entry_size)
{
	struct ubt_ring *r = calloc(1, sizeof(*r));
	size_t bytes = (UBT_RING_CTL_SIZE + size + 4095) & ~(size_t)4095;
	void *mem = aligned_alloc(4096, bytes);

	if (!r || !mem || ubt_ring_format(mem, size) < 0)
		abort();
	ubt_ring_bind(r, mem, size, kind, entry_size, -1, -1);
	return r;
}

void *th_shared(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		abort();
	return p;
}

int th_watch_parent(void)
{
	int fd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	fd = ubt_pidfd(getppid());
	CHECK(fd >= 0);
	return fd;
}

char th_task_state(pid_t pid, pid_t tid)
{
	char path[96], buf[512], *q;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", (int)pid,
		 (int)tid);
	f = fopen(path, "r");
	if (!f)
		return '?';
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	q = strrchr(buf, ')');
	return q && q[1] == ' ' ? q[2] : '?';
}

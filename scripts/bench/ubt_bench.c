/* SPDX-License-Identifier: MIT */
/*
 * ubt_bench.c - transport micro-benchmark: ubt rings against AF_UNIX and
 * TCP loopback, two processes on two CPUs.
 *
 *   ubt-bench pingpong VARIANT MSGSIZE SECONDS
 *   ubt-bench stream   VARIANT MSGSIZE SECONDS
 *
 * VARIANT: ubt-spin (50 us spin budget), ubt-sleep (no spin: poll on every
 * wait), unix (AF_UNIX socketpair), tcp (127.0.0.1, TCP_NODELAY).
 *
 * The parent (CPU 0) drives and measures; the child (CPU 1) echoes
 * (pingpong) or sends (stream).  One CSV line goes to stdout:
 *
 *   variant,mode,size,value,unit,p99,wall_ms,run_ms,cpu_ms_parent,
 *   cpu_ms_child,vcsw_parent,vcsw_child,iters
 *
 * pingpong: value = median round trip (ns), p99 in ns, iters = round
 * trips; stream: value = GB/s (1e9 B/s) counted at the receiver, p99 is
 * "-", iters = bytes.  wall_ms is the measured window; run_ms runs from
 * fork to reaping the child, and the CPU times and voluntary context
 * switches of both processes cover that same whole run (setup, warm-up,
 * measurement, teardown).  Round trips are timed one by one with
 * CLOCK_MONOTONIC, so each sample includes one clock read (~20-25 ns).  Every run is
 * bounded by alarm(); the child dies with its parent (PR_SET_PDEATHSIG)
 * and is killed and reaped on any error.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ubt.h"

#define SPIN_NS          50000          /* ubt-spin budget per wait */
#define WAIT_SLICE_MS    200            /* ubt wait timeout; deadline rechecked */
#define RING_PINGPONG    (64u << 10)
#define RING_STREAM      (4u << 20)
#define SLACK_S          15             /* alarm() beyond the run's length */
#define REAP_MS          5000           /* how long the child may take to exit */

/* Latency histogram: exact below 64 ns, then 64 linear buckets per power
 * of two (resolution < 1.6 %), up to 2^40 ns. */
#define H_SUB            64
#define H_MAXEXP         40
#define H_BUCKETS        ((H_MAXEXP - 5) * H_SUB)

enum variant { V_UBT_SPIN, V_UBT_SLEEP, V_UNIX, V_TCP };
enum mode { M_PINGPONG, M_STREAM };

static const char *const variant_name[] = {
	[V_UBT_SPIN] = "ubt-spin", [V_UBT_SLEEP] = "ubt-sleep",
	[V_UNIX] = "unix", [V_TCP] = "tcp",
};

/* One end of the connection under test, whatever the transport. */
struct ep {
	enum variant v;
	int fd;                         /* sockets */
	struct ubt_ring *tx, *rx;       /* ubt */
	struct ubt_wait w;
	uint64_t deadline;              /* give up waiting after this (ns) */
};

static uint64_t hist[H_BUCKETS];

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "ubt-bench[%d]: %s: %s\n", (int)getpid(), what,
		strerror(err < 0 ? -err : err));
	exit(2);
}

static void pin_cpu(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)sched_setaffinity(0, sizeof(set), &set); /* best effort */
}

/* The byte at stream offset off.  Its period, 251 (prime), divides no
 * power-of-two chunk, so a lost or repeated chunk shows. */
#define PAT_PERIOD 251u
static uint8_t pattern(uint64_t off)
{
	return (uint8_t)(off % PAT_PERIOD);
}

static unsigned hist_index(uint64_t v)
{
	unsigned e;

	if (v < H_SUB)
		return (unsigned)v;
	e = 63u - (unsigned)__builtin_clzll(v);       /* >= 6 */
	if (e >= H_MAXEXP)
		return H_BUCKETS - 1;
	return (e - 5) * H_SUB + (unsigned)((v >> (e - 6)) - H_SUB);
}

/* Lower bound of bucket i, plus half its width: the value we report. */
static uint64_t hist_value(unsigned i)
{
	unsigned e;
	uint64_t lo, w;

	if (i < H_SUB)
		return i;
	e = i / H_SUB + 5;
	w = 1ull << (e - 6);
	lo = (uint64_t)(i % H_SUB + H_SUB) << (e - 6);
	return lo + w / 2;
}

/* The value below which fraction q of the n samples lie. */
static uint64_t hist_quantile(uint64_t n, double q)
{
	uint64_t want = (uint64_t)((double)n * q), seen = 0;
	unsigned i;

	if (want >= n)
		want = n - 1;
	for (i = 0; i < H_BUCKETS; i++) {
		seen += hist[i];
		if (seen > want)
			return hist_value(i);
	}
	return hist_value(H_BUCKETS - 1);
}

/*
 * Wait for a ubt ring to become readable (need == 0) or writable for need
 * bytes, in slices of WAIT_SLICE_MS so that the run's deadline is
 * honoured even if a doorbell is lost.  Returns 0 or -errno.
 */
static int ubt_wait(struct ep *e, struct ubt_ring *r, uint64_t need)
{
	int ret;

	for (;;) {
		ret = need ? ubt_wait_writable(r, need, &e->w)
			   : ubt_wait_readable(r, &e->w);
		if (ret == UBT_READY)
			return 0;
		if (ret != -ETIMEDOUT && ret != -EINTR)
			return ret < 0 ? ret : -EPROTO;
		if (now_ns() > e->deadline)
			return -ETIMEDOUT;
	}
}

/*
 * Write all len bytes.  Returns 0, -EPIPE once the reader has gone, or
 * another -errno.
 */
static int ep_write_all(struct ep *e, const void *buf, size_t len)
{
	const char *p = buf;
	ssize_t n;
	int ret;

	while (len) {
		if (e->v == V_UBT_SPIN || e->v == V_UBT_SLEEP) {
			n = ubt_stream_write(e->tx, p, len);
			if (n == -EAGAIN) {
				/* Wait for a quarter ring (or the rest) so
				 * large writes are not woken per byte. */
				uint64_t need = e->tx->size / 4;

				if (need > len)
					need = len;
				ret = ubt_wait(e, e->tx, need);
				if (ret < 0)
					return ret;
				continue;
			}
			if (n < 0)
				return (int)n;
		} else {
			n = write(e->fd, p, len);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				return -errno;
			}
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read up to len bytes, blocking until at least one arrives.  Returns the
 * count, 0 at EOF, or -errno. */
static ssize_t ep_read_some(struct ep *e, void *buf, size_t len)
{
	ssize_t n;
	int ret;

	for (;;) {
		if (e->v == V_UBT_SPIN || e->v == V_UBT_SLEEP) {
			n = ubt_stream_read(e->rx, buf, len, 0);
			if (n != -EAGAIN)
				return n;
			ret = ubt_wait(e, e->rx, 0);
			if (ret < 0)
				return ret;
		} else {
			n = read(e->fd, buf, len);
			if (n >= 0)
				return n;
			if (errno != EINTR)
				return -errno;
		}
	}
}

/* Read exactly len bytes.  Returns len, 0 on EOF before the first byte,
 * -EPROTO on EOF in the middle, or -errno. */
static ssize_t ep_read_all(struct ep *e, void *buf, size_t len)
{
	char *p = buf;
	size_t got = 0;
	ssize_t n;

	while (got < len) {
		n = ep_read_some(e, p + got, len - got);
		if (n < 0)
			return n;
		if (n == 0)
			return got ? -EPROTO : 0;
		got += (size_t)n;
	}
	return (ssize_t)len;
}

/* Echo messages of size bytes until EOF. */
static int child_pingpong(struct ep *e, size_t size)
{
	char *buf = malloc(size);
	ssize_t n;
	int ret;

	if (!buf)
		return -ENOMEM;
	for (;;) {
		n = ep_read_all(e, buf, size);
		if (n <= 0) {
			free(buf);
			return (int)n;
		}
		ret = ep_write_all(e, buf, size);
		if (ret < 0) {
			free(buf);
			return ret == -EPIPE ? 0 : ret;
		}
	}
}

/*
 * Send size-byte chunks until the receiver goes away.  The stream carries
 * pattern(offset): each chunk is a window into one buffer of size plus a
 * period of the pattern, so sending costs no more than a plain write.
 */
static int child_stream(struct ep *e, size_t size)
{
	size_t blen = size + PAT_PERIOD, i;
	uint8_t *buf = malloc(blen);
	uint64_t off = 0;
	int ret;

	if (!buf)
		return -ENOMEM;
	for (i = 0; i < blen; i++)
		buf[i] = pattern(i);
	do {
		ret = ep_write_all(e, buf + off % PAT_PERIOD, size);
		off += size;
	} while (ret == 0);
	free(buf);
	return ret == -EPIPE || ret == -ECONNRESET ? 0 : ret;
}

/* Measured result of one run, from the parent's side. */
struct result {
	double value;                   /* ns (pingpong) or GB/s (stream) */
	uint64_t p99;                   /* ns, pingpong only */
	uint64_t iters;                 /* round trips or bytes */
	uint64_t wall_ns;
};

/* A warm-up period, then a measured window of secs seconds. */
struct window {
	uint64_t t0, end;
	double secs;
	int measuring;
};

static void window_start(struct window *w, double secs)
{
	w->secs = secs;
	w->measuring = 0;
	w->t0 = now_ns();
	w->end = w->t0 + (uint64_t)(secs * 0.1e9 + 0.05e9);
}

/* Called at time t after each step: 1 once the measured window is over. */
static int window_tick(struct window *w, uint64_t t)
{
	if (t < w->end)
		return 0;
	if (w->measuring)
		return 1;
	w->measuring = 1;
	w->t0 = t;
	w->end = t + (uint64_t)(w->secs * 1e9);
	return 0;
}

/* Warm up, then time round trips for secs seconds. */
static int parent_pingpong(struct ep *e, size_t size, double secs,
			   struct result *res)
{
	char *buf = calloc(1, size);
	struct window w;
	uint64_t t, prev, n = 0, seq;
	ssize_t r;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	window_start(&w, secs);
	prev = w.t0;
	for (seq = 1;; seq++) {
		memcpy(buf, &seq, size < sizeof(seq) ? size : sizeof(seq));
		ret = ep_write_all(e, buf, size);
		if (ret < 0)
			break;
		r = ep_read_all(e, buf, size);
		if (r <= 0) {
			ret = r ? (int)r : -ECONNRESET;
			break;
		}
		if (memcmp(buf, &seq, size < sizeof(seq) ? size : sizeof(seq))) {
			fprintf(stderr, "ubt-bench: echo %llu came back wrong\n",
				(unsigned long long)seq);
			ret = -EBADMSG;
			break;
		}
		t = now_ns();
		if (w.measuring) {
			hist[hist_index(t - prev)]++;
			n++;
		}
		prev = t;
		if (window_tick(&w, t))
			break;
	}
	free(buf);
	if (ret < 0)
		return ret;
	if (n == 0)
		return -ENODATA;
	res->value = (double)hist_quantile(n, 0.5);
	res->p99 = hist_quantile(n, 0.99);
	res->iters = n;
	res->wall_ns = prev - w.t0;
	return 0;
}

/* Receive for secs seconds after a warm-up; count bytes. */
static int parent_stream(struct ep *e, size_t size, double secs,
			 struct result *res)
{
	char *buf = malloc(size);
	struct window w;
	uint64_t t = 0, bytes = 0, off = 0;
	ssize_t r;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	memset(buf, 0, size);
	window_start(&w, secs);
	for (;;) {
		r = ep_read_some(e, buf, size);
		if (r <= 0) {
			ret = r ? (int)r : -ECONNRESET;
			break;
		}
		if ((uint8_t)buf[0] != pattern(off) ||
		    (uint8_t)buf[r - 1] != pattern(off + (uint64_t)r - 1)) {
			fprintf(stderr, "ubt-bench: stream data wrong at "
				"offset %llu\n", (unsigned long long)off);
			ret = -EBADMSG;
			break;
		}
		off += (uint64_t)r;
		t = now_ns();
		if (w.measuring)
			bytes += (uint64_t)r;
		if (window_tick(&w, t))
			break;
	}
	free(buf);
	if (ret < 0)
		return ret;
	res->wall_ns = t - w.t0;
	res->iters = bytes;
	res->value = (double)bytes / (double)res->wall_ns; /* B/ns = GB/s */
	res->p99 = 0;
	return 0;
}

/* Kill (if still running) and reap the child within REAP_MS; returns its
 * wait status, or -1.  ru gets the child's resource usage. */
static int reap(pid_t pid, int kill_first, struct rusage *ru)
{
	int st, i;
	pid_t p;

	if (kill_first)
		kill(pid, SIGKILL);
	for (i = 0; i < REAP_MS; i++) {
		p = wait4(pid, &st, WNOHANG, ru);
		if (p == pid)
			return st;
		if (p < 0 && errno != EINTR)
			return -1;
		usleep(1000);
	}
	fprintf(stderr, "ubt-bench: child %d did not exit, killing it\n",
		(int)pid);
	kill(pid, SIGKILL);
	while ((p = wait4(pid, &st, 0, ru)) < 0 && errno == EINTR)
		;
	return -1;
}

static void ctl_send(int sock, char c)
{
	if (write(sock, &c, 1) != 1)
		die("control write", errno);
}

static void ctl_recv(int sock)
{
	char c;
	ssize_t n;

	while ((n = read(sock, &c, 1)) < 0 && errno == EINTR)
		;
	if (n != 1)
		die("control read", n < 0 ? errno : EPIPE);
}

/* A connected TCP pair over 127.0.0.1 (ephemeral port), TCP_NODELAY. */
static void tcp_pair(int fd[2])
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);
	int l, one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		die("socket", errno);
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &alen) < 0)
		die("tcp listen", errno);
	fd[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd[0] < 0 || connect(fd[0], (struct sockaddr *)&a, sizeof(a)) < 0)
		die("tcp connect", errno);
	fd[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (fd[1] < 0)
		die("tcp accept", errno);
	close(l);
	if (setsockopt(fd[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
	    setsockopt(fd[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		die("TCP_NODELAY", errno);
}

/*
 * The child's half of ubt setup.  It drops the mapping and fds inherited
 * across fork and attaches as side 1 the way an unrelated process would:
 * segment fd and the creator's doorbell come over the control socket,
 * and its own doorbell goes back.
 */
static void child_ubt_attach(struct ubt_chan *parent_c, struct ubt_chan *cc,
			     int ctl)
{
	int fds[2] = { -1, -1 }, nfds = 2, ret;
	char tag;

	ubt_seg_unmap(&parent_c->seg);
	close(parent_c->efd[0]);
	ret = ubt_recv_fds(ctl, fds, &nfds, &tag, 1);
	if (ret <= 0 || nfds != 2)
		die("ubt_recv_fds", ret < 0 ? ret : EPROTO);
	ret = ubt_chan_attach(cc, fds[0], fds[1]);
	if (ret < 0)
		die("ubt_chan_attach", ret);
	ret = ubt_send_fds(ctl, &cc->efd[cc->side], 1, "e", 1);
	if (ret < 0)
		die("ubt_send_fds (child)", ret);
}

/* The parent's half: hand over segment + doorbell, install the child's. */
static void parent_ubt_attach(struct ubt_chan *c, int ctl)
{
	int fds[2] = { c->seg.fd, c->efd[c->side] }, efd = -1, nfds = 1, ret;
	char tag;

	ret = ubt_send_fds(ctl, fds, 2, "s", 1);
	if (ret < 0)
		die("ubt_send_fds (parent)", ret);
	ret = ubt_recv_fds(ctl, &efd, &nfds, &tag, 1);
	if (ret <= 0 || nfds != 1)
		die("ubt_recv_fds (parent)", ret < 0 ? ret : EPROTO);
	ubt_chan_set_peer_efd(c, efd);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: ubt-bench pingpong|stream ubt-spin|ubt-sleep|unix|tcp "
		"MSGSIZE SECONDS\n");
	exit(1);
}

static double ms(struct timeval tv)
{
	return (double)tv.tv_sec * 1e3 + (double)tv.tv_usec / 1e3;
}

int main(int argc, char **argv)
{
	enum mode mode;
	enum variant v = V_UBT_SPIN;
	struct ubt_chan c, cc;
	struct ep e = { .fd = -1 };
	struct result res = { 0 };
	struct rusage ru0, ru1, ruc;
	size_t size;
	double secs;
	uint64_t t_run;
	int ctl[2], sk[2] = { -1, -1 }, ret, st, is_ubt;
	unsigned i;
	pid_t pid;
	char *end;

	memset(&c, 0, sizeof(c));
	memset(&cc, 0, sizeof(cc));
	if (argc != 5)
		usage();
	if (!strcmp(argv[1], "pingpong"))
		mode = M_PINGPONG;
	else if (!strcmp(argv[1], "stream"))
		mode = M_STREAM;
	else
		usage();
	for (i = 0; i < 4; i++)
		if (!strcmp(argv[2], variant_name[i]))
			break;
	if (i == 4)
		usage();
	v = (enum variant)i;
	size = strtoul(argv[3], &end, 0);
	if (*end || size == 0 || size > (64u << 20))
		usage();
	secs = strtod(argv[4], &end);
	if (*end || secs <= 0 || secs > 600)
		usage();

	is_ubt = v == V_UBT_SPIN || v == V_UBT_SLEEP;
	if (is_ubt && size > RING_STREAM)
		usage();
	signal(SIGPIPE, SIG_IGN);
	alarm((unsigned)secs + SLACK_S);
	pin_cpu(0);

	e.v = v;
	e.w.spin_ns = v == V_UBT_SPIN ? SPIN_NS : 0;
	e.w.timeout_ms = WAIT_SLICE_MS;
	e.w.watch_fd = -1;
	e.deadline = now_ns() + (uint64_t)((secs + SLACK_S - 2) * 1e9);

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0)
		die("socketpair", errno);
	if (is_ubt) {
		ret = ubt_chan_create_stream(&c, mode == M_STREAM ?
					     RING_STREAM : RING_PINGPONG);
		if (ret < 0)
			die("ubt_chan_create_stream", ret);
	} else if (v == V_UNIX) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sk) < 0)
			die("socketpair", errno);
	} else {
		tcp_pair(sk);
	}

	fflush(stdout);
	getrusage(RUSAGE_SELF, &ru0);
	t_run = now_ns();
	pid = fork();
	if (pid < 0)
		die("fork", errno);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() == 1)
			_exit(3);
		pin_cpu(1);
		close(ctl[0]);
		if (is_ubt) {
			child_ubt_attach(&c, &cc, ctl[1]);
			e.tx = ubt_chan_tx(&cc, 0);
			e.rx = ubt_chan_rx(&cc, 0);
			if (!e.tx || !e.rx)
				die("ubt_chan_tx/rx (child)", EPROTO);
		} else {
			close(sk[0]);
			e.fd = sk[1];
		}
		ctl_send(ctl[1], 'r');          /* ready */
		ret = mode == M_PINGPONG ? child_pingpong(&e, size)
					 : child_stream(&e, size);
		if (ret < 0)
			die(mode == M_PINGPONG ? "child pingpong"
					       : "child stream", ret);
		if (is_ubt)
			ubt_chan_close(&cc);
		_exit(0);
	}

	close(ctl[1]);
	if (is_ubt) {
		parent_ubt_attach(&c, ctl[0]);
		e.tx = ubt_chan_tx(&c, 0);
		e.rx = ubt_chan_rx(&c, 0);
		if (!e.tx || !e.rx) {
			reap(pid, 1, &ruc);
			die("ubt_chan_tx/rx (parent)", EPROTO);
		}
	} else {
		close(sk[1]);
		e.fd = sk[0];
	}
	ctl_recv(ctl[0]);

	ret = mode == M_PINGPONG ? parent_pingpong(&e, size, secs, &res)
				 : parent_stream(&e, size, secs, &res);

	/* Tell the child to stop: EOF for the echoer, EPIPE for the sender. */
	if (is_ubt) {
		if (mode == M_PINGPONG)
			ubt_ring_close_producer(e.tx);
		else
			ubt_ring_close_consumer(e.rx);
	} else if (mode == M_PINGPONG) {
		shutdown(e.fd, SHUT_WR);
	} else {
		close(e.fd);
		e.fd = -1;
	}
	st = reap(pid, ret < 0, &ruc);
	getrusage(RUSAGE_SELF, &ru1);
	t_run = now_ns() - t_run;
	if (is_ubt)
		ubt_chan_close(&c);
	else if (e.fd >= 0)
		close(e.fd);
	if (ret < 0)
		die(mode == M_PINGPONG ? "pingpong" : "stream", ret);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "ubt-bench: child failed (status %#x)\n", st);
		return 2;
	}

	ru1.ru_utime.tv_sec -= ru0.ru_utime.tv_sec;
	ru1.ru_utime.tv_usec -= ru0.ru_utime.tv_usec;
	ru1.ru_stime.tv_sec -= ru0.ru_stime.tv_sec;
	ru1.ru_stime.tv_usec -= ru0.ru_stime.tv_usec;
	if (mode == M_PINGPONG)
		printf("%s,pingpong,%zu,%.0f,ns,%llu", variant_name[v], size,
		       res.value, (unsigned long long)res.p99);
	else
		printf("%s,stream,%zu,%.3f,GB/s,-", variant_name[v], size,
		       res.value);
	printf(",%.1f,%.1f,%.1f,%.1f,%ld,%ld,%llu\n",
	       (double)res.wall_ns / 1e6, (double)t_run / 1e6,
	       ms(ru1.ru_utime) + ms(ru1.ru_stime),
	       ms(ruc.ru_utime) + ms(ruc.ru_stime),
	       ru1.ru_nvcsw - ru0.ru_nvcsw, ruc.ru_nvcsw,
	       (unsigned long long)res.iters);
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * epoll_bench.c - what an epoll wait costs beside many idle connections.
 *
 *   ubs-epoll-bench IDLE ROUNDS
 *
 * A client process opens IDLE + 1 connections to this process, which
 * puts all of them in one epoll set.  Then: ROUNDS ping-pongs of one byte
 * on the last connection (the server's epoll_wait(-1) timed from call to
 * return, the client's round trip), and ROUNDS epoll_wait(0) calls with
 * nothing ready.  Prints one line: idle, mean ns of each measure.  Run
 * under the preload (scripts/bench-epoll) to measure the emulation.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	int idle = argc > 1 ? atoi(argv[1]) : 10000;
	int rounds = argc > 2 ? atoi(argv[2]) : 2000;
	int n = idle + 1, l, ep, *fds, rp[2];
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	uint64_t t_wait = 0, t_empty = 0, t_rt = 0;
	pid_t pid;
	char b = 'x';

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fds = calloc((size_t)n, sizeof(*fds));
	l = socket(AF_INET, SOCK_STREAM, 0);
	if (!fds || l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(l, 4096) || getsockname(l, (struct sockaddr *)&a, &len) ||
	    pipe(rp))
		die("listen");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(rp[0]);
		for (int i = 0; i < n; i++) {
			fds[i] = socket(AF_INET, SOCK_STREAM, 0);
			if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a,
						  sizeof(a)))
				die("connect");
		}
		for (int r = 0; r < rounds; r++) {
			uint64_t t0 = now_ns();

			if (write(fds[n - 1], &b, 1) != 1 ||
			    read(fds[n - 1], &b, 1) != 1)
				die("client ping");
			t_rt += now_ns() - t0;
		}
		if (write(rp[1], &t_rt, sizeof(t_rt)) != sizeof(t_rt))
			die("report");
		read(fds[0], &b, 1);    /* until the server closes */
		_exit(0);
	}
	close(rp[1]);
	ep = epoll_create1(EPOLL_CLOEXEC);
	for (int i = 0; i < n; i++) {
		struct epoll_event e = { .events = EPOLLIN, .data.u32 = (uint32_t)i };

		fds[i] = accept(l, NULL, NULL);
		if (fds[i] < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e))
			die("accept");
	}
	for (int r = 0; r < rounds; r++) {
		struct epoll_event e[8];
		uint64_t t0 = now_ns();
		int k = epoll_wait(ep, e, 8, -1);

		t_wait += now_ns() - t0;
		if (k != 1 || e[0].data.u32 != (uint32_t)(n - 1) ||
		    read(fds[n - 1], &b, 1) != 1 || write(fds[n - 1], &b, 1) != 1)
			die("server pong");
	}
	for (int r = 0; r < rounds; r++) {
		struct epoll_event e[8];
		uint64_t t0 = now_ns();

		if (epoll_wait(ep, e, 8, 0) != 0)
			die("empty wait");
		t_empty += now_ns() - t0;
	}
	if (read(rp[0], &t_rt, sizeof(t_rt)) != sizeof(t_rt))
		die("client report");
	for (int i = 0; i < n; i++)
		close(fds[i]);
	waitpid(pid, NULL, 0);
	printf("%d %llu %llu %llu\n", idle,
	       (unsigned long long)(t_wait / (uint64_t)rounds),
	       (unsigned long long)(t_rt / (uint64_t)rounds),
	       (unsigned long long)(t_empty / (uint64_t)rounds));
	return 0;
}

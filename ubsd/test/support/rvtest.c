/* SPDX-License-Identifier: MIT */
/* rvtest.c - see rvtest.h. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dtest.h"
#include "rvtest.h"

void dt_send(int fd, uint16_t type, const void *body, uint32_t len,
	     const int *fds, int nfds)
{
	unsigned char buf[sizeof(struct ctl_hdr) + CTL_MAX_BODY];
	size_t n = dt_ctl_frame(buf, type, type, body, len);

	REQUIRE(ubt_send_fds(fd, fds, nfds, buf, n) == (int)n);
}

int dt_recv(int fd, struct ctl_hdr *h, void *body, int *fds, int *nfds)
{
	int got = 0, max = nfds ? *nfds : 0, n;
	size_t off = 0;

	if (nfds)
		*nfds = 0;
	while (off < sizeof(*h)) {
		int k = max - got;

		n = ubt_recv_fds(fd, fds ? fds + got : NULL, &k,
				 (char *)h + off, sizeof(*h) - off);
		if (n <= 0)
			return -1;
		got += k;
		off += (size_t)n;
	}
	if (nfds)
		*nfds = got;
	if (h->len > CTL_MAX_BODY)
		return -1;
	for (off = 0; off < h->len; off += (size_t)n) {
		n = (int)recv(fd, (char *)body + off, h->len - off, 0);
		if (n <= 0)
			return -1;
	}
	return 0;
}

int dt_expect(int fd, uint16_t want, void *body, int *fds)
{
	unsigned char tmp[CTL_MAX_BODY];
	struct ctl_hdr h;
	int nfds = 4, dummy[4];

	REQUIRE(dt_recv(fd, &h, body ? body : tmp, fds ? fds : dummy,
			&nfds) == 0);
	if (h.type != want && h.type == CTL_R_ERROR) {
		struct ctl_error *e = (void *)(body ? body : tmp);

		e->msg[sizeof(e->msg) - 1] = '\0';
		fprintf(stderr, "ERROR reply: %s\n", e->msg);
	}
	REQUIRE(h.type == want);
	if (!fds)
		for (int i = 0; i < nfds; i++)
			close(dummy[i]);
	return nfds;
}

int dt_hello(const char *name)
{
	struct ctl_hello m = { .pid = (uint32_t)getpid() };
	int fd = dt_ctl_open();

	snprintf(m.service, sizeof(m.service), "%s", name);
	dt_send(fd, CTL_REQ_HELLO, &m, sizeof(m), NULL, 0);
	dt_expect(fd, CTL_R_OK, NULL, NULL);
	return fd;
}

void dt_ring_read(struct ubt_chan *ch, void *buf, size_t len)
{
	size_t off = 0;

	for (int t = 0; off < len && t < WAIT_MS * 10; t++) {
		ssize_t n = ubt_stream_read(ubt_chan_rx(ch, 0),
					    (char *)buf + off, len - off, 0);
		if (n > 0)
			off += (size_t)n;
		else if (n == -EAGAIN)
			usleep(100);
		else
			break;
	}
	REQUIRE(off == len);
}

void dt_ring_write(struct ubt_chan *ch, const void *buf, size_t len)
{
	REQUIRE(ubt_stream_write(ubt_chan_tx(ch, 0), buf, len) ==
		(ssize_t)len);
}

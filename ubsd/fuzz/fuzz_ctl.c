/* SPDX-License-Identifier: MIT */
/*
 * fuzz_ctl.c - libFuzzer target for the control-message decoder, through
 * ubsd's real input path.  ubsd.c is compiled into this file (its main
 * renamed) so that its static conn_dispatch, do_hello, do_service_set, ...
 * run exactly as in the daemon.  Each input is one client's byte stream:
 * a connection (one end of a socketpair, a real policy page behind it) is
 * fed the bytes in pieces of at most its input buffer, as conn_read does;
 * its replies are drained and every one must pass ctl_check (ubsd never
 * sends what its clients would reject).  Then the connection is closed,
 * ending its session, and the policy table is restored, so inputs are
 * independent.  The caller is root (or whatever uid runs the fuzzer): with
 * uid 0, SERVICE_SET goes all the way to conf_set_key and pp_publish.
 *
 * The input is also checked on its own, header + body, with ctl_check.
 * Built by scripts/fuzz (clang -fsanitize=fuzzer,address,undefined).
 */
#include <sys/socket.h>
#include <syslog.h>

/* Quiet: no syslog from the daemon's code (d.foreground is false). */
#define vsyslog(prio, fmt, ap) ((void)(prio), (void)(fmt))
#define main ubsd_main
#include "../ubsd.c"
#undef main

#include <assert.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct ubs_conf saved_conf;

static void setup(void)
{
	d.foreground = false;
	d.verbose = 1;                  /* format the LOG_DEBUG lines too */
	d.conf = malloc(sizeof(*d.conf));
	if (!d.conf)
		abort();
	conf_init(d.conf);
	/* BOARD makes the fuzzer's uid a board once (it lives as long as
	 * the daemon): a small one, within libFuzzer's RSS limit. */
	d.conf->board_slots = 16;
	d.conf->deflt.ring_kib = 64;
	saved_conf = *d.conf;
	d.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (d.epfd < 0 || pp_create(&d.page) || publish())
		abort();
	d.start_ms = now_ms();
}

/* Read every reply queued on fd (closing passed fds); check each. */
static void drain(int fd, unsigned char *acc, size_t *acclen)
{
	for (;;) {
		union {
			struct cmsghdr h;
			char buf[CMSG_SPACE(8 * sizeof(int))];
		} cb;
		struct iovec iov = { acc + *acclen, 65536 - *acclen };
		struct msghdr mh = {
			.msg_iov = &iov, .msg_iovlen = 1,
			.msg_control = cb.buf, .msg_controllen = sizeof(cb.buf),
		};
		ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		struct cmsghdr *cm;

		if (n <= 0)
			return;
		for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level == SOL_SOCKET &&
			    cm->cmsg_type == SCM_RIGHTS) {
				int *fds = (int *)CMSG_DATA(cm);
				size_t k = (cm->cmsg_len - CMSG_LEN(0)) /
					   sizeof(int);
				for (size_t i = 0; i < k; i++)
					close(fds[i]);
			}
		}
		*acclen += (size_t)n;
		/* Every complete reply must be one a client accepts. */
		size_t off = 0;
		while (*acclen - off >= sizeof(struct ctl_hdr)) {
			struct ctl_hdr h;
			const char *why;

			memcpy(&h, acc + off, sizeof(h));
			if (ctl_check(&h, NULL, &why)) {
				fprintf(stderr, "ubsd sent a bad header: %s\n",
					why);
				abort();
			}
			if (*acclen - off < sizeof(h) + h.len)
				break;
			if (ctl_check(&h, acc + off + sizeof(h), &why)) {
				fprintf(stderr, "ubsd sent a bad %s: %s\n",
					ctl_type_name(h.type), why);
				abort();
			}
			if (h.type < CTL_R_FIRST || h.type > CTL_R_LAST) {
				fprintf(stderr, "ubsd sent a request\n");
				abort();
			}
			off += sizeof(h) + h.len;
		}
		memmove(acc, acc + off, *acclen - off);
		*acclen -= off;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	static unsigned char acc[65536];
	size_t acclen = 0, pos = 0;
	struct conn *c;
	int sv[2];

	if (!ready) {
		setup();
		ready = true;
	}

	/* The decoder alone: the input as one header + body. */
	if (size >= sizeof(struct ctl_hdr)) {
		struct ctl_hdr h;
		const char *why;
		unsigned char *body;

		memcpy(&h, data, sizeof(h));
		if (ctl_check(&h, NULL, &why) == 0 &&
		    size - sizeof(h) >= h.len) {
			/* Exactly h.len bytes, so ASan sees any overread. */
			body = malloc(h.len ? h.len : 1);
			if (!body)
				abort();
			memcpy(body, data + sizeof(h), h.len);
			(void)ctl_check(&h, body, &why);
			free(body);
		}
	}

	/* The daemon's input path. */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
		       sv) < 0)
		abort();
	c = calloc(1, sizeof(*c));
	if (!c)
		abort();
	c->src.kind = EV_CONN;
	c->src.fd = sv[0];
	c->pid = getpid();
	c->uid = getuid();
	c->gid = getgid();
	TAILQ_INSERT_TAIL(&conns, c, entry);
	if (ep_mod(EPOLL_CTL_ADD, c->src.fd, EPOLLIN, c) < 0)
		abort();
	c->events = EPOLLIN;

	for (;;) {
		const char *why = NULL;
		size_t room = sizeof(c->in) - c->inlen;
		size_t n = size - pos < room ? size - pos : room;
		int err;

		if (n == 0) {
			/* End of input: the client closes, as in conn_read. */
			conn_close(c, c->inlen ? "truncated message at close"
				   : NULL);
			break;
		}
		memcpy(c->in + c->inlen, data + pos, n);
		c->inlen += n;
		pos += n;
		err = conn_dispatch(c, &why);
		if (!err)
			err = conn_flush(c);
		drain(sv[1], acc, &acclen);
		if (err) {
			conn_close(c, why ? why : strerror(-err));
			break;
		}
		/* A full buffer is always one whole message at least. */
		assert(c->inlen < sizeof(c->in));
	}
	drain(sv[1], acc, &acclen);
	close(sv[1]);
	assert(TAILQ_EMPTY(&sessions) && d.nsessions == 0);
	/* The closed connection, as the event loop frees it after its
	 * batch (otherwise every input leaks one). */
	graveyard_free();

	/* Undo SERVICE_SET: the next input starts from the same table. */
	if (memcmp(d.conf, &saved_conf, sizeof(saved_conf)) != 0) {
		*d.conf = saved_conf;
		if (publish())
			abort();
	}
	return 0;
}

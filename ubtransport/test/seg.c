/* SPDX-License-Identifier: MIT */
/*
 * seg.c - memfd segments: how they are created (mode, seals, cloexec), how
 * they travel to another process (only as an fd), what ubt_seg_map refuses
 * (and that a refused fd stays the caller's), the bounds of ubt_seg_ptr,
 * and the fd passing helpers.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "helpers.h"

#define SEG_SIZE (64 * 1024)

static int fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	cr_assert(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* The fd is still open and still refers to the same file. */
static int same_file(int fd, const struct stat *was)
{
	struct stat st;

	return fcntl(fd, F_GETFD) >= 0 && fstat(fd, &st) == 0 &&
	       st.st_dev == was->st_dev && st.st_ino == was->st_ino;
}

/* A memfd laid out like a segment by hand, so single fields can be wrong. */
static int fake_seg(size_t file_size, const struct ubt_seg_hdr *h, int seals)
{
	int fd = memfd_create("fake-seg", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	cr_assert(fd >= 0);
	cr_assert_eq(ftruncate(fd, (off_t)file_size), 0);
	cr_assert_eq(pwrite(fd, h, sizeof(*h), 0), (ssize_t)sizeof(*h));
	if (seals)
		cr_assert_eq(fcntl(fd, F_ADD_SEALS, seals), 0);
	return fd;
}

static struct ubt_seg_hdr good_hdr(uint16_t kind)
{
	struct ubt_seg_hdr h = {
		.magic = UBT_MAGIC, .version = UBT_LAYOUT_VER, .kind = kind,
		.size = SEG_SIZE, .id = 0x1122334455667788ull,
		.hdr_size = UBT_SEG_HDR_SIZE, .creator_pid = 1,
	};

	return h;
}

#define ALL_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* Map must refuse fd with want (or, if want2 != 0, with either) and leave
 * the fd open and the caller's. */
static void expect_refused(int fd, uint16_t kind, int want, int want2)
{
	struct ubt_seg s;
	struct stat was;
	int err;

	cr_assert_eq(fstat(fd, &was), 0);
	memset(&s, 0xa5, sizeof(s));
	err = ubt_seg_map(&s, fd, kind);
	if (want2)
		cr_assert(err == want || err == want2,
			  "ubt_seg_map gave %d, wanted %d or %d", err, want,
			  want2);
	else
		cr_assert_eq(err, want, "ubt_seg_map gave %d, wanted %d", err,
			     want);
	cr_assert_eq(s.base, NULL, "a refused segment must not look mapped");
	cr_assert(same_file(fd, &was), "a refused fd must stay open");
	close(fd);
}

Test(seg, created_0600_sealed_cloexec, .timeout = 30)
{
	struct ubt_seg s;
	struct stat st;
	int seals;

	cr_assert_eq(ubt_seg_create(&s, SEG_SIZE, UBT_SEG_DATA, "t-seg"), 0);
	cr_assert_eq(fstat(s.fd, &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0600, "mode %o", st.st_mode & 07777);
	cr_assert_eq((uint64_t)st.st_size, (uint64_t)s.size);
	cr_assert_eq(s.size, SEG_SIZE);
	cr_assert_neq(s.id, 0);

	seals = fcntl(s.fd, F_GET_SEALS);
	cr_assert(seals >= 0);
	cr_assert_eq(seals & ALL_SEALS, ALL_SEALS, "seals %#x", seals);
	errno = 0;
	cr_assert_eq(ftruncate(s.fd, SEG_SIZE * 2), -1);
	cr_assert_eq(errno, EPERM);
	errno = 0;
	cr_assert_eq(ftruncate(s.fd, SEG_SIZE / 2), -1);
	cr_assert_eq(errno, EPERM);
	/* F_SEAL_SEAL: nobody can add e.g. a write seal later. */
	cr_assert_eq(fcntl(s.fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
	cr_assert(fcntl(s.fd, F_GETFD) & FD_CLOEXEC);

	/* The header describes the segment. */
	struct ubt_seg_hdr *h = (struct ubt_seg_hdr *)s.base;
	cr_assert_eq(h->magic, UBT_MAGIC);
	cr_assert_eq(h->version, UBT_LAYOUT_VER);
	cr_assert_eq(h->kind, UBT_SEG_DATA);
	cr_assert_eq(h->size, SEG_SIZE);
	cr_assert_eq(h->id, s.id);
	cr_assert_eq(h->creator_pid, (uint32_t)getpid());
	ubt_seg_unmap(&s);
	cr_assert_eq(s.base, NULL);
	cr_assert_eq(s.fd, -1);
}

Test(seg, ids_differ_and_size_rounds_to_pages, .timeout = 30)
{
	struct ubt_seg a, b;

	cr_assert_eq(ubt_seg_create(&a, UBT_SEG_HDR_SIZE + 1, UBT_SEG_DATA,
				    NULL), 0);
	cr_assert_eq(ubt_seg_create(&b, UBT_SEG_HDR_SIZE, UBT_SEG_DATA, NULL),
		     0);
	cr_assert_neq(a.id, b.id);
	cr_assert_eq(a.size % (size_t)sysconf(_SC_PAGESIZE), 0);
	cr_assert_geq(a.size, UBT_SEG_HDR_SIZE + 1);
	cr_assert_eq(ubt_seg_create(&b, UBT_SEG_HDR_SIZE - 1, UBT_SEG_DATA,
				    NULL), -EINVAL);
	ubt_seg_unmap(&a);
}

/* ------------------------------------------------ passing to a process */

struct pass {
	int sock;               /* child's end */
	struct ubt_seg inherited; /* what fork copied: dropped first */
};

struct pass_msg {
	uint64_t id;
	uint64_t off;           /* parent's pattern here ... */
	uint64_t back;          /* ... the child's answer here */
	uint64_t len;
};

static int pass_child(void *arg)
{
	struct pass *p = arg;
	struct pass_msg m;
	struct ubt_seg s;
	int fd = -1, n = 1;
	uint8_t *src, *dst;
	char ok = 'k';

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Only the fd may carry the segment: drop the inherited mapping. */
	ubt_seg_unmap(&p->inherited);
	CHECK(ubt_recv_fds(p->sock, &fd, &n, &m, sizeof(m)) == sizeof(m));
	CHECK(n == 1 && fd >= 0);
	CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	CHECK(ubt_seg_map(&s, fd, UBT_SEG_DATA) == 0);
	CHECK(s.fd == fd && s.size == SEG_SIZE);
	CHECK(s.id == m.id);
	src = ubt_seg_ptr(&s, m.off, m.len);
	dst = ubt_seg_ptr(&s, m.back, m.len);
	CHECK(src && dst);
	CHECK(th_verify(m.id, 0, src, m.len) == 0);
	th_fill(m.id ^ 0xffff, 0, dst, m.len);
	CHECK(write(p->sock, &ok, 1) == 1);
	ubt_seg_unmap(&s);
	return 0;
}

Test(seg, passed_only_as_fd, .timeout = 30)
{
	struct pass p;
	struct pass_msg m;
	int sv[2];
	pid_t pid;
	char ok = 0;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
		     0);
	cr_assert_eq(ubt_seg_create(&p.inherited, SEG_SIZE, UBT_SEG_DATA,
				    "t-pass"), 0);
	p.sock = sv[1];
	pid = th_fork(pass_child, &p);
	cr_assert(pid > 0);
	close(sv[1]);

	/* Written after the fork: only a shared mapping shows it. */
	m = (struct pass_msg){ .id = p.inherited.id, .off = 8192,
			       .back = 16384, .len = 5000 };
	th_fill(m.id, 0, ubt_seg_ptr(&p.inherited, m.off, m.len), m.len);
	cr_assert_eq(ubt_send_fds(sv[0], &p.inherited.fd, 1, &m, sizeof(m)),
		     sizeof(m));
	cr_assert_eq(read(sv[0], &ok, 1), 1);
	cr_assert_eq(ok, 'k');
	cr_assert_eq(th_verify(m.id ^ 0xffff, 0,
			       ubt_seg_ptr(&p.inherited, m.back, m.len), m.len),
		     0, "the child's write is not visible to the parent");
	cr_assert_eq(th_wait(pid, 10000), 0);
	close(sv[0]);
	ubt_seg_unmap(&p.inherited);
}

/* --------------------------------------------------------- refusals */

Test(seg, map_accepts_a_well_formed_fake, .timeout = 30)
{
	/* The control for the refusals below: the same construction with
	 * nothing wrong is accepted, so each refusal is due to its one flaw. */
	struct ubt_seg_hdr h = good_hdr(UBT_SEG_DATA);
	int fd = fake_seg(SEG_SIZE, &h, F_SEAL_SHRINK | F_SEAL_GROW);
	struct ubt_seg s;

	cr_assert_eq(ubt_seg_map(&s, fd, UBT_SEG_DATA), 0);
	cr_assert_eq(s.id, h.id);
	cr_assert_eq(s.size, SEG_SIZE);
	cr_assert_eq(s.fd, fd);
	ubt_seg_unmap(&s);
}

Test(seg, map_refuses_a_regular_file, .timeout = 30)
{
	struct ubt_seg_hdr h = good_hdr(UBT_SEG_DATA);
	char path[] = "/tmp/ubt-seg-XXXXXX";
	int fd = mkstemp(path);

	cr_assert(fd >= 0);
	unlink(path);
	cr_assert_eq(ftruncate(fd, SEG_SIZE), 0);
	cr_assert_eq(pwrite(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
	/* Not sealable (EINVAL -> EPROTO), or on tmpfs sealable-but-unsealed
	 * (EPERM): refused either way. */
	expect_refused(fd, UBT_SEG_DATA, -EPROTO, -EPERM);
}

Test(seg, map_refuses_a_pipe, .timeout = 30)
{
	int p[2];

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	expect_refused(p[0], UBT_SEG_DATA, -EPROTO, 0);
	expect_refused(p[1], UBT_SEG_DATA, -EPROTO, 0);
}

Test(seg, map_refuses_unsealed, .timeout = 30)
{
	struct ubt_seg_hdr h = good_hdr(UBT_SEG_DATA);

	expect_refused(fake_seg(SEG_SIZE, &h, 0), UBT_SEG_DATA, -EPERM, 0);
	/* Half sealed is not sealed. */
	expect_refused(fake_seg(SEG_SIZE, &h, F_SEAL_GROW), UBT_SEG_DATA,
		       -EPERM, 0);
	expect_refused(fake_seg(SEG_SIZE, &h, F_SEAL_SHRINK), UBT_SEG_DATA,
		       -EPERM, 0);
}

Test(seg, map_refuses_wrong_magic_kind_size, .timeout = 30)
{
	const int seals = F_SEAL_SHRINK | F_SEAL_GROW;
	struct ubt_seg_hdr h;

	h = good_hdr(UBT_SEG_DATA);
	h.magic ^= 1;
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_DATA, -EPROTO, 0);

	h = good_hdr(UBT_SEG_DATA);
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_CHAN, -EPROTO, 0);
	h = good_hdr(UBT_SEG_CHAN);
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_DATA, -EPROTO, 0);

	/* size field larger and smaller than the file */
	h = good_hdr(UBT_SEG_DATA);
	h.size = SEG_SIZE + 4096;
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_DATA, -EPROTO, 0);
	h.size = SEG_SIZE - 4096;
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_DATA, -EPROTO, 0);
	h.size = SEG_SIZE;
	expect_refused(fake_seg(SEG_SIZE * 2, &h, seals), UBT_SEG_DATA,
		       -EPROTO, 0);

	/* a file too small to hold the header page */
	h = good_hdr(UBT_SEG_DATA);
	h.size = 2048;
	expect_refused(fake_seg(2048, &h, seals), UBT_SEG_DATA, -EPROTO, 0);

	h = good_hdr(UBT_SEG_DATA);
	h.hdr_size = 8192;
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_DATA, -EPROTO, 0);
	h = good_hdr(UBT_SEG_DATA);
	h.id = 0;
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_DATA, -EPROTO, 0);
}

Test(seg, map_refuses_other_layout_version, .timeout = 30)
{
	const int seals = F_SEAL_SHRINK | F_SEAL_GROW;
	struct ubt_seg_hdr h = good_hdr(UBT_SEG_DATA);

	h.version = UBT_LAYOUT_VER + 1;
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_DATA,
		       -EPROTONOSUPPORT, 0);
	h.version = 0;
	expect_refused(fake_seg(SEG_SIZE, &h, seals), UBT_SEG_DATA,
		       -EPROTONOSUPPORT, 0);
}

/* -------------------------------------------------------- ubt_seg_ptr */

Test(seg, ptr_bounds, .timeout = 30)
{
	struct ubt_seg s;
	uint64_t sz;

	cr_assert_eq(ubt_seg_create(&s, SEG_SIZE, UBT_SEG_DATA, NULL), 0);
	sz = s.size;

	/* the header page is not addressable */
	cr_assert_null(ubt_seg_ptr(&s, 0, 1));
	cr_assert_null(ubt_seg_ptr(&s, 0, 0));
	cr_assert_null(ubt_seg_ptr(&s, UBT_SEG_HDR_SIZE - 1, 1));
	cr_assert_null(ubt_seg_ptr(&s, UBT_SEG_HDR_SIZE - 1, 0));

	/* the whole payload, and its edges */
	cr_assert_eq(ubt_seg_ptr(&s, UBT_SEG_HDR_SIZE, sz - UBT_SEG_HDR_SIZE),
		     s.base + UBT_SEG_HDR_SIZE);
	cr_assert_eq(ubt_seg_ptr(&s, sz - 1, 1), s.base + sz - 1);
	cr_assert_null(ubt_seg_ptr(&s, UBT_SEG_HDR_SIZE,
				   sz - UBT_SEG_HDR_SIZE + 1));
	cr_assert_null(ubt_seg_ptr(&s, sz - 1, 2));

	/* past the end */
	cr_assert_null(ubt_seg_ptr(&s, sz, 1));
	cr_assert_null(ubt_seg_ptr(&s, sz + 1, 0));
	cr_assert_null(ubt_seg_ptr(&s, UINT64_MAX, 0));
	cr_assert_null(ubt_seg_ptr(&s, UINT64_MAX, 1));

	/* off + len overflowing 64 bits */
	cr_assert_null(ubt_seg_ptr(&s, sz - 1, UINT64_MAX));
	cr_assert_null(ubt_seg_ptr(&s, UBT_SEG_HDR_SIZE, UINT64_MAX));
	cr_assert_null(ubt_seg_ptr(&s, UBT_SEG_HDR_SIZE,
				   UINT64_MAX - UBT_SEG_HDR_SIZE + 1));
	cr_assert_null(ubt_seg_ptr(&s, sz - 8, UINT64_MAX - sz + 16));

	ubt_seg_unmap(&s);
	cr_assert_null(ubt_seg_ptr(&s, UBT_SEG_HDR_SIZE, 1),
		       "an unmapped segment has no addresses");
}

/* --------------------------------------------------------- fd passing */

Test(seg, recv_closes_fds_beyond_nfds, .timeout = 30)
{
	int sv[2], send[UBT_MAX_FDS], got[UBT_MAX_FDS], n, before, i;
	char data[4] = "abc", in[4];
	struct stat st0, st;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
		     0);
	for (i = 0; i < UBT_MAX_FDS; i++) {
		send[i] = memfd_create("t-fd", MFD_CLOEXEC);
		cr_assert(send[i] >= 0);
	}
	cr_assert_eq(fstat(send[0], &st0), 0);

	/* 3 sent, 1 wanted: the first arrives, the other 2 are closed */
	before = fd_count();
	cr_assert_eq(ubt_send_fds(sv[0], send, 3, data, 4), 4);
	n = 1;
	got[1] = -1;
	cr_assert_eq(ubt_recv_fds(sv[1], got, &n, in, 4), 4);
	cr_assert_eq(n, 1);
	cr_assert_eq(memcmp(in, "abc", 4), 0);
	cr_assert_eq(got[1], -1, "wrote past *nfds");
	cr_assert_eq(fd_count(), before + 1, "extra fds leaked");
	cr_assert_eq(fstat(got[0], &st), 0);
	cr_assert_eq(st.st_ino, st0.st_ino, "not the first fd sent");
	cr_assert(fcntl(got[0], F_GETFD) & FD_CLOEXEC);
	close(got[0]);

	/* all UBT_MAX_FDS sent, none wanted */
	before = fd_count();
	cr_assert_eq(ubt_send_fds(sv[0], send, UBT_MAX_FDS, NULL, 0), 0);
	n = 0;
	cr_assert_eq(ubt_recv_fds(sv[1], got, &n, NULL, 0), 0);
	cr_assert_eq(n, 0);
	cr_assert_eq(fd_count(), before, "extra fds leaked");

	/* all wanted */
	before = fd_count();
	cr_assert_eq(ubt_send_fds(sv[0], send, UBT_MAX_FDS, NULL, 0), 0);
	n = UBT_MAX_FDS;
	cr_assert_eq(ubt_recv_fds(sv[1], got, &n, NULL, 0), 0);
	cr_assert_eq(n, UBT_MAX_FDS);
	cr_assert_eq(fd_count(), before + UBT_MAX_FDS);
	for (i = 0; i < UBT_MAX_FDS; i++)
		close(got[i]);

	cr_assert_eq(ubt_send_fds(sv[0], send, UBT_MAX_FDS + 1, NULL, 0),
		     -EINVAL);
	cr_assert_eq(ubt_send_fds(sv[0], send, -1, NULL, 0), -EINVAL);
	for (i = 0; i < UBT_MAX_FDS; i++)
		close(send[i]);
	close(sv[0]);
	close(sv[1]);
}

Test(seg, recv_eof_is_epipe, .timeout = 30)
{
	int sv[2], fd = -1, n = 1;
	char buf[8];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
		     0);
	close(sv[0]);
	cr_assert_eq(ubt_recv_fds(sv[1], &fd, &n, buf, sizeof(buf)), -EPIPE);
	cr_assert_eq(n, 0);
	n = 1;
	cr_assert_eq(ubt_recv_fds(sv[1], &fd, &n, NULL, 0), -EPIPE);
	cr_assert_eq(n, 0);
	cr_assert_eq(fd, -1);
	close(sv[1]);
}

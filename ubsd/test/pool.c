/* SPDX-License-Identifier: MIT */
/*
 * pool.c - ubsd's memory pool against a private daemon: a lease is a
 * mappable memfd of the granule-rounded size, counted by `ubsctl mem`;
 * the service quota (also when changed at run time) and the pool size
 * refuse further leases; a session's leases come back when its process is
 * killed with SIGKILL (not while it lives on without its session), and a
 * segment lent again reads as zeros; a lease needs a session and can be
 * returned.
 */
#include <criterion/criterion.h>

#include <sys/mman.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "support/dtest.h"
#include "support/rvtest.h"

#define MiB (1ull << 20)

static char ubsd_path[PATH_MAX], ubsctl_path[PATH_MAX];

static void start(const char *conf)
{
	dt_bin_path(ubsd_path, sizeof(ubsd_path), "ubsd");
	dt_bin_path(ubsctl_path, sizeof(ubsctl_path), "ubsctl");
	dt_make_run_dir("/tmp/ubsd-pool.XXXXXX");
	write_file("ubs.conf", conf);
	dt_start_daemon(ubsd_path);
}

static void teardown(void)
{
	dt_reap_kids();
	dt_teardown();
}

/* Ask for bytes on session fd; returns the segment fd (reply in *seg), or
 * -errno of an ERROR reply. */
static int lease(int fd, uint64_t bytes, struct ctl_mem_seg *seg)
{
	struct ctl_mem_lease m = { .bytes = bytes };
	unsigned char body[CTL_MAX_BODY];
	struct ctl_hdr h;
	int fds[CTL_MAX_FDS], nfds = CTL_MAX_FDS;

	dt_send(fd, CTL_REQ_MEM_LEASE, &m, sizeof(m), NULL, 0);
	REQUIRE(dt_recv(fd, &h, body, fds, &nfds) == 0);
	if (h.type == CTL_R_ERROR) {
		struct ctl_error e;

		REQUIRE(nfds == 0);
		memcpy(&e, body, sizeof(e));
		return -e.err;
	}
	REQUIRE(h.type == CTL_R_MEM_SEG && nfds == 1);
	memcpy(seg, body, sizeof(*seg));
	return fds[0];
}

/* `ubsctl --json mem` into out. */
static void mem_json(char *out)
{
	const char *args[] = { "--json", "mem", NULL };

	REQUIRE(dt_run_ubsctl(ubsctl_path, args, out, NULL, NULL) == 0);
}

/* The number after "key": in s (first occurrence), or -1. */
static long long json_num(const char *s, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(s, pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

Test(pool, lease_is_a_mappable_segment_counted_by_ubsctl, .fini = teardown)
{
	struct ctl_mem_seg seg;
	char out[OUT_MAX], pid[128];
	struct stat st;
	int s, fd;
	unsigned char *p;

	start("[daemon]\npool_size = 8M\n");
	s = dt_hello("svc-a");
	fd = lease(s, 1 * MiB, &seg);
	cr_assert_geq(fd, 0, "lease refused: %s", strerror(-fd));
	cr_assert_eq(seg.size, 2 * MiB, "rounded to the 2 MiB granule");
	cr_assert_eq(seg.flags & CTL_MEM_REUSED, 0);
	REQUIRE(fstat(fd, &st) == 0);
	cr_assert_eq((uint64_t)st.st_size, seg.size);
	cr_assert_eq(st.st_mode & 0777, 0600, "segments are 0600");
	p = mmap(NULL, seg.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	REQUIRE(p != MAP_FAILED);
	cr_assert_eq(p[0] | p[seg.size - 1], 0, "a new segment is zero");
	memset(p, 0x5a, seg.size);
	/* A borrower cannot shrink it under another mapping. */
	cr_assert_eq(ftruncate(fd, 4096), -1);

	mem_json(out);
	cr_assert_eq(json_num(out, "size"), 8 * MiB, "%s", out);
	cr_assert_eq(json_num(out, "used"), 2 * MiB, "%s", out);
	cr_assert_eq(json_num(out, "free"), 6 * MiB, "%s", out);
	cr_assert(strstr(out, "\"hugepages\":false"), "%s", out);
	snprintf(pid, sizeof(pid), "{\"pid\":%d,\"service\":\"svc-a\","
		 "\"segments\":1,\"bytes\":%llu}", getpid(), 2 * MiB);
	cr_assert(strstr(out, pid), "%s lacks %s", out, pid);
	cr_assert(strstr(out, "{\"name\":\"svc-a\",\"mem_quota\":0,"
			 "\"used\":2097152,\"holders\":1}"), "%s", out);
	munmap(p, seg.size);
	close(fd);
	close(s);
}

Test(pool, quota_and_pool_size_refuse_further_leases, .fini = teardown)
{
	struct ctl_mem_seg seg;
	const char *up[] = { "service", "q", "set", "mem_quota=6M", NULL };
	const char *down[] = { "service", "q", "set", "mem_quota=2M", NULL };
	char out[OUT_MAX];
	void *map;
	int s, t, fd;

	start("[daemon]\npool_size = 16M\n[service q]\nmem_quota = 4M\n");
	s = dt_hello("q");
	REQUIRE((fd = lease(s, 2 * MiB, &seg)) >= 0);
	close(fd);
	REQUIRE((fd = lease(s, 2 * MiB, &seg)) >= 0);
	close(fd);
	cr_assert_eq(lease(s, 1, &seg), -EDQUOT, "over mem_quota");
	/* Another process of the same service shares the quota. */
	t = dt_hello("q");
	cr_assert_eq(lease(t, 1, &seg), -EDQUOT, "quota is per service");

	/* Quotas changed at run time apply to the next lease. */
	REQUIRE(dt_run_ubsctl(ubsctl_path, up, out, NULL, NULL) == 0);
	REQUIRE((fd = lease(t, 2 * MiB, &seg)) >= 0);
	map = mmap(NULL, seg.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	REQUIRE(map != MAP_FAILED);
	close(fd);
	cr_assert_eq(lease(t, 1, &seg), -EDQUOT, "raised mem_quota");
	REQUIRE(dt_run_ubsctl(ubsctl_path, down, out, NULL, NULL) == 0);
	cr_assert_eq(lease(s, 1, &seg), -EDQUOT, "lowered mem_quota");

	/* A live process that closes its sessions: what it still maps
	 * stays counted, what it does not comes back. */
	close(s);
	close(t);
	mem_json(out);
	cr_assert_eq(json_num(out, "used"), 2 * MiB, "%s", out);

	/* Another service fills the rest of the pool, then no more. */
	t = dt_hello("other");
	REQUIRE((fd = lease(t, 14 * MiB, &seg)) >= 0);
	close(fd);
	cr_assert_eq(lease(t, 1, &seg), -ENOSPC, "pool exhausted");
	/* Unmapped at last: back. */
	munmap(map, 2 * MiB);
	REQUIRE((fd = lease(t, 2 * MiB, &seg)) >= 0);
	close(fd);
	close(t);
}

/* Child: lease 2 MiB, map it, then exec sleep (the session's fd is
 * close-on-exec, the mapping goes with the old image). */
static void execer(void *arg)
{
	int *pipes = arg;
	struct ctl_mem_seg seg;
	int s = dt_hello("execer"), fd = lease(s, 2 * MiB, &seg);

	REQUIRE(fd >= 0);
	REQUIRE(mmap(NULL, seg.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
		     0) != MAP_FAILED);
	REQUIRE(fcntl(s, F_SETFD, FD_CLOEXEC) == 0);
	REQUIRE(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0);
	dt_pipe_put(pipes[1], 1);
	execl("/bin/sleep", "sleep", "10", (char *)NULL);
	_exit(127);
}

Test(pool, exec_gives_the_lease_back_while_the_process_lives,
     .fini = teardown)
{
	char out[OUT_MAX];
	int up[2], go[2], i;
	pid_t kid;

	start("[daemon]\npool_size = 4M\n");
	kid = dt_spawn_piped(execer, up, up, go);
	REQUIRE(dt_pipe_get(up[0]) == 1);
	for (i = 0; i < 500; i++) {
		mem_json(out);
		if (json_num(out, "used") == 0)
			break;
		sleep_ms(10);
	}
	cr_assert_eq(json_num(out, "used"), 0, "not back after exec: %s",
		     out);
	cr_assert_eq(kill(kid, 0), 0, "the process lives on");
	kill(kid, SIGKILL);
	dt_reap(kid);
	close(up[0]);
	close(go[1]);
}

/* Child: lease 2 MiB, fill it with 0xab, say so, wait to be killed. */
static void holder(void *arg)
{
	int *pipes = arg;
	struct ctl_mem_seg seg;
	int s = dt_hello("victim"), fd = lease(s, 2 * MiB, &seg);
	unsigned char *p;

	REQUIRE(fd >= 0);
	p = mmap(NULL, seg.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	REQUIRE(p != MAP_FAILED);
	memset(p, 0xab, seg.size);
	dt_pipe_put(pipes[1], 1);
	pause();
}

Test(pool, kill9_gives_the_lease_back_and_it_is_lent_again_zeroed,
     .fini = teardown)
{
	struct ctl_mem_seg seg;
	char out[OUT_MAX];
	int up[2], go[2], s, fd, i;
	unsigned char *p;
	pid_t kid;

	start("[daemon]\npool_size = 2M\n");
	kid = dt_spawn_piped(holder, up, up, go);
	REQUIRE(dt_pipe_get(up[0]) == 1);
	mem_json(out);
	cr_assert_eq(json_num(out, "used"), 2 * MiB, "%s", out);
	s = dt_hello("next");
	cr_assert_eq(lease(s, 1, &seg), -ENOSPC, "the victim holds it all");

	REQUIRE(kill(kid, SIGKILL) == 0);
	REQUIRE(dt_reap(kid) != -1);
	close(up[0]);
	close(go[1]);
	for (i = 0; i < 500; i++) {
		mem_json(out);
		if (json_num(out, "used") == 0)
			break;
		sleep_ms(10);
	}
	cr_assert_eq(json_num(out, "used"), 0, "lease not reclaimed: %s",
		     out);
	cr_assert(strstr(out, "\"processes\":[]"), "%s", out);

	fd = lease(s, 2 * MiB, &seg);
	cr_assert_geq(fd, 0, "lease after reclaim: %s", strerror(-fd));
	cr_assert(seg.flags & CTL_MEM_REUSED, "the victim's segment again");
	p = mmap(NULL, seg.size, PROT_READ, MAP_SHARED, fd, 0);
	REQUIRE(p != MAP_FAILED);
	for (size_t k = 0; k < seg.size; k++)
		if (p[k])
			cr_assert_fail("byte %zu of a lent-again segment is "
				       "%#x, not 0", k, p[k]);
	munmap(p, seg.size);
	close(fd);
	close(s);
}

Test(pool, lease_needs_a_session_and_can_be_returned, .fini = teardown)
{
	struct ctl_mem_seg seg;
	struct ctl_mem_ref ref;
	char out[OUT_MAX];
	unsigned char *p;
	int s, fd;

	start("[daemon]\npool_size = 4M\n");
	s = dt_ctl_open();
	cr_assert_eq(lease(s, 1, &seg), -EPERM);
	close(s);

	s = dt_hello("ret");
	REQUIRE((fd = lease(s, 4 * MiB, &seg)) >= 0);
	/* Written by its borrower, which gives it back alive (memhooks
	 * does when jemalloc frees a whole segment)... */
	p = mmap(NULL, seg.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	REQUIRE(p != MAP_FAILED);
	memset(p, 0x5a, seg.size);
	munmap(p, seg.size);
	close(fd);
	ref.seg_id = seg.seg_id + 1000;
	dt_send(s, CTL_REQ_MEM_RETURN, &ref, sizeof(ref), NULL, 0);
	dt_expect(s, CTL_R_ERROR, NULL, NULL);
	ref.seg_id = seg.seg_id;
	dt_send(s, CTL_REQ_MEM_RETURN, &ref, sizeof(ref), NULL, 0);
	dt_expect(s, CTL_R_OK, NULL, NULL);
	mem_json(out);
	cr_assert_eq(json_num(out, "used"), 0, "%s", out);
	/* ...and the next borrower gets it zeroed. */
	REQUIRE((fd = lease(s, 4 * MiB, &seg)) >= 0);
	cr_assert(seg.flags & CTL_MEM_REUSED);
	p = mmap(NULL, seg.size, PROT_READ, MAP_SHARED, fd, 0);
	REQUIRE(p != MAP_FAILED);
	for (size_t k = 0; k < seg.size; k += 512)
		if (p[k])
			cr_assert_fail("byte %zu of a returned segment lent "
				       "again is %#x, not 0", k, p[k]);
	munmap(p, seg.size);
	close(fd);
	close(s);
}

Test(pool, hugepages_configured_says_what_it_got, .fini = teardown)
{
	struct ctl_mem_seg seg;
	const char *args[] = { "mem", NULL };
	char out[OUT_MAX];
	int s, fd;
	unsigned char *p;

	start("[daemon]\npool_size = 4M\npool_hugepages = on\n");
	s = dt_hello("huge");
	REQUIRE((fd = lease(s, 2 * MiB, &seg)) >= 0);
	/* Either kind must be usable at once, without SIGBUS. */
	p = mmap(NULL, seg.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	REQUIRE(p != MAP_FAILED);
	memset(p, 1, seg.size);
	REQUIRE(dt_run_ubsctl(ubsctl_path, args, out, NULL, NULL) == 0);
	if (seg.flags & CTL_MEM_HUGE)
		cr_assert(strstr(out, "pages     hugepages\n"), "%s", out);
	else
		cr_assert(strstr(out, "hugepages configured, none free"),
			  "%s", out);
	munmap(p, seg.size);
	close(fd);
	close(s);
}

/* SPDX-License-Identifier: MIT */
/*
 * policy.c - the shared policy page: receivers cannot write it, a reader
 * racing the writer never sees a torn record, lookups fall back to the
 * default record, and the reader refuses pages it should not trust.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "policy.h"

static struct ubs_svc_policy rec(const char *name, uint32_t k)
{
	struct ubs_svc_policy p;

	memset(&p, 0, sizeof(p));
	snprintf(p.name, sizeof(p.name), "%s", name);
	p.accel = k & 1;
	p.spin_us = k;
	p.ring_kib = k;
	p.mem_quota = k;
	return p;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* fork() with the child dying with us; the child runs fn(fd). */
static pid_t child(int (*fn)(int), int fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		_exit(fn(fd));
	}
	return pid;
}

static int wait_ok(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A receiver of the fd: every way to write is refused, reading works. */
static int receiver(int fd)
{
	struct ubs_svc_policy p;
	struct ubt_seg s;
	void *w;
	char b = 0;

	w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (w != MAP_FAILED || errno != EPERM)
		return 1;
	if (pwrite(fd, &b, 1, UBT_SEG_HDR_SIZE) != -1 || errno != EPERM)
		return 2;
	if (ftruncate(fd, 0) != -1)
		return 3;
	if (pp_map(&s, fd) != 0)
		return 4;
	if (mprotect(s.base, 4096, PROT_READ | PROT_WRITE) != -1)
		return 5;
	if (pp_lookup(&s, "svc-a", &p) != 1 || p.spin_us != 7)
		return 6;
	return 0;
}

Test(policy, receivers_cannot_write_the_page, .timeout = 30)
{
	struct ubs_svc_policy d, a = rec("svc-a", 7);
	struct ubt_seg s;
	pid_t pid;
	int fd;

	cr_assert_eq(pp_create(&s), 0);
	pp_defaults(&d);
	cr_assert_eq(pp_publish(&s, &d, &a, 1), 0);
	/* The child must go through the fd alone: drop the inherited
	 * writable mapping in it by re-opening nothing but the fd. */
	fd = dup(s.fd);
	pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		munmap(s.base, s.size);
		_exit(receiver(fd));
	}
	cr_assert_eq(wait_ok(pid), 0);
	/* The writer's own mapping still writes. */
	a.spin_us = 8;
	cr_assert_eq(pp_publish(&s, &d, &a, 1), 0);
	close(fd);
	ubt_seg_unmap(&s);
}

static struct ubt_seg shared_seg;

/* Republish as fast as possible: every record all-k, k changing. */
static int writer(int secs)
{
	struct ubs_svc_policy d, v[64];
	uint64_t end = now_ms() + (uint64_t)secs * 1000;
	uint32_t k = 0, i;

	while (now_ms() < end) {
		k++;
		d = rec("", k);
		for (i = 0; i < 64; i++) {
			char n[16];

			snprintf(n, sizeof(n), "svc-%u", i);
			v[i] = rec(n, k);
		}
		if (pp_publish(&shared_seg, &d, v, 64 - (k & 1)))
			return 1;
	}
	return 0;
}

Test(policy, concurrent_reader_never_sees_a_torn_record, .timeout = 30)
{
	struct ubs_svc_policy p;
	uint64_t end, reads = 0, changes = 0, last = 0, rs = 1;
	struct ubt_seg r;
	pid_t pid;

	cr_assert_eq(pp_create(&shared_seg), 0);
	p = rec("", 0);
	cr_assert_eq(pp_publish(&shared_seg, &p, NULL, 0), 0);
	cr_assert_eq(pp_map(&r, dup(shared_seg.fd)), 0);
	pid = child(writer, 1);
	end = now_ms() + 1000;
	while (now_ms() < end) {
		char n[16];
		int got;

		rs = rs * 6364136223846793005ull + 1442695040888963407ull;
		snprintf(n, sizeof(n), "svc-%u", (unsigned)(rs >> 58));
		got = pp_lookup(&r, n, &p);
		if (got == -EAGAIN)
			continue;
		cr_assert_geq(got, 0);
		reads++;
		/* One publish, one value: any mix of two is a torn read. */
		cr_assert_eq(p.ring_kib, p.spin_us, "torn: %u vs %u",
			     p.ring_kib, p.spin_us);
		cr_assert_eq(p.mem_quota, p.spin_us);
		cr_assert_eq(p.accel, p.spin_us & 1);
		if (got == 1)
			cr_assert_str_eq(p.name, n);
		if (p.spin_us != last)
			changes++;
		last = p.spin_us;
	}
	cr_assert_eq(wait_ok(pid), 0);
	cr_assert_gt(reads, 10000);
	cr_assert_gt(changes, 100, "the reader must really race the writer");
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&shared_seg);
}

Test(policy, unknown_service_gets_the_default)
{
	struct ubs_svc_policy d, a = rec("svc-a", 3), p;
	struct ubt_seg s, r;
	uint64_t g;

	cr_assert_eq(pp_create(&s), 0);
	cr_assert_eq(pp_map(&r, dup(s.fd)), 0);
	pp_defaults(&d);
	d.spin_us = 11;
	g = pp_generation(&r);
	cr_assert_eq(pp_publish(&s, &d, &a, 1), 0);
	cr_assert_eq(pp_generation(&r), g + 1);
	cr_assert_eq(pp_lookup(&r, "svc-a", &p), 1);
	cr_assert_eq(p.spin_us, 3);
	cr_assert_eq(pp_lookup(&r, "other", &p), 0);
	cr_assert_eq(p.spin_us, 11);
	cr_assert_str_eq(p.name, "");
	cr_assert_eq(pp_lookup(&r, "", &p), 0);
	{
		uint32_t hint = 99;     /* stale hint: falls back to the scan */

		cr_assert_eq(pp_lookup_hint(&r, "svc-a", &p, &hint), 1);
		cr_assert_eq(hint, 0);
		cr_assert_eq(p.spin_us, 3);
		cr_assert_eq(pp_lookup_hint(&r, "svc-a", &p, &hint), 1);
		cr_assert_eq(pp_lookup_hint(&r, "other", &p, &hint), 0);
		cr_assert_eq(p.spin_us, 11);
	}
	cr_assert_eq(pp_publish(&s, &d, &a, UBS_POLICY_MAX_SVC + 1), -E2BIG);
	ubt_seg_unmap(&r);
	ubt_seg_unmap(&s);
}

Test(policy, reader_refuses_other_segments)
{
	struct ubt_seg d, r;

	cr_assert_eq(ubt_seg_create(&d, 1 << 16, UBT_SEG_DATA, "x"), 0);
	/* Not sealed against writers: a peer could still change it. */
	cr_assert_eq(pp_map(&r, d.fd), -EPERM);
	/* Refusal leaves the fd open and the caller's. */
	cr_assert_geq(fcntl(d.fd, F_GETFD), 0);
	ubt_seg_unmap(&d);
}

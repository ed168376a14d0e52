/* SPDX-License-Identifier: MIT */
/* helpers.h - shared by the transport tests: processes, patterns, pairs. */
#ifndef UBT_TEST_HELPERS_H
#define UBT_TEST_HELPERS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

#include "ubt.h"

/* In a forked child (no Criterion there): report and exit non-zero. */
#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "%s:%d: child check failed: %s\n", __FILE__, \
		__LINE__, #cond); _exit(3); } } while (0)

/* Fork; the child runs fn(arg) and exits with its return value. */
pid_t th_fork(int (*fn)(void *), void *arg);
/* Wait up to timeout_ms for pid; on timeout kill -9 it and return -1.
 * Otherwise return its exit code (128+sig if killed by a signal). */
int th_wait(pid_t pid, int timeout_ms);

/* Deterministic content: byte at stream position pos for a seed. */
void th_fill(uint64_t seed, uint64_t pos, uint8_t *buf, size_t len);
/* 0 if buf holds the content th_fill would write, else the first bad
 * offset + 1. */
size_t th_verify(uint64_t seed, uint64_t pos, const uint8_t *buf, size_t len);

/* xorshift64* */
static inline uint64_t th_rand(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

/* Log-uniform size in [1, max]. */
size_t th_logsize(uint64_t *s, size_t max);

uint64_t th_now_ms(void);

/*
 * Set up a channel the way two processes do: the parent creates it, the
 * child receives the segment and the parent's eventfd over a Unix socket,
 * attaches, and sends its own eventfd back.  Returns the child's pid; the
 * child runs fn(c) on its attached channel and exits with its result.
 */
pid_t th_chan_pair(struct ubt_chan *c, const struct ubt_ring_desc *spec,
		   uint32_t nrings, int (*fn)(struct ubt_chan *c, void *arg),
		   void *arg);

/* Anonymous memory shared with children forked later (cr_asserts). */
void *th_shared(size_t size);
/* In a child: die with the parent, and return a pidfd watching it. */
int th_watch_parent(void);
/* State letter ('R', 'S', 'Z', 'T'...) of thread tid of process pid (for a
 * process's main thread tid = pid), '?' if unknown. */
char th_task_state(pid_t pid, pid_t tid);

/* A ring in private, page-aligned memory: one process plays both ends. */
struct ubt_ring *th_local_ring(uint32_t kind, uint64_t size,
			       uint32_t entry_size);

#endif

/* SPDX-License-Identifier: MIT */
/* ubt_int.h - private helpers of the transport, not part of its API. */
#ifndef UBT_INT_H
#define UBT_INT_H

#include <stdint.h>
#include <time.h>

static inline uint64_t ubt_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void ubt_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

#define UBT_REC_HDR 8u     /* record header in MSG rings: len, tag */

/* Ring bytes taken by a record of len payload bytes (8-byte aligned). */
static inline uint64_t ubt_rec_size(uint64_t len)
{
	return UBT_REC_HDR + ((len + 7) & ~7ull);
}

/* The calling process's pid, cached and refreshed after fork. */
uint32_t ubt_self_pid(void);

/* Doorbell: a shared word epoch<<32 | waiters, and the waiter's eventfd. */
void ubt_db_notify(struct ubt_ring *r, _Atomic uint64_t *db, int efd);
/* Claim db's waiters and write their tokens to efd: 1 if written. */
int ubt_db_ring(_Atomic uint64_t *db, int efd);
/* Withdraw a registration made at epoch key: 1 if it had been claimed
 * (its token is then taken from efd), else 0. */
int ubt_db_cancel(_Atomic uint64_t *db, uint32_t key, int efd);

#endif

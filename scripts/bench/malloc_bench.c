/* SPDX-License-Identifier: MIT */
/*
 * malloc_bench.c - a malloc/free micro-benchmark for scripts/bench-malloc,
 * after glibc's bench-malloc-thread: each thread keeps a working set of
 * slots and, per step, frees a random one and allocates a new block of a
 * random size in its place (touching its first byte).
 *
 *   ubs-malloc-bench small THREADS STEPS   sizes 16..1024, 1024 slots
 *   ubs-malloc-bench big THREADS STEPS     1 MiB blocks, 8 slots
 *
 * Prints the nanoseconds per step (wall time / STEPS: the threads run
 * side by side).  Which allocator runs is the environment's business
 * (LD_PRELOAD).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int big;
static long steps;
static pthread_barrier_t go;

static void *worker(void *arg)
{
	uint64_t x = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
	size_t nslots = big ? 8 : 1024;
	void *slots[1024] = { 0 };

	pthread_barrier_wait(&go);
	for (long i = 0; i < steps; i++) {
		size_t k, n;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		k = (size_t)(x % nslots);
		n = big ? (1u << 20) : 16 + (size_t)((x >> 20) % 1009);
		free(slots[k]);
		slots[k] = malloc(n);
		if (!slots[k])
			abort();
		*(volatile char *)slots[k] = 1;
	}
	for (size_t k = 0; k < nslots; k++)
		free(slots[k]);
	return NULL;
}

int main(int argc, char **argv)
{
	struct timespec a, b;
	pthread_t t[64];
	int n;

	if (argc != 4 || (strcmp(argv[1], "small") && strcmp(argv[1], "big")))
		return 2;
	big = !strcmp(argv[1], "big");
	n = atoi(argv[2]);
	steps = atol(argv[3]);
	if (n < 1 || n > 64 || steps < 1)
		return 2;
	pthread_barrier_init(&go, NULL, (unsigned)n + 1);
	for (int i = 0; i < n; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
	clock_gettime(CLOCK_MONOTONIC, &a);
	pthread_barrier_wait(&go);
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 +
			  (b.tv_nsec - a.tv_nsec)) / (double)steps);
	return 0;
}

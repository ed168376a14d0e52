/* SPDX-License-Identifier: MIT */
/*
 * pp_bench.c - cost of reading a service's record from the policy page, as
 * the preload does on connect/accept: no syscall, a seqlock-guarded copy.
 * Prints ns per lookup for the default record, the first and the last of
 * N services.  Usage: ubs-pp-bench [NSERVICES] [LOOKUPS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "policy.h"

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* ns per pp_lookup(name), over n lookups. */
static double cost(const struct ubt_seg *r, const char *name, long n,
		   int hinted)
{
	struct ubs_svc_policy p;
	uint32_t hint = 0;
	double t0 = now_ns();
	long i;
	int sink = 0;

	for (i = 0; i < n; i++)
		sink += pp_lookup_hint(r, name, &p, hinted ? &hint : NULL) +
			(int)p.spin_us;
	if (sink == 42)
		puts("");
	return (now_ns() - t0) / (double)n;
}

int main(int argc, char **argv)
{
	int nsvc = argc > 1 ? atoi(argv[1]) : 64;
	long n = argc > 2 ? atol(argv[2]) : 5000000;
	struct ubs_svc_policy d, *v;
	struct ubt_seg w, r;
	char last[32];
	int i;

	if (nsvc < 1 || nsvc > UBS_POLICY_MAX_SVC || n < 1) {
		fprintf(stderr, "usage: ubs-pp-bench [1..%d] [lookups]\n",
			UBS_POLICY_MAX_SVC);
		return 2;
	}
	v = calloc((size_t)nsvc, sizeof(*v));
	if (!v || pp_create(&w) || pp_map(&r, dup(w.fd))) {
		fprintf(stderr, "ubs-pp-bench: cannot create the page\n");
		return 1;
	}
	pp_defaults(&d);
	for (i = 0; i < nsvc; i++) {
		v[i] = d;
		snprintf(v[i].name, sizeof(v[i].name), "service-%d", i);
	}
	pp_publish(&w, &d, v, (uint32_t)nsvc);
	snprintf(last, sizeof(last), "service-%d", nsvc - 1);
	printf("policy lookup, %d services, %ld lookups each\n", nsvc, n);
	printf("  unknown name (default)   %6.1f ns\n", cost(&r, "nope", n, 0));
	printf("  first service            %6.1f ns\n",
	       cost(&r, "service-0", n, 0));
	printf("  last service, scan       %6.1f ns\n", cost(&r, last, n, 0));
	printf("  last service, hinted     %6.1f ns\n", cost(&r, last, n, 1));
	return 0;
}

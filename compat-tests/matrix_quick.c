/* SPDX-License-Identifier: MIT */
/*
 * matrix_quick.c - CI's subset of the compatibility matrix: runs
 * `compat-tests/matrix --quick` (redis-cli, nginx + curl, python asyncio
 * echo, socat and postgres with pgbench (a server that forks its
 * backends, as another user), each both preloaded, server only, client
 * only, neither and across two namespaces; about 13 s) into a temporary
 * folder, and
 * passes when the runner does: every cell's data right, UB 100% where
 * both ends are preloaded, 0% elsewhere, confirmed by the kernel's
 * counters.  The runner finds the build tree from this binary's path
 * (BUILD) and the library from UBS_PRELOAD_LIB when set.  Needs root,
 * like the runner (network namespaces).
 */
#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef UBS_TOP
#error "UBS_TOP: the source tree, set by compat-tests/Makefile"
#endif

/* The build tree this binary belongs to: BUILD/tests/THIS -> BUILD. */
static void build_dir(char *out, size_t n)
{
	ssize_t len = readlink("/proc/self/exe", out, n - 1);
	char *slash;

	cr_assert(len > 0, "readlink /proc/self/exe");
	out[len] = '\0';
	for (int i = 0; i < 2; i++) {
		slash = strrchr(out, '/');
		cr_assert(slash, "no folder in %s", out);
		*slash = '\0';
	}
}

Test(compat_matrix, quick, .timeout = 120)
{
	char build[PATH_MAX], tmp[] = "/tmp/ubs-matrix-quick.XXXXXX", cmd[3 * PATH_MAX];
	char line[1024], out[16384] = "";
	size_t used = 0;
	FILE *p;
	int st;

	cr_assert(geteuid() == 0, "the matrix needs root (network namespaces)");
	build_dir(build, sizeof(build));
	cr_assert(mkdtemp(tmp), "mkdtemp");
	snprintf(cmd, sizeof(cmd),
		 "BUILD='%s' timeout -k 5 100 '%s/compat-tests/matrix' --quick"
		 " --out '%s' --logs '%s/logs' 2>&1", build, UBS_TOP, tmp, tmp);
	p = popen(cmd, "r");
	cr_assert(p, "popen");
	while (fgets(line, sizeof(line), p)) {
		size_t l = strlen(line);

		if (used + l >= sizeof(out))    /* keep the last lines */
			used = 0;
		memcpy(out + used, line, l + 1);
		used += l;
	}
	st = pclose(p);
	if (st == 0) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
		if (system(cmd) != 0)
			cr_log_warn("could not remove %s", tmp);
	}
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "compat-tests/matrix --quick: status %d (logs kept in %s):\n%s",
		  st, tmp, out);
}

/* SPDX-License-Identifier: MIT */
/*
 * memhooks.c - the malloc router and the pool arena, with a private ubsd:
 * scenarios of mhcase under the preload (every malloc-family function,
 * frees from another thread, quota fallback, fork snapshot, pool off by
 * default, pool on by service policy), a lease reclaimed after kill -9,
 * a restarted ubsd told what a live process still maps, and real programs
 * with the pool on (python3, redis-server under redis-benchmark with a
 * BGSAVE checked by redis-check-rdb, nginx master and workers under curl
 * and wrk, git status), each required to have really allocated from the
 * pool.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl_proto.h"
#include "ubs_stats.h"
#include "dtest.h"

#define RUN_MS 20000            /* any one program run */

static char ubsctl_path[PATH_MAX], ubsd_path[PATH_MAX];

static void start(const char *conf)
{
	dt_bin_path(ubsd_path, sizeof(ubsd_path), "ubsd");
	dt_bin_path(ubsctl_path, sizeof(ubsctl_path), "ubsctl");
	dt_make_run_dir("/tmp/ubs-mh.XXXXXX");
	write_file("ubs.conf", conf);
	dt_start_daemon(ubsd_path);
}

/* Process groups of the servers a test started (their forked workers
 * and BGSAVE children included), killed at its end whatever happened. */
static pid_t groups[4];
static int ngroups;

static void teardown(void)
{
	for (int i = 0; i < ngroups; i++) {
		kill(-groups[i], SIGKILL);
		while (waitpid(groups[i], NULL, 0) < 0 && errno == EINTR)
			;
	}
	ngroups = 0;
	dt_reap_kids();
	dt_teardown();
}

TestSuite(memhooks, .fini = teardown, .timeout = 60);

/*
 * Start argv under the preload with env (NULL-terminated "K=V" list)
 * added; its stdout into *out_fd (if not NULL), stdin from *in_fd (if not
 * NULL).  Dies with the test.
 */
static pid_t spawn(const char *const *argv, const char *const *env,
		   int *out_fd, int *in_fd, bool preload)
{
	int o[2], i[2];
	pid_t pid;

	REQUIRE(pipe2(o, O_CLOEXEC) == 0 && pipe2(i, O_CLOEXEC) == 0);
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		setpgid(0, 0);          /* its children die with it (teardown) */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (out_fd) {
			dup2(o[1], 1);
		} else {
			int null = open("/dev/null", O_WRONLY);

			dup2(null, 1);
		}
		dup2(i[0], 0);
		setenv("UBS_RUN_DIR", run_dir, 1);
		if (preload) {
			setenv("LD_PRELOAD", getenv("UBS_PRELOAD_LIB") ?
			       getenv("UBS_PRELOAD_LIB") : UBS_PRELOAD_DEFAULT,
			       1);
			/* What ubsrun sets: static TLS room for jemalloc. */
			setenv("GLIBC_TUNABLES",
			       "glibc.rtld.optional_static_tls=4096", 1);
		}
		for (; env && *env; env++)
			putenv((char *)*env);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	setpgid(pid, pid);
	if (ngroups < (int)(sizeof(groups) / sizeof(groups[0])))
		groups[ngroups++] = pid;
	close(o[1]);
	close(i[0]);
	if (out_fd)
		*out_fd = o[0];
	else
		close(o[0]);
	if (in_fd)
		*in_fd = i[1];
	else
		close(i[1]);
	return pid;
}

/* Read fd to EOF into buf (n bytes, NUL-terminated). */
static void drain(int fd, char *buf, size_t n)
{
	size_t have = 0;
	ssize_t r;

	while (have + 1 < n && (r = read(fd, buf + have, n - 1 - have)) > 0)
		have += (size_t)r;
	buf[have] = '\0';
	close(fd);
}

/* Run mhcase scenario name under the preload; its exit status. */
static int run_case(const char *name, const char *const *env, char *out,
		    size_t n)
{
	const char *argv[] = { MHCASE_PATH, name, NULL };
	int fd, st;
	pid_t pid = spawn(argv, env, &fd, NULL, true);

	drain(fd, out, n);
	st = dt_wait_exit(pid, RUN_MS);
	if (st < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	return st;
}

static void expect_case(const char *name, const char *const *env)
{
	char out[OUT_MAX];
	int st = run_case(name, env, out, sizeof(out));

	cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "mhcase %s: status %#x:\n%s", name, st, out);
}

/* `ubsctl --json ARGS...` output into out. */
static void ubsctl_json(char *out, const char *a1, const char *a2,
			const char *a3)
{
	const char *args[] = { "--json", a1, a2, a3, NULL };

	REQUIRE(dt_run_ubsctl(ubsctl_path, args, out, NULL, NULL) == 0);
}

/* The number after "key": in s, or -1. */
static long long json_num(const char *s, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(s, pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

/* Counter id of pid's stats page (left behind when it exited). */
static uint64_t stat_of(pid_t pid, enum ubs_stat_id id)
{
	char path[256];
	struct ubs_stats_page pg;
	int fd;

	snprintf(path, sizeof(path), "%s/stats/%d", run_dir, (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (pread(fd, &pg, sizeof(pg), 0) != (ssize_t)sizeof(pg))
		pg.ncounters = 0;
	close(fd);
	return id < pg.ncounters ? pg.counters[id] : 0;
}

static const char *const pool_1k[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=1024",
				       NULL };

Test(memhooks, every_malloc_family_function_routes_by_size)
{
	start("[daemon]\npool_size = 64M\n");
	expect_case("family", pool_1k);
}

Test(memhooks, pool_blocks_freed_by_another_thread)
{
	start("[daemon]\npool_size = 64M\n");
	expect_case("threads", pool_1k);
}

Test(memhooks, quota_exhausted_falls_back_to_ordinary_memory)
{
	const char *env[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=1024",
			      "UBS_SERVICE=mhq", NULL };

	start("[daemon]\npool_size = 64M\n[service mhq]\nmem_quota = 4M\n");
	expect_case("quota", env);
}

Test(memhooks, fork_child_gets_a_snapshot)
{
	start("[daemon]\npool_size = 64M\n");
	expect_case("fork", pool_1k);
}

Test(memhooks, call_site_policy_selects_by_caller)
{
	const char *env[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=1024",
			      "UBS_MEM_SITES=mh_site_alloc,libc.so.6", NULL };

	start("[daemon]\npool_size = 64M\n");
	expect_case("sites", env);
}

/* The policy names a function some frames above malloc, with helpers
 * between: up to 8 frames count, from threads and a signal handler. */
Test(memhooks, call_site_policy_sees_callers_up_the_stack)
{
	const char *env[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=1024",
			      "UBS_MEM_SITES=mh_deep_caller", NULL };

	start("[daemon]\npool_size = 64M\n");
	expect_case("deep", env);
}

/* The same call-site policy from the service's policy in ubsd
 * (mem_sites), no environment. */
Test(memhooks, call_site_policy_from_the_service)
{
	const char *env[] = { "UBS_SERVICE=mhs", NULL };

	start("[daemon]\npool_size = 64M\n[service mhs]\nmem_pool = 1K\n"
	      "mem_sites = mh_site_alloc,libc.so.6\n");
	expect_case("sites", env);
}

Test(memhooks, pool_is_off_unless_asked)
{
	const char *env[] = { "UBS_SERVICE=mhoff", NULL };
	const char *env_off[] = { "UBS_MEM_POOL=0", "UBS_SERVICE=mhp", NULL };

	start("[daemon]\npool_size = 64M\n[service mhp]\nmem_pool = 1K\n");
	expect_case("off", env);
	/* The environment overrides the service policy. */
	expect_case("off", env_off);
}

Test(memhooks, without_static_tls_room_the_pool_stays_off)
{
	const char *env[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=1024",
			      "GLIBC_TUNABLES=", NULL };

	start("[daemon]\npool_size = 64M\n");
	expect_case("off", env);
}

Test(memhooks, service_policy_turns_the_pool_on)
{
	const char *env[] = { "UBS_SERVICE=mhp", NULL };

	start("[daemon]\npool_size = 64M\n[service mhp]\nmem_pool = 1K\n");
	expect_case("family", env);
}

Test(memhooks, kill9_gives_the_lease_back)
{
	const char *argv[] = { MHCASE_PATH, "hold", NULL };
	char out[OUT_MAX], line[64];
	int ofd, ifd, i;
	ssize_t r;
	pid_t pid;

	start("[daemon]\npool_size = 64M\n");
	pid = spawn(argv, pool_1k, &ofd, &ifd, true);
	r = read(ofd, line, sizeof(line) - 1);   /* bounded: it prints */
	cr_assert_gt(r, 0);
	line[r] = '\0';
	cr_assert(strncmp(line, "READY", 5) == 0, "%s", line);
	ubsctl_json(out, "mem", NULL, NULL);
	cr_assert_geq(json_num(out, "used"), 4ll << 20, "%s", out);
	snprintf(line, sizeof(line), "{\"pid\":%d,", (int)pid);
	cr_assert(strstr(out, line), "%s lacks %s", out, line);

	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(ofd);
	close(ifd);
	for (i = 0; i < 500; i++) {
		ubsctl_json(out, "mem", NULL, NULL);
		if (json_num(out, "used") == 0)
			break;
		sleep_ms(10);
	}
	cr_assert_eq(json_num(out, "used"), 0, "not reclaimed: %s", out);
	cr_assert(strstr(out, "\"processes\":[]"), "%s", out);
}

/* Read one line of fd (bounded by the reads of a live child) into buf. */
static void read_line(int fd, char *buf, size_t n)
{
	size_t have = 0;

	while (have + 1 < n && read(fd, buf + have, 1) == 1 &&
	       buf[have] != '\n')
		have++;
	buf[have] = '\0';
}

/* Bytes ubsd counts for pid (its holder record), or -1. */
static long long held_by(const char *json, pid_t pid)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "{\"pid\":%d,", (int)pid);
	p = strstr(json, pat);
	return p ? json_num(p, "bytes") : -1;
}

/* `ubsctl service NAME set KV`, which must succeed. */
static void service_set(const char *name, const char *kv)
{
	const char *args[] = { "service", name, "set", kv, NULL };
	char out[OUT_MAX];

	REQUIRE(dt_run_ubsctl(ubsctl_path, args, out, NULL, NULL) == 0);
}

/* One round of mhcase follow: where its 256 KiB and 4 KiB blocks went. */
static void follow_round(int in, int out, char *line, size_t n)
{
	REQUIRE(write(in, "x\n", 2) == 2);
	read_line(out, line, n);
}

/*
 * A running process follows `ubsctl service set`: mem_pool off sends its
 * allocations to its own allocator from its next one; on again, back to
 * the pool from its next allocation of 128 KiB or more (the small ones
 * follow it); a threshold of 64K keeps 4 KiB blocks out; mem_sites
 * naming mh_site_alloc lets only its blocks in, `any` all again.
 * Columns: 256 KiB, 4 KiB, 4 KiB from mh_site_alloc.
 */
Test(memhooks, policy_changes_reach_a_running_process)
{
	const char *argv[] = { MHCASE_PATH, "follow", NULL };
	const char *env[] = { "UBS_SERVICE=mhf", NULL };
	char line[64];
	int ofd, ifd;
	pid_t pid;

	start("[daemon]\npool_size = 64M\n[service mhf]\nmem_pool = 1K\n");
	pid = spawn(argv, env, &ofd, &ifd, true);
	read_line(ofd, line, sizeof(line));
	cr_assert(strncmp(line, "READY", 5) == 0, "%s", line);
	follow_round(ifd, ofd, line, sizeof(line));
	cr_assert_str_eq(line, "POOL POOL POOL");

	service_set("mhf", "mem_pool=off");
	follow_round(ifd, ofd, line, sizeof(line));
	cr_assert_str_eq(line, "HEAP HEAP HEAP");
	follow_round(ifd, ofd, line, sizeof(line));
	cr_assert_str_eq(line, "HEAP HEAP HEAP");

	service_set("mhf", "mem_pool=on");
	follow_round(ifd, ofd, line, sizeof(line));
	cr_assert_str_eq(line, "POOL POOL POOL");

	service_set("mhf", "mem_pool=64K");
	follow_round(ifd, ofd, line, sizeof(line));
	cr_assert_str_eq(line, "POOL HEAP HEAP");

	service_set("mhf", "mem_pool=1K");
	service_set("mhf", "mem_sites=mh_site_alloc");
	follow_round(ifd, ofd, line, sizeof(line));
	cr_assert_str_eq(line, "HEAP HEAP POOL");

	service_set("mhf", "mem_sites=any");
	follow_round(ifd, ofd, line, sizeof(line));
	cr_assert_str_eq(line, "POOL POOL POOL");

	close(ifd);
	cr_assert_eq(dt_wait_exit(pid, RUN_MS), 0);
	close(ofd);
}

/*
 * Pool memory freed goes back to ubsd while the process runs: 40 MiB
 * held, then freed, and its lease in `ubsctl mem` shrinks to at most
 * 12 MiB (the arena's own metadata and what the last 4 MiB of frees left
 * dirty may stay); it then leases again as it needs.
 */
Test(memhooks, freed_pool_memory_goes_back_to_ubsd)
{
	const char *argv[] = { MHCASE_PATH, "release", NULL };
	char out[OUT_MAX], line[64];
	long long held, after;
	int ofd, ifd;
	pid_t pid;

	start("[daemon]\npool_size = 128M\n");
	pid = spawn(argv, pool_1k, &ofd, &ifd, true);
	read_line(ofd, line, sizeof(line));
	cr_assert(strncmp(line, "HELD", 4) == 0, "%s", line);
	ubsctl_json(out, "mem", NULL, NULL);
	held = held_by(out, pid);
	cr_assert_geq(held, 40ll << 20, "%s", out);

	REQUIRE(write(ifd, "x\n", 2) == 2);
	read_line(ofd, line, sizeof(line));
	cr_assert(strncmp(line, "FREED ", 6) == 0, "%s", line);
	cr_expect_leq(strtoll(line + 6, NULL, 10), 12ll << 20, "%s", line);
	ubsctl_json(out, "mem", NULL, NULL);
	after = held_by(out, pid);
	cr_assert(after > 0 && after <= 12ll << 20,
		  "held %lld, then %lld: %s", held, after, out);
	cr_assert_eq(json_num(out, "used"), after, "%s", out);

	REQUIRE(write(ifd, "x\n", 2) == 2);
	read_line(ofd, line, sizeof(line));
	cr_assert_str_eq(line, "AGAIN ok");
	close(ifd);
	cr_assert_eq(dt_wait_exit(pid, RUN_MS), 0);
	close(ofd);
}

/*
 * `ubsctl mem --sites PID` names where pool memory came from: the 3 MiB
 * block from case_hold (found in mhcase's .symtab) and three 8 KiB ones
 * from mh_site_alloc, each with its count and bytes.
 */
Test(memhooks, pool_call_sites_are_named)
{
	const char *argv[] = { MHCASE_PATH, "hold", NULL };
	char out[OUT_MAX], line[64], pid_s[16];
	const char *p;
	int ofd, ifd;
	ssize_t r;
	pid_t pid;

	start("[daemon]\npool_size = 64M\n");
	pid = spawn(argv, pool_1k, &ofd, &ifd, true);
	r = read(ofd, line, sizeof(line) - 1);   /* bounded: it prints */
	cr_assert_gt(r, 0);
	line[r] = '\0';
	cr_assert(strncmp(line, "READY", 5) == 0, "%s", line);
	snprintf(pid_s, sizeof(pid_s), "%d", (int)pid);
	ubsctl_json(out, "mem", "--sites", pid_s);
	p = strstr(out, "\"function\":\"mh_site_alloc\"");
	cr_assert(p, "no mh_site_alloc site in %s", out);
	while (p > out && *p != '{')
		p--;
	cr_expect_eq(json_num(p, "allocs"), 3, "%s", out);
	cr_expect_eq(json_num(p, "bytes"), 3 * 8192, "%s", out);
	cr_expect(strstr(p, "\"object\":\"" MHCASE_PATH "\""), "%s", out);
	p = strstr(out, "\"function\":\"case_hold\"");
	cr_assert(p, "no case_hold site in %s", out);
	while (p > out && *p != '{')
		p--;
	cr_expect_eq(json_num(p, "allocs"), 1, "%s", out);
	cr_expect_eq(json_num(p, "bytes"), 3 << 20, "%s", out);
	close(ifd);
	cr_assert_eq(dt_wait_exit(pid, RUN_MS), 0);
	close(ofd);
}


Test(memhooks, restarted_ubsd_counts_what_live_processes_still_map)
{
	const char *argv[] = { MHCASE_PATH, "hold", NULL };
	char out[OUT_MAX], line[64];
	long long before, after;
	int ofd, ifd, i;
	pid_t pid;

	start("[daemon]\npool_size = 64M\n");
	pid = spawn(argv, pool_1k, &ofd, &ifd, true);
	read_line(ofd, line, sizeof(line));
	cr_assert(strncmp(line, "READY", 5) == 0, "%s", line);
	ubsctl_json(out, "mem", NULL, NULL);
	before = held_by(out, pid);
	cr_assert_geq(before, 4ll << 20, "%s", out);

	/* A new daemon starts with nothing lent... */
	REQUIRE(kill(daemon_pid, SIGTERM) == 0);
	REQUIRE(waitpid(daemon_pid, NULL, 0) == daemon_pid);
	dt_start_daemon(ubsd_path);
	ubsctl_json(out, "mem", NULL, NULL);
	cr_assert_eq(json_num(out, "used"), 0, "%s", out);

	/* ...and learns at the process's next lease what it still maps. */
	REQUIRE(write(ifd, "more\n", 5) == 5);
	read_line(ofd, line, sizeof(line));
	cr_assert_str_eq(line, "MORE ok");
	ubsctl_json(out, "mem", NULL, NULL);
	after = held_by(out, pid);
	cr_assert_geq(after, before + (2ll << 20), "%s", out);
	cr_assert_eq(json_num(out, "used"), after, "%s", out);

	close(ifd);
	cr_assert_eq(dt_wait_exit(pid, RUN_MS), 0);
	close(ofd);
	for (i = 0; i < 500; i++) {
		ubsctl_json(out, "mem", NULL, NULL);
		if (json_num(out, "used") == 0)
			break;
		sleep_ms(10);
	}
	cr_assert_eq(json_num(out, "used"), 0, "%s", out);
}

Test(memhooks, python3_runs_a_script_on_the_pool)
{
	const char *argv[] = { "/usr/bin/python3", "-c",
		"import json, hashlib\n"
		"d = {str(i): 'x' * (i % 5000) for i in range(20000)}\n"
		"b = bytearray(3 << 20)\n"
		"for i in range(0, len(b), 4096): b[i] = i % 251\n"
		"s = json.dumps(d)\n"
		"print(len(d), len(s), hashlib.sha256(b).hexdigest()[:8])\n",
		NULL };
	const char *env[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=4096",
			      "UBS_SERVICE=mhpy", NULL };
	char out[OUT_MAX], want[OUT_MAX];
	int fd, st;
	pid_t pid;

	if (access(argv[0], X_OK) != 0)
		cr_skip_test("no %s", argv[0]);
	start("[daemon]\npool_size = 256M\n");
	/* The same script without the preload says what is right. */
	pid = spawn(argv, NULL, &fd, NULL, false);
	drain(fd, want, sizeof(want));
	REQUIRE(dt_wait_exit(pid, RUN_MS) == 0);

	pid = spawn(argv, env, &fd, NULL, true);
	drain(fd, out, sizeof(out));
	st = dt_wait_exit(pid, RUN_MS);
	cr_assert_eq(st, 0, "python3 under the pool: status %#x", st);
	cr_assert_str_eq(out, want);
	cr_assert_gt(stat_of(pid, UBS_STAT_MEM_POOL_ALLOCS), 100,
		     "python3 did not allocate from the pool");
	cr_assert_geq(stat_of(pid, UBS_STAT_MEM_POOL_LEASED), 4u << 20);
}

/* Can a TCP connection to 127.0.0.1:port be made? */
static bool port_open(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* A port nothing listens on (the kernel's pick, released). */
static int free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	REQUIRE(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
	close(fd);
	return ntohs(sa.sin_port);
}

/* redis-cli -p port ARGS (not preloaded); its output into out. */
static int redis_cli(int port, char *out, size_t n, const char *a1,
		     const char *a2)
{
	char p[16];
	const char *argv[] = { "/usr/bin/redis-cli", "-p", p, a1, a2, NULL };
	int fd, st;
	pid_t pid;

	snprintf(p, sizeof(p), "%d", port);
	pid = spawn(argv, NULL, &fd, NULL, false);
	drain(fd, out, n);
	st = dt_wait_exit(pid, RUN_MS);
	return st;
}

Test(memhooks, redis_bgsave_under_write_load_on_the_pool, .timeout = 90)
{
	char p[16], dir[128], out[OUT_MAX], rdb[192];
	const char *srv[] = { "/usr/bin/redis-server", "--port", p,
		"--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--dbfilename", "dump.rdb", "--logfile",
		"redis.log", NULL };
	const char *bench[] = { "/usr/bin/redis-benchmark", "-p", p, "-q",
		"-t", "set,lpush", "-n", "60000", "-r", "20000", "-d", "600",
		NULL };
	const char *check[] = { "/usr/bin/redis-check-rdb", rdb, NULL };
	const char *env[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=256",
			      "UBS_SERVICE=mhredis", NULL };
	int port, ofd, st, i;
	pid_t server, load, chk;

	if (access(srv[0], X_OK) || access(bench[0], X_OK) ||
	    access(check[0], X_OK) || access("/usr/bin/redis-cli", X_OK))
		cr_skip_test("redis tools missing");
	start("[daemon]\npool_size = 512M\n");
	port = free_port();
	snprintf(p, sizeof(p), "%d", port);
	snprintf(dir, sizeof(dir), "%s", run_dir);
	snprintf(rdb, sizeof(rdb), "%s/dump.rdb", run_dir);
	server = spawn(srv, env, NULL, NULL, true);
	for (i = 0; i < 500 && !port_open(port); i++) {
		cr_assert_eq(waitpid(server, NULL, WNOHANG), 0,
			     "redis-server exited at start");
		sleep_ms(10);
	}
	cr_assert(port_open(port), "redis-server does not listen");

	/* Fill, then BGSAVE while the benchmark writes on. */
	load = spawn(bench, NULL, &ofd, NULL, false);
	for (i = 0; i < 1000; i++) {
		REQUIRE(redis_cli(port, out, sizeof(out), "DBSIZE", NULL) ==
			0);
		if (atol(out) > 2000)
			break;
		sleep_ms(5);
	}
	REQUIRE(redis_cli(port, out, sizeof(out), "BGSAVE", NULL) == 0);
	cr_assert(strstr(out, "Background saving started"), "%s", out);
	for (i = 0; i < 2000; i++) {
		REQUIRE(redis_cli(port, out, sizeof(out), "INFO",
				  "persistence") == 0);
		if (strstr(out, "rdb_bgsave_in_progress:0"))
			break;
		sleep_ms(10);
	}
	cr_assert(strstr(out, "rdb_last_bgsave_status:ok"), "%s", out);
	drain(ofd, out, sizeof(out));
	st = dt_wait_exit(load, 60000);
	cr_assert_eq(st, 0, "redis-benchmark: %#x\n%s", st, out);

	/* The server really used the pool, and ubsd lists its lease. */
	snprintf(p, sizeof(p), "%d", (int)server);
	ubsctl_json(out, "stats", p, NULL);
	cr_assert_gt(json_num(out, "mem_pool_allocs"), 1000, "%s", out);
	cr_assert_gt(json_num(out, "mem_pool_bytes"), 0, "%s", out);
	ubsctl_json(out, "mem", NULL, NULL);
	snprintf(p, sizeof(p), "{\"pid\":%d,", (int)server);
	cr_assert(strstr(out, p), "%s lacks %s", out, p);

	/* The snapshot is a consistent dump. */
	chk = spawn(check, NULL, &ofd, NULL, false);
	drain(ofd, out, sizeof(out));
	st = dt_wait_exit(chk, RUN_MS);
	cr_assert_eq(st, 0, "redis-check-rdb: %#x\n%s", st, out);
	cr_assert(strstr(out, "RDB looks OK"), "%s", out);
	REQUIRE(redis_cli(port, out, sizeof(out), "PING", NULL) == 0);
	cr_assert(strstr(out, "PONG"), "%s", out);
}

/* Run argv (not preloaded unless preload, env added) in cwd-less mode to
 * its end; stdout into out.  Its exit status; *pid gets its pid. */
static int run_prog(const char *const *argv, const char *const *env,
		    bool preload, char *out, size_t n, pid_t *pidp)
{
	int fd, st;
	pid_t pid = spawn(argv, env, &fd, NULL, preload);

	drain(fd, out, n);
	st = dt_wait_exit(pid, RUN_MS);
	if (st < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	if (pidp)
		*pidp = pid;
	return st;
}

/* A file of n pseudo-random bytes at path. */
static void random_file(const char *path, size_t n)
{
	FILE *f = fopen(path, "we");
	uint32_t x = 2463534242u;

	REQUIRE(f);
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		fputc((int)(x & 0xff), f);
	}
	REQUIRE(fclose(f) == 0);
}

Test(memhooks, nginx_master_and_workers_serve_from_the_pool, .timeout = 90)
{
	char conf[256], text[2048], www[192], file[256], got[256], url[128];
	char out[OUT_MAX], pidf[192];
	const char *srv[] = { "/usr/sbin/nginx", "-p", run_dir, "-c", conf,
			      "-e", "/dev/null", NULL };
	const char *curl[] = { "/usr/bin/curl", "-sS", "--max-time", "15",
			       "-o", got, "-w", "%{http_code}", url, NULL };
	const char *wrk[] = { "/usr/bin/wrk", "-t1", "-c4", "-d1s", url,
			      NULL };
	const char *cmp[] = { "/usr/bin/cmp", file, got, NULL };
	const char *env[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=1024",
			      "UBS_SERVICE=mhnginx", NULL };
	int port, st, i;
	pid_t server;

	if (access(srv[0], X_OK) || access(curl[0], X_OK) ||
	    access(wrk[0], X_OK))
		cr_skip_test("nginx, curl or wrk missing");
	start("[daemon]\npool_size = 256M\n");
	port = free_port();
	snprintf(www, sizeof(www), "%s/www", run_dir);
	REQUIRE(mkdir(www, 0755) == 0);
	snprintf(file, sizeof(file), "%s/big.bin", www);
	random_file(file, 3 << 20);
	/* nginx's workers run as nobody: they must reach the file. */
	REQUIRE(chmod(run_dir, 0755) == 0 && chmod(file, 0644) == 0);
	snprintf(got, sizeof(got), "%s/big.got", run_dir);
	snprintf(pidf, sizeof(pidf), "%s/nginx.pid", run_dir);
	snprintf(text, sizeof(text),
		 "daemon off;\nmaster_process on;\nworker_processes 2;\n"
		 "pid %1$s;\nerror_log %2$s/nginx-error.log info;\n"
		 "events { worker_connections 256; }\n"
		 "http {\n    access_log off;\n"
		 "    client_body_temp_path %2$s/tmp;\n"
		 "    proxy_temp_path %2$s/tmp;\n"
		 "    fastcgi_temp_path %2$s/tmp;\n"
		 "    uwsgi_temp_path %2$s/tmp;\n"
		 "    scgi_temp_path %2$s/tmp;\n"
		 "    types { application/octet-stream bin; }\n"
		 "    server { listen 127.0.0.1:%3$d; root %4$s; }\n}\n",
		 pidf, run_dir, port, www);
	write_file("nginx.conf", text);
	snprintf(conf, sizeof(conf), "%s/nginx.conf", run_dir);
	server = spawn(srv, env, NULL, NULL, true);
	for (i = 0; i < 500 && !port_open(port); i++) {
		cr_assert_eq(waitpid(server, NULL, WNOHANG), 0,
			     "nginx exited at start");
		sleep_ms(10);
	}
	cr_assert(port_open(port), "nginx does not listen");

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/big.bin", port);
	st = run_prog(curl, NULL, false, out, sizeof(out), NULL);
	cr_assert_eq(st, 0, "curl: %#x", st);
	cr_assert_str_eq(out, "200");
	st = run_prog(cmp, NULL, false, out, sizeof(out), NULL);
	cr_assert_eq(st, 0, "the file came back different: %s", out);
	st = run_prog(wrk, NULL, false, out, sizeof(out), NULL);
	cr_assert_eq(st, 0, "wrk: %#x", st);
	cr_assert(strstr(out, " requests in "), "%s", out);
	cr_assert_null(strstr(out, "Socket errors"), "%s", out);
	cr_assert_null(strstr(out, "Non-2xx"), "%s", out);

	/* Master and workers (forked with pool memory) allocated from it. */
	ubsctl_json(out, "stats", "mhnginx", NULL);
	cr_assert_geq(json_num(strstr(out, "\"total\""), "processes"), 3,
		      "%s", out);
	cr_assert_gt(json_num(strstr(out, "\"total\""), "mem_pool_allocs"),
		     10, "%s", out);
	/* The master and its workers go in teardown (process group). */
}

Test(memhooks, git_status_on_the_pool)
{
	char repo[192], out[OUT_MAX], want[OUT_MAX], path[256];
	const char *init[] = { "/usr/bin/git", "-C", repo, "init", "-q", NULL };
	const char *add[] = { "/usr/bin/git", "-C", repo, "add", ".", NULL };
	const char *commit[] = { "/usr/bin/git", "-C", repo, "-c",
		"user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x",
		NULL };
	const char *status[] = { "/usr/bin/git", "-C", repo, "status",
				 "--porcelain=v1", "-uall", NULL };
	const char *env[] = { "UBS_MEM_POOL=1", "UBS_MEM_MIN=256",
			      "UBS_SERVICE=mhgit", NULL };
	pid_t pid;
	int st;

	if (access(init[0], X_OK))
		cr_skip_test("no git");
	start("[daemon]\npool_size = 256M\n");
	snprintf(repo, sizeof(repo), "%s/repo", run_dir);
	REQUIRE(mkdir(repo, 0755) == 0);
	REQUIRE(run_prog(init, NULL, false, out, sizeof(out), NULL) == 0);
	for (int i = 0; i < 200; i++) {
		snprintf(path, sizeof(path), "%s/f%03d.txt", repo, i);
		random_file(path, 100 + (size_t)i * 50);
	}
	REQUIRE(run_prog(add, NULL, false, out, sizeof(out), NULL) == 0);
	REQUIRE(run_prog(commit, NULL, false, out, sizeof(out), NULL) == 0);
	for (int i = 0; i < 200; i += 7) {
		snprintf(path, sizeof(path), "%s/f%03d.txt", repo, i);
		random_file(path, 99);
	}
	snprintf(path, sizeof(path), "%s/new.txt", repo);
	random_file(path, 10);

	REQUIRE(run_prog(status, NULL, false, want, sizeof(want), NULL) == 0);
	cr_assert(strstr(want, " M f000.txt") && strstr(want, "?? new.txt"),
		  "%s", want);
	st = run_prog(status, env, true, out, sizeof(out), &pid);
	cr_assert_eq(st, 0, "git status under the pool: %#x", st);
	cr_assert_str_eq(out, want);
	cr_assert_gt(stat_of(pid, UBS_STAT_MEM_POOL_ALLOCS), 10,
		     "git did not allocate from the pool");
}

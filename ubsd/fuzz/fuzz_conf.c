/* SPDX-License-Identifier: MIT */
/*
 * fuzz_conf.c - libFuzzer target for the configuration parser: the input
 * is written to a memfd and parsed with conf_load through /proc/self/fd.
 * Checks: the error message is a terminated string that names the file;
 * on success the table is sane (names valid, counts in range, values in
 * their ranges), and a failed load leaves the output table untouched.
 * Built by scripts/fuzz (clang -fsanitize=fuzzer,address,undefined).
 */
#include <sys/mman.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/socket.h>

#include "conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	static struct ubs_conf c, before;
	char err[CONF_ERR_MAX];
	int r;

	if (fd < 0) {
		fd = memfd_create("ubs.conf", MFD_CLOEXEC);
		if (fd < 0)
			abort();
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	if (ftruncate(fd, 0) < 0 ||
	    (size && pwrite(fd, data, size, 0) != (ssize_t)size))
		abort();

	memset(&c, 0xa5, sizeof(c));
	before = c;
	memset(err, 'x', sizeof(err));
	r = conf_load(path, &c, err, sizeof(err));
	if (r) {
		if (r >= 0 || !memchr(err, '\0', sizeof(err)) ||
		    strncmp(err, path, strlen(path)) != 0) {
			fprintf(stderr, "bad error report %d: %.*s\n", r,
				(int)sizeof(err), err);
			abort();
		}
		if (memcmp(&c, &before, sizeof(c)) != 0) {
			fprintf(stderr, "failed load changed the table\n");
			abort();
		}
		return 0;
	}
	if (c.nsvc > UBS_POLICY_MAX_SVC || c.deflt.name[0])
		abort();
	for (uint32_t i = 0; i < c.nsvc; i++) {
		const struct ubs_svc_policy *p = &c.svc[i];

		if (!conf_valid_name(p->name) ||
		    conf_find(&c, p->name) != p ||
		    p->spin_us > 1000000 || p->ring_kib < 4 ||
		    p->ring_kib > 65536 || (p->ring_kib & (p->ring_kib - 1))) {
			fprintf(stderr, "bad service record %u\n", i);
			abort();
		}
	}
	if (c.has_admin_group && !memchr(c.admin_group, '\0',
					  sizeof(c.admin_group)))
		abort();
	if (c.nexcl > UBS_POLICY_MAX_EXCL)
		abort();
	for (uint32_t i = 0; i < c.nexcl; i++) {
		const struct ubs_excl_rule *x = &c.excl[i];
		int ok;

		switch (x->kind) {
		case UBS_EXCL_ADDR:
			ok = (x->family == AF_INET && x->prefix <= 32) ||
			     (x->family == AF_INET6 && x->prefix <= 128);
			ok = ok && (x->port_hi == 0 ||
				    (x->port_lo >= 1 &&
				     x->port_lo <= x->port_hi));
			break;
		case UBS_EXCL_PORT:
			ok = x->port_lo >= 1 && x->port_lo <= x->port_hi;
			break;
		case UBS_EXCL_PROGRAM:
			ok = memchr(x->program, '\0', sizeof(x->program)) &&
			     conf_valid_name(x->program);
			break;
		default:
			ok = 0;
		}
		if (!ok) {
			fprintf(stderr, "bad exclude rule %u\n", i);
			abort();
		}
	}
	return 0;
}

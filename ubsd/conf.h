/* SPDX-License-Identifier: MIT */
/*
 * conf.h - ubsd's configuration file (/etc/ubs/ubs.conf): sections
 * [daemon], [default], [service NAME] and [exclude] of `key = value`
 * lines.  The
 * format is documented in ubsd/README.md and ubs.conf.example.
 *
 * conf_load is a pure function of the file (and of the group database for
 * admin_group): it fills a table or returns an error "FILE:LINE: message",
 * and never touches the daemon's state, so a reload can try a file and
 * keep the old table when it is bad.
 */
#ifndef UBS_CONF_H
#define UBS_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "policy.h"

#define CONF_DEFAULT_PATH "/etc/ubs/ubs.conf"
#define CONF_LINE_MAX 1024              /* bytes, newline excluded */
#define CONF_ERR_MAX  512               /* room for "FILE:LINE: message" */
#define CONF_KEY_MAX  32                /* longest key, NUL included */
#define CONF_POOL_SIZE_DEFAULT (256ull << 20) /* memory pool capacity */
#define CONF_BOARD_SLOTS_DEFAULT 1024   /* channel slots of each board */
#define CONF_BOARD_SLOTS_MAX 65536

struct ubs_conf {
	struct ubs_svc_policy deflt;    /* name "" */
	uint32_t nsvc;
	struct ubs_svc_policy svc[UBS_POLICY_MAX_SVC];
	bool has_admin_group;
	gid_t admin_gid;
	char admin_group[64];           /* as written in the file */
	bool cross_netns;               /* [daemon] cross_netns; built-in on */
	uint64_t pool_size;             /* [daemon] pool_size, bytes */
	bool pool_hugepages;            /* [daemon] pool_hugepages; off */
	uint32_t board_slots;           /* [daemon] board_slots, 0 = no
					 * boards; for boards made after */
	uint32_t nexcl;                 /* [exclude] rules, in file order */
	struct ubs_excl_rule excl[UBS_POLICY_MAX_EXCL];
};

/* The built-in configuration: default policy, no services, no group,
 * cross_netns on, CONF_BOARD_SLOTS_DEFAULT board slots. */
void conf_init(struct ubs_conf *c);

/*
 * Parse path into *c (overwritten in full only on success).  Returns 0, or
 * a negative errno with err set to "FILE:LINE: message" (or "FILE:
 * message" when the file cannot be read; -ENOENT when it does not exist).
 */
int conf_load(const char *path, struct ubs_conf *c, char *err, size_t errlen);

/*
 * Set one policy key (accel, spin_us, ring_kib, mem_quota,
 * mem_pool) of p from its
 * text value, as the file does.  Returns 0, -ENOENT for an unknown key or
 * -EINVAL for a bad value, with a message in err.  Shared with ubsd's
 * run-time SERVICE_SET so that both accept exactly the same input.
 */
int conf_set_key(struct ubs_svc_policy *p, const char *key,
		 const char *value, char *err, size_t errlen);

/* Is name a valid service name ([A-Za-z0-9._-]{1,63})? */
bool conf_valid_name(const char *name);

/* Find service name in c, or NULL. */
struct ubs_svc_policy *conf_find(struct ubs_conf *c, const char *name);

#endif /* UBS_CONF_H */

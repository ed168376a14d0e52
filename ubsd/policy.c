/* SPDX-License-Identifier: MIT */
/*
 * policy.c - the shared policy page (see policy.h).
 *
 * Writer (ubsd, the only one with a writable mapping):
 *   seq++ (odd) ; store records ; seq++ (even)
 * Reader (any process, read-only mapping):
 *   s1 = seq ; if odd retry ; copy record ; s2 = seq ; retry unless s1 == s2
 * The reader copies field by field through volatile-free memcpy between
 * two acquire loads of seq, with a fence before the second load, so a copy
 * that raced a writer is always detected and thrown away.
 */
#include <errno.h>
#include <string.h>

#include "policy.h"

#define PP_SIZE (UBT_SEG_HDR_SIZE + sizeof(struct ubs_policy_page))
#define PP_READ_TRIES 1000

static struct ubs_policy_page *page_of(const struct ubt_seg *s)
{
	return (struct ubs_policy_page *)(s->base + UBT_SEG_HDR_SIZE);
}

void pp_defaults(struct ubs_svc_policy *p)
{
	memset(p, 0, sizeof(*p));
	p->accel = 1;
	p->spin_us = 50;
	p->ring_kib = 1024;
	p->mem_quota = 0;
}

int pp_create(struct ubt_seg *s)
{
	struct ubs_svc_policy d;
	int err = ubt_seg_create(s, PP_SIZE, UBT_SEG_POLICY, "ubs-policy");

	if (err)
		return err;
	pp_defaults(&d);
	return pp_publish(s, &d, NULL, 0);
}

int pp_publish(struct ubt_seg *s, const struct ubs_svc_policy *deflt,
	       const struct ubs_svc_policy *svc, uint32_t n)
{
	struct ubs_policy_page *pg = page_of(s);
	uint64_t seq;

	if (n > UBS_POLICY_MAX_SVC)
		return -E2BIG;
	seq = atomic_load_explicit(&pg->seq, memory_order_relaxed);
	atomic_store_explicit(&pg->seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	pg->deflt = *deflt;
	pg->deflt.name[0] = '\0';
	if (n)
		memcpy(pg->svc, svc, sizeof(*svc) * n);
	pg->nsvc = n;
	atomic_store_explicit(&pg->seq, seq + 2, memory_order_release);
	return 0;
}

int pp_map(struct ubt_seg *s, int fd)
{
	int err = ubt_seg_map(s, fd, UBT_SEG_POLICY);

	if (err)
		return err;
	if (s->size < PP_SIZE) {
		s->fd = -1;             /* the caller keeps fd on failure */
		ubt_seg_unmap(s);
		return -EPROTO;
	}
	return 0;
}

uint64_t pp_generation(const struct ubt_seg *s)
{
	return atomic_load_explicit(&page_of(s)->seq, memory_order_acquire) / 2;
}

int pp_lookup(const struct ubt_seg *s, const char *name,
	      struct ubs_svc_policy *out)
{
	return pp_lookup_hint(s, name, out, NULL);
}

int pp_lookup_hint(const struct ubt_seg *s, const char *name,
		   struct ubs_svc_policy *out, uint32_t *hint)
{
	const struct ubs_policy_page *pg = page_of(s);
	int tries;

	for (tries = 0; tries < PP_READ_TRIES; tries++) {
		uint64_t s1, s2;
		uint32_t i, n;
		int found = 0;

		s1 = atomic_load_explicit(&((struct ubs_policy_page *)pg)->seq,
					  memory_order_acquire);
		if (s1 & 1)
			continue;
		n = pg->nsvc;
		if (n > UBS_POLICY_MAX_SVC)
			n = UBS_POLICY_MAX_SVC; /* torn or hostile: checked below */
		*out = pg->deflt;
		/* Where the name was last time first; a scan otherwise. */
		if (hint && *hint < n && name &&
		    strncmp(pg->svc[*hint].name, name, CTL_NAME_MAX) == 0) {
			*out = pg->svc[*hint];
			found = 1;
		}
		for (i = 0; !found && name && name[0] && i < n; i++) {
			if (strncmp(pg->svc[i].name, name, CTL_NAME_MAX) == 0) {
				*out = pg->svc[i];
				found = 1;
				if (hint)
					*hint = i;
			}
		}
		atomic_thread_fence(memory_order_acquire);
		s2 = atomic_load_explicit(&((struct ubs_policy_page *)pg)->seq,
					  memory_order_relaxed);
		if (s1 != s2)
			continue;
		if (pg->nsvc > UBS_POLICY_MAX_SVC)
			return -EPROTO;
		out->name[CTL_NAME_MAX - 1] = '\0';
		return found;
	}
	return -EAGAIN;
}

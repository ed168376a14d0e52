/* SPDX-License-Identifier: MIT */
/*
 * ctl_proto.c - the control-message validator: every malformed header or
 * body is refused with the documented errno, every well-formed one is
 * accepted, and random input never crashes it or gets through unchecked.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "ctl_proto.h"

static int check(uint16_t type, uint32_t len, const void *body)
{
	struct ctl_hdr h;
	const char *why;
	int r;

	ctl_fill(&h, type, len, 7);
	r = ctl_check(&h, body, &why);
	if (r)
		cr_assert_not_null(why, "a refusal must say why");
	return r;
}

Test(ctl_proto, well_formed_messages_pass)
{
	struct ctl_hello hello = { .pid = 1 };
	struct ctl_session s = { .pid = 1 };
	struct ctl_error e = { .err = EPERM };
	struct ctl_status st = { 0 };

	strcpy(hello.service, "redis");
	strcpy(s.service, "nginx");
	strcpy(e.msg, "no");
	cr_assert_eq(check(CTL_REQ_HELLO, sizeof(hello), &hello), 0);
	cr_assert_eq(check(CTL_REQ_STATUS, 0, NULL), 0);
	cr_assert_eq(check(CTL_REQ_SESSIONS, 0, ""), 0);
	cr_assert_eq(check(CTL_R_OK, 0, ""), 0);
	cr_assert_eq(check(CTL_R_END, 0, ""), 0);
	cr_assert_eq(check(CTL_R_ERROR, sizeof(e), &e), 0);
	cr_assert_eq(check(CTL_R_STATUS, sizeof(st), &st), 0);
	cr_assert_eq(check(CTL_R_SESSION, sizeof(s), &s), 0);
}

Test(ctl_proto, service_messages)
{
	struct ctl_service_set set = { .name = "svc-a" };
	struct ctl_service sv = { .name = "", .accel = 1 };
	struct ctl_policy pol = { .generation = 2 };

	strcpy(set.key, "accel");
	strcpy(set.value, "off");
	cr_assert_eq(check(CTL_REQ_SERVICES, 0, ""), 0);
	cr_assert_eq(check(CTL_REQ_POLICY_FD, 0, ""), 0);
	cr_assert_eq(check(CTL_REQ_SERVICE_SET, sizeof(set), &set), 0);
	cr_assert_eq(check(CTL_R_SERVICE, sizeof(sv), &sv), 0);
	cr_assert_eq(check(CTL_R_POLICY, sizeof(pol), &pol), 0);
	cr_assert_eq(check(CTL_REQ_SERVICES, 1, NULL), -EPROTO);
	cr_assert_eq(check(CTL_REQ_SERVICE_SET, sizeof(set) - 1, NULL),
		     -EPROTO);

	/* Each of the three strings must carry its NUL. */
	memset(set.name, 'n', sizeof(set.name));
	cr_assert_eq(check(CTL_REQ_SERVICE_SET, sizeof(set), &set), -EPROTO);
	strcpy(set.name, "svc-a");
	memset(set.key, 'k', sizeof(set.key));
	cr_assert_eq(check(CTL_REQ_SERVICE_SET, sizeof(set), &set), -EPROTO);
	strcpy(set.key, "accel");
	memset(set.value, 'v', sizeof(set.value));
	cr_assert_eq(check(CTL_REQ_SERVICE_SET, sizeof(set), &set), -EPROTO);
	memset(sv.name, 's', sizeof(sv.name));
	cr_assert_eq(check(CTL_R_SERVICE, sizeof(sv), &sv), -EPROTO);
}

Test(ctl_proto, memory_pool_messages)
{
	struct ctl_mem_lease l = { .bytes = 1 };
	struct ctl_mem_ref r = { .seg_id = 1 };
	struct ctl_mem_seg seg = { .seg_id = 1, .size = 2 };
	struct ctl_mem_pool pool = { .size = 1 };
	struct ctl_mem_service sv = { .name = "svc" };
	struct ctl_mem_holder hd = { .pid = 1, .service = "svc" };

	cr_assert_eq(check(CTL_REQ_MEM_LEASE, sizeof(l), &l), 0);
	cr_assert_eq(check(CTL_REQ_MEM_CLAIM, sizeof(l), &l), 0);
	cr_assert_eq(check(CTL_REQ_MEM_RETURN, sizeof(r), &r), 0);
	cr_assert_eq(check(CTL_REQ_MEM, 0, ""), 0);
	cr_assert_eq(check(CTL_R_MEM_SEG, sizeof(seg), &seg), 0);
	cr_assert_eq(check(CTL_R_MEM_POOL, sizeof(pool), &pool), 0);
	cr_assert_eq(check(CTL_R_MEM_SERVICE, sizeof(sv), &sv), 0);
	cr_assert_eq(check(CTL_R_MEM_HOLDER, sizeof(hd), &hd), 0);
	cr_assert_eq(check(CTL_REQ_MEM_LEASE, sizeof(l) - 1, NULL), -EPROTO);
	cr_assert_eq(ctl_fd_count(CTL_R_MEM_SEG), 1, "the segment's memfd");
	memset(sv.name, 'n', sizeof(sv.name));
	cr_assert_eq(check(CTL_R_MEM_SERVICE, sizeof(sv), &sv), -EPROTO);
	memset(hd.service, 's', sizeof(hd.service));
	cr_assert_eq(check(CTL_R_MEM_HOLDER, sizeof(hd), &hd), -EPROTO);
}

Test(ctl_proto, bad_headers_are_refused)
{
	struct ctl_hdr h;
	const char *why;

	ctl_fill(&h, CTL_REQ_STATUS, 0, 1);
	h.magic ^= 1;
	cr_assert_eq(ctl_check(&h, NULL, &why), -EPROTO);

	ctl_fill(&h, CTL_REQ_STATUS, 0, 1);
	h.version = CTL_VERSION + 1;
	cr_assert_eq(ctl_check(&h, NULL, &why), -EPROTONOSUPPORT);

	cr_assert_eq(check(CTL_REQ_STATUS, CTL_MAX_BODY + 1, NULL), -EMSGSIZE);
	cr_assert_eq(check(CTL_REQ_STATUS, UINT32_MAX, NULL), -EMSGSIZE);
	cr_assert_eq(check(0x0000, 0, NULL), -EBADMSG);
	cr_assert_eq(check(CTL_REQ_LAST + 1, 0, NULL), -EBADMSG);
	cr_assert_eq(check(CTL_R_LAST + 1, 0, NULL), -EBADMSG);
	cr_assert_eq(check(0xffff, 0, NULL), -EBADMSG);
}

Test(ctl_proto, body_length_must_match_the_type)
{
	struct ctl_hello hello = { 0 };

	cr_assert_eq(check(CTL_REQ_HELLO, sizeof(hello) - 1, NULL), -EPROTO);
	cr_assert_eq(check(CTL_REQ_HELLO, sizeof(hello) + 1, NULL), -EPROTO);
	cr_assert_eq(check(CTL_REQ_STATUS, 4, NULL), -EPROTO);
	cr_assert_eq(check(CTL_R_END, 1, NULL), -EPROTO);
}

Test(ctl_proto, strings_must_be_terminated)
{
	struct ctl_hello hello;
	struct ctl_session s;
	struct ctl_error e;

	memset(&hello, 'A', sizeof(hello));
	memset(&s, 'B', sizeof(s));
	memset(&e, 'C', sizeof(e));
	cr_assert_eq(check(CTL_REQ_HELLO, sizeof(hello), &hello), -EPROTO);
	cr_assert_eq(check(CTL_R_SESSION, sizeof(s), &s), -EPROTO);
	cr_assert_eq(check(CTL_R_ERROR, sizeof(e), &e), -EPROTO);
	{
		struct ctl_exclude x;

		memset(&x, 'D', sizeof(x));
		cr_assert_eq(check(CTL_R_EXCLUDE, sizeof(x), &x), -EPROTO);
		x.program[CTL_NAME_MAX - 1] = '\0';
		cr_assert_eq(check(CTL_R_EXCLUDE, sizeof(x), &x), 0);
		cr_assert_eq(check(CTL_REQ_EXCLUDES, 0, NULL), 0);
	}
	/* A NUL in the last byte is enough. */
	hello.service[CTL_NAME_MAX - 1] = '\0';
	cr_assert_eq(check(CTL_REQ_HELLO, sizeof(hello), &hello), 0);
}

Test(ctl_proto, every_type_has_a_name_and_a_length)
{
	int t;

	/* The ranges have room for later types: a known one has both. */
	for (t = CTL_REQ_FIRST; t <= CTL_R_LAST; t++)
		cr_assert_eq(ctl_body_len((uint16_t)t) >= 0,
			     strcmp(ctl_type_name((uint16_t)t), "?") != 0,
			     "type 0x%04x", t);
	for (t = CTL_REQ_FIRST; t <= CTL_REQ_EXCLUDES; t++)
		cr_assert_geq(ctl_body_len((uint16_t)t), 0);
	for (t = CTL_R_FIRST; t <= CTL_R_EXCLUDE; t++)
		cr_assert_geq(ctl_body_len((uint16_t)t), 0);
}

/* Random headers and bodies: anything accepted must really be well formed
 * by the rules above, checked independently here. */
Test(ctl_proto, random_input_never_passes_unchecked)
{
	uint64_t s = 0x5eed;
	unsigned char buf[sizeof(struct ctl_hdr) + CTL_MAX_BODY];
	int i, accepted = 0;

	for (i = 0; i < 200000; i++) {
		struct ctl_hdr *h = (struct ctl_hdr *)buf;
		const char *why;
		size_t k;
		int r, want;

		for (k = 0; k < sizeof(buf); k += 8) {
			s ^= s << 13; s ^= s >> 7; s ^= s << 17;
			memcpy(buf + k, &s, 8);
		}
		/* Bias towards near-valid headers so the body checks run. */
		if (i & 1) {
			h->magic = CTL_MAGIC;
			h->version = CTL_VERSION;
			h->type = (uint16_t)((i & 2 ? CTL_REQ_FIRST : CTL_R_FIRST)
					     + (s >> 40) % 8);
			want = ctl_body_len(h->type);
			if (want >= 0 && (i & 4))
				h->len = (uint32_t)want;
			if (i & 8)
				memset(buf + sizeof(*h), 0, CTL_MAX_BODY);
		}
		r = ctl_check(h, buf + sizeof(*h), &why);
		if (r == 0) {
			accepted++;
			cr_assert_eq(h->magic, CTL_MAGIC);
			cr_assert_eq(h->version, CTL_VERSION);
			cr_assert_eq((int)h->len, ctl_body_len(h->type));
		} else {
			cr_assert(r == -EPROTO || r == -EPROTONOSUPPORT ||
				  r == -EBADMSG || r == -EMSGSIZE);
		}
	}
	cr_assert_gt(accepted, 1000, "the fuzz must reach the body checks");
}

Test(ctl_proto, fd_counts_are_declared_per_type)
{
	struct ctl_tcp tcp;
	int t;

	cr_assert_eq(ctl_fd_count(CTL_REQ_LISTEN), 1);
	cr_assert_eq(ctl_fd_count(CTL_REQ_UNLISTEN), 1);
	cr_assert_eq(ctl_fd_count(CTL_REQ_PUBLISH), 2);
	cr_assert_eq(ctl_fd_count(CTL_REQ_REQUEST), 1);
	cr_assert_eq(ctl_fd_count(CTL_R_CHANNEL), 1);
	cr_assert_eq(ctl_fd_count(CTL_REQ_DOORBELL), 2);
	cr_assert_eq(ctl_fd_count(CTL_REQ_PEER_DB), 0);
	cr_assert_eq(ctl_fd_count(CTL_R_DOORBELL), 2);
	cr_assert_eq(ctl_fd_count(CTL_REQ_BOARD), 0);
	cr_assert_eq(ctl_fd_count(CTL_R_BOARD), 1);
	cr_assert_eq(ctl_body_len(CTL_REQ_BOARD), 0);
	cr_assert_eq(ctl_body_len(CTL_R_BOARD), sizeof(struct ctl_board));
	cr_assert_eq(ctl_fd_count(CTL_R_POLICY), 1);
	cr_assert_eq(ctl_fd_count(CTL_REQ_STATUS), 0);
	cr_assert_eq(ctl_fd_count(0xffff), 0);
	for (t = CTL_REQ_FIRST; t <= CTL_R_LAST; t++)
		cr_assert_leq(ctl_fd_count((uint16_t)t), CTL_MAX_FDS);
	memset(&tcp, 'x', sizeof(tcp));
	cr_assert_eq(check(CTL_R_TCP, sizeof(tcp), &tcp), -EPROTO);
	tcp.reason[sizeof(tcp.reason) - 1] = '\0';
	cr_assert_eq(check(CTL_R_TCP, sizeof(tcp), &tcp), 0);
}

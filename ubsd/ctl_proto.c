/* SPDX-License-Identifier: MIT */
/*
 * ctl_proto.c - validation of control messages, shared by ubsd, ubsctl and
 * (later) the preload.  Never trusts a length or a string it is given.
 */
#include <errno.h>
#include <string.h>

#include "ctl_proto.h"

int ctl_body_len(uint16_t type)
{
	switch (type) {
	case CTL_REQ_HELLO:     return sizeof(struct ctl_hello);
	case CTL_REQ_STATUS:    return 0;
	case CTL_REQ_SESSIONS:  return 0;
	case CTL_REQ_SERVICES:  return 0;
	case CTL_REQ_SERVICE_SET: return sizeof(struct ctl_service_set);
	case CTL_REQ_POLICY_FD: return 0;
	case CTL_REQ_LISTEN:    return 0;
	case CTL_REQ_UNLISTEN:  return 0;
	case CTL_REQ_PUBLISH:   return 0;
	case CTL_REQ_REQUEST:   return sizeof(struct ctl_request);
	case CTL_REQ_LISTENERS: return 0;
	case CTL_REQ_EXCLUDES:  return 0;
	case CTL_REQ_DOORBELL:  return sizeof(struct ctl_doorbell);
	case CTL_REQ_PEER_DB:   return sizeof(struct ctl_doorbell);
	case CTL_R_DOORBELL:    return sizeof(struct ctl_doorbell);
	case CTL_REQ_BOARD:     return 0;
	case CTL_REQ_ACCEPTING: return 0;
	case CTL_R_BOARD:       return sizeof(struct ctl_board);
	case CTL_R_OK:          return 0;
	case CTL_R_ERROR:       return sizeof(struct ctl_error);
	case CTL_R_END:         return 0;
	case CTL_R_STATUS:      return sizeof(struct ctl_status);
	case CTL_R_SESSION:     return sizeof(struct ctl_session);
	case CTL_R_SERVICE:     return sizeof(struct ctl_service);
	case CTL_R_POLICY:      return sizeof(struct ctl_policy);
	case CTL_R_PUBLISHED:   return sizeof(struct ctl_chan);
	case CTL_R_CHANNEL:     return sizeof(struct ctl_chan);
	case CTL_R_TCP:         return sizeof(struct ctl_tcp);
	case CTL_R_WITHDRAWN:   return sizeof(struct ctl_chan);
	case CTL_R_LISTENER:    return sizeof(struct ctl_listener);
	case CTL_R_EXCLUDE:     return sizeof(struct ctl_exclude);
	/* memory pool */
	case CTL_REQ_MEM_LEASE: return sizeof(struct ctl_mem_lease);
	case CTL_REQ_MEM_RETURN: return sizeof(struct ctl_mem_ref);
	case CTL_REQ_MEM:       return 0;
	case CTL_REQ_MEM_CLAIM: return sizeof(struct ctl_mem_lease);
	case CTL_R_MEM_SEG:     return sizeof(struct ctl_mem_seg);
	case CTL_R_MEM_POOL:    return sizeof(struct ctl_mem_pool);
	case CTL_R_MEM_SERVICE: return sizeof(struct ctl_mem_service);
	case CTL_R_MEM_HOLDER:  return sizeof(struct ctl_mem_holder);

	/* verbs registry */
	case CTL_REQ_VERBS_OPEN: return sizeof(struct ctl_verbs_open);
	case CTL_REQ_VERBS_QP:  return sizeof(struct ctl_verbs_qp);
	case CTL_REQ_VERBS_QP_DROP: return sizeof(struct ctl_verbs_qpn);
	case CTL_REQ_VERBS_CONNECT: return sizeof(struct ctl_verbs_connect);
	case CTL_REQ_VERBS_LIST: return 0;
	case CTL_R_VERBS_CTX:   return sizeof(struct ctl_verbs_ctx);
	case CTL_R_VERBS_QPN:   return sizeof(struct ctl_verbs_qpn);
	case CTL_R_VERBS_PEER:  return sizeof(struct ctl_verbs_peer);
	case CTL_R_VERBS_EP:    return sizeof(struct ctl_verbs_ep);
	default:                return -1;
	}
}

const char *ctl_type_name(uint16_t type)
{
	switch (type) {
	case CTL_REQ_HELLO:     return "HELLO";
	case CTL_REQ_STATUS:    return "STATUS";
	case CTL_REQ_SESSIONS:  return "SESSIONS";
	case CTL_REQ_SERVICES:  return "SERVICES";
	case CTL_REQ_SERVICE_SET: return "SERVICE_SET";
	case CTL_REQ_POLICY_FD: return "POLICY_FD";
	case CTL_REQ_LISTEN:    return "LISTEN";
	case CTL_REQ_UNLISTEN:  return "UNLISTEN";
	case CTL_REQ_PUBLISH:   return "PUBLISH";
	case CTL_REQ_REQUEST:   return "REQUEST";
	case CTL_REQ_LISTENERS: return "LISTENERS";
	case CTL_REQ_EXCLUDES:  return "EXCLUDES";
	case CTL_REQ_DOORBELL:  return "DOORBELL";
	case CTL_REQ_PEER_DB:   return "PEER_DB";
	case CTL_R_DOORBELL:    return "R_DOORBELL";
	case CTL_REQ_BOARD:     return "BOARD";
	case CTL_REQ_ACCEPTING: return "ACCEPTING";
	case CTL_R_BOARD:       return "R_BOARD";
	case CTL_R_OK:          return "OK";
	case CTL_R_ERROR:       return "ERROR";
	case CTL_R_END:         return "END";
	case CTL_R_STATUS:      return "R_STATUS";
	case CTL_R_SESSION:     return "R_SESSION";
	case CTL_R_SERVICE:     return "R_SERVICE";
	case CTL_R_POLICY:      return "R_POLICY";
	case CTL_R_PUBLISHED:   return "R_PUBLISHED";
	case CTL_R_CHANNEL:     return "R_CHANNEL";
	case CTL_R_TCP:         return "R_TCP";
	case CTL_R_WITHDRAWN:   return "R_WITHDRAWN";
	case CTL_R_LISTENER:    return "R_LISTENER";
	case CTL_R_EXCLUDE:     return "R_EXCLUDE";
	/* memory pool */
	case CTL_REQ_MEM_LEASE: return "MEM_LEASE";
	case CTL_REQ_MEM_RETURN: return "MEM_RETURN";
	case CTL_REQ_MEM:       return "MEM";
	case CTL_REQ_MEM_CLAIM: return "MEM_CLAIM";
	case CTL_R_MEM_SEG:     return "R_MEM_SEG";
	case CTL_R_MEM_POOL:    return "R_MEM_POOL";
	case CTL_R_MEM_SERVICE: return "R_MEM_SERVICE";
	case CTL_R_MEM_HOLDER:  return "R_MEM_HOLDER";

	/* verbs registry */
	case CTL_REQ_VERBS_OPEN: return "VERBS_OPEN";
	case CTL_REQ_VERBS_QP:  return "VERBS_QP";
	case CTL_REQ_VERBS_QP_DROP: return "VERBS_QP_DROP";
	case CTL_REQ_VERBS_CONNECT: return "VERBS_CONNECT";
	case CTL_REQ_VERBS_LIST: return "VERBS_LIST";
	case CTL_R_VERBS_CTX:   return "R_VERBS_CTX";
	case CTL_R_VERBS_QPN:   return "R_VERBS_QPN";
	case CTL_R_VERBS_PEER:  return "R_VERBS_PEER";
	case CTL_R_VERBS_EP:    return "R_VERBS_EP";
	default:                return "?";
	}
}

int ctl_fd_count(uint16_t type)
{
	switch (type) {
	case CTL_REQ_LISTEN:    return 1;
	case CTL_REQ_UNLISTEN:  return 1;
	case CTL_REQ_ACCEPTING: return 1;
	case CTL_REQ_PUBLISH:   return 2;
	case CTL_REQ_DOORBELL:  return 2;
	case CTL_R_DOORBELL:    return 2;
	case CTL_REQ_REQUEST:   return 1;
	case CTL_R_POLICY:      return 1;
	case CTL_R_CHANNEL:     return 1;
	case CTL_R_BOARD:       return 1;
	/* memory pool */
	case CTL_R_MEM_SEG:     return 1;

	/* verbs registry */
	case CTL_REQ_VERBS_OPEN: return 1;
	case CTL_R_VERBS_PEER:  return 1;
	default:                return 0;
	}
}

/* Is the NUL-terminated field s[n] really terminated? */
static int has_nul(const char *s, size_t n)
{
	return memchr(s, '\0', n) != NULL;
}

int ctl_check(const struct ctl_hdr *h, const void *body, const char **why)
{
	int want;

	*why = NULL;
	if (h->magic != CTL_MAGIC) {
		*why = "bad magic";
		return -EPROTO;
	}
	if (h->version != CTL_VERSION) {
		*why = "unsupported protocol version";
		return -EPROTONOSUPPORT;
	}
	if (h->len > CTL_MAX_BODY) {
		*why = "body too large";
		return -EMSGSIZE;
	}
	want = ctl_body_len(h->type);
	if (want < 0) {
		*why = "unknown message type";
		return -EBADMSG;
	}
	if (h->len != (uint32_t)want) {
		*why = "body length does not match its type";
		return -EPROTO;
	}
	if (!body)
		return 0;
	switch (h->type) {
	case CTL_REQ_HELLO:
		if (!has_nul(((const struct ctl_hello *)body)->service,
			     CTL_NAME_MAX))
			goto unterminated;
		break;
	case CTL_R_ERROR:
		if (!has_nul(((const struct ctl_error *)body)->msg,
			     sizeof(((struct ctl_error *)0)->msg)))
			goto unterminated;
		break;
	case CTL_R_SESSION:
		if (!has_nul(((const struct ctl_session *)body)->service,
			     CTL_NAME_MAX))
			goto unterminated;
		break;
	case CTL_REQ_SERVICE_SET:
		{
			const struct ctl_service_set *m = body;
			if (!has_nul(m->name, CTL_NAME_MAX) ||
			    !has_nul(m->key, CTL_KEY_MAX) ||
			    !has_nul(m->value, CTL_VALUE_MAX))
				goto unterminated;
		}
		break;
	case CTL_R_SERVICE:
		if (!has_nul(((const struct ctl_service *)body)->name,
			     CTL_NAME_MAX) ||
		    !has_nul(((const struct ctl_service *)body)->mem_sites,
			     sizeof(((struct ctl_service *)0)->mem_sites)))
			goto unterminated;
		break;
	case CTL_R_EXCLUDE:
		if (!has_nul(((const struct ctl_exclude *)body)->program,
			     CTL_NAME_MAX))
			goto unterminated;
		break;
	case CTL_R_TCP:
		if (!has_nul(((const struct ctl_tcp *)body)->reason,
			     sizeof(((struct ctl_tcp *)0)->reason)))
			goto unterminated;
		break;
	/* memory pool */
	case CTL_R_MEM_SERVICE:
		if (!has_nul(((const struct ctl_mem_service *)body)->name,
			     CTL_NAME_MAX))
			goto unterminated;
		break;
	case CTL_R_MEM_HOLDER:
		if (!has_nul(((const struct ctl_mem_holder *)body)->service,
			     CTL_NAME_MAX))
			goto unterminated;
		break;

	/* verbs registry */

	}
	return 0;
unterminated:
	*why = "string without its terminating NUL";
	return -EPROTO;
}

void ctl_fill(struct ctl_hdr *h, uint16_t type, uint32_t len, uint32_t seq)
{
	h->magic = CTL_MAGIC;
	h->version = CTL_VERSION;
	h->type = type;
	h->len = len;
	h->seq = seq;
}

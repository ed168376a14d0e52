/* SPDX-License-Identifier: MIT */
/* vshim_int.h - functions shared by the verbs shim's files. */
#ifndef UBS_VSHIM_INT_H
#define UBS_VSHIM_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "vshim.h"

void *vs_real(const char *name, const char *ver);
bool vs_is_ours(struct ibv_context *ctx);
uint64_t vs_guid(void);
int vs_query_device_ex(struct ibv_context *ctx,
		       const struct ibv_query_device_ex_input *in,
		       struct ibv_device_attr_ex *attr, size_t size);
int vs_query_port_op(struct ibv_context *ctx, uint8_t port,
		     struct ibv_port_attr *attr, size_t len);
/* Exports libibverbs declares in private headers only. */
int ibv_query_gid_type(struct ibv_context *ctx, uint8_t port,
		       unsigned int index, int *type);
int ibv_read_sysfs_file(const char *dir, const char *file, char *buf,
			size_t size);
/* Register the context's segment with ubsd: 0 or -errno. */
int vs_ctx_register(struct vs_ctx *c);
/* verbs.c */
/* Take the oldest async event of the context into ev: 0, or -EAGAIN. */
int vs_async_pop(struct vs_ctx *c, struct ibv_async_event *ev);
void vs_fill_ops(struct vs_ctx *c);
void vs_peers_drop(struct vs_ctx *c);
/* Wake (or start) the context's progress thread; stop it for good. */
void vs_progress_kick(struct vs_ctx *c);
void vs_progress_stop(struct vs_ctx *c);

static inline struct vs_ctx *vs_ctx_of(struct ibv_context *ctx)
{
	return (struct vs_ctx *)((char *)ctx -
				 offsetof(struct vs_ctx, vctx.context));
}

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The decision shared by connect4 and connect6: is this a mesh destination? */
#ifndef SLUICE_REDIRECT_H
#define SLUICE_REDIRECT_H

#include "maps.h"

/*
 * Returns the service entry when this TCP connect must go to the proxy, and
 * remembers the original destination under the socket's cookie. NULL: leave
 * the connect alone.
 */
static __always_inline const struct sl_svc_val *
sl_redirect_lookup(struct bpf_sock_addr *ctx, const struct sl_svc_key *key)
{
	struct bpf_sock *sk = ctx->sk;
	const struct sl_svc_val *svc;

	if (ctx->type != SOCK_STREAM)
		return NULL;
	/* The proxy marks its own sockets: its upstream connects are never looped back. */
	if (sk && sl_cfg.own_mark != 0 && sk->mark == sl_cfg.own_mark) {
		if (bpf_map_lookup_elem(&sl_svc, key))
			sl_count(SL_STAT_OWN_SKIPPED);
		return NULL;
	}
	svc = bpf_map_lookup_elem(&sl_svc, key);
	if (!svc) {
		sl_count(SL_STAT_PASSTHROUGH);
		return NULL;
	}

	struct sl_orig_dst orig = {};
	__u64 cookie = bpf_get_socket_cookie(ctx);

	__builtin_memcpy(orig.addr_be, key->addr_be, sizeof(orig.addr_be));
	orig.port_be = key->port_be;
	orig.svc_id = svc->svc_id;
	if (bpf_map_update_elem(&sl_pend, &cookie, &orig, BPF_ANY) != 0) {
		/* Without a record the proxy could not route it: better to go direct. */
		sl_count(SL_STAT_PEND_FULL);
		return NULL;
	}
	return svc;
}

#endif

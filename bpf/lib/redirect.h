/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The decision shared by connect4 and connect6: is this a mesh destination? */
#ifndef SLUICE_REDIRECT_H
#define SLUICE_REDIRECT_H

#include "maps.h"

/* The service behind a TCP connect's destination, or NULL: leave it alone. */
static __always_inline const struct sl_svc_val *sl_mesh_lookup(struct bpf_sock_addr *ctx,
							       const struct sl_svc_key *key)
{
	struct bpf_sock *sk = ctx->sk;
	const struct sl_svc_val *svc;

	if (ctx->type != SOCK_STREAM)
		return NULL;
	svc = bpf_map_lookup_elem(&sl_svc, key);
	/* The proxy marks its own sockets: its upstream connects are never looped back. */
	if (sk && sl_cfg.own_mark != 0 && sk->mark == sl_cfg.own_mark) {
		if (svc)
			sl_count(SL_STAT_OWN_SKIPPED);
		return NULL;
	}
	if (!svc)
		sl_count(SL_STAT_PASSTHROUGH);
	return svc;
}

/*
 * Whether the proxy has heartbeated recently. Before any heartbeat (0) it
 * counts as up: the node writes one before it fills sl_svc.
 */
static __always_inline int sl_proxy_up(const struct sl_live **out)
{
	__u32 zero = 0;
	const struct sl_live *live = bpf_map_lookup_elem(&sl_live, &zero);

	*out = live;
	if (!live || live->heartbeat_ns == 0)
		return 1;
	return bpf_ktime_get_ns() - live->heartbeat_ns <= (__u64)live->timeout_ms * 1000000ULL;
}

/* Keeps the original destination under the socket's cookie for sock_ops. */
static __always_inline int sl_remember(struct bpf_sock_addr *ctx, const struct sl_svc_key *key,
				       const struct sl_svc_val *svc)
{
	struct sl_orig_dst orig = {};
	__u64 cookie = bpf_get_socket_cookie(ctx);

	__builtin_memcpy(orig.addr_be, key->addr_be, sizeof(orig.addr_be));
	orig.port_be = key->port_be;
	orig.svc_id = svc->svc_id;
	orig.cgroup_id = bpf_get_current_cgroup_id();
	if (bpf_map_update_elem(&sl_pend, &cookie, &orig, BPF_ANY) != 0) {
		sl_count(SL_STAT_PEND_FULL);
		return 0;
	}
	return 1;
}

/* SL_REDIRECT: go to the proxy; SL_DIRECT: leave alone; SL_REFUSE: fail the connect;
 * SL_ZERO_HOP: *ep is the endpoint to connect to instead. */
enum sl_decision { SL_DIRECT = 0, SL_REDIRECT = 1, SL_REFUSE = 2, SL_ZERO_HOP = 3 };

/* One more zero-hop connection to this service address (per-CPU value: no atomics). */
static __always_inline void sl_zh_count(const struct sl_svc_key *key)
{
	__u64 one = 1, *n = bpf_map_lookup_elem(&sl_zh_conns, key);

	if (n) {
		*n += 1;
		return;
	}
	if (bpf_map_update_elem(&sl_zh_conns, key, &one, BPF_NOEXIST) != 0) {
		n = bpf_map_lookup_elem(&sl_zh_conns, key);
		if (n)
			*n += 1;
	}
}

/*
 * Zero-hop: picks an endpoint (random, so new connections spread) and keeps
 * the VIP for getpeername. NULL: no usable endpoint, take the proxy path.
 */
static __always_inline const struct sl_sockaddr *sl_zero_hop(struct bpf_sock_addr *ctx,
							      const struct sl_svc_key *key,
							      const struct sl_svc_val *svc)
{
	const struct sl_sockaddr *ep;
	struct sl_sockaddr vip = {};
	__u32 idx;
	__u64 cookie;

	if (!(svc->flags & SL_SVC_ZERO_HOP) || svc->ep_count == 0)
		return NULL;
	idx = svc->ep_base + bpf_get_prandom_u32() % svc->ep_count;
	ep = bpf_map_lookup_elem(&sl_zh_eps, &idx);
	/* An AF_INET socket cannot reach an IPv6 endpoint: take the proxy path. */
	if (!ep || (ctx->user_family == AF_INET && !sl_addr_is_v4mapped(ep->addr_be)))
		return NULL;
	__builtin_memcpy(vip.addr_be, key->addr_be, sizeof(vip.addr_be));
	vip.port_be = key->port_be;
	cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&sl_zh_peer, &cookie, &vip, BPF_ANY) != 0)
		return NULL;
	sl_count(SL_STAT_ZERO_HOP);
	sl_zh_count(key);
	return ep;
}

/*
 * Zero-hop traffic never reaches the proxy, so its L4 authorization is
 * decided here: the verdict for the connecting process's cgroup, or the one
 * for cgroups without an entry.
 */
static __always_inline int sl_zh_denied(const struct sl_svc_key *key, const struct sl_svc_val *svc)
{
	struct sl_authz_key k = {};
	const __u32 *v;

	if (!(svc->flags & SL_SVC_AUTHZ))
		return 0;
	k.cgroup_id = bpf_get_current_cgroup_id();
	k.svc = *key;
	v = bpf_map_lookup_elem(&sl_zh_authz, &k);
	if (!v) {
		k.cgroup_id = 0;
		v = bpf_map_lookup_elem(&sl_zh_authz, &k);
	}
	/* No verdict at all (a table being written): refuse, the safe side. */
	return !v || *v == SL_ACT_DENY;
}

static __always_inline enum sl_decision sl_decide(struct bpf_sock_addr *ctx, const struct sl_svc_key *key,
						  const struct sl_sockaddr **ep)
{
	const struct sl_svc_val *svc = sl_mesh_lookup(ctx, key);
	const struct sl_live *live;

	if (!svc)
		return SL_DIRECT;
	if ((svc->flags & SL_SVC_ZERO_HOP) && svc->ep_count > 0 && sl_zh_denied(key, svc)) {
		sl_count(SL_STAT_ZH_DENIED);
		bpf_set_retval(-ECONNREFUSED);
		return SL_REFUSE;
	}
	/* Zero-hop needs no proxy, so the proxy's liveness does not matter to it. */
	*ep = sl_zero_hop(ctx, key, svc);
	if (*ep)
		return SL_ZERO_HOP;
	if (!sl_proxy_up(&live)) {
		if (live && live->fail_mode == SL_FAIL_CLOSED) {
			sl_count(SL_STAT_DOWN_CLOSED);
			/* A refusal, not a hang: the application sees ECONNREFUSED at once. */
			bpf_set_retval(-ECONNREFUSED);
			return SL_REFUSE;
		}
		sl_count(SL_STAT_DOWN_OPEN);
		return SL_DIRECT;
	}
	/* Without a record the proxy could not route it: better to go direct. */
	return sl_remember(ctx, key, svc) ? SL_REDIRECT : SL_DIRECT;
}

#endif

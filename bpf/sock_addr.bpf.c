// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4 and cgroup/connect6: a TCP connect to a mesh service address is
 * rewritten to the node proxy; the original destination is kept by socket cookie
 * (sl_pend) until sock_ops learns the 4-tuple. Everything else is untouched.
 * When the proxy has stopped heartbeating, the fail mode decides: go direct
 * (open) or refuse the connect (closed). Zero-hop services skip the proxy:
 * the connect goes straight to an endpoint, and getpeername4/6 show the
 * service address the application dialed.
 */
#include "lib/redirect.h"

SEC("cgroup/connect4")
int sl_connect4(struct bpf_sock_addr *ctx)
{
	struct sl_svc_key key = {};
	const struct sl_sockaddr *ep = NULL;

	sl_addr_from_v4(key.addr_be, ctx->user_ip4);
	key.port_be = (__u16)ctx->user_port;
	switch (sl_decide(ctx, &key, &ep)) {
	case SL_DIRECT:
		return SL_VERDICT_PROCEED;
	case SL_REFUSE:
		return SL_VERDICT_REJECT;
	case SL_ZERO_HOP:
		if (ep) {
			ctx->user_ip4 = ep->addr_be[3]; /* IPv4: sl_zero_hop checked it is mapped */
			ctx->user_port = ep->port_be;
		}
		return SL_VERDICT_PROCEED;
	default:
		break;
	}

	ctx->user_ip4 = sl_cfg.proxy_addr4_be;
	ctx->user_port = sl_cfg.proxy_port4_be;
	sl_count(SL_STAT_REDIRECT4);
	return SL_VERDICT_PROCEED;
}

SEC("cgroup/connect6")
int sl_connect6(struct bpf_sock_addr *ctx)
{
	struct sl_svc_key key = {};
	const struct sl_sockaddr *ep = NULL;

	key.addr_be[0] = ctx->user_ip6[0];
	key.addr_be[1] = ctx->user_ip6[1];
	key.addr_be[2] = ctx->user_ip6[2];
	key.addr_be[3] = ctx->user_ip6[3];
	key.port_be = (__u16)ctx->user_port;
	switch (sl_decide(ctx, &key, &ep)) {
	case SL_DIRECT:
		return SL_VERDICT_PROCEED;
	case SL_REFUSE:
		return SL_VERDICT_REJECT;
	case SL_ZERO_HOP:
		if (ep) {
			/* Mapped endpoints keep their mapped form: right for an AF_INET6 socket. */
			ctx->user_ip6[0] = ep->addr_be[0];
			ctx->user_ip6[1] = ep->addr_be[1];
			ctx->user_ip6[2] = ep->addr_be[2];
			ctx->user_ip6[3] = ep->addr_be[3];
			ctx->user_port = ep->port_be;
		}
		return SL_VERDICT_PROCEED;
	default:
		break;
	}

	if (sl_addr_is_v4mapped(key.addr_be)) {
		/* An AF_INET6 socket dialing an IPv4 VIP: send it to the IPv4 listener. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = sl_cfg.proxy_addr4_be;
		ctx->user_port = sl_cfg.proxy_port4_be;
	} else {
		ctx->user_ip6[0] = sl_cfg.proxy_addr6_be[0];
		ctx->user_ip6[1] = sl_cfg.proxy_addr6_be[1];
		ctx->user_ip6[2] = sl_cfg.proxy_addr6_be[2];
		ctx->user_ip6[3] = sl_cfg.proxy_addr6_be[3];
		ctx->user_port = sl_cfg.proxy_port6_be;
	}
	sl_count(SL_STAT_REDIRECT6);
	return SL_VERDICT_PROCEED;
}

/*
 * getpeername on a zero-hop socket shows the service address the application
 * dialed, not the endpoint: applications see what they asked for.
 */
static __always_inline const struct sl_sockaddr *sl_dialed(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);

	return bpf_map_lookup_elem(&sl_zh_peer, &cookie);
}

SEC("cgroup/getpeername4")
int sl_getpeername4(struct bpf_sock_addr *ctx)
{
	const struct sl_sockaddr *vip = sl_dialed(ctx);

	if (vip && sl_addr_is_v4mapped(vip->addr_be)) {
		ctx->user_ip4 = vip->addr_be[3];
		ctx->user_port = vip->port_be;
		sl_count(SL_STAT_PEER_REWRITTEN);
	}
	return SL_VERDICT_PROCEED;
}

SEC("cgroup/getpeername6")
int sl_getpeername6(struct bpf_sock_addr *ctx)
{
	const struct sl_sockaddr *vip = sl_dialed(ctx);

	if (vip) {
		ctx->user_ip6[0] = vip->addr_be[0];
		ctx->user_ip6[1] = vip->addr_be[1];
		ctx->user_ip6[2] = vip->addr_be[2];
		ctx->user_ip6[3] = vip->addr_be[3];
		ctx->user_port = vip->port_be;
		sl_count(SL_STAT_PEER_REWRITTEN);
	}
	return SL_VERDICT_PROCEED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4 and cgroup/connect6: a TCP connect to a mesh service address is
 * rewritten to the node proxy; the original destination is kept by socket cookie
 * (sl_pend) until sock_ops learns the 4-tuple. Everything else is untouched.
 * When the proxy has stopped heartbeating, the fail mode decides: go direct
 * (open) or refuse the connect (closed).
 */
#include "lib/redirect.h"

SEC("cgroup/connect4")
int sl_connect4(struct bpf_sock_addr *ctx)
{
	struct sl_svc_key key = {};

	sl_addr_from_v4(key.addr_be, ctx->user_ip4);
	key.port_be = (__u16)ctx->user_port;
	switch (sl_decide(ctx, &key)) {
	case SL_DIRECT:
		return SL_VERDICT_PROCEED;
	case SL_REFUSE:
		return SL_VERDICT_REJECT;
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

	key.addr_be[0] = ctx->user_ip6[0];
	key.addr_be[1] = ctx->user_ip6[1];
	key.addr_be[2] = ctx->user_ip6[2];
	key.addr_be[3] = ctx->user_ip6[3];
	key.port_be = (__u16)ctx->user_port;
	switch (sl_decide(ctx, &key)) {
	case SL_DIRECT:
		return SL_VERDICT_PROCEED;
	case SL_REFUSE:
		return SL_VERDICT_REJECT;
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP on the ingress of the policy interfaces: per-source rate limits, then
 * the ordered allow/deny rules (CIDR tries, protocol, port ranges), before the
 * kernel stack spends anything on the packet. Malformed IP packets are dropped.
 */
#include "lib/policy.h"

/*
 * frags-aware: multi-buffer frames (GSO/GRO-sized on veth, jumbo frames) reach
 * the program instead of being dropped by the driver. Only the headers are
 * read, and they are in the first buffer.
 */
SEC("xdp.frags")
int sl_xdp_policy(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	return sl_filter(data, end, bpf_xdp_get_buff_len(ctx), SL_DIR_INGRESS) == SL_ACT_DENY ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

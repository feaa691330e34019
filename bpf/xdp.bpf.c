// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP on the ingress of the policy interfaces: per-source rate limits, then
 * the ordered allow/deny rules (CIDR tries, protocol, port ranges), before the
 * kernel stack spends anything on the packet. Malformed IP packets are dropped.
 */
#include "lib/policy.h"

SEC("xdp")
int sl_xdp_policy(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	return sl_filter(data, end, SL_DIR_INGRESS) == SL_ACT_DENY ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

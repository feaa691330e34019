// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc (direct action) on the egress of the policy interfaces: what XDP cannot
 * see, the packets this host sends. Same rules as ingress, for the egress
 * direction.
 */
#include <linux/pkt_cls.h>

#include "lib/policy.h"

/* Enough for Ethernet, two VLAN tags, IPv6 with extension headers and TCP. */
#define SL_PULL_BYTES 256

SEC("classifier")
int sl_tc_egress(struct __sk_buff *skb)
{
	void *data, *end;

	/* Headers of a non-linear skb may not be in the linear part yet. */
	bpf_skb_pull_data(skb, skb->len < SL_PULL_BYTES ? skb->len : SL_PULL_BYTES);
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	return sl_filter(data, end, skb->len, SL_DIR_EGRESS) == SL_ACT_DENY ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

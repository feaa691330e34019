// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_msg: a send on a socket of a local app <-> proxy pair (both in sl_msg)
 * is put straight into the peer socket's receive queue, skipping the
 * loopback TCP/IP stack. A socket whose peer is not in the map sends on the
 * TCP path, and then stays on it (sl_msg_taint): data already travelling by
 * TCP must not be overtaken by later data through the map.
 */
#include "lib/maps.h"

static __always_inline void sl_msg_keys(struct sk_msg_md *msg, struct sl_flow_key *own, struct sl_flow_key *peer)
{
	__u32 remote6[4] = { msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2], msg->remote_ip6[3] };

	if (msg->family == AF_INET || sl_addr_is_v4mapped(remote6)) {
		sl_addr_from_v4(own->src_addr_be, msg->local_ip4);
		sl_addr_from_v4(own->dst_addr_be, msg->remote_ip4);
	} else {
		own->src_addr_be[0] = msg->local_ip6[0];
		own->src_addr_be[1] = msg->local_ip6[1];
		own->src_addr_be[2] = msg->local_ip6[2];
		own->src_addr_be[3] = msg->local_ip6[3];
		own->dst_addr_be[0] = remote6[0];
		own->dst_addr_be[1] = remote6[1];
		own->dst_addr_be[2] = remote6[2];
		own->dst_addr_be[3] = remote6[3];
	}
	/* local_port: host order; remote_port: network order in the upper half (see sock_ops). */
	own->src_port_be = bpf_htons((__u16)msg->local_port);
	own->dst_port_be = bpf_htons((__u16)bpf_ntohl(msg->remote_port));
	__builtin_memcpy(peer->src_addr_be, own->dst_addr_be, sizeof(peer->src_addr_be));
	__builtin_memcpy(peer->dst_addr_be, own->src_addr_be, sizeof(peer->dst_addr_be));
	peer->src_port_be = own->dst_port_be;
	peer->dst_port_be = own->src_port_be;
}

SEC("sk_msg")
int sl_msg_verdict(struct sk_msg_md *msg)
{
	struct sl_flow_key own = {}, peer = {};
	__u8 one = 1;

	struct bpf_sock *sk = msg->sk;

	sl_msg_keys(msg, &own, &peer);
	/*
	 * Only while the connection is whole: once one side has half-closed,
	 * the rest goes the TCP path. (On this kernel a redirect into a socket
	 * whose peer had half-closed was seen failing with EPIPE.) Switching
	 * to TCP keeps the byte order: the receiver reads what came through
	 * the map before what came by TCP.
	 */
	if (!sk || sk->state != BPF_TCP_ESTABLISHED) {
		sl_msg_count(SL_MSG_STAT_STAYED, 1);
		return SK_PASS;
	}
	if (bpf_map_lookup_elem(&sl_msg_taint, &own)) {
		sl_msg_count(SL_MSG_STAT_STAYED, 1);
		return SK_PASS;
	}
	if (bpf_msg_redirect_hash(msg, &sl_msg, &peer, BPF_F_INGRESS) == SK_PASS) {
		sl_msg_count(SL_MSG_STAT_REDIRECTED, 1);
		sl_msg_count(SL_MSG_STAT_BYTES, msg->size);
		return SK_PASS;
	}
	/* No peer (not in the map yet, or gone): TCP, from now on for good. */
	bpf_map_update_elem(&sl_msg_taint, &own, &one, BPF_ANY);
	sl_msg_count(SL_MSG_STAT_NO_PEER, 1);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sock_ops: when a redirected socket's 4-tuple becomes known (TCP_CONNECT_CB,
 * before the SYN leaves), move its original destination from the cookie-keyed
 * sl_pend to the 4-tuple-keyed sl_orig, which is what the proxy can look up
 * from the accepted socket. Doing it before the SYN means the entry exists
 * before the proxy's accept() can return.
 */
#include "lib/maps.h"

static __always_inline void sl_flow_from_skops(struct bpf_sock_ops *skops, struct sl_flow_key *key)
{
	__u32 remote6[4] = {
		skops->remote_ip6[0], skops->remote_ip6[1],
		skops->remote_ip6[2], skops->remote_ip6[3],
	};

	/*
	 * An AF_INET6 socket dialing a mapped address runs the IPv4 connect path:
	 * its IPv6 source is only filled in after it, so read the IPv4 fields.
	 */
	if (skops->family == AF_INET || sl_addr_is_v4mapped(remote6)) {
		sl_addr_from_v4(key->src_addr_be, skops->local_ip4);
		sl_addr_from_v4(key->dst_addr_be, skops->remote_ip4);
	} else {
		key->src_addr_be[0] = skops->local_ip6[0];
		key->src_addr_be[1] = skops->local_ip6[1];
		key->src_addr_be[2] = skops->local_ip6[2];
		key->src_addr_be[3] = skops->local_ip6[3];
		key->dst_addr_be[0] = remote6[0];
		key->dst_addr_be[1] = remote6[1];
		key->dst_addr_be[2] = remote6[2];
		key->dst_addr_be[3] = remote6[3];
	}
	/*
	 * local_port is in host order; remote_port is in network order in the
	 * upper 16 bits on little-endian hosts (the kernel shifts it there):
	 * bpf_ntohl() reads it right on either byte order.
	 */
	key->src_port_be = bpf_htons((__u16)skops->local_port);
	key->dst_port_be = bpf_htons((__u16)bpf_ntohl(skops->remote_port));
}

static __always_inline void sl_rekey_orig_dst(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct sl_orig_dst *orig = bpf_map_lookup_elem(&sl_pend, &cookie);
	struct sl_flow_key key = {};

	if (!orig)
		return; /* not a redirected connection */
	sl_flow_from_skops(skops, &key);
	if (bpf_map_update_elem(&sl_orig, &key, orig, BPF_ANY) == 0)
		sl_count(SL_STAT_ORIG_SAVED);
	bpf_map_delete_elem(&sl_pend, &cookie);
}

/*
 * sk_msg acceleration: an established local socket of an app <-> proxy pair
 * joins sl_msg, so the sk_msg program can send its data straight into the
 * peer's receive queue. Only while the node has it on (sl_msg_on: the
 * proxy port), only loopback pairs, only those with the proxy's port at one end.
 */
/* Whether one end is a local endpoint of the mesh (the proxy <-> endpoint hop). */
static __always_inline int sl_msg_endpoint_end(const struct sl_flow_key *key)
{
	struct sl_svc_key ep = {};

	__builtin_memcpy(ep.addr_be, key->src_addr_be, sizeof(ep.addr_be));
	ep.port_be = key->src_port_be;
	if (bpf_map_lookup_elem(&sl_msg_eps, &ep))
		return 1;
	__builtin_memcpy(ep.addr_be, key->dst_addr_be, sizeof(ep.addr_be));
	ep.port_be = key->dst_port_be;
	return bpf_map_lookup_elem(&sl_msg_eps, &ep) != 0;
}

static __always_inline void sl_msg_join(struct bpf_sock_ops *skops)
{
	__u32 zero = 0;
	__u32 *port = bpf_map_lookup_elem(&sl_msg_on, &zero);
	struct sl_flow_key key = {};
	__u16 proxy_be;

	if (!port || *port == 0)
		return;
	sl_flow_from_skops(skops, &key);
	if (!sl_is_loopback(key.src_addr_be) || !sl_is_loopback(key.dst_addr_be))
		return;
	proxy_be = bpf_htons((__u16)*port);
	if (key.src_port_be != proxy_be && key.dst_port_be != proxy_be && !sl_msg_endpoint_end(&key))
		return;
	/* A new socket starts on the fast path, whatever an old one with this 4-tuple did. */
	bpf_map_delete_elem(&sl_msg_taint, &key);
	if (bpf_sock_hash_update(skops, &sl_msg, &key, BPF_NOEXIST) == 0)
		sl_msg_count(SL_MSG_STAT_JOINED, 1);
}

/* A zero-hop socket (connect4 recorded what it dialed): watch its state, to count its bytes at the end. */
static __always_inline void sl_zh_watch(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);

	if (bpf_map_lookup_elem(&sl_zh_peer, &cookie))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* It closed: its bytes go to the service address it dialed (TCP's own counts, no per-packet work). */
static __always_inline void sl_zh_closed(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	const struct sl_sockaddr *vip;
	struct sl_svc_key key = {};
	struct sl_zh_bytes zero = {}, *b;

	__u32 old = skops->args[0];
	__u64 up = skops->bytes_acked, down = skops->bytes_received;
	int our_fin_acked, their_fin;

	if (skops->args[1] != BPF_TCP_CLOSE)
		return;
	/*
	 * TCP's counts include its SYN and FINs (one sequence number each): take
	 * them out. From the state it closed from: FIN_WAIT2 (on to TIME_WAIT),
	 * LAST_ACK and CLOSING have both FINs behind them, CLOSE_WAIT only the
	 * peer's. (A FIN_WAIT2 that timed out without the peer's FIN is counted
	 * one byte short.)
	 */
	our_fin_acked = old == BPF_TCP_FIN_WAIT2 || old == BPF_TCP_LAST_ACK || old == BPF_TCP_CLOSING ||
			old == BPF_TCP_TIME_WAIT;
	their_fin = our_fin_acked || old == BPF_TCP_CLOSE_WAIT;
	if (up > 0)
		up -= 1; /* the SYN */
	if (our_fin_acked && up > 0)
		up -= 1;
	if (their_fin && down > 0)
		down -= 1;
	vip = bpf_map_lookup_elem(&sl_zh_peer, &cookie);
	if (!vip)
		return;
	__builtin_memcpy(key.addr_be, vip->addr_be, sizeof(key.addr_be));
	key.port_be = vip->port_be;
	b = bpf_map_lookup_elem(&sl_zh_bytes, &key);
	if (!b) {
		bpf_map_update_elem(&sl_zh_bytes, &key, &zero, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&sl_zh_bytes, &key);
		if (!b)
			return;
	}
	b->up += up;
	b->down += down;
	b->closed += 1;
}

SEC("sockops")
int sl_sock_ops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		sl_rekey_orig_dst(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		sl_zh_watch(skops);
		sl_msg_join(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		sl_msg_join(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		sl_zh_closed(skops);
		break;
	default:
		break;
	}
	return SL_SOCKOPS_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

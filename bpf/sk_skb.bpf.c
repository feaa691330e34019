// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_skb splicing: for an L4 (opaque TCP) connection the proxy puts its two
 * sockets (client side and endpoint side) into sl_splice and tells each its
 * peer in sl_spl_peer. From then on every skb that arrives on one socket is
 * handed to the stream parser (one message per skb: no framing is needed for
 * a byte stream), then the verdict sends it out of the peer socket. The
 * payload never reaches userspace; the proxy still sees EOF and resets on its
 * sockets, and reads the byte counts from sl_spl_peer.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "lib/abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SL_SPLICE_MAX);
	__type(key, __u64); /* socket cookie */
	__type(value, __u32); /* a socket fd, on update */
} sl_splice SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SL_SPLICE_MAX);
	__type(key, __u64); /* socket cookie */
	__type(value, struct sl_splice_peer);
} sl_spl_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SL_SPL_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} sl_spl_stats SEC(".maps");

static __always_inline void sl_spl_count(__u32 stat, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&sl_spl_stats, &stat);

	if (c)
		*c += n;
}

SEC("sk_skb/stream_parser")
int sl_spl_parser(struct __sk_buff *skb)
{
	/* A byte stream has no messages: each skb is one. */
	return skb->len;
}

SEC("sk_skb/stream_verdict")
int sl_spl_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct sl_splice_peer *peer = bpf_map_lookup_elem(&sl_spl_peer, &cookie);
	long verdict;

	if (!peer) {
		sl_spl_count(SL_SPL_STAT_PASSED, 1);
		return SK_PASS;
	}
	verdict = bpf_sk_redirect_hash(skb, &sl_splice, &peer->peer_cookie, 0);
	if (verdict != SK_PASS) {
		/*
		 * The peer is not in the map (yet: the two sockets go in one after
		 * the other): hand the data to the proxy, which copies it, rather
		 * than lose it.
		 */
		sl_spl_count(SL_SPL_STAT_FAILED, 1);
		return SK_PASS;
	}
	__sync_fetch_and_add(&peer->bytes, skb->len);
	sl_spl_count(SL_SPL_STAT_REDIRECTED, 1);
	sl_spl_count(SL_SPL_STAT_BYTES, skb->len);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

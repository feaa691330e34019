/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing for the policy programs: Ethernet, up to two VLAN tags, IPv4
 * or IPv6 (with extension headers), and the TCP/UDP ports. Every read is
 * bounds-checked; anything cut short is SL_PARSE_MALFORMED, never a guess.
 */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "common.h"

#define SL_IP_MF 0x2000
#define SL_IP_OFFSET 0x1fff
#define SL_MAX_VLAN 2
#define SL_MAX_EXT_HDRS 6

enum sl_parse_result { SL_PARSE_OK = 0, SL_PARSE_NOT_IP = 1, SL_PARSE_MALFORMED = 2 };

struct sl_pkt {
	__u32 src_be[4]; /* IPv4 mapped, as everywhere */
	__u32 dst_be[4];
	__u16 sport; /* host order; 0 without ports */
	__u16 dport;
	__u8 proto;
	__u8 has_ports; /* TCP/UDP header present (not a later fragment) */
};

struct sl_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

struct sl_ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

static __always_inline int sl_parse_ports(void *l4, void *end, struct sl_pkt *p)
{
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *t = l4;

		if ((void *)(t + 1) > end || t->doff < 5)
			return SL_PARSE_MALFORMED;
		p->sport = bpf_ntohs(t->source);
		p->dport = bpf_ntohs(t->dest);
		p->has_ports = 1;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *u = l4;

		if ((void *)(u + 1) > end)
			return SL_PARSE_MALFORMED;
		p->sport = bpf_ntohs(u->source);
		p->dport = bpf_ntohs(u->dest);
		p->has_ports = 1;
	}
	return SL_PARSE_OK;
}

/*
 * `room` is how many bytes the whole packet has from l3 on. It is not
 * end - l3: with XDP multi-buffer frames and GSO skbs only the first part of
 * the packet is in [data, end). A length field of 0 (BIG TCP) is not checked.
 */
static __always_inline int sl_parse_ipv4(void *l3, void *end, __u64 room, struct sl_pkt *p)
{
	struct iphdr *ip = l3;
	__u32 hlen, tot;

	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return SL_PARSE_MALFORMED;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (l3 + hlen > end || (tot != 0 && (tot < hlen || tot > room)))
		return SL_PARSE_MALFORMED;
	sl_addr_from_v4(p->src_be, ip->saddr);
	sl_addr_from_v4(p->dst_be, ip->daddr);
	p->proto = ip->protocol;
	/* A later fragment carries no L4 header: it matches rules without ports only. */
	if (bpf_ntohs(ip->frag_off) & SL_IP_OFFSET)
		return SL_PARSE_OK;
	return sl_parse_ports(l3 + hlen, end, p);
}

static __always_inline int sl_parse_ipv6(void *l3, void *end, __u64 room, struct sl_pkt *p)
{
	struct ipv6hdr *ip6 = l3;
	void *cur = ip6 + 1;
	__u32 payload;
	__u8 next;

	if (cur > end || ip6->version != 6)
		return SL_PARSE_MALFORMED;
	payload = bpf_ntohs(ip6->payload_len);
	if (payload != 0 && sizeof(*ip6) + payload > room)
		return SL_PARSE_MALFORMED;
	__builtin_memcpy(p->src_be, &ip6->saddr, 16);
	__builtin_memcpy(p->dst_be, &ip6->daddr, 16);
	next = ip6->nexthdr;
#pragma unroll
	for (int i = 0; i < SL_MAX_EXT_HDRS; i++) {
		struct sl_ext_hdr *h = cur;

		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
		    next != IPPROTO_FRAGMENT && next != IPPROTO_AH)
			break;
		if ((void *)(h + 1) > end)
			return SL_PARSE_MALFORMED;
		if (next == IPPROTO_FRAGMENT) {
			struct frag_hdr {
				__u8 nexthdr, reserved;
				__be16 frag_off;
				__be32 id;
			} *f = cur;

			if ((void *)(f + 1) > end)
				return SL_PARSE_MALFORMED;
			p->proto = f->nexthdr;
			if (bpf_ntohs(f->frag_off) & 0xfff8)
				return SL_PARSE_OK; /* a later fragment: no L4 header */
			next = f->nexthdr;
			cur += sizeof(*f);
			continue;
		}
		/* AH counts its length in 4-byte units, the others in 8-byte units. */
		cur += next == IPPROTO_AH ? (h->hdrlen + 2) * 4 : (h->hdrlen + 1) * 8;
		next = h->nexthdr;
	}
	p->proto = next;
	return sl_parse_ports(cur, end, p);
}

/* `len`: the whole packet's length from `data` (first buffer and the rest). */
static __always_inline int sl_parse(void *data, void *end, __u64 len, struct sl_pkt *p)
{
	struct ethhdr *eth = data;
	void *cur = eth + 1;
	__be16 proto;

	if (cur > end)
		return SL_PARSE_MALFORMED;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < SL_MAX_VLAN; i++) {
		struct sl_vlan_hdr *v = cur;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(v + 1) > end)
			return SL_PARSE_MALFORMED;
		proto = v->encap_proto;
		cur = v + 1;
	}
	__u64 off = cur - data;
	__u64 room = len > off ? len - off : 0;

	if (proto == bpf_htons(ETH_P_IP))
		return sl_parse_ipv4(cur, end, room, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return sl_parse_ipv6(cur, end, room, p);
	return SL_PARSE_NOT_IP;
}

#endif

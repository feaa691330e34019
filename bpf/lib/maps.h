/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The maps of the redirection path, and the counters. */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include "common.h"

/* Mesh service addresses; filled from mesh-config by the redirector. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sl_svc_key);
	__type(value, struct sl_svc_val);
} sl_svc SEC(".maps");

/*
 * Original destinations by socket cookie, between connect() and the moment the
 * 4-tuple is known (sock_ops TCP_CONNECT_CB). LRU: a connect that fails before
 * that point cannot leak an entry forever.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sl_orig_dst);
} sl_pend SEC(".maps");

/* Original destinations by the 4-tuple the proxy sees on accept(). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sl_flow_key);
	__type(value, struct sl_orig_dst);
} sl_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sl_stats SEC(".maps");

/* Zero-hop endpoints, two generations (the node writes one, then points sl_svc at it). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SL_ZH_EPS_PER_GEN);
	__type(key, __u32);
	__type(value, struct sl_sockaddr);
} sl_zh_eps SEC(".maps");

/* Zero-hop authorization verdicts by cgroup and service address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sl_authz_key);
	__type(value, __u32);
} sl_zh_authz SEC(".maps");

/* What a zero-hop socket dialed, by socket cookie, for getpeername. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sl_sockaddr);
} sl_zh_peer SEC(".maps");

/*
 * sk_msg acceleration: both ends of local app <-> proxy pairs, keyed by the
 * socket's own 4-tuple (src = local end). sl_msg_on[0] is the proxy port
 * (host order) while the fast path is on, 0 when off.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SL_MSG_MAX);
	__type(key, struct sl_flow_key);
	__type(value, __u32);
} sl_msg SEC(".maps");

/* Sockets that sent on the TCP path once: they stay on it (LRU: stale keys only keep a socket on TCP). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SL_MSG_MAX);
	__type(key, struct sl_flow_key);
	__type(value, __u8);
} sl_msg_taint SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SL_MSG_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} sl_msg_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sl_msg_on SEC(".maps");

/* Local endpoints (loopback address and port) of the mesh: their pairs with the proxy join sl_msg too. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sl_svc_key);
	__type(value, __u8);
} sl_msg_eps SEC(".maps");

static __always_inline void sl_msg_count(__u32 stat, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&sl_msg_stats, &stat);

	if (c)
		*c += n;
}

static __always_inline int sl_is_loopback(const __u32 addr_be[4])
{
	/* 127.0.0.0/8 (v4-mapped) or ::1 */
	if (addr_be[0] == 0 && addr_be[1] == 0 && addr_be[2] == bpf_htonl(0xffff))
		return (bpf_ntohl(addr_be[3]) >> 24) == 127;
	return addr_be[0] == 0 && addr_be[1] == 0 && addr_be[2] == 0 && addr_be[3] == bpf_htonl(1);
}

/* Zero-hop connections by the service address dialed (per CPU), for metrics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sl_svc_key);
	__type(value, __u64);
} sl_zh_conns SEC(".maps");

/* Zero-hop bytes and closed connections by the service address dialed (per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sl_svc_key);
	__type(value, struct sl_zh_bytes);
} sl_zh_bytes SEC(".maps");

/* Proxy liveness: one entry, written by the node. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_live);
} sl_live SEC(".maps");

/* Worker listeners, one array per address family (a reuseport group is per address). */
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, SL_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} sl_work4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, SL_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} sl_work6 SEC(".maps");

/* enum sl_worker_state per slot; written by the node. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SL_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} sl_wstate SEC(".maps");

/* Open connections per slot; written by each worker. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SL_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} sl_wload SEC(".maps");

/* Connections sk_reuseport gave each slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SL_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u64);
} sl_wsel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sl_rp_cfg);
} sl_rpcfg SEC(".maps");

static __always_inline void sl_count(enum sl_stat stat)
{
	__u32 key = stat;
	__u64 *n = bpf_map_lookup_elem(&sl_stats, &key);

	if (n)
		*n += 1; /* per-CPU: no atomics needed */
}

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The ONE header for every struct that crosses the kernel/userspace line.
 * Its Rust mirror is bpf/src/abi.rs: change both together; the size and offset
 * asserts on both sides catch a half-done change at build time.
 *
 * Addresses are always 16 bytes: IPv4 is stored in its IPv4-mapped IPv6 form
 * (::ffff:a.b.c.d), so one map serves both families and an AF_INET6 socket that
 * dials a mapped address finds the same entry as an AF_INET one.
 * Every multi-byte field that holds wire data says its byte order (_be).
 */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

#include <linux/types.h>

/* Key of sl_svc: a mesh service address (VIP and port). */
struct sl_svc_key {
	__u32 addr_be[4];
	__u16 port_be;
	__u16 _pad;
};

/* Value of sl_svc. */
struct sl_svc_val {
	__u32 svc_id;   /* index of the service in the config, for counters */
	__u32 flags;    /* SL_SVC_* */
	__u32 ep_base;  /* zero-hop: first endpoint in sl_zh_eps */
	__u32 ep_count; /* zero-hop: how many */
};

/* sl_svc_val.flags: connect straight to an endpoint, never through the proxy. */
#define SL_SVC_ZERO_HOP 1
/* sl_svc_val.flags: zero-hop connects are checked against sl_zh_authz. */
#define SL_SVC_AUTHZ 2

/*
 * Key of sl_zh_authz: the connecting process's cgroup and the service address.
 * cgroup_id 0 holds the verdict for cgroups without an entry of their own.
 * Value: a __u32 enum sl_action (computed from the authorization policies by
 * the node, per workload identity).
 */
struct sl_authz_key {
	__u64 cgroup_id;
	struct sl_svc_key svc;
	__u32 _pad;
};
/* sl_zh_eps holds two generations of this many endpoints each. */
#define SL_ZH_EPS_PER_GEN 2048

/* A zero-hop endpoint (sl_zh_eps), and the VIP a zero-hop socket dialed (sl_zh_peer). */
struct sl_sockaddr {
	__u32 addr_be[4];
	__u16 port_be;
	__u16 _pad;
};

/* The destination an application dialed, before the rewrite, and who dialed. */
struct sl_orig_dst {
	__u32 addr_be[4];
	__u16 port_be;
	__u16 _pad;
	__u32 svc_id;
	__u64 cgroup_id; /* the connecting process's cgroup (its workload identity) */
};

/*
 * Key of sl_orig: the connection as the proxy sees it on accept():
 * src = the application's address (the proxy's peer), dst = the proxy's address.
 */
struct sl_flow_key {
	__u32 src_addr_be[4];
	__u32 dst_addr_be[4];
	__u16 src_port_be;
	__u16 dst_port_be;
};

/* Load-time configuration (a const volatile global: one object serves every config). */
struct sl_config {
	__u32 proxy_addr4_be;    /* where connect4 sends mesh traffic */
	__u32 proxy_addr6_be[4]; /* where connect6 sends mesh traffic */
	__u16 proxy_port4_be;
	__u16 proxy_port6_be;
	__u32 own_mark;          /* SO_MARK of the proxy's own sockets: never redirected */
	__u32 flags;             /* reserved, zero */
};

/* Proxy workers: slots of sl_work4/sl_work6, sl_wstate, sl_wload and sl_wsel. */
#define SL_MAX_WORKERS 64

enum sl_worker_state {
	SL_WORKER_FREE = 0,     /* no worker in this slot */
	SL_WORKER_ACTIVE = 1,   /* gets new connections */
	SL_WORKER_DRAINING = 2, /* finishing its connections: gets no new ones */
};

/* How sk_reuseport picks a worker (sl_rpcfg). */
enum sl_lb_mode {
	SL_LB_HASH = 0,         /* flow hash over the active workers */
	SL_LB_LEAST_LOADED = 1, /* fewest open connections (sl_wload) */
};

struct sl_rp_cfg {
	__u32 mode; /* enum sl_lb_mode */
	__u32 _pad;
};

/* What connect4/6 do when the proxy stopped heartbeating (sl_live). */
enum sl_fail_mode {
	SL_FAIL_OPEN = 0,   /* connect straight to the original destination */
	SL_FAIL_CLOSED = 1, /* refuse the connect (ECONNREFUSED) */
};

/* Proxy liveness, written by the node every heartbeat. */
struct sl_live {
	__u64 heartbeat_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns); 0: no node has started */
	__u32 fail_mode;    /* enum sl_fail_mode */
	__u32 timeout_ms;   /* older heartbeats mean the proxy is down */
};

/*
 * L3/L4 policy (XDP on ingress, tc on egress). Rules are matched in order,
 * first match wins; at most SL_MAX_RULES per direction. Everything is kept in
 * two slots: the node fills the inactive one, then flips sl_pcfg.active_slot,
 * so a packet sees the old policy or the new one, never a mix.
 */
#define SL_MAX_RULES 64
#define SL_POLICY_SLOTS 2

enum sl_dir { SL_DIR_INGRESS = 0, SL_DIR_EGRESS = 1 };
enum sl_action { SL_ACT_ALLOW = 0, SL_ACT_DENY = 1 };
/* sl_rule.proto: an IPPROTO_* number, or 0 for any. */
#define SL_PROTO_ANY 0

/*
 * Key of the sl_psrc/sl_pdst LPM tries. The prefix covers slot, dir and the
 * padding (32 bits) and then the address bits: prefixlen = 32 + address bits
 * (IPv4: 32 + 96 + n, as addresses are IPv4-mapped).
 */
struct sl_lpm_key {
	__u32 prefixlen;
	__u8 slot;
	__u8 dir;
	__u8 _pad[2];
	__u32 addr_be[4];
};

/* sl_prules[slot * 2 * SL_MAX_RULES + dir * SL_MAX_RULES + rule]. */
struct sl_rule {
	__u8 action;   /* enum sl_action */
	__u8 proto;    /* IPPROTO_*, or SL_PROTO_ANY */
	__u16 port_lo; /* destination ports, host order; port_hi == 0: any port */
	__u16 port_hi;
	__u16 _pad;
};

struct sl_pol_cfg {
	__u32 active_slot;
	__u32 default_in;  /* enum sl_action when no rule matches, ingress */
	__u32 default_eg;  /* egress */
	__u32 rate_pps;    /* per-source ingress limit; 0: none */
	__u32 rate_burst;  /* bucket size, packets */
	__u32 events_per_sec; /* drop events per CPU per second; more are counted, not sent */
};

/* Token bucket of one source address. */
struct sl_rl_state {
	__u64 tokens_nano; /* billionths of a packet: refills stay exact at any packet rate */
	__u64 last_ns;
};

/* Why a packet was dropped (sl_drop_event.reason). */
enum sl_drop_reason {
	SL_DROP_RULE = 0,
	SL_DROP_DEFAULT = 1,
	SL_DROP_RATE_LIMIT = 2,
	SL_DROP_MALFORMED = 3,
};

/* One sampled drop, through the sl_pevents ring buffer. */
struct sl_drop_event {
	__u64 ts_ns;
	__u32 src_be[4];
	__u32 dst_be[4];
	__u16 sport; /* host order */
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u8 reason; /* enum sl_drop_reason */
	__u8 _pad;
	__u32 rule; /* with SL_DROP_RULE */
	__u32 _pad2;
};

/* sl_pstats, per direction: SL_PSTAT_PER_DIR counters from dir * SL_PSTAT_PER_DIR. */
enum sl_pstat {
	SL_PSTAT_ALLOWED_DEFAULT = 0,
	SL_PSTAT_DENIED_DEFAULT = 1,
	SL_PSTAT_RATE_LIMITED = 2,
	SL_PSTAT_MALFORMED = 3,
	SL_PSTAT_NOT_IP = 4,
	SL_PSTAT_EVENTS_SUPPRESSED = 5,
	SL_PSTAT_RULE_BASE = 8, /* + rule index: packets that matched rule N */
	SL_PSTAT_PER_DIR = SL_PSTAT_RULE_BASE + SL_MAX_RULES,
};

/* Indexes into sl_stats (per-CPU u64 counters). */
enum sl_stat {
	SL_STAT_REDIRECT4 = 0,   /* connect4 rewrote a mesh destination */
	SL_STAT_REDIRECT6 = 1,   /* connect6 rewrote a mesh destination */
	SL_STAT_OWN_SKIPPED = 2, /* a proxy socket dialed a mesh address: left alone */
	SL_STAT_PASSTHROUGH = 3, /* a TCP connect to a destination outside the mesh */
	SL_STAT_ORIG_SAVED = 4,  /* sock_ops re-keyed an original destination by 4-tuple */
	SL_STAT_PEND_FULL = 5,   /* the pending map refused an entry */
	SL_STAT_DOWN_OPEN = 6,   /* proxy down, fail-open: connect went direct */
	SL_STAT_DOWN_CLOSED = 7, /* proxy down, fail-closed: connect refused */
	SL_STAT_RP_SELECTED = 8, /* sk_reuseport chose a worker */
	SL_STAT_RP_FALLBACK = 9, /* sk_reuseport found no active worker: kernel default */
	SL_STAT_RP_MIGRATED = 10, /* a closing worker's queued connection moved to another */
	SL_STAT_ZERO_HOP = 11,    /* connect went straight to a local endpoint (no proxy) */
	SL_STAT_PEER_REWRITTEN = 12, /* getpeername showed the service address */
	SL_STAT_ZH_DENIED = 13,   /* a zero-hop connect refused by authorization */
	SL_STAT_MAX = 14,
};

/*
 * sk_skb splicing (bpf/sk_skb.bpf.c): the proxy puts both sockets of an L4
 * connection into sl_splice (a SOCKHASH keyed by socket cookie) and tells
 * each one its peer in sl_spl_peer; the verdict program redirects every skb
 * to the peer's egress and counts its bytes here.
 */
#define SL_SPLICE_MAX 65536

struct sl_splice_peer {
	__u64 peer_cookie;
	__u64 bytes; /* redirected from this socket to its peer */
};

/* Zero-hop connections' bytes per service address, added when a socket closes (sl_zh_bytes). */
struct sl_zh_bytes {
	__u64 up;     /* bytes the application sent (and the endpoint acknowledged) */
	__u64 down;   /* bytes it received */
	__u64 closed; /* connections closed */
};

/* sk_msg acceleration of local pairs: counters (sl_msg_stats). */
enum sl_msg_stat {
	SL_MSG_STAT_REDIRECTED = 0, /* sends put straight into the peer socket's receive queue */
	SL_MSG_STAT_BYTES = 1,      /* their bytes */
	SL_MSG_STAT_NO_PEER = 2,    /* sends whose peer was not in the map: TCP path, and the socket stays on it */
	SL_MSG_STAT_STAYED = 3,     /* sends of such a socket, on the TCP path (keeps the byte order) */
	SL_MSG_STAT_JOINED = 4,     /* sockets sock_ops put into the map */
	SL_MSG_STAT_COUNT = 5,
};

#define SL_MSG_MAX 65536

enum sl_spl_stat {
	SL_SPL_STAT_REDIRECTED = 0, /* skbs sent on to the peer socket */
	SL_SPL_STAT_BYTES = 1,      /* their bytes */
	SL_SPL_STAT_PASSED = 2,     /* skbs of sockets without a peer: to userspace */
	SL_SPL_STAT_FAILED = 3,     /* the peer was not in the map: to userspace */
	SL_SPL_STAT_COUNT = 4,
};

_Static_assert(sizeof(struct sl_splice_peer) == 16, "sl_splice_peer size");
_Static_assert(sizeof(struct sl_svc_key) == 20, "sl_svc_key size");
_Static_assert(__builtin_offsetof(struct sl_svc_key, port_be) == 16, "sl_svc_key.port_be");
_Static_assert(sizeof(struct sl_svc_val) == 16, "sl_svc_val size");
_Static_assert(__builtin_offsetof(struct sl_svc_val, ep_base) == 8, "sl_svc_val.ep_base");
_Static_assert(sizeof(struct sl_sockaddr) == 20, "sl_sockaddr size");
_Static_assert(sizeof(struct sl_zh_bytes) == 24, "sl_zh_bytes size");
_Static_assert(sizeof(struct sl_orig_dst) == 32, "sl_orig_dst size");
_Static_assert(sizeof(struct sl_authz_key) == 32, "sl_authz_key size");
_Static_assert(__builtin_offsetof(struct sl_orig_dst, cgroup_id) == 24, "sl_orig_dst.cgroup_id");
_Static_assert(__builtin_offsetof(struct sl_orig_dst, port_be) == 16, "sl_orig_dst.port_be");
_Static_assert(__builtin_offsetof(struct sl_orig_dst, svc_id) == 20, "sl_orig_dst.svc_id");
_Static_assert(sizeof(struct sl_flow_key) == 36, "sl_flow_key size");
_Static_assert(__builtin_offsetof(struct sl_flow_key, dst_addr_be) == 16, "sl_flow_key.dst_addr_be");
_Static_assert(__builtin_offsetof(struct sl_flow_key, src_port_be) == 32, "sl_flow_key.src_port_be");
_Static_assert(__builtin_offsetof(struct sl_flow_key, dst_port_be) == 34, "sl_flow_key.dst_port_be");
_Static_assert(sizeof(struct sl_config) == 32, "sl_config size");
_Static_assert(sizeof(struct sl_live) == 16, "sl_live size");
_Static_assert(__builtin_offsetof(struct sl_live, fail_mode) == 8, "sl_live.fail_mode");
_Static_assert(sizeof(struct sl_rp_cfg) == 8, "sl_rp_cfg size");
_Static_assert(sizeof(struct sl_lpm_key) == 24, "sl_lpm_key size");
_Static_assert(__builtin_offsetof(struct sl_lpm_key, addr_be) == 8, "sl_lpm_key.addr_be");
_Static_assert(sizeof(struct sl_rule) == 8, "sl_rule size");
_Static_assert(sizeof(struct sl_pol_cfg) == 24, "sl_pol_cfg size");
_Static_assert(sizeof(struct sl_rl_state) == 16, "sl_rl_state size");
_Static_assert(sizeof(struct sl_drop_event) == 56, "sl_drop_event size");
_Static_assert(__builtin_offsetof(struct sl_drop_event, sport) == 40, "sl_drop_event.sport");
_Static_assert(__builtin_offsetof(struct sl_drop_event, rule) == 48, "sl_drop_event.rule");
_Static_assert(__builtin_offsetof(struct sl_config, proxy_addr6_be) == 4, "sl_config.proxy_addr6_be");
_Static_assert(__builtin_offsetof(struct sl_config, proxy_port4_be) == 20, "sl_config.proxy_port4_be");
_Static_assert(__builtin_offsetof(struct sl_config, own_mark) == 24, "sl_config.own_mark");

#endif

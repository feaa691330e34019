//! Sluice's eBPF programs and their ABI.
//!
//! The programs are C (`bpf/<hook>.bpf.c`, shared logic in `bpf/lib/*.h`),
//! compiled by `build.rs` and embedded here, so the `sluice` binary carries
//! everything it loads. [`abi`] mirrors `bpf/lib/abi.h`, the one header for every
//! struct that crosses into the kernel; both sides assert sizes and offsets.
//! Loading and attaching is the redirector's job: this crate has no I/O.

// The only unsafe code is the `aya::Pod` impls of the ABI mirror (abi.rs).
#![deny(unsafe_code)]

pub mod abi;

/// An embedded BPF object file.
#[derive(Debug, Clone, Copy)]
pub struct Object {
    /// The file's stem: `bpf/<name>.bpf.c`.
    pub name: &'static str,
    /// ELF bytes, aligned as aya's loader wants them.
    pub bytes: &'static [u8],
}

/// `cgroup/connect4`, `cgroup/connect6`, `cgroup/getpeername4`, `cgroup/getpeername6`.
pub const SOCK_ADDR: Object = Object {
    name: "sock_addr",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_addr.bpf.o")),
};

/// `sockops` (program `sl_sock_ops`).
pub const SOCK_OPS: Object = Object {
    name: "sock_ops",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_ops.bpf.o")),
};

/// `sk_reuseport/migrate` (program `sl_reuseport`).
pub const REUSEPORT: Object = Object {
    name: "reuseport",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reuseport.bpf.o")),
};

/// `xdp` (program `sl_xdp_policy`): L3/L4 policy on ingress.
pub const XDP: Object =
    Object { name: "xdp", bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp.bpf.o")) };

/// `classifier` (program `sl_tc_egress`): L3/L4 policy on egress.
pub const TC: Object =
    Object { name: "tc", bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc.bpf.o")) };

/// `sk_skb/stream_parser` and `sk_skb/stream_verdict` (programs
/// `sl_spl_parser`, `sl_spl_verdict`): L4 splicing between two proxy sockets.
pub const SK_SKB: Object =
    Object { name: "sk_skb", bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sk_skb.bpf.o")) };

/// `sk_msg` (program `sl_msg_verdict`): local app <-> proxy pairs skip loopback TCP.
pub const SK_MSG: Object =
    Object { name: "sk_msg", bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sk_msg.bpf.o")) };

/// Every object, in load order.
pub const OBJECTS: &[Object] = &[SOCK_ADDR, SOCK_OPS, REUSEPORT, XDP, TC, SK_SKB, SK_MSG];

/// Map names (`sl_` prefix, at most 15 characters, as `bpftool map` shows them).
pub mod maps {
    /// L4 splicing: sockets by cookie (`SOCKHASH`, `u64` keys).
    pub const SPLICE: &str = "sl_splice";
    /// L4 splicing: [`crate::abi::SplicePeer`] by socket cookie.
    pub const SPLICE_PEER: &str = "sl_spl_peer";
    /// L4 splicing: per-CPU counters by [`crate::abi::SpliceStat`].
    pub const SPLICE_STATS: &str = "sl_spl_stats";
    /// Mesh service addresses: [`crate::abi::SvcKey`] → [`crate::abi::SvcVal`].
    pub const SERVICES: &str = "sl_svc";
    /// Original destinations by socket cookie (`u64`) until the 4-tuple is known.
    pub const PENDING: &str = "sl_pend";
    /// Original destinations by 4-tuple: [`crate::abi::FlowKey`] → [`crate::abi::OrigDst`].
    pub const ORIG_DST: &str = "sl_orig";
    /// Per-CPU `u64` counters indexed by [`crate::abi::Stat`].
    pub const STATS: &str = "sl_stats";
    /// Zero-hop endpoints: [`crate::abi::Sockaddr`], two generations.
    pub const ZH_ENDPOINTS: &str = "sl_zh_eps";
    /// Zero-hop authorization: [`crate::abi::AuthzKey`] → `u32` action.
    pub const ZH_AUTHZ: &str = "sl_zh_authz";
    /// What zero-hop sockets dialed, by cookie (for getpeername).
    pub const ZH_PEER: &str = "sl_zh_peer";
    /// Zero-hop connections per service address: [`crate::abi::SvcKey`] → per-CPU `u64`.
    pub const ZH_CONNS: &str = "sl_zh_conns";
    /// Zero-hop bytes and closes per service address: [`crate::abi::SvcKey`] → per-CPU [`crate::abi::ZhBytes`].
    pub const ZH_BYTES: &str = "sl_zh_bytes";
    /// sk_msg: both ends of local app <-> proxy pairs (`SOCKHASH`, [`crate::abi::FlowKey`] keys).
    pub const MSG: &str = "sl_msg";
    /// sk_msg: sockets that went the TCP path and stay on it ([`crate::abi::FlowKey`] → `u8`).
    pub const MSG_TAINT: &str = "sl_msg_taint";
    /// sk_msg: per-CPU counters by [`crate::abi::MsgStat`].
    pub const MSG_STATS: &str = "sl_msg_stats";
    /// sk_msg: one `u32`, the proxy port while on, 0 when off.
    pub const MSG_ON: &str = "sl_msg_on";
    /// sk_msg: local endpoints of the mesh ([`crate::abi::SvcKey`] → `u8`).
    pub const MSG_ENDPOINTS: &str = "sl_msg_eps";
    /// Proxy liveness: [`crate::abi::Live`].
    pub const LIVE: &str = "sl_live";
    /// Worker listeners (IPv4), `REUSEPORT_SOCKARRAY` by slot.
    pub const WORKERS4: &str = "sl_work4";
    /// Worker listeners (IPv6).
    pub const WORKERS6: &str = "sl_work6";
    /// [`crate::abi::WorkerState`] by slot (`u32`).
    pub const WORKER_STATE: &str = "sl_wstate";
    /// Open connections by slot (`u32`).
    pub const WORKER_LOAD: &str = "sl_wload";
    /// Per-CPU count of connections given to each slot (`u64`).
    pub const WORKER_SELECTED: &str = "sl_wsel";
    /// [`crate::abi::RpCfg`]: how sk_reuseport picks.
    pub const REUSEPORT_CFG: &str = "sl_rpcfg";
    /// Policy: source prefixes → rule bitmask (LPM trie of [`crate::abi::LpmKey`] → `u64`).
    pub const POLICY_SRC: &str = "sl_psrc";
    /// Policy: destination prefixes → rule bitmask.
    pub const POLICY_DST: &str = "sl_pdst";
    /// Policy rules: [`crate::abi::Rule`] by slot, direction and index.
    pub const POLICY_RULES: &str = "sl_prules";
    /// Policy settings: [`crate::abi::PolCfg`].
    pub const POLICY_CFG: &str = "sl_pcfg";
    /// Per-CPU policy counters (see [`crate::abi::pstat`]).
    pub const POLICY_STATS: &str = "sl_pstats";
    /// Token buckets by source.
    pub const POLICY_RATE: &str = "sl_prl";
    /// Drop events ring buffer: [`crate::abi::DropEvent`].
    pub const POLICY_EVENTS: &str = "sl_pevents";
    /// Per-CPU drop event budget.
    pub const POLICY_EVENT_BUDGET: &str = "sl_pevrl";
    /// The policy objects' maps, pinned by name.
    pub const POLICY: &[&str] = &[
        POLICY_SRC,
        POLICY_DST,
        POLICY_RULES,
        POLICY_CFG,
        POLICY_STATS,
        POLICY_RATE,
        POLICY_EVENTS,
        POLICY_EVENT_BUDGET,
    ];
    /// Every map shared between objects (pinned by name, so the objects share them).
    pub const SHARED: &[&str] = &[
        SERVICES,
        PENDING,
        ORIG_DST,
        STATS,
        LIVE,
        WORKERS4,
        WORKERS6,
        WORKER_STATE,
        WORKER_LOAD,
        WORKER_SELECTED,
        REUSEPORT_CFG,
        ZH_ENDPOINTS,
        ZH_PEER,
        ZH_AUTHZ,
        ZH_CONNS,
        ZH_BYTES,
        MSG,
        MSG_TAINT,
        MSG_STATS,
        MSG_ON,
        MSG_ENDPOINTS,
    ];
}

/// Program names, as `bpftool prog` shows them.
pub mod programs {
    pub const CONNECT4: &str = "sl_connect4";
    pub const CONNECT6: &str = "sl_connect6";
    pub const GETPEERNAME4: &str = "sl_getpeername4";
    pub const GETPEERNAME6: &str = "sl_getpeername6";
    pub const SOCK_OPS: &str = "sl_sock_ops";
    pub const MSG_VERDICT: &str = "sl_msg_verdict";
    pub const REUSEPORT: &str = "sl_reuseport";
    pub const XDP_POLICY: &str = "sl_xdp_policy";
    pub const TC_EGRESS: &str = "sl_tc_egress";
    pub const SPLICE_PARSER: &str = "sl_spl_parser";
    pub const SPLICE_VERDICT: &str = "sl_spl_verdict";
}

/// Name of the `const volatile struct sl_config` global.
pub const CONFIG_GLOBAL: &str = "sl_cfg";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_bpf_elf() {
        for obj in OBJECTS {
            assert_eq!(&obj.bytes[..4], b"\x7fELF", "{} is not an ELF file", obj.name);
            // e_machine at offset 18: EM_BPF = 247.
            assert_eq!(u16::from_le_bytes([obj.bytes[18], obj.bytes[19]]), 247, "{}", obj.name);
        }
    }

    #[test]
    fn map_names_fit_the_kernel() {
        for m in maps::SHARED.iter().chain(maps::POLICY) {
            assert!(m.len() <= 15 && m.starts_with("sl_"), "{m}");
        }
    }
}

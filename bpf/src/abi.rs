//! Rust mirror of `bpf/lib/abi.h`. Keep the two in step: the `const` asserts
//! below and the `_Static_assert`s in the header pin the same sizes and offsets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A 16-byte address as the kernel programs store it: IPv4 in its mapped form,
/// four `u32` words each holding network-order bytes.
pub type AddrBe = [u32; 4];

/// Encodes an address the way `bpf/lib/common.h` does.
pub fn addr_be(ip: IpAddr) -> AddrBe {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

/// Decodes [`addr_be`]; a mapped address comes back as IPv4.
pub fn ip_from_be(a: AddrBe) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn port_be(port: u16) -> u16 {
    port.to_be()
}

/// `struct sl_svc_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SvcKey {
    pub addr_be: AddrBe,
    pub port_be: u16,
    pub _pad: u16,
}

impl SvcKey {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr_be: addr_be(addr.ip()), port_be: port_be(addr.port()), _pad: 0 }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(ip_from_be(self.addr_be), u16::from_be(self.port_be))
    }
}

/// `struct sl_svc_val`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcVal {
    pub svc_id: u32,
    pub flags: u32,
    pub ep_base: u32,
    pub ep_count: u32,
}

/// `SL_SVC_ZERO_HOP`.
pub const SVC_ZERO_HOP: u32 = 1;
/// `SL_SVC_AUTHZ`: zero-hop connects are checked against `sl_zh_authz`.
pub const SVC_AUTHZ: u32 = 2;

/// `struct sl_authz_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AuthzKey {
    pub cgroup_id: u64,
    pub svc: SvcKey,
    pub _pad: u32,
}
/// `SL_ZH_EPS_PER_GEN`: zero-hop endpoints per generation of `sl_zh_eps`.
pub const ZH_EPS_PER_GEN: u32 = 2048;

/// `struct sl_sockaddr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sockaddr {
    pub addr_be: AddrBe,
    pub port_be: u16,
    pub _pad: u16,
}

impl Sockaddr {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr_be: addr_be(addr.ip()), port_be: port_be(addr.port()), _pad: 0 }
    }
}

/// `struct sl_orig_dst`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrigDst {
    pub addr_be: AddrBe,
    pub port_be: u16,
    pub _pad: u16,
    pub svc_id: u32,
    /// The connecting process's cgroup: its workload identity.
    pub cgroup_id: u64,
}

impl OrigDst {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(ip_from_be(self.addr_be), u16::from_be(self.port_be))
    }
}

/// `struct sl_flow_key`: src is the application (the proxy's peer), dst the proxy.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr_be: AddrBe,
    pub dst_addr_be: AddrBe,
    pub src_port_be: u16,
    pub dst_port_be: u16,
}

impl FlowKey {
    /// The key of an accepted connection: `peer` from accept(), `local` the listener.
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            src_addr_be: addr_be(peer.ip()),
            dst_addr_be: addr_be(local.ip()),
            src_port_be: port_be(peer.port()),
            dst_port_be: port_be(local.port()),
        }
    }
}

/// `struct sl_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    pub proxy_addr4_be: u32,
    pub proxy_addr6_be: AddrBe,
    pub proxy_port4_be: u16,
    pub proxy_port6_be: u16,
    pub own_mark: u32,
    pub flags: u32,
}

impl Config {
    pub fn new(proxy4: SocketAddr, proxy6: SocketAddr, own_mark: u32) -> Self {
        let v4 = match proxy4.ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::LOCALHOST),
        };
        Self {
            proxy_addr4_be: u32::from_ne_bytes(v4.octets()),
            proxy_addr6_be: addr_be(proxy6.ip()),
            proxy_port4_be: port_be(proxy4.port()),
            proxy_port6_be: port_be(proxy6.port()),
            own_mark,
            flags: 0,
        }
    }
}

/// `SL_MAX_WORKERS`: slots of the worker maps.
pub const MAX_WORKERS: u32 = 64;

/// `enum sl_worker_state`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Free = 0,
    Active = 1,
    Draining = 2,
}

impl WorkerState {
    pub fn from_u32(v: u32) -> Option<Self> {
        [Self::Free, Self::Active, Self::Draining].into_iter().find(|s| *s as u32 == v)
    }
}

/// `enum sl_lb_mode`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbMode {
    Hash = 0,
    LeastLoaded = 1,
}

/// `struct sl_rp_cfg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RpCfg {
    pub mode: u32,
    pub _pad: u32,
}

/// `enum sl_fail_mode`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Open = 0,
    Closed = 1,
}

/// `struct sl_live`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Live {
    pub heartbeat_ns: u64,
    pub fail_mode: u32,
    pub timeout_ms: u32,
}

/// `SL_SPLICE_MAX`: sockets in the splice map.
pub const SPLICE_MAX: u32 = 65536;

/// `struct sl_splice_peer`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SplicePeer {
    pub peer_cookie: u64,
    /// Redirected from this socket to its peer.
    pub bytes: u64,
}

/// `enum sl_spl_stat`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceStat {
    Redirected = 0,
    Bytes = 1,
    Passed = 2,
    Failed = 3,
}

impl SpliceStat {
    pub const COUNT: u32 = 4;
    pub const ALL: [SpliceStat; 4] =
        [SpliceStat::Redirected, SpliceStat::Bytes, SpliceStat::Passed, SpliceStat::Failed];

    pub fn name(self) -> &'static str {
        match self {
            SpliceStat::Redirected => "redirected_skbs",
            SpliceStat::Bytes => "redirected_bytes",
            SpliceStat::Passed => "passed_skbs",
            SpliceStat::Failed => "failed_skbs",
        }
    }
}

const _: () = assert!(std::mem::size_of::<SplicePeer>() == 16);

/// `struct sl_zh_bytes`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZhBytes {
    pub up: u64,
    pub down: u64,
    pub closed: u64,
}

const _: () = assert!(std::mem::size_of::<ZhBytes>() == 24);

/// `enum sl_msg_stat`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgStat {
    Redirected = 0,
    Bytes = 1,
    NoPeer = 2,
    Stayed = 3,
    Joined = 4,
}

impl MsgStat {
    pub const ALL: [MsgStat; 5] =
        [MsgStat::Redirected, MsgStat::Bytes, MsgStat::NoPeer, MsgStat::Stayed, MsgStat::Joined];

    pub fn name(self) -> &'static str {
        match self {
            MsgStat::Redirected => "redirected_sends",
            MsgStat::Bytes => "redirected_bytes",
            MsgStat::NoPeer => "no_peer_sends",
            MsgStat::Stayed => "tcp_path_sends",
            MsgStat::Joined => "joined_sockets",
        }
    }
}

/// `SL_MSG_MAX`: sockets in the sk_msg map.
pub const MSG_MAX: u32 = 65536;

/// `SL_MAX_RULES`: rules per direction.
pub const MAX_RULES: u32 = 64;

/// `enum sl_dir`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    Ingress = 0,
    Egress = 1,
}

/// `enum sl_action`.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow = 0,
    Deny = 1,
}

/// `struct sl_lpm_key`: the prefix covers slot, dir and padding (32 bits), then the address.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LpmKey {
    pub prefixlen: u32,
    pub slot: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
    pub addr_be: AddrBe,
}

impl LpmKey {
    /// `addr_bits` counts in the 128-bit (IPv4-mapped) space.
    pub fn new(slot: u8, dir: Dir, ip: IpAddr, addr_bits: u32) -> Self {
        Self { prefixlen: 32 + addr_bits, slot, dir: dir as u8, _pad: [0; 2], addr_be: addr_be(ip) }
    }
}

/// `struct sl_rule`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rule {
    pub action: u8,
    pub proto: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    pub _pad: u16,
}

/// `struct sl_pol_cfg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolCfg {
    pub active_slot: u32,
    pub default_in: u32,
    pub default_eg: u32,
    pub rate_pps: u32,
    pub rate_burst: u32,
    pub events_per_sec: u32,
}

/// `struct sl_rl_state`: a source's token bucket.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RlState {
    pub tokens_nano: u64,
    pub last_ns: u64,
}

/// `struct sl_drop_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropEvent {
    pub ts_ns: u64,
    pub src_be: AddrBe,
    pub dst_be: AddrBe,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub reason: u8,
    pub _pad: u8,
    pub rule: u32,
    pub _pad2: u32,
}

impl DropEvent {
    /// Reads one from ring buffer bytes (None when too short).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < std::mem::size_of::<Self>() {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let addr = |o: usize| std::array::from_fn(|i| u32_at(o + 4 * i));
        Some(Self {
            ts_ns: u64::from_ne_bytes(b[0..8].try_into().ok()?),
            src_be: addr(8),
            dst_be: addr(24),
            sport: u16::from_ne_bytes([b[40], b[41]]),
            dport: u16::from_ne_bytes([b[42], b[43]]),
            proto: b[44],
            dir: b[45],
            reason: b[46],
            _pad: 0,
            rule: u32_at(48),
            _pad2: 0,
        })
    }

    pub fn reason_name(&self) -> &'static str {
        match self.reason {
            0 => "rule",
            1 => "default",
            2 => "rate_limit",
            3 => "malformed",
            _ => "unknown",
        }
    }
}

/// `enum sl_pstat`: the policy counters of one direction start at `dir * PER_DIR`.
pub mod pstat {
    pub const ALLOWED_DEFAULT: u32 = 0;
    pub const DENIED_DEFAULT: u32 = 1;
    pub const RATE_LIMITED: u32 = 2;
    pub const MALFORMED: u32 = 3;
    pub const NOT_IP: u32 = 4;
    pub const EVENTS_SUPPRESSED: u32 = 5;
    pub const RULE_BASE: u32 = 8;
    pub const PER_DIR: u32 = RULE_BASE + super::MAX_RULES;
    /// The named counters (not per rule).
    pub const NAMED: [(u32, &str); 6] = [
        (ALLOWED_DEFAULT, "allowed_default"),
        (DENIED_DEFAULT, "denied_default"),
        (RATE_LIMITED, "rate_limited"),
        (MALFORMED, "malformed"),
        (NOT_IP, "not_ip"),
        (EVENTS_SUPPRESSED, "events_suppressed"),
    ];
}

/// `enum sl_stat`: indexes into `sl_stats`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    Redirect4 = 0,
    Redirect6 = 1,
    OwnSkipped = 2,
    Passthrough = 3,
    OrigSaved = 4,
    PendFull = 5,
    DownOpen = 6,
    DownClosed = 7,
    RpSelected = 8,
    RpFallback = 9,
    RpMigrated = 10,
    ZeroHop = 11,
    PeerRewritten = 12,
    ZhDenied = 13,
}

impl Stat {
    pub const ALL: [Stat; 14] = [
        Stat::Redirect4,
        Stat::Redirect6,
        Stat::OwnSkipped,
        Stat::Passthrough,
        Stat::OrigSaved,
        Stat::PendFull,
        Stat::DownOpen,
        Stat::DownClosed,
        Stat::RpSelected,
        Stat::RpFallback,
        Stat::RpMigrated,
        Stat::ZeroHop,
        Stat::PeerRewritten,
        Stat::ZhDenied,
    ];
    /// `SL_STAT_MAX`: the number of counters.
    pub const COUNT: u32 = 14;

    /// The name used in `sluice status` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Stat::Redirect4 => "redirect_connect4",
            Stat::Redirect6 => "redirect_connect6",
            Stat::OwnSkipped => "own_socket_skipped",
            Stat::Passthrough => "passthrough",
            Stat::OrigSaved => "orig_dst_saved",
            Stat::PendFull => "pending_map_full",
            Stat::DownOpen => "proxy_down_fail_open",
            Stat::DownClosed => "proxy_down_fail_closed",
            Stat::RpSelected => "worker_selected",
            Stat::RpFallback => "worker_fallback",
            Stat::RpMigrated => "worker_migrated",
            Stat::ZeroHop => "zero_hop_connect",
            Stat::PeerRewritten => "zero_hop_getpeername",
            Stat::ZhDenied => "zero_hop_denied",
        }
    }
}

#[allow(unsafe_code)]
mod pod {
    use super::*;
    // SAFETY: each type is #[repr(C)], made only of integers (every bit pattern is
    // valid) with explicit padding fields, so it has no uninitialised bytes; the
    // asserts below pin its layout to the C header's.
    unsafe impl aya::Pod for SvcKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SvcVal {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ZhBytes {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for AuthzKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Live {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Sockaddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RpCfg {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LpmKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Rule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolCfg {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SplicePeer {}
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<SvcKey>() == 20);
    assert!(offset_of!(SvcKey, port_be) == 16);
    assert!(size_of::<SvcVal>() == 16);
    assert!(offset_of!(SvcVal, ep_base) == 8);
    assert!(size_of::<Sockaddr>() == 20);
    assert!(size_of::<OrigDst>() == 32);
    assert!(size_of::<AuthzKey>() == 32);
    assert!(offset_of!(OrigDst, cgroup_id) == 24);
    assert!(offset_of!(OrigDst, port_be) == 16);
    assert!(offset_of!(OrigDst, svc_id) == 20);
    assert!(size_of::<FlowKey>() == 36);
    assert!(offset_of!(FlowKey, dst_addr_be) == 16);
    assert!(offset_of!(FlowKey, src_port_be) == 32);
    assert!(offset_of!(FlowKey, dst_port_be) == 34);
    assert!(size_of::<Config>() == 32);
    assert!(offset_of!(Config, proxy_addr6_be) == 4);
    assert!(offset_of!(Config, proxy_port4_be) == 20);
    assert!(offset_of!(Config, own_mark) == 24);
    assert!(size_of::<Live>() == 16);
    assert!(offset_of!(Live, fail_mode) == 8);
    assert!(size_of::<RpCfg>() == 8);
    assert!(size_of::<LpmKey>() == 24);
    assert!(offset_of!(LpmKey, addr_be) == 8);
    assert!(size_of::<Rule>() == 8);
    assert!(size_of::<PolCfg>() == 24);
    assert!(size_of::<DropEvent>() == 56);
    assert!(size_of::<RlState>() == 16);
    assert!(offset_of!(DropEvent, sport) == 40);
    assert!(offset_of!(DropEvent, rule) == 48);
};

#[cfg(test)]
mod tests;

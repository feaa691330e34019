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
}

/// `struct sl_orig_dst`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrigDst {
    pub addr_be: AddrBe,
    pub port_be: u16,
    pub _pad: u16,
    pub svc_id: u32,
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
}

impl Stat {
    pub const ALL: [Stat; 11] = [
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
    ];
    /// `SL_STAT_MAX`: the number of counters.
    pub const COUNT: u32 = 11;

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
    unsafe impl aya::Pod for OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Live {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RpCfg {}
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<SvcKey>() == 20);
    assert!(offset_of!(SvcKey, port_be) == 16);
    assert!(size_of::<SvcVal>() == 8);
    assert!(size_of::<OrigDst>() == 24);
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
};

#[cfg(test)]
mod tests;

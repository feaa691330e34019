//! The validated mesh: every address parsed, every name resolved.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

/// A whole, valid mesh config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MeshConfig {
    pub services: Vec<Service>,
    /// L3/L4 policy enforced in XDP (ingress) and tc (egress); `None`: no policy.
    pub policy: Option<Policy>,
}

/// L3/L4 policy: ordered rules, first match wins, then the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Network interfaces it applies to (ingress XDP, egress tc).
    pub interfaces: Vec<String>,
    pub default_ingress: PolicyAction,
    pub default_egress: PolicyAction,
    pub rules: Vec<PolicyRule>,
    /// Per source address, on ingress.
    pub rate_limit: Option<RateLimit>,
    /// Drop events per CPU per second sent to the logs; more are only counted.
    pub drop_events_per_second: u32,
    pub xdp_mode: XdpMode,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native (driver) where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native only: fail if the driver cannot.
    Native,
    /// Generic (after the kernel built the skb): works on every interface.
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

/// An IP prefix; host bits are zero (validation refuses others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The prefix length in the 128-bit space where IPv4 is mapped (::ffff:0:0/96).
    pub fn mapped_bits(&self) -> u32 {
        match self.addr {
            IpAddr::V4(_) => 96 + u32::from(self.prefix),
            IpAddr::V6(_) => u32::from(self.prefix),
        }
    }

    /// Every address, both families.
    pub fn any() -> [Cidr; 2] {
        [
            Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), prefix: 0 },
            Cidr { addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), prefix: 0 },
        ]
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IP protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl L4Protocol {
    /// The IPPROTO number (0 for any).
    pub fn number(self) -> u8 {
        match self {
            L4Protocol::Any => 0,
            L4Protocol::Tcp => 6,
            L4Protocol::Udp => 17,
            L4Protocol::Icmp => 1,
            L4Protocol::Icmpv6 => 58,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub name: String,
    pub action: PolicyAction,
    pub direction: Direction,
    /// Empty: any source.
    pub sources: Vec<Cidr>,
    /// Empty: any destination.
    pub destinations: Vec<Cidr>,
    pub protocol: L4Protocol,
    /// Destination port ranges (inclusive); empty: any port.
    pub ports: Vec<(u16, u16)>,
}

impl PolicyRule {
    /// Kernel rules it takes: one per port range.
    pub fn kernel_rules(&self) -> usize {
        self.ports.len().max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub packets_per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    /// The port endpoints listen on, unless an endpoint says otherwise.
    pub target_port: u16,
    pub protocol: Protocol,
    /// L4 only: the kernel connects applications straight to an endpoint; the
    /// proxy never sees these connections.
    pub zero_hop: bool,
}

/// How the proxy treats a service port's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Opaque TCP, forwarded byte for byte.
    Tcp,
}

impl Protocol {
    pub const NAMES: &'static [&'static str] = &["tcp"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" | "TCP" => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Overrides the service port's `target_port` (single-port services only).
    pub port: Option<u16>,
    pub node: Option<String>,
    pub cgroup: Option<PathBuf>,
}

impl Endpoint {
    /// Where to connect for `port` of the service.
    pub fn socket_addr(&self, port: &ServicePort) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(port.target_port))
    }
}

/// One address the mesh intercepts, and what is behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAddr {
    /// Index into [`MeshConfig::services`]; also the kernel's `svc_id`.
    pub service: usize,
    /// Index into the service's `ports`.
    pub port: usize,
}

impl MeshConfig {
    /// Every intercepted VIP:port (validation guarantees no duplicates).
    pub fn service_addrs(&self) -> BTreeMap<SocketAddr, ServiceAddr> {
        let mut out = BTreeMap::new();
        for (si, svc) in self.services.iter().enumerate() {
            for vip in &svc.vips {
                for (pi, p) in svc.ports.iter().enumerate() {
                    out.insert(SocketAddr::new(*vip, p.port), ServiceAddr { service: si, port: pi });
                }
            }
        }
        out
    }
}

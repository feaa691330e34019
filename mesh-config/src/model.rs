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

//! Raw file → [`MeshConfig`], refusing anything the data path could not serve.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde_saphyr::Spanned;

use crate::{
    error::{ConfigError, Location},
    model::{Endpoint, MeshConfig, Protocol, Service, ServicePort},
    raw::{RawConfig, RawEndpoint, RawService, loc},
};

pub(crate) fn validate(file: &Path, raw: RawConfig) -> Result<MeshConfig, ConfigError> {
    let v = Validator { file };
    let raw_services = raw.services.unwrap_or_default();
    let raw_endpoints = raw.endpoints.unwrap_or_default();
    let mut services = Vec::with_capacity(raw_services.len());
    let mut names: HashMap<String, (usize, Location)> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, (String, Location)> = HashMap::new();

    for (i, s) in raw_services.iter().enumerate() {
        let svc = v.service(i, &s.value, &mut addrs)?;
        if let Some((_, first)) = names.get(&svc.name) {
            return Err(v
                .err(
                    loc(&s.value.name),
                    format!("services[{i}].name"),
                    format!("duplicate service name '{}'", svc.name),
                )
                .hint(format!("it is already used at line {}; give each service its own name", first.line)));
        }
        names.insert(svc.name.clone(), (i, loc(&s.value.name)));
        services.push(svc);
    }
    for (i, e) in raw_endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let Some(&(si, _)) = names.get(&e.value.service.value) else {
            let mut known: Vec<&str> = names.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(v
                .err(
                    loc(&e.value.service),
                    format!("{field}.service"),
                    format!("unknown service '{}'", e.value.service.value),
                )
                .hint(format!("name a service declared under `services:` (known: {})", known.join(", "))));
        };
        let ep = v.endpoint(&field, &e.value, &services[si])?;
        services[si].endpoints.push(ep);
    }
    let policy = raw.policy.as_ref().map(|p| crate::policy::validate(file, p)).transpose()?;
    Ok(MeshConfig { services, policy })
}

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, at: Location, field: String, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, at, field, message)
    }

    fn service(
        &self,
        i: usize,
        s: &RawService,
        addrs: &mut HashMap<SocketAddr, (String, Location)>,
    ) -> Result<Service, ConfigError> {
        let field = format!("services[{i}]");
        let name = s.name.value.trim().to_string();
        if !is_valid_name(&name) {
            return Err(self
                .err(
                    loc(&s.name),
                    format!("{field}.name"),
                    format!("invalid service name '{}'", s.name.value),
                )
                .hint("use 1 to 63 lowercase letters, digits, '-' or '.', starting with a letter or digit"));
        }
        if s.vips.value.is_empty() {
            return Err(self
                .err(loc(&s.vips), format!("{field}.vips"), "a service needs at least one VIP")
                .hint("list the addresses applications dial, e.g. vips: [127.100.0.10]"));
        }
        if s.ports.value.is_empty() {
            return Err(self
                .err(loc(&s.ports), format!("{field}.ports"), "a service needs at least one port")
                .hint("e.g. ports: [{port: 8080}]"));
        }
        let mut vips = Vec::new();
        for (j, vip) in s.vips.value.iter().enumerate() {
            vips.push(self.vip(format!("{field}.vips[{j}]"), vip)?);
        }
        let mut ports: Vec<ServicePort> = Vec::new();
        for (j, p) in s.ports.value.iter().enumerate() {
            let pfield = format!("{field}.ports[{j}]");
            let port = self.port(format!("{pfield}.port"), &p.value.port)?;
            if ports.iter().any(|q| q.port == port) {
                return Err(self
                    .err(loc(&p.value.port), format!("{pfield}.port"), format!("port {port} is listed twice"))
                    .hint("list each port once"));
            }
            let target_port = match &p.value.target_port {
                Some(t) => self.port(format!("{pfield}.target_port"), t)?,
                None => port,
            };
            let protocol = match &p.value.protocol {
                None => Protocol::Tcp,
                Some(pr) => Protocol::parse(&pr.value).ok_or_else(|| {
                    self.err(
                        loc(pr),
                        format!("{pfield}.protocol"),
                        format!("unknown protocol '{}'", pr.value),
                    )
                    .hint(format!("supported: {}", Protocol::NAMES.join(", ")))
                })?,
            };
            let zero_hop = p.value.zero_hop.as_ref().is_some_and(|z| z.value);
            ports.push(ServicePort { port, target_port, protocol, zero_hop });
        }
        for (j, vip) in vips.iter().enumerate() {
            for (k, p) in ports.iter().enumerate() {
                let sa = SocketAddr::new(*vip, p.port);
                let here = loc(&s.vips.value[j]);
                if let Some((other, first)) = addrs.get(&sa) {
                    return Err(self
                        .err(here, format!("{field}.vips[{j}]"), format!("duplicate service address {sa}"))
                        .hint(format!(
                            "service '{other}' already has it (line {}); a VIP:port can belong to one service only",
                            first.line
                        )));
                }
                let _ = k;
                addrs.insert(sa, (name.clone(), here));
            }
        }
        Ok(Service { name, vips, ports, endpoints: Vec::new() })
    }

    fn vip(&self, field: String, vip: &Spanned<String>) -> Result<IpAddr, ConfigError> {
        let ip = parse_ip(&vip.value).ok_or_else(|| {
            self.err(loc(vip), field.clone(), format!("'{}' is not an IP address", vip.value))
                .hint("write an IPv4 or IPv6 address without a port, e.g. 127.100.0.10 or fd00:5c::10")
        })?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(self
                .err(loc(vip), field, format!("{ip} cannot be a service address"))
                .hint("use a unicast address that applications dial"));
        }
        Ok(ip)
    }

    fn port(&self, field: String, p: &Spanned<u16>) -> Result<u16, ConfigError> {
        if p.value == 0 {
            return Err(self.err(loc(p), field, "port 0 is not a port").hint("use 1 to 65535"));
        }
        Ok(p.value)
    }

    fn endpoint(&self, field: &str, e: &RawEndpoint, svc: &Service) -> Result<Endpoint, ConfigError> {
        let address = parse_ip(&e.address.value).ok_or_else(|| {
            self.err(loc(&e.address), format!("{field}.address"), format!("'{}' is not an IP address", e.address.value))
                .hint("write the endpoint's IP; its port comes from the service's target_port or the endpoint's `port`")
        })?;
        if address.is_unspecified() || address.is_multicast() {
            return Err(self
                .err(
                    loc(&e.address),
                    format!("{field}.address"),
                    format!("{address} cannot be an endpoint address"),
                )
                .hint("use the unicast address the workload listens on"));
        }
        let port = match &e.port {
            None => None,
            Some(p) if svc.ports.len() != 1 => {
                return Err(self
                    .err(
                        loc(p),
                        format!("{field}.port"),
                        format!(
                            "service '{}' has {} ports, so an endpoint port is ambiguous",
                            svc.name,
                            svc.ports.len()
                        ),
                    )
                    .hint("remove `port` and set `target_port` on each of the service's ports"));
            }
            Some(p) => Some(self.port(format!("{field}.port"), p)?),
        };
        let node = e.node.as_ref().map(|n| n.value.clone());
        let cgroup = match &e.cgroup {
            None => None,
            Some(c) if !c.value.starts_with('/') => {
                return Err(self
                    .err(loc(c), format!("{field}.cgroup"), format!("'{}' is not an absolute path", c.value))
                    .hint("give the cgroup's path, e.g. /sys/fs/cgroup/unified/sluice-demo/web"));
            }
            Some(c) => Some(PathBuf::from(&c.value)),
        };
        Ok(Endpoint { address, port, node, cgroup })
    }
}

/// Accepts `[::1]` as well as `::1`: people copy addresses from URLs.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(s);
    s.parse().ok()
}

fn is_valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests;

//! Raw file → [`MeshConfig`], refusing anything the data path could not serve.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde_saphyr::Spanned;

use crate::{
    error::{ConfigError, Location},
    model::{
        CircuitBreaker, Endpoint, LoadBalancer, MeshConfig, OutlierDetection, Protocol, Service, ServicePort,
    },
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
    let nodes = crate::security::nodes(file, raw.nodes.as_deref().unwrap_or_default())?;
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
        if let (Some(n), Some(raw_node)) = (&ep.node, &e.value.node)
            && !nodes.iter().any(|x| &x.name == n)
        {
            let known: Vec<&str> = nodes.iter().map(|x| x.name.as_str()).collect();
            return Err(v
                .err(loc(raw_node), format!("{field}.node"), format!("unknown node '{n}'"))
                .hint(if known.is_empty() {
                    "declare the mesh's nodes under `nodes:` (name, address), or drop `node` for an endpoint on every node".to_string()
                } else {
                    format!("name a node declared under `nodes:` (known: {})", known.join(", "))
                }));
        }
        services[si].endpoints.push(ep);
    }
    let routes = crate::routes::validate(file, raw.routes.as_deref().unwrap_or_default(), &services)?;
    let policy = raw.policy.as_ref().map(|p| crate::policy::validate(file, p)).transpose()?;
    let telemetry =
        raw.telemetry.as_ref().map(|t| crate::telemetry::validate(file, t)).transpose()?.unwrap_or_default();
    let identity =
        raw.identity.as_ref().map(|i| crate::security::identity(file, i)).transpose()?.unwrap_or_default();
    let authorization = raw
        .authorization
        .as_ref()
        .map(|a| crate::security::authorization(file, a, &services, &identity))
        .transpose()?
        .unwrap_or_default();
    Ok(MeshConfig { services, routes, policy, telemetry, nodes, identity, authorization })
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
            let zero_hop = p.value.zero_hop.as_ref().is_some_and(|z| z.value);
            let protocol = match &p.value.protocol {
                None if zero_hop => Protocol::Tcp,
                None => Protocol::Auto,
                Some(pr) => Protocol::parse(&pr.value).ok_or_else(|| {
                    self.err(
                        loc(pr),
                        format!("{pfield}.protocol"),
                        format!("unknown protocol '{}'", pr.value),
                    )
                    .hint(format!("supported: {}", Protocol::NAMES.join(", ")))
                })?,
            };
            if let (true, Some(pr)) = (zero_hop && protocol != Protocol::Tcp, &p.value.protocol) {
                return Err(self
                    .err(
                        loc(pr),
                        format!("{pfield}.protocol"),
                        format!("zero_hop connects applications straight to endpoints, so the proxy cannot speak {} here", pr.value),
                    )
                    .hint("use protocol: tcp with zero_hop, or drop zero_hop to get L7 handling"));
            }
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
        let load_balancer = self.load_balancer(&field, s)?;
        let circuit_breaker = self.circuit_breaker(&field, s)?;
        let outlier_detection = self.outlier(&field, s)?;
        let namespace = match &s.namespace {
            None => "default".to_string(),
            Some(ns) => {
                let n = ns.value.trim();
                if !is_valid_name(n) {
                    return Err(self
                        .err(loc(ns), format!("{field}.namespace"), format!("'{n}' is not a valid namespace"))
                        .hint("use 1-63 of a-z, 0-9, '-' and '.', starting with a letter or digit"));
                }
                n.to_string()
            }
        };
        let service_account = match &s.service_account {
            None => name.clone(),
            Some(sa) => {
                let n = sa.value.trim();
                if !is_valid_name(n) || n.contains('.') {
                    return Err(self
                        .err(
                            loc(sa),
                            format!("{field}.service_account"),
                            format!("'{n}' is not a valid service account"),
                        )
                        .hint("use 1-63 of a-z, 0-9 and '-', starting with a letter or digit"));
                }
                n.to_string()
            }
        };
        Ok(Service {
            name,
            namespace,
            service_account,
            vips,
            ports,
            endpoints: Vec::new(),
            load_balancer,
            circuit_breaker,
            outlier_detection,
        })
    }

    fn load_balancer(&self, field: &str, s: &RawService) -> Result<LoadBalancer, ConfigError> {
        let policy =
            s.load_balancer.as_ref().map(|l| (l, l.value.trim().to_ascii_lowercase().replace('-', "_")));
        let lb = match policy.as_ref().map(|(l, p)| (*l, p.as_str())) {
            None | Some((_, "round_robin")) => LoadBalancer::RoundRobin,
            Some((_, "least_request")) => LoadBalancer::LeastRequest,
            Some((l, "consistent_hash")) => {
                let Some(h) = &s.hash_header else {
                    return Err(self
                        .err(
                            loc(l),
                            format!("{field}.load_balancer"),
                            "consistent_hash needs a header to hash",
                        )
                        .hint("add `hash_header: x-user` (any request header) to the service"));
                };
                let name = h.value.trim().to_ascii_lowercase();
                if http_header_name(&name).is_none() {
                    return Err(self
                        .err(
                            loc(h),
                            format!("{field}.hash_header"),
                            format!("'{}' is not a header name", h.value),
                        )
                        .hint("use letters, digits and '-', e.g. x-user"));
                }
                LoadBalancer::ConsistentHash { header: name }
            }
            Some((l, other)) => {
                return Err(self
                    .err(loc(l), format!("{field}.load_balancer"), format!("unknown load balancer '{other}'"))
                    .hint(format!("supported: {}", LoadBalancer::NAMES.join(", "))));
            }
        };
        if let (Some(h), false) = (&s.hash_header, matches!(lb, LoadBalancer::ConsistentHash { .. })) {
            return Err(self
                .err(
                    loc(h),
                    format!("{field}.hash_header"),
                    "hash_header is only used by load_balancer: consistent_hash",
                )
                .hint("set load_balancer: consistent_hash, or remove hash_header"));
        }
        Ok(lb)
    }

    fn circuit_breaker(&self, field: &str, s: &RawService) -> Result<CircuitBreaker, ConfigError> {
        let mut cb = CircuitBreaker::default();
        let Some(raw) = &s.circuit_breaker else { return Ok(cb) };
        let r = &raw.value;
        for (name, value, min, slot) in [
            ("max_connections", &r.max_connections, 1, &mut cb.max_connections),
            ("max_pending_requests", &r.max_pending_requests, 0, &mut cb.max_pending_requests),
            ("max_requests", &r.max_requests, 1, &mut cb.max_requests),
        ] {
            if let Some(v) = value {
                if v.value < min {
                    return Err(self
                        .err(
                            loc(v),
                            format!("{field}.circuit_breaker.{name}"),
                            format!("{name} must be at least {min}"),
                        )
                        .hint(
                            "a limit of 0 would refuse every request; remove it to use the default (1024)",
                        ));
                }
                *slot = v.value;
            }
        }
        Ok(cb)
    }

    fn outlier(&self, field: &str, s: &RawService) -> Result<Option<OutlierDetection>, ConfigError> {
        let Some(raw) = &s.outlier_detection else { return Ok(None) };
        let r = &raw.value;
        let consecutive_failures = r.consecutive_failures.as_ref().map_or(Ok(5), |v| {
            if v.value == 0 {
                Err(self
                    .err(
                        loc(v),
                        format!("{field}.outlier_detection.consecutive_failures"),
                        "must be at least 1",
                    )
                    .hint("e.g. 5: an endpoint is ejected after 5 failures in a row"))
            } else {
                Ok(v.value)
            }
        })?;
        let base_ejection = match &r.ejection_time {
            None => std::time::Duration::from_secs(30),
            Some(d) => duration(self.file, d, &format!("{field}.outlier_detection.ejection_time"))?,
        };
        let max_ejection_percent = match &r.max_ejection_percent {
            None => 50,
            Some(v) if v.value > 100 => {
                return Err(self
                    .err(
                        loc(v),
                        format!("{field}.outlier_detection.max_ejection_percent"),
                        format!("{}% is more than all endpoints", v.value),
                    )
                    .hint("use 0 to 100"));
            }
            Some(v) => v.value as u8,
        };
        Ok(Some(OutlierDetection { consecutive_failures, base_ejection, max_ejection_percent }))
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
        let version = match &e.version {
            None => None,
            Some(v) if !is_valid_name(v.value.trim()) => {
                return Err(self
                    .err(loc(v), format!("{field}.version"), format!("invalid version '{}'", v.value))
                    .hint("use 1 to 63 lowercase letters, digits, '-' or '.', e.g. v2"));
            }
            Some(v) => Some(v.value.trim().to_string()),
        };
        Ok(Endpoint { address, port, node, cgroup, version })
    }
}

/// Accepts `[::1]` as well as `::1`: people copy addresses from URLs.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(s);
    s.parse().ok()
}

/// A duration as people write it: `250ms`, `2s`, `1.5s`, `1m`.
pub(crate) fn duration(
    file: &Path,
    v: &Spanned<String>,
    field: &str,
) -> Result<std::time::Duration, ConfigError> {
    let t = v.value.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let secs = num.parse::<f64>().map(|n| n * scale).unwrap_or(f64::NAN);
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(ConfigError::at(file, loc(v), field, format!("'{}' is not a duration", v.value))
            .hint("write a positive number with a unit, up to a day: 250ms, 2s, 1.5s, 1m or 1h"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// A lowercase HTTP header name, if `n` is one.
pub(crate) fn http_header_name(n: &str) -> Option<String> {
    let ok = !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| n.to_ascii_lowercase())
}

pub(crate) fn is_valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests;

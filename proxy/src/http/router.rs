//! Route matching: a service's routes in config order, the first whose every
//! condition holds takes the request; then a weighted pick among its
//! destinations (canary splits).

use std::sync::Arc;

use http::{HeaderName, Method, Request};
use regex::Regex;
use sluice_mesh_config::{HeaderOps, HostMatch, PathMatch, Route, RouteMatch, ValueMatch};

use super::{headers, stack::Stack};

/// The HTTP side of one service port.
#[derive(Debug)]
pub struct HttpService {
    pub service: String,
    /// The service name and namespace as metric labels.
    pub label: Arc<str>,
    pub namespace: Arc<str>,
    pub routes: Vec<CompiledRoute>,
}

impl HttpService {
    /// The index in `routes` of the route that takes `req`.
    pub fn select<B>(&self, req: &Request<B>) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(req))
    }
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub name: Arc<str>,
    m: RequestMatch,
    dests: Vec<(u32, Stack)>,
    total_weight: u64,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// A compiled `match:` (of a route or an authorization policy): every
/// condition given must hold.
#[derive(Debug)]
pub struct RequestMatch {
    host: Option<HostMatch>,
    path: Option<PathRule>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, ValueRule)>,
}

#[derive(Debug)]
enum PathRule {
    Exact(String),
    Prefix(String),
    Regex(Option<Regex>),
}

#[derive(Debug)]
enum ValueRule {
    Present,
    Absent,
    Exact(String),
    Regex(Option<Regex>),
}

/// Anchored, as validation compiled it (so it compiles; `None` would match nothing).
fn anchored(r: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{r})$")).ok()
}

impl CompiledRoute {
    pub fn new(r: &Route, dests: Vec<(u32, Stack)>) -> Self {
        let total_weight = dests.iter().map(|(w, _)| u64::from(*w)).sum();
        Self {
            name: r.name.as_str().into(),
            m: RequestMatch::new(&r.matches),
            dests,
            total_weight,
            request_headers: r.request_headers.clone(),
            response_headers: r.response_headers.clone(),
        }
    }

    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        self.m.matches(req)
    }

    /// A destination by weight.
    pub fn pick(&self) -> Option<&Stack> {
        if self.total_weight == 0 {
            return None;
        }
        let mut n = fastrand::u64(..self.total_weight);
        for (w, s) in &self.dests {
            if n < u64::from(*w) {
                return Some(s);
            }
            n -= u64::from(*w);
        }
        None
    }
}

impl RequestMatch {
    pub fn new(m: &RouteMatch) -> Self {
        let path = m.path.as_ref().map(|p| match p {
            PathMatch::Exact(s) => PathRule::Exact(s.clone()),
            PathMatch::Prefix(s) => PathRule::Prefix(s.clone()),
            PathMatch::Regex(s) => PathRule::Regex(anchored(s)),
        });
        let headers = m
            .headers
            .iter()
            .filter_map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                let rule = match &h.value {
                    ValueMatch::Present => ValueRule::Present,
                    ValueMatch::Absent => ValueRule::Absent,
                    ValueMatch::Exact(v) => ValueRule::Exact(v.clone()),
                    ValueMatch::Regex(v) => ValueRule::Regex(anchored(v)),
                };
                Some((name, rule))
            })
            .collect();
        let methods = m.methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect();
        Self { host: m.host.clone(), path, methods, headers }
    }

    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        if let Some(h) = &self.host {
            let authority = headers::authority(req).unwrap_or_default().to_ascii_lowercase();
            let host = strip_port(&authority);
            let ok = match h {
                HostMatch::Exact(e) => host == e,
                HostMatch::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
            };
            if !ok {
                return false;
            }
        }
        if let Some(p) = &self.path {
            let path = req.uri().path();
            let ok = match p {
                PathRule::Exact(e) => path == e,
                PathRule::Prefix(pre) => path.starts_with(pre.as_str()),
                PathRule::Regex(r) => r.as_ref().is_some_and(|r| r.is_match(path)),
            };
            if !ok {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method()) {
            return false;
        }
        self.headers.iter().all(|(name, rule)| {
            let mut values = req.headers().get_all(name).iter();
            match rule {
                ValueRule::Present => values.next().is_some(),
                ValueRule::Absent => values.next().is_none(),
                ValueRule::Exact(e) => values.any(|v| v.as_bytes() == e.as_bytes()),
                ValueRule::Regex(r) => {
                    values.any(|v| v.to_str().is_ok_and(|s| r.as_ref().is_some_and(|r| r.is_match(s))))
                }
            }
        })
    }
}

/// `host:port` → `host`, `[v6]:port` → `[v6]`.
fn strip_port(a: &str) -> &str {
    if a.starts_with('[') {
        return a.find(']').map_or(a, |i| &a[..=i]);
    }
    a.rsplit_once(':').map_or(a, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { a })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn routes(yaml_routes: &str) -> Vec<CompiledRoute> {
        let text = format!(
            "services:\n  - {{name: web, vips: [127.100.0.1], ports: [{{port: 80, protocol: http}}]}}\nroutes:\n{yaml_routes}"
        );
        let c = sluice_mesh_config::parse(Path::new("t.yaml"), &text).unwrap();
        c.routes.iter().map(|r| CompiledRoute::new(r, Vec::new())).collect()
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn conditions() {
        let r = routes(
            "  - service: web\n    match:\n      host: \"*.example.com\"\n      path: {prefix: /api}\n      methods: [GET, POST]\n      headers: [{name: x-canary, exact: \"1\"}, {name: x-block, present: false}]\n",
        );
        let r = &r[0];
        let ok = req("GET", "/api/v1", &[("host", "a.example.com:8080"), ("x-canary", "1")]);
        assert!(r.matches(&ok));
        assert!(!r.matches(&req("GET", "/api/v1", &[("host", "example.com"), ("x-canary", "1")])));
        assert!(!r.matches(&req("GET", "/web", &[("host", "a.example.com"), ("x-canary", "1")])));
        assert!(!r.matches(&req("PUT", "/api", &[("host", "a.example.com"), ("x-canary", "1")])));
        assert!(!r.matches(&req("GET", "/api", &[("host", "a.example.com"), ("x-canary", "2")])));
        assert!(!r.matches(&req(
            "GET",
            "/api",
            &[("host", "a.example.com"), ("x-canary", "1"), ("x-block", "")]
        )));
        // HTTP/2: the authority is in the URI.
        assert!(r.matches(&req("POST", "http://b.example.com/api", &[("x-canary", "1")])));
    }

    #[test]
    fn path_kinds() {
        let r = routes(
            "  - {service: web, match: {path: {exact: /a}}}\n  - {service: web, match: {path: {regex: \"/u/[0-9]+\"}}}\n",
        );
        assert!(r[0].matches(&req("GET", "/a", &[])));
        assert!(!r[0].matches(&req("GET", "/a/", &[])));
        assert!(r[1].matches(&req("GET", "/u/42", &[])));
        assert!(!r[1].matches(&req("GET", "/u/42/x", &[])), "regex matches the whole path");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}

//! Authorization: may this source identity call this service port (and, for
//! HTTP, this request)? Evaluated where traffic is delivered to a local
//! endpoint: by the node the caller runs on for its own endpoints, and by the
//! receiving node for traffic from other nodes (the identity then comes from
//! the peer's certificate). Zero-hop connections never reach the proxy: their
//! L4 decisions are precomputed for the kernel ([`Authz::l4_table`]).
//!
//! Order: a deny that applies refuses; else an allow that applies permits;
//! else a service that some allow policy names refuses; else the default.
//! On opaque TCP a deny with HTTP conditions applies anyway (fail closed), an
//! allow with HTTP conditions does not.

use std::sync::Arc;

use http::Request;
use sluice_mesh_config::{Authorization, IdentityMatch, PolicyAction};

use crate::http::router::RequestMatch;

#[derive(Debug)]
struct Compiled {
    name: Arc<str>,
    action: PolicyAction,
    services: Vec<usize>,
    ports: Vec<u16>,
    from: Vec<IdentityMatch>,
    request: Option<RequestMatch>,
}

impl Compiled {
    fn applies(&self, source: &str, service: usize, port: u16) -> bool {
        (self.services.is_empty() || self.services.contains(&service))
            && (self.ports.is_empty() || self.ports.contains(&port))
            && (self.from.is_empty() || self.from.iter().any(|m| m.matches(source)))
    }
}

/// Why a call was refused: the deny policy that matched, or that none allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(Arc<str>),
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

#[derive(Debug)]
pub struct Authz {
    default: PolicyAction,
    policies: Vec<Compiled>,
    /// Per service: some allow policy names it (or names no service at all).
    allow_listed: Vec<bool>,
}

impl Default for Authz {
    fn default() -> Self {
        Self { default: PolicyAction::Allow, policies: Vec::new(), allow_listed: Vec::new() }
    }
}

const NO_ALLOW: &str = "no allow policy matched";
const DEFAULT_DENY: &str = "authorization.default: deny";

impl Authz {
    pub fn new(a: &Authorization, services: usize) -> Self {
        let mut allow_listed = vec![false; services];
        for p in a.policies.iter().filter(|p| p.action == PolicyAction::Allow) {
            if p.services.is_empty() {
                allow_listed.iter_mut().for_each(|x| *x = true);
            }
            for &s in &p.services {
                if let Some(x) = allow_listed.get_mut(s) {
                    *x = true;
                }
            }
        }
        let policies = a
            .policies
            .iter()
            .map(|p| Compiled {
                name: p.name.as_str().into(),
                action: p.action,
                services: p.services.clone(),
                ports: p.ports.clone(),
                from: p.from.clone(),
                request: p.request.as_ref().map(RequestMatch::new),
            })
            .collect();
        Self { default: a.default, policies, allow_listed }
    }

    /// Nothing is ever refused: callers may skip the check.
    pub fn is_open(&self) -> bool {
        self.policies.is_empty() && self.default == PolicyAction::Allow
    }

    /// An opaque TCP connection (or an HTTP request when `req` is given).
    pub fn check<B>(&self, source: &str, service: usize, port: u16, req: Option<&Request<B>>) -> Verdict {
        if self.is_open() {
            return Verdict::Allow;
        }
        let deny = self.policies.iter().filter(|p| p.action == PolicyAction::Deny).find(|p| {
            p.applies(source, service, port)
                && match (req, &p.request) {
                    (Some(r), Some(m)) => m.matches(r),
                    _ => true,
                }
        });
        if let Some(p) = deny {
            return Verdict::Deny(Arc::clone(&p.name));
        }
        let allowed = self.policies.iter().filter(|p| p.action == PolicyAction::Allow).any(|p| {
            p.applies(source, service, port)
                && match (req, &p.request) {
                    (_, None) => true,
                    (Some(r), Some(m)) => m.matches(r),
                    (None, Some(_)) => false,
                }
        });
        if allowed {
            return Verdict::Allow;
        }
        if self.allow_listed.get(service).copied().unwrap_or(false) {
            return Verdict::Deny(NO_ALLOW.into());
        }
        match self.default {
            PolicyAction::Allow => Verdict::Allow,
            PolicyAction::Deny => Verdict::Deny(DEFAULT_DENY.into()),
        }
    }

    pub fn check_tcp(&self, source: &str, service: usize, port: u16) -> Verdict {
        self.check::<()>(source, service, port, None)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn authz(policies: &str) -> Authz {
        let text = format!(
            "services:\n  - {{name: web, vips: [127.100.0.1], ports: [{{port: 80}}, {{port: 81}}]}}\n  - {{name: db, vips: [127.100.0.2], ports: [{{port: 5432}}]}}\nauthorization:\n{policies}"
        );
        let c = sluice_mesh_config::parse(Path::new("t.yaml"), &text).expect("valid");
        Authz::new(&c.authorization, c.services.len())
    }

    const FE: &str = "spiffe://cluster.local/ns/default/sa/frontend";
    const OTHER: &str = "spiffe://cluster.local/ns/default/sa/other";
    const PROD: &str = "spiffe://cluster.local/ns/prod/sa/x";

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).expect("request")
    }

    #[test]
    fn allow_lists_deny_others_of_the_service_only() {
        let a = authz(
            "  policies:\n    - {name: fe-web, action: allow, services: [web], from: [\"spiffe://cluster.local/ns/default/sa/frontend\"]}\n",
        );
        assert_eq!(a.check_tcp(FE, 0, 80), Verdict::Allow);
        assert_eq!(a.check_tcp(OTHER, 0, 80), Verdict::Deny(NO_ALLOW.into()));
        assert_eq!(a.check_tcp(OTHER, 1, 5432), Verdict::Allow, "db has no allow policy: the default");
    }

    #[test]
    fn deny_wins_and_http_conditions() {
        let a = authz(
            "  default: deny\n  policies:\n    - {name: reads, action: allow, services: [web], ports: [80], match: {methods: [GET], path: {prefix: /api/}}}\n    - {name: no-admin, action: deny, match: {path: {prefix: /api/admin}}}\n    - {name: prod, action: allow, services: [db], from: [\"spiffe://cluster.local/ns/prod/*\"]}\n",
        );
        assert!(a.check(OTHER, 0, 80, Some(&get("/api/x"))).is_allow());
        assert!(!a.check(OTHER, 0, 81, Some(&get("/api/x"))).is_allow(), "port 81 not allowed");
        let post = Request::builder().method("POST").uri("/api/x").body(()).expect("request");
        assert!(!a.check(OTHER, 0, 80, Some(&post)).is_allow());
        assert_eq!(a.check(FE, 0, 80, Some(&get("/api/admin/1"))), Verdict::Deny("no-admin".into()));
        // TCP: the allow with conditions does not apply, the deny with conditions does.
        assert!(!a.check_tcp(FE, 0, 80).is_allow());
        assert_eq!(a.check_tcp(PROD, 1, 5432), Verdict::Deny("no-admin".into()), "fail closed");
        let b = authz(
            "  default: deny\n  policies:\n    - {name: prod, action: allow, services: [db], from: [\"spiffe://cluster.local/ns/prod/*\"]}\n",
        );
        assert!(b.check_tcp(PROD, 1, 5432).is_allow());
        assert!(!b.check_tcp(FE, 1, 5432).is_allow());
        assert_eq!(b.check_tcp(FE, 0, 80), Verdict::Deny(DEFAULT_DENY.into()));
    }
}

//! Validation of what spans nodes: `nodes:`, `identity:` and `authorization:`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_saphyr::Spanned;

use crate::{
    ConfigError,
    model::{
        Authorization, AuthzPolicy, CertSource, Identity, IdentityMatch, MtlsMode, Node, PolicyAction,
        Service,
    },
    raw::{RawAuthorization, RawIdentity, RawNode, loc},
    validate::{duration, is_valid_name},
};

/// Certificates must live at least this long: renewal runs at half the life.
const MIN_CERT_TTL: Duration = Duration::from_secs(2);

pub(crate) fn nodes(file: &Path, raw: &[Spanned<RawNode>]) -> Result<Vec<Node>, ConfigError> {
    let mut out: Vec<Node> = Vec::with_capacity(raw.len());
    for (i, n) in raw.iter().enumerate() {
        let field = format!("nodes[{i}]");
        let name = n.value.name.value.trim();
        if !is_valid_name(name) {
            return Err(ConfigError::at(
                file,
                loc(&n.value.name),
                format!("{field}.name"),
                format!("'{name}' is not a valid node name"),
            )
            .hint("use 1-63 of a-z, 0-9, '-' and '.', e.g. node-a"));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(ConfigError::at(
                file,
                loc(&n.value.name),
                format!("{field}.name"),
                format!("node '{name}' is listed twice"),
            )
            .hint("list each node once"));
        }
        let a = n.value.address.value.trim();
        let address =
            a.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(a).parse().map_err(|_| {
                ConfigError::at(
                    file,
                    loc(&n.value.address),
                    format!("{field}.address"),
                    format!("'{a}' is not an IP address"),
                )
                .hint("write the address the other nodes reach this node at, without a port, e.g. 10.0.0.2")
            })?;
        let port = match &n.value.port {
            None => Node::DEFAULT_PORT,
            Some(p) if p.value == 0 => {
                return Err(ConfigError::at(file, loc(p), format!("{field}.port"), "port 0 is not a port")
                    .hint(format!("use 1-65535; the default is {}", Node::DEFAULT_PORT)));
            }
            Some(p) => p.value,
        };
        out.push(Node { name: name.to_string(), address, port });
    }
    Ok(out)
}

fn path(file: &Path, v: &Spanned<String>, field: &str) -> Result<PathBuf, ConfigError> {
    let p = v.value.trim();
    if !p.starts_with('/') {
        return Err(ConfigError::at(file, loc(v), field, format!("'{p}' is not an absolute path"))
            .hint("give the full path, e.g. /etc/sluice/ca.pem"));
    }
    Ok(PathBuf::from(p))
}

pub(crate) fn identity(file: &Path, raw: &Spanned<RawIdentity>) -> Result<Identity, ConfigError> {
    let r = &raw.value;
    let mut out = Identity::default();
    if let Some(td) = &r.trust_domain {
        let v = td.value.trim();
        let ok = !v.is_empty()
            && v.len() <= 255
            && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !v.starts_with(['.', '-'])
            && !v.ends_with('.');
        if !ok {
            return Err(ConfigError::at(
                file,
                loc(td),
                "identity.trust_domain",
                format!("'{v}' is not a trust domain"),
            )
            .hint("use lowercase letters, digits, '-' and '.', e.g. cluster.local (no spiffe://)"));
        }
        out.trust_domain = v.to_string();
    }
    if let Some(t) = &r.cert_ttl {
        let d = duration(file, t, "identity.cert_ttl")?;
        if d < MIN_CERT_TTL {
            return Err(ConfigError::at(
                file,
                loc(t),
                "identity.cert_ttl",
                format!("{} is too short for a certificate", t.value.trim()),
            )
            .hint("certificates are renewed at half their life; use 2s or more (hours in production)"));
        }
        out.cert_ttl = d;
    }
    if let Some(m) = &r.mtls {
        out.mtls = match m.value.trim().to_ascii_lowercase().as_str() {
            "strict" => MtlsMode::Strict,
            "disable" => MtlsMode::Disable,
            other => {
                return Err(ConfigError::at(file, loc(m), "identity.mtls", format!("unknown mode '{other}'"))
                    .hint("use strict (mutual TLS between nodes, the default) or disable (plaintext, no peer identity)"));
            }
        };
    }
    let given: Vec<(&str, crate::error::Location)> = [
        r.ca_dir.as_ref().map(|v| ("ca_dir", loc(v))),
        r.ca_cert.as_ref().map(|v| ("ca_cert", loc(v))),
        r.certificates.as_ref().map(|v| ("certificates", loc(v))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let [_, (second, at), ..] = given.as_slice() {
        return Err(ConfigError::at(
            file,
            *at,
            format!("identity.{second}"),
            format!("identity gives both {} and {second}", given[0].0),
        )
        .hint("choose one: ca_dir (Sluice's own CA), ca_cert + ca_key (an external CA Sluice signs with) or certificates (files issued elsewhere)"));
    }
    out.source = match (&r.ca_dir, &r.ca_cert, &r.ca_key, &r.certificates) {
        (Some(d), None, None, None) => CertSource::BuiltinCa { dir: path(file, d, "identity.ca_dir")? },
        (_, Some(c), Some(k), _) => CertSource::ExternalCa {
            cert: path(file, c, "identity.ca_cert")?,
            key: path(file, k, "identity.ca_key")?,
        },
        (_, Some(c), None, _) => {
            return Err(ConfigError::at(file, loc(c), "identity.ca_cert", "ca_cert without ca_key")
                .hint("an external CA needs its private key too (ca_key) to issue workload certificates"));
        }
        (_, None, Some(k), _) => {
            return Err(ConfigError::at(file, loc(k), "identity.ca_key", "ca_key without ca_cert")
                .hint("give the CA's certificate too (ca_cert)"));
        }
        (None, None, None, Some(f)) => CertSource::Files {
            trust_bundle: path(file, &f.value.trust_bundle, "identity.certificates.trust_bundle")?,
            dir: path(file, &f.value.dir, "identity.certificates.dir")?,
        },
        // Both ways to give a source were refused above.
        _ => out.source,
    };
    Ok(out)
}

fn action(file: &Path, v: &Spanned<String>, field: &str) -> Result<PolicyAction, ConfigError> {
    match v.value.trim().to_ascii_lowercase().as_str() {
        "allow" => Ok(PolicyAction::Allow),
        "deny" => Ok(PolicyAction::Deny),
        other => Err(ConfigError::at(file, loc(v), field, format!("unknown action '{other}'"))
            .hint("use allow or deny")),
    }
}

pub(crate) fn authorization(
    file: &Path,
    raw: &Spanned<RawAuthorization>,
    services: &[Service],
    identity: &Identity,
) -> Result<Authorization, ConfigError> {
    let r = &raw.value;
    let default = match &r.default {
        None => PolicyAction::Allow,
        Some(d) => action(file, d, "authorization.default")?,
    };
    let mut policies: Vec<AuthzPolicy> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, p) in r.policies.iter().flatten().enumerate() {
        let field = format!("authorization.policies[{i}]");
        let p = &p.value;
        let name = match &p.name {
            Some(n) => n.value.trim().to_string(),
            None => format!("policy-{i}"),
        };
        if let (Some(line), Some(n)) = (names.get(&name), &p.name) {
            return Err(ConfigError::at(
                file,
                loc(n),
                format!("{field}.name"),
                format!("duplicate policy name '{name}'"),
            )
            .hint(format!("policies[{line}] has it already; give each policy its own name")));
        }
        names.insert(name.clone(), i);
        let action = action(file, &p.action, &format!("{field}.action"))?;
        let mut svcs = Vec::new();
        for (j, s) in p.services.iter().flatten().enumerate() {
            let Some(si) = services.iter().position(|x| x.name == s.value.trim()) else {
                let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                return Err(ConfigError::at(
                    file,
                    loc(s),
                    format!("{field}.services[{j}]"),
                    format!("unknown service '{}'", s.value.trim()),
                )
                .hint(format!("name a service declared under `services:` (known: {})", known.join(", "))));
            };
            svcs.push(si);
        }
        let mut ports = Vec::new();
        for (j, pt) in p.ports.iter().flatten().enumerate() {
            let offered = svcs.is_empty()
                || svcs.iter().any(|&si| services[si].ports.iter().any(|sp| sp.port == pt.value));
            if pt.value == 0 || !offered {
                return Err(ConfigError::at(
                    file,
                    loc(pt),
                    format!("{field}.ports[{j}]"),
                    format!("port {} is not a port of the services this policy names", pt.value),
                )
                .hint("list service ports (what applications dial), not target ports"));
            }
            ports.push(pt.value);
        }
        let mut from = Vec::new();
        for (j, f) in p.from.iter().flatten().enumerate() {
            from.push(identity_match(file, f, &format!("{field}.from[{j}]"), identity)?);
        }
        let request = p
            .matches
            .as_ref()
            .map(|m| crate::routes::request_match(file, field.clone(), services, &m.value))
            .transpose()?;
        policies.push(AuthzPolicy { name, action, services: svcs, ports, from, request });
    }
    Ok(Authorization { default, policies })
}

fn identity_match(
    file: &Path,
    v: &Spanned<String>,
    field: &str,
    identity: &Identity,
) -> Result<IdentityMatch, ConfigError> {
    let s = v.value.trim();
    if s == "*" {
        return Ok(IdentityMatch::Any);
    }
    let bad = |why: &str| {
        ConfigError::at(file, loc(v), field, format!("'{s}' {why}")).hint(format!(
            "write a SPIFFE ID such as spiffe://{td}/ns/default/sa/frontend, a prefix ending in * such as spiffe://{td}/ns/prod/*, or * for any identity",
            td = identity.trust_domain
        ))
    };
    let Some(rest) = s.strip_prefix("spiffe://") else {
        return Err(bad("is not a SPIFFE ID"));
    };
    if rest.contains(char::is_whitespace) || rest.is_empty() {
        return Err(bad("is not a SPIFFE ID"));
    }
    let td = rest.split('/').next().unwrap_or_default();
    if td != identity.trust_domain {
        return Err(bad(&format!(
            "is in trust domain '{td}', and this mesh's is '{}' (identity.trust_domain)",
            identity.trust_domain
        )));
    }
    match s.find('*') {
        None => Ok(IdentityMatch::Exact(s.to_string())),
        Some(i) if i == s.len() - 1 => Ok(IdentityMatch::Prefix(s[..i].to_string())),
        Some(_) => Err(bad("has a * that is not at the end")),
    }
}

//! The file as written: serde structs that keep each value's location, so
//! validation can point at the exact line and column. Unknown fields are errors.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::error::{ConfigError, Location};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    // Option: an empty `endpoints:` (null in YAML) means none, as people expect.
    #[serde(default)]
    pub services: Option<Vec<Spanned<RawService>>>,
    #[serde(default)]
    pub endpoints: Option<Vec<Spanned<RawEndpoint>>>,
    #[serde(default)]
    pub routes: Option<Vec<Spanned<RawRoute>>>,
    #[serde(default)]
    pub policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    pub telemetry: Option<Spanned<RawTelemetry>>,
    #[serde(default)]
    pub nodes: Option<Vec<Spanned<RawNode>>>,
    #[serde(default)]
    pub identity: Option<Spanned<RawIdentity>>,
    #[serde(default)]
    pub authorization: Option<Spanned<RawAuthorization>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub port: Option<Spanned<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentity {
    pub trust_domain: Option<Spanned<String>>,
    pub cert_ttl: Option<Spanned<String>>,
    pub ca_dir: Option<Spanned<String>>,
    pub ca_cert: Option<Spanned<String>>,
    pub ca_key: Option<Spanned<String>>,
    pub certificates: Option<Spanned<RawCertFiles>>,
    pub mtls: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertFiles {
    pub trust_bundle: Spanned<String>,
    pub dir: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthorization {
    pub default: Option<Spanned<String>>,
    pub policies: Option<Vec<Spanned<RawAuthzPolicy>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthzPolicy {
    pub name: Option<Spanned<String>>,
    pub action: Spanned<String>,
    pub services: Option<Vec<Spanned<String>>>,
    pub ports: Option<Vec<Spanned<u16>>>,
    pub from: Option<Vec<Spanned<String>>>,
    #[serde(rename = "match")]
    pub matches: Option<Spanned<RawMatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    pub tracing: Option<Spanned<RawTracing>>,
    pub access_log: Option<Spanned<RawAccessLog>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    pub endpoint: Option<Spanned<String>>,
    pub file: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub sampling: Option<Spanned<f64>>,
    pub propagation: Option<Vec<Spanned<String>>>,
    pub service_name: Option<Spanned<String>>,
    pub headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub format: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Option<Spanned<String>>,
    pub service: Spanned<String>,
    #[serde(rename = "match")]
    pub matches: Option<Spanned<RawMatch>>,
    pub to: Option<Spanned<Vec<Spanned<RawDestination>>>>,
    pub request_headers: Option<Spanned<RawHeaderOps>>,
    pub response_headers: Option<Spanned<RawHeaderOps>>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<RawRetries>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<RawPathMatch>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub headers: Option<Vec<Spanned<RawHeaderMatch>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPathMatch {
    pub exact: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderMatch {
    pub name: Spanned<String>,
    pub exact: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    pub present: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDestination {
    pub service: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub version: Option<Spanned<String>>,
    pub weight: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderOps {
    pub set: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    pub remove: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetries {
    pub attempts: Spanned<u32>,
    pub per_try_timeout: Option<Spanned<String>>,
    pub on: Option<Vec<Spanned<String>>>,
    pub budget_percent: Option<Spanned<u32>>,
    pub min_retries_per_second: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCircuitBreaker {
    pub max_connections: Option<Spanned<u32>>,
    pub max_pending_requests: Option<Spanned<u32>>,
    pub max_requests: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<Spanned<u32>>,
    pub ejection_time: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    pub default: Option<Spanned<String>>,
    pub egress_default: Option<Spanned<String>>,
    pub rules: Option<Vec<Spanned<RawRule>>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub drop_events_per_second: Option<Spanned<u32>>,
    pub xdp_mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub name: Option<Spanned<String>>,
    pub action: Spanned<String>,
    pub direction: Option<Spanned<String>>,
    pub sources: Option<Vec<Spanned<String>>>,
    pub destinations: Option<Vec<Spanned<String>>>,
    pub protocol: Option<Spanned<String>>,
    pub ports: Option<Vec<Spanned<PortSpec>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub packets_per_second: Spanned<u32>,
    pub burst: Option<Spanned<u32>>,
}

/// A port (`80`) or a range (`"8000-8100"`), as written.
#[derive(Debug)]
pub(crate) struct PortSpec(pub String);

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port (80) or a range (\"8000-8100\")")
            }
            fn visit_u64<E>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec(v.to_string()))
            }
            fn visit_str<E>(self, v: &str) -> Result<PortSpec, E> {
                Ok(PortSpec(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: Spanned<String>,
    pub namespace: Option<Spanned<String>>,
    pub service_account: Option<Spanned<String>>,
    pub vips: Spanned<Vec<Spanned<String>>>,
    pub ports: Spanned<Vec<Spanned<RawPort>>>,
    pub load_balancer: Option<Spanned<String>>,
    pub hash_header: Option<Spanned<String>>,
    pub circuit_breaker: Option<Spanned<RawCircuitBreaker>>,
    pub outlier_detection: Option<Spanned<RawOutlier>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPort {
    pub port: Spanned<u16>,
    pub target_port: Option<Spanned<u16>>,
    pub protocol: Option<Spanned<String>>,
    pub zero_hop: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub service: Spanned<String>,
    pub address: Spanned<String>,
    pub port: Option<Spanned<u16>>,
    pub node: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub version: Option<Spanned<String>>,
}

pub(crate) fn loc<T>(s: &Spanned<T>) -> Location {
    Location::from(&s.referenced)
}

pub(crate) fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    if text.trim().is_empty() {
        // An empty file is most likely a mistake (a truncated write, the wrong path).
        return Err(ConfigError {
            file: path.to_path_buf(),
            location: None,
            field: String::new(),
            message: "the file is empty".into(),
            hint: Some("a mesh config has at least `services:`; see examples/mesh.yaml".into()),
        });
    }
    serde_saphyr::from_str::<RawConfig>(text).map_err(|e| syntax_error(path, &e))
}

fn syntax_error(path: &Path, e: &serde_saphyr::Error) -> ConfigError {
    let location = e.location().map(|l| Location::from(&l)).filter(|l| l.line > 0);
    let message = e.without_snippet().to_string();
    // serde names the field in its message ("unknown field `x`, expected one of ...").
    let field =
        message.split('`').nth(1).filter(|_| message.contains("field")).unwrap_or_default().to_string();
    let hint = if message.contains("unknown field") {
        Some("remove the field or fix its spelling; unknown fields are refused so a typo cannot be silently ignored".into())
    } else if message.contains("missing field") {
        Some("add the field".into())
    } else {
        None
    };
    ConfigError { file: path.to_path_buf(), location, field, message: clean(&message), hint }
}

/// Drops a location that the parser's message repeats, since ours comes first.
fn clean(message: &str) -> String {
    let m = message.lines().next().unwrap_or(message).trim();
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

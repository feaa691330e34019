//! The declarative mesh model of Sluice.
//!
//! A YAML file (see `examples/` in the repository) is parsed by [`raw`] into
//! serde structs that keep the location of every value, then checked by
//! [`validate`] into a [`MeshConfig`] whose invariants the rest of Sluice can
//! rely on (addresses parsed, names resolved, no duplicate service address).
//! Every failure is a [`ConfigError`] that names the file, line, column and field
//! and says how to fix it. [`watch`] re-reads a file when it changes, for hot
//! reload. This crate does no I/O beyond reading the file.

#![forbid(unsafe_code)]

mod error;
mod model;
mod policy;
mod raw;
mod routes;
mod security;
mod telemetry;
mod validate;
pub mod watch;

pub use error::{ConfigError, Location};
pub use model::{
    AccessLog, AccessLogFormat, Authorization, AuthzPolicy, CertSource, Cidr, CircuitBreaker, Destination,
    Direction, Endpoint, HeaderMatch, HeaderOps, HostMatch, Identity, IdentityMatch, L4Protocol,
    LoadBalancer, MeshConfig, MtlsMode, Node, OtlpProtocol, OutlierDetection, PathMatch, Policy,
    PolicyAction, PolicyRule, Protocol, RateLimit, RetryOn, RetryPolicy, Route, RouteMatch, Service,
    ServiceAddr, ServicePort, Telemetry, Tracing, ValueMatch, XdpMode,
};

/// Kernel rules per direction (`SL_MAX_RULES` in bpf/lib/abi.h).
pub const MAX_POLICY_RULES: usize = 64;

use std::path::Path;

/// Reads and validates a mesh config file.
pub fn load(path: &Path) -> Result<MeshConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, &e))?;
    parse(path, &text)
}

/// Parses and validates `text`; `path` only names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<MeshConfig, ConfigError> {
    let raw = raw::parse(path, text)?;
    validate::validate(path, raw)
}

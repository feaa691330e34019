//! The data plane of a Sluice node.
//!
//! The kernel sends connections for mesh services to [`listener`]; for each one
//! the proxy asks an [`OriginalDst`] (the redirector's map, behind a small
//! trait so this crate knows nothing of eBPF) where the application was
//! going and finds that service in the [`route::Routes`] table (swapped
//! atomically on config reload). Then [`detect`] tells HTTP from the rest
//! (unless the service port declares its protocol): opaque TCP is
//! [`tcp`]-forwarded to an endpoint picked by [`balance`], half-close
//! included; HTTP/1.1, HTTP/2 and gRPC go to [`http`], which routes every
//! request through a tower stack (timeouts, retries, load balancing, circuit
//! breaking, outlier detection over [`endpoint`] state). The proxy's own
//! upstream sockets carry a mark so the kernel never redirects them back.

#![forbid(unsafe_code)]

pub mod authz;
pub mod balance;
pub mod cancel;
pub mod clock;
pub mod detect;
pub mod endpoint;
mod error;
pub mod http;
pub mod listener;
pub mod mesh;
pub mod route;
pub mod splice;
pub mod stats;
pub mod tcp;
pub mod telemetry;
pub mod tls;

pub use error::ProxyError;
pub use http::HttpLimits;
pub use listener::{JoinLocalPair, LocalPairs, NoHooks, Proxy, ProxyConfig, WorkerHooks};
pub use route::Routes;
pub use splice::{Splice, SpliceIds, Splicing};
pub use stats::ProxyStats;
pub use telemetry::Telemetry;

use std::net::SocketAddr;

/// Where an accepted connection was originally going, and who dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialed {
    pub dst: SocketAddr,
    /// The cgroup (v2 id) of the process that connected; 0: unknown.
    pub cgroup_id: u64,
}

/// Where an accepted connection was originally going.
pub trait OriginalDst: Send + Sync + 'static {
    /// `peer` and `local` are the accepted socket's addresses.
    fn original_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<Dialed>;
}

/// Explicit mode: applications dial the proxy's own listener on the service
/// address, so the address a connection arrived on is where it was going.
#[derive(Debug, Default)]
pub struct ArrivedOn;

impl OriginalDst for ArrivedOn {
    fn original_dst(&self, _peer: SocketAddr, local: SocketAddr) -> Option<Dialed> {
        Some(Dialed { dst: local, cgroup_id: 0 })
    }
}

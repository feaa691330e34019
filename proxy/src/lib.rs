//! The L4 data plane of a Sluice node.
//!
//! The kernel sends connections for mesh services to [`listener`]; for each one
//! the proxy asks an [`OriginalDst`] (the redirector's map, behind a small
//! trait so this crate knows nothing of eBPF) where the application was
//! going, finds that service in the [`route::Routes`] table (swapped
//! atomically on config reload), picks an endpoint with [`balance`] and
//! [`tcp`]-forwards bytes both ways, half-close included. The proxy's own
//! upstream sockets carry a mark so the kernel never redirects them back.

#![forbid(unsafe_code)]

pub mod balance;
mod error;
pub mod listener;
pub mod route;
pub mod stats;
pub mod tcp;

pub use error::ProxyError;
pub use listener::{NoHooks, Proxy, ProxyConfig, WorkerHooks};
pub use route::Routes;
pub use stats::ProxyStats;

use std::net::SocketAddr;

/// Where an accepted connection was originally going.
pub trait OriginalDst: Send + Sync + 'static {
    /// `peer` and `local` are the accepted socket's addresses.
    fn original_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr>;
}

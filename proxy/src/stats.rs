//! Counters of the proxy, shared by every connection task.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub forwarded: AtomicU64,
    pub no_orig_dst: AtomicU64,
    pub unknown_service: AtomicU64,
    pub no_endpoint: AtomicU64,
    pub upstream_connect_failed: AtomicU64,
    /// Bytes from applications to endpoints.
    pub bytes_up: AtomicU64,
    /// Bytes from endpoints back to applications.
    pub bytes_down: AtomicU64,
}

impl ProxyStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("accepted", self.accepted.load(Relaxed)),
            ("active", self.active.load(Relaxed)),
            ("forwarded", self.forwarded.load(Relaxed)),
            ("no_orig_dst", self.no_orig_dst.load(Relaxed)),
            ("unknown_service", self.unknown_service.load(Relaxed)),
            ("no_endpoint", self.no_endpoint.load(Relaxed)),
            ("upstream_connect_failed", self.upstream_connect_failed.load(Relaxed)),
            ("bytes_up", self.bytes_up.load(Relaxed)),
            ("bytes_down", self.bytes_down.load(Relaxed)),
        ]
    }
}

//! Counters of the proxy, shared by every connection task.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::detect::Detected;

#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    /// Refused by authorization on this node: HTTP requests (403) and TCP connections.
    pub authz_denied_http: AtomicU64,
    pub authz_denied_tcp: AtomicU64,
    /// Opaque TCP connections tunnelled to another node.
    pub tunnelled: AtomicU64,
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
    /// Protocol detection outcomes, in [`Detected::ALL`] order.
    pub detected: [AtomicU64; 6],
    pub http_connections: AtomicU64,
    pub http_requests: AtomicU64,
    /// Responses by status class: index 1 for 1xx ... 5 for 5xx.
    pub http_status: [AtomicU64; 6],
    /// Requests the proxy answered itself (no route, no endpoint, timeouts...).
    pub http_errors: AtomicU64,
    /// HTTP/1 connections closed with 400 for a request-smuggling shape.
    pub http_refused: AtomicU64,
    /// HTTP/1 connections whose request head did not arrive in time.
    pub http_header_timeouts: AtomicU64,
    pub http_upgrades: AtomicU64,
    pub retries: AtomicU64,
    pub retry_budget_exhausted: AtomicU64,
    /// Requests refused by a circuit breaker.
    pub circuit_open: AtomicU64,
    pub ejections: AtomicU64,
    /// Opaque TCP connections copied by the proxy (not spliced).
    pub copied: AtomicU64,
    /// Opaque TCP connections spliced in the kernel (sk_skb).
    pub spliced: AtomicU64,
    /// Bytes the kernel moved for them, up (to endpoints) and down.
    pub spliced_bytes_up: AtomicU64,
    pub spliced_bytes_down: AtomicU64,
    /// Bytes of spliced connections that still passed through the proxy
    /// (queued before the splice).
    pub spliced_user_bytes: AtomicU64,
    /// Connections that could not be spliced and were copied instead.
    pub splice_fallbacks: AtomicU64,
    /// Spliced connections reset because the kernel did not deliver all of
    /// their data to the other socket.
    pub splice_lost: AtomicU64,
}

impl ProxyStats {
    pub fn count_detected(&self, d: Detected) {
        if let Some(i) = Detected::ALL.iter().position(|x| *x == d) {
            self.detected[i].fetch_add(1, Relaxed);
        }
    }

    pub fn count_status(&self, status: u16) {
        if let Some(c) = self.http_status.get(usize::from(status / 100)) {
            c.fetch_add(1, Relaxed);
        }
    }
}

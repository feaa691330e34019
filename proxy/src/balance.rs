//! Endpoint choice: round robin (L4 connections and L7 requests), least
//! request (power of two choices over in-flight requests times latency EWMA)
//! and a consistent hash of a request header (rendezvous hashing: when an
//! endpoint goes away only its share of keys moves). Ejected endpoints are
//! skipped unless every endpoint is ejected (then all are used: better a
//! chance than a certain 503).

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use crate::endpoint::EndpointState;

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The order in which to try `n` endpoints: each call starts one further on,
    /// and a failed connect falls through to the next ones.
    pub fn order(&self, n: usize) -> impl Iterator<Item = usize> {
        let start = if n == 0 { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) % n };
        (0..n).map(move |i| (start + i) % n)
    }
}

/// The algorithm of one cluster.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastRequest,
    ConsistentHash { header: http::HeaderName, fallback: RoundRobin },
}

impl Balancer {
    /// Whether it uses the endpoints' latency (so it is worth measuring).
    pub fn uses_latency(&self) -> bool {
        matches!(self, Balancer::LeastRequest)
    }

    pub fn from_config(lb: &sluice_mesh_config::LoadBalancer) -> Self {
        use sluice_mesh_config::LoadBalancer as L;
        match lb {
            L::RoundRobin => Balancer::RoundRobin(RoundRobin::default()),
            L::LeastRequest => Balancer::LeastRequest,
            L::ConsistentHash { header } => match http::HeaderName::from_bytes(header.as_bytes()) {
                Ok(header) => Balancer::ConsistentHash { header, fallback: RoundRobin::default() },
                // Validation only lets header names through.
                Err(_) => Balancer::RoundRobin(RoundRobin::default()),
            },
        }
    }

    /// Picks an endpoint for a request, avoiding `tried` (earlier attempts of
    /// the same request) when another healthy endpoint exists.
    pub fn pick(
        &self,
        endpoints: &[Arc<EndpointState>],
        headers: &http::HeaderMap,
        tried: &[std::net::SocketAddr],
    ) -> Option<Arc<EndpointState>> {
        // The common case, allocation-free: none ever ejected, first attempt.
        if tried.is_empty() && !endpoints.iter().any(|e| e.ever_ejected()) {
            let i = self.choose(endpoints.len(), |i| &endpoints[i], headers)?;
            return Some(Arc::clone(&endpoints[i]));
        }
        let now = Instant::now();
        if tried.is_empty() && !endpoints.iter().any(|e| e.is_ejected(now)) {
            let i = self.choose(endpoints.len(), |i| &endpoints[i], headers)?;
            return Some(Arc::clone(&endpoints[i]));
        }
        let healthy: Vec<&Arc<EndpointState>> = endpoints.iter().filter(|e| !e.is_ejected(now)).collect();
        let pool: Vec<&Arc<EndpointState>> =
            if healthy.is_empty() { endpoints.iter().collect() } else { healthy };
        let fresh: Vec<&Arc<EndpointState>> =
            pool.iter().copied().filter(|e| !tried.contains(&e.addr)).collect();
        let cands = if fresh.is_empty() { pool } else { fresh };
        let i = self.choose(cands.len(), |i| cands[i], headers)?;
        Some(Arc::clone(cands[i]))
    }

    /// The index of the chosen one among `n` candidates.
    fn choose<'a>(
        &self,
        n: usize,
        at: impl Fn(usize) -> &'a Arc<EndpointState>,
        headers: &http::HeaderMap,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        Some(match self {
            Balancer::RoundRobin(rr) => rr.order(n).next().unwrap_or(0),
            Balancer::LeastRequest => least_request(n, at),
            Balancer::ConsistentHash { header, fallback } => match headers.get(header) {
                Some(v) => rendezvous(n, at, v.as_bytes()),
                None => fallback.order(n).next().unwrap_or(0),
            },
        })
    }
}

fn least_request<'a>(n: usize, at: impl Fn(usize) -> &'a Arc<EndpointState>) -> usize {
    if n == 1 {
        return 0;
    }
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    // An endpoint without a latency sample yet is taken to be as fast as the
    // other (not faster: a slow newcomer would otherwise draw every request
    // until its first answer), so load alone decides between them.
    let (ea, eb) = (at(a), at(b));
    let (la, lb) = match (ea.ewma_us(), eb.ewma_us()) {
        (0, 0) => (1, 1),
        (0, l) | (l, 0) => (l, l),
        ab => ab,
    };
    let load = |e: &EndpointState| u64::from(e.in_flight.load(Ordering::Relaxed)) + 1;
    if load(eb) * lb < load(ea) * la { b } else { a }
}

fn rendezvous<'a>(n: usize, at: impl Fn(usize) -> &'a Arc<EndpointState>, key: &[u8]) -> usize {
    let weight = |e: &EndpointState| {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        e.addr.hash(&mut h);
        h.finish()
    };
    (0..n).max_by_key(|&i| weight(at(i))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::SocketAddr, sync::atomic::Ordering::Relaxed, time::Duration};

    use super::*;

    fn eps(n: u16) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|i| Arc::new(EndpointState::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i)), None)))
            .collect()
    }

    #[test]
    fn rotates_and_covers_all() {
        let rr = RoundRobin::default();
        let firsts: Vec<usize> = (0..6).map(|_| rr.order(3).next().unwrap()).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        let mut all: Vec<usize> = rr.order(3).collect();
        all.sort();
        assert_eq!(all, [0, 1, 2]);
        assert_eq!(rr.order(0).count(), 0);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let e = eps(2);
        e[0].in_flight.store(50, Relaxed);
        let b = Balancer::LeastRequest;
        let h = http::HeaderMap::new();
        let picks = (0..100).filter(|_| b.pick(&e, &h, &[]).unwrap().addr == e[1].addr).count();
        assert_eq!(picks, 100);
        // Latency counts too: equal load, one endpoint 10x slower.
        e[0].in_flight.store(0, Relaxed);
        e[0].record_latency(Duration::from_millis(10));
        e[1].record_latency(Duration::from_millis(1));
        let picks = (0..100).filter(|_| b.pick(&e, &h, &[]).unwrap().addr == e[1].addr).count();
        assert_eq!(picks, 100);
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_little() {
        let e = eps(5);
        let b = Balancer::from_config(&sluice_mesh_config::LoadBalancer::ConsistentHash {
            header: "x-user".into(),
        });
        let mut before = HashMap::new();
        for u in 0..200 {
            let mut h = http::HeaderMap::new();
            h.insert("x-user", u.to_string().parse().unwrap());
            let a = b.pick(&e, &h, &[]).unwrap().addr;
            assert_eq!(b.pick(&e, &h, &[]).unwrap().addr, a, "same key, same endpoint");
            before.insert(u, (a, h));
        }
        let spread: std::collections::HashSet<_> = before.values().map(|(a, _)| *a).collect();
        assert_eq!(spread.len(), 5, "keys spread over all endpoints");
        // Remove one endpoint: only its keys move.
        let gone = e[2].addr;
        let rest: Vec<_> = e.iter().filter(|x| x.addr != gone).cloned().collect();
        for (a, h) in before.values() {
            let now = b.pick(&rest, h, &[]).unwrap().addr;
            if *a != gone {
                assert_eq!(now, *a);
            }
        }
    }

    #[test]
    fn ejected_and_tried_endpoints_are_avoided() {
        let e = eps(3);
        let od = sluice_mesh_config::OutlierDetection {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(60),
            max_ejection_percent: 100,
        };
        e[0].eject(&od, Instant::now());
        let b = Balancer::RoundRobin(RoundRobin::default());
        let h = http::HeaderMap::new();
        for _ in 0..10 {
            let p = b.pick(&e, &h, &[e[1].addr]).unwrap().addr;
            assert_eq!(p, e[2].addr);
        }
        e[1].eject(&od, Instant::now());
        e[2].eject(&od, Instant::now());
        assert!(b.pick(&e, &h, &[]).is_some(), "all ejected: still pick one");
    }
}

//! What the proxy knows of each endpoint, shared by every worker and kept
//! across config reloads: requests in flight and connections (for circuit
//! breaking and least-request), a latency EWMA, and outlier ejection.

use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{
            AtomicU32, AtomicU64,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::{Duration, Instant},
};

use sluice_mesh_config::OutlierDetection;

#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    pub version: Option<String>,
    /// The version as a metric label.
    pub label: Option<Arc<str>>,
    pub in_flight: AtomicU32,
    pub connections: AtomicU32,
    pub pending: AtomicU32,
    /// Latency EWMA in microseconds (0: no sample yet).
    ewma_us: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Ejected until this many ns after [`base`] (0: not ejected); read on
    /// every request, so an atomic rather than a lock.
    ejected_until_ns: AtomicU64,
    ejections: AtomicU32,
    /// Wakes requests waiting for a connection.
    pub(crate) freed: tokio::sync::Notify,
    /// Requests about to wait on `freed` (or waiting): a connection freed
    /// while there are none wakes no one, and skips `freed`'s lock.
    waiters: AtomicU32,
    /// `Some`: it runs on another node, reached over mutual TLS.
    pub remote: Option<Arc<crate::mesh::Remote>>,
}

/// The process's time origin for ejection deadlines.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn ns_since_base(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_nanos().min(u128::from(u64::MAX - 1)) as u64 + 1
}

impl EndpointState {
    /// A connection went back to the pool or closed: wakes the requests
    /// waiting for one, if any. (A waiter counts itself in `waiters`
    /// before it looks at the pool, so this cannot miss it.)
    pub(crate) fn notify_freed(&self) {
        if self.waiters.load(SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Counts a request as waiting for a connection while the guard lives;
    /// taken before it first looks at the pool.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.waiters.fetch_add(1, SeqCst);
        Waiting(self)
    }

    pub fn new(addr: SocketAddr, version: Option<String>) -> Self {
        Self {
            addr,
            label: version.as_deref().map(Arc::from),
            version,
            in_flight: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            ewma_us: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
            waiters: AtomicU32::new(0),
            remote: None,
        }
    }

    pub fn with_remote(mut self, remote: Option<Arc<crate::mesh::Remote>>) -> Self {
        self.remote = remote;
        self
    }

    /// Whether it was ever ejected (a cheap test before reading the clock).
    pub fn ever_ejected(&self) -> bool {
        self.ejected_until_ns.load(Relaxed) != 0
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until_ns.load(Relaxed);
        until != 0 && until > ns_since_base(now)
    }

    pub fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Relaxed)
    }

    pub fn record_latency(&self, d: Duration) {
        let sample = d.as_micros().min(u128::from(u32::MAX)) as u64;
        let old = self.ewma_us.load(Relaxed);
        let new = if old == 0 { sample } else { (old * 7 + sample * 3) / 10 };
        self.ewma_us.store(new.max(1), Relaxed);
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Relaxed);
    }

    /// Counts a failure; returns whether it reached the ejection threshold
    /// (the caller decides, knowing how many siblings are already out).
    pub fn record_failure(&self, od: Option<&OutlierDetection>) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        od.is_some_and(|od| n >= od.consecutive_failures)
    }

    /// Ejects for base × times ejected (at most 10×). Returns the duration.
    pub fn eject(&self, od: &OutlierDetection, now: Instant) -> Duration {
        let times = self.ejections.fetch_add(1, Relaxed).saturating_add(1);
        let d = od.base_ejection * times.min(10);
        self.ejected_until_ns.store(ns_since_base(now + d), Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        d
    }
}

/// Decrements a counter when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    ep: Arc<EndpointState>,
    which: Counter,
}

/// See [`EndpointState::waiting`].
pub(crate) struct Waiting<'a>(&'a EndpointState);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, SeqCst);
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    InFlight,
    Connection,
    Pending,
}

impl Held {
    /// Takes one unit of `which` if it is below `max`.
    pub(crate) fn try_take(ep: &Arc<EndpointState>, which: Counter, max: u32) -> Option<Held> {
        let c = Self::counter(ep, which);
        let mut cur = c.load(Relaxed);
        loop {
            if cur >= max {
                return None;
            }
            match c.compare_exchange_weak(cur, cur + 1, Relaxed, Relaxed) {
                Ok(_) => return Some(Held { ep: Arc::clone(ep), which }),
                Err(now) => cur = now,
            }
        }
    }

    fn counter(ep: &EndpointState, which: Counter) -> &AtomicU32 {
        match which {
            Counter::InFlight => &ep.in_flight,
            Counter::Connection => &ep.connections,
            Counter::Pending => &ep.pending,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        Self::counter(&self.ep, self.which).fetch_sub(1, Relaxed);
        if matches!(self.which, Counter::Connection) {
            self.ep.notify_freed();
        }
    }
}

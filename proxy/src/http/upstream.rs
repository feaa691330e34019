//! Connections to endpoints: HTTP/1.1 keep-alive pools and one multiplexed
//! HTTP/2 connection per endpoint, per worker.
//! Circuit breaking lives here too, since it counts exactly these things:
//! connections, requests waiting for one, and requests in flight.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustc_hash::FxHashMap;
use sluice_mesh_config::CircuitBreaker;

use super::{Body, BoxError, BoxRequest, DownstreamBodyError, HttpError};
use crate::{
    endpoint::{Counter, EndpointState, Held},
    mesh::MeshClient,
};

mod h1;
mod h2;

/// Idle HTTP/1 connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Why an exchange with an endpoint failed; `E` is the protocol's error.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    /// Nothing reached the endpoint (the connection was already gone or
    /// closing): the request comes back and may go out on another connection.
    Unsent(Box<Unsent<E>>),
    /// The client's request body failed.
    Downstream(String),
    /// The endpoint failed, closed, reset the stream or broke the protocol.
    Upstream(String),
}

/// A request that never reached the endpoint, with its in-flight count.
#[derive(Debug)]
pub(crate) struct Unsent<E> {
    pub req: BoxRequest,
    pub in_flight: Option<Held>,
    pub error: E,
}

/// Which protocol to speak to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

#[derive(Debug)]
struct Idle {
    conn: h1::Conn,
    /// When it went idle, in [`crate::clock::coarse_ms`].
    since: u64,
}

#[derive(Debug, Default)]
struct H2Slot {
    /// The connection requests go out on, while it can open streams.
    conn: Option<h2::Conn>,
    /// Held while a connection is being opened, so only one is.
    opening: Arc<tokio::sync::Mutex<()>>,
}

/// Service, endpoint and the worker thread. A connection is registered with
/// the reactor of the worker (a single-threaded runtime) that opened it, and
/// an HTTP/2 connection's driver task ends with that worker, so each worker
/// keeps its own connections (as Envoy's workers do); the circuit-breaker
/// counts are still per endpoint for the node.
type PoolKey = (Arc<str>, SocketAddr, std::thread::ThreadId);

/// One endpoint and the limits that apply to it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub service: &'a Arc<str>,
    /// The service port (what applications dial).
    pub port: u16,
    pub ep: &'a Arc<EndpointState>,
    pub limits: CircuitBreaker,
}

#[derive(Debug)]
pub struct Pools {
    // Keyed by service and address: limits are per service (cluster), so
    // two services sharing an endpoint address do not share connections.
    h1: Mutex<FxHashMap<PoolKey, Vec<Idle>>>,
    h2: Mutex<FxHashMap<PoolKey, H2Slot>>,
    own_mark: u32,
    connect_timeout: Duration,
    /// Endpoints on other nodes: `None` when this node is in no multi-node mesh.
    pub mesh: Option<Arc<MeshClient>>,
}

/// The workload a request comes from (a request extension).
#[derive(Debug, Clone)]
pub struct SourceIdentity(pub Arc<str>);

impl Pools {
    pub fn new(own_mark: u32, connect_timeout: Duration, mesh: Option<Arc<MeshClient>>) -> Self {
        Self { h1: Mutex::default(), h2: Mutex::default(), own_mark, connect_timeout, mesh }
    }

    /// Sends a request (its URI and headers already in the form `proto` needs).
    pub async fn send(
        self: &Arc<Self>,
        t: Target<'_>,
        proto: Proto,
        req: BoxRequest,
    ) -> Result<Response<Body>, HttpError> {
        let in_flight = Held::try_take(t.ep, Counter::InFlight, t.limits.max_requests)
            .ok_or_else(|| overflow(t, "requests in flight", t.limits.max_requests))?;
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        if let Some(remote) = &t.ep.remote {
            // Boxed, as the other rare branches: the future of every request
            // is as large as its largest branch, and it is moved into a box.
            return Box::pin(self.send_remote(t, remote, proto, upgrade, req, in_flight)).await;
        }
        match proto {
            Proto::Http1 if upgrade => {
                // hyper carries upgrades: the connection leaves the pool for good.
                Box::pin(async move {
                    let mut tx = self.connect_h1_upgrade(t).await?;
                    let resp = tx.send_request(*req).await.map_err(|e| send_error(t, &e))?;
                    Ok(wrap(resp, in_flight))
                })
                .await
            }
            Proto::Http1 => {
                // A pooled connection can go away between checkout and send
                // (the endpoint closed it). A request that never reached it
                // goes out on another connection: always safe.
                let (mut req, mut in_flight, mut unsent_tries) = (req, Some(in_flight), 0);
                loop {
                    let conn = self.checkout_h1(t).await?;
                    let (pools, key, ep) = (Arc::clone(self), key(t), Arc::clone(t.ep));
                    let give_back = move |c: h1::Conn| pools.give_back(key, c, &ep);
                    match conn.send(req, in_flight, give_back).await {
                        Ok(resp) => return Ok(resp),
                        Err(f) => (req, in_flight) = after_failure(t, f, &mut unsent_tries)?,
                    }
                }
            }
            Proto::Http2 => {
                // A connection that is closing (GOAWAY) opens no stream:
                // the request goes out on a new one.
                let (mut req, mut in_flight, mut unsent_tries) = (req, Some(in_flight), 0);
                loop {
                    let conn = match self.h2_open(t) {
                        Ok(c) => c,
                        // Boxed: opening a connection is rare, and its
                        // future (connect, handshake) would make every
                        // request's as large.
                        Err(opening) => Box::pin(self.h2(t, opening)).await?,
                    };
                    match conn.send(req, in_flight).await {
                        Ok(resp) => return Ok(resp),
                        Err(f) => (req, in_flight) = after_failure(t, f, &mut unsent_tries)?,
                    }
                }
            }
        }
    }

    /// To an endpoint on another node: an HTTP/2 request over mutual TLS.
    async fn send_remote(
        &self,
        t: Target<'_>,
        remote: &crate::mesh::Remote,
        proto: Proto,
        upgrade: bool,
        mut req: BoxRequest,
        in_flight: Held,
    ) -> Result<Response<Body>, HttpError> {
        let Some(mesh) = &self.mesh else {
            return Err(HttpError::Connect {
                service: t.service.to_string(),
                endpoint: t.ep.addr,
                source: std::io::Error::other(format!(
                    "the endpoint runs on node {}, and this node is not in the config's nodes: (or has no --node-name)",
                    remote.node
                )),
            });
        };
        if upgrade {
            return Err(HttpError::Upgrade {
                protocol: "an HTTP/1.1 upgrade".into(),
                reason: format!("the endpoint runs on node {}; upgrades do not cross nodes", remote.node),
            });
        }
        let source = match req.extensions().get::<SourceIdentity>() {
            Some(s) => Arc::clone(&s.0),
            None => Arc::clone(mesh.workloads.identities.load().default_id()),
        };
        super::headers::for_upstream(&mut req, Proto::Http2, "");
        let resp = mesh.send(&source, remote, t, proto, *req).await?;
        Ok(wrap(resp, in_flight))
    }

    async fn checkout_h1(&self, t: Target<'_>) -> Result<h1::Conn, HttpError> {
        // The common case first: an idle connection, no waiting machinery.
        if let Some(c) = self.take_idle(t) {
            return Ok(c);
        }
        // Boxed: connecting and waiting are rarer, and their future would
        // make every request's as large.
        Box::pin(self.connect_or_wait_h1(t)).await
    }

    /// A new connection, or one freed while waiting (within the limits).
    async fn connect_or_wait_h1(&self, t: Target<'_>) -> Result<h1::Conn, HttpError> {
        let mut _pending: Option<Held> = None;
        let _waiting = t.ep.waiting();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        loop {
            // Registered before looking, so a connection freed meanwhile wakes us.
            let freed = t.ep.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(c) = self.take_idle(t) {
                return Ok(c);
            }
            if let Some(held) = Held::try_take(t.ep, Counter::Connection, t.limits.max_connections) {
                return Ok(h1::Conn::new(self.connect(t).await?, held));
            }
            if _pending.is_none() {
                _pending = Some(
                    Held::try_take(t.ep, Counter::Pending, t.limits.max_pending_requests)
                        .ok_or_else(|| overflow(t, "pending requests", t.limits.max_pending_requests))?,
                );
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(HttpError::PoolTimeout {
                    service: t.service.to_string(),
                    endpoint: t.ep.addr,
                    after: self.connect_timeout,
                });
            }
        }
    }

    /// A live idle connection, ready for a request.
    fn take_idle(&self, t: Target<'_>) -> Option<h1::Conn> {
        let key = key(t);
        while let Some(idle) = self.pop_idle(&key) {
            if crate::clock::coarse_ms().saturating_sub(idle.since) > IDLE_TIMEOUT.as_millis() as u64 {
                continue;
            }
            if idle.conn.reusable() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn pop_idle(&self, key: &PoolKey) -> Option<Idle> {
        self.h1.lock().unwrap_or_else(|p| p.into_inner()).get_mut(key).and_then(Vec::pop)
    }

    fn give_back(&self, key: PoolKey, conn: h1::Conn, ep: &EndpointState) {
        let mut h1 = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = h1.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle { conn, since: crate::clock::coarse_ms() });
        }
        drop(h1);
        ep.notify_freed();
    }

    /// A connection of its own for an upgrade (it leaves the pool for good),
    /// driven by hyper.
    async fn connect_h1_upgrade(&self, t: Target<'_>) -> Result<http1::SendRequest<Body>, HttpError> {
        let conn = Held::try_take(t.ep, Counter::Connection, t.limits.max_connections)
            .ok_or_else(|| overflow(t, "connections", t.limits.max_connections))?;
        let stream = self.connect(t).await?;
        let (tx, driver) =
            http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| send_error(t, &e))?;
        tokio::spawn(async move {
            let _conn = conn;
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(tx)
    }

    /// Opens the endpoint's connection, unless the task that held
    /// `opening` before did. The common case, an open connection, is
    /// [`Self::h2_open`]'s: one plain lock and no async one (through an
    /// async lock, the request's task was polled three times per request
    /// instead of two; callgrind).
    async fn h2(&self, t: Target<'_>, opening: Arc<tokio::sync::Mutex<()>>) -> Result<h2::Conn, HttpError> {
        let _opening = opening.lock().await;
        // Opened by the task that held the lock before.
        if let Ok(c) = self.h2_open(t) {
            return Ok(c);
        }
        let held = Held::try_take(t.ep, Counter::Connection, t.limits.max_connections)
            .ok_or_else(|| overflow(t, "connections", t.limits.max_connections))?;
        let stream = self.connect(t).await?;
        let c = h2::Conn::handshake(stream, held)
            .await
            .map_err(|e| reset(t, format!("http2 handshake failed: {e}")))?;
        if let Some(slot) = self.h2.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&key(t)) {
            slot.conn = Some(c.clone());
        }
        Ok(c)
    }

    /// The endpoint's open connection, or the lock to take to open one.
    fn h2_open(&self, t: Target<'_>) -> Result<h2::Conn, Arc<tokio::sync::Mutex<()>>> {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        let slot = h2.entry(key(t)).or_default();
        match &slot.conn {
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => Err(Arc::clone(&slot.opening)),
        }
    }

    async fn connect(&self, t: Target<'_>) -> Result<tokio::net::TcpStream, HttpError> {
        let addr = t.ep.addr;
        match tokio::time::timeout(self.connect_timeout, crate::tcp::connect(addr, self.own_mark)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(source)) => {
                Err(HttpError::Connect { service: t.service.to_string(), endpoint: addr, source })
            }
            Err(_) => Err(HttpError::ConnectTimeout {
                service: t.service.to_string(),
                endpoint: addr,
                after: self.connect_timeout,
            }),
        }
    }
}

/// The HTTP/2 client settings of connections to other nodes (endpoints get
/// [`h2::Conn`]'s, the same): keep-alive pings, 1 MiB stream and 4 MiB
/// connection windows.
pub(crate) fn h2_client() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    b
}

fn key(t: Target<'_>) -> PoolKey {
    thread_local! {
        // std::thread::current() clones the thread's handle on every call.
        static WORKER: std::thread::ThreadId = std::thread::current().id();
    }
    (Arc::clone(t.service), t.ep.addr, WORKER.with(|w| *w))
}

/// After a failed exchange: the request back, to go out on another
/// connection (it never reached the endpoint; up to 3 times), or the error.
fn after_failure<E: std::fmt::Display>(
    t: Target<'_>,
    f: Failure<E>,
    unsent_tries: &mut u32,
) -> Result<(BoxRequest, Option<Held>), HttpError> {
    match f {
        Failure::Unsent(u) if *unsent_tries < 3 => {
            *unsent_tries += 1;
            tracing::debug!(endpoint = %t.ep.addr, error = %u.error, "request not sent on its connection; another one");
            Ok((u.req, u.in_flight))
        }
        Failure::Unsent(u) => Err(reset(t, u.error.to_string())),
        Failure::Downstream(reason) => Err(HttpError::BadRequestBody { reason }),
        Failure::Upstream(reason) => Err(reset(t, reason)),
    }
}

fn overflow(t: Target<'_>, what: &'static str, max: u32) -> HttpError {
    HttpError::Overflow { service: t.service.to_string(), endpoint: t.ep.addr, what, max }
}

/// A failed exchange: the client's body failing is the client's fault;
/// anything else is the endpoint's.
fn send_error(t: Target<'_>, e: &hyper::Error) -> HttpError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(d) = s.downcast_ref::<DownstreamBodyError>() {
            return HttpError::BadRequestBody { reason: d.to_string() };
        }
        src = s.source();
    }
    let mut reason = e.to_string();
    if let Some(s) = std::error::Error::source(e) {
        reason = format!("{reason}: {s}");
    }
    reset(t, reason)
}

/// The endpoint failed before answering.
fn reset(t: Target<'_>, reason: String) -> HttpError {
    HttpError::UpstreamReset { service: t.service.to_string(), endpoint: t.ep.addr, reason }
}

fn wrap(resp: Response<Incoming>, in_flight: Held) -> Response<Body> {
    resp.map(|inner| {
        let mut b = Pooled { inner, in_flight: Some(in_flight) };
        if b.inner.is_end_stream() {
            b.in_flight = None;
        }
        b.boxed_unsync()
    })
}

/// The response body of an upstream exchange through hyper: the exchange
/// (its in-flight count) ends when the body does.
#[derive(Debug)]
struct Pooled {
    inner: Incoming,
    in_flight: Option<Held>,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response body failed: {0}")]
pub struct UpstreamBodyError(hyper::Error);

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.in_flight = None,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.in_flight = None,
            _ => {}
        }
        r.map(|o| o.map(|f| f.map_err(|e| Box::new(UpstreamBodyError(e)) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! What the proxy tells about the traffic it carries: traces ([`trace`]),
//! Istio-compatible metrics ([`metrics`]) and access logs ([`access_log`]).
//! A request is accounted once, when its response has been sent (or the
//! client went away): [`Exchange`] travels with the response body and
//! finishes everything when the body ends or is dropped.

pub mod access_log;
pub mod metrics;
pub mod trace;

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Uri, Version};
use http_body::{Frame, SizeHint};
use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry_sdk::trace::Span;

use self::{
    access_log::AccessLog,
    metrics::{Registry, RequestLabels},
    trace::Tracing,
};
use crate::http::{Body, BoxError};

/// The node's telemetry outputs. Metrics are always on; tracing and access
/// logs only when configured.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub tracing: Option<Arc<Tracing>>,
    pub metrics: Registry,
    pub access_log: Option<AccessLog>,
}

/// Carried in a request's extensions to its upstream attempts: the context
/// they continue.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub tracing: Arc<Tracing>,
    pub parent: SpanContext,
    pub b3_single: bool,
}

/// What the attempt that produced a response tells the request's
/// accounting: set by the stack's last layer in a task-local cell (no
/// allocation per request), read by [`crate::http`] once the stack returns.
#[derive(Debug, Default)]
pub struct Attempt {
    /// The service and namespace of the cluster it went to (a route may
    /// send requests to another service than the one dialed).
    pub service: Option<(Arc<str>, Arc<str>)>,
    pub endpoint: Option<SocketAddr>,
    pub version: Option<Arc<str>>,
}

tokio::task_local! {
    /// The request's latest [`Attempt`], within [`with_attempt`].
    static ATTEMPT: std::cell::RefCell<Attempt>;
}

/// Runs `f` (a request through its stack) and returns what its last attempt recorded.
pub async fn with_attempt<T>(f: impl Future<Output = T>) -> (T, Attempt) {
    ATTEMPT
        .scope(std::cell::RefCell::new(Attempt::default()), async move {
            let r = f.await;
            (r, ATTEMPT.with(|a| a.take()))
        })
        .await
}

/// Records an attempt (outside [`with_attempt`], e.g. in unit tests, nothing happens).
pub fn record_attempt(a: Attempt) {
    let _ = ATTEMPT.try_with(|cell| *cell.borrow_mut() = a);
}

/// An attempt's CLIENT span, carried in its response's extensions (only
/// when tracing) so that it ends with that response: with the body for
/// the response the client gets, at once for one a retry throws away.
/// Extensions need `Clone + Sync`: only the first holder owns the span.
#[derive(Debug)]
pub struct SpanSlot(std::sync::Mutex<Option<Span>>);

impl SpanSlot {
    pub fn new(s: Span) -> Self {
        Self(std::sync::Mutex::new(Some(s)))
    }
    pub fn take(&self) -> Option<Span> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Clone for SpanSlot {
    fn clone(&self) -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

/// Request bytes: known from Content-Length, or counted as the body streams.
#[derive(Debug)]
pub enum RequestBytes {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl RequestBytes {
    fn get(&self) -> u64 {
        match self {
            RequestBytes::Known(n) => *n,
            RequestBytes::Counted(c) => c.load(Relaxed),
        }
    }
}

/// What the access log needs of a request (read only when it is on).
#[derive(Debug)]
pub struct RequestInfo {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub authority: String,
    pub user_agent: String,
    pub request_id: String,
}

impl RequestInfo {
    pub fn new(method: Method, uri: Uri, version: Version, headers: &HeaderMap) -> Self {
        let h = |k: http::header::HeaderName| {
            headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
        };
        let authority = match uri.authority() {
            Some(a) => a.to_string(),
            None => h(http::header::HOST),
        };
        Self {
            user_agent: h(http::header::USER_AGENT),
            request_id: h(http::header::HeaderName::from_static("x-request-id")),
            authority,
            method,
            uri,
            version,
        }
    }
}

/// The parts of a request's accounting that only access logs and traces
/// need: boxed, and only made when one of them is on, so that the common
/// case moves a small struct around.
#[derive(Debug)]
pub struct Detail {
    pub start_wall: SystemTime,
    /// `None` when there is no access log.
    pub info: Option<RequestInfo>,
    pub route: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub server_span: Option<Span>,
    pub client_span: Option<Span>,
}

/// One request's accounting, finished on drop.
#[derive(Debug)]
pub struct Exchange {
    pub telemetry: Arc<Telemetry>,
    pub start: Instant,
    pub peer: SocketAddr,
    /// Service and namespace, when the request reached one.
    pub service: Option<(Arc<str>, Arc<str>)>,
    pub version: Option<Arc<str>>,
    pub grpc: bool,
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub flags: &'static str,
    pub error: Option<&'static str>,
    pub request_bytes: RequestBytes,
    pub response_bytes: u64,
    /// The response body was sent to its end.
    pub complete: bool,
    pub detail: Option<Box<Detail>>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        if !self.complete && self.flags == "-" {
            self.flags = "DC";
        }
        if let Some((service, namespace)) = &self.service {
            let labels = RequestLabels {
                service,
                namespace,
                version: self.version.as_ref(),
                protocol: if self.grpc { "grpc" } else { "http" },
                code: self.status,
                grpc_status: self.grpc_status,
                flags: self.flags,
            };
            self.telemetry.metrics.record_request(
                labels,
                took,
                self.request_bytes.get(),
                self.response_bytes,
            );
        }
        let Some(mut d) = self.detail.take() else { return };
        if let Some(mut span) = d.client_span.take() {
            span.end();
        }
        // The ids the access log line shows (read before the span ends).
        let ids = d.server_span.as_ref().filter(|_| d.info.is_some()).map(|s| {
            let c = s.span_context();
            (format!("{:032x}", c.trace_id()), format!("{:016x}", c.span_id()))
        });
        if let Some(mut span) = d.server_span.take() {
            use opentelemetry::KeyValue;
            if let Some(r) = &d.route {
                span.set_attribute(KeyValue::new("sluice.route", Arc::clone(r)));
            }
            if let Some((s, _)) = &self.service {
                span.set_attribute(KeyValue::new("sluice.service", Arc::clone(s)));
            }
            if let Some(g) = self.grpc_status {
                span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(g)));
            }
            if self.flags != "-" {
                span.set_attribute(KeyValue::new("sluice.response_flags", self.flags));
            }
            trace::finish_http(&mut span, self.status, self.error, true);
            span.end();
        }
        if let (Some(log), Some(info)) = (&self.telemetry.access_log, &d.info) {
            let (trace_id, span_id) = match ids {
                Some((t, s)) => (Some(t), Some(s)),
                None => (None, None),
            };
            log.request(&access_log::RequestEntry {
                start_time: access_log::timestamp(d.start_wall),
                kind: if self.grpc { "grpc" } else { "http" },
                method: info.method.as_str(),
                path: info.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                authority: &info.authority,
                protocol: match info.version {
                    Version::HTTP_2 => "HTTP/2",
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                response_code: self.status,
                grpc_status: self.grpc_status,
                response_flags: self.flags,
                bytes_received: self.request_bytes.get(),
                bytes_sent: self.response_bytes,
                duration_ms: took.as_secs_f64() * 1000.0,
                service: self.service.as_ref().map_or("-", |(s, _)| s),
                route: d.route.as_deref().unwrap_or("-"),
                upstream_host: d.endpoint.map(|e| e.to_string()),
                downstream_peer: self.peer.to_string(),
                user_agent: &info.user_agent,
                request_id: &info.request_id,
                trace_id,
                span_id,
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its bytes, reads a gRPC status from its
    /// trailers, and finishes the [`Exchange`] when it ends or is dropped.
    pub struct Tracked {
        #[pin]
        inner: Body,
        exchange: Option<Exchange>,
    }
}

impl Tracked {
    /// A body whose request is already accounted for (or never will be).
    pub fn plain(inner: Body) -> Self {
        Self { inner, exchange: None }
    }

    pub fn new(inner: Body, exchange: Exchange) -> Self {
        Self { inner, exchange: Some(exchange) }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(ex) = this.exchange.as_mut() {
                    if let Some(d) = f.data_ref() {
                        ex.response_bytes += d.len() as u64;
                    } else if let Some(t) = f.trailers_ref()
                        && let Some(g) = grpc_status(t)
                    {
                        ex.grpc_status = Some(g);
                    }
                }
                // hyper stops polling once the body says it has ended.
                if this.inner.is_end_stream()
                    && let Some(mut ex) = this.exchange.take()
                {
                    ex.complete = true;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut ex) = this.exchange.take() {
                    ex.complete = true;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut ex) = this.exchange.take()
                    && ex.flags == "-"
                {
                    ex.flags = "UC";
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts its bytes (when there was no Content-Length).
    pub struct Counted {
        #[pin]
        inner: Body,
        n: Arc<AtomicU64>,
    }
}

impl Counted {
    pub fn new(inner: Body, n: Arc<AtomicU64>) -> Self {
        Self { inner, n }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            this.n.fetch_add(d.len() as u64, Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn grpc_status(h: &HeaderMap) -> Option<u16> {
    h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
}

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
    metrics::{Destination, Registry, RequestKey},
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

/// Carried in a response's extensions from the attempt that produced it.
#[derive(Debug, Default)]
pub struct Attempt {
    /// The service and namespace of the cluster it went to (a route may
    /// send requests to another service than the one dialed).
    pub service: Option<Arc<str>>,
    pub namespace: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub version: Option<Arc<str>>,
    /// The attempt's CLIENT span, ended with the response body.
    pub span: Option<SpanSlot>,
}

/// A span that may sit in `http::Extensions` (which need `Clone + Sync`):
/// only the first holder owns it.
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

impl Clone for Attempt {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            endpoint: self.endpoint,
            version: self.version.clone(),
            span: None,
        }
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

/// What is known of a request when it arrives.
#[derive(Debug)]
pub struct RequestInfo {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub authority: String,
    pub user_agent: String,
    pub request_id: String,
    pub grpc: bool,
}

impl RequestInfo {
    pub fn new(
        method: Method,
        uri: Uri,
        version: Version,
        headers: &HeaderMap,
        grpc: bool,
        log: bool,
    ) -> Self {
        let h = |k: http::header::HeaderName| {
            if log {
                headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
            } else {
                String::new()
            }
        };
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_else(|| h(http::header::HOST));
        Self {
            user_agent: h(http::header::USER_AGENT),
            request_id: h(http::header::HeaderName::from_static("x-request-id")),
            authority,
            method,
            uri,
            version,
            grpc,
        }
    }
}

/// One request's accounting, finished on drop.
#[derive(Debug)]
pub struct Exchange {
    pub telemetry: Arc<Telemetry>,
    pub start: Instant,
    pub start_wall: SystemTime,
    pub info: RequestInfo,
    pub peer: SocketAddr,
    pub service: Option<Arc<str>>,
    pub namespace: Arc<str>,
    pub route: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    pub version: Option<Arc<str>>,
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub flags: &'static str,
    pub error: Option<&'static str>,
    pub request_bytes: RequestBytes,
    pub response_bytes: u64,
    /// The response body was sent to its end.
    pub complete: bool,
    pub server_span: Option<Span>,
    pub client_span: Option<Span>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        if !self.complete && self.flags == "-" {
            self.flags = "DC";
        }
        if let Some(service) = &self.service {
            let key = RequestKey {
                dest: Destination {
                    service: Arc::clone(service),
                    namespace: Arc::clone(&self.namespace),
                    version: self.version.clone(),
                },
                protocol: if self.info.grpc { "grpc" } else { "http" },
                code: self.status,
                grpc_status: self.grpc_status,
                flags: self.flags,
            };
            self.telemetry.metrics.record_request(key, took, self.request_bytes.get(), self.response_bytes);
        }
        if let Some(mut span) = self.client_span.take() {
            span.end();
        }
        let ids = self.server_span.as_ref().map(|s| {
            let c = s.span_context();
            (format!("{:032x}", c.trace_id()), format!("{:016x}", c.span_id()))
        });
        if let Some(mut span) = self.server_span.take() {
            use opentelemetry::KeyValue;
            if let Some(r) = &self.route {
                span.set_attribute(KeyValue::new("sluice.route", r.to_string()));
            }
            if let Some(s) = &self.service {
                span.set_attribute(KeyValue::new("sluice.service", s.to_string()));
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
        if let Some(log) = &self.telemetry.access_log {
            let (trace_id, span_id) = match ids {
                Some((t, s)) => (Some(t), Some(s)),
                None => (None, None),
            };
            log.request(&access_log::RequestEntry {
                start_time: access_log::timestamp(self.start_wall),
                kind: if self.info.grpc { "grpc" } else { "http" },
                method: self.info.method.as_str(),
                path: self.info.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                authority: &self.info.authority,
                protocol: match self.info.version {
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
                service: self.service.as_deref().unwrap_or("-"),
                route: self.route.as_deref().unwrap_or("-"),
                upstream_host: self.endpoint.map(|e| e.to_string()),
                downstream_peer: self.peer.to_string(),
                user_agent: &self.info.user_agent,
                request_id: &self.info.request_id,
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

//! The L7 path: HTTP/1.1 (plain requests by `server`, the rest by hyper)
//! and HTTP/2, gRPC included (`h2_server`, on the h2 crate) served on
//! redirected connections, each request routed by the service's routes and
//! sent through its destination's stack ([`stack`]) to an endpoint over the
//! shared upstream pools ([`upstream`]). Failures become responses a person
//! (or a gRPC library) can read ([`error`]); HTTP/1 requests pass a strict
//! framing check first ([`guard`]).

pub mod error;
pub mod guard;
mod h2_body;
mod h2_server;
pub mod headers;
pub mod replay;
pub mod retry;
pub mod router;
mod server;
pub mod stack;
pub mod upstream;
mod wire;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use bytes::Bytes;
pub use error::HttpError;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    ProxyStats, Routes,
    telemetry::{self, Attempt, Counted, Exchange, Outgoing, RequestBytes, RequestInfo, SpanSlot, Tracked},
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;
/// A request on its way through the proxy. Boxed: every async layer it
/// passes (handler, stack, balancer, pools, connection) keeps what it is
/// given in its future, and a request is 240 bytes; each layer's future
/// (and the stream's, moved into its task) is smaller by that much.
pub type BoxRequest = Box<Request<Body>>;

/// The client's request body failed (malformed chunking, reset...).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DownstreamBodyError(pub(crate) BoxError);

/// Protocol limits for clients; the defaults are safe, the node's flags change them.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// An HTTP/1 request head must arrive within this (slowloris).
    pub header_read_timeout: Duration,
    /// Largest HTTP/1 request head, and HTTP/2 header list, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request.
    pub max_headers: usize,
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may reset before the server accepted them (rapid reset).
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of client errors before it closes
    /// the connection.
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            h2_max_concurrent_streams: 1024,
            h2_max_pending_accept_reset_streams: 100,
            h2_max_local_error_reset_streams: 1024,
        }
    }
}

/// What serving a connection needs.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtx {
    pub routes: Routes,
    pub stats: Arc<ProxyStats>,
    pub limits: HttpLimits,
    pub telemetry: Arc<crate::Telemetry>,
    /// Endpoints may be on other nodes: requests carry their source identity.
    pub mesh: bool,
}

#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    orig: SocketAddr,
    /// The calling workload's identity.
    source: Option<Arc<str>>,
    ctx: ConnCtx,
    /// Set when the node drains: HTTP/1 responses then say `Connection: close`.
    draining: std::sync::atomic::AtomicBool,
}

/// After a drain starts, HTTP/1 connections get this long to carry one more
/// response (marked `Connection: close`, so the client closes cleanly)
/// before idle ones are closed.
const H1_DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Serves HTTP on a redirected connection until it closes. On `graceful`
/// (a drain): HTTP/2 gets GOAWAY at once and finishes its streams; HTTP/1
/// answers with `Connection: close` from then on, and after a grace period
/// closes when idle. Closing an idle HTTP/1 connection at once would race a
/// request already on the wire, which the client would see as an error.
pub(crate) async fn serve(
    mut stream: TcpStream,
    http2_: bool,
    peer: SocketAddr,
    orig: SocketAddr,
    source: Option<Arc<str>>,
    ctx: ConnCtx,
    graceful: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let limits = ctx.limits.clone();
    let stats = Arc::clone(&ctx.stats);
    let conn = Arc::new(Conn { peer, orig, source, ctx, draining: Default::default() });
    let mut drain = crate::cancel::Cancelled::new(graceful);
    if http2_ {
        if let Err(e) = h2_server::serve(stream, &conn, &mut drain).await {
            tracing::debug!(%peer, %orig, error = %e, "HTTP/2 connection ended with an error");
        }
    } else {
        let verdict = guard::Verdict::default();
        let r = match server::serve(&mut stream, &conn, &mut drain).await {
            server::Exit::Closed(refused) => {
                *verdict.lock().unwrap_or_else(|p| p.into_inner()) = refused;
                Ok(())
            }
            server::Exit::Hyper(read) => {
                let io = guard::Guard::new(
                    stream,
                    limits.max_header_bytes,
                    limits.max_headers,
                    Arc::clone(&verdict),
                )
                .with_head_timeout(limits.header_read_timeout)
                .with_prefix(&read);
                serve_hyper_h1(io, &conn, &mut drain).await
            }
        };
        let refused = *verdict.lock().unwrap_or_else(|p| p.into_inner());
        match refused {
            Some(guard::HEAD_TIMEOUT) => {
                stats.http_header_timeouts.fetch_add(1, Relaxed);
                tracing::info!(%peer, %orig, "HTTP/1 connection closed: the request head did not arrive in time");
            }
            Some(guard::HEAD_TOO_LARGE) => {
                tracing::info!(%peer, %orig, "HTTP/1 request refused with 431: head over the size limit");
            }
            Some(reason) => {
                stats.http_refused.fetch_add(1, Relaxed);
                tracing::warn!(%peer, %orig, reason, "HTTP/1 request refused with 400 (request smuggling shape); connection closed");
            }
            None => {
                if let Err(e) = r {
                    tracing::debug!(%peer, %orig, error = %e, "HTTP/1 connection ended with an error");
                }
            }
        }
    }
}

/// hyper's requests go to [`handle`].
fn service(
    conn: Arc<Conn>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Tracked>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let req = req.map(|b| b.map_err(downstream_body_error).boxed_unsync());
        handle(Box::new(req), Arc::clone(&conn))
    })
}

/// The client's request body failed (hyper's error).
pub(crate) fn downstream_body_error(e: hyper::Error) -> BoxError {
    Box::new(DownstreamBodyError(Box::new(e)))
}

/// hyper serves the rest of an HTTP/1 connection, behind the guard.
async fn serve_hyper_h1(
    io: guard::Guard<TcpStream>,
    conn: &Arc<Conn>,
    drain: &mut crate::cancel::Cancelled,
) -> hyper::Result<()> {
    let limits = &conn.ctx.limits;
    let mut b = http1::Builder::new();
    // The head timeout is the guard's (armed only for incomplete heads);
    // hyper's would arm a timer for every request, ~10% of the L7 path's
    // CPU in the benchmark.
    b.writev(false).max_buf_size(limits.max_header_bytes.max(8192));
    // hyper parses headers into a stack array of 100 unless told another
    // number (then it allocates per request): only say so when it differs.
    if limits.max_headers != 100 {
        b.max_headers(limits.max_headers);
    }
    let c = b.serve_connection(TokioIo::new(io), service(Arc::clone(conn))).with_upgrades();
    tokio::pin!(c);
    // The drain may have begun on the fast path (its wait has resolved).
    let drained = conn.draining.load(Relaxed);
    tokio::select! {
        biased;
        r = c.as_mut() => r,
        _ = async { if !drained { (&mut *drain).await } } => {
            conn.draining.store(true, Relaxed);
            match tokio::time::timeout(H1_DRAIN_GRACE, c.as_mut()).await {
                Ok(r) => r,
                Err(_) => { c.as_mut().graceful_shutdown(); c.await }
            }
        }
    }
}

pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

async fn handle(mut req: BoxRequest, conn: Arc<Conn>) -> Result<Response<Tracked>, Infallible> {
    let stats = &conn.ctx.stats;
    let tel = &conn.ctx.telemetry;
    stats.http_requests.fetch_add(1, Relaxed);
    let start = Instant::now();
    let grpc = is_grpc(&req);
    let downstream_version = req.version();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    // What only access logs and traces need is gathered only for them.
    let mut detail = (tel.access_log.is_some() || tel.tracing.is_some()).then(|| {
        Box::new(telemetry::Detail {
            start_wall: std::time::SystemTime::now(),
            info: tel
                .access_log
                .is_some()
                .then(|| RequestInfo::new(method.clone(), uri.clone(), downstream_version, req.headers())),
            route: None,
            endpoint: None,
            server_span: None,
            client_span: None,
        })
    });
    // Boxed: a span is large, and only traced requests carry one.
    let server_trace = tel.tracing.as_ref().map(|t| {
        let st = Box::new(t.start_server(&req, conn.peer));
        req.extensions_mut().insert(Outgoing {
            tracing: Arc::clone(t),
            parent: st.parent.clone(),
            b3_single: st.b3_single,
        });
        st
    });
    let request_bytes = match req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
        Some(n) => RequestBytes::Known(n.parse().unwrap_or(0)),
        None if req.body().is_end_stream() => RequestBytes::Known(0),
        None => RequestBytes::Counted(Arc::default()),
    };
    let table = conn.ctx.routes.load();
    let backend = table.get(conn.orig);
    let denied = match backend {
        Some(b) if !b.authz.is_open() => {
            let source = conn.source.as_deref().unwrap_or_default();
            match b.authz.check(source, b.index, b.port, Some(&req)) {
                crate::authz::Verdict::Allow => None,
                crate::authz::Verdict::Deny(policy) => {
                    stats.authz_denied_http.fetch_add(1, Relaxed);
                    tracing::info!(peer = %conn.peer, orig = %conn.orig, source, %policy, method = %method, path = uri.path(), "request denied by authorization");
                    Some(HttpError::Forbidden {
                        service: b.service.clone(),
                        source_id: source.to_string(),
                        policy: policy.to_string(),
                    })
                }
            }
        }
        _ => None,
    };
    if conn.ctx.mesh
        && let Some(s) = &conn.source
    {
        req.extensions_mut().insert(upstream::SourceIdentity(Arc::clone(s)));
    }
    // The service dialed: its labels count the request when no attempt
    // did (a denial is counted under the service refused, as Istio counts
    // RBAC denials).
    let dialed = backend.and_then(|b| b.http.clone());
    let route = match (denied, dialed.as_deref()) {
        (Some(e), _) => Err(e),
        (None, None) => Err(HttpError::ServiceGone { orig: conn.orig }),
        (None, Some(svc)) => match svc.select(&req) {
            None => Err(HttpError::NoRoute {
                service: svc.service.clone(),
                method: method.to_string(),
                path: uri.path().to_string(),
            }),
            Some(i) => Ok((svc, i)),
        },
    };
    drop(table);
    let route_name = if detail.is_some() {
        route.as_ref().ok().map(|(svc, i)| Arc::clone(&svc.routes[*i].name))
    } else {
        None
    };
    let upgrade = downstream_version < Version::HTTP_2 && headers::is_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *req));
    let mut attempt = Attempt::default();
    let result = match route {
        Err(e) => Err(e),
        Ok((svc, i)) => {
            let route = &svc.routes[i];
            // In place: a new request would take its own room in this
            // future, which every request's task holds.
            if let RequestBytes::Counted(n) = &request_bytes {
                let b = std::mem::take(req.body_mut());
                *req.body_mut() = Counted::new(b, Arc::clone(n)).boxed_unsync();
            }
            headers::strip_hop_by_hop(req.headers_mut(), upgrade);
            headers::apply(&route.request_headers, req.headers_mut());
            match route.pick() {
                None => Err(HttpError::NoEndpoints { service: svc.service.clone(), version: None }),
                Some(stack) => {
                    let (r, a) = stack.call(req).await;
                    attempt = a;
                    r.map(|mut resp| {
                        headers::apply(&route.response_headers, resp.headers_mut());
                        resp
                    })
                }
            }
        }
    };
    let (mut resp, flags, error, failed_endpoint) = match result {
        Ok(r) => (r, "-", None, None),
        Err(e) => {
            stats.http_errors.fetch_add(1, Relaxed);
            tracing::info!(peer = %conn.peer, orig = %conn.orig, method = %method, path = uri.path(), status = e.status().as_u16(), reason = e.reason(), error = %e, "request answered by the proxy");
            (e.to_response(grpc), e.response_flags(), Some(e.reason()), e.endpoint())
        }
    };
    let client_span = resp.extensions_mut().remove::<SpanSlot>().and_then(|s| s.take());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && on_upgrade.is_some() {
        stats.http_upgrades.fetch_add(1, Relaxed);
        let upstream = hyper::upgrade::on(&mut resp);
        let downstream = on_upgrade;
        let (peer, orig) = (conn.peer, conn.orig);
        tokio::spawn(async move {
            let (Some(down), Ok(up)) = (downstream, upstream.await) else { return };
            let Ok(down) = down.await else { return };
            let (mut d, mut u) = (TokioIo::new(down), TokioIo::new(up));
            match tokio::io::copy_bidirectional(&mut d, &mut u).await {
                Ok((a, b)) => tracing::debug!(%peer, %orig, up = a, down = b, "upgraded connection closed"),
                Err(e) => tracing::debug!(%peer, %orig, error = %e, "upgraded connection failed"),
            }
        });
    } else {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
        if downstream_version < Version::HTTP_2 && conn.draining.load(Relaxed) {
            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
    }
    let status = resp.status().as_u16();
    stats.count_status(status);
    if let Some(d) = detail.as_mut() {
        d.route = route_name;
        d.endpoint = attempt.endpoint.or(failed_endpoint);
        d.server_span = server_trace.and_then(|t| t.span);
        d.client_span = client_span;
    }
    let mut exchange = Exchange {
        telemetry: Arc::clone(tel),
        start,
        peer: conn.peer,
        service: attempt
            .service
            .or_else(|| dialed.as_ref().map(|s| (Arc::clone(&s.label), Arc::clone(&s.namespace)))),
        version: attempt.version,
        grpc,
        status,
        grpc_status: if grpc { telemetry::grpc_status(resp.headers()) } else { None },
        flags,
        error,
        request_bytes,
        response_bytes: 0,
        complete: false,
        detail,
    };
    if resp.body().is_end_stream() {
        exchange.complete = true;
        drop(exchange);
        return Ok(resp.map(Tracked::plain));
    }
    Ok(resp.map(|b| Tracked::new(b, exchange)))
}

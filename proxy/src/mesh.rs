//! Node to node: one port per node (15008 by default) that takes mutual TLS
//! 1.3 and HTTP/2 from the other nodes' proxies. An L7 request travels as an
//! HTTP/2 request, an opaque TCP connection as an HTTP/2 CONNECT tunnel; both
//! name the destination service port and endpoint in `x-sluice-*` headers.
//! The receiving node checks the peer's SPIFFE ID against the authorization
//! policies, checks that the endpoint is one of its own for that service, and
//! delivers. Connections between two nodes are multiplexed: one per source
//! identity, destination identity and worker.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::{
    body::Incoming, client::conn::http2 as client_h2, server::conn::http2 as server_h2, service::service_fn,
    upgrade::Upgraded,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Routes,
    http::{
        Body, HttpError,
        error::{empty, full},
        headers,
        upstream::{Pools, Proto, Target},
    },
    tls::{MeshTls, Workloads},
};

pub const H_SERVICE: &str = "x-sluice-service";
pub const H_PORT: &str = "x-sluice-port";
pub const H_ENDPOINT: &str = "x-sluice-endpoint";
/// `h1` or `h2`: how the destination node speaks to the endpoint when the
/// service port leaves it to the client's protocol.
pub const H_PROTO: &str = "x-sluice-proto";

/// Another node, as an endpoint's way there.
#[derive(Debug)]
pub struct Remote {
    pub node: Arc<str>,
    /// The node's mutual-TLS port.
    pub addr: SocketAddr,
    /// The identity the destination workload must prove.
    pub identity: Arc<str>,
    /// The SNI name that asks for that identity's certificate.
    pub sni: ServerName<'static>,
}

/// What the node-to-node path counts.
#[derive(Debug, Default)]
pub struct MeshStats {
    pub handshakes_ok: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub client_handshakes_ok: AtomicU64,
    pub client_handshakes_failed: AtomicU64,
    pub streams_http: AtomicU64,
    pub streams_tcp: AtomicU64,
    pub denied_http: AtomicU64,
    pub denied_tcp: AtomicU64,
    pub refused_target: AtomicU64,
}

type ConnKey = (Arc<str>, SocketAddr, Arc<str>, std::thread::ThreadId);
type Slot = Arc<tokio::sync::Mutex<Option<client_h2::SendRequest<Body>>>>;

/// The client side: multiplexed mutual-TLS HTTP/2 connections to other nodes.
#[derive(Debug)]
pub struct MeshClient {
    /// `None`: `identity.mtls: disable`, plaintext HTTP/2.
    pub tls: Option<Arc<MeshTls>>,
    pub workloads: Arc<Workloads>,
    own_mark: u32,
    connect_timeout: Duration,
    conns: Mutex<HashMap<ConnKey, Slot>>,
    pub stats: Arc<MeshStats>,
}

impl MeshClient {
    pub fn new(
        tls: Option<Arc<MeshTls>>,
        workloads: Arc<Workloads>,
        own_mark: u32,
        connect_timeout: Duration,
        stats: Arc<MeshStats>,
    ) -> Self {
        Self { tls, workloads, own_mark, connect_timeout, conns: Mutex::default(), stats }
    }

    async fn sender(
        &self,
        source: &Arc<str>,
        remote: &Remote,
    ) -> std::io::Result<client_h2::SendRequest<Body>> {
        let key =
            (Arc::clone(source), remote.addr, Arc::clone(&remote.identity), std::thread::current().id());
        let slot = Arc::clone(self.conns.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default());
        let mut guard = slot.lock().await;
        if let Some(tx) = guard.as_ref()
            && !tx.is_closed()
        {
            return Ok(tx.clone());
        }
        let tx = tokio::time::timeout(self.connect_timeout, self.handshake(source, remote)).await.map_err(
            |_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "node {} ({}) did not complete mutual TLS within {:?}",
                        remote.node, remote.addr, self.connect_timeout
                    ),
                )
            },
        )??;
        *guard = Some(tx.clone());
        Ok(tx)
    }

    async fn handshake(
        &self,
        source: &Arc<str>,
        remote: &Remote,
    ) -> std::io::Result<client_h2::SendRequest<Body>> {
        let tcp = crate::tcp::connect(remote.addr, self.own_mark).await?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return h2_over(tcp, remote).await;
        };
        let config = tls.client_config(source).map_err(std::io::Error::other)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = match connector.connect(remote.sni.clone(), tcp).await {
            Ok(t) => t,
            Err(e) => {
                self.stats.client_handshakes_failed.fetch_add(1, Relaxed);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("mutual TLS with node {} ({}) as {source}: {e}", remote.node, remote.addr),
                ));
            }
        };
        self.stats.client_handshakes_ok.fetch_add(1, Relaxed);
        h2_over(stream, remote).await
    }

    /// Sends an L7 request (already in HTTP/2 form) to `endpoint` on another node.
    pub async fn send(
        &self,
        source: &Arc<str>,
        remote: &Remote,
        t: Target<'_>,
        proto: Proto,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, HttpError> {
        let h = req.headers_mut();
        set(h, H_SERVICE, t.service);
        set(h, H_PORT, &t.port.to_string());
        set(h, H_ENDPOINT, &t.ep.addr.to_string());
        set(h, H_PROTO, if proto == Proto::Http2 { "h2" } else { "h1" });
        let mut tx = self.sender(source, remote).await.map_err(|source| HttpError::Connect {
            service: t.service.to_string(),
            endpoint: t.ep.addr,
            source,
        })?;
        tx.ready().await.map_err(|e| reset(t, &e))?;
        tx.send_request(req).await.map_err(|e| reset(t, &e))
    }

    /// Opens a CONNECT tunnel to `endpoint` on another node for opaque TCP.
    pub async fn tunnel(
        &self,
        source: &Arc<str>,
        remote: &Remote,
        service: &str,
        port: u16,
        endpoint: SocketAddr,
    ) -> std::io::Result<Upgraded> {
        let mut tx = self.sender(source, remote).await?;
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(endpoint.to_string())
            .body(empty())
            .map_err(std::io::Error::other)?;
        let h = req.headers_mut();
        set(h, H_SERVICE, service);
        set(h, H_PORT, &port.to_string());
        set(h, H_ENDPOINT, &endpoint.to_string());
        tx.ready().await.map_err(std::io::Error::other)?;
        let resp = tx.send_request(req).await.map_err(std::io::Error::other)?;
        if resp.status() != StatusCode::OK {
            let why =
                resp.headers().get("x-sluice-error").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let kind = if resp.status() == StatusCode::FORBIDDEN {
                std::io::ErrorKind::PermissionDenied
            } else {
                std::io::ErrorKind::ConnectionRefused
            };
            return Err(std::io::Error::new(
                kind,
                format!("node {} answered {} {why} for {endpoint}", remote.node, resp.status().as_u16()),
            ));
        }
        hyper::upgrade::on(resp).await.map_err(std::io::Error::other)
    }
}

/// An HTTP/2 client connection to `remote` over `io` (TLS or plain TCP).
async fn h2_over<IO>(io: IO, remote: &Remote) -> std::io::Result<client_h2::SendRequest<Body>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, driver) = crate::http::upstream::h2_client()
        .handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    let node = Arc::clone(&remote.node);
    tokio::spawn(async move {
        if let Err(e) = driver.await {
            tracing::debug!(%node, error = %e, "connection to node ended");
        }
    });
    Ok(tx)
}

fn set(h: &mut http::HeaderMap, name: &'static str, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(name, v);
    }
}

fn reset(t: Target<'_>, e: &hyper::Error) -> HttpError {
    HttpError::UpstreamReset { service: t.service.to_string(), endpoint: t.ep.addr, reason: e.to_string() }
}

// ---------------------------------------------------------------- server

/// What the receiving side needs.
#[derive(Debug, Clone)]
pub struct MeshServer {
    /// `None`: `identity.mtls: disable`, plaintext HTTP/2.
    pub tls: Option<Arc<MeshTls>>,
    pub routes: Routes,
    pub pools: Arc<Pools>,
    pub own_mark: u32,
    pub connect_timeout: Duration,
    pub stats: Arc<MeshStats>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl MeshServer {
    /// Accepts other nodes until `shutdown`, then lets open streams finish.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let acceptor = self.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.server_config()));
        let tracker = TaskTracker::new();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "mesh port: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (this, acceptor, shutdown) = (self.clone(), acceptor.clone(), shutdown.clone());
            tracker.spawn(async move { this.connection(tcp, peer, acceptor, shutdown).await });
        }
        tracker.close();
        tracker.wait().await;
    }

    async fn connection(
        self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
    ) {
        let _ = tcp.set_nodelay(true);
        let (Some(acceptor), Some(mesh_tls)) = (acceptor, self.tls.clone()) else {
            // mtls: disable. No identity: policies naming sources never match.
            self.serve_h2(TokioIo::new(tcp), Arc::from(""), peer, shutdown).await;
            return;
        };
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.stats.handshakes_failed.fetch_add(1, Relaxed);
                tracing::info!(%peer, error = %e, "mesh port: mutual TLS refused");
                return;
            }
            Err(_) => {
                self.stats.handshakes_failed.fetch_add(1, Relaxed);
                tracing::info!(%peer, "mesh port: no TLS handshake in time");
                return;
            }
        };
        let Some(identity) = mesh_tls.peer_identity(tls.get_ref().1.peer_certificates()) else {
            self.stats.handshakes_failed.fetch_add(1, Relaxed);
            tracing::warn!(%peer, "mesh port: the peer's certificate has no SPIFFE ID of this trust domain; closed");
            return;
        };
        self.stats.handshakes_ok.fetch_add(1, Relaxed);
        tracing::debug!(%peer, %identity, "mesh connection");
        self.serve_h2(TokioIo::new(tls), identity, peer, shutdown).await;
    }

    /// Serves a node's HTTP/2 connection; `identity` is the peer's.
    async fn serve_h2<IO>(self, io: IO, identity: Arc<str>, peer: SocketAddr, shutdown: CancellationToken)
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let this = Arc::new(self);
        let svc = {
            let this = Arc::clone(&this);
            let identity = Arc::clone(&identity);
            service_fn(move |req| {
                let (this, identity) = (Arc::clone(&this), Arc::clone(&identity));
                async move { Ok::<_, std::convert::Infallible>(this.stream(req, identity, peer).await) }
            })
        };
        let conn = server_h2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(4096)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        let r = tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => { conn.as_mut().graceful_shutdown(); conn.await }
        };
        if let Err(e) = r {
            tracing::debug!(%peer, %identity, error = %e, "mesh connection ended");
        }
    }

    async fn stream(
        &self,
        mut req: Request<Incoming>,
        identity: Arc<str>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (Some(service), Some(port), Some(endpoint)) = (
            header(H_SERVICE),
            header(H_PORT).and_then(|p| p.parse::<u16>().ok()),
            header(H_ENDPOINT).and_then(|e| e.parse::<SocketAddr>().ok()),
        ) else {
            self.stats.refused_target.fetch_add(1, Relaxed);
            return plain(
                StatusCode::BAD_REQUEST,
                "bad_target",
                "a mesh stream names x-sluice-service, x-sluice-port and x-sluice-endpoint",
            );
        };
        let table = self.routes.load();
        let Some(backend) = table.by_service(&service, port).cloned() else {
            self.stats.refused_target.fetch_add(1, Relaxed);
            return plain(
                StatusCode::NOT_FOUND,
                "unknown_service",
                &format!("no service {service} port {port} on this node"),
            );
        };
        drop(table);
        let Some(state) = backend.local_endpoint(endpoint) else {
            self.stats.refused_target.fetch_add(1, Relaxed);
            tracing::warn!(%peer, %identity, %service, %endpoint, "mesh stream refused: not a local endpoint of the service");
            return plain(
                StatusCode::FORBIDDEN,
                "not_local_endpoint",
                &format!("{endpoint} is no endpoint of service {service} on this node"),
            );
        };
        let connect = req.method() == Method::CONNECT;
        let verdict = if connect {
            backend.authz.check_tcp(&identity, backend.index, port)
        } else {
            backend.authz.check(&identity, backend.index, port, Some(&req))
        };
        if let crate::authz::Verdict::Deny(policy) = verdict {
            let c = if connect { &self.stats.denied_tcp } else { &self.stats.denied_http };
            c.fetch_add(1, Relaxed);
            tracing::info!(%peer, %identity, %service, port, %policy, "mesh stream denied by authorization");
            let e =
                HttpError::Forbidden { service, source_id: identity.to_string(), policy: policy.to_string() };
            let grpc = !connect && crate::http::is_grpc(&req);
            return e.to_response(grpc);
        }
        if connect {
            self.stats.streams_tcp.fetch_add(1, Relaxed);
            let upstream = match tokio::time::timeout(
                self.connect_timeout,
                crate::tcp::connect(endpoint, self.own_mark),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return plain(StatusCode::BAD_GATEWAY, "connect_failure", &format!("{endpoint}: {e}"));
                }
                Err(_) => {
                    return plain(StatusCode::GATEWAY_TIMEOUT, "connect_timeout", &endpoint.to_string());
                }
            };
            let _ = upstream.set_nodelay(true);
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on_upgrade.await else { return };
                let (mut a, mut b) = (TokioIo::new(up), upstream);
                match tokio::io::copy_bidirectional(&mut a, &mut b).await {
                    Ok((x, y)) => tracing::debug!(%endpoint, up = x, down = y, "mesh tunnel closed"),
                    Err(e) => tracing::debug!(%endpoint, error = %e, "mesh tunnel failed"),
                }
            });
            return Response::new(empty());
        }
        self.stats.streams_http.fetch_add(1, Relaxed);
        let grpc = crate::http::is_grpc(&req);
        let proto = match (backend.protocol, header(H_PROTO).as_deref()) {
            (sluice_mesh_config::Protocol::Http2 | sluice_mesh_config::Protocol::Grpc, _)
            | (_, Some("h2")) => Proto::Http2,
            _ => Proto::Http1,
        };
        for h in [H_SERVICE, H_PORT, H_ENDPOINT, H_PROTO] {
            req.headers_mut().remove(h);
        }
        let mut req = req.map(|b| b.map_err(crate::http::downstream_body_error).boxed_unsync());
        let authority = format!("{service}:{port}");
        headers::for_upstream(&mut req, proto, &authority);
        let service: Arc<str> = service.into();
        let target = Target { service: &service, port, ep: &state, limits: backend.limits };
        match self.pools.send(target, proto, Box::new(req)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(%peer, %identity, %endpoint, error = %e, "mesh request failed at the endpoint");
                e.to_response(grpc)
            }
        }
    }
}

fn plain(status: StatusCode, reason: &'static str, message: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{message}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert("x-sluice-error", HeaderValue::from_static(reason));
    r
}

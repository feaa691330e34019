//! Opaque TCP forwarding: connect to an endpoint, then copy both ways until both
//! sides are done. A FIN from one side becomes a shutdown(SHUT_WR) towards the
//! other (half-close), and the other direction keeps flowing.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Instant, SystemTime},
};

use opentelemetry::{
    KeyValue,
    trace::{Span as _, Status},
};
use opentelemetry_sdk::trace::Span;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::{
    ProxyConfig, ProxyError, ProxyStats, Telemetry,
    route::Backend,
    telemetry::{
        access_log::{self, TcpEntry},
        metrics::{TcpKey, TcpPath, TcpSeries},
    },
};

pub(crate) async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
    source: Option<Arc<str>>,
    backend: &Backend,
    stats: &ProxyStats,
    cfg: &ProxyConfig,
) {
    if !backend.authz.is_open() {
        let id = source.as_deref().unwrap_or_default();
        if let crate::authz::Verdict::Deny(policy) = backend.authz.check_tcp(id, backend.index, backend.port)
        {
            stats.authz_denied_tcp.fetch_add(1, Relaxed);
            tracing::info!(%peer, %orig, source = id, service = %backend.service, %policy, "connection refused by authorization");
            reset(&client);
            return;
        }
    }
    let started = Instant::now();
    let tel = &cfg.telemetry;
    let mut conn = TcpConn {
        tel,
        backend,
        peer,
        start: started,
        start_wall: SystemTime::now(),
        span: tel.tracing.as_ref().and_then(|t| t.start_tcp(&backend.service, peer, orig)),
        series: None,
        path: TcpPath::Proxy,
        endpoint: None,
        flags: "-",
        up: 0,
        down: 0,
    };
    let (upstream, endpoint) = match connect_any(backend, orig, source.as_ref(), stats, cfg).await {
        Ok(u) => u,
        Err(e) => {
            if matches!(e, ProxyError::Denied { .. }) {
                reset(&client);
            }
            conn.flags = if backend.endpoints.is_empty() { "UH" } else { "UF" };
            conn.open(TcpPath::Proxy);
            if let Some(s) = conn.span.as_mut() {
                s.set_status(Status::error(e.to_string()));
            }
            tracing::warn!(%peer, %orig, error = %e, "connection refused");
            return;
        }
    };
    conn.endpoint = Some(endpoint);
    stats.forwarded.fetch_add(1, Relaxed);
    tracing::debug!(%peer, %orig, service = %backend.service, %endpoint, "forwarding");
    let _ = client.set_nodelay(true);
    let result = match upstream {
        Connected::Tcp(mut upstream) => {
            let _ = upstream.set_nodelay(true);
            if let Some(s) = &cfg.splice {
                let mut on_start = || conn.open(TcpPath::Splice);
                let r = crate::splice::run(&client, &upstream, s.0.as_ref(), &mut on_start).await;
                match r {
                    Ok(x) => {
                        stats.spliced.fetch_add(1, Relaxed);
                        stats.spliced_bytes_up.fetch_add(x.kernel_up, Relaxed);
                        stats.spliced_bytes_down.fetch_add(x.kernel_down, Relaxed);
                        stats.spliced_user_bytes.fetch_add(x.user_up + x.user_down, Relaxed);
                        (conn.up, conn.down) = (x.kernel_up + x.user_up, x.kernel_down + x.user_down);
                        tracing::debug!(
                            %peer, %orig, service = %backend.service, %endpoint,
                            kernel_up = x.kernel_up, kernel_down = x.kernel_down,
                            user_bytes = x.user_up + x.user_down,
                            duration_ms = started.elapsed().as_millis() as u64,
                            "spliced connection closed"
                        );
                        return;
                    }
                    Err(crate::splice::SpliceError::Io(e)) => {
                        stats.spliced.fetch_add(1, Relaxed);
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            stats.splice_lost.fetch_add(1, Relaxed);
                        }
                        conn.flags = "UC";
                        tracing::info!(%peer, %orig, service = %backend.service, %endpoint, error = %e, "spliced connection reset");
                        return;
                    }
                    Err(e @ crate::splice::SpliceError::Setup(_)) => {
                        stats.splice_fallbacks.fetch_add(1, Relaxed);
                        tracing::warn!(%peer, %orig, error = %e, "forwarding in userspace instead");
                    }
                }
            }
            conn.open(TcpPath::Proxy);
            stats.copied.fetch_add(1, Relaxed);
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
        }
        Connected::Tunnel(t) => {
            // Another node: the bytes go through the mutual-TLS tunnel.
            conn.open(TcpPath::Proxy);
            stats.tunnelled.fetch_add(1, Relaxed);
            tokio::io::copy_bidirectional(&mut client, &mut hyper_util::rt::TokioIo::new(t)).await
        }
    };
    let (up, down, error) = match result {
        Ok((up, down)) => (up, down, None),
        Err(e) => (0, 0, Some(e)),
    };
    stats.bytes_up.fetch_add(up, Relaxed);
    stats.bytes_down.fetch_add(down, Relaxed);
    (conn.up, conn.down) = (up, down);
    if error.is_some() {
        conn.flags = "UC";
    }
    tracing::debug!(
        %peer, %orig, service = %backend.service, %endpoint,
        bytes_up = up, bytes_down = down,
        duration_ms = started.elapsed().as_millis() as u64,
        error = error.as_ref().map(|e| e.to_string()),
        "connection closed"
    );
}

/// Closes with a reset rather than a FIN: the application sees a refusal.
fn reset(client: &TcpStream) {
    let _ = socket2::SockRef::from(client).set_linger(Some(std::time::Duration::ZERO));
}

/// One opaque TCP connection's accounting: opened when its path is known,
/// closed (metrics, span, access log) when dropped.
struct TcpConn<'a> {
    tel: &'a Telemetry,
    backend: &'a Backend,
    peer: SocketAddr,
    start: Instant,
    start_wall: SystemTime,
    span: Option<Span>,
    series: Option<Arc<TcpSeries>>,
    path: TcpPath,
    endpoint: Option<SocketAddr>,
    flags: &'static str,
    up: u64,
    down: u64,
}

impl TcpConn<'_> {
    fn open(&mut self, path: TcpPath) {
        if self.series.is_some() {
            return;
        }
        self.path = path;
        let s = self.tel.metrics.tcp(TcpKey { dest: self.backend.dest.clone(), path, flags: self.flags });
        s.opened.fetch_add(1, Relaxed);
        self.series = Some(s);
    }
}

impl Drop for TcpConn<'_> {
    fn drop(&mut self) {
        if let Some(s) = &self.series {
            s.closed.fetch_add(1, Relaxed);
            s.received.fetch_add(self.up, Relaxed);
            s.sent.fetch_add(self.down, Relaxed);
        }
        let trace_id = self.span.as_ref().map(|s| format!("{:032x}", s.span_context().trace_id()));
        if let Some(mut span) = self.span.take() {
            span.set_attribute(KeyValue::new("sluice.path", self.path.name()));
            span.set_attribute(KeyValue::new("sluice.bytes_up", self.up as i64));
            span.set_attribute(KeyValue::new("sluice.bytes_down", self.down as i64));
            if let Some(e) = self.endpoint {
                span.set_attribute(KeyValue::new("network.peer.address", e.ip().to_string()));
                span.set_attribute(KeyValue::new("network.peer.port", i64::from(e.port())));
            }
            if self.flags != "-" {
                span.set_attribute(KeyValue::new("sluice.response_flags", self.flags));
            }
            span.end();
        }
        if let Some(log) = &self.tel.access_log {
            log.tcp(&TcpEntry {
                start_time: access_log::timestamp(self.start_wall),
                kind: "tcp",
                service: &self.backend.service,
                path: self.path.name(),
                response_flags: self.flags,
                bytes_received: self.up,
                bytes_sent: self.down,
                duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
                upstream_host: self.endpoint.map(|e| e.to_string()),
                downstream_peer: self.peer.to_string(),
                trace_id,
            });
        }
    }
}

/// A connection to a local endpoint, or a tunnel to one on another node.
enum Connected {
    Tcp(TcpStream),
    Tunnel(hyper::upgrade::Upgraded),
}

/// Tries the endpoints in round-robin order until one accepts.
async fn connect_any(
    backend: &Backend,
    orig: SocketAddr,
    source: Option<&Arc<str>>,
    stats: &ProxyStats,
    cfg: &ProxyConfig,
) -> Result<(Connected, SocketAddr), ProxyError> {
    if backend.endpoints.is_empty() {
        stats.no_endpoint.fetch_add(1, Relaxed);
        return Err(ProxyError::NoEndpoints { service: backend.service.clone(), orig });
    }
    let mut failures = Vec::new();
    for i in backend.balancer.order(backend.endpoints.len()) {
        let up = &backend.endpoints[i];
        let ep = up.addr;
        if let Some(remote) = &up.remote {
            let r = match (&cfg.mesh, source) {
                (Some(mesh), Some(src)) => {
                    mesh.tunnel(src, remote, &backend.service, backend.port, ep).await.map(Connected::Tunnel)
                }
                _ => Err(io::Error::other(format!(
                    "it runs on node {}, and this node is not in the config's nodes: (or has no --node-name)",
                    remote.node
                ))),
            };
            match r {
                Ok(c) => return Ok((c, ep)),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(ProxyError::Denied { detail: e.to_string() });
                }
                Err(e) => failures.push(format!("{ep} on node {}: {e}", remote.node)),
            }
            stats.upstream_connect_failed.fetch_add(1, Relaxed);
            continue;
        }
        match tokio::time::timeout(cfg.connect_timeout, connect(ep, cfg.own_mark)).await {
            Ok(Ok(s)) => return Ok((Connected::Tcp(s), ep)),
            Ok(Err(e)) => failures.push(format!("{ep}: {e}")),
            Err(_) => failures.push(format!("{ep}: no answer within {:?}", cfg.connect_timeout)),
        }
        stats.upstream_connect_failed.fetch_add(1, Relaxed);
    }
    Err(ProxyError::UpstreamUnavailable { service: backend.service.clone(), detail: failures.join("; ") })
}

/// Connects with the proxy's mark set before connect(), so connect4/6 see it.
pub(crate) async fn connect(addr: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if mark != 0 {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(addr).await
}

//! Opaque TCP forwarding: connect to an endpoint, then copy both ways until both
//! sides are done. A FIN from one side becomes a shutdown(SHUT_WR) towards the
//! other (half-close), and the other direction keeps flowing.

use std::{io, net::SocketAddr, sync::atomic::Ordering::Relaxed, time::Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::{ProxyConfig, ProxyError, ProxyStats, route::Backend};

pub(crate) async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    orig: SocketAddr,
    backend: &Backend,
    stats: &ProxyStats,
    cfg: &ProxyConfig,
) {
    let started = Instant::now();
    let (mut upstream, endpoint) = match connect_any(backend, orig, stats, cfg).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(%peer, %orig, error = %e, "connection refused");
            return;
        }
    };
    stats.forwarded.fetch_add(1, Relaxed);
    tracing::debug!(%peer, %orig, service = %backend.service, %endpoint, "forwarding");
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Some(s) = &cfg.splice {
        match crate::splice::run(&client, &upstream, s.0.as_ref()).await {
            Ok(x) => {
                stats.spliced.fetch_add(1, Relaxed);
                stats.spliced_bytes_up.fetch_add(x.kernel_up, Relaxed);
                stats.spliced_bytes_down.fetch_add(x.kernel_down, Relaxed);
                stats.spliced_user_bytes.fetch_add(x.user_up + x.user_down, Relaxed);
                tracing::info!(
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
                tracing::info!(%peer, %orig, service = %backend.service, %endpoint, error = %e, "spliced connection reset");
                return;
            }
            Err(e @ crate::splice::SpliceError::Setup(_)) => {
                stats.splice_fallbacks.fetch_add(1, Relaxed);
                tracing::warn!(%peer, %orig, error = %e, "forwarding in userspace instead");
            }
        }
    }
    stats.copied.fetch_add(1, Relaxed);
    let result = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    let (up, down, error) = match result {
        Ok((up, down)) => (up, down, None),
        Err(e) => (0, 0, Some(e)),
    };
    stats.bytes_up.fetch_add(up, Relaxed);
    stats.bytes_down.fetch_add(down, Relaxed);
    tracing::info!(
        %peer, %orig, service = %backend.service, %endpoint,
        bytes_up = up, bytes_down = down,
        duration_ms = started.elapsed().as_millis() as u64,
        error = error.as_ref().map(|e| e.to_string()),
        "connection closed"
    );
}

/// Tries the endpoints in round-robin order until one accepts.
async fn connect_any(
    backend: &Backend,
    orig: SocketAddr,
    stats: &ProxyStats,
    cfg: &ProxyConfig,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    if backend.endpoints.is_empty() {
        stats.no_endpoint.fetch_add(1, Relaxed);
        return Err(ProxyError::NoEndpoints { service: backend.service.clone(), orig });
    }
    let mut failures = Vec::new();
    for i in backend.balancer.order(backend.endpoints.len()) {
        let ep = backend.endpoints[i];
        match tokio::time::timeout(cfg.connect_timeout, connect(ep, cfg.own_mark)).await {
            Ok(Ok(s)) => return Ok((s, ep)),
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

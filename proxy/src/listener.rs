//! The proxy's listeners and accept loops.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{OriginalDst, ProxyError, ProxyStats, Routes, tcp};

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// IPv4 listener, e.g. 127.0.0.1:15001 (port 0: any free port).
    pub listen4: SocketAddr,
    /// IPv6 listener, e.g. [::1]:15001; `None` when the host has no IPv6 loopback.
    pub listen6: Option<SocketAddr>,
    /// SO_MARK for upstream sockets (0: none, e.g. without privileges).
    pub own_mark: u32,
    pub connect_timeout: Duration,
    /// How long shutdown waits for open connections before closing them.
    pub drain_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen4: SocketAddr::from(([127, 0, 0, 1], 15001)),
            listen6: Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 15001))),
            own_mark: 0,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// A bound proxy, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<TcpListener>,
    cfg: ProxyConfig,
    stats: Arc<ProxyStats>,
}

impl Proxy {
    /// Binds the listeners. With port 0 the IPv6 listener takes the IPv4 one's port
    /// when it is free, so both families share one proxy port.
    pub async fn bind(cfg: ProxyConfig) -> Result<Self, ProxyError> {
        let v4 = TcpListener::bind(cfg.listen4)
            .await
            .map_err(|source| ProxyError::Bind { addr: cfg.listen4, source })?;
        let mut listeners = vec![v4];
        if let Some(mut addr6) = cfg.listen6 {
            if addr6.port() == 0 {
                addr6.set_port(listeners[0].local_addr().map(|a| a.port()).unwrap_or(0));
            }
            let bound = match TcpListener::bind(addr6).await {
                Err(_) if cfg.listen6.is_some_and(|a| a.port() == 0) => {
                    TcpListener::bind(SocketAddr::new(addr6.ip(), 0)).await
                }
                r => r,
            };
            match bound {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    tracing::warn!(addr = %addr6, error = %e, "no IPv6 listener: connections to IPv6 service addresses will fail")
                }
            }
        }
        Ok(Self { listeners, cfg, stats: Arc::default() })
    }

    pub fn local_addr4(&self) -> SocketAddr {
        self.listeners[0].local_addr().unwrap_or(self.cfg.listen4)
    }

    pub fn local_addr6(&self) -> Option<SocketAddr> {
        self.listeners.get(1).and_then(|l| l.local_addr().ok())
    }

    pub fn stats(&self) -> Arc<ProxyStats> {
        Arc::clone(&self.stats)
    }

    /// Serves until `shutdown`, then waits up to the drain timeout for open
    /// connections to finish.
    pub async fn serve(self, routes: Routes, orig: Arc<dyn OriginalDst>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let conn_shutdown = CancellationToken::new();
        for listener in self.listeners {
            let ctx = Ctx {
                routes: routes.clone(),
                orig: Arc::clone(&orig),
                stats: Arc::clone(&self.stats),
                cfg: self.cfg.clone(),
            };
            tracker.spawn(accept_loop(
                listener,
                ctx,
                shutdown.clone(),
                tracker.clone(),
                conn_shutdown.clone(),
            ));
        }
        shutdown.cancelled().await;
        tracker.close();
        let active = self.stats.active.load(Relaxed);
        if active > 0 {
            tracing::info!(active, timeout = ?self.cfg.drain_timeout, "draining open connections");
        }
        if tokio::time::timeout(self.cfg.drain_timeout, tracker.wait()).await.is_err() {
            tracing::warn!(
                active = self.stats.active.load(Relaxed),
                "drain timeout: closing the remaining connections"
            );
            conn_shutdown.cancel();
            tracker.wait().await;
        }
    }
}

#[derive(Clone)]
struct Ctx {
    routes: Routes,
    orig: Arc<dyn OriginalDst>,
    stats: Arc<ProxyStats>,
    cfg: ProxyConfig,
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Ctx,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    kill: CancellationToken,
) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "proxy listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                ctx.stats.accepted.fetch_add(1, Relaxed);
                let ctx = ctx.clone();
                let kill = kill.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = kill.cancelled() => {}
                        _ = handle(stream, peer, ctx) => {}
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, ctx: Ctx) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let Some(orig) = ctx.orig.original_dst(peer, local) else {
        ctx.stats.no_orig_dst.fetch_add(1, Relaxed);
        tracing::warn!(error = %ProxyError::NoOriginalDst { peer, local }, "connection refused");
        return;
    };
    let table = ctx.routes.load();
    let Some(backend) = table.get(orig).cloned() else {
        ctx.stats.unknown_service.fetch_add(1, Relaxed);
        tracing::warn!(%peer, error = %ProxyError::UnknownService { orig }, "connection refused");
        return;
    };
    drop(table);
    ctx.stats.active.fetch_add(1, Relaxed);
    tcp::forward(stream, peer, orig, &backend, &ctx.stats, &ctx.cfg).await;
    ctx.stats.active.fetch_sub(1, Relaxed);
}

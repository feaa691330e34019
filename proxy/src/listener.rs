//! The proxy's workers: each is an OS thread with its own single-threaded
//! runtime and its own SO_REUSEPORT listeners on the proxy port (IPv4 and
//! IPv6). The kernel (`sk_reuseport`) picks the worker for every connection;
//! [`WorkerHooks`] tell the kernel side where the listeners are, how loaded each
//! worker is, and when one stops taking connections.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use sluice_mesh_config::{MeshConfig, Protocol as PortProtocol};

use crate::{
    HttpLimits, OriginalDst, ProxyError, ProxyStats, Routes,
    detect::{self, Detected},
    http::{self, upstream::Pools},
    tcp,
};

/// Tasks a worker polls before it asks the kernel for new socket events
/// (tokio's default: 61). A worker's tasks all wait on sockets; when more of
/// them run between two looks at the kernel, the node and its peers make
/// fewer syscalls per request. h2c through a node (`h2load -c8 -m16`,
/// alternating rounds of 5 s against the same build with 61; medians of 7):
/// 59 098 -> 71 757 req/s, p99 4.310 -> 3.588 ms, and in another run
/// 57 894 -> 65 939 req/s, p99 5.374 -> 4.482 ms. Per request (`perf stat`,
/// 2 runs each) the node made 0.215 syscalls, then 0.197-0.202; the whole
/// machine 0.668, then 0.641-0.647, and 0.083-0.087 context switches, then
/// 0.073-0.076. HTTP/1.1 (`wrk -c32`) moved within the noise either way.
/// A busy worker sees new events after at most this many polls; an idle one
/// sleeps in the kernel until one comes, as before.
const EVENT_INTERVAL: u32 = 256;

/// The runtime a worker runs on: one thread, I/O and timers, and
/// [`EVENT_INTERVAL`]. Public so a benchmark's reference forwarder can run
/// on the very same settings.
pub fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().event_interval(EVENT_INTERVAL).enable_all().build()
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// IPv4 listener, e.g. 127.0.0.1:15001 (port 0: any free port).
    pub listen4: SocketAddr,
    /// IPv6 listener, e.g. [::1]:15001; `None` when the host has no IPv6 loopback.
    pub listen6: Option<SocketAddr>,
    /// Worker threads, each with its own listeners (at least 1).
    pub workers: usize,
    /// SO_MARK for upstream sockets (0: none, e.g. without privileges).
    pub own_mark: u32,
    pub connect_timeout: Duration,
    /// How long shutdown waits for open connections before closing them.
    pub drain_timeout: Duration,
    /// How long protocol detection waits for the client's first bytes.
    pub detect_timeout: Duration,
    pub http: HttpLimits,
    /// In-kernel splicing for opaque TCP (sk_skb); `None`: copy in userspace.
    pub splice: Option<crate::Splicing>,
    /// Metrics, traces and access logs.
    pub telemetry: Arc<crate::Telemetry>,
    /// sk_msg acceleration: set (once, after its self-test) when on.
    pub local_pairs: LocalPairs,
    /// This node's name in the config's `nodes:`.
    pub node_name: Option<String>,
    /// Which workload (identity) a connection comes from.
    pub workloads: Option<Arc<crate::tls::Workloads>>,
    /// Endpoints on other nodes, over mutual TLS.
    pub mesh: Option<Arc<crate::mesh::MeshClient>>,
    /// Explicit mode (no kernel programs): every worker also listens on these
    /// service addresses itself; a connection's original destination is the
    /// address it arrived on.
    pub explicit: Vec<SocketAddr>,
}

/// The kernel's map of local pairs: the proxy adds its end of each accepted
/// connection before reading from it.
pub trait JoinLocalPair: Send + Sync + 'static {
    fn join(&self, fd: std::os::fd::BorrowedFd<'_>, local: SocketAddr, peer: SocketAddr) -> io::Result<()>;
}

/// Where the sk_msg path is, once it is on.
#[derive(Clone, Default)]
pub struct LocalPairs(pub Arc<std::sync::OnceLock<Arc<dyn JoinLocalPair>>>);

impl std::fmt::Debug for LocalPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "LocalPairs(on)" } else { "LocalPairs(off)" })
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen4: SocketAddr::from(([127, 0, 0, 1], 15001)),
            listen6: Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 15001))),
            workers: 1,
            own_mark: 0,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            detect_timeout: Duration::from_millis(100),
            http: HttpLimits::default(),
            splice: None,
            telemetry: Arc::default(),
            local_pairs: LocalPairs::default(),
            node_name: None,
            workloads: None,
            mesh: None,
            explicit: Vec::new(),
        }
    }
}

/// What the kernel side needs to hear from the workers.
pub trait WorkerHooks: Send + Sync + 'static {
    /// The worker's listeners are bound; it accepts once this returns.
    fn listening(
        &self,
        worker: usize,
        v4: &std::net::TcpListener,
        v6: Option<&std::net::TcpListener>,
    ) -> io::Result<()>;
    /// The worker's number of open connections changed.
    fn load_changed(&self, worker: usize, open: u32);
    /// The worker takes no new connections from now on.
    fn draining(&self, worker: usize);
    /// The worker has finished.
    fn stopped(&self, worker: usize);
}

/// For a proxy without kernel programs (tests, explicit mode).
#[derive(Debug, Default)]
pub struct NoHooks;

impl WorkerHooks for NoHooks {
    fn listening(
        &self,
        _: usize,
        _: &std::net::TcpListener,
        _: Option<&std::net::TcpListener>,
    ) -> io::Result<()> {
        Ok(())
    }
    fn load_changed(&self, _: usize, _: u32) {}
    fn draining(&self, _: usize) {}
    fn stopped(&self, _: usize) {}
}

#[derive(Debug)]
struct WorkerListeners {
    v4: std::net::TcpListener,
    v6: Option<std::net::TcpListener>,
    /// Explicit mode's service addresses.
    explicit: Vec<std::net::TcpListener>,
}

/// A bound proxy, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    workers: Vec<WorkerListeners>,
    cfg: ProxyConfig,
    stats: Arc<ProxyStats>,
}

impl Proxy {
    /// Binds every worker's listeners on one port per family. With port 0 the
    /// first listener picks the port and the others join it; IPv6 takes the
    /// IPv4 port when it is free.
    pub async fn bind(cfg: ProxyConfig) -> Result<Self, ProxyError> {
        let n = cfg.workers.max(1);
        let first4 = reuseport_listener(cfg.listen4)?;
        let port = first4.local_addr().map(|a| a.port()).unwrap_or(cfg.listen4.port());
        let mut v4 = vec![first4];
        for _ in 1..n {
            v4.push(reuseport_listener(SocketAddr::new(cfg.listen4.ip(), port))?);
        }
        let v6 = match cfg.listen6 {
            None => None,
            Some(addr6) => {
                let want = if addr6.port() == 0 { port } else { addr6.port() };
                let mut bound = bind_all(SocketAddr::new(addr6.ip(), want), n);
                if bound.is_err() && addr6.port() == 0 {
                    bound = bind_all(SocketAddr::new(addr6.ip(), 0), n);
                }
                match bound {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::warn!(addr = %addr6, error = %e, "no IPv6 listener: connections to IPv6 service addresses will fail");
                        None
                    }
                }
            }
        };
        let mut v6 = v6.map(Vec::into_iter);
        let mut workers: Vec<WorkerListeners> = v4
            .into_iter()
            .map(|v4| WorkerListeners { v4, v6: v6.as_mut().and_then(Iterator::next), explicit: Vec::new() })
            .collect();
        for addr in &cfg.explicit {
            for w in &mut workers {
                w.explicit.push(reuseport_listener(*addr)?);
            }
        }
        Ok(Self { workers, cfg, stats: Arc::default() })
    }

    pub fn local_addr4(&self) -> SocketAddr {
        self.workers[0].v4.local_addr().unwrap_or(self.cfg.listen4)
    }

    pub fn local_addr6(&self) -> Option<SocketAddr> {
        self.workers[0].v6.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn stats(&self) -> Arc<ProxyStats> {
        Arc::clone(&self.stats)
    }

    /// The routing table for `config`, sharing this proxy's counters and
    /// upstream connection pools.
    pub fn routes(&self, config: &MeshConfig) -> Routes {
        let pools = Arc::new(Pools::new(self.cfg.own_mark, self.cfg.connect_timeout, self.cfg.mesh.clone()));
        Routes::new(config, pools, Arc::clone(&self.stats), self.cfg.node_name.clone())
    }

    /// Runs the workers until `shutdown`; then each stops accepting (accepting
    /// what is already queued), and waits up to the drain timeout for its open
    /// connections before closing them. Dropping the returned future instead
    /// stops the workers at once.
    pub async fn serve(
        self,
        routes: Routes,
        orig: Arc<dyn OriginalDst>,
        hooks: Arc<dyn WorkerHooks>,
        shutdown: CancellationToken,
    ) {
        let abort = CancellationToken::new();
        let _abort_on_drop = abort.clone().drop_guard();
        let mut done = Vec::new();
        for (i, listeners) in self.workers.into_iter().enumerate() {
            let ctx = Ctx {
                routes: routes.clone(),
                orig: Arc::clone(&orig),
                stats: Arc::clone(&self.stats),
                cfg: self.cfg.clone(),
                graceful: shutdown.clone(),
            };
            let hooks = Arc::clone(&hooks);
            let stop = Stop { graceful: shutdown.clone(), abort: abort.clone() };
            // A channel, not JoinHandle::join: awaiting it holds no blocking thread,
            // so a runtime that shuts down never waits on it.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let spawned = std::thread::Builder::new().name(format!("sluice-worker-{i}")).spawn(move || {
                run_worker(i, listeners, ctx, hooks, stop);
                let _ = tx.send(());
            });
            match spawned {
                Ok(_) => done.push(rx),
                Err(e) => tracing::error!(worker = i, error = %e, "cannot start a worker thread"),
            }
        }
        for rx in done {
            let _ = rx.await;
        }
    }
}

fn bind_all(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    let first = reuseport_listener(addr)?;
    let port = first.local_addr().map(|a| a.port()).unwrap_or(addr.port());
    let mut v = vec![first];
    for _ in 1..n {
        v.push(reuseport_listener(SocketAddr::new(addr.ip(), port))?);
    }
    Ok(v)
}

/// A listener that shares its port with the node's other workers and with the
/// workers of a node that takes over from this one.
fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let bind = |addr: SocketAddr| -> io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    bind(addr).map_err(|source| ProxyError::Bind { addr, source })
}

/// Graceful: stop accepting, drain. Abort: close everything now.
#[derive(Clone)]
struct Stop {
    graceful: CancellationToken,
    abort: CancellationToken,
}

#[derive(Clone)]
struct Ctx {
    routes: Routes,
    orig: Arc<dyn OriginalDst>,
    stats: Arc<ProxyStats>,
    cfg: ProxyConfig,
    /// Tells HTTP connections to finish their requests and close.
    graceful: CancellationToken,
}

fn run_worker(i: usize, listeners: WorkerListeners, ctx: Ctx, hooks: Arc<dyn WorkerHooks>, stop: Stop) {
    let runtime = match worker_runtime() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(worker = i, error = %e, "cannot start a worker runtime");
            return;
        }
    };
    if let Err(e) = hooks.listening(i, &listeners.v4, listeners.v6.as_ref()) {
        tracing::error!(worker = i, error = %e, "cannot register the worker with the kernel; it serves anyway");
    }
    runtime.block_on(worker(i, listeners, ctx, Arc::clone(&hooks), stop));
    hooks.stopped(i);
}

async fn worker(i: usize, listeners: WorkerListeners, ctx: Ctx, hooks: Arc<dyn WorkerHooks>, stop: Stop) {
    let tracker = TaskTracker::new();
    let kill = stop.abort.child_token();
    let open = Arc::new(AtomicU32::new(0));
    let mut accepting = Vec::new();
    for l in std::iter::once(listeners.v4).chain(listeners.v6).chain(listeners.explicit) {
        match TcpListener::from_std(l) {
            Ok(l) => accepting.push(l),
            Err(e) => tracing::error!(worker = i, error = %e, "listener unusable"),
        }
    }
    let spawn_conn = |stream: TcpStream, peer: SocketAddr| {
        ctx.stats.accepted.fetch_add(1, Relaxed);
        hooks.load_changed(i, open.fetch_add(1, Relaxed) + 1);
        let (ctx, kill, open, hooks) = (ctx.clone(), kill.clone(), Arc::clone(&open), Arc::clone(&hooks));
        tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = handle(stream, peer, &ctx) => {}
                _ = crate::cancel::Cancelled::new(kill) => {}
            }
            hooks.load_changed(i, open.fetch_sub(1, Relaxed) - 1);
        });
    };
    tracing::debug!(worker = i, addrs = ?accepting.iter().filter_map(|l| l.local_addr().ok()).collect::<Vec<_>>(), "worker accepting");
    loop {
        let accepted = tokio::select! {
            _ = stop.graceful.cancelled() => break,
            _ = stop.abort.cancelled() => break,
            a = accept_any(&accepting) => a,
        };
        match accepted {
            Ok((stream, peer)) => spawn_conn(stream, peer),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(worker = i, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Stop: the kernel sends nothing new here; take what is already queued,
    // then close (a closing listener's half-open connections migrate to an
    // active worker).
    hooks.draining(i);
    for l in accepting {
        // Non-blocking std accept: WouldBlock exactly when the queue is empty.
        let Ok(l) = l.into_std() else { continue };
        while let Ok((s, peer)) = l.accept() {
            if let Ok(s) = s.set_nonblocking(true).and_then(|()| TcpStream::from_std(s)) {
                spawn_conn(s, peer);
            }
        }
    }
    tracker.close();
    let active = open.load(Relaxed);
    if active > 0 {
        tracing::info!(worker = i, active, timeout = ?ctx.cfg.drain_timeout, "draining open connections");
    }
    let drained = tokio::select! {
        r = tokio::time::timeout(ctx.cfg.drain_timeout, tracker.wait()) => r.is_ok(),
        _ = stop.abort.cancelled() => false,
    };
    if !drained {
        tracing::warn!(
            worker = i,
            active = open.load(Relaxed),
            "drain timeout: closing the remaining connections"
        );
        kill.cancel();
        tracker.wait().await;
    }
}

/// Accepts from whichever listener has a connection first.
async fn accept_any(listeners: &[TcpListener]) -> io::Result<(TcpStream, SocketAddr)> {
    match listeners {
        [a] => a.accept().await,
        [a, b] => tokio::select! {
            r = a.accept() => r,
            r = b.accept() => r,
        },
        [] => std::future::pending().await,
        many => futures_util::future::select_all(many.iter().map(|l| Box::pin(l.accept()))).await.0,
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, ctx: &Ctx) {
    let Ok(local) = stream.local_addr() else { return };
    let Some(dialed) = ctx.orig.original_dst(peer, local) else {
        ctx.stats.no_orig_dst.fetch_add(1, Relaxed);
        tracing::warn!(error = %ProxyError::NoOriginalDst { peer, local }, "connection refused");
        return;
    };
    if let Some(lp) = ctx.cfg.local_pairs.0.get()
        && peer.ip().is_loopback()
    {
        // Before anything is read or written: from here on the app's sends
        // may land straight in this socket.
        if let Err(e) = lp.join(std::os::fd::AsFd::as_fd(&stream), local, peer) {
            tracing::debug!(%peer, error = %e, "local pair stays on TCP");
        }
    }
    let orig = dialed.dst;
    let table = ctx.routes.load();
    let Some(backend) = table.get(orig).cloned() else {
        ctx.stats.unknown_service.fetch_add(1, Relaxed);
        tracing::warn!(%peer, error = %ProxyError::UnknownService { orig }, "connection refused");
        return;
    };
    drop(table);
    // Who is calling matters to authorization and to other nodes only.
    let source = ctx
        .cfg
        .workloads
        .as_ref()
        .filter(|_| !backend.authz.is_open() || ctx.cfg.mesh.is_some())
        .map(|w| w.workload(dialed.cgroup_id));
    ctx.stats.active.fetch_add(1, Relaxed);
    let http2 = match backend.protocol {
        PortProtocol::Tcp => None,
        PortProtocol::Http2 | PortProtocol::Grpc => Some(true),
        PortProtocol::Auto => {
            let d = detect::detect(&stream, ctx.cfg.detect_timeout).await;
            ctx.stats.count_detected(d);
            tracing::debug!(%peer, %orig, detected = d.name(), "protocol detection");
            d.is_http().then_some(d == Detected::Http2)
        }
        // Declared HTTP: only HTTP/1 or HTTP/2 to tell apart; wait as long as
        // a request head may take.
        PortProtocol::Http | PortProtocol::Http1 => {
            let d = detect::detect(&stream, ctx.cfg.http.header_read_timeout).await;
            Some(d == Detected::Http2)
        }
    };
    match (http2, &backend.http) {
        (Some(h2), Some(_)) => {
            ctx.stats.http_connections.fetch_add(1, Relaxed);
            let hctx = http::ConnCtx {
                routes: ctx.routes.clone(),
                stats: Arc::clone(&ctx.stats),
                limits: ctx.cfg.http.clone(),
                telemetry: Arc::clone(&ctx.cfg.telemetry),
                mesh: ctx.cfg.mesh.is_some(),
            };
            http::serve(stream, h2, peer, orig, source, hctx, ctx.graceful.clone()).await;
        }
        _ => tcp::forward(stream, peer, orig, source, &backend, &ctx.stats, &ctx.cfg).await,
    }
    ctx.stats.active.fetch_sub(1, Relaxed);
}

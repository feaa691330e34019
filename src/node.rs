//! `sluice node`: redirector + proxy + config watch, until SIGINT or SIGTERM.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sluice_mesh_config::watch::{Change, Watcher};
use sluice_proxy::{OriginalDst, Proxy, ProxyConfig, ProxyStats, Routes};
use sluice_redirector::{OrigDstTable, Redirector, RedirectorConfig, Stats};
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{Failure, cli::NodeArgs, exit};

/// The proxy's view of the redirector's original-destination map.
struct KernelOrigDst(Arc<OrigDstTable>);

impl OriginalDst for KernelOrigDst {
    fn original_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
        self.0.take(peer, local).map(|o| o.addr)
    }
}

pub(crate) fn run(args: NodeArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::new(exit::FAILED, format!("starting the runtime: {e}")))?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: NodeArgs) -> Result<(), Failure> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Failure::new(exit::FAILED, e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Failure::new(exit::FAILED, e))?;
    let mut node = NodeHandle::start(&args).await?;
    println!(
        "sluice node ready: proxy {} and {}, cgroup {}",
        node.proxy4,
        node.proxy6,
        node.redirector.cgroup().display()
    );
    let mut tick = tokio::time::interval(Duration::from_millis(args.watch_interval_ms.max(10)));
    loop {
        tokio::select! {
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tick.tick() => { node.poll_config(); }
        }
    }
    node.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// A running node: kernel redirection, the proxy, and the config in force.
pub(crate) struct NodeHandle {
    pub redirector: Redirector,
    pub routes: Routes,
    pub proxy_stats: Arc<ProxyStats>,
    pub proxy4: SocketAddr,
    pub proxy6: SocketAddr,
    watcher: Watcher,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
}

impl NodeHandle {
    /// Validates the config, binds the proxy, attaches the kernel programs.
    /// Nothing touches the kernel before the config is known to be good.
    pub async fn start(args: &NodeArgs) -> Result<Self, Failure> {
        let config_bytes = std::fs::read(&args.config).ok();
        let config = sluice_mesh_config::load(&args.config)?;
        let own_mark = sluice_redirector::DEFAULT_OWN_MARK;
        let proxy = Proxy::bind(ProxyConfig {
            listen4: ([127, 0, 0, 1], args.proxy_port).into(),
            listen6: Some((std::net::Ipv6Addr::LOCALHOST, args.proxy_port).into()),
            own_mark,
            drain_timeout: Duration::from_millis(args.drain_ms),
            ..ProxyConfig::default()
        })
        .await
        .map_err(|e| Failure::new(exit::FAILED, e))?;
        let proxy4 = proxy.local_addr4();
        let proxy6 = proxy.local_addr6().unwrap_or((std::net::Ipv6Addr::LOCALHOST, proxy4.port()).into());

        let mut rcfg = RedirectorConfig::new(&args.instance, &args.cgroup, proxy4, proxy6);
        rcfg.own_mark = own_mark;
        let routes = Routes::new(&config);
        let mut redirector = Redirector::start(&rcfg)?;
        let report = redirector.services().sync(&config)?;
        tracing::info!(services = config.services.len(), addresses = report.added, "config applied");

        let shutdown = CancellationToken::new();
        let orig: Arc<dyn OriginalDst> = Arc::new(KernelOrigDst(redirector.orig_dst()));
        let proxy_stats = proxy.stats();
        let serving = tokio::spawn(proxy.serve(routes.clone(), orig, shutdown.clone()));
        Ok(Self {
            redirector,
            routes,
            proxy_stats,
            proxy4,
            proxy6,
            watcher: Watcher::new(&args.config, config_bytes),
            shutdown,
            serving,
        })
    }

    /// Applies a changed config file; a bad one is refused and the last good
    /// config stays in force. Returns whether something changed.
    pub fn poll_config(&mut self) -> Option<Result<(), String>> {
        match self.watcher.poll()? {
            Change::Valid(new) => {
                // Routes first: an address the map starts redirecting must already be routable.
                self.routes.apply(&new);
                match self.redirector.services().sync(&new) {
                    Ok(r) => {
                        tracing::info!(
                            services = new.services.len(),
                            added = r.added,
                            removed = r.removed,
                            updated = r.updated,
                            "config reloaded"
                        );
                        Some(Ok(()))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "config reloaded in the proxy, but the kernel map update failed");
                        Some(Err(e.to_string()))
                    }
                }
            }
            Change::Invalid(e) => {
                tracing::error!(error = %e, "config change refused; the last good config stays in force");
                Some(Err(e.to_string()))
            }
        }
    }

    pub fn kernel_stats(&self) -> &Stats {
        self.redirector.stats()
    }

    /// Detaches first, so no new connection is sent to a proxy that is going
    /// away, then drains the proxy.
    pub async fn stop(self) {
        drop(self.redirector);
        self.shutdown.cancel();
        let _ = self.serving.await;
    }
}

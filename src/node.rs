//! `sluice node`: redirector + proxy + config watch, until SIGINT or SIGTERM.

use std::{sync::Arc, time::Duration};

use sluice_mesh_config::watch::{Change, Watcher};
use sluice_proxy::{OriginalDst, Proxy, ProxyConfig, Routes};
use sluice_redirector::{OrigDstTable, Redirector, RedirectorConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{Failure, cli::NodeArgs, exit};

/// The proxy's view of the redirector's original-destination map.
struct KernelOrigDst(Arc<OrigDstTable>);

impl OriginalDst for KernelOrigDst {
    fn original_dst(
        &self,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
    ) -> Option<std::net::SocketAddr> {
        self.0.take(peer, local).map(|o| o.addr)
    }
}

pub(crate) fn run(args: NodeArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::new(exit::FAILED, format!("starting the runtime: {e}")))?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: NodeArgs) -> Result<(), Failure> {
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
    let serving = tokio::spawn(proxy.serve(routes.clone(), orig, shutdown.clone()));
    println!("sluice node ready: proxy {proxy4} and {proxy6}, cgroup {}", redirector.cgroup().display());

    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Failure::new(exit::FAILED, e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Failure::new(exit::FAILED, e))?;
    let mut watcher = Watcher::new(&args.config, config_bytes);
    let mut tick = tokio::time::interval(Duration::from_millis(args.watch_interval_ms.max(10)));
    loop {
        tokio::select! {
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tick.tick() => match watcher.poll() {
                None => {}
                Some(Change::Valid(new)) => {
                    // Routes first: an address the map starts redirecting must already be routable.
                    routes.apply(&new);
                    match redirector.services().sync(&new) {
                        Ok(r) => tracing::info!(services = new.services.len(), added = r.added, removed = r.removed, updated = r.updated, "config reloaded"),
                        Err(e) => tracing::error!(error = %e, "config reloaded in the proxy, but the kernel map update failed"),
                    }
                }
                Some(Change::Invalid(e)) => {
                    tracing::error!(error = %e, "config change refused; the last good config stays in force");
                }
            }
        }
    }
    // Detach first, so no new connection is sent to a proxy that is going away.
    drop(redirector);
    shutdown.cancel();
    let _ = serving.await;
    tracing::info!("stopped");
    Ok(())
}

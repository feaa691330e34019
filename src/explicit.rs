//! `sluice node --explicit`: the proxy without kernel programs, and so
//! without root. It listens on every service address of the config itself
//! (any 127.x address is local on Linux; others must be on one of this
//! host's interfaces) and takes the address a connection arrived on as the
//! one it dialed. L7 routing, retries, load balancing, outlier detection,
//! authorization by request (not by identity), traces, metrics and access
//! logs work as on a full node. What needs the kernel or root does not:
//! transparent redirection, zero-hop (those ports go through the proxy),
//! splicing, identities and mutual TLS between nodes, the L3/L4 policy.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sluice_mesh_config::{
    MeshConfig,
    watch::{Change, Watcher},
};
use sluice_proxy::{ArrivedOn, NoHooks, Proxy, ProxyConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::{Failure, cli::NodeArgs, exit};

/// What explicit mode cannot do, as an error that says what to change.
fn refuse(config: &MeshConfig) -> Result<(), Failure> {
    let no = |what: &str, fix: &str| {
        Err(Failure::new(
            exit::BAD_INPUT,
            format!("explicit mode (no kernel programs, no root) cannot {what}: {fix}"),
        ))
    };
    if !config.nodes.is_empty() {
        return no(
            "carry traffic between nodes (mutual TLS needs workload identities from the kernel)",
            "remove `nodes:` or run `sluice node` as root",
        );
    }
    if config.policy.is_some() {
        return no(
            "attach the L3/L4 policy (XDP and tc need root)",
            "remove `policy:` or run `sluice node` as root",
        );
    }
    Ok(())
}

pub(crate) async fn run(args: NodeArgs) -> Result<(), Failure> {
    let sig = |k| signal(k).map_err(|e| Failure::new(exit::FAILED, e));
    let (mut sigint, mut sigterm) = (sig(SignalKind::interrupt())?, sig(SignalKind::terminate())?);
    let config = sluice_mesh_config::load(&args.config)?;
    refuse(&config)?;
    let config_bytes = std::fs::read(&args.config).ok();
    let addrs: Vec<SocketAddr> = config.service_addrs().into_keys().collect();
    let zero_hop = config.services.iter().flat_map(|s| &s.ports).filter(|p| p.zero_hop).count();
    if zero_hop > 0 {
        tracing::warn!(
            ports = zero_hop,
            "explicit mode: zero-hop ports go through the proxy (zero-hop needs the kernel)"
        );
    }
    let (telemetry, export) = crate::node::telemetry(&config, args.node_name.as_deref())?;
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let proxy = Proxy::bind(ProxyConfig {
        listen4: ([127, 0, 0, 1], args.proxy_port).into(),
        listen6: None,
        workers,
        drain_timeout: Duration::from_millis(args.drain_ms),
        detect_timeout: Duration::from_millis(args.detect_timeout_ms.max(1)),
        http: crate::node::http_limits(&args),
        telemetry: Arc::clone(&telemetry),
        node_name: args.node_name.clone(),
        explicit: addrs.clone(),
        ..ProxyConfig::default()
    })
    .await
    .map_err(|e| {
        let hint = if e.to_string().contains("ermission denied") {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: give the services ports of 1024 and up)"
        } else if e.to_string().contains("ddress not available") {
            " (a service address must be local: use 127.x addresses, or one of this host's)"
        } else {
            ""
        };
        Failure::new(exit::FAILED, format!("{e}{hint}"))
    })?;
    let routes = proxy.routes(&config);
    let stats = proxy.stats();
    let shutdown = CancellationToken::new();
    let serving =
        tokio::spawn(proxy.serve(routes.clone(), Arc::new(ArrivedOn), Arc::new(NoHooks), shutdown.clone()));

    let admin = crate::admin::Admin::new();
    let off = |name| crate::fastpath::PathState::off(name, "explicit mode: no kernel programs");
    *admin.render.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::metrics::renderer(
        // No pins: the kernel's counters are absent from /metrics.
        std::path::PathBuf::new(),
        Arc::clone(&stats),
        Arc::default(),
        Arc::new([off("splice"), off("sk_msg"), off("zero_hop")]),
        Arc::clone(&telemetry),
        routes.clone(),
        Arc::clone(&admin.config),
        crate::metrics::MeshMetrics { stats: Arc::default(), certs: None },
    ));
    admin.set_config(&config, export.as_ref());
    let admin_addr = admin.clone().serve(args.admin_port, shutdown.clone()).await.map_err(|e| {
        Failure::new(exit::FAILED, format!("admin listener on 127.0.0.1:{}: {e}", args.admin_port))
    })?;
    admin.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    println!(
        "sluice node ready (explicit mode, no kernel programs): listening on {}, {workers} workers, admin {admin_addr}",
        shown.join(", ")
    );

    let mut watcher = Watcher::new(&args.config, config_bytes);
    let mut tick = tokio::time::interval(Duration::from_millis(args.watch_interval_ms.max(10)));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => match watcher.poll() {
                Some(Change::Valid(new)) => match refuse(&new) {
                    Err(e) => tracing::error!(error = %e.message, "config change refused; the last good config stays in force"),
                    Ok(()) => {
                        let now: Vec<SocketAddr> = new.service_addrs().into_keys().collect();
                        if now != addrs {
                            tracing::warn!("explicit mode: service addresses changed; the listeners stay as they were until a restart");
                        }
                        routes.apply(&new);
                        crate::node::apply_telemetry(&telemetry, &admin, &new);
                        admin.set_config(&new, export.as_ref());
                        tracing::info!(services = new.services.len(), "config reloaded");
                    }
                },
                Some(Change::Invalid(e)) => tracing::error!(error = %e, "config change refused; the last good config stays in force"),
                None => {}
            },
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = serving.await;
    crate::node::finish_telemetry(&telemetry, export).await;
    Ok(())
}

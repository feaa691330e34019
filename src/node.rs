//! `sluice node`: redirector + proxy workers + config watch + heartbeat, until
//! SIGINT/SIGTERM (stop: detach, drain, unpin) or SIGUSR2 (replaced by a node
//! that took over: drain, leave the kernel state to it).

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_mesh_config::{
    MeshConfig, Policy, PolicyAction,
    watch::{Change, Watcher},
};
use sluice_proxy::{
    Dialed, HttpLimits, OriginalDst, Proxy, ProxyConfig, ProxyStats, Routes, Telemetry, WorkerHooks,
    telemetry::access_log::{AccessLog, LogFormat, LogTarget},
};
use sluice_redirector::{
    FailMode, LbMode, Liveness, OrigDstTable, Predecessor, Redirector, RedirectorConfig, Stats, Workers,
    policy::PolicyEnforcer,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Failure,
    cli::{FailModeArg, NodeArgs, WorkerBalance},
    exit,
};

/// How often the node tells the kernel it is alive.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// The proxy's view of the redirector's original-destination map.
struct KernelOrigDst(Arc<OrigDstTable>);

impl OriginalDst for KernelOrigDst {
    fn original_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<Dialed> {
        self.0.take(peer, local).map(|o| Dialed { dst: o.addr, cgroup_id: o.cgroup_id })
    }
}

/// Worker events, mapped onto this node's kernel slots.
struct KernelWorkers {
    workers: Arc<Workers>,
    slots: Vec<u32>,
    registered: AtomicUsize,
}

impl WorkerHooks for KernelWorkers {
    fn listening(
        &self,
        worker: usize,
        v4: &std::net::TcpListener,
        v6: Option<&std::net::TcpListener>,
    ) -> io::Result<()> {
        self.workers.register(self.slots[worker], v4, v6).map_err(io::Error::other)?;
        self.registered.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn load_changed(&self, worker: usize, open: u32) {
        let _ = self.workers.set_load(self.slots[worker], open);
    }

    fn draining(&self, worker: usize) {
        if let Err(e) = self.workers.drain(self.slots[worker]) {
            tracing::warn!(worker, error = %e, "marking the worker draining");
        }
    }

    fn stopped(&self, worker: usize) {
        let _ = self.workers.release(self.slots[worker]);
    }
}

pub(crate) fn run(args: NodeArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::FAILED, format!("starting the runtime: {e}")))?;
    if args.explicit {
        return runtime.block_on(crate::explicit::run(args));
    }
    runtime.block_on(run_async(args))
}

async fn run_async(args: NodeArgs) -> Result<(), Failure> {
    let sig = |k| signal(k).map_err(|e| Failure::new(exit::FAILED, e));
    let (mut sigint, mut sigterm, mut sigusr2) =
        (sig(SignalKind::interrupt())?, sig(SignalKind::terminate())?, sig(SignalKind::user_defined2())?);
    let mut sighup = sig(SignalKind::hangup())?;
    let mut node = NodeHandle::start(&args).await?;
    println!(
        "sluice node ready: proxy {} and {}, cgroup {}, {} workers, admin {}",
        node.proxy4,
        node.proxy6,
        node.redirector.cgroup().display(),
        node.workers,
        node.admin_addr
    );
    let mut tick = tokio::time::interval(Duration::from_millis(args.watch_interval_ms.max(10)));
    let replaced = loop {
        tokio::select! {
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break false; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break false; }
            _ = sigusr2.recv() => { tracing::info!("SIGUSR2: replaced by a new node; draining"); break true; }
            _ = sighup.recv() => { node.reopen_logs(); }
            _ = tick.tick() => { node.tick(); }
        }
    };
    if replaced {
        node.hand_over().await
    } else {
        node.stop().await
    }
    tracing::info!("stopped");
    Ok(())
}

/// A running node: kernel redirection, the proxy workers, and the config in force.
pub(crate) struct NodeHandle {
    pub redirector: Redirector,
    pub routes: Routes,
    pub proxy_stats: Arc<ProxyStats>,
    pub proxy4: SocketAddr,
    pub proxy6: SocketAddr,
    pub workers: usize,
    watcher: Watcher,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    holds_lock: bool,
    policy: Option<PolicyEnforcer>,
    allow_uplink: bool,
    instance: String,
    pub admin_addr: SocketAddr,
    drop_events: Arc<std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>>,
    admin: crate::admin::Admin,
    /// Whether zero-hop passed its self-test (else its ports go through the proxy).
    zero_hop_on: bool,
    /// Identities, and mutual TLS with the other nodes.
    mesh: Mesh,
    /// The sk_msg path when on (its endpoint set follows the config).
    msg_pairs: Option<Arc<sluice_redirector::LocalPairs>>,
    telemetry: Arc<Telemetry>,
    export: Option<crate::otel::TraceExport>,
    /// However the handle goes away, the workers are told to stop.
    _stop_workers: tokio_util::sync::DropGuard,
}

impl NodeHandle {
    /// Validates the config, binds the proxy, attaches (or takes over) the kernel
    /// programs. Nothing touches the kernel before the config is known to be good.
    pub async fn start(args: &NodeArgs) -> Result<Self, Failure> {
        let cgroup = args.cgroup.as_deref().ok_or_else(|| {
            Failure::new(exit::BAD_INPUT, "--cgroup is required: the cgroup whose processes are in the mesh (or --explicit, without kernel programs)")
        })?;
        let config_bytes = std::fs::read(&args.config).ok();
        let config = sluice_mesh_config::load(&args.config)?;
        let predecessor = if args.takeover { Predecessor::find(&args.instance) } else { None };
        if args.takeover && predecessor.is_none() {
            tracing::info!(instance = %args.instance, "--takeover: no running node to replace; starting afresh");
        }
        let port = predecessor.as_ref().map_or(args.proxy_port, |p| p.proxy_port);
        let own_mark = sluice_redirector::DEFAULT_OWN_MARK;
        let workers =
            args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let (telemetry, export) = telemetry(&config, args.node_name.as_deref())?;
        if args.splice != crate::cli::FastPath::Off && args.sk_msg != crate::cli::FastPath::Off {
            return Err(Failure::new(
                exit::BAD_INPUT,
                "--splice and --sk-msg cannot both be on: a socket whose sends go through sk_msg is not seen by the sk_skb splice; pick one",
            ));
        }
        let mut mesh = Mesh::start(args, &config, own_mark).await?;
        let (splice, splice_state) = crate::fastpath::splice(args.splice).await;
        let local_pairs = sluice_proxy::LocalPairs::default();
        let proxy = Proxy::bind(ProxyConfig {
            listen4: ([127, 0, 0, 1], port).into(),
            listen6: Some((std::net::Ipv6Addr::LOCALHOST, port).into()),
            workers,
            own_mark,
            drain_timeout: Duration::from_millis(args.drain_ms),
            detect_timeout: Duration::from_millis(args.detect_timeout_ms.max(1)),
            http: http_limits(args),
            splice,
            telemetry: Arc::clone(&telemetry),
            local_pairs: local_pairs.clone(),
            node_name: mesh.node.clone(),
            workloads: Some(Arc::clone(&mesh.workloads)),
            mesh: mesh.client.clone(),
            ..ProxyConfig::default()
        })
        .await
        .map_err(|e| Failure::new(exit::FAILED, e))?;
        let proxy4 = proxy.local_addr4();
        let proxy6 = proxy.local_addr6().unwrap_or((std::net::Ipv6Addr::LOCALHOST, proxy4.port()).into());

        let mut rcfg = RedirectorConfig::new(&args.instance, cgroup, proxy4, proxy6);
        rcfg.own_mark = own_mark;
        rcfg.fail_mode = match args.fail_mode {
            FailModeArg::Open => FailMode::Open,
            FailModeArg::Closed => FailMode::Closed,
        };
        rcfg.liveness_timeout =
            Duration::from_millis(args.liveness_timeout_ms.max(HEARTBEAT.as_millis() as u64 * 2));
        rcfg.lb_mode = match args.worker_balance {
            WorkerBalance::Hash => LbMode::Hash,
            WorkerBalance::LeastLoaded => LbMode::LeastLoaded,
        };
        let routes = proxy.routes(&config);
        let mut redirector = match &predecessor {
            Some(p) => Redirector::take_over(&rcfg, p)?,
            None => Redirector::start(&rcfg)?,
        };
        let heartbeat = tokio::spawn(heartbeat(redirector.liveness()));
        let policy = match &config.policy {
            None => None,
            Some(p) => Some(start_policy(&redirector, p, args.policy_allow_uplink)?),
        };
        write_policy_state(&args.instance, policy.as_ref());
        // Zero-hop ports start on the proxy path; the self-test then turns them on.
        let local = crate::fastpath::local_view(&config, mesh.node.as_deref());
        redirector.services().set_zero_hop_authz(zero_hop_verdicts(&local, &mesh.workloads).as_ref())?;
        let report = redirector.services().sync(&crate::fastpath::effective(&local, false))?;
        let zero_hop_state = crate::fastpath::zero_hop(args.zero_hop, &mut redirector, &local).await;
        let zero_hop_on = zero_hop_state.enabled;
        let msg_state =
            crate::fastpath::sk_msg(args.sk_msg, redirector.pin_dir(), proxy4.port(), &local_pairs, &config)
                .await;
        let msg_pairs = msg_state.local_pairs.clone().filter(|_| msg_state.enabled);
        let fast_paths: crate::fastpath::States = Arc::new([splice_state, msg_state, zero_hop_state]);
        tracing::info!(services = config.services.len(), addresses = report.added, "config applied");

        let hooks = Arc::new(KernelWorkers {
            slots: redirector.workers().claim(workers)?,
            workers: redirector.workers(),
            registered: AtomicUsize::new(0),
        });
        let shutdown = CancellationToken::new();
        let orig: Arc<dyn OriginalDst> = Arc::new(KernelOrigDst(redirector.orig_dst()));
        let proxy_stats = proxy.stats();
        let serving = tokio::spawn(proxy.serve(routes.clone(), orig, hooks.clone(), shutdown.clone()));
        if let (Some(server), Some(listener)) = (mesh.server(&routes, own_mark), mesh.listener.take()) {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|e| Failure::new(exit::FAILED, e))?;
            let store = server.tls.as_ref().map(|t| Arc::clone(&t.store));
            tokio::spawn(server.serve(listener, shutdown.clone()));
            // Certificates renew at half their life even when no handshake asks.
            let stop = shutdown.clone();
            if let Some(store) = store {
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(store.renew_interval());
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = every.tick() => store.renew_due(),
                        }
                    }
                });
            }
        }
        // Every worker must be in the socket arrays before the old node stops taking connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while hooks.registered.load(Ordering::SeqCst) < workers {
            if Instant::now() > deadline {
                return Err(Failure::new(
                    exit::FAILED,
                    "the proxy workers did not register with the kernel in 10 s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let drop_events = Arc::default();
        let admin = crate::admin::Admin::new();
        *admin.render.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::metrics::renderer(
            redirector.pin_dir().to_path_buf(),
            proxy_stats.clone(),
            Arc::clone(&drop_events),
            Arc::clone(&fast_paths),
            Arc::clone(&telemetry),
            routes.clone(),
            Arc::clone(&admin.config),
            mesh.metrics(),
        ));
        admin.set_config(&config, export.as_ref());
        let admin_addr = admin.clone().serve(args.admin_port, shutdown.clone()).await.map_err(|e| {
            Failure::new(exit::FAILED, format!("admin listener on 127.0.0.1:{}: {e}", args.admin_port))
        })?;
        let _ = std::fs::write(admin_state_path(&args.instance), admin_addr.to_string());
        admin.ready.store(true, Ordering::SeqCst);
        if let Some(p) = &predecessor {
            p.signal_replaced()?;
            tracing::info!(predecessor = p.pid, "told the running node to drain and exit");
        }
        Ok(Self {
            mesh,
            zero_hop_on,
            msg_pairs,
            admin,
            telemetry,
            export,
            policy,
            allow_uplink: args.policy_allow_uplink,
            instance: args.instance.clone(),
            admin_addr,
            drop_events,
            holds_lock: predecessor.is_none(),
            redirector,
            routes,
            proxy_stats,
            proxy4,
            proxy6,
            workers,
            watcher: Watcher::new(&args.config, config_bytes),
            _stop_workers: shutdown.clone().drop_guard(),
            shutdown,
            serving,
            heartbeat,
        })
    }

    /// Periodic work: config changes, and the lock after a takeover.
    pub fn tick(&mut self) {
        if !self.holds_lock && self.redirector.try_lock(self.proxy4.port()) {
            self.holds_lock = true;
            tracing::info!("the replaced node has exited; this node owns the instance now");
        }
        self.poll_config();
        self.log_policy_drops();
        // Workload cgroups created after the config was read: their zero-hop
        // verdicts are the kernel's, so it must learn them (the proxy path
        // rescans on a miss by itself).
        if self.mesh.workloads.rescan_if_due(Duration::from_secs(1)) {
            let config = self.admin.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(config) = config {
                let local = crate::fastpath::local_view(&config, self.mesh.node.as_deref());
                self.set_zero_hop_authz(&local);
            }
        }
    }

    /// The kernel's zero-hop verdicts for `local` (this node's view of the config).
    fn set_zero_hop_authz(&mut self, local: &MeshConfig) {
        let verdicts = zero_hop_verdicts(local, &self.mesh.workloads);
        if let Err(e) = self.redirector.services().set_zero_hop_authz(verdicts.as_ref()) {
            tracing::error!(error = %e, "zero-hop authorization verdicts not updated in the kernel");
        }
    }

    /// Drop events from the kernel (already sampled there) into the log.
    fn log_policy_drops(&self) {
        let Some(p) = &self.policy else { return };
        for e in p.drain_events() {
            let dir = if e.dir == 0 { "ingress" } else { "egress" };
            *self
                .drop_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((dir, e.reason_name()))
                .or_default() += 1;
            let src = sluice_bpf::abi::ip_from_be(e.src_be);
            let dst = sluice_bpf::abi::ip_from_be(e.dst_be);
            tracing::warn!(
                direction = dir,
                reason = e.reason_name(),
                rule = e.rule,
                proto = e.proto,
                %src,
                sport = e.sport,
                %dst,
                dport = e.dport,
                "policy drop"
            );
        }
    }

    /// Applies the policy part of a config; on error nothing changes.
    fn apply_policy(&mut self, config: &MeshConfig) -> Result<(), String> {
        let r = self.apply_policy_inner(config);
        write_policy_state(&self.instance, self.policy.as_ref());
        r
    }

    fn apply_policy_inner(&mut self, config: &MeshConfig) -> Result<(), String> {
        match (&config.policy, &mut self.policy) {
            (None, None) => Ok(()),
            (None, Some(p)) => p.apply(&Policy::none()).map_err(|e| e.to_string()),
            (Some(new), Some(p)) => p.apply(new).map_err(|e| e.to_string()),
            (Some(new), None) => {
                self.policy =
                    Some(start_policy(&self.redirector, new, self.allow_uplink).map_err(|e| e.message)?);
                Ok(())
            }
        }
    }

    /// Applies a changed config file; a bad one is refused and the last good
    /// config stays in force. Returns whether something changed.
    pub fn poll_config(&mut self) -> Option<Result<(), String>> {
        match self.watcher.poll()? {
            Change::Valid(new) => {
                // The policy first: it is the part that can still be refused (a
                // missing interface), and then nothing of the change applies.
                if let Err(e) = self.apply_policy(&new) {
                    tracing::error!(error = %e, "config change refused; the last good config stays in force");
                    return Some(Err(e));
                }
                // Routes next: an address the map starts redirecting must already be routable.
                self.routes.apply(&new);
                self.mesh.workloads.apply(&new, self.mesh.node.as_deref());
                apply_telemetry(&self.telemetry, &self.admin, &new);
                if let Some(lp) = &self.msg_pairs
                    && let Err(e) = lp.set_local_endpoints(&new)
                {
                    tracing::warn!(error = %e, "sk_msg: the local endpoint set was not updated");
                }
                self.admin.set_config(&new, self.export.as_ref());
                let local = crate::fastpath::local_view(&new, self.mesh.node.as_deref());
                self.set_zero_hop_authz(&local);
                match self.redirector.services().sync(&crate::fastpath::effective(&local, self.zero_hop_on)) {
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

    /// SIGHUP: the access log file is opened again (for logrotate).
    pub fn reopen_logs(&self) {
        let Some(log) = &self.telemetry.access_log else {
            tracing::info!("SIGHUP: no access log file to reopen");
            return;
        };
        match log.reopen(Duration::from_secs(5)) {
            Ok(()) => tracing::info!(target = ?log.target(), "SIGHUP: access log reopened"),
            Err(e) => {
                tracing::error!(target = ?log.target(), error = %e, "SIGHUP: cannot reopen the access log; lines are lost until it can be written again")
            }
        }
    }

    pub fn kernel_stats(&self) -> &Stats {
        self.redirector.stats()
    }

    /// Detaches first, so no new connection is sent to a proxy that is going
    /// away, then drains the proxy.
    pub async fn stop(self) {
        self.heartbeat.abort();
        drop(self.policy);
        write_policy_state(&self.instance, None);
        let _ = std::fs::remove_file(admin_state_path(&self.instance));
        drop(self.redirector);
        self.shutdown.cancel();
        let _ = self.serving.await;
        finish_telemetry(&self.telemetry, self.export).await;
    }

    /// Replaced: the workers stop taking connections (their queued ones move to
    /// the new node's workers), finish what they have, and the kernel programs,
    /// maps and pins stay for the new node.
    pub async fn hand_over(self) {
        self.shutdown.cancel();
        let _ = self.serving.await;
        self.heartbeat.abort();
        if let Some(p) = self.policy {
            p.hand_over();
        }
        self.redirector.hand_over();
        finish_telemetry(&self.telemetry, self.export).await;
    }
}

/// The sampling ratio changes at once; the exporter and the access log
/// are set up at start, so a change there needs a restart (said in the log).
/// Call before the admin's config is replaced by `new`.
pub(crate) fn apply_telemetry(telemetry: &Telemetry, admin: &crate::admin::Admin, new: &MeshConfig) {
    let old = admin.config.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|c| c.telemetry.clone());
    if let (Some(t), Some(r)) =
        (&telemetry.tracing, new.telemetry.tracing.as_ref().and_then(|c| c.sampling()))
    {
        t.set_ratio(r);
    }
    let Some(old) = old else { return };
    let strip = |t: &sluice_mesh_config::Telemetry| {
        let mut t = t.clone();
        if let Some(x) = t.tracing.as_mut() {
            x.sampling_ppm = None;
        }
        t
    };
    if strip(&old) != strip(&new.telemetry) {
        tracing::warn!(
            "telemetry settings other than tracing.sampling changed: restart the node (sluice node --takeover) to apply them"
        );
    }
}

/// The HTTP limits from the command line.
pub(crate) fn http_limits(args: &NodeArgs) -> HttpLimits {
    HttpLimits {
        header_read_timeout: Duration::from_millis(args.http_header_timeout_ms.max(1)),
        max_header_bytes: args.http_max_header_bytes.max(1024),
        max_headers: args.http_max_headers.max(1),
        h2_max_concurrent_streams: args.h2_max_concurrent_streams.max(1),
        h2_max_pending_accept_reset_streams: args.h2_max_pending_resets,
        ..HttpLimits::default()
    }
}

/// The proxy's telemetry from the config (and the OTEL_* environment).
pub(crate) fn telemetry(
    config: &MeshConfig,
    node_name: Option<&str>,
) -> Result<(Arc<Telemetry>, Option<crate::otel::TraceExport>), Failure> {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let export = crate::otel::start(&config.telemetry, &host, node_name)?;
    if let Some(e) = &export {
        tracing::info!(endpoint = %e.endpoint, protocol = e.protocol, settings = ?e.tracing.settings(), "exporting traces");
    }
    let access_log = match &config.telemetry.access_log {
        None => None,
        Some(a) => {
            let target = match &a.path {
                None => LogTarget::Stdout,
                Some(p) => LogTarget::File(p.clone()),
            };
            let format = match a.format {
                sluice_mesh_config::AccessLogFormat::Json => LogFormat::Json,
                sluice_mesh_config::AccessLogFormat::Text => LogFormat::Text,
            };
            Some(AccessLog::open(target.clone(), format).map_err(|e| {
                Failure::new(
                    exit::FAILED,
                    format!("cannot open the access log {target:?}: {e} (fix telemetry.access_log.path or its directory's permissions)"),
                )
            })?)
        }
    };
    let telemetry = Telemetry {
        tracing: export.as_ref().map(|e| Arc::clone(&e.tracing)),
        access_log,
        ..Telemetry::default()
    };
    Ok((Arc::new(telemetry), export))
}

/// Writes out what is still queued: access log lines, then spans.
pub(crate) async fn finish_telemetry(t: &Telemetry, export: Option<crate::otel::TraceExport>) {
    if let Some(log) = &t.access_log {
        log.flush(Duration::from_secs(2));
    }
    if let Some(e) = export {
        e.shutdown().await;
    }
}

fn start_policy(
    redirector: &Redirector,
    policy: &Policy,
    allow_uplink: bool,
) -> Result<PolicyEnforcer, Failure> {
    let mut p = PolicyEnforcer::new(redirector.pin_dir(), allow_uplink)?;
    p.apply(policy)?;
    for (iface, mode) in p.interfaces() {
        tracing::info!(interface = %iface, xdp = mode, "L3/L4 policy in force");
    }
    Ok(p)
}

/// Where the policy is attached and in which XDP mode, for `sluice status`
/// (bpffs holds no plain files, so it is kept beside the instance lock).
/// Where the node says its admin address, for `sluice status`.
pub(crate) fn admin_state_path(instance: &str) -> std::path::PathBuf {
    std::path::Path::new(sluice_redirector::RUN_DIR).join(format!("{instance}.admin"))
}

pub(crate) fn policy_state_path(instance: &str) -> std::path::PathBuf {
    std::path::Path::new(sluice_redirector::RUN_DIR).join(format!("{instance}.policy"))
}

fn write_policy_state(instance: &str, policy: Option<&PolicyEnforcer>) {
    let path = policy_state_path(instance);
    match policy {
        Some(p) if !p.interfaces().is_empty() => {
            let text: String = p.interfaces().iter().map(|(i, m)| format!("{i} {m}\n")).collect();
            let _ = std::fs::write(path, text);
        }
        _ => {
            let _ = std::fs::remove_file(path);
        }
    }
}

trait NoPolicy {
    fn none() -> Self;
}

impl NoPolicy for Policy {
    /// No rules, allow everything, no interfaces (detaches from all).
    fn none() -> Self {
        Policy {
            interfaces: Vec::new(),
            default_ingress: PolicyAction::Allow,
            default_egress: PolicyAction::Allow,
            rules: Vec::new(),
            rate_limit: None,
            drop_events_per_second: 0,
            xdp_mode: sluice_mesh_config::XdpMode::Auto,
        }
    }
}

async fn heartbeat(live: Arc<Liveness>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut failing = false;
    loop {
        tick.tick().await;
        match live.beat() {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "heartbeat failed: the kernel will treat the proxy as down");
            }
            Err(_) => {}
        }
    }
}

/// This node's place in a multi-node mesh: its name, the identities of its
/// workloads, and (when it is one of `nodes:`) mutual TLS with the others.
pub(crate) struct Mesh {
    pub node: Option<String>,
    pub workloads: Arc<sluice_proxy::tls::Workloads>,
    pub client: Option<Arc<sluice_proxy::mesh::MeshClient>>,
    /// The bound mutual-TLS port, until its server takes it.
    listener: Option<std::net::TcpListener>,
    stats: Arc<sluice_proxy::mesh::MeshStats>,
}

impl Mesh {
    async fn start(args: &NodeArgs, config: &MeshConfig, own_mark: u32) -> Result<Self, Failure> {
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok());
        let node = args.node_name.clone().or(host);
        let me = node.as_deref().and_then(|n| config.nodes.iter().find(|x| x.name == n));
        if !config.nodes.is_empty() && me.is_none() {
            let known: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(Failure::new(
                exit::BAD_INPUT,
                format!(
                    "this node is '{}', which is not in the config's nodes: ({}); pass --node-name with one of them",
                    node.as_deref().unwrap_or("?"),
                    known.join(", ")
                ),
            ));
        }
        let workloads = Arc::new(sluice_proxy::tls::Workloads::new(config, node.as_deref()));
        let stats = Arc::new(sluice_proxy::mesh::MeshStats::default());
        let Some(me) = me else {
            return Ok(Self { node, workloads, client: None, listener: None, stats });
        };
        let tls = match config.identity.mtls {
            sluice_mesh_config::MtlsMode::Strict => {
                Some(sluice_proxy::tls::MeshTls::new(config, Arc::clone(&workloads)).map_err(|e| {
                    Failure::new(
                        exit::BAD_INPUT,
                        format!("workload certificates (identity: in the config): {e}"),
                    )
                })?)
            }
            sluice_mesh_config::MtlsMode::Disable => None,
        };
        let addr = me.socket_addr();
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                Failure::new(
                    exit::FAILED,
                    format!(
                        "the mutual-TLS port {addr} of node {}: {e} (is the address on this host?)",
                        me.name
                    ),
                )
            })?;
        if tls.is_some() {
            tracing::info!(node = %me.name, %addr, trust_domain = %config.identity.trust_domain, "mutual TLS between nodes on");
        } else {
            tracing::warn!(node = %me.name, %addr, "identity.mtls: disable: traffic between nodes is plaintext HTTP/2 and unauthenticated; policies that name source identities never match it");
        }
        let client = Arc::new(sluice_proxy::mesh::MeshClient::new(
            tls,
            Arc::clone(&workloads),
            own_mark,
            Duration::from_secs(5),
            Arc::clone(&stats),
        ));
        Ok(Self { node, workloads, client: Some(client), listener: Some(listener), stats })
    }

    fn server(&self, routes: &Routes, own_mark: u32) -> Option<sluice_proxy::mesh::MeshServer> {
        let client = self.client.as_ref()?;
        Some(sluice_proxy::mesh::MeshServer {
            tls: client.tls.clone(),
            routes: routes.clone(),
            pools: Arc::new(sluice_proxy::http::upstream::Pools::new(own_mark, Duration::from_secs(5), None)),
            own_mark,
            connect_timeout: Duration::from_secs(5),
            stats: Arc::clone(&self.stats),
        })
    }

    fn metrics(&self) -> crate::metrics::MeshMetrics {
        crate::metrics::MeshMetrics {
            stats: Arc::clone(&self.stats),
            certs: self.client.as_ref().and_then(|c| c.tls.as_ref()).map(|t| Arc::clone(&t.store)),
        }
    }
}

/// The kernel's zero-hop authorization table: for each zero-hop service
/// address, the verdict for every workload cgroup and (cgroup 0) for the
/// rest. `None` when no policy can refuse anything.
fn zero_hop_verdicts(
    config: &MeshConfig,
    workloads: &sluice_proxy::tls::Workloads,
) -> Option<std::collections::HashMap<(u64, SocketAddr), bool>> {
    let authz = sluice_proxy::authz::Authz::new(&config.authorization, config.services.len());
    if authz.is_open() {
        return None;
    }
    let ids = workloads.identities.load();
    let cgroups = workloads.cgroups();
    let mut out = std::collections::HashMap::new();
    for (addr, sa) in config.service_addrs() {
        if !config.services[sa.service].ports[sa.port].zero_hop {
            continue;
        }
        let deny = |id: &str| !authz.check_tcp(id, sa.service, addr.port()).is_allow();
        out.insert((0, addr), deny(ids.default_id()));
        for (cg, id) in &cgroups {
            out.insert((*cg, addr), deny(id));
        }
    }
    Some(out)
}

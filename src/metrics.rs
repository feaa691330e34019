//! What `/metrics` shows: read from the node's pins on each scrape (so it is
//! the kernel's own count), plus the proxy's counters.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
};

use sluice_proxy::{
    ProxyStats, Routes, Telemetry,
    detect::Detected,
    telemetry::metrics::{Destination, KernelConnections},
};
use sluice_redirector::{Liveness, Stats, Workers, monotonic_ns, policy};

use crate::admin::{Metrics, Render};

pub(crate) type DropEvents = Arc<Mutex<BTreeMap<(&'static str, &'static str), u64>>>;

pub(crate) type ConfigInForce = Arc<Mutex<Option<sluice_mesh_config::MeshConfig>>>;

/// Mutual TLS and authorization counters.
#[derive(Clone)]
pub(crate) struct MeshMetrics {
    pub stats: Arc<sluice_proxy::mesh::MeshStats>,
    pub certs: Option<Arc<sluice_proxy::tls::CertStore>>,
}

fn mesh_metrics(m: &mut Metrics, mm: &MeshMetrics, proxy: &ProxyStats, kernel_denied: u64) {
    let s = &mm.stats;
    let denied = [
        ("http", "local", proxy.authz_denied_http.load(Relaxed)),
        ("tcp", "local", proxy.authz_denied_tcp.load(Relaxed)),
        ("http", "from_node", s.denied_http.load(Relaxed)),
        ("tcp", "from_node", s.denied_tcp.load(Relaxed)),
        ("tcp", "kernel", kernel_denied),
    ];
    for (protocol, origin, n) in denied {
        m.sample(
            "sluice_authz_denied_total",
            "counter",
            "Calls refused by authorization policies: HTTP requests (403) and TCP connections; origin local = a workload of this node, from_node = over mutual TLS, kernel = a zero-hop connect refused by connect4/6.",
            &[("protocol", protocol), ("origin", origin)],
            n as f64,
        );
    }
    for (side, result, n) in [
        ("server", "ok", s.handshakes_ok.load(Relaxed)),
        ("server", "failed", s.handshakes_failed.load(Relaxed)),
        ("client", "ok", s.client_handshakes_ok.load(Relaxed)),
        ("client", "failed", s.client_handshakes_failed.load(Relaxed)),
    ] {
        m.sample(
            "sluice_mtls_handshakes_total",
            "counter",
            "Mutual TLS handshakes with other nodes, as server (the mesh port) and as client.",
            &[("side", side), ("result", result)],
            n as f64,
        );
    }
    for (kind, n) in [("http", s.streams_http.load(Relaxed)), ("tcp", s.streams_tcp.load(Relaxed))] {
        m.sample(
            "sluice_mesh_streams_total",
            "counter",
            "Requests (http) and CONNECT tunnels (tcp) delivered from other nodes to local endpoints.",
            &[("kind", kind)],
            n as f64,
        );
    }
    m.sample(
        "sluice_mesh_refused_targets_total",
        "counter",
        "Streams from other nodes refused because they named no local endpoint of the service.",
        &[],
        s.refused_target.load(Relaxed) as f64,
    );
    m.sample(
        "sluice_tcp_tunnelled_total",
        "counter",
        "Opaque TCP connections sent to an endpoint on another node through a mutual-TLS tunnel.",
        &[],
        proxy.tunnelled.load(Relaxed) as f64,
    );
    if let Some(c) = &mm.certs {
        for (event, n) in [
            ("issued", c.stats.issued.load(Relaxed)),
            ("renewed", c.stats.renewed.load(Relaxed)),
            ("failed", c.stats.failed.load(Relaxed)),
        ] {
            m.sample(
                "sluice_certificates_total",
                "counter",
                "Workload certificates obtained (issued), renewed at half their life, or not obtained (failed).",
                &[("event", event)],
                n as f64,
            );
        }
    }
}

// Each argument is one source of samples the scrape closure keeps.
#[allow(clippy::too_many_arguments)]
pub(crate) fn renderer(
    pin_dir: PathBuf,
    proxy: Arc<ProxyStats>,
    drops: DropEvents,
    fast_paths: crate::fastpath::States,
    telemetry: Arc<Telemetry>,
    routes: Routes,
    config: ConfigInForce,
    mesh: MeshMetrics,
) -> Render {
    Arc::new(move || {
        let mut out = render(&pin_dir, &proxy, &drops, &fast_paths, &telemetry, &routes, &mesh);
        let kernel = zero_hop_connections(&pin_dir, &config);
        telemetry.metrics.render(&mut out, &kernel);
        out
    })
}

/// Zero-hop connections never reach the proxy: the kernel counts them per
/// service address.
fn zero_hop_connections(pin_dir: &std::path::Path, config: &ConfigInForce) -> Vec<KernelConnections> {
    let Ok(counts) = sluice_redirector::zero_hop_counts(pin_dir) else { return Vec::new() };
    let bytes = sluice_redirector::zero_hop_bytes(pin_dir).unwrap_or_default();
    let config = config.lock().unwrap_or_else(|p| p.into_inner());
    let Some(config) = config.as_ref() else { return Vec::new() };
    let mut out: Vec<KernelConnections> = Vec::new();
    for (addr, sa) in config.service_addrs() {
        let Some(n) = counts.get(&addr).copied().filter(|n| *n > 0) else { continue };
        let b = bytes.get(&addr).copied().unwrap_or_default();
        let svc = &config.services[sa.service];
        let dest = Destination {
            service: svc.name.as_str().into(),
            namespace: svc.namespace.as_str().into(),
            version: None,
        };
        match out.iter_mut().find(|k| k.dest == dest) {
            Some(k) => {
                k.connections += n;
                k.closed += b.closed;
                k.bytes_up += b.up;
                k.bytes_down += b.down;
            }
            None => out.push(KernelConnections {
                dest,
                path: "zero_hop",
                connections: n,
                closed: b.closed,
                bytes_up: b.up,
                bytes_down: b.down,
            }),
        }
    }
    out
}

fn telemetry_metrics(m: &mut Metrics, t: &Telemetry, routes: &Routes) {
    if let Some(log) = &t.access_log {
        for (outcome, v) in [("written", &log.written), ("dropped", &log.dropped)] {
            m.sample(
                "sluice_access_log_lines_total",
                "counter",
                "Access log lines queued for writing, and dropped because the writer fell behind.",
                &[("outcome", outcome)],
                v.load(Relaxed) as f64,
            );
        }
    }
    m.sample(
        "sluice_tracing_enabled",
        "gauge",
        "1 when traces are exported over OTLP.",
        &[],
        if t.tracing.is_some() { 1.0 } else { 0.0 },
    );
    if let Some(tr) = &t.tracing {
        m.sample("sluice_tracing_sampling_ratio", "gauge", "Share of new traces recorded.", &[], tr.ratio());
        let c = &tr.counters;
        for (outcome, v) in
            [("started", &c.started), ("exported", &c.exported), ("export_failed", &c.export_failed)]
        {
            m.sample(
                "sluice_tracing_spans_total",
                "counter",
                "Spans started, sent to the collector, and lost in failed exports (started - exported - failed: queued, or dropped on a full queue).",
                &[("outcome", outcome)],
                v.load(Relaxed) as f64,
            );
        }
    }
    let eps = routes.endpoint_states();
    type Pick = fn(&sluice_proxy::endpoint::EndpointState, std::time::Instant) -> f64;
    let gauges: [(&str, &str, Pick); 4] = [
        (
            "sluice_endpoint_requests_active",
            "HTTP requests in flight per endpoint (circuit breaker: max_requests).",
            |e, _| f64::from(e.in_flight.load(Relaxed)),
        ),
        (
            "sluice_endpoint_pending_requests",
            "HTTP requests waiting for an upstream connection (circuit breaker: max_pending_requests).",
            |e, _| f64::from(e.pending.load(Relaxed)),
        ),
        (
            "sluice_endpoint_connections",
            "Open upstream HTTP connections per endpoint, pooled or busy (circuit breaker: max_connections).",
            |e, _| f64::from(e.connections.load(Relaxed)),
        ),
        (
            "sluice_endpoint_ejected",
            "1 while outlier detection keeps the endpoint out of load balancing.",
            |e, now| if e.is_ejected(now) { 1.0 } else { 0.0 },
        ),
    ];
    let now = std::time::Instant::now();
    for (name, help, pick) in gauges {
        for (service, e) in &eps {
            let addr = e.addr.to_string();
            m.sample(
                name,
                "gauge",
                help,
                &[("service", service), ("endpoint", &addr), ("version", e.version.as_deref().unwrap_or(""))],
                pick(e, now),
            );
        }
    }
}

fn path_metrics(m: &mut Metrics, proxy: &ProxyStats, fast_paths: &crate::fastpath::States) {
    for p in fast_paths.iter() {
        m.sample(
            "sluice_fast_path_enabled",
            "gauge",
            "1 when a kernel fast path passed its start-up self-test and is in use.",
            &[("path", p.name)],
            if p.enabled { 1.0 } else { 0.0 },
        );
    }
    for (counter, n) in fast_paths.iter().filter_map(|p| p.local_pairs.as_ref()).flat_map(|s| s.stats()) {
        m.sample(
            "sluice_sk_msg_kernel_total",
            "counter",
            "What the sk_msg program did: sends put straight into the peer socket (and their bytes), sends on the TCP path, sockets sock_ops added.",
            &[("counter", counter)],
            n as f64,
        );
    }
    for (counter, n) in fast_paths.iter().filter_map(|p| p.splicer.as_ref()).flat_map(|s| s.stats()) {
        m.sample(
            "sluice_splice_kernel_total",
            "counter",
            "What the sk_skb verdict program did (passed/failed: skbs handed to the proxy, e.g. while a pair joined the map).",
            &[("counter", counter)],
            n as f64,
        );
    }
    let paths = [
        ("proxy", &proxy.copied, &proxy.bytes_up, &proxy.bytes_down),
        ("splice", &proxy.spliced, &proxy.spliced_bytes_up, &proxy.spliced_bytes_down),
    ];
    for (path, conns, _, _) in paths {
        m.sample(
            "sluice_path_connections_total",
            "counter",
            "Opaque TCP connections by the path their payload took (proxy: copied in userspace; splice: sk_skb in the kernel).",
            &[("path", path)],
            conns.load(Relaxed) as f64,
        );
    }
    for (path, _, up, down) in paths {
        for (dir, v) in [("up", up), ("down", down)] {
            m.sample(
                "sluice_path_bytes_total",
                "counter",
                "Payload bytes by path and direction (up: to endpoints).",
                &[("path", path), ("direction", dir)],
                v.load(Relaxed) as f64,
            );
        }
    }
    m.sample(
        "sluice_splice_fallbacks_total",
        "counter",
        "Connections that could not be spliced and were copied by the proxy.",
        &[],
        proxy.splice_fallbacks.load(Relaxed) as f64,
    );
    m.sample(
        "sluice_splice_lost_total",
        "counter",
        "Spliced connections reset because the kernel did not deliver all their data to the other socket.",
        &[],
        proxy.splice_lost.load(Relaxed) as f64,
    );
    m.sample(
        "sluice_splice_user_bytes_total",
        "counter",
        "Bytes of spliced connections that still reached the proxy (queued before the splice).",
        &[],
        proxy.spliced_user_bytes.load(Relaxed) as f64,
    );
}

fn http_metrics(m: &mut Metrics, proxy: &ProxyStats) {
    for (d, v) in Detected::ALL.iter().zip(&proxy.detected) {
        m.sample(
            "sluice_protocol_detected_total",
            "counter",
            "Protocol detection outcomes on connections to auto ports.",
            &[("protocol", d.name())],
            v.load(Relaxed) as f64,
        );
    }
    for (class, v) in proxy.http_status.iter().enumerate().skip(1) {
        let label = format!("{class}xx");
        m.sample(
            "sluice_http_responses_total",
            "counter",
            "HTTP responses sent to clients, by status class.",
            &[("class", &label)],
            v.load(Relaxed) as f64,
        );
    }
    for (name, help, v) in [
        ("sluice_http_connections_total", "Client connections served as HTTP.", &proxy.http_connections),
        ("sluice_http_requests_total", "HTTP requests received from clients.", &proxy.http_requests),
        (
            "sluice_http_proxy_errors_total",
            "Requests the proxy answered itself (no route, no endpoint, circuit open, timeouts, upstream failures).",
            &proxy.http_errors,
        ),
        (
            "sluice_http_refused_total",
            "HTTP/1 connections closed with 400 for a request-smuggling shape.",
            &proxy.http_refused,
        ),
        (
            "sluice_http_header_timeouts_total",
            "HTTP/1 connections closed because the request head was too slow.",
            &proxy.http_header_timeouts,
        ),
        ("sluice_http_upgrades_total", "Upgraded (e.g. WebSocket) connections.", &proxy.http_upgrades),
        ("sluice_http_retries_total", "Retried request attempts.", &proxy.retries),
        (
            "sluice_http_retry_budget_exhausted_total",
            "Retries not made because the route's retry budget was spent.",
            &proxy.retry_budget_exhausted,
        ),
        (
            "sluice_http_circuit_open_total",
            "Requests refused by an endpoint's circuit breaker.",
            &proxy.circuit_open,
        ),
        ("sluice_http_outlier_ejections_total", "Endpoints ejected by outlier detection.", &proxy.ejections),
    ] {
        m.sample(name, "counter", help, &[], v.load(Relaxed) as f64);
    }
}

fn render(
    pin_dir: &std::path::Path,
    proxy: &ProxyStats,
    drops: &DropEvents,
    fast_paths: &crate::fastpath::States,
    telemetry: &Telemetry,
    routes: &Routes,
    mesh: &MeshMetrics,
) -> String {
    let mut m = Metrics::default();
    let kernel_denied =
        Stats::from_pin(pin_dir).map(|s| s.get(sluice_bpf::abi::Stat::ZhDenied)).unwrap_or_default();
    mesh_metrics(&mut m, mesh, proxy, kernel_denied);
    telemetry_metrics(&mut m, telemetry, routes);
    path_metrics(&mut m, proxy, fast_paths);
    m.sample("sluice_up", "gauge", "1 while the node runs.", &[], 1.0);
    if let Ok(live) = Liveness::read_pinned(pin_dir) {
        let age = monotonic_ns().saturating_sub(live.heartbeat_ns) as f64 / 1e9;
        m.sample(
            "sluice_heartbeat_age_seconds",
            "gauge",
            "Age of the proxy's last heartbeat in the kernel map.",
            &[],
            age,
        );
    }
    if let Ok(stats) = Stats::from_pin(pin_dir) {
        for (s, n) in stats.all() {
            m.sample(
                "sluice_kernel_events_total",
                "counter",
                "Redirection, liveness and worker-selection events counted by the eBPF programs.",
                &[("event", s.name())],
                n as f64,
            );
        }
    }
    if let Ok(workers) = Workers::read_pinned(pin_dir) {
        for w in &workers {
            let slot = w.slot.to_string();
            let state = format!("{:?}", w.state).to_lowercase();
            m.sample(
                "sluice_worker_state",
                "gauge",
                "1 for the state each worker slot is in.",
                &[("slot", &slot), ("state", &state)],
                1.0,
            );
        }
        for w in &workers {
            let slot = w.slot.to_string();
            m.sample(
                "sluice_worker_open_connections",
                "gauge",
                "Open connections per worker.",
                &[("slot", &slot)],
                f64::from(w.load),
            );
        }
        for w in &workers {
            let slot = w.slot.to_string();
            m.sample(
                "sluice_worker_connections_total",
                "counter",
                "Connections sk_reuseport gave each worker slot.",
                &[("slot", &slot)],
                w.selected as f64,
            );
        }
    }
    for (name, v) in [
        ("accepted", &proxy.accepted),
        ("forwarded", &proxy.forwarded),
        ("no_orig_dst", &proxy.no_orig_dst),
        ("unknown_service", &proxy.unknown_service),
        ("no_endpoint", &proxy.no_endpoint),
        ("upstream_connect_failed", &proxy.upstream_connect_failed),
    ] {
        m.sample(
            "sluice_proxy_connections_total",
            "counter",
            "Proxy connections by outcome.",
            &[("outcome", name)],
            v.load(Relaxed) as f64,
        );
    }
    m.sample(
        "sluice_proxy_active_connections",
        "gauge",
        "Connections being forwarded.",
        &[],
        proxy.active.load(Relaxed) as f64,
    );
    for (dir, v) in [("up", &proxy.bytes_up), ("down", &proxy.bytes_down)] {
        m.sample(
            "sluice_proxy_bytes_total",
            "counter",
            "Bytes forwarded (up: to endpoints).",
            &[("direction", dir)],
            v.load(Relaxed) as f64,
        );
    }
    http_metrics(&mut m, proxy);
    if let Ok(counters) = policy::read_pinned_counters(pin_dir) {
        for (name, n) in &counters {
            let Some((dir, reason)) = name.split_once('_') else { continue };
            if reason.starts_with("matched_rule_") {
                continue;
            }
            m.sample(
                "sluice_policy_packets_total",
                "counter",
                "Packets seen by the XDP (ingress) and tc (egress) policy programs, by outcome.",
                &[("direction", dir), ("reason", reason)],
                *n as f64,
            );
        }
        for (name, n) in &counters {
            let Some((dir, rule)) = name.split_once("_matched_rule_") else { continue };
            m.sample(
                "sluice_policy_rule_packets_total",
                "counter",
                "Packets that matched each policy rule (index in the kernel's rule table).",
                &[("direction", dir), ("rule", rule)],
                *n as f64,
            );
        }
    }
    for ((dir, reason), n) in drops.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        m.sample(
            "sluice_policy_drop_events_total",
            "counter",
            "Sampled drop events received from the kernel and logged.",
            &[("direction", dir), ("reason", reason)],
            *n as f64,
        );
    }
    m.finish()
}

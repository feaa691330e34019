//! Request and connection metrics under Istio's names and labels
//! (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`), so the
//! dashboards people already have work. Series are created on first use and
//! updated with atomics; a scrape renders them.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

/// Istio's default buckets for request durations, in milliseconds.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
    300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's buckets for request and response sizes, in bytes.
pub const BYTES_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// A histogram with fixed bounds; `sum` is kept in `1/scale` units. The
/// count is the buckets' total (with `over`, above the last bound): two
/// atomic additions per observation, not three.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    buckets: [AtomicU64; N],
    over: AtomicU64,
    sum: AtomicU64,
    scale: f64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N], scale: f64) -> Self {
        Self {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Records `v` (in units of `1/scale`, e.g. microseconds for a
    /// millisecond histogram with scale 1000).
    pub fn observe(&self, v: u64) {
        let x = v as f64 / self.scale;
        match self.bounds.iter().position(|b| x <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.over.fetch_add(1, Relaxed),
        };
        self.sum.fetch_add(v, Relaxed);
    }
}

/// Who was called: the labels shared by request and TCP series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub service: Arc<str>,
    pub namespace: Arc<str>,
    /// The endpoint's version (`None`: not known, e.g. no endpoint was reached).
    pub version: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub dest: Destination,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    pub code: u16,
    /// gRPC status, when the response carried one.
    pub grpc_status: Option<u16>,
    /// Envoy-style response flags (`-` when none): NR no route, UH no
    /// healthy upstream, UF connect failure, UO overflow (circuit breaker),
    /// UT timeout, UC upstream closed, DC downstream closed, DPE bad request.
    pub flags: &'static str,
}

#[derive(Debug)]
pub struct RequestSeries {
    /// Its labels.
    pub key: RequestKey,
    /// Milliseconds, summed in microseconds. Every request is observed
    /// here once: its count is the series' request count.
    pub duration: Histogram<19>,
    pub request_bytes: Histogram<9>,
    pub response_bytes: Histogram<9>,
}

/// How an opaque TCP connection's payload travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpPath {
    /// Copied by the proxy.
    Proxy,
    /// Spliced in the kernel (sk_skb).
    Splice,
}

impl TcpPath {
    pub fn name(self) -> &'static str {
        match self {
            TcpPath::Proxy => "proxy",
            TcpPath::Splice => "splice",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    pub dest: Destination,
    pub path: TcpPath,
    pub flags: &'static str,
}

#[derive(Debug, Default)]
pub struct TcpSeries {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// Bytes sent to the client (Istio's sent/received are the destination's view
    /// from the proxy: received = from the client).
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// Connections that never reach the proxy (zero-hop), counted by the kernel.
#[derive(Debug, Clone)]
pub struct KernelConnections {
    pub dest: Destination,
    pub path: &'static str,
    pub connections: u64,
    /// Of those, closed; and their bytes from and to the client.
    pub closed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// A request series found without building its labels: the destination's
/// strings by address (they live as long as the config that made them, and
/// the series keeps a clone, so an address is never reused while mapped),
/// the rest by value. Two addresses with equal text (a reload) make two
/// series with the same labels; a scrape adds them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FastKey {
    service: usize,
    namespace: usize,
    version: usize,
    protocol: usize,
    flags: usize,
    code: u16,
    grpc_status: u16,
}

/// A request's labels, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RequestLabels<'a> {
    pub service: &'a Arc<str>,
    pub namespace: &'a Arc<str>,
    pub version: Option<&'a Arc<str>>,
    pub protocol: &'static str,
    pub code: u16,
    pub grpc_status: Option<u16>,
    pub flags: &'static str,
}

impl RequestLabels<'_> {
    fn fast(&self) -> FastKey {
        let addr = |s: &Arc<str>| Arc::as_ptr(s) as *const u8 as usize;
        FastKey {
            service: addr(self.service),
            namespace: addr(self.namespace),
            version: self.version.map_or(0, addr),
            protocol: self.protocol.as_ptr() as usize,
            flags: self.flags.as_ptr() as usize,
            code: self.code,
            grpc_status: self.grpc_status.unwrap_or(u16::MAX),
        }
    }

    fn owned(&self) -> RequestKey {
        RequestKey {
            dest: Destination {
                service: Arc::clone(self.service),
                namespace: Arc::clone(self.namespace),
                version: self.version.cloned(),
            },
            protocol: self.protocol,
            code: self.code,
            grpc_status: self.grpc_status,
            flags: self.flags,
        }
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    requests: RwLock<HashMap<FastKey, Arc<RequestSeries>, rustc_hash::FxBuildHasher>>,
    tcp: RwLock<HashMap<TcpKey, Arc<TcpSeries>>>,
}

impl Registry {
    /// Records one finished request: a hash of a few words and atomics.
    pub fn record_request(
        &self,
        labels: RequestLabels<'_>,
        took: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let fast = labels.fast();
        let observe = |s: &RequestSeries| {
            s.duration.observe(took.as_micros().min(u128::from(u64::MAX)) as u64);
            s.request_bytes.observe(request_bytes);
            s.response_bytes.observe(response_bytes);
        };
        // Observed under the read lock: no reference count to move.
        if let Some(s) = self.requests.read().unwrap_or_else(|p| p.into_inner()).get(&fast) {
            return observe(s);
        }
        let mut w = self.requests.write().unwrap_or_else(|p| p.into_inner());
        observe(w.entry(fast).or_insert_with(|| {
            Arc::new(RequestSeries {
                key: labels.owned(),
                duration: Histogram::new(&DURATION_BUCKETS_MS, 1000.0),
                request_bytes: Histogram::new(&BYTES_BUCKETS, 1.0),
                response_bytes: Histogram::new(&BYTES_BUCKETS, 1.0),
            })
        }));
    }

    pub fn tcp(&self, key: TcpKey) -> Arc<TcpSeries> {
        if let Some(s) = self.tcp.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Arc::clone(s);
        }
        let mut w = self.tcp.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(w.entry(key).or_default())
    }

    /// Prometheus text for every series; `kernel` adds the connections the
    /// kernel counted for paths that bypass the proxy.
    pub fn render(&self, out: &mut String, kernel: &[KernelConnections]) {
        let mut requests: BTreeMap<RequestKey, Vec<Arc<RequestSeries>>> = BTreeMap::new();
        for s in self.requests.read().unwrap_or_else(|p| p.into_inner()).values() {
            requests.entry(s.key.clone()).or_default().push(Arc::clone(s));
        }
        let tcp: BTreeMap<TcpKey, Arc<TcpSeries>> = self
            .tcp
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let req_labels = |k: &RequestKey| {
            format!(
                "{},request_protocol=\"{}\",response_code=\"{}\",grpc_response_status=\"{}\",response_flags=\"{}\",connection_security_policy=\"none\"",
                dest_labels(&k.dest),
                k.protocol,
                k.code,
                k.grpc_status.map(|s| s.to_string()).unwrap_or_default(),
                k.flags
            )
        };
        header(
            out,
            "istio_requests_total",
            "counter",
            "Requests, by source, destination and response (Istio's names and labels).",
        );
        for (k, s) in &requests {
            let n: u64 = s.iter().map(|s| s.duration.count()).sum();
            let _ = writeln!(out, "istio_requests_total{{{}}} {n}", req_labels(k));
        }
        type Pick = fn(&RequestSeries) -> &dyn RenderHist;
        let hists: [(&str, &str, Pick); 3] = [
            (
                "istio_request_duration_milliseconds",
                "Time from the request's first byte to the response's last, in milliseconds.",
                |s| &s.duration,
            ),
            ("istio_request_bytes", "Request body sizes, in bytes.", |s| &s.request_bytes),
            ("istio_response_bytes", "Response body sizes, in bytes.", |s| &s.response_bytes),
        ];
        for (name, help, pick) in hists {
            header(out, name, "histogram", help);
            for (k, s) in &requests {
                let parts: Vec<&dyn RenderHist> = s.iter().map(|s| pick(s)).collect();
                render_sum(&parts, out, name, &req_labels(k));
            }
        }
        // Istio's TCP series have no path label: sum over paths.
        let mut by_dest: BTreeMap<(&Destination, &str), [u64; 4]> = BTreeMap::new();
        for (k, s) in &tcp {
            let e = by_dest.entry((&k.dest, k.flags)).or_default();
            e[0] += s.opened.load(Relaxed);
            e[1] += s.closed.load(Relaxed);
            e[2] += s.sent.load(Relaxed);
            e[3] += s.received.load(Relaxed);
        }
        // What the kernel counted for connections that bypass the proxy, in the
        // same order as the families below: opened, closed, sent, received.
        let mut kernel_by_dest: BTreeMap<&Destination, [u64; 4]> = BTreeMap::new();
        for k in kernel {
            let e = kernel_by_dest.entry(&k.dest).or_default();
            e[0] += k.connections;
            e[1] += k.closed;
            e[2] += k.bytes_down;
            e[3] += k.bytes_up;
        }
        let tcp_labels = |d: &Destination, flags: &str| {
            format!(
                "{},request_protocol=\"tcp\",response_flags=\"{flags}\",connection_security_policy=\"none\"",
                dest_labels(d)
            )
        };
        let families: [(&str, &str, usize); 4] = [
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened (zero-hop ones counted by the kernel).",
                0,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed (zero-hop ones counted by the kernel).",
                1,
            ),
            ("istio_tcp_sent_bytes_total", "Bytes sent to clients on TCP connections.", 2),
            ("istio_tcp_received_bytes_total", "Bytes received from clients on TCP connections.", 3),
        ];
        for (name, help, i) in families {
            header(out, name, "counter", help);
            let mut kernel_left = kernel_by_dest.clone();
            for ((d, flags), v) in &by_dest {
                let mut n = v[i];
                if *flags == "-"
                    && let Some(k) = kernel_left.remove(d)
                {
                    n += k[i];
                }
                let _ = writeln!(out, "{name}{{{}}} {n}", tcp_labels(d, flags));
            }
            for (d, k) in &kernel_left {
                let _ = writeln!(out, "{name}{{{}}} {}", tcp_labels(d, "-"), k[i]);
            }
        }
        header(
            out,
            "sluice_tcp_connections_total",
            "counter",
            "Opaque TCP connections by service and the path they took (proxy, splice, zero_hop).",
        );
        let mut by_path: BTreeMap<(&Destination, &str), u64> = BTreeMap::new();
        for (k, s) in &tcp {
            *by_path.entry((&k.dest, k.path.name())).or_default() += s.opened.load(Relaxed);
        }
        for k in kernel {
            *by_path.entry((&k.dest, k.path)).or_default() += k.connections;
        }
        for ((d, path), n) in by_path {
            let _ = writeln!(
                out,
                "sluice_tcp_connections_total{{destination_service=\"{}\",destination_service_namespace=\"{}\",path=\"{path}\"}} {n}",
                esc(&d.service),
                esc(&d.namespace)
            );
        }
        header(
            out,
            "sluice_tcp_bytes_total",
            "counter",
            "Opaque TCP payload by service, path and direction (up: to endpoints).",
        );
        let mut bytes: BTreeMap<(&Destination, &str, &str), u64> = BTreeMap::new();
        for (k, s) in &tcp {
            *bytes.entry((&k.dest, k.path.name(), "up")).or_default() += s.received.load(Relaxed);
            *bytes.entry((&k.dest, k.path.name(), "down")).or_default() += s.sent.load(Relaxed);
        }
        for k in kernel {
            *bytes.entry((&k.dest, k.path, "up")).or_default() += k.bytes_up;
            *bytes.entry((&k.dest, k.path, "down")).or_default() += k.bytes_down;
        }
        for ((d, path, dir), n) in bytes {
            let _ = writeln!(
                out,
                "sluice_tcp_bytes_total{{destination_service=\"{}\",destination_service_namespace=\"{}\",path=\"{path}\",direction=\"{dir}\"}} {n}",
                esc(&d.service),
                esc(&d.namespace)
            );
        }
    }
}

trait RenderHist {
    fn bounds(&self) -> &[f64];
    fn bucket(&self, i: usize) -> u64;
    fn count(&self) -> u64;
    fn sum(&self) -> f64;
}

impl<const N: usize> RenderHist for Histogram<N> {
    fn bounds(&self) -> &[f64] {
        self.bounds
    }
    fn bucket(&self, i: usize) -> u64 {
        self.buckets[i].load(Relaxed)
    }
    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum::<u64>() + self.over.load(Relaxed)
    }
    fn sum(&self) -> f64 {
        self.sum.load(Relaxed) as f64 / self.scale
    }
}

/// Histograms with the same labels and bounds, rendered as one.
fn render_sum(parts: &[&dyn RenderHist], out: &mut String, name: &str, labels: &str) {
    let Some(first) = parts.first() else { return };
    let mut cum = 0;
    for (i, b) in first.bounds().iter().enumerate() {
        cum += parts.iter().map(|p| p.bucket(i)).sum::<u64>();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
    }
    let count: u64 = parts.iter().map(|p| p.count()).sum();
    let sum: f64 = parts.iter().map(|p| p.sum()).sum();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Istio's label set for the destination; the source side is not known to a
/// node proxy without workload identities, so it is `unknown` (as Istio
/// reports it then).
fn dest_labels(d: &Destination) -> String {
    let (svc, ns) = (esc(&d.service), esc(&d.namespace));
    let version = d.version.as_deref().map(esc);
    format!(
        "reporter=\"source\",source_workload=\"unknown\",source_workload_namespace=\"unknown\",source_principal=\"unknown\",source_app=\"unknown\",source_version=\"unknown\",source_canonical_service=\"unknown\",source_canonical_revision=\"unknown\",source_cluster=\"unknown\",\
destination_workload=\"{svc}\",destination_workload_namespace=\"{ns}\",destination_principal=\"unknown\",destination_app=\"{svc}\",destination_version=\"{}\",\
destination_service=\"{svc}\",destination_service_name=\"{svc}\",destination_service_namespace=\"{ns}\",destination_canonical_service=\"{svc}\",destination_canonical_revision=\"{}\",destination_cluster=\"unknown\"",
        version.as_deref().unwrap_or("unknown"),
        version.as_deref().unwrap_or("latest"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(v: Option<&str>) -> Destination {
        Destination { service: "reviews".into(), namespace: "default".into(), version: v.map(Into::into) }
    }

    #[test]
    fn a_histogram_counts_what_is_above_its_last_bound() {
        let h = Histogram::new(&BYTES_BUCKETS, 1.0);
        for v in [0, 1, 5, 1_000, 1e8 as u64, 1e9 as u64] {
            h.observe(v);
        }
        assert_eq!(RenderHist::count(&h), 6);
        assert_eq!((h.bucket(0), h.bucket(1), h.bucket(3), h.bucket(8)), (2, 1, 1, 1));
        assert_eq!(h.sum(), 1_100_001_006.0);
    }

    #[test]
    fn requests_render_as_istio() {
        let r = Registry::default();
        let (svc, ns, v1): (Arc<str>, Arc<str>, Arc<str>) = ("reviews".into(), "default".into(), "v1".into());
        let labels = RequestLabels {
            service: &svc,
            namespace: &ns,
            version: Some(&v1),
            protocol: "http",
            code: 200,
            grpc_status: None,
            flags: "-",
        };
        r.record_request(labels, Duration::from_micros(3_500), 10, 2_000);
        // The same labels from other allocations (as after a reload): one series on the page.
        let (svc2, v1b): (Arc<str>, Arc<str>) = ("reviews".into(), "v1".into());
        let again = RequestLabels { service: &svc2, version: Some(&v1b), ..labels };
        r.record_request(again, Duration::from_millis(30), 0, 0);
        assert_eq!(r.requests.read().unwrap().len(), 2, "two series inside");
        let mut out = String::new();
        r.render(&mut out, &[]);
        assert!(out.contains("# TYPE istio_requests_total counter"), "{out}");
        let line = out.lines().find(|l| l.starts_with("istio_requests_total{")).unwrap();
        assert!(
            line.contains("destination_service=\"reviews\"") && line.contains("destination_version=\"v1\"")
        );
        assert!(line.contains("response_code=\"200\"") && line.ends_with(" 2"), "{line}");
        let b = |le: &str| {
            out.lines()
                .find(|l| {
                    l.starts_with("istio_request_duration_milliseconds_bucket")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(b("1"), "0");
        assert_eq!(b("5"), "1");
        assert_eq!(b("50"), "2");
        assert_eq!(b("+Inf"), "2");
        assert!(
            out.contains("istio_request_duration_milliseconds_sum{") && out.contains("} 33.5\n"),
            "{out}"
        );
    }

    #[test]
    fn tcp_sums_paths_and_adds_kernel_counts() {
        let r = Registry::default();
        for path in [TcpPath::Proxy, TcpPath::Splice] {
            let s = r.tcp(TcpKey { dest: dest(None), path, flags: "-" });
            s.opened.fetch_add(2, Relaxed);
            s.closed.fetch_add(2, Relaxed);
            s.received.fetch_add(100, Relaxed);
        }
        let kernel = [KernelConnections {
            dest: dest(None),
            path: "zero_hop",
            connections: 5,
            closed: 4,
            bytes_up: 30,
            bytes_down: 40,
        }];
        let mut out = String::new();
        r.render(&mut out, &kernel);
        let v = |prefix: &str| {
            out.lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(v("istio_tcp_connections_opened_total{"), ["9"]);
        assert_eq!(v("istio_tcp_connections_closed_total{"), ["8"]);
        assert_eq!(v("istio_tcp_received_bytes_total{"), ["230"]);
        assert_eq!(v("istio_tcp_sent_bytes_total{"), ["40"]);
        assert_eq!(v("sluice_tcp_connections_total{"), ["2", "2", "5"]);
    }
}

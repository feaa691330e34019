//! The validated mesh: every address parsed, every name resolved.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

/// A whole, valid mesh config.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct MeshConfig {
    pub services: Vec<Service>,
    /// HTTP routes, in the order written; for each service the first match wins.
    pub routes: Vec<Route>,
    /// L3/L4 policy enforced in XDP (ingress) and tc (egress); `None`: no policy.
    pub policy: Option<Policy>,
    /// Traces and access logs; metrics are always on.
    pub telemetry: Telemetry,
    /// The mesh's nodes: where each one's proxy takes mutual-TLS traffic from
    /// the others. Empty: a single node.
    pub nodes: Vec<Node>,
    /// Workload identities and where their certificates come from.
    pub identity: Identity,
    /// Who may call what.
    pub authorization: Authorization,
}

/// A node of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    pub name: String,
    /// Where the other nodes reach this node's mutual-TLS port.
    pub address: IpAddr,
    pub port: u16,
}

impl Node {
    pub const DEFAULT_PORT: u16 = 15008;
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// Workload identities are SPIFFE IDs, `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub trust_domain: String,
    /// Lifetime of the certificates Sluice issues; each is renewed at half its life.
    pub cert_ttl: Duration,
    pub source: CertSource,
    /// Whether traffic between nodes is mutual TLS (the default) or plaintext.
    pub mtls: MtlsMode,
}

/// Between nodes: mutual TLS, or (trusted networks, measurements) plaintext
/// HTTP/2 with no peer identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsMode {
    #[default]
    Strict,
    /// Plaintext, unauthenticated: policies that name source identities
    /// never match traffic from other nodes.
    Disable,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cert_ttl: Duration::from_secs(24 * 3600),
            source: CertSource::BuiltinCa { dir: PathBuf::from("/var/lib/sluice/ca") },
            mtls: MtlsMode::Strict,
        }
    }
}

impl Identity {
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{}/ns/{namespace}/sa/{service_account}", self.trust_domain)
    }
}

/// Where workload certificates come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    /// A CA of Sluice's own (`ca.pem`, `ca-key.pem`), created if missing: for
    /// development and demos. Nodes that share it trust each other.
    BuiltinCa { dir: PathBuf },
    /// An existing CA that Sluice issues workload certificates with.
    ExternalCa { cert: PathBuf, key: PathBuf },
    /// Certificates issued elsewhere: `<dir>/<namespace>/<service_account>/{cert,key}.pem`,
    /// read again when they change, and the CA certificates to trust.
    Files { trust_bundle: PathBuf, dir: PathBuf },
}

/// Authorization: a deny that applies refuses; else an allow that applies
/// permits; else a service some allow policy names refuses; else `default`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Authorization {
    pub default: PolicyAction,
    pub policies: Vec<AuthzPolicy>,
}

impl Default for Authorization {
    fn default() -> Self {
        Self { default: PolicyAction::Allow, policies: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuthzPolicy {
    pub name: String,
    pub action: PolicyAction,
    /// Indexes into [`MeshConfig::services`]; empty: every service.
    pub services: Vec<usize>,
    /// Service ports; empty: every port.
    pub ports: Vec<u16>,
    /// Source identities; empty: anyone, with or without an identity.
    pub from: Vec<IdentityMatch>,
    /// HTTP conditions. On opaque TCP a deny with conditions applies anyway
    /// (fail closed) and an allow with conditions does not.
    pub request: Option<RouteMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMatch {
    /// `*`: any authenticated identity.
    Any,
    Exact(String),
    /// `spiffe://cluster.local/ns/prod/*`.
    Prefix(String),
}

impl IdentityMatch {
    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdentityMatch::Any => true,
            IdentityMatch::Exact(e) => e == id,
            IdentityMatch::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Telemetry {
    /// `None`: tracing is configured by the OTEL_* environment alone.
    pub tracing: Option<Tracing>,
    /// `None`: no access log.
    pub access_log: Option<AccessLog>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    pub const NAMES: &'static [&'static str] = &["grpc", "http/protobuf"];
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" | "http" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Trace export; every `None` falls back to the standard OTEL_* variable.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Tracing {
    /// OTLP endpoint URL (OTEL_EXPORTER_OTLP_ENDPOINT).
    pub endpoint: Option<String>,
    /// Write spans to this file instead (one OTLP/JSON export request per
    /// line, as the OpenTelemetry Collector's file exporter does).
    pub file: Option<std::path::PathBuf>,
    /// OTEL_EXPORTER_OTLP_PROTOCOL.
    pub protocol: Option<OtlpProtocol>,
    /// Share of new traces recorded, in parts per million (OTEL_TRACES_SAMPLER_ARG).
    pub sampling_ppm: Option<u32>,
    /// Propagation formats injected upstream: `tracecontext`, `b3` (both read always).
    pub propagation: Vec<String>,
    /// OTEL_SERVICE_NAME.
    pub service_name: Option<String>,
    /// Headers sent to the collector (often credentials: redacted in dumps).
    pub headers: BTreeMap<String, String>,
}

impl Tracing {
    pub fn sampling(&self) -> Option<f64> {
        self.sampling_ppm.map(|p| f64::from(p) / 1e6)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessLog {
    pub format: AccessLogFormat,
    /// `None`: standard output.
    pub path: Option<PathBuf>,
}

/// L3/L4 policy: ordered rules, first match wins, then the default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// Network interfaces it applies to (ingress XDP, egress tc).
    pub interfaces: Vec<String>,
    pub default_ingress: PolicyAction,
    pub default_egress: PolicyAction,
    pub rules: Vec<PolicyRule>,
    /// Per source address, on ingress.
    pub rate_limit: Option<RateLimit>,
    /// Drop events per CPU per second sent to the logs; more are only counted.
    pub drop_events_per_second: u32,
    pub xdp_mode: XdpMode,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Native (driver) where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native only: fail if the driver cannot.
    Native,
    /// Generic (after the kernel built the skb): works on every interface.
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

/// An IP prefix; host bits are zero (validation refuses others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The prefix length in the 128-bit space where IPv4 is mapped (::ffff:0:0/96).
    pub fn mapped_bits(&self) -> u32 {
        match self.addr {
            IpAddr::V4(_) => 96 + u32::from(self.prefix),
            IpAddr::V6(_) => u32::from(self.prefix),
        }
    }

    /// Every address, both families.
    pub fn any() -> [Cidr; 2] {
        [
            Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), prefix: 0 },
            Cidr { addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), prefix: 0 },
        ]
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IP protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum L4Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl L4Protocol {
    /// The IPPROTO number (0 for any).
    pub fn number(self) -> u8 {
        match self {
            L4Protocol::Any => 0,
            L4Protocol::Tcp => 6,
            L4Protocol::Udp => 17,
            L4Protocol::Icmp => 1,
            L4Protocol::Icmpv6 => 58,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyRule {
    pub name: String,
    pub action: PolicyAction,
    pub direction: Direction,
    /// Empty: any source.
    pub sources: Vec<Cidr>,
    /// Empty: any destination.
    pub destinations: Vec<Cidr>,
    pub protocol: L4Protocol,
    /// Destination port ranges (inclusive); empty: any port.
    pub ports: Vec<(u16, u16)>,
}

impl PolicyRule {
    /// Kernel rules it takes: one per port range.
    pub fn kernel_rules(&self) -> usize {
        self.ports.len().max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RateLimit {
    pub packets_per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    pub name: String,
    /// For metrics labels (Istio's `destination_service_namespace`); default `default`.
    pub namespace: String,
    /// Its workloads' identity (with `namespace`); default: the service's name.
    pub service_account: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    pub load_balancer: LoadBalancer,
    pub circuit_breaker: CircuitBreaker,
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ServicePort {
    pub port: u16,
    /// The port endpoints listen on, unless an endpoint says otherwise.
    pub target_port: u16,
    pub protocol: Protocol,
    /// L4 only: the kernel connects applications straight to an endpoint; the
    /// proxy never sees these connections.
    pub zero_hop: bool,
}

/// How the proxy treats a service port's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Detected per connection: HTTP/1.x and HTTP/2 (prior knowledge) are
    /// served at L7, TLS and anything else are forwarded as opaque TCP.
    #[default]
    Auto,
    /// Opaque TCP, forwarded byte for byte; no detection.
    Tcp,
    /// HTTP/1.x or HTTP/2 without detection; endpoints are spoken to in the
    /// protocol the client used.
    Http,
    /// HTTP; endpoints are always spoken to in HTTP/1.1.
    Http1,
    /// HTTP/2 (h2c) on both sides.
    Http2,
    /// gRPC: HTTP/2 on both sides; proxy errors become gRPC statuses.
    Grpc,
}

impl Protocol {
    pub const NAMES: &'static [&'static str] = &["auto", "tcp", "http", "http1", "http2", "grpc"];

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(Protocol::Auto),
            "tcp" => Some(Protocol::Tcp),
            "http" => Some(Protocol::Http),
            "http1" | "http/1.1" => Some(Protocol::Http1),
            "http2" | "h2c" | "h2" => Some(Protocol::Http2),
            "grpc" => Some(Protocol::Grpc),
            _ => None,
        }
    }

    /// Whether the port can carry HTTP (and so routes).
    pub fn may_be_http(self) -> bool {
        self != Protocol::Tcp
    }
}

/// How a service's endpoints are chosen for each request (L7) or connection (L4).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight requests weighted by a latency EWMA.
    LeastRequest,
    /// Rendezvous hash of a request header: the same value goes to the same
    /// endpoint while it is healthy (requests without the header: round robin).
    ConsistentHash { header: String },
}

impl LoadBalancer {
    pub const NAMES: &'static [&'static str] = &["round_robin", "least_request", "consistent_hash"];
}

/// Limits per endpoint (summed over the node's workers); over them a request
/// gets a 503 at once instead of piling onto an overloaded endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CircuitBreaker {
    /// Upstream connections per endpoint.
    pub max_connections: u32,
    /// Requests waiting for a connection, per endpoint.
    pub max_pending_requests: u32,
    /// Requests in flight, per endpoint.
    pub max_requests: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024 }
    }
}

/// Ejects an endpoint from load balancing after consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutlierDetection {
    /// Consecutive failures (5xx, connect errors, timeouts) that eject.
    pub consecutive_failures: u32,
    /// First ejection; each further ejection of the same endpoint lasts longer
    /// (times the number of ejections, at most 10×).
    pub base_ejection: Duration,
    /// At most this share of a service's endpoints is ejected at once.
    pub max_ejection_percent: u8,
}

/// One HTTP route: requests to `service` that match go to `to`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub name: String,
    /// Index into [`MeshConfig::services`]: the service applications dialed.
    pub service: usize,
    pub matches: RouteMatch,
    /// Weighted destinations; weights are relative.
    pub to: Vec<Destination>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Until the response headers arrive, retries included; `None`: no limit.
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
}

/// Every condition given must hold; an empty match takes every request.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    /// Empty: any method.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatch>,
}

/// The request's authority (Host header or `:authority`), port ignored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// A regular expression (Rust `regex` syntax) that must match the whole path.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeaderMatch {
    /// Lowercase.
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatch {
    Present,
    Absent,
    Exact(String),
    /// Must match the whole value.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Destination {
    /// Index into [`MeshConfig::services`].
    pub service: usize,
    /// Index into that service's `ports`; `None`: the port the request came
    /// in on (destinations in the route's own service).
    pub port: Option<usize>,
    /// Only endpoints with this version; `None`: all of the service's endpoints.
    pub version: Option<String>,
    pub weight: u32,
}

/// Header changes; names are lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct HeaderOps {
    /// Set (replacing any value already there).
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 2).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    /// Retries may add at most this percentage to the requests of the route...
    pub budget_percent: u32,
    /// ...but this many retries per second are always allowed.
    pub min_retries_per_second: u32,
}

/// What is retried. Connect failures are always safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct RetryOn {
    pub connect_failure: bool,
    /// Any 5xx response from an endpoint (also 504 from a per-try timeout).
    pub server_error: bool,
    /// Only 502, 503 and 504.
    pub gateway_error: bool,
    /// A gRPC status UNAVAILABLE (14) in the response headers.
    pub grpc_unavailable: bool,
    /// The endpoint reset the stream or closed the connection before answering.
    pub reset: bool,
}

impl RetryOn {
    pub const NAMES: &'static [&'static str] =
        &["connect-failure", "5xx", "gateway-error", "unavailable", "reset"];
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Overrides the service port's `target_port` (single-port services only).
    pub port: Option<u16>,
    pub node: Option<String>,
    pub cgroup: Option<PathBuf>,
    /// Version label, for weighted splits (`to: [{version: v2, weight: 10}]`).
    pub version: Option<String>,
}

impl Endpoint {
    /// Where to connect for `port` of the service.
    pub fn socket_addr(&self, port: &ServicePort) -> SocketAddr {
        SocketAddr::new(self.address, self.port.unwrap_or(port.target_port))
    }
}

/// One address the mesh intercepts, and what is behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ServiceAddr {
    /// Index into [`MeshConfig::services`]; also the kernel's `svc_id`.
    pub service: usize,
    /// Index into the service's `ports`.
    pub port: usize,
}

impl MeshConfig {
    /// Every intercepted VIP:port (validation guarantees no duplicates).
    pub fn service_addrs(&self) -> BTreeMap<SocketAddr, ServiceAddr> {
        let mut out = BTreeMap::new();
        for (si, svc) in self.services.iter().enumerate() {
            for vip in &svc.vips {
                for (pi, p) in svc.ports.iter().enumerate() {
                    out.insert(SocketAddr::new(*vip, p.port), ServiceAddr { service: si, port: pi });
                }
            }
        }
        out
    }
}

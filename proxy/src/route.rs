//! The routing table: service address → what is behind it. For opaque TCP, a
//! [`Backend`] (endpoints and round robin); for HTTP, the service's compiled
//! routes, each with a request stack per destination. Built from a validated
//! config and swapped whole on reload: a connection looks the table up once,
//! an HTTP request once per request, and sees either the old table or the new
//! one, never a mix. Requests in flight keep the version they started with.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use sluice_mesh_config::{MeshConfig, Protocol, Route};

use crate::{
    ProxyStats,
    authz::Authz,
    balance::{Balancer, RoundRobin},
    endpoint::EndpointState,
    http::{
        router::{CompiledRoute, HttpService},
        stack::{self, Cluster, UpstreamProto},
        upstream::{Pools, Proto},
    },
    mesh::Remote,
    telemetry::metrics::Destination,
};

/// Where one service port's connections go (opaque TCP).
#[derive(Debug)]
pub struct Backend {
    pub service: String,
    /// Index of the service in the config.
    pub index: usize,
    pub port: u16,
    pub protocol: Protocol,
    /// Here or on another node (`remote`).
    pub endpoints: Vec<Arc<EndpointState>>,
    pub limits: sluice_mesh_config::CircuitBreaker,
    pub authz: Arc<Authz>,
    pub balancer: RoundRobin,
    /// `None` for tcp ports.
    pub http: Option<Arc<HttpService>>,
    /// Metric labels of its connections.
    pub dest: Destination,
}

impl Backend {
    /// The state of `addr` if it is an endpoint of this backend on this node.
    pub fn local_endpoint(&self, addr: SocketAddr) -> Option<Arc<EndpointState>> {
        self.endpoints.iter().find(|s| s.addr == addr && s.remote.is_none()).cloned()
    }
}

/// One immutable version of the table.
#[derive(Debug, Default)]
pub struct Table {
    /// Looked up for every connection and request: a fast hash (the keys
    /// are the config's VIPs, not chosen by clients).
    by_addr: rustc_hash::FxHashMap<SocketAddr, Arc<Backend>>,
    by_service: HashMap<(String, u16), Arc<Backend>>,
}

/// Endpoint state kept across reloads, keyed by service, address, version and node.
type RegKey = (String, SocketAddr, Option<String>, Option<String>);
type Registry = Mutex<HashMap<RegKey, Arc<EndpointState>>>;

struct Builder<'a> {
    config: &'a MeshConfig,
    ctx: &'a Shared,
    clusters: HashMap<(usize, usize, Option<String>), Arc<Cluster>>,
    endpoints: HashMap<RegKey, Arc<EndpointState>>,
}

impl Builder<'_> {
    /// Endpoint state, kept from the last table when the endpoint was there.
    fn state(
        &mut self,
        svc: &sluice_mesh_config::Service,
        e: &sluice_mesh_config::Endpoint,
        port: &sluice_mesh_config::ServicePort,
    ) -> Arc<EndpointState> {
        let k = (svc.name.clone(), e.socket_addr(port), e.version.clone(), e.node.clone());
        if let Some(s) = self.endpoints.get(&k) {
            return Arc::clone(s);
        }
        let remote = remote(self.config, self.ctx.local_node.as_deref(), svc, e);
        let state = self
            .ctx
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
            .filter(|s| {
                s.remote.as_ref().map(|r| (&r.addr, &r.identity))
                    == remote.as_ref().map(|r| (&r.addr, &r.identity))
            })
            .cloned()
            .unwrap_or_else(|| Arc::new(EndpointState::new(k.1, k.2.clone()).with_remote(remote)));
        self.endpoints.insert(k, Arc::clone(&state));
        state
    }

    fn cluster(&mut self, service: usize, port: usize, version: Option<&String>) -> Arc<Cluster> {
        let key = (service, port, version.cloned());
        if let Some(c) = self.clusters.get(&key) {
            return Arc::clone(c);
        }
        let svc = &self.config.services[service];
        let sp = &svc.ports[port];
        let endpoints = svc
            .endpoints
            .iter()
            .filter(|e| version.is_none() || e.version.as_ref() == version)
            .map(|e| self.state(svc, e, sp))
            .collect();
        let upstream = match sp.protocol {
            Protocol::Http2 | Protocol::Grpc => UpstreamProto::Fixed(Proto::Http2),
            Protocol::Http1 => UpstreamProto::Fixed(Proto::Http1),
            _ => UpstreamProto::Downstream,
        };
        let c = Arc::new(Cluster {
            service: svc.name.as_str().into(),
            port: sp.port,
            namespace: svc.namespace.as_str().into(),
            version: version.cloned(),
            endpoints,
            balancer: Balancer::from_config(&svc.load_balancer),
            limits: svc.circuit_breaker,
            outlier: svc.outlier_detection,
            upstream,
        });
        self.clusters.insert(key, Arc::clone(&c));
        c
    }

    fn http_service(&mut self, service: usize, port: usize, authority: String) -> HttpService {
        let svc = &self.config.services[service];
        let mine: Vec<Route> = self.config.routes.iter().filter(|r| r.service == service).cloned().collect();
        let routes = if mine.is_empty() {
            // No routes: every request goes to the service itself.
            vec![Route {
                name: format!("{}-default", svc.name),
                service,
                matches: Default::default(),
                to: vec![sluice_mesh_config::Destination { service, port: None, version: None, weight: 1 }],
                request_headers: Default::default(),
                response_headers: Default::default(),
                timeout: None,
                retries: None,
            }]
        } else {
            mine
        };
        let compiled = routes
            .iter()
            .map(|r| {
                let dests =
                    r.to.iter()
                        .map(|d| {
                            let cluster = self.cluster(d.service, d.port.unwrap_or(port), d.version.as_ref());
                            let s = stack::build(
                                r,
                                cluster,
                                Arc::clone(&self.ctx.pools),
                                Arc::clone(&self.ctx.stats),
                                authority.clone(),
                            );
                            (d.weight, s)
                        })
                        .collect();
                CompiledRoute::new(r, dests)
            })
            .collect();
        HttpService {
            service: svc.name.clone(),
            label: svc.name.as_str().into(),
            namespace: svc.namespace.as_str().into(),
            routes: compiled,
        }
    }
}

impl Table {
    fn build(config: &MeshConfig, ctx: &Shared) -> Self {
        let mut b = Builder { config, ctx, clusters: HashMap::new(), endpoints: HashMap::new() };
        let authz = Arc::new(Authz::new(&config.authorization, config.services.len()));
        let mut by_service = HashMap::new();
        // One backend per service port, shared by all of the service's VIPs, so
        // round robin is fair across VIPs.
        let mut backends: HashMap<(usize, usize), Arc<Backend>> = HashMap::new();
        let mut by_addr = rustc_hash::FxHashMap::default();
        for (addr, sa) in config.service_addrs() {
            let svc = &config.services[sa.service];
            let port = &svc.ports[sa.port];
            let b_ = match backends.get(&(sa.service, sa.port)) {
                Some(b_) => Arc::clone(b_),
                None => {
                    let http = port.protocol.may_be_http().then(|| {
                        let authority = format!("{}:{}", svc.name, port.port);
                        Arc::new(b.http_service(sa.service, sa.port, authority))
                    });
                    let b_ = Arc::new(Backend {
                        service: svc.name.clone(),
                        index: sa.service,
                        port: port.port,
                        protocol: port.protocol,
                        endpoints: svc.endpoints.iter().map(|e| b.state(svc, e, port)).collect(),
                        limits: svc.circuit_breaker,
                        authz: Arc::clone(&authz),
                        balancer: RoundRobin::default(),
                        http,
                        dest: Destination {
                            service: svc.name.as_str().into(),
                            namespace: svc.namespace.as_str().into(),
                            version: None,
                        },
                    });
                    backends.insert((sa.service, sa.port), Arc::clone(&b_));
                    by_service.insert((svc.name.clone(), port.port), Arc::clone(&b_));
                    b_
                }
            };
            by_addr.insert(addr, b_);
        }
        // Endpoints gone from the config are forgotten.
        *ctx.registry.lock().unwrap_or_else(|p| p.into_inner()) = b.endpoints;
        Self { by_addr, by_service }
    }

    pub fn get(&self, orig: SocketAddr) -> Option<&Arc<Backend>> {
        self.by_addr.get(&orig)
    }

    /// A service port by name and port number (deliveries from other nodes).
    pub fn by_service(&self, service: &str, port: u16) -> Option<&Arc<Backend>> {
        self.by_service.get(&(service.to_string(), port))
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

#[derive(Debug)]
struct Shared {
    pools: Arc<Pools>,
    stats: Arc<ProxyStats>,
    registry: Registry,
    /// This node's name in `nodes:`; endpoints of other nodes are remote.
    local_node: Option<String>,
}

/// How to reach `e` when it runs on another node; `None`: it is local.
fn remote(
    config: &MeshConfig,
    local_node: Option<&str>,
    svc: &sluice_mesh_config::Service,
    e: &sluice_mesh_config::Endpoint,
) -> Option<Arc<Remote>> {
    let name = e.node.as_deref()?;
    if Some(name) == local_node {
        return None;
    }
    let node = config.nodes.iter().find(|n| n.name == name)?;
    let id = &config.identity;
    let sni = crate::tls::sni_name(&svc.namespace, &svc.service_account, &id.trust_domain);
    Some(Arc::new(Remote {
        node: name.into(),
        addr: node.socket_addr(),
        identity: id.spiffe_id(&svc.namespace, &svc.service_account).into(),
        sni: rustls::pki_types::ServerName::try_from(sni).ok()?,
    }))
}

/// The live table, shared by the listener and the config watcher.
#[derive(Debug, Clone)]
pub struct Routes {
    current: Arc<ArcSwap<Table>>,
    shared: Arc<Shared>,
}

impl Routes {
    pub fn new(
        config: &MeshConfig,
        pools: Arc<Pools>,
        stats: Arc<ProxyStats>,
        local_node: Option<String>,
    ) -> Self {
        let shared = Arc::new(Shared { pools, stats, registry: Mutex::default(), local_node });
        let table = Table::build(config, &shared);
        Self { current: Arc::new(ArcSwap::from_pointee(table)), shared }
    }

    /// Replaces the table; connections and requests already under way are not touched.
    pub fn apply(&self, config: &MeshConfig) {
        self.current.store(Arc::new(Table::build(config, &self.shared)));
    }

    pub fn load(&self) -> Arc<Table> {
        self.current.load_full()
    }

    /// Every endpoint's state (HTTP services), by service, sorted.
    pub fn endpoint_states(&self) -> Vec<(String, Arc<EndpointState>)> {
        let reg = self.shared.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = reg.iter().map(|((svc, _, _, _), e)| (svc.clone(), Arc::clone(e))).collect();
        v.sort_by(|a, b| (&a.0, a.1.addr, &a.1.version).cmp(&(&b.0, b.1.addr, &b.1.version)));
        v.dedup_by(|a, b| a.0 == b.0 && Arc::ptr_eq(&a.1, &b.1));
        v
    }
}

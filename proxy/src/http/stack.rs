//! The per-destination request stack, read top to bottom:
//!
//! ```text
//! RouteTimeout  the route's overall deadline → 504
//!   Retry       attempts, conditions, budget (replays the request body)
//!     Balance   pick an endpoint (LB, outlier ejection, avoid tried ones),
//!               per-try deadline, record the outcome, send through the pools
//! ```
//!
//! One tower layer per concern; a stack is built per route destination when
//! the config is loaded, so serving a request is only a lookup and a call.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response, Version};
use sluice_mesh_config::{CircuitBreaker, OutlierDetection};
use tower::{Layer, Service, ServiceBuilder, util::BoxCloneSyncService};

use super::{
    Body, BoxFuture, BoxRequest, HttpError, headers,
    retry::{RetryLayer, Tried},
    upstream::{Pools, Proto, Target},
};
use crate::{
    ProxyStats,
    balance::Balancer,
    endpoint::EndpointState,
    telemetry::{Attempt, Outgoing, SpanSlot, record_attempt, trace},
};

pub type HttpStack = BoxCloneSyncService<Request<Body>, Response<Body>, HttpError>;

/// A route destination's stack. Most routes use no layer above [`Balance`]
/// (no retries, no route timeout): theirs is called directly, without the
/// boxed service's clone and second future box for every request.
#[derive(Debug, Clone)]
pub enum Stack {
    Direct(Balance),
    Layered(HttpStack),
}

impl Stack {
    /// Sends a request through the stack; returns the outcome and what the
    /// last attempt recorded (for the metrics and the access log).
    pub async fn call(&self, req: BoxRequest) -> (Result<Response<Body>, HttpError>, Attempt) {
        match self {
            // The attempt comes straight back: no task-local to carry it.
            Stack::Direct(b) => {
                let (res, attempt) = b.0.send(req).await;
                (res, attempt.unwrap_or_default())
            }
            Stack::Layered(s) => crate::telemetry::with_attempt(call(s, *req)).await,
        }
    }
}

/// Which protocol endpoints are spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProto {
    /// The one the client used.
    Downstream,
    Fixed(Proto),
}

/// A set of endpoints requests are balanced over: one service port,
/// optionally one version of it.
#[derive(Debug)]
pub struct Cluster {
    pub service: Arc<str>,
    /// The service port (what applications dial).
    pub port: u16,
    pub namespace: Arc<str>,
    pub version: Option<String>,
    pub endpoints: Vec<Arc<EndpointState>>,
    pub balancer: Balancer,
    pub limits: CircuitBreaker,
    pub outlier: Option<OutlierDetection>,
    pub upstream: UpstreamProto,
}

impl Cluster {
    /// Whether one more endpoint may be ejected (at least one always may).
    fn may_eject(&self, od: &OutlierDetection) -> bool {
        let now = Instant::now();
        let out = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let max = (self.endpoints.len() * usize::from(od.max_ejection_percent) / 100).max(1);
        out < max
    }
}

/// Calls a stack (always ready: back-pressure is the circuit breakers' job).
/// A plain function with concrete types, which keeps the futures that await
/// it `Send` (generic `Oneshot` futures trip a rustc limitation there).
pub fn call(stack: &HttpStack, req: Request<Body>) -> BoxFuture<Result<Response<Body>, HttpError>> {
    stack.clone().call(req)
}

/// Builds the stack for one destination of a route.
pub fn build(
    route: &sluice_mesh_config::Route,
    cluster: Arc<Cluster>,
    pools: Arc<Pools>,
    stats: Arc<ProxyStats>,
    fallback_authority: String,
) -> Stack {
    let per_try = route.retries.as_ref().and_then(|r| r.per_try_timeout);
    // Layers a route does not use are left out: no cost for what is not configured.
    let balance = Balance(Arc::new(BalanceInner {
        cluster,
        pools,
        stats: Arc::clone(&stats),
        per_try,
        fallback_authority: fallback_authority.into(),
    }));
    let retry = route.retries.as_ref().filter(|r| r.attempts > 1).map(|r| RetryLayer::new(r.clone(), stats));
    let timeout = route.timeout.map(|after| RouteTimeoutLayer { route: route.name.clone().into(), after });
    if retry.is_none() && timeout.is_none() {
        return Stack::Direct(balance);
    }
    let stack = ServiceBuilder::new().option_layer(timeout).option_layer(retry).service(balance);
    Stack::Layered(BoxCloneSyncService::new(stack))
}

#[derive(Debug, Clone)]
pub struct RouteTimeoutLayer {
    route: Arc<str>,
    after: Duration,
}

impl<S> Layer<S> for RouteTimeoutLayer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = HttpError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = RouteTimeout;
    fn layer(&self, inner: S) -> RouteTimeout {
        RouteTimeout { inner: BoxCloneSyncService::new(inner), layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RouteTimeout {
    inner: HttpStack,
    layer: RouteTimeoutLayer,
}

impl Service<Request<Body>> for RouteTimeout {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = BoxFuture<Result<Response<Body>, HttpError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fut = self.inner.call(req);
        let after = self.layer.after;
        let route = self.layer.route.to_string();
        Box::pin(async move {
            tokio::time::timeout(after, fut).await.unwrap_or(Err(HttpError::RouteTimeout { route, after }))
        })
    }
}

/// Picks the endpoint and sends; records what happened to it.
/// One `Arc`: the stack clones its innermost service for every request.
#[derive(Debug, Clone)]
pub struct Balance(Arc<BalanceInner>);

#[derive(Debug)]
pub struct BalanceInner {
    cluster: Arc<Cluster>,
    pools: Arc<Pools>,
    stats: Arc<ProxyStats>,
    per_try: Option<Duration>,
    fallback_authority: Arc<str>,
}

impl Service<Request<Body>> for Balance {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = BoxFuture<Result<Response<Body>, HttpError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = Arc::clone(&self.0);
        Box::pin(async move {
            // Layers above may retry: the last attempt is carried out by a task-local.
            let (res, attempt) = this.send(Box::new(req)).await;
            if let Some(a) = attempt {
                record_attempt(a);
            }
            res
        })
    }
}

impl BalanceInner {
    /// One attempt: picks the endpoint, sends, records what happened to
    /// it; returns the outcome and, for a response, the attempt's labels.
    async fn send(&self, mut req: BoxRequest) -> (Result<Response<Body>, HttpError>, Option<Attempt>) {
        let c = &self.cluster;
        // Only requests that may be retried carry the endpoints tried so far.
        let tried = req.extensions().get::<Tried>().cloned();
        let earlier = tried.as_ref().map(Tried::list).unwrap_or_default();
        let Some(ep) = c.balancer.pick(&c.endpoints, req.headers(), &earlier) else {
            let e = HttpError::NoEndpoints { service: c.service.to_string(), version: c.version.clone() };
            return (Err(e), None);
        };
        if let Some(t) = &tried {
            t.push(ep.addr);
        }
        let proto = match c.upstream {
            UpstreamProto::Fixed(p) => p,
            UpstreamProto::Downstream if req.version() == Version::HTTP_2 => Proto::Http2,
            UpstreamProto::Downstream => Proto::Http1,
        };
        headers::for_upstream(&mut req, proto, &self.fallback_authority);
        // Boxed: a span is large, and only traced requests carry one.
        let mut span = match req.extensions_mut().remove::<Outgoing>() {
            None => None,
            Some(o) => o
                .tracing
                .start_attempt(&o.parent, o.b3_single, &mut req, ep.addr, earlier.len() as u32)
                .map(Box::new),
        };
        let target = Target { service: &c.service, port: c.port, ep: &ep, limits: c.limits };
        let started = c.balancer.uses_latency().then(Instant::now);
        let mut res = match self.per_try {
            None => self.pools.send(target, proto, req).await,
            // Boxed, so the future of a request without a per-try
            // timeout is not as large as two sends.
            Some(after) => Box::pin(tokio::time::timeout(after, self.pools.send(target, proto, req)))
                .await
                .unwrap_or_else(|_| {
                    Err(HttpError::TryTimeout { service: c.service.to_string(), endpoint: ep.addr, after })
                }),
        };
        self.record(&ep, &res, started.map(|s| s.elapsed()));
        if let Some(s) = span.as_mut() {
            match &res {
                Ok(r) => trace::finish_http(s, r.status().as_u16(), None, false),
                Err(e) => trace::finish_failed(s, e.reason(), &e.to_string()),
            }
        }
        let mut attempt = None;
        if let Ok(r) = res.as_mut() {
            attempt = Some(Attempt {
                service: Some((Arc::clone(&c.service), Arc::clone(&c.namespace))),
                endpoint: Some(ep.addr),
                version: ep.label.clone(),
            });
            if let Some(s) = span {
                r.extensions_mut().insert(SpanSlot::new(*s));
            }
        }
        (res, attempt)
    }

    fn record(
        &self,
        ep: &Arc<EndpointState>,
        res: &Result<Response<Body>, HttpError>,
        took: Option<Duration>,
    ) {
        let failed = match res {
            Ok(r) => r.status().is_server_error(),
            Err(e) => e.is_endpoint_failure(),
        };
        if let Err(HttpError::Overflow { .. }) = res {
            self.stats.circuit_open.fetch_add(1, Relaxed);
        }
        if !failed {
            ep.record_success();
            if let Some(took) = took {
                ep.record_latency(took);
            }
            return;
        }
        let c = &self.cluster;
        if ep.record_failure(c.outlier.as_ref())
            && let Some(od) = &c.outlier
            && c.may_eject(od)
        {
            let d = ep.eject(od, Instant::now());
            self.stats.ejections.fetch_add(1, Relaxed);
            tracing::warn!(service = %c.service, endpoint = %ep.addr, for_ = ?d, "outlier detection: endpoint ejected after consecutive failures");
        }
    }
}

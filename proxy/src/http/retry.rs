//! Retries as a tower layer: attempts, what is retried, and a budget so that
//! retries add at most a share of the route's load (plus a small floor)
//! instead of multiplying it when an endpoint is in trouble.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use http_body_util::BodyExt;
use sluice_mesh_config::{RetryOn, RetryPolicy};
use tower::{Layer, Service, util::BoxCloneSyncService};

use super::{Body, BoxFuture, HttpError, error::RetryClass, replay::Replay, stack::HttpStack};
use crate::ProxyStats;

/// Request bodies up to this size are kept for a retry.
pub const REPLAY_CAP: usize = 64 * 1024;
const WINDOW: Duration = Duration::from_secs(10);

/// Retries allowed: `percent` of requests over the last 10-20 s, plus
/// `min_per_second`.
#[derive(Debug)]
pub struct Budget {
    percent: u64,
    min_per_second: u64,
    w: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    requests: u64,
    retries: u64,
    prev_requests: u64,
    prev_retries: u64,
}

impl Budget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min_per_second: u64::from(min_per_second),
            w: Mutex::new(Window {
                start: Instant::now(),
                requests: 0,
                retries: 0,
                prev_requests: 0,
                prev_retries: 0,
            }),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        let age = w.start.elapsed();
        if age >= WINDOW {
            (w.prev_requests, w.prev_retries) =
                if age >= 2 * WINDOW { (0, 0) } else { (w.requests, w.retries) };
            (w.requests, w.retries) = (0, 0);
            w.start = Instant::now();
        }
        w
    }

    pub fn deposit(&self) {
        self.window().requests += 1;
    }

    /// Takes one retry from the budget if there is one.
    pub fn withdraw(&self) -> bool {
        let mut w = self.window();
        let allowed =
            self.min_per_second * WINDOW.as_secs() + (w.requests + w.prev_requests) * self.percent / 100;
        if w.retries + w.prev_retries < allowed {
            w.retries += 1;
            true
        } else {
            false
        }
    }
}

/// Endpoints earlier attempts of a request went to, so a retry goes elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<Mutex<Vec<SocketAddr>>>);

impl Tried {
    pub fn list(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn push(&self, a: SocketAddr) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(a);
    }
}

#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    budget: Arc<Budget>,
    stats: Arc<ProxyStats>,
}

impl RetryLayer {
    pub fn new(policy: RetryPolicy, stats: Arc<ProxyStats>) -> Self {
        let budget = Arc::new(Budget::new(policy.budget_percent, policy.min_retries_per_second));
        Self { policy: Arc::new(policy), budget, stats }
    }
}

impl<S> Layer<S> for RetryLayer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = HttpError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = Retry;
    fn layer(&self, inner: S) -> Retry {
        Retry { inner: BoxCloneSyncService::new(inner), layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Retry {
    inner: HttpStack,
    layer: RetryLayer,
}

impl Service<Request<Body>> for Retry {
    type Response = Response<Body>;
    type Error = HttpError;
    type Future = BoxFuture<Result<Response<Body>, HttpError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let tried = Tried::default();
        let policy = Arc::clone(&self.layer.policy);
        let (budget, stats) = (Arc::clone(&self.layer.budget), Arc::clone(&self.layer.stats));
        Box::pin(async move {
            budget.deposit();
            let (parts, body) = req.into_parts();
            let replay = Replay::new(body, REPLAY_CAP);
            let mut attempt = 1;
            loop {
                let mut r = Request::new(replay.attempt().boxed_unsync());
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = parts.uri.clone();
                *r.version_mut() = parts.version;
                *r.headers_mut() = parts.headers.clone();
                // Every attempt carries what the request carried (the trace
                // context, the caller's identity for other nodes, ...).
                *r.extensions_mut() = parts.extensions.clone();
                r.extensions_mut().insert(tried.clone());
                let res = super::stack::call(&inner, r).await;
                let why = retryable(&res, &policy.on);
                if attempt >= policy.attempts || why.is_none() || !replay.replayable() {
                    return res;
                }
                if !budget.withdraw() {
                    stats.retry_budget_exhausted.fetch_add(1, Relaxed);
                    tracing::debug!(attempt, "retry budget exhausted; not retrying");
                    return res;
                }
                stats.retries.fetch_add(1, Relaxed);
                tracing::debug!(attempt, reason = why.unwrap_or_default(), tried = ?tried.list(), "retrying");
                attempt += 1;
            }
        })
    }
}

/// Why a result may be retried under `on`, if it may.
pub fn retryable(res: &Result<Response<Body>, HttpError>, on: &RetryOn) -> Option<&'static str> {
    match res {
        Err(e) => match e.retry_class() {
            RetryClass::ConnectFailure if on.connect_failure => Some("connect-failure"),
            RetryClass::Reset if on.reset => Some("reset"),
            RetryClass::Timeout if on.server_error || on.gateway_error => Some("per-try timeout"),
            _ => None,
        },
        Ok(resp) => {
            let s = resp.status().as_u16();
            if on.server_error && (500..600).contains(&s) {
                return Some("5xx");
            }
            if on.gateway_error && (502..=504).contains(&s) {
                return Some("gateway-error");
            }
            let grpc = resp.headers().get("grpc-status").is_some_and(|v| v == "14");
            (on.grpc_unavailable && grpc).then_some("grpc unavailable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let b = Budget::new(20, 0);
        let mut retries = 0;
        for _ in 0..100 {
            b.deposit();
            if b.withdraw() {
                retries += 1;
            }
        }
        assert_eq!(retries, 20);
        let floor = Budget::new(0, 1);
        assert_eq!((0..50).filter(|_| floor.withdraw()).count(), 10, "1/s over a 10 s window");
    }

    #[test]
    fn what_is_retried() {
        let on = RetryOn { gateway_error: true, grpc_unavailable: true, ..RetryOn::default() };
        let resp = |s: u16, grpc: Option<&str>| {
            let mut r = Response::new(super::super::error::empty());
            *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
            if let Some(g) = grpc {
                r.headers_mut().insert("grpc-status", g.parse().unwrap());
            }
            Ok(r)
        };
        assert_eq!(retryable(&resp(503, None), &on), Some("gateway-error"));
        assert_eq!(retryable(&resp(500, None), &on), None);
        assert_eq!(retryable(&resp(200, Some("14")), &on), Some("grpc unavailable"));
        assert_eq!(retryable(&resp(200, Some("13")), &on), None);
        let refused = Err(HttpError::Connect {
            service: "s".into(),
            endpoint: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert_eq!(retryable(&refused, &on), None, "connect-failure not enabled");
        let on = RetryOn { connect_failure: true, ..on };
        assert_eq!(retryable(&refused, &on), Some("connect-failure"));
    }
}

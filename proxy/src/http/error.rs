//! Why a request was not served, classified once: the status the client gets,
//! where the failure came from, and whether a retry may help.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::Body;

/// A request that the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no route of service {service} matches {method} {path}")]
    NoRoute { service: String, method: String, path: String },
    #[error("{orig} is no longer a mesh service (removed by a config reload)")]
    ServiceGone { orig: SocketAddr },
    #[error("service {service} has no endpoints{}", version.as_ref().map(|v| format!(" with version {v}")).unwrap_or_default())]
    NoEndpoints { service: String, version: Option<String> },
    #[error("circuit breaker open: endpoint {endpoint} of service {service} is at its limit of {max} {what}")]
    Overflow { service: String, endpoint: SocketAddr, what: &'static str, max: u32 },
    #[error("upstream {endpoint} refused the connection (service {service}): {source}")]
    Connect { service: String, endpoint: SocketAddr, source: std::io::Error },
    #[error("upstream {endpoint} did not accept the connection within {after:?} (service {service})")]
    ConnectTimeout { service: String, endpoint: SocketAddr, after: Duration },
    #[error(
        "no connection to upstream {endpoint} was free within {after:?} (service {service}; circuit_breaker.max_connections reached)"
    )]
    PoolTimeout { service: String, endpoint: SocketAddr, after: Duration },
    #[error("upstream {endpoint} failed before answering (service {service}): {reason}")]
    UpstreamReset { service: String, endpoint: SocketAddr, reason: String },
    #[error("the request body could not be read: {reason}")]
    BadRequestBody { reason: String },
    #[error("no response from upstream within the route timeout of {after:?} (route {route})")]
    RouteTimeout { route: String, after: Duration },
    #[error("upstream {endpoint} did not answer within the per-try timeout of {after:?} (service {service})")]
    TryTimeout { service: String, endpoint: SocketAddr, after: Duration },
    #[error("upgrade to {protocol} failed: {reason}")]
    Upgrade { protocol: String, reason: String },
    #[error("{source_id} may not call service {service} ({policy})")]
    Forbidden { service: String, source_id: String, policy: String },
}

/// Where a failure came from (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Downstream,
    Upstream,
    Proxy,
}

/// What may be retried, matched against a route's `retries.on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    Never,
    ConnectFailure,
    /// The endpoint reset or closed before any response.
    Reset,
    /// Acts as a 504 from upstream.
    Timeout,
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::NoRoute { .. } => StatusCode::NOT_FOUND,
            HttpError::Forbidden { .. } => StatusCode::FORBIDDEN,
            HttpError::BadRequestBody { .. } => StatusCode::BAD_REQUEST,
            HttpError::UpstreamReset { .. } | HttpError::Upgrade { .. } => StatusCode::BAD_GATEWAY,
            HttpError::RouteTimeout { .. } | HttpError::TryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            HttpError::ServiceGone { .. }
            | HttpError::NoEndpoints { .. }
            | HttpError::Overflow { .. }
            | HttpError::PoolTimeout { .. }
            | HttpError::Connect { .. }
            | HttpError::ConnectTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn source_kind(&self) -> Source {
        match self {
            HttpError::BadRequestBody { .. } => Source::Downstream,
            HttpError::Connect { .. }
            | HttpError::ConnectTimeout { .. }
            | HttpError::UpstreamReset { .. }
            | HttpError::TryTimeout { .. }
            | HttpError::Upgrade { .. } => Source::Upstream,
            _ => Source::Proxy,
        }
    }

    pub fn retry_class(&self) -> RetryClass {
        match self {
            HttpError::Connect { .. } | HttpError::ConnectTimeout { .. } => RetryClass::ConnectFailure,
            HttpError::UpstreamReset { .. } => RetryClass::Reset,
            HttpError::TryTimeout { .. } => RetryClass::Timeout,
            _ => RetryClass::Never,
        }
    }

    /// A short reason token, sent as `x-sluice-error` and used in logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::NoRoute { .. } => "no_route",
            HttpError::ServiceGone { .. } => "service_gone",
            HttpError::NoEndpoints { .. } => "no_endpoints",
            HttpError::Overflow { .. } => "circuit_breaker",
            HttpError::PoolTimeout { .. } => "pool_timeout",
            HttpError::Connect { .. } => "connect_failure",
            HttpError::ConnectTimeout { .. } => "connect_timeout",
            HttpError::UpstreamReset { .. } => "upstream_reset",
            HttpError::BadRequestBody { .. } => "bad_request_body",
            HttpError::RouteTimeout { .. } => "route_timeout",
            HttpError::TryTimeout { .. } => "per_try_timeout",
            HttpError::Upgrade { .. } => "upgrade_failed",
            HttpError::Forbidden { .. } => "forbidden",
        }
    }

    /// Envoy's response flag for it (Istio's `response_flags` label).
    pub fn response_flags(&self) -> &'static str {
        match self {
            HttpError::NoRoute { .. } | HttpError::ServiceGone { .. } => "NR",
            HttpError::NoEndpoints { .. } => "UH",
            HttpError::Overflow { .. } | HttpError::PoolTimeout { .. } => "UO",
            HttpError::Connect { .. } | HttpError::ConnectTimeout { .. } => "UF",
            HttpError::UpstreamReset { .. } => "UC",
            HttpError::BadRequestBody { .. } => "DPE",
            HttpError::RouteTimeout { .. } | HttpError::TryTimeout { .. } => "UT",
            HttpError::Upgrade { .. } => "UPE",
            HttpError::Forbidden { .. } => "RBAC",
        }
    }

    /// The endpoint the failure happened at, if one was reached.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            HttpError::Overflow { endpoint, .. }
            | HttpError::Connect { endpoint, .. }
            | HttpError::ConnectTimeout { endpoint, .. }
            | HttpError::PoolTimeout { endpoint, .. }
            | HttpError::UpstreamReset { endpoint, .. }
            | HttpError::TryTimeout { endpoint, .. } => Some(*endpoint),
            _ => None,
        }
    }

    /// Whether this failure counts against the endpoint for outlier detection.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            HttpError::Connect { .. }
                | HttpError::ConnectTimeout { .. }
                | HttpError::UpstreamReset { .. }
                | HttpError::TryTimeout { .. }
        )
    }

    /// The response a client gets. gRPC clients get a trailers-only gRPC
    /// status (HTTP 200), which is what their libraries understand.
    pub fn to_response(&self, grpc: bool) -> Response<Body> {
        let message = self.to_string();
        let mut resp = if grpc {
            let code = match self.status() {
                StatusCode::NOT_FOUND => 12,      // UNIMPLEMENTED
                StatusCode::FORBIDDEN => 7,       // PERMISSION_DENIED
                StatusCode::GATEWAY_TIMEOUT => 4, // DEADLINE_EXCEEDED
                StatusCode::BAD_REQUEST => 13,    // INTERNAL
                _ => 14,                          // UNAVAILABLE
            };
            let mut r = Response::new(empty());
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(code));
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                h.insert("grpc-message", v);
            }
            r
        } else {
            let mut r = Response::new(full(format!("{message}\n")));
            *r.status_mut() = self.status();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        };
        resp.headers_mut().insert("x-sluice-error", HeaderValue::from_static(self.reason()));
        resp
    }
}

/// gRPC's percent-encoding of grpc-message (RFC 3986 unreserved kept, and space).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn full(s: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(s.into()).map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn empty() -> Body {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = HttpError::Connect {
            service: "reviews".into(),
            endpoint: "127.0.0.1:9080".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(e.status(), 503);
        assert_eq!(e.retry_class(), RetryClass::ConnectFailure);
        assert!(e.to_string().contains("upstream 127.0.0.1:9080 refused the connection (service reviews)"));
        let r = e.to_response(false);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-sluice-error"], "connect_failure");
        let g = e.to_response(true);
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["grpc-status"], "14");
        assert!(g.headers()["grpc-message"].to_str().unwrap().contains("refused"));
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }
}

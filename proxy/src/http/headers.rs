//! Header handling between the two hops: hop-by-hop headers stay on their
//! hop, routes' header changes, and the request-target form each upstream
//! protocol needs.

use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version, header};
use sluice_mesh_config::HeaderOps;

use super::upstream::Proto;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::TRAILER,
];

/// Whether a request asks for a protocol upgrade (WebSocket, ...).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && connection_has(h, "upgrade")
}

/// Whether the Connection header lists `token` (case-insensitive).
pub fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Removes hop-by-hop headers, and those the Connection header names. An
/// upgrade keeps `Upgrade` and `Connection: upgrade`, which it needs.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages have none of these (gRPC's `te: trailers` may cross):
    // one pass over the names decides, with no lookup unless TE is there.
    let any = h.keys().any(|n| {
        HOP_BY_HOP.contains(n)
            || n == header::UPGRADE
            || (n == header::TE && h.get(header::TE).is_some_and(|v| v != "trailers"))
    });
    if !any && !keep_upgrade {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    // TE: only "trailers" may cross (gRPC needs it).
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

pub fn apply(ops: &HeaderOps, h: &mut HeaderMap) {
    for name in &ops.remove {
        h.remove(name.as_str());
    }
    for (name, value) in &ops.set {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            h.insert(n, v);
        }
    }
}

/// The request's authority: `:authority`/absolute URI, else Host.
pub fn authority(req: &Request<impl Sized>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string)
}

/// Puts the request-target and Host in the form `proto` needs: origin-form
/// and a Host header for HTTP/1.1, an absolute URI for HTTP/2.
pub fn for_upstream<B>(req: &mut Request<B>, proto: Proto, fallback_authority: &str) {
    // Already in the form `proto` needs (the common case): nothing to rewrite.
    match proto {
        Proto::Http1
            if req.version() == Version::HTTP_11
                && req.uri().scheme().is_none()
                && req.headers().contains_key(header::HOST) =>
        {
            return;
        }
        Proto::Http2
            if req.version() == Version::HTTP_2
                && req.uri().scheme() == Some(&http::uri::Scheme::HTTP)
                && req.uri().authority().is_some()
                && !req.headers().contains_key(header::HOST) =>
        {
            return;
        }
        _ => {}
    }
    let authority = authority(req).unwrap_or_else(|| fallback_authority.to_string());
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    match proto {
        Proto::Http1 => {
            if let Ok(u) = Uri::try_from(path.as_str()) {
                *req.uri_mut() = u;
            }
            if !req.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(&authority)
            {
                req.headers_mut().insert(header::HOST, v);
            }
            *req.version_mut() = Version::HTTP_11;
        }
        Proto::Http2 => {
            if let Ok(u) = Uri::try_from(format!("http://{authority}{path}")) {
                *req.uri_mut() = u;
            }
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("x-app", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-app"));
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn request_target_per_protocol() {
        let mut r =
            Request::builder().uri("http://svc.local:80/a?b=1").version(Version::HTTP_2).body(()).unwrap();
        for_upstream(&mut r, Proto::Http1, "127.100.0.1:80");
        assert_eq!(r.uri(), "/a?b=1");
        assert_eq!(r.headers()[header::HOST], "svc.local:80");
        for_upstream(&mut r, Proto::Http2, "127.100.0.1:80");
        assert_eq!(r.uri(), "http://svc.local:80/a?b=1");
        assert!(!r.headers().contains_key(header::HOST));
        let mut r = Request::builder().uri("/x").body(()).unwrap();
        for_upstream(&mut r, Proto::Http1, "127.100.0.1:80");
        assert_eq!(r.headers()[header::HOST], "127.100.0.1:80");
        // An HTTP/2 request's own target is kept but for its scheme: the
        // hop to the endpoint is plaintext.
        let mut r = Request::builder()
            .uri("https://svc.local/g?x")
            .version(Version::HTTP_2)
            .header(header::HOST, "other")
            .body(())
            .unwrap();
        for_upstream(&mut r, Proto::Http2, "127.100.0.1:80");
        assert_eq!(r.uri(), "http://svc.local/g?x");
        assert!(!r.headers().contains_key(header::HOST));
    }
}

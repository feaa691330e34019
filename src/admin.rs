//! The admin listener on 127.0.0.1: `/ready`, `/live`, `/metrics`
//! (Prometheus text), `/config_dump` (secrets redacted) and `/logging`
//! (POST to change the log filter). Every kernel counter of the node is in
//! `/metrics`: redirection, workers, policy (by reason and by rule, and the
//! drop events logged), with the proxy's Istio-compatible request metrics.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/metrics` renders, gathered on each scrape.
pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// What `/config_dump` shows: the config in force and how traces leave.
#[derive(Debug, Default)]
pub(crate) struct Dump {
    pub config: Option<sluice_mesh_config::MeshConfig>,
    pub trace_export: Option<(String, &'static str)>,
}

/// Shared state of the admin endpoints.
#[derive(Clone)]
pub(crate) struct Admin {
    pub ready: Arc<AtomicBool>,
    pub render: Arc<Mutex<Option<Render>>>,
    /// The config in force (for /config_dump and reload comparisons).
    pub config: Arc<Mutex<Option<sluice_mesh_config::MeshConfig>>>,
    trace_export: Arc<Mutex<Option<(String, &'static str)>>>,
}

const HELP: &str = "sluice admin API (127.0.0.1 only)
GET  /ready          200 once the node serves
GET  /live           200 while the process runs
GET  /metrics        Prometheus text
GET  /config_dump    the config in force, JSON, secrets redacted
GET  /logging        the log filter in force
POST /logging?level=debug   change it (a level, or directives like info,sluice_proxy=debug)
";

impl Admin {
    pub fn new() -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            render: Arc::new(Mutex::new(None)),
            config: Arc::default(),
            trace_export: Arc::default(),
        }
    }

    pub fn set_config(
        &self,
        config: &sluice_mesh_config::MeshConfig,
        export: Option<&crate::otel::TraceExport>,
    ) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(config.clone());
        *self.trace_export.lock().unwrap_or_else(|p| p.into_inner()) =
            export.map(|e| (redact_url(&e.endpoint), e.protocol));
    }

    /// Binds 127.0.0.1:`port` and serves until `stop`. SO_REUSEPORT: during a
    /// takeover the old and the new node both answer on the same port.
    pub async fn serve(self, port: u16, stop: CancellationToken) -> std::io::Result<SocketAddr> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.listen(128)?;
        s.set_nonblocking(true)?;
        let listener = TcpListener::from_std(s.into())?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let admin = self.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, std::convert::Infallible>(admin.handle(&req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(addr)
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |code: StatusCode, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = code;
            r
        };
        let get = req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD;
        let post = req.method() == hyper::Method::POST;
        let path = req.uri().path();
        let only = |allowed: &'static str| {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes {allowed}\n"));
            r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allowed));
            r
        };
        match path {
            "/logging" if post => match query_param(req.uri().query(), "level") {
                None => {
                    text(StatusCode::BAD_REQUEST, "missing ?level=: e.g. POST /logging?level=debug\n".into())
                }
                Some(level) => match crate::logging::set(&level) {
                    Ok(()) => {
                        tracing::warn!(filter = %level, "log filter changed through the admin API");
                        text(StatusCode::OK, format!("log filter: {level}\n"))
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
            },
            "/logging" if get => text(StatusCode::OK, format!("log filter: {}\n", crate::logging::current())),
            "/logging" => only("GET, POST"),
            _ if !get => only("GET"),
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" if self.ready.load(Ordering::SeqCst) => text(StatusCode::OK, "ready\n".into()),
            "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
            "/metrics" => {
                let render = self.render.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let mut r = text(StatusCode::OK, render.map(|f| f()).unwrap_or_default());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            "/config_dump" => {
                let dump = Dump {
                    config: self.config.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    trace_export: self.trace_export.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                };
                let mut r = text(StatusCode::OK, config_dump(&dump));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            "/" | "/help" => text(StatusCode::OK, HELP.into()),
            _ => text(StatusCode::NOT_FOUND, format!("no such endpoint\n\n{HELP}")),
        }
    }
}

fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Credentials in a URL (`user:pass@host`) are not shown.
fn redact_url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else { return u.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        None => u.to_string(),
    }
}

const REDACTED: &str = "<redacted>";

/// The dump as JSON: header values sent to the collector (credentials, as a
/// rule) and credentials in URLs are replaced.
pub(crate) fn config_dump(d: &Dump) -> String {
    let mut v = serde_json::json!({
        "config": d.config,
        "trace_export": d.trace_export.as_ref().map(|(e, p)| serde_json::json!({"endpoint": e, "protocol": p})),
        "log_filter": crate::logging::current(),
    });
    if let Some(t) = v.pointer_mut("/config/telemetry/tracing") {
        if let Some(h) = t.get_mut("headers").and_then(|h| h.as_object_mut()) {
            for val in h.values_mut() {
                *val = serde_json::Value::String(REDACTED.into());
            }
        }
        if let Some(e) = t.get_mut("endpoint")
            && let Some(s) = e.as_str()
        {
            *e = serde_json::Value::String(redact_url(s));
        }
    }
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// Prometheus text: HELP/TYPE once per family, then the samples.
#[derive(Default)]
pub(crate) struct Metrics {
    out: String,
    last: String,
}

impl Metrics {
    pub fn sample(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        if self.last != name {
            let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            self.last = name.to_string();
        }
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_and_query() {
        assert_eq!(
            redact_url("https://user:secret@otel.example:4318/v1/traces"),
            "https://<redacted>@otel.example:4318/v1/traces"
        );
        assert_eq!(redact_url("http://127.0.0.1:4317"), "http://127.0.0.1:4317");
        assert_eq!(
            query_param(Some("a=1&level=info%2Csluice_proxy%3Ddebug"), "level").as_deref(),
            Some("info,sluice_proxy=debug")
        );
        assert_eq!(query_param(Some("level=debug"), "x"), None);
        let cfg = sluice_mesh_config::parse(
            std::path::Path::new("t.yaml"),
            "services: []\ntelemetry:\n  tracing:\n    endpoint: http://u:p@127.0.0.1:4318\n    headers: {authorization: Bearer s3cret}\n",
        )
        .unwrap();
        let dump = config_dump(&Dump { config: Some(cfg), trace_export: None });
        assert!(!dump.contains("s3cret") && !dump.contains("u:p@"), "{dump}");
        assert!(dump.contains("\"authorization\": \"<redacted>\""), "{dump}");
    }
}

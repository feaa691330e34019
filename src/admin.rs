//! The admin listener on 127.0.0.1: `/ready`, `/live` and `/metrics`
//! (Prometheus text). Every kernel counter of the node is here: redirection,
//! workers, policy (by reason and by rule, and the drop events logged).

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

/// Shared state of the admin endpoints.
#[derive(Clone)]
pub(crate) struct Admin {
    pub ready: Arc<AtomicBool>,
    pub render: Arc<Mutex<Option<Render>>>,
}

impl Admin {
    pub fn new() -> Self {
        Self { ready: Arc::new(AtomicBool::new(false)), render: Arc::new(Mutex::new(None)) }
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
        if req.method() != hyper::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
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
            _ => text(StatusCode::NOT_FOUND, "try /ready, /live or /metrics\n".into()),
        }
    }
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

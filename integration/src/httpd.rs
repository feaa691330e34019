//! An HTTP/1.1 + h2c endpoint for the L7 tests, with behaviour chosen per
//! request so a test can provoke what it asserts:
//!
//! - the body describes what arrived: `endpoint=NAME`, method, path, version,
//!   body length and SHA-256, and every `x-*` request header (`h:name=value`);
//! - `x-status: N` answers with status N; `x-delay-ms: N` waits first;
//! - `/fail/KEY/N...` answers 503 to the first N requests with that KEY;
//! - an `Upgrade` request gets 101 and an echo of the upgraded stream.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};

#[derive(Debug, Default)]
struct State {
    requests: AtomicUsize,
    connections: AtomicUsize,
    fail: Mutex<HashMap<String, usize>>,
    /// Every answer with this status (0: normal).
    always: AtomicUsize,
    /// Every answer this much later, in ms.
    delay_ms: AtomicUsize,
}

/// A running endpoint; stops with the test process (its runtime thread is detached).
#[derive(Debug, Clone)]
pub struct HttpEndpoint {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<State>,
}

impl HttpEndpoint {
    pub fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0")
    }

    pub fn start_on(name: &str, bind: &str) -> Self {
        let std_listener = std::net::TcpListener::bind(bind).expect("bind test endpoint");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let (st, n) = (Arc::clone(&state), name.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    st.connections.fetch_add(1, SeqCst);
                    let (st, n) = (Arc::clone(&st), n.clone());
                    tokio::spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |req| answer(req, Arc::clone(&st), n.clone()));
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
        });
        Self { addr, name: name.to_string(), state }
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(SeqCst)
    }

    /// Answer every request `ms` later from now on.
    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms as usize, SeqCst);
    }

    /// Answer every request with `status` from now on (0: back to normal).
    pub fn set_always(&self, status: u16) {
        self.state.always.store(usize::from(status), SeqCst);
    }
}

async fn answer(
    mut req: Request<Incoming>,
    st: Arc<State>,
    name: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    st.requests.fetch_add(1, SeqCst);
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let fixed = st.delay_ms.load(SeqCst) as u64;
    if fixed > 0 {
        tokio::time::sleep(Duration::from_millis(fixed)).await;
    }
    if let Some(ms) = header("x-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        let proto = header("upgrade").unwrap_or_default();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(http::header::UPGRADE, proto.parse().unwrap_or(http::HeaderValue::from_static("x")));
        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        return Ok(resp);
    }
    let mut status = header("x-status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(200);
    let always = st.always.load(SeqCst);
    if always != 0 {
        status = always as u16;
    }
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/fail/") {
        let mut parts = rest.split('/');
        let (key, n) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().and_then(|n| n.parse().ok()).unwrap_or(0),
        );
        let mut fail = st.fail.lock().unwrap();
        let seen = fail.entry(key).or_default();
        *seen += 1;
        if *seen <= n {
            status = 503;
        }
    }
    let mut text = format!(
        "endpoint={name}\nmethod={}\npath={}\nversion={:?}\n",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.version()
    );
    let mut xs: Vec<String> = req
        .headers()
        .iter()
        .filter(|(k, _)| {
            k.as_str().starts_with("x-")
                || ["host", "te", "traceparent", "tracestate", "b3"].contains(&k.as_str())
        })
        .map(|(k, v)| format!("h:{}={}\n", k, v.to_str().unwrap_or("?")))
        .collect();
    xs.sort();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    text.push_str(&format!("body_len={}\nbody_sha={:x}\n", body.len(), Sha256::digest(&body)));
    for x in xs {
        text.push_str(&x);
    }
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert("x-endpoint", name.parse().unwrap_or(http::HeaderValue::from_static("?")));
    Ok(resp)
}

//! The demo's three services and its load generator, each a small real
//! program run as `sluice demo-app <kind>` in its own cgroup: an HTTP/1.1
//! frontend, a gRPC pricing backend (HTTP/2, with a plain TCP export port),
//! a flaky stock service, and the load. They use the mesh as applications
//! do: they dial service addresses and pass the trace context on. Each writes
//! what it saw (per route: requests, errors, p50/p99 over the last seconds)
//! to a JSON file the demo's live view reads.

use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{Failure, exit};

#[derive(Debug, clap::Args)]
pub(crate) struct AppArgs {
    #[command(subcommand)]
    pub kind: AppKind,
    /// Join this cgroup first: it is the workload's identity in the mesh.
    #[arg(long, global = true)]
    pub cgroup: Option<PathBuf>,
    /// Write per-route statistics here (JSON, twice a second).
    #[arg(long, global = true)]
    pub stats: Option<PathBuf>,
    /// How this instance names itself in answers, e.g. pricing@node-b.
    #[arg(long, global = true, default_value = "demo")]
    pub name: String,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AppKind {
    /// HTTP/1.1: GET /shop/<item> asks pricing (gRPC) and stock (HTTP).
    Frontend {
        #[arg(long)]
        listen: SocketAddr,
        /// The pricing service address (dialed through the mesh).
        #[arg(long)]
        pricing: SocketAddr,
        /// The stock service address.
        #[arg(long)]
        stock: SocketAddr,
    },
    /// gRPC over HTTP/2: /demo.Pricing/Quote; and a TCP port that takes
    /// bytes and answers how many arrived.
    Pricing {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        export_listen: SocketAddr,
    },
    /// HTTP/1.1: GET /stock/<item>; fails a share of requests (503), and
    /// all of them during recurring outages (500).
    Stock {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// An outage starts every this many seconds...
        #[arg(long)]
        outage_every: Option<u64>,
        /// ...and lasts this many.
        #[arg(long, default_value_t = 0)]
        outage_for: u64,
    },
    /// Drives the demo: shoppers on the frontend, calls the policy refuses,
    /// and TCP exports on a zero-hop port.
    Load {
        #[arg(long)]
        web: SocketAddr,
        /// Pricing, called directly (the policy should refuse it).
        #[arg(long)]
        pricing: Option<SocketAddr>,
        /// A zero-hop TCP port to send exports to.
        #[arg(long)]
        export: Option<SocketAddr>,
        /// Shopper requests per second, over all connections.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 4)]
        connections: u32,
        /// Bytes per export connection.
        #[arg(long, default_value_t = 1 << 20)]
        export_bytes: usize,
    },
}

pub(crate) fn main(args: AppArgs) -> Result<(), Failure> {
    let fail = |e: String| Failure::new(exit::FAILED, e);
    // A demo app never outlives the demo, even one killed with SIGKILL.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    if let Some(cg) = &args.cgroup {
        std::fs::write(cg.join("cgroup.procs"), "0")
            .map_err(|e| fail(format!("joining the cgroup {}: {e}", cg.display())))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let stats = Stats::new(args.stats.clone());
    let name: Arc<str> = args.name.as_str().into();
    rt.block_on(async move {
        tokio::spawn(Arc::clone(&stats).write_every(Duration::from_millis(500)));
        let r = match args.kind {
            AppKind::Frontend { listen, pricing, stock } => frontend(listen, pricing, stock, stats).await,
            AppKind::Pricing { listen, export_listen } => pricing(listen, export_listen, name).await,
            AppKind::Stock { listen, fail_rate, outage_every, outage_for } => {
                stock(listen, name, fail_rate, outage_every.map(|e| (e.max(1), outage_for))).await
            }
            AppKind::Load { web, pricing, export, rate, connections, export_bytes } => {
                load(web, pricing, export, rate, connections, export_bytes, stats).await
            }
        };
        r.map_err(|e| fail(format!("{}: {e}", args.name)))
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------
// Statistics

/// How long the live figures look back.
const WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Route {
    recent: VecDeque<(Instant, f64)>,
    total: u64,
    errors: u64,
    bytes: u64,
    by: BTreeMap<String, u64>,
}

/// What one route looked like, as the live view reads it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct RouteSnapshot {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub total: u64,
    pub errors: u64,
    pub bytes: u64,
    /// Answers per answering instance (e.g. pricing@node-b).
    pub by: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub(crate) struct Stats {
    path: Option<PathBuf>,
    started: Instant,
    routes: Mutex<BTreeMap<&'static str, Route>>,
}

impl Stats {
    fn new(path: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self { path, started: Instant::now(), routes: Mutex::default() })
    }

    fn record(&self, route: &'static str, took: Duration, ok: bool, by: Option<&str>, bytes: u64) {
        let Ok(mut routes) = self.routes.lock() else { return };
        let r = routes.entry(route).or_default();
        let now = Instant::now();
        r.recent.push_back((now, took.as_secs_f64() * 1000.0));
        while r.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > WINDOW) {
            r.recent.pop_front();
        }
        r.total += 1;
        r.errors += u64::from(!ok);
        r.bytes += bytes;
        if let Some(b) = by {
            *r.by.entry(b.to_string()).or_default() += 1;
        }
    }

    fn snapshot(&self) -> BTreeMap<String, RouteSnapshot> {
        let now = Instant::now();
        let span = now.duration_since(self.started).min(WINDOW).as_secs_f64().max(0.5);
        let Ok(routes) = self.routes.lock() else { return BTreeMap::new() };
        routes
            .iter()
            .map(|(name, r)| {
                let mut ms: Vec<f64> = r
                    .recent
                    .iter()
                    .filter(|(t, _)| now.duration_since(*t) <= WINDOW)
                    .map(|(_, m)| *m)
                    .collect();
                ms.sort_by(f64::total_cmp);
                let q = |p: f64| {
                    if ms.is_empty() { 0.0 } else { ms[((ms.len() - 1) as f64 * p).round() as usize] }
                };
                let snap = RouteSnapshot {
                    rps: ms.len() as f64 / span,
                    p50_ms: q(0.50),
                    p99_ms: q(0.99),
                    total: r.total,
                    errors: r.errors,
                    bytes: r.bytes,
                    by: r.by.clone(),
                };
                (name.to_string(), snap)
            })
            .collect()
    }

    async fn write_every(self: Arc<Self>, every: Duration) {
        let Some(path) = self.path.clone() else { return };
        let tmp = path.with_extension("tmp");
        loop {
            tokio::time::sleep(every).await;
            if let Ok(json) = serde_json::to_vec(&self.snapshot())
                && std::fs::write(&tmp, json).is_ok()
            {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// gRPC, by hand: a length-prefixed protobuf message and a grpc-status trailer.

#[derive(Clone, PartialEq, prost::Message)]
struct QuoteRequest {
    #[prost(string, tag = "1")]
    item: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct QuoteReply {
    #[prost(string, tag = "1")]
    item: String,
    #[prost(uint64, tag = "2")]
    price_cents: u64,
    #[prost(string, tag = "3")]
    served_by: String,
}

const QUOTE_PATH: &str = "/demo.Pricing/Quote";

fn grpc_frame(m: &impl Message) -> Bytes {
    let body = m.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

fn grpc_unframe<M: Message + Default>(mut b: Bytes) -> Result<M, String> {
    if b.len() < 5 || b[0] != 0 {
        return Err("not an uncompressed gRPC message".into());
    }
    let n = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
    b.advance(5);
    if b.len() != n {
        return Err(format!("gRPC message of {} bytes, {n} announced", b.len()));
    }
    M::decode(b).map_err(|e| e.to_string())
}

/// A response body of a few frames (data, then trailers).
#[derive(Debug)]
struct Frames(VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn grpc_response(status: u32, message: &str, reply: Option<Bytes>) -> Response<Frames> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if let Ok(m) = HeaderValue::from_str(message) {
        trailers.insert("grpc-message", m);
    }
    let mut frames = VecDeque::new();
    if let Some(r) = reply {
        frames.push_back(Frame::data(r));
    }
    frames.push_back(Frame::trailers(trailers));
    let mut resp = Response::new(Frames(frames));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

/// The gRPC status of a response: from its trailers, or its headers
/// (trailers-only, as a proxy answers a refused call).
fn grpc_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<u32> {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// One unary Quote call; Ok((status, reply)).
async fn call_quote(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: SocketAddr,
    item: &str,
    context: &HeaderMap,
) -> Result<(u32, Option<QuoteReply>), BoxError> {
    let mut req = Request::post(format!("http://{target}{QUOTE_PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(&QuoteRequest { item: item.to_string() })))?;
    req.headers_mut().extend(context.clone());
    let resp = client.request(req).await?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let status = grpc_status(&parts.headers, trailers.as_ref()).unwrap_or(2);
    let data = collected.to_bytes();
    let reply = if status == 0 { Some(grpc_unframe::<QuoteReply>(data)?) } else { None };
    Ok((status, reply))
}

// ---------------------------------------------------------------------------
// The services

/// Trace context headers an instrumented application passes on.
fn trace_context(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for k in [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
    ] {
        if let Some(v) = h.get(k) {
            out.insert(k, v.clone());
        }
    }
    out
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn serve_http1<S, B>(listen: SocketAddr, handler: S) -> Result<(), BoxError>
where
    S: Fn(Request<Incoming>) -> B + Clone + Send + 'static,
    B: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let l = TcpListener::bind(listen).await?;
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
        });
    }
}

struct Frontend {
    stats: Arc<Stats>,
    grpc: Client<HttpConnector, Full<Bytes>>,
    http: Client<HttpConnector, Empty<Bytes>>,
    pricing: SocketAddr,
    stock: SocketAddr,
}

async fn frontend(
    listen: SocketAddr,
    pricing: SocketAddr,
    stock: SocketAddr,
    stats: Arc<Stats>,
) -> Result<(), BoxError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let fe = Arc::new(Frontend {
        stats,
        grpc: Client::builder(TokioExecutor::new()).http2_only(true).build(connector.clone()),
        http: Client::builder(TokioExecutor::new()).build(connector),
        pricing,
        stock,
    });
    serve_http1(listen, move |req| {
        let fe = Arc::clone(&fe);
        async move { fe.handle(req).await }
    })
    .await
}

impl Frontend {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return text(StatusCode::OK, "ok\n");
        }
        if path.starts_with("/admin") {
            return text(StatusCode::OK, "the admin page (the mesh should not let you here)\n");
        }
        let Some(item) = path.strip_prefix("/shop/").filter(|i| !i.is_empty()) else {
            return text(StatusCode::NOT_FOUND, "try GET /shop/<item>\n");
        };
        let ctx = trace_context(req.headers());

        let t = Instant::now();
        let price = match call_quote(&self.grpc, self.pricing, item, &ctx).await {
            Ok((0, Some(q))) => {
                self.stats.record("pricing", t.elapsed(), true, Some(&q.served_by), 0);
                Ok(q)
            }
            Ok((status, _)) => {
                self.stats.record("pricing", t.elapsed(), false, None, 0);
                Err(format!("pricing answered grpc-status {status}"))
            }
            Err(e) => {
                self.stats.record("pricing", t.elapsed(), false, None, 0);
                Err(format!("pricing failed: {e}"))
            }
        };

        let t = Instant::now();
        let mut sreq = Request::get(format!("http://{}/stock/{item}", self.stock));
        if let Some(h) = sreq.headers_mut() {
            h.extend(ctx);
        }
        let stock = match sreq.body(Empty::new()) {
            Ok(r) => self.http.request(r).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let stock = match stock {
            Ok(resp) => {
                let status = resp.status();
                let by = resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()).map(str::to_string);
                let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                self.stats.record("stock", t.elapsed(), status.is_success(), by.as_deref(), 0);
                if status.is_success() {
                    Ok(String::from_utf8_lossy(&body).trim().to_string())
                } else {
                    Err(format!("stock answered {status}: {}", String::from_utf8_lossy(&body).trim()))
                }
            }
            Err(e) => {
                self.stats.record("stock", t.elapsed(), false, None, 0);
                Err(format!("stock failed: {e}"))
            }
        };
        match (price, stock) {
            (Ok(q), Ok(s)) => text(
                StatusCode::OK,
                format!(
                    "{}: {}.{:02} EUR (priced by {}), {s}\n",
                    q.item,
                    q.price_cents / 100,
                    q.price_cents % 100,
                    q.served_by
                ),
            ),
            (Err(e), _) | (_, Err(e)) => text(StatusCode::BAD_GATEWAY, format!("{e}\n")),
        }
    }
}

async fn pricing(listen: SocketAddr, export_listen: SocketAddr, name: Arc<str>) -> Result<(), BoxError> {
    let export = TcpListener::bind(export_listen).await?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = export.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(k) => n += k as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(format!("{n}\n").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let l = TcpListener::bind(listen).await?;
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        let name = Arc::clone(&name);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let name = Arc::clone(&name);
                async move { Ok::<_, Infallible>(quote(req, &name).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn quote(req: Request<Incoming>, name: &str) -> Response<Frames> {
    if req.uri().path() != QUOTE_PATH {
        return grpc_response(12, "unknown method: this server has /demo.Pricing/Quote", None);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return grpc_response(13, &format!("reading the request: {e}"), None),
    };
    match grpc_unframe::<QuoteRequest>(body) {
        Ok(q) => {
            // A stable made-up price per item.
            let price_cents =
                q.item.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) % 9_000 + 100;
            let reply = QuoteReply { item: q.item, price_cents, served_by: name.to_string() };
            grpc_response(0, "", Some(grpc_frame(&reply)))
        }
        Err(e) => grpc_response(3, &format!("bad request: {e}"), None),
    }
}

async fn stock(
    listen: SocketAddr,
    name: Arc<str>,
    fail_rate: f64,
    outage: Option<(u64, u64)>,
) -> Result<(), BoxError> {
    let started = Instant::now();
    serve_http1(listen, move |req: Request<Incoming>| {
        let name = Arc::clone(&name);
        async move {
            let Some(item) = req.uri().path().strip_prefix("/stock/") else {
                return text(StatusCode::NOT_FOUND, "try GET /stock/<item>\n");
            };
            let mut r = if let Some((every, lasts)) = outage
                && started.elapsed().as_secs() % every >= every.saturating_sub(lasts)
            {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{name}: database unreachable (a planned outage)\n"),
                )
            } else if fastrand::f64() < fail_rate {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{name}: too busy (an injected failure)\n"))
            } else {
                let n = item.len() * 7 % 40;
                text(StatusCode::OK, format!("{n} in stock"))
            };
            if let Ok(v) = HeaderValue::from_str(&name) {
                r.headers_mut().insert("x-served-by", v);
            }
            r
        }
    })
    .await
}

const ITEMS: &[&str] = &["apple", "pear", "quince", "fig", "plum", "cherry", "medlar", "sloe"];

async fn load(
    web: SocketAddr,
    pricing: Option<SocketAddr>,
    export: Option<SocketAddr>,
    rate: u32,
    connections: u32,
    export_bytes: usize,
    stats: Arc<Stats>,
) -> Result<(), BoxError> {
    let connections = connections.max(1);
    let every = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
    for _ in 0..connections {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            // One keep-alive connection per shopper.
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build_http();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let item = ITEMS[fastrand::usize(..ITEMS.len())];
                let t = Instant::now();
                let ok = match Request::get(format!("http://{web}/shop/{item}")).body(Empty::new()) {
                    Ok(r) => match client.request(r).await {
                        Ok(resp) => {
                            let ok = resp.status() == StatusCode::OK;
                            let _ = resp.into_body().collect().await;
                            ok
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                stats.record("web", t.elapsed(), ok, None, 0);
            }
        });
    }
    // Calls the authorization policies refuse: "ok" is a refusal.
    let denied = Arc::clone(&stats);
    tokio::spawn(async move {
        let http: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let grpc: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).http2_only(true).build_http();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let t = Instant::now();
            let refused = match Request::get(format!("http://{web}/admin")).body(Empty::new()) {
                Ok(r) => http.request(r).await.is_ok_and(|r| r.status() == StatusCode::FORBIDDEN),
                Err(_) => false,
            };
            denied.record("web-admin", t.elapsed(), refused, None, 0);
            let Some(pricing) = pricing else { continue };
            let t = Instant::now();
            let refused = matches!(call_quote(&grpc, pricing, "apple", &HeaderMap::new()).await, Ok((7, _)));
            denied.record("pricing-direct", t.elapsed(), refused, None, 0);
        }
    });
    // Bulk TCP to a zero-hop port: the kernel connects it straight to the endpoint.
    let Some(export) = export else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let payload = vec![0x5au8; export_bytes];
    loop {
        tick.tick().await;
        let t = Instant::now();
        let r: Result<u64, BoxError> = async {
            let mut s = TcpStream::connect(export).await?;
            s.write_all(&payload).await?;
            s.shutdown().await?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).await?;
            Ok(reply.trim().parse::<u64>()?)
        }
        .await;
        let ok = matches!(r, Ok(n) if n == payload.len() as u64);
        stats.record("export", t.elapsed(), ok, None, if ok { payload.len() as u64 } else { 0 });
    }
}

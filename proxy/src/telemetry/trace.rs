//! Traces: a SERVER span for every request the proxy receives, a CLIENT span
//! for every upstream attempt (so retries show), a span per opaque TCP
//! connection. W3C `traceparent` and B3 (single and multi header) are read;
//! an incoming context is continued and the attempt's context is injected
//! upstream. The sampling decision is made here, before any span object
//! exists: an unsampled request costs a header parse and, at most, one
//! injected header.

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use http::{HeaderMap, HeaderValue, Request, Version};
use opentelemetry::{
    Context, KeyValue,
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _,
    },
};
use opentelemetry_sdk::trace::{SdkTracer, Span};

/// How new traces are sampled and how contexts are passed on.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Share of new traces (no incoming context) that are recorded, 0..=1.
    pub ratio: f64,
    /// Follow an incoming context's sampled flag (OpenTelemetry's
    /// `parentbased_*` samplers); otherwise the ratio decides every request.
    pub parent_based: bool,
    /// Inject W3C `traceparent` upstream.
    pub tracecontext: bool,
    /// Inject B3 upstream (single `b3` header when the request came with
    /// one, else `x-b3-*`).
    pub b3: bool,
}

impl Default for TraceSettings {
    fn default() -> Self {
        Self { ratio: 1.0, parent_based: true, tracecontext: true, b3: true }
    }
}

/// What became of the spans: started here, handed to the exporter, and the
/// exports that failed. Started minus exported is what was dropped (queue
/// full) or is still queued.
#[derive(Debug, Default)]
pub struct SpanCounters {
    pub started: AtomicU64,
    pub exported: AtomicU64,
    pub export_failed: AtomicU64,
}

/// The tracer and its settings; `None` in [`super::Telemetry`] when tracing is off.
#[derive(Debug)]
pub struct Tracing {
    tracer: SdkTracer,
    ratio_bits: AtomicU64,
    settings: TraceSettings,
    pub counters: std::sync::Arc<SpanCounters>,
}

impl Tracing {
    pub fn new(tracer: SdkTracer, settings: TraceSettings, counters: std::sync::Arc<SpanCounters>) -> Self {
        Self {
            tracer,
            ratio_bits: AtomicU64::new(settings.ratio.clamp(0.0, 1.0).to_bits()),
            settings,
            counters,
        }
    }

    pub fn settings(&self) -> TraceSettings {
        TraceSettings { ratio: self.ratio(), ..self.settings.clone() }
    }

    pub fn ratio(&self) -> f64 {
        f64::from_bits(self.ratio_bits.load(Relaxed))
    }

    /// Changes the ratio for new traces (config reload).
    pub fn set_ratio(&self, ratio: f64) {
        self.ratio_bits.store(ratio.clamp(0.0, 1.0).to_bits(), Relaxed);
    }

    fn sample_new(&self) -> bool {
        let r = self.ratio();
        r >= 1.0 || (r > 0.0 && fastrand::f64() < r)
    }

    /// Starts the SERVER span of a request (when sampled) and returns what
    /// upstream attempts need.
    pub fn start_server<B>(&self, req: &Request<B>, peer: SocketAddr) -> ServerTrace {
        let incoming = extract(req.headers());
        let sampled = match &incoming {
            Some(x) if self.settings.parent_based && x.decided => x.ctx.is_sampled(),
            _ => self.sample_new(),
        };
        let b3_single = incoming.as_ref().is_some_and(|x| x.b3_single);
        if !sampled {
            // Pass the decision on: the incoming context as it came, or a new
            // unsampled one so that the next hop agrees.
            let ctx = match incoming {
                Some(x) => x.ctx,
                None => SpanContext::new(
                    TraceId::from_bytes(fastrand::u128(1..).to_be_bytes()),
                    SpanId::from_bytes(fastrand::u64(1..).to_be_bytes()),
                    TraceFlags::default(),
                    false,
                    TraceState::default(),
                ),
            };
            return ServerTrace { span: None, parent: ctx, b3_single };
        }
        let parent = match incoming {
            Some(x) => {
                let ctx = SpanContext::new(
                    x.ctx.trace_id(),
                    x.ctx.span_id(),
                    x.ctx.trace_flags().with_sampled(true),
                    true,
                    x.ctx.trace_state().clone(),
                );
                Context::new().with_remote_span_context(ctx)
            }
            None => Context::new(),
        };
        let (host, port) = authority(req);
        let mut attrs = Vec::with_capacity(14);
        attrs.push(KeyValue::new("http.request.method", method_name(req.method())));
        attrs.push(KeyValue::new("url.path", req.uri().path().to_string()));
        if let Some(q) = req.uri().query() {
            attrs.push(KeyValue::new("url.query", q.to_string()));
        }
        attrs.push(KeyValue::new("url.scheme", "http"));
        if let Some(h) = host {
            attrs.push(KeyValue::new("server.address", h));
        }
        if let Some(p) = port {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
        attrs.push(KeyValue::new("network.protocol.version", protocol_version(req.version())));
        attrs.push(KeyValue::new("client.address", peer.ip().to_string()));
        attrs.push(KeyValue::new("client.port", i64::from(peer.port())));
        if let Some(ua) = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
            attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
        }
        self.counters.started.fetch_add(1, Relaxed);
        let span = self
            .tracer
            .span_builder(method_name(req.method()))
            .with_kind(SpanKind::Server)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        let ctx = span.span_context().clone();
        ServerTrace { span: Some(span), parent: ctx, b3_single }
    }

    /// A CLIENT span for one upstream attempt, its context injected into
    /// `req`. Unsampled: only the context is passed on.
    pub fn start_attempt<B>(
        &self,
        server: &SpanContext,
        b3_single: bool,
        req: &mut Request<B>,
        endpoint: SocketAddr,
        attempt: u32,
    ) -> Option<Span> {
        if !server.is_sampled() {
            self.inject(server, b3_single, req.headers_mut());
            return None;
        }
        let parent = Context::new().with_remote_span_context(server.clone());
        let mut attrs = Vec::with_capacity(9);
        attrs.push(KeyValue::new("http.request.method", method_name(req.method())));
        attrs.push(KeyValue::new("server.address", endpoint.ip().to_string()));
        attrs.push(KeyValue::new("server.port", i64::from(endpoint.port())));
        attrs.push(KeyValue::new(
            "url.full",
            format!("http://{endpoint}{}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/")),
        ));
        attrs.push(KeyValue::new("network.protocol.version", protocol_version(req.version())));
        if attempt > 0 {
            attrs.push(KeyValue::new("http.request.resend_count", i64::from(attempt)));
        }
        self.counters.started.fetch_add(1, Relaxed);
        let span = self
            .tracer
            .span_builder(method_name(req.method()))
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &parent);
        self.inject(span.span_context(), b3_single, req.headers_mut());
        Some(span)
    }

    /// A span for an opaque TCP connection (new traces only: TCP carries no
    /// context), or `None` when not sampled.
    pub fn start_tcp(&self, service: &str, peer: SocketAddr, orig: SocketAddr) -> Option<Span> {
        if !self.sample_new() {
            return None;
        }
        let attrs = vec![
            KeyValue::new("network.transport", "tcp"),
            KeyValue::new("client.address", peer.ip().to_string()),
            KeyValue::new("client.port", i64::from(peer.port())),
            KeyValue::new("server.address", orig.ip().to_string()),
            KeyValue::new("server.port", i64::from(orig.port())),
            KeyValue::new("sluice.service", service.to_string()),
        ];
        self.counters.started.fetch_add(1, Relaxed);
        Some(
            self.tracer
                .span_builder(format!("TCP {service}"))
                .with_kind(SpanKind::Server)
                .with_attributes(attrs)
                .start_with_context(&self.tracer, &Context::new()),
        )
    }

    fn inject(&self, ctx: &SpanContext, b3_single: bool, headers: &mut HeaderMap) {
        // Hex written into stack buffers: one allocation per header (the
        // header value itself).
        let mut tid = [0u8; 32];
        let mut sid = [0u8; 16];
        hex_into(&ctx.trace_id().to_bytes(), &mut tid);
        hex_into(&ctx.span_id().to_bytes(), &mut sid);
        let sampled = if ctx.is_sampled() { b'1' } else { b'0' };
        let value = |parts: &[&[u8]]| {
            let mut buf = [0u8; 64];
            let mut n = 0;
            for p in parts {
                buf[n..n + p.len()].copy_from_slice(p);
                n += p.len();
            }
            HeaderValue::from_bytes(&buf[..n]).ok()
        };
        if self.settings.tracecontext
            && let Some(v) = value(&[b"00-", &tid, b"-", &sid, b"-0", &[sampled]])
        {
            headers.insert("traceparent", v);
        }
        if !self.settings.b3 {
            return;
        }
        if b3_single {
            if let Some(v) = value(&[&tid, b"-", &sid, b"-", &[sampled]]) {
                headers.insert("b3", v);
            }
            return;
        }
        for (k, v) in [
            ("x-b3-traceid", value(&[&tid])),
            ("x-b3-spanid", value(&[&sid])),
            ("x-b3-sampled", value(&[&[sampled]])),
        ] {
            if let Some(v) = v {
                headers.insert(k, v);
            }
        }
        // The parent's id would now be wrong; the debug flag is carried by x-b3-sampled.
        headers.remove("x-b3-parentspanid");
        headers.remove("x-b3-flags");
    }
}

/// What a request's upstream attempts continue: the SERVER span's context
/// (or the unsampled context passed through).
#[derive(Debug)]
pub struct ServerTrace {
    pub span: Option<Span>,
    pub parent: SpanContext,
    pub b3_single: bool,
}

/// Finishes a SERVER or CLIENT span with the response status (HTTP
/// semantic conventions: a server span is an error for 5xx, a client span
/// for 4xx and 5xx too).
pub fn finish_http(span: &mut Span, status: u16, error: Option<&str>, server: bool) {
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
    let failed = status >= 500 || (!server && status >= 400);
    if let Some(e) = error {
        span.set_attribute(KeyValue::new("error.type", e.to_string()));
        span.set_status(Status::error(e.to_string()));
    } else if failed {
        span.set_attribute(KeyValue::new("error.type", status.to_string()));
        span.set_status(Status::error(""));
    }
}

/// The method as a span name and attribute value; the standard ones
/// without an allocation.
fn method_name(m: &http::Method) -> Cow<'static, str> {
    use http::Method as M;
    Cow::Borrowed(match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        // Semantic conventions: other methods are reported as _OTHER.
        _ => "_OTHER",
    })
}

/// Finishes a CLIENT span that got no response: the reason as `error.type`,
/// the whole message as the status.
pub fn finish_failed(span: &mut Span, reason: &'static str, message: &str) {
    span.set_attribute(KeyValue::new("error.type", reason));
    span.set_status(Status::error(message.to_string()));
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn authority<B>(req: &Request<B>) -> (Option<String>, Option<u16>) {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()));
    let Some(raw) = raw else { return (None, None) };
    // host, host:port, [v6], [v6]:port
    let (host, port) = match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => (&raw[..i], raw[i + 1..].parse().ok()),
        _ => (raw, None),
    };
    (Some(host.trim_start_matches('[').trim_end_matches(']').to_string()), port)
}

/// A context found in request headers.
#[derive(Debug, Clone)]
pub struct Extracted {
    pub ctx: SpanContext,
    /// Whether the sender made a sampling decision (B3 may defer it).
    pub decided: bool,
    pub b3_single: bool,
}

/// Reads `traceparent` (+ `tracestate`), else `b3`, else `x-b3-*`.
pub fn extract(h: &HeaderMap) -> Option<Extracted> {
    if let Some(tp) = h.get("traceparent").and_then(|v| v.to_str().ok())
        && let Some((tid, sid, flags)) = parse_traceparent(tp)
    {
        let state = h
            .get("tracestate")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let ctx = SpanContext::new(tid, sid, TraceFlags::new(flags & 1), true, state);
        return Some(Extracted { ctx, decided: true, b3_single: false });
    }
    if let Some(b3) = h.get("b3").and_then(|v| v.to_str().ok())
        && let Some((tid, sid, sampled)) = parse_b3_single(b3)
    {
        return Some(Extracted {
            ctx: remote(tid, sid, sampled),
            decided: sampled.is_some(),
            b3_single: true,
        });
    }
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    let (tid, sid) = (get("x-b3-traceid")?, get("x-b3-spanid")?);
    let tid = parse_b3_trace_id(tid)?;
    let sid = parse_id16(sid).map(SpanId::from_bytes)?;
    let sampled = if get("x-b3-flags") == Some("1") {
        Some(true)
    } else {
        match get("x-b3-sampled") {
            Some("1") | Some("true") => Some(true),
            Some("0") | Some("false") => Some(false),
            _ => None,
        }
    };
    Some(Extracted { ctx: remote(tid, sid, sampled), decided: sampled.is_some(), b3_single: false })
}

fn remote(tid: TraceId, sid: SpanId, sampled: Option<bool>) -> SpanContext {
    let flags = if sampled == Some(true) { TraceFlags::SAMPLED } else { TraceFlags::default() };
    SpanContext::new(tid, sid, flags, true, TraceState::default())
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lower-case hex only, as both specs require.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_val(b[2 * i])? << 4 | hex_val(b[2 * i + 1])?;
    }
    Some(out)
}

fn parse_id16(s: &str) -> Option<[u8; 8]> {
    parse_hex::<8>(s).filter(|b| *b != [0; 8])
}

/// B3 trace ids are 128 or 64 bits (the latter padded on the left).
fn parse_b3_trace_id(s: &str) -> Option<TraceId> {
    let bytes = if s.len() == 16 {
        let low = parse_hex::<8>(s)?;
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&low);
        b
    } else {
        parse_hex::<16>(s)?
    };
    (bytes != [0; 16]).then(|| TraceId::from_bytes(bytes))
}

/// `version-traceid-spanid-flags`; version ff is invalid, version 00 has
/// exactly these four fields, later versions may append more.
pub fn parse_traceparent(s: &str) -> Option<(TraceId, SpanId, u8)> {
    let s = s.trim();
    let mut parts = s.split('-');
    let version = parse_hex::<1>(parts.next()?)?[0];
    let tid = parse_hex::<16>(parts.next()?)?;
    let sid = parse_id16(parts.next()?)?;
    let flags = parse_hex::<1>(parts.next()?)?[0];
    if version == 0xff || tid == [0; 16] || (version == 0 && parts.next().is_some()) {
        return None;
    }
    Some((TraceId::from_bytes(tid), SpanId::from_bytes(sid), flags))
}

/// `traceid-spanid[-sampled[-parentspanid]]`; a bare `0`/`1`/`d` carries no ids.
fn parse_b3_single(s: &str) -> Option<(TraceId, SpanId, Option<bool>)> {
    let mut parts = s.trim().split('-');
    let tid = parse_b3_trace_id(parts.next()?)?;
    let sid = SpanId::from_bytes(parse_id16(parts.next()?)?);
    let sampled = match parts.next() {
        None => None,
        Some("1") | Some("d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    Some((tid, sid, sampled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn traceparent() {
        let x = extract(&headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]))
        .unwrap();
        assert_eq!(format!("{:032x}", x.ctx.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format!("{:016x}", x.ctx.span_id()), "00f067aa0ba902b7");
        assert!(x.ctx.is_sampled() && x.decided && x.ctx.is_remote());
        assert_eq!(x.ctx.trace_state().get("congo"), Some("t61rcWkgMzE"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x").is_some());
    }

    #[test]
    fn injected_headers_read_back() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let t = Tracing::new(
            opentelemetry::trace::TracerProvider::tracer(&provider, "t"),
            TraceSettings::default(),
            Default::default(),
        );
        let ctx = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut h = headers(&[("x-b3-parentspanid", "1111111111111111")]);
        t.inject(&ctx, false, &mut h);
        assert_eq!(h["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(h["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h["x-b3-spanid"], "00f067aa0ba902b7");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(h.get("x-b3-parentspanid").is_none());
        let mut h = HeaderMap::new();
        t.inject(&ctx, true, &mut h);
        assert_eq!(h["b3"], "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1");
        let back = extract(&h).unwrap();
        assert_eq!(back.ctx.span_id(), ctx.span_id());
    }

    #[test]
    fn b3_forms() {
        let x = extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")])).unwrap();
        assert!(x.b3_single && x.decided && x.ctx.is_sampled());
        assert_eq!(format!("{:016x}", x.ctx.span_id()), "e457b5a2e4d86bd1");
        let x = extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")])).unwrap();
        assert!(!x.decided);
        let x = extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(format!("{:032x}", x.ctx.trace_id()), "0000000000000000463ac35c9f6413ad");
        assert!(x.decided && !x.ctx.is_sampled() && !x.b3_single);
        let x = extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ]))
        .unwrap();
        assert!(x.ctx.is_sampled());
        assert!(extract(&headers(&[("b3", "1")])).is_none());
        assert!(extract(&headers(&[("x-b3-traceid", "463ac35c9f6413ad")])).is_none());
        // traceparent wins over B3.
        let x = extract(&headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]))
        .unwrap();
        assert!(!x.ctx.is_sampled() && !x.b3_single);
    }
}

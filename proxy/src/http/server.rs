//! HTTP/1.1 served without hyper for plain requests: a request without a
//! body, upgrade, `Expect` or `TE`, in origin form. Nearly every request a
//! service mesh carries over HTTP/1.1 is one (GETs, and the keep-alive
//! traffic of a benchmark); for them, hyper's dispatcher plus the guard's
//! second parse of each head cost about a fifth of the L7 path's user CPU.
//!
//! Each head is parsed once (httparse, header values sharing the head's
//! bytes), checked against the guard's rules on the way ([`request`]), and
//! handed to the same [`super::handle`] hyper's requests go to; the response
//! is written with one `send` when its body is ready at once. The first
//! request the fast path does not serve (a body, an upgrade, anything odd or
//! refused) ends it: hyper takes the connection behind the guard, with the
//! bytes already read, so every refusal (400, 431) and every framing rule is
//! hyper's and the guard's as before.
//!
//! Kept from hyper's server: pipelined requests are answered in order; a
//! client that closes while its request is in flight cancels it; `date` is
//! added; `Connection: close` (asked, or a drain) closes after the response;
//! Content-Length or chunked framing as the body allows; no body for HEAD,
//! 1xx, 204 and 304.

use std::{
    future::poll_fn,
    io,
    pin::{Pin, pin},
    sync::{Arc, atomic::Ordering::Relaxed},
    task::Poll,
};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

use super::{
    Conn, H1_DRAIN_GRACE, guard,
    headers::connection_has,
    wire::{COALESCE, put_content_length, put_data, put_fields},
};
use crate::{cancel::Cancelled, telemetry::Tracked};

/// Most header fields a head may have to be parsed here (httparse's array
/// lives on the stack); more go to hyper, which applies the configured limit.
const MAX_FAST_HEADERS: usize = 100;

/// How a connection left the fast path.
#[derive(Debug)]
pub(super) enum Exit {
    /// It is closed; a refusal the logs and counters should know, if any.
    Closed(Option<&'static str>),
    /// A request for hyper: it takes the connection, these bytes first.
    Hyper(BytesMut),
}

/// Serves plain requests until the connection closes or a request needs
/// hyper. `drain` resolves when the node drains; `conn.draining` is set then.
pub(super) async fn serve(stream: &mut TcpStream, conn: &Arc<Conn>, drain: &mut Cancelled) -> Exit {
    let limits = &conn.ctx.limits;
    if limits.max_headers > MAX_FAST_HEADERS {
        return Exit::Hyper(BytesMut::new());
    }
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    // The head being waited for must arrive by then: armed for the first
    // request and for a head begun, not for an idle keep-alive connection.
    let mut head_deadline = Some(Instant::now() + limits.header_read_timeout);
    let mut drain_deadline = None;
    loop {
        let end = loop {
            match scan_head(&buf) {
                Scan::Complete(end) => break end,
                Scan::Hyper => return Exit::Hyper(buf),
                Scan::Partial if buf.len() > limits.max_header_bytes => return Exit::Hyper(buf),
                Scan::Partial => {}
            }
            if !buf.is_empty() && head_deadline.is_none() {
                head_deadline = Some(Instant::now() + limits.header_read_timeout);
            }
            let deadline = match (head_deadline, drain_deadline) {
                (Some(h), Some(d)) if buf.is_empty() => Some(h.min(d)),
                (Some(h), _) => Some(h),
                (None, d) => d,
            };
            match read(stream, &mut buf, deadline, (!conn.draining.load(Relaxed)).then_some(&mut *drain))
                .await
            {
                Event::Data => {}
                Event::Drain => {
                    conn.draining.store(true, Relaxed);
                    drain_deadline = Some(Instant::now() + H1_DRAIN_GRACE);
                }
                Event::TimedOut if !buf.is_empty() || head_deadline.is_some_and(|h| h <= Instant::now()) => {
                    return Exit::Closed(Some(guard::HEAD_TIMEOUT));
                }
                Event::TimedOut | Event::Eof => return Exit::Closed(None),
                Event::Failed(e) => {
                    tracing::debug!(peer = %conn.peer, orig = %conn.orig, error = %e, "HTTP/1 connection ended with an error");
                    return Exit::Closed(None);
                }
            }
        };
        if end > limits.max_header_bytes {
            return Exit::Hyper(buf);
        }
        let head = buf.split_to(end).freeze();
        let Some((req, close)) = request(&head, limits.max_headers) else {
            let mut all = BytesMut::with_capacity(head.len() + buf.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(&buf);
            return Exit::Hyper(all);
        };
        head_deadline = None;
        let head_request = req.method() == Method::HEAD;
        // Pinned here, so the request's (large) future is not moved again.
        let handled = pin!(super::handle(req, Arc::clone(conn)));
        let Some(resp) = respond(stream, &mut buf, conn, handled, drain).await else {
            return Exit::Closed(None);
        };
        let keep_alive = !close
            && !conn.draining.load(Relaxed)
            && !super::headers::connection_has(resp.headers(), "close");
        match write_response(stream, &mut out, resp, head_request, keep_alive).await {
            Ok(true) if keep_alive => {}
            Ok(_) => return Exit::Closed(None),
            Err(e) => {
                tracing::debug!(peer = %conn.peer, orig = %conn.orig, error = %e, "HTTP/1 response not written whole");
                return Exit::Closed(None);
            }
        }
        if out.capacity() > 4 * COALESCE {
            out = Vec::with_capacity(1024);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// A head ends after this many bytes.
    Complete(usize),
    Partial,
    /// Leading empty lines or a bare LF: the guard's and hyper's business.
    Hyper,
}

fn scan_head(buf: &[u8]) -> Scan {
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return Scan::Hyper;
    }
    for nl in memchr::memchr_iter(b'\n', buf) {
        if nl == 0 || buf[nl - 1] != b'\r' {
            return Scan::Hyper;
        }
        if buf[nl + 1..].starts_with(b"\r\n") {
            return Scan::Complete(nl + 3);
        }
    }
    Scan::Partial
}

/// The request of a head, if the fast path serves it, and whether the
/// client asked to close after it. It serves only heads the guard passes
/// with no body: httparse refuses bare CR, obs-fold, whitespace before a
/// colon and lines without one (scan_head, bare LF); here anything with
/// Transfer-Encoding, a Content-Length other than zero, or CONNECT goes to
/// hyper and the guard, which refuse or serve it.
fn request(head: &Bytes, max_headers: usize) -> Option<(super::BoxRequest, bool)> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FAST_HEADERS];
    let mut r = httparse::Request::new(&mut fields);
    match r.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let path = r.path?;
    if r.version != Some(1) || !path.starts_with('/') || r.headers.len() > max_headers {
        return None;
    }
    let method = Method::from_bytes(r.method?.as_bytes()).ok().filter(|m| m != Method::CONNECT)?;
    let uri = Uri::from_maybe_shared(head.slice_ref(path.as_bytes())).ok()?;
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut has_connection = false;
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        if name == header::EXPECT
            || name == header::TE
            || name == header::UPGRADE
            || name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && (f.value.is_empty() || f.value.iter().any(|&b| b != b'0')))
        {
            return None;
        }
        has_connection |= name == header::CONNECTION;
        headers.append(name, HeaderValue::from_maybe_shared(head.slice_ref(f.value)).ok()?);
    }
    // Looked up only when there is one (most requests have none).
    if has_connection && connection_has(&headers, "upgrade") {
        return None;
    }
    let close = has_connection && connection_has(&headers, "close");
    let mut req = Box::new(Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync()));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some((req, close))
}

enum Event {
    Data,
    Eof,
    TimedOut,
    Drain,
    Failed(io::Error),
}

/// Reads what the client sent into `buf`, or waits for `deadline` or `drain`.
async fn read(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
    mut drain: Option<&mut Cancelled>,
) -> Event {
    buf.reserve(4096);
    // A timer only when there is a deadline (not for an idle keep-alive wait).
    let mut sleep = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
    poll_fn(|cx| {
        match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Event::Eof),
            Poll::Ready(Ok(_)) => return Poll::Ready(Event::Data),
            Poll::Ready(Err(e)) => return Poll::Ready(Event::Failed(e)),
            Poll::Pending => {}
        }
        if let Some(d) = drain.as_mut()
            && Pin::new(&mut **d).poll(cx).is_ready()
        {
            return Poll::Ready(Event::Drain);
        }
        if let Some(s) = sleep.as_mut()
            && s.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::TimedOut);
        }
        Poll::Pending
    })
    .await
}

/// The response to `req`; `None` when the client closed the connection
/// first (the request is cancelled, as hyper cancels it). As in hyper, the
/// close is watched for only while nothing else from the client is waiting
/// in `buf` (a client may pipeline requests and then half-close).
async fn respond(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    conn: &Arc<Conn>,
    mut fut: Pin<&mut impl Future<Output = Result<Response<Tracked>, std::convert::Infallible>>>,
    drain: &mut Cancelled,
) -> Option<Response<Tracked>> {
    let mut watch_drain = !conn.draining.load(Relaxed);
    poll_fn(|cx| {
        if let Poll::Ready(Ok(resp)) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(resp));
        }
        // A drain from now on makes this response say `Connection: close`.
        if watch_drain && Pin::new(&mut *drain).poll(cx).is_ready() {
            conn.draining.store(true, Relaxed);
            watch_drain = false;
        }
        if buf.is_empty() {
            buf.reserve(4096);
            if let Poll::Ready(Ok(0) | Err(_)) =
                tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf)
            {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes `resp`; `Ok(false)` when the connection cannot carry another
/// response (the body failed or did not match its length).
async fn write_response(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    resp: Response<Tracked>,
    head_request: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_fields(out, &parts.headers);
    if !keep_alive && !parts.headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        put_date(out);
        out.extend_from_slice(b"\r\n");
    }
    let bodiless =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let framing = if bodiless || head_request {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if body.is_end_stream() {
        out.extend_from_slice(b"content-length: 0\r\n");
        Framing::Length(0)
    } else if let Some(n) = body.size_hint().exact() {
        put_content_length(out, n);
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None || framing == Framing::Length(0) {
        stream.write_all(out).await?;
        return Ok(true);
    }
    let mut body = body;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let whole = loop {
        // What is ready goes out with the head; a wait sends what is gathered.
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    stream.write_all(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let data = match frame {
            None => break framing == Framing::Chunked || left == 0,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/1 response body failed; closing the connection");
                break false;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                // Trailers only go to clients that asked (`TE: trailers`), which hyper serves.
                Err(_) => Bytes::new(),
            },
        };
        if !data.is_empty() {
            if let Framing::Length(_) = framing {
                if data.len() as u64 > left {
                    break false;
                }
                left -= data.len() as u64;
            }
            put_data(stream, out, &data, framing == Framing::Chunked).await?;
        }
        // hyper stops polling once the body says it has ended; so do we.
        if body.is_end_stream() || (framing != Framing::Chunked && left == 0) {
            break framing == Framing::Chunked || left == 0;
        }
    };
    if whole && framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(whole)
}

fn put_date(out: &mut Vec<u8>) {
    super::wire::with_date(|d| out.extend_from_slice(d.as_bytes()));
}

#[cfg(test)]
mod tests;

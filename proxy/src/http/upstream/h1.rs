//! HTTP/1.1 to endpoints, spoken by the request's own task: the request
//! head is written straight from its parts, the response head is parsed with
//! httparse, and the response body reads the connection itself until its
//! framing says it ended, then hands the connection back to the pool.
//!
//! hyper's client runs a task per connection and passes every request and
//! response through channels to it; for a proxy that is two task switches
//! and two dispatchers per request that a keep-alive exchange does not need.
//! hyper still serves upgrades (their connections never return to the pool).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::super::{Body, BoxError, BoxRequest};
use crate::{
    endpoint::Held,
    http::{
        guard::MAX_CHUNK_LINE,
        wire::{put_content_length, put_data, put_fields},
    },
};

/// Largest response head accepted from an endpoint.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// One keep-alive connection to an endpoint.
#[derive(Debug)]
pub(crate) struct Conn {
    io: TcpStream,
    /// Bytes read past the last message: always empty between exchanges.
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Counts against the endpoint's `max_connections` while it lives.
    _held: Held,
}

type Failure = super::Failure<io::Error>;
type Unsent = super::Unsent<io::Error>;

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the endpoint closes (no length): the connection is not reused.
    Close,
}

impl Conn {
    pub(crate) fn new(io: TcpStream, held: Held) -> Self {
        Self { io, rbuf: BytesMut::new(), wbuf: Vec::with_capacity(1024), _held: held }
    }

    /// Whether an idle connection may carry another request: nothing (EOF,
    /// a reset, stray bytes) arrived while it sat in the pool. Costs no
    /// system call unless the kernel reported the socket readable, and
    /// registers no waker (the readiness the I/O driver recorded is read).
    pub(crate) fn reusable(&self) -> bool {
        let probe = self.io.try_io(tokio::io::Interest::READABLE, || {
            let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            socket2::SockRef::from(&self.io).recv(&mut byte)
        });
        matches!(probe, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `req` and reads the response head. The response body owns the
    /// connection; `done` gets it back once the body has ended cleanly.
    pub(crate) async fn send(
        mut self,
        mut req: BoxRequest,
        in_flight: Option<Held>,
        done: impl FnOnce(Conn) + Send + 'static,
    ) -> Result<Response<Body>, Failure> {
        let head_request = req.method() == Method::HEAD;
        let framing = self.encode_head(&req);
        if framing == Framing::Empty {
            if let Err(e) = self.io.write_all(&self.wbuf).await {
                return Err(Failure::Unsent(Box::new(Unsent { req, in_flight, error: e })));
            }
            drop(req);
        } else {
            // Boxed: most requests have no body, and every request's future
            // is as large as its largest branch (and moved more than once).
            let body = std::mem::take(req.body_mut());
            drop(req);
            Box::pin(self.write_body(body, framing)).await?;
        }
        let (resp, framing, keep_alive) = self.read_head(head_request).await?;
        Ok(resp.map(|()| Incoming::new(self, framing, keep_alive, in_flight, done).boxed_unsync()))
    }

    /// The request line and headers into `wbuf`, with the framing header the
    /// body needs; returns that framing.
    fn encode_head(&mut self, req: &Request<Body>) -> Framing {
        let w = &mut self.wbuf;
        w.clear();
        w.extend_from_slice(req.method().as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        put_fields(w, req.headers());
        let body = req.body();
        let length =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let framing = match (length, body.is_end_stream(), body.size_hint().exact()) {
            (Some(0), ..) | (None, true, _) => {
                if length.is_none() && matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
                    w.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Empty
            }
            (Some(n), ..) => Framing::Length(n),
            (None, false, Some(n)) => {
                put_content_length(w, n);
                Framing::Length(n)
            }
            (None, false, None) => {
                w.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        };
        w.extend_from_slice(b"\r\n");
        framing
    }

    /// Streams the request body after the head, gathering what is ready
    /// into few writes and flushing before waiting for the client.
    async fn write_body(&mut self, mut body: Body, framing: Framing) -> Result<(), Failure> {
        let mut left = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        loop {
            let next = match body.frame().now_or_never() {
                Some(f) => f,
                None => {
                    self.flush().await?;
                    body.frame().await
                }
            };
            match next {
                None => break,
                Some(Err(e)) => return Err(downstream(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(l) = left.as_mut() {
                            *l = l.checked_sub(data.len() as u64).ok_or_else(|| {
                                Failure::Downstream(
                                    "the request body is longer than its Content-Length".into(),
                                )
                            })?;
                        }
                        if data.is_empty() {
                            continue;
                        }
                        put_data(&mut self.io, &mut self.wbuf, &data, framing == Framing::Chunked)
                            .await
                            .map_err(upstream_io)?;
                    }
                    Err(frame) => {
                        if let (Framing::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                            self.wbuf.extend_from_slice(b"0\r\n");
                            put_fields(&mut self.wbuf, &trailers);
                            self.wbuf.extend_from_slice(b"\r\n");
                            left = Some(0);
                            break;
                        }
                    }
                },
            }
        }
        match (framing, left) {
            (Framing::Chunked, None) => self.wbuf.extend_from_slice(b"0\r\n\r\n"),
            (Framing::Length(_), Some(l)) if l > 0 => {
                return Err(Failure::Downstream(format!(
                    "the request body ended {l} bytes short of its Content-Length"
                )));
            }
            _ => {}
        }
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await.map_err(upstream_io)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads until a final response head (1xx heads are skipped); returns it
    /// with its body's framing and whether the connection stays open.
    async fn read_head(&mut self, head_request: bool) -> Result<(Response<()>, Framing, bool), Failure> {
        loop {
            if !self.rbuf.is_empty()
                && let Some(head) = self.parse_head(head_request)?
            {
                return Ok(head);
            }
            if self.rbuf.len() > MAX_HEAD {
                return Err(Failure::Upstream(format!("response head over {MAX_HEAD} bytes")));
            }
            self.rbuf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.rbuf).await.map_err(upstream_io)? == 0 {
                return Err(Failure::Upstream(if self.rbuf.is_empty() {
                    "connection closed before the response".into()
                } else {
                    "connection closed in the middle of the response head".into()
                }));
            }
        }
    }

    /// A final response head off the front of `rbuf`, if a whole one is
    /// there (1xx heads are dropped). Not async: its arrays stay on the
    /// stack, out of the request's future.
    fn parse_head(&mut self, head_request: bool) -> Result<Option<(Response<()>, Framing, bool)>, Failure> {
        loop {
            // The head is split off first, so header values can share its bytes.
            let Some(end) = head_end(&self.rbuf) else { return Ok(None) };
            let head = self.rbuf.split_to(end).freeze();
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut r,
                &head,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => {
                    return Err(Failure::Upstream("malformed response head: it ends early".into()));
                }
                Err(e) => return Err(Failure::Upstream(format!("malformed response head: {e}"))),
            }
            let status = r.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let status = StatusCode::from_u16(status)
                .map_err(|_| Failure::Upstream(format!("invalid status code {status}")))?;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Failure::Upstream(
                    "101 Switching Protocols to a request that asked for no upgrade".into(),
                ));
            }
            let mut map = HeaderMap::with_capacity(r.headers.len());
            // Which framing headers there are, noted on the way: most
            // responses have neither, and then need not be looked up.
            let (mut has_te, mut has_connection) = (false, false);
            for h in r.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| Failure::Upstream("invalid header name in the response".into()))?;
                has_te |= name == header::TRANSFER_ENCODING;
                has_connection |= name == header::CONNECTION;
                let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
                    .map_err(|_| Failure::Upstream(format!("invalid value of response header {name}")))?;
                map.append(name, value);
            }
            let framing = response_framing(&map, status, head_request, has_te)?;
            let version = if r.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
            let keep_alive = framing != Framing::Close
                && if has_connection { keeps_alive(&map, version) } else { version == Version::HTTP_11 };
            let mut resp = Response::new(());
            *resp.status_mut() = status;
            *resp.version_mut() = version;
            *resp.headers_mut() = map;
            return Ok(Some((resp, framing, keep_alive)));
        }
    }
}

/// Where a message head ends (after its blank line), if it has: CRLF CRLF,
/// or the bare LF LF that RFC 9112 §2.2 lets a recipient accept.
fn head_end(buf: &[u8]) -> Option<usize> {
    // One pass over the line ends (a memmem finder per call costs more than
    // the search, for heads this short).
    memchr::memchr_iter(b'\n', buf).find_map(|nl| {
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            Some(nl + 2)
        } else if nl > 0 && buf[nl - 1] == b'\r' && rest.starts_with(b"\r\n") {
            Some(nl + 3)
        } else {
            None
        }
    })
}

/// RFC 9112 §6.3: how a response body is delimited.
/// `has_te`: whether `h` has Transfer-Encoding (known from the parse).
fn response_framing(
    h: &HeaderMap,
    status: StatusCode,
    head_request: bool,
    has_te: bool,
) -> Result<Framing, Failure> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if let Some(te) = has_te.then(|| h.get_all(header::TRANSFER_ENCODING).iter().next_back()).flatten() {
        let chunked = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked { Framing::Chunked } else { Framing::Close });
    }
    let mut length = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| Failure::Upstream("invalid Content-Length in the response".into()))?;
        if length.is_some_and(|l| l != n) {
            return Err(Failure::Upstream("conflicting Content-Length values in the response".into()));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

fn keeps_alive(h: &HeaderMap, version: Version) -> bool {
    use crate::http::headers::connection_has;
    if version == Version::HTTP_11 { !connection_has(h, "close") } else { connection_has(h, "keep-alive") }
}

fn downstream(e: BoxError) -> Failure {
    Failure::Downstream(e.to_string())
}

fn upstream_io(e: io::Error) -> Failure {
    Failure::Upstream(e.to_string())
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A response body read from the connection. Ends cleanly → the connection
/// goes back (when it may be reused); fails or is dropped early → it closes.
pub(crate) struct Incoming {
    conn: Option<Conn>,
    /// The connection's read buffer while the body reads it.
    buf: BytesMut,
    framing: Framing,
    chunk: Chunk,
    /// Body bytes still expected (Length framing).
    left: u64,
    keep_alive: bool,
    done: Option<Box<dyn FnOnce(Conn) + Send>>,
    /// The endpoint's requests-in-flight count, held until the body ends.
    in_flight: Option<Held>,
    trailers: Option<HeaderMap>,
    ended: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("framing", &self.framing).field("left", &self.left).finish()
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl Incoming {
    fn new(
        mut conn: Conn,
        framing: Framing,
        keep_alive: bool,
        in_flight: Option<Held>,
        done: impl FnOnce(Conn) + Send + 'static,
    ) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let buf = std::mem::take(&mut conn.rbuf);
        let mut b = Self {
            conn: Some(conn),
            buf,
            framing,
            chunk: Chunk::Size,
            left,
            keep_alive,
            done: Some(Box::new(done)),
            in_flight,
            trailers: None,
            ended: false,
        };
        if framing == Framing::Empty {
            b.finish();
        }
        b
    }

    /// The body ended as framed: the connection goes back if it can be
    /// reused (and the endpoint sent nothing past the response).
    fn finish(&mut self) {
        self.ended = true;
        self.in_flight = None;
        if let (Some(mut conn), Some(done)) = (self.conn.take(), self.done.take())
            && self.keep_alive
            && self.buf.is_empty()
        {
            conn.rbuf = std::mem::take(&mut self.buf);
            done(conn);
        }
    }

    /// The exchange ends without the connection going back (it closes).
    fn abandon(&mut self) {
        self.ended = true;
        self.conn = None;
        self.in_flight = None;
    }

    /// Reads more into the buffer; `Ok(false)` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(Ok(false)) };
        self.buf.reserve(READ_CHUNK);
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut self.buf))?;
        Poll::Ready(Ok(n > 0))
    }

    fn poll_length(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
            if !self.buf.is_empty() {
                let take = (self.buf.len() as u64).min(self.left) as usize;
                let data = self.buf.split_to(take).freeze();
                self.left -= take as u64;
                if self.left == 0 {
                    self.finish();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if !ready!(self.poll_fill(cx)).map_err(boxed)? {
                let left = self.left;
                return Poll::Ready(Some(Err(format!(
                    "the endpoint closed the connection {left} bytes before the end of the response body"
                )
                .into())));
            }
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Polled {
        if self.buf.is_empty() && !ready!(self.poll_fill(cx)).map_err(boxed)? {
            self.abandon();
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(self.buf.split().freeze()))))
    }

    fn poll_chunked(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
            match self.chunk {
                Chunk::Size => {
                    if let Some(line) = take_line(&mut self.buf) {
                        let size = crate::http::guard::chunk_size(&line).ok_or_else(|| -> BoxError {
                            format!("invalid chunk size line {:?}", String::from_utf8_lossy(&line)).into()
                        })?;
                        self.chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                        continue;
                    }
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Some(Err(format!(
                            "chunk size line over {MAX_CHUNK_LINE} bytes"
                        )
                        .into())));
                    }
                }
                Chunk::Data(left) => {
                    if !self.buf.is_empty() {
                        let take = (self.buf.len() as u64).min(left) as usize;
                        let data = self.buf.split_to(take).freeze();
                        let rest = left - take as u64;
                        self.chunk = if rest == 0 { Chunk::DataEnd } else { Chunk::Data(rest) };
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Chunk::DataEnd => {
                    if self.buf.len() >= 2 {
                        if &self.buf[..2] != b"\r\n" {
                            return Poll::Ready(Some(Err("chunk data overran its size".into())));
                        }
                        self.buf.advance(2);
                        self.chunk = Chunk::Size;
                        continue;
                    }
                }
                Chunk::Trailers => {
                    if let Some(line) = take_line(&mut self.buf) {
                        if line.is_empty() {
                            self.finish();
                            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
                        }
                        let (name, value) = trailer(&line).map_err(BoxError::from)?;
                        self.trailers.get_or_insert_with(HeaderMap::new).append(name, value);
                        continue;
                    }
                    if self.buf.len() > MAX_HEAD {
                        return Poll::Ready(Some(Err("response trailers over 64 KiB".into())));
                    }
                }
            }
            if !ready!(self.poll_fill(cx)).map_err(boxed)? {
                return Poll::Ready(Some(Err(
                    "the endpoint closed the connection in the middle of a chunked response body".into(),
                )));
            }
        }
    }
}

fn boxed(e: io::Error) -> BoxError {
    Box::new(e)
}

/// One CRLF-terminated line off the front of `buf` (without the CRLF).
fn take_line(buf: &mut BytesMut) -> Option<Bytes> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = buf.split_to(end).freeze();
    buf.advance(2);
    Some(line)
}

fn trailer(line: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let colon = line.iter().position(|&b| b == b':').ok_or("trailer line without a colon")?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| "invalid trailer name")?;
    let value =
        HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).map_err(|_| "invalid trailer value")?;
    Ok((name, value))
}

impl http_body::Body for Incoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        if self.ended {
            return Poll::Ready(None);
        }
        let r = match self.framing {
            Framing::Empty => Poll::Ready(None),
            Framing::Length(_) => self.poll_length(cx),
            Framing::Chunked => self.poll_chunked(cx),
            Framing::Close => self.poll_close(cx),
        };
        if let Poll::Ready(Some(Err(_))) = &r {
            // A broken exchange: the connection closes.
            self.abandon();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(_) => SizeHint::with_exact(self.left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;

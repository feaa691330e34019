//! A strict reader in front of hyper's HTTP/1 server: it follows the request
//! framing (heads, Content-Length bodies, chunked bodies) and refuses the
//! shapes that let two HTTP parsers disagree about where a request ends
//! (request smuggling): Content-Length with Transfer-Encoding, conflicting
//! Content-Lengths, Transfer-Encoding not ending in chunked, bad chunk sizes,
//! obs-fold and bare CR/LF line ends. hyper is lenient about some of these
//! (it prefers Transfer-Encoding, accepts bare LF), so the proxy checks first.
//!
//! A refused request never reaches hyper intact: the guard hands hyper a byte
//! it cannot parse in place of the rest of the stream, so hyper answers 400
//! and closes the connection (or fails the request body, which the proxy
//! turns into a 400), and the reason is kept for the logs and the counters.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Fed to hyper in place of a refused request: NUL is valid nowhere in HTTP/1.
const POISON: &[u8] = b"\0\r\n\r\n";
/// Longest chunk-size line (with extensions) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;

/// The verdict of a connection whose request head was too slow.
pub const HEAD_TIMEOUT: &str = "the request head did not arrive in time";
/// The verdict of a head over the size limit (answered 431).
pub const HEAD_TOO_LARGE: &str = "request head over the size limit";

/// Why the guard refused a connection's request, once it has.
pub type Verdict = Arc<Mutex<Option<&'static str>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCr,
    ChunkLf,
    Trailers,
    /// After CONNECT or an Upgrade request: bytes are not HTTP any more.
    Tunnel,
    Refused,
}

#[derive(Debug)]
pub struct Guard<S> {
    io: S,
    state: State,
    /// The head or line being collected.
    line: Vec<u8>,
    /// Checked bytes not yet read by hyper.
    out: BytesMut,
    max_head: usize,
    /// hyper's header count limit (see `refuse_too_large`).
    max_headers: usize,
    eof: bool,
    verdict: Verdict,
    scratch: Vec<u8>,
    head_timeout: Option<Duration>,
    head_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer runs for the head being read now.
    head_armed: bool,
    seen_bytes: bool,
}

impl<S> Guard<S> {
    pub fn new(io: S, max_head: usize, max_headers: usize, verdict: Verdict) -> Self {
        Self {
            io,
            state: State::Head,
            line: Vec::new(),
            out: BytesMut::new(),
            max_head,
            max_headers,
            eof: false,
            verdict,
            scratch: Vec::new(),
            head_timeout: None,
            head_timer: None,
            head_armed: false,
            seen_bytes: false,
        }
    }

    /// Closes the connection (a timed-out read) when a request head has not
    /// arrived whole within `timeout` of its first byte (or of the
    /// connection's start). Cheaper than hyper's own timer, which is armed
    /// for every request: this one only when a head is incomplete.
    pub fn with_head_timeout(mut self, timeout: Duration) -> Self {
        self.head_timeout = Some(timeout);
        self
    }

    /// Starts with `bytes` already read from `io` (by the fast path, which
    /// hands hyper a connection at the head of a request it does not serve).
    pub fn with_prefix(mut self, bytes: &[u8]) -> Self {
        if !bytes.is_empty() {
            self.seen_bytes = true;
            self.process(bytes);
        }
        self
    }

    /// Waiting for more of a head: the deadline, armed once per head.
    fn head_deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.head_timeout else { return false };
        let waiting = self.state == State::Head && (!self.line.is_empty() || !self.seen_bytes);
        if !waiting {
            self.head_armed = false;
            return false;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let timer = self.head_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.head_armed {
            timer.as_mut().reset(deadline);
            self.head_armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// A head over the size limit must get 431. hyper's own buffer limit is
    /// loose (it checks between reads), so the guard decides, and hands hyper
    /// a head with one header too many, which hyper answers with 431.
    fn refuse_too_large(&mut self) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(HEAD_TOO_LARGE);
        self.line.clear();
        self.out.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for _ in 0..=self.max_headers {
            self.out.extend_from_slice(b"x:y\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.state = State::Refused;
    }

    fn refuse(&mut self, reason: &'static str) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.line.clear();
        self.out.extend_from_slice(POISON);
        self.state = State::Refused;
    }

    /// Runs `input` through the framing state machine into `out`.
    fn process(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.state {
                State::Refused => return,
                State::Tunnel => {
                    self.out.extend_from_slice(input);
                    return;
                }
                State::Body(n) => {
                    let k = input.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    self.out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    let left = n - k as u64;
                    self.state = if left == 0 { State::Head } else { State::Body(left) };
                }
                State::ChunkData(n) => {
                    let k = input.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    self.out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    let left = n - k as u64;
                    self.state = if left == 0 { State::ChunkCr } else { State::ChunkData(left) };
                }
                State::ChunkCr | State::ChunkLf => {
                    let want = if self.state == State::ChunkCr { b'\r' } else { b'\n' };
                    if input[0] != want {
                        return self.refuse("chunk data does not end where its size says");
                    }
                    self.out.extend_from_slice(&input[..1]);
                    input = &input[1..];
                    self.state = if self.state == State::ChunkCr { State::ChunkLf } else { State::ChunkSize };
                }
                State::Head | State::ChunkSize | State::Trailers => {
                    // Empty lines before a request line are allowed (RFC 9112 §2.2).
                    if self.state == State::Head && self.line.is_empty() && input.starts_with(b"\r\n") {
                        self.out.extend_from_slice(b"\r\n");
                        input = &input[2..];
                        continue;
                    }
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        input = &[];
                        self.check_line_length();
                        continue;
                    };
                    self.line.extend_from_slice(&input[..=nl]);
                    input = &input[nl + 1..];
                    if self.line.len() < 2 || self.line[self.line.len() - 2] != b'\r' {
                        return self.refuse("bare LF line ending");
                    }
                    self.line_done();
                }
            }
        }
    }

    fn check_line_length(&mut self) {
        match self.state {
            State::Head | State::Trailers if self.line.len() > self.max_head => self.refuse_too_large(),
            State::ChunkSize if self.line.len() > MAX_CHUNK_LINE => self.refuse("chunk size line too long"),
            _ => {}
        }
    }

    /// A CRLF-terminated line is complete in `self.line`.
    fn line_done(&mut self) {
        match self.state {
            State::Head => {
                if self.line == b"\r\n" {
                    self.line.clear();
                    self.out.extend_from_slice(b"\r\n");
                    return;
                }
                if !self.line.ends_with(b"\r\n\r\n") {
                    // Not the end of the head yet: only check the line just ended.
                    let start = self.line[..self.line.len() - 2]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    if start > 0 && matches!(self.line.get(start), Some(b' ' | b'\t')) {
                        return self.refuse("obs-fold (a header line starting with whitespace)");
                    }
                    self.check_line_length();
                    return;
                }
                match check_head(&self.line) {
                    Ok(next) => {
                        self.out.extend_from_slice(&self.line);
                        self.line.clear();
                        self.state = next;
                        self.head_armed = false;
                    }
                    Err(reason) => self.refuse(reason),
                }
            }
            State::ChunkSize => match self.line.strip_suffix(b"\r\n").and_then(chunk_size) {
                Some(n) => {
                    self.out.extend_from_slice(&self.line);
                    self.line.clear();
                    self.state = if n == 0 { State::Trailers } else { State::ChunkData(n) };
                }
                None => self.refuse("invalid chunk size"),
            },
            State::Trailers => {
                if matches!(self.line.first(), Some(b' ' | b'\t')) {
                    return self.refuse("obs-fold (a trailer line starting with whitespace)");
                }
                let line = std::mem::take(&mut self.line);
                self.out.extend_from_slice(&line);
                if line == b"\r\n" {
                    self.state = State::Head;
                }
            }
            _ => {}
        }
    }
}

/// Whether the guard passes a whole request head with no body or tunnel
/// after it (what the HTTP/1.1 fast path may serve).
#[cfg(test)]
pub(super) fn passes_plain(head: &[u8]) -> bool {
    matches!(check_head(head), Ok(State::Head))
}

/// Checks a whole request head (ending in CRLF CRLF); returns the state for
/// what follows it.
fn check_head(head: &[u8]) -> Result<State, &'static str> {
    if head.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n') {
        return Err("bare CR in the request head");
    }
    let text = &head[..head.len() - 4];
    let mut lines = text.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let version = request_line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    let mut content_length: Option<u64> = None;
    let mut codings: Vec<String> = Vec::new();
    let (mut upgrade, mut conn_upgrade) = (false, false);
    for line in lines {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err("obs-fold (a header line starting with whitespace)");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err("a header line without a colon");
        };
        let name = &line[..colon];
        if name.last().is_some_and(|b| b.is_ascii_whitespace()) {
            return Err("whitespace between a header name and its colon");
        }
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        let value = value.trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(',') {
                let item = item.trim();
                if item.is_empty() || item.len() > 19 || !item.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("invalid Content-Length");
                }
                let n: u64 = item.parse().map_err(|_| "invalid Content-Length")?;
                if content_length.is_some_and(|c| c != n) {
                    return Err("conflicting Content-Length values");
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.extend(value.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty()));
            if value.split(',').all(|c| c.trim().is_empty()) {
                return Err("empty Transfer-Encoding");
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn_upgrade |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        }
    }
    if !codings.is_empty() {
        if content_length.is_some() {
            return Err("Content-Length together with Transfer-Encoding");
        }
        if version == b"HTTP/1.0" {
            return Err("Transfer-Encoding in an HTTP/1.0 request");
        }
        let chunked = codings.iter().filter(|c| *c == "chunked").count();
        if chunked != 1 || codings.last().map(String::as_str) != Some("chunked") {
            return Err("Transfer-Encoding must end with chunked (once)");
        }
        return Ok(State::ChunkSize);
    }
    if method == b"CONNECT" {
        return Ok(State::Tunnel);
    }
    match content_length {
        Some(n) if n > 0 => Ok(State::Body(n)),
        _ if upgrade && conn_upgrade => Ok(State::Tunnel),
        _ => Ok(State::Head),
    }
}

/// `1a;ext=x` (a chunk-size line without its CRLF) → 26. Hex digits only,
/// at most 16, then optional extensions.
pub(crate) fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    if !(rest.is_empty() || rest[0] == b';') || rest.iter().any(|&b| b == b'\r' || b == 0) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for Guard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || this.state == State::Refused {
                return Poll::Ready(Ok(()));
            }
            // Bodies and tunnels: read straight into hyper's buffer.
            if let State::Body(_) | State::ChunkData(_) | State::Tunnel = this.state {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                let got = buf.filled().len() - before;
                if got == 0 {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                let take = match this.state {
                    State::Body(n) | State::ChunkData(n) => got.min(usize::try_from(n).unwrap_or(usize::MAX)),
                    _ => got,
                };
                if take < got {
                    // The rest belongs to what follows the body: check it first.
                    let rest = buf.filled()[before + take..].to_vec();
                    buf.set_filled(before + take);
                    this.advance_body(take);
                    this.process(&rest);
                } else {
                    this.advance_body(take);
                }
                return Poll::Ready(Ok(()));
            }
            // One scratch buffer per connection (not zeroed per read).
            let mut tmp = std::mem::take(&mut this.scratch);
            tmp.resize(8192, 0);
            let mut rb = ReadBuf::new(&mut tmp);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            if let Poll::Ready(Err(e)) = polled {
                this.scratch = tmp;
                return Poll::Ready(Err(e));
            }
            if polled.is_pending() {
                this.scratch = tmp;
                if this.head_deadline_passed(cx) {
                    *this.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(HEAD_TIMEOUT);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HEAD_TIMEOUT)));
                }
                return Poll::Pending;
            }
            this.seen_bytes = true;
            if n == 0 {
                this.scratch = tmp;
                this.eof = true;
                // hyper sees the incomplete head and reports it.
                let line = std::mem::take(&mut this.line);
                this.out.extend_from_slice(&line);
                continue;
            }
            this.process(&tmp[..n]);
            this.scratch = tmp;
        }
    }
}

impl<S> Guard<S> {
    fn advance_body(&mut self, k: usize) {
        self.state = match self.state {
            State::Body(n) if n == k as u64 => State::Head,
            State::Body(n) => State::Body(n - k as u64),
            State::ChunkData(n) if n == k as u64 => State::ChunkCr,
            State::ChunkData(n) => State::ChunkData(n - k as u64),
            s => s,
        };
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

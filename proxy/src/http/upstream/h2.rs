//! HTTP/2 to endpoints with the h2 crate, the stream opened and its response
//! awaited by the request's own task.
//!
//! hyper's HTTP/2 client passes every request through a channel to a
//! dispatch task, which opens the stream and then spawns one more task per
//! request to await the response and hand it back through a oneshot: two
//! hops and a task per request that a proxy's request task can do itself.
//! Here the connection's task only reads and writes the socket (and pings
//! an idle endpoint); a request body that is not complete when the stream
//! opens gets a task of its own to stream it, as it must outlive the wait
//! for the response head.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    task::{Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use h2::{Reason, client::SendRequest};
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use super::super::{
    Body, BoxError, BoxRequest,
    h2_body::{Pipe, PipeError, RecvBody, describe},
    headers,
};
use crate::endpoint::Held;

/// A ping goes to an endpoint after this long, and the connection is closed
/// if the answer takes longer than [`KEEP_ALIVE_TIMEOUT`].
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response header list accepted from an endpoint (as HTTP/1.1's head).
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// One multiplexed connection to an endpoint; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    tx: SendRequest<Bytes>,
    /// Set once the connection can open no more streams: its task ended,
    /// or the endpoint sent GOAWAY.
    closed: Arc<AtomicBool>,
}

type Failure = super::Failure<String>;
/// The error, described (`http2 error: ...`).
type Unsent = super::Unsent<String>;

impl Conn {
    /// The HTTP/2 handshake on `io`; the connection's task keeps `held`
    /// (its count against `max_connections`) until it ends.
    pub(crate) async fn handshake(io: TcpStream, held: Held) -> Result<Self, h2::Error> {
        let (tx, conn) = h2::client::Builder::new()
            .enable_push(false)
            // Streams opened before the endpoint's SETTINGS say its limit:
            // the 100 that RFC 9113 asks every endpoint to allow at least.
            .initial_max_send_streams(100)
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(1 << 20)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(conn, Arc::clone(&closed), held));
        Ok(Self { tx, closed })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Sends `req` (its URI already absolute) and awaits the response head.
    /// The response body keeps `in_flight` until it ends.
    pub(crate) async fn send(
        self,
        req: BoxRequest,
        in_flight: Option<Held>,
    ) -> Result<Response<Body>, Failure> {
        let mut tx = self.tx;
        // Waits while the endpoint's limit of concurrent streams is reached;
        // fails when the connection can open no more streams.
        if let Err(e) = std::future::poll_fn(|cx| tx.poll_ready(cx)).await {
            self.closed.store(true, Relaxed);
            return Err(Failure::Unsent(Box::new(Unsent { req, in_flight, error: describe(&e) })));
        }
        let (mut parts, body) = (*req).into_parts();
        // Connection-specific fields are malformed in HTTP/2 (RFC 9113
        // §8.2.2); the handler already dropped them, bar an upgrade's.
        if parts.headers.contains_key(header::CONNECTION) || parts.headers.contains_key(header::UPGRADE) {
            headers::strip_hop_by_hop(&mut parts.headers, false);
        }
        let eos = body.is_end_stream();
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || has_payload_semantics(&parts.method))
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let (response, stream) = match tx.send_request(Request::from_parts(parts, ()), eos) {
            Ok(r) => r,
            Err(e) => {
                // Not the request's fault (its headers): the connection's.
                if e.is_io() || e.reason().is_some() {
                    self.closed.store(true, Relaxed);
                }
                return Err(Failure::Upstream(describe(&e)));
            }
        };
        let mut body_failed = None;
        if !eos {
            // The client's body failing cancels the stream.
            let mut pipe = Pipe::new(body, stream, Reason::CANCEL);
            // Most bodies are already complete: sent now, with no task.
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx))).await {
                Poll::Ready(Err(PipeError::Body(reason))) => return Err(Failure::Downstream(reason)),
                // The response (or its absence) says what happened.
                Poll::Ready(_) => {}
                Poll::Pending => {
                    let failed = Arc::new(OnceLock::new());
                    pipe.report_to(Arc::clone(&failed));
                    body_failed = Some(failed);
                    tokio::spawn(async move {
                        if let Err(PipeError::Stream(e)) = pipe.await {
                            tracing::debug!(error = %e, "request body to the endpoint stopped");
                        }
                    });
                }
            }
        }
        let resp = match response.await {
            Ok(r) => r,
            Err(e) => {
                return Err(match body_failed.as_ref().and_then(|f| f.get()) {
                    Some(reason) => Failure::Downstream(reason.clone()),
                    None => Failure::Upstream(describe(&e)),
                });
            }
        };
        let (parts, recv) = resp.into_parts();
        let body = RecvBody::new(recv, &parts.headers, in_flight, upstream_body_error).boxed_unsync();
        Ok(Response::from_parts(parts, body))
    }
}

/// Whether a request with this method means something by a body (a
/// `content-length: 0` is then worth sending).
fn has_payload_semantics(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT)
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response body failed: http2 error: {0}")]
struct UpstreamBodyError(h2::Error);

fn upstream_body_error(e: h2::Error) -> BoxError {
    Box::new(UpstreamBodyError(e))
}

/// Runs the connection, pinging the endpoint when it has been quiet for
/// [`KEEP_ALIVE_INTERVAL`]; marks it closed when it ends.
async fn drive(mut conn: h2::client::Connection<TcpStream, Bytes>, closed: Arc<AtomicBool>, held: Held) {
    let _held = held;
    let mut ping = conn.ping_pong();
    let timer = tokio::time::sleep(KEEP_ALIVE_INTERVAL);
    tokio::pin!(timer);
    let mut awaiting_pong = false;
    let r = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut conn).poll(cx) {
            return Poll::Ready(r.map_err(|e| describe(&e)));
        }
        let Some(ping) = ping.as_mut() else { return Poll::Pending };
        loop {
            if awaiting_pong {
                match ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        awaiting_pong = false;
                        timer.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE_INTERVAL);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(describe(&e))),
                    Poll::Pending => {}
                }
            }
            ready!(timer.as_mut().poll(cx));
            if awaiting_pong {
                return Poll::Ready(Err(format!("no answer to a keep-alive ping in {KEEP_ALIVE_TIMEOUT:?}")));
            }
            if let Err(e) = ping.send_ping(h2::Ping::opaque()) {
                return Poll::Ready(Err(describe(&e)));
            }
            awaiting_pong = true;
            timer.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE_TIMEOUT);
        }
    })
    .await;
    closed.store(true, Relaxed);
    if let Err(e) = r {
        tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
    }
}

#[cfg(test)]
mod tests;

//! HTTP/2 from clients, served with the h2 crate: each stream's request
//! goes to [`super::handle`] in a task of its own, which then writes the
//! response into the stream.
//!
//! hyper's HTTP/2 server does the same through its own layers (a service
//! call, its body type around h2's, a state machine per stream task).
//! callgrind, h2c through a node, instructions per request: 40.8k through
//! hyper's server. Here: 41.6k when the stream's future was not boxed (a
//! task's future is copied whole when it is spawned and again as it
//! finishes), 39.9k boxed, 37.9k once bodies asked h2's locked state less
//! and the rare parts of a request's future were boxed out of it. Later,
//! on another machine: 38.2k before and 37.4k after the request itself
//! travelled boxed ([`super::BoxRequest`]).
//!
//! Tried and dropped: running the streams' futures in the connection's
//! task (a `FuturesUnordered`). It took 37.3k instructions per request (no
//! 128-byte-aligned task cell to allocate), but in `sluice-bench l7` it
//! served fewer h2c requests per second than tasks do at the same CPU per
//! request (191 654 vs 199 715, p50 0.625 vs 0.583 ms, side by side): one
//! task per connection serializes its streams' work.
//!
//! Kept from hyper's server: the limits are h2's SETTINGS and checks; a
//! client's RST_STREAM (or a closed connection) cancels its request; a
//! drain sends GOAWAY and lets the streams finish; `date` is added;
//! connection-specific fields are never sent; a response body of known
//! length gets its Content-Length. Unlike hyper's, no body is sent for
//! HEAD, 204 and 304.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::Poll,
};

use bytes::Bytes;
use h2::{Reason, server::SendResponse};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::net::TcpStream;

use super::{
    BoxError, BoxRequest, Conn, DownstreamBodyError,
    h2_body::{Pipe, RecvBody},
    wire,
};
use crate::cancel::Cancelled;

/// Serves the connection until it closes; on `drain`, GOAWAY and the
/// streams already open finish.
pub(super) async fn serve(io: TcpStream, conn: &Arc<Conn>, drain: &mut Cancelled) -> Result<(), h2::Error> {
    let limits = &conn.ctx.limits;
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.h2_max_local_error_reset_streams))
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, Bytes>(io);
    let mut c = tokio::select! {
        biased;
        c = handshake => c?,
        // Nothing was asked yet: nothing to finish.
        _ = &mut *drain => return Ok(()),
    };
    let mut draining = false;
    loop {
        let next = poll_fn(|cx| {
            if !draining && Pin::new(&mut *drain).poll(cx).is_ready() {
                draining = true;
                c.graceful_shutdown();
            }
            c.poll_accept(cx)
        })
        .await;
        match next {
            Some(Ok((req, respond))) => {
                let head = req.method() == Method::HEAD;
                let (parts, recv) = req.into_parts();
                let body = RecvBody::new(recv, &parts.headers, None, downstream_body_error).boxed_unsync();
                let req = Box::new(Request::from_parts(parts, body));
                // Boxed: a task's future is copied whole when it is
                // spawned and again as it finishes.
                tokio::spawn(Box::pin(stream(Arc::clone(conn), req, head, respond)));
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// One stream: the request handled, the response written.
async fn stream(conn: Arc<Conn>, req: BoxRequest, head: bool, mut respond: SendResponse<Bytes>) {
    let (peer, orig) = (conn.peer, conn.orig);
    // In a block of its own, so the handler's future takes no room beside
    // the response's in this one.
    let resp = {
        let mut handling = std::pin::pin!(super::handle(req, conn));
        poll_fn(|cx| {
            if let Poll::Ready(Ok(resp)) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(resp));
            }
            // The client's RST_STREAM cancels the request (dropping its future).
            match respond.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    let Some(resp) = resp else {
        tracing::debug!(%peer, %orig, "HTTP/2 stream reset (or its connection closed) before its response");
        return;
    };
    // The handler dropped the connection-specific fields, which h2 would
    // refuse (RFC 9113 §8.2.2).
    let (mut parts, body) = resp.into_parts();
    parts.headers.entry(header::DATE).or_insert_with(|| wire::with_date(HeaderValue::clone));
    // No body for HEAD, 204 and 304 (a proxy's own answer may have one).
    let bodiless = head || matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if let Some(len) = body.size_hint().exact()
        && !bodiless
    {
        parts.headers.entry(header::CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
    }
    let eos = bodiless || body.is_end_stream();
    let tx = match respond.send_response(Response::from_parts(parts, ()), eos) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(%peer, %orig, error = %e, "HTTP/2 response not sent");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if eos {
        return;
    }
    // The endpoint's body failing mid-way resets the client's stream.
    if let Err(e) = Pipe::new(body, tx, Reason::INTERNAL_ERROR).await {
        tracing::debug!(%peer, %orig, error = ?e, "HTTP/2 response body stopped");
    }
}

/// The client's request body failed: a reset, or more or less DATA than
/// its Content-Length.
#[derive(Debug, thiserror::Error)]
#[error("http2 error: {0}")]
struct H2BodyError(h2::Error);

fn downstream_body_error(e: h2::Error) -> BoxError {
    Box::new(DownstreamBodyError(Box::new(H2BodyError(e))))
}

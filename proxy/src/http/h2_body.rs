//! Bodies over HTTP/2 streams with the h2 crate, for both ends the proxy
//! speaks it: a stream's incoming DATA and trailers as an
//! [`http_body::Body`] ([`RecvBody`]), and a body written into a stream
//! within its flow-control window ([`Pipe`]).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, header};
use http_body::{Frame, SizeHint};

use super::BoxError;
use crate::endpoint::Held;

pub(crate) fn describe(e: &h2::Error) -> String {
    format!("http2 error: {e}")
}

/// The Content-Length a message declares, if any (h2 holds its DATA to it).
fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[derive(Debug)]
pub(crate) enum PipeError {
    /// The body failed; the stream was reset.
    Body(String),
    /// The peer reset the stream, or the connection failed.
    Stream(String),
}

/// Streams a body into its HTTP/2 stream, within the flow-control window
/// the peer grants. The body's failure resets the stream with
/// `body_failed`.
#[derive(Debug)]
pub(crate) struct Pipe<B> {
    body: B,
    tx: SendStream<Bytes>,
    /// A chunk read from the body, waiting for window.
    waiting: Option<(Bytes, bool)>,
    body_failed: Reason,
    /// Where a spawned pipe leaves the body's error for the task that
    /// awaits the peer's answer, which sees only the reset.
    failed: Option<Arc<OnceLock<String>>>,
}

impl<B> Pipe<B> {
    pub(crate) fn new(body: B, tx: SendStream<Bytes>, body_failed: Reason) -> Self {
        Self { body, tx, waiting: None, body_failed, failed: None }
    }

    /// Keeps the body's error (if it fails) in `failed` too.
    pub(crate) fn report_to(&mut self, failed: Arc<OnceLock<String>>) {
        self.failed = Some(failed);
    }

    fn body_error(&mut self, e: &BoxError) -> PipeError {
        self.tx.send_reset(self.body_failed);
        let reason = e.to_string();
        if let Some(f) = &self.failed {
            let _ = f.set(reason.clone());
        }
        PipeError::Body(reason)
    }

    /// Pending, unless the peer has reset the stream meanwhile (an endpoint
    /// may answer before reading the whole body; a client may go away).
    /// Looked at only when waiting: it takes h2's lock.
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipeError>> {
        match self.tx.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => Poll::Ready(Err(PipeError::Stream(format!("reset: {reason}")))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(PipeError::Stream(describe(&e)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<B> Future for Pipe<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Output = Result<(), PipeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = &mut *self;
        let stream = |e: h2::Error| PipeError::Stream(describe(&e));
        loop {
            if me.waiting.is_some() {
                // h2 sends what the window allows and buffers the rest of
                // the chunk; wait for some window first, claiming only one
                // byte of it meanwhile (claiming the whole chunk would hold
                // window that other streams could use).
                while me.tx.capacity() == 0 {
                    match me.tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(stream(e))),
                        Poll::Ready(None) => {
                            return Poll::Ready(Err(PipeError::Stream(
                                "the stream closed while sending".into(),
                            )));
                        }
                        Poll::Pending => return me.pending_unless_reset(cx),
                    }
                }
                let Some((chunk, eos)) = me.waiting.take() else { continue };
                if let Err(e) = me.tx.send_data(chunk, eos) {
                    return Poll::Ready(Err(stream(e)));
                }
                if eos {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let Poll::Ready(frame) = Pin::new(&mut me.body).poll_frame(cx) else {
                return me.pending_unless_reset(cx);
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = me.body.is_end_stream();
                        if data.is_empty() {
                            if eos {
                                return Poll::Ready(me.tx.send_data(data, true).map_err(stream));
                            }
                            continue;
                        }
                        me.tx.reserve_capacity(1);
                        me.waiting = Some((data, eos));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            me.tx.reserve_capacity(0);
                            return Poll::Ready(me.tx.send_trailers(trailers).map_err(stream));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(me.body_error(&e))),
                None => return Poll::Ready(me.tx.send_data(Bytes::new(), true).map_err(stream)),
            }
        }
    }
}

/// A stream's incoming body. `in_flight` (an endpoint's count of the
/// exchange) is let go when the body ends; `error` says whose failure a
/// stream error is.
#[derive(Debug)]
pub(crate) struct RecvBody {
    recv: RecvStream,
    /// DATA frames are over; trailers (if any) come next.
    data_done: bool,
    /// The stream has ended, as last seen (each look at h2's state takes
    /// its lock, and the handler asks several times per request).
    ended: bool,
    /// Bytes still to come, when the message declared its length.
    remaining: Option<u64>,
    in_flight: Option<Held>,
    error: fn(h2::Error) -> BoxError,
}

impl RecvBody {
    /// The body of a message with these `headers` (its declared length).
    pub(crate) fn new(
        recv: RecvStream,
        headers: &HeaderMap,
        in_flight: Option<Held>,
        error: fn(h2::Error) -> BoxError,
    ) -> Self {
        let ended = recv.is_end_stream();
        Self {
            recv,
            data_done: ended,
            ended,
            remaining: if ended { Some(0) } else { content_length(headers) },
            in_flight: if ended { None } else { in_flight },
            error,
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.remaining = Some(0);
        self.in_flight = None;
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = &mut *self;
        if !me.data_done {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window opens again as the other side takes the data.
                    let _ = me.recv.flow_control().release_capacity(data.remaining());
                    if let Some(r) = &mut me.remaining {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    if me.recv.is_end_stream() {
                        me.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    me.end();
                    return Poll::Ready(Some(Err((me.error)(e))));
                }
                None => me.data_done = true,
            }
        }
        let r = ready!(me.recv.poll_trailers(cx));
        me.end();
        Poll::Ready(match r {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err((me.error)(e))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

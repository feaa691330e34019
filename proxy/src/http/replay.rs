//! A request body that can be sent again: the first attempt streams it
//! through (a bidirectional gRPC stream is not held back) while keeping a
//! copy, up to a cap; a retry replays the copy and then continues with what
//! the client has not sent yet. Past the cap the copy is dropped and the
//! request is no longer retried.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::{Body, BoxError};

#[derive(Debug)]
struct Shared {
    inner: Body,
    buf: Vec<Bytes>,
    buffered: usize,
    cap: usize,
    trailers: Option<HeaderMap>,
    /// The client's body has ended (its end is in `buf`/`trailers`).
    done: bool,
    /// Over the cap, or the client's body failed: no replay.
    spoiled: bool,
    /// Only the newest attempt may read on.
    generation: u64,
}

#[derive(Debug, Clone)]
pub struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    pub fn new(inner: Body, cap: usize) -> Self {
        Replay(Arc::new(Mutex::new(Shared {
            inner,
            buf: Vec::new(),
            buffered: 0,
            cap,
            trailers: None,
            done: false,
            spoiled: false,
            generation: 0,
        })))
    }

    /// The body for the next attempt; earlier attempts' bodies stop.
    pub fn attempt(&self) -> ReplayBody {
        let mut s = self.lock();
        s.generation += 1;
        ReplayBody { shared: Arc::clone(&self.0), generation: s.generation, pos: 0, sent_trailers: false }
    }

    pub fn replayable(&self) -> bool {
        !self.lock().spoiled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    pos: usize,
    sent_trailers: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the request was retried; this attempt's body was abandoned")]
struct Superseded;

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        if s.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if this.pos < s.buf.len() {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(s.buf[this.pos - 1].clone()))));
        }
        if s.done {
            if !this.sent_trailers
                && let Some(t) = &s.trailers
            {
                this.sent_trailers = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(f) => f,
        };
        match frame {
            None => {
                s.done = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                s.spoiled = true;
                Poll::Ready(Some(Err(e)))
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !s.spoiled {
                        if s.buffered + data.len() > s.cap {
                            s.spoiled = true;
                            s.buf = Vec::new();
                            this.pos = 0;
                        } else {
                            s.buffered += data.len();
                            s.buf.push(data.clone());
                            this.pos += 1;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.done = true;
                    this.sent_trailers = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if self.pos < s.buf.len() {
            return false;
        }
        if s.done {
            return s.trailers.is_none() || self.sent_trailers;
        }
        s.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if s.done {
            let left: usize = s.buf[self.pos.min(s.buf.len())..].iter().map(Bytes::len).sum();
            return SizeHint::with_exact(left as u64);
        }
        if self.pos == 0 && s.buf.is_empty() { s.inner.size_hint() } else { SizeHint::default() }
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    fn body(chunks: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn replays_what_the_first_attempt_read_then_continues() {
        let r = Replay::new(body(&["ab", "cd", "ef"]), 100);
        let mut first = r.attempt();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        // The first attempt fails here; the retry gets everything.
        let second = r.attempt();
        assert!(first.frame().await.unwrap().is_err(), "the old attempt is cut off");
        let all = second.collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcdef");
        assert!(r.replayable());
        let third = r.attempt();
        assert_eq!(third.size_hint().exact(), Some(6));
        assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn over_the_cap_is_not_replayable() {
        let r = Replay::new(body(&["abc", "def"]), 4);
        let all = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcdef", "the first attempt still gets everything");
        assert!(!r.replayable());
    }
}

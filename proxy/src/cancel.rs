//! Waiting for a [`CancellationToken`] beside a connection, cheaply.
//!
//! Every connection task waits for two tokens (drain, kill) in a `select!`
//! with its work, so the wait is polled on every wakeup of the task: twice
//! per proxied request. tokio-util's own wait future takes the token's mutex
//! and the `Notify`'s waiter lock on each poll (about 2% of a node's CPU
//! under load). [`Cancelled`] registers once and then costs one atomic load
//! per poll: the token's wakeup goes through a waker of ours that records
//! it, so the inner wait is polled again only when it may have finished.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Resolves once the token is cancelled.
#[derive(Debug)]
pub struct Cancelled {
    inner: Pin<Box<WaitForCancellationFutureOwned>>,
    signal: Arc<Signal>,
    waker: Waker,
    /// The task waker `signal` wakes, as last registered.
    task: Option<Waker>,
}

#[derive(Debug)]
struct Signal {
    /// Set by the token's wakeup: the inner wait must be polled.
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

impl Cancelled {
    pub fn new(token: CancellationToken) -> Self {
        let signal = Arc::new(Signal { woken: AtomicBool::new(true), task: Mutex::new(None) });
        Self {
            inner: Box::pin(token.cancelled_owned()),
            waker: Waker::from(Arc::clone(&signal)),
            signal,
            task: None,
        }
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            *this.signal.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            this.task = Some(w);
        }
        // A plain load first: the swap (a locked instruction) only when woken.
        if this.signal.woken.load(Ordering::Acquire) && this.signal.woken.swap(false, Ordering::AcqRel) {
            let mut inner_cx = Context::from_waker(&this.waker);
            return this.inner.as_mut().poll(&mut inner_cx);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_on_cancel_and_not_before() {
        let token = CancellationToken::new();
        let mut c = std::pin::pin!(Cancelled::new(token.clone()));
        for _ in 0..3 {
            assert!(std::future::poll_fn(|cx| Poll::Ready(c.as_mut().poll(cx).is_pending())).await);
        }
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            t.cancel();
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), c).await.expect("woken by the cancel");
    }

    #[tokio::test]
    async fn already_cancelled_resolves_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut c = std::pin::pin!(Cancelled::new(token));
        assert!(std::future::poll_fn(|cx| Poll::Ready(c.as_mut().poll(cx).is_ready())).await);
    }
}

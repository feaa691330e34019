//! The kernel fast paths the proxy may use, each proven on the running kernel
//! by a self-test at start-up; a path that fails is off, with one log line
//! and a metric, and the node works on the plain path.

use std::{os::fd::BorrowedFd, sync::Arc};

use sluice_proxy::{Splice, SpliceIds, Splicing};
use sluice_redirector::{SplicedPair, Splicer, sys};

use crate::cli::FastPath;

/// The proxy's view of the redirector's sk_skb splicer.
struct KernelSplice(Arc<Splicer>);

impl Splice for KernelSplice {
    fn splice(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> std::io::Result<SpliceIds> {
        let p = self.0.splice(a, b).map_err(std::io::Error::other)?;
        Ok(SpliceIds { a: p.a, b: p.b })
    }
    fn redirected(&self, from: u64) -> u64 {
        self.0.redirected(from)
    }
    fn queued(&self, fd: BorrowedFd<'_>) -> std::io::Result<u64> {
        sys::tcp_bytes_queued(fd)
    }
    fn unread(&self, fd: BorrowedFd<'_>) -> std::io::Result<u64> {
        sys::bytes_unread(fd)
    }
    fn received(&self, fd: BorrowedFd<'_>) -> std::io::Result<u64> {
        sys::tcp_bytes_received(fd)
    }
    fn release(&self, ids: SpliceIds) {
        self.0.release(SplicedPair { a: ids.a, b: ids.b });
    }
}

/// Whether a fast path is on, and why (or why not).
#[derive(Debug, Clone)]
pub(crate) struct PathState {
    pub name: &'static str,
    pub enabled: bool,
    pub reason: String,
    /// The loaded programs, whose counters `/metrics` shows.
    pub splicer: Option<Arc<Splicer>>,
}

/// Every fast path's state, decided at start-up (read by `/metrics`).
pub(crate) type States = Arc<[PathState]>;

/// Loads and self-tests sk_skb splicing; the splicer when it is on.
pub(crate) async fn splice(mode: FastPath) -> (Option<Splicing>, PathState) {
    let state = |enabled, reason: String| PathState { name: "splice", enabled, reason, splicer: None };
    let (splicing, state) = match mode {
        FastPath::Off => (None, state(false, "--splice off".into())),
        FastPath::Auto | FastPath::FailSelfTest => match Splicer::load() {
            Err(e) => (None, state(false, format!("cannot load: {e}"))),
            Ok(splicer) => {
                let splicer = Arc::new(splicer);
                let s: Arc<dyn Splice> = Arc::new(KernelSplice(Arc::clone(&splicer)));
                let tested = if mode == FastPath::FailSelfTest {
                    Err("failed on purpose (--splice fail-self-test)".to_string())
                } else {
                    sluice_proxy::splice::self_test(s.as_ref()).await
                };
                let (splicing, mut st) = match tested {
                    Ok(x) => (
                        Some(Splicing(s)),
                        state(
                            true,
                            format!(
                                "self-test passed ({} bytes up, {} down in the kernel)",
                                x.kernel_up, x.kernel_down
                            ),
                        ),
                    ),
                    Err(e) => (None, state(false, format!("self-test failed: {e}"))),
                };
                st.splicer = Some(splicer);
                (splicing, st)
            }
        },
    };
    if state.enabled {
        tracing::info!(path = "splice", "fast path on: sk_skb splicing of opaque TCP; {}", state.reason);
    } else {
        tracing::warn!(
            path = "splice",
            "fast path off: sk_skb splicing of opaque TCP; {}; connections are copied by the proxy",
            state.reason
        );
    }
    (splicing, state)
}

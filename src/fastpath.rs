//! The kernel fast paths the proxy may use, each proven on the running kernel
//! by a self-test at start-up; a path that fails is off, with one log line
//! and a metric, and the node works on the plain path.

use std::{os::fd::BorrowedFd, sync::Arc};

use sluice_proxy::{Splice, SpliceIds, Splicing};
use sluice_redirector::{LocalPairs, SplicedPair, Splicer, sys};

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
    pub local_pairs: Option<Arc<LocalPairs>>,
}

/// The proxy's view of the sk_msg map.
struct KernelPairs(Arc<LocalPairs>);

impl sluice_proxy::JoinLocalPair for KernelPairs {
    fn join(
        &self,
        fd: BorrowedFd<'_>,
        local: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    ) -> std::io::Result<()> {
        self.0.join(fd, local, peer).map_err(std::io::Error::other)
    }
}

/// Loads and self-tests the sk_msg path (the node's maps must be pinned);
/// when it passes, sock_ops starts adding pairs with the proxy port and the
/// proxy adds its ends.
pub(crate) async fn sk_msg(
    mode: FastPath,
    pin_dir: &std::path::Path,
    proxy_port: u16,
    slot: &sluice_proxy::LocalPairs,
    config: &sluice_mesh_config::MeshConfig,
) -> PathState {
    let mut st =
        PathState { name: "sk_msg", enabled: false, reason: String::new(), splicer: None, local_pairs: None };
    match mode {
        FastPath::Off => st.reason = "--sk-msg off".into(),
        FastPath::Auto | FastPath::FailSelfTest | FastPath::UnsafeNoSelfTest => {
            match LocalPairs::load(pin_dir) {
                Err(e) => st.reason = format!("cannot load: {e}"),
                Ok(lp) => {
                    let lp = Arc::new(lp);
                    let tested = if mode == FastPath::FailSelfTest {
                        Err("failed on purpose (--sk-msg fail-self-test)".to_string())
                    } else if mode == FastPath::UnsafeNoSelfTest {
                        tracing::warn!(
                            "sk_msg: self-test SKIPPED (--sk-msg unsafe-no-self-test): for benchmarks only, data may stall"
                        );
                        Ok(sluice_redirector::MsgSelfTest { redirected_bytes: 0 })
                    } else {
                        let t = Arc::clone(&lp);
                        tokio::task::spawn_blocking(move || t.self_test())
                            .await
                            .unwrap_or_else(|e| Err(format!("self-test crashed: {e}")))
                    };
                    let on = |x| -> Result<_, String> {
                        lp.set_local_endpoints(config).map_err(|e| e.to_string())?;
                        lp.set_on(proxy_port).map_err(|e| e.to_string())?;
                        Ok(x)
                    };
                    match tested.and_then(on) {
                        Ok(x) => {
                            let _ = slot.0.set(Arc::new(KernelPairs(Arc::clone(&lp))));
                            st.enabled = true;
                            st.reason =
                                format!("self-test passed ({} bytes through sk_msg)", x.redirected_bytes);
                        }
                        Err(e) => st.reason = format!("self-test failed: {e}"),
                    }
                    st.local_pairs = Some(lp);
                }
            }
        }
    }
    if st.enabled {
        tracing::info!(path = "sk_msg", "fast path on: sk_msg for local app <-> proxy pairs; {}", st.reason);
    } else {
        tracing::warn!(
            path = "sk_msg",
            "fast path off: sk_msg for local app <-> proxy pairs; {}; they use loopback TCP",
            st.reason
        );
    }
    st
}

/// Every fast path's state, decided at start-up (read by `/metrics`).
pub(crate) type States = Arc<[PathState]>;

/// Loads and self-tests sk_skb splicing; the splicer when it is on.
pub(crate) async fn splice(mode: FastPath) -> (Option<Splicing>, PathState) {
    let state = |enabled, reason: String| PathState {
        name: "splice",
        enabled,
        reason,
        splicer: None,
        local_pairs: None,
    };
    let (splicing, state) = match mode {
        FastPath::Off => (None, state(false, "--splice off".into())),
        FastPath::Auto | FastPath::FailSelfTest | FastPath::UnsafeNoSelfTest => match Splicer::load() {
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

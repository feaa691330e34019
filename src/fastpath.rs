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

impl PathState {
    /// A path that is off for `reason`.
    pub fn off(name: &'static str, reason: &str) -> Self {
        Self { name, enabled: false, reason: reason.to_string(), splicer: None, local_pairs: None }
    }
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
    let what = "sk_msg for local app <-> proxy pairs";
    announce("sk_msg", what, what, "they use loopback TCP", &st);
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
    let what = "sk_skb splicing of opaque TCP";
    announce("splice", what, what, "connections are copied by the proxy", &state);
    (splicing, state)
}

/// The address the zero-hop self-test dials: outside what configs use in
/// practice, and never one of the config's own (then the next port).
fn probe_vip(config: &sluice_mesh_config::MeshConfig, port: u16) -> std::net::SocketAddr {
    let taken: std::collections::HashSet<_> = config.service_addrs().into_keys().collect();
    (0..64u16)
        .map(|i| std::net::SocketAddr::from(([127, 255, 255, 254], port.wrapping_add(i).max(1))))
        .find(|a| !taken.contains(a))
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 255, 255, 253], port)))
}

/// Proves zero-hop on the running kernel before any service uses it: a
/// temporary zero-hop service whose endpoint is a listener of the node's
/// own; a child process in the mesh cgroup dials it (1 MiB both ways, small
/// writes, EOF both ways, getpeername shows the service address) while the
/// kernel's counter and the listener confirm the connection went straight
/// to the endpoint. The config's own services are restored after.
pub(crate) async fn zero_hop(
    mode: FastPath,
    redirector: &mut sluice_redirector::Redirector,
    config: &sluice_mesh_config::MeshConfig,
) -> PathState {
    let mut st = PathState {
        name: "zero_hop",
        enabled: false,
        reason: String::new(),
        splicer: None,
        local_pairs: None,
    };
    let result = match mode {
        FastPath::Off => Err("--zero-hop off".to_string()),
        FastPath::FailSelfTest => {
            Err("self-test failed: failed on purpose (--zero-hop fail-self-test)".to_string())
        }
        FastPath::Auto | FastPath::UnsafeNoSelfTest => {
            zero_hop_probe(redirector, config).await.map_err(|e| format!("self-test failed: {e}"))
        }
    };
    // The config's own services, whatever happened.
    let restored = redirector.services().sync(&effective(config, result.is_ok()));
    match (result, restored) {
        (Ok(()), Ok(_)) => {
            st.enabled = true;
            st.reason = "self-test passed".into();
        }
        (Err(e), _) => st.reason = e,
        (Ok(()), Err(e)) => st.reason = format!("restoring the service map failed: {e}"),
    }
    let zero_hop_ports = config.services.iter().flat_map(|s| &s.ports).filter(|p| p.zero_hop).count();
    announce(
        "zero_hop",
        &format!("zero-hop L4 ({zero_hop_ports} service ports ask for it)"),
        "zero-hop L4",
        &format!("its {zero_hop_ports} service ports go through the proxy"),
        &st,
    );
    st
}

/// The config the kernel gets: zero-hop ports lose the flag while the path is off.
/// The config as this node's kernel sees it: zero-hop connects only to
/// endpoints on this node (the others are reached through the proxy, which
/// tunnels to their node).
pub(crate) fn local_view(
    config: &sluice_mesh_config::MeshConfig,
    node: Option<&str>,
) -> sluice_mesh_config::MeshConfig {
    let mut c = config.clone();
    for s in &mut c.services {
        s.endpoints.retain(|e| e.node.is_none() || e.node.as_deref() == node);
    }
    c
}

pub(crate) fn effective(
    config: &sluice_mesh_config::MeshConfig,
    zero_hop: bool,
) -> sluice_mesh_config::MeshConfig {
    let mut c = config.clone();
    if !zero_hop {
        for p in c.services.iter_mut().flat_map(|s| s.ports.iter_mut()) {
            p.zero_hop = false;
        }
    }
    c
}

async fn zero_hop_probe(
    redirector: &mut sluice_redirector::Redirector,
    config: &sluice_mesh_config::MeshConfig,
) -> Result<(), String> {
    use std::io::{Read, Write};
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("endpoint listener: {e}"))?;
    let ep = listener.local_addr().map_err(|e| e.to_string())?;
    let vip = probe_vip(config, ep.port());
    let yaml = format!(
        "services:\n  - {{name: sluice-self-test, vips: [\"{}\"], ports: [{{port: {}, protocol: tcp, zero_hop: true}}]}}\nendpoints:\n  - {{service: sluice-self-test, address: 127.0.0.1, port: {}}}\n",
        vip.ip(),
        vip.port(),
        ep.port()
    );
    let probe = sluice_mesh_config::parse(std::path::Path::new("(zero-hop self-test)"), &yaml)
        .map_err(|e| e.to_string())?;
    let mut test = config.clone();
    test.services.extend(probe.services);
    redirector.services().sync(&test).map_err(|e| format!("adding the test service: {e}"))?;
    let before = redirector.stats().get(sluice_bpf::abi::Stat::ZeroHop);
    // The endpoint: echoes one connection, and tells who connected.
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> Result<std::net::SocketAddr, String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut s, peer) = loop {
            match listener.accept() {
                Ok(x) => break x,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(format!("no connection reached the endpoint: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("endpoint read: {e}"))?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).map_err(|e| format!("endpoint write: {e}"))?;
        }
        s.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
        Ok(peer)
    });
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = tokio::process::Command::new(exe)
        .args(["--log", "warn", "probe-zero-hop", "--cgroup"])
        .arg(redirector.cgroup())
        .arg(vip.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(15), child)
        .await
        .map_err(|_| "the probe did not finish within 15 s".to_string())?
        .map_err(|e| format!("starting the probe: {e}"))?;
    let peer = tokio::task::spawn_blocking(move || echo.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "endpoint thread panicked".to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let peer = peer?;
    let after = redirector.stats().get(sluice_bpf::abi::Stat::ZeroHop);
    if after <= before {
        return Err("the kernel did not count a zero-hop connect".into());
    }
    if !peer.ip().is_loopback() {
        return Err(format!("the endpoint was reached from {peer}"));
    }
    Ok(())
}

/// `sluice probe-zero-hop`: run by the node's self-test, inside the mesh cgroup.
pub(crate) fn probe_zero_hop(args: crate::cli::ProbeArgs) -> Result<(), crate::Failure> {
    use std::io::{Read, Write};
    let fail = |m: String| crate::Failure::new(crate::exit::FAILED, m);
    std::fs::write(args.cgroup.join("cgroup.procs"), "0")
        .map_err(|e| fail(format!("joining {}: {e}", args.cgroup.display())))?;
    let s = std::net::TcpStream::connect_timeout(&args.addr, std::time::Duration::from_secs(5))
        .map_err(|e| fail(format!("connecting to {}: {e}", args.addr)))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| fail(e.to_string()))?;
    let peer = s.peer_addr().map_err(|e| fail(e.to_string()))?;
    if peer != args.addr {
        return Err(fail(format!("getpeername shows {peer}, not the service address {}", args.addr)));
    }
    // 1 MiB in writes of varied sizes plus 200 small ones, then EOF; the echo must match.
    let mut data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    data.extend((0..200u32 * 7).map(|i| i as u8));
    let mut w = s.try_clone().map_err(|e| fail(e.to_string()))?;
    let sent = data.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let (big, small) = sent.split_at(1 << 20);
        for chunk in big.chunks(50_000) {
            w.write_all(chunk)?;
        }
        for chunk in small.chunks(7) {
            w.write_all(chunk)?;
        }
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::new();
    (&s).read_to_end(&mut back).map_err(|e| fail(format!("reading the echo: {e}")))?;
    writer.join().map_err(|_| fail("writer panicked".into()))?.map_err(|e| fail(format!("writing: {e}")))?;
    if back != data {
        return Err(fail(format!("{} bytes sent, {} came back, not the same", data.len(), back.len())));
    }
    Ok(())
}

/// One log line per fast path at start-up: on (and why), or off (why, and
/// what happens instead).
fn announce(path: &'static str, on: &str, off: &str, instead: &str, st: &PathState) {
    if st.enabled {
        tracing::info!(path, "fast path on: {on}; {}", st.reason);
    } else {
        tracing::warn!(path, "fast path off: {off}; {}; {instead}", st.reason);
    }
}

//! The proxy without the kernel: an in-process OriginalDst stands in for the
//! redirector's map, real sockets on 127.0.0.1 everywhere else.

#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use sluice_proxy::{NoHooks, OriginalDst, Proxy, ProxyConfig, ProxyStats, Routes};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

const VIP: &str = "127.100.0.10:8080";

/// Every connection "was going to" whatever `target` says now.
struct Fixed(Mutex<Option<SocketAddr>>);

impl OriginalDst for Fixed {
    fn original_dst(&self, _peer: SocketAddr, _local: SocketAddr) -> Option<sluice_proxy::Dialed> {
        self.0.lock().unwrap().map(|dst| sluice_proxy::Dialed { dst, cgroup_id: 0 })
    }
}

fn config(endpoints: &[SocketAddr]) -> sluice_mesh_config::MeshConfig {
    let mut text =
        "services:\n  - name: echo\n    vips: [127.100.0.10]\n    ports: [{port: 8080}]\nendpoints:\n"
            .to_string();
    for e in endpoints {
        text.push_str(&format!("  - {{service: echo, address: \"{}\", port: {}}}\n", e.ip(), e.port()));
    }
    sluice_mesh_config::parse(Path::new("test.yaml"), &text).unwrap()
}

/// An echo server; with `after_eof` it answers only once the client's FIN arrived.
async fn echo(after_eof: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut held = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    if after_eof {
                        held.extend_from_slice(&buf[..n]);
                    } else {
                        s.write_all(&buf[..n]).await.unwrap();
                    }
                }
                s.write_all(&held).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

struct Running {
    addr: SocketAddr,
    stats: Arc<ProxyStats>,
    routes: Routes,
    orig: Arc<Fixed>,
    stop: CancellationToken,
}

async fn proxy(endpoints: &[SocketAddr]) -> Running {
    let p = Proxy::bind(ProxyConfig {
        listen4: "127.0.0.1:0".parse().unwrap(),
        listen6: None,
        connect_timeout: Duration::from_secs(2),
        ..ProxyConfig::default()
    })
    .await
    .unwrap();
    let routes = p.routes(&config(endpoints));
    let orig = Arc::new(Fixed(Mutex::new(Some(VIP.parse().unwrap()))));
    let stop = CancellationToken::new();
    let (addr, stats) = (p.local_addr4(), p.stats());
    tokio::spawn(p.serve(routes.clone(), orig.clone(), Arc::new(NoHooks), stop.clone()));
    Running { addr, stats, routes, orig, stop }
}

/// Sends `data`, half-closes, returns everything read until EOF.
async fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    try_exchange(addr, data).await.unwrap()
}

async fn try_exchange(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    writer.await.unwrap()?;
    Ok(out)
}

/// A refused connection ends without a byte: EOF or reset, both fine.
async fn refused(addr: SocketAddr) -> bool {
    try_exchange(addr, b"x").await.map_or(true, |v| v.is_empty())
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn forwards_both_ways_intact() {
    let p = proxy(&[echo(false).await]).await;
    for n in [1, 1000, 3 * 1024 * 1024] {
        let data = pattern(n);
        assert_eq!(exchange(p.addr, &data).await, data, "{n} bytes");
    }
    assert_eq!(p.stats.forwarded.load(Ordering::Relaxed), 3);
    assert_eq!(p.stats.bytes_up.load(Ordering::Relaxed), 1 + 1000 + 3 * 1024 * 1024);
    p.stop.cancel();
}

#[tokio::test]
async fn half_close_reaches_the_endpoint_and_the_reply_still_flows() {
    let p = proxy(&[echo(true).await]).await;
    let data = pattern(200_000);
    assert_eq!(exchange(p.addr, &data).await, data);
}

#[tokio::test]
async fn a_refusing_endpoint_is_skipped() {
    // Port 1 on a loopback address no other test uses: nothing listens there.
    let dead: SocketAddr = "127.0.0.77:1".parse().unwrap();
    let live = echo(false).await;
    let p = proxy(&[dead, live]).await;
    for _ in 0..4 {
        assert_eq!(exchange(p.addr, b"ping").await, b"ping");
    }
    assert_eq!(p.stats.forwarded.load(Ordering::Relaxed), 4);
    assert_eq!(
        p.stats.upstream_connect_failed.load(Ordering::Relaxed),
        2,
        "round robin tried the dead one every other time"
    );
}

#[tokio::test]
async fn without_endpoints_or_original_destination_the_connection_is_closed() {
    let p = proxy(&[]).await;
    assert!(refused(p.addr).await);
    assert_eq!(p.stats.no_endpoint.load(Ordering::Relaxed), 1);
    *p.orig.0.lock().unwrap() = None;
    assert!(refused(p.addr).await);
    assert_eq!(p.stats.no_orig_dst.load(Ordering::Relaxed), 1);
    *p.orig.0.lock().unwrap() = Some("127.100.0.99:1".parse().unwrap());
    assert!(refused(p.addr).await);
    assert_eq!(p.stats.unknown_service.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_reload_moves_new_connections_and_keeps_open_ones() {
    let a = echo(false).await;
    let b = echo(false).await;
    let p = proxy(&[a]).await;
    // An open connection through A...
    let mut open = TcpStream::connect(p.addr).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();
    p.routes.apply(&config(&[b]));
    // ...keeps working after the reload.
    open.write_all(b"after!").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    assert_eq!(exchange(p.addr, b"new").await, b"new");
}

#[tokio::test]
async fn shutdown_waits_for_open_connections_then_returns() {
    let a = echo(false).await;
    let p = Proxy::bind(ProxyConfig {
        listen4: "127.0.0.1:0".parse().unwrap(),
        listen6: None,
        drain_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    })
    .await
    .unwrap();
    let addr = p.local_addr4();
    let stop = CancellationToken::new();
    let orig = Arc::new(Fixed(Mutex::new(Some(VIP.parse().unwrap()))));
    let r = p.routes(&config(&[a]));
    let task = tokio::spawn(p.serve(r, orig, Arc::new(NoHooks), stop.clone()));
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    open.read_exact(&mut buf).await.unwrap();
    stop.cancel();
    // The idle connection is closed at the drain deadline, and serve() returns.
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(open.read(&mut buf).await.unwrap(), 0);
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is gone");
}

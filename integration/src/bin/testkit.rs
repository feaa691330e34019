//! Test helper processes for the integration tests: an echo server and a
//! checksumming client that first moves itself into a cgroup (and optionally a
//! network namespace), so the kernel programs see it as a mesh workload.
//!
//! `sluice-testkit echo [--netns NAME] [--after-eof] LISTEN`
//!     prints `listening ADDR`, echoes every connection.
//! `sluice-testkit client [--cgroup DIR] [--netns NAME] [--chunk N] [--count N] [--parallel] [--timeout-ms MS] ADDR BYTES`
//!     (`--chunk 1`: random write sizes, 1 B to 64 KiB; `--parallel`: the
//!     `--count` connections at once, prints `intact=N` or fails)
//!     sends BYTES pseudo-random bytes, half-closes, reads to EOF, prints
//!     `sent=N received=M sent_sha=.. received_sha=.. peer=..`; with --count,
//!     does it N times (fails on the first connection that is not intact).
//! `sluice-testkit hold [--cgroup DIR] ADDR`
//!     connects, prints `connected`, holds the connection until stdin closes,
//!     then checks one echoed byte.
//! `sluice-testkit udp-sink [--netns NAME] --secs N LISTEN`
//!     counts UDP datagrams per source for N seconds, then prints `SRC COUNT` lines.
//! `sluice-testkit udp-send [--netns NAME] --count N [--pps R] ADDR`
//!     sends N datagrams (R per second; 0: as fast as it can), prints `sent N`.
//! `sluice-testkit get [--netns NAME] ADDR PATH`
//!     an HTTP/1.0 GET; prints the status line and the body.
//! `sluice-testkit exec [--cgroup DIR] [--netns NAME] -- CMD ARGS...`
//!     joins the cgroup (and netns), then execs CMD (curl, h2load, python...).
//! `sluice-testkit raw [--cgroup DIR] [--timeout-ms MS] ADDR < REQUEST`
//!     sends stdin as is, reads until the server closes; prints the response
//!     bytes, and `closed_after_ms=N` (or `still_open`) on stderr.
//! `sluice-testkit h2-abuse streams|resets|cancel ADDR N`
//!     a misbehaving HTTP/2 client written frame by frame: `streams` opens N
//!     streams at once whatever the server's limit (each asks the endpoint to
//!     wait 1 s), `resets` opens and resets N streams at once (rapid reset),
//!     `cancel` opens N streams (each asking for a 3 s wait), resets them
//!     with CANCEL 300 ms later and keeps the connection open until the
//!     timeout. Prints `rst_stream=N goaway=CODE|none headers=N` from what
//!     came back.
//! `sluice-testkit pingpong [--cgroup DIR] [--secs N] ADDR SIZE`
//!     against an echo: SIZE bytes out, the same back, again and again for N
//!     seconds on one connection; prints `round_trips=N p50_us=.. p99_us=..`.
//! `sluice-testkit bulk [--cgroup DIR] ADDR BYTES`
//!     against an echo: BYTES out (64 KiB writes) while reading them back;
//!     prints `bytes=N secs=S gbit_per_s=G` (one direction's payload).
//! `sluice-testkit hello LISTEN`
//!     a benchmark backend: hyper, one thread, HTTP/1.1 keep-alive and h2c,
//!     answers every request with 200 "hello world\n".
//! `sluice-testkit h2-forward UPSTREAM LISTEN`
//!     a benchmark reference, not a proxy: h2c in, every stream forwarded as
//!     it came over one HTTP/2 connection to UPSTREAM, on the h2 crate alone
//!     (one thread, run as a Sluice worker's; no routing, limits, retries or
//!     telemetry; bodies passed on without waiting for window). What the
//!     HTTP/2 library costs.
//! `sluice-testkit http LISTEN`
//!     a minimal HTTP/1.1 server (keep-alive, `Connection: close`) answering 200 "ok".

#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.iter().position(|a| a == "--") {
        Some(i) => {
            let c = args.split_off(i + 1);
            args.pop();
            c
        }
        None => Vec::new(),
    };
    let cmd = if args.is_empty() { String::new() } else { args.remove(0) };
    let cgroup = take_opt(&mut args, "--cgroup");
    let netns = take_opt(&mut args, "--netns");
    let chunk: usize = take_opt(&mut args, "--chunk").map(|c| c.parse()).transpose()?.unwrap_or(16 * 1024);
    let after_eof = take_flag(&mut args, "--after-eof");
    let parallel = take_flag(&mut args, "--parallel");
    let count: usize = take_opt(&mut args, "--count").map(|c| c.parse()).transpose()?.unwrap_or(1);
    let secs: u64 = take_opt(&mut args, "--secs").map(|c| c.parse()).transpose()?.unwrap_or(2);
    let pps: u64 = take_opt(&mut args, "--pps").map(|c| c.parse()).transpose()?.unwrap_or(0);
    let split_at: Option<usize> = take_opt(&mut args, "--split-at").map(|c| c.parse()).transpose()?;
    let pause_ms: u64 = take_opt(&mut args, "--pause-ms").map(|c| c.parse()).transpose()?.unwrap_or(0);
    let timeout = take_opt(&mut args, "--timeout-ms")
        .map(|c| c.parse().map(std::time::Duration::from_millis))
        .transpose()?
        .unwrap_or(std::time::Duration::from_secs(10));
    if let Some(cg) = cgroup {
        // Writing "0" moves the writing process; the kernel programs of that cgroup
        // apply to every socket we create from here on.
        std::fs::write(Path::new(&cg).join("cgroup.procs"), "0")
            .with_context(|| format!("joining cgroup {cg}"))?;
    }
    if let Some(ns) = netns {
        let f =
            std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    }
    match (cmd.as_str(), args.as_slice()) {
        ("echo", [listen]) => echo(listen.parse()?, after_eof),
        ("client", [addr, bytes]) if parallel => {
            let (addr, bytes): (SocketAddr, usize) = (addr.parse()?, bytes.parse()?);
            let threads: Vec<_> =
                (0..count).map(|_| std::thread::spawn(move || client(addr, bytes, chunk, timeout))).collect();
            // A connection that fails (is reset) is told apart from one that
            // ends normally with wrong data: only the latter is corruption.
            let (mut intact, mut failed, mut broken) = (0, 0, 0);
            for (i, t) in threads.into_iter().enumerate() {
                match t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))? {
                    Ok(x) if x.intact => intact += 1,
                    Ok(x) => {
                        broken += 1;
                        eprintln!("connection {}: {}", i + 1, x.line);
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("connection {}: failed: {e:#}", i + 1);
                    }
                }
            }
            println!("intact={intact} failed={failed} broken={broken} bytes_each={bytes}");
            if broken > 0 {
                bail!("{broken} of {count} parallel connections ended normally with wrong data");
            }
            Ok(())
        }
        ("client", [addr, bytes]) => {
            let (addr, bytes) = (addr.parse()?, bytes.parse()?);
            for i in 0..count {
                let x =
                    client(addr, bytes, chunk, timeout).with_context(|| format!("connection {}", i + 1))?;
                // One connection: report whatever happened; several: stop at the first broken one.
                if i + 1 == count || !x.intact {
                    println!("{}", x.line);
                    if count > 1 && !x.intact {
                        bail!("connection {} of {count} was not intact", i + 1);
                    }
                    break;
                }
            }
            Ok(())
        }
        ("hold", [addr]) => hold(addr.parse()?, timeout),
        ("http", [listen]) => http(listen.parse()?),
        ("hello", [listen]) => hello(listen.parse()?),
        ("h2-forward", [upstream, listen]) => h2_forward(upstream.parse()?, listen.parse()?),
        ("get", [addr, path]) => {
            let mut s = TcpStream::connect_timeout(&addr.parse()?, timeout)?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
            println!("{}\n{body}", head.lines().next().unwrap_or_default());
            Ok(())
        }
        ("exec", []) if !command.is_empty() => {
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(&command[0]).args(&command[1..]).exec();
            bail!("exec {}: {e}", command[0])
        }
        ("raw", [addr]) => raw(addr.parse()?, timeout, split_at, std::time::Duration::from_millis(pause_ms)),
        ("pingpong", [addr, size]) => pingpong(addr.parse()?, size.parse()?, secs),
        ("bulk", [addr, bytes]) => bulk(addr.parse()?, bytes.parse()?),
        ("h2-abuse", [mode, addr, n]) => h2_abuse(mode, addr.parse()?, n.parse()?, timeout),
        ("udp-sink", [listen]) => udp_sink(listen.parse()?, secs),
        ("udp-send", [addr]) => udp_send(addr.parse()?, count, pps),
        _ => bail!("usage: sluice-testkit echo|client ... (see the source)"),
    }
}

/// Binds `listen`, prints `listening ADDR`, and serves every connection
/// with `serve` on a task of its own, on one thread.
async fn accept_each<F, Fut>(listen: SocketAddr, serve: F) -> anyhow::Result<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind(listen).await?;
    println!("listening {}", l.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let Ok((s, _)) = l.accept().await else { continue };
        let _ = s.set_nodelay(true);
        tokio::spawn(serve(s));
    }
}

/// Runs `f` on a current-thread runtime (the backend and the forwarder
/// are one thread each, as the proxies they stand beside).
fn run_on_one_thread(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn hello(listen: SocketAddr) -> anyhow::Result<()> {
    run_on_one_thread(accept_each(listen, |s| async move {
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"hello world\n"),
            )))
        });
        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    }))
}

fn h2_forward(upstream: SocketAddr, listen: SocketAddr) -> anyhow::Result<()> {
    // On a Sluice worker's runtime, so the forwarder differs from Sluice
    // only in the proxy.
    sluice_proxy::listener::worker_runtime()?.block_on(async move {
        let up = tokio::net::TcpStream::connect(upstream).await?;
        up.set_nodelay(true)?;
        // The windows Sluice uses, both ways.
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, bytes::Bytes>(up)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("upstream connection: {e}");
            }
        });
        accept_each(listen, |s| {
            let client = client.clone();
            async move {
                let Ok(mut c) = h2::server::Builder::new()
                    .initial_window_size(1 << 20)
                    .initial_connection_window_size(4 << 20)
                    .max_concurrent_streams(1024)
                    .handshake::<_, bytes::Bytes>(s)
                    .await
                else {
                    return;
                };
                while let Some(Ok((req, respond))) = c.accept().await {
                    tokio::spawn(forward_stream(client.clone(), req, respond));
                }
            }
        })
        .await
    })
}

/// One stream: the request out as it came, the response back.
async fn forward_stream(
    client: h2::client::SendRequest<bytes::Bytes>,
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
) {
    let (parts, body) = req.into_parts();
    let eos = body.is_end_stream();
    let result = async {
        let mut client = client.ready().await?;
        let (resp, tx) = client.send_request(http::Request::from_parts(parts, ()), eos)?;
        if !eos {
            tokio::spawn(copy_body(body, tx));
        }
        let (parts, body) = resp.await?.into_parts();
        let eos = body.is_end_stream();
        let tx = respond.send_response(http::Response::from_parts(parts, ()), eos)?;
        if !eos {
            copy_body(body, tx).await;
        }
        Ok::<_, h2::Error>(())
    }
    .await;
    // Quietly: load generators reset their streams when a run ends.
    if result.is_err() {
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
    }
}

/// DATA and trailers from one stream into another; a failure resets the
/// stream written to.
async fn copy_body(mut from: h2::RecvStream, mut to: h2::SendStream<bytes::Bytes>) {
    let mut ended = false;
    while let Some(chunk) = from.data().await {
        let Ok(chunk) = chunk else {
            to.send_reset(h2::Reason::CANCEL);
            return;
        };
        let _ = from.flow_control().release_capacity(chunk.len());
        ended = from.is_end_stream();
        if to.send_data(chunk, ended).is_err() {
            return;
        }
    }
    if ended {
        return;
    }
    match from.trailers().await {
        Ok(Some(t)) => {
            let _ = to.send_trailers(t);
        }
        Ok(None) => {
            let _ = to.send_data(bytes::Bytes::new(), true);
        }
        Err(_) => to.send_reset(h2::Reason::CANCEL),
    }
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn h2_abuse(mode: &str, addr: SocketAddr, n: u32, timeout: std::time::Duration) -> anyhow::Result<()> {
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    // HPACK: :method GET (0x82), :scheme http (0x86), :path / (0x84),
    // :authority (literal, indexed name 1), x-delay-ms: 1000 (literal, new name).
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
    block.extend([0x00, 10]);
    block.extend(b"x-delay-ms");
    block.extend([4]);
    block.extend(if mode == "cancel" { b"3000" } else { b"1000" });
    for i in 0..n {
        let id = 2 * i + 1;
        // END_STREAM | END_HEADERS
        out.extend(h2_frame(HEADERS, 0x5, id, &block));
        if mode == "resets" {
            out.extend(h2_frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        }
    }
    s.write_all(&out)?;
    if mode == "cancel" {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let resets: Vec<u8> =
            (0..n).flat_map(|i| h2_frame(RST_STREAM, 0, 2 * i + 1, &8u32.to_be_bytes())).collect();
        s.write_all(&resets)?;
    }
    s.set_read_timeout(Some(timeout))?;
    let (mut rst, mut headers, mut goaway) = (0, 0, None);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let k = match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        buf.extend_from_slice(&chunk[..k]);
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            match buf[3] {
                RST_STREAM => rst += 1,
                HEADERS => headers += 1,
                GOAWAY if len >= 8 => goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]])),
                _ => {}
            }
            buf.drain(..9 + len);
        }
        if mode == "streams" && headers + rst >= n {
            break;
        }
    }
    let goaway = goaway.map_or("none".to_string(), |c| c.to_string());
    println!("rst_stream={rst} goaway={goaway} headers={headers}");
    Ok(())
}

fn pingpong(addr: SocketAddr, size: usize, secs: u64) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let out = vec![7u8; size.max(1)];
    let mut back = vec![0u8; size.max(1)];
    let mut lat = Vec::new();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        let t = std::time::Instant::now();
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    let p = |q: f64| lat.get(((lat.len() as f64) * q) as usize).copied().unwrap_or(0) as f64 / 1000.0;
    println!("round_trips={} p50_us={:.1} p90_us={:.1} p99_us={:.1}", lat.len(), p(0.5), p(0.9), p(0.99));
    Ok(())
}

fn bulk(addr: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let s = TcpStream::connect(addr)?;
    let mut w = s.try_clone()?;
    let started = std::time::Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let block = vec![0x5au8; 65536];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(block.len() as u64) as usize;
            w.write_all(&block[..n])?;
            sent += n as u64;
        }
        w.shutdown(Shutdown::Write)
    });
    let mut r = s;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let secs = started.elapsed().as_secs_f64();
    if got != bytes {
        bail!("{got} of {bytes} bytes came back");
    }
    println!("bytes={bytes} secs={secs:.3} gbit_per_s={:.2}", bytes as f64 * 8.0 / secs / 1e9);
    Ok(())
}

/// Sends stdin (in two writes `pause` apart if `split_at` is given), then
/// prints what comes back until the server closes or `timeout` passes.
fn raw(
    addr: SocketAddr,
    timeout: std::time::Duration,
    split_at: Option<usize>,
    pause: std::time::Duration,
) -> anyhow::Result<()> {
    let mut req = Vec::new();
    std::io::stdin().read_to_end(&mut req)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    let (first, second) = req.split_at(split_at.unwrap_or(req.len()).min(req.len()));
    s.write_all(first)?;
    if !second.is_empty() {
        std::thread::sleep(pause);
        s.write_all(second)?;
    }
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(timeout))?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    std::io::stdout().write_all(&resp)?;
    if closed {
        eprintln!("closed_after_ms={}", started.elapsed().as_millis());
    } else {
        eprintln!("still_open");
    }
    Ok(())
}

fn take_opt(args: &mut Vec<String>, name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.remove(i);
    (i < args.len()).then(|| args.remove(i))
}

fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    let i = args.iter().position(|a| a == name);
    if let Some(i) = i {
        args.remove(i);
    }
    i.is_some()
}

fn echo(listen: SocketAddr, after_eof: bool) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("listening {}", l.local_addr()?);
    std::io::stdout().flush()?;
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let _ = serve_echo(&mut c, after_eof);
        });
    }
    Ok(())
}

/// Echoes until EOF, then half-closes. With `after_eof`, replies only once the
/// peer's FIN arrived: the reply direction must still work after a half-close.
pub fn serve_echo(c: &mut TcpStream, after_eof: bool) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut held = Vec::new();
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if after_eof { held.extend_from_slice(&buf[..n]) } else { c.write_all(&buf[..n])? }
    }
    c.write_all(&held)?;
    c.shutdown(Shutdown::Write)
}

fn client(
    addr: SocketAddr,
    bytes: usize,
    chunk: usize,
    timeout: std::time::Duration,
) -> anyhow::Result<Exchange> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    let peer = s.peer_addr()?;
    let mut w = s.try_clone()?;
    let chunk = chunk.max(1);
    let writer = std::thread::spawn(move || -> std::io::Result<String> {
        let mut sha = Sha256::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut sent = 0;
        // chunk 1 means random write sizes (1 to 64 KiB), from the same generator.
        let random = chunk == 1 && bytes > 1;
        let mut block = vec![0u8; if random { 65536 } else { chunk }];
        while sent < bytes {
            let want = if random {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % 65536) as usize + 1
            } else {
                chunk
            };
            let n = want.min(bytes - sent);
            for b in block.iter_mut().take(n) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *b = rng as u8;
            }
            w.write_all(&block[..n])?;
            sha.update(&block[..n]);
            sent += n;
        }
        w.shutdown(Shutdown::Write)?;
        Ok(hex(&sha.finalize()))
    });
    let mut sha = Sha256::new();
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        received += n;
    }
    let sent_sha = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let received_sha = hex(&sha.finalize());
    Ok(Exchange {
        intact: received == bytes && received_sha == sent_sha,
        line: format!(
            "sent={bytes} received={received} sent_sha={sent_sha} received_sha={received_sha} peer={peer}"
        ),
    })
}

struct Exchange {
    intact: bool,
    line: String,
}

fn hold(addr: SocketAddr, timeout: std::time::Duration) -> anyhow::Result<()> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    println!("connected {}", s.local_addr()?);
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    s.write_all(b"!")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if &b != b"!" {
        bail!("the held connection echoed {b:?}");
    }
    println!("still intact");
    Ok(())
}

fn http(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("listening {}", l.local_addr()?);
    std::io::stdout().flush()?;
    for conn in l.incoming() {
        let Ok(c) = conn else { continue };
        std::thread::spawn(move || {
            let _ = serve_http(c);
        });
    }
    Ok(())
}

/// Requests without bodies (what wrk sends); answers each with 200 "ok".
fn serve_http(mut c: TcpStream) -> std::io::Result<()> {
    let _ = c.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let close = head.contains("connection: close");
            let resp: &[u8] = if close {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            c.write_all(resp)?;
            if close {
                return c.shutdown(Shutdown::Write);
            }
        }
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn udp_sink(listen: SocketAddr, secs: u64) -> anyhow::Result<()> {
    let s = std::net::UdpSocket::bind(listen)?;
    println!("listening {}", s.local_addr()?);
    std::io::stdout().flush()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut counts = std::collections::BTreeMap::<std::net::IpAddr, u64>::new();
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left))?;
        match s.recv_from(&mut buf) {
            Ok((_, from)) => *counts.entry(from.ip()).or_default() += 1,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (ip, n) in counts {
        println!("{ip} {n}");
    }
    Ok(())
}

fn udp_send(addr: SocketAddr, count: usize, pps: u64) -> anyhow::Result<()> {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let s = std::net::UdpSocket::bind(bind)?;
    let start = std::time::Instant::now();
    let mut sent = 0;
    for i in 0..count {
        if let Some(offset) = (i as u64 * 1_000_000_000).checked_div(pps) {
            let due = start + std::time::Duration::from_nanos(offset);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // A full socket buffer under a flood is not an error for a flood.
        if s.send_to(&[0u8; 64], addr).is_ok() {
            sent += 1;
        }
    }
    println!("sent {sent}");
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

//! Test helper processes for the integration tests: an echo server and a
//! checksumming client that first moves itself into a cgroup (and optionally a
//! network namespace), so the kernel programs see it as a mesh workload.
//!
//! `sluice-testkit echo [--netns NAME] [--after-eof] LISTEN`
//!     prints `listening ADDR`, echoes every connection.
//! `sluice-testkit client [--cgroup DIR] [--netns NAME] [--chunk N] ADDR BYTES`
//!     sends BYTES pseudo-random bytes, half-closes, reads to EOF, prints
//!     `sent=N received=M sent_sha=.. received_sha=.. peer=..`.

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
    let cmd = if args.is_empty() { String::new() } else { args.remove(0) };
    let cgroup = take_opt(&mut args, "--cgroup");
    let netns = take_opt(&mut args, "--netns");
    let chunk: usize = take_opt(&mut args, "--chunk").map(|c| c.parse()).transpose()?.unwrap_or(16 * 1024);
    let after_eof = take_flag(&mut args, "--after-eof");
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
        ("client", [addr, bytes]) => client(addr.parse()?, bytes.parse()?, chunk),
        _ => bail!("usage: sluice-testkit echo|client ... (see the source)"),
    }
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

fn client(addr: SocketAddr, bytes: usize, chunk: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let peer = s.peer_addr()?;
    let mut w = s.try_clone()?;
    let chunk = chunk.max(1);
    let writer = std::thread::spawn(move || -> std::io::Result<String> {
        let mut sha = Sha256::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut sent = 0;
        let mut block = vec![0u8; chunk];
        while sent < bytes {
            let n = chunk.min(bytes - sent);
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
    println!(
        "sent={bytes} received={received} sent_sha={sent_sha} received_sha={} peer={peer}",
        hex(&sha.finalize())
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

//! `sluice-bench`: benchmarks run on this machine, side by side in one run.
//!
//! `sluice-bench workers [--secs N] [--rounds N]`: HTTP/1.1 through Sluice's L4
//! path with 1 and 2 proxy workers, and direct, driven by wrk from inside the
//! mesh cgroup, keep-alive and new-connection-per-request. Rounds alternate the
//! modes; the table shows medians. Needs root; build with `--release`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use anyhow::bail;
use sluice_integration::{
    CgroupGuard, Node,
    bench::{WrkResult, median, wrk},
    node::NodeOpts,
    process::http_process,
};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut opt = |name: &str, default: u32| -> anyhow::Result<u32> {
        Ok(match args.iter().position(|a| a == name) {
            Some(i) => {
                let v = args.get(i + 1).ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?.parse()?;
                args.drain(i..i + 2);
                v
            }
            None => default,
        })
    };
    let secs = opt("--secs", 10)?;
    let rounds = opt("--rounds", 3)?;
    match args.first().map(String::as_str) {
        Some("workers") => workers(secs, rounds),
        _ => bail!("usage: sluice-bench workers [--secs N] [--rounds N]"),
    }
}

fn workers(secs: u32, rounds: u32) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root");
    }
    let cg = CgroupGuard::new("benchworkers");
    let (_backend, backend) = http_process("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.90:80".parse()?;
    let config = format!(
        "services:\n  - {{name: bench, vips: [{}], ports: [{{port: 80}}]}}\nendpoints:\n  - {{service: bench, address: 127.0.0.1, port: {}}}\n",
        vip.ip(),
        backend.port()
    );
    let modes: [(&str, Option<&str>); 3] =
        [("direct", None), ("sluice, 1 worker", Some("1")), ("sluice, 2 workers", Some("2"))];
    println!(
        "wrk -t2 -c32 -d{secs}s, {rounds} rounds, medians; backend: sluice-testkit http (thread per connection)"
    );
    println!("cores: {}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    for close in [false, true] {
        println!("\n{}", if close { "new connection per request (Connection: close)" } else { "keep-alive" });
        println!("{:<20} {:>12} {:>9} {:>9} {:>7}", "mode", "req/s", "p50 ms", "p99 ms", "errors");
        let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); modes.len()];
        for _ in 0..rounds {
            for (i, (_, workers)) in modes.iter().enumerate() {
                let (_node, url) = match workers {
                    None => (None, format!("http://{backend}/")),
                    Some(n) => {
                        let node = Node::start(NodeOpts {
                            test: "benchworkers",
                            config: &config,
                            cgroup: cg.path(),
                            netns: None,
                            node_in_cgroup: false,
                            args: &["--workers", n],
                        });
                        (Some(node), format!("http://{vip}/"))
                    }
                };
                results[i].push(wrk(cg.path(), &url, 2, 32, secs, close).map_err(anyhow::Error::msg)?);
            }
        }
        for ((name, _), runs) in modes.iter().zip(results) {
            let m = |f: fn(&WrkResult) -> f64| median(runs.iter().map(f).collect());
            let errors: u64 = runs.iter().map(|r| r.errors).sum();
            println!(
                "{name:<20} {:>12.0} {:>9.3} {:>9.3} {errors:>7}",
                m(|r| r.requests_per_sec),
                m(|r| r.p50_ms),
                m(|r| r.p99_ms)
            );
        }
    }
    Ok(())
}

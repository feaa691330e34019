//! `sluice-bench mesh`: requests from node a to an endpoint on node b (two
//! network namespaces on a bridge): straight across the veth with no mesh,
//! through both nodes' proxies with plaintext HTTP/2 between them (`mtls:
//! disable`), and the same over mutual TLS 1.3. The two Sluice rows differ
//! only in TLS. HTTP/1.1 keep-alive with wrk, h2c with h2load,
//! and a TCP echo (64 B ping-pong latency, 256 MiB bulk) through the CONNECT
//! tunnel. Rounds alternate; medians.

use std::{path::Path, process::Command};

use anyhow::bail;
use sluice_integration::{
    CgroupGuard, Node,
    bench::{WrkResult, median, wrk_in},
    netns::NodeNets,
    node::NodeOpts,
    process::{echo_process, hello_in},
    target_bin,
};

/// A testkit client subcommand (pingpong, bulk) in `netns` (and `cgroup`): its key=value output.
fn testkit(netns: &str, cgroup: Option<&Path>, args: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new(target_bin("sluice-testkit"));
    c.arg(args[0]).args(["--netns", netns]);
    if let Some(cg) = cgroup {
        c.arg("--cgroup").arg(cg);
    }
    let out = c.args(&args[1..]).output()?;
    if !out.status.success() {
        bail!("sluice-testkit {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn field(text: &str, k: &str) -> f64 {
    text.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

pub fn run(secs: u32, rounds: u32, stopped: fn() -> bool) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches eBPF programs and creates namespaces: run it as root");
    }
    let net = NodeNets::new("benchmesh");
    let ca = tempfile::tempdir()?;
    // A plain client cgroup for the direct runs: not a mesh cgroup.
    let plain = CgroupGuard::new("benchmeshp");
    let (_h, web) = hello_in(Some(net.b.name()), "0.0.0.0:0");
    let (_e, echo) = echo_process(Some(net.b.name()), "0.0.0.0:0", false);
    // Two meshes side by side, each a node in a and one in b with cgroups of
    // their own: mutual TLS on port 15008, plaintext (`mtls: disable`) on 15009.
    let config = |port: u16, mtls: &str, vip: u8| {
        format!(
            "nodes:\n  - {{name: a, address: {a}, port: {port}}}\n  - {{name: b, address: {b}, port: {port}}}\nidentity: {{trust_domain: bench.local, ca_dir: {ca}, mtls: {mtls}}}\nservices:\n  - {{name: web, vips: [127.100.9.{vip}], ports: [{{port: 80, target_port: {w}, protocol: http}}]}}\n  - {{name: echo, vips: [127.100.9.{vip}], ports: [{{port: 7000, target_port: {e}, protocol: tcp}}]}}\nendpoints:\n  - {{service: web, address: 127.0.0.1, node: b}}\n  - {{service: echo, address: 127.0.0.1, node: b}}\n",
            a = NodeNets::A,
            b = NodeNets::B,
            ca = ca.path().display(),
            w = web.port(),
            e = echo.port(),
        )
    };
    let pair = |tag: &str, config: &str| -> (CgroupGuard, CgroupGuard, Node, Node) {
        let (cg_a, cg_b) = (CgroupGuard::new(&format!("bm{tag}a")), CgroupGuard::new(&format!("bm{tag}b")));
        let start = |test: String, cg: &CgroupGuard, ns, name: &str| {
            Node::start(NodeOpts {
                test: &test,
                config,
                cgroup: cg.path(),
                netns: Some(ns),
                node_in_cgroup: false,
                args: &["--node-name", name, "--workers", "1"],
            })
        };
        let b = start(format!("bm{tag}nb"), &cg_b, &net.b, "b");
        let a = start(format!("bm{tag}na"), &cg_a, &net.a, "a");
        (cg_a, cg_b, a, b)
    };
    let tls = pair("tls", &config(15008, "strict", 10));
    let clear = pair("clr", &config(15009, "disable", 20));
    let direct_web = format!("http://{}:{}/", NodeNets::B, web.port());
    let direct_echo = format!("{}:{}", NodeNets::B, echo.port());
    println!(
        "node a {} -> node b {} over a veth bridge; backend: sluice-testkit hello (hyper, 1 thread); sluice: 1 worker per node",
        NodeNets::A,
        NodeNets::B
    );
    println!(
        "HTTP/1.1: wrk -t1 -c32 -d{secs}s; h2c: h2load -c8 -m16 -D{secs}; TCP: 64 B ping-pong {secs}s, 256 MiB bulk; {rounds} rounds alternating; medians"
    );
    let names = ["direct, no mesh", "sluice a -> b, plaintext", "sluice a -> b, mutual TLS"];
    let mut h1: Vec<Vec<WrkResult>> = vec![Vec::new(); names.len()];
    let mut h2: Vec<Vec<WrkResult>> = vec![Vec::new(); names.len()];
    let mut ping: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); names.len()];
    let mut bulk: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let (dir, _cleanup) = crate::bench_l7::scratch_dir("benchmesh")?;
    for round in 0..rounds {
        for (i, name) in names.iter().enumerate() {
            if stopped() {
                bail!("interrupted; cleaned up");
            }
            let (cg, url, echo_addr) = match i {
                0 => (plain.path(), direct_web.clone(), direct_echo.clone()),
                1 => (clear.0.path(), "http://127.100.9.20/".to_string(), "127.100.9.20:7000".to_string()),
                _ => (tls.0.path(), "http://127.100.9.10/".to_string(), "127.100.9.10:7000".to_string()),
            };
            let r1 = wrk_in(Some(net.a.name()), cg, &url, 1, 32, secs, false).map_err(anyhow::Error::msg)?;
            let log = dir.join(format!("h2load-{round}-{i}.log"));
            let r2 = crate::bench_l7::h2load_in(Some(net.a.name()), cg, &url, secs, &log)?;
            let p = testkit(
                net.a.name(),
                Some(cg),
                &["pingpong", "--secs", &secs.to_string(), &echo_addr, "64"],
            )?;
            let b = testkit(net.a.name(), Some(cg), &["bulk", &echo_addr, &(256u64 << 20).to_string()])?;
            eprintln!(
                "round {round} {name}: h1 {:.0} req/s, h2 {:.0} req/s, ping p50 {} us, bulk {} Gbit/s",
                r1.requests_per_sec,
                r2.requests_per_sec,
                field(&p, "p50_us="),
                field(&b, "gbit_per_s=")
            );
            h1[i].push(r1);
            h2[i].push(r2);
            ping[i].0.push(field(&p, "p50_us="));
            ping[i].1.push(field(&p, "p99_us="));
            bulk[i].push(field(&b, "gbit_per_s="));
        }
    }
    for (title, results) in [("HTTP/1.1 keep-alive (wrk)", &h1), ("HTTP/2 h2c (h2load)", &h2)] {
        println!("\n{title}");
        println!("{:<28} {:>12} {:>9} {:>9} {:>7}", "mode", "req/s", "p50 ms", "p99 ms", "errors");
        for (name, runs) in names.iter().zip(results.iter()) {
            println!("{}", sluice_integration::bench::row(name, 28, runs));
        }
    }
    println!("\nTCP through the tunnel");
    println!("{:<28} {:>12} {:>12} {:>12}", "mode", "p50 us", "p99 us", "bulk Gbit/s");
    for (i, name) in names.iter().enumerate() {
        println!(
            "{name:<28} {:>12.1} {:>12.1} {:>12.2}",
            median(ping[i].0.clone()),
            median(ping[i].1.clone()),
            median(bulk[i].clone())
        );
    }
    Ok(())
}

//! `sluice-bench telemetry`: the cost of observability on the L7 path.
//! HTTP/1.1 (wrk) and h2c (h2load) through one Sluice worker with tracing
//! off, tracing at 100% sampling exported over OTLP/gRPC to a real
//! collector (rotel, exporting to nowhere), and JSON access logs to a file,
//! in one run; rounds alternate; medians. Spans started vs exported are
//! read from the node's metrics, so a run whose exporter fell behind shows it.

use std::net::SocketAddr;

use anyhow::bail;
use sluice_integration::{
    CgroupGuard, Node,
    bench::{WrkResult, median, wrk},
    node::NodeOpts,
    otlp::Rotel,
    process::hello_process,
};

struct Mode {
    name: &'static str,
    telemetry: String,
}

fn node(cg: &CgroupGuard, backend: SocketAddr, vip: &str, telemetry: &str) -> Node {
    let config =
        sluice_integration::bench::one_service("bench", vip, 80, Some("http"), false, backend.port())
            + telemetry;
    Node::start(NodeOpts {
        test: "benchtel",
        config: &config,
        cgroup: cg.path(),
        netns: None,
        node_in_cgroup: false,
        args: &["--workers", "1"],
    })
}

pub fn run(secs: u32, rounds: u32, stopped: fn() -> bool) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root");
    }
    let cg = CgroupGuard::new("benchtel");
    let (dir, _cleanup) = crate::bench_l7::scratch_dir("benchtel")?;
    let rotel = Rotel::start_quiet();
    let (_backend, backend) = hello_process("127.0.0.1:0");
    let log = dir.join("access.log");
    let modes = [
        Mode { name: "tracing off", telemetry: String::new() },
        Mode {
            name: "tracing 100% (OTLP gRPC)",
            telemetry: format!(
                "telemetry:\n  tracing: {{endpoint: \"http://{}\", protocol: grpc, sampling: 1.0}}\n",
                rotel.grpc
            ),
        },
        Mode {
            name: "access log (JSON, file)",
            telemetry: format!("telemetry:\n  access_log: {{format: json, path: {}}}\n", log.display()),
        },
    ];
    println!(
        "backend: sluice-testkit hello (hyper, 1 thread); sluice: 1 worker; collector: rotel (blackhole exporter)"
    );
    println!(
        "HTTP/1.1: wrk -t1 -c32 -d{secs}s; h2c: h2load -c8 -m16 -D{secs}; {rounds} rounds alternating; medians"
    );
    let mut h1: Vec<Vec<WrkResult>> = vec![Vec::new(); modes.len()];
    let mut h2: Vec<Vec<WrkResult>> = vec![Vec::new(); modes.len()];
    let mut spans: Vec<(f64, f64)> = vec![(0.0, 0.0); modes.len()];
    let mut cpu: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); modes.len()];
    for round in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            if stopped() {
                bail!("interrupted; cleaned up");
            }
            let vip = format!("127.100.0.{}", 110 + i);
            let n = node(&cg, backend, &vip, &mode.telemetry);
            let pid = n.pid().unwrap_or(0);
            let c0 = cpu_ms(pid);
            let r1 =
                wrk(cg.path(), &format!("http://{vip}/"), 1, 32, secs, false).map_err(anyhow::Error::msg)?;
            let c1 = cpu_ms(pid);
            let hlog = dir.join(format!("h2load-{round}-{i}.log"));
            let r2 = crate::bench_l7::h2load(cg.path(), &format!("http://{vip}/"), secs, &hlog)?;
            let c2 = cpu_ms(pid);
            // CPU of the node (all its threads: worker, span export, log
            // writer) per 1000 requests; h2load's run has a 1 s warm-up.
            cpu[i].0.push((c1 - c0) / (r1.requests_per_sec * f64::from(secs) / 1000.0));
            cpu[i].1.push((c2 - c1) / (r2.requests_per_sec * f64::from(secs + 1) / 1000.0));
            // Give the batch processor a moment to send what it holds.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let started = n.metric("sluice_tracing_spans_total{outcome=\"started\"}").unwrap_or(0.0);
            let exported = n.metric("sluice_tracing_spans_total{outcome=\"exported\"}").unwrap_or(0.0);
            spans[i].0 += started;
            spans[i].1 += exported;
            eprintln!(
                "round {round} {}: h1 {:.0} req/s, h2 {:.0} req/s, spans started {started}, exported {exported}",
                mode.name, r1.requests_per_sec, r2.requests_per_sec
            );
            h1[i].push(r1);
            h2[i].push(r2);
        }
    }
    let tables = [("HTTP/1.1 keep-alive (wrk)", &h1), ("HTTP/2 h2c (h2load)", &h2)];
    for (k, (title, results)) in tables.into_iter().enumerate() {
        println!("\n{title}");
        println!(
            "{:<28} {:>12} {:>9} {:>9} {:>7} {:>15}",
            "mode", "req/s", "p50 ms", "p99 ms", "errors", "node CPU ms/1k"
        );
        for (j, (mode, runs)) in modes.iter().zip(results.iter()).enumerate() {
            let c = if k == 0 { &cpu[j].0 } else { &cpu[j].1 };
            println!("{} {:>15.1}", sluice_integration::bench::row(mode.name, 28, runs), median(c.clone()));
        }
    }
    let (started, exported) = spans[1];
    println!(
        "\ntracing 100%: {started:.0} spans started, {exported:.0} exported to the collector ({:.1}%) over all rounds",
        if started > 0.0 { exported * 100.0 / started } else { 0.0 }
    );
    Ok(())
}

/// User + system CPU time of a process so far, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) follow ")";
    // utime and stime (fields 14 and 15) are the 12th and 13th of those.
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    (ticks(11) + ticks(12)) * 1000.0 / hz
}

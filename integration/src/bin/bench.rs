//! `sluice-bench`: benchmarks run on this machine, side by side in one run.
//!
//! `sluice-bench workers [--secs N] [--rounds N]`: HTTP/1.1 through Sluice's L4
//! path with 1 and 2 proxy workers, zero-hop (kernel only), and direct, driven by wrk from inside the
//! mesh cgroup, keep-alive and new-connection-per-request. Rounds alternate the
//! modes; the table shows medians.
//!
//! `sluice-bench policy [--packets N] [--rounds N]`: a UDP flood over a veth
//! into a network namespace, dropped by Sluice's XDP policy or by an
//! equivalent nftables rule (netdev ingress hook on the same veth): drops per
//! second and CPU time per dropped packet.
//!
//! `sluice-bench paths [--secs N] [--rounds N]`: the L4 paths (direct,
//! userspace copy, sk_skb splice, zero-hop), latency and bulk throughput,
//! pinned to one CPU and unpinned (see `bench/paths.rs`).
//!
//! `sluice-bench l7 [--secs N] [--rounds N] [--pgo SLUICE_BINARY] [--baseline SLUICE_BINARY] [--only h1|h2] [--targets LIST] [--keep-running]`:
//! HTTP/1.1 (wrk) and h2c (h2load) through Sluice's L7 path vs nginx,
//! haproxy and direct; with `--pgo`, a profile-guided build of sluice as
//! one more row; with `--baseline`, another build (an earlier commit's,
//! say) beside this one, to compare a change in the same run; with
//! `--only`, one protocol's load, so more rounds fit in the time; with
//! `--targets` (e.g. `sluice,nginx,haproxy`), only those rows; with
//! `--keep-running`, every target started once and kept warm, the rounds
//! alternating only the load (short `--secs`, many rounds). Sluice
//! against each of nginx, haproxy and its other builds, and the PGO build
//! against nginx and haproxy, is also given as per-round ratios and
//! differences with 95% intervals (see `bench/l7.rs`).
//!
//! `sluice-bench telemetry [--secs N] [--rounds N]`: the L7 path with
//! tracing off, tracing at 100% (OTLP/gRPC to rotel) and JSON access logs
//! (see `bench/telemetry.rs`).
//!
//! `sluice-bench mesh [--secs N] [--rounds N]`: node a to an endpoint on
//! node b (namespaces on a bridge), direct plaintext vs through both
//! proxies over mutual TLS (see `bench/mesh.rs`).
//!
//! `sluice-bench pgo-train [--secs N]`: the L7 load a profile-guided build
//! of Sluice is trained on (see `bench/pgo.rs` and `scripts/build-pgo.sh`).
//!
//! `sluice-bench report [--secs N] [--rounds N] [--out DIR] [--pgo SLUICE_BINARY]`: every
//! scenario (HTTP/1.1, HTTP/2, gRPC unary, TCP request/response, TCP bulk)
//! through every mode (direct, Sluice L7, zero-hop, spliced, nginx,
//! haproxy), pinned and unpinned; writes DIR/BENCHMARKS.md and
//! DIR/benchmarks.png (see `bench/report.rs`).
//!
//! Needs root; build with `--release`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

#[path = "bench/l7.rs"]
mod bench_l7;
#[path = "bench/mesh.rs"]
mod bench_mesh;
#[path = "bench/paths.rs"]
mod bench_paths;
#[path = "bench/pgo.rs"]
mod bench_pgo;
#[path = "bench/report.rs"]
mod bench_report;
#[path = "bench/telemetry.rs"]
mod bench_telemetry;

use anyhow::bail;
use sluice_integration::{
    CgroupGuard, Node,
    bench::{WrkResult, median, wrk},
    node::NodeOpts,
    process::http_process,
};

/// Set by Ctrl-C: the benchmark stops between runs, so its guards clean up.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

/// Whether the flag `name` (an option without a value) was given; taken out.
fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != name);
    args.len() != before
}

/// Removes `name VALUE` from `args`; the value, if the option was given.
fn take_value(args: &mut Vec<String>, name: &str, what: &str) -> anyhow::Result<Option<String>> {
    let Some(i) = args.iter().position(|a| a == name) else { return Ok(None) };
    let v = args.get(i + 1).ok_or_else(|| anyhow::anyhow!("{name} needs {what}"))?.clone();
    args.drain(i..i + 2);
    Ok(Some(v))
}

const USAGE: &str = "usage: sluice-bench workers|l7|paths|telemetry|mesh [--secs N] [--rounds N] (l7: [--pgo SLUICE_BINARY] [--baseline SLUICE_BINARY] [--only h1|h2] [--targets sluice,nginx,haproxy,...] [--keep-running]) | report [--secs N] [--rounds N] [--out DIR] [--pgo SLUICE_BINARY] | policy [--packets N] [--rounds N] | pgo-train [--secs N]";

/// The command line, checked.
#[derive(Debug, PartialEq)]
struct Args {
    bench: String,
    secs: u32,
    rounds: u32,
    packets: u32,
    out: String,
    pgo: Option<std::path::PathBuf>,
    baseline: Option<std::path::PathBuf>,
    only: Option<bench_l7::Only>,
    targets: Option<Vec<&'static str>>,
    keep_running: bool,
}

/// The arguments after the program's name; `None` when help was asked for.
fn parse_args(mut args: Vec<String>) -> anyhow::Result<Option<Args>> {
    let out = take_value(&mut args, "--out", "a folder")?.unwrap_or_else(|| "docs".to_string());
    let pgo = take_value(&mut args, "--pgo", "the path of a sluice binary")?.map(std::path::PathBuf::from);
    if let Some(p) = &pgo
        && !p.is_file()
    {
        bail!("--pgo {}: no such file (build it with sudo ./scripts/build-pgo.sh)", p.display());
    }
    let baseline =
        take_value(&mut args, "--baseline", "the path of a sluice binary")?.map(std::path::PathBuf::from);
    if let Some(p) = &baseline
        && !p.is_file()
    {
        bail!(
            "--baseline {}: no such file (copy the sluice binary of the build to compare with)",
            p.display()
        );
    }
    let only = match take_value(&mut args, "--only", "h1 or h2")?.as_deref() {
        None => None,
        Some("h1") => Some(bench_l7::Only::H1),
        Some("h2") => Some(bench_l7::Only::H2),
        Some(other) => bail!("--only {other}: h1 (HTTP/1.1 with wrk) or h2 (h2c with h2load)"),
    };
    let targets = take_value(&mut args, "--targets", "a list such as sluice,nginx,haproxy")?
        .map(|l| bench_l7::parse_targets(&l))
        .transpose()?;
    let keep_running = take_flag(&mut args, "--keep-running");
    let mut opt = |name: &str, default: u32| -> anyhow::Result<u32> {
        match take_value(&mut args, name, "a value")? {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{name} {v}: {e} (a whole number is needed)")),
            None => Ok(default),
        }
    };
    let secs = opt("--secs", 10)?;
    let rounds = opt("--rounds", 3)?;
    let packets = opt("--packets", 2_000_000)?;
    // After the options, so an option's value (`--out help`) is not a request for help.
    if args.iter().any(|a| matches!(a.as_str(), "-h" | "--help" | "help")) {
        return Ok(None);
    }
    // What is left must be the benchmark's name alone: a misspelt option
    // would otherwise be ignored, and a long run start without it.
    if let Some(bad) = args.iter().find(|a| a.starts_with('-')) {
        bail!("unknown option {bad:?}\n{USAGE}");
    }
    let bench = match args.as_slice() {
        [one] => one.clone(),
        [] => bail!("which benchmark? name one\n{USAGE}"),
        [first, second, ..] => bail!("one benchmark at a time: {first:?}, then {second:?}\n{USAGE}"),
    };
    for (given, option) in
        [(only.is_some(), "--only"), (targets.is_some(), "--targets"), (keep_running, "--keep-running")]
    {
        if given && bench != "l7" {
            bail!("{option} is an option of l7, not of {bench}\n{USAGE}");
        }
    }
    Ok(Some(Args { bench, secs, rounds, packets, out, pgo, baseline, only, targets, keep_running }))
}

fn main() -> anyhow::Result<()> {
    let Some(a) = parse_args(std::env::args().skip(1).collect())? else {
        println!("{USAGE}\n(what each one measures: the top of integration/src/bin/bench.rs, and README.md)");
        return Ok(());
    };
    ctrlc::set_handler(|| STOP.store(true, std::sync::atomic::Ordering::SeqCst))?;
    // The nodes a benchmark starts log warnings only: per-connection debug
    // lines would cost.
    if std::env::var_os("SLUICE_TEST_LOG").is_none() {
        // SAFETY: still single-threaded (the Ctrl-C handler thread only sets
        // an atomic), and nothing reads the environment concurrently.
        unsafe { std::env::set_var("SLUICE_TEST_LOG", "warn") };
    }
    let (secs, rounds) = (a.secs, a.rounds);
    match a.bench.as_str() {
        "workers" => workers(secs, rounds),
        "policy" => policy(a.packets, rounds),
        "paths" => bench_paths::run(secs, rounds, stopped),
        "l7" => bench_l7::run(
            &bench_l7::Options {
                secs,
                rounds,
                pgo: a.pgo.as_deref(),
                baseline: a.baseline.as_deref(),
                only: a.only,
                picked: a.targets.as_deref(),
                keep_running: a.keep_running,
            },
            stopped,
        ),
        "telemetry" => bench_telemetry::run(secs, rounds, stopped),
        "mesh" => bench_mesh::run(secs, rounds, stopped),
        "pgo-train" => bench_pgo::run(secs, stopped),
        "report" => bench_report::run(secs, rounds, std::path::Path::new(&a.out), a.pgo.as_deref(), stopped),
        other => bail!("no benchmark called {other:?}\n{USAGE}"),
    }
}

/// Busy and softirq CPU jiffies of the machine, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, f.get(6).copied().unwrap_or(0))
}

fn nft(ns: &str, args: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args.split_whitespace())
        .output()?;
    if !out.status.success() {
        bail!("nft {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn policy(packets: u32, rounds: u32) -> anyhow::Result<()> {
    use sluice_integration::{
        NetnsGuard,
        process::{sent, udp_send},
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches XDP programs: run it as root");
    }
    let server = NetnsGuard::with_suffix("benchpolicy", "s");
    let client = NetnsGuard::with_suffix("benchpolicy", "c");
    server.veth("s1", "10.77.1.1/24", &client, "c1", "10.77.1.2/24");
    let cg = CgroupGuard::new("benchpolicy");
    let target: SocketAddr = "10.77.1.1:9".parse()?;
    println!("UDP flood of {packets} 64-byte datagrams, c1 -> s1 (veth), {rounds} rounds, medians");
    println!(
        "{:<34} {:>12} {:>14} {:>14} {:>16}",
        "mode", "sent pkt/s", "dropped pkt/s", "CPU ns/packet", "softirq ns/pkt"
    );
    // Per run: sent pkt/s, dropped pkt/s, CPU ns per packet, softirq ns per packet.
    type Run = (f64, f64, f64, f64);
    let mut rows: Vec<(&str, Vec<Run>)> = vec![
        ("no filter (UDP port closed)", Vec::new()),
        ("sluice XDP native (veth)", Vec::new()),
        ("sluice XDP generic", Vec::new()),
        ("nftables netdev ingress drop", Vec::new()),
    ];
    for _ in 0..rounds {
        for (mode, runs) in rows.iter_mut() {
            if stopped() {
                bail!("interrupted; cleaned up");
            }
            let xdp = mode.starts_with("sluice");
            let nft_mode = mode.starts_with("nftables");
            let node = if xdp {
                let xdp_mode = if mode.contains("native") { "native" } else { "generic" };
                let config = format!(
                    "services: []\npolicy:\n  interfaces: [s1]\n  xdp_mode: {xdp_mode}\n  rules:\n    - {{action: deny, sources: [10.77.1.2/32]}}\n"
                );
                Some(Node::start(NodeOpts {
                    test: "benchpolicy",
                    config: &config,
                    cgroup: cg.path(),
                    netns: Some(&server),
                    node_in_cgroup: false,
                    args: &[],
                }))
            } else if nft_mode {
                nft(server.name(), "add table netdev sluicebench")?;
                nft(
                    server.name(),
                    "add chain netdev sluicebench in { type filter hook ingress device s1 priority -500 ; }",
                )?;
                nft(server.name(), "add rule netdev sluicebench in ip saddr 10.77.1.2 counter drop")?;
                None
            } else {
                None
            };
            let dropped_before = if xdp || nft_mode { dropped(node.as_ref(), server.name())? } else { 0 };
            let (busy0, soft0) = cpu_jiffies();
            let started = std::time::Instant::now();
            let n = sent(udp_send(client.name(), target, packets as usize, 0));
            let secs = started.elapsed().as_secs_f64();
            // Let the last packets through the stack before reading the counters.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let (busy1, soft1) = cpu_jiffies();
            // Without a filter every packet reaches the stack (and a closed port): count them as "handled".
            let dropped =
                if xdp || nft_mode { dropped(node.as_ref(), server.name())? - dropped_before } else { n };
            let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
            let per_packet = |j: u64| j as f64 / hz * 1e9 / dropped.max(1) as f64;
            runs.push((
                n as f64 / secs,
                dropped as f64 / secs,
                per_packet(busy1 - busy0),
                per_packet(soft1 - soft0),
            ));
            if nft_mode {
                nft(server.name(), "delete table netdev sluicebench")?;
            }
            drop(node);
        }
    }
    for (mode, runs) in rows {
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        println!(
            "{mode:<34} {:>12.0} {:>14.0} {:>14.0} {:>16.0}",
            m(|r| r.0),
            m(|r| r.1),
            m(|r| r.2),
            m(|r| r.3)
        );
    }
    println!(
        "(CPU: the machine's busy time during the flood, sender included; softirq: receive-path time only)"
    );
    program_cost()
}

/// The XDP program alone, in the kernel, without a network: BPF_PROG_TEST_RUN.
fn program_cost() -> anyhow::Result<()> {
    use sluice_integration::packet::tcp4;
    let pins = std::path::Path::new("/sys/fs/bpf/sluice")
        .join(sluice_integration::unique("benchprog").trim_start_matches("sluice-"));
    std::fs::create_dir_all(&pins)?;
    let run = || -> anyhow::Result<Vec<(String, u32)>> {
        let yaml = "policy:\n  interfaces: [x]\n  rules:\n    - {action: deny, sources: [10.66.0.0/16]}\n    - {action: deny, protocol: tcp, ports: [22]}\n";
        let mut policy = sluice_mesh_config::parse(std::path::Path::new("b.yaml"), yaml)?
            .policy
            .ok_or_else(|| anyhow::anyhow!("no policy"))?;
        policy.interfaces.clear();
        let mut e = sluice_redirector::policy::PolicyEnforcer::new(&pins, false)?;
        e.apply(&policy)?;
        let mut out = Vec::new();
        for (what, pkt) in [
            ("denied by rule 0 (source)", tcp4("10.66.0.1", "10.0.0.1", 80)),
            ("denied by rule 1 (port)", tcp4("10.77.0.1", "10.0.0.1", 22)),
            ("allowed by default", tcp4("10.77.0.1", "10.0.0.1", 80)),
        ] {
            let r = sluice_redirector::sys::prog_test_run(e.xdp_program_fd()?, &pkt, 1_000_000)?;
            out.push((what.to_string(), r.duration_ns));
        }
        Ok(out)
    };
    let result = run();
    let _ = std::fs::remove_dir_all(&pins);
    println!("\nXDP program alone (BPF_PROG_TEST_RUN, 1,000,000 repeats, ns per packet):");
    for (what, ns) in result? {
        println!("  {what:<28} {ns}");
    }
    Ok(())
}

/// Packets dropped so far by the XDP rule (from `sluice status`) or the nft rule.
fn dropped(node: Option<&Node>, ns: &str) -> anyhow::Result<u64> {
    match node {
        Some(node) => {
            let status = node.status();
            Ok(status
                .lines()
                .find(|l| l.trim_start().starts_with("ingress_matched_rule_0"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0))
        }
        None => {
            let text = nft(ns, "list table netdev sluicebench")?;
            Ok(text
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0))
        }
    }
}

fn workers(secs: u32, rounds: u32) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root");
    }
    let cg = CgroupGuard::new("benchworkers");
    let (_backend, backend) = http_process("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.90:80".parse()?;
    let config = |zero_hop: bool| {
        sluice_integration::bench::one_service("bench", vip.ip(), 80, None, zero_hop, backend.port())
    };
    // (name, proxy workers; None: no node; "0": zero-hop, the proxy unused)
    let modes: [(&str, Option<&str>); 4] = [
        ("direct", None),
        ("sluice zero-hop", Some("0")),
        ("sluice, 1 worker", Some("1")),
        ("sluice, 2 workers", Some("2")),
    ];
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
                if stopped() {
                    bail!("interrupted; cleaned up");
                }
                let (_node, url) = match workers {
                    None => (None, format!("http://{backend}/")),
                    Some(n) => {
                        let zero_hop = *n == "0";
                        let node = Node::start(NodeOpts {
                            test: "benchworkers",
                            config: &config(zero_hop),
                            cgroup: cg.path(),
                            netns: None,
                            node_in_cgroup: false,
                            args: &["--workers", if zero_hop { "1" } else { n }],
                        });
                        (Some(node), format!("http://{vip}/"))
                    }
                };
                results[i].push(wrk(cg.path(), &url, 2, 32, secs, close).map_err(anyhow::Error::msg)?);
            }
        }
        for ((name, _), runs) in modes.iter().zip(results) {
            println!("{}", sluice_integration::bench::row(name, 20, &runs));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> anyhow::Result<Option<Args>> {
        parse_args(line.split_whitespace().map(String::from).collect())
    }

    #[test]
    fn options_are_taken_wherever_they_stand() {
        let a = parse("--rounds 7 l7 --secs 5").unwrap().unwrap();
        assert_eq!((a.bench.as_str(), a.secs, a.rounds, a.out.as_str()), ("l7", 5, 7, "docs"));
        assert_eq!(a.pgo, None);
        let a = parse("report --out help").unwrap().unwrap();
        assert_eq!((a.bench.as_str(), a.out.as_str()), ("report", "help"));
    }

    #[test]
    fn help_runs_nothing() {
        for line in ["--help", "l7 --help", "-h", "help"] {
            assert_eq!(parse(line).unwrap(), None, "{line}");
        }
    }

    #[test]
    fn unknown_or_extra_arguments_are_refused_before_anything_starts() {
        let e = parse("l7 --sec 5").unwrap_err().to_string();
        assert!(e.starts_with("unknown option \"--sec\""), "{e}");
        let e = parse("--verbose l7").unwrap_err().to_string();
        assert!(e.starts_with("unknown option \"--verbose\""), "{e}");
        let e = parse("l7 paths").unwrap_err().to_string();
        assert!(e.starts_with("one benchmark at a time: \"l7\", then \"paths\""), "{e}");
        let e = parse("--secs 5").unwrap_err().to_string();
        assert!(e.starts_with("which benchmark?"), "{e}");
        let e = parse("l7 --rounds many").unwrap_err().to_string();
        assert!(e.contains("--rounds many") && e.contains("whole number"), "{e}");
        let e = parse("l7 --secs").unwrap_err().to_string();
        assert_eq!(e, "--secs needs a value");
        let e = parse("l7 --baseline /nonexistent/sluice").unwrap_err().to_string();
        assert!(e.starts_with("--baseline /nonexistent/sluice: no such file"), "{e}");
        let e = parse("l7 --only h3").unwrap_err().to_string();
        assert!(e.starts_with("--only h3: h1 (HTTP/1.1 with wrk) or h2"), "{e}");
        let e = parse("paths --only h1").unwrap_err().to_string();
        assert!(e.starts_with("--only is an option of l7, not of paths"), "{e}");
    }

    #[test]
    fn targets_pick_rows_of_l7_with_sluice_among_them() {
        let a = parse("l7 --targets sluice,nginx,haproxy").unwrap().unwrap();
        assert_eq!(a.targets, Some(vec!["sluice", "nginx", "haproxy"]));
        let a = parse("l7 --targets haproxy-http1,sluice,bare-h2").unwrap().unwrap();
        assert_eq!(
            a.targets,
            Some(vec!["haproxy (h2→http1 upstream)", "sluice", "h2 crate, bare forwarder"])
        );
        assert_eq!(parse("l7").unwrap().unwrap().targets, None);
        let e = parse("l7 --targets sluice,envoy").unwrap_err().to_string();
        assert!(
            e.starts_with("--targets sluice,envoy: no target \"envoy\" (the targets: direct, sluice,"),
            "{e}"
        );
        let e = parse("l7 --targets nginx,haproxy").unwrap_err().to_string();
        assert!(e.contains("name sluice too"), "{e}");
        let e = parse("l7 --targets sluice,nginx,sluice").unwrap_err().to_string();
        assert!(e.contains("\"sluice\" is named twice"), "{e}");
        let e = parse("paths --targets sluice").unwrap_err().to_string();
        assert!(e.starts_with("--targets is an option of l7, not of paths"), "{e}");
    }

    #[test]
    fn keep_running_is_a_flag_of_l7() {
        assert!(parse("l7 --keep-running --secs 1").unwrap().unwrap().keep_running);
        let a = parse("--keep-running l7 --rounds 9").unwrap().unwrap();
        assert_eq!((a.bench.as_str(), a.rounds, a.keep_running), ("l7", 9, true));
        assert!(!parse("l7").unwrap().unwrap().keep_running);
        let e = parse("paths --keep-running").unwrap_err().to_string();
        assert!(e.starts_with("--keep-running is an option of l7, not of paths"), "{e}");
    }

    #[test]
    fn only_picks_one_protocol_of_l7() {
        assert_eq!(parse("l7 --only h1").unwrap().unwrap().only, Some(bench_l7::Only::H1));
        assert_eq!(parse("--only h2 l7").unwrap().unwrap().only, Some(bench_l7::Only::H2));
        assert_eq!(parse("l7").unwrap().unwrap().only, None);
    }
}

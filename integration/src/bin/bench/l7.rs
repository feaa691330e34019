//! `sluice-bench l7`: HTTP/1.1 keep-alive (wrk) and h2c (h2load) through
//! Sluice's L7 path, nginx and haproxy (one worker each, keep-alive
//! upstream), and straight to the backend, in one run. For h2c, Sluice and
//! haproxy are measured both speaking HTTP/2 to the backend (like for like:
//! Sluice's default) and HTTP/1.1 (as nginx must); and for h2c, the h2
//! crate forwarding streams with nothing else (`sluice-testkit h2-forward`):
//! what the HTTP/2 library alone costs, so the distance from it to Sluice is
//! what Sluice's own per-request work costs. Rounds alternate the targets;
//! the table shows medians.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use sluice_integration::{
    CgroupGuard, Node,
    bench::{WrkResult, wrk},
    node::NodeOpts,
    process::hello_process,
};

/// A port free right now on 127.0.0.1.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_listening(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

/// A reverse proxy under test: HTTP/1.1 and h2c front ports, and the
/// process serving each (none for "direct").
struct Front {
    h1: SocketAddr,
    h2: SocketAddr,
    pids: [Option<u32>; 2],
    /// nginx or haproxy: one for each protocol, as the report sets them up.
    _fronts: Vec<crate::bench_report::Front>,
    _node: Option<Node>,
    _child: Option<sluice_integration::process::ChildGuard>,
}

/// Stops a server with SIGTERM and waits for it: nginx's master then ends
/// its workers (SIGKILL would leave them running, orphaned).
pub(crate) struct TermGuard(pub std::process::Child);

impl Drop for TermGuard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx or haproxy as the report starts them, one for HTTP/1.1 and one for h2c.
fn pair(dir: &Path, start: crate::bench_report::StartProxy, backend: SocketAddr) -> anyhow::Result<Front> {
    use crate::bench_report::Scenario;
    let mut fronts = Vec::new();
    for (sub, s) in [("h1", Scenario::H1), ("h2", Scenario::H2)] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d)?;
        fronts.push(start(&d, s, backend, false)?);
    }
    Ok(Front {
        h1: fronts[0].addr,
        h2: fronts[1].addr,
        pids: [fronts[0].pid, fronts[1].pid],
        _fronts: fronts,
        _node: None,
        _child: None,
    })
}

/// A node serving one HTTP service on `vip`; `bin` runs another `sluice`
/// binary than the one beside the bench (a PGO build).
fn sluice(
    cg: &CgroupGuard,
    backend: SocketAddr,
    protocol: &str,
    vip: &str,
    extra: &[&str],
    bin: Option<&Path>,
) -> Front {
    let node = start_node(cg, backend, protocol, vip, extra, bin);
    let addr: SocketAddr =
        format!("{vip}:80").parse().unwrap_or_else(|_| SocketAddr::from(([127, 100, 0, 95], 80)));
    let pid = node.pid();
    Front { h1: addr, h2: addr, pids: [pid, pid], _fronts: Vec::new(), _node: Some(node), _child: None }
}

/// A one-worker node with the service `bench` (port 80 of `vip`, the
/// backend its one endpoint) speaking `protocol`.
pub(crate) fn start_node(
    cg: &CgroupGuard,
    backend: SocketAddr,
    protocol: &str,
    vip: &str,
    extra: &[&str],
    bin: Option<&Path>,
) -> Node {
    let config =
        sluice_integration::bench::one_service("bench", vip, 80, Some(protocol), false, backend.port());
    let args = [&["--workers", "1"][..], extra].concat();
    let opts = NodeOpts {
        test: "benchl7",
        config: &config,
        cgroup: cg.path(),
        netns: None,
        // sk_msg needs both ends of the app <-> proxy pair in the mesh cgroup.
        node_in_cgroup: extra.contains(&"--sk-msg"),
        args: &args,
    };
    Node::start_bin(opts, bin)
}

/// `sluice-testkit h2-forward` to the backend: the h2 crate with nothing
/// of a proxy around it, for h2c only.
fn bare_h2(backend: SocketAddr) -> Front {
    let (guard, addr) = sluice_integration::process::spawn_listening::<SocketAddr>(
        Command::new(sluice_integration::target_bin("sluice-testkit")).args([
            "h2-forward",
            &backend.to_string(),
            "127.0.0.1:0",
        ]),
    );
    let pid = Some(guard.0.id());
    Front { h1: addr, h2: addr, pids: [pid, pid], _fronts: Vec::new(), _node: None, _child: Some(guard) }
}

/// h2load from inside `cgroup`: requests/s and latency percentiles from its
/// per-request log.
pub(crate) fn h2load(cgroup: &Path, url: &str, secs: u32, log: &Path) -> anyhow::Result<WrkResult> {
    h2load_in(None, cgroup, url, secs, log)
}

/// [`h2load`] inside network namespace `netns` too.
pub(crate) fn h2load_in(
    netns: Option<&str>,
    cgroup: &Path,
    url: &str,
    secs: u32,
    log: &Path,
) -> anyhow::Result<WrkResult> {
    h2load_run(sluice_integration::bench::in_cgroup(netns, cgroup, false, "h2load"), url, secs, log)
}

/// Runs `cmd` (an `h2load` with any arguments of its own) with 8
/// connections of 16 streams for `secs`: requests/s, latency percentiles
/// from its request log, and errors (failed or errored requests and
/// answers that were not 2xx).
pub(crate) fn h2load_run(mut cmd: Command, url: &str, secs: u32, log: &Path) -> anyhow::Result<WrkResult> {
    let _ = std::fs::remove_file(log);
    let out = cmd
        .args(["-c", "8", "-m", "16", "-D", &secs.to_string(), "--warm-up-time", "1"])
        .arg(format!("--log-file={}", log.display()))
        .arg(url)
        .output()
        .context("h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in ").and_then(|r| r.split(", ").nth(1)))
        .and_then(|r| r.trim_end_matches(" req/s").parse().ok())
        .with_context(|| format!("cannot read h2load's output:\n{text}"))?;
    let count = |what: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| l.split(", ").find(|p| p.ends_with(what)))
            .and_then(|p| p.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let non_2xx: u64 = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .map(|l| {
            l.split(", ")
                .filter(|p| !p.contains("2xx"))
                .filter_map(|p| p.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
                .sum()
        })
        .unwrap_or(0);
    let mut lat: Vec<f64> = std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(WrkResult {
        requests_per_sec: rps,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        errors: count(" failed") + count(" errored") + non_2xx,
    })
}

/// Every row, in the order a round starts from, by the short name
/// `--targets` takes. For h2c, "sluice" and "haproxy" speak HTTP/2 to the
/// backend; the "h2→http1" rows and nginx (which has no HTTP/2 upstream)
/// HTTP/1.1.
const TARGET_KEYS: [(&str, &str); 8] = [
    ("direct", "direct"),
    ("sluice", "sluice"),
    ("sluice-http1", "sluice (h2→http1 upstream)"),
    ("sk-msg", "sluice + sk_msg (forced)"),
    ("nginx", "nginx"),
    ("haproxy", "haproxy"),
    ("haproxy-http1", "haproxy (h2→http1 upstream)"),
    ("bare-h2", "h2 crate, bare forwarder"),
];

/// `--targets a,b,...`: the rows to run, "sluice" among them (every
/// comparison is against it). Fewer rows make a round shorter, so the
/// rows compared run closer together in time and more rounds fit.
pub fn parse_targets(list: &str) -> anyhow::Result<Vec<&'static str>> {
    let keys = || TARGET_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
    let mut rows = Vec::new();
    for key in list.split(',').map(str::trim) {
        let Some((_, row)) = TARGET_KEYS.iter().find(|(k, _)| *k == key) else {
            bail!("--targets {list}: no target {key:?} (the targets: {})", keys());
        };
        if rows.contains(row) {
            bail!("--targets {list}: {key:?} is named twice");
        }
        rows.push(*row);
    }
    if !rows.contains(&"sluice") {
        bail!("--targets {list}: name sluice too, every comparison is against it");
    }
    Ok(rows)
}

const PGO_ROW: &str = "sluice, PGO build";
const BASELINE_ROW: &str = "sluice, baseline binary";

/// The rows a run measures: those of the protocol(s) run, only the
/// `picked` ones if given, and the other sluice builds right after
/// "sluice".
fn rows(only: Option<Only>, picked: Option<&[&str]>, pgo: bool, baseline: bool) -> Vec<&'static str> {
    let mut rows: Vec<&'static str> = TARGET_KEYS
        .iter()
        .map(|(_, row)| *row)
        .filter(|row| only != Some(Only::H1) || !h2c_only(row))
        .filter(|row| picked.is_none_or(|p| p.contains(row)))
        .collect();
    let after_sluice = rows.iter().position(|r| *r == "sluice").map_or(0, |i| i + 1);
    if pgo {
        rows.insert(after_sluice, PGO_ROW);
    }
    if baseline {
        rows.insert(after_sluice, BASELINE_ROW);
    }
    rows
}

/// What `sluice-bench l7` was asked to run.
#[derive(Debug)]
pub struct Options<'a> {
    pub secs: u32,
    pub rounds: u32,
    /// A profile-guided build of sluice (`scripts/build-pgo.sh`), measured
    /// as one more row beside the plain build.
    pub pgo: Option<&'a Path>,
    /// Another sluice binary (an earlier commit's build) as a row of its
    /// own, so a change is measured side by side in one run.
    pub baseline: Option<&'a Path>,
    pub only: Option<Only>,
    pub picked: Option<&'a [&'static str]>,
    /// Start every target once and keep it running across rounds (each in
    /// a cgroup of its own), so the rounds alternate only the load: what is
    /// compared runs seconds apart, warm, as a node proxy serves. Otherwise
    /// each target is started for its turn and stopped after it.
    pub keep_running: bool,
}

/// Starts `name`; a Sluice node attaches to `cg`.
fn start(
    name: &str,
    cg: &CgroupGuard,
    dir: &Path,
    backend: SocketAddr,
    o: &Options,
) -> anyhow::Result<Front> {
    Ok(match name {
        "direct" => Front {
            h1: backend,
            h2: backend,
            pids: [None, None],
            _fronts: Vec::new(),
            _node: None,
            _child: None,
        },
        "sluice" => sluice(cg, backend, "http", "127.100.0.95", &[], None),
        PGO_ROW => sluice(cg, backend, "http", "127.100.0.93", &[], o.pgo),
        BASELINE_ROW => sluice(cg, backend, "http", "127.100.0.92", &[], o.baseline),
        "sluice (h2→http1 upstream)" => sluice(cg, backend, "http1", "127.100.0.96", &[], None),
        // Its self-test fails on this kernel (a half-close stall that
        // wrk and h2load never trigger): measured with it skipped.
        "sluice + sk_msg (forced)" => {
            sluice(cg, backend, "http", "127.100.0.94", &["--sk-msg", "unsafe-no-self-test"], None)
        }
        "nginx" => pair(dir, crate::bench_report::nginx, backend)?,
        "haproxy" => pair(dir, crate::bench_report::haproxy, backend)?,
        "haproxy (h2→http1 upstream)" => pair(dir, crate::bench_report::haproxy_http1_upstream, backend)?,
        "h2 crate, bare forwarder" => bare_h2(backend),
        other => bail!("no such target: {other}"),
    })
}

/// A target kept running across rounds, with a cgroup of its own that its
/// load runs in (a Sluice node attaches there, so two nodes never see each
/// other's connections); the cgroup goes after the target, as fields drop
/// in order.
struct Kept {
    front: Front,
    cg: CgroupGuard,
}

/// Runs the rounds `o` asks for and prints the tables and comparisons.
pub fn run(o: &Options, stopped: fn() -> bool) -> anyhow::Result<()> {
    let (secs, rounds, only) = (o.secs, o.rounds, o.only);
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root");
    }
    if std::env::var_os("SLUICE_TEST_LOG").is_none() {
        bail!(
            "run with SLUICE_TEST_LOG=warn so the nodes do not log every connection (the bench sets it: use `sluice-bench l7`)"
        );
    }
    let cg = CgroupGuard::new("benchl7");
    let (dir, _cleanup) = scratch_dir("benchl7")?;
    let (backend_guard, backend) = hello_process("127.0.0.1:0");
    let backend_pid = backend_guard.0.id();
    let targets = rows(only, o.picked, o.pgo.is_some(), o.baseline.is_some());
    if let Some(p) = o.pgo {
        println!("{PGO_ROW}: {} (scripts/build-pgo.sh), the same source as the \"sluice\" row", p.display());
    }
    if let Some(p) = o.baseline {
        println!("{BASELINE_ROW}: {}, beside the \"sluice\" row (this build)", p.display());
    }
    println!("backend: sluice-testkit hello (hyper, 1 thread); every proxy: 1 worker, keep-alive upstream");
    if only != Some(Only::H1) {
        println!(
            "h2c to the backend: HTTP/2 from sluice and haproxy, HTTP/1.1 from nginx and the h2→http1 rows"
        );
        println!(
            "h2 crate, bare forwarder: `sluice-testkit h2-forward`, h2c only: each stream forwarded as it came over one \
             HTTP/2 connection, on the h2 crate alone (no routing, limits or telemetry): the HTTP/2 library's floor"
        );
    }
    match only {
        None => println!(
            "HTTP/1.1: wrk -t1 -c32 -d{secs}s --latency; h2c: h2load -c8 -m16 -D{secs} (p50/p99 from its request log)"
        ),
        Some(Only::H1) => println!("HTTP/1.1 only: wrk -t1 -c32 -d{secs}s --latency"),
        Some(Only::H2) => println!("h2c only: h2load -c8 -m16 -D{secs} (p50/p99 from its request log)"),
    }
    println!(
        "{rounds} rounds alternating the targets (each round starting one target further on); medians. cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if o.keep_running {
        println!(
            "--keep-running: every target started once and kept running (each in a cgroup of its own); \
             the rounds alternate only the load"
        );
    }
    println!(
        "CPU µs/req: user+system CPU time of the proxy's processes (nginx's worker included; then its user and \
         system parts) and of the backend, over the whole load run, divided by req/s × the run's wall time \
         (so the load generator's warm-up counts on both sides); sleeps/1k and preempt/1k: the proxy's voluntary \
         and involuntary context switches per 1000 requests (it found nothing ready and slept; another task took its CPU)"
    );
    // Started in the rows' order before the first round; empty otherwise.
    let mut kept: Vec<Kept> = Vec::new();
    if o.keep_running {
        for (i, name) in targets.iter().enumerate() {
            let own = CgroupGuard::new(&format!("benchl7-{i}"));
            let front = start(name, &own, &dir.join(format!("t{i}")), backend, o)?;
            kept.push(Kept { front, cg: own });
        }
    }
    let mut h1: Vec<Vec<(WrkResult, Cpu)>> = vec![Vec::new(); targets.len()];
    let mut h2: Vec<Vec<(WrkResult, Cpu)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        // Each round starts one target further on: in a fixed order, a
        // target would always run right after the same one, in whatever
        // state that one leaves the machine.
        for k in 0..targets.len() {
            let i = (k + round as usize) % targets.len();
            let name = &targets[i];
            if stopped() {
                bail!("interrupted; cleaned up");
            }
            let started;
            let (front, load_cg) = match kept.get(i) {
                Some(k) => (&k.front, &k.cg),
                None => {
                    started = start(name, &cg, &dir, backend, o)?;
                    (&started, &cg)
                }
            };
            if !h2c_only(name) && only != Some(Only::H2) {
                let (r1, c1) = with_cpu(front.pids[0], backend_pid, || {
                    wrk(load_cg.path(), &format!("http://{}/", front.h1), 1, 32, secs, false)
                        .map_err(anyhow::Error::msg)
                })?;
                eprintln!("round {round} {name}: h1 {:.0} req/s", r1.requests_per_sec);
                h1[i].push((r1, c1));
            }
            if only == Some(Only::H1) {
                continue;
            }
            let log = dir.join(format!("h2load-{round}-{i}.log"));
            let (r2, c2) = with_cpu(front.pids[1], backend_pid, || {
                h2load(load_cg.path(), &format!("http://{}/", front.h2), secs, &log)
            })?;
            eprintln!("round {round} {name}: h2 {:.0} req/s", r2.requests_per_sec);
            h2[i].push((r2, c2));
        }
    }
    // The nodes stop before their cgroups go, and all before the report.
    drop(kept);
    for (title, results) in [("HTTP/1.1 keep-alive (wrk)", &h1), ("HTTP/2 h2c (h2load)", &h2)] {
        // The protocol `--only` left out.
        if results.iter().all(Vec::is_empty) {
            continue;
        }
        println!("\n{title}");
        println!(
            "{:<28} {:>12} {:>9} {:>9} {:>7} {:>13} {:>7} {:>7} {:>15} {:>10} {:>10}",
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "proxy CPU µs",
            "user",
            "system",
            "backend CPU µs",
            "sleeps/1k",
            "preempt/1k"
        );
        for (name, runs) in targets.iter().zip(results.iter()).filter(|(_, r)| !r.is_empty()) {
            let load: Vec<WrkResult> = runs.iter().map(|(r, _)| *r).collect();
            let m = |f: fn(&Cpu) -> f64| {
                sluice_integration::bench::median(runs.iter().map(|(_, c)| f(c)).collect())
            };
            // "direct" has no proxy.
            let us = |v: f64| if v.is_nan() { "–".to_string() } else { format!("{v:.2}") };
            println!(
                "{} {:>13} {:>7} {:>7} {:>15.2} {:>10} {:>10}",
                sluice_integration::bench::row(name, 28, &load),
                us(m(|c| c.proxy_us)),
                us(m(|c| c.proxy_user_us)),
                us(m(|c| c.proxy_system_us)),
                m(|c| c.backend_us),
                us(m(|c| c.proxy_sleeps_per_k)),
                us(m(|c| c.proxy_preempted_per_k))
            );
        }
        // Round by round, as each round ran both side by side.
        for (s, o) in comparisons(&targets) {
            let load = |i: usize| results[i].iter().map(|(r, _)| *r).collect::<Vec<_>>();
            let h = head_to_head(&load(s), &load(o));
            println!(
                "{} vs {}, round by round: req/s at least as high in {}/{n}, p99 no higher in {}/{n}, both in {}/{n}",
                targets[s],
                targets[o],
                h.faster,
                h.tail,
                h.both,
                n = h.rounds
            );
            println!("  {}", paired(&load(s), &load(o)));
        }
    }
    Ok(())
}

/// The pairs compared round by round, as indices into `targets` (first
/// against second): Sluice against nginx, haproxy and its other builds, and
/// the profile-guided build against nginx and haproxy too, as it is a way
/// of building the same Sluice.
fn comparisons(targets: &[&str]) -> Vec<(usize, usize)> {
    let at = |name: &str| targets.iter().position(|t| *t == name);
    let against: [(&str, &[&str]); 2] =
        [("sluice", &["nginx", "haproxy", PGO_ROW, BASELINE_ROW]), (PGO_ROW, &["nginx", "haproxy"])];
    let mut pairs = Vec::new();
    for (first, others) in against {
        let Some(a) = at(first) else { continue };
        pairs.extend(others.iter().filter_map(|o| at(o)).map(|b| (a, b)));
    }
    pairs
}

/// Which protocol's load to run (`--only`): both when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    H1,
    H2,
}

/// Targets that only make sense for h2c clients: for HTTP/1.1 clients
/// haproxy with an HTTP/1.1 upstream is the "haproxy" row, and the bare
/// forwarder speaks only h2c.
fn h2c_only(target: &str) -> bool {
    matches!(target, "haproxy (h2→http1 upstream)" | "h2 crate, bare forwarder")
}

/// `a` against `b` over the rounds both ran, as the medians of the
/// per-round req/s ratio and p99 difference, each with its 95% interval
/// (sign test): an interval that holds 1 (or 0) shows no difference beyond
/// the noise.
fn paired(a: &[WrkResult], b: &[WrkResult]) -> String {
    let ratio = a.iter().zip(b).map(|(x, y)| x.requests_per_sec / y.requests_per_sec).collect();
    let p99 = a.iter().zip(b).map(|(x, y)| x.p99_ms - y.p99_ms).collect();
    let verdict = |lo: f64, hi: f64, none: f64, below: &'static str, above: &'static str| {
        if hi < none {
            below
        } else if lo > none {
            above
        } else {
            "no difference shown"
        }
    };
    let rate = match sluice_integration::bench::median_interval(ratio) {
        Some((m, lo, hi)) => format!(
            "req/s ratio {m:.3} [{lo:.3}, {hi:.3}]: {}",
            verdict(lo, hi, 1.0, "sluice slower", "sluice faster")
        ),
        None => "req/s ratio: too few rounds for a 95% interval (6 at least)".to_string(),
    };
    let tail = match sluice_integration::bench::median_interval(p99) {
        Some((m, lo, hi)) => format!(
            "p99 difference {m:+.3} ms [{lo:+.3}, {hi:+.3}]: {}",
            verdict(lo, hi, 0.0, "sluice lower", "sluice higher")
        ),
        None => "p99 difference: too few rounds for a 95% interval".to_string(),
    };
    format!("per-round medians, 95% intervals: {rate}; {tail}")
}

/// How often one target did at least as well as another, round by round.
#[derive(Debug, PartialEq)]
struct HeadToHead {
    rounds: usize,
    /// Rounds with req/s at least the other's.
    faster: usize,
    /// Rounds with p99 no higher than the other's.
    tail: usize,
    /// Rounds with both.
    both: usize,
}

/// `a` against `b`, round `i` of one against round `i` of the other.
fn head_to_head(a: &[WrkResult], b: &[WrkResult]) -> HeadToHead {
    let mut h = HeadToHead { rounds: 0, faster: 0, tail: 0, both: 0 };
    for (x, y) in a.iter().zip(b) {
        let faster = x.requests_per_sec >= y.requests_per_sec;
        let tail = x.p99_ms <= y.p99_ms;
        h.rounds += 1;
        h.faster += usize::from(faster);
        h.tail += usize::from(tail);
        h.both += usize::from(faster && tail);
    }
    h
}

/// CPU time per request of one load run (µs).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// NaN when there is no proxy ("direct"), as are its parts.
    proxy_us: f64,
    /// The proxy's user-space part of `proxy_us`.
    proxy_user_us: f64,
    /// The proxy's kernel part of `proxy_us`.
    proxy_system_us: f64,
    backend_us: f64,
    /// The proxy's sleeps (voluntary context switches) per 1000 requests:
    /// how often it found nothing to do and had to be woken again.
    proxy_sleeps_per_k: f64,
    /// The proxy's preemptions (involuntary context switches) per 1000
    /// requests: how often another task took its CPU.
    proxy_preempted_per_k: f64,
}

/// Runs `load`, measuring the CPU time `proxy`'s and `backend`'s process
/// trees spend meanwhile, per request: req/s times the wall time of the
/// run gives the requests (the load generator's warm-up included, as the
/// CPU time includes it).
fn with_cpu(
    proxy: Option<u32>,
    backend: u32,
    load: impl FnOnce() -> anyhow::Result<WrkResult>,
) -> anyhow::Result<(WrkResult, Cpu)> {
    use crate::bench_report::{proc_cpu, proc_cpu_split};
    use sluice_integration::bench::context_switches;
    let switches = || proxy.map_or((0, 0), context_switches);
    let (p0, b0, s0, t0) =
        (proc_cpu_split(proxy), proc_cpu(Some(backend)), switches(), std::time::Instant::now());
    let r = load()?;
    let (p1, b1, s1, wall) =
        (proc_cpu_split(proxy), proc_cpu(Some(backend)), switches(), t0.elapsed().as_secs_f64());
    let requests = r.requests_per_sec * wall;
    let per_req = |s: f64| if requests > 0.0 { s * 1e6 / requests } else { f64::NAN };
    let proxy_part = |s: f64| if proxy.is_some() { per_req(s) } else { f64::NAN };
    let (user, system) = (proxy_part(p1.0 - p0.0), proxy_part(p1.1 - p0.1));
    Ok((
        r,
        Cpu {
            proxy_us: user + system,
            proxy_user_us: user,
            proxy_system_us: system,
            backend_us: per_req(b1 - b0),
            proxy_sleeps_per_k: proxy_part(s1.0.saturating_sub(s0.0) as f64) / 1000.0,
            proxy_preempted_per_k: proxy_part(s1.1.saturating_sub(s0.1) as f64) / 1000.0,
        },
    ))
}

/// Removes a scratch folder when dropped.
pub(crate) struct Cleanup(PathBuf);

/// A scratch folder `sluice-NAME-PID` in the temp dir, created now and
/// removed when the returned guard drops.
pub(crate) fn scratch_dir(name: &str) -> anyhow::Result<(PathBuf, Cleanup)> {
    let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok((dir.clone(), Cleanup(dir)))
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
#[path = "l7_tests.rs"]
mod tests;

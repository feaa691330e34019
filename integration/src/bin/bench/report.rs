//! `sluice-bench report [--secs N] [--rounds N] [--out DIR] [--pgo BIN]`:
//! the benchmark report. Five scenarios (HTTP/1.1 keep-alive, HTTP/2
//! multiplexed, gRPC unary, TCP request/response, TCP bulk) through six
//! modes (direct, Sluice L7 or its proxy copy for TCP, Sluice zero-hop,
//! Sluice spliced, nginx, haproxy), unpinned and pinned to one CPU, in one
//! run: rounds alternate the modes, the tables show medians. With `--pgo`,
//! a profile-guided build of sluice (`scripts/build-pgo.sh`) is a seventh
//! mode for the HTTP scenarios. Writes `DIR/BENCHMARKS.md` (the machine,
//! the exact commands, the tables) and `DIR/benchmarks.png`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use sluice_integration::{
    CgroupGuard, Node,
    bench::{in_cgroup, median, parse_wrk, pin, process_tree},
    node::NodeOpts,
    process::{ChildGuard, echo_process, hello_process},
};

use crate::bench_l7::{TermGuard, free_port, h2load_run, wait_listening};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    H1,
    H2,
    Grpc,
    TcpRr,
    TcpBulk,
}

const SCENARIOS: [Scenario; 5] =
    [Scenario::H1, Scenario::H2, Scenario::Grpc, Scenario::TcpRr, Scenario::TcpBulk];

impl Scenario {
    fn title(self) -> &'static str {
        match self {
            Scenario::H1 => "HTTP/1.1 keep-alive",
            Scenario::H2 => "HTTP/2 multiplexed (h2c)",
            Scenario::Grpc => "gRPC unary",
            Scenario::TcpRr => "TCP request/response (64 B)",
            Scenario::TcpBulk => "TCP bulk",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Scenario::H1 => "HTTP/1.1",
            Scenario::H2 => "HTTP/2",
            Scenario::Grpc => "gRPC unary",
            Scenario::TcpRr => "TCP req/resp",
            Scenario::TcpBulk => "TCP bulk",
        }
    }

    /// What the rate column counts.
    fn unit(self) -> &'static str {
        match self {
            Scenario::TcpRr => "round trips/s",
            Scenario::TcpBulk => "Gbit/s",
            _ => "req/s",
        }
    }

    fn tcp(self) -> bool {
        matches!(self, Scenario::TcpRr | Scenario::TcpBulk)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Sluice,
    /// Sluice L7 from a profile-guided build (HTTP scenarios, with `--pgo`).
    SluicePgo,
    ZeroHop,
    Splice,
    Nginx,
    Haproxy,
}

const MODES: [Mode; 7] =
    [Mode::Direct, Mode::Sluice, Mode::SluicePgo, Mode::ZeroHop, Mode::Splice, Mode::Nginx, Mode::Haproxy];

impl Mode {
    fn name(self, s: Scenario) -> &'static str {
        match (self, s.tcp()) {
            (Mode::Direct, _) => "direct",
            (Mode::Sluice, false) => "Sluice L7",
            (Mode::Sluice, true) => "Sluice proxy (L4 copy)",
            (Mode::SluicePgo, _) => "Sluice L7, PGO build",
            (Mode::ZeroHop, _) => "Sluice zero-hop (kernel)",
            (Mode::Splice, _) => "Sluice spliced (sk_skb)",
            (Mode::Nginx, _) => "nginx",
            (Mode::Haproxy, _) => "haproxy",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// req/s, round trips/s or Gbit/s.
    rate: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Thousands of requests (round trips), or GB moved for bulk.
    units: f64,
    /// CPU seconds of the proxy's processes, and of the whole machine.
    proxy_cpu: f64,
    host_cpu: f64,
    proxy_rss_mib: f64,
    /// The spliced mode really spliced (its self-test passed).
    splice_on: bool,
}

/// A proxy (or nothing) in front of a backend.
pub(crate) struct Front {
    pub(crate) addr: SocketAddr,
    /// The proxy's main process (its children are counted too).
    pub(crate) pid: Option<u32>,
    _guard: Option<TermGuard>,
    _node: Option<Node>,
}

struct Backends {
    hello: SocketAddr,
    grpc: SocketAddr,
    echo: SocketAddr,
    pids: Vec<u32>,
    _guards: Vec<ChildGuard>,
}

const BULK_BYTES: u64 = 512 << 20;
/// A framed `demo.Pricing/Quote` request for `item: "apple"`.
const GRPC_BODY: [u8; 12] = [0, 0, 0, 0, 7, 0x0a, 5, b'a', b'p', b'p', b'l', b'e'];

fn backends(dir: &Path) -> anyhow::Result<Backends> {
    let (h, hello) = hello_process("127.0.0.1:0");
    let (e, echo) = echo_process(None, "127.0.0.1:0", false);
    let port = free_port()?;
    let grpc: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(sluice_integration::target_bin("sluice"))
        .args(["demo-app", "--name", "pricing", "pricing", "--listen", &grpc.to_string(), "--export-listen"])
        .arg(format!("127.0.0.1:{}", free_port()?))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("the gRPC backend (sluice demo-app pricing)")?;
    let g = ChildGuard(child);
    wait_listening(port)?;
    std::fs::write(dir.join("grpc-body.bin"), GRPC_BODY)?;
    let pids = vec![h.0.id(), e.0.id(), g.0.id()];
    Ok(Backends { hello, grpc, echo, pids, _guards: vec![h, e, g] })
}

fn backend_for(b: &Backends, s: Scenario) -> SocketAddr {
    match s {
        Scenario::H1 | Scenario::H2 => b.hello,
        Scenario::Grpc => b.grpc,
        Scenario::TcpRr | Scenario::TcpBulk => b.echo,
    }
}

fn spawn_proxy(mut cmd: Command, port: u16, pinned: bool) -> anyhow::Result<Front> {
    if pinned {
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
        cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(program).args(args);
    }
    let child =
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("scripts/install-deps.sh --bench")?;
    let pid = child.id();
    let guard = TermGuard(child);
    wait_listening(port)?;
    Ok(Front { addr: ([127, 0, 0, 1], port).into(), pid: Some(pid), _guard: Some(guard), _node: None })
}

/// Starts nginx or haproxy for a scenario, in front of `backend`, with its files in `dir`.
pub(crate) type StartProxy = fn(&Path, Scenario, SocketAddr, bool) -> anyhow::Result<Front>;

pub(crate) fn nginx(dir: &Path, s: Scenario, backend: SocketAddr, pinned: bool) -> anyhow::Result<Front> {
    let port = free_port()?;
    let d = dir.display();
    let body = match s {
        Scenario::H1 | Scenario::H2 => format!(
            "http {{\n  access_log off;\n  keepalive_requests 100000000;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  upstream be {{ server {backend}; keepalive 128; keepalive_requests 100000000; }}\n  server {{\n    listen 127.0.0.1:{port}{};\n    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            if s == Scenario::H2 { " http2" } else { "" }
        ),
        Scenario::Grpc => format!(
            "http {{\n  access_log off;\n  keepalive_requests 100000000;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  upstream be {{ server {backend}; keepalive 128; keepalive_requests 100000000; }}\n  server {{\n    listen 127.0.0.1:{port} http2;\n    location / {{ grpc_pass grpc://be; }}\n  }}\n}}\n"
        ),
        Scenario::TcpRr | Scenario::TcpBulk => {
            format!(
                "stream {{\n  server {{ listen 127.0.0.1:{port}; proxy_pass {backend}; proxy_half_close on; }}\n}}\n"
            )
        }
    };
    let load = if s.tcp() { "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n" } else { "" };
    let conf = format!(
        "{load}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nevents {{ worker_connections 4096; }}\n{body}"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut cmd = Command::new("nginx");
    cmd.args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/nginx-error.log")]);
    spawn_proxy(cmd, port, pinned)
}

/// haproxy as Sluice's L7 path works: HTTP/2 clients' requests go to the
/// backend over HTTP/2 (`proto h2`), HTTP/1.1 clients' over HTTP/1.1.
pub(crate) fn haproxy(dir: &Path, s: Scenario, backend: SocketAddr, pinned: bool) -> anyhow::Result<Front> {
    haproxy_with(dir, s, backend, pinned, matches!(s, Scenario::H2 | Scenario::Grpc))
}

/// haproxy speaking HTTP/1.1 to the backend whatever the client speaks.
pub(crate) fn haproxy_http1_upstream(
    dir: &Path,
    s: Scenario,
    backend: SocketAddr,
    pinned: bool,
) -> anyhow::Result<Front> {
    haproxy_with(dir, s, backend, pinned, false)
}

fn haproxy_with(
    dir: &Path,
    s: Scenario,
    backend: SocketAddr,
    pinned: bool,
    h2_upstream: bool,
) -> anyhow::Result<Front> {
    let port = free_port()?;
    let (mode, bind) = match s {
        Scenario::H1 => ("http", ""),
        Scenario::H2 | Scenario::Grpc => ("http", " proto h2"),
        Scenario::TcpRr | Scenario::TcpBulk => ("tcp", ""),
    };
    let server = if h2_upstream { " proto h2" } else { "" };
    let reuse = if mode == "http" { "  http-reuse always\n" } else { "" };
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n{reuse}frontend fe\n  bind 127.0.0.1:{port}{bind}\n  default_backend be\nbackend be\n  server s1 {backend}{server}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    spawn_proxy(cmd, port, pinned)
}

fn sluice(
    cg: &CgroupGuard,
    s: Scenario,
    m: Mode,
    backend: SocketAddr,
    pinned: bool,
    pgo: Option<&Path>,
) -> anyhow::Result<Front> {
    let (protocol, zero_hop, splice) = match m {
        Mode::Sluice | Mode::SluicePgo => (
            match s {
                Scenario::H1 | Scenario::H2 => "http",
                Scenario::Grpc => "grpc",
                Scenario::TcpRr | Scenario::TcpBulk => "tcp",
            },
            false,
            "off",
        ),
        Mode::ZeroHop => ("tcp", true, "off"),
        _ => ("tcp", false, "auto"),
    };
    let vip = "127.100.0.77";
    let config =
        sluice_integration::bench::one_service("bench", vip, 80, Some(protocol), zero_hop, backend.port());
    let opts = NodeOpts {
        test: "benchreport",
        config: &config,
        cgroup: cg.path(),
        netns: None,
        node_in_cgroup: false,
        args: &["--workers", "1", "--splice", splice],
    };
    let bin = match m {
        Mode::SluicePgo => Some(pgo.context("the PGO mode needs --pgo")?),
        _ => None,
    };
    let node = Node::start_bin(opts, bin);
    let pid = node.pid();
    if let Some(p) = pid {
        pin(p, pinned).map_err(anyhow::Error::msg)?;
    }
    Ok(Front { addr: format!("{vip}:80").parse()?, pid, _guard: None, _node: Some(node) })
}

fn front(
    cg: &CgroupGuard,
    dir: &Path,
    s: Scenario,
    m: Mode,
    backend: SocketAddr,
    pinned: bool,
    pgo: Option<&Path>,
) -> anyhow::Result<Front> {
    match m {
        Mode::Direct => Ok(Front { addr: backend, pid: None, _guard: None, _node: None }),
        Mode::Sluice | Mode::SluicePgo | Mode::ZeroHop | Mode::Splice => {
            sluice(cg, s, m, backend, pinned, pgo)
        }
        Mode::Nginx => nginx(dir, s, backend, pinned),
        Mode::Haproxy => haproxy(dir, s, backend, pinned),
    }
}

// ---------------------------------------------------------------------------
// Processes: CPU time, memory, pinning

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |t| t as f64)
}

/// User + system CPU seconds of `pid`'s tree.
pub(crate) fn proc_cpu(pid: Option<u32>) -> f64 {
    let (user, system) = proc_cpu_split(pid);
    user + system
}

/// User and system CPU seconds of `pid`'s tree, apart.
pub(crate) fn proc_cpu_split(pid: Option<u32>) -> (f64, f64) {
    let Some(pid) = pid else { return (0.0, 0.0) };
    let (user, system) = process_tree(pid)
        .into_iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
            let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |x| x.1).split_whitespace().collect();
            let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // rest[0] is field 3 (the state): utime is field 14, stime 15.
            (field(11), field(12))
        })
        .fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps));
    (user as f64 / clock_ticks(), system as f64 / clock_ticks())
}

/// Busy CPU seconds of the whole machine (all cores).
fn host_cpu() -> f64 {
    crate::cpu_jiffies().0 as f64 / clock_ticks()
}

/// Resident memory of `pid`'s tree, MiB.
fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return f64::NAN };
    process_tree(pid)
        .into_iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum::<f64>()
        / 1024.0
}

// ---------------------------------------------------------------------------
// Load

/// (rate, p50, p90, p99 in ms, errors, units in thousands of requests or GB).
type Load = (f64, f64, f64, f64, u64, f64);

fn drive(
    cg: &CgroupGuard,
    dir: &Path,
    s: Scenario,
    target: SocketAddr,
    secs: u32,
    pinned: bool,
) -> anyhow::Result<Load> {
    let text = |out: std::process::Output| -> anyhow::Result<String> {
        if !out.status.success() {
            bail!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let field = |t: &str, k: &str| -> anyhow::Result<f64> {
        t.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {k} in {t}"))
    };
    match s {
        Scenario::H1 => {
            let out = in_cgroup(None, cg.path(), pinned, "wrk")
                .args(["-t1", "-c32", &format!("-d{secs}s"), "--latency", &format!("http://{target}/")])
                .output()
                .context("wrk")?;
            let t = text(out)?;
            let r = parse_wrk(&t).with_context(|| format!("cannot read wrk's output:\n{t}"))?;
            let units = r.requests_per_sec * f64::from(secs) / 1000.0;
            Ok((r.requests_per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.errors, units))
        }
        Scenario::H2 | Scenario::Grpc => {
            let mut cmd = in_cgroup(None, cg.path(), pinned, "h2load");
            let url = if s == Scenario::Grpc {
                cmd.arg("-d").arg(dir.join("grpc-body.bin"));
                cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
                format!("http://{target}/demo.Pricing/Quote")
            } else {
                format!("http://{target}/")
            };
            let r = h2load_run(cmd, &url, secs, &dir.join("h2load.log"))?;
            let units = r.requests_per_sec * f64::from(secs) / 1000.0;
            Ok((r.requests_per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.errors, units))
        }
        Scenario::TcpRr => {
            let t = text(
                in_cgroup(
                    None,
                    cg.path(),
                    pinned,
                    sluice_integration::target_bin("sluice-testkit").to_str().unwrap_or("sluice-testkit"),
                )
                .args(["pingpong", "--secs", &secs.to_string(), &target.to_string(), "64"])
                .output()?,
            )?;
            let n = field(&t, "round_trips")?;
            let ms = |k| field(&t, k).map(|us| us / 1000.0);
            Ok((n / f64::from(secs), ms("p50_us")?, ms("p90_us")?, ms("p99_us")?, 0, n / 1000.0))
        }
        Scenario::TcpBulk => {
            let out = in_cgroup(
                None,
                cg.path(),
                pinned,
                sluice_integration::target_bin("sluice-testkit").to_str().unwrap_or("sluice-testkit"),
            )
            .args(["bulk", &target.to_string(), &BULK_BYTES.to_string()])
            .output()?;
            match text(out) {
                Ok(t) => {
                    let gbit = field(&t, "gbit_per_s")?;
                    // Both directions carry the bytes (through an echo).
                    Ok((gbit, f64::NAN, f64::NAN, f64::NAN, 0, 2.0 * BULK_BYTES as f64 / 1e9))
                }
                Err(e) => {
                    eprintln!("bulk to {target}: {e}");
                    Ok((f64::NAN, f64::NAN, f64::NAN, f64::NAN, 1, 0.0))
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The run

/// `pgo`: a profile-guided build of sluice (`scripts/build-pgo.sh`), run
/// as one more mode for the HTTP scenarios.
pub fn run(
    secs: u32,
    rounds: u32,
    out: &Path,
    pgo: Option<&Path>,
    stopped: fn() -> bool,
) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root");
    }
    let cg = CgroupGuard::new("benchreport");
    let (dir, _cleanup) = crate::bench_l7::scratch_dir("benchreport")?;
    let b = backends(&dir)?;
    let started = std::time::SystemTime::now();
    // results[pinned][scenario][mode]
    let mut results: Vec<Vec<Vec<Vec<Sample>>>> =
        vec![vec![vec![Vec::new(); MODES.len()]; SCENARIOS.len()]; 2];
    for (pi, pinned) in [false, true].into_iter().enumerate() {
        for pid in &b.pids {
            pin(*pid, pinned).map_err(anyhow::Error::msg)?;
        }
        for round in 0..rounds {
            for (si, s) in SCENARIOS.iter().enumerate() {
                for (mi, m) in MODES.iter().enumerate() {
                    if stopped() {
                        bail!("interrupted; cleaned up");
                    }
                    // The profile was trained on HTTP: the mode is the L7 path's.
                    if *m == Mode::SluicePgo && (pgo.is_none() || s.tcp()) {
                        continue;
                    }
                    let f = front(&cg, &dir, *s, *m, backend_for(&b, *s), pinned, pgo)?;
                    let splice_on = f._node.as_ref().is_some_and(|n| {
                        n.metric("sluice_fast_path_enabled{path=\"splice\"}").is_some_and(|v| v > 0.0)
                    });
                    let (cpu0, host0) = (proc_cpu(f.pid), host_cpu());
                    let (rate, p50, p90, p99, errors, units) = drive(&cg, &dir, *s, f.addr, secs, pinned)?;
                    let (cpu1, host1) = (proc_cpu(f.pid), host_cpu());
                    let sample = Sample {
                        rate,
                        p50_ms: p50,
                        p90_ms: p90,
                        p99_ms: p99,
                        errors,
                        units,
                        proxy_cpu: cpu1 - cpu0,
                        host_cpu: host1 - host0,
                        proxy_rss_mib: rss_mib(f.pid),
                        splice_on,
                    };
                    eprintln!(
                        "{} round {round} {} / {}: {:.1} {}",
                        if pinned { "pinned" } else { "unpinned" },
                        s.short(),
                        m.name(*s),
                        rate,
                        s.unit()
                    );
                    results[pi][si][mi].push(sample);
                }
            }
        }
    }
    for pid in &b.pids {
        pin(*pid, false).map_err(anyhow::Error::msg)?;
    }
    std::fs::create_dir_all(out)?;
    let md = report(&results, secs, rounds, started, pgo)?;
    std::fs::write(out.join("BENCHMARKS.md"), &md)?;
    chart(&results, &out.join("benchmarks.png"))?;
    println!("{md}");
    println!("wrote {} and {}", out.join("BENCHMARKS.md").display(), out.join("benchmarks.png").display());
    Ok(())
}

/// Medians of one cell.
struct Cell {
    rate: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    errors: u64,
    proxy_cpu: f64,
    host_cpu: f64,
    rss: f64,
    failed: usize,
    splice_off: usize,
    n: usize,
}

fn cell(runs: &[Sample]) -> Cell {
    let ok: Vec<&Sample> = runs.iter().filter(|r| !r.rate.is_nan()).collect();
    let m = |f: fn(&Sample) -> f64| median(ok.iter().map(|r| f(r)).collect());
    Cell {
        rate: m(|r| r.rate),
        p50: m(|r| r.p50_ms),
        p90: m(|r| r.p90_ms),
        p99: m(|r| r.p99_ms),
        errors: runs.iter().map(|r| r.errors).sum(),
        proxy_cpu: m(|r| if r.units > 0.0 { r.proxy_cpu / r.units } else { f64::NAN }),
        host_cpu: m(|r| if r.units > 0.0 { r.host_cpu / r.units } else { f64::NAN }),
        rss: m(|r| r.proxy_rss_mib),
        failed: runs.len() - ok.len(),
        splice_off: runs.iter().filter(|r| !r.splice_on).count(),
        n: runs.len(),
    }
}

fn num(v: f64, digits: usize) -> String {
    if v.is_nan() { "–".into() } else { format!("{v:.digits$}") }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let t = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&t).lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_else(|_| "not found".into())
}

fn report(
    results: &[Vec<Vec<Vec<Sample>>>],
    secs: u32,
    rounds: u32,
    started: std::time::SystemTime,
    pgo: Option<&Path>,
) -> anyhow::Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("", |m| m.trim_start_matches([' ', '\t', ':']));
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = humantime::format_rfc3339_seconds(started);
    let mut o = String::new();
    writeln!(o, "# Benchmarks\n")?;
    writeln!(
        o,
        "Written by `sluice-bench report` ({date}). Every figure below was measured in that one run on the machine described here; nothing is copied from elsewhere. The machine is shared and noisy: compare rows of one table, not absolute numbers across machines.\n"
    )?;
    writeln!(
        o,
        "## Reproduce\n\n```sh\n./scripts/install-deps.sh --bench\ncargo build --release --workspace --bins\nsudo target/release/sluice-bench report --secs {secs} --rounds {rounds} --out docs{}\n```\n",
        if pgo.is_some() {
            " \\\n  --pgo target/pgo/x86_64-unknown-linux-gnu/release/sluice   # after: sudo ./scripts/build-pgo.sh"
        } else {
            ""
        }
    )?;
    writeln!(o, "## Machine\n")?;
    writeln!(o, "| | |\n|---|---|")?;
    writeln!(o, "| CPU | {model}, {cores} cores visible |")?;
    writeln!(o, "| memory | {mem_gib:.1} GiB |")?;
    writeln!(o, "| kernel | {} |", sh("uname", &["-sr"]))?;
    writeln!(
        o,
        "| OS | Debian {} |",
        std::fs::read_to_string("/etc/debian_version").unwrap_or_default().trim()
    )?;
    writeln!(o, "| wrk | {} |", sh("wrk", &["-v"]))?;
    writeln!(o, "| h2load | {} |", sh("h2load", &["--version"]))?;
    writeln!(o, "| nginx | {} |", sh("nginx", &["-v"]))?;
    writeln!(o, "| haproxy | {} |", sh("haproxy", &["-v"]))?;
    writeln!(o)?;
    writeln!(o, "## Setup\n")?;
    writeln!(
        o,
        "- Backends, one thread each: `sluice-testkit hello` (hyper; HTTP/1.1 and h2c) for HTTP, `sluice demo-app pricing` (hyper HTTP/2, hand-framed protobuf) for gRPC, `sluice-testkit echo` for TCP."
    )?;
    writeln!(
        o,
        "- Load, from inside the mesh cgroup: HTTP/1.1 `wrk -t1 -c32 -d{secs}s --latency`; HTTP/2 `h2load -c8 -m16 -D{secs} --warm-up-time 1` (latencies from its request log); gRPC the same h2load with a 12-byte `demo.Pricing/Quote` request (`-d`, `content-type: application/grpc`); TCP request/response: one connection, 64 B ping-pong for {secs} s (`sluice-testkit pingpong`); TCP bulk: {} MiB through the echo, both directions at once (`sluice-testkit bulk`).",
        BULK_BYTES >> 20
    )?;
    writeln!(
        o,
        "- Modes: **direct** (client to backend); **Sluice L7** (`protocol: http`, `grpc`; for TCP the proxy's userspace copy, `protocol: tcp`); **zero-hop** (`zero_hop: true`: connect4 sends the connection straight to the backend; HTTP goes through as bytes); **spliced** (`protocol: tcp`, `--splice auto`: sk_skb moves the payload between the proxy's sockets in the kernel); **nginx** and **haproxy** (Debian packages, one worker/thread, keep-alive upstream: `proxy_pass` HTTP/1.1, `grpc_pass`, `stream` for TCP; haproxy `http-reuse always`, `proto h2` upstream for HTTP/2 and gRPC clients as Sluice speaks HTTP/2 to the backend for them, `mode tcp`; nginx has no HTTP/2 upstream but `grpc_pass`, so its HTTP/2 row goes to the backend over HTTP/1.1). Every Sluice node runs 1 worker."
    )?;
    if pgo.is_some() {
        writeln!(
            o,
            "- **Sluice L7, PGO build**: the same source built by `scripts/build-pgo.sh` (profile-guided: trained on this benchmark's own kind of HTTP/1.1 and h2c load, so an upper bound for other traffic); the other Sluice rows are `cargo build --release`, what the demo and the image run. HTTP scenarios only."
        )?;
    }
    writeln!(
        o,
        "- **Pinned**: client, backend and proxy on CPU 0 (`taskset`); **unpinned**: free on all cores. {rounds} rounds alternate the modes; the tables show medians (errors: the sum)."
    )?;
    writeln!(
        o,
        "- **proxy CPU**: user+system CPU seconds of the proxy's processes (the Sluice node, nginx's master and worker, haproxy) per 1000 requests (round trips; per GB moved for bulk). Zero-hop's node is idle by design: the kernel work it causes is charged to the client and backend, which **host CPU** (all busy CPU time of the machine, load generator included) shows. **RSS**: resident memory of the proxy's processes at the end of the run."
    )?;
    writeln!(o, "\n![throughput by scenario and mode](benchmarks.png)\n")?;
    for (si, s) in SCENARIOS.iter().enumerate() {
        let per = if *s == Scenario::TcpBulk { "GB" } else { "1k req" };
        writeln!(o, "## {}\n", s.title())?;
        writeln!(
            o,
            "| mode | pinning | {} | vs direct | p50 ms | p90 ms | p99 ms | errors | proxy CPU s/{per} | host CPU s/{per} | proxy RSS MiB |",
            s.unit()
        )?;
        writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for (pi, pin) in ["unpinned", "pinned"].iter().enumerate() {
            let direct = cell(&results[pi][si][0]).rate;
            for (mi, m) in MODES.iter().enumerate() {
                if results[pi][si][mi].is_empty() {
                    continue;
                }
                let c = cell(&results[pi][si][mi]);
                let mut name = m.name(*s).to_string();
                if *m == Mode::Splice && c.splice_off > 0 {
                    let _ = write!(name, " (self-test failed in {}/{}: proxy copy)", c.splice_off, c.n);
                }
                if c.failed > 0 {
                    let _ = write!(name, " ({}/{} runs failed)", c.failed, c.n);
                }
                let digits = if *s == Scenario::TcpBulk { 2 } else { 0 };
                let (cpu_digits, proxy) =
                    if *m == Mode::Direct { (4, "–".to_string()) } else { (4, num(c.proxy_cpu, 4)) };
                writeln!(
                    o,
                    "| {name} | {pin} | {} | {} | {} | {} | {} | {} | {proxy} | {} | {} |",
                    num(c.rate, digits),
                    if direct.is_nan() || c.rate.is_nan() {
                        "–".into()
                    } else {
                        format!("{:.0}%", c.rate / direct * 100.0)
                    },
                    num(c.p50, 3),
                    num(c.p90, 3),
                    num(c.p99, 3),
                    c.errors,
                    num(c.host_cpu, cpu_digits),
                    if *m == Mode::Direct { "–".into() } else { num(c.rss, 1) },
                )?;
            }
        }
        writeln!(o)?;
    }
    Ok(o)
}

/// Throughput per mode, one panel per scenario; unpinned and pinned side by side.
fn chart(results: &[Vec<Vec<Vec<Sample>>>], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("the chart's font (fonts-dejavu-core; scripts/install-deps.sh --bench)")?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("DejaVuSans.ttf is not a font plotters can read"))?;
    let root = BitMapBackend::new(path, (1500, 950)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(50);
    title
        .draw(&Text::new(
            "Sluice benchmark: throughput by mode (medians; blue unpinned, orange pinned to one CPU)",
            (20, 15),
            ("sans-serif", 22).into_font(),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = body.split_evenly((2, 3));
    let colors = [RGBColor(52, 101, 164), RGBColor(245, 121, 0)];
    for (si, s) in SCENARIOS.iter().enumerate() {
        let area = &panels[si];
        // The modes this scenario ran (the PGO build only with --pgo, only for HTTP).
        let shown: Vec<usize> = (0..MODES.len())
            .filter(|&mi| !results[0][si][mi].is_empty() || !results[1][si][mi].is_empty())
            .collect();
        let rates: Vec<[f64; 2]> = shown
            .iter()
            .map(|&mi| [cell(&results[0][si][mi]).rate, cell(&results[1][si][mi]).rate])
            .collect();
        let max =
            rates.iter().flatten().filter(|v| !v.is_nan()).fold(0.0f64, |a, b| a.max(*b)).max(1e-9) * 1.15;
        let mut c = ChartBuilder::on(area)
            .caption(format!("{} ({})", s.short(), s.unit()), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..shown.len() as f64 - 0.5, 0f64..max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let labels: Vec<&str> = shown
            .iter()
            .map(|&mi| match MODES[mi] {
                Mode::Direct => "direct",
                Mode::Sluice => {
                    if s.tcp() {
                        "Sluice copy"
                    } else {
                        "Sluice L7"
                    }
                }
                Mode::SluicePgo => "PGO",
                Mode::ZeroHop => "zero-hop",
                Mode::Splice => "spliced",
                Mode::Nginx => "nginx",
                Mode::Haproxy => "haproxy",
            })
            .collect();
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(shown.len() + 1)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).map_or(String::new(), |l| (*l).to_string())
                } else {
                    String::new()
                }
            })
            .x_label_style(("sans-serif", 13))
            .y_label_style(("sans-serif", 13))
            .y_label_formatter(&|y| {
                if *y >= 1000.0 { format!("{:.0}k", y / 1000.0) } else { format!("{y:.1}") }
            })
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (k, color) in colors.iter().enumerate() {
            c.draw_series(rates.iter().enumerate().filter(|(_, r)| !r[k].is_nan()).map(|(mi, r)| {
                let x0 = mi as f64 - 0.4 + 0.4 * k as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.38, r[k])], color.filled())
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let notes = &panels[5];
    let pgo_mode = MODES.iter().position(|m| *m == Mode::SluicePgo);
    let pgo_ran = pgo_mode.is_some_and(|mi| results.iter().any(|p| p.iter().any(|s| !s[mi].is_empty())));
    let mut lines = vec![
        "direct: client to backend, no proxy",
        "Sluice L7 / copy: through the node's proxy (1 worker)",
        "zero-hop: connect4 sends the connection to the backend",
        "spliced: sk_skb moves payload between proxy sockets",
        "nginx, haproxy: 1 worker, keep-alive upstream",
        "Tables, latencies, CPU and memory: BENCHMARKS.md",
    ];
    if pgo_ran {
        lines.insert(2, "PGO: Sluice L7 from scripts/build-pgo.sh");
    }
    for (i, line) in lines.iter().enumerate() {
        notes
            .draw(&Text::new(*line, (20, 40 + 30 * i as i32), ("sans-serif", 15).into_font()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

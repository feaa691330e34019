//! `sluice demo`: a small mesh on this one machine. Two nodes, each a network
//! namespace with its own `sluice node` (joined by a veth pair, no route
//! out); three demo services (an HTTP/1.1 frontend, a gRPC pricing backend on
//! both nodes, a flaky stock service on both nodes), each in its own cgroup;
//! a load generator. It shows a live view, then what the mesh did (requests
//! across nodes over mutual TLS, retries, ejections, refusals, zero-hop bytes)
//! and one trace as a tree. Everything it made is removed at the end, on
//! Ctrl-C and on SIGTERM.
//!
//! Without root it says what needs root and runs the rest: one node in
//! explicit mode (the proxy listens on the service addresses itself) with the
//! same services on loopback addresses.

pub(crate) mod apps;
mod traces;
mod view;

use std::{
    ffi::OsString,
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

pub(crate) use apps::{AppArgs, main as app_main};
use view::{Scrape, Snapshot};

use crate::{Failure, cli::DemoArgs, exit};

const NODE_A: &str = "10.77.10.1";
const NODE_B: &str = "10.77.10.2";
const WEB: &str = "127.100.0.10:8080";
const PRICING: &str = "127.100.0.20:9090";
const EXPORT: &str = "127.100.0.20:7000";
const STOCK: &str = "127.100.0.30:8081";
/// stock-v2's outages: the last `OUTAGE_FOR` seconds of every `OUTAGE_EVERY`.
const OUTAGE_EVERY: u64 = 15;
const OUTAGE_FOR: u64 = 5;

fn failed(what: impl std::fmt::Display) -> Failure {
    Failure::new(exit::FAILED, what)
}

/// Where the demo's two halves run: two nodes in network namespaces (root),
/// or one explicit-mode node with two loopback addresses (no root).
#[derive(Debug, Clone, Copy)]
struct Layout {
    root: bool,
    /// The workloads' addresses on "a" and "b".
    ip: [&'static str; 2],
    /// What the answers call "a" and "b".
    host: [&'static str; 2],
}

impl Layout {
    const NODES: Self = Self { root: true, ip: [NODE_A, NODE_B], host: ["node-a", "node-b"] };
    const EXPLICIT: Self = Self { root: false, ip: ["127.0.0.1", "127.0.0.2"], host: ["local-1", "local-2"] };

    /// Namespace index of side `i` (none without root).
    fn ns(&self, i: usize) -> Option<usize> {
        self.root.then_some(i)
    }
}

/// One demo service instance.
struct AppSpec {
    side: usize,
    name: String,
    /// Its cgroup, relative to the demo's (root only).
    cgroup: &'static str,
    args: Vec<String>,
    listen: SocketAddr,
}

fn apps(l: &Layout) -> Vec<AppSpec> {
    let at = |side: usize, port: u16| -> SocketAddr {
        SocketAddr::new(l.ip[side].parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), port)
    };
    let spec = |side: usize, what: &str, cgroup: &'static str, port: u16, more: Vec<String>| {
        let mut args = vec![
            what.split('-').next().unwrap_or(what).to_string(),
            "--listen".into(),
            at(side, port).to_string(),
        ];
        args.extend(more);
        AppSpec { side, name: format!("{what}@{}", l.host[side]), cgroup, args, listen: at(side, port) }
    };
    let export = |side| vec!["--export-listen".to_string(), at(side, 17000).to_string()];
    vec![
        spec(0, "pricing", "a/pricing", 19090, export(0)),
        spec(1, "pricing", "b/pricing", 19090, export(1)),
        spec(0, "stock-v1", "a/stock", 18081, vec!["--fail-rate".into(), "0.1".into()]),
        spec(
            1,
            "stock-v2",
            "b/stock",
            18081,
            vec![
                "--outage-every".into(),
                OUTAGE_EVERY.to_string(),
                "--outage-for".into(),
                OUTAGE_FOR.to_string(),
            ],
        ),
        spec(
            0,
            "frontend",
            "a/frontend",
            18080,
            vec!["--pricing".into(), PRICING.into(), "--stock".into(), STOCK.into()],
        ),
    ]
}

pub(crate) fn run(args: DemoArgs) -> Result<(), Failure> {
    let stop = Stop::install()?;
    let root = nix::unistd::geteuid().is_root();
    if root {
        let blockers: Vec<_> =
            sluice_redirector::probe::run().into_iter().filter(|r| r.blocks()).map(|r| r.what).collect();
        if !blockers.is_empty() {
            return Err(Failure::new(
                exit::UNSUPPORTED,
                format!("this host cannot run the demo: {} (see `sluice check`)", blockers.join(", ")),
            ));
        }
    }
    let mut demo = Demo::new(root)?;
    let result = if root { demo.nodes_in_namespaces(&args, &stop) } else { demo.explicit_node(&args, &stop) }
        .and_then(|otlp| demo.drive(&args, &stop, otlp.as_ref()));
    let dir = demo.dir.path.clone();
    if result.is_err() {
        demo.show_logs();
    }
    drop(demo);
    step("Cleaned up");
    say(&format!(
        "stopped every process the demo started; removed {}{}",
        if root { "its network namespaces, cgroups and " } else { "" },
        dir.display()
    ));
    result
}

/// Everything the demo made, undone in this order on drop: applications,
/// nodes, relays, namespaces, cgroups, files.
struct Demo {
    apps: Vec<Proc>,
    nodes: Vec<Proc>,
    relays: Vec<Relay>,
    nets: Vec<Netns>,
    cgroups: Cgroups,
    dir: Scratch,
    exe: PathBuf,
    layout: Layout,
    /// Each node's admin listener (and its namespace).
    admins: Vec<(Option<usize>, SocketAddr)>,
}

impl Demo {
    fn new(root: bool) -> Result<Self, Failure> {
        let pid = std::process::id();
        let exe = std::env::current_exe().map_err(failed)?;
        let cg_root = if root { sluice_redirector::mounts::cgroup2_mount()? } else { PathBuf::new() };
        let dir = Scratch::create(std::env::temp_dir().join(format!("sluice-demo-{pid}")))?;
        Ok(Self {
            apps: Vec::new(),
            nodes: Vec::new(),
            relays: Vec::new(),
            nets: Vec::new(),
            cgroups: Cgroups { root: cg_root.join(format!("sluice-demo-{pid}")), made: Vec::new() },
            dir,
            exe,
            layout: if root { Layout::NODES } else { Layout::EXPLICIT },
            admins: Vec::new(),
        })
    }

    fn cg(&self, rel: &str) -> PathBuf {
        self.cgroups.root.join(rel)
    }

    fn ns_path(&self, ns: Option<usize>) -> Option<PathBuf> {
        ns.map(|i| self.nets[i].path())
    }

    /// As root: two nodes in network namespaces, a cgroup per workload.
    fn nodes_in_namespaces(&mut self, args: &DemoArgs, stop: &Stop) -> Result<Option<OtlpTarget>, Failure> {
        let pid = std::process::id();
        step("Two nodes: network namespaces joined by a veth pair, no route out");
        let a = Netns::create(&format!("sluice-demo-{pid}-a"))?;
        self.nets.push(a);
        let b = Netns::create(&format!("sluice-demo-{pid}-b"))?;
        self.nets.push(b);
        let (a, b) = (&self.nets[0], &self.nets[1]);
        a.veth_to(b, "demo-a", &format!("{NODE_A}/24"), "demo-b", &format!("{NODE_B}/24"))?;
        say(&format!("node-a: {} ({NODE_A})    node-b: {} ({NODE_B})", a.name, b.name));

        step("A cgroup per workload: its identity in the mesh");
        for rel in ["", "a", "a/frontend", "a/pricing", "a/stock", "a/load", "b", "b/pricing", "b/stock"] {
            self.cgroups.make(rel)?;
        }
        say(&format!("{}/{{a,b}}/<workload>", self.cgroups.root.display()));

        step("The mesh config (embedded; each node reads the same file)");
        let otlp = otlp_target()?;
        let tracing = self.tracing(args, otlp.as_ref())?;
        let config = self.write_config(&tracing)?;

        step("Start the node agents");
        for (i, name) in ["node-a", "node-b"].into_iter().enumerate() {
            let mut v: Vec<OsString> = ["node", "--node-name", name, "--instance"].map(Into::into).to_vec();
            v.push(format!("demo-{pid}-{}", &name[5..]).into());
            v.extend(["--config".into(), config.clone().into_os_string(), "--cgroup".into()]);
            v.push(self.cg(&name[5..]).into_os_string());
            v.extend(["--workers", "1", "--drain-ms", "1000"].map(OsString::from));
            let p = self.spawn(Some(i), name, v)?;
            self.nodes.push(p);
            self.admins.push((Some(i), SocketAddr::from(([127, 0, 0, 1], 15000))));
        }
        for i in 0..2 {
            self.wait_ready(i, stop)?;
        }
        let m = self.scrape(0);
        let on = |p| if m.sum("sluice_fast_path_enabled", &[("path", p)]) > 0.0 { "on" } else { "off" };
        say(&format!(
            "both ready (admin 127.0.0.1:15000 in each namespace); node-a fast paths: zero-hop {}, splice {}, sk_msg {}",
            on("zero_hop"),
            on("splice"),
            on("sk_msg")
        ));
        self.start_apps(stop)?;
        say("pricing (gRPC) and stock on both nodes; frontend on node-a; stock-v1 fails 10% of requests,");
        say(&format!("stock-v2 has a {OUTAGE_FOR} s outage every {OUTAGE_EVERY} s"));
        step(
            "Drive traffic: shoppers on the frontend, calls the policy refuses, TCP exports on a zero-hop port",
        );
        let load =
            ["load", "--web", WEB, "--pricing", PRICING, "--export", EXPORT].map(String::from).to_vec();
        self.start_load(args, load)?;
        Ok(otlp)
    }

    /// Without root: say what that leaves out, run one explicit-mode node.
    fn explicit_node(&mut self, args: &DemoArgs, stop: &Stop) -> Result<Option<OtlpTarget>, Failure> {
        step("Not root: running the part of the demo that needs no privileges");
        say("Sluice's kernel side needs root: eBPF programs on a cgroup (connect4/6, sock_ops) bring");
        say("applications' connections to the proxy; network namespaces make the second node; cgroups");
        say("give workloads identities for mutual TLS and authorization; zero-hop and splicing run in");
        say("the kernel. Run `sudo ./demo.sh` (or `sudo sluice demo`) for all of it.");
        say("Here: one node in explicit mode. The proxy listens on the service addresses (127.100.0.x)");
        say("itself, and the applications dial them as they would in the mesh.");
        let otlp =
            otlp_url().map(|shown| OtlpTarget { shown, target: String::new(), port: 0, path: String::new() });
        step("The mesh config (embedded)");
        // The environment's collector is reachable from here: no relay.
        let tracing = self.tracing(args, None)?;
        let config = self.write_config(&tracing)?;
        step("Start the node (explicit mode)");
        let admin = free_port()?;
        let mut v: Vec<OsString> =
            ["node", "--explicit", "--node-name", "local", "--config"].map(Into::into).to_vec();
        v.push(config.into_os_string());
        v.extend(
            ["--proxy-port", "0", "--workers", "1", "--drain-ms", "1000", "--admin-port"].map(OsString::from),
        );
        v.push(admin.port().to_string().into());
        let p = self.spawn(None, "node", v)?;
        self.nodes.push(p);
        self.admins.push((None, admin));
        self.wait_ready(0, stop)?;
        say(&format!("ready: listening on {WEB}, {PRICING}, {STOCK}; admin {admin}"));
        self.start_apps(stop)?;
        say("two pricing (gRPC) and two stock instances on 127.0.0.1 and 127.0.0.2; stock-v1 fails 10%");
        say(&format!("of requests, stock-v2 has a {OUTAGE_FOR} s outage every {OUTAGE_EVERY} s"));
        step("Drive traffic: shoppers on the frontend, and calls the policy refuses");
        self.start_load(args, ["load", "--web", WEB].map(String::from).to_vec())?;
        Ok(otlp)
    }

    /// The config's `tracing:` value: a file, or the environment's collector.
    fn tracing(&mut self, args: &DemoArgs, relay: Option<&OtlpTarget>) -> Result<String, Failure> {
        let base = "sampling: 1.0, service_name: sluice-demo";
        if let Some(t) = relay {
            for ns in [&self.nets[0], &self.nets[1]] {
                self.relays.push(Relay::start(ns, t.port, &t.target)?);
            }
            say(&format!("traces: to {} (relayed into the nodes' namespaces)", t.shown));
            return Ok(format!("{{endpoint: \"http://127.0.0.1:{}{}\", {base}}}", t.port, t.path));
        }
        if let Some(url) = otlp_url() {
            say(&format!("traces: to {url}"));
            return Ok(format!("{{{base}}}"));
        }
        let traces = &args.traces_file();
        File::create(traces).map_err(|e| failed(format!("creating {}: {e}", traces.display())))?;
        say(&format!(
            "traces: to {} (set OTEL_EXPORTER_OTLP_ENDPOINT to send them to a collector)",
            traces.display()
        ));
        Ok(format!("{{file: {}, {base}}}", traces.display()))
    }

    fn write_config(&self, tracing: &str) -> Result<PathBuf, Failure> {
        let config = self.dir.path.join("mesh.yaml");
        let text = config_text(&self.layout, &self.cgroups.root, &self.dir.path.join("ca"), tracing);
        std::fs::write(&config, &text).map_err(failed)?;
        sluice_mesh_config::load(&config)?;
        say(&format!(
            "{} ({} lines): services web, pricing, stock; routes with retries; authorization",
            config.display(),
            text.lines().count()
        ));
        Ok(config)
    }

    fn app_args(&self, cgroup: &str, name: &str, args: &[String]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["demo-app".into(), "--name".into(), name.into()];
        if self.layout.root {
            v.extend(["--cgroup".into(), self.cg(cgroup).into_os_string()]);
        }
        let stats =
            self.dir.path.join("stats").join(format!("{}.json", name.split('@').next().unwrap_or(name)));
        v.extend(["--stats".into(), stats.into_os_string()]);
        v.extend(args.iter().map(OsString::from));
        v
    }

    fn start_apps(&mut self, stop: &Stop) -> Result<(), Failure> {
        step(if self.layout.root {
            "Start the services, each in its own cgroup"
        } else {
            "Start the services"
        });
        std::fs::create_dir_all(self.dir.path.join("stats")).map_err(failed)?;
        for a in apps(&self.layout) {
            let ns = self.layout.ns(a.side);
            let p = self.spawn(ns, &a.name, self.app_args(a.cgroup, &a.name, &a.args))?;
            self.apps.push(p);
            self.wait_port(ns, &a.name, a.listen, stop)?;
        }
        Ok(())
    }

    fn start_load(&mut self, args: &DemoArgs, mut load: Vec<String>) -> Result<(), Failure> {
        load.extend(["--rate".into(), args.rate.to_string()]);
        let argv = self.app_args("a/load", "load", &load);
        let p = self.spawn(self.layout.ns(0), "load", argv)?;
        self.apps.push(p);
        Ok(())
    }

    /// The live view until the time is up (or Ctrl-C), then what the mesh did and one trace.
    fn drive(&mut self, args: &DemoArgs, stop: &Stop, otlp: Option<&OtlpTarget>) -> Result<(), Failure> {
        let duration = (!args.keep_running).then(|| *args.duration);
        if args.keep_running {
            self.hints();
        }
        let started = Instant::now();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let mut last_print = Instant::now();
        let mut snap = self.snapshot(started, duration);
        loop {
            if !stop.sleep(Duration::from_secs(1)) || duration.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            if let Some(dead) = self.apps.iter_mut().chain(self.nodes.iter_mut()).find_map(|p| p.exited()) {
                return Err(failed(format!("{dead} (its log is shown below)")));
            }
            snap = self.snapshot(started, duration);
            if tty {
                print!("\x1b[2J\x1b[H{}", snap.render(true));
                let _ = std::io::stdout().flush();
            } else if last_print.elapsed() >= Duration::from_secs(5) {
                println!("\n{}", snap.render(false));
                last_print = Instant::now();
            }
        }
        // Let the last requests finish and the nodes' span batches go out.
        self.apps.pop();
        std::thread::sleep(Duration::from_millis(1500));
        let last = self.snapshot(started, duration);
        if last.elapsed > Duration::ZERO {
            snap = last;
        }
        step("What the mesh did");
        println!("{}", snap.render(false));
        // Stopped by a person: the checks are shown, not held against the run.
        let ok = summary(&snap) || stop.stopped();

        let exported = snap.node_a.sum("sluice_tracing_spans_total", &[("outcome", "exported")]);
        self.apps.clear();
        for n in &mut self.nodes {
            n.stop(Duration::from_secs(10));
        }
        step("One trace");
        match otlp {
            Some(t) => say(&format!(
                "{exported} spans sent to {} by node-a (see them in your trace viewer)",
                t.shown
            )),
            None => print_trace(&args.traces_file()),
        }
        if ok { Ok(()) } else { Err(failed("some of the demo's checks failed (marked FAIL above)")) }
    }

    /// Runs `sluice <args>` in namespace `ns` (none: here), its output in the
    /// demo's folder.
    fn spawn(&self, ns: Option<usize>, name: &str, args: Vec<OsString>) -> Result<Proc, Failure> {
        let log = self.dir.path.join(format!("{name}.log"));
        let out = File::create(&log).map_err(failed)?;
        let err = out.try_clone().map_err(failed)?;
        let mut cmd = match self.ns_path(ns) {
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display())).arg("--").arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Ctrl-C reaches the demo only; it stops the rest in order.
            .process_group(0)
            .spawn()
            .map_err(|e| failed(format!("starting {name}: {e}")))?;
        Ok(Proc { name: name.to_string(), child, log, stopped: false })
    }

    fn scrape(&self, i: usize) -> Scrape {
        let Some((ns, addr)) = self.admins.get(i) else { return Scrape::default() };
        Scrape::parse(
            &http_get(self.ns_path(*ns).as_deref(), *addr, "/metrics").map(|r| r.1).unwrap_or_default(),
        )
    }

    fn wait_ready(&mut self, i: usize, stop: &Stop) -> Result<(), Failure> {
        let (ns, addr) = self.admins[i];
        let ns = self.ns_path(ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(dead) = self.nodes[i].exited() {
                return Err(failed(dead));
            }
            if http_get(ns.as_deref(), addr, "/ready").is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed(format!("{} was not ready within 60 s", self.nodes[i].name)));
            }
            if !stop.sleep(Duration::from_millis(100)) {
                return Err(failed("stopped"));
            }
        }
    }

    fn wait_port(
        &mut self,
        ns: Option<usize>,
        name: &str,
        addr: SocketAddr,
        stop: &Stop,
    ) -> Result<(), Failure> {
        let path = self.ns_path(ns);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(dead) = self.apps.last_mut().and_then(Proc::exited) {
                return Err(failed(dead));
            }
            if connect(path.as_deref(), addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline || !stop.sleep(Duration::from_millis(100)) {
                return Err(failed(format!("{name} did not listen on {addr}")));
            }
        }
    }

    fn snapshot(&self, started: Instant, duration: Option<Duration>) -> Snapshot {
        let read = |f: &str| -> std::collections::BTreeMap<String, apps::RouteSnapshot> {
            std::fs::read(self.dir.path.join("stats").join(f))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        };
        Snapshot {
            elapsed: started.elapsed(),
            duration,
            explicit: !self.layout.root,
            load: read("load.json"),
            frontend: read("frontend.json"),
            node_a: self.scrape(0),
            node_b: self.scrape(1),
        }
    }

    fn hints(&self) {
        say("Try it yourself while it runs:");
        let config = self.dir.path.join("mesh.yaml");
        match self.nets.first() {
            Some(a) => {
                say(&format!(
                    "  nsenter --net={} sh -c 'echo $$ > {}/cgroup.procs; exec curl -s http://{WEB}/shop/fig'",
                    a.path().display(),
                    self.cg("a/load").display()
                ));
                say(&format!(
                    "  nsenter --net={} curl -s http://127.0.0.1:15000/metrics | grep istio_requests_total",
                    a.path().display()
                ));
            }
            None => {
                say(&format!("  curl -s http://{WEB}/shop/fig"));
                if let Some((_, admin)) = self.admins.first() {
                    say(&format!("  curl -s http://{admin}/metrics | grep istio_requests_total"));
                }
            }
        }
        say(&format!("  config: {} (edits apply live)", config.display()));
    }

    fn show_logs(&self) {
        for p in self.nodes.iter().chain(&self.apps) {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            if !tail.is_empty() {
                eprintln!("--- last lines of {} ---", p.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn free_port() -> Result<SocketAddr, Failure> {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(failed)
}

/// The demo's mesh config.
fn config_text(l: &Layout, cg: &Path, ca: &Path, tracing: &str) -> String {
    let cg = cg.display();
    let [a, b] = l.ip;
    let mut t = String::from("# The Sluice demo mesh: three services.\n");
    if l.root {
        t.push_str(&format!(
            "nodes:\n  - {{name: node-a, address: {NODE_A}}}\n  - {{name: node-b, address: {NODE_B}}}\n\
             identity:\n  trust_domain: demo.local\n  cert_ttl: 1h\n  ca_dir: {}\n",
            ca.display()
        ));
    }
    let (node_a, node_b) = if l.root { (", node: node-a", ", node: node-b") } else { ("", "") };
    let cgroup = |w: &str| if l.root { format!(", cgroup: {cg}/{w}") } else { String::new() };
    let zero_hop =
        if l.root { "\n      - {port: 7000, target_port: 17000, protocol: tcp, zero_hop: true}" } else { "" };
    t.push_str(&format!(
        r#"services:
  - name: web
    namespace: shop
    service_account: frontend
    vips: [127.100.0.10]
    ports: [{{port: 8080, target_port: 18080, protocol: http1}}]
  - name: pricing
    namespace: shop
    vips: [127.100.0.20]
    ports:
      - {{port: 9090, target_port: 19090, protocol: grpc}}{zero_hop}
  - name: stock
    namespace: shop
    vips: [127.100.0.30]
    ports: [{{port: 8081, target_port: 18081, protocol: http1}}]
    outlier_detection: {{consecutive_failures: 5, ejection_time: 3s, max_ejection_percent: 50}}
endpoints:
  - {{service: web, address: {a}{node_a}{}}}
  - {{service: pricing, address: {a}{node_a}{}}}
  - {{service: pricing, address: {b}{node_b}{}}}
  - {{service: stock, address: {a}{node_a}, version: v1{}}}
  - {{service: stock, address: {b}{node_b}, version: v2{}}}
routes:
  - name: stock-retries
    service: stock
    timeout: 2s
    retries: {{attempts: 3, per_try_timeout: 500ms, on: [5xx, connect-failure, reset], budget_percent: 50, min_retries_per_second: 20}}
  - name: pricing-grpc
    service: pricing
    timeout: 1s
    retries: {{attempts: 2, on: [unavailable, connect-failure]}}
authorization:
  default: allow
  policies:
"#,
        cgroup("a/frontend"),
        cgroup("a/pricing"),
        cgroup("b/pricing"),
        cgroup("a/stock"),
        cgroup("b/stock"),
    ));
    if l.root {
        t.push_str(
            "    - {name: pricing-for-frontend, action: allow, services: [pricing], ports: [9090], from: [\"spiffe://demo.local/ns/shop/sa/frontend\"]}\n\
             \x20   - {name: exports-for-all, action: allow, services: [pricing], ports: [7000], from: [\"*\"]}\n",
        );
    }
    t.push_str("    - {name: no-admin, action: deny, services: [web], match: {path: {prefix: /admin}}}\n");
    t.push_str(&format!("telemetry:\n  tracing: {tracing}\n"));
    t
}

/// The checks a newcomer can read; false when one failed.
fn summary(s: &Snapshot) -> bool {
    let mut all = true;
    let mut check = |ok: bool, what: String| {
        all &= ok;
        say(&format!("{} {what}", if ok { "ok  " } else { "FAIL" }));
    };
    let route = |side: &std::collections::BTreeMap<String, apps::RouteSnapshot>, n: &str| {
        side.get(n).cloned().unwrap_or_default()
    };
    let node = if s.explicit { "the node" } else { "node-a" };
    let web = route(&s.load, "web");
    check(
        web.total > 0,
        format!(
            "shoppers: {} requests through {node} to the frontend, {} not answered 200",
            web.total, web.errors
        ),
    );
    let pricing = route(&s.frontend, "pricing");
    let on = |host: &str| pricing.by.iter().filter(|(k, _)| k.ends_with(host)).map(|(_, v)| v).sum::<u64>();
    if s.explicit {
        check(
            on("@local-1") > 0 && on("@local-2") > 0,
            format!(
                "load balancing: pricing answered {} calls on 127.0.0.1 and {} on 127.0.0.2",
                on("@local-1"),
                on("@local-2")
            ),
        );
    } else {
        let (hs_a, hs_b) = s.handshakes();
        check(
            on("@node-a") > 0 && on("@node-b") > 0 && hs_b > 0.0,
            format!(
                "across nodes: pricing answered {} calls on node-a and {} on node-b, reached over mutual TLS ({hs_a} handshakes by node-a, {hs_b} accepted by node-b)",
                on("@node-a"),
                on("@node-b")
            ),
        );
    }
    let stock = route(&s.frontend, "stock");
    check(
        s.retries() > 0.0,
        format!(
            "retries: {node} retried {} stock attempts; the frontend saw {} failures in {} stock calls",
            s.retries(),
            stock.errors,
            stock.total
        ),
    );
    if s.elapsed.as_secs() > OUTAGE_EVERY {
        check(
            s.ejections() > 0.0,
            format!("outlier detection: {} ejections of a failing stock endpoint", s.ejections()),
        );
    } else {
        say(&format!(
            "--   outlier detection: {} ejections (stock-v2's first outage comes after {} s)",
            s.ejections(),
            OUTAGE_EVERY - OUTAGE_FOR
        ));
    }
    let (admin, direct) = (route(&s.load, "web-admin"), route(&s.load, "pricing-direct"));
    if s.explicit {
        check(
            admin.total > 0 && admin.errors == 0 && s.denied() > 0.0,
            format!(
                "authorization: {} of {} GET /admin got 403; the node counted {} refusals",
                admin.total - admin.errors,
                admin.total,
                s.denied()
            ),
        );
        say("--   across nodes, workload identities and zero-hop: need root (sudo ./demo.sh)");
        return all;
    }
    check(
        admin.total > 0 && admin.errors == 0 && direct.total > 0 && direct.errors == 0 && s.denied() > 0.0,
        format!(
            "authorization: {} of {} GET /admin got 403, {} of {} pricing calls from the load (not the frontend) got PERMISSION_DENIED; nodes counted {} refusals",
            admin.total - admin.errors,
            admin.total,
            direct.total - direct.errors,
            direct.total,
            s.denied()
        ),
    );
    let export = route(&s.load, "export");
    let (up, _) = s.zero_hop_bytes();
    check(
        export.total > 0 && export.errors == 0 && up >= export.bytes as f64 && export.bytes > 0,
        format!(
            "zero-hop: {} TCP exports intact ({} bytes); the kernel counted {up} bytes on the zero-hop path, the proxy copied {}",
            export.total - export.errors,
            export.bytes,
            s.node_a.sum("sluice_path_bytes_total", &[("path", "proxy")])
        ),
    );
    all
}

fn print_trace(path: &Path) {
    match traces::read(path) {
        Ok(spans) => match traces::pick(&spans) {
            Some(t) => {
                let retried = t.iter().any(|s| s.attrs.contains_key("http.request.resend_count"));
                say(&format!(
                    "{} spans in {} (OTLP/JSON, one export per line); {}:",
                    spans.len(),
                    path.display(),
                    if retried { "a request that was retried" } else { "the largest trace" }
                ));
                println!();
                print!("{}", traces::tree(&t));
            }
            None => say(&format!("no spans in {}", path.display())),
        },
        Err(e) => say(&format!("cannot read {}: {e}", path.display())),
    }
}

fn step(title: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("\n\x1b[1m==> {title}\x1b[0m");
    } else {
        println!("\n==> {title}");
    }
}

fn say(s: &str) {
    println!("    {s}");
}

// ---------------------------------------------------------------------------
// Signals, processes, namespaces, cgroups

/// Set by SIGINT or SIGTERM.
#[derive(Clone)]
pub(crate) struct Stop(Arc<AtomicBool>);

impl Stop {
    fn install() -> Result<Self, Failure> {
        let flag = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(failed)?;
        let (mut int, mut term) = rt
            .block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
            })
            .map_err(failed)?;
        let f = Arc::clone(&flag);
        std::thread::spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            f.store(true, Relaxed);
        });
        Ok(Self(flag))
    }

    pub fn stopped(&self) -> bool {
        self.0.load(Relaxed)
    }

    /// Sleeps `d`; false when a stop came first.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopped() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())));
        }
        !self.stopped()
    }
}

/// A child process: SIGTERM on drop, SIGKILL if it lingers.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Proc {
    /// Some(reason) when it has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status}); log: {}", self.name, self.log.display())),
            _ => None,
        }
    }

    fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A network namespace with only loopback up; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Result<Self, Failure> {
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.to_string() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn veth_to(
        &self,
        peer: &Netns,
        here: &str,
        addr_here: &str,
        there: &str,
        addr_there: &str,
    ) -> Result<(), Failure> {
        ip(&[
            "-n", &self.name, "link", "add", here, "type", "veth", "peer", "name", there, "netns", &peer.name,
        ])?;
        ip(&["-n", &self.name, "addr", "add", addr_here, "dev", here])?;
        ip(&["-n", &peer.name, "addr", "add", addr_there, "dev", there])?;
        ip(&["-n", &self.name, "link", "set", here, "up"])?;
        ip(&["-n", &peer.name, "link", "set", there, "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

fn ip(args: &[&str]) -> Result<(), Failure> {
    let out =
        Command::new("ip").args(args).output().map_err(|e| failed(format!("running ip (iproute2): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Runs `f` on a thread inside the network namespace at `ns`: the sockets it
/// makes belong to that namespace for good.
fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> std::io::Result<T> + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(ns)?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
    })
}

/// A connection from inside a namespace (`None`: from here).
fn connect(ns: Option<&Path>, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    match ns {
        Some(ns) => in_netns(ns, || TcpStream::connect_timeout(&addr, timeout)),
        None => TcpStream::connect_timeout(&addr, timeout),
    }
}

/// A plain HTTP/1.0 GET: (status, body).
fn http_get(ns: Option<&Path>, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = connect(ns, addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// The demo's cgroups, removed deepest first on drop.
struct Cgroups {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Cgroups {
    fn make(&mut self, rel: &str) -> Result<(), Failure> {
        let p = if rel.is_empty() { self.root.clone() } else { self.root.join(rel) };
        std::fs::create_dir(&p).map_err(|e| failed(format!("creating the cgroup {}: {e}", p.display())))?;
        self.made.push(p);
        Ok(())
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for p in self.made.iter().rev() {
            for _ in 0..100 {
                if std::fs::remove_dir(p).is_ok() || !p.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The demo's folder (config, CA, logs, statistics); removed on drop.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(path: PathBuf) -> Result<Self, Failure> {
        std::fs::create_dir_all(&path).map_err(|e| failed(format!("creating {}: {e}", path.display())))?;
        Ok(Self { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        // The nodes have stopped by now: their instance locks and state files go too.
        let pid = std::process::id();
        for node in ["a", "b"] {
            let instance = format!("demo-{pid}-{node}");
            let _ =
                std::fs::remove_file(Path::new(sluice_redirector::RUN_DIR).join(format!("{instance}.lock")));
            let _ = std::fs::remove_file(crate::node::admin_state_path(&instance));
        }
    }
}

/// Where OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT points, when set.
struct OtlpTarget {
    shown: String,
    target: String,
    port: u16,
    path: String,
}

fn otlp_url() -> Option<String> {
    let env = |k| std::env::var(k).ok().filter(|v: &String| !v.trim().is_empty());
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The collector, and how to relay to it from the nodes' namespaces.
fn otlp_target() -> Result<Option<OtlpTarget>, Failure> {
    let Some(url) = otlp_url() else {
        return Ok(None);
    };
    let bad =
        |why: &str| Failure::new(exit::BAD_INPUT, format!("OTEL_EXPORTER_OTLP_ENDPOINT='{url}': {why}"));
    let rest = url
        .trim()
        .strip_prefix("http://")
        .ok_or_else(|| bad("the demo relays plain http:// (gRPC or HTTP/protobuf) into its namespaces; use e.g. http://127.0.0.1:4317"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let port = match hostport.rsplit_once(':') {
        Some((_, p)) => p.parse::<u16>().map_err(|_| bad("the port is not a number"))?,
        None => 80,
    };
    let target = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
    Ok(Some(OtlpTarget { shown: url.clone(), target, port, path }))
}

/// Forwards connections made in a namespace to `target`, reached from here:
/// the collector lives outside the nodes' namespaces.
struct Relay {
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(ns: &Netns, port: u16, target: &str) -> Result<Self, Failure> {
        let listener = in_netns(&ns.path(), || TcpListener::bind(("127.0.0.1", port)))
            .map_err(|e| failed(format!("relay for traces in {}: {e}", ns.name)))?;
        listener.set_nonblocking(true).map_err(failed)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, target) = (Arc::clone(&stop), target.to_string());
        std::thread::spawn(move || {
            while !flag.load(Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let target = target.clone();
                        std::thread::spawn(move || {
                            let _ = inside.set_nonblocking(false);
                            if let Ok(outside) = TcpStream::connect(&target) {
                                pipe(inside, outside);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(Self { stop })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else { return };
    let (mut a, mut b) = (a, b);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b, &mut a2);
    let _ = a2.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

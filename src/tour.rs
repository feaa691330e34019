//! `sluice tour`: a guided walk-through on this machine. It builds a tiny mesh
//! (two endpoints of one service, a mesh cgroup), sends a client's connection
//! through the kernel redirection and the proxy, shows the original destination
//! recovered and the counters that prove it, reloads the config, and cleans up
//! everything, also on Ctrl-C.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_bpf::abi::Stat;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

use crate::{
    Failure,
    cli::{DemoClientArgs, NodeArgs, TourArgs},
    exit,
    node::NodeHandle,
};

const VIP: &str = "127.100.0.10:9080";

pub(crate) fn run(args: TourArgs) -> Result<(), Failure> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::new(
            exit::UNSUPPORTED,
            "the demo attaches eBPF programs to a cgroup, which needs root: run `sudo sluice tour`",
        ));
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::new(exit::FAILED, e))?;
    runtime.block_on(async {
        let scratch = Scratch::new()?;
        tokio::select! {
            r = walk_through(&scratch, &args) => r,
            _ = tokio::signal::ctrl_c() => {
                println!("\nCtrl-C: cleaning up.");
                Ok(())
            }
        }
    })
    // `scratch` (cgroup, files) is removed here, after the node has stopped.
}

async fn walk_through(s: &Scratch, args: &TourArgs) -> Result<(), Failure> {
    step(1, "Is this host able to run Sluice?");
    let blockers: Vec<_> =
        sluice_redirector::probe::run().into_iter().filter(|r| r.blocks()).map(|r| r.what).collect();
    if !blockers.is_empty() {
        return Err(Failure::new(
            exit::UNSUPPORTED,
            format!("no: {} (see `sluice check`)", blockers.join(", ")),
        ));
    }
    say(
        "yes: cgroup connect4/connect6 and sock_ops programs load and pass the verifier (details: `sluice check`).",
    );

    step(2, "Two endpoints of a service called 'reviews', and a cgroup for the mesh's applications");
    let v1 = backend("reviews-v1").await?;
    let v2 = backend("reviews-v2").await?;
    say(&format!("reviews-v1 listens on {v1}, reviews-v2 on {v2}"));
    say(&format!("mesh cgroup: {}", s.cgroup.display()));

    step(3, "The mesh config: applications dial the service address, never the endpoints");
    let config = config_text(&[v1, v2]);
    std::fs::write(&s.config, &config).map_err(|e| Failure::new(exit::FAILED, e))?;
    for line in config.lines() {
        say(&format!("  {line}"));
    }

    step(4, "Start the node: attach the kernel programs to the cgroup, start the proxy");
    let node_args = NodeArgs {
        node_name: None,
        config: s.config.clone(),
        cgroup: Some(s.cgroup.clone()),
        explicit: false,
        instance: format!("demo-{}", std::process::id()),
        proxy_port: 0,
        watch_interval_ms: 100,
        drain_ms: 1000,
        workers: Some(2),
        worker_balance: crate::cli::WorkerBalance::Hash,
        fail_mode: crate::cli::FailModeArg::Open,
        liveness_timeout_ms: 500,
        takeover: false,
        policy_allow_uplink: false,
        admin_port: 0,
        detect_timeout_ms: 100,
        http_header_timeout_ms: 10_000,
        http_max_header_bytes: 32 * 1024,
        http_max_headers: 100,
        h2_max_concurrent_streams: 1024,
        h2_max_pending_resets: 100,
        splice: crate::cli::FastPath::Off,
        sk_msg: crate::cli::FastPath::Off,
        zero_hop: crate::cli::FastPath::Auto,
    };
    let mut node = NodeHandle::start(&node_args).await?;
    say(&format!(
        "proxy on {} and {}; programs pinned under {}",
        node.proxy4,
        node.proxy6,
        node.redirector.pin_dir().display()
    ));

    step(5, &format!("An application in the mesh cgroup connects to {VIP}"));
    for i in 1..=3 {
        let before = counters(&node);
        let out = client(&s.cgroup, VIP, &format!("hello #{i}")).await?;
        say(&out.replacen('\n', "  (the proxy)\n", 1));
        let after = counters(&node);
        say(&format!("    kernel: {}", delta(&before, &after)));
    }
    say("The client's socket was connected to the proxy, not to 127.100.0.10: connect4 rewrote it.");
    say("The proxy found the original destination (127.100.0.10:9080) in the sl_orig map by the");
    say("connection's 4-tuple, picked an endpoint round robin, and forwarded the bytes both ways.");
    let forwarded = node.proxy_stats.forwarded.load(std::sync::atomic::Ordering::Relaxed);
    say(&format!("    proxy: {forwarded} connections forwarded"));

    step(6, "A destination outside the mesh is left alone");
    let plain = backend("not-in-the-mesh").await?;
    let before = counters(&node);
    say(&client(&s.cgroup, &plain.to_string(), "hi").await?);
    say(&format!("    kernel: {}", delta(&before, &counters(&node))));

    step(7, "Hot reload: take reviews-v1 out of the config");
    std::fs::write(&s.config, config_text(&[v2])).map_err(|e| Failure::new(exit::FAILED, e))?;
    match node.poll_config() {
        Some(Ok(())) => say("config reloaded: new connections go to reviews-v2 only"),
        other => say(&format!("reload: {other:?}")),
    }
    for i in 4..=5 {
        say(&client(&s.cgroup, VIP, &format!("hello #{i}")).await?);
    }
    std::fs::write(&s.config, "services:\n  - name: reviews\n    vips: [127.100.0.10]\n    weight: 3\n")
        .map_err(|e| Failure::new(exit::FAILED, e))?;
    if let Some(Err(e)) = node.poll_config() {
        say("a broken config is refused, and the last good one keeps serving:");
        say(&format!("    {e}"));
    }
    say(&client(&s.cgroup, VIP, "still there?").await?);

    if args.keep_running {
        std::fs::write(&s.config, config_text(&[v1, v2])).map_err(|e| Failure::new(exit::FAILED, e))?;
        step(8, "The node keeps running; try it yourself, then press Ctrl-C");
        say(&format!("  sudo sh -c 'echo $$ > {}/cgroup.procs; exec bash'", s.cgroup.display()));
        say(&format!("  then, in that shell: echo hi | nc -q1 {} {}", "127.100.0.10", 9080));
        say(&format!("  config: {} (edits apply live)", s.config.display()));
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            node.poll_config();
        }
    }

    step(8, "Stop: detach the programs, remove the pins and the cgroup");
    let pin_dir = node.redirector.pin_dir().to_path_buf();
    node.stop().await;
    say(&format!(
        "pins left at {}: {}",
        pin_dir.display(),
        if pin_dir.exists() { "YES (bug)" } else { "none" }
    ));
    say("Done. Next: `sluice check`, `sluice config validate examples/mesh.yaml`, `sluice node --help`.");
    Ok(())
}

fn step(n: u32, title: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("\n\x1b[1m==> {n}. {title}\x1b[0m");
    } else {
        println!("\n==> {n}. {title}");
    }
}

fn say(s: &str) {
    println!("    {s}");
}

fn config_text(endpoints: &[SocketAddr]) -> String {
    let mut t = String::from(
        "services:\n  - name: reviews\n    vips: [127.100.0.10]\n    ports: [{port: 9080}]\nendpoints:\n",
    );
    for e in endpoints {
        t.push_str(&format!("  - {{service: reviews, address: {}, port: {}}}\n", e.ip(), e.port()));
    }
    t
}

fn counters(node: &NodeHandle) -> Vec<(Stat, u64)> {
    node.kernel_stats().all()
}

fn delta(before: &[(Stat, u64)], after: &[(Stat, u64)]) -> String {
    let moved: Vec<String> = before
        .iter()
        .zip(after)
        .filter(|((_, b), (_, a))| a != b)
        .map(|((s, b), (_, a))| format!("{} +{}", s.name(), a - b))
        .collect();
    if moved.is_empty() { "no counter moved".into() } else { moved.join(", ") }
}

/// A demo endpoint: answers one line with its name and address.
async fn backend(name: &'static str) -> Result<SocketAddr, Failure> {
    let l = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Failure::new(exit::FAILED, e))?;
    let addr = l.local_addr().map_err(|e| Failure::new(exit::FAILED, e))?;
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut line = String::new();
                let _ = BufReader::new(r).read_line(&mut line).await;
                let reply = format!("{name} ({addr}) got {:?} from {peer}\n", line.trim_end());
                let _ = w.write_all(reply.as_bytes()).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Runs `sluice demo-client` in the mesh cgroup and returns what it printed.
async fn client(cgroup: &Path, addr: &str, message: &str) -> Result<String, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::new(exit::FAILED, e))?;
    let out = tokio::process::Command::new(exe)
        .args(["demo-client", "--cgroup"])
        .arg(cgroup)
        .args([addr, message])
        .output()
        .await
        .map_err(|e| Failure::new(exit::FAILED, e))?;
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Ok(format!("client failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// `sluice demo-client`: join the cgroup, connect, send a line, print the reply.
pub(crate) fn client_main(args: DemoClientArgs) -> Result<(), Failure> {
    std::fs::write(args.cgroup.join("cgroup.procs"), "0")
        .map_err(|e| Failure::new(exit::FAILED, format!("joining {}: {e}", args.cgroup.display())))?;
    let mut s = TcpStream::connect(&args.addr)
        .map_err(|e| Failure::new(exit::FAILED, format!("connecting to {}: {e}", args.addr)))?;
    let io = |e: std::io::Error| Failure::new(exit::FAILED, e);
    println!("app dialed {}; its socket is connected to {}", args.addr, s.peer_addr().map_err(io)?);
    s.write_all(format!("{}\n", args.message).as_bytes()).map_err(io)?;
    s.shutdown(Shutdown::Write).map_err(io)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(io)?;
    print!("    reply: {reply}");
    Ok(())
}

/// The demo's cgroup and files, removed on drop (after the node stopped).
struct Scratch {
    cgroup: PathBuf,
    dir: PathBuf,
    config: PathBuf,
}

impl Scratch {
    fn new() -> Result<Self, Failure> {
        let root = sluice_redirector::mounts::cgroup2_mount()?;
        let cgroup = root.join(format!("sluice-demo-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup)
            .map_err(|e| Failure::new(exit::FAILED, format!("creating {}: {e}", cgroup.display())))?;
        let dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Failure::new(exit::FAILED, e))?;
        let config = dir.join("mesh.yaml");
        Ok(Self { cgroup, dir, config })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let root = self.cgroup.parent().map(Path::to_path_buf).unwrap_or_default();
        if let Ok(procs) = std::fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The node has stopped (or was dropped) by now: its instance lock is free.
        let _ = std::fs::remove_file(
            Path::new(sluice_redirector::RUN_DIR).join(format!("demo-{}.lock", std::process::id())),
        );
        let _ = std::fs::remove_file(crate::node::admin_state_path(&format!("demo-{}", std::process::id())));
    }
}

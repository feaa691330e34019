//! Proxy workers picked by sk_reuseport, draining, restarts that refuse
//! nothing, and what happens to connects when the proxy dies (kill -9).

#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sluice_integration::{
    CgroupGuard, EchoServer, Node, client,
    node::{NodeOpts, Sig, attached_programs},
    privileged,
    process::{ChildGuard, Held, client_count, http_process},
    wait_for,
};

fn config_for(vip: SocketAddr, endpoint: SocketAddr) -> String {
    format!(
        "services:\n  - name: svc\n    vips: [\"{}\"]\n    ports: [{{port: {}}}]\nendpoints:\n  - {{service: svc, address: \"{}\", port: {}}}\n",
        vip.ip(),
        vip.port(),
        endpoint.ip(),
        endpoint.port()
    )
}

fn start(test: &str, cg: &CgroupGuard, config: &str, args: &[&str]) -> Node {
    Node::start(NodeOpts { test, config, cgroup: cg.path(), netns: None, node_in_cgroup: false, args })
}

#[test]
fn flow_hash_spreads_new_connections_over_the_workers() {
    if !privileged("flow_hash_spreads_new_connections_over_the_workers") {
        return;
    }
    let cg = CgroupGuard::new("spread");
    let echo = EchoServer::start("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.40:80".parse().unwrap();
    let node = start("spread", &cg, &config_for(vip, echo.addr), &["--workers", "2"]);
    const N: usize = 400;
    client_count(cg.path(), vip, N).unwrap();
    let w = node.workers();
    assert_eq!(w.len(), 2, "{w:?}");
    let selected: Vec<u64> = w.iter().map(|x| x.3).collect();
    assert_eq!(
        selected.iter().sum::<u64>(),
        N as u64,
        "the kernel chose a worker for every connection: {w:?}"
    );
    // Binomial(400, 1/2): mean 200, sd 10. Five sd either way.
    for s in &selected {
        assert!((150..=250).contains(s), "uneven spread {selected:?}");
    }
    let stats = node.kernel_stats();
    assert_eq!(stats["worker_selected"], N as u64);
    assert_eq!(stats["worker_fallback"], 0);
    // The same from /metrics.
    let from_metrics: f64 =
        (0..2).filter_map(|s| node.metric(&format!("sluice_worker_connections_total{{slot=\"{s}\"}}"))).sum();
    assert_eq!(from_metrics, N as f64);
}

#[test]
fn least_loaded_balances_open_connections() {
    if !privileged("least_loaded_balances_open_connections") {
        return;
    }
    let cg = CgroupGuard::new("leastload");
    let echo = EchoServer::start("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.41:80".parse().unwrap();
    let node = start(
        "leastload",
        &cg,
        &config_for(vip, echo.addr),
        &["--workers", "2", "--worker-balance", "least-loaded"],
    );
    let mut held = Vec::new();
    for k in 1..=6u32 {
        held.push(Held::open(cg.path(), vip));
        // The next connect must see this one counted.
        wait_for("the worker to count the connection", Duration::from_secs(5), || {
            (node.workers().iter().map(|w| w.2).sum::<u32>() == k).then_some(())
        });
    }
    let open: Vec<u32> = node.workers().iter().map(|w| w.2).collect();
    assert_eq!(open, [3, 3], "least-loaded keeps the workers even");
    for h in held {
        assert!(h.release());
    }
    wait_for("the loads to drop", Duration::from_secs(5), || {
        node.workers().iter().all(|w| w.2 == 0).then_some(())
    });
}

#[test]
fn a_draining_worker_gets_no_new_connections() {
    if !privileged("a_draining_worker_gets_no_new_connections") {
        return;
    }
    let cg = CgroupGuard::new("drainslot");
    let echo = EchoServer::start("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.42:80".parse().unwrap();
    let node = start("drainslot", &cg, &config_for(vip, echo.addr), &["--workers", "2"]);
    // Mark slot 0 draining in the kernel map, as a node does when it stops.
    let map = node.pin_dir().join("sl_wstate");
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&map)
        .args(["key", "0", "0", "0", "0", "value", "2", "0", "0", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    client_count(cg.path(), vip, 100).unwrap();
    let w = node.workers();
    assert_eq!(w[0].1, "draining");
    assert_eq!((w[0].3, w[1].3), (0, 100), "every new connection went to the active worker: {w:?}");
}

/// wrk in the mesh cgroup; returns its output once it ends.
fn wrk(cg: &CgroupGuard, url: &str, secs: u32, close: bool) -> ChildGuard {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("echo $$ > \"$0\" && exec \"$@\"").arg(cg.path().join("cgroup.procs")).args([
        "wrk",
        "-t2",
        "-c16",
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    ChildGuard(
        cmd.arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk (apt-get install wrk)"),
    )
}

fn wrk_output(mut g: ChildGuard) -> String {
    let child = std::mem::replace(&mut g.0, Command::new("true").spawn().unwrap());
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Requests wrk completed; panics on any error or non-2xx response.
fn assert_wrk_clean(out: &str) -> u64 {
    assert!(!out.contains("Socket errors"), "wrk saw failures:\n{out}");
    assert!(!out.contains("Non-2xx"), "wrk saw failed responses:\n{out}");
    let line =
        out.lines().find(|l| l.contains("requests in")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

fn restart_under_load(test: &str, vip: &str, close: bool) {
    let cg = CgroupGuard::new(test);
    let (_backend, backend) = http_process("127.0.0.1:0");
    let vip: SocketAddr = vip.parse().unwrap();
    let config = config_for(vip, backend);
    // Long enough for every keep-alive connection of the old node to outlive the test.
    let args = ["--workers", "2", "--drain-ms", "20000"];
    let mut old = start(test, &cg, &config, &args);
    let load = wrk(&cg, &format!("http://{vip}/"), 5, close);
    std::thread::sleep(Duration::from_millis(1500));
    let mut takeover_args = args.to_vec();
    takeover_args.push("--takeover");
    let new = start(test, &cg, &config, &takeover_args);
    assert_eq!(new.proxy4, old.proxy4, "the new node listens on the same port");
    let out = wrk_output(load);
    let status = old.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "the old node: {status}\n{}", old.log());
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        let answered = |log: String| {
            log.lines()
                .filter(|l| l.contains("answered by the proxy") || l.contains("WARN"))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "wrk saw failures:\n{out}\nold node:\n{}\nnew node:\n{}",
            answered(old.log()),
            answered(new.log())
        );
    }
    let requests = assert_wrk_clean(&out);
    assert!(requests > 100, "{out}");
    // The new node owns the kernel state now and keeps serving.
    assert_eq!(attached_programs(cg.path()).len(), 5);
    wait_for("the new node to own the instance", Duration::from_secs(5), || {
        new.log().contains("owns the instance now").then_some(())
    });
    let w = new.workers();
    assert_eq!(w.iter().filter(|w| w.1 == "active").count(), 2, "{w:?}");
    assert!(w.iter().all(|w| w.1 != "draining"), "the old node's slots are free again: {w:?}");
    assert!(old.log().contains("handed over"), "{}", old.log());
    eprintln!("{test}: {requests} requests, none failed, across the takeover\n{out}");
}

#[test]
fn takeover_under_load_new_connections_refuses_nothing() {
    if !privileged("takeover_under_load_new_connections_refuses_nothing") {
        return;
    }
    restart_under_load("takeoverclose", "127.100.0.43:80", true);
}

#[test]
fn takeover_under_load_keepalive_refuses_nothing() {
    if !privileged("takeover_under_load_keepalive_refuses_nothing") {
        return;
    }
    restart_under_load("takeoverka", "127.100.0.44:80", false);
}

/// kill -9 the node; returns the time until connects follow the fail mode.
fn kill_and_probe(test: &str, mode: &str) -> (Node, EchoServer, EchoServer, CgroupGuard, Duration) {
    let cg = CgroupGuard::new(test);
    let endpoint = EchoServer::start("127.0.0.1:0");
    // Something listens on the service address itself: where fail-open goes.
    let original = EchoServer::start(if mode == "open" { "127.100.0.45:0" } else { "127.100.0.46:0" });
    let mut node = start(
        test,
        &cg,
        &config_for(original.addr, endpoint.addr),
        &["--fail-mode", mode, "--liveness-timeout-ms", "300"],
    );
    assert!(client(Some(cg.path()), None, original.addr, 10, 10).unwrap().intact());
    assert_eq!((endpoint.connections(), original.connections()), (1, 0), "while alive: through the proxy");
    let killed = Instant::now();
    node.stop_with(Sig::SIGKILL);
    wait_for("the heartbeat to go stale", Duration::from_secs(5), || {
        node.status().contains("DOWN").then_some(())
    });
    let stale = killed.elapsed();
    (node, endpoint, original, cg, stale)
}

#[test]
fn kill_9_with_fail_open_sends_connections_to_their_original_destination() {
    if !privileged("kill_9_with_fail_open_sends_connections_to_their_original_destination") {
        return;
    }
    let (node, endpoint, original, cg, stale) = kill_and_probe("failopen", "open");
    let r = client(Some(cg.path()), None, original.addr, 1000, 100).unwrap();
    assert!(r.intact());
    assert_eq!(r.peer, original.addr.to_string(), "went straight to where it was going");
    assert_eq!((endpoint.connections(), original.connections()), (1, 1));
    assert_eq!(node.kernel_stats()["proxy_down_fail_open"], 1);
    eprintln!("fail-open: heartbeat stale {stale:?} after kill -9");
}

#[test]
fn kill_9_with_fail_closed_refuses_at_once() {
    if !privileged("kill_9_with_fail_closed_refuses_at_once") {
        return;
    }
    let (node, endpoint, original, cg, stale) = kill_and_probe("failclosed", "closed");
    let started = Instant::now();
    let err = client(Some(cg.path()), None, original.addr, 10, 10).unwrap_err();
    assert!(err.contains("Connection refused"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "a refusal, not a hang");
    assert_eq!((endpoint.connections(), original.connections()), (1, 0), "nothing got through");
    assert_eq!(node.kernel_stats()["proxy_down_fail_closed"], 1);
    eprintln!("fail-closed: heartbeat stale {stale:?} after kill -9");
}

#[test]
fn a_second_node_of_the_same_instance_is_refused_without_takeover() {
    if !privileged("a_second_node_of_the_same_instance_is_refused_without_takeover") {
        return;
    }
    let cg = CgroupGuard::new("busy");
    let echo = EchoServer::start("127.0.0.1:0");
    let node = start("busy", &cg, &config_for("127.100.0.47:80".parse().unwrap(), echo.addr), &[]);
    let config = node.config_path();
    let out = Command::new(sluice_integration::target_bin("sluice"))
        .args(["node", "--config"])
        .arg(&config)
        .arg("--cgroup")
        .arg(cg.path())
        .args(["--instance", &node.instance, "--proxy-port", "0", "--admin-port", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is running") && err.contains("--takeover"), "{err}");
    // The running node is untouched.
    assert_eq!(attached_programs(cg.path()).len(), 5);
    assert!(node.status().contains("proxy: up"));
}

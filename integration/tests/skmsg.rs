//! The sk_msg fast path for local app <-> proxy <-> endpoint pairs. Its
//! self-test decides at start-up; on this machine's kernel (6.18) it fails
//! (an answer after a half-close never reaches a reader that was already
//! blocked), so the path stays off. The tests prove: the self-test's
//! verdict is obeyed either way (intact data when on, the plain path when
//! off), the path is really taken when forced on for traffic without
//! half-closes (benchmark mode), and the fallbacks.

#![allow(clippy::unwrap_used)]

use sluice_integration::{
    CgroupGuard, Node,
    l7::curl,
    node::NodeOpts,
    privileged,
    process::{echo_in_cgroup, hello_process},
};

fn node(test: &str, cg: &CgroupGuard, config: &str, args: &[&str]) -> Node {
    Node::start(NodeOpts { test, config, cgroup: cg.path(), netns: None, node_in_cgroup: true, args })
}

fn tcp_config(vip: &str, port: u16) -> String {
    format!(
        "services:\n  - {{name: bulk, vips: [{vip}], ports: [{{port: 7, protocol: tcp}}]}}\nendpoints:\n  - {{service: bulk, address: 127.0.0.1, port: {port}}}\n"
    )
}

fn clients(cg: &CgroupGuard, addr: &str, args: &[&str], bytes: &str) -> String {
    let out = std::process::Command::new(sluice_integration::target_bin("sluice-testkit"))
        .arg("client")
        .arg("--cgroup")
        .arg(cg.path())
        .args(args)
        .arg(addr)
        .arg(bytes)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(out: &str, k: &str) -> f64 {
    out.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().parse().unwrap()
}

#[test]
fn sk_msg_runs_only_if_its_self_test_passes() {
    if !privileged("sk_msg_runs_only_if_its_self_test_passes") {
        return;
    }
    let cg = CgroupGuard::new("skmsgauto");
    let (_echo, echo) = echo_in_cgroup(cg.path(), "127.0.0.1:0");
    let n = node("skmsgauto", &cg, &tcp_config("127.100.2.30", echo.port()), &["--sk-msg", "auto"]);
    let log = n.log();
    let on = n.metric("sluice_fast_path_enabled{path=\"sk_msg\"}") == Some(1.0);
    let metric =
        |c: &str| n.metric(&format!("sluice_sk_msg_kernel_total{{counter=\"{c}\"}}")).unwrap_or(-1.0);
    // 100 connections at once, 10 MiB each way, random write sizes, half-closes: intact either way.
    let out = clients(
        &cg,
        "127.100.2.30:7",
        &["--parallel", "--count", "100", "--chunk", "1", "--timeout-ms", "60000"],
        "10485760",
    );
    eprintln!("sk_msg {}, 100 x 10 MiB: {out}", if on { "on" } else { "off" });
    assert_eq!(
        (count(&out, "intact="), count(&out, "broken="), count(&out, "failed=")),
        (100.0, 0.0, 0.0),
        "{out}"
    );
    if on {
        assert!(
            log.contains("fast path on: sk_msg for local app <-> proxy pairs; self-test passed"),
            "{log}"
        );
        assert!(metric("redirected_bytes") >= 4.0 * 100.0 * 10_485_760.0);
    } else {
        // The self-test names what failed; nothing joined the map, so every
        // byte took loopback TCP.
        assert!(
            log.contains("fast path off: sk_msg for local app <-> proxy pairs; self-test failed"),
            "{log}"
        );
        assert!(log.contains("half-close") || log.contains("intact") || log.contains("order"), "{log}");
        assert_eq!(metric("joined_sockets"), 0.0);
    }
}

#[test]
fn sk_msg_really_carries_http_when_forced_on() {
    if !privileged("sk_msg_really_carries_http_when_forced_on") {
        return;
    }
    let cg = CgroupGuard::new("skmsghttp");
    let (_hello, hello) = hello_process("127.0.0.1:0");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.2.31], ports: [{{port: 80}}]}}\nendpoints:\n  - {{service: web, address: 127.0.0.1, port: {}}}\n",
        hello.port()
    );
    let n = node("skmsghttp", &cg, &config, &["--sk-msg", "unsafe-no-self-test"]);
    assert!(n.log().contains("self-test SKIPPED"), "{}", n.log());
    let metric =
        |c: &str| n.metric(&format!("sluice_sk_msg_kernel_total{{counter=\"{c}\"}}")).unwrap_or(-1.0);
    for i in 0..20 {
        let r = curl(cg.path(), &[&format!("http://127.100.2.31/x{i}")]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("hello") || !r.body.is_empty());
    }
    // Detection peeked at bytes that arrived through the map.
    assert_eq!(n.metric("sluice_protocol_detected_total{protocol=\"http1\"}"), Some(20.0));
    // Both ends of each curl <-> proxy pair joined (sock_ops: the node is in
    // the cgroup), and requests and responses went through the program.
    assert!(metric("joined_sockets") >= 40.0, "{}", metric("joined_sockets"));
    assert!(metric("redirected_sends") >= 40.0, "{}", metric("redirected_sends"));
    // The one pooled connection to the backend (outside the cgroup) has no
    // peer in the map: it took TCP from its first send, and stays there.
    assert_eq!(metric("no_peer_sends"), 1.0);
}

#[test]
fn failed_sk_msg_self_test_leaves_loopback_tcp() {
    if !privileged("failed_sk_msg_self_test_leaves_loopback_tcp") {
        return;
    }
    let cg = CgroupGuard::new("skmsgfail");
    let (_echo, echo) = echo_in_cgroup(cg.path(), "127.0.0.1:0");
    let n = node("skmsgfail", &cg, &tcp_config("127.100.2.32", echo.port()), &["--sk-msg", "fail-self-test"]);
    assert!(
        n.log().contains(
            "fast path off: sk_msg for local app <-> proxy pairs; self-test failed: failed on purpose"
        ),
        "{}",
        n.log()
    );
    assert_eq!(n.metric("sluice_fast_path_enabled{path=\"sk_msg\"}"), Some(0.0));
    let out = clients(&cg, "127.100.2.32:7", &["--chunk", "1"], "1048576");
    let f = |k: &str| out.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().to_string();
    assert_eq!(f("sent="), f("received="), "{out}");
    assert_eq!(f("sent_sha="), f("received_sha="), "{out}");
    // Nothing joined the map: sock_ops leaves sockets alone while the path is off.
    assert_eq!(n.metric("sluice_sk_msg_kernel_total{counter=\"joined_sockets\"}"), Some(0.0));
}

#[test]
fn splice_and_sk_msg_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(&cfg, "services: []\n").unwrap();
    let out = std::process::Command::new(sluice_integration::target_bin("sluice"))
        .args(["node", "--config"])
        .arg(&cfg)
        .args(["--cgroup", "/nonexistent", "--splice", "auto", "--sk-msg", "auto"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--splice and --sk-msg cannot both be on"), "{err}");
}

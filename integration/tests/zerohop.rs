//! Zero-hop L4: the kernel connects applications straight to an endpoint of
//! the service; the proxy never sees the connection, and getpeername shows the
//! service address the application dialed.

#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use sluice_integration::{
    CgroupGuard, EchoServer, Node, client,
    node::{NodeOpts, Sig},
    privileged,
    process::{client_count, client_timeout},
    wait_for,
};

fn config(vip: SocketAddr, endpoints: &[&EchoServer]) -> String {
    let mut c = format!(
        "services:\n  - name: db\n    vips: [\"{}\"]\n    ports: [{{port: {}, zero_hop: true}}]\nendpoints:\n",
        vip.ip(),
        vip.port()
    );
    for e in endpoints {
        c.push_str(&format!("  - {{service: db, address: \"{}\", port: {}}}\n", e.addr.ip(), e.addr.port()));
    }
    c
}

fn start(test: &str, cg: &CgroupGuard, config: &str, args: &[&str]) -> Node {
    Node::start(NodeOpts { test, config, cgroup: cg.path(), netns: None, node_in_cgroup: false, args })
}

#[test]
fn zero_hop_goes_straight_to_an_endpoint_and_getpeername_shows_the_vip() {
    if !privileged("zero_hop_goes_straight_to_an_endpoint_and_getpeername_shows_the_vip") {
        return;
    }
    let cg = CgroupGuard::new("zerohop");
    let (a, b) = (EchoServer::start("127.0.0.1:0"), EchoServer::start("127.0.0.1:0"));
    let vip: SocketAddr = "127.100.0.80:5432".parse().unwrap();
    let node = start("zerohop", &cg, &config(vip, &[&a, &b]), &[]);

    let r = client(Some(cg.path()), None, vip, 1 << 20, 16 * 1024).unwrap();
    assert!(r.intact(), "{r:?}");
    assert_eq!(r.peer, vip.to_string(), "getpeername shows what the application dialed");
    client_count(cg.path(), vip, 40).unwrap();
    assert_eq!(a.connections() + b.connections(), 41);
    assert!(
        a.connections() > 0 && b.connections() > 0,
        "spread over both endpoints: {} / {}",
        a.connections(),
        b.connections()
    );
    let stats = node.kernel_stats();
    // 41, plus the start-up self-test's own connection (to a service of its own).
    assert_eq!(stats["zero_hop_connect"], 42, "{stats:?}");
    assert!(
        node.log().contains("fast path on: zero-hop L4 (1 service ports ask for it); self-test passed"),
        "{}",
        node.log()
    );
    assert_eq!(node.metric("sluice_fast_path_enabled{path=\"zero_hop\"}"), Some(1.0));
    // Their bytes, counted by sock_ops when each socket closed, in `sluice status`.
    let row = wait_for("zero-hop bytes in sluice status", Duration::from_secs(5), || {
        let st = node.status();
        let row = st.lines().find(|l| l.trim_start().starts_with("zero-hop "))?.to_string();
        let up: u64 = row.split_whitespace().nth(3)?.parse().ok()?;
        (up >= 1 << 20).then_some(row)
    });
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "yes", "{row}");
    assert_eq!(cols[3], cols[4], "an echo: as many bytes back as sent: {row}");
    assert_eq!(stats["redirect_connect4"], 0, "nothing went to the proxy: {stats:?}");
    assert!(stats["zero_hop_getpeername"] >= 41, "{stats:?}");
    assert_eq!(node.metric("sluice_proxy_connections_total{outcome=\"accepted\"}"), Some(0.0));
}

#[test]
fn a_reload_moves_zero_hop_connections_between_endpoints() {
    if !privileged("a_reload_moves_zero_hop_connections_between_endpoints") {
        return;
    }
    let cg = CgroupGuard::new("zhreload");
    let (a, b) = (EchoServer::start("127.0.0.1:0"), EchoServer::start("127.0.0.1:0"));
    let vip: SocketAddr = "127.100.0.81:5432".parse().unwrap();
    let node = start("zhreload", &cg, &config(vip, &[&a]), &[]);
    client_count(cg.path(), vip, 5).unwrap();
    assert_eq!((a.connections(), b.connections()), (5, 0));
    // Twice, so both generations of the endpoint table are used.
    for (to, other) in [(&b, &a), (&a, &b)] {
        node.write_config(&config(vip, &[to]));
        let before = other.connections();
        wait_for("the reload", Duration::from_secs(10), || {
            let n = to.connections();
            client_count(cg.path(), vip, 1).unwrap();
            (to.connections() > n).then_some(())
        });
        let other_now = other.connections();
        client_count(cg.path(), vip, 10).unwrap();
        assert_eq!(other.connections(), other_now, "nothing to the removed endpoint after the reload");
        assert!(other_now - before <= 100);
    }
}

#[test]
fn zero_hop_needs_no_proxy_even_fail_closed() {
    if !privileged("zero_hop_needs_no_proxy_even_fail_closed") {
        return;
    }
    let cg = CgroupGuard::new("zhdead");
    let a = EchoServer::start("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.82:5432".parse().unwrap();
    let mut node =
        start("zhdead", &cg, &config(vip, &[&a]), &["--fail-mode", "closed", "--liveness-timeout-ms", "300"]);
    node.stop_with(Sig::SIGKILL);
    wait_for("the heartbeat to go stale", Duration::from_secs(5), || {
        node.status().contains("DOWN").then_some(())
    });
    let r = client(Some(cg.path()), None, vip, 1000, 100).unwrap();
    assert!(r.intact());
    assert_eq!(r.peer, vip.to_string());
    assert_eq!(node.kernel_stats()["proxy_down_fail_closed"], 0);
}

#[test]
fn zero_hop_that_fails_its_self_test_goes_through_the_proxy() {
    if !privileged("zero_hop_that_fails_its_self_test_goes_through_the_proxy") {
        return;
    }
    let cg = CgroupGuard::new("zerohopfail");
    let a = EchoServer::start("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.82:5432".parse().unwrap();
    let node = start("zerohopfail", &cg, &config(vip, &[&a]), &["--zero-hop", "fail-self-test"]);
    assert!(
        node.log().contains("fast path off: zero-hop L4; self-test failed: failed on purpose"),
        "{}",
        node.log()
    );
    assert_eq!(node.metric("sluice_fast_path_enabled{path=\"zero_hop\"}"), Some(0.0));
    // The service still works, through the proxy.
    let r = client(Some(cg.path()), None, vip, 100_000, 1000).unwrap();
    assert!(r.intact(), "{r:?}");
    let stats = node.kernel_stats();
    assert_eq!(stats["zero_hop_connect"], 0, "{stats:?}");
    assert_eq!(stats["redirect_connect4"], 1, "{stats:?}");
    assert_eq!(node.metric("sluice_proxy_connections_total{outcome=\"forwarded\"}"), Some(1.0));
    // A reload keeps it off.
    let mut changed = config(vip, &[&a]);
    changed = changed.replacen(
        "services:\n",
        "services:\n  - {name: other, vips: [127.100.0.83], ports: [{port: 1}]}\n",
        1,
    );
    node.write_config(&changed);
    wait_for("the reload", Duration::from_secs(5), || node.log().contains("config reloaded").then_some(()));
    client_count(cg.path(), vip, 3).unwrap();
    assert_eq!(node.kernel_stats()["zero_hop_connect"], 0);
}

/// Zero-hop connections never reach the proxy, so authorization for them is
/// decided in connect4/6: a workload the policy allows connects, another
/// workload of the same mesh gets ECONNREFUSED from connect() itself.
#[test]
fn zero_hop_authorization_is_decided_in_the_kernel() {
    if !privileged("zero_hop_authorization_is_decided_in_the_kernel") {
        return;
    }
    let cg = CgroupGuard::new("zhauthz");
    let (fe_cg, other_cg) = (cg.child("frontend"), cg.child("other"));
    let (fe, other) = (fe_cg.path().to_path_buf(), other_cg.path().to_path_buf());
    let echo = EchoServer::start("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.81:5432".parse().unwrap();
    let config = format!(
        "{}  - {{service: frontend, address: 127.0.0.1, port: 1, cgroup: {}}}
  - name: frontend
authorization:
  policies:
    - {{name: fe-db, action: allow, services: [db], from: [\"spiffe://cluster.local/ns/default/sa/frontend\"]}}
",
        config(vip, &[&echo]),
        fe.display()
    )
    .replace(
        "  - name: frontend\n",
        "",
    )
    .replace("endpoints:\n", "  - {name: frontend, vips: [127.100.0.82], ports: [{port: 80}]}\nendpoints:\n");
    let node = start("zhauthz", &cg, &config, &[]);
    assert!(node.log().contains("self-test passed"), "{}", node.log());

    let r = client(Some(&fe), None, vip, 100_000, 16 * 1024).unwrap();
    assert!(r.intact(), "{r:?}");
    let err = client_timeout(Some(&other), None, vip, 1000, 1000, 3000).unwrap_err();
    assert!(err.contains("Connection refused"), "refused by connect4: {err}");
    assert_eq!(echo.connections(), 1, "the refused connect never reached the endpoint");
    let stats = node.kernel_stats();
    assert_eq!(stats["zero_hop_denied"], 1, "{stats:?}");
    assert_eq!(node.metric("sluice_authz_denied_total{protocol=\"tcp\",origin=\"kernel\"}"), Some(1.0));
    // A cgroup created inside the workload's later is the same workload: the
    // node's periodic rescan tells the kernel within about a second.
    let late = fe_cg.child("late");
    wait_for("the kernel to learn the new cgroup", Duration::from_secs(5), || {
        client_timeout(Some(late.path()), None, vip, 1000, 1000, 3000).ok().filter(|r| r.intact())
    });
    drop(late);
    // A reload that allows everyone lifts the refusal at once.
    node.write_config(
        &config.replace("from: [\"spiffe://cluster.local/ns/default/sa/frontend\"]", "from: [\"*\"]"),
    );
    wait_for("the reload", Duration::from_secs(10), || {
        client_timeout(Some(&other), None, vip, 1000, 1000, 3000).ok().filter(|r| r.intact())
    });
}

//! End to end, as root: applications in a throwaway cgroup dial service
//! addresses; the kernel sends them to `sluice node`, which recovers the original
//! destination and forwards to an endpoint.

#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use sluice_integration::{
    CgroupGuard, EchoServer, NetnsGuard, Node, client,
    node::{NodeOpts, Sig, attached_programs},
    privileged,
    process::echo_process,
    wait_for,
};

const MIB: usize = 1024 * 1024;

fn config_for(vip: &str, port: u16, endpoint: SocketAddr) -> String {
    format!(
        "services:\n  - name: echo\n    vips: [\"{vip}\"]\n    ports:\n      - port: {port}\n        target_port: {}\nendpoints:\n  - service: echo\n    address: \"{}\"\n",
        endpoint.port(),
        endpoint.ip()
    )
}

fn start(test: &str, cg: &CgroupGuard, config: &str) -> Node {
    Node::start(NodeOpts { test, config, cgroup: cg.path(), netns: None, node_in_cgroup: false, args: &[] })
}

#[test]
fn ipv4_vip_round_trips_one_byte_and_one_mib() {
    if !privileged("ipv4_vip_round_trips_one_byte_and_one_mib") {
        return;
    }
    let cg = CgroupGuard::new("ipv4");
    let echo = EchoServer::start("127.0.0.1:0");
    let node = start("ipv4", &cg, &config_for("127.100.0.10", 8080, echo.addr));
    let vip: SocketAddr = "127.100.0.10:8080".parse().unwrap();

    for (bytes, chunk) in [(1, 1), (MIB, 16 * 1024), (MIB, 1000), (0, 1)] {
        let r = client(Some(cg.path()), None, vip, bytes, chunk)
            .unwrap_or_else(|e| panic!("{bytes} bytes: {e}\n{}", node.log()));
        assert!(r.intact(), "{bytes} bytes in {chunk}-byte writes: {r:?}");
    }
    assert_eq!(echo.connections(), 4, "every connection reached the endpoint through the proxy");
    let stats = node.kernel_stats();
    assert_eq!(stats["redirect_connect4"], 4, "{stats:?}");
    assert_eq!(stats["orig_dst_saved"], 4, "{stats:?}");
    assert!(
        node.log().contains("orig=127.100.0.10:8080"),
        "the proxy logged the recovered original destination:\n{}",
        node.log()
    );
}

#[test]
fn half_close_lets_the_reply_flow_after_the_client_fin() {
    if !privileged("half_close_lets_the_reply_flow_after_the_client_fin") {
        return;
    }
    let cg = CgroupGuard::new("halfclose");
    // This endpoint answers only after it has seen the client's FIN: the proxy must
    // pass the FIN on and keep the other direction open.
    let echo = EchoServer::start_after_eof("127.0.0.1:0");
    let _node = start("halfclose", &cg, &config_for("127.100.0.11", 9000, echo.addr));
    let r = client(Some(cg.path()), None, "127.100.0.11:9000".parse().unwrap(), 256 * 1024, 4096)
        .expect("client");
    assert!(r.intact(), "{r:?}");
    let r = client(Some(cg.path()), None, "127.100.0.11:9000".parse().unwrap(), 1, 1).expect("client");
    assert!(r.intact(), "{r:?}");
}

#[test]
fn ipv6_vip_in_a_network_namespace() {
    if !privileged("ipv6_vip_in_a_network_namespace") {
        return;
    }
    let ns = NetnsGuard::new("ipv6");
    let cg = CgroupGuard::new("ipv6");
    let (_echo, echo_addr) = echo_process(Some(ns.name()), "[::1]:0", false);
    let config = config_for("fd00:5c::10", 8080, echo_addr);
    let node = Node::start(NodeOpts {
        test: "ipv6",
        config: &config,
        cgroup: cg.path(),
        netns: Some(&ns),
        node_in_cgroup: false,
        args: &[],
    });
    let vip: SocketAddr = "[fd00:5c::10]:8080".parse().unwrap();
    for (bytes, chunk) in [(1, 1), (MIB, 16 * 1024)] {
        let r = client(Some(cg.path()), Some(ns.name()), vip, bytes, chunk)
            .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
        assert!(r.intact(), "{r:?}");
    }
    let stats = node.kernel_stats();
    assert_eq!(stats["redirect_connect6"], 2, "{stats:?}");
    assert!(node.log().contains("orig=[fd00:5c::10]:8080"), "{}", node.log());
}

#[test]
fn destinations_outside_the_mesh_are_untouched() {
    if !privileged("destinations_outside_the_mesh_are_untouched") {
        return;
    }
    let cg = CgroupGuard::new("untouched");
    let echo = EchoServer::start("127.0.0.1:0");
    let other = EchoServer::start("127.100.0.99:0");
    let node = start("untouched", &cg, &config_for("127.100.0.12", 8080, echo.addr));

    // A listener outside the mesh answers directly: its own address is the peer.
    let r = client(Some(cg.path()), None, other.addr, 4096, 512).expect("direct");
    assert!(r.intact());
    assert_eq!(r.peer, other.addr.to_string());
    assert_eq!(other.connections(), 1);
    // The mesh VIP on another port is not a mesh address either: refused as usual.
    let err = client(Some(cg.path()), None, "127.100.0.12:8081".parse().unwrap(), 1, 1)
        .expect_err("nothing listens there");
    assert!(err.contains("refused"), "{err}");
    assert_eq!(echo.connections(), 0, "nothing went to the mesh endpoint");
    let stats = node.kernel_stats();
    assert_eq!(stats["redirect_connect4"], 0, "{stats:?}");
    assert_eq!(stats["passthrough"], 2, "{stats:?}");
}

#[test]
fn config_change_moves_new_connections_and_a_bad_one_is_refused() {
    if !privileged("config_change_moves_new_connections_and_a_bad_one_is_refused") {
        return;
    }
    let cg = CgroupGuard::new("reload");
    let a = EchoServer::start("127.0.0.1:0");
    let b = EchoServer::start("127.0.0.1:0");
    let vip: SocketAddr = "127.100.0.13:8080".parse().unwrap();
    let node = start("reload", &cg, &config_for("127.100.0.13", 8080, a.addr));
    assert!(client(Some(cg.path()), None, vip, 100, 100).unwrap().intact());
    assert_eq!((a.connections(), b.connections()), (1, 0));

    node.write_config(&config_for("127.100.0.13", 8080, b.addr));
    wait_for("new connections to reach endpoint B", Duration::from_secs(10), || {
        assert!(client(Some(cg.path()), None, vip, 100, 100).unwrap().intact());
        (b.connections() > 0).then_some(())
    });
    let a_before = a.connections();
    for _ in 0..3 {
        assert!(client(Some(cg.path()), None, vip, 100, 100).unwrap().intact());
    }
    assert_eq!(a.connections(), a_before, "after the reload nothing goes to A");

    // A bad change is refused with file:line:column, and B keeps serving.
    node.write_config(
        "services:\n  - name: echo\n    vips: [127.100.0.13]\n    ports: [{port: 8080}]\n    colour: blue\n",
    );
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        node.log().contains("config change refused").then_some(())
    });
    assert!(node.log().contains("mesh.yaml:5:"), "{}", node.log());
    let b_before = b.connections();
    assert!(client(Some(cg.path()), None, vip, 100, 100).unwrap().intact());
    assert_eq!(b.connections(), b_before + 1);

    // A new VIP added by a reload is redirected too.
    node.write_config(&config_for("127.100.0.14", 8080, b.addr));
    wait_for("the new VIP to work", Duration::from_secs(10), || {
        client(Some(cg.path()), None, "127.100.0.14:8080".parse().unwrap(), 10, 10)
            .ok()
            .filter(|r| r.intact())
    });
    // ... and the removed one is not.
    let err = client(Some(cg.path()), None, vip, 1, 1).expect_err("127.100.0.13 is no longer in the mesh");
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn the_proxy_never_redirects_its_own_connections() {
    if !privileged("the_proxy_never_redirects_its_own_connections") {
        return;
    }
    let cg = CgroupGuard::new("ownmark");
    // The endpoint's address is itself the service address: without the mark the
    // proxy's upstream connect would be sent back to the proxy, forever.
    let echo = EchoServer::start("127.100.0.20:0");
    let cfg = format!(
        "services:\n  - name: loop\n    vips: [127.100.0.20]\n    ports: [{{port: {p}}}]\nendpoints:\n  - {{service: loop, address: 127.100.0.20}}\n",
        p = echo.addr.port()
    );
    let node = Node::start(NodeOpts {
        test: "ownmark",
        config: &cfg,
        cgroup: cg.path(),
        netns: None,
        node_in_cgroup: true,
        args: &[],
    });
    assert!(cg.procs().contains(&node.pid().unwrap()), "the node runs inside the mesh cgroup");
    let r = client(Some(cg.path()), None, echo.addr, 64 * 1024, 4096)
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert!(r.intact());
    assert_eq!(echo.connections(), 1);
    let stats = node.kernel_stats();
    assert_eq!(stats["redirect_connect4"], 1, "{stats:?}");
    assert_eq!(stats["own_socket_skipped"], 1, "{stats:?}");
}

#[test]
fn sigterm_and_sigint_detach_and_remove_pins() {
    if !privileged("sigterm_and_sigint_detach_and_remove_pins") {
        return;
    }
    for sig in [Sig::SIGTERM, Sig::SIGINT] {
        let cg = CgroupGuard::new("signals");
        let echo = EchoServer::start("127.0.0.1:0");
        let mut node = start("signals", &cg, &config_for("127.100.0.15", 8080, echo.addr));
        assert_eq!(attached_programs(cg.path()).len(), 5, "connect4/6, getpeername4/6, sock_ops");
        assert!(node.pin_dir().exists());
        let status = node.stop_with(sig);
        assert!(status.success(), "{sig:?}: {status}\n{}", node.log());
        assert!(attached_programs(cg.path()).is_empty(), "{:?}", attached_programs(cg.path()));
        assert!(!node.pin_dir().exists());
        // With the node gone the VIP is plain again: nothing listens there.
        assert!(client(Some(cg.path()), None, "127.100.0.15:8080".parse().unwrap(), 1, 1).is_err());
    }
}

#[test]
fn after_kill_9_a_new_node_takes_over_and_bpf_cleanup_removes_the_rest() {
    if !privileged("after_kill_9_a_new_node_takes_over_and_bpf_cleanup_removes_the_rest") {
        return;
    }
    let cg = CgroupGuard::new("cleanup");
    let echo = EchoServer::start("127.0.0.1:0");
    let cfg = config_for("127.100.0.16", 8080, echo.addr);
    let vip: SocketAddr = "127.100.0.16:8080".parse().unwrap();
    let mut first = start("cleanup", &cg, &cfg);
    assert!(!first.stop_with(Sig::SIGKILL).success());
    // kill -9 cannot clean up: the pinned links keep the programs attached, and a
    // redirected connect is refused (nothing listens on the dead proxy's port).
    assert!(first.pin_dir().exists());
    assert_eq!(attached_programs(cg.path()).len(), 5);
    assert!(client(Some(cg.path()), None, vip, 1, 1).unwrap_err().contains("refused"));

    // A new node of the same instance replaces the crashed one's pins and attachments.
    let mut second = start("cleanup", &cg, &cfg);
    assert_eq!(second.instance, first.instance);
    assert!(
        second.log().contains("removing pins left by a node that did not shut down cleanly"),
        "{}",
        second.log()
    );
    assert_eq!(attached_programs(cg.path()).len(), 5, "the old links are gone, not doubled");
    assert!(client(Some(cg.path()), None, vip, 1000, 100).unwrap().intact());

    assert!(!second.stop_with(Sig::SIGKILL).success());
    let out = second.cleanup();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
    assert!(!second.pin_dir().exists());
    assert!(attached_programs(cg.path()).is_empty(), "{:?}", attached_programs(cg.path()));
    // Plain again: the VIP is not redirected, nothing listens there.
    assert!(client(Some(cg.path()), None, vip, 1, 1).unwrap_err().contains("refused"));
    let again = second.cleanup();
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to clean"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}

#[test]
fn round_robin_spreads_connections_over_endpoints() {
    if !privileged("round_robin_spreads_connections_over_endpoints") {
        return;
    }
    let cg = CgroupGuard::new("roundrobin");
    let eps: Vec<EchoServer> = (0..3).map(|_| EchoServer::start("127.0.0.1:0")).collect();
    let mut cfg = "services:\n  - name: rr\n    vips: [127.100.0.17]\n    ports: [{port: 80}]\nendpoints:\n"
        .to_string();
    for e in &eps {
        cfg.push_str(&format!("  - {{service: rr, address: 127.0.0.1, port: {}}}\n", e.addr.port()));
    }
    let _node = start("roundrobin", &cg, &cfg);
    for _ in 0..9 {
        assert!(client(Some(cg.path()), None, "127.100.0.17:80".parse().unwrap(), 10, 10).unwrap().intact());
    }
    let counts: Vec<usize> = eps.iter().map(EchoServer::connections).collect();
    assert_eq!(counts, [3, 3, 3]);
}

//! L3/L4 policy with real traffic: a server namespace joined by veth to two
//! client namespaces, `sluice node` in the server namespace enforcing the
//! policy with XDP on both veths.

#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use sluice_integration::{
    CgroupGuard, NetnsGuard, Node,
    node::NodeOpts,
    privileged,
    process::{client_timeout, echo_process, sent, sink_counts, udp_send, udp_sink},
    wait_for,
};

struct Net {
    server: NetnsGuard,
    c1: NetnsGuard,
    c2: NetnsGuard,
}

/// server 10.77.1.1 (s1) <-> c1 10.77.1.2; server 10.77.2.1 (s2) <-> c2 10.77.2.2.
fn net(test: &str) -> Net {
    let server = NetnsGuard::with_suffix(test, "s");
    let c1 = NetnsGuard::with_suffix(test, "c1");
    let c2 = NetnsGuard::with_suffix(test, "c2");
    server.veth("s1", "10.77.1.1/24", &c1, "c1", "10.77.1.2/24");
    server.veth("s2", "10.77.2.1/24", &c2, "c2", "10.77.2.2/24");
    Net { server, c1, c2 }
}

fn node(test: &str, net: &Net, cg: &CgroupGuard, policy: &str) -> Node {
    let config = format!("services: []\npolicy:\n  interfaces: [s1, s2]\n{policy}");
    let node = Node::start(NodeOpts {
        test,
        config: &config,
        cgroup: cg.path(),
        netns: Some(&net.server),
        node_in_cgroup: false,
        args: &[],
    });
    assert!(node.log().contains("L3/L4 policy in force"), "{}", node.log());
    let status = node.status();
    assert!(status.contains("policy on: s1 (XDP native, tc egress), s2 (XDP native, tc egress)"), "{status}");
    node
}

fn policy_counter(node: &Node, name: &str) -> u64 {
    let status = node.status();
    status
        .split("policy counters:")
        .nth(1)
        .and_then(|t| t.lines().find(|l| l.split_whitespace().next() == Some(name)))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{status}"))
}

#[test]
fn a_denied_source_gets_nothing_and_an_allowed_one_passes() {
    if !privileged("a_denied_source_gets_nothing_and_an_allowed_one_passes") {
        return;
    }
    let net = net("poldeny");
    let cg = CgroupGuard::new("poldeny");
    let node = node(
        "poldeny",
        &net,
        &cg,
        "  rules:\n    - {name: blocked, action: deny, sources: [10.77.1.2/32]}\n",
    );
    let (_echo, echo) = echo_process(Some(net.server.name()), "0.0.0.0:0", false);
    let via1: SocketAddr = format!("10.77.1.1:{}", echo.port()).parse().unwrap();
    let via2: SocketAddr = format!("10.77.2.1:{}", echo.port()).parse().unwrap();

    let ok = client_timeout(None, Some(net.c2.name()), via2, 100_000, 1000, 5000).unwrap();
    assert!(ok.intact(), "{ok:?}");
    let err = client_timeout(None, Some(net.c1.name()), via1, 10, 10, 1000).unwrap_err();
    assert!(
        err.contains("timed out") || err.contains("Resource temporarily unavailable"),
        "SYNs dropped: {err}"
    );

    let (sink, to) = udp_sink(net.server.name(), "0.0.0.0:0", 2);
    let a = udp_send(net.c1.name(), format!("10.77.1.1:{}", to.port()).parse().unwrap(), 20, 100);
    let b = udp_send(net.c2.name(), format!("10.77.2.1:{}", to.port()).parse().unwrap(), 20, 100);
    let (sent_a, sent_b) = (sent(a), sent(b));
    let counts = sink_counts(sink);
    assert_eq!((sent_a, sent_b), (20, 20));
    assert_eq!(counts.get("10.77.1.2"), None, "nothing from the denied source: {counts:?}");
    assert_eq!(counts.get("10.77.2.2"), Some(&20), "{counts:?}");
    assert!(policy_counter(&node, "ingress_matched_rule_0") >= 21, "{}", node.status());
    assert!(node.log().contains("policy drop"), "drop events reach the log:\n{}", node.log());
    let xdp_link = std::fs::metadata(node.pin_dir().join("link_xdp_s2")).unwrap();

    // A bad policy change is refused; the policy in force stays.
    node.write_config("services: []\npolicy:\n  interfaces: [s1, s2]\n  rules:\n    - {action: deny, sources: [10.77.2.2/33]}\n");
    wait_for("the refusal", Duration::from_secs(10), || {
        node.log().contains("config change refused").then_some(())
    });
    assert!(node.log().contains("mesh.yaml:5:32: policy.rules[0].sources[0]"), "{}", node.log());
    assert!(client_timeout(None, Some(net.c2.name()), via2, 10, 10, 5000).unwrap().intact());
    // A good one applies by map updates: c2 is cut off, c1 let in, nothing re-attached.
    node.write_config("services: []\npolicy:\n  interfaces: [s1, s2]\n  rules:\n    - {action: deny, sources: [10.77.2.2/32]}\n");
    wait_for("c1 to get in", Duration::from_secs(10), || {
        client_timeout(None, Some(net.c1.name()), via1, 10, 10, 300).ok().filter(|r| r.intact())
    });
    assert!(client_timeout(None, Some(net.c2.name()), via2, 10, 10, 1000).is_err(), "c2 is denied now");
    let again = std::fs::metadata(node.pin_dir().join("link_xdp_s2")).unwrap();
    assert_eq!(
        std::os::linux::fs::MetadataExt::st_ino(&xdp_link),
        std::os::linux::fs::MetadataExt::st_ino(&again),
        "the XDP link was not replaced"
    );
}

#[test]
fn a_flood_from_one_source_is_limited_and_another_source_is_unaffected() {
    if !privileged("a_flood_from_one_source_is_limited_and_another_source_is_unaffected") {
        return;
    }
    let net = net("polflood");
    let cg = CgroupGuard::new("polflood");
    let node = node("polflood", &net, &cg, "  rate_limit: {packets_per_second: 200, burst: 100}\n");
    let (sink, to) = udp_sink(net.server.name(), "0.0.0.0:0", 3);
    // 2 s at 2000/s from one source, 2 s at 50/s from the other.
    let flood = udp_send(net.c1.name(), format!("10.77.1.1:{}", to.port()).parse().unwrap(), 4000, 2000);
    let paced = udp_send(net.c2.name(), format!("10.77.2.1:{}", to.port()).parse().unwrap(), 100, 50);
    let (flooded, polite) = (sent(flood), sent(paced));
    let counts = sink_counts(sink);
    let got_flood = counts.get("10.77.1.2").copied().unwrap_or(0);
    eprintln!(
        "flood: sent {flooded}, received {got_flood}; paced: sent {polite}, received {:?}",
        counts.get("10.77.2.2")
    );
    assert_eq!((flooded, polite), (4000, 100));
    assert_eq!(counts.get("10.77.2.2"), Some(&polite), "the other source is unaffected: {counts:?}");
    // The burst (100) plus 200/s for the flood's 2 s: about 500.
    assert!((380..=650).contains(&got_flood), "flood limited to burst + rate: {got_flood} of {flooded}");
    assert_eq!(policy_counter(&node, "ingress_rate_limited"), flooded - got_flood, "{}", node.status());
    // The same counters on /metrics, and the sampled drop events that reached the log.
    let limited = node.metric("sluice_policy_packets_total{direction=\"ingress\",reason=\"rate_limited\"}");
    assert_eq!(limited, Some((flooded - got_flood) as f64));
    wait_for("drop events to be counted", Duration::from_secs(5), || {
        node.metric("sluice_policy_drop_events_total{direction=\"ingress\",reason=\"rate_limit\"}")
            .filter(|n| *n > 0.0)
    });
    assert!(
        node.admin_get("/ready").starts_with("HTTP/1.0 200")
            || node.admin_get("/ready").starts_with("HTTP/1.1 200")
    );
}

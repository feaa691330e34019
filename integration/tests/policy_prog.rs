//! The XDP and tc policy programs run by the kernel on crafted packets
//! (BPF_PROG_TEST_RUN): no network needed, root needed.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sluice_integration::{packet::*, privileged, unique};
use sluice_redirector::{policy::PolicyEnforcer, sys::prog_test_run};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// A pin folder for the policy maps, removed on drop.
struct Pins(PathBuf);

impl Pins {
    fn new(test: &str) -> Self {
        sluice_redirector::mounts::ensure_bpffs().unwrap();
        let p = Path::new("/sys/fs/bpf/sluice").join(unique(test).trim_start_matches("sluice-"));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir(self.0.parent().unwrap());
    }
}

fn enforcer(pins: &Pins, yaml: &str) -> PolicyEnforcer {
    let mut policy = sluice_mesh_config::parse(Path::new("p.yaml"), yaml).unwrap().policy.unwrap();
    policy.interfaces.clear(); // programs run by test-run only: attached nowhere
    let mut e = PolicyEnforcer::new(&pins.0, false).unwrap();
    e.apply(&policy).unwrap();
    e
}

fn xdp(e: &PolicyEnforcer, p: &[u8]) -> u32 {
    prog_test_run(e.xdp_program_fd().unwrap(), p, 1).unwrap().retval
}

fn counter(e: &PolicyEnforcer, name: &str) -> u64 {
    e.counters().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no counter {name}")).1
}

const POLICY: &str = "\
policy:
  interfaces: [unused0]
  default: allow
  rules:
    - {name: bad-net, action: deny, sources: [10.66.0.0/16, \"fd66::/16\"]}
    - {name: shadowed, action: allow, sources: [10.66.1.0/24]}
    - {name: no-ssh, action: deny, protocol: tcp, ports: [22]}
    - {name: no-udp-range, action: deny, protocol: udp, ports: [\"5000-5010\"], destinations: [10.0.0.0/8]}
    - {name: no-ping, action: deny, protocol: icmp, sources: [192.0.2.0/24]}
    - {name: egress-block, action: deny, direction: egress, destinations: [198.51.100.0/24]}
";

#[test]
fn rules_first_match_wins_over_ipv4_ipv6_tcp_udp_icmp() {
    if !privileged("rules_first_match_wins_over_ipv4_ipv6_tcp_udp_icmp") {
        return;
    }
    let pins = Pins::new("polrules");
    let e = enforcer(&pins, POLICY);
    let icmp = |src: &str| {
        frame(
            &[],
            ETH_P_IP,
            &ipv4(src.parse().unwrap(), "10.0.0.1".parse().unwrap(), ICMP, 0, &l4(ICMP, 0, 0)),
        )
    };
    for (what, pkt, want) in [
        ("source in a denied /16", tcp4("10.66.1.5", "10.0.0.1", 80), XDP_DROP),
        ("an allow after a matching deny is shadowed", tcp4("10.66.1.200", "10.0.0.1", 443), XDP_DROP),
        ("allowed by default", tcp4("10.77.0.1", "10.0.0.1", 80), XDP_PASS),
        ("tcp/22 denied", tcp4("10.77.0.1", "10.0.0.1", 22), XDP_DROP),
        ("tcp/23 allowed", tcp4("10.77.0.1", "10.0.0.1", 23), XDP_PASS),
        ("udp in the denied range", udp4("10.77.0.1", "10.1.1.1", 5005), XDP_DROP),
        ("udp at the range's end", udp4("10.77.0.1", "10.1.1.1", 5010), XDP_DROP),
        ("udp past the range", udp4("10.77.0.1", "10.1.1.1", 5011), XDP_PASS),
        ("udp range, other destination", udp4("10.77.0.1", "192.168.1.1", 5005), XDP_PASS),
        ("tcp to a udp-only port", tcp4("10.77.0.1", "10.1.1.1", 5005), XDP_PASS),
        ("icmp from a denied net", icmp("192.0.2.9"), XDP_DROP),
        ("icmp from elsewhere", icmp("192.0.3.9"), XDP_PASS),
        ("ipv6 source in a denied /16", tcp6("fd66::1", "fd00::1", 80), XDP_DROP),
        ("ipv6 allowed", tcp6("fd77::1", "fd00::1", 80), XDP_PASS),
        ("ipv6 tcp/22", tcp6("fd77::1", "fd00::1", 22), XDP_DROP),
    ] {
        assert_eq!(xdp(&e, &pkt), want, "{what}");
    }
    assert_eq!(counter(&e, "ingress_denied_rule_0_bad-net"), 3);
    assert_eq!(counter(&e, "ingress_allowed_rule_1_shadowed"), 0);
    assert_eq!(counter(&e, "ingress_denied_rule_2_no-ssh"), 2);
    assert_eq!(counter(&e, "ingress_allowed_default"), 7);
    // Egress rules are not applied on ingress.
    assert_eq!(xdp(&e, &tcp4("10.77.0.1", "198.51.100.7", 80)), XDP_PASS);
}

#[test]
fn vlan_fragments_and_extension_headers() {
    if !privileged("vlan_fragments_and_extension_headers") {
        return;
    }
    let pins = Pins::new("polvlan");
    let e = enforcer(&pins, POLICY);
    let ssh4 = ipv4("10.77.0.1".parse().unwrap(), "10.0.0.1".parse().unwrap(), TCP, 0, &l4(TCP, 1, 22));
    let web4 = ipv4("10.77.0.1".parse().unwrap(), "10.0.0.1".parse().unwrap(), TCP, 0, &l4(TCP, 1, 80));
    let frag = |src: &str, off: u16| {
        frame(&[], ETH_P_IP, &ipv4(src.parse().unwrap(), "10.0.0.1".parse().unwrap(), TCP, off, &[0u8; 24]))
    };
    let hop = (0u8, [0u8; 6]); // hop-by-hop options
    let dst_opts = (60u8, [0u8; 6]);
    let v6 = |exts: &[(u8, [u8; 6])], dport| {
        frame(
            &[],
            ETH_P_IPV6,
            &ipv6("fd77::1".parse().unwrap(), "fd00::1".parse().unwrap(), TCP, exts, &l4(TCP, 1, dport)),
        )
    };
    let v6frag = |src: &str, off: u16| {
        let mut body = [0u8; 6];
        body[0..2].copy_from_slice(&(off << 3).to_be_bytes());
        frame(
            &[],
            ETH_P_IPV6,
            &ipv6(src.parse().unwrap(), "fd00::1".parse().unwrap(), TCP, &[(44, body)], &[0u8; 16]),
        )
    };
    for (what, pkt, want) in [
        ("802.1Q tcp/22", frame(&[100], ETH_P_IP, &ssh4), XDP_DROP),
        ("802.1Q tcp/80", frame(&[100], ETH_P_IP, &web4), XDP_PASS),
        ("QinQ tcp/22", frame(&[10, 20], ETH_P_IP, &ssh4), XDP_DROP),
        (
            "first fragment (MF) tcp/22",
            frame(
                &[],
                ETH_P_IP,
                &ipv4(
                    "10.77.0.1".parse().unwrap(),
                    "10.0.0.1".parse().unwrap(),
                    TCP,
                    0x2000,
                    &l4(TCP, 1, 22),
                ),
            ),
            XDP_DROP,
        ),
        ("later fragment of a denied source", frag("10.66.0.9", 100), XDP_DROP),
        ("later fragment: no ports to match", frag("10.77.0.1", 100), XDP_PASS),
        ("ipv6 hop-by-hop then tcp/22", v6(&[hop], 22), XDP_DROP),
        ("ipv6 two extension headers then tcp/80", v6(&[hop, dst_opts], 80), XDP_PASS),
        ("ipv6 later fragment of a denied source", v6frag("fd66::9", 10), XDP_DROP),
        ("ipv6 later fragment, allowed source", v6frag("fd77::9", 10), XDP_PASS),
        ("ARP is not IP: passed", frame(&[], ETH_P_ARP, &[0u8; 28]), XDP_PASS),
    ] {
        assert_eq!(xdp(&e, &pkt), want, "{what}");
    }
    assert_eq!(counter(&e, "ingress_not_ip"), 1);
}

#[test]
fn truncated_and_malformed_packets_are_dropped_not_passed() {
    if !privileged("truncated_and_malformed_packets_are_dropped_not_passed") {
        return;
    }
    let pins = Pins::new("polmalformed");
    let e = enforcer(&pins, POLICY);
    let good = ipv4("10.77.0.1".parse().unwrap(), "10.0.0.1".parse().unwrap(), TCP, 0, &l4(TCP, 1, 80));
    let mut bad_ihl = good.clone();
    bad_ihl[0] = 0x44;
    let mut long_total = good.clone();
    long_total[2..4].copy_from_slice(&2000u16.to_be_bytes());
    let mut bad_version = good.clone();
    bad_version[0] = 0x65;
    let mut bad_doff = good.clone();
    bad_doff[20 + 12] = 2 << 4;
    let v6 =
        ipv6("fd77::1".parse().unwrap(), "fd00::1".parse().unwrap(), TCP, &[(0, [0u8; 6])], &l4(TCP, 1, 80));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Ethernet header only", frame(&[], ETH_P_IP, &[])),
        ("VLAN tag cut short", {
            let mut p = eth(&[], ETH_P_8021Q);
            p.extend_from_slice(&[0, 1]);
            p
        }),
        ("IPv4 header cut short", frame(&[], ETH_P_IP, &good[..12])),
        ("IPv4 IHL 4", frame(&[], ETH_P_IP, &bad_ihl)),
        ("IPv4 total length past the packet", frame(&[], ETH_P_IP, &long_total)),
        ("IPv4 with version 6", frame(&[], ETH_P_IP, &bad_version)),
        ("TCP header cut short", frame(&[], ETH_P_IP, &good[..30])),
        ("TCP data offset 2", frame(&[], ETH_P_IP, &bad_doff)),
        ("IPv6 header cut short", frame(&[], ETH_P_IPV6, &v6[..30])),
        (
            "IPv6 extension header cut short",
            frame(&[], ETH_P_IPV6, &{
                let mut t = v6[..44].to_vec();
                t[4..6].copy_from_slice(&4u16.to_be_bytes());
                t
            }),
        ),
    ];
    for (what, pkt) in &cases {
        assert_eq!(xdp(&e, pkt), XDP_DROP, "{what}");
    }
    assert_eq!(counter(&e, "ingress_malformed"), cases.len() as u64);
    assert_eq!(xdp(&e, &frame(&[], ETH_P_IP, &good)), XDP_PASS, "the intact packet passes");
    // Every drop above produced an event (under the per-second budget).
    let events = e.drain_events();
    assert_eq!(events.iter().filter(|ev| ev.reason_name() == "malformed").count(), cases.len());
}

#[test]
fn rate_limit_per_source_and_events() {
    if !privileged("rate_limit_per_source_and_events") {
        return;
    }
    let pins = Pins::new("polrate");
    let e = enforcer(
        &pins,
        "policy:\n  interfaces: [unused0]\n  rate_limit: {packets_per_second: 1, burst: 5}\n  drop_events_per_second: 3\n",
    );
    let a = udp4("10.9.0.1", "10.0.0.1", 53);
    let verdicts: Vec<u32> = (0..10).map(|_| xdp(&e, &a)).collect();
    assert_eq!(verdicts, [[XDP_PASS; 5], [XDP_DROP; 5]].concat(), "a burst of 5, then nothing at 1/s");
    // Another source has its own bucket.
    assert_eq!(xdp(&e, &udp4("10.9.0.2", "10.0.0.1", 53)), XDP_PASS);
    assert_eq!(counter(&e, "ingress_rate_limited"), 5);
    // Events are sampled: 3 per second per CPU, the rest only counted.
    let events = e.drain_events();
    assert!(events.len() <= 3 && !events.is_empty(), "{events:?}");
    assert!(events.iter().all(|ev| ev.reason_name() == "rate_limit"));
    assert_eq!(counter(&e, "ingress_events_suppressed") + events.len() as u64, 5);
}

#[test]
fn tc_egress_and_a_policy_change_without_reattaching() {
    if !privileged("tc_egress_and_a_policy_change_without_reattaching") {
        return;
    }
    let pins = Pins::new("polswap");
    let mut e = enforcer(&pins, POLICY);
    let tc = |e: &PolicyEnforcer, p: &[u8]| prog_test_run(e.tc_program_fd().unwrap(), p, 1).unwrap().retval;
    assert_eq!(tc(&e, &tcp4("10.0.0.1", "198.51.100.7", 80)), TC_ACT_SHOT, "egress rule");
    assert_eq!(tc(&e, &tcp4("10.0.0.1", "203.0.113.7", 80)), TC_ACT_OK);
    assert_eq!(
        tc(&e, &tcp4("10.66.0.1", "203.0.113.7", 80)),
        TC_ACT_OK,
        "ingress rules do not apply on egress"
    );

    // A new policy goes into the other slot and is switched to in one write.
    let new = "policy:\n  interfaces: [unused0]\n  default: deny\n  rules:\n    - {action: allow, sources: [10.66.0.0/16]}\n";
    let mut p = sluice_mesh_config::parse(Path::new("p.yaml"), new).unwrap().policy.unwrap();
    p.interfaces.clear();
    e.apply(&p).unwrap();
    assert_eq!(xdp(&e, &tcp4("10.66.1.5", "10.0.0.1", 80)), XDP_PASS, "now allowed");
    assert_eq!(xdp(&e, &tcp4("10.77.0.1", "10.0.0.1", 80)), XDP_DROP, "now denied by default");
    assert_eq!(tc(&e, &tcp4("10.0.0.1", "198.51.100.7", 80)), TC_ACT_OK, "the old egress rule is gone");
    // And back again, through the first slot.
    let mut p = sluice_mesh_config::parse(Path::new("p.yaml"), POLICY).unwrap().policy.unwrap();
    p.interfaces.clear();
    e.apply(&p).unwrap();
    assert_eq!(xdp(&e, &tcp4("10.66.1.5", "10.0.0.1", 80)), XDP_DROP);
    assert_eq!(xdp(&e, &tcp4("10.77.0.1", "10.0.0.1", 80)), XDP_PASS);
}

/// The rules as the config states them, evaluated in Rust: first match wins.
fn reference(
    policy: &sluice_mesh_config::Policy,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    proto: u8,
    dport: u16,
) -> u32 {
    use sluice_mesh_config::{Cidr, Direction, PolicyAction};
    let contains = |c: &Cidr, ip: std::net::IpAddr| -> bool {
        let m = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            std::net::IpAddr::V6(v6) => u128::from(v6),
        };
        let bits = c.mapped_bits();
        bits == 0 || (m(ip) >> (128 - bits)) == (m(c.addr) >> (128 - bits))
    };
    let has_ports = proto == TCP || proto == UDP;
    for r in policy.rules.iter().filter(|r| r.direction == Direction::Ingress) {
        let src_ok = r.sources.is_empty() || r.sources.iter().any(|c| contains(c, src));
        let dst_ok = r.destinations.is_empty() || r.destinations.iter().any(|c| contains(c, dst));
        let proto_ok = r.protocol.number() == 0 || r.protocol.number() == proto;
        let port_ok =
            r.ports.is_empty() || (has_ports && r.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&dport)));
        if src_ok && dst_ok && proto_ok && port_ok {
            return if r.action == PolicyAction::Deny { XDP_DROP } else { XDP_PASS };
        }
    }
    if policy.default_ingress == PolicyAction::Deny { XDP_DROP } else { XDP_PASS }
}

#[test]
fn random_packets_get_the_verdict_of_a_reference_model() {
    if !privileged("random_packets_get_the_verdict_of_a_reference_model") {
        return;
    }
    let pins = Pins::new("polmodel");
    let e = enforcer(&pins, POLICY);
    let policy = sluice_mesh_config::parse(Path::new("p.yaml"), POLICY).unwrap().policy.unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let v4_src = [
        "10.66.0.9",
        "10.66.1.5",
        "10.66.255.1",
        "10.67.0.1",
        "10.77.0.1",
        "192.0.2.9",
        "192.0.3.9",
        "0.0.0.0",
    ];
    let v4_dst = ["10.0.0.1", "10.1.1.1", "10.255.0.1", "11.0.0.1", "192.168.1.1", "198.51.100.7"];
    let v6_src = ["fd66::1", "fd66:ffff::9", "fd67::1", "fd77::1", "::1"];
    let v6_dst = ["fd00::1", "fe80::1", "2001:db8::1"];
    let ports = [22u16, 21, 23, 80, 4999, 5000, 5005, 5010, 5011, 65535, 1];
    let protos = [TCP, UDP, ICMP];
    let mut checked = 0;
    for _ in 0..3000 {
        let proto = protos[next(protos.len())];
        let dport = ports[next(ports.len())];
        let (src, dst, pkt): (std::net::IpAddr, std::net::IpAddr, Vec<u8>) = if next(2) == 0 {
            let (s, d) = (v4_src[next(v4_src.len())], v4_dst[next(v4_dst.len())]);
            let l3 = ipv4(s.parse().unwrap(), d.parse().unwrap(), proto, 0, &l4(proto, 1234, dport));
            let vlans: &[u16] = [&[][..], &[7][..], &[7, 8][..]][next(3)];
            (s.parse().unwrap(), d.parse().unwrap(), frame(vlans, ETH_P_IP, &l3))
        } else {
            let (s, d) = (v6_src[next(v6_src.len())], v6_dst[next(v6_dst.len())]);
            let exts: &[(u8, [u8; 6])] = [&[][..], &[(0, [0u8; 6])][..]][next(2)];
            let l3 = ipv6(s.parse().unwrap(), d.parse().unwrap(), proto, exts, &l4(proto, 1234, dport));
            (s.parse().unwrap(), d.parse().unwrap(), frame(&[], ETH_P_IPV6, &l3))
        };
        let want = reference(&policy, src, dst, proto, dport);
        assert_eq!(xdp(&e, &pkt), want, "{src} -> {dst} proto {proto} port {dport}");
        checked += 1;
    }
    assert_eq!(checked, 3000);
}

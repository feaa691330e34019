use std::path::Path;

use super::*;

fn policy(yaml: &str) -> Policy {
    sluice_mesh_config::parse(Path::new("p.yaml"), yaml).unwrap().policy.unwrap()
}

fn mask(t: &BTreeMap<(u8, u128, u32), u64>, dir: Dir, cidr: &str) -> u64 {
    let (a, b) = cidr.split_once('/').unwrap();
    let ip: IpAddr = a.parse().unwrap();
    let bits: u32 = b.parse().unwrap();
    let bits = if ip.is_ipv4() { 96 + bits } else { bits };
    t[&(dir as u8, mapped(ip), bits)]
}

#[test]
fn longer_prefixes_inherit_the_rules_of_shorter_ones() {
    let p = policy(
        "policy:\n  interfaces: [v0]\n  rules:\n    - {action: deny, sources: [10.0.0.0/8]}\n    - {action: allow, sources: [10.1.0.0/16]}\n    - {action: deny}\n",
    );
    let c = compile(&p);
    assert_eq!(c.rules.len(), 3);
    // 10.1.0.0/16 is covered by rule 0 (10/8), rule 1 itself and rule 2 (any).
    assert_eq!(mask(&c.src, Dir::Ingress, "10.1.0.0/16"), 0b111);
    assert_eq!(mask(&c.src, Dir::Ingress, "10.0.0.0/8"), 0b101);
    // Everything else only matches the rule without sources.
    assert_eq!(c.src[&(Dir::Ingress as u8, 0, 0)], 0b100);
    // No destinations anywhere: every rule matches any destination.
    assert_eq!(c.dst[&(Dir::Ingress as u8, 0, 0)], 0b111);
}

#[test]
fn port_lists_expand_into_kernel_rules_and_directions_count_apart() {
    let p = policy(
        "policy:\n  interfaces: [v0]\n  rules:\n    - {action: allow, protocol: tcp, ports: [22, \"80-90\"]}\n    - {action: deny, direction: egress, destinations: [\"fd00::/8\"]}\n",
    );
    let c = compile(&p);
    let ingress: Vec<_> = c.rules.iter().filter(|r| r.dir == Dir::Ingress).collect();
    assert_eq!(ingress.len(), 2);
    assert_eq!((ingress[0].rule.port_lo, ingress[0].rule.port_hi), (22, 22));
    assert_eq!((ingress[1].index, ingress[1].rule.port_lo, ingress[1].rule.port_hi), (1, 80, 90));
    let egress: Vec<_> = c.rules.iter().filter(|r| r.dir == Dir::Egress).collect();
    assert_eq!((egress.len(), egress[0].index), (1, 0));
    assert_eq!(mask(&c.dst, Dir::Egress, "fd00::/8"), 1);
    assert_eq!(c.dst[&(Dir::Egress as u8, 0, 0)], 0);
}

#[test]
fn settings_reach_the_config_struct() {
    let p = policy(
        "policy:\n  interfaces: [v0]\n  default: deny\n  rate_limit: {packets_per_second: 10, burst: 3}\n",
    );
    let c = compile(&p);
    assert_eq!((c.cfg.default_in, c.cfg.default_eg, c.cfg.rate_pps, c.cfg.rate_burst), (1, 0, 10, 3));
}

#[test]
fn ipv4_prefixes_live_in_the_mapped_space() {
    assert!(covers((mapped("10.0.0.0".parse().unwrap()), 104), (mapped("10.1.2.3".parse().unwrap()), 128)));
    assert!(!covers((mapped("10.0.0.0".parse().unwrap()), 104), (mapped("11.0.0.1".parse().unwrap()), 128)));
    assert!(covers((0, 0), (mapped("fd00::1".parse().unwrap()), 128)));
}

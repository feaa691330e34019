use std::path::Path;

use proptest::prelude::*;

use crate::{ConfigError, Location, parse};

fn err(text: &str) -> ConfigError {
    parse(Path::new("mesh.yaml"), text).expect_err("config should be refused")
}

const GOOD: &str = "\
services:
  - name: echo
    vips: [127.100.0.10, \"fd00:5c::10\"]
    ports:
      - port: 8080
        target_port: 9000
  - name: db
    vips: [127.100.0.11]
    ports: [{port: 5432}]
endpoints:
  - service: echo
    address: 127.0.0.1
  - service: db
    address: \"::1\"
    port: 15432
";

#[test]
fn good_config_is_understood() {
    let c = parse(Path::new("mesh.yaml"), GOOD).unwrap();
    assert_eq!(c.services.len(), 2);
    let echo = &c.services[0];
    assert_eq!(echo.vips.len(), 2);
    assert_eq!(echo.ports[0].target_port, 9000);
    assert_eq!(echo.endpoints[0].socket_addr(&echo.ports[0]).to_string(), "127.0.0.1:9000");
    let db = &c.services[1];
    assert_eq!(db.endpoints[0].socket_addr(&db.ports[0]).to_string(), "[::1]:15432");
    let addrs = c.service_addrs();
    assert_eq!(addrs.len(), 3);
    assert!(addrs.contains_key(&"[fd00:5c::10]:8080".parse().unwrap()));
}

#[test]
fn zero_hop_ports() {
    let c = parse(
        Path::new("m.yaml"),
        "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1, zero_hop: true}, {port: 2}]}\n",
    )
    .unwrap();
    assert!(c.services[0].ports[0].zero_hop);
    assert!(!c.services[0].ports[1].zero_hop);
    let e = err("services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1, zero_hop: maybe}]}\n");
    assert_eq!(e.location.map(|l| l.line), Some(2), "{e}");
}

#[test]
fn unknown_field_names_line_column_and_field() {
    let e = err("services:\n  - name: echo\n    vipz: [127.100.0.10]\n    ports: [{port: 1}]\n");
    assert_eq!(e.location.map(|l| l.line), Some(3), "{e}");
    assert_eq!(e.field, "vipz", "{e}");
    assert!(e.to_string().starts_with("mesh.yaml:3:"), "{e}");
    assert!(e.hint.is_some());
}

#[test]
fn malformed_address_points_at_the_value() {
    let e =
        err("services:\n  - name: echo\n    vips: [127.100.0.10, 127.100.0.300]\n    ports: [{port: 1}]\n");
    assert_eq!(e.field, "services[0].vips[1]");
    assert_eq!(e.location, Some(Location { line: 3, column: 26 }), "{e}");
    assert!(e.message.contains("127.100.0.300"), "{e}");
}

#[test]
fn duplicate_vip_port_across_services_is_refused() {
    let e = err("\
services:
  - name: a
    vips: [127.100.0.10]
    ports: [{port: 80}]
  - name: b
    vips: [127.100.0.10]
    ports: [{port: 80}]
");
    assert_eq!(e.field, "services[1].vips[0]");
    assert_eq!(e.location.map(|l| l.line), Some(6));
    assert!(e.message.contains("127.100.0.10:80"), "{e}");
    assert!(e.hint.as_deref().unwrap_or("").contains("'a'"), "{e}");
}

#[test]
fn same_vip_on_other_ports_is_fine() {
    let t = "\
services:
  - name: a
    vips: [127.100.0.10]
    ports: [{port: 80}]
  - name: b
    vips: [127.100.0.10]
    ports: [{port: 81}]
";
    parse(Path::new("m.yaml"), t).unwrap();
}

#[test]
fn endpoint_of_unknown_service_lists_the_known_ones() {
    let e = err(
        "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1}]}\nendpoints:\n  - {service: b, address: 127.0.0.1}\n",
    );
    assert_eq!(e.field, "endpoints[0].service");
    assert!(e.hint.unwrap().contains("known: a"));
}

#[test]
fn port_out_of_range_and_zero() {
    let e = err("services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 70000}]}\n");
    assert_eq!(e.location.map(|l| l.line), Some(2), "{e}");
    let e = err("services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 0}]}\n");
    assert_eq!(e.field, "services[0].ports[0].port");
}

#[test]
fn other_refusals() {
    for (text, field) in [
        ("services:\n  - {name: A_b, vips: [127.100.0.1], ports: [{port: 1}]}\n", "services[0].name"),
        ("services:\n  - {name: a, vips: [], ports: [{port: 1}]}\n", "services[0].vips"),
        ("services:\n  - {name: a, vips: [0.0.0.0], ports: [{port: 1}]}\n", "services[0].vips[0]"),
        ("services:\n  - {name: a, vips: [127.100.0.1], ports: []}\n", "services[0].ports"),
        (
            "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1}, {port: 1}]}\n",
            "services[0].ports[1].port",
        ),
        (
            "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1, protocol: quic}]}\n",
            "services[0].ports[0].protocol",
        ),
        (
            "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1}]}\n  - {name: a, vips: [127.100.0.2], ports: [{port: 1}]}\n",
            "services[1].name",
        ),
        (
            "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1}, {port: 2}]}\nendpoints:\n  - {service: a, address: 127.0.0.1, port: 5}\n",
            "endpoints[0].port",
        ),
        (
            "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1}]}\nendpoints:\n  - {service: a, address: localhost}\n",
            "endpoints[0].address",
        ),
        (
            "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1}]}\nendpoints:\n  - {service: a, address: 127.0.0.1, cgroup: rel/path}\n",
            "endpoints[0].cgroup",
        ),
    ] {
        let e = err(text);
        assert_eq!(e.field, field, "{text}\n{e}");
        assert!(e.location.is_some(), "{e}");
        assert!(e.hint.is_some(), "{e}");
    }
}

#[test]
fn empty_sections_mean_none() {
    let c = parse(
        Path::new("m.yaml"),
        "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 1}]}\nendpoints:\n",
    )
    .unwrap();
    assert!(c.services[0].endpoints.is_empty());
    assert!(parse(Path::new("m.yaml"), "services:\n").unwrap().services.is_empty());
}

#[test]
fn syntax_error_and_empty_file() {
    let e = err("services:\n  - name: [unclosed\n");
    assert!(e.location.is_some(), "{e}");
    let e = err("   \n");
    assert!(e.message.contains("empty"));
}

#[test]
fn missing_file_says_so() {
    let e = crate::load(Path::new("/nonexistent/sluice/mesh.yaml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/sluice/mesh.yaml"), "{e}");
    assert!(e.message.contains("cannot read"));
}

#[test]
fn watcher_reports_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mesh.yaml");
    std::fs::write(&p, GOOD).unwrap();
    let mut w = crate::watch::Watcher::new(&p, Some(GOOD.as_bytes().to_vec()));
    assert!(w.poll().is_none());
    std::fs::write(&p, "services: [oops").unwrap();
    assert!(matches!(w.poll(), Some(crate::watch::Change::Invalid(_))));
    assert!(w.poll().is_none());
    std::fs::remove_file(&p).unwrap();
    assert!(matches!(w.poll(), Some(crate::watch::Change::Invalid(_))));
    assert!(w.poll().is_none());
    std::fs::write(&p, GOOD).unwrap();
    assert!(matches!(w.poll(), Some(crate::watch::Change::Valid(_))));
}

proptest! {
    // The parser must never panic, whatever it is fed; a refusal names the file.
    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        if let Err(e) = parse(Path::new("f.yaml"), &text) {
            prop_assert!(e.to_string().starts_with("f.yaml"));
        }
    }

    #[test]
    fn parser_never_panics_on_yamlish(
        parts in proptest::collection::vec(prop_oneof![
            Just("services:\n"), Just("  - name: a\n"), Just("    vips: [127.100.0.1]\n"),
            Just("    ports: [{port: 1}]\n"), Just("endpoints:\n"), Just("  - {service: a, address: 127.0.0.1}\n"),
            Just("x: y\n"), Just("  : \n"), Just("- [\n"), Just("&a *a\n"),
        ], 0..12)
    ) {
        let text: String = parts.concat();
        let _ = parse(Path::new("f.yaml"), &text);
    }
}

const POLICY: &str = "\
policy:
  interfaces: [veth0, veth1]
  default: allow
  egress_default: allow
  rate_limit: {packets_per_second: 1000, burst: 50}
  rules:
    - name: no-bad-net
      action: deny
      sources: [10.66.0.0/16, \"fd66::/16\"]
    - action: allow
      protocol: tcp
      ports: [22, \"8000-8100\"]
      destinations: [10.77.0.1]
    - action: deny
      direction: egress
      destinations: [192.0.2.0/24]
";

#[test]
fn policy_is_understood() {
    let c = parse(Path::new("p.yaml"), POLICY).unwrap();
    let p = c.policy.unwrap();
    assert_eq!(p.interfaces, ["veth0", "veth1"]);
    assert_eq!(p.rules.len(), 3);
    assert_eq!(p.rules[0].name, "no-bad-net");
    assert_eq!(p.rules[0].sources[1].mapped_bits(), 16);
    assert_eq!(p.rules[0].sources[0].mapped_bits(), 96 + 16);
    assert_eq!(p.rules[1].ports, [(22, 22), (8000, 8100)]);
    assert_eq!(p.rules[1].kernel_rules(), 2);
    assert_eq!(p.rules[1].destinations[0].prefix, 32);
    assert_eq!(p.rules[2].direction, crate::Direction::Egress);
    assert_eq!(p.rate_limit, Some(crate::RateLimit { packets_per_second: 1000, burst: 50 }));
    assert!(parse(Path::new("p.yaml"), "services: []\n").unwrap().policy.is_none());
}

#[test]
fn policy_refusals_name_the_field() {
    let base = "policy:\n  interfaces: [veth0]\n  rules:\n    - ";
    for (rule, field, hint) in [
        ("{action: deny, sources: [10.0.0.1/8]}", "policy.rules[0].sources[0]", "10.0.0.0/8"),
        ("{action: deny, sources: [10.0.0.0/33]}", "policy.rules[0].sources[0]", "prefix"),
        ("{action: deny, sources: [nonsense]}", "policy.rules[0].sources[0]", "10.0.0.0/8"),
        ("{action: deny, ports: [80]}", "policy.rules[0].ports[0]", "protocol: tcp"),
        ("{action: deny, protocol: tcp, ports: [\"90-80\"]}", "policy.rules[0].ports[0]", "low-high"),
        ("{action: deny, protocol: tcp, ports: [0]}", "policy.rules[0].ports[0]", "1 to 65535"),
        ("{action: drop}", "policy.rules[0].action", "allow or deny"),
        ("{action: deny, direction: sideways}", "policy.rules[0].direction", "ingress"),
        ("{action: deny, protocol: sctp}", "policy.rules[0].protocol", "tcp, udp"),
        ("{action: deny, colour: red}", "colour", "remove the field"),
    ] {
        let e = err(&format!("{base}{rule}\n"));
        assert_eq!(e.field, field, "{rule}: {e}");
        assert_eq!(e.location.map(|l| l.line), Some(4), "{rule}: {e}");
        assert!(e.hint.as_deref().unwrap_or("").contains(hint), "{rule}: {e}");
    }
}

#[test]
fn policy_limits() {
    let many: String =
        (0..65).map(|i| format!("    - {{action: deny, sources: [10.{i}.0.0/16]}}\n")).collect();
    let e = err(&format!("policy:\n  interfaces: [veth0]\n  rules:\n{many}"));
    assert_eq!(e.field, "policy.rules");
    assert!(e.message.contains("65"), "{e}");
    let e = err("policy:\n  rules:\n    - {action: deny}\n");
    assert_eq!(e.field, "policy.interfaces");
    let e = err("policy:\n  interfaces: [veth0]\n  rate_limit: {packets_per_second: 0}\n");
    assert_eq!(e.field, "policy.rate_limit.packets_per_second");
    let e = err("policy:\n  interfaces: [veth0, veth0]\n");
    assert_eq!(e.field, "policy.interfaces[1]");
}

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

const HTTP: &str = "\
services:
  - name: web
    vips: [127.100.0.20]
    ports: [{port: 80, protocol: http}]
    load_balancer: consistent_hash
    hash_header: X-User
    circuit_breaker: {max_connections: 2, max_pending_requests: 0, max_requests: 3}
    outlier_detection: {consecutive_failures: 2, ejection_time: 1500ms}
  - name: api
    vips: [127.100.0.21]
    ports: [{port: 8080}]
endpoints:
  - {service: web, address: 127.0.0.1, port: 9001, version: v1}
  - {service: web, address: 127.0.0.1, port: 9002, version: v2}
  - {service: api, address: 127.0.0.1}
routes:
  - name: canary
    service: web
    match:
      host: \"*.example.com\"
      path: {regex: \"/u/[0-9]+\"}
      methods: [get]
      headers: [{name: X-Canary, exact: \"1\"}, {name: x-off, present: false}]
    to: [{version: v1, weight: 90}, {version: v2, weight: 10}, {service: api, weight: 0}]
    request_headers: {set: {x-route: canary}, remove: [x-debug]}
    timeout: 2s
    retries: {attempts: 3, per_try_timeout: 0.5s, on: [5xx, connect-failure]}
  - service: web
";

#[test]
fn routes_are_understood() {
    use crate::{HostMatch, LoadBalancer, PathMatch, Protocol, ValueMatch};
    let c = parse(Path::new("mesh.yaml"), HTTP).unwrap();
    let web = &c.services[0];
    assert_eq!(web.ports[0].protocol, Protocol::Http);
    assert_eq!(c.services[1].ports[0].protocol, Protocol::Auto, "auto is the default");
    assert_eq!(web.load_balancer, LoadBalancer::ConsistentHash { header: "x-user".into() });
    assert_eq!(web.circuit_breaker.max_pending_requests, 0);
    let od = web.outlier_detection.unwrap();
    assert_eq!(
        (od.consecutive_failures, od.base_ejection.as_millis(), od.max_ejection_percent),
        (2, 1500, 50)
    );
    assert_eq!(c.routes.len(), 2);
    let r = &c.routes[0];
    assert_eq!(r.matches.host, Some(HostMatch::Suffix(".example.com".into())));
    assert_eq!(r.matches.path, Some(PathMatch::Regex("/u/[0-9]+".into())));
    assert_eq!(r.matches.methods, ["GET"]);
    assert_eq!(r.matches.headers[0].name, "x-canary");
    assert_eq!(r.matches.headers[1].value, ValueMatch::Absent);
    assert_eq!(r.to.len(), 3);
    assert_eq!((r.to[1].version.as_deref(), r.to[1].weight, r.to[1].port), (Some("v2"), 10, None));
    assert_eq!((r.to[2].service, r.to[2].port), (1, Some(0)));
    assert_eq!(r.request_headers.set, [("x-route".to_string(), "canary".to_string())]);
    assert_eq!(r.timeout.unwrap().as_secs(), 2);
    let retry = r.retries.as_ref().unwrap();
    assert_eq!((retry.attempts, retry.per_try_timeout.unwrap().as_millis()), (3, 500));
    assert!(retry.on.server_error && retry.on.connect_failure && !retry.on.grpc_unavailable);
    assert_eq!(c.routes[1].name, "web-1", "unnamed routes get service-index");
    assert_eq!(c.routes[1].to[0].service, 0);
}

#[test]
fn route_refusals_point_at_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        ("path: {regex: \"/u/[0-9]+\"}", "path: {regex: \"/u/[0-9+\"}", "invalid regex"),
        ("path: {regex: \"/u/[0-9]+\"}", "path: {prefix: api}", "does not start with /"),
        ("path: {regex: \"/u/[0-9]+\"}", "path: {prefix: /a, exact: /b}", "exactly one of"),
        (
            "{version: v2, weight: 10}",
            "{version: v3, weight: 10}",
            "no endpoint of service 'web' has version 'v3'",
        ),
        ("timeout: 2s", "timeout: 2 parsecs", "is not a duration"),
        ("attempts: 3", "attempts: 50", "50 attempts"),
        ("on: [5xx, connect-failure]", "on: [5xx, teapot]", "unknown retry condition 'teapot'"),
        ("remove: [x-debug]", "remove: [content-length]", "managed by the proxy"),
        ("methods: [get]", "methods: [\"GET /\"]", "is not an HTTP method"),
        ("service: api, weight: 0", "service: nope, weight: 0", "unknown service 'nope'"),
        ("hash_header: X-User", "hash_header: \"X User\"", "is not a header name"),
        ("load_balancer: consistent_hash", "load_balancer: random", "unknown load balancer 'random'"),
        ("max_requests: 3", "max_requests: 0", "must be at least 1"),
    ];
    for (from, to, want) in cases {
        assert!(HTTP.contains(from), "{from}");
        let text = HTTP.replacen(from, to, 1);
        let e = err(&text);
        let line = text.lines().position(|l| l.contains(to.split(':').next().unwrap_or(to))).unwrap() + 1;
        assert!(e.to_string().contains(want), "{to}: {e}");
        assert!(e.location.is_some(), "{to}: {e}");
        assert!(e.location.unwrap().line as usize >= line.min(6), "{to}: {e}");
        assert!(e.hint.is_some(), "{to}: {e}");
    }
    let e = err(&HTTP.replace("ports: [{port: 8080}]", "ports: [{port: 8080, protocol: tcp}]"));
    assert!(e.to_string().contains("port 8080 of service 'api' is tcp"), "{e}");
    let e = err(
        "services:\n  - {name: a, vips: [127.1.1.1], ports: [{port: 1, protocol: http, zero_hop: true}]}\n",
    );
    assert!(e.to_string().contains("zero_hop"), "{e}");
    assert_eq!(e.location.unwrap().line, 2);
}

#[test]
fn nodes_identity_and_authorization() {
    let text = format!(
        "{GOOD}nodes:\n  - {{name: a, address: 10.0.0.1}}\n  - {{name: b, address: 10.0.0.2, port: 16000}}\nidentity: {{trust_domain: mesh.test, cert_ttl: 1h, ca_dir: /tmp/ca}}\nauthorization:\n  default: deny\n  policies:\n    - {{name: p, action: allow, services: [echo], ports: [8080], from: [\"spiffe://mesh.test/ns/default/sa/web\", \"spiffe://mesh.test/ns/prod/*\", \"*\"], match: {{methods: [GET]}}}}\n"
    );
    let c = parse(Path::new("mesh.yaml"), &text).expect("valid");
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(c.nodes[1].socket_addr().to_string(), "10.0.0.2:16000");
    assert_eq!(c.nodes[0].port, 15008);
    assert_eq!(c.identity.spiffe_id("default", "web"), "spiffe://mesh.test/ns/default/sa/web");
    assert_eq!(c.identity.cert_ttl, std::time::Duration::from_secs(3600));
    assert_eq!(c.services[0].service_account, "echo");
    let p = &c.authorization.policies[0];
    assert_eq!(p.from.len(), 3);
    assert!(p.from[1].matches("spiffe://mesh.test/ns/prod/sa/x"));
    assert!(!p.from[0].matches("spiffe://mesh.test/ns/default/sa/webx"));
    assert_eq!(p.request.as_ref().map(|r| r.methods.clone()), Some(vec!["GET".to_string()]));
}

#[test]
fn security_refusals_say_where_and_how_to_fix() {
    let e = err(&format!(
        "{GOOD}authorization:\n  policies:\n    - {{action: allow, from: [\"spiffe://other.td/ns/a/sa/b\"]}}\n"
    ));
    assert_eq!(e.field, "authorization.policies[0].from[0]");
    assert!(e.message.contains("trust domain 'other.td'"), "{e}");
    assert_eq!(e.location.map(|l| l.line), Some(18));
    let e = err(&format!("{GOOD}authorization:\n  policies:\n    - {{action: allow, services: [nope]}}\n"));
    assert!(e.message.contains("unknown service 'nope'") && e.to_string().contains("known: echo, db"), "{e}");
    let e = err(&format!("{GOOD}authorization:\n  policies:\n    - {{action: maybe}}\n"));
    assert!(e.message.contains("unknown action") && e.to_string().contains("allow or deny"), "{e}");
    let e = err(&format!("{GOOD}identity: {{ca_dir: /a, ca_cert: /b, ca_key: /c}}\n"));
    assert!(e.message.contains("both ca_dir and ca_cert"), "{e}");
    let e = err(&format!("{GOOD}identity: {{ca_cert: /b}}\n"));
    assert!(e.message.contains("ca_cert without ca_key"), "{e}");
    let e = err(&format!("{GOOD}identity: {{mtls: maybe}}\n"));
    assert_eq!(e.field, "identity.mtls");
    assert!(e.to_string().contains("strict") && e.to_string().contains("disable"), "{e}");
    let ok = parse(Path::new("mesh.yaml"), &format!("{GOOD}identity: {{mtls: disable}}\n")).expect("valid");
    assert_eq!(ok.identity.mtls, crate::MtlsMode::Disable);
    let e = err(&format!("{GOOD}identity: {{cert_ttl: 1s}}\n"));
    assert!(e.message.contains("too short"), "{e}");
    let e = err(&format!("{GOOD}identity: {{trust_domain: \"spiffe://x\"}}\n"));
    assert!(e.to_string().contains("no spiffe://"), "{e}");
    let e = err(&GOOD.replace("    address: 127.0.0.1\n", "    address: 127.0.0.1\n    node: c\n"));
    assert_eq!(e.field, "endpoints[0].node");
    assert!(e.to_string().contains("nodes:"), "{e}");
    let e = err(&format!(
        "{GOOD}nodes:\n  - {{name: a, address: 10.0.0.1}}\n  - {{name: a, address: 10.0.0.2}}\n"
    ));
    assert!(e.message.contains("listed twice"), "{e}");
    let e = err(&format!("{GOOD}nodes:\n  - {{name: a, address: nope}}\n"));
    assert_eq!(e.field, "nodes[0].address");
}

#[test]
fn trace_file_instead_of_a_collector() {
    let c = parse(Path::new("mesh.yaml"), "telemetry:\n  tracing: {file: /var/log/t.jsonl, sampling: 0.5}\n")
        .unwrap();
    let t = c.telemetry.tracing.unwrap();
    assert_eq!(t.file.as_deref(), Some(Path::new("/var/log/t.jsonl")));
    assert_eq!(t.endpoint, None);
    let e = err("telemetry:\n  tracing: {file: t.jsonl}\n").to_string();
    assert!(
        e.starts_with("mesh.yaml:2:") && e.contains("telemetry.tracing.file") && e.contains("absolute"),
        "{e}"
    );
    let e = err("telemetry:\n  tracing: {file: /t.jsonl, endpoint: \"http://127.0.0.1:4317\"}\n").to_string();
    assert!(e.starts_with("mesh.yaml:2:") && e.contains("keep one"), "{e}");
}

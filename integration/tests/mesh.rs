//! Between nodes: two `sluice node`s in their own network namespaces, joined
//! by veths to a bridge in a third, talking mutual TLS 1.3. Applications on
//! node a call services whose endpoints run on node b: HTTP/1.1, HTTP/2,
//! gRPC (Python grpcio) and opaque TCP cross over, authorization refuses what
//! it should on both nodes (and in the kernel for zero-hop), curl with
//! wrong, missing and foreign certificates is refused at node b's port, and
//! sslyze finds nothing weak there.

#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use sluice_integration::{
    CgroupGuard, NetnsGuard, Node,
    netns::TwoNodes,
    node::NodeOpts,
    privileged,
    process::{ChildGuard, echo_process, grpc_peer, grpc_server, hello_in},
    target_bin,
};

const A_ADDR: &str = TwoNodes::A;
const B_ADDR: &str = TwoNodes::B;
const TD: &str = "mesh.test";

/// Runs `cmd` in `cgroup` (a mesh workload) inside `netns`.
fn run(cgroup: Option<&Path>, netns: &NetnsGuard, cmd: &str, args: &[&str]) -> Output {
    let mut c = Command::new(target_bin("sluice-testkit"));
    c.arg("exec");
    if let Some(cg) = cgroup {
        c.arg("--cgroup").arg(cg);
    }
    c.args(["--netns", netns.name(), "--", cmd]).args(args).stdin(Stdio::null());
    c.output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `curl` in a workload of node a: (HTTP status, body).
fn curl(cg: &Path, netns: &NetnsGuard, args: &[&str]) -> (u16, String) {
    let mut all = vec!["-s", "-m", "10", "-o", "-", "-w", "\n%{http_code} %{http_version}"];
    all.extend_from_slice(args);
    let out = run(Some(cg), netns, "curl", &all);
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = t.rsplit_once('\n').unwrap_or(("", t.as_str()));
    let code = status.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, format!("{body}|{status}"))
}

fn id(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

struct Mesh {
    net: TwoNodes,
    ca: tempfile::TempDir,
    a: Node,
    b: Node,
    frontend: CgroupGuard,
    other: CgroupGuard,
    _servers: Vec<ChildGuard>,
    _cgs: (CgroupGuard, CgroupGuard),
    /// The HTTP backend's port on node b.
    web_port: u16,
}

fn mesh(test: &str, ttl: &str) -> Mesh {
    let net = TwoNodes::new(test);
    let ca = tempfile::tempdir().unwrap();
    let cg_a = CgroupGuard::new(&format!("{test}a"));
    let cg_b = CgroupGuard::new(&format!("{test}b"));
    let frontend = cg_a.child("frontend");
    let other = cg_a.child("other");
    let (h, web) = hello_in(Some(net.b.name()), "127.0.2.1:0");
    let (g, grpc) = grpc_server(Some(net.b.name()), "pyb");
    let (e, echo) = echo_process(Some(net.b.name()), "127.0.2.1:0", false);
    let (web, echo) = (web.port(), echo.port());
    let config = format!(
        "nodes:
  - {{name: a, address: {A_ADDR}}}
  - {{name: b, address: {B_ADDR}}}
identity: {{trust_domain: {TD}, ca_dir: {ca}, cert_ttl: {ttl}}}
services:
  - {{name: web, vips: [127.100.9.10], ports: [{{port: 80, target_port: {web}}}]}}
  - {{name: web2, vips: [127.100.9.11], ports: [{{port: 80, target_port: {web}, protocol: http2}}]}}
  - {{name: greeter, vips: [127.100.9.12], ports: [{{port: 50051, target_port: {grpc}, protocol: grpc}}]}}
  - {{name: echo, vips: [127.100.9.13], ports: [{{port: 7000, target_port: {echo}, protocol: tcp}}]}}
  - {{name: frontend, vips: [127.100.9.20], ports: [{{port: 80}}]}}
endpoints:
  - {{service: web, address: 127.0.2.1, node: b}}
  - {{service: web2, address: 127.0.2.1, node: b}}
  - {{service: greeter, address: 127.0.0.1, node: b}}
  - {{service: echo, address: 127.0.2.1, node: b}}
  - {{service: frontend, address: 127.0.1.1, port: 80, node: a, cgroup: {fe}}}
authorization:
  policies:
    - {{name: frontend-calls, action: allow, services: [web, web2, greeter, echo], from: [\"{fid}\"]}}
    - {{name: no-admin, action: deny, services: [web], match: {{path: {{prefix: /admin}}}}}}
",
        ca = ca.path().display(),
        fe = frontend.path().display(),
        fid = id("frontend"),
    );
    let b = Node::start(NodeOpts {
        test: &format!("{test}nb"),
        config: &config,
        cgroup: cg_b.path(),
        netns: Some(&net.b),
        node_in_cgroup: false,
        args: &["--node-name", "b"],
    });
    let a = Node::start(NodeOpts {
        test: &format!("{test}na"),
        config: &config,
        cgroup: cg_a.path(),
        netns: Some(&net.a),
        node_in_cgroup: false,
        args: &["--node-name", "a"],
    });
    assert!(a.log().contains("mutual TLS between nodes on"), "{}", a.log());
    Mesh { net, ca, a, b, frontend, other, _servers: vec![h, g, e], _cgs: (cg_a, cg_b), web_port: web }
}

#[test]
fn http_grpc_and_tcp_cross_nodes_over_mutual_tls_with_authorization() {
    if !privileged("http_grpc_and_tcp_cross_nodes_over_mutual_tls_with_authorization") {
        return;
    }
    let m = mesh("meshx", "1h");
    let fe = m.frontend.path();
    // HTTP/1.1 from a workload on a to endpoints on b.
    for _ in 0..3 {
        let (code, body) = curl(fe, &m.net.a, &["http://127.100.9.10/hello"]);
        assert_eq!(code, 200, "{body}\n{}\n{}", m.a.log(), m.b.log());
        assert!(body.starts_with("hello world"), "{body}");
    }
    // HTTP/2 (h2c prior knowledge) on both sides.
    let (code, body) = curl(fe, &m.net.a, &["--http2-prior-knowledge", "http://127.100.9.11/x"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("200 2"), "HTTP/2 downstream: {body}");
    // gRPC with a different implementation (grpcio) at both ends.
    let out = run(Some(fe), &m.net.a, "/usr/bin/python3", &[&grpc_peer(), "client", "127.100.9.12:50051"]);
    let r = text(&out);
    assert!(out.status.success(), "{r}");
    for want in
        ["\"unary_ok\": true", "\"unary_trailer\": \"pyb\"", "\"stream_count\": 100", "\"bidi_ok\": true"]
    {
        assert!(r.contains(want), "{want} not in {r}");
    }
    // Opaque TCP through a CONNECT tunnel: 1 MB each way, intact, half-close included.
    let out = run(
        None,
        &m.net.a,
        target_bin("sluice-testkit").to_str().unwrap(),
        &["client", "--cgroup", fe.to_str().unwrap(), "127.100.9.13:7000", "1000000"],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let field =
        |k: &str| t.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or_default().to_string();
    assert_eq!(field("received="), "1000000", "{t}");
    assert_eq!(field("sent_sha="), field("received_sha="), "{t}");

    // A path a deny policy names: 403, decided on node a.
    let (code, body) = curl(fe, &m.net.a, &["http://127.100.9.10/admin/x"]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no-admin"), "{body}");
    // Another workload of node a (the default identity) may call nothing.
    let (code, body) = curl(m.other.path(), &m.net.a, &["http://127.100.9.10/hello"]);
    assert_eq!(code, 403, "{body}");
    let out = run(
        None,
        &m.net.a,
        target_bin("sluice-testkit").to_str().unwrap(),
        &[
            "client",
            "--cgroup",
            m.other.path().to_str().unwrap(),
            "--timeout-ms",
            "3000",
            "127.100.9.13:7000",
            "1000",
        ],
    );
    let t = text(&out);
    assert!(!t.contains("received=1000 "), "the TCP connection was refused: {t}");
    assert_eq!(m.a.metric("sluice_authz_denied_total{protocol=\"http\",origin=\"local\"}"), Some(2.0));
    assert_eq!(m.a.metric("sluice_authz_denied_total{protocol=\"tcp\",origin=\"local\"}"), Some(1.0));

    // What node b saw: requests and tunnels over mutual TLS from a.
    let streams_http = m.b.metric("sluice_mesh_streams_total{kind=\"http\"}").unwrap();
    assert!(streams_http >= 5.0, "3 + 1 + gRPC calls: {streams_http}");
    assert_eq!(m.b.metric("sluice_mesh_streams_total{kind=\"tcp\"}"), Some(1.0));
    assert!(m.b.metric("sluice_mtls_handshakes_total{side=\"server\",result=\"ok\"}").unwrap() >= 1.0);
    assert!(m.a.metric("sluice_mtls_handshakes_total{side=\"client\",result=\"ok\"}").unwrap() >= 1.0);
    assert_eq!(m.a.metric("sluice_tcp_tunnelled_total"), Some(1.0));
    assert!(m.a.metric("sluice_certificates_total{event=\"issued\"}").unwrap() >= 1.0);
}

/// curl straight at node b's mutual-TLS port, as the node of a would speak.
fn curl_b(m: &Mesh, cert: Option<(&Path, &Path)>, endpoint: &str, path: &str) -> (i32, String) {
    let url = format!("https://web.default.{TD}:15008{path}");
    let resolve = format!("web.default.{TD}:15008:{B_ADDR}");
    let mut args: Vec<String> = [
        "-s",
        "-k",
        "-m",
        "10",
        "--http2",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--resolve",
        &resolve,
        "-H",
        "x-sluice-service: web",
        "-H",
        "x-sluice-port: 80",
        "-H",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("x-sluice-endpoint: {endpoint}"));
    if let Some((c, k)) = cert {
        args.extend(["--cert".into(), c.display().to_string(), "--key".into(), k.display().to_string()]);
    }
    args.push(url);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(None, &m.net.a, "curl", &a);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string())
}

fn issue(ca_dir: &Path, id: &str, out: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (out.join(format!("{name}.pem")), out.join(format!("{name}-key.pem")));
    let o = Command::new(target_bin("sluice"))
        .args(["cert", "issue", "--ca-dir"])
        .arg(ca_dir)
        .args(["--id", id, "--cert"])
        .arg(&c)
        .arg("--key")
        .arg(&k)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    (c, k)
}

#[test]
fn node_port_refuses_wrong_or_missing_identities_and_rotates_without_dropping() {
    if !privileged("node_port_refuses_wrong_or_missing_identities_and_rotates_without_dropping") {
        return;
    }
    let m = mesh("meshid", "4s");
    let dir = tempfile::tempdir().unwrap();
    let web = format!("127.0.2.1:{}", m.web_port);
    // The identity the policy allows, from the mesh CA: delivered.
    let (c, k) = issue(m.ca.path(), &id("frontend"), dir.path(), "fe");
    let (code, body) = curl_b(&m, Some((&c, &k)), &web, "/hello");
    assert_eq!(code, 0, "{body}\n{}", m.b.log());
    assert!(body.starts_with("hello world") && body.ends_with("200"), "{body}");
    // A valid certificate of an identity no policy allows: 403 from node b.
    let (c2, k2) = issue(m.ca.path(), &id("intruder"), dir.path(), "in");
    let (_, body) = curl_b(&m, Some((&c2, &k2)), &web, "/hello");
    assert!(body.ends_with("403"), "{body}");
    assert!(body.contains(&id("intruder")), "{body}");
    assert_eq!(m.b.metric("sluice_authz_denied_total{protocol=\"http\",origin=\"from_node\"}"), Some(1.0));
    // An allowed identity naming something that is no endpoint of the service here.
    let (_, body) = curl_b(&m, Some((&c, &k)), &format!("{A_ADDR}:22"), "/hello");
    assert!(body.ends_with("403") && body.contains("no endpoint of service web"), "{body}");
    // The right SPIFFE ID from another CA, and no certificate at all: no TLS.
    let foreign = tempfile::tempdir().unwrap();
    let o = Command::new(target_bin("sluice"))
        .args(["cert", "ca", "--trust-domain", TD, "--dir"])
        .arg(foreign.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (c3, k3) = issue(foreign.path(), &id("frontend"), dir.path(), "foreign");
    let before = m.b.metric("sluice_mtls_handshakes_total{side=\"server\",result=\"failed\"}").unwrap();
    let (code, body) = curl_b(&m, Some((&c3, &k3)), &web, "/hello");
    assert!(code != 0 && !body.contains("hello"), "foreign CA: curl exit {code}: {body}");
    let (code, body) = curl_b(&m, None, &web, "/hello");
    assert!(code != 0 && !body.contains("hello"), "no certificate: curl exit {code}: {body}");
    let after = m.b.metric("sluice_mtls_handshakes_total{side=\"server\",result=\"failed\"}").unwrap();
    assert!(after >= before + 2.0, "{before} -> {after}");

    // Rotation: certificates live 4 s and renew at 2 s; a TCP connection that
    // spans several renewals keeps working, and new calls still get through.
    let out = run(
        None,
        &m.net.a,
        target_bin("sluice-testkit").to_str().unwrap(),
        &[
            "pingpong",
            "--cgroup",
            m.frontend.path().to_str().unwrap(),
            "--secs",
            "7",
            "127.100.9.13:7000",
            "64",
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}\n{}", m.a.log(), m.b.log());
    let trips: u64 =
        t.split_whitespace().find_map(|w| w.strip_prefix("round_trips=")).unwrap().parse().unwrap();
    assert!(trips > 100, "{t}");
    let renewed_a = m.a.metric("sluice_certificates_total{event=\"renewed\"}").unwrap();
    let renewed_b = m.b.metric("sluice_certificates_total{event=\"renewed\"}").unwrap();
    assert!(renewed_a >= 2.0 && renewed_b >= 2.0, "renewed: a {renewed_a}, b {renewed_b}");
    let (code, body) = curl(m.frontend.path(), &m.net.a, &["http://127.100.9.10/hello"]);
    assert_eq!(code, 200, "{body}");
    // A new handshake after the renewals gets the new certificate, still trusted.
    let (code, body) = curl_b(&m, Some((&c, &k)), &web, "/hello");
    assert_eq!(code, 0, "{body}");
    assert!(body.ends_with("200"), "{body}");
}

#[test]
fn sslyze_finds_only_tls13_with_strong_ciphers_on_the_node_port() {
    if !privileged("sslyze_finds_only_tls13_with_strong_ciphers_on_the_node_port") {
        return;
    }
    let m = mesh("meshssl", "1h");
    let report = tempfile::NamedTempFile::new().unwrap();
    let json_out = format!("--json_out={}", report.path().display());
    let out = run(
        None,
        &m.net.a,
        "/usr/bin/env",
        &[
            "PYTHONPATH=/opt/sluice-tools/sslyze",
            "/usr/bin/python3",
            "-m",
            "sslyze",
            "--sni",
            &format!("web.default.{TD}"),
            &json_out,
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--sslv2",
            "--sslv3",
            &format!("{B_ADDR}:15008"),
        ],
    );
    let t = std::fs::read_to_string(report.path()).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("sslyze JSON: {e}\n{t}\n{}", text(&out)));
    let server = &json["server_scan_results"][0];
    assert_eq!(server["scan_status"], "COMPLETED", "{t}");
    let r = &server["scan_result"];
    let accepted = |k: &str| -> Vec<String> {
        let x = &r[k];
        assert_eq!(x["status"], "COMPLETED", "{k}: {x}");
        x["result"]["accepted_cipher_suites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cipher_suite"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
        "tls_1_2_cipher_suites",
    ] {
        assert!(accepted(old).is_empty(), "{old} accepted: {:?}", accepted(old));
    }
    let tls13 = accepted("tls_1_3_cipher_suites");
    assert!(!tls13.is_empty(), "TLS 1.3 offered");
    for c in &tls13 {
        assert!(
            ["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"]
                .contains(&c.as_str()),
            "unexpected suite {c}"
        );
    }
    let _ = &m.net.hub;
}

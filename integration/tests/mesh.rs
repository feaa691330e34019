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
    netns::NodeNets,
    node::NodeOpts,
    privileged,
    process::{ChildGuard, client, client_timeout, echo_process, grpc_peer, grpc_server, hello_in},
    target_bin, wait_for,
};

const A_ADDR: &str = NodeNets::A;
const B_ADDR: &str = NodeNets::B;
const TD: &str = "mesh.test";
/// The echo service's address in the two-node mesh.
const ECHO_VIP: &str = "127.100.9.13:7000";

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
    net: NodeNets,
    ca: tempfile::TempDir,
    a: Node,
    b: Node,
    frontend: CgroupGuard,
    other: CgroupGuard,
    _servers: Vec<ChildGuard>,
    _cgs: (CgroupGuard, CgroupGuard),
    /// The HTTP backend's port on node b.
    web_port: u16,
    config: String,
}

/// Two nodes; `identity` is more of the `identity:` section (`cert_ttl: 1h`).
fn mesh(test: &str, identity: &str) -> Mesh {
    let net = NodeNets::new(test);
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
identity: {{trust_domain: {TD}, ca_dir: {ca}, {identity}}}
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
# A retried route: every attempt must still carry the caller's identity to b.
routes:
  - {{name: web-retries, service: web, retries: {{attempts: 2, on: [5xx]}}}}
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
    Mesh {
        net,
        ca,
        a,
        b,
        frontend,
        other,
        _servers: vec![h, g, e],
        _cgs: (cg_a, cg_b),
        web_port: web,
        config,
    }
}

#[test]
fn http_grpc_and_tcp_cross_nodes_over_mutual_tls_with_authorization() {
    if !privileged("http_grpc_and_tcp_cross_nodes_over_mutual_tls_with_authorization") {
        return;
    }
    let m = mesh("meshx", "cert_ttl: 1h");
    assert!(m.a.log().contains("mutual TLS between nodes on"), "{}", m.a.log());
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
    let r = client(Some(fe), Some(m.net.a.name()), ECHO_VIP.parse().unwrap(), 1_000_000, 16 * 1024).unwrap();
    assert!(r.intact() && r.received == 1_000_000, "{r:?}");

    // A path a deny policy names: 403, decided on node a.
    let (code, body) = curl(fe, &m.net.a, &["http://127.100.9.10/admin/x"]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no-admin"), "{body}");
    // Another workload of node a (the default identity) may call nothing.
    let (code, body) = curl(m.other.path(), &m.net.a, &["http://127.100.9.10/hello"]);
    assert_eq!(code, 403, "{body}");
    let r = client_timeout(
        Some(m.other.path()),
        Some(m.net.a.name()),
        ECHO_VIP.parse().unwrap(),
        1000,
        1000,
        3000,
    );
    assert!(!matches!(&r, Ok(x) if x.received == 1000), "the TCP connection was refused: {r:?}");
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
    curl_node(&m.net.a, B_ADDR, cert, endpoint, path)
}

/// curl from node a's namespace straight at the mutual-TLS port of the node
/// at `node_addr`, asking for service web (`endpoint` names the target).
fn curl_node(
    from: &NetnsGuard,
    node_addr: &str,
    cert: Option<(&Path, &Path)>,
    endpoint: &str,
    path: &str,
) -> (i32, String) {
    let url = format!("https://web.default.{TD}:15008{path}");
    let resolve = format!("web.default.{TD}:15008:{node_addr}");
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
    let out = run(None, from, "curl", &a);
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
    let m = mesh("meshid", "cert_ttl: 4s");
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
    let m = mesh("meshssl", "cert_ttl: 1h");
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

/// Issues `id`'s certificate into `<dir>/<ns>/<sa>/{cert,key}.pem`, the
/// layout of `identity.certificates.dir`.
fn issue_into(ca_dir: &Path, dir: &Path, ns: &str, sa: &str) {
    let d = dir.join(ns).join(sa);
    std::fs::create_dir_all(&d).unwrap();
    let (c, k) = issue(ca_dir, &format!("spiffe://{TD}/ns/{ns}/sa/{sa}"), &d, "new");
    std::fs::rename(c, d.join("cert.pem")).unwrap();
    std::fs::rename(k, d.join("key.pem")).unwrap();
}

/// Three nodes: a calls services whose endpoints run on b and on c. Nodes a
/// and b issue certificates with an external CA (`ca_cert` + `ca_key`);
/// node c holds certificate files issued elsewhere (`certificates:`) and
/// reads them again when they change.
#[test]
fn three_nodes_with_an_external_ca_and_certificate_files() {
    if !privileged("three_nodes_with_an_external_ca_and_certificate_files") {
        return;
    }
    let net = NodeNets::three("mesh3");
    let c_ns = net.c.as_ref().unwrap();
    let ca = tempfile::tempdir().unwrap();
    let o = Command::new(target_bin("sluice"))
        .args(["cert", "ca", "--trust-domain", TD, "--dir"])
        .arg(ca.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let files = tempfile::tempdir().unwrap();
    for sa in ["web", "echo"] {
        issue_into(ca.path(), files.path(), "default", sa);
    }
    let cgs: Vec<CgroupGuard> = ["mesh3a", "mesh3b", "mesh3c"].iter().map(|t| CgroupGuard::new(t)).collect();
    let frontend = cgs[0].child("frontend");
    let (hb, web_b) = hello_in(Some(net.b.name()), "127.0.2.1:0");
    let (hc, web_c) = hello_in(Some(c_ns.name()), "127.0.3.1:0");
    let (eb, echo_b) = echo_process(Some(net.b.name()), "127.0.2.1:0", false);
    let (ec, echo_c) = echo_process(Some(c_ns.name()), "127.0.3.1:0", false);
    let _servers = [hb, hc, eb, ec];
    let mesh = format!(
        "nodes:
  - {{name: a, address: {a}}}
  - {{name: b, address: {b}}}
  - {{name: c, address: {c}}}
services:
  - {{name: web, vips: [127.100.9.40], ports: [{{port: 80}}]}}
  - {{name: echo, vips: [127.100.9.41], ports: [{{port: 7000, protocol: tcp}}]}}
  - {{name: frontend, vips: [127.100.9.42], ports: [{{port: 80}}]}}
endpoints:
  - {{service: web, address: 127.0.2.1, port: {wb}, node: b}}
  - {{service: web, address: 127.0.3.1, port: {wc}, node: c}}
  - {{service: echo, address: 127.0.2.1, port: {eb}, node: b}}
  - {{service: echo, address: 127.0.3.1, port: {ec}, node: c}}
  - {{service: frontend, address: 127.0.1.1, port: 80, node: a, cgroup: {fe}}}
authorization:
  default: deny
  policies:
    - {{name: frontend-calls, action: allow, services: [web, echo], from: [\"{fid}\"]}}
",
        a = NodeNets::A,
        b = NodeNets::B,
        c = NodeNets::C,
        wb = web_b.port(),
        wc = web_c.port(),
        eb = echo_b.port(),
        ec = echo_c.port(),
        fe = frontend.path().display(),
        fid = id("frontend"),
    );
    let external = format!(
        "{mesh}identity: {{trust_domain: {TD}, ca_cert: {d}/ca.pem, ca_key: {d}/ca-key.pem}}\n",
        d = ca.path().display()
    );
    let from_files = format!(
        "{mesh}identity: {{trust_domain: {TD}, certificates: {{trust_bundle: {}/ca.pem, dir: {}}}}}\n",
        ca.path().display(),
        files.path().display()
    );
    let start = |test: &str, config: &str, cg: &CgroupGuard, ns: &NetnsGuard, name: &str| {
        Node::start(NodeOpts {
            test,
            config,
            cgroup: cg.path(),
            netns: Some(ns),
            node_in_cgroup: false,
            args: &["--node-name", name],
        })
    };
    let c = start("mesh3nc", &from_files, &cgs[2], c_ns, "c");
    let b = start("mesh3nb", &external, &cgs[1], &net.b, "b");
    let a = start("mesh3na", &external, &cgs[0], &net.a, "a");

    // HTTP: round robin over the endpoints on b and on c.
    for _ in 0..12 {
        let (code, body) = curl(frontend.path(), &net.a, &["http://127.100.9.40/hello"]);
        assert_eq!(code, 200, "{body}\n{}\n{}\n{}", a.log(), b.log(), c.log());
    }
    for (name, n) in [("b", &b), ("c", &c)] {
        let streams = n.metric("sluice_mesh_streams_total{kind=\"http\"}").unwrap();
        assert!(streams >= 3.0, "node {name} served {streams} of 12");
    }
    // TCP: ten connections, each intact, through tunnels to both nodes.
    let out = run(
        None,
        &net.a,
        target_bin("sluice-testkit").to_str().unwrap(),
        &[
            "client",
            "--cgroup",
            frontend.path().to_str().unwrap(),
            "--count",
            "10",
            "127.100.9.41:7000",
            "100000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for (name, n) in [("b", &b), ("c", &c)] {
        let streams = n.metric("sluice_mesh_streams_total{kind=\"tcp\"}").unwrap();
        assert!(streams >= 2.0, "node {name} took {streams} of 10 tunnels");
    }
    assert_eq!(a.metric("sluice_tcp_tunnelled_total"), Some(10.0));

    // Node c's files are read again when they change: a new handshake after
    // the web certificate was replaced gets (and trusts) the new one.
    let before = c.metric("sluice_certificates_total{event=\"renewed\"}").unwrap();
    issue_into(ca.path(), files.path(), "default", "web");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let dir = tempfile::tempdir().unwrap();
    let (fc, fk) = issue(ca.path(), &id("frontend"), dir.path(), "fe");
    let endpoint = format!("127.0.3.1:{}", web_c.port());
    let (code, body) = curl_node(&net.a, NodeNets::C, Some((&fc, &fk)), &endpoint, "/hello");
    assert_eq!(code, 0, "{body}\n{}", c.log());
    assert!(body.starts_with("hello world") && body.ends_with("200"), "{body}");
    let after = c.metric("sluice_certificates_total{event=\"renewed\"}").unwrap();
    assert!(after > before, "the replaced files were read again: {before} -> {after}");
    // Node c's default-deny holds for identities it has no allow for.
    let (ic, ik) = issue(ca.path(), &id("intruder"), dir.path(), "in");
    let (_, body) = curl_node(&net.a, NodeNets::C, Some((&ic, &ik)), &endpoint, "/hello");
    assert!(body.ends_with("403"), "{body}");
}

/// `identity.mtls: disable`: plaintext HTTP/2 between the nodes, and no peer
/// identity, so a policy that names sources never matches traffic from
/// another node.
#[test]
fn plaintext_between_nodes_when_mtls_is_disabled() {
    if !privileged("plaintext_between_nodes_when_mtls_is_disabled") {
        return;
    }
    let m = mesh("meshplain", "mtls: disable");
    assert!(m.b.log().contains("identity.mtls: disable"), "{}", m.b.log());
    let fe = m.frontend.path();
    // Node a lets its frontend call; node b cannot tell who is calling.
    let (code, body) = curl(fe, &m.net.a, &["http://127.100.9.10/hello"]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(m.b.metric("sluice_authz_denied_total{protocol=\"http\",origin=\"from_node\"}"), Some(1.0));
    assert_eq!(m.a.metric("sluice_authz_denied_total{protocol=\"http\",origin=\"local\"}"), Some(0.0));
    // Without source conditions the same calls go through.
    let open = m.config.replace(&format!("from: [\"{}\"]", id("frontend")), "");
    assert_ne!(open, m.config);
    m.a.write_config(&open);
    m.b.write_config(&open);
    wait_for("the reload on both nodes", std::time::Duration::from_secs(10), || {
        (curl(fe, &m.net.a, &["http://127.100.9.10/hello"]).0 == 200).then_some(())
    });
    let r = client(Some(fe), Some(m.net.a.name()), ECHO_VIP.parse().unwrap(), 1_000_000, 16 * 1024).unwrap();
    assert!(r.intact() && r.received == 1_000_000, "{r:?}");
    assert_eq!(m.b.metric("sluice_mesh_streams_total{kind=\"tcp\"}"), Some(1.0));
    // No TLS anywhere: node b's port speaks HTTP/2 in the clear.
    assert_eq!(m.b.metric("sluice_mtls_handshakes_total{side=\"server\",result=\"ok\"}"), Some(0.0));
    assert_eq!(m.a.metric("sluice_mtls_handshakes_total{side=\"client\",result=\"ok\"}"), Some(0.0));
    let out = run(
        None,
        &m.net.a,
        "curl",
        &[
            "-s",
            "-m",
            "10",
            "--http2-prior-knowledge",
            "-H",
            "x-sluice-service: web",
            "-H",
            "x-sluice-port: 80",
            "-H",
            &format!("x-sluice-endpoint: 127.0.2.1:{}", m.web_port),
            &format!("http://{B_ADDR}:15008/hello"),
        ],
    );
    assert!(text(&out).starts_with("hello world"), "{}", text(&out));
}

//! The L7 path end to end: real clients (curl, h2load, raw sockets) inside a
//! mesh cgroup dial service VIPs; the kernel redirects them to the node, which
//! detects HTTP and routes every request to in-process HTTP endpoints.

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, path::Path, time::Duration};

use sluice_integration::{
    CgroupGuard, HttpEndpoint, Node,
    node::NodeOpts,
    privileged,
    process::{raw, run_in, spawn_in},
};

struct Mesh {
    node: Node,
    cg: CgroupGuard,
}

fn mesh(test: &str, config: &str, args: &[&str]) -> Mesh {
    let cg = CgroupGuard::new(test);
    let node =
        Node::start(NodeOpts { test, config, cgroup: cg.path(), netns: None, node_in_cgroup: false, args });
    Mesh { node, cg }
}

/// What curl saw: status, response headers (lowercase names), body.
#[derive(Debug)]
struct Curl {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
    stderr: String,
}

impl Curl {
    fn field(&self, name: &str) -> Option<&str> {
        self.body.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    }
}

fn curl(cg: &Path, args: &[&str]) -> Curl {
    let mut all = vec!["-sS", "-D", "/dev/stderr", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = run_in(cg, "curl", &all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl {args:?} failed: {stderr}");
    // The last header block (after any 100 Continue).
    let block =
        stderr.split("\r\n\r\n").filter(|b| b.starts_with("HTTP/")).last().unwrap_or_default().to_string();
    let mut lines = block.lines();
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Curl { status, headers, body, stderr }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}

#[test]
fn curl_http1_and_h2_through_the_mesh() {
    if !privileged("curl_http1_and_h2_through_the_mesh") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.1.10], ports: [{{port: 80}}]}}\nendpoints:\n  - {{service: web, address: 127.0.0.1, port: {}}}\n",
        a.addr.port()
    );
    let m = mesh("curl_http1_and_h2", &config, &[]);
    // HTTP/1.1 keep-alive: two requests, one connection.
    let r = curl(m.cg.path(), &["http://127.100.1.10/one", "http://127.100.1.10/two?x=1"]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(r.body.contains("path=/one") && r.body.contains("path=/two?x=1"), "{}", r.body);
    assert!(r.body.contains("version=HTTP/1.1"));
    assert!(r.body.contains("h:host=127.100.1.10"), "Host is kept: {}", r.body);
    assert_eq!(m.node.metric("sluice_http_connections_total"), Some(1.0), "keep-alive towards the proxy");
    assert_eq!(m.node.metric("sluice_http_requests_total"), Some(2.0));
    assert_eq!(a.connections(), 1, "and towards the endpoint, one pooled connection");
    // A 1 MiB upload, Content-Length and chunked, arrives intact.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload");
    let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let at = format!("@{}", file.display());
    let r = curl(m.cg.path(), &["--data-binary", &at, "http://127.100.1.10/up"]);
    assert_eq!(r.field("body_len"), Some("1048576"));
    assert_eq!(r.field("body_sha"), Some(sha256_hex(&data).as_str()));
    let r = curl(
        m.cg.path(),
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &at, "http://127.100.1.10/up"],
    );
    assert_eq!(r.field("body_sha"), Some(sha256_hex(&data).as_str()), "chunked upload");
    // HTTP/2 with prior knowledge (h2c), GET and the same upload.
    let r = curl(m.cg.path(), &["--http2-prior-knowledge", "http://127.100.1.10/h2"]);
    assert_eq!(r.status, 200);
    assert!(r.stderr.starts_with("HTTP/2 200"), "{}", r.stderr);
    assert!(r.body.contains("version=HTTP/2.0"), "h2 downstream → h2 upstream: {}", r.body);
    let r = curl(m.cg.path(), &["--http2-prior-knowledge", "--data-binary", &at, "http://127.100.1.10/up2"]);
    assert_eq!(r.field("body_sha"), Some(sha256_hex(&data).as_str()));
    // The detection counters saw both protocols.
    let metrics = m.node.admin_get("/metrics");
    let det = |p: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("sluice_protocol_detected_total{{protocol=\"{p}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(det("http1") >= 3.0 && det("http2") >= 2.0, "{metrics}");
}

#[test]
fn opaque_tcp_and_tls_pass_through_on_auto_ports() {
    if !privileged("opaque_tcp_and_tls_pass_through_on_auto_ports") {
        return;
    }
    let echo = sluice_integration::EchoServer::start("127.0.0.1:0");
    let config = format!(
        "services:\n  - {{name: echo, vips: [127.100.1.11], ports: [{{port: 7}}]}}\nendpoints:\n  - {{service: echo, address: 127.0.0.1, port: {}}}\n",
        echo.addr.port()
    );
    let m = mesh("opaque_on_auto", &config, &[]);
    let vip = "127.100.1.11:7".parse().unwrap();
    let r = sluice_integration::client(Some(m.cg.path()), None, vip, 100_000, 1000).unwrap();
    assert!(r.intact(), "{r:?}");
    // A TLS ClientHello is forwarded as opaque bytes: the echo returns it intact.
    let hello = [0x16u8, 3, 1, 0, 5, 1, 0, 0, 1, 0];
    let x = raw(m.cg.path(), vip, &hello, 500);
    assert_eq!(x.response, hello);
    // A server-first protocol: the client sends nothing, detection gives up
    // after its 100 ms and the banner still arrives.
    let banner = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let banner_port = banner.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in banner.incoming().flatten() {
            use std::io::Write;
            let mut c = c;
            let _ = c.write_all(b"220 smtp.example ESMTP ready\r\n");
        }
    });
    m.node.write_config(&format!(
        "services:\n  - {{name: echo, vips: [127.100.1.11], ports: [{{port: 7}}]}}\n  - {{name: smtp, vips: [127.100.1.12], ports: [{{port: 25}}]}}\nendpoints:\n  - {{service: echo, address: 127.0.0.1, port: {}}}\n  - {{service: smtp, address: 127.0.0.1, port: {banner_port}}}\n",
        echo.addr.port()
    ));
    let smtp = "127.100.1.12:25".parse().unwrap();
    let x = sluice_integration::wait_for("the smtp service", Duration::from_secs(5), || {
        let x = raw(m.cg.path(), smtp, b"", 1500);
        x.text().starts_with("220 ").then_some(x)
    });
    assert_eq!(x.text(), "220 smtp.example ESMTP ready\r\n");
    let metrics = m.node.admin_get("/metrics");
    assert!(metrics.contains("sluice_protocol_detected_total{protocol=\"timeout\"} 1"), "{metrics}");
    assert!(metrics.contains("sluice_protocol_detected_total{protocol=\"tls\"} 1"), "{metrics}");
    assert!(metrics.contains("sluice_protocol_detected_total{protocol=\"opaque\"} 1"), "{metrics}");
}

fn endpoints_yaml(service: &str, eps: &[(&HttpEndpoint, Option<&str>)]) -> String {
    eps.iter()
        .map(|(e, v)| {
            let version = v.map(|v| format!(", version: {v}")).unwrap_or_default();
            format!("  - {{service: {service}, address: 127.0.0.1, port: {}{version}}}\n", e.addr.port())
        })
        .collect()
}

#[test]
fn routes_match_split_and_edit_headers() {
    if !privileged("routes_match_split_and_edit_headers") {
        return;
    }
    let (v1, v2, api) = (HttpEndpoint::start("v1"), HttpEndpoint::start("v2"), HttpEndpoint::start("api"));
    let config = format!(
        "services:
  - {{name: web, vips: [127.100.1.20], ports: [{{port: 80, protocol: http}}]}}
  - {{name: api, vips: [127.100.1.21], ports: [{{port: 8080}}]}}
endpoints:
{}{}routes:
  - name: to-api
    service: web
    match: {{path: {{prefix: /api/}}, methods: [POST]}}
    to: [{{service: api}}]
  - name: by-host
    service: web
    match: {{host: \"*.beta.local\"}}
    to: [{{version: v2}}]
  - name: canary
    service: web
    match: {{headers: [{{name: x-canary, exact: \"yes\"}}]}}
    to: [{{version: v2}}]
    request_headers: {{set: {{x-route: canary}}, remove: [x-secret]}}
    response_headers: {{set: {{x-served-by: sluice}}}}
  - name: users
    service: web
    match: {{path: {{regex: \"/users/[0-9]+\"}}}}
    to: [{{version: v1}}]
  - name: split
    service: web
    match: {{path: {{prefix: /}}, methods: [GET]}}
    to: [{{version: v1, weight: 80}}, {{version: v2, weight: 20}}]
",
        endpoints_yaml("web", &[(&v1, Some("v1")), (&v2, Some("v2"))]),
        endpoints_yaml("api", &[(&api, None)]),
    );
    let m = mesh("routes_match_split", &config, &[]);
    let cg = m.cg.path();
    let u = |p: &str| format!("http://127.100.1.20{p}");
    // Method + path prefix → another service.
    assert_eq!(curl(cg, &["-X", "POST", &u("/api/x")]).headers["x-endpoint"], "api");
    // Host suffix.
    assert_eq!(curl(cg, &["-H", "Host: a.beta.local", &u("/x")]).headers["x-endpoint"], "v2");
    // Header match, and header edits both ways.
    let r = curl(cg, &["-H", "x-canary: yes", "-H", "x-secret: 1", "-H", "x-keep: 2", &u("/x")]);
    assert_eq!(r.headers["x-endpoint"], "v2");
    assert!(r.body.contains("h:x-route=canary") && r.body.contains("h:x-keep=2"), "{}", r.body);
    assert!(!r.body.contains("x-secret"), "removed: {}", r.body);
    assert_eq!(r.headers["x-served-by"], "sluice");
    // Regex path (whole path).
    assert_eq!(curl(cg, &[&u("/users/42")]).headers["x-endpoint"], "v1");
    // Nothing matches a PUT to /users/x: 404 with the reason.
    let r = curl(cg, &["-X", "PUT", &u("/users/x")]);
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-sluice-error"], "no_route");
    assert!(r.body.contains("no route of service web matches PUT /users/x"), "{}", r.body);
    // 80/20 split over 200 requests (one curl, keep-alive).
    let urls: Vec<String> = (0..200).map(|i| u(&format!("/s{i}"))).collect();
    let mut args: Vec<&str> = vec!["-w", "%header{x-endpoint}\\n"];
    args.extend(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]));
    let out =
        run_in(cg, "curl", &args.iter().copied().chain(["--max-time", "30", "-sS"]).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    let to_v2 = text.lines().filter(|l| *l == "v2").count();
    let to_v1 = text.lines().filter(|l| *l == "v1").count();
    assert_eq!(to_v1 + to_v2, 200, "{text}");
    // Binomial(200, 0.2): mean 40, sd 5.7; 20..62 is beyond 3.5 sd.
    assert!((20..=62).contains(&to_v2), "v2 got {to_v2} of 200");
}

#[test]
fn retries_timeouts_and_the_retry_budget() {
    if !privileged("retries_timeouts_and_the_retry_budget") {
        return;
    }
    let (a, b) = (HttpEndpoint::start("a"), HttpEndpoint::start("b"));
    // A port nobody listens on: connect failures.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "services:
  - {{name: flaky, vips: [127.100.1.30], ports: [{{port: 80, protocol: http}}]}}
  - {{name: half, vips: [127.100.1.31], ports: [{{port: 80, protocol: http}}]}}
  - {{name: slow, vips: [127.100.1.32], ports: [{{port: 80, protocol: http}}]}}
  - {{name: broken, vips: [127.100.1.33], ports: [{{port: 80, protocol: http}}]}}
endpoints:
{}  - {{service: half, address: 127.0.0.1, port: {dead}}}
{}{}{}routes:
  - {{service: flaky, retries: {{attempts: 3, on: [5xx]}}}}
  - {{service: half, retries: {{attempts: 2, on: [connect-failure]}}}}
  - name: slow-timeouts
    service: slow
    timeout: 600ms
    retries: {{attempts: 3, per_try_timeout: 150ms, on: [gateway-error]}}
  - {{service: broken, retries: {{attempts: 3, on: [5xx], budget_percent: 20, min_retries_per_second: 0}}}}
",
        endpoints_yaml("flaky", &[(&a, None)]),
        endpoints_yaml("half", &[(&b, None)]),
        endpoints_yaml("slow", &[(&a, None)]),
        endpoints_yaml("broken", &[(&b, None)]),
    );
    let m = mesh("retries_timeouts", &config, &[]);
    let cg = m.cg.path();
    // 5xx: the first two attempts fail, the third succeeds; the client sees 200.
    let before = a.requests();
    let r = curl(cg, &["http://127.100.1.30/fail/k1/2"]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(a.requests() - before, 3, "three attempts reached the endpoint");
    // Out of attempts: the client sees the endpoint's last 503.
    let r = curl(cg, &["http://127.100.1.30/fail/k2/5"]);
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-endpoint"], "a", "the endpoint's own answer, not the proxy's");
    // Connect failure → the other endpoint, every time.
    for i in 0..6 {
        let r = curl(cg, &[&format!("http://127.100.1.31/c{i}")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-endpoint"], "b");
    }
    // Per-try timeout: 150 ms tries of a 400 ms answer, retried, then the
    // route's 600 ms deadline answers 504 with the reason.
    let started = std::time::Instant::now();
    let r = curl(cg, &["-H", "x-delay-ms: 400", "http://127.100.1.32/slow"]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        r.body.contains("per-try timeout of 150ms") || r.body.contains("route timeout of 600ms"),
        "{}",
        r.body
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let r = curl(cg, &["-H", "x-delay-ms: 50", "http://127.100.1.32/ok"]);
    assert_eq!(r.status, 200);
    // The budget: an always-failing endpoint, 3 attempts, 20% budget, no floor:
    // 50 requests make at most ~10 retries, not 100.
    b.set_always(503);
    let before = b.requests();
    let urls: Vec<String> = (0..50).map(|i| format!("http://127.100.1.33/b{i}")).collect();
    let mut args = vec!["-sS", "-w", "%{http_code}\\n", "--max-time", "30"];
    args.extend(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]));
    let out = run_in(cg, "curl", &args);
    b.set_always(0);
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().filter(|c| *c == "503").count(), 50, "{codes}");
    let attempts = b.requests() - before;
    assert!((55..=62).contains(&attempts), "50 requests made {attempts} attempts");
    assert!(m.node.metric("sluice_http_retry_budget_exhausted_total").unwrap() >= 35.0);
}

#[test]
fn circuit_breaker_and_outlier_detection() {
    if !privileged("circuit_breaker_and_outlier_detection") {
        return;
    }
    let (good, bad) = (HttpEndpoint::start("good"), HttpEndpoint::start("bad"));
    let config = format!(
        "services:
  - name: tight
    vips: [127.100.1.40]
    ports: [{{port: 80, protocol: http}}]
    circuit_breaker: {{max_requests: 2, max_pending_requests: 0}}
  - name: pool
    vips: [127.100.1.41]
    ports: [{{port: 80, protocol: http}}]
    circuit_breaker: {{max_connections: 1, max_pending_requests: 1}}
  - name: od
    vips: [127.100.1.42]
    ports: [{{port: 80, protocol: http}}]
    outlier_detection: {{consecutive_failures: 2, ejection_time: 1500ms, max_ejection_percent: 50}}
endpoints:
{}{}{}",
        endpoints_yaml("tight", &[(&good, None)]),
        endpoints_yaml("pool", &[(&good, None)]),
        endpoints_yaml("od", &[(&good, None), (&bad, None)]),
    );
    let m = mesh("circuit_outlier", &config, &[]);
    let cg = m.cg.path();
    // 5 concurrent slow requests, at most 2 in flight: 2 answered, 3 refused at once.
    let slow = |url: &str| {
        spawn_in(
            cg,
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %header{x-sluice-error}",
                "-H",
                "x-delay-ms: 700",
                "--max-time",
                "10",
                url,
            ],
        )
    };
    let codes = |kids: Vec<std::process::Child>| {
        let mut v: Vec<String> = kids
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
            .collect();
        v.sort();
        v
    };
    let kids: Vec<_> = (0..5).map(|_| slow("http://127.100.1.40/")).collect();
    let got = codes(kids);
    assert_eq!(
        got,
        ["200 ", "200 ", "503 circuit_breaker", "503 circuit_breaker", "503 circuit_breaker"],
        "{got:?}"
    );
    assert!(m.node.metric("sluice_http_circuit_open_total").unwrap() >= 3.0);
    // One connection, one pending request: of 3 concurrent requests one waits
    // for the connection and one is refused.
    let kids: Vec<_> = (0..3).map(|_| slow("http://127.100.1.41/")).collect();
    let got = codes(kids);
    assert_eq!(got, ["200 ", "200 ", "503 circuit_breaker"], "{got:?}");
    // Outlier detection: 'bad' answers 500; after 2 in a row it is ejected and
    // 'good' takes everything, until the ejection time is over.
    bad.set_always(500);
    let ask = |n: usize| -> Vec<String> {
        let urls: Vec<String> = (0..n).map(|i| format!("http://127.100.1.42/o{i}")).collect();
        let mut args = vec!["-sS", "-w", "%header{x-endpoint}\\n", "--max-time", "20"];
        args.extend(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]));
        String::from_utf8_lossy(&run_in(cg, "curl", &args).stdout).lines().map(str::to_string).collect()
    };
    let first = ask(10);
    let bads = first.iter().filter(|e| *e == "bad").count();
    assert_eq!(bads, 2, "two failures, then ejected: {first:?}");
    assert!(
        first[first.iter().rposition(|e| e == "bad").unwrap() + 1..].iter().all(|e| e == "good"),
        "{first:?}"
    );
    assert_eq!(m.node.metric("sluice_http_outlier_ejections_total"), Some(1.0));
    std::thread::sleep(Duration::from_millis(1700));
    let later = ask(4);
    assert!(later.iter().any(|e| e == "bad"), "back after the ejection time: {later:?}");
}

#[test]
fn request_smuggling_shapes_get_400_and_close() {
    if !privileged("request_smuggling_shapes_get_400_and_close") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.1.50], ports: [{{port: 80}}]}}\nendpoints:\n{}",
        endpoints_yaml("web", &[(&a, None)])
    );
    let m = mesh("smuggling", &config, &["--http-header-timeout-ms", "400", "--http-max-headers", "20"]);
    let vip = "127.100.1.50:80".parse().unwrap();
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ];
    for req in cases {
        let before = a.requests();
        let x = raw(m.cg.path(), vip, req, 3000);
        let text = x.text();
        assert!(text.starts_with("HTTP/1.1 400"), "{:?} → {text:?}", String::from_utf8_lossy(req));
        assert!(x.closed_after_ms.is_some(), "connection closed after the 400");
        assert_eq!(a.requests(), before, "nothing reached the endpoint");
    }
    assert!(m.node.metric("sluice_http_refused_total").unwrap() >= 5.0);
    // A good request then a bad one on the same connection: the first is answered.
    let x = raw(m.cg.path(), vip, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 3000);
    let text = x.text();
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("HTTP/1.1 400"), "{text}");
    // Too many headers: 431.
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..30 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let x = raw(m.cg.path(), vip, &many, 3000);
    assert!(x.text().starts_with("HTTP/1.1 431"), "{}", x.text());
    // A head over the size limit (32 KiB by default): 431 too.
    let huge = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(40_000));
    let x = raw(m.cg.path(), vip, huge.as_bytes(), 3000);
    assert!(x.text().starts_with("HTTP/1.1 431"), "{}", x.text());
    // A head that never ends is cut off by the header read timeout (400 ms).
    let x = raw(m.cg.path(), vip, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1", 5000);
    let after = x.closed_after_ms.expect("closed by the proxy");
    assert!((300..3000).contains(&after), "closed after {after} ms");
    sluice_integration::wait_for("the header timeout to be counted", Duration::from_secs(5), || {
        (m.node.metric("sluice_http_header_timeouts_total") == Some(1.0)).then_some(())
    });
}

#[test]
fn websocket_upgrade_passes_through() {
    if !privileged("websocket_upgrade_passes_through") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: ws, vips: [127.100.1.60], ports: [{{port: 80}}]}}\nendpoints:\n{}",
        endpoints_yaml("ws", &[(&a, None)])
    );
    let m = mesh("websocket", &config, &[]);
    let req = b"GET /chat HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nhello after upgrade \x00\x01\x02";
    let x = raw(m.cg.path(), "127.100.1.60:80".parse().unwrap(), req, 1500);
    let text = x.text();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.to_ascii_lowercase().contains("upgrade: websocket"), "{text}");
    assert!(x.response.ends_with(b"hello after upgrade \x00\x01\x02"), "echoed through the tunnel: {text:?}");
    assert_eq!(m.node.metric("sluice_http_upgrades_total"), Some(1.0));
}

#[test]
fn route_reload_keeps_requests_in_flight() {
    if !privileged("route_reload_keeps_requests_in_flight") {
        return;
    }
    let (v1, v2) = (HttpEndpoint::start("v1"), HttpEndpoint::start("v2"));
    let eps = endpoints_yaml("web", &[(&v1, Some("v1")), (&v2, Some("v2"))]);
    let cfg = |version: &str| {
        format!(
            "services:\n  - {{name: web, vips: [127.100.1.70], ports: [{{port: 80, protocol: http}}]}}\nendpoints:\n{eps}routes:\n  - {{service: web, to: [{{version: {version}}}]}}\n"
        )
    };
    let m = mesh("route_reload", &cfg("v1"), &[]);
    let cg = m.cg.path();
    assert_eq!(curl(cg, &["http://127.100.1.70/"]).headers["x-endpoint"], "v1");
    // A slow request in flight while the routes change.
    let slow = spawn_in(
        cg,
        "curl",
        &[
            "-sS",
            "-w",
            "\\n%{http_code}",
            "-H",
            "x-delay-ms: 1500",
            "--max-time",
            "10",
            "http://127.100.1.70/slow",
        ],
    );
    sluice_integration::wait_for("the slow request to reach v1", Duration::from_secs(5), || {
        (v1.requests() >= 2).then_some(())
    });
    m.node.write_config(&cfg("v2"));
    sluice_integration::wait_for("the new route", Duration::from_secs(5), || {
        (curl(cg, &["http://127.100.1.70/"]).headers["x-endpoint"] == "v2").then_some(())
    });
    let out = slow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("200") && text.contains("endpoint=v1"),
        "the in-flight request finished on v1: {text}"
    );
}

/// The Python gRPC peer (grpcio, C-core: another implementation than ours).
fn grpc_peer() -> String {
    format!("{}/grpc/peer.py", env!("CARGO_MANIFEST_DIR"))
}

fn grpc_server(name: &str) -> (sluice_integration::process::ChildGuard, u16) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args([grpc_peer().as_str(), "server", name])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with grpcio (apt install python3-grpcio)");
    let stdout = child.stdout.take().unwrap();
    let guard = sluice_integration::process::ChildGuard(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).expect("grpc server port");
    (guard, port)
}

#[test]
fn grpc_python_client_and_server_through_the_mesh() {
    if !privileged("grpc_python_client_and_server_through_the_mesh") {
        return;
    }
    let (_server, port) = grpc_server("py1");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "services:
  - {{name: greeter, vips: [127.100.1.80], ports: [{{port: 50051, protocol: grpc}}]}}
  - {{name: sniffed, vips: [127.100.1.81], ports: [{{port: 50051}}]}}
  - {{name: down, vips: [127.100.1.82], ports: [{{port: 50051, protocol: grpc}}]}}
endpoints:
  - {{service: greeter, address: 127.0.0.1, port: {port}}}
  - {{service: sniffed, address: 127.0.0.1, port: {port}}}
  - {{service: down, address: 127.0.0.1, port: {dead}}}
routes:
  - {{service: greeter, retries: {{attempts: 3, on: [unavailable]}}}}
"
    );
    let m = mesh("grpc_python", &config, &[]);
    let py = |args: &[&str]| {
        let mut all = vec![grpc_peer()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = run_in(m.cg.path(), "/usr/bin/python3", &all);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Declared gRPC, with retries on UNAVAILABLE: unary (100 KiB), server
    // streaming, bidi streaming, trailers, a status passed through, and a
    // call that fails twice with UNAVAILABLE and succeeds on the third try.
    let r = py(&["client", "127.100.1.80:50051"]);
    for want in [
        "\"unary_ok\": true",
        "\"unary_trailer\": \"py1\"",
        "\"stream_count\": 100",
        "\"stream_in_order\": true",
        "\"fail_code\": \"NOT_FOUND\"",
        "\"fail_details\": \"failed on purpose by py1\"",
        "\"flaky\": \"ok after 3\"",
        "\"bidi_ok\": true",
    ] {
        assert!(r.contains(want), "{want} not in {r}");
    }
    assert!(m.node.metric("sluice_http_retries_total").unwrap() >= 2.0);
    // Detected (auto port): the same works; no retry route here, so the flaky
    // call's UNAVAILABLE reaches the client.
    let r = py(&["client", "127.100.1.81:50051", "k2"]);
    assert!(r.contains("\"unary_ok\": true") && r.contains("\"bidi_ok\": true"), "{r}");
    assert!(r.contains("\"flaky\": \"UNAVAILABLE\""), "{r}");
    // The proxy's own failure is a gRPC status with a readable message.
    let r = py(&["call", "127.100.1.82:50051", "Unary", "x"]);
    assert!(r.starts_with("UNAVAILABLE upstream 127.0.0.1:"), "{r}");
    assert!(r.contains("refused the connection (service down)"), "{r}");
}

#[test]
fn h2load_many_streams_over_few_connections() {
    if !privileged("h2load_many_streams_over_few_connections") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.1.90], ports: [{{port: 80}}]}}\nendpoints:\n{}",
        endpoints_yaml("web", &[(&a, None)])
    );
    let m = mesh("h2load", &config, &[]);
    let out = run_in(m.cg.path(), "h2load", &["-n", "2000", "-c", "4", "-m", "20", "http://127.100.1.90/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    // h2 upstream: one multiplexed connection to the endpoint.
    assert_eq!(a.connections(), 1, "one HTTP/2 connection to the endpoint");
    assert_eq!(m.node.metric("sluice_http_requests_total"), Some(2000.0));
}

#[test]
fn least_request_and_consistent_hash() {
    if !privileged("least_request_and_consistent_hash") {
        return;
    }
    let (slow, fast) = (HttpEndpoint::start("slow"), HttpEndpoint::start("fast"));
    let (h1, h2, h3) = (HttpEndpoint::start("h1"), HttpEndpoint::start("h2"), HttpEndpoint::start("h3"));
    let config = format!(
        "services:
  - {{name: lr, vips: [127.100.1.100], ports: [{{port: 80, protocol: http}}], load_balancer: least_request}}
  - {{name: sticky, vips: [127.100.1.101], ports: [{{port: 80, protocol: http}}], load_balancer: consistent_hash, hash_header: x-user}}
endpoints:
{}{}",
        endpoints_yaml("lr", &[(&slow, None), (&fast, None)]),
        endpoints_yaml("sticky", &[(&h1, None), (&h2, None), (&h3, None)]),
    );
    let m = mesh("lb_algorithms", &config, &[]);
    let cg = m.cg.path();
    // Least request: 'slow' takes 300 ms per request. 30 requests, 10 at a
    // time: in-flight counts and latency steer most of them to 'fast'
    // (round robin would give each 15).
    slow.set_delay_ms(300);
    let urls: Vec<String> = (0..30).map(|i| format!("http://127.100.1.100/lr{i}")).collect();
    let mut args =
        vec!["-sS", "-Z", "--parallel-max", "10", "-w", "%header{x-endpoint}\\n", "--max-time", "20"];
    args.extend(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]));
    let out = run_in(cg, "curl", &args);
    let text = String::from_utf8_lossy(&out.stdout);
    let to_fast = text.lines().filter(|l| *l == "fast").count();
    assert_eq!(text.lines().count(), 30, "{text}");
    assert!(to_fast >= 22, "fast got {to_fast} of 30");
    // Consistent hash: the same user always lands on the same endpoint, and
    // users spread over the endpoints.
    let mut seen: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..12 {
            let user = format!("x-user: user{u}");
            let r = curl(cg, &["-H", &user, &format!("http://127.100.1.101/r{round}")]);
            let ep = r.headers["x-endpoint"].clone();
            if let Some(before) = seen.insert(user.clone(), ep.clone()) {
                assert_eq!(before, ep, "{user} moved");
            }
        }
    }
    let distinct: std::collections::HashSet<&String> = seen.values().collect();
    assert!(distinct.len() >= 2, "12 users all on one endpoint: {seen:?}");
}

#[test]
fn failures_become_readable_responses() {
    if !privileged("failures_become_readable_responses") {
        return;
    }
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // An endpoint that accepts and closes without answering.
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closer_port = closer.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in closer.incoming().flatten() {
            use std::io::Read;
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
        }
    });
    let config = format!(
        "services:
  - {{name: empty, vips: [127.100.1.110], ports: [{{port: 80, protocol: http}}]}}
  - {{name: refused, vips: [127.100.1.111], ports: [{{port: 80, protocol: http}}]}}
  - {{name: closer, vips: [127.100.1.112], ports: [{{port: 80, protocol: http}}]}}
endpoints:
  - {{service: refused, address: 127.0.0.1, port: {dead}}}
  - {{service: closer, address: 127.0.0.1, port: {closer_port}}}
"
    );
    let m = mesh("readable_failures", &config, &[]);
    let cg = m.cg.path();
    let r = curl(cg, &["http://127.100.1.110/"]);
    assert_eq!((r.status, r.headers["x-sluice-error"].as_str()), (503, "no_endpoints"));
    assert!(r.body.contains("service empty has no endpoints"), "{}", r.body);
    let r = curl(cg, &["http://127.100.1.111/"]);
    assert_eq!((r.status, r.headers["x-sluice-error"].as_str()), (503, "connect_failure"));
    assert!(
        r.body.contains(&format!("upstream 127.0.0.1:{dead} refused the connection (service refused)")),
        "{}",
        r.body
    );
    let r = curl(cg, &["http://127.100.1.112/"]);
    assert_eq!((r.status, r.headers["x-sluice-error"].as_str()), (502, "upstream_reset"));
    assert!(r.body.contains("failed before answering (service closer)"), "{}", r.body);
    // The connection to the proxy survives those answers (keep-alive).
    let r = curl(cg, &["http://127.100.1.110/a", "http://127.100.1.111/b"]);
    assert_eq!(r.status, 503);
}

#[test]
fn http2_limits_are_advertised_and_enforced() {
    if !privileged("http2_limits_are_advertised_and_enforced") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.1.120], ports: [{{port: 80}}]}}\nendpoints:\n{}",
        endpoints_yaml("web", &[(&a, None)])
    );
    let m =
        mesh("h2_limits", &config, &["--h2-max-concurrent-streams", "7", "--http-max-header-bytes", "4096"]);
    let out = run_in(m.cg.path(), "nghttp", &["-nv", "http://127.100.1.120/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7"), "{text}");
    assert!(text.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):4096"), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
    // Over the header list limit: the request is refused, not forwarded.
    let big = format!("x-big: {}", "a".repeat(8000));
    let before = a.requests();
    let out = run_in(
        m.cg.path(),
        "curl",
        &[
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &big,
            "--max-time",
            "5",
            "http://127.100.1.120/",
        ],
    );
    let code = String::from_utf8_lossy(&out.stdout);
    assert_ne!(code, "200", "an oversized header list must not be served");
    assert_eq!(a.requests(), before);
}

/// A misbehaving HTTP/2 client (frames written by hand) against the limits.
fn h2_abuse(cg: &Path, mode: &str, addr: &str, n: u32) -> String {
    let out = std::process::Command::new(sluice_integration::target_bin("sluice-testkit"))
        .args(["h2-abuse", "--cgroup"])
        .arg(cg)
        .args(["--timeout-ms", "4000", mode, addr, &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn http2_stream_limit_and_rapid_reset_are_enforced() {
    if !privileged("http2_stream_limit_and_rapid_reset_are_enforced") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.1.130], ports: [{{port: 80, protocol: http2}}]}}\nendpoints:\n{}",
        endpoints_yaml("web", &[(&a, None)])
    );
    let m = mesh("h2_abuse", &config, &["--h2-max-concurrent-streams", "5", "--h2-max-pending-resets", "20"]);
    // 12 streams at once, each held 1 s by the endpoint: 5 are served, the
    // other 7 are refused (RST_STREAM) instead of queued without bound.
    let r = h2_abuse(m.cg.path(), "streams", "127.100.1.130:80", 12);
    assert!(r.contains("rst_stream=7") && r.contains("headers=5"), "{r}");
    // 500 streams opened and reset at once: the connection is closed with
    // GOAWAY ENHANCE_YOUR_CALM (11), and the endpoint saw few of them.
    let before = a.requests();
    let r = h2_abuse(m.cg.path(), "resets", "127.100.1.130:80", 500);
    assert!(r.contains("goaway=11"), "{r}");
    assert!(a.requests() - before < 100, "{} requests reached the endpoint", a.requests() - before);
}

#[test]
fn route_timeout_answers_504() {
    if !privileged("route_timeout_answers_504") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.1.140], ports: [{{port: 80, protocol: http}}]}}\nendpoints:\n{}routes:\n  - {{name: quick, service: web, timeout: 300ms}}\n",
        endpoints_yaml("web", &[(&a, None)])
    );
    let m = mesh("route_timeout", &config, &[]);
    let started = std::time::Instant::now();
    let r = curl(m.cg.path(), &["-H", "x-delay-ms: 2000", "http://127.100.1.140/"]);
    let took = started.elapsed();
    assert_eq!((r.status, r.headers["x-sluice-error"].as_str()), (504, "route_timeout"));
    assert!(
        r.body.contains("no response from upstream within the route timeout of 300ms (route quick)"),
        "{}",
        r.body
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(curl(m.cg.path(), &["-H", "x-delay-ms: 50", "http://127.100.1.140/"]).status, 200);
}

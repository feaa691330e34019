//! The L7 path end to end, protocols and hardening: real clients (curl,
//! h2load, nghttp, Python grpcio, raw sockets, a hand-written HTTP/2 client)
//! inside a mesh cgroup dial service VIPs; the kernel redirects them to the
//! node, which detects HTTP and serves it. Routing and resilience are in
//! `routing.rs`.

#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use sluice_integration::{
    HttpEndpoint,
    l7::{curl, endpoints_yaml, mesh},
    privileged,
    process::{grpc_peer, grpc_server, raw, run_in},
};

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
fn http1_pipelining_head_requests_and_a_switch_to_hyper_mid_connection() {
    if !privileged("http1_pipelining_head_requests_and_a_switch_to_hyper_mid_connection") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.1.51], ports: [{{port: 80}}]}}\n  - {{name: one, vips: [127.100.1.52], ports: [{{port: 80}}], circuit_breaker: {{max_requests: 1, max_pending_requests: 0}}}}\nendpoints:\n{}{}",
        endpoints_yaml("web", &[(&a, None)]),
        endpoints_yaml("one", &[(&a, None)])
    );
    let m = mesh("pipelining", &config, &[]);
    let vip = "127.100.1.51:80".parse().unwrap();
    // Pipelined in one write: two plain GETs, a POST with a body (served by
    // hyper from then on), a GET after it, a HEAD that asks to close.
    let x = raw(
        m.cg.path(),
        vip,
        b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a\r\n\r\nPOST /p3 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /p4 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /p5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        5000,
    );
    let text = x.text();
    assert!(x.closed_after_ms.is_some(), "closed after the request that asked to: {text}");
    let order: Vec<usize> = ["path=/p1", "path=/p2", "path=/p3", "path=/p4"]
        .iter()
        .map(|p| text.find(p).unwrap_or_else(|| panic!("{p} answered: {text}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "answered in order: {text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 5, "{text}");
    assert!(text.contains("method=POST\npath=/p3\nversion=HTTP/1.1\nbody_len=5\n"), "{text}");
    // The HEAD response is last, has its length and no body.
    let last = &text[text.rfind("HTTP/1.1 200").unwrap()..];
    assert!(last.contains("content-length: "), "{last}");
    assert!(last.to_ascii_lowercase().contains("connection: close\r\n"), "{last}");
    assert!(last.ends_with("\r\n\r\n"), "no body after a HEAD response: {last:?}");
    for response in text.split("HTTP/1.1 200 OK\r\n").skip(1) {
        assert!(response.contains("\r\ndate: ") || response.starts_with("date: "), "a date: {response}");
    }
    assert_eq!(a.requests(), 5);
    // A head that arrives in two pieces 150 ms apart is still one request.
    let req = b"GET /split HTTP/1.1\r\nHost: a\r\nX-Test: yes\r\nConnection: close\r\n\r\n";
    let x = sluice_integration::process::raw_split(m.cg.path(), vip, req, 20, 150, 5000);
    let text = x.text();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("path=/split") && text.contains("h:x-test=yes"), "{text}");
    assert!(x.closed_after_ms.is_some(), "{text}");
    // A client that gives up on a slow request (closes after 200 ms): the
    // proxy cancels it, so the one request the service allows in flight is
    // free again long before the endpoint would have answered (3 s).
    let one = "127.100.1.52:80".parse().unwrap();
    let x = raw(m.cg.path(), one, b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Delay-Ms: 3000\r\n\r\n", 200);
    assert!(x.response.is_empty() && x.closed_after_ms.is_none(), "{}", x.text());
    let freed = std::time::Instant::now();
    sluice_integration::wait_for("the cancelled request's slot", Duration::from_millis(2000), || {
        let x = raw(m.cg.path(), one, b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 3000);
        x.text().starts_with("HTTP/1.1 200").then_some(())
    });
    assert!(freed.elapsed() < Duration::from_millis(2500), "freed by the cancel, not by the answer");
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
fn grpc_python_client_and_server_through_the_mesh() {
    if !privileged("grpc_python_client_and_server_through_the_mesh") {
        return;
    }
    let (_server, port) = grpc_server(None, "py1");
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

/// A misbehaving HTTP/2 client (frames written by hand), in `cg`.
fn h2_abuse_cmd(cg: &Path, mode: &str, addr: &str, n: u32) -> std::process::Command {
    let mut cmd = std::process::Command::new(sluice_integration::target_bin("sluice-testkit"));
    cmd.args(["h2-abuse", "--cgroup"]).arg(cg).args(["--timeout-ms", "4000", mode, addr, &n.to_string()]);
    cmd
}

/// [`h2_abuse_cmd`] against the limits: what came back.
fn h2_abuse(cg: &Path, mode: &str, addr: &str, n: u32) -> String {
    let out = h2_abuse_cmd(cg, mode, addr, n).output().unwrap();
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

/// HTTP/2 clients that give up: a RST_STREAM (CANCEL) or a closed
/// connection cancels the request at the proxy, so the one request the
/// service allows in flight is free again long before the endpoint would
/// have answered (3 s).
#[test]
fn http2_streams_reset_or_dropped_by_the_client_cancel_their_requests() {
    if !privileged("http2_streams_reset_or_dropped_by_the_client_cancel_their_requests") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: one, vips: [127.100.1.140], ports: [{{port: 80, protocol: http2}}], circuit_breaker: {{max_requests: 1, max_pending_requests: 0}}}}\nendpoints:\n{}",
        endpoints_yaml("one", &[(&a, None)])
    );
    let m = mesh("h2_cancel", &config, &[]);
    let url = "http://127.100.1.140/next";
    let free_again = |what: &str| {
        let t = std::time::Instant::now();
        sluice_integration::wait_for(what, Duration::from_millis(2000), || {
            (curl(m.cg.path(), &["--http2-prior-knowledge", url]).status == 200).then_some(())
        });
        t.elapsed()
    };
    // RST_STREAM 300 ms after the request, the connection kept open.
    let mut reset = sluice_integration::process::ChildGuard(
        h2_abuse_cmd(m.cg.path(), "cancel", "127.100.1.140:80", 1)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    sluice_integration::wait_for("the request at the endpoint", Duration::from_millis(2000), || {
        (a.requests() == 1).then_some(())
    });
    // Taken: a second request is refused while the first is in flight.
    let busy = curl(m.cg.path(), &["--http2-prior-knowledge", url]);
    assert_eq!(busy.status, 503, "{busy:?}");
    let waited = free_again("the reset request's slot");
    assert!(waited < Duration::from_millis(2500), "freed by the reset, not by the answer: {waited:?}");
    assert!(reset.0.try_wait().unwrap().is_none(), "the resetting client still holds its connection");
    let _ = reset.0.kill();
    // The client closes its connection (curl gives up after 300 ms).
    let before = a.requests();
    let out = run_in(
        m.cg.path(),
        "curl",
        &["-s", "--http2-prior-knowledge", "-H", "x-delay-ms: 3000", "--max-time", "0.3", url],
    );
    assert!(!out.status.success(), "curl gave up");
    assert_eq!(a.requests(), before + 1, "the request reached the endpoint");
    let waited = free_again("the dropped request's slot");
    assert!(waited < Duration::from_millis(2500), "freed by the close, not by the answer: {waited:?}");
}

/// A node that stops drains HTTP/2 clients: GOAWAY at once, and the
/// stream in flight still gets its whole response.
#[test]
fn http2_drain_sends_goaway_and_finishes_the_streams_in_flight() {
    if !privileged("http2_drain_sends_goaway_and_finishes_the_streams_in_flight") {
        return;
    }
    let a = HttpEndpoint::start("a");
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.1.141], ports: [{{port: 80}}]}}\nendpoints:\n{}",
        endpoints_yaml("web", &[(&a, None)])
    );
    let mut m = mesh("h2_drain", &config, &[]);
    let client = sluice_integration::process::spawn_in(
        m.cg.path(),
        "nghttp",
        &["-nv", "-t", "10", "-H", "x-delay-ms: 1500", "http://127.100.1.141/slow"],
    );
    let mut client = sluice_integration::process::ChildGuard(client);
    sluice_integration::wait_for("the request at the endpoint", Duration::from_millis(3000), || {
        (a.requests() == 1).then_some(())
    });
    m.node.signal(nix::sys::signal::Signal::SIGTERM);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut client.0.stdout.take().unwrap(), &mut text).unwrap();
    let goaway = text.find("recv GOAWAY frame").unwrap_or_else(|| panic!("no GOAWAY: {text}"));
    let status = text.find(":status: 200").unwrap_or_else(|| panic!("no response: {text}"));
    assert!(goaway < status, "GOAWAY came first, then the response: {text}");
    // The body, to its end (nghttp -n prints the frames, not the bytes).
    let rest = &text[status..];
    let data = rest.find("recv DATA frame").unwrap_or_else(|| panic!("no body: {text}"));
    assert!(rest[data..].contains("; END_STREAM"), "the whole body: {text}");
    assert!(m.node.wait_exit(Duration::from_secs(10)).success());
}

/// What the proxy answers itself over HTTP/2 carries `date` and the
/// length of its body.
#[test]
fn http2_responses_from_the_proxy_carry_date_and_length() {
    if !privileged("http2_responses_from_the_proxy_carry_date_and_length") {
        return;
    }
    let m = mesh(
        "h2_headers",
        "services:\n  - {name: empty, vips: [127.100.1.142], ports: [{port: 80, protocol: http2}]}\nendpoints: []\n",
        &[],
    );
    let r = curl(m.cg.path(), &["--http2-prior-knowledge", "http://127.100.1.142/x"]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.headers.get("content-length"), Some(&r.body.len().to_string()), "{r:?}");
    let date = r.headers.get("date").unwrap_or_else(|| panic!("a date: {r:?}"));
    assert!(date.ends_with(" GMT") && date.len() == 29, "an HTTP date: {date}");
    // HEAD: no length made up for a body that is not sent.
    let out = run_in(
        m.cg.path(),
        "curl",
        &["-sS", "--http2-prior-knowledge", "-I", "--max-time", "10", "http://127.100.1.142/x"],
    );
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/2 503"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
}

/// `sluice-bench l7`'s reference row, `sluice-testkit h2-forward`, forwards
/// for real (so its figure is a forwarder's): request bodies intact, the
/// endpoint's answers back, every stream over one HTTP/2 connection to it.
#[test]
fn the_benchmarks_bare_h2_forwarder_forwards_requests_intact() {
    use std::{net::SocketAddr, process::Command};
    let ep = HttpEndpoint::start("bare");
    let (_forwarder, addr): (_, SocketAddr) = sluice_integration::process::spawn_listening(
        Command::new(sluice_integration::target_bin("sluice-testkit")).args([
            "h2-forward",
            &ep.addr.to_string(),
            "127.0.0.1:0",
        ]),
    );
    // Larger than the endpoint's 64 KiB default window: the forwarder
    // must follow WINDOW_UPDATEs.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, &body).unwrap();
    let url = format!("http://{addr}/up?n=1");
    for _ in 0..3 {
        let out = Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-H", "x-check: 7", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("method=POST\npath=/up?n=1\nversion=HTTP/2.0\n"), "{text}");
        assert!(text.contains(&format!("body_len=300000\nbody_sha={}\n", sha256_hex(&body))), "{text}");
        assert!(text.contains("h:x-check=7"), "{text}");
    }
    assert_eq!(ep.requests(), 3);
    assert_eq!(ep.connections(), 1, "one upstream connection for every stream");
}

/// `sluice-bench pgo-train`, the load `scripts/build-pgo.sh` trains a
/// profile-guided build with, sends both loads through both service
/// protocols without a failed request, and stops each node with SIGTERM
/// (an instrumented binary writes its profile only on a clean exit).
#[test]
fn the_pgo_training_load_goes_through_sluice_and_stops_nodes_cleanly() {
    if !privileged("the_pgo_training_load_goes_through_sluice_and_stops_nodes_cleanly") {
        return;
    }
    let out = std::process::Command::new(sluice_integration::target_bin("sluice-bench"))
        .args(["pgo-train", "--secs", "1"])
        .env("SLUICE_TEST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for protocol in ["http", "http1"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("service protocol {protocol}: ")))
            .unwrap_or_else(|| panic!("no line for {protocol}:\n{text}"));
        let rates: Vec<f64> = line
            .split(", ")
            .filter_map(|p| p.strip_suffix(" req/s")?.rsplit(' ').next()?.parse().ok())
            .collect();
        assert_eq!(rates.len(), 2, "{line}");
        assert!(rates.iter().all(|r| *r > 0.0), "{line}");
    }
}

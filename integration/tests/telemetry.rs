//! Observability end to end: traces received by a real OTLP receiver
//! (rotel) over gRPC and HTTP/protobuf, with the parent/child links of a
//! request through two hops and a retried attempt; W3C and B3 propagation;
//! sampling; access logs carrying the trace id; Istio-compatible metrics
//! parsed by Prometheus' own Python parser; the admin API.

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, net::SocketAddr, process::Command, time::Duration};

use serde_json::Value;
use sluice_integration::{
    EchoServer, HttpEndpoint, client,
    l7::{curl, endpoints_yaml, mesh},
    otlp::{Rotel, SpanRecord},
    privileged, wait_for,
};

fn traceparent_seen(body: &str) -> (String, String, String) {
    let tp = body
        .lines()
        .find_map(|l| l.strip_prefix("h:traceparent="))
        .unwrap_or_else(|| panic!("no traceparent in {body}"));
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

fn by_id<'a>(spans: &'a [SpanRecord], id: &str) -> &'a SpanRecord {
    spans.iter().find(|s| s.span_id == id).unwrap_or_else(|| panic!("no span {id} in {spans:#?}"))
}

#[test]
fn two_hops_make_one_trace_in_a_real_otlp_receiver() {
    if !privileged("two_hops_make_one_trace_in_a_real_otlp_receiver") {
        return;
    }
    let rotel = Rotel::start();
    let (front, back) = (HttpEndpoint::start("front"), HttpEndpoint::start("back"));
    let db = EchoServer::start("127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = format!(
        "services:
  - {{name: front, vips: [127.100.3.10], ports: [{{port: 80, protocol: http}}]}}
  - {{name: back, namespace: shop, vips: [127.100.3.11], ports: [{{port: 80, protocol: http}}]}}
  - {{name: db, vips: [127.100.3.12], ports: [{{port: 5432, protocol: tcp}}]}}
endpoints:
{}{}  - {{service: db, address: 127.0.0.1, port: {}}}
routes:
  - name: back-retry
    service: back
    retries: {{attempts: 3, on: [5xx]}}
telemetry:
  tracing: {{endpoint: \"http://{}\", protocol: grpc, sampling: 1.0, service_name: sluice-test}}
  access_log: {{format: json, path: {}}}
",
        endpoints_yaml("front", &[(&front, None)]),
        endpoints_yaml("back", &[(&back, None)]),
        db.addr.port(),
        rotel.grpc,
        log.display()
    );
    let m = mesh("tel_two_hops", &config, &[]);
    let cg = m.cg.path();

    // Hop 1: no context comes in; the proxy starts the trace.
    let r = curl(cg, &["http://127.100.3.10/hop1"]);
    assert_eq!(r.status, 200);
    let (trace, c1, flags) = traceparent_seen(&r.body);
    assert_eq!(flags, "01", "sampled");
    assert!(r.body.contains(&format!("h:x-b3-traceid={trace}")), "B3 injected too: {}", r.body);
    // Hop 2: the application passes the context it received on (as an
    // instrumented application does); the endpoint fails once, the route retries.
    let tp = format!("traceparent: 00-{trace}-{c1}-01");
    let r2 = curl(cg, &["-H", &tp, "-H", "x-request-id: req-42", "http://127.100.3.11/fail/hop2/1"]);
    assert_eq!(r2.status, 200, "{}", r2.body);
    let (trace2, c2, _) = traceparent_seen(&r2.body);
    assert_eq!(trace2, trace, "one trace across both hops");

    let spans =
        rotel.wait_spans("5 spans of the trace", |s| s.iter().filter(|x| x.trace_id == trace).count() >= 5);
    let spans: Vec<SpanRecord> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let client1 = by_id(&spans, &c1);
    assert!(client1.kind.contains("CLIENT"), "{client1:?}");
    let server1 = by_id(&spans, &client1.parent_id);
    assert!(server1.kind.contains("SERVER") && server1.parent_id.is_empty(), "root span: {server1:?}");
    assert_eq!(server1.name, "GET");
    assert_eq!(server1.service, "sluice-test");
    assert_eq!(server1.attr("http.request.method"), Some("GET"));
    assert_eq!(server1.attr("url.path"), Some("/hop1"));
    assert_eq!(server1.attr("http.response.status_code"), Some("200"));
    assert_eq!(server1.attr("sluice.service"), Some("front"));
    assert_eq!(client1.attr("server.port"), Some(front.addr.port().to_string().as_str()));
    // Hop 2's SERVER span continues hop 1's CLIENT span.
    let server2 = spans.iter().find(|s| s.parent_id == c1).expect("hop 2 server span");
    assert!(server2.kind.contains("SERVER"), "{server2:?}");
    assert_eq!(server2.attr("sluice.route"), Some("back-retry"));
    // Two attempts, both children of hop 2's SERVER span; the retry is marked.
    let attempts: Vec<&SpanRecord> = spans.iter().filter(|s| s.parent_id == server2.span_id).collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    let failed =
        attempts.iter().find(|s| s.attr("http.response.status_code") == Some("503")).expect("503 attempt");
    let retried =
        attempts.iter().find(|s| s.attr("http.response.status_code") == Some("200")).expect("200 attempt");
    assert_eq!(failed.attr("error.type"), Some("503"));
    assert_eq!(retried.attr("http.request.resend_count"), Some("1"));
    assert_eq!(retried.span_id, c2, "the endpoint saw the last attempt's context");

    let started = m.node.metric("sluice_tracing_spans_total{outcome=\"started\"}");
    assert_eq!(started, Some(5.0));
    wait_for("5 spans counted as exported", Duration::from_secs(5), || {
        (m.node.metric("sluice_tracing_spans_total{outcome=\"exported\"}") == Some(5.0)).then_some(())
    });
    // An opaque TCP connection is a span of its own, with its byte counts.
    let r = client(Some(cg), None, "127.100.3.12:5432".parse().unwrap(), 10_000, 1000).unwrap();
    assert!(r.intact());
    let spans = rotel.wait_spans("the TCP span", |s| s.iter().any(|x| x.name == "TCP db"));
    let tcp = spans.iter().find(|x| x.name == "TCP db").unwrap();
    assert!(tcp.kind.contains("SERVER") && tcp.parent_id.is_empty(), "{tcp:?}");
    assert_eq!(tcp.attr("sluice.bytes_up"), Some("10000"));
    assert_eq!(tcp.attr("sluice.bytes_down"), Some("10000"));
    assert_eq!(tcp.attr("sluice.path"), Some("proxy"));
    assert_eq!(tcp.attr("network.peer.port"), Some(db.addr.port().to_string().as_str()));
    // Access log: one JSON line per request and per connection, with the trace id.
    let lines: Vec<Value> = wait_for("3 access log lines", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let v: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (v.len() >= 3).then_some(v)
    });
    assert_eq!(lines.len(), 3, "{lines:?}");
    let l3 = lines.iter().find(|l| l["kind"] == "tcp").expect("tcp line");
    assert_eq!(l3["service"], "db");
    assert_eq!(l3["bytes_received"], 10_000);
    assert_eq!(l3["bytes_sent"], 10_000);
    assert_eq!(l3["trace_id"], tcp.trace_id.as_str());
    let l2 = lines.iter().find(|l| l["service"] == "back").expect("back line");
    assert_eq!(l2["trace_id"], trace.as_str());
    assert_eq!(l2["span_id"], server2.span_id.as_str());
    assert_eq!(l2["response_code"], 200);
    assert_eq!(l2["path"], "/fail/hop2/1");
    assert_eq!(l2["request_id"], "req-42");
    assert_eq!(l2["route"], "back-retry");
    assert_eq!(l2["upstream_host"], back.addr.to_string().as_str());
    assert!(l2["bytes_sent"].as_u64().unwrap() > 0);
    assert!(lines.iter().any(|l| l["service"] == "front" && l["trace_id"] == trace.as_str()));
}

#[test]
fn otlp_http_export_b3_and_sampling() {
    if !privileged("otlp_http_export_b3_and_sampling") {
        return;
    }
    let rotel = Rotel::start();
    let web = HttpEndpoint::start("web");
    let config = format!(
        "services:
  - {{name: web, vips: [127.100.3.20], ports: [{{port: 80}}]}}
endpoints:
{}telemetry:
  tracing: {{endpoint: \"http://{}\", protocol: http/protobuf, sampling: 0}}
",
        endpoints_yaml("web", &[(&web, None)]),
        rotel.http
    );
    let m = mesh("tel_http", &config, &[]);
    let cg = m.cg.path();
    // Sampling 0: no new trace is recorded, but the decision is passed on.
    let r = curl(cg, &["http://127.100.3.20/unsampled"]);
    let (unsampled, _, flags) = traceparent_seen(&r.body);
    assert_eq!(flags, "00");
    // An incoming sampled B3 context is continued (parent-based sampling),
    // answered in B3's single-header form as it came.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let r = curl(cg, &["-H", &format!("b3: {b3_trace}-e457b5a2e4d86bd1-1"), "http://127.100.3.20/b3"]);
    let b3 = r.body.lines().find_map(|l| l.strip_prefix("h:b3=")).expect("b3 forwarded").to_string();
    assert!(b3.starts_with(b3_trace) && b3.ends_with("-1") && !b3.contains("e457b5a2e4d86bd1"), "{b3}");
    let (tp_trace, client, _) = traceparent_seen(&r.body);
    assert_eq!(tp_trace, b3_trace);
    let spans = rotel
        .wait_spans("the B3 trace's spans", |s| s.iter().filter(|x| x.trace_id == b3_trace).count() >= 2);
    let server = spans.iter().find(|s| s.trace_id == b3_trace && s.kind.contains("SERVER")).unwrap();
    assert_eq!(server.parent_id, "e457b5a2e4d86bd1", "continues the B3 parent");
    assert_eq!(by_id(&spans, &client).parent_id, server.span_id);
    // An incoming unsampled W3C context stays unsampled.
    let not = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r =
        curl(cg, &["-H", &format!("traceparent: 00-{not}-00f067aa0ba902b7-00"), "http://127.100.3.20/not"]);
    assert!(
        r.body.contains(&format!("h:traceparent=00-{not}-00f067aa0ba902b7-00")),
        "passed through: {}",
        r.body
    );
    // One more sampled request, then nothing of the unsampled ones arrived.
    let r = curl(
        cg,
        &[
            "-H",
            "traceparent: 00-11111111111111111111111111111111-2222222222222222-01",
            "http://127.100.3.20/last",
        ],
    );
    assert_eq!(r.status, 200);
    let spans = rotel
        .wait_spans("the last trace", |s| s.iter().any(|x| x.trace_id == "11111111111111111111111111111111"));
    assert!(!spans.iter().any(|s| s.trace_id == unsampled || s.trace_id == not), "{spans:#?}");
    assert_eq!(m.node.metric("sluice_tracing_sampling_ratio"), Some(0.0));
    // The ratio follows a config reload; new traces are then recorded.
    m.node.write_config(&config.replace("sampling: 0}", "sampling: 1.0}"));
    wait_for("the new sampling ratio", Duration::from_secs(5), || {
        (m.node.metric("sluice_tracing_sampling_ratio") == Some(1.0)).then_some(())
    });
    let r = curl(cg, &["http://127.100.3.20/after-reload"]);
    let (fresh, _, flags) = traceparent_seen(&r.body);
    assert_eq!(flags, "01");
    rotel.wait_spans("the new trace", |s| s.iter().any(|x| x.trace_id == fresh));
}

#[test]
fn standard_otel_environment_configures_tracing() {
    if !privileged("standard_otel_environment_configures_tracing") {
        return;
    }
    let rotel = Rotel::start();
    let web = HttpEndpoint::start("web");
    // No telemetry section: the OTEL_* variables alone turn tracing on.
    let config = format!(
        "services:\n  - {{name: web, vips: [127.100.3.50], ports: [{{port: 80}}]}}\nendpoints:\n{}",
        endpoints_yaml("web", &[(&web, None)])
    );
    let cg = sluice_integration::CgroupGuard::new("tel_env");
    let endpoint = format!("http://{}", rotel.http);
    let node = sluice_integration::Node::start_env(
        sluice_integration::node::NodeOpts {
            test: "tel_env",
            config: &config,
            cgroup: cg.path(),
            netns: None,
            node_in_cgroup: false,
            args: &[],
        },
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "edge-node"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1"),
            ("OTEL_PROPAGATORS", "tracecontext"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    assert!(node.log().contains("exporting traces endpoint=http://127.0.0.1:"), "{}", node.log());
    assert!(node.log().contains("protocol=\"http/protobuf\""), "{}", node.log());
    // traceidratio is not parent-based: an unsampled caller does not stop the trace here.
    let r = curl(
        cg.path(),
        &[
            "-H",
            "traceparent: 00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-00",
            "http://127.100.3.50/env",
        ],
    );
    assert_eq!(r.status, 200);
    let (trace, _, flags) = traceparent_seen(&r.body);
    assert_eq!((trace.as_str(), flags.as_str()), ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "01"));
    assert!(!r.body.contains("x-b3-"), "OTEL_PROPAGATORS=tracecontext: no B3 injected: {}", r.body);
    let spans = rotel.wait_spans("spans from the env-configured node", |s| {
        s.iter().filter(|x| x.trace_id == trace).count() >= 2
    });
    let server = spans.iter().find(|s| s.trace_id == trace && s.kind.contains("SERVER")).unwrap();
    assert_eq!(server.service, "edge-node");
    assert_eq!(server.parent_id, "bbbbbbbbbbbbbbbb");
}

/// Name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Every sample, parsed by prometheus_client's parser (a failure to parse fails the test).
fn scrape(node: &sluice_integration::Node) -> (HashMap<String, String>, Vec<Sample>) {
    let raw = node.admin_get("/metrics");
    let text = raw
        .split_once('\n')
        .map(|(status, body)| {
            assert!(status.contains(" 200"), "{status}");
            body.to_string()
        })
        .unwrap_or_default();
    let mut child = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/promparse.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (with python3-prometheus-client)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let _ = std::fs::write(std::env::temp_dir().join("sluice-refused-metrics.txt"), &text);
        panic!(
            "the Prometheus parser refused /metrics (kept in /tmp/sluice-refused-metrics.txt): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let types = v["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
        .collect();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (s[0].as_str().unwrap().to_string(), labels, s[2].as_f64().unwrap())
        })
        .collect();
    (types, samples)
}

fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn istio_metrics_parse_and_count_what_clients_saw() {
    if !privileged("istio_metrics_parse_and_count_what_clients_saw") {
        return;
    }
    let (v1, v2) = (HttpEndpoint::start("v1"), HttpEndpoint::start("v2"));
    let echo = EchoServer::start("127.0.0.1:0");
    let zh = EchoServer::start("127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = format!(
        "services:
  - {{name: web, namespace: shop, vips: [127.100.3.30], ports: [{{port: 80, protocol: http}}]}}
  - {{name: db, vips: [127.100.3.31], ports: [{{port: 5432, protocol: tcp}}]}}
  - {{name: cache, vips: [127.100.3.32], ports: [{{port: 6379, zero_hop: true}}]}}
endpoints:
{}  - {{service: db, address: 127.0.0.1, port: {}}}
  - {{service: cache, address: 127.0.0.1, port: {}}}
routes:
  - name: only-get
    service: web
    match: {{methods: [GET]}}
    to: [{{version: v1}}]
telemetry:
  access_log: {{format: text, path: {}}}
",
        endpoints_yaml("web", &[(&v1, Some("v1")), (&v2, Some("v2"))]),
        echo.addr.port(),
        zh.addr.port(),
        log.display(),
    );
    let m = mesh("tel_metrics", &config, &[]);
    let cg = m.cg.path();
    for i in 0..5 {
        assert_eq!(curl(cg, &[&format!("http://127.100.3.30/ok{i}")]).status, 200);
    }
    assert_eq!(curl(cg, &["-H", "x-status: 503", "http://127.100.3.30/bad"]).status, 503);
    assert_eq!(curl(cg, &["-X", "POST", "http://127.100.3.30/none"]).status, 404);
    let r = sluice_integration::client(
        Some(cg),
        None,
        "127.100.3.31:5432".parse::<SocketAddr>().unwrap(),
        10_000,
        1000,
    )
    .unwrap();
    assert!(r.intact());
    for _ in 0..3 {
        let r = client(Some(cg), None, "127.100.3.32:6379".parse().unwrap(), 10_000, 1000).unwrap();
        assert!(r.intact());
    }

    let (types, s) = wait_for("the TCP connections closed in the metrics", Duration::from_secs(5), || {
        let (t, s) = scrape(&m.node);
        let closed = |svc| sum(&s, "istio_tcp_connections_closed_total", &[("destination_service", svc)]);
        (closed("db") >= 1.0 && closed("cache") >= 3.0).then_some((t, s))
    });
    assert_eq!(types["istio_requests"], "counter");
    assert_eq!(types["istio_request_duration_milliseconds"], "histogram");
    let web =
        [("destination_service", "web"), ("destination_service_namespace", "shop"), ("reporter", "source")];
    let ok: Vec<(&str, &str)> = web
        .iter()
        .copied()
        .chain([("response_code", "200"), ("destination_version", "v1"), ("response_flags", "-")])
        .collect();
    assert_eq!(sum(&s, "istio_requests_total", &ok), 5.0, "{s:?}");
    assert_eq!(
        sum(&s, "istio_requests_total", &[("destination_service", "web"), ("response_code", "503")]),
        1.0
    );
    let nr = [
        ("destination_service", "web"),
        ("response_code", "404"),
        ("response_flags", "NR"),
        ("destination_version", "unknown"),
    ];
    assert_eq!(sum(&s, "istio_requests_total", &nr), 1.0);
    assert_eq!(sum(&s, "istio_request_duration_milliseconds_count", &ok), 5.0);
    assert_eq!(
        sum(
            &s,
            "istio_request_duration_milliseconds_bucket",
            &ok.iter().copied().chain([("le", "+Inf")]).collect::<Vec<_>>()
        ),
        5.0
    );
    assert_eq!(sum(&s, "istio_response_bytes_count", &ok), 5.0);
    assert!(sum(&s, "istio_response_bytes_sum", &ok) > 0.0);
    let db = [("destination_service", "db"), ("request_protocol", "tcp")];
    assert_eq!(sum(&s, "istio_tcp_connections_opened_total", &db), 1.0);
    assert_eq!(sum(&s, "istio_tcp_received_bytes_total", &db), 10_000.0);
    assert_eq!(sum(&s, "istio_tcp_sent_bytes_total", &db), 10_000.0);
    // Zero-hop connections never reach the proxy: the kernel's count, same labels.
    assert_eq!(sum(&s, "istio_tcp_connections_opened_total", &[("destination_service", "cache")]), 3.0);
    // ... and their bytes, from TCP's own counts when each socket closed.
    assert_eq!(sum(&s, "istio_tcp_connections_closed_total", &[("destination_service", "cache")]), 3.0);
    assert_eq!(sum(&s, "istio_tcp_received_bytes_total", &[("destination_service", "cache")]), 30_000.0);
    assert_eq!(sum(&s, "istio_tcp_sent_bytes_total", &[("destination_service", "cache")]), 30_000.0);
    let zh = |dir| {
        sum(
            &s,
            "sluice_tcp_bytes_total",
            &[("destination_service", "cache"), ("path", "zero_hop"), ("direction", dir)],
        )
    };
    assert_eq!((zh("up"), zh("down")), (30_000.0, 30_000.0));
    assert_eq!(
        sum(&s, "sluice_tcp_connections_total", &[("destination_service", "cache"), ("path", "zero_hop")]),
        3.0
    );
    assert_eq!(
        sum(&s, "sluice_tcp_connections_total", &[("destination_service", "db"), ("path", "proxy")]),
        1.0
    );
    // Pool and circuit-breaker state per endpoint; eBPF counters.
    assert!(
        s.iter().any(|(n, l, _)| n == "sluice_endpoint_connections"
            && l.get("version").map(String::as_str) == Some("v1"))
    );
    assert!(
        sum(&s, "sluice_endpoint_connections", &[("service", "web"), ("version", "v1")]) >= 1.0,
        "a pooled connection"
    );
    assert!(sum(&s, "sluice_kernel_events_total", &[("event", "redirect_connect4")]) >= 8.0);
    assert_eq!(
        sum(&s, "sluice_protocol_detected_total", &[("protocol", "http1")]),
        0.0,
        "declared http: no detection"
    );
    // Text access log: a line per request and per proxied connection (not
    // for zero-hop ones: the proxy never sees them), no trace ids (tracing off).
    let text = wait_for("8 access log lines", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.lines().count() >= 8).then_some(t)
    });
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert_eq!(lines.iter().filter(|l| l.contains("\"GET /ok")).count(), 5, "{text}");
    assert!(lines.iter().any(|l| l.contains("\"POST /none HTTP/1.1\" 404 NR ")), "{text}");
    assert!(
        lines.iter().any(|l| l.contains("] TCP db - 10000 10000 ") && l.ends_with("path=proxy trace_id=-")),
        "{text}"
    );
    assert!(lines.iter().all(|l| l.starts_with('[') && !l.contains("trace_id=0")), "{text}");
    assert_eq!(m.node.metric("sluice_access_log_lines_total{outcome=\"dropped\"}"), Some(0.0));
    // logrotate: move the file, SIGHUP, and new lines go to a new file at the path.
    let moved = dir.path().join("access.log.1");
    std::fs::rename(&log, &moved).unwrap();
    m.node.signal(sluice_integration::node::Sig::SIGHUP);
    wait_for("the reopen", Duration::from_secs(5), || {
        m.node.log().contains("SIGHUP: access log reopened").then_some(())
    });
    assert_eq!(curl(cg, &["http://127.100.3.30/after-rotate"]).status, 200);
    let fresh = wait_for("a line in the new file", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).ok().filter(|t| !t.is_empty())
    });
    assert!(fresh.contains("\"GET /after-rotate HTTP/1.1\" 200"), "{fresh}");
    assert_eq!(std::fs::read_to_string(&moved).unwrap().lines().count(), 8);
}

#[test]
fn admin_api_dumps_config_and_changes_the_log_level() {
    if !privileged("admin_api_dumps_config_and_changes_the_log_level") {
        return;
    }
    let web = HttpEndpoint::start("web");
    let config = format!(
        "services:
  - {{name: web, vips: [127.100.3.40], ports: [{{port: 80}}]}}
endpoints:
{}telemetry:
  tracing:
    endpoint: \"http://collector-user:hunter2@127.0.0.1:9\"
    headers: {{authorization: \"Bearer t0ps3cret\"}}
",
        endpoints_yaml("web", &[(&web, None)]),
    );
    let m = mesh("tel_admin", &config, &[]);
    assert_eq!(m.node.admin.ip().to_string(), "127.0.0.1", "admin is loopback only");
    let admin = format!("http://{}", m.node.admin);
    let run = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-gsS", "-w", "\n%{http_code}", "--max-time", "5"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        (code.parse::<u16>().unwrap(), body.to_string())
    };
    assert_eq!(run(&[&format!("{admin}/live")]), (200, "live\n".to_string()));
    assert_eq!(run(&[&format!("{admin}/ready")]), (200, "ready\n".to_string()));
    let (code, dump) = run(&[&format!("{admin}/config_dump")]);
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["config"]["services"][0]["name"], "web");
    assert_eq!(v["config"]["telemetry"]["tracing"]["headers"]["authorization"], "<redacted>");
    assert!(!dump.contains("t0ps3cret") && !dump.contains("hunter2"), "{dump}");
    assert_eq!(v["trace_export"]["endpoint"], "http://<redacted>@127.0.0.1:9/v1/traces");
    // Log level: POST only; a bad filter is refused with the reason.
    assert_eq!(run(&[&format!("{admin}/logging?level=debug")]).0, 200, "GET shows the filter");
    assert!(run(&[&format!("{admin}/logging")]).1.contains("log filter: info,sluice_proxy=debug"));
    let (code, _) = run(&["-X", "PUT", &format!("{admin}/logging?level=debug")]);
    assert_eq!(code, 405);
    let (code, body) = run(&["-X", "POST", &format!("{admin}/logging?level=nonsense[")]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not a log filter"), "{body}");
    // warn: the proxy's debug lines stop; debug: they come back.
    let (code, body) = run(&["-X", "POST", &format!("{admin}/logging?level=warn")]);
    assert_eq!((code, body.trim()), (200, "log filter: warn"));
    let mark = m.node.log().len();
    assert_eq!(curl(m.cg.path(), &["http://127.100.3.40/quiet"]).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let quiet = m.node.log()[mark..].to_string();
    assert!(!quiet.contains("DEBUG"), "{quiet}");
    let (code, body) = run(&["-X", "POST", &format!("{admin}/logging?level=debug")]);
    assert_eq!((code, body.trim()), (200, "log filter: debug"));
    let mark = m.node.log().len();
    assert_eq!(curl(m.cg.path(), &["http://127.100.3.40/loud"]).status, 200);
    wait_for("debug lines in the node's log", Duration::from_secs(5), || {
        m.node.log()[mark..].contains("DEBUG").then_some(())
    });
    assert_eq!(run(&["-X", "POST", &format!("{admin}/metrics")]).0, 405);
    assert_eq!(run(&[&format!("{admin}/nope")]).0, 404);
}

#[test]
fn bad_telemetry_config_is_refused_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "services: []\ntelemetry:\n  tracing:\n    sampling: 1.5\n").unwrap();
    let out = Command::new(sluice_integration::target_bin("sluice"))
        .args(["config", "validate"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("mesh.yaml:4:15")
            && err.contains("telemetry.tracing.sampling")
            && err.contains("from 0"),
        "{err}"
    );
}

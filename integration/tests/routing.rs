//! Routing and resilience end to end, as a client sees them: route matches,
//! weighted splits, header edits, retries and their budget, timeouts, circuit
//! breaking, outlier detection, load balancing, readable failures, and route
//! reloads with requests in flight.

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, time::Duration};

use sluice_integration::{
    HttpEndpoint,
    l7::{curl, endpoints_yaml, mesh},
    privileged,
    process::{run_in, spawn_in},
};

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

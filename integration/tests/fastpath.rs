//! Kernel fast paths, proven on this kernel: sk_skb splicing of opaque TCP
//! (the payload stays in the kernel; the proxy sees only the ends), its
//! start-up self-test and the fallback when it fails.

#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use sluice_integration::{CgroupGuard, EchoServer, Node, node::NodeOpts, privileged, wait_for};

fn config(vip: &str, endpoint: SocketAddr) -> String {
    format!(
        "services:\n  - {{name: bulk, vips: [{vip}], ports: [{{port: 7, protocol: tcp}}]}}\nendpoints:\n  - {{service: bulk, address: 127.0.0.1, port: {}}}\n",
        endpoint.port()
    )
}

fn node(test: &str, cg: &CgroupGuard, config: &str, args: &[&str]) -> Node {
    Node::start(NodeOpts { test, config, cgroup: cg.path(), netns: None, node_in_cgroup: false, args })
}

/// `sluice-testkit client` from inside the cgroup; stdout, or the failure.
fn clients(cg: &CgroupGuard, vip: &str, args: &[&str], bytes: &str) -> String {
    let out = std::process::Command::new(sluice_integration::target_bin("sluice-testkit"))
        .arg("client")
        .arg("--cgroup")
        .arg(cg.path())
        .args(args)
        .arg(format!("{vip}:7"))
        .arg(bytes)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn spliced_connections_keep_their_payload_in_the_kernel() {
    if !privileged("spliced_connections_keep_their_payload_in_the_kernel") {
        return;
    }
    let cg = CgroupGuard::new("splice100");
    let echo = EchoServer::start("127.0.0.1:0");
    let n = node("splice100", &cg, &config("127.100.2.10", echo.addr), &["--splice", "auto"]);
    assert!(n.log().contains("fast path on: sk_skb splicing of opaque TCP; self-test passed"), "{}", n.log());
    assert_eq!(n.metric("sluice_fast_path_enabled{path=\"splice\"}"), Some(1.0));
    // 100 connections at once, 10 MiB each way, random write sizes, checksummed.
    let out = clients(
        &cg,
        "127.100.2.10",
        &["--parallel", "--count", "100", "--chunk", "1", "--timeout-ms", "60000"],
        "10485760",
    );
    let count =
        |k: &str| -> f64 { out.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().parse().unwrap() };
    let (intact, failed) = (count("intact="), count("failed="));
    eprintln!("splice, 100 x 10 MiB: {out}");
    // Never silently wrong: a connection is intact, or it was reset because
    // the kernel stopped its data short (seen under this load on this kernel;
    // the reason splicing is off by default).
    assert_eq!(count("broken="), 0.0, "{out}");
    assert_eq!(intact + failed, 100.0, "{out}");
    let metric = |s: &str| n.metric(s).unwrap_or(-1.0);
    assert_eq!(metric("sluice_splice_lost_total"), failed, "every failure is a detected loss");
    assert!(intact >= 90.0, "{out}");
    assert_eq!(metric("sluice_path_connections_total{path=\"splice\"}"), 100.0);
    assert_eq!(metric("sluice_path_connections_total{path=\"proxy\"}"), 0.0);
    if failed == 0.0 {
        let all = 100.0 * 10_485_760.0;
        assert_eq!(metric("sluice_path_bytes_total{path=\"splice\",direction=\"up\"}"), all);
        assert_eq!(metric("sluice_path_bytes_total{path=\"splice\",direction=\"down\"}"), all);
    }
    // The verdict program's own counters are exported too.
    assert!(metric("sluice_splice_kernel_total{counter=\"redirected_skbs\"}") > 0.0);
    assert!(
        metric("sluice_splice_kernel_total{counter=\"redirected_bytes\"}")
            >= 2.0 * 100.0 * 10_485_760.0 * intact / 100.0
    );
    // The same connections under the service's labels, by path.
    assert_eq!(
        metric(
            "sluice_tcp_connections_total{destination_service=\"bulk\",destination_service_namespace=\"default\",path=\"splice\"}"
        ),
        100.0
    );
    // None of it crossed the proxy's userspace.
    assert_eq!(metric("sluice_splice_user_bytes_total"), 0.0);
    assert_eq!(metric("sluice_path_bytes_total{path=\"proxy\",direction=\"up\"}"), 0.0);
    // `sluice status` shows the paths.
    let st = n.status();
    let row = st.lines().find(|l| l.trim_start().starts_with("splice ")).unwrap_or_else(|| panic!("{st}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[..3], ["splice", "yes", "100"], "{st}");
    if failed == 0.0 {
        assert_eq!(cols[3..], ["1048576000", "1048576000"], "{st}");
    }
}

#[test]
fn half_close_and_eof_cross_a_splice_after_the_data() {
    if !privileged("half_close_and_eof_cross_a_splice_after_the_data") {
        return;
    }
    let cg = CgroupGuard::new("splicefin");
    // Answers only once the client's FIN arrived: the FIN must follow all the
    // data into the endpoint, and the endpoint's FIN all of its answer.
    let echo = EchoServer::start_after_eof("127.0.0.1:0");
    let n = node("splicefin", &cg, &config("127.100.2.11", echo.addr), &["--splice", "auto"]);
    for (bytes, chunk) in [("4194304", "1"), ("1", "1"), ("0", "1"), ("300000", "7")] {
        let out = clients(&cg, "127.100.2.11", &["--chunk", chunk], bytes);
        let sent = out.split_whitespace().find_map(|w| w.strip_prefix("sent=")).unwrap();
        let got = out.split_whitespace().find_map(|w| w.strip_prefix("received=")).unwrap();
        assert_eq!(sent, got, "{out}");
        let sha = |k: &str| out.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().to_string();
        assert_eq!(sha("sent_sha="), sha("received_sha="), "{out}");
    }
    let counted = || {
        let m = |p: &str| n.metric(&format!("sluice_path_connections_total{{path=\"{p}\"}}")).unwrap_or(0.0);
        (m("splice"), m("proxy"))
    };
    // A client that has already sent its FIN before the proxy splices (the
    // 0- and 1-byte cases) leaves its socket out of ESTABLISHED, which a
    // sockmap refuses: those are copied instead, and counted as fallbacks.
    let (spliced, copied) = wait_for("4 connections counted", Duration::from_secs(5), || {
        let c = counted();
        (c.0 + c.1 == 4.0).then_some(c)
    });
    assert!(spliced >= 2.0, "the 4 MiB and 300 kB connections were spliced: {spliced}");
    assert_eq!(n.metric("sluice_splice_fallbacks_total"), Some(copied));
}

#[test]
fn a_failed_self_test_leaves_the_plain_path_working() {
    if !privileged("a_failed_self_test_leaves_the_plain_path_working") {
        return;
    }
    let cg = CgroupGuard::new("splicefail");
    let echo = EchoServer::start("127.0.0.1:0");
    for (mode, why) in [("fail-self-test", "self-test failed: failed on purpose"), ("off", "--splice off")] {
        let n = node("splicefail", &cg, &config("127.100.2.12", echo.addr), &["--splice", mode]);
        let log = n.log();
        let line = log.lines().filter(|l| l.contains("fast path off: sk_skb splicing")).collect::<Vec<_>>();
        assert_eq!(line.len(), 1, "one clear line: {log}");
        assert!(line[0].contains(why), "{}", line[0]);
        assert_eq!(n.metric("sluice_fast_path_enabled{path=\"splice\"}"), Some(0.0));
        let out = clients(&cg, "127.100.2.12", &["--chunk", "1"], "1048576");
        assert!(out.contains("sent=1048576 received=1048576"), "{out}");
        wait_for("the copied connection to be counted", Duration::from_secs(5), || {
            (n.metric("sluice_path_connections_total{path=\"proxy\"}") == Some(1.0)).then_some(())
        });
        assert_eq!(n.metric("sluice_path_connections_total{path=\"splice\"}"), Some(0.0));
        assert_eq!(n.metric("sluice_path_bytes_total{path=\"proxy\",direction=\"up\"}"), Some(1_048_576.0));
    }
}

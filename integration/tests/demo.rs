//! `sluice demo`: the two-node mesh it builds really carries traffic across
//! nodes over mutual TLS, retries, ejects, refuses, takes the zero-hop path,
//! writes traces (to a file, or to a real OTLP receiver), and leaves nothing
//! behind, also after Ctrl-C.

#![allow(clippy::unwrap_used)]

use std::{
    io::BufRead as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use sluice_integration::{otlp::Rotel, privileged, read_until, target_bin};

/// The demo's process id, from its "node-a: sluice-demo-<pid>-a" line.
fn demo_pid(out: &str) -> String {
    let line = out.lines().find(|l| l.contains("node-a: sluice-demo-")).unwrap_or_else(|| panic!("{out}"));
    line.split("sluice-demo-").nth(1).unwrap().split('-').next().unwrap().to_string()
}

/// No namespace, cgroup or folder of that demo is left.
fn assert_clean(pid: &str) {
    let ns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
        .into_owned();
    assert!(!ns.contains(&format!("sluice-demo-{pid}")), "namespaces left: {ns}");
    let cg = sluice_redirector::mounts::cgroup2_mount().unwrap().join(format!("sluice-demo-{pid}"));
    assert!(!cg.exists(), "{} left", cg.display());
    assert!(!Path::new(&format!("/tmp/sluice-demo-{pid}")).exists());
    assert!(!Path::new(&format!("/sys/fs/bpf/sluice/demo-{pid}-a")).exists(), "pins left");
    for node in ["a", "b"] {
        let lock = format!("/run/sluice/demo-{pid}-{node}.lock");
        assert!(!Path::new(&lock).exists(), "{lock} left");
    }
}

/// Runs `cmd demo <args> --traces <traces>` with traces to the file; its
/// output, after checking it succeeded and no check failed.
fn run_demo(mut cmd: Command, args: &[&str], traces: &Path) -> String {
    let out = cmd
        .arg("demo")
        .args(args)
        .arg("--traces")
        .arg(traces)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("FAIL"), "{text}");
    text
}

#[test]
fn demo_runs_a_two_node_mesh_and_leaves_nothing() {
    if !privileged("demo_runs_a_two_node_mesh_and_leaves_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces.jsonl");
    let text = run_demo(Command::new(target_bin("sluice")), &["--duration", "17s", "--rate", "60"], &traces);
    // Every check ran and held (each line carries the figures it checked).
    for want in [
        "ok   shoppers:",
        "ok   across nodes:",
        "ok   retries:",
        "ok   outlier detection:",
        "ok   authorization:",
        "ok   zero-hop:",
        "node-a fast paths: zero-hop on",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    // The live view was shown (not a terminal: a frame every 5 s).
    assert!(text.matches("route     who calls whom").count() >= 3, "{text}");
    // One trace as a tree: the request, the attempt to the frontend, the
    // frontend's calls (passed on with the context), a retry.
    let tree = text.split("==> One trace").nth(1).unwrap();
    assert!(tree.contains("`-- SERVER GET 127.100.0.10/shop/"), "{tree}");
    assert!(tree.contains("CLIENT GET http://10.77.10.1:18080/shop/"), "{tree}");
    assert!(tree.contains("SERVER POST 127.100.0.20/demo.Pricing/Quote -> 200"), "{tree}");
    assert!(tree.contains("SERVER GET 127.100.0.30/stock/"), "{tree}");
    assert!(tree.contains("[retry 1]"), "{tree}");
    // The file is OTLP/JSON lines, from both nodes' exporter.
    let spans: usize = std::fs::read_to_string(&traces)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().len()
        })
        .sum();
    assert!(spans > 500, "{spans} spans");
    assert_clean(&demo_pid(&text));
}

#[test]
fn demo_sends_traces_to_an_otlp_collector() {
    if !privileged("demo_sends_traces_to_an_otlp_collector") {
        return;
    }
    let rotel = Rotel::start();
    let out = Command::new(target_bin("sluice"))
        .args(["demo", "--duration", "6s", "--rate", "20"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", rotel.http))
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("traces: to http://{} (relayed", rotel.http)), "{text}");
    assert!(text.contains("spans sent to"), "{text}");
    let spans = rotel.wait_spans("the demo's spans", |s| {
        s.iter().any(|x| {
            x.service == "sluice-demo" && x.attr("url.path").is_some_and(|p| p.starts_with("/shop/"))
        })
    });
    // The frontend passed the context on: its calls are children in one trace.
    let root = spans.iter().find(|s| s.attr("url.path").is_some_and(|p| p.starts_with("/shop/"))).unwrap();
    let in_trace = spans.iter().filter(|s| s.trace_id == root.trace_id).count();
    assert!(in_trace >= 6, "{in_trace} spans in {}: {spans:#?}", root.trace_id);
    assert_clean(&demo_pid(&text));
}

#[test]
fn demo_cleans_up_on_ctrl_c() {
    if !privileged("demo_cleans_up_on_ctrl_c") {
        return;
    }
    let mut child = Command::new(target_bin("sluice"))
        .args(["demo", "--keep-running", "--rate", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = read_until(&mut lines, "Try it yourself");
    let pid = demo_pid(&seen);
    assert!(Path::new(&format!("/run/netns/sluice-demo-{pid}-b")).exists(), "{seen}");
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("==> Cleaned up")), "{}", rest.join("\n"));
    assert_clean(&pid);
}

#[test]
fn demo_without_root_says_what_it_needs_and_runs_explicit_mode() {
    if !privileged("demo_without_root_says_what_it_needs_and_runs_explicit_mode") {
        return;
    }
    // A copy nobody may run, in a folder nobody may write.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = dir.path().join("sluice");
    std::fs::copy(target_bin("sluice"), &exe).unwrap();
    let traces = dir.path().join("traces.jsonl");
    let mut nobody = Command::new("setpriv");
    nobody.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]).arg(&exe);
    let text = run_demo(nobody, &["--duration", "8s", "--rate", "40"], &traces);
    for want in [
        "==> Not root: running the part of the demo that needs no privileges",
        "Run `sudo ./demo.sh`",
        "ready: listening on 127.100.0.10:8080, 127.100.0.20:9090, 127.100.0.30:8081",
        "ok   shoppers:",
        "ok   load balancing:",
        "ok   retries:",
        "ok   authorization:",
        "--   across nodes, workload identities and zero-hop: need root",
        "`-- SERVER GET 127.100.0.10/shop/",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    // Nothing privileged was made, and the demo's folder is gone.
    let pid = text.split("removed /tmp/sluice-demo-").nth(1).unwrap().trim().to_string();
    assert!(!Path::new(&format!("/tmp/sluice-demo-{pid}")).exists());
    let ns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
        .into_owned();
    assert!(!ns.contains(&format!("sluice-demo-{pid}")), "{ns}");
}

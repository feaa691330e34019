//! The `sluice` binary's answers to bad input: exit codes and messages that say
//! what, where and how to fix it. Only `node` needs root, and only there.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use sluice_integration::{CgroupGuard, privileged, read_until, target_bin};

fn sluice(args: &[&str]) -> Output {
    Command::new(target_bin("sluice")).args(args).output().expect("run sluice")
}

fn write(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    let s = p.display().to_string();
    (dir, s)
}

#[test]
fn validate_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mesh.yaml");
    let out = sluice(&["config", "validate", example]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn validate_accepts_the_example_policy() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.yaml");
    let out = sluice(&["config", "validate", example]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn validate_reports_file_line_column_field_and_fix() {
    for (text, at, field) in [
        (
            "services:\n  - name: a\n    vips: [127.100.0.1]\n    ports: [{port: 80}]\n    weight: 3\n",
            ":5:",
            "weight",
        ),
        (
            "services:\n  - name: a\n    vips: [127.100.0.1, 10.0.0.300]\n    ports: [{port: 80}]\n",
            ":3:",
            "services[0].vips[1]",
        ),
        (
            "services:\n  - {name: a, vips: [127.100.0.1], ports: [{port: 80}]}\n  - {name: b, vips: [127.100.0.1], ports: [{port: 80}]}\n",
            ":3:",
            "duplicate service address 127.100.0.1:80",
        ),
    ] {
        let (_d, path) = write("mesh.yaml", text);
        let out = sluice(&["config", "validate", &path]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{path}{at}")), "{err}");
        assert!(err.contains(field), "{err}");
        assert!(err.contains("fix:"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_config_file() {
    let out = sluice(&["config", "validate", "/nonexistent/sluice.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/sluice.yaml") && err.contains("No such file"), "{err}");
}

#[test]
fn node_refuses_a_bad_config_before_touching_the_kernel() {
    let (_d, path) = write("mesh.yaml", "services: 3\n");
    let out = sluice(&["node", "--config", &path, "--cgroup", "/nonexistent", "--instance", "badcfg"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{path}:1:")));
}

#[test]
fn node_refuses_the_root_cgroup_and_missing_cgroups() {
    if !privileged("node_refuses_the_root_cgroup_and_missing_cgroups") {
        return;
    }
    let (_d, path) = write("mesh.yaml", "services: []\n");
    let root = sluice_integration::cgroup::cgroup2_root();
    let out = sluice(&[
        "node",
        "--config",
        &path,
        "--cgroup",
        &root.display().to_string(),
        "--instance",
        "rootcg",
        "--proxy-port",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to attach to the root cgroup"));
    let out = sluice(&[
        "node",
        "--config",
        &path,
        "--cgroup",
        "sluice-does-not-exist",
        "--instance",
        "nocg",
        "--proxy-port",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn node_without_root_says_so() {
    if !privileged("node_without_root_says_so") {
        return;
    }
    // Drop to nobody, the way an unprivileged user would run it.
    let cg = CgroupGuard::new("noroot");
    let (_d, path) = write("mesh.yaml", "services: []\n");
    std::fs::set_permissions(_d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(target_bin("sluice"))
        .args(["node", "--config", &path, "--cgroup"])
        .arg(cg.path())
        .args(["--instance", "noroot", "--proxy-port", "0"])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("needs root"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_reports_every_feature() {
    let out = sluice(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for row in ["program cgroup_sock_addr", "program sock_ops", "map lru_hash", "BTF", "cgroup v2", "bpffs"] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }
    if nix::unistd::geteuid().is_root() {
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            text.contains("Sluice's programs pass the verifier")
                && text.contains("This host can run Sluice.")
        );
    } else {
        assert_eq!(out.status.code(), Some(3));
    }
}

/// The value after `key` on the line that holds it.
fn after<'a>(text: &'a str, key: &str) -> &'a str {
    let line = text.lines().find(|l| l.contains(key)).unwrap_or_else(|| panic!("no {key:?} in:\n{text}"));
    line.split(key).nth(1).unwrap().split_whitespace().next().unwrap()
}

#[test]
fn tour_walks_through_and_leaves_nothing() {
    if !privileged("tour_walks_through_and_leaves_nothing") {
        return;
    }
    let out = sluice(&["tour"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for expect in [
        "app dialed 127.100.0.10:9080; its socket is connected to 127.0.0.1:",
        "redirect_connect4 +1, orig_dst_saved +1",
        "reply: reviews-v1",
        "reply: reviews-v2",
        "passthrough +1",
        "proxy: 3 connections forwarded",
        "mesh.yaml:4:5: weight: unknown field",
        "got \"still there?\"",
        ": none",
    ] {
        assert!(text.contains(expect), "{expect:?} missing from the tour:\n{text}");
    }
    // After reload only v2 answers.
    let after_reload = text.split("Hot reload").nth(1).unwrap();
    assert!(!after_reload.contains("reviews-v1 ("), "{after_reload}");
    let cgroup = after(&text, "mesh cgroup: ");
    assert!(!std::path::Path::new(cgroup).exists(), "{cgroup} remains");
}

#[test]
fn tour_cleans_up_on_ctrl_c() {
    if !privileged("tour_cleans_up_on_ctrl_c") {
        return;
    }
    use std::io::BufRead;
    let mut child = Command::new(target_bin("sluice"))
        .args(["tour", "--keep-running"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = read_until(&mut lines, "press Ctrl-C");
    let cgroup = after(&seen, "mesh cgroup: ").to_string();
    let pins = after(&seen, "pinned under ").to_string();
    assert!(std::path::Path::new(&pins).exists(), "{seen}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!std::path::Path::new(&cgroup).exists(), "{cgroup} remains");
    assert!(!std::path::Path::new(&pins).exists(), "{pins} remain");
}

#[test]
fn explicit_mode_refuses_what_needs_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mesh.yaml");
    std::fs::write(
        &cfg,
        "nodes: [{name: a, address: 10.0.0.1}]\nservices:\n  - {name: web, vips: [127.100.0.10], ports: [{port: 8080}]}\n",
    )
    .unwrap();
    let out = sluice(&["node", "--explicit", "--config", cfg.to_str().unwrap(), "--admin-port", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("explicit mode") && err.contains("remove `nodes:`"), "{err}");
    // Without --explicit, a node needs its cgroup.
    let out = sluice(&["node", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cgroup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

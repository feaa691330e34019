//! Fixtures for Sluice's end-to-end tests: guards for child cgroups, network
//! namespaces and node processes that undo themselves in `Drop` (even when a
//! test fails), echo servers, and a client that runs inside a mesh cgroup.
//!
//! Everything is named `sluice-t<pid>-<test>` so parallel tests never collide
//! and `shared/tools/leftovers` finds whatever a crashed run left.
//! Tests need root; [`privileged`] skips loudly without it, and fails instead
//! when `SLUICE_REQUIRE_PRIVILEGED=1` (as in CI).

#![allow(clippy::unwrap_used)] // a test harness: a failed setup step should fail the test loudly

pub mod bench;
pub mod cgroup;
pub mod echo;
pub mod httpd;
pub mod l7;
pub mod netns;
pub mod node;
pub mod otlp;
pub mod packet;
pub mod process;

use std::{io::Write, path::PathBuf, time::Duration};

pub use cgroup::CgroupGuard;
pub use echo::EchoServer;
pub use httpd::HttpEndpoint;
pub use netns::NetnsGuard;
pub use node::Node;
pub use process::{ClientResult, client};

/// Marker the test script greps for: a skipped privileged test.
pub const SKIP_MARKER: &str = "SLUICE-PRIVILEGED-TEST-SKIPPED";

/// True when the test may run. Without root it prints a loud skip line, or
/// panics when privileged tests are required.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("SLUICE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!("{test} needs root, and SLUICE_REQUIRE_PRIVILEGED=1 forbids skipping it");
    }
    // Straight to stderr, not eprintln!: the test harness captures the macros'
    // output of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "{SKIP_MARKER}: {test} needs root (run the tests with sudo)");
    false
}

/// A name unique to this test process and test.
pub fn unique(test: &str) -> String {
    let mut t: String = test.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
    t.make_ascii_lowercase();
    format!("sluice-t{}-{t}", std::process::id())
}

/// `target/<profile>/<name>`: beside the running executable (a binary such as
/// `sluice-bench`) or one folder up (a test, which runs from `deps/`).
pub fn target_bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("SLUICE_{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("target dir");
    let candidates = [dir.join(name), dir.parent().map(|d| d.join(name)).unwrap_or_default()];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("{name} not built next to {}: run `cargo build --workspace --bins` first", exe.display())
    })
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads lines until one contains `needle`; returns all read, that one included.
pub fn read_until(lines: &mut impl Iterator<Item = std::io::Result<String>>, needle: &str) -> String {
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("reading the child's output");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            break;
        }
    }
    seen
}

//! Child processes: the test client, and a guard that kills what it spawned.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

/// What `sluice-testkit client` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResult {
    pub sent: usize,
    pub received: usize,
    pub sent_sha: String,
    pub received_sha: String,
    pub peer: String,
}

impl ClientResult {
    /// Every byte came back, in order.
    pub fn intact(&self) -> bool {
        self.sent == self.received && self.sent_sha == self.received_sha
    }
}

/// Runs the test client inside `cgroup` (and `netns`), sending `bytes` bytes to
/// `addr` in writes of `chunk` bytes. Err carries the client's stderr.
pub fn client(
    cgroup: Option<&Path>,
    netns: Option<&str>,
    addr: SocketAddr,
    bytes: usize,
    chunk: usize,
) -> Result<ClientResult, String> {
    let mut cmd = Command::new(crate::target_bin("sluice-testkit"));
    cmd.arg("client");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    cmd.args(["--chunk", &chunk.to_string(), &addr.to_string(), &bytes.to_string()]);
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| -> String {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string))
            .unwrap_or_default()
    };
    Ok(ClientResult {
        sent: field("sent").parse().unwrap_or(usize::MAX),
        received: field("received").parse().unwrap_or(0),
        sent_sha: field("sent_sha"),
        received_sha: field("received_sha"),
        peer: field("peer"),
    })
}

/// A child killed (and reaped) on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sluice-testkit echo` (in `netns` if given); returns it and its address.
pub fn echo_process(netns: Option<&str>, listen: &str, after_eof: bool) -> (ChildGuard, SocketAddr) {
    let mut cmd = Command::new(crate::target_bin("sluice-testkit"));
    cmd.arg("echo");
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    if after_eof {
        cmd.arg("--after-eof");
    }
    let mut child = cmd.arg(listen).stdout(Stdio::piped()).spawn().expect("spawn testkit echo");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read echo address");
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("echo said {line:?}"));
    (guard, addr)
}

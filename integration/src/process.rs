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

/// Like [`client`], `count` times in a row (new connection each time).
pub fn client_count(cgroup: &Path, addr: SocketAddr, count: usize) -> Result<(), String> {
    let out = Command::new(crate::target_bin("sluice-testkit"))
        .arg("client")
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--count", &count.to_string(), &addr.to_string(), "64"])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// A connection from inside the mesh cgroup, held open until [`Held::release`].
#[derive(Debug)]
pub struct Held {
    child: ChildGuard,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Held {
    pub fn open(cgroup: &Path, addr: SocketAddr) -> Self {
        let mut child = Command::new(crate::target_bin("sluice-testkit"))
            .arg("hold")
            .arg("--cgroup")
            .arg(cgroup)
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn testkit hold");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert!(line.starts_with("connected"), "hold said {line:?}");
        Self { child: ChildGuard(child), stdout }
    }

    /// Closes stdin: the client checks one echoed byte and exits. True when
    /// the connection still worked.
    pub fn release(mut self) -> bool {
        drop(self.child.0.stdin.take());
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
        self.child.0.wait().map(|s| s.success()).unwrap_or(false) && rest.contains("still intact")
    }
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

/// Starts `sluice-testkit http` (a tiny HTTP/1.1 server); returns it and its address.
pub fn http_process(listen: &str) -> (ChildGuard, SocketAddr) {
    testkit_server("http", None, listen, false)
}

/// Starts `sluice-testkit echo` (in `netns` if given); returns it and its address.
pub fn echo_process(netns: Option<&str>, listen: &str, after_eof: bool) -> (ChildGuard, SocketAddr) {
    testkit_server("echo", netns, listen, after_eof)
}

fn testkit_server(
    kind: &str,
    netns: Option<&str>,
    listen: &str,
    after_eof: bool,
) -> (ChildGuard, SocketAddr) {
    let mut cmd = Command::new(crate::target_bin("sluice-testkit"));
    cmd.arg(kind);
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    if after_eof {
        cmd.arg("--after-eof");
    }
    let mut child = cmd.arg(listen).stdout(Stdio::piped()).spawn().expect("spawn testkit");
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

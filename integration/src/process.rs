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
    client_timeout(cgroup, netns, addr, bytes, chunk, 10_000)
}

/// [`client`] giving up after `timeout_ms` (connect and each read).
pub fn client_timeout(
    cgroup: Option<&Path>,
    netns: Option<&str>,
    addr: SocketAddr,
    bytes: usize,
    chunk: usize,
    timeout_ms: u64,
) -> Result<ClientResult, String> {
    let mut cmd = Command::new(crate::target_bin("sluice-testkit"));
    cmd.args(["client", "--timeout-ms", &timeout_ms.to_string()]);
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

/// `sluice-testkit udp-sink` in `netns` for `secs`: the guard, its address, and
/// a reader for its per-source counts (read them once it has exited).
pub fn udp_sink(netns: &str, listen: &str, secs: u64) -> (Child, SocketAddr) {
    let mut child = Command::new(crate::target_bin("sluice-testkit"))
        .args(["udp-sink", "--netns", netns, "--secs", &secs.to_string(), listen])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn udp-sink");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    out.read_line(&mut line).expect("read");
    let addr = line.trim().strip_prefix("listening ").and_then(|a| a.parse().ok()).expect("sink address");
    child.stdout = Some(out.into_inner());
    (child, addr)
}

/// The per-source counts a finished sink printed.
pub fn sink_counts(child: Child) -> std::collections::HashMap<String, u64> {
    let out = child.wait_with_output().expect("udp-sink");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (ip, n) = l.split_once(' ')?;
            Some((ip.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// `sluice-testkit udp-send` from `netns`: datagrams actually sent.
pub fn udp_send(netns: &str, to: SocketAddr, count: usize, pps: u64) -> Child {
    Command::new(crate::target_bin("sluice-testkit"))
        .args([
            "udp-send",
            "--netns",
            netns,
            "--count",
            &count.to_string(),
            "--pps",
            &pps.to_string(),
            &to.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn udp-send")
}

/// What a finished `udp-send` says it sent.
pub fn sent(child: Child) -> u64 {
    let out = child.wait_with_output().expect("udp-send");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("sent ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Starts `sluice-testkit http` (a tiny HTTP/1.1 server); returns it and its address.
pub fn http_process(listen: &str) -> (ChildGuard, SocketAddr) {
    testkit_server("http", None, listen, false)
}

/// Starts `sluice-testkit hello` (the benchmark backend); returns it and its address.
pub fn hello_process(listen: &str) -> (ChildGuard, SocketAddr) {
    hello_in(None, listen)
}

/// [`hello_process`] in network namespace `netns`.
pub fn hello_in(netns: Option<&str>, listen: &str) -> (ChildGuard, SocketAddr) {
    testkit_server("hello", netns, listen, false)
}

/// Starts `sluice-testkit echo` (in `netns` if given); returns it and its address.
pub fn echo_process(netns: Option<&str>, listen: &str, after_eof: bool) -> (ChildGuard, SocketAddr) {
    testkit_server("echo", netns, listen, after_eof)
}

/// Starts `sluice-testkit echo` inside `cgroup` (an endpoint that is a mesh workload itself).
pub fn echo_in_cgroup(cgroup: &Path, listen: &str) -> (ChildGuard, SocketAddr) {
    let mut cmd =
        exec_in(cgroup, crate::target_bin("sluice-testkit").to_str().expect("utf-8 path"), &["echo"]);
    spawn_server(&mut cmd, listen)
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
    spawn_server(&mut cmd, listen)
}

/// Spawns a testkit server (with `listen` as its last argument); waits for its address.
fn spawn_server(cmd: &mut Command, listen: &str) -> (ChildGuard, SocketAddr) {
    spawn_listening(cmd.arg(listen))
}

/// The Python gRPC peer (grpcio, C-core: another implementation than ours).
pub fn grpc_peer() -> String {
    format!("{}/grpc/peer.py", env!("CARGO_MANIFEST_DIR"))
}

/// The Python gRPC server on 127.0.0.1 (in `netns` when given): it and its port.
pub fn grpc_server(netns: Option<&str>, name: &str) -> (ChildGuard, u16) {
    spawn_listening(crate::bench::in_netns(netns, "/usr/bin/python3").args([
        grpc_peer().as_str(),
        "server",
        name,
    ]))
}

/// Spawns a server that first prints `listening X` (an address, a port); returns it and X.
pub fn spawn_listening<T: std::str::FromStr>(cmd: &mut Command) -> (ChildGuard, T) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn a server");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the server's address");
    let v = line.trim().strip_prefix("listening ").and_then(|a| a.parse().ok());
    (guard, v.unwrap_or_else(|| panic!("the server said {line:?}")))
}

/// `cmd args` run by `sluice-testkit exec`, which first joins `cgroup`.
fn exec_in(cgroup: &Path, cmd: &str, args: &[&str]) -> Command {
    let mut c = Command::new(crate::target_bin("sluice-testkit"));
    c.arg("exec").arg("--cgroup").arg(cgroup).arg("--").arg(cmd).args(args).stdin(Stdio::null());
    c
}

/// Runs `cmd args` inside `cgroup` (curl, h2load, python...), as a mesh workload.
pub fn run_in(cgroup: &Path, cmd: &str, args: &[&str]) -> std::process::Output {
    exec_in(cgroup, cmd, args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// [`run_in`] in the background.
pub fn spawn_in(cgroup: &Path, cmd: &str, args: &[&str]) -> Child {
    exec_in(cgroup, cmd, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

/// What a raw exchange saw: the response bytes, and after how long the
/// server closed (None: still open at the timeout).
#[derive(Debug)]
pub struct RawExchange {
    pub response: Vec<u8>,
    pub closed_after_ms: Option<u64>,
    /// The client's error (e.g. connection refused), if it failed.
    pub error: Option<String>,
}

impl RawExchange {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.response).into_owned()
    }
}

/// Sends `request` as is from inside `cgroup` and reads until the server closes.
pub fn raw(cgroup: &Path, addr: SocketAddr, request: &[u8], timeout_ms: u64) -> RawExchange {
    raw_split(cgroup, addr, request, request.len(), 0, timeout_ms)
}

/// [`raw`], the request sent in two writes: its first `split_at` bytes,
/// then after `pause_ms` the rest.
pub fn raw_split(
    cgroup: &Path,
    addr: SocketAddr,
    request: &[u8],
    split_at: usize,
    pause_ms: u64,
    timeout_ms: u64,
) -> RawExchange {
    use std::io::Write;
    let mut child = Command::new(crate::target_bin("sluice-testkit"))
        .arg("raw")
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--split-at", &split_at.to_string(), "--pause-ms", &pause_ms.to_string()])
        .args(["--timeout-ms", &timeout_ms.to_string(), &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn testkit raw");
    child.stdin.take().expect("stdin").write_all(request).expect("write request");
    let out = child.wait_with_output().expect("testkit raw");
    let err = String::from_utf8_lossy(&out.stderr);
    let closed_after_ms =
        err.lines().find_map(|l| l.strip_prefix("closed_after_ms=")).and_then(|n| n.trim().parse().ok());
    let error = (!out.status.success()).then(|| err.into_owned());
    RawExchange { response: out.stdout, closed_after_ms, error }
}

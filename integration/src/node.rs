//! A `sluice node` process under test.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::{NetnsGuard, target_bin};

/// How to start a node.
#[derive(Debug)]
pub struct NodeOpts<'a> {
    pub test: &'a str,
    pub config: &'a str,
    pub cgroup: &'a Path,
    pub netns: Option<&'a NetnsGuard>,
    /// Run the node itself inside the mesh cgroup (proves it never redirects itself).
    pub node_in_cgroup: bool,
    /// More `sluice node` arguments (`--workers 2`, `--takeover`, ...).
    pub args: &'a [&'a str],
}

/// A running node; stopped (and its pins cleaned) on drop.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    pub instance: String,
    pub proxy4: SocketAddr,
    pub admin: SocketAddr,
    netns: Option<String>,
    dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A scratch folder outside the source tree, removed on drop.
    #[derive(Debug)]
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Node {
    pub fn start(o: NodeOpts<'_>) -> Self {
        Self::start_env(o, &[])
    }

    /// [`Node::start`] with more environment variables for the node.
    pub fn start_env(o: NodeOpts<'_>, env: &[(&str, &str)]) -> Self {
        Self::start_with(o, env, None)
    }

    /// [`Node::start`] running `bin` when given (a PGO build, in a
    /// benchmark), else the `sluice` beside the tests.
    pub fn start_bin(o: NodeOpts<'_>, bin: Option<&Path>) -> Self {
        Self::start_with(o, &[], bin)
    }

    fn start_with(o: NodeOpts<'_>, env: &[(&str, &str)], bin: Option<&Path>) -> Self {
        let instance = crate::unique(o.test).trim_start_matches("sluice-").to_string();
        let dir = std::env::temp_dir().join(format!("sluice-{instance}"));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let dir = tempfile_dir::Dir(dir);
        std::fs::write(dir.0.join("mesh.yaml"), o.config).expect("write config");
        let mut argv: Vec<String> = Vec::new();
        if o.node_in_cgroup {
            argv.extend(["sh".into(), "-c".into(), "echo $$ > \"$0\" && exec \"$@\"".into()]);
            argv.push(o.cgroup.join("cgroup.procs").display().to_string());
        }
        if let Some(ns) = o.netns {
            argv.extend(ns.nsenter());
        }
        argv.push(bin.map_or_else(|| target_bin("sluice"), Path::to_path_buf).display().to_string());
        argv.extend(["node", "--config"].map(String::from));
        argv.push(dir.0.join("mesh.yaml").display().to_string());
        argv.push("--cgroup".into());
        argv.push(o.cgroup.display().to_string());
        argv.extend(["--instance".into(), instance.clone(), "--proxy-port".into(), "0".into()]);
        argv.extend(["--watch-interval-ms".into(), "50".into()]);
        if !o.args.contains(&"--drain-ms") {
            argv.extend(["--drain-ms".into(), "2000".into()]);
        }
        if !o.args.contains(&"--admin-port") {
            // Parallel tests must not share an admin port (it is SO_REUSEPORT).
            argv.extend(["--admin-port".into(), "0".into()]);
        }
        if !o.args.contains(&"--workers") {
            argv.extend(["--workers".into(), "1".into()]);
        }
        argv.extend(o.args.iter().map(|a| a.to_string()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.0.join("node.log"))
            .expect("log file");
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().copied())
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info,sluice_proxy=debug".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn sluice node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let netns = o.netns.map(|n| n.name().to_string());
        let mut node = Self { child: Some(child), instance, proxy4: unset, admin: unset, netns, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("sluice node ready") => {
                    node.proxy4 =
                        line.split_whitespace().nth(4).and_then(|a| a.parse().ok()).expect("proxy address");
                    node.admin = line.rsplit(' ').next().and_then(|a| a.parse().ok()).expect("admin address");
                    return node;
                }
                Ok(_) => {}
                Err(_) => {
                    if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                        panic!("sluice node exited with {status} before it was ready:\n{}", node.log());
                    }
                    assert!(Instant::now() < deadline, "sluice node not ready after 30s:\n{}", node.log());
                }
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("node.log")).unwrap_or_default()
    }

    /// Replaces the config file the way config managers do: write aside, rename over.
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.0.join("mesh.yaml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("mesh.yaml")
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/sluice").join(&self.instance)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// GET `path` on the admin listener (inside the node's namespace): status line and body.
    pub fn admin_get(&self, path: &str) -> String {
        let mut cmd = Command::new(target_bin("sluice-testkit"));
        cmd.arg("get");
        if let Some(ns) = &self.netns {
            cmd.args(["--netns", ns]);
        }
        let out = cmd.arg(self.admin.to_string()).arg(path).output().expect("testkit get");
        assert!(out.status.success(), "GET {path}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One sample of `/metrics`: the value of the line `name{labels}` (exact text).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.admin_get("/metrics")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == series).and_then(|(_, v)| v.parse().ok()))
    }

    /// `sluice status` of this instance.
    pub fn status(&self) -> String {
        let out = Command::new(target_bin("sluice"))
            .args(["status", "--instance", &self.instance])
            .output()
            .expect("sluice status");
        assert!(out.status.success(), "sluice status: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The worker slots: (slot, state, open connections, connections selected).
    pub fn workers(&self) -> Vec<(u32, String, u32, u64)> {
        let status = self.status();
        let table = status.split("workers:").nth(1).unwrap_or_default();
        table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.parse().ok()?,
                    f.get(1)?.to_string(),
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.parse().ok()?,
                ))
            })
            .collect()
    }

    /// The kernel counters, from `sluice status`.
    pub fn kernel_stats(&self) -> HashMap<String, u64> {
        self.status()
            .split("kernel counters:")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (k, v) = (it.next()?, it.next()?.parse().ok()?);
                it.next().is_none().then(|| (k.to_string(), v))
            })
            .collect()
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Sends `sig` and waits for the exit (10 s at most).
    pub fn stop_with(&mut self, sig: Signal) -> ExitStatus {
        self.signal(sig);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the node to exit (kills it and fails after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("node already stopped");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sluice node did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `sluice bpf cleanup --instance` for this node.
    pub fn cleanup(&self) -> std::process::Output {
        Command::new(target_bin("sluice"))
            .args(["bpf", "cleanup", "--instance", &self.instance])
            .output()
            .expect("sluice bpf cleanup")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Pins a killed node left, and the instance's lock and state files.
        let _ = self.cleanup();
        if std::thread::panicking() {
            // Not eprintln!: a failed write (stderr closed, as behind `| head`)
            // would panic again inside this unwinding and abort, leaving every
            // guard not dropped yet (cgroups, other processes) behind.
            let _ =
                writeln!(std::io::stderr(), "--- sluice node log ({}) ---\n{}", self.instance, self.log());
        }
    }
}

/// Programs attached to a cgroup, per `bpftool cgroup show`.
pub fn attached_programs(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(cgroup)
        .output()
        .expect("bpftool (apt-get install bpftool)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

pub use nix::sys::signal::Signal as Sig;

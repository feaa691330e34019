//! A throwaway network namespace with only a loopback device: no route out.

use std::process::Command;

#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    pub fn new(test: &str) -> Self {
        let name = crate::unique(test);
        run(&["netns", "add", &name]);
        let g = Self { name };
        run(&["-n", &g.name, "link", "set", "lo", "up"]);
        g
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `nsenter` arguments that run a command in this namespace (keeping the
    /// mount namespace, so cgroup2 and bpffs stay visible, unlike `ip netns exec`).
    pub fn nsenter(&self) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/run/netns/{}", self.name), "--".into()]
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

//! A throwaway network namespace with only a loopback device: no route out.

use std::process::Command;

#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    pub fn new(test: &str) -> Self {
        Self::named(&crate::unique(test))
    }

    /// A second (third, ...) namespace of one test: `suffix` tells them apart.
    pub fn with_suffix(test: &str, suffix: &str) -> Self {
        Self::named(&format!("{}-{suffix}", crate::unique(test)))
    }

    fn named(name: &str) -> Self {
        let name = name.to_string();
        run(&["netns", "add", &name]);
        let g = Self { name };
        run(&["-n", &g.name, "link", "set", "lo", "up"]);
        g
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A veth pair: `here` in this namespace with `addr_here` (CIDR), `there` in
    /// `peer` with `addr_there`. Both up; no routes beyond the link.
    pub fn veth(&self, here: &str, addr_here: &str, peer: &NetnsGuard, there: &str, addr_there: &str) {
        run(&[
            "-n", &self.name, "link", "add", here, "type", "veth", "peer", "name", there, "netns", &peer.name,
        ]);
        run(&["-n", &self.name, "addr", "add", addr_here, "dev", here]);
        run(&["-n", &peer.name, "addr", "add", addr_there, "dev", there]);
        run(&["-n", &self.name, "link", "set", here, "up"]);
        run(&["-n", &peer.name, "link", "set", there, "up"]);
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

/// Nodes for multi-node tests: namespaces `a` (10.77.9.1), `b` (10.77.9.2)
/// and optionally `c` (10.77.9.3), each with a veth into a bridge in a
/// fourth, `hub`. No route leaves them.
#[derive(Debug)]
pub struct NodeNets {
    pub a: NetnsGuard,
    pub b: NetnsGuard,
    pub c: Option<NetnsGuard>,
    /// Declared last: dropped after the nodes' namespaces.
    pub hub: NetnsGuard,
}

impl NodeNets {
    pub const A: &'static str = "10.77.9.1";
    pub const B: &'static str = "10.77.9.2";
    pub const C: &'static str = "10.77.9.3";

    /// `a` and `b`.
    pub fn new(test: &str) -> Self {
        Self::build(test, false)
    }

    /// `a`, `b` and `c`.
    pub fn three(test: &str) -> Self {
        Self::build(test, true)
    }

    fn build(test: &str, third: bool) -> Self {
        let hub = NetnsGuard::with_suffix(test, "hub");
        run(&["-n", hub.name(), "link", "add", "br0", "type", "bridge"]);
        run(&["-n", hub.name(), "link", "set", "br0", "up"]);
        let node = |name: &str, addr: &str| {
            let ns = NetnsGuard::with_suffix(test, name);
            let port = format!("p{name}");
            run(&[
                "-n",
                ns.name(),
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                hub.name(),
            ]);
            run(&["-n", ns.name(), "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            run(&["-n", ns.name(), "link", "set", "eth0", "up"]);
            run(&["-n", hub.name(), "link", "set", &port, "master", "br0"]);
            run(&["-n", hub.name(), "link", "set", &port, "up"]);
            ns
        };
        let (a, b) = (node("a", Self::A), node("b", Self::B));
        let c = third.then(|| node("c", Self::C));
        Self { a, b, c, hub }
    }
}

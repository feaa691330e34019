//! Helpers of the L7 tests: a node with its mesh cgroup, curl run inside it,
//! and config snippets for in-process endpoints.

use std::{collections::HashMap, path::Path};

use crate::{CgroupGuard, HttpEndpoint, Node, node::NodeOpts, process::run_in};

/// A node and the cgroup its clients run in.
#[derive(Debug)]
pub struct Mesh {
    pub node: Node,
    pub cg: CgroupGuard,
}

/// Starts a node for `config` with its own mesh cgroup.
pub fn mesh(test: &str, config: &str, args: &[&str]) -> Mesh {
    let cg = CgroupGuard::new(test);
    let node =
        Node::start(NodeOpts { test, config, cgroup: cg.path(), netns: None, node_in_cgroup: false, args });
    Mesh { node, cg }
}

/// What curl saw: status, response headers (lowercase names), body.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub stderr: String,
}

impl Curl {
    /// `name=value` from the endpoint's description of the request.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    }
}

/// curl from inside `cg`; panics if curl fails.
pub fn curl(cg: &Path, args: &[&str]) -> Curl {
    let mut all = vec!["-sS", "-D", "/dev/stderr", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = run_in(cg, "curl", &all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl {args:?} failed: {stderr}");
    // The last header block (after any 100 Continue).
    let block =
        stderr.split("\r\n\r\n").filter(|b| b.starts_with("HTTP/")).last().unwrap_or_default().to_string();
    let mut lines = block.lines();
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Curl { status, headers, body, stderr }
}

/// `endpoints:` entries for `service`, with optional versions.
pub fn endpoints_yaml(service: &str, eps: &[(&HttpEndpoint, Option<&str>)]) -> String {
    eps.iter()
        .map(|(e, v)| {
            let version = v.map(|v| format!(", version: {v}")).unwrap_or_default();
            format!("  - {{service: {service}, address: 127.0.0.1, port: {}{version}}}\n", e.addr.port())
        })
        .collect()
}

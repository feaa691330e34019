//! docker/: the compose file passes `docker compose config` (or docker-compose
//! 1.29's, installed by scripts/install-deps.sh where Docker is absent), and
//! the topology it describes works: its Sluice commands, run as written in
//! one network namespace (as the containers share the node's), serve the
//! demo's traffic.

#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sluice_integration::{NetnsGuard, privileged, process::ChildGuard, target_bin, wait_for};

const DOCKER_COMPOSE_V1: &str = "/opt/sluice-tools/docker-compose";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn compose_file() -> PathBuf {
    repo().join("docker/compose.yaml")
}

/// `docker compose` when the Docker client is here, else docker-compose 1.29.
fn compose_cmd() -> Command {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        let mut c = Command::new("docker");
        c.arg("compose");
        return c;
    }
    let bin = Path::new(DOCKER_COMPOSE_V1).join("bin/docker-compose");
    assert!(
        bin.is_file(),
        "neither `docker compose` nor {} (scripts/install-deps.sh installs it)",
        bin.display()
    );
    let mut c = Command::new("/usr/bin/python3");
    c.arg(bin).env("PYTHONPATH", DOCKER_COMPOSE_V1);
    c
}

#[test]
fn compose_file_passes_docker_compose_config() {
    let out = compose_cmd().arg("-f").arg(compose_file()).arg("config").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let parsed: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let services = parsed["services"].as_object().unwrap();
    for s in [
        "sluice",
        "pricing-1",
        "pricing-2",
        "stock-v1",
        "stock-v2",
        "frontend",
        "load",
        "otel-collector",
        "jaeger",
        "prometheus",
    ] {
        assert!(services.contains_key(s), "{s} missing: {text}");
    }
    // Sluice's image is built from this repository.
    let ctx = parsed["services"]["sluice"]["build"]["context"].as_str().unwrap();
    assert_eq!(Path::new(ctx).canonicalize().unwrap(), repo().canonicalize().unwrap());
    assert!(repo().join(parsed["services"]["sluice"]["build"]["dockerfile"].as_str().unwrap()).is_file());
    assert_eq!(parsed["services"]["prometheus"]["network_mode"], "service:sluice");
}

#[test]
fn compose_topology_serves_the_demo() {
    if !privileged("compose_topology_serves_the_demo") {
        return;
    }
    let doc: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(compose_file()).unwrap()).unwrap();
    let mesh = repo().join("docker/mesh.yaml");
    let ns = NetnsGuard::new("compose");
    let nsenter = ns.nsenter();
    let run = |name: &str| -> ChildGuard {
        let svc = &doc["services"][name];
        assert_eq!(svc["image"], "sluice:dev", "{name}");
        let args: Vec<String> = svc["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().replace("/etc/sluice/mesh.yaml", mesh.to_str().unwrap()))
            .collect();
        let child = Command::new(&nsenter[0])
            .args(&nsenter[1..])
            .arg(target_bin("sluice"))
            .args(&args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        ChildGuard(child)
    };
    let curl = |url: &str| -> String {
        let out = Command::new(&nsenter[0])
            .args(&nsenter[1..])
            .args(["curl", "-s", "-m", "2", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let _node = run("sluice");
    wait_for("the node's /ready", Duration::from_secs(20), || {
        (curl("http://127.0.0.1:15000/ready").contains("ready")).then_some(())
    });
    let _apps: Vec<ChildGuard> =
        ["pricing-1", "pricing-2", "stock-v1", "stock-v2", "frontend", "load"].into_iter().map(run).collect();
    // Prometheus's view: the node's /metrics, scraped from the shared namespace.
    let total = |m: &str, svc: &str, code: &str| -> f64 {
        m.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!("destination_service=\"{svc}\""))
                    && l.contains(&format!("response_code=\"{code}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The frontend answers through both stock versions, retries included:
    // v1 fails 10% of its requests at random, so the first retry can take a
    // while (no failure among ~50 requests: about 0.4% of runs).
    let retries = |m: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with("sluice_http_retries_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = curl("http://127.0.0.1:15000/metrics");
        if total(&m, "web", "200") >= 100.0 && total(&m, "web", "403") >= 2.0 && retries(&m) > 0.0 {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "no demo traffic in 30 s:\n{last}");
        last = m;
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(total(&m, "pricing", "200") >= 100.0, "{m}");
    assert!(m.contains("response_code=\"403\",grpc_response_status=\"\",response_flags=\"RBAC\""), "{m}");
    assert!(total(&m, "stock", "200") >= 100.0, "{m}");
    assert!(retries(&m) > 0.0, "{m}");
}

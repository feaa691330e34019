//! `sluice status` and `sluice bpf cleanup`: read or remove what nodes pinned.

use std::path::Path;

use sluice_redirector::{FailMode, Liveness, PIN_ROOT, RUN_DIR, Stats, Workers, cleanup, monotonic_ns};

use crate::{Failure, cli::StatusArgs, exit};

pub(crate) fn run(args: StatusArgs) -> Result<(), Failure> {
    let dir = Path::new(PIN_ROOT).join(&args.instance);
    if !dir.exists() {
        return Err(Failure::new(
            exit::FAILED,
            format!("no node instance '{}' is running (nothing pinned at {})", args.instance, dir.display()),
        ));
    }
    println!("instance {} (pins at {})", args.instance, dir.display());
    let live = Liveness::read_pinned(&dir)?;
    let age_ms = monotonic_ns().saturating_sub(live.heartbeat_ns) / 1_000_000;
    let mode = if live.fail_mode == FailMode::Closed as u32 { "closed" } else { "open" };
    let state = if live.heartbeat_ns == 0 {
        "no heartbeat yet".to_string()
    } else if age_ms <= u64::from(live.timeout_ms) {
        format!("up (heartbeat {age_ms} ms ago)")
    } else {
        format!("DOWN (last heartbeat {age_ms} ms ago; fail-{mode} applies)")
    };
    println!("proxy: {state}; fail mode {mode}, timeout {} ms", live.timeout_ms);
    println!("workers:");
    println!("  {:<6} {:<9} {:>6} {:>10}", "slot", "state", "open", "selected");
    for w in Workers::read_pinned(&dir)? {
        println!(
            "  {:<6} {:<9} {:>6} {:>10}",
            w.slot,
            format!("{:?}", w.state).to_lowercase(),
            w.load,
            w.selected
        );
    }
    if let Ok(text) = std::fs::read_to_string(crate::node::policy_state_path(&args.instance)) {
        let ifaces: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(i, m)| format!("{i} (XDP {m}, tc egress)")))
            .collect();
        println!("policy on: {}", ifaces.join(", "));
    }
    if dir.join(sluice_bpf::maps::POLICY_STATS).exists() {
        println!("policy counters:");
        for (name, n) in sluice_redirector::policy::read_pinned_counters(&dir)? {
            println!("  {name:<32} {n}");
        }
    }
    let stats = Stats::from_pin(&dir)?;
    println!("kernel counters:");
    for (s, n) in stats.all() {
        println!("  {:<22} {n}", s.name());
    }
    let zero_hop = stats.all().iter().find(|(s, _)| s.name() == "zero_hop_connect").map_or(0, |(_, n)| *n);
    print_paths(&args.instance, zero_hop);
    Ok(())
}

/// The paths connections took, from the node's own `/metrics`.
fn print_paths(instance: &str, zero_hop: u64) {
    let Some(metrics) = std::fs::read_to_string(crate::node::admin_state_path(instance))
        .ok()
        .and_then(|addr| scrape(addr.trim()))
    else {
        println!("paths: the node's admin listener did not answer (counters need a running node)");
        return;
    };
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.rsplit_once(' ').filter(|(k, _)| *k == series).and_then(|(_, v)| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0) as u64
    };
    // Summed over services: the series whose labels hold `part`.
    let sum = |name: &str, part: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(part))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum::<f64>() as u64
    };
    println!("paths:");
    println!("  {:<10} {:<5} {:>12} {:>14} {:>14}", "path", "on", "connections", "bytes up", "bytes down");
    for (path, on) in [
        ("proxy", "yes".to_string()),
        (
            "splice",
            if value("sluice_fast_path_enabled{path=\"splice\"}") == 1 { "yes".into() } else { "no".into() },
        ),
    ] {
        println!(
            "  {:<10} {:<5} {:>12} {:>14} {:>14}",
            path,
            on,
            value(&format!("sluice_path_connections_total{{path=\"{path}\"}}")),
            value(&format!("sluice_path_bytes_total{{path=\"{path}\",direction=\"up\"}}")),
            value(&format!("sluice_path_bytes_total{{path=\"{path}\",direction=\"down\"}}"))
        );
    }
    let zh_on = if value("sluice_fast_path_enabled{path=\"zero_hop\"}") == 1 { "yes" } else { "no" };
    println!(
        "  {:<10} {:<5} {:>12} {:>14} {:>14}",
        "zero-hop",
        zh_on,
        zero_hop,
        sum("sluice_tcp_bytes_total{", "path=\"zero_hop\",direction=\"up\""),
        sum("sluice_tcp_bytes_total{", "path=\"zero_hop\",direction=\"down\"")
    );
    // sk_msg moves sends between sockets the proxy still reads and writes:
    // its count is of sockets joined and bytes moved, beside the paths above.
    println!(
        "  {:<10} {:<5} {:>12} {:>14} {:>14}",
        "sk_msg",
        if value("sluice_fast_path_enabled{path=\"sk_msg\"}") == 1 { "yes" } else { "no" },
        format!("{} sockets", value("sluice_sk_msg_kernel_total{counter=\"joined_sockets\"}")),
        format!("{} bytes", value("sluice_sk_msg_kernel_total{counter=\"redirected_bytes\"}")),
        "(both ways)"
    );
    println!(
        "  {:<10} {:<5} {:>12} {:>14} {:>14}",
        "http",
        "yes",
        value("sluice_http_connections_total"),
        format!("{} requests", value("sluice_http_requests_total")),
        ""
    );
}

/// GET /metrics over plain HTTP/1.0 from the node's admin listener.
fn scrape(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: sluice\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

pub(crate) fn cleanup(instance: Option<&str>) -> Result<(), Failure> {
    let r = cleanup::cleanup(Path::new(PIN_ROOT), Path::new(RUN_DIR), instance)?;
    if r.removed.is_empty() {
        match instance {
            Some(i) => println!("nothing to clean: no pins of instance '{i}' under {PIN_ROOT}"),
            None => println!("nothing to clean: no Sluice pins under {PIN_ROOT}"),
        }
    }
    for p in &r.removed {
        println!("removed {}", p.display());
    }
    for i in &r.live {
        println!("note: node instance '{i}' is still running; its attachments end when it exits");
    }
    if !r.still_loaded.is_empty() {
        println!("still loaded (held by running processes): {}", r.still_loaded.join(", "));
    }
    Ok(())
}

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
    Ok(())
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

//! `sluice status` and `sluice bpf cleanup`: read or remove what nodes pinned.

use std::path::Path;

use sluice_redirector::{PIN_ROOT, RUN_DIR, Stats, cleanup};

use crate::{Failure, cli::StatusArgs, exit};

pub(crate) fn run(args: StatusArgs) -> Result<(), Failure> {
    let dir = Path::new(PIN_ROOT).join(&args.instance);
    if !dir.exists() {
        return Err(Failure::new(
            exit::FAILED,
            format!("no node instance '{}' is running (nothing pinned at {})", args.instance, dir.display()),
        ));
    }
    let stats = Stats::from_pin(&dir)?;
    println!("instance {} (pins at {})", args.instance, dir.display());
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

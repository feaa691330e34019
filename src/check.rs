//! `sluice check`: the host's feature table.

use sluice_redirector::probe::{self, Status};

use crate::{Failure, exit};

pub(crate) fn run() -> Result<(), Failure> {
    let rows = probe::run();
    let w = rows.iter().map(|r| r.what.len()).max().unwrap_or(10);
    println!("{:<w$}  {:<11}  {:<9}  DETAIL", "FEATURE", "SUPPORTED", "NEEDED", w = w);
    for r in &rows {
        let (s, d) = match &r.status {
            Status::Yes => ("yes", r.detail.clone()),
            Status::No(why) => ("NO", join(why, &r.detail)),
            Status::Unknown(why) => ("unknown", join(why, &r.detail)),
        };
        let needed = if r.required { "required" } else { "optional" };
        println!("{:<w$}  {:<11}  {:<9}  {} [{}]", r.what, s, needed, d, r.used_for, w = w);
    }
    let blockers: Vec<String> = rows.iter().filter(|r| r.blocks()).map(|r| r.what.clone()).collect();
    if blockers.is_empty() {
        println!("\nThis host can run Sluice.");
        Ok(())
    } else {
        Err(Failure::new(
            exit::UNSUPPORTED,
            format!("this host cannot run Sluice: {} (see the table above)", blockers.join(", ")),
        ))
    }
}

fn join(a: &str, b: &str) -> String {
    if b.is_empty() { a.to_string() } else { format!("{a}: {b}") }
}

//! `sluice bpf cleanup`: remove every pin (and so every pinned attachment) that
//! Sluice owns. Idempotent: a second run finds nothing and says so.

use std::path::{Path, PathBuf};

use crate::{Error, lock::InstanceLock, redirector::remove_pins};

/// What a cleanup did.
#[derive(Debug, Default)]
pub struct Report {
    /// Pin folders removed.
    pub removed: Vec<PathBuf>,
    /// Instances whose node is still running: their attachments last until it exits.
    pub live: Vec<String>,
    /// Sluice programs still loaded afterwards (held by a running process).
    pub still_loaded: Vec<String>,
}

/// Removes the pins of every instance, or of `only` that one.
pub fn cleanup(pin_root: &Path, run_dir: &Path, only: Option<&str>) -> Result<Report, Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    let mut report = Report::default();
    if pin_root.exists() {
        let entries = std::fs::read_dir(pin_root)
            .map_err(|e| Error::io(format!("reading {}", pin_root.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", pin_root.display()), e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if only.is_some_and(|o| o != name) {
                continue;
            }
            if InstanceLock::is_held(run_dir, &name) {
                report.live.push(name);
            }
            remove_pins(&path)?;
            report.removed.push(path);
        }
        // Stays while other instances still have pins in it.
        let _ = std::fs::remove_dir(pin_root);
    }
    // Lock and state files of instances that are not running.
    if let Ok(entries) = std::fs::read_dir(run_dir) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((name, _)) = file.rsplit_once('.') else { continue };
            if only.is_some_and(|o| o != name) || InstanceLock::is_held(run_dir, name) {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                report.removed.push(entry.path());
            }
        }
    }
    for p in aya::programs::loaded_programs().flatten() {
        if let Some(name) = p.name_as_str().filter(|n| n.starts_with("sl_")) {
            report.still_loaded.push(format!("{name} (id {})", p.id()));
        }
    }
    Ok(report)
}

//! A throwaway child cgroup.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

/// A child of the cgroup2 root, removed on drop (its processes are moved back
/// to the root first, so a crashed client cannot keep it alive).
#[derive(Debug)]
pub struct CgroupGuard {
    path: PathBuf,
    root: PathBuf,
}

impl CgroupGuard {
    pub fn new(test: &str) -> Self {
        let root = cgroup2_root();
        let path = root.join(crate::unique(test));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path, root }
    }

    /// A child cgroup (a workload inside this one), removed on drop; drop it
    /// before its parent.
    pub fn child(&self, name: &str) -> Self {
        let path = self.path.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path, root: self.root.clone() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for pid in self.procs() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid.to_string());
        }
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Not eprintln!: it panics when stderr is closed, and a panic in a drop
        // during unwinding aborts before the other guards clean up.
        let _ = writeln!(std::io::stderr(), "warning: could not remove cgroup {}", self.path.display());
    }
}

/// The cgroup2 mount, from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup2 mount")
}

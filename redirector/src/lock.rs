//! One live node per instance name: an advisory lock on /run/sluice/<instance>.lock.
//! The kernel drops the lock when the process dies, however it dies, so a held
//! lock means a live node and pins without a held lock are a crashed node's.

use std::{
    fs::{File, OpenOptions, TryLockError},
    path::{Path, PathBuf},
};

use crate::Error;

#[derive(Debug)]
pub(crate) struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock, or says who holds it.
    pub(crate) fn acquire(run_dir: &Path, instance: &str) -> Result<Self, Error> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| Error::io(format!("creating {}", run_dir.display()), e))?;
        let path = run_dir.join(format!("{instance}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(TryLockError::WouldBlock) => {
                Err(Error::InstanceBusy { instance: instance.into(), lock: path })
            }
            Err(TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
        }
    }

    /// Whether a live node holds the lock of `instance` (without taking it for long).
    pub(crate) fn is_held(run_dir: &Path, instance: &str) -> bool {
        match Self::acquire(run_dir, instance) {
            Ok(lock) => {
                drop(lock);
                false
            }
            Err(Error::InstanceBusy { .. }) => true,
            Err(_) => false,
        }
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Instance names become file names: keep them boring.
pub(crate) fn check_instance_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok { Ok(()) } else { Err(Error::InstanceName(name.into())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let a = InstanceLock::acquire(dir.path(), "n1").unwrap();
        assert!(matches!(InstanceLock::acquire(dir.path(), "n1"), Err(Error::InstanceBusy { .. })));
        assert!(InstanceLock::is_held(dir.path(), "n1"));
        drop(a);
        assert!(!InstanceLock::is_held(dir.path(), "n1"));
        InstanceLock::acquire(dir.path(), "n1").unwrap();
    }

    #[test]
    fn instance_names() {
        assert!(check_instance_name("node").is_ok());
        assert!(check_instance_name("t-1_a").is_ok());
        for bad in ["", "../x", "A", "a/b", &"x".repeat(33)] {
            assert!(check_instance_name(bad).is_err(), "{bad}");
        }
    }
}

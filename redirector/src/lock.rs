//! One live node per instance name: an advisory lock on /run/sluice/<instance>.lock.
//! The kernel drops the lock when the process dies, however it dies, so a held
//! lock means a live node and pins without a held lock are a crashed node's.
//! The file says who holds it (pid, proxy port, cgroup), which is what a
//! successor needs to take over. Lock files are never deleted: deleting one
//! while another process opens it would let two processes hold "the" lock.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::Write,
    path::{Path, PathBuf},
};

use crate::Error;

/// What the holder of an instance lock writes into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub proxy_port: u16,
    pub cgroup: PathBuf,
}

impl Holder {
    fn encode(&self) -> String {
        format!("pid={}\nproxy_port={}\ncgroup={}\n", self.pid, self.proxy_port, self.cgroup.display())
    }

    fn decode(text: &str) -> Option<Self> {
        let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('='));
        Some(Self {
            pid: get("pid")?.parse().ok()?,
            proxy_port: get("proxy_port")?.parse().ok()?,
            cgroup: PathBuf::from(get("cgroup")?),
        })
    }
}

#[derive(Debug)]
pub(crate) struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    fn path(run_dir: &Path, instance: &str) -> PathBuf {
        run_dir.join(format!("{instance}.lock"))
    }

    /// Takes the lock, or says that someone holds it.
    pub(crate) fn acquire(run_dir: &Path, instance: &str) -> Result<Self, Error> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| Error::io(format!("creating {}", run_dir.display()), e))?;
        let path = Self::path(run_dir, instance);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { file, path }),
            Err(TryLockError::WouldBlock) => {
                Err(Error::InstanceBusy { instance: instance.into(), lock: path })
            }
            Err(TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
        }
    }

    /// Records who holds the lock.
    pub(crate) fn write_holder(&mut self, holder: &Holder) -> Result<(), Error> {
        let io = |e| Error::io(format!("writing {}", self.path.display()), e);
        self.file.set_len(0).map_err(io)?;
        (&self.file).write_all(holder.encode().as_bytes()).map_err(io)
    }

    /// Who holds (or last held) the lock of `instance`.
    pub(crate) fn read_holder(run_dir: &Path, instance: &str) -> Option<Holder> {
        Holder::decode(&std::fs::read_to_string(Self::path(run_dir, instance)).ok()?)
    }

    /// Whether a live node holds the lock of `instance` (without creating the
    /// file, and without keeping the lock).
    pub(crate) fn is_held(run_dir: &Path, instance: &str) -> bool {
        let Ok(file) = File::open(Self::path(run_dir, instance)) else { return false };
        matches!(file.try_lock(), Err(TryLockError::WouldBlock))
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
        let mut a = InstanceLock::acquire(dir.path(), "n1").unwrap();
        let h = Holder { pid: 42, proxy_port: 15001, cgroup: "/sys/fs/cgroup/x".into() };
        a.write_holder(&h).unwrap();
        assert!(matches!(InstanceLock::acquire(dir.path(), "n1"), Err(Error::InstanceBusy { .. })));
        assert!(InstanceLock::is_held(dir.path(), "n1"));
        assert_eq!(InstanceLock::read_holder(dir.path(), "n1"), Some(h));
        drop(a);
        assert!(!InstanceLock::is_held(dir.path(), "n1"));
        InstanceLock::acquire(dir.path(), "n1").unwrap();
    }

    #[test]
    fn holder_decoding_refuses_garbage() {
        assert_eq!(Holder::decode("pid=x\n"), None);
        assert_eq!(Holder::decode(""), None);
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

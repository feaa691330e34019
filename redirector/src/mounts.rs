//! Where the cgroup2 and bpf filesystems are, from /proc/self/mountinfo.

use std::path::{Path, PathBuf};

use crate::Error;

/// One line of mountinfo that matters to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses mountinfo text (see proc(5)): the mount point is field 5, the file
/// system type the first field after the ` - ` separator.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let fs_type = right.split_whitespace().next()?;
            Some(Mount { mount_point: PathBuf::from(unescape(mount_point)), fs_type: fs_type.to_string() })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal =
            b.get(i + 1..i + 4).filter(|d| d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_mounts() -> Result<Vec<Mount>, Error> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
    Ok(parse_mountinfo(&text))
}

/// The cgroup2 mount point (the first one, as the kernel lists them).
pub fn cgroup2_mount() -> Result<PathBuf, Error> {
    read_mounts()?.into_iter().find(|m| m.fs_type == "cgroup2").map(|m| m.mount_point).ok_or(Error::NoCgroup2)
}

/// Whether a bpf filesystem is mounted at `path`.
pub fn is_bpffs(path: &Path) -> Result<bool, Error> {
    Ok(read_mounts()?.iter().any(|m| m.fs_type == "bpf" && m.mount_point == path))
}

/// Mounts bpffs at `/sys/fs/bpf` unless it is there already.
pub fn ensure_bpffs() -> Result<PathBuf, Error> {
    let path = PathBuf::from("/sys/fs/bpf");
    if is_bpffs(&path)? {
        return Ok(path);
    }
    std::fs::create_dir_all(&path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    nix::mount::mount(Some("bpf"), &path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| Error::MountBpffs { path: path.clone(), source })?;
    tracing::info!(path = %path.display(), "mounted the bpf filesystem");
    Ok(path)
}

/// A cgroup to attach to: it must exist, be inside the cgroup2 hierarchy, and
/// not be its root (every process of the machine lives there).
pub fn check_cgroup(path: &Path) -> Result<PathBuf, Error> {
    let mount = cgroup2_mount()?;
    let abs = if path.is_absolute() { path.to_path_buf() } else { mount.join(path) };
    let canon = abs.canonicalize().map_err(|_| Error::CgroupMissing { path: abs.clone() })?;
    let mount_canon = mount.canonicalize().unwrap_or(mount.clone());
    if canon == mount_canon {
        return Err(Error::RootCgroup { path: canon });
    }
    if !canon.starts_with(&mount_canon) || !canon.join("cgroup.procs").exists() {
        return Err(Error::NotCgroup2 { path: canon, mount });
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
34 25 0:29 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 34 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
40 25 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 - bpf bpf rw,mode=700
41 25 0:36 / /mnt/with\\040space rw - cgroup2 none rw
";

    #[test]
    fn finds_cgroup2_and_bpffs() {
        let m = parse_mountinfo(SAMPLE);
        let cg: Vec<_> = m.iter().filter(|m| m.fs_type == "cgroup2").collect();
        assert_eq!(cg[0].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(cg[1].mount_point, PathBuf::from("/mnt/with space"));
        assert!(m.iter().any(|m| m.fs_type == "bpf" && m.mount_point == Path::new("/sys/fs/bpf")));
    }

    #[test]
    fn ignores_garbage_lines() {
        assert!(parse_mountinfo("garbage\n\n1 2 3\n").is_empty());
    }
}

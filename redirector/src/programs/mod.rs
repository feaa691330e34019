//! One file per kernel object, as aya lays them out. Each attaches its programs
//! to a cgroup and pins the links, so the attachment is owned by a pin that
//! [`PinnedAttachment`] removes on drop (which detaches).
//!
//! Attachments are bpf_links, which the kernel always treats as "multi"
//! (link_create refuses attach flags): other tools can still attach to the same
//! or nested cgroups, and `CgroupAttachMode::Single` is the only mode aya may pass.

pub(crate) mod sock_addr;
pub(crate) mod sock_ops;

use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};

use crate::Error;

/// A program attached through a pinned bpf_link: detached when dropped.
#[derive(Debug)]
pub(crate) struct PinnedAttachment {
    link: Option<PinnedLink>,
    path: PathBuf,
}

impl PinnedAttachment {
    pub(crate) fn pin(link: FdLink, path: &Path) -> Result<Self, Error> {
        let link = link.pin(path).map_err(|e| Error::Pin { path: path.into(), source: Box::new(e) })?;
        Ok(Self { link: Some(link), path: path.into() })
    }
}

impl Drop for PinnedAttachment {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            match link.unpin() {
                // Dropping the last reference to the link detaches the program.
                Ok(fd_link) => drop(fd_link),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not unpin a link; `sluice bpf cleanup` removes it")
                }
            }
        }
    }
}

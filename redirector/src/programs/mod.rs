//! One file per kernel object, as aya lays them out. Each attaches its programs
//! to a cgroup and pins the links, so the attachment is owned by a pin that
//! [`PinnedAttachment`] removes on drop (which detaches).
//!
//! Attachments are bpf_links, which the kernel always treats as "multi"
//! (link_create refuses attach flags): other tools can still attach to the same
//! or nested cgroups, and `CgroupAttachMode::Single` is the only mode aya may pass.

pub(crate) mod sk_msg;
pub(crate) mod sk_skb;
pub(crate) mod sock_addr;
pub(crate) mod sock_ops;

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        Program, ProgramError,
        links::{FdLink, PinnedLink},
    },
};

use crate::Error;

/// Loads program `name` of `object`, attaches it to `cgroup` with `attach`
/// (which returns the bpf_link) and pins the link as `<pin_dir>/link_<name>`.
pub(crate) fn attach_to_cgroup<P>(
    ebpf: &mut Ebpf,
    object: &'static str,
    name: &'static str,
    cgroup: &File,
    pin_dir: &Path,
    attach: impl FnOnce(&mut P, &File) -> Result<FdLink, ProgramError>,
) -> Result<PinnedAttachment, Error>
where
    for<'a> &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let prog: &mut P = ebpf
        .program_mut(name)
        .ok_or(Error::Missing { object, what: "program", name })?
        .try_into()
        .map_err(|e| Error::program(name, e))?;
    let link = attach(prog, cgroup).map_err(|e| Error::program(name, e))?;
    PinnedAttachment::pin(link, &pin_dir.join(format!("link_{name}")))
}

/// aya's link wrappers convert to an FdLink only through their own error type.
pub(crate) fn fd_link<L>(link: L) -> Result<FdLink, ProgramError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    FdLink::try_from(link).map_err(|e| {
        ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link (not an fd link)",
            io_error: std::io::Error::other(e.to_string()),
        })
    })
}

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

    /// A link another node pinned, now owned by this one.
    pub(crate) fn adopt(link: PinnedLink, path: &Path) -> Self {
        Self { link: Some(link), path: path.into() }
    }

    /// Lets go of the link but leaves its pin, so the program stays attached.
    pub(crate) fn keep_pinned(&mut self) {
        drop(self.link.take());
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

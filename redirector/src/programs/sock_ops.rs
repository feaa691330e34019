//! `sockops`: re-keys original destinations by 4-tuple when a redirected
//! connection's source port is known.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, SockOps, links::FdLink},
};
use sluice_bpf::programs::SOCK_OPS;

use super::PinnedAttachment;
use crate::Error;

pub(crate) fn attach(ebpf: &mut Ebpf, cgroup: &File, pin_dir: &Path) -> Result<PinnedAttachment, Error> {
    let name = SOCK_OPS;
    let prog: &mut SockOps = ebpf
        .program_mut(name)
        .ok_or(Error::Missing { object: "sock_ops", what: "program", name })?
        .try_into()
        .map_err(|e| Error::program(name, e))?;
    prog.load().map_err(|e| Error::program(name, e))?;
    let id = prog.attach(cgroup, CgroupAttachMode::Single).map_err(|e| Error::program(name, e))?;
    let link = prog.take_link(id).map_err(|e| Error::program(name, e))?;
    let link = FdLink::try_from(link).map_err(|e| Error::Io {
        what: format!("{name} link"),
        source: std::io::Error::other(e.to_string()),
    })?;
    PinnedAttachment::pin(link, &pin_dir.join(format!("link_{name}")))
}

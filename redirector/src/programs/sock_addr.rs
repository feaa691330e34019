//! `cgroup/connect4` and `cgroup/connect6`: send mesh destinations to the proxy.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use sluice_bpf::programs::{CONNECT4, CONNECT6};

use super::PinnedAttachment;
use crate::Error;

pub(crate) fn attach(ebpf: &mut Ebpf, cgroup: &File, pin_dir: &Path) -> Result<Vec<PinnedAttachment>, Error> {
    [CONNECT4, CONNECT6].into_iter().map(|name| attach_one(ebpf, name, cgroup, pin_dir)).collect()
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    pin_dir: &Path,
) -> Result<PinnedAttachment, Error> {
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(Error::Missing { object: "sock_addr", what: "program", name })?
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

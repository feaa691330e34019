//! `sockops`: re-keys original destinations by 4-tuple when a redirected
//! connection's source port is known.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, SockOps},
};
use sluice_bpf::programs::SOCK_OPS;

use super::{PinnedAttachment, attach_to_cgroup, fd_link};
use crate::Error;

pub(crate) fn attach(ebpf: &mut Ebpf, cgroup: &File, pin_dir: &Path) -> Result<PinnedAttachment, Error> {
    attach_to_cgroup(ebpf, "sock_ops", SOCK_OPS, cgroup, pin_dir, |p: &mut SockOps, cg| {
        p.load()?;
        let id = p.attach(cg, CgroupAttachMode::Single)?;
        fd_link(p.take_link(id)?)
    })
}

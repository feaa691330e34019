//! `cgroup/connect4` and `cgroup/connect6` send mesh destinations to the proxy
//! (or, zero-hop, straight to an endpoint); `cgroup/getpeername4/6` show
//! zero-hop sockets the address they dialed.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use sluice_bpf::programs::{CONNECT4, CONNECT6, GETPEERNAME4, GETPEERNAME6};

use super::{PinnedAttachment, attach_to_cgroup, fd_link};
use crate::Error;

pub(crate) fn attach(ebpf: &mut Ebpf, cgroup: &File, pin_dir: &Path) -> Result<Vec<PinnedAttachment>, Error> {
    [CONNECT4, CONNECT6, GETPEERNAME4, GETPEERNAME6]
        .into_iter()
        .map(|name| {
            attach_to_cgroup(ebpf, "sock_addr", name, cgroup, pin_dir, |p: &mut CgroupSockAddr, cg| {
                p.load()?;
                let id = p.attach(cg, CgroupAttachMode::Single)?;
                fd_link(p.take_link(id)?)
            })
        })
        .collect()
}

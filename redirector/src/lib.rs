//! The userspace side of Sluice's kernel programs.
//!
//! [`mounts`] finds the cgroup2 and bpf filesystems (never assuming where they
//! are), [`probe`] tells whether this kernel can run us, [`Redirector`] loads the
//! embedded objects of `sluice-bpf`, attaches them to one cgroup, pins them
//! under `/sys/fs/bpf/sluice/<instance>/` and undoes all of it on drop.
//! [`ServiceMap`] keeps the kernel's list of mesh addresses equal to the config;
//! [`OrigDstTable`] answers the proxy's "where was this connection going?".
//! [`cleanup`] removes what a node that died left behind. Every syscall goes
//! through aya or nix, so this crate needs no `unsafe`.

#![forbid(unsafe_code)]

pub mod cleanup;
mod error;
mod lock;
mod maps;
pub mod mounts;
pub mod probe;
mod programs;
mod redirector;

pub use error::Error;
pub use maps::{OrigDstTable, ServiceMap, Stats};
pub use redirector::{Redirector, RedirectorConfig};

/// Where every pin of Sluice lives; one folder per node instance below it.
pub const PIN_ROOT: &str = "/sys/fs/bpf/sluice";
/// Where node instance locks live.
pub const RUN_DIR: &str = "/run/sluice";
/// SO_MARK the proxy puts on its own sockets, so connect4/6 leave them alone.
pub const DEFAULT_OWN_MARK: u32 = 0x51c3;

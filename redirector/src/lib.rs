//! The userspace side of Sluice's kernel programs.
//!
//! [`mounts`] finds the cgroup2 and bpf filesystems (never assuming where they
//! are), [`probe`] tells whether this kernel can run us, [`Redirector`] loads the
//! embedded objects of `sluice-bpf`, attaches them to one cgroup, pins them
//! under `/sys/fs/bpf/sluice/<instance>/` and undoes all of it on drop.
//! [`ServiceMap`] keeps the kernel's list of mesh addresses equal to the config;
//! [`OrigDstTable`] answers the proxy's "where was this connection going?".
//! [`Workers`] places the proxy's worker listeners in the `sk_reuseport`
//! socket arrays; [`Liveness`] heartbeats so connect4/6 can apply the fail
//! mode when the proxy dies; [`Redirector::take_over`] adopts a running
//! node's pins for a restart that refuses nothing. [`policy::PolicyEnforcer`] puts the
//! L3/L4 policy into the XDP and tc programs.
//! [`cleanup`] removes what a node that died left behind. Every syscall goes
//! through aya or nix, so this crate needs no `unsafe`.

// The one unsafe impl (aya::Pod for the LPM key data) sits in policy.rs with its SAFETY note;
// BPF_PROG_TEST_RUN's raw syscall lives in sys.rs.
#![deny(unsafe_code)]

pub mod cleanup;
mod error;
mod live;
mod lock;
mod maps;
pub mod mounts;
pub mod policy;
pub mod probe;
mod programs;
mod redirector;
pub mod sys;
mod workers;

pub use error::Error;
pub use live::{Liveness, monotonic_ns};
pub use maps::{OrigDstTable, ServiceMap, Stats, zero_hop_bytes, zero_hop_counts};
pub use programs::{
    sk_msg::{LocalPairs, MsgSelfTest},
    sk_skb::{SplicedPair, Splicer},
};
pub use redirector::{Predecessor, Redirector, RedirectorConfig};
pub use sluice_bpf::abi::{FailMode, LbMode, WorkerState};
pub use workers::{WorkerInfo, Workers};

/// Where every pin of Sluice lives; one folder per node instance below it.
pub const PIN_ROOT: &str = "/sys/fs/bpf/sluice";
/// Where node instance locks live.
pub const RUN_DIR: &str = "/run/sluice";
/// SO_MARK the proxy puts on its own sockets, so connect4/6 leave them alone.
pub const DEFAULT_OWN_MARK: u32 = 0x51c3;

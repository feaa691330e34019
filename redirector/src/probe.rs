//! `sluice check`: can this host run Sluice? Each row is one thing we use,
//! probed on the running kernel (never assumed from the version).

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};

use crate::mounts;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Yes,
    No(String),
    Unknown(String),
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    /// What Sluice uses it for.
    pub used_for: &'static str,
    /// Whether the node cannot run without it (today's features).
    pub required: bool,
    pub status: Status,
    pub detail: String,
}

impl Row {
    pub fn blocks(&self) -> bool {
        self.required && self.status != Status::Yes
    }

    fn kernel(what: String, used_for: &'static str, required: bool, status: Status) -> Self {
        Self { what, used_for, required, status, detail: String::new() }
    }
}

/// Kernel probes need privileges: without them the answer is unknown, not no.
fn kernel_probe(root: bool, probe: impl FnOnce() -> Result<bool, String>) -> Status {
    if !root {
        return Status::Unknown("needs root".into());
    }
    match probe() {
        Ok(true) => Status::Yes,
        Ok(false) => Status::No("not supported by this kernel".into()),
        Err(e) => Status::Unknown(e),
    }
}

const PROGRAMS: &[(ProgramType, &str, &str, bool)] = &[
    (ProgramType::CgroupSockAddr, "cgroup_sock_addr (connect4/connect6)", "redirection to the proxy", true),
    (ProgramType::SockOps, "sock_ops", "original destination by 4-tuple", true),
    (ProgramType::SkMsg, "sk_msg", "sockmap fast path (optional)", false),
    (ProgramType::SkSkb, "sk_skb", "in-kernel splicing (optional)", false),
    (ProgramType::SkReuseport, "sk_reuseport", "worker selection, restarts", true),
    (ProgramType::Xdp, "xdp", "L3/L4 policy (optional)", false),
    (ProgramType::SchedClassifier, "sched_cls (tc)", "egress policy (optional)", false),
];

const MAPS: &[(MapType, &str, &str, bool)] = &[
    (MapType::Hash, "hash", "service addresses", true),
    (MapType::LruHash, "lru_hash", "original destinations", true),
    (MapType::PerCpuArray, "percpu_array", "counters", true),
    (MapType::SockHash, "sockhash", "sockmap fast path (optional)", false),
    (MapType::ReuseportSockArray, "reuseport_sockarray", "worker selection, restarts", true),
    (MapType::Array, "array", "liveness, worker state", true),
    (MapType::LpmTrie, "lpm_trie", "CIDR policy (optional)", false),
    (MapType::RingBuf, "ringbuf", "drop events (optional)", false),
];

/// Runs every probe. Without root, the kernel probes are reported unknown.
pub fn run() -> Vec<Row> {
    let root = nix::unistd::geteuid().is_root();
    let mut rows = Vec::new();
    rows.push(Row {
        what: "privileges".into(),
        used_for: "loading and attaching programs",
        required: true,
        status: if root { Status::Yes } else { Status::No("not root".into()) },
        detail: if root { "root".into() } else { "run as root (sudo)".into() },
    });
    let uname = nix::sys::utsname::uname().ok();
    rows.push(Row {
        what: "kernel".into(),
        used_for: "information",
        required: false,
        status: Status::Yes,
        detail: uname.map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
    });
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    rows.push(Row {
        what: "BTF (/sys/kernel/btf/vmlinux)".into(),
        used_for: "typed maps and verifier checks",
        required: true,
        status: if btf { Status::Yes } else { Status::No("missing".into()) },
        detail: if btf { "present".into() } else { "the kernel needs CONFIG_DEBUG_INFO_BTF=y".into() },
    });
    let (status, detail) = match mounts::cgroup2_mount() {
        Ok(p) => (Status::Yes, p.display().to_string()),
        Err(e) => (Status::No("not mounted".into()), e.to_string()),
    };
    rows.push(Row {
        what: "cgroup v2".into(),
        used_for: "attaching the redirection",
        required: true,
        status,
        detail,
    });
    let (status, detail) = match mounts::is_bpffs(Path::new("/sys/fs/bpf")) {
        Ok(true) => (Status::Yes, "mounted at /sys/fs/bpf".into()),
        Ok(false) if root => (Status::Yes, "not mounted; `sluice node` mounts it at /sys/fs/bpf".into()),
        Ok(false) => (Status::No("not mounted".into()), "mount it, or run sluice as root so it can".into()),
        Err(e) => (Status::Unknown(e.to_string()), String::new()),
    };
    rows.push(Row {
        what: "bpffs".into(),
        used_for: "pinning programs and maps",
        required: true,
        status,
        detail,
    });

    for (t, name, used_for, required) in PROGRAMS {
        let status = kernel_probe(root, || is_program_supported(*t).map_err(|e| e.to_string()));
        rows.push(Row::kernel(format!("program {name}"), used_for, *required, status));
    }
    for (t, name, used_for, required) in MAPS {
        let status = kernel_probe(root, || is_map_supported(*t).map_err(|e| e.to_string()));
        rows.push(Row::kernel(format!("map {name}"), used_for, *required, status));
    }
    rows.push(Row {
        what: "XDP attach mode".into(),
        used_for: "L3/L4 policy",
        required: false,
        status: Status::Yes,
        detail: "native (driver) where the interface's driver has it, generic otherwise; `sluice status` shows which".into(),
    });
    rows.push(verifier_row(root));
    rows
}

/// The strongest probe: the kernel's verifier accepts our real programs.
fn verifier_row(root: bool) -> Row {
    let mut row = Row {
        what: "Sluice's programs pass the verifier".into(),
        used_for: "everything above, for real",
        required: true,
        status: Status::Unknown("needs root".into()),
        detail: String::new(),
    };
    if !root {
        return row;
    }
    let result = (|| -> Result<usize, String> {
        let mut n = 0;
        for obj in sluice_bpf::OBJECTS {
            let cfg = sluice_bpf::abi::Config::default();
            let mut ebpf = aya::EbpfLoader::new()
                .override_global(sluice_bpf::CONFIG_GLOBAL, &cfg, false)
                .load(obj.bytes)
                .map_err(|e| format!("{}: {e}", obj.name))?;
            for (name, prog) in ebpf.programs_mut() {
                load_program(prog).map_err(|e| format!("{name}: {e}"))?;
                n += 1;
            }
        }
        Ok(n)
    })();
    match result {
        Ok(n) => {
            row.status = Status::Yes;
            row.detail = format!("{n} programs loaded and unloaded");
        }
        Err(e) => row.status = Status::No(e),
    }
    row
}

fn load_program(prog: &mut aya::programs::Program) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::Program;
    match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::SkMsg(p) => p.load(),
        Program::SkSkb(p) => p.load(),
        Program::SkReuseport(p) => p.load(),
        Program::Xdp(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

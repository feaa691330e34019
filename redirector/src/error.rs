use std::path::PathBuf;

/// What went wrong on the kernel side, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Sluice needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN) to load eBPF programs; run it with sudo"
    )]
    NotRoot,
    #[error(
        "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} does not exist; create it (mkdir) and put the workloads in it")]
    CgroupMissing { path: PathBuf },
    #[error("{path} is not inside the cgroup v2 hierarchy mounted at {mount}; give a path below it")]
    NotCgroup2 { path: PathBuf, mount: PathBuf },
    #[error(
        "refusing to attach to the root cgroup {path}: every process of the machine lives there; create a child cgroup for the mesh workloads and pass that"
    )]
    RootCgroup { path: PathBuf },
    #[error("cannot mount the bpf filesystem at {path}: {source}")]
    MountBpffs { path: PathBuf, source: nix::Error },
    #[error("invalid instance name '{0}': use 1 to 32 of a-z, 0-9, '-' and '_'")]
    InstanceName(String),
    #[error(
        "another sluice node (instance '{instance}') is running: its lock {lock} is held; replace it with --takeover, stop it first, or pick another --instance"
    )]
    InstanceBusy { instance: String, lock: PathBuf },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("loading the eBPF object {object}: {source}")]
    Load { object: &'static str, source: Box<aya::EbpfError> },
    #[error("program {program}: {source}{hint}")]
    Program { program: &'static str, source: Box<aya::programs::ProgramError>, hint: &'static str },
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: Box<aya::maps::MapError> },
    #[error(
        "the object {object} has no {what} named {name}: the embedded programs and this code disagree (a build problem)"
    )]
    Missing { object: &'static str, what: &'static str, name: &'static str },
    #[error("cannot take over: the running node's {what} is {theirs}, this one's is {ours}; use the same")]
    TakeoverMismatch { what: &'static str, ours: String, theirs: String },
    #[error(
        "refusing to attach the policy to {interface}: it carries this host's default route, and a wrong rule there cuts the host off; pass --policy-allow-uplink if you mean it"
    )]
    Uplink { interface: String },
    #[error(
        "attaching {what} to interface {interface}: {source} (does the interface exist? `ip link` lists them)"
    )]
    Interface { interface: String, what: &'static str, source: Box<aya::programs::ProgramError> },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: Box<aya::pin::PinError> },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }

    pub(crate) fn program(program: &'static str, e: aya::programs::ProgramError) -> Self {
        let hint = if format!("{e:?}").contains("PermissionDenied")
            || format!("{e}").contains("Operation not permitted")
        {
            " (is Sluice running as root?)"
        } else {
            ""
        };
        Error::Program { program, source: Box::new(e), hint }
    }

    pub(crate) fn map(map: &'static str, e: aya::maps::MapError) -> Self {
        Error::Map { map, source: Box::new(e) }
    }
}

//! Load, attach, pin; and undo it all on drop.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{Ebpf, EbpfLoader};
use sluice_bpf::{CONFIG_GLOBAL, Object, abi, maps};

use crate::{
    Error, OrigDstTable, PIN_ROOT, RUN_DIR, ServiceMap, Stats,
    lock::{InstanceLock, check_instance_name},
    mounts,
    programs::{self, PinnedAttachment},
};

/// What the redirector needs to know.
#[derive(Debug, Clone)]
pub struct RedirectorConfig {
    /// Names the pin folder and the lock: one live node per instance.
    pub instance: String,
    /// The cgroup whose processes are in the mesh (not the root cgroup).
    pub cgroup: PathBuf,
    /// Where connect4 sends mesh traffic (the proxy's IPv4 listener).
    pub proxy4: SocketAddr,
    /// Where connect6 sends mesh traffic (the proxy's IPv6 listener).
    pub proxy6: SocketAddr,
    /// SO_MARK of the proxy's own sockets.
    pub own_mark: u32,
    /// Root of the pins (normally [`PIN_ROOT`]).
    pub pin_root: PathBuf,
    /// Where the instance lock lives (normally [`RUN_DIR`]).
    pub run_dir: PathBuf,
}

impl RedirectorConfig {
    pub fn new(instance: &str, cgroup: &Path, proxy4: SocketAddr, proxy6: SocketAddr) -> Self {
        Self {
            instance: instance.into(),
            cgroup: cgroup.into(),
            proxy4,
            proxy6,
            own_mark: crate::DEFAULT_OWN_MARK,
            pin_root: PIN_ROOT.into(),
            run_dir: RUN_DIR.into(),
        }
    }
}

/// The kernel side of one node, live while this value lives.
///
/// Everything is pinned under `<pin_root>/<instance>/` (maps by name, links as
/// `link_<program>`), so a crashed node's attachments stay visible and
/// removable by `sluice bpf cleanup`. Dropping it detaches and unpins.
#[derive(Debug)]
pub struct Redirector {
    // Field order is drop order: detach first, then the maps, then the pins' folder.
    attachments: Vec<PinnedAttachment>,
    services: ServiceMap,
    orig: Arc<OrigDstTable>,
    stats: Stats,
    _objects: Vec<Ebpf>,
    pin_dir: PathBuf,
    cgroup: PathBuf,
    _lock: InstanceLock,
}

impl Redirector {
    /// Loads the embedded programs, attaches them to the cgroup and pins them.
    pub fn start(cfg: &RedirectorConfig) -> Result<Self, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        check_instance_name(&cfg.instance)?;
        let cgroup = mounts::check_cgroup(&cfg.cgroup)?;
        mounts::ensure_bpffs()?;
        let lock = InstanceLock::acquire(&cfg.run_dir, &cfg.instance)?;
        let pin_dir = cfg.pin_root.join(&cfg.instance);
        if pin_dir.exists() {
            // We hold the lock, so no live node owns these: a crashed one left them.
            tracing::warn!(pins = %pin_dir.display(), "removing pins left by a node that did not shut down cleanly");
            remove_pins(&pin_dir)?;
        }
        std::fs::create_dir_all(&pin_dir)
            .map_err(|e| Error::io(format!("creating {}", pin_dir.display()), e))?;

        // From here on, a failure must not leave pins behind.
        let mut guard = PinDirGuard(Some(pin_dir.clone()));
        let sl_cfg = abi::Config::new(cfg.proxy4, cfg.proxy6, cfg.own_mark);
        let mut sock_addr = load(&sluice_bpf::SOCK_ADDR, &pin_dir, Some(&sl_cfg))?;
        let mut sock_ops = load(&sluice_bpf::SOCK_OPS, &pin_dir, None)?;
        let services = ServiceMap::new(take_map(&mut sock_addr, "sock_addr", maps::SERVICES)?)?;
        let stats = Stats::new(take_map(&mut sock_addr, "sock_addr", maps::STATS)?)?;
        let orig = Arc::new(OrigDstTable::new(take_map(&mut sock_ops, "sock_ops", maps::ORIG_DST)?)?);

        let cg =
            File::open(&cgroup).map_err(|e| Error::io(format!("opening cgroup {}", cgroup.display()), e))?;
        let mut attachments = Vec::new();
        // sock_ops first: a connect redirected before it is attached would have
        // no 4-tuple record, and the proxy would have to drop it.
        attachments.push(programs::sock_ops::attach(&mut sock_ops, &cg, &pin_dir)?);
        attachments.extend(programs::sock_addr::attach(&mut sock_addr, &cg, &pin_dir)?);
        guard.0 = None;
        tracing::info!(cgroup = %cgroup.display(), pins = %pin_dir.display(), proxy4 = %cfg.proxy4, proxy6 = %cfg.proxy6, "redirection attached");
        Ok(Self {
            attachments,
            services,
            orig,
            stats,
            _objects: vec![sock_addr, sock_ops],
            pin_dir,
            cgroup,
            _lock: lock,
        })
    }

    pub fn services(&mut self) -> &mut ServiceMap {
        &mut self.services
    }

    pub fn orig_dst(&self) -> Arc<OrigDstTable> {
        Arc::clone(&self.orig)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.attachments.clear();
        if let Err(e) = remove_pins(&self.pin_dir) {
            tracing::warn!(error = %e, "cleaning up pins; `sluice bpf cleanup` finishes the job");
        } else {
            tracing::info!(cgroup = %self.cgroup.display(), "redirection detached, pins removed");
        }
    }
}

/// Removes a half-built pin folder when start() fails part way.
struct PinDirGuard(Option<PathBuf>);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = remove_pins(&p);
        }
    }
}

fn load(obj: &Object, pin_dir: &Path, cfg: Option<&abi::Config>) -> Result<Ebpf, Error> {
    let paths: Vec<(&'static str, PathBuf)> = maps::SHARED.iter().map(|m| (*m, pin_dir.join(m))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        // Pinned by name, so every object of this node shares one instance of each map.
        loader.map_pin_path(name, path.as_path());
    }
    if let Some(cfg) = cfg {
        loader.override_global(CONFIG_GLOBAL, cfg, true);
    }
    loader.load(obj.bytes).map_err(|e| Error::Load { object: obj.name, source: Box::new(e) })
}

fn take_map(ebpf: &mut Ebpf, object: &'static str, name: &'static str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name).ok_or(Error::Missing { object, what: "map", name })
}

/// Removes a pin folder; removing a link's pin detaches it once no process holds it.
pub(crate) fn remove_pins(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
}

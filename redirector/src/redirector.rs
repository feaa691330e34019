//! Load, attach, pin; take over from a running node; undo it all on drop.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{Ebpf, EbpfLoader, maps::Map, programs::links::PinnedLink};
use sluice_bpf::{
    CONFIG_GLOBAL, Object,
    abi::{self, FailMode, LbMode},
    maps,
    programs::{CONNECT4, CONNECT6, GETPEERNAME4, GETPEERNAME6, SOCK_OPS},
};

use crate::{
    Error, Liveness, OrigDstTable, PIN_ROOT, RUN_DIR, ServiceMap, Stats, Workers,
    lock::{Holder, InstanceLock, check_instance_name},
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
    /// What connect4/6 do when the proxy stops heartbeating.
    pub fail_mode: FailMode,
    /// How old a heartbeat may get before the proxy counts as down.
    pub liveness_timeout: Duration,
    /// How `sk_reuseport` picks a worker.
    pub lb_mode: LbMode,
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
            fail_mode: FailMode::Open,
            liveness_timeout: Duration::from_millis(500),
            lb_mode: LbMode::Hash,
            pin_root: PIN_ROOT.into(),
            run_dir: RUN_DIR.into(),
        }
    }

    fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(&self.instance)
    }
}

/// The node that a taking-over node replaces.
#[derive(Debug, Clone)]
pub struct Predecessor {
    pub pid: u32,
    pub proxy_port: u16,
    pub cgroup: PathBuf,
}

impl Predecessor {
    /// The node holding `instance`, if one is running.
    pub fn find(instance: &str) -> Option<Self> {
        Self::find_in(Path::new(RUN_DIR), instance)
    }

    fn find_in(run_dir: &Path, instance: &str) -> Option<Self> {
        if !InstanceLock::is_held(run_dir, instance) {
            return None;
        }
        let h = InstanceLock::read_holder(run_dir, instance)?;
        Some(Self { pid: h.pid, proxy_port: h.proxy_port, cgroup: h.cgroup })
    }

    /// Tells it that it has been replaced: it drains and exits, leaving the pins.
    pub fn signal_replaced(&self) -> Result<(), Error> {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2)
            .map_err(|e| Error::io(format!("signalling node {}", self.pid), std::io::Error::from(e)))
    }
}

/// The kernel side of one node, live while this value lives.
///
/// Everything is pinned under `<pin_root>/<instance>/` (maps by name, links as
/// `link_<program>`), so a crashed node's attachments stay visible and
/// removable by `sluice bpf cleanup`, and a successor can take them over.
/// Dropping it detaches and unpins, unless it was handed over.
#[derive(Debug)]
pub struct Redirector {
    // Field order is drop order: detach first, then the maps, then the pins' folder.
    attachments: Vec<PinnedAttachment>,
    services: ServiceMap,
    orig: Arc<OrigDstTable>,
    stats: Stats,
    workers: Arc<Workers>,
    live: Arc<Liveness>,
    _objects: Vec<Ebpf>,
    pin_dir: PathBuf,
    cgroup: PathBuf,
    run_dir: PathBuf,
    instance: String,
    lock: Mutex<Option<InstanceLock>>,
    handed_over: bool,
}

impl Redirector {
    /// Loads the embedded programs, attaches them to the cgroup and pins them.
    /// Fails with [`Error::InstanceBusy`] when a node of this instance runs.
    pub fn start(cfg: &RedirectorConfig) -> Result<Self, Error> {
        let cgroup = preflight(cfg)?;
        let mut lock = InstanceLock::acquire(&cfg.run_dir, &cfg.instance)?;
        let pin_dir = cfg.pin_dir();
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
        let reuseport = load(&sluice_bpf::REUSEPORT, &pin_dir, None)?;
        let mut this = Self::assemble(cfg, cgroup, pin_dir.clone(), reuseport, Vec::new())?;
        // A heartbeat before any address is redirected.
        this.live.beat()?;

        let cg = File::open(&this.cgroup)
            .map_err(|e| Error::io(format!("opening cgroup {}", this.cgroup.display()), e))?;
        // sock_ops first: a connect redirected before it is attached would have
        // no 4-tuple record, and the proxy would have to drop it.
        this.attachments.push(programs::sock_ops::attach(&mut sock_ops, &cg, &pin_dir)?);
        this.attachments.extend(programs::sock_addr::attach(&mut sock_addr, &cg, &pin_dir)?);
        this._objects.extend([sock_addr, sock_ops]);
        lock.write_holder(&Holder {
            pid: std::process::id(),
            proxy_port: cfg.proxy4.port(),
            cgroup: this.cgroup.clone(),
        })?;
        *this.lock.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(lock);
        guard.0 = None;
        tracing::info!(cgroup = %this.cgroup.display(), pins = %pin_dir.display(), proxy4 = %cfg.proxy4, proxy6 = %cfg.proxy6, "redirection attached");
        Ok(this)
    }

    /// Adopts the pinned programs and maps of the running node `pred` of the same
    /// instance: nothing is detached, so no connect goes unredirected. The
    /// instance lock is taken later, once the predecessor exits ([`Self::try_lock`]).
    pub fn take_over(cfg: &RedirectorConfig, pred: &Predecessor) -> Result<Self, Error> {
        let cgroup = preflight(cfg)?;
        if cgroup != pred.cgroup {
            return Err(Error::TakeoverMismatch {
                what: "cgroup",
                ours: cgroup.display().to_string(),
                theirs: pred.cgroup.display().to_string(),
            });
        }
        if cfg.proxy4.port() != pred.proxy_port {
            return Err(Error::TakeoverMismatch {
                what: "proxy port",
                ours: cfg.proxy4.port().to_string(),
                theirs: pred.proxy_port.to_string(),
            });
        }
        let pin_dir = cfg.pin_dir();
        let reuseport = load(&sluice_bpf::REUSEPORT, &pin_dir, None)?;
        let mut attachments = Vec::new();
        for name in [SOCK_OPS, CONNECT4, CONNECT6, GETPEERNAME4, GETPEERNAME6] {
            let path = pin_dir.join(format!("link_{name}"));
            let link = PinnedLink::from_pin(&path).map_err(|e| {
                Error::io(format!("adopting {}", path.display()), std::io::Error::other(e.to_string()))
            })?;
            attachments.push(PinnedAttachment::adopt(link, &path));
        }
        let this = Self::assemble(cfg, cgroup, pin_dir, reuseport, attachments)?;
        this.live.beat()?;
        tracing::info!(predecessor = pred.pid, pins = %this.pin_dir.display(), "took over the kernel programs of the running node");
        Ok(this)
    }

    /// The typed maps, all taken from the `reuseport` object, which was loaded
    /// with every shared map pinned by name.
    fn assemble(
        cfg: &RedirectorConfig,
        cgroup: PathBuf,
        pin_dir: PathBuf,
        mut reuseport: Ebpf,
        attachments: Vec<PinnedAttachment>,
    ) -> Result<Self, Error> {
        let mut take = |name: &'static str| take_map(&mut reuseport, "reuseport", name);
        let services =
            ServiceMap::new(take(maps::SERVICES)?, take(maps::ZH_ENDPOINTS)?, take(maps::ZH_AUTHZ)?)?;
        let stats = Stats::new(take(maps::STATS)?)?;
        let orig = Arc::new(OrigDstTable::new(take(maps::ORIG_DST)?)?);
        let live = Arc::new(Liveness::new(take(maps::LIVE)?, cfg.fail_mode, cfg.liveness_timeout)?);
        let workers = Arc::new(Workers::new(reuseport)?);
        workers.set_mode(cfg.lb_mode)?;
        Ok(Self {
            attachments,
            services,
            orig,
            stats,
            workers,
            live,
            _objects: Vec::new(),
            pin_dir,
            cgroup,
            run_dir: cfg.run_dir.clone(),
            instance: cfg.instance.clone(),
            lock: Mutex::new(None),
            handed_over: false,
        })
    }

    /// After a takeover: takes the instance lock once the predecessor has
    /// exited. True when this node holds it.
    pub fn try_lock(&self, proxy_port: u16) -> bool {
        let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some() {
            return true;
        }
        match InstanceLock::acquire(&self.run_dir, &self.instance) {
            Ok(mut l) => {
                let holder = Holder { pid: std::process::id(), proxy_port, cgroup: self.cgroup.clone() };
                if let Err(e) = l.write_holder(&holder) {
                    tracing::warn!(error = %e, "writing the instance lock");
                }
                *held = Some(l);
                true
            }
            Err(_) => false,
        }
    }

    /// Leaves every pin and attachment in place for the node that replaced this one.
    pub fn hand_over(mut self) {
        self.handed_over = true;
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

    pub fn workers(&self) -> Arc<Workers> {
        Arc::clone(&self.workers)
    }

    pub fn liveness(&self) -> Arc<Liveness> {
        Arc::clone(&self.live)
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
        if self.handed_over {
            for a in &mut self.attachments {
                a.keep_pinned();
            }
            tracing::info!(pins = %self.pin_dir.display(), "handed over: pins and attachments stay for the new node");
            return;
        }
        self.attachments.clear();
        if let Err(e) = remove_pins(&self.pin_dir) {
            tracing::warn!(error = %e, "cleaning up pins; `sluice bpf cleanup` finishes the job");
        } else {
            tracing::info!(cgroup = %self.cgroup.display(), "redirection detached, pins removed");
        }
    }
}

fn preflight(cfg: &RedirectorConfig) -> Result<PathBuf, Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    check_instance_name(&cfg.instance)?;
    let cgroup = mounts::check_cgroup(&cfg.cgroup)?;
    mounts::ensure_bpffs()?;
    Ok(cgroup)
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

pub(crate) fn load(obj: &Object, pin_dir: &Path, cfg: Option<&abi::Config>) -> Result<Ebpf, Error> {
    let paths: Vec<(&'static str, PathBuf)> = maps::SHARED.iter().map(|m| (*m, pin_dir.join(m))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        // Pinned by name, so every object of this node (and its successor) shares
        // one instance of each map.
        loader.map_pin_path(name, path.as_path());
    }
    if let Some(cfg) = cfg {
        loader.override_global(CONFIG_GLOBAL, cfg, true);
    }
    loader.load(obj.bytes).map_err(|e| Error::Load { object: obj.name, source: Box::new(e) })
}

fn take_map(ebpf: &mut Ebpf, object: &'static str, name: &'static str) -> Result<Map, Error> {
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

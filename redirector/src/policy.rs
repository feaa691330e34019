//! L3/L4 policy: compiles mesh-config rules into the kernel's LPM tries and
//! rule table, swaps them in atomically (two slots, one flip), attaches the
//! XDP (ingress) and tc (egress) programs to the policy's interfaces, and
//! reads counters and drop events back.
//!
//! Matching in the kernel: the source trie gives a bitmask of the rules whose
//! sources cover the packet's source (longest-prefix match, so each prefix's
//! mask includes the rules of every shorter prefix that covers it), the
//! destination trie likewise; the first set bit of both masks whose protocol
//! and ports match wins.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::PinnedLink},
};
use sluice_bpf::{
    abi::{self, Action, Dir, DropEvent, LpmKey, MAX_RULES, PolCfg, Rule, pstat},
    maps, programs,
};
use sluice_mesh_config::{Cidr, Direction, Policy, PolicyAction};

use crate::{
    Error,
    programs::{PinnedAttachment, fd_link},
};

/// One kernel rule: a config rule with one of its port ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub dir: Dir,
    pub index: u32,
    /// The config rule's name.
    pub name: String,
    pub rule: Rule,
    pub sources: Vec<Cidr>,
    pub destinations: Vec<Cidr>,
}

/// What goes into the maps for one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub rules: Vec<KernelRule>,
    pub src: BTreeMap<(u8, u128, u32), u64>,
    pub dst: BTreeMap<(u8, u128, u32), u64>,
    pub cfg: PolCfg,
}

fn dir_of(d: Direction) -> Dir {
    match d {
        Direction::Ingress => Dir::Ingress,
        Direction::Egress => Dir::Egress,
    }
}

fn action_of(a: PolicyAction) -> Action {
    match a {
        PolicyAction::Allow => Action::Allow,
        PolicyAction::Deny => Action::Deny,
    }
}

/// The address as a 128-bit number in the IPv4-mapped space.
fn mapped(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn covers(outer: (u128, u32), inner: (u128, u32)) -> bool {
    outer.1 <= inner.1 && (outer.1 == 0 || (inner.0 >> (128 - outer.1)) == (outer.0 >> (128 - outer.1)))
}

/// Compiles a policy (pure: unit-tested without the kernel).
pub fn compile(policy: &Policy) -> Compiled {
    let mut out = Compiled::default();
    let mut next = BTreeMap::<Dir, u32>::new();
    for r in &policy.rules {
        let dir = dir_of(r.direction);
        let ranges: Vec<(u16, u16)> = if r.ports.is_empty() { vec![(0, 0)] } else { r.ports.clone() };
        for (lo, hi) in ranges {
            let index = next.entry(dir).or_default();
            out.rules.push(KernelRule {
                dir,
                index: *index,
                name: r.name.clone(),
                rule: Rule {
                    action: action_of(r.action) as u8,
                    proto: r.protocol.number(),
                    port_lo: lo,
                    port_hi: hi,
                    _pad: 0,
                },
                sources: r.sources.clone(),
                destinations: r.destinations.clone(),
            });
            *index += 1;
        }
    }
    for (which, table) in [(0, &mut out.src), (1, &mut out.dst)] {
        for dir in [Dir::Ingress, Dir::Egress] {
            let rules: Vec<(u32, Vec<(u128, u32)>)> = out
                .rules
                .iter()
                .filter(|r| r.dir == dir)
                .map(|r| {
                    let cidrs = if which == 0 { &r.sources } else { &r.destinations };
                    let prefixes = if cidrs.is_empty() {
                        vec![(0, 0)] // any address: ::/0 covers the mapped IPv4 space too
                    } else {
                        cidrs.iter().map(|c| (mapped(c.addr), c.mapped_bits())).collect()
                    };
                    (r.index, prefixes)
                })
                .collect();
            // Every prefix named, plus ::/0 so every lookup finds an entry.
            let all: BTreeSet<(u128, u32)> =
                rules.iter().flat_map(|(_, p)| p.iter().copied()).chain([(0, 0)]).collect();
            for p in all {
                let mask = rules
                    .iter()
                    .filter(|(_, prefixes)| prefixes.iter().any(|q| covers(*q, p)))
                    .fold(0u64, |m, (i, _)| m | (1 << i));
                table.insert((dir as u8, p.0, p.1), mask);
            }
        }
    }
    let (pps, burst) = policy.rate_limit.map_or((0, 0), |r| (r.packets_per_second, r.burst));
    out.cfg = PolCfg {
        active_slot: 0,
        default_in: action_of(policy.default_ingress) as u32,
        default_eg: action_of(policy.default_egress) as u32,
        rate_pps: pps,
        rate_burst: burst,
        events_per_sec: policy.drop_events_per_second,
    };
    out
}

fn lpm_key(slot: u8, dir: u8, addr: u128, bits: u32) -> Key<LpmData> {
    let ip = IpAddr::V6(addr.into());
    let k = LpmKey { prefixlen: 0, slot, dir, _pad: [0; 2], addr_be: abi::addr_be(ip) };
    Key::new(32 + bits, k.tail())
}

/// The part of `struct sl_lpm_key` after `prefixlen`, which aya's `Key` wraps.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LpmData {
    pub slot: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
    pub addr_be: abi::AddrBe,
}

trait Tail {
    fn tail(&self) -> LpmData;
}

impl Tail for LpmKey {
    fn tail(&self) -> LpmData {
        LpmData { slot: self.slot, dir: self.dir, _pad: [0; 2], addr_be: self.addr_be }
    }
}

#[allow(unsafe_code)]
// SAFETY: #[repr(C)], integers only, explicit padding: every byte is initialised.
unsafe impl aya::Pod for LpmData {}

const _: () = assert!(std::mem::size_of::<LpmData>() == 20);

/// The policy maps and programs of a node.
pub struct PolicyEnforcer {
    src: LpmTrie<MapData, LpmData, u64>,
    dst: LpmTrie<MapData, LpmData, u64>,
    rules: Array<MapData, Rule>,
    cfg: Array<MapData, PolCfg>,
    stats: PerCpuArray<MapData, u64>,
    events: Mutex<Option<RingBuf<MapData>>>,
    xdp: Ebpf,
    tc: Ebpf,
    pin_dir: PathBuf,
    attached: BTreeMap<String, (PinnedAttachment, PinnedAttachment, &'static str)>,
    allow_uplink: bool,
    /// Kernel rule index → config rule name, per direction (for counters).
    names: Vec<KernelRule>,
}

impl std::fmt::Debug for PolicyEnforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEnforcer")
            .field("interfaces", &self.attached.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn load(obj: &sluice_bpf::Object, pin_dir: &Path) -> Result<Ebpf, Error> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = maps::POLICY.iter().map(|m| (*m, pin_dir.join(m))).collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(obj.bytes).map_err(|e| Error::Load { object: obj.name, source: Box::new(e) })
}

fn m<T>(r: Result<T, aya::maps::MapError>, name: &'static str) -> Result<T, Error> {
    r.map_err(|e| Error::map(name, e))
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name).ok_or(Error::Missing { object: "xdp", what: "map", name })
}

impl PolicyEnforcer {
    /// Loads the policy programs with their maps pinned under `pin_dir`.
    /// `allow_uplink`: permit the interface of the default route.
    pub fn new(pin_dir: &Path, allow_uplink: bool) -> Result<Self, Error> {
        let mut xdp = load(&sluice_bpf::XDP, pin_dir)?;
        let mut tc = load(&sluice_bpf::TC, pin_dir)?;
        prog_mut::<Xdp>(&mut xdp, "xdp", programs::XDP_POLICY)?
            .load()
            .map_err(|e| Error::program(programs::XDP_POLICY, e))?;
        prog_mut::<SchedClassifier>(&mut tc, "tc", programs::TC_EGRESS)?
            .load()
            .map_err(|e| Error::program(programs::TC_EGRESS, e))?;
        Ok(Self {
            src: m(LpmTrie::try_from(take(&mut xdp, maps::POLICY_SRC)?), maps::POLICY_SRC)?,
            dst: m(LpmTrie::try_from(take(&mut xdp, maps::POLICY_DST)?), maps::POLICY_DST)?,
            rules: m(Array::try_from(take(&mut xdp, maps::POLICY_RULES)?), maps::POLICY_RULES)?,
            cfg: m(Array::try_from(take(&mut xdp, maps::POLICY_CFG)?), maps::POLICY_CFG)?,
            stats: m(PerCpuArray::try_from(take(&mut xdp, maps::POLICY_STATS)?), maps::POLICY_STATS)?,
            events: Mutex::new(Some(m(
                RingBuf::try_from(take(&mut xdp, maps::POLICY_EVENTS)?),
                maps::POLICY_EVENTS,
            )?)),
            xdp,
            tc,
            pin_dir: pin_dir.to_path_buf(),
            attached: BTreeMap::new(),
            allow_uplink,
            names: Vec::new(),
        })
    }

    /// Puts `policy` in force: fills the inactive slot, flips to it, clears the
    /// old one, then attaches to new interfaces and detaches from dropped ones.
    /// Nothing is detached or reattached for a rule change.
    pub fn apply(&mut self, policy: &Policy) -> Result<(), Error> {
        // Attach first: if an interface is missing, nothing has changed yet.
        self.attach_new(&policy.interfaces, policy.xdp_mode)?;
        let compiled = compile(policy);
        let active = self.cfg.get(&0, 0).map(|c| c.active_slot).unwrap_or(0) as u8;
        let configured = self.cfg.get(&0, 0).map(|c| c != PolCfg::default()).unwrap_or(false);
        let slot = if configured { 1 - (active & 1) } else { active & 1 };
        self.clear_slot(slot)?;
        for (trie, entries, name) in [
            (&mut self.src, &compiled.src, maps::POLICY_SRC),
            (&mut self.dst, &compiled.dst, maps::POLICY_DST),
        ] {
            for ((dir, addr, bits), mask) in entries {
                trie.insert(&lpm_key(slot, *dir, *addr, *bits), mask, 0).map_err(|e| Error::map(name, e))?;
            }
        }
        let base = u32::from(slot) * 2 * MAX_RULES;
        for dir in [Dir::Ingress, Dir::Egress] {
            for i in 0..MAX_RULES {
                let rule = compiled
                    .rules
                    .iter()
                    .find(|r| r.dir == dir && r.index == i)
                    .map_or(Rule::default(), |r| r.rule);
                self.rules
                    .set(base + dir as u32 * MAX_RULES + i, rule, 0)
                    .map_err(|e| Error::map(maps::POLICY_RULES, e))?;
            }
        }
        // The flip: one write, so a packet sees all of the old policy or all of the new.
        let cfg = PolCfg { active_slot: u32::from(slot), ..compiled.cfg };
        self.cfg.set(0, cfg, 0).map_err(|e| Error::map(maps::POLICY_CFG, e))?;
        if configured {
            self.clear_slot(1 - slot)?;
        }
        self.names = compiled.rules;
        self.detach_gone(&policy.interfaces);
        Ok(())
    }

    fn clear_slot(&mut self, slot: u8) -> Result<(), Error> {
        for (trie, name) in [(&mut self.src, maps::POLICY_SRC), (&mut self.dst, maps::POLICY_DST)] {
            let stale: Vec<Key<LpmData>> =
                trie.keys().filter_map(Result::ok).filter(|k| k.data().slot == slot).collect();
            for k in stale {
                trie.remove(&k).map_err(|e| Error::map(name, e))?;
            }
        }
        Ok(())
    }

    fn detach_gone(&mut self, wanted: &[String]) {
        let gone: Vec<String> = self.attached.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for iface in gone {
            self.attached.remove(&iface);
            tracing::info!(interface = %iface, "policy detached");
        }
    }

    fn attach_new(&mut self, wanted: &[String], mode: sluice_mesh_config::XdpMode) -> Result<(), Error> {
        for iface in wanted {
            if self.attached.contains_key(iface) {
                continue;
            }
            if !self.allow_uplink && default_route_interfaces().contains(iface) {
                return Err(Error::Uplink { interface: iface.clone() });
            }
            let att = self.attach(iface, mode)?;
            tracing::info!(interface = %iface, xdp_mode = att.2, "policy attached (XDP ingress, tc egress)");
            self.attached.insert(iface.clone(), att);
        }
        Ok(())
    }

    fn attach(
        &mut self,
        iface: &str,
        want: sluice_mesh_config::XdpMode,
    ) -> Result<(PinnedAttachment, PinnedAttachment, &'static str), Error> {
        use sluice_mesh_config::XdpMode as M;
        let xdp_pin = self.pin_dir.join(format!("link_xdp_{iface}"));
        let tc_pin = self.pin_dir.join(format!("link_tc_{iface}"));
        let adopt = |p: &Path| -> Result<Option<PinnedAttachment>, Error> {
            if !p.exists() {
                return Ok(None);
            }
            let link = PinnedLink::from_pin(p).map_err(|e| {
                Error::io(format!("adopting {}", p.display()), std::io::Error::other(e.to_string()))
            })?;
            Ok(Some(PinnedAttachment::adopt(link, p)))
        };
        if let (Some(x), Some(t)) = (adopt(&xdp_pin)?, adopt(&tc_pin)?) {
            return Ok((x, t, "adopted"));
        }
        let xdp = prog_mut::<Xdp>(&mut self.xdp, "xdp", programs::XDP_POLICY)?;
        let err = |e| Error::Interface { interface: iface.into(), what: "XDP", source: Box::new(e) };
        // Auto: native (driver) mode where the driver has it, generic otherwise.
        let (id, mode) = match want {
            M::Native => (xdp.attach(iface, XdpMode::Driver).map_err(err)?, "native"),
            M::Generic => (xdp.attach(iface, XdpMode::Skb).map_err(err)?, "generic"),
            M::Auto => match xdp.attach(iface, XdpMode::Driver) {
                Ok(id) => (id, "native"),
                Err(_) => (xdp.attach(iface, XdpMode::Skb).map_err(err)?, "generic"),
            },
        };
        let link = xdp.take_link(id).map_err(|e| Error::program(programs::XDP_POLICY, e))?;
        let x = PinnedAttachment::pin(
            fd_link(link).map_err(|e| Error::program(programs::XDP_POLICY, e))?,
            &xdp_pin,
        )?;
        let tc = prog_mut::<SchedClassifier>(&mut self.tc, "tc", programs::TC_EGRESS)?;
        let id = tc.attach(iface, TcAttachType::Egress).map_err(|e| Error::Interface {
            interface: iface.into(),
            what: "tc egress",
            source: Box::new(e),
        })?;
        let link = tc.take_link(id).map_err(|e| Error::program(programs::TC_EGRESS, e))?;
        let t = PinnedAttachment::pin(
            fd_link(link).map_err(|e| Error::program(programs::TC_EGRESS, e))?,
            &tc_pin,
        )?;
        Ok((x, t, mode))
    }

    /// Interfaces with the policy attached, and the XDP mode of each.
    pub fn interfaces(&self) -> Vec<(String, &'static str)> {
        self.attached.iter().map(|(k, v)| (k.clone(), v.2)).collect()
    }

    /// Named counters and per-rule counters of both directions.
    pub fn counters(&self) -> Vec<(String, u64)> {
        read_counters(&self.stats, Some(&self.names))
    }

    /// Drop events waiting in the ring buffer.
    pub fn drain_events(&self) -> Vec<DropEvent> {
        let mut guard = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        if let Some(rb) = guard.as_mut() {
            while let Some(item) = rb.next() {
                if let Some(e) = DropEvent::from_bytes(&item) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// The XDP program's fd, for BPF_PROG_TEST_RUN.
    pub fn xdp_program_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, Error> {
        program_fd(&self.xdp, "xdp", programs::XDP_POLICY)
    }

    /// The tc program's fd, for BPF_PROG_TEST_RUN.
    pub fn tc_program_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, Error> {
        program_fd(&self.tc, "tc", programs::TC_EGRESS)
    }

    /// Leaves the pinned XDP/tc links in place (handover to a new node).
    pub fn hand_over(mut self) {
        for (_, (x, t, _)) in self.attached.iter_mut() {
            x.keep_pinned();
            t.keep_pinned();
        }
    }
}

/// Program `name` of `object`, as its type.
fn prog_mut<'a, P>(ebpf: &'a mut Ebpf, object: &'static str, name: &'static str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Missing { object, what: "program", name })?
        .try_into()
        .map_err(|e| Error::program(name, e))
}

fn program_fd<'a>(
    ebpf: &'a Ebpf,
    object: &'static str,
    name: &'static str,
) -> Result<std::os::fd::BorrowedFd<'a>, Error> {
    use std::os::fd::AsFd;
    let prog = ebpf.program(name).ok_or(Error::Missing { object, what: "program", name })?;
    Ok(prog.fd().map_err(|e| Error::program(name, e))?.as_fd())
}

/// Named counters, then one per rule: by config name when `names` is known
/// (the live node), else by kernel index, non-zero only (read from pins).
fn read_counters(stats: &PerCpuArray<MapData, u64>, names: Option<&[KernelRule]>) -> Vec<(String, u64)> {
    let get = |i: u32| stats.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
    let mut out = Vec::new();
    for (dir, label) in [(Dir::Ingress, "ingress"), (Dir::Egress, "egress")] {
        let base = dir as u32 * pstat::PER_DIR;
        for (i, name) in pstat::NAMED {
            out.push((format!("{label}_{name}"), get(base + i)));
        }
        match names {
            Some(names) => {
                for r in names.iter().filter(|r| r.dir == dir) {
                    let verb = if r.rule.action == Action::Deny as u8 { "denied" } else { "allowed" };
                    let n = get(base + pstat::RULE_BASE + r.index);
                    out.push((format!("{label}_{verb}_rule_{}_{}", r.index, r.name), n));
                }
            }
            None => {
                for r in 0..MAX_RULES {
                    let n = get(base + pstat::RULE_BASE + r);
                    if n > 0 {
                        out.push((format!("{label}_matched_rule_{r}"), n));
                    }
                }
            }
        }
    }
    out
}

/// Reads a node's policy counters from its pins (rule names unknown: by index).
pub fn read_pinned_counters(pin_dir: &Path) -> Result<Vec<(String, u64)>, Error> {
    let data =
        MapData::from_pin(pin_dir.join(maps::POLICY_STATS)).map_err(|e| Error::map(maps::POLICY_STATS, e))?;
    let stats = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
        .map_err(|e| Error::map(maps::POLICY_STATS, e))?;
    Ok(read_counters(&stats, None))
}

/// Interfaces that carry a default route (from /proc/net/route and /proc/net/ipv6_route).
pub fn default_route_interfaces() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
        for l in t.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                out.insert(f[0].to_string());
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for l in t.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 10 && f[0] == "00000000000000000000000000000000" && f[1] == "00" && f[9] != "lo" {
                out.insert(f[9].to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;

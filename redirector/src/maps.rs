//! Typed views of the kernel maps: the mesh's service addresses, the original
//! destinations, and the counters.

use std::{
    collections::{HashMap as HashMap2, HashSet},
    net::SocketAddr,
    path::Path,
    sync::Mutex,
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use sluice_bpf::{
    abi::{
        AuthzKey, FlowKey, OrigDst, SVC_AUTHZ, SVC_ZERO_HOP, Sockaddr, Stat, SvcKey, SvcVal, ZH_EPS_PER_GEN,
        ZhBytes,
    },
    maps,
};
use sluice_mesh_config::MeshConfig;

use crate::Error;

/// `sl_svc`: which destinations connect4/6 send to the proxy, and `sl_zh_eps`:
/// the endpoints of zero-hop service ports.
pub struct ServiceMap {
    map: HashMap<MapData, SvcKey, SvcVal>,
    endpoints: Array<MapData, Sockaddr>,
    authz: HashMap<MapData, AuthzKey, u32>,
    /// Zero-hop service addresses checked against `sl_zh_authz`.
    authz_on: HashSet<SvcKey>,
}

impl std::fmt::Debug for ServiceMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMap").field("addresses", &self.addresses()).finish()
    }
}

/// What a [`ServiceMap::sync`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub removed: usize,
    pub updated: usize,
}

impl ServiceMap {
    pub(crate) fn new(map: Map, endpoints: Map, authz: Map) -> Result<Self, Error> {
        Ok(Self {
            map: HashMap::try_from(map).map_err(|e| Error::map(maps::SERVICES, e))?,
            endpoints: Array::try_from(endpoints).map_err(|e| Error::map(maps::ZH_ENDPOINTS, e))?,
            authz: HashMap::try_from(authz).map_err(|e| Error::map(maps::ZH_AUTHZ, e))?,
            authz_on: HashSet::new(),
        })
    }

    /// Zero-hop authorization verdicts: (cgroup id, service address) → deny.
    /// Cgroup id 0 is the verdict for cgroups without an entry. `None`: every
    /// zero-hop connect is allowed (no policy). Written before the flag that
    /// makes connect4/6 read them is set (by the next [`ServiceMap::sync`]).
    pub fn set_zero_hop_authz(
        &mut self,
        verdicts: Option<&HashMap2<(u64, SocketAddr), bool>>,
    ) -> Result<(), Error> {
        let desired: HashMap2<AuthzKey, u32> = verdicts
            .into_iter()
            .flatten()
            .map(|((cg, addr), deny)| {
                (AuthzKey { cgroup_id: *cg, svc: SvcKey::new(*addr), _pad: 0 }, u32::from(*deny))
            })
            .collect();
        for (k, v) in &desired {
            if self.authz.get(k, 0).ok() != Some(*v) {
                self.authz.insert(k, v, 0).map_err(|e| Error::map(maps::ZH_AUTHZ, e))?;
            }
        }
        let stale: Vec<AuthzKey> =
            self.authz.keys().filter_map(Result::ok).filter(|k| !desired.contains_key(k)).collect();
        for k in stale {
            let _ = self.authz.remove(&k);
        }
        self.authz_on = desired.keys().filter(|k| k.cgroup_id == 0).map(|k| k.svc).collect();
        Ok(())
    }

    /// Makes the maps hold exactly the config's service addresses. Adds before it
    /// removes, so an address present in both old and new configs never
    /// disappears, even for an instant. Zero-hop endpoints go into the
    /// generation of `sl_zh_eps` that no entry points at, before the entries
    /// are switched to it.
    pub fn sync(&mut self, config: &MeshConfig) -> Result<SyncReport, Error> {
        let current: HashSet<SvcKey> = self.map.keys().filter_map(Result::ok).collect();
        let in_use = current.iter().filter_map(|k| self.map.get(k, 0).ok()).find(|v| v.ep_count > 0);
        let generation = match in_use {
            Some(v) if v.ep_base < ZH_EPS_PER_GEN => 1,
            _ => 0,
        };
        let mut next = generation * ZH_EPS_PER_GEN;
        let mut ranges: HashMap2<(usize, usize), (u32, u32)> = HashMap2::new();
        for (si, svc) in config.services.iter().enumerate() {
            for (pi, port) in svc.ports.iter().enumerate().filter(|(_, p)| p.zero_hop) {
                let base = next;
                for ep in &svc.endpoints {
                    if next >= (generation + 1) * ZH_EPS_PER_GEN {
                        return Err(Error::io(
                            "zero-hop endpoints",
                            std::io::Error::other(format!("more than {ZH_EPS_PER_GEN} zero-hop endpoints")),
                        ));
                    }
                    self.endpoints
                        .set(next, Sockaddr::new(ep.socket_addr(port)), 0)
                        .map_err(|e| Error::map(maps::ZH_ENDPOINTS, e))?;
                    next += 1;
                }
                ranges.insert((si, pi), (base, next - base));
            }
        }
        let desired: HashMap2<SvcKey, SvcVal> = config
            .service_addrs()
            .into_iter()
            .map(|(addr, sa)| {
                let (ep_base, ep_count) = ranges.get(&(sa.service, sa.port)).copied().unwrap_or((0, 0));
                let checked = self.authz_on.contains(&SvcKey::new(addr));
                let flags = match (ep_count > 0, checked) {
                    (false, _) => 0,
                    (true, false) => SVC_ZERO_HOP,
                    (true, true) => SVC_ZERO_HOP | SVC_AUTHZ,
                };
                (SvcKey::new(addr), SvcVal { svc_id: sa.service as u32, flags, ep_base, ep_count })
            })
            .collect();
        let mut report = SyncReport::default();
        for (k, v) in &desired {
            let old = self.map.get(k, 0).ok();
            if old.as_ref() != Some(v) {
                self.map.insert(k, v, 0).map_err(|e| Error::map(maps::SERVICES, e))?;
                if old.is_some() { report.updated += 1 } else { report.added += 1 }
            }
        }
        for k in current.iter().filter(|k| !desired.contains_key(k)) {
            self.map.remove(k).map_err(|e| Error::map(maps::SERVICES, e))?;
            report.removed += 1;
        }
        Ok(report)
    }

    /// The addresses in the kernel map now.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self.map.keys().filter_map(Result::ok).map(|k| k.socket_addr()).collect();
        v.sort();
        v
    }
}

/// The original destination of a connection the proxy accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    pub addr: SocketAddr,
    /// Index of the service in the config that was in force at connect time.
    pub svc_id: u32,
    /// The cgroup of the process that connected (cgroup v2 id: its directory's inode).
    pub cgroup_id: u64,
}

/// `sl_orig`: the proxy's way to learn where an accepted connection was going.
#[derive(Debug)]
pub struct OrigDstTable {
    map: Mutex<HashMap<MapData, FlowKey, OrigDst>>,
}

impl OrigDstTable {
    pub(crate) fn new(map: Map) -> Result<Self, Error> {
        Ok(Self { map: Mutex::new(HashMap::try_from(map).map_err(|e| Error::map(maps::ORIG_DST, e))?) })
    }

    /// Looks up and consumes the entry of the connection `peer` → `local`.
    pub fn take(&self, peer: SocketAddr, local: SocketAddr) -> Option<Original> {
        let key = FlowKey::new(peer, local);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let v = map.get(&key, 0).ok()?;
        // Consumed: a later connection that reuses the 4-tuple gets its own entry.
        let _ = map.remove(&key);
        Some(Original { addr: v.socket_addr(), svc_id: v.svc_id, cgroup_id: v.cgroup_id })
    }
}

/// Zero-hop connections per service address, from a running node's pins.
pub fn zero_hop_counts(pin_dir: &Path) -> Result<std::collections::HashMap<SocketAddr, u64>, Error> {
    let data = MapData::from_pin(pin_dir.join(maps::ZH_CONNS)).map_err(|e| Error::map(maps::ZH_CONNS, e))?;
    let map: aya::maps::PerCpuHashMap<MapData, SvcKey, u64> =
        aya::maps::PerCpuHashMap::try_from(Map::PerCpuHashMap(data))
            .map_err(|e| Error::map(maps::ZH_CONNS, e))?;
    let mut out = std::collections::HashMap::new();
    for (k, v) in map.iter().flatten() {
        *out.entry(k.socket_addr()).or_default() += v.iter().sum::<u64>();
    }
    Ok(out)
}

/// Zero-hop bytes (up: sent by applications, down: received) and closed
/// connections per service address, summed over CPUs.
pub fn zero_hop_bytes(pin_dir: &Path) -> Result<std::collections::HashMap<SocketAddr, ZhBytes>, Error> {
    let data = MapData::from_pin(pin_dir.join(maps::ZH_BYTES)).map_err(|e| Error::map(maps::ZH_BYTES, e))?;
    let map: aya::maps::PerCpuHashMap<MapData, SvcKey, ZhBytes> =
        aya::maps::PerCpuHashMap::try_from(Map::PerCpuHashMap(data))
            .map_err(|e| Error::map(maps::ZH_BYTES, e))?;
    let mut out: std::collections::HashMap<SocketAddr, ZhBytes> = std::collections::HashMap::new();
    for (k, v) in map.iter().flatten() {
        let e = out.entry(k.socket_addr()).or_default();
        for b in v.iter() {
            e.up += b.up;
            e.down += b.down;
            e.closed += b.closed;
        }
    }
    Ok(out)
}

/// `sl_stats`: per-CPU counters, summed.
pub struct Stats {
    map: PerCpuArray<MapData, u64>,
}

impl Stats {
    pub(crate) fn new(map: Map) -> Result<Self, Error> {
        Ok(Self { map: PerCpuArray::try_from(map).map_err(|e| Error::map(maps::STATS, e))? })
    }

    /// Opens the counters of a running (or crashed) node from its pin.
    pub fn from_pin(pin_dir: &Path) -> Result<Self, Error> {
        let data = MapData::from_pin(pin_dir.join(maps::STATS)).map_err(|e| Error::map(maps::STATS, e))?;
        Self::new(Map::PerCpuArray(data))
    }

    pub fn get(&self, stat: Stat) -> u64 {
        self.map.get(&(stat as u32), 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    pub fn all(&self) -> Vec<(Stat, u64)> {
        Stat::ALL.iter().map(|s| (*s, self.get(*s))).collect()
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.all().into_iter().map(|(s, n)| (s.name(), n))).finish()
    }
}

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
    abi::{FlowKey, OrigDst, SVC_ZERO_HOP, Sockaddr, Stat, SvcKey, SvcVal, ZH_EPS_PER_GEN, ZhBytes},
    maps,
};
use sluice_mesh_config::MeshConfig;

use crate::Error;

/// `sl_svc`: which destinations connect4/6 send to the proxy, and `sl_zh_eps`:
/// the endpoints of zero-hop service ports.
pub struct ServiceMap {
    map: HashMap<MapData, SvcKey, SvcVal>,
    endpoints: Array<MapData, Sockaddr>,
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
    pub(crate) fn new(map: Map, endpoints: Map) -> Result<Self, Error> {
        Ok(Self {
            map: HashMap::try_from(map).map_err(|e| Error::map(maps::SERVICES, e))?,
            endpoints: Array::try_from(endpoints).map_err(|e| Error::map(maps::ZH_ENDPOINTS, e))?,
        })
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
                let flags = if ep_count > 0 { SVC_ZERO_HOP } else { 0 };
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
        Some(Original { addr: v.socket_addr(), svc_id: v.svc_id })
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

//! Proxy liveness: the node heartbeats `sl_live`; connect4/6 compare the
//! heartbeat with the kernel's monotonic clock and, once it is older than the
//! timeout, apply the fail mode (go direct, or refuse).

use std::{path::Path, sync::Mutex, time::Duration};

use aya::maps::{Array, Map, MapData};
use sluice_bpf::{
    abi::{FailMode, Live},
    maps,
};

use crate::Error;

/// The heartbeat writer.
pub struct Liveness {
    map: Mutex<Array<MapData, Live>>,
    fail_mode: FailMode,
    timeout: Duration,
}

impl Liveness {
    pub(crate) fn new(map: Map, fail_mode: FailMode, timeout: Duration) -> Result<Self, Error> {
        let map = Array::try_from(map).map_err(|e| Error::map(maps::LIVE, e))?;
        Ok(Self { map: Mutex::new(map), fail_mode, timeout })
    }

    /// Reads the liveness record of a node from its pins.
    pub fn read_pinned(pin_dir: &Path) -> Result<Live, Error> {
        let data = MapData::from_pin(pin_dir.join(maps::LIVE)).map_err(|e| Error::map(maps::LIVE, e))?;
        let map: Array<MapData, Live> =
            Array::try_from(Map::Array(data)).map_err(|e| Error::map(maps::LIVE, e))?;
        map.get(&0, 0).map_err(|e| Error::map(maps::LIVE, e))
    }

    /// Writes "alive now" with the fail mode and timeout.
    pub fn beat(&self) -> Result<(), Error> {
        let live = Live {
            heartbeat_ns: monotonic_ns(),
            fail_mode: self.fail_mode as u32,
            timeout_ms: u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX),
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.set(0, live, 0).map_err(|e| Error::map(maps::LIVE, e))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("fail_mode", &self.fail_mode)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

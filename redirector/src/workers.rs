//! The kernel side of the proxy's workers: which slot each worker's listeners
//! occupy in the reuseport socket arrays, its state (active, draining, free),
//! its load, and how the `sk_reuseport` program picks among them.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, PerCpuArray, ReusePortSockArray},
    programs::SkReuseport,
};
use sluice_bpf::{
    abi::{LbMode, MAX_WORKERS, RpCfg, WorkerState},
    maps, programs,
};

use crate::Error;

/// One slot, as `sluice status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    pub slot: u32,
    pub state: WorkerState,
    pub load: u32,
    /// Connections the kernel gave this slot so far.
    pub selected: u64,
}

/// The worker maps and the `sk_reuseport` program.
pub struct Workers {
    work4: Mutex<ReusePortSockArray<MapData>>,
    work6: Mutex<ReusePortSockArray<MapData>>,
    state: Mutex<Array<MapData, u32>>,
    load: Mutex<Array<MapData, u32>>,
    selected: PerCpuArray<MapData, u64>,
    rpcfg: Mutex<Array<MapData, RpCfg>>,
    object: Mutex<Ebpf>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("slots", &self.snapshot()).finish()
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, Error> {
    ebpf.take_map(name).ok_or(Error::Missing { object: "reuseport", what: "map", name })
}

impl Workers {
    /// From the loaded `reuseport` object, whose maps are the node's pinned ones.
    pub(crate) fn new(mut object: Ebpf) -> Result<Self, Error> {
        let prog: &mut SkReuseport = object
            .program_mut(programs::REUSEPORT)
            .ok_or(Error::Missing { object: "reuseport", what: "program", name: programs::REUSEPORT })?
            .try_into()
            .map_err(|e| Error::program(programs::REUSEPORT, e))?;
        prog.load().map_err(|e| Error::program(programs::REUSEPORT, e))?;
        let sockarray = |m| ReusePortSockArray::try_from(m);
        Ok(Self {
            work4: Mutex::new(
                sockarray(take(&mut object, maps::WORKERS4)?).map_err(|e| Error::map(maps::WORKERS4, e))?,
            ),
            work6: Mutex::new(
                sockarray(take(&mut object, maps::WORKERS6)?).map_err(|e| Error::map(maps::WORKERS6, e))?,
            ),
            state: Mutex::new(
                Array::try_from(take(&mut object, maps::WORKER_STATE)?)
                    .map_err(|e| Error::map(maps::WORKER_STATE, e))?,
            ),
            load: Mutex::new(
                Array::try_from(take(&mut object, maps::WORKER_LOAD)?)
                    .map_err(|e| Error::map(maps::WORKER_LOAD, e))?,
            ),
            selected: PerCpuArray::try_from(take(&mut object, maps::WORKER_SELECTED)?)
                .map_err(|e| Error::map(maps::WORKER_SELECTED, e))?,
            rpcfg: Mutex::new(
                Array::try_from(take(&mut object, maps::REUSEPORT_CFG)?)
                    .map_err(|e| Error::map(maps::REUSEPORT_CFG, e))?,
            ),
            object: Mutex::new(object),
        })
    }

    /// Reserves `n` free slots (a node taking over gets slots beside its predecessor's).
    pub fn claim(&self, n: usize) -> Result<Vec<u32>, Error> {
        let state = lock(&self.state);
        let free: Vec<u32> = (0..MAX_WORKERS)
            .filter(|s| state.get(s, 0).map(|v| v == WorkerState::Free as u32).unwrap_or(false))
            .take(n)
            .collect();
        if free.len() < n {
            return Err(Error::io(
                "claiming worker slots",
                std::io::Error::other(format!(
                    "{n} workers wanted, {} of {MAX_WORKERS} slots free",
                    free.len()
                )),
            ));
        }
        Ok(free)
    }

    /// Puts a worker's listeners in its slot, attaches the program to their
    /// reuseport groups, and makes the slot active.
    pub fn register<F: AsFd + AsRawFd>(&self, slot: u32, v4: &F, v6: Option<&F>) -> Result<(), Error> {
        lock(&self.work4).set(slot, v4, 0).map_err(|e| Error::map(maps::WORKERS4, e))?;
        if let Some(v6) = v6 {
            lock(&self.work6).set(slot, v6, 0).map_err(|e| Error::map(maps::WORKERS6, e))?;
        }
        {
            let object = lock(&self.object);
            let prog: &SkReuseport = object
                .program(programs::REUSEPORT)
                .ok_or(Error::Missing { object: "reuseport", what: "program", name: programs::REUSEPORT })?
                .try_into()
                .map_err(|e| Error::program(programs::REUSEPORT, e))?;
            // The program belongs to the whole group: attaching through any member
            // (again) is harmless and covers a group this node created.
            prog.attach(v4).map_err(|e| Error::program(programs::REUSEPORT, e))?;
            if let Some(v6) = v6 {
                prog.attach(v6).map_err(|e| Error::program(programs::REUSEPORT, e))?;
            }
        }
        self.set_state(slot, WorkerState::Active)
    }

    pub fn set_state(&self, slot: u32, state: WorkerState) -> Result<(), Error> {
        lock(&self.state).set(slot, state as u32, 0).map_err(|e| Error::map(maps::WORKER_STATE, e))
    }

    pub fn set_load(&self, slot: u32, load: u32) -> Result<(), Error> {
        lock(&self.load).set(slot, load, 0).map_err(|e| Error::map(maps::WORKER_LOAD, e))
    }

    /// No new connections for this slot; its listeners leave the arrays.
    pub fn drain(&self, slot: u32) -> Result<(), Error> {
        self.set_state(slot, WorkerState::Draining)?;
        let _ = lock(&self.work4).clear_index(&slot);
        let _ = lock(&self.work6).clear_index(&slot);
        Ok(())
    }

    /// The worker is gone: the slot is free for the next node.
    pub fn release(&self, slot: u32) -> Result<(), Error> {
        let _ = lock(&self.work4).clear_index(&slot);
        let _ = lock(&self.work6).clear_index(&slot);
        self.set_load(slot, 0)?;
        self.set_state(slot, WorkerState::Free)
    }

    pub fn set_mode(&self, mode: LbMode) -> Result<(), Error> {
        lock(&self.rpcfg)
            .set(0, RpCfg { mode: mode as u32, _pad: 0 }, 0)
            .map_err(|e| Error::map(maps::REUSEPORT_CFG, e))
    }

    /// Every slot in use or ever selected.
    pub fn snapshot(&self) -> Vec<WorkerInfo> {
        let state = lock(&self.state);
        let load = lock(&self.load);
        snapshot(&state, &load, &self.selected)
    }

    /// The slots of a node, read from its pins (for `sluice status`).
    pub fn read_pinned(pin_dir: &Path) -> Result<Vec<WorkerInfo>, Error> {
        let open =
            |name: &'static str| MapData::from_pin(pin_dir.join(name)).map_err(|e| Error::map(name, e));
        let state = Array::try_from(Map::Array(open(maps::WORKER_STATE)?))
            .map_err(|e| Error::map(maps::WORKER_STATE, e))?;
        let load = Array::try_from(Map::Array(open(maps::WORKER_LOAD)?))
            .map_err(|e| Error::map(maps::WORKER_LOAD, e))?;
        let selected = PerCpuArray::try_from(Map::PerCpuArray(open(maps::WORKER_SELECTED)?))
            .map_err(|e| Error::map(maps::WORKER_SELECTED, e))?;
        Ok(snapshot(&state, &load, &selected))
    }
}

fn snapshot(
    state: &Array<MapData, u32>,
    load: &Array<MapData, u32>,
    selected: &PerCpuArray<MapData, u64>,
) -> Vec<WorkerInfo> {
    (0..MAX_WORKERS)
        .map(|slot| WorkerInfo {
            slot,
            state: state.get(&slot, 0).ok().and_then(WorkerState::from_u32).unwrap_or(WorkerState::Free),
            load: load.get(&slot, 0).unwrap_or(0),
            selected: selected.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0),
        })
        .filter(|w| w.state != WorkerState::Free || w.selected > 0)
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

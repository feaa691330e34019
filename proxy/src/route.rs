//! The routing table: service address → service port → endpoints. Built from a
//! validated config and swapped whole on reload, so a connection sees either
//! the old table or the new one, never a mix.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use sluice_mesh_config::MeshConfig;

use crate::balance::RoundRobin;

/// Where one service port's connections go.
#[derive(Debug)]
pub struct Backend {
    pub service: String,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
    pub balancer: RoundRobin,
}

/// One immutable version of the table.
#[derive(Debug, Default)]
pub struct Table {
    by_addr: HashMap<SocketAddr, Arc<Backend>>,
}

impl Table {
    pub fn from_config(config: &MeshConfig) -> Self {
        // One backend per service port, shared by all of the service's VIPs, so
        // round robin is fair across VIPs.
        let mut backends: HashMap<(usize, usize), Arc<Backend>> = HashMap::new();
        let mut by_addr = HashMap::new();
        for (addr, sa) in config.service_addrs() {
            let b = backends.entry((sa.service, sa.port)).or_insert_with(|| {
                let svc = &config.services[sa.service];
                let port = &svc.ports[sa.port];
                Arc::new(Backend {
                    service: svc.name.clone(),
                    port: port.port,
                    endpoints: svc.endpoints.iter().map(|e| e.socket_addr(port)).collect(),
                    balancer: RoundRobin::default(),
                })
            });
            by_addr.insert(addr, Arc::clone(b));
        }
        Self { by_addr }
    }

    pub fn get(&self, orig: SocketAddr) -> Option<&Arc<Backend>> {
        self.by_addr.get(&orig)
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

/// The live table, shared by the listener and the config watcher.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    current: Arc<ArcSwap<Table>>,
}

impl Routes {
    pub fn new(config: &MeshConfig) -> Self {
        Self { current: Arc::new(ArcSwap::from_pointee(Table::from_config(config))) }
    }

    /// Replaces the table; connections already forwarding are not touched.
    pub fn apply(&self, config: &MeshConfig) {
        self.current.store(Arc::new(Table::from_config(config)));
    }

    pub fn load(&self) -> Arc<Table> {
        self.current.load_full()
    }
}

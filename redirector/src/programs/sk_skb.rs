//! `sk_skb`: in-kernel splicing of L4 connections between two proxy
//! sockets (`bpf/sk_skb.bpf.c`). Not pinned: the maps hold the node's own
//! sockets, which live and die with the process; a node that takes over
//! splices its own connections while the old one finishes its own.

use std::{os::fd::BorrowedFd, sync::Mutex};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, SockHash},
    programs::SkSkb,
};
use sluice_bpf::{
    SK_SKB,
    abi::{SplicePeer, SpliceStat},
    maps, programs,
};

use crate::{Error, sys};

/// The two sockets of a spliced connection, by cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplicedPair {
    pub a: u64,
    pub b: u64,
}

#[derive(Debug)]
pub struct Splicer {
    inner: Mutex<Inner>,
}

struct Inner {
    // Owns the programs and their attachments to the socket map.
    _ebpf: Ebpf,
    sockets: SockHash<MapData, u64>,
    peers: HashMap<MapData, u64, SplicePeer>,
    stats: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splicer").finish_non_exhaustive()
    }
}

impl Splicer {
    /// Loads the programs and attaches them to a fresh socket map.
    pub fn load() -> Result<Self, Error> {
        let mut ebpf = EbpfLoader::new()
            .load(SK_SKB.bytes)
            .map_err(|e| Error::Load { object: SK_SKB.name, source: Box::new(e) })?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(Error::Missing { object: SK_SKB.name, what: "map", name })
        };
        let sockets: SockHash<MapData, u64> =
            SockHash::try_from(take(&mut ebpf, maps::SPLICE)?).map_err(|e| Error::map(maps::SPLICE, e))?;
        let peers = HashMap::try_from(take(&mut ebpf, maps::SPLICE_PEER)?)
            .map_err(|e| Error::map(maps::SPLICE_PEER, e))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, maps::SPLICE_STATS)?)
            .map_err(|e| Error::map(maps::SPLICE_STATS, e))?;
        let map_fd =
            sockets.fd().try_clone().map_err(|e| Error::Io { what: "dup sl_splice".into(), source: e })?;
        for name in [programs::SPLICE_PARSER, programs::SPLICE_VERDICT] {
            let prog: &mut SkSkb = ebpf
                .program_mut(name)
                .ok_or(Error::Missing { object: SK_SKB.name, what: "program", name })?
                .try_into()
                .map_err(|e| Error::program(name, e))?;
            prog.load().map_err(|e| Error::program(name, e))?;
            prog.attach(&map_fd).map_err(|e| Error::program(name, e))?;
        }
        Ok(Self { inner: Mutex::new(Inner { _ebpf: ebpf, sockets, peers, stats }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands two connected TCP sockets to the kernel: from now on what
    /// arrives on one is sent out of the other. Peers are set first, so no
    /// skb finds its socket in the map without a peer.
    pub fn splice(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> Result<SplicedPair, Error> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| Error::Io { what, source }
        };
        let pair = SplicedPair {
            a: sys::socket_cookie(a).map_err(io("socket cookie"))?,
            b: sys::socket_cookie(b).map_err(io("socket cookie"))?,
        };
        let mut inner = self.lock();
        let m = |e| Error::map(maps::SPLICE_PEER, e);
        inner.peers.insert(pair.a, SplicePeer { peer_cookie: pair.b, bytes: 0 }, 0).map_err(m)?;
        inner.peers.insert(pair.b, SplicePeer { peer_cookie: pair.a, bytes: 0 }, 0).map_err(m)?;
        let s = |e| Error::map(maps::SPLICE, e);
        // b (the endpoint side) first: clients speak first in most protocols,
        // and a's data finds b already there. Data on b before a is in (an
        // endpoint that speaks first) goes to the proxy, which copies it.
        let added = inner
            .sockets
            .insert(pair.b, b, 0)
            .map_err(s)
            .and_then(|()| inner.sockets.insert(pair.a, a, 0).map_err(s));
        if let Err(e) = added {
            drop(inner);
            self.release(pair);
            return Err(e);
        }
        Ok(pair)
    }

    /// Bytes the kernel has sent on from socket `cookie` to its peer.
    pub fn redirected(&self, cookie: u64) -> u64 {
        self.lock().peers.get(&cookie, 0).map_or(0, |p| p.bytes)
    }

    /// Forgets a pair (sockets leave the map on close anyway).
    pub fn release(&self, pair: SplicedPair) {
        let mut inner = self.lock();
        for c in [pair.a, pair.b] {
            let _ = inner.sockets.remove(&c);
            let _ = inner.peers.remove(&c);
        }
    }

    /// The verdict program's counters, summed over CPUs.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let inner = self.lock();
        SpliceStat::ALL
            .iter()
            .map(|s| {
                let n = inner.stats.get(&(*s as u32), 0).map_or(0, |v| v.iter().sum());
                (s.name(), n)
            })
            .collect()
    }
}

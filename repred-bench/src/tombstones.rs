//! `tombstones`: what deletes cost once collected (issue 16). 1,000,000
//! inserts and then 1,000,000 deletes of distinct keys, written round-robin
//! on three replicas linked in a triangle on the in-memory network; once
//! every replica has seen the deletes, each collects at the stable point
//! of the three clocks. Printed per type (`LwwMap<u64, u64>` and
//! `OrSet<u64>`): tombstones held after the deletes and after the
//! collection, the history's records, and the process's RSS at each step
//! (one process holds all three replicas), also after glibc's
//! `malloc_trim`, which returns what the allocator holds free, and what
//! the program holds from the allocator before the inserts and after the
//! collection (glibc's `mallinfo2`: in use, whatever RSS says). `TOMBSTONE_KEYS` changes the
//! number of keys (default 1,000,000), `TOMBSTONE_HISTORY` the replicas'
//! history limit (default 65,536, `Config::default()`'s),
//! `TOMBSTONE_WARMUP` the keys of a warm-up cycle before "before" is
//! measured (default 10,000).

use std::time::Instant;

use repred::{Clock, Config, LwwMap, Network, NodeId, OrSet, Reduce, Replica, SourceId};

use crate::rss_kib;

fn history_limit() -> usize {
    std::env::var("TOMBSTONE_HISTORY").ok().and_then(|v| v.parse().ok()).unwrap_or(65_536)
}

/// Keys of the warm-up cycle before "before" is measured
/// (`TOMBSTONE_WARMUP`, default 10,000; 0 measures from three replicas
/// that never wrote).
fn warm_up_keys() -> u64 {
    std::env::var("TOMBSTONE_WARMUP").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

fn keys() -> u64 {
    std::env::var("TOMBSTONE_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// One type under test: how to write, delete and count.
trait Subject: Reduce + Default {
    const NAME: &'static str;
    fn insert(key: u64) -> Self::Update;
    fn delete(&self, key: u64) -> Self::Update;
    /// (live entries, tombstones)
    fn counts(&self) -> (u64, u64);
}

impl Subject for LwwMap<u64, u64> {
    const NAME: &'static str = "LwwMap<u64, u64>";
    fn insert(key: u64) -> Self::Update {
        LwwMap::set(key, key)
    }
    fn delete(&self, key: u64) -> Self::Update {
        LwwMap::delete(key)
    }
    fn counts(&self) -> (u64, u64) {
        let live = self.len() as u64;
        (live, self.entries_hint().unwrap_or(0) - live)
    }
}

impl Subject for OrSet<u64> {
    const NAME: &'static str = "OrSet<u64>";
    fn insert(key: u64) -> Self::Update {
        OrSet::add(key)
    }
    fn delete(&self, key: u64) -> Self::Update {
        self.remove(&key)
    }
    fn counts(&self) -> (u64, u64) {
        let live = self.len() as u64;
        (live, self.entries_hint().unwrap_or(0) - live)
    }
}

/// What the program holds from the allocator, in KiB, as glibc counts it
/// (in use in its heaps, and in chunks mapped on their own): unlike RSS,
/// it falls as soon as memory is freed, whether or not the allocator
/// gives it back to the system.
fn in_use_kib() -> u64 {
    // SAFETY: mallinfo2 only reads glibc's allocator counters.
    let info = unsafe { libc::mallinfo2() };
    ((info.uordblks + info.hblkhd) / 1024) as u64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn run<T: Subject>() {
    let keys = keys();
    let start = Instant::now();
    let mut net: Network<T> = Network::new();
    let config = Config::default().history_limit(history_limit());
    let nodes: Vec<NodeId> = (0..3)
        .map(|_| net.add(Replica::with_config(SourceId::random(), T::default(), config.clone())))
        .collect();
    net.link(nodes[0], nodes[1]);
    net.link(nodes[1], nodes[2]);
    net.link(nodes[0], nodes[2]);
    net.pump();
    // Writes go round-robin; the network is pumped every 10,000 so that
    // peers stay within each other's history.
    let write = |net: &mut Network<T>, key: u64, delete: bool| {
        let node = nodes[(key % 3) as usize];
        let update = if delete { net[node].state().delete(key) } else { T::insert(key) };
        if let Err(e) = net.update(node, update) {
            panic!("a write failed: {e}");
        }
        if key % 10_000 == 9_999 {
            net.advance(1);
            net.pump();
        }
    };
    let collect = |net: &mut Network<T>| {
        let clocks: Vec<Clock> = nodes.iter().map(|&n| net[n].clock().clone()).collect();
        let stable = Clock::stable_point(&clocks);
        for &n in &nodes {
            net[n].collect(stable);
        }
    };
    // The warm-up: one pump's worth of the same cycle on keys of their own
    // (inserts, deletes, a collection), and a trim, before "before" is
    // taken. A running node has faulted in its code and grown its buffers
    // to a frame's size already; without it, "before" is three empty
    // replicas that never wrote, and the difference after a trim is the
    // binary's pages and the network's buffers, not tombstones.
    let warm_up = warm_up_keys();
    for key in keys..keys + warm_up {
        write(&mut net, key, false);
    }
    net.pump();
    for key in keys..keys + warm_up {
        write(&mut net, key, true);
    }
    net.pump();
    if warm_up > 0 {
        collect(&mut net);
        // SAFETY: as below.
        unsafe { libc::malloc_trim(0) };
    }
    let (before, _) = rss_kib();
    let in_use_before = in_use_kib();
    for key in 0..keys {
        write(&mut net, key, false);
    }
    net.pump();
    let (inserted, _) = rss_kib();
    for key in 0..keys {
        write(&mut net, key, true);
    }
    net.pump();
    let (deleted, _) = rss_kib();
    let tombstones_before: Vec<u64> = nodes.iter().map(|&n| net[n].state().counts().1).collect();
    collect(&mut net);
    let (collected, peak) = rss_kib();
    let in_use_collected = in_use_kib();
    // What the allocator holds free but has not returned to the system.
    // SAFETY: malloc_trim only releases free memory at the heap's top and
    // in free pages; glibc is this binary's allocator on Linux.
    unsafe { libc::malloc_trim(0) };
    let (trimmed, _) = rss_kib();
    let after: Vec<(u64, u64)> = nodes.iter().map(|&n| net[n].state().counts()).collect();
    let history: Vec<usize> = nodes.iter().map(|&n| net[n].history_len()).collect();
    let converged = nodes.iter().all(|&n| net[n].clock() == net[nodes[0]].clock());
    println!(
        "| {} | {keys} | {warm_up} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} s |",
        T::NAME,
        tombstones_before.iter().max().unwrap_or(&0),
        after.iter().map(|a| a.1).max().unwrap_or(0),
        after.iter().map(|a| a.0).max().unwrap_or(0),
        history.iter().max().unwrap_or(&0),
        mib(before),
        mib(inserted),
        mib(deleted),
        mib(collected),
        mib(trimmed),
        mib(in_use_before),
        mib(in_use_collected),
        mib(peak),
        start.elapsed().as_secs_f64(),
    );
    assert!(converged, "the replicas' clocks differ");
}

pub fn tombstones() {
    println!("### tombstones: inserts, then deletes of distinct keys, then collection\n");
    println!(
        "`cargo run --release -p repred-bench -- tombstones` (three replicas, default config; `TOMBSTONE_HISTORY=1024` for a short history)\n"
    );
    println!(
        "| type | keys | warm-up keys | tombstones after the deletes (per replica, max) | tombstones after collection | live entries | history records | RSS before (MiB) | after inserts | after deletes | after collection | after `malloc_trim` | in use before (MiB) | in use after collection | peak | time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    run::<LwwMap<u64, u64>>();
    run::<OrSet<u64>>();
    println!();
}

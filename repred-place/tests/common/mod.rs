//! What the QUIC placement tests share: eight durable nodes on 127.0.0.1,
//! fully meshed, and the checks of where objects stand.
#![allow(dead_code)] // each test binary uses its part

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use repred::{GSet, SourceId};
use repred_place::transport::{DIRECTORY, Placer, PlacerConfig};
use repred_transport::repred_node::{MemberState, NodeConfig};
use repred_transport::{Builder, Node};

pub type Set = GSet<u64>;

pub const NODES: usize = 8;
pub const OBJECTS: u64 = 24;
pub const K: usize = 3;

/// Probes every 300 ms, 1.5 s to refute a suspicion; every node connected
/// to every other (placement on the transport needs each two replicas
/// connected) and no rotation to trade those connections away.
pub fn builder(dir: &Path) -> Builder {
    let config = NodeConfig::default()
        .announce_every(Duration::from_secs(2))
        .announce_down_every(Duration::from_secs(1))
        .dial_backoff(Duration::from_millis(100))
        .max_dial_backoff(Duration::from_millis(1_500));
    Node::builder()
        .data_dir(dir)
        .durable(true)
        .node_config(config)
        .heartbeat(Duration::from_millis(300))
        .down_after(Duration::from_millis(1_500))
        .rotate_every(Duration::from_secs(3_600))
        .dial_timeout(Duration::from_millis(1_500))
        .fanout(NODES - 1)
}

/// Starts a node on `listen`; a restarted node's port and store may take a
/// moment to be let go by its last life (at most 100 tries, 5 s).
pub async fn start(dir: &Path, listen: SocketAddr, bootstrap: Option<SocketAddr>) -> Node {
    start_with(dir, listen, bootstrap, builder).await
}

/// [`start`] with the nodes' settings from `make` (see [`builder`]).
pub async fn start_with(
    dir: &Path,
    listen: SocketAddr,
    bootstrap: Option<SocketAddr>,
    make: fn(&Path) -> Builder,
) -> Node {
    let mut last = None;
    for _ in 0..100 {
        let b = make(dir).listen(listen).bootstrap(bootstrap);
        match b.spawn().await {
            Ok(node) => return node,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node on {listen} did not start: {last:?}");
}

/// Eight placing nodes: each durable node on a free port, joined through
/// the first (`seed`), a placer each, every member seeing every other.
pub struct Cluster {
    pub placers: Vec<Option<Placer<Set>>>,
    pub ids: BTreeSet<SourceId>,
    pub seed: SocketAddr,
}

/// Starts a [`Cluster`] of [`NODES`] nodes in `dir`, its placers run with
/// `config`, and waits (at most 30 s) until every member sees all.
pub async fn cluster(dir: &Path, config: PlacerConfig) -> Cluster {
    cluster_with(dir, config, builder).await
}

/// [`cluster`] with the nodes' settings from `make` (see [`builder`]).
pub async fn cluster_with(dir: &Path, config: PlacerConfig, make: fn(&Path) -> Builder) -> Cluster {
    let addrs = free_ports(NODES);
    let seed = addrs[0];
    let mut nodes = vec![start_with(dir, seed, None, make).await];
    for addr in &addrs[1..] {
        nodes.push(start_with(dir, *addr, Some(seed), make).await);
    }
    let ids: BTreeSet<SourceId> = nodes.iter().map(Node::id).collect();
    let placers: Vec<Option<Placer<Set>>> = nodes
        .into_iter()
        .map(|n| Some(Placer::spawn(n, config.clone()).expect("a durable node places")))
        .collect();
    eventually("all members see all", Duration::from_secs(30), || members_are(&placers, &ids))
        .await;
    Cluster { placers, ids, seed }
}

/// Creates objects `0..objects` each on its primary, as node 0 places it.
pub fn create_on_primaries(placers: &[Option<Placer<Set>>], objects: u64) {
    for object in 0..objects {
        let primary = placers[0].as_ref().unwrap().replicas(&name(object))[0];
        let p = live(placers).find(|p| p.node().id() == primary).unwrap();
        p.create(&name(object)).unwrap();
    }
}

/// Free ports for the nodes: a node keeps its id (its certificate, kept
/// in the data directory by port) and its store only on a fixed port.
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<std::net::UdpSocket> =
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port")).collect();
    sockets.iter().map(|s| s.local_addr().expect("bound")).collect()
}

/// Polls `observe` every 100 ms until it says done or `limit` passes;
/// panics with `what` and the last observation otherwise.
pub async fn eventually<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut observe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match observe() {
            Ok(seen) => return seen,
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn name(object: u64) -> String {
    format!("doc-{object:02}")
}

/// The placers running now (a killed node's slot is `None`).
pub fn live(placers: &[Option<Placer<Set>>]) -> impl Iterator<Item = &Placer<Set>> {
    placers.iter().flatten()
}

/// Whether every running node sees exactly `ids` alive (or suspected) and
/// everyone else down or gone.
pub fn members_are(
    placers: &[Option<Placer<Set>>],
    ids: &BTreeSet<SourceId>,
) -> Result<(), String> {
    for p in live(placers) {
        let up: BTreeSet<SourceId> = p
            .node()
            .membership()
            .into_iter()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| m.id)
            .collect();
        if &up != ids {
            return Err(format!("{} sees {} live of {}", p.node().id(), up.len(), ids.len()));
        }
    }
    Ok(())
}

/// Where every object stands, as the running nodes see it: placed alike by
/// all, held by exactly its k live replicas, one clock among them, every
/// acknowledged write in each, nothing waiting.
pub fn placed_and_converged(
    placers: &[Option<Placer<Set>>],
    acked: &BTreeMap<String, BTreeSet<u64>>,
) -> Result<(), String> {
    let running: Vec<&Placer<Set>> = live(placers).collect();
    let mut holders: BTreeMap<String, Vec<&Placer<Set>>> = BTreeMap::new();
    for p in &running {
        // What the node replicates, not only what its placer says.
        // Copies that go through a replica are not the node's to hold.
        let opened: Vec<String> = p.opened().into_iter().map(|(o, _)| o).collect();
        let mut replicated = p.node().replicated();
        replicated.retain(|o| o != DIRECTORY && !opened.contains(o));
        let held: Vec<String> = p.holdings().into_iter().map(|(o, _)| o).collect();
        if replicated != held {
            return Err(format!("{} replicates {replicated:?}, holds {held:?}", p.node().id()));
        }
        for object in replicated {
            holders.entry(object).or_default().push(p);
        }
    }
    for (object, values) in acked {
        let replicas: BTreeSet<SourceId> = running[0].replicas(object).into_iter().collect();
        for p in &running[1..] {
            let theirs: BTreeSet<SourceId> = p.replicas(object).into_iter().collect();
            if theirs != replicas {
                return Err(format!("{object}: placed differently by {}", p.node().id()));
            }
        }
        if replicas.len() != K {
            return Err(format!("{object}: {} live replicas", replicas.len()));
        }
        let held = holders.get(object).map_or(&[][..], Vec::as_slice);
        let held_by: BTreeSet<SourceId> = held.iter().map(|p| p.node().id()).collect();
        if held_by != replicas {
            return Err(format!("{object}: held by {held_by:?}, replicas {replicas:?}"));
        }
        let clocks: Vec<_> = held.iter().map(|p| p.clock(object)).collect();
        if clocks.iter().any(|c| *c != clocks[0]) {
            return Err(format!("{object}: replicas' clocks differ"));
        }
        for p in held {
            let missing: Vec<u64> = p
                .read(object, |s| values.iter().copied().filter(|v| !s.contains(v)).collect())
                .unwrap_or_else(|| values.iter().copied().collect());
            if !missing.is_empty() {
                return Err(format!("{object}: {} lacks {missing:?}", p.node().id()));
            }
        }
    }
    if let Some(object) = holders.keys().find(|o| !acked.contains_key(*o)) {
        return Err(format!("{object} is held but was never created"));
    }
    if let Some(p) = running.iter().find(|p| !p.is_settled()) {
        return Err(format!("{} is not settled", p.node().id()));
    }
    Ok(())
}

/// Shuts every live placer and its node down, all at once, each within
/// 20 s.
pub async fn shutdown_all(placers: Vec<Option<Placer<Set>>>) {
    let shutdowns: Vec<_> =
        placers.into_iter().flatten().map(|p| tokio::spawn(p.shutdown())).collect();
    for shutdown in shutdowns {
        tokio::time::timeout(Duration::from_secs(20), shutdown)
            .await
            .expect("a placer and its node shut down")
            .expect("the shutdown task ran");
    }
}

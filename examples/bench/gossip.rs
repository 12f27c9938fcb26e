//! repred against chitchat: a whole cluster converging on every node's keys,
//! idle cost after convergence, and a late joiner.
//!
//! repred runs over the core's in-memory `Network` (virtual time, one hop
//! per `step()`); chitchat 0.13 runs its own servers over its in-memory
//! `ChannelTransport` (real tokio tasks, 100 ms gossip interval, fanout 3),
//! and its statistics count the bytes of every serialized message.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::transport::ChannelTransport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use repred::{Config, LinkId, Network, NodeId, Reduce, Replica, SourceId, Stamp};
use serde::{Deserialize, Serialize};

/// Gossip interval of both libraries' clusters.
pub const INTERVAL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------- workload

/// splitmix64: a small deterministic generator, so both libraries get the
/// same keys, values and graphs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The 16-byte key `key` of node `node`, as text (chitchat keys are strings).
pub fn key_text(node: usize, key: usize) -> String {
    format!("n{node:03}k{key:011}")
}

/// A value of exactly `len` bytes of base64 text (`len` a multiple of 4)
/// made of `len * 3 / 4` random bytes.
pub fn value_text(rng: &mut Rng, len: usize) -> String {
    let raw: Vec<u8> = (0..len * 3 / 4).map(|_| rng.next_u64() as u8).collect();
    base64(&raw)
}

/// Node `node`'s K keys and values, the same for both libraries.
pub fn node_writes(node: usize, keys: usize, value_len: usize) -> Vec<(String, String)> {
    let mut rng = Rng::new(0x5EED ^ ((node as u64) << 32) ^ value_len as u64);
    (0..keys).map(|k| (key_text(node, k), value_text(&mut rng, value_len))).collect()
}

/// Bytes every node must receive at least once: N(N-1)K(16+value).
pub fn floor(n: usize, keys: usize, value_len: usize) -> u64 {
    (n * (n - 1) * keys * (16 + value_len)) as u64
}

/// A connected random graph in which each node links to `fanout` random
/// peers: node i first links to a random earlier node (a random tree), then
/// to random others until it has made `fanout` links; no pair twice.
pub fn random_graph(n: usize, fanout: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut edges: Vec<(usize, usize)> = Vec::new();
    let has = |edges: &[(usize, usize)], a: usize, b: usize| {
        edges.iter().any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    };
    for i in 1..n {
        let j = rng.below(i);
        edges.push((i, j));
    }
    for i in 0..n {
        let mut made = edges.iter().filter(|&&(a, _)| a == i).count();
        let mut tries = 0;
        while made < fanout.min(n - 1) && tries < 100 {
            tries += 1;
            let j = rng.below(n);
            if j != i && !has(&edges, i, j) {
                edges.push((i, j));
                made += 1;
            }
        }
    }
    edges
}

// ---------------------------------------------------------------- the reducer

/// A 16-byte key.
pub type Key = [u8; 16];

/// An update of the map: writes stamped by the update that carries them
/// (`set`, the stamp implicit) and writes with a stamp of their own (`at`,
/// a merged snapshot's older writes). A local write's stamp is filled in by
/// the replica (`stamp`) and taken out again before it is recorded
/// (`unstamp`), so per-key stamps never travel when they equal the update's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writes {
    pub set: Vec<(Key, String)>,
    pub at: Vec<(Key, Stamp, String)>,
}

/// scuttlebutt's model: key -> newest value, last writer wins per key.
#[derive(Debug, Default)]
pub struct Lww(pub HashMap<Key, (Stamp, String)>);

impl Lww {
    /// One update writing all of `writes`.
    pub fn update(writes: &[(String, String)]) -> Writes {
        let set = writes
            .iter()
            .map(|(k, v)| {
                let mut key = [0u8; 16];
                key.copy_from_slice(&k.as_bytes()[..16]);
                (key, v.clone())
            })
            .collect();
        Writes { set, at: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl Reduce for Lww {
    type Update = Writes;

    fn reduce(&mut self, update: Writes) -> Option<Writes> {
        // Unstamped writes cannot be ordered; `stamp` has moved them to `at`.
        let mut changed = Vec::new();
        for (key, stamp, value) in update.at {
            match self.0.entry(key) {
                MapEntry::Occupied(mut slot) => {
                    if stamp > slot.get().0 {
                        slot.insert((stamp, value.clone()));
                        changed.push((key, stamp, value));
                    }
                }
                MapEntry::Vacant(slot) => {
                    slot.insert((stamp, value.clone()));
                    changed.push((key, stamp, value));
                }
            }
        }
        (!changed.is_empty()).then_some(Writes { set: Vec::new(), at: changed })
    }

    fn snapshot(&self) -> Writes {
        let at = self.0.iter().map(|(k, (s, v))| (*k, *s, v.clone())).collect();
        Writes { set: Vec::new(), at }
    }

    fn stamp(update: &mut Writes, stamp: Stamp) {
        let set = std::mem::take(&mut update.set);
        update.at.extend(set.into_iter().map(|(k, v)| (k, stamp, v)));
    }

    fn unstamp(change: &mut Writes, stamp: Stamp) {
        let at = std::mem::take(&mut change.at);
        for (k, s, v) in at {
            if s == stamp {
                change.set.push((k, v));
            } else {
                change.at.push((k, s, v));
            }
        }
    }
}

// ---------------------------------------------------------------- repred side

pub struct Cluster {
    pub net: Network<Lww>,
    pub nodes: Vec<NodeId>,
    pub links: Vec<LinkId>,
}

pub fn config() -> Config {
    Config::default().lazy_relay(true)
}

impl Cluster {
    /// `n` replicas linked as a random graph of fanout 3, Hellos exchanged.
    pub fn new(n: usize, seed: u64) -> Self {
        let mut net = Network::new();
        let nodes: Vec<NodeId> = (0..n)
            .map(|i| {
                let id = SourceId::from_bytes((i as u128 + 1).to_be_bytes()).expect("valid id");
                net.add(Replica::with_config(id, Lww::default(), config()))
            })
            .collect();
        let mut rng = Rng::new(seed);
        let links = random_graph(n, 3, &mut rng)
            .into_iter()
            .map(|(a, b)| net.link(nodes[a], nodes[b]))
            .collect();
        let mut cluster = Self { net, nodes, links };
        cluster.net.pump();
        cluster
    }

    /// Bytes written on every link, both ways.
    pub fn bytes(&self) -> u64 {
        self.links.iter().map(|&l| self.link_bytes(l)).sum()
    }

    pub fn link_bytes(&self, link: LinkId) -> u64 {
        self.net
            .streams(link)
            .iter()
            .map(|&(node, stream)| self.net[node].stream_stats(stream).map_or(0, |s| s.bytes_sent))
            .sum()
    }

    /// Steps until every node holds `keys` keys; returns the steps taken.
    pub fn converge(&mut self, keys: usize) -> usize {
        let mut steps = 0;
        while self.nodes.iter().any(|&n| self.net[n].state().len() < keys) {
            let moved = self.net.step();
            steps += 1;
            assert!(moved > 0 || steps < 3, "stalled after {steps} steps");
            assert!(steps < 10_000, "did not converge");
        }
        steps
    }
}

pub struct Outcome {
    pub bytes: u64,
    pub rounds: usize,
    pub time: Duration,
}

pub fn repred_gossip(n: usize, keys: usize, value_len: usize) -> Outcome {
    let mut cluster = Cluster::new(n, 42 + n as u64);
    let writes: Vec<_> = (0..n).map(|i| Lww::update(&node_writes(i, keys, value_len))).collect();
    let before = cluster.bytes();
    let start = Instant::now();
    for (i, w) in writes.into_iter().enumerate() {
        let node = cluster.nodes[i];
        cluster.net.update(node, w).expect("local update");
    }
    let rounds = cluster.converge(n * keys);
    let time = start.elapsed();
    Outcome { bytes: cluster.bytes() - before, rounds, time }
}

// ---------------------------------------------------------------- chitchat side

pub struct Chitchat {
    pub transport: ChannelTransport,
    pub handles: Vec<ChitchatHandle>,
}

fn addr(i: usize) -> SocketAddr {
    ([127, 0, 0, 1], 20_000 + i as u16).into()
}

impl Chitchat {
    pub async fn start(n: usize, keys: usize, value_len: usize) -> Self {
        // Without an MTU the channel would carry datagrams UDP cannot.
        let transport = ChannelTransport::with_mtu(65_507);
        let mut handles = Vec::new();
        for i in 0..n {
            handles.push(Self::spawn(&transport, i, node_writes(i, keys, value_len)).await);
        }
        Self { transport, handles }
    }

    pub async fn spawn(
        transport: &ChannelTransport,
        i: usize,
        kvs: Vec<(String, String)>,
    ) -> ChitchatHandle {
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(format!("node-{i}"), 0, addr(i)),
            cluster_id: "bench".into(),
            gossip_interval: INTERVAL,
            listen_addr: addr(i),
            seed_nodes: if i == 0 { Vec::new() } else { vec![addr(0).to_string()] },
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        spawn_chitchat(config, kvs, transport).await.expect("chitchat starts")
    }

    pub fn bytes(&self) -> u64 {
        self.transport.statistics().num_bytes_total
    }

    /// Whether node `i` holds `n` nodes' `keys` keys each.
    pub async fn has_all(&self, i: usize, n: usize, keys: usize) -> bool {
        let chitchat = self.handles[i].chitchat();
        let guard = chitchat.lock().await;
        let states = guard.node_states();
        states.len() >= n && states.values().filter(|s| s.num_key_values() >= keys).count() >= n
    }

    /// Polls every 5 ms until every node has everything; returns the time and
    /// the transport's byte count at that moment.
    pub async fn converge(&self, n: usize, keys: usize, start: Instant) -> (Duration, u64) {
        let mut done = vec![false; self.handles.len()];
        loop {
            for (i, d) in done.iter_mut().enumerate() {
                if !*d {
                    *d = self.has_all(i, n, keys).await;
                }
            }
            if done.iter().all(|&d| d) {
                return (start.elapsed(), self.bytes());
            }
            assert!(start.elapsed() < Duration::from_secs(300), "chitchat did not converge");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(self) {
        for h in self.handles {
            let _ = h.shutdown().await;
        }
    }
}

pub async fn chitchat_gossip(n: usize, keys: usize, value_len: usize) -> Outcome {
    let start = Instant::now();
    let cluster = Chitchat::start(n, keys, value_len).await;
    let (time, bytes) = cluster.converge(n, keys, start).await;
    cluster.stop().await;
    Outcome { bytes, rounds: time.div_duration_f64(INTERVAL).ceil() as usize, time }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn fmt_bytes(b: u64) -> String {
    if b >= 10 << 20 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else if b >= 10 << 10 {
        format!("{:.1} kB", b as f64 / 1e3)
    } else {
        format!("{b} B")
    }
}

pub fn gossip() {
    println!("### gossip: N nodes each write K keys at once, until every node has every key\n");
    println!("`cargo run --release --example bench -- gossip`\n");
    println!(
        "repred: in-memory `Network`, each node linked to 3 random peers (a connected random graph), one hop per step, `Config::lazy_relay`; chitchat 0.13: `ChannelTransport` (MTU 65,507), 100 ms gossip interval, fanout 3, protocol V1, seeded from node 0. Floor = N(N-1)K(16+value).\n"
    );
    println!(
        "| N | K | value | floor | repred bytes | x floor | steps | time | chitchat bytes | x floor | rounds | time |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rt = runtime();
    let cells: Vec<(usize, usize, usize)> = std::env::var("GOSSIP_CELLS")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|c| {
                    let v: Vec<usize> = c.split('x').map(|x| x.parse().expect("NxKxV")).collect();
                    (v[0], v[1], v[2])
                })
                .collect()
        })
        .unwrap_or_else(|| {
            let mut cells = Vec::new();
            for n in [8, 16, 32] {
                for k in [100, 1000] {
                    for v in [32, 1024] {
                        cells.push((n, k, v));
                    }
                }
            }
            cells
        });
    for (n, k, v) in cells {
        let fl = floor(n, k, v);
        let ours = repred_gossip(n, k, v);
        let theirs = rt.block_on(chitchat_gossip(n, k, v));
        println!(
            "| {n} | {k} | {v} B | {} | {} | {:.3} | {} | {:.0} ms | {} | {:.2} | {} | {:.0} ms |",
            fmt_bytes(fl),
            fmt_bytes(ours.bytes),
            ours.bytes as f64 / fl as f64,
            ours.rounds,
            ours.time.as_secs_f64() * 1e3,
            fmt_bytes(theirs.bytes),
            theirs.bytes as f64 / fl as f64,
            theirs.rounds,
            theirs.time.as_secs_f64() * 1e3,
        );
    }
    println!();
}

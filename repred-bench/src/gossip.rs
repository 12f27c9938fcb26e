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

/// Hashes a 16-byte key by folding it into one word and multiplying (keys
/// are not attacker-chosen here; SipHash cost a quarter of apply time).
#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // splitmix64's finaliser, so every input bit reaches the low bits.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517C_C1B7_2722_0A95);
        }
    }
}

/// scuttlebutt's model: key -> newest value, last writer wins per key.
#[derive(Debug, Default)]
pub struct Lww(pub HashMap<Key, (Stamp, String), std::hash::BuildHasherDefault<KeyHasher>>);

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
    /// the transport's byte count at that moment, or at `limit` the share of
    /// (node, key) pairs held so far as an error.
    pub async fn converge(
        &self,
        n: usize,
        keys: usize,
        start: Instant,
        limit: Duration,
    ) -> Result<(Duration, u64), (Duration, u64, f64)> {
        let mut done = vec![false; self.handles.len()];
        loop {
            for (i, d) in done.iter_mut().enumerate() {
                if !*d {
                    *d = self.has_all(i, n, keys).await;
                }
            }
            if done.iter().all(|&d| d) {
                return Ok((start.elapsed(), self.bytes()));
            }
            if start.elapsed() > limit {
                let (time, bytes) = (start.elapsed(), self.bytes());
                let mut held = 0usize;
                for h in &self.handles {
                    let chitchat = h.chitchat();
                    let guard = chitchat.lock().await;
                    held += guard.node_states().values().map(|s| s.num_key_values()).sum::<usize>();
                }
                return Err((time, bytes, held as f64 / (n * n * keys) as f64));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(self) {
        for h in self.handles {
            let _ = h.shutdown().await;
        }
    }
}

/// chitchat converging, or `Err(share held)` after [`CHITCHAT_LIMIT`].
pub async fn chitchat_gossip(
    n: usize,
    keys: usize,
    value_len: usize,
) -> Result<Outcome, (Outcome, f64)> {
    let start = Instant::now();
    let cluster = Chitchat::start(n, keys, value_len).await;
    let result = cluster.converge(n, keys, start, CHITCHAT_LIMIT).await;
    cluster.stop().await;
    let rounds = |time: Duration| time.div_duration_f64(INTERVAL).ceil() as usize;
    match result {
        Ok((time, bytes)) => Ok(Outcome { bytes, rounds: rounds(time), time }),
        Err((time, bytes, share)) => Err((Outcome { bytes, rounds: rounds(time), time }, share)),
    }
}

/// How long a chitchat cluster is given to converge.
pub const CHITCHAT_LIMIT: Duration = Duration::from_secs(120);

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
    println!("`cargo run --release -p repred-bench -- gossip`\n");
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
        let (theirs, note) = match rt.block_on(chitchat_gossip(n, k, v)) {
            Ok(o) => (o, String::new()),
            Err((o, share)) => (o, format!(" (not converged: {:.1}% of keys held)", share * 100.0)),
        };
        println!(
            "| {n} | {k} | {v} B | {} | {} | {:.3} | {} | {:.0} ms | {} | {:.2} | {} | {:.0} ms{note} |",
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

// ---------------------------------------------------------------- idle cost

async fn chitchat_idle(n: usize, window: Duration) -> f64 {
    let start = Instant::now();
    let cluster = Chitchat::start(n, 100, 32).await;
    cluster.converge(n, 100, start, CHITCHAT_LIMIT).await.expect("chitchat converges");
    let b0 = cluster.bytes();
    tokio::time::sleep(window).await;
    let b1 = cluster.bytes();
    cluster.stop().await;
    (b1 - b0) as f64 / n as f64 / window.as_secs_f64()
}

pub fn idle() {
    println!("### idle cost: bytes per node per second after convergence (K = 100, 32 B)\n");
    println!("`cargo run --release -p repred-bench -- idle`\n");
    let defaults = crate::cluster::Timers::defaults();
    let example = crate::cluster::Timers {
        heartbeat: Duration::from_secs(1),
        down_after: Duration::from_secs(5),
        rotate_every: Duration::from_secs(5),
    };
    println!(
        "chitchat: its own gossip over `ChannelTransport` (a digest of every node, 3 peers per 100 ms round, heartbeats in the digest), serialized bytes. repred: a repred-transport cluster over loopback QUIC (every node holding its 100 keys in a replicated map, bootstrapped from node 0), UDP payload bytes sent, QUIC headers, encryption, acknowledgements, keep-alives, SWIM membership datagrams, connection rotation and handshakes included; with the library's defaults (probe every {:?}, suspicion {:?}, rotation every {:?}) and with the peer example's timers (probe every 1 s, suspicion 5 s, rotation every 5 s). Each measured over {IDLE_WINDOW:?} after convergence (`swim` measures membership alone on real sockets, chitchat over UDP).\n",
        defaults.heartbeat, defaults.down_after, defaults.rotate_every
    );
    println!(
        "| N | chitchat (100 ms rounds) | repred, defaults | repred / chitchat | repred, peer example's timers | that / chitchat |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let rt = runtime();
    let ns: Vec<usize> = std::env::var("IDLE_N")
        .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
        .unwrap_or(vec![8, 16, 32]);
    for n in ns {
        let theirs = rt.block_on(chitchat_idle(n, IDLE_WINDOW));
        let ours = |timers| match rt.block_on(crate::cluster::idle(n, 100, timers, IDLE_WINDOW)) {
            Ok(rate) => (format!("{rate:.0} B/s"), format!("{:.3}", rate / theirs)),
            Err(e) => (format!("failed: {e}"), "-".into()),
        };
        let (d, dr) = ours(defaults);
        let (e, er) = ours(example);
        println!("| {n} | {theirs:.0} B/s | {d} | {dr} | {e} | {er} |");
    }
    println!();
}

/// How long idle traffic is measured for: one rotation period at the
/// defaults, so each node trades one connection within it.
const IDLE_WINDOW: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- late joiner

pub fn join() {
    let (n, keys, value_len) = (32usize, 100usize, 32usize);
    let needs = (n * keys * (16 + value_len)) as u64;
    println!("### late joiner: one node joins a converged cluster of N = 32 (K = 100, 32 B)\n");
    println!("`cargo run --release -p repred-bench -- join`\n");
    println!(
        "What it needs: N K (16 + value) = {needs} bytes. repred: the joiner links to 3 random members; bytes are those of its 3 links, both ways (Hellos with clocks included). chitchat: it is seeded from node 0; bytes are the transport's total over the join minus the cluster's idle traffic over the same time (measured just before).\n"
    );
    println!("| library | time | rounds / steps | bytes | x what it needs |");
    println!("|---|---:|---:|---:|---:|");

    let mut cluster = Cluster::new(n, 42 + n as u64);
    for i in 0..n {
        let w = Lww::update(&node_writes(i, keys, value_len));
        cluster.net.update(cluster.nodes[i], w).expect("local update");
    }
    cluster.converge(n * keys);
    cluster.net.pump();
    let start = Instant::now();
    let id = SourceId::from_bytes(1000u128.to_be_bytes()).expect("valid id");
    let joiner = cluster.net.add(Replica::with_config(id, Lww::default(), config()));
    let mut rng = Rng::new(7);
    let mut peers = Vec::new();
    while peers.len() < 3 {
        let p = cluster.nodes[rng.below(n)];
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    let links: Vec<LinkId> = peers.iter().map(|&p| cluster.net.link(joiner, p)).collect();
    let mut steps = 0;
    while cluster.net[joiner].state().len() < n * keys {
        cluster.net.step();
        steps += 1;
        assert!(steps < 1_000, "the joiner did not catch up");
    }
    let time = start.elapsed();
    let bytes: u64 = links.iter().map(|&l| cluster.link_bytes(l)).sum();
    let stats = cluster.net[joiner].stats();
    println!(
        "| repred | {:.2} ms | {steps} steps | {bytes} | {:.3} |",
        time.as_secs_f64() * 1e3,
        bytes as f64 / needs as f64
    );
    let hellos: u64 = links
        .iter()
        .flat_map(|&l| cluster.net.streams(l))
        .map(|(node, stream)| cluster.net[node].stream_stats(stream).map_or(0, |s| s.frames_sent))
        .sum();
    let _ = hellos;

    let rt = runtime();
    let (time, bytes) = rt.block_on(async {
        let start = Instant::now();
        let cluster = Chitchat::start(n, keys, value_len).await;
        cluster.converge(n, keys, start, CHITCHAT_LIMIT).await.expect("chitchat converges");
        let window = Duration::from_secs(3);
        let b0 = cluster.bytes();
        tokio::time::sleep(window).await;
        let idle_rate = (cluster.bytes() - b0) as f64 / window.as_secs_f64();
        let b1 = cluster.bytes();
        let start = Instant::now();
        let handle = Chitchat::spawn(&cluster.transport, n, Vec::new()).await;
        let mut cluster = cluster;
        cluster.handles.push(handle);
        loop {
            if cluster.has_all(n, n, keys).await {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "chitchat joiner stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let time = start.elapsed();
        let gross = cluster.bytes() - b1;
        cluster.stop().await;
        (time, gross as f64 - idle_rate * time.as_secs_f64())
    });
    println!(
        "| chitchat | {:.0} ms | {} rounds | {bytes:.0} | {:.3} |",
        time.as_secs_f64() * 1e3,
        time.div_duration_f64(INTERVAL).ceil(),
        bytes / needs as f64
    );
    println!(
        "\nrepred's joiner applied {} updates and received {} duplicates.\n",
        stats.applied, stats.old
    );
}

// ---------------------------------------------------------------- digest

/// One anti-entropy exchange (Syn, SynAck, Ack) between two chitchat nodes
/// that both know the same `sources` other nodes: (bytes, messages) counted
/// by the transport, with or without UDP's datagram limit.
async fn chitchat_exchange(sources: usize, protocol: ProtocolVersion, mtu: bool) -> (u64, u64) {
    let transport =
        if mtu { ChannelTransport::with_mtu(65_507) } else { ChannelTransport::default() };
    let mut handles = Vec::new();
    for i in 0..2 {
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(format!("node-{i}"), 0, addr(i)),
            cluster_id: "bench".into(),
            gossip_interval: Duration::from_secs(3600),
            listen_addr: addr(i),
            seed_nodes: Vec::new(),
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: protocol,
        };
        handles.push(spawn_chitchat(config, Vec::new(), &transport).await.expect("chitchat"));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for h in &handles {
        let chitchat = h.chitchat();
        let mut guard = chitchat.lock().await;
        for s in 0..sources {
            let ip = [10, (s >> 16) as u8, (s >> 8) as u8, s as u8];
            let id = ChitchatId::new(format!("source-{s:06}"), 0, (ip, 7000).into());
            let kv = (
                "k".to_string(),
                chitchat::VersionedValue {
                    value: "v".into(),
                    version: 1,
                    status: chitchat::DeletionStatus::Set,
                },
            );
            guard.reset_node_state_if_update(&id, std::iter::once(kv), 1, 0);
        }
    }
    // Warm up both ways so that each knows the other's own node.
    for (from, to) in [(0, 1), (1, 0)] {
        let _ = handles[from].gossip(addr(to));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (b0, m0) = {
        let s = transport.statistics();
        (s.num_bytes_total, s.num_messages_total)
    };
    let _ = handles[0].gossip(addr(1));
    tokio::time::sleep(Duration::from_millis(100 + sources as u64 / 500)).await;
    let s = transport.statistics();
    for h in handles {
        let _ = h.shutdown().await;
    }
    (s.num_bytes_total - b0, s.num_messages_total - m0)
}

/// The largest number of known nodes for which one chitchat exchange still
/// goes through a 65,507-byte datagram.
async fn chitchat_digest_limit(protocol: ProtocolVersion) -> usize {
    let (mut ok, mut fail) = (10usize, 100_000usize);
    while fail - ok > 1 {
        let mid = (ok + fail) / 2;
        if chitchat_exchange(mid, protocol, true).await.1 == 3 {
            ok = mid;
        } else {
            fail = mid;
        }
    }
    ok
}

/// chitchat's side of the digest table: per source count, the bytes of one
/// exchange and what happened, and the limits for protocols V0 and V1.
pub fn chitchat_digest(sources: &[usize]) -> (Vec<(u64, String)>, usize, usize) {
    let rt = runtime();
    rt.block_on(async {
        let mut rows = Vec::new();
        for &s in sources {
            let (fit_bytes, fit_messages) = chitchat_exchange(s, ProtocolVersion::V1, true).await;
            let (bytes, messages) = chitchat_exchange(s, ProtocolVersion::V1, false).await;
            rows.push(if fit_messages == 3 {
                (fit_bytes, "yes".to_string())
            } else if bytes > 65_507 {
                (bytes, format!("no: its {bytes}-byte Syn exceeds a datagram; not sent, so the two never gossip (without the limit, the receiver's task panics: `assert!(mtu >= 100)`)"))
            } else {
                (bytes, format!("no ({messages} of 3 messages): the receiver's task panics (`assert!(mtu >= 100)` in chitchat's delta.rs), that node stops gossiping"))
            });
        }
        let v0 = chitchat_digest_limit(ProtocolVersion::V0).await;
        let v1 = chitchat_digest_limit(ProtocolVersion::V1).await;
        (rows, v0, v1)
    })
}

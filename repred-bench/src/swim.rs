//! Membership on real sockets: repred-transport clusters (SWIM run by the
//! node core: signed datagrams on each node's own port, QUIC connections to
//! O(log N) peers) beside chitchat 0.13 clusters on its own
//! `UdpTransport`, all on 127.0.0.1, in one process and one run.
//!
//! For each N both clusters start (every node bootstrapped or seeded from
//! node 0) and run until every node sees every member alive; then they
//! settle, then idle for a window: UDP payload bytes each node sends per
//! second, and live members declared down by anyone (polled every 50 ms).
//! Then nodes are killed one after another without a goodbye, the same
//! index in both systems at the same moment, and each survivor's time to
//! declare the dead node down is recorded (polled every 20 ms).
//!
//! Environment: `SWIM_N` (cluster sizes, default `8,16,32`), `SWIM_WINDOW`
//! (idle seconds, default 120: one rotation period), `SWIM_SETTLE` (seconds
//! between convergence and the window, default 10), `SWIM_KILLS` (nodes
//! killed per size, default 3), `SWIM_CHITCHAT` (`<gossip interval
//! ms>:<phi threshold>`, default [`ChitchatSettings::COMPARABLE`]).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion, spawn_chitchat,
};
use repred::SourceId;
use repred_transport::Node;
use repred_transport::repred_node::MemberState;

use crate::cluster::Scratch;

/// chitchat's failure detection settings.
#[derive(Clone, Copy, Debug)]
pub struct ChitchatSettings {
    /// Gossip interval: each node gossips with 3 live peers per interval
    /// and bumps its heartbeat.
    pub interval: Duration,
    /// Phi threshold. chitchat's phi is the time since the last new
    /// heartbeat over the mean interval between new heartbeats, so a dead
    /// node is declared after about `phi` mean intervals.
    pub phi: f64,
}

impl ChitchatSettings {
    /// What the scenario uses unless `SWIM_CHITCHAT=<interval ms>:<phi>`
    /// says otherwise: chitchat's default phi threshold (8) and a gossip
    /// interval at which it detects a dead node about as fast as
    /// repred-transport's defaults do.
    pub const COMPARABLE: Self = Self { interval: Duration::from_millis(500), phi: 8.0 };

    fn from_env() -> Self {
        let Ok(spec) = std::env::var("SWIM_CHITCHAT") else { return Self::COMPARABLE };
        let (ms, phi) = spec.split_once(':').expect("SWIM_CHITCHAT=<interval ms>:<phi>");
        Self {
            interval: Duration::from_millis(ms.parse().expect("interval in ms")),
            phi: phi.parse().expect("phi"),
        }
    }

    fn detector(&self) -> FailureDetectorConfig {
        FailureDetectorConfig {
            phi_threshold: self.phi,
            // The prior of the mean interval (weight 5 samples): chitchat's
            // default, 5 s, would slow detection for minutes after a start.
            initial_interval: self.interval,
            // A dead node is forgotten only after this: longer than a run.
            dead_node_grace_period: GRACE,
            ..FailureDetectorConfig::default()
        }
    }
}

/// chitchat's dead-node and tombstone grace periods: longer than a run, so
/// nothing is garbage-collected while it is measured.
const GRACE: Duration = Duration::from_secs(3600);

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------- chitchat over counted UDP

/// Bytes and datagrams a chitchat cluster's sockets sent.
#[derive(Clone, Default)]
struct Sent {
    bytes: Arc<AtomicU64>,
    datagrams: Arc<AtomicU64>,
}

impl Sent {
    fn get(&self) -> (u64, u64) {
        (self.bytes.load(Ordering::Relaxed), self.datagrams.load(Ordering::Relaxed))
    }
}

/// chitchat's own `UdpTransport`, counting what each socket sends (the
/// serialized envelope is the datagram's payload).
struct CountedUdp(Sent);

#[async_trait]
impl Transport for CountedUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = UdpSocket::open(listen_addr).await?;
        Ok(Box::new(CountedSocket { socket, sent: self.0.clone() }))
    }
}

struct CountedSocket {
    socket: UdpSocket,
    sent: Sent,
}

#[async_trait]
impl Socket for CountedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = self.socket.send(to, envelope).await?;
        self.sent.bytes.fetch_add(outcome.num_bytes_sent as u64, Ordering::Relaxed);
        self.sent.datagrams.fetch_add(1, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.socket.recv().await
    }
}

/// `n` free UDP ports on 127.0.0.1, bound at once and released.
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<std::net::UdpSocket> =
        (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port")).collect();
    sockets.iter().map(|s| s.local_addr().expect("bound")).collect()
}

struct ChitchatCluster {
    handles: Vec<Option<ChitchatHandle>>,
    ids: Vec<ChitchatId>,
    sent: Sent,
}

impl ChitchatCluster {
    async fn start(n: usize, settings: ChitchatSettings) -> Result<Self, String> {
        let sent = Sent::default();
        let transport = CountedUdp(sent.clone());
        let addrs = free_addrs(n);
        let ids: Vec<ChitchatId> =
            (0..n).map(|i| ChitchatId::new(format!("node-{i:03}"), 0, addrs[i])).collect();
        let mut handles = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let config = ChitchatConfig {
                chitchat_id: id.clone(),
                cluster_id: "swim-bench".into(),
                gossip_interval: settings.interval,
                listen_addr: addrs[i],
                seed_nodes: if i == 0 { Vec::new() } else { vec![addrs[0].to_string()] },
                failure_detector_config: settings.detector(),
                marked_for_deletion_grace_period: GRACE,
                catchup_callback: None,
                extra_liveness_predicate: None,
                protocol_version: ProtocolVersion::V1,
            };
            let handle = spawn_chitchat(config, Vec::new(), &transport)
                .await
                .map_err(|e| format!("chitchat node {i}: {e}"))?;
            handles.push(Some(handle));
        }
        Ok(Self { handles, ids, sent })
    }

    /// Per node (`None` once killed), the other nodes it does not count as
    /// live.
    async fn not_live(&self) -> Vec<Option<BTreeSet<usize>>> {
        let mut out = Vec::with_capacity(self.handles.len());
        for (i, handle) in self.handles.iter().enumerate() {
            let Some(handle) = handle else {
                out.push(None);
                continue;
            };
            let chitchat = handle.chitchat();
            let guard = chitchat.lock().await;
            let live: BTreeSet<&ChitchatId> = guard.live_nodes().collect();
            let down = (0..self.ids.len()).filter(|&j| j != i && !live.contains(&self.ids[j]));
            out.push(Some(down.collect()));
        }
        out
    }

    /// Kills node `i`: its task stops and its socket closes; chitchat says
    /// no goodbye.
    async fn kill(&mut self, i: usize) {
        if let Some(handle) = self.handles[i].take() {
            let _ = handle.shutdown().await;
        }
    }

    async fn stop(self) {
        for handle in self.handles.into_iter().flatten() {
            let _ = handle.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------- repred-transport

struct RepredCluster {
    nodes: Vec<Option<Node>>,
    ids: Vec<SourceId>,
    _scratch: Scratch,
}

/// What a repred node believes of the others.
#[derive(Default)]
struct Beliefs {
    /// Declared down (or not known).
    down: BTreeSet<usize>,
    /// Suspected, not yet declared down.
    suspect: BTreeSet<usize>,
}

impl RepredCluster {
    /// `n` nodes with repred-transport's defaults, bootstrapped from the
    /// first, replicating nothing: membership and connection upkeep only.
    async fn start(n: usize) -> Result<Self, String> {
        let scratch = Scratch::new(&format!("swim-{n}"));
        let mut nodes = Vec::new();
        let mut first: Option<SocketAddr> = None;
        for i in 0..n {
            let node = Node::builder()
                .data_dir(&scratch.0)
                .bootstrap(first)
                .spawn()
                .await
                .map_err(|e| format!("repred node {i}: {e}"))?;
            first.get_or_insert(node.addr());
            nodes.push(Some(node));
        }
        let ids = nodes.iter().flatten().map(Node::id).collect();
        Ok(Self { nodes, ids, _scratch: scratch })
    }

    fn beliefs(&self) -> Vec<Option<Beliefs>> {
        let index: HashMap<SourceId, usize> =
            self.ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let node = node.as_ref()?;
                let mut states = vec![None; self.ids.len()];
                for m in node.membership() {
                    if let Some(&j) = index.get(&m.id) {
                        states[j] = Some(m.state);
                    }
                }
                let mut b = Beliefs::default();
                for (j, state) in states.into_iter().enumerate() {
                    match state {
                        _ if j == i => {}
                        Some(MemberState::Alive) => {}
                        Some(MemberState::Suspect) => {
                            b.suspect.insert(j);
                        }
                        Some(MemberState::Down) | None => {
                            b.down.insert(j);
                        }
                    }
                }
                Some(b)
            })
            .collect()
    }

    fn not_live(&self) -> Vec<Option<BTreeSet<usize>>> {
        self.beliefs().into_iter().map(|b| b.map(|b| b.down)).collect()
    }

    /// (UDP payload bytes, membership datagram bytes, membership datagrams)
    /// sent by every node still running.
    fn sent(&self) -> (u64, u64, u64) {
        self.nodes.iter().flatten().map(Node::stats).fold((0, 0, 0), |(a, b, c), s| {
            (a + s.udp_tx_bytes, b + s.membership_tx_bytes, c + s.datagrams_sent)
        })
    }

    fn connections(&self) -> usize {
        self.nodes.iter().flatten().map(|n| n.stats().connections).sum()
    }

    /// Kills node `i` as a crash would: dropped, no goodbye, no datagram
    /// sent after this. (quinn closes its connections implicitly; the node
    /// core takes a lost connection for a lost connection, never for a
    /// failure: only SWIM declares a member down.)
    fn kill(&mut self, i: usize) {
        drop(self.nodes[i].take());
    }

    async fn stop(self) {
        let mut set = tokio::task::JoinSet::new();
        for node in self.nodes.into_iter().flatten() {
            set.spawn(node.shutdown());
        }
        while set.join_next().await.is_some() {}
    }
}

// ---------------------------------------------------------------- the run

/// Transitions from live to declared down (or suspected) seen by polling.
#[derive(Default)]
struct Flaps {
    down: u64,
    suspect: u64,
}

fn count_new(before: &[Option<BTreeSet<usize>>], now: &[Option<BTreeSet<usize>>]) -> u64 {
    before
        .iter()
        .zip(now)
        .map(|(b, n)| match (b, n) {
            (Some(b), Some(n)) => n.difference(b).count() as u64,
            _ => 0,
        })
        .sum()
}

/// What one N measured for one system.
#[derive(Default)]
struct Side {
    /// UDP payload bytes per node per second over the window.
    rate: f64,
    /// Datagrams (membership only, for repred) per node per second.
    datagrams: f64,
    /// Membership datagram bytes per node per second (repred).
    membership: f64,
    /// Detection times of every survivor for every kill.
    detections: Vec<Duration>,
    /// Survivors that had not declared a killed node down at the limit.
    missed: usize,
    flaps: Flaps,
    /// Live nodes declared down during the kill phase.
    late_false_downs: u64,
}

struct Row {
    n: usize,
    repred: Side,
    chitchat: Side,
    connections: f64,
}

/// The longest a survivor is waited for after a kill.
const DETECT_LIMIT: Duration = Duration::from_secs(60);

async fn run(
    n: usize,
    settings: ChitchatSettings,
    window: Duration,
    kills: usize,
) -> Result<Row, String> {
    let mut repred = RepredCluster::start(n).await?;
    let mut chitchat = match ChitchatCluster::start(n, settings).await {
        Ok(c) => c,
        Err(e) => {
            repred.stop().await;
            return Err(e);
        }
    };
    let result = measure(n, &mut repred, &mut chitchat, window, kills).await;
    repred.stop().await;
    chitchat.stop().await;
    result
}

async fn measure(
    n: usize,
    repred: &mut RepredCluster,
    chitchat: &mut ChitchatCluster,
    window: Duration,
    kills: usize,
) -> Result<Row, String> {
    let none_down = |v: &[Option<BTreeSet<usize>>]| v.iter().flatten().all(BTreeSet::is_empty);
    let started = Instant::now();
    loop {
        let r =
            repred.beliefs().iter().flatten().all(|b| b.down.is_empty() && b.suspect.is_empty());
        let c = none_down(&chitchat.not_live().await);
        if r && c {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("not converged after 120 s (repred {r}, chitchat {c})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("N = {n}: both converged in {:.1} s", started.elapsed().as_secs_f64());
    // The joins' own traffic (member lists, the first dials) passes first.
    tokio::time::sleep(env_secs("SWIM_SETTLE", 10)).await;

    let (mut ours, mut theirs) = (Side::default(), Side::default());
    let (r0, c0) = (repred.sent(), chitchat.sent.get());
    let start = Instant::now();
    let (mut r_prev, mut r_prev_suspect) = {
        let b = repred.beliefs();
        let down: Vec<_> = b.iter().map(|b| b.as_ref().map(|b| b.down.clone())).collect();
        let suspect: Vec<_> = b.iter().map(|b| b.as_ref().map(|b| b.suspect.clone())).collect();
        (down, suspect)
    };
    let mut c_prev = chitchat.not_live().await;
    let mut connections = 0usize;
    let mut samples = 0usize;
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = repred.beliefs();
        let down: Vec<_> = b.iter().map(|b| b.as_ref().map(|b| b.down.clone())).collect();
        let suspect: Vec<_> = b.iter().map(|b| b.as_ref().map(|b| b.suspect.clone())).collect();
        ours.flaps.down += count_new(&r_prev, &down);
        ours.flaps.suspect += count_new(&r_prev_suspect, &suspect);
        (r_prev, r_prev_suspect) = (down, suspect);
        let c_now = chitchat.not_live().await;
        theirs.flaps.down += count_new(&c_prev, &c_now);
        c_prev = c_now;
        if samples.is_multiple_of(20) {
            connections += repred.connections();
        }
        samples += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (r1, c1) = (repred.sent(), chitchat.sent.get());
    let per_node = |x: u64| x as f64 / n as f64 / elapsed;
    ours.rate = per_node(r1.0 - r0.0);
    ours.membership = per_node(r1.1 - r0.1);
    ours.datagrams = per_node(r1.2 - r0.2);
    theirs.rate = per_node(c1.0 - c0.0);
    theirs.datagrams = per_node(c1.1 - c0.1);
    let connections = connections as f64 / samples.div_ceil(20) as f64 / n as f64;
    eprintln!(
        "N = {n}: idle {:.0} B/s (repred) and {:.0} B/s (chitchat) per node over {elapsed:.0} s",
        ours.rate, theirs.rate
    );

    // Kills: the highest indices first (node 0 is both clusters' seed).
    let mut killed = BTreeSet::new();
    for k in 0..kills.min(n.saturating_sub(2)) {
        let victim = n - 1 - k;
        let before_r = repred.not_live();
        let before_c = chitchat.not_live().await;
        repred.kill(victim);
        let r_at = Instant::now();
        chitchat.kill(victim).await;
        let c_at = Instant::now();
        killed.insert(victim);
        let survivors: Vec<usize> = (0..n).filter(|i| !killed.contains(i)).collect();
        let mut r_done: HashMap<usize, Duration> = HashMap::new();
        let mut c_done: HashMap<usize, Duration> = HashMap::new();
        let (mut r_false, mut c_false) = (0, 0);
        while (r_done.len() < survivors.len() || c_done.len() < survivors.len())
            && r_at.elapsed() < DETECT_LIMIT
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (r_now, c_now) = (repred.not_live(), chitchat.not_live().await);
            for &i in &survivors {
                if r_now[i].as_ref().is_some_and(|d| d.contains(&victim)) {
                    r_done.entry(i).or_insert_with(|| r_at.elapsed());
                }
                if c_now[i].as_ref().is_some_and(|d| d.contains(&victim)) {
                    c_done.entry(i).or_insert_with(|| c_at.elapsed());
                }
            }
            // Anyone else declared down meanwhile is a false positive.
            let others = |before: &[Option<BTreeSet<usize>>], now: &[Option<BTreeSet<usize>>]| {
                let strip = |v: &[Option<BTreeSet<usize>>]| -> Vec<Option<BTreeSet<usize>>> {
                    v.iter()
                        .map(|s| s.as_ref().map(|s| s.difference(&killed).copied().collect()))
                        .collect()
                };
                count_new(&strip(before), &strip(now))
            };
            r_false = r_false.max(others(&before_r, &r_now));
            c_false = c_false.max(others(&before_c, &c_now));
        }
        ours.late_false_downs += r_false;
        theirs.late_false_downs += c_false;
        let summary = |done: &HashMap<usize, Duration>| {
            let mut t: Vec<Duration> = done.values().copied().collect();
            t.sort();
            format!(
                "{} of {} detected, p50 {:.2} s, max {:.2} s",
                t.len(),
                survivors.len(),
                percentile(&t, 0.5).as_secs_f64(),
                t.last().copied().unwrap_or_default().as_secs_f64()
            )
        };
        eprintln!(
            "N = {n}: kill {} (node {victim}): repred {}; chitchat {}",
            k + 1,
            summary(&r_done),
            summary(&c_done)
        );
        ours.missed += survivors.len() - r_done.len();
        theirs.missed += survivors.len() - c_done.len();
        ours.detections.extend(r_done.into_values());
        theirs.detections.extend(c_done.into_values());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ours.detections.sort();
    theirs.detections.sort();
    Ok(Row { n, repred: ours, chitchat: theirs, connections })
}

/// The nearest-rank percentile of sorted `values`.
fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn detection(side: &Side) -> String {
    if side.detections.is_empty() {
        return "-".into();
    }
    let missed =
        if side.missed > 0 { format!(" ({} missed in 60 s)", side.missed) } else { String::new() };
    format!(
        "{:.2} s / {:.2} s{missed}",
        percentile(&side.detections, 0.5).as_secs_f64(),
        side.detections.last().copied().unwrap_or_default().as_secs_f64()
    )
}

pub fn swim() {
    let settings = ChitchatSettings::from_env();
    let window = env_secs("SWIM_WINDOW", 120);
    let kills = env_usize("SWIM_KILLS", 3);
    let ns: Vec<usize> = std::env::var("SWIM_N")
        .map(|v| v.split(',').map(|x| x.parse().expect("SWIM_N=8,16,32")).collect())
        .unwrap_or(vec![8, 16, 32]);
    let (heartbeat, down_after, rotate) = (
        repred_transport::DEFAULT_HEARTBEAT,
        repred_transport::DEFAULT_DOWN_AFTER,
        repred_transport::DEFAULT_ROTATE_EVERY,
    );
    println!("### membership: SWIM on real sockets against chitchat\n");
    println!("`cargo run --release -p repred-bench -- swim`\n");
    println!(
        "Both on 127.0.0.1, side by side in one process. repred-transport: defaults (probe every {heartbeat:?}, suspicion {down_after:?}, rotation every {rotate:?}), nothing replicated; every UDP payload byte each node sends (`Node::stats().udp_tx_bytes`: signed SWIM datagrams, QUIC handshakes, keep-alives, acknowledgements and the node cores' messages). chitchat 0.13: `UdpTransport`, gossip every {:?} to 3 live peers, phi threshold {}, prior interval {:?}, dead-node grace {GRACE:?}, protocol V1; every UDP payload byte its sockets send. Idle: {window:?} after convergence and {:?} of settling. Detection: {kills} nodes killed one after another without a goodbye (the same index in both at the same moment; repred: the node dropped; chitchat: its server stopped), each survivor's time until it declares the node down (repred: `MemberState::Down`; chitchat: out of `live_nodes`), polled every 20 ms; p50 and max over all survivors of all kills. False positives: live members declared down during the idle window (polled every 50 ms), with repred's refuted suspicions in brackets.\n",
        settings.interval,
        settings.phi,
        settings.interval,
        env_secs("SWIM_SETTLE", 10),
    );
    println!(
        "| N | repred B/s per node | of which SWIM datagrams | chitchat B/s per node | repred / chitchat | repred detection p50 / max | chitchat detection p50 / max | false downs: repred (suspicions) / chitchat |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut notes = Vec::new();
    for n in ns {
        match rt.block_on(run(n, settings, window, kills)) {
            Ok(row) => {
                let (r, c) = (&row.repred, &row.chitchat);
                println!(
                    "| {n} | {:.0} | {:.0} | {:.0} | {:.3} | {} | {} | {} ({}) / {} |",
                    r.rate,
                    r.membership,
                    c.rate,
                    r.rate / c.rate,
                    detection(r),
                    detection(c),
                    r.flaps.down,
                    r.flaps.suspect,
                    c.flaps.down,
                );
                notes.push(format!(
                    "N = {}: repred {:.1} SWIM datagrams per node per second ({:.0} B each), {:.0} B/s of QUIC, {:.1} connections per node; chitchat {:.1} datagrams per node per second ({:.0} B each); live nodes declared down while nodes were being killed: repred {}, chitchat {}.",
                    row.n,
                    r.datagrams,
                    r.membership / r.datagrams.max(f64::MIN_POSITIVE),
                    r.rate - r.membership,
                    row.connections,
                    c.datagrams,
                    c.rate / c.datagrams.max(f64::MIN_POSITIVE),
                    r.late_false_downs,
                    c.late_false_downs,
                ));
            }
            Err(e) => println!("| {n} | failed: {e} | | | | | | |"),
        }
    }
    println!();
    for note in notes {
        println!("{note}\n");
    }
}

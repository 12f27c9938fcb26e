//! A repred-transport cluster on loopback QUIC, as users run it: what an idle
//! cluster costs once every node has every key, SWIM membership datagrams,
//! keep-alives, connection rotation and handshakes included.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use repred_transport::{Handle, Node};

use crate::gossip::{Lww, node_writes};

/// The timers a cluster runs with.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    /// The SWIM probe period (`Builder::heartbeat`).
    pub heartbeat: Duration,
    /// The suspicion timeout (`Builder::down_after`).
    pub down_after: Duration,
    /// How often a node trades a connection (`Builder::rotate_every`).
    pub rotate_every: Duration,
}

impl Timers {
    /// repred-transport's defaults.
    pub fn defaults() -> Self {
        Self {
            heartbeat: repred_transport::DEFAULT_HEARTBEAT,
            down_after: repred_transport::DEFAULT_DOWN_AFTER,
            rotate_every: repred_transport::DEFAULT_ROTATE_EVERY,
        }
    }
}

/// A scratch directory for the cluster's certificates, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("repred-bench-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` nodes on 127.0.0.1 bootstrapped from the first, each holding its own
/// `keys` keys of 32 B in a replicated map, run until every node has every
/// key and sees every member; then UDP bytes sent per node per second over
/// `window`. `Err` says what did not converge within a minute.
pub async fn idle(n: usize, keys: usize, timers: Timers, window: Duration) -> Result<f64, String> {
    let scratch = Scratch::new(&format!("idle-{n}"));
    let mut nodes: Vec<Node> = Vec::new();
    let mut maps: Vec<Handle<Lww>> = Vec::new();
    let mut first: Option<SocketAddr> = None;
    for i in 0..n {
        let node = Node::builder()
            .data_dir(&scratch.0)
            .bootstrap(first)
            .heartbeat(timers.heartbeat)
            .down_after(timers.down_after)
            .rotate_every(timers.rotate_every)
            .spawn()
            .await
            .map_err(|e| format!("node {i}: {e}"))?;
        first.get_or_insert(node.addr());
        let map = node.replicate("kv", Lww::default()).map_err(|e| format!("replicate: {e}"))?;
        map.update(Lww::update(&node_writes(i, keys, 32))).await.map_err(|e| e.to_string())?;
        nodes.push(node);
        maps.push(map);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys_held = maps.iter().filter(|m| m.read(|s| s.len()) == n * keys).count();
        let members_seen = nodes.iter().filter(|node| node.members().borrow().len() == n).count();
        if keys_held == n && members_seen == n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "after 60 s {keys_held} of {n} nodes hold every key, {members_seen} see every member"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the joins' own traffic (the last dials and Hellos) pass.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = |nodes: &[Node]| nodes.iter().map(|node| node.stats().udp_tx_bytes).sum::<u64>();
    let before = sent(&nodes);
    tokio::time::sleep(window).await;
    let after = sent(&nodes);
    for node in nodes {
        node.shutdown().await;
    }
    Ok((after - before) as f64 / n as f64 / window.as_secs_f64())
}

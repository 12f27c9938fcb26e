//! Shared by the transport's integration tests: a small reducer, nodes with
//! short timers, and bounded waits.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use repred::Reduce;
use repred_transport::repred_node::NodeConfig;
use repred_transport::{Builder, Node};

/// name -> largest number written: the merge is max per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<String, u64>);

impl Counters {
    pub fn set(key: &str, value: u64) -> BTreeMap<String, u64> {
        BTreeMap::from([(key.to_string(), value)])
    }
}

impl Reduce for Counters {
    type Update = BTreeMap<String, u64>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let mut changed = BTreeMap::new();
        for (k, v) in update {
            let slot = self.0.entry(k.clone()).or_insert(0);
            if v > *slot {
                *slot = v;
                changed.insert(k, v);
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> Self::Update {
        self.0.clone()
    }
}

/// SWIM with a probe every 150 ms and 1 s to refute a suspicion (down in
/// about 1.5 s), the two sides of a healed partition looking for each other
/// every second, dials retried within a second or two: fast enough for
/// tests, slow enough for a loaded 2-core machine.
pub fn fast(dir: &Path) -> Builder {
    let config = NodeConfig::default()
        .announce_every(Duration::from_secs(2))
        .announce_down_every(Duration::from_secs(1))
        .dial_backoff(Duration::from_millis(100))
        .max_dial_backoff(Duration::from_millis(1_500));
    Node::builder()
        .data_dir(dir)
        .node_config(config)
        .heartbeat(Duration::from_millis(150))
        .down_after(Duration::from_millis(1_000))
        .rotate_every(Duration::from_secs(2))
        .dial_timeout(Duration::from_millis(1_000))
}

pub async fn spawn(dir: &Path, bootstrap: &[SocketAddr]) -> Node {
    fast(dir).bootstrap(bootstrap.iter().copied()).spawn().await.expect("node starts")
}

/// Polls `done` every 20 ms until it holds or `limit` passes; panics with
/// `what` and the last observation otherwise.
pub async fn eventually<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut observe: impl FnMut() -> (bool, T),
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (done, seen) = observe();
        if done {
            return seen;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}; last seen {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn ports(members: &repred_transport::Members) -> Vec<u16> {
    let mut ports: Vec<u16> = members.values().map(|a| a.port()).collect();
    ports.sort();
    ports
}

//! Who is up: a heartbeat map replicated by the core itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use repred::{Reduce, SourceId};
use serde::{Deserialize, Serialize};

/// One node's latest heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// Where the node accepts connections.
    pub addr: SocketAddr,
    /// The node's wall clock when it wrote this, in milliseconds.
    pub seen_ms: u64,
    /// The node said goodbye: it is down from this beat on (until a later
    /// one says otherwise).
    pub left: bool,
}

impl Beat {
    /// The total order beats merge by: later wins; at the same millisecond a
    /// goodbye wins; the address breaks the last tie so every replica picks
    /// the same beat.
    fn rank(&self) -> (u64, bool, SocketAddr) {
        (self.seen_ms, self.left, self.addr)
    }
}

/// The live members: node id -> address, this node included.
pub type Members = BTreeMap<SourceId, SocketAddr>;

/// node -> latest heartbeat, merged per node by the larger beat: a join, so
/// the core replicates it like any other state.
///
/// Entries of nodes that went away stay (a grow-only map): dropping one
/// would need a tombstone to stop a peer from bringing it back, and a beat
/// is a few dozen bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeats(pub BTreeMap<SourceId, Beat>);

impl Heartbeats {
    /// The nodes whose latest beat is at most `down_after_ms` old at `now_ms`
    /// and is not a goodbye.
    ///
    /// Ages are judged by wall clocks, as in the JavaScript original: nodes
    /// on different machines need clocks within a fraction of the timeout.
    pub fn live(&self, now_ms: u64, down_after_ms: u64) -> Members {
        self.0
            .iter()
            .filter(|(_, b)| !b.left && now_ms.saturating_sub(b.seen_ms) <= down_after_ms)
            .map(|(id, b)| (*id, b.addr))
            .collect()
    }
}

impl Reduce for Heartbeats {
    type Update = BTreeMap<SourceId, Beat>;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        let mut changed = BTreeMap::new();
        for (id, beat) in update {
            let newer = self.0.get(&id).is_none_or(|old| beat.rank() > old.rank());
            if newer {
                self.0.insert(id, beat);
                changed.insert(id, beat);
            }
        }
        (!changed.is_empty()).then_some(changed)
    }

    fn snapshot(&self) -> Self::Update {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(port: u16, seen_ms: u64, left: bool) -> Beat {
        Beat { addr: SocketAddr::from(([127, 0, 0, 1], port)), seen_ms, left }
    }

    #[test]
    fn merge_is_order_free_and_idempotent() {
        let a = SourceId::new("a").unwrap();
        let b = SourceId::new("b").unwrap();
        let updates = [
            BTreeMap::from([(a, beat(1, 10, false))]),
            BTreeMap::from([(a, beat(1, 12, false)), (b, beat(2, 5, false))]),
            BTreeMap::from([(a, beat(1, 12, true))]),
            BTreeMap::from([(b, beat(2, 4, false))]),
        ];
        let mut forward = Heartbeats::default();
        updates.iter().cloned().for_each(|u| drop(forward.reduce(u)));
        let mut backward = Heartbeats::default();
        updates.iter().rev().cloned().for_each(|u| drop(backward.reduce(u)));
        assert_eq!(forward, backward);
        assert_eq!(forward.0[&a], beat(1, 12, true), "a goodbye wins its millisecond");
        assert_eq!(forward.reduce(updates[1].clone()), None, "nothing new");
    }

    #[test]
    fn live_drops_old_beats_and_goodbyes() {
        let mut h = Heartbeats::default();
        let [a, b, c] = ["a", "b", "c"].map(|n| SourceId::new(n).unwrap());
        h.reduce(BTreeMap::from([
            (a, beat(1, 1_000, false)),
            (b, beat(2, 400, false)),
            (c, beat(3, 1_000, true)),
        ]));
        assert_eq!(h.live(1_100, 500).keys().copied().collect::<Vec<_>>(), vec![a]);
    }
}

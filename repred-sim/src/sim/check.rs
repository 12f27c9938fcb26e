//! What a run observed and whether it converged: failure detections,
//! membership and objects.

use std::collections::{BTreeMap, BTreeSet};

use repred::{Reduce, Replica, SourceId};
use repred_node::{LiveDigest, NodeEvent};

use super::Sim;
use crate::{NodeIx, ObjectId};

/// What a run observed of failure detection.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Detections {
    /// Per crashed node, how long after its crash each live node marked it
    /// down, in milliseconds.
    pub latencies: BTreeMap<SourceId, Vec<u64>>,
    /// Members marked down while they were up (false positives).
    pub false_downs: u64,
}

impl<T: Reduce> Sim<T> {
    pub(super) fn observe(&mut self, node: NodeIx, event: NodeEvent<NodeIx>) {
        if matches!(event, NodeEvent::MemberUp { .. } | NodeEvent::MemberDown { .. }) {
            self.nodes[node as usize].membership_events += 1;
        }
        if let NodeEvent::MemberDown { id, .. } = event {
            match self.crashed_at.get(&id) {
                Some(&at) => {
                    let latency = self.now - at;
                    self.detections.latencies.entry(id).or_default().push(latency);
                }
                None => {
                    // Down while up: a false positive, unless it left.
                    let up = self.nodes.iter().any(|n| n.id == id && n.up && !n.core.has_left());
                    if up && self.nodes[node as usize].up {
                        self.detections.false_downs += 1;
                    }
                }
            }
        }
    }

    /// Whether every node that is up sees exactly the nodes that are up as
    /// its live members; what differs if not.
    pub fn membership_converged(&self) -> Result<(), String> {
        let up: BTreeSet<SourceId> = self.nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
        // Each core keeps a count and fingerprint of its live members: equal
        // to those of the nodes up, it sees them (but for a 64-bit
        // collision). O(N) for the cluster where comparing member lists is
        // O(N^2): at 10,000 nodes, milliseconds against most of a minute.
        let expected = LiveDigest::of(up.iter().copied());
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.up || n.core.live_digest() == expected {
                continue;
            }
            let live: BTreeSet<SourceId> = n.core.live().into_keys().collect();
            if live != up {
                let missing: Vec<&SourceId> = up.difference(&live).collect();
                let extra: Vec<&SourceId> = live.difference(&up).collect();
                let state = |id: &SourceId| {
                    n.core.members().into_iter().find(|m| m.id == *id).map(|m| m.state)
                };
                let first = missing.first().or(extra.first()).map(|id| (**id, state(id)));
                return Err(format!(
                    "seed {}: node {i} sees {} live ({} missing, {} not up; first {first:?}) of {}",
                    self.config.seed,
                    live.len(),
                    missing.len(),
                    extra.len(),
                    up.len()
                ));
            }
        }
        Ok(())
    }

    /// Whether every up node that holds `object` has the same clock and
    /// the same state as the others; what differs if not.
    pub fn objects_converged(&self, object: ObjectId) -> Result<(), String>
    where
        T: PartialEq,
    {
        let mut first: Option<(usize, &Replica<T>)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.up {
                continue;
            }
            let Some(r) = n.replica(object) else { continue };
            match first {
                None => first = Some((i, r)),
                Some((j, f)) => {
                    if f.clock() != r.clock() {
                        return Err(format!(
                            "seed {}: object {object}: clocks of nodes {j} and {i} differ ({} and {} sources)",
                            self.config.seed,
                            f.clock().len(),
                            r.clock().len()
                        ));
                    }
                    if f.state() != r.state() {
                        return Err(format!(
                            "seed {}: object {object}: states of nodes {j} and {i} differ",
                            self.config.seed
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

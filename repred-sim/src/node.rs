//! One simulated node: the node core and the replicas it holds.

use std::collections::{BTreeMap, BTreeSet};

use repred::{Reduce, Replica, SourceId, StreamId};
use repred_node::{ConnId, NodeCore};

use crate::{NodeIx, ObjectId};

/// Bytes a node put on the simulated wire, overheads included (see
/// [`SimConfig`](crate::SimConfig)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Membership datagrams sent.
    pub datagrams: u64,
    /// Their bytes on the wire.
    pub datagram_bytes: u64,
    /// Stream bytes sent (replicas' frames), packet overhead included.
    pub stream_bytes: u64,
    /// Stream bytes received.
    pub stream_bytes_received: u64,
    /// Of the stream bytes sent, the node cores' control messages (view
    /// repairs), overhead included.
    pub control_bytes: u64,
}

impl Traffic {
    /// Everything sent, in bytes.
    pub fn sent(&self) -> u64 {
        self.datagram_bytes + self.stream_bytes
    }
}

/// A replica of one object on one node, and its streams by connection.
pub(crate) struct Object<T: Reduce> {
    pub(crate) replica: Replica<T>,
    /// Simulated connection -> the replica's stream on it.
    pub(crate) streams: BTreeMap<u64, StreamId>,
    pub(crate) timer_at: Option<u64>,
    /// The peers it is streamed with (`None`: every peer that holds it),
    /// as the transport's `Peers` ([`Sim::set_peers`](crate::Sim::set_peers)).
    pub(crate) peers: Option<BTreeSet<NodeIx>>,
}

impl<T: Reduce> Object<T> {
    pub(crate) fn new(replica: Replica<T>) -> Self {
        Self { replica, streams: BTreeMap::new(), timer_at: None, peers: None }
    }

    /// Whether it may be streamed with `peer`.
    pub(crate) fn admits(&self, peer: NodeIx) -> bool {
        self.peers.as_ref().is_none_or(|p| p.contains(&peer))
    }

    /// Drops every stream without a word, as a crash or a cut does.
    pub(crate) fn abort_all(&mut self) {
        for (_, stream) in std::mem::take(&mut self.streams) {
            self.replica.abort(stream);
        }
        while self.replica.poll_event().is_some() {}
        self.timer_at = None;
    }
}

/// A simulated node.
pub struct SimNode<T: Reduce> {
    pub(crate) id: SourceId,
    pub(crate) up: bool,
    pub(crate) life: u32,
    pub(crate) core: NodeCore<NodeIx>,
    pub(crate) objects: BTreeMap<ObjectId, Object<T>>,
    /// The core's connection ids -> simulated connections.
    pub(crate) conns: BTreeMap<ConnId, u64>,
    pub(crate) next_conn: ConnId,
    pub(crate) timer_at: Option<u64>,
    pub(crate) dirty: BTreeSet<ObjectId>,
    pub(crate) traffic: Traffic,
    pub(crate) group: u32,
    /// Of `conns`, the data links (connections the core does not know).
    pub(crate) links: BTreeSet<ConnId>,
    /// Members its core reported up or down so far.
    pub(crate) membership_events: u64,
}

impl<T: Reduce> SimNode<T> {
    /// The node id (what its certificate would say).
    pub fn id(&self) -> SourceId {
        self.id
    }

    /// Whether it runs (not crashed).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Its node core.
    pub fn core(&self) -> &NodeCore<NodeIx> {
        &self.core
    }

    /// Its replica of `object`, if it holds one.
    pub fn replica(&self, object: ObjectId) -> Option<&Replica<T>> {
        self.objects.get(&object).map(|o| &o.replica)
    }

    /// The objects it holds.
    pub fn objects(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.objects.keys().copied()
    }

    /// What it sent.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// How many connections its node core has (data links not counted).
    pub fn connection_count(&self) -> usize {
        self.conns.len() - self.links.len()
    }

    /// How many data links it has (see [`Sim::link`](crate::Sim::link)).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// How many times its core reported a member up or down: a driver
    /// that follows membership (placement, say) reads the member list
    /// again only when this moved.
    pub fn membership_events(&self) -> u64 {
        self.membership_events
    }
}

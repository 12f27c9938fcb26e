//! Virtual time: events in the order they happen.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::{NodeIx, ObjectId};

/// Something that happens at a moment of virtual time.
#[derive(Debug)]
pub(crate) enum Event {
    /// A membership datagram arrives.
    Datagram { to: NodeIx, bytes: Vec<u8> },
    /// A node's core timers may be due (`life` guards against timers set
    /// in an earlier life of the node).
    NodeTimer { node: NodeIx, life: u32 },
    /// A replica's timers may be due.
    ObjectTimer { node: NodeIx, life: u32, object: ObjectId },
    /// A dial's handshake is done: the connection is up at both ends, or
    /// (when the target is gone or cut off) nothing happens and the dial
    /// times out at the dialer.
    Handshake { from: NodeIx, from_life: u32, to: NodeIx },
    /// A data link's handshake is done (see `Sim::link`): up at both
    /// ends, unknown to the node cores.
    Link { from: NodeIx, from_life: u32, to: NodeIx },
    /// Stream bytes of one object arrive at one end of a connection.
    Bytes { conn: u64, side: usize, object: ObjectId, bytes: Vec<u8> },
    /// A node core's message to its peer on a connection's control stream.
    Control { conn: u64, side: usize, bytes: Vec<u8> },
    /// One end of a connection learns that it is gone.
    Closed { conn: u64, side: usize },
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed: the heap's top is the earliest, ties in scheduling order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events by time; among equal times, in the order they were scheduled,
/// so a run depends on nothing but its seed.
#[derive(Default)]
pub(crate) struct Queue {
    heap: BinaryHeap<Scheduled>,
    seq: u64,
}

impl Queue {
    pub(crate) fn push(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Scheduled { at, seq: self.seq, event });
    }

    /// The next event if it happens no later than `until`.
    pub(crate) fn pop_until(&mut self, until: u64) -> Option<(u64, Event)> {
        if self.heap.peek()?.at > until {
            return None;
        }
        self.heap.pop().map(|s| (s.at, s.event))
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

//! What a replica reports besides its changes.

use crate::{Clock, CloseReason, SourceId, Timestamp};

/// Something that happened to a replica or one of its streams.
///
/// Drain them with [`Replica::poll_event`](crate::Replica::poll_event). Applied
/// changes are not events: read them through a
/// [`Subscription`](crate::Subscription), which cannot grow without bound.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The peer's Hello arrived on `stream`.
    Header {
        /// The stream.
        stream: StreamId,
        /// The peer's source id.
        id: SourceId,
        /// The peer's clock when it said hello.
        clock: Clock,
        /// The peer's application bytes.
        meta: Vec<u8>,
    },
    /// This side finished sending its history on `stream`.
    SyncSent {
        /// The stream.
        stream: StreamId,
    },
    /// The peer finished sending its history on `stream`.
    SyncReceived {
        /// The stream.
        stream: StreamId,
    },
    /// Both directions of `stream` are in sync; from now on it carries
    /// live updates only. Fires once per stream.
    Synced {
        /// The stream.
        stream: StreamId,
    },
    /// `stream` ended; it carries nothing more.
    End {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: EndReason,
    },
    /// A stream ended; this many remain open.
    Unstream(usize),
    /// An update was refused and not applied; the clock did not move.
    Rejected {
        /// The source the update claimed.
        source: SourceId,
        /// The timestamp it claimed.
        ts: Timestamp,
        /// Why it was refused.
        reason: crate::Rejection,
    },
    /// A peer's snapshot was refused: nothing of it was merged, the clock
    /// did not move, and the stream was closed with the reason (so the peer
    /// hears it too). A strict replica behind the history of every peer it
    /// trusts keeps saying this instead of taking in unverified state.
    SnapshotRefused {
        /// The stream.
        stream: StreamId,
        /// The peer that sent it.
        peer: SourceId,
        /// Why.
        reason: crate::SnapshotRefusal,
    },
    /// A peer has collected deletes up to `floor`, above this replica's own
    /// [floor](crate::Replica::floor), and this replica holds state: it may
    /// hold what the peer forgot it deleted (it was away past that point;
    /// or, its clock claiming none of the peers' writes, it holds parts of
    /// a snapshot from a lower floor that was cut midway, which the peer's
    /// snapshot is not to be mixed with, even where its own floor was
    /// raised to the peer's since),
    /// so the stream was closed with [`CloseReason::Stale`], and so will be
    /// every stream to a peer at that floor. Call
    /// [`Replica::rejoin`](crate::Replica::rejoin): the replica starts over
    /// from a peer's snapshot, keeping its own writes since the floor.
    Stale {
        /// The stream.
        stream: StreamId,
        /// The peer.
        peer: SourceId,
        /// The peer's floor.
        floor: Timestamp,
    },
    /// The replica was disposed of; every stream has ended.
    Dispose,
}

/// Why a stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// This side closed it, and told the peer why.
    Local(CloseReason),
    /// The peer closed it, and said why.
    Remote(CloseReason),
    /// It was dropped without a Close frame (a cut link, a lost connection).
    Aborted,
}

/// Names one stream of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub(crate) u64);

//! What a node core tells its driver: commands to carry out and events
//! to report.

use repred::SourceId;

use crate::ConnId;

/// What the driver should do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<A> {
    /// Open a connection to `addr`; `expect` is the node id it should turn
    /// out to be, when known. Report the outcome with
    /// [`NodeCore::handle_connected`](crate::NodeCore::handle_connected) or [`NodeCore::handle_dial_failed`](crate::NodeCore::handle_dial_failed).
    Dial {
        /// Where.
        addr: A,
        /// Who, if known.
        expect: Option<SourceId>,
    },
    /// Close a connection; report it gone with
    /// [`NodeCore::handle_disconnected`](crate::NodeCore::handle_disconnected) as for any other.
    Close {
        /// Which.
        conn: ConnId,
        /// Why.
        reason: CloseWhy,
    },
}

/// Why the node core closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseWhy {
    /// Traded for a connection to another member, so that the graph mixes.
    Rotated,
    /// The peer was declared down.
    PeerDown,
    /// A second connection to the same peer (both dialed at once): the one
    /// dialed by the smaller node id stays, on both sides alike.
    Duplicate,
    /// More connections than [`NodeConfig::max_connections`](crate::NodeConfig::max_connections).
    TooMany,
    /// A connection to this very node.
    ToSelf,
}

/// Something the driver or the user may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent<A> {
    /// A member is up (newly, or again).
    MemberUp {
        /// Its node id.
        id: SourceId,
        /// Where it listens.
        addr: A,
    },
    /// A member was declared down (or left).
    MemberDown {
        /// Its node id.
        id: SourceId,
        /// Where it listened.
        addr: A,
    },
    /// This node is known to at least one other member.
    Joined,
    /// Every member this node knew is down or gone.
    Isolated,
    /// This node was declared down (a partition, a long pause) and rejoined
    /// under a renewed identity.
    Rejoined,
}

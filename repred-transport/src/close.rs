//! Why a connection or stream was closed, as a QUIC application error code.

use repred::PeerMisbehaved;
use repred_node::CloseWhy;

/// The application error codes this transport closes connections (and stops
/// streams) with. The code is the typed reason; the close's reason bytes
/// carry the same in words for a person reading logs.
///
/// Codes below `0x10` are orderly; `0x10..0x20` mirror the core's
/// [`PeerMisbehaved`] (a frame that broke the protocol: nothing of it was
/// applied); `0x20..` are transport-level violations. `0x22` was a
/// membership Hello under another node's id, before membership moved to
/// signed datagrams; it stays unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// The node is shutting down.
    Shutdown,
    /// The node core rotated this connection away to try another member.
    Rotated,
    /// A test hook refused this peer (a simulated partition).
    Partitioned,
    /// Too many connections in all, or from this peer.
    TooManyConnections,
    /// A second connection between the same two nodes (both dialed at
    /// once): both keep the one the smaller node id dialed.
    Duplicate,
    /// Membership declared the peer down (or it left).
    PeerDown,
    /// A connection to this very node.
    ToSelf,
    /// The node core let the connection go for a reason this table does
    /// not name yet.
    Released,
    /// A frame longer than the receiver's limit.
    FrameTooLarge,
    /// A frame with a zero length.
    EmptyFrame,
    /// A frame kind the receiver does not know.
    UnknownFrame,
    /// A frame body that does not decode.
    Malformed,
    /// A Hello with another protocol version.
    UnknownVersion,
    /// A frame before Hello.
    BeforeHello,
    /// A second Hello.
    DuplicateHello,
    /// A second Sync.
    DuplicateSync,
    /// A Hello with the reserved source id.
    InvalidSource,
    /// A snapshot too far in the future.
    ClockSkew,
    /// Another protocol violation the core reported.
    Misbehaved,
    /// A stream did not start with a valid object name.
    BadPreamble,
    /// A second stream for one object on one connection (or a second
    /// control stream).
    DuplicateStream,
    /// A node core's message on the control stream that is too long or
    /// does not decode.
    BadMessage,
}

impl CloseCode {
    const TABLE: [(CloseCode, u32); 22] = [
        (CloseCode::Shutdown, 0x00),
        (CloseCode::Rotated, 0x01),
        (CloseCode::Partitioned, 0x02),
        (CloseCode::TooManyConnections, 0x03),
        (CloseCode::Duplicate, 0x04),
        (CloseCode::PeerDown, 0x05),
        (CloseCode::ToSelf, 0x06),
        (CloseCode::Released, 0x07),
        (CloseCode::FrameTooLarge, 0x10),
        (CloseCode::EmptyFrame, 0x11),
        (CloseCode::UnknownFrame, 0x12),
        (CloseCode::Malformed, 0x13),
        (CloseCode::UnknownVersion, 0x14),
        (CloseCode::BeforeHello, 0x15),
        (CloseCode::DuplicateHello, 0x16),
        (CloseCode::DuplicateSync, 0x17),
        (CloseCode::InvalidSource, 0x18),
        (CloseCode::ClockSkew, 0x19),
        (CloseCode::Misbehaved, 0x1f),
        (CloseCode::BadPreamble, 0x20),
        (CloseCode::DuplicateStream, 0x21),
        (CloseCode::BadMessage, 0x23),
    ];

    /// The code on the wire.
    pub fn code(self) -> u32 {
        Self::TABLE.iter().find(|(c, _)| *c == self).map_or(0x1f, |(_, n)| *n)
    }

    /// The code as quinn takes it.
    pub fn varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self.code())
    }

    /// The close code a wire code stands for, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::TABLE.iter().find(|(_, n)| u64::from(*n) == code).map(|(c, _)| *c)
    }

    /// Whether this code reports a protocol violation by the peer.
    pub fn is_violation(self) -> bool {
        self.code() >= 0x10
    }
}

impl From<CloseWhy> for CloseCode {
    fn from(why: CloseWhy) -> Self {
        match why {
            CloseWhy::Rotated => CloseCode::Rotated,
            CloseWhy::PeerDown => CloseCode::PeerDown,
            CloseWhy::Duplicate => CloseCode::Duplicate,
            CloseWhy::TooMany => CloseCode::TooManyConnections,
            CloseWhy::ToSelf => CloseCode::ToSelf,
            _ => CloseCode::Released,
        }
    }
}

impl From<&PeerMisbehaved> for CloseCode {
    fn from(e: &PeerMisbehaved) -> Self {
        match e {
            PeerMisbehaved::FrameTooLarge { .. } => CloseCode::FrameTooLarge,
            PeerMisbehaved::EmptyFrame => CloseCode::EmptyFrame,
            PeerMisbehaved::UnknownFrame(_) => CloseCode::UnknownFrame,
            PeerMisbehaved::Malformed { .. } => CloseCode::Malformed,
            PeerMisbehaved::UnknownVersion(_) => CloseCode::UnknownVersion,
            PeerMisbehaved::BeforeHello(_) => CloseCode::BeforeHello,
            PeerMisbehaved::DuplicateHello => CloseCode::DuplicateHello,
            PeerMisbehaved::DuplicateSync => CloseCode::DuplicateSync,
            PeerMisbehaved::InvalidSource => CloseCode::InvalidSource,
            PeerMisbehaved::ClockSkew { .. } => CloseCode::ClockSkew,
            _ => CloseCode::Misbehaved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for (code, n) in CloseCode::TABLE {
            assert!(seen.insert(n), "duplicate wire code {n:#x}");
            assert_eq!(code.code(), n);
            assert_eq!(CloseCode::from_code(u64::from(n)), Some(code));
        }
        assert_eq!(CloseCode::from_code(0x99), None);
        let e = PeerMisbehaved::BeforeHello("Updates".into());
        assert_eq!(CloseCode::from(&e), CloseCode::BeforeHello);
        assert!(CloseCode::BeforeHello.is_violation() && !CloseCode::Rotated.is_violation());
        assert_eq!(CloseCode::from(CloseWhy::Duplicate), CloseCode::Duplicate);
        assert!(!CloseCode::from(CloseWhy::PeerDown).is_violation());
        assert_eq!(CloseCode::from_code(0x22), None, "retired");
    }
}

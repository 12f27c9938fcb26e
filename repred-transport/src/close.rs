//! Why a connection or stream was closed, as a QUIC application error code.

use repred::PeerMisbehaved;

/// The application error codes this transport closes connections (and stops
/// streams) with. The code is the typed reason; the close's reason bytes
/// carry the same in words for a person reading logs.
///
/// Codes below `0x10` are orderly; `0x10..0x20` mirror the core's
/// [`PeerMisbehaved`] (a frame that broke the protocol: nothing of it was
/// applied); `0x20..` are transport-level violations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// The node is shutting down.
    Shutdown,
    /// Gossip rotated this connection away to try another peer.
    Rotated,
    /// A test hook refused this peer (a simulated partition).
    Partitioned,
    /// Too many connections in all, or from this peer.
    TooManyConnections,
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
    /// A second stream for one object on one connection.
    DuplicateStream,
    /// The membership Hello claimed a node id other than the one the peer's
    /// certificate stands for.
    WrongPeerId,
}

impl CloseCode {
    const TABLE: [(CloseCode, u32); 18] = [
        (CloseCode::Shutdown, 0x00),
        (CloseCode::Rotated, 0x01),
        (CloseCode::Partitioned, 0x02),
        (CloseCode::TooManyConnections, 0x03),
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
        (CloseCode::WrongPeerId, 0x22),
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
    }
}

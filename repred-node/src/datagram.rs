//! Membership datagrams: how they are marked and framed on a UDP socket
//! shared with QUIC, and why one is refused.

use repred::SourceId;

/// The first byte of every membership datagram. QUIC packets always set
/// the top two bits of their first byte (RFC 9000's long-header and fixed
/// bits; repred nodes never negotiate greasing them), so a transport can
/// share one UDP socket between QUIC and membership by this byte alone.
pub const DATAGRAM_MARKER: u8 = 0x21;

/// Bytes before the membership protocol's own in a datagram: the marker and
/// the sender's node id.
pub const DATAGRAM_HEADER: usize = 1 + SourceId::LEN;

/// A membership datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram<A> {
    /// Where to.
    pub to: A,
    /// Who should be there, when known: the driver may check the receiver
    /// is that node (a datagram is only as private as its transport).
    pub to_id: Option<SourceId>,
    /// The bytes, starting with [`DATAGRAM_MARKER`] and the sender's id.
    pub bytes: Vec<u8>,
}

/// Why a datagram was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// It does not start with [`DATAGRAM_MARKER`] and a sender id.
    #[error("not a membership datagram")]
    NotMembership,
    /// The membership protocol could not decode it.
    #[error("malformed membership datagram: {0}")]
    Malformed(String),
    /// Its membership header names another sender than its envelope: a
    /// node speaking in another's name.
    #[error("the datagram claims to come from {claimed:?} but was sent by {sender:?}")]
    WrongSender {
        /// Who the membership header claims.
        claimed: Option<SourceId>,
        /// Who sent it.
        sender: SourceId,
    },
    /// The membership protocol refused it.
    #[error("membership refused the datagram: {0}")]
    Refused(String),
}

/// The sender id in a membership datagram's envelope, if it is one.
pub fn sender_of(bytes: &[u8]) -> Option<SourceId> {
    if bytes.len() < DATAGRAM_HEADER || bytes[0] != DATAGRAM_MARKER {
        return None;
    }
    let mut id = [0u8; SourceId::LEN];
    id.copy_from_slice(&bytes[1..DATAGRAM_HEADER]);
    SourceId::from_bytes(id).ok()
}

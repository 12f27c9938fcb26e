//! Members as a node sees them, and a digest of who is up.

use repred::SourceId;

use crate::sync::Tally;

/// A member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo<A> {
    /// Its node id.
    pub id: SourceId,
    /// Where it listens.
    pub addr: A,
    /// What this node believes of it.
    pub state: MemberState,
}

/// What a node believes of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Someone could not reach it; it has until the suspicion times out to
    /// refute it.
    Suspect,
    /// Declared down (or left).
    Down,
}

/// How many members a node counts as up (itself included) and a
/// fingerprint of which: what two connected nodes compare before they look
/// for a difference. Two nodes with equal digests see the same live members
/// (but for a 64-bit collision); comparing them costs nothing like a pass
/// over the member lists, so a driver can check a large cluster's
/// convergence this way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveDigest {
    /// How many.
    pub members: u32,
    /// Which (a mix of their ids' fingerprints, independent of order).
    pub fingerprint: u64,
}

impl LiveDigest {
    /// The digest of a set of distinct node ids (a node's
    /// [`live`](crate::NodeCore::live) members, say).
    pub fn of(ids: impl IntoIterator<Item = SourceId>) -> Self {
        Self::from_tally(&Tally::of(ids))
    }

    pub(crate) fn from_tally(tally: &Tally) -> Self {
        Self { members: tally.members(), fingerprint: tally.digest() }
    }
}

//! What became of what a peer sent: an update's [`Outcome`] and why
//! it was refused, or why a snapshot was.

use crate::{SourceId, Timestamp, VerifyError};

#[cfg(doc)]
use crate::{Config, Replica};

/// What became of one remote update.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It changed the state; the change is recorded and will be forwarded.
    Applied,
    /// It was new, so the clock advanced, but it changed nothing.
    Unchanged,
    /// It was already seen; nothing happened.
    Old,
    /// It was refused; nothing happened, the clock did not move.
    Rejected(Rejection),
}

impl Outcome {
    /// Whether the update changed the state.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied)
    }
}

/// Why a remote update was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Its timestamp is further ahead of our wall clock than
    /// [`Config::max_skew_millis`]: accepting it would drag every later
    /// timestamp of ours (and its source's) into the future.
    #[error("timestamp is {ahead_millis} ms ahead of this replica (limit {limit_millis} ms)")]
    ClockSkew {
        /// How far ahead.
        ahead_millis: u64,
        /// The limit.
        limit_millis: u64,
    },
    /// Timestamp zero is never issued.
    #[error("timestamp zero is reserved")]
    ZeroTimestamp,
    /// The all-zero source id is reserved.
    #[error("the all-zero source id is reserved")]
    ReservedSource,
    /// The update's signature does not hold (scuttlebutt's `Unverified`).
    #[error("unverified: {0}")]
    Unverified(#[from] crate::VerifyError),
    /// The source is not on [`Config::allowed_sources`].
    #[error("the source is not on this replica's allow-list")]
    NotAllowed,
    /// New to this replica, but older than its collection
    /// [floor](Replica::floor): the deletes it might race with are
    /// forgotten, so taking it could bring back what was deleted. A writer
    /// that was away past the floor gets this for what it wrote before.
    #[error("timestamp is below this replica's collection floor {floor}")]
    BelowFloor {
        /// The floor.
        floor: Timestamp,
    },
}

/// Why a peer's snapshot was not merged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SnapshotRefusal {
    /// A strict replica takes only signed snapshots.
    #[error("the snapshot is not signed, and this replica takes only signed snapshots")]
    Unsigned,
    /// Signed by someone not in [`Config::trust_snapshots_from`].
    #[error("the snapshot is signed by {0}, who is not among this replica's trusted signers")]
    Untrusted(SourceId),
    /// The signature does not hold.
    #[error("the snapshot's signature does not hold: {0}")]
    Unverified(#[from] VerifyError),
    /// The sender's collection floor is below ours: its state may hold
    /// what we forgot was deleted. (Senders wait for their floor to rise
    /// before sending one; only an old or lying peer sends this.)
    #[error(
        "the snapshot comes from below this replica's collection floor {floor} (the sender's is {theirs})"
    )]
    BelowFloor {
        /// Our floor.
        floor: Timestamp,
        /// The sender's.
        theirs: Timestamp,
    },
    /// No byte of the snapshot came for
    /// [`Config::snapshot_stall_millis`]: the sender stopped midway (or
    /// its link did, and the connection has not noticed yet).
    #[error("no byte of the snapshot came for {millis} ms")]
    Stalled {
        /// How long this replica waited.
        millis: u64,
    },
    /// The snapshot came in slower than [`Config::snapshot_min_rate`]:
    /// `bytes` in the `millis` ms since it began.
    #[error(
        "{bytes} bytes of the snapshot came in {millis} ms, slower than this replica's minimum rate"
    )]
    TooSlow {
        /// Bytes received since the snapshot began.
        bytes: u64,
        /// How long since it began.
        millis: u64,
    },
    /// A strict replica's peer whose Hello was not signed as a signer in
    /// [`Config::trust_snapshots_from`] sent a snapshot signed by one: a
    /// trusted signer's snapshot passed on by another peer, whose word on
    /// the floor the state was collected at is not believed (a false one
    /// could bring back what was deleted, or find this replica stale).
    #[error(
        "the snapshot is signed by {signer}, but its sender did not sign its Hello as a trusted signer"
    )]
    UnprovenSender {
        /// Who signed the snapshot.
        signer: SourceId,
    },
}

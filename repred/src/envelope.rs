//! One update as it travels.

use serde::{Deserialize, Serialize};

use crate::{Signature, SourceId, Stamp, Timestamp};

/// A change with its origin: `[change, ts, source]`, as in scuttlebutt.
///
/// The timestamp and source name the update uniquely; a relay forwards the
/// envelope unchanged, so every replica sees the origin's stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<U> {
    /// The change: the part of an update that changed its origin's state.
    pub change: U,
    /// When the origin made it.
    pub ts: Timestamp,
    /// The replica that made it.
    pub source: SourceId,
    /// The origin's signature over `(source, ts, change)`, when signing is on.
    pub signature: Option<Signature>,
}

impl<U> Envelope<U> {
    /// An unsigned envelope.
    pub fn new(source: SourceId, ts: Timestamp, change: U) -> Self {
        Self { change, ts, source, signature: None }
    }

    /// The `(ts, source)` pair that names this update.
    pub fn stamp(&self) -> Stamp {
        Stamp { ts: self.ts, source: self.source }
    }
}

/// An envelope as an Updates frame brings it, until it is recorded: its
/// signature boxed, so that an unsigned one (most are) takes a third of the
/// room in the inbox, and each move of it through decoding and staging
/// copies that much less.
#[derive(Debug)]
pub(crate) struct Received<U> {
    pub(crate) change: U,
    pub(crate) ts: Timestamp,
    pub(crate) source: SourceId,
    pub(crate) signature: Option<Box<Signature>>,
}

impl<U> Received<U> {
    pub(crate) fn stamp(&self) -> Stamp {
        Stamp { ts: self.ts, source: self.source }
    }

    /// The envelope, as it is recorded and relayed.
    pub(crate) fn into_envelope(self) -> Envelope<U> {
        let Self { change, ts, source, signature } = self;
        Envelope { change, ts, source, signature: signature.map(|boxed| *boxed) }
    }
}

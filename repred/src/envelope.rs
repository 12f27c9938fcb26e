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
    ///
    /// Boxed: most envelopes are unsigned, and every record of the history
    /// and every envelope decoded holds one, so an unsigned one takes 8
    /// bytes here rather than the signature's 96, and each move of it,
    /// from a frame through the reduce into the history, copies that much
    /// less. (It travels as the signature itself.)
    pub signature: Option<Box<Signature>>,
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

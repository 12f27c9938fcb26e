//! A snapshot on the wire: sent and taken in parts.
//!
//! A peer too far behind for history gets the state instead, and a state
//! may be gigabytes. So it travels as a begin frame (the sender's clock,
//! read before the first part), parts made one after the other from the
//! state ([`Reduce::snapshot_part`]), each well under the frame limit, and
//! an end frame (how many parts). The receiver merges each part on arrival
//! and takes the clock only with the end: a stream cut mid-snapshot leaves
//! the parts it got merged (a join: harmless, and a restarted snapshot
//! merges them again at no cost) and claims nothing it lacks. Neither end
//! ever holds more than a part.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::frame::{self, Kind, Writer};
use crate::replica::Core;
use crate::{Clock, PeerMisbehaved, Reduce, SessionError, Signature, SnapshotRefusal, SourceId};

/// Parts start this many entries long, then follow the target size.
const FIRST_PART_ENTRIES: usize = 64;

/// A snapshot being sent on a stream.
#[derive(Debug)]
pub(crate) struct Outgoing {
    id: [u8; 32],
    clock: Clock,
    /// Where the next part starts (`None` at the start, or when done).
    cursor: Option<Vec<u8>>,
    index: u64,
    /// Entries per part: adjusted to the target size as parts go.
    entries: usize,
}

impl Outgoing {
    /// Writes the begin frame: the sender's clock now, signed by its
    /// snapshot signer if it has one.
    pub(crate) fn begin<T: Reduce>(
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<Self, SessionError> {
        let clock_bytes = postcard::to_allocvec(&core.clock)?;
        let id = frame::snapshot_id(&clock_bytes);
        let proof = core.snapshot_signer.as_ref().map(|s| s.sign_snapshot(&id));
        let mut w = Writer::begin(out, Kind::SnapshotBegin);
        w.put_raw(&clock_bytes);
        put(w, &proof)?;
        Ok(Self {
            id,
            clock: core.clock.clone(),
            cursor: None,
            index: 0,
            entries: FIRST_PART_ENTRIES,
        })
    }

    /// Writes parts until about `budget` bytes went out or the state is
    /// done (then the end frame too). Returns the clock the snapshot
    /// stands for once it is complete.
    pub(crate) fn write<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
        budget: usize,
    ) -> Result<Option<Clock>, SessionError> {
        let start = out.len();
        let target = core.config.snapshot_part_bytes.max(1);
        loop {
            let (part, next) = core.state.snapshot_part(self.cursor.as_deref(), self.entries);
            let mut w = Writer::begin(out, Kind::SnapshotPart);
            if let Err(e) = w.put(&self.index) {
                w.abandon();
                return Err(e.into());
            }
            let mark = w.body_len();
            if let Err(e) = w.put(&part) {
                w.abandon();
                return Err(e.into());
            }
            let state: [u8; 32] = Sha256::digest(&w.body()[mark..]).into();
            let len = w.body_len() - mark;
            if len + 128 > core.config.max_frame {
                w.abandon();
                return Err(SessionError::FrameTooLarge { len, limit: core.config.max_frame });
            }
            let digest = frame::part_digest(&self.id, self.index, &state);
            let proof = core.snapshot_signer.as_ref().map(|s| s.sign_snapshot(&digest));
            put(w, &proof)?;
            self.index += 1;
            // Aim at the target size: whole parts of whatever entries hold.
            if len < target / 2 {
                self.entries = self.entries.saturating_mul(2);
            } else if len > target && self.entries > 1 {
                self.entries /= 2;
            }
            match next {
                Some(next) => self.cursor = Some(next),
                None => {
                    let digest = frame::end_digest(&self.id, self.index);
                    let proof = core.snapshot_signer.as_ref().map(|s| s.sign_snapshot(&digest));
                    let mut w = Writer::begin(out, Kind::SnapshotEnd);
                    if let Err(e) = w.put(&self.index) {
                        w.abandon();
                        return Err(e.into());
                    }
                    put(w, &proof)?;
                    return Ok(Some(self.clock.clone()));
                }
            }
            if out.len() - start >= budget {
                return Ok(None);
            }
        }
    }

    /// How many parts went out so far.
    pub(crate) fn parts(&self) -> u64 {
        self.index
    }
}

/// Appends `value` and finishes the frame.
fn put<T: Serialize>(mut w: Writer<'_>, value: &T) -> Result<(), SessionError> {
    match w.put(value) {
        Ok(()) => {
            w.finish();
            Ok(())
        }
        Err(e) => {
            w.abandon();
            Err(e.into())
        }
    }
}

/// Why a snapshot frame was not taken: the peer broke the protocol, or this
/// replica does not believe it.
#[derive(Debug)]
pub(crate) enum Refused {
    Misbehaved(PeerMisbehaved),
    Untrusted(SnapshotRefusal),
}

impl From<PeerMisbehaved> for Refused {
    fn from(e: PeerMisbehaved) -> Self {
        Refused::Misbehaved(e)
    }
}

/// A snapshot being received on a stream.
#[derive(Debug)]
pub(crate) struct Incoming {
    id: [u8; 32],
    clock: Clock,
    /// Who signed the begin frame: every part and the end must be signed
    /// by the same key.
    signer: Option<SourceId>,
    next: u64,
}

fn misbehaved(detail: &str) -> Refused {
    Refused::Misbehaved(PeerMisbehaved::Malformed {
        kind: "Snapshot".into(),
        detail: detail.into(),
    })
}

impl Incoming {
    /// A begin frame: the snapshot's clock (within the skew limit) and who
    /// vouches for it, as this replica requires.
    pub(crate) fn begin<T: Reduce>(
        core: &Core<T>,
        now: u64,
        clock: Clock,
        id: [u8; 32],
        proof: Option<&Signature>,
    ) -> Result<Self, Refused> {
        let signer = core.vet_snapshot(&id, proof).map_err(Refused::Untrusted)?;
        let newest = clock.max();
        let limit = now.saturating_add(core.config.max_skew_millis);
        if newest.millis() > limit {
            return Err(PeerMisbehaved::ClockSkew {
                ahead_millis: newest.millis().saturating_sub(now),
                limit_millis: core.config.max_skew_millis,
            }
            .into());
        }
        Ok(Self { id, clock, signer, next: 0 })
    }

    /// Checks a part's place and signature; the caller merges it.
    pub(crate) fn part(
        &mut self,
        index: u64,
        state: &[u8; 32],
        proof: Option<&Signature>,
    ) -> Result<(), Refused> {
        if index != self.next {
            return Err(misbehaved("a snapshot part out of order"));
        }
        self.vouched(&frame::part_digest(&self.id, index, state), proof)?;
        self.next += 1;
        Ok(())
    }

    /// Checks the end; returns the clock the whole snapshot stands for.
    pub(crate) fn end(self, parts: u64, proof: Option<&Signature>) -> Result<Clock, Refused> {
        if parts != self.next {
            return Err(misbehaved("a snapshot ended with parts missing"));
        }
        self.vouched(&frame::end_digest(&self.id, parts), proof)?;
        Ok(self.clock)
    }

    /// A part or end of a signed snapshot must carry the begin's signer's
    /// signature over its digest; of an unsigned one, none is checked.
    fn vouched(&self, digest: &[u8; 32], proof: Option<&Signature>) -> Result<(), Refused> {
        let Some(signer) = self.signer else { return Ok(()) };
        let proof = proof.ok_or(Refused::Untrusted(SnapshotRefusal::Unsigned))?;
        match proof.verify_snapshot(digest) {
            Ok(who) if who == signer => Ok(()),
            Ok(who) => Err(Refused::Untrusted(SnapshotRefusal::Untrusted(who))),
            Err(e) => Err(Refused::Untrusted(SnapshotRefusal::Unverified(e))),
        }
    }
}

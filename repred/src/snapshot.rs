//! A snapshot on the wire: sent and taken in parts.
//!
//! A peer too far behind for history gets the state instead, and a state
//! may be gigabytes, its clock a million sources. So it travels as a begin
//! frame (the size and digest of the sender's clock, read before the first
//! part), the clock in chunks, parts made one after the other from the
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
use crate::{
    Clock, PeerMisbehaved, Reduce, SessionError, Signature, SnapshotRefusal, SourceId, Timestamp,
};

/// Parts start this many entries long, then follow the target size.
const FIRST_PART_ENTRIES: usize = 64;

/// Histories longer than this are sampled, not walked, to judge the
/// cheaper path.
const SAMPLED_HISTORY: u64 = 16_384;
/// How many records of such a history are looked at.
const SAMPLES: u64 = 1_024;

/// Whether a peer that has `known`, with collection floor `floor`, lacks
/// so much more history than the state holds that a snapshot is the
/// cheaper way to bring it up (the state's entries, however many updates
/// made them). Only for types that say how many entries a snapshot holds.
///
/// Only where the peer would take the snapshot: one from above its floor
/// is refused by a peer that holds anything, which is then stale
/// (`Stream::vet_floor`), where the history it lacks, which carries the
/// deletes, would have brought it up and let it take our floor. So a peer
/// with state and a lower floor than ours gets history, however long.
pub(crate) fn is_cheaper<T: Reduce>(core: &Core<T>, known: &Clock, floor: Timestamp) -> bool {
    if floor < core.floor && !known.is_empty() {
        return false;
    }
    let Some(entries) = core.state.entries_hint() else { return false };
    let enough = entries.saturating_mul(2).max(1_024);
    let (first, end) = (core.history.first_seq(), core.history.end_seq());
    // The peer cannot lack more than the history holds.
    if end - first <= enough {
        return false;
    }
    // A long history is sampled at evenly spaced records rather than
    // walked: counting the 200,001 lacking records (of 216 bytes each) that
    // tell a fresh peer of the catch-up bench's source to take a snapshot
    // took ~6 ms, several times raw quinn's time to move the 7.6 MB
    // snapshot. A wrong guess only picks the dearer of two paths that
    // both bring the peer up: the one case where the snapshot would not
    // (a peer with state below our floor) was ruled out above.
    if end - first > SAMPLED_HISTORY {
        let step = (end - first) / SAMPLES;
        let lacking = (0..SAMPLES)
            .filter_map(|i| core.history.get(first + i * step).and_then(|r| r.stamp()))
            .filter(|stamp| !known.has(stamp.source, stamp.ts))
            .count() as u64;
        return lacking.saturating_mul(step) > enough;
    }
    // Counting what the peer lacks stops as soon as it is clearly more.
    let mut lacking = 0u64;
    for seq in first..end {
        let Some(stamp) = core.history.get(seq).and_then(|r| r.stamp()) else { continue };
        if !known.has(stamp.source, stamp.ts) {
            lacking += 1;
            if lacking > enough {
                return true;
            }
        }
    }
    false
}

/// A snapshot being sent on a stream.
#[derive(Debug)]
pub(crate) struct Outgoing {
    id: [u8; 32],
    clock: Clock,
    /// The last clock entry sent, once chunks have begun.
    clock_sent: Option<SourceId>,
    clock_done: bool,
    /// Where the next part starts (`None` at the start, or when done).
    cursor: Option<Vec<u8>>,
    index: u64,
    /// Entries per part: adjusted to the target size as parts go.
    entries: usize,
    frames: u64,
}

impl Outgoing {
    /// Writes the begin frame: the sender's clock now, signed by its
    /// snapshot signer if it has one.
    pub(crate) fn begin<T: Reduce>(
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<Self, SessionError> {
        let clock = core.clock.clone();
        let entries: Vec<(SourceId, Timestamp)> = clock.iter().collect();
        let mut h = Sha256::new();
        frame::clock_digest_update(&mut h, &entries);
        let digest: [u8; 32] = h.finalize().into();
        let body = postcard::to_allocvec(&(clock.len() as u64, digest))?;
        let id = frame::snapshot_id(&body);
        let proof = core.snapshot_signer.as_ref().map(|s| s.sign_snapshot(&id));
        let mut w = Writer::begin(out, Kind::SnapshotBegin);
        w.put_raw(&body);
        if let Err(e) = w.put(&proof) {
            w.abandon();
            return Err(e.into());
        }
        // How large the state is, so the receiver can make room once, and
        // the floor the state is collected at now (the Hello's may be
        // older: the receiver judges the snapshot by it).
        if let Err(e) = w.put(&(core.state.entries_hint(), core.floor)) {
            w.abandon();
            return Err(e.into());
        }
        w.finish();
        Ok(Self {
            id,
            clock_done: clock.is_empty(),
            clock,
            clock_sent: None,
            cursor: None,
            index: 0,
            entries: FIRST_PART_ENTRIES,
            frames: 0,
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
        // The clock first, in chunks of about a part's size (25 bytes an
        // entry).
        while !self.clock_done {
            let lower = match self.clock_sent {
                Some(last) => std::ops::Bound::Excluded(last),
                None => std::ops::Bound::Unbounded,
            };
            let chunk: Vec<(SourceId, Timestamp)> = self
                .clock
                .range(lower, std::ops::Bound::Unbounded)
                .take((target / 25).max(1))
                .collect();
            self.clock_sent = chunk.last().map(|(s, _)| *s);
            let mut w = Writer::begin(out, Kind::SnapshotClock);
            w.put(&chunk)?;
            w.finish();
            self.frames += 1;
            if self.clock_sent.is_none_or(|last| {
                self.clock
                    .range(std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded)
                    .next()
                    .is_none()
            }) {
                self.clock_done = true;
            }
            if out.len() - start >= budget {
                return Ok(None);
            }
        }
        loop {
            let mut w = Writer::begin(out, Kind::SnapshotPart);
            if let Err(e) = w.put(&self.index) {
                w.abandon();
                return Err(e.into());
            }
            let mark = w.body_len();
            // Encoded from the state as it is read, with no part built.
            let (cursor, entries) = (self.cursor.as_deref(), self.entries);
            let next = match w.put_with(|s| core.state.serialize_snapshot_part(cursor, entries, s))
            {
                Ok(next) => next,
                Err(e) => {
                    w.abandon();
                    return Err(e.into());
                }
            };
            let len = w.body_len() - mark;
            if len + 128 > core.config.max_frame {
                w.abandon();
                return Err(SessionError::FrameTooLarge { len, limit: core.config.max_frame });
            }
            // Hashed only to be signed.
            let proof = core.snapshot_signer.as_ref().map(|s| {
                let state: [u8; 32] = Sha256::digest(&w.body()[mark..]).into();
                s.sign_snapshot(&frame::part_digest(&self.id, self.index, &state))
            });
            put(w, &proof)?;
            self.index += 1;
            self.frames += 1;
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
                    self.frames += 1;
                    return Ok(Some(std::mem::take(&mut self.clock)));
                }
            }
            if out.len() - start >= budget {
                return Ok(None);
            }
        }
    }

    /// How many frames went out so far (clock chunks, parts, the end).
    pub(crate) fn frames(&self) -> u64 {
        self.frames
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
    /// The peer's floor is above ours and we hold state (`Event::Stale`).
    Stale(Timestamp),
    /// As `Stale`, but the peer chose the snapshot against a clock of
    /// ours that another snapshot has left behind, or another from another
    /// floor is coming in: not proof that we are stale, so the stream
    /// closes (as stale) without saying we are.
    Outdated(Timestamp),
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
    /// The clock as its chunks come, and what the begin said of it.
    clock: Clock,
    sources: u64,
    received: u64,
    digest: [u8; 32],
    hasher: Sha256,
    /// Who signed the begin frame: every part and the end must be signed
    /// by the same key.
    signer: Option<SourceId>,
    next: u64,
    /// The sender's size hint, until the first part is taken.
    entries: Option<u64>,
}

fn misbehaved(detail: &str) -> Refused {
    Refused::Misbehaved(PeerMisbehaved::Malformed {
        kind: "Snapshot".into(),
        detail: detail.into(),
    })
}

impl Incoming {
    /// A begin frame: who vouches for the snapshot, as this replica
    /// requires, and what its clock will be.
    pub(crate) fn begin<T: Reduce>(
        core: &Core<T>,
        sources: u64,
        digest: [u8; 32],
        id: [u8; 32],
        proof: Option<&Signature>,
        entries: Option<u64>,
    ) -> Result<Self, Refused> {
        let signer = core.vet_snapshot(&id, proof).map_err(Refused::Untrusted)?;
        let limit = core.config.max_snapshot_sources;
        if sources > limit {
            return Err(PeerMisbehaved::SnapshotTooManySources { sources, limit }.into());
        }
        Ok(Self {
            id,
            clock: Clock::new(),
            sources,
            received: 0,
            digest,
            hasher: Sha256::new(),
            signer,
            next: 0,
            entries,
        })
    }

    /// A chunk of the clock: entries in source order, no more than the
    /// begin announced, their digest what it said once all are in, none
    /// further ahead than the skew limit.
    pub(crate) fn clock_chunk(
        &mut self,
        now: u64,
        max_skew: u64,
        entries: Vec<(SourceId, Timestamp)>,
    ) -> Result<(), Refused> {
        if self.received.saturating_add(entries.len() as u64) > self.sources {
            return Err(misbehaved("more clock entries than the snapshot announced"));
        }
        let limit = now.saturating_add(max_skew);
        for &(source, ts) in &entries {
            if ts.millis() > limit {
                return Err(PeerMisbehaved::ClockSkew {
                    ahead_millis: ts.millis().saturating_sub(now),
                    limit_millis: max_skew,
                }
                .into());
            }
            if !source.is_valid() || self.clock.get(source) != Timestamp::ZERO {
                return Err(misbehaved("a snapshot clock with a reserved or repeated source"));
            }
            self.clock.observe(source, ts);
        }
        frame::clock_digest_update(&mut self.hasher, &entries);
        self.received += entries.len() as u64;
        if self.received == self.sources {
            let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
            if digest != self.digest {
                return Err(misbehaved("the snapshot's clock does not match its digest"));
            }
        }
        Ok(())
    }

    fn clock_complete(&self) -> bool {
        self.received == self.sources
    }

    /// Checks a part's place and signature; the caller merges it.
    pub(crate) fn part(
        &mut self,
        index: u64,
        state: &[u8; 32],
        proof: Option<&Signature>,
    ) -> Result<(), Refused> {
        if !self.clock_complete() {
            return Err(misbehaved("a snapshot part before its whole clock"));
        }
        if index != self.next {
            return Err(misbehaved("a snapshot part out of order"));
        }
        self.vouched(&frame::part_digest(&self.id, index, state), proof)?;
        self.next += 1;
        Ok(())
    }

    /// The sender's size hint, once: after the first part was taken.
    pub(crate) fn take_size_hint(&mut self) -> Option<u64> {
        self.entries.take()
    }

    /// Checks the end; returns the clock the whole snapshot stands for.
    pub(crate) fn end(self, parts: u64, proof: Option<&Signature>) -> Result<Clock, Refused> {
        if !self.clock_complete() || parts != self.next {
            return Err(misbehaved("a snapshot ended with parts missing"));
        }
        self.vouched(&frame::end_digest(&self.id, parts), proof)?;
        Ok(self.clock)
    }

    /// Who signed the snapshot, if anyone did.
    pub(crate) fn signer(&self) -> Option<SourceId> {
        self.signer
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

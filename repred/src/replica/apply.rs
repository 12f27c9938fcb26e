//! Taking in a peer's updates: the checks, the clock, the reduce and
//! the record, one by one or a frame's staged at once.

use super::{Core, Replica};
use crate::history::Entry;
use crate::signing::{ChangeDigest, change_digest};
use crate::source_table::SourceSlot;
use crate::{
    Clock, Envelope, Event, Outcome, Proof, Reduce, Rejection, SourceId, Stamp, Timestamp,
    VerifyError,
};

#[cfg(doc)]
use crate::source_table::SourceTable;

/// An envelope past its checks, the clock moved, awaiting its stamps and
/// its reduce.
struct Admitted<U> {
    stamp: Stamp,
    /// Its source's clock entry before it: what the clock goes back to if
    /// its reduce never returns.
    was: Timestamp,
    /// The envelope as it came, recorded and relayed as it came (see
    /// [`Core::record`]).
    envelope: Envelope<U>,
}

/// An envelope of the inbox past its checks, awaiting its reduce.
pub(crate) struct Staged<U> {
    /// Where it is in the inbox.
    index: usize,
    /// The stamped change, then what its reduce returned.
    change: Option<U>,
    /// Its source's clock entry before it (see [`Admitted`]).
    was: Timestamp,
}

/// The most envelopes the inbox and the staged list keep room for between
/// frames: a frame of default size holds a few thousand; one a peer made
/// as large as the frame limit allows does not pin its size for ever.
pub(crate) const KEEP_ENVELOPES: usize = 16_384;

/// A new envelope's change stamped for its reduce; leaves the envelope's
/// `change` as it will be recorded and relayed. The user's `Clone`,
/// `stamp` and `unstamp` run here.
fn prepare<T: Reduce>(stamp: Stamp, change: &mut T::Update, signed: bool) -> T::Update {
    let mut stamped = change.clone();
    T::stamp(&mut stamped, stamp);
    if !signed {
        // Stamps equal to the envelope's travel implicit. (A signed
        // change is relayed as its origin signed it.)
        T::unstamp(change, stamp);
    }
    stamped
}

/// Undoes an admitted update's clock raise unless forgotten once its
/// reduce returned: a user's `stamp`, `Clone` or `reduce` that panics (and
/// a replica used after the panic was caught) must not leave the clock
/// claiming an update the state never took, for nobody would send it
/// again.
struct SetBack<'a> {
    clock: &'a mut Clock,
    stamp: Stamp,
    was: Timestamp,
}

impl Drop for SetBack<'_> {
    fn drop(&mut self) {
        self.clock.set_back(self.stamp.source, self.was);
    }
}

impl<T: Reduce> Core<T> {
    pub(crate) fn check(&self, now: u64, source: SourceId, ts: Timestamp) -> Result<(), Rejection> {
        self.check_stamp(
            now,
            source.is_valid(),
            || self.allows(source),
            ts,
            || self.clock.get(source),
        )
    }

    /// The checks of [`check`](Core::check), given what depends on the
    /// source alone (whether it is valid, whether the allow-list lets it
    /// in) and its clock entry, each asked for only when needed.
    fn check_stamp(
        &self,
        now: u64,
        valid: bool,
        allowed: impl FnOnce() -> bool,
        ts: Timestamp,
        seen: impl FnOnce() -> Timestamp,
    ) -> Result<(), Rejection> {
        if !valid {
            return Err(Rejection::ReservedSource);
        }
        if ts == Timestamp::ZERO {
            return Err(Rejection::ZeroTimestamp);
        }
        if !allowed() {
            return Err(Rejection::NotAllowed);
        }
        if ts < self.floor && ts > seen() {
            return Err(Rejection::BelowFloor { floor: self.floor });
        }
        self.check_skew(now, ts)
    }

    /// Whether the allow-list, if any, lets `source`'s updates in.
    fn allows(&self, source: SourceId) -> bool {
        self.config
            .allowed_sources
            .as_ref()
            .is_none_or(|allowed| source == self.id || allowed.contains(&source))
    }

    /// `source`'s entries for a frame's [`SourceTable`]: our clock's, and
    /// the stream's `known` (what its peer has).
    pub(crate) fn source_slot(&self, source: SourceId, known: &Clock) -> SourceSlot {
        let (valid, allowed) = (source.is_valid(), self.allows(source));
        SourceSlot::new(source, self.clock.get(source), known.get(source), valid, allowed)
    }

    /// Checks an envelope's signature, if it has one or one is required;
    /// returns the digest of its change when it is signed.
    fn verify(
        &self,
        Stamp { source, ts }: Stamp,
        change: &T::Update,
        signature: Option<&crate::Signature>,
    ) -> Result<Option<ChangeDigest>, Rejection> {
        match signature {
            None if self.config.is_strict() => Err(VerifyError::Unsigned.into()),
            None => Ok(None),
            Some(sig) => {
                // A change that does not re-encode cannot have been signed.
                let bytes = postcard::to_allocvec(change)
                    .map_err(|_| Rejection::Unverified(VerifyError::BadSignature))?;
                let digest = change_digest(&bytes);
                sig.verify_digest(source, ts, &digest)?;
                Ok(Some(digest))
            }
        }
    }

    fn reject(&mut self, source: SourceId, ts: Timestamp, reason: Rejection) -> Outcome {
        self.stats.rejected += 1;
        self.emit(Event::Rejected { source, ts, reason: reason.clone() });
        Outcome::Rejected(reason)
    }

    pub(crate) fn check_skew(&self, now: u64, ts: Timestamp) -> Result<(), Rejection> {
        let limit = now.saturating_add(self.config.max_skew_millis);
        if ts.millis() > limit {
            return Err(Rejection::ClockSkew {
                ahead_millis: ts.millis() - now,
                limit_millis: self.config.max_skew_millis,
            });
        }
        Ok(())
    }

    pub(crate) fn apply(&mut self, now: u64, envelope: Envelope<T::Update>) -> Outcome {
        match self.admit(now, envelope) {
            Ok(Admitted { stamp, was, mut envelope }) => {
                let unwinding = SetBack { clock: &mut self.clock, stamp, was };
                let signed = envelope.signature.is_some();
                let change = prepare::<T>(stamp, &mut envelope.change, signed);
                let mut change = self.state.reduce(change);
                std::mem::forget(unwinding);
                // The state took it: it is recorded even if `unstamp`
                // panics (see `apply_staged`).
                let unstamping = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if let Some(change) = &mut change {
                        T::unstamp(change, stamp);
                    }
                }));
                let outcome = self.record(envelope, change);
                if let Err(panic) = unstamping {
                    std::panic::resume_unwind(panic);
                }
                outcome
            }
            Err(outcome) => outcome,
        }
    }

    /// Takes the envelope at `index` of the inbox up to its reduce, as
    /// [`apply`](Core::apply) would, with its source's clock entry from
    /// `slot` (see [`SourceTable`]), and keeps it for
    /// [`apply_staged`](Core::apply_staged); `Err` is the outcome of one
    /// that goes no further (old or refused). The envelope stays in the
    /// inbox, its stamps left implicit as it will travel.
    ///
    /// Staging a frame's envelopes and then reducing them back to back gives
    /// the same clock, state, history and counters as applying each in turn,
    /// but the reduces run in a tight loop, so that a large state's cache
    /// misses on one update overlap with the next instead of waiting behind
    /// the checks and records in between.
    pub(crate) fn stage(
        &mut self,
        now: u64,
        index: usize,
        envelope: &mut Envelope<T::Update>,
        slot: &mut SourceSlot,
    ) -> Result<(), Outcome> {
        let (source, ts) = (envelope.source, envelope.ts);
        debug_assert_eq!(slot.source, source);
        if let Err(reason) = self.check_stamp(now, slot.valid, || slot.allowed, ts, || slot.seen) {
            return Err(self.reject(source, ts, reason));
        }
        if ts <= slot.seen {
            self.stats.old += 1;
            return Err(Outcome::Old);
        }
        // Verified only once known to be new: duplicates cost no crypto.
        let signature = envelope.signature.as_deref();
        if (signature.is_some() || self.config.is_strict())
            && let Err(reason) = self.verify(envelope.stamp(), &envelope.change, signature)
        {
            return Err(self.reject(source, ts, reason));
        }
        let was = std::mem::replace(&mut slot.seen, ts);
        let signed = envelope.signature.is_some();
        let change = self.take_in(envelope.stamp(), &mut envelope.change, signed);
        self.staged.push(Staged { index, change: Some(change), was });
        Ok(())
    }

    /// Reduces and records everything staged, in order, and empties the
    /// inbox.
    ///
    /// The clock took every staged stamp before the reduces, so should a
    /// user's `reduce` panic (and the replica be used after the panic is
    /// caught), the updates reduced before it are recorded as usual and
    /// the clock goes back for the rest before the panic goes on: the
    /// replica claims exactly what its state took, and its peers send the
    /// rest again. (The update whose reduce panicked may have left part of
    /// itself in the state: harmless, as reduces are joins, and it will be
    /// reduced again.) Caught once a frame, not a guard per update, the
    /// loops stay as tight as without it.
    ///
    /// What the reduces returned is unstamped before anything is recorded,
    /// also caught once: should the user's `unstamp` panic, every update
    /// reduced is still recorded, those from the one that panicked on
    /// keeping the stamps in their changes (for subscribers; a stamp set
    /// is as good as one filled in, and their envelopes travel as they
    /// came). An update the state took must have its record: one sent
    /// again would change nothing and be recorded as unchanged, which
    /// travels to an eager peer as a bare clock advance.
    pub(crate) fn apply_staged(&mut self) {
        let mut staged = std::mem::take(&mut self.staged);
        let mut reduced = 0;
        let state = &mut self.state;
        let reducing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for entry in &mut staged {
                entry.change = entry.change.take().and_then(|change| state.reduce(change));
                reduced += 1;
            }
        }));
        let mut inbox = std::mem::take(&mut self.inbox);
        if reducing.is_err() {
            self.set_back(&staged[reduced..], &inbox);
            staged.truncate(reduced);
        }
        let unstamping = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for entry in &mut staged {
                if let Some(change) = &mut entry.change
                    && let Some(envelope) = inbox.get(entry.index)
                {
                    T::unstamp(change, envelope.stamp());
                }
            }
        }));
        let mut reduced = staged.drain(..).peekable();
        for (index, envelope) in inbox.drain(..).enumerate() {
            // The old and refused were not staged (and those a panic
            // left unreduced no longer are): they go with the inbox.
            if let Some(Staged { change, .. }) = reduced.next_if(|s| s.index == index) {
                self.record(envelope, change);
            }
        }
        drop(reduced);
        // Keep the allocations for the next frame.
        inbox.shrink_to(KEEP_ENVELOPES);
        staged.shrink_to(KEEP_ENVELOPES);
        self.inbox = inbox;
        self.staged = staged;
        if let Err(panic) = reducing.and(unstamping) {
            std::panic::resume_unwind(panic);
        }
    }

    /// Drops everything staged from the inbox's frame, whose staging a
    /// user's `stamp`, `unstamp`, `Clone` or `Serialize` broke off with a
    /// panic, and gives the clock back for it: left staged, the next frame
    /// would reduce these changes and record them against its own
    /// envelopes (the staged list points into the inbox by index), and the
    /// clock would claim updates nothing reduced. The caller drops the
    /// inbox and the frame's source table, which holds the raise for the
    /// update whose staging panicked.
    pub(crate) fn unstage(&mut self, inbox: &[Envelope<T::Update>]) {
        let staged = std::mem::take(&mut self.staged);
        self.set_back(&staged, inbox);
        self.staged = staged;
        self.staged.clear();
    }

    /// Gives the clock back for staged updates that were not reduced.
    fn set_back(&mut self, unreduced: &[Staged<T::Update>], inbox: &[Envelope<T::Update>]) {
        // A source's updates are staged in rising order: its first one
        // unreduced holds what its clock entry was before them.
        let mut done = std::collections::BTreeSet::new();
        for entry in unreduced {
            if let Some(envelope) = inbox.get(entry.index)
                && done.insert(envelope.source)
            {
                self.clock.set_back(envelope.source, entry.was);
            }
        }
    }

    /// The checks before an envelope's reduce: refused and old ones stop
    /// here; a new one moves the clock and comes back with what it was,
    /// for [`apply`](Core::apply) to stamp and reduce it under a guard
    /// that sets the clock back.
    fn admit(
        &mut self,
        now: u64,
        envelope: Envelope<T::Update>,
    ) -> Result<Admitted<T::Update>, Outcome> {
        let (source, ts) = (envelope.source, envelope.ts);
        if let Err(reason) = self.check(now, source, ts) {
            return Err(self.reject(source, ts, reason));
        }
        let was = if envelope.signature.is_none() && !self.config.is_strict() {
            // Nothing to verify: one clock lookup tells old from new.
            let Some(was) = self.clock.raise(source, ts) else {
                self.stats.old += 1;
                return Err(Outcome::Old);
            };
            was
        } else {
            let was = self.clock.get(source);
            if ts <= was {
                self.stats.old += 1;
                return Err(Outcome::Old);
            }
            // Verified only once known to be new: duplicates cost no crypto.
            if let Err(reason) =
                self.verify(envelope.stamp(), &envelope.change, envelope.signature.as_deref())
            {
                return Err(self.reject(source, ts, reason));
            }
            self.clock.observe(source, ts);
            was
        };
        // As in `take_in`, and before the user's code runs.
        self.last = self.last.max(ts);
        Ok(Admitted { stamp: Stamp { ts, source }, was, envelope })
    }

    /// A new envelope's way in, past its checks and with the clock moved:
    /// returns its change stamped for the reduce, and leaves the envelope's
    /// `change` as it will be recorded and relayed.
    fn take_in(&mut self, stamp: Stamp, change: &mut T::Update, signed: bool) -> T::Update {
        // An update in our own name that we do not remember comes from an
        // earlier life of this id (a restart that lost its store): accept it
        // and stamp everything after it.
        self.last = self.last.max(stamp.ts);
        prepare::<T>(stamp, change, signed)
    }

    /// Records what an admitted envelope's reduce returned, its stamps
    /// equal to the envelope's unset.
    ///
    /// The envelope is kept as it came, not cut down to what it changed
    /// here: a peer may take it from this replica without what cut it down
    /// (a lazy relay announces some sources and pushes others), and the
    /// stamp it takes with it says it holds all of it. Two relays that each
    /// forwarded only what the other's update had not already done would
    /// leave a peer that took one update from each with neither effect,
    /// its clock saying otherwise, for ever. So an update that changed
    /// nothing here travels on whole too ([`Entry::Unchanged`]); what it
    /// did change is kept beside it for subscribers ([`Entry::Relayed`]).
    fn record(&mut self, envelope: Envelope<T::Update>, change: Option<T::Update>) -> Outcome {
        let applied = change.is_some();
        self.history.push(match change {
            Some(change) => Entry::Relayed { envelope, change },
            None => Entry::Unchanged(envelope),
        });
        self.count(applied)
    }

    fn count(&mut self, applied: bool) -> Outcome {
        if applied {
            self.stats.applied += 1;
            Outcome::Applied
        } else {
            self.stats.unchanged += 1;
            Outcome::Unchanged
        }
    }

    /// A peer's word that `stamp` is new to us but changes nothing it sent
    /// before: the clock moves, and the advance travels on. A strict
    /// replica takes nobody's word for it: only a [`Proof`] moves its clock.
    pub(crate) fn advance(&mut self, now: u64, stamp: Stamp) -> Outcome {
        let checked = self.check(now, stamp.source, stamp.ts).and_then(|()| {
            if self.config.is_strict() { Err(VerifyError::Unsigned.into()) } else { Ok(()) }
        });
        if let Err(reason) = checked {
            return self.reject(stamp.source, stamp.ts, reason);
        }
        if !self.clock.observe(stamp.source, stamp.ts) {
            self.stats.old += 1;
            return Outcome::Old;
        }
        self.last = self.last.max(stamp.ts);
        self.stats.unchanged += 1;
        self.history.push(Entry::Advance(stamp));
        Outcome::Unchanged
    }

    /// A signed update that changed nothing for the peer, as its proof: the
    /// clock moves on the origin's signature, and the proof travels on.
    pub(crate) fn prove(&mut self, now: u64, proof: Proof) -> Outcome {
        let Stamp { source, ts } = proof.stamp;
        if let Err(reason) = self.check(now, source, ts) {
            return self.reject(source, ts, reason);
        }
        if self.clock.has(source, ts) {
            self.stats.old += 1;
            return Outcome::Old;
        }
        if let Err(e) = proof.verify() {
            return self.reject(source, ts, e.into());
        }
        self.clock.observe(source, ts);
        self.last = self.last.max(ts);
        self.stats.unchanged += 1;
        self.history.push(Entry::Proven(Box::new(proof)));
        Outcome::Unchanged
    }
}

impl<T: Reduce> Replica<T> {
    /// Applies an update from elsewhere, as if it had arrived on a stream.
    ///
    /// `now` is this replica's wall time, against which forged timestamps
    /// are judged.
    pub fn apply(&mut self, now: u64, envelope: Envelope<T::Update>) -> Outcome {
        self.core.apply(now, envelope)
    }
}

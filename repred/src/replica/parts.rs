//! A peer's snapshot taken in: vetted, merged part by part, and what
//! the parts of one that never ended leave behind.

use super::{Core, Replica};
use crate::history::Entry;
use crate::{Clock, Reduce, SnapshotRefusal, SourceId, Timestamp};

impl<T: Reduce> Core<T> {
    /// Whether the clock claims nothing but our own writes: nothing a
    /// peer sent vouches for what the state holds, and a floor held then
    /// was not taken from what the replica holds (see `Stream::vet_floor`).
    pub(crate) fn claims_only_own(&self) -> bool {
        self.clock.iter().all(|(source, _)| source == self.id)
    }

    /// Whether parts of a cut snapshot from below `floor` are merged here,
    /// counted while the clock claimed none of the peers' writes, and no
    /// snapshot's clock has vouched for them since. Not for a floor up to
    /// the one a rejoin started over below (`fresh_to`): its deletes were
    /// stable before the rejoin, so the parts held them (as `vet_floor`).
    pub(crate) fn holds_parts_below(&self, floor: Timestamp) -> bool {
        self.parts_floor.is_some_and(|f| f < floor) && floor > self.fresh_to
    }

    /// Counts parts from `floor` among those no clock vouches for.
    pub(super) fn count_parts(&mut self, floor: Timestamp) {
        self.parts_floor = Some(self.parts_floor.map_or(floor, |f| f.min(floor)));
    }

    /// A replayed record of what a snapshot brought, with the clock it
    /// stands for: when it `ends` the snapshot, as `finish_snapshot`, a
    /// clock that claims something vouches for the parts merged before
    /// it, the base's too (see `with_cut_parts_floor`).
    pub(super) fn replay_snapshot(&mut self, clock: &Clock, ends: bool) {
        self.clock.merge(clock);
        if ends && !clock.is_empty() {
            self.stale_parts = false;
            self.parts_floor = None;
            self.replayed_end = true;
        }
        self.history.raise_horizon(clock);
        self.last = self.last.max(clock.max());
    }

    /// Merges one part of a peer's snapshot collected at `floor`. While
    /// the clock claims none of the peers' writes, a part that changed the
    /// state counts among those no clock vouches for (`parts_floor`),
    /// until a snapshot ends whose clock does, and its record in the log
    /// is preceded by the floor it holds ([`Entry::Receiving`]), for a
    /// restore to count it alike. (A clock that claims peers' writes came
    /// with what they sent, and the floor with it: a snapshot from that
    /// floor is as safe on top of the parts as on top of the rest, and one
    /// from above finds the replica stale anyway.) The
    /// clock does not move: that waits for the end. `bytes` is the part as
    /// received: what the history counts it for.
    pub(crate) fn receive_part(
        &mut self,
        from: SourceId,
        floor: Timestamp,
        part: T::Update,
        bytes: usize,
    ) {
        let fresh = self.claims_only_own();
        if let Some(change) = self.state.reduce(part) {
            if fresh {
                self.count_parts(floor);
                self.history.push(Entry::Receiving { from, floor });
            }
            self.history.push_merge(Entry::Merge { from, clock: Clock::new(), change }, bytes);
        }
    }

    /// A peer's snapshot is complete: the clock it stands for is ours too.
    pub(crate) fn finish_snapshot(&mut self, from: SourceId, clock: &Clock) {
        self.stats.snapshots += 1;
        // It may have brought back our own writes from below the floor we
        // rejoined under (from a peer that had them): up to its clock's
        // entry for us, which `holds_news_below` weighs as it would a
        // horizon.
        let theirs = clock.get(self.id);
        self.own_back = self.own_back.max(theirs.min(self.fresh_to));
        // What the peer had of ours is back, up to its clock's entry for
        // us. Asking ends once that claims the newest missing write; a
        // peer that had less (one we reached first, say) leaves it to the
        // next. (A peer that took our kept writes claims what it may
        // lack: see the limit on `Replica::rejoin`.)
        self.own_held = self.own_held.max(theirs);
        if theirs >= self.own_missing {
            self.own_missing = Timestamp::ZERO;
        }
        self.clock.merge(clock);
        // Parts of a cut one counted (merged while the clock claimed none
        // of the peers' writes), if any, were from this snapshot's floor
        // or above (see `Stream::vet_floor`): they lack none of the deletes
        // its clock claims, whose effects its state brought. A snapshot
        // whose clock claims nothing (the sender held nothing) vouches for
        // nothing, even where our own writes make our clock claim some.
        if !clock.is_empty() {
            self.parts_floor = None;
            // What a verdict for them stood on is gone.
            self.stale_parts = false;
        }
        self.last = self.last.max(clock.max());
        // We now hold effects of updates we have no history for.
        self.history.raise_horizon(clock);
        self.history.push(Entry::Covered { from, clock: clock.clone() });
    }

    /// Whether a peer's snapshot may be merged: its signature, if any, must
    /// hold; a strict replica also needs it signed by a trusted signer.
    /// Returns who signed it, if anyone.
    pub(crate) fn vet_snapshot(
        &self,
        body_digest: &[u8; 32],
        proof: Option<&crate::Signature>,
    ) -> Result<Option<SourceId>, SnapshotRefusal> {
        let signer = match proof {
            Some(sig) => Some(sig.verify_snapshot(body_digest)?),
            None => None,
        };
        if !self.config.is_strict() {
            return Ok(signer);
        }
        match signer {
            None => Err(SnapshotRefusal::Unsigned),
            Some(signer) if self.config.trust_snapshots_from.contains(&signer) => Ok(Some(signer)),
            Some(signer) => Err(SnapshotRefusal::Untrusted(signer)),
        }
    }
}

impl<T: Reduce> Replica<T> {
    /// Whether a peer's snapshot is being taken in. A stream opened
    /// meanwhile would show its peer the clock of before it: a peer that
    /// could bring this replica up by history sends a snapshot instead, and
    /// one from another collection floor is declined (its stream ends with
    /// [`CloseReason::Stale`](crate::CloseReason::Stale), and this replica
    /// is not stale): a transport opens streams once this is false (the
    /// QUIC node waits for it, within a bound).
    pub fn receiving_snapshot(&self) -> bool {
        !self.core.receiving.is_empty()
    }

    /// Whether this replica's state holds parts of a peer's snapshot that
    /// never ended (its link was cut, or it was refused midway) and its
    /// clock claims none of its peers' writes. Such a replica finds a snapshot from a
    /// collection floor higher than the parts' stale
    /// ([`Event::Stale`](crate::Event::Stale)), even one its own floor
    /// was raised to since. A durable store saves the parts' floor with
    /// such a state ([`cut_parts_floor`](Replica::cut_parts_floor)), so
    /// they come back at the next start as what they are.
    pub fn holds_cut_snapshot(&self) -> bool {
        self.core.parts_floor.is_some() && self.core.claims_only_own()
    }

    /// The lowest collection floor of the snapshot parts this replica
    /// merged while its clock claimed none of its peers' writes, that no
    /// snapshot ending
    /// with a clock has vouched for since (`None`: none). A durable store
    /// saves it with a base state ([`with_cut_parts_floor`](Replica::with_cut_parts_floor)):
    /// the base holds the parts, and nothing else would say what they are.
    pub fn cut_parts_floor(&self) -> Option<Timestamp> {
        self.core.parts_floor
    }

    /// This replica, restored from a base whose state held snapshot parts
    /// from `floor` ([`cut_parts_floor`](Replica::cut_parts_floor) when the
    /// base was saved): for a durable store, right after
    /// [`restore`](Replica::restore). Unless the log replayed since the
    /// base ended a snapshot with a clock, which vouches for them, the
    /// parts count as cut: a snapshot from a higher floor finds the
    /// replica stale rather than bring back what their keys' deletes were.
    pub fn with_cut_parts_floor(mut self, floor: Option<Timestamp>) -> Self {
        if let Some(floor) = floor
            && !self.core.replayed_end
        {
            self.core.count_parts(floor);
        }
        self
    }

    /// The floor of a peer that found this replica stale for the cut
    /// snapshot parts it holds, if that verdict holds: unlike a verdict
    /// for its age, it holds at the replica's own floor too, and nothing
    /// finds it again once the floor rose to it and the clock claims a
    /// peer's write, so a durable store saves it
    /// ([`with_stale_parts_floor`](Replica::with_stale_parts_floor)).
    pub fn stale_parts_floor(&self) -> Option<Timestamp> {
        self.core.stale_parts.then_some(self.core.stale)
    }

    /// This replica found stale at `floor` for the cut snapshot parts it
    /// holds ([`stale_parts_floor`](Replica::stale_parts_floor) when it was
    /// saved): for a durable store, after
    /// [`with_cut_parts_floor`](Replica::with_cut_parts_floor). Ignored if
    /// it holds no such parts (a snapshot since vouched for them).
    pub fn with_stale_parts_floor(mut self, floor: Option<Timestamp>) -> Self {
        if let Some(floor) = floor
            && self.core.parts_floor.is_some()
        {
            self.core.stale = self.core.stale.max(floor);
            self.core.stale_parts = true;
        }
        self
    }
}

//! Collection floors met on a stream: a peer's taken, ours found
//! stale, a snapshot's floor vetted; and a snapshot coming in refused,
//! for its floor, its trust, or for coming too slowly (see `deadline`).

use super::{Flow, Peer, Stream};

use crate::frame::{ClockSummary, Hello};
use crate::replica::Core;
use crate::snapshot::Refused;
use crate::{Clock, CloseReason, Event, PeerMisbehaved, Reduce, StreamId, Timestamp};

impl Stream {
    /// Compares the two sides' collection floors at the peer's Hello.
    ///
    /// A replica below its peer's floor may be stale: away while the peer
    /// forgot deletes it never saw, so it may still hold what they deleted.
    /// It takes the higher floor (collecting too) as soon as it provably
    /// holds everything the peer held at its Hello: at once if its clock
    /// covers the peer's, or else once the peer's history (or snapshot) is
    /// in, with its Sync; but not if it holds updates below the floor that
    /// the peer lacks (see `take_floor`). Until then it refuses nothing
    /// for its age: a replica below the floor still lacks old updates. History carries the
    /// deletes themselves, so it cannot bring anything back; a snapshot
    /// could, so snapshots between different floors are refused instead
    /// (see `vet_floor`).
    ///
    /// A strict replica does all this only with a floor it believes (see
    /// `floor_vouched`): one signed by a signer it trusts with snapshots,
    /// with the clock the signature covers.
    pub(super) fn compare_floors<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        now: u64,
        hello: &Hello,
    ) -> Result<Option<Flow>, PeerMisbehaved> {
        self.peer_floor = hello.floor;
        if hello.floor <= core.floor || !self.floor_vouched {
            return Ok(None);
        }
        // A floor from the future would make us refuse every update to come.
        core.check_skew(now, hello.floor).map_err(|e| PeerMisbehaved::Malformed {
            kind: "Hello".into(),
            detail: format!("collection floor: {e}"),
        })?;
        // The peer holds what our Hello stood for, and we hold nothing
        // more: its floor is ours. (Our clock may have moved since the
        // open, by a write below the floor the peer lacks.)
        if !core.clock.is_empty()
            && hello.clock == self.hello
            && core.clock.digest() == self.hello.hash()
            && !core.holds_parts_below(hello.floor)
        {
            core.raise_floor(hello.floor);
            return Ok(None);
        }
        if let ClockSummary::Full(clock) = &hello.clock
            && core.clock.covers(clock)
        {
            return Ok(self.take_floor(id, core, clock, hello.floor));
        }
        self.catch_floor = Some(hello.floor);
        self.floor_digest = hello.clock.hash();
        Ok(None)
    }

    /// Takes the peer's higher `floor`, given its clock and that we hold
    /// all it held: unless we hold updates below the floor that it lacks
    /// (written where it could not hear, while we were away), which it
    /// refuses ([`Rejection::BelowFloor`](crate::Rejection::BelowFloor)),
    /// or parts of a cut snapshot from below it, which no clock vouches
    /// for (they may hold a key alive whose delete the floor collected,
    /// and a snapshot from the floor would then be merged over them):
    /// then we are stale, and say so. (A peer holding nothing proves
    /// nothing about them: our clock covers its empty one.)
    pub(super) fn take_floor<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        peer: &Clock,
        floor: Timestamp,
    ) -> Option<Flow> {
        let parts = core.holds_parts_below(floor);
        if !core.holds_news_below(peer, floor) && !parts {
            core.raise_floor(floor);
            return None;
        }
        core.stale = core.stale.max(floor);
        // For the parts, the verdict holds at our own floor too, should it
        // rise to this one (see `vet_floor`).
        core.stale_parts |= parts;
        let peer_id = self.peer.map_or(core.id, |p| p.id);
        core.emit(Event::Stale { stream: id, peer: peer_id, floor });
        Some(Flow::Refuse(CloseReason::Stale { floor }))
    }

    /// Whether the peer's snapshot may be merged, by floors: one from below
    /// our floor may hold what we forgot was deleted; one from above, when
    /// we hold state, may miss deletes we never saw, and merging cannot
    /// remove what we hold, so we are stale. Unless we took another
    /// peer's snapshot since our Hello: the peer chose its snapshot against
    /// a clock we have left behind (a rejoined or fresh replica, owed one
    /// by every peer, takes the first to come), so the refusal proves
    /// nothing about us. The stream is closed all the same (merging is as
    /// unsafe), and a new one's Hello tells the peer our clock now: it
    /// sends the history we lack, and at the Sync we take its floor or are
    /// stale (`take_floor`), or it sends a snapshot again, and we are. The
    /// same while another peer's snapshot from another floor is coming in
    /// (a fresh replica's streams all begin with one): whichever begins
    /// second is declined.
    pub(super) fn vet_floor<T: Reduce>(&self, id: StreamId, core: &mut Core<T>) -> Option<Refused> {
        let (ours, theirs) = (core.floor, self.peer_floor);
        if theirs < ours {
            return Some(Refused::Untrusted(crate::SnapshotRefusal::BelowFloor {
                floor: ours,
                theirs,
            }));
        }
        // Another peer's snapshot is coming in, from another floor: the
        // two states may disagree on deletes (one may hold what the other
        // forgot was deleted), and the clocks that would tell are not in
        // yet. Not proof that we are stale either (see below).
        let other = core.receiving.iter().find(|&(&s, &f)| s != id && f != theirs);
        if let Some((_, &floor)) = other {
            return Some(Refused::Outdated(theirs.max(floor)));
        }
        // Parts of a snapshot from a lower floor came here while the clock
        // claimed none of the peers' writes, and it never ended (its link was cut, or it was
        // refused midway): they may hold a key alive whose delete this
        // snapshot's sender collected, and its clock, ours once it is in,
        // would claim the delete, so no peer would ever send it. (Parts
        // from this floor or above held every delete this one forgot:
        // those were stable.) Whatever our own floor, while the clock
        // claims none of the peers' writes still: one raised then forgot
        // deletes, it brought none (`Replica::collect` gives the verdict
        // below at once then, and a peer's Hello does not raise it over
        // them, see `take_floor`). A clock that came with what peers sent
        // since (history) holds its own floor as any, for a snapshot from
        // that floor: raised since, it was stable for this replica too,
        // which then held every delete below it (a higher one taken over
        // the parts on a peer's word would not be: `take_floor` finds the
        // replica stale instead). A start over
        // (`Replica::rejoin`) takes them out, as does a snapshot ending
        // with a clock of the peers' writes (it vouches for what is here).
        // So too once a verdict was given for them (`stale_parts`), whatever
        // the clock claims since: it holds until a rejoin or a vouching end.
        let cut = (core.claims_only_own() || core.stale_parts)
            && core.parts_floor.is_some_and(|f| f < theirs);
        if theirs > ours || cut {
            // Nothing here predates the floor: the snapshot brings us up,
            // and the floor follows with the peer's Sync. Nor since a
            // rejoin below it, whatever came since: a delete below it was
            // stable before the rejoin (a floor held it), so every peer
            // that can still write held it, and whatever snapshot or
            // history came from them since held it too.
            if (core.clock.is_empty() && !cut) || theirs <= core.fresh_to {
                return None;
            }
            let others = core.stats.snapshots - self.snapshots_at_hello - self.snapshots_taken;
            if others > 0 {
                return Some(Refused::Outdated(theirs));
            }
            core.stale = core.stale.max(theirs);
            // For the parts, the verdict holds whatever comes (a write of
            // our own, a floor raised to the verdict's) until a rejoin, or
            // a snapshot that ends with a clock of the peers' writes.
            core.stale_parts |= cut;
            let peer = self.peer.map_or(core.id, |p| p.id);
            core.emit(Event::Stale { stream: id, peer, floor: theirs });
            return Some(Refused::Stale(theirs));
        }
        None
    }

    /// A snapshot frame this replica does not take: a protocol violation
    /// ends the stream as any; an untrusted snapshot is refused (a typed
    /// event) and the stream closed with the reason.
    pub(super) fn refuse_snapshot<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        peer: Option<Peer>,
        refused: Refused,
    ) -> Result<Flow, PeerMisbehaved> {
        core.receiving.remove(&id);
        match refused {
            Refused::Misbehaved(e) => Err(e),
            Refused::Stale(floor) | Refused::Outdated(floor) => {
                self.snapshot_in = None;
                Ok(Flow::Refuse(CloseReason::Stale { floor }))
            }
            Refused::Untrusted(reason) => {
                self.snapshot_in = None;
                core.stats.snapshots_refused += 1;
                core.emit(Event::SnapshotRefused {
                    stream: id,
                    peer: peer.map_or(core.id, |p| p.id),
                    reason: reason.clone(),
                });
                Ok(Flow::Refuse(CloseReason::SnapshotRefused(reason)))
            }
        }
    }
}

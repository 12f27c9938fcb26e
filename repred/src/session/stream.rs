//! A stream's bookkeeping: what the peer holds and claims, the sync,
//! and which stream each source's updates come from.

use super::{Flow, Stream, StreamOpts, StreamStats};
use std::collections::{BTreeMap, BTreeSet};

use crate::frame::ClockSummary;
use crate::replica::Core;
use crate::source_table::SourceTable;
use crate::{Clock, Event, Outcome, PeerMisbehaved, Reduce, SourceId, StreamId, Timestamp};

#[cfg(doc)]
use crate::Replica;

impl Stream {
    pub(super) fn new(opts: StreamOpts, clock: &Clock, floor: Timestamp, snapshots: u64) -> Self {
        let hello = ClockSummary::of(clock);
        let hello_clock = matches!(hello, ClockSummary::Digest { .. }).then(|| clock.clone());
        Self {
            hello,
            catching_up: false,
            hello_floor: floor,
            hello_clock,
            owe_clock: None,
            reconcile: None,
            ranges_out: Vec::new(),
            opts,
            recv: Vec::new(),
            peer: None,
            known: Clock::new(),
            shown: Timestamp::ZERO,
            started: false,
            cursor: 0,
            sync_at: 0,
            horizon_generation: 0,
            need_snapshot: false,
            snapshot_out: None,
            snapshot_out_seen: (0, 0),
            snapshot_in: None,
            snapshot_heard: 0,
            snapshot_begun: 0,
            snapshot_bytes: 0,
            hello_sent: false,
            sync_sent: false,
            sync_received: false,
            sync_frame: false,
            heard: BTreeMap::new(),
            foreign: 0,
            recounted_at: 0,
            introduced: 0,
            close_out: None,
            ended: false,
            done: false,
            eager: BTreeSet::new(),
            backfill: BTreeSet::new(),
            intents: BTreeMap::new(),
            announced: Clock::new(),
            peer_floor: Timestamp::ZERO,
            floor_vouched: false,
            peer_wants_snapshot: false,
            peer_missing: None,
            catch_floor: None,
            floor_digest: [0; 16],
            floor_clock: None,
            snapshot_floor: None,
            refuse: None,
            snapshots_at_hello: snapshots,
            snapshots_taken: 0,
            stats: StreamStats::default(),
        }
    }

    /// Whether updates of ours go to this peer at all.
    pub(super) fn sends_updates(&self) -> bool {
        self.opts.sends && self.peer.is_none_or(|p| p.receives)
    }

    /// Whether this stream announces other sources' updates instead of
    /// pushing them. Only tailing streams that hear the peer do: a stream
    /// that closes after sync, or writes without waiting for the peer, could
    /// not serve a Want.
    pub(super) fn lazy<T: Reduce>(&self, core: &Core<T>) -> bool {
        core.config.lazy_relay && self.opts.tail && self.opts.await_clock
    }

    /// Whether updates of `source` are pushed to this peer even when lazy.
    pub(super) fn pushes(&self, source: SourceId, own: SourceId) -> bool {
        source == own || self.peer.is_some_and(|p| p.id == source) || self.eager.contains(&source)
    }

    pub(super) fn start<T: Reduce>(&mut self, core: &Core<T>) {
        self.started = true;
        self.cursor = core.history.first_seq();
        self.sync_at = core.history.end_seq();
        self.horizon_generation = core.history.horizon_generation();
        self.need_snapshot = self.sends_updates()
            && (!self.known.covers(core.history.horizon()) || self.snapshot_is_cheaper(core));
    }

    /// Whether a snapshot the peer asked for goes out next, before any
    /// more history. Unlike one the peer needs (`need_snapshot`: history
    /// after a gap is of no use to it), a wanted one is only a favour, so
    /// it is not waited for when it cannot go: from a poisoned state, or
    /// to a peer at a higher floor (which would refuse it); history goes
    /// on instead, and the peer asks again on its next stream.
    fn honours_wanted<T: Reduce>(&self, core: &Core<T>) -> bool {
        self.peer_wants_snapshot
            && self.sends_updates()
            && !core.poisoned
            && self.peer_floor <= core.floor
    }

    /// Whether a snapshot is to go out before any more history (none to
    /// a peer that takes nothing: one owed before its Hello said so is
    /// not, or its Sync would wait for ever).
    pub(super) fn owes_snapshot<T: Reduce>(&self, core: &Core<T>) -> bool {
        self.sends_updates() && (self.need_snapshot || self.honours_wanted(core))
    }

    /// Whether a snapshot is the cheaper way to bring the peer up
    /// (`snapshot::is_cheaper`).
    fn snapshot_is_cheaper<T: Reduce>(&self, core: &Core<T>) -> bool {
        crate::snapshot::is_cheaper(core, &self.known, self.peer_floor)
    }

    /// Records that the peer has `(source, ts)`. A source this replica does
    /// not know costs memory for as long as the stream lives, so at most
    /// [`Config::max_unknown_sources`](crate::Config::max_unknown_sources)
    /// of them are kept; past that they are not remembered (which costs at
    /// worst a duplicate send later). Claims are checked against the limit
    /// first ([`Stream::vet_claims`]).
    pub(super) fn note_known<T: Reduce>(
        &mut self,
        core: &Core<T>,
        source: SourceId,
        ts: Timestamp,
    ) {
        if !source.is_valid() || ts == Timestamp::ZERO {
            return;
        }
        if self.is_unknown(core, source) {
            if self.foreign >= core.config.max_unknown_sources {
                self.recount(core);
            }
            if self.foreign >= core.config.max_unknown_sources {
                return;
            }
            self.foreign += 1;
        }
        self.known.observe(source, ts);
    }

    /// One envelope of an Updates frame: staged ([`Core::stage`]) and noted
    /// as the peer's ([`note_known`](Stream::note_known)), on its source's
    /// entries in the frame's table (or on the maps, for a source the
    /// table cannot hold). The table is written back when the frame is done.
    pub(super) fn take_update<T: Reduce>(
        &mut self,
        core: &mut Core<T>,
        sources: &mut SourceTable,
        now: u64,
        index: usize,
        envelope: &mut crate::Envelope<T::Update>,
    ) -> Result<(), Outcome> {
        let (source, ts) = (envelope.source, envelope.ts);
        let known = &self.known;
        let tabled = sources.find(source, || core.source_slot(source, known));
        let mut loose = None;
        let slot = match tabled.and_then(|at| sources.get_mut(at)) {
            Some(slot) => slot,
            None => loose.insert(core.source_slot(source, known)),
        };
        let staged = core.stage(now, index, envelope, slot);
        // As `note_known`: what the peer sent, it has. A source neither
        // side knows is counted against the limit, which reads the maps.
        let noted = slot.valid && ts != Timestamp::ZERO;
        let unknown = noted && slot.seen == Timestamp::ZERO && slot.known == Timestamp::ZERO;
        if noted && !unknown {
            slot.known = slot.known.max(ts);
        }
        match (loose, tabled) {
            (Some(mut slot), _) => slot.write_back(&mut core.clock, &mut self.known),
            (None, Some(at)) => sources.mark(at),
            (None, None) => {}
        }
        if unknown {
            sources.write_back(&mut core.clock, &mut self.known);
            self.note_known(core, source, ts);
            if let Some(at) = tabled {
                sources.reload_known(at, self.known.get(source));
            }
        }
        staged
    }

    fn is_unknown<T: Reduce>(&self, core: &Core<T>, source: SourceId) -> bool {
        core.clock.get(source) == Timestamp::ZERO && self.known.get(source) == Timestamp::ZERO
    }

    /// Recounts the unknown sources in `known` (some may be known by now),
    /// but only once our clock grew enough since the last recount for it to
    /// matter: the cost stays amortized whatever a peer sends.
    fn recount<T: Reduce>(&mut self, core: &Core<T>) {
        let step = (core.config.max_unknown_sources / 2).max(1);
        if self.recounted_at != 0 && core.clock.len() < self.recounted_at + step {
            return;
        }
        self.recounted_at = core.clock.len().max(1);
        self.foreign =
            self.known.iter().filter(|&(s, _)| core.clock.get(s) == Timestamp::ZERO).count();
    }

    /// Claims the peer must back with updates (announcements, advances)
    /// about sources this replica does not know: the whole frame is refused,
    /// before anything of it is taken in, if they would pass the limit.
    pub(super) fn vet_claims<T: Reduce>(
        &mut self,
        core: &Core<T>,
        sources: impl Iterator<Item = SourceId>,
    ) -> Result<(), PeerMisbehaved> {
        let new: BTreeSet<SourceId> =
            sources.filter(|&s| s.is_valid() && self.is_unknown(core, s)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let limit = core.config.max_unknown_sources;
        if self.foreign + new.len() > limit {
            self.recount(core);
        }
        if self.foreign + new.len() > limit || self.introduced + new.len() > limit {
            return Err(self.too_many(core));
        }
        Ok(())
    }

    fn too_many<T: Reduce>(&self, core: &Core<T>) -> PeerMisbehaved {
        PeerMisbehaved::TooManySources { limit: core.config.max_unknown_sources as u64 }
    }

    /// The peer's clock is known: what it has, and so where to start.
    pub(super) fn peer_clock<T: Reduce>(&mut self, core: &Core<T>, clock: &Clock) {
        if self.catch_floor.is_some() && self.floor_clock.is_none() {
            if clock.digest() == self.floor_digest {
                self.floor_clock = Some(clock.clone());
            } else {
                // Not the clock the floor was claimed with (known only in
                // part, or a peer passing on another's signed Hello): no
                // proof either way.
                self.catch_floor = None;
            }
        }
        self.shown = self.shown.max(clock.max());
        for (source, ts) in clock.iter() {
            // Information, not a claim: only the limit's worth is kept.
            self.note_known(core, source, ts);
        }
        if !self.started && self.opts.sends {
            self.start(core);
        } else if self.started && self.sends_updates() && !self.known.covers(core.history.horizon())
        {
            self.need_snapshot = true;
        }
    }

    pub(super) fn mark_sync<T: Reduce>(&mut self, id: StreamId, core: &mut Core<T>, sent: bool) {
        let flag = if sent { &mut self.sync_sent } else { &mut self.sync_received };
        if *flag {
            return;
        }
        *flag = true;
        // A floor taken since (at a snapshot's end) is not judged again.
        if !sent
            && let Some(floor) = self.catch_floor.take().filter(|&f| f > core.floor)
            && let Some(peer) = self.floor_clock.take()
        {
            // We hold all the peer held at its Hello: nothing it forgot
            // can still be here.
            if let Some(Flow::Refuse(reason)) = self.take_floor(id, core, &peer, floor) {
                self.refuse = Some(reason);
            }
        }
        core.emit(if sent {
            Event::SyncSent { stream: id }
        } else {
            Event::SyncReceived { stream: id }
        });
        if self.sync_sent && self.sync_received {
            core.emit(Event::Synced { stream: id });
            self.finish_if_synced(core);
        }
    }

    /// A stream that does not tail is done once both Syncs are in, but
    /// for a snapshot still going out or asked for: a stream that did not
    /// await the peer's clock sent its Sync before the Hello asking for one
    /// came (see `transmit`). (Should the asker's stream not tail either,
    /// the peer's Sync, ahead of the snapshot, ends it first: on a pair of
    /// such streams a request is never met, and the snapshot begun is cut.)
    pub(super) fn finish_if_synced<T: Reduce>(&mut self, core: &Core<T>) {
        if self.sync_sent
            && self.sync_received
            && !self.opts.tail
            && self.snapshot_out.is_none()
            && !self.honours_wanted(core)
        {
            self.done = true;
        }
    }

    /// After the peer's Sync: the sync is received once what the peer
    /// announced before it has arrived (or was refused on arrival, or is
    /// overdue).
    pub(super) fn settle<T: Reduce>(&mut self, id: StreamId, core: &mut Core<T>, now: u64) {
        if !self.sync_frame || self.sync_received {
            return;
        }
        let mut overdue = false;
        self.heard.retain(|&source, &mut (ts, deadline)| {
            let missing = !core.clock.has(source, ts) && !core.refused.has(source, ts);
            overdue |= missing && deadline <= now;
            missing && deadline > now
        });
        if overdue {
            // We may lack what the peer had: not a proof for its floor.
            self.catch_floor = None;
        }
        if self.heard.is_empty() {
            self.mark_sync(id, core, false);
        }
    }
}

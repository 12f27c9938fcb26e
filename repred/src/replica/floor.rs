//! The collection floor: collecting deletes below it, finding a
//! replica stale against a peer's, and starting over.

use std::collections::BTreeMap;

use super::{Core, Replica};
use crate::history::Entry;
use crate::session::Demotions;
use crate::{Clock, Reduce, Stamp, StreamId, Timestamp};

#[cfg(doc)]
use crate::{Delivery, Event, Rejection, Stats, Subscription};

impl<T: Reduce> Core<T> {
    /// From now on, updates below `floor` that are new here are refused;
    /// our own next timestamps are above it.
    pub(crate) fn raise_floor(&mut self, floor: Timestamp) {
        if floor > self.floor {
            self.floor = floor;
            self.collect_pending = true;
        }
        self.last = self.last.max(self.floor);
    }

    /// Whether this replica holds an update older than `floor` that
    /// `peer` lacks (when the history no longer tells, it assumes so).
    pub(crate) fn holds_news_below(&self, peer: &Clock, floor: Timestamp) -> bool {
        let horizon = self.history.horizon();
        // Of its own writes, one that rejoined below `floor` or higher
        // holds none below it but those a snapshot brought back since (up
        // to `own_back`): the rejoin dropped them, and it writes above the
        // floor since. Its horizon says otherwise once a store restored it
        // from a snapshot, or its log overflowed (every source counts as
        // possibly below), which made it stale again.
        let own_above = floor <= self.fresh_to;
        let mut ahead = BTreeMap::new();
        for (source, ts) in self.clock.iter() {
            let theirs = peer.get(source);
            if ts <= theirs || theirs >= floor {
                continue;
            }
            let hidden = if own_above && source == self.id {
                self.own_back > theirs
            } else {
                horizon.get(source) > theirs
            };
            if ts < floor || hidden {
                return true;
            }
            ahead.insert(source, theirs);
        }
        !ahead.is_empty()
            && self.history.iter().filter_map(Entry::stamp).any(|stamp| {
                stamp.ts < floor
                    && ahead.get(&stamp.source).is_some_and(|&theirs| stamp.ts > theirs)
            })
    }

    /// Forgets the deletes below the floor, and the history's records
    /// below it from before `keep_from` (what no stream still has to send),
    /// recording that it did.
    ///
    /// Records a durable store has not released yet stay, so that a store
    /// keeping up goes on appending; one that fell behind them (a replica
    /// saved without a hold) finds them gone and saves a snapshot, as
    /// when the history overflows ([`Replica::entries_from`]).
    pub(crate) fn collect_now(&mut self, keep_from: u64) -> usize {
        self.collect_pending = false;
        let dropped = self.state.collect(self.floor);
        self.stats.collected += dropped as u64;
        let keep_from = keep_from.min(self.sendable_end());
        self.stats.history_collected += self.history.drop_stable(self.floor, keep_from) as u64;
        self.history.push(Entry::Collected { floor: self.floor });
        // The buffers kept between frames sit high in the heap (they grew
        // as frames came, up to ~1 MiB each for a frame of small updates):
        // a collection gives them back with the rest, when not in use; the
        // next frame grows them again.
        if self.staged.is_empty() {
            self.staged = Vec::new();
        }
        if self.inbox.is_empty() {
            self.inbox = Vec::new();
        }
        dropped
    }
}

impl<T: Reduce> Replica<T> {
    /// The collection floor: deletes older than it are forgotten, and
    /// updates older than it that are new here are refused
    /// ([`Rejection::BelowFloor`]). Zero until the first
    /// [`collect`](Replica::collect).
    pub fn floor(&self) -> Timestamp {
        self.core.floor
    }

    /// Forgets the deletes older than `stable` (tombstones of OR-set
    /// removes, last-writer-wins deletes: whatever [`Reduce::collect`]
    /// drops) and raises the [floor](Replica::floor) to it; returns how
    /// many entries went (none yet while a snapshot is being sent or taken
    /// in: the collection waits for it, see below).
    ///
    /// **The rule.** `stable` must be *causally stable*: every replica
    /// that could still send an update older than `stable` has every
    /// update older than it already. [`Clock::stable_point`] computes the
    /// greatest such time from the clocks of every member; each member
    /// then collects at it. A write older than the floor that arrives
    /// anyway (from a writer that was away past it) is refused with
    /// [`Rejection::BelowFloor`], since the delete that would have beaten
    /// it may be gone; a replica that was away past a peer's floor is
    /// told so ([`Event::Stale`]) and starts over with
    /// [`rejoin`](Replica::rejoin) rather than bringing anything back.
    ///
    /// Floors spread by themselves: a replica that meets a peer with a
    /// higher floor takes it (collecting too) once it holds everything the
    /// peer held. A [strict](crate::Config::is_strict) replica takes only
    /// the floors of peers whose Hello a signer in
    /// [`trust_snapshots_from`](crate::Config::trust_snapshots_from)
    /// signed: anyone could claim one. A collection waits for the snapshots being sent to
    /// finish (they are cut by position), and for those coming in (their
    /// parts, cut at a lower floor, may hold what the tombstones it drops
    /// would delete); the floor holds at once. A floor raised over parts
    /// of a cut snapshot from below it while the clock claims none of the
    /// peers' writes ([`holds_cut_snapshot`](Replica::holds_cut_snapshot),
    /// [`cut_parts_floor`](Replica::cut_parts_floor) below `stable`; not
    /// up to [`rejoined_below`](Replica::rejoined_below)) makes the
    /// replica [stale](Replica::stale_floor) at once, with no
    /// [`Event::Stale`] (no peer said so): nothing vouches that the parts
    /// hold the deletes the floor forgets. (Such a point is not stable for
    /// this replica, which holds none of its peers' writes:
    /// [`Clock::stable_point`] of its clock is zero for every other
    /// writer.)
    ///
    /// **The history goes too.** The oldest records below the floor are
    /// dropped from the history ([`Stats::history_collected`]): every
    /// replica that can still write holds them, so none needs them, and a
    /// peer that lacks them is behind the floor (it gets a snapshot, or
    /// is stale). Kept are the records a stream has yet to send and those
    /// not yet [released](Replica::release). As when the history
    /// overflows, a store that had not saved a dropped record saves a
    /// snapshot instead ([`entries_from`](Replica::entries_from)), and a
    /// [`Subscription`] that had not read it gets [`Delivery::Lagged`].
    ///
    /// ```
    /// use repred::{Clock, LwwMap, Network, Replica, SourceId};
    ///
    /// let mut net = Network::new();
    /// let a = net.add(Replica::new(SourceId::new("a")?, LwwMap::<String, u32>::default()));
    /// let b = net.add(Replica::new(SourceId::new("b")?, LwwMap::<String, u32>::default()));
    /// net.link(a, b);
    /// net.update(a, LwwMap::set("k".to_string(), 1))?;
    /// net.update(a, LwwMap::delete("k".to_string()))?;
    /// net.pump();
    /// let stable = Clock::stable_point([net[a].clock(), net[b].clock()]);
    /// for r in [a, b] {
    ///     net[r].collect(stable);
    /// }
    /// assert_eq!(net[a].stats().collected, 1, "the delete's tombstone is gone");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn collect(&mut self, stable: Timestamp) -> usize {
        // Parts of a cut snapshot from below `stable` may hold a key alive
        // whose delete a snapshot from `stable` forgot; merged over them at
        // equal floors, it would bring the key back. While the clock claims
        // none of the peers' writes `Stream::vet_floor` refuses it, but a
        // peer's write by history ends that: the verdict is given here, as
        // `Stream::take_floor` gives it for a peer's floor. Not once the
        // clock claims peers' writes: those came by history from a peer
        // that held every update the clock now claims (or with a snapshot,
        // whose end vouched for the parts), deletes of the parts' keys
        // among them, so a floor stable for every replica finds the parts
        // as safe as the rest.
        if self.core.claims_only_own() && self.core.holds_parts_below(stable) {
            self.core.stale = self.core.stale.max(stable.max(self.core.floor));
            self.core.stale_parts = true;
        }
        self.core.raise_floor(stable);
        self.collect_if_due()
    }

    /// The floor at which this replica was found stale, if it was:
    /// [`rejoin`](Replica::rejoin). Usually a peer's, which said so
    /// ([`Event::Stale`]). It may be this replica's own floor: parts of a
    /// snapshot cut below it
    /// ([`holds_cut_snapshot`](Replica::holds_cut_snapshot)) are not made
    /// safe by a floor raised over them, whether a peer's Hello or
    /// snapshot found that (with [`Event::Stale`]) or the replica's own
    /// [`collect`](Replica::collect) did (without: no peer took part).
    pub fn stale_floor(&self) -> Option<Timestamp> {
        // A verdict for parts of a cut snapshot holds at our own floor too
        // (see `Stream::vet_floor`): a floor raised over them while the
        // clock claimed none of the peers' writes did not make them safe,
        // whatever the clock claims since.
        (self.core.stale > self.core.floor || self.core.stale_parts).then_some(self.core.stale)
    }

    /// Starts over after [`Event::Stale`]: the state becomes `fresh` (the
    /// type's empty state), the clock and history empty, so the next stream
    /// brings the replica up (by snapshot if need be) and then it takes the
    /// peers' floor.
    /// Every stream ends (reopen them). The replica keeps its id, life and
    /// keys, and its own writes at or above the floor, which go out again.
    /// It returns the stamps of its own writes below the floor, which it
    /// drops: those its peers already had come back with them; the others
    /// are refused ([`Rejection::BelowFloor`]) and lost. Its own writes
    /// that were gone from its log come back the same way. As its clock
    /// still claims them (its kept writes' stamps, or those of writes made
    /// since, do), no peer would send them by history: its Hellos ask for a
    /// snapshot ([`Hello::missing_own`](crate::Hello::missing_own),
    /// [`rejoin_missing`](Replica::rejoin_missing)) until one whose clock
    /// claims the newest of them comes. Only a peer holding more of them
    /// than the snapshots taken so far brought back sends one. A durable
    /// store keeps asking across a restart. A snapshot from a peer whose floor rose
    /// past the rejoin's is refused: as stale, and the replica rejoins
    /// again, unless another peer's snapshot came since the stream
    /// opened (the peer chose it against the rejoin's clock): then the
    /// stream ends ([`CloseReason::Stale`](crate::CloseReason::Stale),
    /// without [`Event::Stale`]) and the next brings it up by history, or
    /// finds it stale.
    ///
    /// The floor is the highest of the stale verdict's, the replica's own
    /// and those of the peers it streams with (any of which would find it
    /// stale again for a write kept below its floor).
    ///
    /// It is also how a [poisoned](Replica::is_poisoned) replica starts
    /// over: the state becomes its peers' and its own recorded writes,
    /// without what the panicked `reduce` left. Should a kept write's
    /// `reduce` panic here, every kept write is still recorded (and sent),
    /// the replica stays poisoned and the panic goes on: a second rejoin
    /// keeps them all again.
    ///
    /// A limit to know: a replica only goes stale when a collection ran at
    /// a point that was not stable for it (its clock, or one of the
    /// replicas it talked to, was left out of [`Clock::stable_point`]).
    /// Recovery from that is not complete yet: the kept writes go out with
    /// their stamps, so a peer that lacks a dropped write below them takes
    /// them as covering it, and a third replica that still holds that
    /// dropped write and has not collected may keep it where the others
    /// never get it (found by repred-sim's fault tests; the fix is for a
    /// floor to travel with the clock it was collected at). Collect at the
    /// stable point of every replica that can still write. The same holds
    /// for its writes gone from its log, whatever the reason to rejoin: a
    /// peer that lacked an older one when it took the kept writes lacks it
    /// for good, and so does the replica if that peer's snapshot comes
    /// before one from a peer that held it.
    ///
    /// A durable store saves a whole snapshot on its next save.
    pub fn rejoin(&mut self, fresh: T) -> Vec<Stamp> {
        // A peer streamed with at a higher floor would find the replica
        // stale again at once, for its own writes kept below that floor.
        let floor = self.core.stale.max(self.core.floor).max(self.highest_peer_floor());
        let open: Vec<StreamId> = self.open_streams().collect();
        for id in open {
            self.end_stream(id, crate::EndReason::Local(crate::CloseReason::Stale { floor }));
        }
        let core = &mut self.core;
        let own = core.id;
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for seq in core.history.first_seq()..core.history.end_seq() {
            if let Some(Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. }) =
                core.history.get(seq)
                && e.source == own
            {
                if e.ts < floor { dropped.push(e.stamp()) } else { kept.push(e.clone()) }
            }
        }
        // Gone from the log before this, or dropped now: once a kept write,
        // or one made since, claims them, no peer sends them by history.
        let newest_dropped = dropped.iter().map(|s| s.ts).max().unwrap_or(Timestamp::ZERO);
        // A rejoin before a snapshot came still lacks what the last one
        // did, though its restart emptied the horizon.
        let own_missing = core.own_missing.max(core.history.horizon().get(own)).max(newest_dropped);
        core.history.restart();
        core.state = fresh;
        core.clock = Clock::new();
        // Below the floor it lacks what everyone has, so it refuses
        // nothing for its age until a peer brings it up (then it takes
        // the floor, see `Stream::compare_floors`).
        core.floor = Timestamp::ZERO;
        core.fresh_to = floor;
        core.own_back = Timestamp::ZERO;
        core.own_missing = own_missing;
        core.own_held = Timestamp::ZERO;
        core.stale = Timestamp::ZERO;
        core.stale_parts = false;
        core.poisoned = false;
        core.collect_pending = false;
        core.parts_floor = None;
        core.last = core.last.max(floor);
        core.parents.clear();
        core.demoted = Demotions::default();
        core.neighbours.clear();
        core.refused = Clock::new();
        // Every kept write is recorded, even past one whose reduce panics:
        // the log is what travels, and what a second rejoin keeps; the
        // state, missing some, is poisoned.
        let mut panicked = None;
        for envelope in kept {
            let stamp = envelope.stamp();
            if panicked.is_none() {
                let mut change = envelope.change.clone();
                let state = &mut core.state;
                let reducing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    T::stamp(&mut change, stamp);
                    state.reduce(change);
                }));
                if let Err(panic) = reducing {
                    core.poisoned = true;
                    panicked = Some(panic);
                }
            }
            core.clock.observe(own, stamp.ts);
            core.history.push(Entry::Change(envelope));
        }
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        dropped
    }

    /// The floor a [`rejoin`](Replica::rejoin) started this replica over
    /// below ([`Timestamp::ZERO`] if it never rejoined): a snapshot from a
    /// peer at that floor or under brings it up although it holds state
    /// (its own writes kept by the rejoin), which a replica that did not
    /// start over would refuse as stale. A durable store saves it.
    pub fn rejoined_below(&self) -> Timestamp {
        self.core.fresh_to
    }

    /// Of this replica's own writes below [`rejoined_below`](Replica::rejoined_below),
    /// the newest a snapshot taken since may have brought back, from a
    /// peer that had them ([`Timestamp::ZERO`]: none): a peer lacking
    /// those finds it stale. A durable store saves it.
    pub fn rejoin_brought_back(&self) -> Timestamp {
        self.core.own_back
    }

    /// The newest of this replica's own writes a [`rejoin`](Replica::rejoin)
    /// left it without ([`Timestamp::ZERO`]: none, or a snapshot whose
    /// clock claims it came since). Once its clock claims them (its kept
    /// writes' stamps, or those of writes made since), no peer sends them
    /// by history, so its Hellos ask for a snapshot instead
    /// ([`Hello::missing_own`](crate::Hello::missing_own)), while its clock
    /// claims any of its own writes. A durable store saves it.
    pub fn rejoin_missing(&self) -> Timestamp {
        self.core.own_missing
    }

    /// Since the last [`rejoin`](Replica::rejoin), the newest of this
    /// replica's own writes a snapshot's clock claimed ([`Timestamp::ZERO`]:
    /// none yet): it holds its own writes up to here, so while
    /// [`rejoin_missing`](Replica::rejoin_missing) names newer ones its
    /// Hellos ask only peers holding more than this for a snapshot. A
    /// durable store saves it.
    pub fn rejoin_held(&self) -> Timestamp {
        self.core.own_held
    }

    /// This replica holding its own writes up to `held`, as
    /// [`rejoin_held`](Replica::rejoin_held) said: for a durable store
    /// restoring a replica saved after a rejoin and a snapshot that brought
    /// back some of what it lacked (without it, the restored replica would
    /// ask every peer holding any of its writes for a snapshot again, and
    /// each would send its whole state for what is already here).
    pub fn with_rejoin_held(mut self, held: Timestamp) -> Self {
        self.core.own_held = self.core.own_held.max(held);
        self
    }

    /// This replica lacking its own writes up to `missing`, as
    /// [`rejoin_missing`](Replica::rejoin_missing) said: for a durable
    /// store restoring a replica saved after a rejoin, before a snapshot
    /// came (without it, the restored replica would never ask for one,
    /// and those writes would be lost from its state for good).
    pub fn with_rejoin_missing(mut self, missing: Timestamp) -> Self {
        self.core.own_missing = self.core.own_missing.max(missing);
        self
    }

    /// This replica as [`rejoin`](Replica::rejoin) below `floor` left it
    /// ([`rejoined_below`](Replica::rejoined_below)): for a durable store
    /// restoring a replica saved after a rejoin, before a peer brought it
    /// up (without it, the restored replica would be stale again).
    /// `brought_back` is what [`rejoin_brought_back`](Replica::rejoin_brought_back)
    /// said.
    pub fn with_rejoined_below(mut self, floor: Timestamp, brought_back: Timestamp) -> Self {
        self.core.fresh_to = self.core.fresh_to.max(floor);
        self.core.own_back = self.core.own_back.max(brought_back);
        self
    }

    /// This replica with collection floor `floor` (collecting at it): for
    /// a durable store restoring a replica whose base was saved after a
    /// [`collect`](Replica::collect).
    pub fn with_floor(mut self, floor: Timestamp) -> Self {
        if floor > self.core.floor {
            self.core.raise_floor(floor);
            self.core.collect_pending = false;
            self.core.state.collect(floor);
        }
        self
    }
}

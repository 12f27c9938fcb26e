//! The per-connection protocol: Hello, history or snapshot, Sync, live.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use crate::frame::{self, ClockSummary, Frame, Hello, Kind, Writer};
use crate::history::Entry;
use crate::reconcile::{Range, Reconciliation};
use crate::replica::{Core, Parent};
use crate::snapshot::{Incoming, Outgoing, Refused};
use crate::source_table::SourceTable;
use crate::{
    Clock, CloseReason, EndReason, Event, Outcome, PeerMisbehaved, Proof, Reduce, Rejection,
    Replica, SourceId, Stamp, StreamId, Timestamp,
};

/// How a stream takes part.
///
/// The default exchanges both ways, waits for the peer's clock before
/// sending history, and keeps tailing live updates after the sync.
///
/// ```
/// use repred::StreamOpts;
///
/// // Persist a replica: send everything, expect nothing back.
/// let log = StreamOpts::send_only();
/// assert!(log.sends && !log.receives && !log.await_clock);
/// // Replay a log into a replica.
/// let replay = StreamOpts::receive_only();
/// assert!(!replay.sends && replay.receives);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOpts {
    /// Send this replica's updates to the peer (scuttlebutt's `readable`).
    pub sends: bool,
    /// Accept the peer's updates (scuttlebutt's `writable`); when false,
    /// incoming updates are ignored.
    pub receives: bool,
    /// Keep sending live updates after the sync; when false the stream
    /// closes once synced.
    pub tail: bool,
    /// Wait for the peer's Hello, and send only what its clock lacks; when
    /// false, send the whole history at once (for a peer that never talks
    /// back, such as a file).
    pub await_clock: bool,
    /// Application bytes sent in the Hello, handed to the peer's `Header`.
    pub meta: Vec<u8>,
}

impl Default for StreamOpts {
    fn default() -> Self {
        Self { sends: true, receives: true, tail: true, await_clock: true, meta: Vec::new() }
    }
}

impl StreamOpts {
    /// Sends everything at once, accepts nothing: a log writer.
    pub fn send_only() -> Self {
        Self { receives: false, await_clock: false, ..Self::default() }
    }

    /// Accepts updates, sends none: a log reader.
    pub fn receive_only() -> Self {
        Self { sends: false, ..Self::default() }
    }

    /// Sets [`StreamOpts::tail`].
    pub fn tail(mut self, tail: bool) -> Self {
        self.tail = tail;
        self
    }

    /// Sets [`StreamOpts::meta`].
    pub fn meta(mut self, meta: impl Into<Vec<u8>>) -> Self {
        self.meta = meta.into();
        self
    }

    /// Sets [`StreamOpts::await_clock`].
    pub fn await_clock(mut self, await_clock: bool) -> Self {
        self.await_clock = await_clock;
        self
    }
}

/// Errors from driving a stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer broke the protocol; the stream is closed with this reason
    /// and nothing from the offending frame was applied.
    #[error("peer misbehaved: {0}")]
    Peer(#[from] PeerMisbehaved),
    /// No such stream, or it has ended.
    #[error("stream {0:?} is not open")]
    NotOpen(StreamId),
    /// An update of ours does not encode (its `Serialize` failed).
    #[error("an update does not encode: {0}")]
    Encode(String),
    /// A frame of ours is larger than the limit.
    #[error("an outgoing frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Its size.
        len: usize,
        /// [`Config::max_frame`](crate::Config::max_frame).
        limit: usize,
    },
}

impl From<postcard::Error> for SessionError {
    fn from(e: postcard::Error) -> Self {
        SessionError::Encode(e.to_string())
    }
}

/// Counters of one stream, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Frames sent.
    pub frames_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Updates sent (history and live).
    pub updates_sent: u64,
    /// Snapshots sent.
    pub snapshots_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Updates received.
    pub updates_received: u64,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    id: SourceId,
    sends: bool,
    receives: bool,
}

/// One stream's protocol state; lives inside its replica.
#[derive(Debug)]
pub(crate) struct Stream {
    opts: StreamOpts,
    recv: Vec<u8>,
    peer: Option<Peer>,
    /// What the peer is known to have: its Hello clock, plus everything
    /// sent to it or received from it since.
    known: Clock,
    /// The newest timestamp the peer has shown it holds ([`Replica::peer_heard`]).
    shown: Timestamp,
    /// Whether the history send has begun (after the peer's clock, or at
    /// once when not awaiting it).
    started: bool,
    /// The next history record to consider sending.
    cursor: u64,
    /// Sync goes out once the cursor passes this.
    sync_at: u64,
    horizon_generation: u64,
    need_snapshot: bool,
    /// A snapshot being sent, part by part.
    snapshot_out: Option<Outgoing>,
    /// A snapshot being received, part by part.
    snapshot_in: Option<Incoming>,
    /// When the last bytes of `snapshot_in` came (its begin, or any bytes
    /// since): it is refused as stalled
    /// [`Config::snapshot_stall_millis`](crate::Config::snapshot_stall_millis)
    /// after.
    snapshot_heard: u64,
    /// When `snapshot_in` began, and the bytes received since: it is
    /// refused as too slow once behind
    /// [`Config::snapshot_min_rate`](crate::Config::snapshot_min_rate).
    snapshot_begun: u64,
    snapshot_bytes: u64,
    hello_sent: bool,
    /// Our clock as our Hello summarises it, fixed when the stream opens.
    hello: ClockSummary,
    /// A snapshot went out on this stream and the history written since
    /// its start is still more than the log keeps: the history keeps it
    /// for the stream (`Replica::keep_for_snapshots`).
    catching_up: bool,
    /// Our collection floor when the stream opened, which our Hello
    /// carries with the clock it summarises: a floor raised since may
    /// stand above updates that clock lacks, which the peer would then
    /// refuse when the history brings them.
    hello_floor: Timestamp,
    /// When our Hello carried only a digest: the clock it stood for, to
    /// adopt as the peer's if the digests match.
    hello_clock: Option<Clock>,
    /// The peer sent its whole clock, we a digest, and they differ: it
    /// needs our entries of its sources (of the others it has nothing to
    /// send), as our Hello stood for them.
    owe_clock: Option<Clock>,
    /// Finding the peer's clock range by range (both sent digests).
    reconcile: Option<Reconciliation>,
    /// Ranges to send the peer.
    ranges_out: Vec<Range>,
    sync_sent: bool,
    sync_received: bool,
    /// The peer's Sync frame arrived; `sync_received` may wait for `heard`.
    sync_frame: bool,
    /// Lazy relay: the newest announced per source, before the peer's Sync,
    /// that this replica lacked, and until when (wall milliseconds) it is
    /// worth waiting for. The peer's history is only complete here once they
    /// arrive (from whichever parent), so the sync waits for them, but no
    /// longer than [`Config::relay_timeout_millis`](crate::Config::relay_timeout_millis):
    /// an announcement nobody delivers cannot hold a sync forever.
    heard: BTreeMap<SourceId, (Timestamp, u64)>,
    /// How many sources in `known` this replica did not know when they were
    /// added (an overestimate: some have become known since; recounted when
    /// it reaches the limit).
    foreign: usize,
    /// Our clock's size at the last recount of `foreign`.
    recounted_at: usize,
    /// Sources this stream's advances brought into our clock: claims with
    /// nothing behind them, counted against the same limit.
    introduced: usize,
    /// A Close still to be written before the stream goes away.
    close_out: Option<CloseReason>,
    /// No longer counted as open: ended locally, remotely or aborted.
    ended: bool,
    /// Synced without tail: to be closed with `Done`.
    done: bool,
    /// Lazy relay: the sources the peer asked us to push (its Want).
    eager: BTreeSet<SourceId>,
    /// Lazy relay: sources wanted since the last transmit, whose records
    /// already passed the cursor (announced, not sent) and go out first.
    backfill: BTreeSet<SourceId>,
    /// Lazy relay: what to tell the peer per source, the latest intent
    /// winning: `Some(ts)` push it to us after `ts` (Want), `None` stop
    /// (Unwant).
    intents: BTreeMap<SourceId, Option<Timestamp>>,
    /// Lazy relay: the newest announced to the peer per source.
    announced: Clock,
    /// The peer's collection floor, from its Hello.
    peer_floor: Timestamp,
    /// The peer's Hello asked for a snapshot (`Hello::missing_own`) that
    /// ours can answer, and none has gone out since: one goes when it can
    /// (see [`Stream::honours_wanted`]).
    peer_wants_snapshot: bool,
    /// The point the peer's Hello asked for a snapshot after, if it asked
    /// (see `Core::declined`).
    peer_missing: Option<Timestamp>,
    /// A higher floor of the peer's, taken once its history is in.
    catch_floor: Option<Timestamp>,
    /// The peer's clock when it said hello, while `catch_floor` waits.
    floor_clock: Option<Clock>,
    /// The floor, above ours, that the snapshot being received was
    /// collected at (its begin said so): taken at its end, as a Hello's
    /// is at the Sync, since we then hold exactly what it stood for.
    snapshot_floor: Option<Timestamp>,
    /// A reason to close the stream with, found outside frame handling.
    refuse: Option<CloseReason>,
    /// How many snapshots this replica had taken when the Hello's clock
    /// was summarised: a peer's snapshot chosen against that clock is out
    /// of date once another peer's came since (see `vet_floor`).
    snapshots_at_hello: u64,
    /// How many snapshots this stream brought in since.
    snapshots_taken: u64,
    stats: StreamStats,
}

impl Stream {
    fn new(opts: StreamOpts, clock: &Clock, floor: Timestamp, snapshots: u64) -> Self {
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
            peer_wants_snapshot: false,
            peer_missing: None,
            catch_floor: None,
            floor_clock: None,
            snapshot_floor: None,
            refuse: None,
            snapshots_at_hello: snapshots,
            snapshots_taken: 0,
            stats: StreamStats::default(),
        }
    }

    /// Whether updates of ours go to this peer at all.
    fn sends_updates(&self) -> bool {
        self.opts.sends && self.peer.is_none_or(|p| p.receives)
    }

    /// Whether this stream announces other sources' updates instead of
    /// pushing them. Only tailing streams that hear the peer do: a stream
    /// that closes after sync, or writes without waiting for the peer, could
    /// not serve a Want.
    fn lazy<T: Reduce>(&self, core: &Core<T>) -> bool {
        core.config.lazy_relay && self.opts.tail && self.opts.await_clock
    }

    /// Whether updates of `source` are pushed to this peer even when lazy.
    fn pushes(&self, source: SourceId, own: SourceId) -> bool {
        source == own || self.peer.is_some_and(|p| p.id == source) || self.eager.contains(&source)
    }

    fn start<T: Reduce>(&mut self, core: &Core<T>) {
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
    fn owes_snapshot<T: Reduce>(&self, core: &Core<T>) -> bool {
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
    fn note_known<T: Reduce>(&mut self, core: &Core<T>, source: SourceId, ts: Timestamp) {
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
    fn take_update<T: Reduce>(
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
    fn vet_claims<T: Reduce>(
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
    fn peer_clock<T: Reduce>(&mut self, core: &Core<T>, clock: &Clock) {
        if self.catch_floor.is_some() && self.floor_clock.is_none() {
            self.floor_clock = Some(clock.clone());
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

    fn mark_sync<T: Reduce>(&mut self, id: StreamId, core: &mut Core<T>, sent: bool) {
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
    fn finish_if_synced<T: Reduce>(&mut self, core: &Core<T>) {
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
    fn settle<T: Reduce>(&mut self, id: StreamId, core: &mut Core<T>, now: u64) {
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

    /// The peer pushed `stamp` to us: it is (or becomes) the source's
    /// parent if the source has none, or if the peer is the source itself.
    fn track_parent<T: Reduce>(&self, id: StreamId, core: &mut Core<T>, stamp: Stamp) {
        let origin = self.peer.is_some_and(|p| p.id == stamp.source);
        if core.demoted.get(&stamp.source) == Some(&id) {
            // It delivers again: it may lead again.
            core.demoted.remove(&stamp.source);
        }
        let parent = core.parents.entry(stamp.source).or_insert(Parent::new(id, stamp.ts, origin));
        if parent.stream == id {
            parent.has = parent.has.max(stamp.ts);
            if parent.due.is_some_and(|due| due.ts <= parent.has) {
                parent.due = None;
            }
        } else if origin && !parent.origin {
            // The origin pushes its own updates anyway: a relay that also
            // pushes them would deliver each one twice for good.
            core.unwants.push((parent.stream, stamp.source));
            *parent = Parent::new(id, stamp.ts, origin);
        }
    }

    /// The peer announced `stamp` (lazy relay): ask for the source from this
    /// peer unless its current parent is known to have it already.
    ///
    /// Whoever is asked owes the update within the relay timeout: if it
    /// has not delivered by then, another peer that announced it is asked
    /// instead ([`Replica::handle_timeout`]), so one announcement, true or
    /// false, delays a source by that much at most.
    fn heard_of<T: Reduce>(&mut self, id: StreamId, core: &mut Core<T>, now: u64, stamp: Stamp) {
        if core.clock.has(stamp.source, stamp.ts) {
            return;
        }
        let timeout = core.config.relay_timeout_millis;
        if !self.sync_frame {
            let deadline = now.saturating_add(timeout);
            let newest = self.heard.entry(stamp.source).or_insert((stamp.ts, deadline));
            newest.0 = newest.0.max(stamp.ts);
        }
        if let Some(&origin) = core.neighbours.get(&stamp.source)
            && origin != id
            && core.demoted.get(&stamp.source) != Some(&origin)
        {
            // The source itself is a neighbour: it pushes its own updates,
            // so a relay pushing them too would only send duplicates. It
            // owes what was announced, though: a neighbour whose connection
            // died without a word would otherwise hold the source back.
            let parent =
                core.parents.entry(stamp.source).or_insert(Parent::new(origin, stamp.ts, true));
            if parent.stream != origin {
                core.unwants.push((parent.stream, stamp.source));
                *parent = Parent::new(origin, stamp.ts, true);
            }
            parent.expect(stamp.ts, now, timeout);
            return;
        }
        match core.parents.get_mut(&stamp.source) {
            // Our parent announces instead of pushing: our Want is still on
            // its way, or it never had one (its push was a stray, sent before
            // an Unwant arrived). Ask again; a repeated Want is harmless.
            Some(parent) if parent.stream == id => {
                parent.has = parent.has.max(stamp.ts);
                parent.expect(stamp.ts, now, timeout);
            }
            Some(parent) if parent.origin || parent.has >= stamp.ts => {
                parent.expect(stamp.ts, now, timeout);
                return;
            }
            Some(parent) => {
                core.unwants.push((parent.stream, stamp.source));
                *parent = Parent::new(id, stamp.ts, false);
                parent.expect(stamp.ts, now, timeout);
            }
            None => {
                let mut parent = Parent::new(id, stamp.ts, false);
                parent.expect(stamp.ts, now, timeout);
                core.parents.insert(stamp.source, parent);
            }
        }
        self.intents.insert(stamp.source, Some(core.clock.get(stamp.source)));
    }

    fn handle_frame<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        now: u64,
        bytes: &[u8],
    ) -> Result<Flow, PeerMisbehaved> {
        let frame = frame::decode::<T::Update>(bytes, &mut core.inbox)?;
        self.stats.frames_received += 1;
        let peer = match (&frame, self.peer) {
            (Frame::Hello(_), Some(_)) => return Err(PeerMisbehaved::DuplicateHello),
            (Frame::Hello(_), None) | (Frame::Close(_), _) => None,
            (other, None) => {
                core.inbox.clear();
                return Err(PeerMisbehaved::BeforeHello(frame_name(other).into()));
            }
            (_, Some(peer)) => Some(peer),
        };
        match frame {
            Frame::Hello(hello) => {
                if hello.id != core.id {
                    // Our own id in another life is our own log replayed
                    // (or a twin, which nothing here can tell apart).
                    match core.lives.get(&hello.id) {
                        Some(&life) if life != hello.life => {
                            return Err(PeerMisbehaved::Reincarnated { id: hello.id });
                        }
                        Some(_) => {}
                        None => {
                            crate::replica::insert_bounded(&mut core.lives, hello.id, hello.life);
                        }
                    }
                }
                let peer = Peer { id: hello.id, sends: hello.sends, receives: hello.receives };
                self.peer = Some(peer);
                // Wherever the stream is (one not awaiting the clock has
                // started already), and only from a peer holding more of
                // its writes than it got back so far: one without would
                // send a whole state for nothing, on every stream for as
                // long as the peer asks. A snapshot already going out, or
                // sent, holds all the peer asks for.
                self.peer_wants_snapshot = hello.missing_own.is_some_and(|after| {
                    core.clock.get(hello.id) > after && !core.declines(hello.id, after, now)
                }) && self.snapshot_out.is_none()
                    && self.stats.snapshots_sent == 0;
                self.peer_missing = hello.missing_own;
                if let Some(flow) = self.compare_floors(id, core, now, &hello)? {
                    return Ok(flow);
                }
                if hello.sends && self.opts.receives {
                    core.neighbours.insert(hello.id, id);
                }
                let equal = hello.clock.hash() == self.hello.hash();
                // Whoever sent a digest owes its clock when they differ;
                // both sides reach the same verdict from the same two
                // digests. To a peer that sent its whole clock, only the
                // part about its sources is owed: of the others it has
                // nothing to send.
                // Two digests that differ: the clocks are found out range by
                // range (see `reconcile`), the smaller id asking first.
                if !equal && self.hello_clock.is_some() {
                    match &hello.clock {
                        // As of our Hello, not of the moment it is sent:
                        // the peer takes what the Clock frame shows as held
                        // (`peer_heard`), and a write of ours made since
                        // may not have reached it yet.
                        ClockSummary::Full(clock) => {
                            let mine = self.hello_clock.as_ref();
                            self.owe_clock = Some(
                                clock
                                    .iter()
                                    .map(|(s, _)| (s, mine.map_or(Timestamp::ZERO, |m| m.get(s))))
                                    .collect(),
                            );
                        }
                        ClockSummary::Digest { .. } => {
                            let mine = self.hello_clock.take().unwrap_or_default();
                            let limit = core.config.max_unknown_sources;
                            let mut rec = Reconciliation::new(mine, limit);
                            if (core.id, core.life) < (hello.id, hello.life) {
                                self.ranges_out.extend(rec.start());
                            }
                            self.reconcile = Some(rec);
                        }
                    }
                }
                let peer_clock = match hello.clock {
                    ClockSummary::Full(clock) => Some(clock),
                    ClockSummary::Digest { .. } if equal => {
                        Some(self.hello_clock.take().unwrap_or_else(|| match &self.hello {
                            ClockSummary::Full(clock) => clock.clone(),
                            ClockSummary::Digest { .. } => Clock::new(),
                        }))
                    }
                    ClockSummary::Digest { .. } => None,
                };
                self.hello_clock = None;
                core.emit(Event::Header {
                    stream: id,
                    id: hello.id,
                    clock: peer_clock.clone().unwrap_or_default(),
                    meta: hello.meta,
                });
                // Without it, history waits for the peer's Clock frame.
                if let Some(clock) = peer_clock {
                    self.peer_clock(core, &clock);
                }
                if !peer.sends {
                    self.mark_sync(id, core, false);
                }
            }
            Frame::Clock(clock) => self.peer_clock(core, &clock),
            Frame::Ranges(ranges) => {
                // Only while reconciling: otherwise the ranges say nothing
                // this side asked about.
                if let Some(rec) = &mut self.reconcile {
                    let answer = rec.handle(ranges).map_err(|detail| {
                        PeerMisbehaved::Malformed { kind: "Ranges".into(), detail: detail.into() }
                    })?;
                    self.ranges_out.extend(answer);
                    if rec.is_done() {
                        let theirs = self.reconcile.take().map(Reconciliation::into_theirs);
                        self.peer_clock(core, &theirs.unwrap_or_default());
                    }
                }
            }
            Frame::Updates => {
                let mut inbox = std::mem::take(&mut core.inbox);
                self.stats.updates_received += inbox.len() as u64;
                if self.opts.receives {
                    let track = core.config.lazy_relay || core.lazy_peers;
                    let mut last: Option<Stamp> = None;
                    let mut sources = std::mem::take(&mut core.sources);
                    sources.begin(inbox.len());
                    // The user's `Clone`, `stamp` and `unstamp` (and
                    // `Serialize`, for a signed update) run on each update
                    // staged, after its clock entry moved: should one panic
                    // (and the replica be used after the panic is caught),
                    // nothing of this frame stays staged or claimed, and the
                    // peer sends it again. Caught once a frame, as the
                    // reduces are (`Core::apply_staged`), not per update.
                    let shown = self.shown;
                    let staging = catch_unwind(AssertUnwindSafe(|| {
                        for (index, envelope) in inbox.iter_mut().enumerate() {
                            let stamp = envelope.stamp();
                            let staged = self.take_update(core, &mut sources, now, index, envelope);
                            if !matches!(staged, Err(Outcome::Rejected(_))) {
                                self.shown = self.shown.max(stamp.ts);
                            }
                            match staged {
                                // What we pull but cannot verify will not come
                                // from anyone: a sync waits for it no more.
                                Err(Outcome::Rejected(Rejection::Unverified(_)))
                                    if core.parents.contains_key(&stamp.source) =>
                                {
                                    core.refused.observe(stamp.source, stamp.ts);
                                }
                                // A refused update says nothing of what the
                                // peer will deliver, so it picks no parent.
                                Err(Outcome::Rejected(_)) => {}
                                _ if track => {
                                    if let Some(prev) = last
                                        && prev.source != stamp.source
                                    {
                                        self.track_parent(id, core, prev);
                                    }
                                    last = Some(stamp);
                                }
                                _ => {}
                            }
                        }
                    }));
                    if let Err(panic) = staging {
                        self.shown = shown;
                        core.unstage(&inbox);
                        inbox.clear();
                        core.inbox = inbox;
                        // Not written back: the table holds the raise of the
                        // update whose staging panicked.
                        core.sources = sources;
                        resume_unwind(panic);
                    }
                    sources.write_back(&mut core.clock, &mut self.known);
                    core.sources = sources;
                    core.inbox = inbox;
                    // The frame's reduces back to back (see `Core::stage`).
                    // Those after a reduce that panics are set back (their
                    // clock entries too), so they count as not shown.
                    let applied = catch_unwind(AssertUnwindSafe(|| core.apply_staged()));
                    if let Err(panic) = applied {
                        self.shown = shown;
                        resume_unwind(panic);
                    }
                    if let Some(prev) = last {
                        self.track_parent(id, core, prev);
                    }
                } else {
                    inbox.clear();
                    core.inbox = inbox;
                }
            }
            // A peer that said it sends nothing would never serve a Want.
            Frame::Have(stamps) if self.opts.receives && peer.is_some_and(|p| p.sends) => {
                core.lazy_peers = true;
                self.vet_claims(core, stamps.iter().map(|s| s.source))?;
                for stamp in stamps {
                    // What we would refuse is not worth a parent, and must
                    // not block honest announcements (a forged future ts
                    // would outbid them all).
                    if core.check(now, stamp.source, stamp.ts).is_ok() {
                        self.shown = self.shown.max(stamp.ts);
                        self.note_known(core, stamp.source, stamp.ts);
                        self.heard_of(id, core, now, stamp);
                    }
                }
            }
            Frame::Have(_) => {}
            Frame::Want(stamps) => {
                if self.sends_updates() {
                    for stamp in stamps {
                        // Honest peers want only what we announced, so a
                        // source we never saw is bogus: remembering it
                        // would let a peer grow this stream without bound.
                        if core.clock.get(stamp.source) > Timestamp::ZERO {
                            self.known.observe(stamp.source, stamp.ts);
                            self.eager.insert(stamp.source);
                            self.backfill.insert(stamp.source);
                        }
                    }
                }
            }
            Frame::Unwant(sources) => {
                for source in sources {
                    self.eager.remove(&source);
                    self.backfill.remove(&source);
                }
            }
            Frame::SnapshotBegin { sources, clock, digest, proof, entries, floor }
                if self.opts.receives =>
            {
                if self.snapshot_in.is_some() {
                    return Err(PeerMisbehaved::Malformed {
                        kind: "SnapshotBegin".into(),
                        detail: "a snapshot begun before the last one ended".into(),
                    });
                }
                // The floor the snapshot's state is collected at: the
                // sender's may have risen since its Hello (it took ours).
                if let Some(floor) = floor.filter(|&f| f > self.peer_floor) {
                    core.check_skew(now, floor).map_err(|e| PeerMisbehaved::Malformed {
                        kind: "SnapshotBegin".into(),
                        detail: format!("collection floor: {e}"),
                    })?;
                    self.peer_floor = floor;
                }
                if let Some(refused) = self.vet_floor(id, core) {
                    return self.refuse_snapshot(id, core, peer, refused);
                }
                match Incoming::begin(core, sources, clock, digest, proof.as_ref(), entries) {
                    Ok(incoming) => {
                        core.receiving.insert(id, self.peer_floor);
                        self.snapshot_in = Some(incoming);
                        self.snapshot_heard = now;
                        self.snapshot_begun = now;
                        self.snapshot_bytes = 0;
                        self.snapshot_floor = Some(self.peer_floor).filter(|&f| f > core.floor);
                    }
                    Err(refused) => return self.refuse_snapshot(id, core, peer, refused),
                }
            }
            Frame::SnapshotClock(entries) if self.opts.receives => {
                let Some(incoming) = &mut self.snapshot_in else {
                    return Err(PeerMisbehaved::Malformed {
                        kind: "SnapshotClock".into(),
                        detail: "a snapshot clock before its begin".into(),
                    });
                };
                let skew = core.config.max_skew_millis;
                if let Err(refused) = incoming.clock_chunk(now, skew, entries) {
                    return self.refuse_snapshot(id, core, peer, refused);
                }
            }
            Frame::SnapshotPart { index, state, bytes, digest, proof } if self.opts.receives => {
                let Some(incoming) = &mut self.snapshot_in else {
                    return Err(PeerMisbehaved::Malformed {
                        kind: "SnapshotPart".into(),
                        detail: "a snapshot part before its begin".into(),
                    });
                };
                if let Err(refused) = incoming.part(index, &digest, proof.as_ref()) {
                    return self.refuse_snapshot(id, core, peer, refused);
                }
                let hint = incoming.take_size_hint();
                // The part is counted: should the user's `reserve` or
                // `reduce` panic on it (and the replica be used after the
                // panic is caught), the snapshot goes with it, or its end
                // would give the clock it stands for to a state that lacks
                // the part. Its next frame is then out of place, which
                // ends the stream.
                let incoming = self.snapshot_in.take();
                // Room for the whole state once, with the first part taken
                // (its clock checked), rather than doubling on the way.
                if let Some(entries) = hint {
                    core.state.reserve(entries.min(core.config.max_snapshot_reserve));
                }
                let floor = core.receiving.get(&id).copied().unwrap_or(core.floor);
                core.receive_part(peer.map_or(core.id, |p| p.id), floor, state, bytes);
                self.snapshot_in = incoming;
            }
            Frame::SnapshotEnd { parts, proof } if self.opts.receives => {
                let Some(incoming) = self.snapshot_in.take() else {
                    return Err(PeerMisbehaved::Malformed {
                        kind: "SnapshotEnd".into(),
                        detail: "a snapshot end before its begin".into(),
                    });
                };
                core.receiving.remove(&id);
                match incoming.end(parts, proof.as_ref()) {
                    Ok(clock) => {
                        core.finish_snapshot(peer.map_or(core.id, |p| p.id), &clock);
                        self.snapshots_taken += 1;
                        self.shown = self.shown.max(clock.max());
                        self.known.merge(&clock);
                        // The peer held all its snapshot stands for: a
                        // floor waiting for the Sync is judged against
                        // that too, or writes that reached it after its
                        // Hello, which the snapshot brought, would count
                        // as news of ours below its floor (stale).
                        if let Some(held) = &mut self.floor_clock {
                            held.merge(&clock);
                        }
                        // Taken from above our floor (we held nothing it
                        // could have forgotten, see `vet_floor`): its floor
                        // is ours now, or we would take writes below it
                        // that its state no longer holds the deletes of,
                        // and wait for ever to send the peer a snapshot.
                        if let Some(floor) = self.snapshot_floor.take().filter(|&f| f > core.floor)
                            && let Some(flow) = self.take_floor(id, core, &clock, floor)
                        {
                            return Ok(flow);
                        }
                    }
                    Err(refused) => return self.refuse_snapshot(id, core, peer, refused),
                }
            }
            // A stream that takes nothing ignores snapshots, as updates.
            Frame::SnapshotBegin { .. }
            | Frame::SnapshotClock(_)
            | Frame::SnapshotPart { .. }
            | Frame::SnapshotEnd { .. } => {}
            Frame::Sync => {
                if self.sync_frame || self.sync_received {
                    if self.opts.receives && peer.is_some_and(|p| p.sends) {
                        return Err(PeerMisbehaved::DuplicateSync);
                    }
                } else {
                    self.sync_frame = true;
                    self.settle(id, core, now);
                }
            }
            Frame::Advance(stamps) => {
                if self.opts.receives {
                    let track = core.config.lazy_relay || core.lazy_peers;
                    self.vet_claims(core, stamps.iter().map(|s| s.source))?;
                    for stamp in stamps {
                        let new_source = stamp.source.is_valid()
                            && core.clock.get(stamp.source) == Timestamp::ZERO;
                        let outcome = core.advance(now, stamp);
                        let rejected = matches!(outcome, Outcome::Rejected(_));
                        if !rejected {
                            self.shown = self.shown.max(stamp.ts);
                        }
                        if new_source && !rejected {
                            // A source only an advance vouches for: it stays
                            // in our clock, so it counts for good.
                            self.introduced += 1;
                        }
                        self.note_known(core, stamp.source, stamp.ts);
                        if track && !rejected {
                            self.track_parent(id, core, stamp);
                        }
                    }
                }
            }
            Frame::Proofs(proofs) => {
                if self.opts.receives {
                    let track = core.config.lazy_relay || core.lazy_peers;
                    for proof in proofs {
                        let stamp = proof.stamp;
                        let outcome = core.prove(now, proof);
                        let rejected = matches!(outcome, Outcome::Rejected(_));
                        if !rejected {
                            self.shown = self.shown.max(stamp.ts);
                        }
                        if rejected && core.parents.contains_key(&stamp.source) {
                            core.refused.observe(stamp.source, stamp.ts);
                        }
                        self.note_known(core, stamp.source, stamp.ts);
                        if track && !rejected {
                            self.track_parent(id, core, stamp);
                        }
                    }
                }
            }
            Frame::Close(reason) => {
                if let CloseReason::SnapshotRefused(
                    crate::SnapshotRefusal::Unsigned | crate::SnapshotRefusal::Untrusted(_),
                ) = &reason
                    && let (Some(peer), Some(after)) = (self.peer, self.peer_missing)
                    && (self.snapshot_out.is_some() || self.stats.snapshots_sent > 0)
                {
                    core.decline(peer.id, after, now);
                }
                return Ok(Flow::Closed(reason));
            }
        }
        Ok(Flow::Continue)
    }

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
    fn compare_floors<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        now: u64,
        hello: &Hello,
    ) -> Result<Option<Flow>, PeerMisbehaved> {
        self.peer_floor = hello.floor;
        if hello.floor <= core.floor {
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
    fn take_floor<T: Reduce>(
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
    fn vet_floor<T: Reduce>(&self, id: StreamId, core: &mut Core<T>) -> Option<Refused> {
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
        // claims none of the peers' writes still: one raised then (by
        // `Replica::collect`; a peer's Hello no longer raises it over
        // them, see `take_floor`) forgot deletes, it brought none. A
        // clock that came with what peers sent since (history) holds its
        // own floor as any, for a snapshot from that floor (a higher one
        // taken over the parts on a peer's word would not: `take_floor`
        // finds the replica stale instead). A start over
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

    /// When the snapshot coming in on this stream, if any, is refused: as
    /// stalled (`stall` ms after its last bytes), or as too slow (behind
    /// `rate` bytes per second once `stall` ms passed since it began).
    fn snapshot_deadline(&self, stall: u64, rate: u64) -> Option<u64> {
        (!self.ended && self.snapshot_in.is_some()).then(|| {
            let silent = self.snapshot_heard.saturating_add(stall);
            let slow = match rate {
                0 => u64::MAX,
                rate => self
                    .snapshot_begun
                    .saturating_add(stall)
                    .saturating_add(self.snapshot_bytes.saturating_mul(1_000) / rate),
            };
            silent.min(slow)
        })
    }

    /// Why the snapshot coming in is refused at `now`, its deadline
    /// passed (see [`snapshot_deadline`](Self::snapshot_deadline)).
    fn snapshot_overdue(&self, now: u64, stall: u64) -> crate::SnapshotRefusal {
        let silent = now.saturating_sub(self.snapshot_heard);
        if silent >= stall {
            crate::SnapshotRefusal::Stalled { millis: silent }
        } else {
            crate::SnapshotRefusal::TooSlow {
                bytes: self.snapshot_bytes,
                millis: now.saturating_sub(self.snapshot_begun),
            }
        }
    }

    /// A snapshot frame this replica does not take: a protocol violation
    /// ends the stream as any; an untrusted snapshot is refused (a typed
    /// event) and the stream closed with the reason.
    fn refuse_snapshot<T: Reduce>(
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

    /// Appends this stream's next frames to `out`; returns how many bytes.
    fn transmit<T: Reduce>(
        &mut self,
        id: StreamId,
        core: &mut Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<usize, SessionError> {
        let before = out.len();
        if !self.hello_sent {
            let hello = Hello {
                id: core.id,
                clock: self.hello.clone(),
                meta: self.opts.meta.clone(),
                sends: self.opts.sends,
                receives: self.opts.receives,
                life: core.life,
                // The floor of the moment the stream opened, unless the
                // clock is still the one the Hello summarises: a floor
                // taken since (from a peer whose clock ours covers, say)
                // holds for that clock too, and a lower one would have
                // the peer refuse our snapshot as from below its floor.
                floor: if core.clock.digest() == self.hello.hash() {
                    core.floor
                } else {
                    self.hello_floor
                },
                // A stream that takes nothing would ignore the snapshot;
                // and while our clock claims none of our own writes, the
                // peer's history brings back what it has of them.
                // Nor does one that takes no snapshot at all.
                missing_own: (self.opts.receives
                    && core.own_missing > Timestamp::ZERO
                    && core.clock.get(core.id) > Timestamp::ZERO
                    && (!core.config.is_strict() || !core.config.trust_snapshots_from.is_empty()))
                .then_some(core.own_held),
            };
            frame::write_hello(out, &hello)?;
            self.hello_sent = true;
            self.stats.frames_sent += 1;
        }
        if let Some(part) = self.owe_clock.take().filter(|_| !self.ended) {
            let mut w = Writer::begin(out, Kind::Clock);
            w.put(&part)?;
            w.finish();
            self.stats.frames_sent += 1;
        }
        if !self.ranges_out.is_empty() && !self.ended {
            self.send_ranges(core, out)?;
        }
        if let Some(reason) = self.close_out.take() {
            let mut w = Writer::begin(out, Kind::Close);
            w.put(&reason)?;
            w.finish();
            self.stats.frames_sent += 1;
            self.count_sent(out.len() - before);
            return Ok(out.len() - before);
        }
        if self.ended {
            self.count_sent(out.len() - before);
            return Ok(out.len() - before);
        }
        if !self.intents.is_empty() {
            let intents = std::mem::take(&mut self.intents);
            let wants: Vec<Stamp> = intents
                .iter()
                .filter_map(|(&source, ts)| Some(Stamp { source, ts: (*ts)? }))
                .collect();
            let unwants: Vec<SourceId> =
                intents.iter().filter(|(_, ts)| ts.is_none()).map(|(&s, _)| s).collect();
            for (kind, empty) in
                [(Kind::Want, wants.is_empty()), (Kind::Unwant, unwants.is_empty())]
            {
                if empty {
                    continue;
                }
                let mut w = Writer::begin(out, kind);
                if kind == Kind::Want {
                    w.put(&wants)?;
                } else {
                    w.put(&unwants)?;
                }
                w.finish();
                self.stats.frames_sent += 1;
            }
        }
        if self.started && self.sends_updates() {
            self.send_backfill(core, out)?;
            self.send_snapshot(core, out)?;
            self.send_batch(core, out)?;
            if !self.done {
                self.finish_if_synced(core);
            }
        }
        // The sync follows the history, and a snapshot in parts, complete.
        let snapshot_done = self.snapshot_out.is_none() && !self.owes_snapshot(core);
        // To a peer that takes nothing, there is no history to send first.
        let sent = self.cursor >= self.sync_at || !self.sends_updates();
        if self.started && !self.sync_sent && sent && snapshot_done {
            Writer::begin(out, Kind::Sync).finish();
            self.stats.frames_sent += 1;
            self.mark_sync(id, core, true);
        }
        self.count_sent(out.len() - before);
        Ok(out.len() - before)
    }

    /// The reconciliation's ranges, a frame per batch's worth.
    fn send_ranges<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let ranges = std::mem::take(&mut self.ranges_out);
        let mut chunk: Vec<&Range> = Vec::new();
        let mut size = 0;
        for (i, range) in ranges.iter().enumerate() {
            size += match range {
                Range::Items { items, .. } => 8 + 26 * items.len(),
                _ => 30,
            };
            chunk.push(range);
            if size >= core.config.batch_bytes || i + 1 == ranges.len() {
                let mut w = Writer::begin(out, Kind::Ranges);
                if let Err(e) = w.put(&chunk) {
                    w.abandon();
                    return Err(e.into());
                }
                w.finish();
                self.stats.frames_sent += 1;
                chunk.clear();
                size = 0;
            }
        }
        Ok(())
    }

    fn count_sent(&mut self, bytes: usize) {
        self.stats.bytes_sent += bytes as u64;
    }

    /// Whether the peer lacks nothing that fell off the history. On a lazy
    /// stream, what was announced and not wanted does not count: the peer
    /// pulls it elsewhere, and a later Want for it that finds it gone gets
    /// a snapshot then (see `send_backfill`). Otherwise every eviction would
    /// cost each lazy peer a whole snapshot.
    fn covers_horizon<T: Reduce>(&self, core: &Core<T>) -> bool {
        let horizon = core.history.horizon();
        if !self.lazy(core) {
            return self.known.covers(horizon);
        }
        horizon.iter().all(|(source, ts)| {
            self.known.has(source, ts)
                || (!self.pushes(source, core.id) && self.announced.has(source, ts))
        })
    }

    /// Begins a snapshot when the peer lacks what fell off the history,
    /// and sends its next parts (about a batch's worth a call, so the
    /// other streams of a connection get their turn in between). The
    /// history after it waits until it ends (see `send_batch`).
    fn send_snapshot<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let history = &core.history;
        // While a snapshot goes out, what falls off the history is judged
        // once it ends: the snapshot holds all that came before its start,
        // which the peer is not known to hold until then (judged now, the
        // eviction of any such record, as every write of a full history
        // evicts one, called for another snapshot after it).
        if self.snapshot_out.is_none() {
            self.check_horizon(core);
        }
        if self.snapshot_out.is_none() {
            // A snapshot holds every record, so it waits for all of them to
            // be released; and one to a peer with a higher floor waits for
            // ours to rise (it would be refused: see `compare_floors`). A
            // poisoned state holds what no record accounts for: none goes
            // out until a rejoin (see `Replica::poison`).
            if !self.owes_snapshot(core)
                || core.sendable_end() < history.end_seq()
                || self.peer_floor > core.floor
                || core.poisoned
            {
                return Ok(());
            }
            self.snapshot_out = Some(Outgoing::begin(core, out)?);
            self.stats.frames_sent += 1;
            self.need_snapshot = false;
            self.peer_wants_snapshot = false;
            self.catching_up = true;
            // The snapshot holds everything recorded so far; history goes
            // on from here, once it ends (kept meanwhile: see
            // `Replica::keep_for_snapshots`).
            self.cursor = history.end_seq();
        }
        let Some(snapshot) = &mut self.snapshot_out else { return Ok(()) };
        let before = snapshot.frames();
        let done = snapshot.write(core, out, core.config.batch_bytes)?;
        self.stats.frames_sent += snapshot.frames() - before;
        if let Some(clock) = done {
            self.stats.frames_sent += 1;
            self.stats.snapshots_sent += 1;
            self.known.merge(&clock);
            self.snapshot_out = None;
            self.check_horizon(core);
        }
        Ok(())
    }

    /// Whether what fell off the history since the last look is held by
    /// the peer; if not, a snapshot is owed. Moves the cursor past what
    /// fell off.
    fn check_horizon<T: Reduce>(&mut self, core: &Core<T>) {
        let history = &core.history;
        let lagged = self.cursor < history.first_seq();
        if lagged || self.horizon_generation != history.horizon_generation() {
            self.horizon_generation = history.horizon_generation();
            self.cursor = self.cursor.max(history.first_seq());
            if !self.covers_horizon(core) {
                self.need_snapshot = true;
            }
        }
    }

    fn send_batch<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let history = &core.history;
        let end = core.sendable_end();
        // A snapshot still owed (held back until released) comes first: the
        // records after a gap would be of no use before it. So does one
        // being sent: a record of a source now would claim to the peer
        // every older one of that source (its clock moves to it), some of
        // which may be in parts still to come; a stream cut then would
        // leave the peer claiming what it never got.
        if self.cursor >= end || self.owes_snapshot(core) || self.snapshot_out.is_some() {
            return Ok(());
        }
        let lazy = self.lazy(core);
        let mut w = Writer::begin(out, Kind::Updates);
        let mut count = 0u64;
        // Advances and proofs go after the updates they follow, in frames of
        // their own.
        let mut claims = Claims::default();
        // Lazy relay: the newest record per source announced, not sent.
        let mut haves: BTreeMap<SourceId, Timestamp> = BTreeMap::new();
        while self.cursor < end && w.body_len() < core.config.batch_bytes {
            let Some(record) = history.get(self.cursor) else { break };
            if lazy
                && let Some(stamp) = record.stamp()
                && stamp.source.is_valid()
                && !self.known.has(stamp.source, stamp.ts)
                && !self.pushes(stamp.source, core.id)
            {
                let newest = haves.entry(stamp.source).or_insert(stamp.ts);
                *newest = (*newest).max(stamp.ts);
                self.cursor += 1;
                continue;
            }
            match record {
                // An unsigned update that changed nothing here goes to an
                // eager peer as a clock advance: the records before it,
                // which made it redundant, went first on this stream (or
                // the peer had them; what a merged snapshot brought, the
                // peer has too, or the horizon it raised sends it a
                // snapshot). A lazy stream holds some of those back, so it
                // sends the update whole.
                Entry::Unchanged(e)
                    if !lazy && e.signature.is_none() && !self.known.has(e.source, e.ts) =>
                {
                    self.known.observe(e.source, e.ts);
                    claims.advances.push(e.stamp());
                }
                // Sent unless the peer has it; one clock lookup for both.
                Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. } => {
                    match self.known.observe_if(e.source, e.ts, || w.put(e)) {
                        Ok(sent) => count += u64::from(sent),
                        Err(err) => {
                            w.abandon();
                            return Err(err.into());
                        }
                    }
                }
                Entry::Advance(stamp) if !self.known.has(stamp.source, stamp.ts) => {
                    self.known.observe(stamp.source, stamp.ts);
                    claims.advances.push(*stamp);
                }
                Entry::Proven(proof) if !self.known.has(proof.stamp.source, proof.stamp.ts) => {
                    self.known.observe(proof.stamp.source, proof.stamp.ts);
                    claims.proofs.push(proof);
                }
                _ => {}
            }
            self.cursor += 1;
        }
        if count == 0 {
            w.abandon();
        } else {
            w.finish();
            self.stats.frames_sent += 1;
            self.stats.updates_sent += count;
        }
        self.stats.frames_sent += claims.write(out)?;
        if !haves.is_empty() {
            for (&source, &ts) in &haves {
                self.announced.observe(source, ts);
            }
            let haves: Vec<Stamp> =
                haves.into_iter().map(|(source, ts)| Stamp { source, ts }).collect();
            let mut w = Writer::begin(out, Kind::Have);
            w.put(&haves)?;
            w.finish();
            self.stats.frames_sent += 1;
        }
        Ok(())
    }

    /// Lazy relay: the records of newly wanted sources that the cursor
    /// already passed, in log order (so per source in timestamp order), before
    /// anything newer; a snapshot when some of them are gone.
    fn send_backfill<T: Reduce>(
        &mut self,
        core: &Core<T>,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        if self.backfill.is_empty() {
            return Ok(());
        }
        let sources = std::mem::take(&mut self.backfill);
        let history = &core.history;
        if sources.iter().any(|&s| history.horizon().get(s) > self.known.get(s)) {
            // Some are gone: the snapshot (sent next) holds them all.
            self.need_snapshot = true;
            return Ok(());
        }
        let mut w = Writer::begin(out, Kind::Updates);
        let mut count = 0u64;
        // Advances and proofs wait in `claims` until an update follows them
        // (then they go first, keeping per-source order) or the end.
        let mut claims = Claims::default();
        for seq in history.first_seq()..self.cursor.min(history.end_seq()) {
            let Some(record) = history.get(seq) else { continue };
            let Some(stamp) = record.stamp() else { continue };
            if !sources.contains(&stamp.source) || self.known.has(stamp.source, stamp.ts) {
                continue;
            }
            match record {
                Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. } => {
                    if !claims.is_empty() {
                        if count > 0 {
                            w.finish();
                            self.stats.frames_sent += 1;
                        } else {
                            w.abandon();
                        }
                        self.stats.frames_sent += claims.write(out)?;
                        w = Writer::begin(out, Kind::Updates);
                        count = 0;
                    }
                    if let Err(err) = w.put(e) {
                        w.abandon();
                        return Err(err.into());
                    }
                    count += 1;
                    self.stats.updates_sent += 1;
                    if w.body_len() >= core.config.batch_bytes {
                        w.finish();
                        self.stats.frames_sent += 1;
                        w = Writer::begin(out, Kind::Updates);
                        count = 0;
                    }
                }
                Entry::Advance(_) | Entry::Proven(_) => {
                    if count > 0 {
                        w.finish();
                        self.stats.frames_sent += 1;
                        w = Writer::begin(out, Kind::Updates);
                        count = 0;
                    }
                    match record {
                        Entry::Proven(proof) => claims.proofs.push(proof),
                        _ => claims.advances.push(stamp),
                    }
                }
                Entry::Merge { .. }
                | Entry::Covered { .. }
                | Entry::Collected { .. }
                | Entry::Receiving { .. } => continue,
            }
            self.known.observe(stamp.source, stamp.ts);
        }
        if count > 0 {
            w.finish();
            self.stats.frames_sent += 1;
        } else {
            w.abandon();
        }
        self.stats.frames_sent += claims.write(out)?;
        Ok(())
    }
}

/// Whether a stream goes on after a frame.
enum Flow {
    Continue,
    /// The peer closed it.
    Closed(CloseReason),
    /// This side ends it, for a reason that is no protocol violation.
    Refuse(CloseReason),
}

/// Clock advances and proofs gathered for their own frames.
#[derive(Default)]
struct Claims<'a> {
    advances: Vec<Stamp>,
    proofs: Vec<&'a Proof>,
}

impl Claims<'_> {
    fn is_empty(&self) -> bool {
        self.advances.is_empty() && self.proofs.is_empty()
    }

    /// Writes what was gathered (advances first) and empties it; returns
    /// the number of frames written.
    fn write(&mut self, out: &mut Vec<u8>) -> Result<u64, SessionError> {
        let mut frames = 0;
        if !self.advances.is_empty() {
            let mut w = Writer::begin(out, Kind::Advance);
            w.put(&self.advances)?;
            w.finish();
            self.advances.clear();
            frames += 1;
        }
        if !self.proofs.is_empty() {
            let mut w = Writer::begin(out, Kind::Proofs);
            w.put(&self.proofs)?;
            w.finish();
            self.proofs.clear();
            frames += 1;
        }
        Ok(frames)
    }
}

fn frame_name<U>(frame: &Frame<U>) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::Updates => "Updates",
        Frame::SnapshotBegin { .. } => "SnapshotBegin",
        Frame::SnapshotClock(_) => "SnapshotClock",
        Frame::Ranges(_) => "Ranges",
        Frame::SnapshotPart { .. } => "SnapshotPart",
        Frame::SnapshotEnd { .. } => "SnapshotEnd",
        Frame::Sync => "Sync",
        Frame::Close(_) => "Close",
        Frame::Advance(_) => "Advance",
        Frame::Clock(_) => "Clock",
        Frame::Have(_) => "Have",
        Frame::Want(_) => "Want",
        Frame::Unwant(_) => "Unwant",
        Frame::Proofs(_) => "Proofs",
    }
}

/// Makes the open stream (other than `except`) that is known to have the
/// most of `source`, if more than this replica, its parent, and asks it for
/// the source; with `expect = Some((ts, now))` it owes `ts` within the relay
/// timeout. Returns the stream chosen.
fn adopt<T: Reduce>(
    core: &mut Core<T>,
    streams: &mut BTreeMap<StreamId, Stream>,
    source: SourceId,
    except: StreamId,
    expect: Option<(Timestamp, u64)>,
) -> Option<StreamId> {
    let mine = core.clock.get(source);
    let (&sid, s) = streams
        .iter_mut()
        // A peer that sends nothing would never serve the Want.
        .filter(|(sid, s)| {
            **sid != except && !s.ended && s.opts.receives && s.peer.is_some_and(|p| p.sends)
        })
        .max_by_key(|(_, s)| s.known.get(source))
        .filter(|(_, s)| s.known.get(source) > mine)?;
    let origin = s.peer.is_some_and(|p| p.id == source);
    let mut parent = Parent::new(sid, s.known.get(source), origin);
    if let Some((ts, now)) = expect {
        parent.expect(ts, now, core.config.relay_timeout_millis);
    }
    core.parents.insert(source, parent);
    s.intents.insert(source, Some(mine));
    Some(sid)
}

/// Splits `data` into frames and handles each, stopping at the first error
/// or Close. Returns how many bytes were consumed.
fn handle_frames<T: Reduce>(
    stream: &mut Stream,
    id: StreamId,
    core: &mut Core<T>,
    now: u64,
    data: &[u8],
) -> (usize, Result<Flow, PeerMisbehaved>) {
    let mut at = 0;
    while data.len() - at >= 4 {
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&data[at..at + 4]);
        let len = u32::from_le_bytes(prefix) as usize;
        if len > core.config.max_frame {
            let limit = core.config.max_frame as u64;
            return (at, Err(PeerMisbehaved::FrameTooLarge { len: len as u64, limit }));
        }
        if len == 0 {
            return (at, Err(PeerMisbehaved::EmptyFrame));
        }
        if data.len() - at - 4 < len {
            break;
        }
        let body = &data[at + 4..at + 4 + len];
        at += 4 + len;
        match stream.handle_frame(id, core, now, body) {
            Ok(Flow::Continue) => {}
            other => return (at, other),
        }
    }
    (at, Ok(Flow::Continue))
}

/// Streams: each is one peer's session with this replica.
impl<T: Reduce> Replica<T> {
    /// Opens a stream to a peer; its Hello is the first thing
    /// [`poll_transmit`](Replica::poll_transmit) writes.
    pub fn open(&mut self, opts: StreamOpts) -> Result<StreamId, crate::ReplicaError> {
        if self.core.disposed {
            return Err(crate::ReplicaError::Disposed);
        }
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        let mut stream =
            Stream::new(opts, &self.core.clock, self.core.floor, self.core.stats.snapshots);
        if !stream.opts.sends {
            stream.started = true;
            stream.cursor = self.core.history.end_seq();
            stream.mark_sync(id, &mut self.core, true);
        } else if !stream.opts.await_clock {
            stream.start(&self.core);
        }
        if !stream.opts.receives {
            stream.mark_sync(id, &mut self.core, false);
        }
        self.streams.insert(id, stream);
        Ok(id)
    }

    /// Feeds bytes received on a stream: any split of the peer's output, in
    /// order. Complete frames are handled at once; a partial one waits.
    ///
    /// On a protocol violation the stream ends, a Close with the reason is
    /// queued for the peer, and nothing from the offending frame is applied;
    /// the replica and its other streams go on.
    pub fn handle(&mut self, id: StreamId, now: u64, bytes: &[u8]) -> Result<(), SessionError> {
        let Replica { core, streams, .. } = self;
        let stream = streams.get_mut(&id).filter(|s| !s.ended).ok_or(SessionError::NotOpen(id))?;
        // What this call records stays through a collection it triggers (a
        // newcomer's history, then the Sync that takes the peer's floor):
        // a subscriber has had no chance to read it yet.
        let recorded_from = core.history.end_seq();
        stream.stats.bytes_received += bytes.len() as u64;
        let mut pending = std::mem::take(&mut stream.recv);
        let handled = catch_unwind(AssertUnwindSafe(|| {
            if pending.is_empty() {
                let (consumed, flow) = handle_frames(stream, id, core, now, bytes);
                pending.extend_from_slice(&bytes[consumed..]);
                flow
            } else {
                pending.extend_from_slice(bytes);
                let (consumed, flow) = handle_frames(stream, id, core, now, &pending);
                pending.drain(..consumed);
                flow
            }
        }));
        let flow = match handled {
            Ok(flow) => flow,
            // The user's code panicked on a frame: the frames after it in
            // these bytes are lost, and a stream that went on would take
            // the next ones over a gap (a later update of a source past
            // missing ones). It ends as if its link were cut; a new one
            // brings all again.
            Err(panic) => {
                self.abort_quietly(id);
                resume_unwind(panic);
            }
        };
        stream.recv = pending;
        // Bytes of a part still coming are progress too: a part may be as
        // large as a frame may, and the stall limit bounds silence, not how
        // long a part takes on a slow link. Counted once the frames are
        // handled, for the snapshot coming in then: bytes that began one
        // count for it (its begin, and what came with it).
        if stream.snapshot_in.is_some() && !bytes.is_empty() {
            stream.snapshot_heard = now;
            stream.snapshot_bytes = stream.snapshot_bytes.saturating_add(bytes.len() as u64);
        }
        // A frame decoded but not applied (a malformed tail, a frame before
        // Hello, a stream that does not receive) leaves the inbox as large
        // as the frame: keep no more than an applied frame keeps.
        core.inbox.shrink_to(crate::replica::KEEP_ENVELOPES);
        for (to, source) in std::mem::take(&mut core.unwants) {
            if let Some(s) = streams.get_mut(&to).filter(|s| !s.ended) {
                s.intents.insert(source, None);
            }
        }
        // What arrived here may complete another stream's sync.
        let waiting: Vec<StreamId> = streams
            .iter_mut()
            .filter(|(_, s)| !s.ended && s.sync_frame && !s.sync_received)
            .map(|(&sid, s)| {
                s.settle(sid, core, now);
                sid
            })
            .collect();
        let result = match flow {
            Ok(Flow::Continue) => Ok(()),
            Ok(Flow::Closed(reason)) => {
                self.end_stream(id, EndReason::Remote(reason));
                Ok(())
            }
            Ok(Flow::Refuse(reason)) => {
                self.end_stream(id, EndReason::Local(reason));
                Ok(())
            }
            Err(e) => {
                self.end_stream(id, EndReason::Local(CloseReason::Misbehaved(e.clone())));
                Err(SessionError::Peer(e))
            }
        };
        self.close_if_done(id);
        for sid in waiting {
            self.close_if_done(sid);
        }
        self.collect_keeping(recorded_from);
        result
    }

    /// Appends the stream's next frames to `out` and returns how many bytes
    /// were added; call until it returns 0. A stream that has ended (or was
    /// never opened) writes nothing.
    ///
    /// Frames are made on demand from the history, so a stream that is not
    /// polled costs no memory: a slow peer is simply read from further back,
    /// and one that falls behind the history gets a snapshot.
    pub fn poll_transmit(
        &mut self,
        id: StreamId,
        out: &mut Vec<u8>,
    ) -> Result<usize, SessionError> {
        let Replica { core, streams, .. } = self;
        let Some(stream) = streams.get_mut(&id) else { return Ok(0) };
        let before = out.len();
        let catching_up = stream.catching_up;
        let written = match catch_unwind(AssertUnwindSafe(|| stream.transmit(id, core, out))) {
            Ok(written) => written,
            // The user's `Serialize` panicked mid-frame: the stream counts
            // as sent what it was writing, which the peer will never get.
            // It ends as if its link were cut, its partial frame dropped.
            Err(panic) => {
                out.truncate(before);
                self.abort_quietly(id);
                resume_unwind(panic);
            }
        };
        if stream.catching_up
            && stream.snapshot_out.is_none()
            && core.history.end_seq().saturating_sub(stream.cursor) < core.history.limit() as u64
        {
            // What it has yet to send fits in the log again.
            stream.catching_up = false;
        }
        if catching_up || stream.catching_up {
            self.keep_for_snapshots();
        }
        if let Some(stream) = self.streams.get(&id)
            && stream.ended
            && stream.close_out.is_none()
        {
            self.streams.remove(&id);
        }
        self.close_if_done(id);
        self.collect_if_due();
        written
    }

    /// Has the history keep what the streams catching up after a snapshot
    /// need: the records from the earliest one's cursor on (see
    /// `send_batch`).
    fn keep_for_snapshots(&mut self) {
        let from =
            self.streams.values().filter(|s| s.catching_up && !s.ended).map(|s| s.cursor).min();
        self.core.history.keep_for_snapshots(from);
    }

    /// Runs a collection that waited for the snapshots being sent (their
    /// parts are cut by position, which collecting moves).
    pub(crate) fn collect_if_due(&mut self) -> usize {
        self.collect_keeping(u64::MAX)
    }

    /// [`collect_if_due`](Self::collect_if_due), keeping the history from
    /// `recorded_from` on as well.
    fn collect_keeping(&mut self, recorded_from: u64) -> usize {
        // Nor while a snapshot comes in: its parts, cut at its floor, may
        // hold what the tombstones collected now would have deleted.
        if !self.core.collect_pending
            || !self.core.receiving.is_empty()
            || self.streams.values().any(|s| s.snapshot_out.is_some())
        {
            return 0;
        }
        // The history below the floor goes too, but not what a stream has
        // yet to send: its peer most likely has it (it is stable), but the
        // stream cannot know that, and would send a snapshot instead.
        let keep_from = self
            .streams
            .values()
            .filter(|s| !s.ended && s.started && s.sends_updates())
            .map(|s| s.cursor)
            .min()
            .unwrap_or(u64::MAX)
            .min(recorded_from);
        self.core.collect_now(keep_from)
    }

    /// Closes a stream, telling the peer (the Close is the stream's last
    /// frame from [`poll_transmit`](Replica::poll_transmit)).
    pub fn close(&mut self, id: StreamId) {
        self.end_stream(id, EndReason::Local(CloseReason::Closed));
    }

    /// Drops a stream without telling the peer, as when a link is cut.
    pub fn abort(&mut self, id: StreamId) {
        self.end_stream(id, EndReason::Aborted);
    }

    /// [`abort`](Replica::abort) after the user's code panicked: no
    /// collection runs meanwhile (it would run the user's code again, and
    /// could drop records a subscriber has not read); it waits for the
    /// next call that runs one.
    fn abort_quietly(&mut self, id: StreamId) {
        let pending = std::mem::replace(&mut self.core.collect_pending, false);
        self.end_stream(id, EndReason::Aborted);
        self.core.collect_pending |= pending;
    }

    /// A local update's `reduce` panicked at `ts`, or its change could not
    /// be signed: the state may hold part of it, with no record
    /// ([`Replica::is_poisoned`]). The stamp is spent (what is in the state
    /// carries it, so no later write may reuse it), and the snapshots going
    /// out, made from the state part by part, are cut short: a peer would
    /// take the leftover from them. No snapshot starts until a rejoin.
    pub(crate) fn poison(&mut self, ts: Timestamp) {
        self.core.poisoned = true;
        self.core.last = self.core.last.max(ts);
        let sending: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.ended && s.snapshot_out.is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in sending {
            self.abort_quietly(id);
        }
    }

    /// The highest collection floor among the peers this replica streams
    /// with (each one's Hello, or its snapshot's begin, said it).
    pub(crate) fn highest_peer_floor(&self) -> Timestamp {
        let open = self.streams.values().filter(|s| !s.ended);
        open.map(|s| s.peer_floor).max().unwrap_or(Timestamp::ZERO)
    }

    /// How many streams are open.
    pub fn stream_count(&self) -> usize {
        self.streams.values().filter(|s| !s.ended).count()
    }

    /// The open streams.
    pub fn open_streams(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams.iter().filter(|(_, s)| !s.ended).map(|(&id, _)| id)
    }

    /// A stream's counters, while it exists.
    pub fn stream_stats(&self, id: StreamId) -> Option<StreamStats> {
        self.streams.get(&id).map(|s| s.stats)
    }

    /// Whether both directions of a stream have synced.
    pub fn is_synced(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_some_and(|s| s.sync_sent && s.sync_received)
    }

    /// The source id of the peer on a stream, once its Hello arrived.
    pub fn peer_id(&self, id: StreamId) -> Option<SourceId> {
        self.streams.get(&id).and_then(|s| s.peer.map(|p| p.id))
    }

    /// What the peer on a stream is known to hold, once its Hello arrived:
    /// its Hello clock, plus everything sent or announced to it or received
    /// from it since (sent or announced: perhaps still on the way, or to
    /// be pulled from another peer). A lower bound of the peer's clock for
    /// what it will hold once the streams deliver; for
    /// [`Clock::stable_point`] pair it with [`peer_heard`](Replica::peer_heard),
    /// since the peer may have written since, older than what it was sent.
    ///
    /// ```
    /// use repred::{LwwMap, Network, Replica, SourceId};
    ///
    /// let mut net = Network::new();
    /// let a = net.add(Replica::new(SourceId::new("a")?, LwwMap::<String, u32>::default()));
    /// let b = net.add(Replica::new(SourceId::new("b")?, LwwMap::<String, u32>::default()));
    /// let link = net.link(a, b);
    /// net.update(a, LwwMap::set("k".to_string(), 1))?;
    /// net.pump();
    /// let [(_, on_a), _] = net.streams(link);
    /// assert_eq!(net[a].peer_known(on_a).as_ref(), Some(net[a].clock()), "b holds what a sent");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn peer_known(&self, id: StreamId) -> Option<Clock> {
        let stream = self.streams.get(&id).filter(|s| s.peer.is_some())?;
        // What a lazy stream announced, the peer pulls from its parent if
        // it lacks it, as it takes what was sent.
        let mut known = stream.known.clone();
        known.merge(&stream.announced);
        Some(known)
    }

    /// The newest timestamp the peer on a stream has shown it holds, once
    /// its Hello arrived: the greatest of its Hello clock and of every
    /// update, announcement and snapshot clock it sent on the stream
    /// (nothing this side sent it). Whatever the peer writes after it
    /// sent that is newer (its timestamps pass all it has seen), and what
    /// it wrote before went out on the stream first (in its history, or in
    /// a snapshot, which the history after it waits for): so every write of the
    /// peer's this replica lacks is either in the peer's Hello clock or
    /// newer than this. [`Clock::stable_point`] over the
    /// [`peer_known`](Replica::peer_known) clocks, capped just above each
    /// stream's `peer_heard`, is a point the stream's peer will not write
    /// under.
    ///
    /// ```
    /// use repred::{LwwMap, Network, Replica, SourceId};
    ///
    /// let mut net = Network::new();
    /// let a = net.add(Replica::new(SourceId::new("a")?, LwwMap::<String, u32>::default()));
    /// let b = net.add(Replica::new(SourceId::new("b")?, LwwMap::<String, u32>::default()));
    /// let link = net.link(a, b);
    /// let stamp = net.update(b, LwwMap::set("k".to_string(), 1))?.expect("a change");
    /// net.advance(5);
    /// net.update(a, LwwMap::set("k".to_string(), 2))?;
    /// net.pump();
    /// let [(_, on_a), (_, on_b)] = net.streams(link);
    /// // b sent its own write; a's write, which a sent b, b has not shown.
    /// assert_eq!(net[a].peer_heard(on_a), Some(stamp.ts));
    /// assert!(net[b].peer_heard(on_b) > Some(stamp.ts));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn peer_heard(&self, id: StreamId) -> Option<Timestamp> {
        self.streams.get(&id).filter(|s| s.peer.is_some()).map(|s| s.shown)
    }

    fn close_if_done(&mut self, id: StreamId) {
        let Some(stream) = self.streams.get_mut(&id).filter(|s| !s.ended) else { return };
        if let Some(reason) = stream.refuse.take() {
            self.end_stream(id, EndReason::Local(reason));
        } else if stream.done {
            self.end_stream(id, EndReason::Local(CloseReason::Done));
        }
    }

    pub(crate) fn end_stream(&mut self, id: StreamId, reason: EndReason) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if stream.ended {
            return;
        }
        stream.ended = true;
        self.core.receiving.remove(&id);
        stream.close_out = match &reason {
            EndReason::Local(r) => Some(r.clone()),
            EndReason::Remote(_) | EndReason::Aborted => None,
        };
        if stream.close_out.is_none() {
            self.streams.remove(&id);
        }
        self.core.emit(Event::End { stream: id, reason });
        let open = self.stream_count();
        self.core.emit(Event::Unstream(open));
        self.reparent(id);
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.snapshot_out = None;
        }
        self.keep_for_snapshots();
        self.collect_if_due();
    }

    /// Lazy relay: the sources `gone` pushed to us are asked for from
    /// another peer known to have more, if any; otherwise the next Have for
    /// them picks a parent.
    fn reparent(&mut self, gone: StreamId) {
        let Replica { core, streams, .. } = self;
        core.neighbours.retain(|_, stream| *stream != gone);
        core.demoted.retain(|_, stream| *stream != gone);
        let orphans: Vec<SourceId> =
            core.parents.iter().filter(|(_, p)| p.stream == gone).map(|(&s, _)| s).collect();
        for source in orphans {
            core.parents.remove(&source);
            adopt(core, streams, source, gone, None);
        }
    }

    /// Lazy relay's clock: a parent that owes an announced update past its
    /// deadline loses the role to another peer that announced more, and
    /// cannot take it back by announcing, only by delivering; a sync waits
    /// no longer for announcements that are overdue. Call it when
    /// [`poll_timeout`](Replica::poll_timeout) says, with the wall time.
    ///
    /// A peer's snapshot that went without a byte of it for
    /// [`Config::snapshot_stall_millis`](crate::Config::snapshot_stall_millis)
    /// is refused here ([`SnapshotRefusal::Stalled`](crate::SnapshotRefusal::Stalled)),
    /// closing its stream, as is one that comes in slower than
    /// [`Config::snapshot_min_rate`](crate::Config::snapshot_min_rate)
    /// ([`SnapshotRefusal::TooSlow`](crate::SnapshotRefusal::TooSlow)).
    pub fn handle_timeout(&mut self, now: u64) {
        self.refuse_stalled_snapshots(now);
        let Replica { core, streams, .. } = self;
        let overdue: Vec<(SourceId, Parent)> = core
            .parents
            .iter()
            .filter(|(_, p)| p.due.is_some_and(|d| d.deadline <= now))
            .map(|(&s, &p)| (s, p))
            .collect();
        for (source, parent) in overdue {
            let Some(due) = parent.due else { continue };
            if core.clock.has(source, due.ts) {
                if let Some(p) = core.parents.get_mut(&source) {
                    p.due = None;
                }
                continue;
            }
            core.demoted.insert(source, parent.stream);
            let expect = Some((due.ts, now));
            if adopt(core, streams, source, parent.stream, expect).is_some() {
                core.unwants.push((parent.stream, source));
            } else if let Some(p) = core.parents.get_mut(&source) {
                // Nobody else has it: stay, and wait for the next
                // announcement rather than spin.
                p.due = None;
            }
        }
        for (to, source) in std::mem::take(&mut core.unwants) {
            if let Some(s) = streams.get_mut(&to).filter(|s| !s.ended) {
                s.intents.insert(source, None);
            }
        }
        let waiting: Vec<StreamId> = streams
            .iter_mut()
            .filter(|(_, s)| !s.ended && s.sync_frame && !s.sync_received)
            .map(|(&sid, s)| {
                s.settle(sid, core, now);
                sid
            })
            .collect();
        for sid in waiting {
            self.close_if_done(sid);
        }
    }

    /// A snapshot coming in holds back others' from other floors, and
    /// collection (see `vet_floor`, `Replica::collect`): one whose sender
    /// went quiet midway, or trickles it in below the minimum rate, is
    /// refused, so that it holds them no longer than the stall limit, or
    /// the snapshot's size at that rate. What its parts merged stays, as
    /// when a link is cut.
    fn refuse_stalled_snapshots(&mut self, now: u64) {
        let (stall, rate) =
            (self.core.config.snapshot_stall_millis, self.core.config.snapshot_min_rate);
        let stalled: Vec<(StreamId, crate::SnapshotRefusal)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.snapshot_deadline(stall, rate).is_some_and(|d| d <= now))
            .map(|(&sid, s)| (sid, s.snapshot_overdue(now, stall)))
            .collect();
        for (sid, why) in stalled {
            let Replica { core, streams, .. } = self;
            let Some(stream) = streams.get_mut(&sid) else { continue };
            let peer = stream.peer;
            let refused = Refused::Untrusted(why);
            if let Ok(Flow::Refuse(reason)) = stream.refuse_snapshot(sid, core, peer, refused) {
                self.end_stream(sid, EndReason::Local(reason));
            }
        }
    }

    /// When [`handle_timeout`](Replica::handle_timeout) is next due (wall
    /// milliseconds), if anything waits for it: a lazy-relay parent owing
    /// an announced update, a sync waiting for announced updates, or a
    /// snapshot coming in (its stall limit, or its minimum rate's).
    pub fn poll_timeout(&self) -> Option<u64> {
        let parents = self.core.parents.values().filter_map(|p| p.due.map(|d| d.deadline));
        let heard = self
            .streams
            .values()
            .filter(|s| !s.ended && s.sync_frame && !s.sync_received)
            .flat_map(|s| s.heard.values().map(|&(_, deadline)| deadline));
        let (stall, rate) =
            (self.core.config.snapshot_stall_millis, self.core.config.snapshot_min_rate);
        let snapshots = self.streams.values().filter_map(|s| s.snapshot_deadline(stall, rate));
        parents.chain(heard).chain(snapshots).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Envelope};

    #[derive(Default)]
    struct Max(u64);

    impl Reduce for Max {
        type Update = u64;
        fn reduce(&mut self, u: u64) -> Option<u64> {
            (u > self.0).then(|| {
                self.0 = u;
                u
            })
        }
        fn snapshot(&self) -> u64 {
            self.0
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    fn frame(kind: Kind, body: &impl serde::Serialize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::begin(&mut out, kind);
        w.put(body).unwrap();
        w.finish();
        out
    }

    /// A lazy replica with one stream whose peer said Hello.
    fn with_peer() -> (Replica<Max>, StreamId) {
        with_peer_config(Config::default().lazy_relay(true))
    }

    /// A replica with one stream whose peer said Hello.
    fn with_peer_config(config: Config) -> (Replica<Max>, StreamId) {
        let mut r = Replica::with_config(SourceId::new("me").unwrap(), Max(0), config);
        let mut peer = Replica::new(SourceId::new("peer").unwrap(), Max(0));
        let p = peer.open(StreamOpts::default()).unwrap();
        let mut hello = Vec::new();
        peer.poll_transmit(p, &mut hello).unwrap();
        let s = r.open(StreamOpts::default()).unwrap();
        r.handle(s, NOW, &hello).unwrap();
        (r, s)
    }

    fn bogus(n: u64) -> Vec<Stamp> {
        (0..n)
            .map(|i| Stamp {
                ts: Timestamp::new(NOW, 0),
                source: SourceId::new(format!("s{i}").as_bytes()).unwrap(),
            })
            .collect()
    }

    #[test]
    fn wants_for_sources_never_seen_are_not_remembered() {
        let (mut r, s) = with_peer();
        r.update(NOW, 1).unwrap();
        let mut want = bogus(1_000);
        want.push(Stamp { ts: Timestamp::ZERO, source: r.id() });
        for _ in 0..3 {
            r.handle(s, NOW, &frame(Kind::Want, &want)).unwrap();
        }
        let stream = &r.streams[&s];
        assert_eq!(stream.eager.len(), 1, "only our own source is wanted");
        assert!(stream.known.len() <= 2, "{} sources known", stream.known.len());
    }

    #[test]
    fn clocks_naming_unknown_sources_are_remembered_up_to_the_limit() {
        let (mut r, s) = with_peer_config(Config::default().max_unknown_sources(500));
        r.update(NOW, 1).unwrap();
        for round in 0..8u64 {
            let clock: Clock = (0..2_000u64)
                .map(|i| {
                    let mut bytes = [0xCD; 16];
                    bytes[..8].copy_from_slice(&(round * 10_000 + i).to_le_bytes());
                    (SourceId::from_bytes(bytes).unwrap(), Timestamp::new(NOW, 0))
                })
                .chain([(r.id(), Timestamp::new(NOW, 0))])
                .collect();
            r.handle(s, NOW, &frame(Kind::Clock, &clock)).unwrap();
        }
        let stream = &r.streams[&s];
        assert!(stream.known.len() <= 501, "{} sources remembered", stream.known.len());
        assert_eq!(stream.known.get(r.id()), Timestamp::new(NOW, 0), "known sources are kept");
    }

    /// A replica with a stream whose peer said Hello, and no events left.
    fn listening(config: Config) -> (Replica<Max>, StreamId) {
        let (mut r, s) = with_peer_config(config);
        while r.poll_event().is_some() {}
        (r, s)
    }

    /// Takes `frames` of updates in through `handle` (the frame's source
    /// table), and the same envelopes one at a time as the loop did before
    /// the table (apply, then note what the peer has), and checks that both
    /// end the same: clock, state, counters, events, history, and the
    /// stream's record of the peer and of unknown sources.
    fn same_as_one_at_a_time(config: Config, frames: &[Vec<Envelope<u64>>]) {
        let (mut framed, fs) = listening(config.clone());
        let (mut single, ss) = listening(config);
        for envelopes in frames {
            let mut out = Vec::new();
            let mut w = Writer::begin(&mut out, Kind::Updates);
            for e in envelopes {
                w.put(e).unwrap();
            }
            w.finish();
            framed.handle(fs, NOW, &out).unwrap();
            let mut stream = single.streams.remove(&ss).unwrap();
            for e in envelopes {
                single.core.apply(NOW, e.clone());
                stream.note_known(&single.core, e.source, e.ts);
            }
            single.streams.insert(ss, stream);
        }
        assert_eq!(framed.clock(), single.clock());
        assert_eq!(framed.state().0, single.state().0);
        assert_eq!(framed.stats(), single.stats());
        assert_eq!(framed.last_timestamp(), single.last_timestamp());
        let events =
            |r: &mut Replica<Max>| std::iter::from_fn(|| r.poll_event()).collect::<Vec<_>>();
        assert_eq!(events(&mut framed), events(&mut single));
        let log = |r: &Replica<Max>| {
            r.entries_from(0).unwrap().map(|(_, e)| e.clone()).collect::<Vec<_>>()
        };
        assert_eq!(log(&framed), log(&single));
        let (f, s) = (&framed.streams[&fs], &single.streams[&ss]);
        assert_eq!((&f.known, f.foreign), (&s.known, s.foreign));
        assert!(framed.core.inbox.is_empty() && framed.core.staged.is_empty());
    }

    fn update(source: SourceId, ts: Timestamp, value: u64) -> Envelope<u64> {
        Envelope::new(source, ts, value)
    }

    #[test]
    fn a_frame_of_mixed_sources_ends_as_one_update_at_a_time() {
        let id = |name: &str| SourceId::new(name).unwrap();
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let t = |n: u16| Timestamp::new(NOW, n);
        let reserved = SourceId::from_hash_raw([0; 16]);
        let future = Timestamp::new(NOW + 3_600_000, 0);
        // A first frame, so that the second finds sources it knows.
        let first = vec![update(a, t(5), 5), update(b, t(2), 2)];
        let mut second = vec![
            update(a, t(6), 6),
            update(b, t(1), 1), // older than the clock
            update(c, t(3), 30),
            update(a, t(6), 60), // a duplicate within the frame
            update(reserved, t(7), 7),
            update(c, Timestamp::ZERO, 8),
            update(b, future, 9),
            update(a, t(4), 4), // older than the frame's own
            update(b, t(8), 1), // new, but changes nothing
        ];
        // Unknown sources, refused, past the limit of unknown sources in
        // the middle of the frame; one of them comes back later.
        for i in 0..6u64 {
            second.push(update(id(&format!("x{i}")), future, i));
            second.push(update(c, t(10 + i as u16), 100 + i));
        }
        second.push(update(id("x1"), t(20), 200));
        let config = Config::default().max_unknown_sources(3);
        same_as_one_at_a_time(config.clone(), &[first.clone(), second.clone()]);
        same_as_one_at_a_time(config.clone(), &[[first.clone(), second.clone()].concat()]);
        // A floor refuses what is new and older than it.
        let (mut framed, fs) = listening(config.clone());
        let (mut single, _) = listening(config);
        framed.collect(t(4));
        single.collect(t(4));
        let mut out = Vec::new();
        let mut w = Writer::begin(&mut out, Kind::Updates);
        for e in [update(c, t(2), 2), update(c, t(5), 5), update(a, t(3), 3)] {
            w.put(&e).unwrap();
        }
        w.finish();
        framed.handle(fs, NOW, &out).unwrap();
        for e in [update(c, t(2), 2), update(c, t(5), 5), update(a, t(3), 3)] {
            single.apply(NOW, e);
        }
        assert_eq!((framed.clock(), framed.stats()), (single.clock(), single.stats()));
        assert_eq!(framed.stats().rejected, 2);
    }

    #[test]
    fn a_frame_of_signed_and_refused_updates_ends_as_one_update_at_a_time() {
        use crate::Identity;
        let signer = Identity::from_secret([7; 32]);
        let forger = Identity::from_secret([8; 32]);
        let outsider = Identity::from_secret([9; 32]);
        let t = |n: u16| Timestamp::new(NOW, n);
        let signed = |who: &Identity, as_: SourceId, ts: Timestamp, value: u64| {
            let mut e = update(as_, ts, value);
            e.signature = Some(Box::new(who.sign(ts, &postcard::to_allocvec(&value).unwrap())));
            e
        };
        let me = signer.id();
        let frame = vec![
            signed(&signer, me, t(1), 1),
            signed(&forger, me, t(2), 2), // a forged signature
            update(me, t(3), 3),          // unsigned
            signed(&signer, me, t(1), 1), // a duplicate: no crypto, old
            signed(&outsider, outsider.id(), t(4), 4), // not on the list
            signed(&signer, me, t(5), 5),
        ];
        let strict = Config::default().allow_only([me]);
        same_as_one_at_a_time(strict, std::slice::from_ref(&frame));
        // Not strict: signed updates are verified, unsigned ones taken.
        same_as_one_at_a_time(Config::default(), &[frame]);
    }

    /// The Clock frame owed to a peer that sent its whole clock shows our
    /// clock as of our Hello: a write made since, not sent yet, must not
    /// count as shown (`peer_heard`), or the peer could collect past it
    /// before it arrives.
    #[test]
    fn the_owed_clock_is_the_clock_of_the_hello() {
        let id = |name: &str| SourceId::new(name).unwrap();
        let mut w = Replica::new(id("w"), Max(0));
        // More sources than a Hello carries whole: w sends a digest.
        for i in 0..=ClockSummary::INLINE_SOURCES as u64 {
            let source = id(&format!("s{i}"));
            assert_eq!(
                w.apply(NOW, update(source, Timestamp::new(NOW, 1), i + 1)),
                Outcome::Applied
            );
        }
        let first = w.update(NOW, 100).unwrap().expect("a new write");
        // p knows w's first write only: its clock, sent whole, differs.
        let mut p = Replica::new(id("p"), Max(0));
        assert_eq!(p.apply(NOW, update(w.id(), first.ts, 100)), Outcome::Applied);
        let on_w = w.open(StreamOpts::receive_only()).unwrap();
        let on_p = p.open(StreamOpts::default()).unwrap();
        let mut hello = Vec::new();
        p.poll_transmit(on_p, &mut hello).unwrap();
        w.handle(on_w, NOW, &hello).unwrap();
        // Written after the Hello; a stream that sends nothing never sends it.
        let second = w.update(NOW + 10, 200).unwrap().expect("a new write");
        let mut out = Vec::new();
        w.poll_transmit(on_w, &mut out).unwrap();
        p.handle(on_p, NOW + 10, &out).unwrap();
        let heard = p.peer_heard(on_p).expect("p heard w's Hello and Clock");
        assert_eq!(heard, first.ts, "w showed its first write, not {second:?}");
    }

    /// A stream at each of `a` and `b`, with default options.
    fn open_pair<T: Reduce>(a: &mut Replica<T>, b: &mut Replica<T>) -> (StreamId, StreamId) {
        (a.open(StreamOpts::default()).unwrap(), b.open(StreamOpts::default()).unwrap())
    }

    /// Moves frames between two streams until neither has anything to
    /// send (bounded).
    fn exchange<T: Reduce>(a: &mut Replica<T>, sa: StreamId, b: &mut Replica<T>, sb: StreamId) {
        for _ in 0..10_000 {
            let mut out = Vec::new();
            let from_a = a.poll_transmit(sa, &mut out).unwrap();
            if from_a > 0 {
                b.handle(sb, NOW, &out).unwrap();
            }
            out.clear();
            let from_b = b.poll_transmit(sb, &mut out).unwrap();
            if from_b > 0 {
                a.handle(sa, NOW, &out).unwrap();
            }
            if from_a == 0 && from_b == 0 {
                return;
            }
        }
        panic!("the streams never went quiet");
    }

    /// A write made while a snapshot is being sent waits for its end:
    /// sent between two parts, it moved the peer's clock for its source
    /// past older writes still to come in the parts, and a stream cut then
    /// left the peer claiming what it never got (the next stream sent it
    /// nothing of them: they differ for good).
    #[test]
    fn a_write_made_during_a_snapshot_waits_for_its_end() {
        type Map = crate::LwwMap<String, u32>;
        let id = |name: &str| SourceId::new(name).unwrap();
        let config = Config::default().snapshot_part_bytes(64).batch_bytes(64);
        let mut y = Replica::with_config(id("y"), Map::default(), config.clone());
        // Each key written three times: the state is the cheaper path.
        for round in 0..3 {
            for i in 0..1_000 {
                y.update(NOW, crate::LwwMap::set(format!("key{i:04}"), round)).unwrap();
            }
        }
        let mut n = Replica::with_config(id("n"), Map::default(), config);
        let (sy, sn) = open_pair(&mut y, &mut n);
        let mut out = Vec::new();
        n.poll_transmit(sn, &mut out).unwrap();
        y.handle(sy, NOW, &out).unwrap();
        // y's Hello and its snapshot's first parts; then a write; then more.
        out.clear();
        y.poll_transmit(sy, &mut out).unwrap();
        y.update(NOW + 1, crate::LwwMap::set("late".to_string(), 2)).unwrap().expect("a write");
        y.poll_transmit(sy, &mut out).unwrap();
        n.handle(sn, NOW + 1, &out).unwrap();
        assert_eq!(n.stats().snapshots, 0, "the snapshot is still on its way");
        assert_eq!(n.clock().get(y.id()), Timestamp::ZERO, "n claims none of y's writes");
        // The stream is cut; a new one brings everything.
        y.abort(sy);
        n.abort(sn);
        let (sy, sn) = open_pair(&mut y, &mut n);
        exchange(&mut y, sy, &mut n, sn);
        assert_eq!(n.stats().snapshots, 1, "brought up by snapshot");
        assert_eq!(n.clock(), y.clock());
        assert_eq!(n.state(), y.state(), "n holds every write of y's");
    }

    /// The floor a Hello carries is the one of the moment the stream
    /// opened, as its clock is: a collection between the open and the
    /// Hello's sending raised the floor past a write the clock lacks, the
    /// peer took that floor and refused the write when it came.
    #[test]
    fn a_hello_carries_the_floor_of_its_clock() {
        type Map = crate::LwwMap<String, u32>;
        let id = |name: &str| SourceId::new(name).unwrap();
        let mut y = Replica::new(id("y"), Map::default());
        let mut n = Replica::new(id("n"), Map::default());
        let (sy, sn) = open_pair(&mut y, &mut n);
        // n's Hello first: y's stream starts, and keeps what it has yet to
        // send through the collection.
        let mut out = Vec::new();
        n.poll_transmit(sn, &mut out).unwrap();
        y.handle(sy, NOW, &out).unwrap();
        // After the open: a write of m's, which n lacks, then a
        // collection past it.
        let w =
            Envelope::new(id("m"), Timestamp::new(NOW, 0), crate::LwwMap::set("k".to_string(), 1));
        assert_eq!(y.apply(NOW, w), Outcome::Applied);
        y.collect(Timestamp::new(NOW + 5, 0));
        exchange(&mut y, sy, &mut n, sn);
        assert!(n.stats().rejected == 0, "n refused nothing: {:?}", n.stats());
        assert_eq!(n.clock(), y.clock());
        assert_eq!(n.state(), y.state(), "n holds m's write");
    }

    /// The records written while a snapshot goes out wait for its end
    /// (see `send_batch`), so the history keeps them past its limit (up to
    /// twice it): evicted, the stream found them gone at the end and sent
    /// another snapshot, and under steady writes another, never done.
    #[test]
    fn writes_during_a_snapshot_are_kept_for_after_it() {
        type Map = crate::LwwMap<String, u32>;
        let id = |name: &str| SourceId::new(name).unwrap();
        let config = Config::default().history_limit(32).snapshot_part_bytes(64).batch_bytes(64);
        let mut y = Replica::with_config(id("y"), Map::default(), config.clone());
        for i in 0..1_000 {
            y.update(NOW, crate::LwwMap::set(format!("key{i:04}"), i)).unwrap();
        }
        let mut n = Replica::with_config(id("n"), Map::default(), config);
        let (sy, sn) = open_pair(&mut y, &mut n);
        let mut out = Vec::new();
        n.poll_transmit(sn, &mut out).unwrap();
        y.handle(sy, NOW, &out).unwrap();
        // More writes than the limit while the snapshot goes out, part by part.
        for i in 0..48 {
            out.clear();
            y.poll_transmit(sy, &mut out).unwrap();
            n.handle(sn, NOW, &out).unwrap();
            y.update(NOW + 1, crate::LwwMap::set(format!("late{i:02}"), i)).unwrap();
        }
        assert_eq!(n.stats().snapshots, 0, "the snapshot took longer than the writes");
        // Once the snapshot is in, writes go on while the stream sends what
        // was written meanwhile, a batch at a time: what it has yet to send
        // stays kept until it fits in the log again (let go at the end,
        // the next write evicted it, and another snapshot followed).
        for i in 0..400 {
            out.clear();
            y.poll_transmit(sy, &mut out).unwrap();
            n.handle(sn, NOW + 2, &out).unwrap();
            out.clear();
            n.poll_transmit(sn, &mut out).unwrap();
            y.handle(sy, NOW + 2, &out).unwrap();
            if n.stats().snapshots == 1 {
                y.update(NOW + 2, crate::LwwMap::set(format!("later{i:03}"), i)).unwrap();
            }
        }
        exchange(&mut y, sy, &mut n, sn);
        assert_eq!(y.stream_stats(sy).map(|s| s.snapshots_sent), Some(1), "one snapshot");
        assert_eq!(n.clock(), y.clock());
        assert_eq!(n.state(), y.state());
        // Once sent, the history goes back under its limit.
        y.update(NOW + 2, crate::LwwMap::set("after".to_string(), 1)).unwrap();
        assert!(y.history_len() <= 32, "{} records", y.history_len());
    }

    /// A floor taken after the stream opened goes in the Hello when the
    /// clock is still the one it summarises: with the floor of the open,
    /// lower than the peer's, the peer refused the snapshot that followed
    /// as from below its floor.
    #[test]
    fn a_hello_carries_a_floor_taken_since_for_the_same_clock() {
        type Map = crate::LwwMap<String, u32>;
        let id = |name: &str| SourceId::new(name).unwrap();
        let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
        let shared = Envelope::new(id("m"), Timestamp::new(NOW, 0), set("k", 1));
        let mut n = Replica::new(id("n"), Map::default());
        assert_eq!(n.apply(NOW, shared.clone()), Outcome::Applied);
        n.collect(Timestamp::new(NOW + 5, 0));
        // y holds all n holds, and many overwrites of its own since: a
        // snapshot is n's cheaper path.
        let mut y = Replica::new(id("y"), Map::default());
        assert_eq!(y.apply(NOW, shared), Outcome::Applied);
        for round in 0..3 {
            for i in 0..1_000 {
                y.update(NOW + 10, set(&format!("key{i:04}"), round)).unwrap();
            }
        }
        let (sy, sn) = open_pair(&mut y, &mut n);
        // n's Hello reaches y before y sends its own: y takes n's floor.
        let mut out = Vec::new();
        n.poll_transmit(sn, &mut out).unwrap();
        y.handle(sy, NOW + 10, &out).unwrap();
        assert_eq!(y.floor(), n.floor());
        exchange(&mut y, sy, &mut n, sn);
        assert_eq!(n.stats().snapshots_refused, 0, "{:?}", n.stats());
        assert_eq!(n.stats().snapshots, 1);
        assert_eq!(n.clock(), y.clock());
        assert_eq!(n.state(), y.state());
    }

    /// A Hello whose clock is the one ours stood for gives its floor only
    /// if our clock has not moved since: a write taken since, below that
    /// floor and lacked by the peer, makes us stale, not floored past it
    /// (which had the peer refuse it for good).
    #[test]
    fn a_floor_is_not_taken_over_a_write_taken_since_the_open() {
        type Map = crate::LwwMap<String, u32>;
        let id = |name: &str| SourceId::new(name).unwrap();
        let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
        let shared = Envelope::new(id("s"), Timestamp::new(NOW, 0), set("k", 1));
        let mut y = Replica::new(id("y"), Map::default());
        let mut n = Replica::new(id("n"), Map::default());
        for r in [&mut y, &mut n] {
            assert_eq!(r.apply(NOW, shared.clone()), Outcome::Applied);
        }
        let floor = Timestamp::new(NOW + 5, 0);
        n.collect(floor);
        let (sy, sn) = open_pair(&mut y, &mut n);
        // Since the open, y took a write n lacks, below n's floor.
        let below = Envelope::new(id("q"), Timestamp::new(NOW + 1, 0), set("q", 2));
        assert_eq!(y.apply(NOW + 1, below), Outcome::Applied);
        let mut out = Vec::new();
        n.poll_transmit(sn, &mut out).unwrap();
        y.handle(sy, NOW + 10, &out).unwrap();
        assert_eq!(y.floor(), Timestamp::ZERO, "y did not take n's floor");
        assert_eq!(y.stale_floor(), Some(floor), "y is stale");
    }

    /// A peer holding nothing vouches for nothing below its floor (one
    /// raised by hand on an empty replica): our clock covers its empty
    /// one, yet the floor is not taken over a key we hold that a delete
    /// below it, which we may lack, was collected for; it would let a
    /// snapshot from that floor be merged over the key. We are stale
    /// instead (`holds_news_below` counts whatever we hold below it).
    #[test]
    fn a_floor_is_not_taken_from_a_peer_holding_nothing_over_what_we_hold() {
        type Map = crate::LwwMap<String, u32>;
        let id = |name: &str| SourceId::new(name).unwrap();
        let mut y = Replica::new(id("y"), Map::default());
        let set = Envelope::new(id("s"), Timestamp::new(NOW, 0), crate::LwwMap::set("k".into(), 1));
        assert_eq!(y.apply(NOW, set), Outcome::Applied);
        let mut empty = Replica::new(id("e"), Map::default());
        let floor = Timestamp::new(NOW + 5, 0);
        empty.collect(floor);
        let (sy, se) = open_pair(&mut y, &mut empty);
        let mut out = Vec::new();
        empty.poll_transmit(se, &mut out).unwrap();
        y.handle(sy, NOW + 10, &out).unwrap();
        assert_eq!(y.floor(), Timestamp::ZERO, "y did not take the empty peer's floor");
        assert_eq!(y.stale_floor(), Some(floor), "y holds a write below it: stale");
        // Holding nothing below it, a replica takes it: nothing here can
        // come back, and what it lacks comes by snapshot.
        let above =
            Envelope::new(id("s"), Timestamp::new(NOW + 6, 0), crate::LwwMap::set("j".into(), 2));
        let mut z = Replica::new(id("z"), Map::default());
        assert_eq!(z.apply(NOW + 6, above), Outcome::Applied);
        let mut empty = Replica::new(id("e"), Map::default());
        empty.collect(floor);
        let (sz, se) = open_pair(&mut z, &mut empty);
        out.clear();
        empty.poll_transmit(se, &mut out).unwrap();
        z.handle(sz, NOW + 10, &out).unwrap();
        assert_eq!(z.floor(), floor);
        assert_eq!(z.stale_floor(), None);
    }

    /// A fresh replica brought up by a snapshot from a peer whose floor
    /// rose after its Hello takes that floor at the snapshot's end (the
    /// begin says it): before, it kept floor zero, took writes below the
    /// floor the snapshot's state had forgotten the deletes of, and held
    /// any snapshot it owed that peer for ever (a peer floor above its).
    #[test]
    fn a_snapshot_from_a_floor_risen_since_the_hello_gives_its_floor() {
        type Map = crate::LwwMap<String, u32>;
        let id = |name: &str| SourceId::new(name).unwrap();
        let config = Config::default().history_limit(8);
        let mut y = Replica::with_config(id("y"), Map::default(), config.clone());
        for i in 0..100 {
            y.update(NOW, crate::LwwMap::set(format!("key{i:03}"), i)).unwrap();
        }
        let mut n = Replica::with_config(id("n"), Map::default(), config);
        let (sy, sn) = open_pair(&mut y, &mut n);
        let mut out = Vec::new();
        y.poll_transmit(sy, &mut out).unwrap();
        n.handle(sn, NOW, &out).unwrap();
        // After its Hello (floor zero), y collects.
        let floor = Timestamp::new(NOW + 5, 0);
        y.collect(floor);
        exchange(&mut y, sy, &mut n, sn);
        assert_eq!(n.stats().snapshots, 1, "brought up by snapshot");
        assert_eq!(n.floor(), floor, "n took the snapshot's floor");
        assert!(y.is_synced(sy) && n.is_synced(sn));
        assert_eq!(n.state(), y.state());
    }

    #[test]
    fn announcements_from_a_peer_that_sends_nothing_are_ignored() {
        let config = Config::default().lazy_relay(true);
        let mut r = Replica::with_config(SourceId::new("me").unwrap(), Max(0), config);
        let mut peer = Replica::new(SourceId::new("peer").unwrap(), Max(0));
        let p = peer.open(StreamOpts::receive_only()).unwrap();
        let mut hello = Vec::new();
        peer.poll_transmit(p, &mut hello).unwrap();
        let s = r.open(StreamOpts::default()).unwrap();
        r.handle(s, NOW, &hello).unwrap();
        r.handle(s, NOW, &frame(Kind::Have, &bogus(10))).unwrap();
        assert!(r.core.parents.is_empty());
        assert!(r.streams[&s].intents.is_empty());
    }
}

//! The per-connection protocol: Hello, history or snapshot, Sync, live.

mod deadline;
mod floor;
mod receive;
mod relay;
mod send;
mod stream;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use crate::frame::ClockSummary;
use crate::reconcile::{Range, Reconciliation};
use crate::replica::Core;
use crate::snapshot::{Incoming, Outgoing};
use crate::{
    ChannelBinding, Clock, CloseReason, EndReason, Event, PeerMisbehaved, Reduce, Replica,
    SourceId, StreamId, Timestamp,
};

use receive::handle_frames;
pub(crate) use relay::{Demotions, Parent};

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
    /// What the transport says both ends of this stream, and no other
    /// stream, share (a TLS exporter value; see [`ChannelBinding`]), and
    /// which end this is. Our Hello's signature covers it from our side,
    /// and the peer's must from its side: a signed Hello replayed from
    /// another stream, or sent back to us, then cuts its replayer off
    /// ([`PeerMisbehaved::HelloSignature`]) instead of passing for its
    /// signer. Both ends must pass the same value from opposite sides, or
    /// neither; `None` (the default) binds nothing. It must differ for every connection: a
    /// bound Hello signed by its id's key also proves the peer to lazy
    /// relay (see [`authenticated_peer`](StreamOpts::authenticated_peer)),
    /// and one replayed where the value repeats would pass the replayer
    /// off as that peer.
    pub binding: Option<ChannelBinding>,
    /// Who the transport proved is at the other end (over QUIC, the node
    /// id its certificate names), if anyone. Lazy relay keeps the bar of a
    /// peer that did not deliver what it announced for this identity,
    /// across its streams, so that it cannot shed the bar by reconnecting;
    /// without one, for the id its Hello names when that Hello is signed by
    /// the id's key on a bound stream, or else for the stream alone.
    pub authenticated_peer: Option<SourceId>,
}

impl Default for StreamOpts {
    fn default() -> Self {
        Self {
            sends: true,
            receives: true,
            tail: true,
            await_clock: true,
            meta: Vec::new(),
            binding: None,
            authenticated_peer: None,
        }
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

    /// Sets [`StreamOpts::binding`].
    pub fn binding(mut self, binding: ChannelBinding) -> Self {
        self.binding = Some(binding);
        self
    }

    /// Sets [`StreamOpts::authenticated_peer`].
    pub fn authenticated_peer(mut self, peer: SourceId) -> Self {
        self.authenticated_peer = Some(peer);
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
    /// How many frames of `snapshot_out` had been written when last
    /// looked at, and when (wall ms): one the peer takes none of for
    /// [`Config::snapshot_stall_millis`](crate::Config::snapshot_stall_millis)
    /// ends the stream (see `deadline`).
    snapshot_out_seen: (u64, u64),
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
    /// Whether the peer's floor is believed: always, unless this replica
    /// is strict; then only from a Hello signed by a trusted signer. One
    /// not believed only holds back what we send the peer (its loss if it
    /// lied), never raises ours or finds us stale.
    floor_vouched: bool,
    /// The peer's Hello asked for a snapshot (`Hello::missing_own`) that
    /// ours can answer, and none has gone out since: one goes when it can
    /// (see [`Stream::honours_wanted`]).
    peer_wants_snapshot: bool,
    /// The point the peer's Hello asked for a snapshot after, if it asked
    /// (see `Core::declined`).
    peer_missing: Option<Timestamp>,
    /// A higher floor of the peer's, taken once its history is in.
    catch_floor: Option<Timestamp>,
    /// The digest of the clock the peer's Hello summarised, which its
    /// floor came with. A clock found out since that is not that one says
    /// nothing of what the floor's sender held, and the floor is not
    /// taken, nor a verdict given: only the part of it owed to us (our
    /// Hello carried our whole clock, the peer's a digest) would have us
    /// found stale for every update of another source we hold below the
    /// floor; and behind a signed Hello passed on by another peer, a clock
    /// of that peer's own would say what it likes.
    floor_digest: [u8; 16],
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

/// Whether a stream goes on after a frame.
enum Flow {
    Continue,
    /// The peer closed it.
    Closed(CloseReason),
    /// This side ends it, for a reason that is no protocol violation.
    Refuse(CloseReason),
}

/// Tells the streams that were parents of a source another stream has
/// taken over (`Core::unwants`) that it is no longer wanted from them, and
/// lets every stream still waiting for its sync settle: what just happened
/// may complete it. Returns those streams, for the caller to close if done.
fn settle_waiting<T: Reduce>(
    core: &mut Core<T>,
    streams: &mut BTreeMap<StreamId, Stream>,
    now: u64,
) -> Vec<StreamId> {
    for (to, source) in std::mem::take(&mut core.unwants) {
        if let Some(s) = streams.get_mut(&to).filter(|s| !s.ended) {
            s.intents.insert(source, None);
        }
    }
    streams
        .iter_mut()
        .filter(|(_, s)| !s.ended && s.sync_frame && !s.sync_received)
        .map(|(&sid, s)| {
            s.settle(sid, core, now);
            sid
        })
        .collect()
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
        if let Some(peer) = stream.opts.authenticated_peer {
            self.core.demoted.prove(id, peer);
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
        core.wall = core.wall.max(now);
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
        // What arrived here may complete another stream's sync.
        let waiting = settle_waiting(core, streams, now);
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
    /// with (each one's Hello, or its snapshot's begin, said it), of those
    /// whose floor it believes.
    pub(crate) fn highest_peer_floor(&self) -> Timestamp {
        let open = self.streams.values().filter(|s| !s.ended && s.floor_vouched);
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

    /// Lazy relay's clock: a parent that owes an announced update past its
    /// deadline loses the role to another peer that announced more, and
    /// cannot take it back by announcing for a relay timeout, doubled with
    /// each failure in a row until it delivers (so a peer announcing what
    /// it never delivers is asked ever more rarely); a sync waits no longer
    /// for announcements that are overdue. Call it when
    /// [`poll_timeout`](Replica::poll_timeout) says, with the wall time.
    ///
    /// A peer's snapshot that went without a byte of it for
    /// [`Config::snapshot_stall_millis`](crate::Config::snapshot_stall_millis)
    /// is refused here ([`SnapshotRefusal::Stalled`](crate::SnapshotRefusal::Stalled)),
    /// closing its stream, as is one that comes in slower than
    /// [`Config::snapshot_min_rate`](crate::Config::snapshot_min_rate)
    /// ([`SnapshotRefusal::TooSlow`](crate::SnapshotRefusal::TooSlow)).
    pub fn handle_timeout(&mut self, now: u64) {
        self.core.wall = self.core.wall.max(now);
        self.refuse_stalled_snapshots(now);
        self.end_unread_snapshots(now);
        self.relay_timeouts(now);
    }

    /// When [`handle_timeout`](Replica::handle_timeout) is next due (wall
    /// milliseconds), if anything waits for it: a lazy-relay parent owing
    /// an announced update, a demoted one whose bar ends with an
    /// announcement nobody else delivered, a sync waiting for announced
    /// updates, a
    /// snapshot coming in (its stall limit, or its minimum rate's), or one
    /// going out (its stall limit).
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
        let unread = self.streams.values().filter_map(|s| s.unread_deadline(stall));
        let offers = self.core.demoted.next_offer();
        parents.chain(heard).chain(snapshots).chain(unread).chain(offers).min()
    }
}

#[cfg(test)]
mod tests;

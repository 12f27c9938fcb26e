//! The sans-IO node: one replica of a [`Model`], any number of scuttlebutt
//! streams.

use std::collections::{BTreeMap, HashMap, VecDeque};

use repred::{Config, Delivery, Envelope, Outcome, Rejection, Replica, SourceId, Subscription};
use serde_json::Value;

use crate::line::{self, Header, Line, LineError, UpdateLine};
use crate::model::js_cmp;
use crate::time::{float_of, next_own, timestamp_of};
use crate::{Json, Model, ModelChange, Write, id};

/// Default longest line accepted: 16 MiB, as repred's largest frame.
pub const DEFAULT_MAX_LINE: usize = 16 << 20;

/// How many bytes of live updates one [`Node::poll_transmit`] call adds at
/// most, so that a writer interleaves with the rest of the program.
const LIVE_BATCH: usize = 64 << 10;

/// Most JavaScript ids remembered with their source ids.
const MAX_CACHED_IDS: usize = 100_000;

/// Most undrained events kept; older ones are dropped.
const MAX_EVENTS: usize = 4_096;

/// The modes of one stream, as scuttlebutt's `createStream(opts)`.
///
/// ```
/// use repred_scuttlebutt::StreamOpts;
///
/// let both = StreamOpts::default();
/// assert!(both.readable && both.writable && both.tail);
/// let log = StreamOpts::read_only().tail(false); // createReadStream({tail: false})
/// assert!(!log.writable);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StreamOpts {
    /// This side sends (its header, history, SYNC, live updates).
    pub readable: bool,
    /// This side takes the peer's updates (others are ignored, unapplied).
    pub writable: bool,
    /// Keep sending live updates after sync; `false` ends the stream once
    /// both sides have synced.
    pub tail: bool,
    /// Sent in the header as `meta` (when set).
    pub meta: Option<Value>,
    /// A write-only stream sends its header anyway, so that the peer sends
    /// only what it lacks (scuttlebutt's `sendClock`).
    pub send_clock: bool,
    /// A read-only stream waits for the peer's header instead of sending
    /// everything at once (scuttlebutt's `clock: true`).
    pub await_clock: bool,
    /// Longest line accepted, in bytes; a longer one ends the stream.
    pub max_line: usize,
}

impl Default for StreamOpts {
    fn default() -> Self {
        StreamOpts {
            readable: true,
            writable: true,
            tail: true,
            meta: None,
            send_clock: false,
            await_clock: false,
            max_line: DEFAULT_MAX_LINE,
        }
    }
}

impl StreamOpts {
    /// Sends only: `createReadStream()`, e.g. a log being written.
    pub fn read_only() -> Self {
        StreamOpts { writable: false, ..Self::default() }
    }

    /// Takes only: `createWriteStream()`, e.g. a log being replayed.
    pub fn write_only() -> Self {
        StreamOpts { readable: false, ..Self::default() }
    }

    /// Sets [`tail`](StreamOpts::tail).
    pub fn tail(mut self, tail: bool) -> Self {
        self.tail = tail;
        self
    }

    /// Sets [`meta`](StreamOpts::meta).
    pub fn meta(mut self, meta: Value) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Sets [`send_clock`](StreamOpts::send_clock).
    pub fn send_clock(mut self, on: bool) -> Self {
        self.send_clock = on;
        self
    }

    /// Sets [`await_clock`](StreamOpts::await_clock).
    pub fn await_clock(mut self, on: bool) -> Self {
        self.await_clock = on;
        self
    }

    /// Sets [`max_line`](StreamOpts::max_line).
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes;
        self
    }
}

/// Names one stream of a [`Node`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(u64);

/// Why a stream ended its peer: the line it was reading (counted from 1)
/// and what was wrong with it. Nothing of that line was applied; the node
/// and its other streams go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct StreamError {
    /// The line's number on the stream.
    pub line: u64,
    /// What was wrong.
    pub kind: LineError,
}

/// Errors of a node's own API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A Rust node's own id must be a short name (1 to 16 bytes, not ending
    /// in a zero byte), so that its `SourceId` spells it and it survives a
    /// restart from a store without a name table.
    #[error("a node's id must be 1 to 16 bytes (not ending in a zero byte), got {0:?}")]
    InvalidId(String),
    /// The replica refused the write.
    #[error("the write was refused: {0}")]
    Refused(Rejection),
}

/// How a stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// Both sides synced and the stream does not tail.
    Tail,
    /// The peer ended its side.
    PeerEnded,
    /// [`Node::close`].
    Closed,
    /// The peer broke the protocol.
    Error(StreamError),
}

/// Counters of one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Lines read.
    pub lines: u64,
    /// Update lines taken (not counting those a non-writable stream ignores).
    pub updates_received: u64,
    /// Of those, the ones before the peer's `SYNC` (its history).
    pub history_received: u64,
    /// Updates that changed the state.
    pub applied: u64,
    /// Updates that were new but changed nothing (a write older than the
    /// key's current one, or to `__proto__`).
    pub unchanged: u64,
    /// Updates already seen (scuttlebutt's `old_data`).
    pub old: u64,
    /// Updates refused: a timestamp with no repred timestamp (zero,
    /// negative, past year 10889) or too far ahead of the wall clock.
    pub refused: u64,
    /// Updates sent.
    pub updates_sent: u64,
    /// Of those, the ones sent as history, before this side's `SYNC`.
    pub history_sent: u64,
}

/// What happened on the streams.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The peer's header arrived (scuttlebutt's `header` event).
    Header {
        /// The stream.
        stream: StreamId,
        /// The peer's id.
        id: Option<String>,
        /// The peer's clock.
        clock: HashMap<String, f64>,
        /// The peer's meta.
        meta: Option<Value>,
    },
    /// This side sent its history and `SYNC` (`syncSent`).
    SyncSent {
        /// The stream.
        stream: StreamId,
    },
    /// The peer's `SYNC` arrived (`syncRecieved`).
    SyncReceived {
        /// The stream.
        stream: StreamId,
    },
    /// Both (`sync`, `synced`); once per stream.
    Synced {
        /// The stream.
        stream: StreamId,
    },
    /// The stream ended; its id is no longer known.
    Ended {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: EndReason,
        /// Its counters at the end.
        stats: StreamStats,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Open,
    /// Flushing what is queued, then ending.
    Closing(EndReason),
}

struct Stream {
    opts: StreamOpts,
    phase: Phase,
    /// The start of a line whose newline has not arrived.
    partial: Vec<u8>,
    /// Bytes queued to send: header, history, SYNC.
    out: Vec<u8>,
    header_received: bool,
    started: bool,
    sync_sent: bool,
    sync_received: bool,
    synced: bool,
    /// What the peer has, as scuttlebutt's per-stream `sources`: its header's
    /// clock, raised by everything sent to it and received from it.
    known: HashMap<String, f64>,
    /// Live updates after the history (tailing readable streams).
    live: Option<Subscription>,
    stats: StreamStats,
}

impl Stream {
    fn learn(&mut self, source: &str, ts: f64) {
        match self.known.get_mut(source) {
            Some(seen) => *seen = seen.max(ts),
            None => {
                self.known.insert(source.to_string(), ts);
            }
        }
    }
}

/// A Rust peer of JavaScript scuttlebutt: a [`Replica`] of a [`Model`] and
/// its streams, sans-IO in repred's style. Bytes come in through
/// [`handle`](Node::handle), go out through
/// [`poll_transmit`](Node::poll_transmit), and what happened comes out of
/// [`poll_event`](Node::poll_event); wall time is passed in as `now`
/// (milliseconds since the Unix epoch).
///
/// ```
/// use repred_scuttlebutt::{Event, Node, StreamOpts};
/// use serde_json::json;
///
/// let now = 1_700_000_000_000;
/// let mut a = Node::new("A")?;
/// let mut b = Node::new("B")?;
/// a.set(now, "x", json!("from a"))?;
/// let (sa, sb) = (a.open(StreamOpts::default()), b.open(StreamOpts::default()));
/// // Pipe both ways until quiet, as `a.pipe(b).pipe(a)`.
/// let mut buf = Vec::new();
/// for _ in 0..3 {
///     buf.clear();
///     a.poll_transmit(sa, &mut buf);
///     b.handle(sb, now, &buf)?;
///     buf.clear();
///     b.poll_transmit(sb, &mut buf);
///     a.handle(sa, now, &buf)?;
/// }
/// assert_eq!(b.model().to_json(), r#"{"x":"from a"}"#);
/// assert!(std::iter::from_fn(|| b.poll_event()).any(|e| matches!(e, Event::Synced { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Node {
    replica: Replica<Model>,
    /// JavaScript ids seen on streams, to their source ids: long ones are
    /// hashed once, not per update. Cleared when it grows past
    /// [`MAX_CACHED_IDS`].
    ids: HashMap<String, SourceId>,
    js_id: String,
    streams: BTreeMap<StreamId, Stream>,
    next_stream: u64,
    events: VecDeque<Event>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.js_id)
            .field("model", self.replica.state())
            .field("streams", &self.streams.len())
            .finish()
    }
}

impl Node {
    /// A node under the JavaScript id `id` (1 to 16 bytes).
    pub fn new(id: &str) -> Result<Self, NodeError> {
        Self::with_config(id, Config::default())
    }

    /// A node with the replica limits of `config` (for instance a larger
    /// [`Config::max_skew_millis`] for peers whose clocks run ahead).
    pub fn with_config(id: &str, config: Config) -> Result<Self, NodeError> {
        let source = own_source_id(id)?;
        Ok(Self::from_replica(Replica::with_config(source, Model::default(), config)))
    }

    /// A node around a replica, e.g. one restored by `repred-store`; its id
    /// should be a short name (see [`own_source_id`]), else it appears to
    /// JavaScript in hex.
    pub fn from_replica(replica: Replica<Model>) -> Self {
        let js_id = id::js_id_free(replica.id());
        Node {
            replica,
            ids: HashMap::new(),
            js_id,
            streams: BTreeMap::new(),
            next_stream: 0,
            events: VecDeque::new(),
        }
    }

    /// A fresh random id in scuttlebutt's style: 16 uppercase hex digits
    /// (64 random bits).
    pub fn random_id() -> String {
        let bytes = SourceId::random();
        bytes.as_bytes()[..8].iter().map(|b| format!("{b:02X}")).collect()
    }

    /// This node's JavaScript id.
    pub fn id(&self) -> &str {
        &self.js_id
    }

    /// The replicated map.
    pub fn model(&self) -> &Model {
        self.replica.state()
    }

    /// The replica: its clock, stats, subscriptions, and what a store saves.
    pub fn replica(&self) -> &Replica<Model> {
        &self.replica
    }

    /// The replica, mutably (e.g. to run repred streams beside these).
    pub fn replica_mut(&mut self) -> &mut Replica<Model> {
        &mut self.replica
    }

    /// The replica, giving up the streams.
    pub fn into_replica(self) -> Replica<Model> {
        self.replica
    }

    /// `model.set(key, value)` at wall time `now`: returns whether it
    /// changed the map (a write to `__proto__` does not, as in JavaScript).
    ///
    /// The write's timestamp is a float exactly (see `time::next_own`), so
    /// it comes back from JavaScript peers as the same update.
    pub fn set(&mut self, now: u64, key: &str, value: impl Into<Json>) -> Result<bool, NodeError> {
        let ts = next_own(self.replica.last_timestamp(), now);
        let write = Write {
            key: key.to_string(),
            value: value.into(),
            ts: Some(float_of(ts)),
            source: Some(self.js_id.clone()),
        };
        let change = ModelChange { writes: vec![write], names: Vec::new() };
        // Through `apply`, not `update`: `update` picks its own timestamp,
        // which need not be a float (repred counts 65,536 steps a
        // millisecond, a float 4,096 at today's dates). The wall time given
        // is the write's own, so the skew check (meant for peers) passes.
        let envelope = Envelope::new(self.replica.id(), ts, change);
        match self.replica.apply(now.max(ts.millis()), envelope) {
            Outcome::Applied => Ok(true),
            Outcome::Rejected(reason) => Err(NodeError::Refused(reason)),
            _ => Ok(false),
        }
    }

    /// Opens a stream: queues this side's header (and, for a read-only
    /// stream that does not await the peer's clock, everything).
    pub fn open(&mut self, opts: StreamOpts) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        let mut stream = Stream {
            sync_received: !opts.writable,
            sync_sent: !opts.readable,
            opts,
            phase: Phase::Open,
            partial: Vec::new(),
            out: Vec::new(),
            header_received: false,
            started: false,
            synced: false,
            known: HashMap::new(),
            live: None,
            stats: StreamStats::default(),
        };
        if stream.opts.readable || stream.opts.send_clock {
            self.write_header(&mut stream.out, stream.opts.meta.as_ref());
        }
        let start_now = stream.opts.readable && !stream.opts.writable && !stream.opts.await_clock;
        self.streams.insert(id, stream);
        if start_now {
            // Cannot fail: starting reads nothing.
            let _ = self.with_stream(id, |ctx, s| {
                ctx.start(id, s);
                Ok(())
            });
        }
        id
    }

    fn write_header(&self, out: &mut Vec<u8>, meta: Option<&Value>) {
        let model = self.replica.state();
        let clock: Vec<(std::borrow::Cow<'_, str>, f64)> =
            self.replica.clock().iter().map(|(s, ts)| (model.js_id(s), float_of(ts))).collect();
        line::write_header(out, &self.js_id, clock.iter().map(|(s, ts)| (&**s, *ts)), meta);
    }

    /// Bytes from the stream's peer. A complete bad line ends the stream
    /// (and is returned); the lines before it were taken.
    pub fn handle(&mut self, id: StreamId, now: u64, bytes: &[u8]) -> Result<(), StreamError> {
        self.with_stream(id, |ctx, s| ctx.handle(id, s, now, bytes))
    }

    /// The peer ended its side: what is left of a last line is read (as
    /// scuttlebutt does), then the stream ends once its queue is sent.
    pub fn handle_end(&mut self, id: StreamId, now: u64) -> Result<(), StreamError> {
        self.with_stream(id, |ctx, s| {
            if s.phase != Phase::Open {
                return Ok(());
            }
            if !s.partial.is_empty() {
                let rest = std::mem::take(&mut s.partial);
                ctx.line(id, s, now, &rest)?;
            }
            s.phase = Phase::Closing(EndReason::PeerEnded);
            Ok(())
        })
    }

    /// Ends a stream: what is queued is still sent, then it ends.
    pub fn close(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id)
            && s.phase == Phase::Open
        {
            s.phase = Phase::Closing(EndReason::Closed);
        }
    }

    /// Appends the bytes to send on the stream to `buf`; returns how many.
    /// Call until it returns 0 (then wait for a change: a local write, or
    /// bytes handled on any stream).
    pub fn poll_transmit(&mut self, id: StreamId, buf: &mut Vec<u8>) -> usize {
        let before = buf.len();
        let Some(s) = self.streams.get_mut(&id) else { return 0 };
        buf.append(&mut s.out);
        if s.phase == Phase::Open
            && let Some(live) = &mut s.live
        {
            let mut lagged = false;
            for delivery in self.replica.changes(live) {
                match delivery {
                    Delivery::Change(change) => {
                        send_writes(&mut s.known, &mut s.stats, buf, &change.change.writes)
                    }
                    Delivery::Lagged { .. } => lagged = true,
                }
                if buf.len() - before >= LIVE_BATCH {
                    break;
                }
            }
            if lagged {
                // Fallen behind the log: what the peer may have missed is in
                // the map, and the map's history is what scuttlebutt sends.
                let history = self.replica.state().history(&s.known);
                for e in &history {
                    line::write_update(buf, e.key, e.value, e.ts, e.source);
                }
                s.stats.updates_sent += history.len() as u64;
                for e in history {
                    s.learn(e.source, e.ts);
                }
            }
        }
        if let Phase::Closing(reason) = &s.phase {
            let (reason, stats) = (reason.clone(), s.stats);
            self.streams.remove(&id);
            self.emit(Event::Ended { stream: id, reason, stats });
        }
        buf.len() - before
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the stream is still open (an ended one is forgotten once its
    /// queue has been taken by [`poll_transmit`](Node::poll_transmit)).
    pub fn is_open(&self, id: StreamId) -> bool {
        self.streams.contains_key(&id)
    }

    /// The stream's counters.
    pub fn stream_stats(&self, id: StreamId) -> Option<StreamStats> {
        self.streams.get(&id).map(|s| s.stats)
    }

    /// Whether both sides of the stream have synced.
    pub fn is_synced(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_some_and(|s| s.synced)
    }

    /// How many streams are open.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    fn emit(&mut self, event: Event) {
        emit(&mut self.events, event);
    }

    /// Runs `f` on a stream with the rest of the node beside it.
    fn with_stream(
        &mut self,
        id: StreamId,
        f: impl FnOnce(&mut Ctx<'_>, &mut Stream) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        let Some(mut stream) = self.streams.remove(&id) else { return Ok(()) };
        let mut ctx =
            Ctx { replica: &mut self.replica, events: &mut self.events, ids: &mut self.ids };
        let result = f(&mut ctx, &mut stream);
        match &result {
            Err(e) => {
                // Nothing more goes out on a stream that broke the protocol.
                emit(
                    &mut self.events,
                    Event::Ended {
                        stream: id,
                        reason: EndReason::Error(e.clone()),
                        stats: stream.stats,
                    },
                );
            }
            Ok(()) => {
                self.streams.insert(id, stream);
            }
        }
        result
    }
}

/// Checks a node's own id (see [`NodeError::InvalidId`]) and returns its
/// source id.
pub fn own_source_id(id: &str) -> Result<SourceId, NodeError> {
    if id.is_empty() || id.len() > SourceId::LEN || id.ends_with('\0') {
        return Err(NodeError::InvalidId(id.to_string()));
    }
    SourceId::new(id).map_err(|_| NodeError::InvalidId(id.to_string()))
}

fn emit(events: &mut VecDeque<Event>, event: Event) {
    if events.len() >= MAX_EVENTS {
        events.pop_front();
    }
    events.push_back(event);
}

/// Sends the writes of one applied change that the peer lacks, oldest first.
fn send_writes(
    known: &mut HashMap<String, f64>,
    stats: &mut StreamStats,
    buf: &mut Vec<u8>,
    writes: &[Write],
) {
    let mut send = |w: &Write| {
        let (Some(ts), Some(source)) = (w.ts, w.source.as_deref()) else { return };
        if known.get(source).is_some_and(|&seen| seen >= ts) {
            return;
        }
        line::write_update(buf, &w.key, &w.value, ts, source);
        stats.updates_sent += 1;
        match known.get_mut(source) {
            Some(seen) => *seen = ts,
            None => {
                known.insert(source.to_string(), ts);
            }
        }
    };
    if let [one] = writes {
        send(one);
        return;
    }
    // Several (a merged snapshot): per source in timestamp order, as a
    // JavaScript peer takes only newer updates of each source.
    let mut sorted: Vec<&Write> = writes.iter().collect();
    sorted.sort_by(|a, b| {
        let ts = |w: &Write| w.ts.unwrap_or(0.0);
        ts(a).total_cmp(&ts(b)).then_with(|| {
            js_cmp(a.source.as_deref().unwrap_or(""), b.source.as_deref().unwrap_or(""))
        })
    });
    sorted.into_iter().for_each(send);
}

/// The node less its streams, beside the one stream being worked on.
struct Ctx<'a> {
    replica: &'a mut Replica<Model>,
    events: &'a mut VecDeque<Event>,
    ids: &'a mut HashMap<String, SourceId>,
}

impl Ctx<'_> {
    fn handle(
        &mut self,
        id: StreamId,
        s: &mut Stream,
        now: u64,
        mut bytes: &[u8],
    ) -> Result<(), StreamError> {
        if s.phase != Phase::Open {
            return Ok(());
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            if s.partial.is_empty() {
                self.line(id, s, now, &bytes[..end])?;
            } else {
                let mut whole = std::mem::take(&mut s.partial);
                whole.extend_from_slice(&bytes[..end]);
                self.line(id, s, now, &whole)?;
                whole.clear();
                s.partial = whole;
            }
            bytes = &bytes[end + 1..];
            if s.phase != Phase::Open {
                // Ended by the line (a stream without tail that synced):
                // whatever follows is not read.
                return Ok(());
            }
        }
        if s.partial.len() + bytes.len() > s.opts.max_line {
            let limit = s.opts.max_line;
            return Err(StreamError {
                line: s.stats.lines + 1,
                kind: LineError::Oversize { limit },
            });
        }
        s.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn line(
        &mut self,
        id: StreamId,
        s: &mut Stream,
        now: u64,
        bytes: &[u8],
    ) -> Result<(), StreamError> {
        s.stats.lines += 1;
        let at = s.stats.lines;
        let fail = |kind| StreamError { line: at, kind };
        if bytes.len() > s.opts.max_line {
            return Err(fail(LineError::Oversize { limit: s.opts.max_line }));
        }
        match line::parse(bytes, s.opts.writable).map_err(fail)? {
            Line::Ignored => Ok(()),
            Line::Sync => {
                if !s.sync_received {
                    s.sync_received = true;
                    emit(self.events, Event::SyncReceived { stream: id });
                    self.check_synced(id, s);
                }
                Ok(())
            }
            Line::Header(header) => {
                if s.header_received {
                    return Err(fail(LineError::DuplicateHeader));
                }
                s.header_received = true;
                self.header(id, s, header);
                Ok(())
            }
            Line::Update(update) => {
                if !s.header_received {
                    return Err(fail(LineError::UpdateBeforeHeader));
                }
                self.update(s, now, update);
                Ok(())
            }
        }
    }

    fn header(&mut self, id: StreamId, s: &mut Stream, header: Header) {
        for (source, &ts) in &header.clock {
            s.learn(source, ts);
        }
        emit(
            self.events,
            Event::Header { stream: id, id: header.id, clock: header.clock, meta: header.meta },
        );
        if !s.started {
            self.start(id, s);
        }
    }

    /// scuttlebutt's `start`: the history the peer lacks, `SYNC`, then live.
    fn start(&mut self, id: StreamId, s: &mut Stream) {
        s.started = true;
        if s.opts.readable {
            let model = self.replica.state();
            let history = model.history(&s.known);
            for e in &history {
                line::write_update(&mut s.out, e.key, e.value, e.ts, e.source);
            }
            let n = history.len() as u64;
            s.stats.updates_sent += n;
            s.stats.history_sent += n;
            for e in history {
                s.learn(e.source, e.ts);
            }
            line::write_sync(&mut s.out);
            if s.opts.tail {
                // From this moment: what the history holds is not sent again.
                s.live = Some(self.replica.subscribe());
            }
        }
        s.sync_sent = true;
        emit(self.events, Event::SyncSent { stream: id });
        self.check_synced(id, s);
    }

    fn check_synced(&mut self, id: StreamId, s: &mut Stream) {
        if s.synced || !(s.sync_sent && s.sync_received) {
            return;
        }
        s.synced = true;
        emit(self.events, Event::Synced { stream: id });
        if !s.opts.tail && s.phase == Phase::Open {
            s.phase = Phase::Closing(EndReason::Tail);
        }
    }

    fn update(&mut self, s: &mut Stream, now: u64, u: UpdateLine) {
        s.stats.updates_received += 1;
        if !s.sync_received {
            s.stats.history_received += 1;
        }
        // The peer has it, whatever becomes of it here: never echo it back.
        s.learn(&u.source, u.ts);
        let Some(ts) = timestamp_of(u.ts) else {
            s.stats.refused += 1;
            return;
        };
        let source = match self.ids.get(&u.source) {
            Some(&source) => source,
            None => {
                if self.ids.len() >= MAX_CACHED_IDS {
                    self.ids.clear();
                }
                let source = id::source_id(&u.source);
                self.ids.insert(u.source.clone(), source);
                source
            }
        };
        let write = Write { key: u.key, value: u.value, ts: Some(u.ts), source: Some(u.source) };
        let change = ModelChange { writes: vec![write], names: Vec::new() };
        match self.replica.apply(now, Envelope::new(source, ts, change)) {
            Outcome::Applied => s.stats.applied += 1,
            Outcome::Unchanged => s.stats.unchanged += 1,
            Outcome::Old => s.stats.old += 1,
            _ => s.stats.refused += 1,
        }
    }
}

//! A replicated state: the state, its clock and its history.

use std::collections::{BTreeMap, VecDeque};

use crate::history::{Entry, History};
use crate::session::Stream;
use crate::signing::{ChangeDigest, change_digest};
use crate::source_table::{SourceSlot, SourceTable};
use crate::{
    Clock, Envelope, Event, Identity, Proof, Reduce, SourceId, Stamp, StreamId, Timestamp,
    VerifyError,
};

/// Limits and policies of a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Most records the history keeps. Beyond it the oldest are dropped and
    /// peers that lack them get a snapshot instead. Default 65,536.
    pub history_limit: usize,
    /// How far ahead of this replica's wall clock a remote timestamp may be
    /// before it is refused as forged. Default 60 s.
    pub max_skew_millis: u64,
    /// Largest frame accepted from a peer, in bytes. Default 16 MiB.
    pub max_frame: usize,
    /// Target size of one Updates frame, in bytes. Default 64 KiB.
    pub batch_bytes: usize,
    /// Target size of one part of a snapshot, in bytes: a snapshot of any
    /// size travels in parts of about this much, interleaved with live
    /// updates, and neither end holds more than a part of it encoded.
    /// Default 64 KiB.
    pub snapshot_part_bytes: usize,
    /// Most bytes (as received) of what snapshot parts changed that the
    /// history keeps, for subscribers and a store, which read merged
    /// snapshots from it. Past it the oldest records are dropped, as past
    /// [`history_limit`](Config::history_limit): a store then saves a
    /// snapshot of the state, and peers that lacked the dropped updates get
    /// one, instead of the history holding a second copy of a large state
    /// it received. Default 32 MiB.
    pub history_snapshot_bytes: usize,
    /// Most entries a peer's snapshot may make this replica reserve room
    /// for before its parts arrive ([`Reduce::reserve`](crate::Reduce::reserve)):
    /// the sender's size hint is not signed, so a larger one reserves this
    /// much and the state grows as parts come beyond it. Default 2^25
    /// (33,554,432).
    pub max_snapshot_reserve: u64,
    /// How long a peer's snapshot may go without a byte of it once begun,
    /// before this replica refuses it
    /// ([`SnapshotRefusal::Stalled`]) and closes the stream. While one comes
    /// in, snapshots from other collection floors are declined and
    /// collection waits ([`Replica::receiving_snapshot`]), so a sender
    /// that stops midway must not hold them for ever. A slow link is not
    /// a stall: any bytes of the snapshot restart the wait. Zero refuses
    /// every snapshot at the next [`Replica::handle_timeout`]. Default
    /// 30,000 ms.
    pub snapshot_stall_millis: u64,
    /// Slowest a peer's snapshot may come in, in bytes per second, once
    /// [`snapshot_stall_millis`](Config::snapshot_stall_millis) has passed
    /// since it began: a snapshot begun at `t` with `b` bytes in is refused
    /// ([`SnapshotRefusal::TooSlow`]) at `t + stall + b / rate`. A byte
    /// now and then restarts the stall wait, so without it a sender could
    /// hold back collection and other floors' snapshots for ever at no
    /// cost; with it, for as long as it keeps up this much bandwidth, and
    /// no longer than the snapshot's size at this rate. (As a web server's
    /// minimum request body rate, e.g. Kestrel's 240 B/s after a 5 s
    /// grace.) The rate is each snapshot's: snapshots sharing a link (a
    /// fresh node pulling many objects over one connection) each get a
    /// share of it, and one refused is sent again from the start, so keep
    /// it under the link's speed divided by the snapshots that may come in
    /// at once over it. Zero: no minimum. Default 256 B/s.
    pub snapshot_min_rate: u64,
    /// Most undrained events kept; older ones are dropped (and counted in
    /// [`Stats::events_dropped`]). Default 4,096.
    pub max_events: usize,
    /// Refuse updates that are not signed by their source's key, clock
    /// advances without the source's signature, and snapshots not signed by
    /// a signer in [`trust_snapshots_from`](Config::trust_snapshots_from).
    /// Signed updates are verified whether or not this is set. Default off.
    pub require_signatures: bool,
    /// When set, only updates from these sources are accepted (besides our
    /// own), and, as with [`require_signatures`](Config::require_signatures),
    /// only signed ones: a list of names anyone could claim would guard
    /// nothing. Default: everyone.
    pub allowed_sources: Option<std::collections::BTreeSet<SourceId>>,
    /// The signers whose snapshots a strict replica (one that requires
    /// signatures or has an allow-list) takes. A snapshot stands for many
    /// updates whose own signatures it does not carry, so believing one is
    /// trusting its signer to have verified them. A strict replica refuses
    /// every other snapshot with [`Event::SnapshotRefused`] and closes that
    /// stream; if it has fallen behind the history of every trusted peer it
    /// stays behind, saying so, rather than take in anything unverified.
    /// Replicas that are not strict take any snapshot whose signature, if it
    /// has one, holds. Default: nobody.
    pub trust_snapshots_from: std::collections::BTreeSet<SourceId>,
    /// The most sources this replica does not know that one stream may name
    /// in claims it has not backed with updates (announcements, clock
    /// advances, refused updates). Past it the peer is cut off
    /// ([`PeerMisbehaved::TooManySources`](crate::PeerMisbehaved::TooManySources)).
    /// Clocks a peer sends are not refused for their size, but only this
    /// many of their unknown sources are remembered. Default 100,000.
    pub max_unknown_sources: usize,
    /// How long a peer that announced an update (lazy relay) or was asked
    /// for one may take to deliver it before another peer that has it is
    /// asked instead: one announcement, true or not, delays a source by at
    /// most this much. Also how long a stream's sync waits for what its peer
    /// announced. Default 1,000 ms.
    pub relay_timeout_millis: u64,
    /// Relay other sources' updates lazily on tailing streams: announce them
    /// (a Have frame of `(source, ts)`) and push them only to peers that ask
    /// (Want), so that each replica pulls each source from one peer and a
    /// payload crosses each link it needs to once, not every link. Own
    /// updates, and the peer's own, are always pushed. A stream's sync
    /// (`SyncReceived`, `Synced`, and so the end of a stream without tail)
    /// waits until what the peer announced before its Sync has arrived, from
    /// whichever peer. Default off (every stream pushes everything the peer
    /// is not known to have).
    pub lazy_relay: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            history_limit: 65_536,
            max_skew_millis: 60_000,
            max_frame: 16 << 20,
            batch_bytes: 64 << 10,
            snapshot_part_bytes: 64 << 10,
            max_snapshot_reserve: 1 << 25,
            snapshot_stall_millis: 30_000,
            snapshot_min_rate: 256,
            history_snapshot_bytes: 32 << 20,
            max_events: 4_096,
            require_signatures: false,
            allowed_sources: None,
            trust_snapshots_from: std::collections::BTreeSet::new(),
            max_unknown_sources: 100_000,
            relay_timeout_millis: 1_000,
            lazy_relay: false,
        }
    }
}

impl Config {
    /// Sets [`Config::history_limit`].
    pub fn history_limit(mut self, records: usize) -> Self {
        self.history_limit = records;
        self
    }

    /// Sets [`Config::max_skew_millis`].
    pub fn max_skew_millis(mut self, millis: u64) -> Self {
        self.max_skew_millis = millis;
        self
    }

    /// Sets [`Config::max_frame`].
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Sets [`Config::require_signatures`].
    pub fn require_signatures(mut self, on: bool) -> Self {
        self.require_signatures = on;
        self
    }

    /// Sets [`Config::allowed_sources`].
    pub fn allow_only(mut self, sources: impl IntoIterator<Item = SourceId>) -> Self {
        self.allowed_sources = Some(sources.into_iter().collect());
        self
    }

    /// Sets [`Config::trust_snapshots_from`].
    pub fn trust_snapshots_from(mut self, signers: impl IntoIterator<Item = SourceId>) -> Self {
        self.trust_snapshots_from = signers.into_iter().collect();
        self
    }

    /// Sets [`Config::max_unknown_sources`].
    pub fn max_unknown_sources(mut self, sources: usize) -> Self {
        self.max_unknown_sources = sources;
        self
    }

    /// Sets [`Config::relay_timeout_millis`].
    pub fn relay_timeout_millis(mut self, millis: u64) -> Self {
        self.relay_timeout_millis = millis;
        self
    }

    /// Whether this replica lets only signatures move its state and clock:
    /// it requires signatures, or has an allow-list.
    pub fn is_strict(&self) -> bool {
        self.require_signatures || self.allowed_sources.is_some()
    }

    /// Sets [`Config::lazy_relay`].
    pub fn lazy_relay(mut self, on: bool) -> Self {
        self.lazy_relay = on;
        self
    }

    /// Sets [`Config::snapshot_part_bytes`].
    pub fn snapshot_part_bytes(mut self, bytes: usize) -> Self {
        self.snapshot_part_bytes = bytes;
        self
    }

    /// Sets [`Config::history_snapshot_bytes`].
    pub fn history_snapshot_bytes(mut self, bytes: usize) -> Self {
        self.history_snapshot_bytes = bytes;
        self
    }

    /// Sets [`Config::max_snapshot_reserve`].
    pub fn max_snapshot_reserve(mut self, entries: u64) -> Self {
        self.max_snapshot_reserve = entries;
        self
    }

    /// Sets [`Config::snapshot_stall_millis`].
    pub fn snapshot_stall_millis(mut self, millis: u64) -> Self {
        self.snapshot_stall_millis = millis;
        self
    }

    /// Sets [`Config::snapshot_min_rate`] (bytes per second; zero: none).
    pub fn snapshot_min_rate(mut self, bytes_per_sec: u64) -> Self {
        self.snapshot_min_rate = bytes_per_sec;
        self
    }

    /// Sets [`Config::batch_bytes`].
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
        self
    }
}

/// Counters of what a replica did with updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Local updates that changed the state.
    pub local: u64,
    /// Remote updates that changed the state.
    pub applied: u64,
    /// Remote updates that were new but changed nothing.
    pub unchanged: u64,
    /// Remote updates already seen (`ts <= clock[source]`): scuttlebutt's
    /// `OldData`.
    pub old: u64,
    /// Remote updates refused (forged timestamp, reserved source).
    pub rejected: u64,
    /// Snapshots merged.
    pub snapshots: u64,
    /// Snapshots refused ([`Event::SnapshotRefused`]).
    pub snapshots_refused: u64,
    /// Entries dropped by [`Replica::collect`] (tombstones of old deletes).
    pub collected: u64,
    /// History records dropped by [`Replica::collect`]: older than the
    /// floor, so every replica that can still write holds them.
    pub history_collected: u64,
    /// Events dropped because nobody drained them.
    pub events_dropped: u64,
}

/// What became of one remote update.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It changed the state; the change is recorded and will be forwarded.
    Applied,
    /// It was new, so the clock advanced, but it changed nothing.
    Unchanged,
    /// It was already seen; nothing happened.
    Old,
    /// It was refused; nothing happened, the clock did not move.
    Rejected(Rejection),
}

impl Outcome {
    /// Whether the update changed the state.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied)
    }
}

/// Why a remote update was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Its timestamp is further ahead of our wall clock than
    /// [`Config::max_skew_millis`]: accepting it would drag every later
    /// timestamp of ours (and its source's) into the future.
    #[error("timestamp is {ahead_millis} ms ahead of this replica (limit {limit_millis} ms)")]
    ClockSkew {
        /// How far ahead.
        ahead_millis: u64,
        /// The limit.
        limit_millis: u64,
    },
    /// Timestamp zero is never issued.
    #[error("timestamp zero is reserved")]
    ZeroTimestamp,
    /// The all-zero source id is reserved.
    #[error("the all-zero source id is reserved")]
    ReservedSource,
    /// The update's signature does not hold (scuttlebutt's `Unverified`).
    #[error("unverified: {0}")]
    Unverified(#[from] crate::VerifyError),
    /// The source is not on [`Config::allowed_sources`].
    #[error("the source is not on this replica's allow-list")]
    NotAllowed,
    /// New to this replica, but older than its collection
    /// [floor](Replica::floor): the deletes it might race with are
    /// forgotten, so taking it could bring back what was deleted. A writer
    /// that was away past the floor gets this for what it wrote before.
    #[error("timestamp is below this replica's collection floor {floor}")]
    BelowFloor {
        /// The floor.
        floor: Timestamp,
    },
}

/// Why a peer's snapshot was not merged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SnapshotRefusal {
    /// A strict replica takes only signed snapshots.
    #[error("the snapshot is not signed, and this replica takes only signed snapshots")]
    Unsigned,
    /// Signed by someone not in [`Config::trust_snapshots_from`].
    #[error("the snapshot is signed by {0}, who is not among this replica's trusted signers")]
    Untrusted(SourceId),
    /// The signature does not hold.
    #[error("the snapshot's signature does not hold: {0}")]
    Unverified(#[from] VerifyError),
    /// The sender's collection floor is below ours: its state may hold
    /// what we forgot was deleted. (Senders wait for their floor to rise
    /// before sending one; only an old or lying peer sends this.)
    #[error(
        "the snapshot comes from below this replica's collection floor {floor} (the sender's is {theirs})"
    )]
    BelowFloor {
        /// Our floor.
        floor: Timestamp,
        /// The sender's.
        theirs: Timestamp,
    },
    /// No byte of the snapshot came for
    /// [`Config::snapshot_stall_millis`]: the sender stopped midway (or
    /// its link did, and the connection has not noticed yet).
    #[error("no byte of the snapshot came for {millis} ms")]
    Stalled {
        /// How long this replica waited.
        millis: u64,
    },
    /// The snapshot came in slower than [`Config::snapshot_min_rate`]:
    /// `bytes` in the `millis` ms since it began.
    #[error(
        "{bytes} bytes of the snapshot came in {millis} ms, slower than this replica's minimum rate"
    )]
    TooSlow {
        /// Bytes received since the snapshot began.
        bytes: u64,
        /// How long since it began.
        millis: u64,
    },
}

/// Errors of the replica's own API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The replica was disposed of and takes no more updates.
    #[error("the replica was disposed of")]
    Disposed,
    /// A signed update's change does not encode, so it cannot be signed. The
    /// state has already taken the change; it will not travel, and the
    /// replica is [poisoned](Replica::is_poisoned).
    #[error("the change does not encode, so it cannot be signed: {0}")]
    Encode(String),
    /// A local update's `reduce` panicked (or its change could not be
    /// signed), so the state may hold part of an update that no record
    /// accounts for and no peer will get. The replica takes no more local
    /// updates until it [rejoins](Replica::rejoin) from its peers' state.
    #[error(
        "a local update's reduce panicked, so the state may hold what no record accounts for; rejoin the replica from its peers (Replica::rejoin)"
    )]
    Poisoned,
}

/// A replicated state with its clock and history; the sans-IO heart of repred.
///
/// A replica never reads the clock or touches the network: wall time comes in
/// as `now` (milliseconds), bytes come in through [`Replica::handle`] and go
/// out through [`Replica::poll_transmit`]. Drive it in this order:
///
/// 1. inputs: [`update`](Replica::update) for local writes,
///    [`handle`](Replica::handle) for bytes from a peer;
/// 2. outputs: [`poll_transmit`](Replica::poll_transmit) on each stream until
///    it returns 0, [`poll_event`](Replica::poll_event) until `None`, and
///    [`changes`](Replica::changes) for each subscription.
///
/// ```
/// use repred::{Network, Replica, SourceId};
/// # use repred::Reduce;
/// # #[derive(Default, PartialEq, Debug)]
/// # struct Max(u64);
/// # impl Reduce for Max {
/// #     type Update = u64;
/// #     fn reduce(&mut self, u: u64) -> Option<u64> { (u > self.0).then(|| { self.0 = u; u }) }
/// #     fn snapshot(&self) -> u64 { self.0 }
/// # }
///
/// let mut net = Network::new();
/// let a = net.add(Replica::new(SourceId::new("A")?, Max::default()));
/// let b = net.add(Replica::new(SourceId::new("B")?, Max::default()));
/// net.link(a, b);
/// net.update(a, 7)?;
/// net.pump();
/// assert_eq!(net[b].state(), &Max(7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Replica<T: Reduce> {
    pub(crate) core: Core<T>,
    pub(crate) streams: BTreeMap<StreamId, Stream>,
    pub(crate) next_stream: u64,
}

/// The replica less its streams, so a stream can borrow it while it is
/// borrowed itself.
pub(crate) struct Core<T: Reduce> {
    pub(crate) id: SourceId,
    pub(crate) state: T,
    pub(crate) clock: Clock,
    /// The newest timestamp issued or accepted: the hybrid clock's memory.
    pub(crate) last: Timestamp,
    pub(crate) history: History<T::Update>,
    /// The envelopes of the Updates frame being handled, as decoded
    /// (`frame::decode`); empty between frames.
    pub(crate) inbox: Vec<Envelope<T::Update>>,
    /// The inbox's envelopes past their checks, awaiting their reduces
    /// ([`Core::stage`]); empty between frames.
    pub(crate) staged: Vec<Staged<T::Update>>,
    /// The sources of the Updates frame being handled, each looked up
    /// once ([`SourceTable`]).
    pub(crate) sources: SourceTable,
    pub(crate) events: VecDeque<Event>,
    pub(crate) stats: Stats,
    pub(crate) config: Config,
    pub(crate) disposed: bool,
    /// A local update's reduce panicked, or its change could not be
    /// signed: the state may hold what no record accounts for
    /// ([`ReplicaError::Poisoned`]).
    pub(crate) poisoned: bool,
    /// Signs local updates when set.
    pub(crate) identity: Option<Identity>,
    /// Per source, the stream that pushes it to us (lazy relay).
    pub(crate) parents: BTreeMap<SourceId, Parent>,
    /// Whether any peer relays lazily (a Have frame arrived), so parents
    /// are worth tracking.
    pub(crate) lazy_peers: bool,
    /// Unwants to queue on other streams after a parent switch.
    pub(crate) unwants: Vec<(StreamId, SourceId)>,
    /// Peers on open streams that send to us, by source id: each pushes its
    /// own updates, so it is the natural parent of its own source.
    pub(crate) neighbours: BTreeMap<SourceId, StreamId>,
    /// Per source we pull, the newest update refused as unverified: it will
    /// not arrive from anyone, so a sync does not wait for it.
    pub(crate) refused: Clock,
    /// Streams send log records below this sequence only (a durable
    /// replica's store has them); `None`: everything recorded.
    pub(crate) released: Option<u64>,
    /// This replica's life (see [`Replica::life`]).
    pub(crate) life: u64,
    /// The lives peers announced in their Hellos, by id: the same id in
    /// another life lost its log. Bounded by [`MAX_LIVES`].
    pub(crate) lives: BTreeMap<SourceId, u64>,
    /// Signs the snapshots this replica sends, when set.
    pub(crate) snapshot_signer: Option<Identity>,
    /// Per source, the stream that lost the parent role by failing to
    /// deliver in time: it cannot take the role back by announcing, only
    /// by delivering.
    pub(crate) demoted: BTreeMap<SourceId, StreamId>,
    /// The collection floor: deletes below it are forgotten, and updates
    /// below it that are new here are refused ([`Replica::collect`]).
    pub(crate) floor: Timestamp,
    /// A collection waits for the snapshots being sent to finish (a
    /// snapshot's parts are cut by position, which collecting moves), and
    /// for those coming in.
    pub(crate) collect_pending: bool,
    /// The highest floor of a peer that found this replica stale, if any
    /// ([`Event::Stale`]).
    pub(crate) stale: Timestamp,
    /// A peer's snapshot found this replica stale for the parts of a cut
    /// one it holds (`parts_floor`): stale even at its own floor, until a
    /// rejoin or a snapshot whose end vouches for the parts (a clock with
    /// the peers' writes, see `Stream::vet_floor`).
    pub(crate) stale_parts: bool,
    /// Since a [`Replica::rejoin`], the floor below which this replica
    /// holds nothing stale: snapshots from up to it may be merged.
    pub(crate) fresh_to: Timestamp,
    /// Of our own writes below `fresh_to`, the newest a snapshot taken
    /// since the rejoin may have brought back (zero: none).
    pub(crate) own_back: Timestamp,
    /// The newest of its own writes a rejoin left this replica without
    /// (dropped below the floor, or gone from its log before it): its clock
    /// claims them (its kept writes' stamps do), so only a snapshot brings
    /// them back. Its Hellos ask for one until a snapshot comes whose
    /// clock claims them ([`Timestamp::ZERO`]: none missing).
    pub(crate) own_missing: Timestamp,
    /// Since the rejoin, the newest of its own writes a snapshot's clock
    /// claimed: it holds its own writes up to here, and its Hellos ask
    /// only peers holding a newer one (`Hello::missing_own`).
    pub(crate) own_held: Timestamp,
    /// Per peer that refused, as unsigned or untrusted, the snapshot we
    /// sent at its request: the point it asked after, and until when (ms)
    /// we do not answer the same request again. Its trust, not the
    /// snapshot, said no, and every stream would cost it a whole state and
    /// us its history; but its settings may change (a restart trusting
    /// us), so only for [`DECLINE_MILLIS`]. Bounded by [`MAX_LIVES`].
    pub(crate) declined: BTreeMap<SourceId, (Timestamp, u64)>,
    /// The streams taking in a peer's snapshot, and the floor each was
    /// collected at: two from different floors are not taken at once
    /// (see `Stream::vet_floor`).
    pub(crate) receiving: BTreeMap<crate::StreamId, Timestamp>,
    /// The lowest floor of the snapshots whose parts were merged here
    /// while the clock claimed none of the peers' writes (none ended since
    /// with a clock
    /// that vouches for them):
    /// parts of one that was cut stay in the state with no clock to say
    /// what they hold, so a snapshot from a higher floor finds this fresh
    /// replica stale (see `Stream::vet_floor`). A restore replays it from
    /// the log ([`Entry::Receiving`]), and a store saves it with a base
    /// (`Replica::with_cut_parts_floor`).
    pub(crate) parts_floor: Option<Timestamp>,
    /// A restore replayed the end of a snapshot that left the clock
    /// claiming something: parts of the base it restored from, if any,
    /// are vouched for (`Replica::with_cut_parts_floor`).
    pub(crate) replayed_end: bool,
}

/// Most peer lives remembered; past it the oldest-keyed are forgotten (a
/// forgotten life is only a missed warning, not a wrong result).
pub(crate) const MAX_LIVES: usize = 65_536;

/// How long a peer's refusal of the snapshot it asked for stands (see
/// `Core::declined`): 10 minutes, so that a strict peer costs at most one
/// refused snapshot each that long, and one whose trust changed is
/// answered again within it.
pub(crate) const DECLINE_MILLIS: u64 = 600_000;

/// Inserts into a map of what peers said, keyed by their ids, holding at
/// most [`MAX_LIVES`]: past it the lowest-keyed entry goes (each such map
/// is only a memory of claims, whose loss costs a repeat, not a result).
pub(crate) fn insert_bounded<V>(map: &mut BTreeMap<SourceId, V>, peer: SourceId, value: V) {
    if map.len() >= MAX_LIVES && !map.contains_key(&peer) {
        map.pop_first();
    }
    map.insert(peer, value);
}

/// A fresh life: random, never zero.
fn random_life() -> u64 {
    let mut bytes = [0u8; 8];
    // As for SourceId::random: without an entropy source nothing networked
    // works either; a fixed life then only weakens the reincarnation check.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes).max(1)
}

impl<T: Reduce> Core<T> {
    /// Where streams stop sending: the end of the log, or of what has been
    /// released.
    pub(crate) fn sendable_end(&self) -> u64 {
        let end = self.history.end_seq();
        self.released.map_or(end, |released| released.min(end))
    }
}

/// An envelope past its checks, the clock moved, awaiting its stamps and
/// its reduce.
pub(crate) struct Admitted<U> {
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

/// The stream a source's updates come from, and how far it is known to have
/// them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parent {
    pub(crate) stream: StreamId,
    pub(crate) has: Timestamp,
    /// The peer is the source itself: it always has the newest.
    pub(crate) origin: bool,
    /// An update of the source that some peer announced and this replica
    /// lacks, and by when the parent must have delivered it (wall
    /// milliseconds) before another announcer is asked.
    pub(crate) due: Option<Due>,
}

/// What a parent owes, and by when.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Due {
    pub(crate) ts: Timestamp,
    pub(crate) deadline: u64,
}

impl Parent {
    pub(crate) fn new(stream: StreamId, has: Timestamp, origin: bool) -> Self {
        Self { stream, has, origin, due: None }
    }

    /// Someone announced `ts` at `now`: the parent owes it within `timeout`
    /// (the earliest deadline stands, so repeated announcements cannot put
    /// it off).
    pub(crate) fn expect(&mut self, ts: Timestamp, now: u64, timeout: u64) {
        match &mut self.due {
            Some(due) => due.ts = due.ts.max(ts),
            None => self.due = Some(Due { ts, deadline: now.saturating_add(timeout) }),
        }
    }
}

impl<T: Reduce> Core<T> {
    pub(crate) fn emit(&mut self, event: Event) {
        if self.events.len() >= self.config.max_events.max(1) {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

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
    fn count_parts(&mut self, floor: Timestamp) {
        self.parts_floor = Some(self.parts_floor.map_or(floor, |f| f.min(floor)));
    }

    /// A replayed record of what a snapshot brought, with the clock it
    /// stands for: when it `ends` the snapshot, as `finish_snapshot`, a
    /// clock that claims something vouches for the parts merged before
    /// it, the base's too (see `with_cut_parts_floor`).
    fn replay_snapshot(&mut self, clock: &Clock, ends: bool) {
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
    /// Whether `peer`'s request for a snapshot of its writes after `after`
    /// still stands refused at `now` (see `declined`).
    pub(crate) fn declines(&self, peer: SourceId, after: Timestamp, now: u64) -> bool {
        self.declined.get(&peer).is_some_and(|&(was, until)| was == after && now < until)
    }

    /// `peer` refused the snapshot it asked for after `after`: not the
    /// same again for [`DECLINE_MILLIS`].
    pub(crate) fn decline(&mut self, peer: SourceId, after: Timestamp, now: u64) {
        insert_bounded(&mut self.declined, peer, (after, now.saturating_add(DECLINE_MILLIS)));
    }

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
    /// A replica of `state` writing as `id`, with the default [`Config`].
    ///
    /// **An id is a writer's life, not a machine's name.** A replica's clock
    /// says, per source, "I have everything up to here": a replica that lost
    /// its log and writes again under its old id claims, with its new
    /// timestamps, the old updates it no longer has, and no peer would ever
    /// send them back. So a replica made without its log must use an id that
    /// never wrote before ([`SourceId::random`]), or be restored from a store
    /// that kept its log (`repred_store` does both: the id lives in the
    /// store). As a safety net, every replica draws a random
    /// [life](Replica::life) here, and a peer that knew the id in another
    /// life refuses the stream
    /// ([`PeerMisbehaved::Reincarnated`](crate::PeerMisbehaved::Reincarnated),
    /// a typed reason on both ends) instead of splitting silently; only
    /// peers that met the old life
    /// directly can tell, so do not rely on it alone.
    pub fn new(id: SourceId, state: T) -> Self {
        Self::with_config(id, state, Config::default())
    }

    /// A replica that signs its updates (and the snapshots it sends) with
    /// `identity` and writes as the id derived from its key.
    pub fn with_identity(identity: Identity, state: T, config: Config) -> Self {
        let mut replica = Self::with_config(identity.id(), state, config);
        replica.core.snapshot_signer = Some(identity.clone());
        replica.core.identity = Some(identity);
        replica
    }

    /// This replica, signing the snapshots it sends with `identity`
    /// (rather than with the identity that signs its updates, if any).
    ///
    /// Strict peers take a snapshot only from a signer they trust
    /// ([`Config::trust_snapshots_from`]), so a signer is best a node's
    /// long-lived key, known to operators, even where updates are signed
    /// by a key per life.
    pub fn sign_snapshots_with(mut self, identity: Identity) -> Self {
        self.core.snapshot_signer = Some(identity);
        self
    }

    /// This replica's life: a random number drawn when it was made without
    /// a log ([`new`](Replica::new), [`with_config`](Replica::with_config)),
    /// kept across restarts by a store ([`with_life`](Replica::with_life)
    /// after [`restore`](Replica::restore)). Peers learn it from the Hello
    /// and refuse an id they knew in another life.
    pub fn life(&self) -> u64 {
        self.core.life
    }

    /// This replica, in the given life: for a store restoring a replica it
    /// kept (its life goes on), and for replicas whose state is only ever
    /// superseded, never missing (e.g. a heartbeat map, where a restart
    /// that lost its log loses nothing a later write does not replace).
    pub fn with_life(mut self, life: u64) -> Self {
        self.core.life = life;
        self
    }

    /// A replica with explicit limits.
    pub fn with_config(id: SourceId, state: T, config: Config) -> Self {
        Self {
            core: Core {
                id,
                state,
                clock: Clock::new(),
                last: Timestamp::ZERO,
                history: History::new(config.history_limit)
                    .with_merge_limit(config.history_snapshot_bytes),
                inbox: Vec::new(),
                staged: Vec::new(),
                sources: SourceTable::default(),
                events: VecDeque::new(),
                stats: Stats::default(),
                config,
                disposed: false,
                poisoned: false,
                identity: None,
                parents: BTreeMap::new(),
                lazy_peers: false,
                unwants: Vec::new(),
                neighbours: BTreeMap::new(),
                refused: Clock::new(),
                released: None,
                life: random_life(),
                lives: BTreeMap::new(),
                snapshot_signer: None,
                demoted: BTreeMap::new(),
                floor: Timestamp::ZERO,
                collect_pending: false,
                stale: Timestamp::ZERO,
                stale_parts: false,
                fresh_to: Timestamp::ZERO,
                own_back: Timestamp::ZERO,
                own_missing: Timestamp::ZERO,
                own_held: Timestamp::ZERO,
                declined: BTreeMap::new(),
                receiving: BTreeMap::new(),
                parts_floor: None,
                replayed_end: false,
            },
            streams: BTreeMap::new(),
            next_stream: 0,
        }
    }

    /// This replica's source id.
    pub fn id(&self) -> SourceId {
        self.core.id
    }

    /// The current state.
    pub fn state(&self) -> &T {
        &self.core.state
    }

    /// What this replica has seen, per source.
    pub fn clock(&self) -> &Clock {
        &self.core.clock
    }

    /// The limits this replica runs with.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Counters of applied, old and refused updates.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }

    /// The newest timestamp this replica issued or accepted.
    pub fn last_timestamp(&self) -> Timestamp {
        self.core.last
    }

    /// Makes a local update at wall time `now` (milliseconds).
    ///
    /// Returns the stamp it was recorded under, or `None` when it changed
    /// nothing (then nothing is recorded or sent).
    ///
    /// Should the state's `reduce` panic, the panic goes on to the caller
    /// and the replica is [poisoned](Replica::is_poisoned): the state may
    /// hold part of the update, which no record accounts for and no peer
    /// would ever get (a peer's update is sent again, and reduced again; a
    /// local one is not). Later updates return [`ReplicaError::Poisoned`]
    /// until [`rejoin`](Replica::rejoin) starts the state over.
    ///
    /// ```
    /// use repred::{Reduce, Replica, ReplicaError, SourceId};
    ///
    /// #[derive(Default)]
    /// struct Fragile(Vec<u32>);
    ///
    /// impl Reduce for Fragile {
    ///     type Update = Vec<u32>;
    ///     fn reduce(&mut self, update: Vec<u32>) -> Option<Vec<u32>> {
    ///         for n in &update {
    ///             assert!(*n != 13, "unlucky");
    ///             self.0.push(*n); // half the update is in before the panic
    ///         }
    ///         Some(update)
    ///     }
    ///     fn snapshot(&self) -> Vec<u32> {
    ///         self.0.clone()
    ///     }
    /// }
    ///
    /// let mut r = Replica::new(SourceId::new("r")?, Fragile::default());
    /// let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
    ///     r.update(1, vec![1, 13]).ok();
    /// }));
    /// assert!(panicked.is_err() && r.is_poisoned());
    /// assert_eq!(r.update(2, vec![2]), Err(ReplicaError::Poisoned));
    /// r.rejoin(Fragile::default());
    /// assert!(!r.is_poisoned() && r.update(3, vec![3]).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update(
        &mut self,
        now: u64,
        mut update: T::Update,
    ) -> Result<Option<Stamp>, ReplicaError> {
        let core = &mut self.core;
        if core.disposed {
            return Err(ReplicaError::Disposed);
        }
        if core.poisoned {
            return Err(ReplicaError::Poisoned);
        }
        let ts = core.last.next(now);
        let stamp = Stamp { ts, source: core.id };
        T::stamp(&mut update, stamp);
        let state = &mut core.state;
        let reduced =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.reduce(update)));
        let Some(mut change) = reduced.unwrap_or_else(|panic| {
            self.poison(ts);
            std::panic::resume_unwind(panic)
        }) else {
            return Ok(None);
        };
        let core = &mut self.core;
        // The state took it: it is recorded even if `unstamp` panics, its
        // stamps then left set, or it would never travel.
        let unstamping = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            T::unstamp(&mut change, stamp);
        }));
        let mut envelope = Envelope::new(core.id, ts, change);
        if let Some(identity) = &core.identity {
            match postcard::to_allocvec(&envelope.change) {
                Ok(bytes) => envelope.signature = Some(Box::new(identity.sign(ts, &bytes))),
                Err(e) => {
                    self.poison(ts);
                    return Err(ReplicaError::Encode(e.to_string()));
                }
            }
        }
        core.last = ts;
        core.clock.observe(core.id, ts);
        core.stats.local += 1;
        core.history.push(Entry::Change(envelope));
        if let Err(panic) = unstamping {
            std::panic::resume_unwind(panic);
        }
        Ok(Some(stamp))
    }

    /// Shows the peers that this replica has passed every update it holds,
    /// without changing anything: a new timestamp of its own, recorded and
    /// sent like an update that changed nothing (an advance; a proof,
    /// signed, from a signing replica, for peers that take no unsigned
    /// word). Each direct peer's [`peer_heard`](Replica::peer_heard) moves
    /// past all this replica had seen, so a collection there need not wait
    /// for its next write: what a writer that has stopped writing does to
    /// let the deletes it saw go ([`Clock::stable_point`]). Returns the
    /// timestamp.
    ///
    /// ```
    /// use repred::{LwwMap, Network, Replica, SourceId};
    ///
    /// let mut net = Network::new();
    /// let a = net.add(Replica::new(SourceId::new("a")?, LwwMap::<String, u32>::default()));
    /// let b = net.add(Replica::new(SourceId::new("b")?, LwwMap::<String, u32>::default()));
    /// let link = net.link(a, b);
    /// net.update(a, LwwMap::set("k".to_string(), 1))?;
    /// let delete = net.update(a, LwwMap::delete("k".to_string()))?.expect("a tombstone");
    /// net.pump();
    /// let [(_, on_a), _] = net.streams(link);
    /// assert!(net[a].peer_heard(on_a) < Some(delete.ts), "b wrote nothing since");
    /// let now = net.now();
    /// net[b].show_progress(now)?;
    /// net.pump();
    /// assert!(net[a].peer_heard(on_a) > Some(delete.ts), "b showed it passed the delete");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn show_progress(&mut self, now: u64) -> Result<Stamp, ReplicaError> {
        let core = &mut self.core;
        if core.disposed {
            return Err(ReplicaError::Disposed);
        }
        let ts = core.last.next(now);
        let stamp = Stamp { ts, source: core.id };
        let entry = match &core.identity {
            Some(identity) => {
                // Nothing changed: the digest of no bytes.
                let digest = change_digest(&[]);
                let signature = identity.sign_digest(ts, &digest);
                Entry::Proven(Box::new(Proof { stamp, digest, signature }))
            }
            None => Entry::Advance(stamp),
        };
        core.last = ts;
        core.clock.observe(core.id, ts);
        core.history.push(entry);
        Ok(stamp)
    }

    /// Applies an update from elsewhere, as if it had arrived on a stream.
    ///
    /// `now` is this replica's wall time, against which forged timestamps
    /// are judged.
    pub fn apply(&mut self, now: u64, envelope: Envelope<T::Update>) -> Outcome {
        self.core.apply(now, envelope)
    }

    /// Every recorded change newer than `clock`, ordered by timestamp, then
    /// source.
    ///
    /// Records older than the [horizon](Replica::horizon) may be gone; a
    /// clock that does not cover the horizon needs a snapshot as well, which
    /// streams arrange by themselves.
    pub fn history(&self, clock: &Clock) -> Vec<&Envelope<T::Update>> {
        self.core.history.since(clock)
    }

    /// Number of records in the history.
    pub fn history_len(&self) -> usize {
        self.core.history.len()
    }

    /// The sequence number the next log entry will get. Sequence numbers
    /// only grow, across restores too.
    pub fn end_seq(&self) -> u64 {
        self.core.history.end_seq()
    }

    /// From now on, streams send peers only the log records that
    /// [`release`](Replica::release) has let go: a durable node releases
    /// what its store has committed, so that no peer ever holds an update
    /// that a crash could take from its origin. (Such an update would
    /// diverge for good: the restarted origin issues later timestamps, its
    /// clock then claims the lost one, and nobody sends it back.)
    ///
    /// Everything recorded so far counts as released. A snapshot owed to a
    /// peer waits until everything is released, since it holds the whole
    /// state.
    ///
    /// ```
    /// use repred::{LwwRegister, Network, Replica, SourceId};
    ///
    /// let mut net = Network::new();
    /// let a = net.add(Replica::new(SourceId::new("a")?, LwwRegister::default()));
    /// let b = net.add(Replica::new(SourceId::new("b")?, LwwRegister::default()));
    /// net[a].hold_until_released();
    /// net.link(a, b);
    /// net.update(a, LwwRegister::set(7))?;
    /// net.pump();
    /// assert_eq!(net[b].state().get(), None, "not saved yet, so not sent");
    /// let saved = net[a].end_seq(); // the store committed everything
    /// net[a].release(saved);
    /// net.pump();
    /// assert_eq!(net[b].state().get(), Some(&7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn hold_until_released(&mut self) {
        let end = self.core.history.end_seq();
        self.core.released.get_or_insert(end);
    }

    /// Lets streams send the log records below sequence `end` (see
    /// [`hold_until_released`](Replica::hold_until_released)); call
    /// [`poll_transmit`](Replica::poll_transmit) again afterwards. Releases
    /// only move forward; without a hold this does nothing.
    pub fn release(&mut self, end: u64) {
        if let Some(released) = &mut self.core.released {
            *released = (*released).max(end);
        }
    }

    /// The log entries from sequence number `from` on, for a durable store.
    ///
    /// Returns `Err(first)` when entries before `first` were already dropped
    /// from the history: the store must then save a whole snapshot
    /// ([`Reduce::snapshot`] of [`state`](Replica::state), with the
    /// [`clock`](Replica::clock)) instead.
    pub fn entries_from(
        &self,
        from: u64,
    ) -> Result<impl Iterator<Item = (u64, &Entry<T::Update>)> + '_, u64> {
        let history = &self.core.history;
        if from < history.first_seq() {
            return Err(history.first_seq());
        }
        Ok((from..history.end_seq()).filter_map(move |seq| Some((seq, history.get(seq)?))))
    }

    /// Rebuilds a replica from what a durable store kept: a base state with
    /// its clock (a snapshot, or `T::default()` and an empty clock), the log
    /// entries recorded after it, the newest timestamp ever issued, and the
    /// sequence number of the first entry.
    ///
    /// Peers that lack updates from before the base are sent a snapshot, as
    /// the entries before it are gone. The next local timestamp is greater
    /// than `last` and every restored one, whatever the wall clock says.
    pub fn restore(
        id: SourceId,
        base: T,
        base_clock: Clock,
        last: Timestamp,
        first_seq: u64,
        entries: impl IntoIterator<Item = Entry<T::Update>>,
        config: Config,
    ) -> Self {
        let mut replica = Self::with_config(id, base, config);
        let core = &mut replica.core;
        core.history.start_at(first_seq);
        core.history.raise_horizon(&base_clock);
        core.last = last.max(base_clock.max());
        core.clock = base_clock;
        // Parts of a snapshot replayed with no end after them: it was cut
        // (or the save was), and they count as such (`parts_floor`), as
        // `receive_part` counted them: at the floor the log names for each
        // (`Entry::Receiving`), or, for one it does not (a log from before
        // the record) merged while the clock claimed none of the peers'
        // writes, at the floor of the replay then, which is no higher
        // (a snapshot from below the floor is refused; the base's floor
        // comes after the replay).
        let mut named = false;
        for entry in entries {
            let part_named = std::mem::take(&mut named);
            match &entry {
                Entry::Change(e) | Entry::Unchanged(e) | Entry::Relayed { envelope: e, .. } => {
                    // Recorded as they travel, without the stamps that are
                    // the envelope's own: filled back in before the merge,
                    // as on arrival, or a lattice that orders by stamps
                    // (last-writer-wins, observed-remove) drops them.
                    let mut change = e.change.clone();
                    T::stamp(&mut change, e.stamp());
                    core.state.reduce(change);
                    core.clock.observe(e.source, e.ts);
                    core.last = core.last.max(e.ts);
                }
                Entry::Advance(_) | Entry::Proven(_) => {
                    if let Some(stamp) = entry.stamp() {
                        core.clock.observe(stamp.source, stamp.ts);
                        core.last = core.last.max(stamp.ts);
                    }
                }
                Entry::Merge { clock, change, .. } => {
                    if clock.is_empty() && !part_named && core.claims_only_own() {
                        let floor = core.floor;
                        core.count_parts(floor);
                    }
                    core.state.reduce(change.clone());
                    // With a clock: a whole snapshot, as earlier versions
                    // recorded one.
                    core.replay_snapshot(clock, !clock.is_empty());
                }
                Entry::Covered { clock, .. } => core.replay_snapshot(clock, true),
                Entry::Collected { floor } => {
                    core.raise_floor(*floor);
                    core.collect_pending = false;
                    core.state.collect(*floor);
                }
                Entry::Receiving { floor, .. } => {
                    let floor = *floor;
                    core.count_parts(floor);
                    named = true;
                }
            }
            core.history.push(entry);
        }
        replica
    }

    /// This replica, signing its updates with `identity` from now on
    /// (after a [`restore`](Replica::restore) of a signing replica).
    ///
    /// # Panics
    /// If the identity's id is not this replica's: a replica cannot change
    /// its source id.
    pub fn signing_with(mut self, identity: Identity) -> Self {
        assert_eq!(identity.id(), self.core.id, "the identity must be this replica's source");
        self.core.identity = Some(identity);
        self
    }

    /// Per source, the newest update that may be missing from the history.
    pub fn horizon(&self) -> &Clock {
        self.core.history.horizon()
    }

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
    /// peer held. A collection waits for the snapshots being sent to
    /// finish (they are cut by position), and for those coming in (their
    /// parts, cut at a lower floor, may hold what the tombstones it drops
    /// would delete); the floor holds at once. A floor raised over parts
    /// of a cut snapshot from below it
    /// ([`holds_cut_snapshot`](Replica::holds_cut_snapshot)) makes the
    /// replica [stale](Replica::stale_floor) at once: nothing vouches that
    /// the parts hold the deletes the floor forgets.
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
        // `Stream::take_floor` gives it for a peer's floor.
        if self.core.holds_parts_below(stable) {
            self.core.stale = self.core.stale.max(stable);
            self.core.stale_parts = true;
        }
        self.core.raise_floor(stable);
        self.collect_if_due()
    }

    /// The floor of a peer that found this replica stale
    /// ([`Event::Stale`]), if one did: [`rejoin`](Replica::rejoin). It
    /// may be this replica's own floor: parts of a snapshot cut below it
    /// ([`holds_cut_snapshot`](Replica::holds_cut_snapshot)) are not made
    /// safe by a floor raised over them.
    pub fn stale_floor(&self) -> Option<Timestamp> {
        // A verdict for parts of a cut snapshot holds at our own floor too
        // (see `Stream::vet_floor`): a floor raised over them while the
        // clock claims none of the peers' writes does not make them safe.
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
        core.demoted.clear();
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

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    /// A subscription to every change applied from now on, local or remote.
    pub fn subscribe(&self) -> Subscription {
        Subscription { next: self.core.history.end_seq() }
    }

    /// A subscription that starts with the changes still in the history.
    pub fn subscribe_from_start(&self) -> Subscription {
        Subscription { next: self.core.history.first_seq() }
    }

    /// The changes a subscription has not seen yet, oldest first.
    pub fn changes<'a>(&'a self, subscription: &'a mut Subscription) -> Changes<'a, T::Update> {
        Changes { history: &self.core.history, subscription }
    }

    /// Whether [`dispose`](Replica::dispose) was called.
    pub fn is_disposed(&self) -> bool {
        self.core.disposed
    }

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

    /// Whether a local update's `reduce` panicked (or its change could not
    /// be signed), so the state may hold what no record accounts for:
    /// local updates are refused ([`ReplicaError::Poisoned`]) until
    /// [`rejoin`](Replica::rejoin). Peers' updates are still taken (they
    /// are joins, and sent again should one panic).
    pub fn is_poisoned(&self) -> bool {
        self.core.poisoned
    }

    /// Ends every stream (each sends a Close), then refuses local updates.
    ///
    /// Emits `End` and `Unstream(n)` per stream, then `Dispose`.
    pub fn dispose(&mut self) {
        if self.core.disposed {
            return;
        }
        let open: Vec<StreamId> = self.open_streams().collect();
        for id in open {
            self.end_stream(id, crate::EndReason::Local(crate::CloseReason::Disposed));
        }
        self.core.disposed = true;
        self.core.emit(Event::Dispose);
    }
}

impl<T: Reduce + std::fmt::Debug> std::fmt::Debug for Replica<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.core.id)
            .field("state", &self.core.state)
            .field("clock", &self.core.clock)
            .field("history", &self.core.history.len())
            .field("streams", &self.streams.len())
            .finish()
    }
}

/// A reader's place in a replica's stream of applied changes.
///
/// It is a cursor, not a queue: a subscriber that falls further behind than
/// the history keeps is told how many changes it missed and can re-read the
/// whole state instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    next: u64,
}

/// One applied change, as a subscription sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Change<'a, U> {
    /// Where it came from: its origin, or for a snapshot, the peer that
    /// sent it.
    pub source: SourceId,
    /// The origin's timestamp ([`Timestamp::ZERO`] for a snapshot).
    pub ts: Timestamp,
    /// What changed.
    pub change: &'a U,
    /// Whether it came from merging a peer's snapshot.
    pub via_snapshot: bool,
}

/// What a subscription reads next.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<'a, U> {
    /// A change.
    Change(Change<'a, U>),
    /// This many changes were dropped from the history before they were
    /// read; the state still holds their effect.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Iterator over a subscription's unread changes.
pub struct Changes<'a, U> {
    history: &'a History<U>,
    subscription: &'a mut Subscription,
}

impl<'a, U> Iterator for Changes<'a, U> {
    type Item = Delivery<'a, U>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = self.history.first_seq();
        if self.subscription.next < first {
            let missed = first - self.subscription.next;
            self.subscription.next = first;
            return Some(Delivery::Lagged { missed });
        }
        loop {
            let record = self.history.get(self.subscription.next)?;
            self.subscription.next += 1;
            let change = match record {
                Entry::Change(e) => {
                    Change { source: e.source, ts: e.ts, change: &e.change, via_snapshot: false }
                }
                Entry::Relayed { envelope: e, change } => {
                    Change { source: e.source, ts: e.ts, change, via_snapshot: false }
                }
                Entry::Merge { from, change, .. } => {
                    Change { source: *from, ts: Timestamp::ZERO, change, via_snapshot: true }
                }
                Entry::Advance(_)
                | Entry::Unchanged(_)
                | Entry::Proven(_)
                | Entry::Covered { .. }
                | Entry::Collected { .. }
                | Entry::Receiving { .. } => {
                    continue;
                }
            };
            return Some(Delivery::Change(change));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeSet;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;
    use crate::{Network, NodeId, Outcome, StreamOpts};

    thread_local! {
        /// The value whose insertion panics, on this test's thread only.
        static POISON: Cell<Option<u64>> = const { Cell::new(None) };
        /// The value whose update's stamping panics, on this thread only.
        static STAMP_POISON: Cell<Option<u64>> = const { Cell::new(None) };
        /// The value whose unstamping panics when it is all the update
        /// holds (as a reduce returns it when the rest was there).
        static UNSTAMP_POISON: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// A grow-only set whose reduce panics at the poisoned value, after
    /// inserting the values before it in the same update: a user's bug that
    /// leaves an update half in the state.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Fragile(BTreeSet<u64>);

    impl Reduce for Fragile {
        type Update = Vec<u64>;

        fn reduce(&mut self, update: Vec<u64>) -> Option<Vec<u64>> {
            let mut added = Vec::new();
            for value in update {
                assert!(POISON.get() != Some(value), "the user's reduce fails at {value}");
                if self.0.insert(value) {
                    added.push(value);
                }
            }
            (!added.is_empty()).then_some(added)
        }

        fn snapshot(&self) -> Vec<u64> {
            self.0.iter().copied().collect()
        }

        /// A user's bug before any reduce: stamping an update that holds
        /// the poisoned value panics.
        fn stamp(update: &mut Vec<u64>, _: Stamp) {
            if let Some(poison) = STAMP_POISON.get() {
                assert!(!update.contains(&poison), "the user's stamp fails at {poison}");
            }
        }

        fn unstamp(change: &mut Vec<u64>, _: Stamp) {
            if let Some(poison) = UNSTAMP_POISON.get() {
                assert!(change != &[poison], "the user's unstamp fails at {poison}");
            }
        }
    }

    fn id(name: &str) -> SourceId {
        SourceId::new(name).expect("a valid test id")
    }

    /// Whether every update of `source` that `replica`'s clock claims is in
    /// its state, given what each wrote.
    fn claims_only_what_it_holds(replica: &Replica<Fragile>, writes: &[(Stamp, Vec<u64>)]) {
        let clock = replica.clock();
        for (stamp, values) in writes {
            if clock.has(stamp.source, stamp.ts) {
                assert!(
                    values.iter().all(|v| replica.state().0.contains(v)),
                    "the clock claims {stamp:?}, but the state lacks some of {values:?}"
                );
            }
        }
    }

    /// A user's reduce that panics mid-frame, caught, leaves the replica
    /// claiming no update its reduce did not return from: what came before
    /// is kept (and recorded), and a later sync brings the rest.
    #[test]
    fn a_reduce_that_panicked_mid_frame_leaves_the_rest_to_be_asked_for_again() {
        let mut net = Network::new();
        let a = net.add(Replica::new(id("a"), Fragile::default()));
        let b = net.add(Replica::new(id("b"), Fragile::default()));
        let link = net.link(a, b);
        net.pump();
        let mut writes = Vec::new();
        for i in 0..100u64 {
            // The 50th update carries the poison after a harmless value.
            let values = if i == 50 { vec![i, 5_000] } else { vec![i, 1_000 + i] };
            let stamp = net.update(a, values.clone()).ok().flatten();
            writes.push((stamp.expect("a new update"), values));
        }
        POISON.set(Some(5_000));
        let caught = catch_unwind(AssertUnwindSafe(|| net.pump()));
        POISON.set(None);
        assert!(caught.is_err(), "the reduce panicked");
        let b_clock = net[b].clock().get(id("a"));
        assert!(b_clock < writes[50].0.ts, "b claims the update whose reduce panicked");
        assert!(b_clock > Timestamp::ZERO, "what came before stays");
        claims_only_what_it_holds(&net[b], &writes);
        assert!(net[b].history_len() > 0, "and is recorded, to be relayed");

        net.cut(link);
        net.link(a, b);
        net.pump();
        assert_eq!(net[b].state(), net[a].state());
        assert_eq!(net[b].clock(), net[a].clock());
    }

    /// The same through `Replica::apply`: the clock stays where it was.
    #[test]
    fn a_reduce_that_panicked_in_apply_moves_no_clock() {
        let mut r = Replica::new(id("r"), Fragile::default());
        let now = Network::<Fragile>::EPOCH;
        let ts = Timestamp::new(now, 0);
        let first = Envelope::new(id("w"), ts, vec![1]);
        assert_eq!(r.apply(now, first), Outcome::Applied);
        let poisoned = Envelope::new(id("w"), ts.next(now), vec![2, 5_000]);
        POISON.set(Some(5_000));
        let caught = catch_unwind(AssertUnwindSafe(|| r.apply(now, poisoned.clone())));
        POISON.set(None);
        assert!(caught.is_err());
        assert_eq!(r.clock().get(id("w")), ts, "the clock went back");
        assert_eq!(r.apply(now, poisoned), Outcome::Applied, "and it is taken when sent again");
        let fresh = Envelope::new(id("v"), ts, vec![7, 5_000]);
        POISON.set(Some(5_000));
        let caught = catch_unwind(AssertUnwindSafe(|| r.apply(now, fresh)));
        POISON.set(None);
        assert!(caught.is_err());
        assert_eq!(r.clock().get(id("v")), Timestamp::ZERO, "a new source is unseen again");
        assert_eq!(r.clock().len(), 1);
    }

    /// Runs `a`'s 100 updates to `b` in one frame, the 50th being
    /// `poisoned`, with `poison` set to 5,000 and a panic caught; then `b`
    /// resyncs with `a`, and `c`, which hears only from `b`, with `b`.
    /// `b` holds 9,999 of its own, which `a` lacks as it writes.
    ///
    /// The stream the panic came on ends, as if its link were cut: the
    /// frames after the poisoned one are lost, and going on would take the
    /// next over a gap.
    fn panic_mid_frame_then_resync(
        poison: &'static std::thread::LocalKey<Cell<Option<u64>>>,
        poisoned: Vec<u64>,
    ) {
        let mut net = Network::new();
        let a = net.add(Replica::new(id("a"), Fragile::default()));
        let b = net.add(Replica::new(id("b"), Fragile::default()));
        let link = net.link(a, b);
        net.pump();
        let [_, (_, on_b)] = net.streams(link);
        // Of b's that a has not heard of when it writes: a reduce at b
        // returns less than a wrote.
        net.update(b, vec![9_999]).expect("b's update");
        let mut writes = Vec::new();
        for i in 0..100u64 {
            let values = if i == 50 { poisoned.clone() } else { vec![i, 1_000 + i] };
            let stamp = net.update(a, values.clone()).ok().flatten();
            writes.push((stamp.expect("a new update"), values));
        }
        poison.set(Some(5_000));
        let caught = catch_unwind(AssertUnwindSafe(|| net.pump()));
        poison.set(None);
        assert!(caught.is_err(), "the user's code panicked");
        claims_only_what_it_holds(&net[b], &writes);
        assert!(net[b].core.staged.is_empty(), "nothing stays staged");
        assert!(net[b].core.inbox.is_empty(), "nor in the inbox");
        assert!(!net[b].open_streams().any(|s| s == on_b), "the stream ended");
        assert_eq!(net[b].peer_heard(on_b), None);

        net.cut(link);
        net.link(a, b);
        net.pump();
        assert_eq!(net[b].state(), net[a].state());
        assert_eq!(net[b].clock(), net[a].clock());
        let c = net.add(Replica::new(id("c"), Fragile::default()));
        net.link(b, c);
        net.pump();
        assert_eq!(net[c].state(), net[a].state(), "b's history holds every update");
        assert_eq!(net[c].clock(), net[a].clock());
    }

    /// A user's `stamp` that panics while a frame is being staged, caught,
    /// leaves nothing of the frame staged or claimed: a later sync brings
    /// all of it, and a third replica that hears only from this one gets
    /// every update from its history (left staged, the frame's changes
    /// were reduced with the next frame and recorded against its
    /// envelopes, some of which then went unrecorded).
    #[test]
    fn a_stamp_that_panicked_mid_frame_leaves_nothing_staged_or_claimed() {
        panic_mid_frame_then_resync(&STAMP_POISON, vec![50, 5_000]);
    }

    /// A user's `unstamp` that panics on what a reduce returned, before the
    /// frame is recorded: every update reduced is still recorded (before,
    /// those from it on were not, while the clock and the state had them:
    /// a replica that hears only from this one never got them).
    #[test]
    fn an_unstamp_that_panicked_before_the_records_leaves_none_out() {
        // 9,999 is there already at b: its reduce returns 5,000 alone.
        panic_mid_frame_then_resync(&UNSTAMP_POISON, vec![5_000, 9_999]);
    }

    /// The same through `Replica::apply`: the clock, raised before the
    /// stamp, goes back.
    #[test]
    fn a_stamp_that_panicked_in_apply_moves_no_clock() {
        let mut r = Replica::new(id("r"), Fragile::default());
        let now = Network::<Fragile>::EPOCH;
        let ts = Timestamp::new(now, 0);
        assert_eq!(r.apply(now, Envelope::new(id("w"), ts, vec![1])), Outcome::Applied);
        let poisoned = Envelope::new(id("w"), ts.next(now), vec![2, 5_000]);
        STAMP_POISON.set(Some(5_000));
        let caught = catch_unwind(AssertUnwindSafe(|| r.apply(now, poisoned.clone())));
        STAMP_POISON.set(None);
        assert!(caught.is_err());
        assert_eq!(r.clock().get(id("w")), ts, "the clock went back");
        assert_eq!(r.apply(now, poisoned), Outcome::Applied, "and it is taken when sent again");
        assert_eq!(r.state().0, BTreeSet::from([1, 2, 5_000]));
    }

    /// A user's `unstamp` that panics in `Replica::apply`, on what the
    /// reduce returned: the state took the update, so it is recorded, and
    /// a replica that hears only from this one gets it.
    #[test]
    fn an_unstamp_that_panicked_in_apply_still_records_the_update() {
        let mut net = Network::new();
        let r = net.add(Replica::new(id("r"), Fragile::default()));
        let now = Network::<Fragile>::EPOCH;
        net[r].update(now, vec![9_999]).expect("r's update");
        // 9,999 is there already: the reduce returns 5,000 alone.
        let envelope = Envelope::new(id("w"), Timestamp::new(now, 0), vec![5_000, 9_999]);
        UNSTAMP_POISON.set(Some(5_000));
        let caught = catch_unwind(AssertUnwindSafe(|| net[r].apply(now, envelope)));
        UNSTAMP_POISON.set(None);
        assert!(caught.is_err());
        let c = net.add(Replica::new(id("c"), Fragile::default()));
        net.link(r, c);
        net.pump();
        assert_eq!(net[c].state(), net[r].state());
        assert_eq!(net[c].clock(), net[r].clock());
    }

    /// A user's `unstamp` that panics in `Replica::update`, on what the
    /// reduce returned: the state took the write, so it is recorded and
    /// travels.
    #[test]
    fn an_unstamp_that_panicked_in_update_still_records_the_write() {
        let mut net = Network::new();
        let r = net.add(Replica::new(id("r"), Fragile::default()));
        let now = Network::<Fragile>::EPOCH;
        UNSTAMP_POISON.set(Some(5_000));
        let caught = catch_unwind(AssertUnwindSafe(|| net[r].update(now, vec![5_000])));
        UNSTAMP_POISON.set(None);
        assert!(caught.is_err());
        assert!(net[r].update(now, vec![1]).is_ok_and(|s| s.is_some()), "r writes on");
        let c = net.add(Replica::new(id("c"), Fragile::default()));
        net.link(r, c);
        net.pump();
        assert_eq!(net[c].state(), net[r].state());
        assert_eq!(net[c].clock(), net[r].clock());
    }

    /// Moves what `from` writes on `fs` to `to`'s `ts`, one frame per call
    /// to `handle`, catching a panic from it; returns the bytes moved and
    /// the panics caught.
    fn frame_by_frame(
        from: &mut Replica<Fragile>,
        fs: StreamId,
        to: &mut Replica<Fragile>,
        ts: StreamId,
    ) -> (usize, usize) {
        let now = Network::<Fragile>::EPOCH;
        let mut out = Vec::new();
        while from.poll_transmit(fs, &mut out).unwrap_or(0) > 0 {}
        let (mut at, mut panics) = (0, 0);
        while at < out.len() {
            let len = u32::from_le_bytes(out[at..at + 4].try_into().expect("a prefix")) as usize;
            let frame = &out[at..at + 4 + len];
            if catch_unwind(AssertUnwindSafe(|| to.handle(ts, now, frame))).is_err() {
                panics += 1;
            }
            at += 4 + len;
        }
        (out.len(), panics)
    }

    /// Both ways until quiet; returns the panics caught.
    fn exchange(x: &mut Replica<Fragile>, y: &mut Replica<Fragile>) -> usize {
        let sx = x.open(crate::StreamOpts::default()).expect("open");
        let sy = y.open(crate::StreamOpts::default()).expect("open");
        let mut panics = 0;
        loop {
            let (there, p) = frame_by_frame(x, sx, y, sy);
            let (back, q) = frame_by_frame(y, sy, x, sx);
            panics += p + q;
            if there + back == 0 {
                return panics;
            }
        }
    }

    /// A user's `reduce` that panics on a snapshot's part, caught, leaves
    /// the clock where it was even when the snapshot's end arrives: the
    /// part was counted before its reduce, and without the snapshot
    /// dropped the end gave the clock to a state that lacked the part.
    #[test]
    fn a_reduce_that_panicked_on_a_snapshot_part_ends_the_snapshot() {
        let config = crate::Config::default().history_limit(4);
        let mut a = Replica::with_config(id("a"), Fragile::default(), config);
        let now = Network::<Fragile>::EPOCH;
        for i in 0..20u64 {
            a.update(now, vec![i, 5_000 + i]).expect("an update");
        }
        let mut b = Replica::new(id("b"), Fragile::default());
        POISON.set(Some(5_019));
        let panics = exchange(&mut a, &mut b);
        POISON.set(None);
        assert_eq!(panics, 1, "the reduce panicked");
        assert_eq!(b.clock().get(id("a")), Timestamp::ZERO, "b claims nothing of a's");

        assert_eq!(exchange(&mut a, &mut b), 0);
        assert!(b.stats().snapshots > 0, "b was brought up by snapshot");
        assert_eq!(b.state(), a.state());
        assert_eq!(b.clock(), a.clock());
    }

    /// A signing replica shows its progress with a signed proof, which a
    /// peer that takes no unsigned word takes: its clock and `peer_heard`
    /// move; an unsigned advance it refuses.
    #[test]
    fn a_signing_replica_shows_progress_to_a_strict_peer() {
        let signer = Identity::from_secret([7; 32]);
        let mut net = Network::new();
        let strict = Config::default().require_signatures(true);
        let a = net.add(Replica::with_config(id("a"), Fragile::default(), strict));
        let b = net.add(Replica::with_identity(signer, Fragile::default(), Config::default()));
        let c = net.add(Replica::new(id("c"), Fragile::default()));
        let to_b = net.link(a, b);
        let to_c = net.link(a, c);
        net.update(b, vec![1]).expect("b's write");
        net.pump();
        let now = net.now() + 5;
        let shown = net[b].show_progress(now).expect("a progress");
        let unsigned = net[c].show_progress(now).expect("a progress");
        net.pump();
        let [(_, on_b), _] = net.streams(to_b);
        let [(_, on_c), _] = net.streams(to_c);
        assert_eq!(net[a].clock().get(shown.source), shown.ts, "the proof moved a's clock");
        assert_eq!(net[a].peer_heard(on_b), Some(shown.ts));
        assert_eq!(net[a].clock().get(unsigned.source), Timestamp::ZERO, "refused, unsigned");
        assert!(net[a].peer_heard(on_c) < Some(unsigned.ts));
        assert_eq!(net[a].state().0, BTreeSet::from([1]), "nothing changed");
    }

    thread_local! {
        /// The value whose encoding panics, on this test's thread only.
        static ENCODE_POISON: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// A value whose `Serialize` panics when poisoned: a user's bug while a
    /// frame is being written.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
    #[serde(transparent)]
    struct Touchy(u64);

    impl serde::Serialize for Touchy {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            assert!(ENCODE_POISON.get() != Some(self.0), "the user's Serialize fails");
            s.serialize_u64(self.0)
        }
    }

    #[derive(Clone, Debug, Default, PartialEq)]
    struct TouchySet(BTreeSet<Touchy>);

    impl Reduce for TouchySet {
        type Update = Vec<Touchy>;

        fn reduce(&mut self, update: Vec<Touchy>) -> Option<Vec<Touchy>> {
            let added: Vec<Touchy> =
                update.into_iter().filter(|v| self.0.insert(v.clone())).collect();
            (!added.is_empty()).then_some(added)
        }

        fn snapshot(&self) -> Vec<Touchy> {
            self.0.iter().cloned().collect()
        }
    }

    /// A user's `Serialize` that panics while a frame is written, caught,
    /// ends the stream with nothing of the frame in the output: before,
    /// the stream counted as sent what it was writing, and the half frame
    /// stayed in the buffer for the caller to send.
    #[test]
    fn an_encoding_that_panicked_mid_frame_ends_the_stream_with_nothing_half_written() {
        let mut a = Replica::new(id("a"), TouchySet::default());
        let mut b = Replica::new(id("b"), TouchySet::default());
        let now = Network::<TouchySet>::EPOCH;
        let opts = crate::StreamOpts::default;
        let (sa, sb) = (a.open(opts()).unwrap(), b.open(opts()).unwrap());
        let mut out = Vec::new();
        b.poll_transmit(sb, &mut out).unwrap();
        a.handle(sa, now, &out).unwrap();
        for i in 0..10 {
            a.update(now, vec![Touchy(i)]).unwrap();
        }
        let mut out = b"kept".to_vec();
        ENCODE_POISON.set(Some(5));
        let caught = catch_unwind(AssertUnwindSafe(|| a.poll_transmit(sa, &mut out)));
        ENCODE_POISON.set(None);
        assert!(caught.is_err(), "the encoding panicked");
        assert_eq!(out, b"kept", "nothing half written");
        assert!(!a.open_streams().any(|s| s == sa), "the stream ended");
        // A new stream brings all.
        b.abort(sb);
        let opts = crate::StreamOpts::default;
        let (sa, sb) = (a.open(opts()).unwrap(), b.open(opts()).unwrap());
        for _ in 0..100 {
            let mut out = Vec::new();
            let n = a.poll_transmit(sa, &mut out).unwrap();
            b.handle(sb, now, &out).unwrap();
            let mut back = Vec::new();
            let m = b.poll_transmit(sb, &mut back).unwrap();
            a.handle(sa, now, &back).unwrap();
            if n == 0 && m == 0 {
                break;
            }
        }
        assert_eq!(b.state(), a.state());
        assert_eq!(b.clock(), a.clock());
    }

    /// A replica that rejoined below a floor trusts it holds no own write
    /// under it only until a snapshot brings its own writes back: one from
    /// a peer that had not collected (and still held an own write below
    /// the floor that the others lack) makes it stale to a peer at the
    /// floor again, as any replica holding such a write is. Before, it
    /// took that peer's floor, and its next snapshot could bring back
    /// what the peer had deleted and forgotten.
    #[test]
    fn own_writes_a_snapshot_brought_back_count_after_a_rejoin() {
        type Map = crate::LwwMap<String, u32>;
        let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
        let mut net = Network::new();
        let small = Config::default().history_limit(2);
        let a = net.add(Replica::with_config(id("a"), Map::default(), small));
        let b = net.add(Replica::new(id("b"), Map::default()));
        let c = net.add(Replica::new(id("c"), Map::default()));
        // c gets a's writes; then b's old write reaches a, not c.
        for i in 0..4 {
            net.update(a, set(&format!("a{i}"), i)).expect("a's write");
        }
        let link = net.link(a, c);
        net.pump();
        net.cut(link);
        let link = net.link(a, b);
        net.update(b, set("old", 1)).expect("b's write");
        net.pump();
        net.cut(link);
        assert!(net[a].state().get("old").is_some() && net[c].state().get("old").is_none());
        net.advance(10);
        net.update(c, set("c", 1)).expect("c's write");
        let floor = Timestamp::new(net.now(), 0);
        net[c].collect(floor);
        net.advance(10);
        // Stale to c, b rejoins, keeping a newer write.
        let link = net.link(b, c);
        net.pump();
        assert_eq!(net[b].stale_floor(), Some(floor));
        net.cut(link);
        net.update(b, set("new", 2)).expect("b's write");
        net[b].rejoin(Map::default());
        // a, which never collected, brings b up by snapshot (its history
        // keeps two records), b's old write with it.
        let link = net.link(a, b);
        net.pump();
        net.cut(link);
        assert!(net[b].stats().snapshots > 0, "brought up by snapshot");
        assert!(net[b].state().get("old").is_some(), "b's old write is back");
        // To c, at the floor, b is stale again.
        net.link(b, c);
        net.pump();
        assert_eq!(net[b].stale_floor(), Some(floor), "b holds a write below c's floor");
        assert!(net[c].state().get("old").is_none(), "c never took it");
    }

    /// A replica that rejoined and then wrote past its log's limit takes
    /// the floor from the floor's peer, which holds an old write of its
    /// own: the log's eviction raised its horizon for its own source above
    /// the floor, which for its own source does not count (only what a
    /// snapshot may have brought back does; see `holds_news_below`).
    #[test]
    fn a_rejoined_replica_whose_log_overflowed_still_takes_the_floor() {
        type Map = crate::LwwMap<String, u32>;
        let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
        let mut net = Network::new();
        let a = net.add(Replica::new(id("a"), Map::default()));
        let small = Config::default().history_limit(2);
        let b = net.add(Replica::with_config(id("b"), Map::default(), small));
        // a holds a write of b's from before they split.
        let link = net.link(a, b);
        net.update(b, set("early", 0)).expect("b's write");
        net.pump();
        net.cut(link);
        net.update(b, set("old", 1)).expect("b's write a never gets");
        net.advance(10);
        net.update(a, set("a", 1)).expect("a's write");
        let floor = Timestamp::new(net.now(), 0);
        net[a].collect(floor);
        net.advance(10);
        let link = net.link(a, b);
        net.pump();
        assert_eq!(net[b].stale_floor(), Some(floor));
        net.cut(link);
        net[b].rejoin(Map::default());
        for i in 0..3 {
            net.update(b, set(&format!("new{i}"), i)).expect("b's write");
        }
        net.link(a, b);
        net.pump();
        assert_eq!(net[b].stale_floor(), None, "not stale again");
        assert_eq!(net[b].floor(), floor);
        assert_eq!(net[a].state().get("new2"), Some(&2), "b's writes reached a");
        assert_eq!(net[b].state().get("a"), Some(&1), "a's reached b");
        // b's own "early", which a holds and b's newer writes' stamps
        // claim, comes back by the snapshot b's Hello asked for.
        assert_eq!(net[b].state().get("early"), Some(&0), "b's dropped write is back");
    }

    /// A rejoined replica brought up by one peer's snapshot, which held an
    /// old write of the replica's own, is not stale to a second peer at a
    /// higher floor that holds that write too: what the first snapshot
    /// brought back is weighed against the second's clock at the floor's
    /// taking (its snapshot's end), not refused at its begin. Refusing at
    /// the begin (49b76f1 reverted it) had repred-transport's
    /// tests/stale.rs fail about one run in six under load, when the second
    /// snapshot began after the first had ended.
    #[test]
    fn a_second_floor_peer_holding_what_a_snapshot_brought_back_finds_a_rejoined_replica_fresh() {
        type Map = crate::LwwMap<String, u32>;
        let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
        let mut net = Network::new();
        let small = Config::default().history_limit(2);
        let a = net.add(Replica::with_config(id("a"), Map::default(), small.clone()));
        let b = net.add(Replica::new(id("b"), Map::default()));
        let c = net.add(Replica::with_config(id("c"), Map::default(), small));
        // All three hold b's early write and a's.
        let links = [net.link(a, b), net.link(b, c), net.link(a, c)];
        net.update(b, set("early", 0)).expect("b's write");
        for i in 0..4 {
            net.update(a, set(&format!("a{i}"), i)).expect("a's write");
        }
        net.pump();
        for link in links {
            net.cut(link);
        }
        // Apart: a collects at fa; b writes where nobody hears; c writes and
        // collects at fc, above b's lost write.
        net.advance(10);
        let fa = Timestamp::new(net.now(), 0);
        net[a].collect(fa);
        net.advance(10);
        net.update(b, set("old", 1)).expect("b's lost write");
        net.advance(10);
        for i in 0..4 {
            net.update(c, set(&format!("c{i}"), i)).expect("c's write");
        }
        let fc = Timestamp::new(net.now(), 0);
        net[c].collect(fc);
        net.advance(10);
        // Stale to c; b rejoins under fc.
        let link = net.link(b, c);
        net.pump();
        net.cut(link);
        assert_eq!(net[b].stale_floor(), Some(fc));
        net[b].rejoin(Map::default());
        // a brings b up by snapshot (its log keeps two records), b's early
        // write with it; b takes a's floor.
        let link = net.link(a, b);
        net.pump();
        net.cut(link);
        assert!(net[b].stats().snapshots > 0, "a brought b up by snapshot");
        assert_eq!(net[b].state().get("early"), Some(&0), "b's early write is back");
        assert_eq!(net[b].floor(), fa);
        // c, at the higher floor and holding the early write too, brings
        // the rest by snapshot: b is not stale, and takes fc.
        let snapshots = net[b].stats().snapshots;
        net.link(b, c);
        net.pump();
        assert!(net[b].stats().snapshots > snapshots, "c sent a snapshot");
        assert_eq!(net[b].stale_floor(), None, "b holds nothing below fc that c lacks");
        assert_eq!(net[b].floor(), fc);
        assert_eq!(net[b].clock(), net[c].clock());
        assert_eq!(net[b].state().get("c3"), Some(&3));
        assert!(net[b].state().get("old").is_none() && net[c].state().get("old").is_none());
    }

    /// A local update whose reduce panics poisons the replica: what it
    /// left in the state has no record and would never reach a peer, so
    /// local updates are refused until a rejoin starts the state over from
    /// the peers' and the replica's own recorded writes.
    #[test]
    fn a_local_reduce_that_panics_poisons_the_replica_until_it_rejoins() {
        let mut net = Network::new();
        let a = net.add(Replica::new(id("a"), Fragile::default()));
        let b = net.add(Replica::new(id("b"), Fragile::default()));
        let link = net.link(a, b);
        net.update(b, vec![1]).expect("b's write");
        net.update(a, vec![2]).expect("a's write");
        net.pump();
        POISON.set(Some(13));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = net.update(b, vec![7, 13]);
        }));
        POISON.set(None);
        assert!(panicked.is_err(), "the panic goes on to the caller");
        assert!(net[b].is_poisoned());
        assert!(net[b].state().0.contains(&7), "the reduce left part of the update");
        assert_eq!(net.update(b, vec![8]), Err(ReplicaError::Poisoned));
        // Peers' updates are still taken.
        net.update(a, vec![3]).expect("a's write");
        net.pump();
        assert!(net[b].state().0.contains(&3));
        assert!(!net[a].state().0.contains(&7), "nothing sends what no record holds");
        net.cut(link);
        net[b].rejoin(Fragile::default());
        assert!(!net[b].is_poisoned());
        net.update(b, vec![4]).expect("b writes again");
        net.link(a, b);
        net.pump();
        let all = BTreeSet::from([1, 2, 3, 4]);
        assert_eq!(net[a].state().0, all);
        assert_eq!(net[b].state().0, all, "the part the panic left is gone");
        assert_eq!(net[a].clock(), net[b].clock());
    }

    /// A grow-only set sent in parts, whose reduce takes an update's values
    /// from the highest down and panics at the poisoned value, the higher
    /// ones already in.
    #[derive(Default, Debug)]
    struct FragileParts(BTreeSet<u64>);

    impl Reduce for FragileParts {
        type Update = BTreeSet<u64>;

        fn reduce(&mut self, update: BTreeSet<u64>) -> Option<BTreeSet<u64>> {
            let mut added = BTreeSet::new();
            for value in update.into_iter().rev() {
                assert!(POISON.get() != Some(value), "the user's reduce fails at {value}");
                if self.0.insert(value) {
                    added.insert(value);
                }
            }
            (!added.is_empty()).then_some(added)
        }

        fn snapshot(&self) -> BTreeSet<u64> {
            self.0.clone()
        }

        fn snapshot_part(
            &self,
            cursor: Option<&[u8]>,
            max: usize,
        ) -> (BTreeSet<u64>, Option<Vec<u8>>) {
            let from =
                cursor.and_then(|c| <[u8; 8]>::try_from(c).ok()).map_or(0, u64::from_be_bytes);
            let part = self.0.range(from..).take(max.max(1)).copied().collect();
            let next = self.0.range(from..).nth(max.max(1)).map(|n| n.to_be_bytes().to_vec());
            (part, next)
        }
    }

    /// Runs `write` on `r` with `POISON` at 13; whether it panicked.
    fn poisoned_write<T: Reduce>(r: &mut Replica<T>, now: u64, write: T::Update) -> bool {
        POISON.set(Some(13));
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let _ = r.update(now, write);
        }));
        POISON.set(None);
        panicked.is_err()
    }

    /// A poisoned replica starts no snapshot (the panic's leftover would go
    /// with it), and its stamp is spent.
    #[test]
    fn a_poisoned_replica_sends_no_snapshot() {
        let mut net = Network::new();
        let small = Config::default().history_limit(2);
        let a = net.add(Replica::with_config(id("a"), Fragile::default(), small));
        let b = net.add(Replica::new(id("b"), Fragile::default()));
        let c = net.add(Replica::new(id("c"), Fragile::default()));
        // c's writes reach a, whose log keeps two records.
        let ac = net.link(a, c);
        for i in 1..=3 {
            net.update(c, vec![i]).expect("c's write");
        }
        net.pump();
        net.cut(ac);
        let before = net[a].last_timestamp();
        let now = net.now();
        assert!(poisoned_write(&mut net[a], now, vec![7, 13]));
        assert!(net[a].last_timestamp() > before, "the panicked write's stamp is spent");
        // b lacks what a's log no longer holds: it would need a snapshot.
        let ab = net.link(a, b);
        net.pump();
        assert_eq!(net[b].stats().snapshots, 0, "no snapshot from a poisoned replica");
        assert!(!net[b].state().0.contains(&7));
        net.cut(ab);
        net[a].rejoin(Fragile::default());
        net.link(a, c);
        net.link(a, b);
        net.pump();
        let all = BTreeSet::from([1, 2, 3]);
        for r in [a, b, c] {
            assert_eq!(net[r].state().0, all, "the leftover is nowhere");
        }
    }

    /// A snapshot going out when its replica is poisoned is cut short: its
    /// later parts, made from the state as they go, would carry the
    /// leftover.
    #[test]
    fn a_snapshot_going_out_is_cut_short_by_a_poisoning() {
        const NOW: u64 = 1_700_000_000_000;
        let config = Config::default().history_limit(2).batch_bytes(64).snapshot_part_bytes(64);
        let mut a = Replica::with_config(id("a"), FragileParts::default(), config);
        for chunk in 0..5u64 {
            a.update(NOW, (chunk * 100..chunk * 100 + 100).collect()).expect("a's write");
        }
        let mut b = Replica::new(id("b"), FragileParts::default());
        let (sa, sb) = (
            a.open(crate::StreamOpts::default()).expect("open"),
            b.open(crate::StreamOpts::default()).expect("open"),
        );
        let mut hello = Vec::new();
        while b.poll_transmit(sb, &mut hello).expect("b's frames") > 0 {}
        a.handle(sa, NOW, &hello).expect("b's hello");
        let mut first = Vec::new();
        a.poll_transmit(sa, &mut first).expect("a's first frames");
        b.handle(sb, NOW, &first).expect("the snapshot's first part");
        let seen = b.state().0.len();
        assert!(seen > 0 && !b.state().0.contains(&499), "the snapshot is part way");
        // 1000 sorts last: a later part would carry it.
        assert!(poisoned_write(&mut a, NOW + 1, BTreeSet::from([1000, 13])));
        assert!(!a.open_streams().any(|s| s == sa), "the stream sending it was cut");
        let mut rest = Vec::new();
        while let Ok(n) = a.poll_transmit(sa, &mut rest)
            && n > 0
        {}
        let _ = b.handle(sb, NOW + 1, &rest);
        assert!(!b.state().0.contains(&1000), "the leftover went nowhere");
    }

    /// A kept write whose reduce panics in a rejoin leaves every kept write
    /// recorded, the replica poisoned; a second rejoin keeps them all.
    #[test]
    fn a_rejoin_whose_kept_write_panics_keeps_every_write_for_the_next() {
        let mut r = Replica::new(id("r"), Fragile::default());
        for write in [vec![1], vec![13], vec![3]] {
            r.update(1_700_000_000_000, write).expect("r's write");
        }
        POISON.set(Some(13));
        let panicked = catch_unwind(AssertUnwindSafe(|| r.rejoin(Fragile::default())));
        POISON.set(None);
        assert!(panicked.is_err());
        assert!(r.is_poisoned());
        assert_eq!(r.history_len(), 3, "every kept write is recorded");
        r.rejoin(Fragile::default());
        assert!(!r.is_poisoned());
        assert_eq!(r.state().0, BTreeSet::from([1, 13, 3]));
    }

    /// A rejoin takes the highest floor of the peers it streams with: one
    /// whose Hello said a higher floor than the replica's own (not taken
    /// yet: the replica lacks some of its writes) would find it stale at
    /// once for a write kept below that floor.
    #[test]
    fn a_rejoin_takes_the_highest_floor_of_its_peers() {
        const NOW: u64 = 1_700_000_000_000;
        let mut a = Replica::new(id("a"), Fragile::default());
        a.update(NOW, vec![1]).expect("a's write");
        let floor = Timestamp::new(NOW + 10, 0);
        a.collect(floor);
        let mut b = Replica::new(id("b"), Fragile::default());
        b.update(NOW + 20, vec![2]).expect("b's write");
        let (sa, sb) = (
            a.open(crate::StreamOpts::default()).expect("open"),
            b.open(crate::StreamOpts::default()).expect("open"),
        );
        let mut hello = Vec::new();
        a.poll_transmit(sa, &mut hello).expect("a's hello");
        b.handle(sb, NOW + 20, &hello).expect("a's hello");
        assert_eq!(b.floor(), Timestamp::ZERO, "b lacks a's write: the floor waits");
        b.rejoin(Fragile::default());
        assert_eq!(b.rejoined_below(), floor);
    }

    /// A replica that rejoins gets back its own writes that were gone from
    /// its log, although a kept write's stamp, and one made since, claim
    /// them: its Hello asks for a snapshot, which holds them.
    #[test]
    fn a_rejoined_replica_gets_back_its_own_writes_gone_from_its_log() {
        let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
        net.update(a, vec![4]).expect("a's write after the rejoin");
        let snapshots = net[a].stats().snapshots;
        net.link(a, c);
        net.pump();
        assert!(net[a].stats().snapshots > snapshots, "c sent the snapshot a asked for");
        let all = BTreeSet::from([1, 2, 3, 4]);
        assert_eq!(net[a].state().0, all, "a's write gone from its log is back");
        assert_eq!(net[c].state().0, all);
        assert_eq!(net[a].clock(), net[c].clock());
        // Brought up: the next stream asks for nothing.
        let snapshots = net[a].stats().snapshots;
        net.link(a, c);
        net.pump();
        assert_eq!(net[a].stats().snapshots, snapshots, "no second snapshot");
    }

    /// A second rejoin before a snapshot came still asks for one: the
    /// first emptied the horizon that said what was gone.
    #[test]
    fn a_second_rejoin_before_a_snapshot_still_asks_for_one() {
        let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
        let missing = net[a].rejoin_missing();
        assert!(missing > Timestamp::ZERO);
        net[a].rejoin(Fragile::default());
        assert_eq!(net[a].rejoin_missing(), missing);
        net.link(a, c);
        net.pump();
        assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
        assert_eq!(net[a].clock(), net[c].clock());
    }

    /// A peer whose stream does not await the clock has started, and sent
    /// its history, before the Hello asking for a snapshot arrives: it
    /// sends one then.
    #[test]
    fn a_peer_not_awaiting_the_clock_sends_the_snapshot_asked_for() {
        // One at a time: c gets them by history, so its own history, from
        // its start, leaves a fresh peer nothing it needs a snapshot for.
        let (mut net, a, c) = rejoined_without_its_first_write(small(), true);
        assert_eq!(net[c].stats().snapshots, 0);
        let eager = StreamOpts::default().await_clock(false);
        net.link_with(a, StreamOpts::default(), c, eager);
        net.pump();
        assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
        assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
    }

    /// A peer asked for a snapshot it cannot send (it is poisoned) sends
    /// its history instead: a wanted snapshot is a favour, and waiting for
    /// it held back every update to the asker.
    #[test]
    fn a_wanted_snapshot_that_cannot_go_does_not_hold_back_history() {
        let mut net = Network::new();
        let small = Config::default().history_limit(2);
        let a = net.add(Replica::with_config(id("a"), Fragile::default(), small));
        let c = net.add(Replica::new(id("c"), Fragile::default()));
        let link = net.link(a, c);
        for i in 1..=3 {
            net.update(a, vec![i]).expect("a's write");
        }
        net.update(c, vec![10]).expect("c's write");
        net.pump();
        net.cut(link);
        net[a].rejoin(Fragile::default());
        net.update(c, vec![11]).expect("c's write");
        let now = net.now();
        assert!(poisoned_write(&mut net[c], now, vec![12, 13]));
        let snapshots = net[a].stats().snapshots;
        net.link(a, c);
        net.pump();
        assert_eq!(net[a].stats().snapshots, snapshots, "none from a poisoned replica");
        let state = &net[a].state().0;
        assert!(state.contains(&10) && state.contains(&11), "c's history came: {state:?}");
        assert!(!state.contains(&12), "not the panic's leftover");
        assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
    }

    /// A peer that did not await the clock and does not tail sent its Sync
    /// before the Hello asking for a snapshot came, with the asker's Sync
    /// in the same read: it sends the snapshot before it is done (it
    /// closed at once, and the asker never got it).
    #[test]
    fn a_peer_that_does_not_tail_sends_the_snapshot_asked_for_before_it_closes() {
        let (mut net, a, c) = rejoined_without_its_first_write(small(), true);
        let eager = StreamOpts::default().await_clock(false);
        let ac = net.link_with(a, eager.clone(), c, eager.tail(false));
        net.pump();
        assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
        assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
        // And then it is done, as a stream that does not tail is.
        let [_, (_, sc)] = net.streams(ac);
        let events: Vec<Event> = std::iter::from_fn(|| net[c].poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(e,
                Event::End { stream, reason: crate::EndReason::Local(crate::CloseReason::Done) }
                    if *stream == sc)),
            "c's stream closed as done: {events:?}"
        );
    }

    /// A stream that takes nothing does not ask for a snapshot, and its
    /// peer, which sends it nothing, still says Sync.
    /// Asserts that `c`, on its side of `link`, said Sync (among the
    /// events it has not yet given out).
    fn assert_said_sync<T: Reduce>(net: &mut Network<T>, c: NodeId, link: crate::LinkId) {
        let [_, (_, sc)] = net.streams(link);
        let events: Vec<Event> = std::iter::from_fn(|| net[c].poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(e, Event::SyncSent { stream } if *stream == sc)),
            "c said Sync: {events:?}"
        );
    }

    #[test]
    fn a_stream_that_takes_nothing_asks_for_no_snapshot() {
        let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
        // c holds what a lacks: it would answer a stream that takes.
        while net[c].poll_event().is_some() {}
        let ac = net.link_with(a, StreamOpts::send_only(), c, StreamOpts::default());
        net.pump();
        assert_said_sync(&mut net, c, ac);
        assert_eq!(net[a].stats().snapshots, 0);
        assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks its other streams");
    }

    /// A snapshot from a peer that had fewer of a rejoined replica's own
    /// writes than it lacks (one it needed from the first peer it reached)
    /// does not end its asking: the next peer's brings back the rest.
    /// Asking ended at the first, and the replica lacked its first write
    /// for good, though c had it.
    #[test]
    fn a_snapshot_lacking_some_missing_writes_leaves_the_asking_to_the_next_peer() {
        let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
        // b never heard of a, and its log lost its first write: a needs
        // its snapshot, which brings nothing of a's back.
        let b = net.add(Replica::with_config(id("b"), Fragile::default(), small_b()));
        net.update(b, vec![20]).expect("b's write");
        net.update(b, vec![21]).expect("b's write");
        let ab = net.link(a, b);
        net.pump();
        assert_eq!(net[a].stats().snapshots, 1, "b sent the snapshot a needed");
        assert!(net[a].state().0.contains(&20));
        assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
        net.cut(ab);
        net.link(a, c);
        net.pump();
        assert!(net[a].state().0.contains(&1), "c brought back a's first write");
        assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
    }

    /// A rejoin that kept none of its own writes (other sources' filled
    /// its log) asks for no snapshot while its clock claims none of them:
    /// history brings back what peers have. Once it writes, its clock
    /// claims them, and it asks. Before, the first snapshot (from a peer
    /// that had none of them) ended the asking, and after the write no
    /// peer sent them back.
    #[test]
    fn a_rejoin_that_kept_no_write_asks_once_its_clock_claims_the_missing() {
        let mut net = Network::new();
        let small = Config::default().history_limit(2);
        let a = net.add(Replica::with_config(id("a"), Fragile::default(), small));
        let c = net.add(Replica::new(id("c"), Fragile::default()));
        let ac = net.link(a, c);
        for i in 1..=3 {
            net.update(a, vec![i]).expect("a's write");
        }
        net.pump();
        for i in 10..=11 {
            net.update(c, vec![i]).expect("c's write");
        }
        net.pump();
        net.cut(ac);
        net[a].rejoin(Fragile::default());
        assert!(net[a].rejoin_missing() > Timestamp::ZERO);
        assert!(net[a].state().0.is_empty(), "c's writes filled a's log: it kept none of its own");
        // b's snapshot (a needs it: b's log lost its first write) has none
        // of a's writes.
        let b = net.add(Replica::with_config(id("b"), Fragile::default(), small_b()));
        net.update(b, vec![20]).expect("b's write");
        net.update(b, vec![21]).expect("b's write");
        let ab = net.link(a, b);
        net.pump();
        net.cut(ab);
        assert_eq!(net[a].stats().snapshots, 1);
        assert!(net[a].rejoin_missing() > Timestamp::ZERO, "b had none of them");
        net.update(a, vec![4]).expect("a's write after the rejoin");
        net.link(a, c);
        net.pump();
        assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3, 4, 10, 11, 20, 21]));
        assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
    }

    /// Only a peer whose clock holds the newest write the asker lacks
    /// answers its request: one without it (here one that never takes the
    /// asker's writes) would send a whole state on every stream for less.
    #[test]
    fn a_peer_without_the_missing_writes_sends_no_snapshot() {
        let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
        let b = net.add(Replica::new(id("b"), Fragile::default()));
        net.update(b, vec![20]).expect("b's write");
        let deaf = StreamOpts { receives: false, ..StreamOpts::default() };
        for round in 0..3 {
            let ab = net.link_with(a, StreamOpts::default(), b, deaf.clone());
            net.pump();
            net.cut(ab);
            assert_eq!(net[a].stats().snapshots, 0, "round {round}: b sent none");
        }
        assert!(net[a].state().0.contains(&20), "b's history came");
        assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
        net.link(a, c);
        net.pump();
        assert_eq!(net[a].stats().snapshots, 1, "c answered");
        assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3, 20]));
        assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
    }

    /// A strict replica that trusts nobody's snapshots does not ask for
    /// one; one that trusts some asks, and a peer whose snapshot it refused
    /// as unsigned does not answer the same request again: each stream
    /// would cost a whole state, refused, and hold back the history.
    #[test]
    fn a_refused_answer_is_not_sent_again() {
        for trusted in [false, true] {
            let mut strict = small().require_signatures(true);
            if trusted {
                strict = strict.trust_snapshots_from([id("z")]);
            }
            let (mut net, a, c) = rejoined_without_its_first_write(strict, false);
            assert!(net[a].rejoin_missing() > Timestamp::ZERO);
            for round in 0..3 {
                let ac = net.link(a, c);
                net.pump();
                net.cut(ac);
                let refused = net[a].stats().snapshots_refused;
                assert_eq!(refused, u64::from(trusted), "trusted {trusted}, round {round}");
            }
            // The refusal stands for a while: a's settings may change.
            net.advance(DECLINE_MILLIS);
            let ac = net.link(a, c);
            net.pump();
            net.cut(ac);
            let refused = net[a].stats().snapshots_refused;
            assert_eq!(refused, 2 * u64::from(trusted), "trusted {trusted}: answered again");
        }
    }

    /// A stream that did not await the clock owes a snapshot from its
    /// start (its log lost records), held back by a store's hold; the
    /// peer's Hello then says it takes nothing: the stream owes it none,
    /// and says Sync (it waited for ever).
    #[test]
    fn a_snapshot_owed_to_a_peer_that_takes_nothing_does_not_hold_the_sync() {
        let mut net = Network::new();
        let small = Config::default().history_limit(2);
        let c = net.add(Replica::with_config(id("c"), Fragile::default(), small));
        for i in 1..=3 {
            net.update(c, vec![i]).expect("c's write");
        }
        net[c].hold_until_released();
        net.update(c, vec![4]).expect("c's write, not yet saved");
        let a = net.add(Replica::new(id("a"), Fragile::default()));
        let eager = StreamOpts::default().await_clock(false);
        let ac = net.link_with(a, StreamOpts::send_only(), c, eager);
        net.pump();
        assert_said_sync(&mut net, c, ac);
    }

    /// A log of one record: a peer that lacks the first of two writes
    /// needs a snapshot.
    fn small_b() -> Config {
        Config::default().history_limit(1)
    }

    /// A log of two records.
    fn small() -> Config {
        Config::default().history_limit(2)
    }

    /// a (with `config`, whose log holds two records) wrote 1, 2 and 3,
    /// which c took (`one_at_a_time`: each by history before the next),
    /// then they parted and a rejoined: its first write is gone from its
    /// log, and its clock claims it.
    fn rejoined_without_its_first_write(
        config: Config,
        one_at_a_time: bool,
    ) -> (Network<Fragile>, NodeId, NodeId) {
        let mut net = Network::new();
        let a = net.add(Replica::with_config(id("a"), Fragile::default(), config));
        let c = net.add(Replica::new(id("c"), Fragile::default()));
        let link = net.link(a, c);
        for i in 1..=3 {
            net.update(a, vec![i]).expect("a's write");
            if one_at_a_time {
                net.pump();
            }
        }
        net.pump();
        net.cut(link);
        net[a].rejoin(Fragile::default());
        (net, a, c)
    }
}

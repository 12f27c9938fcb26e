//! A replicated state: the state, its clock and its history.

mod apply;
mod durable;
mod floor;
mod parts;
mod subscription;

use std::collections::{BTreeMap, VecDeque};

use crate::history::{Entry, History};
use crate::session::{Demotions, Parent, Stream};
use crate::signing::change_digest;
use crate::source_table::SourceTable;
use crate::{
    Clock, Config, Envelope, Event, Identity, Proof, Reduce, SourceId, Stamp, StreamId, Timestamp,
};

pub(crate) use apply::{KEEP_ENVELOPES, Staged};
pub use subscription::{Change, Changes, Delivery, Subscription};

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
    /// Lazy-relay parents that had not delivered an announced update by
    /// the relay timeout, and lost the role to another peer or were left
    /// waiting for a new announcement
    /// ([`Config::relay_timeout_millis`](crate::Config::relay_timeout_millis)).
    pub relay_demotions: u64,
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
    /// The latest wall time (ms) a call gave this replica
    /// ([`Replica::handle`], [`Replica::handle_timeout`]): when a snapshot
    /// going out began, for its deadline (`poll_transmit` is given none).
    pub(crate) wall: u64,
    /// The lives peers announced in their Hellos, by id: the same id in
    /// another life lost its log. Bounded by [`MAX_LIVES`].
    pub(crate) lives: BTreeMap<SourceId, u64>,
    /// Signs the snapshots this replica sends, when set.
    pub(crate) snapshot_signer: Option<Identity>,
    /// Streams that lost a source's parent role by failing to deliver in
    /// time: barred from taking it back by announcing for a while.
    pub(crate) demoted: Demotions,
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

impl<T: Reduce> Core<T> {
    pub(crate) fn emit(&mut self, event: Event) {
        if self.events.len() >= self.config.max_events.max(1) {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

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
                wall: 0,
                lives: BTreeMap::new(),
                snapshot_signer: None,
                demoted: Demotions::default(),
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

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    /// Whether [`dispose`](Replica::dispose) was called.
    pub fn is_disposed(&self) -> bool {
        self.core.disposed
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

#[cfg(test)]
mod tests;

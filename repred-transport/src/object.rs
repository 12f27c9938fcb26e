//! Replicated objects held by a node: each one's replica behind a lock,
//! and what the node's connections need of it ([`Object`]). The handle users
//! hold is in `handle`, the stream ends a node tells of in `ends`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use repred::{
    ChannelBinding, CloseReason, Delivery, EndReason, Event, Reduce, Replica, ReplicaError,
    SessionError, SnapshotRefusal, SourceId, Stamp, Stats, StreamId, StreamOpts, StreamStats,
    Subscription,
};
use tokio::sync::{broadcast, watch};
use tracing::Span;

use crate::Error;
use crate::clock::now_ms;
use crate::collect::{CollectionBlocked, PeerView, stable_point};
use crate::durable::{Durable, Persist};
use crate::metrics::ObjectMetrics;
use repred_store::{Batch, Store, StoreError};

mod ends;
mod handle;
mod rejoin;
#[cfg(test)]
mod tests;

pub(crate) use ends::STREAM_ENDS_CAPACITY;
pub use ends::{StreamEnded, StreamEnds};
pub use handle::{Applied, Changes, Handle, Lagged, Refusal, Traffic};

/// How many applied changes a slow [`Changes`] reader may fall behind
/// before it is told it lagged.
const CHANGES_CAPACITY: usize = 1024;
/// How many stream refusals an object remembers ([`Handle::refusals`]).
const REFUSALS_KEPT: usize = 32;

/// Which peers a node streams an object with ([`Node::replicate_with`],
/// [`Node::set_peers`]).
///
/// [`Node::replicate_with`]: crate::Node::replicate_with
/// [`Node::set_peers`]: crate::Node::set_peers
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Peers {
    /// Every connected peer that replicates it: what
    /// [`Node::replicate`](crate::Node::replicate) does.
    #[default]
    All,
    /// Only these peers, by node id ([`Node::id`](crate::Node::id)): no
    /// stream of the object is opened to another peer, and another peer's
    /// stream of it waits, as for an object not replicated yet, until the
    /// set admits that peer or the connection ends. Empty: nobody.
    Only(BTreeSet<SourceId>),
}

impl Peers {
    /// Only these peers.
    pub fn only(peers: impl IntoIterator<Item = SourceId>) -> Self {
        Self::Only(peers.into_iter().collect())
    }

    /// Whether the object is streamed with `peer` (`None`: a peer whose id
    /// is not known, admitted only by [`Peers::All`]).
    pub fn admits(&self, peer: Option<SourceId>) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => peer.is_some_and(|p| set.contains(&p)),
        }
    }
}

/// What the node's connections need of an object, whatever its type: the
/// sans-IO replica's stream API, behind a lock, plus a way to wait for work.
pub(crate) trait Object: Send + Sync + 'static {
    /// A stream with `peer` (by node id, if its certificate names one),
    /// its Hellos bound to `binding` ([`StreamOpts::binding`]).
    fn open(
        &self,
        peer: Option<SourceId>,
        binding: Option<ChannelBinding>,
    ) -> Result<StreamId, ReplicaError>;
    /// Feeds bytes from the peer. Wakes the writers: the peer's frames may
    /// call for an answer, and applied changes are to be relayed.
    fn handle(&self, stream: StreamId, bytes: &[u8]) -> Result<(), SessionError>;
    fn poll_transmit(&self, stream: StreamId, out: &mut Vec<u8>) -> Result<usize, SessionError>;
    /// Some of the stream's bytes went to the peer: a snapshot going out
    /// on it is being taken in ([`repred::Replica::sent`]).
    fn sent(&self, stream: StreamId);
    /// Whether the core still has the stream (open, or with a Close to send).
    fn has_stream(&self, stream: StreamId) -> bool;
    fn close(&self, stream: StreamId);
    fn abort(&self, stream: StreamId);
    /// The stream's task ended: keep its counters, drop it.
    fn forget(&self, stream: StreamId);
    /// Bumped whenever a stream may have something new to send.
    fn wakeups(&self) -> watch::Receiver<u64>;
    fn dispose(&self);
    /// When the replica's timers are next due (wall milliseconds).
    fn poll_timeout(&self) -> Option<u64>;
    /// Runs the replica's due timers.
    fn handle_timeout(&self);
    /// Which end, if either, ended `stream` on purpose with a Close: it
    /// stopped replicating the object (`Disposed`:
    /// [`Node::release`](crate::Node::release)) or streaming it with the
    /// other (`Closed`: [`Node::set_peers`](crate::Node::set_peers), or a
    /// node shutting down). Either may want a stream of it again later on
    /// the same connection. Known until [`forget`](Object::forget).
    fn released(&self, stream: StreamId) -> Option<Released>;
    /// Whether it was disposed of: being released (or the node stops), so
    /// no stream is opened or taken for it.
    fn is_disposed(&self) -> bool;
    /// Whether it is taking in a peer's snapshot (streams wait to open).
    fn receiving_snapshot(&self) -> bool;
    /// Whether a stream of it may be opened or taken with `peer`.
    fn admits(&self, peer: Option<SourceId>) -> bool;
    /// Which peers it is streamed with from now on: live streams with a
    /// peer the set does not admit are closed.
    fn set_peers(&self, peers: Peers);
    /// Collects its deletes if it can (see [`crate::collect`]): `writers`
    /// are the members, this node excluded, that may still write.
    fn collect(&self, writers: &BTreeSet<SourceId>);
    /// Shows the peers this node passed the changes it took since the
    /// last call, unless it wrote since ([`repred::Replica::show_progress`]):
    /// a member that does not write still lets the deletes it saw go.
    fn show_progress(&self);
}

/// Which end of a stream ended it on purpose ([`Object::released`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// This node.
    Here,
    /// The peer.
    Peer,
}

struct Inner<T: Reduce> {
    replica: Replica<T>,
    /// Drained after every change into the broadcast channel.
    subscription: Subscription,
    /// Last known counters of each live stream: the core drops a stream's
    /// counters when it ends, the traffic totals must not.
    live: HashMap<StreamId, StreamStats>,
    traffic: Traffic,
    /// The latest refusals, oldest first, at most [`REFUSALS_KEPT`].
    refusals: std::collections::VecDeque<Refusal>,
    /// The replica's counters when last read: the metrics count the
    /// difference.
    last: Stats,
    /// Each live stream's span (its connection's peer, its object), so
    /// that an event of that stream is logged in it whichever task drains
    /// it.
    spans: HashMap<StreamId, Span>,
    /// Live streams that one end ended on purpose ([`Object::released`]).
    released: HashMap<StreamId, Released>,
    /// Which peers new streams may be with.
    peers: Peers,
    /// The peer of each live stream: whom [`Object::set_peers`] cuts, and
    /// what a [`StreamEnded`] names.
    stream_peers: HashMap<StreamId, Option<SourceId>>,
    /// What the node's collections did ([`Object::collect`]).
    collection: Collection,
    /// Makes the empty state to start over from when a peer finds the
    /// replica stale ([`Handle::rejoin_when_stale`]).
    fresh: Option<Arc<dyn Fn() -> T + Send + Sync>>,
}

impl<T: Reduce> Inner<T> {
    /// Whether a new stream with `peer` may be opened or taken: its set of
    /// peers admits it, and the replica is not stale (a stream would only
    /// be refused again; it waits for [`Handle::rejoin`]).
    fn admits(&self, peer: Option<SourceId>) -> bool {
        self.peers.admits(peer) && self.replica.stale_floor().is_none()
    }
}

/// What the node's collections of an object did
/// ([`Builder::collect_every`](crate::Builder::collect_every)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Collection {
    /// Collections that raised the floor.
    runs: u64,
    /// Why the last attempt did not collect, if it did not.
    blocked: Option<CollectionBlocked>,
    /// The replica's count of remote changes (and snapshots) when
    /// [`Object::show_progress`] last looked.
    changes_seen: u64,
}

/// One replicated object: its replica and the channels around it.
pub(crate) struct Shared<T: Reduce> {
    name: String,
    inner: Mutex<Inner<T>>,
    /// The node's store, when the node is durable.
    durable: Option<Arc<Durable>>,
    wake: watch::Sender<u64>,
    changes: broadcast::Sender<Result<Applied<T::Update>, Lagged>>,
    /// The node's [`StreamEnded`]s.
    ends: broadcast::Sender<StreamEnded>,
    metrics: ObjectMetrics,
    /// Tells the node's connections to look at the objects again (which
    /// each admits): after a [`Handle::rejoin`].
    look_again: Box<dyn Fn() + Send + Sync>,
}

impl<T> Shared<T>
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// An object whose log the node's store keeps; `node` labels its
    /// metrics; its streams' ends go to `ends`.
    pub(crate) fn with_store(
        name: String,
        replica: Replica<T>,
        durable: Option<Arc<Durable>>,
        node: &str,
        peers: Peers,
        ends: broadcast::Sender<StreamEnded>,
        look_again: Box<dyn Fn() + Send + Sync>,
    ) -> Arc<Self> {
        let subscription = replica.subscribe();
        // A loaded replica's counters start where its log left them; only
        // what happens from now on is this process's to count.
        let last = replica.stats();
        let inner = Inner {
            replica,
            subscription,
            live: HashMap::new(),
            traffic: Traffic::default(),
            refusals: Default::default(),
            last,
            spans: HashMap::new(),
            released: HashMap::new(),
            peers,
            stream_peers: HashMap::new(),
            collection: Collection::default(),
            fresh: None,
        };
        let metrics = ObjectMetrics::new(node, &name);
        Arc::new(Self {
            name,
            durable,
            inner: Mutex::new(inner),
            wake: watch::Sender::new(0),
            changes: broadcast::Sender::new(CHANGES_CAPACITY),
            ends,
            metrics,
            look_again,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // A panic in a user's reduce poisons the lock; the replica itself is
        // only ever changed through its own methods, so it is still whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After anything that may have changed the state: publish the applied
    /// changes, log and count what happened, keep the refusals among the
    /// events, and wake the writers.
    fn settle(&self, inner: &mut Inner<T>) {
        let Inner { replica, subscription, .. } = inner;
        let listening = self.changes.receiver_count() > 0;
        for delivery in replica.changes(subscription) {
            if !listening {
                continue;
            }
            let item = match delivery {
                Delivery::Change(c) => Ok(Applied {
                    source: c.source,
                    ts: c.ts,
                    change: c.change.clone(),
                    via_snapshot: c.via_snapshot,
                }),
                // More changes in one go than the history keeps: readers
                // are told, as they would be by the channel.
                Delivery::Lagged { missed } => Err(Lagged(missed)),
            };
            let _ = self.changes.send(item);
        }
        self.observe(inner);
        self.wake_writers();
    }

    /// Drains the replica's events into the log (each in its stream's
    /// span), keeps the refusals, and counts what the replica did since
    /// the last look.
    fn observe(&self, inner: &mut Inner<T>) {
        let Inner { replica, refusals, last, spans, released, stream_peers, .. } = inner;
        let ended = |stream: StreamId, reason: &EndReason| {
            if self.ends.receiver_count() == 0 {
                return;
            }
            let peer = stream_peers.get(&stream).copied().flatten();
            let reason = reason.clone();
            let _ = self.ends.send(StreamEnded { object: self.name.clone(), peer, reason });
        };
        let span_of = |stream: StreamId| spans.get(&stream).cloned().unwrap_or_else(Span::current);
        // Events are bounded by the core; what the transport keeps of them
        // is the refusals, for whoever asks.
        while let Some(event) = replica.poll_event() {
            match event {
                Event::Header { stream, id, clock, .. } => tracing::debug!(
                    parent: &span_of(stream),
                    peer_source = %id,
                    peer_sources = clock.len(),
                    "hello received"
                ),
                Event::Synced { stream } => {
                    let s = replica.stream_stats(stream).unwrap_or_default();
                    tracing::info!(
                        parent: &span_of(stream),
                        bytes_sent = s.bytes_sent,
                        bytes_received = s.bytes_received,
                        updates_sent = s.updates_sent,
                        updates_received = s.updates_received,
                        snapshots_sent = s.snapshots_sent,
                        "synced"
                    );
                }
                Event::End { stream, reason } if is_refusal(&reason) => {
                    self.metrics.streams_refused.increment(1);
                    tracing::warn!(
                        parent: &span_of(stream),
                        reason = ?reason,
                        "stream refused: one side refused the other's frames (the same name \
                         replicated with two types?); the connection goes on"
                    );
                    if refusals.len() >= REFUSALS_KEPT {
                        refusals.pop_front();
                    }
                    ended(stream, &reason);
                    if let Some(by) = released_by(&reason) {
                        released.insert(stream, by);
                    }
                    refusals.push_back(Refusal { reason, at_ms: now_ms() });
                }
                Event::End { stream, reason } => {
                    ended(stream, &reason);
                    if let Some(by) = released_by(&reason) {
                        released.insert(stream, by);
                    }
                    tracing::debug!(parent: &span_of(stream), reason = ?reason, "stream ended");
                }
                Event::Rejected { source, ts, reason } => tracing::debug!(
                    source = %source,
                    ts = ?ts,
                    reason = %reason,
                    "update refused"
                ),
                Event::SnapshotRefused { stream, peer, reason } => tracing::debug!(
                    parent: &span_of(stream),
                    peer_source = %peer,
                    reason = %reason,
                    "snapshot refused"
                ),
                Event::Stale { stream, peer, floor } => tracing::warn!(
                    parent: &span_of(stream),
                    peer_source = %peer,
                    floor = ?floor,
                    "stale: the peer forgot deletes this replica may still hold; \
                     Handle::rejoin starts it over from a peer's snapshot"
                ),
                _ => {}
            }
        }
        let now = replica.stats();
        self.metrics.replica(last, &now);
        if now.snapshots > last.snapshots {
            tracing::info!(merged = now.snapshots - last.snapshots, "snapshot merged");
        }
        *last = now;
    }

    /// Tells every stream's writer there may be something to send.
    fn wake_writers(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Keeps a live stream's counters, and counts what it moved since the
    /// last look.
    fn remember(&self, inner: &mut Inner<T>, stream: StreamId) {
        let Some(stats) = inner.replica.stream_stats(stream) else { return };
        let old = inner.live.insert(stream, stats).unwrap_or_default();
        self.metrics.stream(&old, &stats);
        if stats.snapshots_sent > old.snapshots_sent {
            let span = inner.spans.get(&stream).cloned().unwrap_or_else(Span::current);
            tracing::info!(parent: &span, "snapshot sent");
        }
    }

    /// A local update; with a store, also the ticket of the commit that
    /// will hold it.
    pub(crate) fn update(&self, update: T::Update) -> Result<(Option<Stamp>, Option<u64>), Error> {
        let mut inner = self.lock();
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.replica.update(now_ms(), update)
        }));
        // A write that panicked in the user's reduce, or could not be
        // signed, poisoned the replica, which cut the snapshots going out:
        // those streams' ends are logged, and their writers woken to
        // finish, now rather than at whatever happens next. (A write
        // refused as disposed or poisoned changed nothing.)
        if matches!(written, Err(_) | Ok(Err(ReplicaError::Encode(_)))) {
            self.settle(&mut inner);
        }
        let stamp = match written {
            Ok(stamp) => stamp,
            Err(panic) => {
                drop(inner);
                // One whose `unstamp` panicked is recorded all the same:
                // saved, and so sent, as any other.
                if let Some(durable) = &self.durable {
                    durable.request();
                }
                std::panic::resume_unwind(panic)
            }
        };
        let stamp = stamp.map_err(|e| match e {
            ReplicaError::Disposed => Error::Shutdown,
            e => Error::Replica(e),
        })?;
        let mut ticket = None;
        if stamp.is_some() {
            self.settle(&mut inner);
            ticket = self.durable.as_ref().map(|d| d.request());
        }
        Ok((stamp, ticket))
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(self.lock().replica.state())
    }
}

impl<T> Object for Shared<T>
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    fn open(
        &self,
        peer: Option<SourceId>,
        binding: Option<ChannelBinding>,
    ) -> Result<StreamId, ReplicaError> {
        let mut inner = self.lock();
        let opts = StreamOpts { binding, authenticated_peer: peer, ..StreamOpts::default() };
        let id = inner.replica.open(opts)?;
        inner.stream_peers.insert(id, peer);
        if !inner.admits(peer) {
            // The set dropped the peer while this stream was being taken,
            // or the replica went stale.
            inner.replica.close(id);
        }
        inner.traffic.sessions += 1;
        // Opened from the stream's task, in the stream's span.
        inner.spans.insert(id, Span::current());
        self.metrics.streams_opened.increment(1);
        self.metrics.streams_open.increment(1.0);
        self.remember(&mut inner, id);
        Ok(id)
    }

    fn handle(&self, stream: StreamId, bytes: &[u8]) -> Result<(), SessionError> {
        let mut inner = self.lock();
        let result = inner.replica.handle(stream, now_ms(), bytes);
        self.remember(&mut inner, stream);
        self.settle(&mut inner);
        let rejoin = self.rejoin_factory(&inner);
        drop(inner);
        if let Some(durable) = &self.durable {
            // Remote changes are saved promptly too, though nobody waits.
            durable.request();
        }
        if let Some(make) = rejoin {
            self.rejoin_with(make);
        }
        result
    }

    fn sent(&self, stream: StreamId) {
        self.lock().replica.sent(stream, now_ms());
    }

    fn poll_transmit(&self, stream: StreamId, out: &mut Vec<u8>) -> Result<usize, SessionError> {
        let mut inner = self.lock();
        let written = inner.replica.poll_transmit(stream, out);
        self.remember(&mut inner, stream);
        // Sending may end a sync (our Sync after the peer's, say, when
        // what it waited for was held for the store): its events are
        // logged now, not whenever something else happens next.
        self.observe(&mut inner);
        written
    }

    fn has_stream(&self, stream: StreamId) -> bool {
        // The core keeps an ended stream only while its Close is unsent;
        // counters exist exactly as long as the stream does.
        self.lock().replica.stream_stats(stream).is_some()
    }

    fn close(&self, stream: StreamId) {
        let mut inner = self.lock();
        inner.replica.close(stream);
        self.settle(&mut inner);
    }

    fn abort(&self, stream: StreamId) {
        let mut inner = self.lock();
        inner.replica.abort(stream);
        self.settle(&mut inner);
    }

    fn forget(&self, stream: StreamId) {
        let mut inner = self.lock();
        self.remember(&mut inner, stream);
        inner.replica.abort(stream);
        if let Some(stats) = inner.live.remove(&stream) {
            inner.traffic.add(&stats);
            self.metrics.streams_open.decrement(1.0);
        }
        self.observe(&mut inner);
        inner.spans.remove(&stream);
        inner.released.remove(&stream);
        inner.stream_peers.remove(&stream);
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    fn dispose(&self) {
        let mut inner = self.lock();
        inner.replica.dispose();
        self.settle(&mut inner);
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.lock().replica.poll_timeout()
    }

    fn handle_timeout(&self) {
        let mut inner = self.lock();
        inner.replica.handle_timeout(now_ms());
        self.settle(&mut inner);
    }

    fn released(&self, stream: StreamId) -> Option<Released> {
        self.lock().released.get(&stream).copied()
    }

    fn is_disposed(&self) -> bool {
        self.lock().replica.is_disposed()
    }

    fn receiving_snapshot(&self) -> bool {
        self.lock().replica.receiving_snapshot()
    }

    fn admits(&self, peer: Option<SourceId>) -> bool {
        self.lock().admits(peer)
    }

    fn set_peers(&self, peers: Peers) {
        let mut inner = self.lock();
        // A stream with a peer the set drops ends with a Close (`Closed`,
        // the application's): the peer learns it was cut on purpose, and
        // the name is free on the connection, so that a stream may come
        // again if the set admits the peer later. Each writer sends its
        // Close and finishes.
        let cut: Vec<StreamId> = inner
            .stream_peers
            .iter()
            .filter(|(_, peer)| !peers.admits(**peer))
            .map(|(stream, _)| *stream)
            .collect();
        inner.peers = peers;
        for stream in cut {
            inner.replica.close(stream);
        }
        self.settle(&mut inner);
    }

    fn show_progress(&self) {
        let mut inner = self.lock();
        let replica = &inner.replica;
        let stats = replica.stats();
        let changes = stats.applied + stats.snapshots;
        // Only what others changed calls for it: an advance changes
        // nothing, so those of the others call for none in return.
        let news = changes != inner.collection.changes_seen;
        let behind = replica.clock().get(replica.id()) < replica.clock().max();
        let idle = !replica.is_disposed() && replica.stale_floor().is_none();
        inner.collection.changes_seen = changes;
        if !(news && behind && idle) {
            return;
        }
        if inner.replica.show_progress(now_ms()).is_err() {
            return;
        }
        self.settle(&mut inner);
        drop(inner);
        if let Some(durable) = &self.durable {
            // Held until saved, as every record of a durable node.
            durable.request();
        }
    }

    fn collect(&self, writers: &BTreeSet<SourceId>) {
        let mut inner = self.lock();
        let verdict = if inner.peers != Peers::All {
            Err(CollectionBlocked::ChosenPeers)
        } else {
            let Inner { replica, stream_peers, .. } = &*inner;
            let syncing =
                replica.open_streams().filter(|&stream| !replica.is_synced(stream)).count();
            let views: Vec<PeerView> = replica
                .open_streams()
                .filter(|&stream| replica.is_synced(stream))
                .filter_map(|stream| {
                    Some(PeerView {
                        node: stream_peers.get(&stream).copied().flatten()?,
                        known: replica.peer_known(stream)?,
                        heard: replica.peer_heard(stream)?,
                    })
                })
                .collect();
            stable_point(writers, replica.clock(), &views, syncing)
        };
        match verdict {
            Ok(point) if point > inner.replica.floor() => {
                let was_stale = inner.replica.stale_floor().is_some();
                let dropped = inner.replica.collect(point);
                inner.collection.runs += 1;
                inner.collection.blocked = None;
                tracing::debug!(object = %self.name, point = ?point, dropped, "collected");
                self.settle(&mut inner);
                // A floor raised over parts of a cut snapshot, while the
                // clock claims none of the peers' writes, is a stale verdict
                // with no peer to say so (`Replica::collect`): the rejoin a
                // frame would start (`handle`) starts here, as no frame
                // may come.
                if !was_stale && inner.replica.stale_floor().is_some() {
                    tracing::warn!(
                        object = %self.name,
                        point = ?point,
                        "stale: collected over parts of a cut snapshot"
                    );
                }
                let rejoin = self.rejoin_factory(&inner);
                drop(inner);
                if let Some(make) = rejoin {
                    self.rejoin_with(make);
                }
            }
            Ok(_) => inner.collection.blocked = None,
            Err(blocked) => {
                if inner.collection.blocked != Some(blocked) {
                    tracing::debug!(object = %self.name, blocked = ?blocked, "not collecting");
                }
                inner.collection.blocked = Some(blocked);
            }
        }
    }
}

/// Which end, if either, ended a stream so that it may come again on the
/// same connection ([`Object::released`]). A stale end frees the name too:
/// once the stale side rejoins, a stream of the object comes again (until
/// then that side admits nobody). One that declined a snapshot chosen
/// against a clock it has left behind is not stale: the stream comes again
/// at once, its Hello telling the clock now. A snapshot refused as stalled
/// or too slow frees it as well: its sender may have been slow, not lying,
/// and may send it again.
fn released_by(reason: &EndReason) -> Option<Released> {
    let again = |r: &CloseReason| {
        matches!(
            r,
            CloseReason::Disposed
                | CloseReason::Closed
                | CloseReason::Stale { .. }
                | CloseReason::SnapshotRefused(
                    SnapshotRefusal::Stalled { .. } | SnapshotRefusal::TooSlow { .. }
                )
        )
    };
    match reason {
        EndReason::Local(r) if again(r) => Some(Released::Here),
        EndReason::Remote(r) if again(r) => Some(Released::Peer),
        _ => None,
    }
}

/// Whether a stream ended because one side refused the other (rather than
/// a close, a shutdown or a lost connection).
fn is_refusal(reason: &EndReason) -> bool {
    matches!(
        reason,
        EndReason::Local(CloseReason::Misbehaved(_) | CloseReason::SnapshotRefused(_))
            | EndReason::Remote(CloseReason::Misbehaved(_) | CloseReason::SnapshotRefused(_))
    )
}

impl<T> Persist for Shared<T>
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    fn prepare(&self, store: &Store) -> Result<Batch, StoreError> {
        store.prepare(&self.name, &self.lock().replica)
    }

    fn saved(&self, end_seq: u64) {
        self.lock().replica.release(end_seq);
        // What was held back may go out now.
        self.wake_writers();
    }
}

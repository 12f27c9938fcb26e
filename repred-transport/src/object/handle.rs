//! The handle users hold of an object, and what it reports.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use repred::{Clock, EndReason, Reduce, SourceId, Stamp, Stats, StreamStats, Timestamp};
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{Peers, Shared};
use crate::Error;
use crate::clock::now_ms;
use crate::collect::CollectionBlocked;

/// One applied change, local or remote, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<U> {
    /// The origin: the node that wrote it, or for a merged snapshot, the
    /// peer that sent it.
    pub source: SourceId,
    /// The origin's timestamp ([`Timestamp::ZERO`] for a snapshot).
    pub ts: Timestamp,
    /// What changed: the part of the update that changed the state.
    pub change: U,
    /// Whether it came from merging a peer's snapshot.
    pub via_snapshot: bool,
}

/// A [`Changes`] reader fell this many changes behind and missed them; the
/// state still holds their effect, so re-read it with [`Handle::read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("missed {0} changes")]
pub struct Lagged(pub u64);

/// Counters of an object's sessions, summed over every stream it had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Streams ever opened.
    pub sessions: u64,
    /// Streams open now.
    pub open: u64,
    /// Updates sent (history and live).
    pub updates_sent: u64,
    /// Updates received.
    pub updates_received: u64,
    /// Snapshots sent.
    pub snapshots_sent: u64,
    /// Bytes of frames sent.
    pub bytes_sent: u64,
    /// Bytes of frames received.
    pub bytes_received: u64,
}

impl Traffic {
    pub(super) fn add(&mut self, s: &StreamStats) {
        self.updates_sent += s.updates_sent;
        self.updates_received += s.updates_received;
        self.snapshots_sent += s.snapshots_sent;
        self.bytes_sent += s.bytes_sent;
        self.bytes_received += s.bytes_received;
    }
}

/// A stream of an object that ended because one side refused the other:
/// a protocol violation (a frame that does not decode, as when two nodes
/// replicate one name with different types) or a refused snapshot. The
/// connection and the object's other streams went on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Which side refused: [`EndReason::Local`] this node, with the reason
    /// it told the peer; [`EndReason::Remote`] the peer, with its reason.
    pub reason: EndReason,
    /// When, in wall milliseconds.
    pub at_ms: u64,
}

/// A replicated object of a [`Node`](crate::Node): write to it, read it,
/// and follow what changes, wherever the change was made.
///
/// Cheap to clone; every clone is the same object.
pub struct Handle<T: Reduce> {
    pub(crate) shared: Arc<Shared<T>>,
}

impl<T: Reduce> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<T: Reduce> std::fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl<T> Handle<T>
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// The object's name, as peers know it.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Makes a local update and hands it to every connected peer.
    ///
    /// Returns its stamp, or `None` when it changed nothing (then nothing is
    /// sent). On a durable node ([`Builder::durable`](crate::Builder::durable))
    /// it returns only once the update is on disk: an update whose `update`
    /// returned survives a crash. Concurrent updates share one commit. Fails
    /// after the node shut down or crashed (dropped), or when the store
    /// cannot be written; the update may then be on disk or not.
    ///
    /// Should the type's `reduce` panic, the panic goes on to the caller and
    /// the object is [poisoned](Handle::is_poisoned): the state may hold
    /// part of that update, which no peer would ever get, so later updates
    /// fail ([`Error::Replica`]) until [`rejoin`](Handle::rejoin).
    pub async fn update(&self, update: T::Update) -> Result<Option<Stamp>, Error> {
        let (stamp, ticket) = self.shared.update(update)?;
        if let (Some(ticket), Some(durable)) = (ticket, &self.shared.durable) {
            durable.wait(ticket).await?;
        }
        Ok(stamp)
    }

    /// Applies an update made elsewhere (imported from a file, bridged from
    /// another system) as if a peer had sent it: checked like any remote
    /// update (timestamp skew, signature, allow-list), then passed on to
    /// the peers.
    pub fn apply(&self, envelope: repred::Envelope<T::Update>) -> repred::Outcome {
        let mut inner = self.shared.lock();
        let outcome = inner.replica.apply(now_ms(), envelope);
        self.shared.settle(&mut inner);
        if let Some(durable) = &self.shared.durable {
            durable.request();
        }
        outcome
    }

    /// Whether a local update's `reduce` panicked, so the state may hold
    /// what no peer will get: local updates fail until
    /// [`rejoin`](Handle::rejoin) starts the object over from its peers
    /// ([`Replica::is_poisoned`](repred::Replica::is_poisoned)).
    pub fn is_poisoned(&self) -> bool {
        self.shared.lock().replica.is_poisoned()
    }

    /// Reads the state. The object is locked while `f` runs: keep it short.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        self.shared.read(f)
    }

    /// What this node has seen of the object, per source.
    pub fn clock(&self) -> Clock {
        self.shared.lock().replica.clock().clone()
    }

    /// Which peers the object is streamed with ([`Node::set_peers`](crate::Node::set_peers)).
    pub fn peers(&self) -> Peers {
        self.shared.lock().peers.clone()
    }

    /// The id this node writes under.
    pub fn source(&self) -> SourceId {
        self.shared.lock().replica.id()
    }

    /// What the replica did with updates: applied, old, refused (forged,
    /// unsigned, not allowed), snapshots merged and refused.
    pub fn stats(&self) -> Stats {
        self.shared.lock().replica.stats()
    }

    /// The latest streams of this object that ended because one side
    /// refused the other (at most 32, oldest first): a peer whose frames do
    /// not decode (the same name replicated with another type, say), a
    /// refused snapshot, a peer that came back in a new life. Only that
    /// stream ended; the connection and membership went on.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared.lock().refusals.iter().cloned().collect()
    }

    /// How many times the node collected the object's deletes
    /// ([`Builder::collect_every`](crate::Builder::collect_every)): each
    /// time its [floor](repred::Replica::floor) rose. What they dropped is
    /// [`Stats::collected`].
    pub fn collections(&self) -> u64 {
        self.shared.lock().collection.runs
    }

    /// Why the node's last attempt to collect the object's deletes did
    /// not, if it did not
    /// ([`Builder::collect_every`](crate::Builder::collect_every)).
    pub fn collection_blocked(&self) -> Option<CollectionBlocked> {
        self.shared.lock().collection.blocked
    }

    /// The member (node id) whose clock the node's last attempt to collect
    /// the object lacked, if that is why it did not: a writer of the
    /// object with no synced stream of it with this node
    /// ([`CollectionBlocked::NoClock`]).
    pub fn collection_blocked_by(&self) -> Option<SourceId> {
        match self.collection_blocked() {
            Some(CollectionBlocked::NoClock(member)) => Some(member),
            _ => None,
        }
    }

    /// Whether the object is taking in a peer's snapshot: a fresh node, or
    /// one far behind, catching up
    /// ([`Replica::receiving_snapshot`](repred::Replica::receiving_snapshot)).
    /// Meanwhile new streams of it wait to open (at most 30 s), so that
    /// their peers see the clock the snapshot brings.
    pub fn receiving_snapshot(&self) -> bool {
        self.shared.lock().replica.receiving_snapshot()
    }

    /// The object's collection floor: deletes older than it are forgotten
    /// ([`Replica::floor`](repred::Replica::floor)).
    pub fn floor(&self) -> Timestamp {
        self.shared.lock().replica.floor()
    }

    /// Counters of the object's sessions with peers, over its whole life.
    pub fn traffic(&self) -> Traffic {
        let inner = self.shared.lock();
        let mut total = inner.traffic;
        for stats in inner.live.values() {
            total.add(stats);
        }
        total.open = inner.live.len() as u64;
        total
    }

    /// Every change applied from now on, local or remote, in the order this
    /// node applied them: a [`Stream`], read with `changes.next().await`
    /// after `use repred_transport::StreamExt;`.
    pub fn changes(&self) -> Changes<T::Update> {
        Changes { inner: BroadcastStream::new(self.shared.changes.subscribe()) }
    }
}

/// The stream of a [`Handle`]'s applied changes.
///
/// Yields `Err(Lagged)` when the reader fell more than 1,024 changes behind.
pub struct Changes<U> {
    inner: BroadcastStream<Result<Applied<U>, Lagged>>,
}

impl<U: Clone + Send + 'static> Stream for Changes<U> {
    type Item = Result<Applied<U>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|r| r.unwrap_or_else(|BroadcastStreamRecvError::Lagged(n)| Err(Lagged(n))))
        })
    }
}

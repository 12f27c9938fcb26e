//! The stored copies a placing node let go: a replica the keeper dropped,
//! an access closed ([`Placer::close`]). Released, an object's log stays
//! in the node's store until every live replica of the object lists a
//! clock that covers the copy as released; then it is deleted
//! ([`Node::remove_stored_many`](repred_transport::Node::remove_stored_many)).
//!
//! The decision is taken under the placer's lock, every round, so a copy
//! not covered yet (a replica that lags, a peer's update that came in as
//! the copy was released) is looked at again at the next round rather than
//! kept forever. The deletion itself runs without that lock, on tokio's
//! blocking pool, all of a round's copies in one transaction: a leave that
//! lets many objects go costs one fsync per round, not one per object, and
//! no worker of the runtime waits on it. Meanwhile the node refuses to
//! make a replica of a name being removed
//! ([`Error::Removing`](repred_transport::Error::Removing)), so nothing
//! resumes a copy half deleted; a write on this node that finds it so
//! waits for the removal ([`Shared::removed`]).

use std::time::Duration;

use repred::{Clock, Reduce, SourceId};

use super::{Placer, Shared, State, View, lock};
use crate::Keeper;

/// How long a write waits for the removal of a stored copy of its object
/// before it gives up with the node's error: far longer than one
/// transaction (a few milliseconds), short enough to surface a removal
/// that is stuck on a failing disk.
pub(super) const REMOVAL_WAIT: Duration = Duration::from_secs(10);

/// A copy this node let go whose store still keeps its log.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    /// The copy's clock as released: final, it takes nothing more.
    pub(super) clock: Clock,
    /// Its number of replicas (`None`: the default).
    pub(super) k: Option<usize>,
}

/// Whether every live replica of `name` but `me` lists a clock covering
/// `clock` (and there is at least one): what a keeper's drop asks before
/// releasing, asked again of the copy as released before its stored log
/// goes. One covering replica is not enough: if it crashed before syncing
/// the others and never came back, a write that only this copy and that
/// replica had would be gone.
pub(super) fn covered(
    keeper: &Keeper<String>,
    view: &View,
    me: SourceId,
    name: &str,
    k: Option<usize>,
    clock: &Clock,
) -> bool {
    let placed = keeper.place(&name.to_string(), k);
    let mut others = placed.replicas.iter().filter(|r| **r != me).peekable();
    others.peek().is_some() && others.all(|r| view.lists(*r, name).is_some_and(|c| c.covers(clock)))
}

impl<T> Shared<T>
where
    T: Reduce + Default + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// Takes out of the copies kept those that every live replica covers
    /// now, to be removed; forgets those this node replicates again (its
    /// store's log is in use).
    pub(super) fn removable(&self) -> Vec<(String, Stored)> {
        if lock(&self.state).stored.is_empty() {
            return Vec::new();
        }
        let view = self.view();
        let mut state = lock(&self.state);
        let State { keeper, held, open, stored, .. } = &mut *state;
        stored.retain(|name, _| !held.contains_key(name) && !open.contains_key(name));
        let names: Vec<String> = stored
            .iter()
            .filter(|(name, s)| covered(keeper, &view, self.me, name, s.k, &s.clock))
            .map(|(name, _)| name.clone())
            .collect();
        names.into_iter().filter_map(|name| stored.remove_entry(&name)).collect()
    }

    /// Deletes the copies `removable` took out from the node's store, in
    /// one transaction off the runtime's workers. Those it could not
    /// delete (a failing disk) are kept for the next round, unless this
    /// node replicates them again meanwhile. Tells writes waiting for a
    /// removal that it is done, whatever the outcome.
    pub(super) async fn remove(&self, copies: Vec<(String, Stored)>) {
        let removed = self.node.remove_stored_many(copies.iter().map(|(name, _)| name)).await;
        // The store logs a failure; it loses nothing (the copies stay).
        if removed.is_err() {
            let mut state = lock(&self.state);
            let State { held, open, stored, .. } = &mut *state;
            for (name, copy) in copies {
                if !held.contains_key(&name) && !open.contains_key(&name) {
                    stored.entry(name).or_insert(copy);
                }
            }
        }
        // Names the node skipped are replicated again (or removed by
        // someone else): nothing to keep for them.
        self.removals.send_modify(|n| *n += 1);
    }

    /// Waits until the removal under way ends (bounded by
    /// [`REMOVAL_WAIT`]): for a write that found its object's stored copy
    /// being deleted. `seen` is the count of removals done when the write
    /// looked, so that one ending in between is not missed. Returns
    /// whether one ended.
    pub(super) async fn removed(&self, seen: u64) -> bool {
        let mut removals = self.removals.subscribe();
        let done = removals.wait_for(|n| *n != seen);
        matches!(tokio::time::timeout(REMOVAL_WAIT, done).await, Ok(Ok(_)))
    }
}

impl<T> Placer<T>
where
    T: Reduce + Default + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// The copies this node let go (objects it dropped, accesses closed)
    /// whose log its store still keeps: each is deleted once every live
    /// replica of the object lists a clock covering it (checked every
    /// tick), and kept, resumable, until then.
    pub fn stored(&self) -> Vec<String> {
        lock(&self.shared.state).stored.keys().cloned().collect()
    }
}

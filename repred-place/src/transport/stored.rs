//! The stored copies a placing node let go: a replica the keeper dropped,
//! an access closed ([`Placer::close`]). Released, an object's log stays
//! in the node's store until the object's k live replicas all list a
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
//!
//! The copies kept are listed in the directory under this node
//! (`Entry::Kept`, with the clock to cover), which the node's store keeps
//! as it keeps any object: a crash or a restart loses the list no more
//! than it loses the copies, and the next life takes it up
//! ([`Shared::list_kept`]), counting the clock each copy's log has
//! ([`Shared::check_kept`]): a past life may have resumed a copy and
//! written to it before its entry was unlisted. A name this node
//! replicates again (held or opened) drops its copy kept at once, before
//! the resumed copy takes a write, and its entry is unlisted the next
//! round.
//!
//! In a cluster of k nodes or fewer, a leaving node's copies never have
//! k live replicas besides it: [`Placer::leave`] does not wait for them
//! once those there are cover them ([`short_of_replicas`]); they stay,
//! listed.

use std::collections::BTreeSet;
use std::time::Duration;

use repred::{Clock, Reduce, SourceId, Stamped};
use repred_transport::Peers;

use super::{Entry, Key, Listing, Placer, Shared, State, View, lock};
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
/// releasing. (Its stored copy goes later, on the stricter [`may_go`].)
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

/// Whether the stored copy of `name` (`k` replicas, the copy's `clock`)
/// may go: the object has all its k live replicas by this node's member
/// list, none of them this node, and each lists a clock covering the
/// copy. One covering replica is not enough: if it crashed before syncing
/// the others and never came back, a write that only this copy and that
/// replica had would be gone. With fewer (replicas down and not yet stood in for, or a member
/// list still filling after a start, which could take a few nodes for all
/// the replicas) the copy stays: it is then one more home of its writes.
pub(super) fn may_go(
    keeper: &Keeper<String>,
    view: &View,
    me: SourceId,
    name: &str,
    k: usize,
    clock: &Clock,
) -> bool {
    let placed = keeper.place(&name.to_string(), Some(k));
    let others: Vec<SourceId> = placed.replicas.into_iter().filter(|r| *r != me).collect();
    others.len() >= k
        && others.iter().all(|r| view.lists(*r, name).is_some_and(|c| c.covers(clock)))
}

/// Whether the stored copy of `name` cannot go for want of replicas and
/// is as handed off as the cluster allows: by this node's member list the
/// object has fewer than k live replicas besides this node (a cluster of
/// k nodes or fewer, this one leaving), at least one, and each lists a
/// clock covering the copy. [`Placer::leave`] does not wait for such a
/// copy: it stays in the store, and listed, one more home of the
/// object's writes while the cluster is short of k other nodes. (Should
/// the node come back, its next life takes the list up and deletes the
/// copy once k live replicas cover it.)
pub(super) fn short_of_replicas(
    keeper: &Keeper<String>,
    view: &View,
    me: SourceId,
    name: &str,
    k: usize,
    clock: &Clock,
) -> bool {
    let placed = keeper.place(&name.to_string(), Some(k));
    let others: Vec<SourceId> = placed.replicas.into_iter().filter(|r| *r != me).collect();
    !others.is_empty()
        && others.len() < k
        && others.iter().all(|r| view.lists(*r, name).is_some_and(|c| c.covers(clock)))
}

impl<T> Shared<T>
where
    T: Reduce + Default + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// Takes out of the copies kept those that k live replicas cover
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
        let default_k = self.config.keeper.k;
        let names: Vec<String> = stored
            .iter()
            .filter(|(name, s)| {
                may_go(keeper, &view, self.me, name, s.k.unwrap_or(default_k), &s.clock)
            })
            .map(|(name, _)| name.clone())
            .collect();
        names.into_iter().filter_map(|name| stored.remove_entry(&name)).collect()
    }

    /// Takes up the copies kept that the directory lists under this node
    /// and this life does not know of (a past life let them go, then
    /// crashed or restarted before their deletion), and adds to `writes`
    /// what makes the directory list the copies kept as they are: the
    /// directory is itself durable, so the list survives a crash. A copy
    /// taken up is not removable before [`Shared::check_kept`] read the
    /// clock its store's log has: the past life may have resumed the copy
    /// and written to it after listing it (its entry is deleted a round
    /// after the take-up), so the listed clock may be short of it. A copy
    /// let go in the moment before a crash, not listed yet, is not
    /// covered by this: its log stays until the node lets it go again.
    pub(super) fn list_kept(&self, state: &mut State<T>, view: &View, writes: &mut Listing) {
        let State { held, open, stored, kept_listed, unchecked, checking, .. } = state;
        for (name, copy) in &view.kept {
            if !kept_listed.contains_key(name)
                && !stored.contains_key(name)
                && !unchecked.contains_key(name)
            {
                kept_listed.insert(name.clone(), copy.clock.clone());
                if !held.contains_key(name) && !open.contains_key(name) {
                    unchecked.insert(name.clone(), copy.clone());
                }
            }
        }
        for (name, copy) in stored.iter() {
            if kept_listed.get(name) != Some(&copy.clock) {
                let k = copy.k.map(|k| u32::try_from(k).unwrap_or(u32::MAX));
                let entry = Entry::Kept { k, clock: copy.clock.clone() };
                let key = Key::Kept { node: self.me, object: name.clone() };
                writes.push((key, Stamped::now(Some(entry))));
            }
        }
        for name in kept_listed.keys() {
            if !stored.contains_key(name)
                && !unchecked.contains_key(name)
                && !checking.contains(name)
            {
                let key = Key::Kept { node: self.me, object: name.clone() };
                writes.push((key, Stamped::now(None)));
            }
        }
    }

    /// Checks the copies kept that [`Shared::list_kept`] took up from a
    /// past life: loads each from the store for a moment (replicated with
    /// no peer, then released; an `open` meanwhile waits as for a
    /// removal), and keeps it with its log's clock merged into the one
    /// listed, so that it goes only once the object's replicas cover
    /// every write it has. One that this node holds or opens meanwhile
    /// needs no check (its log is in use); one that cannot be loaded or
    /// released (the node's error) stays unchecked, kept, for the next
    /// round.
    pub(super) async fn check_kept(&self) {
        let names: Vec<String> = {
            let mut state = lock(&self.state);
            let State { held, open, unchecked, .. } = &mut *state;
            unchecked.retain(|name, _| !held.contains_key(name) && !open.contains_key(name));
            unchecked.keys().cloned().collect()
        };
        for name in names {
            let handle = {
                let mut state = lock(&self.state);
                if !state.unchecked.contains_key(&name) {
                    continue;
                }
                match self.node.replicate_with(&name, T::default(), Peers::only(None)) {
                    Ok(handle) => {
                        state.checking.insert(name.clone());
                        handle
                    }
                    Err(_) => continue,
                }
            };
            let released = self.node.release(&name).await;
            let mut clock = handle.clock();
            drop(handle);
            let mut state = lock(&self.state);
            state.checking.remove(&name);
            if released.is_ok()
                && let Some(listed) = state.unchecked.remove(&name)
            {
                clock.merge(&listed.clock);
                state.stored.insert(name, Stored { clock, k: listed.k });
            }
            drop(state);
            // A write that found it being checked tries again.
            self.removals.send_modify(|n| *n += 1);
        }
    }

    /// Deletes the copies `removable` took out from the node's store, in
    /// one transaction off the runtime's workers. Those it did not delete
    /// (a failing disk; a name the node skipped, replicated or being made
    /// at that moment, say by a replicate that then failed) are kept for
    /// the next round, unless this node replicates them again meanwhile.
    /// Tells writes waiting for a removal that it is done, whatever the
    /// outcome.
    pub(super) async fn remove(&self, copies: Vec<(String, Stored)>) {
        let removed = self.node.remove_stored_many(copies.iter().map(|(name, _)| name)).await;
        // The store logs a failure; it loses nothing (the copies stay).
        let removed: BTreeSet<String> = removed.unwrap_or_default().into_iter().collect();
        {
            let mut state = lock(&self.state);
            let State { held, open, stored, unchecked, .. } = &mut *state;
            for (name, copy) in copies {
                if !removed.contains(&name)
                    && !held.contains_key(&name)
                    && !open.contains_key(&name)
                    && !unchecked.contains_key(&name)
                {
                    stored.entry(name).or_insert(copy);
                }
            }
        }
        self.removals.send_modify(|n| *n += 1);
    }

    /// Whether [`Placer::leave`] has nothing more to wait for among the
    /// copies kept: none unchecked, and each left [short of
    /// replicas](short_of_replicas) and listed in the directory as it
    /// is, so that a next life finds it (the others go as they are
    /// covered).
    pub(super) fn kept_handed_off(&self) -> bool {
        let view = self.view();
        let state = lock(&self.state);
        let default_k = self.config.keeper.k;
        state.unchecked.is_empty()
            && state.checking.is_empty()
            && state.stored.iter().all(|(name, s)| {
                let k = s.k.unwrap_or(default_k);
                state.kept_listed.get(name) == Some(&s.clock)
                    && short_of_replicas(&state.keeper, &view, self.me, name, k, &s.clock)
            })
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
    /// whose log its store still keeps: each is deleted once the object's
    /// k live replicas (by this node's member list, none of them this
    /// node) all list a clock covering it (checked every tick), and kept, resumable, until then, through restarts (the list
    /// is in the directory).
    pub fn stored(&self) -> Vec<String> {
        lock(&self.shared.state).stored.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeeperConfig;

    fn id(i: u32) -> SourceId {
        SourceId::new(format!("node-{i}")).unwrap()
    }

    /// A copy every listed replica covers, on a node whose member list
    /// holds only some of the cluster (as after a start, before SWIM told
    /// it of everyone): placed among those it knows, the object seems to
    /// have fewer than k other replicas, and the copy must stay even
    /// though each of those covers it. Once the whole list names k
    /// replicas, the copy goes when all of them cover it, not before.
    #[test]
    fn a_copy_stays_until_k_live_replicas_cover_it() {
        let me = id(0);
        let clock = Clock::default();
        let mut whole = Keeper::new(me, KeeperConfig::default());
        whole.sync_members(0, (0..8).map(|i| (id(i), true)));
        // An object this node is no replica of, on the whole list.
        let (name, replicas) = (0..)
            .map(|i| format!("doc-{i}"))
            .map(|name| {
                let replicas = whole.place(&name, Some(3)).replicas;
                (name, replicas)
            })
            .find(|(_, replicas)| !replicas.contains(&me))
            .expect("some object is placed elsewhere");
        let mut view = View::default();
        let list = |view: &mut View, node: SourceId| {
            let holders = view.held.entry(name.clone()).or_default();
            holders.insert(node, (3, clock.clone()));
        };
        list(&mut view, replicas[0]);
        list(&mut view, replicas[1]);

        // Knowing only the two that cover it: two replicas of three.
        let mut partial = Keeper::new(me, KeeperConfig::default());
        partial.sync_members(0, [(me, true), (replicas[0], true), (replicas[1], true)]);
        assert!(!may_go(&partial, &view, me, &name, 3, &clock), "two replicas of three known");

        assert!(!may_go(&whole, &view, me, &name, 3, &clock), "the third does not list it");
        list(&mut view, replicas[2]);
        assert!(may_go(&whole, &view, me, &name, 3, &clock), "all three cover it");
    }

    /// A node leaving a cluster of exactly k nodes: the object has k - 1
    /// live replicas besides it, so its copy never may go, and `leave`
    /// stops waiting for it once both cover it (not before). In a larger
    /// cluster the rule never lets `leave` skip a copy.
    #[test]
    fn leave_keeps_a_copy_only_short_of_replicas_and_covered() {
        let me = id(0);
        let clock = Clock::default();
        let name = "doc".to_string();
        let mut small = Keeper::new(me, KeeperConfig::default());
        small.sync_members(0, (0..3).map(|i| (id(i), true)));
        small.leave(0);
        let others: Vec<SourceId> =
            small.place(&name, Some(3)).replicas.into_iter().filter(|r| *r != me).collect();
        assert_eq!(others.len(), 2, "two replicas besides the leaver");
        let mut view = View::default();
        let list = |view: &mut View, node: SourceId| {
            view.held.entry(name.clone()).or_default().insert(node, (3, clock.clone()));
        };
        assert!(!short_of_replicas(&small, &view, me, &name, 3, &clock), "nobody covers it");
        list(&mut view, others[0]);
        assert!(!short_of_replicas(&small, &view, me, &name, 3, &clock), "one of two covers it");
        list(&mut view, others[1]);
        assert!(short_of_replicas(&small, &view, me, &name, 3, &clock), "both cover it");
        assert!(!may_go(&small, &view, me, &name, 3, &clock), "two of three: it stays");

        let mut whole = Keeper::new(me, KeeperConfig::default());
        whole.sync_members(0, (0..8).map(|i| (id(i), true)));
        whole.leave(0);
        let replicas = whole.place(&name, Some(3)).replicas;
        for r in &replicas {
            list(&mut view, *r);
        }
        assert!(!short_of_replicas(&whole, &view, me, &name, 3, &clock), "k replicas: it may go");
        assert!(may_go(&whole, &view, me, &name, 3, &clock));
    }
}

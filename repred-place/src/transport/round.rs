//! The placer's task: a round each tick (members, the directory, the
//! keeper's commands), and the acts it carries out: taking, holding,
//! listing and dropping objects.

use std::sync::Arc;

use repred::{Reduce, SourceId, Stamped};
use repred_transport::repred_node::MemberState;
use repred_transport::{Peers, StreamExt};
use tokio::sync::watch;

use super::stored::{self, Stored};
use super::{Entry, Held, Key, Listing, PlaceError, Shared, State, View, lock};
use crate::Command;

impl<T> Shared<T>
where
    T: Reduce + Default + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn view(&self) -> View {
        self.directory.read(|d| View::read(d, self.me, self.life))
    }

    /// Replicates `name` here, empty or from the store, and records it. A
    /// copy opened here becomes the replica: streamed with every peer from
    /// now on, its waiting writes acknowledged.
    pub(super) fn take(
        &self,
        state: &mut State<T>,
        name: &str,
        k: usize,
    ) -> Result<(), PlaceError> {
        let handle = match state.open.remove(name) {
            Some(access) => {
                self.node.set_peers(name, Peers::All);
                access.acknowledge_all()
            }
            None => self.node.replicate(name, T::default())?,
        };
        state.held.insert(name.to_string(), Held { handle, k, writes: Arc::default() });
        // Its store's log is in use again: no copy kept to delete.
        state.stored.remove(name);
        state.unchecked.remove(name);
        Ok(())
    }

    /// Holds `name` here as a new object (or this node's copy of it) with
    /// the default k: the keeper offers it to the replicas.
    pub(super) fn hold(&self, state: &mut State<T>, name: &str) -> Result<(), PlaceError> {
        self.take(state, name, self.config.keeper.k)?;
        state.keeper.hold(self.now(), name.to_string(), None);
        Ok(())
    }

    /// One round: members, the directory, the keeper's commands, the
    /// drops, and what to list. Returns the objects to drop.
    fn round(&self) -> (Vec<String>, Option<Listing>) {
        let now = self.now();
        let members: Vec<(SourceId, bool)> = self
            .node
            .membership()
            .into_iter()
            .map(|m| (m.id, m.state != MemberState::Down))
            .collect();
        let view = self.view();
        let mut state = lock(&self.state);
        let state = &mut *state;
        state.keeper.sync_members(now, members);
        // Nodes leaving gracefully count absent at once, so that their
        // objects' next replicas take them while they hand off.
        for (&node, &(life, leaving)) in &view.leaving {
            if leaving && node != self.me && state.departing.insert((node, life)) {
                state.keeper.handle_leaving(now, node);
            }
        }

        // What this node held in its last life: its store kept it.
        for (name, k) in &view.mine_before {
            if !state.held.contains_key(name) && self.take(state, name, *k).is_ok() {
                state.keeper.hold(now, name.clone(), Some(*k));
            }
        }
        // Offers: objects listed by others, of which this node is a
        // replica by its own list and holds no copy.
        for (name, holders) in &view.held {
            if state.held.contains_key(name) {
                continue;
            }
            let Some((&from, &(k, _))) = holders.iter().find(|(n, _)| **n != self.me) else {
                continue;
            };
            if !state.keeper.place(name, Some(k)).is_replica(self.me) {
                continue;
            }
            let leaving = view.leaving.get(&from).is_some_and(|(_, leaving)| *leaving);
            if state.keeper.handle_offer(now, name.clone(), k, from, leaving)
                && self.take(state, name, k).is_err()
            {
                // Could not replicate it: let the keeper forget it, the
                // offer stands and is taken up again next round.
                state.keeper.forget(name);
            }
        }
        if state.keeper.poll_timeout().is_some_and(|at| at <= now) {
            state.keeper.handle_timeout(now);
        }
        let mut drops = Vec::new();
        while let Some(command) = state.keeper.poll_command() {
            match command {
                Command::Offer { object, to, .. } => {
                    let taken = view.lists(to, &object).is_some();
                    state.keeper.handle_offer_result(now, &object, to, taken);
                }
                Command::Check { object, peer } => {
                    let mine = state.held.get(&object).map(|h| h.handle.clock());
                    let covers = match (view.lists(peer, &object), mine) {
                        (Some(theirs), Some(mine)) => theirs.covers(&mine),
                        _ => false,
                    };
                    state.keeper.handle_check(now, &object, peer, covers);
                }
                Command::Drop { object } => drops.push(object),
            }
        }
        self.routes(state, &view, now);

        // What to list: this life's record, changed clocks, deletions.
        let mut writes: Listing = Vec::new();
        if !state.record_listed {
            let leaving = state.keeper.is_leaving();
            let record = Entry::Node { life: self.life, leaving };
            writes.push((Key::Node(self.me), Stamped::now(Some(record))));
        }
        for (name, held) in &state.held {
            let clock = held.handle.clock();
            if state.listed.get(name) == Some(&clock) {
                continue;
            }
            let key = Key::Held { node: self.me, object: name.clone() };
            let k = u32::try_from(held.k).unwrap_or(u32::MAX);
            writes.push((key, Stamped::now(Some(Entry::Held { life: self.life, k, clock }))));
        }
        for name in &state.unlist {
            let key = Key::Held { node: self.me, object: name.clone() };
            writes.push((key, Stamped::now(None)));
        }
        // Entries of a past life for objects not held any more.
        for name in view.mine_before.keys() {
            if !state.held.contains_key(name) && !state.unlist.contains(name) {
                let key = Key::Held { node: self.me, object: name.clone() };
                writes.push((key, Stamped::now(None)));
            }
        }
        self.list_kept(state, &view, &mut writes);
        (drops, (!writes.is_empty()).then_some(writes))
    }

    /// Lists what `round` asked for; remembers it as listed once written.
    async fn list(&self, writes: Listing) -> Result<(), PlaceError> {
        self.directory.update(writes.clone()).await?;
        let mut state = lock(&self.state);
        for (key, write) in writes {
            match (key, write.value) {
                (Key::Node(_), Some(Entry::Node { leaving, .. })) => {
                    state.record_listed = leaving == state.keeper.is_leaving();
                }
                (Key::Held { object, .. }, Some(Entry::Held { clock, .. }))
                    if state.held.contains_key(&object) =>
                {
                    state.listed.insert(object, clock);
                }
                (Key::Held { object, .. }, None) => {
                    state.unlist.remove(&object);
                }
                (Key::Kept { object, .. }, Some(Entry::Kept { clock, .. })) => {
                    state.kept_listed.insert(object, clock);
                }
                (Key::Kept { object, .. }, None) => {
                    state.kept_listed.remove(&object);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Releases `name`, which the keeper dropped: once writes under way
    /// are done, if every live replica still lists a clock covering this
    /// node's; otherwise the keeper holds it again.
    async fn drop_object(&self, name: String) -> Result<(), PlaceError> {
        let writes = match lock(&self.state).held.get(&name) {
            Some(h) => h.writes.clone(),
            None => return Ok(()),
        };
        let _alone = writes.write().await;
        let covered = {
            let view = self.view();
            let state = lock(&self.state);
            let Some(held) = state.held.get(&name) else { return Ok(()) };
            let mine = held.handle.clock();
            stored::covered(&state.keeper, &view, self.me, &name, Some(held.k), &mine)
        };
        if !covered {
            let mut state = lock(&self.state);
            let k = state.held.get(&name).map(|h| h.k);
            let now = self.now();
            state.keeper.hold(now, name, k);
            return Ok(());
        }
        let released = self.node.release(&name).await;
        let mut state = lock(&self.state);
        match released {
            Ok(_) => {
                // Its store's copy goes once k live replicas cover it as
                // released (a peer's update may have come in since the
                // check above): looked at every round from now on.
                if let Some(held) = state.held.remove(&name) {
                    let copy = Stored { clock: held.handle.clock(), k: Some(held.k) };
                    state.stored.insert(name.clone(), copy);
                }
                state.listed.remove(&name);
                state.unlist.insert(name);
                Ok(())
            }
            Err(e) => {
                // Still here: the keeper holds it again, and drops it
                // again once covered.
                let k = state.held.get(&name).map(|h| h.k);
                let now = self.now();
                state.keeper.hold(now, name, k);
                Err(e.into())
            }
        }
    }
}

/// The placer's task: a round every tick until stopped or the node is
/// gone.
pub(super) async fn run<T>(shared: Arc<Shared<T>>, mut stopped: watch::Receiver<bool>)
where
    T: Reduce + Default + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    let mut tick = tokio::time::interval(shared.config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While writes through a replica wait, a replica's new listing is
    // looked at as it arrives rather than at the next tick.
    let mut listings = shared.directory.changes();
    // A stream to the replica a copy goes through that ends fails it over
    // at once, not after the acknowledgement timeout or SWIM's verdict.
    // One missed (the reader lagged) is still caught by those.
    let mut ends = shared.node.stream_ends();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = listings.next(), if shared.waiting() => {
                shared.step_routes();
                continue;
            }
            Some(end) = ends.next() => {
                if let Ok(end) = end {
                    shared.stream_ended(&end);
                }
                continue;
            }
            _ = stopped.wait_for(|s| *s) => return,
        }
        let (drops, writes) = shared.round();
        for name in drops {
            // A failed release is retried by the keeper; nothing to do.
            let _ = shared.drop_object(name).await;
        }
        // The copies let go that are covered now, this round's drops
        // included: deleted in one transaction, off the runtime's workers,
        // with no lock held.
        let removable = shared.removable();
        if !removable.is_empty() {
            shared.remove(removable).await;
        }
        // The copies a past life listed, against their store's clock.
        shared.check_kept().await;
        if let Some(writes) = writes
            && let Err(PlaceError::Transport(repred_transport::Error::Shutdown)) =
                shared.list(writes).await
        {
            return;
        }
    }
}

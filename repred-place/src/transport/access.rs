//! Access to objects: [`ObjectHandle`], which reads and writes an object
//! the same way whether this node holds a replica of it or not, and what
//! it needs on a node that holds none: a copy of the object's own that
//! syncs with one live replica, picked and changed by a [`Route`] (see the
//! [module](super)).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use repred::{Clock, CloseReason, EndReason, Reduce, SourceId, Stamp};
use repred_transport::{Changes, Handle, Peers, StreamEnded};
use tokio::sync::{RwLock, oneshot};

use super::{PlaceError, Shared, State, View, lock};
use crate::{Route, RouteEvent, WriteId};

/// An object this node holds no replica of, opened here: its copy and
/// the route that picks the replica the copy syncs with.
pub(super) struct Access<T: Reduce> {
    pub(super) handle: Handle<T>,
    pub(super) route: Route,
    /// Writes waiting for an acknowledgement: told `true` once a replica's
    /// clock covers them, `false` once they expired.
    pub(super) waiters: BTreeMap<WriteId, oneshot::Sender<bool>>,
}

impl<T: Reduce> Access<T> {
    /// This node holds the object now: what its copy took is on a replica.
    pub(super) fn acknowledge_all(self) -> Handle<T> {
        for (_, waiter) in self.waiters {
            let _ = waiter.send(true);
        }
        self.handle
    }
}

/// This node's copy of an object, as a write finds it.
pub(super) enum Copy<T: Reduce> {
    /// A replica (or one being handed off), with the lock a drop takes.
    Held(Handle<T>, Arc<RwLock<()>>),
    /// A copy that goes through a replica.
    Access(Handle<T>),
}

impl<T: Reduce> Copy<T> {
    fn handle(&self) -> &Handle<T> {
        match self {
            Self::Held(handle, _) | Self::Access(handle) => handle,
        }
    }
}

/// An object opened on a placing node
/// ([`Placer::open`](super::Placer::open)), whether the node holds a
/// replica of it or goes through one.
///
/// **Consistency**: read-your-writes on the handle (reads come from this
/// node's copy, which took every write made through it), eventual
/// otherwise: other nodes' writes appear as the replica in use streams
/// them back. A write through a replica returns once *acknowledged*: a
/// replica's clock covers it, so it is no longer on this node alone (on a
/// durable replica, on its disk within its store's next commit).
pub struct ObjectHandle<T: Reduce> {
    pub(super) shared: Arc<Shared<T>>,
    pub(super) name: String,
}

impl<T: Reduce> std::fmt::Debug for ObjectHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectHandle").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<T> ObjectHandle<T>
where
    T: Reduce + Default + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes to the object. On a node that holds a replica, it returns
    /// once the write is on this node (on disk). On any other it writes to
    /// this node's copy and returns once a replica acknowledged the write
    /// (its clock covers it), through failovers, or fails with
    /// [`PlaceError::NotAcknowledged`] after
    /// [`RouteConfig::write_timeout_ms`](crate::RouteConfig::write_timeout_ms).
    /// `None`: it changed nothing. If this node's store is deleting a copy
    /// of the object it let go, the write waits for that (bounded) and goes
    /// to a copy made afresh.
    pub async fn update(&self, update: T::Update) -> Result<Option<Stamp>, PlaceError> {
        let shared = &self.shared;
        let name = &self.name;
        loop {
            let removals = *shared.removals.borrow();
            let copy = match shared.copy(name) {
                // This node's stored copy of it is being deleted (a
                // transaction, a few milliseconds): made again once that
                // is done, from scratch.
                Err(PlaceError::Transport(repred_transport::Error::Removing(_)))
                    if shared.removed(removals).await =>
                {
                    continue;
                }
                copy => copy?,
            };
            match copy {
                Copy::Held(handle, writes) => {
                    let _writing = writes.read().await;
                    // A drop may have released it while this write
                    // waited: then it goes through a replica.
                    let still = lock(&shared.state)
                        .held
                        .get(name)
                        .is_some_and(|h| Arc::ptr_eq(&h.writes, &writes));
                    if !still {
                        continue;
                    }
                    let stamp = handle.update(update).await?;
                    if stamp.is_some() {
                        lock(&shared.state).keeper.changed(name);
                    }
                    return Ok(stamp);
                }
                Copy::Access(handle) => {
                    let Some(stamp) = handle.update(update).await? else { return Ok(None) };
                    let acked = {
                        let mut state = lock(&shared.state);
                        let state = &mut *state;
                        match state.open.get_mut(name) {
                            Some(access) => {
                                let write = access.route.wrote(shared.now(), stamp);
                                let (waiter, acked) = oneshot::channel();
                                access.waiters.insert(write, waiter);
                                acked
                            }
                            // This node holds it now: its replica has it.
                            None if state.held.contains_key(name) => return Ok(Some(stamp)),
                            None => return Err(shared.unacknowledged(name, stamp)),
                        }
                    };
                    // The route expires it in time; the task's ticks and
                    // a margin bound the wait here too.
                    let limit = Duration::from_millis(shared.config.route.write_timeout_ms)
                        + shared.config.tick * 10;
                    return match tokio::time::timeout(limit, acked).await {
                        Ok(Ok(true)) => Ok(Some(stamp)),
                        _ => Err(shared.unacknowledged(name, stamp)),
                    };
                }
            }
        }
    }

    /// Reads this node's copy: its replica, or the copy that goes through
    /// one. The object is locked while `f` runs: keep it short.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, PlaceError> {
        Ok(self.shared.copy(&self.name)?.handle().read(f))
    }

    /// This node's clock of the object: which writes its copy includes.
    pub fn clock(&self) -> Result<Clock, PlaceError> {
        Ok(self.shared.copy(&self.name)?.handle().clock())
    }

    /// Every change applied to this node's copy from now on, local or
    /// streamed back by the replica in use. It follows the copy it was
    /// taken from: if this node stops being a replica (its replica is
    /// dropped), take it again.
    pub fn changes(&self) -> Result<Changes<T::Update>, PlaceError> {
        Ok(self.shared.copy(&self.name)?.handle().changes())
    }

    /// The replica this node goes through now: `None` when it holds a
    /// replica itself (or no replica is live).
    pub fn via(&self) -> Option<SourceId> {
        lock(&self.shared.state).open.get(&self.name).and_then(|a| a.route.via())
    }

    /// Whether this node holds a replica of the object (or a copy it
    /// hands off).
    pub fn is_held(&self) -> bool {
        lock(&self.shared.state).held.contains_key(&self.name)
    }
}

impl<T> Shared<T>
where
    T: Reduce + Default + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// This node's copy of `name`: its replica if it holds one; else, if
    /// its member list makes it a replica, a new replica held as
    /// [`Placer::create`](super::Placer::create) does; else the copy that
    /// goes through a replica, opened now if it is not yet.
    pub(super) fn copy(&self, name: &str) -> Result<Copy<T>, PlaceError> {
        let mut state = lock(&self.state);
        let state = &mut *state;
        if let Some(h) = state.held.get(name) {
            return Ok(Copy::Held(h.handle.clone(), h.writes.clone()));
        }
        if let Some(a) = state.open.get(name) {
            return Ok(Copy::Access(a.handle.clone()));
        }
        if state.checking.contains(name) {
            // Its stored copy is loaded for a moment to read its clock
            // (`stored.rs`): as while it is removed, a write waits.
            return Err(repred_transport::Error::Removing(name.to_string()).into());
        }
        let placed = state.keeper.place(&name.to_string(), None);
        if placed.is_replica(self.me) && !state.keeper.is_leaving() {
            self.hold(state, name)?;
            let h = &state.held[name];
            return Ok(Copy::Held(h.handle.clone(), h.writes.clone()));
        }
        let mut route = Route::new(self.config.route.clone());
        route.set_replicas(self.now(), placed.replicas.into_iter().filter(|r| *r != self.me));
        let mut via = None;
        while let Some(event) = route.poll_event() {
            if let RouteEvent::Attach { to } = event {
                via = Some(to);
            }
        }
        let handle = self.node.replicate_with(name, T::default(), Peers::only(via))?;
        let access = Access { handle: handle.clone(), route, waiters: BTreeMap::new() };
        state.open.insert(name.to_string(), access);
        // Its store's log is in use again, resumed: no copy kept to
        // delete, whatever clock it was listed with (the next round
        // deletes its `Kept` entry).
        state.stored.remove(name);
        state.unchecked.remove(name);
        Ok(Copy::Access(handle))
    }

    /// Whether a write through a replica waits for its acknowledgement.
    pub(super) fn waiting(&self) -> bool {
        lock(&self.state).open.values().any(|a| !a.waiters.is_empty())
    }

    /// Steps the routes alone, on the directory as it is now.
    pub(super) fn step_routes(&self) {
        let view = self.view();
        let now = self.now();
        let mut state = lock(&self.state);
        self.routes(&mut state, &view, now);
    }

    fn unacknowledged(&self, name: &str, stamp: Stamp) -> PlaceError {
        PlaceError::NotAcknowledged { name: name.to_string(), stamp }
    }

    /// Steps the routes of the objects opened here: the replicas as the
    /// keeper places them, their listed clocks, due timeouts; carries out
    /// what they say.
    pub(super) fn routes(&self, state: &mut State<T>, view: &View, now: u64) {
        let State { keeper, open, .. } = state;
        for (name, access) in open.iter_mut() {
            let replicas = keeper.place(name, None).replicas;
            let route = &mut access.route;
            route.set_replicas(now, replicas.into_iter().filter(|r| *r != self.me));
            for &r in route.replicas().to_vec().iter() {
                if let Some(clock) = view.lists(r, name) {
                    route.handle_clock(now, r, clock);
                }
            }
            if route.poll_timeout().is_some_and(|at| at <= now) {
                route.handle_timeout(now);
            }
            self.carry_out(name, access);
        }
    }

    /// Carries out what the route of `name` says: the peers its copy is
    /// streamed with, and the waiting writes' answers.
    fn carry_out(&self, name: &str, access: &mut Access<T>) {
        while let Some(event) = access.route.poll_event() {
            match event {
                RouteEvent::Attach { to } => {
                    self.node.set_peers(name, Peers::only([to]));
                }
                RouteEvent::Detach => {
                    self.node.set_peers(name, Peers::only([]));
                }
                RouteEvent::Acked { write, .. } => {
                    if let Some(waiter) = access.waiters.remove(&write) {
                        let _ = waiter.send(true);
                    }
                }
                RouteEvent::Expired { write } => {
                    if let Some(waiter) = access.waiters.remove(&write) {
                        let _ = waiter.send(false);
                    }
                }
            }
        }
    }

    /// A stream of this node ended: if it was the stream of a copy opened
    /// here with the replica its route goes through, and it ended for
    /// something the replica did ([`fails_the_replica`]), the route fails
    /// that replica over at once ([`Route::handle_failed`]).
    pub(super) fn stream_ended(&self, end: &StreamEnded) {
        let Some(peer) = end.peer else { return };
        if !fails_the_replica(&end.reason) {
            return;
        }
        let now = self.now();
        let mut state = lock(&self.state);
        let Some(access) = state.open.get_mut(&end.object) else { return };
        if access.route.via() != Some(peer) {
            return;
        }
        access.route.handle_failed(now, peer);
        self.carry_out(&end.object, access);
    }
}

/// Whether a stream's end says the replica at its other end failed: it
/// went away, released the object, shut down, refused this node, sent
/// what this node refused (a snapshot that stalled, came too slowly, or
/// was untrusted), or the
/// connection to it was lost. Not when this node ended the stream for
/// itself: a new route's set of peers, a close, a shutdown; nor when its
/// copy found itself stale, or declined the replica's snapshot while
/// another from another floor was coming in ([`CloseReason::Stale`] on
/// this side): the copy starts over or opens a new stream, and the
/// replica, healthy, brings it up. Failed over for that, the route
/// would shun a replica that did nothing wrong and move every copy that
/// meets a raised floor.
fn fails_the_replica(reason: &EndReason) -> bool {
    !matches!(
        reason,
        EndReason::Local(CloseReason::Closed | CloseReason::Disposed | CloseReason::Stale { .. })
    )
}

#[cfg(test)]
mod tests {
    use repred::{PeerMisbehaved, SnapshotRefusal, Timestamp};

    use super::*;

    #[test]
    fn only_what_the_replica_did_fails_it_over() {
        let stale = CloseReason::Stale { floor: Timestamp::new(5, 0) };
        let stalled = CloseReason::SnapshotRefused(SnapshotRefusal::Stalled { millis: 30_000 });
        let misbehaved = CloseReason::Misbehaved(PeerMisbehaved::EmptyFrame);
        for ours in [CloseReason::Closed, CloseReason::Disposed, stale.clone()] {
            assert!(!fails_the_replica(&EndReason::Local(ours.clone())), "{ours:?}");
        }
        for theirs in [
            EndReason::Local(stalled),
            EndReason::Local(misbehaved),
            EndReason::Remote(stale),
            EndReason::Remote(CloseReason::Disposed),
            EndReason::Remote(CloseReason::Closed),
            EndReason::Aborted,
        ] {
            assert!(fails_the_replica(&theirs), "{theirs:?}");
        }
    }
}

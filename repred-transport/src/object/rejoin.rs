//! Starting an object over when a peer finds it stale: its replica held
//! deletes (or writes below them) that the peers have collected, so no
//! peer will sync with it ([`Event::Stale`](repred::Event::Stale)).
//!
//! [`Replica::rejoin`](repred::Replica::rejoin) is the core's answer: the
//! state becomes the type's empty state, the clock and history empty, and
//! the next stream brings it up by snapshot. What the node adds: a stale
//! object opens and takes no stream (each would be refused again) until it
//! rejoins; the streams a stale verdict ended leave their names free on
//! their connections, at both ends, so that a stream comes again once it
//! has; and the connections look again when it does.

use std::sync::Arc;

use repred::{Reduce, Stamp, Timestamp};

use super::{Handle, Inner, Shared};

/// Makes the empty state a stale object starts over from.
type Fresh<T> = Arc<dyn Fn() -> T + Send + Sync>;

impl<T> Shared<T>
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// Starts the replica over from `fresh`; the caller has the
    /// connections look again ([`Shared::look_again`]) once the lock is
    /// released. Returns the stamps of this node's own writes the replica
    /// dropped ([`Replica::rejoin`](repred::Replica::rejoin)).
    fn rejoin_locked(&self, inner: &mut Inner<T>, fresh: T) -> Vec<Stamp> {
        // Released (or being released): its last save is under way.
        if inner.replica.is_disposed() {
            return Vec::new();
        }
        let floor = inner.replica.stale_floor();
        let dropped = inner.replica.rejoin(fresh);
        // Its streams ended with a local Stale close, which frees their
        // names (see `observe`); readers of the changes are told to read
        // the state again (the subscription lags behind the history's
        // restart).
        self.settle(inner);
        if let Some(durable) = &self.durable {
            // The next save is a whole snapshot of the empty state.
            durable.request();
        }
        tracing::warn!(
            object = %self.name,
            floor = ?floor,
            dropped = dropped.len(),
            "rejoined: started over, to be brought up by a peer"
        );
        dropped
    }

    /// What makes the empty state, if the replica is stale (and not
    /// released) and [`Handle::rejoin_when_stale`] gave it.
    pub(super) fn rejoin_factory(&self, inner: &Inner<T>) -> Option<Fresh<T>> {
        let stale = inner.replica.stale_floor().is_some() && !inner.replica.is_disposed();
        stale.then(|| inner.fresh.clone()).flatten()
    }

    /// Rejoins from `make()` if the replica is (still) stale. The user's
    /// code runs with the object unlocked: it may read the handle.
    pub(super) fn rejoin_with(&self, make: Fresh<T>) {
        let fresh = make();
        let rejoined = {
            let mut inner = self.lock();
            let stale = inner.replica.stale_floor().is_some() && !inner.replica.is_disposed();
            if stale {
                self.rejoin_locked(&mut inner, fresh);
            }
            stale
        };
        if rejoined {
            (self.look_again)();
        }
    }
}

impl<T> Handle<T>
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    /// The collection floor of a peer that found this object stale, if one
    /// did: the peers forgot deletes this replica may still hold, so none
    /// syncs with it, and it opens no stream of its own, until it
    /// [rejoins](Handle::rejoin). This happens to a node away for longer
    /// than the peers' [`collect_grace`](crate::Builder::collect_grace),
    /// or one whose connection closed while updates were on their way to
    /// it as the others collected (see
    /// [`Builder::collect_every`](crate::Builder::collect_every)), or one
    /// holding none of the peers' writes whose first snapshot was cut midway (its parts merged,
    /// [`Replica::holds_cut_snapshot`](repred::Replica::holds_cut_snapshot))
    /// and whose peers then collected past that snapshot's floor, or which
    /// collected past it itself (then at its own floor, and no peer says
    /// so).
    pub fn stale_floor(&self) -> Option<Timestamp> {
        self.shared.lock().replica.stale_floor()
    }

    /// Starts the object over from `fresh`, its type's empty state
    /// ([`Replica::rejoin`](repred::Replica::rejoin)): the state, clock and
    /// history are emptied, every stream of it ends, and new ones bring it
    /// up from its peers, by snapshot. Readers of [`changes`](Handle::changes)
    /// get a [`Lagged`](crate::Lagged): read the state again.
    ///
    /// This node's own writes at or above the stale floor are kept, and go
    /// out again; it returns the stamps of those below, which it drops:
    /// the ones its peers had come back with their state, the others are
    /// lost (a write made while away, below deletes the others forgot).
    /// Meant for after [`stale_floor`](Handle::stale_floor) or
    /// [`is_poisoned`](Handle::is_poisoned) says so; see
    /// [`rejoin_when_stale`](Handle::rejoin_when_stale) to have the node
    /// do it by itself. Of a durable node's own writes, only those in its
    /// log are listed, not those its store holds in its saved snapshot.
    /// Its own writes the peers had, those dropped and those gone from its
    /// log, come back by a snapshot its streams ask for
    /// (`Hello::missing_own`) until a peer that held the newest of them
    /// sends one, a durable node's across a restart too (its store saves
    /// `Replica::rejoin_missing`). A write no peer held is lost.
    ///
    /// ```no_run
    /// # async fn run(node: repred_transport::Node) -> Result<(), repred_transport::Error> {
    /// use repred::LwwMap;
    ///
    /// let map = node.replicate("map", LwwMap::<String, u32>::default())?;
    /// if map.stale_floor().is_some() {
    ///     let lost = map.rejoin(LwwMap::default());
    ///     eprintln!("{} of this node's writes were below the peers' floor", lost.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn rejoin(&self, fresh: T) -> Vec<Stamp> {
        let dropped = {
            let mut inner = self.shared.lock();
            self.shared.rejoin_locked(&mut inner, fresh)
        };
        (self.shared.look_again)();
        dropped
    }

    /// Has the node [rejoin](Handle::rejoin) by itself, from `fresh()`,
    /// whenever the object is found stale (and at once, if it was): by a
    /// peer, or by its own collection ([`stale_floor`](Handle::stale_floor)):
    /// for an object whose own writes below the peers' floor may be lost,
    /// as a cache's or a view's. Each time is logged (`warn`), with how
    /// many of this node's writes it dropped.
    ///
    /// ```no_run
    /// # async fn run(node: repred_transport::Node) -> Result<(), repred_transport::Error> {
    /// use repred::LwwMap;
    ///
    /// let map = node.replicate("map", LwwMap::<String, u32>::default())?;
    /// map.rejoin_when_stale(LwwMap::default);
    /// # Ok(()) }
    /// ```
    pub fn rejoin_when_stale(&self, fresh: impl Fn() -> T + Send + Sync + 'static) {
        let rejoin = {
            let mut inner = self.shared.lock();
            inner.fresh = Some(Arc::new(fresh));
            self.shared.rejoin_factory(&inner)
        };
        if let Some(make) = rejoin {
            self.shared.rejoin_with(make);
        }
    }
}

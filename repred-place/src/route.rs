//! Reading and writing an object from a node that holds no replica of it:
//! a sans-IO state machine per open object that picks the replica to go
//! through, fails over, and says which writes are acknowledged.

use std::collections::{BTreeMap, VecDeque};

use repred::{Clock, SourceId, Stamp};

/// How a [`Route`] chooses, waits and gives up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteConfig {
    /// How long the replica in use may take to acknowledge a write (from
    /// the write, or from when the route attached to it if later) before
    /// the route counts it failed and moves to the next. Default 5 s.
    pub ack_timeout_ms: u64,
    /// How long a write may wait for an acknowledgement at all, across
    /// failovers, before it is reported [`RouteEvent::Expired`]. Default
    /// 30 s.
    pub write_timeout_ms: u64,
    /// How long a replica that failed is passed over when choosing the
    /// next one (unless every live replica failed). Default 10 s.
    pub shun_ms: u64,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self { ack_timeout_ms: 5_000, write_timeout_ms: 30_000, shun_ms: 10_000 }
    }
}

impl RouteConfig {
    /// Sets [`RouteConfig::ack_timeout_ms`].
    pub fn ack_timeout_ms(mut self, millis: u64) -> Self {
        self.ack_timeout_ms = millis;
        self
    }

    /// Sets [`RouteConfig::write_timeout_ms`].
    pub fn write_timeout_ms(mut self, millis: u64) -> Self {
        self.write_timeout_ms = millis;
        self
    }

    /// Sets [`RouteConfig::shun_ms`].
    pub fn shun_ms(mut self, millis: u64) -> Self {
        self.shun_ms = millis;
        self
    }
}

/// Names one write handed to a [`Route`] ([`Route::wrote`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// What the driver of a [`Route`] should do, or learn.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum RouteEvent {
    /// Sync the node's copy of the object with `to` only, from now on: the
    /// first live replica, or the next after the one in use failed.
    Attach {
        /// The replica to go through.
        to: SourceId,
    },
    /// No live replica is known: sync with nobody for now. Writes wait
    /// (until [`RouteConfig::write_timeout_ms`]).
    Detach,
    /// A replica's clock covers the write: it is on a replica.
    Acked {
        /// Which write.
        write: WriteId,
        /// The replica whose clock covered it.
        by: SourceId,
    },
    /// No replica's clock covered the write within
    /// [`RouteConfig::write_timeout_ms`]. It is not lost: it stays in the
    /// node's copy and reaches a replica with the next sync; it is only
    /// not acknowledged.
    Expired {
        /// Which write.
        write: WriteId,
    },
}

/// Counters of a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteStats {
    /// Times it attached to a replica (the first included).
    pub attaches: u64,
    /// Times the replica in use failed (it went down, its stream ended, or
    /// it did not acknowledge in time).
    pub failovers: u64,
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes that expired unacknowledged.
    pub expired: u64,
}

#[derive(Clone, Debug)]
struct Pending {
    id: WriteId,
    stamp: Stamp,
    at: u64,
}

/// The access of one node to one object it holds no replica of: which
/// replica its copy syncs with, when to fail over, and which of its
/// writes are acknowledged. Sans-IO, like [`Keeper`](crate::Keeper):
/// time is passed in, [`RouteEvent`]s come out.
///
/// The node keeps a copy of the object that syncs, by the ordinary
/// session protocol, with exactly one live replica: the first on the
/// object's preference list that has not failed lately. Its writes are
/// ordinary updates under the copy's own source id, so they reach the
/// replica with the sync and, after a failover, reach the next one the
/// same way (its clock says what it lacks; nothing is applied twice). A
/// write is **acknowledged** once the clock of one of the object's
/// replicas covers its stamp: then it is on a replica, and no longer only
/// here.
///
/// The replica in use fails, and the route moves to the next, when the
/// member list drops it ([`Route::set_replicas`]), when the driver says
/// its stream ended ([`Route::handle_failed`]), or when it has not
/// acknowledged a write within [`RouteConfig::ack_timeout_ms`]. The route
/// is sticky: it stays with a replica that works even when one earlier
/// on the list comes back.
///
/// ```
/// use repred::{Clock, SourceId, Stamp, Timestamp};
/// use repred_place::{Route, RouteConfig, RouteEvent};
///
/// let id = |s: &str| SourceId::new(s).unwrap();
/// let (a, b, me) = (id("a"), id("b"), id("client"));
/// let mut route = Route::new(RouteConfig::default());
/// route.set_replicas(0, [a, b]);
/// assert_eq!(route.poll_event(), Some(RouteEvent::Attach { to: a }));
///
/// // A write of this node's copy; `a` does not acknowledge it in time.
/// let stamp = Stamp { ts: Timestamp::new(1_000, 0), source: me };
/// let write = route.wrote(0, stamp);
/// route.handle_timeout(5_000);
/// assert_eq!(route.poll_event(), Some(RouteEvent::Attach { to: b }));
///
/// // `b`, synced with the copy, covers the write: acknowledged.
/// let mut clock = Clock::new();
/// clock.observe(me, stamp.ts);
/// route.handle_clock(5_100, b, &clock);
/// assert_eq!(route.poll_event(), Some(RouteEvent::Acked { write, by: b }));
/// ```
#[derive(Debug)]
pub struct Route {
    config: RouteConfig,
    /// The live replicas, in preference order.
    replicas: Vec<SourceId>,
    via: Option<SourceId>,
    /// When the route attached to `via`.
    attached_at: u64,
    /// Replicas that failed, passed over until then.
    shunned: BTreeMap<SourceId, u64>,
    /// Writes not acknowledged yet, oldest first.
    pending: VecDeque<Pending>,
    next_write: u64,
    events: VecDeque<RouteEvent>,
    stats: RouteStats,
}

impl Route {
    /// A route attached to nobody yet: give it the replicas with
    /// [`Route::set_replicas`].
    pub fn new(config: RouteConfig) -> Self {
        Self {
            config,
            replicas: Vec::new(),
            via: None,
            attached_at: 0,
            shunned: BTreeMap::new(),
            pending: VecDeque::new(),
            next_write: 0,
            events: VecDeque::new(),
            stats: RouteStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// The replica the node's copy syncs with now, if any.
    pub fn via(&self) -> Option<SourceId> {
        self.via
    }

    /// The object's live replicas as last given, in preference order.
    pub fn replicas(&self) -> &[SourceId] {
        &self.replicas
    }

    /// How many writes wait for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Counters.
    pub fn stats(&self) -> RouteStats {
        self.stats
    }

    /// The object's live replicas by the node's member list, in preference
    /// order ([`Placed::replicas`](crate::Placed::replicas)). Call it
    /// whenever they may have changed (it is cheap when they did not). If
    /// the replica in use is not among them any more, the route moves to
    /// the next.
    pub fn set_replicas(&mut self, now: u64, replicas: impl IntoIterator<Item = SourceId>) {
        let replicas: Vec<SourceId> = replicas.into_iter().collect();
        if replicas == self.replicas && self.via.is_some() {
            return;
        }
        self.replicas = replicas;
        let keep = self.via.is_some_and(|v| self.replicas.contains(&v));
        if !keep {
            if self.via.is_some() {
                self.stats.failovers += 1;
            }
            self.reroute(now, None);
        }
    }

    /// The node wrote to its copy: `stamp` is the write's stamp. Returns
    /// the id the [`RouteEvent::Acked`] or [`RouteEvent::Expired`] of this
    /// write will carry.
    pub fn wrote(&mut self, now: u64, stamp: Stamp) -> WriteId {
        let id = WriteId(self.next_write);
        self.next_write += 1;
        self.pending.push_back(Pending { id, stamp, at: now });
        id
    }

    /// `peer`'s clock of the object, as the driver learned it: every
    /// waiting write it covers is acknowledged, if `peer` is one of the
    /// object's replicas (a node that is not one is no safe place).
    pub fn handle_clock(&mut self, _now: u64, peer: SourceId, clock: &Clock) {
        if !self.replicas.contains(&peer) {
            return;
        }
        let events = &mut self.events;
        let acked = &mut self.stats.acked;
        self.pending.retain(|p| {
            let covered = clock.has(p.stamp.source, p.stamp.ts);
            if covered {
                events.push_back(RouteEvent::Acked { write: p.id, by: peer });
                *acked += 1;
            }
            !covered
        });
    }

    /// The node's stream with `peer` ended, or `peer` could not be
    /// reached: if it is the replica in use, move to the next.
    pub fn handle_failed(&mut self, now: u64, peer: SourceId) {
        if self.via == Some(peer) {
            self.fail(now, peer);
        }
    }

    /// Runs what is due: writes that waited too long expire, and a replica
    /// that did not acknowledge in time is failed.
    pub fn handle_timeout(&mut self, now: u64) {
        let write_timeout = self.config.write_timeout_ms;
        let events = &mut self.events;
        let expired = &mut self.stats.expired;
        self.pending.retain(|p| {
            let late = p.at.saturating_add(write_timeout) <= now;
            if late {
                events.push_back(RouteEvent::Expired { write: p.id });
                *expired += 1;
            }
            !late
        });
        if let Some(via) = self.via
            && self.ack_due().is_some_and(|at| at <= now)
        {
            self.fail(now, via);
        }
    }

    /// When [`Route::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        let expiry =
            self.pending.front().map(|p| p.at.saturating_add(self.config.write_timeout_ms));
        match (expiry, self.ack_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next thing to do or learn.
    pub fn poll_event(&mut self) -> Option<RouteEvent> {
        self.events.pop_front()
    }

    /// When the replica in use is due to have acknowledged the oldest
    /// waiting write: the write's time, or the attachment if later, plus
    /// the ack timeout.
    fn ack_due(&self) -> Option<u64> {
        self.via?;
        let oldest = self.pending.front()?;
        Some(oldest.at.max(self.attached_at).saturating_add(self.config.ack_timeout_ms))
    }

    fn fail(&mut self, now: u64, peer: SourceId) {
        self.stats.failovers += 1;
        self.shunned.insert(peer, now.saturating_add(self.config.shun_ms));
        self.reroute(now, Some(peer));
    }

    /// Attaches to the first live replica not passed over; if every one
    /// was, to the first that is not `failed` (or `failed` itself if it is
    /// the only one): better a replica that failed a while ago than none.
    fn reroute(&mut self, now: u64, failed: Option<SourceId>) {
        self.shunned.retain(|_, until| *until > now);
        let next = self
            .replicas
            .iter()
            .find(|r| !self.shunned.contains_key(r))
            .or_else(|| self.replicas.iter().find(|r| Some(**r) != failed))
            .or_else(|| self.replicas.first())
            .copied();
        if next == self.via && failed.is_none() {
            return;
        }
        self.via = next;
        self.attached_at = now;
        match next {
            Some(to) => {
                self.stats.attaches += 1;
                self.events.push_back(RouteEvent::Attach { to });
            }
            None => self.events.push_back(RouteEvent::Detach),
        }
    }
}

#[cfg(test)]
mod tests {
    use repred::Timestamp;

    use super::*;

    fn id(s: &str) -> SourceId {
        SourceId::new(s).unwrap()
    }

    fn events(route: &mut Route) -> Vec<RouteEvent> {
        std::iter::from_fn(|| route.poll_event()).collect()
    }

    fn stamp(ms: u64) -> Stamp {
        Stamp { ts: Timestamp::new(ms, 0), source: id("me") }
    }

    fn clock_at(ms: u64) -> Clock {
        let mut clock = Clock::new();
        clock.observe(id("me"), Timestamp::new(ms, 0));
        clock
    }

    #[test]
    fn attaches_to_the_first_replica_and_stays_while_it_is_live() {
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let mut route = Route::new(RouteConfig::default());
        route.set_replicas(0, [a, b, c]);
        assert_eq!(events(&mut route), [RouteEvent::Attach { to: a }]);
        route.set_replicas(10, [a, c, b]);
        assert!(events(&mut route).is_empty());
        assert_eq!(route.via(), Some(a));
    }

    #[test]
    fn fails_over_when_the_member_list_drops_the_replica_in_use() {
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let mut route = Route::new(RouteConfig::default());
        route.set_replicas(0, [a, b, c]);
        let _ = events(&mut route);
        route.set_replicas(100, [b, c]);
        assert_eq!(events(&mut route), [RouteEvent::Attach { to: b }]);
        assert_eq!(route.stats().failovers, 1);
        // `a` is back, first on the list: the route stays with `b`.
        route.set_replicas(200, [a, b, c]);
        assert!(events(&mut route).is_empty());
        route.set_replicas(300, []);
        assert_eq!(events(&mut route), [RouteEvent::Detach]);
        assert_eq!(route.via(), None);
        route.set_replicas(400, [c]);
        assert_eq!(events(&mut route), [RouteEvent::Attach { to: c }]);
    }

    #[test]
    fn acknowledges_what_a_replica_clock_covers_and_only_that() {
        let (a, b, x) = (id("a"), id("b"), id("x"));
        let mut route = Route::new(RouteConfig::default());
        route.set_replicas(0, [a, b]);
        let _ = events(&mut route);
        let w1 = route.wrote(10, stamp(10));
        let w2 = route.wrote(20, stamp(20));
        // Not a replica: ignored.
        route.handle_clock(30, x, &clock_at(20));
        assert!(events(&mut route).is_empty());
        route.handle_clock(30, a, &clock_at(15));
        assert_eq!(events(&mut route), [RouteEvent::Acked { write: w1, by: a }]);
        // Another replica that synced with `a` acknowledges as well.
        route.handle_clock(40, b, &clock_at(20));
        assert_eq!(events(&mut route), [RouteEvent::Acked { write: w2, by: b }]);
        assert_eq!(route.pending(), 0);
        assert_eq!(route.poll_timeout(), None);
    }

    #[test]
    fn a_late_acknowledgement_fails_the_replica_over_and_the_next_gets_its_time() {
        let (a, b, c) = (id("a"), id("b"), id("c"));
        let config = RouteConfig::default().ack_timeout_ms(1_000).shun_ms(5_000);
        let mut route = Route::new(config);
        route.set_replicas(0, [a, b, c]);
        let _ = events(&mut route);
        let w = route.wrote(100, stamp(100));
        assert_eq!(route.poll_timeout(), Some(1_100));
        route.handle_timeout(1_099);
        assert!(events(&mut route).is_empty());
        route.handle_timeout(1_100);
        assert_eq!(events(&mut route), [RouteEvent::Attach { to: b }]);
        // `b` has a full ack timeout from its attachment.
        assert_eq!(route.poll_timeout(), Some(2_100));
        route.handle_timeout(2_100);
        assert_eq!(events(&mut route), [RouteEvent::Attach { to: c }]);
        // Every replica failed lately: back to the first that is not the
        // one that just failed.
        route.handle_timeout(3_100);
        assert_eq!(events(&mut route), [RouteEvent::Attach { to: a }]);
        route.handle_clock(3_200, a, &clock_at(100));
        assert_eq!(events(&mut route), [RouteEvent::Acked { write: w, by: a }]);
        assert_eq!(route.stats().failovers, 3);
    }

    #[test]
    fn a_failed_stream_moves_on_and_the_shun_wears_off() {
        let (a, b) = (id("a"), id("b"));
        let mut route = Route::new(RouteConfig::default().shun_ms(1_000));
        route.set_replicas(0, [a, b]);
        let _ = events(&mut route);
        route.handle_failed(10, b); // not in use: nothing
        assert!(events(&mut route).is_empty());
        route.handle_failed(20, a);
        assert_eq!(events(&mut route), [RouteEvent::Attach { to: b }]);
        // `b` goes down after the shun of `a` wore off: `a` again.
        route.set_replicas(2_000, [a]);
        assert_eq!(events(&mut route), [RouteEvent::Attach { to: a }]);
    }

    #[test]
    fn writes_expire_unacknowledged_with_no_replica() {
        let mut route = Route::new(RouteConfig::default().write_timeout_ms(500));
        route.set_replicas(0, []);
        assert!(events(&mut route).is_empty(), "never attached: nothing to detach from");
        let w = route.wrote(0, stamp(1));
        assert_eq!(route.poll_timeout(), Some(500));
        route.handle_timeout(500);
        assert_eq!(events(&mut route), [RouteEvent::Expired { write: w }]);
        assert_eq!(route.stats().expired, 1);
    }
}

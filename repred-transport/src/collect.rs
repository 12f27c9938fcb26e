//! Tombstone collection run by the node ([`Builder::collect_every`]): when
//! it is safe to forget a delete, decided from what this node knows of the
//! members that can still write an object.
//!
//! **The rule.** Every period, per object, the node collects
//! ([`Replica::collect`](repred::Replica::collect)) at a point no write
//! still to come can be older than, found from:
//! - the *writers*: the members the node core knows, alive or suspected,
//!   or declared down less than the grace period ago
//!   ([`Builder::collect_grace`]); this node excluded (its own clock
//!   stands for it). Each must have a synced live stream of the object
//!   with this node (so this replica holds all the peer held at its
//!   Hello);
//! - every live, synced stream of the object, a writer's or not: what the
//!   stream knows the peer holds ([`Replica::peer_known`]) and the newest
//!   timestamp the peer has shown it holds ([`Replica::peer_heard`]). A
//!   stream not synced yet blocks the collection until it is: its peer
//!   may hold writes this node lacks.
//!
//! The point is [`Clock::stable_point`] of this replica's clock and those
//! known clocks, capped just above each `peer_heard`: a writer's writes
//! this replica lacks are either in its Hello clock (held here, the stream
//! being synced) or newer than what it last showed (its timestamps pass
//! all it has seen). The cap is what makes the known clocks usable: they
//! count what was *sent* to the peer too, and the peer may have written,
//! older than that, before it arrived.
//!
//! A writer shows it passed a point by sending something newer. One that
//! has not written since it took others' changes shows it by itself, once
//! a period: its collector records a no-op of its own at a new timestamp
//! ([`Replica::show_progress`](repred::Replica::show_progress)), which its
//! peers take as it shows them. So the newest deletes go a period or two
//! after every writer took them, written after or not; this costs an
//! advance (about 30 bytes to each peer, a record in each history) per
//! period in which others changed the object, from each member that did
//! not write meanwhile, and only from members that collect: a member
//! without [`Builder::collect_every`] holds the point where it last wrote.
//! A replica that takes only signed updates refuses an unsigned node's
//! advances; a signing node sends its own as signed proofs.
//!
//! A writer with no such stream blocks the collection: the node does not
//! guess. So does being alone (no other member known): a node that has not
//! joined yet cannot tell who else writes. So does an object streamed with
//! chosen peers only ([`Peers::Only`](crate::Peers::Only)): the members it
//! does not stream with still write, through those it does, and their
//! clocks are not known here. [`CollectionBlocked`] says which. A stream shows only its own
//! peer, so every writer must be connected to this node (a cluster within
//! the fanout, [`Builder::fanout`]); in a larger one the node collects
//! nothing.
//!
//! **The cost.** A member away longer than the grace period is dropped
//! from the writers; if it comes back holding deletes the others forgot,
//! its streams end with [`Event::Stale`](repred::Event::Stale) and it must
//! rejoin ([`Handle::rejoin`](crate::Handle::rejoin), or by itself with
//! [`Handle::rejoin_when_stale`](crate::Handle::rejoin_when_stale)), losing
//! its own writes below the floor that the others never got. So may a
//! writer whose connection closed while updates sent or announced to it
//! were on their way: the known clocks count them as held, others may
//! collect past them and drop them from their history, and the writer,
//! brought up by snapshot, is stale. A write of a writer no longer
//! counted (down past the grace period, a previous life of a restarted
//! node) or not counted yet (a member this node has not heard of), that
//! reaches this node only through another peer after that peer showed a
//! newer timestamp, may be refused as older than the floor: no clock this
//! node sees bounds it.
//!
//! [`Builder::collect_every`]: crate::Builder::collect_every
//! [`Builder::collect_grace`]: crate::Builder::collect_grace
//! [`Builder::fanout`]: crate::Builder::fanout
//! [`Replica::peer_known`]: repred::Replica::peer_known
//! [`Replica::peer_heard`]: repred::Replica::peer_heard

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use repred::{Clock, SourceId, Timestamp};
use repred_node::{MemberInfo, MemberState};
use tokio::time::MissedTickBehavior;

use crate::clock::now_ms;
use crate::node::Inner;
use crate::object::Object;

/// What one live, synced stream of an object shows of its peer's replica.
#[derive(Clone, Debug)]
pub(crate) struct PeerView {
    /// The peer's node id.
    pub(crate) node: SourceId,
    /// What the stream knows the peer holds ([`repred::Replica::peer_known`]).
    pub(crate) known: Clock,
    /// The newest timestamp the peer has shown ([`repred::Replica::peer_heard`]).
    pub(crate) heard: Timestamp,
}

/// Why the node's last attempt to collect an object's deletes did not
/// ([`Handle::collection_blocked`](crate::Handle::collection_blocked)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionBlocked {
    /// No member but this node can write it: one that has not joined
    /// cannot tell who else writes.
    #[error("no other member is known: a node that has not joined cannot tell who else writes")]
    Alone,
    /// This writer (a node id) has no synced stream of the object with
    /// this node, so its clock is not known.
    #[error("member {0:?} has no synced stream of the object with this node")]
    NoClock(SourceId),
    /// The object streams with chosen peers only
    /// ([`Peers::Only`](crate::Peers::Only)): the members it does not
    /// stream with still write, and their writes reach it through the
    /// peers it does, unseen.
    #[error("the object streams with chosen peers only; the others' clocks are not known")]
    ChosenPeers,
    /// A stream of the object has not synced yet: its peer may hold
    /// writes this node lacks, older than the point would be.
    #[error("a stream of the object is still syncing")]
    Syncing,
}

/// The point below which `own`'s deletes may be forgotten, given the
/// `writers` (node ids, this node excluded), the `views` of this object's
/// synced streams and how many of its open streams are `syncing` still:
/// [`Clock::stable_point`] of `own` and every synced stream's known
/// clock, capped just above each stream's `heard`.
pub(crate) fn stable_point(
    writers: &BTreeSet<SourceId>,
    own: &Clock,
    views: &[PeerView],
    syncing: usize,
) -> Result<Timestamp, CollectionBlocked> {
    if writers.is_empty() {
        return Err(CollectionBlocked::Alone);
    }
    if let Some(&missing) = writers.iter().find(|&&w| !views.iter().any(|v| v.node == w)) {
        return Err(CollectionBlocked::NoClock(missing));
    }
    // A peer whose stream has not synced may hold writes of its own (or
    // relayed) that this node lacks, made while it was away, by a member
    // this node has not heard of yet: its Hello clock is not all here.
    if syncing > 0 {
        return Err(CollectionBlocked::Syncing);
    }
    // Every stream counts, a writer's or not: a peer that is not counted
    // as a writer (down past the grace period, not in the membership yet)
    // may still write, or relay another's write, and what it showed is
    // all that bounds it.
    let clocks = std::iter::once(own).chain(views.iter().map(|v| &v.known));
    let point = Clock::stable_point(clocks);
    let cap = views.iter().map(|v| v.heard.next(0)).min().unwrap_or(point);
    Ok(point.min(cap))
}

/// Which members may still write, by the node core's membership seen each
/// period: it keeps when each was first seen down (or gone from the
/// membership), since the node core does not say.
#[derive(Debug, Default)]
pub(crate) struct Writers {
    /// Every member seen, and since when (wall milliseconds) it has been
    /// down or gone, if it is.
    seen: BTreeMap<SourceId, Option<u64>>,
}

impl Writers {
    /// The members, this node (`me`) excluded, that may still write at
    /// `now`: alive or suspected, or down (or forgotten by the membership)
    /// for less than `grace`.
    pub(crate) fn observe<A>(
        &mut self,
        now: u64,
        me: SourceId,
        members: &[MemberInfo<A>],
        grace: Duration,
    ) -> BTreeSet<SourceId> {
        let present: BTreeSet<SourceId> = members.iter().map(|m| m.id).collect();
        for m in members.iter().filter(|m| m.id != me) {
            let down = self.seen.entry(m.id).or_insert(None);
            match m.state {
                MemberState::Alive | MemberState::Suspect => *down = None,
                MemberState::Down => {
                    down.get_or_insert(now);
                }
            }
        }
        // Forgotten by the membership: down from now, if it was not.
        for (id, down) in &mut self.seen {
            if !present.contains(id) {
                down.get_or_insert(now);
            }
        }
        let grace = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.seen.retain(|_, down| down.is_none_or(|at| now.saturating_sub(at) < grace));
        self.seen.keys().copied().collect()
    }
}

/// The node's collector: every `every`, reads the membership and offers
/// each object the writers it found. Every decision is the objects' and
/// [`stable_point`]'s; this only keeps time.
pub(crate) async fn run(inner: Arc<Inner>, every: Duration, grace: Duration) {
    let mut writers = Writers::default();
    let mut tick = tokio::time::interval(every);
    // A node too busy to keep up collects less often, not in bursts.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !inner.running() {
            return;
        }
        let members = inner.core().members();
        let now = writers.observe(now_ms(), inner.id, &members, grace);
        let objects: Vec<Arc<dyn Object>> = inner.registry.borrow().values().cloned().collect();
        for object in objects.iter().filter(|o| !o.is_disposed()) {
            object.show_progress();
            object.collect(&now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> SourceId {
        SourceId::new(name).expect("a valid id")
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp::new(ms, 0)
    }

    fn clock(entries: &[(&str, u64)]) -> Clock {
        entries.iter().map(|&(s, ms)| (id(s), t(ms))).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<SourceId> {
        names.iter().map(|n| id(n)).collect()
    }

    #[test]
    fn all_writers_shown_past_the_deletes_give_the_clocks_stable_point() {
        let own = clock(&[("a", 50), ("b", 60), ("c", 70)]);
        let (kb, kc) = (own.clone(), own.clone());
        let views = [
            PeerView { node: id("nb"), known: kb.clone(), heard: t(70) },
            PeerView { node: id("nc"), known: kc.clone(), heard: t(70) },
        ];
        let point = stable_point(&set(&["nb", "nc"]), &own, &views, 0);
        assert_eq!(point, Ok(t(70).next(0)), "every delete up to 70 may go");
    }

    #[test]
    fn a_writer_without_a_stream_blocks() {
        let own = clock(&[("a", 50)]);
        let kb = own.clone();
        let views = [PeerView { node: id("nb"), known: kb.clone(), heard: t(50) }];
        let point = stable_point(&set(&["nb", "nc"]), &own, &views, 0);
        assert_eq!(point, Err(CollectionBlocked::NoClock(id("nc"))));
        // A stream with someone who is not a writer stands for nobody.
        let views = [PeerView { node: id("nd"), known: kb.clone(), heard: t(50) }];
        assert_eq!(
            stable_point(&set(&["nb"]), &own, &views, 0),
            Err(CollectionBlocked::NoClock(id("nb")))
        );
    }

    /// A peer not counted as a writer (down past the grace period, say,
    /// but still connected) can still write, or relay: what it showed
    /// bounds the point as a writer's does. Counting only the writers'
    /// streams gave 100 here, and its write at 60, on its way, would be
    /// refused as older than the floor.
    #[test]
    fn a_stream_with_a_peer_not_counted_as_a_writer_still_bounds_the_point() {
        let own = clock(&[("b", 100), ("m", 40)]);
        let views = [
            PeerView { node: id("nb"), known: own.clone(), heard: t(100) },
            PeerView { node: id("nm"), known: own.clone(), heard: t(40) },
        ];
        assert_eq!(stable_point(&set(&["nb"]), &own, &views, 0), Ok(t(40).next(0)));
        // And a stream whose peer knows less holds the point at that.
        let behind = clock(&[("b", 70), ("m", 40)]);
        let views = [
            PeerView { node: id("nb"), known: own.clone(), heard: t(100) },
            PeerView { node: id("nm"), known: behind, heard: t(100) },
        ];
        assert_eq!(stable_point(&set(&["nb"]), &own, &views, 0), Ok(t(70).next(0)));
    }

    /// A stream still syncing blocks: its peer (a member this node has
    /// not heard of yet, say, not counted as a writer) may hold a write
    /// made while it was away, older than the point the synced streams
    /// give; collected past, that write would be refused when it came.
    #[test]
    fn a_stream_still_syncing_blocks() {
        let own = clock(&[("b", 100)]);
        let views = [PeerView { node: id("nb"), known: own.clone(), heard: t(100) }];
        assert_eq!(stable_point(&set(&["nb"]), &own, &views, 0), Ok(t(100).next(0)));
        assert_eq!(stable_point(&set(&["nb"]), &own, &views, 1), Err(CollectionBlocked::Syncing));
    }

    #[test]
    fn alone_it_does_not_collect() {
        let own = clock(&[("a", 50)]);
        assert_eq!(stable_point(&BTreeSet::new(), &own, &[], 0), Err(CollectionBlocked::Alone));
    }

    /// The case the cap is for: this node sent b a write of c's at 100, so
    /// the stream counts it in b's known clock, and every clock agrees; but
    /// b wrote at 60 before that arrived, and its write is still on the
    /// way. The clocks alone would say 100; b only showed 50.
    #[test]
    fn what_was_sent_to_a_writer_does_not_move_the_point_past_what_it_showed() {
        let own = clock(&[("b", 50), ("c", 100)]);
        let (kb, kc) = (own.clone(), own.clone());
        assert_eq!(Clock::stable_point([&own, &kb, &kc]), t(100).next(0));
        let views = [
            PeerView { node: id("nb"), known: kb.clone(), heard: t(50) },
            PeerView { node: id("nc"), known: kc.clone(), heard: t(100) },
        ];
        assert_eq!(stable_point(&set(&["nb", "nc"]), &own, &views, 0), Ok(t(50).next(0)));
    }

    #[test]
    fn a_writer_behind_holds_the_point_at_what_it_lacks() {
        let own = clock(&[("a", 80), ("b", 60)]);
        let kb = clock(&[("a", 30), ("b", 60)]);
        let views = [PeerView { node: id("nb"), known: kb.clone(), heard: t(60) }];
        assert_eq!(stable_point(&set(&["nb"]), &own, &views, 0), Ok(t(30).next(0)));
    }

    #[test]
    fn several_streams_with_one_writer_all_count() {
        let own = clock(&[("a", 80)]);
        let (fresh, old) = (own.clone(), clock(&[("a", 20)]));
        let views = [
            PeerView { node: id("nb"), known: fresh.clone(), heard: t(80) },
            PeerView { node: id("nb"), known: old.clone(), heard: t(20) },
        ];
        assert_eq!(stable_point(&set(&["nb"]), &own, &views, 0), Ok(t(20).next(0)));
    }

    fn member(name: &str, state: MemberState) -> MemberInfo<u16> {
        MemberInfo { id: id(name), addr: 0, state }
    }

    #[test]
    fn a_member_down_counts_until_the_grace_period_is_over() {
        let grace = Duration::from_secs(10);
        let mut writers = Writers::default();
        let me = id("me");
        let all = [member("me", MemberState::Alive), member("b", MemberState::Alive)];
        assert_eq!(writers.observe(1_000, me, &all, grace), set(&["b"]));
        let down = [member("me", MemberState::Alive), member("b", MemberState::Down)];
        assert_eq!(writers.observe(2_000, me, &down, grace), set(&["b"]), "down at 2 s");
        assert_eq!(writers.observe(11_999, me, &down, grace), set(&["b"]));
        assert_eq!(writers.observe(12_000, me, &down, grace), set(&[]), "gone at 12 s");
        // Back: a writer again at once.
        assert_eq!(writers.observe(13_000, me, &all, grace), set(&["b"]));
    }

    #[test]
    fn a_member_forgotten_by_the_membership_counts_as_down_from_then() {
        let grace = Duration::from_secs(10);
        let mut writers = Writers::default();
        let me = id("me");
        let all = [member("me", MemberState::Alive), member("b", MemberState::Suspect)];
        assert_eq!(writers.observe(1_000, me, &all, grace), set(&["b"]));
        let alone = [member("me", MemberState::Alive)];
        assert_eq!(writers.observe(5_000, me, &alone, grace), set(&["b"]));
        assert_eq!(writers.observe(15_000, me, &alone, grace), set(&[]));
    }
}

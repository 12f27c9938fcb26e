//! Rejoins and collection floors: what a replica that started over
//! asks for, takes and keeps.

use std::collections::BTreeSet;

use super::*;
use crate::NodeId;

/// A replica that rejoined below a floor trusts it holds no own write
/// under it only until a snapshot brings its own writes back: one from
/// a peer that had not collected (and still held an own write below
/// the floor that the others lack) makes it stale to a peer at the
/// floor again, as any replica holding such a write is. Before, it
/// took that peer's floor, and its next snapshot could bring back
/// what the peer had deleted and forgotten.
#[test]
fn own_writes_a_snapshot_brought_back_count_after_a_rejoin() {
    type Map = crate::LwwMap<String, u32>;
    let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Map::default(), small));
    let b = net.add(Replica::new(id("b"), Map::default()));
    let c = net.add(Replica::new(id("c"), Map::default()));
    // c gets a's writes; then b's old write reaches a, not c.
    for i in 0..4 {
        net.update(a, set(&format!("a{i}"), i)).expect("a's write");
    }
    let link = net.link(a, c);
    net.pump();
    net.cut(link);
    let link = net.link(a, b);
    net.update(b, set("old", 1)).expect("b's write");
    net.pump();
    net.cut(link);
    assert!(net[a].state().get("old").is_some() && net[c].state().get("old").is_none());
    net.advance(10);
    net.update(c, set("c", 1)).expect("c's write");
    let floor = Timestamp::new(net.now(), 0);
    net[c].collect(floor);
    net.advance(10);
    // Stale to c, b rejoins, keeping a newer write.
    let link = net.link(b, c);
    net.pump();
    assert_eq!(net[b].stale_floor(), Some(floor));
    net.cut(link);
    net.update(b, set("new", 2)).expect("b's write");
    net[b].rejoin(Map::default());
    // a, which never collected, brings b up by snapshot (its history
    // keeps two records), b's old write with it.
    let link = net.link(a, b);
    net.pump();
    net.cut(link);
    assert!(net[b].stats().snapshots > 0, "brought up by snapshot");
    assert!(net[b].state().get("old").is_some(), "b's old write is back");
    // To c, at the floor, b is stale again.
    net.link(b, c);
    net.pump();
    assert_eq!(net[b].stale_floor(), Some(floor), "b holds a write below c's floor");
    assert!(net[c].state().get("old").is_none(), "c never took it");
}

/// A replica that rejoined and then wrote past its log's limit takes
/// the floor from the floor's peer, which holds an old write of its
/// own: the log's eviction raised its horizon for its own source above
/// the floor, which for its own source does not count (only what a
/// snapshot may have brought back does; see `holds_news_below`).
#[test]
fn a_rejoined_replica_whose_log_overflowed_still_takes_the_floor() {
    type Map = crate::LwwMap<String, u32>;
    let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), Map::default()));
    let small = Config::default().history_limit(2);
    let b = net.add(Replica::with_config(id("b"), Map::default(), small));
    // a holds a write of b's from before they split.
    let link = net.link(a, b);
    net.update(b, set("early", 0)).expect("b's write");
    net.pump();
    net.cut(link);
    net.update(b, set("old", 1)).expect("b's write a never gets");
    net.advance(10);
    net.update(a, set("a", 1)).expect("a's write");
    let floor = Timestamp::new(net.now(), 0);
    net[a].collect(floor);
    net.advance(10);
    let link = net.link(a, b);
    net.pump();
    assert_eq!(net[b].stale_floor(), Some(floor));
    net.cut(link);
    net[b].rejoin(Map::default());
    for i in 0..3 {
        net.update(b, set(&format!("new{i}"), i)).expect("b's write");
    }
    net.link(a, b);
    net.pump();
    assert_eq!(net[b].stale_floor(), None, "not stale again");
    assert_eq!(net[b].floor(), floor);
    assert_eq!(net[a].state().get("new2"), Some(&2), "b's writes reached a");
    assert_eq!(net[b].state().get("a"), Some(&1), "a's reached b");
    // b's own "early", which a holds and b's newer writes' stamps
    // claim, comes back by the snapshot b's Hello asked for.
    assert_eq!(net[b].state().get("early"), Some(&0), "b's dropped write is back");
}

/// A rejoined replica brought up by one peer's snapshot, which held an
/// old write of the replica's own, is not stale to a second peer at a
/// higher floor that holds that write too: what the first snapshot
/// brought back is weighed against the second's clock at the floor's
/// taking (its snapshot's end), not refused at its begin. Refusing at
/// the begin (49b76f1 reverted it) had repred-transport's
/// tests/stale.rs fail about one run in six under load, when the second
/// snapshot began after the first had ended.
#[test]
fn a_second_floor_peer_holding_what_a_snapshot_brought_back_finds_a_rejoined_replica_fresh() {
    type Map = crate::LwwMap<String, u32>;
    let set = |k: &str, v: u32| crate::LwwMap::set(k.to_string(), v);
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Map::default(), small.clone()));
    let b = net.add(Replica::new(id("b"), Map::default()));
    let c = net.add(Replica::with_config(id("c"), Map::default(), small));
    // All three hold b's early write and a's.
    let links = [net.link(a, b), net.link(b, c), net.link(a, c)];
    net.update(b, set("early", 0)).expect("b's write");
    for i in 0..4 {
        net.update(a, set(&format!("a{i}"), i)).expect("a's write");
    }
    net.pump();
    for link in links {
        net.cut(link);
    }
    // Apart: a collects at fa; b writes where nobody hears; c writes and
    // collects at fc, above b's lost write.
    net.advance(10);
    let fa = Timestamp::new(net.now(), 0);
    net[a].collect(fa);
    net.advance(10);
    net.update(b, set("old", 1)).expect("b's lost write");
    net.advance(10);
    for i in 0..4 {
        net.update(c, set(&format!("c{i}"), i)).expect("c's write");
    }
    let fc = Timestamp::new(net.now(), 0);
    net[c].collect(fc);
    net.advance(10);
    // Stale to c; b rejoins under fc.
    let link = net.link(b, c);
    net.pump();
    net.cut(link);
    assert_eq!(net[b].stale_floor(), Some(fc));
    net[b].rejoin(Map::default());
    // a brings b up by snapshot (its log keeps two records), b's early
    // write with it; b takes a's floor.
    let link = net.link(a, b);
    net.pump();
    net.cut(link);
    assert!(net[b].stats().snapshots > 0, "a brought b up by snapshot");
    assert_eq!(net[b].state().get("early"), Some(&0), "b's early write is back");
    assert_eq!(net[b].floor(), fa);
    // c, at the higher floor and holding the early write too, brings
    // the rest by snapshot: b is not stale, and takes fc.
    let snapshots = net[b].stats().snapshots;
    net.link(b, c);
    net.pump();
    assert!(net[b].stats().snapshots > snapshots, "c sent a snapshot");
    assert_eq!(net[b].stale_floor(), None, "b holds nothing below fc that c lacks");
    assert_eq!(net[b].floor(), fc);
    assert_eq!(net[b].clock(), net[c].clock());
    assert_eq!(net[b].state().get("c3"), Some(&3));
    assert!(net[b].state().get("old").is_none() && net[c].state().get("old").is_none());
}

/// A rejoin takes the highest floor of the peers it streams with: one
/// whose Hello said a higher floor than the replica's own (not taken
/// yet: the replica lacks some of its writes) would find it stale at
/// once for a write kept below that floor.
#[test]
fn a_rejoin_takes_the_highest_floor_of_its_peers() {
    const NOW: u64 = 1_700_000_000_000;
    let mut a = Replica::new(id("a"), Fragile::default());
    a.update(NOW, vec![1]).expect("a's write");
    let floor = Timestamp::new(NOW + 10, 0);
    a.collect(floor);
    let mut b = Replica::new(id("b"), Fragile::default());
    b.update(NOW + 20, vec![2]).expect("b's write");
    let (sa, sb) = (
        a.open(crate::StreamOpts::default()).expect("open"),
        b.open(crate::StreamOpts::default()).expect("open"),
    );
    let mut hello = Vec::new();
    a.poll_transmit(sa, &mut hello).expect("a's hello");
    b.handle(sb, NOW + 20, &hello).expect("a's hello");
    assert_eq!(b.floor(), Timestamp::ZERO, "b lacks a's write: the floor waits");
    b.rejoin(Fragile::default());
    assert_eq!(b.rejoined_below(), floor);
}

/// A replica that rejoins gets back its own writes that were gone from
/// its log, although a kept write's stamp, and one made since, claim
/// them: its Hello asks for a snapshot, which holds them.
#[test]
fn a_rejoined_replica_gets_back_its_own_writes_gone_from_its_log() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    net.update(a, vec![4]).expect("a's write after the rejoin");
    let snapshots = net[a].stats().snapshots;
    net.link(a, c);
    net.pump();
    assert!(net[a].stats().snapshots > snapshots, "c sent the snapshot a asked for");
    let all = BTreeSet::from([1, 2, 3, 4]);
    assert_eq!(net[a].state().0, all, "a's write gone from its log is back");
    assert_eq!(net[c].state().0, all);
    assert_eq!(net[a].clock(), net[c].clock());
    // Brought up: the next stream asks for nothing.
    let snapshots = net[a].stats().snapshots;
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].stats().snapshots, snapshots, "no second snapshot");
}

/// A second rejoin before a snapshot came still asks for one: the
/// first emptied the horizon that said what was gone.
#[test]
fn a_second_rejoin_before_a_snapshot_still_asks_for_one() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    let missing = net[a].rejoin_missing();
    assert!(missing > Timestamp::ZERO);
    net[a].rejoin(Fragile::default());
    assert_eq!(net[a].rejoin_missing(), missing);
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
    assert_eq!(net[a].clock(), net[c].clock());
}

/// A peer whose stream does not await the clock has started, and sent
/// its history, before the Hello asking for a snapshot arrives: it
/// sends one then.
#[test]
fn a_peer_not_awaiting_the_clock_sends_the_snapshot_asked_for() {
    // One at a time: c gets them by history, so its own history, from
    // its start, leaves a fresh peer nothing it needs a snapshot for.
    let (mut net, a, c) = rejoined_without_its_first_write(small(), true);
    assert_eq!(net[c].stats().snapshots, 0);
    let eager = StreamOpts::default().await_clock(false);
    net.link_with(a, StreamOpts::default(), c, eager);
    net.pump();
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
}

/// A peer asked for a snapshot it cannot send (it is poisoned) sends
/// its history instead: a wanted snapshot is a favour, and waiting for
/// it held back every update to the asker.
#[test]
fn a_wanted_snapshot_that_cannot_go_does_not_hold_back_history() {
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), small));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    let link = net.link(a, c);
    for i in 1..=3 {
        net.update(a, vec![i]).expect("a's write");
    }
    net.update(c, vec![10]).expect("c's write");
    net.pump();
    net.cut(link);
    net[a].rejoin(Fragile::default());
    net.update(c, vec![11]).expect("c's write");
    let now = net.now();
    assert!(poisoned_write(&mut net[c], now, vec![12, 13]));
    let snapshots = net[a].stats().snapshots;
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].stats().snapshots, snapshots, "none from a poisoned replica");
    let state = &net[a].state().0;
    assert!(state.contains(&10) && state.contains(&11), "c's history came: {state:?}");
    assert!(!state.contains(&12), "not the panic's leftover");
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
}

/// A peer that did not await the clock and does not tail sent its Sync
/// before the Hello asking for a snapshot came, with the asker's Sync
/// in the same read: it sends the snapshot before it is done (it
/// closed at once, and the asker never got it).
#[test]
fn a_peer_that_does_not_tail_sends_the_snapshot_asked_for_before_it_closes() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), true);
    let eager = StreamOpts::default().await_clock(false);
    let ac = net.link_with(a, eager.clone(), c, eager.tail(false));
    net.pump();
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3]), "the first write is back");
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
    // And then it is done, as a stream that does not tail is.
    let [_, (_, sc)] = net.streams(ac);
    let events: Vec<Event> = std::iter::from_fn(|| net[c].poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e,
            Event::End { stream, reason: crate::EndReason::Local(crate::CloseReason::Done) }
                if *stream == sc)),
        "c's stream closed as done: {events:?}"
    );
}

/// A stream that takes nothing does not ask for a snapshot, and its
/// peer, which sends it nothing, still says Sync.
/// Asserts that `c`, on its side of `link`, said Sync (among the
/// events it has not yet given out).
fn assert_said_sync<T: Reduce>(net: &mut Network<T>, c: NodeId, link: crate::LinkId) {
    let [_, (_, sc)] = net.streams(link);
    let events: Vec<Event> = std::iter::from_fn(|| net[c].poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e, Event::SyncSent { stream } if *stream == sc)),
        "c said Sync: {events:?}"
    );
}

#[test]
fn a_stream_that_takes_nothing_asks_for_no_snapshot() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    // c holds what a lacks: it would answer a stream that takes.
    while net[c].poll_event().is_some() {}
    let ac = net.link_with(a, StreamOpts::send_only(), c, StreamOpts::default());
    net.pump();
    assert_said_sync(&mut net, c, ac);
    assert_eq!(net[a].stats().snapshots, 0);
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks its other streams");
}

/// A snapshot from a peer that had fewer of a rejoined replica's own
/// writes than it lacks (one it needed from the first peer it reached)
/// does not end its asking: the next peer's brings back the rest.
/// Asking ended at the first, and the replica lacked its first write
/// for good, though c had it.
#[test]
fn a_snapshot_lacking_some_missing_writes_leaves_the_asking_to_the_next_peer() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    // b never heard of a, and its log lost its first write: a needs
    // its snapshot, which brings nothing of a's back.
    let b = net.add(Replica::with_config(id("b"), Fragile::default(), small_b()));
    net.update(b, vec![20]).expect("b's write");
    net.update(b, vec![21]).expect("b's write");
    let ab = net.link(a, b);
    net.pump();
    assert_eq!(net[a].stats().snapshots, 1, "b sent the snapshot a needed");
    assert!(net[a].state().0.contains(&20));
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
    net.cut(ab);
    net.link(a, c);
    net.pump();
    assert!(net[a].state().0.contains(&1), "c brought back a's first write");
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
}

/// A rejoin that kept none of its own writes (other sources' filled
/// its log) asks for no snapshot while its clock claims none of them:
/// history brings back what peers have. Once it writes, its clock
/// claims them, and it asks. Before, the first snapshot (from a peer
/// that had none of them) ended the asking, and after the write no
/// peer sent them back.
#[test]
fn a_rejoin_that_kept_no_write_asks_once_its_clock_claims_the_missing() {
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), small));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    let ac = net.link(a, c);
    for i in 1..=3 {
        net.update(a, vec![i]).expect("a's write");
    }
    net.pump();
    for i in 10..=11 {
        net.update(c, vec![i]).expect("c's write");
    }
    net.pump();
    net.cut(ac);
    net[a].rejoin(Fragile::default());
    assert!(net[a].rejoin_missing() > Timestamp::ZERO);
    assert!(net[a].state().0.is_empty(), "c's writes filled a's log: it kept none of its own");
    // b's snapshot (a needs it: b's log lost its first write) has none
    // of a's writes.
    let b = net.add(Replica::with_config(id("b"), Fragile::default(), small_b()));
    net.update(b, vec![20]).expect("b's write");
    net.update(b, vec![21]).expect("b's write");
    let ab = net.link(a, b);
    net.pump();
    net.cut(ab);
    assert_eq!(net[a].stats().snapshots, 1);
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "b had none of them");
    net.update(a, vec![4]).expect("a's write after the rejoin");
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3, 4, 10, 11, 20, 21]));
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
}

/// Only a peer whose clock holds the newest write the asker lacks
/// answers its request: one without it (here one that never takes the
/// asker's writes) would send a whole state on every stream for less.
#[test]
fn a_peer_without_the_missing_writes_sends_no_snapshot() {
    let (mut net, a, c) = rejoined_without_its_first_write(small(), false);
    let b = net.add(Replica::new(id("b"), Fragile::default()));
    net.update(b, vec![20]).expect("b's write");
    let deaf = StreamOpts { receives: false, ..StreamOpts::default() };
    for round in 0..3 {
        let ab = net.link_with(a, StreamOpts::default(), b, deaf.clone());
        net.pump();
        net.cut(ab);
        assert_eq!(net[a].stats().snapshots, 0, "round {round}: b sent none");
    }
    assert!(net[a].state().0.contains(&20), "b's history came");
    assert!(net[a].rejoin_missing() > Timestamp::ZERO, "a still asks");
    net.link(a, c);
    net.pump();
    assert_eq!(net[a].stats().snapshots, 1, "c answered");
    assert_eq!(net[a].state().0, BTreeSet::from([1, 2, 3, 20]));
    assert_eq!(net[a].rejoin_missing(), Timestamp::ZERO);
}

/// A strict replica that trusts nobody's snapshots does not ask for
/// one; one that trusts some asks, and a peer whose snapshot it refused
/// as unsigned does not answer the same request again: each stream
/// would cost a whole state, refused, and hold back the history.
#[test]
fn a_refused_answer_is_not_sent_again() {
    for trusted in [false, true] {
        let mut strict = small().require_signatures(true);
        if trusted {
            strict = strict.trust_snapshots_from([id("z")]);
        }
        let (mut net, a, c) = rejoined_without_its_first_write(strict, false);
        assert!(net[a].rejoin_missing() > Timestamp::ZERO);
        for round in 0..3 {
            let ac = net.link(a, c);
            net.pump();
            net.cut(ac);
            let refused = net[a].stats().snapshots_refused;
            assert_eq!(refused, u64::from(trusted), "trusted {trusted}, round {round}");
        }
        // The refusal stands for a while: a's settings may change.
        net.advance(DECLINE_MILLIS);
        let ac = net.link(a, c);
        net.pump();
        net.cut(ac);
        let refused = net[a].stats().snapshots_refused;
        assert_eq!(refused, 2 * u64::from(trusted), "trusted {trusted}: answered again");
    }
}

/// A stream that did not await the clock owes a snapshot from its
/// start (its log lost records), held back by a store's hold; the
/// peer's Hello then says it takes nothing: the stream owes it none,
/// and says Sync (it waited for ever).
#[test]
fn a_snapshot_owed_to_a_peer_that_takes_nothing_does_not_hold_the_sync() {
    let mut net = Network::new();
    let small = Config::default().history_limit(2);
    let c = net.add(Replica::with_config(id("c"), Fragile::default(), small));
    for i in 1..=3 {
        net.update(c, vec![i]).expect("c's write");
    }
    net[c].hold_until_released();
    net.update(c, vec![4]).expect("c's write, not yet saved");
    let a = net.add(Replica::new(id("a"), Fragile::default()));
    let eager = StreamOpts::default().await_clock(false);
    let ac = net.link_with(a, StreamOpts::send_only(), c, eager);
    net.pump();
    assert_said_sync(&mut net, c, ac);
}

/// A log of one record: a peer that lacks the first of two writes
/// needs a snapshot.
fn small_b() -> Config {
    Config::default().history_limit(1)
}

/// A log of two records.
fn small() -> Config {
    Config::default().history_limit(2)
}

/// a (with `config`, whose log holds two records) wrote 1, 2 and 3,
/// which c took (`one_at_a_time`: each by history before the next),
/// then they parted and a rejoined: its first write is gone from its
/// log, and its clock claims it.
fn rejoined_without_its_first_write(
    config: Config,
    one_at_a_time: bool,
) -> (Network<Fragile>, NodeId, NodeId) {
    let mut net = Network::new();
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), config));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    let link = net.link(a, c);
    for i in 1..=3 {
        net.update(a, vec![i]).expect("a's write");
        if one_at_a_time {
            net.pump();
        }
    }
    net.pump();
    net.cut(link);
    net[a].rejoin(Fragile::default());
    (net, a, c)
}

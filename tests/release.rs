//! A durable replica holds its log back from peers until its store has it
//! (`Replica::hold_until_released` / `release`): no peer ever holds an
//! update that a crash could take from its origin.

mod common;

use common::id;
use repred::{Config, Network, Replica};
use repred_suite::MaxMap;

fn write(net: &mut Network<MaxMap>, node: repred::NodeId, key: u64) {
    net.update(node, [(format!("k{key:02}"), key + 1)].into()).unwrap();
}

#[test]
fn only_released_records_reach_peers_in_log_order() {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), MaxMap::default()));
    let b = net.add(Replica::new(id("b"), MaxMap::default()));
    let c = net.add(Replica::new(id("c"), MaxMap::default()));
    net[a].hold_until_released();
    net.link(a, b);
    net.link(b, c);
    let start = net[a].end_seq();
    for key in 0..10 {
        write(&mut net, a, key);
    }
    net.pump();
    assert!(net[b].state().0.is_empty(), "nothing released, nothing sent");
    assert!(net[c].state().0.is_empty());

    net[a].release(start + 4);
    net.pump();
    let keys = |net: &Network<MaxMap>, n| net[n].state().0.keys().cloned().collect::<Vec<_>>();
    let first_four: Vec<String> = (0..4).map(|k| format!("k{k:02}")).collect();
    assert_eq!(keys(&net, b), first_four, "exactly the released prefix");
    assert_eq!(keys(&net, c), first_four, "relays pass on what they got");

    // The peer's own updates are not held: only a's log is.
    write(&mut net, b, 99);
    net.pump();
    assert!(net[a].state().0.contains_key("k99"));

    net[a].release(start + 3);
    net.pump();
    assert_eq!(keys(&net, b).len(), 5, "a release never moves back");

    let end = net[a].end_seq();
    net[a].release(end);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[c].state(), net[a].state());
    assert_eq!(net[c].clock(), net[a].clock());
}

/// A peer behind the history's horizon is owed a snapshot; the snapshot
/// holds the whole state, so it waits until everything is released.
#[test]
fn a_snapshot_waits_for_the_whole_log_to_be_released() {
    let config = Config::default().history_limit(4);
    let mut net = Network::new();
    let a = net.add(Replica::with_config(id("a"), MaxMap::default(), config.clone()));
    for key in 0..20 {
        write(&mut net, a, key);
    }
    net[a].hold_until_released();
    let saved = net[a].end_seq();
    write(&mut net, a, 20);
    let b = net.add(Replica::with_config(id("b"), MaxMap::default(), config));
    let link = net.link(a, b);
    net.pump();
    assert!(net[b].state().0.is_empty(), "the snapshot would hold the unsaved k20");
    let [(_, sa), _] = net.streams(link);
    assert_eq!(net[a].stream_stats(sa).unwrap().snapshots_sent, 0);

    net[a].release(saved + 1);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[a].stream_stats(sa).unwrap().snapshots_sent, 1);
}

/// Without a hold, `release` changes nothing and everything flows.
#[test]
fn release_without_a_hold_does_nothing() {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), MaxMap::default()));
    let b = net.add(Replica::new(id("b"), MaxMap::default()));
    net.link(a, b);
    net[a].release(0);
    write(&mut net, a, 1);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
}

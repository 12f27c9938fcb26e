//! Memory is bounded by the history limit, not by the number of updates.

mod common;

use common::{NOW, id};
use repred::{Config, Network, Replica, StreamOpts};
use repred_suite::MaxMap;

/// 1,000,000 updates to 10 keys: the history never holds more than its
/// limit, and a fresh peer still gets the whole state (as a snapshot).
#[test]
fn a_million_updates_to_ten_keys_keep_history_bounded() {
    let limit = 1_000;
    let config = Config::default().history_limit(limit);
    let mut net = Network::new();
    let a = net.add(Replica::with_config(id("a"), MaxMap::default(), config.clone()));
    let mut most = 0;
    for i in 1..=1_000_000u64 {
        let now = net.now() + i / 1_000;
        net[a].update(now, [(format!("k{}", i % 10), i)].into()).unwrap();
        most = most.max(net[a].history_len());
    }
    assert_eq!(most, limit);
    assert_eq!(net[a].stats().local, 1_000_000);
    assert_eq!(net[a].state().0.len(), 10);
    net.advance(1_000);
    let b = net.add(Replica::with_config(id("b"), MaxMap::default(), config));
    let link = net.link(a, b);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[b].clock(), net[a].clock());
    let [(_, sa), _] = net.streams(link);
    let stats = net[a].stream_stats(sa).unwrap();
    assert_eq!(stats.snapshots_sent, 1, "too far behind for history");
    assert_eq!(stats.updates_sent, 0, "the snapshot covered the whole history");
}

/// A peer that stops reading does not make the sender buffer: frames are
/// made from the history on demand, and a peer that fell behind the
/// history's horizon resumes from a snapshot.
#[test]
fn a_slow_peer_costs_no_memory_and_resumes_from_a_snapshot() {
    let config = Config::default().history_limit(100);
    let mut net = Network::new();
    let a = net.add(Replica::with_config(id("a"), MaxMap::default(), config.clone()));
    let b = net.add(Replica::with_config(id("b"), MaxMap::default(), config));
    let link = net.link(a, b);
    net.pump();
    let [(_, sa), _] = net.streams(link);
    // b stops reading: a writes 10,000 updates and polls nothing.
    for i in 0..10_000u64 {
        net.update(a, [(format!("k{}", i % 50), i)].into()).unwrap();
    }
    assert!(net[a].history_len() <= 100);
    // When the link is polled again, a snapshot replaces the lost history.
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    let stats = net[a].stream_stats(sa).unwrap();
    assert_eq!((stats.snapshots_sent, stats.updates_sent), (1, 0));
}

/// Updates made between a stream's Hello and its Sync are sent after the
/// Sync, not lost.
#[test]
fn updates_between_hello_and_sync_are_not_lost() {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), MaxMap::default()));
    let b = net.add(Replica::new(id("b"), MaxMap::default()));
    net.update(a, [("early".to_string(), 1)].into()).unwrap();
    let link = net.link(a, b);
    net.flush(link, 0);
    net.flush(link, 1);
    net.deliver(link, 1, usize::MAX); // a has b's Hello; its history is queued
    net.update(a, [("between".to_string(), 2)].into()).unwrap();
    net.pump();
    assert_eq!(net[b].state().0.get("between"), Some(&2));
    assert_eq!(net[b].state().0.get("early"), Some(&1));
}

/// A send-only stream on a disposed replica cannot be opened; one opened
/// before ends with the replica.
#[test]
fn streams_do_not_outlive_their_replica() {
    let mut r = Replica::new(id("a"), MaxMap::default());
    r.open(StreamOpts::send_only()).unwrap();
    r.dispose();
    assert_eq!(r.stream_count(), 0);
    assert!(r.open(StreamOpts::default()).is_err());
    let _ = NOW;
}

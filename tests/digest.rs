//! Anti-entropy between equal replicas costs the same at any number of
//! sources: Hellos carry a clock digest once clocks are large.

mod common;

use common::{NOW, id};
use repred::{ClockSummary, Envelope, Network, Replica, Timestamp};
use repred_suite::MaxMap;

/// Two replicas that hold the same updates from `sources` writers.
fn equal_pair(sources: usize) -> (Network<MaxMap>, repred::NodeId, repred::NodeId) {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), MaxMap::default()));
    let b = net.add(Replica::new(id("b"), MaxMap::default()));
    for s in 0..sources {
        let source = repred::SourceId::from_bytes((s as u128 + 1).to_be_bytes()).unwrap();
        let e = Envelope::new(
            source,
            Timestamp::new(NOW, 1),
            [(format!("k{}", s % 10), s as u64)].into(),
        );
        net[a].apply(NOW, e.clone());
        net[b].apply(NOW, e);
    }
    (net, a, b)
}

#[test]
fn equal_replicas_exchange_hello_and_sync_only_at_any_scale() {
    for sources in [10, 100, 1_000, 10_000, 100_000] {
        let (mut net, a, b) = equal_pair(sources);
        let link = net.link(a, b);
        net.pump();
        let [(_, sa), (_, sb)] = net.streams(link);
        let (x, y) = (net[a].stream_stats(sa).unwrap(), net[b].stream_stats(sb).unwrap());
        assert_eq!((x.frames_sent, y.frames_sent), (2, 2), "{sources} sources");
        assert_eq!(x.updates_sent + y.updates_sent, 0);
        let bytes = x.bytes_sent + y.bytes_sent;
        if sources > ClockSummary::INLINE_SOURCES {
            assert!(bytes < 128, "{sources} sources cost {bytes} bytes");
        } else {
            assert!(bytes < 128 + 2 * 30 * sources as u64);
        }
    }
}

#[test]
fn replicas_with_different_large_clocks_swap_clocks_and_converge() {
    let (mut net, a, b) = equal_pair(1_000);
    net.update(a, [("only-a".to_string(), 1)].into()).unwrap();
    net.update(b, [("only-b".to_string(), 2)].into()).unwrap();
    let link = net.link(a, b);
    net.pump();
    assert_eq!(net[a].state(), net[b].state());
    assert_eq!(net[a].clock(), net[b].clock());
    let [(_, sa), (_, sb)] = net.streams(link);
    // Only the one missing update crosses each way, after a Clock frame.
    assert_eq!(net[a].stream_stats(sa).unwrap().updates_sent, 1);
    assert_eq!(net[b].stream_stats(sb).unwrap().updates_sent, 1);
    assert_eq!(net[a].stream_stats(sa).unwrap().frames_sent, 4, "Hello, Clock, Updates, Sync");
}

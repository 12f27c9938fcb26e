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
    // Only the one missing update crosses each way, after the clocks were
    // compared range by range: far fewer bytes than the clocks themselves
    // (1,000 sources, ~25 bytes each).
    assert_eq!(net[a].stream_stats(sa).unwrap().updates_sent, 1);
    assert_eq!(net[b].stream_stats(sb).unwrap().updates_sent, 1);
    let sent = |node, stream| net[node].stream_stats(stream).unwrap().bytes_sent;
    let bytes = sent(a, sa) + sent(b, sb);
    assert!(bytes < 4_096, "{bytes} bytes");
}

/// A source id that looks random, as real ones are (random, or hashed
/// from a key).
fn scattered(i: u64) -> repred::SourceId {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(x ^ (x >> 31)).to_be_bytes());
    bytes[8..].copy_from_slice(&i.to_be_bytes());
    repred::SourceId::from_bytes(bytes).unwrap()
}

/// A million sources (issue 16): a fresh replica is brought up to date (a
/// snapshot, whose clock travels in chunks, none near the frame limit),
/// and a replica that lacks a single source (a recent update, still in
/// the other's history) resyncs for a few kilobytes, not the 25 MB of the
/// clocks.
#[test]
fn a_million_sources_catch_up_and_resync_for_a_few_kilobytes() {
    const SOURCES: u64 = 1_000_000;
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), MaxMap::default()));
    let lacking = net.add(Replica::new(id("b"), MaxMap::default()));
    for s in 0..SOURCES {
        let e = Envelope::new(
            scattered(s),
            Timestamp::new(NOW, 1),
            [(format!("k{}", s % 10), s)].into(),
        );
        net[a].apply(NOW, e.clone());
        if s != SOURCES - 1_000 {
            net[lacking].apply(NOW, e);
        }
    }
    assert_eq!(net[a].clock().len(), SOURCES as usize);

    let link = net.link(a, lacking);
    net.pump();
    assert_eq!(net[lacking].clock(), net[a].clock());
    let [(_, sa), (_, sb)] = net.streams(link);
    let sent = |node, stream| net[node].stream_stats(stream).unwrap().bytes_sent;
    let bytes = sent(a, sa) + sent(lacking, sb);
    eprintln!("resync with a replica lacking one of a million sources: {bytes} bytes");
    assert!(bytes <= 4_096, "the resync cost {bytes} bytes");

    let fresh = net.add(Replica::new(id("fresh"), MaxMap::default()));
    net.link(a, fresh);
    net.pump();
    assert_eq!(net[fresh].clock(), net[a].clock());
    assert_eq!(net[fresh].state(), net[a].state());
    assert!(net.errors().is_empty(), "{:?}", net.errors());
}

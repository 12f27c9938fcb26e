//! States larger than a frame: a snapshot streams in parts (issue 16).

mod common;

use common::{NOW, id};
use repred::{Config, Envelope, LwwMap, Network, Outcome, Replica, Timestamp};

type Blobs = LwwMap<u64, Vec<u8>>;

/// A replica holding `keys` values of `size` bytes, with a history so short
/// that a fresh peer must get a snapshot.
fn big(keys: u64, size: usize) -> Replica<Blobs> {
    let config = Config::default().history_limit(16);
    let mut r = Replica::with_config(id("big"), Blobs::default(), config);
    for k in 0..keys {
        let value = vec![(k % 251) as u8; size];
        r.update(NOW, LwwMap::set(k, value)).unwrap();
    }
    r
}

/// The frames in a byte stream: (kind, length).
fn frames(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push((bytes[at + 4], len));
        at += 4 + len;
    }
    out
}

/// 32 MiB of state reaches a fresh peer with the default frame limit, in
/// parts of about 64 KiB; the peer ends with the same state and clock.
#[test]
fn a_state_of_32_mib_reaches_a_fresh_peer_in_parts() {
    let mut net = Network::new();
    let a = net.add(big(256 * 1024, 128));
    let b = net.add(Replica::new(id("fresh"), Blobs::default()));
    let link = net.link(a, b);
    // Hellos both ways; then a's snapshot, every frame far below the limit.
    for side in [0, 1] {
        net.flush(link, side);
    }
    for side in [0, 1] {
        net.deliver(link, side, usize::MAX);
    }
    let [(_, sa), _] = net.streams(link);
    let mut out = Vec::new();
    while net[a].poll_transmit(sa, &mut out).unwrap() > 0 {}
    let kinds = frames(&out);
    assert!(
        kinds.iter().all(|&(_, len)| len < 256 << 10),
        "a frame of {:?}",
        kinds.iter().map(|f| f.1).max()
    );
    let parts = kinds.iter().filter(|&&(kind, _)| kind == 12).count();
    assert!(parts > 400, "{parts} parts");
    let [_, (_, sb)] = net.streams(link);
    net[b].handle(sb, NOW, &out).unwrap();
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[b].clock(), net[a].clock());
    assert_eq!(net[b].stats().snapshots, 1);
    let stats = net[a].stream_stats(sa).unwrap();
    assert!(stats.bytes_sent > 32 << 20, "{} bytes sent", stats.bytes_sent);
    // The history kept what the last 32 MiB of parts changed, for a store
    // or subscribers, not a second copy of the whole state; a store
    // reading from the start finds it lagged and saves the state instead.
    // (Two records a part: what it changed, and the floor it is from.)
    let kept = net[b].history_len();
    assert!(kept > 200 && kept < 2 * parts, "{kept} records kept of {parts} parts");
    assert!(net[b].entries_from(0).is_err());
}

/// A stream cut mid-snapshot leaves the receiver with some parts merged
/// but its clock untouched (nothing partial is presented as complete); a
/// new stream sends the snapshot again and completes it.
#[test]
fn a_snapshot_cut_midway_claims_nothing_and_completes_on_the_next_stream() {
    let mut net = Network::new();
    let a = net.add(big(20_000, 256));
    let b = net.add(Replica::new(id("fresh"), Blobs::default()));
    let link = net.link(a, b);
    // Hellos both ways, then a megabyte of a's snapshot, then the cut.
    for side in [0, 1] {
        net.flush(link, side);
    }
    for side in [0, 1] {
        net.deliver(link, side, usize::MAX);
    }
    assert!(net.flush(link, 0) > 4 << 20, "a wrote its snapshot");
    net.deliver(link, 0, 1 << 20);
    net.cut(link);
    let partial = net[b].state().len();
    assert!(partial > 0 && partial < 20_000, "{partial} keys after a cut");
    assert!(net[b].clock().is_empty(), "a partial snapshot claimed a clock");
    net.link(a, b);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[b].clock(), net[a].clock());
}

/// The cheaper path (issue 16): a fresh peer of a map written 200,000
/// times over 1,000 keys is sent the 1,000 entries, not the history, even
/// though the history still holds every update.
#[test]
fn a_fresh_peer_gets_the_state_when_history_is_much_longer() {
    let mut net = Network::new();
    let config = Config::default().history_limit(1 << 20);
    let mut a = Replica::with_config(id("writer"), Blobs::default(), config);
    for i in 0..200_000u64 {
        a.update(NOW, LwwMap::set(i % 1_000, vec![1; 8])).unwrap();
    }
    assert!(a.horizon().is_empty(), "the history holds every update");
    let a = net.add(a);
    let b = net.add(Replica::new(id("fresh"), Blobs::default()));
    let link = net.link(a, b);
    net.pump();
    assert_eq!(net[b].state(), net[a].state());
    assert_eq!(net[b].clock(), net[a].clock());
    let [(_, sa), _] = net.streams(link);
    let stats = net[a].stream_stats(sa).unwrap();
    assert_eq!(stats.snapshots_sent, 1);
    assert_eq!(stats.updates_sent, 0);
    assert!(stats.bytes_sent < 100_000, "{} bytes", stats.bytes_sent);
}

/// The cheaper path's estimate samples a long history rather than walking
/// it: a peer that lacks the last 1,500 of 200,000 updates over 1,000 keys
/// (fewer than twice the entries) still gets them as history, and one that
/// lacks the last 20,000 gets the 1,000 entries.
#[test]
fn a_peer_behind_a_long_history_gets_whichever_is_cheaper() {
    for (held, snapshots) in [(198_500u64, 0u64), (180_000, 1)] {
        let config = Config::default().history_limit(1 << 20);
        let mut a = Replica::with_config(id("holder"), Blobs::default(), config);
        let mut b = Replica::new(id("behind"), Blobs::default());
        for i in 0..200_000u64 {
            let ts = Timestamp::new(NOW + i / 1_000, (i % 1_000) as u16 + 1);
            let e = Envelope::new(id("writer"), ts, LwwMap::set(i % 1_000, vec![1; 8]));
            if i < held {
                assert_eq!(b.apply(NOW + 1_000, e.clone()), Outcome::Applied);
            }
            assert_eq!(a.apply(NOW + 1_000, e), Outcome::Applied);
        }
        let mut net = Network::new();
        let a = net.add(a);
        let b = net.add(b);
        let link = net.link(a, b);
        net.pump();
        assert_eq!(net[b].state(), net[a].state());
        assert_eq!(net[b].clock(), net[a].clock());
        let [(_, sa), _] = net.streams(link);
        let stats = net[a].stream_stats(sa).unwrap();
        assert_eq!(stats.snapshots_sent, snapshots, "holding {held}");
        if snapshots == 0 {
            assert_eq!(stats.updates_sent, 200_000 - held);
        }
    }
}

/// An `LwwMap` that records what it was asked to reserve.
#[derive(Default)]
struct Reserving {
    map: LwwMap<u64, u64>,
    reserved: Vec<u64>,
}

impl repred::Reduce for Reserving {
    type Update = <LwwMap<u64, u64> as repred::Reduce>::Update;

    fn reduce(&mut self, update: Self::Update) -> Option<Self::Update> {
        self.map.reduce(update)
    }

    fn snapshot(&self) -> Self::Update {
        self.map.snapshot()
    }

    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (Self::Update, Option<Vec<u8>>) {
        self.map.snapshot_part(cursor, max)
    }

    fn entries_hint(&self) -> Option<u64> {
        self.map.entries_hint()
    }

    fn reserve(&mut self, entries: u64) {
        self.reserved.push(entries);
        self.map.reserve(entries);
    }

    fn stamp(update: &mut Self::Update, stamp: repred::Stamp) {
        LwwMap::<u64, u64>::stamp(update, stamp);
    }

    fn unstamp(change: &mut Self::Update, stamp: repred::Stamp) {
        LwwMap::<u64, u64>::unstamp(change, stamp);
    }
}

/// A snapshot's begin says how many entries the state holds: the fresh
/// receiver reserves once, before its parts merge, up to its limit.
#[test]
fn a_fresh_peer_reserves_room_for_the_snapshot_once() {
    for (limit, want) in [(u64::MAX, 5_000), (1_000, 1_000)] {
        let mut net = Network::new();
        let config = Config::default().history_limit(16);
        let mut source = Replica::with_config(id("big"), Reserving::default(), config);
        for k in 0..5_000u64 {
            source.update(NOW, LwwMap::set(k, k)).unwrap();
        }
        let a = net.add(source);
        let config = Config::default().max_snapshot_reserve(limit);
        let b = net.add(Replica::with_config(id("fresh"), Reserving::default(), config));
        net.link(a, b);
        net.pump();
        assert_eq!(net[b].stats().snapshots, 1);
        assert_eq!(net[b].state().map, net[a].state().map);
        assert_eq!(net[b].state().reserved, [want], "limit {limit}");
    }
}

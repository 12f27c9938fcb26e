//! Helpers for the integration tests.
#![allow(dead_code)]

use repred::{ChannelBinding, Event, Reduce, Replica, SourceId, StreamId, StreamOpts};

/// Wall time used where a test does not care: well after the epoch, so that
/// hybrid timestamps carry real-looking milliseconds.
pub const NOW: u64 = 1_700_000_000_000;

pub fn id(name: &str) -> SourceId {
    SourceId::new(name).expect("a valid test id")
}

pub fn replica<T: Reduce + Default>(name: &str) -> Replica<T> {
    Replica::new(id(name), T::default())
}

/// Drains a replica's events.
pub fn events<T: Reduce>(r: &mut Replica<T>) -> Vec<Event> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

/// How many `Synced` events a list has for `stream`.
pub fn synced(events: &[Event], stream: StreamId) -> usize {
    events.iter().filter(|e| matches!(e, Event::Synced { stream: s } if *s == stream)).count()
}

/// Drains every frame a stream has to send.
pub fn drain<T: Reduce>(r: &mut Replica<T>, stream: StreamId) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        if r.poll_transmit(stream, &mut out).expect("transmit") == 0 {
            return out;
        }
    }
    panic!("stream never went quiet");
}

/// The changes a subscription has not read yet, as (source, change) pairs.
pub fn read<T: Reduce>(
    r: &Replica<T>,
    sub: &mut repred::Subscription,
) -> Vec<(SourceId, T::Update)> {
    r.changes(sub)
        .map(|d| match d {
            repred::Delivery::Change(c) => (c.source, c.change.clone()),
            repred::Delivery::Lagged { missed } => panic!("subscriber lagged by {missed}"),
        })
        .collect()
}

/// A frame as the wire carries it: length, kind, body.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// A stream on `r` from a peer calling itself `name` that sends and
/// receives, its Hello handled.
pub fn raw_peer<T: Reduce + Default>(r: &mut Replica<T>, name: &str, now: u64) -> StreamId {
    let mut peer = Replica::new(id(name), T::default());
    raw_peer_with(r, &mut peer, now, StreamOpts::default())
}

/// A stream of `r`'s opened with `opts` on which `peer` said Hello (on a
/// stream of its own with the same binding, from the other end).
pub fn raw_peer_with<T: Reduce>(
    r: &mut Replica<T>,
    peer: &mut Replica<T>,
    now: u64,
    opts: StreamOpts,
) -> StreamId {
    let binding = opts.binding.map(ChannelBinding::other_end);
    let p = peer.open(StreamOpts { authenticated_peer: None, binding, ..opts.clone() }).unwrap();
    let mut hello = Vec::new();
    peer.poll_transmit(p, &mut hello).unwrap();
    let s = r.open(opts).unwrap();
    r.handle(s, now, &hello).unwrap();
    s
}

//! Helpers for the integration tests.
#![allow(dead_code)]

use repred::{Event, Reduce, Replica, SourceId, StreamId};

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

//! Every stock lattice passes the law checker and converges through
//! in-memory links under random order and duplication; the checker catches
//! reducers that are not joins.

mod common;

use std::collections::BTreeMap;

use common::id;
use proptest::prelude::*;
use repred::lattice::{OrSetUpdate, Stamped};
use repred::{
    EventLog, GCounter, GSet, LatticeMap, LwwMap, LwwRegister, Max, Min, Network, OrSet, PnCounter,
    Reduce, Replica, SourceId, Stamp, Timestamp, laws,
};

fn source() -> impl Strategy<Value = SourceId> {
    (0u8..3).prop_map(|i| id(&format!("w{i}")))
}

fn stamp() -> impl Strategy<Value = Option<Stamp>> {
    prop_oneof![
        Just(None),
        (1u64..6, source())
            .prop_map(|(t, source)| Some(Stamp { ts: Timestamp::new(t, 0), source })),
    ]
}

fn lww_writes() -> impl Strategy<Value = Vec<(u8, Stamped<Option<u8>>)>> {
    prop::collection::vec(
        (0u8..4, stamp(), prop::option::of(0u8..4))
            .prop_map(|(k, stamp, value)| (k, Stamped { stamp, value })),
        0..4,
    )
}

#[test]
fn max_and_min_are_lawful() {
    laws::check::<Max<u8>>(
        prop::option::of(0u8..10).prop_map(|v| v.map_or_else(Max::default, Max::new)),
    );
    laws::check::<Min<u8>>(
        prop::option::of(0u8..10).prop_map(|v| v.map_or_else(Min::default, Min::new)),
    );
}

#[test]
fn lww_register_and_map_are_lawful() {
    laws::check::<LwwRegister<u8>>(prop::option::of(0u8..4).prop_map(|v| match v {
        Some(v) => LwwRegister::set(v),
        None => LwwRegister::default(),
    }));
    // Writes of one update with an explicit stamp must not share a key with
    // another explicit write of the same stamp and a different value: two
    // different writes under one stamp are not a thing a replica can make.
    laws::check::<LwwMap<u8, u8>>(lww_writes().prop_map(|mut w| {
        w.sort_by_key(|(k, _)| *k);
        w.dedup_by_key(|(k, _)| *k);
        w.iter_mut().for_each(|(_, s)| s.stamp = None);
        w
    }));
}

#[test]
fn sets_are_lawful() {
    laws::check::<GSet<u8>>(prop::collection::btree_set(0u8..8, 0..4).prop_map(GSet::from_iter));
    let or_update = (
        prop::collection::vec((0u8..4).prop_map(|x| (x, None)), 0..3),
        prop::collection::vec(
            (0u8..4, 0u64..6, source())
                .prop_map(|(x, t, source)| (x, Stamp { ts: Timestamp::new(1_000 + t, 0), source })),
            0..3,
        ),
    )
        .prop_map(|(adds, removes)| OrSetUpdate { adds, removes });
    laws::check::<OrSet<u8>>(or_update);
}

#[test]
fn counters_are_lawful() {
    let totals = || prop::collection::btree_map(source(), 0u64..20, 0..3);
    laws::check::<GCounter>(totals().prop_map(|t| {
        let mut c = GCounter::default();
        for (s, n) in t {
            c.reduce(c.increment(s, n));
        }
        c
    }));
    laws::check::<PnCounter>((totals(), totals()).prop_map(|(up, down)| {
        let mut c = PnCounter::default();
        for (s, n) in up {
            c.reduce(c.increment(s, n));
        }
        for (s, n) in down {
            c.reduce(c.decrement(s, n));
        }
        c
    }));
}

#[test]
fn lattice_map_and_event_log_are_lawful() {
    laws::check::<LatticeMap<u8, Max<u8>>>(prop::collection::btree_map(
        0u8..4,
        (0u8..10).prop_map(Max::new),
        0..3,
    ));
    laws::check::<LatticeMap<u8, LwwRegister<u8>>>(prop::collection::btree_map(
        0u8..4,
        (0u8..10).prop_map(LwwRegister::set),
        0..3,
    ));
    laws::check::<EventLog<u8>>(prop::collection::vec(0u8..10, 0..3).prop_map(EventLog::emit));
}

/// A last-writer-wins without timestamps: the order decides.
#[derive(Clone, Debug, Default, PartialEq)]
struct Overwrite(Option<u8>);

impl Reduce for Overwrite {
    type Update = u8;
    fn reduce(&mut self, u: u8) -> Option<u8> {
        (self.0 != Some(u)).then(|| {
            self.0 = Some(u);
            u
        })
    }
    fn snapshot(&self) -> u8 {
        self.0.unwrap_or(0)
    }
}

/// A counter that adds every update: not idempotent.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tally(u64);

impl Reduce for Tally {
    type Update = u64;
    fn reduce(&mut self, u: u64) -> Option<u64> {
        (u > 0).then(|| {
            self.0 += u;
            u
        })
    }
    fn snapshot(&self) -> u64 {
        self.0
    }
}

fn failure_of(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("the checker must reject this reducer");
    err.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[test]
fn the_checker_catches_unlawful_reducers() {
    let msg = failure_of(|| laws::check::<Overwrite>(0u8..4));
    assert!(msg.contains("law violated: commutativity"), "{msg}");
    assert!(msg.contains("minimal failing input"), "{msg}");

    let msg = failure_of(|| laws::check::<Tally>(0u64..4));
    assert!(msg.contains("law violated"), "{msg}");
    assert!(msg.contains("Tally"), "{msg}");
    // Minimal means shrunk: two updates of 1 are enough to double count.
    assert!(msg.contains("minimal failing input"), "{msg}");
}

/// Random writes on three replicas, links cut and relinked, every update
/// also delivered a second time by hand: all end equal.
fn converges<T, F>(seed: u64, mut write: F)
where
    T: Reduce + Default + PartialEq + std::fmt::Debug,
    F: FnMut(&T, SourceId, u64) -> T::Update,
{
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut net = Network::new();
    let nodes: Vec<_> =
        ["a", "b", "c"].iter().map(|n| net.add(Replica::new(id(n), T::default()))).collect();
    let mut links = vec![net.link(nodes[0], nodes[1]), net.link(nodes[1], nodes[2])];
    for round in 0..60 {
        let node = nodes[next(3) as usize];
        let u = write(net[node].state(), net[node].id(), round);
        net.update(node, u).unwrap();
        match next(5) {
            0 => net.step(),
            1 => {
                let l = links[next(2) as usize];
                net.cut(l);
                0
            }
            2 => {
                // Duplicate delivery: replay one replica's history into another.
                let (from, to) = (nodes[next(3) as usize], nodes[next(3) as usize]);
                if net[to].clock().covers(net[from].horizon()) {
                    let h: Vec<_> =
                        net[from].history(&repred::Clock::new()).into_iter().cloned().collect();
                    let now = net.now();
                    for e in h {
                        net[to].apply(now, e);
                    }
                }
                0
            }
            _ => 0,
        };
        net.advance(next(3));
    }
    for (i, l) in links.clone().into_iter().enumerate() {
        if !net.is_up(l) {
            let [(a, _), (b, _)] = net.streams(l);
            links[i] = net.link(a, b);
        }
    }
    net.pump();
    assert_eq!(net[nodes[0]].state(), net[nodes[1]].state(), "seed {seed}");
    assert_eq!(net[nodes[1]].state(), net[nodes[2]].state(), "seed {seed}");
}

#[test]
fn every_lattice_converges_through_links() {
    for seed in 1..=8 {
        converges::<Max<u64>, _>(seed, |_, _, r| Max::new(r * 7 % 13));
        converges::<Min<u64>, _>(seed, |_, _, r| Min::new(r * 7 % 13));
        converges::<LwwRegister<u64>, _>(seed, |_, _, r| LwwRegister::set(r));
        converges::<LwwMap<u64, u64>, _>(seed, |_, _, r| {
            if r % 4 == 0 { LwwMap::delete(r % 5) } else { LwwMap::set(r % 5, r) }
        });
        converges::<GSet<u64>, _>(seed, |_, _, r| GSet::add(r % 9));
        converges::<OrSet<u64>, _>(seed, |s, _, r| {
            if r % 3 == 0 { s.remove(&(r % 4)) } else { OrSet::add(r % 4) }
        });
        converges::<GCounter, _>(seed, |s, me, r| s.increment(me, r % 3 + 1));
        converges::<PnCounter, _>(seed, |s, me, r| {
            if r % 2 == 0 { s.increment(me, 2) } else { s.decrement(me, 1) }
        });
        converges::<LatticeMap<u64, Max<u64>>, _>(seed, |_, _, r| {
            BTreeMap::from([(r % 3, Max::new(r))])
        });
        converges::<EventLog<u64>, _>(seed, |_, _, r| EventLog::emit([r]));
    }
}

/// Only the part of a write that wins travels, and a key's stamp stays off
/// the wire when it is its update's own.
#[test]
fn lww_changes_are_precise_and_lean() {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), LwwMap::<String, String>::default()));
    net.update(
        a,
        LwwMap::set_all([("k1".to_string(), "v".to_string()), ("k2".to_string(), "w".to_string())]),
    )
    .unwrap();
    let h = net[a].history(&repred::Clock::new());
    assert!(h[0].change.iter().all(|(_, w)| w.stamp.is_none()), "implicit stamps");
    let bytes = postcard::to_allocvec(&h[0].change).unwrap().len();
    assert!(bytes <= 1 + 2 * (1 + 2 + 1 + 1 + 1 + 1), "{bytes} bytes for two small writes");
}

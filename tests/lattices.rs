//! Every stock lattice passes the law checker and converges through
//! in-memory links under random order and duplication; the checker catches
//! reducers that are not joins.

mod common;

use std::collections::BTreeMap;

use common::id;
use proptest::prelude::*;
use repred::doc::{Doc, Seq, SeqUpdate};
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
    type Update = Option<u8>;
    fn reduce(&mut self, u: Option<u8>) -> Option<Option<u8>> {
        (u.is_some() && self.0 != u).then(|| {
            self.0 = u;
            u
        })
    }
    fn snapshot(&self) -> Option<u8> {
        self.0
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

/// A max register that forgets to report its first write.
#[derive(Clone, Debug, Default, PartialEq)]
struct Quiet(Option<u8>);

impl Reduce for Quiet {
    type Update = Option<u8>;
    fn reduce(&mut self, u: Option<u8>) -> Option<Option<u8>> {
        let first = self.0.is_none();
        if u <= self.0 {
            return None;
        }
        self.0 = u;
        (!first).then_some(u)
    }
    fn snapshot(&self) -> Option<u8> {
        self.0
    }
}

fn failure_of(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("the checker must reject this reducer");
    err.downcast_ref::<String>().cloned().unwrap_or_default()
}

/// The updates of a failure message, as `update` fields in order.
fn failing_updates(msg: &str) -> usize {
    msg.matches("Stamp {").count()
}

#[test]
fn the_checker_catches_unlawful_reducers() {
    // Last-writer-wins without timestamps: the order decides.
    let msg = failure_of(|| laws::check::<Overwrite>((0u8..4).prop_map(Some)));
    assert!(msg.contains("law violated: commutativity"), "{msg}");
    assert!(msg.contains("Overwrite"), "{msg}");
    assert!(msg.contains("minimal failing input"), "{msg}");
    // Shrunk: two different values are all it takes.
    assert_eq!(failing_updates(&msg), 2, "{msg}");

    // A counter that adds every update it sees counts a repeat twice.
    let msg = failure_of(|| laws::check::<Tally>(0u64..4));
    assert!(msg.contains("law violated: idempotence"), "{msg}");
    assert!(msg.contains("Tally"), "{msg}");
    // Shrunk: one update of 1, seen twice.
    assert_eq!(failing_updates(&msg), 1, "{msg}");

    // A reducer that changes the state but says it did not.
    let msg = failure_of(|| laws::check::<Quiet>((0u8..4).prop_map(Some)));
    assert!(
        msg.contains("law violated: exact change (None returned, but the state changed"),
        "{msg}"
    );
    assert_eq!(failing_updates(&msg), 1, "{msg}");
}

/// One step of a random schedule on three replicas in a line (a-b-c).
#[derive(Clone, Debug)]
enum Step {
    /// A local write at a replica.
    Write(usize),
    /// Every link delivers what it has, once.
    Deliver,
    /// A link is cut (relinked at the end).
    Cut(usize),
    /// Part of one side of a link's bytes is delivered.
    Trickle(usize, usize, usize),
    /// One replica's whole history is applied to another, the sources
    /// interleaved at random (each source's updates still in order, as a
    /// transport keeps them): duplicates and reordering across sources.
    Replay(usize, usize, u64),
    /// The wall clock moves.
    Wait(u64),
}

fn schedule() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        4 => (0usize..3).prop_map(Step::Write),
        2 => Just(Step::Deliver),
        1 => (0usize..2).prop_map(Step::Cut),
        1 => (0usize..2, 0usize..2, 1usize..64).prop_map(|(l, s, n)| Step::Trickle(l, s, n)),
        1 => (0usize..3, 0usize..3, any::<u64>()).prop_map(|(f, t, r)| Step::Replay(f, t, r)),
        2 => (0u64..3).prop_map(Step::Wait),
    ];
    prop::collection::vec(step, 1..80)
}

/// Runs `steps`, heals every link, and checks that all replicas are equal.
fn converges<T, F>(steps: &[Step], mut write: F) -> Result<(), TestCaseError>
where
    T: Reduce + Default + PartialEq + std::fmt::Debug,
    F: FnMut(&T, SourceId, u64) -> T::Update,
{
    let mut net = Network::new();
    let nodes: Vec<_> =
        ["a", "b", "c"].iter().map(|n| net.add(Replica::new(id(n), T::default()))).collect();
    let mut links = [net.link(nodes[0], nodes[1]), net.link(nodes[1], nodes[2])];
    for (round, step) in steps.iter().enumerate() {
        match *step {
            Step::Write(n) => {
                let u = write(net[nodes[n]].state(), net[nodes[n]].id(), round as u64);
                net.update(nodes[n], u).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Step::Deliver => {
                net.step();
            }
            Step::Cut(l) => net.cut(links[l]),
            Step::Trickle(l, side, max) => {
                if net.is_up(links[l]) {
                    net.deliver(links[l], side, max);
                }
            }
            Step::Replay(from, to, mut rng) => {
                let (from, to) = (nodes[from], nodes[to]);
                if net[to].clock().covers(net[from].horizon()) {
                    let mut queues: BTreeMap<SourceId, std::collections::VecDeque<_>> =
                        BTreeMap::new();
                    for e in net[from].history(&repred::Clock::new()) {
                        queues.entry(e.source).or_default().push_back(e.clone());
                    }
                    let mut queues: Vec<_> = queues.into_values().collect();
                    let now = net.now();
                    while !queues.is_empty() {
                        rng =
                            rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let q = (rng >> 33) as usize % queues.len();
                        if let Some(e) = queues[q].pop_front() {
                            net[to].apply(now, e);
                        }
                        if queues[q].is_empty() {
                            queues.swap_remove(q);
                        }
                    }
                }
            }
            Step::Wait(ms) => net.advance(ms),
        }
    }
    for l in links.iter_mut() {
        if !net.is_up(*l) {
            let [(a, _), (b, _)] = net.streams(*l);
            *l = net.link(a, b);
        }
    }
    net.pump();
    prop_assert_eq!(net[nodes[0]].state(), net[nodes[1]].state());
    prop_assert_eq!(net[nodes[1]].state(), net[nodes[2]].state());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn max_and_min_converge(steps in schedule()) {
        converges::<Max<u64>, _>(&steps, |_, _, r| Max::new(r * 7 % 13))?;
        converges::<Min<u64>, _>(&steps, |_, _, r| Min::new(r * 7 % 13))?;
    }

    #[test]
    fn lww_register_and_map_converge(steps in schedule()) {
        converges::<LwwRegister<u64>, _>(&steps, |_, _, r| LwwRegister::set(r))?;
        converges::<LwwMap<u64, u64>, _>(&steps, |_, _, r| {
            if r % 4 == 0 { LwwMap::delete(r % 5) } else { LwwMap::set(r % 5, r) }
        })?;
    }

    #[test]
    fn sets_converge(steps in schedule()) {
        converges::<GSet<u64>, _>(&steps, |_, _, r| GSet::add(r % 9))?;
        converges::<OrSet<u64>, _>(&steps, |s, _, r| {
            if r % 3 == 0 { s.remove(&(r % 4)) } else { OrSet::add(r % 4) }
        })?;
    }

    #[test]
    fn counters_converge(steps in schedule()) {
        converges::<GCounter, _>(&steps, |s, me, r| s.increment(me, r % 3 + 1))?;
        converges::<PnCounter, _>(&steps, |s, me, r| {
            if r % 2 == 0 { s.increment(me, 2) } else { s.decrement(me, 1) }
        })?;
    }

    #[test]
    fn lattice_map_and_event_log_converge(steps in schedule()) {
        converges::<LatticeMap<u64, Max<u64>>, _>(&steps, |_, _, r| {
            BTreeMap::from([(r % 3, Max::new(r))])
        })?;
        converges::<LatticeMap<u64, OrSet<u64>>, _>(&steps, |s, _, r| {
            let key = r % 2;
            let update = match s.get(&key) {
                Some(set) if r % 3 == 0 => set.remove(&(r % 4)),
                _ => OrSet::add(r % 4),
            };
            LatticeMap::<u64, OrSet<u64>>::update(key, update)
        })?;
        converges::<EventLog<u64>, _>(&steps, |_, _, r| EventLog::emit([r]))?;
    }

    #[test]
    fn doc_and_seq_converge(steps in schedule()) {
        converges::<Doc<u64>, _>(&steps, |_, _, r| {
            let row = format!("r{}", r % 4);
            match r % 3 {
                0 => Doc::add(row, [("f", r)]),
                1 => Doc::set(row, "g", r),
                _ => Doc::remove(row),
            }
        })?;
        converges::<Seq<u64>, _>(&steps, seq_edit)?;
    }
}

/// Some edit of a list, chosen by `r`.
fn seq_edit(s: &Seq<u64>, _: SourceId, r: u64) -> SeqUpdate<u64> {
    let ids: Vec<String> = s.ids().into_iter().cloned().collect();
    let pick = |k: u64| ids.get(k as usize % ids.len().max(1)).cloned();
    let new = format!("i{}", r % 7);
    match (r % 7, pick(r / 7), pick(r / 3)) {
        (0, _, _) | (_, None, _) => s.push(new, r),
        (1, _, _) => s.unshift(new, r),
        (2, Some(a), _) => s.insert_after(&a, new, r),
        (3, Some(a), _) => s.insert_before(&a, new, r),
        (4, Some(x), Some(a)) => s.move_after(&x, &a),
        (5, Some(x), _) => s.set(x, r),
        (_, Some(x), _) => s.remove(&x),
    }
}

/// Equal timestamps from two sources: the larger source id wins on every
/// replica, whichever write each saw first.
#[test]
fn lww_ties_are_broken_by_source_id() {
    let mut a = Replica::new(id("a"), LwwMap::<String, String>::default());
    let mut b = Replica::new(id("b"), LwwMap::<String, String>::default());
    let sa = a.update(common::NOW, LwwMap::set("k".into(), "from a".into())).unwrap().unwrap();
    let sb = b.update(common::NOW, LwwMap::set("k".into(), "from b".into())).unwrap().unwrap();
    assert_eq!(sa.ts, sb.ts, "the same millisecond, the same counter");
    let (ea, eb) =
        (a.history(&repred::Clock::new())[0].clone(), b.history(&repred::Clock::new())[0].clone());
    a.apply(common::NOW, eb);
    b.apply(common::NOW, ea);
    let winner = if id("a") > id("b") { "from a" } else { "from b" };
    assert_eq!(a.state().get("k").map(String::as_str), Some(winner));
    assert_eq!(a.state(), b.state());
}

/// Observed-remove: a remove takes out only the adds it saw, so an add made
/// concurrently elsewhere survives it.
#[test]
fn or_set_concurrent_add_survives_remove() {
    let mut net = Network::new();
    let a = net.add(Replica::new(id("a"), OrSet::<String>::default()));
    let b = net.add(Replica::new(id("b"), OrSet::<String>::default()));
    let link = net.link(a, b);
    net.update(a, OrSet::add("x".to_string())).unwrap();
    net.pump();
    net.cut(link);
    let remove = net[a].state().remove(&"x".to_string());
    net.update(a, remove).unwrap();
    net.update(b, OrSet::add("x".to_string())).unwrap();
    net.link(a, b);
    net.pump();
    assert!(net[a].state().contains(&"x".to_string()));
    assert_eq!(net[a].state(), net[b].state());
    // Only b's add is left; a remove that has seen it takes the element out
    // everywhere.
    let remove = net[b].state().remove(&"x".to_string());
    assert_eq!(remove.removes.len(), 1);
    net.update(b, remove).unwrap();
    net.pump();
    assert!(net[a].state().is_empty() && net[b].state().is_empty());
}

/// States serialize as their snapshots and come back equal, derived data
/// (live counts) rebuilt.
#[test]
fn states_round_trip_through_serde() {
    fn round_trip<T>(state: &T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bytes = postcard::to_allocvec(state).unwrap();
        let back: T = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, state);
    }
    let mut r = Replica::new(id("a"), LwwMap::<String, u32>::default());
    r.update(common::NOW, LwwMap::set("x".into(), 1)).unwrap();
    r.update(common::NOW, LwwMap::set("y".into(), 2)).unwrap();
    r.update(common::NOW, LwwMap::delete("x".into())).unwrap();
    let bytes = postcard::to_allocvec(r.state()).unwrap();
    let back: LwwMap<String, u32> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!((&back, back.len()), (r.state(), 1));

    let mut s = Replica::new(id("a"), OrSet::<u8>::default());
    s.update(common::NOW, OrSet::add(1)).unwrap();
    s.update(common::NOW, OrSet::add(2)).unwrap();
    let rm = s.state().remove(&1);
    s.update(common::NOW, rm).unwrap();
    round_trip(s.state());

    let mut e = Replica::new(id("a"), EventLog::<String>::default());
    e.update(common::NOW, EventLog::emit(["hi".to_string()])).unwrap();
    round_trip(e.state());

    let mut m = LatticeMap::<String, Max<u8>>::default();
    m.reduce(LatticeMap::<String, Max<u8>>::update("k".into(), Max::new(3)));
    round_trip(&m);
    round_trip(&Max::new(3u8));
    round_trip(&GSet::from([1u8, 2]));
    let mut c = GCounter::default();
    c.reduce(c.increment(id("a"), 3));
    round_trip(&c);
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

//! Derived types replicate end to end through in-memory links.

use std::collections::BTreeSet;

use proptest::prelude::*;
use repred::{
    GCounter, GSet, LwwRegister, Max, Network, Reduce, Replica, Replicated, SourceId, laws,
};

/// Field-wise: each field a stock lattice.
#[derive(Replicated, Default, Clone, Debug, PartialEq)]
struct Profile {
    /// The display name: newest write wins.
    name: LwwRegister<String>,
    tags: GSet<String>,
    high_score: Max<u64>,
    visits: GCounter,
    /// Local only: never replicated.
    #[replicated(skip)]
    cache_hits: u64,
}

/// Custom reduce: the user's own merge over the user's own update type.
#[derive(Replicated, Default, Clone, Debug, PartialEq)]
#[replicated(reduce = merge_seen, update = BTreeSet<u32>, snapshot = seen_snapshot)]
struct Seen {
    ids: BTreeSet<u32>,
}

fn merge_seen(state: &mut Seen, update: BTreeSet<u32>) -> Option<BTreeSet<u32>> {
    let new: BTreeSet<u32> = update.into_iter().filter(|x| state.ids.insert(*x)).collect();
    (!new.is_empty()).then_some(new)
}

fn seen_snapshot(state: &Seen) -> BTreeSet<u32> {
    state.ids.clone()
}

fn id(name: &str) -> SourceId {
    SourceId::new(name).unwrap()
}

fn three<T: Reduce + Default>() -> (Network<T>, [repred::NodeId; 3]) {
    let mut net = Network::new();
    let nodes = ["a", "b", "c"].map(|n| net.add(Replica::new(id(n), T::default())));
    net.link(nodes[0], nodes[1]);
    net.link(nodes[1], nodes[2]);
    (net, nodes)
}

#[test]
fn a_field_wise_struct_converges_across_three_replicas() {
    let (mut net, [a, b, c]) = three::<Profile>();
    net.update(
        a,
        ProfileChange { name: Some(LwwRegister::set("ann".into())), ..Default::default() },
    )
    .unwrap();
    net.update(
        c,
        ProfileChange {
            tags: Some(GSet::add("admin".into())),
            high_score: Some(Max::new(7)),
            ..Default::default()
        },
    )
    .unwrap();
    let visit = net[b].state().visits.increment(net[b].id(), 3);
    net.update(b, ProfileChange { visits: Some(visit), ..Default::default() }).unwrap();
    net.pump();
    for n in [a, b, c] {
        let p = net[n].state();
        assert_eq!(p.name.get().map(String::as_str), Some("ann"));
        assert!(p.tags.contains(&"admin".to_string()));
        assert_eq!(p.high_score.get(), Some(&7));
        assert_eq!(p.visits.value(), 3);
    }
    assert_eq!(net[a].state(), net[c].state());
}

#[test]
fn a_custom_reduce_struct_converges_across_three_replicas() {
    let (mut net, [a, b, c]) = three::<Seen>();
    net.update(a, [1, 2].into()).unwrap();
    net.update(c, [3].into()).unwrap();
    net.pump();
    for n in [a, b, c] {
        assert_eq!(net[n].state().ids, [1, 2, 3].into());
    }
}

#[test]
fn derived_types_pass_the_law_checker() {
    laws::check::<Profile>(
        (prop::option::of(0u8..3), prop::option::of(0u64..5), prop::option::of(0u8..3)).prop_map(
            |(name, score, tag)| ProfileChange {
                name: name.map(|n| LwwRegister::set(format!("n{n}"))),
                high_score: score.map(Max::new),
                tags: tag.map(|t| GSet::add(format!("t{t}"))),
                visits: None,
            },
        ),
    );
    laws::check::<Seen>(prop::collection::btree_set(0u32..8, 0..3));
}

#[test]
fn a_change_to_one_field_travels_without_the_others() {
    let mut r = Replica::new(id("a"), Profile::default());
    r.update(
        1_700_000_000_000,
        ProfileChange {
            tags: Some(GSet::from_iter((0..50).map(|i| format!("tag-{i}")))),
            ..Default::default()
        },
    )
    .unwrap();
    r.update(
        1_700_000_000_000,
        ProfileChange { high_score: Some(Max::new(9)), ..Default::default() },
    )
    .unwrap();
    let history = r.history(&repred::Clock::new());
    let last = &history.last().unwrap().change;
    assert_eq!(last.tags, None);
    let bytes = postcard::to_allocvec(last).unwrap();
    // One byte per absent field, the score and its tag: nothing of the 50 tags.
    assert!(bytes.len() <= 8, "{} bytes: {bytes:?}", bytes.len());
    assert!(r.state().cache_hits == 0);
}

#[test]
fn stamps_reach_every_field_newest_write_wins_and_own_stamps_do_not_travel() {
    let (mut net, [a, b, c]) = three::<Profile>();
    net.update(
        a,
        ProfileChange { name: Some(LwwRegister::set("first".into())), ..Default::default() },
    )
    .unwrap();
    net.advance(1);
    let second = net
        .update(
            c,
            ProfileChange { name: Some(LwwRegister::set("second".into())), ..Default::default() },
        )
        .unwrap()
        .expect("applied");
    net.pump();
    for n in [a, b, c] {
        let name = &net[n].state().name;
        // The derive forwarded `stamp` to the register: unstamped writes
        // would never have applied.
        assert_eq!(name.get().map(String::as_str), Some("second"));
        assert_eq!(name.written_at(), Some(second));
    }
    // ...and `unstamp`: the recorded change leaves out the stamp its
    // envelope already carries.
    let history = net[c].history(&repred::Clock::new());
    let own = history.iter().find(|e| e.source == net[c].id()).expect("c's write");
    assert_eq!(own.change.name.as_ref().and_then(LwwRegister::written_at), None);
}

/// Generic, with a lifetime and a type parameter that only local fields use.
#[derive(Replicated)]
struct Tally<'a, K: Ord, X> {
    seen: GSet<K>,
    top: Max<u64>,
    #[replicated(skip)]
    label: Option<&'a str>,
    #[replicated(skip)]
    scratch: Vec<X>,
}

impl<K: Ord, X> Default for Tally<'_, K, X> {
    fn default() -> Self {
        Tally { seen: GSet::default(), top: Max::default(), label: None, scratch: Vec::new() }
    }
}

#[test]
fn a_generic_derived_struct_converges() {
    let (mut net, [a, b, c]) = three::<Tally<'static, u32, String>>();
    net.update(a, TallyChange { seen: Some(GSet::add(1)), ..Default::default() }).unwrap();
    net.update(c, TallyChange { top: Some(Max::new(4)), ..Default::default() }).unwrap();
    net.pump();
    for n in [a, b, c] {
        let t = net[n].state();
        assert!(t.seen.contains(&1));
        assert_eq!(t.top.get(), Some(&4));
        assert!(t.scratch.is_empty() && t.label.is_none());
    }
}

//! Placement's properties: every node computes the same replicas whatever
//! order it learned the members in; load is even; one join or departure
//! moves about 1/N of the placements.

use std::collections::BTreeMap;

use proptest::prelude::*;
use repred::SourceId;
use repred_place::{ObjectKey, Placement, Scheme};

fn node(i: u64) -> SourceId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&i.to_be_bytes());
    bytes[8..].copy_from_slice(b"member\0\x01");
    SourceId::from_bytes(bytes).expect("a valid id")
}

fn key(i: u64) -> ObjectKey {
    ObjectKey::of(format!("object/{i}").as_bytes())
}

fn cluster(n: u64, scheme: Scheme) -> Placement {
    let mut p = Placement::new(scheme);
    for i in 0..n {
        p.set(node(i), true);
    }
    p
}

/// Replicas per node of `objects` objects.
fn loads(p: &Placement, objects: u64, k: usize) -> BTreeMap<SourceId, u64> {
    let mut load: BTreeMap<SourceId, u64> = p.members().map(|(id, _)| (id, 0)).collect();
    for o in 0..objects {
        for r in p.replicas(key(o), k) {
            *load.entry(r).or_default() += 1;
        }
    }
    load
}

fn max_over_mean(load: &BTreeMap<SourceId, u64>) -> f64 {
    let max = *load.values().max().unwrap() as f64;
    let mean = load.values().sum::<u64>() as f64 / load.len() as f64;
    max / mean
}

/// Placements (object, replica) that differ between two placements.
fn moved(a: &Placement, b: &Placement, objects: u64, k: usize) -> u64 {
    let mut moved = 0;
    for o in 0..objects {
        let before = a.replicas(key(o), k);
        let after = b.replicas(key(o), k);
        moved += after.iter().filter(|r| !before.contains(r)).count() as u64;
    }
    moved
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Nodes that learned the same members (live and absent) in any order
    /// place every object alike, with k distinct replicas, all live.
    #[test]
    fn every_order_places_alike(
        n in 1u64..60,
        down in proptest::collection::vec(any::<bool>(), 60),
        order in any::<u64>(),
        k in 1usize..6,
        rendezvous in any::<bool>(),
        objects in proptest::collection::vec(any::<u64>(), 1..40),
    ) {
        let scheme = if rendezvous { Scheme::Rendezvous } else { Scheme::Neighbours };
        let mut a = Placement::new(scheme);
        let mut b = Placement::new(scheme);
        let mut ids: Vec<u64> = (0..n).collect();
        for i in &ids {
            a.set(node(*i), !down[*i as usize]);
        }
        // Another order, with a detour: learned live first, then absent.
        let len = ids.len();
        ids.rotate_left((order % len as u64) as usize);
        ids.reverse();
        for i in &ids {
            b.set(node(*i), true);
            b.set(node(n + 100), true);
        }
        b.remove(node(n + 100));
        for i in &ids {
            b.set(node(*i), !down[*i as usize]);
        }
        for o in objects {
            let key = ObjectKey(o);
            let pa = a.place(key, k);
            prop_assert_eq!(&pa, &b.place(key, k));
            let live = a.live_count().min(k);
            prop_assert_eq!(pa.replicas.len(), live);
            prop_assert_eq!(pa.owners.len(), (n as usize).min(k));
            let mut distinct = pa.replicas.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), pa.replicas.len());
            prop_assert!(pa.replicas.iter().all(|r| a.is_live(*r)));
            // Owners that are live are replicas; stand-ins cover the rest.
            for o in &pa.owners {
                prop_assert_eq!(a.is_live(*o), pa.replicas.contains(o));
            }
            let absent = pa.owners.iter().filter(|o| !a.is_live(**o)).count();
            prop_assert_eq!(pa.stand_ins().len(), absent.min(pa.replicas.len() - (pa.owners.len() - absent)));
        }
    }
}

/// 100,000 objects of 3 replicas on 1,000 nodes: the busiest node holds at
/// most 1.25 times the mean.
#[test]
fn load_is_even() {
    for scheme in [Scheme::Neighbours, Scheme::Rendezvous] {
        let p = cluster(1_000, scheme);
        let load = loads(&p, 100_000, 3);
        assert_eq!(load.values().sum::<u64>(), 300_000);
        let spread = max_over_mean(&load);
        let min = *load.values().min().unwrap();
        println!("{scheme:?}: max/mean {spread:.3}, min {min}");
        assert!(spread <= 1.25, "{scheme:?}: max/mean {spread}");
        assert!(min >= 200, "{scheme:?}: a node holds only {min}");
    }
}

/// One node joining 1,000, or one leaving for good, moves about 1/N of the
/// placements: the floor (what the newcomer must take, or the leaver held)
/// for rendezvous, at most (2k - 1)/k of it for the neighbour ring. A node
/// declared down moves exactly the floor: each of its objects gains one
/// stand-in and nothing else moves.
#[test]
fn one_join_or_departure_moves_about_one_nth() {
    let (n, objects, k) = (1_000u64, 50_000u64, 3usize);
    for (scheme, bound) in [(Scheme::Neighbours, 2.0), (Scheme::Rendezvous, 1.1)] {
        let before = cluster(n, scheme);
        let mut joined = before.clone();
        joined.set(node(n), true);
        let floor = (objects * k as u64) as f64 / (n + 1) as f64;
        let join = moved(&before, &joined, objects, k) as f64 / floor;

        let mut left = before.clone();
        left.remove(node(7));
        let floor_leave = loads(&before, objects, k)[&node(7)] as f64;
        let leave = moved(&before, &left, objects, k) as f64 / floor_leave;

        let mut down = before.clone();
        down.set(node(7), false);
        let stand_in = moved(&before, &down, objects, k) as f64 / floor_leave;
        println!("{scheme:?}: join {join:.3}, leave {leave:.3}, down {stand_in:.3} of the floor");
        assert!(join <= bound, "{scheme:?}: a join moved {join} times the floor");
        assert!(join >= 0.9, "{scheme:?}: a join moved only {join} times the floor");
        assert!(leave <= bound, "{scheme:?}: a departure moved {leave} times the floor");
        assert!((stand_in - 1.0).abs() < 1e-9, "{scheme:?}: a down node moved {stand_in}");
    }
}

/// Under the neighbour ring a node shares objects with at most 2(k - 1)
/// others (its ring neighbours), whatever N.
#[test]
fn neighbours_share_with_few() {
    let p = cluster(500, Scheme::Neighbours);
    let mut shares: BTreeMap<SourceId, std::collections::BTreeSet<SourceId>> = BTreeMap::new();
    for o in 0..20_000 {
        let r = p.replicas(key(o), 3);
        for a in &r {
            for b in &r {
                if a != b {
                    shares.entry(*a).or_default().insert(*b);
                }
            }
        }
    }
    let most = shares.values().map(|s| s.len()).max().unwrap();
    assert!(most <= 4, "a node shares objects with {most} others");
    for (id, s) in &shares {
        let ring: std::collections::BTreeSet<SourceId> = p.neighbours(*id, 3).into_iter().collect();
        assert!(s.is_subset(&ring), "shares outside its ring neighbours");
    }
}

//! A graceful leave on QUIC (issue 20): a node that holds objects leaves
//! with `Placer::leave`; the others count it absent as soon as it says so
//! in the directory, the next replicas take its objects, and it releases
//! each once covered, so that when it is gone every object it held is on
//! k other nodes already, with every acknowledged write; in a cluster of
//! exactly k nodes it ends once the others cover its copies, keeping them.
//! Eight nodes (or k) on
//! 127.0.0.1, k = 3; every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    Cluster, K, NODES, Set, cluster, create_on_primaries, eventually, live, members_are, name,
    placed_and_converged, shutdown_all,
};
use repred::{GSet, SourceId};
use repred_place::transport::{Placer, PlacerConfig};

const OBJECTS: u64 = 12;

/// Writes `round * 1_000 + object` to every object from node 0 (directly
/// on the objects it holds a replica of, through a replica on the others).
async fn write_all(
    placers: &[Option<Placer<Set>>],
    acked: &mut BTreeMap<String, BTreeSet<u64>>,
    round: u64,
) {
    let writer = placers[0].as_ref().unwrap();
    for object in 0..OBJECTS {
        let value = round * 1_000 + object;
        tokio::time::timeout(
            Duration::from_secs(60),
            writer.update(&name(object), GSet::add(value)),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: no answer within 60 s", name(object)))
        .unwrap_or_else(|e| panic!("{}: {e}", name(object)));
        acked.entry(name(object)).or_default().insert(value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaving_hands_every_object_off_before_it_goes() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let Cluster { mut placers, ids, .. } = cluster(dir.path(), PlacerConfig::default()).await;
    let mut acked: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    create_on_primaries(&placers, OBJECTS);
    write_all(&placers, &mut acked, 1).await;
    eventually("placed on k replicas", Duration::from_secs(60), || {
        placed_and_converged(&placers, &acked)
    })
    .await;
    eprintln!("{:?}: {OBJECTS} objects on their {K} replicas each", started.elapsed());

    // A node that holds objects (not node 0, the writer) leaves.
    let leaver = (1..NODES)
        .find(|&i| !placers[i].as_ref().unwrap().holdings().is_empty())
        .expect("someone besides node 0 holds an object");
    let leaver_id = placers[leaver].as_ref().unwrap().node().id();
    let leaver_port = placers[leaver].as_ref().unwrap().node().addr().port();
    let held: Vec<String> =
        placers[leaver].as_ref().unwrap().holdings().into_iter().map(|(o, _)| o).collect();
    let handed_off = placers[leaver].take().unwrap().leave(Duration::from_secs(60)).await;
    assert!(handed_off, "the leaver handed everything off within 60 s");
    eprintln!("{:?}: node {leaver} left, having held {held:?}", started.elapsed());

    // Its store kept nothing of what it handed off: each object was
    // removed once its other replicas covered it. (The node is shut down;
    // its store's file is let go within a moment.)
    let path = dir.path().join(format!("node-{leaver_port}.redb"));
    let store = eventually("the leaver's store opens", Duration::from_secs(10), || {
        repred_store::Store::open(&path).map_err(|e| e.to_string())
    })
    .await;
    for object in &held {
        let stored = store.load::<Set>(object, repred::Config::default()).unwrap();
        assert!(stored.is_none(), "{object}: still in the leaver's store");
    }
    drop(store);

    // Gone, and each of its objects on k others already, with every write.
    for object in &held {
        let holders: Vec<&Placer<Set>> =
            live(&placers).filter(|p| p.holdings().iter().any(|(o, _)| o == object)).collect();
        assert!(holders.len() >= K, "{object}: on {} others as the leaver goes", holders.len());
        for p in holders {
            let missing: Vec<u64> = p
                .read(object, |s| {
                    acked[object].iter().copied().filter(|v| !s.contains(v)).collect()
                })
                .unwrap_or_default();
            assert!(missing.is_empty(), "{object}: {} lacks {missing:?}", p.node().id());
        }
    }
    let survivors: BTreeSet<SourceId> = ids.iter().copied().filter(|id| *id != leaver_id).collect();
    eventually("the leaver is down for everyone", Duration::from_secs(30), || {
        members_are(&placers, &survivors)
    })
    .await;
    write_all(&placers, &mut acked, 2).await;
    eventually("every object on k live replicas", Duration::from_secs(60), || {
        placed_and_converged(&placers, &acked)
    })
    .await;
    eprintln!("{:?}: every object on k live replicas", started.elapsed());

    shutdown_all(placers).await;
}

/// A node leaving a cluster of exactly k nodes: its objects have k - 1
/// live replicas besides it, so its stored copies can never be covered by
/// k; `leave` hands each off to them and returns once they cover it, the
/// copy kept in its store (and listed), instead of waiting out its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaving_a_cluster_of_k_keeps_its_copies_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = common::free_ports(K);
    let mut nodes = vec![common::start(dir.path(), addrs[0], None).await];
    for addr in &addrs[1..] {
        nodes.push(common::start(dir.path(), *addr, Some(addrs[0])).await);
    }
    let ids: BTreeSet<SourceId> = nodes.iter().map(|n| n.id()).collect();
    let mut placers: Vec<Option<Placer<Set>>> = nodes
        .into_iter()
        .map(|n| Some(Placer::spawn(n, PlacerConfig::default()).expect("a durable node places")))
        .collect();
    eventually("all members see all", Duration::from_secs(30), || members_are(&placers, &ids))
        .await;
    let mut acked: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    create_on_primaries(&placers, 2);
    for object in 0..2 {
        let writer = placers[0].as_ref().unwrap();
        tokio::time::timeout(Duration::from_secs(60), writer.update(&name(object), GSet::add(7)))
            .await
            .expect("an answer within 60 s")
            .expect("written");
        acked.entry(name(object)).or_default().insert(7);
    }
    eventually("placed on all k nodes", Duration::from_secs(60), || {
        placed_and_converged(&placers, &acked)
    })
    .await;

    let leaver = K - 1;
    let port = placers[leaver].as_ref().unwrap().node().addr().port();
    let handed_off = placers[leaver].take().unwrap().leave(Duration::from_secs(30)).await;
    assert!(handed_off, "the leaver ended before its limit, its copies kept");

    // Its store keeps every object, with the write: with k - 1 other
    // nodes, it is one more home of them.
    let path = dir.path().join(format!("node-{port}.redb"));
    let store = eventually("the leaver's store opens", Duration::from_secs(10), || {
        repred_store::Store::open(&path).map_err(|e| e.to_string())
    })
    .await;
    for object in 0..2 {
        let stored = store.load::<Set>(&name(object), repred::Config::default()).unwrap();
        let stored =
            stored.unwrap_or_else(|| panic!("{}: not in the leaver's store", name(object)));
        assert!(stored.state().contains(&7), "{}: the copy lacks the write", name(object));
    }
    drop(store);
    shutdown_all(placers).await;
}

//! A node that holds no replica writes through one (issue 20, point 1),
//! on eight repred-transport nodes over QUIC on 127.0.0.1, k = 3: its copy
//! syncs with the first replica only; that replica is killed (dropped, no
//! shutdown) in the middle of the writes; the writes go on through the
//! next one, each acknowledged, and every acknowledged write ends on the
//! object's k live replicas. Every wait is bounded; what is asserted is
//! where things end up, not how fast.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    Cluster, K, NODES, Set, cluster, eventually, live, members_are, placed_and_converged,
    shutdown_all,
};
use repred::{GSet, SourceId};
use repred_place::transport::PlacerConfig;
use repred_place::{ObjectKey, Placement, RouteConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_replica_writes_through_a_replica_and_fails_over_when_it_is_killed() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // A replica that does not acknowledge within 3 s is failed over.
    let config = PlacerConfig::default().route(RouteConfig::default().ack_timeout_ms(3_000));
    let Cluster { mut placers, ids, .. } = cluster(dir.path(), config).await;

    // The object lives on its primary and the next two; the fourth on its
    // list would stand in for a lost one, so the client is none of them.
    let doc = "doc";
    let mut placement = Placement::default();
    for id in &ids {
        placement.set(*id, true);
    }
    let list = placement.place(ObjectKey::of(doc.as_bytes()), K + 1).replicas;
    let at = |id: SourceId| placers.iter().position(|p| p.as_ref().unwrap().node().id() == id);
    let primary = at(list[0]).unwrap();
    placers[primary].as_ref().unwrap().create(doc).unwrap();
    let mut acked: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    acked.insert(doc.to_string(), BTreeSet::new());
    eventually("placed on k replicas", Duration::from_secs(60), || {
        placed_and_converged(&placers, &acked)
    })
    .await;
    let client = (0..NODES)
        .find(|&i| !list.contains(&placers[i].as_ref().unwrap().node().id()))
        .expect("8 nodes, 4 on the list");
    let handle = placers[client].as_ref().unwrap().open(doc).unwrap();
    assert!(!handle.is_held(), "the client holds no replica");
    assert_eq!(handle.via(), Some(list[0]), "it goes through the first replica");
    let copy = placers[client].as_ref().unwrap().node().replicated();
    assert!(copy.contains(&doc.to_string()), "it has a copy: {copy:?}");

    let write = |value: u64| {
        let handle = &handle;
        async move {
            tokio::time::timeout(Duration::from_secs(60), handle.update(GSet::add(value)))
                .await
                .unwrap_or_else(|_| panic!("write {value}: no answer within 60 s"))
                .unwrap_or_else(|e| panic!("write {value}: {e}"))
        }
    };
    for value in 0..10 {
        write(value).await;
        acked.get_mut(doc).unwrap().insert(value);
        // Read-your-writes on the handle.
        assert!(handle.read(|s| s.contains(&value)).unwrap());
    }
    eprintln!("{:?}: 10 writes acknowledged through {}", started.elapsed(), list[0]);

    // Kill the replica in use: no shutdown, no goodbye.
    let victim = at(list[0]).unwrap();
    drop(placers[victim].take());
    for value in 10..20 {
        write(value).await;
        acked.get_mut(doc).unwrap().insert(value);
        assert!(handle.read(|s| s.contains(&value)).unwrap());
    }
    let via = handle.via().expect("a live replica");
    assert_ne!(via, list[0], "it moved off the killed replica");
    assert!(list[1..].contains(&via), "to one of the others on the list: {via}");
    eprintln!("{:?}: 10 more acknowledged, now through {via}", started.elapsed());

    // Every acknowledged write ends on the k live replicas (the two left
    // and the stand-in), and the client's copy reads what they hold.
    let survivors: BTreeSet<SourceId> = ids.iter().copied().filter(|id| *id != list[0]).collect();
    eventually("the victim is down for everyone", Duration::from_secs(30), || {
        members_are(&placers, &survivors)
    })
    .await;
    eventually("every acknowledged write on k live replicas", Duration::from_secs(60), || {
        placed_and_converged(&placers, &acked)
    })
    .await;
    let replica = live(&placers).find(|p| p.node().id() == via).unwrap();
    let theirs = replica.read(doc, Set::clone).unwrap();
    eventually("the copy reads what the replicas hold", Duration::from_secs(30), || {
        let mine = handle.read(Set::clone).unwrap();
        if mine == theirs { Ok(()) } else { Err(format!("{mine:?} vs {theirs:?}")) }
    })
    .await;
    let node = placers[client].as_ref().unwrap().node();
    assert!(
        node.replicated().contains(&doc.to_string()),
        "the client's copy is still there, not a holding"
    );
    assert!(placers[client].as_ref().unwrap().holdings().is_empty(), "nor listed as one");
    eprintln!("{:?}: all on k replicas", started.elapsed());

    shutdown_all(placers).await;
}

//! Placement on real nodes (issue 20): eight repred-transport nodes over
//! QUIC on 127.0.0.1, k = 3, a keeper per node fed by its SWIM membership
//! (`repred_place::transport::Placer`). One node is killed (dropped, no
//! shutdown) while writes go on, and restarted on its store: every object
//! ends on exactly its k live replicas, converged, with every acknowledged
//! write. Every wait is bounded; what is asserted is where things end up,
//! not how fast.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    Cluster, K, NODES, OBJECTS, Set, cluster, create_on_primaries, eventually, live, members_are,
    name, placed_and_converged, shutdown_all, start,
};
use repred::{GSet, SourceId};
use repred_place::Role;
use repred_place::transport::{PlaceError, Placer, PlacerConfig};

/// Writes `value` to `object` on the first running replica (as node 0
/// places it); `Ok(true)` once acknowledged, `Ok(false)` if no replica
/// took it this time (objects moving), an error for anything else.
async fn write(
    placers: &[Option<Placer<Set>>],
    object: &str,
    value: u64,
) -> Result<bool, PlaceError> {
    let Some(judge) = live(placers).next() else { return Ok(false) };
    for replica in judge.replicas(object) {
        let Some(p) = live(placers).find(|p| p.node().id() == replica) else { continue };
        match p.update(object, GSet::add(value)).await {
            Ok(_) => return Ok(true),
            Err(PlaceError::NotAcknowledged { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Writes `value` to every object, each retried every 100 ms for up to
/// 20 s while objects move; records what was acknowledged.
async fn write_all(
    placers: &[Option<Placer<Set>>],
    acked: &mut BTreeMap<String, BTreeSet<u64>>,
    round: u64,
) {
    for object in 0..OBJECTS {
        let value = round * 1_000 + object;
        let mut written = false;
        for _ in 0..200 {
            written =
                write(placers, &name(object), value).await.expect("a write fails only by moving");
            if written {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(written, "{}: no replica took a write within 20 s", name(object));
        acked.entry(name(object)).or_default().insert(value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_keep_every_object_on_k_replicas_through_a_kill_and_a_restart() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let Cluster { mut placers, ids, seed } = cluster(dir.path(), PlacerConfig::default()).await;

    // Each object is created on its primary (as node 0 places it), then
    // written once.
    let mut acked: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    create_on_primaries(&placers, OBJECTS);
    write_all(&placers, &mut acked, 1).await;
    eventually("placed on k replicas", Duration::from_secs(60), || {
        placed_and_converged(&placers, &acked)
    })
    .await;
    eprintln!("{:?}: {OBJECTS} objects on their {K} replicas each", started.elapsed());

    // Kill a node that holds objects (not the seed): no shutdown, no
    // goodbye; its peers find out by SWIM.
    let victim = (1..NODES)
        .find(|&i| !placers[i].as_ref().unwrap().holdings().is_empty())
        .expect("with 24 objects on 8 nodes, someone besides node 0 holds one");
    let victim_id = placers[victim].as_ref().unwrap().node().id();
    let victim_addr = placers[victim].as_ref().unwrap().node().addr();
    let owned: Vec<String> =
        placers[victim].as_ref().unwrap().holdings().into_iter().map(|(o, _)| o).collect();
    drop(placers[victim].take());
    eprintln!("{:?}: killed node {victim}, which held {owned:?}", started.elapsed());

    // Writes go on while it is down (to the replicas still up, then to
    // the stand-ins).
    write_all(&placers, &mut acked, 2).await;
    let survivors: BTreeSet<SourceId> = ids.iter().copied().filter(|id| *id != victim_id).collect();
    eventually("the victim is down for everyone", Duration::from_secs(30), || {
        members_are(&placers, &survivors)
    })
    .await;
    write_all(&placers, &mut acked, 3).await;
    eventually(
        "k live replicas again, the victim's objects on stand-ins",
        Duration::from_secs(60),
        || placed_and_converged(&placers, &acked),
    )
    .await;
    eprintln!("{:?}: every object on k live replicas again", started.elapsed());
    let hints: Vec<(String, SourceId)> = live(&placers)
        .flat_map(|p| p.holdings())
        .filter_map(|(o, role)| match role {
            Some(Role::StandIn { owner }) => Some((o, owner)),
            _ => None,
        })
        .collect();
    for object in &owned {
        assert!(
            hints.iter().any(|(o, owner)| o == object && *owner == victim_id),
            "{object}, held by the victim, has a stand-in for it: {hints:?}"
        );
    }

    // The victim comes back on its store: it takes up what it held, the
    // stand-ins hand it back and drop their copies.
    let node = start(dir.path(), victim_addr, Some(seed)).await;
    assert_eq!(node.id(), victim_id, "the same node (its certificate is in the data dir)");
    placers[victim] = Some(Placer::spawn(node, PlacerConfig::default()).unwrap());
    eventually("all members see all again", Duration::from_secs(30), || {
        members_are(&placers, &ids)
    })
    .await;
    write_all(&placers, &mut acked, 4).await;
    eventually("every object back on its owners", Duration::from_secs(90), || {
        placed_and_converged(&placers, &acked)
    })
    .await;
    let left: Vec<(String, Option<Role>)> = live(&placers)
        .flat_map(|p| p.holdings())
        .filter(|(_, role)| *role != Some(Role::Owner))
        .collect();
    assert!(left.is_empty(), "only owners hold objects once all are up: {left:?}");
    let back: BTreeSet<String> =
        placers[victim].as_ref().unwrap().holdings().into_iter().map(|(o, _)| o).collect();
    for object in &owned {
        assert!(back.contains(object), "{object} is back on the victim: {back:?}");
    }
    eprintln!("{:?}: restarted; every object back on its owners", started.elapsed());
    let drops: u64 = live(&placers).map(|p| p.stats().drops).sum();
    assert!(drops >= owned.len() as u64, "the stand-ins dropped their copies: {drops}");

    shutdown_all(placers).await;
}

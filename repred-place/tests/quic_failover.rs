//! A node that writes through a replica moves to the next one as soon as
//! its stream with the one in use ends (issue 20, `Route::handle_failed`),
//! not when SWIM declares that replica down nor when an acknowledgement is
//! late: eight repred-transport nodes over QUIC on 127.0.0.1, k = 3, with
//! both of those made far longer than the test may take (suspicion 300 s,
//! acknowledgement timeout 600 s). The replica in use is killed (dropped,
//! no shutdown); the next write is acknowledged through the next replica
//! on the list while the killed one is still a live member for everyone.
//! Then the access is closed: the client's store keeps its copy while the
//! killed replica, still listed live, has not covered it (the only other
//! home of the writes made after the kill is one replica), through a crash
//! and restart of the client; a write put in the client's stored copy
//! while it is down (as a resumed copy's, not yet listed) keeps the copy
//! once the killed replica is back and covers the clock listed; opened,
//! written and closed again, the copy is deleted once every replica
//! covers it. Every wait is bounded;
//! what is asserted is where things end up, not how fast.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{
    Cluster, K, NODES, builder, cluster_with, eventually, placed_and_converged, shutdown_all,
};
use repred::{GSet, SourceId};
use repred_place::transport::PlacerConfig;
use repred_place::{ObjectKey, Placement, RouteConfig};
use repred_transport::Builder;
use repred_transport::repred_node::MemberState;

/// SWIM takes 300 s to declare a member down: longer than any wait here.
fn slow_detection(dir: &Path) -> Builder {
    builder(dir).down_after(Duration::from_secs(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_fails_over_when_its_stream_ends_before_swim_or_a_timeout_says_so() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let route = RouteConfig::default().ack_timeout_ms(600_000).write_timeout_ms(1_200_000);
    let config = PlacerConfig::default().route(route);
    let Cluster { mut placers, ids, .. } =
        cluster_with(dir.path(), config.clone(), slow_detection).await;

    let doc = "doc";
    let mut placement = Placement::default();
    for id in &ids {
        placement.set(*id, true);
    }
    let list = placement.place(ObjectKey::of(doc.as_bytes()), K + 1).replicas;
    let at = |placers: &[Option<_>], id: SourceId| {
        placers.iter().position(|p: &Option<repred_place::transport::Placer<common::Set>>| {
            p.as_ref().is_some_and(|p| p.node().id() == id)
        })
    };
    placers[at(&placers, list[0]).unwrap()].as_ref().unwrap().create(doc).unwrap();
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
    assert_eq!(handle.via(), Some(list[0]), "it goes through the first replica");

    let write = |value: u64| {
        let handle = &handle;
        async move {
            tokio::time::timeout(Duration::from_secs(60), handle.update(GSet::add(value)))
                .await
                .unwrap_or_else(|_| panic!("write {value}: not acknowledged within 60 s"))
                .unwrap_or_else(|e| panic!("write {value}: {e}"))
        }
    };
    for value in 0..5 {
        write(value).await;
    }
    eprintln!("{:?}: 5 writes acknowledged through {}", started.elapsed(), list[0]);

    // Kill the replica in use: no shutdown, no goodbye.
    let killed = at(&placers, list[0]).unwrap();
    let killed_addr = placers[killed].as_ref().unwrap().node().addr();
    drop(placers[killed].take());
    for value in 5..10 {
        write(value).await;
        let next = placers[at(&placers, list[1]).unwrap()].as_ref().unwrap();
        // Acknowledged: on a replica's clock. The copy streams with the one
        // it goes through alone, so that one has it.
        assert!(next.read(doc, |s| s.contains(&value)).unwrap(), "{} lacks {value}", list[1]);
    }
    assert_eq!(handle.via(), Some(list[1]), "it moved to the next replica on the list");
    // Neither SWIM nor the acknowledgement timeout did it: the killed
    // replica is still a live member for the client, and the timeout is
    // ten minutes.
    let victim = placers[client]
        .as_ref()
        .unwrap()
        .node()
        .membership()
        .into_iter()
        .find(|m| m.id == list[0])
        .expect("the client knows the killed replica");
    assert_ne!(victim.state, MemberState::Down, "not declared down yet");
    assert!(
        placers[client].as_ref().unwrap().replicas(doc).contains(&list[0]),
        "the killed replica is still a replica by the client's member list"
    );
    eprintln!("{:?}: 5 more acknowledged through {}", started.elapsed(), list[1]);

    // Closing the access: every write of the copy is on a replica, but
    // the last five on one replica only, and the killed one, still a live
    // replica for the client, covers none of them: the client's store
    // keeps the copy, round after round, while that holds.
    let on_client = placers[client].as_ref().unwrap();
    let client_port = on_client.node().addr().port();
    assert!(on_client.close(doc).await.unwrap(), "an access was open");
    assert!(!on_client.node().replicated().contains(&doc.to_string()), "the copy is released");
    for _ in 0..10 {
        assert_eq!(on_client.stored(), [doc], "kept while a live replica does not cover it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The client crashes and restarts (through a node that stays up): its
    // new life takes the copy kept up from the directory, which its store
    // kept, and keeps it as the last life did. Its placer starts once its
    // node sees every member, so that it places with the whole list.
    let client_addr = on_client.node().addr();
    let through = placers[at(&placers, list[1]).unwrap()].as_ref().unwrap().node().addr();
    drop(handle);
    drop(placers[client].take());
    // Its stored copy holds a write its directory entry does not: as if
    // the last life had opened the object again (resuming the copy),
    // written to it, and crashed before any replica took the write or a
    // round unlisted the copy. (Made here on its store, while it is down.)
    let path = dir.path().join(format!("node-{client_port}.redb"));
    let store = eventually("the client's store opens", Duration::from_secs(10), || {
        repred_store::Store::open(&path).map_err(|e| e.to_string())
    })
    .await;
    let mut copy = store.load::<common::Set>(doc, repred::Config::default()).unwrap().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    copy.update(u64::try_from(now.as_millis()).unwrap(), GSet::add(99)).unwrap();
    store.save(doc, &copy).unwrap();
    drop((copy, store));
    let node = common::start_with(dir.path(), client_addr, Some(through), slow_detection).await;
    eventually("the restarted client sees every member", Duration::from_secs(30), || {
        let seen: BTreeSet<SourceId> = node.membership().into_iter().map(|m| m.id).collect();
        if seen == ids { Ok(()) } else { Err(format!("{} of {}", seen.len(), ids.len())) }
    })
    .await;
    placers[client] = Some(repred_place::transport::Placer::spawn(node, config.clone()).unwrap());
    let on_client = placers[client].as_ref().unwrap();
    eventually("the restarted client keeps the copy", Duration::from_secs(30), || {
        let stored = on_client.stored();
        if stored == [doc] { Ok(()) } else { Err(format!("kept: {stored:?}")) }
    })
    .await;
    for _ in 0..10 {
        assert_eq!(on_client.stored(), [doc], "kept while a live replica does not cover it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The killed replica comes back on its store, takes the object up
    // again and syncs it from the other two: now every live replica
    // covers the copy as listed, but not the write only the client's
    // store has; the client keeps the copy (its new life checks the
    // store's clock, not the listed one).
    let node = common::start_with(dir.path(), killed_addr, Some(through), slow_detection).await;
    assert_eq!(node.id(), list[0], "the same node (its certificate is in the data dir)");
    placers[killed] = Some(repred_place::transport::Placer::spawn(node, config).unwrap());
    eventually("the killed replica back and synced", Duration::from_secs(60), || {
        placed_and_converged(&placers, &acked)
    })
    .await;
    for _ in 0..30 {
        let stored = placers[client].as_ref().unwrap().stored();
        assert_eq!(stored, [doc], "deleted with a write no replica has");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Opened again, the copy resumes and syncs that write to a replica;
    // closed, it is deleted once all replicas cover it.
    let on_client = placers[client].as_ref().unwrap();
    let handle = eventually("the client opens the object", Duration::from_secs(10), || {
        on_client.open(doc).map_err(|e| e.to_string())
    })
    .await;
    assert!(handle.read(|s| s.contains(&99)).unwrap(), "the resumed copy has the write");
    tokio::time::timeout(Duration::from_secs(60), handle.update(GSet::add(100)))
        .await
        .expect("write 100: acknowledged within 60 s")
        .expect("write 100");
    acked.get_mut(doc).unwrap().extend([99, 100]);
    eventually("every replica has the client's writes", Duration::from_secs(60), || {
        placed_and_converged(&placers, &acked)
    })
    .await;
    drop(handle);
    assert!(on_client.close(doc).await.unwrap(), "an access was open");
    eventually("the client's stored copy is deleted", Duration::from_secs(60), || {
        let stored = on_client.stored();
        if stored.is_empty() { Ok(()) } else { Err(format!("still kept: {stored:?}")) }
    })
    .await;
    eprintln!("{:?}: the closed copy deleted once all replicas covered it", started.elapsed());

    shutdown_all(placers).await;
    let path = dir.path().join(format!("node-{client_port}.redb"));
    let store = eventually("the client's store opens", Duration::from_secs(10), || {
        repred_store::Store::open(&path).map_err(|e| e.to_string())
    })
    .await;
    let stored = store.load::<common::Set>(doc, repred::Config::default()).unwrap();
    assert!(stored.is_none(), "the closed copy is still in the client's store");
}

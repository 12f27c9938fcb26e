//! A durable node's store task over its lifetime: its first update is
//! never lost to a wake-up race, and a full disk fails updates without
//! leaking them to peers, then heals by itself once space is back.

mod common;
#[path = "../../repred-store/tests/support/full_disk.rs"]
mod full_disk;

use std::time::Duration;

use common::{Counters, eventually, fast, spawn};
use full_disk::Disk;
use repred::Config;
use repred_store::{Store, StoreError};
use repred_transport::Error;

/// The store task used to subscribe to requests only when it first ran,
/// after `spawn` returned: on a current-thread runtime an update made
/// right away came first and was never seen, so it waited forever. The
/// bound turns such a hang into a failure; it is not a speed requirement.
#[tokio::test(flavor = "current_thread")]
async fn the_first_update_of_a_new_durable_node_returns_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20u64 {
        let node = fast(dir.path()).durable(true).spawn().await.expect("node starts");
        let counters = node.replicate("counters", Counters::default()).unwrap();
        let update = counters.update(Counters::set("k", round + 1));
        let done = tokio::time::timeout(Duration::from_secs(10), update).await;
        let stamp =
            done.unwrap_or_else(|_| panic!("round {round}: the first update never returned"));
        assert!(stamp.unwrap().is_some(), "round {round}");
        node.shutdown().await;
    }
}

fn full_keys(c: &Counters) -> usize {
    c.0.keys().filter(|k| k.starts_with("full")).count()
}

/// The disk fills up under a durable node: its updates fail with
/// `Error::Storage` while they stay readable locally, and its peer gets
/// none of them. Once space is back the store task's own retry (no new
/// update) commits them, and only then does the peer get them; the store
/// ends up with every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_updates_keeps_them_from_peers_and_heals_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let b = spawn(dir.path(), &[]).await;
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    let disk = Disk::default();
    let a = fast(dir.path())
        .durable(true)
        .store_backend(disk.backend())
        .bootstrap([b.addr()])
        .spawn()
        .await
        .expect("node starts");
    let port = a.addr().port();
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    on_a.update(Counters::set("before", 1)).await.unwrap();
    eventually("b has the update made before the disk filled", Duration::from_secs(10), || {
        let has = on_b.read(|c| c.0.contains_key("before"));
        (has, on_b.read(|c| c.0.clone()))
    })
    .await;

    disk.set_full(true);
    for i in 0..5u64 {
        match on_a.update(Counters::set(&format!("full{i}"), i + 1)).await {
            Err(Error::Storage(why)) => {
                assert!(why.contains("free space"), "says what to do: {why}");
                assert!(why.contains("retrying"), "says it is not given up: {why}");
            }
            other => panic!("update {i} on a full disk: expected Error::Storage, got {other:?}"),
        }
    }
    assert_eq!(on_a.read(full_keys), 5, "the node still serves what it holds");
    // Time enough for gossip to deliver them, were they released.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(on_b.read(full_keys), 0, "nothing unsaved reached the peer");
    let refused = disk.refused();
    eventually("the store task keeps retrying on its own", Duration::from_secs(10), || {
        (disk.refused() > refused, disk.refused())
    })
    .await;

    disk.set_full(false);
    eventually("the retry commits them and b gets them", Duration::from_secs(15), || {
        let n = on_b.read(full_keys);
        (n == 5, n)
    })
    .await;
    on_a.update(Counters::set("after", 1)).await.expect("writes work again");
    a.shutdown().await;
    drop(on_a);

    // The node's aborted tasks let go of the file a moment later.
    let path = dir.path().join(format!("node-{port}.redb"));
    let mut opened = Store::open(&path);
    for _ in 0..100 {
        let Err(StoreError::InUse(_)) = opened else { break };
        tokio::time::sleep(Duration::from_millis(50)).await;
        opened = Store::open(&path);
    }
    let store = opened.expect("the stopped node released its store");
    let back = store.load::<Counters>("counters", Config::default()).unwrap().unwrap();
    assert_eq!(back.state().0.len(), 7, "before, the five, after: {:?}", back.state());
    b.shutdown().await;
}

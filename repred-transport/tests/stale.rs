//! A durable node away for longer than its peers' collection grace comes
//! back holding a key they deleted and forgot: it is stale, no peer syncs
//! with it and it resurrects nothing; once it rejoins (by hand, or by
//! itself with `Handle::rejoin_when_stale`) a stream of the object comes
//! again on the same connections and brings it up by snapshot.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, fast};
use repred::LwwMap;
use repred_transport::{Handle, Lagged, Node, StreamExt};

type Map = LwwMap<String, u32>;

/// How long any one step may take on a loaded machine.
const LIMIT: Duration = Duration::from_secs(60);

/// A durable node collecting every 200 ms, forgetting a member 1 s after
/// it is declared down. 5 s to refute a suspicion and no rotation: a
/// member declared down by mistake on a loaded machine would itself be
/// left behind a floor, which is not what this tests.
async fn node(dir: &std::path::Path, listen: SocketAddr, bootstrap: &[SocketAddr]) -> Node {
    // A restarted node's port may take a moment to be released.
    let mut last = None;
    for _ in 0..50 {
        let built = fast(dir)
            .durable(true)
            .down_after(Duration::from_secs(5))
            .rotate_every(Duration::from_secs(3_600))
            .collect_every(Duration::from_millis(200))
            .collect_grace(Duration::from_secs(1))
            .listen(listen)
            .bootstrap(bootstrap.iter().copied());
        match built.spawn().await {
            Ok(node) => return node,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the node did not start: {last:?}");
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The live entries, sorted.
fn live(map: &Handle<Map>) -> Vec<(String, u32)> {
    let mut entries: Vec<(String, u32)> =
        map.read(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect());
    entries.sort();
    entries
}

/// Waits until every map holds the same live entries under the same clock.
async fn agree(maps: &[&Handle<Map>], what: &str) -> Vec<(String, u32)> {
    eventually(what, LIMIT, || {
        let all: Vec<Vec<(String, u32)>> = maps.iter().map(|m| live(m)).collect();
        let clocks: Vec<repred::Clock> = maps.iter().map(|m| m.clock()).collect();
        let same = clocks.iter().all(|c| *c == clocks[0]) && all.iter().all(|l| *l == all[0]);
        (same, (all, clocks))
    })
    .await
    .0
    .swap_remove(0)
}

fn has(map: &Handle<Map>, key: &str) -> bool {
    map.read(|m| m.get(key).is_some())
}

/// b writes, leaves; a deletes a key b holds, a and c collect it once b
/// is past the grace period; b comes back from its store. With `by_itself`
/// b rejoins by itself, else by hand once it is told it is stale.
async fn away_past_the_grace_then_rejoin(by_itself: bool) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let a = node(dir.path(), any_port(), &[]).await;
    let b = node(dir.path(), any_port(), &[a.addr()]).await;
    let c = node(dir.path(), any_port(), &[a.addr()]).await;
    eventually("a full mesh", LIMIT, || {
        let counts = [a.connected().len(), b.connected().len(), c.connected().len()];
        (counts.iter().all(|&n| n == 2), counts)
    })
    .await;
    let on_a = a.replicate("map", Map::default()).expect("replicates");
    let on_b = b.replicate("map", Map::default()).expect("replicates");
    let on_c = c.replicate("map", Map::default()).expect("replicates");
    on_a.update(LwwMap::set("gone".to_string(), 1)).await.expect("set");
    let mine = on_b.update(LwwMap::set("b-before".to_string(), 2)).await.expect("set");
    let mine = mine.expect("a new write");
    agree(&[&on_a, &on_b, &on_c], "b holds gone").await;
    let b_addr = b.addr();
    drop(on_b);
    b.shutdown().await;

    on_a.update(LwwMap::delete("gone".to_string())).await.expect("delete");
    agree(&[&on_a, &on_c], "c has the delete").await;
    // Each shows it passed the delete by writing after it.
    on_a.update(LwwMap::set("after-a".to_string(), 3)).await.expect("set");
    on_c.update(LwwMap::set("after-c".to_string(), 4)).await.expect("set");
    agree(&[&on_a, &on_c], "a and c have every write").await;
    eventually("a and c forget the delete, b being away past the grace", LIMIT, || {
        let collected = [on_a.stats().collected, on_c.stats().collected];
        let blocked = (on_a.collection_blocked(), on_c.collection_blocked());
        (collected.iter().all(|&n| n > 0), (collected, blocked))
    })
    .await;
    let floor = on_a.floor();
    assert!(floor > mine.ts, "a's floor is past b's write");

    // b comes back from its store, holding gone.
    let b = node(dir.path(), b_addr, &[a.addr()]).await;
    let on_b = b.replicate("map", Map::default()).expect("replicates");
    assert!(has(&on_b, "gone"), "b's store holds gone");
    let mut changes = on_b.changes();
    if by_itself {
        on_b.rejoin_when_stale(Map::default);
    } else {
        eventually("b is told it is stale", LIMIT, || {
            (on_b.stale_floor().is_some(), (on_b.stale_floor(), on_b.refusals()))
        })
        .await;
        // Stale, it syncs with nobody: nothing of it spreads, nothing
        // reaches it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(has(&on_b, "gone"), "b took nothing");
        assert!(!has(&on_a, "gone") && !has(&on_c, "gone"), "gone stays gone");
        let lost = on_b.rejoin(Map::default());
        // Dropped, to come back from the peers: listed if b's store held
        // it in its log, not if its first save (a whole snapshot) did.
        assert!(lost.is_empty() || lost == vec![mine], "{lost:?}");
        // Not that it holds nothing: its streams come again at once, and
        // may have brought it up already.
        assert!(!has(&on_b, "gone"), "b starts over");
    }

    let all = agree(&[&on_a, &on_b, &on_c], "b is brought up again").await;
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["after-a", "after-c", "b-before"], "gone stays gone, b's write came back");
    assert_eq!(on_b.stale_floor(), None, "{:?}", on_b.refusals());
    let first = tokio::time::timeout(LIMIT, changes.next()).await.expect("a change in time");
    assert!(matches!(first, Some(Err(Lagged(_)))), "readers are told to read again: {first:?}");
    // And it replicates again both ways.
    on_b.update(LwwMap::set("b-after".to_string(), 5)).await.expect("set");
    agree(&[&on_a, &on_b, &on_c], "b's new write spreads").await;
    assert!(has(&on_a, "b-after"));
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_past_the_grace_is_stale_until_it_rejoins() {
    away_past_the_grace_then_rejoin(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_told_to_rejoin_when_stale_does_so_by_itself() {
    away_past_the_grace_then_rejoin(true).await;
}

//! Tombstone collection run by the node (`Builder::collect_every`, issue
//! 16): three nodes over QUIC insert and delete distinct keys, agree, and
//! then forget every delete by themselves, still agreeing; and a member
//! whose clock a node cannot see (it does not replicate the object) holds
//! the collection back until it does; so does streaming the object with
//! chosen peers only.

mod common;

use std::time::Duration;

use common::{eventually, fast};
use repred::LwwMap;
use repred_transport::{CollectionBlocked, Handle, Node, Peers};

type Map = LwwMap<String, u32>;

/// How long any one step may take on a loaded machine.
const LIMIT: Duration = Duration::from_secs(60);

/// Three nodes, each collecting every 200 ms, connected to each other. No
/// rotation, and 5 s to refute a suspicion: a connection closed while
/// updates are on their way can leave its peer behind a floor the others
/// collected at, stale (see `collect.rs`), which is not what this tests.
async fn three() -> (tempfile::TempDir, [Node; 3]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let start = |bootstrap: Vec<std::net::SocketAddr>| {
        fast(dir.path())
            .rotate_every(Duration::from_secs(3_600))
            .down_after(Duration::from_secs(5))
            .collect_every(Duration::from_millis(200))
            .bootstrap(bootstrap)
            .spawn()
    };
    let a = start(vec![]).await.expect("starts");
    let b = start(vec![a.addr()]).await.expect("starts");
    let c = start(vec![a.addr()]).await.expect("starts");
    eventually("a full mesh", LIMIT, || {
        let counts = [a.connected().len(), b.connected().len(), c.connected().len()];
        (counts.iter().all(|&n| n == 2), counts)
    })
    .await;
    (dir, [a, b, c])
}

/// Each of `keys` is a tombstone in `map`: deleted, its delete kept.
fn tombstones(map: &Handle<Map>, keys: &[String]) -> usize {
    map.read(|m| keys.iter().filter(|k| m.get(*k).is_none() && m.stamp_of(*k).is_some()).count())
}

/// The live entries, sorted.
fn live(map: &Handle<Map>) -> Vec<(String, u32)> {
    let mut entries: Vec<(String, u32)> =
        map.read(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect());
    entries.sort();
    entries
}

/// Waits until every map has seen the same writes (equal clocks), holds
/// the same live entries and none of `keys`; returns the live entries.
async fn agree(maps: &[Handle<Map>], keys: &[String], what: &str) -> Vec<(String, u32)> {
    eventually(what, LIMIT, || {
        let all: Vec<Vec<(String, u32)>> = maps.iter().map(live).collect();
        let clocks: Vec<repred::Clock> = maps.iter().map(Handle::clock).collect();
        let deleted = maps.iter().all(|m| m.read(|m| keys.iter().all(|k| m.get(k).is_none())));
        let same = clocks.iter().all(|c| *c == clocks[0]) && all.iter().all(|l| *l == all[0]);
        let stats: Vec<repred::Stats> = maps.iter().map(Handle::stats).collect();
        (deleted && same, (all, clocks, stats))
    })
    .await
    .0
    .swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_forget_their_deletes_by_themselves_and_still_agree() {
    let (_dir, nodes) = three().await;
    let maps: Vec<Handle<Map>> =
        nodes.iter().map(|n| n.replicate("map", Map::default()).expect("replicates")).collect();
    let mut deleted = Vec::new();
    for (i, map) in maps.iter().enumerate() {
        for k in 0..20 {
            let key = format!("{i}-{k}");
            map.update(LwwMap::set(key.clone(), k)).await.expect("set");
            deleted.push(key);
        }
        map.update(LwwMap::set(format!("{i}-kept"), 1)).await.expect("set");
    }
    for (i, map) in maps.iter().enumerate() {
        for k in 0..20 {
            map.update(LwwMap::delete(format!("{i}-{k}"))).await.expect("delete");
        }
    }
    let before = agree(&maps, &deleted, "every node has every delete").await;
    assert_eq!(before.len(), 3, "the kept keys: {before:?}");
    // A writer shows it has passed the deletes by writing after them: an
    // idle one shows nothing new, and holds the point where it last did.
    for (i, map) in maps.iter().enumerate() {
        map.update(LwwMap::set(format!("{i}-after"), 1)).await.expect("set");
    }
    let expected = agree(&maps, &deleted, "every node has every write after the deletes").await;

    let left = eventually("every node collected every delete", LIMIT, || {
        let left: Vec<usize> = maps.iter().map(|m| tombstones(m, &deleted)).collect();
        (left.iter().all(|&n| n == 0), left)
    })
    .await;
    assert_eq!(left, [0, 0, 0]);
    for (node, map) in nodes.iter().zip(&maps) {
        assert!(map.collections() >= 1, "{node:?} collected");
        assert!(map.stats().collected >= 1, "{node:?} counted what it dropped");
        assert!(map.floor() > repred::Timestamp::ZERO, "{node:?} raised its floor");
        assert_eq!(live(map), expected, "{node:?} still agrees");
    }
    // Still replicating after the collection, both ways.
    maps[1].update(LwwMap::set("late".to_string(), 7)).await.expect("set");
    maps[2].update(LwwMap::delete("0-kept".to_string())).await.expect("delete");
    eventually("the late writes reach everyone", LIMIT, || {
        let seen: Vec<(Option<u32>, Option<u32>)> = maps
            .iter()
            .map(|m| m.read(|m| (m.get("late").copied(), m.get("0-kept").copied())))
            .collect();
        (seen.iter().all(|&s| s == (Some(7), None)), seen)
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_clock_a_node_cannot_see_holds_its_collection_back() {
    let (_dir, [a, b, c]) = three().await;
    // c is a member, and the object admits every peer, but c does not
    // replicate it: a and b have no clock of c's.
    let on_a = a.replicate("map", Map::default()).expect("replicates");
    let on_b = b.replicate("map", Map::default()).expect("replicates");
    let deleted = vec!["gone".to_string()];
    on_a.update(LwwMap::set("gone".to_string(), 1)).await.expect("set");
    on_a.update(LwwMap::delete("gone".to_string())).await.expect("delete");
    agree(&[on_a.clone(), on_b.clone()], &deleted, "b has the delete").await;
    on_b.update(LwwMap::set("after".to_string(), 1)).await.expect("set");
    on_a.update(LwwMap::set("after-a".to_string(), 1)).await.expect("set");
    agree(&[on_a.clone(), on_b.clone()], &deleted, "both have the writes after it").await;

    for map in [&on_a, &on_b] {
        eventually("the collection is held back by c", LIMIT, || {
            (map.collection_blocked_by() == Some(c.id()), map.collection_blocked_by())
        })
        .await;
    }
    // Several more periods: still nothing collected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for map in [&on_a, &on_b] {
        assert_eq!(map.collection_blocked_by(), Some(c.id()));
        assert_eq!((map.collections(), map.stats().collected), (0, 0));
        assert_eq!(tombstones(map, &deleted), 1, "the delete is kept");
    }

    // Once c replicates it and shows it passed the delete, they collect.
    let on_c = c.replicate("map", Map::default()).expect("replicates");
    let maps = [on_a.clone(), on_b.clone(), on_c.clone()];
    agree(&maps, &deleted, "c caught up").await;
    on_c.update(LwwMap::set("after-c".to_string(), 1)).await.expect("set");
    eventually("a and b collected", LIMIT, || {
        let left: Vec<usize> = [&on_a, &on_b].iter().map(|m| tombstones(m, &deleted)).collect();
        (left == [0, 0], (left, on_a.collection_blocked_by(), on_b.collection_blocked_by()))
    })
    .await;
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// An object streamed with chosen peers only (`Peers::Only`) is not
/// collected: the members it does not stream with still write, and their
/// writes reach it through the peers it does, after those showed newer
/// timestamps; no clock it sees bounds them. Before, a counted only the
/// writers its `Peers` admitted (b), and collected past what c could
/// still send through b. Streamed with every peer again, it collects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_streamed_with_chosen_peers_is_not_collected() {
    let (_dir, [a, b, c]) = three().await;
    let on_a = a.replicate_with("map", Map::default(), Peers::only([b.id()])).expect("replicates");
    let on_b = b.replicate("map", Map::default()).expect("replicates");
    let on_c = c.replicate("map", Map::default()).expect("replicates");
    let maps = [on_a.clone(), on_b.clone(), on_c.clone()];
    let deleted = vec!["gone".to_string()];
    on_a.update(LwwMap::set("gone".to_string(), 1)).await.expect("set");
    on_a.update(LwwMap::delete("gone".to_string())).await.expect("delete");
    agree(&maps, &deleted, "c has the delete, through b").await;
    for (i, map) in maps.iter().enumerate() {
        map.update(LwwMap::set(format!("after-{i}"), 1)).await.expect("set");
    }
    agree(&maps, &deleted, "every write after the delete is everywhere").await;

    eventually("a says why it does not collect", LIMIT, || {
        (
            on_a.collection_blocked() == Some(CollectionBlocked::ChosenPeers),
            on_a.collection_blocked(),
        )
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(on_a.collection_blocked(), Some(CollectionBlocked::ChosenPeers));
    assert_eq!((on_a.collections(), on_a.stats().collected), (0, 0));
    assert_eq!(tombstones(&on_a, &deleted), 1, "the delete is kept");

    assert!(a.set_peers("map", Peers::All));
    on_c.update(LwwMap::set("later".to_string(), 1)).await.expect("set");
    on_b.update(LwwMap::set("later-b".to_string(), 1)).await.expect("set");
    eventually("a collects once it streams with every peer", LIMIT, || {
        (tombstones(&on_a, &deleted) == 0, (on_a.collection_blocked(), on_a.stats()))
    })
    .await;
    agree(&maps, &deleted, "and they still agree").await;
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// Members that never write still let the deletes go: each shows it
/// passed the changes it took (`Replica::show_progress`, once a period),
/// so a, b and c all forget a's deletes though only a wrote. Before, an
/// idle member held the point where it last wrote, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_go_though_only_one_member_writes() {
    let (_dir, nodes) = three().await;
    let maps: Vec<Handle<Map>> =
        nodes.iter().map(|n| n.replicate("map", Map::default()).expect("replicates")).collect();
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    for key in &keys {
        maps[0].update(LwwMap::set(key.clone(), 1)).await.expect("set");
        maps[0].update(LwwMap::delete(key.clone())).await.expect("delete");
    }
    maps[0].update(LwwMap::set("kept".to_string(), 1)).await.expect("set");
    agree(&maps, &keys, "b and c have the deletes").await;
    eventually("every node forgets every delete", LIMIT, || {
        let left: Vec<usize> = maps.iter().map(|m| tombstones(m, &keys)).collect();
        let blocked: Vec<_> = maps.iter().map(Handle::collection_blocked).collect();
        (left.iter().all(|&n| n == 0), (left, blocked))
    })
    .await;
    for map in &maps[1..] {
        assert_eq!(map.stats().local, 0, "b and c wrote nothing");
    }
    let live = agree(&maps, &keys, "and they still agree").await;
    assert_eq!(live, [("kept".to_string(), 1)]);
    for node in nodes {
        node.shutdown().await;
    }
}

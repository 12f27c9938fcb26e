//! Clusters on real QUIC sockets on 127.0.0.1: convergence, membership,
//! failure detection, partitions.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Counters, eventually, ports, spawn};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_converge_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(dir.path(), &[]).await;
    let b = spawn(dir.path(), &[a.addr()]).await;
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    let mut changes_on_b = on_b.changes();

    on_a.update(Counters::set("a", 1)).await.unwrap();
    on_b.update(Counters::set("b", 2)).await.unwrap();
    on_a.update(Counters::set("a", 3)).await.unwrap();

    let want = Counters([("a".to_string(), 3), ("b".to_string(), 2)].into());
    for (name, h) in [("a", &on_a), ("b", &on_b)] {
        eventually(&format!("{name} converges"), Duration::from_secs(10), || {
            let s = h.read(Counters::clone);
            (s == want, s)
        })
        .await;
    }
    // b's change stream shows its own write and a's, each with its source.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(5), changes_on_b.next()).await;
        let applied = next.expect("a change in time").expect("stream open").expect("no lag");
        seen.push((applied.source, applied.change));
    }
    // An object writes under its own source (fresh in every life of a node
    // that keeps it in memory), not the node id.
    assert!(seen.contains(&(on_b.source(), Counters::set("b", 2))), "{seen:?}");
    assert!(seen.iter().any(|(s, c)| *s == on_a.source() && c.contains_key("a")), "{seen:?}");

    let members = eventually("both see both", Duration::from_secs(10), || {
        let m = a.members().borrow().clone();
        (m.len() == 2 && *b.members().borrow() == m, m)
    })
    .await;
    assert_eq!(ports(&members).len(), 2);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_nodes_in_a_chain_converge_on_members_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<repred_transport::Node> = Vec::new();
    for i in 0..6 {
        let boot: Vec<_> =
            nodes.last().map(|n: &repred_transport::Node| n.addr()).into_iter().collect();
        nodes.push(spawn(dir.path(), &boot).await);
        assert_eq!(boot.len(), usize::from(i > 0));
    }
    let handles: Vec<_> =
        nodes.iter().map(|n| n.replicate("counters", Counters::default()).unwrap()).collect();
    let all: Vec<u16> = {
        let mut p: Vec<u16> = nodes.iter().map(|n| n.addr().port()).collect();
        p.sort();
        p
    };
    eventually("every node sees all six", Duration::from_secs(20), || {
        let seen: Vec<Vec<u16>> = nodes.iter().map(|n| ports(&n.members().borrow())).collect();
        (seen.iter().all(|p| *p == all), seen)
    })
    .await;

    handles[0].update(Counters::set("first", 1)).await.unwrap();
    handles[5].update(Counters::set("last", 6)).await.unwrap();
    let want = Counters([("first".to_string(), 1), ("last".to_string(), 6)].into());
    eventually("data written at both ends reaches everyone", Duration::from_secs(15), || {
        let states: Vec<Counters> = handles.iter().map(|h| h.read(Counters::clone)).collect();
        (states.iter().all(|s| *s == want), states)
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_shut_down_or_vanish_are_marked_down() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(dir.path(), &[]).await;
    let b = spawn(dir.path(), &[a.addr()]).await;
    let c = spawn(dir.path(), &[a.addr()]).await;
    let everyone = |n: &repred_transport::Node, want: usize| n.members().borrow().len() == want;
    eventually("three members everywhere", Duration::from_secs(15), || {
        ([&a, &b, &c].iter().all(|n| everyone(n, 3)), ports(&a.members().borrow()))
    })
    .await;

    // A clean shutdown says goodbye: no need to wait for the timeout.
    let c_id = c.id();
    let started = tokio::time::Instant::now();
    c.shutdown().await;
    eventually("c marked down after shutdown", Duration::from_secs(5), || {
        let gone = [&a, &b].iter().all(|n| !n.members().borrow().contains_key(&c_id));
        (gone, ports(&a.members().borrow()))
    })
    .await;
    let after_shutdown = started.elapsed();

    // A node dropped without shutdown just stops beating: the down timeout
    // (1 s here) finds it.
    let b_id = b.id();
    drop(b);
    let started = tokio::time::Instant::now();
    eventually("b marked down after vanishing", Duration::from_secs(6), || {
        (!a.members().borrow().contains_key(&b_id), ports(&a.members().borrow()))
    })
    .await;
    let after_drop = started.elapsed();
    assert!(after_drop >= Duration::from_millis(500), "down before its timeout: {after_drop:?}");
    eprintln!("marked down: after shutdown {after_shutdown:?}, after a silent drop {after_drop:?}");
    assert_eq!(ports(&a.members().borrow()), vec![a.addr().port()]);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_converges_and_resends_only_what_is_missing() {
    const SHARED: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let n0 = spawn(dir.path(), &[]).await;
    let mut nodes = vec![n0];
    for _ in 0..3 {
        let boot = nodes[0].addr();
        nodes.push(spawn(dir.path(), &[boot]).await);
    }
    let h: Vec<_> =
        nodes.iter().map(|n| n.replicate("counters", Counters::default()).unwrap()).collect();
    eventually("four members everywhere", Duration::from_secs(15), || {
        (nodes.iter().all(|n| n.members().borrow().len() == 4), ports(&nodes[0].members().borrow()))
    })
    .await;
    // History everyone shares before the split: a resync that resent it
    // would show.
    for i in 0..SHARED {
        h[0].update(Counters::set(&format!("shared-{i}"), 1)).await.unwrap();
    }
    eventually("shared history everywhere", Duration::from_secs(15), || {
        let lens: Vec<usize> = h.iter().map(|h| h.read(|s| s.0.len())).collect();
        (lens.iter().all(|&l| l == SHARED as usize), lens)
    })
    .await;

    let (left, right) = nodes.split_at(2);
    let addrs = |half: &[repred_transport::Node]| half.iter().map(|n| n.addr()).collect::<Vec<_>>();
    for n in left {
        n.block(addrs(right));
    }
    for n in right {
        n.block(addrs(left));
    }
    eventually("no connection crosses the partition", Duration::from_secs(5), || {
        let crossing: Vec<SocketAddr> = left
            .iter()
            .flat_map(|n| n.connected().into_iter().filter(|a| addrs(right).contains(a)))
            .chain(
                right
                    .iter()
                    .flat_map(|n| n.connected().into_iter().filter(|a| addrs(left).contains(a))),
            )
            .collect();
        (crossing.is_empty(), crossing)
    })
    .await;

    // Concurrent writes on both sides, including one key both write.
    let (l_writes, r_writes) = (5u64, 7u64);
    for i in 0..l_writes {
        h[0].update(Counters::set(&format!("left-{i}"), i + 1)).await.unwrap();
    }
    for i in 0..r_writes {
        h[2].update(Counters::set(&format!("right-{i}"), i + 1)).await.unwrap();
    }
    h[1].update(Counters::set("both", 5)).await.unwrap();
    h[3].update(Counters::set("both", 9)).await.unwrap();
    eventually("each half converges on its own", Duration::from_secs(10), || {
        let s: Vec<Counters> = h.iter().map(|h| h.read(Counters::clone)).collect();
        (
            s[0] == s[1] && s[2] == s[3] && s[0] != s[2],
            s.iter().map(|s| s.0.len()).collect::<Vec<_>>(),
        )
    })
    .await;
    let sent_before: u64 = h.iter().map(|h| h.traffic().updates_sent).sum();
    let snapshots_before: u64 = h.iter().map(|h| h.traffic().snapshots_sent).sum();
    let sessions_before: u64 = h.iter().map(|h| h.traffic().sessions).sum();
    let sessions_open: u64 = h.iter().map(|h| h.traffic().open).sum();

    for n in &nodes {
        n.unblock_all();
    }
    let state = eventually("the healed cluster converges", Duration::from_secs(20), || {
        let s: Vec<Counters> = h.iter().map(|h| h.read(Counters::clone)).collect();
        (s.iter().all(|x| *x == s[0]), s[0].clone())
    })
    .await;
    assert_eq!(state.0.len() as u64, SHARED + l_writes + r_writes + 1);
    assert_eq!(state.0["both"], 9);

    let resent: u64 = h.iter().map(|h| h.traffic().updates_sent).sum::<u64>() - sent_before;
    let snapshots: u64 =
        h.iter().map(|h| h.traffic().snapshots_sent).sum::<u64>() - snapshots_before;
    let sessions: u64 =
        sessions_open + h.iter().map(|h| h.traffic().sessions).sum::<u64>() - sessions_before;
    // Every update a session sends is one its peer lacked: a left node lacks
    // the right half's 8 updates, a right node the left's 6, and none lacks
    // the shared history. So no session sends more than 8, and the 300
    // shared updates never travel again.
    let missing = 2 * (r_writes + 1) + 2 * (l_writes + 1);
    eprintln!(
        "healing moved {resent} updates over {sessions} sessions for {missing} missing deliveries"
    );
    assert!(resent >= missing / 2, "too few updates moved: {resent}");
    assert!(resent <= (r_writes + 1) * sessions, "a session resent what its peer had: {resent}");
    assert!(resent < SHARED, "the shared history was resent: {resent}");
    assert_eq!(snapshots, 0);
    for n in nodes {
        n.shutdown().await;
    }
}

/// A measurement, not a check: `cargo test --release -p repred-transport
/// --test cluster -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run in release"]
async fn bulk_throughput() {
    const N: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(dir.path(), &[]).await;
    let b = spawn(dir.path(), &[a.addr()]).await;
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    eventually("connected", Duration::from_secs(10), || (!a.connected().is_empty(), ())).await;
    let started = std::time::Instant::now();
    for i in 0..N {
        on_a.update(Counters::set(&format!("k{i}"), 1)).await.unwrap();
    }
    let written = started.elapsed();
    eventually("b has everything", Duration::from_secs(120), || {
        let n = on_b.read(|s| s.0.len()) as u64;
        (n == N, n)
    })
    .await;
    let done = started.elapsed();
    let t = on_a.traffic();
    eprintln!(
        "{N} updates: written locally in {written:?}, all at b after {done:?} ({:.0} updates/s), {} bytes in {} updates sent",
        N as f64 / done.as_secs_f64(),
        t.bytes_sent,
        t.updates_sent
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Six nodes that each keep at least 3 connections (the node core's view at
/// N = 6 is 4) and do not rotate them, so the graph holds still; node 0
/// writes `writes` keys. Returns how many updates
/// the object's streams received in all once everyone has every key, the
/// UDP bytes the nodes sent, and the number of distinct connections.
async fn spread(lazy: bool, writes: u64) -> (u64, u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<repred_transport::Node> = Vec::new();
    for _ in 0..6 {
        let boot: Vec<SocketAddr> = nodes.first().map(|n| n.addr()).into_iter().collect();
        // Slow failure detection: on a loaded machine a 1 s idle timeout
        // can drop a connection mid-test, and an edge that was down while
        // the writes went by need not carry them (its ends resync from
        // whoever has more).
        let node = common::fast(dir.path())
            .bootstrap(boot)
            .heartbeat(Duration::from_millis(500))
            .down_after(Duration::from_secs(30))
            .rotate_every(Duration::from_secs(3_600))
            .lazy_relay(lazy)
            .spawn()
            .await
            .unwrap();
        nodes.push(node);
    }
    let handles: Vec<_> =
        nodes.iter().map(|n| n.replicate("counters", Counters::default()).unwrap()).collect();
    eventually("each node has 3 connections", Duration::from_secs(20), || {
        let seen: Vec<usize> = nodes.iter().map(|n| n.connected().len()).collect();
        (seen.iter().all(|c| *c >= 3), seen)
    })
    .await;
    let edges: std::collections::BTreeSet<(SocketAddr, SocketAddr)> = nodes
        .iter()
        .flat_map(|n| n.connected().into_iter().map(|p| (n.addr().min(p), n.addr().max(p))))
        .collect();
    let udp_before: u64 = nodes.iter().map(|n| n.stats().udp_tx_bytes).sum();
    for i in 0..writes {
        handles[0].update(Counters::set(&format!("k{i:04}"), i + 1)).await.unwrap();
    }
    eventually("every node has every key", Duration::from_secs(20), || {
        let held: Vec<usize> = handles.iter().map(|h| h.read(|s| s.0.len())).collect();
        (held.iter().all(|n| *n as u64 == writes), held)
    })
    .await;
    let received = handles.iter().map(|h| h.traffic().updates_received).sum();
    let udp_after: u64 = nodes.iter().map(|n| n.stats().udp_tx_bytes).sum();
    // Only edges up before and after the writes count as carrying them (a
    // connection that came and went in between was not there for all).
    let after: std::collections::BTreeSet<(SocketAddr, SocketAddr)> = nodes
        .iter()
        .flat_map(|n| n.connected().into_iter().map(|p| (n.addr().min(p), n.addr().max(p))))
        .collect();
    let stable = edges.intersection(&after).count();
    for node in nodes {
        node.shutdown().await;
    }
    (received, udp_after - udp_before, stable)
}

/// With lazy relay (the default) an update reaches each node about once;
/// flooding sends it over every connection, at least once per edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_relay_delivers_each_update_about_once_over_quic() {
    let writes = 200;
    let (lazy, lazy_udp, _) = spread(true, writes).await;
    let (flood, flood_udp, edges) = spread(false, writes).await;
    let once = 5 * writes;
    eprintln!("lazy {lazy} ({lazy_udp} B), flood {flood} ({flood_udp} B) over {edges} edges");
    assert!(lazy >= once, "every other node received every update: {lazy} < {once}");
    assert!(lazy <= once * 6 / 5, "lazy relay: {lazy} deliveries for {once} needed");
    // Flooding pushes over every edge that stayed up: beyond the 5 edges
    // of a spanning tree, each other edge carries at least one update (its
    // ends learn that the other has one only from what it sends). How many
    // depends on timing: a side that pushed its newest first spares the
    // other all older ones, so on a loaded machine flooding can come close
    // to once per node; on an idle one it is about once per edge.
    let beyond_tree = (edges as u64).saturating_sub(5);
    assert!(
        flood >= once + beyond_tree,
        "flooding crosses every edge: {flood} deliveries over {edges} edges"
    );
    assert!(lazy_udp > 0 && flood_udp > 0, "Node::stats counts UDP bytes");
}

//! Nodes on real QUIC sockets on 127.0.0.1 converge.

mod common;

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
    assert!(seen.contains(&(b.id(), Counters::set("b", 2))), "{seen:?}");
    assert!(seen.iter().any(|(s, c)| *s == a.id() && c.contains_key("a")), "{seen:?}");

    let members = eventually("both see both", Duration::from_secs(10), || {
        let m = a.members().borrow().clone();
        (m.len() == 2 && *b.members().borrow() == m, m)
    })
    .await;
    assert_eq!(ports(&members).len(), 2);
    a.shutdown().await;
    b.shutdown().await;
}

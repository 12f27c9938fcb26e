//! An object replicated with chosen peers only (`Node::replicate_with`):
//! streamed with those and nobody else, whichever end dials, until the set
//! changes (`Node::set_peers`). What placement's non-replicas use to go
//! through one replica.

mod common;

use std::time::Duration;

use common::{Counters, eventually, fast};
use repred_transport::{Node, Peers};

async fn node(dir: &std::path::Path, bootstrap: &[std::net::SocketAddr]) -> Node {
    fast(dir).fanout(2).bootstrap(bootstrap.iter().copied()).spawn().await.expect("starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_streams_with_its_chosen_peers_only_and_follows_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[]).await;
    let a = node(dir.path(), &[b.addr()]).await;
    let c = node(dir.path(), &[b.addr()]).await;
    eventually("a full mesh", Duration::from_secs(20), || {
        let counts = [a.connected().len(), b.connected().len(), c.connected().len()];
        (counts.iter().all(|&n| n == 2), counts)
    })
    .await;
    let on_b = b.replicate("doc", Counters::default()).unwrap();
    let on_c = c.replicate("doc", Counters::default()).unwrap();
    let on_a = a.replicate_with("doc", Counters::default(), Peers::only([b.id()])).unwrap();
    assert_eq!(on_a.peers(), Peers::only([b.id()]));
    let _ = &on_b;

    // c's write reaches a through b; a's reaches c the same way.
    on_c.update(Counters::set("from-c", 1)).await.unwrap();
    on_a.update(Counters::set("from-a", 1)).await.unwrap();
    eventually("a has c's write", Duration::from_secs(20), || {
        (on_a.read(|s| s.0.contains_key("from-c")), on_a.read(Counters::clone))
    })
    .await;
    eventually("c has a's write", Duration::from_secs(20), || {
        (on_c.read(|s| s.0.contains_key("from-a")), on_c.read(Counters::clone))
    })
    .await;
    // a streams the object with b alone (connections may be rotating:
    // at most one stream).
    let traffic = on_a.traffic();
    assert!(traffic.open <= 1, "a streams with b only: {traffic:?}");

    // Cut a from b: c's next write does not reach a, connected to c as it
    // is, since a streams the object with b alone...
    a.block([b.addr()]);
    eventually("a and c still connected", Duration::from_secs(20), || {
        (a.connected() == vec![c.addr()], a.connected())
    })
    .await;
    on_c.update(Counters::set("while-cut", 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!on_a.read(|s| s.0.contains_key("while-cut")), "a took c's stream");
    // ...until a chooses c: a stream with c opens on the connection up.
    assert!(a.set_peers("doc", Peers::only([c.id()])));
    assert!(!a.set_peers("nothing", Peers::All), "not replicated");
    eventually("a has c's write, straight from c", Duration::from_secs(20), || {
        (on_a.read(|s| s.0.contains_key("while-cut")), on_a.read(Counters::clone))
    })
    .await;
    a.unblock_all();
    b.shutdown().await;
    a.shutdown().await;
    c.shutdown().await;
}

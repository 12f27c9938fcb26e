//! A node lets one object go and takes it up again later (what placement
//! does as objects move): the object resumes from the store and syncs
//! again over the connection it had, whichever end dialed it.

mod common;

use std::time::Duration;

use common::{Counters, eventually, fast};
use repred_transport::{Error, Node};

async fn durable(dir: &std::path::Path, bootstrap: &[std::net::SocketAddr]) -> Node {
    fast(dir).durable(true).bootstrap(bootstrap.iter().copied()).spawn().await.expect("starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_object_comes_back_from_the_store_and_syncs_again_on_either_end() {
    let dir = tempfile::tempdir().unwrap();
    let a = durable(dir.path(), &[]).await;
    let b = durable(dir.path(), &[a.addr()]).await;
    let mut on = [
        a.replicate("doc", Counters::default()).unwrap(),
        b.replicate("doc", Counters::default()).unwrap(),
    ];
    let nodes = [&a, &b];
    on[0].update(Counters::set("first", 1)).await.unwrap();
    eventually("b has a's first write", Duration::from_secs(10), || {
        (on[1].read(|c| c.0.contains_key("first")), on[1].read(Counters::clone))
    })
    .await;

    // Each end in turn lets the object go while the other writes, then
    // takes it up again: one of them dialed the connection, one accepted.
    for (round, (gone, stays)) in [(1, 0), (0, 1)].into_iter().enumerate() {
        let source = on[gone].source();
        let kept = on[gone].read(Counters::clone);
        assert!(nodes[gone].release("doc").await.unwrap(), "round {round}: it was replicated");
        assert!(!nodes[gone].release("doc").await.unwrap(), "round {round}: released already");
        assert!(
            matches!(on[gone].update(Counters::set("late", 1)).await, Err(Error::Shutdown)),
            "round {round}: a released object's handle takes no update"
        );
        let key = format!("while-away-{round}");
        on[stays].update(Counters::set(&key, 2)).await.unwrap();

        let back = nodes[gone].replicate("doc", Counters::default()).unwrap();
        assert_eq!(back.source(), source, "round {round}: the same source id, from the store");
        assert!(back.read(|c| kept.0.iter().all(|(k, v)| c.0.get(k) == Some(v))), "round {round}");
        eventually(&format!("round {round}: it syncs again"), Duration::from_secs(10), || {
            (back.read(|c| c.0.contains_key(&key)), back.read(Counters::clone))
        })
        .await;
        // And the other way: its own write reaches the end that stayed.
        let mine = format!("after-{round}");
        back.update(Counters::set(&mine, 3)).await.unwrap();
        eventually(
            &format!("round {round}: the other end has it"),
            Duration::from_secs(10),
            || (on[stays].read(|c| c.0.contains_key(&mine)), on[stays].read(Counters::clone)),
        )
        .await;
        on[gone] = back;
    }
    assert_eq!(a.stats().violations + b.stats().violations, 0, "no stream counted as a duplicate");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_store_cannot_release() {
    let dir = tempfile::tempdir().unwrap();
    let a = fast(dir.path()).spawn().await.unwrap();
    let _doc = a.replicate("doc", Counters::default()).unwrap();
    assert!(!a.is_durable());
    assert!(matches!(a.release("doc").await, Err(Error::Config(_))));
    assert!(
        matches!(a.replicate("doc", Counters::default()), Err(Error::AlreadyReplicated(_))),
        "still replicated"
    );
    a.shutdown().await;
}

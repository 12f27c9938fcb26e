//! A durable node survives a crash with every acknowledged update, its
//! source id and a clock that spares its peers from resending.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Counters, eventually, fast, spawn};
use repred_transport::Node;
use tokio::task::JoinSet;

async fn durable_node(dir: &std::path::Path, listen: SocketAddr, bootstrap: SocketAddr) -> Node {
    // The crashed node's socket may take a moment to be released.
    let mut last = None;
    for _ in 0..50 {
        match fast(dir).durable(true).listen(listen).bootstrap([bootstrap]).spawn().await {
            Ok(node) => return node,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the durable node did not start: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_durable_node_resumes_with_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let b = spawn(dir.path(), &[]).await;
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    let a = durable_node(dir.path(), "127.0.0.1:0".parse().unwrap(), b.addr()).await;
    let port = a.addr().port();
    let on_a = a.replicate("counters", Counters::default()).unwrap();

    // Acknowledged one by one, and many at once sharing commits.
    for i in 1..=50 {
        on_a.update(Counters::set(&format!("seq{i}"), i)).await.unwrap();
    }
    let mut concurrent = JoinSet::new();
    for i in 1..=100u64 {
        let h = on_a.clone();
        concurrent.spawn(async move { h.update(Counters::set(&format!("par{i}"), i)).await });
    }
    while let Some(done) = concurrent.join_next().await {
        done.unwrap().unwrap();
    }
    eventually("b has all 150", Duration::from_secs(10), || {
        let n = on_b.read(|c| c.0.len());
        (n == 150, n)
    })
    .await;
    let source = on_a.source();
    let clock = on_a.clock();
    drop((on_a, a)); // a crash: no shutdown, nothing flushed on the way out

    let a = durable_node(dir.path(), SocketAddr::from(([127, 0, 0, 1], port)), b.addr()).await;
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    assert_eq!(on_a.read(|c| c.0.len()), 150, "every acknowledged update is back");
    assert_eq!(on_a.source(), source, "the same source id");
    assert!(on_a.clock().covers(&clock));

    // It meets its peer again and is sent nothing it already has.
    eventually("a reconnected to b", Duration::from_secs(10), || {
        let open = on_a.traffic().open;
        (open > 0, open)
    })
    .await;
    let stamp = on_a.update(Counters::set("after", 1)).await.unwrap().unwrap();
    assert!(stamp.ts > clock.get(source), "timestamps keep increasing across the crash");
    eventually("b has the new one", Duration::from_secs(10), || {
        let n = on_b.read(|c| c.0.len());
        (n == 151, n)
    })
    .await;
    assert_eq!(on_a.traffic().updates_received, 0, "b resent nothing");
    a.shutdown().await;
    b.shutdown().await;
}

/// Durable and signing together: after a crash, the restarted node still
/// signs as itself, and a peer that requires signatures takes its updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_durable_node_signs_as_itself_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let b = fast(dir.path()).require_signatures(true).spawn().await.unwrap();
    let on_b = b.replicate("counters", Counters::default()).unwrap();
    let start = |listen: SocketAddr| {
        let dir = dir.path().to_path_buf();
        let b = b.addr();
        async move {
            for _ in 0..50 {
                let built = fast(&dir).durable(true).signing(true).listen(listen).bootstrap([b]);
                if let Ok(node) = built.spawn().await {
                    return node;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the node did not start");
        }
    };
    let a = start("127.0.0.1:0".parse().unwrap()).await;
    let port = a.addr().port();
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    for i in 1..=10 {
        on_a.update(Counters::set(&format!("k{i}"), i)).await.unwrap();
    }
    let source = on_a.source();
    drop((on_a, a));

    let a = start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let on_a = a.replicate("counters", Counters::default()).unwrap();
    assert_eq!(on_a.source(), source);
    assert_eq!(on_a.read(|c| c.0.len()), 10);
    on_a.update(Counters::set("after", 11)).await.unwrap();
    eventually("b took all 11 signed updates", Duration::from_secs(15), || {
        let n = on_b.read(|c| c.0.len());
        (n == 11, (n, on_b.traffic(), on_a.traffic()))
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

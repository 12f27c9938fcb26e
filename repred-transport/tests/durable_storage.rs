//! A durable node's store task over its lifetime: its first update is
//! never lost to a wake-up race.

mod common;

use std::time::Duration;

use common::{Counters, fast};

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

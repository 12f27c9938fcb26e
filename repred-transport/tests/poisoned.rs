//! A local update whose `reduce` panics poisons the object: the panic goes
//! on to the caller, later updates fail with a typed error, and what the
//! panic left in the state never reaches a peer; `Handle::rejoin` starts
//! the object over from its peer, over real QUIC sockets.

mod common;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use common::{eventually, fast};
use repred::{Reduce, ReplicaError};
use repred_transport::Error;

/// How long any one step may take on a loaded machine.
const LIMIT: Duration = Duration::from_secs(60);

thread_local! {
    /// The number this thread's reduces panic at, when set: only the
    /// test's own update panics, not the node's tasks applying peers'.
    static UNLUCKY: Cell<Option<u32>> = const { Cell::new(None) };
}

/// A grow-only set whose reduce takes an update's numbers one by one and
/// panics at the unlucky one, the numbers before it already in: a user's
/// bug that leaves an update half in the state.
#[derive(Clone, Debug, Default, PartialEq)]
struct Fragile(BTreeSet<u32>);

impl Reduce for Fragile {
    type Update = Vec<u32>;

    fn reduce(&mut self, update: Vec<u32>) -> Option<Vec<u32>> {
        let mut added = Vec::new();
        for n in update {
            assert!(UNLUCKY.get() != Some(n), "the user's reduce fails at {n}");
            if self.0.insert(n) {
                added.push(n);
            }
        }
        (!added.is_empty()).then_some(added)
    }

    fn snapshot(&self) -> Vec<u32> {
        self.0.iter().copied().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_local_reduce_poisons_the_object_until_it_rejoins() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let a = fast(dir.path()).spawn().await.expect("a starts");
    let b = fast(dir.path()).bootstrap([a.addr()]).spawn().await.expect("b starts");
    let on_a = a.replicate("set", Fragile::default()).expect("replicated on a");
    let on_b = b.replicate("set", Fragile::default()).expect("replicated on b");
    on_a.update(vec![1]).await.expect("a's write");
    on_b.update(vec![2]).await.expect("b's write");
    let both = |h: &repred_transport::Handle<Fragile>, want: &[u32]| {
        let want: BTreeSet<u32> = want.iter().copied().collect();
        let seen = h.read(|s| s.0.clone());
        (seen == want, seen)
    };
    eventually("a has b's write", LIMIT, || both(&on_a, &[1, 2])).await;
    eventually("b has a's write", LIMIT, || both(&on_b, &[1, 2])).await;

    // On this thread only, 13 is unlucky: the panic reaches the caller with
    // 7 already in b's state.
    UNLUCKY.set(Some(13));
    // Polled here, not spawned: the reduce runs on this thread, in the
    // first poll (nothing to wait for on a node without a store).
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut update = std::pin::pin!(on_b.update(vec![7, 13]));
        let mut cx = Context::from_waker(Waker::noop());
        update.as_mut().poll(&mut cx)
    }));
    UNLUCKY.set(None);
    assert!(panicked.is_err(), "the panic goes on to the caller");
    assert!(on_b.is_poisoned());
    assert!(on_b.read(|s| s.0.contains(&7)), "the reduce left part of the update");
    match on_b.update(vec![8]).await {
        Err(Error::Replica(ReplicaError::Poisoned)) => {}
        other => panic!("a poisoned object took an update: {other:?}"),
    }
    // Peers' updates still come in.
    on_a.update(vec![3]).await.expect("a's write");
    eventually("b has a's later write", LIMIT, || {
        let seen = on_b.read(|s| s.0.clone());
        (seen.contains(&3), seen)
    })
    .await;
    assert!(!on_a.read(|s| s.0.contains(&7)), "what no record holds never travels");

    on_b.rejoin(Fragile::default());
    assert!(!on_b.is_poisoned());
    on_b.update(vec![4]).await.expect("b writes again after the rejoin");
    eventually("a has b's new write", LIMIT, || both(&on_a, &[1, 2, 3, 4])).await;
    eventually("b is brought up without the panic's leftover", LIMIT, || {
        both(&on_b, &[1, 2, 3, 4])
    })
    .await;
    eventually("the clocks agree", LIMIT, || {
        let (ca, cb) = (on_a.clock(), on_b.clock());
        (ca == cb, (ca, cb))
    })
    .await;
    b.shutdown().await;
    a.shutdown().await;
}

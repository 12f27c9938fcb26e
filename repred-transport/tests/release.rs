//! A node lets one object go and takes it up again later (what placement
//! does as objects move): the object resumes from the store and syncs
//! again over the connection it had, whichever end dialed it.

mod common;

use std::time::Duration;

use common::{Counters, eventually, fast};
use repred_store::redb::StorageBackend;
use repred_store::redb::backends::FileBackend;
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

/// A removal of a stored copy and a replicate of the same name, on two
/// threads at once (a direct user of `Node` serializes neither): the
/// replicate must never resume the copy the removal deletes (its old
/// source id, over a log that is gone from the disk). Either it comes
/// first and the removal deletes nothing, or it is refused while the
/// removal runs, or it comes after and starts from scratch. The replicate
/// starts a little later each round, so that it lands before, inside and
/// after the removal's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicate_racing_a_removal_never_resumes_the_copy_being_deleted() {
    use std::sync::{Arc, Barrier};

    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(durable(dir.path(), &[]).await);
    let runtime = tokio::runtime::Handle::current();
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for round in 0..64u64 {
        let name = format!("doc-{round}");
        let before = node.replicate(&name, Counters::default()).unwrap();
        before.update(Counters::set("k", round + 1)).await.unwrap();
        let old = before.source();
        assert!(node.release(&name).await.unwrap());
        let start = Arc::new(Barrier::new(2));
        let remover = tokio::task::spawn_blocking({
            let (node, start, name, runtime) =
                (node.clone(), start.clone(), name.clone(), runtime.clone());
            move || {
                start.wait();
                runtime.block_on(node.remove_stored(&name))
            }
        });
        let maker = tokio::task::spawn_blocking({
            let (node, start, name) = (node.clone(), start.clone(), name.clone());
            move || {
                start.wait();
                std::thread::sleep(Duration::from_micros(round % 16 * 150));
                node.replicate(&name, Counters::default())
            }
        });
        let removed = remover.await.unwrap();
        let made = maker.await.unwrap();
        let outcome = match (&removed, &made) {
            (Err(Error::AlreadyReplicated(_)), Ok(h)) => {
                assert_eq!(h.source(), old, "round {round}: first, it resumes the stored copy");
                "replicate first"
            }
            (Ok(true), Err(Error::Removing(_))) => "refused during the removal",
            (Ok(true), Ok(h)) => {
                assert_ne!(
                    h.source(),
                    old,
                    "round {round}: the replicate resumed the copy the removal deleted"
                );
                assert!(h.read(|c| c.0.is_empty()), "round {round}: from scratch");
                "removal first"
            }
            other => panic!("round {round}: unexpected {other:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("outcomes: {outcomes:?}");
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown().await;
    }
}

/// A store backend whose syncs wait while its gate is shut: a slow disk.
#[derive(Clone, Default)]
struct Gate(std::sync::Arc<(std::sync::Mutex<GateState>, std::sync::Condvar)>);

#[derive(Default)]
struct GateState {
    shut: bool,
    /// Syncs waiting at the gate now.
    waiting: usize,
}

impl Gate {
    fn set(&self, shut: bool) {
        self.0.0.lock().unwrap().shut = shut;
        self.0.1.notify_all();
    }

    /// Whether a sync waits at the gate now.
    fn holds_a_sync(&self) -> bool {
        self.0.0.lock().unwrap().waiting > 0
    }

    fn backend(
        &self,
    ) -> impl Fn(&std::path::Path) -> std::io::Result<Slow> + Send + Sync + 'static {
        let gate = self.clone();
        move |path| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            let inner = FileBackend::new(file).map_err(std::io::Error::other)?;
            Ok(Slow { inner, gate: gate.clone() })
        }
    }
}

#[derive(Debug)]
struct Slow {
    inner: FileBackend,
    gate: Gate,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl StorageBackend for Slow {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let (state, opened) = &*self.gate.0;
        let mut state = state.lock().unwrap();
        state.waiting += 1;
        while state.shut {
            state = opened.wait(state).unwrap();
        }
        state.waiting -= 1;
        drop(state);
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
}

/// The removal's transaction and fsync run off the task that awaits it:
/// on a runtime of one thread, another task runs while the removal's sync
/// is held up by a slow disk. (Run on the calling thread, the sync blocked
/// the runtime's only thread, and with it every task of the node, until
/// the disk answered.) A thread opens the gate after 10 s whatever
/// happens, so that a blocked runtime fails the test rather than hangs it.
#[tokio::test(flavor = "current_thread")]
async fn a_removal_does_not_block_the_runtime_while_its_fsync_waits() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::default();
    let node = fast(dir.path()).durable(true).store_backend(gate.backend()).spawn().await.unwrap();
    let doc = node.replicate("doc", Counters::default()).unwrap();
    doc.update(Counters::set("k", 1)).await.unwrap();
    assert!(node.release("doc").await.unwrap());
    gate.set(true);
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let opener = std::thread::spawn({
        let gate = gate.clone();
        move || {
            let _ = finished.recv_timeout(Duration::from_secs(10));
            gate.set(false);
        }
    });
    let removal = node.remove_stored("doc");
    let meanwhile = async {
        // Whether this task ran while the removal's sync waited.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !gate.holds_a_sync() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ran = gate.holds_a_sync();
        gate.set(false);
        ran
    };
    let (removed, ran) = tokio::join!(removal, meanwhile);
    let _ = done.send(());
    opener.join().unwrap();
    assert!(ran, "the runtime's only thread was blocked by the removal's fsync");
    assert!(removed.unwrap(), "the store had it");
    node.shutdown().await;
}

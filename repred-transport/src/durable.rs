//! Group commit of every object's log to the node's store.
//!
//! A write is acknowledged only once the transaction that holds it is on
//! disk. One task per node does the writing: it collects what every object
//! recorded since the last commit (encoding under each object's lock, which
//! is fast), then commits it all in one redb transaction with the locks
//! released, so the protocol never waits on an fsync and many concurrent
//! updates share one.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use repred_store::{Batch, Store, StoreError};
use tokio::sync::watch;

use crate::Error;

/// An object whose log can be saved.
pub(crate) trait Persist: Send + Sync {
    /// Encodes what the object recorded since its last save.
    fn prepare(&self, store: &Store) -> Result<Batch, StoreError>;

    /// The log below `end_seq` is committed: peers may have it now.
    fn saved(&self, end_seq: u64);
}

/// What the writer has done so far.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// The highest request whose round is over (committed, or failed).
    done: u64,
    /// Why the last round's commit failed, if it did; waiters report it.
    failure: Option<String>,
    /// The writer is gone (the node stopped): nothing more will commit.
    stopped: bool,
}

pub(crate) struct Durable {
    store: Arc<Store>,
    /// Bumped by every change that must reach the disk.
    requested: watch::Sender<u64>,
    progress: watch::Sender<Progress>,
    /// Weak: objects hold the store, and a cycle would keep the file open
    /// (and locked) after the node is gone.
    objects: Mutex<Vec<Weak<dyn Persist>>>,
}

impl Durable {
    pub(crate) fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::new(store),
            requested: watch::Sender::new(0),
            progress: watch::Sender::new(Progress::default()),
            objects: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn register(&self, object: &Arc<dyn Persist>) {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(object));
    }

    /// Asks for everything recorded so far to be saved; returns the ticket
    /// to wait for.
    pub(crate) fn request(&self) -> u64 {
        let mut ticket = 0;
        self.requested.send_modify(|n| {
            *n += 1;
            ticket = *n;
        });
        ticket
    }

    /// Waits until the request `ticket` is on disk.
    ///
    /// An error means the write may or may not have reached the disk: the
    /// commit failed (a later round retries everything not on disk), or
    /// the node stopped first.
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), Error> {
        let mut progress = self.progress.subscribe();
        let seen = progress.wait_for(|p| p.done >= ticket || p.stopped).await;
        let Ok(seen) = seen else { return Err(Error::Shutdown) };
        if seen.done < ticket {
            return Err(Error::Shutdown);
        }
        match &seen.failure {
            Some(why) => Err(Error::Storage(why.clone())),
            None => Ok(()),
        }
    }

    /// Commits everything recorded so far and waits for it: the last
    /// round of a clean shutdown.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let ticket = self.request();
        self.wait(ticket).await
    }

    /// Tells waiters that nothing more will commit. Called when the node
    /// stops, crash or shutdown alike: an `update` still waiting then fails
    /// with [`Error::Shutdown`] instead of waiting forever (its update may
    /// or may not be on disk, exactly as after a crash).
    pub(crate) fn stop(&self) {
        self.progress.send_modify(|p| p.stopped = true);
    }

    /// The writer: one commit per round, covering every request made before
    /// the round started.
    pub(crate) async fn run(self: Arc<Self>) {
        // Requests are counted from the start, not from when this task first
        // ran: an update made before that is waited on like any other.
        let mut requested = self.requested.subscribe();
        let mut covered = 0;
        while requested.wait_for(|n| *n > covered).await.is_ok() {
            let target = *requested.borrow_and_update();
            covered = target;
            let objects: Vec<Arc<dyn Persist>> = {
                let mut list = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
                list.retain(|o| o.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            let store = self.store.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut batches = Vec::new();
                let mut ends = Vec::new();
                for object in &objects {
                    let batch = object.prepare(&store)?;
                    ends.push(batch.end_seq());
                    if !batch.is_empty() {
                        batches.push(batch);
                    }
                }
                if !batches.is_empty() {
                    store.commit_all(batches)?;
                }
                // Only now may peers see these entries (Replica::release).
                for (object, end) in objects.iter().zip(ends) {
                    object.saved(end);
                }
                Ok::<_, StoreError>(())
            })
            .await;
            let failure = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("the store task failed: {e}")),
            };
            self.progress.send_modify(|p| {
                p.done = target;
                p.failure = failure;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use repred::{Config, GSet, Replica};

    use super::*;

    /// A replicated set of numbers behind a lock, as a node's objects are.
    struct Numbers {
        replica: Mutex<Replica<GSet<u64>>>,
        /// What `saved` released last.
        released: AtomicU64,
    }

    impl Numbers {
        fn update(&self, n: u64) {
            let mut replica = self.replica.lock().unwrap();
            replica.update(1_700_000_000_000, [n].into()).unwrap();
        }

        fn end_seq(&self) -> u64 {
            self.replica.lock().unwrap().end_seq()
        }
    }

    impl Persist for Numbers {
        fn prepare(&self, store: &Store) -> Result<Batch, StoreError> {
            store.prepare("n", &self.replica.lock().unwrap())
        }

        fn saved(&self, end_seq: u64) {
            self.replica.lock().unwrap().release(end_seq);
            self.released.fetch_max(end_seq, Ordering::SeqCst);
        }
    }

    fn durable(path: &std::path::Path) -> (Arc<Durable>, Arc<Numbers>) {
        let store = Store::open(path).unwrap();
        let mut replica = store.load_or_create::<GSet<u64>>("n", Config::default()).unwrap();
        replica.hold_until_released();
        let durable = Durable::new(store);
        let numbers =
            Arc::new(Numbers { replica: Mutex::new(replica), released: AtomicU64::new(0) });
        durable.register(&(numbers.clone() as Arc<dyn Persist>));
        (durable, numbers)
    }

    /// The writer's hand-off, in every order a current-thread runtime can
    /// put it: a request made before the writer task is spawned, after it
    /// is spawned but before it first runs, once it waits, and while a
    /// round is under way. Each must be committed (and released), never
    /// missed; the bound is only there to turn a lost wake-up into a
    /// failure instead of a hang.
    #[tokio::test(flavor = "current_thread")]
    async fn no_request_is_missed_however_it_races_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..200u64 {
            let (durable, numbers) = durable(&dir.path().join(format!("{i}.redb")));
            numbers.update(i);
            let yields = i / 4 % 5;
            let (tickets, writer) = match i % 4 {
                0 => {
                    let ticket = durable.request();
                    (vec![ticket], tokio::spawn(durable.clone().run()))
                }
                1 => {
                    let writer = tokio::spawn(durable.clone().run());
                    (vec![durable.request()], writer)
                }
                2 => {
                    let writer = tokio::spawn(durable.clone().run());
                    for _ in 0..=yields {
                        tokio::task::yield_now().await;
                    }
                    (vec![durable.request()], writer)
                }
                _ => {
                    // A second request while the first one's round may be
                    // committing on the blocking pool.
                    let writer = tokio::spawn(durable.clone().run());
                    let first = durable.request();
                    for _ in 0..yields {
                        tokio::task::yield_now().await;
                    }
                    numbers.update(1_000 + i);
                    (vec![first, durable.request()], writer)
                }
            };
            for ticket in tickets {
                let waited = tokio::time::timeout(Duration::from_secs(10), durable.wait(ticket));
                let result = waited
                    .await
                    .unwrap_or_else(|_| panic!("round {i}: ticket {ticket} was never committed"));
                result.unwrap_or_else(|e| panic!("round {i}: {e}"));
            }
            assert_eq!(numbers.released.load(Ordering::SeqCst), numbers.end_seq(), "round {i}");
            writer.abort();
        }
    }
}

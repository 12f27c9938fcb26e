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
}

pub(crate) struct Durable {
    store: Arc<Store>,
    /// Bumped by every change that must reach the disk.
    requested: watch::Sender<u64>,
    /// The highest request that is on disk.
    committed: watch::Sender<u64>,
    /// Why the last commit failed, if it did; waiters report it.
    failure: Mutex<Option<String>>,
    /// Weak: objects hold the store, and a cycle would keep the file open
    /// (and locked) after the node is gone.
    objects: Mutex<Vec<Weak<dyn Persist>>>,
}

impl Durable {
    pub(crate) fn new(store: Store) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::new(store),
            requested: watch::Sender::new(0),
            committed: watch::Sender::new(0),
            failure: Mutex::new(None),
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
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), Error> {
        let mut committed = self.committed.subscribe();
        let reached = committed.wait_for(|c| *c >= ticket).await;
        if let Some(why) = self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Err(Error::Storage(why));
        }
        reached.map(|_| ()).map_err(|_| Error::Shutdown)
    }

    /// The writer: one commit per round, covering every request made before
    /// the round started.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut requested = self.requested.subscribe();
        while requested.changed().await.is_ok() {
            let target = *requested.borrow_and_update();
            let objects: Vec<Arc<dyn Persist>> = {
                let mut list = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
                list.retain(|o| o.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            let store = self.store.clone();
            let result = tokio::task::spawn_blocking(move || {
                let batches = objects
                    .iter()
                    .map(|o| o.prepare(&store))
                    .filter(|b| !matches!(b, Ok(b) if b.is_empty()))
                    .collect::<Result<Vec<_>, _>>()?;
                if batches.is_empty() {
                    return Ok(0);
                }
                store.commit_all(batches)
            })
            .await;
            let failure = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("the store task failed: {e}")),
            };
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
            self.committed.send_replace(target);
        }
    }
}

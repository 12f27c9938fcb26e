//! Group commit of every object's log to the node's store.
//!
//! A write is acknowledged only once the transaction that holds it is on
//! disk. One task per node does the writing: it collects what every object
//! recorded since the last commit (encoding under each object's lock, which
//! is fast), then commits it all in one redb transaction with the locks
//! released, so the protocol never waits on an fsync and many concurrent
//! updates share one.
//!
//! A failed commit (a full disk, say) fails the updates waiting on it, and
//! the writer tries again by itself, reopening the store first when the
//! disk failed under it, after 50 ms, then twice as long each time up to
//! 2 s: once the cause is gone, the next try commits everything still
//! pending, and only then are those entries released to peers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use repred_store::{Batch, Store, StoreError, redb::StorageBackend};
use tokio::sync::watch;

use crate::Error;
use crate::metrics::StoreMetrics;

/// The first retry after a failed commit comes this long after it...
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// ...and each later one twice as long after the last, up to this.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A commit that takes this long is logged at `info`, not `debug`: the
/// writes waiting on it waited that long.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// An object whose log can be saved.
pub(crate) trait Persist: Send + Sync {
    /// Encodes what the object recorded since its last save.
    fn prepare(&self, store: &Store) -> Result<Batch, StoreError>;

    /// The log below `end_seq` is committed: peers may have it now.
    fn saved(&self, end_seq: u64);
}

/// Opens a store at a path.
type Opener = dyn Fn(&Path) -> Result<Store, StoreError> + Send + Sync;

/// How a durable node opens its store: the file itself, or (tests) a
/// custom redb backend on it.
#[derive(Clone)]
pub(crate) struct OpenStore(Arc<Opener>);

impl OpenStore {
    /// Opens the store on the backend `backend` makes for its path (again
    /// at each reopen).
    pub(crate) fn with_backend<B: StorageBackend>(
        backend: impl Fn(&Path) -> std::io::Result<B> + Send + Sync + 'static,
    ) -> Self {
        let backend = Arc::new(backend);
        Self(Arc::new(move |path| {
            let backend = backend.clone();
            Store::open_with(path, move |path| backend(path))
        }))
    }

    pub(crate) fn open(&self, path: &Path) -> Result<Store, StoreError> {
        (self.0)(path)
    }
}

impl Default for OpenStore {
    fn default() -> Self {
        Self(Arc::new(|path| Store::open(path)))
    }
}

impl std::fmt::Debug for OpenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenStore")
    }
}

/// What the writer has done so far. Requests are numbered; a round covers
/// every request made before it started.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Every request up to this one is on disk.
    committed: u64,
    /// The last request whose round failed (a later round may have
    /// committed it since).
    failed: u64,
    /// Why that round failed; what waiters report.
    failure: String,
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
    /// Names whose stored copy is being loaded or removed now: a removal
    /// and a load of the same name exclude each other (see [`Claim`]).
    claims: Mutex<HashMap<String, Claim>>,
    metrics: StoreMetrics,
}

/// What is under way on one name's stored copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// This many replicas of the name are being made: loaded from the
    /// store, not registered yet.
    Loading(usize),
    /// Its stored copy is being deleted (a transaction and an fsync on the
    /// blocking pool).
    Removing,
}

/// A name claimed for a load ([`Durable::claim_load`]) or a removal
/// ([`Durable::claim_removal`]); the claim ends when this is dropped.
pub(crate) struct Claimed {
    durable: Arc<Durable>,
    name: String,
}

impl Claimed {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let mut claims = self.durable.claims();
        if let Some(claim) = claims.get_mut(&self.name) {
            match claim {
                Claim::Loading(n) if *n > 1 => *n -= 1,
                _ => {
                    claims.remove(&self.name);
                }
            }
        }
    }
}

/// Why a name could not be claimed for a removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Busy {
    /// A replica of it is being made, or is registered.
    InUse,
    /// Another removal of it is under way.
    Removing,
}

/// What one successful round wrote.
struct Committed {
    entries: usize,
    objects: usize,
    /// How long the commit took (the transaction and its fsync, not the
    /// encoding before it); zero when there was nothing to commit.
    took: Duration,
}

impl Durable {
    pub(crate) fn new(store: Store, metrics: StoreMetrics) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::new(store),
            requested: watch::Sender::new(0),
            progress: watch::Sender::new(Progress::default()),
            objects: Mutex::new(Vec::new()),
            claims: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claim>> {
        // Each change to the map is one insert or remove: a panic cannot
        // leave it half-changed.
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `name` for a replica being made from its stored copy: hold
    /// the claim until the replica is registered, so that no removal of
    /// the copy runs between the load and the registration. Fails with
    /// [`Error::Removing`] while a removal of it is under way.
    pub(crate) fn claim_load(self: &Arc<Self>, name: &str) -> Result<Claimed, Error> {
        let mut claims = self.claims();
        match claims.get_mut(name) {
            Some(Claim::Removing) => return Err(Error::Removing(name.to_string())),
            Some(Claim::Loading(n)) => *n += 1,
            None => {
                claims.insert(name.to_string(), Claim::Loading(1));
            }
        }
        Ok(Claimed { durable: self.clone(), name: name.to_string() })
    }

    /// Claims `name` for the removal of its stored copy, unless a replica
    /// of it is being made or (`in_use`, asked under the claims' lock, so
    /// that no registration slips in between) is registered, or another
    /// removal holds it.
    pub(crate) fn claim_removal(
        self: &Arc<Self>,
        name: &str,
        in_use: impl FnOnce() -> bool,
    ) -> Result<Claimed, Busy> {
        let mut claims = self.claims();
        match claims.get(name) {
            Some(Claim::Removing) => return Err(Busy::Removing),
            Some(Claim::Loading(_)) => return Err(Busy::InUse),
            None if in_use() => return Err(Busy::InUse),
            None => {
                claims.insert(name.to_string(), Claim::Removing);
            }
        }
        Ok(Claimed { durable: self.clone(), name: name.to_string() })
    }

    pub(crate) fn register(&self, object: &Arc<dyn Persist>) {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(object));
    }

    /// Stops saving the object at `object` (its address: the node released
    /// it). A round under way may still commit what it prepared of it;
    /// [`flush`](Durable::flush) after this waits that out.
    pub(crate) fn unregister(&self, object: *const ()) {
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        objects.retain(|o| !std::ptr::addr_eq(o.as_ptr(), object));
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
    /// commit failed ([`Error::Storage`]; the writer keeps retrying
    /// everything not on disk, and peers get none of it until it is), or
    /// the node stopped first.
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), Error> {
        let mut progress = self.progress.subscribe();
        let seen =
            progress.wait_for(|p| p.committed >= ticket || p.failed >= ticket || p.stopped).await;
        let Ok(seen) = seen else { return Err(Error::Shutdown) };
        if seen.committed >= ticket {
            // Committed, perhaps by a retry after its own round failed.
            Ok(())
        } else if seen.failed >= ticket {
            Err(Error::Storage(seen.failure.clone()))
        } else {
            Err(Error::Shutdown)
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
    /// the round started; after a failed round, another one by itself.
    pub(crate) async fn run(self: Arc<Self>) {
        // Requests are counted from the start, not from when this task first
        // ran: an update made before that is waited on like any other.
        let mut requested = self.requested.subscribe();
        let mut covered = 0;
        // Set while the last round failed: when to try again.
        let mut retry = None;
        loop {
            match retry {
                None => {
                    if requested.wait_for(|n| *n > covered).await.is_err() {
                        return;
                    }
                }
                // Requests made meanwhile wait for this try (they would
                // fail the same way sooner), and what failed is retried
                // even if no new update comes.
                Some(delay) => tokio::time::sleep(delay).await,
            }
            let target = *requested.borrow_and_update();
            // After a failure, the store is reopened first: redb refuses to
            // write after an I/O error until it is, and the reopen also
            // forgets what the store assumed of a batch that was prepared
            // but never committed (when another object's prepare failed).
            let result = self.round(retry.is_some()).await;
            covered = target;
            match result {
                Ok(committed) => {
                    if retry.is_some() {
                        tracing::info!("store commit succeeded again after failing");
                    }
                    retry = None;
                    self.observe(&committed);
                    self.progress.send_modify(|p| p.committed = target);
                }
                Err(why) => {
                    let delay = retry.map_or(RETRY_FIRST, |d: Duration| (d * 2).min(RETRY_MAX));
                    retry = Some(delay);
                    self.metrics.commit_failures.increment(1);
                    tracing::warn!(
                        error = %why,
                        retry_in_ms = delay.as_millis() as u64,
                        "store commit failed; the writes waiting on it fail, and stay held back \
                         from peers until a retry commits them"
                    );
                    self.progress.send_modify(|p| {
                        p.failed = target;
                        p.failure = why;
                    });
                }
            }
        }
    }

    /// Counts and logs a successful round.
    fn observe(&self, c: &Committed) {
        if c.entries == 0 {
            return;
        }
        let m = &self.metrics;
        m.commits.increment(1);
        m.entries_written.increment(c.entries as u64);
        m.commit_seconds.record(c.took.as_secs_f64());
        // Each commit is logged by the store at `debug`; the slow ones here,
        // louder.
        if c.took >= SLOW_COMMIT {
            let ms = c.took.as_secs_f64() * 1e3;
            tracing::info!(entries = c.entries, objects = c.objects, ms, "slow store commit");
        }
    }

    /// Commits what every object recorded, after reopening the store if
    /// asked. On failure: why, in words for the waiters.
    async fn round(&self, reopen: bool) -> Result<Committed, String> {
        let objects: Vec<Arc<dyn Persist>> = {
            let mut list = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
            list.retain(|o| o.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let store = self.store.clone();
        // The store logs its commit in the node's span.
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            if reopen {
                // Before any object is locked: a reopen may take a while.
                store.reopen()?;
            }
            let mut prepared = Vec::with_capacity(objects.len());
            for object in &objects {
                match object.prepare(&store) {
                    Ok(batch) => prepared.push(batch),
                    Err(e) => {
                        // The batches prepared so far will not be
                        // committed: the store must not continue after
                        // them next round, or their entries would never
                        // be written and yet be released.
                        store.discard(prepared);
                        return Err(e);
                    }
                }
            }
            let ends: Vec<u64> = prepared.iter().map(|b| b.end_seq()).collect();
            let batches: Vec<_> = prepared.into_iter().filter(|b| !b.is_empty()).collect();
            let mut committed =
                Committed { entries: 0, objects: batches.len(), took: Duration::ZERO };
            if !batches.is_empty() {
                let started = Instant::now();
                committed.entries = store.commit_all(batches)?;
                committed.took = started.elapsed();
            }
            // Only now may peers see these entries (Replica::release).
            for (object, end) in objects.iter().zip(ends) {
                object.saved(end);
            }
            Ok::<_, StoreError>(committed)
        })
        .await;
        match result {
            Ok(Ok(committed)) => Ok(committed),
            // The objects still hold every entry not released, and the next
            // round prepares from what the (reopened) disk holds: it writes
            // whatever a failed commit did not.
            Ok(Err(e)) => Err(format!("{e}; retrying in the background")),
            Err(e) => Err(format!("the store task failed: {e}; retrying in the background")),
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

    /// An object whose prepare fails (as an encoding error would).
    struct Refuses;

    impl Persist for Refuses {
        fn prepare(&self, _store: &Store) -> Result<Batch, StoreError> {
            Err(StoreError::Encode { name: "refuses".into(), detail: "refused".into() })
        }

        fn saved(&self, _end_seq: u64) {}
    }

    /// One object's batch is prepared, the next object's prepare fails,
    /// so the round commits nothing: the first object's entries must be
    /// written by a later round, not skipped because the store counted
    /// them as written when they were prepared.
    #[tokio::test]
    async fn a_round_that_fails_to_prepare_loses_no_other_objects_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.redb");
        let (durable, numbers) = durable(&path);
        numbers.update(1);
        durable.round(false).await.unwrap();
        numbers.update(2);
        let failing: Arc<dyn Persist> = Arc::new(Refuses);
        durable.register(&failing);
        assert!(durable.round(false).await.is_err(), "the failing object fails the round");
        assert!(numbers.released.load(Ordering::SeqCst) < numbers.end_seq(), "nothing released");
        drop(failing);
        // The failing object is gone (its handle dropped): the next round
        // commits the rest, and releases it only then.
        durable.round(false).await.unwrap();
        assert_eq!(numbers.released.load(Ordering::SeqCst), numbers.end_seq());
        drop((durable, numbers));
        let store = Store::open(&path).unwrap();
        let replica = store.load::<GSet<u64>>("n", Config::default()).unwrap().expect("saved");
        assert!(
            replica.state().contains(&2),
            "the update released after the failed round is on disk"
        );
    }

    fn durable(path: &std::path::Path) -> (Arc<Durable>, Arc<Numbers>) {
        let store = Store::open(path).unwrap();
        let mut replica = store.load_or_create::<GSet<u64>>("n", Config::default()).unwrap();
        replica.hold_until_released();
        let durable = Durable::new(store, StoreMetrics::noop());
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

//! The bridge between the two replicas of the list in one process: the
//! cluster's (a `Handle<Model>` replicated over QUIC) and the browsers'
//! (the `repred_scuttlebutt::Node` behind the WebSocket).
//!
//! Every write is a scuttlebutt update `[[key, value], ts, source]` whose
//! stamp is the JavaScript writer's own, so the bridge copies writes, not
//! envelopes: each write goes into the other replica as the update of its
//! JavaScript source at its own timestamp (as a scuttlebutt stream would
//! put it), and therefore reaches every page on every node unchanged.
//!
//! - Whatever one replica applies is copied to the other; what the other
//!   already holds (the echo of a copy) is skipped before it is applied.
//! - A replica refuses as old an update whose timestamp its clock already
//!   covers for that source. Updates of one source arrive in order on every
//!   path, so that does not happen to a write it lacks; should it happen
//!   all the same (a snapshot's parts interleaved with live updates), a
//!   write that would win is *repaired*: written again by this process
//!   under its own id, carrying the writer's stamp inside, which is what
//!   decides the key everywhere. Counted, and shown on the page.
//! - A reader that fell behind (the cluster's change stream holds 1,024
//!   changes, the browser replica's log 65,536) copies the whole model
//!   instead, and so does a check every few seconds that finds the two
//!   models different.

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use repred::{Delivery, Envelope, Outcome, Reduce};
use repred_scuttlebutt::model::js_cmp;
use repred_scuttlebutt::{Model, ModelChange, Peer, Write, id, now_millis, time};
use repred_transport::Handle;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

/// How often the two models are compared.
const CHECK_EVERY: Duration = Duration::from_secs(3);

/// What the bridge did, for the cluster view.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Writes copied from the browsers' replica to the cluster's.
    pub to_cluster: AtomicU64,
    /// Writes copied from the cluster's replica to the browsers'.
    pub to_browsers: AtomicU64,
    /// Writes that a replica's clock covered but that it lacked, written
    /// again under this process's id.
    pub repairs: AtomicU64,
    /// Whole-model copies (a reader lagged, or the check found a
    /// difference).
    pub resyncs: AtomicU64,
}

/// The running bridge.
pub struct Bridge {
    cluster: Handle<Model>,
    browsers: Peer,
    pub stats: BridgeStats,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// How a write stands against a model's current write of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// The model holds exactly this write: nothing to do.
    Held,
    /// The model's write is newer (or the write is one no model keeps).
    Loses,
    /// It would replace the model's write (or the key has none).
    Wins,
}

fn standing(model: &Model, w: &Write) -> Standing {
    let (Some(ts), Some(source)) = (w.ts, w.source.as_deref()) else { return Standing::Loses };
    // scuttlebutt/model refuses these keys; a non-finite stamp is no stamp.
    if w.key == "__proto__" || !ts.is_finite() {
        return Standing::Loses;
    }
    let Some(e) = model.entry(&w.key) else { return Standing::Wins };
    let order =
        e.ts.total_cmp(&ts)
            .then_with(|| js_cmp(e.source, source))
            .then_with(|| e.value.cmp(&w.value));
    match order {
        CmpOrdering::Equal => Standing::Held,
        CmpOrdering::Greater => Standing::Loses,
        CmpOrdering::Less => Standing::Wins,
    }
}

/// The envelope a scuttlebutt stream would make of the write: its source's
/// update at its own timestamp. `None` for a stamp repred cannot hold.
fn envelope_of(w: &Write) -> Option<Envelope<ModelChange>> {
    let ts = time::timestamp_of(w.ts?)?;
    let source = id::source_id(w.source.as_deref()?);
    Some(Envelope::new(source, ts, one(w.clone())))
}

fn one(w: Write) -> ModelChange {
    ModelChange { writes: vec![w], names: Vec::new() }
}

/// Oldest first, per source as each source wrote them: the order in which
/// a replica takes them all.
fn sort_writes(writes: &mut [Write]) {
    writes.sort_by(|a, b| {
        let ts = |w: &Write| w.ts.unwrap_or(0.0);
        ts(a).total_cmp(&ts(b)).then_with(|| {
            js_cmp(a.source.as_deref().unwrap_or(""), b.source.as_deref().unwrap_or(""))
        })
    });
}

/// Every key's current write, sorted as [`sort_writes`] sorts.
fn all_writes(model: &Model) -> Vec<Write> {
    let mut writes = model.snapshot().writes;
    sort_writes(&mut writes);
    writes
}

/// The model's current writes, for comparing two models.
fn contents(model: &Model) -> Vec<(String, u64, String, String)> {
    model
        .iter()
        .map(|e| (e.key.to_string(), e.ts.to_bits(), e.source.to_string(), e.value.to_string()))
        .collect()
}

impl Bridge {
    /// Copies the cluster's model into the browsers' (a restarted node's
    /// list comes from its store), then keeps both in step for ever.
    pub async fn start(cluster: Handle<Model>, browsers: Peer) -> Arc<Bridge> {
        let bridge = Arc::new(Bridge {
            cluster,
            browsers,
            stats: BridgeStats::default(),
            tasks: Mutex::new(Vec::new()),
        });
        // Subscribed before the first copy, so that nothing falls between.
        let changes = bridge.cluster.changes();
        let written = bridge.browsers.read(|node| node.replica().subscribe());
        let initial = bridge.cluster.read(all_writes);
        bridge.to_browsers(initial);
        let tasks = vec![
            tokio::spawn(Arc::clone(&bridge).cluster_to_browsers(changes)),
            tokio::spawn(Arc::clone(&bridge).browsers_to_cluster(written)),
            tokio::spawn(Arc::clone(&bridge).check()),
        ];
        *bridge.tasks.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
        bridge
    }

    /// Stops copying (the replicas stay as they are), and lets go of them.
    pub async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    async fn cluster_to_browsers(
        self: Arc<Self>,
        mut changes: repred_transport::Changes<ModelChange>,
    ) {
        while let Some(applied) = changes.next().await {
            match applied {
                Ok(applied) => {
                    let mut writes = applied.change.writes;
                    sort_writes(&mut writes);
                    self.to_browsers(writes);
                }
                Err(_lagged) => {
                    self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    let writes = self.cluster.read(all_writes);
                    self.to_browsers(writes);
                }
            }
        }
    }

    async fn browsers_to_cluster(self: Arc<Self>, mut subscription: repred::Subscription) {
        let mut changed = self.browsers.changes();
        loop {
            changed.borrow_and_update();
            let (mut writes, lagged) = self.browsers.read(|node| {
                let mut writes = Vec::new();
                let mut lagged = false;
                for delivery in node.replica().changes(&mut subscription) {
                    match delivery {
                        Delivery::Change(change) => writes.extend(change.change.writes.clone()),
                        Delivery::Lagged { .. } => lagged = true,
                    }
                }
                (writes, lagged)
            });
            if lagged {
                self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                writes = self.browsers.read(|node| all_writes(node.model()));
            }
            if !writes.is_empty() {
                self.to_cluster(writes).await;
                // Look again before waiting: more may have come meanwhile.
                continue;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Compares the two models now and then, and copies both ways if they
    /// differ (idempotent: what either holds is skipped).
    async fn check(self: Arc<Self>) {
        let mut differed = false;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let ours = self.cluster.read(contents);
            let same = self.browsers.read(|node| contents(node.model()) == ours);
            // Twice in a row: a copy in flight is not a difference.
            if !same && differed {
                self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                let writes = self.cluster.read(all_writes);
                self.to_browsers(writes);
                let writes = self.browsers.read(|node| all_writes(node.model()));
                self.to_cluster(writes).await;
            }
            differed = !same;
        }
    }

    /// Puts writes into the browsers' replica; its streams send them on.
    fn to_browsers(&self, mut writes: Vec<Write>) {
        // What the replica holds already (the echo of a write it gave the
        // cluster) is dropped here, without waking its streams.
        self.browsers.read(|node| writes.retain(|w| standing(node.model(), w) != Standing::Held));
        if writes.is_empty() {
            return;
        }
        let (copied, repaired) = self.browsers.with(|node| {
            let (mut copied, mut repaired) = (0, 0);
            for w in writes {
                let standing = standing(node.model(), &w);
                if standing == Standing::Held {
                    continue;
                }
                let Some(envelope) = envelope_of(&w) else { continue };
                let now = now_millis();
                copied += 1;
                if node.replica_mut().apply(now, envelope) == Outcome::Old
                    && standing == Standing::Wins
                {
                    // Covered by the clock, yet missing: written again under
                    // the node's own id (the write keeps its stamp).
                    let ts = time::next_own(node.replica().last_timestamp(), now);
                    let own = node.replica().id();
                    node.replica_mut().apply(now.max(ts.millis()), Envelope::new(own, ts, one(w)));
                    repaired += 1;
                }
            }
            (copied, repaired)
        });
        self.stats.to_browsers.fetch_add(copied, Ordering::Relaxed);
        self.stats.repairs.fetch_add(repaired, Ordering::Relaxed);
    }

    /// Puts writes into the cluster's replica, which sends them to peers.
    async fn to_cluster(&self, writes: Vec<Write>) {
        for w in writes {
            let standing = self.cluster.read(|model| standing(model, &w));
            if standing == Standing::Held {
                continue;
            }
            let Some(envelope) = envelope_of(&w) else { continue };
            self.stats.to_cluster.fetch_add(1, Ordering::Relaxed);
            if self.cluster.apply(envelope) == Outcome::Old && standing == Standing::Wins {
                // As above; the write's own stamp rides inside, and the
                // model orders by it, not by the envelope's.
                self.stats.repairs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.cluster.update(one(w)).await {
                    eprintln!("cannot repair a write on the cluster: {e}");
                }
            }
        }
    }
}

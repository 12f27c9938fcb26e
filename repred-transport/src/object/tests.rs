//! An object's bookkeeping around its replica, with the bytes carried by
//! hand: no sockets, no node.

use std::io::Write;
use std::sync::{Arc, Mutex};

use repred::{Config, EndReason, GSet, Max, Reduce, Replica, SourceId, StreamId};
use tokio::sync::broadcast;

use super::{Object, Peers, Shared};
use crate::durable::Persist;

/// Every line logged while a test runs under [`Logs::capture`].
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Runs `f` with this thread's lines written here.
    fn capture<R>(&self, f: impl FnOnce() -> R) -> R {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f)
    }

    fn count(&self, message: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(message))
            .count()
    }
}

fn object<T>(name: &str, replica: Replica<T>) -> Arc<Shared<T>>
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    let (ends, _) = broadcast::channel(16);
    Shared::with_store(name.into(), replica, None, name, Peers::All, ends, Box::new(|| {}))
}

/// Carries whatever `from` has to send on `out` to `to` on `into`.
fn carry<T>(from: &Shared<T>, out: StreamId, to: &Shared<T>, into: StreamId)
where
    T: Reduce + Send + 'static,
    T::Update: Send + Sync + 'static,
{
    let mut bytes = Vec::new();
    from.poll_transmit(out, &mut bytes).expect("transmits");
    if !bytes.is_empty() {
        to.handle(into, &bytes).expect("takes the bytes");
    }
}

/// A durable node holds its writes back from peers until they are on
/// disk: when the peer's Sync comes first, its own Sync, and so the end
/// of the sync, comes from sending, once the store released the writes.
/// That end is logged when it happens (it waited, unlogged, for whatever
/// happened next: on an idle node, nothing did).
#[test]
fn a_sync_that_ends_in_sending_is_logged_at_once() {
    let logs = Logs::default();
    logs.capture(|| {
        let mut held = Replica::new(SourceId::new("a").unwrap(), Max::default());
        held.hold_until_released();
        let a = object("a", held);
        let b = object("b", Replica::new(SourceId::new("b").unwrap(), Max::default()));
        a.update(Max::new(7)).expect("a writes");
        let (on_a, on_b) = (a.open(None, None).unwrap(), b.open(None, None).unwrap());
        carry(&a, on_a, &b, on_b);
        carry(&b, on_b, &a, on_a);
        carry(&a, on_a, &b, on_b);
        assert_eq!(b.read(|s| s.get().copied()), None, "a's write is still held");
        assert_eq!(logs.count("synced"), 0, "a took b's Sync, but has yet to send its own");

        a.saved(u64::MAX);
        let mut bytes = Vec::new();
        a.poll_transmit(on_a, &mut bytes).expect("transmits");
        assert_eq!(logs.count("synced"), 1, "a's sync ended as it sent its Sync");
        b.handle(on_b, &bytes).expect("takes the bytes");
        assert_eq!(b.read(|s| s.get().copied()), Some(7), "the write went once saved");
        assert_eq!(logs.count("synced"), 2, "and b's as it took it");
    });
}

/// A set whose `reduce` panics on a write of 0; its snapshot goes in parts.
#[derive(Clone, Default)]
struct Fragile(GSet<u64>);

impl Reduce for Fragile {
    type Update = GSet<u64>;

    fn reduce(&mut self, update: GSet<u64>) -> Option<GSet<u64>> {
        assert!(!update.contains(&0), "a write of 0 breaks the state");
        self.0.reduce(update)
    }

    fn snapshot(&self) -> GSet<u64> {
        self.0.snapshot()
    }

    fn snapshot_part(&self, cursor: Option<&[u8]>, max: usize) -> (GSet<u64>, Option<Vec<u8>>) {
        self.0.snapshot_part(cursor, max)
    }
}

/// A write whose `reduce` panics poisons the replica, which cuts the
/// snapshots going out: each such stream's end is told (and its writer
/// woken to finish it) as the write fails, not whenever something else
/// happens next.
#[test]
fn a_write_that_cuts_a_snapshot_short_tells_of_the_end_at_once() {
    // A short history, so that b, lacking what fell off it, takes a
    // snapshot; small batches, so that the snapshot takes many calls.
    let mut config = Config::default();
    (config.history_limit, config.batch_bytes) = (16, 64);
    let sender = Replica::with_config(SourceId::new("a").unwrap(), Fragile::default(), config);
    let a = object("a", sender);
    let b = object("b", Replica::new(SourceId::new("b").unwrap(), Fragile::default()));
    for i in 1..=200 {
        a.update(GSet::add(i)).expect("a writes");
    }
    let mut ends = a.ends.subscribe();
    let (on_a, on_b) = (a.open(None, None).unwrap(), b.open(None, None).unwrap());
    carry(&a, on_a, &b, on_b);
    carry(&b, on_b, &a, on_a);
    carry(&a, on_a, &b, on_b);
    assert_eq!(a.lock().replica.stream_stats(on_a).unwrap().snapshots_sent, 0, "still going out");
    assert!(ends.try_recv().is_err(), "nothing ended yet");

    let broken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.update(GSet::add(0))));
    assert!(broken.is_err(), "the write panicked");
    let ended = ends.try_recv().expect("the cut stream's end is told");
    assert_eq!(ended.reason, EndReason::Aborted);
}

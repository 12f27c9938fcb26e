//! A poisoned replica (a local `reduce` panicked, leaving part of an update
//! in the state with no record) is saved without its state: its records
//! are appended, a snapshot waits for its rejoin, so a restart brings back
//! the state its records make, without the leftover.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use repred::{Config, Envelope, Reduce, Replica, SourceId, Timestamp};
use repred_store::{Store, StoreError};

const NOW: u64 = 1_700_000_000_000;

thread_local! {
    /// The value this thread's reduces panic at, when set.
    static POISON: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A grow-only set whose reduce takes an update's values from the highest
/// down and panics at the poisoned one, the higher ones already in.
#[derive(Clone, Debug, Default, PartialEq)]
struct Fragile(BTreeSet<u64>);

impl Reduce for Fragile {
    type Update = BTreeSet<u64>;

    fn reduce(&mut self, update: BTreeSet<u64>) -> Option<BTreeSet<u64>> {
        let mut added = BTreeSet::new();
        for value in update.into_iter().rev() {
            assert!(POISON.get() != Some(value), "the user's reduce fails at {value}");
            if self.0.insert(value) {
                added.insert(value);
            }
        }
        (!added.is_empty()).then_some(added)
    }

    fn snapshot(&self) -> BTreeSet<u64> {
        self.0.clone()
    }
}

/// `write` with 13 poisoned; whether it panicked.
fn poisoned_write(r: &mut Replica<Fragile>, write: BTreeSet<u64>) -> bool {
    POISON.set(Some(13));
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _ = r.update(NOW, write);
    }));
    POISON.set(None);
    panicked.is_err()
}

#[test]
fn a_poisoned_replica_saves_its_records_but_not_its_state() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("s.redb");
    let config = Config::default().history_limit(4);
    let peer = SourceId::new("peer").expect("an id");
    {
        let store = Store::open(&path).expect("open");
        let mut r = store.load_or_create::<Fragile>("f", config.clone()).expect("create");
        r.update(NOW, [1].into()).expect("a write");
        store.save("f", &r).expect("save");
        assert!(poisoned_write(&mut r, [100, 13].into()));
        assert!(r.is_poisoned());
        // A peer's update is a record: appended as usual.
        let ts = |i: u64| Timestamp::new(NOW + i, 0);
        r.apply(NOW, Envelope::new(peer, ts(1), [2].into()));
        assert_eq!(store.save("f", &r).expect("save"), 1, "the record is appended");
        // More than the log holds: the next save would be a snapshot of
        // the state, the leftover with it. It waits.
        for i in 2..10 {
            r.apply(NOW, Envelope::new(peer, ts(i), [i + 1].into()));
        }
        assert_eq!(store.save("f", &r).expect("save"), 0, "no snapshot of a poisoned state");
    }
    let store = Store::open(&path).expect("reopen");
    let r = store.load::<Fragile>("f", config.clone()).expect("load").expect("saved");
    assert_eq!(r.state().0, BTreeSet::from([1, 2]), "what its records make, not the leftover");

    // Once rejoined, the state is saved again (as a snapshot).
    let mut r = r;
    assert!(poisoned_write(&mut r, [100, 13].into()));
    r.rejoin(Fragile::default());
    r.update(NOW + 100, [5].into()).expect("a write after the rejoin");
    assert_eq!(store.save("f", &r).expect("save"), 1, "a snapshot");
    drop(store);
    let store = Store::open(&path).expect("reopen");
    let r = store.load::<Fragile>("f", config).expect("load").expect("saved");
    assert_eq!(r.state().0, BTreeSet::from([1, 5]), "the rejoined state: its kept writes");
}

#[test]
fn a_poisoned_replica_is_not_saved_a_first_time() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path().join("s.redb")).expect("open");
    let mut r = Replica::new(SourceId::new("r").expect("an id"), Fragile::default());
    assert!(poisoned_write(&mut r, [100, 13].into()));
    match store.save("f", &r) {
        Err(StoreError::Poisoned { name }) => assert_eq!(name, "f"),
        other => panic!("a poisoned replica's first save: {other:?}"),
    }
}

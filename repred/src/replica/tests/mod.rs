//! The replica's own tests: user code that panics (`panics`), rejoins
//! and floors (`rejoin`), and what they share: `Fragile`, a grow-only set
//! whose user code panics where a test says.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;
use crate::{Network, StreamOpts};

mod panics;
mod rejoin;

thread_local! {
    /// The value whose insertion panics, on this test's thread only.
    static POISON: Cell<Option<u64>> = const { Cell::new(None) };
    /// The value whose update's stamping panics, on this thread only.
    static STAMP_POISON: Cell<Option<u64>> = const { Cell::new(None) };
    /// The value whose unstamping panics when it is all the update
    /// holds (as a reduce returns it when the rest was there).
    static UNSTAMP_POISON: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A grow-only set whose reduce panics at the poisoned value, after
/// inserting the values before it in the same update: a user's bug that
/// leaves an update half in the state.
#[derive(Clone, Debug, Default, PartialEq)]
struct Fragile(BTreeSet<u64>);

impl Reduce for Fragile {
    type Update = Vec<u64>;

    fn reduce(&mut self, update: Vec<u64>) -> Option<Vec<u64>> {
        let mut added = Vec::new();
        for value in update {
            assert!(POISON.get() != Some(value), "the user's reduce fails at {value}");
            if self.0.insert(value) {
                added.push(value);
            }
        }
        (!added.is_empty()).then_some(added)
    }

    fn snapshot(&self) -> Vec<u64> {
        self.0.iter().copied().collect()
    }

    /// A user's bug before any reduce: stamping an update that holds
    /// the poisoned value panics.
    fn stamp(update: &mut Vec<u64>, _: Stamp) {
        if let Some(poison) = STAMP_POISON.get() {
            assert!(!update.contains(&poison), "the user's stamp fails at {poison}");
        }
    }

    fn unstamp(change: &mut Vec<u64>, _: Stamp) {
        if let Some(poison) = UNSTAMP_POISON.get() {
            assert!(change != &[poison], "the user's unstamp fails at {poison}");
        }
    }
}

fn id(name: &str) -> SourceId {
    SourceId::new(name).expect("a valid test id")
}

/// A signing replica shows its progress with a signed proof, which a
/// peer that takes no unsigned word takes: its clock and `peer_heard`
/// move; an unsigned advance it refuses.
#[test]
fn a_signing_replica_shows_progress_to_a_strict_peer() {
    let signer = Identity::from_secret([7; 32]);
    let mut net = Network::new();
    let strict = Config::default().require_signatures(true);
    let a = net.add(Replica::with_config(id("a"), Fragile::default(), strict));
    let b = net.add(Replica::with_identity(signer, Fragile::default(), Config::default()));
    let c = net.add(Replica::new(id("c"), Fragile::default()));
    let to_b = net.link(a, b);
    let to_c = net.link(a, c);
    net.update(b, vec![1]).expect("b's write");
    net.pump();
    let now = net.now() + 5;
    let shown = net[b].show_progress(now).expect("a progress");
    let unsigned = net[c].show_progress(now).expect("a progress");
    net.pump();
    let [(_, on_b), _] = net.streams(to_b);
    let [(_, on_c), _] = net.streams(to_c);
    assert_eq!(net[a].clock().get(shown.source), shown.ts, "the proof moved a's clock");
    assert_eq!(net[a].peer_heard(on_b), Some(shown.ts));
    assert_eq!(net[a].clock().get(unsigned.source), Timestamp::ZERO, "refused, unsigned");
    assert!(net[a].peer_heard(on_c) < Some(unsigned.ts));
    assert_eq!(net[a].state().0, BTreeSet::from([1]), "nothing changed");
}

/// Runs `write` on `r` with `POISON` at 13; whether it panicked.
fn poisoned_write<T: Reduce>(r: &mut Replica<T>, now: u64, write: T::Update) -> bool {
    POISON.set(Some(13));
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _ = r.update(now, write);
    }));
    POISON.set(None);
    panicked.is_err()
}

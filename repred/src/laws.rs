//! Checks that a [`Reduce`] is a lawful join, in one line of a test.
//!
//! ```
//! use proptest::prelude::*;
//! use repred::{GSet, laws};
//!
//! laws::check::<GSet<u8>>(prop::collection::btree_set(0u8..8, 0..4).prop_map(GSet::from_iter));
//! ```
//!
//! Generated updates are stamped as a replica would stamp them (each with
//! its own [`Stamp`], from one of three sources), so lattices that keep
//! stamps are checked as they run. The laws:
//!
//! - **commutativity**: any order of the same updates gives the same state;
//! - **associativity**: merging a group of updates first (as a snapshot)
//!   and then the rest gives the same state as merging them one by one;
//! - **idempotence**: an update merged again changes nothing and returns
//!   `None`;
//! - **exact change**: the returned change, merged into the old state, gives
//!   the new state; `None` only when the state did not change, `Some` only
//!   when it did;
//! - **snapshot**: the snapshot merged into an empty state gives the state.
//!
//! A violation panics with the law's name and proptest's smallest failing
//! input.

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

use crate::{Reduce, SourceId, Stamp, Timestamp};

/// Up to this many updates per case.
const MAX_UPDATES: usize = 6;

fn stamp_of(i: usize, source: u8) -> Stamp {
    let name = [b's', b'0' + source];
    let source = SourceId::new(name).unwrap_or_else(|_| SourceId::random());
    Stamp { ts: Timestamp::new(1_000 + i as u64, 0), source }
}

fn apply<T: Reduce>(state: &mut T, update: &T::Update, stamp: Stamp) -> Option<T::Update> {
    let mut update = update.clone();
    T::stamp(&mut update, stamp);
    state.reduce(update)
}

fn fold<T: Reduce + Default>(updates: &[(T::Update, Stamp)]) -> T {
    let mut state = T::default();
    for (u, s) in updates {
        apply(&mut state, u, *s);
    }
    state
}

/// Checks every law on `T` over updates drawn from `updates` (256 cases).
///
/// # Panics
/// With the violated law and the smallest failing input, when one fails.
pub fn check<T>(updates: impl Strategy<Value = T::Update>)
where
    T: Reduce + Default + Clone + PartialEq + Debug,
    T::Update: Debug,
{
    check_with::<T>(Config::with_cases(256), updates)
}

/// [`check`] with a proptest configuration of your own.
///
/// # Panics
/// With the violated law and the smallest failing input, when one fails.
pub fn check_with<T>(config: Config, updates: impl Strategy<Value = T::Update>)
where
    T: Reduce + Default + Clone + PartialEq + Debug,
    T::Update: Debug,
{
    let cases = (
        prop::collection::vec((updates, 0u8..3), 1..=MAX_UPDATES),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
    );
    let mut runner = TestRunner::new(config);
    let result = runner.run(&cases, |(raw, split, pick)| {
        let updates: Vec<(T::Update, Stamp)> =
            raw.into_iter().enumerate().map(|(i, (u, s))| (u, stamp_of(i, s))).collect();
        let all = fold::<T>(&updates);

        // Commutativity: the reverse order and a rotation agree.
        let mut reversed = updates.clone();
        reversed.reverse();
        prop_assert_eq!(
            &fold::<T>(&reversed),
            &all,
            "law violated: commutativity (reversed order)"
        );
        let mut rotated = updates.clone();
        rotated.rotate_left(split.index(updates.len()));
        prop_assert_eq!(&fold::<T>(&rotated), &all, "law violated: commutativity (rotated order)");

        // Associativity: a group merged as one snapshot, then the rest.
        let cut = split.index(updates.len() + 1);
        let group = fold::<T>(&updates[..cut]).snapshot();
        let mut grouped = T::default();
        grouped.reduce(group);
        for (u, s) in &updates[cut..] {
            apply(&mut grouped, u, *s);
        }
        prop_assert_eq!(
            &grouped,
            &all,
            "law violated: associativity (group of {} merged first)",
            cut
        );

        // Idempotence: everything again changes nothing.
        let mut again = all.clone();
        for (u, s) in &updates {
            let change = apply(&mut again, u, *s);
            prop_assert!(
                change.is_none(),
                "law violated: idempotence (a repeat returned {:?})",
                change
            );
        }
        prop_assert_eq!(&again, &all, "law violated: idempotence (a repeat changed the state)");

        // Exact change, at every step.
        let mut state = T::default();
        for (u, s) in &updates {
            let old = state.clone();
            match apply(&mut state, u, *s) {
                None => prop_assert_eq!(
                    &state,
                    &old,
                    "law violated: exact change (None, but the state changed)"
                ),
                Some(mut change) => {
                    prop_assert!(
                        state != old,
                        "law violated: exact change (Some, but the state did not change)"
                    );
                    // The change travels unstamped and is stamped again on arrival.
                    T::unstamp(&mut change, *s);
                    let mut replay = old.clone();
                    apply(&mut replay, &change, *s);
                    prop_assert_eq!(
                        &replay,
                        &state,
                        "law violated: exact change (the change does not rebuild the new state)"
                    );
                }
            }
        }

        // Snapshot: rebuilds the whole state.
        let mut rebuilt = T::default();
        rebuilt.reduce(all.snapshot());
        prop_assert_eq!(&rebuilt, &all, "law violated: snapshot (does not rebuild the state)");
        let _ = pick;
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (raw, split, _))) => panic!(
            "repred::laws: {} fails for {}\nminimal failing input: updates {:#?}, split {:?}",
            reason.message(),
            std::any::type_name::<T>(),
            raw,
            split,
        ),
        Err(TestError::Abort(reason)) => {
            panic!(
                "repred::laws: the check of {} was aborted: {reason}",
                std::any::type_name::<T>()
            )
        }
    }
}

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
//! its own [`Stamp`], from one of three sources, equal timestamps included so
//! that tie-breaks by source are exercised), so lattices that keep stamps are
//! checked as they run. The laws:
//!
//! - **commutativity**: any order of the same updates gives the same state;
//! - **associativity**: the updates cut into three groups `a`, `b`, `c`,
//!   each folded on its own: `(a ⊔ b) ⊔ c` and `a ⊔ (b ⊔ c)` (joining whole
//!   states, as snapshots) both give the state of merging them one by one;
//! - **idempotence**: an update merged again, or a state's own snapshot,
//!   changes nothing and returns `None`;
//! - **exact change**: the returned change, merged into the old state, gives
//!   the new state; `None` only when the state did not change, `Some` only
//!   when it did;
//! - **snapshot**: the snapshot merged into an empty state gives the state,
//!   and so do its parts ([`Reduce::snapshot_part`], one entry a part and
//!   three) merged one after the other into a state that first reserved
//!   room for them ([`Reduce::reserve`] of [`Reduce::entries_hint`]).
//!
//! A violation panics with the law's name and proptest's smallest failing
//! input; [`try_check`] returns it as a [`LawError`] instead.

use std::collections::BTreeSet;
use std::fmt::Debug;

use postcard::ser_flavors::{AllocVec, Flavor};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::{Reduce, SourceId, Stamp, Timestamp};

/// Up to this many updates per case: enough for three groups of two, few
/// enough that a shrunk counterexample stays readable.
const MAX_UPDATES: usize = 6;

/// Sources the generated updates come from.
const SOURCES: u8 = 3;

/// Gives every generated update a distinct stamp, as distinct replicas
/// would: `(tick, source)` pairs drawn by proptest, so equal timestamps from
/// different sources occur (and source-id tie-breaks get checked), with a
/// repeated pair moved one tick later (one replica never issues a stamp
/// twice).
fn stamps(raw: &[(u8, u8)]) -> Vec<Stamp> {
    let mut used = BTreeSet::new();
    raw.iter()
        .map(|&(tick, source)| {
            let name = [b's', b'0' + source % SOURCES];
            // Two ASCII bytes are always a valid id; the fallback only keeps
            // this free of `unwrap`.
            let source = SourceId::new(name).unwrap_or_else(|_| SourceId::random());
            let mut ts = 1_000 + u64::from(tick);
            while !used.insert((ts, source)) {
                ts += 1;
            }
            Stamp { ts: Timestamp::new(ts, 0), source }
        })
        .collect()
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

/// `into` joined with the whole of `other`, as a replica merges a snapshot.
fn join<T: Reduce + Clone>(into: &T, other: &T) -> T {
    let mut joined = into.clone();
    joined.reduce(other.snapshot());
    joined
}

/// Fails with `law` unless `got` is `want`.
fn same<T: PartialEq + Debug>(got: &T, want: &T, law: String) -> Result<(), TestCaseError> {
    if got == want {
        return Ok(());
    }
    Err(TestCaseError::fail(format!(
        "law violated: {law}\n  this way:         {got:?}\n  one by one, once: {want:?}"
    )))
}

/// Fails with `law` unless `ok`.
fn holds(ok: bool, law: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok { Ok(()) } else { Err(TestCaseError::fail(format!("law violated: {}", law()))) }
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LawError {
    /// A law does not hold.
    #[error(
        "repred::laws: {type_name} is not a lawful join.\n{law}\n\
         minimal failing input (updates in order, each with its stamp): {input}\n\
         group split points: {splits}"
    )]
    Violated {
        /// The type checked.
        type_name: &'static str,
        /// The law, how it failed, and the two states compared
        /// (`law violated: idempotence (...)`).
        law: String,
        /// proptest's smallest failing input: the updates in order, each
        /// with its stamp (`{:#?}`).
        input: String,
        /// Where the updates were cut into three groups for associativity.
        splits: String,
    },
    /// proptest gave up (too many rejected inputs from the strategy).
    #[error("repred::laws: the check of {type_name} was aborted: {reason}")]
    Aborted {
        /// The type checked.
        type_name: &'static str,
        /// What proptest said.
        reason: String,
    },
}

/// The default configuration: 256 cases, no regression files (the caller's
/// test is the place to pin a case).
fn default_config() -> Config {
    Config { cases: 256, failure_persistence: None, ..Config::default() }
}

/// Checks every law on `T` over updates drawn from `updates` (256 cases).
///
/// # Panics
/// With the violated law and the smallest failing input, when one fails
/// ([`try_check`] returns it instead).
pub fn check<T>(updates: impl Strategy<Value = T::Update>)
where
    T: Reduce + Default + Clone + PartialEq + Debug,
    T::Update: Debug,
{
    check_with::<T>(default_config(), updates)
}

/// [`check`] with a proptest configuration of your own (more cases, a fixed
/// seed, failure persistence).
///
/// # Panics
/// With the violated law and the smallest failing input, when one fails.
pub fn check_with<T>(config: Config, updates: impl Strategy<Value = T::Update>)
where
    T: Reduce + Default + Clone + PartialEq + Debug,
    T::Update: Debug,
{
    if let Err(e) = try_check_with::<T>(config, updates) {
        panic!("{e}")
    }
}

/// [`check`], returning the violation instead of panicking: for a report
/// of your own, or to show a broken reducer failing.
///
/// ```
/// use proptest::prelude::*;
/// use repred::{Reduce, laws};
///
/// /// A tally: adds every update, so an update seen twice counts twice.
/// #[derive(Clone, Default, Debug, PartialEq)]
/// struct Tally(u64);
///
/// impl Reduce for Tally {
///     type Update = u64;
///     fn reduce(&mut self, n: u64) -> Option<u64> {
///         self.0 += n;
///         (n > 0).then_some(n)
///     }
///     fn snapshot(&self) -> u64 {
///         self.0
///     }
/// }
///
/// let failure = laws::try_check::<Tally>(1..10u64).unwrap_err();
/// assert!(matches!(&failure, laws::LawError::Violated { law, .. } if law.contains("idempotence")));
/// ```
pub fn try_check<T>(updates: impl Strategy<Value = T::Update>) -> Result<(), LawError>
where
    T: Reduce + Default + Clone + PartialEq + Debug,
    T::Update: Debug,
{
    try_check_with::<T>(default_config(), updates)
}

/// [`check_with`], returning the violation instead of panicking.
pub fn try_check_with<T>(
    config: Config,
    updates: impl Strategy<Value = T::Update>,
) -> Result<(), LawError>
where
    T: Reduce + Default + Clone + PartialEq + Debug,
    T::Update: Debug,
{
    let cases = (
        prop::collection::vec((updates, 0u8..MAX_UPDATES as u8, 0u8..SOURCES), 1..=MAX_UPDATES),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
    );
    let mut runner = TestRunner::new(config);
    let result = runner.run(&cases, |(raw, first, second)| {
        let ticks: Vec<(u8, u8)> = raw.iter().map(|(_, t, s)| (*t, *s)).collect();
        let updates: Vec<(T::Update, Stamp)> =
            raw.into_iter().map(|(u, _, _)| u).zip(stamps(&ticks)).collect();
        let all = fold::<T>(&updates);
        let n = updates.len();

        // Commutativity: the reverse order and a rotation agree.
        let mut reversed = updates.clone();
        reversed.reverse();
        same(
            &fold::<T>(&reversed),
            &all,
            "commutativity (the updates in reverse order give another state)".into(),
        )?;
        let mut rotated = updates.clone();
        rotated.rotate_left(first.index(n));
        same(
            &fold::<T>(&rotated),
            &all,
            format!("commutativity (the updates rotated by {} give another state)", first.index(n)),
        )?;

        // Associativity: three groups, each folded on its own, then joined
        // as snapshots both ways round; both must be the one-by-one state.
        let (i, j) = {
            let (x, y) = (first.index(n + 1), second.index(n + 1));
            (x.min(y), x.max(y))
        };
        let a = fold::<T>(&updates[..i]);
        let b = fold::<T>(&updates[i..j]);
        let c = fold::<T>(&updates[j..]);
        let groups = format!("groups a, b, c of {}, {} and {} updates", i, j - i, n - j);
        same(&join(&join(&a, &b), &c), &all, format!("associativity ((a ⊔ b) ⊔ c, {groups})"))?;
        same(&join(&a, &join(&b, &c)), &all, format!("associativity (a ⊔ (b ⊔ c), {groups})"))?;
        // ...and joining whole states commutes too.
        same(&join(&join(&c, &b), &a), &all, format!("commutativity ((c ⊔ b) ⊔ a, {groups})"))?;

        // Idempotence: everything again changes nothing, and so does a
        // state joined with itself.
        let mut again = all.clone();
        for (u, s) in &updates {
            let change = apply(&mut again, u, *s);
            holds(change.is_none(), || {
                format!("idempotence (the update {u:?} applied again returned {change:?})")
            })?;
        }
        same(&again, &all, "idempotence (the updates applied again changed the state)".into())?;
        let mut doubled = all.clone();
        let change = doubled.reduce(all.snapshot());
        holds(change.is_none(), || {
            format!("idempotence (the state's own snapshot returned {change:?})")
        })?;
        same(&doubled, &all, "idempotence (the state's own snapshot changed it)".into())?;

        // Exact change, at every step.
        let mut state = T::default();
        for (u, s) in &updates {
            let old = state.clone();
            match apply(&mut state, u, *s) {
                None => same(
                    &state,
                    &old,
                    format!("exact change (None returned, but the state changed; update {u:?})"),
                )?,
                Some(mut change) => {
                    holds(state != old, || {
                        format!(
                            "exact change (Some({change:?}) returned, but the state did not change)"
                        )
                    })?;
                    // The change travels unstamped and is stamped again on
                    // arrival, exactly as a replica records and forwards it.
                    T::unstamp(&mut change, *s);
                    let mut replay = old.clone();
                    apply(&mut replay, &change, *s);
                    same(
                        &replay,
                        &state,
                        format!(
                            "exact change (the returned change {change:?} does not rebuild the new state from the old)"
                        ),
                    )?;
                }
            }
        }

        // Snapshot: rebuilds the whole state.
        let mut rebuilt = T::default();
        rebuilt.reduce(all.snapshot());
        same(&rebuilt, &all, "snapshot (merged into an empty state, it rebuilds another)".into())?;

        // Snapshot in parts, of one entry and of three: their join rebuilds
        // the state too, and the parts end.
        for max in [1, 3] {
            let mut rebuilt = T::default();
            // As a receiver does with the sender's size hint: a
            // reservation must not change what the parts build.
            if let Some(entries) = all.entries_hint() {
                rebuilt.reserve(entries);
            }
            let mut cursor: Option<Vec<u8>> = None;
            let mut parts = 0usize;
            loop {
                let (part, next) = all.snapshot_part(cursor.as_deref(), max);
                // Sent, a part is encoded straight from the state: the
                // same bytes and the same next cursor.
                let mut direct = postcard::Serializer { output: AllocVec::new() };
                let direct_next = all
                    .serialize_snapshot_part(cursor.as_deref(), max, &mut direct)
                    .map_err(|e| TestCaseError::fail(format!("serialize_snapshot_part: {e}")))?;
                let direct = direct
                    .output
                    .finalize()
                    .map_err(|e| TestCaseError::fail(format!("serialize_snapshot_part: {e}")))?;
                let built = postcard::to_allocvec(&part)
                    .map_err(|e| TestCaseError::fail(format!("a part's encoding: {e}")))?;
                holds(direct == built && direct_next == next, || {
                    format!(
                        "snapshot parts (max {max}): serialize_snapshot_part does not encode what snapshot_part returns ({direct:?} against {built:?})"
                    )
                })?;
                rebuilt.reduce(part);
                parts += 1;
                holds(parts <= 100_000, || {
                    format!("snapshot parts (max {max}): more than 100,000 parts, a loop?")
                })?;
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            same(
                &rebuilt,
                &all,
                format!("snapshot parts (max {max}: joined, they rebuild another state)"),
            )?;
        }
        Ok(())
    });
    let type_name = std::any::type_name::<T>();
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, (raw, first, second))) => {
            let ticks: Vec<(u8, u8)> = raw.iter().map(|(_, t, s)| (*t, *s)).collect();
            let updates: Vec<(T::Update, Stamp)> =
                raw.into_iter().map(|(u, _, _)| u).zip(stamps(&ticks)).collect();
            Err(LawError::Violated {
                type_name,
                law: reason.message().to_string(),
                input: format!("{updates:#?}"),
                splits: format!("{first:?}, {second:?}"),
            })
        }
        Err(TestError::Abort(reason)) => {
            Err(LawError::Aborted { type_name, reason: reason.to_string() })
        }
    }
}

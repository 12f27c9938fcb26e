//! Stock lattices: states that merge by themselves, to compose instead of
//! writing a reduce by hand.
//!
//! | lattice | for | its change |
//! |---|---|---|
//! | [`Max`], [`Min`] | a high-water mark, a deadline | the new value |
//! | [`LwwRegister`] | one value, the newest write wins | the winning write |
//! | [`LwwMap`] | scuttlebutt's model: key -> value, newest write per key | the keys that changed |
//! | [`GSet`] | a set that only grows | the new elements |
//! | [`OrSet`] | a set with removes; re-adding works | new tags and tombstones |
//! | [`GCounter`], [`PnCounter`] | counts from many writers | the writers' new totals |
//! | [`LatticeMap`] | key -> any lattice | the keys' changes |
//! | [`EventLog`] | scuttlebutt's reliable events: every event kept | the new events |
//!
//! **Writing to a lattice.** Every update is made by a function named after
//! what it does, and returns the lattice's [`Update`](crate::Reduce::Update):
//!
//! - a write that needs nothing from the current state is an associated
//!   function: [`Max::set`], [`Min::set`], [`LwwRegister::set`],
//!   [`LwwMap::set`] and [`LwwMap::delete`], [`GSet::add`], [`OrSet::add`],
//!   [`EventLog::emit`], [`LatticeMap::update`];
//! - its `_all` form writes many under the update's one stamp:
//!   [`LwwMap::set_all`], [`LwwMap::delete_all`], [`GSet::add_all`],
//!   [`OrSet::add_all`];
//! - a write that depends on what the replica holds is a method on the
//!   state: [`OrSet::remove`] (takes out the adds this replica has seen),
//!   [`GCounter::increment`], [`PnCounter::increment`] and
//!   [`PnCounter::decrement`] (a writer's new total travels, not a delta,
//!   so a repeated update never counts twice; the writer is the replica's
//!   own id, `replica.id()`);
//! - registers also convert from a bare value (`From<T>` for [`Max`],
//!   [`Min`] and [`LwwRegister`]; `new` on `Max` and `Min`), so a derived
//!   change takes one: `PlayerChange::best(42)`.
//!
//! ```
//! use repred::{GCounter, GSet, Max, Reduce, SourceId};
//!
//! let mut best = Max::default();
//! best.reduce(Max::set(3));
//! best.reduce(Max::from(5));
//! assert_eq!(best.get(), Some(&5));
//!
//! let mut tags = GSet::default();
//! tags.reduce(GSet::add_all(["red".to_string(), "blue".to_string()]));
//! assert_eq!(tags.len(), 2);
//!
//! // A state-dependent write: read the state, then write.
//! let me = SourceId::new("me")?;
//! let mut hits = GCounter::default();
//! hits.reduce(hits.increment(me, 2));
//! hits.reduce(hits.increment(me, 1));
//! assert_eq!(hits.value(), 3);
//! # Ok::<(), repred::InvalidSourceId>(())
//! ```
//!
//! Lattices whose merge needs to know which write is newest keep a
//! [`Stamp`](crate::Stamp) per part. A part written locally leaves it unset
//! ([`Stamped::now`]); the replica fills it in with the update's own stamp, and
//! leaves it out on the wire when it is that stamp.

/// Serde for a state that holds derived data (counts, indexes): it travels
/// as its snapshot and is rebuilt by merging that into an empty state, so
/// nothing derived is trusted from the outside, and a tampered copy is at
/// worst a different lawful state.
macro_rules! serde_as_snapshot {
    ([$($g:tt)*] $ty:ty) => {
        impl<$($g)*> ::serde::Serialize for $ty
        where
            $ty: $crate::Reduce,
        {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                ::serde::Serialize::serialize(&$crate::Reduce::snapshot(self), serializer)
            }
        }

        impl<'de, $($g)*> ::serde::Deserialize<'de> for $ty
        where
            $ty: $crate::Reduce + Default,
        {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                let snapshot = <<$ty as $crate::Reduce>::Update as ::serde::Deserialize>::deserialize(
                    deserializer,
                )?;
                let mut state = <$ty>::default();
                $crate::Reduce::reduce(&mut state, snapshot);
                Ok(state)
            }
        }
    };
}
pub(crate) use serde_as_snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where a part of a sorted collection starts: after the key the cursor
/// names (the cursor is postcard of the last key sent).
fn after<K: DeserializeOwned>(cursor: Option<&[u8]>) -> Bound<K> {
    match cursor.and_then(|c| postcard::from_bytes(c).ok()) {
        Some(key) => Bound::Excluded(key),
        None => Bound::Unbounded,
    }
}

/// The cursor after `last`, if there is more; `None` also when the key does
/// not encode (then the part was the last one anyway: better a short part
/// than a loop).
fn cursor_after<K: Serialize>(last: Option<&K>, more: bool) -> Option<Vec<u8>> {
    if !more {
        return None;
    }
    postcard::to_allocvec(last?).ok()
}

/// The entries of `map` after the cursor, at most `max` (at least one),
/// and the cursor of the next part: how sorted stock lattices split their
/// snapshots.
pub(crate) fn map_part<'a, K, V>(
    map: &'a BTreeMap<K, V>,
    cursor: Option<&[u8]>,
    max: usize,
) -> (Vec<(&'a K, &'a V)>, Option<Vec<u8>>)
where
    K: Ord + Serialize + DeserializeOwned,
{
    let mut range = map.range((after::<K>(cursor), Bound::Unbounded));
    let part: Vec<(&K, &V)> = range.by_ref().take(max.max(1)).collect();
    let more = range.next().is_some();
    let next = cursor_after(part.last().map(|(k, _)| *k), more);
    (part, next)
}

/// [`map_part`] for a set.
pub(crate) fn set_part<'a, T>(
    set: &'a BTreeSet<T>,
    cursor: Option<&[u8]>,
    max: usize,
) -> (Vec<&'a T>, Option<Vec<u8>>)
where
    T: Ord + Serialize + DeserializeOwned,
{
    let mut range = set.range((after::<T>(cursor), Bound::Unbounded));
    let part: Vec<&T> = range.by_ref().take(max.max(1)).collect();
    let more = range.next().is_some();
    let next = cursor_after(part.last().copied(), more);
    (part, next)
}

/// A cursor that walks several collections in turn: which one, and where
/// in it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Phase {
    pub(crate) phase: u32,
    pub(crate) inner: Option<Vec<u8>>,
}

impl Phase {
    pub(crate) fn read(cursor: Option<&[u8]>) -> Self {
        cursor.and_then(|c| postcard::from_bytes(c).ok()).unwrap_or(Phase { phase: 0, inner: None })
    }

    /// The cursor after a part of phase `phase` that ended at `inner`
    /// (`None`: that phase is done; the next starts, unless it was the
    /// last of `phases`).
    pub(crate) fn next(phase: u32, inner: Option<Vec<u8>>, phases: u32) -> Option<Vec<u8>> {
        let next = match inner {
            Some(inner) => Phase { phase, inner: Some(inner) },
            None if phase + 1 < phases => Phase { phase: phase + 1, inner: None },
            None => return None,
        };
        postcard::to_allocvec(&next).ok()
    }
}

mod counter;
mod log;
mod lww;
mod map;
mod max;
mod set;

pub use counter::{GCounter, PnCounter};
pub use log::{EventLog, Logged};
pub use lww::{LwwMap, LwwRegister, Stamped, Writes};
pub use map::LatticeMap;
pub use max::{Max, Min};
pub use set::{GSet, OrSet, OrSetUpdate};

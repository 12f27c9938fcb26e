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

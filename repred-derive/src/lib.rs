//! `#[derive(Replicated)]`: the proc macro behind `repred::Replicated`.
//!
//! Use it through `repred` (feature `derive`, on by default):
//!
//! ```
//! use repred::{GSet, LwwRegister, Max, Reduce, Replicated};
//!
//! /// Each field a lattice: the derive writes the merge and `PlayerChange`.
//! #[derive(Replicated, Default, Debug)]
//! struct Player {
//!     name: LwwRegister<String>,
//!     best: Max<u32>,
//!     badges: GSet<String>,
//! }
//!
//! let mut player = Player::default();
//! let change = player.reduce(PlayerChange::best(42).with_badges(GSet::add("first".into())));
//! assert_eq!(format!("{change:?}"), r#"Some(PlayerChange { best: Max(Some(42)), badges: GSet({"first"}) })"#);
//! assert_eq!(player.reduce(PlayerChange::best(7)), None, "below the best: nothing changed");
//! ```
//!
//! See [`Replicated`] for both modes and every key, and the `repred` crate
//! docs for replicas. The expansion runs in phases, as in serde_derive:
//! `ast` parses the input keeping spans, `attr` reads the
//! `#[replicated(...)]` attributes, `check` validates (collecting every
//! error), and `expand` writes the code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ast;
mod attr;
mod check;
mod expand;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `repred::Reduce` for a struct: field by field (each field a
/// lattice), or with your own `#[replicated(reduce = .., update = ..)]`.
///
/// Field by field, it also writes `<Name>Change`: one
/// `Option<<Field as Reduce>::Update>` per replicated field (serde, `Debug`,
/// `Clone`, `PartialEq`, `Default`), so a change to one field travels without
/// the others. Its visibility is the struct's, each field's the field's; doc
/// comments and `#[serde(...)]` attributes on fields are copied over (they
/// apply to the field's `Option<Update>`). Its `Debug` lists only the fields
/// that changed.
///
/// A change is written in one call: `PlayerChange::best(42)` changes `best`
/// alone, and `.with_name(..)` adds another field; each takes the field's
/// update or anything that converts into it (`Max<T>` and `LwwRegister<T>`
/// from a bare `T`). A field named `default` gets no constructor (it would
/// hide `Default::default`), only its `with_default`; a `with_x` method is
/// left out when a field is itself named `with_x`.
///
/// A field whose type can never be a lattice (a primitive, a std string or
/// collection, `Option`, a tuple or an array: repred implements `Reduce` for
/// none, and nobody else may) is reported at the field with what to use
/// instead, and left out of the generated code, so that uses of the type
/// add no errors of their own. A bare name is taken as std's: write a type
/// of your own that shadows one (`Vec`) with its path (`crate::Vec`).
///
/// Keys of `#[replicated(...)]` on the struct:
///
/// | key | meaning |
/// |---|---|
/// | `reduce = path` | your merge, a `fn(&mut Self, Update) -> Option<Update>` returning what changed |
/// | `update = Type` | what travels (with `reduce`); `Self` sends the state itself |
/// | `snapshot = path` | a `fn(&Self) -> Update`: the whole state (with `reduce`, unless `update = Self`) |
/// | `bound = "T: Ord"` | extra where-predicates on the generated impl, for what your merge needs |
/// | `change = Name` | the change type's name, instead of `<Name>Change` (field by field) |
///
/// On a field: `skip` keeps a local-only field out of replication; it must
/// be `Default` (a replica built from a snapshot starts it from there).
///
/// Generic structs get the bounds the fields need (`F: Reduce`, serde on
/// the update) on the generated impls, not on the struct. See the `repred`
/// crate docs and README for examples; `tests/ui/` pins what compiles and
/// the errors of what does not.
#[proc_macro_derive(Replicated, attributes(replicated, serde))]
pub fn derive_replicated(input: TokenStream) -> TokenStream {
    expand::derive(&parse_macro_input!(input as DeriveInput)).into()
}

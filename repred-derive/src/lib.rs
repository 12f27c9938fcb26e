//! `#[derive(Replicated)]`: the proc macro behind `repred::Replicated`.
//!
//! Use it through `repred` (feature `derive`, on by default); see the
//! `repred` crate docs for examples. The expansion runs in phases, as in
//! serde_derive: [`ast`] parses the input keeping spans, [`attr`] reads the
//! `#[replicated(...)]` attributes, [`check`] validates (collecting every
//! error), and [`expand`] writes the code.

mod ast;
mod attr;
mod check;
mod expand;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `repred::Reduce` for a struct: field by field (each field a
/// lattice), or with your own `#[replicated(reduce = .., update = ..)]`.
#[proc_macro_derive(Replicated, attributes(replicated, serde))]
pub fn derive_replicated(input: TokenStream) -> TokenStream {
    expand::derive(&parse_macro_input!(input as DeriveInput)).into()
}

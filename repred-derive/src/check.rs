//! Errors, collected so that a user sees every mistake in one compile.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{GenericArgument, PathArguments, Type};

use crate::ast::Input;

/// Collects errors; `check` combines them into one.
#[derive(Default)]
pub struct Ctxt {
    errors: Vec<syn::Error>,
    /// An attribute did not parse: what the user meant is unknown, so only
    /// a stub is generated.
    unparsed: bool,
}

impl Ctxt {
    pub fn error(&mut self, span: Span, message: impl std::fmt::Display) {
        self.errors.push(syn::Error::new(span, message));
    }

    /// An attribute that did not parse; see [`Ctxt::is_unparsed`].
    pub fn unparsed(&mut self, error: syn::Error) {
        self.unparsed = true;
        self.errors.push(error);
    }

    /// Whether some attribute did not parse.
    pub fn is_unparsed(&self) -> bool {
        self.unparsed
    }

    /// All errors so far as one, or `Ok` when there were none.
    pub fn check(self) -> Result<(), syn::Error> {
        let mut errors = self.errors.into_iter();
        let Some(mut first) = errors.next() else { return Ok(()) };
        for e in errors {
            first.combine(e);
        }
        Err(first)
    }
}

/// Checks the combination of attributes; returns whether the real impls
/// can still be generated. A key that is merely misplaced is reported and
/// ignored (the impls are generated, so that uses of the type add no errors
/// of their own); a mode that cannot be completed is not.
pub fn validate(cx: &mut Ctxt, input: &Input) -> bool {
    let a = &input.attrs;
    // The rest of a broken attribute was not read: checking what is
    // missing from it would only add false errors.
    if cx.is_unparsed() {
        return false;
    }
    match (&a.reduce, &a.update) {
        (Some(reduce), None) => {
            cx.error(
                reduce.key,
                "`reduce` needs `update = Type` too: the type your reduce function takes and \
                 returns, e.g. #[replicated(reduce = merge, update = MyUpdate)]",
            );
            false
        }
        (None, Some(update)) => {
            cx.error(
                update.key,
                "`update` goes with `reduce = path::to_fn`, your merge function; without them \
                 each field must be a lattice",
            );
            false
        }
        (Some(_), Some(update)) => {
            let complete = is_self(&update.value) || a.snapshot.is_some();
            if !complete {
                cx.error(
                    update.key,
                    "add `snapshot = path::to_fn` (a `fn(&Self) -> Update` giving the whole state \
                     as one update), or use `update = Self` to send the state itself",
                );
            }
            // Misplaced keys from here on: reported, ignored.
            if let Some(change) = &a.change {
                cx.error(
                    change.key,
                    "`change` names the change type of field-wise replication; with your own \
                     `reduce`, the change type is your `update`",
                );
            }
            for f in &input.fields {
                if let Some(skip) = f.attrs.skip {
                    cx.error(
                        skip,
                        "`skip` only applies to field-wise replication; with your own `reduce`, \
                         leave the field out in your function",
                    );
                }
            }
            complete
        }
        (None, None) => {
            if let Some(snapshot) = &a.snapshot {
                cx.error(
                    snapshot.key,
                    "`snapshot` goes with `reduce` and `update`; field-wise replication makes its \
                     own",
                );
            }
            // Reported here, and left out of the generated code (see
            // `Input::replicated`), so the impls hold and uses of the type
            // add no errors of their own.
            for f in input.fields.iter().filter(|f| f.attrs.skip.is_none()) {
                if let Some(message) = plain_type(f.ty) {
                    cx.error(f.ty.span(), message);
                }
            }
            true
        }
    }
}

/// Whether the update type is written `Self`: the state travels as is.
pub fn is_self(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

/// Why a field's type can never be a lattice, with what to use instead;
/// `None` when it may be one.
///
/// Only types whose answer is certain: primitives, std's strings and
/// collections, `Option`, tuples, arrays and slices. repred implements
/// `Reduce` for none of them, and the orphan rule keeps every other crate
/// from doing it, so the derive can say so itself, point at the field and
/// leave the field out of what it generates: the impls then hold, and the
/// uses of the type add no errors of their own. (Whether any other type is
/// a lattice only the compiler knows; it reports a type that is not at the
/// field too, through the bounds of the generated impls.) A path is read as
/// std's when it is a bare name or starts with `std`, `core` or `alloc`: a
/// type of your own that shadows a std name is written with its path
/// (`crate::Vec`).
pub fn plain_type(ty: &Type) -> Option<String> {
    let shown = show(ty);
    let instead = match ty {
        Type::Paren(p) => return plain_type(&p.elem),
        Type::Group(g) => return plain_type(&g.elem),
        Type::Tuple(t) if t.elems.is_empty() => {
            "remove the field, or use a lattice such as `LwwRegister<T>`".to_string()
        }
        Type::Tuple(_) => "give each part a field of its own, each a lattice".to_string(),
        Type::Array(_) | Type::Slice(_) => {
            "use `EventLog<T>` (append-only), `repred::doc::Seq<T>` (an ordered list) or \
             `LwwRegister<Vec<T>>` (the whole list, the newest write wins)"
                .to_string()
        }
        Type::Path(p) if p.qself.is_none() => {
            let segments = &p.path.segments;
            let std_path = segments.len() == 1
                || segments.first().is_some_and(|s| {
                    ["std", "core", "alloc"].contains(&s.ident.to_string().as_str())
                });
            let last = segments.last()?;
            if !std_path {
                return None;
            }
            let args = type_args(&last.arguments);
            let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| "T".to_string());
            match last.ident.to_string().as_str() {
                "String" | "str" => "use `LwwRegister<String>` (the newest write wins)".to_string(),
                int @ ("u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32"
                | "i64" | "i128" | "isize") => format!(
                    "use `Max<{int}>` (the largest value wins), `LwwRegister<{int}>` (the newest \
                     write wins), or `GCounter` / `PnCounter` (a count from many writers)"
                ),
                float @ ("f32" | "f64") => {
                    format!("use `LwwRegister<{float}>` (the newest write wins)")
                }
                "bool" => "use `LwwRegister<bool>` (the newest write wins) or `Max<bool>` (once \
                           true, true for good)"
                    .to_string(),
                "char" => "use `LwwRegister<char>` (the newest write wins)".to_string(),
                "Vec" | "VecDeque" | "LinkedList" => format!(
                    "use `EventLog<{t}>` (append-only), `repred::doc::Seq<{t}>` (an ordered list) \
                     or `LwwRegister<{shown}>` (the whole list, the newest write wins)",
                    t = arg(0)
                ),
                "HashMap" | "BTreeMap" => format!(
                    "use `LwwMap<{k}, {v}>` (the newest write per key wins) or `LatticeMap<{k}, \
                     L>` (a lattice per key)",
                    k = arg(0),
                    v = arg(1)
                ),
                "HashSet" | "BTreeSet" => format!(
                    "use `GSet<{t}>` (a set that only grows) or `OrSet<{t}>` (a set with removes)",
                    t = arg(0)
                ),
                "Option" => format!(
                    "use `LwwRegister<{shown}>` (the newest write wins), or a lattice that starts \
                     empty (`Max<{t}>` holds nothing until written)",
                    t = arg(0)
                ),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!(
        "`{shown}` is not a lattice: it does not implement `repred::Reduce`; {instead}, or mark a \
         local-only field #[replicated(skip)]"
    ))
}

/// The type arguments of a path segment, as the user wrote them.
fn type_args(arguments: &PathArguments) -> Vec<String> {
    match arguments {
        PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(t) => Some(show(t)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A type as a person writes it (`Vec<u64>`, not `Vec < u64 >`).
fn show(ty: &Type) -> String {
    let mut s = ty.to_token_stream().to_string();
    for (from, to) in [
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        (" :: ", "::"),
        (":: ", "::"),
        ("& ", "&"),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" ;", ";"),
    ] {
        s = s.replace(from, to);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::plain_type;

    fn plain(ty: &str) -> Option<String> {
        plain_type(&syn::parse_str(ty).expect("a type"))
    }

    #[test]
    fn std_types_and_primitives_are_never_lattices() {
        let says = |ty: &str, shown: &str, instead: &str| {
            let message = plain(ty).unwrap_or_else(|| panic!("{ty} is reported"));
            assert!(message.starts_with(&format!("`{shown}` is not a lattice")), "{message}");
            assert!(message.contains(instead), "{message}");
        };
        says("String", "String", "`LwwRegister<String>`");
        says("std::string::String", "std::string::String", "`LwwRegister<String>`");
        says("u64", "u64", "`Max<u64>`");
        says("f64", "f64", "`LwwRegister<f64>`");
        says("Vec<u64>", "Vec<u64>", "`EventLog<u64>`");
        says(
            "::std::collections::HashMap<String, u8>",
            "::std::collections::HashMap<String, u8>",
            "`LwwMap<String, u8>`",
        );
        says("BTreeSet<(u8, u8)>", "BTreeSet<(u8, u8)>", "`GSet<(u8, u8)>`");
        says("Option<Max<u8>>", "Option<Max<u8>>", "`LwwRegister<Option<Max<u8>>>`");
        says("(u8, String)", "(u8, String)", "a field of its own");
        says("[u8; 4]", "[u8; 4]", "`EventLog<T>`");
    }

    #[test]
    fn what_may_be_a_lattice_is_left_to_the_compiler() {
        for ty in
            ["Max<u64>", "T", "crate::Vec", "my::String", "Box<Mine>", "&'a Mine", "<T as Tr>::L"]
        {
            assert_eq!(plain(ty), None, "{ty}");
        }
    }
}

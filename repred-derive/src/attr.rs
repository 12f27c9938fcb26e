//! `#[replicated(...)]` attributes, read with `parse_nested_meta`.

use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, LitStr, Path, Token, Type, WherePredicate};

use crate::check::Ctxt;

pub const REPLICATED: &str = "replicated";
pub const REDUCE: &str = "reduce";
pub const UPDATE: &str = "update";
pub const SNAPSHOT: &str = "snapshot";
pub const SKIP: &str = "skip";
pub const BOUND: &str = "bound";
pub const CHANGE: &str = "change";

/// What the struct-level keys are, for "unknown key" messages.
const CONTAINER_KEYS: &str = "expected `reduce = path::to_fn`, `update = Type`, \
                              `snapshot = path::to_fn`, `bound = \"T: Trait\"` or `change = Name`";

/// A value with the span of the key that set it, for "duplicate" errors.
pub struct Set<T> {
    pub value: T,
    pub key: proc_macro2::Span,
}

/// The container's attributes.
#[derive(Default)]
pub struct Container {
    pub reduce: Option<Set<Path>>,
    pub update: Option<Set<Type>>,
    pub snapshot: Option<Set<Path>>,
    /// Extra where-predicates for the generated impl, as in serde's
    /// `bound`: what the user's reduce function needs of the generics.
    pub bound: Option<Set<Vec<WherePredicate>>>,
    /// The name of the companion change type, instead of `<Name>Change`.
    pub change: Option<Set<Ident>>,
}

fn set<T>(cx: &mut Ctxt, slot: &mut Option<Set<T>>, value: T, key: &Path) {
    let name = key.get_ident().map(ToString::to_string).unwrap_or_default();
    if slot.is_some() {
        cx.error(key.span(), format!("duplicate `{name}` in #[replicated(...)]: give it once"));
    } else {
        *slot = Some(Set { value, key: key.span() });
    }
}

/// The key a user most likely meant: a near miss of a known key, or a name
/// other libraries use for it.
fn synonym(key: &str) -> Option<&'static str> {
    let keys = [REDUCE, UPDATE, SNAPSHOT, SKIP, BOUND, CHANGE];
    if let Some(near) = keys.into_iter().find(|k| key.len() > 2 && distance(key, k) <= 2) {
        return Some(near);
    }
    match key {
        "merge" | "join" | "with" | "reduce_with" => Some(REDUCE),
        "changes" | "change_type" | "delta" | "rename" => Some(CHANGE),
        "update_type" | "delta_type" | "message" => Some(UPDATE),
        "state" | "snap" | "full" => Some(SNAPSHOT),
        "bounds" | "where" => Some(BOUND),
        "ignore" | "local" | "skip_replication" | "skip_serializing" | "transient" => Some(SKIP),
        _ => None,
    }
}

/// The value after `key =`; an error says what the key takes.
fn value<T: syn::parse::Parse>(meta: &syn::meta::ParseNestedMeta, what: &str) -> syn::Result<T> {
    let key = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
    let reword = |e: syn::Error| syn::Error::new(e.span(), format!("`{key}` takes {what} ({e})"));
    meta.value().map_err(reword)?.parse().map_err(reword)
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Reports an unknown key where it stands, and steps over its value so
/// that the keys after it are still read (and their mistakes reported).
fn unknown(cx: &mut Ctxt, meta: &syn::meta::ParseNestedMeta, expected: &str) -> syn::Result<()> {
    let key = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
    let hint = match synonym(&key) {
        Some(known) => format!(" (did you mean `{known}`?)"),
        None => String::new(),
    };
    cx.error(
        meta.path.span(),
        format!("unknown key `{key}` in #[replicated(...)]{hint}: {expected}"),
    );
    if meta.input.peek(syn::Token![=]) {
        let _: syn::Expr = meta.value()?.parse()?;
    }
    Ok(())
}

impl Container {
    pub fn parse(cx: &mut Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = Container::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident(REPLICATED)) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident(REDUCE) {
                    let path: Path = value(&meta, "a path to your merge function, e.g. `reduce = merge`")?;
                    set(cx, &mut out.reduce, path, &meta.path);
                } else if meta.path.is_ident(UPDATE) {
                    let ty: Type = value(&meta, "the type your merge function takes and returns, e.g. `update = MyUpdate`")?;
                    set(cx, &mut out.update, ty, &meta.path);
                } else if meta.path.is_ident(SNAPSHOT) {
                    let path: Path = value(&meta, "a path to a `fn(&Self) -> Update`, e.g. `snapshot = current`")?;
                    set(cx, &mut out.snapshot, path, &meta.path);
                } else if meta.path.is_ident(BOUND) {
                    let lit: LitStr = value(&meta, "where-predicates in a string, e.g. `bound = \"T: Ord\"`")?;
                    let parser = Punctuated::<WherePredicate, Token![,]>::parse_terminated;
                    match lit.parse_with(parser) {
                        Ok(preds) => set(cx, &mut out.bound, preds.into_iter().collect(), &meta.path),
                        Err(e) => cx.unparsed(syn::Error::new(
                            lit.span(),
                            format!(
                                "`bound` takes where-predicates, e.g. bound = \"T: Ord + Clone\": {e}"
                            ),
                        )),
                    }
                } else if meta.path.is_ident(CHANGE) {
                    let name: Ident = value(&meta, "a name for the change type, e.g. `change = PlayerDelta`")?;
                    set(cx, &mut out.change, name, &meta.path);
                } else if meta.path.is_ident(SKIP) {
                    cx.error(meta.path.span(), "`skip` goes on a field, not on the struct");
                } else {
                    unknown(cx, &meta, CONTAINER_KEYS)?;
                }
                Ok(())
            });
            if let Err(e) = result {
                cx.unparsed(e);
            }
        }
        out
    }
}

/// A field's attributes.
#[derive(Default)]
pub struct Field {
    pub skip: Option<proc_macro2::Span>,
}

impl Field {
    pub fn parse(cx: &mut Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = Field::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident(REPLICATED)) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident(SKIP) {
                    if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                        return Err(meta.error("`skip` takes no value: write #[replicated(skip)]"));
                    }
                    if out.skip.is_some() {
                        cx.error(
                            meta.path.span(),
                            "duplicate `skip` in #[replicated(...)]: give it once",
                        );
                    }
                    out.skip = Some(meta.path.span());
                } else {
                    unknown(cx, &meta, "on a field, the only one is `skip`")?;
                }
                Ok(())
            });
            if let Err(e) = result {
                cx.unparsed(e);
            }
        }
        out
    }
}

//! Errors, collected so that a user sees every mistake in one compile.

use proc_macro2::Span;
use syn::Type;

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
            true
        }
    }
}

/// Whether the update type is written `Self`: the state travels as is.
pub fn is_self(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

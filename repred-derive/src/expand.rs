//! Code generation.

use std::collections::BTreeSet;

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{DeriveInput, GenericParam, Type, WhereClause};

use crate::ast::Input;
use crate::check::{self, Ctxt};

/// The whole expansion: every error, with the impls when the mode is clear
/// despite them (a misspelt or misplaced key is ignored), or else a stub
/// impl, so that the user is not buried in follow-on errors.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let mut cx = Ctxt::default();
    let parsed = Input::from_syn(&mut cx, input);
    let output = parsed.as_ref().and_then(|p| check::validate(&mut cx, p).then(|| generate(p)));
    let mut tokens = match cx.check() {
        Ok(()) => TokenStream::new(),
        Err(errors) => errors.into_compile_error(),
    };
    tokens.extend(output.unwrap_or_else(|| stub(input)));
    tokens
}

fn generate(input: &Input) -> TokenStream {
    match (&input.attrs.reduce, &input.attrs.update) {
        (Some(reduce), Some(update)) => custom(input, &reduce.value, &update.value),
        _ => field_wise(input),
    }
}

/// Locals of generated code, invisible to the user's tokens (mixed-site
/// hygiene): `reduce = update` must name the user's `fn update`, not our
/// parameter.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The user's `bound = "..."` predicates.
fn user_bounds(input: &Input) -> Vec<TokenStream> {
    let bound = input.attrs.bound.iter().flat_map(|b| &b.value);
    bound.map(|p| quote!(#p)).collect()
}

fn custom(input: &Input, reduce: &syn::Path, update: &Type) -> TokenStream {
    let ident = input.ident;
    let (impl_g, ty_g, _) = input.generics.split_for_impl();
    let (state, upd, reduce_fn, snapshot_fn) =
        (local("state"), local("update"), local("reduce"), local("snapshot"));
    // What `Reduce::Update` demands, asked of the generics on the impl
    // rather than of the user's struct. Only with type parameters: on a
    // concrete type the trait's own bound reports a missing derive better.
    let mut predicates = Vec::new();
    if input.generics.type_params().next().is_some() {
        predicates.push(quote_spanned! {update.span()=>
            #update: ::core::clone::Clone
                + ::repred::__private::serde::Serialize
                + ::repred::__private::serde::de::DeserializeOwned
        });
    }
    predicates.extend(user_bounds(input));
    let where_c = with_predicates(input, predicates);
    // Spanned at the user's path: a wrong signature is reported there.
    let reduce_check = quote_spanned! {reduce.span()=>
        let #reduce_fn: fn(&mut Self, #update) -> ::core::option::Option<#update> = #reduce;
    };
    let snapshot = match &input.attrs.snapshot {
        Some(path) => {
            let path = &path.value;
            quote_spanned! {path.span()=>
                let #snapshot_fn: fn(&Self) -> #update = #path;
                #snapshot_fn(#state)
            }
        }
        None => quote! { ::core::clone::Clone::clone(#state) },
    };
    let update_ty = quote_spanned! {update.span()=> #update};
    quote! {
        const _: () = {
            // The signature checks name the user's types in a `fn` pointer,
            // which clippy would otherwise call complex in the user's code.
            #[automatically_derived]
            #[allow(clippy::type_complexity)]
            impl #impl_g ::repred::Reduce for #ident #ty_g #where_c {
                type Update = #update_ty;

                fn reduce(&mut self, #upd: #update) -> ::core::option::Option<#update> {
                    #reduce_check
                    #reduce_fn(self, #upd)
                }

                fn snapshot(&self) -> #update {
                    let #state = self;
                    #snapshot
                }
            }
        };
    }
}

fn with_predicates(input: &Input, predicates: Vec<TokenStream>) -> WhereClause {
    let mut generics = input.generics.clone();
    let clause = generics.make_where_clause();
    for p in predicates {
        clause.predicates.push(syn::parse_quote!(#p));
    }
    clause.clone()
}

/// Every identifier in `tokens`, lifetimes as `'a`.
fn mentioned(tokens: TokenStream, out: &mut BTreeSet<String>) {
    let mut quote = false;
    for tt in tokens {
        match tt {
            TokenTree::Group(g) => mentioned(g.stream(), out),
            TokenTree::Ident(i) if quote => {
                out.insert(format!("'{i}"));
            }
            TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            TokenTree::Punct(p) => {
                quote = p.as_char() == '\'';
                continue;
            }
            TokenTree::Literal(_) => {}
        }
        quote = false;
    }
}

/// The struct's type and lifetime parameters that no replicated field
/// mentions: the change type carries none of those fields, so it needs a
/// marker for them (an unused parameter is an error). Const parameters may
/// go unused.
fn unused_params(input: &Input) -> Vec<TokenStream> {
    let mut seen = BTreeSet::new();
    for f in input.replicated() {
        mentioned(f.ty.to_token_stream(), &mut seen);
    }
    input
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) if !seen.contains(&t.ident.to_string()) => {
                let t = &t.ident;
                Some(quote!(#t))
            }
            GenericParam::Lifetime(l) if !seen.contains(&l.lifetime.to_string()) => {
                let l = &l.lifetime;
                Some(quote!(&#l ()))
            }
            _ => None,
        })
        .collect()
}

fn field_wise(input: &Input) -> TokenStream {
    let ident = input.ident;
    let vis = input.vis;
    let change = match &input.attrs.change {
        Some(name) => name.value.clone(),
        None => format_ident!("{}Change", ident, span = ident.span()),
    };
    let generics = input.generics;
    let (impl_g, ty_g, _) = generics.split_for_impl();
    let fields: Vec<_> = input.replicated().collect();
    let names: Vec<_> = fields.iter().map(|f| f.ident).collect();
    let types: Vec<_> = fields.iter().map(|f| f.ty).collect();
    // Spanned at each field's type: a field that is not a lattice is
    // reported there, once, with `Reduce`'s own "not a lattice" message.
    let lattice_bounds: Vec<TokenStream> =
        types.iter().map(|ty| quote_spanned! {ty.span()=> #ty: ::repred::Reduce}).collect();
    let skip_bounds: Vec<TokenStream> = input
        .fields
        .iter()
        .filter(|f| f.attrs.skip.is_some())
        .map(|f| {
            let ty = f.ty;
            quote_spanned! {ty.span()=> #ty: ::core::default::Default}
        })
        .collect();
    let bounded = with_predicates(input, lattice_bounds.clone());
    let with = |extra: TokenStream| {
        let preds = types
            .iter()
            .map(|ty| quote!(<#ty as ::repred::Reduce>::Update: #extra))
            .chain(lattice_bounds.iter().cloned())
            .collect();
        with_predicates(input, preds)
    };
    let debug_where = with(quote!(::core::fmt::Debug));
    let eq_where = with(quote!(::core::cmp::PartialEq));
    let mut reduce_preds = lattice_bounds.clone();
    reduce_preds.extend(skip_bounds);
    reduce_preds.extend(user_bounds(input));
    let reduce_where = with_predicates(input, reduce_preds);

    let unused = unused_params(input);
    let marker = local_marker();
    let (marker_decl, marker_init) = if unused.is_empty() {
        (quote!(), quote!())
    } else {
        // `fn() -> ..`: covariant, and Send/Sync whatever the parameters.
        (
            quote! {
                #[doc(hidden)]
                #[serde(skip)]
                #vis #marker: ::core::marker::PhantomData<fn() -> (#(#unused,)*)>,
            },
            quote!(#marker: ::core::marker::PhantomData,),
        )
    };

    let decls = fields.iter().map(|f| {
        let (name, ty, fvis, carried) = (f.ident, f.ty, f.vis, &f.carried);
        // Users who deny missing docs must not trip over generated fields.
        let default_doc = (!carried.iter().any(|a| a.path().is_ident("doc"))).then(|| {
            let doc = format!("The change to `{name}`, if it changed.");
            quote!(#[doc = #doc])
        });
        quote! {
            #default_doc
            #(#carried)*
            #fvis #name: ::core::option::Option<<#ty as ::repred::Reduce>::Update>
        }
    });
    let doc = format!(
        "A change to [`{ident}`]: one optional part per replicated field, so a change to one \
         field does not carry the others. Made by `#[derive(Replicated)]`."
    );
    let change_name = change.to_string();
    let (upd, chg, part, stamp, other, f) = (
        local("update"),
        local("change"),
        local("part"),
        local("stamp"),
        local("other"),
        local("f"),
    );
    let (cursor, max, field, inner, next, total) = (
        local("cursor"),
        local("max"),
        local("field"),
        local("inner"),
        local("next"),
        local("total"),
    );
    let stable = local("stable");
    let out = local("out");
    let name_strs: Vec<String> = names.iter().map(|n| n.unraw().to_string()).collect();
    let builders = builders(&fields, &change);
    let indices: Vec<u32> = (0..names.len() as u32).collect();
    let field_count = names.len() as u32;
    quote! {
        #[doc = #doc]
        #[derive(::repred::__private::serde::Serialize, ::repred::__private::serde::Deserialize)]
        #[serde(crate = "::repred::__private::serde", bound = "")]
        #vis struct #change #generics #bounded {
            #(#decls,)*
            #marker_decl
        }

        const _: () = {
            #[automatically_derived]
            impl #impl_g ::core::clone::Clone for #change #ty_g #bounded {
                fn clone(&self) -> Self {
                    Self {
                        #(#names: ::core::clone::Clone::clone(&self.#names),)*
                        #marker_init
                    }
                }
            }

            #[automatically_derived]
            impl #impl_g ::core::default::Default for #change #ty_g #bounded {
                fn default() -> Self {
                    Self {
                        #(#names: ::core::option::Option::None,)*
                        #marker_init
                    }
                }
            }

            /// Only the parts that changed, each as itself: what a reader of
            /// a change wants to see, not a row of `None`s.
            #[automatically_derived]
            impl #impl_g ::core::fmt::Debug for #change #ty_g #debug_where {
                fn fmt(&self, #f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    let mut #out = #f.debug_struct(#change_name);
                    #(if let ::core::option::Option::Some(#part) = &self.#names {
                        #out.field(#name_strs, #part);
                    })*
                    #out.finish()
                }
            }

            #[automatically_derived]
            impl #impl_g #change #ty_g #bounded {
                #(#builders)*
            }

            #[automatically_derived]
            impl #impl_g ::core::cmp::PartialEq for #change #ty_g #eq_where {
                fn eq(&self, #other: &Self) -> bool {
                    true #(&& self.#names == #other.#names)*
                }
            }

            #[automatically_derived]
            impl #impl_g ::repred::Reduce for #ident #ty_g #reduce_where {
                type Update = #change #ty_g;

                fn reduce(&mut self, #upd: Self::Update) -> ::core::option::Option<Self::Update> {
                    let #chg = #change {
                        #(#names: match #upd.#names {
                            ::core::option::Option::Some(#part) => ::repred::Reduce::reduce(&mut self.#names, #part),
                            ::core::option::Option::None => ::core::option::Option::None,
                        },)*
                        #marker_init
                    };
                    if true #(&& #chg.#names.is_none())* {
                        ::core::option::Option::None
                    } else {
                        ::core::option::Option::Some(#chg)
                    }
                }

                fn snapshot(&self) -> Self::Update {
                    #change {
                        #(#names: ::core::option::Option::Some(::repred::Reduce::snapshot(&self.#names)),)*
                        #marker_init
                    }
                }

                fn entries_hint(&self) -> ::core::option::Option<u64> {
                    let mut #total = 0u64;
                    #(#total = #total.saturating_add(::repred::Reduce::entries_hint(&self.#names)?);)*
                    ::core::option::Option::Some(#total)
                }

                // The hint is the fields' total, which cannot be split
                // among them: each field that reserves gets the whole (a
                // reservation costs address space more than memory).
                fn reserve(&mut self, #total: u64) {
                    #(::repred::Reduce::reserve(&mut self.#names, #total);)*
                    let _ = #total;
                }

                fn collect(&mut self, #stable: ::repred::Timestamp) -> usize {
                    0 #(+ ::repred::Reduce::collect(&mut self.#names, #stable))*
                }

                fn snapshot_part(
                    &self,
                    #cursor: ::core::option::Option<&[u8]>,
                    #max: usize,
                ) -> (Self::Update, ::core::option::Option<::std::vec::Vec<u8>>) {
                    // Field by field, each in its own parts.
                    let (#field, #inner) = ::repred::__private::read_part_cursor(#cursor);
                    let mut #chg = <#change #ty_g as ::core::default::Default>::default();
                    let #next = match #field {
                        #(#indices => {
                            let (#part, #next) = ::repred::Reduce::snapshot_part(
                                &self.#names,
                                #inner.as_deref(),
                                #max,
                            );
                            #chg.#names = ::core::option::Option::Some(#part);
                            ::repred::__private::next_part_cursor(#indices, #next, #field_count)
                        })*
                        _ => ::core::option::Option::None,
                    };
                    (#chg, #next)
                }

                fn stamp(#upd: &mut Self::Update, #stamp: ::repred::Stamp) {
                    #(if let ::core::option::Option::Some(#part) = &mut #upd.#names {
                        <#types as ::repred::Reduce>::stamp(#part, #stamp);
                    })*
                }

                fn unstamp(#chg: &mut Self::Update, #stamp: ::repred::Stamp) {
                    #(if let ::core::option::Option::Some(#part) = &mut #chg.#names {
                        <#types as ::repred::Reduce>::unstamp(#part, #stamp);
                    })*
                }
            }
        };
    }
}

/// One change to one field, written in one call: `PlayerChange::best(42)`
/// (a change of `best` alone) and `change.with_name(..)` (that field too),
/// each taking anything that converts into the field's update. Each has its
/// field's visibility. A field named `default` gets no constructor (it
/// would hide `Default::default` behind `PlayerChange::default`), and a
/// `with_` method whose name is another field's constructor is left out.
fn builders(fields: &[&crate::ast::Field], change: &Ident) -> Vec<TokenStream> {
    let taken: BTreeSet<String> = fields.iter().map(|f| f.ident.unraw().to_string()).collect();
    let (update, chg) = (local("update"), local("change"));
    let mut out = Vec::new();
    for f in fields {
        let (name, ty, vis) = (f.ident, f.ty, f.vis);
        let plain = name.unraw();
        let part = quote!(impl ::core::convert::Into<<#ty as ::repred::Reduce>::Update>);
        if plain != "default" {
            let doc = format!(
                "A [`{change}`] of `{plain}` alone: `update` is `{plain}`'s update, or what \
                 converts into it (`Max<T>` and `LwwRegister<T>` from a `T`)."
            );
            out.push(quote! {
                #[doc = #doc]
                #[allow(dead_code)]
                #vis fn #name(#update: #part) -> Self {
                    let mut #chg = <Self as ::core::default::Default>::default();
                    #chg.#name = ::core::option::Option::Some(::core::convert::Into::into(#update));
                    #chg
                }
            });
        }
        let with = format_ident!("with_{}", plain, span = name.span());
        if !taken.contains(&with.to_string()) {
            let doc = format!(
                "This change with `{plain}` set to `update` too (replacing what it held for \
                 `{plain}`)."
            );
            out.push(quote! {
                #[doc = #doc]
                #[allow(dead_code)]
                #[must_use]
                #vis fn #with(mut self, #update: #part) -> Self {
                    self.#name = ::core::option::Option::Some(::core::convert::Into::into(#update));
                    self
                }
            });
        }
    }
    out
}

/// The change type's marker field for otherwise unused parameters. A field
/// name is not hygienic, so it is one no user would pick.
fn local_marker() -> Ident {
    Ident::new("__repred_marker", Span::call_site())
}

/// An impl that type-checks whatever went wrong, so that uses of the type
/// elsewhere do not add errors of their own.
fn stub(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    quote! {
        const _: () = {
            impl #impl_g ::repred::Reduce for #ident #ty_g #where_c {
                type Update = ();
                fn reduce(&mut self, _: ()) -> ::core::option::Option<()> {
                    ::core::unreachable!()
                }
                fn snapshot(&self) {}
            }
        };
    }
}

//! Code generation.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Type, WhereClause};

use crate::ast::Input;
use crate::check::Ctxt;

/// The whole expansion: the impls, or the errors plus a stub impl so that
/// the user is not buried in follow-on errors.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let mut cx = Ctxt::default();
    let parsed = Input::from_syn(&mut cx, input);
    let output = parsed.as_ref().and_then(|p| validate(&mut cx, p).then(|| generate(p)));
    match (cx.check(), output) {
        (Ok(()), Some(tokens)) => tokens,
        (Err(errors), _) => {
            let mut tokens = errors.into_compile_error();
            tokens.extend(stub(input));
            tokens
        }
        // Unreachable in practice: no output always comes with an error.
        (Ok(()), None) => stub(input),
    }
}

/// Checks the combination of attributes; returns whether to generate.
fn validate(cx: &mut Ctxt, input: &Input) -> bool {
    let a = &input.attrs;
    let before = cx.len();
    match (&a.reduce, &a.update) {
        (Some(reduce), None) => cx.error(
            reduce.key,
            "`reduce` needs `update = Type` too: the type your reduce function takes and returns, \
             e.g. #[replicated(reduce = merge, update = MyUpdate)]",
        ),
        (None, Some(update)) => cx.error(
            update.key,
            "`update` goes with `reduce = path::to_fn`, your merge function; without them each \
             field must be a lattice",
        ),
        (Some(_), Some(update)) => {
            let is_self = matches!(&update.value, Type::Path(p) if p.path.is_ident("Self"));
            if !is_self && a.snapshot.is_none() {
                cx.error(
                    update.key,
                    "add `snapshot = path::to_fn` (a `fn(&Self) -> Update` giving the whole state \
                     as one update), or use `update = Self` to send the state itself",
                );
            }
            for f in &input.fields {
                if let Some(skip) = f.attrs.skip {
                    cx.error(skip, "`skip` only applies to field-wise replication; with your own `reduce`, leave fields out in the function");
                }
            }
        }
        (None, None) => {
            if let Some(snapshot) = &a.snapshot {
                cx.error(snapshot.key, "`snapshot` goes with `reduce` and `update`; field-wise replication makes its own");
            }
        }
    }
    cx.len() == before
}

fn generate(input: &Input) -> TokenStream {
    match (&input.attrs.reduce, &input.attrs.update) {
        (Some(reduce), Some(update)) => custom(input, &reduce.value, &update.value),
        _ => field_wise(input),
    }
}

fn custom(input: &Input, reduce: &syn::Path, update: &Type) -> TokenStream {
    let ident = input.ident;
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    // Spanned at the user's path: a wrong signature is reported there.
    let reduce_fn = quote_spanned! {reduce.span()=>
        let reduce: fn(&mut Self, #update) -> ::core::option::Option<#update> = #reduce;
    };
    let snapshot = match &input.attrs.snapshot {
        Some(path) => {
            let path = &path.value;
            quote_spanned! {path.span()=>
                let snapshot: fn(&Self) -> #update = #path;
                snapshot(self)
            }
        }
        None => quote! { ::core::clone::Clone::clone(self) },
    };
    let update_ty = quote_spanned! {update.span()=> #update};
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_g ::repred::Reduce for #ident #ty_g #where_c {
                type Update = #update_ty;

                fn reduce(&mut self, update: #update) -> ::core::option::Option<#update> {
                    #reduce_fn
                    reduce(self, update)
                }

                fn snapshot(&self) -> #update {
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

fn field_wise(input: &Input) -> TokenStream {
    let ident = input.ident;
    let vis = input.vis;
    let change = format_ident!("{}Change", ident);
    let generics = input.generics;
    let (impl_g, ty_g, _) = generics.split_for_impl();
    let fields: Vec<_> = input.replicated().collect();
    let names: Vec<_> = fields.iter().map(|f| f.ident).collect();
    let types: Vec<_> = fields.iter().map(|f| f.ty).collect();
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
    let reduce_where = with_predicates(input, reduce_preds);
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
    quote! {
        #[doc = #doc]
        #[derive(::repred::__private::serde::Serialize, ::repred::__private::serde::Deserialize)]
        #[serde(crate = "::repred::__private::serde", bound = "")]
        #vis struct #change #generics #bounded {
            #(#decls,)*
        }

        const _: () = {
            #[automatically_derived]
            impl #impl_g ::core::clone::Clone for #change #ty_g #bounded {
                fn clone(&self) -> Self {
                    Self { #(#names: ::core::clone::Clone::clone(&self.#names),)* }
                }
            }

            #[automatically_derived]
            impl #impl_g ::core::default::Default for #change #ty_g #bounded {
                fn default() -> Self {
                    Self { #(#names: ::core::option::Option::None,)* }
                }
            }

            #[automatically_derived]
            impl #impl_g ::core::fmt::Debug for #change #ty_g #debug_where {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(#change_name)
                        #(.field(::core::stringify!(#names), &self.#names))*
                        .finish()
                }
            }

            #[automatically_derived]
            impl #impl_g ::core::cmp::PartialEq for #change #ty_g #eq_where {
                fn eq(&self, other: &Self) -> bool {
                    true #(&& self.#names == other.#names)*
                }
            }

            #[automatically_derived]
            impl #impl_g ::repred::Reduce for #ident #ty_g #reduce_where {
                type Update = #change #ty_g;

                fn reduce(&mut self, update: Self::Update) -> ::core::option::Option<Self::Update> {
                    let change = #change {
                        #(#names: match update.#names {
                            ::core::option::Option::Some(part) => ::repred::Reduce::reduce(&mut self.#names, part),
                            ::core::option::Option::None => ::core::option::Option::None,
                        },)*
                    };
                    if true #(&& change.#names.is_none())* {
                        ::core::option::Option::None
                    } else {
                        ::core::option::Option::Some(change)
                    }
                }

                fn snapshot(&self) -> Self::Update {
                    #change {
                        #(#names: ::core::option::Option::Some(::repred::Reduce::snapshot(&self.#names)),)*
                    }
                }

                fn stamp(update: &mut Self::Update, stamp: ::repred::Stamp) {
                    #(if let ::core::option::Option::Some(part) = &mut update.#names {
                        <#types as ::repred::Reduce>::stamp(part, stamp);
                    })*
                }

                fn unstamp(change: &mut Self::Update, stamp: ::repred::Stamp) {
                    #(if let ::core::option::Option::Some(part) = &mut change.#names {
                        <#types as ::repred::Reduce>::unstamp(part, stamp);
                    })*
                }
            }
        };
    }
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

//! The input, parsed into what the derive needs, spans kept.

use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, Generics, Ident, Type, Visibility};

use crate::attr;
use crate::check::{self, Ctxt};

pub struct Input<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub generics: &'a Generics,
    pub attrs: attr::Container,
    pub fields: Vec<Field<'a>>,
}

pub struct Field<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub ty: &'a Type,
    pub attrs: attr::Field,
    /// `#[serde(...)]` and doc comments, copied onto the change type.
    pub carried: Vec<&'a Attribute>,
}

impl<'a> Input<'a> {
    /// Parses the input; on a shape the derive does not take, records why
    /// and returns `None`.
    pub fn from_syn(cx: &mut Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::Container::parse(cx, &input.attrs);
        let help = "#[derive(Replicated)] takes a struct with named fields (each a lattice, or use \
                    #[replicated(reduce = .., update = ..)] with your own merge)";
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => &named.named,
                Fields::Unnamed(f) => {
                    cx.error(f.span(), format!("tuple structs are not supported: {help}"));
                    return None;
                }
                Fields::Unit => {
                    cx.error(input.ident.span(), format!("unit structs are not supported: {help}"));
                    return None;
                }
            },
            Data::Enum(e) => {
                cx.error(e.enum_token.span, format!("enums are not supported: {help}"));
                return None;
            }
            Data::Union(u) => {
                cx.error(u.union_token.span, format!("unions are not supported: {help}"));
                return None;
            }
        };
        let fields = fields
            .iter()
            .filter_map(|f| {
                Some(Field {
                    ident: f.ident.as_ref()?,
                    vis: &f.vis,
                    ty: &f.ty,
                    attrs: attr::Field::parse(cx, &f.attrs),
                    carried: f
                        .attrs
                        .iter()
                        .filter(|a| a.path().is_ident("serde") || a.path().is_ident("doc"))
                        .collect(),
                })
            })
            .collect();
        Some(Input {
            ident: &input.ident,
            vis: &input.vis,
            generics: &input.generics,
            attrs,
            fields,
        })
    }

    /// The fields that replicate: not skipped, and not of a type that can
    /// never be a lattice (reported by `check`, left out here so that the
    /// generated impls hold despite it).
    pub fn replicated(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields.iter().filter(|f| f.attrs.skip.is_none() && check::plain_type(f.ty).is_none())
    }
}

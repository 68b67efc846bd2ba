//! Parsing of the macro's own attributes: `#[rpc_service(..)]` and `#[rpc(..)]`.

use syn::parse::Parser;
use syn::{Attribute, LitStr, Path};

/// Options of `#[rpc_service(..)]`.
#[derive(Default)]
pub(crate) struct ServiceArgs {
    /// `name = "calc"`.
    pub(crate) name: Option<LitStr>,
    /// `crate = "path::to::rpc_core"`.
    pub(crate) krate: Option<Path>,
}

impl ServiceArgs {
    pub(crate) fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Self> {
        let mut args = ServiceArgs::default();
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("name") {
                args.name = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                args.krate = Some(lit.parse()?);
                Ok(())
            } else {
                Err(meta.error("unknown #[rpc_service] option; expected `name = \"...\"` or `crate = \"...\"`"))
            }
        });
        parser.parse2(tokens)?;
        Ok(args)
    }
}

/// Options of `#[rpc(..)]` on a method.
#[derive(Default)]
pub(crate) struct MethodArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) skip: Option<proc_macro2::Span>,
    pub(crate) inline: Option<proc_macro2::Span>,
}

/// Options of `#[rpc(..)]` on a parameter.
#[derive(Default)]
pub(crate) struct ParamArgs {
    pub(crate) rest: Option<proc_macro2::Span>,
}

pub(crate) fn is_rpc(attr: &Attribute) -> bool {
    attr.path().is_ident("rpc")
}

pub(crate) fn method_args(attrs: &[Attribute]) -> syn::Result<MethodArgs> {
    let mut args = MethodArgs::default();
    for attr in attrs.iter().filter(|a| is_rpc(a)) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                args.name = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("skip") {
                args.skip = Some(syn::spanned::Spanned::span(&meta.path));
                Ok(())
            } else if meta.path.is_ident("inline") {
                args.inline = Some(syn::spanned::Spanned::span(&meta.path));
                Ok(())
            } else {
                Err(meta.error("unknown #[rpc] option on a method; expected `name = \"...\"`, `skip` or `inline`"))
            }
        })?;
    }
    Ok(args)
}

pub(crate) fn param_args(attrs: &[Attribute]) -> syn::Result<ParamArgs> {
    let mut args = ParamArgs::default();
    for attr in attrs.iter().filter(|a| is_rpc(a)) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rest") {
                args.rest = Some(syn::spanned::Spanned::span(&meta.path));
                Ok(())
            } else {
                Err(meta.error("unknown #[rpc] option on a parameter; expected `rest`"))
            }
        })?;
    }
    Ok(args)
}

/// The text of `///` comments, lines joined with `\n`, common indentation trimmed.
pub(crate) fn doc(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    lines.iter().map(|l| l.strip_prefix(' ').unwrap_or(l)).collect::<Vec<_>>().join("\n").trim().to_owned()
}

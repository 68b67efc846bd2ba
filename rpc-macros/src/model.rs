//! A typed model of the annotated impl block. Parsing collects every error it finds (one per
//! offending token) instead of stopping at the first.

use heck::ToSnakeCase;
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Pat, ReturnType, Type};

use crate::attrs::{self, ServiceArgs};

/// The service: its type, wire name and RPC methods.
pub(crate) struct Service<'a> {
    pub(crate) self_ty: &'a Type,
    /// The type's last path segment (`Calculator`), for the client's name.
    pub(crate) type_ident: Ident,
    pub(crate) name: String,
    /// Where the wire name came from, for error spans.
    pub(crate) name_span: Span,
    pub(crate) doc: String,
    pub(crate) methods: Vec<Method<'a>>,
}

/// One RPC method.
pub(crate) struct Method<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) wire_name: String,
    pub(crate) wire_span: Span,
    pub(crate) receiver: bool,
    pub(crate) is_async: bool,
    /// `#[rpc(inline)]`: a synchronous method cheap enough to run on the async runtime.
    pub(crate) inline: bool,
    pub(crate) params: Vec<Param<'a>>,
    /// A `ctx: &Context` parameter: its name, and how many RPC parameters come before it.
    pub(crate) context: Option<(&'a Ident, usize)>,
    pub(crate) output: Output<'a>,
    pub(crate) doc: String,
    /// Attributes carried over to the client method (`#[deprecated]`).
    pub(crate) attrs: Vec<&'a syn::Attribute>,
}

/// One parameter.
pub(crate) struct Param<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) ty: &'a Type,
    pub(crate) rest: bool,
}

/// What a method returns.
pub(crate) enum Output<'a> {
    /// Nothing: `()`.
    Unit,
    /// A plain value.
    Plain(&'a Type),
    /// `Result<T, E>`: `T` is what the caller gets, `E` becomes an `RpcError::Handler`.
    Result { full: &'a Type, ok: &'a Type },
}

/// Adds `error` to the accumulator.
pub(crate) fn push(errors: &mut Option<syn::Error>, error: syn::Error) {
    match errors {
        Some(e) => e.combine(error),
        None => *errors = Some(error),
    }
}

impl<'a> Service<'a> {
    /// Builds the model of everything that parsed, plus every error found (so cross-method
    /// checks still run on the methods that did parse).
    pub(crate) fn parse(args: &ServiceArgs, item: &'a ItemImpl) -> (Self, Option<syn::Error>) {
        let mut errors = None;
        if let Some((_, path, _)) = &item.trait_ {
            push(
                &mut errors,
                syn::Error::new_spanned(
                    path,
                    "#[rpc_service] goes on an inherent impl block (`impl Calculator { .. }`), not a trait impl",
                ),
            );
        }
        if !item.generics.params.is_empty() {
            push(
                &mut errors,
                syn::Error::new_spanned(
                    &item.generics,
                    "#[rpc_service] cannot be used on generic impl blocks: a service needs one concrete type",
                ),
            );
        }
        if let Some(unsafety) = &item.unsafety {
            push(&mut errors, syn::Error::new_spanned(unsafety, "#[rpc_service] cannot be used on unsafe impl blocks"));
        }
        let type_ident = match &*item.self_ty {
            Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| {
                if !s.arguments.is_empty() {
                    push(
                        &mut errors,
                        syn::Error::new_spanned(&s.arguments, "#[rpc_service] needs a type without generic arguments"),
                    );
                }
                s.ident.clone()
            }),
            _ => None,
        };
        let type_ident = type_ident.unwrap_or_else(|| {
            push(
                &mut errors,
                syn::Error::new_spanned(&item.self_ty, "#[rpc_service] needs a named type (`impl Calculator`)"),
            );
            Ident::new("Service", Span::call_site())
        });
        let (name, name_span) = match &args.name {
            Some(lit) => {
                check_wire_name(lit, &mut errors);
                (lit.value(), lit.span())
            }
            None => (type_ident.to_string().to_snake_case(), type_ident.span()),
        };

        let mut methods = Vec::new();
        for impl_item in &item.items {
            match impl_item {
                ImplItem::Fn(f) => match Method::parse(f) {
                    Ok(Some(m)) => methods.push(m),
                    Ok(None) => {}
                    Err(e) => push(&mut errors, e),
                },
                ImplItem::Macro(m) => push(&mut errors, syn::Error::new_spanned(m, "#[rpc_service] cannot see inside macro invocations; write the methods out, or move this into another impl block")),
                _ => {}
            }
        }
        (Service { self_ty: &item.self_ty, type_ident, name, name_span, doc: attrs::doc(&item.attrs), methods }, errors)
    }
}

fn check_wire_name(lit: &LitStr, errors: &mut Option<syn::Error>) {
    let value = lit.value();
    let ok = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        push(errors, syn::Error::new_spanned(lit, "a wire name must be non-empty and use only ASCII letters, digits, `_` and `-` (it travels as one token, and `.` separates service from method)"));
    }
}

impl<'a> Method<'a> {
    /// `Ok(None)` for `#[rpc(skip)]` methods.
    fn parse(f: &'a ImplItemFn) -> Result<Option<Self>, syn::Error> {
        let args = attrs::method_args(&f.attrs)?;
        if args.skip.is_some() {
            if let Some(name) = &args.name {
                return Err(syn::Error::new_spanned(
                    name,
                    "`skip` and `name` cannot be combined: a skipped method has no wire name",
                ));
            }
            return Ok(None);
        }
        let mut errors = None;
        let sig = &f.sig;
        if let (Some(span), Some(asyncness)) = (args.inline, &sig.asyncness) {
            let mut e =
                syn::Error::new(span, "`inline` is for synchronous methods: async methods already run on the runtime");
            e.combine(syn::Error::new_spanned(asyncness, "this method is async"));
            push(&mut errors, e);
        }
        for attr in f.attrs.iter().filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr")) {
            push(&mut errors, syn::Error::new_spanned(attr, "#[cfg] on an RPC method is not supported (the method table is static): move the method into a separate impl block"));
        }
        if !sig.generics.params.is_empty() {
            push(
                &mut errors,
                syn::Error::new_spanned(
                    &sig.generics,
                    "RPC methods cannot be generic: arguments are decoded into one concrete type",
                ),
            );
        }
        if let Some(w) = &sig.generics.where_clause {
            push(&mut errors, syn::Error::new_spanned(w, "RPC methods cannot have where clauses"));
        }
        if let Some(u) = &sig.unsafety {
            push(
                &mut errors,
                syn::Error::new_spanned(
                    u,
                    "RPC methods cannot be unsafe: a remote caller cannot uphold their contract",
                ),
            );
        }
        if let Some(abi) = &sig.abi {
            push(&mut errors, syn::Error::new_spanned(abi, "RPC methods cannot have an explicit ABI"));
        }
        if let Some(v) = &sig.variadic {
            push(
                &mut errors,
                syn::Error::new_spanned(
                    v,
                    "C-variadic methods are not supported; use `#[rpc(rest)]` on a last `Vec<T>` parameter",
                ),
            );
        }

        let mut receiver = false;
        let mut params = Vec::new();
        let mut context: Option<(&Ident, usize)> = None;
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(r) => {
                    if r.reference.is_none() || r.mutability.is_some() || r.colon_token.is_some() {
                        let what = if r.mutability.is_some() && r.reference.is_some() {
                            "`&mut self` is not supported: calls run concurrently; keep state behind `&self` with a Mutex or atomics"
                        } else {
                            "only `&self` receivers are supported: a service is shared by concurrent calls, so it cannot be taken by value"
                        };
                        push(&mut errors, syn::Error::new_spanned(r, what));
                    } else if let Some((_, Some(lt))) = &r.reference {
                        push(
                            &mut errors,
                            syn::Error::new_spanned(lt, "`&self` in an RPC method cannot name a lifetime"),
                        );
                    }
                    receiver = true;
                }
                FnArg::Typed(pt) => {
                    let pargs = match attrs::param_args(&pt.attrs) {
                        Ok(a) => a,
                        Err(e) => {
                            push(&mut errors, e);
                            continue;
                        }
                    };
                    let ident = match &*pt.pat {
                        Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => &pi.ident,
                        other => {
                            push(&mut errors, syn::Error::new_spanned(other, "patterns aren't allowed in RPC parameters: use a plain name, it is the argument's name on the wire"));
                            continue;
                        }
                    };
                    if ident.to_string().starts_with("__rpc") {
                        push(
                            &mut errors,
                            syn::Error::new_spanned(
                                ident,
                                "names starting with `__rpc` are reserved for generated code",
                            ),
                        );
                        continue;
                    }
                    if is_context(&pt.ty) {
                        if let Some(span) = pargs.rest {
                            push(&mut errors, syn::Error::new(span, "`#[rpc(rest)]` cannot go on the call's context"));
                        }
                        if context.is_some() {
                            push(&mut errors, syn::Error::new_spanned(pt, "a method takes the call's context once"));
                        }
                        context = Some((ident, params.len()));
                        continue;
                    }
                    if let Some(bad) = unsupported_type(&pt.ty) {
                        push(&mut errors, bad);
                        continue;
                    }
                    params.push(Param { ident, ty: &pt.ty, rest: pargs.rest.is_some() });
                    if let Some(span) = pargs.rest {
                        let last_param =
                            sig.inputs.iter().rev().find(|i| !matches!(i, FnArg::Typed(t) if is_context(&t.ty)));
                        if !matches!(last_param, Some(FnArg::Typed(last)) if std::ptr::eq(last, pt)) {
                            push(
                                &mut errors,
                                syn::Error::new(
                                    span,
                                    "`#[rpc(rest)]` only goes on the last parameter: it collects all remaining tokens",
                                ),
                            );
                        }
                    }
                }
            }
        }

        let output = match &sig.output {
            ReturnType::Default => Output::Unit,
            ReturnType::Type(_, ty) => {
                if let Some(bad) = unsupported_type(ty) {
                    push(&mut errors, bad);
                }
                result_ok(ty).map_or(Output::Plain(ty), |ok| Output::Result { full: ty, ok })
            }
        };

        let (wire_name, wire_span) = match &args.name {
            Some(lit) => {
                check_wire_name(lit, &mut errors);
                (lit.value(), lit.span())
            }
            None => (sig.ident.to_string(), sig.ident.span()),
        };
        if let Some(e) = errors {
            return Err(e);
        }
        Ok(Some(Method {
            ident: &sig.ident,
            wire_name,
            wire_span,
            receiver,
            is_async: sig.asyncness.is_some(),
            inline: args.inline.is_some(),
            params,
            context,
            output,
            doc: attrs::doc(&f.attrs),
            attrs: f.attrs.iter().filter(|a| a.path().is_ident("deprecated")).collect(),
        }))
    }
}

/// Whether `ty` is `&Context` (by any path ending in `Context`): the call's context, which the
/// method receives from the server instead of from the caller's arguments.
fn is_context(ty: &Type) -> bool {
    let Type::Reference(r) = ty else { return false };
    if r.mutability.is_some() {
        return false;
    }
    matches!(&*r.elem, Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "Context" && s.arguments.is_empty()))
}

/// `Some(T)` when `ty` is spelled `Result<T, ..>` (any path ending in `Result`).
fn result_ok(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match args.args.first()? {
        syn::GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}

/// Types an RPC signature cannot carry: borrowed data, `impl Trait`, `Self`, ...
fn unsupported_type(ty: &Type) -> Option<syn::Error> {
    let mut found = None;
    visit(ty, &mut |t| {
        if found.is_some() {
            return;
        }
        let msg = match t {
            Type::Reference(_) => "references aren't supported in RPC signatures: values cross the network, so use an owned type (`String`, `Vec<T>`)",
            Type::ImplTrait(_) => "`impl Trait` isn't supported in RPC signatures: use a concrete type",
            Type::BareFn(_) => "function pointers can't cross the network",
            Type::TraitObject(_) => "trait objects can't cross the network: use a concrete type",
            Type::Infer(_) => "the type must be written out",
            Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self") => "`Self` isn't supported in RPC signatures (the generated client has another `Self`): name the type",
            _ => return,
        };
        found = Some(syn::Error::new(t.span(), msg));
    });
    found
}

fn visit(ty: &Type, f: &mut dyn FnMut(&Type)) {
    f(ty);
    match ty {
        Type::Array(a) => visit(&a.elem, f),
        Type::Slice(s) => visit(&s.elem, f),
        Type::Paren(p) => visit(&p.elem, f),
        Type::Group(g) => visit(&g.elem, f),
        Type::Tuple(t) => t.elems.iter().for_each(|e| visit(e, f)),
        Type::Reference(r) => visit(&r.elem, f),
        Type::Ptr(p) => visit(&p.elem, f),
        Type::Path(p) => {
            for seg in &p.path.segments {
                if let syn::PathArguments::AngleBracketed(a) = &seg.arguments {
                    for arg in &a.args {
                        if let syn::GenericArgument::Type(t) = arg {
                            visit(t, f);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

//! Checks across methods: duplicate wire names and names the generated client reserves; and
//! the service's own name against the protocol's reserved namespace.

use std::collections::HashMap;

use crate::model::{push, Service};

/// Inherent methods of the generated client; an RPC method of the same name would clash.
pub(crate) const RESERVED: &[&str] = &["new", "with_deadline", "with_context", "with_metadata", "transport"];

/// Service names starting with this belong to the protocol (`_rpc health`): the same value as
/// `rpc_core::service::RESERVED_PREFIX`, which this crate cannot depend on.
pub(crate) const RESERVED_SERVICE_PREFIX: &str = "_rpc";

/// Every cross-method error, combined with the parse errors already found.
pub(crate) fn validate(service: &Service<'_>, mut errors: Option<syn::Error>) -> Result<(), syn::Error> {
    let parse_failed = errors.is_some();
    if service.name.starts_with(RESERVED_SERVICE_PREFIX) {
        push(
            &mut errors,
            syn::Error::new(
                service.name_span,
                format!(
                    "the service name \"{}\" is reserved: names starting with `{RESERVED_SERVICE_PREFIX}` belong to the protocol (`_rpc health`); choose another #[rpc_service(name = \"...\")]",
                    service.name
                ),
            ),
        );
    }
    let mut seen: HashMap<&str, &crate::model::Method<'_>> = HashMap::new();
    for method in &service.methods {
        if let Some(first) = seen.insert(&method.wire_name, method) {
            let mut e = syn::Error::new(
                method.wire_span,
                format!("the wire name \"{}\" is already used by `{}`", method.wire_name, first.ident),
            );
            e.combine(syn::Error::new(first.wire_span, "first used here"));
            push(&mut errors, e);
        }
        let ident = method.ident.to_string();
        if RESERVED.contains(&ident.as_str()) {
            push(
                &mut errors,
                syn::Error::new_spanned(
                    method.ident,
                    format!(
                        "method name conflicts with generated fn `{}Client::{ident}`; rename the method and keep its wire name with #[rpc(name = \"{}\")]",
                        service.type_ident, method.wire_name
                    ),
                ),
            );
        }
        if method.ident.to_string().starts_with("__rpc") {
            push(
                &mut errors,
                syn::Error::new_spanned(method.ident, "names starting with `__rpc` are reserved for generated code"),
            );
        }
    }
    if service.methods.is_empty() && !parse_failed {
        push(
            &mut errors,
            syn::Error::new(
                service.name_span,
                "this service has no RPC methods: add a method, or remove #[rpc_service]",
            ),
        );
    }
    errors.map_or(Ok(()), Err)
}

//! Code generation: one function per generated item.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl};

use crate::attrs::{is_rpc, ServiceArgs};
use crate::model::{Method, Output, Service};
use crate::validate::validate;

/// The whole expansion: the user's impl (helper attributes removed), then the generated items
/// or every error found.
pub(crate) fn rpc_service(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut item: ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            let e = syn::Error::new(
                Span::call_site(),
                "#[rpc_service] goes on an inherent impl block (`impl Calculator { .. }`)",
            );
            let error = e.into_compile_error();
            return quote!(#input #error);
        }
    };
    let generated = ServiceArgs::parse(args).and_then(|args| generate(&args, &item));
    strip_helper_attrs(&mut item);
    match generated {
        Ok(generated) => quote!(#item #generated),
        Err(e) => {
            let error = e.into_compile_error();
            quote!(#item #error)
        }
    }
}

fn generate(args: &ServiceArgs, item: &ItemImpl) -> syn::Result<TokenStream> {
    let (service, errors) = Service::parse(args, item);
    validate(&service, errors)?;
    let krate = match &args.krate {
        Some(path) => quote!(#path),
        None => core_path(),
    };
    let service_impl = service_impl(&service, &krate);
    let client = client(&service, &krate);
    Ok(quote!(#service_impl #client))
}

/// `::rpc_core`, or `::rpc::core` when the user depends on the facade crate only.
fn core_path() -> TokenStream {
    use proc_macro_crate::{crate_name, FoundCrate};
    match crate_name("rpc-core") {
        Ok(FoundCrate::Name(name)) => {
            let ident = format_ident!("{}", name);
            return quote!(::#ident);
        }
        // rpc-core never uses the macro in its own library; `Itself` means its tests,
        // examples or doctests, which see it as an external crate.
        Ok(FoundCrate::Itself) => return quote!(::rpc_core),
        Err(_) => {}
    }
    match crate_name("rpc") {
        Ok(FoundCrate::Name(name)) => {
            let ident = format_ident!("{}", name);
            quote!(::#ident::core)
        }
        _ => quote!(::rpc_core),
    }
}

/// A path as it reads in an intra-doc link (`::rpc_core`, `::rpc::core`).
fn path_text(path: &TokenStream) -> String {
    path.to_string().replace(' ', "")
}

fn strip_helper_attrs(item: &mut ItemImpl) {
    for impl_item in &mut item.items {
        if let ImplItem::Fn(f) = impl_item {
            f.attrs.retain(|a| !is_rpc(a));
            for input in &mut f.sig.inputs {
                if let syn::FnArg::Typed(pt) = input {
                    pt.attrs.retain(|a| !is_rpc(a));
                }
            }
        }
    }
}

fn target(service: &Service<'_>, method: &Method<'_>) -> String {
    format!("{}.{}", service.name, method.wire_name)
}

/// `static` metadata and `impl Service`, inside a `const _` block so their helper items stay
/// private.
fn service_impl(service: &Service<'_>, krate: &TokenStream) -> TokenStream {
    let self_ty = service.self_ty;
    let name = &service.name;
    let doc = &service.doc;
    let count = service.methods.len();
    let infos = service.methods.iter().enumerate().map(|(i, m)| method_info(service, m, i, krate));
    let helpers = service.methods.iter().enumerate().map(|(i, m)| method_helpers(service, m, i, krate));
    let arms = service.methods.iter().enumerate().map(|(i, m)| call_arm(service, m, i, krate));
    let known = service.methods.iter().map(|m| &m.wire_name);
    quote! {
        const _: () = {
            static __RPC_METHODS: [#krate::MethodInfo; #count] = [#(#infos),*];
            static __RPC_SERVICE: #krate::ServiceInfo =
                #krate::ServiceInfo::new(#name, #doc, &__RPC_METHODS);

            #(#helpers)*

            #[automatically_derived]
            impl #krate::Service for #self_ty {
                fn info(&self) -> &'static #krate::ServiceInfo {
                    &__RPC_SERVICE
                }

                #[allow(unused_variables, unused_mut, clippy::let_unit_value)]
                fn call(
                    self: ::std::sync::Arc<Self>,
                    __rpc_method: &::core::primitive::str,
                    __rpc_args: #krate::Args,
                    __rpc_ctx: &#krate::Context,
                    __rpc_pool: &#krate::BlockingPool,
                ) -> ::core::result::Result<
                    #krate::__private::BoxFuture<'static, ::core::result::Result<#krate::__private::serde_json::Value, #krate::RpcError>>,
                    #krate::RpcError,
                > {
                    match __rpc_method {
                        #(#arms)*
                        _ => ::core::result::Result::Err(#krate::__private::unknown_method(#name, __rpc_method, &[#(#known),*])),
                    }
                }
            }
        };
    }
}

fn type_text(ty: &syn::Type) -> String {
    // `quote` spaces every token; tighten the common cases so messages read like source.
    quote!(#ty)
        .to_string()
        .replace(" < ", "<")
        .replace(" >", ">")
        .replace("< ", "<")
        .replace(" ,", ",")
        .replace(" :: ", "::")
        .replace("& ", "&")
}

/// The type a successful call returns to the caller (`T` of `Result<T, E>`).
fn success_type(m: &Method<'_>) -> TokenStream {
    match &m.output {
        Output::Unit => quote!(()),
        Output::Plain(ty) => quote!(#ty),
        Output::Result { ok, .. } => quote!(#ok),
    }
}

fn schema_fn(name: &syn::Ident, ty: &TokenStream, krate: &TokenStream) -> TokenStream {
    quote! {
        fn #name(__rpc_g: &mut #krate::__private::SchemaGenerator) -> #krate::__private::Schema {
            #[allow(unused_imports)]
            use #krate::__private::{Fallback as _, ViaJsonSchema as _};
            (&&#krate::__private::SchemaProbe::<#ty>::new()).schema(__rpc_g)
        }
    }
}

/// Per method: the schema functions of its parameters and result, and the function turning
/// positional text tokens into its named arguments (`MethodInfo::args_from_text`).
fn method_helpers(service: &Service<'_>, m: &Method<'_>, index: usize, krate: &TokenStream) -> TokenStream {
    let target = target(service, m);
    let param_schemas = m.params.iter().enumerate().map(|(j, p)| {
        let ty = p.ty;
        schema_fn(&format_ident!("__rpc_schema_{}_{}", index, j), &quote!(#ty), krate)
    });
    let result_schema = schema_fn(&format_ident!("__rpc_schema_{}_result", index), &success_type(m), krate);
    let text_fn = format_ident!("__rpc_text_to_named_{}", index);
    let count = m.params.len();
    let decode = m.params.iter().enumerate().map(|(j, p)| {
        let pid = p.ident;
        let pname = pid.to_string();
        let ty = p.ty;
        let take = if p.rest { quote!(rest) } else { quote!(arg) };
        quote_spanned! {ty.span()=>
            let #pid: #ty = __rpc_reader.#take::<#ty>(#j)?;
            __rpc_map.insert(::std::borrow::ToOwned::to_owned(#pname), #krate::__private::encode_arg(#target, #pname, &#pid)?);
        }
    });
    quote! {
        #(#param_schemas)*
        #result_schema
        #[allow(unused_mut, unused_variables)]
        fn #text_fn(
            __rpc_tokens: ::std::vec::Vec<::std::string::String>,
        ) -> ::core::result::Result<#krate::Args, #krate::RpcError> {
            let mut __rpc_reader = #krate::__private::ArgReader::new(&__RPC_METHODS[#index], #krate::Args::Text(__rpc_tokens))?;
            let mut __rpc_map = #krate::__private::serde_json::Map::with_capacity(#count);
            #(#decode)*
            ::core::result::Result::Ok(#krate::Args::Named(__rpc_map))
        }
    }
}

fn method_info(service: &Service<'_>, m: &Method<'_>, index: usize, krate: &TokenStream) -> TokenStream {
    let name = &m.wire_name;
    let target = target(service, m);
    let params = m.params.iter().enumerate().map(|(j, p)| {
        let pname = p.ident.to_string();
        let pty = type_text(p.ty);
        let schema = format_ident!("__rpc_schema_{}_{}", index, j);
        quote!(#krate::ParamInfo::new(#pname, #krate::TypeInfo::new(#pty, #schema)))
    });
    let variadic = m.params.last().is_some_and(|p| p.rest);
    let returns_as_written = match &m.output {
        Output::Unit => "()".to_owned(),
        Output::Plain(ty) | Output::Result { full: ty, .. } => type_text(ty),
    };
    let success = match &m.output {
        Output::Unit => "()".to_owned(),
        Output::Plain(ty) | Output::Result { ok: ty, .. } => type_text(ty),
    };
    let result_schema = format_ident!("__rpc_schema_{}_result", index);
    let text_fn = format_ident!("__rpc_text_to_named_{}", index);
    let blocking = !m.is_async && !m.inline;
    let takes_context = m.context.is_some();
    let doc = &m.doc;
    quote! {
        #krate::MethodInfo::new(
            #name,
            #target,
            &[#(#params),*],
            #variadic,
            #krate::TypeInfo::new(#success, #result_schema),
            #returns_as_written,
            #blocking,
            #takes_context,
            #doc,
            #text_fn,
        )
    }
}

fn call_arm(service: &Service<'_>, m: &Method<'_>, index: usize, krate: &TokenStream) -> TokenStream {
    let wire = &m.wire_name;
    let target = target(service, m);
    let self_ty = service.self_ty;
    let ident = m.ident;
    let decode = m.params.iter().enumerate().map(|(i, p)| {
        let pid = p.ident;
        let ty = p.ty;
        let take = if p.rest { quote!(rest) } else { quote!(arg) };
        // Spanned on the type, so an unsatisfied `Deserialize` bound points at it.
        quote_spanned!(ty.span()=> let #pid: #ty = __rpc_reader.#take::<#ty>(#i)?;)
    });
    let mut names: Vec<TokenStream> = m.params.iter().map(|p| p.ident.to_token_stream()).collect();
    let context = m.context.map(|(ctx_ident, position)| {
        names.insert(position, quote!(&#ctx_ident));
        // Owned by the handler's future (or its blocking closure), which may outlive the
        // server's borrow.
        quote!(let #ctx_ident = ::core::clone::Clone::clone(__rpc_ctx);)
    });
    let call =
        if m.receiver { quote!(__rpc_this.#ident(#(#names),*)) } else { quote!(<#self_ty>::#ident(#(#names),*)) };
    let this = m.receiver.then(|| quote!(let __rpc_this = self;));
    let convert = match &m.output {
        Output::Unit | Output::Plain(_) => quote!(#krate::__private::encode_result(#target, &__rpc_out)),
        Output::Result { .. } => quote! {
            match __rpc_out {
                ::core::result::Result::Ok(value) => #krate::__private::encode_result(#target, &value),
                ::core::result::Result::Err(error) => {
                    // The error itself travels too when its type is `Serialize` (autoref
                    // specialisation picks `ViaSerialize` or `NoData` at compile time).
                    #[allow(unused_imports)]
                    use #krate::__private::{NoData as _, ViaSerialize as _};
                    let __rpc_data = (&&#krate::__private::ErrorData(&error)).data();
                    ::core::result::Result::Err(#krate::__private::handler_error(#target, error, __rpc_data))
                }
            }
        },
    };
    let run = if m.is_async {
        quote! {
            ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                let __rpc_out = #call.await;
                #convert
            }))
        }
    } else if m.inline {
        quote! {
            ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                let __rpc_out = #call;
                #convert
            }))
        }
    } else {
        quote! {
            let __rpc_pool = ::core::clone::Clone::clone(__rpc_pool);
            ::core::result::Result::Ok(::std::boxed::Box::pin(async move {
                let __rpc_out = __rpc_pool.run(#target, move || #call).await?;
                #convert
            }))
        }
    };
    quote! {
        #wire => {
            let mut __rpc_reader = #krate::__private::ArgReader::new(&__RPC_METHODS[#index], __rpc_args)?;
            #(#decode)*
            #context
            #this
            #run
        }
    }
}

/// `pub struct <Type>Client<T>` and its methods.
fn client(service: &Service<'_>, krate: &TokenStream) -> TokenStream {
    let client = format_ident!("{}Client", service.type_ident);
    let service_ident = &service.type_ident;
    let name = &service.name;
    let krate_text = path_text(krate);
    let struct_doc = format!(
        "Typed client for the `{name}` service ([`{service_ident}`]), over any [`Transport`]({krate_text}::Transport).\n\n\
         Each call carries a [`Context`]({krate_text}::Context): inside a handler, the handler's own (what is left of its \
         deadline, its metadata and trace id); the client's deadline and metadata apply on top.\n\n\
         Generated by `#[rpc_service]`."
    );
    let methods = service.methods.iter().map(|m| client_method(service, m, krate));
    quote! {
        #[doc = #struct_doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        pub struct #client<T> {
            transport: T,
            defaults: #krate::__private::ClientDefaults,
        }

        impl<T: #krate::Transport> #client<T> {
            /// A client sending its calls through `transport`, with the transport's default
            /// deadline.
            pub fn new(transport: T) -> Self {
                #client { transport, defaults: ::core::default::Default::default() }
            }

            /// Every call from this client waits at most `deadline` for its result (an inherited
            /// earlier deadline still wins).
            #[must_use]
            pub fn with_deadline(mut self, deadline: ::core::time::Duration) -> Self {
                self.defaults.deadline = ::core::option::Option::Some(deadline);
                self
            }

            /// Every call from this client starts from `context` (its metadata, trace id and
            /// deadline) instead of the current handler's.
            #[must_use]
            pub fn with_context(mut self, context: #krate::Context) -> Self {
                self.defaults.context = ::core::option::Option::Some(context);
                self
            }

            /// Every call from this client carries metadata `key` = `value` (an auth token, a
            /// tenant).
            ///
            /// # Errors
            /// When the key or value breaks the metadata rules ([`Metadata::insert`](#krate::Metadata::insert)).
            pub fn with_metadata(
                mut self,
                key: &::core::primitive::str,
                value: impl ::core::convert::Into<::std::string::String>,
            ) -> ::core::result::Result<Self, #krate::MetadataError> {
                self.defaults.metadata.insert(key, value)?;
                ::core::result::Result::Ok(self)
            }

            /// The transport calls go through.
            pub fn transport(&self) -> &T {
                &self.transport
            }

            #(#methods)*
        }
    }
}

fn client_method(service: &Service<'_>, m: &Method<'_>, krate: &TokenStream) -> TokenStream {
    let ident = m.ident;
    let target = target(service, m);
    let service_name = &service.name;
    let wire = &m.wire_name;
    let cfgs = &m.attrs;
    let params = m.params.iter().map(|p| {
        let pid = p.ident;
        let ty = p.ty;
        quote!(#pid: #ty)
    });
    let inserts = m.params.iter().map(|p| {
        let pid = p.ident;
        let pname = pid.to_string();
        quote_spanned! {p.ty.span()=>
            __rpc_args.insert(
                ::std::borrow::ToOwned::to_owned(#pname),
                #krate::__private::encode_arg(#target, #pname, &#pid)?,
            );
        }
    });
    let variadic = m.params.last().is_some_and(|p| p.rest);
    let ret = success_type(m);
    let doc = if m.doc.is_empty() { format!("Calls `{target}`.") } else { m.doc.clone() };
    let errors_doc = format!(
        " Any [`RpcError`]({}::RpcError): the handler's own error, an argument the server could\n not decode, a deadline, or a transport failure.",
        path_text(krate)
    );
    let count = m.params.len();
    quote! {
        #(#cfgs)*
        #[doc = #doc]
        ///
        /// # Errors
        #[doc = #errors_doc]
        pub async fn #ident(&self, #(#params),*) -> ::core::result::Result<#ret, #krate::RpcError> {
            let mut __rpc_args = #krate::__private::serde_json::Map::with_capacity(#count);
            #(#inserts)*
            let __rpc_request = #krate::Request::new(#service_name, #wire, #krate::Args::Named(__rpc_args))
                .in_parameter_order(#variadic)
                .with_context(self.defaults.context());
            #krate::Transport::call(&self.transport, __rpc_request).await?.decode::<#ret>(#target)
        }
    }
}
